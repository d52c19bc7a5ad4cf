"""The PostgreSQL journal's own behaviour, against a real server (``tests/postgres.py``): processes
sharing one journal, a process killed with its journal open, schema versioning, the URL, and the
real CLI (``claim``, ``status``, ``report``, ``release``, ``acquire``, the dry run) on a URL.
What both backends do alike is in ``test_journal_contract.py``."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import anyio
import pytest

from bulkclaim.journal import open_journal, read_existing_journal, read_journal
from bulkclaim.journal.postgres import PostgresJournal
from bulkclaim.journal.postgres.connection import connect, parse_url, redact
from bulkclaim.journal.postgres.schema import SCHEMA_VERSION
from bulkclaim.model import JournalError, Status
from tests.postgres import PgServer
from tests.support import INSTANCE_ID, sandbox_env
from tests.test_cli import run_cli
from tests.test_cli_quota import acquire_args
from tests.test_crash import FOREIGN, NUMBERS, Tally, check_trial, kill_after_claims_executed
from tests.test_journal import req

pytestmark = pytest.mark.anyio


@pytest.fixture
def url(postgres: PgServer) -> str:
    return postgres.fresh_url()


@asynccontextmanager
async def opened(spec: str) -> AsyncIterator[PostgresJournal]:
    journal = await anyio.to_thread.run_sync(PostgresJournal.open, spec)
    try:
        yield journal
    finally:
        await journal.close()


async def test_concurrent_planners_of_the_same_numbers_agree_on_one_token_each(url: str) -> None:
    requests = [req(i) for i in range(300)]
    async with opened(url) as one, opened(url) as other:
        runs = [await one.begin_run(), await other.begin_run()]
        tokens: list[dict[str, str]] = [{}, {}]

        async def plan(journal: PostgresJournal, index: int, order: list[int]) -> None:
            for start in range(0, len(order), 50):  # batches in opposite orders: they race on every row
                batch = [requests[i] for i in order[start:start + 50]]
                for planned in (await journal.plan(batch, runs[index], retry_failed=False)).work:
                    tokens[index][planned.request.phone_number] = planned.client_token

        async with anyio.create_task_group() as group:
            group.start_soon(plan, one, 0, list(range(300)))
            group.start_soon(plan, other, 1, list(reversed(range(300))))
    assert len(tokens[0]) == len(tokens[1]) == 300
    assert tokens[0] == tokens[1]
    with read_existing_journal(url) as reader:
        assert {o.phone_number: o.client_token for o in reader.outcomes()} == tokens[0]


_KILLED_WITH_THE_JOURNAL_OPEN = """
import anyio, os, signal, sys
from bulkclaim.journal import open_journal
from tests.test_journal import req

