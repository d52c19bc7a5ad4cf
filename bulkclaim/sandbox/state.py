"""The sandbox's in-memory model of Connect phone numbers: inventory, claims, tokens and the ledger.

Transport-free: the HTTP layer (``app.py``) parses and authenticates requests, then calls these
methods, which either return the response body or raise :class:`ServiceError`. Time comes from an
injected monotonic clock, so tests can move through claim delays and token lifetimes without
sleeping. Claims settle lazily: a claim records when it becomes CLAIMED (or FAILED) and every read
computes the status from the clock, so no background task is needed.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bulkclaim.sandbox.config import SandboxConfig
from bulkclaim.sandbox.flows import VOICE, FlowBook, instance_of, not_settled
from bulkclaim.sandbox.inventory import StockNumber
from bulkclaim.sandbox.limits import TargetLimits
from bulkclaim.sandbox.records import (
    TOKEN,
    ClaimRecord,
    LedgerEntry,
    ServiceError,
    Token,
    invalid,
    not_found,
    prefix_of,
    validate_tags,
)

__all__ = ["LIMIT_REACHED", "ClaimRecord", "LedgerEntry", "SandboxState", "ServiceError"]

#: The FAILED status message of a claim accepted while its target was at its phone-number quota. The
#: real wording is not published; this follows the PhoneNumberStatus reference ("the TargetArn value
#: you are claiming ... to has reached its limit of total claimed numbers").
LIMIT_REACHED = "The TargetArn {target_arn} has reached its limit of total claimed numbers."
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_FOREIGN_ACCOUNT = "999999999999"
_NUMBER_TYPES = frozenset({"TOLL_FREE", "DID", "UIFN", "SHARED", "THIRD_PARTY_TF", "THIRD_PARTY_DID", "SHORT_CODE"})


@dataclass
class SandboxState:
    """All mutable state of one sandbox. Not thread-safe: it lives on one event loop."""

    config: SandboxConfig
    stock: Iterable[StockNumber]
    clock: Callable[[], float] = time.monotonic
    ledger: list[LedgerEntry] = field(default_factory=list)
    stats: dict[str, Counter[str]] = field(default_factory=dict)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self._rng = random.Random(cfg.seed)
        self._rival_rng = random.Random(f"rival-{cfg.seed}")  # its own stream: ids stay as without rivals
        self.limits = TargetLimits(cfg)
        self._arn_prefix = f"arn:aws:connect:{cfg.region}:{cfg.account_id}"
        self._targets: dict[str, str | None] = {}  # target ARN -> instance id (None for a TDG)
        for instance_id in cfg.instance_ids:
            self._targets[f"{self._arn_prefix}:instance/{instance_id}"] = instance_id
        for tdg_id in cfg.traffic_distribution_group_ids:
            self._targets[f"{self._arn_prefix}:traffic-distribution-group/{tdg_id}"] = None
        self._stock: dict[str, StockNumber] = {s.phone_number: s for s in self.stock}
        self._holder: dict[str, ClaimRecord] = {}  # number -> latest claim record
        self._by_id: dict[str, ClaimRecord] = {}
        self._cooldown_until: dict[str, float] = {}
        self._tokens: dict[tuple[str, str], Token] = {}
        self.flows = FlowBook(self._arn_prefix, cfg.instance_ids, cfg.flows_per_instance, cfg.seed)
        for number in cfg.foreign_claims:
            self._take_by_rival(self._stock.setdefault(number, StockNumber(number, "US", "DID")))

    def _take_by_rival(self, stock: StockNumber) -> None:
        """Another account claims ``stock``: from now on it is not available to us."""
        foreign = f"arn:aws:connect:{self.config.region}:{_FOREIGN_ACCOUNT}:instance/competitor"
        record = self._new_record(stock, foreign, None, "", {}, settle_at=float("-inf"))
        record.final_status, record.failure_message = "CLAIMED", ""
        self._holder[stock.phone_number] = record

    # -- bookkeeping -------------------------------------------------------------------------------
    def count(self, api: str, outcome: str) -> None:
        self.stats.setdefault(api, Counter())[outcome] += 1
        if self.config.record_timeline:
            self.timeline.append((self.clock(), api, outcome))

    def executions(self, phone_number: str) -> int:
        """How many claims of ``phone_number`` were really executed (replays excluded)."""
        return sum(1 for e in self.ledger if e.action == "claim" and e.phone_number == phone_number)

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_record(self, stock: StockNumber, target_arn: str, instance_id: str | None, description: str,
                    tags: dict[str, str], settle_at: float, limit_reached: bool = False) -> ClaimRecord:
        number_id = self._new_id()
        failed = self._rng.random() < self.config.claim_failure_rate  # drawn always: ids stay as they were
        message = (LIMIT_REACHED.format(target_arn=target_arn) if limit_reached
                   else self.config.claim_failure_message if failed else "")
        return ClaimRecord(
            phone_number_id=number_id,
            phone_number_arn=f"{self._arn_prefix}:phone-number/{number_id}",
            stock=stock, target_arn=target_arn, instance_id=instance_id, description=description,
            tags=tags, settle_at=settle_at, final_status="FAILED" if message else "CLAIMED",
            failure_message=message, accepted_at=self.clock(),
        )

    def _append_ledger(self, action: str, record: ClaimRecord, token: str | None, outcome: str,
                       contact_flow_id: str = "", message: str = "") -> None:
        message = record.failure_message if action == "claim" else message
        self.ledger.append(LedgerEntry(len(self.ledger) + 1, action, record.stock.phone_number,
                                       record.phone_number_id, record.target_arn, token, outcome, time.time(),
                                       message, contact_flow_id))

    # -- targets -------------------------------------------------------------------------------------
    def resolve_target(self, body: dict[str, Any], *, required: bool = True) -> str | None:
        """The target ARN named by ``InstanceId`` (id or ARN) or ``TargetArn``; exactly one may be given."""
        instance_id, target_arn = body.get("InstanceId"), body.get("TargetArn")
        if instance_id is not None and target_arn is not None:
            raise invalid("Only one of InstanceId or TargetArn may be specified.")
        if instance_id is None and target_arn is None:
            if required:
                raise invalid("One of InstanceId or TargetArn must be specified.")
            return None
        if instance_id is not None:
            arn = str(instance_id) if str(instance_id).startswith("arn:") else \
                f"{self._arn_prefix}:instance/{instance_id}"
        else:
            arn = str(target_arn)
        if arn not in self._targets:
            raise not_found(f"Target not found: {arn}")
        return arn

    # -- availability --------------------------------------------------------------------------------
    def _available(self, number: str, now: float, *, to_claimant: bool = True) -> bool:
        """May ``number`` be claimed now? A FAILED claim keeps the number for its claimant (our account)
        for ``failed_claim_reservation`` seconds: available to us (``to_claimant``), to no one else."""
        if number not in self._stock or self._cooldown_until.get(number, float("-inf")) > now:
            return False
        record = self._holder.get(number)
        if record is None or record.gone(now):
            return True
        if record.released or record.status(now) != "FAILED":
            return False
        return to_claimant or now >= record.settle_at + self.config.failed_claim_reservation

    # -- ClaimPhoneNumber ----------------------------------------------------------------------------
    def claim(self, body: dict[str, Any]) -> dict[str, Any]:
        number = body.get("PhoneNumber")
        if not isinstance(number, str) or not _E164.fullmatch(number):
            raise invalid(f"Invalid phone number: {number!r}")
        description = body.get("PhoneNumberDescription") or ""
        if not isinstance(description, str) or len(description) > 500:
            raise invalid("PhoneNumberDescription must be a string of at most 500 characters.")
        tags = validate_tags(body.get("Tags"))
        token = _client_token(body)
        target_arn = self.resolve_target(body)
        assert target_arn is not None
        now = self.clock()
        fingerprint = (number, target_arn, description, tuple(sorted(tags.items())))
        if token is not None:
            replay = self._replay(("claim", token), fingerprint, now)
            if replay is not None:
                return replay
        if not self._available(number, now):
            raise invalid(f"Phone number not available: {number}")
        # After availability: a number we hold stays "not available". The churn block refuses at once;
        # a full quota does too only in "refuse" mode: the real service accepts, then settles FAILED.
        refusal = self.limits.churn_refusal(target_arn, now)
        quota_full = self.limits.quota_refusal(target_arn)
        if refusal is None and quota_full is not None and self.config.quota_reached == "refuse":
            refusal = quota_full
        if refusal is not None:
            raise ServiceError("ServiceQuotaExceededException", 402, refusal)
        if (self.config.competition_rate and self._available(number, now, to_claimant=False)
                and self._rival_rng.random() < self.config.competition_rate):
            self._take_by_rival(self._stock[number])  # someone else's claim arrived just before ours
            raise invalid(f"Phone number not available: {number}")
        record = self._new_record(self._stock[number], target_arn, self._targets[target_arn], description,
                                  tags, settle_at=now + self.config.claim_delay, limit_reached=quota_full is not None)
        self.limits.claimed(target_arn, now, holds=record.final_status == "CLAIMED")
        self._holder[number] = record
        self._by_id[record.phone_number_id] = self._by_id[record.phone_number_arn] = record
        response = {"PhoneNumberId": record.phone_number_id, "PhoneNumberArn": record.phone_number_arn}
        if token is not None:
            self._tokens[("claim", token)] = Token(fingerprint, response, now + self.config.token_lifetime)
        self._append_ledger("claim", record, token, record.final_status)
        return dict(response)

    def _replay(self, key: tuple[str, str], fingerprint: tuple[Any, ...], now: float) -> dict[str, Any] | None:
        remembered = self._tokens.get(key)
        if remembered is None:
            return None
        if remembered.expires_at <= now:
            del self._tokens[key]
            return None
        if remembered.fingerprint != fingerprint:
            raise ServiceError("IdempotencyException", 409,
                               "An idempotency token was used with different request parameters.")
        return dict(remembered.response)

    # -- DescribePhoneNumber / ReleasePhoneNumber ----------------------------------------------------
    def _own_record(self, reference: str, now: float) -> ClaimRecord:
        """Our number named by its PhoneNumberId or its PhoneNumberArn (both are accepted)."""
        record = self._by_id.get(reference)
        if record is None or record.gone(now):
            raise not_found(f"Phone number not found: {reference}")
        return record

    def describe(self, reference: str) -> dict[str, Any]:
        now = self.clock()
        record = self._own_record(reference, now)
        summary = record.summary(now)
        status = record.status(now)
        summary["PhoneNumberStatus"] = {"Status": status,
                                        "Message": record.failure_message if status == "FAILED" else ""}
        return {"ClaimedPhoneNumberSummary": summary}

    def release(self, reference: str, token: str | None) -> dict[str, Any]:
        if token is not None and not TOKEN.fullmatch(token):
            raise invalid("ClientToken must be a lowercase UUID.")
        now = self.clock()
        if token is not None:
            replay = self._replay(("release", token), (reference,), now)
            if replay is not None:
                return replay
        record = self._own_record(reference, now)
        if record.released:  # already being released: nothing more to do (not a second ledger entry)
            return {}
        status = record.status(now)
        if status == "IN_PROGRESS":
            raise ServiceError("ResourceInUseException", 409, "The phone number is still being claimed.")
        if status == "FAILED":
            raise not_found(f"Phone number not found: {reference}")
        record.released, record.gone_at = True, now + self.config.release_delay
        self.limits.released(record.target_arn, now)
        self.flows.disassociate(record.phone_number_id)  # see flows.py: the association goes with it
        self._cooldown_until[record.stock.phone_number] = record.gone_at + self.config.release_cooldown
        if token is not None:
            self._tokens[("release", token)] = Token((reference,), {}, now + self.config.token_lifetime)
        self._append_ledger("release", record, token, "RELEASED")
        return {}

    # -- UpdatePhoneNumber: a move to another instance or TDG ------------------------------------------
    def update(self, reference: str, body: dict[str, Any]) -> dict[str, Any]:
        """Move our CLAIMED number to another target: IN_PROGRESS (already on the destination, as
        Describe shows it) for ``claim_delay``, then CLAIMED, or FAILED when the destination is at
        its phone-number quota. The number keeps its id and ARN; its flow association is dropped
        (Connect does not carry it over: see ``flows.py``). Same token and same request:
        the same answer; same token, another request: IdempotencyException."""
        token = _client_token(body)
        target_arn = self.resolve_target(body)
        assert target_arn is not None
        now = self.clock()
        record = self._by_id.get(reference)
        fingerprint = (record.phone_number_id if record is not None else reference, target_arn)
        if token is not None:
            replay = self._replay(("update", token), fingerprint, now)
            if replay is not None:
                return replay
        record = self._own_record(reference, now)
        if record.released or record.status(now) == "IN_PROGRESS":
            raise ServiceError("ResourceInUseException", 409,
                               "The phone number is being claimed, moved or released; try again later.")
        if record.status(now) == "FAILED":
            raise not_found(f"Phone number not found: {reference}")
        if record.target_arn == target_arn:
            raise invalid(f"Phone number {record.stock.phone_number} is already claimed to {target_arn}.")
        quota_full = self.limits.quota_refusal(target_arn)
        source = record.target_arn
        self.limits.moved(source, target_arn)
        record.target_arn, record.instance_id = target_arn, self._targets[target_arn]
        record.settle_at, record.accepted_at = now + self.config.claim_delay, now
        record.final_status = "FAILED" if quota_full else "CLAIMED"
        record.failure_message = LIMIT_REACHED.format(target_arn=target_arn) if quota_full else ""
        self.flows.disassociate(record.phone_number_id)  # the flow belongs to the source instance
        response = {"PhoneNumberId": record.phone_number_id, "PhoneNumberArn": record.phone_number_arn}
        if token is not None:
            self._tokens[("update", token)] = Token(fingerprint, response, now + self.config.token_lifetime)
        self._append_ledger("move", record, token, record.final_status, message=f"from {source}")
        return dict(response)

    def moves(self, phone_number: str) -> int:
        """How many moves of ``phone_number`` were really executed (replays excluded)."""
        return sum(1 for e in self.ledger if e.action == "move" and e.phone_number == phone_number)

    # -- ListPhoneNumbersV2 / SearchAvailablePhoneNumbers ----------------------------------------------
    def _listed(self, record: ClaimRecord, now: float) -> bool:
        """Whether ListPhoneNumbersV2 shows ``record`` now (the ``list_*`` settings and the listing lag)."""
        cfg = self.config
        if record.gone(now) or record.target_arn not in self._targets or now < record.accepted_at + cfg.listing_lag:
            return False
        if record.released:
            return cfg.list_releasing
        status = record.status(now)
        return status == "CLAIMED" or (cfg.list_in_progress if status == "IN_PROGRESS" else cfg.list_failed)

    def list_claimed(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The numbers our account holds (see :meth:`_listed`), filtered as the request asks."""
        target_arn = self.resolve_target(body, required=False)
        countries = set(body.get("PhoneNumberCountryCodes") or [])
        types = set(body.get("PhoneNumberTypes") or [])
        prefix = prefix_of(body.get("PhoneNumberPrefix"))
        now = self.clock()
        rows = []
        for record in self._holder.values():
            if (not self._listed(record, now)
                    or (target_arn is not None and record.target_arn != target_arn)
                    or (countries and record.stock.country not in countries)
                    or (types and record.stock.type not in types)
                    or not record.stock.phone_number.startswith(prefix)):
                continue
            rows.append(record.summary(now))
        return rows

    def search_available(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        country, number_type = body.get("PhoneNumberCountryCode"), body.get("PhoneNumberType")
        if not country or not number_type:
            raise invalid("PhoneNumberCountryCode and PhoneNumberType are required.")
        if number_type not in _NUMBER_TYPES:
            raise invalid(f"Invalid PhoneNumberType: {number_type}")
        try:
            self.resolve_target(body)
        except ServiceError as exc:  # this API has no 404 in its model: the real one answers 400
            raise invalid(exc.message) from None
        prefix = prefix_of(body.get("PhoneNumberPrefix"))
        now = self.clock()
        return [
            {"PhoneNumber": s.phone_number, "PhoneNumberCountryCode": s.country, "PhoneNumberType": s.type}
            for s in self._stock.values()
            if s.country == country and s.type == number_type and s.phone_number.startswith(prefix)
            and self._available(s.phone_number, now, to_claimant=False)
        ]

    # -- contact flows (flows.py) ---------------------------------------------------------------------
    def _instance_record(self, reference: str, instance_id: str, now: float) -> ClaimRecord:
        """Our number ``reference`` (id or ARN), claimed to ``instance_id`` (or to a TDG)."""
        self.flows.flows_of(instance_id)  # 404 for an unknown instance
        record = self._own_record(reference, now)
        if record.released or (record.instance_id is not None and record.instance_id != instance_id):
            raise not_found(f"Phone number not found in instance {instance_id}: {reference}")
        return record

    def associate_flow(self, reference: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        instance_id = instance_of(body["InstanceId"])
        record = self._instance_record(reference, instance_id, now)
        flow = self.flows.flow(instance_id, str(body["ContactFlowId"]))
        if record.status(now) != "CLAIMED":
            raise not_settled(reference)
        self.flows.associate(record.phone_number_id, flow)
        self._append_ledger("associate", record, None, "ASSOCIATED", flow.id)
        return {}

    def disassociate_flow(self, reference: str, instance: str) -> dict[str, Any]:
        record = self._instance_record(reference, instance_of(instance), self.clock())
        self.flows.disassociate(record.phone_number_id)
        return {}

    def flow_associations(self, instance: str, resource_type: str | None) -> list[dict[str, Any]]:
        instance_id = instance_of(instance)
        self.flows.flows_of(instance_id)
        if resource_type not in (None, VOICE):
            return []  # the sandbox has phone numbers only
        return [{"ResourceId": self._by_id[number_id].phone_number_arn, "FlowId": flow.arn, "ResourceType": VOICE}
                for number_id, flow in self.flows.associations_of(instance_id)]

    def contact_flows(self, instance: str) -> list[dict[str, Any]]:
        return [flow.summary() for flow in self.flows.flows_of(instance_of(instance))]

    # -- inspection helpers for tests and the CLI ------------------------------------------------------
    def holder_of(self, phone_number: str) -> ClaimRecord | None:
        """The current claim on ``phone_number`` (ours or foreign), if any and not released."""
        record = self._holder.get(phone_number)
        return None if record is None or record.released else record

    def inventory_size(self) -> int:
        return len(self._stock)

    def in_cooldown(self, phone_number: str) -> bool:
        return self._cooldown_until.get(phone_number, float("-inf")) > self.clock()


def _client_token(body: dict[str, Any]) -> str | None:
    token = body.get("ClientToken")
    if token is not None and (not isinstance(token, str) or not TOKEN.fullmatch(token)):
        raise invalid("ClientToken must be a lowercase UUID.")
    return token
