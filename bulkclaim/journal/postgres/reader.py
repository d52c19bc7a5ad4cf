"""The PostgreSQL journal opened for reading (``status``, ``report``, ``release``'s list, the dry run).

Its session is read-only (``default_transaction_read_only``) and creates nothing: a database or
schema without a journal reads as no journal. A run is live while its process holds the run's
advisory lock (see ``schema.live_runs``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

from bulkclaim.journal.lock import LockHolder
from bulkclaim.journal.postgres.connection import Location, PgConnection, connect, driver, parse_url
from bulkclaim.journal.postgres.schema import journal_version, live_runs
from bulkclaim.journal.protocol import JournalStatus
from bulkclaim.journal.reader import SqlReader
from bulkclaim.model import JournalError

__all__ = ["PostgresReader", "read_postgres"]


@contextmanager
def read_postgres(url: str) -> Iterator[PostgresReader | None]:
    """The journal at ``url`` opened read-only; ``None`` if there is none. Raises JournalError."""
    location = parse_url(url)
    errors = driver().Error
    with closing(connect(location, read_only=True)) as conn:
        try:
            found = journal_version(conn, location) is not None
        except errors as exc:
            raise JournalError(f"cannot read journal {location.name}: {str(exc).strip()}") from None
        yield PostgresReader(location, conn) if found else None


class PostgresReader(SqlReader):
    """The reader of a PostgreSQL journal."""

    def __init__(self, location: Location, conn: PgConnection) -> None:
        super().__init__(location.name, conn)
        self.location = location
        self.errors = (driver().Error,)
        self._pg = conn

    def _holder(self, latest_run: int | None, run_pid: int | None) -> LockHolder:
        """Live while any process has the journal open (several workers may share a run); the pid is
        the latest run's, if that one is among them."""
        live = live_runs(self._pg, self.location)
        return LockHolder(bool(live), run_pid if latest_run in live else None)

    def status(self, *, now: float | None = None, errors: int = 5) -> JournalStatus:
        """As every journal's, with the workers alive now (by the run they work on)."""
        status = super().status(now=now, errors=errors)
        if self._pg.execute("SELECT to_regclass('workers')").fetchone()[0] is not None:  # schema 2 and later
            status.workers = {int(run): int(count) for run, count in self._pg.execute(
                "SELECT COALESCE(run, 0), count(*) FROM workers WHERE ended_at IS NULL "
                "AND expires_at >= clock_timestamp() GROUP BY 1 ORDER BY 1").fetchall()}
        return status
