"""A local stand-in for Amazon Connect's phone-number API, speaking the real wire protocol.

Use it to rehearse a migration, and in tests and benchmarks::

    async with serve(SandboxConfig()) as running:
        ...  # point any Connect client at running.endpoint_url with TEST_CREDENTIALS
"""

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
