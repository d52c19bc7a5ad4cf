"""Quotas as users meet them (issue 7): the preflight, --allow-partial, --rate auto, release and
acquire, through the real entry point against the sandbox."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkclaim import AcquireSpec, Backoff, Claimer, Options, RateSettings
from bulkclaim.cli_common import rate_settings
from bulkclaim.quotas import Quotas
from bulkclaim.sandbox import API_NAMES, FaultConfig, InventorySpec, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_cli import BULKCLAIM, claim_args, cli_env, no_traceback, run_cli, write_numbers

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=40))]
JOURNAL = f"bulkclaim-{INSTANCE_ID}.journal"


@pytest.fixture
async def env() -> AsyncIterator[SandboxEnv]:
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0, phone_number_quota=5) as running:
        yield running


async def claim_directly(env: SandboxEnv, numbers: list[str]) -> None:
    async with env.client() as client:
        for number in numbers:
            await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber=number)


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def held(env: SandboxEnv) -> set[str]:
    """The numbers the instance holds (IN_PROGRESS or CLAIMED; a FAILED claim holds nothing)."""
    now = env.sandbox.clock()
    return {n for n in NUMBERS + [s.phone_number for s in generate(InventorySpec(count=1000))]
            if (r := env.sandbox.state.holder_of(n)) is not None and r.instance_id == INSTANCE_ID
            and r.status(now) != "FAILED"}


async def test_preflight_refuses_a_run_beyond_the_quota_before_any_claim(env: SandboxEnv, tmp_path: Path) -> None:
    await claim_directly(env, NUMBERS[:3])  # the instance holds 3 of its 5
    before = len(env.sandbox.ledger)
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[10:14])
    result = await run_cli(env, tmp_path, *claim_args(path))
    assert result.returncode == 3, result.stderr
    no_traceback(result)
    assert "holds 3 number(s), the run would claim 4 more, and the quota of 5 (Service Quotas) allows 2 more" \
        in result.stderr and "2 too many" in result.stderr
    assert len(env.sandbox.ledger) == before, "no claim was sent"
    assert env.sandbox.stats()["ClaimPhoneNumber"] == {"ok": 3}, "only the 3 direct claims"
    dry = await run_cli(env, tmp_path, *claim_args(path), "--dry-run")
    assert dry.returncode == 3 and "REFUSED: this run would exceed the phone-number quota" in dry.stdout
    # A number the instance already holds is not counted as a new claim.
    fits = write_numbers(tmp_path / "fits.txt", [*NUMBERS[:3], *NUMBERS[10:12]])
    again = await run_cli(env, tmp_path, *claim_args(fits), "--journal", "fits.journal")
    assert again.returncode == 0, again.stderr
    assert held(env) == {*NUMBERS[:3], *NUMBERS[10:12]}


async def test_allow_partial_claims_what_fits_and_leaves_the_rest_unsent(env: SandboxEnv, tmp_path: Path) -> None:
    await claim_directly(env, NUMBERS[:3])
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[10:14])
    result = await run_cli(env, tmp_path, *claim_args(path), "--allow-partial", "--report", "r.jsonl")
    assert result.returncode == 1, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["phone_number"], r["status"]) for r in rows] == [
        (NUMBERS[10], "claimed"), (NUMBERS[11], "claimed"), (NUMBERS[12], "failed"), (NUMBERS[13], "failed")]
    assert {r["error_code"] for r in rows[2:]} == {"PhoneNumberQuotaExceeded"}
    assert env.sandbox.state.executions(NUMBERS[12]) == env.sandbox.state.executions(NUMBERS[13]) == 0
    assert any(e["event"] == "preflight.partial" for e in events(result.stderr))


async def test_unreadable_service_quotas_warn_and_the_run_goes_on(env: SandboxEnv, tmp_path: Path) -> None:
    env.sandbox.configure(service_quotas_access=False)
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[10:12])
    result = await run_cli(env, tmp_path, *claim_args(path))
    assert result.returncode == 0, result.stderr
    names = [e["event"] for e in events(result.stderr)]
    assert "quota.unreadable" in names and "preflight.quota_unknown" in names
    # With the quota given by hand, the check happens again.
    refused = await run_cli(env, tmp_path, *claim_args(write_numbers(tmp_path / "more.txt", NUMBERS[20:25])),
                            "--phone-number-quota", "5", "--journal", "more.journal")
    assert refused.returncode == 3 and "(--phone-number-quota) allows 3 more" in refused.stderr


async def test_rate_auto_takes_the_rate_quota_of_service_quotas(env: SandboxEnv, tmp_path: Path) -> None:
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=37.0, burst=5))
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[10:12])
    args = [a if a != "200.0" else "auto" for a in claim_args(path)]
    result = await run_cli(env, tmp_path, *args)
    assert result.returncode == 0, result.stderr
    auto = [e for e in events(result.stderr) if e["event"] == "rate.auto"]
    assert auto and auto[0]["rate"] == 37.0 and auto[0]["source"] == "Service Quotas L-21385E28"
    bad = await run_cli(env, tmp_path, *[a if a != "auto" else "fast" for a in args])
    assert bad.returncode == 2 and "neither a number of claims per second nor 'auto'" in bad.stderr


async def test_the_rate_is_the_quota_by_default_and_an_explicit_rate_wins(env: SandboxEnv, tmp_path: Path) -> None:
    """Issue 13: the rate must match the quota, so without --rate a run takes the ClaimPhoneNumber
    rate quota from Service Quotas; one that cannot read it warns and goes on at Connect's default
    2/s; an explicit --rate is taken as given and nothing is said about the quota's rate."""
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=37.0, burst=5))

    async def run(name: str, numbers: list[str], *rate: str) -> list[tuple[float, str]]:
        args = claim_args(write_numbers(tmp_path / f"{name}.txt", numbers))
        args = args[:args.index("--rate")] + list(rate) + args[args.index("--rate") + 2:]
        result = await run_cli(env, tmp_path, *args, "--journal", f"{name}.journal")
        assert result.returncode == 0, result.stderr
        return [(e["rate"], e["level"]) for e in events(result.stderr) if e["event"] == "rate.auto"]

    assert await run("default", NUMBERS[10:11]) == [(37.0, "info")]  # the instance may hold 5 in all
    assert await run("given", NUMBERS[11:12], "--rate", "200") == []
    env.sandbox.configure(service_quotas_access=False)
    assert await run("unread", NUMBERS[12:13], "--no-preflight") == [(2.0, "warning")]


