"""The durable journal: every number's client token is committed here before its first request.

SQLite in WAL mode with ``synchronous=FULL``. One writer thread owns the write connection (see
``journal_writer``); callers hand it jobs and it commits every job waiting in its queue in *one*
transaction (group commit), so reserving tokens for a batch of numbers costs one fsync. Outcomes
are handed over without waiting: losing the last few outcomes in a crash only means the same token
is sent again on resume, which the service answers idempotently.

An exclusive ``flock`` on the database file itself (released by the kernel even on ``kill -9``) keeps
a second process out, whatever path it comes by: a hard link or a symlink is the same file, and there
is no lock file to delete. SQLite's own locks are POSIX ``fcntl`` locks, which are independent of
``flock`` on Linux and on local filesystems elsewhere, so the two never interfere; readers (``status``,
``report``) take no ``flock`` and read beside a run. (On NFS, Linux emulates ``flock`` with ``fcntl``
locks: SQLite on NFS is not supported anyway.) The :class:`Journal` protocol is what the engine needs,
so another backend can be added.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import anyio

from bulkclaim.journal_lazy import LazyWrites, Statement, run_statements
from bulkclaim.journal_plan import Planned, PlanResult, PlanReuse, plan_batch, planned_from_row
from bulkclaim.journal_writer import Job, Writer
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
        found = os.stat(journal)  # the lock is on the journal file itself
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


class SqliteJournal:
    """The SQLite journal. Open it with :meth:`open`; one process at a time."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._runs_begun: set[int] = set()  # runs of this process: their numbers may be in flight now
        self._lazy = LazyWrites(self._put_statements)
        try:
            self._writer = Writer(path)
        except BaseException:
            self._release_lock()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteJournal:
        """Open or create the journal at ``path`` (mode 0600), refusing if another process has it.

        It blocks (the writer thread opens and migrates the database, fsyncs included): from async
        code, call it in a worker thread (``anyio.to_thread.run_sync``), as :class:`Claimer` does."""
        journal_path = Path(path)
        return cls(journal_path, _lock(journal_path))

    async def _submit(self, run: Callable[[sqlite3.Connection], _T]) -> _T:
        self._lazy.ship()  # everything recorded before this job is written before it
        return await self._writer.submit(run)

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
    # is sent again). They are buffered and handed to the writer as one job per batch, before any
    # other job so that every later read sees them, or when the oldest has waited its maximum age
    # (see LazyWrites): one job per claim would cost more than the claim.
    def record_attempt(self, planned: Planned, result: str, error_code: str | None) -> None:
        self._writer.raise_if_broken()
        self._lazy.add_attempt((planned.request.target.key, planned.request.phone_number, planned.client_token,
                                time.time(), result, error_code))

    def record_outcome(self, outcome: Outcome) -> None:
        self._writer.raise_if_broken()
        self._lazy.add_outcome((outcome.status.value, outcome.attempts, outcome.phone_number_id,
                                outcome.phone_number_arn, outcome.error_code, outcome.error_message,
                                outcome.updated_at or time.time(), outcome.target, outcome.phone_number,
                                outcome.client_token))

    def _put_statements(self, statements: list[Statement]) -> None:
        self._writer.put(Job(lambda conn: run_statements(conn, statements), None))

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
                "attempts, error_code, error_message, updated_at FROM numbers WHERE seen_run=? AND ord>? "
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
        """Write what is buffered, stop the writer thread and release the lock. Shielded from
        cancellation: a cancelled caller still leaves the journal closed and free for the next open."""
        with anyio.CancelScope(shield=True):
            try:
                if self._writer.running:  # a failed write raises here, after the finally below
                    await self._end_runs()  # commits everything before it, then marks the runs ended
            finally:
                self._lazy.cancel_timer()
                await self._writer.stop()
                self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock(path: Path) -> int:
    """Open the journal file itself (created 0600 if missing) and take an exclusive ``flock`` on it; the
    descriptor holds the lock until it is closed. A file we may only read is locked through a read-only
    descriptor (SQLite then says it is read-only)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM) or not path.is_file():
            raise JournalError(f"cannot open the journal {path}: {exc.strerror}") from None
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"journal {path} is in use by another bulkclaim process; "
                           "wait for it to finish (or stop it) and run again") from None
    return fd
