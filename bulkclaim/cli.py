"""The ``bulkclaim`` command line. Only the CLI configures logging, installs signal handlers and
chooses the process's exit code (DESIGN §4):

    0 every valid number claimed (or already ours)   1 finished, some failed / invalid / not settled
    2 usage, configuration or input error, nothing sent   3 aborted on a fatal service error
    130 SIGINT   143 SIGTERM
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click
import structlog

from bulkclaim.claimer import Claimer, RateSettings
from bulkclaim.connect import ClientSettings
from bulkclaim.demo import demo_command
from bulkclaim.engine import Options, RunSummary
from bulkclaim.inputs import FORMATS, InputFileError, check_file, fingerprint, read_inputs
from bulkclaim.journal_views import dry_run_plan, journal_status, run_counts
from bulkclaim.logs import configure_logging
from bulkclaim.model import (
    BulkclaimError,
    ConfigurationError,
    FatalServiceError,
    JournalError,
    ParametersChangedError,
    Target,
)
from bulkclaim.progress import run_with_progress
from bulkclaim.report import journal_outcomes, open_private, report_format, write_report
from bulkclaim.sandbox.command import sandbox_command

__all__ = ["cli", "main"]

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
_F = TypeVar("_F", bound=Callable[..., Any])


def _option(name: str, *extra_env: str, dest: str | None = None, **kwargs: Any) -> Callable[[_F], _F]:
    """An option also read from BULKCLAIM_<NAME> (then from ``extra_env``, e.g. AWS_REGION)."""
    env = [f"BULKCLAIM_{name.upper().replace('-', '_')}", *extra_env]
    return click.option(f"--{name}", *([dest] if dest else []), envvar=env, show_envvar=True, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bulkclaim")
def cli() -> None:
    """Claim Amazon Connect phone numbers in bulk, safely and as fast as the quota allows."""


def default_journal(target: Target) -> Path:
    """A journal name derived from the target, so re-running the same command resumes."""
    name = target.instance_id or (target.target_arn or "").rsplit(":", 1)[-1]
    return Path(f"bulkclaim-{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}.journal")


@cli.command("claim")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_option("instance-id", help="Connect instance id or ARN to claim to.")
@_option("target-arn", help="Instance or traffic distribution group ARN to claim to.")
@_option("journal", type=click.Path(dir_okay=False, path_type=Path), help="[default: from the target]")
@_option("report", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here (.csv or .jsonl).")
@_option("rate", type=click.FloatRange(min=0.01), default=2.0, show_default=True, help="Claims per second.")
@_option("burst", type=click.IntRange(min=1), default=5, show_default=True, help="The quota's burst.")
@_option("max-in-flight", type=click.IntRange(min=1), help="Concurrent claims [default: burst].")
@_option("no-adaptive", is_flag=True, help="Keep the rate fixed even when throttled.")
@_option("no-verify", is_flag=True, help="Do not wait for CLAIMED; leave accepted claims in_progress.")
@_option("verify-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True)
@_option("retry-failed", is_flag=True, help="Try failed numbers again, with new tokens.")
@_option("default-region-for-numbers", metavar="CC", help="Country for national numbers, e.g. US.")
@_option("format", dest="input_format", type=click.Choice(FORMATS), help="Input format [default: from extension].")
@_option("dry-run", is_flag=True, help="Read, validate and plan; send nothing.")
@_option("region", "AWS_REGION", "AWS_DEFAULT_REGION")
@_option("profile", "AWS_PROFILE")
@_option("endpoint-url", "AWS_ENDPOINT_URL_CONNECT")
@_option("log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True)
@_option("no-progress", is_flag=True)
@_option("grace-period", type=click.FloatRange(min=0), default=10.0, show_default=True,
         help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.")
@_option("connect-timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True)
@_option("read-timeout", type=click.FloatRange(min=0.01), default=15.0, show_default=True,
         help="Seconds to wait for an answer before retrying with the same token.")
def claim_command(inputs: tuple[Path, ...], **opts: Any) -> None:
    """Claim every number in INPUT files (CSV, text or JSON Lines) to one instance or TDG."""
    configure_logging(opts["log_format"])
    if bool(opts["instance_id"]) == bool(opts["target_arn"]):
        raise click.UsageError("give exactly one of --instance-id or --target-arn")
    target = Target(instance_id=opts["instance_id"], target_arn=opts["target_arn"])
    journal = opts["journal"] or default_journal(target)
    try:
        for path in inputs:
            check_file(path, opts["input_format"])
        if opts["report"]:
            report_format(opts["report"])
        rows = read_inputs(inputs, target=target, fmt=opts["input_format"],
                           default_region=opts["default_region_for_numbers"])
        if opts["dry_run"]:
            sys.exit(_dry_run(rows, journal, opts["retry_failed"]))
        sys.exit(_Run(target, journal, {**opts, "inputs": inputs}).execute(rows))
    except (InputFileError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"bulkclaim: error: {message}", err=True)
    sys.exit(code)


def _dry_run(rows: Any, journal: Path, retry_failed: bool) -> int:
    try:
        plan = dry_run_plan(rows, journal, retry_failed=retry_failed)
    except BulkclaimError as exc:
        _fail(str(exc), EXIT_USAGE)
    done = ", ".join(f"{n} {status}" for status, n in sorted(plan.already_done.items())) or "none"
    click.echo(f"dry run (nothing sent) — journal: {journal}")
    click.echo(f"  would claim:       {plan.to_send}")
    click.echo(f"  would resume:      {plan.to_resume} (pending from an earlier run, same token)")
    click.echo(f"  would verify:      {plan.to_verify} (in_progress from an earlier run)")
    click.echo(f"  already done:      {done}")
    click.echo(f"  duplicates:        {plan.duplicates}")
    click.echo(f"  invalid:           {plan.invalid_count}")
    for row in plan.invalid[:20]:
        click.echo(f"    {row.source}: {row.reason}")
    if plan.changed:
        click.echo(f"  REFUSED: {len(plan.changed)} pending number(s) changed parameters:")
        for request in plan.changed[:20]:
            click.echo(f"    {request.source}: {request.phone_number}")
        return EXIT_USAGE
    return EXIT_INCOMPLETE if plan.invalid_count else EXIT_OK


@dataclass
class _Run:
    """One ``bulkclaim claim``: the Claimer, signals, progress, report and exit code."""

    target: Target
    journal: Path
    opts: dict[str, Any]
    signal_received: signal.Signals | None = None
    summary: RunSummary | None = None
    requests_sent: int = 0

    def execute(self, rows: Any) -> int:
        log = structlog.get_logger("bulkclaim")
        try:
            anyio.run(self._main, rows)
        except (ParametersChangedError, ConfigurationError) as exc:
            _fail(str(exc), EXIT_USAGE)
        except FatalServiceError as exc:
            log.error("run.aborted", error_code=exc.code, error_message=exc.message)
            _fail(f"aborted: {exc} (the journal {self.journal} is intact; fix the cause and run the same "
                  "command again to continue)", EXIT_FATAL)
        except (JournalError, InputFileError) as exc:  # exit 2 promises that nothing was sent
            _fail(str(exc), EXIT_FATAL if self.requests_sent else EXIT_USAGE)
        return self._finish()

    async def _main(self, rows: Any) -> None:
        opts = self.opts
        settings = ClientSettings(region=opts["region"], profile=opts["profile"], endpoint_url=opts["endpoint_url"],
                                  connect_timeout=opts["connect_timeout"], read_timeout=opts["read_timeout"])
        rates = RateSettings(opts["rate"], opts["burst"], max_in_flight=opts["max_in_flight"],
                             adaptive=not opts["no_adaptive"])
        options = Options(verify=not opts["no_verify"], verify_timeout=opts["verify_timeout"],
                          retry_failed=opts["retry_failed"])
        async with Claimer(journal=self.journal, instance_id=self.target.instance_id,
                           target_arn=self.target.target_arn, client_settings=settings, rates=rates,
                           options=options, fatal_cooldown=None) as claimer:
            with anyio.CancelScope() as scope:
                self._install_signals(claimer, scope)
                tty = sys.stderr.isatty() and not opts["no_progress"]
                self.summary = claimer.engine.summary
                digest = await anyio.to_thread.run_sync(lambda: fingerprint(
                    opts["inputs"], target=self.target, fmt=opts["input_format"],
                    default_region=opts["default_region_for_numbers"]))
                try:
                    await run_with_progress(lambda: claimer.engine.run(rows, _ignore, fingerprint=digest,
                                                                       emit_done=False, after_plan=_debug_kill_point),
                                            claimer.engine,
                                            claimer.limiters["ClaimPhoneNumber"], tty=tty,
                                            log=structlog.get_logger("bulkclaim"))
                finally:
                    self.summary = claimer.engine.summary
                    self.requests_sent = sum(limiter.sent for limiter in claimer.limiters.values())

    def _install_signals(self, claimer: Claimer, scope: anyio.CancelScope) -> None:
        import asyncio

        loop = asyncio.get_running_loop()

        def on_signal(received: signal.Signals) -> None:
            if self.signal_received is not None:
                if received == signal.SIGINT:  # second Ctrl-C: leave now; the journal is consistent
                    os._exit(EXIT_SIGNAL[signal.SIGINT])
                return
            self.signal_received = received
            click.echo(f"\nbulkclaim: {received.name}: finishing requests in flight (up to "
                       f"{self.opts['grace_period']:.0f}s; Ctrl-C again to quit now)…", err=True)
            claimer.engine.request_stop()
            loop.call_later(self.opts["grace_period"], scope.cancel)

        for sig in EXIT_SIGNAL:
            loop.add_signal_handler(sig, on_signal, sig)

    def _finish(self) -> int:
        run = self.summary.members_run if self.summary else None
        counts: dict[str, int] = {}
        if run:
            if self.opts["report"]:
                with open_private(self.opts["report"]) as handle:
                    write_report(journal_outcomes(self.journal, run=run), handle, report_format(self.opts["report"]))
            counts = run_counts(self.journal, run)
        shown = " · ".join(f"{status} {n}" for status, n in sorted(counts.items())) or "nothing to do"
        click.echo(f"{shown}" + (f" — report: {self.opts['report']}" if self.opts["report"] else ""))
        if self.signal_received is not None:
            unfinished = counts.get("pending", 0) + counts.get("in_progress", 0)
            click.echo(f"bulkclaim: interrupted; {unfinished} number(s) not finished. Run the same command again "
                       f"to resume (journal: {self.journal}).", err=True)
            return EXIT_SIGNAL[self.signal_received]
        return EXIT_OK if set(counts) <= {"claimed"} else EXIT_INCOMPLETE


async def _ignore(_: Any) -> None:
    return None


def _debug_kill_point(_: RunSummary) -> None:
    """BULKCLAIM_DEBUG_KILL_AFTER_PLAN=1 makes the process SIGKILL itself once every token is durable
    and before anything is sent: the crash tests use it to prove a resumed run re-sends those tokens."""
    if os.environ.get("BULKCLAIM_DEBUG_KILL_AFTER_PLAN") == "1":
        os.kill(os.getpid(), signal.SIGKILL)


@cli.command("status")
@_option("journal", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_option("json", dest="as_json", is_flag=True, help="Machine-readable output.")
def status_command(journal: Path, as_json: bool) -> None:
    """Counts by status, claim rate, ETA and the latest errors of a journal (safe during a run)."""
    try:
        status = journal_status(journal)
    except JournalError as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        click.echo(json.dumps(status.as_dict()))
        return
    click.echo(f"journal {status.journal} — {status.runs} run(s)")
    for name, count in status.counts.items():
        click.echo(f"  {name:<12} {count}")
    eta = "-" if status.eta_seconds is None else f"{status.eta_seconds:.0f}s"
    click.echo(f"  rate {status.claims_per_second:.2f} claims/s (last minute) · ETA {eta}")
    for error in status.last_errors:
        click.echo(f"  error {error['phone_number']}: {error['error_code']} ({error['result']})")


@cli.command("report")
@_option("journal", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_option("format", dest="fmt", type=click.Choice(["csv", "jsonl"]), help="[default: from --output, else jsonl]")
@_option("output", type=click.Path(dir_okay=False, path_type=Path), help="[default: stdout]")
@_option("status", dest="statuses", help="Only these statuses, comma-separated (e.g. failed,invalid).")
def report_command(journal: Path, fmt: str | None, output: Path | None, statuses: str | None) -> None:
    """Write the report rows (DESIGN §4) of every number in a journal."""
    wanted = frozenset(s.strip() for s in statuses.split(",")) if statuses else None
    try:
        chosen = fmt or (report_format(output) if output else "jsonl")
        rows = journal_outcomes(journal, statuses=wanted)
        if output is None:
            write_report(rows, sys.stdout, chosen)
        else:
            with open_private(output) as handle:
                write_report(rows, handle, chosen)
    except (JournalError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)


cli.add_command(sandbox_command)
cli.add_command(demo_command)


def main() -> None:
    try:
        cli(prog_name="bulkclaim")
    except Exception as exc:  # a bug: one line for the user, the traceback only when asked for
        if os.environ.get("BULKCLAIM_DEBUG"):
            raise
        click.echo(f"bulkclaim: internal error: {type(exc).__name__}: {exc} "
                   "(set BULKCLAIM_DEBUG=1 to see the traceback, and please report it)", err=True)
        sys.exit(70)
