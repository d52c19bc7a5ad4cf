"""Two migrations in one account: two processes, separate journals and inputs, one service bucket (issue 13).

    .venv/bin/python -m benchmarks.migrations              # at 2/s (N=150 each) and at 20/s (N=300 each)
    .venv/bin/python -m benchmarks.migrations --quick      # 20/s only, N=150 each

Each repetition starts a fresh ``bulkclaim sandbox`` process (bucket r, burst 5, claims settle at once)
and then, at the same moment, two client processes, each with its own N numbers, told the true rate r.
For bulkclaim they are two real ``bulkclaim claim`` commands, each with its own input file and journal
(verify off, as in compare.py): they meet only in the sandbox's bucket. bulkclaim runs in two
variants: "bulkclaim", both given ``--rate r`` (a configured rate, which the controller cannot know
to be right), and "bulkclaim (rate = quota)", both on ``--rate auto``, reading the rate from the
sandbox's Service Quotas (its ClaimPhoneNumber quota is the bucket's rate, r). The peers run the same way,
two processes each running the peer of ``benchmarks/peers.py`` on its own numbers.

Measured on the sandbox's ledger and counters, so alike for every client: T, from the first claim the
sandbox executed to the last (both processes together); η = T*/T with T* = (2N - b) / r; θ = 429s /
attempts of both together (T* counts the numbers claimed: a peer that gave some up is not credited
for them); and the gap, how much earlier the faster process's last claim came than the
slower one's, as a share of T. Bars for bulkclaim: η ≥ 0.93, θ ≤ 5%, gap ≤ 25%. Each figure is the
median of ``--reps`` repetitions (3), the worst beside it. Loopback only, no AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peers import Job, Timing
from benchmarks.runs import CLIENTS, QUOTA
from benchmarks.tables import check, header, pct, spread, table
from bulkclaim.sandbox import TEST_CREDENTIALS, InventorySpec, SandboxConfig
from bulkclaim.sandbox.inventory import generate

INSTANCE_ID = SandboxConfig().instance_ids[0]
PREFIX = "+1206"
BURST = 5
RESULTS = Path(__file__).resolve().parent / "results"
#: bulkclaim twice: given ``--rate r`` (a configured rate, possibly wrong: it probes sparingly) and
#: ``--rate auto`` (the rate read from Service Quotas, known to be the quota: it probes back promptly)
BULKCLAIM = ("bulkclaim", QUOTA)


@dataclass
class PairResult:
    """One repetition: two processes of one client against one bucket."""

    client: str
    n: int  # numbers per process
    rate: float
    seconds: float  # first executed claim -> last, both processes
    finished: tuple[float, float]  # each process's last executed claim, seconds after the first claim overall
    attempts: int
    throttled: int
    failed: int
    max_executions: int

    @property
    def efficiency(self) -> float:
        """T*/T for the numbers claimed (a client that gave some up is not credited for them)."""
        return (2 * self.n - self.failed - BURST) / self.rate / self.seconds if self.seconds > 0 else 0.0

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.attempts if self.attempts else 0.0

    @property
    def gap(self) -> float:
        """How much earlier the faster process finished than the slower one, as a share of the slower's time."""
        return 1 - min(self.finished) / max(self.finished) if max(self.finished) > 0 else 0.0


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def _child_command(client: str, endpoint: str, rate: float, numbers: Path, scratch: Path) -> list[str]:
    if client in BULKCLAIM:  # --rate auto: the sandbox's Service Quotas answer its bucket's rate
        return [sys.executable, "-m", "bulkclaim", "claim", str(numbers), "--instance-id", INSTANCE_ID,
                "--journal", str(scratch / f"{numbers.stem}.journal"), "--endpoint-url", endpoint,
                "--region", "us-east-1", "--rate", "auto" if client == QUOTA else f"{rate:g}", "--burst", str(BURST),
                "--no-verify", "--report", str(scratch / f"{numbers.stem}.report.jsonl")]
    return [sys.executable, "-m", "benchmarks.migrations", "--child", client, "--endpoint", endpoint,
            "--rates", f"{rate:g}", "--numbers", str(numbers)]


