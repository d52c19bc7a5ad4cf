"""Metrics of every command that sends requests, through the real entry point (``--metrics-textfile``):
numbers by status for ``acquire`` and ``release`` too, and on a PostgreSQL journal the shared rate (the
journal's, not a limiter of the process's own) and the numbers taken over from a killed worker."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from bulkclaim.sandbox import API_NAMES, ThrottleConfig
from tests.postgres import PgServer
from tests.support import SandboxEnv, sandbox_env
from tests.test_cli import BULKCLAIM, cli_env, run_cli, write_numbers
from tests.test_cli_quota import acquire_args
from tests.test_metrics import NUMBERS, no_phone_number_in, samples, value
from tests.workers import holders, query, until, worker_args

pytestmark = pytest.mark.anyio


async def test_acquire_and_release_count_their_numbers_by_status(tmp_path: Path) -> None:
    async with sandbox_env(claim_delay=0.0) as env:
        acquired_prom = tmp_path / "acquire.prom"
        acquired = await run_cli(env, tmp_path, *acquire_args(3, "--journal", "j.journal", "--metrics-textfile",
                                                              str(acquired_prom)))
        assert acquired.returncode == 0, acquired.stderr[-1500:]
        numbers = acquired.stdout.split(":", 1)[1].split()
        assert len(numbers) == 3
        found = samples(acquired_prom.read_text())
        assert value(found, "bulkclaim_numbers_total", status="claimed") == 3
        assert value(found, "bulkclaim_numbers_remaining") == 0

        released_prom = tmp_path / "release.prom"
        released = await run_cli(env, tmp_path, "release", "--journal", "j.journal", "--yes", "--metrics-textfile",
                                 str(released_prom))
        assert released.returncode == 0 and "released 3 of 3" in released.stdout, released.stderr[-1500:]
        found = samples(released_prom.read_text())
        assert value(found, "bulkclaim_numbers_total", status="released") == 3
        assert value(found, "bulkclaim_numbers_remaining") == 0
        assert value(found, "bulkclaim_requests_total", api="ReleasePhoneNumber", outcome="ok") == 3
    for prom in (acquired_prom, released_prom):
        no_phone_number_in(prom.read_text(), numbers)


async def test_a_worker_shows_the_shared_rate_and_the_numbers_it_took_over(postgres: PgServer,
                                                                           tmp_path: Path) -> None:
    url = postgres.fresh_url() + "&lease_ttl=0.3"
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS)
    # told 20/s: the account's bucket (5/s, burst 2) answers 429s, and the shared rate comes down
    throttle = {**{api: ThrottleConfig(rate=None) for api in API_NAMES},
                "ClaimPhoneNumber": ThrottleConfig(rate=5.0, burst=2)}
    async with sandbox_env(claim_delay=1.0, throttle=throttle) as env:
        orphaned = await _killed_holding_numbers(env, url, numbers, tmp_path)
        prom = tmp_path / "worker.prom"
        survivor = await run_cli(env, tmp_path, *worker_args(url, numbers, tmp_path / "report.jsonl", "20", "5"),
                                 "--metrics-textfile", str(prom))
        assert survivor.returncode == 0, survivor.stderr[-1500:]
    exposition = prom.read_text()
    found = samples(exposition)
    assert value(found, "bulkclaim_lease_takeovers_total") == orphaned
    assert value(found, "bulkclaim_numbers_total", status="claimed") == len(NUMBERS)
    assert value(found, "bulkclaim_requests_total", api="ClaimPhoneNumber", outcome="throttled") > 0
    ((shared,),) = query(url, "SELECT rate FROM rate_budget WHERE key LIKE ?", "%/ClaimPhoneNumber")
    shown = value(found, "bulkclaim_rate_limit_per_second", api="ClaimPhoneNumber", budget="shared")
    assert shown == pytest.approx(shared) and shown < 20, "the journal's shared rate, cut by the 429s"
    assert value(found, "bulkclaim_rate_ceiling_per_second", api="ClaimPhoneNumber", budget="shared") == 20
    no_phone_number_in(exposition, NUMBERS)


async def _killed_holding_numbers(env: SandboxEnv, url: str, numbers: Path, tmp_path: Path) -> int:
    """A worker SIGKILLed while it holds unfinished numbers: how many it held."""
    args = worker_args(url, numbers, tmp_path / "killed.jsonl", "20", "5")
    async with await anyio.open_process([*BULKCLAIM, *args], cwd=tmp_path, env=cli_env(env)) as process:
        await until(lambda: holders(url, 1))
        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    (victim,) = query(url, "SELECT id FROM workers WHERE pid=?", process.pid)
    (orphaned,) = query(url, "SELECT count(*) FROM numbers WHERE lease_owner=? AND status IN "
                             "('pending', 'in_progress')", victim[0])
    assert orphaned[0] > 0
    return int(orphaned[0])
