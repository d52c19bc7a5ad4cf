"""Settling what the client cannot know alone by asking the service (DESIGN invariant 4).

- ``sweep``: at resume, one ListPhoneNumbersV2 pass over a target tells which of the numbers an
  earlier run may have sent are already ours; those are recorded with their id (``recovered``: our
  claim, its answer lost) instead of re-sent. Numbers sent earlier that the input no longer names
  are settled this way too, never re-sent (``NotClaimed`` when the target does not hold them).
- ``find_owned``: after "Phone number not available" for a number whose token may have been used
  before, ask whether the number is ours before recording a failure.
- ``verify``: a 200 only means *accepted*; poll DescribePhoneNumber until CLAIMED or FAILED *on the
  target* (its TargetArn), or until the bounded wait ends (the number is then left ``in_progress``,
  honestly). A number CLAIMED elsewhere is not ours there: a move whose UpdatePhoneNumber never
  executed still shows CLAIMED on its source (``ELSEWHERE`` when the wait ends). A principal not
  allowed to call DescribePhoneNumber gets ``DENIED``: the claim stays ``in_progress``, unverified.
- ``held_on``: which target one number (by its PhoneNumberId) is on, from DescribePhoneNumber's
  TargetArn: a move refused because the number is "already" there is told apart by that, never by
  the error's wording.

``stop`` (a run's stop event) ends a call's backoff at once (see ``Api.call``).

Every request goes through the same limiters as the claims (their own API buckets).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from bulkclaim.calls import Api, CallFailed
from bulkclaim.connect import Verdict
from bulkclaim.model import ClaimRequest, Target

__all__ = ["RECOVERED", "Owned", "PollResult", "by_status", "find_owned", "held_on", "holds", "never_moved",
           "on_target", "owned_from_text", "owned_text", "poll_until_settled", "sweep", "sweep_targets"]

#: The attempt result recorded when the target holds a number whose token we may have sent: our
#: claim took effect, its answer was lost (release and the churn count treat it like "accepted").
RECOVERED = "recovered"


@dataclass(frozen=True)
class Owned:
    phone_number_id: str
    phone_number_arn: str


@dataclass(frozen=True)
class PollResult:
    #: CLAIMED, FAILED, NOT_FOUND, DENIED (no DescribePhoneNumber), IN_PROGRESS (the wait ended), or
    #: ELSEWHERE (the wait ended with the number CLAIMED on another target: a move that did not happen)
    status: str
    message: str
    describes: int


async def _list_pages(api: Api, target: Target, stop: anyio.Event | None = None, **filters: Any) -> dict[str, Owned]:
    owned: dict[str, Owned] = {}
    async for page in api.pages("ListPhoneNumbersV2", "list_phone_numbers_v2", "ListPhoneNumbersSummaryList",
                                stop=stop, MaxResults=1000, **target.request_params(), **filters):
        for row in page:
            owned[row["PhoneNumber"]] = Owned(row["PhoneNumberId"], row["PhoneNumberArn"])
    return owned


async def sweep(api: Api, target: Target, *, stop: anyio.Event | None = None) -> dict[str, Owned]:
    """Every number the target holds (IN_PROGRESS or CLAIMED), in one listing pass; bounded by the
    instance's phone-number quota, not by the size of the run."""
    return await _list_pages(api, target, stop)


async def sweep_targets(api: Api, targets: list[Target], log: Any, *, stop: anyio.Event | None = None
                        ) -> dict[str, dict[str, Owned]]:
    """For each target with numbers an earlier run may have sent: which numbers it already holds (a
    target whose listing failed is left out)."""
    owned: dict[str, dict[str, Owned]] = {}
    for target in targets:
        try:
            owned[target.key] = await sweep(api, target, stop=stop)
        except CallFailed as failed:  # nothing found up front: re-sends and "not available" checks remain
            log.warning("run.reconcile_failed", target=target.key, error_code=failed.classified.code)
            continue
        log.info("run.reconciled", target=target.key, numbers_on_target=len(owned[target.key]))
    return owned


def owned_text(owned: dict[str, dict[str, Owned]]) -> str:
    """A sweep's findings as text, for the workers of a shared run that did not sweep (``Journal.once``)."""
    return json.dumps({target: {number: [o.phone_number_id, o.phone_number_arn] for number, o in numbers.items()}
                       for target, numbers in owned.items()})


def owned_from_text(text: str) -> dict[str, dict[str, Owned]]:
    return {target: {number: Owned(*found) for number, found in numbers.items()}
            for target, numbers in json.loads(text).items()}


def by_status(numbers: dict[tuple[str, str], str], named: int = 20) -> dict[str, list[str]]:
    """The numbers of ``{(target, number): status}`` by status (at most ``named`` of each)."""
    found: dict[str, list[str]] = {}
    for (_, number), status in numbers.items():
        shown = found.setdefault(status, [])
        if len(shown) < named:
            shown.append(number)
    return found


