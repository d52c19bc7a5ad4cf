"""``bulkclaim claim --dry-run``: read, validate and plan against the journal read-only, list the
target (which also checks credentials, the target and the endpoint), check the quotas, and say what
a run would do and how long it would take. Claims nothing, creates nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from bulkclaim.cli_common import (
    EXIT_FATAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    JournalSpec,
    client_settings,
    fail,
    rate_settings,
    read_run_quotas,
    shown,
)
from bulkclaim.model import BulkclaimError, ConfigurationError, FatalServiceError, Target

if TYPE_CHECKING:
    from bulkclaim.quotas import Quotas

__all__ = ["dry_run"]


def dry_run(rows: Any, target: Target, journal: JournalSpec, opts: dict[str, Any]) -> int:
    """Plan against the journal read-only and check the quotas; send nothing."""
    import anyio

    from bulkclaim.dry_run import dry_run_plan
    from bulkclaim.journal import read_journal
    from bulkclaim.preflight import Preflight
    from bulkclaim.progress import format_duration
    from bulkclaim.quotas import Quotas

    owned: dict[str, Any] | None = None
    quota_check: Preflight | None = None
    quotas = Quotas()
    if not opts["no_preflight"]:
        try:
            owned, quotas = anyio.run(_read_target, target, opts)
        except FatalServiceError as exc:  # what would stop the run stops the dry run, before any claim
            fail(f"dry run: the run would stop here (nothing was sent): {exc}", EXIT_FATAL)
    try:
        plan = dry_run_plan(rows, journal, retry_failed=opts["retry_failed"], owned=owned or ())
        if not opts["no_preflight"]:
            with read_journal(journal) as reader:
                churn = 0 if reader is None else reader.churn(target.key)
            quota, source = quotas.phone_number_quota(opts["phone_number_quota"])
            quota_check = Preflight(target.key, quota, source, None if owned is None else len(owned),
                                    plan.to_claim, churn, action=opts.get("action", "claim"))
    except BulkclaimError as exc:
        fail(str(exc), EXIT_USAGE)
    done = ", ".join(f"{n} {status}" for status, n in sorted(plan.already_done.items())) or "none"
    click.echo(f"dry run (nothing sent) — journal: {shown(journal)}")
    if opts.get("destinations", 1) > 1:  # a move to several destinations: one plan each
        click.echo(f"  destination:       {target.key}")
    verb = opts.get("action", "claim")  # ``bulkclaim move --dry-run``: move
    settled = "CLAIMED" if verb == "claim" else "CLAIMED on the destination"
    click.echo(f"  {'would ' + verb + ':':<19}{plan.to_send}")
    click.echo(f"  would resume:      {plan.to_resume} (pending from an earlier run, same token)")
    click.echo(f"  would verify:      {plan.to_verify} (in_progress from an earlier run)")
    if owned is not None:
        click.echo(f"  already on target: {plan.owned_on_target} (adopted, not {verb}d again)")
    click.echo(f"  already done:      {done}")
    click.echo(f"  duplicates:        {plan.duplicates}")
    click.echo(f"  invalid:           {plan.invalid_count}")
    for row in plan.invalid[:20]:
        click.echo(f"    {row.source}: {row.reason}")
    rates = rate_settings(opts, quotas)
    click.echo(f"  rate:              {rates.rate:g} {verb}s/s, burst {rates.burst}")
    click.echo(f"  expected duration: {format_duration(max(0, plan.to_claim - rates.burst) / rates.rate)} for "
               f"{plan.to_claim} {verb}(s) at best ((N - burst) / rate), plus waiting for {settled}")
    if quota_check is not None:
        for line in quota_check.lines():
            click.echo(f"  quota: {line}")
        if warning := quota_check.churn_warning():
            click.echo(f"  WARNING: {warning}")
    if plan.changed:
        click.echo(f"  REFUSED: {len(plan.changed)} pending number(s) changed parameters:")
        for request in plan.changed[:20]:
            click.echo(f"    {request.source}: {request.phone_number}")
        return EXIT_USAGE
    if quota_check is not None and quota_check.over:
        if not opts["allow_partial"]:
            click.echo(f"  REFUSED: {quota_check.refusal()}")
            return EXIT_FATAL
        click.echo(f"  --allow-partial: would {verb} {quota_check.allowed}, leave out {quota_check.over}")
    return EXIT_INCOMPLETE if plan.invalid_count else EXIT_OK


async def _read_target(target: Target, opts: dict[str, Any]) -> tuple[dict[str, Any] | None, Quotas]:
    """For the dry run's preflight: the numbers the target holds (None if unreadable) and the quotas.

    Listing the target is the check a dry run can make without side effects: an unknown target, bad
    credentials or an unreachable endpoint raise FatalServiceError, as they would stop the run."""
    import structlog

    from bulkclaim.calls import CallFailed
    from bulkclaim.claimer import connect_api
    from bulkclaim.reconcile import sweep

    log = structlog.get_logger("bulkclaim")
    owned: dict[str, Any] | None = None
    try:
        async with connect_api(client_settings(opts), outage_timeout=opts["outage_timeout"]) as api:
            owned = dict(await sweep(api, target))
    except FatalServiceError as exc:
        if exc.code not in _NOT_CONFIGURED:
            raise
        log.warning("preflight.incomplete", problem=f"cannot list the numbers of {target.key}: {exc}")
    except (CallFailed, ConfigurationError) as exc:  # no AWS configuration at all: an offline check of the file
        log.warning("preflight.incomplete", problem=f"cannot list the numbers of {target.key}: {exc}")
    return owned, await read_run_quotas(opts)


# No credentials at all is a dry run used offline, to check a file: it plans with a warning. Wrong
# credentials, an unknown target or an unreachable endpoint would stop the run: so they stop the dry run.
_NOT_CONFIGURED = frozenset({"NoCredentialsError", "PartialCredentialsError"})




