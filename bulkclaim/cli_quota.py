"""``bulkclaim acquire`` (exactly N new numbers by search) and ``bulkclaim release`` (give back what
a journal claimed, after saying what that costs)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from bulkclaim.cli_common import (
    EXIT_FATAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_USAGE,
    JournalOption,
    JournalSpec,
    aws_options,
    client_settings,
    connect_enum,
    default_journal,
    fail,
    number_search_options,
    option,
    quota_options,
    rate_options,
    rate_settings,
    read_run_quotas,
    shown,
    target_of,
    target_options,
    verbosity,
    verbosity_options,
)
from bulkclaim.cli_help import GroupedCommand
from bulkclaim.cli_metrics import check_metrics, exporting, metrics_options
from bulkclaim.cli_signals import expect_report, report_written, set_aside_report
from bulkclaim.model import BulkclaimError, Outcome, Target, valid_tag_key

# The AWS SDK and the engine are imported in the command bodies: ``--help`` does not load them.
if TYPE_CHECKING:
    from bulkclaim.acquire import Acquirer, AcquireSpec
    from bulkclaim.cli_run import Harness
    from bulkclaim.model import ToRelease
    from bulkclaim.quotas import Quotas
    from bulkclaim.reconcile import Owned

__all__ = ["acquire_command", "release_command"]


def _tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not valid_tag_key(key) or len(text) > 256:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE with a valid Connect tag key", param_hint="--tag")
        tags[key] = text
    return tags


@click.command("acquire", cls=GroupedCommand, short_help="Claim exactly COUNT new numbers found by a search.")
@target_options
@number_search_options
@option("count", type=click.IntRange(min=1), required=True, group="Numbers to find",
        help="How many numbers to end up with.")
@option("name", group="Journal and report",
        help="Name of this acquisition in the journal [default: from country, type, prefix, count].")
@option("description", group="Claiming", help="PhoneNumberDescription of every acquired number.")
@option("tag", dest="tags", multiple=True, metavar="KEY=VALUE", group="Claiming",
        help="Tag of every acquired number (repeatable).")
@option("journal", type=JournalOption(), group="Journal and report",
        help="The journal: a file, or a postgresql:// URL; re-running with it resumes "
             "[default: bulkclaim-<target>.journal].")
@option("report", type=click.Path(dir_okay=False, path_type=Path), group="Journal and report",
        help="Write the slots' report (.csv or .jsonl), replaced atomically.")
@rate_options
@option("no-verify", is_flag=True, group="Claiming", help="Do not wait for CLAIMED.")
@option("verify-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True, group="Claiming",
        help="Seconds to wait for an accepted claim to settle CLAIMED or FAILED.")
@quota_options
@aws_options
@verbosity_options
@metrics_options
@option("grace-period", type=click.FloatRange(min=0), default=10.0, show_default=True, group="Claiming",
        help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.")
def acquire_command(**opts: Any) -> None:
    """Claim exactly COUNT new numbers found with SearchAvailablePhoneNumbers.

    Each slot's candidate and token are journaled before its claim: re-running the same command
    resumes (never more than COUNT numbers); a candidate taken by someone else is replaced."""
    from bulkclaim.acquire import AcquireSpec
    from bulkclaim.cli_run import Harness
    from bulkclaim.logs import configure_logging
    from bulkclaim.report import atomic_write, check_writable, report_format, write_report

    configure_logging(opts["log_format"], verbosity=verbosity(opts))
    target = target_of(opts)
    check_metrics(opts)
    if opts["report"]:
        try:
            report_format(opts["report"])
            check_writable(opts["report"])
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    spec = AcquireSpec(connect_enum(opts["country"], "PhoneNumberCountryCode", "--country"),
                       connect_enum(opts["number_type"], "PhoneNumberType", "--type"), opts["count"], opts["prefix"],
                       opts["description"], _tags(opts["tags"]))
    journal = opts["journal"] or default_journal(target)
    slots: list[Outcome] = []

    def write_slots() -> None:
        if opts["report"] and slots:
            with atomic_write(opts["report"]) as handle:
                write_report(slots, handle, report_format(opts["report"]))
            report_written()

    expect_report(opts["report"], journal)
    harness = Harness(journal, opts, before_abort=write_slots)
    with exporting(opts, harness.telemetry):
        harness.run_main(partial(_acquire, harness, target, spec, opts["name"] or spec.default_name(), slots))
        _acquired(harness, spec, journal, slots, write_slots)


def _acquired(harness: Harness, spec: AcquireSpec, journal: JournalSpec, slots: list[Outcome],
              write_slots: Callable[[], None]) -> NoReturn:
    """The end of ``acquire``: the report, what was acquired, the exit code."""
    opts = harness.opts
    try:
        write_slots()
    except OSError as exc:
        fail(f"cannot write the report {opts['report']}: {exc.strerror or exc}. {set_aside_report()}".rstrip(),
             EXIT_FATAL if harness.requests_sent else EXIT_USAGE)
    claimed = [o for o in slots if o.status.value == "claimed"]
    click.echo(f"acquired {len(claimed)} of {spec.count}: " + (" ".join(o.phone_number for o in claimed) or "-"))
    for outcome in slots:
        if outcome.status.value != "claimed":
            click.echo(f"  {outcome.source}: {outcome.status.value} {outcome.phone_number} "
                       f"{outcome.error_code or ''} {outcome.error_message or ''}".rstrip())
    if harness.signal_received is not None:
        click.echo(f"bulkclaim: interrupted; run the same command again to resume (journal: {shown(journal)}).",
                   err=True)
        sys.exit(EXIT_SIGNAL[harness.signal_received])
    sys.exit(EXIT_OK if len(claimed) == spec.count else EXIT_INCOMPLETE)


async def _acquire(harness: Harness, target: Target, spec: AcquireSpec, name: str, slots: list[Outcome]) -> None:
    import anyio

    from bulkclaim.acquire import Acquirer
    from bulkclaim.claimer import Claimer
    from bulkclaim.model import Options

    opts = harness.opts
    quotas = await read_run_quotas(opts)
    options = Options(verify=not opts["no_verify"], verify_timeout=opts["verify_timeout"])
    async with Claimer(journal=harness.journal, instance_id=target.instance_id, target_arn=target.target_arn,
                       client_settings=client_settings(opts), rates=rate_settings(opts, quotas), options=options,
                       fatal_cooldown=None, outage_timeout=opts["outage_timeout"],
                       telemetry=harness.telemetry) as claimer:
        acquirer = Acquirer(claimer.engine, claimer.journal, target, spec, name)
        with anyio.CancelScope() as scope:
            harness.install_signals(acquirer.state.request_stop, scope)
            try:
                limit, owned = None, None
                if not opts["no_preflight"]:
                    limit, owned = await _acquire_preflight(acquirer, target, quotas, opts)
                slots.extend(await acquirer.run(limit, owned))
            finally:
                harness.count_requests(claimer)
        if not slots:  # stopped by a signal: report the slots as the journal has them
            slots.extend(await claimer.journal.slot_outcomes(name))


async def _acquire_preflight(acquirer: Acquirer, target: Target, quotas: Quotas,
                             opts: dict[str, Any]) -> tuple[int | None, dict[str, Owned] | None]:
    """Refuse an acquisition the quota cannot hold (or, with --allow-partial, fill what fits).
    Returns how many open slots to fill (None: all) and the target's listing, for adoption."""
    from bulkclaim.acquire import Acquirer
    from bulkclaim.cli_run import judge_preflight
    from bulkclaim.preflight import Preflight

    slots = await acquirer.slots()
    owned = await acquirer.holdings()
    quota, source = quotas.phone_number_quota(opts["phone_number_quota"])
    churn = await acquirer.journal.churn(target.key)
    problems = [] if owned is not None else [f"cannot list the numbers of {target.key}"]
    found = Preflight(target.key, quota, source, None if owned is None else len(owned),
                      Acquirer.still_to_claim(slots, owned or {}), churn, problems)
    judge_preflight(found, opts)
    return (found.allowed if found.over else None), owned


