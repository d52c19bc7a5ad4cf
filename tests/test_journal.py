"""The SQLite journal: durable tokens, planning across runs, outcomes, paging, locking and refusals."""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from bulkclaim.journal import SqliteJournal
from bulkclaim.journal.schema import _V1, SCHEMA_VERSION
from bulkclaim.model import (
    NOT_CLAIMED,
    ClaimRequest,
    JournalError,
    Outcome,
    Planned,
    PlanResult,
    Rejected,
    Status,
    Target,
    new_token,
)

pytestmark = pytest.mark.anyio

TARGET = Target(instance_id="11111111-2222-3333-4444-555555555555")
TDG = Target(target_arn="arn:aws:connect:us-east-1:123456789012:traffic-distribution-group/"
                        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def req(i: int, *, target: Target = TARGET, description: str | None = None,
        tags: dict[str, str] | None = None, source: str | None = None) -> ClaimRequest:
    """A request for the valid US number +12062000000 + i."""
    return ClaimRequest(f"+1206200{i:04d}", target, description, MappingProxyType(dict(tags or {})),
                        source if source is not None else f"numbers.txt:{i + 1}")


@asynccontextmanager
async def journal_at(path: Path) -> AsyncIterator[SqliteJournal]:
    journal = SqliteJournal.open(path)
    try:
        yield journal
    finally:
        await journal.close()


@contextmanager
def peek(path: Path) -> Iterator[sqlite3.Connection]:
    """A separate, plain sqlite3 connection to the journal file."""
    with closing(sqlite3.connect(path)) as conn:
        yield conn


def numbers_table(path: Path) -> dict[str, dict[str, Any]]:
    with peek(path) as conn:
        conn.row_factory = sqlite3.Row
        return {row["phone_number"]: dict(row) for row in conn.execute("SELECT * FROM numbers")}


async def plan(journal: SqliteJournal, requests: list[ClaimRequest], run: int, *, retry_failed: bool = False,
               dedupe: bool = True) -> PlanResult:
    return await journal.plan(requests, run, retry_failed=retry_failed, dedupe=dedupe)


def outcome(request: ClaimRequest, token: str, status: Status, **fields: Any) -> Outcome:
    return Outcome(request.phone_number, request.source, request.target.key, status, client_token=token, **fields)


def tokens(work: list[Planned]) -> list[str]:
    return [p.client_token for p in work]


def numbers_of(work: list[Planned]) -> list[str]:
    return [p.request.phone_number for p in work]


# -- the file ----------------------------------------------------------------------------------------------


async def test_new_journal_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert not Path(f"{path}.lock").exists()  # noqa: ASYNC240 - no lock file: the journal itself is locked
        await journal.begin_run()
        assert os.stat(f"{path}-wal").st_mode & 0o777 == 0o600
        with peek(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("PRAGMA application_id").fetchone()[0] != 0
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_new_token_is_a_lowercase_uuid() -> None:
    token = new_token()
    assert UUID4.fullmatch(token)
    assert str(uuid.UUID(token)) == token
    assert new_token() != token


async def test_begin_run_ids_increase_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        first, second = await journal.begin_run(), await journal.begin_run()
    async with journal_at(path) as journal:
        third = await journal.begin_run()
    assert first < second < third
    with peek(path) as conn:
        assert [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY id")] == [first, second, third]
        assert {row[0] for row in conn.execute("SELECT pid FROM runs")} == {os.getpid()}


# -- plan -------------------------------------------------------------------------------------------------


async def test_plan_reserves_fresh_tokens_for_new_numbers(tmp_path: Path) -> None:
    requests = [req(0), req(1, description="Main", tags={"team": "sales"}), req(2, target=TDG)]
    async with journal_at(tmp_path / "journal.db") as journal:
        run = await journal.begin_run()
        result = await plan(journal, requests, run)
    assert result.done == [] and result.duplicates == [] and result.changed == []
    assert [p.request for p in result.work] == requests
    assert all(UUID4.fullmatch(t) for t in tokens(result.work))
    assert len(set(tokens(result.work))) == 3
    assert all(p.status is Status.PENDING and p.attempts == 0 and p.maybe_sent is False for p in result.work)
    assert all(p.phone_number_id is None and p.phone_number_arn is None for p in result.work)


async def test_tokens_are_durable_when_plan_returns(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    requests = [req(0), req(1, description="Main", tags={"b": "2", "a": "1"})]
    async with journal_at(path) as journal:
        run = await journal.begin_run()
        result = await plan(journal, requests, run)
        table = numbers_table(path)  # read by another connection while the journal is still open
        assert {n: row["client_token"] for n, row in table.items()} == dict(
            zip(numbers_of(result.work), tokens(result.work), strict=True))
        row = table[req(1).phone_number]
        assert (row["target"], row["status"], row["description"], row["source"]) == (
            TARGET.key, "pending", "Main", "numbers.txt:2")
        assert row["tags"] == '{"a": "1", "b": "2"}'
        assert row["params_hash"] == requests[1].params_hash()
        assert (row["seen_run"], row["maybe_sent"], row["attempts"]) == (run, 0, 0)


async def test_replanning_after_reopen_returns_the_same_tokens_marked_maybe_sent(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    requests = [req(i) for i in range(5)]
    async with journal_at(path) as journal:
        first = await plan(journal, requests, await journal.begin_run())
    async with journal_at(path) as journal:
        again = [req(i, source=f"other.csv:{i + 2}") for i in range(5)]
        second = await plan(journal, again, await journal.begin_run())
    assert tokens(second.work) == tokens(first.work)
    assert [p.request for p in second.work] == again
    assert all(p.maybe_sent is True and p.status is Status.PENDING for p in second.work)
    assert second.done == [] and second.duplicates == [] and second.changed == []
    table = numbers_table(path)
    assert {row["maybe_sent"] for row in table.values()} == {1}
    assert table[req(0).phone_number]["source"] == "other.csv:2"


async def test_same_number_for_two_targets_is_two_entries(tmp_path: Path) -> None:
    async with journal_at(tmp_path / "journal.db") as journal:
        result = await plan(journal, [req(0), req(0, target=TDG)], await journal.begin_run())
    assert len(result.work) == 2 and result.duplicates == []
    assert len(set(tokens(result.work))) == 2


async def test_a_number_twice_in_one_run_is_a_duplicate(tmp_path: Path) -> None:
    async with journal_at(tmp_path / "journal.db") as journal:
        run = await journal.begin_run()
        first = await plan(journal, [req(0), req(1), req(0, source="numbers.txt:9")], run)
        assert numbers_of(first.work) == [req(0).phone_number, req(1).phone_number]
        assert first.duplicates == [req(0, source="numbers.txt:9")]
        second = await plan(journal, [req(1, source="more.txt:1"), req(2)], run)  # a later batch of the same run
        assert numbers_of(second.work) == [req(2).phone_number]
        assert second.duplicates == [req(1, source="more.txt:1")]
        page, _ = await journal.work_page(run, 0, 100)
        assert numbers_of(page) == [req(i).phone_number for i in range(3)]
        assert [p.request.source for p in page] == ["numbers.txt:1", "numbers.txt:2", "numbers.txt:3"]


async def test_without_dedupe_a_number_twice_in_one_run_is_looked_up_again(tmp_path: Path) -> None:
    async with journal_at(tmp_path / "journal.db") as journal:
        run = await journal.begin_run()
        first = await plan(journal, [req(0)], run, dedupe=False)
        second = await plan(journal, [req(0)], run, dedupe=False)
    assert second.duplicates == [] and second.changed == []
    assert tokens(second.work) == tokens(first.work)
    assert second.work[0].status is Status.PENDING


async def test_pending_number_with_changed_parameters_is_reported_not_planned(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        first = await plan(journal, [req(0, description="old"), req(1, tags={"team": "a"}),
                                     req(2, tags={"a": "1", "b": "2"})], await journal.begin_run())
    async with journal_at(path) as journal:
        run = await journal.begin_run()
        changed = [req(0, description="new"), req(1, tags={"team": "b"})]
        same_tags_other_order = req(2, tags={"b": "2", "a": "1"})
        second = await plan(journal, [*changed, same_tags_other_order, req(3)], run)
        assert second.changed == changed
        assert numbers_of(second.work) == [req(2).phone_number, req(3).phone_number]
        assert second.work[0].client_token == first.work[2].client_token
        page, _ = await journal.work_page(run, 0, 100)
        assert numbers_of(page) == [req(2).phone_number, req(3).phone_number]
    table = numbers_table(path)
    assert table[req(0).phone_number]["description"] == "old"  # untouched
    assert table[req(0).phone_number]["client_token"] == first.work[0].client_token


# -- outcomes ------------------------------------------------------------------------------------------


async def test_claimed_number_is_done_in_a_later_run(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    request = req(0)
    async with journal_at(path) as journal:
        (planned,) = (await plan(journal, [request], await journal.begin_run())).work
        journal.record_outcome(outcome(request, planned.client_token, Status.CLAIMED, phone_number_id="pn-0",
                                       phone_number_arn="arn:aws:connect:us-east-1:1:phone-number/pn-0",
                                       attempts=2, updated_at=1234.5))
        await journal.flush()
        assert numbers_table(path)[request.phone_number]["status"] == "claimed"
    async with journal_at(path) as journal:
        again = req(0, source="again.txt:7")
        result = await plan(journal, [again], await journal.begin_run(), retry_failed=True)
    assert result.work == [] and result.duplicates == [] and result.changed == []
    assert result.done == [Outcome(request.phone_number, "again.txt:7", TARGET.key, Status.CLAIMED, "pn-0",
                                   "arn:aws:connect:us-east-1:1:phone-number/pn-0", planned.client_token, 2,
                                   None, None, 1234.5, run=2)]  # run 2 named it: the run that last acted on it


async def test_outcome_with_another_token_does_not_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    request = req(0)
    async with journal_at(path) as journal:
        (planned,) = (await plan(journal, [request], await journal.begin_run())).work
        journal.record_outcome(outcome(request, new_token(), Status.CLAIMED, phone_number_id="pn-x", attempts=1))
        # the right token for the same number at another target matches no row either
        journal.record_outcome(outcome(req(0, target=TDG), planned.client_token, Status.CLAIMED, attempts=1))
        await journal.flush()
        row = numbers_table(path)[request.phone_number]
        assert (row["status"], row["phone_number_id"], row["client_token"]) == ("pending", None,
                                                                                  planned.client_token)
    async with journal_at(path) as journal:
        result = await plan(journal, [request], await journal.begin_run())
    assert tokens(result.work) == [planned.client_token]
    assert result.work[0].status is Status.PENDING and result.work[0].maybe_sent is True


async def test_in_progress_number_is_work_to_verify(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    request = req(0)
    async with journal_at(path) as journal:
        (planned,) = (await plan(journal, [request], await journal.begin_run())).work
        journal.record_outcome(outcome(request, planned.client_token, Status.IN_PROGRESS, phone_number_id="pn-0",
                                       phone_number_arn="arn:pn-0", attempts=1))
        await journal.flush()
    async with journal_at(path) as journal:
        run = await journal.begin_run()
        result = await plan(journal, [request], run)
        assert await journal.targets_to_reconcile(run) == []
    (work,) = result.work
    assert (work.client_token, work.status, work.attempts, work.maybe_sent) == (
        planned.client_token, Status.IN_PROGRESS, 1, True)
    assert (work.phone_number_id, work.phone_number_arn) == ("pn-0", "arn:pn-0")


async def test_failed_number_is_done_unless_retry_failed(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    request = req(0)
    async with journal_at(path) as journal:
        (planned,) = (await plan(journal, [request], await journal.begin_run())).work
        journal.record_outcome(outcome(request, planned.client_token, Status.FAILED, attempts=3,
                                       error_code="InvalidParameterException", error_message="not available",
                                       updated_at=99.0))
        await journal.flush()
    async with journal_at(path) as journal:
        kept = await plan(journal, [request], await journal.begin_run(), retry_failed=False)
        assert kept.work == []
        assert kept.done == [Outcome(request.phone_number, request.source, TARGET.key, Status.FAILED, None, None,
                                     planned.client_token, 3, "InvalidParameterException", "not available", 99.0,
                                     run=2)]
        run = await journal.begin_run()
        retried = await plan(journal, [request], run, retry_failed=True)
        assert retried.done == []
        (work,) = retried.work
        assert work.client_token != planned.client_token and UUID4.fullmatch(work.client_token)
        assert (work.status, work.attempts, work.maybe_sent) == (Status.PENDING, 0, False)
        row = numbers_table(path)[request.phone_number]
        assert (row["client_token"], row["status"], row["error_code"]) == (work.client_token, "pending", None)
        assert await journal.targets_to_reconcile(run) == []
        # the old token's late outcome no longer lands
        journal.record_outcome(outcome(request, planned.client_token, Status.FAILED, attempts=4))
        await journal.flush()
        assert numbers_table(path)[request.phone_number]["status"] == "pending"


async def test_record_attempt_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        (planned,) = (await plan(journal, [req(0)], await journal.begin_run())).work
        journal.record_attempt(planned, "throttled", "ThrottlingException")
        journal.record_attempt(planned, "accepted", None)
        await journal.flush()
        with peek(path) as conn:
            got = conn.execute("SELECT target, phone_number, client_token, result, error_code FROM attempts "
                               "ORDER BY id").fetchall()
    assert got == [(TARGET.key, req(0).phone_number, planned.client_token, "throttled", "ThrottlingException"),
                   (TARGET.key, req(0).phone_number, planned.client_token, "accepted", None)]


async def test_lazy_writes_of_many_numbers_keep_each_numbers_order(tmp_path: Path) -> None:
    """Hundreds of outcomes go out in multi-row statements; a number recorded twice in one batch
    ends with its later outcome (and keeps the id of the earlier one when the later has none)."""
    path = tmp_path / "journal.db"
    requests = [req(i) for i in range(250)]
    async with journal_at(path) as journal:
        work = (await plan(journal, requests, await journal.begin_run())).work
        for request, p in zip(requests, work, strict=True):
            journal.record_attempt(p, "accepted", None)
            journal.record_outcome(outcome(request, p.client_token, Status.IN_PROGRESS,
                                           phone_number_id=f"pn-{request.phone_number}", attempts=1))
        for request, p in zip(requests[::2], work[::2], strict=True):
            journal.record_outcome(outcome(request, p.client_token, Status.CLAIMED, attempts=1))
        await journal.flush()
        with peek(path) as conn:
            (attempts,) = conn.execute("SELECT count(*) FROM attempts WHERE result='accepted'").fetchone()
    table = numbers_table(path)
    assert attempts == 250
    for i, request in enumerate(requests):
        row = table[request.phone_number]
        assert (row["status"], row["phone_number_id"]) == ("claimed" if i % 2 == 0 else "in_progress",
                                                           f"pn-{request.phone_number}")


# -- work_page and targets_to_reconcile ----------------------------------------------------------------------


async def test_work_page_returns_pending_and_in_progress_in_input_order(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    requests = [req(i, description=f"d{i}" if i % 2 else None, tags={"i": str(i)} if i == 4 else None)
                for i in range(8)]
    async with journal_at(path) as journal:
        other_run = await journal.begin_run()
        await plan(journal, [req(50)], other_run)
        run = await journal.begin_run()
        planned = {p.request.phone_number: p for p in (await plan(journal, requests[:5], run)).work}
        planned.update({p.request.phone_number: p for p in (await plan(journal, requests[5:], run)).work})

        def finish(i: int, status: Status) -> None:
            p = planned[requests[i].phone_number]
            journal.record_outcome(outcome(requests[i], p.client_token, status, phone_number_id=f"pn-{i}"))

        finish(1, Status.CLAIMED)
        finish(3, Status.IN_PROGRESS)
        finish(5, Status.FAILED)
        await journal.flush()
        pages: list[list[Planned]] = []
        cursor = 0
        while True:
            page, next_cursor = await journal.work_page(run, cursor, 2)
            if not page:
                assert next_cursor == cursor
                break
            assert next_cursor > cursor
            pages.append(page)
            cursor = next_cursor
        empty, _ = await journal.work_page(run + 1, 0, 10)
    assert [numbers_of(p) for p in pages] == [[requests[0].phone_number, requests[2].phone_number],
                                              [requests[3].phone_number, requests[4].phone_number],
                                              [requests[6].phone_number, requests[7].phone_number]]
    flat = [p for page in pages for p in page]
    assert [p.request for p in flat] == [requests[i] for i in (0, 2, 3, 4, 6, 7)]
    assert dict(flat[3].request.tags) == {"i": "4"}
    assert [p.status for p in flat] == [Status.PENDING, Status.PENDING, Status.IN_PROGRESS, Status.PENDING,
                                        Status.PENDING, Status.PENDING]
    assert flat[2].phone_number_id == "pn-3"
    assert [p.client_token for p in flat] == [planned[p.request.phone_number].client_token for p in flat]
    assert all(p.maybe_sent is False for p in flat)
    assert empty == []


async def test_work_page_follows_the_new_runs_input_order(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        await plan(journal, [req(0), req(1), req(2)], await journal.begin_run())
    async with journal_at(path) as journal:
        run = await journal.begin_run()
        await plan(journal, [req(2), req(3), req(0)], run)
        page, _ = await journal.work_page(run, 0, 10)
    assert numbers_of(page) == [req(2).phone_number, req(3).phone_number, req(0).phone_number]
    assert [p.maybe_sent for p in page] == [True, False, True]


async def test_targets_to_reconcile_only_with_pending_numbers_from_an_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        run = await journal.begin_run()
        await plan(journal, [req(0), req(1, target=TDG)], run)
        assert await journal.targets_to_reconcile(run) == []  # nothing could have been sent before this run
    async with journal_at(path) as journal:
        fresh = await journal.begin_run()
        await plan(journal, [req(7)], fresh)
        assert await journal.targets_to_reconcile(fresh) == []  # earlier pending numbers not in this run
        run = await journal.begin_run()
        await plan(journal, [req(0), req(1, target=TDG), req(2)], run)
        assert sorted(await journal.targets_to_reconcile(run), key=lambda t: t.key) == sorted(
            [TARGET, TDG], key=lambda t: t.key)
        only_one = await journal.begin_run()
        await plan(journal, [req(1, target=TDG)], only_one)
        assert await journal.targets_to_reconcile(only_one) == [TDG]


# -- rejected rows ---------------------------------------------------------------------------------------


async def test_record_rejected_stores_rows(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    rows = [Rejected("not a number", "numbers.txt:3", "phone number has characters", TARGET),
            Rejected("+1206", "numbers.txt:4", "not a valid number", None)]
    async with journal_at(path) as journal:
        run = await journal.begin_run()
        await journal.record_rejected(rows, run)
        await journal.record_rejected([], run)
        with peek(path) as conn:
            got = conn.execute("SELECT run, source, raw, reason, target FROM rejected ORDER BY id").fetchall()
    assert got == [(run, "numbers.txt:3", "not a number", "phone number has characters", TARGET.key),
                   (run, "numbers.txt:4", "+1206", "not a valid number", None)]


# -- opening, locking and refusing ---------------------------------------------------------------------------


async def test_second_open_while_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first = SqliteJournal.open(path)
    try:
        run = await first.begin_run()
        with pytest.raises(JournalError, match="in use"):
            SqliteJournal.open(path)
        assert await first.begin_run() == run + 1  # the refused open did not disturb the first
    finally:
        await first.close()
    async with journal_at(path) as journal:
        assert await journal.begin_run() == run + 2


async def test_closed_journal_refuses_work(tmp_path: Path) -> None:
    journal = SqliteJournal.open(tmp_path / "journal.db")
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await journal.begin_run()
    with pytest.raises(JournalError, match="closed"):
        journal.record_outcome(Outcome("+12062000000", "x:1", TARGET.key, Status.CLAIMED))
    await journal.close()  # closing twice is harmless


async def test_open_in_a_missing_directory_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open the journal"):
        SqliteJournal.open(tmp_path / "no" / "such" / "journal.db")


async def test_empty_existing_file_becomes_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.touch()
    async with journal_at(path) as journal:
        assert await journal.begin_run() == 1


def _garbage() -> bytes:
    return random.Random(1234).randbytes(8192)


async def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(_garbage())
    with pytest.raises(JournalError, match="corrupt"):
        SqliteJournal.open(path)
    assert path.read_bytes() == _garbage()
    with pytest.raises(JournalError, match="corrupt"):  # and the lock was released
        SqliteJournal.open(path)


async def test_journal_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        await journal.begin_run()
    with peek(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(JournalError, match="newer") as caught:
        SqliteJournal.open(path)
    assert "schema 99" in str(caught.value)
    with peek(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def _foreign_database(path: Path) -> None:
    with peek(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('someone')")
        conn.commit()


async def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _foreign_database(path)
    with pytest.raises(JournalError, match="not a bulkclaim journal"):
        SqliteJournal.open(path)
    with peek(path) as conn:
        assert conn.execute("SELECT name FROM customers").fetchall() == [("someone",)]
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='numbers'").fetchone()[0] == 0


async def test_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with peek(path) as conn:
        conn.execute("PRAGMA application_id=12345")
        conn.execute("PRAGMA user_version=1")
    with pytest.raises(JournalError, match="not a bulkclaim journal"):
        SqliteJournal.open(path)


async def test_foreign_sqlite_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _foreign_database(path)
    before = path.read_bytes()
    with pytest.raises(JournalError, match="not a bulkclaim journal"):
        SqliteJournal.open(path)
    assert path.read_bytes() == before
    with peek(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def _open_descriptors_of(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_refused_open_does_not_keep_the_file_open(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with journal_at(path) as journal:
        await journal.begin_run()
    with peek(path) as conn:
        conn.execute("PRAGMA user_version=99")
    gc.disable()  # the leak is only cleared by the cycle collector: keep the test deterministic
    try:
        with pytest.raises(JournalError, match="newer"):
            SqliteJournal.open(path)
        assert _open_descriptors_of(path) == []
    finally:
        gc.enable()
        gc.collect()


async def test_a_failing_job_fails_alone_and_the_writer_lives_on(tmp_path: Path) -> None:
    journal = SqliteJournal.open(tmp_path / "j.db")
    try:
        run = await journal.begin_run()

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO runs (started_at) VALUES (1)")  # rolled back with its savepoint
            raise RuntimeError("a bug in one job")

        with pytest.raises(RuntimeError, match="a bug in one job"):
            await journal._submit(broken)
        planned = await journal.plan([req(0)], run, retry_failed=False)
        assert len(planned.work) == 1
    finally:
        await journal.close()
    with sqlite3.connect(tmp_path / "j.db") as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


async def test_outcomes_of_one_token_never_move_backwards(tmp_path: Path) -> None:
    journal = SqliteJournal.open(tmp_path / "j.db")
    try:
        run = await journal.begin_run()
        (planned,) = (await journal.plan([req(0)], run, retry_failed=False)).work
        base = Outcome(req(0).phone_number, "s", TARGET.key, Status.CLAIMED, "id-1", "arn-1", planned.client_token, 1)
        journal.record_outcome(base)
        journal.record_outcome(dataclasses.replace(base, status=Status.PENDING, phone_number_id=None, attempts=3))
        await journal.flush()
    finally:
        await journal.close()
    with sqlite3.connect(tmp_path / "j.db") as conn:
        assert conn.execute("SELECT status, phone_number_id FROM numbers").fetchone() == ("claimed", "id-1")


async def test_a_one_off_lookup_does_not_take_a_number_out_of_its_run(tmp_path: Path) -> None:
    journal = SqliteJournal.open(tmp_path / "j.db")
    try:
        first = await journal.begin_run()
        await journal.plan([req(0), req(1)], first, retry_failed=False)
        second = await journal.begin_run()
        await journal.plan([req(1)], second, retry_failed=False, dedupe=False)
        page, _ = await journal.work_page(first, 0, 10)
        assert [p.request.phone_number for p in page] == ["+12062000000", "+12062000001"]
    finally:
        await journal.close()


async def test_a_version_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.journal"
    with peek(path) as conn:
        conn.executescript(_V1)
        conn.execute("PRAGMA user_version=1")
        conn.execute(f"PRAGMA application_id={0x62636C6D}")
        conn.execute("INSERT INTO runs (started_at, pid) VALUES (1.0, 1)")
        conn.execute("INSERT INTO numbers (target, phone_number, params_hash, client_token, status, seen_run, ord, "
                     "created_at, updated_at) VALUES ('instance/i', '+12062000000', 'h', 't', 'claimed', 1, 1, 1, 1)")
        conn.commit()
    journal = SqliteJournal.open(path)
    await journal.close()
    with peek(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert conn.execute("SELECT contact_flow, flow_status, flow_attempts FROM numbers").fetchall() == [
            (None, None, 0)], "v4: an existing number has no flow"
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1, "the old rows are kept"
        assert "move_from" in {row[1] for row in conn.execute("PRAGMA table_info(numbers)")}, "v5: moves"
        assert conn.execute("SELECT ended_at FROM runs").fetchone()[0] is None, "not known to have ended cleanly"
        assert conn.execute("SELECT count(*) FROM releases").fetchone()[0] == 0


async def test_after_a_failed_write_recording_fails_at_once(tmp_path: Path) -> None:
    """A full disk mid-run: the next attempt or outcome recorded raises, so claims stop instead of
    going on unrecorded (a run kept claiming at a throttled pace for minutes before)."""
    journal = SqliteJournal.open(tmp_path / "j.db")
    try:
        run = await journal.begin_run()
        (planned,) = (await journal.plan([req(0)], run, retry_failed=False)).work
        with pytest.raises(JournalError):  # a database error, as a full disk gives: the journal is broken
            await journal._submit(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"))
        with pytest.raises(JournalError):
            journal.record_attempt(planned, "accepted", None)
        with pytest.raises(JournalError):
            journal.record_outcome(outcome(req(0), planned.client_token, Status.IN_PROGRESS))
    finally:
        await journal.close()


async def test_numbers_possibly_sent_by_other_runs_and_gone_from_the_input_join_the_run(tmp_path: Path) -> None:
    """Issue 12 case 2: join_unsettled hands a run the numbers of its targets that an earlier run may
    have sent and left unsettled (in_progress; pending after an attempt; any pending number of a run
    whose process died), and only those. They cannot be taken over by a reused plan any more, and a
    number found not claimed (NotClaimed) is claimed afresh when an input names it again."""
    path = tmp_path / "j.db"
    async with journal_at(path) as journal:  # a run that ended cleanly
        clean = await journal.begin_run()
        work = {p.request.phone_number: p for p in (await plan(journal, [req(i) for i in range(4)], clean)).work}
        journal.record_outcome(outcome(req(1), work[req(1).phone_number].client_token, Status.PENDING, attempts=1))
        journal.record_outcome(outcome(req(2), work[req(2).phone_number].client_token, Status.IN_PROGRESS,
                                       attempts=1, phone_number_id="id-2"))
        journal.record_outcome(outcome(req(3), work[req(3).phone_number].client_token, Status.CLAIMED,
                                       attempts=1, phone_number_id="id-3"))
    async with journal_at(path) as journal:  # a run whose process dies
        died = await journal.begin_run()
        await plan(journal, [req(4), req(6, target=TDG)], died)
    with peek(path) as conn:
        conn.execute("UPDATE runs SET ended_at=NULL WHERE id=?", (died,))
        conn.commit()
    async with journal_at(path) as journal:
        run = await journal.begin_run()
        await plan(journal, [req(5)], run)
        await journal.record_plan(run, "inputs", 0)
        joined = await journal.join_unsettled(run)
        assert [(number, status) for _, number, status in joined] == [
            (req(1).phone_number, "pending"), (req(2).phone_number, "in_progress"), (req(4).phone_number, "pending")]
        assert {target for target, _, _ in joined} == {TARGET.key}
        assert await journal.join_unsettled(run) == [], "joined once"
        assert await journal.reuse_plan("inputs", run) is None, "the plan no longer describes the run's numbers"
        page, _ = await journal.work_page(run, 0, 10)
        assert [(p.request.phone_number, p.maybe_sent) for p in page] == [
            (req(5).phone_number, False), (req(1).phone_number, True), (req(2).phone_number, True),
            (req(4).phone_number, True)]
        token = page[1].client_token
        journal.record_outcome(outcome(req(1), token, Status.FAILED, attempts=1, error_code=NOT_CLAIMED))
        again = await journal.begin_run()
        result = await plan(journal, [req(1)], again)
        assert [(p.status, p.maybe_sent) for p in result.work] == [(Status.PENDING, False)]
        assert result.work[0].client_token != token, "claimed afresh, with a new token"
    assert numbers_table(path)[req(0).phone_number]["seen_run"] == clean, "never sent: left where it was"
