"""The durable journal: every number's client token is committed here before its first request.

SQLite in WAL mode with ``synchronous=FULL``. One writer thread owns the write connection; callers
hand it jobs and the thread runs every job waiting in its queue in *one* transaction (group commit),
so reserving tokens for a batch of numbers costs one fsync, and many concurrent library callers
share fsyncs too. Outcomes are handed over without waiting: losing the last few outcomes in a crash
only means the same token is sent again on resume, which the service answers idempotently.

A lock file beside the journal (``flock``, released by the kernel even on ``kill -9``) keeps a second
process out. The :class:`Journal` protocol is what the engine needs, so another backend can be added.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bulkclaim.journal_lazy import lazy_statements, run_statements
from bulkclaim.journal_plan import Planned, PlanResult, PlanReuse, plan_batch, planned_from_row
from bulkclaim.journal_schema import migrate, refuse_foreign
from bulkclaim.model import ClaimRequest, JournalError, Outcome, Rejected, Status, Target

__all__ = ["Journal", "LockHolder", "SqliteJournal", "lock_holder"]

_T = TypeVar("_T")
_MAX_GROUP = 2000


class Journal(Protocol):
    """What the engine needs from a journal."""

    async def begin_run(self) -> int: ...
    async def plan(self, requests: Sequence[ClaimRequest], run: int, *, retry_failed: bool,
                   dedupe: bool = True) -> PlanResult: ...
    async def record_rejected(self, rows: Sequence[Rejected], run: int) -> None: ...
    def record_attempt(self, planned: Planned, result: str, error_code: str | None) -> None: ...
    def record_outcome(self, outcome: Outcome) -> None: ...
    async def work_page(self, run: int, after: int, limit: int) -> tuple[list[Planned], int]: ...
    async def targets_to_reconcile(self, run: int) -> list[Target]: ...
    async def join_unsettled(self, run: int) -> list[tuple[str, str, str]]: ...
    async def known(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]: ...
    async def record_plan(self, run: int, fingerprint: str, duplicates: int) -> None: ...
    async def reuse_plan(self, fingerprint: str, run: int) -> PlanReuse | None: ...
    async def run_outcomes(self, run: int, after: int, limit: int) -> tuple[list[Outcome], int]: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


def _lock_path(journal: Path) -> Path:
    return Path(f"{journal}.lock")


@dataclass(frozen=True)
class LockHolder:
    """Whether a process has the journal open (holds its lock): ``held`` is None where this system
    cannot tell; ``pid`` is the holder's, when known."""

    held: bool | None
    pid: int | None = None


def lock_holder(journal: str | os.PathLike[str], *, expected_pid: int | None = None,
                proc_locks: str | os.PathLike[str] = "/proc/locks") -> LockHolder:
    """Who holds ``journal``'s lock, found *without* taking it (a ``status`` that took the lock even
    for a moment could make a claim starting at that moment refuse the journal).

    Linux lists every ``flock`` in /proc/locks as ``FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode>``.
    Under overlayfs (containers) the device there can differ from ``stat``'s, so an inode-only match
    counts when its pid is ``expected_pid`` (the pid the journal recorded for its latest run).
    Elsewhere (no /proc/locks) the answer is unknown.
    """
    try:
        found = os.stat(_lock_path(Path(journal)))
    except FileNotFoundError:
        return LockHolder(False)
    except OSError:
        return LockHolder(None)
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as handle:
            table = handle.read()
    except OSError:
        return LockHolder(None)
    exact = f"{os.major(found.st_dev):02x}:{os.minor(found.st_dev):02x}:{found.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:  # "->": a waiter, not the holder
            continue
        pid, where = int(fields[4]), fields[5]
        if where == exact or (where.rsplit(":", 1)[-1] == str(found.st_ino) and pid == expected_pid):
            return LockHolder(True, pid)
    return LockHolder(False)


@dataclass
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    done: Callable[[Any, BaseException | None], None] | None


