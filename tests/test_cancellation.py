"""Cancellation of a Claimer's owner at every point of its life (in the style of httpcore's
``test_cancellations.py``): whatever await is cancelled, the journal ends closed, unlocked, consistent
and reopenable at once by the next Claimer. Opening the journal never blocks the event loop and
never hangs.
"""

from __future__ import annotations

import sqlite3
import threading
import types
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkclaim import Claimer, JournalError, Status
from bulkclaim.journal import SqliteJournal
from bulkclaim.journal import schema as journal_schema
from bulkclaim.sandbox import InventorySpec
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_claimer import FAST, FAST_BACKOFF, NUMBERS, claimer

pytestmark = pytest.mark.anyio

MANY = [s.phone_number for s in generate(InventorySpec(count=1000))]


@types.coroutine
def _cancelled_at(awaitable: Awaitable[Any], point: int, scope: anyio.CancelScope) -> Generator[Any, Any, bool]:
    """Run ``awaitable`` in the current task, cancelling ``scope`` when it suspends for the
    ``point``-th time (1-based). Returns whether it ever got that far."""
    steps = awaitable.__await__()
    suspensions = 0
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            yielded = steps.throw(thrown) if thrown is not None else steps.send(sent)
        except StopIteration:
            return suspensions >= point
        suspensions += 1
        if suspensions == point:
            scope.cancel()
        try:
            sent, thrown = (yield yielded), None
        except BaseException as exc:
            sent, thrown = None, exc


async def _run_cancelled_at(point: int, life: Callable[[], Awaitable[None]]) -> bool:
    with anyio.CancelScope() as scope:
        return await _cancelled_at(life(), point, scope)
    return True  # cancelled at that point


def _numbers_in(path: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT phone_number, status FROM numbers").fetchall())


async def _assert_reopens_and_finishes(env: SandboxEnv, journal: Path, numbers: list[str]) -> None:
    # The lock is free at once (an open that finds it taken is refused, never waits), the rows are
    # consistent, and the next Claimer finishes every number with each claimed exactly once.
    assert set(_numbers_in(journal)) <= set(numbers)
    assert set(_numbers_in(journal).values()) <= {"pending", "in_progress", "claimed"}
    async with claimer(env, journal) as c:
        outcomes = [await c.claim(number) for number in numbers]
    assert {o.status for o in outcomes} == {Status.CLAIMED}
    for number in numbers:
        assert env.sandbox.state.executions(number) == 1, number


async def test_cancelling_the_owner_at_every_suspension_leaves_the_journal_closed_and_reopenable(
        tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env:
        point = 0
        while True:
            point += 1
            assert point < 400, "the life of a Claimer never finished"
            journal = tmp_path / f"j{point}"
            numbers = MANY[2 * point:2 * point + 2]

            async def life(journal: Path = journal, numbers: list[str] = numbers) -> None:
                async with claimer(env, journal) as c:
                    await c.claim(numbers[0])
                    async for _ in c.claim_many(numbers[1:]):
                        pass

            reached = await _run_cancelled_at(point, life)
            await _assert_reopens_and_finishes(env, journal, numbers)
            if not reached:  # the whole life ran with fewer suspensions: every point was tried
                break
    assert point > 5


async def test_a_claimer_cancelled_while_closing_releases_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    async with sandbox_env(claim_delay=0.0) as env:
        with anyio.CancelScope() as scope:
            async with claimer(env, journal) as c:
                await c.claim(NUMBERS[0])
                scope.cancel()  # every await of the close below is now cancelled
        assert scope.cancelled_caught
        assert not [t for t in threading.enumerate() if t.name == f"bulkclaim-journal {journal}"]
        await _assert_reopens_and_finishes(env, journal, NUMBERS[:1])


async def test_opening_the_journal_runs_outside_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    opened_in: list[threading.Thread] = []
    real_open = SqliteJournal.open

    def spying_open(path: Any) -> SqliteJournal:
        opened_in.append(threading.current_thread())
        return real_open(path)

    monkeypatch.setattr(SqliteJournal, "open", staticmethod(spying_open))
    async with sandbox_env() as env, Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j",
                                             client_settings=env.settings, options=FAST, backoff=FAST_BACKOFF):
        pass
    assert opened_in and opened_in[0] is not threading.main_thread()


async def test_an_unexpected_error_in_a_migration_fails_the_open_promptly(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_schema, "_STEPS", {})  # a migration step that is missing: KeyError
    with anyio.fail_after(20), pytest.raises(JournalError, match="KeyError"):
        await anyio.to_thread.run_sync(SqliteJournal.open, tmp_path / "j", abandon_on_cancel=True)
    monkeypatch.undo()
    journal = await anyio.to_thread.run_sync(SqliteJournal.open, tmp_path / "j")  # the lock was released
    await journal.close()
