"""``bulkclaim claim`` with contact flows, through the real entry point against the sandbox."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bulkclaim.sandbox.flows import flow_name
from tests.support import INSTANCE_ID, SandboxEnv
from tests.test_cli import NUMBERS, claim_args, env, no_traceback, run_cli

pytestmark = pytest.mark.anyio
_FIXTURES = (env,)  # test_cli's sandbox, which the tests below take by name

UNKNOWN_FLOW = "0000aaaa-0000-4000-8000-000000000000"


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phone_number", "contact_flow"])
        writer.writerows(rows)
    return path


def associations(env: SandboxEnv) -> dict[str, str]:
    state = env.sandbox.state
    found = {}
    for entry in env.sandbox.ledger:
        record = state.holder_of(entry.phone_number)
        flow = None if record is None else state.flows.associated(record.phone_number_id)
        if flow is not None:
            found[entry.phone_number] = flow.id
    return found


async def test_flows_by_id_arn_and_name_are_associated_and_reported(env: SandboxEnv, tmp_path: Path) -> None:
    flows = env.sandbox.state.flows.flows_of(INSTANCE_ID)
    rows = [(NUMBERS[0], flows[0].id), (NUMBERS[1], flows[1].arn), (NUMBERS[2], flow_name(3)), (NUMBERS[3], "")]
    inputs = write_csv(tmp_path / "in.csv", rows)
    result = await run_cli(env, tmp_path, *claim_args(inputs), "--resolve-flow-names", "--report", "out.jsonl")
    assert result.returncode == 0, result.stderr
    assert "flows: associated 3" in result.stdout
    report = {r["phone_number"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    expected = {NUMBERS[0]: flows[0].id, NUMBERS[1]: flows[1].id, NUMBERS[2]: flows[2].id}
    assert {n: (r["contact_flow_id"], r["flow_status"]) for n, r in report.items()} == {
        **{n: (flow, "associated") for n, flow in expected.items()}, NUMBERS[3]: (None, None)}
    assert associations(env) == expected
    assert env.sandbox.stats()["ListContactFlows"] == {"ok": 1}, "names resolved once per run"
    journal = f"bulkclaim-{INSTANCE_ID}.journal"
    status = await run_cli(env, tmp_path, "status", "--journal", journal, "--json")
    assert json.loads(status.stdout)["flows"] == {"associated": 3}
    human = await run_cli(env, tmp_path, "status", "--journal", journal)
    assert "flows        associated 3" in human.stdout


async def test_an_unknown_flow_name_stops_the_run_before_anything_is_sent(env: SandboxEnv, tmp_path: Path) -> None:
    inputs = write_csv(tmp_path / "in.csv", [(NUMBERS[0], flow_name(1)), (NUMBERS[1], "No such flow")])
    result = await run_cli(env, tmp_path, *claim_args(inputs), "--resolve-flow-names")
    assert result.returncode == 2, result.stderr
    assert "in.csv:3: contact flow 'No such flow' not found" in result.stderr
    no_traceback(result)
    assert env.sandbox.ledger == []
    without = await run_cli(env, tmp_path, *claim_args(inputs), "--report", "out.csv")
    assert without.returncode == 1, "without --resolve-flow-names a name is an invalid row"
    with (tmp_path / "out.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert {r["status"] for r in table} == {"invalid"} and "--resolve-flow-names" in table[0]["error_message"]


async def test_a_failed_association_leaves_the_claim_and_exits_1(env: SandboxEnv, tmp_path: Path) -> None:
    inputs = write_csv(tmp_path / "in.csv", [(NUMBERS[0], UNKNOWN_FLOW)])
    result = await run_cli(env, tmp_path, *claim_args(inputs), "--report", "out.csv")
    assert result.returncode == 1, result.stderr
    with (tmp_path / "out.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["status"], row["flow_status"], row["error_code"]) == ("claimed", "failed",
                                                                        "ResourceNotFoundException")
    env.sandbox.state.flows.add(INSTANCE_ID, UNKNOWN_FLOW, "Published since")
    again = await run_cli(env, tmp_path, *claim_args(inputs), "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert associations(env) == {NUMBERS[0]: UNKNOWN_FLOW}
    assert [e.action for e in env.sandbox.ledger] == ["claim", "associate"], "claimed once, associated once"


async def test_a_flow_renamed_between_runs_is_planned_again(env: SandboxEnv, tmp_path: Path) -> None:
    inputs = write_csv(tmp_path / "in.csv", [(NUMBERS[0], "Main inbound")])
    first_flow = env.sandbox.state.flows.add(INSTANCE_ID, "aaaaaaaa-1111-4111-8111-111111111111", "Main inbound")
    first = await run_cli(env, tmp_path, *claim_args(inputs), "--resolve-flow-names")
    assert first.returncode == 0, first.stderr
    env.sandbox.state.flows.add(INSTANCE_ID, first_flow.id, "Old inbound")  # renamed in the console
    second_flow = env.sandbox.state.flows.add(INSTANCE_ID, "bbbbbbbb-2222-4222-8222-222222222222", "Main inbound")
    again = await run_cli(env, tmp_path, *claim_args(inputs), "--resolve-flow-names")
    assert again.returncode == 0, again.stderr
    assert associations(env) == {NUMBERS[0]: second_flow.id}, "the same file, the flow its name names now"
