"""One run's own state, apart from the long-lived :class:`~bulkclaim.engine.Engine`.

An engine (one client, one journal, its limiters) serves many runs, one after another or at the same
time (two ``claim_many`` on one Claimer, an ``acquire`` beside them). What belongs to one run lives
here, so one run's stop or counts never leak into another's:

- ``summary``: the run's counts, live (a progress display reads them while the run goes on);
- the stop: ``request_stop()`` ends this run only. A stop requested before the run starts is kept:
  make the RunState first, hand it to the run, and the run sends nothing;
- ``verify_denied``: the principal may not call DescribePhoneNumber; this run stops verifying;
- ``aborted``: a run-level stop with an error, raised when the run ends. A claim that settles FAILED
  because its target "has reached its limit of total claimed numbers" sets it (``claim_failed``):
  Connect accepts claims beyond the quota and fails them later, and each failed claim may count
  toward the churn rule, so after the first one the run sends no further claim.

What runs share lives on the engine; :class:`InFlight` is its one claim in flight per number, which
a second run (or ``claim()``) asking for the same number waits for. The ``emit`` callback of a run
is an argument of ``Engine.run``, never stored on the engine. Make a RunState inside the event loop
that runs it.
"""

from __future__ import annotations

import anyio

from bulkclaim.connect import limit_reached
from bulkclaim.model import FatalServiceError, Outcome, QuotaReachedError, RunSummary
from bulkclaim.retry import Sleep, sleep_unless_stopped

__all__ = ["InFlight", "RunState"]


class RunState:
    """The stop, the live counts and the verification switch of one run."""

    def __init__(self) -> None:
        self.summary = RunSummary()
        #: No new claim is sent once set (a stop requested, or the run aborted on its own).
        self.stop = anyio.Event()
        #: Waits end too (a stop requested from outside). An abort (``claim_failed``) leaves it unset:
        #: claims already accepted are still verified, so their outcome is known.
        self.halt = anyio.Event()
        #: Set (with one warning) when DescribePhoneNumber answered AccessDenied: accepted claims of
        #: this run are then left ``in_progress`` instead of polled.
        self.verify_denied = False
        #: When (engine clock) a number no longer in the input, not listed on its target, is asked
        #: about again before it is called not claimed: a dead run's request may still execute.
        self.recheck_removed_at = 0.0
        #: Why this run stopped on its own (raised by ``raise_if_aborted`` when the run ends).
        self.aborted: FatalServiceError | None = None

    def request_stop(self) -> None:
        """Stop dispatching: in-flight requests finish, nothing new is sent, waits end early.
        Numbers not finished stay ``pending``/``in_progress`` in the journal for the next run."""
        self.stop.set()
        self.halt.set()

    def claim_failed(self, target: str, status_message: str) -> bool:
        """A claim to ``target`` settled FAILED with ``status_message``. If the target is at its quota,
        stop this run (nothing new is sent) and keep the error for the run's end; True if so."""
        if not limit_reached(status_message):
            return False
        if self.aborted is None:
            self.aborted = QuotaReachedError(target, status_message)
        self.stop.set()  # not ``halt``: claims already accepted are still verified
        return True

    def raise_if_aborted(self) -> None:
        """Raise the error that stopped this run on its own, if one did (call when the run ends)."""
        if self.aborted is not None:
            raise self.aborted

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    @property
    def halted(self) -> bool:
        return self.halt.is_set()

    async def pause(self, sleep: Sleep, seconds: float) -> None:
        """Sleep (with the injected ``sleep``) unless this run's stop is requested first."""
        await sleep_unless_stopped(sleep, seconds, self.stop)

    async def pause_unless_halted(self, sleep: Sleep, seconds: float) -> None:
        """Sleep unless a stop is requested from outside first (an abort does not wake it)."""
        await sleep_unless_stopped(sleep, seconds, self.halt)


class InFlight:
    """One number's claim in flight (``Engine.claim_number``): its outcome once known (``None`` if it
    was interrupted).

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
