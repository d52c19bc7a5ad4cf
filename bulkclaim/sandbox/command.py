"""``bulkclaim sandbox``: serve a local Connect phone-number API until interrupted."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bulkclaim.sandbox.config import (
    API_NAMES,
    QUOTA_REACHED_MODES,
    TEST_CREDENTIALS,
    FaultConfig,
    InventorySpec,
    SandboxConfig,
    ThrottleConfig,
)

if TYPE_CHECKING:
    from bulkclaim.sandbox.app import Sandbox

__all__ = ["sandbox_command"]


def _env(name: str) -> str:
    return f"BULKCLAIM_SANDBOX_{name.upper().replace('-', '_')}"


def _inventory(value: str) -> InventorySpec:
    try:
        country, number_type, prefix, count = value.split(":")
        return InventorySpec(country=country.upper(), type=number_type.upper(), prefix=prefix, count=int(count))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not COUNTRY:TYPE:PREFIX:COUNT (e.g. US:DID:+1206:1000)") from None


def _latency(value: str) -> tuple[float, float]:
    try:
        low, _, high = value.partition(":")
        return float(low), float(high or low)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LOW[:HIGH] seconds") from None


_F = TypeVar("_F", bound=Callable[..., Any])


def _option(name: str, **kwargs: Any) -> Callable[[_F], _F]:
    """``name``, or ``on/--off`` for a boolean pair (its environment variable is named after ``on``)."""
    return click.option(f"--{name}", envvar=_env(name.partition("/")[0]), show_default=True, **kwargs)


@click.command("sandbox", short_help="Serve a local Connect phone-number API for rehearsals.")
@_option("host", default="127.0.0.1", help="Address to bind; loopback unless you mean otherwise.")
@_option("port", default=8421, type=click.IntRange(0, 65535), help="Port; 0 picks a free one.")
@_option("region", default="us-east-1", help="The Region requests must be signed for.")
@_option("account-id", default="123456789012", help="The account in every ARN.")
@_option("instance-id", multiple=True, help="Instance ids that exist (repeatable).")
@_option("tdg-id", multiple=True, help="Traffic distribution group ids that exist (repeatable).")
@_option("replica-region", help="The TDGs' alternate Region: requests signed for it follow Connect's rules there.")
@_option("inventory", multiple=True, help="Available numbers COUNTRY:TYPE:PREFIX:COUNT (repeatable).")
@_option("inventory-file", type=click.Path(exists=True, dir_okay=False), help="CSV: phone_number[,type].")
@_option("foreign", multiple=True, help="A number already claimed by someone else (repeatable).")
@_option("rate", type=float, default=2.0, help="Requests/s per API bucket.")
@_option("burst", type=int, default=5, help="Bucket capacity per API.")
@_option("no-throttle", is_flag=True, help="Switch throttling off for every API.")
@_option("claim-delay", type=float, default=0.5, help="Seconds a claim stays IN_PROGRESS.")
@_option("claim-failure-rate", type=float, default=0.0, help="Share of claims that settle FAILED.")
@_option("token-lifetime", type=float, default=8 * 3600.0, help="Seconds a ClientToken is remembered.")
@_option("quota-reached", type=click.Choice(QUOTA_REACHED_MODES), default=SandboxConfig.quota_reached,
         help="A claim beyond the quota: fail = accepted, then FAILED (as Connect); refuse = 402 at once.")
@_option("failed-claim-reservation", type=click.FloatRange(min=0), default=SandboxConfig.failed_claim_reservation,
         help="Seconds a FAILED claim's number stays reserved for a retry of ours (others: not available).")
@_option("release-delay", type=click.FloatRange(min=0), default=SandboxConfig.release_delay,
         help="Seconds a released number shows IN_PROGRESS before it is gone.")
@_option("list-in-progress/--no-list-in-progress", default=SandboxConfig.list_in_progress,
         help="ListPhoneNumbersV2 shows claims still IN_PROGRESS.")
@_option("list-failed/--no-list-failed", default=SandboxConfig.list_failed,
         help="ListPhoneNumbersV2 shows FAILED claims (while reserved).")
@_option("list-releasing/--no-list-releasing", default=SandboxConfig.list_releasing,
         help="ListPhoneNumbersV2 shows numbers being released.")
@_option("listing-lag", type=click.FloatRange(min=0), default=SandboxConfig.listing_lag,
         help="Seconds before an accepted claim appears in ListPhoneNumbersV2.")
@_option("error-rate", type=float, default=0.0, help="Share of requests answered 500 before any effect.")
@_option("lost-response-rate", type=float, default=0.0, help="Share executed, then the connection dropped.")
@_option("garbage-rate", type=float, default=0.0,
         help="Share executed, then answered 200 with a body that is not the answer (empty, truncated, HTML).")
@_option("stall-rate", type=float, default=0.0, help="Share of requests that stall before executing.")
@_option("stall-seconds", type=float, default=30.0, help="How long a stalled request sits before executing.")
@_option("late-answer-rate", type=click.FloatRange(0, 1), default=0.0,
         help="Share executed at once, then answered only after --late-answer-seconds.")
@_option("late-answer-seconds", type=click.FloatRange(min=0), default=30.0,
         help="How long a late answer is held back (longer than a client's timeout).")
@_option("latency", default="0", help="Added latency LOW[:HIGH] seconds.")
@_option("phone-number-quota", type=click.IntRange(min=0), default=SandboxConfig.phone_number_quota,
         help="Numbers one instance may hold (the real default is 5).")
@_option("competition-rate", type=click.FloatRange(0, 1), default=0.0,
         help="Share of claims another account wins just before ours (the number is gone).")
@_option("no-service-quotas-access", is_flag=True, help="Answer AccessDenied to Service Quotas calls.")
@_option("flows-per-instance", type=click.IntRange(min=0), default=SandboxConfig.flows_per_instance,
         help="Contact flows seeded in each instance (named 'Inbound flow N').")
@_option("seed", type=int, default=0, help="Seed for faults, failures, ids and flows.")
def sandbox_command(**opts: Any) -> None:
    """Serve a local Amazon Connect phone-number API (rest-json, SigV4) for rehearsals and tests."""
    import asyncio

    from bulkclaim.sandbox.app import Sandbox
    from bulkclaim.sandbox.inventory import InventoryError

    throttle = ThrottleConfig(rate=None if opts["no_throttle"] else opts["rate"], burst=opts["burst"])
    config = SandboxConfig(
        region=opts["region"], replica_region=opts["replica_region"], account_id=opts["account_id"],
        instance_ids=tuple(opts["instance_id"]) or SandboxConfig().instance_ids,
        traffic_distribution_group_ids=tuple(opts["tdg_id"]),
        inventory=tuple(_inventory(v) for v in opts["inventory"]) or SandboxConfig().inventory,
        inventory_file=opts["inventory_file"], foreign_claims=tuple(opts["foreign"]),
        claim_delay=opts["claim_delay"], claim_failure_rate=opts["claim_failure_rate"],
        token_lifetime=opts["token_lifetime"], throttle=dict.fromkeys(API_NAMES, throttle),
        faults=FaultConfig(error_rate=opts["error_rate"], lost_response_rate=opts["lost_response_rate"],
                           garbage_rate=opts["garbage_rate"], late_answer_rate=opts["late_answer_rate"],
                           late_answer_seconds=opts["late_answer_seconds"],
                           stall_rate=opts["stall_rate"], stall_seconds=opts["stall_seconds"],
                           latency=_latency(opts["latency"]), seed=opts["seed"]),
        phone_number_quota=opts["phone_number_quota"], competition_rate=opts["competition_rate"],
        service_quotas_access=not opts["no_service_quotas_access"], seed=opts["seed"],
        quota_reached=opts["quota_reached"], failed_claim_reservation=opts["failed_claim_reservation"],
        release_delay=opts["release_delay"], list_in_progress=opts["list_in_progress"],
        list_failed=opts["list_failed"], list_releasing=opts["list_releasing"], listing_lag=opts["listing_lag"],
        flows_per_instance=opts["flows_per_instance"],
    )
    try:
        sandbox = Sandbox(config)
    except InventoryError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        asyncio.run(_serve_until_signal(sandbox, opts["host"], opts["port"]))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {opts['host']}:{opts['port']}: {exc.strerror}") from None


async def _serve_until_signal(sandbox: Sandbox, host: str, port: int) -> None:
    import asyncio
    import signal

    from bulkclaim.sandbox.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(sandbox, host=host, port=port) as running:
        cfg = sandbox.config
        click.echo(f"bulkclaim sandbox listening on {running.endpoint_url}")
        click.echo(f"  instances: {', '.join(cfg.instance_ids)}  region: {cfg.region}")
        click.echo(f"  numbers in inventory: {sandbox.state.inventory_size()}  "
                   f"phone-number quota per instance: {cfg.phone_number_quota}")
        click.echo("Use it with:")
        click.echo(f"  export AWS_ENDPOINT_URL_CONNECT={running.endpoint_url}")
        click.echo(f"  export AWS_ENDPOINT_URL_SERVICE_QUOTAS={running.endpoint_url}")
        click.echo(f"  export AWS_ACCESS_KEY_ID={TEST_CREDENTIALS.access_key_id}")
        click.echo(f"  export AWS_SECRET_ACCESS_KEY={TEST_CREDENTIALS.secret_access_key}")
        click.echo(f"  export AWS_REGION={cfg.region}")
        click.echo(f"  export AWS_DEFAULT_REGION={cfg.region}")  # botocore and AWS CLI v1 read only this one
        click.echo(f"  export INSTANCE_ID={cfg.instance_ids[0]}")  # as the README's walk-through uses it
        click.echo(f"Ledger and counters: {running.endpoint_url}/_sandbox/ledger, /_sandbox/stats", nl=True)
        for flow in sandbox.state.flows.flows_of(cfg.instance_ids[0]):  # after the exports: scripts read those
            click.echo(f"  contact flow {flow.name!r} of {cfg.instance_ids[0]}: {flow.id}")
        await stop.wait()
