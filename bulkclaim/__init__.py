"""bulkclaim: claim Amazon Connect phone numbers in bulk, safely and as fast as the quota allows.

The library's entry point is :class:`Claimer`; see the README for an embedding example. The
library never configures logging, installs signal handlers or exits the process.

Names are imported on first use (PEP 562), so ``import bulkclaim`` — and the command line's
``--help`` — do not load the AWS SDK until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulkclaim.acquire import AcquireSpec
    from bulkclaim.backoff import Backoff
    from bulkclaim.claimer import Claimer
    from bulkclaim.journal import Journal, open_journal
    from bulkclaim.model import (
        BulkclaimError,
        ClaimRequest,
        ConfigurationError,
        EndpointUnreachableError,
        FatalServiceError,
        FlowStatus,
        JournalError,
        Options,
        Outcome,
        ParametersChangedError,
        QuotaExceededError,
        QuotaReachedError,
        Rejected,
        RunSummary,
        Status,
        Target,
    )
    from bulkclaim.move import MoveRow
    from bulkclaim.quotas import Quotas, read_quotas
    from bulkclaim.run import RunState
    from bulkclaim.settings import ClientSettings, RateSettings
    from bulkclaim.telemetry import Telemetry

_WHERE = {
    "AcquireSpec": "acquire",
    "Backoff": "backoff",
    "Claimer": "claimer",
    "ClientSettings": "settings",
    "Options": "model",
    "RunSummary": "model",
    "RunState": "run",
    "Journal": "journal",
    "open_journal": "journal",
    "BulkclaimError": "model",
    "ClaimRequest": "model",
    "ConfigurationError": "model",
    "EndpointUnreachableError": "model",
    "FatalServiceError": "model",
    "FlowStatus": "model",
    "JournalError": "model",
    "MoveRow": "move",
    "Outcome": "model",
    "ParametersChangedError": "model",
    "QuotaExceededError": "model",
    "QuotaReachedError": "model",
    "Rejected": "model",
    "Status": "model",
    "Target": "model",
    "Quotas": "quotas",
    "RateSettings": "settings",
    "Telemetry": "telemetry",
    "read_quotas": "quotas",
}

__all__ = [
    "AcquireSpec",
    "Backoff",
    "BulkclaimError",
    "ClaimRequest",
    "Claimer",
    "ClientSettings",
    "ConfigurationError",
    "EndpointUnreachableError",
    "FatalServiceError",
    "FlowStatus",
    "Journal",
    "JournalError",
    "MoveRow",
    "Options",
    "Outcome",
    "ParametersChangedError",
    "QuotaExceededError",
    "QuotaReachedError",
    "Quotas",
    "RateSettings",
    "Rejected",
    "RunState",
    "RunSummary",
    "Status",
    "Target",
    "Telemetry",
    "open_journal",
    "read_quotas",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bulkclaim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bulkclaim.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
