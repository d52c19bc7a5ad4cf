"""This process's shared limiters and a bare client behind them.

The account's bucket is per Region and API (DESIGN §2): every :class:`~bulkclaim.claimer.Claimer` of a
process (on one event loop) that talks to the same Region and endpoint with the same rate settings
shares one limiter per API, and :func:`connect_api` gives listings (the dry run, search) the same ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import structlog

from bulkclaim.calls import Api
from bulkclaim.connect import connect_client
from bulkclaim.outage import OUTAGE_TIMEOUT
from bulkclaim.ratelimit import Limiter
from bulkclaim.settings import ClientSettings, RateSettings

__all__ = ["APIS", "answer_timeout", "budget_scope", "connect_api", "shared_limiters"]

APIS = ("ClaimPhoneNumber", "DescribePhoneNumber", "ListPhoneNumbersV2", "ReleasePhoneNumber",
         "SearchAvailablePhoneNumbers", "UpdatePhoneNumber", "AssociatePhoneNumberContactFlow", "ListContactFlows",
        "ListFlowAssociations")


@contextlib.asynccontextmanager
async def connect_api(settings: ClientSettings, rates: RateSettings | None = None, *,
                      outage_timeout: float = OUTAGE_TIMEOUT) -> AsyncIterator[Api]:
    """A Connect client behind this process's shared limiters, without a journal or an engine:
    for listings (the dry run's preflight). Fatal answers stop it for good."""
    async with connect_client(settings) as client:
        yield Api(client, shared_limiters(settings, rates or RateSettings()), outage_timeout=outage_timeout,
                  answer_timeout=answer_timeout(settings))


def answer_timeout(settings: ClientSettings) -> float:
    """The bound of one whole call: a connection, then the whole answer within the read timeout."""
    return settings.connect_timeout + settings.read_timeout


# The account's bucket is per Region and API: every Claimer of this process (on this event loop) that
# talks to the same Region and endpoint *with the same rate settings* shares one limiter per API.
_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Limiter]] = (
    weakref.WeakKeyDictionary())


def shared_limiters(settings: ClientSettings, rates: RateSettings) -> dict[str, Limiter]:
    """This process's limiters for ``settings``' Region and endpoint, one per API.

    They are keyed by the rate settings as well as the scope: a Claimer asking for other rates (rate,
    burst, in-flight cap, adaptive) gets limiters of its own built from *its* arguments, never another
    Claimer's. Those then do not share one budget with the first Claimer's: together they may send
    more than either's rate, so a warning says so; give every Claimer of a process the same rates
    to have them share one budget.
    """
    registry = _LIMITERS.setdefault(asyncio.get_running_loop(), {})
    scope = budget_scope(settings)
    limiters: dict[str, Limiter] = {}
    for api in APIS:
        rate, burst = rates.per_api.get(api, (rates.rate, rates.burst))
        in_flight = rates.max_in_flight if api == "ClaimPhoneNumber" else None
        key = (*scope, api, rate, burst, in_flight, rates.adaptive, rates.ceiling_is_quota(api))
        if key not in registry:
            others = [k[3:] for k in registry if k[:3] == (*scope, api)]
            if others:
                structlog.get_logger("bulkclaim").warning(
                    "limiter.not_shared", api=api, region=scope[0], rate=rate, burst=burst, max_in_flight=in_flight,
                    adaptive=rates.adaptive, other_settings=others,
                    hint="Claimers with different rates do not share one rate budget")
            registry[key] = rates.limiter(api, time.monotonic, anyio.sleep)
        limiters[api] = registry[key]
    return limiters


def budget_scope(settings: ClientSettings) -> tuple[str, str]:
    """What an account's rate budget is per (besides the API): the Region, and the endpoint."""
    return (settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "",
            settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_CONNECT") or "")
