"""``bulkclaim move`` through the real entry point, against the sandbox: report, exit codes, dry run,
status and report on a move journal, and usage errors without a traceback."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bulkclaim.sandbox import API_NAMES, InventorySpec, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_cli import no_traceback, run_cli, write_numbers
from tests.test_cli_flows import write_csv

pytestmark = pytest.mark.anyio

DEST = "99999999-8888-7777-6666-555555555555"
NUMBERS = [s.phone_number for s in generate(InventorySpec(count=12))]


@pytest.fixture
async def env() -> AsyncIterator[SandboxEnv]:
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0, instance_ids=(INSTANCE_ID, DEST)) as running:
        yield running


def move_args(tmp_path: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["move", *map(str, inputs), "--instance-id", INSTANCE_ID, "--to-instance-id", DEST, "--journal",
            str(tmp_path / "move.journal"), "--rate", "200", "--burst", "20", "--verify-timeout", "5",
            "--log-format", "json", *extra]


async def claim_on_source(env: SandboxEnv, tmp_path: Path, numbers: list[str]) -> dict[str, str]:
    result = await run_cli(env, tmp_path, "claim", str(write_numbers(tmp_path / "claim.txt", numbers)),
                           "--instance-id", INSTANCE_ID, "--journal", str(tmp_path / "claim.journal"),
                           "--report", str(tmp_path / "claimed.jsonl"), "--rate", "200", "--burst", "20")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "claimed.jsonl").read_text().splitlines()]
    return {row["phone_number"]: row["phone_number_id"] for row in rows}


async def test_move_dry_run_then_move_then_rerun(env: SandboxEnv, tmp_path: Path) -> None:
    ids = await claim_on_source(env, tmp_path, NUMBERS[:6])
    flow = env.sandbox.state.flows.flows_of(DEST)[0]
    (tmp_path / "move.csv").write_text(
        "phone_number,phone_number_id,contact_flow\n"
        + f"{NUMBERS[0]},,{flow.name}\n"  # by name: --resolve-flow-names, a flow of the destination
        + "".join(f"{n},,\n" for n in NUMBERS[1:3])
        + "".join(f",{ids[n]},\n" for n in NUMBERS[3:6])
        + f"{NUMBERS[7]},,\n", encoding="utf-8")  # never claimed: invalid
    inputs = tmp_path / "move.csv"

    dry = await run_cli(env, tmp_path, *move_args(tmp_path, inputs, extra=("--dry-run", "--resolve-flow-names")))
    assert dry.returncode == 1, dry.stderr  # one invalid row
    assert "would move:        6" in dry.stdout and "invalid:           1" in dry.stdout
    # a move's plan and preflight speak of moves (the journal's churn is claims + releases: moves do not count)
    assert "this run would move: 6" in dry.stdout and "(adopted, not moved again)" in dry.stdout
    assert "moves do not count" in dry.stdout and "CLAIMED on the destination" in dry.stdout
    assert "claim" not in dry.stdout.replace("claims + releases", "")
    assert not [e for e in env.sandbox.ledger if e.action == "move"], "a dry run sends nothing"

    report = tmp_path / "moved.csv"
    result = await run_cli(env, tmp_path, *move_args(tmp_path, inputs, extra=("--report", str(report),
                                                                              "--resolve-flow-names")))
    no_traceback(result)
    assert result.returncode == 1, result.stderr  # finished, one invalid
    assert "claimed 6" in result.stdout and "invalid 1" in result.stdout and "flows: associated 1" in result.stdout
    assert env.sandbox.state.flows.associated(ids[NUMBERS[0]]) == flow, "re-associated on the destination"
    moves = [e for e in env.sandbox.ledger if e.action == "move"]
    assert sorted(e.phone_number for e in moves) == sorted(NUMBERS[:6])
    lines = report.read_text().splitlines()
    assert len(lines) == 1 + 7
    assert all(f"instance/{DEST}" in line for line in lines[1:])
    table = list(csv.DictReader(lines))
    assert list(table[0])[-1] == "moved_from"  # DESIGN §4: the last field
    assert {r["moved_from"] for r in table if r["status"] == "claimed"} == {f"instance/{INSTANCE_ID}"}

    result = await run_cli(env, tmp_path, *move_args(tmp_path, write_numbers(tmp_path / "again.txt", NUMBERS[:6])))
    assert result.returncode == 0, result.stderr
    assert len([e for e in env.sandbox.ledger if e.action == "move"]) == 6, "nothing moved twice"

    status = await run_cli(env, tmp_path, "status", "--journal", str(tmp_path / "move.journal"), "--json")
    assert json.loads(status.stdout)["counts"]["claimed"] == 6
    rows = await run_cli(env, tmp_path, "report", "--journal", str(tmp_path / "move.journal"))
    assert {json.loads(line)["status"] for line in rows.stdout.splitlines()} == {"claimed"}  # latest run: none invalid
    assert {json.loads(line)["moved_from"] for line in rows.stdout.splitlines()} == {f"instance/{INSTANCE_ID}"}


@pytest.mark.parametrize(("extra", "message"), [
    ((), "n.txt:1: no destination: give to_instance_id or to_target_arn on every row, or --to-instance-id"),
    (("--to-instance-id", DEST, "--to-target-arn", "arn:x"), "give at most one of --to-instance-id or --to-target-arn"),
    (("--to-instance-id", INSTANCE_ID), "the source and the destination are the same"),
])
async def test_move_usage_errors(env: SandboxEnv, tmp_path: Path, extra: tuple[str, ...], message: str) -> None:
    inputs = write_numbers(tmp_path / "n.txt", NUMBERS[:1])
    result = await run_cli(env, tmp_path, "move", str(inputs), "--instance-id", INSTANCE_ID, *extra)
    no_traceback(result)
    assert result.returncode == 2 and message in result.stderr


async def test_an_unknown_destination_stops_before_anything_is_sent(env: SandboxEnv, tmp_path: Path) -> None:
    await claim_on_source(env, tmp_path, NUMBERS[:1])
    inputs = write_numbers(tmp_path / "n.txt", NUMBERS[:1])
    result = await run_cli(env, tmp_path, "move", str(inputs), "--instance-id", INSTANCE_ID, "--to-instance-id",
                           "00000000-0000-0000-0000-000000000000", "--journal", str(tmp_path / "j"))
    no_traceback(result)
    assert result.returncode == 3, result.stderr
    assert not [e for e in env.sandbox.ledger if e.action == "move"]


async def test_export_move_export_round_trip(env: SandboxEnv, tmp_path: Path) -> None:
    """Issue 16: export a source, move what it holds with that file, export the destination: the same
    rows (number, id, description, tags), each flow now the destination's flow of the same name."""
    source_flows = env.sandbox.state.flows.flows_of(INSTANCE_ID)
    rows = [(NUMBERS[i], source_flows[i % 3].id if i % 4 else "") for i in range(8)]
    claimed = await run_cli(env, tmp_path, "claim", str(write_csv(tmp_path / "in.csv", rows)), "--instance-id",
                            INSTANCE_ID, "--journal", str(tmp_path / "claim.journal"), "--rate", "200", "--burst", "20")
    assert claimed.returncode == 0, claimed.stderr
    record = env.sandbox.state.holder_of(NUMBERS[1])
    assert record is not None
    record.description, record.tags = "front desk", {"team": "ops"}
    first = await run_cli(env, tmp_path, "export", "--instance-id", INSTANCE_ID, "--output", "first.csv")
    assert first.returncode == 0, first.stderr
    moved = await run_cli(env, tmp_path, *move_args(tmp_path, tmp_path / "first.csv"))
    no_traceback(moved)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert "claimed 8" in moved.stdout and "flows: associated 6" in moved.stdout
    second = await run_cli(env, tmp_path, "export", "--instance-id", DEST, "--output", "second.csv")
    assert second.returncode == 0, second.stderr
    empty = await run_cli(env, tmp_path, "export", "--instance-id", INSTANCE_ID, "--output", "empty.csv")
    assert "exported 0 number(s)" in empty.stdout
    name = {flow.id: flow.name for i in (INSTANCE_ID, DEST) for flow in env.sandbox.state.flows.flows_of(i)}

    def table(path: Path) -> list[dict[str, str]]:
        with path.open() as handle:
            return [{**row, "contact_flow": name.get(row["contact_flow"], "")} for row in csv.DictReader(handle)]

    before, after = table(tmp_path / "first.csv"), table(tmp_path / "second.csv")
    assert len(before) == 8 and after == before
    dest_ids = {flow.id for flow in env.sandbox.state.flows.flows_of(DEST)}
    with (tmp_path / "second.csv").open() as handle:
        assert {row["contact_flow"] for row in csv.DictReader(handle)} <= dest_ids | {""}


