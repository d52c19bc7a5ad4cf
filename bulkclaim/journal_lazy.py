"""The SQL of the journal's lazy writes: attempts and outcomes, recorded without waiting.

They run in the journal's writer thread, a batch at a time, with a few multi-row statements rather
than one statement per row: the sqlite3 module gives up and takes back the GIL around every
statement it steps, and each time it does, the event loop's thread has to make way for it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = ["write_lazy"]

_RANK = "(CASE {} WHEN 'pending' THEN 0 WHEN 'in_progress' THEN 1 ELSE 2 END)"
_ROWS_PER_STATEMENT = 100  # 1,000 bound values per statement, far under SQLite's limit


def write_lazy(conn: sqlite3.Connection, attempts: list[tuple[Any, ...]], outcomes: list[tuple[Any, ...]]) -> None:
    """Write buffered attempts (rows of the attempts table) and outcomes (tuples of status, attempts,
    id, arn, error code, error message, time, target, number, token), in the order recorded."""
    for chunk in _chunks(attempts):
        conn.execute("INSERT INTO attempts (target, phone_number, client_token, at, result, error_code) VALUES "
                     + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)), [value for row in chunk for value in row])
    # Guarded by the token (an older attempt series never overwrites a newer one) and by the order of
    # statuses (pending < in_progress < claimed/failed): a late, lesser outcome of the same token,
    # from a concurrent path, never moves a number backwards. One UPDATE ... FROM applies at most
    # one row per number, so a number's later outcomes go in later rounds, in the order recorded.
    for batch in _rounds(outcomes):
        for chunk in _chunks(batch):
            conn.execute(
                "WITH v (status, attempts, id, arn, code, message, at, target, number, token) AS (VALUES "
                + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)) + ") "
                "UPDATE numbers SET status=v.status, attempts=max(numbers.attempts, v.attempts), "
                "phone_number_id=coalesce(v.id, numbers.phone_number_id), "
                "phone_number_arn=coalesce(v.arn, numbers.phone_number_arn), error_code=v.code, "
                "error_message=v.message, updated_at=v.at FROM v WHERE numbers.target=v.target "
                "AND numbers.phone_number=v.number AND numbers.client_token=v.token "
                f"AND {_RANK.format('numbers.status')} <= {_RANK.format('v.status')}",
                [value for row in chunk for value in row])


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
