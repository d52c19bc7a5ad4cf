"""Contact flows in the sandbox: Associate/DisassociatePhoneNumberContactFlow, ListFlowAssociations and
ListContactFlows, through a stock aiobotocore client."""

from __future__ import annotations

import uuid

import aiohttp
import botocore.exceptions
import pytest
from botocore.exceptions import ClientError
from types_aiobotocore_connect import ConnectClient

from bulkclaim.connect import aws_client
from bulkclaim.sandbox import FaultConfig, InventorySpec, SandboxConfig, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, FakeClock, error_of, sandbox_env

pytestmark = pytest.mark.anyio

OTHER_INSTANCE = "99999999-8888-7777-6666-555555555555"
NUMBERS = [s.phone_number for s in generate(InventorySpec(count=20))]


async def claimed(client: ConnectClient, number: str, clock: FakeClock | None = None) -> tuple[str, str]:
    answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number, ClientToken=str(uuid.uuid4()))
    if clock is not None:
        clock.advance(1.0)
    return answer["PhoneNumberId"], answer["PhoneNumberArn"]


async def flows_of(client: ConnectClient, instance_id: str = INSTANCE_ID) -> dict[str, str]:
    listed = await client.list_contact_flows(InstanceId=instance_id)
    return {flow["Name"]: flow["Id"] for flow in listed["ContactFlowSummaryList"]}


async def associations(client: ConnectClient) -> dict[str, str]:
    listed = await client.list_flow_associations(InstanceId=INSTANCE_ID, ResourceType="VOICE_PHONE_NUMBER")
    return {row["ResourceId"]: row["FlowId"] for row in listed["FlowAssociationSummaryList"]}


async def test_instances_have_seeded_flows_listed_with_ids_arns_and_names() -> None:
    config = SandboxConfig(instance_ids=(INSTANCE_ID, OTHER_INSTANCE), flows_per_instance=4)
    async with sandbox_env(config) as env, env.client() as client:
        listed = (await client.list_contact_flows(InstanceId=INSTANCE_ID))["ContactFlowSummaryList"]
        assert [f["Name"] for f in listed] == [f"Inbound flow {i}" for i in range(1, 5)]
        assert all(f["Arn"].endswith(f"instance/{INSTANCE_ID}/contact-flow/{f['Id']}") for f in listed)
        other = await flows_of(client, OTHER_INSTANCE)
        assert not set(other.values()) & {f["Id"] for f in listed}, "each instance has its own flows"
        page = await client.list_contact_flows(InstanceId=INSTANCE_ID, MaxResults=3)
        assert len(page["ContactFlowSummaryList"]) == 3 and page["NextToken"]
        rest = await client.list_contact_flows(InstanceId=INSTANCE_ID, NextToken=page["NextToken"])
        assert len(rest["ContactFlowSummaryList"]) == 1
        with pytest.raises(ClientError) as unknown:
            await client.list_contact_flows(InstanceId="00000000-0000-0000-0000-000000000000")
        assert error_of(unknown.value)[:2] == ("ResourceNotFoundException", 404)
    async with sandbox_env(config) as again, again.client() as client:
        assert await flows_of(client) == {f["Name"]: f["Id"] for f in listed}, "seeded: the same flows every run"


async def test_associate_lists_replaces_disassociates_and_the_ledger_records_it() -> None:
    clock = FakeClock()
    async with sandbox_env(clock=clock) as env, env.client() as client:
        flows = await flows_of(client)
        number_id, number_arn = await claimed(client, NUMBERS[0], clock)
        await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                         ContactFlowId=flows["Inbound flow 1"])
        flow_arn = {f["Id"]: f["Arn"] for f in (await client.list_contact_flows(InstanceId=INSTANCE_ID))[
            "ContactFlowSummaryList"]}
        assert await associations(client) == {number_arn: flow_arn[flows["Inbound flow 1"]]}
        await client.associate_phone_number_contact_flow(PhoneNumberId=number_arn, InstanceId=INSTANCE_ID,
                                                         ContactFlowId=flows["Inbound flow 2"])
        assert await associations(client) == {number_arn: flow_arn[flows["Inbound flow 2"]]}
        entries = [e for e in env.sandbox.ledger if e.action == "associate"]
        assert [(e.phone_number, e.contact_flow_id, e.outcome) for e in entries] == [
            (NUMBERS[0], flows["Inbound flow 1"], "ASSOCIATED"), (NUMBERS[0], flows["Inbound flow 2"], "ASSOCIATED")]
        await client.disassociate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID)
        assert await associations(client) == {}
        other = await client.list_flow_associations(InstanceId=INSTANCE_ID, ResourceType="INBOUND_EMAIL")
        assert other["FlowAssociationSummaryList"] == []


