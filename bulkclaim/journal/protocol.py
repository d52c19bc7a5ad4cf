"""What bulkclaim needs from a journal, as two protocols: :class:`Journal` (a run's, writable, one
process at a time) and :class:`JournalReader` (``status``, ``report``, the dry run: read-only, beside
a run). Nothing outside this package builds SQL: a backend is added by implementing both, and
``tests/test_journal_contract.py`` holds every backend to the same behaviour.

The write-ahead rule (DESIGN §3) is the contract's heart: :meth:`Journal.plan`,
:meth:`Journal.assign_candidate` and :meth:`Journal.release_token` return only once the tokens they
hand out are durable; attempts and outcomes (``record_*``) may be written lazily, because losing
one only means the same token is sent again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from bulkclaim.model import ClaimRequest, Outcome, Planned, PlanResult, PlanReuse, Rejected, Status, Target, ToRelease
from bulkclaim.ratelimit import SharedBuckets, Sleep

__all__ = ["Journal", "JournalReader", "JournalStatus"]


class Journal(Protocol):
    """A run's journal: tokens, attempts and outcomes of claims, acquisitions and releases."""

    #: True: one process at a time (a second :func:`~bulkclaim.journal.open_journal` is refused while
    #: it is open: SQLite). False: several processes share the journal at once (PostgreSQL), and
    #: concurrent planners of one number agree on one token.
    @property
    def exclusive(self) -> bool: ...

    #: Numbers this process took over from a worker whose lease expired (a shared journal's; else 0).
    @property
    def takeovers(self) -> int: ...

    # -- runs and planning -----------------------------------------------------------------------------
    async def begin_run(self) -> int:
        """A new run's id (runs of one journal are numbered in the order they began)."""
        ...

    async def plan(self, requests: Sequence[ClaimRequest], run: int, *, retry_failed: bool,
                   dedupe: bool = True) -> PlanResult:
        """Reserve tokens for new numbers (durably, before this returns) and sort the rest. With
        ``dedupe`` a number met twice in one run is a duplicate; without it (one-off library claims)
        it is simply looked up again."""
        ...

    async def record_rejected(self, rows: Sequence[Rejected], run: int) -> None: ...

    async def record_plan(self, run: int, fingerprint: str, duplicates: int) -> None:
        """Remember that ``run`` planned the inputs of ``fingerprint`` completely."""
        ...

    async def reuse_plan(self, fingerprint: str, run: int) -> PlanReuse | None:
        """Take over the latest complete plan of the same inputs, if every number of it is still that
        plan's; ``None``: plan the inputs row by row instead."""
        ...

    async def known(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (target, number) keys the journal already has."""
        ...

    async def join_unsettled(self, run: int) -> list[tuple[str, str, str]]:
        """Numbers of ``run``'s targets that an earlier run left unsettled with a token that may have
        been sent, and that ``run``'s input no longer names: they join ``run`` (after its own numbers,
        marked possibly sent) to be settled and reported with it. (target, number, status) of each."""
        ...

    # -- sharing a run (a journal that is not ``exclusive``; the others do nothing here) -----------------
    def planning(self, fingerprint: str | None) -> AbstractAsyncContextManager[None]:
        """Held while a run plans the inputs of ``fingerprint`` (and joins unsettled numbers): processes
        planning the same inputs plan one after the other, so that the later ones join the first's run."""
        ...

    async def join_plan(self, fingerprint: str, run: int) -> PlanReuse | None:
        """The plan of the same inputs that live workers are working on now, joined by ``run`` (as
        :meth:`reuse_plan`, but nothing is marked possibly sent: numbers are leased one by one)."""
        ...

    async def once(self, run: int, step: str, produce: Callable[[], Awaitable[str | None]], *,
                   stop: anyio.Event | None = None) -> str | None:
        """A run-wide step (the reconciliation sweep, the quota preflight, the run's options) done by one
        worker of ``run``: ``produce`` runs in one process at a time, and only while no worker of the
        run has finished ``step``; what it returns is kept, and the other workers get it instead of
        doing the step again. ``produce`` returning None (it was stopped) keeps nothing, so the next
        worker does the step. ``stop`` set while this worker waits for another one's step returns None
        at once (nothing done, nothing kept). An exclusive journal (one process) simply awaits ``produce``."""
        ...

    async def more_work(self, run: int, *, idle: bool) -> bool:
        """After :meth:`work_page` found nothing: whether to ask again (a moment later), because other
        workers are still working on numbers of ``run`` and may die before they finish them, or
        because this one is not ``idle`` yet (numbers of its own are still being claimed or verified)."""
        ...

    async def take_over(self, run: int) -> list[Planned]:
        """A shared journal: wait a moment (a fraction of the lease TTL), then lease and return every
        number of ``run`` that a dead worker held (none, mostly). Asked over and over while a worker
        has numbers in hand, so that a killed worker's numbers are owned again within about one lease
        TTL whatever the survivors are busy with. An exclusive journal returns none at once."""
        ...

    async def lease(self, planned: Planned) -> Planned | Outcome:
        """Hold ``planned`` for this process before sending it (waiting while a live worker holds it):
        the number as the journal has it now, or its outcome if another worker finished it."""
        ...

    def unlease(self, planned: Planned) -> None:
        """Let go of a number leased with :meth:`lease`, once its outcome is recorded."""
        ...

    def shared_budget(self, scope: str, *, sleep: Sleep, clock: Callable[[], float]) -> SharedBuckets | None:
        """The rate budget every worker of this journal shares for ``scope`` (Region and endpoint), one
        bucket per API; ``None``: each process has its own limiters."""
        ...

    # -- claiming --------------------------------------------------------------------------------------
    def record_attempt(self, planned: Planned, result: str, error_code: str | None) -> None:
        """One request's result (``accepted``, ``recovered``, or a verdict); may be written lazily."""
        ...

    def record_outcome(self, outcome: Outcome) -> None:
        """A number's new state; may be written lazily."""
        ...

    async def work_page(self, run: int, after: int, limit: int) -> tuple[list[Planned], int]:
        """The next ``limit`` numbers of ``run`` still to send or verify, in input order after the
        position ``after``; and the position to continue from. A shared journal leases them to this
        process instead (from wherever they are: a dead worker's numbers are taken over)."""
        ...

    async def flows_to_finish(self, run: int, after: int, limit: int) -> tuple[list[Outcome], int]:
        """The claimed numbers of ``run`` whose contact-flow association is pending, in input order after
        the position ``after``; and the position to continue from."""
        ...

    async def record_flow(self, outcome: Outcome, attempts: int, error: tuple[str, str] | None) -> None:
        """A number's association result (``outcome.flow_status``) for ``outcome.contact_flow_id``, with the
        requests it took and its last error; durable when this returns."""
        ...

    async def targets_to_reconcile(self, run: int) -> list[Target]:
        """Targets holding numbers of ``run`` that an earlier run may have sent (outcome unknown)."""
        ...

    async def run_outcomes(self, run: int, after: int, limit: int) -> tuple[list[Outcome], int]:
        """The numbers of ``run`` that are done (claimed / failed / released), in input order."""
        ...

    # -- the quota preflight ---------------------------------------------------------------------------
    async def count_to_claim(self, run: int, target: str, owned: Collection[str]) -> int:
        """Numbers of ``run`` still to claim to ``target`` that it does not hold (``owned``)."""
        ...

    async def defer_beyond(self, run: int, target: str, owned: Collection[str], allowed: int,
                           error: tuple[str, str]) -> None:
        """Mark failed with ``error`` (code, message) the numbers of ``run`` to ``target`` beyond the
        first ``allowed`` still to claim, in input order; never one that may have been sent already."""
        ...

    async def churn(self, target: str, now: float | None = None) -> int:
        """Claims (one per token) and releases made to ``target`` within the churn window."""
        ...

    # -- acquisitions (``bulkclaim acquire``) ---------------------------------------------------------
    async def acquisition_slots(self, name: str, target: str, params: str, count: int, *,
                                create: bool) -> list[tuple[int, Planned | None]]:
        """Each slot (1..``count``) of acquisition ``name`` and its current candidate; with ``create``,
        the acquisition is recorded if new. Raises ConfigurationError if ``name`` was used with another
        target or ``params``."""
        ...

    async def assign_candidate(self, name: str, slot: int, expected: str | None, request: ClaimRequest,
                               run: int) -> Planned | None:
        """Compare-and-set: give ``slot`` the candidate ``request`` (with a new token, durable before
        this returns) if its candidate is still ``expected``; if another worker moved it first, its
        current candidate. ``None``: the journal knows this number already; offer another."""
        ...

    async def slot_outcomes(self, name: str) -> list[Outcome]:
        """Each slot's current number and status (``pending`` with no number: not filled)."""
        ...

    # -- releases (``bulkclaim release``) --------------------------------------------------------------
    async def release_token(self, number: ToRelease) -> str:
        """The release token of ``number``: the one journaled before, or a new one, durable now."""
        ...

    async def record_release(self, number: ToRelease, status: str, error: tuple[str, str] | None) -> None:
        """A release's result (``released`` or ``failed``); a released number is ``released`` from now on."""
        ...

    # -- lifecycle -------------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Wait until everything handed over so far is durable."""
        ...

    async def close(self) -> None:
        """Write what is buffered and let the next process in. Completes even when cancelled."""
        ...


