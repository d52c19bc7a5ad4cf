"""The sandbox's own ceiling: how many requests/s it answers with throttling off.

The sandbox runs as ``bulkclaim sandbox`` in its own process, as users run it. Load comes from
``--clients`` worker processes, each a stock aiobotocore client keeping ``--concurrency / clients``
requests in flight (32 in all by default), so the measurement is not capped by one client's CPU.
Every claim uses a distinct number and token; the run ends with a ledger check (one execution per
number) so a fast-but-wrong sandbox cannot pass.

    .venv/bin/python benchmarks/sandbox_throughput.py            # 20,000 claims + 20,000 describes
    .venv/bin/python benchmarks/sandbox_throughput.py --quick    # 4,000 + 4,000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bulkclaim.connect import ClientSettings, connect_client
from bulkclaim.sandbox import TEST_CREDENTIALS, InventorySpec, SandboxConfig
from bulkclaim.sandbox.inventory import generate

INSTANCE_ID = SandboxConfig().instance_ids[0]
PREFIX = "+1206"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sandbox_process(count: int) -> Iterator[tuple[str, int]]:
    """Start ``bulkclaim sandbox`` with throttling off and ``count`` numbers; yield its endpoint."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkclaim", "sandbox", "--port", "0", "--no-throttle", "--claim-delay", "0",
         "--inventory", f"US:DID:{PREFIX}:{count}"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        match = re.search(r"(http://\S+)", proc.stdout.readline())
        assert match, "sandbox did not start"
        yield match.group(1), proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _kind(exc: Exception) -> str:
    """An error as the ledger check reports it: its class and the start of its message."""
    return f"{type(exc).__name__}: {str(exc)[:120]}"


async def _worker(endpoint: str, numbers: list[str], concurrency: int) -> tuple[float, float, Counter[str], int]:
    settings = ClientSettings(region="us-east-1", endpoint_url=endpoint, max_pool_connections=concurrency,
                              aws_access_key_id=TEST_CREDENTIALS.access_key_id,
                              aws_secret_access_key=TEST_CREDENTIALS.secret_access_key)
    ids: list[str] = []
    claim_errors: Counter[str] = Counter()  # by kind: the ledger check says why a claim was not executed
    describe_errors = 0
    async with connect_client(settings) as client:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for number in numbers:
            queue.put_nowait(number)

        async def claim_loop() -> None:
            while not queue.empty():
                number = queue.get_nowait()
                try:
                    answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number,
                                                             ClientToken=str(uuid.uuid4()))
                    ids.append(answer["PhoneNumberId"])
                except Exception as exc:
                    claim_errors[_kind(exc)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(claim_loop() for _ in range(concurrency)))
        claim_seconds = time.perf_counter() - started

        id_queue: asyncio.Queue[str] = asyncio.Queue()
        for number_id in ids:
            id_queue.put_nowait(number_id)

        async def describe_loop() -> None:
            nonlocal describe_errors
            while not id_queue.empty():
                try:
                    await client.describe_phone_number(PhoneNumberId=id_queue.get_nowait())
                except Exception:
                    describe_errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(describe_loop() for _ in range(concurrency)))
        return claim_seconds, time.perf_counter() - started, claim_errors, describe_errors


def _run_worker(args: tuple[str, list[str], int, Any]) -> tuple[float, float, Counter[str], int]:
    endpoint, numbers, concurrency, barrier = args
    barrier.wait()  # all clients start together
    return asyncio.run(_worker(endpoint, numbers, concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="claims (and as many describes)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight, all clients together")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--quick", action="store_true", help="4,000 requests")
    opts = parser.parse_args()
    total = 4_000 if opts.quick else opts.requests
    numbers = [s.phone_number for s in generate(InventorySpec(prefix=PREFIX, count=total))]
    shares = [numbers[i::opts.clients] for i in range(opts.clients)]
    with sandbox_process(total) as (endpoint, pid):
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Manager().Barrier(opts.clients)
        started = time.perf_counter()
        cpu_before = cpu_seconds(pid)
        with ctx.Pool(opts.clients) as pool:
            results = pool.map(_run_worker, [(endpoint, share, opts.concurrency // opts.clients, barrier)
                                           for share in shares])
        wall = time.perf_counter() - started
        server_cpu = cpu_seconds(pid) - cpu_before
        with urllib.request.urlopen(f"{endpoint}/_sandbox/ledger") as answer:
            ledger = json.load(answer)
        with urllib.request.urlopen(f"{endpoint}/_sandbox/stats") as answer:
            stats = json.load(answer)
    executed = [e["phone_number"] for e in ledger]
    claim_errors: Counter[str] = sum((r[2] for r in results), Counter())
    errors = sum(claim_errors.values())
    kinds = "; ".join(f"{n} x {kind}" for kind, n in claim_errors.most_common(5))
    assert len(executed) == len(set(executed)) == total, (
        f"ledger must show one execution per number: {len(executed)} executions of {len(set(executed))} "
        f"numbers for {total} claims, {errors} claim(s) answered with an error (not retried here): {kinds}")
    claims_ok = stats["ClaimPhoneNumber"].get("ok", 0)
    describes_ok = stats.get("DescribePhoneNumber", {}).get("ok", 0)
    claim_rate = claims_ok / max(r[0] for r in results)
    describe_rate = describes_ok / max(r[1] for r in results)
    print(f"machine: {platform.machine()} {multiprocessing.cpu_count()} cores, Python {platform.python_version()}")
    print(f"sandbox ceiling, {opts.concurrency} concurrent aiobotocore requests from {opts.clients} processes, "
          f"throttling off, {total} each (wall {wall:.1f}s)")
    print("| operation | requests | errors | req/s |")
    print("|---|---|---|---|")
    print(f"| ClaimPhoneNumber | {claims_ok} | {errors} | {claim_rate:,.0f} |")
    print(f"| DescribePhoneNumber | {describes_ok} | {sum(r[3] for r in results)} | {describe_rate:,.0f} |")
    per_request = server_cpu / (claims_ok + describes_ok)
    print(f"sandbox CPU per request: {per_request * 1e6:.0f} us -> one-core ceiling ~{1 / per_request:,.0f} req/s")


if __name__ == "__main__":
    main()
