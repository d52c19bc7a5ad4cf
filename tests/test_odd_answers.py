"""Answers the network can bring that are not the service's answer: a 200 whose body is empty,
truncated or an HTML page (a proxy or load balancer in the way). Each is an unknown outcome: the
number is retried with the same token and settled by asking the service, never an internal error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkclaim import Status
from bulkclaim.sandbox import API_NAMES, FaultConfig, ThrottleConfig
from tests.support import sandbox_env
from tests.test_claimer import NUMBERS, assert_exactly_once, claim_all, claimer
from tests.test_cli import claim_args, no_traceback, run_cli, write_numbers

pytestmark = pytest.mark.anyio


async def test_claims_answered_with_garbage_every_time_are_settled_by_asking_the_service(tmp_path: Path) -> None:
    # Every ClaimPhoneNumber takes effect and is answered with a body that is not the answer: the
    # retries (same token) are replays, and the listing then shows the number is ours.
    garbage = FaultConfig(garbage_rate=1.0, operations=frozenset({"ClaimPhoneNumber"}))
    async with sandbox_env(faults=garbage, claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        outcome = await c.claim(NUMBERS[0])
    assert outcome.status == Status.CLAIMED, outcome
    assert outcome.phone_number_id == env.sandbox.ledger[0].phone_number_id
    assert env.sandbox.stats()["ClaimPhoneNumber"]["garbage"] > 1  # retried with the same token first
    assert_exactly_once(env, NUMBERS[:1])


async def test_garbage_answers_on_every_api_still_claim_each_number_once(tmp_path: Path) -> None:
    numbers = NUMBERS[:30]
    garbage = FaultConfig(garbage_rate=0.4, seed=7, operations=frozenset(
        {"ClaimPhoneNumber", "DescribePhoneNumber", "ListPhoneNumbersV2"}))
    async with sandbox_env(faults=garbage, claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        outcomes = await claim_all(c, numbers)
    assert {o.status for o in outcomes.values()} <= {Status.CLAIMED, Status.IN_PROGRESS, Status.PENDING}
    assert sum(o.status == Status.CLAIMED for o in outcomes.values()) >= 25
    assert sum(env.sandbox.stats()[api].get("garbage", 0) for api in ("ClaimPhoneNumber", "DescribePhoneNumber")) > 5
    assert_exactly_once(env, numbers)


async def test_cli_run_with_garbage_answers_completes_without_an_internal_error(tmp_path: Path) -> None:
    numbers = NUMBERS[:20]
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    garbage = FaultConfig(garbage_rate=0.3, seed=3, operations=frozenset(
        {"ClaimPhoneNumber", "DescribePhoneNumber", "ListPhoneNumbersV2"}))
    async with sandbox_env(throttle=fast, claim_delay=0.0, faults=garbage) as env:
        report = tmp_path / "report.jsonl"
        result = await run_cli(env, tmp_path, *claim_args(write_numbers(tmp_path / "n.txt", numbers)),
                               "--journal", str(tmp_path / "j"), "--report", str(report))
    assert result.returncode in (0, 1), result.stderr[-3000:]
    no_traceback(result)
    assert "internal error" not in result.stderr
    assert env.sandbox.stats()["ClaimPhoneNumber"].get("garbage", 0) > 0
    assert report.read_text(encoding="utf-8").count("\n") == len(numbers)
    assert_exactly_once(env, numbers)
