"""Releasing the numbers a journal claimed, with journaled tokens (``bulkclaim release``).

Each release gets a client token committed to the journal before its request
is sent; a lost answer is retried with the same token (the service answers a replay idempotently),
and a resumed release re-uses it. A released number is ``released`` in the journal from then on,
and counts toward the claim/release churn rule (see ``preflight``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import anyio
import structlog

from bulkclaim.calls import Api, CallFailed
from bulkclaim.engine import first_cause
from bulkclaim.journal.protocol import Journal
from bulkclaim.model import ToRelease
from bulkclaim.run import RunState

__all__ = ["ToRelease", "release_all"]


async def release_all(api: Api, journal: Journal, numbers: list[ToRelease], *, concurrency: int = 5,
                      stopping: Callable[[], bool] = lambda: False) -> Counter[str]:
    """Release every number (until ``stopping()``); counts of ``released`` and of each error code.
    The numbers' new statuses are in ``api``'s metrics as they come (a run of its own)."""
    counts: Counter[str] = Counter()
    state = RunState()
    state.summary.to_send = len(numbers)
    log = structlog.get_logger("bulkclaim")
    queue = list(reversed(numbers))

    async def worker() -> None:
        while queue and not stopping():
            number = queue.pop()
            token = await journal.release_token(number)
            bound = log.bind(phone_number=number.phone_number, phone_number_id=number.phone_number_id,
                             client_token=token)
            status, error = "released", None
            try:
                await api.call("ReleasePhoneNumber", "release_phone_number", PhoneNumberId=number.phone_number_id,
                               ClientToken=token)
            except CallFailed as failed:
                error = (failed.classified.code, failed.classified.message)
                # Not found: the number is not held any more; released before, its answer lost.
                status = "released" if error[0] == "ResourceNotFoundException" else "failed"
            await journal.record_release(number, status, error)
            state.summary.statuses[status] += 1
            counts[status if status == "released" else error[0] if error else status] += 1
            if status == "failed" and error:
                bound.warning("release.failed", error_code=error[0], error_message=error[1])
            else:
                bound.info("release.done", note=error[1] if error else None)

    try:
        with api.telemetry.tracking(state):
            async with anyio.create_task_group() as tg:
                for _ in range(max(1, min(concurrency, len(numbers)))):
                    tg.start_soon(worker)
    except BaseExceptionGroup as group:
        raise first_cause(group) from None
    return counts
