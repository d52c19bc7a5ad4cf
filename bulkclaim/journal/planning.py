"""What planning does inside the journal (either backend): the SQL of one batch.

Planning runs in the journal's writer thread, inside a group-committed transaction: a batch of
requests is looked up with one query per target, new numbers get their token, numbers met in an
earlier run join this one (``_decide``, the same for every backend), and the batch's rows are
written with ``executemany``, guarded against concurrent planners (``_write``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from bulkclaim.journal.sql import Connection
from bulkclaim.model import (
    NOT_CLAIMED,
    ClaimRequest,
    FlowStatus,
    JournalError,
    MoveFrom,
    Outcome,
    Planned,
    PlanResult,
    PlanReuse,
    Status,
    Target,
    new_token,
)

__all__ = ["PLANNED_COLUMNS", "join_unsettled", "lookup", "plan_batch", "planned_from_row", "reuse_plan"]

_RACES = 5  # times a batch is decided again after losing a race to another planner


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
    contact_flow: str | None
    flow_status: str | None


def lookup(conn: Connection, keys: Iterable[tuple[str, str]], columns: str) -> dict[tuple[str, str], list[Any]]:
    """``columns`` of the journal rows of these (target, number) keys, with one query per target (not
    one per number)."""
    by_target: dict[str, list[str]] = {}
    for target, number in keys:
        by_target.setdefault(target, []).append(number)
    found: dict[tuple[str, str], list[Any]] = {}
    for target, numbers in by_target.items():
        for start in range(0, len(numbers), 900):  # stay well under SQLite's bound-parameter limit
            chunk = numbers[start:start + 900]
            for number, *fields in conn.execute(
                    f"SELECT phone_number, {columns} FROM numbers "
                    f"WHERE target=? AND phone_number IN ({','.join('?' * len(chunk))})", (target, *chunk)):
                found[(target, number)] = fields
    return found


def _existing(conn: Connection, requests: Sequence[ClaimRequest]) -> dict[tuple[str, str], _Existing]:
    rows = lookup(conn, (request.key for request in requests), ", ".join(_Existing._fields))
    return {key: _Existing._make([*fields[:2], Status(fields[2]), *fields[3:]]) for key, fields in rows.items()}


@dataclass
class _Decisions:
    """What planning a batch writes: new rows (``replaces``: the failed token a row replaces, if any)
    and rows this run takes into its input (``touches``), each guarded by the token it was decided on."""

    result: PlanResult
    new_rows: list[tuple[Any, ...]] = field(default_factory=list)
    replaces: list[tuple[Any, ...]] = field(default_factory=list)
    touches: list[tuple[Any, ...]] = field(default_factory=list)
    #: (flow id, target, number) of numbers whose flow is new, changed, or failed and retried: pending now
    flows: list[tuple[Any, ...]] = field(default_factory=list)


def _decide(requests: Sequence[ClaimRequest], existing: dict[tuple[str, str], _Existing], run: int,
            retry_failed: bool, dedupe: bool, next_ord: int) -> _Decisions:
    """Sort a batch against the journal's rows: new tokens, work, done, duplicates, changed parameters."""
    decided = _Decisions(PlanResult([], [], [], []))
    result = decided.result
    now = time.time()
    in_batch: set[tuple[str, str]] = set()
    for request in requests:
        target, number = key = request.key
        row = existing.get(key)
        # a number twice in one batch is a duplicate even without ``dedupe``: one token per number
        if key in in_batch or (dedupe and row is not None and row.seen_run == run):
            result.duplicates.append(request)
            continue
        if row is None and not request.checked:  # never reserve a token for an unvalidated number
            raise ValueError(f"{request.source}: {request.phone_number} was not checked before planning")
        in_batch.add(key)
        flow = _flow_decision(request, row, retry_failed)
        if flow is not None and flow[1] == FlowStatus.PENDING:
            if request.contact_flow is None:  # asked for by an earlier run: this one associates it
                request = dataclasses.replace(request, contact_flow=flow[0])
            else:
                decided.flows.append((request.contact_flow, target, number))
        if row is None or (row.status == Status.FAILED and (retry_failed or row.error_code == NOT_CLAIMED)):
            token = new_token()
            moved = request.move_from  # a move: the number's id is known before anything is sent
            values = (request.params_hash(), request.description, _tags_text(request), request.source, token,
                      moved.phone_number_id if moved else None, moved.source.key if moved else None, run,
                      next_ord, now, now)
            if row is None:
                decided.new_rows.append((target, number, *values))
            else:
                decided.replaces.append((*values, target, number, row.client_token))
            result.work.append(Planned(request, token, Status.PENDING, 0, maybe_sent=False,
                                       phone_number_id=moved.phone_number_id if moved else None))
        elif row.status == Status.PENDING and row.params_hash != request.params_hash():
            result.changed.append(request)
            continue
        else:
            if dedupe:  # this run's input names it: it belongs to this run (a pending token may be out)
                decided.touches.append((run, next_ord, request.source, row.status == Status.PENDING, target, number,
                                        row.client_token))
            if row.status in (Status.PENDING, Status.IN_PROGRESS):
                result.work.append(Planned(request, row.client_token, row.status, row.attempts, maybe_sent=True,
                                           phone_number_id=row.phone_number_id,
                                           phone_number_arn=row.phone_number_arn))
            else:
                flow_id, flow_status = flow or (None, None)
                result.done.append(Outcome(number, request.source, target, row.status, row.phone_number_id,
                                           row.phone_number_arn, row.client_token, row.attempts, row.error_code,
                                           row.error_message, row.updated_at, run if dedupe else row.seen_run,
                                           flow_id, flow_status, _source_key(request)))
        next_ord += 1
    return decided


