"""Workers and leases: how processes sharing a PostgreSQL journal split one run's numbers.

Each process with the journal open is a *worker*: a row of ``workers`` that a :class:`Heartbeat`
thread keeps alive (``expires_at`` = the server's clock + the worker's lease TTL, renewed every
third of it). A worker takes the numbers it sends a few at a time (:func:`pick`: the next ones in
input order, ``FOR UPDATE SKIP LOCKED`` so concurrent pickers never wait on each other or take the
same row, as procrastinate's and pgqueuer's job queues fetch jobs). A number whose owner's
heartbeat expired (SIGKILL, a lost host) or whose owner ended is taken over by the next picker,
with the *same* token and marked possibly sent; every lease bumps ``lease_epoch``, and outcomes are
written only under the epoch they were leased with (see ``lazy``), so a stalled owner that wakes
after a take-over cannot overwrite its successor's result.

Every statement here runs on the journal's connections; times are the server's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

from bulkclaim.journal.planning import PLANNED_COLUMNS
from bulkclaim.journal.postgres.connection import Location, PgConnection, connect, driver
from bulkclaim.journal.postgres.schema import migrate
from bulkclaim.journal.sql import Connection
from bulkclaim.model import JournalError

__all__ = ["LEASED_COLUMNS", "LIVE_RUNS", "Heartbeat", "forget_ended_steps", "forget_steps", "keep_step", "lease_one",
           "more_work", "pick", "step_result", "unlease", "works_on"]

_DEAD = ("(SELECT id FROM workers WHERE ended_at IS NOT NULL OR expires_at < clock_timestamp())")
_LIVE_WAITING = ("(SELECT id FROM workers WHERE waiting AND ended_at IS NULL "
                 "AND expires_at >= clock_timestamp())")
_UNFINISHED = "status IN ('pending', 'in_progress')"
#: the columns of a leased number: ``planning.planned_from_row``'s, then its new lease epoch
LEASED_COLUMNS = f"{PLANNED_COLUMNS}, lease_epoch"


def pick(conn: Connection, run: int, worker: int, limit: int) -> list[tuple[Any, ...]]:
    """Lease every unfinished number of ``run`` that a dead worker held (a take-over, whatever ``limit``)
    and up to ``limit`` that nobody holds, in input order: rows of ``LEASED_COLUMNS`` plus whether it
    was taken over. A take-over is never held back by ``limit``: the numbers a killed worker held are
    owned again at the first pick after its heartbeat expired (``limit`` 0: only those). Never this
    worker's own: while its heartbeat lapses (the database was away) the numbers it holds are still in
    its hands, and taking them again would hand each of them over once per page, as fast as pages are
    asked for."""
    columns = ", ".join(f"numbers.{c.strip()}" for c in LEASED_COLUMNS.split(","))
    rows = conn.execute(
        "WITH orphan AS (SELECT target, phone_number, ord, lease_owner AS previous FROM numbers "
        f"WHERE seen_run=? AND {_UNFINISHED} AND lease_owner<>? AND lease_owner IN {_DEAD} FOR UPDATE SKIP LOCKED), "
        "free AS (SELECT target, phone_number, ord, NULL::bigint AS previous FROM numbers "
        f"WHERE seen_run=? AND {_UNFINISHED} AND lease_owner IS NULL ORDER BY ord LIMIT ? FOR UPDATE SKIP LOCKED), "
        "candidate AS (SELECT * FROM orphan UNION ALL SELECT * FROM free) "
        "UPDATE numbers SET lease_owner=?, lease_epoch=numbers.lease_epoch + 1, "
        "maybe_sent=CASE WHEN candidate.previous IS NULL THEN numbers.maybe_sent ELSE 1 END "
        "FROM candidate WHERE numbers.target=candidate.target AND numbers.phone_number=candidate.phone_number "
        f"RETURNING candidate.ord, {columns}, candidate.previous IS NOT NULL",
        (run, worker, run, limit, worker)).fetchall()
    if rows:
        conn.execute("UPDATE workers SET run=?, waiting=false WHERE id=?", (run, worker))
    return [tuple(row[1:]) for row in sorted(rows, key=lambda row: row[0])]


def more_work(conn: Connection, run: int, worker: int, idle: bool) -> bool:
    """Mark ``worker`` as waiting if it is ``idle`` (nothing left to send or verify), and say whether it
    should look again: it is not idle yet, or ``run`` has unfinished numbers of someone else's that
    nobody holds, or that a dead worker held (to take over), or that a live worker is still working
    on (it may die). Numbers left unfinished by workers that are only waiting, as this one, are
    theirs: nobody waits for them (two idle workers never wait for each other)."""
    conn.execute("UPDATE workers SET run=?, waiting=? WHERE id=?", (run, idle, worker))
    if not idle:
        return True
    (found,) = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM numbers WHERE seen_run=? AND {_UNFINISHED} "
        f"AND lease_owner IS DISTINCT FROM ? AND (lease_owner IS NULL OR lease_owner NOT IN {_LIVE_WAITING}))",
        (run, worker)).fetchone()
    return bool(found)


def lease_one(conn: Connection, target: str, number: str, worker: int) -> tuple[Any, ...] | None:
    """Lease one number (``claim()``) unless a live worker holds it: its ``LEASED_COLUMNS``, or None."""
    return conn.execute(  # type: ignore[no-any-return]
        "UPDATE numbers SET lease_owner=?, lease_epoch=lease_epoch + 1, "
        "maybe_sent=CASE WHEN lease_owner IS NULL OR lease_owner=? THEN maybe_sent ELSE 1 END "
        f"WHERE target=? AND phone_number=? AND {_UNFINISHED} "
        f"AND (lease_owner IS NULL OR lease_owner=? OR lease_owner IN {_DEAD}) RETURNING {LEASED_COLUMNS}",
        (worker, worker, target, number, worker)).fetchone()


def unlease(conn: Connection, target: str, number: str, worker: int, epoch: int) -> None:
    """Let go of a number (after its outcome is written): another worker may take it at once."""
    conn.execute("UPDATE numbers SET lease_owner=NULL WHERE target=? AND phone_number=? AND lease_owner=? "
                 "AND lease_epoch=?", (target, number, worker, epoch))


class Heartbeat:
    """This process as a worker of the journal at ``location``: registers it (blocking), then keeps
    it alive from a daemon thread with a connection of its own until :meth:`end`.

    While the server cannot be reached the heartbeat lapses (and reconnects when it can): after
    ``lease_ttl`` seconds other workers may take this one's numbers over, which at worst sends the
    same tokens again (Connect answers those idempotently) and ignores this worker's late outcomes.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        self.ttl = location.lease_ttl
        self._conn: PgConnection | None = connect(location, read_only=False)
        try:
            migrate(self._conn, location)
            (self.id,) = self._conn.execute(
                "INSERT INTO workers (host, pid, lease_ttl, expires_at) VALUES (?, ?, ?, "
                "clock_timestamp() + ? * interval '1 second') RETURNING id",
                (socket.gethostname(), os.getpid(), self.ttl, self.ttl)).fetchone()
        except driver().Error as exc:
            self._drop()
            raise JournalError(f"journal {location.name}: {str(exc).strip()}") from None
        except BaseException:
            self._drop()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"bulkclaim-heartbeat {self.id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        away = (driver().Error, JournalError)
        while not self._stop.wait(self.ttl / 3):
            try:
                self._conn = self._conn or connect(self.location, read_only=False)
                self._renew(self._conn)
            except away:  # the server is away: try again at the next beat
                self._drop()

    def _renew(self, conn: PgConnection) -> None:
        conn.execute("UPDATE workers SET expires_at=clock_timestamp() + lease_ttl * interval '1 second' "
                     "WHERE id=? AND ended_at IS NULL", (self.id,))

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def end(self) -> None:
        """Stop beating and mark the worker ended (blocking): what it still holds may be taken over now."""
        self._stop.set()
        self._thread.join()
        try:
            conn = self._conn or connect(self.location, read_only=False)
            self._conn = conn
            conn.execute("UPDATE workers SET ended_at=clock_timestamp(), expires_at=clock_timestamp() WHERE id=?",
                         (self.id,))
            forget_ended_steps(conn)  # the last worker of a run leaves nothing of it in ``meta``
        except (driver().Error, JournalError):  # unreachable: the heartbeat lapses on its own
            pass
        finally:
            self._drop()


