"""Read-only views of a journal for the command line: ``status`` and the ``--dry-run`` plan.

Both open the journal read-only (SQLite WAL lets them run beside a claim that is writing) and never
take its lock (``status`` only looks whether someone holds it), create it, or reserve anything.
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
from bulkclaim.journal import lock_holder
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
    #: a bulkclaim process holds the journal's lock (a run is going on); None: cannot tell here
    live: bool | None
    pid: int | None  # the process holding it, when known
    counts: dict[str, int]
    runs: int
    latest_run: int | None
    #: the run whose numbers the latest run works on: itself, or an earlier run whose plan of identical
    #: inputs it took over (the ``run`` column of those numbers, what ``release --run`` takes)
    latest_run_numbers: int | None
    last_run_started_at: float | None
    claims_per_second: float | None  # None unless live
    eta_seconds: float | None
    #: per run (the run that last acted on each number), counts by status, invalid rows included
    run_counts: dict[int, dict[str, int]]
    #: numbers whose *current* state carries an error (failed, or left pending / in_progress after
    #: an error), latest first; a throttled retry of a number that then succeeded is not one
    last_errors: list[dict[str, Any]]
    error_count: int
    #: the run the live process is doing (the latest run, if that process started it)
    live_run: int | None = None

    def as_dict(self) -> dict[str, Any]:
        fields = dict(self.__dict__)
        fields["run_counts"] = {str(run): counts for run, counts in self.run_counts.items()}
        return fields


def journal_status(path: Path, *, now: float | None = None, errors: int = 5) -> JournalStatus:
    """Whether a run is live, counts by status (overall and per run), while live the recent claim
    rate and an ETA for what is pending, and the numbers that currently have an error."""
    with read_only(path) as conn:
        if conn is None:
            raise JournalError(f"no journal at {path}")
        counts = {s.value: 0 for s in Status if s not in (Status.INVALID, Status.RELEASED)}
        counts.update(dict(conn.execute("SELECT status, count(*) FROM numbers GROUP BY status").fetchall()))
        runs, latest = conn.execute("SELECT count(*), MAX(id) FROM runs").fetchone()
        started, run_pid = conn.execute("SELECT started_at, pid FROM runs WHERE id=?", (latest,)).fetchone() or (
            None, None)
        plan = conn.execute("SELECT members_run FROM plans WHERE run=?", (latest,)).fetchone()
        counts[Status.INVALID.value] = conn.execute(
            "SELECT count(*) FROM rejected WHERE run=(SELECT MAX(id) FROM runs)").fetchone()[0]
        per_run: dict[int, dict[str, int]] = {}
        for run, status, count in conn.execute(
                "SELECT seen_run, status, count(*) FROM numbers GROUP BY seen_run, status "
                "UNION ALL SELECT run, 'invalid', count(*) FROM rejected GROUP BY run ORDER BY 1, 2"):
            per_run.setdefault(run, {})[status] = count
        holder = lock_holder(path, expected_pid=run_pid)
        rate: float | None = None
        if holder.held:
            clock = time.time() if now is None else now
            since = max(clock - _RATE_WINDOW, started or 0.0)
            accepted = conn.execute("SELECT count(*) FROM attempts WHERE result='accepted' AND at>=?",
                                    (since,)).fetchone()[0]
            rate = accepted / (clock - since) if clock - since >= 1.0 else None
        with_error = "FROM numbers WHERE error_code IS NOT NULL AND status IN ('failed', 'pending', 'in_progress')"
        (error_count,) = conn.execute(f"SELECT count(*) {with_error}").fetchone()
        last_errors = [
            {"phone_number": n, "status": st, "error_code": c, "error_message": m, "run": r, "at": at}
            for n, st, c, m, r, at in conn.execute(
                f"SELECT phone_number, status, error_code, error_message, seen_run, updated_at {with_error} "
                "ORDER BY updated_at DESC LIMIT ?", (errors,))
        ]
    pending = counts.get(Status.PENDING.value, 0)
    eta = pending / rate if rate and pending else None
    return JournalStatus(str(path), holder.held, holder.pid, counts, runs, latest,
                         plan[0] if plan else latest, started, rate, eta, per_run, last_errors, error_count,
                         latest if holder.held and holder.pid is not None and holder.pid == run_pid else None)


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
