"""The SQL of claims given back and counted: release tokens, what may be released, the churn count.

Each release gets a client token committed to the ``releases`` table before its request is sent; a
resumed release re-uses it. Churn (DESIGN §2) counts claims (an accepted or recovered attempt, one
per token) and releases made to a target within the window, the rule Connect applies; a move
(``bulkclaim move``) is neither.
"""

from __future__ import annotations

import time

from bulkclaim.journal.sql import Connection
from bulkclaim.model import CHURN_WINDOW_DAYS, ToRelease, new_token

__all__ = ["churn", "numbers_to_release", "record_release", "release_token"]

OURS = "('accepted', 'recovered')"  # attempt results that mean a claim of ours took the number


def numbers_to_release(conn: Connection, run: int | None) -> list[ToRelease]:
    ours = set(conn.execute("SELECT DISTINCT target, phone_number, client_token FROM attempts "
                            f"WHERE result IN {OURS}"))  # recovered: our claim, answer lost
    query = ("SELECT target, phone_number, phone_number_id, client_token FROM numbers WHERE status='claimed' "
             "AND phone_number_id IS NOT NULL")
    params: list[object] = []
    if run is not None:
        query += " AND seen_run=?"
        params.append(run)
    return [ToRelease(target, number, number_id, (target, number, token) not in ours)
            for target, number, number_id, token in conn.execute(query + " ORDER BY target, seen_run, ord", params)]


def release_token(conn: Connection, number: ToRelease) -> str:
    found = conn.execute("SELECT client_token FROM releases WHERE target=? AND phone_number=? AND phone_number_id=?",
                         (number.target, number.phone_number, number.phone_number_id)).fetchone()
    if found is not None:
        return str(found[0])
    token, now = new_token(), time.time()
    conn.execute("INSERT INTO releases (target, phone_number, phone_number_id, client_token, status, created_at, "
                 "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                 (number.target, number.phone_number, number.phone_number_id, token, now, now))
    return token


def record_release(conn: Connection, number: ToRelease, status: str, error: tuple[str, str] | None) -> None:
    now = time.time()
    conn.execute("UPDATE releases SET status=?, attempts=attempts+1, error_code=?, error_message=?, updated_at=? "
                 "WHERE target=? AND phone_number=? AND phone_number_id=?",
                 (status, *(error or (None, None)), now, number.target, number.phone_number, number.phone_number_id))
    if status == "released":
        conn.execute("UPDATE numbers SET status='released', updated_at=? WHERE target=? AND phone_number=? "
                     "AND phone_number_id=?", (now, number.target, number.phone_number, number.phone_number_id))


def churn(conn: Connection, target: str, now: float | None) -> int:
    since = (now if now is not None else time.time()) - CHURN_WINDOW_DAYS * 86400.0
    (claims,) = conn.execute(
        "SELECT count(*) FROM (SELECT DISTINCT phone_number, client_token FROM attempts "
        f"WHERE target=? AND result IN {OURS} AND at>=? AND NOT EXISTS (SELECT 1 FROM numbers n "
        "WHERE n.target=attempts.target AND n.phone_number=attempts.phone_number "
        "AND n.client_token=attempts.client_token AND n.move_from IS NOT NULL)) AS claims",
        (target, since)).fetchone()
    (releases,) = conn.execute("SELECT count(*) FROM releases WHERE target=? AND status='released' AND updated_at>=?",
                               (target, since)).fetchone()
    return int(claims) + int(releases)
