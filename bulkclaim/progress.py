"""Live progress of a claim run: a rich display on a terminal, a structured log line otherwise.

Both read the engine's live counts and the claim limiter; neither changes anything.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from bulkclaim.engine import Engine
from bulkclaim.ratelimit import Limiter

__all__ = ["Snapshot", "run_with_progress"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Snapshot:
    done: int
    total: int
    claims_per_second: float
    rate_limit: float
    throttled: int
    eta_seconds: float | None

    def as_event(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "claims_per_second": round(self.claims_per_second, 2),
                "rate_limit": round(self.rate_limit, 2), "throttled": self.throttled,
                "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds)}


class _Meter:
    """Turns the engine's counters into a snapshot, with a smoothed claims-per-second."""

    def __init__(self, engine: Engine, limiter: Limiter) -> None:
        self.engine, self.limiter = engine, limiter
        self._last_done, self._last_at, self._speed = 0, time.monotonic(), 0.0

    def snapshot(self) -> Snapshot:
        summary = self.engine.summary
        done = sum(summary.statuses.values())
        total = max(done, summary.to_send + summary.already_done + summary.invalid)
        now = time.monotonic()
        elapsed = now - self._last_at
        if elapsed > 0:
            instant = (done - self._last_done) / elapsed
            self._speed = instant if self._speed == 0 else 0.7 * self._speed + 0.3 * instant
        self._last_done, self._last_at = done, now
        remaining = total - done
        eta = remaining / self._speed if self._speed > 0 else None
        return Snapshot(done, total, self._speed, self.limiter.rate, self.limiter.throttled, eta)


async def run_with_progress(work: Callable[[], Awaitable[_T]], engine: Engine, limiter: Limiter, *, tty: bool,
                            log: Any, interval: float = 5.0) -> _T:
    """Run ``work`` while showing progress (rich on a terminal, log lines otherwise).

    ``work`` runs as a sibling of the display, so its own exception comes out as itself rather
    than wrapped in a task group's exception group.
    """
    meter = _Meter(engine, limiter)
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


async def _log_lines(meter: _Meter, log: Any, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        log.info("progress", **meter.snapshot().as_event())


async def _rich_display(meter: _Meter) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("[bold]claiming"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as display:
        task = display.add_task("claim", total=None, detail="planning…")
        while True:
            snap = meter.snapshot()
            eta = "-" if snap.eta_seconds is None else _duration(snap.eta_seconds)
            detail = (f"{snap.claims_per_second:5.1f} claims/s · limit {snap.rate_limit:.2f}/s · "
                      f"throttled {snap.throttled} · ETA {eta}")
            display.update(task, completed=snap.done, total=snap.total or None, detail=detail)
            await anyio.sleep(0.25)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
