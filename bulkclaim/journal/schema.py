"""The journal's SQLite schema and its versioning. Bump ``SCHEMA_VERSION`` and add a step to
``_STEPS`` for every change; a journal from a newer bulkclaim is refused, never rewritten.
Readers (``status``, ``report``, the dry run) open it with :func:`connect_read_only`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bulkclaim.model import JournalError

__all__ = ["SCHEMA_VERSION", "connect_read_only", "migrate", "refuse_foreign"]

SCHEMA_VERSION = 5
_APPLICATION_ID = 0x62636C6D  # "bclm": marks the file as a bulkclaim journal

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, started_at REAL NOT NULL, pid INTEGER);
CREATE TABLE numbers (
    target TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    description TEXT,
    tags TEXT,
    source TEXT,
    client_token TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    maybe_sent INTEGER NOT NULL DEFAULT 0,
    phone_number_id TEXT,
    phone_number_arn TEXT,
    error_code TEXT,
    error_message TEXT,
    seen_run INTEGER,
    ord INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (target, phone_number)
) WITHOUT ROWID;
CREATE INDEX numbers_by_run ON numbers (seen_run, ord);
CREATE INDEX numbers_to_do ON numbers (seen_run, ord) WHERE status IN ('pending', 'in_progress');
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    client_token TEXT NOT NULL,
    at REAL NOT NULL,
    result TEXT NOT NULL,
    error_code TEXT
);
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    source TEXT NOT NULL,
    raw TEXT NOT NULL,
    reason TEXT NOT NULL,
    target TEXT,
    at REAL NOT NULL
);
CREATE INDEX rejected_by_run ON rejected (run);
CREATE TABLE plans (
    run INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    members_run INTEGER NOT NULL,  -- the run whose seen_run marks this run's numbers
    members INTEGER NOT NULL,
    duplicates INTEGER NOT NULL
);
CREATE INDEX plans_by_fingerprint ON plans (fingerprint);
"""

# v2: quotas (issue 7). ``releases``: every release bulkclaim makes, its token journaled before it is
# sent. ``acquisitions`` and ``slots``: ``bulkclaim acquire`` runs; a slot's candidate number is a row
# of ``numbers`` (token and outcome kept there), so reports, status and release see acquired numbers.
_V2 = """
CREATE TABLE releases (
    target TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    phone_number_id TEXT NOT NULL,
    client_token TEXT NOT NULL,
    status TEXT NOT NULL,  -- pending / released / failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (target, phone_number, phone_number_id)
) WITHOUT ROWID;
CREATE TABLE acquisitions (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    params TEXT NOT NULL,  -- JSON: country, type, prefix, count, description, tags
    created_at REAL NOT NULL
);
CREATE TABLE slots (
    acquisition TEXT NOT NULL,
    slot INTEGER NOT NULL,
    phone_number TEXT,  -- the current candidate (a row of numbers for the acquisition's target)
    candidates INTEGER NOT NULL DEFAULT 0,  -- how many candidates this slot has had
    PRIMARY KEY (acquisition, slot)
) WITHOUT ROWID;
"""

# v3 (issue 12): ``runs.ended_at``, set when the process that began a run closed the journal cleanly
# (every attempt it made is then recorded). NULL: the process died (or is running): any token it
# reserved may have been sent, whether or not an attempt was recorded.
_V3 = """
ALTER TABLE runs ADD COLUMN ended_at REAL
"""

# v4 (issue 16): a number's contact flow (its id) and the association's state: ``flow_status`` NULL
# without a flow, else pending / associated / failed, with the association's attempts and last error.
# Existing journals gain the columns empty: their numbers have no flow.
_V4 = """
ALTER TABLE numbers ADD COLUMN contact_flow TEXT;
ALTER TABLE numbers ADD COLUMN flow_status TEXT;
ALTER TABLE numbers ADD COLUMN flow_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE numbers ADD COLUMN flow_error_code TEXT;
ALTER TABLE numbers ADD COLUMN flow_error_message TEXT;
CREATE INDEX numbers_flows_pending ON numbers (seen_run, ord) WHERE flow_status='pending'
"""

# v5 (issue 16): ``numbers.move_from``, the source target of a move (``bulkclaim move``: the row's
# ``phone_number_id`` is then the number's id, known before the move is sent); NULL for a claim.
_V5 = """
ALTER TABLE numbers ADD COLUMN move_from TEXT
"""

_STEPS = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the journal at ``path`` that creates nothing beside it.

    Without a ``-wal`` file beside it no run is writing (a finished run's last close checkpoints and
    removes it): every commit is in the file itself, which is opened ``immutable`` — no ``-wal`` or
    ``-shm`` file is created and no lock taken, so a journal on read-only media reads too. With one,
    a run is writing (or was killed): ``mode=ro`` reads its WAL beside it. (A run that starts while
    an immutable reader reads only appends to its new WAL, unless it checkpoints: a report that
    races the start of a run may fail with "malformed"; run it again.)
    """
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    return sqlite3.connect(f"{path.absolute().as_uri()}?{mode}", uri=True)


def refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """Raise unless the file is empty or a bulkclaim journal this version can read. Reads only."""
    (application_id,) = conn.execute("PRAGMA application_id").fetchone()
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if application_id not in (0, _APPLICATION_ID) or (application_id == 0 and tables):
        raise JournalError(f"{path} is an SQLite file but not a bulkclaim journal; refusing to touch it")
    if version > SCHEMA_VERSION:
        raise JournalError(f"journal {path} was written by a newer bulkclaim (schema {version}, this one reads "
                           f"up to {SCHEMA_VERSION}); upgrade bulkclaim to continue it")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file or upgrade an older one (after :func:`refuse_foreign`)."""
    refuse_foreign(conn, path)
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    for step in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in filter(None, (s.strip() for s in _STEPS[step].split(";"))):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={step}")
        conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
        conn.execute("COMMIT")
