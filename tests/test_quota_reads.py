"""How the quota reads retry (through bulkclaim.retry), against a scripted Service Quotas client."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from bulkclaim import quotas
from bulkclaim.backoff import Backoff
from bulkclaim.quotas import CLAIM_RATE_QUOTA, FLOW_RATE_QUOTA, MOVE_RATE_QUOTA, PHONE_NUMBER_QUOTA, read_quotas_with

pytestmark = pytest.mark.anyio


def _error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetServiceQuota")


class ScriptedQuotas:
    """Answers each call with the next scripted error of its operation, then with ``value``."""

    def __init__(self, value: float, **script: list[BaseException]) -> None:
        self.value = value
        self.script = script
        self.calls: list[tuple[str, str]] = []

    async def _answer(self, operation: str, QuotaCode: str, **_: Any) -> dict[str, Any]:
        self.calls.append((operation, QuotaCode))
        if self.script.get(operation):
            raise self.script[operation].pop(0)
        return {"Quota": {"Value": self.value}}

    async def get_service_quota(self, **params: Any) -> dict[str, Any]:
        return await self._answer("applied", **params)

    async def get_aws_default_service_quota(self, **params: Any) -> dict[str, Any]:
        return await self._answer("default", **params)


@pytest.fixture(autouse=True)
def _no_real_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quotas, "_BACKOFF", Backoff(base=0.0, floor=0.0, cap=0.0, max_attempts=3))


async def test_a_passing_failure_is_retried() -> None:
    client = ScriptedQuotas(7, applied=[_error("ThrottlingException", 429), _error("InternalFailure", 500)])
    read = await read_quotas_with(client)
    assert (read.phone_numbers, read.claim_rate, read.problems) == (7, 7.0, [])
    assert len(client.calls) == 6, "three for the first quota, one for each of the others"


async def test_a_quota_never_adjusted_reads_the_default_with_attempts_of_its_own() -> None:
    client = ScriptedQuotas(5, applied=[_error("NoSuchResourceException", 400)],
                            default=[_error("InternalFailure", 500)] * 2)
    read = await read_quotas_with(client)
    assert (read.phone_numbers, read.problems) == (5, [])
    assert [operation for operation, _ in client.calls[:4]] == ["applied", "default", "default", "default"]


async def test_three_failures_are_reported_and_the_next_quota_is_read() -> None:
    client = ScriptedQuotas(2, applied=[_error("InternalFailure", 500)] * 3)
    read = await read_quotas_with(client)
    assert read.phone_numbers is None and read.claim_rate == 2.0
    assert read.problems == [f"cannot read quota connect/{PHONE_NUMBER_QUOTA}: InternalFailure: InternalFailure"]
    assert client.calls[3:] == [("applied", CLAIM_RATE_QUOTA), ("applied", FLOW_RATE_QUOTA),
                                ("applied", MOVE_RATE_QUOTA)]


async def test_a_refusal_is_not_retried_and_an_unreachable_endpoint_is_asked_once() -> None:
    denied = ScriptedQuotas(1, applied=[_error("AccessDeniedException", 403)])
    assert (await read_quotas_with(denied)).phone_numbers is None and len(denied.calls) == 4
    unreachable = ScriptedQuotas(1, applied=[ConnectionRefusedError("refused")])
    read = await read_quotas_with(unreachable)
    assert (read.phone_numbers, read.claim_rate, read.flow_rate, read.move_rate) == (None, None, None, None)
    assert len(unreachable.calls) == 1
    assert read.problems == [f"cannot read quota connect/{PHONE_NUMBER_QUOTA}: ConnectionRefusedError: refused"]
