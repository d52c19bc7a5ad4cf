"""What the sandbox remembers about one number and one request: claim records, ledger entries,
remembered tokens, and the error answers of the service.

A claim record's status is derived from the clock (claims settle lazily, releases complete lazily),
so nothing needs a background task: IN_PROGRESS until ``settle_at``, then CLAIMED or FAILED; once
released, IN_PROGRESS again until ``gone_at`` (the real service shows a number being released as
IN_PROGRESS), then gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bulkclaim.model import valid_tag_key
from bulkclaim.sandbox.inventory import StockNumber

__all__ = ["ClaimRecord", "LedgerEntry", "ServiceError", "Token", "invalid", "not_found", "prefix_of",
           "validate_tags"]

TOKEN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NEVER = float("inf")


class ServiceError(Exception):
    """An error answer of the service: the code botocore surfaces, its HTTP status and message."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


def invalid(message: str) -> ServiceError:
    return ServiceError("InvalidParameterException", 400, message)


def not_found(message: str) -> ServiceError:
    return ServiceError("ResourceNotFoundException", 404, message)


@dataclass
class ClaimRecord:
    """One executed claim of a number to a target; its status is derived from the clock."""

    phone_number_id: str
    phone_number_arn: str
    stock: StockNumber
    target_arn: str
    instance_id: str | None
    description: str
    tags: dict[str, str]
    settle_at: float
    final_status: str
    failure_message: str = ""
    #: ReleasePhoneNumber executed: the number is no longer the holder's to use (``gone_at`` says
    #: when it disappears from Describe).
    released: bool = False
    gone_at: float = _NEVER
    accepted_at: float = float("-inf")

    def status(self, now: float) -> str:
        if self.released:
            return "IN_PROGRESS"  # being released (callers treat a record past ``gone_at`` as absent)
        return "IN_PROGRESS" if now < self.settle_at else self.final_status

    def gone(self, now: float) -> bool:
        """Released, and the release has completed: Describe and Release answer 404."""
        return now >= self.gone_at

    def summary(self, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "PhoneNumberId": self.phone_number_id,
            "PhoneNumberArn": self.phone_number_arn,
            "PhoneNumber": self.stock.phone_number,
            "PhoneNumberCountryCode": self.stock.country,
            "PhoneNumberType": self.stock.type,
            "TargetArn": self.target_arn,
            "PhoneNumberDescription": self.description,
        }
        if self.instance_id is not None:
            body["InstanceId"] = self.instance_id
        if self.tags:
            body["Tags"] = dict(self.tags)
        return body


@dataclass(frozen=True)
class LedgerEntry:
    """One operation the sandbox actually executed (idempotent replays are not entries)."""

    seq: int
    action: str  # "claim", "release", "move" or "associate"
    phone_number: str
    phone_number_id: str
    target_arn: str
    client_token: str | None
    outcome: str  # CLAIMED / FAILED for claims (as it will settle), RELEASED, ASSOCIATED
    at: float
    #: The failure message a FAILED claim will settle with ("" otherwise).
    message: str = ""
    #: The flow an association set (its id; "" for other actions).
    contact_flow_id: str = ""


@dataclass
class Token:
    """A remembered ClientToken: the parameters it was used with and the answer to replay."""

    fingerprint: tuple[Any, ...]
    response: dict[str, Any]
    expires_at: float


def prefix_of(raw: Any) -> str:
    if not raw:
        return "+"
    text = str(raw)
    return text if text.startswith("+") else "+" + text


def validate_tags(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not 1 <= len(raw) <= 50:
        raise invalid("Tags must be a map of 1 to 50 entries.")
    for key, value in raw.items():
        if not isinstance(key, str) or not valid_tag_key(key):
            raise invalid(f"Invalid tag key: {key!r}")
        if not isinstance(value, str) or len(value) > 256:
            raise invalid(f"Invalid tag value for key {key!r}")
    return {str(k): str(v) for k, v in raw.items()}
