"""The journal's writer thread: it owns the one write connection and commits in groups.

The thread opens the database through its backend's :class:`Database` (which refuses what is not a
bulkclaim journal and migrates), then runs every job waiting in its queue in *one* transaction (group
commit): reserving tokens for a batch of numbers costs one commit, and many concurrent library callers
share commits too. Every way the thread can end, opening included, is reported to whoever waits on
it: ``Writer()`` raises the opening's failure, and queued jobs fail with the journal's error rather
than hang. Both backends use it: only :class:`Database` differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import anyio

from bulkclaim.journal.sql import ConnectionT
from bulkclaim.model import JournalError

__all__ = ["Database", "Job", "Writer"]

_T = TypeVar("_T")
_MAX_GROUP = 2000
_TRIES = 3  # a group the database asks to run again (a deadlock, a serialization failure) runs this often
_RECONNECTS = 5  # times a group runs again on a new connection after losing the database


class Database(Protocol[ConnectionT]):
    """One backend's database as the writer thread sees it."""

    #: what messages call the journal (a path; a URL without its password)
    name: str
    #: the exceptions that mean the database failed (they fail the whole group, and the journal)
    errors: tuple[type[BaseException], ...]

    def connect(self) -> ConnectionT:
        """Open the database (in the writer thread), refusing one that is not a bulkclaim journal, and
        create or migrate the schema. Raises JournalError."""
        ...

    def begin(self, conn: ConnectionT) -> None: ...

    def commit(self, conn: ConnectionT) -> None:
        """Commit the group (raising, before committing, if the journal must not be written)."""
        ...

    def rollback(self, conn: ConnectionT) -> None: ...

    def close(self, conn: ConnectionT) -> None: ...

    def journal_error(self, exc: BaseException) -> JournalError:
        """``exc`` (one of ``errors``) as a message for the user."""
        ...

    def retryable(self, exc: BaseException) -> bool:
        """Whether the group failed only because of a concurrent transaction and may run again."""
        ...

    def reconnect(self, exc: BaseException) -> ConnectionT | None:
        """If ``exc`` means the connection was lost (a server restarted, a failover), a new one once the
        database answers again (blocking; the group then runs again on it); ``None``: ``exc`` fails
        the journal."""
        ...


@dataclass
class Job(Generic[ConnectionT]):
    run: Callable[[ConnectionT], Any]
    done: Callable[[Any, BaseException | None], None] | None


class Writer(Generic[ConnectionT]):
    """The writer thread of ``database``; constructing it opens the database (blocking)."""

    def __init__(self, database: Database[ConnectionT]) -> None:
        self.database = database
        self._jobs: queue.SimpleQueue[Job[ConnectionT] | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bulkclaim-journal {database.name}", daemon=True)
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

    def _run(self) -> None:
        database = self.database
        try:
            conn = database.connect()
        except JournalError as exc:
            self._failure = exc
        except database.errors as exc:
            self._failure = database.journal_error(exc)
        except BaseException as exc:  # anything else (a bug in a migration step): open() must not wait forever
            self._failure = JournalError(f"journal {database.name} could not be opened: {exc!r}")
        finally:
            self._ready.set()
        if self._failure is not None:
            return
        self._conn = conn
        try:
            self._serve()
        finally:
            database.close(self._conn)

    def _serve(self) -> None:
        try:
            self._serve_groups()
        except BaseException as exc:  # never leave a waiter behind: fail everything still queued
            self._failure = self._failure or JournalError(f"journal {self.database.name} writer stopped: {exc!r}")
            raise
        finally:
            self._fail_queued()

    def _fail_queued(self) -> None:
        closed = self._failure or JournalError(f"journal {self.database.name} is closed")
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.done is not None:
                job.done(None, closed)

    def _serve_groups(self) -> None:
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
            self._run_group(group)

    def _run_group(self, group: list[Job[ConnectionT]]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        database = self.database
        attempt = reconnects = 0
        while attempt < _TRIES and self._failure is None:
            attempt += 1
            conn = self._conn
            try:
                database.begin(conn)
                results = [_run_job(conn, job, database.errors) for job in group]
                database.commit(conn)
                break
            except database.errors as exc:
                with contextlib.suppress(*database.errors):
                    database.rollback(conn)
                if reconnects < _RECONNECTS and (fresh := database.reconnect(exc)) is not None:
                    with contextlib.suppress(*database.errors):
                        database.close(conn)
                    self._conn, attempt, reconnects = fresh, attempt - 1, reconnects + 1
                    continue  # the whole group again: nothing of it was committed, or all of it
                if attempt == _TRIES or not database.retryable(exc):
                    self._failure = database.journal_error(exc)
        if self._failure is not None:  # a failed journal fails every later job: never lose silently
            results = [(None, self._failure) for _ in group]
        for job, (value, error) in zip(group, results, strict=True):
            if job.done is not None:
                with contextlib.suppress(RuntimeError):  # the waiter's event loop is gone: nobody to tell
                    job.done(value, error)

    async def submit(self, run: Callable[[ConnectionT], _T]) -> _T:
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

    def put(self, job: Job[ConnectionT]) -> None:
        self.raise_if_broken()
        self._jobs.put(job)

    def raise_if_broken(self) -> None:
        """Fail fast once a write failed (a full disk, say): claims must not go on unrecorded."""
        if self._failure is not None:
            raise self._failure
        if not self._thread.is_alive():
            raise JournalError(f"journal {self.database.name} is closed")


def _run_job(conn: ConnectionT, job: Job[ConnectionT],
             errors: tuple[type[BaseException], ...]) -> tuple[Any, BaseException | None]:
    """Run one job in its own savepoint: a job that fails for its own reasons fails alone, and the
    rest of the group commits. Database errors (``errors``) still fail the whole group."""
    conn.execute("SAVEPOINT job")
    try:
        value = job.run(conn)
    except errors:
        raise
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return None, exc
    conn.execute("RELEASE job")
    return value, None
