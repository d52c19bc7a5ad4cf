"""Read-only views of a journal for the command line: ``status`` and the ``--dry-run`` plan.

Both open the journal read-only (SQLite WAL lets them run beside a claim that is writing) and never
take its lock, create it, or reserve anything.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulkclaim.inputs import check
from bulkclaim.journal_schema import connect_read_only
from bulkclaim.model import ClaimRequest, JournalError, Rejected, Status
from bulkclaim.preflight import churn_in_journal

__all__ = ["DryRunPlan", "JournalStatus", "dry_run_plan", "journal_churn", "journal_status", "read_only", "run_counts"]

_RATE_WINDOW = 60.0


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection | None]:
    """The journal opened read-only (no lock taken, nothing created); ``None`` if there is none."""
    if not path.exists():
        yield None
        return
    try:
        with closing(connect_read_only(path)) as conn:
            conn.execute("SELECT count(*) FROM numbers").fetchone()
            yield conn
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from None


@dataclass
class JournalStatus:
    journal: str
    counts: dict[str, int]
    runs: int
    last_run_started_at: float | None
    claims_per_second: float
    eta_seconds: float | None
    last_errors: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def journal_status(path: Path, *, now: float | None = None, errors: int = 5) -> JournalStatus:
    """Counts by status, the recent claim rate, an ETA for what is pending, the latest errors."""
    with read_only(path) as conn:
        if conn is None:
            raise JournalError(f"no journal at {path}")
        counts = {s.value: 0 for s in Status if s not in (Status.INVALID, Status.RELEASED)}
        counts.update(dict(conn.execute("SELECT status, count(*) FROM numbers GROUP BY status").fetchall()))
        runs, started = conn.execute("SELECT count(*), MAX(started_at) FROM runs").fetchone()
        counts[Status.INVALID.value] = conn.execute(
            "SELECT count(*) FROM rejected WHERE run=(SELECT MAX(id) FROM runs)").fetchone()[0]
        since = (now or time.time()) - _RATE_WINDOW
        accepted = conn.execute("SELECT count(*) FROM attempts WHERE result='accepted' AND at>=?",
                                (since,)).fetchone()[0]
        rate = accepted / _RATE_WINDOW
        last_errors = [
            {"phone_number": n, "error_code": c, "result": r, "at": at}
            for n, c, r, at in conn.execute(
                "SELECT phone_number, error_code, result, at FROM attempts WHERE error_code IS NOT NULL "
                "ORDER BY id DESC LIMIT ?", (errors,))
        ]
    pending = counts.get(Status.PENDING.value, 0)
    eta = pending / rate if rate > 0 and pending else None
    return JournalStatus(str(path), counts, runs, started, rate, eta, last_errors)


def run_counts(path: Path, run: int) -> dict[str, int]:
    """How many numbers of ``run`` ended in each status, invalid rows included (non-zero only)."""
    with read_only(path) as conn:
        if conn is None:
            raise JournalError(f"no journal at {path}")
        counts = dict(conn.execute("SELECT status, count(*) FROM numbers WHERE seen_run=? GROUP BY status",
                                   (run,)).fetchall())
        (invalid,) = conn.execute("SELECT count(*) FROM rejected WHERE run=?", (run,)).fetchone()
    if invalid:
        counts[Status.INVALID.value] = invalid
    return counts


def journal_churn(path: Path, target: str) -> int:
    """Claims and releases the journal made to ``target`` within the churn window (0: no journal)."""
    with read_only(path) as conn:
        return 0 if conn is None else churn_in_journal(conn, target)


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


def dry_run_plan(rows: Iterable[ClaimRequest | Rejected], journal: Path, *, retry_failed: bool,
                 keep_invalid: int = 1000, owned: Collection[str] = ()) -> DryRunPlan:
    """What a run of ``rows`` would do; ``owned``: the numbers the target holds (for the preflight)."""
    plan = DryRunPlan()
    seen: set[tuple[str, str]] = set()
    with read_only(journal) as conn:
        for row in rows:
            if isinstance(row, Rejected):
                plan.invalid_count += 1
                if len(plan.invalid) < keep_invalid:
                    plan.invalid.append(row)
                continue
            if row.key in seen:
                plan.duplicates += 1
                continue
            found = None if conn is None else conn.execute(
                "SELECT status, params_hash FROM numbers WHERE target=? AND phone_number=?", row.key).fetchone()
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
