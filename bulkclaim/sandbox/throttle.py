"""The service-side token bucket: admit or reject at once, as AWS's front end does (no queueing)."""

from __future__ import annotations

from bulkclaim.sandbox.config import ThrottleConfig

__all__ = ["ServerBucket"]


class ServerBucket:
    """A bucket that starts full with ``burst`` tokens and refills ``rate`` per second.

    Shared by every caller of one API, whoever they are, like the per-account quota.
    """

    def __init__(self, config: ThrottleConfig, now: float) -> None:
        self.config = config
        self._tokens = float(config.burst)
        self._updated = now

    def try_take(self, now: float) -> bool:
        """Spend one token if there is one; ``False`` means the caller gets a 429."""
        rate = self.config.rate
        if rate is None:
            return True
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.config.burst), self._tokens + elapsed * rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
