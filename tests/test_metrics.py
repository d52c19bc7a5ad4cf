"""Prometheus metrics: a real ``bulkclaim claim`` scraped over HTTP and written as a textfile, the
library's collector in a registry of the host's, and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bulkclaim import Claimer
from bulkclaim.metrics import METRIC_NAMES, ClaimerCollector
from bulkclaim.sandbox import API_NAMES, InventorySpec, ThrottleConfig
from bulkclaim.sandbox.inventory import generate
from bulkclaim.telemetry import LATENCY_BUCKETS, Telemetry
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env
from tests.test_cli import BULKCLAIM, cli_env, write_numbers

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
NUMBERS = [s.phone_number for s in generate(InventorySpec(count=12))]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(exposition: str) -> Samples:
    """Every sample of a text exposition, keyed by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


def no_phone_number_in(exposition: str, numbers: list[str]) -> None:
    for number in numbers:
        assert number not in exposition and number.lstrip("+") not in exposition


async def _events(stream: ByteReceiveStream) -> AsyncIterator[dict[str, object]]:
    """The JSON log lines of a process's stderr, as they come."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"{"):
                yield json.loads(line)


async def _wait_for(events: AsyncIterator[dict[str, object]], name: str) -> dict[str, object]:
    async for event in events:
        if event["event"] == name:
            return event
    raise AssertionError(f"the process ended without logging {name}")


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text: str = answer.read().decode()
        return text


@pytest.fixture
async def throttling() -> AsyncIterator[SandboxEnv]:
    """Claims throttled at 20/s with a burst of 3: a client bursting 9 at once gets 429s."""
    async with sandbox_env(claim_delay=0.0, throttle={**{api: ThrottleConfig(rate=None) for api in API_NAMES},
                                                      "ClaimPhoneNumber": ThrottleConfig(rate=20.0, burst=3)}) as env:
        yield env


async def test_a_claim_run_serves_its_metrics_and_writes_them_as_a_textfile(throttling: SandboxEnv,
                                                                            tmp_path: Path) -> None:
    numbers = write_numbers(tmp_path / "numbers.txt", NUMBERS)
    textfile = tmp_path / "bulkclaim.prom"
    args = ["claim", str(numbers), "--instance-id", INSTANCE_ID, "--rate", "20", "--burst", "10", "--verify-timeout",
            "5", "--log-format", "json", "--metrics-port", "0", "--metrics-linger", "120", "--metrics-textfile",
            str(textfile), "--metrics-interval", "0.2"]
    async with await anyio.open_process([*BULKCLAIM, *args], cwd=tmp_path, env=cli_env(throttling)) as process:
        assert process.stderr is not None
        events = _events(process.stderr)
        url = str((await _wait_for(events, "metrics.serving"))["url"])
        assert url.startswith("http://127.0.0.1:")
        await _wait_for(events, "metrics.lingering")  # the run, its report and the last textfile are done
        exposition = await anyio.to_thread.run_sync(_scrape, url)
        process.send_signal(signal.SIGTERM)  # ends the linger: the exit code stays the run's
        async for _ in events:
            pass
        assert await process.wait() == 0

    found = samples(exposition)
    assert value(found, "bulkclaim_numbers_total", status="claimed") == len(NUMBERS)
    assert sum(v for (name, _), v in found.items() if name == "bulkclaim_numbers_total") == len(NUMBERS)
    assert value(found, "bulkclaim_numbers_remaining") == 0
    assert value(found, "bulkclaim_lease_takeovers_total") == 0
    # Every request the sandbox received, counted by API and outcome; the burst was throttled.
    for api, received in throttling.sandbox.stats().items():
        if api in API_NAMES:
            counted = {o: value(found, "bulkclaim_requests_total", api=api, outcome=o)
                       for o in ("ok", "throttled", "error")}
            assert counted["ok"] == received.get("ok", 0)
            assert counted["throttled"] == received.get("ThrottlingException", 0)
            assert sum(counted.values()) == sum(received.values())
            assert value(found, "bulkclaim_request_duration_seconds_count", api=api) == sum(received.values())
            assert value(found, "bulkclaim_request_duration_seconds_bucket", api=api, le="+Inf") == sum(
                received.values())
    assert value(found, "bulkclaim_requests_total", api="ClaimPhoneNumber", outcome="ok") == len(NUMBERS)
    assert value(found, "bulkclaim_requests_total", api="ClaimPhoneNumber", outcome="throttled") > 0
    assert value(found, "bulkclaim_rate_ceiling_per_second", api="ClaimPhoneNumber", budget="process") == 20
    assert 0 < value(found, "bulkclaim_rate_limit_per_second", api="ClaimPhoneNumber", budget="process") <= 20
    no_phone_number_in(exposition, NUMBERS)

    _check_textfile(textfile, found)


def _check_textfile(textfile: Path, found: Samples) -> None:
    assert samples(textfile.read_text()) == found  # the final textfile holds the final counts
    assert textfile.stat().st_mode & 0o777 == 0o644  # node_exporter may run as another user
    assert [p.name for p in textfile.parent.iterdir() if ".partial" in p.name] == []


async def test_the_library_collector_registers_in_the_hosts_registry(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    async with sandbox_env(claim_delay=0.0) as env, Claimer(journal=tmp_path / "j.journal", instance_id=INSTANCE_ID,
                                                            client_settings=env.settings) as claimer:
        registry.register(claimer.metrics_collector())
        with pytest.raises(ValueError, match="Duplicated"):  # one collector per registry: its names are taken
            registry.register(ClaimerCollector(claimer))
        outcomes = [o async for o in claimer.claim_many([*NUMBERS[:5], "not a number"])]
        single = await claimer.claim(NUMBERS[5])
        exposition = generate_latest(registry).decode()
    assert {o.status.value for o in outcomes} == {"claimed", "invalid"} and single.status.value == "claimed"
    assert {family.name for family in text_string_to_metric_families(exposition)} == set(METRIC_NAMES)
    found = samples(exposition)
    assert value(found, "bulkclaim_numbers_total", status="claimed") == 6
    assert value(found, "bulkclaim_numbers_total", status="invalid") == 1
    assert value(found, "bulkclaim_numbers_remaining") == 0
    assert value(found, "bulkclaim_requests_total", api="ClaimPhoneNumber", outcome="ok") == 6
    assert value(found, "bulkclaim_requests_total", api="ClaimPhoneNumber", outcome="throttled") == 0
    assert value(found, "bulkclaim_rate_limit_per_second", api="ClaimPhoneNumber", budget="process") == 2  # default
    no_phone_number_in(exposition, NUMBERS)
    # Nothing was registered anywhere else.
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("bulkclaim")]


def test_telemetry_counts_runs_once_they_end_and_buckets_latencies() -> None:
    from bulkclaim.run import RunState

    telemetry = Telemetry()
    state = RunState()
    state.summary.to_send = 3
    with telemetry.tracking(state):
        state.summary.statuses["claimed"] += 1
        assert telemetry.numbers() == {"claimed": 1} and telemetry.remaining() == 2
    assert telemetry.numbers() == {"claimed": 1} and telemetry.remaining() == 0  # kept, and no longer live
    telemetry.request("ClaimPhoneNumber", "ok", 0.004)
    telemetry.request("ClaimPhoneNumber", "throttled", 0.3)
    telemetry.request("ClaimPhoneNumber", "error", 99.0)
    latency = telemetry.latencies()["ClaimPhoneNumber"]
    assert latency.cumulative[0] == 1 and latency.cumulative[LATENCY_BUCKETS.index(0.5)] == 2
    assert latency.cumulative[-1] == 3 and latency.total_seconds == pytest.approx(99.304)
    assert telemetry.requests() == {("ClaimPhoneNumber", o): 1 for o in ("ok", "throttled", "error")}


def test_the_grafana_dashboard_queries_every_metric_and_only_those_that_exist() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "bulkclaim.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries.append(dashboard["templating"]["list"][1]["definition"])
    exposed = {name + suffix: name for name in METRIC_NAMES for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    used = {name for query in queries for name in re.findall(r"\bbulkclaim_\w+", query)}
    assert used <= set(exposed), sorted(used - set(exposed))
    assert {exposed[name] for name in used} == set(METRIC_NAMES)
