"""What planning does inside the journal: the records it hands out and the SQL of one batch.

Planning runs in the journal's writer thread, inside a group-committed transaction: a batch of
requests is looked up with one query per target, new numbers get their token, numbers met in an
earlier run join this one, and the batch's rows are written with ``executemany``.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from bulkclaim.model import NOT_CLAIMED, ClaimRequest, Outcome, Status, Target

__all__ = ["PlanResult", "PlanReuse", "Planned", "new_token", "plan_batch", "planned_from_row"]


def new_token() -> str:
    """A ClientToken: a lowercase UUID, as the service requires."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Planned:
    """A number to work on in this run, with its durable token."""

    request: ClaimRequest
    client_token: str
    status: Status  # PENDING (to send) or IN_PROGRESS (to verify)
    attempts: int
    maybe_sent: bool  # an earlier run may have sent this token: its outcome is unknown
    phone_number_id: str | None = None
    phone_number_arn: str | None = None


@dataclass
class PlanResult:
    """What planning one batch found: work to do, numbers already done, duplicates, changed rows."""

    work: list[Planned]
    done: list[Outcome]
    duplicates: list[ClaimRequest]
    changed: list[ClaimRequest]


@dataclass(frozen=True)
class PlanReuse:
    """An earlier run's plan taken over by this run (same inputs): its counts."""

    members_run: int  # the earlier run whose numbers (and invalid rows) are this run's
    statuses: dict[str, int]
    invalid: int
    duplicates: int


class _Existing(NamedTuple):
    params_hash: str
    client_token: str
    status: Status
    attempts: int
    seen_run: int | None
    phone_number_id: str | None
    phone_number_arn: str | None
    error_code: str | None
    error_message: str | None
    updated_at: float


def _lookup(conn: sqlite3.Connection, requests: Sequence[ClaimRequest]) -> dict[tuple[str, str], _Existing]:
    """The journal rows of a batch of requests, with one query per target (not one per number)."""
    by_target: dict[str, list[str]] = {}
    for request in requests:
        by_target.setdefault(request.target.key, []).append(request.phone_number)
    found: dict[tuple[str, str], _Existing] = {}
    for target, numbers in by_target.items():
        for start in range(0, len(numbers), 900):  # stay well under SQLite's bound-parameter limit
            chunk = numbers[start:start + 900]
            for number, *fields in conn.execute(
                    "SELECT phone_number, params_hash, client_token, status, attempts, seen_run, phone_number_id, "
                    "phone_number_arn, error_code, error_message, updated_at FROM numbers "
                    f"WHERE target=? AND phone_number IN ({','.join('?' * len(chunk))})", (target, *chunk)):
                fields[2] = Status(fields[2])
                found[(target, number)] = _Existing(*fields)
    return found


def plan_batch(conn: sqlite3.Connection, requests: Sequence[ClaimRequest], run: int, retry_failed: bool,
          dedupe: bool) -> PlanResult:
    result = PlanResult([], [], [], [])
    now = time.time()
    (next_ord,) = conn.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM numbers WHERE seen_run=?", (run,)).fetchone()
    existing = _lookup(conn, requests)
    in_batch: set[tuple[str, str]] = set()
    inserts: list[tuple[Any, ...]] = []
    touches: list[tuple[Any, ...]] = []
    for request in requests:
        target, number = key = request.key
        row = existing.get(key)
        if dedupe and (key in in_batch or (row is not None and row.seen_run == run)):
            result.duplicates.append(request)
            continue
        if row is None and not request.checked:  # never reserve a token for an unvalidated number
            raise ValueError(f"{request.source}: {request.phone_number} was not checked before planning")
        in_batch.add(key)
        if row is None or (row.status == Status.FAILED and (retry_failed or row.error_code == NOT_CLAIMED)):
            token = new_token()
            inserts.append((target, number, request.params_hash(), request.description, _tags_text(request),
                            request.source, token, run, next_ord, now, now))
            result.work.append(Planned(request, token, Status.PENDING, 0, maybe_sent=False))
        elif row.status == Status.PENDING and row.params_hash != request.params_hash():
            result.changed.append(request)
            continue
        else:
            if dedupe:  # this run's input names it: it belongs to this run (a pending token may be out)
                touches.append((run, next_ord, request.source, row.status == Status.PENDING, target, number))
            if row.status in (Status.PENDING, Status.IN_PROGRESS):
                result.work.append(Planned(request, row.client_token, row.status, row.attempts, maybe_sent=True,
                                           phone_number_id=row.phone_number_id,
                                           phone_number_arn=row.phone_number_arn))
            else:
                result.done.append(Outcome(number, request.source, target, row.status, row.phone_number_id,
                                           row.phone_number_arn, row.client_token, row.attempts, row.error_code,
                                           row.error_message, row.updated_at, run if dedupe else row.seen_run))
        next_ord += 1
    conn.executemany(
        "INSERT OR REPLACE INTO numbers (target, phone_number, params_hash, description, tags, source, client_token, "
        "status, attempts, maybe_sent, seen_run, ord, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, ?, ?, ?)", inserts)
    conn.executemany("UPDATE numbers SET seen_run=?, ord=?, source=?, maybe_sent=maybe_sent OR ? "
                     "WHERE target=? AND phone_number=?", touches)
    return result


def _tags_text(request: ClaimRequest) -> str | None:
    return json.dumps(dict(request.tags), sort_keys=True) if request.tags else None


_NO_TAGS: MappingProxyType[str, str] = MappingProxyType({})


def planned_from_row(row: Sequence[Any], targets: dict[str, Target] | None = None) -> Planned:
    """A journal row as a :class:`Planned`. Rows that share ``targets`` share one :class:`Target` per
    key (and so compute its key once, not once per number)."""
    target, number, description, tags, source, token, status, attempts, maybe_sent, number_id, arn = row
    found = targets.get(target) if targets is not None else None
    if found is None:
        found = Target.from_key(target)
        if targets is not None:
            targets[target] = found
    request = ClaimRequest(number, found, description, MappingProxyType(json.loads(tags)) if tags else _NO_TAGS,
                           source or "")
    return Planned(request, token, Status(status), attempts, bool(maybe_sent), number_id, arn)
