"""UpdatePhoneNumber (moving a number to another instance) against the sandbox, through a stock
aiobotocore client: asynchronous like a claim, idempotent by ClientToken, throttled and faulted."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from types_aiobotocore_connect import ConnectClient

from bulkclaim.sandbox import FaultConfig, SandboxConfig, ThrottleConfig
from tests.support import INSTANCE_ID, FakeClock, error_of, sandbox_env

pytestmark = pytest.mark.anyio

NUMBER = "+12062000000"
DEST = "99999999-8888-7777-6666-555555555555"
TWO_INSTANCES: dict[str, Any] = {"instance_ids": (INSTANCE_ID, DEST)}


def token() -> str:
    return str(uuid.uuid4())


async def claimed(client: ConnectClient, clock: FakeClock, number: str = NUMBER) -> str:
    answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number, ClientToken=token())
    clock.advance(1.0)
    return answer["PhoneNumberId"]


async def status_of(client: ConnectClient, number_id: str) -> tuple[str, str]:
    summary = (await client.describe_phone_number(PhoneNumberId=number_id))["ClaimedPhoneNumberSummary"]
    return summary["PhoneNumberStatus"]["Status"], summary.get("InstanceId", "")


async def listed_on(client: ConnectClient, instance_id: str) -> list[str]:
    page = await client.list_phone_numbers_v2(InstanceId=instance_id)
    return [row["PhoneNumber"] for row in page["ListPhoneNumbersSummaryList"]]


async def test_a_move_is_asynchronous_and_keeps_the_numbers_id(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, claim_delay=1.0, **TWO_INSTANCES) as env, env.client() as client:
        number_id = await claimed(client, clock)
        flow = env.sandbox.state.flows.flows_of(INSTANCE_ID)[0]
        await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                         ContactFlowId=flow.id)
        answer = await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken=token())
        assert answer["PhoneNumberId"] == number_id
        assert await status_of(client, number_id) == ("IN_PROGRESS", DEST)
        clock.advance(1.0)
        assert await status_of(client, number_id) == ("CLAIMED", DEST)
        assert await listed_on(client, DEST) == [NUMBER]
        assert await listed_on(client, INSTANCE_ID) == []
        assert [(e.action, e.target_arn.rsplit("/", 1)[1]) for e in env.sandbox.ledger] == [
            ("claim", INSTANCE_ID), ("associate", INSTANCE_ID), ("move", DEST)]
        assert env.sandbox.state.moves(NUMBER) == 1
        assert env.sandbox.state.flows.associated(number_id) is None  # Connect drops the flow association
        assert (await client.list_flow_associations(InstanceId=INSTANCE_ID))["FlowAssociationSummaryList"] == []


async def test_the_same_token_gets_the_same_answer_and_another_request_a_conflict(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, claim_delay=1.0, **TWO_INSTANCES) as env, env.client() as client:
        number_id = await claimed(client, clock)
        first_token = token()
        first = await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken=first_token)
        clock.advance(1.0)
        again = await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken=first_token)
        assert (again["PhoneNumberId"], again["PhoneNumberArn"]) == (first["PhoneNumberId"], first["PhoneNumberArn"])
        with pytest.raises(ClientError) as conflict:
            await client.update_phone_number(PhoneNumberId=number_id, InstanceId=INSTANCE_ID, ClientToken=first_token)
        assert error_of(conflict.value)[:2] == ("IdempotencyException", 409)
        assert env.sandbox.state.moves(NUMBER) == 1


async def test_refusals_of_a_move(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, claim_delay=1.0, **TWO_INSTANCES) as env, env.client() as client:
        number_id = await claimed(client, clock)
        with pytest.raises(ClientError) as same_target:  # a new token: nothing to move
            await client.update_phone_number(PhoneNumberId=number_id, InstanceId=INSTANCE_ID, ClientToken=token())
        assert error_of(same_target.value)[:2] == ("InvalidParameterException", 400)
        await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken=token())
        with pytest.raises(ClientError) as busy:  # still IN_PROGRESS
            await client.update_phone_number(PhoneNumberId=number_id, InstanceId=INSTANCE_ID, ClientToken=token())
        assert error_of(busy.value)[:2] == ("ResourceInUseException", 409)
        with pytest.raises(ClientError) as unknown:
            await client.update_phone_number(PhoneNumberId=str(uuid.uuid4()), InstanceId=DEST, ClientToken=token())
        assert error_of(unknown.value)[:2] == ("ResourceNotFoundException", 404)
        with pytest.raises(ClientError) as bad_token:  # validated from botocore's model / the service's rule
            await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken="NOT-A-UUID")
        assert error_of(bad_token.value)[:2] == ("InvalidParameterException", 400)
        assert env.sandbox.state.moves(NUMBER) == 1


async def test_a_move_to_a_full_instance_settles_failed(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, claim_delay=1.0, phone_number_quota=1, **TWO_INSTANCES) as env, \
            env.client() as client:
        number_id = await claimed(client, clock)
        other = await client.claim_phone_number(InstanceId=DEST, PhoneNumber="+12062000001", ClientToken=token())
        clock.advance(1.0)
        assert other["PhoneNumberId"]
        await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken=token())
        clock.advance(1.0)
        assert (await status_of(client, number_id))[0] == "FAILED"


async def test_moves_have_their_own_bucket_and_faults(clock: FakeClock) -> None:
    throttle = {api: ThrottleConfig(rate=None) for api in SandboxConfig().throttle}
    throttle["UpdatePhoneNumber"] = ThrottleConfig(rate=2.0, burst=1)
    async with sandbox_env(clock=clock, claim_delay=0.0, throttle=throttle, **TWO_INSTANCES) as env, \
            env.client() as client:
        first = await claimed(client, clock, "+12062000001")
        second = await claimed(client, clock, "+12062000002")
        await client.update_phone_number(PhoneNumberId=first, InstanceId=DEST, ClientToken=token())
        with pytest.raises(ClientError) as throttled:
            await client.update_phone_number(PhoneNumberId=second, InstanceId=DEST, ClientToken=token())
        assert error_of(throttled.value)[:2] == ("ThrottlingException", 429)
        await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber="+12062000003")  # another bucket
        clock.advance(0.5)
        env.sandbox.set_faults(FaultConfig(error_rate=1.0, operations=frozenset({"UpdatePhoneNumber"})))
        with pytest.raises(ClientError) as failed:
            await client.update_phone_number(PhoneNumberId=second, InstanceId=DEST, ClientToken=token())
        assert error_of(failed.value)[:2] == ("InternalServiceException", 500)
        assert env.sandbox.state.moves("+12062000002") == 0  # a 500 before any effect
        assert env.sandbox.stats()["UpdatePhoneNumber"] == {"ok": 1, "ThrottlingException": 1,
                                                            "InternalServiceException": 1}


async def test_a_lost_answer_moved_the_number_and_the_same_token_replays(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, claim_delay=0.0, **TWO_INSTANCES) as env, \
            env.client(read_timeout=2.0) as client:
        number_id = await claimed(client, clock)
        env.sandbox.set_faults(FaultConfig(lost_response_rate=1.0, operations=frozenset({"UpdatePhoneNumber"})))
        move_token = token()
        with pytest.raises(Exception):  # noqa: B017, PT011 - the connection is dropped: botocore's transport error
            await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken=move_token)
        env.sandbox.set_faults(FaultConfig())
        again = await client.update_phone_number(PhoneNumberId=number_id, InstanceId=DEST, ClientToken=move_token)
        assert again["PhoneNumberId"] == number_id
        assert env.sandbox.state.moves(NUMBER) == 1
        assert (await status_of(client, number_id)) == ("CLAIMED", DEST)
