"""``bulkclaim`` as users run it: the real entry point in a subprocess, against the sandbox."""

from __future__ import annotations

import csv
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from bulkclaim import Backoff, Claimer, Status
from bulkclaim.inputs import read_inputs
from bulkclaim.sandbox import API_NAMES, Credentials, FaultConfig, InventorySpec, SandboxConfig, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env

pytestmark = pytest.mark.anyio

BULKCLAIM = [sys.executable, "-m", "bulkclaim"]
NUMBERS = [s.phone_number for s in generate(InventorySpec(count=120))]
DENIED = Credentials("AKIADENIEDPRINCIPAL1", "denied-secret", denied=True)


def cli_env(env: SandboxEnv, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BULKCLAIM_"))}
    return {**base, "AWS_ENDPOINT_URL_CONNECT": env.endpoint_url, "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": env.settings.aws_access_key_id or "",
            "AWS_SECRET_ACCESS_KEY": env.settings.aws_secret_access_key or "", "NO_COLOR": "1", **extra}


async def run_cli(env: SandboxEnv, cwd: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    result = await anyio.run_process([*BULKCLAIM, *args], cwd=cwd, env=cli_env(env, **extra_env), check=False)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def write_numbers(path: Path, numbers: list[str]) -> Path:
    path.write_text("\n".join(numbers) + "\n", encoding="utf-8")
    return path


def claim_args(*inputs: Path, rate: float = 200.0, burst: int = 20) -> list[str]:
    return ["claim", *map(str, inputs), "--instance-id", INSTANCE_ID, "--rate", str(rate), "--burst", str(burst),
            "--verify-timeout", "5", "--log-format", "json"]


def assert_once(env: SandboxEnv, numbers: list[str]) -> None:
    assert sorted(e.phone_number for e in env.sandbox.ledger) == sorted(numbers)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
async def env() -> AsyncIterator[SandboxEnv]:
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0, foreign_claims=(NUMBERS[-1],),
                           credentials=(*SandboxConfig().credentials, DENIED)) as running:
        yield running


async def test_claim_reports_in_both_formats_and_reruns_idempotently(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS[:10])
    result = await run_cli(env, tmp_path, *claim_args(numbers), "--report", "out.jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["phone_number"] for r in rows] == NUMBERS[:10]
    assert {r["status"] for r in rows} == {"claimed"}
    assert rows[0]["source"].endswith("numbers.txt:1") and rows[0]["attempts"] == 1
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o600
    journal = tmp_path / f"bulkclaim-{INSTANCE_ID}.journal"
    assert journal.stat().st_mode & 0o777 == 0o600

    again = await run_cli(env, tmp_path, *claim_args(numbers), "--report", "out.csv")
    assert again.returncode == 0
    with (tmp_path / "out.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["phone_number_id"] for r in table] == [r["phone_number_id"] for r in rows]
    assert_once(env, NUMBERS[:10])


async def test_status_and_report_commands(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", [*NUMBERS[:3], NUMBERS[-1], "=HYPERLINK(1)"])
    result = await run_cli(env, tmp_path, *claim_args(numbers), "--journal", "j.journal")
    assert result.returncode == 1, result.stderr  # one failed, one invalid
    status = await run_cli(env, tmp_path, "status", "--journal", "j.journal", "--json")
    counts = json.loads(status.stdout)["counts"]
    assert (counts["claimed"], counts["failed"], counts["invalid"]) == (3, 1, 1)
    human = await run_cli(env, tmp_path, "status", "--journal", "j.journal")
    assert "claimed      3" in human.stdout
    report = await run_cli(env, tmp_path, "report", "--journal", "j.journal", "--format", "csv",
                           "--status", "failed,invalid")
    table = list(csv.DictReader(report.stdout.splitlines()))
    assert [(r["status"], r["error_code"]) for r in table] == [("failed", "InvalidParameterException"),
                                                              ("invalid", "InvalidInput")]
    assert table[1]["phone_number"] == "'=HYPERLINK(1)", "formula neutralized"
    assert table[0]["phone_number"] == NUMBERS[-1], "plain E.164 numbers are left as they are"


async def test_dry_run_sends_nothing(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", [*NUMBERS[:5], NUMBERS[0]])
    result = await run_cli(env, tmp_path, *claim_args(numbers), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would claim:       5" in result.stdout and "duplicates:        1" in result.stdout
    # The quota preflight only reads: the quotas and the numbers the instance holds.
    assert env.sandbox.ledger == [] and set(env.sandbox.stats()) == {"ListPhoneNumbersV2",
                                                                     "ServiceQuotas.GetServiceQuota"}
    assert "quota: phone-number quota: 10000 (Service Quotas)" in result.stdout
    assert not (tmp_path / f"bulkclaim-{INSTANCE_ID}.journal").exists()
    offline = await run_cli(env, tmp_path, *claim_args(numbers), "--dry-run", "--no-preflight")
    assert offline.returncode == 0 and "quota:" not in offline.stdout
    assert set(env.sandbox.stats()) == {"ListPhoneNumbersV2", "ServiceQuotas.GetServiceQuota"}, "sends nothing"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["claim", "numbers.txt"], "exactly one of --instance-id or --target-arn"),
        (["claim", "missing.txt", "--instance-id", INSTANCE_ID], "missing.txt: no such file"),
        (["claim", ".", "--instance-id", INSTANCE_ID, "--format", "txt"], "is a directory"),
        (["claim", "numbers.pdf", "--instance-id", INSTANCE_ID], "cannot tell the format"),
        (["claim", "numbers.txt", "--instance-id", INSTANCE_ID, "--report", "r.xlsx"], "report format"),
        (["status", "--journal", "nope.journal"], "no journal at nope.journal"),
    ],
)
async def test_usage_and_input_errors_exit_2_with_one_line(env: SandboxEnv, tmp_path: Path, args: list[str],
                                                           message: str) -> None:
    write_numbers(tmp_path / "numbers.txt", NUMBERS[:2])
    (tmp_path / "numbers.pdf").write_text("x")
    result = await run_cli(env, tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    no_traceback(result)
    assert env.sandbox.ledger == []


async def test_changed_parameters_exit_2_before_sending(env: SandboxEnv, tmp_path: Path) -> None:
    first = tmp_path / "first.csv"
    first.write_text(f"phone_number,description\n{NUMBERS[0]},old\n", encoding="utf-8")
    env.sandbox.set_faults(FaultConfig(error_rate=1.0))
    async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j.journal", client_settings=env.settings,
                       backoff=Backoff(max_attempts=1)) as claimer:  # one 500: left pending, outcome unknown
        assert [o.status async for o in claimer.claim_many(read_inputs([first], target=claimer.target))] == [
            Status.PENDING]
    env.sandbox.set_faults(FaultConfig())
    first.write_text(f"phone_number,description\n{NUMBERS[0]},new\n", encoding="utf-8")
    sent = sum(env.sandbox.stats()["ClaimPhoneNumber"].values())
    again = await run_cli(env, tmp_path, *claim_args(first), "--journal", "j.journal")
    assert again.returncode == 2
    assert "changed parameters" in again.stderr and "first.csv:2" in again.stderr
    assert sum(env.sandbox.stats()["ClaimPhoneNumber"].values()) == sent
    no_traceback(again)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": DENIED.access_key_id, "AWS_SECRET_ACCESS_KEY": DENIED.secret_access_key},
         "AccessDeniedException"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "InvalidSignatureException"),
        ({"BULKCLAIM_INSTANCE_ID": "00000000-0000-0000-0000-000000000000"}, "ResourceNotFoundException"),
    ],
)
async def test_fatal_service_errors_exit_3_after_a_handful_of_requests(
        env: SandboxEnv, tmp_path: Path, extra: dict[str, str], message: str) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS[:50])
    args = [a for a in claim_args(numbers) if a not in ("--instance-id", INSTANCE_ID)]
    if "BULKCLAIM_INSTANCE_ID" not in extra:
        args += ["--instance-id", INSTANCE_ID]
    result = await run_cli(env, tmp_path, *args, **extra)
    assert result.returncode == 3, result.stderr
    assert message in result.stderr and "journal" in result.stderr
    no_traceback(result)
    assert sum(sum(v.values()) for v in env.sandbox.stats().values()) <= 10
    if "BULKCLAIM_INSTANCE_ID" not in extra:  # credentials fixed: the same command continues the same journal
        corrected = await run_cli(env, tmp_path, *args)
        assert corrected.returncode == 0, corrected.stderr[-2000:]
        assert_once(env, NUMBERS[:50])


