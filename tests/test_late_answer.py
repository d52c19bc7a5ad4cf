"""Issue 14 gap 7, "executed, answer late": the claim takes effect at once and its answer arrives after
the client has given up. A retry with the *same* token is answered from the token (no second claim);
a naive retry with a *new* token is a second claim, which the sandbox's ledger shows."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from bulkclaim import Backoff, Claimer, Options, RateSettings, Status
from bulkclaim.sandbox import FaultConfig, InventorySpec
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, error_of, sandbox_env

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=12))]
LATE = FaultConfig(late_answer_rate=0.4, late_answer_seconds=1.0, operations=frozenset({"ClaimPhoneNumber"}), seed=7)


async def test_same_token_retries_after_late_answers_claim_each_number_once(tmp_path: Path) -> None:
    async with sandbox_env(faults=LATE, claim_delay=0.0) as env:
        settings = replace(env.settings, read_timeout=0.3)
        async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j", client_settings=settings,
                           rates=RateSettings(1000.0, 50), options=Options(verify_first_poll=0.01),
                           backoff=Backoff(base=0.01, floor=0.001, cap=0.05, max_attempts=8)) as claimer:
            outcomes = {o.phone_number: o async for o in claimer.claim_many(NUMBERS)}
    assert {o.status for o in outcomes.values()} == {Status.CLAIMED}
    assert env.sandbox.stats()["ClaimPhoneNumber"]["late"] >= 3  # late answers happened, and were retried
    assert [env.sandbox.state.executions(n) for n in NUMBERS] == [1] * len(NUMBERS)  # the ledger: once each
    for number, outcome in outcomes.items():
        holder = env.sandbox.state.holder_of(number)
        assert holder is not None and holder.phone_number_id == outcome.phone_number_id


async def test_a_naive_retry_with_a_new_token_after_a_late_answer_claims_twice() -> None:
    """A client that wants one number and, on a timeout, tries again with a new token ends up holding
    two; retrying its first number with a new token is "not available" although that number is its own."""
    always_late = replace(LATE, late_answer_rate=1.0)
    async with sandbox_env(faults=always_late, claim_delay=0.0) as env, env.client(read_timeout=0.3) as client:
        for candidate in NUMBERS[:2]:  # the naive loop: a timeout means "try again", with a new token
            with pytest.raises(ReadTimeoutError):
                await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=candidate,
                                                ClientToken=str(uuid.uuid4()))
        claims = [e for e in env.sandbox.ledger if e.action == "claim"]
        assert [e.phone_number for e in claims] == NUMBERS[:2], "one number wanted, two claimed"
        env.sandbox.set_faults(FaultConfig())
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[0],
                                            ClientToken=str(uuid.uuid4()))
        assert error_of(caught.value) == ("InvalidParameterException", 400,
                                          f"Phone number not available: {NUMBERS[0]}")
        holder = env.sandbox.state.holder_of(NUMBERS[0])
        assert holder is not None and holder.instance_id == INSTANCE_ID  # ours, though the answer said otherwise
        same = claims[0].client_token
        assert same is not None  # the same token instead: the first claim's answer, no second claim
        answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[0], ClientToken=same)
        assert answer["PhoneNumberId"] == claims[0].phone_number_id and env.sandbox.state.executions(NUMBERS[0]) == 1
