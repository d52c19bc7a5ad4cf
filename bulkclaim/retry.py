"""The one retry primitive: a series of attempts at one thing, stop-aware and bounded.

Modelled on stamina's ``retry_context``: iterate over attempts and run each in a ``with`` block.
An error that the caller's classifier retries is swallowed by the block, and the next attempt
comes after a jittered backoff; any other error leaves the block, and the loop, at once::

    retrying = Retrying(backoff, lambda error: FAILED if retryable(error) else None, stop=stop)
    async for attempt in retrying:
        with attempt:
            return await send()
    ...  # only reached after a stop: what a stop means is the caller's to say (Api.call: raise
         # retrying.failure, the last error; the claim loop: leave the number pending)

A series ends in one of three ways:

- an attempt's block finishes: the iteration ends (usually the block returns first);
- an attempt fails and is not retried, and its error propagates from the ``with``: the classifier
  said no, or the failure spent its allowance, or its retry could not begin before the deadline;
- the stop is set: no further attempt is made, a backoff in progress ends at once, and the
  iteration ends quietly (``stopped`` says so; ``failure`` is the error the last attempt swallowed).
  The first attempt always goes: whether to begin at all is the caller's decision.

Allowances. The classifier names the allowance each retryable failure is charged to. ``FAILED``
is the attempt limit, ``Backoff.max_attempts`` failures; ``allowances`` adds others with limits of
their own, for failures that say little about the thing tried (the claim loop's 429s: certainly
not executed, and the rate limiter has already slowed down). Only ``FAILED`` failures grow the
backoff: the wait before a retry is ``backoff.delay(max(FAILED failures, 1))``.

Everything that takes time is injected (``sleep``, ``clock``, ``rng``), so tests run on a fake
clock. Cancellation and other BaseExceptions are never retried; nothing here logs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType

import anyio

from bulkclaim.backoff import Backoff

__all__ = ["FAILED", "Attempt", "Classify", "Retrying", "Sleep", "sleep_unless_stopped"]

Sleep = Callable[[float], Awaitable[None]]
#: What the caller says of an error: ``None`` not to retry it, else the allowance it is charged to.
Classify = Callable[[Exception], str | None]
#: The attempt limit's allowance (``Backoff.max_attempts``), the only one that grows the backoff.
FAILED = "failed"


async def sleep_unless_stopped(sleep: Sleep, seconds: float, stop: anyio.Event) -> bool:
    """Sleep ``seconds`` with ``sleep`` unless ``stop`` is set first (or already); True if stopped."""
    if stop.is_set():
        return True
    async with anyio.create_task_group() as tg:
        async def wake_on_stop() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wake_on_stop)
        await sleep(seconds)
        tg.cancel_scope.cancel()
    return stop.is_set()


class Retrying:
    """One series of attempts: ``async for attempt in Retrying(...): with attempt: ...``.

    ``backoff``: the delays and the attempt limit. ``on``: the classifier. ``allowances``: more
    allowances by name, each its number of failures. ``timeout``: seconds from the first attempt
    after which no retry begins (a retry whose backoff would end later is not made; an attempt
    itself is not cut short: wrap it in ``anyio.fail_after`` for that). ``stop``: see the module.
    A series is used once; make a new one for the next thing to try.
    """

    def __init__(self, backoff: Backoff, on: Classify, *, allowances: Mapping[str, int] | None = None,
                 timeout: float | None = None, stop: anyio.Event | None = None, sleep: Sleep = anyio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self.on = on
        self.limits = {FAILED: backoff.max_attempts, **(allowances or {})}
        self.timeout = timeout
        self.stop = stop
        self.sleep = sleep
        self.clock = clock
        self.rng = rng
        self.attempts = 0  # attempts begun
        self.failures = dict.fromkeys(self.limits, 0)  # failures charged to each allowance
        self.failure: Exception | None = None  # the error of the last attempt, swallowed for a retry
        self._deadline: float | None = None  # the clock's reading past which no retry begins
        self._delay: float | None = None  # the wait before the next attempt; None: no next attempt

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def __aiter__(self) -> Retrying:
        return self

    async def __anext__(self) -> Attempt:
        if self.attempts == 0:  # the series begins: the deadline counts from here
            self._deadline = None if self.timeout is None else self.clock() + self.timeout
        elif self._delay is None or self.stopped:  # the last attempt finished, or a stop came
            raise StopAsyncIteration
        elif self.stop is None:
            await self.sleep(self._delay)
        elif await sleep_unless_stopped(self.sleep, self._delay, self.stop):
            raise StopAsyncIteration
        self.attempts += 1
        self._delay = None
        return Attempt(self)

    def _retries(self, error: Exception) -> bool:
        """Charge a failed attempt's ``error``; True (with the next delay drawn) if it is to be retried."""
        allowance = self.on(error)
        if allowance is None:
            return False
        self.failures[allowance] += 1  # a KeyError here: the classifier named an allowance never given
        if self.failures[allowance] >= self.limits[allowance]:
            return False
        delay = self.backoff.delay(max(self.failures[FAILED], 1), self.rng)
        if self._deadline is not None and self.clock() + delay > self._deadline:
            return False
        self.failure, self._delay = error, delay
        return True


class Attempt:
    """One attempt of a series (``num`` counts from 1): a ``with`` block that swallows the errors the
    series retries. Cancellation and other BaseExceptions always propagate."""

    __slots__ = ("_series", "num")

    def __init__(self, series: Retrying) -> None:
        self._series = series
        self.num = series.attempts

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        return isinstance(error, Exception) and self._series._retries(error)
