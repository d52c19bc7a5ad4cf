"""How long a number waits before its next attempt: full jitter with a floor and a cap.

Defaults and why:
- ``base=0.5`` s: one request interval at Connect's default 2 req/s; the first retry lands about one
  slot later instead of immediately, when the cause (a 500, a dropped connection) may still be there.
- ``floor=0.1`` s: full jitter can draw ~0, and a zero wait turns a burst of failures into a burst of
  retries; the floor keeps them apart.
- ``cap=20`` s: long enough to ride out a brief outage, short enough that a 10,000-number run is not
  stalled behind a few unlucky numbers.
- ``max_attempts=8``: with the defaults that is ~40 s of trying at worst before a number is left
  ``pending`` (unknown), to be settled by the next run rather than guessed.

Backoff only spaces a number's own retries; every retry still queues in the limiter, so the pace of
the whole run is set by the rate limit, not by these numbers. Whether to retry at all, and the
stop-aware wait itself, belong to :class:`bulkclaim.retry.Retrying`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    floor: float = 0.1
    cap: float = 20.0
    max_attempts: int = 8

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait before attempt number ``attempt + 1`` (``attempt`` >= 1 attempts have failed)."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        draw = (rng or random).uniform(0.0, ceiling)
        return min(self.cap, max(self.floor, draw))
