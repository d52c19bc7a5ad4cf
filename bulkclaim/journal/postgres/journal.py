"""The PostgreSQL journal: SQLite's journal (``base``: one writer thread, group commit, lazy
attempts and outcomes, the shared SQL) on a PostgreSQL connection.

What is PostgreSQL's own: several processes may open one journal at once (``exclusive`` is False),
so every write that hands out a token is guarded against a concurrent planner (see
``planning.plan_batch``); each run's process holds a session advisory lock on the run while it has
the journal open, which is how ``status`` tells that it is live and how a new run tells the runs
whose numbers may be in flight (``live_runs``) from those whose process died. A token is durable
when ``plan`` returns: the writer's session commits with ``synchronous_commit=on``.
"""

from __future__ import annotations

import os
import socket
import time

from bulkclaim.journal.base import SqlJournal
from bulkclaim.journal.postgres.connection import Location, PgConnection, connect, driver, parse_url
from bulkclaim.journal.postgres.schema import live_runs, migrate
from bulkclaim.model import JournalError

__all__ = ["PostgresDatabase", "PostgresJournal"]


class PostgresJournal(SqlJournal[PgConnection]):
    """The PostgreSQL journal. Open it with :meth:`open`; processes may share it."""

    exclusive = False

    def __init__(self, location: Location) -> None:
        self.location = location
        super().__init__(PostgresDatabase(location))

    @classmethod
    def open(cls, url: str) -> PostgresJournal:
        """Open the journal at ``url`` (``postgresql://...``), creating its schema if there is none.

        It blocks (connecting, migrating): from async code, call it in a worker thread, as
        :class:`Claimer` does. Raises JournalError (also if the PostgreSQL extra is not installed)."""
        location = parse_url(url)
        driver()  # a missing driver is said here, not as the writer thread's failure
        return cls(location)

    def _new_run(self, conn: PgConnection) -> int:
        (run,) = conn.execute("INSERT INTO runs (started_at, pid, host) VALUES (?, ?, ?) RETURNING id",
                              (time.time(), os.getpid(), socket.gethostname())).fetchone()
        # held by this session (not this transaction) until the journal is closed or the process dies
        conn.execute("SELECT pg_advisory_lock(?, ?)", (self.location.lock_key, run))
        return int(run)

    def _runs_in_flight(self, conn: PgConnection) -> set[int]:
        """This process's runs and those of every other process that has the journal open now."""
        return super()._runs_in_flight(conn) | live_runs(conn, self.location)


class PostgresDatabase:
    """A journal's PostgreSQL database as the writer thread opens and commits it."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.name = location.name
        psycopg = driver()
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self._retryable = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)

    def connect(self) -> PgConnection:
        conn = connect(self.location, read_only=False)
        try:
            migrate(conn, self.location)
        except BaseException:
            conn.close()
            raise
        return conn

    def begin(self, conn: PgConnection) -> None:
        conn.execute("BEGIN")

    def commit(self, conn: PgConnection) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: PgConnection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def close(self, conn: PgConnection) -> None:
        conn.close()

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self._retryable)

    def journal_error(self, exc: BaseException) -> JournalError:
        text = str(exc).strip()
        if isinstance(exc, driver().OperationalError):
            return JournalError(f"journal {self.name}: lost PostgreSQL ({text}); nothing more is sent. Every token "
                                "committed so far is kept: run the same command again once the database is back")
        return JournalError(f"journal {self.name}: {text}")
