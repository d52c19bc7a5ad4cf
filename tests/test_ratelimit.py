"""Limiter conformance on a fake clock: the bucket bound, FIFO order, adaptive decrease and recovery.

No real sleeps: the clock is a number the test moves, and sleeping only records the wait.
"""

from __future__ import annotations

import itertools
import random

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulkclaim.backoff import Backoff
from bulkclaim.ratelimit import AdaptiveRate, Limiter, TokenBucket
from bulkclaim.sandbox.config import ThrottleConfig
from bulkclaim.sandbox.throttle import ServerBucket
from tests.support import FakeClock

EPS = 1e-9


@st.composite
def workloads(draw: st.DrawFn) -> tuple[float, int, list[float]]:
    rate = draw(st.floats(min_value=0.5, max_value=100.0))
    burst = draw(st.integers(min_value=1, max_value=20))
    gaps = draw(st.lists(st.floats(min_value=0.0, max_value=3.0 / rate), min_size=1, max_size=300))
    return rate, burst, gaps


def admissions(rate: float, burst: int, gaps: list[float]) -> list[float]:
    """Each caller asks after its gap; return the time each one is admitted."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate, burst, clock=clock)
    admitted = []
    for gap in gaps:
        clock.advance(gap)
        admitted.append(clock.now + bucket.reserve())
    return admitted


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_any_window_admits_at_most_burst_plus_rate_times_length(workload: tuple[float, int, list[float]]) -> None:
    rate, burst, gaps = workload
    admitted = admissions(rate, burst, gaps)
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            window = admitted[j] - admitted[i]
            assert j - i + 1 <= burst + rate * window + EPS


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_callers_are_admitted_in_the_order_they_asked(workload: tuple[float, int, list[float]]) -> None:
    admitted = admissions(*workload)
    assert admitted == sorted(admitted)


@settings(max_examples=200, deadline=None)
@given(workloads())
def test_no_caller_waits_when_the_bucket_has_a_token(workload: tuple[float, int, list[float]]) -> None:
    rate, burst, gaps = workload
    asked = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    admitted = admissions(rate, burst, gaps)
    for i, (ask, admit) in enumerate(zip(asked, admitted, strict=True)):
        if admit > ask + EPS:  # it waited: then exactly `burst` admissions fill the window before it
            earlier = [a for a in admitted[:i] if a > admit - burst / rate + EPS]
            assert len(earlier) >= burst - 1


def test_burst_then_steady_rate() -> None:
    assert admissions(2.0, 5, [0.0] * 8) == pytest.approx([0, 0, 0, 0, 0, 0.5, 1.0, 1.5])


@pytest.mark.anyio
async def test_concurrent_acquire_sleeps_in_fifo_order() -> None:
    clock = FakeClock(0.0)
    waits: list[tuple[int, float]] = []
    current = {"task": -1}

    async def fake_sleep(seconds: float) -> None:
        waits.append((current["task"], seconds))
        await anyio.lowlevel.checkpoint()

    bucket = TokenBucket(4.0, 2, clock=clock, sleep=fake_sleep)
    order: list[int] = []

    async def caller(index: int) -> None:
        current["task"] = index
        await bucket.acquire()
        order.append(index)

    async with anyio.create_task_group() as tg:
        for index in range(6):
            tg.start_soon(caller, index)
    assert sorted(order) == list(range(6))
    assert waits == [(2, 0.25), (3, 0.5), (4, 0.75), (5, 1.0)]


def send_after_the_cut(bucket: TokenBucket, clock: FakeClock) -> None:
    """A caller books a slot after the last cut and its request goes out: the next 429 is news."""
    clock.advance(bucket.reserve())


def test_adaptive_rate_drops_on_each_429_and_recovers_to_the_ceiling() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(10.0, 5, clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=10.0, clock=clock)
    adaptive.on_throttle()  # no measure yet (one 429): 0.6 x the rate
    assert bucket.rate == pytest.approx(6.0)
    send_after_the_cut(bucket, clock)
    adaptive.on_throttle()
    assert bucket.rate == pytest.approx(4.5, rel=0.03)  # 0.75 x the rate, a moment into recovery from 6
    seen = []
    for _ in range(2000):  # ~100 intervals back to 6/s (where the congestion began), then probing above
        clock.advance(0.1)
        adaptive.on_success()
        seen.append(bucket.rate)
    assert seen == sorted(seen), "recovery never goes down without a 429"
    assert max(seen) == pytest.approx(10.0), "recovers all the way to the configured ceiling"
    assert all(rate <= 10.0 + EPS for rate in seen)
    assert seen[5] < 7.0, "recovery is gradual, not a jump back"


def test_a_429_of_a_request_sent_before_the_cut_cuts_nothing() -> None:
    """Requests in flight when a 429 arrives come back 429 too, moments later: the cut already
    answered for them. Only once a request booked after the cut has gone out is a 429 news."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(10.0, 5, clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=10.0, clock=clock)
    adaptive.on_throttle()
    clock.advance(0.01)
    adaptive.on_throttle()
    adaptive.on_throttle()
    assert bucket.rate == pytest.approx(6.0, rel=0.01)
    assert adaptive.throttles == 3
    send_after_the_cut(bucket, clock)
    adaptive.on_throttle()
    assert bucket.rate < 5.0


