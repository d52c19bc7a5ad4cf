"""Leases on a shared (PostgreSQL) journal, journal-level, against a real server: how workers split a
run, take over a dead worker's numbers with the same tokens, ignore a stale owner's outcome, wait
for each other, and how replicas claiming one number take turns. A worker's death is simulated by
moving its heartbeat's expiry into the past (the server's clock decides), so nothing here waits for
a TTL to run out."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import closing

import anyio
import pytest

from bulkclaim.claimer import Claimer
from bulkclaim.journal import read_existing_journal
from bulkclaim.journal.postgres import PostgresJournal
from bulkclaim.journal.postgres.connection import connect, parse_url
from bulkclaim.model import Outcome, Planned, Status
from tests.postgres import PgServer
from tests.support import sandbox_env
from tests.test_claimer import claimer
from tests.test_journal import req
from tests.test_journal_postgres import opened

pytestmark = pytest.mark.anyio


@pytest.fixture
def url(postgres: PgServer) -> str:
    return postgres.fresh_url() + "&lease_ttl=60"  # no heartbeat during a test: expiry is set by hand


def expire(url: str, journal: PostgresJournal) -> None:
    """The worker's heartbeat ran out (as after a SIGKILL, on the server's clock)."""
    with closing(connect(parse_url(url), read_only=False)) as conn:
        conn.execute("UPDATE workers SET expires_at=clock_timestamp() - interval '1 second' WHERE id=?",
                     (journal.worker.id,))


def outcome(planned: Planned, status: Status, phone_number_id: str | None = None) -> Outcome:
    return Outcome(planned.request.phone_number, planned.request.source, planned.request.target.key, status,
                   phone_number_id, None, planned.client_token, planned.attempts + 1, updated_at=time.time())


def journal_rows(url: str) -> dict[str, tuple[str, str, int | None]]:
    with closing(connect(parse_url(url), read_only=True)) as conn:
        return {n: (s, t, o) for n, s, t, o in conn.execute(
            "SELECT phone_number, status, client_token, lease_owner FROM numbers").fetchall()}


async def test_workers_split_a_run_and_take_over_a_dead_workers_numbers_with_the_same_tokens(url: str) -> None:
    async with opened(url) as first, opened(url) as second:
        run = await first.begin_run()
        tokens = {p.request.phone_number: p.client_token
                  for p in (await first.plan([req(i) for i in range(10)], run, retry_failed=False)).work}
        mine, _ = await first.work_page(run, 0, 4)
        theirs, _ = await second.work_page(run, 0, 4)
        assert [p.request.phone_number for p in mine] == [req(i).phone_number for i in range(4)], "input order"
        assert [p.request.phone_number for p in theirs] == [req(i).phone_number for i in range(4, 8)], "not mine"
        assert not any(p.maybe_sent for p in mine + theirs), "nobody held them before"
        with read_existing_journal(url) as reader:
            status = reader.status()
        assert (status.live, status.workers) == (True, {run: 2}), "status shows the whole run's workers"

        assert await second.more_work(run, idle=True), "the first worker is still working on its numbers"
        expire(url, first)  # the first worker dies holding four numbers
        taken, _ = await second.work_page(run, 0, 10)
        assert [p.request.phone_number for p in taken] == [req(i).phone_number for i in (0, 1, 2, 3, 8, 9)]
        assert all(p.client_token == tokens[p.request.phone_number] for p in taken), "the same tokens"
        assert [p.maybe_sent for p in taken] == [True] * 4 + [False] * 2, "the dead worker may have sent them"

        # The first worker was only stalled: its late outcome is ignored, the new owner's is kept.
        first.record_outcome(outcome(mine[0], Status.FAILED))
        second.record_outcome(outcome(taken[0], Status.CLAIMED, "id-0"))
        first.record_outcome(outcome(mine[1], Status.FAILED))
        await first.flush()
        await second.flush()
    rows = journal_rows(url)
    assert rows[req(0).phone_number][:2] == ("claimed", tokens[req(0).phone_number])
    assert rows[req(1).phone_number][0] == "pending", "a stale owner's outcome does not count"


async def test_a_waiting_worker_does_not_wait_for_numbers_another_waiting_worker_left_unfinished(url: str) -> None:
    async with opened(url) as first, opened(url) as second:
        run = await first.begin_run()
        await first.plan([req(0), req(1)], run, retry_failed=False)
        (one,), _ = await first.work_page(run, 0, 1)
        (other,), _ = await second.work_page(run, 0, 1)
        first.record_outcome(outcome(one, Status.PENDING))  # unknown: stays the first worker's
        await first.flush()
        assert await first.more_work(run, idle=True), "the second worker is still working"
        second.record_outcome(outcome(other, Status.CLAIMED, "id-1"))
        await second.flush()
        assert not await second.more_work(run, idle=True), "the first only waits: its unfinished number is its own"
        assert not await first.more_work(run, idle=True)
        assert (await second.work_page(run, 0, 10))[0] == [], "nothing to take from a live worker"
    async with opened(url) as third:  # both ended: what they left unfinished is anyone's now
        page, _ = await third.work_page(run, 0, 10)
        assert [(p.request.phone_number, p.maybe_sent) for p in page] == [(req(0).phone_number, True)]


async def test_replicas_claiming_one_number_take_turns_and_the_second_gets_the_first_ones_outcome(url: str) -> None:
    async with opened(url) as first, opened(url) as second:
        runs = [await first.begin_run(), await second.begin_run()]
        (a,) = (await first.plan([req(0)], runs[0], retry_failed=False, dedupe=False)).work
        (b,) = (await second.plan([req(0)], runs[1], retry_failed=False, dedupe=False)).work
        assert a.client_token == b.client_token, "one token"
        leased = await first.lease(a)
        assert isinstance(leased, Planned)
        waiting: list[Planned | Outcome] = []

        async def second_replica() -> None:
            waiting.append(await second.lease(b))

        async with anyio.create_task_group() as tg:
            tg.start_soon(second_replica)
            await anyio.sleep(1.5 * second.poll)  # it looks at least once, and finds the number held
            assert waiting == [], "the second replica waits while the first holds the number"
            first.record_outcome(outcome(leased, Status.CLAIMED, "id-0"))
            first.unlease(leased)
        (got,) = waiting
        assert isinstance(got, Outcome) and (got.status, got.phone_number_id) == (Status.CLAIMED, "id-0")


async def test_an_unknown_outcome_is_let_go_and_the_next_replica_sends_the_same_token(url: str) -> None:
    async with opened(url) as first, opened(url) as second:
        (a,) = (await first.plan([req(0)], await first.begin_run(), retry_failed=False, dedupe=False)).work
        leased = await first.lease(a)
        assert isinstance(leased, Planned)
        first.record_outcome(outcome(leased, Status.PENDING))
        first.unlease(leased)
        again = await second.lease(a)
        assert isinstance(again, Planned) and again.client_token == a.client_token and again.attempts == 1


async def test_two_claimer_replicas_claiming_the_same_numbers_send_each_once(postgres: PgServer) -> None:
    """Two replicas of a service (two Claimers, each with its own connections to the journal) asked for
    the same numbers at the same moment: each number is claimed once, with one token, in one request."""
    url = postgres.fresh_url()
    numbers = [req(i).phone_number for i in range(40)]
    async with sandbox_env(claim_delay=0.05) as env:
        async with claimer(env, url) as first, claimer(env, url) as second:
            got: dict[str, list[Outcome]] = {n: [] for n in numbers}

            async def ask(replica: Claimer, number: str) -> None:
                got[number].append(await replica.claim(number))

            async with anyio.create_task_group() as tg:
                for number in numbers:
                    tg.start_soon(ask, first, number)
                    tg.start_soon(ask, second, number)
        requests = env.sandbox.state.stats["ClaimPhoneNumber"]
    assert sum(requests.values()) == len(numbers), "one request per number: the second replica waited"
    assert all({(o.status, o.client_token) for o in outcomes} == {(Status.CLAIMED, outcomes[0].client_token)}
               for outcomes in got.values())
    assert sorted(e.phone_number for e in env.sandbox.ledger) == sorted(numbers)


async def test_a_run_wide_step_is_done_by_one_worker_and_the_others_get_its_result(url: str) -> None:
    async with opened(url) as first, opened(url) as second, opened(url) as third:
        run = await first.begin_run()
        doing, may_finish = anyio.Event(), anyio.Event()
        done_by: list[str] = []
        got: dict[str, str | None] = {}

        def step(name: str) -> Callable[[], Awaitable[str | None]]:
            async def produce() -> str | None:
                done_by.append(name)
                doing.set()
                await may_finish.wait()
                return f"found by {name}"
            return produce

        async def worker(name: str, journal: PostgresJournal) -> None:
            got[name] = await journal.once(run, "sweep", step(name))

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "first", first)
            await doing.wait()  # the first one holds the step: the others wait for its result
            tg.start_soon(worker, "second", second)
            tg.start_soon(worker, "third", third)
            await anyio.sleep(2 * second.poll)  # they look at least once, and do not do the step
            assert done_by == ["first"]
            may_finish.set()
        assert done_by == ["first"] and set(got.values()) == {"found by first"}

        # A step whose worker was stopped (its result None) is not kept: the next worker does it.
        async def stopped() -> str | None:
            return None
        assert await first.once(run, "preflight", stopped) is None
        may_finish.set()
        assert await second.once(run, "preflight", step("second")) == "found by second"
        # Another run's steps are its own.
        assert await third.once(run + 1, "sweep", step("third")) == "found by third"
