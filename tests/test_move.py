"""Moving numbers between instances (``Claimer.move``) against the sandbox, real aiobotocore, both journals."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bulkclaim import Claimer, Options, Outcome, RateSettings, Status
from bulkclaim.journal import open_journal
from bulkclaim.model import FlowStatus, Target
from bulkclaim.move import MoveRow
from bulkclaim.sandbox import FaultConfig, InventorySpec
from bulkclaim.sandbox.inventory import generate
from bulkclaim.sandbox.records import ServiceError
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_claimer import FAST, FAST_BACKOFF, claim_all, claimer

pytestmark = pytest.mark.anyio

DEST = "99999999-8888-7777-6666-555555555555"
SOURCE = Target(instance_id=INSTANCE_ID)
TWO_INSTANCES: dict[str, Any] = {"instance_ids": (INSTANCE_ID, DEST), "claim_delay": 0.02}
NUMBERS = [s.phone_number for s in generate(InventorySpec(count=20))]


async def mover(env: SandboxEnv, journal: Path | str, options: Options = FAST) -> Claimer:
    return Claimer(instance_id=DEST, journal=journal, client_settings=env.settings, rates=RateSettings(1000.0, 50),
                   options=options, backoff=FAST_BACKOFF)


async def move_all(c: Claimer, rows: list[Any]) -> dict[str, Outcome]:
    return {o.phone_number: o async for o in c.move(rows, source=SOURCE)}


async def claimed_on_source(env: SandboxEnv, journal: Path | str, numbers: list[str]) -> dict[str, Outcome]:
    async with claimer(env, journal) as c:
        claimed = await claim_all(c, numbers)
    assert {o.status for o in claimed.values()} == {Status.CLAIMED}
    return claimed


def moves_of(env: SandboxEnv) -> list[tuple[str, str | None]]:
    return [(e.phone_number, e.client_token) for e in env.sandbox.ledger if e.action == "move"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_numbers_move_once_each_by_number_or_id_and_a_rerun_sends_nothing(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    journal: Path | str = tmp_path / "j" if backend == "sqlite" else request.getfixturevalue("postgres").url()
    numbers = NUMBERS[:8]
    async with sandbox_env(**TWO_INSTANCES) as env:
        claimed = await claimed_on_source(env, journal, numbers)
        env.sandbox.set_faults(FaultConfig(lost_response_rate=0.3, error_rate=0.2, seed=3,
                                           operations=frozenset({"UpdatePhoneNumber"})))
        flow, other_flow = env.sandbox.state.flows.flows_of(DEST)[:2]
        rows: list[Any] = [*numbers[:4], *(claimed[n].phone_number_id for n in numbers[4:6]),
                           MoveRow("rows:7", numbers[6], claimed[numbers[6]].phone_number_id, flow.id),
                           MoveRow("rows:8", numbers[7], contact_flow=other_flow.arn), "+12069999999", "not a number",
                           MoveRow("rows:11", numbers[0], contact_flow="no such flow")]
        async with await mover(env, journal) as c:
            outcomes = [o async for o in c.move(rows, source=SOURCE)]
        moved = {o.phone_number: o for o in outcomes if o.source != "rows:11"}
        (bad_flow,) = [o for o in outcomes if o.source == "rows:11"]
        assert bad_flow.status == Status.INVALID and "not a flow id or ARN" in (bad_flow.error_message or "")
        assert {n: moved[n].status for n in numbers} == dict.fromkeys(numbers, Status.CLAIMED)
        assert {n: moved[n].target for n in numbers} == dict.fromkeys(numbers, f"instance/{DEST}")
        assert {n: moved[n].moved_from for n in numbers} == dict.fromkeys(numbers, SOURCE.key)
        assert moved["+12069999999"].status == Status.INVALID  # neither instance holds it: never sent
        assert "not a number" in moved and moved["not a number"].status == Status.INVALID
        # Connect drops the flow association on a move: re-associated on the destination, as asked
        state = env.sandbox.state
        assert [state.flows.associated(str(claimed[n].phone_number_id)) for n in numbers[6:8]] == [flow, other_flow]
        assert {moved[n].flow_status for n in numbers[6:8]} == {FlowStatus.ASSOCIATED}
        assert moved[numbers[5]].flow_status is None
        ledger = moves_of(env)
        assert sorted(n for n, _ in ledger) == sorted(numbers), "each number moved exactly once"
        assert dict(ledger) == {n: moved[n].client_token for n in numbers}, "with its journaled token"
        for number in numbers:  # the id stays; the number is CLAIMED on the destination
            record = env.sandbox.state.holder_of(number)
            assert record is not None and record.instance_id == DEST
            assert record.phone_number_id == claimed[number].phone_number_id == moved[number].phone_number_id
        env.sandbox.set_faults(FaultConfig())
        async with await mover(env, journal) as c:
            again = await move_all(c, numbers)
        assert {n: again[n].status for n in numbers} == dict.fromkeys(numbers, Status.CLAIMED)
        assert len(moves_of(env)) == len(numbers), "a re-run sends nothing"


async def test_a_move_already_sent_by_a_dead_run_is_found_on_the_destination(tmp_path: Path) -> None:
    """A run killed after its request executed (the answer lost) left the number pending with its token:
    the next run finds it on the destination and records it, sending nothing."""
    journal = tmp_path / "j"
    numbers = NUMBERS[:3]
    async with sandbox_env(**TWO_INSTANCES) as env:
        await claimed_on_source(env, journal, numbers)
        env.sandbox.set_faults(FaultConfig(lost_response_rate=1.0, operations=frozenset({"UpdatePhoneNumber"})))
        async with await mover(env, journal) as c:
            first = await move_all(c, numbers)
        assert {first[n].status for n in numbers} == {Status.PENDING}  # every answer lost: unknown
        env.sandbox.set_faults(FaultConfig())
        async with await mover(env, journal) as c:
            second = await move_all(c, numbers)
        assert {second[n].status for n in numbers} == {Status.CLAIMED}
        assert sorted(n for n, _ in moves_of(env)) == sorted(numbers)
        assert {second[n].client_token for n in numbers} == {first[n].client_token for n in numbers}
        with sqlite3.connect(journal) as conn:  # moves do not count toward the destination's churn
            assert conn.execute("SELECT count(*) FROM numbers WHERE move_from=?",
                                (SOURCE.key,)).fetchone()[0] == len(numbers)
        reader = await _churn(journal, f"instance/{DEST}")
        assert reader == 0


async def _churn(journal: Path, target: str) -> int:
    opened = open_journal(journal)
    try:
        return await opened.churn(target)
    finally:
        await opened.close()


async def test_a_number_moved_outside_bulkclaim_is_adopted_and_a_full_destination_stops_the_run(
        tmp_path: Path) -> None:
    numbers = NUMBERS[:4]
    async with sandbox_env(**TWO_INSTANCES) as env:
        claimed = await claimed_on_source(env, tmp_path / "claims", numbers)
        async with env.client() as client:  # moved by hand before bulkclaim's run
            await client.update_phone_number(PhoneNumberId=str(claimed[numbers[0]].phone_number_id), InstanceId=DEST)
        async with await mover(env, tmp_path / "j") as c:
            moved = await move_all(c, numbers[:2])
        assert {moved[n].status for n in numbers[:2]} == {Status.CLAIMED}
        assert len(moves_of(env)) == 2  # the hand-made move and ours
        env.sandbox.configure(phone_number_quota=2)
        with pytest.raises(Exception, match="reached its phone-number quota"):
            async with await mover(env, tmp_path / "j") as c:
                await move_all(c, numbers[2:])


async def test_a_move_that_never_executed_is_not_counted_moved_and_is_sent_again_with_its_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DescribePhoneNumber of a number whose UpdatePhoneNumber never executed shows it CLAIMED, on the
    source. A move journaled in_progress is asked about before it is verified, and verification asks
    for the destination: a number still on the source is sent again with its same token, and never
    counted moved."""
    journal = tmp_path / "j"
    numbers = NUMBERS[:3]
    async with sandbox_env(**TWO_INSTANCES) as env:
        claimed = await claimed_on_source(env, tmp_path / "claims", numbers)
        by_id = {o.phone_number_id: o.phone_number_arn for o in claimed.values()}
        # the sandbox answers every UpdatePhoneNumber 500 before it executes: nothing moves
        env.sandbox.set_faults(FaultConfig(error_rate=1.0, operations=frozenset({"UpdatePhoneNumber"})))
        async with await mover(env, journal) as c:
            first = await move_all(c, numbers)
        assert {first[n].status for n in numbers} == {Status.PENDING}
        # As a run that took a 200 for them and was killed leaves them: in_progress, never executed.
        with sqlite3.connect(journal) as conn:
            conn.execute("UPDATE numbers SET status='in_progress' WHERE move_from IS NOT NULL")
        env.sandbox.set_faults(FaultConfig())
        state = env.sandbox.state
        sent: list[str] = []

        def dropped(reference: str, body: dict[str, Any]) -> dict[str, Any]:  # accepted, lost before execution
            sent.append(body["ClientToken"])
            return {"PhoneNumberId": reference, "PhoneNumberArn": by_id[reference]}

        monkeypatch.setattr(state, "update", dropped)
        quick = Options(verify_first_poll=0.01, verify_timeout=0.3)
        async with await mover(env, journal, quick) as c:
            resumed = await move_all(c, numbers)
        assert sorted(sent) == sorted(str(first[n].client_token) for n in numbers), "sent again, the same tokens"
        assert {resumed[n].status for n in numbers} == {Status.IN_PROGRESS}, "still on the source: not moved"
        assert {resumed[n].error_code for n in numbers} == {"NotOnTarget"}
        assert f"instance/{INSTANCE_ID}" in str(resumed[numbers[0]].error_message)
        assert moves_of(env) == []
        monkeypatch.undo()
        async with await mover(env, journal) as c:
            last = await move_all(c, numbers)
        assert {last[n].status for n in numbers} == {Status.CLAIMED}
        assert dict(moves_of(env)) == {n: first[n].client_token for n in numbers}, "once each, the same token"
        assert {str(getattr(state.holder_of(n), "instance_id", "")) for n in numbers} == {DEST}


