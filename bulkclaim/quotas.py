"""Connect's quotas as Service Quotas reports them, and the claim/release churn rule (DESIGN §2).

Two quotas matter to a bulk claim: phone numbers per instance (``L-8F812903``, default 5) and the
ClaimPhoneNumber request rate (``L-21385E28``, default 2/s). :func:`read_quotas` asks Service Quotas
for the applied values (falling back to AWS's defaults for a quota never adjusted); a caller
without permission to read them gets the reason instead, so the run can warn and go on with the
values it was configured with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore import exceptions as botocore_errors

from bulkclaim.backoff import Backoff
from bulkclaim.connect import ClientSettings, Verdict, aws_client, classify
from bulkclaim.model import CHURN_LIMIT, CHURN_WINDOW_DAYS, ConfigurationError
from bulkclaim.retry import FAILED, Retrying

__all__ = [
    "CHURN_LIMIT",
    "CHURN_WINDOW_DAYS",
    "CLAIM_RATE_QUOTA",
    "FLOW_RATE_QUOTA",
    "PHONE_NUMBER_QUOTA",
    "Quotas",
    "read_quotas",
    "read_quotas_with",
]

PHONE_NUMBER_QUOTA = "L-8F812903"
CLAIM_RATE_QUOTA = "L-21385E28"
FLOW_RATE_QUOTA = "L-D2ECB451"  # AssociatePhoneNumberContactFlow requests per second
MOVE_RATE_QUOTA = "L-B7E1268D"  # UpdatePhoneNumber (``bulkclaim move``) requests per second
#: Three attempts, about 0.4 and 0.8 s apart at most: the quotas are a preflight, not the run.
_BACKOFF = Backoff(base=0.4, floor=0.2, cap=0.8, max_attempts=3)


@dataclass
class Quotas:
    """The applied quotas, where known. ``problems`` says why one is not known."""

    phone_numbers: int | None = None
    claim_rate: float | None = None
    #: AssociatePhoneNumberContactFlow's rate quota (contact flows after claims)
    flow_rate: float | None = None
    #: UpdatePhoneNumber's rate quota (``bulkclaim move``)
    move_rate: float | None = None
    problems: list[str] = field(default_factory=list)

    def phone_number_quota(self, configured: int | None = None) -> tuple[int | None, str]:
        """The quota to check against and where it came from: the applied one, else ``configured``."""
        if self.phone_numbers is not None:
            return self.phone_numbers, "Service Quotas"
        if configured is not None:
            return configured, "--phone-number-quota"
        return None, "unknown"


async def read_quotas(settings: ClientSettings) -> Quotas:
    """Read the quotas with a Service Quotas client built from ``settings``."""
    try:
        async with aws_client("service-quotas", settings) as client:
            return await read_quotas_with(client)
    except (botocore_errors.BotoCoreError, ConfigurationError) as exc:  # no region, unknown profile, ...
        return Quotas(problems=[f"cannot reach Service Quotas: {exc}"])


async def read_quotas_with(client: Any) -> Quotas:
    """Read the quotas (phone numbers, claim, association and move rates) with an existing Service Quotas
    client; never raises for service errors."""
    quotas = Quotas()
    try:
        numbers = await _value(client, PHONE_NUMBER_QUOTA, quotas.problems)
        quotas.phone_numbers = None if numbers is None else int(numbers)
        quotas.claim_rate = await _value(client, CLAIM_RATE_QUOTA, quotas.problems)
        quotas.flow_rate = await _value(client, FLOW_RATE_QUOTA, quotas.problems)
        quotas.move_rate = await _value(client, MOVE_RATE_QUOTA, quotas.problems)
    except _Unreachable:  # not asked again, nor twice: the run's own requests will say why, and wait for it
        pass
    return quotas


async def _value(client: Any, code: str, problems: list[str]) -> float | None:
    # A quota never adjusted has no applied value (NoSuchResourceException): AWS's default applies.
    for operation in ("get_service_quota", "get_aws_default_service_quota"):
        try:
            async for attempt in Retrying(_BACKOFF, _retryable):
                with attempt:
                    answer = await getattr(client, operation)(ServiceCode="connect", QuotaCode=code)
                    return float(answer["Quota"]["Value"])
        except Exception as exc:
            verdict = classify(exc, "GetServiceQuota")  # re-raises what is not an AWS or transport error
            if verdict.code == "NoSuchResourceException" and operation == "get_service_quota":
                continue
            problems.append(f"cannot read quota connect/{code}: {verdict.code}: {verdict.message}")
            if verdict.unreachable:
                raise _Unreachable from exc
            return None
    raise AssertionError("unreachable: without a stop, a series ends by returning or raising")


def _retryable(error: Exception) -> str | None:
    """Retry what may pass (429, 500, a timeout), but not an endpoint that cannot be reached: the
    run's own requests wait for that (outage.py). An error ``classify`` does not know propagates."""
    verdict = classify(error, "GetServiceQuota")
    return FAILED if verdict.verdict == Verdict.RETRY and not verdict.unreachable else None


class _Unreachable(Exception):
    """No connection to Service Quotas could be opened."""
