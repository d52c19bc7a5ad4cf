"""What the PostgreSQL workers' tests and benchmarks share: real ``bulkclaim claim`` processes on one
journal and one sandbox (``start_workers``), the journal's rows as they are now (``query``,
``holders``), the whole-run check (``check_run``) and the SIGKILL trial (``kill_trial``) that both
``tests/test_workers.py`` and ``benchmarks/takeover.py`` run."""

from __future__ import annotations

import random
import signal
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import psycopg
from anyio.abc import Process

from bulkclaim.journal.postgres.connection import connect, parse_url
from bulkclaim.sandbox import FaultConfig
from tests.postgres import PgServer
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_cli import BULKCLAIM, cli_env, run_cli
from tests.test_crash import FOREIGN, POOL

__all__ = ["LOST", "NUMBERS", "check_run", "holders", "kill_trial", "query", "start_workers", "until", "worker_args"]

NUMBERS = POOL[:36] + FOREIGN
LOST = FaultConfig(lost_response_rate=0.15, error_rate=0.05, seed=7, operations=frozenset({"ClaimPhoneNumber"}))


def worker_args(url: str, numbers: Path, report: Path, rate: str = "3", burst: str = "3") -> list[str]:
    return ["claim", str(numbers), "--instance-id", INSTANCE_ID, "--journal", url, "--report", str(report),
            "--rate", rate, "--burst", burst, "--read-timeout", "0.5", "--verify-timeout", "10",
            "--grace-period", "0", "--log-format", "json", "--no-preflight"]


def query(url: str, sql: str, *args: Any) -> list[Any]:
    """Rows of ``sql`` on the journal (none while the first worker has not created it yet)."""
    with closing(connect(parse_url(url), read_only=True)) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def holders(url: str, count: int) -> list[tuple[int, int]]:
    """Once ``count`` workers have leased numbers: (pid, unfinished numbers) of those holding some."""
    if len(query(url, "SELECT DISTINCT lease_owner FROM numbers WHERE lease_owner IS NOT NULL")) < count:
        return []
    return query(url, "SELECT w.pid, count(*) FROM workers w JOIN numbers n ON n.lease_owner=w.id "
                      "WHERE n.status IN ('pending', 'in_progress') GROUP BY w.pid")


async def until(check: Any) -> Any:
    """Poll ``check()`` until it returns something true: the state of other processes, in the journal,
    which no event of this process can tell."""
    with anyio.fail_after(60):
        while not (found := check()):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    return found


def check_run(env: SandboxEnv, url: str) -> dict[str, str]:
    """Every number final, claimed once, with the journal's token; the numbers' owners (worker ids)."""
    claims = [e for e in env.sandbox.ledger if e.action == "claim"]
    executed = [e.phone_number for e in claims]
    assert sorted({n for n in executed if executed.count(n) > 1}) == [], "double executions"
    rows = {n: (s, t, o) for n, s, t, o in query(url, "SELECT phone_number, status, client_token, lease_owner "
                                                     "FROM numbers")}
    assert sorted(rows) == sorted(NUMBERS)
    assert all(rows[e.phone_number][1] == e.client_token for e in claims), "ledger tokens are the journal's"
    statuses = {n: s for n, (s, _, _) in rows.items()}
    assert {n: s for n, s in statuses.items() if n not in FOREIGN} == dict.fromkeys(NUMBERS[:36], "claimed")
    assert [statuses[n] for n in FOREIGN] == ["failed", "failed"]
    return {n: str(o) for n, (_, _, o) in rows.items()}


async def start_workers(env: SandboxEnv, url: str, tmp_path: Path, count: int, *, rate: str = "3",
                        burst: str = "3", numbers: list[str] = NUMBERS) -> list[Process]:
    """``count`` claim processes on the same inputs and journal; each one's stdout and stderr in
    ``out<i>`` and ``err<i>``."""
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(numbers) + "\n", encoding="utf-8")
    return [await anyio.open_process([*BULKCLAIM, *worker_args(url, path, tmp_path / f"report{i}.jsonl", rate,
                                                               burst)],
                                     env=cli_env(env), cwd=tmp_path, stdout=(tmp_path / f"out{i}").open("wb"),
                                     stderr=(tmp_path / f"err{i}").open("wb")) for i in range(count)]


async def kill_trial(postgres: PgServer, tmp_path: Path, seed: int) -> tuple[int, float | None]:
    """Three workers, one SIGKILLed at a random moment, lost answers and 500s; then one more run.
    (orphaned numbers, seconds from the kill until the last of them had a new owner)."""
    rng = random.Random(seed)
    url = postgres.fresh_url() + "&lease_ttl=1"
    faults = FaultConfig(**{**LOST.__dict__, "seed": seed})
    async with sandbox_env(claim_delay=0.5, foreign_claims=tuple(FOREIGN), faults=faults) as env:
        processes = await start_workers(env, url, tmp_path, 3, rate="6")
        orphaned: set[str] = set()
        took: float | None = None
        try:
            await anyio.sleep(rng.uniform(1.0, 5.0))
            victim = rng.choice(processes)
            if victim.returncode is None:
                victim.send_signal(signal.SIGKILL)
                killed_at = anyio.current_time()
                await victim.wait()
                rows = query(url, "SELECT id FROM workers WHERE pid=?", victim.pid)
                if rows:
                    orphaned = {n for (n,) in query(url, "SELECT phone_number FROM numbers WHERE lease_owner=? "
                                                         "AND status IN ('pending', 'in_progress')", rows[0][0])}
                    if orphaned:
                        await until(lambda: not query(url, "SELECT 1 FROM numbers WHERE lease_owner=? AND status IN "
                                                           "('pending', 'in_progress')", rows[0][0]))
                        took = anyio.current_time() - killed_at
            with anyio.fail_after(180):
                for process in processes:
                    await process.wait()
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.aclose()
        again = await run_cli(env, tmp_path, *worker_args(url, tmp_path / "numbers.txt", tmp_path / "last.jsonl"))
        assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-1500:]
        check_run(env, url)
    return len(orphaned), took