def measured_at_10_per_second(ceiling: float = 30.0, *, quota: bool = False) -> tuple[FakeClock, TokenBucket,
                                                                                      AdaptiveRate]:
    """Told 30/s; a 429, twenty requests accepted in two seconds, another 429: 10/s measured."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(ceiling, 5, clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=ceiling, ceiling_is_quota=quota, clock=clock)
    adaptive.on_throttle()
    for _ in range(20):
        clock.advance(0.1)
        adaptive.on_success()
    send_after_the_cut(bucket, clock)
    clock.now = 2.0
    adaptive.on_throttle()
    return clock, bucket, adaptive


def test_the_spacing_of_429s_measures_the_rate_left_to_us() -> None:
    """Between two 429s the service's bucket went from empty to empty: it admitted what it refilled.
    Twenty requests accepted in two seconds measure 10/s, whatever we were told; the rate restarts
    below it (not at a fraction of a rate three times too high) and climbs back towards it. Told a
    rate that proved wrong, 10% below: the measure's own error is up to 1/8."""
    clock, bucket, adaptive = measured_at_10_per_second()
    assert adaptive.estimate == pytest.approx(10.0)
    assert bucket.rate == pytest.approx(9.0)
    clock.advance(3.0)  # 27 intervals later: most of the way back, not yet at the measured rate
    adaptive.on_success()
    assert 9.5 < bucket.rate < 10.0


def test_a_probe_that_only_confirms_the_measure_doubles_the_wait_before_the_next() -> None:
    """Told a rate that proved wrong (issue 13's told-3x), probing above the measure mostly costs a
    429: each probe that ends at the rate measured before doubles the time to the next; one that
    gets 10% above the measure without a 429 (capacity was given back) resets it."""
    clock, bucket, adaptive = measured_at_10_per_second()
    assert adaptive.patience == 1.0
    for expected in (2.0, 4.0):
        clock.advance(1.0)
        send_after_the_cut(bucket, clock)
        adaptive.on_throttle()  # at the measured rate again: the probe found nothing
        assert adaptive.patience == expected
    start = clock.now
    clock.advance(3.0)
    slow = adaptive.current()
    clock.now, adaptive.patience = start + 0.75, 1.0
    assert slow == pytest.approx(adaptive.current()), "at patience 4 the curve's time runs 4 times slower"
    clock.now, adaptive.patience = start + 3.0, 4.0
    clock.advance(200.0)  # no 429 for long: the probe climbs past 11/s
    adaptive.on_success()
    assert bucket.rate > 11.0 and adaptive.patience == 1.0


def test_a_ceiling_that_is_the_quota_is_taken_back_promptly_once_the_others_leave() -> None:
    """A ceiling read from Service Quotas is the account's real quota: a share measured below it is
    other callers' passing use (a second migration). Probes never wait longer, and the climb back
    counts in intervals of the ceiling, growing in absolute steps of it: alone again, it is back at
    the quota in under 200 intervals, while a controller told the same ceiling is still near its
    measure. (Above half of the quota each 429 cuts the current rate, AIMD-like: see the next test.)"""
    rates = {}
    for quota in (True, False):
        clock, bucket, adaptive = measured_at_10_per_second(20.0, quota=quota)
        assert bucket.rate < 20.0 if quota else bucket.rate == pytest.approx(9.0)
        clock.advance(1.0)
        send_after_the_cut(bucket, clock)
        adaptive.on_throttle()  # at the measure: someone else's probe
        assert adaptive.patience == (1.0 if quota else 2.0)
        seen = []
        for _ in range(100):  # 10 s: 200 intervals of the 20/s ceiling
            clock.advance(0.1)
            adaptive.on_success()
            seen.append(bucket.rate)
        assert seen == sorted(seen) and all(rate <= 20.0 + EPS for rate in seen)
        rates[quota] = seen[-1]
    assert rates[True] == pytest.approx(20.0)
    assert rates[False] < 11.0


