"""Several ``bulkclaim claim`` workers on one PostgreSQL journal against one account bucket (issue 15).

    .venv/bin/python -m benchmarks.workers --numbers 2000 --workers 4 --rate 20 --burst 5 --times 3

Each repetition: a fresh sandbox (ClaimPhoneNumber and DescribePhoneNumber each throttled at (rate,
burst), like the account's buckets) and a fresh journal schema on a throwaway PostgreSQL server;
``--workers`` real CLI processes started at once with the same inputs, each told the account's whole
rate (they share one budget), then the same run with one process. From the sandbox's timeline:

- efficiency η = T*/T, T* = (N - burst)/rate the ideal, T from the first claim request the sandbox
  received to the last (process start-up and planning are not counted);
- throttled share θ = ClaimPhoneNumber 429s / ClaimPhoneNumber requests; amplification A = requests / N.

``--neighbour S``: halfway through the ideal time, another caller of the account claims at a quarter
of the rate for ``S`` seconds (``benchmarks.peers.neighbour``, numbers of its own, no retries), taking
slots the workers counted on: they meet 429s, the shared rate is cut, and ``recovery`` says how long
it took to climb back to the ceiling, in seconds and in intervals of the ceiling (the unit the budget's
recovery curve runs in). T* then counts the neighbour's admitted claims too; θ and A are the workers'
own. (A burst at once takes nothing: at a matched rate the bucket is empty whenever it is asked.)

Also the shared budget's reservation latency (one statement per slot), measured on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.peers import NeighbourStats, neighbour
from bulkclaim.journal.postgres.budget import Budgets
from bulkclaim.journal.postgres.connection import parse_url
from bulkclaim.journal.postgres.leases import Heartbeat
from bulkclaim.sandbox import API_NAMES, InventorySpec, SandboxConfig, ThrottleConfig, serve
from bulkclaim.sandbox.app import Sandbox
from bulkclaim.sandbox.inventory import generate
from tests.postgres import PgServer, server_binaries, throwaway_server
from tests.support import INSTANCE_ID, SandboxEnv
from tests.test_cli import BULKCLAIM, cli_env


async def one_run(server: PgServer, numbers: list[str], workers: int, rate: float, burst: int,
                  neighbour_seconds: float = 0.0) -> dict[str, Any]:
    spike = int(neighbour_seconds * rate / 4)  # the neighbour's claims
    throttle = {api: ThrottleConfig(rate=rate, burst=burst) if api in ("ClaimPhoneNumber", "DescribePhoneNumber")
                else ThrottleConfig(rate=None) for api in API_NAMES}
    config = SandboxConfig(inventory=(InventorySpec(count=len(numbers) + spike),), throttle=throttle,
                           claim_delay=0.0, record_timeline=True)
    sandbox = Sandbox(config)
    url = server.fresh_url()
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "numbers.txt"
        path.write_text("\n".join(numbers) + "\n", encoding="utf-8")
        async with serve(sandbox) as running:
            env = cli_env(SandboxEnv(sandbox, running.endpoint_url))
            args = ["claim", str(path), "--instance-id", INSTANCE_ID, "--journal", url, "--rate", str(rate),
                    "--burst", str(burst), "--log-format", "json", "--no-preflight", "--verify-timeout", "30"]
            processes = [await asyncio.create_subprocess_exec(*BULKCLAIM, *args, env=env, stdout=subprocess.DEVNULL,
                                                              stderr=subprocess.DEVNULL) for _ in range(workers)]
            sampler = asyncio.create_task(sample_shared_rate(url, samples))
            mine = set(numbers)
            theirs_numbers = [s.phone_number for s in generate(config.inventory[0]) if s.phone_number not in mine]
            disturbing = asyncio.create_task(neighbour_window(sandbox, running.endpoint_url, theirs_numbers[:spike],
                                                          (len(numbers) - burst) / rate / 2, rate / 4))
            codes = [await p.wait() for p in processes]
            sampler.cancel()
            theirs = await disturbing if disturbing.done() else (disturbing.cancel(), NeighbourStats())[1]
    claims = [at for at, api, _ in sandbox.state.timeline if api == "ClaimPhoneNumber"]
    stats = sandbox.state.stats["ClaimPhoneNumber"]
    requests = sum(stats.values()) - theirs.attempts
    throttled = stats.get("ThrottlingException", 0) - theirs.throttled
    ideal = (len(numbers) + theirs.attempts - theirs.throttled - burst) / rate
    executed = len({e.phone_number for e in sandbox.state.ledger if e.action == "claim"} & set(numbers))
    span = claims[-1] - claims[0]
    return {"workers": workers, "T": round(span, 2), "eta": round(ideal / span, 3),
            "theta": round(throttled / requests, 4), "A": round(requests / len(numbers), 3),
            "claimed": executed, "exit_codes": codes, "lost": losses(sandbox.state.timeline, samples, rate)} | (
        {"neighbour": {"sent": theirs.attempts, "admitted": theirs.attempts - theirs.throttled},
         "recovery": recovery(samples, rate)} if spike else {})


async def neighbour_window(sandbox: Sandbox, endpoint_url: str, theirs: list[str], after: float,
                          rate: float) -> NeighbourStats:
    """``after`` seconds after the workers' first claim, another caller claims ``theirs`` at ``rate``."""
    if not theirs:
        return NeighbourStats()
    while not any(api == "ClaimPhoneNumber" for _, api, _ in sandbox.state.timeline):  # noqa: ASYNC110 (other processes' requests)
        await asyncio.sleep(0.05)
    await asyncio.sleep(after)
    return await neighbour(endpoint_url, INSTANCE_ID, theirs, rate, asyncio.Event())


