"""Live progress of a claim run: a rich display on a terminal, a structured log line otherwise.

Both read the run's live counts and the claim limiter; neither changes anything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio

from bulkclaim.logs import stderr_console
from bulkclaim.model import RunSummary
from bulkclaim.ratelimit import Limiter

__all__ = ["ProgressMeter", "RateMeter", "Snapshot", "format_duration", "run_with_progress"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Snapshot:
    done: int
    total: int
    #: None until this run has settled numbers for long enough to measure (see :class:`RateMeter`)
    claims_per_second: float | None
    rate_limit: float
    throttled: int
    eta_seconds: float | None

    def as_event(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "claims_per_second": round(self.claims_per_second or 0.0, 2),
                "rate_limit": round(self.rate_limit, 2), "throttled": self.throttled,
                "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds)}


class RateMeter:
    """The recent rate of a growing count: a time-correct exponentially weighted moving average.

    Each update weighs the rate since the previous one by ``1 - exp(-dt / window)``, so the result
    does not depend on how often it is asked, and a burst fades with a time constant of ``window``
    seconds. The weights are normalized by their sum (a bias-corrected EWMA), so the first seconds
    show the average so far instead of climbing slowly from zero. The clock starts at the first
    count above the one the meter was started at (time spent planning is not "slow claiming"), and
    no rate is given before ``min_span`` seconds of it.
    """

    def __init__(self, *, window: float = 30.0, min_span: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window <= 0 or min_span < 0:
            raise ValueError("window > 0 and min_span >= 0, please")
        self.window, self.min_span, self._clock = window, min_span, clock
        self._count: int | None = None
        self._at = 0.0
        self._span = 0.0  # seconds measured since counting started
        self._weighted = 0.0  # sum of weight * rate
        self._weights = 0.0  # sum of weights

    def update(self, count: int) -> float | None:
        """Record ``count`` (the total so far) now; the smoothed rate per second, or None if not known yet."""
        now = self._clock()
        if self._count is None or (self._span == 0 and count <= self._count):
            self._count, self._at = count, now  # nothing moved yet: start the clock later
            return None
        elapsed = now - self._at
        if elapsed > 0:
            weight = 1.0 - math.exp(-elapsed / self.window)
            instant = (count - self._count) / elapsed
            self._weighted = (1.0 - weight) * self._weighted + weight * instant
            self._weights = (1.0 - weight) * self._weights + weight
            self._span += elapsed
            self._count, self._at = count, now
        return self.rate

    @property
    def rate(self) -> float | None:
        if self._span < self.min_span or self._weights <= 0:
            return None
        return self._weighted / self._weights


class _Source(Protocol):
    @property
    def summary(self) -> RunSummary: ...


class _Limits(Protocol):
    @property
    def rate(self) -> float: ...
    @property
    def throttled(self) -> int: ...


class ProgressMeter:
    """Turns the engine's counters into a snapshot. Rate and ETA count only the numbers this run
    settles: the ones already done before it (a resumed run) are in the bar, not in the speed."""

    def __init__(self, engine: _Source, limiter: _Limits, *, clock: Callable[[], float] = time.monotonic,
                 window: float = 30.0) -> None:
        self.engine, self.limiter = engine, limiter
        self._rate = RateMeter(window=window, clock=clock)

    def snapshot(self) -> Snapshot:
        summary = self.engine.summary
        done = sum(summary.statuses.values())
        total = max(done, summary.to_send + summary.already_done + summary.invalid)
        speed = self._rate.update(summary.settled)
        remaining = summary.remaining
        eta = remaining / speed if speed else (0.0 if speed is not None and not remaining else None)
        return Snapshot(done, total, speed, self.limiter.rate, self.limiter.throttled, eta)


async def run_with_progress(work: Callable[[], Awaitable[_T]], run: _Source, limiter: Limiter, *, tty: bool,
                            log: Any, interval: float = 5.0) -> _T:
    """Run ``work`` while showing progress (rich on a terminal, log lines otherwise).

    ``work`` runs as a sibling of the display, so its own exception comes out as itself rather
    than wrapped in a task group's exception group. ``run`` holds the live counts (a RunState).
    """
    meter = ProgressMeter(run, limiter)
    outcome: list[_T] = []
    failure: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        async def run_work() -> None:
            try:
                outcome.append(await work())
            except Exception as exc:
                failure.append(exc)
            finally:
                tg.cancel_scope.cancel()

        tg.start_soon(_rich_display, meter) if tty else tg.start_soon(_log_lines, meter, log, interval)
        tg.start_soon(run_work)
    if failure:
        raise failure[0]
    if not outcome:  # cancelled from outside (grace period over): let the caller's scope see it
        await anyio.lowlevel.checkpoint()
        raise anyio.get_cancelled_exc_class()()
    return outcome[0]


async def _log_lines(meter: ProgressMeter, log: Any, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        log.info("progress", **meter.snapshot().as_event())


async def _rich_display(meter: ProgressMeter) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("[bold]claiming"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"))
    with Progress(*columns, console=stderr_console(), transient=False) as display:
        task = display.add_task("claim", total=None, detail="planning…")

        def show(snap: Snapshot) -> None:
            eta = "-" if snap.eta_seconds is None else format_duration(snap.eta_seconds)
            speed = "    -" if snap.claims_per_second is None else f"{snap.claims_per_second:5.1f}"
            detail = (f"{speed} claims/s · limit {snap.rate_limit:.2f}/s · "
                      f"throttled {snap.throttled} · ETA {eta}")
            display.update(task, completed=snap.done, total=snap.total or None, detail=detail)

        try:
            while True:
                show(meter.snapshot())
                await anyio.sleep(0.25)
        finally:  # cancelled when the work ends: the bar's last drawing shows the final counts
            show(meter.snapshot())


def format_duration(seconds: float) -> str:
    """A duration as people read it at a glance: ``45s``, ``4m05s``, ``2h07m`` (the bar's ETA, the dry run)."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
