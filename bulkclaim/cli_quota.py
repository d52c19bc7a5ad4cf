"""``bulkclaim acquire`` (exactly N new numbers by search) and ``bulkclaim release`` (give back what
a journal claimed, after saying what that costs)."""

from __future__ import annotations

import sys
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import click

from bulkclaim.acquire import Acquirer, AcquireSpec, slot_outcomes
from bulkclaim.claimer import Claimer
from bulkclaim.cli_common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_USAGE,
    aws_options,
    client_settings,
    default_journal,
    fail,
    option,
    quota_options,
    rate_options,
    rate_settings,
    read_run_quotas,
    target_of,
    target_options,
)
from bulkclaim.cli_run import Harness, judge_preflight
from bulkclaim.engine import Options
from bulkclaim.journal import SqliteJournal
from bulkclaim.journal_views import journal_churn, read_only
from bulkclaim.logs import configure_logging
from bulkclaim.model import BulkclaimError, Outcome, Target, valid_tag_key
from bulkclaim.preflight import Preflight, churn_in_journal
from bulkclaim.quotas import CHURN_LIMIT, CHURN_WINDOW_DAYS, Quotas
from bulkclaim.reconcile import sweep
from bulkclaim.release import ToRelease, numbers_to_release, release_all
from bulkclaim.report import open_private, report_format, write_report

__all__ = ["acquire_command", "release_command"]


def _tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not valid_tag_key(key) or len(text) > 256:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE with a valid Connect tag key", param_hint="--tag")
        tags[key] = text
    return tags


@click.command("acquire")
@target_options
@option("country", required=True, metavar="CC", help="ISO country code of the numbers, e.g. US.")
@option("type", dest="number_type", required=True, metavar="TYPE",
        help="DID, TOLL_FREE, UIFN, SHARED, THIRD_PARTY_DID, ...")