def test_with_the_quota_known_a_429_above_half_of_it_cuts_the_bigger_sender_more() -> None:
    """Issue 13, third pass: with the ceiling known to be the quota, a 429 above half of it cuts the
    *current* rate (not back to a measured share, which kept whatever split the first 429s left) by
    40% of our share of the quota: 40% at the quota, 28% at 70% of it. Two processes sharing the
    bucket each give back in proportion to their share, so the split evens out; at or below half a
    429 takes the measured path as before (unmeasured yet: a cut to 0.6 times the rate)."""
    for share, kept in ((1.0, 0.6), (0.7, 0.72)):
        clock = FakeClock(0.0)
        bucket = TokenBucket(20.0 * share, 5, clock=clock)
        adaptive = AdaptiveRate(bucket, ceiling=20.0, ceiling_is_quota=True, clock=clock)
        adaptive.on_throttle()
        assert bucket.rate == pytest.approx(20.0 * share * kept)
        adaptive.on_throttle()  # answers a request sent before the cut: nothing more
        assert bucket.rate == pytest.approx(20.0 * share * kept)
    clock = FakeClock(0.0)
    bucket = TokenBucket(8.0, 5, clock=clock)  # 40% of the quota: below the fair point
    adaptive = AdaptiveRate(bucket, ceiling=20.0, ceiling_is_quota=True, clock=clock)
    adaptive.on_throttle()
    assert bucket.rate == pytest.approx(8.0 * 0.6)  # not measured yet: the usual first cut


def test_a_429_at_the_measured_rate_is_someone_elses_probe_and_cuts_little() -> None:
    """Once the rate left to us is measured, a 429 while we are not above it most likely answers
    another caller going faster: a 5% cut and the measure kept. Cutting to 97% of our own rate on
    every such 429 had a second bulkclaim process in the same account starve beside the first."""
    clock, bucket, adaptive = measured_at_10_per_second()  # restarted at 9.7
    clock.advance(1.0)
    for _ in range(8):
        adaptive.on_success()  # eight more accepted in no time: a measure of this span would say 8/s
    send_after_the_cut(bucket, clock)
    before = adaptive.current()
    adaptive.on_throttle()
    assert adaptive.estimate == pytest.approx(10.0)
    assert bucket.rate == pytest.approx(0.95 * before)


def test_a_cut_empties_our_bucket_and_rebooks_sleepers() -> None:
    """After a 429 the service's bucket is empty: ours must have no burst credit left either, and a
    caller asleep on a slot booked at the old rate books again at the new one."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(10.0, 5, clock=clock)
    generation = bucket.generation
    bucket.rate = 5.0
    bucket.cut()
    assert bucket.generation != generation
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.2, 0.4, 0.6])


def test_adaptive_rate_never_goes_below_its_floor() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(2.0, 5, clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=2.0, floor=0.1, clock=clock)
    for _ in range(50):
        adaptive.on_throttle()
        send_after_the_cut(bucket, clock)
    assert bucket.rate == pytest.approx(0.1)


def test_limiter_counts_throttles_and_keeps_headroom() -> None:
    clock = FakeClock(0.0)
    limiter = Limiter("ClaimPhoneNumber", 2.0, 5, clock=clock)
    assert limiter.bucket.burst == 4  # one token of the service's burst left as headroom
    assert limiter.max_in_flight == 5
    limiter.on_throttle()
    assert limiter.throttled == 1
    assert limiter.rate == pytest.approx(1.2)
    fixed = Limiter("ClaimPhoneNumber", 2.0, 5, adaptive=False, clock=clock)
    fixed.on_throttle()
    assert fixed.rate == 2.0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_jittered_between_floor_and_cap(attempt: int, seed: int) -> None:
    backoff = Backoff()
    delay = backoff.delay(attempt, random.Random(seed))
    assert backoff.floor <= delay <= backoff.cap
    assert delay <= max(backoff.floor, backoff.base * 2 ** (attempt - 1))


def test_backoff_spreads_retries() -> None:
    rng = random.Random(1)
    draws = {round(Backoff().delay(4, rng), 3) for _ in range(50)}
    assert len(draws) > 40


def test_a_rate_cut_rescales_the_queue_and_keeps_fifo_order() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(2.0, 5, clock=clock)
    queued = [bucket.reserve() for _ in range(8)]  # 5 at once, then 0.5, 1.0, 1.5 s
    assert queued == pytest.approx([0, 0, 0, 0, 0, 0.5, 1.0, 1.5])
    bucket.rate = 1.0  # a 429: the backlog of 1 token-interval ahead now takes twice as long
    after = bucket.reserve()
    assert after > queued[-1], "a caller asking after the cut waits behind those already queued"
    bucket.rate = 4.0  # recovery: the remaining backlog drains at the new rate
    assert bucket.reserve() == pytest.approx(after + 0.25)  # right behind the queue, at the new pace


def test_aimd_never_admits_above_the_bound_of_its_ceiling() -> None:
    """Cuts, rebooking (a slot booked before a cut is given up and booked again, as ``acquire``
    does) and recovery together never send more than the ceiling's bucket allows."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(10.0, 5, clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=10.0, clock=clock)
    sent: list[float] = []
    pending: list[tuple[float, int]] = []  # (admission time, generation booked in)
    for step in range(400):
        clock.advance(0.05)
        sent += [at for at, generation in pending if at <= clock.now and generation == bucket.generation]
        rebook = sum(1 for at, generation in pending if at > clock.now and generation != bucket.generation)
        pending = [(at, generation) for at, generation in pending if at > clock.now and generation == bucket.generation]
        if step in (50, 52, 54, 120):
            adaptive.on_throttle()
        else:
            adaptive.on_success()
        for _ in range(1 + rebook):
            pending.append((clock.now + bucket.reserve(), bucket.generation))
    sent.sort()
    for i in range(len(sent)):
        for j in range(i, min(len(sent), i + 60)):
            assert j - i + 1 <= 5 + 10.0 * (sent[j] - sent[i]) + EPS


