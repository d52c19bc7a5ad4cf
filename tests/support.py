"""Shared test helpers: a fake clock, a sandbox served over loopback and a real aiobotocore client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from botocore.exceptions import ClientError
from types_aiobotocore_connect import ConnectClient

from bulkclaim.connect import ClientSettings, connect_client
from bulkclaim.sandbox import API_NAMES, TEST_CREDENTIALS, Sandbox, SandboxConfig, ThrottleConfig, serve

INSTANCE_ID = SandboxConfig().instance_ids[0]


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class SandboxEnv:
    sandbox: Sandbox
    endpoint_url: str

    @property
    def settings(self) -> ClientSettings:
        return ClientSettings(region=self.sandbox.config.region, endpoint_url=self.endpoint_url,
                              aws_access_key_id=TEST_CREDENTIALS.access_key_id,
                              aws_secret_access_key=TEST_CREDENTIALS.secret_access_key)

    @asynccontextmanager
    async def client(self, **overrides: Any) -> AsyncIterator[ConnectClient]:
        async with connect_client(replace(self.settings, **overrides)) as client:
            yield client


@asynccontextmanager
async def sandbox_env(config: SandboxConfig | None = None, clock: FakeClock | None = None,
                      **changes: Any) -> AsyncIterator[SandboxEnv]:
    """Serve a sandbox on a free loopback port; ``changes`` are applied to the config.

    Throttling is off unless the test sets ``throttle``: most tests are about something else.
    """
    changes.setdefault("throttle", {api: ThrottleConfig(rate=None) for api in API_NAMES})
    config = replace(config or SandboxConfig(), **changes)
    sandbox = Sandbox(config, clock=clock) if clock is not None else Sandbox(config)
    async with serve(sandbox) as running:
        yield SandboxEnv(sandbox, running.endpoint_url)


def error_of(exc: ClientError) -> tuple[str, int, str]:
    """(error code, HTTP status, message) as botocore surfaces them."""
    error = exc.response.get("Error", {})
    return (error.get("Code", ""), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
            error.get("Message", ""))
