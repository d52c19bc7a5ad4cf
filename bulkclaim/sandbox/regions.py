"""The alternate Region of the sandbox's traffic distribution groups (TDGs), as Connect documents it.

A TDG is created in one Region and replicated to an alternate one. With ``replica_region`` set, the
sandbox plays both Regions' endpoints at one address: a request's SigV4 credential scope says which
endpoint it is for (a real client signs for the Region of the endpoint it calls). Requests scoped to
any other Region are refused by the signature check (``sigv4.py``). In the alternate Region, the
rules of the Connect API reference (the documentation in botocore's model) apply:

- ClaimPhoneNumber: "You can call this API only in the same Region where the instance or traffic
  distribution group was created": every claim from the alternate Region is refused.
- ReleasePhoneNumber: "only in the Region where the number was claimed": refused too.
- DescribePhoneNumber: a TDG's number "in the alternate Region ... you must provide a full phone
  number ARN. If a UUID is provided in this scenario, you receive a ResourceNotFoundException."
- Associate/DisassociatePhoneNumberContactFlow: the same rule as Describe (a full ARN is needed there).
- ListPhoneNumbersV2 and SearchAvailablePhoneNumbers: callable "in both Regions associated with the
  traffic distribution group" when the target is a TDG. Instances live in the primary Region only:
  an instance target is not found there, and a List without a target ("numbers claimed to all the
  instances ... in the same Region as the request") is empty.

The documents say *that* these calls fail, not with which error; the sandbox answers
ResourceNotFoundException (404), which each of these operations lists in the model, and
InvalidParameterException for Search, whose model lists no 404. That choice is not an observation.
"""

from __future__ import annotations

from typing import Any

from bulkclaim.sandbox.state import SandboxState, ServiceError

__all__ = ["alternate_region_answer", "phone_number_id"]

_TDG = ":traffic-distribution-group/"


def _not_here(what: str, region: str) -> ServiceError:
    return ServiceError("ResourceNotFoundException", 404, f"{what} not found in {region}.")


def phone_number_id(raw: str) -> str:
    """The id inside a phone number ARN (``arn:...:phone-number/<id>``), or ``raw`` itself."""
    return raw.rsplit("/", 1)[-1] if raw.startswith("arn:") and ":phone-number/" in raw else raw


def alternate_region_answer(api: str, body: dict[str, Any], uri: dict[str, str], state: SandboxState,
                            region: str) -> dict[str, Any] | None:
    """Apply the alternate Region's rules to one request: raise the refusal, return an answer that
    replaces the operation's (an empty List), or ``None`` to let the operation run as usual."""
    target = body.get("TargetArn") or body.get("InstanceId")
    if api in ("ClaimPhoneNumber", "ReleasePhoneNumber"):
        raise _not_here("The target of this operation" if api == "ClaimPhoneNumber" else "Phone number", region)
    if api in ("AssociatePhoneNumberContactFlow", "DisassociatePhoneNumberContactFlow"):
        raw = uri["PhoneNumberId"]
        if not raw.startswith("arn:"):  # documented as for Describe: a UUID is not enough here
            raise _not_here(f"Phone number {raw}", region)
        return None
    if api == "DescribePhoneNumber":
        raw = uri["PhoneNumberId"]
        if not raw.startswith("arn:"):
            raise _not_here(f"Phone number {raw}", region)  # documented: a UUID is not enough here
        summary = state.describe(phone_number_id(raw))["ClaimedPhoneNumberSummary"]
        if _TDG not in summary.get("TargetArn", ""):
            raise _not_here(f"Phone number {raw}", region)
        return {"ClaimedPhoneNumberSummary": summary}
    if api == "ListPhoneNumbersV2" and target is None:
        return {"ListPhoneNumbersSummaryList": []}
    if api in ("ListPhoneNumbersV2", "SearchAvailablePhoneNumbers") and _TDG not in str(target):
        if api == "SearchAvailablePhoneNumbers":
            raise ServiceError("InvalidParameterException", 400, f"Target not found in {region}: {target}")
        raise _not_here(f"Target {target}", region)
    return None
