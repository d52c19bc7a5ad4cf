"""Fail fast when the answer is already certain: an unreachable endpoint, an answer that never
completes, a dry run that can tell the run would stop, a report path that cannot be written.

The gate's logic runs on a fake clock against a stand-in client; the rest is the real entry point
in a subprocess against the sandbox (and small TCP proxies in front of it) over loopback.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

from bulkclaim import Backoff, Claimer, EndpointUnreachableError, Options, RateSettings, Status
from bulkclaim.calls import Api, CallFailed
from bulkclaim.connect import Verdict, classify
from bulkclaim.outage import FIRST_CONTACT, PROBE_BACKOFF
from bulkclaim.ratelimit import Limiter
from bulkclaim.sandbox import API_NAMES, InventorySpec, Sandbox, SandboxConfig, ThrottleConfig, serve
from bulkclaim.sandbox.inventory import generate
from tests.support import INSTANCE_ID, FakeClock, SandboxEnv, sandbox_env

pytestmark = pytest.mark.anyio

BULKCLAIM = [sys.executable, "-m", "bulkclaim"]
NUMBERS = [s.phone_number for s in generate(InventorySpec(count=80))]
ENDPOINT = "https://connect.test"


# -- the gate, on a fake clock ---------------------------------------------------------------------------

class FlakyClient:
    """A Connect client stand-in: answers the first ``answered_first`` calls, then refuses connections
    ``refusals`` times (``None``: for good), then answers again. Counts how many refused calls overlap."""

    def __init__(self, *, answered_first: int = 0, refusals: int | None = None) -> None:
        self.answered_first = answered_first
        self.refusals = refusals
        self.calls = 0
        self.refused = 0
        self.in_flight = 0
        self.overlap_while_down = 0
        self.tokens: dict[str, set[str]] = {}
        self.first_refusal = anyio.Event()

    @property
    def down(self) -> bool:
        return self.calls > self.answered_first and (self.refusals is None or self.refused < self.refusals)

    async def claim_phone_number(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.in_flight += 1
        try:
            if self.down:
                self.overlap_while_down = max(self.overlap_while_down, self.in_flight)
                for _ in range(3):  # a connect attempt takes a while: overlapping calls would show
                    await anyio.lowlevel.checkpoint()
                self.refused += 1
                self.first_refusal.set()
                raise EndpointConnectionError(endpoint_url=ENDPOINT)
            await anyio.lowlevel.checkpoint()
            number = params["PhoneNumber"]
            self.tokens.setdefault(number, set()).add(params["ClientToken"])
            return {"PhoneNumberId": f"id{number}", "PhoneNumberArn": f"arn:id{number}"}
        finally:
            self.in_flight -= 1


def fake_sleep(clock: FakeClock) -> Any:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await anyio.lowlevel.checkpoint()
    return sleep


def make_api(client: FlakyClient, clock: FakeClock, **kwargs: Any) -> Api:
    sleep = fake_sleep(clock)
    limiters = {"ClaimPhoneNumber": Limiter("ClaimPhoneNumber", 1000.0, 100, clock=clock, sleep=sleep)}
    return Api(client, limiters, sleep=sleep, clock=clock, endpoint=ENDPOINT, rng=random.Random(7), **kwargs)


async def claim(api: Api, number: str) -> dict[str, Any]:
    return await api.send("ClaimPhoneNumber", "claim_phone_number", PhoneNumber=number, ClientToken=f"t{number}")


async def test_while_the_endpoint_is_down_one_probe_at_a_time_and_no_request_fails(clock: FakeClock) -> None:
    client = FlakyClient(answered_first=1, refusals=12)
    api = make_api(client, clock)
    await claim(api, "+1")  # answered: the endpoint is trusted, requests no longer go one at a time
    answers: dict[str, dict[str, Any]] = {}

    async def one(number: str) -> None:
        answers[number] = await claim(api, number)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "+2")
        await client.first_refusal.wait()
        assert api.gate.down
        for n in range(3, 13):
            tg.start_soon(one, f"+{n}")
    assert len(answers) == 11, "every request was answered once the endpoint came back: none failed"
    assert client.overlap_while_down == 1, "while down, only one probe is in flight"
    assert client.refused == 12 and client.calls == 1 + 12 + 11, "the waiters sent nothing until it was back"
    assert not api.gate.down
    assert all(tokens == {f"t{n}"} for n, tokens in client.tokens.items()), "the same token, sent again"


async def test_a_never_reached_endpoint_is_given_up_after_a_few_probes(clock: FakeClock) -> None:
    client = FlakyClient()
    api = make_api(client, clock)
    start = clock()
    failures: list[BaseException] = []

    async def one(number: str) -> None:
        try:
            await claim(api, number)
        except EndpointUnreachableError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(one, f"+{n}")
    assert len(failures) == 20 and all(f is failures[0] for f in failures)
    error = failures[0]
    assert isinstance(error, EndpointUnreachableError) and not error.ever_answered
    assert error.endpoint == ENDPOINT and "Could not connect" in error.cause
    assert FIRST_CONTACT <= clock() - start <= FIRST_CONTACT + PROBE_BACKOFF.cap
    assert client.calls == client.refused < 40, "a few probes, not 20 numbers x 8 attempts"
    assert client.overlap_while_down == 1
    with pytest.raises(EndpointUnreachableError):  # the breaker stays open (fatal_cooldown=None)
        await claim(api, "+99")
    assert client.calls == client.refused


async def test_an_endpoint_that_answered_before_is_waited_for_longer_than_a_first_contact(clock: FakeClock) -> None:
    client = FlakyClient(answered_first=1, refusals=15)
    api = make_api(client, clock, outage_timeout=120.0)
    await claim(api, "+1")
    start = clock()
    assert (await claim(api, "+2"))["PhoneNumberId"] == "id+2"
    assert FIRST_CONTACT < clock() - start < 120.0, "ridden through: longer than a first contact, within the timeout"


async def test_an_outage_longer_than_the_timeout_is_fatal(clock: FakeClock) -> None:
    client = FlakyClient(answered_first=1)
    api = make_api(client, clock, outage_timeout=120.0)
    await claim(api, "+1")
    start = clock()
    with pytest.raises(EndpointUnreachableError) as raised:
        await claim(api, "+2")
    assert raised.value.ever_answered and 120.0 <= clock() - start <= 120.0 + PROBE_BACKOFF.cap
    assert "unreachable for" in str(raised.value)
    assert client.tokens == {"+1": {"t+1"}}


async def test_a_library_api_probes_again_after_the_cooldown(clock: FakeClock) -> None:
    client = FlakyClient()
    api = make_api(client, clock, fatal_cooldown=60.0)
    with pytest.raises(EndpointUnreachableError):
        await claim(api, "+1")
    clock.advance(60.0)
    client.refusals = client.refused  # the endpoint is back
    assert (await claim(api, "+1"))["PhoneNumberId"] == "id+1"


async def test_numbers_do_not_spend_attempts_during_an_outage(clock: FakeClock, tmp_path: Path) -> None:
    client = FlakyClient(answered_first=1, refusals=20)  # 20 refusals, where a number has 3 attempts
    async with Claimer(instance_id=INSTANCE_ID, journal=tmp_path / "j", client=client, clock=clock,
                       sleep=fake_sleep(clock), rng=random.Random(7), rates=RateSettings(1000.0, 100),
                       options=Options(verify=False), backoff=Backoff(max_attempts=3)) as claimer:
        outcomes = [o async for o in claimer.claim_many(NUMBERS[:10])]
    assert {o.status for o in outcomes} == {Status.IN_PROGRESS}, "accepted, none left pending or failed"
    assert {o.attempts for o in outcomes} == {1}
    assert (client.refused, client.calls) == (20, 1 + 20 + 9), "refused probes, then each number once"
    assert all(len(tokens) == 1 for tokens in client.tokens.values())


async def test_a_call_is_bounded_as_a_whole_and_is_an_unknown_outcome() -> None:
    class Stalled:
        async def claim_phone_number(self, **params: Any) -> dict[str, Any]:
            await anyio.sleep_forever()
            raise AssertionError

    api = Api(Stalled(), {"ClaimPhoneNumber": Limiter("ClaimPhoneNumber", 1000.0, 10)}, answer_timeout=0.05)
    with pytest.raises(CallFailed) as raised:
        await api.send("ClaimPhoneNumber", "claim_phone_number", PhoneNumber="+1", ClientToken="t")
    assert raised.value.classified.verdict == Verdict.RETRY
    assert raised.value.classified.code == "ReadTimeoutError"
    assert not api.gate.down, "a request that may have reached the service is not evidence of an outage"


def test_only_a_connection_that_could_not_be_opened_is_an_outage() -> None:
    refused = EndpointConnectionError(endpoint_url=ENDPOINT, error=ConnectionRefusedError(111, "refused"))
    assert classify(refused).unreachable and "Connection refused" in classify(refused).message
    assert classify(ConnectTimeoutError(endpoint_url=ENDPOINT)).unreachable
    reset = EndpointConnectionError(endpoint_url=ENDPOINT, error=aiohttp.ClientOSError(104, "reset"))
    assert classify(reset).verdict == Verdict.RETRY and not classify(reset).unreachable


# -- the command line -----------------------------------------------------------------------------------

def environ(endpoint_url: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BULKCLAIM_"))}
    config = SandboxConfig()
    credentials = config.credentials[0]
    return {**base, "AWS_ENDPOINT_URL_CONNECT": endpoint_url, "AWS_REGION": config.region,
            "AWS_ACCESS_KEY_ID": credentials.access_key_id, "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "NO_COLOR": "1", **extra}


async def run_cli(endpoint_url: str, cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    result = await anyio.run_process([*BULKCLAIM, *args], cwd=cwd, env=environ(endpoint_url, **extra), check=False)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def numbers_file(tmp_path: Path, numbers: list[str]) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(numbers) + "\n", encoding="utf-8")
    return path


def claim_args(path: Path, *extra: str, rate: float = 200.0, burst: int = 20) -> list[str]:
    return ["claim", str(path), "--instance-id", INSTANCE_ID, "--journal", "j.journal", "--rate", str(rate),
            "--burst", str(burst), "--verify-timeout", "10", "--log-format", "json", *extra]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def journal_rows(path: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT phone_number, status, client_token FROM numbers ORDER BY ord"))


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
async def env() -> AsyncIterator[SandboxEnv]:
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0) as running:
        yield running


async def test_a_closed_port_exits_3_within_a_minute_naming_the_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    path = numbers_file(tmp_path, NUMBERS[:20])
    started = time.monotonic()
    result = await run_cli(endpoint, tmp_path, *claim_args(path, rate=2.0, burst=5))
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr[-2000:]
    assert elapsed < 60
    last = result.stderr.strip().splitlines()[-1]
    assert endpoint in last and "Connection refused" in last and "run the same command again" in last
    no_traceback(result)
    rows = journal_rows(tmp_path / "j.journal")
    assert [r[0] for r in rows] == NUMBERS[:20]
    assert {r[1] for r in rows} == {"pending"} and all(r[2] for r in rows), "pending, each with its token"

    dry = await run_cli(endpoint, tmp_path, *claim_args(path), "--dry-run", "--outage-timeout", "1")
    assert dry.returncode == 3 and endpoint in dry.stderr and "Connection refused" in dry.stderr
    no_traceback(dry)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "InvalidSignatureException"),
        ({"BULKCLAIM_INSTANCE_ID": "00000000-0000-0000-0000-000000000000"}, "ResourceNotFoundException"),
    ],
)
async def test_a_dry_run_that_the_service_would_stop_exits_3(env: SandboxEnv, tmp_path: Path, extra: dict[str, str],
                                                             message: str) -> None:
    path = numbers_file(tmp_path, NUMBERS[:5])
    args = claim_args(path, "--dry-run")
    if "BULKCLAIM_INSTANCE_ID" in extra:
        args = [a for a in args if a not in ("--instance-id", INSTANCE_ID)]
    result = await run_cli(env.endpoint_url, tmp_path, *args, **extra)
    assert result.returncode == 3, result.stderr[-2000:]
    assert message in result.stderr and "nothing was sent" in result.stderr
    assert "would claim" not in result.stdout
    no_traceback(result)
    assert env.sandbox.ledger == []


async def test_a_dry_run_shows_the_rate_and_the_expected_duration(env: SandboxEnv, tmp_path: Path) -> None:
    path = numbers_file(tmp_path, NUMBERS[:25])
    result = await run_cli(env.endpoint_url, tmp_path, *claim_args(path, "--dry-run", rate=2.0, burst=5))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rate:              2 claims/s, burst 5" in result.stdout
    assert "expected duration: 10s for 25 claim(s)" in result.stdout  # (25 - 5) / 2
    assert env.sandbox.ledger == []


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ("missing/r.jsonl", "missing: no such directory"),
        ("subdir", "is a directory"),
        ("numbers.txt/r.csv", "is not a directory"),
        ("/sys/r.csv", "cannot create files in /sys"),  # not writable, even for root (the suite runs as root)
    ],
)
@pytest.mark.parametrize("command", ["claim", "acquire"])
async def test_a_report_path_that_cannot_be_written_exits_2_before_sending(
        env: SandboxEnv, tmp_path: Path, report: str, message: str, command: str) -> None:
    if report.startswith("/sys") and not sys.platform.startswith("linux"):
        pytest.skip("sysfs is Linux's")
    path = numbers_file(tmp_path, NUMBERS[:5])
    (tmp_path / "subdir").mkdir()
    args = claim_args(path) if command == "claim" else [
        "acquire", "--instance-id", INSTANCE_ID, "--country", "US", "--type", "DID", "--count", "2",
        "--journal", "j.journal", "--log-format", "json"]
    result = await run_cli(env.endpoint_url, tmp_path, *args, "--report", report)
    assert result.returncode == 2, result.stderr[-2000:]
    assert report in result.stderr and message in result.stderr
    no_traceback(result)
    assert env.sandbox.ledger == [] and env.sandbox.stats() == {}, "nothing was sent, not even a listing"


class Switchable:
    """A sandbox served on one port that a test can take away and bring back (same state)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.port = 0
        self._serving: AsyncExitStack | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        stack = AsyncExitStack()
        running = await stack.enter_async_context(serve(self.sandbox, port=self.port))
        self.port = int(running.endpoint_url.rsplit(":", 1)[1])
        self._serving = stack

    async def down(self) -> None:
        if self._serving is not None:
            serving, self._serving = self._serving, None
            await serving.aclose()


