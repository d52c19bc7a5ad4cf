"""The SQLite journal: every number's client token is committed here before its first request.

SQLite in WAL mode with ``synchronous=FULL``. One writer thread owns the write connection (see
``writer``); callers hand it jobs and it commits every job waiting in its queue in *one*
transaction (group commit), so reserving tokens for a batch of numbers costs one fsync. Attempts and
outcomes are handed over without waiting (see ``lazy``): losing the last few in a crash only means the
same token is sent again on resume, which the service answers idempotently. One process at a time:
see ``lock``. The SQL lives in this package's modules by subject (``planning``, ``acquisitions``,
``releases``); this class is the :class:`~bulkclaim.journal.protocol.Journal` they make up.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio

from bulkclaim.journal import acquisitions, planning, releases
from bulkclaim.journal.lazy import LazyWrites, Statement, run_statements
from bulkclaim.journal.lock import lock_file
from bulkclaim.journal.writer import Job, Writer
from bulkclaim.model import (
    ClaimRequest,
    Outcome,
    Planned,
    PlanResult,
    PlanReuse,
    Rejected,
    Status,
    Target,
    ToRelease,
)

__all__ = ["SqliteJournal"]

_T = TypeVar("_T")


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
        return cls(journal_path, lock_file(journal_path))

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
        return await self._submit(lambda conn: planning.plan_batch(conn, requests, run, retry_failed, dedupe))

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
            return [planning.planned_from_row(r[1:], targets) for r in rows], (rows[-1][0] if rows else after)
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
        return await self._submit(partial(planning.join_unsettled, run=run, mine=sorted(self._runs_begun | {run})))

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
        return await self._submit(partial(planning.reuse_plan, fingerprint=fingerprint, run=run))

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

    # -- the quota preflight ---------------------------------------------------------------------------
    async def count_to_claim(self, run: int, target: str, owned: Collection[str]) -> int:
        def count(conn: sqlite3.Connection) -> int:
            rows = conn.execute("SELECT phone_number FROM numbers WHERE seen_run=? AND target=? "
                                "AND status='pending'", (run, target))
            return sum(1 for (number,) in rows if number not in owned)
        return await self._submit(count)

    async def defer_beyond(self, run: int, target: str, owned: Collection[str], allowed: int,
                           error: tuple[str, str]) -> None:
        def defer(conn: sqlite3.Connection) -> None:
            rows = [(number, bool(sent)) for number, sent in conn.execute(
                "SELECT phone_number, attempts > 0 OR maybe_sent FROM numbers WHERE seen_run=? AND target=? "
                "AND status='pending' ORDER BY ord", (run, target)) if number not in owned]
            room = allowed - sum(1 for _, sent in rows if sent)  # possibly sent: unknown, not failed; keeps its place
            left_out = [number for number, sent in rows if not sent][max(0, room):]
            conn.executemany("UPDATE numbers SET status='failed', error_code=?, error_message=?, updated_at=? "
                             "WHERE target=? AND phone_number=? AND status='pending'",
                             [(*error, time.time(), target, number) for number in left_out])
        await self._submit(defer)

    async def churn(self, target: str, now: float | None = None) -> int:
        return await self._submit(partial(releases.churn, target=target, now=now))

    # -- acquisitions and releases ---------------------------------------------------------------------
    async def acquisition_slots(self, name: str, target: str, params: str, count: int, *,
                                create: bool) -> list[tuple[int, Planned | None]]:
        return await self._submit(partial(acquisitions.read_slots, name=name, target=target, params=params,
                                          count=count, create=create))

    async def assign_candidate(self, name: str, slot: int, expected: str | None, request: ClaimRequest,
                               run: int) -> Planned | None:
        return await self._submit(partial(acquisitions.assign_candidate, name=name, slot=slot, expected=expected,
                                          request=request, run=run))

    async def slot_outcomes(self, name: str) -> list[Outcome]:
        return await self._submit(partial(acquisitions.slot_outcomes, name=name))

    async def release_token(self, number: ToRelease) -> str:
        return await self._submit(partial(releases.release_token, number=number))

    async def record_release(self, number: ToRelease, status: str, error: tuple[str, str] | None) -> None:
        await self._submit(partial(releases.record_release, number=number, status=status, error=error))

    # -- lifecycle -------------------------------------------------------------------------------------
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