async def test_a_move_still_on_the_source_is_never_reported_moved(env: SandboxEnv, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI side of test_move's never-executed moves: a 200 whose UpdatePhoneNumber never executed
    leaves the number CLAIMED on the source; it is reported in_progress (NotOnTarget), exit 1, and the
    next run sends the same token again, which moves it."""
    await claim_on_source(env, tmp_path, NUMBERS[:2])
    inputs = write_numbers(tmp_path / "n.txt", NUMBERS[:2])
    report = tmp_path / "moved.jsonl"
    sent: list[str] = []

    def dropped(reference: str, body: dict[str, Any]) -> dict[str, Any]:  # accepted, lost before execution
        sent.append(body["ClientToken"])
        return {"PhoneNumberId": reference, "PhoneNumberArn": f"arn:aws:connect:us-east-1:123456789012:{reference}"}

    monkeypatch.setattr(env.sandbox.state, "update", dropped)
    args = move_args(tmp_path, inputs, extra=("--report", str(report), "--verify-timeout", "0.3"))
    first = await run_cli(env, tmp_path, *args)
    no_traceback(first)
    assert first.returncode == 1, first.stderr[-2000:]
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert {(row["status"], row["error_code"]) for row in rows} == {("in_progress", "NotOnTarget")}
    assert all(f"instance/{INSTANCE_ID}" in row["error_message"] for row in rows)
    tokens = {row["phone_number"]: row["client_token"] for row in rows}
    assert sorted(sent) == sorted(tokens.values())
    monkeypatch.undo()
    last = await run_cli(env, tmp_path, *args)
    assert last.returncode == 0, last.stderr[-2000:]
    assert {e.phone_number: e.client_token for e in env.sandbox.ledger if e.action == "move"} == tokens


async def test_a_move_beyond_the_destination_quota_is_refused_in_words_of_a_move(env: SandboxEnv,
                                                                                 tmp_path: Path) -> None:
    await claim_on_source(env, tmp_path, NUMBERS[:3])
    env.sandbox.configure(phone_number_quota=2)
    inputs = write_numbers(tmp_path / "n.txt", NUMBERS[:3])
    for extra in (("--dry-run",), ()):
        result = await run_cli(env, tmp_path, *move_args(tmp_path, inputs, extra=extra))
        no_traceback(result)
        assert result.returncode == 3, result.stderr[-2000:]
        said = result.stdout + result.stderr
        assert "the run would move 3 more" in said and "move fewer numbers" in said
        assert "--allow-partial to move the first 2" in said and "would claim" not in said
    assert not [e for e in env.sandbox.ledger if e.action == "move"]


async def test_per_row_destinations_spread_one_input_over_several_instances(tmp_path: Path) -> None:
    """Issue 16: a per-row destination (to_instance_id / to_target_arn) beside the option's, for the rows
    without one; the dry run plans each destination; a row without one and no option is a usage error."""
    third = "77777777-6666-5555-4444-333333333333"
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0, instance_ids=(INSTANCE_ID, DEST, third)) as env:
        await claim_on_source(env, tmp_path, NUMBERS[:5])
        tdg_less = tmp_path / "spread.csv"
        tdg_less.write_text("phone_number,to_instance_id\n" + f"{NUMBERS[0]},{third}\n{NUMBERS[1]},{third}\n"
                            + f"{NUMBERS[2]},\n{NUMBERS[3]},{DEST}\n", encoding="utf-8")
        dry = await run_cli(env, tmp_path, *move_args(tmp_path, tdg_less, extra=("--dry-run",)))
        no_traceback(dry)
        assert dry.returncode == 0, dry.stderr[-2000:]
        plans = dry.stdout.split("dry run (nothing sent)")[1:]
        assert [(p.split("destination:")[1].split()[0], p.split("would move:")[1].split()[0]) for p in plans] == [
            (f"instance/{DEST}", "2"), (f"instance/{third}", "2")]
        assert "this run would move: 2" in plans[1]
        report = tmp_path / "spread.jsonl"
        moved = await run_cli(env, tmp_path, *move_args(tmp_path, tdg_less, extra=("--report", str(report))))
        assert moved.returncode == 0, moved.stderr[-2000:]
        rows = {r["phone_number"]: r for r in map(json.loads, report.read_text().splitlines())}
        assert {n: (rows[n]["status"], rows[n]["target"]) for n in NUMBERS[:4]} == {
            NUMBERS[0]: ("claimed", f"instance/{third}"), NUMBERS[1]: ("claimed", f"instance/{third}"),
            NUMBERS[2]: ("claimed", f"instance/{DEST}"), NUMBERS[3]: ("claimed", f"instance/{DEST}")}
        holders = {n: getattr(env.sandbox.state.holder_of(n), "instance_id", None) for n in NUMBERS[:4]}
        assert holders == {NUMBERS[0]: third, NUMBERS[1]: third, NUMBERS[2]: DEST, NUMBERS[3]: DEST}

        mixed = tmp_path / "mixed.csv"
        mixed.write_text(f"phone_number,to_instance_id,to_target_arn\n{NUMBERS[4]},{third},\n{NUMBERS[4]},,\n"
                         + f"{NUMBERS[0]},{third},arn:aws:connect:us-east-1:123456789012:instance/{DEST}\n",
                         encoding="utf-8")
        without = [a for a in move_args(tmp_path, mixed) if a not in ("--to-instance-id", DEST)]
        refused = await run_cli(env, tmp_path, *without)
        no_traceback(refused)
        assert refused.returncode == 2 and f"{mixed}:3: no destination" in refused.stderr, refused.stderr
        report = tmp_path / "mixed.jsonl"
        both = await run_cli(env, tmp_path, *move_args(tmp_path, mixed, extra=("--journal", str(tmp_path / "m.j"),
                                                                              "--report", str(report))))
        assert both.returncode == 1, both.stderr[-2000:]
        rows = {r["source"].rsplit(":", 1)[1]: r for r in map(json.loads, report.read_text().splitlines())}
        assert (rows["2"]["status"], rows["2"]["target"]) == ("claimed", f"instance/{third}")
        assert rows["3"]["status"] == "invalid" and "one destination per number" in rows["3"]["error_message"]
        assert rows["4"]["status"] == "invalid" and "not both" in rows["4"]["error_message"]
        assert len([e for e in env.sandbox.ledger if e.action == "move"]) == 5