#: the runs live workers work on (a plan of one of them is joined, see ``planning.reuse_plan``)
LIVE_RUNS = "SELECT run FROM workers WHERE ended_at IS NULL AND expires_at >= clock_timestamp() AND run IS NOT NULL"


def works_on(conn: Connection, run: int, worker: int) -> None:
    """Record that ``worker`` works on the numbers of ``run`` (other workers of the same inputs join it)."""
    conn.execute("UPDATE workers SET run=? WHERE id=?", (run, worker))


# A run-wide step's result (see ``PostgresJournal.once``), kept in ``meta`` under ``run <run> <step>``.
def step_result(conn: Connection, run: int, step: str) -> str | None:
    """What the worker that did ``step`` for ``run`` kept; None if no worker finished it yet."""
    found = conn.execute("SELECT value FROM meta WHERE key=?", (f"run {run} {step}",)).fetchone()
    return None if found is None else str(found[0])


def keep_step(conn: Connection, run: int, step: str, result: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                 (f"run {run} {step}", result))


def forget_ended_steps(conn: Connection) -> None:
    """Drop the kept steps of every run no live worker works on: they serve only that run's workers
    (``status`` and ``report`` never read them). Called as a run begins and as a worker ends, so ``meta``
    holds the steps of the runs going on and nothing more. A run going on whose workers all lapsed (the
    database away longer than the lease TTL) may lose its steps: they are done again (requests, never
    correctness)."""
    conn.execute(f"DELETE FROM meta WHERE key LIKE 'run %' AND split_part(key, ' ', 2)::bigint NOT IN ({LIVE_RUNS})")


def forget_steps(conn: Connection, run: int) -> None:
    """A new run takes over ``run``'s plan (no worker of it is alive): its steps are to be done again."""
    conn.execute("DELETE FROM meta WHERE key LIKE ?", (f"run {run} %",))
