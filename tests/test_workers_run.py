"""What belongs to a whole run when several ``bulkclaim claim`` processes share it on one PostgreSQL
journal (real processes, a real server, the sandbox): the run-wide steps are done by one worker, the
run's options are the planner's, and every worker exits with the run's exit code."""

from __future__ import annotations

import json
import signal
import zlib
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from bulkclaim.journal.postgres.connection import connect, parse_url
from tests.postgres import PgServer
from tests.support import SandboxEnv, sandbox_env
from tests.test_cli import BULKCLAIM, cli_env, run_cli
from tests.test_crash import FOREIGN, POOL
from tests.workers import holders, query, until, worker_args

pytestmark = pytest.mark.anyio

_KEPT_STEPS = "SELECT key FROM meta WHERE key LIKE 'run %'"  # the run-wide steps' results (Journal.once)


async def start(env: SandboxEnv, tmp_path: Path, name: str, args: list[str]) -> Process:
    """One claim process; its stdout and stderr in ``out-<name>`` and ``err-<name>``."""
    return await anyio.open_process([*BULKCLAIM, *args], env=cli_env(env), cwd=tmp_path,
                                    stdout=(tmp_path / f"out-{name}").open("wb"),
                                    stderr=(tmp_path / f"err-{name}").open("wb"))


async def finish(processes: list[Process], seconds: float = 120) -> list[int]:
    """Every process's exit code (killed if it is not done in time)."""
    try:
        with anyio.fail_after(seconds):
            return [await process.wait() for process in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.aclose()


def events(tmp_path: Path, name: str, event: str) -> list[dict[str, object]]:
    lines = (tmp_path / f"err-{name}").read_text().splitlines()
    return [found for line in lines if line.startswith("{") and (found := json.loads(line))["event"] == event]


def claimed_numbers(env: SandboxEnv) -> list[str]:
    return [e.phone_number for e in env.sandbox.ledger if e.action == "claim"]


async def test_two_workers_resuming_a_run_sweep_once_and_never_send_a_number_the_input_dropped(
        postgres: PgServer, tmp_path: Path) -> None:
    url = postgres.fresh_url() + "&lease_ttl=1"
    numbers, dropped = POOL[:8], POOL[8:14]
    path = tmp_path / "numbers.txt"
    async with sandbox_env(claim_delay=0.3) as env:
        # An earlier run planned 14 numbers and died before sending: each token may be out there.
        path.write_text("\n".join(numbers + dropped) + "\n", encoding="utf-8")
        killed = await run_cli(env, tmp_path, *worker_args(url, path, tmp_path / "r0.jsonl"),
                               BULKCLAIM_DEBUG_KILL_AFTER_PLAN="1")
        assert killed.returncode == -signal.SIGKILL
        assert query(url, _KEPT_STEPS), "the killed run kept some of its run-wide steps"
        # Two workers of the next run, whose input no longer names six of them.
        path.write_text("\n".join(numbers) + "\n", encoding="utf-8")
        workers = [await start(env, tmp_path, name, worker_args(url, path, tmp_path / f"{name}.jsonl", rate="4"))
                   for name in ("a", "b")]
        codes = await finish(workers)
        errors = [(tmp_path / f"err-{name}").read_text()[-1500:] for name in ("a", "b")]
        # the run is complete (the dropped numbers were never ours and stay so): every worker exits 0
        assert codes == [0, 0], errors
        sweeps = [e for name in ("a", "b") for e in events(tmp_path, name, "run.reconciled")]
        assert len(sweeps) == 1, "one worker swept the target for the run, the other took its findings"
        assert sorted(claimed_numbers(env)) == sorted(numbers), "a number the input dropped is never sent"
        rows = dict(query(url, "SELECT phone_number, status || ' ' || COALESCE(error_code, '') FROM numbers"))
        assert rows == {**dict.fromkeys(numbers, "claimed "), **dict.fromkeys(dropped, "failed NotClaimed")}
        assert query(url, _KEPT_STEPS) == [], "neither the killed run's nor the ended run's steps are left"
        (members,) = query(url, "SELECT count(DISTINCT members_run) FROM plans WHERE run > 1")[0]
        assert members == 1, "the second worker joined the first one's run"
        for name in ("a", "b"):
            assert ("6 number(s) no longer in the input were sent by an earlier run: settled as failed 6"
                    in (tmp_path / f"out-{name}").read_text()), "each worker knows the run's dropped numbers"


async def test_a_worker_started_with_other_run_wide_options_than_the_run_stops_with_exit_2(
        postgres: PgServer, tmp_path: Path) -> None:
    url = postgres.fresh_url() + "&lease_ttl=1"
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(POOL[:8]) + "\n", encoding="utf-8")

    def args(name: str, *extra: str) -> list[str]:  # one number a second: the run lasts while the others start
        plain = [a for a in worker_args(url, path, tmp_path / f"{name}.jsonl", "1", "1") if a != "--no-preflight"]
        return [*plain, "--phone-number-quota", "1000", *extra]

    async with sandbox_env(claim_delay=0.5) as env:
        first = await start(env, tmp_path, "first", args("first"))
        try:
            await until(lambda: holders(url, 1))  # the run is planned, preflighted, and sending
            other = [await run_cli(env, tmp_path, *args(name, flag))
                     for name, flag in (("retry", "--retry-failed"), ("partial", "--allow-partial"))]
        finally:
            codes = await finish([first])
        assert [o.returncode for o in other] == [2, 2], [o.stderr[-1500:] for o in other]
        assert "started without --retry-failed and this worker with it" in other[0].stderr
        assert "started without --allow-partial and this worker with it" in other[1].stderr
        assert all("nothing was sent" in o.stderr and "Traceback" not in o.stderr for o in other)
        assert codes == [0], (tmp_path / "err-first").read_text()[-1500:]
        assert sorted(claimed_numbers(env)) == sorted(POOL[:8]), "each number sent once, by the first worker"
        # Once the run has ended, a worker with --retry-failed starts a run of its own.
        again = await run_cli(env, tmp_path, *args("again", "--retry-failed"))
        assert again.returncode == 0, again.stderr[-1500:]