async def main() -> None:
    journal = open_journal(sys.argv[1])
    run = await journal.begin_run()
    work = (await journal.plan([req(0), req(1)], run, retry_failed=False)).work
    journal.record_attempt(work[0], "retry", "InternalServiceException")
    await journal.flush()
    print(" ".join(p.client_token for p in work), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


async def test_a_killed_process_leaves_its_tokens_and_its_run_is_no_longer_live(url: str) -> None:
    with anyio.fail_after(60):
        killed = await anyio.run_process([sys.executable, "-c", _KILLED_WITH_THE_JOURNAL_OPEN, url], check=False,
                                         cwd=Path(__file__).parent.parent)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tokens = killed.stdout.decode().split()
    with anyio.fail_after(10):  # the server ends the dead client's session, and its run's lock with it
        while True:
            with read_existing_journal(url) as reader:
                if reader.status().live is False:
                    break
            await anyio.sleep(0.05)
    async with opened(url) as journal:
        run = await journal.begin_run()
        await journal.plan([req(5)], run, retry_failed=False)
        # the dead run's numbers join this one: its process is gone, so any of its tokens may be out
        joined = await journal.join_unsettled(run)
        assert [(number, status) for _, number, status in joined] == [
            (req(0).phone_number, "pending"), (req(1).phone_number, "pending")]
        page, _ = await journal.work_page(run, 0, 10)
    assert [(p.request.phone_number, p.client_token, p.maybe_sent) for p in page[1:]] == [
        (req(0).phone_number, tokens[0], True), (req(1).phone_number, tokens[1], True)]


async def test_a_live_processs_numbers_are_left_to_it(url: str) -> None:
    async with opened(url) as busy:
        busy_run = await busy.begin_run()
        (planned,) = (await busy.plan([req(0)], busy_run, retry_failed=False)).work
        busy.record_attempt(planned, "retry", "ThrottlingException")
        await busy.flush()
        async with opened(url) as other:
            run = await other.begin_run()
            await other.plan([req(1)], run, retry_failed=False)
            assert await other.join_unsettled(run) == [], "the busy process may be sending it now"
            with read_existing_journal(url) as reader:
                status = reader.status()
            assert status.live is True and status.live_run == run


async def test_schema_versions_and_foreign_schemas_are_refused(postgres: PgServer) -> None:
    newer, foreign = postgres.fresh_url(), postgres.fresh_url()
    async with opened(newer):
        pass
    with closing(connect(parse_url(newer), read_only=False)) as conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(JournalError, match="newer bulkclaim"):
        open_journal(newer)
    with pytest.raises(JournalError, match="newer bulkclaim"), read_journal(newer):
        pass
    location = parse_url(foreign)
    with closing(connect(location, read_only=False)) as conn:
        conn.execute(f"CREATE SCHEMA {location.schema}")
        conn.execute("CREATE TABLE numbers (n integer)")
    with pytest.raises(JournalError, match="not a bulkclaim journal"):
        open_journal(foreign)
    with read_journal(postgres.fresh_url()) as nothing:
        assert nothing is None, "reading creates nothing"


def test_urls_are_shown_without_their_password_and_the_schema_is_checked() -> None:
    assert redact("postgresql://me:s3cret@db.example.com:5432/jobs?sslmode=require") == (
        "postgresql://me:***@db.example.com:5432/jobs?sslmode=require")
    assert redact("postgresql://me@db/jobs?password=s3cret") == "postgresql://me@db/jobs?password=***"
    location = parse_url("postgresql://me@db/jobs?schema=migration_7&sslmode=verify-full")
    assert (location.schema, location.conninfo) == ("migration_7", "postgresql://me@db/jobs?sslmode=verify-full")
    with pytest.raises(JournalError, match="identifier"):
        parse_url("postgresql://me@db/jobs?schema=Robert'); DROP")


async def test_an_unreachable_server_is_a_journal_error_that_names_no_password(tmp_path: Path) -> None:
    url = f"postgresql://me:s3cret@/db?host={tmp_path}"  # no server listens there
    with pytest.raises(JournalError, match="cannot connect") as raised:
        open_journal(url)
    assert "s3cret" not in str(raised.value)


def test_without_the_driver_a_url_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(JournalError, match=r"pip install 'bulkclaim\[postgres\]'"):
        open_journal("postgresql://me@db/jobs")


# -- the CLI on a URL -------------------------------------------------------------------------------


def _claim(url: str, tmp_path: Path) -> list[str]:
    return ["claim", str(tmp_path / "numbers.txt"), "--instance-id", INSTANCE_ID, "--journal", url, "--report",
            str(tmp_path / "report.jsonl"), "--rate", "100", "--burst", "10", "--verify-timeout", "5",
            "--grace-period", "0", "--log-format", "json"]


async def test_the_cli_on_a_url_killed_mid_run_claims_each_number_once(url: str, tmp_path: Path) -> None:
    (tmp_path / "numbers.txt").write_text("\n".join(NUMBERS) + "\n", encoding="utf-8")
    async with sandbox_env(claim_delay=0.05, foreign_claims=tuple(FOREIGN)) as env:
        await kill_after_claims_executed(env, tmp_path, 5, *_claim(url, tmp_path))
        dry = await run_cli(env, tmp_path, *_claim(url, tmp_path), "--dry-run", "--no-preflight")
        assert dry.returncode in (0, 1) and "journal: postgresql://postgres@/postgres" in dry.stdout, dry.stderr
        resumed = await run_cli(env, tmp_path, *_claim(url, tmp_path))
        assert resumed.returncode == 1, resumed.stderr[-1500:]  # the two foreign numbers fail
        tally = Tally()
        check_trial(0, env, tmp_path, tally)
        assert not tally.problems, tally.problems
        with read_existing_journal(url) as reader:
            journaled = {o.phone_number: o.client_token for o in reader.outcomes()}
        claims = [e for e in env.sandbox.ledger if e.action == "claim"]
        assert claims and all(journaled[e.phone_number] == e.client_token for e in claims), "the journal's tokens"

        status = await run_cli(env, tmp_path, "status", "--journal", url, "--json")
        assert status.returncode == 0, status.stderr
        counts = json.loads(status.stdout)["counts"]
        assert (counts["claimed"], counts["failed"], json.loads(status.stdout)["live"]) == (30, 2, False)
        report = await run_cli(env, tmp_path, "report", "--journal", url, "--format", "csv")
        assert report.returncode == 0 and len(report.stdout.splitlines()) == 1 + len(NUMBERS)
        released = await run_cli(env, tmp_path, "release", "--journal", url, "--yes")
        assert released.returncode == 0 and "released 30 of 30" in released.stdout, released.stderr
        with read_existing_journal(url) as reader:
            assert reader.status().counts.get(Status.RELEASED.value) == 30
            assert reader.numbers_to_release() == []


async def test_acquire_on_a_url(url: str, tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0, phone_number_quota=5) as env:
        acquired = await run_cli(env, tmp_path, *acquire_args(2, "--journal", url))
        assert acquired.returncode == 0 and "acquired 2 of 2" in acquired.stdout, acquired.stderr[-1500:]
        again = await run_cli(env, tmp_path, *acquire_args(2, "--journal", url))
        assert again.returncode == 0 and len([e for e in env.sandbox.ledger if e.action == "claim"]) == 2


async def test_the_cli_says_a_missing_journal_and_an_unreachable_server(url: str, tmp_path: Path) -> None:
    async with sandbox_env() as env:
        missing = await run_cli(env, tmp_path, "status", "--journal", url)
        assert missing.returncode == 2 and "no journal at postgresql://" in missing.stderr
        gone = f"postgresql://me:s3cret@/db?host={tmp_path}"
        unreachable = await run_cli(env, tmp_path, "report", "--journal", gone)
        assert unreachable.returncode == 2 and "cannot connect" in unreachable.stderr
        assert "s3cret" not in unreachable.stderr + unreachable.stdout


def terminate(url: str, application_name: str) -> None:
    """End every session of ``application_name``, as a failover, a restart or a dba would."""
    with closing(connect(parse_url(url), read_only=False)) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name=?",
                      (application_name,))


