"""The engine through the library API, against the sandbox over loopback with real aiobotocore."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from bulkclaim import (
    Backoff,
    BulkclaimError,
    Claimer,
    ClaimRequest,
    FatalServiceError,
    Options,
    Outcome,
    ParametersChangedError,
    RateSettings,
    RunState,
    Status,
)
from bulkclaim.inputs import read_inputs
from bulkclaim.journal import SqliteJournal, read_existing_journal
from bulkclaim.model import Target
from bulkclaim.sandbox import API_NAMES, Credentials, FaultConfig, InventorySpec, SandboxConfig, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, FakeClock, SandboxEnv, sandbox_env

pytestmark = pytest.mark.anyio

FAST_BACKOFF = Backoff(base=0.01, floor=0.001, cap=0.05, max_attempts=8)
FAST = Options(verify_first_poll=0.01, verify_timeout=5.0)
NUMBERS = [s.phone_number for s in generate(InventorySpec(count=60))]


@asynccontextmanager
async def claimer(env: SandboxEnv, journal: Path | str, *, rate: float = 1000.0, burst: int = 50,
                  options: Options = FAST, backoff: Backoff = FAST_BACKOFF, **kwargs: Any) -> AsyncIterator[Claimer]:
    async with Claimer(instance_id=INSTANCE_ID, journal=journal, client_settings=env.settings,
                       rates=RateSettings(rate, burst), options=options, backoff=backoff, **kwargs) as c:
        yield c


async def claim_all(c: Claimer, rows: list[str]) -> dict[str, Outcome]:
    return {o.phone_number: o async for o in c.claim_many(rows)}


def journal_rows(path: Path) -> dict[str, tuple[str, str]]:
    """number -> (status, client_token), read with a separate connection."""
    with sqlite3.connect(path) as conn:
        return {n: (s, t) for n, s, t in conn.execute("SELECT phone_number, status, client_token FROM numbers")}


def assert_exactly_once(env: SandboxEnv, numbers: list[str]) -> None:
    for number in numbers:
        assert env.sandbox.state.executions(number) == 1, number


async def test_happy_path_matched_rate_one_attempt_each(tmp_path: Path) -> None:
    numbers = NUMBERS[:25]
    throttle = {api: ThrottleConfig(rate=10.0, burst=5) for api in API_NAMES}
    async with sandbox_env(throttle=throttle, claim_delay=0.05) as env, \
            claimer(env, tmp_path / "j", rate=10.0, burst=5) as c:
        outcomes = await claim_all(c, numbers)
        limiter = c.limiters["ClaimPhoneNumber"]
    assert {o.status for o in outcomes.values()} == {Status.CLAIMED}
    assert [o.attempts for o in outcomes.values()] == [1] * 25
    assert_exactly_once(env, numbers)
    assert len(env.sandbox.ledger) == 25
    assert (limiter.sent, limiter.throttled) == (25, 0)
    assert "ThrottlingException" not in env.sandbox.stats()["ClaimPhoneNumber"]
    ids = {o.phone_number: o.phone_number_id for o in outcomes.values()}
    assert ids == {e.phone_number: e.phone_number_id for e in env.sandbox.ledger}


async def test_lost_responses_and_500s_still_claim_each_number_once(tmp_path: Path) -> None:
    numbers = NUMBERS[:40]
    faults = FaultConfig(error_rate=0.15, lost_response_rate=0.15, seed=11)
    async with sandbox_env(faults=faults, claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        outcomes = await claim_all(c, numbers)
    stats = env.sandbox.stats()["ClaimPhoneNumber"]
    assert stats["lost"] > 0 and stats["InternalServiceException"] > 0
    assert {o.status for o in outcomes.values()} == {Status.CLAIMED}
    assert_exactly_once(env, numbers)
    ids = {e.phone_number: e.phone_number_id for e in env.sandbox.ledger}
    assert {n: o.phone_number_id for n, o in outcomes.items()} == ids


async def test_cancelled_run_resumes_with_the_same_tokens_and_no_second_execution(tmp_path: Path) -> None:
    numbers = NUMBERS[:40]
    journal = tmp_path / "j"
    throttle = {api: ThrottleConfig(rate=40.0, burst=5) for api in API_NAMES}
    async with sandbox_env(throttle=throttle, claim_delay=0.0) as env:
        first: list[Outcome] = []
        async with claimer(env, journal, rate=40.0, burst=5) as c:
            with anyio.CancelScope() as scope:
                async for outcome in c.claim_many(numbers):
                    first.append(outcome)
                    if len(first) == 10:
                        scope.cancel()
        reserved = journal_rows(journal)
        pending_tokens = {n: token for n, (status, token) in reserved.items() if status == "pending"}
        assert len(reserved) == 40, "every token was reserved before the first claim was sent"
        assert len(pending_tokens) >= 20
        async with claimer(env, journal, rate=40.0, burst=5) as c:
            second = await claim_all(c, numbers)
    assert {o.status for o in second.values()} == {Status.CLAIMED}
    assert_exactly_once(env, numbers)
    sent_tokens = {e.phone_number: e.client_token for e in env.sandbox.ledger}
    for number, token in pending_tokens.items():
        assert sent_tokens[number] == token
        assert second[number].client_token == token


async def test_forgotten_tokens_are_reconciled_as_our_own_claims_not_adopted(tmp_path: Path) -> None:
    numbers = NUMBERS[:12]
    journal = tmp_path / "j"
    lost_everything = FaultConfig(lost_response_rate=1.0, operations=frozenset({"ClaimPhoneNumber"}))
    async with sandbox_env(faults=lost_everything, token_lifetime=0.0, claim_delay=0.0) as env:
        async with claimer(env, journal, backoff=Backoff(max_attempts=1)) as c:
            first = await claim_all(c, numbers)
        assert {o.status for o in first.values()} == {Status.PENDING}, "unknown is not failed"
        assert_exactly_once(env, numbers)
        env.sandbox.set_faults(FaultConfig())
        claims_before = sum(env.sandbox.stats()["ClaimPhoneNumber"].values())
        async with claimer(env, journal) as c:
            second = await claim_all(c, numbers)
            summary = c.last_summary
    assert {o.status for o in second.values()} == {Status.CLAIMED}
    assert sum(env.sandbox.stats()["ClaimPhoneNumber"].values()) == claims_before, "found, not re-sent"
    assert_exactly_once(env, numbers)
    ids = {e.phone_number: e.phone_number_id for e in env.sandbox.ledger}
    assert {n: o.phone_number_id for n, o in second.items()} == ids
    # Our tokens were sent, so the numbers the target holds are our claims (answers lost), not adopted:
    # release gives them back and the churn count includes them.
    with read_existing_journal(journal) as reader:
        to_release = reader.numbers_to_release()
        assert reader.churn(to_release[0].target) == 12
    assert sorted((n.phone_number, n.adopted) for n in to_release) == [(n, False) for n in sorted(numbers)]
    assert summary is not None and (summary.adopted, summary.recovered) == (0, 12)


async def test_not_available_after_a_lost_answer_is_checked_and_found_ours(tmp_path: Path) -> None:
    # The first answer is lost and the token forgotten at once: the retry hears "not available".
    lost = FaultConfig(lost_response_rate=1.0, operations=frozenset({"ClaimPhoneNumber"}))
    async with sandbox_env(faults=lost, token_lifetime=0.0, claim_delay=0.0) as env, \
            claimer(env, tmp_path / "j") as c:
        async def heal_after_first_loss() -> None:
            while not env.sandbox.ledger:  # noqa: ASYNC110 - the sandbox has no event to wait on
                await anyio.sleep(0.001)
            env.sandbox.set_faults(FaultConfig())

        async with anyio.create_task_group() as tg:
            tg.start_soon(heal_after_first_loss)
            outcome = await c.claim(NUMBERS[0])
    assert outcome.status == Status.CLAIMED
    assert outcome.phone_number_id == env.sandbox.ledger[0].phone_number_id
    assert env.sandbox.stats()["ClaimPhoneNumber"].get("InvalidParameterException") == 1
    assert_exactly_once(env, NUMBERS[:1])
    with read_existing_journal(tmp_path / "j") as reader:  # our lost claim, not a number the target held before
        assert [n.adopted for n in reader.numbers_to_release()] == [False]


async def _plan_token(journal: Path, number: str) -> str:
    """Reserve ``number``'s token in the journal without sending anything (as a killed run leaves it)."""
    store = await anyio.to_thread.run_sync(SqliteJournal.open, journal)
    try:
        request = ClaimRequest(number, Target(instance_id=INSTANCE_ID), source="test")
        planned = await store.plan([request], await store.begin_run(), retry_failed=False)
        return planned.work[0].client_token
    finally:
        await store.close()


