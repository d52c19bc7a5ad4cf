"""PostgreSQL stopped in the middle of a run (``pg_ctl stop -m immediate`` on a server of the test's
own, started again later): two real workers send nothing while it is down (past what was already
admitted before the stop), go on by themselves once it is back, and lose nothing: every number
final, claimed once, with the journal's token. ``make test`` stops it for 3 s; the bar (30 s) is the
``slow`` variant, whose figures go to benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import anyio
import pytest

from bulkclaim.model import Outcome, Status
from tests.postgres import PgServer, ServerFailed, server_binaries, throwaway_server
from tests.support import sandbox_env
from tests.test_claimer import claimer
from tests.test_crash import FOREIGN
from tests.test_journal import req
from tests.workers import check_run, query, start_workers, until

pytestmark = pytest.mark.anyio

_ADMITTED = 2.0  # seconds after the stop for what was admitted before it to go out (the in-flight cap)


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of the test's own, to stop and start (the session's server stays up for the others)."""
    bindir = server_binaries()
    if bindir is None:
        if os.environ.get("BULKCLAIM_REQUIRE_POSTGRES"):
            pytest.fail("no PostgreSQL server binaries (initdb, pg_ctl)")
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    try:
        with throwaway_server(bindir) as server:
            yield server
    except ServerFailed as exc:
        pytest.fail(str(exc))


def _requests(stats: Mapping[str, Mapping[str, int]]) -> int:
    return sum(sum(counts.values()) for counts in stats.values())


async def outage(server: PgServer, tmp_path: Path, down_for: float) -> str:
    url = server.fresh_url() + "&lease_ttl=2"
    async with sandbox_env(claim_delay=0.2, foreign_claims=tuple(FOREIGN)) as env:
        processes = await start_workers(env, url, tmp_path, 2, rate="5", burst="2")
        try:
            await until(lambda: len([e for e in env.sandbox.ledger if e.action == "claim"]) >= 8)
            claims_before = len([e for e in env.sandbox.ledger if e.action == "claim"])
            await anyio.to_thread.run_sync(server.stop)
            stopped = anyio.current_time()
            await anyio.sleep(_ADMITTED)  # the outage itself: what is measured is what happens during it
            sent_at_start = _requests(env.sandbox.state.stats)
            await anyio.sleep(down_for - _ADMITTED)
            sent_while_down = _requests(env.sandbox.state.stats) - sent_at_start
            assert all(p.returncode is None for p in processes), "the workers wait for the database"
            await anyio.to_thread.run_sync(server.start)
            back = anyio.current_time()
            with anyio.fail_after(180):
                await until(lambda: _requests(env.sandbox.state.stats) > sent_at_start + sent_while_down)
                resumed_after = anyio.current_time() - back
                codes = [await p.wait() for p in processes]
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.aclose()
        errors = [(tmp_path / f"err{i}").read_text() for i in range(2)]
        assert sent_while_down == 0, "nothing sent while the database was down"
        assert codes == [1, 1], [e[-1500:] for e in errors]  # the two numbers held by a rival fail
        events = {json.loads(line)["event"] for e in errors for line in e.splitlines() if line.startswith("{")}
        assert {"journal.unreachable", "journal.reachable"} <= events
        check_run(env, url)  # nothing lost: every number final, claimed once, with the journal's token
        (epochs,) = query(url, "SELECT max(lease_epoch) FROM numbers")[0]
        # Both heartbeats lapse while the database is down, so a number may change hands a few times as the
        # workers come back (each takes the other's over); a worker re-leasing its own ones did it 160 times.
        assert epochs <= 10, "no number handed out again and again (a worker re-leasing its own numbers)"
    return (f"stopped {back - stopped:.1f} s after {claims_before} claims: 0 requests from {_ADMITTED:.0f} s "
            f"after the stop until the restart, first request {resumed_after:.1f} s after it, every number final, "
            "0 double executions")


async def test_postgres_stopped_for_3_s_mid_run(own_server: PgServer, tmp_path: Path) -> None:
    print(await outage(own_server, tmp_path, 3.0))


@pytest.mark.slow
async def test_postgres_stopped_for_30_s_mid_run(own_server: PgServer, tmp_path: Path) -> None:
    print(await outage(own_server, tmp_path, 30.0))


async def test_a_library_replicas_claims_wait_while_the_database_is_away_then_finish(own_server: PgServer) -> None:
    """A service's replica (``Claimer(journal="postgresql://...")``) in the middle of ``claim()`` calls when
    its database goes away: nothing is sent while it is down (fail closed), and the calls finish once it
    is back, each number claimed once with the journal's token; no call fails."""
    url = own_server.fresh_url() + "&lease_ttl=2"
    numbers = [req(i).phone_number for i in range(16)]
    async with sandbox_env(claim_delay=0.05) as env, claimer(env, url, rate=4.0, burst=2) as replica:
        outcomes: dict[str, Outcome] = {}

        async def claim(number: str) -> None:
            outcomes[number] = await replica.claim(number)

        async with anyio.create_task_group() as tg:
            for number in numbers:  # at 4/s: the last ones are still waiting for the budget at the stop
                tg.start_soon(claim, number)
            await until(lambda: len(env.sandbox.ledger) >= 4)
            await anyio.to_thread.run_sync(own_server.stop)
            await anyio.sleep(_ADMITTED)  # the outage itself: what is measured is what happens during it
            sent_at_start = _requests(env.sandbox.state.stats)
            await anyio.sleep(1.5)
            sent_while_down = _requests(env.sandbox.state.stats) - sent_at_start
            assert len(outcomes) < len(numbers), "claim() calls were waiting for the database"
            await anyio.to_thread.run_sync(own_server.start)
            tg.cancel_scope.deadline = anyio.current_time() + 60
        assert sent_while_down == 0, "nothing sent while the database was down"
        assert {n: o.status for n, o in outcomes.items()} == dict.fromkeys(numbers, Status.CLAIMED)
        tokens = dict(query(url, "SELECT phone_number, client_token FROM numbers"))
        assert {n: o.client_token for n, o in outcomes.items()} == tokens, "the journal's tokens"
        assert [e.client_token for e in env.sandbox.ledger if e.action == "claim"] == [
            tokens[e.phone_number] for e in env.sandbox.ledger if e.action == "claim"]
        assert sorted(e.phone_number for e in env.sandbox.ledger if e.action == "claim") == sorted(numbers)
