"""What a person at a terminal sees (the real entry point on a pty), the smoothed progress meter on a
fake clock, ``status`` of a live and an idle journal, and the reports' ``run`` column."""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import pty
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkclaim.journal import SqliteJournal, lock_holder
from bulkclaim.logs import LogFormat, log_level
from bulkclaim.model import RunSummary
from bulkclaim.progress import ProgressMeter, RateMeter
from bulkclaim.sandbox import ThrottleConfig
from tests.support import FakeClock, SandboxEnv
from tests.test_cli import BULKCLAIM, DENIED, NUMBERS, assert_once, claim_args, cli_env, env, run_cli, write_numbers

pytestmark = pytest.mark.anyio
__all__ = ["env"]  # the sandbox fixture, shared with test_cli

COLUMNS, ROWS = 160, 50


# -- a terminal ---------------------------------------------------------------------------------------

class Screen:
    """Just enough of a VT100 to replay what rich writes: text, CR/LF, cursor up/down/column and
    erase-line. Lines scrolled off stay in ``lines``, so the result is the whole scrollback."""

    _CONTROL = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b[()][A-Z0-9]|\x1b[=>]|\r|\n|\x07|\x08")

    def __init__(self) -> None:
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, text: str) -> Screen:
        position = 0
        for match in self._CONTROL.finditer(text):
            self._write(text[position:match.start()])
            position = match.end()
            self._control(match)
        self._write(text[position:])
        return self

    def _control(self, match: re.Match[str]) -> None:
        token = match.group(0)
        if token == "\r":
            self.col = 0
        elif token == "\n":
            self.row += 1
            while len(self.lines) <= self.row:
                self.lines.append([])
        elif match.group(2):
            args, command = match.group(1), match.group(2)
            count = int(args) if args.isdigit() else 1
            if command == "A":
                self.row = max(0, self.row - count)
            elif command == "B":
                self.row += count
                while len(self.lines) <= self.row:
                    self.lines.append([])
            elif command == "G":
                self.col = count - 1
            elif command == "K":
                line = self.lines[self.row]
                if args == "2":
                    line.clear()
                elif args in ("", "0"):
                    del line[self.col:]

    def _write(self, text: str) -> None:
        line = self.lines[self.row]
        for char in text:
            while len(line) < self.col:
                line.append(" ")
            if self.col < len(line):
                line[self.col] = char
            else:
                line.append(char)
            self.col += 1

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


def run_in_pty(argv: list[str], cwd: Path, environment: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pty of COLUMNS x ROWS; (exit code, raw output)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen(argv, cwd=cwd, env={**environment, "TERM": "xterm", "COLUMNS": str(COLUMNS),
                                                     "LINES": str(ROWS)},
                               stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: every process holding the follower is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


async def claim_in_pty(env: SandboxEnv, tmp_path: Path, *args: str, before: tuple[str, ...] = (),
                       **extra_env: str) -> tuple[int, list[str], str]:
    """``bulkclaim [before] claim ... [args]`` on a pty, its logs in the console format (the default
    on a terminal); (exit code, the screen's lines, raw output)."""
    base = [a for a in claim_args(tmp_path / "numbers.txt", rate=20.0, burst=5) if a not in ("--log-format", "json")]
    argv = [*BULKCLAIM, *before, *base, *args]
    code, raw = await anyio.to_thread.run_sync(run_in_pty, argv, tmp_path, cli_env(env, **extra_env))
    return code, Screen().feed(raw).text(), raw


BAR = ("claims/s", "━")


def bar_lines(screen: list[str]) -> list[int]:
    return [i for i, line in enumerate(screen) if "claiming" in line and "claims/s" in line]


def assert_alone(screen: list[str], event: str) -> list[int]:
    """Every line naming ``event`` holds nothing of the bar, and sits above the bar's last drawing."""
    found = [i for i, line in enumerate(screen) if event in line]
    assert found, f"{event} not shown:\n" + "\n".join(screen)
    for i in found:
        assert not any(part in screen[i] for part in BAR), f"{event} mixed into the bar: {screen[i]!r}"
    bars = bar_lines(screen)
    assert bars and max(found) < bars[-1], "\n".join(screen)
    return found


async def test_a_terminal_shows_the_bar_and_warnings_above_it_but_not_each_numbers_events(
        env: SandboxEnv, tmp_path: Path) -> None:
    write_numbers(tmp_path / "numbers.txt", [*NUMBERS[:15], "not a number", *NUMBERS[15:30]])
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=20.0, burst=5))
    code, screen, raw = await claim_in_pty(env, tmp_path)
    assert code == 1  # one invalid row
    assert_alone(screen, "input.invalid")
    assert bar_lines(screen), "\n".join(screen)
    for info in ("claim.claimed", "claim.accepted", "run.planned", "run.finished"):
        assert info not in raw
    assert any(line.startswith("claimed 30 · invalid 1") for line in screen), "\n".join(screen)
    assert_once(env, NUMBERS[:30])


