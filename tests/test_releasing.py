"""Issue 14 gap 4 on bulkclaim's side: a released number shows IN_PROGRESS (and, with the sandbox's
defaults, is still listed) for a while. A later run must not take it for a claim of ours: ``claim`` with
the same input neither re-sends nor adopts it, and ``release`` does not release it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bulkclaim.sandbox import InventorySpec
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, sandbox_env
from tests.test_cli import claim_args, run_cli, write_numbers

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=3))]


async def test_numbers_being_released_are_not_ours_on_a_later_run(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0, release_delay=600.0, list_releasing=True) as env:
        numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS)
        args = [*claim_args(numbers), "--journal", "j.journal", "--report", "report.jsonl"]
        assert (await run_cli(env, tmp_path, *args)).returncode == 0
        released = await run_cli(env, tmp_path, "release", "--journal", "j.journal", "--yes", "--log-format", "json")
        assert released.returncode == 0 and "released 3 of 3" in released.stdout, released.stderr[-2000:]
        async with env.client() as client:  # still being released: IN_PROGRESS, and listed
            listed = (await client.list_phone_numbers_v2(InstanceId=INSTANCE_ID))["ListPhoneNumbersSummaryList"]
            assert sorted(n["PhoneNumber"] for n in listed) == sorted(NUMBERS)
            described = await client.describe_phone_number(PhoneNumberId=listed[0]["PhoneNumberId"])
            assert described["ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]["Status"] == "IN_PROGRESS"
        again = await run_cli(env, tmp_path, *args)
        assert "Traceback" not in again.stderr
        rows = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
        assert {r["phone_number"]: r["status"] for r in rows} == dict.fromkeys(NUMBERS, "released")
        once = await run_cli(env, tmp_path, "release", "--journal", "j.journal", "--yes")
        assert once.returncode == 0 and "nothing to release" in once.stdout
        assert [e.action for e in env.sandbox.ledger] == ["claim"] * 3 + ["release"] * 3
