"""Connect calls as the engine makes them: each attempt through its API's limiter, classified.

``send`` is one attempt (the claim loop owns its tokens and bookkeeping, and retries in a series from
``retrying``); ``call`` retries reads (Describe, List, Search) in such a series: jittered backoff, and
a stop ends its backoff at once (see retry.py). Either way every request, retries included, passes
the in-flight cap and the token bucket of its API, and every 429 feeds the adaptive controller.
Before that, every request passes the endpoint's gate (outage.py): while the endpoint cannot be
reached no request spends an attempt, and one probe at a time finds out when it is back.

A fatal answer (403, unknown target) opens the circuit breaker: nothing more is sent. One deliberate
exception: AccessDenied on DescribePhoneNumber, a read-only check that a narrower IAM policy may leave
out. It concerns verification only, so it is raised as a CallFailed (FATAL verdict) to its caller and
claims go on; the engine then stops verifying for that run (``RunState.verify_denied``).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any

import anyio
from botocore.exceptions import ClientError

from bulkclaim.backoff import Backoff
from bulkclaim.connect import Classified, Verdict, check_answer, classify
from bulkclaim.model import FatalServiceError
from bulkclaim.outage import OUTAGE_TIMEOUT, Gate
from bulkclaim.ratelimit import Limiter
from bulkclaim.retry import FAILED, Retrying, Sleep
from bulkclaim.telemetry import Telemetry

__all__ = ["Api", "CallFailed", "Withdrawn"]

_THROTTLED = "throttled"  # the allowance of 429s, where they have one of their own
# Denials that concern one read-only operation, not the caller: they do not open the breaker.
_DENIALS_OF_READS_ONLY = {("DescribePhoneNumber", "AccessDeniedException")}


class CallFailed(Exception):
    """A call that did not succeed, with what the error means."""

    def __init__(self, classified: Classified) -> None:
        super().__init__(f"{classified.code}: {classified.message}")
        self.classified = classified


class Api:
    """A Connect client seen through per-API limiters, one endpoint gate and one retry policy.

    ``answer_timeout`` bounds a whole call, answer included (botocore's read timeout bounds each
    socket read, so an answer dribbled byte by byte could hold a claim for minutes): past it the
    call is abandoned as a retryable timeout, an unknown outcome re-sent with the same token.
    ``outage_timeout``: see :class:`bulkclaim.outage.Gate`.
    """

    def __init__(self, client: Any, limiters: Mapping[str, Limiter], *, backoff: Backoff = Backoff(),
                 sleep: Sleep = anyio.sleep, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, fatal_cooldown: float | None = None,
                 endpoint: str | None = None, outage_timeout: float = OUTAGE_TIMEOUT,
                 answer_timeout: float | None = None, telemetry: Telemetry | None = None) -> None:
        self.client = client
        self.limiters = limiters
        #: Every request counted by API and outcome, with its latency (read by bulkclaim.metrics).
        self.telemetry = telemetry or Telemetry()
        self.telemetry.limiters = limiters
        self.backoff = backoff
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.clock = clock
        self.fatal: FatalServiceError | None = None  # the circuit breaker: while set, nothing is sent
        self.fatal_cooldown = fatal_cooldown
        self._fatal_at = 0.0
        self.answer_timeout = answer_timeout
        # One gate per endpoint, shared by every API: while it cannot be reached, or until the service
        # has accepted the caller once, requests go one at a time (see outage.py).
        self.gate = Gate(endpoint or _endpoint_of(client), outage_timeout=outage_timeout, sleep=sleep, clock=clock,
                         rng=self.rng)

    async def send(self, operation: str, method: str, *, withdraw_if: Callable[[], bool] | None = None,
                   **params: Any) -> dict[str, Any]:
        """One attempt. Raises CallFailed (retry / unavailable / terminal) or FatalServiceError
        (EndpointUnreachableError when the endpoint stays unreachable past its bound).

        ``withdraw_if`` is asked when the request's turn comes (after the gate and the limiter): if
        true, nothing is sent and Withdrawn is raised. A stop then sends no new request, even one
        that was already waiting for its turn.

        While the endpoint cannot be reached, this waits (the attempt is not spent) and sends the same
        parameters again, same token, once the gate lets it: it never reached the service."""
        if (self.fatal is not None and self.fatal_cooldown is not None
                and self.clock() - self._fatal_at >= self.fatal_cooldown):
            self.fatal = None  # half-open: the next request probes alone
            self.gate.reset()
        while True:
            if self.fatal is not None:
                raise self.fatal
            probe = await self.gate.enter()
            try:
                return await self._attempt(operation, method, params, withdraw_if)
            except _NotReached:
                continue
            finally:
                if probe:
                    self.gate.leave()

    async def _attempt(self, operation: str, method: str, params: dict[str, Any],
                       withdraw_if: Callable[[], bool] | None) -> dict[str, Any]:
        if self.fatal is not None:
            raise self.fatal
        limiter = self.limiters[operation]
        async with limiter.in_flight:
            await limiter.acquire()
            if self.fatal is not None:  # tripped while we waited for our turn
                raise self.fatal
            if withdraw_if is not None and withdraw_if():
                raise Withdrawn
            limiter.sent += 1
            started, outcome = time.perf_counter(), "error"  # the request's latency, not its wait for a turn
            try:
                with anyio.fail_after(self.answer_timeout):
                    answer: dict[str, Any] = await getattr(self.client, method)(**params)
                check_answer(operation, answer)  # a 200 without the answer is an unknown outcome
                outcome = "ok"
            except TimeoutError as exc:  # the whole answer took too long: unknown outcome, same token again
                raise CallFailed(Classified(Verdict.RETRY, "ReadTimeoutError",
                                            f"no complete answer within {self.answer_timeout:g}s")) from exc
            except Exception as exc:
                classified = classify(exc, operation)
                if classified.unreachable:
                    if (failure := self.gate.unreachable(classified.message)) is not None:
                        self._trip(failure)
                        raise failure from exc
                    raise _NotReached from exc
                if isinstance(exc, ClientError):  # an answer: the endpoint is there
                    self.gate.reached(trusted=classified.verdict != Verdict.FATAL)
                if classified.throttled:
                    outcome = "throttled"
                    limiter.on_throttle()
                if classified.verdict == Verdict.FATAL and (operation, classified.code) not in _DENIALS_OF_READS_ONLY:
                    self._trip(FatalServiceError(classified.code, classified.message))
                    assert self.fatal is not None
                    raise self.fatal from exc
                raise CallFailed(classified) from exc
            finally:
                self.telemetry.request(operation, outcome, time.perf_counter() - started)
        self.gate.reached(trusted=True)
        limiter.on_success()
        return answer

    def _trip(self, error: FatalServiceError) -> None:
        if self.fatal is None:
            self.fatal = error
            self._fatal_at = self.clock()

    async def call(self, operation: str, method: str, *, stop: anyio.Event | None = None,
                   **params: Any) -> dict[str, Any]:
        """Retry ``send`` on retryable errors with jittered backoff; raise on anything else.

        ``stop`` (a run's stop): once it is set no retry is made; a backoff in progress ends at once
        and the last failure is raised, so a stopped run never waits out a backoff."""
        retrying = self.retrying(stop=stop)
        async for attempt in retrying:
            with attempt:
                return await self.send(operation, method, **params)
        assert retrying.failure is not None  # only a stop after a failed attempt ends the loop here
        raise retrying.failure

    async def pages(self, operation: str, method: str, rows: str, *, stop: anyio.Event | None = None,
                    **params: Any) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of a List call (each through :meth:`call`: its limiter and retries), as the list
        ``rows`` of each answer, following NextToken to the end."""
        next_token: str | None = None
        while True:
            page = await self.call(operation, method, stop=stop, **params,
                                   **({"NextToken": next_token} if next_token else {}))
            yield list(page.get(rows, []))
            next_token = page.get("NextToken")
            if not next_token:
                return

    def retrying(self, *, stop: anyio.Event | None = None, throttles: int | None = None,
                 rng: random.Random | None = None) -> Retrying:
        """A series of attempts at one call (see :mod:`bulkclaim.retry`) on this API's backoff, sleep and
        clock: a RETRY verdict is retried until ``backoff.max_attempts`` attempts have failed. With
        ``throttles``, 429s have an allowance of their own, ``throttles`` times as large, and do not
        grow the backoff. ``rng`` draws the jitter (this API's by default)."""
        allowances = {_THROTTLED: self.backoff.max_attempts * throttles} if throttles else None
        return Retrying(self.backoff, partial(_retryable, throttled=_THROTTLED if throttles else FAILED),
                        allowances=allowances, stop=stop, sleep=self.sleep, clock=self.clock, rng=rng or self.rng)


def _retryable(error: Exception, throttled: str) -> str | None:
    """A call's error as :class:`~bulkclaim.retry.Retrying` sees it: a RETRY verdict is retried, charged
    to the allowance ``throttled`` if it is a 429, else to the attempt limit; anything else is not."""
    if not isinstance(error, CallFailed) or error.classified.verdict != Verdict.RETRY:
        return None
    return throttled if error.classified.throttled else FAILED


class Withdrawn(Exception):
    """The request was not sent: its ``withdraw_if`` said so when its turn came (a stop was requested)."""


class _NotReached(Exception):
    """The request could not open a connection: send it again once the gate lets it through."""


def _endpoint_of(client: Any) -> str:
    """The client's endpoint URL, for messages; a stand-in name for clients that do not say."""
    url = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return url if isinstance(url, str) else "the Connect endpoint"
