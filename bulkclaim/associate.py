"""The pipeline's last stage: associate a claimed number with its contact flow.

AssociatePhoneNumberContactFlow is a PUT without a ClientToken: associating the same flow again
changes nothing, so every retry, in this run or a resumed one, simply sends it again. It goes
through its own limiter (Connect's default 2/s, burst 5; Service Quotas L-D2ECB451) and the project's
retry series (``bulkclaim.retry``, through :meth:`Api.retrying`), so it runs beside the claims at its
own API's pace. What an answer means for the number's ``flow_status``:

- 200: ``associated``.
- An error the service means (the flow or the number not found, a bad parameter): ``failed``, with
  the error. The claim stands: a failed association never fails the claim; ``--retry-failed``
  tries it again.
- Retries spent on 429s / 500s / lost answers, or a stop: ``pending``: not known to be associated,
  and a later run of the same journal finishes it.
- A fatal answer (access denied) stops the run as for claims (the journal keeps it pending).
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import anyio

from bulkclaim.calls import Api, CallFailed, Withdrawn
from bulkclaim.connect import Verdict
from bulkclaim.model import FlowStatus, Outcome, Target

__all__ = ["ASSOCIATE", "FlowResult", "associate"]

ASSOCIATE = "AssociatePhoneNumberContactFlow"
_THROTTLE_ALLOWANCE = 10  # 429s (certainly not executed) an association may get: this many times max_attempts


@dataclasses.dataclass(frozen=True)
class FlowResult:
    """A number after its association: the outcome to report, the requests made and the last error."""

    outcome: Outcome
    attempts: int
    error: tuple[str, str] | None


async def associate(api: Api, claimed: Outcome, *, halt: anyio.Event, rng: random.Random, log: Any) -> FlowResult:
    """Associate ``claimed`` (a CLAIMED number with a ``contact_flow_id``) with its flow; never raises
    for an answer about this number (see the module), only for a fatal one. ``halt``: once set, no
    further request is sent and the number stays pending."""
    assert claimed.contact_flow_id is not None and claimed.phone_number_id is not None
    instance = Target.from_key(claimed.target).instance
    log = log.bind(phone_number=claimed.phone_number, contact_flow_id=claimed.contact_flow_id)
    if instance is None:  # refused at input: kept for rows planned by a library caller
        return _result(claimed, FlowStatus.FAILED, 0, ("InvalidTarget", "a contact flow needs an instance target"))
    params = {"PhoneNumberId": claimed.phone_number_id, "InstanceId": instance,
              "ContactFlowId": claimed.contact_flow_id}
    attempts = 0
    try:
        async for attempt in api.retrying(stop=halt, throttles=_THROTTLE_ALLOWANCE, rng=rng):
            with attempt:
                attempts += 1
                try:
                    await api.send(ASSOCIATE, "associate_phone_number_contact_flow", withdraw_if=halt.is_set,
                                   **params)
                except Withdrawn:  # stopped while it waited for its turn: never sent
                    return _result(claimed, FlowStatus.PENDING, attempts - 1, None)
                log.info("flow.associated", attempts=attempts)
                return _result(claimed, FlowStatus.ASSOCIATED, attempts, None)
        return _result(claimed, FlowStatus.PENDING, attempts, None)  # stopped before a retry
    except CallFailed as failed:
        error = failed.classified
    if error.verdict == Verdict.RETRY:  # its retries spent: unknown, and harmless to send again later
        log.warning("flow.pending", attempts=attempts, error_code=error.code)
        return _result(claimed, FlowStatus.PENDING, attempts, (error.code, error.message))
    log.warning("flow.failed", error_code=error.code, error_message=error.message)
    return _result(claimed, FlowStatus.FAILED, attempts, (error.code, error.message))


def _result(claimed: Outcome, status: FlowStatus, attempts: int, error: tuple[str, str] | None) -> FlowResult:
    outcome = dataclasses.replace(claimed, flow_status=status, updated_at=time.time())
    if status == FlowStatus.FAILED and error is not None and claimed.error_code is None:
        outcome = dataclasses.replace(outcome, error_code=error[0], error_message=error[1])  # as the report shows
    return FlowResult(outcome, attempts, error)