async def test_a_lost_session_stops_the_journal_and_keeps_what_was_committed(url: str) -> None:
    victim = f"{url}&application_name=bulkclaim-victim&reconnect_timeout=0"  # give up at once
    async with opened(victim) as journal:
        run = await journal.begin_run()
        (planned,) = (await journal.plan([req(0)], run, retry_failed=False)).work
        terminate(url, "bulkclaim-victim")
        with pytest.raises(JournalError, match="lost PostgreSQL"):
            await journal.plan([req(1)], run, retry_failed=False)
        with pytest.raises(JournalError):  # fail closed: nothing more is recorded, so nothing more is sent
            journal.record_attempt(planned, "accepted", None)
    async with opened(url) as journal:
        again = await journal.plan([req(0), req(1)], await journal.begin_run(), retry_failed=False)
    assert [p.client_token for p in again.work][:1] == [planned.client_token]


async def test_a_lost_session_is_found_again_and_the_journal_goes_on(url: str) -> None:
    async with opened(f"{url}&application_name=bulkclaim-victim") as journal:
        run = await journal.begin_run()
        (planned,) = (await journal.plan([req(0)], run, retry_failed=False)).work
        terminate(url, "bulkclaim-victim")
        (later,) = (await journal.plan([req(1)], run, retry_failed=False)).work  # on a new connection
        with read_existing_journal(url) as reader:
            assert reader.status().live is True, "the run's session lock was taken again"
            tokens = {o.phone_number: o.client_token for o in reader.outcomes()}
    assert tokens == {req(0).phone_number: planned.client_token, req(1).phone_number: later.client_token}


async def test_a_version_2_journal_gains_the_flow_columns_in_place(url: str) -> None:
    async with opened(url) as journal:
        run = await journal.begin_run()
        await journal.plan([req(0)], run, retry_failed=False)
    with closing(connect(parse_url(url), read_only=False)) as conn:  # back to schema 2, as 0.x wrote it
        conn.execute("DROP INDEX numbers_flows_pending")
        conn.execute("DROP INDEX numbers_leased")  # schema 5's, as 0.x had none
        conn.execute("ALTER TABLE numbers DROP COLUMN contact_flow, DROP COLUMN flow_status, "
                     "DROP COLUMN flow_attempts, DROP COLUMN flow_error_code, DROP COLUMN flow_error_message, "
                     "DROP COLUMN move_from")
        conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    async with opened(url) as journal:
        again = await journal.plan([req(0)], await journal.begin_run(), retry_failed=False)
        assert [p.request.contact_flow for p in again.work] == [None], "the number is kept, without a flow"
    with closing(connect(parse_url(url), read_only=False)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert conn.execute("SELECT flow_status, flow_attempts FROM numbers").fetchall() == [(None, 0)]
        assert conn.execute("SELECT move_from FROM numbers").fetchall() == [(None,)], "v4: a claim, not a move"
