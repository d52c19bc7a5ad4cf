"""The ``bulkclaim`` command line. Only the CLI configures logging, installs signal handlers and
chooses the process's exit code (DESIGN §4):

    0 every valid number claimed (or already ours), and associated with its contact flow if it has one
    1 finished, some failed / invalid / not settled, or a contact flow not associated (failed / pending)
    2 usage, configuration or input error, nothing sent   3 aborted on a fatal service error
    130 SIGINT   143 SIGTERM
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bulkclaim.cli_common import (
    EXIT_FATAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_USAGE,
    JournalOption,
    JournalSpec,
    client_settings,
    default_journal,
    fail,
    group_verbosity_options,
    option,
    rate_settings,
    read_run_quotas,
    shown,
    target_of,
    target_options,
)
from bulkclaim.cli_export import export_command
from bulkclaim.cli_help import GroupedCommand
from bulkclaim.cli_move import move_command
from bulkclaim.cli_options import prepare_run, run_options
from bulkclaim.cli_quota import acquire_command, release_command
from bulkclaim.cli_search import search_command
from bulkclaim.cli_signals import expect_report, report_written, set_aside_report
from bulkclaim.demo import demo_command
from bulkclaim.model import BulkclaimError, JournalError, Status, Target
from bulkclaim.sandbox.command import sandbox_command

# What a command needs to run (the AWS SDK, the engine) is imported in its body: ``--help`` and
# usage errors answer without loading it.
if TYPE_CHECKING:
    from bulkclaim.engine import RunSummary
    from bulkclaim.journal import JournalStatus

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bulkclaim")
@group_verbosity_options
def cli(verbose: bool, quiet: bool) -> None:
    """Claim Amazon Connect phone numbers in bulk, safely and as fast as the quota allows."""


@cli.command("claim", cls=GroupedCommand, short_help="Claim the numbers of input files (CSV, text, JSON Lines).")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@target_options
@run_options
def claim_command(inputs: tuple[Path, ...], **opts: Any) -> None:
    """Claim every number in INPUT files (CSV, text or JSON Lines) to one instance or TDG."""
    target = target_of(opts)  # a usage error first: it needs nothing more loaded

    from bulkclaim.inputs import InputFileError, read_inputs

    try:
        journal = prepare_run(inputs, opts, default_journal(target))
        from bulkclaim.cli_flows import resolve_flow_names

        flow_names = resolve_flow_names(inputs, target, opts)
        rows = read_inputs(inputs, target=target, fmt=opts["input_format"],
                           default_region=opts["default_region_for_numbers"], flow_names=flow_names)
        if opts["dry_run"]:
            from bulkclaim.cli_dry_run import dry_run

            sys.exit(dry_run(rows, target, journal, opts))
        expect_report(opts["report"], journal)
        sys.exit(_Run(target, journal, {**opts, "inputs": inputs, "flow_names": flow_names}).run(rows))
    except (InputFileError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)


@dataclass
class _Run:
    """One ``bulkclaim claim`` (or ``move``): the Claimer, signals, preflight, progress, report and exit code."""

    target: Target
    journal: JournalSpec
    opts: dict[str, Any]
    summary: RunSummary | None = None
    #: ``bulkclaim move``: the numbers' source; ``target`` is their (first) destination, ``destination``
    #: the one given by option, for the rows without their own (None: every row names its own)
    source: Target | None = None
    destination: Target | None = None

    def run(self, rows: Any) -> int:
        from bulkclaim.cli_metrics import exporting
        from bulkclaim.cli_run import Harness

        self.harness = Harness(self.journal, self.opts, before_abort=self._write_report)
        with exporting(self.opts, self.harness.telemetry):
            self.harness.run_main(lambda: self._main(rows))
            return self._finish()

    async def _main(self, rows: Any) -> None:
        import anyio
        import structlog

        from bulkclaim.claimer import Claimer
        from bulkclaim.cli_run import check_quota, debug_kill_point
        from bulkclaim.inputs import fingerprint
        from bulkclaim.model import Options
        from bulkclaim.progress import run_with_progress
        from bulkclaim.quotas import Quotas
        from bulkclaim.run import RunState

        opts = self.opts
        # Only --rate auto needs the quotas before the run; the preflight reads them once there is work.
        quotas = await read_run_quotas(opts) if opts["rate"] == "auto" else None
        options = Options(verify=not opts["no_verify"], verify_timeout=opts["verify_timeout"],
                          retry_failed=opts["retry_failed"])
        async with Claimer(journal=self.journal, instance_id=self.target.instance_id,
                           target_arn=self.target.target_arn, client_settings=client_settings(opts),
                           rates=rate_settings(opts, quotas or Quotas()), options=options,
                           fatal_cooldown=None, outage_timeout=opts["outage_timeout"],
                           telemetry=self.harness.telemetry) as claimer:
            state = RunState()  # before the signal handlers: a signal from now on stops this run
            with anyio.CancelScope() as scope:
                self.harness.install_signals(state.request_stop, scope)
                tty = sys.stderr.isatty() and not opts["no_progress"] and opts["verbosity"] >= 0
                self.summary = state.summary
                digest: str | None = None
                targets: dict[str, Target] = {}
                if self.source is None:
                    digest = await anyio.to_thread.run_sync(lambda: fingerprint(
                        opts["inputs"], target=self.target, fmt=opts["input_format"],
                        default_region=opts["default_region_for_numbers"], flow_names=opts.get("flow_names")))
                else:  # a move: rows become requests once the source and the destination are listed
                    from bulkclaim.model import ClaimRequest
                    from bulkclaim.move import resolve_moves

                    rows = await resolve_moves(claimer.api, self.source, self.destination, rows, stop=state.stop,
                                               flow_names=opts.get("flow_names"))
                    targets = {r.target.key: r.target for r in rows if isinstance(r, ClaimRequest)}

                async def before_sending(summary: RunSummary) -> None:
                    nonlocal quotas
                    debug_kill_point()
                    async def run_quotas() -> Quotas:
                        nonlocal quotas
                        quotas = quotas or await read_run_quotas(opts)
                        return quotas

                    if summary.to_send and not opts["no_preflight"]:  # each destination of a move: its quota
                        for target in (targets or {self.target.key: self.target}).values():
                            await check_quota(claimer, target, summary.members_run, run_quotas, opts, state.stop,
                                              once="preflight" if target == self.target else f"preflight {target.key}")

                try:
                    await run_with_progress(lambda: claimer.engine.run(rows, _ignore, fingerprint=digest,
                                                                       emit_done=False, after_plan=before_sending,
                                                                       state=state),
                                            state,
                                            claimer.limiters["ClaimPhoneNumber" if self.source is None
                                                             else "UpdatePhoneNumber"], tty=tty,
                                            log=structlog.get_logger("bulkclaim"))
                finally:
                    self.summary = state.summary
                    self.harness.count_requests(claimer)

    def _write_report(self) -> None:
        """``--report``: this run's numbers as the journal holds them now, replacing the file atomically."""
        from bulkclaim.report import atomic_write, journal_outcomes, report_format, write_report

        run, path = (self.summary.members_run if self.summary else None), self.opts["report"]
        if run and path:
            with atomic_write(path) as handle:
                write_report(journal_outcomes(self.journal, run=run), handle, report_format(path))
            report_written()

    def _finish(self) -> int:
        from bulkclaim.journal import read_existing_journal

        run = self.summary.members_run if self.summary else None
        counts: dict[str, int] = {}
        removed: dict[tuple[str, str], str] = {}  # numbers no longer in the input: their status now
        flows: dict[str, int] = {}
        if run:
            try:
                self._write_report()
            except (OSError, BulkclaimError) as exc:
                problem = f"cannot write the report {self.opts['report']}: {getattr(exc, 'strerror', None) or exc}"
                aside = set_aside_report()
                fail(f"{problem}. Every outcome is in the journal: `bulkclaim report --journal {shown(self.journal)} "
                     f"--output FILE` writes it. {aside}".rstrip(), EXIT_FATAL if self.harness.requests_sent
                     else EXIT_USAGE)
            with read_existing_journal(self.journal) as reader:  # the whole run's, whichever worker did what
                counts, flows = reader.run_counts(run), reader.flow_counts(run)
                for (target, number), status in (self.summary.removed if self.summary else {}).items():
                    found = reader.lookup(target, number)
                    removed[(target, number)] = found[0].value if found else status
        tally = " · ".join(f"{status} {n}" for status, n in sorted(counts.items())) or "nothing to do"
        if flows:
            tally += " — flows: " + " · ".join(f"{status} {n}" for status, n in sorted(flows.items()))
        click.echo(f"{tally}" + (f" — report: {self.opts['report']}" if self.opts["report"] else ""))
        if removed:
            settled = " · ".join(f"{status} {n}" for status, n in sorted(Counter(removed.values()).items()))
            click.echo(f"{len(removed)} number(s) no longer in the input were sent by an earlier run: settled as "
                       f"{settled} (this run's report lists them; `bulkclaim release` gives back claimed ones)")
        if self.harness.signal_received is not None:
            unfinished = counts.get("pending", 0) + counts.get("in_progress", 0)
            click.echo(f"bulkclaim: interrupted; {unfinished} number(s) not finished. Run the same command again "
                       f"to resume (journal: {shown(self.journal)}).", err=True)
            return EXIT_SIGNAL[self.harness.signal_received]
        # Numbers no longer in the input count only while their outcome is unknown (pending, in_progress).
        gone = Counter(s for s in removed.values() if s in ("claimed", "failed"))
        # A contact flow asked for and not associated (failed, or pending) leaves the run incomplete too.
        complete = set(+(Counter(counts) - gone)) <= {"claimed"} and set(flows) <= {"associated"}
        return EXIT_OK if complete else EXIT_INCOMPLETE


