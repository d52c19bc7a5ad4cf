"""Issue 14 gaps 1 and 2, end to end: Connect accepts a claim beyond the target's phone-number quota and
settles it FAILED ("... has reached its limit of total claimed numbers"); bulkclaim sends no further
claim after the first such one (each may count toward the churn rule) and exits 3 naming the quota;
the FAILED number stays reserved for us, so after the quota is raised ``--retry-failed`` finishes.

The bound on claims sent after the first limit FAILED: claims are spaced by the claim bucket (1/s on
the command line, 2/s in the library test) and the FAILED is seen by one DescribePhoneNumber on
loopback (0.5 s after the answer on the command line, at once in the library test). So no further
claim's turn comes before the stop, and one or two can if a loaded machine stalls the verify by a
slot or two (CI saw both): the tests allow two, and no more.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bulkclaim import Claimer, Options, QuotaReachedError, RateSettings
from bulkclaim.sandbox import InventorySpec
from bulkclaim.sandbox.inventory import generate
from bulkclaim.sandbox.state import LIMIT_REACHED, LedgerEntry
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_cli import run_cli, write_numbers

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=8))]
TARGET = f"arn:aws:connect:us-east-1:123456789012:instance/{INSTANCE_ID}"
QUOTA = 3


def claims(env: SandboxEnv) -> list[LedgerEntry]:
    return [e for e in env.sandbox.ledger if e.action == "claim"]


def sent_after_first_limit_failure(env: SandboxEnv) -> list[LedgerEntry]:
    executed = claims(env)
    first = next(i for i, e in enumerate(executed) if e.message == LIMIT_REACHED.format(target_arn=TARGET))
    return executed[first + 1:]


async def test_cli_stops_at_the_first_claim_failed_for_the_limit_then_retry_failed_finishes(tmp_path: Path) -> None:
    # No Service Quotas access: the preflight cannot know the quota, as for a principal without
    # servicequotas:GetServiceQuota; the service's own answer is what stops the run.
    async with sandbox_env(phone_number_quota=QUOTA, claim_delay=0.0, service_quotas_access=False) as env:
        # Eight numbers: the quota's 3, the FAILED 4th, at most 2 late (asserted below) leave 2 never sent.
        numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS)
        args = ["claim", str(numbers), "--instance-id", INSTANCE_ID, "--rate", "1", "--burst", "1",
                "--verify-timeout", "5", "--log-format", "json", "--report", str(tmp_path / "report.jsonl"),
                "--journal", str(tmp_path / "j.journal")]
        stopped = await run_cli(env, tmp_path, *args)
        assert stopped.returncode == 3, stopped.stderr[-2000:]
        assert "L-8F812903" in stopped.stderr and "limit of total claimed numbers" in stopped.stderr
        assert "Traceback" not in stopped.stderr
        assert [e.outcome for e in claims(env)][:QUOTA + 1] == ["CLAIMED"] * QUOTA + ["FAILED"]
        late = sent_after_first_limit_failure(env)
        assert len(late) <= 2, late  # see the module docstring (2: a loaded machine can delay the verify by a slot)
        with sqlite3.connect(tmp_path / "j.journal") as conn:
            statuses = dict(conn.execute("SELECT phone_number, status FROM numbers").fetchall())
        unsent = [n for n in NUMBERS if env.sandbox.state.executions(n) == 0]
        assert len(unsent) >= 1 and all(statuses[n] == "pending" for n in unsent)
        assert statuses[NUMBERS[QUOTA]] == "failed"

        env.sandbox.configure(phone_number_quota=10)  # the quota raised
        finished = await run_cli(env, tmp_path, *args, "--retry-failed")
        assert finished.returncode == 0, finished.stderr[-2000:]
        rows = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
        assert {r["phone_number"]: r["status"] for r in rows} == dict.fromkeys(NUMBERS, "claimed")
        for number in NUMBERS:  # the failed ones reclaimed (reserved for us), the others claimed once
            holder = env.sandbox.state.holder_of(number)
            assert holder is not None and holder.target_arn == TARGET
            assert holder.status(env.sandbox.clock()) == "CLAIMED"
            assert [e.outcome for e in claims(env) if e.phone_number == number][-1] == "CLAIMED"
            assert sum(e.outcome == "CLAIMED" for e in claims(env) if e.phone_number == number) == 1


async def drain(claimer: Claimer) -> None:
    async for _ in claimer.claim_many(NUMBERS):
        pass


async def test_library_run_raises_quota_reached_and_sends_nothing_more(tmp_path: Path) -> None:
    async with sandbox_env(phone_number_quota=QUOTA, claim_delay=0.0) as env:
        rates = RateSettings(2.0, 1, per_api={"DescribePhoneNumber": (100.0, 10)})
        async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j", client_settings=env.settings,
                           rates=rates, options=Options(verify_first_poll=0.0, verify_timeout=5.0)) as claimer:
            with pytest.raises(QuotaReachedError) as caught:
                await drain(claimer)
            assert "L-8F812903" in str(caught.value) and caught.value.target.endswith(INSTANCE_ID)
            assert len(sent_after_first_limit_failure(env)) <= 2  # see line 59
            assert len(claims(env)) < len(NUMBERS)
            # claim() is a run of its own (the Claimer's life): its first FAILED for the limit stops it too,
            # and every later claim() raises without sending.
            for number in NUMBERS[-2:]:
                with pytest.raises(QuotaReachedError):
                    await claimer.claim(number)
            assert [env.sandbox.state.executions(n) for n in NUMBERS[-2:]] == [1, 0]
