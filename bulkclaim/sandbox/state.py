"""The sandbox's in-memory model of Connect phone numbers: inventory, claims, tokens and the ledger.

Transport-free: the HTTP layer (``app.py``) parses and authenticates requests, then calls these
methods, which either return the response body or raise :class:`ServiceError`. Time comes from an
injected monotonic clock, so tests can move through claim delays and token lifetimes without
sleeping. Claims settle lazily: a claim records when it becomes CLAIMED (or FAILED) and every read
computes the status from the clock, so no background task is needed.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bulkclaim.model import valid_tag_key
from bulkclaim.sandbox.config import SandboxConfig
from bulkclaim.sandbox.inventory import StockNumber
from bulkclaim.sandbox.limits import TargetLimits

__all__ = ["ClaimRecord", "LedgerEntry", "SandboxState", "ServiceError"]

_TOKEN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_FOREIGN_ACCOUNT = "999999999999"
_NUMBER_TYPES = frozenset({"TOLL_FREE", "DID", "UIFN", "SHARED", "THIRD_PARTY_TF", "THIRD_PARTY_DID", "SHORT_CODE"})


class ServiceError(Exception):
    """An error answer of the service: the code botocore surfaces, its HTTP status and message."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


def _invalid(message: str) -> ServiceError:
    return ServiceError("InvalidParameterException", 400, message)


def _not_found(message: str) -> ServiceError:
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
    released: bool = False

    def status(self, now: float) -> str:
        return "IN_PROGRESS" if now < self.settle_at else self.final_status

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
    action: str  # "claim" or "release"
    phone_number: str
    phone_number_id: str
    target_arn: str
    client_token: str | None
    outcome: str  # CLAIMED / FAILED for claims (as it will settle), RELEASED for releases
    at: float


@dataclass
class _Token:
    fingerprint: tuple[Any, ...]
    response: dict[str, Any]
    expires_at: float