@click.command("release", cls=GroupedCommand, short_help="Release the numbers a journal claimed, after asking.")
@option("journal", type=JournalOption(exists=True), required=True, group="Journal and report",
        help="The journal whose claimed numbers to release: a file, or a postgresql:// URL.")
@option("status", dest="statuses", env="BULKCLAIM_RELEASE_STATUS", type=click.Choice(["claimed"]), default="claimed",
        show_default=True, help="Which numbers: claimed ones (an in_progress claim is verified by `claim` first).")
@option("run", type=click.IntRange(min=1), help="Only the numbers of this run [default: every run].")
@option("include-adopted", is_flag=True,
        help="Also release numbers the target held before bulkclaim asked (no claim of ours was accepted).")
@option("yes", is_flag=True, help="Do not ask for confirmation.")
@option("phone-number-quota", type=click.IntRange(min=0), group="Quotas",
        help="For the churn estimate if Service Quotas is unreadable.")
@rate_options
@aws_options
@verbosity_options
@metrics_options
@option("grace-period", type=click.FloatRange(min=0), default=10.0, show_default=True,
        help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.")
def release_command(**opts: Any) -> None:
    """Release the numbers a journal claimed (ReleasePhoneNumber, journaled tokens), after confirmation."""
    import anyio

    from bulkclaim.cli_run import Harness
    from bulkclaim.journal import read_journal
    from bulkclaim.logs import configure_logging

    configure_logging(opts["log_format"], verbosity=verbosity(opts))
    check_metrics(opts)
    journal_path: JournalSpec = opts["journal"]
    try:
        with read_journal(journal_path) as reader:
            found = [] if reader is None else reader.numbers_to_release(opts["run"])
    except BulkclaimError as exc:
        fail(str(exc), EXIT_USAGE)
    adopted = [n for n in found if n.adopted]
    numbers = found if opts["include_adopted"] else [n for n in found if not n.adopted]
    if adopted and not opts["include_adopted"]:
        click.echo(f"not releasing {len(adopted)} number(s) the target already held when bulkclaim asked for them "
                   f"(e.g. {adopted[0].phone_number}); --include-adopted releases them too")
    if not numbers:
        click.echo(f"nothing to release: no claimed numbers of bulkclaim's in {shown(journal_path)}")
        sys.exit(EXIT_OK)
    quotas = anyio.run(partial(read_run_quotas, {**opts, "no_preflight": False}))
    _explain(journal_path, numbers, quotas.phone_number_quota(opts["phone_number_quota"])[0])
    if not opts["yes"]:
        try:
            confirmed = click.confirm(f"Release {len(numbers)} number(s)?", default=False, err=True)
        except click.Abort:
            confirmed = False
        if not confirmed:
            click.echo("release cancelled: nothing was sent", err=True)
            sys.exit(EXIT_INCOMPLETE)
    harness = Harness(journal_path, opts)
    counts: Counter[str] = Counter()
    with exporting(opts, harness.telemetry):
        harness.run_main(partial(_release, harness, numbers, quotas, counts))
    released = counts.pop("released", 0)
    click.echo(f"released {released} of {len(numbers)}" + "".join(f" · {code} {n}" for code, n in counts.items()))
    if harness.signal_received is not None:
        click.echo(f"bulkclaim: interrupted; run the same command again to release the rest (journal: "
                   f"{shown(journal_path)}).", err=True)
        sys.exit(EXIT_SIGNAL[harness.signal_received])
    sys.exit(EXIT_OK if released == len(numbers) else EXIT_INCOMPLETE)


def _explain(journal: JournalSpec, numbers: list[ToRelease], quota: int | None) -> None:
    """What releasing means, on stdout (stderr stays for logs and the question)."""
    from bulkclaim.journal import read_journal
    from bulkclaim.model import CHURN_LIMIT, CHURN_WINDOW_DAYS

    targets = sorted({n.target for n in numbers})
    click.echo(f"About to release {len(numbers)} number(s) of {', '.join(targets)} (journal {shown(journal)}):")
    for number in numbers[:10]:
        click.echo(f"  {number.phone_number}  {number.phone_number_id}")
    if len(numbers) > 10:
        click.echo(f"  … and {len(numbers) - 10} more")
    click.echo("Released numbers enter a cooldown of up to 180 days: nobody, you included, can claim them "
               "again until it ends.")
    with read_journal(journal) as reader:
        churns = {target: 0 if reader is None else reader.churn(target) for target in targets}
    for target, churn in churns.items():
        after = churn + sum(1 for n in numbers if n.target == target)
        limit = "unknown (quota not readable)" if quota is None else str(int(CHURN_LIMIT * quota))
        click.echo(f"Each release counts toward Connect's rule of at most {CHURN_LIMIT:.0%} of the phone-number "
                   f"quota in claims + releases per {CHURN_WINDOW_DAYS} days: {target}: {churn} recorded in this "
                   f"journal, {after} after this release; limit {limit}.")


async def _release(harness: Harness, numbers: list[ToRelease], quotas: Quotas, counts: Counter[str]) -> None:
    import anyio

    from bulkclaim.claimer import Claimer
    from bulkclaim.release import release_all

    opts = harness.opts
    stop = anyio.Event()
    by_target: dict[str, list[ToRelease]] = {}
    for number in numbers:
        by_target.setdefault(number.target, []).append(number)
    with anyio.CancelScope() as scope:
        harness.install_signals(stop.set, scope)
        for key, group in by_target.items():
            target = Target.from_key(key)
            async with Claimer(journal=harness.journal, instance_id=target.instance_id,
                               target_arn=target.target_arn, client_settings=client_settings(opts),
                               rates=rate_settings(opts, quotas), fatal_cooldown=None,
                               outage_timeout=opts["outage_timeout"], telemetry=harness.telemetry) as claimer:
                try:
                    counts.update(await release_all(
                        claimer.api, claimer.journal, group, stopping=stop.is_set,
                        concurrency=claimer.limiters["ReleasePhoneNumber"].max_in_flight))
                finally:
                    harness.count_requests(claimer)
