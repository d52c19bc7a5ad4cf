"""The journal contract: what every backend must do, through the Journal and JournalReader protocols only.

Each test runs once per backend (``BACKENDS``); none looks at tables or SQL, so a new backend passes
by implementing the protocols (``bulkclaim/journal/protocol.py``), nothing else. Backend-specific
behaviour (SQLite's file, schema, writer thread) is tested in ``test_journal.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkclaim.journal import Journal, open_journal, read_existing_journal
from bulkclaim.model import (
    NOT_CLAIMED,
    ConfigurationError,
    FlowStatus,
    JournalError,
    Outcome,
    Planned,
    Rejected,
    Status,
    ToRelease,
)
from tests.postgres import PgServer
from tests.test_journal import TARGET, TDG, UUID4, outcome, req

pytestmark = pytest.mark.anyio

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What names a fresh, empty journal of this backend (what ``--journal`` takes): an SQLite file,
    or a fresh schema on the throwaway PostgreSQL server (``tests/postgres.py``)."""
    if request.param == "postgresql":
        server: PgServer = request.getfixturevalue("postgres")
        return server.fresh_url()
    assert request.param == "sqlite"
    return str(tmp_path / "journal.db")


@asynccontextmanager
async def opened(spec: str) -> AsyncIterator[Journal]:
    with anyio.CancelScope(shield=True):  # an open journal must reach the ``finally`` that closes it
        journal = await anyio.to_thread.run_sync(open_journal, spec)
    try:
        yield journal
    finally:
        await journal.close()


def numbers(work: list[Planned]) -> list[str]:
    return [p.request.phone_number for p in work]


def finish(journal: Journal, planned: Planned, status: Status, **fields: Any) -> None:
    journal.record_outcome(outcome(planned.request, planned.client_token, status, **{"attempts": 1, **fields}))


# -- runs and planning ----------------------------------------------------------------------------------


async def test_tokens_are_durable_when_plan_returns_and_come_back_marked_maybe_sent(spec: str) -> None:
    async with opened(spec) as journal:
        first_run = await journal.begin_run()
        first = await journal.plan([req(i) for i in range(3)], first_run, retry_failed=False)
    assert all(UUID4.fullmatch(p.client_token) for p in first.work)
    assert all((p.status, p.maybe_sent, p.attempts) == (Status.PENDING, False, 0) for p in first.work)
    async with opened(spec) as journal:
        run = await journal.begin_run()
        assert run > first_run
        again = await journal.plan([req(i) for i in range(3)], run, retry_failed=False)
    assert [p.client_token for p in again.work] == [p.client_token for p in first.work]
    assert all(p.maybe_sent for p in again.work)