async def test_every_worker_exits_with_the_runs_code_whoever_handled_the_failed_numbers(
        postgres: PgServer, tmp_path: Path) -> None:
    url = postgres.fresh_url() + "&lease_ttl=1"
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(FOREIGN + POOL[:10]) + "\n", encoding="utf-8")  # the two failures first
    async with sandbox_env(claim_delay=0.5, foreign_claims=tuple(FOREIGN)) as env:
        def args(name: str) -> list[str]:  # two numbers a second: the run lasts until the second one is in
            return worker_args(url, path, tmp_path / f"{name}.jsonl", "2", "1")

        workers = [await start(env, tmp_path, "first", args("first"))]
        try:
            # the first worker has failed both foreign numbers before the second one starts
            await until(lambda: query(url, "SELECT count(*) FROM numbers WHERE status='failed'") == [(2,)])
            workers.append(await start(env, tmp_path, "second", args("second")))
        finally:
            codes = await finish(workers)
        assert codes == [1, 1], "failed numbers in the run: exit 1 for every worker, also one that failed none"
        (second,) = query(url, "SELECT max(id) FROM workers")[0]
        assert query(url, "SELECT count(*) FROM numbers WHERE lease_owner=?", second)[0][0] > 0, "it did some"
        assert not query(url, "SELECT 1 FROM numbers WHERE lease_owner=? AND status<>'claimed'", second)
        assert "claimed 10 · failed 2" in (tmp_path / "out-second").read_text(), "its summary is the run's"
        sent = len(env.sandbox.ledger)
        # A worker started once the run is over finds nothing to do: the run's code again, nothing sent.
        late = await run_cli(env, tmp_path, *args("late"))
        assert late.returncode == 1 and "claimed 10 · failed 2" in late.stdout, late.stderr[-1500:]
        assert len(env.sandbox.ledger) == sent


@pytest.mark.parametrize("step", ["reconcile", "preflight"])
async def test_a_worker_waiting_for_another_workers_run_wide_step_stops_on_its_first_sigterm(
        postgres: PgServer, tmp_path: Path, step: str) -> None:
    url = postgres.fresh_url() + "&lease_ttl=1"
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(POOL[:8]) + "\n", encoding="utf-8")
    # Another worker of run 1 doing the step, for as long as this test holds the step's lock (a sweep of a
    # large account, a slow quota read); SIGTERM must not wait for it, nor for the grace period.
    location = parse_url(url)
    key = location.lock_key ^ (zlib.crc32(step.encode()) & 0x7FFFFFFF)
    args = [a for a in worker_args(url, path, tmp_path / "r.jsonl") if a != "--no-preflight"]
    args[args.index("--grace-period") + 1] = "300"
    args += ["--phone-number-quota", "1000"]
    async with sandbox_env() as env:
        with closing(connect(location, read_only=True)) as other:
            other.execute("SELECT pg_advisory_lock(?, 1)", (key,))
            waiting = await start(env, tmp_path, "waiting", args)
            try:
                await until(lambda: [e for e in events(tmp_path, "waiting", "run.waiting") if e["step"] == step])
                waiting.send_signal(signal.SIGTERM)
            finally:
                (code,) = await finish([waiting], seconds=30)
        stderr = (tmp_path / "err-waiting").read_text()
        assert code == 143, stderr[-1500:]
        assert "interrupted; 8 number(s) not finished" in stderr and "Traceback" not in stderr
        assert env.sandbox.ledger == [], "nothing sent"
        tokens = dict(query(url, "SELECT phone_number, client_token FROM numbers WHERE status='pending'"))
        assert sorted(tokens) == sorted(POOL[:8])
        # Nothing lost: the same command claims every number with the token planned before the stop.
        again = await run_cli(env, tmp_path, *args)
        assert again.returncode == 0, again.stderr[-1500:]
        assert {e.phone_number: e.client_token for e in env.sandbox.ledger if e.action == "claim"} == tokens