class SqliteJournal:
    """The SQLite journal. Open it with :meth:`open`; one process at a time."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._identity = (0, 0)  # (device, inode) of the file opened: see _check_still_there
        self._lazy_attempts: list[tuple[Any, ...]] = []
        self._lazy_outcomes: list[tuple[Any, ...]] = []
        self._lazy_since = time.monotonic()
        self._runs_begun: set[int] = set()  # runs of this process: their numbers may be in flight now
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._writer, name="bulkclaim-journal", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._release_lock()
            raise self._failure

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteJournal:
        """Open or create the journal at ``path`` (mode 0600), refusing if another process has it."""
        journal_path = Path(path)
        try:
            lock_fd = os.open(_lock_path(journal_path), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot create the journal lock {journal_path}.lock: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise JournalError(f"journal {journal_path} is in use by another bulkclaim process; "
                               "wait for it to finish (or stop it) and run again") from None
        return cls(journal_path, lock_fd)

    # -- the writer thread ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
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

    def _writer(self) -> None:
        try:
            conn = self._connect()
        except JournalError as exc:
            self._failure = exc
        except (sqlite3.Error, OSError) as exc:
            self._failure = _journal_error(self.path, exc)
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

    def _run_group(self, conn: sqlite3.Connection, group: list[_Job]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        if self._failure is None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for job in group:
                    results.append(_run_job(conn, job))
                self._check_still_there()
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._failure = _journal_error(self.path, exc)
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

    async def _submit(self, run: Callable[[sqlite3.Connection], _T]) -> _T:
        self._ship()  # everything recorded before this job is written before it
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            def apply() -> None:
                if future.done():
                    return  # the waiter was cancelled; the work itself is committed regardless
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)
            loop.call_soon_threadsafe(apply)

        self._put(_Job(run, settle))
        return await future

    def _put(self, job: _Job) -> None:
        self._raise_if_broken()
        self._jobs.put(job)

    def _raise_if_broken(self) -> None:
        """Fail fast once a write failed (a full disk, say): claims must not go on unrecorded."""
        if self._failure is not None:
            raise self._failure
        if not self._thread.is_alive():
            raise JournalError(f"journal {self.path} is closed")

    # -- the Journal protocol --------------------------------------------------------------------------
    async def begin_run(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.execute("INSERT INTO runs (started_at, pid) VALUES (?, ?)", (time.time(), os.getpid()))
            assert cursor.lastrowid is not None
            return cursor.lastrowid
        begun = await self._submit(run)
        self._runs_begun.add(begun)
        return begun

    async def plan(self, requests: Sequence[ClaimRequest], run: int, *, retry_failed: bool,
                   dedupe: bool = True) -> PlanResult:
        """Reserve tokens for new numbers (durably, before this returns) and sort the rest.

        With ``dedupe`` a number met twice in one run is a duplicate; without it (one-off library
        claims) it is simply looked up again."""
        return await self._submit(lambda conn: plan_batch(conn, requests, run, retry_failed, dedupe))

    async def record_rejected(self, rows: Sequence[Rejected], run: int) -> None:
        values = [(run, r.source, r.raw, r.reason, r.target.key if r.target else None, time.time()) for r in rows]
        await self._submit(lambda conn: conn.executemany(
            "INSERT INTO rejected (run, source, raw, reason, target, at) VALUES (?, ?, ?, ?, ?, ?)", values))

    # Attempts and outcomes are committed lazily (DESIGN §3: a lost outcome only means the same token
    # is sent again). They are buffered and handed to the writer as one job per batch, or before any
    # other job so that every later read sees them: one job per claim would cost more than the claim.
    def record_attempt(self, planned: Planned, result: str, error_code: str | None) -> None:
        self._lazy_attempts.append((planned.request.target.key, planned.request.phone_number, planned.client_token,
                                    time.time(), result, error_code))
        self._ship_if_due()

    def record_outcome(self, outcome: Outcome) -> None:
        self._lazy_outcomes.append((outcome.status.value, outcome.attempts, outcome.phone_number_id,
                                    outcome.phone_number_arn, outcome.error_code, outcome.error_message,
                                    outcome.updated_at or time.time(), outcome.target, outcome.phone_number,
                                    outcome.client_token))
        self._ship_if_due()

    def _ship_if_due(self) -> None:
        self._raise_if_broken()
        waiting = len(self._lazy_attempts) + len(self._lazy_outcomes)
        if waiting >= _LAZY_BATCH or (waiting and time.monotonic() - self._lazy_since >= _LAZY_MAX_AGE):
            self._ship()

    def _ship(self) -> None:
        attempts, outcomes = self._lazy_attempts, self._lazy_outcomes
        self._lazy_attempts, self._lazy_outcomes, self._lazy_since = [], [], time.monotonic()
        if attempts or outcomes:
            statements = lazy_statements(attempts, outcomes)  # here, so the writer only runs them
            self._put(_Job(lambda conn: run_statements(conn, statements), None))

    async def work_page(self, run: int, after: int, limit: int) -> tuple[list[Planned], int]:
        """The next ``limit`` numbers of ``run`` still to send or verify, in input order after ``after``."""
        def query(conn: sqlite3.Connection) -> tuple[list[Planned], int]:
            rows = conn.execute(
                "SELECT ord, target, phone_number, description, tags, source, client_token, status, attempts, "
                "maybe_sent, phone_number_id, phone_number_arn FROM numbers "
                "WHERE seen_run=? AND ord>? AND status IN ('pending', 'in_progress') ORDER BY ord LIMIT ?",
                (run, after, limit)).fetchall()
            targets: dict[str, Target] = {}
            return [planned_from_row(r[1:], targets) for r in rows], (rows[-1][0] if rows else after)
        return await self._submit(query)

    async def known(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (target, number) keys the journal already has."""
        def query(conn: sqlite3.Connection) -> set[tuple[str, str]]:
            found: set[tuple[str, str]] = set()
            by_target: dict[str, list[str]] = {}
            for target, number in keys:
                by_target.setdefault(target, []).append(number)
            for target, numbers in by_target.items():
                for start in range(0, len(numbers), 900):
                    chunk = numbers[start:start + 900]
                    found.update((target, n) for (n,) in conn.execute(
                        f"SELECT phone_number FROM numbers WHERE target=? AND phone_number IN "
                        f"({','.join('?' * len(chunk))})", (target, *chunk)))
            return found
        return await self._submit(query)

    async def targets_to_reconcile(self, run: int) -> list[Target]:
        """Targets holding numbers of ``run`` that an earlier run may have sent (outcome unknown)."""
        rows = await self._submit(lambda conn: conn.execute(
            "SELECT DISTINCT target FROM numbers WHERE seen_run=? AND status='pending' AND maybe_sent=1",
            (run,)).fetchall())
        return [Target.from_key(row[0]) for row in rows]

    async def join_unsettled(self, run: int) -> list[tuple[str, str, str]]:
        """Numbers of ``run``'s targets that an earlier run left unsettled with a token that may have been
        sent (``in_progress``; or ``pending`` after an attempt, or from a run whose process died before
        closing the journal) and that ``run`` does not have: its input no longer names them. They join
        ``run`` after its own numbers (``seen_run``, ``ord``), marked possibly sent, so that they are
        settled, counted and reported with it. Numbers of runs this process began are
        left alone (a concurrent claim of this process may be sending them). Any plan of ``run``'s
        numbers stops being reusable (its members changed). Returns (target, number, status) of each."""
        mine = sorted(self._runs_begun | {run})

        def join(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
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
        return await self._submit(join)

    async def record_plan(self, run: int, fingerprint: str, duplicates: int) -> None:
        """Remember that ``run`` planned the inputs of ``fingerprint`` completely."""
        await self._submit(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO plans (run, fingerprint, members_run, members, duplicates) "
            "VALUES (?1, ?2, ?1, (SELECT count(*) FROM numbers WHERE seen_run=?1), ?3)",
            (run, fingerprint, duplicates)))

    async def reuse_plan(self, fingerprint: str, run: int) -> PlanReuse | None:
        """Take over the latest complete plan of the same inputs, if every number of it is still
        that plan's (no later run has taken one of them into its own input). Nothing is rewritten:
        ``run`` records that its numbers are those of the earlier run (``members_run``), and only
        pending ones are marked as possibly sent. ``None``: plan the inputs row by row instead."""
        def take_over(conn: sqlite3.Connection) -> PlanReuse | None:
            found = conn.execute("SELECT members_run, members, duplicates FROM plans WHERE fingerprint=? "
                                 "ORDER BY run DESC LIMIT 1", (fingerprint,)).fetchone()
            if found is None:
                return None
            members_run, members, duplicates = found
            statuses = dict(conn.execute("SELECT status, count(*) FROM numbers WHERE seen_run=? GROUP BY status",
                                         (members_run,)).fetchall())
            if sum(statuses.values()) != members:
                return None
            conn.execute("UPDATE numbers SET maybe_sent=1 WHERE seen_run=? AND status='pending' AND maybe_sent=0",
                         (members_run,))
            conn.execute("INSERT INTO plans (run, fingerprint, members_run, members, duplicates) "
                         "VALUES (?, ?, ?, ?, ?)", (run, fingerprint, members_run, members, duplicates))
            (invalid,) = conn.execute("SELECT count(*) FROM rejected WHERE run=?", (members_run,)).fetchone()
            return PlanReuse(members_run, statuses, invalid, duplicates)
        return await self._submit(take_over)

    async def run_outcomes(self, run: int, after: int, limit: int) -> tuple[list[Outcome], int]:
        """The numbers of ``run`` that are done (claimed / failed / released), in input order after ``after``."""
        def query(conn: sqlite3.Connection) -> tuple[list[Outcome], int]:
            rows = conn.execute(
                "SELECT ord, phone_number, source, target, status, phone_number_id, phone_number_arn, client_token, "
                "attempts, error_code, error_message, updated_at, seen_run FROM numbers WHERE seen_run=? AND ord>? "
                "AND status IN ('claimed', 'failed', 'released') ORDER BY ord LIMIT ?", (run, after, limit)).fetchall()
            outcomes = [Outcome(r[1], r[2] or "", r[3], Status(r[4]), *r[5:]) for r in rows]
            return outcomes, (rows[-1][0] if rows else after)
        return await self._submit(query)

    async def execute(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``job`` in the writer thread, inside a group transaction; its result once committed."""
        return await self._submit(job)

    async def flush(self) -> None:
        """Wait until everything handed over so far is committed."""
        await self._submit(lambda conn: None)

    async def _end_runs(self) -> None:
        """Everything this process recorded is committed: mark its runs ended cleanly (see join_unsettled)."""
        runs, now = sorted(self._runs_begun), time.time()
        await self._submit(lambda conn: conn.executemany("UPDATE runs SET ended_at=? WHERE id=?",
                                                         [(now, run) for run in runs]))

    async def close(self) -> None:
        if self._thread.is_alive():
            await self._end_runs() if self._failure is None else None
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


_LAZY_BATCH = 512  # records per lazy write: one transaction, a few multi-row statements
_LAZY_MAX_AGE = 0.5  # seconds a lazy record may wait for company before it is written anyway


def _run_job(conn: sqlite3.Connection, job: _Job) -> tuple[Any, BaseException | None]:
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


def _journal_error(path: Path, exc: BaseException) -> JournalError:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return JournalError(f"journal {path} is corrupt or not a bulkclaim journal ({text}); "
                            "it was left untouched: move it aside to start over")
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in text:
        return JournalError(f"journal {path} is read-only ({text})")
    if "disk is full" in text or "disk I/O" in text:
        return JournalError(f"journal {path} cannot be written: {text}; free some space and run again")
    return JournalError(f"journal {path}: {text}")