@asynccontextmanager
async def switchable(rate: float) -> AsyncIterator[Switchable]:
    throttle = {api: ThrottleConfig(rate=None) for api in API_NAMES}
    throttle["ClaimPhoneNumber"] = ThrottleConfig(rate=rate, burst=5)
    server = Switchable(Sandbox(SandboxConfig(throttle=throttle, claim_delay=0.0)))
    await server.up()
    try:
        yield server
    finally:
        await server.down()


class Watched:
    """A running command whose stderr is read as it comes, so a test can wait for a log event."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.stderr = ""
        self._seen: dict[str, anyio.Event] = {}

    async def read(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk.decode()
            for text, event in self._seen.items():
                if text in self.stderr:
                    event.set()

    async def wait_for(self, text: str) -> None:
        event = self._seen.setdefault(text, anyio.Event())
        if text in self.stderr:
            event.set()
        await event.wait()


async def wait_for_claims(server: Switchable, count: int) -> None:
    while len(server.sandbox.ledger) < count:  # noqa: ASYNC110 - polling the sandbox ledger
        await anyio.sleep(0.02)


async def test_an_outage_longer_than_the_timeout_ends_the_run_with_exit_3_and_the_rerun_finishes(
        tmp_path: Path) -> None:
    numbers = NUMBERS[:60]
    path = numbers_file(tmp_path, numbers)
    async with switchable(rate=20.0) as server:
        args = claim_args(path, "--outage-timeout", "2", rate=20.0, burst=5)
        async with await anyio.open_process([*BULKCLAIM, *args], cwd=tmp_path,
                                            env=environ(server.endpoint_url)) as process:
            watched = Watched(process)
            async with anyio.create_task_group() as tg:
                tg.start_soon(watched.read)
                with anyio.fail_after(60):
                    await wait_for_claims(server, 10)
                    await server.down()
                    assert await process.wait() == 3
        assert len(server.sandbox.ledger) < 60
        last = watched.stderr.strip().splitlines()[-1]
        assert server.endpoint_url in last and "unreachable for" in last
        assert "run the same command again" in last and "Nothing was marked failed" in last
        assert "Traceback" not in watched.stderr
        assert {status for _, status, _ in journal_rows(tmp_path / "j.journal")} <= {"pending", "in_progress",
                                                                                     "claimed"}
        await server.up()
        again = await run_cli(server.endpoint_url, tmp_path, *args)
        assert again.returncode == 0, again.stderr[-2000:]
        assert sorted(e.phone_number for e in server.sandbox.ledger) == sorted(numbers), "each claimed once"


async def test_an_outage_shorter_than_the_timeout_is_ridden_through(tmp_path: Path) -> None:
    numbers = NUMBERS[:60]
    path = numbers_file(tmp_path, numbers)
    async with switchable(rate=20.0) as server:
        args = claim_args(path, "--outage-timeout", "60", "--report", "r.jsonl", rate=20.0, burst=5)
        async with await anyio.open_process([*BULKCLAIM, *args], cwd=tmp_path,
                                            env=environ(server.endpoint_url)) as process:
            watched = Watched(process)
            async with anyio.create_task_group() as tg:
                tg.start_soon(watched.read)
                with anyio.fail_after(60):
                    await wait_for_claims(server, 10)
                    await server.down()
                    await watched.wait_for('"endpoint.unreachable"')
                    await server.up()
                    assert await process.wait() == 0, watched.stderr[-3000:]
        assert '"endpoint.reachable"' in watched.stderr
        assert sorted(e.phone_number for e in server.sandbox.ledger) == sorted(numbers), "each claimed once"
        rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert {r["status"] for r in rows} == {"claimed"} and len(rows) == 60


async def dribbling_proxy(upstream_port: int, listener: anyio.abc.Listener[anyio.abc.SocketStream], *, dribble: int,
                          pace: float) -> None:
    """Forward to the sandbox; the first ``dribble`` connections get their answers one byte per ``pace`` s."""
    connections = 0

    async def handle(client: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        slow = connections <= dribble
        async with client, await anyio.connect_tcp("127.0.0.1", upstream_port) as upstream:
            async def pump(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, paced: bool) -> None:
                try:
                    async for chunk in source:
                        for piece in ([chunk[i:i + 1] for i in range(len(chunk))] if paced else [chunk]):
                            await sink.send(piece)
                            if paced:
                                await anyio.sleep(pace)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, upstream, False)
                tg.start_soon(pump, upstream, client, slow)

    await listener.serve(handle)


async def test_read_timeout_bounds_the_whole_answer_and_the_retry_claims_once(env: SandboxEnv, tmp_path: Path) -> None:
    number = NUMBERS[0]
    path = numbers_file(tmp_path, [number])
    upstream_port = int(env.endpoint_url.rsplit(":", 1)[1])
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        # One byte every 0.5 s: each socket read is well within botocore's read timeout, the whole
        # answer (a few hundred bytes) would take minutes.
        tg.start_soon(lambda: dribbling_proxy(upstream_port, listener, dribble=1, pace=0.5))
        started = time.monotonic()
        result = await run_cli(f"http://127.0.0.1:{port}", tmp_path,
                               *claim_args(path, "--no-preflight", "--read-timeout", "2", "--connect-timeout", "1",
                                           "--report", "r.jsonl"))
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    assert result.returncode == 0, result.stderr[-2000:]
    assert elapsed < 45, "abandoned after the read timeout, not after the dribble (minutes)"
    assert [e.phone_number for e in env.sandbox.ledger] == [number], "the retry, same token, claimed it once"
    (row,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert row["status"] == "claimed" and row["attempts"] == 2
