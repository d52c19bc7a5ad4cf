"""What a Claimer counts for its metrics, in plain Python: cheap enough to keep whether or not anyone
reads it, and no import of ``prometheus_client`` (the ``bulkclaim[metrics]`` extra) until something
exports it (:mod:`bulkclaim.metrics`).

Every request :class:`~bulkclaim.calls.Api` sends is counted here by API and outcome class (``ok``,
``throttled``: a 429, ``error``: any other error, a timeout or no answer), with its latency in a
fixed-bucket histogram. Runs are tracked while they go on (:meth:`Telemetry.tracking`): numbers by
status are those of the runs going on plus those of the runs that ended, so they only grow, as a
Prometheus counter must; a run is a claim run, an acquisition or a release. The limiters' current
rates and the journals' lease take-overs are read when asked.

Only the event loop writes; an exporter may read from another thread (the HTTP server's): readers
take copies, and a run moving from "live" to "ended" is atomic for them (one lock).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulkclaim.journal.protocol import Journal
    from bulkclaim.ratelimit import Limiter
    from bulkclaim.run import RunState

__all__ = ["LATENCY_BUCKETS", "OUTCOMES", "Latency", "Rate", "Telemetry"]

#: Upper bounds (seconds) of the request latency histogram: Prometheus' defaults, and 15/30 s for the
#: read timeouts (a call is bounded by the connect + read timeout, 20 s by default).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0)
#: The outcome classes of a request.
OUTCOMES = ("ok", "throttled", "error")


@dataclass(frozen=True)
class Latency:
    """One API's latency histogram as read: cumulative counts per upper bound (the last, +Inf, is
    the number of requests), and the sum of the latencies."""

    cumulative: tuple[int, ...]
    total_seconds: float


@dataclass(frozen=True)
class Rate:
    """One API's rate: what is sent at now, the configured ceiling, and whether the budget is shared
    by every worker of a PostgreSQL journal (else it is this process's limiter)."""

    current: float
    ceiling: float
    shared: bool


class Telemetry:
    """Live counts of one Claimer (or of several, if they are given the same one)."""

    def __init__(self) -> None:
        self._requests: Counter[tuple[str, str]] = Counter()
        self._buckets: dict[str, list[int]] = {}  # per API: requests per bucket (not cumulative), +Inf last
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._live: set[RunState] = set()
        self._ended: Counter[str] = Counter()
        #: The limiters whose current rate is shown (the latest Api's; Claimers of a process share them).
        self.limiters: Mapping[str, Limiter] = {}
        self._journals: list[Journal] = []  # whose take-overs are counted (closed ones too: a counter)

    # -- written by the engine (the event loop) --------------------------------------------------------
    def request(self, api: str, outcome: str, seconds: float) -> None:
        """One request to ``api`` ended with ``outcome`` (one of :data:`OUTCOMES`) after ``seconds``."""
        self._requests[api, outcome] += 1
        buckets = self._buckets.get(api)
        if buckets is None:
            buckets = self._buckets[api] = [0] * (len(LATENCY_BUCKETS) + 1)
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._seconds[api] = self._seconds.get(api, 0.0) + seconds

    def watch(self, journal: Journal) -> None:
        """Count the numbers ``journal`` takes over from dead workers (a PostgreSQL journal's leases)."""
        with self._lock:
            if all(journal is not known for known in self._journals):
                self._journals.append(journal)

    @contextmanager
    def tracking(self, state: RunState) -> Iterator[None]:
        """Count ``state``'s numbers while its run goes on, and keep them once it ends."""
        with self._lock:
            self._live.add(state)
        try:
            yield
        finally:
            with self._lock:
                self._live.discard(state)
                self._ended.update(state.summary.statuses)

    # -- read by an exporter (any thread) --------------------------------------------------------------
    def requests(self) -> dict[tuple[str, str], int]:
        """Requests sent so far, by (API, outcome)."""
        return dict(self._requests)

    def latencies(self) -> dict[str, Latency]:
        """Each API's latency histogram so far."""
        latencies = {}
        for api, buckets in dict(self._buckets).items():
            running, cumulative = 0, []
            for count in list(buckets):
                running += count
                cumulative.append(running)
            latencies[api] = Latency(tuple(cumulative), self._seconds.get(api, 0.0))
        return latencies

    def numbers(self) -> dict[str, int]:
        """Numbers by status: those the runs going on have settled so far, and every ended run's."""
        with self._lock:
            counts = Counter(self._ended)
            for state in self._live:
                counts.update(dict(state.summary.statuses))
        return dict(counts)

    def remaining(self) -> int:
        """Numbers the runs going on still have to settle."""
        with self._lock:
            return sum(state.summary.remaining for state in self._live)

    @property
    def lease_takeovers(self) -> int:
        """Numbers taken over from a worker whose lease expired (by every journal watched)."""
        with self._lock:
            return sum(journal.takeovers for journal in self._journals)

    def rates(self) -> dict[str, Rate]:
        """Each API's current rate and configured ceiling in requests per second. A PostgreSQL
        journal's workers share one budget: its rate then is the shared one, as this process's latest
        send slot found it in the journal (every worker shows the same), not a limiter of its own."""
        rates = {}
        for api, limiter in dict(self.limiters).items():
            ceiling = limiter.adaptive.ceiling if limiter.adaptive is not None else limiter.rate
            rates[api] = Rate(limiter.rate, ceiling, shared=limiter.shared is not None)
        return rates
