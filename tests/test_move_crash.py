"""kill -9 at any moment during ``bulkclaim move`` (issue 16's acceptance), on test_crash.py's harness.

Numbers claimed on one instance are moved to another by the real CLI, SIGKILLed at random moments and
re-run until it finishes, with lost answers and 500s on UpdatePhoneNumber, DescribePhoneNumber and
AssociatePhoneNumberContactFlow. After every trial: each UpdatePhoneNumber executed once (the
sandbox's ledger), with the one token the journal holds for the number (every attempt used it),
every number CLAIMED on the destination with its id and associated there with its row's flow
(Connect drops the association on a move), and the report says so. CI runs a short version;
``pytest -m slow`` the 100-number, 10-trial one.
"""

from __future__ import annotations

import json
import random
import sqlite3
from functools import partial
from pathlib import Path

import pytest

from bulkclaim.sandbox import API_NAMES, FaultConfig, InventorySpec, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_crash import Tally, kill_then_finish, run_trials

pytestmark = pytest.mark.anyio

DEST = "99999999-8888-7777-6666-555555555555"
DEST_ARN = f"arn:aws:connect:us-east-1:123456789012:instance/{DEST}"
POOL = [s.phone_number for s in generate(InventorySpec(count=100))]
FAULTS = FaultConfig(lost_response_rate=0.03, error_rate=0.03,
                     operations=frozenset({"UpdatePhoneNumber", "DescribePhoneNumber",
                                           "AssociatePhoneNumberContactFlow"}))


def move_args(trial: Path) -> list[str]:
    return ["move", str(trial / "numbers.csv"), "--instance-id", INSTANCE_ID, "--to-instance-id", DEST,
            "--journal", str(trial / "j.journal"), "--report", str(trial / "report.jsonl"), "--rate", "100",
            "--burst", "10", "--read-timeout", "0.3", "--verify-timeout", "5", "--grace-period", "0",
            "--log-format", "json"]


def claim_on_source(env: SandboxEnv, numbers: list[str]) -> dict[str, str]:
    """The numbers claimed (and settled) on the source instance, straight in the sandbox's state."""
    env.sandbox.configure(claim_delay=0.0)
    ids = {n: env.sandbox.state.claim({"PhoneNumber": n, "InstanceId": INSTANCE_ID})["PhoneNumberId"]
           for n in numbers}
    env.sandbox.configure(claim_delay=0.05)
    return ids


async def move_trial(seed: int, trial: Path, tally: Tally, *, numbers: list[str]) -> None:
    rng = random.Random(seed)
    throttle = {api: ThrottleConfig(rate=100.0, burst=10) for api in API_NAMES}
    async with sandbox_env(faults=FaultConfig(**{**FAULTS.__dict__, "seed": seed}), throttle=throttle,
                           instance_ids=(INSTANCE_ID, DEST)) as env:
        ids = claim_on_source(env, numbers)
        dest_flows = env.sandbox.state.flows.flows_of(DEST)
        flows = {n: dest_flows[i % len(dest_flows)].id for i, n in enumerate(numbers)}  # each row's flow
        (trial / "numbers.csv").write_text("phone_number,contact_flow\n" + "".join(
            f"{n},{flows[n]}\n" for n in numbers), encoding="utf-8")
        code = await kill_then_finish(env, trial, move_args(trial), rng, tally, seed)
        problems = check_moves(env, trial, numbers, ids, tally)
        associated = {n: getattr(env.sandbox.state.flows.associated(ids[n]), "id", None) for n in numbers}
        if wrong_flow := [n for n in numbers if associated[n] != flows[n]]:
            problems.append(f"not associated with its row's flow on the destination: {wrong_flow}")
        if code != 0:
            problems.append(f"exit {code}")
        if problems:
            tally.problems.append(f"seed {seed}: {problems}")
    tally.trials += 1


def check_moves(env: SandboxEnv, trial: Path, numbers: list[str], ids: dict[str, str], tally: Tally) -> list[str]:
    problems: list[str] = []
    moves = [e for e in env.sandbox.ledger if e.action == "move"]
    moved = [e.phone_number for e in moves]
    if doubles := sorted({n for n in moved if moved.count(n) > 1}):
        tally.double_executions += len(doubles)
        problems.append(f"moved twice: {doubles}")
    with sqlite3.connect(trial / "j.journal") as conn:
        journaled = dict(conn.execute("SELECT phone_number, client_token FROM numbers"))
        tokens_used = dict(conn.execute("SELECT phone_number, count(DISTINCT client_token) FROM attempts "
                                        "GROUP BY phone_number"))
    if wrong := [e.phone_number for e in moves if journaled.get(e.phone_number) != e.client_token]:
        problems.append(f"executed with a token the journal does not hold: {wrong}")
    if several := [n for n, count in tokens_used.items() if count != 1]:
        problems.append(f"more than one token sent: {several}")
    rows = {r["phone_number"]: r for r in map(json.loads, (trial / "report.jsonl").read_text().splitlines())}
    for number in numbers:
        holder = env.sandbox.state.holder_of(number)
        if holder is None or holder.target_arn != DEST_ARN or holder.phone_number_id != ids[number]:
            problems.append(f"{number} not on the destination: {holder}")
        elif moved.count(number) != 1:
            problems.append(f"{number} on the destination after {moved.count(number)} moves")
        row = rows.get(number, {})
        if (row.get("status"), row.get("phone_number_id"), row.get("flow_status")) != (
                "claimed", ids[number], "associated"):
            problems.append(f"{number} report row {row}")
    return problems


async def test_sigkill_during_a_move_moves_each_number_once_with_one_token(tmp_path: Path) -> None:
    await run_trials(tmp_path, range(2), partial(move_trial, numbers=POOL[:30]))


@pytest.mark.slow
async def test_sigkill_during_a_move_of_100_numbers_long_variant(tmp_path: Path) -> None:
    await run_trials(tmp_path, range(300, 310), partial(move_trial, numbers=POOL))
