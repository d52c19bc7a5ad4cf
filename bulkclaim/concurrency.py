"""The engine's concurrency parts: the work queue its claim workers share, the record of a settle in
flight, and unwrapping the error that stopped a task group."""

from __future__ import annotations

import collections
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from bulkclaim.journal import Journal
from bulkclaim.journal_plan import Planned
from bulkclaim.model import FatalServiceError, Outcome

__all__ = ["Settling", "WorkQueue", "first_cause"]

_PAGE = 1000


class WorkQueue:
    """The run's numbers still to send, in input order, read from the journal a page at a time.

    Workers take the next number straight from the page in hand, and the next page is fetched in the
    background while the last ``low_water`` numbers of this one are being sent, so the workers never
    stand idle waiting for it. (Handing numbers over through a stream instead costs a trip through
    the event loop per number, which paces every worker to one number per loop iteration.)
    """

    def __init__(self, journal: Journal, run: int, tg: TaskGroup, low_water: int,
                 stopping: Callable[[], bool]) -> None:
        self._journal, self._run, self._tg, self._low_water = journal, run, tg, low_water
        self._stopping = stopping
        self._after = 0
        self._page: collections.deque[Planned] = collections.deque()
        self._exhausted = self._fetching = False
        self._arrived = anyio.Event()  # set (and replaced) whenever a fetch ends

    async def next(self) -> Planned | None:
        """The next number to work on, or ``None`` once there is none (or a stop was requested)."""
        while not self._page:
            if self._exhausted or self._stopping():
                return None
            self._fetch_soon()
            await self._arrived.wait()
        if self._stopping():
            return None
        planned = self._page.popleft()
        if len(self._page) < self._low_water:
            self._fetch_soon()
        return planned

    def _fetch_soon(self) -> None:
        if not self._fetching and not self._exhausted:
            self._fetching = True
            self._tg.start_soon(self._fetch)

    async def _fetch(self) -> None:
        try:
            page, self._after = await self._journal.work_page(self._run, self._after, _PAGE)
            self._page.extend(page)
            self._exhausted = not page
        finally:
            self._fetching = False
            arrived, self._arrived = self._arrived, anyio.Event()
            arrived.set()


class Settling:
    """A settle in flight: its outcome once known (``None`` if it was interrupted).

    The event is made only when a second caller waits for the same number, which is rare: making one
    per claim would cost more than the rest of the bookkeeping of that claim."""

    __slots__ = ("_done", "outcome")

    def __init__(self) -> None:
        self._done: anyio.Event | None = None
        self.outcome: Outcome | None = None

    async def wait(self) -> None:
        if self._done is None:
            self._done = anyio.Event()
        await self._done.wait()

    def finish(self) -> None:
        if self._done is not None:
            self._done.set()


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped the workers (a fatal service error first), not anyio's wrapper."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    leaves.sort(key=lambda e: not isinstance(e, FatalServiceError))
    return leaves[0]