async def test_idempotency_conflict_is_checked_for_ownership_like_not_available(tmp_path: Path) -> None:
    # Our token reached the service earlier with other parameters (another description): the 409 says
    # the token was used before, so the number may be ours. It is: adopted, not failed.
    journal = tmp_path / "j"
    token = await _plan_token(journal, NUMBERS[0])
    async with sandbox_env(claim_delay=0.0) as env:
        async with env.client() as client:
            await client.claim_phone_number(PhoneNumber=NUMBERS[0], InstanceId=INSTANCE_ID, ClientToken=token,
                                            PhoneNumberDescription="an earlier attempt")
        async with claimer(env, journal) as c:
            outcome = await c.claim(NUMBERS[0])
    assert env.sandbox.stats()["ClaimPhoneNumber"].get("IdempotencyException") == 1
    assert outcome.status == Status.CLAIMED, outcome
    assert outcome.phone_number_id == env.sandbox.ledger[0].phone_number_id
    assert_exactly_once(env, NUMBERS[:1])


async def test_idempotency_conflict_on_a_number_not_ours_fails_after_the_check(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    token = await _plan_token(journal, NUMBERS[0])
    async with sandbox_env(claim_delay=0.0) as env:
        async with env.client() as client:  # the token was spent on another number
            await client.claim_phone_number(PhoneNumber=NUMBERS[1], InstanceId=INSTANCE_ID, ClientToken=token)
        async with claimer(env, journal) as c:
            outcome = await c.claim(NUMBERS[0])
    assert (outcome.status, outcome.error_code) == (Status.FAILED, "IdempotencyException")
    assert env.sandbox.stats()["ListPhoneNumbersV2"].get("ok") == 1  # asked before failing
    assert env.sandbox.state.executions(NUMBERS[0]) == 0


async def test_number_held_by_someone_else_fails_with_the_service_error(tmp_path: Path) -> None:
    async with sandbox_env(foreign_claims=(NUMBERS[0],), claim_delay=0.0) as env, \
            claimer(env, tmp_path / "j") as c:
        outcomes = await claim_all(c, NUMBERS[:3])
    failed = outcomes[NUMBERS[0]]
    assert failed.status == Status.FAILED
    assert failed.error_code == "InvalidParameterException"
    assert failed.error_message == f"Phone number not available: {NUMBERS[0]}"
    assert outcomes[NUMBERS[1]].status == Status.CLAIMED


async def test_access_denied_aborts_within_ten_requests_with_the_journal_intact(tmp_path: Path) -> None:
    denied = Credentials("AKIADENIEDPRINCIPAL1", "denied-secret", denied=True)
    journal = tmp_path / "j"
    async with sandbox_env(credentials=(*SandboxConfig().credentials, denied)) as env:
        settings = env.settings
        bad = type(settings)(**{**settings.__dict__, "aws_access_key_id": denied.access_key_id,
                                "aws_secret_access_key": denied.secret_access_key})
        async with Claimer(instance_id=INSTANCE_ID, journal=journal, client_settings=bad,
                           rates=RateSettings(1000.0, 50), options=FAST, backoff=FAST_BACKOFF) as c:
            with pytest.raises(FatalServiceError, match="AccessDeniedException"):
                await claim_all(c, NUMBERS)
        requests = sum(env.sandbox.stats()["ClaimPhoneNumber"].values())
        assert requests <= 10
        rows = journal_rows(journal)
        assert len(rows) == len(NUMBERS) and {s for s, _ in rows.values()} == {"pending"}
        async with claimer(env, journal) as c:  # corrected credentials: the same run continues
            outcomes = await claim_all(c, NUMBERS[:5])
    assert {o.status for o in outcomes.values()} == {Status.CLAIMED}
    assert all(outcomes[n].client_token == rows[n][1] for n in NUMBERS[:5])


async def test_unknown_instance_is_fatal(tmp_path: Path) -> None:
    async with sandbox_env() as env:
        async with Claimer(instance_id="00000000-0000-0000-0000-000000000000", journal=tmp_path / "j",
                           client_settings=env.settings, options=FAST, backoff=FAST_BACKOFF) as c:
            with pytest.raises(FatalServiceError, match="ResourceNotFoundException"):
                await claim_all(c, NUMBERS[:20])
        assert sum(env.sandbox.stats()["ClaimPhoneNumber"].values()) <= 10


async def test_changed_description_of_a_pending_number_is_refused_before_sending(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    async with sandbox_env(faults=FaultConfig(error_rate=1.0)) as env:
        async with claimer(env, journal, backoff=Backoff(max_attempts=1)) as c:
            await claim_all(c, NUMBERS[:3])  # every claim fails with 500: left pending
        sent = sum(env.sandbox.stats()["ClaimPhoneNumber"].values())
        env.sandbox.set_faults(FaultConfig())
        async with claimer(env, journal) as c:
            with pytest.raises(ParametersChangedError, match=re.escape(NUMBERS[1])):
                await c.claim(NUMBERS[1], description="a different description")
            with pytest.raises(ParametersChangedError, match=re.escape(NUMBERS[2])):
                await _claim_with_description(c)
        assert sum(env.sandbox.stats()["ClaimPhoneNumber"].values()) == sent
        assert env.sandbox.ledger == []


async def _claim_with_description(c: Claimer) -> None:
    rows = [ClaimRequest(NUMBERS[0], c.target, source="x:1"),
            ClaimRequest(NUMBERS[2], c.target, description="changed", source="x:2")]
    async for _ in c.claim_many(rows):
        pass


async def test_concurrent_claims_of_one_number_send_one_request(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        results: list[Outcome] = []

        async def one() -> None:
            results.append(await c.claim(NUMBERS[0]))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
    assert len({(o.status, o.phone_number_id, o.client_token) for o in results}) == 1
    assert env.sandbox.stats()["ClaimPhoneNumber"] == {"ok": 1}


async def test_cancelling_a_caller_leaves_the_claim_consistent(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    slow = FaultConfig(latency=(0.2, 0.2), operations=frozenset({"ClaimPhoneNumber"}))
    async with sandbox_env(faults=slow, claim_delay=0.0) as env, claimer(env, journal) as c:
        with anyio.move_on_after(0.05):
            await c.claim(NUMBERS[0])
        outcome = await c.claim(NUMBERS[0])  # joins the claim still running, or reads its result
    assert outcome.status == Status.CLAIMED
    assert env.sandbox.stats()["ClaimPhoneNumber"] == {"ok": 1}
    assert journal_rows(journal)[NUMBERS[0]][0] == "claimed"


async def test_without_verification_accepted_claims_stay_in_progress(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=10.0) as env, \
            claimer(env, tmp_path / "j", options=Options(verify=False)) as c:
        outcome = await c.claim(NUMBERS[0])
    assert outcome.status == Status.IN_PROGRESS and outcome.phone_number_id
    assert "DescribePhoneNumber" not in env.sandbox.stats()


async def test_verification_reports_failed_claims_and_bounded_waits(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0, claim_failure_rate=1.0) as env, claimer(env, tmp_path / "j") as c:
        failed = await c.claim(NUMBERS[0])
    assert failed.status == Status.FAILED
    assert failed.error_message == SandboxConfig().claim_failure_message
    options = Options(verify_first_poll=0.01, verify_timeout=0.05)
    async with sandbox_env(claim_delay=60.0) as env, claimer(env, tmp_path / "k", options=options) as c:
        waiting = await c.claim(NUMBERS[0])
    assert waiting.status == Status.IN_PROGRESS


async def test_invalid_rows_and_duplicates_are_reported_not_sent(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        outcomes = [o async for o in c.claim_many([NUMBERS[0], "+1 555", NUMBERS[0], "hello"])]
        summary = c.last_summary
    assert sorted(o.status for o in outcomes) == [Status.CLAIMED, Status.INVALID, Status.INVALID]
    assert summary is not None and (summary.duplicates, summary.invalid) == (1, 2)
    assert len(env.sandbox.ledger) == 1


async def test_state_changes_are_logged_with_number_and_token(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        with structlog.testing.capture_logs() as logs:
            outcome = await c.claim(NUMBERS[0])
    events = {e["event"]: e for e in logs}
    assert {"claim.accepted", "claim.claimed"} <= events.keys()
    for name in ("claim.accepted", "claim.claimed"):
        assert events[name]["phone_number"] == NUMBERS[0]
        assert events[name]["client_token"] == outcome.client_token


async def test_claimers_of_one_process_share_one_limiter_per_region_and_api(tmp_path: Path) -> None:
    async with sandbox_env() as env, claimer(env, tmp_path / "a") as first, claimer(env, tmp_path / "b") as second:
        assert first.limiters["ClaimPhoneNumber"] is second.limiters["ClaimPhoneNumber"]
        assert first.limiters["ClaimPhoneNumber"] is not first.limiters["DescribePhoneNumber"]
        other_region = env.settings.__class__(**{**env.settings.__dict__, "region": "eu-west-2"})
        async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "c", client_settings=other_region) as third:
            assert third.limiters["ClaimPhoneNumber"] is not first.limiters["ClaimPhoneNumber"]


async def test_a_claimer_with_other_rates_gets_its_own_limiters_not_the_first_ones(tmp_path: Path) -> None:
    async with sandbox_env() as env, claimer(env, tmp_path / "a", rate=50.0, burst=5) as first, \
            claimer(env, tmp_path / "b", rate=7.0, burst=3) as second, \
            claimer(env, tmp_path / "c", rate=50.0, burst=5) as same_as_first:
        assert (second.limiters["ClaimPhoneNumber"].rate, second.limiters["ClaimPhoneNumber"].max_in_flight) == (7.0, 3)
        assert second.limiters["ClaimPhoneNumber"] is not first.limiters["ClaimPhoneNumber"]
        assert same_as_first.limiters["ClaimPhoneNumber"] is first.limiters["ClaimPhoneNumber"]
        capped = RateSettings(50.0, 5, max_in_flight=2)
        async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "d", client_settings=env.settings,
                           rates=capped) as fourth:
            assert fourth.limiters["ClaimPhoneNumber"].max_in_flight == 2
            assert fourth.limiters["ClaimPhoneNumber"] is not first.limiters["ClaimPhoneNumber"]


async def test_a_lone_claims_outcome_reaches_the_disk_without_waiting_for_another_record(tmp_path: Path) -> None:
    # Lazy outcomes have a maximum age: nothing else is recorded after this claim, yet its outcome is
    # written (the bound is generous: this waits for a condition, it does not measure a delay).
    journal = tmp_path / "j"
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, journal) as c:
        outcome = await c.claim(NUMBERS[0])
        assert outcome.status == Status.CLAIMED
        with anyio.fail_after(10):
            while journal_rows(journal)[NUMBERS[0]][0] != "claimed":  # noqa: ASYNC110 - a file has no event
                await anyio.sleep(0.02)


async def test_every_token_is_durable_before_its_request_arrives(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    numbers = NUMBERS[:20]
    checked: list[str] = []
    async with sandbox_env(claim_delay=0.0, faults=FaultConfig(error_rate=0.2, seed=3)) as env:
        execute = env.sandbox.state.claim

        def claim_checking_journal(body: dict[str, Any]) -> dict[str, Any]:
            with sqlite3.connect(journal) as conn:  # a separate reader sees only committed rows
                row = conn.execute("SELECT client_token FROM numbers WHERE phone_number=?",
                                   (body["PhoneNumber"],)).fetchone()
            assert row is not None and row[0] == body["ClientToken"]
            checked.append(body["PhoneNumber"])
            return execute(body)

        env.sandbox.state.claim = claim_checking_journal  # type: ignore[method-assign]
        async with claimer(env, journal) as c:
            outcomes = await claim_all(c, numbers)
    assert {o.status for o in outcomes.values()} == {Status.CLAIMED}
    assert set(checked) == set(numbers)


async def test_a_failing_ownership_check_leaves_the_number_pending_and_the_run_goes_on(tmp_path: Path) -> None:
    faults = FaultConfig(error_rate=1.0, operations=frozenset({"ListPhoneNumbersV2"}))
    async with sandbox_env(faults=faults, foreign_claims=(NUMBERS[0],), claim_delay=0.0) as env, \
            claimer(env, tmp_path / "j") as c:
        outcomes = await claim_all(c, NUMBERS[:20])
        single = await c.claim(NUMBERS[0])
    assert outcomes[NUMBERS[0]].status == Status.PENDING, "unknown is not failed"
    assert single.status == Status.PENDING
    assert {outcomes[n].status for n in NUMBERS[1:20]} == {Status.CLAIMED}


async def test_no_request_reaches_the_service_without_passing_the_limiter(tmp_path: Path) -> None:
    lost = FaultConfig(lost_response_rate=0.5, operations=frozenset({"DescribePhoneNumber"}), seed=5)
    async with sandbox_env(faults=lost, claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        await claim_all(c, NUMBERS[:20])
        sent = {api: limiter.sent for api, limiter in c.limiters.items()}
    seen = {api: sum(counts.values()) for api, counts in env.sandbox.stats().items()}
    assert seen["DescribePhoneNumber"] == sent["DescribePhoneNumber"], "aiohttp must not re-send GETs itself"
    assert seen["ClaimPhoneNumber"] == sent["ClaimPhoneNumber"]


async def test_waiting_callers_get_an_error_not_a_hang_when_the_claimer_closes(tmp_path: Path) -> None:
    slow = FaultConfig(latency=(5.0, 5.0), operations=frozenset({"ClaimPhoneNumber"}))
    errors: list[BaseException] = []

    async def wait_for_claim(c: Claimer) -> None:
        try:
            await c.claim(NUMBERS[0])
        except BulkclaimError as exc:
            errors.append(exc)

    async with sandbox_env(faults=slow) as env, anyio.create_task_group() as outside:
        with pytest.raises(RuntimeError, match="leaving"), anyio.fail_after(10):  # noqa: PT012
            async with claimer(env, tmp_path / "j") as c:
                outside.start_soon(wait_for_claim, c)
                await anyio.sleep(0.2)
                raise RuntimeError("leaving the Claimer on an error")
    assert errors and "closed before this claim finished" in str(errors[0])


async def test_an_abandoned_claim_many_stops_sending(tmp_path: Path) -> None:
    throttle = {api: ThrottleConfig(rate=50.0, burst=5) for api in API_NAMES}
    async with sandbox_env(throttle=throttle, claim_delay=0.0) as env:
        with anyio.fail_after(20):
            async with claimer(env, tmp_path / "j", rate=50.0, burst=5) as c:
                outcomes = c.claim_many(NUMBERS)
                async for _ in outcomes:
                    break  # the iterator is kept, not closed: the Claimer's exit must still not hang
                await anyio.sleep(0.3)
        sent_when_left = len(env.sandbox.ledger)
        await anyio.sleep(0.3)
    assert len(env.sandbox.ledger) == sent_when_left < len(NUMBERS)


async def test_after_a_stop_request_nothing_new_is_sent(tmp_path: Path) -> None:
    throttle = {api: ThrottleConfig(rate=50.0, burst=5) for api in API_NAMES}
    async with sandbox_env(throttle=throttle, claim_delay=0.0) as env, \
            claimer(env, tmp_path / "j", rate=50.0, burst=5) as c:
        statuses: list[Status] = []
        sent_at_stop = 0
        state = RunState()

        async def emit(outcome: Outcome) -> None:
            statuses.append(outcome.status)
            if len(statuses) == 10:
                state.request_stop()
                nonlocal sent_at_stop
                sent_at_stop = c.limiters["ClaimPhoneNumber"].sent

        summary = await c.engine.run([ClaimRequest(n, c.target, source=f"x:{i}") for i, n in enumerate(NUMBERS)],
                                     emit, state=state)
        sent_after = c.limiters["ClaimPhoneNumber"].sent
    assert sent_after - sent_at_stop <= c.limiters["ClaimPhoneNumber"].max_in_flight, "only requests in flight"
    assert summary.statuses["claimed"] >= 10
    assert len(env.sandbox.ledger) == sent_after


async def test_the_circuit_breaker_probes_again_after_its_cooldown(tmp_path: Path) -> None:
    denied = Credentials("AKIADENIEDPRINCIPAL1", "denied-secret", denied=True)
    clock = FakeClock()
    async with sandbox_env(credentials=(*SandboxConfig().credentials, denied), claim_delay=0.0) as env:
        settings = env.settings.__class__(**{**env.settings.__dict__, "aws_access_key_id": denied.access_key_id,
                                             "aws_secret_access_key": denied.secret_access_key})
        async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j", client_settings=settings,
                           rates=RateSettings(1000.0, 50), options=FAST, clock=clock, fatal_cooldown=60.0) as c:
            with pytest.raises(FatalServiceError):
                await c.claim(NUMBERS[0])
            with pytest.raises(FatalServiceError):
                await c.claim(NUMBERS[0])  # breaker open: nothing sent
            assert sum(env.sandbox.stats()["ClaimPhoneNumber"].values()) == 1
            env.sandbox.set_faults(FaultConfig())
            env.sandbox._credentials[denied.access_key_id] = Credentials(denied.access_key_id,
                                                                         denied.secret_access_key)
            clock.advance(60.0)
            outcome = await c.claim(NUMBERS[0])  # permissions fixed: one probe, then business as usual
    assert outcome.status == Status.CLAIMED


async def test_canonical_but_invalid_numbers_are_checked_at_planning_and_never_sent(tmp_path: Path) -> None:
    source = tmp_path / "numbers.txt"
    source.write_text(f"{NUMBERS[0]}\n+10000000000\n+12062000001\n", encoding="utf-8")
    async with sandbox_env(claim_delay=0.0) as env, claimer(env, tmp_path / "j") as c:
        rows = list(read_inputs([source], target=c.target))
        assert [isinstance(r, ClaimRequest) and not r.checked for r in rows] == [True, True, True]
        outcomes = [o async for o in c.claim_many(rows)]
    by_number = {o.phone_number: o for o in outcomes}
    assert by_number["+10000000000"].status == Status.INVALID
    assert by_number["+10000000000"].source.endswith("numbers.txt:2")
    assert {e.phone_number for e in env.sandbox.ledger} == {NUMBERS[0], "+12062000001"}


async def test_a_claim_cancelled_in_flight_is_journaled_as_possibly_sent(tmp_path: Path) -> None:
    """Issue 12 case 2: a Claimer closed while a claim is on the wire closes the journal cleanly, so its
    run counts as ended: the attempt must be written, or a later run would think the number was never
    sent and leave it unsettled once it is no longer in the input."""
    slow = FaultConfig(latency=(3.0, 3.0), operations=frozenset({"ClaimPhoneNumber"}))
    journal = tmp_path / "j"
    async with sandbox_env(faults=slow) as env:
        arrived = anyio.Event()
        delay = env.sandbox._delay

        async def noting_arrival(faults: FaultConfig) -> bool:
            arrived.set()
            return await delay(faults)

        env.sandbox._delay = noting_arrival  # type: ignore[method-assign]
        errors: list[BaseException] = []

        async def wait_for_claim(c: Claimer) -> None:
            try:
                await c.claim(NUMBERS[0])
            except BulkclaimError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as outside:
            with pytest.raises(RuntimeError, match="leaving"), anyio.fail_after(10):  # noqa: PT012
                async with claimer(env, journal) as c:
                    outside.start_soon(wait_for_claim, c)
                    await arrived.wait()  # on the wire now: leaving on an error cancels it
                    raise RuntimeError("leaving the Claimer on an error")
        assert errors and "closed before this claim finished" in str(errors[0])
    with sqlite3.connect(journal) as conn:
        assert conn.execute("SELECT status, attempts FROM numbers").fetchall() == [("pending", 1)]
        assert conn.execute("SELECT count(*) FROM runs WHERE ended_at IS NULL").fetchone() == (0,)
