"""ListPhoneNumbersV2, SearchAvailablePhoneNumbers and ReleasePhoneNumber against the sandbox."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from types_aiobotocore_connect import ConnectClient

from bulkclaim.sandbox import InventoryError, InventorySpec, Sandbox, SandboxConfig
from tests.support import INSTANCE_ID, FakeClock, error_of, sandbox_env

pytestmark = pytest.mark.anyio

US = InventorySpec(country="US", type="DID", prefix="+1206", count=20)
US_TOLL_FREE = InventorySpec(country="US", type="TOLL_FREE", prefix="+1888", count=5)
GB = InventorySpec(country="GB", type="DID", prefix="+44207", count=5)


async def claim(client: ConnectClient, number: str) -> str:
    answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number,
                                             ClientToken=str(uuid.uuid4()))
    return answer["PhoneNumberId"]


async def search_all(client: ConnectClient, **filters: str) -> list[str]:
    found: list[str] = []
    next_token: str | None = None
    while True:
        extra = {"NextToken": next_token} if next_token else {}
        page = await client.search_available_phone_numbers(
            InstanceId=INSTANCE_ID, MaxResults=10, **filters, **extra)  # type: ignore[arg-type]
        found += [n["PhoneNumber"] for n in page["AvailableNumbersList"]]
        next_token = page.get("NextToken")
        if not next_token:
            return found


async def test_search_filters_by_country_type_prefix_and_paginates() -> None:
    async with sandbox_env(inventory=(US, US_TOLL_FREE, GB)) as env, env.client() as client:
        us_did = await search_all(client, PhoneNumberCountryCode="US", PhoneNumberType="DID")
        assert len(us_did) == 20 and len(set(us_did)) == 20
        assert all(n.startswith("+1206") for n in us_did)
        toll_free = await search_all(client, PhoneNumberCountryCode="US", PhoneNumberType="TOLL_FREE")
        assert len(toll_free) == 5 and all(n.startswith("+1888") for n in toll_free)
        gb = await search_all(client, PhoneNumberCountryCode="GB", PhoneNumberType="DID", PhoneNumberPrefix="44207")
        assert len(gb) == 5
        await claim(client, us_did[0])
        assert us_did[0] not in await search_all(client, PhoneNumberCountryCode="US", PhoneNumberType="DID")


async def test_search_rejects_more_than_ten_results_and_unknown_target() -> None:
    async with sandbox_env() as env, env.client() as client:
        with pytest.raises(ClientError) as caught:
            await client.search_available_phone_numbers(InstanceId=INSTANCE_ID, PhoneNumberCountryCode="US",
                                                        PhoneNumberType="DID", MaxResults=11)
        assert error_of(caught.value)[:2] == ("InvalidParameterException", 400)
        with pytest.raises(ClientError) as caught:
            await client.search_available_phone_numbers(InstanceId="nope", PhoneNumberCountryCode="US",
                                                        PhoneNumberType="DID")
        assert error_of(caught.value)[:2] == ("InvalidParameterException", 400)


async def test_list_paginates_and_filters(clock: FakeClock) -> None:
    async with sandbox_env(clock=clock, inventory=(US, US_TOLL_FREE)) as env, env.client() as client:
        us = await search_all(client, PhoneNumberCountryCode="US", PhoneNumberType="DID")
        toll_free = await search_all(client, PhoneNumberCountryCode="US", PhoneNumberType="TOLL_FREE")
        for number in us[:5] + toll_free[:2]:
            await claim(client, number)
        seen: list[str] = []
        pages = 0
        next_token: str | None = None
        while True:
            extra = {"NextToken": next_token} if next_token else {}
            page = await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID, MaxResults=2, **extra)  # type: ignore[arg-type]
            seen += [r["PhoneNumber"] for r in page["ListPhoneNumbersSummaryList"]]
            pages += 1
            next_token = page.get("NextToken")
            if not next_token:
                break
        assert pages == 4 and seen == us[:5] + toll_free[:2]
        typed = await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID, PhoneNumberTypes=["TOLL_FREE"])
        assert [r["PhoneNumber"] for r in typed["ListPhoneNumbersSummaryList"]] == toll_free[:2]
        prefixed = await client.list_phone_numbers_v2(PhoneNumberPrefix=us[0][:-1], PhoneNumberCountryCodes=["US"])
        assert {r["PhoneNumber"] for r in prefixed["ListPhoneNumbersSummaryList"]} <= set(us[:5])
        assert us[0] in {r["PhoneNumber"] for r in prefixed["ListPhoneNumbersSummaryList"]}
        row = typed["ListPhoneNumbersSummaryList"][0]
        assert row["InstanceId"] == INSTANCE_ID and row["PhoneNumberType"] == "TOLL_FREE"
        with pytest.raises(ClientError) as caught:
            await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID, NextToken="garbage")
        assert error_of(caught.value)[:2] == ("InvalidParameterException", 400)


async def test_release_shows_in_progress_then_puts_the_number_in_cooldown(clock: FakeClock) -> None:
    """Issue 14 gap 4: a released number shows IN_PROGRESS for a while before it is gone (as
    terraform-provider-aws's waitPhoneNumberDeleted expects); its cooldown runs from then."""
    async with sandbox_env(clock=clock, claim_delay=1.0, release_cooldown=3600.0, release_delay=5.0) as env, \
            env.client() as client:
        number = "+12062000000"
        number_id = await claim(client, number)
        with pytest.raises(ClientError) as caught:  # still IN_PROGRESS
            await client.release_phone_number(PhoneNumberId=number_id, ClientToken=str(uuid.uuid4()))
        assert error_of(caught.value)[:2] == ("ResourceInUseException", 409)
        clock.advance(1.0)
        release_token = str(uuid.uuid4())
        await client.release_phone_number(PhoneNumberId=number_id, ClientToken=release_token)
        await client.release_phone_number(PhoneNumberId=number_id, ClientToken=release_token)  # replay
        await client.release_phone_number(PhoneNumberId=number_id, ClientToken=str(uuid.uuid4()))  # releasing
        assert [e.action for e in env.sandbox.ledger] == ["claim", "release"]
        assert env.sandbox.state.in_cooldown(number)
        described = await client.describe_phone_number(PhoneNumberId=number_id)
        assert described["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"] == {"Status": "IN_PROGRESS", "Message": ""}
        listed = await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID)
        assert [n["PhoneNumberId"] for n in listed["ListPhoneNumbersSummaryList"]] == [number_id]  # list_releasing
        env.sandbox.configure(list_releasing=False)
        assert (await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID))["ListPhoneNumbersSummaryList"] == []
        clock.advance(5.0)
        env.sandbox.configure(list_releasing=True)
        assert (await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID))["ListPhoneNumbersSummaryList"] == []
        for call in (client.describe_phone_number(PhoneNumberId=number_id),
                     client.release_phone_number(PhoneNumberId=number_id, ClientToken=str(uuid.uuid4()))):
            with pytest.raises(ClientError) as caught:
                await call
            assert error_of(caught.value)[:2] == ("ResourceNotFoundException", 404)
        with pytest.raises(ClientError) as caught:
            await claim(client, number)
        assert error_of(caught.value)[2] == f"Phone number not available: {number}"
        clock.advance(3600.0)
        await claim(client, number)


