"""What the journal's shared SQL needs of a database connection, and nothing more.

The statements of ``planning``, ``acquisitions``, ``releases``, ``lazy``, ``base`` and ``reader`` are
written once, in the SQL that SQLite (3.24+) and PostgreSQL both speak, with ``?`` placeholders: an
``sqlite3.Connection`` runs them as they are, and the PostgreSQL backend's connection
(:class:`~bulkclaim.journal.postgres.connection.PgConnection`) turns ``?`` into psycopg's ``%s``.
What differs between the two (opening, schema, locks, new run ids) stays in each backend's modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["Connection", "ConnectionT", "Cursor"]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


ConnectionT = TypeVar("ConnectionT", bound=Connection)
