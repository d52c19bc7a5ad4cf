"""The errors bulkclaim raises on purpose (``str()`` of each is a message for users), and how to find
the one that stopped a task group."""

from __future__ import annotations

__all__ = [
    "BulkclaimError",
    "ConfigurationError",
    "EndpointUnreachableError",
    "FatalServiceError",
    "JournalError",
    "ParametersChangedError",
    "QuotaExceededError",
    "QuotaReachedError",
    "first_cause",
]


class BulkclaimError(Exception):
    """Base of every error bulkclaim raises on purpose; ``str()`` is a message for users."""


class ConfigurationError(BulkclaimError):
    """The run cannot start: no region, an unknown profile, contradictory settings."""


class FatalServiceError(BulkclaimError):
    """The service refused in a way that affects every number (403, unknown target): the run stops."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EndpointUnreachableError(FatalServiceError):
    """The endpoint could not be reached: never (a wrong URL, no network), or for longer than the
    outage timeout. Numbers not finished keep their tokens; nothing was marked failed because of it."""

    def __init__(self, endpoint: str, cause: str, seconds: float, *, ever_answered: bool) -> None:
        when = (f"unreachable for {seconds:.0f}s" if ever_answered
                else f"never reached (gave up after {seconds:.0f}s)")
        super().__init__("EndpointUnreachable", f"{endpoint} {when}: {cause}")
        self.endpoint = endpoint
        self.cause = cause
        self.seconds = seconds
        self.ever_answered = ever_answered


class QuotaExceededError(FatalServiceError):
    """The run would take the target past its phone-number quota: refused before any claim."""

    def __init__(self, message: str) -> None:
        super().__init__("PhoneNumberQuotaExceeded", message)


class QuotaReachedError(QuotaExceededError):
    """A claim settled FAILED because its target "has reached its limit of total claimed numbers": the
    run sent no further claim (each failed claim may count toward the churn rule). Claims accepted
    before stay ``in_progress``, numbers not sent stay ``pending``; after the quota is raised, the same
    run with ``retry_failed`` claims the failed numbers (reserved for us for a day) and the rest."""

    def __init__(self, target: str, service_message: str) -> None:
        super().__init__(f"{target} reached its phone-number quota (Service Quotas L-8F812903): a claim settled "
                         f"FAILED ({service_message}). No further claims were sent; numbers not sent stay pending. "
                         "Raise the quota or release numbers, then run again with --retry-failed")
        self.target = target
        self.service_message = service_message


class JournalError(BulkclaimError):
    """The journal cannot be used (locked, corrupt, newer schema, unwritable)."""


class ParametersChangedError(BulkclaimError):
    """A pending number's parameters differ from those its token was reserved with."""

    def __init__(self, changed: list[tuple[str, str]]) -> None:
        shown = ", ".join(f"{number} ({source})" for number, source in changed[:10])
        more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
        super().__init__(
            f"{len(changed)} pending number(s) changed parameters since their claim was started: {shown}{more}. "
            "Their first claim may already have been sent; restore the original description/tags, "
            "or finish the earlier run first."
        )
        self.changed = changed


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped the workers (a fatal service error first), not anyio's wrapper."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    leaves.sort(key=lambda e: not isinstance(e, FatalServiceError))
    return leaves[0]