def _flow_decision(request: ClaimRequest, row: _Existing | None,
                   retry_failed: bool) -> tuple[str, FlowStatus] | None:
    """The number's flow and its status after planning: the row's, unless the request names a flow the
    row does not have, or the row's association failed and ``retry_failed``: pending then. A request
    without a flow leaves the row's as it is (a number is never disassociated by bulkclaim)."""
    if request.contact_flow is None:
        if row is None or row.contact_flow is None or row.flow_status is None:
            return None
        return row.contact_flow, FlowStatus(row.flow_status)
    if (row is None or row.contact_flow != request.contact_flow or row.flow_status is None
            or (row.flow_status == FlowStatus.FAILED and retry_failed)):
        return request.contact_flow, FlowStatus.PENDING
    return row.contact_flow, FlowStatus(row.flow_status)


def _write(conn: Connection, decided: _Decisions) -> bool:
    """Write a batch's decisions; False if another planner changed one of its rows since they were
    read (the rows went in in key order, so two planners of the same numbers never deadlock)."""
    written = conn.executemany(
        "INSERT INTO numbers (target, phone_number, params_hash, description, tags, source, client_token, "
        "phone_number_id, move_from, status, attempts, maybe_sent, seen_run, ord, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, ?, ?, ?) ON CONFLICT (target, phone_number) DO NOTHING",
        sorted(decided.new_rows, key=lambda row: (row[0], row[1]))).rowcount
    if decided.replaces:
        written += conn.executemany(
            "UPDATE numbers SET params_hash=?, description=?, tags=?, source=?, client_token=?, phone_number_id=?, "
            "move_from=?, status='pending', attempts=0, maybe_sent=0, phone_number_arn=NULL, error_code=NULL, "
            "error_message=NULL, seen_run=?, ord=?, created_at=?, updated_at=? "
            "WHERE target=? AND phone_number=? AND client_token=? AND status='failed'",
            sorted(decided.replaces, key=lambda row: (row[-3], row[-2]))).rowcount
    if decided.touches:
        written += conn.executemany(
            "UPDATE numbers SET seen_run=?, ord=?, source=?, maybe_sent=CASE WHEN ? THEN 1 ELSE maybe_sent END "
            "WHERE target=? AND phone_number=? AND client_token=?",
            sorted(decided.touches, key=lambda row: (row[-3], row[-2]))).rowcount
    if written != len(decided.new_rows) + len(decided.replaces) + len(decided.touches):
        return False
    if decided.flows:  # not a race: whoever planned the flow last, the number is to have it
        conn.executemany(
            "UPDATE numbers SET contact_flow=?, flow_status='pending', flow_attempts=0, flow_error_code=NULL, "
            "flow_error_message=NULL WHERE target=? AND phone_number=?",
            sorted(decided.flows, key=lambda row: (row[1], row[2])))
    return True


def _source_key(request: ClaimRequest) -> str | None:
    """A move's source (the report's ``moved_from``); None for a claim."""
    return None if request.move_from is None else request.move_from.source.key


def plan_batch(conn: Connection, requests: Sequence[ClaimRequest], run: int, retry_failed: bool,
               dedupe: bool) -> PlanResult:
    """Plan a batch: look its numbers up, decide, write. Where several processes plan the same numbers
    (PostgreSQL), a new row goes in with ``ON CONFLICT DO NOTHING`` and any other write only if the
    row still has the token it was decided on; if another planner got there first, the batch is
    decided again on what it wrote, so every planner hands out the winner's token."""
    for _ in range(_RACES):
        conn.execute("SAVEPOINT plan")
        (next_ord,) = conn.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM numbers WHERE seen_run=?",
                                   (run,)).fetchone()
        decided = _decide(requests, _existing(conn, requests), run, retry_failed, dedupe, next_ord)
        if _write(conn, decided):
            conn.execute("RELEASE plan")
            return decided.result
        conn.execute("ROLLBACK TO plan")
        conn.execute("RELEASE plan")
    raise JournalError(f"planning kept racing with another process over the same numbers ({_RACES} tries)")


