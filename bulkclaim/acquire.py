"""Acquire: claim exactly N new numbers found with SearchAvailablePhoneNumbers.

An acquisition has N *slots*. Before a slot's claim is sent, its candidate number and a fresh
client token are committed together (the candidate becomes a ``numbers`` row, the slot points at
it), so the write-ahead rule of ``claim`` holds here too:

- a lost response is retried with the same number and token (the engine's claim loop);
- a crash leaves each slot pointing at its candidate: the next run adopts it if the target holds
  it, else re-sends the same token: never a second number for the slot (never N+1);
- a slot moves to a new candidate only when the old one is certainly not ours: "not available"
  and not on the target (someone else took it between search and claim), or its claim settled
  FAILED (in this run, or found FAILED when a later run verifies an earlier run's accepted claim);
  a candidate whose outcome is unknown keeps its slot for the next run;
- candidates are handed out one at a time by one pool, and assigning one checks the journal in
  the same transaction, so concurrent slots never chase the same number;
- a slot's candidate changes only by compare-and-set (from the candidate its worker saw): two
  workers on one slot (two acquisitions of one name at once) end up with one number, never two.
  ``Claimer.acquire`` also runs one acquisition of a name at a time.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import anyio

from bulkclaim.calls import Api, CallFailed
from bulkclaim.engine import Engine, first_cause
from bulkclaim.journal.protocol import Journal
from bulkclaim.model import ClaimRequest, Outcome, Planned, Status, Target
from bulkclaim.reconcile import Owned, sweep
from bulkclaim.run import RunState
from bulkclaim.search import SearchInterrupted, search_page

__all__ = ["AcquireSpec", "Acquirer", "CandidatePool"]


@dataclass(frozen=True)
class AcquireSpec:
    """What to acquire: ``count`` numbers of a country and type, optionally under a prefix."""

    country: str
    number_type: str
    count: int
    prefix: str | None = None
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def as_json(self) -> str:
        return json.dumps({"country": self.country, "type": self.number_type, "count": self.count,
                           "prefix": self.prefix, "description": self.description, "tags": dict(self.tags)},
                          sort_keys=True)

    def default_name(self) -> str:
        return f"{self.country}-{self.number_type}-{self.prefix or 'any'}-{self.count}"


class CandidatePool:
    """Available numbers from SearchAvailablePhoneNumbers, each handed out once per process."""

    def __init__(self, api: Api, target: Target, spec: AcquireSpec) -> None:
        self._api, self._target, self._spec = api, target, spec
        self._offered: set[str] = set()
        self._queue: deque[str] = deque()
        self._next_token: str | None = None
        self._fresh_in_pass = 0
        self._lock = anyio.Lock()
        self._interrupted: SearchInterrupted | None = None

    async def take(self) -> str | None:
        """A number not offered before, or ``None`` when a whole search pass finds nothing new.
        Raises SearchInterrupted when searching cannot go on for now (then at once on every later call:
        the other slots do not each wait out the same throttling)."""
        async with self._lock:
            while not self._queue:
                if self._interrupted is not None:
                    raise self._interrupted
                try:
                    if not await self._search_page():
                        return None
                except SearchInterrupted as interrupted:
                    self._interrupted = interrupted
                    raise
            return self._queue.popleft()

    async def _search_page(self) -> bool:
        page, self._next_token = await search_page(self._api, self._target, self._spec.country,
                                                   self._spec.number_type, self._spec.prefix,
                                                   next_token=self._next_token)
        fresh = [number for number in page if number not in self._offered]
        self._offered.update(fresh)
        self._queue.extend(fresh)
        self._fresh_in_pass += len(fresh)
        if self._next_token is None:  # end of a pass: start over, unless this pass found nothing new
            found, self._fresh_in_pass = self._fresh_in_pass, 0
            return found > 0 or bool(fresh)
        return True


class Acquirer:
    """Fills the slots of one named acquisition, using the engine's claim and verify steps."""

    def __init__(self, engine: Engine, journal: Journal, target: Target, spec: AcquireSpec, name: str, *,
                 max_candidates_per_slot: int = 25, state: RunState | None = None) -> None:
        self.engine, self.journal, self.target, self.spec, self.name = engine, journal, target, spec, name
        self.state = state or RunState()  # this acquisition's stop (``state.request_stop()``)
        self.max_candidates = max_candidates_per_slot
        self.pool = CandidatePool(engine.api, target, spec)
        self._owned: dict[str, Owned] = {}
        self._run = 0

    async def slots(self) -> list[tuple[int, Planned | None]]:
        """Each slot and its current candidate, writing nothing (all empty for a new acquisition).
        Raises ConfigurationError if this name was used with other parameters."""
        return await self._slots(create=False)

    async def _slots(self, *, create: bool) -> list[tuple[int, Planned | None]]:
        return await self.journal.acquisition_slots(self.name, self.target.key, self.spec.as_json(), self.spec.count,
                                                    create=create)

    async def holdings(self) -> dict[str, Owned] | None:
        """What the target holds now (one listing), or ``None`` if it cannot be listed."""
        try:
            return await sweep(self.engine.api, self.target, stop=self.state.stop)
        except CallFailed as failed:
            self.engine.log.warning("acquire.listing_failed", target=self.target.key,
                                    error_code=failed.classified.code, error_message=failed.classified.message)
            return None

    @staticmethod
    def still_to_claim(slots: list[tuple[int, Planned | None]], owned: Collection[str]) -> int:
        """Slots that will need a claim: empty, failed or released, or pending and not held already."""
        return sum(1 for _, planned in slots if planned is None or _needs_candidate(planned)
                   or (planned.status == Status.PENDING and planned.request.phone_number not in owned))

    async def run(self, limit: int | None = None, owned: dict[str, Owned] | None = None) -> list[Outcome]:
        """Fill every open slot (at most ``limit`` of them); the slots' outcomes, in slot order.
        ``owned``: a listing of the target made just before (else one is made if a slot needs it)."""
        self._run = await self.journal.begin_run()
        slots = await self._slots(create=True)
        open_slots = [(slot, planned) for slot, planned in slots
                      if planned is None or planned.status not in (Status.CLAIMED, Status.IN_PROGRESS)]
        if owned is None and any(p is not None and p.status == Status.PENDING for _, p in open_slots):
            owned = await self.holdings()  # an earlier run may have sent them: adopt what the target holds
        self._owned = owned or {}
        if limit is not None:  # the quota allows ``limit`` more claims; adopting what is held needs none
            held = [(slot, p) for slot, p in open_slots
                    if p is not None and p.status == Status.PENDING and p.request.phone_number in self._owned]
            open_slots = held + [s for s in open_slots if s not in held][:limit]
        waiting = [(slot, planned) for slot, planned in slots
                   if planned is not None and planned.status == Status.IN_PROGRESS]
        workers = max(1, min(len(open_slots), self.engine.api.limiters["ClaimPhoneNumber"].max_in_flight))
        self.state.summary.to_send += len(open_slots) + (len(waiting) if self.engine.options.verify else 0)
        try:
            with self.engine.api.telemetry.tracking(self.state):  # the slots' numbers in the metrics
                await self._fill_all(open_slots, waiting, workers)
        except BaseExceptionGroup as group:
            raise first_cause(group) from None
        await self.journal.flush()
        self.state.raise_if_aborted()  # a slot's claim found the target at its quota: no more were sent
        return await self.journal.slot_outcomes(self.name)

    async def _fill_all(self, open_slots: list[tuple[int, Planned | None]], waiting: list[tuple[int, Planned]],
                        workers: int) -> None:
        async with anyio.create_task_group() as tg:
            queue = deque(open_slots)
            for _ in range(workers):
                tg.start_soon(self._work, queue)
            for slot, planned in waiting if self.engine.options.verify else []:
                tg.start_soon(self._fill, slot, planned)  # verified; a FAILED claim is replaced

    async def _work(self, queue: deque[tuple[int, Planned | None]]) -> None:
        while queue and not self.state.stopping:
            slot, planned = queue.popleft()
            await self._fill(slot, planned)

    async def _fill(self, slot: int, planned: Planned | None) -> None:
        log = self.engine.log.bind(acquisition=self.name, slot=slot)
        replacing = planned is None or _needs_candidate(planned)
        for tried in range(self.max_candidates):
            if self.state.stopping:
                return
            if replacing or planned is None:
                try:
                    planned = await self._assign(slot, planned)
                except SearchInterrupted as interrupted:  # not a refusal: the slot stays open for the next run
                    log.warning("acquire.search_interrupted", error_code=interrupted.classified.code,
                                error_message=str(interrupted))
                    return
                if planned is None:
                    log.warning("acquire.no_candidates", country=self.spec.country, type=self.spec.number_type,
                                prefix=self.spec.prefix)
                    return
                log.info("acquire.candidate", phone_number=planned.request.phone_number,
                         client_token=planned.client_token)
                if tried:
                    self.state.summary.to_send += 1  # the slot's next number, after a failed one
            outcome = await self.engine.claim_number(planned, self._owned.get(planned.request.phone_number),
                                               state=self.state)
            if outcome.status == Status.IN_PROGRESS and self.engine.options.verify:
                outcome = await self.engine.verify(outcome, state=self.state)
            self.state.summary.statuses[outcome.status.value] += 1
            if outcome.status != Status.FAILED:
                return  # claimed, in_progress, or unknown (pending): the slot keeps this number
            log.info("acquire.replaced", phone_number=planned.request.phone_number, error_code=outcome.error_code)
            replacing = True  # ``planned`` stays: the slot moves from it (compare-and-set), not from anything
        log.warning("acquire.slot_gave_up", candidates=self.max_candidates)

    async def _assign(self, slot: int, old: Planned | None) -> Planned | None:
        """A new candidate for ``slot`` in place of ``old``, with its token, committed before anything
        is sent; or the slot's current candidate if another worker replaced ``old`` first."""
        expected = old.request.phone_number if old is not None else None
        while (number := await self.pool.take()) is not None:
            request = ClaimRequest(number, self.target, self.spec.description, self.spec.tags,
                                   source=f"acquire:{self.name}:slot {slot}")
            planned = await self.journal.assign_candidate(self.name, slot, expected, request, self._run)
            if planned is not None:
                return planned
        return None


def _needs_candidate(planned: Planned) -> bool:
    """A slot whose number is certainly not ours (failed) or given back (released) takes a new one."""
    return planned.status in (Status.FAILED, Status.RELEASED)
