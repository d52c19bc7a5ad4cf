"""The SQL of the journal's lazy writes: attempts and outcomes, recorded without waiting.

A batch of them becomes a few multi-row statements, built on the caller's thread when the batch is
handed over; the writer thread only binds and runs them. The sqlite3 module gives up the GIL around
every statement it steps and must take it back afterwards, and whenever the writer thread holds it
the event loop's thread waits: one statement per row, or Python work between the statements, would
make the event loop wait for the journal many times per batch.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

__all__ = ["Statement", "lazy_statements", "run_statements"]

Statement = tuple[str, list[Any]]

_RANK = "(CASE {} WHEN 'pending' THEN 0 WHEN 'in_progress' THEN 1 ELSE 2 END)"
_ROWS_PER_STATEMENT = 250  # 2,500 bound values per statement, far under SQLite's limit


def lazy_statements(attempts: list[tuple[Any, ...]], outcomes: list[tuple[Any, ...]]) -> list[Statement]:
    """The statements that write buffered attempts (rows of the attempts table) and outcomes (tuples of
    status, attempts, id, arn, error code, error message, time, target, number, token), in the order
    they were recorded."""
    statements = [(_insert_attempts(len(chunk)), _flat(chunk)) for chunk in _chunks(attempts)]
    # Guarded by the token (an older attempt series never overwrites a newer one) and by the order of
    # statuses (pending < in_progress < claimed/failed): a late, lesser outcome of the same token,
    # from a concurrent path, never moves a number backwards. One UPDATE ... FROM applies at most
    # one row per number, so a number's later outcomes go in later rounds, in the order recorded.
    for batch in _rounds(outcomes):
        statements += [(_update_numbers(len(chunk)), _flat(chunk)) for chunk in _chunks(batch)]
    return statements


def run_statements(conn: sqlite3.Connection, statements: list[Statement]) -> None:
    for sql, values in statements:
        conn.execute(sql, values)


@functools.lru_cache(maxsize=8)
def _insert_attempts(rows: int) -> str:
    return ("INSERT INTO attempts (target, phone_number, client_token, at, result, error_code) VALUES "
            + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows))


@functools.lru_cache(maxsize=8)
def _update_numbers(rows: int) -> str:
    return ("WITH v (status, attempts, id, arn, code, message, at, target, number, token) AS (VALUES "
            + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows) + ") "
            "UPDATE numbers SET status=v.status, attempts=max(numbers.attempts, v.attempts), "
            "phone_number_id=coalesce(v.id, numbers.phone_number_id), "
            "phone_number_arn=coalesce(v.arn, numbers.phone_number_arn), error_code=v.code, "
            "error_message=v.message, updated_at=v.at FROM v WHERE numbers.target=v.target "
            "AND numbers.phone_number=v.number AND numbers.client_token=v.token "
            f"AND {_RANK.format('numbers.status')} <= {_RANK.format('v.status')}")


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
