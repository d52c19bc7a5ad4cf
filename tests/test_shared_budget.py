"""The rate budget every worker of a PostgreSQL journal shares (``journal/postgres/budget.py``), against
a real server: the bucket's arithmetic in one statement, two real ``bulkclaim claim`` processes that
together stay within the sandbox's bucket, and a run that sends nothing while the database is away
and goes on once it is back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from bulkclaim.journal.postgres import PostgresJournal
from bulkclaim.journal.postgres.budget import Budgets
from bulkclaim.journal.postgres.connection import connect, parse_url
from bulkclaim.sandbox import API_NAMES, ThrottleConfig
from tests.postgres import PgServer
from tests.support import sandbox_env
from tests.test_cli import run_cli
from tests.test_journal_postgres import opened
from tests.workers import NUMBERS, check_run, start_workers, until

pytestmark = pytest.mark.anyio


async def test_one_bucket_for_every_worker_on_the_servers_clock(postgres: PgServer) -> None:
    url = postgres.fresh_url()
    async with opened(url) as first, opened(url) as second:
        buckets = [Budgets(journal.location, "us-east-1/") for journal in (first, second)]
        # 1/s, burst 3: two workers taking turns get the burst, then one slot a second between them
        waits = [(await buckets[i % 2].reserve("us-east-1//ClaimPhoneNumber", 1.0, 3, 0))[0] for i in range(6)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert [round(w) for w in waits[3:]] == [1, 2, 3], waits
        # a 429 heard by one worker lowers the rate both get
        cut = (await buckets[0].reserve("us-east-1//ClaimPhoneNumber", 1.0, 3, 1)).rate
        seen = await buckets[1].reserve("us-east-1//ClaimPhoneNumber", 1.0, 3, 0)
        assert cut == pytest.approx(0.7) and seen.rate < 0.71
        # the 429 of a request booked before that cut is of the same bunch: it cuts nothing more ...
        again = await buckets[1].reserve("us-east-1//ClaimPhoneNumber", 1.0, 3, 1, seen.booked_at - 1)
        assert again.rate == pytest.approx(seen.rate, rel=0.01)
        # ... one booked after it does
        later = await buckets[1].reserve("us-east-1//ClaimPhoneNumber", 1.0, 3, 1, seen.booked_at)
        assert later.rate == pytest.approx(again.rate * 0.7, rel=0.01)
        # another API has a bucket of its own
        assert (await buckets[1].reserve("us-east-1//DescribePhoneNumber", 1.0, 3, 0))[0] == 0.0
        for budgets in buckets:
            await budgets.aclose()


async def test_two_workers_together_stay_within_the_accounts_bucket(postgres: PgServer, tmp_path: Path) -> None:
    url = postgres.fresh_url()
    # Each worker is told the account's whole rate: without one shared budget they would send twice it.
    throttle = {api: ThrottleConfig(rate=8.0, burst=4) for api in API_NAMES}
    async with sandbox_env(claim_delay=0.2, throttle=throttle) as env:
        processes = await start_workers(env, url, tmp_path, 2, rate="8", burst="4", numbers=NUMBERS[:36])
        with anyio.fail_after(120):
            codes = [await p.wait() for p in processes]
        assert codes == [0, 0], [(tmp_path / f"err{i}").read_text()[-1500:] for i in range(2)]
        claims = env.sandbox.state.stats["ClaimPhoneNumber"]
        describes = env.sandbox.state.stats["DescribePhoneNumber"]
        throttled = claims.get("ThrottlingException", 0) + describes.get("ThrottlingException", 0)
        print(f"two workers, one 8/s budget: {sum(claims.values())} claims, "
              f"{sum(describes.values())} describes, {throttled} throttled")
        assert throttled <= 1, (claims, describes)
        owners = {o for (o,) in _rows(url, "SELECT DISTINCT lease_owner FROM numbers")}
        assert len(owners) == 2, "both workers sent"


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with closing(connect(parse_url(url), read_only=True)) as conn:
        return list(conn.execute(sql).fetchall())


@pytest.fixture
def own_database(postgres: PgServer) -> Iterator[tuple[str, str]]:
    """A database of the test's own, which it can close to every connection (and open again)."""
    name = f"d{uuid.uuid4().hex[:12]}"
    admin_url = postgres.url()
    with closing(connect(parse_url(admin_url), read_only=False)) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres.url(schema="bulkclaim", database=name) + "&lease_ttl=2", name
    with closing(connect(parse_url(admin_url), read_only=False)) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _set_reachable(admin_url: str, name: str, reachable: bool) -> None:
    with closing(connect(parse_url(admin_url), read_only=False)) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'true' if reachable else 'false'}")
        if not reachable:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=?", (name,))


def _requests(stats: Mapping[str, Mapping[str, int]]) -> int:
    return sum(sum(counts.values()) for counts in stats.values())


async def test_while_the_database_is_away_nothing_is_sent_and_the_run_goes_on_when_it_is_back(
        postgres: PgServer, own_database: tuple[str, str], tmp_path: Path) -> None:
    url, name = own_database
    async with sandbox_env(claim_delay=0.2, foreign_claims=tuple(NUMBERS[-2:])) as env:
        (process,) = await start_workers(env, url, tmp_path, 1, rate="5", burst="2")
        try:
            await until(lambda: len([e for e in env.sandbox.ledger if e.action == "claim"]) >= 5)
            _set_reachable(postgres.url(), name, False)
            # What was already admitted may still go out (the in-flight cap, and slots booked before):
            # after that, nothing, however long the database stays away.
            await anyio.sleep(2.0)
            before = _requests(env.sandbox.state.stats)
            await anyio.sleep(3.0)
            during = _requests(env.sandbox.state.stats) - before
            assert process.returncode is None, "the worker waits for the database"
            _set_reachable(postgres.url(), name, True)
            with anyio.fail_after(120):
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
            await process.aclose()
        log = [json.loads(line) for line in (tmp_path / "err0").read_text().splitlines() if line.startswith("{")]
        assert during == 0, "nothing sent while the database was away"
        assert code == 1, (tmp_path / "err0").read_text()[-1500:]  # the two numbers held by a rival fail
        assert {"journal.unreachable", "journal.reachable"} <= {e["event"] for e in log}
        check_run(env, url)
        status = await run_cli(env, tmp_path, "status", "--journal", url, "--json")
        assert json.loads(status.stdout)["counts"]["pending"] == 0


async def test_a_shared_journal_opened_twice_in_one_process_is_two_workers(postgres: PgServer) -> None:
    url = postgres.fresh_url()
    async with opened(url) as first, opened(url) as second:
        assert isinstance(first, PostgresJournal) and first.worker.id != second.worker.id
