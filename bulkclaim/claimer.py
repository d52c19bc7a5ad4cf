"""The library API: an async context manager that claims numbers for an async service.

    async with Claimer(instance_id=..., journal="claims.journal", region="us-east-1") as claimer:
        outcome = await claimer.claim("+12065550100", description="support")
        async for outcome in claimer.claim_many(requests):
            ...

Every ``claim()`` and ``claim_many()`` of one Claimer shares one limiter per API, one client and one
journal. Two concurrent ``claim()`` calls for the same number send one request. A claim keeps going
when its caller is cancelled (it runs in the Claimer's own task group) so the journal is always
consistent; leaving the ``async with`` block cancels what is still running, and the journal keeps
the tokens for the next Claimer to resume with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from aiobotocore.session import AioSession
from anyio.streams.memory import MemoryObjectReceiveStream

from bulkclaim.acquire import Acquirer, AcquireSpec
from bulkclaim.backoff import Backoff
from bulkclaim.calls import Api
from bulkclaim.connect import connect_client
from bulkclaim.contact_flows import flow_id
from bulkclaim.engine import Engine, Options, RunSummary
from bulkclaim.inputs import normalize_number
from bulkclaim.journal import Journal, open_journal
from bulkclaim.limiters import APIS, answer_timeout, budget_scope, connect_api, shared_limiters
from bulkclaim.model import (
    BulkclaimError,
    ClaimRequest,
    FlowStatus,
    Outcome,
    ParametersChangedError,
    Rejected,
    Status,
    Target,
)
from bulkclaim.move import MoveRow, as_move_rows, resolve_moves
from bulkclaim.outage import OUTAGE_TIMEOUT
from bulkclaim.run import RunState
from bulkclaim.settings import ClientSettings, RateSettings
from bulkclaim.telemetry import Telemetry

if TYPE_CHECKING:
    from bulkclaim.metrics import ClaimerCollector

__all__ = ["Claimer", "RateSettings", "connect_api"]



class Claimer:
    """Claims Connect phone numbers to one target, journaled, throttled and verified.

    ``journal`` is an SQLite file's path, a ``postgresql://`` URL (the ``bulkclaim[postgres]`` extra;
    replicas of a service may share it, and agree on one token per number), or an open :class:`Journal`.

    After a fatal answer (403, unknown instance) nothing is sent for ``fatal_cooldown`` seconds;
    then one request probes again, so a long-running service recovers once permissions are fixed.
    ``None`` keeps the breaker open for good (the CLI's choice: its run stops anyway).

    While the endpoint cannot be reached, claims wait instead of spending their attempts (one probe
    at a time checks whether it is back); after ``outage_timeout`` seconds of outage (20 s if it has
    never answered) they raise :class:`EndpointUnreachableError`, with every token kept in the
    journal. ``client_settings.read_timeout`` (+ ``connect_timeout``) bounds each whole call.

    Claimers of one process talking to the same Region and endpoint with the same ``rates`` share
    one limiter per API (one rate budget, as the account's bucket is shared). A Claimer with other
    ``rates`` gets limiters built from its own arguments, which do not share that budget (a
    ``limiter.not_shared`` warning is logged).

    ``telemetry`` counts for :meth:`metrics_collector`; Claimers given the same one add up.
    """

    def __init__(
        self,
        *,
        journal: str | Path | Journal,
        instance_id: str | None = None,
        target_arn: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        session: AioSession | None = None,
        client: Any = None,
        client_settings: ClientSettings | None = None,
        rates: RateSettings | None = None,
        options: Options = Options(),
        backoff: Backoff = Backoff(),
        default_region_for_numbers: str | None = None,
        fatal_cooldown: float | None = 60.0,
        outage_timeout: float = OUTAGE_TIMEOUT,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.target = Target(instance_id=instance_id, target_arn=target_arn)
        self._journal_spec = journal
        self._settings = client_settings or ClientSettings(region=region, profile=profile, endpoint_url=endpoint_url)
        self._session = session
        self._client = client
        self.rates = rates or RateSettings()
        self.options = options
        self._backoff = backoff
        self._default_region = default_region_for_numbers
        self._fatal_cooldown = fatal_cooldown
        self._outage_timeout = outage_timeout
        self.log = log if log is not None else structlog.get_logger("bulkclaim")
        self._clock, self._sleep, self._rng = clock, sleep, rng or random.Random()
        self._stack: AsyncExitStack | None = None
        self._inflight: dict[tuple[str, str], _Shared] = {}
        self._producers: set[anyio.CancelScope] = set()
        self._acquisitions: dict[str, anyio.Lock] = {}  # one run at a time per acquisition name
        self.last_summary: RunSummary | None = None  # the counts of the latest finished claim_many run
        self._run: int | None = None
        #: What the metrics read (see :meth:`metrics_collector`): give several Claimers one to add them up.
        self.telemetry = telemetry or Telemetry()

    # -- lifecycle -------------------------------------------------------------------------------------
    async def __aenter__(self) -> Claimer:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if isinstance(self._journal_spec, str | Path):
                # Opened in a worker thread (it migrates and fsyncs: the event loop must not wait), and
                # shielded: a journal that is open reaches the exit stack, so a cancelled owner closes it.
                with anyio.CancelScope(shield=True):
                    opened = await anyio.to_thread.run_sync(open_journal, self._journal_spec)
                self.journal: Journal = opened
                stack.push_async_callback(opened.close)  # shielded: always finishes
            else:
                self.journal = self._journal_spec
            client = self._client
            if client is None:
                pool = max(self.rates.max_in_flight or self.rates.burst, 10) + self.options.verifiers
                settings = self._settings
                if settings.max_pool_connections < pool:
                    settings = dataclasses.replace(settings, max_pool_connections=pool)
                client = await stack.enter_async_context(connect_client(settings, self._session))
            self.telemetry.watch(self.journal)  # its lease take-overs, if it has leases
            shared = self.journal.shared_budget("/".join(budget_scope(self._settings)), sleep=self._sleep,
                                                clock=self._clock)
            if shared is not None:  # a shared journal: one budget for every worker, in the journal's database
                self.limiters = {api: self.rates.limiter(api, self._clock, self._sleep, shared=shared)
                                 for api in APIS}
            elif self._clock is time.monotonic and self._sleep is anyio.sleep:
                self.limiters = shared_limiters(self._settings, self.rates)
            else:  # an injected clock (tests, simulations) gets limiters of its own
                self.limiters = {api: self.rates.limiter(api, self._clock, self._sleep) for api in APIS}
            self.api = Api(client, self.limiters, backoff=self._backoff, sleep=self._sleep, rng=self._rng,
                           clock=self._clock, fatal_cooldown=self._fatal_cooldown,
                           outage_timeout=self._outage_timeout, answer_timeout=answer_timeout(self._settings),
                           telemetry=self.telemetry)
            self.engine = Engine(self.api, self.journal, self.options, log=self.log, clock=self._clock, rng=self._rng)
            self._claims = RunState()  # what claim() does is one long run: the Claimer's life
            stack.enter_context(self.telemetry.tracking(self._claims))
            self._tg = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        for scope in list(self._producers):  # claim_many runs whose consumer never finished reading
            scope.cancel()
        if exc is not None:
            # Leaving on an error: stop background claims (their tokens stay in the journal) and let
            # the caller's own exception through as it is, not wrapped in a task group's exception group.
            self._tg.cancel_scope.cancel()
        await stack.aclose()

    def metrics_collector(self) -> ClaimerCollector:
        """A Prometheus collector of this Claimer's metrics to register in the host's registry (the
        ``bulkclaim[metrics]`` extra; see :mod:`bulkclaim.metrics`). Starts no server, registers nothing."""
        from bulkclaim.metrics import ClaimerCollector

        return ClaimerCollector(self)

    # -- one number ------------------------------------------------------------------------------------
    async def claim(self, phone_number: str, *, description: str | None = None,
                    tags: Mapping[str, str] | None = None, contact_flow: str | None = None) -> Outcome:
        """Claim one number (E.164, or national with ``default_region_for_numbers``) and wait for it.

        ``contact_flow`` (a flow id, or its ARN): once the number is CLAIMED it is associated with that
        flow (``outcome.flow_status``); a failed association does not make the claim fail.

        Raises ValueError for a number that is not valid, FatalServiceError when the service refuses
        the caller (credentials, permissions, unknown target), ParametersChangedError when a pending
        claim of this number was started with another description or tags.
        """
        flow = None if contact_flow is None else flow_id(contact_flow, self.target)
        request = ClaimRequest(normalize_number(phone_number, self._default_region), self.target, description,
                               MappingProxyType(dict(tags or {})), source="claim()", contact_flow=flow)
        shared = self._inflight.get(request.key)
        if shared is None:
            shared = self._inflight[request.key] = _Shared()
            self._tg.start_soon(self._claim_shared, request, shared)
        return await shared.wait()

    async def _claim_shared(self, request: ClaimRequest, shared: _Shared) -> None:
        try:
            outcome = await self._claim_one(request)
            self._claims.summary.statuses[outcome.status.value] += 1  # counted once, however many callers wait
            shared.set(outcome)
        except Exception as exc:
            shared.fail(exc)
        finally:
            self._inflight.pop(request.key, None)
            if not shared.done:  # cancelled: the Claimer is closing; callers must not wait forever
                shared.fail(BulkclaimError("the Claimer closed before this claim finished; its token is kept "
                                           "in the journal and a later claim of the number resumes it"))

    async def _claim_one(self, request: ClaimRequest) -> Outcome:
        if self._run is None:
            self._run = await self.journal.begin_run()
        planned = await self.journal.plan([request], self._run, retry_failed=self.options.retry_failed, dedupe=False)
        if planned.changed:
            raise ParametersChangedError([(request.phone_number, request.source)])
        if planned.done:
            done = planned.done[0]
            if done.status == Status.CLAIMED and done.flow_status == FlowStatus.PENDING:
                return await self.engine.finish_flow(done, state=self._claims)
            return done
        # Replicas sharing a journal (PostgreSQL): one sends, the others wait for its outcome.
        work = await self.journal.lease(planned.work[0])
        if isinstance(work, Outcome):
            return work
        try:
            outcome = await self.engine.claim_number(work, state=self._claims)
            if outcome.status == Status.IN_PROGRESS and self.options.verify:
                outcome = await self.engine.verify(outcome, state=self._claims)
            if outcome.status == Status.CLAIMED and outcome.flow_status == FlowStatus.PENDING:
                outcome = await self.engine.finish_flow(outcome, state=self._claims)
        finally:
            self.journal.unlease(work)
        self._claims.raise_if_aborted()  # the target's quota reached: this and every later claim() raise
        return outcome

    # -- acquire by search ------------------------------------------------------------------------------
    async def acquire(self, spec: AcquireSpec, name: str | None = None, *, limit: int | None = None) -> list[Outcome]:
        """Claim ``spec.count`` new numbers found by search (see :mod:`bulkclaim.acquire`): each slot's
        candidate and token are journaled before its claim, and calling again with the same ``name``
        resumes the same acquisition. ``limit``: fill at most this many open slots now."""
        name = name or spec.default_name()
        # Exclusive per name: a second call waits, then finds the slots filled (never 2N numbers).
        async with self._acquisitions.setdefault(name, anyio.Lock()):
            acquirer = Acquirer(self.engine, self.journal, self.target, spec, name)
            return await acquirer.run(limit)

    # -- many numbers ----------------------------------------------------------------------------------
    async def claim_many(self, rows: Iterable[ClaimRequest | Rejected | str], *,
                         state: RunState | None = None) -> AsyncIterator[Outcome]:
        """Claim every row (as one journaled run) and yield each number's outcome as it is known.

        Strings are numbers for this Claimer's target; invalid ones come out as ``invalid`` outcomes.
        ``state`` (a new :class:`RunState` per call): this run's live counts and its stop
        (``state.request_stop()``: nothing new is sent, unfinished numbers stay in the journal). Every
        call is a run of its own: concurrent calls never share a stop or counts.
        """
        tx, rx = anyio.create_memory_object_stream[Outcome | BaseException](100)
        scope = anyio.CancelScope()
        self._producers.add(scope)

        async def emit(outcome: Outcome) -> None:
            try:
                try:
                    tx.send_nowait(outcome)  # room in the buffer: no trip through the event loop
                except anyio.WouldBlock:
                    await tx.send(outcome)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise _ConsumerGone from None

        async def produce() -> None:
            with scope:
                async with tx:
                    try:
                        self.last_summary = await self.engine.run(self._requests(rows), emit, state=state)
                    except _ConsumerGone:
                        return  # the consumer stopped iterating: the run stops, the journal keeps its tokens
                    except Exception as exc:  # delivered to the consumer, raised in its own context
                        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                            await tx.send(exc)
            self._producers.discard(scope)

        self._tg.start_soon(produce)
        try:
            async with rx:
                while (item := await _next_item(rx)) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            scope.cancel()  # nobody reads any more: stop sending claims for this call

    # -- moving numbers --------------------------------------------------------------------------------
    async def move(self, rows: Iterable[MoveRow | Rejected | str], *, source: Target,
                   state: RunState | None = None) -> AsyncIterator[Outcome]:
        """Move every row's number from ``source`` to this Claimer's target (UpdatePhoneNumber), as one
        journaled run, and yield each number's outcome as :meth:`claim_many` does (``claimed``: CLAIMED
        on this target). Strings are numbers or PhoneNumberIds. Rows are resolved first with one listing
        of each target (see :mod:`bulkclaim.move`); numbers neither holds come out ``invalid``. A
        :class:`~bulkclaim.move.MoveRow`'s ``contact_flow`` (a flow of this target, or of ``source``: the
        one of the same name here) is associated once the number is CLAIMED here (``outcome.flow_status``):
        Connect does not carry the association over. A MoveRow's ``destination`` moves its number there
        instead of to this target (one listing of each destination)."""
        requests = await resolve_moves(self.api, source, self.target, as_move_rows(rows, self._default_region))
        async for outcome in self.claim_many(requests, state=state):
            yield outcome

    def _requests(self, rows: Iterable[ClaimRequest | Rejected | str]) -> Iterable[ClaimRequest | Rejected]:
        for index, row in enumerate(rows, start=1):
            if not isinstance(row, str):
                yield row
                continue
            try:
                number = normalize_number(row, self._default_region)
                yield ClaimRequest(number, self.target, source=f"claim_many:{index}")
            except ValueError as exc:
                yield Rejected(raw=row, source=f"claim_many:{index}", reason=str(exc), target=self.target)


async def _next_item(rx: MemoryObjectReceiveStream[Outcome | BaseException]) -> Outcome | BaseException | None:
    """The next item, or ``None`` at the end. Items already buffered are taken without a trip through
    the event loop: ``receive()`` always yields to the loop first, which lets the consumer take at most
    one outcome per loop iteration and, the buffer being bounded, holds the workers to that pace."""
    try:
        return rx.receive_nowait()
    except anyio.WouldBlock:
        pass
    except anyio.EndOfStream:
        return None
    try:
        return await rx.receive()
    except anyio.EndOfStream:
        return None


class _ConsumerGone(Exception):
    """The iterator of ``claim_many`` was closed or abandoned before the run finished."""


class _Shared:
    """One claim's result, awaited by every caller that asked for the same number."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._outcome: Outcome | None = None
        self._error: Exception | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def set(self, outcome: Outcome) -> None:
        self._outcome = outcome
        self._done.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> Outcome:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome

