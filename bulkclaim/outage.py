"""One endpoint's reachability: while it cannot be reached, no number spends attempts on it.

An outage is a property of the endpoint, not of each number. When a request cannot even open a
connection (refused, DNS, connect timeout), the endpoint is *down*: requests wait here instead of
spending their attempts, and one probe at a time goes out, spaced by jittered backoff. Any HTTP
answer, even an error, ends the outage and every waiter goes on. The request that failed is sent
again with the same parameters, hence the same token: it never reached the service.

A request dropped or timed out *after* its connection was open is not evidence of an outage (the
service may have executed it): it stays an unknown outcome of that number, retried by the caller
with the same token, and its retry's connection tells whether the endpoint is down.

Two bounds end the waiting with :class:`EndpointUnreachableError`:
- the endpoint has never answered (a wrong URL, no network): ``first_contact`` seconds of probes;
- it answered before and has been unreachable for ``outage_timeout`` seconds.

The same gate makes requests go one at a time until the service has accepted the caller once
("trusted"), so a bad credential or an unknown target costs one request, not one per slot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

import anyio
import structlog

from bulkclaim.backoff import Backoff
from bulkclaim.model import EndpointUnreachableError
from bulkclaim.settings import OUTAGE_TIMEOUT

__all__ = ["FIRST_CONTACT", "OUTAGE_TIMEOUT", "PROBE_BACKOFF", "Gate"]

#: How long to keep probing an endpoint that has never answered: long enough for a network blip at
#: start-up, short enough that a wrong URL is reported within a minute (with a 5 s connect timeout).
FIRST_CONTACT = 20.0
#: Spacing of probes: the first within a second, then up to 15 s apart (about 25 probes in 5 minutes).
PROBE_BACKOFF = Backoff(base=1.0, floor=0.2, cap=15.0)


class Gate:
    """Decides when a request to one endpoint may go: freely, alone as a probe, or not at all."""

    def __init__(self, endpoint: str, *, outage_timeout: float = OUTAGE_TIMEOUT, first_contact: float = FIRST_CONTACT,
                 backoff: Backoff = PROBE_BACKOFF, sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        if outage_timeout < 0 or first_contact < 0:
            raise ValueError("outage_timeout and first_contact must be >= 0")
        self.endpoint = endpoint
        self.outage_timeout = outage_timeout
        self.first_contact = first_contact
        self.backoff = backoff
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.trusted = False  # the service accepted the caller once (answered without refusing it)
        self.ever_answered = False  # any HTTP answer, ever
        self.down_since: float | None = None  # the first failed connection of the current outage
        self.failure: EndpointUnreachableError | None = None  # once set, every request raises it
        self.probes = 0  # probes sent in the current outage (they space the next one)
        self._cause = ""
        self._probing = False
        self._changed = anyio.Event()  # set (and replaced) when a probe ends or the state changes
        self._log = structlog.get_logger("bulkclaim")

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def limit(self) -> float:
        """How long the current outage may last before the run gives up."""
        return self.outage_timeout if self.ever_answered else min(self.first_contact, self.outage_timeout)

    async def enter(self) -> bool:
        """Wait for this request's turn. Returns True if it goes alone, as a probe: the caller must then
        call :meth:`leave` once it has an answer (or none). Raises the failure once the bound is past."""
        while True:
            if self.failure is not None:
                raise self.failure
            if self.trusted and not self.down:
                return False
            if not self._probing:
                self._probing = True
                if self.down:
                    self.probes += 1
                    try:
                        await self.sleep(self._next_probe_delay())
                    except BaseException:
                        self.leave()
                        raise
                return True
            await self._changed.wait()

    def leave(self) -> None:
        """The probe is over, however it ended: the next waiter may probe, or all go."""
        self._probing = False
        self._wake()

    def reached(self, *, trusted: bool) -> None:
        """The service answered (``trusted``: without refusing the caller). Ends an outage."""
        self.ever_answered = True
        self.trusted = self.trusted or trusted
        if self.down_since is not None:
            self._log.info("endpoint.reachable", endpoint=self.endpoint, after_seconds=round(
                self.clock() - self.down_since, 1), probes=self.probes)
            self.down_since, self.probes = None, 0
            self._wake()

    def unreachable(self, cause: str) -> EndpointUnreachableError | None:
        """A connection could not be opened. Returns (and keeps) the failure once the outage has lasted
        its bound; until then the caller sends the request again after :meth:`enter`."""
        now = self.clock()
        self._cause = cause
        if self.down_since is None:
            self.down_since, self.probes = now, 0
            self._log.warning("endpoint.unreachable", endpoint=self.endpoint, cause=cause,
                              giving_up_after_seconds=self.limit)
        elapsed = now - self.down_since
        if self.failure is None and elapsed >= self.limit:
            self.failure = EndpointUnreachableError(self.endpoint, cause, elapsed, ever_answered=self.ever_answered)
            self._wake()
        return self.failure

    def reset(self) -> None:
        """Forget the outage and the trust (a half-open circuit breaker): the next request probes alone."""
        self.failure, self.down_since, self.probes, self.trusted = None, None, 0, False
        self._wake()

    def _next_probe_delay(self) -> float:
        assert self.down_since is not None
        left = self.down_since + self.limit - self.clock()
        # The last probe goes at the bound itself: giving up is decided by a probe that failed.
        return max(0.0, min(self.backoff.delay(self.probes, self.rng), left))

    def _wake(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
