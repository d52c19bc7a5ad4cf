"""bulkclaim: claim Amazon Connect phone numbers in bulk, safely and as fast as the quota allows.

The library's entry point is :class:`Claimer`; see the README for an embedding example. The
library never configures logging, installs signal handlers or exits the process.
"""

from bulkclaim.acquire import AcquireSpec
from bulkclaim.backoff import Backoff
from bulkclaim.claimer import Claimer, RateSettings
from bulkclaim.connect import ClientSettings
from bulkclaim.engine import Options, RunSummary
from bulkclaim.journal import Journal, SqliteJournal
from bulkclaim.model import (
    BulkclaimError,
    ClaimRequest,
    ConfigurationError,
    FatalServiceError,
    JournalError,
    Outcome,
    ParametersChangedError,
    QuotaExceededError,
    Rejected,
    Status,
    Target,
)
from bulkclaim.quotas import Quotas, read_quotas

__all__ = [
    "AcquireSpec",
    "Backoff",
    "BulkclaimError",
    "ClaimRequest",
    "Claimer",
    "ClientSettings",
    "ConfigurationError",
    "FatalServiceError",
    "Journal",
    "JournalError",
    "Options",
    "Outcome",
    "ParametersChangedError",
    "QuotaExceededError",
    "Quotas",
    "RateSettings",
    "Rejected",
    "RunSummary",
    "SqliteJournal",
    "Status",
    "Target",
    "read_quotas",
]