@settings(max_examples=100, deadline=None)
@given(workloads(), st.integers(min_value=0, max_value=2**32))
@example((0.5, 4, [0.0005, 0.0005, 0.0, 0.1966303555760986]), 1)  # found by CI: one ulp of rounding
def test_jitter_only_delays_keeps_order_and_keeps_the_rate(workload: tuple[float, int, list[float]], seed: int) -> None:
    rate, burst, gaps = workload
    clock = FakeClock(0.0)
    plain = TokenBucket(rate, burst, clock=clock)
    jitter = Limiter("ClaimPhoneNumber", rate, burst).bucket.jitter  # the default, in intervals
    jittered = TokenBucket(rate, burst, jitter=jitter, rng=random.Random(seed), clock=clock)
    pairs = []
    for gap in gaps:
        clock.advance(gap)
        pairs.append((clock.now + plain.reserve(), clock.now + jittered.reserve()))
        jittered.rate = rate  # what the adaptive controller does after each success: must change nothing
    admitted = [j for _, j in pairs]
    # FIFO: each admission no earlier than the one before (clock.now + delay can round by one ulp).
    assert all(later >= earlier - EPS for earlier, later in itertools.pairwise(admitted))
    for scheduled, actual in pairs:
        assert scheduled - EPS <= actual <= scheduled + jitter / rate + EPS


def their_longest_run_of_429s(limiter: Limiter, clock: FakeClock, neighbour_phase: float,
                              seconds: float = 30.0) -> int:
    """Our backlogged callers paced by ``limiter`` and another caller sending every 0.2 s at
    ``neighbour_phase`` share the sandbox's bucket (20/s, burst 5): 25/s asked of 20/s all along.
    Return the longest run of their 429s with none of ours in between: that long, AIMD (which
    hears only our 429s) had no reason to back off while they were refused every time.

    No adaptation and no latency: this isolates who loses the race for each refilled token.
    """
    ours = []
    while clock.now < seconds:  # each caller asks the moment the one before it is sent
        clock.advance(limiter.bucket.reserve())
        ours.append((clock.now, "us"))
    theirs = [(neighbour_phase + k * 0.2, "them") for k in range(int(seconds / 0.2))]
    service = ServerBucket(ThrottleConfig(rate=20.0, burst=5), now=0.0)
    run = longest = 0
    for at, who in sorted(ours + theirs):
        if not service.try_take(at):
            run = run + 1 if who == "them" else 0
            longest = max(longest, run)
    return longest


@pytest.mark.parametrize("phase_ms", range(1, 200, 6))
def test_a_caller_sharing_the_bucket_is_not_refused_for_long_without_us_hearing_it(phase_ms: int) -> None:
    """Paced at exactly the service's rate with half an interval of jitter, some phases of the other
    caller (against our schedule and the service's refills) lost every race for a refilled token
    while we were never refused: runs of 25-54 of their 429s in a row here, and in the neighbour
    benchmark 55-99% of its requests throttled for whole runs. Now we hit the empty bucket
    ourselves within a few of theirs, at every phase and start."""
    for start_ms in range(0, 50, 5):
        clock = FakeClock(start_ms / 1000)
        limiter = Limiter("ClaimPhoneNumber", 20.0, 5, adaptive=False, rng=random.Random(phase_ms * 100 + start_ms),
                          clock=clock)
        assert their_longest_run_of_429s(limiter, clock, phase_ms / 1000) < 20, (phase_ms, start_ms)

def test_jitter_spares_a_caller_that_finds_a_token() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(2.0, 3, jitter=2.0, rng=random.Random(0), clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst goes at once
    waits = [bucket.reserve() for _ in range(20)]  # the schedule holds these back: jittered
    assert all(0.5 * (i + 1) <= wait <= 0.5 * (i + 1) + 1.0 for i, wait in enumerate(waits))
    assert len({round(wait - 0.5 * (i + 1), 6) for i, wait in enumerate(waits)}) > 10
