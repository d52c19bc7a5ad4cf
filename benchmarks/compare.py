"""bulkclaim side by side with its peers against the same sandbox, as ratios (DESIGN §7, issue 5).

    .venv/bin/python benchmarks/compare.py            # all four scenarios, ~6 minutes
    .venv/bin/python -m benchmarks.compare            # the same (as ``make bench`` runs it)
    .venv/bin/python benchmarks/compare.py --quick    # smaller N, ~2 minutes
    .venv/bin/python benchmarks/compare.py --scenarios matched,ceiling

Each scenario runs bulkclaim and each peer (``benchmarks/peers.py``) one after another, each against a
*fresh* sandbox with identical settings and in a fresh event loop (bulkclaim shares its limiters per
event loop and endpoint, so nothing carries over between runs). Per client it reports:

- T: from the client's first request to the last number's final answer (set-up such as planning the
  journal is not counted); ideal T* = (N - b) / r for the sandbox's true bucket (r, b); η = T*/T;
- θ = 429s / attempts and A = attempts / N, counted by the sandbox for every client alike;
- failed: numbers not claimed at the end (from the sandbox's ledger), and the most claims the sandbox
  executed for one number (must be 1).

Scenarios:

1. ``matched``: bucket 20/s burst 5, N=400, every client told the true rate.
2. ``unknown_quota``: same bucket, bulkclaim's ceiling 60/s (3x) and aiolimiter told 60/s too.
3. ``neighbour``: same bucket, N=300, while another caller claims at a steady 5/s (25% of the bucket)
   from a separate pool, no retries. η_fair uses T*_fair = (N - b) / (0.75 r); the neighbour's own θ
   shows how much each client hurt it.
4. ``ceiling``: throttling off, N=5000, 32 in flight, the sandbox in its own process: bulkclaim (journal
   on, verify off) against a bare aiobotocore loop; claims/s, the client's CPU per claim, and the ratio.
   The two alternate for ``--ceiling-rounds`` rounds (3) and the ratio of the medians is reported, since
   a one-off pair on a shared machine says more about the neighbours than about the client.

Tables go to stdout and ``benchmarks/results/compare.md``; claims/s and 429s/s over time for scenarios
1 and 2 to ``benchmarks/results/matched.png`` and ``unknown_quota.png``. Loopback only, no AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog

if not __package__:  # run as a file (python benchmarks/compare.py), not with -m: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import (
    CLAIM_EVENT,
    Job,
    NeighbourStats,
    Peer,
    Timing,
    bare_loop,
    limiter_tenacity,
    neighbour,
    sdk_adaptive,
    sdk_standard,
)
from benchmarks.sandbox_throughput import sandbox_process
from bulkclaim import Claimer, ClientSettings, Options, RateSettings
from bulkclaim.sandbox import API_NAMES, TEST_CREDENTIALS, InventorySpec, SandboxConfig, ThrottleConfig, serve
from bulkclaim.sandbox.inventory import generate

RESULTS = Path(__file__).resolve().parent / "results"
INSTANCE_ID = SandboxConfig().instance_ids[0]
CLAIM = "ClaimPhoneNumber"
THROTTLED = "ThrottlingException"
EARLY_SECONDS = 2.0  # 429s within this long of the first request count as "at the start"


# -- the clients ----------------------------------------------------------------------------------------

async def run_bulkclaim(job: Job, timing: Timing) -> None:
    """bulkclaim as a library user runs it: a Claimer with a fresh journal, ``claim_many``, verify off."""
    settings = ClientSettings(region="us-east-1", endpoint_url=job.endpoint_url,
                              aws_access_key_id=TEST_CREDENTIALS.access_key_id,
                              aws_secret_access_key=TEST_CREDENTIALS.secret_access_key)
    rates = RateSettings(job.rate, job.burst, max_in_flight=job.concurrency)
    with tempfile.TemporaryDirectory(prefix="bulkclaim-compare-") as scratch:
        async with Claimer(instance_id=job.instance_id, journal=Path(scratch) / "claims.journal",
                           client_settings=settings, rates=rates, options=Options(verify=False)) as claimer:
            claimer.api.client.meta.events.register(CLAIM_EVENT, timing.request_sent)
            async for _outcome in claimer.claim_many(job.numbers):
                timing.answered()


CLIENTS: dict[str, Peer] = {
    "bulkclaim": run_bulkclaim,
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


def scenarios(quick: bool, rate: float = 20.0) -> list[Scenario]:
    """The scenarios at a bucket of ``rate``/s burst 5 (Connect's real default is 2/s: issue 13)."""
    n, n_neighbour, n_ceiling = (150, 150, 1500) if quick or rate < 10 else (400, 300, 5000)
    r = f"{rate:g}/s"
    return [
        Scenario("matched", f"1. matched: bucket {r} burst 5, every client told the true rate", n, rate, 5, rate,
                 plot=True),
        Scenario("unknown_quota", f"2. unknown quota: bucket {r} burst 5, bulkclaim and aiolimiter told "
                 f"{3 * rate:g}/s", n, rate, 5, 3 * rate, plot=True),
        Scenario("neighbour", f"3. neighbour: bucket {r} burst 5, another caller claiming {rate / 4:g}/s throughout",
                 n_neighbour, rate, 5, rate, neighbour_rate=rate / 4),
        Scenario("ceiling", "4. ceiling: throttling off, 32 in flight, sandbox in its own process",
                 n_ceiling, None, 32, 100_000.0, concurrency=32),
    ]


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


BARE = "bare aiobotocore"


def run_scenario(scenario: Scenario, log: Callable[[str], None], rounds: int = 1) -> list[RunResult]:
    results: list[RunResult] = []
    if scenario.rate is None:
        pair: list[tuple[str, Peer]] = [("bulkclaim", run_bulkclaim), (BARE, bare_loop)]
        for round_ in range(1, rounds + 1):
            for client, peer in pair if round_ % 2 else pair[::-1]:  # alternate who goes first
                log(f"  {scenario.key}: {client} (round {round_}) ...")
                result = run_ceiling(scenario, client, peer)
                result.round = round_
                results.append(result)
        return results
    for client in CLIENTS:
        log(f"  {scenario.key}: {client} ...")
        results.append(asyncio.run(run_in_process(scenario, client)))
    return results


# -- reporting ------------------------------------------------------------------------------------------

def _pct(share: float) -> str:
    return f"{share:.1%}"


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    return [_row(header), _row("---" for _ in header), *(_row(r) for r in rows)]


def _client_label(result: RunResult) -> str:
    return result.client + (" (timed out)" if result.timed_out else "")


def _early_late(result: RunResult) -> str:
    early = sum(1 for at in result.throttled_at if at < EARLY_SECONDS)
    return f"{early} / {len(result.throttled_at) - early}"


def throttled_table(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    ideal = scenario.ideal_seconds()
    header = ["client", "T s", "T* s", "η", "θ", "A", "failed", "max executions/number",
              f"429s first {EARLY_SECONDS:.0f} s / later"]
    rows = [[_client_label(r), f"{r.seconds:.2f}", f"{ideal:.2f}", f"{ideal / r.seconds:.3f}",
             _pct(r.throttled_share), f"{r.amplification:.3f}", r.failed, r.max_executions, _early_late(r)]
            for r in results]
    return _table(header, rows)


def neighbour_table(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    ideal, fair = scenario.ideal_seconds(), scenario.ideal_seconds(0.75)
    header = ["client", "T s", "T* s", "η", "T*fair s", "η_fair", "θ", "A", "failed", "max executions/number",
              "neighbour attempts", "neighbour 429s", "neighbour θ"]
    rows: list[list[object]] = []
    for r in results:
        other = r.neighbour or NeighbourStats()
        rows.append([_client_label(r), f"{r.seconds:.2f}", f"{ideal:.2f}", f"{ideal / r.seconds:.3f}", f"{fair:.2f}",
                     f"{fair / r.seconds:.3f}", _pct(r.throttled_share), f"{r.amplification:.3f}", r.failed,
                     r.max_executions, other.attempts, other.throttled, _pct(other.throttled_share)])
    return _table(header, rows)


def ceiling_table(results: Sequence[RunResult]) -> list[str]:
    header = ["client", "round", "T s", "claims/s", "incl. set-up s", "client CPU µs/claim (incl. set-up)", "θ", "A",
              "failed", "max executions/number"]
    rows = [[_client_label(r), r.round, f"{r.seconds:.2f}", f"{r.claims_per_second:,.0f}", f"{r.end_to_end:.2f}",
             f"{(r.cpu_seconds or 0) / r.n * 1e6:,.0f}", _pct(r.throttled_share), f"{r.amplification:.3f}", r.failed,
             r.max_executions] for r in results]
    lines = _table(header, rows)
    mine = [r for r in results if r.client == "bulkclaim"]
    bare = [r for r in results if r.client == BARE]
    if not mine or not bare:
        return lines

    def median(values: Iterable[float]) -> float:
        return statistics.median(list(values))

    ratio = median(r.claims_per_second for r in mine) / median(r.claims_per_second for r in bare)
    e2e = median(r.n / r.end_to_end for r in mine) / median(r.n / r.end_to_end for r in bare)
    cpu = median((r.cpu_seconds or 0) for r in mine) / median((r.cpu_seconds or 0) for r in bare)
    per_round = ", ".join(f"{m.claims_per_second / b.claims_per_second:.2f}"
                          for m, b in zip(sorted(mine, key=lambda r: r.round), sorted(bare, key=lambda r: r.round),
                                          strict=True))
    lines += ["", f"bulkclaim / bare, medians of {len(mine)} rounds: **{ratio:.2f}** claims/s (bar ≥ 0.8; per round: "
                  f"{per_round}); counting set-up (planning the journal): {e2e:.2f}; client CPU per claim: "
                  f"{cpu:.2f}x"]
    return lines


def bar_check(scenario: Scenario, results: Sequence[RunResult]) -> str:
    """One line saying whether bulkclaim met the issue's bars in this scenario."""
    mine = next((r for r in results if r.client == "bulkclaim"), None)
    if mine is None or scenario.rate is None:
        return ""
    checks: list[tuple[str, bool]] = []
    if scenario.key == "matched":
        eta = scenario.ideal_seconds() / mine.seconds
        checks = [(f"η {eta:.3f} ≥ 0.97", eta >= 0.97), (f"θ {_pct(mine.throttled_share)} ≤ 1%",
                  mine.throttled_share <= 0.01), (f"A {mine.amplification:.3f} ≤ 1.02", mine.amplification <= 1.02)]
    elif scenario.key == "unknown_quota":
        eta = scenario.ideal_seconds() / mine.seconds
        checks = [(f"η {eta:.3f} ≥ 0.90", eta >= 0.90), (f"θ {_pct(mine.throttled_share)} ≤ 5%",
                                                          mine.throttled_share <= 0.05)]
    elif scenario.key == "neighbour":
        eta_fair = scenario.ideal_seconds(0.75) / mine.seconds
        other = mine.neighbour or NeighbourStats()
        checks = [(f"η_fair {eta_fair:.3f} ≥ 0.9", eta_fair >= 0.9),
                  (f"neighbour θ {_pct(other.throttled_share)} ≤ 10%", other.throttled_share <= 0.10)]
    checks += [(f"failed {mine.failed} = 0", mine.failed == 0),
               (f"max executions {mine.max_executions} = 1", mine.max_executions == 1)]
    return "bulkclaim against the bars: " + ", ".join(f"{text} {'✓' if ok else '✗ MISSED'}" for text, ok in checks)


def other_calls_note(results: Sequence[RunResult]) -> str:
    extra = {r.client: r.other_calls for r in results if r.other_calls}
    if not extra:
        return ""
    return "Requests to other APIs: " + "; ".join(f"{c}: {calls}" for c, calls in extra.items())


def scenario_section(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    if scenario.rate is None:
        body = ceiling_table(results)
        setup = f"N={scenario.n}, throttling off, {scenario.concurrency} in flight"
    elif scenario.neighbour_rate:
        body = neighbour_table(scenario, results)
        setup = (f"N={scenario.n}, sandbox r={scenario.rate:g}/s b={scenario.burst}, "
                 f"neighbour {scenario.neighbour_rate:g}/s")
    else:
        body = throttled_table(scenario, results)
        setup = (f"N={scenario.n}, sandbox r={scenario.rate:g}/s b={scenario.burst}, bulkclaim and aiolimiter told "
                 f"{scenario.told_rate:g}/s, concurrency {scenario.concurrency}")
    lines = [f"### {scenario.title}", "", setup, "", *body]
    for note in (bar_check(scenario, results), other_calls_note(results)):
        if note:
            lines += ["", note]
    return [*lines, ""]


def plot(scenario: Scenario, results: Sequence[RunResult], path: Path) -> None:
    """Accepted claims per second and 429s per second (1 s bins) over time, one line per client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (accepted_ax, throttled_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 6))
    for result in results:
        for ax, times in ((accepted_ax, result.accepted_at), (throttled_ax, result.throttled_at)):
            seconds = Counter(int(t) for t in times if t >= 0)
            end = max(int(result.seconds) + 1, max(seconds, default=0) + 1)
            xs = list(range(end + 1))
            ax.plot(xs, [seconds.get(x, 0) for x in xs], drawstyle="steps-post", label=result.client)
    accepted_ax.set_ylabel("claims accepted / s")
    accepted_ax.axhline(scenario.rate or 0, color="grey", linestyle=":", linewidth=1, label="bucket rate")
    throttled_ax.set_ylabel("429s / s")
    throttled_ax.set_xlabel("seconds since the client's first request")
    accepted_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    accepted_ax.set_title(scenario.title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def header(quick: bool, wall: float, load_before: tuple[float, float, float]) -> list[str]:
    command = ".venv/bin/python benchmarks/compare.py" + "".join(f" {a}" for a in sys.argv[1:])
    date = datetime.datetime.now(datetime.UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    versions = ", ".join(f"{p} {version(p)}" for p in ("aiobotocore", "botocore", "aiolimiter", "tenacity"))
    lines = [
        "# bulkclaim vs peers — `benchmarks/compare.py`",
        "",
        f"Command: `{command}` · date: {date} · machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} · {versions}" + (" · quick run" if quick else ""),
    ]
    load = "/".join(f"{x:.1f}" for x in load_before)
    after = "/".join(f"{x:.1f}" for x in os.getloadavg())
    lines[-1] += f" · wall {wall:.0f} s · load average (1/5/15 min) {load} before, {after} after"
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=150 (ceiling: 1,500), about two minutes")
    parser.add_argument("--scenarios", default="matched,unknown_quota,neighbour,ceiling",
                        help="comma-separated subset of: matched, unknown_quota, neighbour, ceiling")
    parser.add_argument("--rate", type=float, default=20.0, help="the sandbox bucket's rate for scenarios 1-3")
    parser.add_argument("--ceiling-rounds", type=int, default=3, help="alternating rounds of the ceiling pair")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where compare.md and the PNGs go")
    opts = parser.parse_args()
    wanted = [key.strip() for key in opts.scenarios.split(",") if key.strip()]
    chosen = [s for s in scenarios(opts.quick, opts.rate) if s.key in wanted]
    unknown = set(wanted) - {s.key for s in chosen}
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
    for scenario in chosen:
        log(f"scenario {scenario.title}")
        results = run_scenario(scenario, log, rounds=max(1, opts.ceiling_rounds))
        section = scenario_section(scenario, results)
        print("\n".join(section), flush=True)
        sections += section
        if scenario.plot:
            plot(scenario, results, opts.output / f"{scenario.key}.png")
    wall = time.monotonic() - began
    report = [*header(opts.quick, wall, load_before), *sections]
    (opts.output / "compare.md").write_text("\n".join(report))
    print(f"wall {wall:.0f} s; written to {opts.output / 'compare.md'}")


if __name__ == "__main__":
    main()
