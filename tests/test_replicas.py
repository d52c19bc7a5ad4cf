"""Two replicas of a service (two library ``Claimer``s on one PostgreSQL journal, each with its own
connections) asked for the same number, as trials: one trial is one number, both replicas ask for it,
the second a random moment after the first (at once, while the first is sending, or after it is
done), with lost answers and 500s on the way. Every trial must end with one claim effect in the
sandbox's ledger and one token: both replicas get the same outcome, with the journal's token.

``make test`` runs 100 trials; the bar (1,000 trials) is the ``slow`` variant."""

from __future__ import annotations

import random
from collections import Counter
from contextlib import closing

import anyio
import pytest

from bulkclaim.claimer import Claimer
from bulkclaim.journal.postgres.connection import connect, parse_url
from bulkclaim.model import Outcome, Status
from bulkclaim.sandbox import FaultConfig
from tests.postgres import PgServer
from tests.support import sandbox_env
from tests.test_claimer import claimer
from tests.test_journal import req

pytestmark = pytest.mark.anyio

_IN_FLIGHT = 40  # trials at a time
_KEPT_STEPS = "SELECT key FROM meta WHERE key LIKE 'run %'"  # see PostgresJournal.once


async def replica_trials(postgres: PgServer, trials: int, seed: int) -> None:
    url = postgres.fresh_url()
    rng = random.Random(seed)
    faults = FaultConfig(lost_response_rate=0.05, error_rate=0.05, seed=seed,
                         operations=frozenset({"ClaimPhoneNumber"}))
    numbers = [req(i).phone_number for i in range(trials)]
    got: dict[str, list[Outcome]] = {n: [] for n in numbers}
    async with sandbox_env(claim_delay=0.02, faults=faults) as env, claimer(env, url) as first, \
            claimer(env, url) as second:
        slots = anyio.Semaphore(_IN_FLIGHT)

        async def ask(replica: Claimer, number: str, after: float) -> None:
            await anyio.sleep(after)
            got[number].append(await replica.claim(number))

        async def trial(number: str) -> None:
            # who asks first, and how long after it the other one asks (0: at the same moment)
            replicas = [first, second] if rng.random() < 0.5 else [second, first]
            later = rng.choice([0.0, rng.uniform(0.0, 0.05), rng.uniform(0.05, 0.3)])
            async with slots, anyio.create_task_group() as tg:
                tg.start_soon(ask, replicas[0], number, 0.0)
                tg.start_soon(ask, replicas[1], number, later)

        async with anyio.create_task_group() as tg:
            for number in numbers:
                tg.start_soon(trial, number)
    with closing(connect(parse_url(url), read_only=True)) as conn:
        tokens = dict(conn.execute("SELECT phone_number, client_token FROM numbers").fetchall())
    effects = Counter(e.phone_number for e in env.sandbox.ledger if e.action == "claim")
    assert [n for n in numbers if effects[n] != 1] == [], "one claim effect per number"
    assert [e for e in env.sandbox.ledger if e.action == "claim" and e.client_token != tokens[e.phone_number]] == []
    both = {n: {(o.status, o.client_token, o.phone_number_id) for o in outcomes} for n, outcomes in got.items()}
    assert [n for n, outcomes in got.items() if len(outcomes) != 2] == [], "both replicas got an answer"
    assert {n: found for n, found in both.items() if len(found) != 1 or next(iter(found))[:2] !=
            (Status.CLAIMED, tokens[n])} == {}, "one outcome per number, claimed, with the journal's token"
    requests = env.sandbox.stats()["ClaimPhoneNumber"]
    print(f"replica trials: {trials}, {sum(requests.values())} ClaimPhoneNumber requests ({requests}), "
          f"{sum(effects.values())} claim effects, {len(set(tokens.values()))} tokens, 2 outcomes per trial, all "
          "claimed with the journal's token")


async def test_two_replicas_claiming_the_same_number_100_trials(postgres: PgServer) -> None:
    await replica_trials(postgres, 100, seed=15)


@pytest.mark.slow
async def test_two_replicas_claiming_the_same_number_1000_trials(postgres: PgServer) -> None:
    await replica_trials(postgres, 1000, seed=1015)


async def test_a_replicas_claim_many_calls_keep_the_run_wide_steps_of_the_runs_going_on_only(
        postgres: PgServer) -> None:
    url = postgres.fresh_url()
    async with sandbox_env(claim_delay=0.0) as env:
        async with claimer(env, url) as replica:
            with closing(connect(parse_url(url), read_only=True)) as conn:
                for i in range(6):  # each call is a run, with its run-wide steps (Journal.once)
                    outcomes = [o async for o in replica.claim_many([req(i * 2).phone_number, req(i * 2 + 1)])]
                    assert [o.status for o in outcomes] == [Status.CLAIMED] * 2
                    runs = {key.split()[1] for (key,) in conn.execute(_KEPT_STEPS).fetchall()}
                    assert len(runs) <= 1, f"after run {i + 1}: the steps of the runs {runs} are kept"
        with closing(connect(parse_url(url), read_only=True)) as conn:
            assert conn.execute(_KEPT_STEPS).fetchall() == [], "nothing kept once the replica is closed"
