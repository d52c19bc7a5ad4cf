"""A run's own state (issue 12 case 6)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from bulkclaim import ClaimRequest, Outcome, RunState, Status, Target
from bulkclaim.sandbox import InventorySpec
from bulkclaim.sandbox.inventory import generate
from tests.support import sandbox_env
from tests.test_claimer import claimer

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=20))]


def requests(target: Target, numbers: list[str]) -> list[ClaimRequest]:
    return [ClaimRequest(n, target, source=f"x:{i}") for i, n in enumerate(numbers, start=1)]


async def ignore(_: Outcome) -> None:
    pass


# -- case 6: per-run state ------------------------------------------------------------------------------

async def test_a_stop_requested_before_the_run_starts_sends_nothing(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        state = RunState()
        state.request_stop()  # e.g. SIGINT while the CLI was still reading its inputs
        with anyio.fail_after(10):  # a guard against a hang, not a timing assertion
            summary = await c.engine.run(requests(c.target, NUMBERS), ignore, state=state)
        sent = c.limiters["ClaimPhoneNumber"].sent
    assert summary is state.summary
    assert sent == 0 and env.sandbox.ledger == [], "nothing sent"
    assert not summary.statuses, "no number settled"
    with sqlite3.connect(tmp_path / "j") as conn:
        assert {s for (s,) in conn.execute("SELECT status FROM numbers")} == {"pending"}, "tokens kept for later"


async def test_concurrent_runs_on_one_claimer_keep_their_own_stop_and_counts(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        stopped, going = RunState(), RunState()
        stopped.request_stop()
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: c.engine.run(requests(c.target, NUMBERS[:10]), ignore, state=stopped))
                tg.start_soon(lambda: c.engine.run(requests(c.target, NUMBERS[10:]), ignore, state=going))
    assert sorted(e.phone_number for e in env.sandbox.ledger) == NUMBERS[10:], "the stopped run sent nothing"
    assert stopped.stopping and not going.stopping, "the second run did not clear the first one's stop"
    assert stopped.summary.run != going.summary.run
    assert (stopped.summary.to_send, going.summary.to_send) == (10, 10)
    assert not stopped.summary.statuses and going.summary.statuses == {"claimed": 10}


async def test_claim_many_runs_each_have_their_own_state(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        first, second = RunState(), RunState()
        first.request_stop()
        assert [o async for o in c.claim_many(NUMBERS[:5], state=first)] == []
        claimed = [o async for o in c.claim_many(NUMBERS[5:10], state=second)]
    assert [o.status for o in claimed] == [Status.CLAIMED] * 5
    assert c.last_summary is second.summary and first.summary.statuses == {}
    assert sorted(e.phone_number for e in env.sandbox.ledger) == NUMBERS[5:10]