def test_only_a_rate_read_from_service_quotas_is_trusted_as_the_quota() -> None:
    """The controller probes back up promptly only when its ceiling is the account's real quota
    (issue 13): the rate ``--rate auto`` read from Service Quotas, not an explicit ``--rate`` (maybe
    wrong) nor the 2/s fallback when the quota could not be read."""
    opts = {"rate": "auto", "burst": 5, "max_in_flight": None, "no_adaptive": False}
    read = rate_settings(opts, Quotas(claim_rate=3.0))
    assert (read.rate, read.rate_is_quota) == (3.0, True)
    assert read.ceiling_is_quota("ClaimPhoneNumber") and not read.ceiling_is_quota("ReleasePhoneNumber")
    unread = rate_settings(opts, Quotas(problems=["AccessDenied"]))
    assert (unread.rate, unread.rate_is_quota) == (2.0, False)
    given = rate_settings(opts | {"rate": "3"}, Quotas(claim_rate=3.0))
    assert (given.rate, given.rate_is_quota) == (3.0, False)
    assert not RateSettings().rate_is_quota, "the library default is a configured rate, not a known quota"


async def test_release_asks_then_releases_exactly_the_runs_numbers(env: SandboxEnv, tmp_path: Path) -> None:
    await claim_directly(env, NUMBERS[:2])  # NUMBERS[0] is not the run's; NUMBERS[1] is in it but held before
    path = write_numbers(tmp_path / "numbers.txt", [NUMBERS[1], *NUMBERS[10:13]])
    assert (await run_cli(env, tmp_path, *claim_args(path))).returncode == 0
    release = [*BULKCLAIM, "release", "--journal", JOURNAL, "--log-format", "json"]
    environment = cli_env(env, BULKCLAIM_STATUS="failed,invalid")  # meant for `report`: release ignores it
    declined = await anyio.run_process(release, cwd=tmp_path, env=environment, input=b"n\n", check=False)
    text = declined.stdout.decode()
    assert declined.returncode == 1, declined.stderr.decode()
    assert "cooldown of up to 180 days" in text and "200%" in text
    assert "3 recorded in this journal, 6 after this release; limit 10" in text
    assert f"not releasing 1 number(s) the target already held when bulkclaim asked for them (e.g. {NUMBERS[1]})" \
        in text
    assert all(json.loads(line) for line in declined.stderr.decode().splitlines()[:-1]), "stderr: JSON logs"
    assert not [e for e in env.sandbox.ledger if e.action == "release"], "nothing released when declined"
    accepted = await anyio.run_process(release, cwd=tmp_path, env=environment, input=b"y\n", check=False)
    assert accepted.returncode == 0, accepted.stderr.decode()
    assert "released 3 of 3" in accepted.stdout.decode()
    released = sorted(e.phone_number for e in env.sandbox.ledger if e.action == "release")
    assert released == NUMBERS[10:13]
    assert all(env.sandbox.state.in_cooldown(n) for n in NUMBERS[10:13])
    assert held(env) == {NUMBERS[0], NUMBERS[1]}
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        statuses = dict(conn.execute("SELECT phone_number, status FROM numbers").fetchall())
        tokens = conn.execute("SELECT client_token FROM releases WHERE status='released'").fetchall()
    assert statuses == {NUMBERS[1]: "claimed", **dict.fromkeys(NUMBERS[10:13], "released")}
    assert sorted(t for (t,) in tokens) == sorted(e.client_token or "" for e in env.sandbox.ledger
                                                  if e.action == "release"), "journaled tokens were sent"
    again = await run_cli(env, tmp_path, "release", "--journal", JOURNAL, "--yes")
    assert again.returncode == 0 and "nothing to release" in again.stdout
    adopted = await run_cli(env, tmp_path, "release", "--journal", JOURNAL, "--yes", "--include-adopted")
    assert adopted.returncode == 0 and "released 1 of 1" in adopted.stdout and held(env) == {NUMBERS[0]}
    # This journal's churn (3 claims + 4 releases) is close to 200% of 5: the next run warns, and the
    # service (which also saw the 2 direct claims) blocks the claim that reaches the limit.
    more = await run_cli(env, tmp_path, *claim_args(write_numbers(tmp_path / "more.txt", NUMBERS[20:22])))
    assert any(e["event"] == "preflight.churn" for e in events(more.stderr))
    assert more.returncode == 3 and "ServiceQuotaExceededException" in more.stderr and "200%" in more.stderr


