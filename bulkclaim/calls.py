"""Connect calls as the engine makes them: each attempt through its API's limiter, classified.

``send`` is one attempt (the claim loop owns its retries, tokens and bookkeeping); ``call`` retries
reads (Describe, List) with jittered backoff. Either way every request, retries included, passes the
in-flight cap and the token bucket of its API, and every 429 feeds the adaptive controller.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from botocore.exceptions import ClientError

from bulkclaim.backoff import Backoff
from bulkclaim.connect import Classified, Verdict, check_answer, classify
from bulkclaim.model import FatalServiceError
from bulkclaim.ratelimit import Limiter

__all__ = ["Api", "CallFailed"]

Sleep = Callable[[float], Awaitable[None]]


class CallFailed(Exception):
    """A call that did not succeed, with what the error means."""

    def __init__(self, classified: Classified) -> None:
        super().__init__(f"{classified.code}: {classified.message}")
        self.classified = classified


class Api:
    """A Connect client seen through per-API limiters and one retry policy."""

    def __init__(self, client: Any, limiters: Mapping[str, Limiter], *, backoff: Backoff = Backoff(),
                 sleep: Sleep = anyio.sleep, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, fatal_cooldown: float | None = None) -> None:
        self.client = client
        self.limiters = limiters
        self.backoff = backoff
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.clock = clock
        self.fatal: FatalServiceError | None = None  # the circuit breaker: while set, nothing is sent
        self.fatal_cooldown = fatal_cooldown
        self._fatal_at = 0.0
        # Until the service has answered one request without refusing the caller, requests go one at a
        # time: a bad credential or unknown target then costs one request, not one per in-flight slot.
        self._trusted = False
        self._probing = False
        self._probed = anyio.Event()  # set (and replaced) whenever a probe ends, however it ended

    async def send(self, operation: str, method: str, **params: Any) -> dict[str, Any]:
        """One attempt. Raises CallFailed (retry / unavailable / terminal) or FatalServiceError."""
        if (self.fatal is not None and self.fatal_cooldown is not None
                and self.clock() - self._fatal_at >= self.fatal_cooldown):
            self.fatal, self._trusted = None, False  # half-open: the next request probes alone
        while not self._trusted:
            if self._probing:  # wait for the probe; once it succeeds every waiter goes at once
                await self._probed.wait()
                continue
            self._probing = True
            try:
                return await self._attempt(operation, method, params)
            finally:
                self._probing = False
                probed, self._probed = self._probed, anyio.Event()
                probed.set()
        return await self._attempt(operation, method, params)

    async def _attempt(self, operation: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.fatal is not None:
            raise self.fatal
        limiter = self.limiters[operation]
        async with limiter.in_flight:
            await limiter.bucket.acquire()
            if self.fatal is not None:  # tripped while we waited for our turn
                raise self.fatal
            limiter.sent += 1
            try:
                answer: dict[str, Any] = await getattr(self.client, method)(**params)
                check_answer(operation, answer)  # a 200 without the answer is an unknown outcome
            except Exception as exc:
                classified = classify(exc, operation)
                if classified.throttled:
                    limiter.on_throttle()
                if classified.verdict == Verdict.FATAL:
                    if self.fatal is None:
                        self.fatal = FatalServiceError(classified.code, classified.message)
                        self._fatal_at = self.clock()
                    raise self.fatal from exc
                # The service answered (even if not for this number): the caller itself is accepted.
                self._trusted = self._trusted or isinstance(exc, ClientError)
                raise CallFailed(classified) from exc
        self._trusted = True
        limiter.on_success()
        return answer

    async def call(self, operation: str, method: str, **params: Any) -> dict[str, Any]:
        """Retry ``send`` on retryable errors with jittered backoff; raise on anything else."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.send(operation, method, **params)
            except CallFailed as failed:
                if failed.classified.verdict != Verdict.RETRY or attempt >= self.backoff.max_attempts:
                    raise
            await self.sleep(self.backoff.delay(attempt, self.rng))
