"""The quota preflight: before the first claim, does this run fit the target's phone-number quota?

A claim beyond the instance's quota is refused by Connect, and claims plus releases beyond 200% of
it within 180 days block claiming for months (DESIGN §2). Retries fix neither, so before anything
is sent the preflight compares what the run would claim with what the quota still allows:

- ``on_target``: numbers the target holds now (one ListPhoneNumbersV2 sweep);
- ``to_claim``: numbers of this run still to claim that the target does not hold already;
- ``allowed``: quota - on_target; a run asking for more is refused (or, with ``--allow-partial``,
  the numbers beyond ``allowed`` are marked failed ``PhoneNumberQuotaExceeded`` before any claim,
  in input order, so the first ``allowed`` ones are claimed);
- ``churn``: claims and releases this journal recorded in the last 180 days, against the rule.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from bulkclaim.calls import Api, CallFailed
from bulkclaim.journal.protocol import Journal
from bulkclaim.model import CHURN_LIMIT, CHURN_WINDOW_DAYS, Target
from bulkclaim.quotas import Quotas
from bulkclaim.reconcile import sweep

__all__ = ["DEFERRED", "Preflight", "preflight"]

DEFERRED = "PhoneNumberQuotaExceeded"  # error code of numbers left out by --allow-partial
_WARN_AT = 0.8  # share of the churn limit at which the preflight starts warning


@dataclass
class Preflight:
    """What the preflight found for one target."""

    target: str
    quota: int | None  # phone numbers per instance; None: unknown (not checked)
    quota_source: str  # "Service Quotas", "--phone-number-quota" or "unknown"
    on_target: int | None  # None: the target could not be listed
    to_claim: int
    churn: int
    problems: list[str] = field(default_factory=list)
    #: what the run does: "claim", or "move" (``bulkclaim move``: moves are not claims, nor churn)
    action: str = "claim"

    @property
    def allowed(self) -> int | None:
        """How many more numbers the target may take, if known."""
        if self.quota is None or self.on_target is None:
            return None
        return max(0, self.quota - self.on_target)

    @property
    def over(self) -> int:
        return 0 if self.allowed is None else max(0, self.to_claim - self.allowed)

    @property
    def churn_limit(self) -> int | None:
        return None if self.quota is None else int(CHURN_LIMIT * self.quota)

    def refusal(self) -> str:
        verb = self.action
        return (f"this run would exceed the phone-number quota of {self.target}: it holds {self.on_target} "
                f"number(s), the run would {verb} {self.to_claim} more, and the quota of {self.quota} "
                f"({self.quota_source}) allows {self.allowed} more — {self.over} too many. Nothing was sent. "
                f"Raise the quota (Service Quotas L-8F812903), {verb} fewer numbers"
                + (f", or run with --allow-partial to {verb} the first {self.allowed}" if self.allowed else ""))

    def churn_warning(self) -> str | None:
        """A warning when this run takes the journal's 180-day churn close to (or past) the limit."""
        limit = self.churn_limit
        adds = 0 if self.action == "move" else min(self.to_claim, self.allowed if self.allowed is not None
                                                   else self.to_claim)  # moves are not churn
        after = self.churn + adds
        if not limit or after < _WARN_AT * limit:
            return None
        verb = "exceed" if after > limit else "approach"
        return (f"claims + releases recorded in this journal in the last {CHURN_WINDOW_DAYS} days: {self.churn}, "
                f"{after} after this run; this would {verb} Connect's limit of {CHURN_LIMIT:.0%} of the quota "
                f"({limit}), beyond which the account cannot claim numbers until AWS Support lifts the block")

    def lines(self) -> list[str]:
        """A human summary, one fact per line."""
        held = "unknown" if self.on_target is None else str(self.on_target)
        quota = "unknown" if self.quota is None else f"{self.quota} ({self.quota_source})"
        shown = [f"phone-number quota: {quota} · on the target now: {held} · this run would {self.action}: "
                 f"{self.to_claim}"]
        if self.allowed is not None:
            shown.append(f"the quota allows {self.allowed} more" + (f" — {self.over} over" if self.over else ""))
        shown.append(f"claims + releases in this journal, last {CHURN_WINDOW_DAYS} days: {self.churn}"
                     + (f" (limit {self.churn_limit})" if self.churn_limit else "")
                     + ("; moves do not count" if self.action == "move" else ""))
        return shown


async def preflight(api: Api, journal: Journal, target: Target, run: int, quotas: Quotas, *,
                    configured_quota: int | None = None, allow_partial: bool = False,
                    action: str = "claim") -> Preflight:
    """Check ``run`` against the quota; with ``allow_partial`` leave out what does not fit.

    The caller raises (or not) on :attr:`Preflight.over` when ``allow_partial`` is false: this
    function only measures, and with ``allow_partial`` marks the numbers beyond the quota.
    """
    problems: list[str] = []  # quota read problems are reported where the quotas are read
    quota, source = quotas.phone_number_quota(configured_quota)
    try:
        owned: Collection[str] | None = await sweep(api, target)
    except CallFailed as failed:
        owned = None
        problems.append(f"cannot list the numbers of {target.key}: {failed.classified.code}: "
                        f"{failed.classified.message}")
    held: Collection[str] = owned or ()
    to_claim = await journal.count_to_claim(run, target.key, held)
    churn = await journal.churn(target.key)
    result = Preflight(target.key, quota, source, None if owned is None else len(owned), to_claim, churn, problems,
                       action)
    allowed = result.allowed
    if allow_partial and result.over and allowed is not None:
        reason = (f"not sent: the phone-number quota {quota} of {target.key} allows {allowed} more "
                  "(--allow-partial); raise the quota and run again with --retry-failed")
        await journal.defer_beyond(run, target.key, held, allowed, (DEFERRED, reason))
    return result
