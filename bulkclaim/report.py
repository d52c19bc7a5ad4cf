"""Report rows (DESIGN §4) from a journal, written as CSV or JSON Lines.

CSV cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage
return) are neutralized with a leading apostrophe, except plain numbers such as ``+12065550100``,
which no spreadsheet executes and which users need to read as they are.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from bulkclaim.journal import read_existing_journal
from bulkclaim.model import Outcome

__all__ = [
    "FIELDS",
    "PARTIAL_FILES",
    "atomic_write",
    "check_writable",
    "journal_outcomes",
    "report_format",
    "safe_cell",
    "write_report",
]

FIELDS = ("phone_number", "source", "target", "status", "phone_number_id", "phone_number_arn", "client_token",
          "attempts", "error_code", "error_message", "updated_at", "run", "contact_flow_id", "flow_status",
          "moved_from")
#: Temporary files :func:`atomic_write` has open (normally none; one while a report is written).
PARTIAL_FILES: set[str] = set()
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text instead of evaluating."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def report_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{path}: cannot tell the report format from {suffix!r}; use .csv or .jsonl")


@contextmanager
def atomic_write(path: Path, *, mode: int = 0o600) -> Iterator[IO[str]]:
    """Write ``path`` all at once or not at all: a temporary file in the same directory is written,
    fsync'd and renamed over ``path``. Private (0600) unless ``mode`` says otherwise: reports name
    every number and token of a run.

    A signal, a crash or a full disk during the write leaves the earlier file as it was. The
    temporary file's name is in :data:`PARTIAL_FILES` while it exists, so a process that must quit
    at once (the CLI's second Ctrl-C) can remove it.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    PARTIAL_FILES.add(temporary)
    try:
        if mode != 0o600:  # mkstemp's
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    finally:
        PARTIAL_FILES.discard(temporary)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: Path, what: str = "report") -> None:
    """Raise ValueError, naming the path, unless :func:`atomic_write` can write ``path``: checked before
    a command sends anything, so a typo in the path costs nothing. A file is created (and removed)
    next to it, where the atomic write puts its temporary file."""
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        reason = "is not a directory" if parent.exists() else "no such directory"
        raise ValueError(f"{what} {path}: {parent}: {reason}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=parent)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot create files in {parent}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def write_report(outcomes: Iterable[Outcome], handle: IO[str], fmt: str) -> int:
    """Write one row per outcome; return how many."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for outcome in outcomes:
            writer.writerow({k: safe_cell(v) for k, v in outcome.as_row().items()})
            count += 1
    else:
        for outcome in outcomes:
            handle.write(json.dumps(outcome.as_row(), ensure_ascii=False) + "\n")
            count += 1
    handle.flush()
    return count


def journal_outcomes(journal: str | os.PathLike[str], *, run: int | None = None,
                     statuses: frozenset[str] | None = None) -> Iterator[Outcome]:
    """Every number of the journal (or of one run, in input order), then the invalid rows of that run
    (or of the latest run). Reads beside a run that may be writing (see :func:`read_journal`)."""
    with read_existing_journal(journal) as reader:
        yield from reader.outcomes(run, statuses)
