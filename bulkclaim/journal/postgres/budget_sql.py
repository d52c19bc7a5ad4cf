"""The shared rate budget's one statement, as a server-side function (schema v3).

``reserve_budget`` is the GCRA form of a token bucket (one theoretical arrival time, ``tat``, per
key) with an AIMD controller in the same row, on the *server's* clock (``clock_timestamp()``), so
workers on any hosts, with any clock skew, draw on one bucket:

- the current rate follows a cubic recovery curve from the last cut back to the rate the congestion
  episode began at, capped by the caller's ceiling; its time runs in intervals of the ceiling
  (``1 / p_ceiling``), as :class:`~bulkclaim.ratelimit.AdaptiveRate`'s does (issue 13), so a cut
  costs the same share of a run at 2/s as at 20/s;
- ``p_cuts`` 429s seen by the caller since its last reservation cut it to ``p_decrease`` times,
  *once*, and only if the latest of their slots was booked (``p_booked``, the server's time the
  reservation returned) after the last cut: a 429 of a request booked before it answers a rate that
  was already cut, as :class:`~bulkclaim.ratelimit.AdaptiveRate`'s "old news" (one bunch of 429s
  heard by four workers, each reporting its own, cut the rate from 20/s to 1/s when every report
  cut it again: 6 s of a 100 s run lost). A cut within ``p_settle`` intervals of the previous one
  is of the same episode (the curve climbs back to where that began);
- tokens already booked ahead of now are converted to the new rate (as ``TokenBucket.rate`` does);
- one slot is booked: the caller waits ``wait`` seconds (0 while the burst lasts); ``booked_at`` is
  the server's time it was booked at.

It is called as one statement (``SELECT * FROM reserve_budget(...)``): the row is locked for the
length of that statement only. No percent sign or question mark in the function: the journal's
connection rewrites those.
"""

from __future__ import annotations

__all__ = ["DROP_V2", "RESERVE_BUDGET", "RESERVE_CALL"]

#: The recovery curve: ``rate = episode - _CUBIC * ceiling * (K - x / _STEP) ** 3`` with ``x`` in
#: intervals of the ceiling since the cut: at 20/s, 3.9 s back from a 0.7 cut (as schema v2's was).
_CUBIC, _STEP = 0.005, 20

RESERVE_BUDGET = f"""
CREATE OR REPLACE FUNCTION reserve_budget(p_key text, p_ceiling double precision, p_burst integer, p_cuts integer,
                                          p_booked double precision, p_floor double precision,
                                          p_decrease double precision, p_settle double precision)
RETURNS TABLE (wait double precision, current_rate double precision, booked_at double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t double precision := extract(epoch FROM clock_timestamp());
    v_rate double precision;
    v_tat double precision;
    v_episode double precision;
    v_cut_at double precision;
    v_restart double precision;
    cur double precision;
    scale double precision := p_ceiling * {_CUBIC};
    start double precision;
BEGIN
    SELECT rate, tat, episode_rate, cut_at, restart INTO v_rate, v_tat, v_episode, v_cut_at, v_restart
      FROM rate_budget WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rate_budget (key, rate, tat) VALUES (p_key, p_ceiling, t) ON CONFLICT (key) DO NOTHING;
        SELECT rate, tat, episode_rate, cut_at, restart INTO v_rate, v_tat, v_episode, v_cut_at, v_restart
          FROM rate_budget WHERE key = p_key FOR UPDATE;
    END IF;
    IF v_episode IS NULL THEN
        cur := p_ceiling;
    ELSE
        cur := GREATEST(p_floor, LEAST(p_ceiling, scale * power(
            (t - v_cut_at) * p_ceiling / {_STEP} - cbrt(GREATEST(0, v_episode - v_restart) / scale), 3) + v_episode));
    END IF;
    IF p_cuts > 0 AND (v_cut_at IS NULL OR p_booked IS NULL OR p_booked >= v_cut_at) THEN
        IF v_episode IS NULL OR t - v_cut_at > p_settle / cur THEN
            v_episode := cur;
        END IF;
        v_cut_at := t;
        v_restart := GREATEST(p_floor, cur * p_decrease);
        cur := v_restart;
    END IF;
    IF cur <> v_rate THEN
        v_tat := t + GREATEST(0, v_tat - t) * v_rate / cur;
    END IF;
    start := GREATEST(v_tat, t);
    UPDATE rate_budget SET rate = cur, tat = start + 1 / cur, episode_rate = v_episode, cut_at = v_cut_at,
           restart = v_restart, throttles = throttles + p_cuts, reservations = reservations + 1
     WHERE key = p_key;
    wait := GREATEST(0, start - (p_burst - 1) / cur - t);
    current_rate := cur;
    booked_at := t;
    RETURN NEXT;
END
$$
"""

#: one reservation (psycopg's placeholders): key, ceiling, burst, 429s since the last one, the time the
#: latest of their slots was booked at (None: unknown), floor, decrease, settle intervals
RESERVE_CALL = "SELECT wait, current_rate, booked_at FROM reserve_budget(%s, %s, %s, %s, %s, %s, %s, %s)"

#: the (v2) function ``RESERVE_BUDGET`` replaces
DROP_V2 = ("DROP FUNCTION IF EXISTS reserve_budget(text, double precision, integer, integer, double precision, "
           "double precision, double precision)")
