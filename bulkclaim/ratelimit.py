"""Client-side rate control: a FIFO token bucket per API, an adaptive controller, an in-flight cap.

The bucket is written as a *virtual schedule* (the GCRA form of a token bucket): each caller, at the
moment it asks, is given the next free send time and sleeps until then. Asking is synchronous, so
callers are served strictly in the order they asked (FIFO) with no lock, and in any window of
length ``t`` at most ``burst + rate * t`` callers are admitted — the same bound the service's bucket
enforces, so a client matched to the service's (rate, burst) is never throttled by it.

A 429 means someone else shares the account's bucket or the quota is lower than configured:
:class:`AdaptiveRate` measures the rate left to us from the spacing of the 429s, restarts just
below it, and climbs back along a cubic curve, every time constant in intervals of the bucket's own
rate (issue 13), so the same scenario throttles alike at Connect's default 2/s and at 50/s. It probes
above its measure sparingly when its ceiling is only a configured rate (possibly wrong) and promptly
when the ceiling is the account's quota (then a lower share is only other callers' passing use, and
above half of the quota it cuts and climbs as AIMD does, so two processes converge to an even split).

Clock and sleep are injectable; tests run on a fake clock and never sleep.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

__all__ = ["AdaptiveRate", "Limiter", "SharedBucket", "SharedBuckets", "TokenBucket"]

Clock = Callable[[], float]
_MIN_SLEEP = 0.0005
_MAX_JITTER = 4.0
# The controller's constants, all in intervals of 1/rate or in requests (see AdaptiveRate):
_SPAN = 8  # requests accepted between two 429s before their spacing is trusted as a measure (±1/8)
_MARGIN = 0.97  # restart this far below the measured rate: the service's bucket refills 3% ahead of us
_MARGIN_TOLD = 0.9  # ... or this far, when the ceiling is only what we were told: the measure's error is ±1/8
_VICTIM = 0.05  # a 429 within this of the rate measured before: likely someone else's probe ...
_VICTIM_CUT = 0.95  # ... so only this much of a cut
_AGAIN = 0.75  # a later cut without a measure: milder, so two processes that started together split evenly
_CUBIC = 0.001  # recovery curve: rate = plateau * (1 + _CUBIC * (x / _STEP - k) ** 3), x in intervals
_STEP = 20.0
_DOUBLING = 20.0  # above its plateau, a controller whose ceiling is the quota doubles every this many intervals
# A ceiling known to be the quota, above the fair point: AIMD (a multiplicative cut, an increase alike for all)
_FAIR = 0.5  # above this share of the quota a 429 cuts the current rate, not back to the measure ...
_BETA = 0.6  # ... by (1 - _BETA) times our share of the quota: a bigger sender gives back more, as a ratio too
_GROW = 0.0007  # back to the rate cut along an absolute cubic: _GROW * quota * (x / _STEP - k) ** 3
_PROBE = 0.15  # then above it by _PROBE * quota * (2 ** (x / _DOUBLING) - 1): the same for every process
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
        self._first_after_cut: float | None = float("-inf")
        self.generation = 0  # how many cuts: a caller whose slot predates one books again

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
        if self._first_after_cut is None:
            self._first_after_cut = admit_at
        return admit_at - now

    def cut(self) -> None:
        """The service's bucket is empty (it just answered 429): empty ours too.

        The next slot is one interval (at the current rate) from now, with no burst credit left, and
        the callers sleeping on slots booked before the cut book again (see :meth:`acquire`): those
        slots were spaced for a rate the service just refused. Until one slot booked after the cut
        has gone out, :meth:`sent_since_cut` is false: a 429 then answers a request sent before it.
        """
        now = self._clock()
        self.generation += 1
        self._next = now + self._tolerance() + 1.0 / self._rate
        self._last_admit = min(self._last_admit, now)
        self._first_after_cut = None

    def sent_since_cut(self, now: float) -> bool:
        return self._first_after_cut is not None and self._first_after_cut <= now

    def _tolerance(self) -> float:
        """How far ahead of schedule a burst may run."""
        return (self.burst - 1) / self._rate

    async def acquire(self) -> None:
        """Wait for this caller's turn. A cancelled waiter's slot stays used: rarely wasted, never exceeded.
        A caller whose slot was booked before a :meth:`cut` books again when it wakes.

        Waits shorter than half a millisecond are not slept: a trip through the event loop costs more
        than that, and at such rates (over 2,000/s) the token of headroom absorbs the difference.
        """
        while True:
            generation = self.generation
            delay = self.reserve()
            if delay >= _MIN_SLEEP:
                await self._sleep(delay)
            if generation == self.generation:
                return


class AdaptiveRate:
    """Drives a :class:`TokenBucket`'s rate between a floor and ``ceiling`` from the 429s it hears.

    Every constant is in the bucket's own units (intervals of ``1 / rate``, or requests), so the
    same scenario throttles alike at Connect's default 2/s and at 50/s (issue 13: with constants in
    seconds, each probe carried ten times more of a 2/s run's requests than of a 20/s one's):

    - Until the first 429 the rate is ``ceiling``: a client told the true rate is never slowed.
    - A 429 means the service's bucket is empty *now*. Between two such moments the service
      admitted what it refilled (to within a token), so the requests *we* had accepted between two
      429s at least :data:`_SPAN` of them apart measure the rate left to us, as BBR measures a
      bottleneck. Going faster than that measure, a 429 restarts below it (see "ceiling" below).
      Without a measure yet, the first 429 restarts at ``decrease`` times the ceiling and later
      ones at :data:`_AGAIN` times the current rate: one deep cut each on a 429 that only one of
      two processes sharing a bucket happened to get had split them 60/40 for the whole run.
    - Already at or below the rate measured before (within :data:`_VICTIM`), a 429 is someone
      else's probe more likely than ours: a small cut (:data:`_VICTIM_CUT`), the measure kept. A
      client that took a 3% cut per 429 it suffered starved beside a second bulkclaim process.
    - A 429 of a request sent before the last cut (no request booked after it has gone out yet)
      is old news: it is measured but cuts nothing more than the measure says.
    - Each cut empties our bucket too (see :meth:`TokenBucket.cut`) and the rate climbs back along
      TCP CUBIC's curve, with its plateau at the measured rate (without a measure: halfway, as a
      ratio, back to the rate the congestion began at; a process that climbed straight back to the
      ceiling took the bucket from a second one that had measured its share and settled).

    What the ceiling is decides how the controller probes above its measure:

    - ``ceiling_is_quota=False`` (the default: a rate someone configured, possibly wrong, issue 13's
      "told 3x"): a share below the ceiling may be all there is. A measured cut restarts 10% below
      the measure (:data:`_MARGIN_TOLD`, the measure's own error), the curve's time counts in
      intervals of the restart rate (~60 to the plateau, then probes above it ever faster), and
      each probe that only confirms the measure doubles the time to the next (``patience``), until
      one passes 10% above the measure: a rare probe still finds capacity that was given back.
    - ``ceiling_is_quota=True`` (the ceiling is the account's quota, read from Service Quotas): a
      share below it can only be other callers' use of the bucket, which passes, and the curve's
      time counts in intervals of the ceiling. Above :data:`_FAIR` (half) of the quota, a 429 is
      answered as AIMD would: the *current* rate is cut by ``(1 - _BETA) * share`` of itself (the
      bigger sender gives back more, as a ratio too), then climbs back to the rate cut along an
      absolute cubic and beyond it by an absolute, growing step (:data:`_GROW`, :data:`_PROBE`, in
      units of the quota: alike for every process, whatever its share). Two processes sharing the
      bucket thus converge to an even split; restarting at the measure kept whatever split the first
      429s left (issue 13's two migrations in one account: one process took two thirds all run).
      At or below half of the quota, a measured cut restarts 3% below the measure (:data:`_MARGIN`)
      and above that plateau the rate doubles every :data:`_DOUBLING` intervals: when a second
      migration finishes, the one left does not climb back at its own low rate.
    """

    def __init__(self, bucket: TokenBucket, ceiling: float, *, decrease: float = 0.6, floor: float | None = None,
                 ceiling_is_quota: bool = False, clock: Clock = time.monotonic) -> None:
        self.bucket = bucket
        self.ceiling = ceiling
        self.ceiling_is_quota = ceiling_is_quota
        self.decrease = decrease
        self.floor = floor if floor is not None else min(ceiling, 0.1)
        self._clock = clock
        self.accepted = 0
        self._marks: deque[tuple[float, int]] = deque(maxlen=64)  # (time, accepted so far) at each 429
        self.estimate: float | None = None  # the rate left to us, as last measured
        self._target = ceiling  # the plateau of the recovery curve
        self._restart = ceiling  # the rate the last cut left
        self._since = clock()
        self._cut = False
        self.patience = 1.0  # the recovery curve's time runs this many times slower (told ceiling only)
        self.throttles = 0
        self._share = False  # the last cut was above the fair point (AIMD's curve, not the measure's)
        self._peak = 0.0  # the rate before the last such cut

    def on_throttle(self) -> None:
        """A 429 arrived: measure, then cut (see the class's description)."""
        self.throttles += 1
        now, current = self._clock(), self.current()
        self._marks.append((now, self.accepted))
        previous = self.estimate
        self.estimate = self._measure() or previous
        if self.ceiling_is_quota and current > self.ceiling * _FAIR:
            self._share_cut(now, current)
            return
        self._share = False
        margin = _MARGIN if self.ceiling_is_quota else _MARGIN_TOLD
        over_measure = self.estimate is not None and self.estimate * margin < current
        if self._cut and not self.bucket.sent_since_cut(now):  # old news
            if over_measure:
                assert self.estimate is not None
                self._set(now, self.estimate * margin, self.estimate)
            return
        if previous is not None and current <= previous * (1 + _VICTIM):
            self.estimate = previous
            self._wait_longer()  # at the measure again: nothing was given back
            self._set(now, current * _VICTIM_CUT, current)
        elif over_measure:
            assert self.estimate is not None
            if previous is not None and abs(self.estimate / previous - 1) <= _VICTIM:
                self._wait_longer()  # the probe measured what we knew
            self._set(now, self.estimate * margin, self.estimate)
        else:
            restart = current * (self.decrease if not self._cut else _AGAIN)
            self._set(now, restart, (restart * current) ** 0.5)

    def _share_cut(self, now: float, current: float) -> None:
        """Above the fair point with the quota known: a multiplicative cut of the current rate (AIMD)."""
        if self._cut and not self.bucket.sent_since_cut(now):
            return  # old news: it answers a request sent before the last cut
        # As CUBIC's fast convergence: a sender cut again below its last peak aims lower, giving back more.
        plateau = current if current >= self._peak else current * (1 + _BETA) / 2
        self._peak, self._share = current, True
        self._set(now, current * (1 - (1 - _BETA) * current / self.ceiling), plateau)

    def _share_curve(self, restart: float, plateau: float) -> float:
        """After a cut above the fair point: back to the rate cut, then beyond it, both in absolute steps
        of the quota, so two processes climb alike whatever their shares (AIMD's additive increase)."""
        steps = (self._clock() - self._since) * self.ceiling / _STEP
        k = (max(0.0, plateau - restart) / (_GROW * self.ceiling)) ** (1 / 3)
        if steps <= k:
            rate: float = plateau + _GROW * self.ceiling * (steps - k) ** 3
        else:
            rate = plateau + _PROBE * self.ceiling * (2 ** ((steps - k) * _STEP / _DOUBLING) - 1)
        return max(self.floor, min(self.ceiling, rate))

    def _wait_longer(self) -> None:
        if not self.ceiling_is_quota:
            self.patience *= 2

    def _set(self, now: float, restart: float, plateau: float) -> None:
        self._restart = max(self.floor, min(restart, self.ceiling))
        self._target = max(self._restart, min(plateau, self.ceiling))
        self._since, self._cut = now, True
        self.bucket.rate = self._restart
        self.bucket.cut()

    def _measure(self) -> float | None:
        """Requests accepted per second between the latest 429 and the latest one :data:`_SPAN` before it."""
        last_at, last_count = self._marks[-1]
        for at, count in reversed(self._marks):
            if last_count - count >= _SPAN and last_at > at:
                return (last_count - count) / (last_at - at)
        return None

    def on_success(self) -> None:
        """A request got through: count it and let the rate follow the recovery curve."""
        self.accepted += 1
        self.bucket.rate = self.current()
        if self.estimate is not None and self.bucket.rate > self.estimate * (1 + 2 * _VICTIM):
            self.patience = 1.0  # a probe found capacity above the measure: probe at the usual pace again

    def current(self) -> float:
        if not self._cut:
            return self.bucket.rate
        plateau, restart = self._target, self._restart
        if self._share:
            return self._share_curve(restart, plateau)
        if self.ceiling_is_quota:
            steps = (self._clock() - self._since) * self.ceiling / _STEP
        else:
            steps = (self._clock() - self._since) * restart / (_STEP * self.patience)
        k = (max(0.0, 1.0 - restart / plateau) / _CUBIC) ** (1 / 3)  # steps to the plateau
        if self.ceiling_is_quota and steps > k:
            rate: float = plateau * 2 ** ((steps - k) * _STEP / _DOUBLING)
        else:
            rate = plateau * (1.0 + _CUBIC * (steps - k) ** 3)
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
                 ceiling_is_quota: bool = False, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep,
                 shared: SharedBuckets | None = None) -> None:
        self.api = api
        self.bucket = TokenBucket(rate, max(1, burst - headroom), jitter=jitter, rng=rng, clock=clock, sleep=sleep)
        #: ``ceiling_is_quota``: ``rate`` is the account's quota (read from Service Quotas), not only what
        #: someone configured: see :class:`AdaptiveRate`
        self.adaptive = (AdaptiveRate(self.bucket, rate, ceiling_is_quota=ceiling_is_quota, clock=clock)
                         if adaptive else None)
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
