"""The claim pipeline (DESIGN §3), top to bottom:

    inputs ─► plan ─► reconcile ─► claim workers ─────────────────────► verify workers ─► flow workers ─► emit
    (rows)    (journal:  (earlier runs'   (limiter → ClaimPhoneNumber →     (DescribePhoneNumber  (CLAIMED numbers
              tokens     unknown outcomes  classify → retry, same token;     until CLAIMED/FAILED) with a flow:
              reserved   settled by one    "not available" checked with                           Associate...
              durably)   listing sweep)    the service when in doubt)                             ContactFlow)

1. **plan** (``planner.py``) reads the rows (in a worker thread, batch by batch), records invalid ones, and reserves
   every valid number's token in the journal — group-committed and fsync'd — before anything is sent.
   Numbers already done are reported as they are; a pending number whose parameters changed stops
   the run before the first request.
2. **reconcile**: numbers an earlier run may have sent are looked up with one ListPhoneNumbersV2
   sweep per target; those already ours are recorded as ours, the rest re-sent with their *same*
   token. Numbers an earlier run may have sent that the input no longer names join the run and are
   settled the same way, but never re-sent.
3. **claim** workers take numbers from the journal in input order; every attempt passes the limiter.
4. **verify** workers poll DescribePhoneNumber for each accepted claim, on their own API's bucket, until
   it settles *on its target* (TargetArn: a move still on its source is not moved, see ``reconcile.py``).
5. **flow** workers associate each CLAIMED number that has a contact flow (``associate.py``), on the
   AssociatePhoneNumberContactFlow bucket, beside the claims; numbers an earlier run claimed whose
   association is still pending are associated first. A failed association never fails the claim.
6. Every state change is recorded in the journal (lazily: a lost outcome only means the same token
   is sent again) and handed to ``emit``.

A *move* (``bulkclaim move``, see ``move.py``) is the same flow: its request carries ``move_from``, so
step 3 sends UpdatePhoneNumber (``request.operation``) to the destination instead of ClaimPhoneNumber,
and everything else — the token, retries, reconciliation against the destination, verification, and
the flow stage (Connect drops a number's flow association on a move: it is made again there) — is the
claim's.

The engine is long-lived (one client, one journal); what belongs to one run (its stop, its live
counts) is a :class:`~bulkclaim.run.RunState` handed to each step, so concurrent runs on one engine
never share a stop or a summary.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from bulkclaim.associate import associate
from bulkclaim.calls import Api, CallFailed, Withdrawn
from bulkclaim.connect import Verdict
from bulkclaim.journal.protocol import Journal
from bulkclaim.model import (
    NOT_CLAIMED,
    ClaimRequest,
    FlowStatus,
    Options,
    Outcome,
    Planned,
    Rejected,
    RunSummary,
    Status,
    first_cause,
)
from bulkclaim.planner import Emit, Planner, count_and_emit, count_flow
from bulkclaim.reconcile import (
    RECOVERED,
    Owned,
    by_status,
    find_owned,
    holds,
    never_moved,
    owned_from_text,
    owned_text,
    poll_until_settled,
    sweep_targets,
)
from bulkclaim.run import InFlight, RunState
from bulkclaim.worklist import WorkList

__all__ = ["Emit", "Engine", "Options", "RunState", "RunSummary", "first_cause"]

#: Without an answer timeout, how long a request may take to execute (botocore's connect + read).
_LATE_REQUEST = 20.0
_THROTTLE_ALLOWANCE = 10  # 429s (certainly not executed) a number may get: this many times max_attempts
#: What verification found (``reconcile.PollResult``) as a number's status, and its error code. ELSEWHERE (a
#: move still on its source when the wait ended): in_progress, not moved; the next run re-sends its token.
_SETTLED = {"CLAIMED": Status.CLAIMED, "FAILED": Status.FAILED, "NOT_FOUND": Status.FAILED}
_SETTLED_CODES = {"FAILED": "PhoneNumberClaimFailed", "NOT_FOUND": "ResourceNotFoundException",
                  "ELSEWHERE": "NotOnTarget"}
_NOT_CLAIMED = ("no longer in the input, and the target does not hold it: no claim of ours took effect "
                "(it was not sent again)")


class Engine:
    """Runs claims against one Connect client (through :class:`Api`) and one journal."""

    def __init__(self, api: Api, journal: Journal, options: Options = Options(), *, log: Any = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.api = api
        self.journal = journal
        self.options = options
        self.log = log if log is not None else structlog.get_logger("bulkclaim")
        self.clock = clock
        self.rng = rng or random.Random()
        self._in_flight: dict[tuple[str, str], InFlight] = {}  # one claim per number in flight, process-wide
        self.planner = Planner(journal, options, self.log)

    # -- the whole run -------------------------------------------------------------------------------
    async def run(self, inputs: Iterable[ClaimRequest | Rejected], emit: Emit, *, fingerprint: str | None = None,
                  emit_done: bool = True, after_plan: Callable[[RunSummary], Awaitable[None]] | None = None,
                  state: RunState | None = None) -> RunSummary:
        """Plan, reconcile and claim everything in ``inputs``; ``emit`` each number's outcome.

        ``fingerprint`` (see ``inputs.fingerprint``) lets a re-run of identical inputs take over the
        earlier plan without reading them again; ``emit_done=False`` skips emitting numbers that
        were already done before this run (their counts are still in the summary). ``after_plan``
        is awaited once every token is durable and before anything is sent (the CLI's quota
        preflight); an exception from it ends the run with nothing sent. ``state``: this run's stop
        and live counts (a new one if not given); a stop requested on it before the run starts
        sends nothing.
        """
        state = state or RunState()
        with self.api.telemetry.tracking(state):  # its counts in the metrics while it goes on, and after
            return await self._run(inputs, emit, fingerprint, emit_done, after_plan, state)

    async def _run(self, inputs: Iterable[ClaimRequest | Rejected], emit: Emit, fingerprint: str | None,
                   emit_done: bool, after_plan: Callable[[RunSummary], Awaitable[None]] | None,
                   state: RunState) -> RunSummary:
        summary = await self.plan(inputs, emit, fingerprint=fingerprint, emit_done=emit_done, state=state)
        if after_plan is not None:
            await after_plan(summary)
        if not state.stopping:
            owned = await self._reconcile(summary, state)
            state.recheck_removed_at = self.clock() + (self.api.answer_timeout or _LATE_REQUEST)
            if not state.stopping:  # stopped while waiting for another worker's sweep: nothing is sent
                await self._dispatch(summary, owned, emit, state)
        await self.journal.flush()
        state.raise_if_aborted()  # e.g. the target's quota reached (see RunState.claim_failed)
        if summary.removed:
            self.log.warning("input.removed_settled", **by_status(summary.removed))
        self.log.info("run.finished", run=summary.run, **summary.statuses)
        return summary

    async def _reconcile(self, summary: RunSummary, state: RunState) -> dict[str, dict[str, Owned]]:
        """One listing sweep of the targets holding numbers an earlier run may have sent. Workers sharing
        the run (PostgreSQL) sweep once: one of them lists, the others take what it found."""
        async def sweep() -> str | None:
            found = await sweep_targets(self.api, await self.journal.targets_to_reconcile(summary.members_run),
                                        self.log, stop=state.stop)
            return None if state.stopping else owned_text(found)

        found = await self.journal.once(summary.members_run, "reconcile", sweep, stop=state.stop)
        return {} if found is None else owned_from_text(found)

    async def plan(self, inputs: Iterable[ClaimRequest | Rejected], emit: Emit, *, fingerprint: str | None = None,
                   emit_done: bool = True, state: RunState | None = None) -> RunSummary:
        """Begin a run: read every row, record invalid ones, reserve every new number's token durably
        (see :class:`~bulkclaim.planner.Planner`). Nothing is sent. ``state``: see :meth:`run`."""
        return await self.planner.plan(inputs, emit, fingerprint=fingerprint, emit_done=emit_done,
                                       state=state or RunState())

    async def _dispatch(self, summary: RunSummary, owned: dict[str, dict[str, Owned]], emit: Emit,
                        state: RunState) -> None:
        workers = self.options.workers or self.api.limiters["ClaimPhoneNumber"].max_in_flight
        verify_tx, verify_rx = anyio.create_memory_object_stream[Outcome](self.options.verifiers * 4)
        # (claimed number, whether it is this run's to count and emit: False for an earlier run's claim)
        flow_tx, flow_rx = anyio.create_memory_object_stream[tuple[Outcome, bool]](self.options.flow_workers * 4)
        earlier = await self._flows_to_finish(summary.members_run)  # before any claim of this run settles
        try:
            async with anyio.create_task_group() as tg, verify_tx, verify_rx, flow_tx, flow_rx:
                work = WorkList(self.journal, summary.members_run, tg, low_water=workers * 4,
                                stopping=lambda: state.stopping)
                tg.start_soon(_feed, flow_tx.clone(), [(claimed, False) for claimed in earlier])
                for _ in range(workers):
                    tg.start_soon(self._claim_worker, work, verify_tx.clone(), owned, summary, emit, state)
                for _ in range(self.options.verifiers if self.options.verify else 0):
                    tg.start_soon(self._verify_worker, work, verify_rx.clone(), flow_tx.clone(), summary, emit,
                                  state)
                for _ in range(self.options.flow_workers):
                    tg.start_soon(self._flow_worker, work, flow_rx.clone(), summary, emit, state)
        except BaseExceptionGroup as group:
            raise first_cause(group) from None

    async def _flows_to_finish(self, run: int) -> list[Outcome]:
        found: list[Outcome] = []
        after = 0
        while True:
            page, after = await self.journal.flows_to_finish(run, after, 1000)
            if not page:
                return found
            found += page

    async def _claim_worker(self, work: WorkList, tx: MemoryObjectSendStream[Outcome],
                            owned: dict[str, dict[str, Owned]], summary: RunSummary, emit: Emit,
                            state: RunState) -> None:
        # structlog's lazy proxy builds a new logger on every bind: resolve it once per worker and run
        # (a logging configuration changed in the middle of a run applies from the next run on).
        log = self.log.bind()
        async with tx:
            while (planned := await work.next()) is not None:
                already = owned.get(planned.request.target.key, {}).get(planned.request.phone_number)
                if (summary.removed and already is None and planned.status == Status.PENDING
                        and planned.request.key in summary.removed and planned.request.key not in self._in_flight):
                    outcome = await self._removed_not_held(planned, planned.request.target.key in owned, log, state)
                else:
                    outcome = await self.claim_number(planned, already, log=log, state=state)
                if outcome.status == Status.IN_PROGRESS and self.options.verify:
                    await tx.send(outcome)
                else:
                    await count_and_emit(emit, summary, outcome)
                    work.finished()

    async def _removed_not_held(self, planned: Planned, swept: bool, log: Any, state: RunState) -> Outcome:
        """A number no longer in the input that the target does not hold is not sent again: after a whole
        listing of the target, no claim of ours took effect (failed); without one it stays unknown.

        A request of the run that died may still be on its way (stalled, executed late): the number is
        asked about once more, a whole request's time after the listing, before it is called failed."""
        log = log.bind(phone_number=planned.request.phone_number, client_token=planned.client_token)
        unknown = _outcome(planned, Status.PENDING, planned.attempts)
        if not swept:
            log.warning("claim.unknown", note="no longer in the input, and the target could not be listed")
            return unknown
        await state.pause(self.api.sleep, max(0.0, state.recheck_removed_at - self.clock()))  # past: at once
        if state.stopping:
            return unknown
        try:
            held = await find_owned(self.api, planned.request.target, planned.request.phone_number, stop=state.stop)
        except CallFailed as lookup:
            log.warning("claim.unknown", error_code=lookup.classified.code, note="no longer in the input")
            return unknown
        if held is not None:  # our dead run's request executed after the listing
            return self._record(self._recovered(planned, planned.attempts, held, log, state))
        log.warning("claim.failed", error_code=NOT_CLAIMED)
        return self._record(_outcome(planned, Status.FAILED, planned.attempts, error=(NOT_CLAIMED, _NOT_CLAIMED)))

    async def _verify_worker(self, work: WorkList, rx: MemoryObjectReceiveStream[Outcome],
                             flows: MemoryObjectSendStream[tuple[Outcome, bool]], summary: RunSummary, emit: Emit,
                             state: RunState) -> None:
        async with rx, flows:
            async for accepted in rx:
                verified = await self.verify(accepted, state=state)
                if verified.status == Status.CLAIMED and verified.flow_status == FlowStatus.PENDING:
                    await flows.send((verified, True))
                    continue
                await count_and_emit(emit, summary, verified)
                work.finished()

    async def _flow_worker(self, work: WorkList, rx: MemoryObjectReceiveStream[tuple[Outcome, bool]],
                           summary: RunSummary, emit: Emit, state: RunState) -> None:
        async with rx:
            async for claimed, ours in rx:
                associated = await self.finish_flow(claimed, state=state)
                if ours:
                    await count_and_emit(emit, summary, associated)
                    work.finished()
                else:  # counted (and emitted) pending when planning found it done
                    count_flow(summary, associated, was=FlowStatus.PENDING)

    # -- one number ----------------------------------------------------------------------------------
    async def claim_number(self, planned: Planned, already: Owned | None = None, *, state: RunState,
                           log: Any = None) -> Outcome:
        """Bring one planned number as far as a claim goes: accepted (in_progress), failed, or pending.
        ``state`` is the run it belongs to (its stop, its counts).

        At most one claim per number runs at a time in this engine; a second caller for the same
        number waits for the first one's outcome (and takes over if the first was interrupted).
        ``log`` is the logger this number's events go to (the engine's by default).
        """
        key = planned.request.key
        while (running := self._in_flight.get(key)) is not None:
            await running.wait()
            if running.outcome is not None:
                return running.outcome
        running = self._in_flight[key] = InFlight()
        try:
            running.outcome = await self._claim_number(planned, already, self.log if log is None else log, state)
            return running.outcome
        finally:
            del self._in_flight[key]
            running.finish()

    async def _claim_number(self, planned: Planned, already: Owned | None, log: Any, state: RunState) -> Outcome:
        log = log.bind(phone_number=planned.request.phone_number, client_token=planned.client_token)
        if planned.status == Status.IN_PROGRESS and planned.phone_number_id:
            if state.stopping or not await never_moved(self.api, planned.request, stop=state.stop):
                return _outcome(planned, Status.IN_PROGRESS, planned.attempts, planned.phone_number_id,
                                planned.phone_number_arn)
            log.warning("claim.not_moved", note="in_progress, yet not on the destination: the same token again")
        if already is not None and planned.maybe_sent:
            return self._record(self._recovered(planned, planned.attempts, already, log, state))
        return self._record(await self._claim(planned, log, state))

    def _recovered(self, planned: Planned, attempts: int, held: Owned, log: Any, state: RunState) -> Outcome:
        """The target holds a number whose token we may have sent: our claim, its answer lost. Not
        adopted: the journal records it as our claim, so ``release`` gives it back and churn counts it."""
        log.info("claim.recovered", phone_number_id=held.phone_number_id)
        state.summary.recovered += 1
        self.journal.record_attempt(planned, RECOVERED, None)
        return _outcome(planned, Status.IN_PROGRESS, attempts, held.phone_number_id, held.phone_number_arn)

    async def _claim(self, planned: Planned, log: Any, state: RunState) -> Outcome:
        params = planned.request.claim_params(planned.client_token)
        attempts = planned.attempts
        maybe_sent = planned.maybe_sent or planned.attempts > 0  # a request with this token may have executed
        if state.stopping:
            return _outcome(planned, Status.PENDING, attempts)
        try:
            async for attempt in self.api.retrying(stop=state.stop, throttles=_THROTTLE_ALLOWANCE, rng=self.rng):
                with attempt:
                    attempts += 1
                    log.debug("claim.sent", attempt=attempts)
                    try:
                        answer = await self.api.send(*planned.request.operation, withdraw_if=state.stop.is_set,
                                                     **params)
                    except Withdrawn:  # stopped while it waited for its turn: never sent
                        return _outcome(planned, Status.PENDING, attempts - 1)
                    except anyio.get_cancelled_exc_class():  # it may have executed: the journal must say it was sent
                        with contextlib.suppress(Exception):  # a broken journal must not hide the cancellation
                            self.journal.record_outcome(_outcome(planned, Status.PENDING, attempts))
                        raise
                    except CallFailed as failed:
                        error = failed.classified
                        self.journal.record_attempt(planned, error.verdict.value, error.code)
                        maybe_sent = maybe_sent or (error.verdict == Verdict.RETRY and not error.throttled)
                        raise
                    self.journal.record_attempt(planned, "accepted", None)
                    log.info("claim.accepted", phone_number_id=answer["PhoneNumberId"], attempts=attempts)
                    return _outcome(planned, Status.IN_PROGRESS, attempts, answer["PhoneNumberId"],
                                    answer["PhoneNumberArn"])
                # Here only when the attempt failed with ``error`` and will be retried, after its backoff.
                log.info("claim.retry", attempt=attempts, error_code=error.code, throttled=error.throttled)
            return _outcome(planned, Status.PENDING, attempts)  # stopped before a retry, or during its backoff
        except CallFailed as failed:  # not retried, or its allowance spent
            error = failed.classified
        if error.verdict == Verdict.RETRY and error.code != "IncompleteAnswer":
            log.warning("claim.unknown", attempts=attempts, error_code=error.code)
            return _outcome(planned, Status.PENDING, attempts, error=(error.code, error.message))
        if error.verdict in (Verdict.UNAVAILABLE, Verdict.RETRY):
            # Unknown is not failed: our own earlier attempt (its answer lost, its token since
            # forgotten) or an earlier claim outside bulkclaim may hold it. Ask before failing.
            # (RETRY here: 200s without the answer in them, as many as retries allow.)
            try:
                ours = await holds(self.api, planned.request, stop=state.stop)
            except CallFailed as lookup:
                log.warning("claim.unknown", attempts=attempts, error_code=lookup.classified.code)
                return _outcome(planned, Status.PENDING, attempts, error=(error.code, error.message))
            if ours is not None and maybe_sent:
                return self._recovered(planned, attempts, ours, log, state)
            if ours is not None:  # held before any request with our token could have executed
                log.info("claim.adopted", phone_number_id=ours.phone_number_id)
                state.summary.adopted += 1
                return _outcome(planned, Status.IN_PROGRESS, attempts, ours.phone_number_id, ours.phone_number_arn)
            if error.verdict == Verdict.RETRY:  # not (or no longer) held: still unknown, not failed
                log.warning("claim.unknown", attempts=attempts, error_code=error.code)
                return _outcome(planned, Status.PENDING, attempts, error=(error.code, error.message))
        log.warning("claim.failed", error_code=error.code, error_message=error.message)
        return _outcome(planned, Status.FAILED, attempts, error=(error.code, error.message))

    async def verify(self, accepted: Outcome, *, state: RunState) -> Outcome:
        """Wait (bounded) for an accepted claim to settle; record and return the result.

        A principal denied DescribePhoneNumber (a narrower IAM policy) does not stop the claims: the
        first denial turns verification off for ``state``'s run, with one warning, and its accepted
        claims stay ``in_progress`` (the same run again, under a principal allowed to describe,
        verifies them)."""
        assert accepted.phone_number_id is not None
        if state.verify_denied:
            return accepted
        result = await poll_until_settled(self.api, accepted.phone_number_id, wait_limit=self.options.verify_timeout,
                              first_poll=self.options.verify_first_poll,
                              sleep=lambda seconds: state.pause_unless_halted(self.api.sleep, seconds),
                              clock=self.clock, target=accepted.target, stopping=lambda: state.halted,
                              stop=state.halt)
        if result.status == "DENIED":
            if not state.verify_denied:
                state.verify_denied = True
                self.log.warning("verify.denied", error_message=result.message,
                                 consequence="not verifying this run's claims: accepted numbers stay in_progress")
            return accepted
        status = _SETTLED.get(result.status, Status.IN_PROGRESS)  # ELSEWHERE: in_progress, with its error
        error = (_SETTLED_CODES[result.status], result.message) if result.status in _SETTLED_CODES else (None, None)
        outcome = replace(accepted, status=status, error_code=error[0], error_message=error[1],
                          updated_at=time.time())
        self.log.info(f"claim.{status.value}", phone_number=accepted.phone_number, client_token=accepted.client_token,
                      phone_number_id=accepted.phone_number_id, describes=result.describes)
        if result.status == "FAILED" and state.claim_failed(accepted.target, result.message):  # quota: stop the run
            self.log.error("run.quota_reached", target=accepted.target, error_message=result.message)
        return self._record(outcome)

    async def finish_flow(self, claimed: Outcome, *, state: RunState) -> Outcome:
        """Associate a CLAIMED number with its contact flow (see ``associate.py``); record and return it."""
        if state.halted:
            return claimed
        result = await associate(self.api, claimed, halt=state.halt, rng=self.rng, log=self.log)
        if result.attempts or result.outcome.flow_status != FlowStatus.PENDING:
            await self.journal.record_flow(result.outcome, result.attempts, result.error)
        return result.outcome

    def _record(self, outcome: Outcome) -> Outcome:
        self.journal.record_outcome(outcome)
        return outcome


def _outcome(planned: Planned, status: Status, attempts: int, phone_number_id: str | None = None,
             phone_number_arn: str | None = None, error: tuple[str | None, str | None] = (None, None)) -> Outcome:
    request = planned.request
    flow = request.contact_flow
    return Outcome(request.phone_number, request.source, request.target.key, status, phone_number_id,
                   phone_number_arn, planned.client_token, attempts, error[0], error[1], time.time(),
                   contact_flow_id=flow, flow_status=None if flow is None else FlowStatus.PENDING,
                   moved_from=None if request.move_from is None else request.move_from.source.key)


async def _feed(tx: MemoryObjectSendStream[tuple[Outcome, bool]], items: list[tuple[Outcome, bool]]) -> None:
    async with tx:
        for item in items:
            await tx.send(item)