@dataclass
class JournalStatus:
    journal: str
    #: a bulkclaim process holds the journal's lock (a run is going on); None: cannot tell here
    live: bool | None
    pid: int | None  # the process holding it, when known
    counts: dict[str, int]
    runs: int
    latest_run: int | None
    #: the run whose numbers the latest run works on: itself, or an earlier run whose plan of identical
    #: inputs it took over (the ``run`` column of those numbers, what ``release --run`` takes)
    latest_run_numbers: int | None
    last_run_started_at: float | None
    claims_per_second: float | None  # None unless live
    eta_seconds: float | None
    #: per run (the run that last acted on each number), counts by status, invalid rows included
    run_counts: dict[int, dict[str, int]]
    #: numbers whose *current* state carries an error (failed, or left pending / in_progress after
    #: an error), latest first; a throttled retry of a number that then succeeded is not one
    last_errors: list[dict[str, Any]]
    error_count: int
    #: the run the live process is doing (the latest run, if that process started it)
    live_run: int | None = None
    #: a shared journal (PostgreSQL): the workers alive now, by the run whose numbers they work on
    workers: dict[int, int] | None = None
    #: numbers with a contact flow, by ``flow_status`` (every run)
    flows: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        fields = dict(self.__dict__)
        fields["run_counts"] = {str(run): counts for run, counts in self.run_counts.items()}
        if self.workers is not None:
            fields["workers"] = {str(run): count for run, count in self.workers.items()}
        return fields


