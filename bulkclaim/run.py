"""One run's own state, apart from the long-lived :class:`~bulkclaim.engine.Engine`.

An engine (one client, one journal, its limiters) serves many runs, one after another or at the same
time (two ``claim_many`` on one Claimer, an ``acquire`` beside them). What belongs to one run lives
here, so one run's stop or counts never leak into another's:

- ``summary``: the run's counts, live (a progress display reads them while the run goes on);
- the stop: ``request_stop()`` ends this run only. A stop requested before the run starts is kept:
  make the RunState first, hand it to the run, and the run sends nothing;
- ``verify_denied``: the principal may not call DescribePhoneNumber; this run stops verifying.

What runs share lives on the engine; :class:`InFlight` is its one claim in flight per number, which
a second run (or ``claim()``) asking for the same number waits for. The ``emit`` callback of a run
is an argument of ``Engine.run``, never stored on the engine. Make a RunState inside the event loop
that runs it.
"""

from __future__ import annotations

import anyio

from bulkclaim.model import Outcome, RunSummary
from bulkclaim.retry import Sleep, sleep_unless_stopped

__all__ = ["InFlight", "RunState"]


class RunState:
    """The stop, the live counts and the verification switch of one run."""

    def __init__(self) -> None:
        self.summary = RunSummary()
        self.stop = anyio.Event()
        #: Set (with one warning) when DescribePhoneNumber answered AccessDenied: accepted claims of
        #: this run are then left ``in_progress`` instead of polled.
        self.verify_denied = False

    def request_stop(self) -> None:
        """Stop dispatching: in-flight requests finish, nothing new is sent, waits end early.
        Numbers not finished stay ``pending``/``in_progress`` in the journal for the next run."""
        self.stop.set()

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    async def pause(self, sleep: Sleep, seconds: float) -> None:
        """Sleep (with the injected ``sleep``) unless this run's stop is requested first."""
        await sleep_unless_stopped(sleep, seconds, self.stop)


class InFlight:
    """One number's claim in flight (``Engine.claim_number``): its outcome once known (``None`` if it was interrupted).

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
