"""A journal opened for reading: ``status``, ``report``, ``release``'s list and the dry run.

:class:`SqlReader` is the :class:`~bulkclaim.journal.protocol.JournalReader` of both backends (the
shared SQL, see ``sql``); each says only how to tell whether a run is live.

SQLite's opens the file read-only (see :func:`~bulkclaim.journal.schema.connect_read_only`: WAL lets it read
beside a run that is writing, and a finished journal on read-only media reads too) and never takes the
journal's lock (``status`` only looks whether someone holds it), creates it, or reserves anything.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from bulkclaim.journal import releases
from bulkclaim.journal.flows import OUTCOME_COLUMNS, outcome_from_row
from bulkclaim.journal.lock import LockHolder, lock_holder
from bulkclaim.journal.protocol import JournalStatus
from bulkclaim.journal.schema import connect_read_only
from bulkclaim.journal.sql import Connection
from bulkclaim.model import JournalError, Outcome, Status, ToRelease

__all__ = ["SqlReader", "SqliteReader", "read_sqlite"]

_RATE_WINDOW = 60.0  # seconds of accepted claims the live rate in ``status`` is measured over


@contextmanager
def read_sqlite(path: Path) -> Iterator[SqliteReader | None]:
    """The journal at ``path`` opened read-only; ``None`` if there is none. A file that is not a
    readable journal raises JournalError, on opening or on any later read."""
    if not path.exists():
        yield None
        return
    try:
        with closing(connect_read_only(path)) as conn:
            conn.execute("SELECT count(*) FROM numbers").fetchone()
            yield SqliteReader(path, conn)
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from None


class SqlReader:
    """The :class:`~bulkclaim.journal.protocol.JournalReader` of a journal ``name`` read through ``conn``."""

    #: the exceptions that mean the database could not be read
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, name: str, conn: Connection) -> None:
        self.name = name
        self._conn = conn

    def _holder(self, latest_run: int | None, run_pid: int | None) -> LockHolder:
        """Whether the process of ``latest_run`` (pid ``run_pid``) still has the journal open."""
        raise NotImplementedError

    def status(self, *, now: float | None = None, errors: int = 5) -> JournalStatus:
        conn = self._conn
        counts = {s.value: 0 for s in Status if s not in (Status.INVALID, Status.RELEASED)}
        counts.update(dict(conn.execute("SELECT status, count(*) FROM numbers GROUP BY status").fetchall()))
        runs, latest = conn.execute("SELECT count(*), MAX(id) FROM runs").fetchone()
        started, run_pid = conn.execute("SELECT started_at, pid FROM runs WHERE id=?", (latest,)).fetchone() or (
            None, None)
        plan = conn.execute("SELECT members_run FROM plans WHERE run=?", (latest,)).fetchone()
        counts[Status.INVALID.value] = conn.execute(
            "SELECT count(*) FROM rejected WHERE run=(SELECT MAX(id) FROM runs)").fetchone()[0]
        per_run: dict[int, dict[str, int]] = {}
        for run, status, count in conn.execute(
                "SELECT seen_run, status, count(*) FROM numbers GROUP BY seen_run, status "
                "UNION ALL SELECT run, 'invalid', count(*) FROM rejected GROUP BY run ORDER BY 1, 2"):
            per_run.setdefault(run, {})[status] = count
        holder = self._holder(latest, run_pid)
        rate: float | None = None
        if holder.held:
            clock = time.time() if now is None else now
            since = max(clock - _RATE_WINDOW, started or 0.0)
            accepted = conn.execute("SELECT count(*) FROM attempts WHERE result='accepted' AND at>=?",
                                    (since,)).fetchone()[0]
            rate = accepted / (clock - since) if clock - since >= 1.0 else None
        with_error = "FROM numbers WHERE error_code IS NOT NULL AND status IN ('failed', 'pending', 'in_progress')"
        (error_count,) = conn.execute(f"SELECT count(*) {with_error}").fetchone()
        last_errors: list[dict[str, Any]] = [
            {"phone_number": n, "status": st, "error_code": c, "error_message": m, "run": r, "at": at}
            for n, st, c, m, r, at in conn.execute(
                f"SELECT phone_number, status, error_code, error_message, seen_run, updated_at {with_error} "
                "ORDER BY updated_at DESC LIMIT ?", (errors,))
        ]
        pending = counts.get(Status.PENDING.value, 0)
        eta = pending / rate if rate and pending else None
        flows = dict(conn.execute("SELECT flow_status, count(*) FROM numbers WHERE flow_status IS NOT NULL "
                                  "GROUP BY flow_status").fetchall())
        return JournalStatus(self.name, holder.held, holder.pid, counts, runs, latest,
                             plan[0] if plan else latest, started, rate, eta, per_run, last_errors, error_count,
                             latest if holder.held and holder.pid is not None and holder.pid == run_pid else None,
                             flows=flows)

    def run_counts(self, run: int) -> dict[str, int]:
        counts = dict(self._conn.execute("SELECT status, count(*) FROM numbers WHERE seen_run=? GROUP BY status",
                                         (run,)).fetchall())
        (invalid,) = self._conn.execute("SELECT count(*) FROM rejected WHERE run=?", (run,)).fetchone()
        if invalid:
            counts[Status.INVALID.value] = invalid
        return counts

    def flow_counts(self, run: int) -> dict[str, int]:
        return dict(self._conn.execute("SELECT flow_status, count(*) FROM numbers WHERE seen_run=? "
                                       "AND flow_status IS NOT NULL GROUP BY flow_status", (run,)).fetchall())

    def churn(self, target: str, now: float | None = None) -> int:
        return releases.churn(self._conn, target, now)

    def lookup(self, target: str, phone_number: str) -> tuple[Status, str] | None:
        found = self._conn.execute("SELECT status, params_hash FROM numbers WHERE target=? AND phone_number=?",
                                   (target, phone_number)).fetchone()
        return None if found is None else (Status(found[0]), str(found[1]))

    def outcomes(self, run: int | None = None, statuses: frozenset[str] | None = None) -> Iterator[Outcome]:
        try:
            where, args = ("WHERE seen_run=?", (run,)) if run is not None else ("", ())
            for row in self._conn.execute(f"SELECT {OUTCOME_COLUMNS} FROM numbers {where} ORDER BY seen_run, ord",
                                          args):
                outcome = outcome_from_row(row)
                if statuses is None or outcome.status.value in statuses:
                    yield outcome
            if statuses is not None and Status.INVALID.value not in statuses:
                return
            if run is None:
                (run,) = self._conn.execute("SELECT MAX(id) FROM runs").fetchone()
            for raw, source, target, reason, at, rejected_in in self._conn.execute(
                    "SELECT raw, source, target, reason, at, run FROM rejected WHERE run=? ORDER BY id", (run,)):
                yield Outcome(raw, source, target or "", Status.INVALID, error_code="InvalidInput",
                              error_message=reason, updated_at=at, run=rejected_in)
        except self.errors as exc:
            raise JournalError(f"cannot read journal {self.name}: {exc}") from None

    def numbers_to_release(self, run: int | None = None) -> list[ToRelease]:
        return releases.numbers_to_release(self._conn, run)


class SqliteReader(SqlReader):
    """The reader of an SQLite journal: live while a process holds the file's lock."""

    errors = (sqlite3.DatabaseError,)

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        super().__init__(str(path), conn)
        self.path = path

    def _holder(self, latest_run: int | None, run_pid: int | None) -> LockHolder:
        return lock_holder(self.path, expected_pid=run_pid)
