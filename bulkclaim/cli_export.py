"""``bulkclaim export``: what a target holds, written as a file ``bulkclaim claim`` (and ``move``) reads.

Only the command's options are defined at import time; the AWS SDK is imported when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bulkclaim.cli_common import EXIT_FATAL, EXIT_OK, EXIT_USAGE, aws_options, fail, option, target_of, target_options
from bulkclaim.cli_help import GroupedCommand
from bulkclaim.report import atomic_write, check_writable

__all__ = ["export_command"]

_FORMATS = ("csv", "jsonl")


@click.command("export", cls=GroupedCommand, short_help="Write the numbers a target holds, with their flows.")
@target_options
@option("output", type=click.Path(dir_okay=False, path_type=Path), required=True,
        help="Write the numbers here (.csv or .jsonl), as a `bulkclaim claim` input.")
@option("format", dest="output_format", type=click.Choice(_FORMATS),
        help="Output format [default: from --output's extension].")
@aws_options
def export_command(**opts: Any) -> None:
    """Write every CLAIMED number of the target to --output: phone_number, phone_number_id, description,
    tags and contact_flow (its associated flow). Claims nothing; the file is a valid input of
    `bulkclaim claim` and `bulkclaim move`."""
    import anyio

    from bulkclaim.calls import CallFailed
    from bulkclaim.claimer import connect_api
    from bulkclaim.cli_common import client_settings
    from bulkclaim.export import held_numbers, write_held
    from bulkclaim.logs import configure_logging
    from bulkclaim.model import FatalServiceError
    from bulkclaim.report import report_format

    configure_logging(opts["log_format"])
    target = target_of(opts)
    output: Path = opts["output"]
    try:
        fmt = opts["output_format"] or report_format(output)
        if fmt not in _FORMATS:
            raise ValueError(f"{output}: export writes .csv or .jsonl, not {fmt}")
        check_writable(output, "output")  # before any request
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)

    async def export() -> Any:
        async with connect_api(client_settings(opts), outage_timeout=opts["outage_timeout"]) as api:
            return await held_numbers(api, target)

    try:
        held = anyio.run(export)
    except (FatalServiceError, CallFailed) as exc:
        fail(f"aborted: {exc}; nothing written", EXIT_FATAL)
    try:
        with atomic_write(output) as handle:
            count = write_held(handle, fmt, held)
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}", EXIT_FATAL)
    flows = sum(1 for number in held if number.contact_flow)
    click.echo(f"exported {count} number(s) of {target.key}, {flows} with a contact flow, to {output}")
    raise SystemExit(EXIT_OK)
