"""The controller across rates, on the fake clock of ``tests/simulation.py`` (issue 13).

The benchmarks' scenarios at Connect's real default (2/s, burst 5) and scaled up to 20 and 50/s: the
controller's constants are in intervals of the rate, so the same scenario must behave alike at every
rate. Deterministic (seeded), no real sleeps, no timing asserts: a 300-number run takes milliseconds.
"""

from __future__ import annotations

import statistics

import pytest

from tests.simulation import SimulatedRun, simulate, simulate_shared, split_of_two

RATES = (2.0, 20.0, 50.0)


def median_run(runs: list[SimulatedRun], rate: float) -> tuple[float, float]:
    """(θ, η) of the median run by each measure."""
    return (statistics.median(r.throttled_share for r in runs), statistics.median(r.efficiency(rate) for r in runs))


@pytest.mark.parametrize("rate", [2.0, 20.0, 50.0])
def test_a_client_told_the_true_rate_is_never_throttled_at_any_rate(rate: float) -> None:
    """The matched scenario of the benchmarks on a fake clock (tests/simulation.py), at Connect's
    real default (2/s, burst 5) as well as scaled up: no 429 at all, and within 3% of the ideal
    time (N - b) / r. Ratios do not carry over between rates by themselves: each is measured."""
    for seed in range(5):
        run = simulate(true_rate=rate, told_rate=rate, numbers=300, seed=seed)
        assert run.accepted == 300 and run.throttled == 0
        assert (300 - 5) / rate / run.finished_at >= 0.97


def test_told_three_times_the_rate_throttles_alike_at_2_20_and_50_per_second() -> None:
    """Issue 13: the controller's constants are in the bucket's own units, so a client told 3x the
    true rate (an unknown or wrong quota) throttles within one percentage point at Connect's real
    default 2/s and scaled up to 20 and 50/s (it was 24% / 4.6% / 2.8% with constants in seconds),
    at most 3% of attempts, and keeps the service's bucket busy (η ≥ 0.93)."""
    shares = []
    for rate in RATES:
        runs = [simulate(true_rate=rate, told_rate=3 * rate, numbers=300, seed=seed) for seed in range(7)]
        assert all(run.accepted == 300 for run in runs)
        theta, eta = median_run(runs, rate)
        assert theta <= 0.03 and eta >= 0.93, (rate, theta, eta)
        shares.append(theta)
    assert max(shares) - min(shares) <= 0.01, shares


@pytest.mark.parametrize("quota", [False, True], ids=["told", "quota"])
def test_a_neighbour_taking_a_quarter_of_the_bucket_is_barely_throttled_at_any_rate(quota: bool) -> None:
    """Told the true rate while another caller takes 25% of the bucket (no retries): the neighbour
    keeps its share (≤ 5% of its requests throttled), we ≤ 10%, and we use our fair share (η ≥ 0.9
    against 75% of the bucket), at 2, 20 and 50/s alike; also when the rate is the quota read from
    Service Quotas, whose controller probes back up more promptly."""
    for rate in RATES:
        runs = [simulate_shared(true_rate=rate, told=[rate], numbers=300, neighbour_rate=rate / 4, quota=quota,
                                seed=seed) for seed in range(7)]
        ours, theirs = [run[0] for run in runs], [run[1] for run in runs]
        theta, eta_fair = median_run(ours, 0.75 * rate)
        assert theta <= 0.10 and eta_fair >= 0.9, (rate, theta, eta_fair)
        assert statistics.median(run.throttled_share for run in theirs) <= 0.05, rate


def two_processes(rate: float, *, quota: bool) -> tuple[list[float], list[float]]:
    """θ and η together of two processes claiming 150 numbers each from one bucket, both given the true
    rate; the second starts with the first, or half a second later."""
    shares, etas = [], []
    for seed in range(8):
        runs = simulate_shared(true_rate=rate, told=[rate, rate], numbers=150, starts=[0.0, seed % 2 / 2],
                               quota=quota, seed=seed)
        assert all(run.accepted == 150 for run in runs)
        shares.append(sum(r.throttled for r in runs) / sum(r.attempts for r in runs))
        etas.append((300 - 5) / rate / max(r.finished_at for r in runs))
    return shares, etas


def test_two_processes_sharing_a_bucket_are_throttled_little_at_any_rate() -> None:
    """Two bulkclaim processes in one account, both told the true rate: together at most 5% of their
    attempts throttled, at 2, 20 and 50/s, whether the rate was given (``--rate``) or read from the
    quota (``--rate auto``)."""
    for rate in RATES:
        for quota in (False, True):
            shares, _ = two_processes(rate, quota=quota)
            assert statistics.median(shares) <= 0.05, (rate, quota, shares)


def test_two_processes_whose_rate_is_the_quota_finish_closer_together() -> None:
    """With the rate read from Service Quotas, the process left alone when the other finishes probes
    back to the quota by doubling rather than climbing at its own low rate: together they keep the
    bucket busier (median η ≥ 0.86 at 2, 20 and 50/s; given the rate, 0.75-0.86).
    Issue 13's bar, 0.93, is not met here (median 0.89-0.91 since the third pass, 0.87-0.89 before):
    the multiplicative cuts that even the split out leave the bucket partly unused while the rate
    climbs back (see benchmarks/RESULTS.md)."""
    for rate in RATES:
        _, told = two_processes(rate, quota=False)
        _, quota = two_processes(rate, quota=True)
        assert statistics.median(quota) >= max(0.86, statistics.median(told)), (rate, told, quota)
        assert min(quota) >= 0.8, (rate, quota)


def test_with_the_quota_known_an_uneven_split_of_the_bucket_evens_out() -> None:
    """Issue 13, third pass: two controllers that know the ceiling is the quota, started together on
    one bucket (tests/simulation.py's ``split_of_two``, one interval at a time). A 429 above half
    of the quota cuts the current rate by a share that grows with it (AIMD: the bigger sender gives
    back more) and the climb back counts in intervals of the quota (alike for both), so whatever
    split the first 429s leave evens out: after the first 200 intervals the smaller takes >= 35%
    of what both get in every seed, 43% at the median. (Restarting at the measured share, as the
    second pass did, kept a 70/30 split for 600 intervals in one seed of ten: smaller share 0.22.)
    Scale-free: the same at 2, 20 and 50/s."""
    for rate in RATES:
        shares = []
        for seed in range(10):
            accepted = split_of_two(rate=rate, intervals=600, seed=seed)[200:]
            first, second = sum(a for a, _ in accepted), sum(b for _, b in accepted)
            shares.append(min(first, second) / (first + second))
        assert min(shares) >= 0.35 and statistics.median(shares) >= 0.43, (rate, shares)