async def find_owned(api: Api, target: Target, phone_number: str, *, stop: anyio.Event | None = None
                     ) -> Owned | None:
    """Is ``phone_number`` ours on ``target``? One filtered listing (the prefix is the whole number)."""
    listed = await _list_pages(api, target, stop, PhoneNumberPrefix=phone_number)
    return listed.get(phone_number)


def on_target(summary: dict[str, Any], target: str) -> bool:
    """Whether a ClaimedPhoneNumberSummary puts the number on ``target`` (a target's key): its TargetArn
    (an instance's ARN names the instance), or without one its InstanceId."""
    if summary.get("TargetArn"):
        return Target(target_arn=summary["TargetArn"]).key == target
    return f"instance/{summary.get('InstanceId')}" == target


def _where(summary: dict[str, Any]) -> str:
    return str(summary.get("TargetArn") or summary.get("InstanceId") or "another target")


async def held_on(api: Api, phone_number_id: str, target: Target, *, stop: anyio.Event | None = None
                  ) -> Owned | None:
    """Is the number ``phone_number_id`` on ``target`` (IN_PROGRESS or CLAIMED there)? One
    DescribePhoneNumber; an unknown id is on no target. Raises CallFailed if it cannot be told."""
    try:
        answer = await api.call("DescribePhoneNumber", "describe_phone_number", stop=stop,
                                PhoneNumberId=phone_number_id)
    except CallFailed as failed:
        if failed.classified.code == "ResourceNotFoundException":
            return None
        raise
    summary = answer.get("ClaimedPhoneNumberSummary", {})
    status = summary.get("PhoneNumberStatus", {}).get("Status")
    if status in ("IN_PROGRESS", "CLAIMED") and on_target(summary, target.key):
        return Owned(phone_number_id, summary.get("PhoneNumberArn", ""))
    return None


async def holds(api: Api, request: ClaimRequest, *, stop: anyio.Event | None = None) -> Owned | None:
    """Does ``request``'s target hold its number? A claim asks one filtered listing; a move asks where
    DescribePhoneNumber puts the number it moves (its TargetArn, not an error's wording)."""
    if request.move_from is not None:
        return await held_on(api, request.move_from.phone_number_id, request.target, stop=stop)
    return await find_owned(api, request.target, request.phone_number, stop=stop)


async def never_moved(api: Api, request: ClaimRequest, *, stop: anyio.Event | None = None) -> bool:
    """Whether a move a journal holds as in_progress is *not* on its destination, as DescribePhoneNumber
    tells: its UpdatePhoneNumber never executed (or verification found it elsewhere), so it is to be
    sent again with its same token, not verified as it is. False for a claim, or if it cannot be told."""
    if request.move_from is None:
        return False
    try:
        return await holds(api, request, stop=stop) is None
    except CallFailed:  # verification asks again
        return False


async def poll_until_settled(api: Api, phone_number_id: str, *, wait_limit: float, first_poll: float = 0.5,
                 max_poll: float = 10.0, sleep: Callable[[float], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic, target: str | None = None,
                 stopping: Callable[[], bool] = lambda: False, stop: anyio.Event | None = None) -> PollResult:
    """Poll DescribePhoneNumber until the claim settles or ``wait_limit`` seconds pass. With ``target``
    (a target's key), a number CLAIMED on another target has not settled *there*: it is asked about
    again until the wait ends (``ELSEWHERE`` then), never taken for CLAIMED."""
    deadline = clock() + wait_limit
    wait = first_poll
    describes = 0
    while True:
        await sleep(min(wait, max(0.0, deadline - clock())))
        if stopping():
            return PollResult("IN_PROGRESS", "stopped before the claim settled", describes)
        try:
            answer = await api.call("DescribePhoneNumber", "describe_phone_number", stop=stop,
                                    PhoneNumberId=phone_number_id)
        except CallFailed as failed:
            if failed.classified.code == "ResourceNotFoundException":  # the id is not (or no longer) ours
                return PollResult("NOT_FOUND", failed.classified.message, describes)
            if failed.classified.verdict == Verdict.FATAL:  # not allowed to describe: no use asking again
                return PollResult("DENIED", failed.classified.message, describes)
            return PollResult("IN_PROGRESS", f"could not verify: {failed.classified.code}", describes)
        describes += 1
        summary = answer.get("ClaimedPhoneNumberSummary", {})
        status = summary.get("PhoneNumberStatus", {})
        elsewhere = target is not None and not on_target(summary, target)
        if status.get("Status") in ("CLAIMED", "FAILED") and not elsewhere:
            return PollResult(status["Status"], status.get("Message", ""), describes)
        if clock() >= deadline:
            if elsewhere:
                return PollResult("ELSEWHERE", f"still {status.get('Status')} on {_where(summary)}, not on {target}, "
                                               "when the wait ended", describes)
            return PollResult("IN_PROGRESS", "still IN_PROGRESS when the wait ended", describes)
        wait = min(max_poll, wait * 1.5)
