"""Claims with contact flows at Connect's real default: the association stage beside the claims.

    .venv/bin/python -m benchmarks.flows [--numbers 150] [--rate 2] [--reps 3]

Each repetition is its own process with a fresh in-process sandbox whose every API has the bucket
(rate, burst 5), and a library Claimer told the same rate, claiming N numbers that each have a flow.
T is from the start of ``claim_many`` to the last outcome (its number claimed, verified and
associated). The ideal time of the two buckets (ClaimPhoneNumber, AssociatePhoneNumberContactFlow)
working in parallel is T* = (N - b) / r, the same as claims alone: associations can keep pace with
claims, so a pipeline that associates beside the claims (not after them) loses only the last
number's claim delay, verify and association. η = T*/T; θ = 429s / attempts, per API.
Writes ``benchmarks/results/flows.md``; the median of the repetitions and the worst are shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from benchmarks.tables import header
from bulkclaim import Claimer, ClaimRequest, ClientSettings, RateSettings
from bulkclaim.model import Target
from bulkclaim.sandbox import API_NAMES, TEST_CREDENTIALS, InventorySpec, SandboxConfig, ThrottleConfig, serve
from bulkclaim.sandbox.inventory import generate

_APIS = ("ClaimPhoneNumber", "DescribePhoneNumber", "AssociatePhoneNumberContactFlow")
_BURST = 5


async def _one(numbers: int, rate: float) -> dict[str, Any]:
    config = SandboxConfig(throttle={api: ThrottleConfig(rate, _BURST) for api in API_NAMES}, claim_delay=0.3,
                           inventory=(InventorySpec(count=numbers),))
    instance = config.instance_ids[0]
    async with serve(config) as running:
        sandbox = running.sandbox
        flows = sandbox.state.flows.flows_of(instance)
        target = Target(instance_id=instance)
        rows = [ClaimRequest(s.phone_number, target, source=f"bench:{i}", contact_flow=flows[i % len(flows)].id)
                for i, s in enumerate(generate(InventorySpec(count=numbers)))]
        settings = ClientSettings(region=config.region, endpoint_url=running.endpoint_url,
                                  aws_access_key_id=TEST_CREDENTIALS.access_key_id,
                                  aws_secret_access_key=TEST_CREDENTIALS.secret_access_key)
        with tempfile.TemporaryDirectory() as folder:
            async with Claimer(instance_id=instance, journal=Path(folder) / "j.journal", client_settings=settings,
                               rates=RateSettings(rate, _BURST)) as claimer:
                started = time.monotonic()
                outcomes = [o async for o in claimer.claim_many(rows)]
                seconds = time.monotonic() - started
        stats = sandbox.stats()
    associated = sum(1 for o in outcomes if o.flow_status is not None and o.flow_status.value == "associated")
    theta = {api: stats.get(api, {}).get("ThrottlingException", 0) / max(1, sum(stats.get(api, {}).values()))
             for api in _APIS}
    return {"T": seconds, "eta": (numbers - _BURST) / rate / seconds, "associated": associated,
            "claimed": sum(1 for o in outcomes if o.status.value == "claimed"), "theta": theta,
            "attempts": {api: sum(stats.get(api, {}).values()) for api in _APIS}}


def _run(args: tuple[int, float]) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    return asyncio.run(_one(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numbers", type=int, default=150)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    load = os.getloadavg()
    started = time.monotonic()
    with ProcessPoolExecutor(opts.reps) as pool:  # side by side: a 2/s run is mostly waiting
        results = list(pool.map(_run, [(opts.numbers, opts.rate)] * opts.reps))
    wall = time.monotonic() - started
    for rep, result in enumerate(results, 1):
        print(json.dumps({"rep": rep, **result}), flush=True)
    etas = [r["eta"] for r in results]
    lines = header(f"Claims + contact flows, N={opts.numbers} at {opts.rate:g}/s burst {_BURST}", "flows", wall, load)
    lines += ["| rep | T (s) | η | claimed | associated | θ claim | θ describe | θ associate |",
              "|---|---|---|---|---|---|---|---|"]
    for rep, r in enumerate(results, 1):
        th = r["theta"]
        lines.append(f"| {rep} | {r['T']:.1f} | {r['eta']:.3f} | {r['claimed']} | {r['associated']} | "
                     f"{th['ClaimPhoneNumber']:.1%} | {th['DescribePhoneNumber']:.1%} | "
                     f"{th['AssociatePhoneNumberContactFlow']:.1%} |")
    lines += ["", f"η median {statistics.median(etas):.3f}, worst {min(etas):.3f} (bar: ≥ 0.95); "
              f"T* = (N - b)/r = {(opts.numbers - _BURST) / opts.rate:.1f} s", ""]
    out = Path(__file__).resolve().parent / "results" / "flows.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
