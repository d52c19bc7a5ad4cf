"""bulkclaim side by side with its peers against the same sandbox, as ratios (DESIGN §7, issues 5 and 13).

    .venv/bin/python -m benchmarks.compare                 # every scenario at 2/s and at 20/s, ~20 minutes
    .venv/bin/python -m benchmarks.compare --quick         # 20/s only, N=150: ~5 minutes
    .venv/bin/python -m benchmarks.compare --rates 2 --scenarios unknown_quota --reps 5

Connect's real default bucket is 2 requests/s, burst 5, and ratios measured at a scaled-up 20/s do
not carry over by themselves (issue 13), so every throttled scenario runs at both. Each scenario runs
bulkclaim and each peer (``benchmarks/peers.py``) ``--reps`` times (3), each run against a *fresh*
sandbox with identical settings and in a fresh event loop (``benchmarks/runs.py``). At 2/s a run is
mostly waiting (N=150 takes 75 s at best), so those runs go side by side, each in its own process
with its own sandbox (``--jobs``, 15); at 20/s they go one after another. Per client it reports the
median of the repetitions with the worst beside it (``benchmarks/tables.py``):

- T: from the client's first request to the last number's final answer (set-up such as planning the
  journal is not counted); ideal T* = (N - b) / r for the sandbox's true bucket (r, b); η = T*/T;
- θ = 429s / attempts and A = attempts / N, counted by the sandbox for every client alike;
- failed: numbers not claimed at the end (from the sandbox's ledger), and the most claims the sandbox
  executed for one number (must be 1).

bulkclaim runs twice in scenarios 1 and 3: "bulkclaim", given its rate as a configured ``--rate`` is
(possibly wrong, so it probes above its measure sparingly), and "bulkclaim (rate = quota)", given the
same rate as the account's quota, as ``--rate auto`` reads it from Service Quotas
(``RateSettings(rate_is_quota=True)``: it probes back up promptly).

Scenarios (r = 2 or 20/s, burst 5):

1. ``matched``: every client told the true rate. N=150 at 2/s, 300 at 20/s.
2. ``unknown_quota``: bulkclaim's ceiling 3r, and aiolimiter told 3r too (without "bulkclaim (rate =
   quota)": a rate read from the quota is not three times too high).
3. ``neighbour``: told the true rate, while another caller claims at a steady r/4 from a separate pool,
   no retries. η_fair uses T*_fair = (N - b) / (0.75 r); the neighbour's own θ shows how much each
   client hurt it.
4. ``ceiling``: throttling off, N=5000, 32 in flight, the sandbox in its own process: bulkclaim (journal
   on, verify off) against a bare aiobotocore loop; claims/s, the client's CPU per claim, and the ratio.
   The two alternate for ``--ceiling-rounds`` rounds (3) and the ratio of the medians is reported.

Two bulkclaim processes sharing one account's bucket are ``benchmarks/migrations.py``. Tables go to
stdout and ``benchmarks/results/compare.md``; claims/s and 429s/s over time (first repetition) for
scenarios 1 and 2 to ``benchmarks/results/<scenario>-<rate>.png``. Loopback only, no AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import structlog

if not __package__:  # run as a file (python benchmarks/compare.py), not with -m: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import Peer, bare_loop
from benchmarks.runs import BARE, CLIENTS, QUOTA, RunResult, Scenario, run_bulkclaim, run_ceiling, run_in_process
from benchmarks.tables import header, plot, scenario_section

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("matched", "unknown_quota", "neighbour", "ceiling")


def scenarios(quick: bool, rate: float = 20.0) -> list[Scenario]:
    """The throttled scenarios at a bucket of ``rate``/s burst 5 (Connect's real default is 2/s)."""
    n = 150 if quick or rate < 10 else 300
    r = f"{rate:g}/s"
    return [
        Scenario("matched", f"1. matched: bucket {r} burst 5, every client told the true rate", n, rate, 5, rate,
                 plot=True),
        Scenario("unknown_quota", f"2. unknown quota: bucket {r} burst 5, bulkclaim and aiolimiter told "
                 f"{3 * rate:g}/s", n, rate, 5, 3 * rate, plot=True),
        Scenario("neighbour", f"3. neighbour: bucket {r} burst 5, another caller claiming {rate / 4:g}/s throughout",
                 n, rate, 5, rate, neighbour_rate=rate / 4),
    ]


def ceiling(quick: bool) -> Scenario:
    return Scenario("ceiling", "4. ceiling: throttling off, 32 in flight, sandbox in its own process",
                    1500 if quick else 5000, None, 32, 100_000.0, concurrency=32)


def one_run(scenario: Scenario, client: str, rep: int) -> RunResult:
    """One client once against a fresh in-process sandbox, in a fresh event loop (a pool's task)."""
    result = asyncio.run(run_in_process(scenario, client))
    result.round = rep
    return result


def run_scenario(scenario: Scenario, log: Callable[[str], None], reps: int, jobs: int) -> list[RunResult]:
    """Every client ``reps`` times; ``jobs`` runs at once (each its own process and sandbox) when > 1."""
    runs = [(client, rep) for rep in range(1, reps + 1) for client in CLIENTS
            if not (client == QUOTA and scenario.key == "unknown_quota")]  # told 3x is a rate configured wrong
    if jobs <= 1:
        results = []
        for client, rep in runs:
            log(f"  {scenario.key} at {scenario.rate:g}/s: {client} (repetition {rep}) ...")
            results.append(one_run(scenario, client, rep))
        return results
    log(f"  {scenario.key} at {scenario.rate:g}/s: {len(runs)} runs, {jobs} at a time ...")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(one_run, scenario, client, rep) for client, rep in runs]
        return [future.result() for future in futures]


