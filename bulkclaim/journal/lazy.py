"""The SQL of the journal's lazy writes (either backend): attempts and outcomes, recorded without waiting.

A batch of them becomes a few multi-row statements, built on the caller's thread when the batch is
handed over; the writer thread only binds and runs them. The sqlite3 module gives up the GIL around
every statement it steps and must take it back afterwards, and whenever the writer thread holds it
the event loop's thread waits: one statement per row, or Python work between the statements, would
make the event loop wait for the journal many times per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

from bulkclaim.journal.sql import Connection
from bulkclaim.model import JournalError

__all__ = ["LAZY_BATCH", "LAZY_MAX_AGE", "LazyWrites", "Statement", "lazy_statements", "run_statements"]

Statement = tuple[str, list[Any]]

LAZY_BATCH = 512  # records per lazy write: one transaction, a few multi-row statements
LAZY_MAX_AGE = 0.5  # seconds a lazy record may wait for company before it is written anyway


class LazyWrites:
    """Attempts and outcomes recorded without waiting, handed over (``hand_over``) as one batch of
    statements: once ``batch`` records wait, whenever :meth:`ship` is called (before any other job
    of the journal, so every later read sees them), and at the latest ``max_age`` seconds after the
    first of them was recorded, by a timer on the event loop, so a lone record is never left
    unwritten until another one arrives.

    Records are added and shipped on the event loop's thread only (the timer runs there too): the
    buffers need no lock, and the writer thread only ever sees finished statements.
    """

    def __init__(self, hand_over: Callable[[list[Statement]], None], *, batch: int = LAZY_BATCH,
                 max_age: float = LAZY_MAX_AGE, guarded: bool = False) -> None:
        self._hand_over = hand_over
        self.guarded = guarded  # outcome rows end with a lease epoch (see lazy_statements)
        self.batch, self.max_age = batch, max_age
        self._attempts: list[tuple[Any, ...]] = []
        self._outcomes: list[tuple[Any, ...]] = []
        self._timer: asyncio.TimerHandle | None = None

    def add_attempt(self, row: tuple[Any, ...]) -> None:
        self._attempts.append(row)
        self._after_add()

    def add_outcome(self, row: tuple[Any, ...]) -> None:
        self._outcomes.append(row)
        self._after_add()

    def _after_add(self) -> None:
        if len(self._attempts) + len(self._outcomes) >= self.batch:
            self.ship()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # recorded outside an event loop: the next job of the journal ships it
                return
            self._timer = loop.call_later(self.max_age, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        with contextlib.suppress(JournalError):  # a journal that broke or closed says so at its next call
            self.ship()

    def ship(self) -> None:
        """Hand everything recorded so far to the writer (nothing if nothing waits)."""
        self.cancel_timer()
        attempts, outcomes = self._attempts, self._outcomes
        self._attempts, self._outcomes = [], []
        if attempts or outcomes:
            # built here, so the writer only runs them
            self._hand_over(lazy_statements(attempts, outcomes, self.guarded))

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

_RANK = "(CASE {} WHEN 'pending' THEN 0 WHEN 'in_progress' THEN 1 ELSE 2 END)"
_ROWS_PER_STATEMENT = 250  # 2,500 bound values per statement, far under SQLite's limit


def lazy_statements(attempts: list[tuple[Any, ...]], outcomes: list[tuple[Any, ...]],
                    guarded: bool = False) -> list[Statement]:
    """The statements that write buffered attempts (rows of the attempts table) and outcomes (tuples of
    status, attempts, id, arn, error code, error message, time, target, number, token), in the order
    they were recorded. ``guarded`` (PostgreSQL's leases): each outcome ends with the lease epoch it
    was worked under (or None), and is not written if the number has been leased again since."""
    statements = [(_insert_attempts(len(chunk)), _flat(chunk)) for chunk in _chunks(attempts)]
    # Guarded by the token (an older attempt series never overwrites a newer one) and by the order of
    # statuses (pending < in_progress < claimed/failed): a late, lesser outcome of the same token,
    # from a concurrent path, never moves a number backwards. One UPDATE ... FROM applies at most
    # one row per number, so a number's later outcomes go in later rounds, in the order recorded.
    for batch in _rounds(outcomes):
        statements += [(_update_numbers(len(chunk), guarded), _flat(chunk)) for chunk in _chunks(batch)]
    return statements


def run_statements(conn: Connection, statements: list[Statement]) -> None:
    for sql, values in statements:
        conn.execute(sql, values)


@functools.lru_cache(maxsize=8)
def _insert_attempts(rows: int) -> str:
    return ("INSERT INTO attempts (target, phone_number, client_token, at, result, error_code) VALUES "
            + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows))


@functools.lru_cache(maxsize=8)
def _update_numbers(rows: int, guarded: bool = False) -> str:
    epoch = ", epoch" if guarded else ""
    return (f"WITH v (status, attempts, id, arn, code, message, at, target, number, token{epoch}) AS (VALUES "
            + ",".join([f"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?{', ?' if guarded else ''})"] * rows) + ") "
            "UPDATE numbers SET status=v.status, "
            "attempts=CASE WHEN v.attempts > numbers.attempts THEN v.attempts ELSE numbers.attempts END, "
            "phone_number_id=coalesce(v.id, numbers.phone_number_id), "
            "phone_number_arn=coalesce(v.arn, numbers.phone_number_arn), error_code=v.code, "
            "error_message=v.message, updated_at=v.at FROM v WHERE numbers.target=v.target "
            "AND numbers.phone_number=v.number AND numbers.client_token=v.token "
            f"AND {_RANK.format('numbers.status')} <= {_RANK.format('v.status')}"
            + (" AND (CAST(v.epoch AS bigint) IS NULL OR numbers.lease_epoch = CAST(v.epoch AS bigint))"
               if guarded else ""))


def _rounds(outcomes: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """Split outcomes so that no round holds two of the same number; the n-th outcome recorded for a
    number goes in the n-th round (usually there is only one)."""
    rounds: list[list[tuple[Any, ...]]] = []
    seen: dict[tuple[Any, ...], int] = {}
    for row in outcomes:
        key = row[7:9]  # (target, phone_number): the row it updates
        index = seen[key] = seen.get(key, -1) + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(row)
    return rounds


def _chunks(rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    return [rows[start:start + _ROWS_PER_STATEMENT] for start in range(0, len(rows), _ROWS_PER_STATEMENT)]


def _flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]
