"""The sandbox's Service Quotas API: GetServiceQuota and GetAWSDefaultServiceQuota for Connect.

Service Quotas speaks AWS's JSON protocol (1.1), not rest-json: every call is a POST to ``/`` naming
its operation in the ``X-Amz-Target`` header (``ServiceQuotasV20190624.GetServiceQuota``), signed
for the ``servicequotas`` service; errors carry their name in the body's ``__type``. The sandbox
serves it at the same endpoint as Connect, so one ``endpoint_url`` reaches both.
"""

from __future__ import annotations

from typing import Any

from bulkclaim.sandbox.config import SandboxConfig

__all__ = ["CLAIM_RATE", "DEFAULTS", "PHONE_NUMBERS", "RATE_QUOTAS", "TARGET_PREFIX", "QuotaError", "answer"]

TARGET_PREFIX = "ServiceQuotasV20190624."
PHONE_NUMBERS = "L-8F812903"  # Phone numbers per instance
CLAIM_RATE = "L-21385E28"  # Rate of ClaimPhoneNumber API requests (per second)
#: The request-rate quota of each phone-number API the sandbox throttles (DESIGN §2); the applied value
#: is the rate of that API's bucket in the sandbox's throttle settings.
RATE_QUOTAS: dict[str, str] = {
    CLAIM_RATE: "ClaimPhoneNumber",
    "L-91A40F24": "ReleasePhoneNumber",
    "L-34F440B5": "DescribePhoneNumber",
    "L-B07B2C56": "ListPhoneNumbersV2",
    "L-AF3C38D5": "SearchAvailablePhoneNumbers",
    "L-D2ECB451": "AssociatePhoneNumberContactFlow",
    "L-B7E1268D": "UpdatePhoneNumber",
}
#: AWS's documented defaults, as GetAWSDefaultServiceQuota reports them.
DEFAULTS = {PHONE_NUMBERS: 5.0, **dict.fromkeys(RATE_QUOTAS, 2.0)}
_NAMES = {PHONE_NUMBERS: "Phone numbers per instance",
          **{code: f"Rate of {api} API requests" for code, api in RATE_QUOTAS.items()}}


class QuotaError(Exception):
    """An error answer of Service Quotas (always HTTP 400 in this protocol)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def answer(operation: str, body: dict[str, Any], config: SandboxConfig) -> dict[str, Any]:
    """The response body of one Service Quotas call, or raise :class:`QuotaError`."""
    if operation not in ("GetServiceQuota", "GetAWSDefaultServiceQuota"):
        raise QuotaError("UnknownOperationException", f"Operation {operation} is not supported by the sandbox.")
    service, code = body.get("ServiceCode"), body.get("QuotaCode")
    if not isinstance(service, str) or not isinstance(code, str):
        raise QuotaError("IllegalArgumentException", "ServiceCode and QuotaCode are required.")
    if not config.service_quotas_access:
        raise QuotaError("AccessDeniedException",
                         f"User is not authorized to perform: servicequotas:{operation}")
    if service != "connect" or code not in _NAMES:
        raise QuotaError("NoSuchResourceException", f"The quota {service}/{code} does not exist.")
    value = DEFAULTS[code] if operation == "GetAWSDefaultServiceQuota" else _applied(code, config)
    return {"Quota": {
        "ServiceCode": "connect", "ServiceName": "Amazon Connect",
        "QuotaArn": f"arn:aws:servicequotas:{config.region}:{config.account_id}:connect/{code}",
        "QuotaCode": code, "QuotaName": _NAMES[code], "Value": value, "Unit": "None",
        "Adjustable": True, "GlobalQuota": False,
    }}


def _applied(code: str, config: SandboxConfig) -> float:
    if code == PHONE_NUMBERS:
        return float(config.phone_number_quota)
    rate = config.throttle.get(RATE_QUOTAS[code])
    # Throttling switched off has no quota to show: report AWS's default, as an unadjusted account would.
    return float(rate.rate) if rate is not None and rate.rate is not None else DEFAULTS[code]
