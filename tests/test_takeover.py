"""Taking over a killed worker's numbers on a PostgreSQL journal (``leases.pick``, ``WorkList``): every
number it held is owned again at the first look after its heartbeat expired, however many, with its
token, marked possibly sent, and counted in the metrics (``bulkclaim_lease_takeovers_total``)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import pytest

from bulkclaim.journal.postgres import PostgresJournal
from bulkclaim.model import Planned
from tests.postgres import PgServer
from tests.test_journal import req
from tests.test_journal_postgres import opened

pytestmark = pytest.mark.anyio

#: a worker that leases the first four of six numbers, says their tokens, and dies holding them
_DIES_HOLDING_FOUR = """
import anyio, os, signal, sys
from bulkclaim.journal import open_journal
from tests.test_journal import req

async def main() -> None:
    journal = open_journal(sys.argv[1])
    run = await journal.begin_run()
    await journal.plan([req(i) for i in range(6)], run, retry_failed=False)
    held, _ = await journal.work_page(run, 0, 4)
    print(run, " ".join(p.client_token for p in held), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


async def dies_holding_four(url: str) -> tuple[int, list[str]]:
    """Run ``_DIES_HOLDING_FOUR`` on ``url``: its run and the tokens of the numbers it held."""
    with anyio.fail_after(60):
        killed = await anyio.run_process([sys.executable, "-c", _DIES_HOLDING_FOUR, url], check=False,
                                         cwd=Path(__file__).parent.parent)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run, *tokens = killed.stdout.decode().split()
    return int(run), tokens


async def first_take_over(journal: PostgresJournal, run: int) -> list[Planned]:
    """``take_over`` until it finds something: the dead worker's heartbeat expires on the server's clock,
    which no event of this process can tell (each call waits one poll, a quarter of the lease TTL)."""
    with anyio.fail_after(30):
        while not (taken := await journal.take_over(run)):
            pass
    return taken


async def test_a_killed_workers_numbers_are_all_taken_over_at_the_first_look_after_its_lease(
        postgres: PgServer) -> None:
    url = postgres.fresh_url() + "&lease_ttl=0.3"
    async with opened(url) as survivor:
        assert survivor.poll == pytest.approx(0.075)
        run, tokens = await dies_holding_four(url)
        taken = await first_take_over(survivor, run)
        # all four at once (a page of fresh numbers would be two: a take-over is not held back by it),
        # in input order, with their tokens, possibly sent
        assert [p.request.phone_number for p in taken] == [req(i).phone_number for i in range(4)]
        assert [p.client_token for p in taken] == tokens
        assert all(p.maybe_sent for p in taken)
        assert survivor.takeovers == 4
        # what nobody held is leased as before, a page at a time, and is no take-over
        fresh, _ = await survivor.work_page(run, 0, 1)
        assert [p.request.phone_number for p in fresh] == [req(4).phone_number]
        assert await survivor.take_over(run) == []
        assert survivor.takeovers == 4


async def test_a_live_workers_numbers_are_not_taken_over(postgres: PgServer) -> None:
    url = postgres.fresh_url() + "&lease_ttl=0.3"
    async with opened(url) as holder, opened(url) as other:
        run = await holder.begin_run()
        await holder.plan([req(i) for i in range(3)], run, retry_failed=False)
        held, _ = await holder.work_page(run, 0, 2)
        assert len(held) == 2
        for _ in range(8):  # two lease TTLs: the holder's heartbeat keeps its numbers its own
            assert await other.take_over(run) == []
        assert other.takeovers == 0
