"""ClaimPhoneNumber and DescribePhoneNumber against the sandbox, through a stock aiobotocore client."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from types_aiobotocore_connect import ConnectClient

from bulkclaim.sandbox import SandboxConfig
from tests.support import INSTANCE_ID, FakeClock, error_of, sandbox_env

pytestmark = pytest.mark.anyio

NUMBER = "+12062000000"
OTHER = "+12062000001"
TDG_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def token() -> str:
    return str(uuid.uuid4())


async def test_claim_is_asynchronous_in_progress_then_claimed(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, claim_delay=2.0) as env, env.client() as client:
        answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=token())
        assert answer["PhoneNumberArn"].endswith("phone-number/" + answer["PhoneNumberId"])
        described = await client.describe_phone_number(PhoneNumberId=answer["PhoneNumberId"])
        summary = described["ClaimedPhoneNumberSummary"]
        assert summary["PhoneNumberStatus"]["Status"] == "IN_PROGRESS"
        assert summary["PhoneNumber"] == NUMBER
        assert summary["InstanceId"] == INSTANCE_ID
        clock.advance(2.0)
        described = await client.describe_phone_number(PhoneNumberId=answer["PhoneNumberId"])
        assert described["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]["Status"] == "CLAIMED"
        assert [e.phone_number for e in env.sandbox.ledger] == [NUMBER]


async def searchable(client: ConnectClient) -> list[str]:
    """NUMBER if SearchAvailablePhoneNumbers offers it (to anyone), else nothing."""
    found = await client.search_available_phone_numbers(InstanceId=INSTANCE_ID, PhoneNumberCountryCode="US",
                                                        PhoneNumberType="DID", PhoneNumberPrefix=NUMBER)
    return [n["PhoneNumber"] for n in found["AvailableNumbersList"]]


async def test_a_failed_claim_keeps_the_number_for_our_retry_and_from_everyone_else(clock: FakeClock) -> None:
    """Issue 14 gap 2: "you have one day to retry claiming the phone number before the number is
    released back to the inventory" (PhoneNumberStatus): our retry (a new token) claims it; meanwhile
    it is not in the inventory (search) and no other account can take it."""
    async with sandbox_env(clock=clock, claim_delay=1.0, claim_failure_rate=1.0, competition_rate=1.0,
                           failed_claim_reservation=100.0) as env, env.client() as client:
        env.sandbox.configure(competition_rate=0.0)  # the first claim must reach the number
        answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=token())
        clock.advance(1.0)
        status = (await client.describe_phone_number(PhoneNumberId=answer["PhoneNumberId"])
                  )["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]
        assert status == {"Status": "FAILED", "Message": SandboxConfig().claim_failure_message}
        assert await searchable(client) == []
        env.sandbox.configure(competition_rate=1.0, claim_failure_rate=0.0)  # a rival would win any free number
        retried = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=token())
        clock.advance(1.0)
        assert env.sandbox.state.holder_of(NUMBER).phone_number_id == retried["PhoneNumberId"]  # type: ignore[union-attr]
        assert [e.outcome for e in env.sandbox.ledger] == ["FAILED", "CLAIMED"]


async def test_the_reservation_of_a_failed_claim_ends(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, claim_delay=1.0, claim_failure_rate=1.0,
                           failed_claim_reservation=100.0) as env, env.client() as client:
        await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=token())
        clock.advance(100.5)
        assert await searchable(client) == []
        clock.advance(1.0)  # settled at 1.0, reserved until 101.0: back in the inventory for anyone
        assert await searchable(client) == [NUMBER]
        env.sandbox.configure(competition_rate=1.0)
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=token())
        assert error_of(caught.value) == ("InvalidParameterException", 400, f"Phone number not available: {NUMBER}")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"InstanceId": "00000000-0000-0000-0000-000000000000"}, ("ResourceNotFoundException", 404)),
        ({"TargetArn": "arn:aws:connect:us-east-1:123456789012:traffic-distribution-group/nope"},
         ("ResourceNotFoundException", 404)),
        ({}, ("InvalidParameterException", 400)),
        ({"InstanceId": INSTANCE_ID,
          "TargetArn": f"arn:aws:connect:us-east-1:123456789012:instance/{INSTANCE_ID}"},
         ("InvalidParameterException", 400)),
    ],
)
async def test_claim_target_errors(params: dict[str, str], expected: tuple[str, int]) -> None:
    async with sandbox_env() as env, env.client() as client:
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(PhoneNumber=NUMBER, ClientToken=token(), **params)  # type: ignore[arg-type]
        assert error_of(caught.value)[:2] == expected
        assert env.sandbox.ledger == []


async def test_claim_by_instance_arn_and_traffic_distribution_group() -> None:
    async with sandbox_env(traffic_distribution_group_ids=(TDG_ID,)) as env, env.client() as client:
        instance_arn = f"arn:aws:connect:us-east-1:123456789012:instance/{INSTANCE_ID}"
        tdg_arn = f"arn:aws:connect:us-east-1:123456789012:traffic-distribution-group/{TDG_ID}"
        await client.claim_phone_number(InstanceId=instance_arn, PhoneNumber=NUMBER, ClientToken=token())
        await client.claim_phone_number(TargetArn=tdg_arn, PhoneNumber=OTHER, ClientToken=token())
        listed = await client.list_phone_numbers_v2(TargetArn=tdg_arn)
        assert [r["PhoneNumber"] for r in listed["ListPhoneNumbersSummaryList"]] == [OTHER]
        assert [e.target_arn for e in env.sandbox.ledger] == [instance_arn, tdg_arn]


async def test_number_claimed_by_someone_else_is_not_available() -> None:
    async with sandbox_env(foreign_claims=(NUMBER,)) as env, env.client() as client:
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=token())
        assert error_of(caught.value) == ("InvalidParameterException", 400, f"Phone number not available: {NUMBER}")
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber="+12069999999", ClientToken=token())
        assert error_of(caught.value)[0] == "InvalidParameterException"
        assert env.sandbox.ledger == []
        holder = env.sandbox.state.holder_of(NUMBER)
        assert holder is not None and ":999999999999:" in holder.target_arn


@pytest.mark.parametrize(
    ("changes", "message_part"),
    [
        ({"PhoneNumber": "12062000000"}, "at 'phoneNumber'"),
        ({"PhoneNumberDescription": "x" * 501}, "at 'phoneNumberDescription'"),
        ({"Tags": {"aws:reserved": "x"}}, "at 'tags.key'"),
        ({"Tags": {f"k{i}": "v" for i in range(51)}}, "at 'tags'"),
        ({"Tags": {"k" * 129: "v"}}, "at 'tags.key'"),
        ({"Tags": {"ok": "v" * 257}}, "at 'tags.ok.member'"),
        ({"ClientToken": "NOT-A-UUID"}, "at 'clientToken'"),
        ({"ClientToken": str(uuid.uuid4()).upper()}, "at 'clientToken'"),
        ({"ClientToken": f"{uuid.uuid4()}\n"}, "at 'clientToken'"),  # issue 14: a trailing newline
    ],
)
async def test_invalid_parameters_are_400_and_never_executed(changes: dict[str, Any], message_part: str) -> None:
    params: dict[str, Any] = {"InstanceId": INSTANCE_ID, "PhoneNumber": NUMBER, "ClientToken": token(), **changes}
    async with sandbox_env() as env, env.client() as client:
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(**params)
        code, status, message = error_of(caught.value)
        assert (code, status) == ("InvalidParameterException", 400)
        assert message.startswith("1 validation error detected: ") and message_part in message
        assert env.sandbox.ledger == []


async def test_same_token_same_parameters_replays_without_second_execution() -> None:
    async with sandbox_env() as env, env.client() as client:
        request = {"InstanceId": INSTANCE_ID, "PhoneNumber": NUMBER, "ClientToken": token(),
                   "PhoneNumberDescription": "front desk", "Tags": {"team": "a"}}
        first = await client.claim_phone_number(**request)  # type: ignore[arg-type]
        second = await client.claim_phone_number(**request)  # type: ignore[arg-type]
        assert (first["PhoneNumberId"], first["PhoneNumberArn"]) == (second["PhoneNumberId"], second["PhoneNumberArn"])
        assert env.sandbox.state.executions(NUMBER) == 1


async def test_same_token_other_parameters_is_409_idempotency_exception() -> None:
    async with sandbox_env() as env, env.client() as client:
        shared = token()
        await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=shared)
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=shared,
                                            PhoneNumberDescription="changed")
        assert error_of(caught.value)[:2] == ("IdempotencyException", 409)
        assert env.sandbox.state.executions(NUMBER) == 1


async def test_expired_token_is_forgotten_and_our_own_number_looks_unavailable(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, token_lifetime=60.0) as env, env.client() as client:
        shared = token()
        await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=shared)
        clock.advance(61.0)
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER, ClientToken=shared)
        assert error_of(caught.value) == ("InvalidParameterException", 400, f"Phone number not available: {NUMBER}")
        assert env.sandbox.state.executions(NUMBER) == 1


async def test_missing_client_token_is_allowed() -> None:
    async with sandbox_env() as env, env.client() as client:
        def drop_token(params: dict[str, Any], **_: Any) -> None:
            # botocore always fills the token in; strip it from the serialized body, as a raw client would
            body = json.loads(params["body"])
            del body["ClientToken"]
            params["body"] = json.dumps(body).encode()

        client.meta.events.register("before-call.connect.ClaimPhoneNumber", drop_token)
        await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBER)
        assert [e.client_token for e in env.sandbox.ledger] == [None]


async def test_describe_unknown_id_is_404() -> None:
    async with sandbox_env() as env, env.client() as client:
        with pytest.raises(ClientError) as caught:
            await client.describe_phone_number(PhoneNumberId=str(uuid.uuid4()))
        assert error_of(caught.value)[:2] == ("ResourceNotFoundException", 404)