async def test_already_on_the_destination_is_told_by_describe_not_by_the_error_wording(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A move refused with InvalidParameterException in words bulkclaim does not know is asked about
    with DescribePhoneNumber: on the destination, it is adopted; a refusal of a number still on the
    source fails the move (never counted moved)."""
    numbers = NUMBERS[:2]
    async with sandbox_env(**TWO_INSTANCES) as env:
        claimed = await claimed_on_source(env, tmp_path / "claims", numbers)
        async with env.client() as client:  # moved by hand before bulkclaim's run
            await client.update_phone_number(PhoneNumberId=str(claimed[numbers[0]].phone_number_id), InstanceId=DEST)
        state = env.sandbox.state
        update = state.update

        def reworded(reference: str, body: dict[str, Any]) -> dict[str, Any]:
            if reference == claimed[numbers[1]].phone_number_id:
                raise ServiceError("InvalidParameterException", 400, "The request is not valid.")
            try:
                return update(reference, body)
            except ServiceError as refused:
                raise ServiceError(refused.code, refused.status, "The request is not valid.") from refused

        monkeypatch.setattr(state, "update", reworded)
        async with await mover(env, tmp_path / "j") as c:
            moved = await move_all(c, numbers)
        assert moved[numbers[0]].status == Status.CLAIMED
        assert moved[numbers[1]].status == Status.FAILED
        assert moved[numbers[1]].error_code == "InvalidParameterException"
        assert len(moves_of(env)) == 1  # the hand-made move only


async def test_rows_may_name_their_own_destination(tmp_path: Path) -> None:
    """MoveRow.destination: one run spreads numbers over two instances (the Claimer's target for the rest),
    each row's flow associated on its own destination; a number sent to two destinations is invalid."""
    third = "77777777-6666-5555-4444-333333333333"
    numbers = NUMBERS[:3]
    async with sandbox_env(instance_ids=(INSTANCE_ID, DEST, third), claim_delay=0.02) as env:
        claimed = await claimed_on_source(env, tmp_path / "claims", numbers)
        source_flow = env.sandbox.state.flows.flows_of(INSTANCE_ID)[1]  # as export of the source writes it
        other = Target(instance_id=f"arn:aws:connect:us-east-1:123456789012:instance/{third}")
        rows: list[Any] = [MoveRow("rows:1", numbers[0], contact_flow=source_flow.id, destination=other),
                           MoveRow("rows:2", numbers[1]),
                           MoveRow("rows:3", numbers[2], destination=Target(instance_id=third)),
                           MoveRow("rows:4", numbers[2])]
        async with await mover(env, tmp_path / "j") as c:
            outcomes = {o.source: o async for o in c.move(rows, source=SOURCE)}
        assert {s: (o.status, o.target) for s, o in outcomes.items()} == {
            "rows:1": (Status.CLAIMED, f"instance/{third}"), "rows:2": (Status.CLAIMED, f"instance/{DEST}"),
            "rows:3": (Status.CLAIMED, f"instance/{third}"), "rows:4": (Status.INVALID, f"instance/{DEST}")}
        assert "one destination per number" in str(outcomes["rows:4"].error_message)
        same_name = next(f for f in env.sandbox.state.flows.flows_of(third) if f.name == source_flow.name)
        assert env.sandbox.state.flows.associated(str(claimed[numbers[0]].phone_number_id)) == same_name
        assert sorted(n for n, _ in moves_of(env)) == sorted(numbers)
