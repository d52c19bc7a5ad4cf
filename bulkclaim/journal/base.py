"""The :class:`~bulkclaim.journal.protocol.Journal` both backends are: everything but opening.

A journal is a writer thread (``writer``: group commit) plus lazy attempts and outcomes (``lazy``);
every method hands the writer a job of the shared SQL (see ``sql``). A backend subclass opens its
database, gives run ids (:meth:`SqlJournal._new_run`), says which runs may have numbers in flight
(:meth:`SqlJournal._runs_in_flight`) and what closing releases.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import ClassVar, Generic, TypeVar

import anyio

from bulkclaim.journal import acquisitions, flows, planning, releases
from bulkclaim.journal.lazy import LazyWrites, Statement, run_statements
from bulkclaim.journal.sql import ConnectionT
from bulkclaim.journal.writer import Database, Job, Writer
from bulkclaim.model import (
    ClaimRequest,
    Outcome,
    Planned,
    PlanResult,
    PlanReuse,
    Rejected,
    Target,
    ToRelease,
)
from bulkclaim.ratelimit import SharedBuckets, Sleep

__all__ = ["SqlJournal"]

_T = TypeVar("_T")


class SqlJournal(Generic[ConnectionT]):
    """A journal served by one writer thread over ``database``; see the backends for opening one."""

    #: one process at a time (a second open is refused); False: processes share the journal (and runs)
    exclusive: ClassVar[bool] = True
    #: numbers taken over from a dead worker (only a shared journal's workers die holding numbers)
    takeovers = 0
    #: outcomes are written only under the lease they were worked under (see ``lazy``)
    _guarded: ClassVar[bool] = False

    def __init__(self, database: Database[ConnectionT]) -> None:
        self._runs_begun: set[int] = set()  # runs of this process: their numbers may be in flight now
        self._lazy = LazyWrites(self._put_statements, guarded=self._guarded)
        self._writer = Writer(database)

    @property
    def name(self) -> str:
        """What messages call this journal (a path, or a URL without its password)."""
        return self._writer.database.name

    async def _submit(self, run: Callable[[ConnectionT], _T]) -> _T:
        self._lazy.ship()  # everything recorded before this job is written before it
        return await self._writer.submit(run)

    def _new_run(self, conn: ConnectionT) -> int:
        """Record a new run (in the writer thread) and return its id."""
        raise NotImplementedError

    def _runs_in_flight(self, conn: ConnectionT) -> set[int]:
        """Runs whose numbers may be being sent right now: this process's (see join_unsettled)."""
        return set(self._runs_begun)

    # -- the Journal protocol --------------------------------------------------------------------------
    async def begin_run(self) -> int:
        begun = await self._submit(self._new_run)
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
        self._lazy.add_outcome(self._outcome_row(outcome))

    def _outcome_row(self, outcome: Outcome) -> tuple[object, ...]:
        return (outcome.status.value, outcome.attempts, outcome.phone_number_id, outcome.phone_number_arn,
                outcome.error_code, outcome.error_message, outcome.updated_at or time.time(), outcome.target,
                outcome.phone_number, outcome.client_token)

    def _put_statements(self, statements: list[Statement]) -> None:
        self._writer.put(Job(lambda conn: run_statements(conn, statements), None))

    async def work_page(self, run: int, after: int, limit: int) -> tuple[list[Planned], int]:
        """The next ``limit`` numbers of ``run`` still to send or verify, in input order after ``after``."""
        def query(conn: ConnectionT) -> tuple[list[Planned], int]:
            rows = conn.execute(
                f"SELECT ord, {planning.PLANNED_COLUMNS} FROM numbers "
                "WHERE seen_run=? AND ord>? AND status IN ('pending', 'in_progress') ORDER BY ord LIMIT ?",
                (run, after, limit)).fetchall()
            targets: dict[str, Target] = {}
            return [planning.planned_from_row(r[1:], targets) for r in rows], (rows[-1][0] if rows else after)
        return await self._submit(query)

    async def known(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (target, number) keys the journal already has."""
        return await self._submit(lambda conn: set(planning.lookup(conn, keys, "1")))

    async def targets_to_reconcile(self, run: int) -> list[Target]:
        """Targets holding numbers of ``run`` that an earlier run may have sent (outcome unknown)."""
        rows = await self._submit(lambda conn: conn.execute(
            "SELECT DISTINCT target FROM numbers WHERE seen_run=? AND status='pending' AND maybe_sent=1 "
            "ORDER BY target", (run,)).fetchall())
        return [Target.from_key(row[0]) for row in rows]

    async def join_unsettled(self, run: int) -> list[tuple[str, str, str]]:
        """Numbers of ``run``'s targets that an earlier run left unsettled with a token that may have been
        sent (``in_progress``; or ``pending`` after an attempt, or from a run whose process died before
        closing the journal) and that ``run`` does not have: its input no longer names them. They join
        ``run`` after its own numbers (``seen_run``, ``ord``), marked possibly sent, so that they are
        settled, counted and reported with it. Numbers of runs whose process may be sending them now
        are left alone. Any plan of ``run``'s numbers stops being reusable (its members changed).
        Returns (target, number, status) of each."""
        return await self._submit(lambda conn: planning.join_unsettled(
            conn, run, sorted(self._runs_in_flight(conn) | {run})))

    async def record_plan(self, run: int, fingerprint: str, duplicates: int) -> None:
        """Remember that ``run`` planned the inputs of ``fingerprint`` completely."""
        await self._submit(lambda conn: conn.execute(
            "INSERT INTO plans (run, fingerprint, members_run, members, duplicates) "
            "VALUES (?, ?, ?, (SELECT count(*) FROM numbers WHERE seen_run=?), ?) ON CONFLICT (run) DO UPDATE "
            "SET fingerprint=excluded.fingerprint, members_run=excluded.members_run, members=excluded.members, "
            "duplicates=excluded.duplicates", (run, fingerprint, run, run, duplicates)))

    async def reuse_plan(self, fingerprint: str, run: int) -> PlanReuse | None:
        """Take over the latest complete plan of the same inputs, if every number of it is still
        that plan's (no later run has taken one of them into its own input). Nothing is rewritten:
        ``run`` records that its numbers are those of the earlier run (``members_run``), and only
        pending ones are marked as possibly sent. ``None``: plan the inputs row by row instead."""
        return await self._submit(partial(planning.reuse_plan, fingerprint=fingerprint, run=run))

    async def run_outcomes(self, run: int, after: int, limit: int) -> tuple[list[Outcome], int]:
        """The numbers of ``run`` that are done (claimed / failed / released), in input order after ``after``."""
        return await self._submit(partial(flows.outcomes_page, run=run, after=after, limit=limit,
                                          where="status IN ('claimed', 'failed', 'released')"))

    async def flows_to_finish(self, run: int, after: int, limit: int) -> tuple[list[Outcome], int]:
        """The claimed numbers of ``run`` whose association is pending, in input order after ``after``."""
        return await self._submit(partial(flows.outcomes_page, run=run, after=after, limit=limit,
                                          where="status='claimed' AND flow_status='pending'"))

    async def record_flow(self, outcome: Outcome, attempts: int, error: tuple[str, str] | None) -> None:
        """A number's association result (``outcome.flow_status``; ``attempts`` requests made, the last
        ``error``), for the flow it was made with: a flow planned since by another run stays pending.
        Written now (after every lazy write before it): an association is one request, harmless to repeat."""
        await self._submit(partial(flows.record_flow, outcome=outcome, attempts=attempts, error=error))

    # -- sharing a run: only a shared journal (PostgreSQL) does anything here -------------------------
    @asynccontextmanager
    async def planning(self, fingerprint: str | None) -> AsyncIterator[None]:
        """Held while a run plans the inputs of ``fingerprint`` (see the protocol)."""
        yield

    async def join_plan(self, fingerprint: str, run: int) -> PlanReuse | None:
        return None

    async def once(self, run: int, step: str, produce: Callable[[], Awaitable[str | None]], *,
                   stop: anyio.Event | None = None) -> str | None:
        return await produce()

    async def more_work(self, run: int, *, idle: bool) -> bool:
        return False

    async def take_over(self, run: int) -> list[Planned]:
        return []

    async def lease(self, planned: Planned) -> Planned | Outcome:
        return planned

    def unlease(self, planned: Planned) -> None:
        return None

    def shared_budget(self, scope: str, *, sleep: Sleep, clock: Callable[[], float]) -> SharedBuckets | None:
        return None

    # -- the quota preflight ---------------------------------------------------------------------------
    async def count_to_claim(self, run: int, target: str, owned: Collection[str]) -> int:
        def count(conn: ConnectionT) -> int:
            rows = conn.execute("SELECT phone_number FROM numbers WHERE seen_run=? AND target=? "
                                "AND status='pending'", (run, target))
            return sum(1 for (number,) in rows if number not in owned)
        return await self._submit(count)

    async def defer_beyond(self, run: int, target: str, owned: Collection[str], allowed: int,
                           error: tuple[str, str]) -> None:
        def defer(conn: ConnectionT) -> None:
            rows = [(number, bool(sent)) for number, sent in conn.execute(
                "SELECT phone_number, attempts > 0 OR maybe_sent = 1 FROM numbers WHERE seen_run=? AND target=? "
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

    def _release(self) -> None:
        """What closing lets go of once the writer has stopped (SQLite: the file's lock)."""

    async def close(self) -> None:
        """Write what is buffered, stop the writer thread and let the next process in. Shielded from
        cancellation: a cancelled caller still leaves the journal closed and free for the next open."""
        with anyio.CancelScope(shield=True):
            try:
                if self._writer.running:  # a failed write raises here, after the finally below
                    await self._end_runs()  # commits everything before it, then marks the runs ended
            finally:
                self._lazy.cancel_timer()
                await self._writer.stop()
                self._release()