def acquire_args(count: int, *extra: str) -> list[str]:
    return ["acquire", "--instance-id", INSTANCE_ID, "--country", "US", "--type", "DID", "--count", str(count),
            "--rate", "200", "--burst", "10", "--verify-timeout", "5", "--log-format", "json", "--read-timeout", "1",
            *extra]


async def test_acquire_resumes_at_a_full_quota_by_adopting_what_it_claimed(env: SandboxEnv, tmp_path: Path) -> None:
    env.sandbox.configure(phone_number_quota=3)
    env.sandbox.set_faults(FaultConfig(lost_response_rate=1.0, operations=frozenset({"ClaimPhoneNumber"})))
    lost = await run_cli(env, tmp_path, *acquire_args(3))
    assert lost.returncode == 1, lost.stderr  # every answer lost: the slots stay pending (unknown, not failed)
    assert len(held(env)) == 3
    env.sandbox.set_faults(FaultConfig())
    claims = len(env.sandbox.ledger)
    resumed = await run_cli(env, tmp_path, *acquire_args(3))
    assert resumed.returncode == 0, resumed.stderr
    assert "acquired 3 of 3" in resumed.stdout and len(held(env)) == 3
    assert len(env.sandbox.ledger) == claims, "adopted, nothing claimed again"


async def test_acquire_after_release_takes_new_numbers(env: SandboxEnv, tmp_path: Path) -> None:
    first = await run_cli(env, tmp_path, *acquire_args(2))
    assert first.returncode == 0, first.stderr
    released = await run_cli(env, tmp_path, "release", "--journal", JOURNAL, "--yes")
    assert released.returncode == 0 and held(env) == set()
    claims = env.sandbox.stats()["ClaimPhoneNumber"]["ok"]
    again = await run_cli(env, tmp_path, *acquire_args(2))
    assert again.returncode == 0, again.stderr
    assert len(held(env)) == 2 and env.sandbox.stats()["ClaimPhoneNumber"]["ok"] == claims + 2, "no stale tokens"


