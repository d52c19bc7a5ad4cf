"""The sandbox's account limits and Service Quotas API, through stock aiobotocore clients."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from bulkclaim.connect import aws_client
from bulkclaim.preflight import Preflight
from bulkclaim.quotas import CLAIM_RATE_QUOTA, PHONE_NUMBER_QUOTA, read_quotas
from bulkclaim.sandbox import InventorySpec, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, FakeClock, sandbox_env

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=20))]


async def test_get_service_quota_speaks_the_json_protocol() -> None:
    async with sandbox_env(phone_number_quota=7) as env, aws_client("service-quotas", env.settings) as quotas:
        applied = await quotas.get_service_quota(ServiceCode="connect", QuotaCode=PHONE_NUMBER_QUOTA)
        assert applied["Quota"]["Value"] == 7.0 and applied["Quota"]["QuotaName"] == "Phone numbers per instance"
        default = await quotas.get_aws_default_service_quota(ServiceCode="connect", QuotaCode=PHONE_NUMBER_QUOTA)
        assert default["Quota"]["Value"] == 5.0
        with pytest.raises(ClientError) as unknown:
            await quotas.get_service_quota(ServiceCode="connect", QuotaCode="L-00000000")
        assert unknown.value.response["Error"]["Code"] == "NoSuchResourceException"
        assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        env.sandbox.configure(service_quotas_access=False)
        with pytest.raises(ClientError) as denied:
            await quotas.get_service_quota(ServiceCode="connect", QuotaCode=PHONE_NUMBER_QUOTA)
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"


async def test_rate_quota_is_the_claim_bucket_and_unreadable_quotas_are_reported() -> None:
    async with sandbox_env(throttle={"ClaimPhoneNumber": ThrottleConfig(rate=37.0, burst=5)}) as env:
        quotas = await read_quotas(env.settings)
        assert (quotas.phone_numbers, quotas.claim_rate, quotas.problems) == (10_000, 37.0, [])
        assert env.sandbox.stats()["ServiceQuotas.GetServiceQuota"] == {"ok": 4}  # with Associate's and Update's
        env.sandbox.configure(service_quotas_access=False)
        denied = await read_quotas(env.settings)
        assert (denied.phone_numbers, denied.claim_rate) == (None, None)
        assert all("AccessDeniedException" in problem for problem in denied.problems) and len(denied.problems) == 4


async def test_instance_quota_refuses_the_claim_beyond_it_in_refuse_mode() -> None:
    async with sandbox_env(phone_number_quota=2, claim_delay=0.0, quota_reached="refuse") as env, \
            env.client() as client:
        for number in NUMBERS[:2]:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number)
        with pytest.raises(ClientError) as refused:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[2])
        assert refused.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
        assert env.sandbox.state.executions(NUMBERS[2]) == 0
        listed = await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID)
        await client.release_phone_number(PhoneNumberId=listed["ListPhoneNumbersSummaryList"][0]["PhoneNumberId"])
        await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[2])  # room again
        assert env.sandbox.state.in_cooldown(listed["ListPhoneNumbersSummaryList"][0]["PhoneNumber"])


async def test_a_claim_beyond_the_quota_is_accepted_then_fails_with_the_limit_message(clock: FakeClock) -> None:
    """Issue 14 gap 1: ClaimPhoneNumber's model has no ServiceQuotaExceeded error; the PhoneNumberStatus
    reference says a claim can settle FAILED because the target "has reached its limit of total claimed
    numbers". The failed claim is executed (it counts toward churn) and the number stays ours to retry."""
    async with sandbox_env(clock=clock, phone_number_quota=2, claim_delay=1.0) as env, env.client() as client:
        for number in NUMBERS[:2]:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number)
        over = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[2])
        described = await client.describe_phone_number(PhoneNumberId=over["PhoneNumberId"])
        assert described["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]["Status"] == "IN_PROGRESS"
        clock.advance(1.0)
        status = (await client.describe_phone_number(PhoneNumberId=over["PhoneNumberId"])
                  )["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]
        target = f"arn:aws:connect:us-east-1:123456789012:instance/{INSTANCE_ID}"
        assert status == {"Status": "FAILED",
                          "Message": f"The TargetArn {target} has reached its limit of total claimed numbers."}
        assert [e.outcome for e in env.sandbox.ledger] == ["CLAIMED", "CLAIMED", "FAILED"]
        assert env.sandbox.state.limits.churn(target, clock()) == 3
        env.sandbox.configure(phone_number_quota=3)  # the quota raised: our retry (a new token) gets the number
        retried = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[2])
        clock.advance(1.0)
        described = await client.describe_phone_number(PhoneNumberId=retried["PhoneNumberId"])
        assert described["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]["Status"] == "CLAIMED"


async def test_churn_rule_blocks_claims_until_the_window_passes() -> None:
    clock = FakeClock()
    async with sandbox_env(clock=clock, phone_number_quota=2, claim_delay=0.0) as env, env.client() as client:
        for number in NUMBERS[:2]:  # 2 claims + 2 releases = 200% of a quota of 2
            answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number)
            await client.release_phone_number(PhoneNumberId=answer["PhoneNumberId"])
        with pytest.raises(ClientError) as blocked:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[2])
        assert blocked.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        assert "200%" in blocked.value.response["Error"]["Message"]
        clock.advance(180 * 86400.0 + 1)
        await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[2])


