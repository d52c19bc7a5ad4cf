"""The journal: where every token is committed before its request, and everything bulkclaim knows of
what it did. :mod:`.protocol` says what a journal does; :mod:`.sqlite` and :mod:`.reader` are the
SQLite backend. Nothing outside this package builds SQL.

:func:`open_journal` opens a run's journal (one process at a time); :func:`read_journal` opens one for
reading beside a run (``status``, ``report``, ``release``'s list, the dry run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bulkclaim.journal.lock import LockHolder, lock_holder
from bulkclaim.journal.protocol import Journal, JournalReader, JournalStatus
from bulkclaim.journal.reader import read_sqlite
from bulkclaim.journal.sqlite import SqliteJournal
from bulkclaim.model import JournalError

__all__ = [
    "Journal",
    "JournalReader",
    "JournalStatus",
    "LockHolder",
    "SqliteJournal",
    "lock_holder",
    "open_journal",
    "read_existing_journal",
    "read_journal",
]


def open_journal(spec: str | os.PathLike[str]) -> Journal:
    """Open (or create) the journal ``spec`` names, refusing if another process has it. It blocks:
    from async code, call it in a worker thread, as :class:`~bulkclaim.Claimer` does."""
    return SqliteJournal.open(spec)


@contextmanager
def read_journal(spec: str | os.PathLike[str]) -> Iterator[JournalReader | None]:
    """The journal ``spec`` names, opened for reading only; ``None`` if there is none."""
    with read_sqlite(Path(spec)) as reader:
        yield reader


@contextmanager
def read_existing_journal(spec: str | os.PathLike[str]) -> Iterator[JournalReader]:
    """As :func:`read_journal`, for a journal that must be there: JournalError if there is none."""
    with read_journal(spec) as reader:
        if reader is None:
            raise JournalError(f"no journal at {spec}")
        yield reader
