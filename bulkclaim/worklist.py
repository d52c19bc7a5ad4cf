"""The numbers a run still has to send, handed to its claim workers in input order."""

from __future__ import annotations

import collections
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from bulkclaim.journal.protocol import Journal
from bulkclaim.model import Planned

__all__ = ["WorkList"]

_PAGE = 1000


class WorkList:
    """The run's numbers still to send or verify, read from the journal a page at a time.

    Workers take the next number straight from the page in hand, and the next page is fetched in the
    background (in ``tg``) while the last ``low_water`` numbers of this one are being sent, so the
    workers never stand idle waiting for it. Handing numbers over through a memory stream instead
    costs a trip through the event loop per number, which paces every worker to one number per loop
    iteration: each response is then read alone, with a system call of its own.
    """

    def __init__(self, journal: Journal, run: int, tg: TaskGroup, *, low_water: int,
                 stopping: Callable[[], bool]) -> None:
        self._journal, self._run, self._tg, self._low_water, self._stopping = journal, run, tg, low_water, stopping
        self._after = 0
        self._size = _PAGE
        if not journal.exclusive:  # processes share the run: lease a few at a time, so that they split it
            self._size = self._low_water = max(2, low_water // 4)
        self._page: collections.deque[Planned] = collections.deque()
        self._exhausted = self._fetching = False
        self._outstanding = 0  # numbers handed out and not yet ``finished`` (being claimed or verified)
        self._arrived = anyio.Event()  # set (and replaced) whenever a fetch ends
        self._watch = anyio.CancelScope()
        if not journal.exclusive:
            tg.start_soon(self._take_over)

    async def next(self) -> Planned | None:
        """The next number to work on, or ``None`` once there is none (or a stop was requested)."""
        while not self._page:
            if self._exhausted or self._stopping():
                self._done()
                return None
            self._fetch_soon()
            await self._arrived.wait()
        if self._stopping():
            self._done()
            return None
        planned = self._page.popleft()
        self._outstanding += 1
        if len(self._page) < self._low_water:
            self._fetch_soon()
        return planned

    def finished(self) -> None:
        """A number handed out by :meth:`next` is done with (claimed, verified, or left as it is)."""
        self._outstanding -= 1

    def _done(self) -> None:
        self._watch.cancel()  # nothing more is taken over: this worker is done with the run

    async def _take_over(self) -> None:
        """A shared journal: a killed worker's numbers are leased by the next look after its lease
        expired, at the front of the page (they are the oldest), not when this worker's own run low."""
        with self._watch:
            while True:
                orphans = await self._journal.take_over(self._run)
                if orphans:
                    self._page.extendleft(reversed(orphans))
                    self._wake()

    def _wake(self) -> None:
        arrived, self._arrived = self._arrived, anyio.Event()
        arrived.set()

    def _fetch_soon(self) -> None:
        if not self._fetching and not self._exhausted:
            self._fetching = True
            self._tg.start_soon(self._fetch)

    async def _fetch(self) -> None:
        try:
            page, self._after = await self._journal.work_page(self._run, self._after, self._size)
            self._page.extend(page)
            # A shared journal: other workers may yet leave numbers to take over (they may die). Asked
            # only with nothing left in hand: until then, this worker is not waiting for anyone.
            self._exhausted = not page and (self._journal.exclusive or (
                not self._page and not await self._journal.more_work(self._run, idle=self._outstanding == 0)))
        finally:
            self._fetching = False
            self._wake()
