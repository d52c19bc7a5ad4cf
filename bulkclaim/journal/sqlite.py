"""The SQLite journal: every number's client token is committed here before its first request.

SQLite in WAL mode with ``synchronous=FULL``. One writer thread owns the write connection (see
``writer``); callers hand it jobs and it commits every job waiting in its queue in *one*
transaction (group commit), so reserving tokens for a batch of numbers costs one fsync. Attempts and
outcomes are handed over without waiting (see ``lazy``): losing the last few in a crash only means the
same token is sent again on resume, which the service answers idempotently. One process at a time:
see ``lock``. The journal's methods are shared with the PostgreSQL backend (``base``); this module
is what is SQLite's own: the file, its lock, and how it is opened and committed.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from bulkclaim.journal.base import SqlJournal
from bulkclaim.journal.lock import lock_file
from bulkclaim.journal.schema import migrate, refuse_foreign
from bulkclaim.model import JournalError

__all__ = ["SqliteDatabase", "SqliteJournal", "journal_error"]


class SqliteJournal(SqlJournal[sqlite3.Connection]):
    """The SQLite journal. Open it with :meth:`open`; one process at a time."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        try:
            super().__init__(SqliteDatabase(path))
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteJournal:
        """Open or create the journal at ``path`` (mode 0600), refusing if another process has it.

        It blocks (the writer thread opens and migrates the database, fsyncs included): from async
        code, call it in a worker thread (``anyio.to_thread.run_sync``), as :class:`Claimer` does."""
        journal_path = Path(path)
        return cls(journal_path, lock_file(journal_path))

    def _new_run(self, conn: sqlite3.Connection) -> int:
        cursor = conn.execute("INSERT INTO runs (started_at, pid) VALUES (?, ?)", (time.time(), os.getpid()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class SqliteDatabase:
    """The journal file as the writer thread opens and commits it."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._identity = (0, 0)  # (device, inode) of the file opened: see _check_still_there

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            refuse_foreign(conn, self.path)  # before anything writes to a file that may not be ours
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            migrate(conn, self.path)
            self._identity = _identity(self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: sqlite3.Connection) -> None:
        self._check_still_there()
        conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.rollback()

    def close(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def retryable(self, exc: BaseException) -> bool:
        return False  # one writer (the file's lock): nothing concurrent to lose to

    def reconnect(self, exc: BaseException) -> sqlite3.Connection | None:
        return None  # a file is not lost and found again

    def journal_error(self, exc: BaseException) -> JournalError:
        return journal_error(self.path, exc)

    def _check_still_there(self) -> None:
        """A journal deleted or replaced under a run would take every later commit with it (SQLite
        writes on to the unlinked file): stop before a token is promised durable and is not."""
        try:
            same = _identity(self.path) == self._identity
        except FileNotFoundError:
            same = False
        if not same:
            raise OSError("it was deleted or replaced while this run was using it; nothing more is sent. Numbers "
                          "claimed so far stay on the target: a new run of the same inputs finds and adopts them")


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def journal_error(path: Path, exc: BaseException) -> JournalError:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return JournalError(f"journal {path} is corrupt or not a bulkclaim journal ({text}); "
                            "it was left untouched: move it aside to start over")
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in text:
        return JournalError(f"journal {path} is read-only ({text})")
    if "disk is full" in text or "disk I/O" in text:
        return JournalError(f"journal {path} cannot be written: {text}; free some space and run again")
    return JournalError(f"journal {path}: {text}")