@dataclass
class SandboxState:
    """All mutable state of one sandbox. Not thread-safe: it lives on one event loop."""

    config: SandboxConfig
    stock: Iterable[StockNumber]
    clock: Callable[[], float] = time.monotonic
    ledger: list[LedgerEntry] = field(default_factory=list)
    stats: dict[str, Counter[str]] = field(default_factory=dict)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self._rng = random.Random(cfg.seed)
        self._rival_rng = random.Random(f"rival-{cfg.seed}")  # its own stream: ids stay as without rivals
        self.limits = TargetLimits(cfg)
        self._arn_prefix = f"arn:aws:connect:{cfg.region}:{cfg.account_id}"
        self._targets: dict[str, str | None] = {}  # target ARN -> instance id (None for a TDG)
        for instance_id in cfg.instance_ids:
            self._targets[f"{self._arn_prefix}:instance/{instance_id}"] = instance_id
        for tdg_id in cfg.traffic_distribution_group_ids:
            self._targets[f"{self._arn_prefix}:traffic-distribution-group/{tdg_id}"] = None
        self._stock: dict[str, StockNumber] = {s.phone_number: s for s in self.stock}
        self._holder: dict[str, ClaimRecord] = {}  # number -> latest claim record
        self._by_id: dict[str, ClaimRecord] = {}
        self._cooldown_until: dict[str, float] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        for number in cfg.foreign_claims:
            self._take_by_rival(self._stock.setdefault(number, StockNumber(number, "US", "DID")))

    def _take_by_rival(self, stock: StockNumber) -> None:
        """Another account claims ``stock``: from now on it is not available to us."""
        foreign = f"arn:aws:connect:{self.config.region}:{_FOREIGN_ACCOUNT}:instance/competitor"
        record = self._new_record(stock, foreign, None, "", {}, settle_at=float("-inf"))
        record.final_status, record.failure_message = "CLAIMED", ""
        self._holder[stock.phone_number] = record

    # -- bookkeeping -------------------------------------------------------------------------------
    def count(self, api: str, outcome: str) -> None:
        self.stats.setdefault(api, Counter())[outcome] += 1
        if self.config.record_timeline:
            self.timeline.append((self.clock(), api, outcome))

    def executions(self, phone_number: str) -> int:
        """How many claims of ``phone_number`` were really executed (replays excluded)."""
        return sum(1 for e in self.ledger if e.action == "claim" and e.phone_number == phone_number)

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_record(self, stock: StockNumber, target_arn: str, instance_id: str | None, description: str,
                    tags: dict[str, str], settle_at: float) -> ClaimRecord:
        number_id = self._new_id()
        failed = self._rng.random() < self.config.claim_failure_rate
        return ClaimRecord(
            phone_number_id=number_id,
            phone_number_arn=f"{self._arn_prefix}:phone-number/{number_id}",
            stock=stock, target_arn=target_arn, instance_id=instance_id, description=description,
            tags=tags, settle_at=settle_at, final_status="FAILED" if failed else "CLAIMED",
            failure_message=self.config.claim_failure_message if failed else "",
        )

    def _append_ledger(self, action: str, record: ClaimRecord, token: str | None, outcome: str) -> None:
        self.ledger.append(LedgerEntry(len(self.ledger) + 1, action, record.stock.phone_number,
                                       record.phone_number_id, record.target_arn, token, outcome, time.time()))

    # -- targets -------------------------------------------------------------------------------------
    def resolve_target(self, body: dict[str, Any], *, required: bool = True) -> str | None:
        """The target ARN named by ``InstanceId`` (id or ARN) or ``TargetArn``; exactly one may be given."""
        instance_id, target_arn = body.get("InstanceId"), body.get("TargetArn")
        if instance_id is not None and target_arn is not None:
            raise _invalid("Only one of InstanceId or TargetArn may be specified.")
        if instance_id is None and target_arn is None:
            if required:
                raise _invalid("One of InstanceId or TargetArn must be specified.")
            return None
        if instance_id is not None:
            arn = str(instance_id) if str(instance_id).startswith("arn:") else \
                f"{self._arn_prefix}:instance/{instance_id}"
        else:
            arn = str(target_arn)
        if arn not in self._targets:
            raise _not_found(f"Target not found: {arn}")
        return arn

    # -- availability --------------------------------------------------------------------------------
    def _available(self, number: str, now: float) -> bool:
        if number not in self._stock or self._cooldown_until.get(number, float("-inf")) > now:
            return False
        record = self._holder.get(number)
        if record is None or record.released:
            return True
        if record.status(now) != "FAILED":
            return False
        return now >= record.settle_at + self.config.failed_claim_cooldown

    # -- ClaimPhoneNumber ----------------------------------------------------------------------------
    def claim(self, body: dict[str, Any]) -> dict[str, Any]:
        number = body.get("PhoneNumber")
        if not isinstance(number, str) or not _E164.match(number):
            raise _invalid(f"Invalid phone number: {number!r}")
        description = body.get("PhoneNumberDescription") or ""
        if not isinstance(description, str) or len(description) > 500:
            raise _invalid("PhoneNumberDescription must be a string of at most 500 characters.")
        tags = _validate_tags(body.get("Tags"))
        token = body.get("ClientToken")
        if token is not None and (not isinstance(token, str) or not _TOKEN.match(token)):
            raise _invalid("ClientToken must be a lowercase UUID.")
        target_arn = self.resolve_target(body)
        assert target_arn is not None
        now = self.clock()
        fingerprint = (number, target_arn, description, tuple(sorted(tags.items())))
        if token is not None:
            replay = self._replay(("claim", token), fingerprint, now)
            if replay is not None:
                return replay
        if not self._available(number, now):
            raise _invalid(f"Phone number not available: {number}")
        refusal = self.limits.refusal(target_arn, now)  # after availability: a number we hold stays "not available"
        if refusal is not None:
            raise ServiceError("ServiceQuotaExceededException", 402, refusal)
        if self.config.competition_rate and self._rival_rng.random() < self.config.competition_rate:
            self._take_by_rival(self._stock[number])  # someone else's claim arrived just before ours
            raise _invalid(f"Phone number not available: {number}")
        record = self._new_record(self._stock[number], target_arn, self._targets[target_arn], description,
                                  tags, settle_at=now + self.config.claim_delay)
        self.limits.claimed(target_arn, now, holds=record.final_status == "CLAIMED")
        self._holder[number] = record
        self._by_id[record.phone_number_id] = record
        response = {"PhoneNumberId": record.phone_number_id, "PhoneNumberArn": record.phone_number_arn}
        if token is not None:
            self._tokens[("claim", token)] = _Token(fingerprint, response, now + self.config.token_lifetime)
        self._append_ledger("claim", record, token, record.final_status)
        return dict(response)

    def _replay(self, key: tuple[str, str], fingerprint: tuple[Any, ...], now: float) -> dict[str, Any] | None:
        remembered = self._tokens.get(key)
        if remembered is None:
            return None
        if remembered.expires_at <= now:
            del self._tokens[key]
            return None
        if remembered.fingerprint != fingerprint:
            raise ServiceError("IdempotencyException", 409,
                               "An idempotency token was used with different request parameters.")
        return dict(remembered.response)

    # -- DescribePhoneNumber / ReleasePhoneNumber ----------------------------------------------------
    def _own_record(self, phone_number_id: str) -> ClaimRecord:
        record = self._by_id.get(phone_number_id)
        if record is None or record.released:
            raise _not_found(f"Phone number not found: {phone_number_id}")
        return record

    def describe(self, phone_number_id: str) -> dict[str, Any]:
        now = self.clock()
        record = self._own_record(phone_number_id)
        summary = record.summary(now)
        status = record.status(now)
        summary["PhoneNumberStatus"] = {"Status": status,
                                        "Message": record.failure_message if status == "FAILED" else ""}
        return {"ClaimedPhoneNumberSummary": summary}

    def release(self, phone_number_id: str, token: str | None) -> dict[str, Any]:
        if token is not None and not _TOKEN.match(token):
            raise _invalid("ClientToken must be a lowercase UUID.")
        now = self.clock()
        if token is not None:
            replay = self._replay(("release", token), (phone_number_id,), now)
            if replay is not None:
                return replay
        record = self._own_record(phone_number_id)
        status = record.status(now)
        if status == "IN_PROGRESS":
            raise ServiceError("ResourceInUseException", 409, "The phone number is still being claimed.")
        if status == "FAILED":
            raise _not_found(f"Phone number not found: {phone_number_id}")
        record.released = True
        self.limits.released(record.target_arn, now)
        self._cooldown_until[record.stock.phone_number] = now + self.config.release_cooldown
        if token is not None:
            self._tokens[("release", token)] = _Token((phone_number_id,), {}, now + self.config.token_lifetime)
        self._append_ledger("release", record, token, "RELEASED")
        return {}

    # -- ListPhoneNumbersV2 / SearchAvailablePhoneNumbers ----------------------------------------------
    def list_claimed(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Every number our account holds (IN_PROGRESS or CLAIMED), filtered as the request asks."""
        target_arn = self.resolve_target(body, required=False)
        countries = set(body.get("PhoneNumberCountryCodes") or [])
        types = set(body.get("PhoneNumberTypes") or [])
        prefix = _prefix(body.get("PhoneNumberPrefix"))
        now = self.clock()
        rows = []
        for record in self._holder.values():
            if (record.released or record.target_arn not in self._targets or record.status(now) == "FAILED"
                    or (target_arn is not None and record.target_arn != target_arn)
                    or (countries and record.stock.country not in countries)
                    or (types and record.stock.type not in types)
                    or not record.stock.phone_number.startswith(prefix)):
                continue
            rows.append(record.summary(now))
        return rows

    def search_available(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        country, number_type = body.get("PhoneNumberCountryCode"), body.get("PhoneNumberType")
        if not country or not number_type:
            raise _invalid("PhoneNumberCountryCode and PhoneNumberType are required.")
        if number_type not in _NUMBER_TYPES:
            raise _invalid(f"Invalid PhoneNumberType: {number_type}")
        try:
            self.resolve_target(body)
        except ServiceError as exc:  # this API has no 404 in its model: the real one answers 400
            raise _invalid(exc.message) from None
        prefix = _prefix(body.get("PhoneNumberPrefix"))
        now = self.clock()
        return [
            {"PhoneNumber": s.phone_number, "PhoneNumberCountryCode": s.country, "PhoneNumberType": s.type}
            for s in self._stock.values()
            if s.country == country and s.type == number_type and s.phone_number.startswith(prefix)
            and self._available(s.phone_number, now)
        ]

    # -- inspection helpers for tests and the CLI ------------------------------------------------------
    def holder_of(self, phone_number: str) -> ClaimRecord | None:
        """The current claim on ``phone_number`` (ours or foreign), if any and not released."""
        record = self._holder.get(phone_number)
        return None if record is None or record.released else record

    def inventory_size(self) -> int:
        return len(self._stock)

    def in_cooldown(self, phone_number: str) -> bool:
        return self._cooldown_until.get(phone_number, float("-inf")) > self.clock()


def _prefix(raw: Any) -> str:
    if not raw:
        return "+"
    text = str(raw)
    return text if text.startswith("+") else "+" + text


def _validate_tags(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not 1 <= len(raw) <= 50:
        raise _invalid("Tags must be a map of 1 to 50 entries.")
    for key, value in raw.items():
        if not isinstance(key, str) or not valid_tag_key(key):
            raise _invalid(f"Invalid tag key: {key!r}")
        if not isinstance(value, str) or len(value) > 256:
            raise _invalid(f"Invalid tag value for key {key!r}")
    return {str(k): str(v) for k, v in raw.items()}