async def _start(env: SandboxEnv, cwd: Path, *args: str) -> Process:
    return await anyio.open_process([*BULKCLAIM, *args], cwd=cwd, env=cli_env(env))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_signal_stops_gracefully_and_the_rerun_finishes(env: SandboxEnv, tmp_path: Path,
                                                             sig: signal.Signals, code: int) -> None:
    numbers = NUMBERS[:60]
    path = write_numbers(tmp_path / "numbers.txt", numbers)
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=40.0, burst=5))
    process = await _start(env, tmp_path, *claim_args(path, rate=40.0, burst=5), "--report", "r.jsonl")
    async with process:
        with anyio.fail_after(30):
            while len(env.sandbox.ledger) < 10:  # noqa: ASYNC110 - polling the sandbox ledger
                await anyio.sleep(0.02)
        process.send_signal(sig)
        with anyio.fail_after(30):
            assert await process.wait() == code
        assert process.stderr is not None
        err = (await process.stderr.receive()).decode() if process.stderr else ""
    assert "resume" in err or "Run the same command again" in err
    interrupted = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(interrupted) == 60 and {r["status"] for r in interrupted} >= {"pending"}
    assert len(env.sandbox.ledger) < 60
    result = await run_cli(env, tmp_path, *claim_args(path, rate=40.0, burst=5), "--report", "r.jsonl")
    assert result.returncode == 0, result.stderr
    assert_once(env, numbers)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rows} == {"claimed"} and len(rows) == 60


