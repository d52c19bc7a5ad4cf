"""The PostgreSQL journal: SQLite's journal (``base``: one writer thread, group commit, lazy
attempts and outcomes, the shared SQL) on a PostgreSQL connection.

What is PostgreSQL's own: several processes may open one journal at once (``exclusive`` is False),
so every write that hands out a token is guarded against a concurrent planner (see
``planning.plan_batch``); each run's process holds a session advisory lock on the run while it has
the journal open, which is how ``status`` tells that it is live and how a new run tells the runs
whose numbers may be in flight (``live_runs``) from those whose process died. A token is durable
when ``plan`` returns: the writer's session commits with ``synchronous_commit=on``.

Several processes started on the same inputs join one run and split it (``leases``): the first to
plan the inputs plans them (``planning`` holds a lock per inputs' fingerprint meanwhile), the later
ones join its plan (``join_plan``), and each leases the numbers it sends a few at a time.
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import anyio

from bulkclaim.journal import planning
from bulkclaim.journal.base import SqlJournal
from bulkclaim.journal.postgres import leases
from bulkclaim.journal.postgres.budget import Budgets
from bulkclaim.journal.postgres.connection import Location, PgConnection, connect, driver, parse_url
from bulkclaim.journal.postgres.schema import live_runs, migrate
from bulkclaim.journal.writer import Job
from bulkclaim.model import JournalError, Outcome, Planned, PlanReuse, Status
from bulkclaim.ratelimit import SharedBuckets, Sleep

__all__ = ["PostgresDatabase", "PostgresJournal"]

_RECONNECT_EVERY = 0.5  # seconds between tries to reach a lost server


class PostgresJournal(SqlJournal[PgConnection]):
    """The PostgreSQL journal. Open it with :meth:`open`; processes may share it."""

    exclusive = False
    _guarded = True

    def __init__(self, location: Location) -> None:
        self.location = location
        self.worker = leases.Heartbeat(location)  # this process as a worker (creating the journal if new)
        self._database = PostgresDatabase(location)
        try:
            super().__init__(self._database)
        except BaseException:
            self.worker.end()
            raise
        self._epochs: dict[tuple[str, str], int] = {}  # the lease each number of ours is worked under
        self.poll = min(1.0, location.lease_ttl / 4)  # how often a waiting worker looks again
        self._budgets: dict[str, Budgets] = {}
        self.takeovers = 0  # numbers this process took over from a dead worker

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
        self._database.session_locks.add((self.location.lock_key, int(run)))
        # this process's earlier run is over for it; what the runs that ended (or died) kept for their workers goes
        conn.execute("UPDATE workers SET run=NULL WHERE id=?", (self.worker.id,))
        leases.forget_ended_steps(conn)
        return int(run)

    def _runs_in_flight(self, conn: PgConnection) -> set[int]:
        """This process's runs and those of every other process that has the journal open now."""
        return super()._runs_in_flight(conn) | live_runs(conn, self.location)

    # -- sharing a run ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def planning(self, fingerprint: str | None) -> AsyncIterator[None]:
        """A session lock on the inputs' fingerprint while they are planned: a second process started on
        the same inputs waits here, then joins the first one's plan instead of planning them again."""
        if fingerprint is None:
            yield
            return
        key = (self.location.lock_key ^ 0x5A5A5A5A, zlib.crc32(fingerprint.encode()) & 0x7FFFFFFF)
        await self._submit(lambda conn: conn.execute("SELECT pg_advisory_lock(?, ?)", key))
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                if self._writer.running:
                    await self._submit(lambda conn: conn.execute("SELECT pg_advisory_unlock(?, ?)", key))

    async def join_plan(self, fingerprint: str, run: int) -> PlanReuse | None:
        joined = await self._submit(partial(planning.reuse_plan, fingerprint=fingerprint, run=run,
                                            live_workers_of=leases.LIVE_RUNS))
        if joined is not None:
            await self._submit(partial(leases.works_on, run=joined.members_run, worker=self.worker.id))
        return joined

    async def record_plan(self, run: int, fingerprint: str, duplicates: int) -> None:
        await super().record_plan(run, fingerprint, duplicates)
        await self._submit(partial(leases.works_on, run=run, worker=self.worker.id))

    async def reuse_plan(self, fingerprint: str, run: int) -> PlanReuse | None:
        reused = await super().reuse_plan(fingerprint, run)
        if reused is not None:  # a new run on the earlier one's plan: its run-wide steps are done again
            await self._submit(partial(leases.works_on, run=reused.members_run, worker=self.worker.id))
            await self._submit(partial(leases.forget_steps, run=reused.members_run))
        return reused

    async def work_page(self, run: int, after: int, limit: int) -> tuple[list[Planned], int]:
        """Lease the next ``limit`` numbers of ``run`` nobody alive holds (``after`` is not needed: a
        number leased once is not offered again to its owner, and a dead worker's come back)."""
        rows = await self._submit(partial(leases.pick, run=run, worker=self.worker.id, limit=limit))
        return self._picked(rows), after

    async def once(self, run: int, step: str, produce: Callable[[], Awaitable[str | None]], *,
                   stop: anyio.Event | None = None) -> str | None:
        """A run-wide step done by one worker (see the protocol): the worker holding the session lock
        on (``step``, ``run``) does it and keeps its result in ``meta``; the others poll, without
        blocking the writer, until the result is there, the lock is free (its holder died or was
        stopped: then one of them does the step) or ``stop`` is set (None: this worker stops waiting).
        A lost connection drops the lock with the session: the step may then be done twice, which
        costs requests, never correctness."""
        key = (self.location.lock_key ^ (zlib.crc32(step.encode()) & 0x7FFFFFFF), run)
        waiting = False
        while True:
            done = await self._submit(partial(leases.step_result, run=run, step=step))
            if done is not None:
                return done
            if await self._submit(lambda conn: conn.execute("SELECT pg_try_advisory_lock(?, ?)", key).fetchone()[0]):
                break
            if not waiting:
                waiting = True
                _log("run.waiting", run=run, step=step, note="another worker of the run is doing this step")
            if stop is None:
                await anyio.sleep(self.poll)
                continue
            with anyio.move_on_after(self.poll):
                await stop.wait()
            if stop.is_set():
                return None
        try:
            done = await self._submit(partial(leases.step_result, run=run, step=step))
            if done is None and (done := await produce()) is not None:
                await self._submit(partial(leases.keep_step, run=run, step=step, result=done))
            return done
        finally:
            with anyio.CancelScope(shield=True):
                if self._writer.running:
                    await self._submit(lambda conn: conn.execute("SELECT pg_advisory_unlock(?, ?)", key))

    async def more_work(self, run: int, *, idle: bool) -> bool:
        if await self._submit(partial(leases.more_work, run=run, worker=self.worker.id, idle=idle)):
            await anyio.sleep(self.poll)
            return True
        return False

    async def take_over(self, run: int) -> list[Planned]:
        await anyio.sleep(self.poll)
        with anyio.CancelScope(shield=True):  # what is leased is returned, never dropped on the way
            rows = await self._submit(partial(leases.pick, run=run, worker=self.worker.id, limit=0))
        return self._picked(rows)

    async def lease(self, planned: Planned) -> Planned | Outcome:
        """Wait until no live worker holds ``planned``'s number, then hold it; its outcome instead if
        another worker finished it meanwhile (replicas of a service claiming the same number)."""
        target, number = planned.request.key
        while True:
            row = await self._submit(partial(leases.lease_one, target=target, number=number, worker=self.worker.id))
            if row is not None:
                return self._leased(row)
            page = await self._submit(lambda conn: planning.lookup(
                conn, [(target, number)], "source, target, status, phone_number_id, phone_number_arn, client_token, "
                "attempts, error_code, error_message, updated_at, seen_run"))
            fields = page.get((target, number))
            if fields is not None and Status(fields[2]) in (Status.CLAIMED, Status.FAILED, Status.RELEASED):
                return Outcome(number, fields[0] or "", fields[1], Status(fields[2]), *fields[3:])
            await anyio.sleep(self.poll)

    def unlease(self, planned: Planned) -> None:
        key = planned.request.key
        epoch = self._epochs.pop(key, None)
        if epoch is not None:  # after the outcome (the lazy writes go first): the next holder sees it
            self._lazy.ship()
            self._writer.put(Job(partial(leases.unlease, target=key[0], number=key[1], worker=self.worker.id,
                                         epoch=epoch), None))

    def shared_budget(self, scope: str, *, sleep: Sleep, clock: Callable[[], float]) -> SharedBuckets | None:
        """One rate budget per (``scope``, API) for every worker of this journal (see ``budget``)."""
        budgets = self._budgets.get(scope)
        if budgets is None:
            budgets = self._budgets[scope] = Budgets(self.location, scope, sleep=sleep, clock=clock)
        return budgets

    def _picked(self, rows: list[tuple[object, ...]]) -> list[Planned]:
        """Rows of ``leases.pick``; counts the take-overs."""
        self.takeovers += sum(1 for row in rows if row[-1])
        return [self._leased(row[:-1]) for row in rows]

    def _leased(self, row: tuple[object, ...]) -> Planned:
        planned = planning.planned_from_row(row[:-1])
        self._epochs[planned.request.key] = int(row[-1])  # type: ignore[call-overload]
        return planned

    def _outcome_row(self, outcome: Outcome) -> tuple[object, ...]:
        key = (outcome.target, outcome.phone_number)
        epoch = self._epochs.get(key)
        if outcome.status in (Status.CLAIMED, Status.FAILED):
            self._epochs.pop(key, None)
        return (*super()._outcome_row(outcome), epoch)

    async def close(self) -> None:
        """Close the journal (everything recorded is committed first), then end this worker: what it
        did not finish may be taken over by the others at once."""
        try:
            await super().close()
        finally:
            with anyio.CancelScope(shield=True):
                for budgets in self._budgets.values():
                    await budgets.aclose()
                await anyio.to_thread.run_sync(self.worker.end)


