"""``bulkclaim export`` through the real entry point: what a target holds, as a valid claim input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bulkclaim.inputs import read_inputs
from bulkclaim.model import ClaimRequest, Target
from tests.support import INSTANCE_ID, SandboxEnv
from tests.test_cli import NUMBERS, claim_args, env, run_cli
from tests.test_cli_flows import write_csv

pytestmark = pytest.mark.anyio
_FIXTURES = (env,)  # test_cli's sandbox, which the tests below take by name


async def test_export_writes_what_the_target_holds_as_a_claim_input(env: SandboxEnv, tmp_path: Path) -> None:
    flows = env.sandbox.state.flows.flows_of(INSTANCE_ID)
    rows = [(NUMBERS[i], flows[i % 2].id if i % 3 else "") for i in range(6)]
    claimed = await run_cli(env, tmp_path, *claim_args(write_csv(tmp_path / "in.csv", rows)))
    assert claimed.returncode == 0, claimed.stderr
    record = env.sandbox.state.holder_of(NUMBERS[0])
    assert record is not None
    record.description, record.tags = "front desk", {"team": "ops", "site": "SEA"}
    for output in ("inventory.csv", "inventory.jsonl"):
        result = await run_cli(env, tmp_path, "export", "--instance-id", INSTANCE_ID, "--output", output)
        assert result.returncode == 0, result.stderr
        assert "exported 6 number(s)" in result.stdout and "4 with a contact flow" in result.stdout
    with (tmp_path / "inventory.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["phone_number"] for r in table] == NUMBERS[:6]
    assert {r["phone_number"]: r["contact_flow"] for r in table} == dict(rows)
    assert table[0]["description"] == "front desk" and json.loads(table[0]["tags"]) == {"team": "ops", "site": "SEA"}
    lines = [json.loads(line) for line in (tmp_path / "inventory.jsonl").read_text().splitlines()]
    assert lines[0]["tags"] == {"team": "ops", "site": "SEA"} and "contact_flow" not in lines[0]
    ids = {n: env.sandbox.state.holder_of(n).phone_number_id for n in NUMBERS[:6]}  # type: ignore[union-attr]
    assert {line["phone_number"]: line["phone_number_id"] for line in lines} == ids
    for path in (tmp_path / "inventory.csv", tmp_path / "inventory.jsonl"):  # a valid claim input, row by row
        requests = list(read_inputs([path], target=Target(instance_id=INSTANCE_ID)))
        assert all(isinstance(r, ClaimRequest) for r in requests)
        assert {r.phone_number: r.contact_flow or "" for r in requests if isinstance(r, ClaimRequest)} == dict(rows)
    again = await run_cli(env, tmp_path, *claim_args(tmp_path / "inventory.csv"), "--journal", "other.journal")
    assert again.returncode == 0, again.stderr  # already ours, flows associated again (harmlessly)
    assert sum(1 for e in env.sandbox.ledger if e.action == "claim") == 6


async def test_export_refuses_a_bad_output_before_any_request(env: SandboxEnv, tmp_path: Path) -> None:
    result = await run_cli(env, tmp_path, "export", "--instance-id", INSTANCE_ID, "--output", "x.txt")
    assert result.returncode == 2 and "x.txt" in result.stderr
    unknown = await run_cli(env, tmp_path, "export", "--instance-id", "00000000-0000-0000-0000-000000000000",
                            "--output", "x.csv")
    assert unknown.returncode == 3 and "ResourceNotFoundException" in unknown.stderr
    assert not (tmp_path / "x.csv").exists()
