"""Throttling, SigV4, fault injection and admin routes of the sandbox, through real clients."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from bulkclaim.connect import client_config
from bulkclaim.sandbox import API_NAMES, Credentials, FaultConfig, SandboxConfig, ThrottleConfig
from tests.support import INSTANCE_ID, FakeClock, error_of, sandbox_env

pytestmark = pytest.mark.anyio

NUMBER = "+12062000000"
DEFAULT_THROTTLE = {api: ThrottleConfig(rate=2.0, burst=5) for api in API_NAMES}


def claim_args(number: str = NUMBER, token: str | None = None) -> dict[str, Any]:
    return {"InstanceId": INSTANCE_ID, "PhoneNumber": number, "ClientToken": token or str(uuid.uuid4())}


# -- throttling ---------------------------------------------------------------------------------------
async def test_bucket_admits_burst_then_429_then_refills(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, throttle=DEFAULT_THROTTLE) as env, env.client() as client:
        for _ in range(5):
            await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID)
        with pytest.raises(ClientError) as caught:
            await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID)
        assert error_of(caught.value) == ("ThrottlingException", 429, "Rate exceeded")
        clock.advance(0.5)  # 2/s: one token back
        await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID)
        with pytest.raises(ClientError):
            await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID)
        assert env.sandbox.stats()["ListPhoneNumbersV2"] == {"ok": 6, "ThrottlingException": 2}


async def test_buckets_are_per_api_and_shared_by_every_caller(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, throttle=DEFAULT_THROTTLE) as env, \
            env.client() as first, env.client() as second:
        for i in range(5):
            await (first if i % 2 else second).claim_phone_number(**claim_args(f"+1206200000{i}"))
        for client in (first, second):
            with pytest.raises(ClientError) as caught:
                await client.claim_phone_number(**claim_args("+12062000009"))
            assert error_of(caught.value)[:2] == ("ThrottlingException", 429)
        await first.list_phone_numbers_v2(InstanceId=INSTANCE_ID)  # another API, another bucket
        assert env.sandbox.state.executions("+12062000009") == 0


async def test_throttle_is_settable_per_api_at_runtime(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, throttle=DEFAULT_THROTTLE) as env, env.client() as client, \
            aiohttp.ClientSession() as http:
        answer = await http.post(f"{env.endpoint_url}/_sandbox/config",
                                 json={"throttle": {"ClaimPhoneNumber": {"rate": 1.0, "burst": 1}}})
        assert answer.status == 200
        await client.claim_phone_number(**claim_args("+12062000001"))
        with pytest.raises(ClientError):
            await client.claim_phone_number(**claim_args("+12062000002"))
        for _ in range(5):  # Describe keeps its own default bucket
            with pytest.raises(ClientError) as caught:
                await client.describe_phone_number(PhoneNumberId=str(uuid.uuid4()))
            assert error_of(caught.value)[0] == "ResourceNotFoundException"


# -- SigV4 --------------------------------------------------------------------------------------------
async def test_unsigned_request_is_rejected() -> None:
    async with sandbox_env() as env:
        config = client_config(env.settings).merge(AioConfig(signature_version=UNSIGNED))
        async with get_session().create_client("connect", region_name="us-east-1", endpoint_url=env.endpoint_url,
                                               config=config) as client:
            with pytest.raises(ClientError) as caught:
                await client.claim_phone_number(**claim_args())
        assert error_of(caught.value) == ("MissingAuthenticationTokenException", 403, "Missing Authentication Token")
        assert env.sandbox.ledger == []


@pytest.mark.parametrize(
    ("key_id", "secret", "expected"),
    [
        ("AKIAUNKNOWN000000000", "whatever", "UnrecognizedClientException"),
        (None, "a-wrong-secret", "InvalidSignatureException"),
    ],
)
async def test_bad_credentials_are_rejected(key_id: str | None, secret: str, expected: str) -> None:
    async with sandbox_env() as env:
        overrides = {"aws_secret_access_key": secret, **({"aws_access_key_id": key_id} if key_id else {})}
        async with env.client(**overrides) as client:
            with pytest.raises(ClientError) as caught:
                await client.claim_phone_number(**claim_args())
        assert error_of(caught.value)[:2] == (expected, 403)
        assert env.sandbox.ledger == []


async def test_denied_principal_gets_access_denied_and_session_tokens_are_signed() -> None:
    denied = Credentials("AKIADENIEDPRINCIPAL1", "denied-secret", denied=True)
    async with sandbox_env(credentials=(*SandboxConfig().credentials, denied)) as env:
        async with env.client(aws_access_key_id=denied.access_key_id,
                              aws_secret_access_key=denied.secret_access_key) as client:
            with pytest.raises(ClientError) as caught:
                await client.claim_phone_number(**claim_args())
        assert error_of(caught.value) == ("AccessDeniedException", 403,
                                          "User is not authorized to perform connect:ClaimPhoneNumber")
        async with env.client(aws_session_token="FQoGZXIvYXdzEXAMPLESESSIONTOKEN") as client:
            await client.claim_phone_number(**claim_args())  # X-Amz-Security-Token is part of the signature
        assert len(env.sandbox.ledger) == 1


# -- faults -------------------------------------------------------------------------------------------
async def test_injected_500_happens_before_any_effect() -> None:
    async with sandbox_env(faults=FaultConfig(error_rate=1.0)) as env, env.client() as client:
        with pytest.raises(ClientError) as caught:
            await client.claim_phone_number(**claim_args())
        assert error_of(caught.value)[:2] == ("InternalServiceException", 500)
        assert env.sandbox.ledger == []


async def test_lost_response_then_resend_with_same_token_executes_once() -> None:
    async with sandbox_env(faults=FaultConfig(lost_response_rate=1.0)) as env, env.client() as client:
        token = str(uuid.uuid4())
        with pytest.raises(ConnectionClosedError):
            await client.claim_phone_number(**claim_args(token=token))
        assert env.sandbox.state.executions(NUMBER) == 1  # it took effect although no answer came
        env.sandbox.set_faults(FaultConfig())
        answer = await client.claim_phone_number(**claim_args(token=token))
        assert answer["PhoneNumberId"] == env.sandbox.ledger[0].phone_number_id
        assert env.sandbox.state.executions(NUMBER) == 1
        assert env.sandbox.stats()["ClaimPhoneNumber"] == {"lost": 1, "ok": 1}


async def test_stall_outlasts_the_client_timeout_and_still_executes() -> None:
    faults = FaultConfig(stall_rate=1.0, stall_seconds=0.3)
    async with sandbox_env(faults=faults) as env, env.client(read_timeout=0.05) as client:
        token = str(uuid.uuid4())
        with pytest.raises(ReadTimeoutError):
            await client.claim_phone_number(**claim_args(token=token))
        for _ in range(100):  # the server finishes the stalled request on its own
            if env.sandbox.ledger:
                break
            await asyncio.sleep(0.05)
        env.sandbox.set_faults(FaultConfig())
        answer = await client.claim_phone_number(**claim_args(token=token))
        assert answer["PhoneNumberId"] == env.sandbox.ledger[0].phone_number_id
        assert env.sandbox.state.executions(NUMBER) == 1


async def test_added_latency_applies_to_chosen_operations_only() -> None:
    faults = FaultConfig(latency=(0.5, 0.5), operations=frozenset({"DescribePhoneNumber"}))
    async with sandbox_env(faults=faults) as env, env.client(read_timeout=0.1) as client:
        await client.claim_phone_number(**claim_args())
        with pytest.raises(ReadTimeoutError):
            await client.describe_phone_number(PhoneNumberId=env.sandbox.ledger[0].phone_number_id)


async def test_faults_are_reproducible_from_the_seed() -> None:
    async def outcomes(seed: int) -> list[str]:
        faults = FaultConfig(error_rate=0.3, lost_response_rate=0.3, seed=seed)
        result = []
        async with sandbox_env(faults=faults) as env, env.client() as client:
            for i in range(20):
                try:
                    await client.claim_phone_number(**claim_args(f"+120620000{i:02d}"))
                    result.append("ok")
                except ClientError as exc:
                    result.append(error_of(exc)[0])
                except ConnectionClosedError:
                    result.append("lost")
        return result

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert {"ok", "lost", "InternalServiceException"} <= set(first)


# -- admin routes -------------------------------------------------------------------------------------
async def test_admin_routes_expose_ledger_stats_and_reset() -> None:
    async with sandbox_env() as env, env.client() as client, aiohttp.ClientSession() as http:
        token = str(uuid.uuid4())
        await client.claim_phone_number(**claim_args(token=token))
        ledger = await (await http.get(f"{env.endpoint_url}/_sandbox/ledger")).json()
        assert [(e["action"], e["phone_number"], e["client_token"]) for e in ledger] == [("claim", NUMBER, token)]
        stats = await (await http.get(f"{env.endpoint_url}/_sandbox/stats")).json()
        assert stats == {"ClaimPhoneNumber": {"ok": 1}}
        bad = await http.post(f"{env.endpoint_url}/_sandbox/config", json={"nonsense": 1})
        assert bad.status == 400
        assert (await http.post(f"{env.endpoint_url}/_sandbox/reset")).status == 200
        assert await (await http.get(f"{env.endpoint_url}/_sandbox/ledger")).json() == []
        await client.claim_phone_number(**claim_args())  # available again after a reset
