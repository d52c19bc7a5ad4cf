"""How long after a SIGKILL a dead worker's numbers are owned again (issue 15's bar: within the lease
TTL + one heartbeat (TTL/3) + one poll (TTL/4)).

    .venv/bin/python -m benchmarks.takeover --trials 20

Each trial is the crash suite's (``kill_trial`` of ``tests/workers.py``, as ``tests/test_workers.py`` runs
it): three real ``bulkclaim claim`` workers at 6/s on one PostgreSQL journal with ``lease_ttl=1``, 15% of
claim answers lost and 5% 500s,
one worker SIGKILLed at a random moment; then one more run, and the checks (no double execution,
every ledger token the journal's, every number final). The time is from the kill until the last
number the dead worker held unfinished has a new owner (or is final), polled every 50 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import anyio

from tests.postgres import PgServer, server_binaries, throwaway_server
from tests.workers import kill_trial

_TTL = 1.0


async def trials(server: PgServer, count: int, first_seed: int) -> list[tuple[int, float | None]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first_seed, first_seed + count):
            trial_dir = Path(tmp) / f"trial{seed}"
            trial_dir.mkdir()
            orphaned, took = await kill_trial(server, trial_dir, seed)
            print(f"seed {seed}: {orphaned} orphaned" + (f", owned again after {took:.2f} s" if took else ""),
                  flush=True)
            results.append((orphaned, took))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="the first trial's seed")
    opts = parser.parse_args()
    bindir = server_binaries()
    if bindir is None:
        sys.exit("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    print(f"load average before: {os.getloadavg()}", flush=True)
    with throwaway_server(bindir) as server:
        results = anyio.run(trials, server, opts.trials, opts.seed)
    times = sorted(t for _, t in results if t is not None)
    bar = _TTL + _TTL / 3 + _TTL / 4
    print(f"load average after: {os.getloadavg()}")
    print(f"{len(results)} trials, {sum(n for n, _ in results)} numbers orphaned in {len(times)} of them")
    if times:
        p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
        print(f"owned again after: median {statistics.median(times):.2f} s, p90 {p90:.2f} s, "
              f"best {times[0]:.2f} s, worst {times[-1]:.2f} s; bar {bar:.2f} s (lease_ttl {_TTL:g} s): "
              f"{sum(t <= bar for t in times)} of {len(times)} within it")


if __name__ == "__main__":
    main()
