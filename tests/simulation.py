"""A discrete-event simulation of a claim run against the service's bucket, on a fake clock.

The client is the real :class:`bulkclaim.ratelimit.Limiter` (bucket, AIMD controller, in-flight
cap) and the engine's retry rule (a throttled claim waits ``Backoff.delay(1)`` and queues again);
the service is the sandbox's :class:`ServerBucket`. Events are processed in time order, so the
limiter sees ``reserve``, ``on_throttle`` and ``on_success`` exactly as a run would, without a
single real sleep: a 300-number run takes milliseconds at any rate. Used to prove properties of
the controller across rates (issue 13: the same scenario at 2/s and 50/s must throttle alike).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass

from bulkclaim.backoff import Backoff
from bulkclaim.ratelimit import Limiter
from bulkclaim.sandbox.config import ThrottleConfig
from bulkclaim.sandbox.throttle import ServerBucket
from tests.support import FakeClock

__all__ = ["SimulatedRun", "simulate"]


@dataclass
class SimulatedRun:
    """What the service saw: attempts, 429s, and when the last number was accepted."""

    attempts: int = 0
    throttled: int = 0
    finished_at: float = 0.0
    accepted: int = 0

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.attempts if self.attempts else 0.0


def simulate(*, true_rate: float, told_rate: float, numbers: int, burst: int = 5, latency: float = 0.03,
             seed: int = 0) -> SimulatedRun:
    """Claim ``numbers`` against a service bucket of (``true_rate``, ``burst``) with a client told
    ``told_rate``; ``latency`` is each request's round trip (the service decides halfway)."""
    clock = FakeClock(0.0)
    rng = random.Random(seed)
    limiter = Limiter("ClaimPhoneNumber", told_rate, burst, rng=random.Random(seed + 1), clock=clock)
    service = ServerBucket(ThrottleConfig(rate=true_rate, burst=burst), now=0.0)
    backoff = Backoff()
    result = SimulatedRun()
    order = itertools.count()
    events: list[tuple[float, int, str]] = []  # (time, tie-break, what)

    def at(when: float, what: str) -> None:
        heapq.heappush(events, (when, next(order), what))

    waiting = numbers  # numbers no worker has taken yet
    for _ in range(min(limiter.max_in_flight, numbers)):
        waiting -= 1
        at(0.0, "ask")
    while events:
        now, _, what = heapq.heappop(events)
        clock.now = max(clock.now, now)
        if what == "ask":  # a worker asks the limiter for its turn, then sends
            at(now + limiter.bucket.reserve(), "send")
        elif what == "send":
            result.attempts += 1
            ok = service.try_take(now + latency / 2)
            at(now + latency, "accepted" if ok else "throttled")
        elif what == "throttled":
            result.throttled += 1
            limiter.on_throttle()
            at(now + backoff.delay(1, rng), "ask")
        else:  # accepted: this worker takes the next number, if any
            limiter.on_success()
            result.accepted += 1
            result.finished_at = now
            if waiting:
                waiting -= 1
                at(now, "ask")
    return result