async def test_a_flow_of_another_instance_an_unknown_number_and_an_unsettled_claim_are_refused() -> None:
    clock = FakeClock()
    config = SandboxConfig(instance_ids=(INSTANCE_ID, OTHER_INSTANCE))
    async with sandbox_env(config, clock=clock) as env, env.client() as client:
        foreign_flow = next(iter((await flows_of(client, OTHER_INSTANCE)).values()))
        own_flow = next(iter((await flows_of(client)).values()))
        number_id, _ = await claimed(client, NUMBERS[0], clock)
        refusals = [
            ({"PhoneNumberId": number_id, "InstanceId": INSTANCE_ID, "ContactFlowId": foreign_flow},
             ("ResourceNotFoundException", 404)),
            ({"PhoneNumberId": number_id, "InstanceId": OTHER_INSTANCE, "ContactFlowId": foreign_flow},
             ("ResourceNotFoundException", 404)),  # the number is not claimed to that instance
            ({"PhoneNumberId": str(uuid.uuid4()), "InstanceId": INSTANCE_ID, "ContactFlowId": own_flow},
             ("ResourceNotFoundException", 404)),
            ({"PhoneNumberId": number_id, "InstanceId": INSTANCE_ID, "ContactFlowId": ""},
             ("ResourceNotFoundException", 404)),
            ({"PhoneNumberId": number_id, "InstanceId": INSTANCE_ID, "ContactFlowId": "x" * 501},
             ("InvalidParameterException", 400)),  # the model's max length
        ]
        for params, expected in refusals:
            with pytest.raises(ClientError) as refused:
                await client.associate_phone_number_contact_flow(**params)
            assert error_of(refused.value)[:2] == expected, params
        pending = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=NUMBERS[1])
        with pytest.raises(ClientError) as unsettled:
            await client.associate_phone_number_contact_flow(PhoneNumberId=pending["PhoneNumberId"],
                                                             InstanceId=INSTANCE_ID, ContactFlowId=own_flow)
        assert error_of(unsettled.value)[:2] == ("InvalidParameterException", 400)
        with pytest.raises(ClientError) as bad_type:
            await client.list_flow_associations(InstanceId=INSTANCE_ID, MaxResults=1001)
        assert error_of(bad_type.value)[:2] == ("InvalidParameterException", 400)
        assert not [e for e in env.sandbox.ledger if e.action == "associate"]


async def test_a_released_number_loses_its_association() -> None:
    clock = FakeClock()
    async with sandbox_env(clock=clock, release_delay=0.0, release_cooldown=0.0) as env, env.client() as client:
        flow = next(iter((await flows_of(client)).values()))
        number_id, _number_arn = await claimed(client, NUMBERS[0], clock)
        await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                         ContactFlowId=flow)
        await client.release_phone_number(PhoneNumberId=number_id)
        assert await associations(client) == {}
        clock.advance(1.0)
        again_id, _ = await claimed(client, NUMBERS[0], clock)  # claimed anew: no flow comes with it
        assert await associations(client) == {}
        with pytest.raises(ClientError) as gone:
            await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                             ContactFlowId=flow)
        assert error_of(gone.value)[:2] == ("ResourceNotFoundException", 404)
        assert again_id != number_id


async def test_new_operations_have_their_own_buckets_faults_and_rate_quota() -> None:
    clock = FakeClock()
    throttle = {"AssociatePhoneNumberContactFlow": ThrottleConfig(rate=2.0, burst=5)}
    async with sandbox_env(clock=clock, throttle=throttle) as env, env.client() as client:
        flow = next(iter((await flows_of(client)).values()))
        number_id, _ = await claimed(client, NUMBERS[0], clock)
        for _ in range(5):
            await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                             ContactFlowId=flow)
        with pytest.raises(ClientError) as throttled:
            await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                             ContactFlowId=flow)
        assert error_of(throttled.value)[:2] == ("ThrottlingException", 429)
        await client.list_flow_associations(InstanceId=INSTANCE_ID)  # another API: its own bucket
        clock.advance(0.5)
        await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                         ContactFlowId=flow)
        async with aws_client("service-quotas", env.settings) as quotas:
            applied = await quotas.get_service_quota(ServiceCode="connect", QuotaCode="L-D2ECB451")
            assert applied["Quota"]["Value"] == 2.0
            assert applied["Quota"]["QuotaName"] == "Rate of AssociatePhoneNumberContactFlow API requests"
        env.sandbox.set_faults(FaultConfig(error_rate=1.0))
        clock.advance(0.5)
        with pytest.raises(ClientError) as failed:
            await client.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                             ContactFlowId=flow)
        assert error_of(failed.value)[:2] == ("InternalServiceException", 500)
        assert env.sandbox.stats()["AssociatePhoneNumberContactFlow"] == {
            "ok": 6, "ThrottlingException": 1, "InternalServiceException": 1}


async def test_a_lost_answer_of_an_association_still_took_effect() -> None:
    clock = FakeClock()
    async with sandbox_env(clock=clock) as env, env.client() as client:
        flow = next(iter((await flows_of(client)).values()))
        number_id, number_arn = await claimed(client, NUMBERS[0], clock)
        env.sandbox.set_faults(FaultConfig(lost_response_rate=1.0, operations=frozenset(
            {"AssociatePhoneNumberContactFlow"})))
        async with env.client(read_timeout=2.0) as fragile:
            with pytest.raises((ClientError, OSError, aiohttp.ClientError, botocore.exceptions.BotoCoreError)):
                await fragile.associate_phone_number_contact_flow(PhoneNumberId=number_id, InstanceId=INSTANCE_ID,
                                                                  ContactFlowId=flow)
        assert number_arn in await associations(client)
        assert env.sandbox.stats()["AssociatePhoneNumberContactFlow"] == {"lost": 1}
        assert [e.action for e in env.sandbox.ledger] == ["claim", "associate"]
