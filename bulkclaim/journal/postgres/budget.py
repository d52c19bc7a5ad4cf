"""One rate budget per (Region, endpoint, API) shared by every worker of a PostgreSQL journal.

A :class:`SharedBucket` is the bucket of a :class:`~bulkclaim.ratelimit.Limiter` (the engine takes a
send slot from it as from its own :class:`~bulkclaim.ratelimit.TokenBucket`) whose state is a row of
``rate_budget``: each slot is one statement (``budget_sql``) on the server's clock, and the 429s a
worker hears since its last slot go with it, cutting the rate every worker sends at. All the
buckets of one journal share one connection (:class:`Budgets`), on the event loop.

Fail closed: while the server cannot be reached no slot is handed out, so nothing is sent; the
bucket tries again every moment and the run goes on once the server is back. After the journal's
``reconnect_timeout`` it gives up with a JournalError (every token is kept in the journal).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple

import anyio

from bulkclaim.journal.postgres.budget_sql import RESERVE_CALL
from bulkclaim.journal.postgres.connection import Location, driver
from bulkclaim.model import JournalError
from bulkclaim.ratelimit import Sleep

__all__ = ["Budgets", "SharedBucket", "Slot"]

_DECREASE = 0.7
_SETTLE_INTERVALS = 6.0  # as ratelimit.AdaptiveRate
_RETRY = 0.5  # seconds between tries while the server is away
_MIN_SLEEP = 0.0005


class Budgets:
    """The shared buckets of one journal (``scope``: the Region and endpoint they are for) and their
    connection, opened on first use."""

    def __init__(self, location: Location, scope: str, *, sleep: Sleep = anyio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.location, self.scope, self.sleep, self.clock = location, scope, sleep, clock
        self._conn: Any = None
        self._lock = anyio.Lock(fast_acquire=True)

    def bucket(self, api: str, rate: float, burst: int) -> SharedBucket:
        return SharedBucket(self, f"{self.scope}/{api}", rate, burst)

    async def reserve(self, key: str, ceiling: float, burst: int, cuts: int, booked: float = math.inf) -> Slot:
        """Book one slot of ``key``'s bucket, telling it of ``cuts`` 429s (the latest of whose slots was
        booked at ``booked``, server time). Waits (sending nothing) while the server cannot be reached;
        JournalError after ``reconnect_timeout``."""
        psycopg = driver()
        away_since: float | None = None
        while True:
            try:
                async with self._lock:
                    conn = self._conn or await self._connect()
                    cursor = await conn.execute(RESERVE_CALL, (key, ceiling, burst, cuts, booked,
                                                               min(ceiling, 0.1), _DECREASE, _SETTLE_INTERVALS))
                    wait, rate, booked_at = await cursor.fetchone()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                await self._drop()
                now = self.clock()
                if away_since is None:
                    away_since = now
                    self._warn("journal.unreachable", error=str(exc).strip(),
                               consequence="nothing is sent until the journal's database is back")
                elif now - away_since > self.location.reconnect_timeout:
                    raise JournalError(f"journal {self.location.name}: the database was unreachable for "
                                       f"{now - away_since:.0f}s; nothing more is sent. Every token committed so "
                                       "far is kept: run the same command again once it is back") from None
                await self.sleep(_RETRY)
                continue
            if away_since is not None:
                self._warn("journal.reachable", after_seconds=round(self.clock() - away_since, 1))
            return Slot(float(wait), float(rate), float(booked_at))

    def _warn(self, event: str, **fields: Any) -> None:
        import structlog  # not at import time: ``bulkclaim --help`` loads no logging library

        structlog.get_logger("bulkclaim").warning(event, journal=self.location.name, **fields)

    async def _connect(self) -> Any:
        psycopg = driver()
        params = psycopg.conninfo.conninfo_to_dict(self.location.conninfo)
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "bulkclaim-budget")
        conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        await conn.execute(f'SET search_path TO "{self.location.schema}"')
        await conn.execute("SET synchronous_commit TO off")  # an unlogged row: a crash only refills it
        self._conn = conn
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close()
                except driver().Error:
                    pass

    async def aclose(self) -> None:
        await self._drop()


class Slot(NamedTuple):
    """A booked slot: seconds to wait before sending, the shared rate, when it was booked (server time)."""

    wait: float
    rate: float
    booked_at: float


#: when the slot the current task sends on was booked (each request is sent by its own task, which
#: hears its 429 after acquiring its slot: see ``calls.Api``); unknown: +inf, a 429 that cuts

_BOOKED: ContextVar[float] = ContextVar("bulkclaim_budget_booked", default=math.inf)


class SharedBucket:
    """A :class:`~bulkclaim.ratelimit.Limiter`'s bucket (and adaptive controller) drawn from the
    journal's ``rate_budget`` row ``key``: ``ceiling`` per second, ``burst`` at once, across every
    worker. A slot is used as soon as its wait is over."""

    def __init__(self, budgets: Budgets, key: str, ceiling: float, burst: int) -> None:
        self._budgets, self.key, self.ceiling, self.burst = budgets, key, ceiling, burst
        self._rate = ceiling  # the shared rate as the last slot found it
        self._cuts = 0  # 429s heard since the last slot: they go with the next one
        self._booked = -math.inf  # when the latest of their slots was booked

    @property
    def rate(self) -> float:
        return self._rate

    async def acquire(self) -> None:
        cuts, booked, self._cuts, self._booked = self._cuts, self._booked, 0, -math.inf
        try:
            slot = await self._budgets.reserve(self.key, self.ceiling, self.burst, cuts, booked)
        except BaseException:
            self._cuts += cuts  # not applied: keep them for the next slot
            self._booked = max(self._booked, booked)
            raise
        self._rate = slot.rate
        _BOOKED.set(slot.booked_at)
        if slot.wait >= _MIN_SLEEP:
            await self._budgets.sleep(slot.wait)

    def on_throttle(self) -> None:
        """A 429: the next slot of any worker's takes the shared rate down (AIMD, in the row), unless
        the throttled request's slot was booked before the last cut (then it is one of the same bunch)."""
        self._cuts += 1
        self._booked = max(self._booked, _BOOKED.get())

    def on_success(self) -> None:
        """Recovery is the row's own (a cubic curve in the server's time since the last cut)."""