async def test_competition_takes_numbers_just_before_our_claim() -> None:
    async with sandbox_env(competition_rate=1.0) as env, env.client() as client:
        with pytest.raises(ClientError) as lost:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[0])
        assert lost.value.response["Error"]["Message"] == f"Phone number not available: {NUMBERS[0]}"
        holder = env.sandbox.state.holder_of(NUMBERS[0])
        assert holder is not None and "competitor" in holder.target_arn
        search = await client.search_available_phone_numbers(InstanceId=INSTANCE_ID, PhoneNumberCountryCode="US",
                                                             PhoneNumberType="DID", MaxResults=10)
        assert NUMBERS[0] not in [n["PhoneNumber"] for n in search["AvailableNumbersList"]]


def test_preflight_arithmetic_and_churn_warning() -> None:
    found = Preflight("instance/x", quota=5, quota_source="Service Quotas", on_target=3, to_claim=4, churn=0)
    assert (found.allowed, found.over, found.churn_limit) == (2, 2, 10)
    assert "it holds 3 number(s), the run would claim 4 more" in found.refusal()
    assert "allows 2 more — 2 too many" in found.refusal()
    assert found.churn_warning() is None
    close = Preflight("instance/x", quota=5, quota_source="Service Quotas", on_target=0, to_claim=2, churn=6)
    assert close.churn_warning() is not None and "approach" in (close.churn_warning() or "")
    beyond = Preflight("instance/x", quota=5, quota_source="Service Quotas", on_target=0, to_claim=5, churn=9)
    assert "exceed" in (beyond.churn_warning() or "")
    unknown = Preflight("instance/x", quota=None, quota_source="unknown", on_target=3, to_claim=400, churn=0)
    assert (unknown.allowed, unknown.over, unknown.churn_warning()) == (None, 0, None)


def test_quota_codes_are_the_documented_ones() -> None:
    assert (PHONE_NUMBER_QUOTA, CLAIM_RATE_QUOTA) == ("L-8F812903", "L-21385E28")


async def test_every_phone_number_api_rate_quota_is_served_from_its_bucket() -> None:
    codes = {"ClaimPhoneNumber": "L-21385E28", "ReleasePhoneNumber": "L-91A40F24",
             "DescribePhoneNumber": "L-34F440B5", "ListPhoneNumbersV2": "L-B07B2C56",
             "SearchAvailablePhoneNumbers": "L-AF3C38D5", "UpdatePhoneNumber": "L-B7E1268D"}
    throttle = {api: ThrottleConfig(rate=10.0 + i, burst=5) for i, api in enumerate(codes)}
    async with sandbox_env(throttle=throttle) as env, aws_client("service-quotas", env.settings) as quotas:
        for i, (api, code) in enumerate(codes.items()):
            applied = (await quotas.get_service_quota(ServiceCode="connect", QuotaCode=code))["Quota"]
            assert (applied["Value"], applied["QuotaName"]) == (10.0 + i, f"Rate of {api} API requests")
            default = await quotas.get_aws_default_service_quota(ServiceCode="connect", QuotaCode=code)
            assert default["Quota"]["Value"] == 2.0
        env.sandbox.set_throttle("ReleasePhoneNumber", ThrottleConfig(rate=0.5, burst=1))  # runtime changes show
        applied = await quotas.get_service_quota(ServiceCode="connect", QuotaCode=codes["ReleasePhoneNumber"])
        assert applied["Quota"]["Value"] == 0.5
