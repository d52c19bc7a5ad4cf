"""What a run would do with these inputs and this journal (``claim --dry-run``): nothing is sent,
written or reserved; the journal is read beside any run that may be writing it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from bulkclaim.inputs import check
from bulkclaim.journal import read_journal
from bulkclaim.model import ClaimRequest, Rejected, Status

__all__ = ["DryRunPlan", "dry_run_plan"]


@dataclass
class DryRunPlan:
    """What a run would do with these inputs and this journal; nothing is sent or written."""

    to_send: int = 0
    to_resume: int = 0
    to_verify: int = 0
    already_done: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    invalid_count: int = 0
    invalid: list[Rejected] = field(default_factory=list)  # the first ``keep_invalid`` of them
    changed: list[ClaimRequest] = field(default_factory=list)
    owned_on_target: int = 0  # numbers to send or resume that the target holds already (adopted)

    @property
    def to_claim(self) -> int:
        """Claims the run would make: what it sends or resumes, less what the target holds."""
        return self.to_send + self.to_resume - self.owned_on_target


def dry_run_plan(rows: Iterable[ClaimRequest | Rejected], journal: str | os.PathLike[str], *, retry_failed: bool,
                 keep_invalid: int = 1000, owned: Collection[str] = ()) -> DryRunPlan:
    """What a run of ``rows`` would do; ``owned``: the numbers the target holds (for the preflight)."""
    plan = DryRunPlan()
    seen: set[tuple[str, str]] = set()
    with read_journal(journal) as reader:
        for row in rows:
            if isinstance(row, Rejected):
                plan.invalid_count += 1
                if len(plan.invalid) < keep_invalid:
                    plan.invalid.append(row)
                continue
            if row.key in seen:
                plan.duplicates += 1
                continue
            found = None if reader is None else reader.lookup(*row.key)
            if found is None and isinstance(checked := check(row), Rejected):
                plan.invalid_count += 1
                if len(plan.invalid) < keep_invalid:
                    plan.invalid.append(checked)
                continue
            seen.add(row.key)
            sending = found is None or found[0] == Status.PENDING or (found[0] == Status.FAILED and retry_failed)
            if sending and row.phone_number in owned:
                plan.owned_on_target += 1
            if found is None:
                plan.to_send += 1
            elif found[0] == Status.PENDING and found[1] != row.params_hash():
                plan.changed.append(row)
            elif found[0] == Status.PENDING:
                plan.to_resume += 1
            elif found[0] == Status.IN_PROGRESS:
                plan.to_verify += 1
            elif found[0] == Status.FAILED and retry_failed:
                plan.to_send += 1
            else:
                plan.already_done[found[0]] += 1
    return plan
