"""The shared rate budget's one statement, as a server-side function (schema v2).

``reserve_budget`` is the GCRA form of a token bucket (one theoretical arrival time, ``tat``, per
key) with :class:`~bulkclaim.ratelimit.AdaptiveRate`'s AIMD in the same row, on the *server's*
clock (``clock_timestamp()``), so workers on any hosts, with any clock skew, draw on one bucket:

- the current rate follows the cubic recovery curve from the last cut back to the rate the
  congestion episode began at, capped by the caller's ceiling;
- ``p_cuts`` 429s seen by the caller since its last reservation each cut it to ``p_decrease`` times
  (a 429 within ``p_settle`` intervals of the previous cut is of the same episode);
- tokens already booked ahead of now are converted to the new rate (as ``TokenBucket.rate`` does);
- one slot is booked: the caller waits ``wait`` seconds (0 while the burst lasts).

It is called as one statement (``SELECT * FROM reserve_budget(...)``): the row is locked for the
length of that statement only. No percent sign or question mark in the function: the journal's
connection rewrites those.
"""

from __future__ import annotations

__all__ = ["RESERVE_BUDGET", "RESERVE_CALL"]

RESERVE_BUDGET = """
CREATE FUNCTION reserve_budget(p_key text, p_ceiling double precision, p_burst integer, p_cuts integer,
                               p_floor double precision, p_decrease double precision, p_settle double precision)
RETURNS TABLE (wait double precision, current_rate double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t double precision := extract(epoch FROM clock_timestamp());
    v_rate double precision;
    v_tat double precision;
    v_episode double precision;
    v_cut_at double precision;
    v_restart double precision;
    cur double precision;
    scale double precision := p_ceiling * 0.005;
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
            t - v_cut_at - cbrt(GREATEST(0, v_episode - v_restart) / scale), 3) + v_episode));
    END IF;
    FOR i IN 1..p_cuts LOOP
        IF v_episode IS NULL OR t - v_cut_at > p_settle / cur THEN
            v_episode := cur;
        END IF;
        v_cut_at := t;
        v_restart := GREATEST(p_floor, cur * p_decrease);
        cur := v_restart;
    END LOOP;
    IF cur <> v_rate THEN
        v_tat := t + GREATEST(0, v_tat - t) * v_rate / cur;
    END IF;
    start := GREATEST(v_tat, t);
    UPDATE rate_budget SET rate = cur, tat = start + 1 / cur, episode_rate = v_episode, cut_at = v_cut_at,
           restart = v_restart, throttles = throttles + p_cuts, reservations = reservations + 1
     WHERE key = p_key;
    wait := GREATEST(0, start - (p_burst - 1) / cur - t);
    current_rate := cur;
    RETURN NEXT;
END
$$
"""

#: one reservation (psycopg's placeholders): key, ceiling, burst, 429s since the last one, floor,
#: decrease, settle intervals
RESERVE_CALL = "SELECT wait, current_rate FROM reserve_budget(%s, %s, %s, %s, %s, %s, %s)"