def _log(event: str, **fields: object) -> None:
    import structlog  # not at import time: ``bulkclaim --help`` loads no logging library

    structlog.get_logger("bulkclaim").info(event, **fields)


class PostgresDatabase:
    """A journal's PostgreSQL database as the writer thread opens and commits it."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.name = location.name
        psycopg = driver()
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self._retryable = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
        self.session_locks: set[tuple[int, int]] = set()  # taken again on a new connection

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

    def reconnect(self, exc: BaseException) -> PgConnection | None:
        """After a lost connection (OperationalError), a new one once the server answers again, within
        the URL's ``reconnect_timeout``; this process's session locks (its runs) are taken again.
        Meanwhile the writer's jobs wait, and nothing is sent (the shared budget fails closed)."""
        if not isinstance(exc, driver().OperationalError) or self.location.reconnect_timeout <= 0:
            return None
        deadline = time.monotonic() + self.location.reconnect_timeout
        while time.monotonic() < deadline:
            time.sleep(_RECONNECT_EVERY)
            try:
                conn = self.connect()
            except JournalError:
                continue
            except self.errors:
                continue
            for key in self.session_locks:
                conn.execute("SELECT pg_try_advisory_lock(?, ?)", key)
            return conn
        return None

    def journal_error(self, exc: BaseException) -> JournalError:
        text = str(exc).strip()
        if isinstance(exc, driver().OperationalError):
            return JournalError(f"journal {self.name}: lost PostgreSQL ({text}); nothing more is sent. Every token "
                                "committed so far is kept: run the same command again once the database is back")
        return JournalError(f"journal {self.name}: {text}")
