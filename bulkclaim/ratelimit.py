"""Client-side rate control: a FIFO token bucket per API, an AIMD controller, an in-flight cap.

The bucket is written as a *virtual schedule* (the GCRA form of a token bucket): each caller, at the
moment it asks, is given the next free send time and sleeps until then. Asking is synchronous, so
callers are served strictly in the order they asked (FIFO) with no lock, and in any window of
length ``t`` at most ``burst + rate * t`` callers are admitted — the same bound the service's bucket
enforces, so a client matched to the service's (rate, burst) is never throttled by it.

A 429 means someone else shares the account's bucket or the quota is lower than configured:
:class:`AdaptiveRate` multiplies the rate by 0.7 on every 429 and climbs back to the configured
ceiling along a cubic curve (slow near the rate the congestion began at, faster further away), the
way TCP CUBIC and botocore's adaptive mode recover, without their habit of starting from scratch.

Clock and sleep are injectable; tests run on a fake clock and never sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

__all__ = ["AdaptiveRate", "Limiter", "SharedBucket", "SharedBuckets", "TokenBucket"]

Clock = Callable[[], float]
_MIN_SLEEP = 0.0005
_MAX_JITTER = 4.0
# 429s within this many intervals of a cut are of requests booked before it (in flight, up to the
# default cap of 5, plus one): they still cut, but do not lower the rate recovery aims for.
_SETTLE_INTERVALS = 6.0
Sleep = Callable[[float], Awaitable[None]]


class SharedBucket(Protocol):
    """A bucket whose state lives elsewhere (a PostgreSQL journal's shared budget), with its own
    adaptive control: a :class:`Limiter` sends through it as through its own TokenBucket."""

    @property
    def rate(self) -> float: ...

    async def acquire(self) -> None: ...

    def on_throttle(self) -> None: ...

    def on_success(self) -> None: ...


class SharedBuckets(Protocol):
    """Where shared buckets come from: one per API, for every worker of the same budget."""

    def bucket(self, api: str, rate: float, burst: int) -> SharedBucket: ...


class TokenBucket:
    """FIFO token bucket: ``rate`` admissions per second, up to ``burst`` at once after idling."""

    def __init__(self, rate: float, burst: int, *, jitter: float = 0.0, rng: random.Random | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep) -> None:
        if rate <= 0 or burst < 1 or not 0 <= jitter <= _MAX_JITTER:
            raise ValueError(f"rate must be > 0, burst >= 1 and jitter within [0, {_MAX_JITTER}] intervals")
        self._rate = rate
        self.burst = burst
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._next = clock()  # theoretical time the next admission is due; starts with a full bucket
        self._last_slot = self._last_admit = float("-inf")

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        """Change the rate, keeping the bucket's state: the tokens already booked ahead of now stay
        booked, converted to the new rate.

        Without the conversion a cut would enlarge the burst tolerance (it is measured in time) and
        let new callers through before those queued, straight into the service bucket that just ran
        dry, and a raise would shrink it and hold callers back. Callers already sleeping keep their
        times, so after a raise the next admission is booked at least one new interval after the
        last one handed out (the bucket is empty then): FIFO order and the admission bound hold
        whichever way the rate moves.
        """
        if value <= 0:
            raise ValueError("rate must be > 0")
        if value == self._rate:
            return
        now = self._clock()
        converted = now + max(0.0, self._next - now) * self._rate / value
        self._rate = value
        self._next = max(converted, self._last_slot + self._tolerance() + 1.0 / value)

    def reserve(self) -> float:
        """Take the next slot now; return how long the caller must wait before using it."""
        now = self._clock()
        self._next = max(self._next, now)
        slot = max(now, self._next - self._tolerance())  # the schedule's admission time
        # A caller the schedule holds back is sent a random part of ``jitter`` intervals later; one that
        # finds a token goes at once. Either way never before the caller ahead of it (FIFO).
        delay = self._rng.uniform(0.0, self.jitter / self._rate) if self.jitter and slot > now else 0.0
        admit_at = max(self._last_admit, slot + delay)
        self._next += 1.0 / self._rate
        self._last_slot, self._last_admit = slot, admit_at
        return admit_at - now

    def _tolerance(self) -> float:
        """How far ahead of schedule a burst may run."""
        return (self.burst - 1) / self._rate

    async def acquire(self) -> None:
        """Wait for this caller's turn. A cancelled waiter's slot stays used: rarely wasted, never exceeded.

        Waits shorter than half a millisecond are not slept: a trip through the event loop costs more
        than that, and at such rates (over 2,000/s) the token of headroom absorbs the difference.
        """
        delay = self.reserve()
        if delay >= _MIN_SLEEP:
            await self._sleep(delay)


class AdaptiveRate:
    """AIMD with cubic recovery, driving a :class:`TokenBucket`'s rate between a floor and ``ceiling``."""

    def __init__(self, bucket: TokenBucket, ceiling: float, *, decrease: float = 0.7, floor: float | None = None,
                 scale: float | None = None, clock: Clock = time.monotonic) -> None:
        self.bucket = bucket
        self.ceiling = ceiling
        self.decrease = decrease
        self.floor = floor if floor is not None else min(ceiling, 0.1)
        # Cubic growth constant, scaled to the ceiling so the curve has the same shape at 2/s or 50/s:
        # back to the throttled rate in ~4 s after one decrease.
        self.scale = scale if scale is not None else ceiling * 0.005
        self._clock = clock
        self._throttled_at_rate: float | None = None
        self._since: float = clock()
        self._restart = ceiling  # the rate the last cut left
        self.throttles = 0

    def on_throttle(self) -> None:
        """A 429 arrived: cut the rate to ``decrease`` times the current one.

        The recovery curve climbs back to the rate the congestion *began* at: the 429s that follow
        within a few intervals of a cut are requests sent before it took effect, so each still cuts
        (every 429 lowers the rate) but none of them lowers that target to an already-cut rate.
        """
        self.throttles += 1
        now, current = self._clock(), self.current()
        if self._throttled_at_rate is None or now - self._since > _SETTLE_INTERVALS / current:
            self._throttled_at_rate = current  # a new congestion episode
        self._since = now
        self._restart = max(self.floor, current * self.decrease)
        self.bucket.rate = self._restart

    def on_success(self) -> None:
        """A request got through: let the rate follow the recovery curve."""
        self.bucket.rate = self.current()

    def current(self) -> float:
        if self._throttled_at_rate is None:
            return self.bucket.rate
        w_max = self._throttled_at_rate
        k: float = (max(0.0, w_max - self._restart) / self.scale) ** (1 / 3)
        elapsed = self._clock() - self._since
        rate: float = self.scale * (elapsed - k) ** 3 + w_max
        return max(self.floor, min(self.ceiling, rate))


class Limiter:
    """Everything a request to one API passes: the in-flight cap, then the bucket. Shared per process.

    ``headroom`` tokens of the service's burst are left unused. The service's bucket is refilled
    only while it is not full, and our requests reach it a variable latency after we send them: if
    the first burst arrives late, the service did not get the refill time we counted for it, and a
    client that uses the whole burst stays that far ahead of the service for the rest of the run
    (measured: ~1.5% of claims throttled at 20/s with a 35 ms skew). One token of headroom keeps
    the service's bucket one request ahead of us, which absorbs any jitter shorter than one
    interval, for the cost of one interval at the start of a run.

    ``jitter``: a request the schedule holds back is sent a random part of *two* intervals late
    (never out of order, never earlier; a request that finds a token goes at once). Paced at exactly
    the service's rate, we refill nothing for anyone else: another caller gets a token only by
    reaching the service's bucket before us after it refills, and AIMD only hears *our* 429s. Our
    admissions sit on a fixed grid (jitter delays them, but never moves the grid), and when the
    other caller's period is a multiple of ours the race has the same winner all run long. With
    half an interval of jitter, a caller whose requests land in the part of the interval the jitter
    never reached lost every race (benchmark: a 5/s neighbour 55-99% throttled in some runs, bulkclaim
    0%). Spread over two intervals, at any moment a request of ours is due but not yet sent at least
    half the time, so at any phase the other caller wins often enough that *we* then hit the empty
    bucket, hear the 429 and back off. Alone, the average rate is unchanged: a run ends at most two
    intervals later.
    """

    def __init__(self, api: str, rate: float, burst: int, *, max_in_flight: int | None = None, adaptive: bool = True,
                 headroom: int = 1, jitter: float = 2.5, rng: random.Random | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep,
                 shared: SharedBuckets | None = None) -> None:
        self.api = api
        self.bucket = TokenBucket(rate, max(1, burst - headroom), jitter=jitter, rng=rng, clock=clock, sleep=sleep)
        self.adaptive = AdaptiveRate(self.bucket, rate, clock=clock) if adaptive else None
        #: ``shared``: one budget for every worker of a shared journal; its bucket (and its AIMD state,
        #: when ``adaptive``) replaces this process's own. Without jitter: workers reserve slots in one
        #: order and send them in another already (a random delay per slot bunched their requests
        #: into 429s: 1.4% of 2,000 claims by 4 workers at 20/s)
        self.shared = shared.bucket(api, rate, self.bucket.burst) if shared else None
        self._feedback: AdaptiveRate | SharedBucket | None = (
            self.adaptive if self.shared is None else self.shared if adaptive else None)
        self.max_in_flight = max_in_flight or burst
        # fast_acquire: a free slot is taken without a trip through the event loop (the bucket and the
        # request that follow yield anyway); a full one is still waited for in FIFO order.
        self.in_flight = anyio.Semaphore(self.max_in_flight, fast_acquire=True)
        self.sent = 0
        self.throttled = 0

    async def acquire(self) -> None:
        """Wait for this request's turn in the bucket (the shared one, if any)."""
        await (self.bucket if self.shared is None else self.shared).acquire()

    def on_throttle(self) -> None:
        self.throttled += 1
        if self._feedback is not None:
            self._feedback.on_throttle()

    def on_success(self) -> None:
        if self._feedback is not None:
            self._feedback.on_success()

    @property
    def rate(self) -> float:
        return self.bucket.rate if self.shared is None else self.shared.rate
