"""The plan step of a run (DESIGN §3): read the rows, record invalid ones, reserve every new number's
token in the journal before anything is sent, and bring in what an earlier run left unsettled.

Rows are read in a worker thread one batch ahead of the journal, so parsing overlaps the commits. A
re-run of identical inputs takes over the earlier plan without reading them again; numbers an
earlier run may have sent that the input no longer names join the run, to be settled, not re-sent.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from bulkclaim.inputs import check
from bulkclaim.journal.protocol import Journal
from bulkclaim.model import (
    ClaimRequest,
    ConfigurationError,
    FlowStatus,
    Options,
    Outcome,
    ParametersChangedError,
    PlanReuse,
    Rejected,
    RunSummary,
    Status,
    Target,
    first_cause,
)
from bulkclaim.run import RunState

__all__ = ["Emit", "Planner", "count_and_emit"]

Emit = Callable[[Outcome], Awaitable[None]]
_PAGE = 1000
_FINAL = (Status.CLAIMED, Status.FAILED, Status.RELEASED)  # nothing left to send or verify
_NAMED = 20  # numbers named in one log event


class Planner:
    """Plans runs into one journal."""

    def __init__(self, journal: Journal, options: Options, log: Any) -> None:
        self.journal = journal
        self.options = options
        self.log = log

    async def plan(self, inputs: Iterable[ClaimRequest | Rejected], emit: Emit, *, fingerprint: str | None,
                   emit_done: bool, state: RunState) -> RunSummary:
        """Begin a run: read every row, record invalid ones, reserve every new number's token durably.

        Rows are read in a worker thread one batch ahead of the journal, so parsing overlaps the
        commits. Nothing is sent. Raises ParametersChangedError at the end if a pending number's
        parameters changed (before anything could be sent). ``state``: the run's stop and counts.
        """
        if state.summary.run:
            raise ValueError("a RunState serves one run: make a new one for each run")
        run = await self.journal.begin_run()
        summary = state.summary  # counted in place: whoever holds the state watches it live
        summary.run = summary.members_run = run
        # Processes sharing a journal (PostgreSQL) plan the same inputs one at a time: the first plans
        # them, the later ones join its run while it goes on (and split its numbers, see WorkList).
        async with self.journal.planning(fingerprint):
            if fingerprint is not None:
                # a live run of these inputs is joined whatever the options (one with other ones is told so)
                found = await self.journal.join_plan(fingerprint, summary.run)
                if found is None and not self.options.retry_failed:
                    found = await self.journal.reuse_plan(fingerprint, summary.run)
                if found is not None:
                    summary.members_run = found.members_run
                    await self._same_options(summary, state)
                    await self._take_over(found, summary, emit, emit_done)
                    await self._join_removed(summary, state)
                    return summary
            await self._plan_rows(inputs, emit, fingerprint=fingerprint, emit_done=emit_done, state=state)
            if not state.stopping:
                if fingerprint is not None:  # a run other workers may join
                    await self._same_options(summary, state)
                await self._join_removed(summary, state)
            return summary

    async def _same_options(self, summary: RunSummary, state: RunState) -> None:
        """The options that change what a run does (``--retry-failed``) are the run's, fixed by the worker
        that planned it: a worker joining it with other ones stops here, before anything is sent."""
        mine = json.dumps({"retry_failed": self.options.retry_failed})

        async def record() -> str:
            return mine

        theirs = await self.journal.once(summary.members_run, "options", record, stop=state.stop)
        if theirs is not None and theirs != mine:
            raise ConfigurationError(
                f"the run these inputs are on (run {summary.members_run}) was started "
                f"{'with' if json.loads(theirs)['retry_failed'] else 'without'} --retry-failed and this worker "
                f"{'with' if self.options.retry_failed else 'without'} it: start every worker of a run with the "
                "same options (or this one once the run has ended); nothing was sent")

    async def _plan_rows(self, inputs: Iterable[ClaimRequest | Rejected], emit: Emit, *, fingerprint: str | None,
                         emit_done: bool, state: RunState) -> RunSummary:
        summary = state.summary
        changed: list[ClaimRequest] = []
        batches_tx, batches_rx = anyio.create_memory_object_stream[list[ClaimRequest | Rejected]](2)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_batches, iter(inputs), batches_tx)
                async with batches_rx:
                    async for batch in batches_rx:
                        changed += await self._plan_batch(batch, summary, emit, emit_done)
                        if state.stopping:
                            tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_cause(group) from None
        self.log.info("run.planned", run=summary.run, to_send=summary.to_send, already_done=summary.already_done,
                      invalid=summary.invalid, duplicates=summary.duplicates)
        if changed:
            raise ParametersChangedError([(r.phone_number, r.source) for r in changed])
        if fingerprint is not None and not state.stopping:
            await self.journal.record_plan(summary.run, fingerprint, summary.duplicates)
        return summary

    async def _join_removed(self, summary: RunSummary, state: RunState) -> None:
        """Numbers an earlier run may have sent that the input no longer names join this run: they are
        settled with the service (a listing, then verify) and reported with it, never sent again.
        Workers sharing the run (PostgreSQL) join them once, and all know them (any of them may lease one)."""
        found_now: list[tuple[str, str, str]] = []

        async def join() -> str:
            found_now.extend(await self.journal.join_unsettled(summary.members_run))
            return json.dumps(found_now)

        joined = [(str(t), str(n), str(s)) for t, n, s in json.loads(await self.journal.once(
            summary.members_run, "removed", join, stop=state.stop) or "[]")]
        summary.removed.update(((target, number), status) for target, number, status in joined)
        if found_now:  # joined now, by this worker (the others found them counted in the plan they joined)
            summary.to_send += len(found_now)
            self.log.warning("input.removed", count=len(joined), phone_numbers=[n for _, n, _ in joined[:_NAMED]],
                             note="no longer in the input, but sent by an earlier run: settled with the service "
                                  "(not sent again) and reported with this run")

    async def _take_over(self, reused: PlanReuse, summary: RunSummary, emit: Emit, emit_done: bool) -> None:
        """Same inputs as an earlier complete plan: its numbers join this run without being read again."""
        summary.members_run = reused.members_run
        done = sum(reused.statuses.get(status, 0) for status in _FINAL)
        summary.to_send = sum(reused.statuses.values()) - done
        summary.already_done, summary.invalid, summary.duplicates = done, reused.invalid, reused.duplicates
        if emit_done:
            after = 0
            while True:
                page, after = await self.journal.run_outcomes(summary.members_run, after, _PAGE)
                if not page:
                    break
                for outcome in page:
                    await count_and_emit(emit, summary, outcome)
        else:
            for status, count in reused.statuses.items():
                if status in _FINAL:
                    summary.statuses[status] += count
        summary.statuses[Status.INVALID.value] += reused.invalid  # their rows are in the journal's report
        self.log.info("run.planned", run=summary.run, to_send=summary.to_send, already_done=summary.already_done,
                      invalid=summary.invalid, duplicates=summary.duplicates,
                      same_inputs_as_earlier_run=summary.members_run)

    async def _read_batches(self, rows: Iterator[ClaimRequest | Rejected],
                            tx: MemoryObjectSendStream[list[ClaimRequest | Rejected]]) -> None:
        async with tx:
            while batch := await anyio.to_thread.run_sync(_take, rows, self.options.plan_batch):
                await tx.send(batch)

    async def _plan_batch(self, batch: list[ClaimRequest | Rejected], summary: RunSummary, emit: Emit,
                          emit_done: bool) -> list[ClaimRequest]:
        requests = [r for r in batch if isinstance(r, ClaimRequest)]
        unchecked = [r for r in requests if not r.checked]
        if unchecked:  # numbers new to the journal get their numbering-plan check now, in input order
            known = await self.journal.known([r.key for r in unchecked])
            batch = await anyio.to_thread.run_sync(
                lambda: [check(r) if isinstance(r, ClaimRequest) and not r.checked and r.key not in known else r
                         for r in batch])
            requests = [r for r in batch if isinstance(r, ClaimRequest)]
        rejected = [r for r in batch if isinstance(r, Rejected)]
        planned = await self.journal.plan(requests, summary.run, retry_failed=self.options.retry_failed)
        if rejected:
            await self.journal.record_rejected(rejected, summary.run)
            summary.invalid += len(rejected)
            for row in rejected:
                self.log.warning("input.invalid", source=row.source, reason=row.reason)
                await count_and_emit(emit, summary, _invalid_outcome(row))
        summary.to_send += len(planned.work)
        summary.already_done += len(planned.done)
        summary.duplicates += len(planned.duplicates)
        for duplicate in planned.duplicates:
            self.log.info("input.duplicate", phone_number=duplicate.phone_number, source=duplicate.source)
        for outcome in planned.done:
            if emit_done:
                await count_and_emit(emit, summary, outcome)
            else:
                summary.statuses[outcome.status.value] += 1
        return planned.changed


async def count_and_emit(emit: Emit, summary: RunSummary, outcome: Outcome) -> None:
    """Count ``outcome`` in the run's summary (and in its removed numbers), then hand it to ``emit``."""
    summary.statuses[outcome.status.value] += 1
    count_flow(summary, outcome)
    if summary.removed and (key := (outcome.target, outcome.phone_number)) in summary.removed:
        summary.removed[key] = outcome.status.value
    await emit(outcome)


def count_flow(summary: RunSummary, outcome: Outcome, *, was: FlowStatus | None = None) -> None:
    """Count ``outcome``'s association (if it has a flow) in the run's summary; ``was``: the status it
    was counted with before, now replaced."""
    if outcome.flow_status is None:
        return
    if was is not None:
        summary.flows[was.value] -= 1
        if summary.flows[was.value] <= 0:
            del summary.flows[was.value]
    summary.flows[outcome.flow_status.value] += 1


def _take(rows: Iterator[ClaimRequest | Rejected], size: int) -> list[ClaimRequest | Rejected]:
    return list(itertools.islice(rows, size))


def _invalid_outcome(row: Rejected) -> Outcome:
    target = row.target.key if isinstance(row.target, Target) else ""
    return Outcome(row.raw, row.source, target, Status.INVALID, error_code="InvalidInput", error_message=row.reason,
                   updated_at=time.time())
