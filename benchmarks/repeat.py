"""Run bulkclaim alone in one scenario of ``compare.py`` several times: a bar met once is not met.

    .venv/bin/python -m benchmarks.repeat --scenario neighbour --times 10

One line per repetition (JSON), then the range. Each repetition gets a fresh sandbox and event loop,
exactly as in ``compare.py``; the peers are not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import structlog

from benchmarks.compare import scenarios
from benchmarks.runs import run_in_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="neighbour", choices=("matched", "unknown_quota", "neighbour"))
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="the sandbox bucket's rate (Connect's default: 2)")
    opts = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    scenario = next(s for s in scenarios(False, opts.rate) if s.key == opts.scenario)
    share = 0.75 if scenario.neighbour_rate else 1.0  # η against the fair share when someone else shares
    rows = []
    for rep in range(1, opts.times + 1):
        result = asyncio.run(run_in_process(scenario, "bulkclaim"))
        eta = scenario.ideal_seconds(share) / result.seconds
        row = {"rep": rep, "T": round(result.seconds, 2), "eta": round(eta, 3),
               "theta": round(result.throttled_share, 4), "A": round(result.amplification, 3), "failed": result.failed}
        if result.neighbour is not None:
            row |= {"neighbour_attempts": result.neighbour.attempts, "neighbour_429s": result.neighbour.throttled,
                    "neighbour_theta": round(result.neighbour.throttled_share, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for key in ("eta", "theta", "neighbour_theta"):
        values = [row[key] for row in rows if key in row]
        if values:
            print(f"{key}: min {min(values)}, max {max(values)}")


if __name__ == "__main__":
    main()