async def test_duplicates_changed_parameters_and_targets(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        result = await journal.plan([req(0, description="old"), req(1), req(1, source="x:9"), req(1, target=TDG)],
                                    run, retry_failed=False)
        assert numbers(result.work) == [req(0).phone_number, req(1).phone_number, req(1).phone_number]
        assert result.duplicates == [req(1, source="x:9")]
        looked_up = await journal.plan([req(1)], run, retry_failed=False, dedupe=False)
        assert looked_up.duplicates == [] and looked_up.work[0].client_token == result.work[1].client_token
        later = await journal.begin_run()
        changed = await journal.plan([req(0, description="new")], later, retry_failed=False)
        assert changed.changed == [req(0, description="new")] and changed.work == []


async def test_failed_numbers_are_done_unless_retried_and_not_claimed_ones_start_afresh(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        failed, not_claimed = (await journal.plan([req(0), req(1)], run, retry_failed=False)).work
        finish(journal, failed, Status.FAILED, error_code="PhoneNumberClaimFailed")
        finish(journal, not_claimed, Status.FAILED, error_code=NOT_CLAIMED)
        later = await journal.begin_run()
        result = await journal.plan([req(0), req(1)], later, retry_failed=False)
        assert [(o.phone_number, o.status) for o in result.done] == [(req(0).phone_number, Status.FAILED)]
        assert numbers(result.work) == [req(1).phone_number]
        assert result.work[0].client_token != not_claimed.client_token
        retried = await journal.plan([req(0)], await journal.begin_run(), retry_failed=True)
        assert retried.work[0].client_token != failed.client_token and not retried.work[0].maybe_sent


async def test_recorded_outcomes_drive_work_pages_and_run_outcomes(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        work = (await journal.plan([req(i) for i in range(6)], run, retry_failed=False)).work
        finish(journal, work[1], Status.CLAIMED, phone_number_id="id-1")
        finish(journal, work[2], Status.IN_PROGRESS, phone_number_id="id-2")
        finish(journal, work[3], Status.FAILED, error_code="X")
        journal.record_attempt(work[4], "retry", "ThrottlingException")
        await journal.flush()
        page, cursor = await journal.work_page(run, 0, 2)
        rest, end = await journal.work_page(run, cursor, 10)
        assert numbers(page + rest) == numbers([work[0], work[2], work[4], work[5]])
        assert [p.status for p in page + rest] == [Status.PENDING, Status.IN_PROGRESS, Status.PENDING, Status.PENDING]
        assert (page + rest)[1].phone_number_id == "id-2"
        assert await journal.work_page(run, end, 10) == ([], end)
        done, _ = await journal.run_outcomes(run, 0, 10)
        assert [(o.phone_number, o.status) for o in done] == [
            (work[1].request.phone_number, Status.CLAIMED), (work[3].request.phone_number, Status.FAILED)]
        assert await journal.known([req(0).key, req(9).key]) == {req(0).key}


async def test_an_outcome_never_moves_backwards_nor_lands_on_another_token(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        (planned,) = (await journal.plan([req(0)], run, retry_failed=False)).work
        finish(journal, planned, Status.CLAIMED, phone_number_id="id-0")
        finish(journal, planned, Status.PENDING, attempts=3)
        journal.record_outcome(outcome(req(0), "another-token", Status.FAILED))
        await journal.flush()
        done, _ = await journal.run_outcomes(run, 0, 10)
    assert [(o.status, o.phone_number_id) for o in done] == [(Status.CLAIMED, "id-0")]


async def test_targets_to_reconcile_are_those_with_numbers_an_earlier_run_may_have_sent(spec: str) -> None:
    async with opened(spec) as journal:
        first = await journal.begin_run()
        await journal.plan([req(0), req(1, target=TDG)], first, retry_failed=False)
        assert await journal.targets_to_reconcile(first) == []
    async with opened(spec) as journal:
        run = await journal.begin_run()
        await journal.plan([req(0), req(2, target=TDG)], run, retry_failed=False)
        assert await journal.targets_to_reconcile(run) == [TARGET]


async def test_a_plan_is_taken_over_until_another_run_takes_one_of_its_numbers(spec: str) -> None:
    async with opened(spec) as journal:
        first = await journal.begin_run()
        work = (await journal.plan([req(0), req(1)], first, retry_failed=False)).work
        await journal.record_rejected([Rejected("bad", "in.txt:3", "not a number", TARGET)], first)
        await journal.record_plan(first, "fingerprint", duplicates=1)
        finish(journal, work[0], Status.CLAIMED, phone_number_id="id-0")
        second = await journal.begin_run()
        reuse = await journal.reuse_plan("fingerprint", second)
        assert reuse is not None
        assert (reuse.members_run, reuse.statuses, reuse.invalid, reuse.duplicates) == (
            first, {"claimed": 1, "pending": 1}, 1, 1)
        assert await journal.reuse_plan("other", second) is None
        third = await journal.begin_run()
        await journal.plan([req(1)], third, retry_failed=False)  # another input takes req(1) into its run
        assert await journal.reuse_plan("fingerprint", await journal.begin_run()) is None


async def test_numbers_left_unsettled_and_gone_from_the_input_join_the_run(spec: str) -> None:
    async with opened(spec) as journal:
        earlier = await journal.begin_run()
        work = (await journal.plan([req(0), req(1), req(2)], earlier, retry_failed=False)).work
        journal.record_attempt(work[1], "retry", "ServiceUnavailable")
        finish(journal, work[1], Status.PENDING)
        finish(journal, work[2], Status.IN_PROGRESS, phone_number_id="id-2")
    async with opened(spec) as journal:
        run = await journal.begin_run()
        await journal.plan([req(3)], run, retry_failed=False)
        joined = await journal.join_unsettled(run)
        assert joined == [(TARGET.key, req(1).phone_number, "pending"),
                          (TARGET.key, req(2).phone_number, "in_progress")]
        assert await journal.join_unsettled(run) == []
        page, _ = await journal.work_page(run, 0, 10)
        assert [(p.request.phone_number, p.maybe_sent) for p in page] == [
            (req(3).phone_number, False), (req(1).phone_number, True), (req(2).phone_number, True)]


# -- the quota preflight --------------------------------------------------------------------------------


async def test_preflight_counts_and_defers_only_what_was_never_sent(spec: str) -> None:
    async with opened(spec) as journal:
        earlier = await journal.begin_run()
        sent = (await journal.plan([req(4)], earlier, retry_failed=False)).work[0]
        journal.record_attempt(sent, "retry", "InternalServiceError")
        finish(journal, sent, Status.PENDING)
        run = await journal.begin_run()
        await journal.plan([req(i) for i in range(5)], run, retry_failed=False)
        owned = {req(0).phone_number}
        assert await journal.count_to_claim(run, TARGET.key, owned) == 4
        await journal.defer_beyond(run, TARGET.key, owned, 2, ("PhoneNumberQuotaExceeded", "over the quota"))
        await journal.flush()
        left, _ = await journal.work_page(run, 0, 10)
        done, _ = await journal.run_outcomes(run, 0, 10)
    # room 2: the possibly-sent req(4) keeps its place, then req(1) (req(0) is held already)
    assert numbers(left) == [req(0).phone_number, req(1).phone_number, req(4).phone_number]
    assert [(o.phone_number, o.error_code) for o in done] == [
        (req(2).phone_number, "PhoneNumberQuotaExceeded"), (req(3).phone_number, "PhoneNumberQuotaExceeded")]


async def test_churn_counts_each_claim_once_per_token_and_each_release(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        work = (await journal.plan([req(0), req(1), req(2), req(3, target=TDG)], run, retry_failed=False)).work
        for planned in work:
            journal.record_attempt(planned, "accepted", None)
        journal.record_attempt(work[0], "accepted", None)  # the same token, a replay
        journal.record_attempt(work[1], "recovered", None)
        journal.record_attempt(work[2], "retry", "ThrottlingException")
        finish(journal, work[0], Status.CLAIMED, phone_number_id="id-0")
        assert await journal.churn(TARGET.key) == 3
        assert await journal.churn(TARGET.key, now=10.0**12) == 0, "outside the window"
        released = ToRelease(TARGET.key, req(0).phone_number, "id-0")
        await journal.release_token(released)
        await journal.record_release(released, "released", None)
        assert await journal.churn(TARGET.key) == 4
    with read_existing_journal(spec) as reader:
        assert reader.churn(TARGET.key) == 4 and reader.churn(TDG.key) == 1


# -- acquisitions ---------------------------------------------------------------------------------------


async def test_acquisition_slots_move_only_by_compare_and_set(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        slots = await journal.acquisition_slots("a", TARGET.key, '{"count": 2}', 2, create=True)
        assert slots == [(1, None), (2, None)]
        with pytest.raises(ConfigurationError):
            await journal.acquisition_slots("a", TARGET.key, '{"count": 3}', 3, create=False)
        first = await journal.assign_candidate("a", 1, None, req(0, source="acquire:a:slot 1"), run)
        assert first is not None and first.status == Status.PENDING and UUID4.fullmatch(first.client_token)
        # a second worker that also saw the slot empty gets the winner's candidate, not a second number
        late = await journal.assign_candidate("a", 1, None, req(1, source="acquire:a:slot 1"), run)
        assert late is not None and (late.request.phone_number, late.client_token) == (
            req(0).phone_number, first.client_token)
        assert await journal.assign_candidate("a", 2, None, req(0), run) is None, "a number the journal knows"
        finish(journal, first, Status.FAILED, error_code="PhoneNumberClaimFailed")
        moved = await journal.assign_candidate("a", 1, req(0).phone_number, req(2, source="acquire:a:slot 1"), run)
        assert moved is not None and moved.request.phone_number == req(2).phone_number
        outcomes = await journal.slot_outcomes("a")
    assert [(o.phone_number, o.status, o.error_code) for o in outcomes] == [
        (req(2).phone_number, Status.PENDING, None), ("", Status.PENDING, "NotFilled")]
    async with opened(spec) as journal:
        again = await journal.acquisition_slots("a", TARGET.key, '{"count": 2}', 2, create=False)
    assert [(slot, p.client_token if p else None) for slot, p in again] == [(1, moved.client_token), (2, None)]


# -- releases -------------------------------------------------------------------------------------------


async def test_release_tokens_are_durable_and_released_numbers_leave_the_list(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        ours, adopted = (await journal.plan([req(0), req(1)], run, retry_failed=False)).work
        journal.record_attempt(ours, "accepted", None)
        finish(journal, ours, Status.CLAIMED, phone_number_id="id-0")
        finish(journal, adopted, Status.CLAIMED, phone_number_id="id-1")  # held before any request of ours
        await journal.flush()
    with read_existing_journal(spec) as reader:
        found = reader.numbers_to_release()
    assert [(n.phone_number, n.adopted) for n in found] == [(req(0).phone_number, False), (req(1).phone_number, True)]
    async with opened(spec) as journal:
        token = await journal.release_token(found[0])
    async with opened(spec) as journal:
        assert await journal.release_token(found[0]) == token, "a resumed release re-uses its token"
        await journal.record_release(found[0], "released", None)
        await journal.record_release(found[1], "failed", ("AccessDeniedException", "no"))
    with read_existing_journal(spec) as reader:
        assert [n.phone_number for n in reader.numbers_to_release()] == [req(1).phone_number]
        assert reader.run_counts(run) == {"released": 1, "claimed": 1}


# -- reading beside a run -------------------------------------------------------------------------------


async def test_the_reader_sees_what_the_run_recorded_while_it_runs(spec: str) -> None:
    async with opened(spec) as journal:
        run = await journal.begin_run()
        work = (await journal.plan([req(0), req(1, description="d")], run, retry_failed=False)).work
        await journal.record_rejected([Rejected("+1", "in.txt:3", "too short", TARGET)], run)
        finish(journal, work[0], Status.CLAIMED, phone_number_id="id-0")
        await journal.flush()
        with read_existing_journal(spec) as reader:
            status = reader.status()
            assert status.live in (True, None) and status.latest_run == run
            assert status.counts["claimed"] == 1 and status.counts["pending"] == 1 and status.counts["invalid"] == 1
            assert reader.run_counts(run) == {"claimed": 1, "pending": 1, "invalid": 1}
            assert reader.lookup(*req(1).key) == (Status.PENDING, req(1, description="d").params_hash())
            assert reader.lookup(*req(7).key) is None
            rows: list[Outcome] = list(reader.outcomes(run))
            assert [(o.phone_number, o.status) for o in rows] == [
                (req(0).phone_number, Status.CLAIMED), (req(1).phone_number, Status.PENDING), ("+1", Status.INVALID)]
            assert [o.phone_number for o in reader.outcomes(statuses=frozenset({"claimed"}))] == [req(0).phone_number]
    with read_existing_journal(spec) as reader:
        assert reader.status().live is not True


async def test_an_exclusive_journal_runs_one_at_a_time_and_a_missing_journal_is_said(spec: str) -> None:
    """``exclusive`` (SQLite): a second open is refused while the first is open. A shared journal
    (PostgreSQL) lets a second process in, and both work on the one journal."""
    with pytest.raises(JournalError), read_existing_journal(spec):
        pass
    async with opened(spec) as first:
        if first.exclusive:
            with pytest.raises(JournalError):
                await anyio.to_thread.run_sync(open_journal, spec)
        else:
            async with opened(spec) as second:
                run = await second.begin_run()
                (theirs,) = (await second.plan([req(0)], run, retry_failed=False)).work
                mine = await first.plan([req(0)], await first.begin_run(), retry_failed=False)
                assert [p.client_token for p in mine.work] == [theirs.client_token], "one token per number"
    async with opened(spec) as journal:  # free again once closed
        assert await journal.begin_run() == (1 if journal.exclusive else 3)


async def test_a_cancelled_owner_still_closes_the_journal(spec: str) -> None:
    with anyio.CancelScope() as scope:
        async with opened(spec) as journal:
            await journal.plan([req(0)], await journal.begin_run(), retry_failed=False)
            scope.cancel()
            await anyio.sleep_forever()
    async with opened(spec) as journal:  # not left locked, and the token planned before the cancel is there
        result = await journal.plan([req(0)], await journal.begin_run(), retry_failed=False)
    assert [p.maybe_sent for p in result.work] == [True]


# -- contact flows ----------------------------------------------------------------------------------------


async def test_a_numbers_flow_is_planned_finished_and_reported(spec: str) -> None:
    flow_a, flow_b = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
    with_flow = [dataclasses.replace(req(i), contact_flow=flow_a) for i in range(3)]
    async with opened(spec) as journal:
        run = await journal.begin_run()
        work = (await journal.plan([*with_flow, req(3)], run, retry_failed=False)).work
        assert [p.request.contact_flow for p in work] == [flow_a] * 3 + [None]
        page, _ = await journal.work_page(run, 0, 10)
        assert [p.request.contact_flow for p in page] == [flow_a] * 3 + [None], "read back from the journal"
        for planned in work:
            finish(journal, planned, Status.CLAIMED, phone_number_id=f"id-{planned.request.phone_number}")
        pending, _ = await journal.flows_to_finish(run, 0, 10)
        assert [(o.phone_number, o.contact_flow_id, o.flow_status) for o in pending] == [
            (r.phone_number, flow_a, FlowStatus.PENDING) for r in with_flow]
        await journal.record_flow(dataclasses.replace(pending[0], flow_status=FlowStatus.ASSOCIATED), 1, None)
        await journal.record_flow(dataclasses.replace(pending[1], flow_status=FlowStatus.FAILED), 2,
                                  ("ResourceNotFoundException", "no such flow"))
        assert len((await journal.flows_to_finish(run, 0, 10))[0]) == 1
    with read_existing_journal(spec) as reader:
        assert reader.flow_counts(run) == {"associated": 1, "failed": 1, "pending": 1}
        rows = {o.phone_number: o for o in reader.outcomes(run)}
    assert rows[with_flow[1].phone_number].error_code == "ResourceNotFoundException", "the flow's error is shown"
    assert rows[req(3).phone_number].as_row()["flow_status"] is None
    async with opened(spec) as journal:  # the next run: a failed flow stays failed, a changed one is pending again
        run2 = await journal.begin_run()
        plan = await journal.plan([with_flow[0], with_flow[1], dataclasses.replace(req(3), contact_flow=flow_b)],
                                  run2, retry_failed=False)
        assert [(o.flow_status, o.contact_flow_id) for o in plan.done] == [
            (FlowStatus.ASSOCIATED, flow_a), (FlowStatus.FAILED, flow_a), (FlowStatus.PENDING, flow_b)]
        run3 = await journal.begin_run()
        retried = await journal.plan([with_flow[1]], run3, retry_failed=True)
        assert [o.flow_status for o in retried.done] == [FlowStatus.PENDING]
        assert [o.phone_number for o in (await journal.flows_to_finish(run3, 0, 10))[0]] == [with_flow[1].phone_number]
