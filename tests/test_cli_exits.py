"""Signals at every moment, reports replaced atomically, and the exits of faults a real run meets
(a journal deleted under it, a report that cannot be written) — through the real entry point."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from bulkclaim import ClaimRequest, Target
from bulkclaim.journal import SqliteJournal
from bulkclaim.sandbox import FaultConfig, ThrottleConfig
from tests.support import INSTANCE_ID, SandboxEnv
from tests.test_cli import BULKCLAIM, DENIED, NUMBERS, claim_args, cli_env, env, no_traceback, run_cli, write_numbers

pytestmark = pytest.mark.anyio
__all__ = ["env"]  # the sandbox fixture, shared with test_cli

SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


async def _start(env: SandboxEnv, cwd: Path, *args: str, **extra: str) -> Process:
    return await anyio.open_process([*BULKCLAIM, *args], cwd=cwd, env=cli_env(env, **extra))


async def _finish(process: Process) -> tuple[int, str, str]:
    """Wait for the process and read everything it wrote (bounded)."""
    out, err = bytearray(), bytearray()

    async def drain(stream: object, into: bytearray) -> None:
        async for chunk in stream:  # type: ignore[attr-defined]
            into.extend(chunk)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, process.stdout, out)
            tg.start_soon(drain, process.stderr, err)
            code = await process.wait()
    return code, out.decode(), err.decode()


async def _until(condition: Callable[[], bool], limit: float = 30) -> None:
    """Wait until the in-process sandbox shows ``condition`` (it has no event to wait on)."""
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - polling the sandbox's state
            await anyio.sleep(0.01)


async def _said(process: Process, text: bytes) -> None:
    """Wait until the process has written ``text`` on stderr (what it wrote is then consumed)."""
    assert process.stderr is not None
    seen = b""
    with anyio.fail_after(30):
        while text not in seen:
            seen += await process.stderr.receive()


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` yet (the kernel's view, /proc/PID/status).
    bulkclaim's first instruction handles SIGINT, SIGTERM and SIGHUP, the interpreter only SIGINT:
    SIGHUP tells that bulkclaim's code runs."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True  # it is gone: nothing more to wait for
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (sig - 1)))


# A signal lands at some moment of the run: starting up, importing, planning, sending, verifying or
# writing the report. Whatever that moment was, the exit code is the signal's, nothing is printed as
# a traceback, any report is whole, and the same command then finishes with every number once.
# "Any moment" starts with bulkclaim's first instruction, which installs the handlers: before it the
# interpreter is still starting and its own defaults apply. The delay counts from there.
@pytest.mark.parametrize(("sig", "delay"), [
    *[(signal.SIGINT, d) for d in (0.0, 0.05, 0.2, 0.5, 1.0, 1.6, 2.5)],
    *[(signal.SIGTERM, d) for d in (0.1, 0.8, 1.8)],
    *[(signal.SIGHUP, d) for d in (0.1, 0.8, 1.8)],
])
async def test_a_signal_at_any_moment_exits_with_its_code_and_loses_nothing(
        env: SandboxEnv, tmp_path: Path, sig: signal.Signals, delay: float) -> None:
    numbers = NUMBERS[:40]
    path = write_numbers(tmp_path / "numbers.txt", numbers)
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=25.0, burst=5))
    args = [*claim_args(path, rate=25.0, burst=5), "--report", "r.jsonl"]
    process = await _start(env, tmp_path, *args)
    async with process:
        await _until(lambda: _catches(process.pid, signal.SIGHUP), limit=10)
        await anyio.sleep(delay)  # not coordination: the moment the signal lands is the parameter
        if process.returncode is None:
            process.send_signal(sig)
        code, out, err = await _finish(process)
    assert code in (SIGNALS[sig], 0), err[-2000:]  # 0: the run was over before the signal landed
    assert "Traceback" not in out + err and "Aborted!" not in err
    if (tmp_path / "r.jsonl").exists():
        assert len(_jsonl(tmp_path / "r.jsonl")) == 40  # whole, never cut short
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".r.jsonl.")]  # no half-written temporary file
    rerun = await run_cli(env, tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(e.phone_number for e in env.sandbox.ledger) == sorted(numbers)


async def test_the_second_ctrl_c_says_one_line_and_sets_the_earlier_report_aside(
        env: SandboxEnv, tmp_path: Path) -> None:
    first = write_numbers(tmp_path / "first.txt", NUMBERS[:3])
    assert (await run_cli(env, tmp_path, *claim_args(first), "--report", "r.jsonl")).returncode == 0
    earlier = (tmp_path / "r.jsonl").read_text()
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=1.0, burst=1))
    env.sandbox.set_faults(FaultConfig(latency=(2.0, 2.0)))  # requests stay in flight: the grace period waits
    slow = write_numbers(tmp_path / "slow.txt", NUMBERS[3:30])
    process = await _start(env, tmp_path, *claim_args(slow, rate=1.0, burst=1), "--report", "r.jsonl",
                           "--grace-period", "30")
    async with process:
        await _until(lambda: len(env.sandbox.ledger) > 3)
        process.send_signal(signal.SIGINT)
        await _said(process, b"finishing requests in flight")
        process.send_signal(signal.SIGINT)
        code, _, err = await _finish(process)
    assert code == 130
    said = [line for line in err.splitlines() if "second Ctrl-C" in line]
    assert len(said) == 1 and "resume" in said[0]
    assert "Traceback" not in err
    assert not (tmp_path / "r.jsonl").exists()
    assert (tmp_path / "r.jsonl.previous").read_text() == earlier
    assert "r.jsonl.previous" in said[0] and "bulkclaim report" in said[0]


async def test_exit_3_writes_the_report_of_this_run_not_the_earlier_one(env: SandboxEnv, tmp_path: Path) -> None:
    first = write_numbers(tmp_path / "first.txt", NUMBERS[:3])
    assert (await run_cli(env, tmp_path, *claim_args(first), "--report", "r.jsonl")).returncode == 0
    second = write_numbers(tmp_path / "second.txt", NUMBERS[3:8])
    result = await run_cli(env, tmp_path, *claim_args(second), "--report", "r.jsonl",
                           AWS_ACCESS_KEY_ID=DENIED.access_key_id, AWS_SECRET_ACCESS_KEY=DENIED.secret_access_key)
    assert result.returncode == 3, result.stderr
    no_traceback(result)
    rows = _jsonl(tmp_path / "r.jsonl")
    assert [r["phone_number"] for r in rows] == NUMBERS[3:8]
    assert {r["status"] for r in rows} == {"pending"}


async def test_a_journal_deleted_under_a_run_stops_it_with_exit_3(env: SandboxEnv, tmp_path: Path) -> None:
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=20.0, burst=2))
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[:80])
    process = await _start(env, tmp_path, *claim_args(path, rate=20.0, burst=2), "--journal", "j.journal")
    async with process:
        await _until(lambda: len(env.sandbox.ledger) >= 5)
        (tmp_path / "j.journal").unlink()
        code, _, err = await _finish(process)
    assert code == 3, err[-2000:]
    assert "deleted or replaced" in err and "j.journal" in err
    assert "Traceback" not in err
    assert len(env.sandbox.ledger) < 80  # it stopped sending


async def test_a_report_that_cannot_be_written_after_the_run_exits_3_and_says_how_to_get_it(
        env: SandboxEnv, tmp_path: Path) -> None:
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=20.0, burst=2))
    (tmp_path / "out").mkdir()
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[:30])
    process = await _start(env, tmp_path, *claim_args(path, rate=20.0, burst=2), "--report", "out/r.csv")
    async with process:
        await _until(lambda: len(env.sandbox.ledger) >= 3)
        shutil.rmtree(tmp_path / "out")
        code, _, err = await _finish(process)
    assert code == 3, err[-2000:]
    assert "cannot write the report out/r.csv" in err and "bulkclaim report --journal" in err
    assert "Traceback" not in err and "internal error" not in err


async def test_report_to_a_missing_directory_exits_2(env: SandboxEnv, tmp_path: Path) -> None:
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[:2])
    assert (await run_cli(env, tmp_path, *claim_args(path), "--journal", "j.journal")).returncode == 0
    result = await run_cli(env, tmp_path, "report", "--journal", "j.journal", "--output", "nowhere/r.csv")
    assert result.returncode == 2 and "nowhere/r.csv" in result.stderr
    no_traceback(result)


@pytest.fixture
async def big_journal(tmp_path: Path) -> Path:
    """A journal of 120,000 planned numbers (nothing sent), for reports that take a while to write."""
    journal = SqliteJournal.open(tmp_path / "big.journal")
    target = Target(instance_id=INSTANCE_ID)
    run = await journal.begin_run()
    for start in range(0, 120_000, 20_000):
        await journal.plan([ClaimRequest(f"+1206{n:07d}", target, source=f"big.txt:{n + 1}")
                            for n in range(start, start + 20_000)], run, retry_failed=False)
    await journal.close()
    return tmp_path / "big.journal"


@pytest.mark.parametrize("delay", [0.2, 0.5, 0.9, 1.4])
async def test_a_signal_while_a_report_is_written_leaves_the_earlier_report_whole(
        big_journal: Path, tmp_path: Path, delay: float) -> None:
    report = tmp_path / "r.csv"
    report.write_text("phone_number\n+12065550100\n")
    process = await anyio.open_process([*BULKCLAIM, "report", "--journal", str(big_journal), "--output",
                                        str(report)], cwd=tmp_path)
    async with process:
        await _until(lambda: _catches(process.pid, signal.SIGHUP), limit=10)
        await anyio.sleep(delay)  # the moment the signal lands is the parameter
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code, _, err = await _finish(process)
    assert code in (0, 143), err
    assert "Traceback" not in err
    lines = report.read_text().splitlines()
    assert lines == ["phone_number", "+12065550100"] or len(lines) == 120_001
    assert code == 143 or len(lines) == 120_001
    assert [p for p in os.listdir(tmp_path) if p.startswith(".r.csv")] == []


async def test_ctrl_c_at_the_release_question_exits_130_and_sends_nothing(env: SandboxEnv, tmp_path: Path) -> None:
    """Any moment means any command too: here `release` waiting for its question to be answered."""
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[:2])
    assert (await run_cli(env, tmp_path, *claim_args(path), "--journal", "j.journal")).returncode == 0
    process = await anyio.open_process([*BULKCLAIM, "release", "--journal", "j.journal"], cwd=tmp_path,
                                       env=cli_env(env))
    async with process:
        await _said(process, b"Release 2 number(s)?")
        process.send_signal(signal.SIGINT)
        code, _, err = await _finish(process)
    assert code == 130
    assert "Traceback" not in err and "Aborted!" not in err
    assert [e.action for e in env.sandbox.ledger].count("release") == 0


async def test_after_the_first_ctrl_c_no_new_number_is_sent(env: SandboxEnv, tmp_path: Path) -> None:
    """At 0.5 claims/s, numbers queue for their turn at the limiter; the stop must reach them there
    (it used to let up to five of them go out during the grace period)."""
    path = write_numbers(tmp_path / "numbers.txt", NUMBERS[:30])
    process = await _start(env, tmp_path, *claim_args(path, rate=0.5, burst=5), "--grace-period", "20")

    def claims_received() -> int:
        return sum(env.sandbox.stats().get("ClaimPhoneNumber", {}).values())

    async with process:
        await _until(lambda: claims_received() >= 4)  # the burst went out; the rest wait for their turn
        process.send_signal(signal.SIGINT)
        at_signal = claims_received()
        code, _, err = await _finish(process)
    assert code == 130, err[-2000:]
    assert claims_received() - at_signal <= 1  # at most one that was already on the wire
    assert "Traceback" not in err


async def test_a_full_disk_while_a_report_is_written_exits_2_and_keeps_the_earlier_report(
        big_journal: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.csv"
    await anyio.Path(report).write_text("phone_number\n+12065550100\n")

    def small_disk() -> None:  # writes beyond 1 MiB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    done = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [*BULKCLAIM, "report", "--journal", str(big_journal), "--output", str(report)], cwd=tmp_path,
        capture_output=True, text=True, preexec_fn=small_disk, timeout=120, check=False))
    assert done.returncode == 2, done.stderr
    assert "cannot write" in done.stderr and str(report) in done.stderr
    assert "Traceback" not in done.stderr
    assert await anyio.Path(report).read_text() == "phone_number\n+12065550100\n"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".r.csv")] == []
