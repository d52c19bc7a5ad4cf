"""``bulkclaim demo``: start a sandbox in-process and claim the sample numbers against it."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from bulkclaim.model import Outcome

__all__ = ["demo_command"]

#: Shipped inside the package, so ``bulkclaim demo`` works from any directory after a plain install.
_SAMPLE = Path(__file__).parent / "sample_inputs" / "numbers.csv"
_RATE, _BURST = 10.0, 5  # the demo's sandbox quota: 5x Connect's default, so the demo takes seconds


@click.command("demo", short_help="Claim sample numbers against an in-process sandbox.")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=_SAMPLE, show_default="the bundled sample_inputs/numbers.csv",
              help="Numbers to claim (CSV, text or JSON Lines).")
def demo_command(input_path: Path) -> None:
    """Claim the sample numbers against an in-process sandbox and print the result."""
    import logging

    import anyio

    from bulkclaim.logs import configure_logging

    configure_logging("auto", logging.WARNING)
    outcomes = anyio.run(_claim_all, input_path)
    click.echo(f"{'phone_number':<16} {'status':<12} {'attempts':>8}  phone_number_id")
    for outcome in outcomes:
        click.echo(f"{outcome.phone_number:<16} {outcome.status.value:<12} {outcome.attempts:>8}  "
                   f"{outcome.phone_number_id or outcome.error_message or ''}")
    counts = Counter(o.status.value for o in outcomes)
    click.echo(f"{counts.get('claimed', 0)}/{len(outcomes)} numbers claimed "
               f"({', '.join(f'{status}: {n}' for status, n in sorted(counts.items()))})")


async def _claim_all(input_path: Path) -> list[Outcome]:
    import tempfile

    import structlog

    from bulkclaim.claimer import Claimer
    from bulkclaim.inputs import read_inputs
    from bulkclaim.model import Target
    from bulkclaim.progress import run_with_progress
    from bulkclaim.run import RunState
    from bulkclaim.sandbox import API_NAMES, TEST_CREDENTIALS, SandboxConfig, ThrottleConfig, serve
    from bulkclaim.settings import ClientSettings, RateSettings

    config = SandboxConfig(claim_delay=0.2, throttle={api: ThrottleConfig(_RATE, _BURST) for api in API_NAMES})
    async with serve(config) as running:
        settings = ClientSettings(region=config.region, endpoint_url=running.endpoint_url,
                                  aws_access_key_id=TEST_CREDENTIALS.access_key_id,
                                  aws_secret_access_key=TEST_CREDENTIALS.secret_access_key)
        target = Target(instance_id=config.instance_ids[0])
        with tempfile.TemporaryDirectory() as scratch:
            async with Claimer(instance_id=target.instance_id, journal=Path(scratch) / "demo.journal",
                               client_settings=settings, rates=RateSettings(_RATE, _BURST)) as claimer:
                outcomes: list[Outcome] = []

                async def collect(outcome: Outcome) -> None:
                    outcomes.append(outcome)

                rows = read_inputs([input_path], target=target)
                state = RunState()
                await run_with_progress(lambda: claimer.engine.run(rows, collect, state=state), state,
                                        claimer.limiters["ClaimPhoneNumber"], tty=sys.stderr.isatty(),
                                        log=structlog.get_logger("bulkclaim"), interval=1.0)
                return sorted(outcomes, key=lambda o: int(o.source.rsplit(":", 1)[-1]))