@option("prefix", help="Only numbers starting with this, e.g. +1206.")
@option("count", type=click.IntRange(min=1), required=True, help="How many numbers to end up with.")
@option("name", help="Name of this acquisition in the journal [default: from country, type, prefix, count].")
@option("description", help="PhoneNumberDescription of every acquired number.")
@option("tag", dest="tags", multiple=True, metavar="KEY=VALUE", help="Tag of every acquired number (repeatable).")
@option("journal", type=click.Path(dir_okay=False, path_type=Path), help="[default: from the target]")
@option("report", type=click.Path(dir_okay=False, path_type=Path), help="Write the slots' report (.csv or .jsonl).")
@rate_options
@option("no-verify", is_flag=True, help="Do not wait for CLAIMED.")
@option("verify-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True)
@quota_options
@aws_options
@option("grace-period", type=click.FloatRange(min=0), default=10.0, show_default=True)
def acquire_command(**opts: Any) -> None:
    """Claim exactly COUNT new numbers found with SearchAvailablePhoneNumbers.

    Each slot's candidate and token are journaled before its claim: re-running the same command
    resumes (never more than COUNT numbers); a candidate taken by someone else is replaced."""
    configure_logging(opts["log_format"])
    target = target_of(opts)
    if opts["report"]:
        try:
            report_format(opts["report"])
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    spec = AcquireSpec(opts["country"].upper(), opts["number_type"].upper(), opts["count"], opts["prefix"],
                       opts["description"], _tags(opts["tags"]))
    journal = opts["journal"] or default_journal(target)
    harness = Harness(journal, opts)
    slots: list[Outcome] = []
    harness.execute(partial(_acquire, harness, target, spec, opts["name"] or spec.default_name(), slots))
    if opts["report"]:
        with open_private(opts["report"]) as handle:
            write_report(slots, handle, report_format(opts["report"]))
    claimed = [o for o in slots if o.status.value == "claimed"]
    click.echo(f"acquired {len(claimed)} of {spec.count}: " + (" ".join(o.phone_number for o in claimed) or "-"))
    for outcome in slots:
        if outcome.status.value != "claimed":
            click.echo(f"  {outcome.source}: {outcome.status.value} {outcome.phone_number} "
                       f"{outcome.error_code or ''} {outcome.error_message or ''}".rstrip())
    if harness.signal_received is not None:
        click.echo(f"bulkclaim: interrupted; run the same command again to resume (journal: {journal}).", err=True)
        sys.exit(EXIT_SIGNAL[harness.signal_received])
    sys.exit(EXIT_OK if len(claimed) == spec.count else EXIT_INCOMPLETE)


async def _acquire(harness: Harness, target: Target, spec: AcquireSpec, name: str, slots: list[Outcome]) -> None:
    opts = harness.opts
    quotas = await read_run_quotas(opts)
    options = Options(verify=not opts["no_verify"], verify_timeout=opts["verify_timeout"])
    async with Claimer(journal=harness.journal, instance_id=target.instance_id, target_arn=target.target_arn,
                       client_settings=client_settings(opts), rates=rate_settings(opts, quotas), options=options,
                       fatal_cooldown=None) as claimer:
        assert isinstance(claimer.journal, SqliteJournal)
        acquirer = Acquirer(claimer.engine, claimer.journal, target, spec, name)
        with anyio.CancelScope() as scope:
            harness.install_signals(claimer.engine, scope)
            try:
                limit = None
                if not opts["no_preflight"]:
                    limit = await _acquire_preflight(acquirer, claimer, target, quotas, opts)
                slots.extend(await acquirer.run(limit))
            finally:
                harness.count_requests(claimer)
        if not slots:  # stopped by a signal: report the slots as the journal has them
            slots.extend(await claimer.journal.execute(partial(slot_outcomes, name=name)))


async def _acquire_preflight(acquirer: Acquirer, claimer: Claimer, target: Target, quotas: Quotas,
                             opts: dict[str, Any]) -> int | None:
    """Refuse an acquisition the quota cannot hold (or, with --allow-partial, fill what fits)."""
    slots = await acquirer.open()
    unfilled = sum(1 for _, _, status in slots if status is None or status.value in ("pending", "failed"))
    owned = await sweep(claimer.api, target)
    quota = quotas.phone_numbers if quotas.phone_numbers is not None else opts["phone_number_quota"]
    churn = await acquirer.journal.execute(partial(churn_in_journal, target=target.key))
    found = Preflight(target.key, quota, "Service Quotas" if quotas.phone_numbers is not None else
                      ("--phone-number-quota" if quota is not None else "unknown"), len(owned), unfilled, churn)
    judge_preflight(found, opts)
    return found.allowed if found.over else None


@click.command("release")
@option("journal", type=click.Path(dir_okay=False, path_type=Path, exists=True), required=True)
@option("status", dest="statuses", default="claimed", show_default=True,
        help="Release numbers in these statuses (comma-separated: claimed, in_progress).")
@option("run", type=click.IntRange(min=1), help="Only the numbers of this run [default: every run].")
@option("yes", is_flag=True, help="Do not ask for confirmation.")
@option("phone-number-quota", type=click.IntRange(min=0),
        help="For the churn estimate if Service Quotas is unreadable.")
@rate_options
@aws_options
def release_command(**opts: Any) -> None:
    """Release the numbers a journal claimed (ReleasePhoneNumber, journaled tokens), after confirmation."""
    configure_logging(opts["log_format"])
    statuses = {s.strip() for s in opts["statuses"].split(",") if s.strip()}
    if not statuses <= {"claimed", "in_progress"}:
        raise click.BadParameter("only claimed and in_progress numbers can be released", param_hint="--status")
    journal_path: Path = opts["journal"]
    try:
        with read_only(journal_path) as conn:
            numbers = [] if conn is None else numbers_to_release(conn, statuses, opts["run"])
    except BulkclaimError as exc:
        fail(str(exc), EXIT_USAGE)
    if not numbers:
        click.echo(f"nothing to release: no {'/'.join(sorted(statuses))} numbers in {journal_path}")
        sys.exit(EXIT_OK)
    quotas = anyio.run(partial(read_run_quotas, {**opts, "no_preflight": False}))
    quota = quotas.phone_numbers if quotas.phone_numbers is not None else opts["phone_number_quota"]
    _explain(journal_path, numbers, quota)
    if not opts["yes"]:
        try:
            confirmed = click.confirm(f"Release {len(numbers)} number(s)?", default=False, err=True)
        except click.Abort:
            confirmed = False
        if not confirmed:
            click.echo("release cancelled: nothing was sent", err=True)
            sys.exit(EXIT_INCOMPLETE)
    harness = Harness(journal_path, {**opts, "grace_period": 10.0})
    counts: Counter[str] = Counter()
    harness.execute(partial(_release, harness, numbers, quotas, counts))
    released = counts.pop("released", 0)
    click.echo(f"released {released} of {len(numbers)}" + "".join(f" · {code} {n}" for code, n in counts.items()))
    sys.exit(EXIT_OK if released == len(numbers) else EXIT_INCOMPLETE)


def _explain(journal: Path, numbers: list[ToRelease], quota: int | None) -> None:
    targets = sorted({n.target for n in numbers})
    click.echo(f"About to release {len(numbers)} number(s) of {', '.join(targets)} (journal {journal}):", err=True)
    for number in numbers[:10]:
        click.echo(f"  {number.phone_number}  {number.phone_number_id}", err=True)
    if len(numbers) > 10:
        click.echo(f"  … and {len(numbers) - 10} more", err=True)
    click.echo("Released numbers enter a cooldown of up to 180 days: nobody, you included, can claim them "
               "again until it ends.", err=True)
    for target in targets:
        churn = journal_churn(journal, target)
        after = churn + sum(1 for n in numbers if n.target == target)
        limit = "unknown (quota not readable)" if quota is None else str(int(CHURN_LIMIT * quota))
        click.echo(f"Each release counts toward Connect's rule of at most {CHURN_LIMIT:.0%} of the phone-number "
                   f"quota in claims + releases per {CHURN_WINDOW_DAYS} days: {target}: {churn} recorded in this "
                   f"journal, {after} after this release; limit {limit}.", err=True)


async def _release(harness: Harness, numbers: list[ToRelease], quotas: Quotas, counts: Counter[str]) -> None:
    opts = harness.opts
    by_target: dict[str, list[ToRelease]] = {}
    for number in numbers:
        by_target.setdefault(number.target, []).append(number)
    for key, group in by_target.items():
        target = Target.from_key(key)
        async with Claimer(journal=harness.journal, instance_id=target.instance_id, target_arn=target.target_arn,
                           client_settings=client_settings(opts), rates=rate_settings(opts, quotas),
                           fatal_cooldown=None) as claimer:
            assert isinstance(claimer.journal, SqliteJournal)
            try:
                counts.update(await release_all(claimer.api, claimer.journal, group,
                                                concurrency=claimer.limiters["ReleasePhoneNumber"].max_in_flight))
            finally:
                harness.count_requests(claimer)

