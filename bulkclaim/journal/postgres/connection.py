"""Connecting to PostgreSQL: the journal's URL, the driver (imported only when a URL is used), and
the connection the shared SQL (``bulkclaim.journal.sql``) runs on.

A journal URL is a libpq URL (``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB?sslmode=require`` and every
other libpq parameter; the password is better kept in ``PGPASSWORD`` or ``~/.pgpass``) with
parameters of bulkclaim's own: ``schema``, the PostgreSQL schema that holds the journal's tables
(default ``bulkclaim``), so one database can hold several journals; ``lease_ttl``, the seconds after
which a worker that stopped sending heartbeats has its numbers taken over (default 15); and
``reconnect_timeout``, how long a worker waits for a lost server to come back before it gives up
(default 300; nothing is sent meanwhile).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bulkclaim.journal.sql import Cursor
from bulkclaim.model import JournalError, is_postgres_url

if TYPE_CHECKING:
    import psycopg

__all__ = ["DEFAULT_SCHEMA", "Location", "PgConnection", "connect", "driver", "is_postgres_url", "parse_url", "redact"]

DEFAULT_SCHEMA = "bulkclaim"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_EXTRA = "bulkclaim[postgres]"


def redact(url: str) -> str:
    """``url`` as messages may show it: without its password."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/:*")))


@dataclass(frozen=True)
class Location:
    """Where a journal is: what libpq connects to, the schema of its tables, and its name in messages."""

    conninfo: str
    schema: str
    name: str
    lease_ttl: float = 15.0
    reconnect_timeout: float = 300.0

    @property
    def lock_key(self) -> int:
        """The first key of this journal's advisory locks (the second is a run id): one per schema."""
        return zlib.crc32(f"bulkclaim:{self.schema}".encode()) & 0x7FFFFFFF


def parse_url(url: str) -> Location:
    """Split bulkclaim's ``schema`` parameter off a journal URL. Raises JournalError."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _IDENTIFIER.fullmatch(schema):
        raise JournalError(f"journal {redact(url)}: schema={schema!r} is not a lowercase SQL identifier")
    seconds = {name: _seconds(url, name, values[-1]) for name in _OWN_SECONDS
               if (values := [v for k, v in query if k == name])}
    rest = urlencode([(k, v) for k, v in query if k not in _OWN], safe="/:")
    return Location(urlunsplit(parts._replace(query=rest)), schema, redact(url), **seconds)


_OWN_SECONDS = ("lease_ttl", "reconnect_timeout")
_OWN = ("schema", *_OWN_SECONDS)


def _seconds(url: str, name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86400 or (name == "lease_ttl" and seconds < 0.3):
        raise JournalError(f"journal {redact(url)}: {name}={value!r} is not a number of seconds (lease_ttl >= 0.3)")
    return seconds


def driver() -> ModuleType:
    """The psycopg module; JournalError (naming the extra to install) if it is not installed."""
    try:
        import psycopg
    except ImportError:
        raise JournalError(f"a postgresql:// journal needs the PostgreSQL driver, which is not installed: "
                           f"pip install '{_EXTRA}'") from None
    return psycopg


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection (autocommit: transactions are begun explicitly) that runs the shared SQL."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self.raw.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(_placeholders(sql), parameters)
        return cursor

    @property
    def in_transaction(self) -> bool:
        return bool(self.raw.info.transaction_status != driver().pq.TransactionStatus.IDLE)

    def close(self) -> None:
        self.raw.close()


def connect(location: Location, *, read_only: bool) -> PgConnection:
    """A connection to ``location`` with the journal's schema first on its search path. Raises JournalError."""
    psycopg = driver()
    try:
        params = psycopg.conninfo.conninfo_to_dict(location.conninfo)
    except psycopg.Error as exc:
        raise JournalError(f"journal {location.name} is not a valid PostgreSQL URL: {exc}") from None
    params.setdefault("connect_timeout", 10)
    params.setdefault("application_name", "bulkclaim")
    try:
        raw = psycopg.connect(**params, autocommit=True)
    except psycopg.Error as exc:
        raise JournalError(f"cannot connect to the journal {location.name}: {str(exc).strip()}") from None
    try:
        raw.execute(f'SET search_path TO "{location.schema}"')
        raw.execute("SET synchronous_commit TO on")  # a committed token is on the server's disk
        if read_only:
            raw.execute("SET default_transaction_read_only TO on")
    except BaseException:
        raw.close()
        raise
    return PgConnection(raw)
