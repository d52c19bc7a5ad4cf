"""``bulkclaim move``: move numbers we hold from one instance or TDG to another (UpdatePhoneNumber), with
the journal, limiter, verification, report and exit codes of ``claim`` (see ``bulkclaim.move``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from bulkclaim.cli_common import (
    EXIT_FATAL,
    EXIT_USAGE,
    client_settings,
    default_journal,
    fail,
    option,
    target_of,
    target_options,
)
from bulkclaim.cli_help import GroupedCommand
from bulkclaim.cli_options import prepare_run, run_options
from bulkclaim.model import Target

__all__ = ["move_command"]


@click.command("move", cls=GroupedCommand, short_help="Move numbers to another instance or TDG (UpdatePhoneNumber).")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@target_options
@option("to-instance-id", group="Target (give exactly one)", help="The destination instance id or ARN.")
@option("to-target-arn", group="Target (give exactly one)",
        help="The destination instance or traffic distribution group ARN.")
@run_options
def move_command(inputs: tuple[Path, ...], **opts: Any) -> None:
    """Move the numbers of INPUT files (CSV, text or JSON Lines: phone_number and/or phone_number_id,
    optional contact_flow) from the instance or TDG given by --instance-id / --target-arn to the one given
    by --to-instance-id / --to-target-arn. Each move's token is journaled before it is sent and the number
    is verified CLAIMED on the destination; re-running the same command resumes."""
    source = target_of(opts)  # usage errors first: they need nothing more loaded
    if bool(opts["to_instance_id"]) == bool(opts["to_target_arn"]):
        raise click.UsageError("give exactly one of --to-instance-id or --to-target-arn")
    destination = Target(instance_id=opts["to_instance_id"], target_arn=opts["to_target_arn"])
    if destination.key == source.key:
        raise click.UsageError(f"the source and the destination are the same ({source.key})")

    from bulkclaim.cli import _Run
    from bulkclaim.inputs import InputFileError
    from bulkclaim.move import read_move_rows

    try:
        journal = prepare_run(inputs, opts, _default_journal(destination))
        from bulkclaim.cli_flows import resolve_flow_names

        opts["flow_names"] = resolve_flow_names(inputs, destination, opts)  # flows of the destination
        rows = read_move_rows(inputs, fmt=opts["input_format"], default_region=opts["default_region_for_numbers"])
        if opts["dry_run"]:
            from bulkclaim.cli_dry_run import dry_run

            sys.exit(dry_run(_resolved(rows, source, destination, opts), destination, journal,
                             {**opts, "action": "move"}))
        from bulkclaim.cli_signals import expect_report

        expect_report(opts["report"], journal)
        sys.exit(_Run(destination, journal, {**opts, "inputs": inputs, "action": "move"}, source=source).run(rows))
    except (InputFileError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)


def _default_journal(destination: Target) -> Path:
    """``bulkclaim-move-<destination>.journal``: re-running the same move resumes it."""
    return Path(re.sub(r"^bulkclaim-", "bulkclaim-move-", default_journal(destination).name))


def _resolved(rows: Any, source: Target, destination: Target, opts: dict[str, Any]) -> list[Any]:
    """For the dry run: the rows resolved against one listing of each target (read-only)."""
    import anyio

    from bulkclaim.claimer import connect_api
    from bulkclaim.model import BulkclaimError, FatalServiceError
    from bulkclaim.move import resolve_moves

    async def resolve() -> list[Any]:
        async with connect_api(client_settings(opts), outage_timeout=opts["outage_timeout"]) as api:
            return await resolve_moves(api, source, destination, rows, flow_names=opts.get("flow_names"))

    try:
        return anyio.run(resolve)
    except FatalServiceError as exc:
        fail(f"dry run: the move would stop here (nothing was sent): {exc}", EXIT_FATAL)
    except BulkclaimError as exc:
        fail(str(exc), EXIT_USAGE)
