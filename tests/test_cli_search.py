"""``bulkclaim search`` as users run it: the real entry point in a subprocess, against the sandbox.

The file it writes must be a ``bulkclaim claim`` input as it is; a path it cannot write is refused
before any request; a short inventory is exit 1, a refusal by the service exit 3 (DESIGN §4).
"""

from __future__ import annotations

import csv
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bulkclaim.sandbox import API_NAMES, InventorySpec, ThrottleConfig
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_cli import assert_once, claim_args, no_traceback, run_cli

pytestmark = pytest.mark.anyio

SEARCH = "SearchAvailablePhoneNumbers"


@pytest.fixture
async def env() -> AsyncIterator[SandboxEnv]:
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    inventory = (InventorySpec(prefix="+1206", count=60), InventorySpec(prefix="+1425", count=13),
                 InventorySpec(type="TOLL_FREE", prefix="+1800", count=10))
    async with sandbox_env(throttle=fast, claim_delay=0.0, inventory=inventory) as running:
        yield running


def search_args(output: str, *, count: int, prefix: str = "+1206", instance_id: str = INSTANCE_ID) -> list[str]:
    return ["search", "--instance-id", instance_id, "--country", "US", "--type", "DID", "--prefix", prefix,
            "--count", str(count), "--output", output, "--rate", "200", "--burst", "20", "--log-format", "json"]


def searches(env: SandboxEnv) -> int:
    return sum(env.sandbox.stats().get(SEARCH, {}).values())


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def numbers_in(path: Path) -> list[str]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [row["phone_number"] for row in csv.DictReader(handle)]
    return [json.loads(line)["phone_number"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", ["numbers.csv", "numbers.jsonl"])
async def test_search_pages_until_count_and_claim_takes_the_file_as_it_is(env: SandboxEnv, tmp_path: Path,
                                                                        name: str) -> None:
    found = await run_cli(env, tmp_path, *search_args(name, count=25))
    no_traceback(found)
    assert found.returncode == 0, found.stderr
    assert f"found 25 available US DID numbers starting +1206; wrote them to {name}" in found.stdout
    output = tmp_path / name
    numbers = numbers_in(output)
    assert len(numbers) == len(set(numbers)) == 25 and all(n.startswith("+1206") for n in numbers)
    assert searches(env) == 3, "10 + 10 + 5: pages of at most 10, the last one only as large as needed"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert files(tmp_path) == [name], "no staging file left behind"
    assert env.sandbox.ledger == [], "searching claims nothing"

    claimed = await run_cli(env, tmp_path, *claim_args(output))
    assert claimed.returncode == 0, claimed.stderr
    assert_once(env, numbers)


async def test_search_short_of_count_writes_what_it_found_and_exits_1(env: SandboxEnv, tmp_path: Path) -> None:
    found = await run_cli(env, tmp_path, *search_args("numbers.csv", count=20, prefix="+1425"))
    no_traceback(found)
    assert found.returncode == 1, found.stderr
    assert "found only 13 of 20 available US DID numbers starting +1425: the inventory has no more" in found.stdout
    assert len(numbers_in(tmp_path / "numbers.csv")) == 13


async def test_search_refuses_an_output_it_cannot_write_before_any_request(env: SandboxEnv, tmp_path: Path) -> None:
    missing = await run_cli(env, tmp_path, *search_args("no/such/dir/numbers.csv", count=5))
    assert missing.returncode == 2, missing.stderr
    assert "no/such/dir/numbers.csv: no/such/dir: no such directory" in missing.stderr
    unknown = await run_cli(env, tmp_path, *search_args("numbers.xlsx", count=5))
    assert unknown.returncode == 2 and "--format" in unknown.stderr, unknown.stderr
    (tmp_path / "a-directory.csv").mkdir()
    directory = await run_cli(env, tmp_path, *search_args("a-directory.csv", count=5))
    assert directory.returncode == 2, directory.stderr
    untargeted = await run_cli(env, tmp_path, *[a for a in search_args("n.csv", count=5) if a != INSTANCE_ID
                                                and a != "--instance-id"])
    assert untargeted.returncode == 2 and "--instance-id or --target-arn" in untargeted.stderr
    for result in (missing, unknown, directory, untargeted):
        no_traceback(result)
    assert searches(env) == 0
    assert files(tmp_path) == ["a-directory.csv"]


async def test_search_refused_by_the_service_exits_3_and_writes_nothing(env: SandboxEnv, tmp_path: Path) -> None:
    (tmp_path / "numbers.csv").write_text("phone_number\n+12062000000\n", encoding="utf-8")
    refused = await run_cli(env, tmp_path, *search_args("numbers.csv", count=5,
                                                        instance_id="00000000-0000-0000-0000-000000000000"))
    no_traceback(refused)
    assert refused.returncode == 3, refused.stderr
    assert "aborted: InvalidParameterException" in refused.stderr and "nothing written" in refused.stderr
    assert (tmp_path / "numbers.csv").read_text(encoding="utf-8") == "phone_number\n+12062000000\n", "left as it was"
    assert files(tmp_path) == ["numbers.csv"]
