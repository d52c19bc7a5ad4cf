"""Issue 16's acceptance: claims with contact flows, kill -9 at random moments, faults on.

The real CLI is SIGKILLed at random and run again until it finishes (``tests/test_crash.py``'s trial),
with 3% of answers lost after the operation took effect and 3% of requests answered 500, on claims,
describes and associations. Then: every number claimed once, every number of ours associated with
its row's flow, and the sandbox, the journal and the report agree. ``make test`` runs two trials of
60 numbers; ``pytest -m slow tests/test_crash_flows.py`` runs ten of 300 and prints the tally.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from functools import partial
from pathlib import Path

import pytest

from bulkclaim.sandbox import FaultConfig, InventorySpec
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, SandboxEnv
from tests.test_crash import Tally, check_trial, run_trial

pytestmark = pytest.mark.anyio

POOL = [s.phone_number for s in generate(InventorySpec(count=310))]
FOREIGN = POOL[-2:]
FAULTS = FaultConfig(lost_response_rate=0.03, error_rate=0.03, operations=frozenset(
    {"ClaimPhoneNumber", "DescribePhoneNumber", "AssociatePhoneNumberContactFlow"}))


def flow_of_rows(env: SandboxEnv, numbers: list[str]) -> dict[str, str]:
    """Each number's flow: the instance's flows in turn."""
    flows = env.sandbox.state.flows.flows_of(INSTANCE_ID)
    return {number: flows[i % len(flows)].id for i, number in enumerate(numbers)}


def write_flows(numbers: list[str], tmp_path: Path, env: SandboxEnv) -> str:
    with (tmp_path / "numbers.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phone_number", "contact_flow"])
        writer.writerows(flow_of_rows(env, numbers).items())
    return "numbers.csv"


def check_flows(numbers: list[str], seed: int, env: SandboxEnv, tmp_path: Path, tally: Tally) -> None:
    check_trial(seed, env, tmp_path, tally, numbers=numbers, foreign=FOREIGN)
    wanted = flow_of_rows(env, numbers)
    report = {r["phone_number"]: r for r in map(json.loads, (tmp_path / "report.jsonl").read_text().splitlines())}
    with sqlite3.connect(tmp_path / "j.journal") as conn:
        journal = {n: (s, f, fs) for n, s, f, fs in conn.execute(
            "SELECT phone_number, status, contact_flow, flow_status FROM numbers")}
    wrong = []
    for number in numbers:
        record = env.sandbox.state.holder_of(number)
        if number in FOREIGN:
            if report[number]["flow_status"] != "pending":  # never ours: nothing to associate
                wrong.append(f"{number}: foreign, report {report[number]}")
            continue
        flow = None if record is None else env.sandbox.state.flows.associated(record.phone_number_id)
        row = report.get(number, {})
        if (flow is None or flow.id != wanted[number] or (row.get("contact_flow_id"), row.get("flow_status"))
                != (wanted[number], "associated") or journal.get(number) != ("claimed", wanted[number], "associated")):
            wrong.append(f"{number}: sandbox {flow and flow.id}, wanted {wanted[number]}, report "
                         f"{row.get('flow_status')}, journal {journal.get(number)}")
    if wrong:
        tally.problems.append(f"seed {seed}: flows {wrong[:5]} ({len(wrong)} in all)")


async def trials(tmp_path: Path, seeds: range, size: int) -> Tally:
    numbers = [*POOL[:size], *FOREIGN]
    tally = Tally()
    for seed in seeds:
        trial_dir = tmp_path / f"trial{seed}"
        trial_dir.mkdir()
        await run_trial(seed, trial_dir, tally, faults=FAULTS, write_input=partial(write_flows, numbers),
                        check=partial(check_flows, numbers), foreign=tuple(FOREIGN))
    print(tally.line())
    return tally


async def test_sigkill_with_flows_claims_once_and_associates_every_number(tmp_path: Path) -> None:
    tally = await trials(tmp_path, range(300, 302), 60)
    assert not tally.problems, tally.problems


@pytest.mark.slow
async def test_sigkill_with_flows_long_variant(tmp_path: Path) -> None:
    tally = await trials(tmp_path, range(310, 320), 300)
    assert tally.trials == 10 and tally.kills >= 10
    assert not tally.problems, tally.problems
