"""Several real ``bulkclaim claim`` processes on one PostgreSQL journal and one sandbox: they join one
run, split its numbers, and when one is SIGKILLed the others take its numbers over with the same
tokens. Checked from the sandbox's ledger and the journal: no number executed twice, every ledger
token the journal's, every number final (claimed; the two held by someone else failed)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
import pytest

from tests.postgres import PgServer
from tests.support import sandbox_env
from tests.test_cli import run_cli
from tests.test_crash import FOREIGN
from tests.workers import LOST, NUMBERS, check_run, holders, kill_trial, query, start_workers, until

pytestmark = pytest.mark.anyio


async def test_three_workers_split_one_run_and_take_over_a_killed_ones_numbers(postgres: PgServer,
                                                                               tmp_path: Path) -> None:
    url = postgres.fresh_url() + "&lease_ttl=1"
    async with sandbox_env(claim_delay=1.0, foreign_claims=tuple(FOREIGN), faults=LOST) as env:
        processes = await start_workers(env, url, tmp_path, 3)
        try:
            # Each worker holds numbers at once (the run is split), one of them unfinished: kill its process.
            holding = await until(lambda: holders(url, 3))  # three workers hold numbers
            victim = next(p for p in processes if p.pid == holding[0][0])
            victim.send_signal(signal.SIGKILL)
            assert await victim.wait() == -signal.SIGKILL
            (victim_id,) = query(url, "SELECT id FROM workers WHERE pid=?", victim.pid)[0]
            orphaned = {n for (n,) in query(url, "SELECT phone_number FROM numbers WHERE lease_owner=? AND status IN "
                                                 "('pending', 'in_progress')", victim_id)}
            survivors = [p for p in processes if p is not victim]
            with anyio.fail_after(120):
                codes = [await p.wait() for p in survivors]
            assert codes == [1, 1], [(tmp_path / f"err{i}").read_text()[-1500:] for i in range(3)]
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.aclose()
        owners = check_run(env, url)
        assert orphaned and all(owners[n] != str(victim_id) for n in orphaned), "taken over by the survivors"
        survivor_ids = {str(i) for (i,) in query(url, "SELECT id FROM workers WHERE id<>?", victim_id)}
        assert survivor_ids <= set(owners.values()), "the survivors both did part of the work"
        (members,) = query(url, "SELECT count(DISTINCT members_run) FROM plans")[0]
        assert members == 1, "one run: the later processes joined the first one's plan"

        # status, report and release on the URL act on the whole run, whichever worker did what
        status = await run_cli(env, tmp_path, "status", "--journal", url, "--json")
        counts = json.loads(status.stdout)["counts"]
        assert (counts["claimed"], counts["failed"], counts["pending"]) == (36, 2, 0), status.stdout
        report = await run_cli(env, tmp_path, "report", "--journal", url)
        assert len(report.stdout.splitlines()) == len(NUMBERS)
        released = await run_cli(env, tmp_path, "release", "--journal", url, "--yes")
        assert released.returncode == 0 and "released 36 of 36" in released.stdout, released.stderr[-1500:]


@pytest.mark.slow
async def test_sigkill_a_random_worker_at_a_random_moment_long_variant(postgres: PgServer, tmp_path: Path) -> None:
    results = []
    for seed in range(20):
        trial_dir = tmp_path / f"trial{seed}"
        trial_dir.mkdir()
        results.append(await kill_trial(postgres, trial_dir, seed))
    takeovers = sorted(t for _, t in results if t is not None)
    spread = f"{takeovers[0]:.1f}-{takeovers[-1]:.1f}s" if takeovers else "-"
    print(f"worker trials: {len(results)} trials, {sum(n for n, _ in results)} numbers orphaned by a kill in "
          f"{len(takeovers)} of them, taken over after {spread} (lease_ttl 1 s); 0 double executions, every "
          "ledger token the journal's, every number final")
