"""Client-side rate control: a FIFO token bucket per API, an AIMD controller, an in-flight cap.

The bucket is written as a *virtual schedule* (the GCRA form of a token bucket): each caller, at the
moment it asks, is given the next free send time and sleeps until then. Asking is synchronous, so
callers are served strictly in the order they asked (FIFO) with no lock, and in any window of
length ``t`` at most ``burst + rate * t`` callers are admitted — the same bound the service's bucket
enforces, so a client matched to the service's (rate, burst) is never throttled by it.

A 429 means someone else shares the account's bucket or the quota is lower than configured:
:class:`AdaptiveRate` multiplies the rate by 0.7 on every 429 and climbs back to the configured
ceiling along a cubic curve (slow near the rate that was last throttled, faster further away), the
way TCP CUBIC and botocore's adaptive mode recover, without their habit of starting from scratch.

Clock and sleep are injectable; tests run on a fake clock and never sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["AdaptiveRate", "Limiter", "TokenBucket"]

Clock = Callable[[], float]
_MIN_SLEEP = 0.0005
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """FIFO token bucket: ``rate`` admissions per second, up to ``burst`` at once after idling."""

    def __init__(self, rate: float, burst: int, *, jitter: float = 0.0, rng: random.Random | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep) -> None:
        if rate <= 0 or burst < 1 or not 0 <= jitter <= 1:
            raise ValueError("rate must be > 0, burst >= 1 and jitter within [0, 1]")
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
        admit_at = slot
        if self.jitter:  # later by a random part of an interval, never before the previous caller
            admit_at = max(self._last_admit, slot + self._rng.uniform(0.0, self.jitter / self._rate))
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
        self.throttles = 0

    def on_throttle(self) -> None:
        """A 429 arrived: remember the rate it happened at and cut the rate to ``decrease`` times it."""
        self.throttles += 1
        current = self.current()
        self._throttled_at_rate = current
        self._since = self._clock()
        self.bucket.rate = max(self.floor, current * self.decrease)

    def on_success(self) -> None:
        """A request got through: let the rate follow the recovery curve."""
        self.bucket.rate = self.current()

    def current(self) -> float:
        if self._throttled_at_rate is None:
            return self.bucket.rate
        w_max = self._throttled_at_rate
        k: float = ((w_max * (1 - self.decrease)) / self.scale) ** (1 / 3)
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

    ``jitter`` delays each admission by a random part of half an interval (never out of order, never
    earlier). A client paced exactly on the service's refill instants wins every token from other
    callers without ever being throttled itself: they take all the 429s and AIMD, which only hears
    our own 429s, never yields. Jittered, contention is shared, we hear it, and back off to leave
    the others room. Alone, the average rate is unchanged.
    """

    def __init__(self, api: str, rate: float, burst: int, *, max_in_flight: int | None = None, adaptive: bool = True,
                 headroom: int = 1, jitter: float = 0.5, clock: Clock = time.monotonic,
                 sleep: Sleep = anyio.sleep) -> None:
        self.api = api
        self.bucket = TokenBucket(rate, max(1, burst - headroom), jitter=jitter, clock=clock, sleep=sleep)
        self.adaptive = AdaptiveRate(self.bucket, rate, clock=clock) if adaptive else None
        self.max_in_flight = max_in_flight or burst
        # fast_acquire: a free slot is taken without a trip through the event loop (the bucket and the
        # request that follow yield anyway); a full one is still waited for in FIFO order.
        self.in_flight = anyio.Semaphore(self.max_in_flight, fast_acquire=True)
        self.sent = 0
        self.throttled = 0

    def on_throttle(self) -> None:
        self.throttled += 1
        if self.adaptive is not None:
            self.adaptive.on_throttle()

    def on_success(self) -> None:
        if self.adaptive is not None:
            self.adaptive.on_success()

    @property
    def rate(self) -> float:
        return self.bucket.rate
