"""Releasing the numbers a journal claimed, with journaled tokens (``bulkclaim release``).

Each release gets a client token committed to the journal's ``releases`` table before its request
is sent; a lost answer is retried with the same token (the service answers a replay idempotently),
and a resumed release re-uses it. A released number is ``released`` in the journal from then on,
and counts toward the claim/release churn rule (see ``preflight``).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio
import structlog

from bulkclaim.calls import Api, CallFailed
from bulkclaim.engine import first_cause
from bulkclaim.journal import SqliteJournal
from bulkclaim.journal_plan import new_token

__all__ = ["ToRelease", "numbers_to_release", "release_all"]


@dataclass(frozen=True)
class ToRelease:
    target: str
    phone_number: str
    phone_number_id: str
    #: No claim of ours took it: the target held it already before bulkclaim could have sent its
    #: token (a claim of ours whose answer was lost is recorded as ``recovered``, not adopted).
    #: Released only when the user says so.
    adopted: bool = False


def numbers_to_release(conn: sqlite3.Connection, run: int | None = None) -> list[ToRelease]:
    """The journal's claimed numbers (of one ``run``, or all), marking those no claim of ours took."""
    ours = set(conn.execute("SELECT DISTINCT target, phone_number, client_token FROM attempts "
                            "WHERE result IN ('accepted', 'recovered')"))  # recovered: our claim, answer lost
    query = ("SELECT target, phone_number, phone_number_id, client_token FROM numbers WHERE status='claimed' "
             "AND phone_number_id IS NOT NULL")
    params: list[object] = []
    if run is not None:
        query += " AND seen_run=?"
        params.append(run)
    return [ToRelease(target, number, number_id, (target, number, token) not in ours)
            for target, number, number_id, token in conn.execute(query + " ORDER BY target, seen_run, ord", params)]


def _reserve(conn: sqlite3.Connection, number: ToRelease) -> str:
    """The release token of ``number``: the one already journaled, or a new one committed now."""
    found = conn.execute("SELECT client_token FROM releases WHERE target=? AND phone_number=? AND phone_number_id=?",
                         (number.target, number.phone_number, number.phone_number_id)).fetchone()
    if found is not None:
        return str(found[0])
    token, now = new_token(), time.time()
    conn.execute("INSERT INTO releases (target, phone_number, phone_number_id, client_token, status, created_at, "
                 "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                 (number.target, number.phone_number, number.phone_number_id, token, now, now))
    return token


def _settle(conn: sqlite3.Connection, number: ToRelease, status: str, attempts: int,
            error: tuple[str, str] | None) -> None:
    now = time.time()
    conn.execute("UPDATE releases SET status=?, attempts=attempts+?, error_code=?, error_message=?, updated_at=? "
                 "WHERE target=? AND phone_number=? AND phone_number_id=?",
                 (status, attempts, *(error or (None, None)), now, number.target, number.phone_number,
                  number.phone_number_id))
    if status == "released":
        conn.execute("UPDATE numbers SET status='released', updated_at=? WHERE target=? AND phone_number=? "
                     "AND phone_number_id=?", (now, number.target, number.phone_number, number.phone_number_id))


async def release_all(api: Api, journal: SqliteJournal, numbers: list[ToRelease], *, concurrency: int = 5,
                      stopping: Callable[[], bool] = lambda: False) -> Counter[str]:
    """Release every number (until ``stopping()``); counts of ``released`` and of each error code."""
    counts: Counter[str] = Counter()
    log = structlog.get_logger("bulkclaim")
    queue = list(reversed(numbers))

    async def worker() -> None:
        while queue and not stopping():
            number = queue.pop()
            token = await journal.execute(partial(_reserve, number=number))
            bound = log.bind(phone_number=number.phone_number, phone_number_id=number.phone_number_id,
                             client_token=token)
            status, error = "released", None
            try:
                await api.call("ReleasePhoneNumber", "release_phone_number", PhoneNumberId=number.phone_number_id,
                               ClientToken=token)
            except CallFailed as failed:
                error = (failed.classified.code, failed.classified.message)
                # Not found: the number is not held any more; released before, its answer lost.
                status = "released" if error[0] == "ResourceNotFoundException" else "failed"
            await journal.execute(partial(_settle, number=number, status=status, attempts=1, error=error))
            counts[status if status == "released" else error[0] if error else status] += 1
            if status == "failed" and error:
                bound.warning("release.failed", error_code=error[0], error_message=error[1])
            else:
                bound.info("release.done", note=error[1] if error else None)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(max(1, min(concurrency, len(numbers)))):
                tg.start_soon(worker)
    except BaseExceptionGroup as group:
        raise first_cause(group) from None
    return counts
