"""The SQL of acquisitions (``bulkclaim acquire``): slots, their candidates, compare-and-set.

A slot's candidate is a row of ``numbers`` (its token and outcome kept there, so reports, status and
release see acquired numbers); the ``slots`` row points at it. A slot moves to a new candidate only
by compare-and-set from the candidate its worker saw, in the same transaction that reserves the new
candidate's token, so two workers on one slot end up with one number, never two.
"""

from __future__ import annotations

import time

from bulkclaim.journal.planning import plan_batch, planned_from_row
from bulkclaim.journal.sql import Connection
from bulkclaim.model import ClaimRequest, ConfigurationError, Outcome, Planned, Status

__all__ = ["assign_candidate", "read_slots", "slot_outcomes"]


def read_slots(conn: Connection, name: str, target: str, params: str, count: int,
               create: bool) -> list[tuple[int, Planned | None]]:
    found = conn.execute("SELECT target, params FROM acquisitions WHERE name=?", (name,)).fetchone()
    if found is not None and tuple(found) != (target, params):
        raise ConfigurationError(f"acquisition {name!r} in this journal was started with other "
                                 f"parameters ({found[1]} to {found[0]}); give another --name")
    candidates = {slot: planned_from_row(row) for slot, *row in conn.execute(
        "SELECT s.slot, n.target, n.phone_number, n.description, n.tags, n.source, n.client_token, n.status, "
        "n.attempts, 1, n.phone_number_id, n.phone_number_arn, n.contact_flow, n.move_from FROM slots s JOIN numbers n "
        "ON n.target=? AND n.phone_number=s.phone_number WHERE s.acquisition=?", (target, name))}
    slots = [(slot, candidates.get(slot)) for slot in range(1, count + 1)]
    if create:
        conn.execute("INSERT INTO acquisitions (name, target, params, created_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (name) DO NOTHING",
                     (name, target, params, time.time()))
        conn.executemany("INSERT INTO slots (acquisition, slot) VALUES (?, ?) "
                         "ON CONFLICT (acquisition, slot) DO NOTHING",
                         [(name, slot) for slot, _ in slots])
    return slots


def assign_candidate(conn: Connection, name: str, slot: int, expected: str | None, request: ClaimRequest,
                     run: int) -> Planned | None:
    if conn.execute("SELECT 1 FROM numbers WHERE target=? AND phone_number=?", request.key).fetchone():
        return None  # the journal knows this number already (another slot, or an earlier claim)
    moved = conn.execute("UPDATE slots SET phone_number=?, candidates=candidates+1 WHERE acquisition=? "
                         "AND slot=? AND COALESCE(phone_number, '') = ?",
                         (request.phone_number, name, slot, expected or ""))
    if moved.rowcount == 0:  # another worker gave the slot a candidate since we looked: carry on with it
        (params, count) = conn.execute("SELECT a.params, (SELECT count(*) FROM slots WHERE acquisition=a.name) "
                                       "FROM acquisitions a WHERE a.name=?", (name,)).fetchone()
        current = dict(read_slots(conn, name, request.target.key, params, count, create=False))[slot]
        assert current is not None
        return current
    return plan_batch(conn, [request], run, retry_failed=False, dedupe=False).work[0]


def slot_outcomes(conn: Connection, name: str) -> list[Outcome]:
    rows = conn.execute(
        "SELECT s.slot, s.phone_number, n.source, a.target, n.status, n.phone_number_id, n.phone_number_arn, "
        "n.client_token, n.attempts, n.error_code, n.error_message, n.updated_at, n.seen_run FROM slots s "
        "JOIN acquisitions a ON a.name=s.acquisition LEFT JOIN numbers n ON n.target=a.target "
        "AND n.phone_number=s.phone_number WHERE s.acquisition=? ORDER BY s.slot", (name,)).fetchall()
    outcomes = []
    for slot, number, source, target, status, *rest in rows:
        if number is None:
            outcomes.append(Outcome("", f"acquire:{name}:slot {slot}", target, Status.PENDING,
                                    error_code="NotFilled", error_message="no candidate claimed for this slot yet"))
        else:
            outcomes.append(Outcome(number, source or "", target, Status(status), *rest))
    return outcomes
