"""The journal: where every token is committed before its request, and everything bulkclaim knows of
what it did. :mod:`.protocol` says what a journal does; :mod:`.base` and :mod:`.reader` do it in SQL
both backends run: :mod:`.sqlite` (a file, the default) and :mod:`.postgres` (a ``postgresql://`` URL,
the ``bulkclaim[postgres]`` extra). Nothing outside this package builds SQL.

:func:`open_journal` opens a run's journal (SQLite: one process at a time; PostgreSQL: shared);
:func:`read_journal` opens one for reading beside a run (``status``, ``report``, ``release``'s list,
the dry run). A journal *spec* is a path or a URL: :func:`journal_name` is how messages show it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bulkclaim.journal.lock import LockHolder, lock_holder
from bulkclaim.journal.postgres.connection import is_postgres_url, redact
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
    "is_postgres_url",
    "journal_name",
    "lock_holder",
    "open_journal",
    "read_existing_journal",
    "read_journal",
]


def open_journal(spec: str | os.PathLike[str]) -> Journal:
    """Open (or create) the journal ``spec`` names: a ``postgresql://`` URL, else an SQLite file (refused
    if another process has it). It blocks: from async code, call it in a worker thread, as
    :class:`~bulkclaim.Claimer` does."""
    if is_postgres_url(spec):
        from bulkclaim.journal.postgres import PostgresJournal

        return PostgresJournal.open(str(spec))
    return SqliteJournal.open(spec)


@contextmanager
def read_journal(spec: str | os.PathLike[str]) -> Iterator[JournalReader | None]:
    """The journal ``spec`` names, opened for reading only; ``None`` if there is none."""
    if is_postgres_url(spec):
        from bulkclaim.journal.postgres import read_postgres

        with read_postgres(str(spec)) as found:
            yield found
        return
    with read_sqlite(Path(spec)) as reader:
        yield reader


@contextmanager
def read_existing_journal(spec: str | os.PathLike[str]) -> Iterator[JournalReader]:
    """As :func:`read_journal`, for a journal that must be there: JournalError if there is none."""
    with read_journal(spec) as reader:
        if reader is None:
            raise JournalError(f"no journal at {journal_name(spec)}")
        yield reader


def journal_name(spec: str | os.PathLike[str]) -> str:
    """How messages show a journal spec: a path as it is, a URL without its password."""
    return redact(str(spec)) if is_postgres_url(spec) else str(spec)
