"""A discrete-event simulation of claim runs against the service's bucket, on a fake clock.

Each client is the real :class:`bulkclaim.ratelimit.Limiter` (bucket, adaptive controller, in-flight
cap) with the engine's retry rule (a throttled claim waits ``Backoff.delay(1)`` and queues again);
the service is the sandbox's :class:`ServerBucket`, shared by every client and, optionally, by a
neighbour that sends at a steady rate without retries (its 429s are only counted). Events are
processed in time order, so each limiter sees ``reserve``, ``on_throttle`` and ``on_success``
exactly as a run would, without a single real sleep: a 300-number run takes milliseconds at any
rate. Used to prove properties of the controller across rates (issue 13: the same scenario at 2/s
and 50/s must throttle alike).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from bulkclaim.backoff import Backoff
from bulkclaim.ratelimit import AdaptiveRate, Limiter, TokenBucket
from bulkclaim.sandbox.config import ThrottleConfig
from bulkclaim.sandbox.throttle import ServerBucket
from tests.support import FakeClock

__all__ = ["SimulatedRun", "simulate", "simulate_shared", "split_of_two"]


@dataclass
class SimulatedRun:
    """What the service saw of one client: attempts, 429s, and when its last number was accepted."""

    attempts: int = 0
    throttled: int = 0
    finished_at: float = 0.0
    accepted: int = 0
    accepted_at: list[float] = field(default_factory=list)  # when each number was accepted

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.attempts if self.attempts else 0.0

    def efficiency(self, rate: float, burst: int = 5) -> float:
        """η = T*/T with T* = (N - b) / r: 1.0 is the service's bucket kept busy all run long."""
        return (self.accepted - burst) / rate / self.finished_at if self.finished_at else 0.0


def simulate(*, true_rate: float, told_rate: float, numbers: int, burst: int = 5, latency: float = 0.03,
             seed: int = 0) -> SimulatedRun:
    """Claim ``numbers`` against a service bucket of (``true_rate``, ``burst``) with a client told
    ``told_rate``; ``latency`` is each request's round trip (the service decides halfway)."""
    return simulate_shared(true_rate=true_rate, told=[told_rate], numbers=numbers, burst=burst, latency=latency,
                           seed=seed)[0]


def simulate_shared(*, true_rate: float, told: list[float], numbers: int, burst: int = 5, latency: float = 0.03,
                    latency_jitter: float = 0.0, neighbour_rate: float | None = None, starts: list[float] | None = None,
                    quota: bool = False, seed: int = 0) -> list[SimulatedRun]:
    """Several clients (one per entry of ``told``, each claiming ``numbers``) and optionally a
    neighbour sending every ``1 / neighbour_rate`` seconds until the last client is done, all against
    one service bucket; client ``i`` starts at ``starts[i]`` (default: all at 0). Each round trip is
    ``latency`` plus up to ``latency_jitter`` more. Returns one
    :class:`SimulatedRun` per client, then the neighbour's (if any)."""
    clock = FakeClock(0.0)
    rng = random.Random(seed)
    limiters = [Limiter("ClaimPhoneNumber", rate, burst, rng=random.Random(seed * 31 + 1 + i), clock=clock,
                        ceiling_is_quota=quota)
                for i, rate in enumerate(told)]
    service = ServerBucket(ThrottleConfig(rate=true_rate, burst=burst), now=0.0)
    backoff = Backoff()
    runs = [SimulatedRun() for _ in told]
    other = SimulatedRun()
    order = itertools.count()
    events: list[tuple[float, int, int, str]] = []  # (time, tie-break, client, what)

    def at(when: float, client: int, what: str) -> None:
        heapq.heappush(events, (when, next(order), client, what))

    def round_trip() -> float:
        return latency + (rng.uniform(0.0, latency_jitter) if latency_jitter else 0.0)

    booked: list[dict[int, int]] = [{} for _ in told]
    waiting = [numbers] * len(told)  # numbers no worker of that client has taken yet
    for client, limiter in enumerate(limiters):
        for _ in range(min(limiter.max_in_flight, numbers)):
            waiting[client] -= 1
            at(starts[client] if starts else 0.0, client, "ask")
    if neighbour_rate:
        at(rng.uniform(0.0, 1.0 / neighbour_rate), -1, "tick")
    unfinished = len(told)
    while events and unfinished:
        now, _, client, what = heapq.heappop(events)
        clock.now = max(clock.now, now)
        if what == "tick":  # the neighbour: one request, no retry (decided at once: it only shifts its phase)
            other.attempts += 1
            if not service.try_take(now):
                other.throttled += 1
            assert neighbour_rate is not None
            at(now + 1.0 / neighbour_rate, -1, "tick")
            continue
        limiter, run = limiters[client], runs[client]
        if what == "ask":  # a worker asks the limiter for its turn, then sends
            booked[client][id_of_worker := next(order)] = limiter.bucket.generation
            at(now + limiter.bucket.reserve(), client, f"send {id_of_worker}")
        elif what.startswith("send") and booked[client].pop(int(what.split()[1])) != limiter.bucket.generation:
            at(now, client, "ask")  # booked before a cut: book again, as TokenBucket.acquire does
        elif what.startswith("send"):  # on the wire: the service decides halfway
            run.attempts += 1
            at(now + round_trip() / 2, client, "arrive")
        elif what == "arrive":
            at(now + round_trip() / 2, client, "accepted" if service.try_take(now) else "throttled")
        elif what == "throttled":
            run.throttled += 1
            limiter.on_throttle()
            at(now + backoff.delay(1, rng), client, "ask")
        else:  # accepted: this worker takes the next number, if any
            limiter.on_success()
            run.accepted += 1
            run.accepted_at.append(now)
            run.finished_at = now
            if run.accepted == numbers:
                unfinished -= 1
            if waiting[client]:
                waiting[client] -= 1
                at(now, client, "ask")
    return runs + ([other] if neighbour_rate else [])


def split_of_two(*, rate: float, intervals: int, burst: int = 5, quota: bool = True,
                 seed: int = 0) -> list[tuple[int, int]]:
    """Two controllers that start together at ``rate`` and share one service bucket of (``rate``,
    ``burst``), stepped one interval (``1 / rate``) at a time on a fake clock, without latency: in
    each interval each sends what its own rate allows, in a random order, and a request that finds
    the service's bucket empty is throttled (the other one's request may have taken the token).
    Returns, for every interval, how many requests of each were accepted in it. Only the
    controllers' split is modelled (no retries, no in-flight cap), so it shows how a split evolves:
    whether an uneven one left by the first 429s lasts or evens out.
    """
    clock = FakeClock(0.0)
    rng = random.Random(seed)
    controllers = [AdaptiveRate(TokenBucket(rate, burst - 1, clock=clock), rate, ceiling_is_quota=quota, clock=clock)
                   for _ in range(2)]
    credit, tokens, accepted = [0.0, 0.0], float(burst), []
    for _ in range(intervals):
        clock.advance(1.0 / rate)
        tokens = min(float(burst), tokens + 1.0)
        sends = []
        for i, controller in enumerate(controllers):
            credit[i] += controller.bucket.rate / rate
            sends += [i] * int(credit[i])
            credit[i] -= int(credit[i])
        rng.shuffle(sends)
        counts = [0, 0]
        for i in sends:
            controllers[i].bucket.reserve()
            if tokens >= 1.0:
                tokens -= 1.0
                counts[i] += 1
                controllers[i].on_success()
            else:
                controllers[i].on_throttle()
        accepted.append((counts[0], counts[1]))
    return accepted