async def test_acquire_usage_errors_and_unlistable_targets(env: SandboxEnv, tmp_path: Path) -> None:
    bad = await run_cli(env, tmp_path, *[a if a != "DID" else "FOO" for a in acquire_args(1)])
    assert bad.returncode == 2 and "'FOO' is not one of TOLL_FREE, DID" in bad.stderr
    country = await run_cli(env, tmp_path, *[a if a != "US" else "ZZ" for a in acquire_args(1)])
    assert country.returncode == 2
    env.sandbox.set_faults(FaultConfig(error_rate=1.0, operations=frozenset({"ListPhoneNumbersV2"})))
    unlisted = await run_cli(env, tmp_path, *acquire_args(1))
    no_traceback(unlisted)
    assert unlisted.returncode == 0, unlisted.stderr  # the quota is not checked (warned); the service enforces it
    assert any(e["event"] == "preflight.incomplete" for e in events(unlisted.stderr))


async def test_acquire_claims_exactly_n_despite_competition_and_lost_answers(tmp_path: Path) -> None:
    fast = {api: ThrottleConfig(rate=500.0, burst=50) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0, competition_rate=0.4,
                           faults=FaultConfig(lost_response_rate=0.25, error_rate=0.1, seed=3)) as env:
        args = ["acquire", "--instance-id", INSTANCE_ID, "--country", "US", "--type", "DID", "--prefix", "+1206",
                "--count", "6", "--rate", "500", "--burst", "10", "--verify-timeout", "5", "--log-format", "json",
                "--report", "slots.csv", "--read-timeout", "2"]
        result = await run_cli(env, tmp_path, *args)
        assert result.returncode == 0, result.stderr
        assert len(held(env)) == 6
        assert "acquired 6 of 6" in result.stdout
        rival_losses = sum(1 for e in events(result.stderr) if e["event"] == "acquire.replaced")
        assert rival_losses >= 1, "the seeded competition took at least one candidate"
        assert (tmp_path / "slots.csv").read_text().count("\n") == 7
        rerun = await run_cli(env, tmp_path, *args)
        assert rerun.returncode == 0 and len(held(env)) == 6, "re-running the same acquisition claims nothing more"
        other = await run_cli(env, tmp_path, *[a if a != "6" else "7" for a in args])
        assert other.returncode == 0 and len(held(env)) == 13, "a new acquisition (another name) is separate"


async def test_acquire_survives_sigkill_and_never_ends_with_n_plus_one(tmp_path: Path) -> None:
    throttle = {api: ThrottleConfig(rate=30.0, burst=3) for api in API_NAMES}
    async with sandbox_env(throttle=throttle, claim_delay=0.0, competition_rate=0.2,
                           faults=FaultConfig(lost_response_rate=0.2, seed=5)) as env:
        args = ["acquire", "--instance-id", INSTANCE_ID, "--country", "US", "--type", "DID", "--count", "12",
                "--rate", "30", "--burst", "3", "--verify-timeout", "5", "--log-format", "json",
                "--read-timeout", "1"]
        for kill_after in (2, 6, 9):
            process = await anyio.open_process([*BULKCLAIM, *args], cwd=tmp_path, env=cli_env(env))
            async with process:
                with anyio.fail_after(60):
                    while len(held(env)) < kill_after and process.returncode is None:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                process.send_signal(signal.SIGKILL)
                await process.wait()
            assert len(held(env)) <= 12
        result = await run_cli(env, tmp_path, *args)
        assert result.returncode == 0, result.stderr
        assert len(held(env)) == 12, "exactly N after resume"


async def test_acquire_preflight_refuses_more_than_the_quota(env: SandboxEnv, tmp_path: Path) -> None:
    result = await run_cli(env, tmp_path, "acquire", "--instance-id", INSTANCE_ID, "--country", "US", "--type", "DID",
                           "--count", "6", "--log-format", "json")
    assert result.returncode == 3 and "the run would claim 6 more" in result.stderr
    assert env.sandbox.ledger == []


