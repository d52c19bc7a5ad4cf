"""A run's own state (issue 12 case 6) and calls that a stop, throttling or a narrower IAM policy
must not turn into waits or fatal errors (case 10)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from bulkclaim import (
    AcquireSpec,
    Backoff,
    Claimer,
    ClaimRequest,
    Options,
    Outcome,
    RateSettings,
    RunState,
    Status,
    Target,
)
from bulkclaim.calls import Api, CallFailed
from bulkclaim.sandbox import API_NAMES, Credentials, InventorySpec, SandboxConfig, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from bulkclaim.search import search_numbers
from tests.support import INSTANCE_ID, FakeClock, sandbox_env
from tests.test_claimer import claimer
from tests.test_cli import claim_args, no_traceback, run_cli, write_numbers

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=20))]
ALWAYS_THROTTLED = ThrottleConfig(rate=1e-9, burst=0)


def requests(target: Target, numbers: list[str]) -> list[ClaimRequest]:
    return [ClaimRequest(n, target, source=f"x:{i}") for i, n in enumerate(numbers, start=1)]


async def ignore(_: Outcome) -> None:
    pass


# -- case 6: per-run state ------------------------------------------------------------------------------

async def test_a_stop_requested_before_the_run_starts_sends_nothing(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        state = RunState()
        state.request_stop()  # e.g. SIGINT while the CLI was still reading its inputs
        with anyio.fail_after(10):  # a guard against a hang, not a timing assertion
            summary = await c.engine.run(requests(c.target, NUMBERS), ignore, state=state)
        sent = c.limiters["ClaimPhoneNumber"].sent
    assert summary is state.summary
    assert sent == 0 and env.sandbox.ledger == [], "nothing sent"
    assert not summary.statuses, "no number settled"
    with sqlite3.connect(tmp_path / "j") as conn:
        assert {s for (s,) in conn.execute("SELECT status FROM numbers")} == {"pending"}, "tokens kept for later"


async def test_concurrent_runs_on_one_claimer_keep_their_own_stop_and_counts(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        stopped, going = RunState(), RunState()
        stopped.request_stop()
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: c.engine.run(requests(c.target, NUMBERS[:10]), ignore, state=stopped))
                tg.start_soon(lambda: c.engine.run(requests(c.target, NUMBERS[10:]), ignore, state=going))
    assert sorted(e.phone_number for e in env.sandbox.ledger) == NUMBERS[10:], "the stopped run sent nothing"
    assert stopped.stopping and not going.stopping, "the second run did not clear the first one's stop"
    assert stopped.summary.run != going.summary.run
    assert (stopped.summary.to_send, going.summary.to_send) == (10, 10)
    assert not stopped.summary.statuses and going.summary.statuses == {"claimed": 10}


async def test_claim_many_runs_each_have_their_own_state(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        first, second = RunState(), RunState()
        first.request_stop()
        assert [o async for o in c.claim_many(NUMBERS[:5], state=first)] == []
        claimed = [o async for o in c.claim_many(NUMBERS[5:10], state=second)]
    assert [o.status for o in claimed] == [Status.CLAIMED] * 5
    assert c.last_summary is second.summary and first.summary.statuses == {}
    assert sorted(e.phone_number for e in env.sandbox.ledger) == NUMBERS[5:10]


# -- case 10: throttled searches, stops in a backoff, a narrower IAM policy ------------------------------

class _AlwaysThrottled:
    """A Connect client whose every answer is a 429 (no network: the retry loop alone is under test)."""

    def __init__(self) -> None:
        self.calls = 0

    async def describe_phone_number(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        response: Any = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                         "ResponseMetadata": {"HTTPStatusCode": 429}}
        raise ClientError(response, "DescribePhoneNumber")


async def test_a_stop_ends_a_read_calls_backoff_at_once() -> None:
    clock, client = FakeClock(), _AlwaysThrottled()
    in_backoff = anyio.Event()
    waits: list[float] = []

    async def backoff_sleep(seconds: float) -> None:  # a backoff that never ends by itself
        waits.append(seconds)
        in_backoff.set()
        await anyio.sleep_forever()

    limiters = {api: RateSettings(1000.0, 50).limiter(api, clock, backoff_sleep) for api in API_NAMES}
    api = Api(client, limiters, backoff=Backoff(), sleep=backoff_sleep, clock=clock, endpoint="test")
    stop = anyio.Event()

    async def stop_during_backoff() -> None:
        await in_backoff.wait()
        stop.set()

    with anyio.fail_after(10):  # a guard against a hang, not a timing assertion
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_during_backoff)
            with pytest.raises(CallFailed) as raised:
                await api.call("DescribePhoneNumber", "describe_phone_number", stop=stop, PhoneNumberId="x")
    assert raised.value.classified.throttled
    assert client.calls == 1 and len(waits) == 1, "no retry after the stop"
    assert api.fatal is None


async def test_a_search_throttled_through_every_retry_is_not_fatal() -> None:
    throttle = {api: ThrottleConfig(rate=None) for api in API_NAMES}
    async with sandbox_env(throttle={**throttle, "SearchAvailablePhoneNumbers": ALWAYS_THROTTLED}) as env, \
            env.client() as client:
        limiters = {api: RateSettings(1000.0, 50).limiter(api, anyio.current_time, anyio.sleep) for api in API_NAMES}
        api = Api(client, limiters, backoff=Backoff(base=0.001, floor=0.001, cap=0.002, max_attempts=4))
        found = await search_numbers(api, Target(instance_id=INSTANCE_ID), "US", "DID", None, 5)
    assert found.numbers == [] and not found.exhausted
    assert found.interrupted is not None and "ThrottlingException" in found.interrupted
    assert env.sandbox.stats()["SearchAvailablePhoneNumbers"] == {"ThrottlingException": 4}
    assert api.fatal is None


async def test_acquire_under_a_throttled_search_leaves_its_slots_open(tmp_path: Path) -> None:
    throttle = {api: ThrottleConfig(rate=None) for api in API_NAMES}
    async with sandbox_env(throttle={**throttle, "SearchAvailablePhoneNumbers": ALWAYS_THROTTLED},
                           claim_delay=0.0) as env, claimer(env, tmp_path / "j", backoff=Backoff(
                               base=0.001, floor=0.001, cap=0.002, max_attempts=3)) as c:
        slots = await c.acquire(AcquireSpec("US", "DID", 3), "throttled")
    assert [(s.status, s.error_code) for s in slots] == [(Status.PENDING, "NotFilled")] * 3
    assert env.sandbox.stats()["SearchAvailablePhoneNumbers"] == {"ThrottlingException": 3}, "searched once"


async def test_a_principal_denied_only_describe_still_claims(tmp_path: Path) -> None:
    narrow = Credentials("AKIANARROWPRINCIPAL1", "narrow-secret", denied_operations=frozenset({"DescribePhoneNumber"}))
    async with sandbox_env(credentials=(*SandboxConfig().credentials, narrow), claim_delay=0.0) as env:
        path = write_numbers(tmp_path / "numbers.txt", NUMBERS)
        result = await run_cli(env, tmp_path, *claim_args(path), "--report", "report.jsonl",
                               AWS_ACCESS_KEY_ID=narrow.access_key_id, AWS_SECRET_ACCESS_KEY=narrow.secret_access_key)
        assert result.returncode == 1, result.stderr  # finished with numbers in_progress: not aborted (3)
        no_traceback(result)
        assert sorted(e.phone_number for e in env.sandbox.ledger) == sorted(NUMBERS), "every claim went through"
        events = [json.loads(line)["event"] for line in result.stderr.splitlines() if line.startswith("{")]
        assert events.count("verify.denied") == 1, "one clear warning"
        rows = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
        assert [r["status"] for r in rows] == ["in_progress"] * len(NUMBERS)
        assert set(env.sandbox.stats()["DescribePhoneNumber"]) == {"AccessDeniedException"}


async def test_a_describe_denial_turns_verification_off_for_the_run_only(tmp_path: Path) -> None:
    narrow = Credentials("AKIANARROWPRINCIPAL1", "narrow-secret", denied_operations=frozenset({"DescribePhoneNumber"}))
    async with sandbox_env(credentials=(*SandboxConfig().credentials, narrow), claim_delay=0.0) as env:
        settings = replace(env.settings, aws_access_key_id=narrow.access_key_id,
                           aws_secret_access_key=narrow.secret_access_key)
        async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j", client_settings=settings,
                           rates=RateSettings(1000.0, 50),
                           options=Options(verifiers=1, verify_first_poll=0.01, verify_timeout=5.0)) as c:
            outcomes = [o async for o in c.claim_many(NUMBERS[:8])]
            assert c.api.fatal is None, "the breaker stayed closed"
            single = await c.claim(NUMBERS[8])  # claims go on after the run, on the same Claimer
        assert [o.status for o in outcomes] == [Status.IN_PROGRESS] * 8
        assert single.status == Status.IN_PROGRESS
        # One verifier: the first denial turned verification off for the rest of the run; the
        # single claim() is another run and asks (and is denied) once for itself.
        assert env.sandbox.stats()["DescribePhoneNumber"] == {"AccessDeniedException": 2}
        assert sorted(e.phone_number for e in env.sandbox.ledger) == NUMBERS[:9]


@pytest.mark.slow  # the CLI's own backoff (about 25 s of retries) runs in real time
async def test_search_command_throttled_through_every_retry_exits_1_not_3(tmp_path: Path) -> None:
    throttle = {api: ThrottleConfig(rate=None) for api in API_NAMES}
    async with sandbox_env(throttle={**throttle, "SearchAvailablePhoneNumbers": ALWAYS_THROTTLED}) as env:
        result = await run_cli(env, tmp_path, "search", "--instance-id", INSTANCE_ID, "--country", "US", "--type",
                               "DID", "--count", "5", "--output", "found.txt", "--log-format", "json")
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    assert "found only 0 of 5" in result.stdout and "searching stopped early" in result.stdout
    assert "ThrottlingException" in result.stdout and (tmp_path / "found.txt").read_text() == ""
