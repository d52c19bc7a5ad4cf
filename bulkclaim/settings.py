"""What a run is configured with: where Connect is (:class:`ClientSettings`) and how fast to send
(:class:`RateSettings`). Plain values, cheap to import: the command line builds them before it
loads the AWS SDK."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bulkclaim.ratelimit import Limiter, SharedBuckets

__all__ = ["OUTAGE_TIMEOUT", "ClientSettings", "RateSettings"]

#: How long a run rides out an endpoint that answered before and then became unreachable (seconds).
OUTAGE_TIMEOUT = 300.0


@dataclass(frozen=True)
class ClientSettings:
    """Where and how to reach Connect. ``None`` means botocore's own resolution (env, profile)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    connect_timeout: float = 5.0
    #: Longer than the service's normal answer (well under a second), short enough that a stalled
    #: request is given up and retried with the same token instead of holding an in-flight slot.
    read_timeout: float = 15.0
    max_pool_connections: int = 10


class RateSettings:
    """Client-side (rate, burst) per API; defaults are Connect's documented defaults (2/s, burst 5).

    ``rate_is_quota``: ``rate`` is the account's ClaimPhoneNumber rate quota as Service Quotas reported
    it (the CLI's ``--rate auto``), not only a configured value that may be wrong. ClaimPhoneNumber's
    controller then takes a lower share as other callers' passing use and probes back up promptly
    (see :class:`bulkclaim.ratelimit.AdaptiveRate`). Off by default: a library caller that read the
    quota itself says so."""

    def __init__(self, rate: float = 2.0, burst: int = 5, *, max_in_flight: int | None = None, adaptive: bool = True,
                 per_api: Mapping[str, tuple[float, int]] | None = None, rate_is_quota: bool = False) -> None:
        self.rate, self.burst, self.max_in_flight, self.adaptive = rate, burst, max_in_flight, adaptive
        self.per_api = dict(per_api or {})
        self.rate_is_quota = rate_is_quota

    def ceiling_is_quota(self, api: str) -> bool:
        """Whether ``api``'s rate is its quota: only ClaimPhoneNumber's, and only at ``rate``."""
        return self.rate_is_quota and api == "ClaimPhoneNumber" and api not in self.per_api

    def limiter(self, api: str, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]], *,
                shared: SharedBuckets | None = None) -> Limiter:
        """The limiter of ``api``; with ``shared``, its budget is the one every worker of a shared
        journal draws on (see ``bulkclaim.journal.postgres.budget``)."""
        rate, burst = self.per_api.get(api, (self.rate, self.burst))
        return Limiter(api, rate, burst, max_in_flight=self.max_in_flight if api == "ClaimPhoneNumber" else None,
                       adaptive=self.adaptive, ceiling_is_quota=self.ceiling_is_quota(api), clock=clock, sleep=sleep,
                       shared=shared)


