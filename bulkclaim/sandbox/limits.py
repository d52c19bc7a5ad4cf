"""The sandbox's account limits per target: the phone-number quota and the claim/release churn rule.

A claim that would take an instance past its phone-number quota is accepted and then settles FAILED
(the real service; ``SandboxConfig.quota_reached="refuse"`` answers 402 at once instead), and
claiming is blocked altogether once claims plus releases within 180 days exceed 200% of that quota
(a support case lifts it): ``ServiceQuotaExceededException`` (HTTP 402).
Counts are kept incrementally so a claim costs O(1) however many numbers the sandbox has seen.
"""

from __future__ import annotations

from collections import Counter, deque

from bulkclaim.sandbox.config import SandboxConfig

__all__ = ["TargetLimits"]


class TargetLimits:
    """Numbers held and recent claim/release events, per target ARN."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._held: Counter[str] = Counter()
        self._events: dict[str, deque[float]] = {}

    def quota_refusal(self, target_arn: str) -> str | None:
        """Why ``target_arn`` can take no more numbers (its phone-number quota is reached), or ``None``."""
        quota = self.config.phone_number_quota
        if self._held[target_arn] >= quota:
            return (f"The phone number quota of this instance ({quota}) is reached: release numbers or "
                    "request a higher quota (Service Quotas L-8F812903).")
        return None

    def churn_refusal(self, target_arn: str, now: float) -> str | None:
        """Why claiming to ``target_arn`` is blocked by the churn rule now, or ``None``."""
        quota = self.config.phone_number_quota
        limit = self.config.churn_limit * quota
        if self._recent(target_arn, now) >= limit:
            return (f"Claims and releases of this instance exceeded {self.config.churn_limit:.0%} of its phone "
                    f"number quota ({quota}) in the last {self.config.churn_window / 86400:.0f} days: claiming "
                    "is blocked until AWS Support lifts the limit.")
        return None

    def claimed(self, target_arn: str, now: float, *, holds: bool) -> None:
        """An executed claim (``holds``: it will settle CLAIMED and so counts against the quota)."""
        self._events.setdefault(target_arn, deque()).append(now)
        if holds:
            self._held[target_arn] += 1

    def released(self, target_arn: str, now: float) -> None:
        self._events.setdefault(target_arn, deque()).append(now)
        self._held[target_arn] -= 1

    def moved(self, source_arn: str, target_arn: str) -> None:
        """A number moved (UpdatePhoneNumber): it counts against its new target's quota, not the old one's.
        A move is neither a claim nor a release: the churn rule does not count it."""
        self._held[source_arn] -= 1
        self._held[target_arn] += 1

    def held(self, target_arn: str) -> int:
        return self._held[target_arn]

    def churn(self, target_arn: str, now: float) -> int:
        """Claims and releases of ``target_arn`` within the churn window."""
        return self._recent(target_arn, now)

    def _recent(self, target_arn: str, now: float) -> int:
        events = self._events.get(target_arn)
        if not events:
            return 0
        while events and events[0] <= now - self.config.churn_window:
            events.popleft()
        return len(events)