@pytest.mark.parametrize("where", ["after", "before"])
async def test_verbose_shows_each_numbers_events_above_the_bar(env: SandboxEnv, tmp_path: Path, where: str) -> None:
    write_numbers(tmp_path / "numbers.txt", NUMBERS[:30])
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=20.0, burst=5))
    if where == "after":
        code, screen, _ = await claim_in_pty(env, tmp_path, "-v")
    else:
        code, screen, _ = await claim_in_pty(env, tmp_path, before=("-v",))
    assert code == 0
    assert len(assert_alone(screen, "claim.claimed")) == 30
    assert_alone(screen, "run.planned")


async def test_verbose_from_the_environment(env: SandboxEnv, tmp_path: Path) -> None:
    write_numbers(tmp_path / "numbers.txt", NUMBERS[:5])
    code, screen, _ = await claim_in_pty(env, tmp_path, BULKCLAIM_VERBOSE="1")
    assert code == 0 and sum("claim.claimed" in line for line in screen) == 5


async def test_quiet_shows_only_errors_and_the_summary(env: SandboxEnv, tmp_path: Path) -> None:
    write_numbers(tmp_path / "numbers.txt", [*NUMBERS[:20], "not a number", NUMBERS[-1]])
    code, screen, raw = await claim_in_pty(env, tmp_path, "-q")
    assert code == 1
    assert [line for line in screen if line] == ["claimed 20 · failed 1 · invalid 1"]
    assert "claims/s" not in raw and "input.invalid" not in raw

    write_numbers(tmp_path / "numbers.txt", NUMBERS[40:45])
    code, screen, raw = await claim_in_pty(env, tmp_path, "-q", "--journal", "denied.journal",
                                           AWS_ACCESS_KEY_ID=DENIED.access_key_id,
                                           AWS_SECRET_ACCESS_KEY=DENIED.secret_access_key)
    assert code == 3
    shown = "\n".join(screen)
    assert "run.aborted" in shown and "bulkclaim: error: aborted" in shown
    assert "claims/s" not in raw and "warning" not in raw


async def test_verbose_and_quiet_together_are_a_usage_error(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS[:2])
    result = await run_cli(env, tmp_path, "-v", *claim_args(numbers), "-q")
    assert result.returncode == 2 and "contradict" in result.stderr
    assert not env.sandbox.ledger
    quiet_from_env = await run_cli(env, tmp_path, *claim_args(numbers), "-v", BULKCLAIM_QUIET="1")
    assert quiet_from_env.returncode == 0, quiet_from_env.stderr  # the command line wins


# -- JSON logs without a terminal ------------------------------------------------------------------------

def events(result: subprocess.CompletedProcess[str]) -> Counter[str]:
    return Counter(json.loads(line)["event"] for line in result.stderr.splitlines() if line.strip())