async def test_logs_are_json_lines_without_a_tty(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS[:5])
    args = [a for a in claim_args(numbers) if a not in ("--log-format", "json")]
    result = await run_cli(env, tmp_path, *args)
    assert result.returncode == 0
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert {"run.planned", "run.finished", "claim.claimed"} <= {e["event"] for e in events}
    secret = env.settings.aws_secret_access_key or "-"
    assert secret not in result.stderr and secret not in result.stdout


async def test_progress_display_appears_in_a_terminal(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS[:30])
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=20.0, burst=5))
    args = [a for a in claim_args(numbers, rate=20.0, burst=5) if a not in ("--log-format", "json")]
    output = await anyio.to_thread.run_sync(_run_in_pty, [*BULKCLAIM, *args], tmp_path, cli_env(env, COLUMNS="150"))
    assert "claims/s" in output and "throttled" in output and "ETA" in output
    assert_once(env, NUMBERS[:30])


def _run_in_pty(argv: list[str], cwd: Path, environment: dict[str, str]) -> str:
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, cwd=cwd, env={**environment, "TERM": "xterm"}, stdin=follower,
                               stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def planned_event(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return next(e for e in events if e["event"] == "run.planned")


async def test_a_rerun_of_identical_inputs_takes_over_the_earlier_plan(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", [*NUMBERS[:8], "not a number", NUMBERS[0]])
    first = await run_cli(env, tmp_path, *claim_args(numbers), "--report", "first.jsonl")
    assert first.returncode == 1 and "same_inputs_as_earlier_run" not in planned_event(first)
    again = await run_cli(env, tmp_path, *claim_args(numbers), "--report", "again.jsonl")
    assert again.returncode == 1
    event = planned_event(again)
    assert event["same_inputs_as_earlier_run"] == 1  # the run whose plan it took over
    assert (event["already_done"], event["invalid"], event["duplicates"]) == (8, 1, 1)
    def strip(text: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in json.loads(r).items() if k != "updated_at"} for r in text.splitlines()]

    assert strip((tmp_path / "again.jsonl").read_text()) == strip((tmp_path / "first.jsonl").read_text())
    assert_once(env, NUMBERS[:8])

    numbers.write_text(numbers.read_text() + NUMBERS[8] + "\n", encoding="utf-8")  # changed inputs: row by row
    changed = await run_cli(env, tmp_path, *claim_args(numbers))
    assert "same_inputs_as_earlier_run" not in planned_event(changed)
    assert planned_event(changed)["to_send"] == 1
    assert_once(env, NUMBERS[:9])