async def test_describe_and_release_accept_the_phone_number_arn(clock: FakeClock) -> None:
    """Issue 14 gap 3: PhoneNumberId may be the number's ARN (DescribePhoneNumber's reference); another
    account's ARN, or our ARN of a number that does not exist, is not found."""
    async with sandbox_env(clock=clock, claim_delay=0.0, release_delay=0.0) as env, env.client() as client:
        await claim(client, "+12062000000")
        arn = (await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID))["ListPhoneNumbersSummaryList"][0][
            "PhoneNumberArn"]
        described = await client.describe_phone_number(PhoneNumberId=arn)
        assert described["ClaimedPhoneNumberSummary"]["PhoneNumberArn"] == arn
        for wrong in (arn.replace("123456789012", "999999999999"), arn[:-4] + "0000"):
            with pytest.raises(ClientError) as caught:
                await client.describe_phone_number(PhoneNumberId=wrong)
            assert error_of(caught.value)[:2] == ("ResourceNotFoundException", 404)
        await client.release_phone_number(PhoneNumberId=arn, ClientToken=str(uuid.uuid4()))
        assert [e.action for e in env.sandbox.ledger] == ["claim", "release"]
        with pytest.raises(ClientError) as caught:
            await client.describe_phone_number(PhoneNumberId=arn)
        assert error_of(caught.value)[:2] == ("ResourceNotFoundException", 404)


def test_inventory_from_file_and_bad_specs(tmp_path: Path) -> None:
    path = tmp_path / "stock.csv"
    path.write_text("phone_number,type\n+12065550100,DID\n+18885550100,TOLL_FREE\n", encoding="utf-8")
    sandbox = Sandbox(SandboxConfig(inventory=(), inventory_file=str(path)))
    assert sandbox.state.inventory_size() == 2
    path.write_text("number\n+12065550100\n", encoding="utf-8")
    with pytest.raises(InventoryError, match="phone_number column"):
        Sandbox(SandboxConfig(inventory=(), inventory_file=str(path)))
    with pytest.raises(InventoryError, match="not in country"):
        Sandbox(SandboxConfig(inventory=(InventorySpec(country="US", prefix="+44"),)))
    with pytest.raises(InventoryError, match="could not find"):
        Sandbox(SandboxConfig(inventory=(InventorySpec(country="US", prefix="+1000", count=5),)))
    with pytest.raises(InventoryError, match="unknown country"):
        Sandbox(SandboxConfig(inventory=(InventorySpec(country="XX", prefix="+1"),)))