async def _ignore(_: Any) -> None:
    return None


@cli.command("status", cls=GroupedCommand, short_help="Counts, live state and latest errors of a journal.")
@option("journal", type=JournalOption(), required=True,
        help="The journal to read, a file or a postgresql:// URL (read-only; safe during a run).")
@option("json", dest="as_json", is_flag=True, help="Machine-readable output.")
def status_command(journal: JournalSpec, as_json: bool) -> None:
    """Whether a run is live, counts by status and by run, the claim rate and ETA of a live run, and the
    numbers that currently have an error (safe during a run: reads only, takes no lock)."""
    from bulkclaim.journal import read_existing_journal

    try:
        with read_existing_journal(journal) as reader:
            status = reader.status()
    except JournalError as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        click.echo(json.dumps(status.as_dict()))
        return
    click.echo(f"journal {status.journal}")
    click.echo(f"  {'state':<12} {_state_line(status)}")
    if status.latest_run is not None:
        started = "" if status.last_run_started_at is None else datetime.fromtimestamp(
            status.last_run_started_at, UTC).strftime(", started %Y-%m-%d %H:%M:%S UTC")
        took_over = ("" if status.latest_run_numbers == status.latest_run
                     else f", same inputs as run {status.latest_run_numbers}")
        click.echo(f"  {'runs':<12} {status.runs} (latest: run {status.latest_run}{started}{took_over})")
    if status.workers:
        click.echo(f"  {'workers':<12} " + " · ".join(
            f"{count} on run {run}" if run else f"{count} planning" for run, count in status.workers.items()))
    for name, count in status.counts.items():
        click.echo(f"  {name:<12} {count}")
    if status.flows:
        click.echo(f"  {'flows':<12} " + " · ".join(f"{name} {n}" for name, n in sorted(status.flows.items())))
    if status.live:
        speed = "-" if status.claims_per_second is None else f"{status.claims_per_second:.2f}"
        eta = "-" if status.eta_seconds is None else f"{status.eta_seconds:.0f}s"
        click.echo(f"  rate {speed} claims/s (last minute) · ETA {eta}")
    if status.run_counts:
        click.echo("  by run (the run that last acted on each number; `release --run N`, report column `run`):")
        for run, counts in list(status.run_counts.items())[-10:]:
            click.echo(f"    run {run}: " + " · ".join(f"{name} {n}" for name, n in counts.items()))
    if status.last_errors:
        click.echo(f"  {status.error_count} number(s) with an error now; the latest:")
    for error in status.last_errors:
        click.echo(f"    {error['phone_number']}: {error['status']} {error['error_code']} (run {error['run']})"
                   + (f" — {error['error_message']}" if error["error_message"] else ""))