@pytest.mark.parametrize("seed", range(10))
async def test_acquire_over_seeded_runs_ends_with_exactly_n(tmp_path: Path, seed: int) -> None:
    """The library path, many seeds: rivals, lost answers, 500s and claims that settle FAILED."""
    async with sandbox_env(claim_delay=0.0, competition_rate=0.3, claim_failure_rate=0.1, seed=seed,
                           faults=FaultConfig(lost_response_rate=0.2, error_rate=0.1, seed=seed)) as env:
        async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j.journal", client_settings=env.settings,
                           rates=RateSettings(1000.0, 8), options=Options(verify_first_poll=0.01, verify_timeout=5),
                           backoff=Backoff(base=0.01, floor=0.001, cap=0.05)) as claimer:
            slots = await claimer.acquire(AcquireSpec("US", "DID", 5), "seeded")
        assert [s.status.value for s in slots] == ["claimed"] * 5
        assert len(held(env)) == 5 and {s.phone_number for s in slots} == held(env)
        assert all(env.sandbox.state.executions(n) <= 1 for n in held(env))


def acquire_claimer(env: SandboxEnv, journal: Path, *, verify: bool = True) -> Claimer:
    return Claimer(instance_id=INSTANCE_ID, journal=journal, client_settings=env.settings,
                   rates=RateSettings(1000.0, 8),
                   options=Options(verify=verify, verify_first_poll=0.01, verify_timeout=5),
                   backoff=Backoff(base=0.01, floor=0.001, cap=0.05))


async def test_acquire_refills_a_slot_whose_earlier_claim_settles_failed(tmp_path: Path) -> None:
    """Issue 12 case 4: a run stops after its claims were accepted, before verifying them; one of
    them settles FAILED. The next run must give that slot a new number, not end "1 of 2"."""
    async with sandbox_env(claim_delay=0.0, seed=1) as env:
        env.sandbox.configure(claim_failure_rate=1.0)  # the first run's claims will settle FAILED
        async with acquire_claimer(env, tmp_path / "j.journal", verify=False) as claimer:
            first = await claimer.acquire(AcquireSpec("US", "DID", 2), "crash", limit=1)
        assert [s.status.value for s in first] == ["in_progress", "pending"], "accepted, then stopped unverified"
        failed_number = first[0].phone_number
        env.sandbox.configure(claim_failure_rate=0.0)
        async with acquire_claimer(env, tmp_path / "j.journal") as claimer:
            slots = await claimer.acquire(AcquireSpec("US", "DID", 2), "crash")
    assert [s.status.value for s in slots] == ["claimed", "claimed"]
    assert failed_number not in {s.phone_number for s in slots}, "the failed candidate was replaced"
    assert len(held(env)) == 2 and {s.phone_number for s in slots} == held(env)


async def test_concurrent_acquires_of_one_name_hold_exactly_n(tmp_path: Path) -> None:
    """Issue 12 case 4: two concurrent ``acquire()`` of the same acquisition fill its N slots once."""
    async with sandbox_env(claim_delay=0.0) as env, acquire_claimer(env, tmp_path / "j.journal") as claimer:
        results: list[list[Any]] = []

        async def acquire() -> None:
            results.append(await claimer.acquire(AcquireSpec("US", "DID", 3), "shared"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(acquire)
            tg.start_soon(acquire)
    assert len(held(env)) == 3, "never 2N"
    assert len(env.sandbox.ledger) == 3
    assert [[s.status.value for s in r] for r in results] == [["claimed"] * 3] * 2
    assert {s.phone_number for s in results[0]} == {s.phone_number for s in results[1]} == held(env)


async def test_dry_run_without_any_aws_configuration_still_plans(tmp_path: Path) -> None:
    """Offline validation of a file: no region, no credentials. The preflight warns and the plan
    is printed (this was an internal error, exit 70)."""
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[:3])
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BULKCLAIM_"))}
    result = await anyio.run_process([*BULKCLAIM, "claim", str(path), "--instance-id", INSTANCE_ID, "--dry-run",
                                      "--log-format", "json"], cwd=tmp_path, env=environment, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "would claim:       3" in result.stdout.decode()
    assert {"quota.unreadable", "preflight.incomplete"} <= {e["event"] for e in events(stderr)}
