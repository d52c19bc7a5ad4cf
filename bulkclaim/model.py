"""The nouns of bulkclaim: targets, claim requests, rejected input rows, outcomes, run options and
summaries. Its errors live in ``bulkclaim.errors`` and are re-exported here."""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from bulkclaim.errors import (
    BulkclaimError,
    ConfigurationError,
    EndpointUnreachableError,
    FatalServiceError,
    JournalError,
    ParametersChangedError,
    QuotaExceededError,
    QuotaReachedError,
    first_cause,
)

__all__ = [
    "BulkclaimError",
    "ClaimRequest",
    "ConfigurationError",
    "EndpointUnreachableError",
    "FatalServiceError",
    "FlowStatus",
    "JournalError",
    "MoveFrom",
    "Options",
    "Outcome",
    "ParametersChangedError",
    "PlanResult",
    "PlanReuse",
    "Planned",
    "QuotaExceededError",
    "QuotaReachedError",
    "Rejected",
    "RunSummary",
    "Status",
    "Target",
    "ToRelease",
    "first_cause",
    "is_postgres_url",
    "new_token",
    "valid_tag_key",
]


_TAG_KEY_PUNCTUATION = frozenset("_.:/=+-@")


def valid_tag_key(key: str) -> bool:
    """Connect's tag-key rule, ``^(?!aws:)[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]{1,128}$``: letters, numbers,
    space separators and ``_.:/=+-@``; not starting with ``aws:`` (reserved by AWS)."""
    return (1 <= len(key) <= 128 and not key.lower().startswith("aws:")
            and all(ch.isalnum() or ch in _TAG_KEY_PUNCTUATION or unicodedata.category(ch) == "Zs" for ch in key))


class Status(StrEnum):
    """Where a number stands, in the journal and the report (DESIGN §4)."""

    PENDING = "pending"  # token reserved, outcome not known yet
    CLAIMED = "claimed"  # the service says CLAIMED
    IN_PROGRESS = "in_progress"  # accepted, not yet CLAIMED when the wait ended
    FAILED = "failed"  # terminal, with error code and message
    INVALID = "invalid"  # rejected locally, never sent
    RELEASED = "released"  # claimed, then released by ``bulkclaim release`` (in its cooldown now)

    @property
    def is_done(self) -> bool:
        """Nothing more to send for this number (without ``retry_failed``)."""
        return self in (Status.CLAIMED, Status.IN_PROGRESS, Status.FAILED, Status.RELEASED)


class FlowStatus(StrEnum):
    """Where a number's contact-flow association stands (report field ``flow_status``)."""

    PENDING = "pending"  # asked for, not (yet) associated: the number is not claimed yet, or a run stopped
    ASSOCIATED = "associated"  # AssociatePhoneNumberContactFlow succeeded
    FAILED = "failed"  # the association was refused, or its retries ran out (the claim stands)


@dataclass(frozen=True)
class Target:
    """Where numbers are claimed to: an instance (id or ARN) or a target ARN (instance or TDG)."""

    instance_id: str | None = None
    target_arn: str | None = None

    def __post_init__(self) -> None:
        if (self.instance_id is None) == (self.target_arn is None):
            raise ValueError("give exactly one of instance_id or target_arn")

    @functools.cached_property
    def key(self) -> str:
        """The journal's name for this target: an instance is ``instance/<id>`` whether it was given
        as an id, an instance ARN or a target ARN, so the same number never gets two tokens."""
        for given in (self.instance_id, self.target_arn):
            if given and (given.startswith("arn:") and ":instance/" in given):
                return "instance/" + given.rsplit(":instance/", 1)[1]
        return self.target_arn or f"instance/{self.instance_id}"

    @property
    def instance(self) -> str | None:
        """The instance id of an instance target (given as an id or any ARN naming it); None for a TDG."""
        return self.key.removeprefix("instance/") if self.key.startswith("instance/") else None

    def request_params(self) -> dict[str, str]:
        """The parameters naming this target in a Connect request."""
        if self.target_arn is not None:
            return {"TargetArn": self.target_arn}
        assert self.instance_id is not None
        return {"InstanceId": self.instance_id}

    @classmethod
    def from_key(cls, key: str) -> Target:
        if key.startswith("instance/"):
            return cls(instance_id=key.removeprefix("instance/"))
        return cls(target_arn=key)