def _state_line(status: JournalStatus) -> str:
    if status.live:
        pid = f" (pid {status.pid})" if status.pid else ""
        if status.live_run is not None:
            return f"live — run {status.live_run} is going on{pid}"
        return f"live — a bulkclaim process{pid} has the journal open"
    if status.live is None:
        return "unknown — this system cannot tell whether a bulkclaim process has the journal open"
    return "idle — no bulkclaim process has the journal open"


@cli.command("report", cls=GroupedCommand, short_help="Write a journal's report rows (CSV or JSON Lines).")
@option("journal", type=JournalOption(), required=True,
        help="The journal to read, a file or a postgresql:// URL (read-only; safe during a run).")
@option("format", dest="fmt", type=click.Choice(["csv", "jsonl"]),
        help="Report format [default: from --output, else jsonl].")
@option("output", type=click.Path(dir_okay=False, path_type=Path),
        help="Write here, replaced atomically [default: stdout].")
@option("status", dest="statuses",
        help=f"Only these statuses, comma-separated (e.g. failed,invalid): {', '.join(s.value for s in Status)}.")
def report_command(journal: JournalSpec, fmt: str | None, output: Path | None, statuses: str | None) -> None:
    """Write one report row per number of a journal: phone_number, source, target, status, phone_number_id,
    phone_number_arn, client_token, attempts, error_code, error_message, updated_at (see the README)."""
    from bulkclaim.report import atomic_write, journal_outcomes, report_format, write_report

    wanted = frozenset(s.strip() for s in statuses.split(",")) if statuses else None
    if wanted is not None and (unknown := sorted(wanted - {s.value for s in Status})):
        fail(f"--status: unknown status {', '.join(map(repr, unknown))}; valid statuses are "
             f"{', '.join(s.value for s in Status)}", EXIT_USAGE)
    try:
        chosen = fmt or (report_format(output) if output else "jsonl")
        rows = journal_outcomes(journal, statuses=wanted)
        if output is None:
            write_report(rows, sys.stdout, chosen)
        else:
            with atomic_write(output) as handle:
                write_report(rows, handle, chosen)
    except (JournalError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE)


cli.add_command(move_command)
cli.add_command(acquire_command)
cli.add_command(release_command)
cli.add_command(sandbox_command)
cli.add_command(demo_command)
cli.add_command(search_command)
cli.add_command(export_command)


def main() -> None:
    try:
        cli(prog_name="bulkclaim")
    except Exception as exc:  # a bug: one line for the user, the traceback only when asked for
        if os.environ.get("BULKCLAIM_DEBUG"):
            raise
        click.echo(f"bulkclaim: internal error: {type(exc).__name__}: {exc} "
                   "(set BULKCLAIM_DEBUG=1 to see the traceback, and please report it)", err=True)
        sys.exit(70)