async def test_json_logs_keep_info_by_default_and_quiet_keeps_warnings(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", [*NUMBERS[:5], "not a number"])
    args = [a for a in claim_args(numbers) if a not in ("--log-format", "json")]
    default = await run_cli(env, tmp_path, *args)
    assert default.returncode == 1
    found = events(default)
    assert found["claim.claimed"] == 5 and found["input.invalid"] == 1 and found["run.finished"] == 1
    first = json.loads(default.stderr.splitlines()[0])
    assert {"event", "level", "timestamp"} <= set(first)
    verbose = await run_cli(env, tmp_path, "-v", *args, "--journal", "v.journal")
    assert events(verbose)["claim.claimed"] == 5
    quiet = await run_cli(env, tmp_path, *args, "--journal", "q.journal", "-q")
    assert set(events(quiet)) == {"input.invalid"} and quiet.stdout.startswith("claimed 5")


@pytest.mark.parametrize(("terminal", "log_format", "levels"), [
    (True, "auto", (logging.ERROR, logging.WARNING, logging.DEBUG)),
    (True, "console", (logging.ERROR, logging.WARNING, logging.DEBUG)),
    (True, "json", (logging.WARNING, logging.INFO, logging.DEBUG)),
    (False, "auto", (logging.WARNING, logging.INFO, logging.DEBUG)),
    (False, "console", (logging.WARNING, logging.INFO, logging.DEBUG)),  # console lines into a file
])
def test_log_levels_for_quiet_default_and_verbose(monkeypatch: pytest.MonkeyPatch, terminal: bool,
                                                  log_format: LogFormat, levels: tuple[int, int, int]) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert (log_level(log_format, -1), log_level(log_format, 0), log_level(log_format, 1)) == levels


# -- the progress meter on a fake clock -----------------------------------------------------------------

class _Engine:
    def __init__(self) -> None:
        self.summary = RunSummary()


class _Limiter:
    rate, throttled = 2.0, 0


def test_a_resumed_run_starts_without_a_bogus_rate() -> None:
    clock, engine = FakeClock(), _Engine()
    meter = ProgressMeter(engine, _Limiter(), clock=clock)
    assert meter.snapshot().claims_per_second is None  # planning
    clock.advance(3.0)
    # planning found 275 numbers done by an earlier run and 25 to send
    engine.summary.already_done, engine.summary.to_send = 275, 25
    engine.summary.statuses["claimed"] = 275
    first = meter.snapshot()
    assert (first.done, first.total) == (275, 300)
    assert first.claims_per_second is None and first.eta_seconds is None
    for _ in range(4):  # 0.25 s ticks: the first claims, not yet a second of measurement
        clock.advance(0.25)
        engine.summary.statuses["claimed"] += 1
        snap = meter.snapshot()
        assert snap.claims_per_second is None or snap.claims_per_second < 5
    shown = []
    for _ in range(16):
        clock.advance(0.5)
        engine.summary.statuses["claimed"] += 1
        snap = meter.snapshot()
        assert snap.claims_per_second is not None
        shown.append(snap.claims_per_second)
    assert all(1.5 <= speed <= 4.5 for speed in shown), shown
    assert snap.claims_per_second is not None
    assert snap.eta_seconds == pytest.approx((25 - 20) / snap.claims_per_second)


def test_the_rate_converges_to_the_true_rate_whatever_the_tick() -> None:
    for tick in (0.25, 1.0, 5.0):
        clock = FakeClock()
        meter = RateMeter(window=30.0, clock=clock)
        count = 0.0
        meter.update(0)
        for _ in range(int(60 / tick)):  # a minute at 5/s
            clock.advance(tick)
            count += 5 * tick
            rate = meter.update(int(count))
        assert rate == pytest.approx(5.0, rel=0.1), tick
        for _ in range(int(120 / tick)):  # then two minutes (four windows) at 1/s
            clock.advance(tick)
            count += tick
            rate = meter.update(int(count))
        assert rate == pytest.approx(1.0, rel=0.1), tick


def test_a_stall_brings_the_rate_down_and_the_window_smooths_bursts() -> None:
    clock = FakeClock()
    meter = RateMeter(window=30.0, clock=clock)
    meter.update(0)
    count = 0
    for _ in range(60):  # bursts of 10 every 5 s: 2/s
        clock.advance(5.0)
        count += 10
        rate = meter.update(count)
        assert rate is not None and 1.5 <= rate <= 2.5
    clock.advance(60.0)
    rate = meter.update(count)
    assert rate is not None and rate < 0.5


def test_planning_time_does_not_count_as_slow_claiming() -> None:
    clock = FakeClock()
    meter = RateMeter(clock=clock)
    for _ in range(40):  # 10 s of planning
        clock.advance(0.25)
        assert meter.update(0) is None
    for i in range(1, 13):
        clock.advance(0.25)
        rate = meter.update(i)
    assert rate == pytest.approx(4.0, rel=0.05)


# -- the journal's lock, seen without taking it --------------------------------------------------------

def test_lock_holder_sees_the_journal_lock_without_taking_it(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    assert lock_holder(path).held is False  # no journal, no lock
    journal = SqliteJournal.open(path)
    try:
        assert lock_holder(path) == lock_holder(path)
        holder = lock_holder(path)
        assert holder.held is True and holder.pid == os.getpid()
        assert lock_holder(path, proc_locks=tmp_path / "missing").held is None  # no /proc/locks: unknown
    finally:
        anyio.run(journal.close)
    assert lock_holder(path).held is False
    anyio.run(SqliteJournal.open(path).close)  # looking never left a lock behind


def test_lock_holder_matches_the_inode_when_overlayfs_shows_another_device(tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"  # the lock is on the journal file itself
    journal.touch()
    inode = journal.stat().st_ino
    table = tmp_path / "locks"
    table.write_text(f"1: POSIX  ADVISORY  READ 11 fe:00:{inode} 128 128\n"
                     f"2: FLOCK  ADVISORY  WRITE 4242 00:2a:{inode} 0 EOF\n")
    assert lock_holder(tmp_path / "j.journal", proc_locks=table).held is False
    assert lock_holder(tmp_path / "j.journal", proc_locks=table, expected_pid=4242).held is True


# -- status ------------------------------------------------------------------------------------------------

async def status_of(env: SandboxEnv, cwd: Path, journal: str) -> dict[str, Any]:
    result = await run_cli(env, cwd, "status", "--journal", journal, "--json")
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


async def test_status_of_a_live_run_then_of_the_idle_journal(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS[:40])  # 8 s at 5/s
    argv = [*BULKCLAIM, *claim_args(numbers, rate=5.0, burst=1), "--journal", "j.journal"]
    async with await anyio.open_process(argv, cwd=tmp_path, env=cli_env(env), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) as process:
        with anyio.fail_after(60):
            while True:  # until the journal shows progress (status must not disturb the run meanwhile)
                if (tmp_path / "j.journal").exists():
                    live = await status_of(env, tmp_path, "j.journal")
                    if live["counts"]["claimed"] >= 3 and live["claims_per_second"] is not None:
                        break
                await anyio.sleep(0.1)
        human = await run_cli(env, tmp_path, "status", "--journal", "j.journal")
        assert process.returncode is None, "the run was still going when status looked"
        with anyio.fail_after(60):
            assert await process.wait() == 0
    assert live["live"] is True and live["live_run"] == 1 and live["latest_run"] == 1
    assert live["pid"] == process.pid
    assert live["claims_per_second"] is not None and 0 < live["claims_per_second"] <= 10
    assert "live — run 1 is going on" in human.stdout and "claims/s" in human.stdout
    idle = await status_of(env, tmp_path, "j.journal")
    assert idle["live"] is False and idle["live_run"] is None
    assert idle["claims_per_second"] is None and idle["eta_seconds"] is None
    assert idle["run_counts"] == {"1": {"claimed": 40}}
    human = await run_cli(env, tmp_path, "status", "--journal", "j.journal")
    assert "idle" in human.stdout and "claims/s" not in human.stdout and "ETA" not in human.stdout
    assert "run 1: claimed 40" in human.stdout
    assert_once(env, NUMBERS[:40])


async def test_status_lists_numbers_with_an_error_now_not_throttled_retries(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", [*NUMBERS[:12], NUMBERS[-1]])
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=4.0, burst=1))
    result = await run_cli(env, tmp_path, *claim_args(numbers, rate=40.0, burst=10), "--journal", "j.journal")
    assert result.returncode == 1, result.stderr  # the foreign number failed
    with sqlite3.connect(tmp_path / "j.journal") as conn:
        throttled = conn.execute("SELECT count(*) FROM attempts WHERE error_code='ThrottlingException'").fetchone()[0]
    assert throttled > 0, "the scenario needs throttled retries"
    second = write_numbers(tmp_path / "more.txt", NUMBERS[12:14])
    assert (await run_cli(env, tmp_path, *claim_args(second), "--journal", "j.journal")).returncode == 0
    status = await status_of(env, tmp_path, "j.journal")
    assert status["error_count"] == 1
    assert [(e["phone_number"], e["status"], e["error_code"], e["run"]) for e in status["last_errors"]] == [
        (NUMBERS[-1], "failed", "InvalidParameterException", 1)]
    assert status["latest_run"] == 2 and status["runs"] == 2
    assert status["run_counts"] == {"1": {"claimed": 12, "failed": 1}, "2": {"claimed": 2}}
    human = await run_cli(env, tmp_path, "status", "--journal", "j.journal")
    assert "ThrottlingException" not in human.stdout
    assert "run 1: claimed 12 · failed 1" in human.stdout and "run 2: claimed 2" in human.stdout
    assert "latest: run 2" in human.stdout


# -- reports -----------------------------------------------------------------------------------------------

async def test_reports_have_a_run_column(env: SandboxEnv, tmp_path: Path) -> None:
    first = write_numbers(tmp_path / "first.txt", [*NUMBERS[:3], "not a number"])
    assert (await run_cli(env, tmp_path, *claim_args(first), "--journal", "j.journal",
                          "--report", "first.csv")).returncode == 1
    second = write_numbers(tmp_path / "second.txt", NUMBERS[3:5])
    assert (await run_cli(env, tmp_path, *claim_args(second), "--journal", "j.journal",
                          "--report", "second.jsonl")).returncode == 0
    table = list(csv.DictReader((tmp_path / "first.csv").read_text(encoding="utf-8").splitlines()))
    # DESIGN §4: flows after run, then a move's source (empty for a claim)
    assert list(table[0])[-4:] == ["run", "contact_flow_id", "flow_status", "moved_from"]
    assert {r["moved_from"] for r in table} == {""}
    assert [(r["status"], r["run"]) for r in table] == [("claimed", "1")] * 3 + [("invalid", "1")]
    rows = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()]
    assert [(r["phone_number"], r["run"]) for r in rows] == [(NUMBERS[3], 2), (NUMBERS[4], 2)]
    every = await run_cli(env, tmp_path, "report", "--journal", "j.journal", "--status", "claimed")
    assert [json.loads(line)["run"] for line in every.stdout.splitlines()] == [1, 1, 1, 2, 2]
    released = await run_cli(env, tmp_path, "release", "--journal", "j.journal", "--run", "2", "--yes",
                             "--rate", "200", "--log-format", "json")
    assert released.returncode == 0, released.stderr
    after = await run_cli(env, tmp_path, "report", "--journal", "j.journal", "--format", "csv")
    assert [(r["status"], r["run"]) for r in csv.DictReader(after.stdout.splitlines())][:5] == [
        ("claimed", "1")] * 3 + [("released", "2")] * 2


async def test_report_of_an_unknown_status_exits_2_listing_the_valid_ones(env: SandboxEnv, tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS[:1])
    assert (await run_cli(env, tmp_path, *claim_args(numbers), "--journal", "j.journal")).returncode == 0
    result = await run_cli(env, tmp_path, "report", "--journal", "j.journal", "--status", "claimed,bogus")
    assert result.returncode == 2 and result.stdout == ""
    assert "'bogus'" in result.stderr
    for status in ("pending", "claimed", "in_progress", "failed", "invalid", "released"):
        assert status in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
