"""The sandbox's HTTP face: Connect's rest-json wire protocol, SigV4, throttling and fault injection.

Every Connect call goes through one pipeline, in the order the real service applies them:
authenticate (SigV4, scoped to the sandbox's region) -> throttle -> injected latency / stall / 500 ->
validate against botocore's model (``validation.py``) -> execute -> (maybe) answer late or lose the response.
Every answer of the service, success or error, carries an ``x-amzn-RequestId``.
Admin routes under ``/_sandbox/`` are unsigned and expose the ledger, counters and runtime settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from bulkclaim.sandbox import inventory, service_quotas
from bulkclaim.sandbox.config import API_NAMES, FaultConfig, SandboxConfig, ThrottleConfig
from bulkclaim.sandbox.pagination import Paginator
from bulkclaim.sandbox.regions import alternate_region_answer
from bulkclaim.sandbox.sigv4 import AuthError, check_signature, scope_region
from bulkclaim.sandbox.state import LedgerEntry, SandboxState, ServiceError
from bulkclaim.sandbox.throttle import ServerBucket
from bulkclaim.sandbox.validation import http_route, validate

__all__ = ["Sandbox"]

# The settings of the undocumented behaviours (README: "The sandbox's choices"), changeable at runtime.
_BEHAVIOUR_SETTINGS = ("failed_claim_reservation", "release_delay", "quota_reached", "list_in_progress",
                       "list_failed", "list_releasing", "listing_lag")
_Operation = Callable[[web.Request, dict[str, Any]], dict[str, Any]]
# 200 answers that are not the operation's answer (FaultConfig.garbage_rate): what a proxy or load
# balancer in the way can send after the request took effect.
_GARBAGE: tuple[tuple[bytes, str], ...] = (
    (b"", "application/json"),
    (b'{"PhoneNumberId": "', "application/json"),
    (b"<html><body><h1>200 OK</h1>upstream answered</body></html>", "text/html"),
)


class Sandbox:
    """A local Connect phone-number service. Build one, then serve :meth:`make_app` (see ``server.py``).

    ``clock`` drives claim settling, token lifetimes and throttling; inject a fake one to step
    through time in tests.
    """

    def __init__(self, config: SandboxConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock
        self.reset()

    # -- state ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every claim, token, counter and ledger entry; rebuild the inventory."""
        stock = [n for spec in self.config.inventory for n in inventory.generate(spec)]
        if self.config.inventory_file:
            stock.extend(inventory.load_file(Path(self.config.inventory_file)))
        self.state = SandboxState(self.config, stock, clock=self.clock)
        self._buckets = {api: ServerBucket(self.config.throttle.get(api, ThrottleConfig()), self.clock())
                         for api in API_NAMES}
        self._fault_rng = random.Random(self.config.faults.seed)
        self._credentials = {c.access_key_id: c for c in self.config.credentials}
        self._pages = Paginator()  # a new signing key: tokens issued before a reset are refused

    @property
    def ledger(self) -> list[LedgerEntry]:
        """Every claim, release and move the sandbox executed, in order (idempotent replays excluded)."""
        return self.state.ledger

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per API and outcome (``ok``, an error code, ``lost``, ``stalled``)."""
        return {api: dict(counter) for api, counter in self.state.stats.items()}

    def set_throttle(self, api: str, throttle: ThrottleConfig) -> None:
        """Change one API's bucket at runtime (the bucket restarts full)."""
        if api not in API_NAMES:
            raise ValueError(f"unknown API {api!r}")
        self.config = dataclasses.replace(self.config, throttle={**self.config.throttle, api: throttle})
        self._buckets[api] = ServerBucket(throttle, self.clock())

    def configure(self, **changes: Any) -> None:
        """Change claim behaviour or account limits at runtime (fields of SandboxConfig)."""
        self.config = dataclasses.replace(self.config, **changes)
        self.state.config = self.state.limits.config = self.config

    def set_faults(self, faults: FaultConfig) -> None:
        self.config = dataclasses.replace(self.config, faults=faults)
        self._fault_rng = random.Random(faults.seed)

    # -- application ---------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        operations: dict[str, _Operation] = {
            "ClaimPhoneNumber": self._claim, "ListPhoneNumbersV2": self._list,
            "SearchAvailablePhoneNumbers": self._search, "DescribePhoneNumber": self._describe,
            "ReleasePhoneNumber": self._release, "UpdatePhoneNumber": self._update,
            "AssociatePhoneNumberContactFlow": self._associate_flow,
            "DisassociatePhoneNumberContactFlow": self._disassociate_flow,
            "ListFlowAssociations": self._list_flow_associations, "ListContactFlows": self._list_contact_flows,
        }
        for api, operation in operations.items():  # method and path as botocore's model says
            method, path = http_route(api)
            app.router.add_route(method, path, self._route(api, operation))
        app.router.add_post("/", self._service_quotas)  # Service Quotas: JSON protocol, X-Amz-Target
        app.router.add_get("/_sandbox/ledger", self._admin_ledger)
        app.router.add_get("/_sandbox/stats", self._admin_stats)
        app.router.add_post("/_sandbox/reset", self._admin_reset)
        app.router.add_post("/_sandbox/config", self._admin_config)
        return app

    def _route(self, api: str, operation: _Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(api, operation, request)
        return handler

    async def _handle(self, api: str, operation: _Operation, request: web.Request) -> web.StreamResponse:
        body_bytes = await request.read()
        try:
            identity = check_signature(method=request.method, raw_path=request.rel_url.raw_path,
                              raw_query=request.rel_url.raw_query_string, headers=request.headers,
                              body=body_bytes, service="connect", credentials=self._credentials,
                              regions=self._regions())
        except AuthError as exc:
            self.state.count(api, exc.code)
            return _error(exc.code, 403, exc.message, lower_case_message=True)
        if identity.denied or api in identity.denied_operations:
            return self._fail(api, ServiceError("AccessDeniedException", 403,
                                                f"User is not authorized to perform connect:{api}"))
        if not self._buckets[api].try_take(self.clock()):
            return self._fail(api, ServiceError("ThrottlingException", 429, "Rate exceeded"))
        faults = self.config.faults if api in self.config.faults.operations else None
        if faults is not None:
            stalled = await self._delay(faults)
            if stalled:
                self.state.count(api, "stalled")
            if self._fault_rng.random() < faults.error_rate:
                return self._fail(api, ServiceError("InternalServiceException", 500,
                                                    "Request processing failed due to an internal error."))
        try:
            body = json.loads(body_bytes) if body_bytes else {}
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError:
            return self._fail(api, ServiceError("SerializationException", 400, "Could not parse the request body."))
        try:
            validate(api, body, request.match_info, request.query)
            region = scope_region(request.headers)
            result = None if region == self.config.region else alternate_region_answer(
                api, body, dict(request.match_info), self.state, region)
            if result is None:
                result = operation(request, body)
        except ServiceError as exc:
            return self._fail(api, exc)
        if faults is not None and faults.late_answer_rate and self._fault_rng.random() < faults.late_answer_rate:
            self.state.count(api, "late")  # executed; the answer comes after the client has given up
            await asyncio.sleep(faults.late_answer_seconds)
        if faults is not None and self._fault_rng.random() < faults.lost_response_rate:
            self.state.count(api, "lost")
            _drop_connection(request)
            return web.Response(status=500)  # never reaches the client: the connection is gone
        # Drawn only when the fault is on, so seeded runs without it keep their sequence of faults.
        if faults is not None and faults.garbage_rate and self._fault_rng.random() < faults.garbage_rate:
            self.state.count(api, "garbage")
            body, content_type = _GARBAGE[self._fault_rng.randrange(len(_GARBAGE))]
            return web.Response(status=200, body=body, content_type=content_type)
        self.state.count(api, "ok")
        return web.json_response(result, headers={"x-amzn-RequestId": str(uuid.uuid4())})

    async def _service_quotas(self, request: web.Request) -> web.StreamResponse:
        body_bytes = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        operation = target.removeprefix(service_quotas.TARGET_PREFIX) if target.startswith(
            service_quotas.TARGET_PREFIX) else "?"
        try:
            identity = check_signature(method=request.method, raw_path=request.rel_url.raw_path,
                              raw_query=request.rel_url.raw_query_string, headers=request.headers,
                              body=body_bytes, service="servicequotas", credentials=self._credentials,
                              regions=self._regions())
            if identity.denied:
                raise service_quotas.QuotaError("AccessDeniedException",
                                                f"User is not authorized to perform: servicequotas:{operation}")
            body = json.loads(body_bytes or b"{}")
            result = service_quotas.answer(operation, body if isinstance(body, dict) else {}, self.config)
        except AuthError as exc:
            return _json_error(exc.code, exc.message, status=403)
        except ValueError:
            return _json_error("SerializationException", "Could not parse the request body.")
        except service_quotas.QuotaError as exc:
            self.state.count(f"ServiceQuotas.{operation}", exc.code)
            return _json_error(exc.code, exc.message)
        self.state.count(f"ServiceQuotas.{operation}", "ok")
        return web.json_response(result, content_type="application/x-amz-json-1.1",
                                 headers={"x-amzn-RequestId": str(uuid.uuid4())})

    def _regions(self) -> frozenset[str]:
        """The regions whose endpoint the sandbox plays: requests signed for any other are refused."""
        return frozenset(r for r in (self.config.region, self.config.replica_region) if r)

    async def _delay(self, faults: FaultConfig) -> bool:
        low, high = faults.latency
        stall = self._fault_rng.random() < faults.stall_rate
        seconds = (self._fault_rng.uniform(low, high) if high > 0 else 0.0) + (faults.stall_seconds if stall else 0)
        if seconds > 0:
            await asyncio.sleep(seconds)
        return stall

    def _fail(self, api: str, error: ServiceError) -> web.Response:
        self.state.count(api, error.code)
        return _error(error.code, error.status, error.message)

    # -- operations ----------------------------------------------------------------------------------
    def _claim(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        return self.state.claim(body)

    def _describe(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        return self.state.describe(request.match_info["PhoneNumberId"])

    def _release(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        return self.state.release(request.match_info["PhoneNumberId"], request.query.get("clientToken"))

    def _update(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        return self.state.update(request.match_info["PhoneNumberId"], body)

    def _list(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        page, token = self._pages.page("ListPhoneNumbersV2", self.state.list_claimed(body), body, default_size=100)
        return {"ListPhoneNumbersSummaryList": page, **({"NextToken": token} if token else {})}

    def _search(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        page, token = self._pages.page("SearchAvailablePhoneNumbers", self.state.search_available(body), body,
                                       default_size=10)
        return {"AvailableNumbersList": page, **({"NextToken": token} if token else {})}

    def _associate_flow(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        return self.state.associate_flow(request.match_info["PhoneNumberId"], body)

    def _disassociate_flow(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        return self.state.disassociate_flow(request.match_info["PhoneNumberId"], request.query["instanceId"])

    def _list_flow_associations(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        rows = self.state.flow_associations(request.match_info["InstanceId"], request.query.get("ResourceType"))
        page, token = self._pages.page("ListFlowAssociations", rows, _page_request(request), default_size=100)
        return {"FlowAssociationSummaryList": page, **({"NextToken": token} if token else {})}

    def _list_contact_flows(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        rows = self.state.contact_flows(request.match_info["InstanceId"])
        page, token = self._pages.page("ListContactFlows", rows, _page_request(request), default_size=100)
        return {"ContactFlowSummaryList": page, **({"NextToken": token} if token else {})}

    # -- admin -----------------------------------------------------------------------------------------
    async def _admin_ledger(self, request: web.Request) -> web.Response:
        return web.json_response([dataclasses.asdict(e) for e in self.ledger])

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _admin_config(self, request: web.Request) -> web.Response:
        """Change throttling, faults or claim behaviour at runtime: the JSON mirrors SandboxConfig."""
        try:
            update = await request.json()
            for api, values in update.pop("throttle", {}).items():
                self.set_throttle(api, ThrottleConfig(**values))
            if "faults" in update:
                faults = dict(update.pop("faults"))
                if "operations" in faults:
                    faults["operations"] = frozenset(faults["operations"])
                if "latency" in faults:
                    faults["latency"] = tuple(faults["latency"])
                self.set_faults(FaultConfig(**faults))
            allowed = {"claim_delay", "claim_failure_rate", "token_lifetime", "release_cooldown",
                       "phone_number_quota", "churn_limit", "competition_rate", "service_quotas_access",
                       *_BEHAVIOUR_SETTINGS}
            if set(update) - allowed:
                raise ValueError(f"unknown settings: {sorted(set(update) - allowed)}")
            self.configure(**update)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})


def _error(code: str, status: int, message: str, *, lower_case_message: bool = False) -> web.Response:
    # The real front end names the error in x-amzn-ErrorType; auth errors carry "message", service
    # errors "Message". botocore reads either.
    body = {"message" if lower_case_message else "Message": message}
    return web.json_response(body, status=status, headers={
        "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.connect/",
        "x-amzn-RequestId": str(uuid.uuid4()),
    })


def _json_error(code: str, message: str, *, status: int = 400) -> web.Response:
    """An error in AWS's JSON protocol: the name in ``__type``, botocore reads the part after ``#``."""
    return web.json_response({"__type": f"com.amazonaws.servicequotas#{code}", "message": message},
                             status=status, content_type="application/x-amz-json-1.1",
                             headers={"x-amzn-RequestId": str(uuid.uuid4())})


def _page_request(request: web.Request) -> dict[str, Any]:
    """MaxResults / NextToken of a GET List call, which travel in the query string (validated already)."""
    query = request.query
    return {**({"MaxResults": int(query["maxResults"])} if "maxResults" in query else {}),
            **({"NextToken": query["nextToken"]} if "nextToken" in query else {})}


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()

