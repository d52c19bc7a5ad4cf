"""The claim workers' work list: every number of a run, in input order, across pages."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import anyio
import anyio.lowlevel
import pytest

from bulkclaim.journal import SqliteJournal
from bulkclaim.model import ClaimRequest, Target
from bulkclaim.worklist import WorkList

pytestmark = pytest.mark.anyio

TARGET = Target(instance_id="11111111-2222-3333-4444-555555555555")


def numbers(count: int) -> list[str]:
    return [f"+1206{2000000 + i:07d}" for i in range(count)]


async def planned_journal(path: Path, count: int) -> tuple[SqliteJournal, int]:
    journal = SqliteJournal.open(path)
    run = await journal.begin_run()
    requests = [ClaimRequest(number, TARGET, None, MappingProxyType({}), f"n.txt:{i}")
                for i, number in enumerate(numbers(count), start=1)]
    for start in range(0, count, 500):
        await journal.plan(requests[start:start + 500], run, retry_failed=False)
    return journal, run


async def test_workers_get_every_number_once_in_input_order_across_pages(tmp_path: Path) -> None:
    journal, run = await planned_journal(tmp_path / "j", 2300)  # three pages of at most 1,000
    taken: list[str] = []
    try:
        async with anyio.create_task_group() as tg:
            work = WorkList(journal, run, tg, low_water=8, stopping=lambda: False)

            async def worker() -> None:
                while (planned := await work.next()) is not None:
                    taken.append(planned.request.phone_number)
                    await anyio.lowlevel.checkpoint()  # let the other workers take their turn

            for _ in range(5):
                tg.start_soon(worker)
    finally:
        await journal.close()
    assert taken == numbers(2300)


async def test_a_stop_ends_the_work_list(tmp_path: Path) -> None:
    journal, run = await planned_journal(tmp_path / "j", 50)
    stop = False
    try:
        async with anyio.create_task_group() as tg:
            work = WorkList(journal, run, tg, low_water=8, stopping=lambda: stop)
            first = await work.next()
            stop = True
            assert first is not None and await work.next() is None
    finally:
        await journal.close()
