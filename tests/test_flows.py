"""Flows after claims through the library: claim_many / claim with contact flows, against the sandbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bulkclaim import ClaimRequest, Options, Status
from bulkclaim.model import FlowStatus, Target
from bulkclaim.sandbox import FaultConfig, SandboxConfig
from bulkclaim.sandbox.flows import flow_name
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_claimer import FAST_BACKOFF, NUMBERS, claimer

pytestmark = pytest.mark.anyio

TARGET = Target(instance_id=INSTANCE_ID)
UNKNOWN_FLOW = "0000aaaa-0000-4000-8000-000000000000"


def flows(env: SandboxEnv) -> list[str]:
    return [flow.id for flow in env.sandbox.state.flows.flows_of(INSTANCE_ID)]


def associated(env: SandboxEnv) -> dict[str, str]:
    """number -> flow id, as the sandbox holds it now."""
    state = env.sandbox.state
    found = {}
    for number in NUMBERS:
        record = state.holder_of(number)
        flow = None if record is None else state.flows.associated(record.phone_number_id)
        if flow is not None:
            found[number] = flow.id
    return found


def journal_flows(path: Path) -> dict[str, tuple[str, str | None, str | None]]:
    with sqlite3.connect(path) as conn:
        return {n: (s, f, fs) for n, s, f, fs in conn.execute(
            "SELECT phone_number, status, contact_flow, flow_status FROM numbers")}


def requests(numbers: list[str], flow_of: dict[str, str]) -> list[ClaimRequest]:
    return [ClaimRequest(n, TARGET, source=f"test:{i}", contact_flow=flow_of.get(n)) for i, n in enumerate(numbers)]


async def test_claimed_numbers_are_associated_with_their_rows_flows(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.01) as env, claimer(env, tmp_path / "j") as c:
        ids = flows(env)
        flow_of = {n: ids[i % len(ids)] for i, n in enumerate(NUMBERS[:12]) if i % 4}  # every 4th: no flow
        outcomes = {o.phone_number: o async for o in c.claim_many(requests(NUMBERS[:12], flow_of))}
        summary = c.last_summary
    assert {o.status for o in outcomes.values()} == {Status.CLAIMED}
    assert {n: o.flow_status for n, o in outcomes.items()} == {
        n: FlowStatus.ASSOCIATED if n in flow_of else None for n in NUMBERS[:12]}
    assert associated(env) == flow_of
    assert summary is not None and summary.flows == {"associated": len(flow_of)}
    assert journal_flows(tmp_path / "j") == {
        n: ("claimed", flow_of.get(n), "associated" if n in flow_of else None) for n in NUMBERS[:12]}
    executed = [e for e in env.sandbox.ledger if e.action == "associate"]
    assert sorted((e.phone_number, e.contact_flow_id) for e in executed) == sorted(flow_of.items())


async def test_a_failed_association_does_not_fail_the_claim_and_retry_failed_retries_it(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.01) as env:
        async with claimer(env, tmp_path / "j") as c:
            outcome = await c.claim(NUMBERS[0], contact_flow=UNKNOWN_FLOW)
        assert (outcome.status, outcome.flow_status) == (Status.CLAIMED, FlowStatus.FAILED)
        assert outcome.error_code == "ResourceNotFoundException"
        env.sandbox.state.flows.add(INSTANCE_ID, UNKNOWN_FLOW, "Published since")
        async with claimer(env, tmp_path / "j") as c:
            again = [o async for o in c.claim_many(requests(NUMBERS[:1], {NUMBERS[0]: UNKNOWN_FLOW}))]
        assert again[0].flow_status == FlowStatus.FAILED, "without --retry-failed a failed association stays"
        async with claimer(env, tmp_path / "j", options=Options(verify_first_poll=0.01, retry_failed=True)) as c:
            retried = [o async for o in c.claim_many(requests(NUMBERS[:1], {NUMBERS[0]: UNKNOWN_FLOW}))]
            summary = c.last_summary
        assert retried[0].status == Status.CLAIMED and summary is not None
        assert summary.flows == {"associated": 1}, "finished after planning reported it pending"
    assert associated(env) == {NUMBERS[0]: UNKNOWN_FLOW}
    assert journal_flows(tmp_path / "j")[NUMBERS[0]] == ("claimed", UNKNOWN_FLOW, "associated")
    assert env.sandbox.state.executions(NUMBERS[0]) == 1, "the claim was not made again"


async def test_associations_left_pending_are_finished_by_the_next_run(tmp_path: Path) -> None:
    numbers = NUMBERS[:6]
    async with sandbox_env(claim_delay=0.01) as env:
        flow_of = dict.fromkeys(numbers, flows(env)[1])
        env.sandbox.set_faults(FaultConfig(error_rate=1.0, operations=frozenset({"AssociatePhoneNumberContactFlow"})))
        async with claimer(env, tmp_path / "j") as c:
            first = {o.phone_number: o async for o in c.claim_many(requests(numbers, flow_of))}
        assert {(o.status, o.flow_status) for o in first.values()} == {(Status.CLAIMED, FlowStatus.PENDING)}
        assert associated(env) == {}
        env.sandbox.set_faults(FaultConfig())
        async with claimer(env, tmp_path / "j") as c:  # the same input again: a resumed run
            [o async for o in c.claim_many(requests(numbers, flow_of))]
            summary = c.last_summary
        assert summary is not None and summary.flows == {"associated": 6}
        # a changed flow in the input is associated again; the claim is not touched
        changed = dict.fromkeys(numbers[:2], flows(env)[2])
        async with claimer(env, tmp_path / "j") as c:
            [o async for o in c.claim_many(requests(numbers[:2], changed))]
    assert associated(env) == {**flow_of, **changed}
    assert all(env.sandbox.state.executions(n) == 1 for n in numbers)


async def test_flow_names_and_arns_name_flows_of_the_target_only(tmp_path: Path) -> None:
    other = "99999999-8888-7777-6666-555555555555"
    config = SandboxConfig(instance_ids=(INSTANCE_ID, other))
    async with sandbox_env(config, claim_delay=0.01) as env, claimer(env, tmp_path / "j") as c:
        own = env.sandbox.state.flows.flows_of(INSTANCE_ID)[0]
        foreign = env.sandbox.state.flows.flows_of(other)[0]
        outcome = await c.claim(NUMBERS[0], contact_flow=own.arn)
        assert (outcome.contact_flow_id, outcome.flow_status) == (own.id, FlowStatus.ASSOCIATED)
        with pytest.raises(ValueError, match="flow of instance"):
            await c.claim(NUMBERS[1], contact_flow=foreign.arn)
        with pytest.raises(ValueError, match="not a flow id or ARN"):
            await c.claim(NUMBERS[1], contact_flow=flow_name(1))
    assert env.sandbox.state.executions(NUMBERS[1]) == 0
    assert FAST_BACKOFF.max_attempts > 1


def test_rate_auto_gives_associations_their_own_quota() -> None:
    from bulkclaim.cli_common import rate_settings
    from bulkclaim.quotas import Quotas

    opts = {"rate": "auto", "burst": 5, "max_in_flight": None, "no_adaptive": False}
    rates = rate_settings(opts, Quotas(claim_rate=3.0, flow_rate=7.0, move_rate=4.0))
    assert (rates.rate, rates.per_api["AssociatePhoneNumberContactFlow"]) == (3.0, (7.0, 5))
    assert rates.per_api["UpdatePhoneNumber"] == (4.0, 5), "moves: L-B7E1268D"
    assert rate_settings(opts, Quotas()).per_api["AssociatePhoneNumberContactFlow"] == (2.0, 5), "Connect's default"
    assert rate_settings({**opts, "rate": 9.0}, Quotas(flow_rate=7.0)).per_api == {}, "--rate N: every API"