def _tags_text(request: ClaimRequest) -> str | None:
    return json.dumps(dict(request.tags), sort_keys=True) if request.tags else None


_NO_TAGS: MappingProxyType[str, str] = MappingProxyType({})
#: The columns :func:`planned_from_row` reads.
PLANNED_COLUMNS = ("target, phone_number, description, tags, source, client_token, status, attempts, maybe_sent, "
                   "phone_number_id, phone_number_arn, contact_flow, move_from")


def planned_from_row(row: Sequence[Any], targets: dict[str, Target] | None = None) -> Planned:
    """A journal row (:data:`PLANNED_COLUMNS`) as a :class:`Planned`. Rows that share ``targets`` share
    one :class:`Target` per key (and so compute its key once, not once per number)."""
    target, number, description, tags, source, token, status, attempts, maybe_sent, number_id, arn, flow, moved = row
    found = targets.get(target) if targets is not None else None
    if found is None:
        found = Target.from_key(target)
        if targets is not None:
            targets[target] = found
    move = MoveFrom(Target.from_key(moved), number_id) if moved else None
    request = ClaimRequest(number, found, description, MappingProxyType(json.loads(tags)) if tags else _NO_TAGS,
                           source or "", contact_flow=flow, move_from=move)
    return Planned(request, token, Status(status), attempts, bool(maybe_sent), number_id, arn)


def join_unsettled(conn: Connection, run: int, mine: Sequence[int]) -> list[tuple[str, str, str]]:
    """Numbers of ``run``'s targets left unsettled by a run not in ``mine`` (runs of this process) with a
    token that may have been sent — ``in_progress``; ``pending`` after an attempt; or reserved by a run
    whose process died before closing the journal — join ``run`` after its own numbers, marked possibly
    sent. Any plan of ``run``'s numbers stops being reusable (its members changed)."""
    rows = conn.execute(
        "SELECT target, phone_number, status FROM numbers WHERE status IN ('pending', 'in_progress') "
        f"AND seen_run NOT IN ({','.join('?' * len(mine))}) AND (status='in_progress' OR attempts>0 "
        "OR maybe_sent=1 OR seen_run NOT IN (SELECT id FROM runs WHERE ended_at IS NOT NULL)) "
        "AND target IN (SELECT DISTINCT target FROM numbers WHERE seen_run=?) ORDER BY seen_run, ord",
        (*mine, run)).fetchall()
    if rows:
        (after,) = conn.execute("SELECT COALESCE(MAX(ord), 0) FROM numbers WHERE seen_run=?", (run,)).fetchone()
        conn.executemany("UPDATE numbers SET seen_run=?, ord=?, maybe_sent=1 WHERE target=? AND phone_number=?",
                         [(run, after + i, t, n) for i, (t, n, _) in enumerate(rows, 1)])
        # -1 never matches a count: reuse_plan plans these inputs again, and finds them again
        conn.execute("UPDATE plans SET members=-1 WHERE members_run=?", (run,))
    return [(str(t), str(n), str(s)) for t, n, s in rows]


def reuse_plan(conn: Connection, fingerprint: str, run: int, *,
               live_workers_of: str | None = None) -> PlanReuse | None:
    """Take over the latest complete plan of ``fingerprint`` if every number of it is still that plan's
    (no later run has taken one into its own input). Nothing is rewritten: ``run`` records that its
    numbers are those of the earlier run (``members_run``), and only pending ones are marked as
    possibly sent.

    ``live_workers_of`` (a shared journal): a query of the runs live workers work on; a plan of one of
    them is joined as it is, whatever joined it since, and nothing is marked possibly sent (its
    numbers are leased, and marked so if taken over from a dead worker, one by one)."""
    joining = f"AND members_run IN ({live_workers_of}) " if live_workers_of else ""
    found = conn.execute(f"SELECT members_run, members, duplicates FROM plans WHERE fingerprint=? {joining}"
                         "ORDER BY run DESC LIMIT 1", (fingerprint,)).fetchone()
    if found is None:
        return None
    members_run, members, duplicates = found
    statuses = dict(conn.execute("SELECT status, count(*) FROM numbers WHERE seen_run=? GROUP BY status",
                                 (members_run,)).fetchall())
    if not joining:
        if sum(statuses.values()) != members:
            return None
        conn.execute("UPDATE numbers SET maybe_sent=1 WHERE seen_run=? AND status='pending' AND maybe_sent=0",
                     (members_run,))
    conn.execute("INSERT INTO plans (run, fingerprint, members_run, members, duplicates) "
                 "VALUES (?, ?, ?, ?, ?)", (run, fingerprint, members_run, members, duplicates))
    (invalid,) = conn.execute("SELECT count(*) FROM rejected WHERE run=?", (members_run,)).fetchone()
    return PlanReuse(members_run, statuses, invalid, duplicates)
