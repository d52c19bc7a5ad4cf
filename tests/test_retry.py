"""The retry primitive on a fake clock: no real sleep, no timing assertion."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from botocore.exceptions import ClientError

from bulkclaim import Claimer, Options, RateSettings, Status
from bulkclaim.backoff import Backoff
from bulkclaim.retry import FAILED, Retrying
from tests.support import INSTANCE_ID, FakeClock

pytestmark = pytest.mark.anyio

THROTTLED = "throttled"


class Flaky(Exception):
    """Retryable."""


class Throttled(Exception):
    """Retryable, from its own allowance."""


class Refused(Exception):
    """Not retryable."""


def charge(error: Exception) -> str | None:
    if isinstance(error, Throttled):
        return THROTTLED
    return FAILED if isinstance(error, Flaky) else None


class Waits:
    """A sleep that only moves the fake clock, and remembers each wait."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        self.clock.advance(seconds)
        await anyio.lowlevel.checkpoint()


def series(clock: FakeClock, waits: Waits, backoff: Backoff = Backoff(), *, allowances: dict[str, int] | None = None,
           timeout: float | None = None, stop: anyio.Event | None = None) -> Retrying:
    return Retrying(backoff, charge, allowances=allowances, timeout=timeout, stop=stop, sleep=waits, clock=clock,
                    rng=random.Random(7))


async def run(retrying: Retrying, errors: list[Exception]) -> str:
    """Attempt until ``errors`` (raised one per attempt, in order) run out; then succeed."""
    async for attempt in retrying:
        with attempt:
            if attempt.num <= len(errors):
                raise errors[attempt.num - 1]
            return "done"
    return "stopped"


async def test_a_success_ends_the_series_at_once(clock: FakeClock) -> None:
    waits = Waits(clock)
    retrying = series(clock, waits)
    assert await run(retrying, []) == "done"
    assert retrying.attempts == 1 and waits.seconds == []


async def test_a_block_that_does_not_return_ends_the_iteration_too(clock: FakeClock) -> None:
    retrying = series(clock, Waits(clock))
    async for attempt in retrying:
        with attempt:
            pass
    assert retrying.attempts == 1 and not retrying.stopped


async def test_retryable_errors_are_retried_until_one_attempt_succeeds(clock: FakeClock) -> None:
    waits = Waits(clock)
    retrying = series(clock, waits)
    assert await run(retrying, [Flaky(), Flaky()]) == "done"
    assert retrying.attempts == 3 and len(waits.seconds) == 2


async def test_the_attempt_limit_ends_the_series_with_the_last_error(clock: FakeClock) -> None:
    waits = Waits(clock)
    errors: list[Exception] = [Flaky(str(n)) for n in range(10)]
    with pytest.raises(Flaky) as raised:
        await run(series(clock, waits, Backoff(max_attempts=4)), errors)
    assert str(raised.value) == "3", "the fourth attempt's error"
    assert len(waits.seconds) == 3, "a wait between attempts, none after the last"


async def test_an_error_the_classifier_does_not_retry_propagates_at_once(clock: FakeClock) -> None:
    waits = Waits(clock)
    retrying = series(clock, waits)
    with pytest.raises(Refused):
        await run(retrying, [Flaky(), Refused()])
    assert retrying.attempts == 2 and len(waits.seconds) == 1


async def test_cancellation_is_never_retried_nor_classified(clock: FakeClock) -> None:
    asked: list[BaseException] = []

    def classify(error: Exception) -> str:
        asked.append(error)
        return FAILED

    retrying = Retrying(Backoff(), classify, sleep=Waits(clock), clock=clock)
    with anyio.CancelScope() as scope:
        async for attempt in retrying:
            with attempt:
                scope.cancel()
                await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert retrying.attempts == 1 and asked == []


async def test_delays_are_drawn_from_the_backoff_with_the_given_rng(clock: FakeClock) -> None:
    backoff = Backoff(base=1.0, floor=0.1, cap=5.0, max_attempts=6)
    waits = Waits(clock)
    with pytest.raises(Flaky):
        await run(series(clock, waits, backoff), [Flaky()] * 6)
    same = random.Random(7)
    assert waits.seconds == [backoff.delay(failed, same) for failed in range(1, 6)]


async def test_a_separate_allowance_neither_spends_the_attempt_limit_nor_grows_the_backoff(clock: FakeClock) -> None:
    backoff = Backoff(base=1.0, floor=0.1, cap=5.0, max_attempts=2)
    waits = Waits(clock)
    retrying = series(clock, waits, backoff, allowances={THROTTLED: 5})
    errors: list[Exception] = [Throttled(), Throttled(), Flaky(), Throttled(), Throttled()]
    assert await run(retrying, errors) == "done", "4 throttles and 1 failure: within both allowances"
    assert retrying.failures == {FAILED: 1, THROTTLED: 4}
    same = random.Random(7)
    assert waits.seconds == [backoff.delay(1, same) for _ in errors], "the delay of one failure, each time"