def run_ceiling_rounds(scenario: Scenario, log: Callable[[str], None], rounds: int) -> list[RunResult]:
    results: list[RunResult] = []
    pair: list[tuple[str, Peer]] = [("bulkclaim", run_bulkclaim), (BARE, bare_loop)]
    for round_ in range(1, rounds + 1):
        for client, peer in pair if round_ % 2 else pair[::-1]:  # alternate who goes first
            log(f"  {scenario.key}: {client} (round {round_}) ...")
            result = run_ceiling(scenario, client, peer)
            result.round = round_
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20/s only, N=150 (ceiling: 1,500), ~5 minutes")
    parser.add_argument("--rates", help="comma-separated bucket rates for scenarios 1-3 [default: 2,20; quick: 20]")
    parser.add_argument("--scenarios", default=",".join(KEYS), help=f"comma-separated subset of: {', '.join(KEYS)}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each client in scenarios 1-3")
    parser.add_argument("--jobs", type=int, default=15, help="runs at once below 10/s (mostly waiting)")
    parser.add_argument("--ceiling-rounds", type=int, default=3, help="alternating rounds of the ceiling pair")
    parser.add_argument("--output", type=Path, help="where compare.md and the PNGs go [default: benchmarks/results, "
                        "quick: benchmarks/results/quick]")
    opts = parser.parse_args()
    opts.output = opts.output or (RESULTS / "quick" if opts.quick else RESULTS)
    rates = [float(r) for r in (opts.rates or ("20" if opts.quick else "2,20")).split(",")]
    wanted = [key.strip() for key in opts.scenarios.split(",") if key.strip()]
    unknown = set(wanted) - set(KEYS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    # The library logs through structlog, which prints every event to stdout unless configured:
    # keep warnings and errors (on stderr) so the tables stay readable.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    opts.output.mkdir(parents=True, exist_ok=True)
    began, load_before = time.monotonic(), os.getloadavg()
    sections: list[str] = []
    chosen = [s for rate in rates for s in scenarios(opts.quick, rate) if s.key in wanted]
    for scenario in chosen:
        log(f"scenario {scenario.title}")
        assert scenario.rate is not None
        results = run_scenario(scenario, log, max(1, opts.reps), opts.jobs if scenario.rate < 10 else 1)
        section = scenario_section(scenario, results)
        print("\n".join(section), flush=True)
        sections += section
        if scenario.plot:
            plot(scenario, [r for r in results if r.round == 1], opts.output / f"{scenario.key}-{scenario.rate:g}.png")
    if "ceiling" in wanted:
        scenario = ceiling(opts.quick)
        log(f"scenario {scenario.title}")
        section = scenario_section(scenario, run_ceiling_rounds(scenario, log, max(1, opts.ceiling_rounds)))
        print("\n".join(section), flush=True)
        sections += section
    wall = time.monotonic() - began
    note = " · quick run: 20/s only, labelled as such" if opts.quick else ""
    report = [*header("bulkclaim vs peers — `benchmarks/compare.py`", "compare", wall, load_before, note), *sections]
    (opts.output / "compare.md").write_text("\n".join(report))
    print(f"wall {wall:.0f} s; written to {opts.output / 'compare.md'}")


if __name__ == "__main__":
    main()
