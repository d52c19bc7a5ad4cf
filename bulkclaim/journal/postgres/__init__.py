"""The PostgreSQL backend of the journal (``--journal postgresql://...``): :class:`PostgresJournal`
and its reader. It needs the ``bulkclaim[postgres]`` extra (psycopg 3), imported only when a URL is
opened; nothing here imports it at import time."""

from __future__ import annotations

from bulkclaim.journal.postgres.connection import is_postgres_url, redact
from bulkclaim.journal.postgres.journal import PostgresJournal
from bulkclaim.journal.postgres.reader import PostgresReader, read_postgres

__all__ = ["PostgresJournal", "PostgresReader", "is_postgres_url", "read_postgres", "redact"]