def recovery(samples: list[tuple[float, float]], rate: float) -> dict[str, Any]:
    """The shared rate's cuts (from the ceiling) and how long each took back to it: seconds, and
    intervals of the ceiling (seconds x rate)."""
    episodes: list[dict[str, float | None]] = []
    cut_at: float | None = None
    lowest = rate
    for at, shared in samples:
        if cut_at is None and shared < rate * 0.999:
            cut_at, lowest = at, shared
        elif cut_at is not None:
            lowest = min(lowest, shared)
            if shared >= rate * 0.999:
                episodes.append({"lowest": round(lowest, 2), "seconds": round(at - cut_at, 2),
                                 "intervals": round((at - cut_at) * rate, 1)})
                cut_at = None
    if cut_at is not None:
        episodes.append({"lowest": round(lowest, 2), "seconds": None, "intervals": None})  # not back by the end
    return {"cuts": len(episodes), "episodes": episodes}


async def sample_shared_rate(url: str, samples: list[tuple[float, float]]) -> None:
    """(time, the shared budget's ClaimPhoneNumber rate) every 20 ms, read from the journal's row."""
    location = parse_url(url)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(location.conninfo, autocommit=True) as conn:
                await conn.execute(f'SET search_path TO "{location.schema}"')
                while True:
                    cursor = await conn.execute("SELECT rate FROM rate_budget WHERE key LIKE '%/ClaimPhoneNumber'")
                    row = await cursor.fetchone()
                    if row is not None:
                        samples.append((time.monotonic(), float(row[0])))
                    await asyncio.sleep(0.02)
        except psycopg.Error:  # the schema is not there yet
            await asyncio.sleep(0.05)


def losses(timeline: list[tuple[float, str, str]], samples: list[tuple[float, float]], rate: float) -> dict[str, Any]:
    """Where the seconds beyond T* went, from the sandbox's timeline of ClaimPhoneNumber answers and the
    sampled shared rate: slots spent on 429s; idle gaps (no request for more than two intervals while
    the budget was at full rate); the rate below the ceiling after cuts (seconds of slots not offered);
    the start (first to fifth request) and the tail (the last 1% of accepted claims)."""
    claims = [(at, outcome) for at, api, outcome in timeline if api == "ClaimPhoneNumber"]
    times = [at for at, _ in claims]
    first, last = times[0], times[-1]
    throttled = sum(1 for _, outcome in claims if outcome == "ThrottlingException")
    cut_seconds = 0.0
    for (at, shared), (following, _) in itertools.pairwise(samples):
        if first <= at <= last and shared < rate * 0.999:
            cut_seconds += (following - at) * (1 - shared / rate)
    idle = [b - a for a, b in itertools.pairwise(times) if b - a > 2 / rate]
    accepted = [at for at, outcome in claims if outcome != "ThrottlingException"]
    tail_from = accepted[int(len(accepted) * 0.99)]
    return {"throttled_slots_s": round(throttled / rate, 2), "rate_cut_s": round(cut_seconds, 2),
            "idle_gaps": len(idle), "idle_s": round(sum(g - 1 / rate for g in idle), 2),
            "longest_gap_s": round(max(idle, default=0.0), 3),
            "start_s": round(times[min(4, len(times) - 1)] - first, 3),
            "tail_rate": round((len(accepted) - int(len(accepted) * 0.99)) / max(1e-9, last - tail_from), 1),
            "min_shared_rate": round(min((r for _, r in samples), default=rate), 2)}


async def reservation_latency(server: PgServer, count: int = 2000) -> dict[str, float]:
    """Milliseconds per shared-budget reservation (one statement each), p50 and p99, on loopback."""
    location = parse_url(server.fresh_url())
    Heartbeat(location).end()  # creates the journal's schema
    budgets = Budgets(location, "bench")
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await budgets.reserve("bench/ClaimPhoneNumber", 1e6, 1000, 0)
        samples.append((time.perf_counter() - started) * 1000)
    await budgets.aclose()
    samples.sort()
    return {"p50_ms": round(samples[len(samples) // 2], 3), "p99_ms": round(samples[int(len(samples) * 0.99)], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numbers", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--times", type=int, default=3)
    parser.add_argument("--neighbour", type=float, default=0.0,
                        help="seconds another caller claims at a quarter of the rate, from halfway")
    opts = parser.parse_args()
    bindir = server_binaries()
    if bindir is None:
        sys.exit("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    numbers = [s.phone_number for s in generate(InventorySpec(count=opts.numbers))]
    print(json.dumps({"load": os.getloadavg()}), flush=True)
    with throwaway_server(bindir) as server:
        print(json.dumps({"reservation": asyncio.run(reservation_latency(server))}), flush=True)
        rows: dict[int, list[dict[str, Any]]] = {opts.workers: [], 1: []}
        for _ in range(opts.times):
            for workers in (opts.workers, 1):
                row = asyncio.run(one_run(server, numbers, workers, opts.rate, opts.burst, opts.neighbour))
                rows[workers].append(row)
                print(json.dumps(row), flush=True)
    for workers, runs in rows.items():
        etas, thetas = [r["eta"] for r in runs], [r["theta"] for r in runs]
        print(f"{workers} worker(s): eta median {statistics.median(etas)} ({min(etas)}-{max(etas)}), "
              f"theta median {statistics.median(thetas):.2%} (worst {max(thetas):.2%})")


if __name__ == "__main__":
    main()
