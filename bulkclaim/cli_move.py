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
@option("to-instance-id", group="Target (give exactly one)",
        help="The destination instance id or ARN (of the rows without a to_instance_id / to_target_arn column).")
@option("to-target-arn", group="Target (give exactly one)",
        help="The destination instance or traffic distribution group ARN (of the rows without their own).")
@run_options
def move_command(inputs: tuple[Path, ...], **opts: Any) -> None:
    """Move the numbers of INPUT files (CSV, text or JSON Lines: phone_number and/or phone_number_id,
    optional contact_flow, optional to_instance_id or to_target_arn) from the instance or TDG given by
    --instance-id / --target-arn to the one given by --to-instance-id / --to-target-arn, or by the row's
    own destination column. Each move's token is journaled before it is sent and the number is verified
    CLAIMED on its destination; re-running the same command resumes."""
    source = target_of(opts)  # usage errors first: they need nothing more loaded
    if opts["to_instance_id"] and opts["to_target_arn"]:
        raise click.UsageError("give at most one of --to-instance-id or --to-target-arn")
    destination = (Target(instance_id=opts["to_instance_id"], target_arn=opts["to_target_arn"])
                   if opts["to_instance_id"] or opts["to_target_arn"] else None)
    if destination is not None and destination.key == source.key:
        raise click.UsageError(f"the source and the destination are the same ({source.key})")

    from bulkclaim.cli import _Run
    from bulkclaim.inputs import InputFileError
    from bulkclaim.move import destinations, read_move_rows

    try:
        # every row first: a row without a destination (and no option) stops the run before anything
        rows = list(read_move_rows(inputs, fmt=opts["input_format"],
                                   default_region=opts["default_region_for_numbers"]))
        targets = destinations(rows, destination)
        journal = prepare_run(inputs, opts, _default_journal(destination, source))
        from bulkclaim.cli_flows import resolve_flow_names

        opts["flow_names"] = resolve_flow_names(inputs, destination, opts)  # flows of the destination
        if opts["dry_run"]:
            from bulkclaim.cli_dry_run import dry_run

            resolved = _resolved(rows, source, destination, opts)
            sys.exit(max(dry_run([r for r in resolved if _to(r, targets[0]) == target.key], target, journal,
                                 {**opts, "action": "move", "destinations": len(targets)}) for target in targets))
        from bulkclaim.cli_signals import expect_report

        expect_report(opts["report"], journal)
        sys.exit(_Run(targets[0], journal, {**opts, "inputs": inputs, "action": "move"}, source=source,
                      destination=destination).run(rows))
    except (InputFileError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)


def _to(row: Any, first: Target) -> str:
    """The destination a resolved row goes to (an invalid row without one: the first destination's)."""
    target = getattr(row, "target", None)
    return target.key if isinstance(target, Target) else first.key


def _default_journal(destination: Target | None, source: Target) -> Path:
    """``bulkclaim-move-<destination>.journal`` (with destinations per row, ``bulkclaim-move-from-<source>``):
    re-running the same move resumes it."""
    if destination is None:
        return Path(re.sub(r"^bulkclaim-", "bulkclaim-move-from-", default_journal(source).name))
    return Path(re.sub(r"^bulkclaim-", "bulkclaim-move-", default_journal(destination).name))


def _resolved(rows: Any, source: Target, destination: Target | None, opts: dict[str, Any]) -> list[Any]:
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
