"""Journal faults through the real CLI: each a clear message and a non-zero exit, never a silent restart.

Also the security hygiene promises: the journal and reports are private (0600) and no credential
ever reaches the logs, the reports or the journal.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest

from bulkclaim.sandbox import API_NAMES, InventorySpec, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_cli import BULKCLAIM, cli_env, run_cli

pytestmark = pytest.mark.anyio

NUMBERS = [s.phone_number for s in generate(InventorySpec(count=300))]


def claim(journal: Path, numbers: Path, *extra: str) -> list[str]:
    return ["claim", str(numbers), "--instance-id", INSTANCE_ID, "--journal", str(journal), "--rate", "500",
            "--burst", "50", "--verify-timeout", "5", "--log-format", "json", *extra]


@pytest.fixture
async def env() -> SandboxEnv:  # type: ignore[misc]
    fast = {api: ThrottleConfig(rate=500.0, burst=50) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0) as running:
        yield running


def numbers_file(tmp_path: Path, count: int = 5) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(NUMBERS[:count]) + "\n", encoding="utf-8")
    return path


def one_clear_line(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("bulkclaim: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for part in parts:
        assert part in errors[0]
    assert "Traceback" not in result.stderr


async def test_corrupt_journal_is_refused_and_left_untouched(env: SandboxEnv, tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    journal.write_bytes(os.urandom(8192))
    before = journal.read_bytes()
    result = await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path)))
    one_clear_line(result, 2, str(journal), "corrupt")
    assert journal.read_bytes() == before
    assert env.sandbox.ledger == []


async def test_truncated_journal_is_refused_not_restarted(env: SandboxEnv, tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    assert (await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path)))).returncode == 0
    (tmp_path / "j.journal-wal").unlink(missing_ok=True)
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) // 3])
    result = await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path)))
    assert result.returncode in (2, 3)
    assert "journal" in result.stderr and "Traceback" not in result.stderr
    assert len(env.sandbox.ledger) == 5, "nothing claimed again from scratch"


async def test_journal_from_a_newer_bulkclaim_is_refused(env: SandboxEnv, tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    assert (await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path)))).returncode == 0
    with sqlite3.connect(journal) as conn:
        conn.execute("PRAGMA user_version=99")
    result = await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path)))
    one_clear_line(result, 2, "newer bulkclaim", "schema 99")


async def test_a_foreign_sqlite_file_is_refused(env: SandboxEnv, tmp_path: Path) -> None:
    journal = tmp_path / "app.db"
    with sqlite3.connect(journal) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    result = await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path)))
    one_clear_line(result, 2, "not a bulkclaim journal")


async def test_a_directory_where_nothing_can_be_created(env: SandboxEnv, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files even to root
        read_only = Path("/sys")
        if not read_only.is_dir():  # noqa: ASYNC240 - a stat, in a test
            pytest.skip("no read-only directory to use")
    else:
        read_only = tmp_path / "locked"
        read_only.mkdir(mode=0o500)
    result = await run_cli(env, tmp_path, *claim(read_only / "bulkclaim-test.journal", numbers_file(tmp_path)))
    one_clear_line(result, 2, "journal")
    assert env.sandbox.ledger == []


async def test_a_full_disk_is_a_clear_error_and_the_journal_stays_usable(env: SandboxEnv, tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    source = numbers_file(tmp_path, 300)

    def small_disk() -> None:  # writes beyond 96 KiB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))

    process = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [*BULKCLAIM, *claim(journal, source)], cwd=tmp_path, env=cli_env(env), capture_output=True, text=True,
        preexec_fn=small_disk, timeout=120, check=False))
    assert process.returncode in (2, 3), process.stderr[-2000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("bulkclaim: error:")]
    assert errors and "journal" in errors[0], process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    executed = len(env.sandbox.ledger)
    again = await run_cli(env, tmp_path, *claim(journal, source))  # space again: it continues
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(e.phone_number for e in env.sandbox.ledger) == sorted(NUMBERS[:300])
    assert executed <= 300


async def test_a_second_process_on_the_same_journal_is_refused(env: SandboxEnv, tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=20.0, burst=5))
    first = await anyio.open_process([*BULKCLAIM, *claim(journal, numbers_file(tmp_path, 100), "--rate", "20",
                                                         "--burst", "5")], cwd=tmp_path, env=cli_env(env))
    async with first:
        with anyio.fail_after(30):
            while not env.sandbox.ledger:  # noqa: ASYNC110 - the first run is under way
                await anyio.sleep(0.02)
        second = await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path, 100)))
        first.terminate()
        await first.wait()
    one_clear_line(second, 2, "in use by another bulkclaim process")


async def test_no_path_trick_lets_a_second_process_into_a_journal_in_use(env: SandboxEnv, tmp_path: Path) -> None:
    # The lock is on the journal itself: deleting a lock file beside it, or coming by a hard link or
    # a symlink, reaches the same locked file.
    journal = tmp_path / "j.journal"
    env.sandbox.set_throttle("ClaimPhoneNumber", ThrottleConfig(rate=20.0, burst=5))
    first = await anyio.open_process([*BULKCLAIM, *claim(journal, numbers_file(tmp_path, 100), "--rate", "20",
                                                         "--burst", "5")], cwd=tmp_path, env=cli_env(env))
    async with first:
        with anyio.fail_after(30):
            while not env.sandbox.ledger:  # noqa: ASYNC110 - the first run is under way
                await anyio.sleep(0.02)
        Path(f"{journal}.lock").unlink(missing_ok=True)  # noqa: ASYNC240 - a test's own file
        (tmp_path / "linked.journal").hardlink_to(journal)
        (tmp_path / "symlinked.journal").symlink_to(journal)
        refusals = [await run_cli(env, tmp_path, *claim(tmp_path / name, numbers_file(tmp_path, 100)))
                    for name in ("j.journal", "linked.journal", "symlinked.journal")]
        first.terminate()
        await first.wait()
    for refused in refusals:
        one_clear_line(refused, 2, "in use by another bulkclaim process")


async def _finished_journal(env: SandboxEnv, tmp_path: Path) -> Path:
    journal = tmp_path / "journal" / "j.journal"
    journal.parent.mkdir()
    result = await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in journal.parent.iterdir()) == ["j.journal"]
    return journal


async def test_status_and_report_create_nothing_beside_a_finished_journal(env: SandboxEnv, tmp_path: Path) -> None:
    journal = await _finished_journal(env, tmp_path)
    status = await run_cli(env, tmp_path, "status", "--journal", str(journal), "--json")
    report = await run_cli(env, tmp_path, "report", "--journal", str(journal))
    assert (status.returncode, report.returncode) == (0, 0), status.stderr + report.stderr
    assert '"claimed": 5' in status.stdout
    assert report.stdout.count('"status": "claimed"') == 5
    assert sorted(p.name for p in journal.parent.iterdir()) == ["j.journal"]


def _read_only_mount_works() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _read_only_mount_works(), reason="needs unshare -m (root in a mount namespace)")
async def test_status_and_report_read_a_finished_journal_on_read_only_media(env: SandboxEnv, tmp_path: Path) -> None:
    journal = await _finished_journal(env, tmp_path)
    media = tmp_path / "media"
    media.mkdir()
    # In a private mount namespace: the journal's directory mounted read-only (root ignores modes).
    script = (f"mount --bind {journal.parent} {media} && mount -o remount,bind,ro {media} && "
              f"touch {media}/probe 2>/dev/null && exit 99; "
              f'"$0" -m bulkclaim status --journal {media}/j.journal --json && '
              f'"$0" -m bulkclaim report --journal {media}/j.journal')
    done = await anyio.run_process(["unshare", "-m", "sh", "-c", script, BULKCLAIM[0]], cwd=tmp_path,
                                   env=cli_env(env), check=False)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert '"claimed": 5' in out
    assert out.count('"status": "claimed"') == 5


async def test_credentials_never_reach_logs_reports_or_the_journal(env: SandboxEnv, tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    secret = env.settings.aws_secret_access_key or "unset"
    token = "FQoGZXIvYXdzEXAMPLESESSIONTOKENvalue"
    result = await run_cli(env, tmp_path, *claim(journal, numbers_file(tmp_path), "--report", "r.csv"),
                           AWS_SESSION_TOKEN=token)
    assert result.returncode == 0, result.stderr[-2000:]
    for path in [journal, tmp_path / "r.csv", *tmp_path.glob("j.journal*")]:  # noqa: ASYNC240
        data = path.read_bytes()
        assert secret.encode() not in data and token.encode() not in data, path
    assert secret not in result.stdout + result.stderr and token not in result.stdout + result.stderr
    assert (tmp_path / "r.csv").stat().st_mode & 0o777 == 0o600
    assert journal.stat().st_mode & 0o777 == 0o600