async def test_a_separate_allowance_spent_ends_the_series(clock: FakeClock) -> None:
    retrying = series(clock, Waits(clock), Backoff(max_attempts=2), allowances={THROTTLED: 3})
    with pytest.raises(Throttled):
        await run(retrying, [Throttled(), Flaky(), Throttled(), Throttled()])
    assert retrying.attempts == 4 and retrying.failures == {FAILED: 1, THROTTLED: 3}


async def test_no_retry_begins_past_the_deadline(clock: FakeClock) -> None:
    fixed = Backoff(base=2.0, floor=2.0, cap=2.0, max_attempts=100)  # every wait is 2 s
    waits = Waits(clock)
    retrying = series(clock, waits, fixed, timeout=5.0)
    with pytest.raises(Flaky):
        await run(retrying, [Flaky()] * 100)
    assert retrying.attempts == 3, "attempts at 0, 2 and 4 s; one at 6 s would begin past the deadline"
    assert waits.seconds == [2.0, 2.0]


async def test_the_deadline_counts_from_the_first_attempt(clock: FakeClock) -> None:
    fixed = Backoff(base=2.0, floor=2.0, cap=2.0, max_attempts=100)
    retrying = series(clock, Waits(clock), fixed, timeout=5.0)
    clock.advance(60.0)  # made long before it is used
    assert await run(retrying, [Flaky()] * 2) == "done"


async def test_a_stop_requested_during_an_attempt_ends_the_series_without_a_wait(clock: FakeClock) -> None:
    stop, waits = anyio.Event(), Waits(clock)
    retrying = series(clock, waits, stop=stop)
    error = Flaky()
    async for attempt in retrying:
        with attempt:
            stop.set()
            raise error
    assert retrying.stopped and retrying.failure is error
    assert retrying.attempts == 1 and waits.seconds == []


async def test_a_stop_requested_before_the_series_still_lets_the_first_attempt_go(clock: FakeClock) -> None:
    stop = anyio.Event()
    stop.set()
    retrying = series(clock, Waits(clock), stop=stop)
    assert await run(retrying, [Flaky(), Flaky()]) == "stopped"
    assert retrying.attempts == 1, "the first attempt is the caller's decision; no retry"


async def test_a_stop_ends_a_backoff_in_progress_at_once() -> None:
    stop = anyio.Event()
    waits: list[float] = []

    async def endless(seconds: float) -> None:  # a backoff that never ends by itself
        waits.append(seconds)
        stop.set()  # requested while the backoff is under way
        await anyio.sleep_forever()

    retrying = Retrying(Backoff(), charge, stop=stop, sleep=endless, clock=FakeClock())
    with anyio.fail_after(10):  # a guard against a hang, not a timing assertion
        assert await run(retrying, [Flaky()] * 10) == "stopped"
    assert retrying.attempts == 1 and len(waits) == 1 and isinstance(retrying.failure, Flaky)


# -- the claim loop's rule, through the primitive ------------------------------------------------------

class ScriptedClaims:
    """A Connect client stand-in: answers each claim with the next scripted error, then accepts."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.sent = 0

    async def claim_phone_number(self, **params: Any) -> dict[str, Any]:
        self.sent += 1
        await anyio.lowlevel.checkpoint()
        if self.sent <= len(self.errors):
            code = self.errors[self.sent - 1]
            status = 429 if code == "ThrottlingException" else 500
            response: Any = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
            raise ClientError(response, "ClaimPhoneNumber")
        return {"PhoneNumberId": f"id{params['PhoneNumber']}", "PhoneNumberArn": f"arn:id{params['PhoneNumber']}"}


@pytest.mark.parametrize(("errors", "status", "error_code"), [
    (["InternalFailure"] * 2 + ["ThrottlingException"] * 27, Status.IN_PROGRESS, None),
    (["ThrottlingException"] * 29 + ["InternalFailure"] * 2, Status.IN_PROGRESS, None),
    (["ThrottlingException"] * 30, Status.PENDING, "ThrottlingException"),
    (["ThrottlingException"] * 5 + ["InternalFailure"] * 3, Status.PENDING, "InternalFailure"),
], ids=["failures-then-throttles", "throttles-then-failures", "throttles-spent", "failures-spent"])
async def test_a_claim_has_max_attempts_failures_and_ten_times_as_many_throttles(
        errors: list[str], status: Status, error_code: str | None, clock: FakeClock, tmp_path: Path) -> None:
    client = ScriptedClaims(errors)
    async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j", client=client, clock=clock,
                       sleep=Waits(clock), rng=random.Random(7), rates=RateSettings(1000.0, 100),
                       options=Options(verify=False), backoff=Backoff(max_attempts=3)) as claimer:
        [outcome] = [o async for o in claimer.claim_many(["+12025550100"])]
    assert (outcome.status, outcome.error_code) == (status, error_code)
    assert outcome.attempts == client.sent == len(errors) + (status == Status.IN_PROGRESS)