class JournalReader(Protocol):
    """A journal opened for reading only: it takes no lock, creates nothing and reserves nothing, so
    it can read beside a run that is writing."""

    def status(self, *, now: float | None = None, errors: int = 5) -> JournalStatus:
        """Whether a run is live, counts by status (overall and per run), while live the recent claim
        rate and an ETA for what is pending, and the ``errors`` latest numbers with an error."""
        ...

    def run_counts(self, run: int) -> dict[str, int]:
        """How many numbers of ``run`` ended in each status, invalid rows included (non-zero only)."""
        ...

    def flow_counts(self, run: int) -> dict[str, int]:
        """How many numbers of ``run`` with a contact flow are in each ``flow_status`` (non-zero only)."""
        ...

    def churn(self, target: str, now: float | None = None) -> int: ...

    def lookup(self, target: str, phone_number: str) -> tuple[Status, str] | None:
        """A number's status and the hash of the parameters it was planned with, if the journal has it."""
        ...

    def outcomes(self, run: int | None = None, statuses: frozenset[str] | None = None) -> Iterator[Outcome]:
        """Every number (of one ``run``, or all), in input order, then the invalid rows of that run
        (or of the latest run); only those of ``statuses`` if given."""
        ...

    def numbers_to_release(self, run: int | None = None) -> list[ToRelease]:
        """The claimed numbers (of one ``run``, or all), marking those no claim of ours took."""
        ...
