"""The SQL of contact flows in the journal (either backend): a number's flow and its association.

A number's row carries the flow asked for (``contact_flow``, its id) and ``flow_status``: NULL without
a flow, else ``pending`` until AssociatePhoneNumberContactFlow succeeds (``associated``) or is given
up (``failed``, with the error). Planning sets the flow (``planning``); the engine records results
here. Reports read both columns (``reader``): a claimed number whose association failed shows the
association's error in ``error_code`` / ``error_message``, since its claim has none.
"""

from __future__ import annotations

import time
from typing import Any

from bulkclaim.journal.sql import Connection
from bulkclaim.model import FlowStatus, Outcome, Status

__all__ = ["OUTCOME_COLUMNS", "outcome_from_row", "outcomes_page", "record_flow"]

#: The columns :func:`outcome_from_row` reads.
OUTCOME_COLUMNS = ("phone_number, source, target, status, phone_number_id, phone_number_arn, client_token, attempts, "
                   "error_code, error_message, updated_at, seen_run, contact_flow, flow_status, flow_error_code, "
                   "flow_error_message, move_from")


def outcome_from_row(row: tuple[Any, ...] | list[Any]) -> Outcome:
    number, source, target, status, number_id, arn, token, attempts, code, message, updated, seen = row[:12]
    flow, flow_status, flow_code, flow_message = row[12:16]
    if flow_status == FlowStatus.FAILED and code is None:  # the claim stands: say why its flow did not
        code, message = flow_code, flow_message
    return Outcome(number, source or "", target, Status(status), number_id, arn, token, attempts, code, message,
                   updated, seen, flow, None if flow_status is None else FlowStatus(flow_status), row[16])


def outcomes_page(conn: Connection, run: int, after: int, limit: int, where: str) -> tuple[list[Outcome], int]:
    """The numbers of ``run`` matching ``where`` (a fixed condition, never user input) in input order
    after the position ``after``, and the position to continue from."""
    rows = conn.execute(f"SELECT ord, {OUTCOME_COLUMNS} FROM numbers WHERE seen_run=? AND ord>? AND {where} "
                        "ORDER BY ord LIMIT ?", (run, after, limit)).fetchall()
    return [outcome_from_row(row[1:]) for row in rows], (rows[-1][0] if rows else after)


def record_flow(conn: Connection, outcome: Outcome, attempts: int, error: tuple[str, str] | None) -> None:
    assert outcome.flow_status is not None and outcome.contact_flow_id is not None
    conn.execute("UPDATE numbers SET flow_status=?, flow_attempts=flow_attempts + ?, flow_error_code=?, "
                 "flow_error_message=?, updated_at=? WHERE target=? AND phone_number=? AND contact_flow=?",
                 (outcome.flow_status.value, attempts, *(error or (None, None)), time.time(), outcome.target,
                  outcome.phone_number, outcome.contact_flow_id))
