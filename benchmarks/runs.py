"""Running one client once against a fresh sandbox: the clients, a scenario, the measured result.

Used by ``benchmarks/compare.py`` (and ``repeat.py``, ``migrations.py``); see compare.py for what is
measured and why. Each run gets a fresh sandbox with identical settings and a fresh event loop
(bulkclaim shares its limiters per event loop and endpoint, so nothing carries over between runs).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.peers import (
    CLAIM_EVENT,
    Job,
    NeighbourStats,
    Peer,
    Timing,
    limiter_tenacity,
    neighbour,
    sdk_adaptive,
    sdk_standard,
)
from benchmarks.sandbox_throughput import sandbox_process
from bulkclaim import Claimer, ClientSettings, Options, RateSettings
from bulkclaim.sandbox import API_NAMES, TEST_CREDENTIALS, InventorySpec, SandboxConfig, ThrottleConfig, serve
from bulkclaim.sandbox.inventory import generate

__all__ = [
    "BARE",
    "CLAIM",
    "CLIENTS",
    "QUOTA",
    "TOLD_THE_RATE",
    "RunResult",
    "Scenario",
    "drive",
    "measure",
    "run_bulkclaim",
    "run_ceiling",
    "run_in_process",
    "stock",
]

INSTANCE_ID = SandboxConfig().instance_ids[0]
CLAIM = "ClaimPhoneNumber"
THROTTLED = "ThrottlingException"
BARE = "bare aiobotocore"


# -- the clients ----------------------------------------------------------------------------------------

async def run_bulkclaim(job: Job, timing: Timing, *, rate_is_quota: bool = False) -> None:
    """bulkclaim as a library user runs it: a Claimer with a fresh journal, ``claim_many``, verify off."""
    settings = ClientSettings(region="us-east-1", endpoint_url=job.endpoint_url,
                              aws_access_key_id=TEST_CREDENTIALS.access_key_id,
                              aws_secret_access_key=TEST_CREDENTIALS.secret_access_key)
    rates = RateSettings(job.rate, job.burst, max_in_flight=job.concurrency, rate_is_quota=rate_is_quota)
    with tempfile.TemporaryDirectory(prefix="bulkclaim-compare-") as scratch:
        async with Claimer(instance_id=job.instance_id, journal=Path(scratch) / "claims.journal",
                           client_settings=settings, rates=rates, options=Options(verify=False)) as claimer:
            claimer.api.client.meta.events.register(CLAIM_EVENT, timing.request_sent)
            async for _outcome in claimer.claim_many(job.numbers):
                timing.answered()


async def run_bulkclaim_quota(job: Job, timing: Timing) -> None:
    """bulkclaim given the true rate as the account's quota, as ``--rate auto`` reads it from Service
    Quotas (``RateSettings(rate_is_quota=True)``): its controller probes back up promptly."""
    await run_bulkclaim(job, timing, rate_is_quota=True)


#: bulkclaim with its rate known to be the quota (``--rate auto``): run where the rate it is given is
#: the true one (not in the told-3x scenario, which is about a configured rate that is wrong).
QUOTA = "bulkclaim (rate = quota)"
CLIENTS: dict[str, Peer] = {
    "bulkclaim": run_bulkclaim,
    QUOTA: run_bulkclaim_quota,
    "sdk-standard": sdk_standard,
    "sdk-adaptive": sdk_adaptive,
    "aiolimiter+tenacity": limiter_tenacity,
}
#: Clients that are given a rate and believe it (the SDK modes are not given one).
TOLD_THE_RATE = frozenset({"bulkclaim", "aiolimiter+tenacity"})


# -- scenarios and results ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    n: int
    rate: float | None  # the sandbox's true bucket; None = throttling off
    burst: int
    told_rate: float  # what bulkclaim (and aiolimiter) are told
    concurrency: int = 5
    neighbour_rate: float | None = None
    plot: bool = False

    def ideal_seconds(self, share: float = 1.0) -> float:
        """T* = (N - b) / r, or for a share of the bucket (N - b) / (share * r)."""
        assert self.rate is not None
        return (self.n - self.burst) / (share * self.rate)


@dataclass
class RunResult:
    client: str
    n: int
    seconds: float  # T: first request -> last final answer
    end_to_end: float  # from handing the numbers to the client -> last final answer
    attempts: int
    throttled: int
    failed: int
    max_executions: int
    timed_out: bool = False
    round: int = 0  # repetitions of the same client (ceiling scenario)
    cpu_seconds: float | None = None  # the client process's CPU time (all threads), when it is alone
    accepted_at: list[float] = field(default_factory=list)  # seconds after the first request
    throttled_at: list[float] = field(default_factory=list)
    neighbour: NeighbourStats | None = None
    other_calls: dict[str, int] = field(default_factory=dict)  # requests to other APIs

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.attempts if self.attempts else 0.0

    @property
    def amplification(self) -> float:
        return self.attempts / self.n

    @property
    def claims_per_second(self) -> float:
        return (self.n - self.failed) / self.seconds if self.seconds > 0 else 0.0


def stock(count: int) -> list[str]:
    return [s.phone_number for s in generate(InventorySpec(count=count))]


# -- measuring ------------------------------------------------------------------------------------------

Ledger = list[tuple[str, str, str]]  # (action, phone number, outcome)


def measure(client: str, numbers: Sequence[str], timing: Timing, started: float, stats: dict[str, dict[str, int]],
            ledger: Ledger, *, timeline: Iterable[tuple[float, str, str]] = (),
            neighbour_stats: NeighbourStats | None = None, timed_out: bool = False) -> RunResult:
    """Turn one run's raw observations into the reported metrics, counting only this client's share."""
    mine = set(numbers)
    executions = Counter(number for action, number, _ in ledger if action == "claim" and number in mine)
    claimed = {number for action, number, outcome in ledger
               if action == "claim" and outcome == "CLAIMED" and number in mine}
    claim_stats = stats.get(CLAIM, {})
    attempts, throttled = sum(claim_stats.values()), claim_stats.get(THROTTLED, 0)
    if neighbour_stats is not None:  # the sandbox counted the neighbour's requests too
        attempts -= neighbour_stats.attempts
        throttled -= neighbour_stats.throttled
    first = timing.first_request if timing.first_request is not None else started
    last = timing.last_answer if timing.last_answer is not None else first
    result = RunResult(client, len(numbers), last - first, last - started, attempts, throttled,
                       len(mine - claimed), max(executions.values(), default=0), timed_out,
                       neighbour=neighbour_stats,
                       other_calls={api: sum(c.values()) for api, c in stats.items() if api != CLAIM})
    for at, api, outcome in timeline:
        if api == CLAIM and outcome == "ok":
            result.accepted_at.append(at - first)
        elif api == CLAIM and outcome == THROTTLED:
            result.throttled_at.append(at - first)
    return result


async def drive(peer: Peer, job: Job, time_limit: float) -> tuple[Timing, float, bool]:
    """Run one client to the end (or the time limit); return its timing, start and whether it timed out."""
    timing = Timing()
    started = time.monotonic()
    try:
        async with asyncio.timeout(time_limit):
            await peer(job, timing)
    except TimeoutError:
        return timing, started, True
    return timing, started, False


async def run_in_process(scenario: Scenario, client: str) -> RunResult:
    """One client against a fresh in-process sandbox (scenarios 1-3), with the neighbour if any."""
    assert scenario.rate is not None
    time_limit = 30 + 4 * scenario.ideal_seconds(0.75)
    neighbour_pool = 10 + int(time_limit * (scenario.neighbour_rate or 0))  # enough until the time limit
    numbers = stock(scenario.n + neighbour_pool)
    mine, theirs = numbers[:scenario.n], numbers[scenario.n:]
    config = SandboxConfig(claim_delay=0.0, record_timeline=True, inventory=(InventorySpec(count=len(numbers)),),
                           throttle={api: ThrottleConfig(rate=scenario.rate, burst=scenario.burst)
                                     for api in API_NAMES})
    async with serve(config) as running:
        told = scenario.told_rate if client in TOLD_THE_RATE else scenario.rate
        job = Job(running.endpoint_url, INSTANCE_ID, mine, told, scenario.burst, scenario.concurrency)
        stop = asyncio.Event()
        neighbour_task = None
        if scenario.neighbour_rate:
            neighbour_task = asyncio.create_task(
                neighbour(running.endpoint_url, INSTANCE_ID, theirs, scenario.neighbour_rate, stop))
        try:
            timing, started, timed_out = await drive(CLIENTS[client], job, time_limit)
        finally:
            stop.set()
        neighbour_stats = await neighbour_task if neighbour_task is not None else None
        sandbox = running.sandbox
        ledger = [(e.action, e.phone_number, e.outcome) for e in sandbox.ledger]
        return measure(client, mine, timing, started, sandbox.stats(), ledger, timeline=sandbox.state.timeline,
                       neighbour_stats=neighbour_stats, timed_out=timed_out)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def run_ceiling(scenario: Scenario, client: str, peer: Peer) -> RunResult:
    """One client against a fresh sandbox process with throttling off (scenario 4)."""
    numbers = stock(scenario.n)
    with sandbox_process(scenario.n) as (endpoint, _pid):
        job = Job(endpoint, INSTANCE_ID, numbers, scenario.told_rate, scenario.burst, scenario.concurrency)
        cpu_before = time.process_time()
        timing, started, timed_out = asyncio.run(drive(peer, job, 120.0))
        cpu = time.process_time() - cpu_before
        stats = _get_json(f"{endpoint}/_sandbox/stats")
        ledger = [(e["action"], e["phone_number"], e["outcome"]) for e in _get_json(f"{endpoint}/_sandbox/ledger")]
    result = measure(client, numbers, timing, started, stats, ledger, timed_out=timed_out)
    result.cpu_seconds = cpu
    return result
