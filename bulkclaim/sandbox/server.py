"""Running a sandbox on a local socket, in-process (tests, benchmarks, the demo) or for the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from bulkclaim.sandbox.app import Sandbox
from bulkclaim.sandbox.config import SandboxConfig

__all__ = ["RunningSandbox", "serve"]


@dataclass(frozen=True)
class RunningSandbox:
    """A sandbox being served: where to reach it, and the object itself for inspection."""

    endpoint_url: str
    sandbox: Sandbox


@asynccontextmanager
async def serve(
    sandbox: Sandbox | SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSandbox]:
    """Serve ``sandbox`` (or a new one built from a config) until the block exits.

    ``port=0`` picks a free port; the chosen one is in ``endpoint_url``. Binds loopback by default.
    """
    if not isinstance(sandbox, Sandbox):
        sandbox = Sandbox(sandbox)
    runner = web.AppRunner(sandbox.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield RunningSandbox(f"http://{shown_host}:{bound_port}", sandbox)
    finally:
        await runner.cleanup()
