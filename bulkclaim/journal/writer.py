"""The journal's writer thread: it owns the one write connection and commits in groups.

The thread opens the database (refusing a file that is not a bulkclaim journal, WAL, ``synchronous=FULL``,
migrations), then runs every job waiting in its queue in *one* transaction (group commit): reserving
tokens for a batch of numbers costs one fsync, and many concurrent library callers share fsyncs too.
Every way the thread can end, opening included, is reported to whoever waits on it: ``Writer()``
raises the opening's failure, and queued jobs fail with the journal's error rather than hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio

from bulkclaim.journal.schema import migrate, refuse_foreign
from bulkclaim.model import JournalError

__all__ = ["Job", "Writer", "journal_error"]

_T = TypeVar("_T")
_MAX_GROUP = 2000


@dataclass
class Job:
    run: Callable[[sqlite3.Connection], Any]
    done: Callable[[Any, BaseException | None], None] | None


class Writer:
    """The writer thread of the journal at ``path``; constructing it opens the database (blocking)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity = (0, 0)  # (device, inode) of the file opened: see _check_still_there
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bulkclaim-journal {path}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    @property
    def running(self) -> bool:
        """The thread is serving jobs: not stopped and no write has failed."""
        return self._failure is None and self._thread.is_alive()

    async def stop(self) -> None:
        """Let the thread finish what is queued and end; wait for it (in a worker thread)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            await anyio.to_thread.run_sync(self._thread.join)

    def _connect(self) -> sqlite3.Connection:
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

    def _run(self) -> None:
        try:
            conn = self._connect()
        except JournalError as exc:
            self._failure = exc
        except (sqlite3.Error, OSError) as exc:
            self._failure = journal_error(self.path, exc)
        except BaseException as exc:  # anything else (a bug in a migration step): open() must not wait forever
            self._failure = JournalError(f"journal {self.path} could not be opened: {exc!r}")
        finally:
            self._ready.set()
        if self._failure is not None:
            return
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        try:
            self._serve_groups(conn)
        except BaseException as exc:  # never leave a waiter behind: fail everything still queued
            self._failure = self._failure or JournalError(f"journal {self.path} writer stopped: {exc!r}")
            raise
        finally:
            self._fail_queued()

    def _fail_queued(self) -> None:
        closed = self._failure or JournalError(f"journal {self.path} is closed")
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.done is not None:
                job.done(None, closed)

    def _serve_groups(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            group = [first]
            while len(group) < _MAX_GROUP:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # finish this group, then stop
                    break
                group.append(job)
            self._run_group(conn, group)

    def _run_group(self, conn: sqlite3.Connection, group: list[Job]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        if self._failure is None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for job in group:
                    results.append(_run_job(conn, job))
                self._check_still_there()
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._failure = journal_error(self.path, exc)
                if conn.in_transaction:
                    conn.rollback()
        if self._failure is not None:  # a failed journal fails every later job: never lose silently
            results = [(None, self._failure) for _ in group]
        for job, (value, error) in zip(group, results, strict=True):
            if job.done is not None:
                with contextlib.suppress(RuntimeError):  # the waiter's event loop is gone: nobody to tell
                    job.done(value, error)

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

    async def submit(self, run: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``run`` in the writer thread, in the next group transaction; its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def deliver(value: Any, error: BaseException | None) -> None:
            def apply() -> None:
                if future.done():
                    return  # the waiter was cancelled; the work itself is committed regardless
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)
            loop.call_soon_threadsafe(apply)

        self.put(Job(run, deliver))
        return await future

    def put(self, job: Job) -> None:
        self.raise_if_broken()
        self._jobs.put(job)

    def raise_if_broken(self) -> None:
        """Fail fast once a write failed (a full disk, say): claims must not go on unrecorded."""
        if self._failure is not None:
            raise self._failure
        if not self._thread.is_alive():
            raise JournalError(f"journal {self.path} is closed")


def _run_job(conn: sqlite3.Connection, job: Job) -> tuple[Any, BaseException | None]:
    """Run one job in its own savepoint: a job that fails for its own reasons fails alone, and the
    rest of the group commits. Database errors still fail the whole group (the journal is broken)."""
    conn.execute("SAVEPOINT job")
    try:
        value = job.run(conn)
    except (sqlite3.Error, OSError):
        raise
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return None, exc
    conn.execute("RELEASE job")
    return value, None


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
