"""Regions: the sandbox's own, a TDG's alternate Region (Connect's documented rules there), any other."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import INSTANCE_ID, error_of, sandbox_env

pytestmark = pytest.mark.anyio

TDG_ARN = "arn:aws:connect:us-east-1:123456789012:traffic-distribution-group/tdg-1"
SETUP: dict[str, Any] = {"traffic_distribution_group_ids": ("tdg-1",), "replica_region": "us-west-2",
                         "claim_delay": 0.0}


async def test_alternate_region_follows_the_api_reference() -> None:
    async with sandbox_env(**SETUP) as env, env.client() as home, env.client(region="us-west-2") as replica:
        on_tdg = await home.claim_phone_number(TargetArn=TDG_ARN, PhoneNumber="+12062000000")
        on_instance = await home.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber="+12062000001")

        async def refused(call: Awaitable[Any]) -> tuple[str, int]:
            with pytest.raises(ClientError) as caught:
                await call
            return error_of(caught.value)[:2]

        # Claim and Release: only in the Region where the TDG was created / the number was claimed.
        assert await refused(replica.claim_phone_number(TargetArn=TDG_ARN, PhoneNumber="+12062000002")) == \
            ("ResourceNotFoundException", 404)
        assert await refused(replica.release_phone_number(PhoneNumberId=on_tdg["PhoneNumberArn"])) == \
            ("ResourceNotFoundException", 404)
        assert env.sandbox.state.executions("+12062000002") == 0 and len(env.sandbox.ledger) == 2
        # Describe: a TDG's number needs its full ARN in the alternate Region; a UUID is not found.
        assert await refused(replica.describe_phone_number(PhoneNumberId=on_tdg["PhoneNumberId"])) == \
            ("ResourceNotFoundException", 404)
        described = await replica.describe_phone_number(PhoneNumberId=on_tdg["PhoneNumberArn"])
        assert described["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]["Status"] == "CLAIMED"
        assert await refused(replica.describe_phone_number(PhoneNumberId=on_instance["PhoneNumberArn"])) == \
            ("ResourceNotFoundException", 404)
        # List and Search: both Regions of a TDG; instances live in the primary Region only.
        listed = await replica.list_phone_numbers_v2(TargetArn=TDG_ARN)
        assert [n["PhoneNumber"] for n in listed["ListPhoneNumbersSummaryList"]] == ["+12062000000"]
        assert (await replica.list_phone_numbers_v2())["ListPhoneNumbersSummaryList"] == []
        assert await refused(replica.list_phone_numbers_v2(InstanceId=INSTANCE_ID)) == \
            ("ResourceNotFoundException", 404)
        found = await replica.search_available_phone_numbers(TargetArn=TDG_ARN, PhoneNumberCountryCode="US",
                                                             PhoneNumberType="DID", MaxResults=1)
        assert found["AvailableNumbersList"]
        assert await refused(replica.search_available_phone_numbers(
            InstanceId=INSTANCE_ID, PhoneNumberCountryCode="US", PhoneNumberType="DID")) == \
            ("InvalidParameterException", 400)
        await home.release_phone_number(PhoneNumberId=on_tdg["PhoneNumberId"])  # the home Region may


async def test_without_a_replica_region_only_the_sandbox_region_is_served() -> None:
    async with sandbox_env(**{**SETUP, "replica_region": None}) as env, env.client(region="us-west-2") as other:
        with pytest.raises(ClientError) as caught:
            await other.list_phone_numbers_v2(TargetArn=TDG_ARN)
        assert error_of(caught.value) == ("InvalidSignatureException", 403,
                                          "Credential should be scoped to a valid region, not 'us-west-2'. ")
