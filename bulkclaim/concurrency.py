"""The engine's small concurrency helpers: one settle per number at a time, and the error that stopped
a task group."""

from __future__ import annotations

import anyio

from bulkclaim.model import FatalServiceError, Outcome

__all__ = ["Settling", "first_cause"]


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
