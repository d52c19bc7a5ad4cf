"""The tables of ``benchmarks/compare.py`` and ``migrations.py``: medians of repetitions, worst beside them.

Every figure in a scenario's table is the median over the repetitions of that client, with the
worst repetition in parentheses (the lowest η, the highest θ, ...): one run proves nothing on a
shared machine. The bulkclaim line under each table checks the medians against issue 13's bars.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import version
from pathlib import Path

from benchmarks.peers import NeighbourStats
from benchmarks.runs import BARE, QUOTA, RunResult, Scenario

__all__ = ["header", "plot", "scenario_section", "spread", "table"]

EARLY_SECONDS = 2.0  # 429s within this long of the first request count as "at the start"


def pct(share: float) -> str:
    return f"{share:.1%}"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    def row(cells: Iterable[object]) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [row(header), row("---" for _ in header), *(row(r) for r in rows)]


def spread(values: Sequence[float], fmt: Callable[[float], str], *, worst_is_low: bool) -> str:
    """``median (worst)`` of one figure over the repetitions."""
    worst = min(values) if worst_is_low else max(values)
    return f"{fmt(statistics.median(values))} ({fmt(worst)})"


def _by_client(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for result in results:
        grouped.setdefault(result.client, []).append(result)
    return grouped


def _three(x: float) -> str:
    return f"{x:.3f}"


def _two(x: float) -> str:
    return f"{x:.2f}"


def _whole(x: float) -> str:
    return f"{x:g}"


def throttled_table(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    ideal = scenario.ideal_seconds()
    header = ["client", "reps", "T s", "η", "θ", "A", "failed", "max executions/number",
              f"429s first {EARLY_SECONDS:.0f} s / later (median)"]
    rows = []
    for client, runs in _by_client(results).items():
        early = [sum(1 for at in r.throttled_at if at < EARLY_SECONDS) for r in runs]
        late = [len(r.throttled_at) - e for r, e in zip(runs, early, strict=True)]
        rows.append([client + _timeouts(runs), len(runs), spread([r.seconds for r in runs], _two, worst_is_low=False),
                     spread([ideal / r.seconds for r in runs], _three, worst_is_low=True),
                     spread([r.throttled_share for r in runs], pct, worst_is_low=False),
                     spread([r.amplification for r in runs], _three, worst_is_low=False),
                     spread([r.failed for r in runs], _whole, worst_is_low=False),
                     max(r.max_executions for r in runs),
                     f"{statistics.median(early):g} / {statistics.median(late):g}"])
    return [f"T* = (N - b) / r = {ideal:.2f} s", "", *table(header, rows)]


def neighbour_table(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    ideal, fair = scenario.ideal_seconds(), scenario.ideal_seconds(0.75)
    header = ["client", "reps", "T s", "η", "η_fair", "θ", "A", "failed", "max executions/number",
              "neighbour attempts", "neighbour θ"]
    rows = []
    for client, runs in _by_client(results).items():
        others = [r.neighbour or NeighbourStats() for r in runs]
        rows.append([client + _timeouts(runs), len(runs), spread([r.seconds for r in runs], _two, worst_is_low=False),
                     spread([ideal / r.seconds for r in runs], _three, worst_is_low=True),
                     spread([fair / r.seconds for r in runs], _three, worst_is_low=True),
                     spread([r.throttled_share for r in runs], pct, worst_is_low=False),
                     spread([r.amplification for r in runs], _three, worst_is_low=False),
                     spread([r.failed for r in runs], _whole, worst_is_low=False),
                     max(r.max_executions for r in runs),
                     spread([o.attempts for o in others], _whole, worst_is_low=False),
                     spread([o.throttled_share for o in others], pct, worst_is_low=False)])
    return [f"T* = {ideal:.2f} s; T*fair = (N - b) / (0.75 r) = {fair:.2f} s", "", *table(header, rows)]


def _timeouts(runs: Sequence[RunResult]) -> str:
    timed_out = sum(r.timed_out for r in runs)
    return f" ({timed_out} timed out)" if timed_out else ""


def ceiling_table(results: Sequence[RunResult]) -> list[str]:
    header = ["client", "round", "T s", "claims/s", "incl. set-up s", "client CPU µs/claim (incl. set-up)", "θ", "A",
              "failed", "max executions/number"]
    rows = [[r.client, r.round, f"{r.seconds:.2f}", f"{r.claims_per_second:,.0f}", f"{r.end_to_end:.2f}",
             f"{(r.cpu_seconds or 0) / r.n * 1e6:,.0f}", pct(r.throttled_share), f"{r.amplification:.3f}", r.failed,
             r.max_executions] for r in results]
    lines = table(header, rows)
    mine = sorted((r for r in results if r.client == "bulkclaim"), key=lambda r: r.round)
    bare = sorted((r for r in results if r.client == BARE), key=lambda r: r.round)
    if not mine or not bare:
        return lines

    def median(values: Iterable[float]) -> float:
        return statistics.median(list(values))

    ratio = median(r.claims_per_second for r in mine) / median(r.claims_per_second for r in bare)
    e2e = median(r.n / r.end_to_end for r in mine) / median(r.n / r.end_to_end for r in bare)
    cpu = median((r.cpu_seconds or 0) for r in mine) / median((r.cpu_seconds or 0) for r in bare)
    per_round = ", ".join(f"{m.claims_per_second / b.claims_per_second:.2f}" for m, b in zip(mine, bare, strict=True))
    return [*lines, "", f"bulkclaim / bare, medians of {len(mine)} rounds: **{ratio:.2f}** claims/s (bar ≥ 0.8; "
                        f"per round: {per_round}); counting set-up (planning the journal): {e2e:.2f}; client CPU per "
                        f"claim: {cpu:.2f}x"]


def check(label: str, values: Sequence[float], fmt: Callable[[float], str], bar: float, *, at_least: bool) -> str:
    """``label median (worst) ≥ bar ✓`` judged on the median; the worst repetition is said too."""
    median = statistics.median(values)
    worst = min(values) if at_least else max(values)
    ok, worst_ok = (median >= bar, worst >= bar) if at_least else (median <= bar, worst <= bar)
    sign = "≥" if at_least else "≤"
    verdict = "✓" if ok else "✗ MISSED"
    return f"{label} {fmt(median)} (worst {fmt(worst)}{'' if worst_ok else ' ✗'}) {sign} {fmt(bar)} {verdict}"


def bar_check(scenario: Scenario, results: Sequence[RunResult], client: str = "bulkclaim") -> str:
    """One line saying whether ``client``'s (a bulkclaim variant's) medians met issue 13's bars here."""
    mine = [r for r in results if r.client == client]
    if not mine or scenario.rate is None:
        return ""
    eta = [scenario.ideal_seconds() / r.seconds for r in mine]
    theta = [r.throttled_share for r in mine]
    checks: list[str] = []
    if scenario.key == "matched":
        checks = [check("η", eta, _three, 0.97, at_least=True), check("θ", theta, pct, 0.01, at_least=False)]
    elif scenario.key == "unknown_quota":
        checks = [check("η", eta, _three, 0.93, at_least=True), check("θ", theta, pct, 0.03, at_least=False)]
    elif scenario.key == "neighbour":
        fair = [scenario.ideal_seconds(0.75) / r.seconds for r in mine]
        other = [(r.neighbour or NeighbourStats()).throttled_share for r in mine]
        checks = [check("η_fair", fair, _three, 0.9, at_least=True), check("θ", theta, pct, 0.10, at_least=False),
                  check("neighbour θ", other, pct, 0.05, at_least=False)]
    checks += [check("failed", [r.failed for r in mine], _whole, 0, at_least=False),
               check("max executions", [r.max_executions for r in mine], _whole, 1, at_least=False)]
    return f"{client} against the bars (median of repetitions): " + ", ".join(checks)