def one_pair(client: str, rate: float, n: int) -> PairResult:
    """Start a sandbox process, then both clients at once; wait for both; read the ledger."""
    numbers = [s.phone_number for s in itertools.islice(generate(InventorySpec(prefix=PREFIX, count=2 * n)), 2 * n)]
    env = os.environ | {"AWS_ACCESS_KEY_ID": TEST_CREDENTIALS.access_key_id,
                        "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS.secret_access_key, "AWS_REGION": "us-east-1"}
    time_limit = 60 + 3 * (2 * n - BURST) / rate
    with tempfile.TemporaryDirectory(prefix="bulkclaim-migrations-") as scratch_dir:
        scratch = Path(scratch_dir)
        inputs = []
        for name, part in (("first", numbers[:n]), ("second", numbers[n:])):
            inputs.append(scratch / f"{name}.txt")
            inputs[-1].write_text("\n".join(part) + "\n")
        sandbox = subprocess.Popen(
            [sys.executable, "-m", "bulkclaim", "sandbox", "--port", "0", "--rate", f"{rate:g}", "--burst",
             str(BURST), "--claim-delay", "0", "--inventory", f"US:DID:{PREFIX}:{2 * n}"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert sandbox.stdout is not None
            match = re.search(r"(http://\S+)", sandbox.stdout.readline())
            assert match, "sandbox did not start"
            endpoint = match.group(1)
            children = [subprocess.Popen(_child_command(client, endpoint, rate, path, scratch), env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for path in inputs]
            deadline = time.monotonic() + time_limit
            for child in children:
                try:
                    child.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            stats = _get_json(f"{endpoint}/_sandbox/stats").get("ClaimPhoneNumber", {})
            ledger = [e for e in _get_json(f"{endpoint}/_sandbox/ledger") if e["action"] == "claim"]
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    start = min((e["at"] for e in ledger), default=0.0)
    halves = (set(numbers[:n]), set(numbers[n:]))
    finished = tuple(max((e["at"] - start for e in ledger if e["phone_number"] in half), default=0.0)
                     for half in halves)
    claimed = {e["phone_number"] for e in ledger if e["outcome"] == "CLAIMED"}
    executions = [sum(1 for e in ledger if e["phone_number"] == number) for number in numbers]
    return PairResult(client, n, rate, max(finished), (finished[0], finished[1]), sum(stats.values()),
                      stats.get("ThrottlingException", 0), len(set(numbers) - claimed), max(executions))


async def _child(client: str, endpoint: str, rate: float, numbers: list[str]) -> None:
    """One peer process of a pair: the peer of compare.py on these numbers, told the true rate."""
    await CLIENTS[client](Job(endpoint, INSTANCE_ID, numbers, rate, BURST, 5), Timing())


def section(rate: float, n: int, results: list[PairResult]) -> list[str]:
    header_row = ["client (two processes)", "reps", "T s", "η together", "θ together", "gap", "failed",
                  "max executions/number"]
    rows = []
    for client in CLIENTS:
        runs = [r for r in results if r.client == client]
        if runs:
            rows.append([client, len(runs), spread([r.seconds for r in runs], lambda x: f"{x:.1f}", worst_is_low=False),
                         spread([r.efficiency for r in runs], lambda x: f"{x:.3f}", worst_is_low=True),
                         spread([r.throttled_share for r in runs], pct, worst_is_low=False),
                         spread([r.gap for r in runs], pct, worst_is_low=False),
                         spread([r.failed for r in runs], lambda x: f"{x:g}", worst_is_low=False),
                         max(r.max_executions for r in runs)])
    lines = [f"### two migrations in one account: bucket {rate:g}/s burst {BURST}, N={n} each, both told {rate:g}/s",
             "", f"T* = (2N - b) / r = {(2 * n - BURST) / rate:.1f} s; each cell: median (worst) of the repetitions",
             "", *table(header_row, rows)]
    for name in BULKCLAIM:
        lines += _bars(name, [r for r in results if r.client == name])
    return [*lines, ""]


def _bars(name: str, mine: list[PairResult]) -> list[str]:
    lines: list[str] = []
    if mine:
        label = f"{name}, --rate auto" if name == QUOTA else f"{name}, --rate r"
        lines += ["", f"{label} against the bars (median of repetitions): " + ", ".join([
            check("η together", [r.efficiency for r in mine], lambda x: f"{x:.3f}", 0.93, at_least=True),
            check("θ together", [r.throttled_share for r in mine], pct, 0.05, at_least=False),
            check("gap", [r.gap for r in mine], pct, 0.25, at_least=False),
            check("failed", [r.failed for r in mine], lambda x: f"{x:g}", 0, at_least=False)])]
        lines += ["", f"{label}: repetitions (each process's last claim, s after the first): " + "; ".join(
            f"{r.finished[0]:.1f} / {r.finished[1]:.1f}" for r in mine)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20/s only, N=150 each")
    parser.add_argument("--rates", help="comma-separated bucket rates [default: 2,20; quick: 20]")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated clients")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5, help="repetitions at once below 10/s (mostly waiting)")
    parser.add_argument("--output", type=Path, help="where migrations.md goes [default: benchmarks/results, quick: "
                        "benchmarks/results/quick]")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--numbers", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    rates = [float(r) for r in (opts.rates or ("20" if opts.quick else "2,20")).split(",")]
    opts.output = opts.output or (RESULTS / "quick" if opts.quick else RESULTS)
    if opts.child:
        asyncio.run(_child(opts.child, opts.endpoint, rates[0], opts.numbers.read_text().split()))
        return
    began, load_before = time.monotonic(), os.getloadavg()
    sections: list[str] = []
    for rate in rates:
        n = 150 if opts.quick or rate < 10 else 300
        runs = [(client, rep) for rep in range(opts.reps) for client in opts.clients.split(",")]
        print(f"two migrations at {rate:g}/s, N={n} each: {len(runs)} pairs ...", file=sys.stderr, flush=True)
        jobs = opts.jobs if rate < 10 else 1
        with ThreadPoolExecutor(jobs) as pool:  # each pair is three processes of its own
            results = list(pool.map(one_pair, [c for c, _ in runs], [rate] * len(runs), [n] * len(runs)))
        lines = section(rate, n, results)
        sections += lines
        print("\n".join(lines), flush=True)
    wall = time.monotonic() - began
    note = " · quick run: 20/s only, labelled as such" if opts.quick else ""
    report = [*header("Two migrations in one account — `benchmarks/migrations.py`", "migrations", wall, load_before,
                      note), *sections]
    opts.output.mkdir(parents=True, exist_ok=True)
    (opts.output / "migrations.md").write_text("\n".join(report))
    print(f"wall {wall:.0f} s; written to {opts.output / 'migrations.md'}")


if __name__ == "__main__":
    main()