@dataclass(frozen=True)
class MoveFrom:
    """Where a number is moved from (``bulkclaim move``): its source target and its PhoneNumberId
    (which a move keeps)."""

    source: Target
    phone_number_id: str


@dataclass(frozen=True)
class ClaimRequest:
    """One valid number to claim, normalized to E.164, with where it came from (``file:line``).

    With ``move_from`` it is a *move* of a number we hold to ``target`` (UpdatePhoneNumber) instead of
    a claim: the same pipeline, journal and guarantees, another request (see :attr:`operation`)."""

    phone_number: str
    target: Target
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str = ""
    #: False for a number that is already in canonical E.164 form but not yet checked against the
    #: numbering plan: it is checked only if the journal does not know it (it was when first planned).
    checked: bool = field(default=True, compare=False)
    #: The id of the contact flow to associate once the number is CLAIMED (not part of the claim: a
    #: changed flow is associated again, it never changes the claim's token).
    contact_flow: str | None = None
    move_from: MoveFrom | None = None

    def __post_init__(self) -> None:
        if self.tags and not all(isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()):
            raise TypeError("tags must map strings to strings")

    @property
    def key(self) -> tuple[str, str]:
        return (self.target.key, self.phone_number)

    def params_hash(self) -> str:
        """A digest of everything sent with the claim but the token: a change means a different claim."""
        fields: list[Any] = [self.phone_number, self.target.key, self.description or "", sorted(self.tags.items())]
        if self.move_from is not None:
            fields += [self.move_from.source.key, self.move_from.phone_number_id]
        canonical = json.dumps(fields, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def operation(self) -> tuple[str, str]:
        """The Connect operation that brings the number to ``target``, and its client method."""
        return ("ClaimPhoneNumber", "claim_phone_number") if self.move_from is None else (
            "UpdatePhoneNumber", "update_phone_number")

    def claim_params(self, client_token: str) -> dict[str, Any]:
        """The request's parameters (a move's: the number's id, the destination and the token)."""
        if self.move_from is not None:
            return {"PhoneNumberId": self.move_from.phone_number_id, "ClientToken": client_token,
                    **self.target.request_params()}
        params: dict[str, Any] = {"PhoneNumber": self.phone_number, "ClientToken": client_token,
                                  **self.target.request_params()}
        if self.description:
            params["PhoneNumberDescription"] = self.description
        if self.tags:
            params["Tags"] = dict(self.tags)
        return params


@dataclass(frozen=True)
class Rejected:
    """An input row that is never sent, with the reason (and the raw text for the report)."""

    raw: str
    source: str
    reason: str
    target: Target | None = None


@dataclass(frozen=True)
class Outcome:
    """A number's state after a run, one report row (DESIGN §4)."""

    phone_number: str
    source: str
    target: str
    status: Status
    phone_number_id: str | None = None
    phone_number_arn: str | None = None
    client_token: str | None = None
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    updated_at: float | None = None
    #: the run that last acted on the number (the journal's ``seen_run``; ``release --run`` takes it)
    run: int | None = None
    #: the contact flow asked for (its id), and where its association stands; None without a flow
    contact_flow_id: str | None = None
    flow_status: FlowStatus | None = None

    def as_row(self) -> dict[str, Any]:
        """The report row, field order as in DESIGN §4."""
        return {
            "phone_number": self.phone_number, "source": self.source, "target": self.target,
            "status": self.status.value, "phone_number_id": self.phone_number_id,
            "phone_number_arn": self.phone_number_arn, "client_token": self.client_token,
            "attempts": self.attempts, "error_code": self.error_code, "error_message": self.error_message,
            "updated_at": None if self.updated_at is None else
            datetime.fromtimestamp(self.updated_at, UTC).isoformat(timespec="milliseconds"),
            "run": self.run, "contact_flow_id": self.contact_flow_id,
            "flow_status": None if self.flow_status is None else self.flow_status.value,
        }


def is_postgres_url(spec: object) -> bool:
    """Whether a journal spec (``--journal``, ``Claimer(journal=...)``) is a PostgreSQL URL
    (``postgresql://`` or ``postgres://``) rather than the path of an SQLite file."""
    return isinstance(spec, str) and spec.lower().startswith(("postgresql://", "postgres://"))


def new_token() -> str:
    """A ClientToken: a lowercase UUID, as the service requires."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Planned:
    """A number to work on in this run, with its durable token."""

    request: ClaimRequest
    client_token: str
    status: Status  # PENDING (to send) or IN_PROGRESS (to verify)
    attempts: int
    maybe_sent: bool  # an earlier run may have sent this token: its outcome is unknown
    phone_number_id: str | None = None
    phone_number_arn: str | None = None


@dataclass
class PlanResult:
    """What planning one batch found: work to do, numbers already done, duplicates, changed rows."""

    work: list[Planned]
    done: list[Outcome]
    duplicates: list[ClaimRequest]
    changed: list[ClaimRequest]


@dataclass(frozen=True)
class PlanReuse:
    """An earlier run's plan taken over by this run (same inputs): its counts."""

    members_run: int  # the earlier run whose numbers (and invalid rows) are this run's
    statuses: dict[str, int]
    invalid: int
    duplicates: int


@dataclass(frozen=True)
class ToRelease:
    """A claimed number the journal may give back (``bulkclaim release``)."""

    target: str
    phone_number: str
    phone_number_id: str
    #: No claim of ours took it: the target held it already before bulkclaim could have sent its
    #: token (a claim of ours whose answer was lost is recorded as ``recovered``, not adopted).
    #: Released only when the user says so.
    adopted: bool = False


@dataclass(frozen=True)
class Options:
    """How a run behaves. ``workers=0`` means one per in-flight slot of the claim limiter."""

    verify: bool = True
    verify_timeout: float = 120.0
    verify_first_poll: float = 0.5
    retry_failed: bool = False
    workers: int = 0
    verifiers: int = 64
    plan_batch: int = 500
    #: Tasks associating claimed numbers with their contact flows (their limiter sets the pace).
    flow_workers: int = 8

    def __post_init__(self) -> None:
        if self.workers < 0 or self.plan_batch < 1 or self.verify_timeout < 0 or self.verify_first_poll < 0:
            raise ValueError("workers >= 0, plan_batch >= 1 and non-negative waits, please")
        if self.verify and self.verifiers < 1:
            raise ValueError("verify=True needs verifiers >= 1")
        if self.flow_workers < 1:
            raise ValueError("flow_workers >= 1, please")


#: The error code of a number no longer in the input that the target does not hold after its token may
#: have been sent: no claim of ours took effect, and it was not sent again. A later input naming it
#: claims it afresh (a new token), as if it had never been planned.
NOT_CLAIMED = "NotClaimed"

#: Connect's churn rule: claims + releases above this multiple of the phone-number quota in a rolling
#: window of this many days block claiming (DESIGN §2).
CHURN_LIMIT = 2.0
CHURN_WINDOW_DAYS = 180


@dataclass
class RunSummary:
    """Counts of one run, as the CLI and library report them."""

    run: int = 0
    #: The run whose journal rows are this run's numbers: itself, or the earlier run whose plan of
    #: identical inputs it took over.
    members_run: int = 0
    to_send: int = 0
    already_done: int = 0
    duplicates: int = 0
    invalid: int = 0
    adopted: int = 0  # numbers the target held before any request with our token could have executed
    recovered: int = 0  # our claims whose answers were lost, found on the target
    statuses: Counter[str] = field(default_factory=Counter)
    #: Numbers an earlier run may have sent that this run's input no longer names, (target, number) ->
    #: status: they join the run to be settled with the service (never sent again) and reported.
    removed: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Numbers with a contact flow, by ``flow_status`` (their claims are counted in ``statuses``).
    flows: Counter[str] = field(default_factory=Counter)

    @property
    def settled(self) -> int:
        """Numbers this run has settled itself (statuses also count what planning found already done
        and the invalid rows: not this run's work)."""
        return max(0, sum(self.statuses.values()) - self.already_done - self.invalid)

    @property
    def remaining(self) -> int:
        """Numbers this run has still to settle."""
        return max(0, self.to_send - self.settled)