def scenario_section(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    if scenario.rate is None:
        body = ceiling_table(results)
        setup = f"N={scenario.n}, throttling off, {scenario.concurrency} in flight"
    elif scenario.neighbour_rate:
        body = neighbour_table(scenario, results)
        setup = (f"N={scenario.n}, sandbox r={scenario.rate:g}/s b={scenario.burst}, "
                 f"neighbour {scenario.neighbour_rate:g}/s; each cell: median (worst) of the repetitions")
    else:
        body = throttled_table(scenario, results)
        setup = (f"N={scenario.n}, sandbox r={scenario.rate:g}/s b={scenario.burst}, bulkclaim and aiolimiter told "
                 f"{scenario.told_rate:g}/s, concurrency {scenario.concurrency}; each cell: median (worst) of the "
                 f"repetitions")
    lines = [f"### {scenario.title}", "", setup, "", *body]
    extra = "; ".join(f"{r.client}: {r.other_calls}" for r in results if r.other_calls and r.round == 1)
    for note in (bar_check(scenario, results), bar_check(scenario, results, QUOTA),
                 f"Requests to other APIs (first repetition): {extra}" if extra else ""):
        if note:
            lines += ["", note]
    return [*lines, ""]


def plot(scenario: Scenario, results: Sequence[RunResult], path: Path) -> None:
    """Accepted claims per second and 429s per second (1 s bins) over time, one line per client (first run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (accepted_ax, throttled_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 6))
    for result in {r.client: r for r in reversed(results)}.values():
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


def header(title: str, script: str, wall: float, load_before: tuple[float, float, float], note: str = "") -> list[str]:
    """Command, date, machine, versions, wall time and load: what a reader needs to weigh the figures."""
    command = f".venv/bin/python -m benchmarks.{script}" + "".join(f" {a}" for a in sys.argv[1:])
    date = datetime.datetime.now(datetime.UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    versions = ", ".join(f"{p} {version(p)}" for p in ("aiobotocore", "botocore", "aiolimiter", "tenacity"))
    load = "/".join(f"{x:.1f}" for x in load_before)
    after = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return [f"# {title}", "",
            f"Command: `{command}` · date: {date} · machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()} · {versions}{note} · wall {wall:.0f} s · load average (1/5/15 min) {load} "
            f"before, {after} after", ""]
