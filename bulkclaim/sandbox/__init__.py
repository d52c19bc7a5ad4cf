"""A local stand-in for Amazon Connect's phone-number API, speaking the real wire protocol.

Use it to rehearse a migration, and in tests and benchmarks::

    async with serve(SandboxConfig()) as running:
        ...  # point any Connect client at running.endpoint_url with TEST_CREDENTIALS

Names are imported on first use, so ``bulkclaim sandbox --help`` does not load the web server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulkclaim.sandbox.app import Sandbox
    from bulkclaim.sandbox.config import (
        API_NAMES,
        TEST_CREDENTIALS,
        Credentials,
        FaultConfig,
        InventorySpec,
        SandboxConfig,
        ThrottleConfig,
    )
    from bulkclaim.sandbox.inventory import InventoryError
    from bulkclaim.sandbox.server import RunningSandbox, serve
    from bulkclaim.sandbox.state import ClaimRecord, LedgerEntry, ServiceError

_WHERE = {
    "API_NAMES": "config",
    "TEST_CREDENTIALS": "config",
    "ClaimRecord": "state",
    "Credentials": "config",
    "FaultConfig": "config",
    "InventoryError": "inventory",
    "InventorySpec": "config",
    "LedgerEntry": "state",
    "RunningSandbox": "server",
    "Sandbox": "app",
    "SandboxConfig": "config",
    "ServiceError": "state",
    "ThrottleConfig": "config",
    "serve": "server",
}

__all__ = [
    "API_NAMES",
    "TEST_CREDENTIALS",
    "ClaimRecord",
    "Credentials",
    "FaultConfig",
    "InventoryError",
    "InventorySpec",
    "LedgerEntry",
    "RunningSandbox",
    "Sandbox",
    "SandboxConfig",
    "ServiceError",
    "ThrottleConfig",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bulkclaim.sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bulkclaim.sandbox.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
