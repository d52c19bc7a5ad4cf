"""The ``bulkclaim`` command line. Only this module (and the commands it registers) may configure
logging, install signal handlers or exit the process."""

from __future__ import annotations

import click

from bulkclaim.demo import demo_command
from bulkclaim.sandbox.command import sandbox_command

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bulkclaim")
def cli() -> None:
    """Claim Amazon Connect phone numbers in bulk, safely and as fast as the quota allows."""


cli.add_command(sandbox_command)
cli.add_command(demo_command)


def main() -> None:
    cli(prog_name="bulkclaim")
