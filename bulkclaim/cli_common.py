"""What every ``bulkclaim`` command shares: exit codes, options read from the environment, AWS and
rate settings, and the quota read that ``--rate auto`` and the preflight start from."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from bulkclaim.cli_help import GroupedOption
from bulkclaim.cli_signals import EXIT_SIGNAL
from bulkclaim.model import Target, is_postgres_url
from bulkclaim.settings import OUTAGE_TIMEOUT, ClientSettings, RateSettings

if TYPE_CHECKING:
    from bulkclaim.logs import Verbosity
    from bulkclaim.quotas import Quotas

__all__ = [
    "EXIT_FATAL",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_SIGNAL",
    "EXIT_USAGE",
    "JournalOption",
    "JournalSpec",
    "aws_options",
    "client_settings",
    "connect_enum",
    "default_journal",
    "fail",
    "group_verbosity_options",
    "number_search_options",
    "option",
    "quota_options",
    "rate_options",
    "rate_settings",
    "read_run_quotas",
    "shown",
    "target_of",
    "target_options",
    "verbosity",
    "verbosity_options",
]

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3
_F = TypeVar("_F", bound=Callable[..., Any])


def option(name: str, *extra_env: str, dest: str | None = None, env: str | None = None, group: str = "Options",
           short: str | None = None, **kwargs: Any) -> Callable[[_F], _F]:
    """An option also read from BULKCLAIM_<NAME> (or ``env``), then from ``extra_env`` (AWS_REGION ...),
    shown in the help section ``group`` (see ``cli_help.SECTIONS``); ``short``: a one-letter spelling
    too (``-v``)."""
    env_names = [env or f"BULKCLAIM_{name.upper().replace('-', '_')}", *extra_env]
    return click.option(*([short] if short else []), f"--{name}", *([dest] if dest else []), envvar=env_names,
                        show_envvar=True, cls=GroupedOption, group=group, **kwargs)


def _stack(*decorators: Callable[[_F], _F]) -> Callable[[_F], _F]:
    def apply(function: _F) -> _F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply


#: a journal spec as the CLI holds it: an SQLite file's path, or a ``postgresql://`` URL (a str)
JournalSpec = Path | str


class JournalOption(click.ParamType[JournalSpec, Any]):
    """``--journal``: a ``postgresql://`` URL as it is (a path would fold its ``//``), else a file path
    (``exists``: one that must be there)."""

    name = "PATH|URL"

    def __init__(self, *, exists: bool = False) -> None:
        self._path = click.Path(dir_okay=False, path_type=Path, exists=exists)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> JournalSpec:
        if isinstance(value, Path):
            return value  # a default, or an already converted value
        if is_postgres_url(value):
            return str(value)
        return self._path.convert(value, param, ctx)


def shown(journal: JournalSpec) -> str:
    """A journal as messages show it: a path as it is, a URL without its password."""
    from bulkclaim.journal import journal_name  # the journal package only when there is a message to show

    return journal_name(journal)


class _Rate(click.ParamType[float | str, Any]):
    """Claims per second, or ``auto``: the ClaimPhoneNumber rate quota Service Quotas reports."""

    name = "RATE|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, float) or value == "auto":
            return value  # type: ignore[no-any-return]  # a default or an already converted value
        try:
            rate = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of claims per second nor 'auto'", param, ctx)
        if rate < 0.01:
            self.fail(f"{value!r} is below 0.01 claims per second", param, ctx)
        return rate


_TARGET = "Target (give exactly one)"
target_options = _stack(
    option("instance-id", group=_TARGET, help="Connect instance id or ARN."),
    option("target-arn", group=_TARGET, help="Instance or traffic distribution group ARN."),
)

aws_options = _stack(
    option("region", "AWS_REGION", "AWS_DEFAULT_REGION", group="AWS", help="AWS Region of the target."),
    option("profile", "AWS_PROFILE", group="AWS", help="Named profile for credentials and Region."),
    option("endpoint-url", "AWS_ENDPOINT_URL_CONNECT", group="AWS",
           help="Connect endpoint (a VPC endpoint, or the sandbox) [default: AWS's]."),
    option("quotas-endpoint-url", "AWS_ENDPOINT_URL_SERVICE_QUOTAS", group="AWS",
           help="Service Quotas endpoint [default: --endpoint-url if it is on loopback (the sandbox), else AWS's]."),
    option("connect-timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True, group="AWS",
           help="Seconds to wait for a connection."),
    option("read-timeout", type=click.FloatRange(min=0.01), default=15.0, show_default=True, group="AWS",
           help="Seconds to wait for the whole answer (once connected) before retrying with the same token."),
    option("outage-timeout", type=click.FloatRange(min=0), default=OUTAGE_TIMEOUT, show_default=True, group="AWS",
           help="Seconds to wait for an endpoint that stopped answering before stopping the run (exit 3; "
                "the same command resumes). One that never answered is given up after 20 s."),
    option("log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True,
           group="Output", help="Logs on stderr: console on a terminal, JSON lines otherwise (auto)."),
)

rate_options = _stack(
    option("rate", type=_Rate(), default="auto", show_default=True, group="Rate",
           help="Requests per second, or 'auto': the ClaimPhoneNumber rate quota as Service Quotas reports "
                "it (2/s, Connect's default, with a warning if it cannot be read)."),
    option("burst", type=click.IntRange(min=1), default=5, show_default=True, group="Rate",
           help="The quota's burst."),
    option("max-in-flight", type=click.IntRange(min=1), group="Rate", help="Concurrent requests [default: burst]."),
    option("no-adaptive", is_flag=True, group="Rate", help="Keep the rate fixed even when throttled."),
)

number_search_options = _stack(  # SearchAvailablePhoneNumbers' filters, as search and acquire take them
    option("country", required=True, metavar="CC", group="Numbers to find",
           help="ISO country code of the numbers, e.g. US."),
    option("type", dest="number_type", required=True, metavar="TYPE", group="Numbers to find",
           help="DID, TOLL_FREE, UIFN, SHARED, THIRD_PARTY_DID, ..."),
    option("prefix", group="Numbers to find", help="Only numbers starting with this, e.g. +1206."),
)

_VERBOSE_HELP = ("Show each number's events: on a terminal they print above the progress bar, which otherwise "
                 "shows only warnings and errors. Without a terminal (JSON logs, INFO by default) DEBUG is added.")
_QUIET_HELP = ("On a terminal only errors and the summary (no progress bar). Without a terminal (JSON logs) "
               "only warnings and errors.")

#: ``-v``/``-q`` of a command; the group takes them too (``bulkclaim -v claim ...``), see :func:`verbosity`.
verbosity_options = _stack(
    option("verbose", short="-v", is_flag=True, group="Output", help=_VERBOSE_HELP),
    option("quiet", short="-q", is_flag=True, group="Output", help=_QUIET_HELP),
)

group_verbosity_options = _stack(
    click.option("-v", "--verbose", is_flag=True, help=_VERBOSE_HELP),
    click.option("-q", "--quiet", is_flag=True, help=_QUIET_HELP),
)


def verbosity(opts: dict[str, Any]) -> Verbosity:
    """1 for ``-v``, -1 for ``-q``, else 0, given before or after the command's name. A flag on the
    command line beats the opposite one from the environment; both on the command line is a usage error."""
    ctx = click.get_current_context()
    root = ctx.find_root().params
    verbose, quiet = bool(opts.get("verbose") or root.get("verbose")), bool(opts.get("quiet") or root.get("quiet"))
    if verbose and quiet:
        from_env = {name for name in ("verbose", "quiet")
                    if opts.get(name) and not root.get(name)
                    and ctx.get_parameter_source(name) is click.core.ParameterSource.ENVIRONMENT}
        if from_env == {"verbose"}:
            verbose = False
        elif from_env == {"quiet"}:
            quiet = False
        else:
            raise click.UsageError("-v/--verbose and -q/--quiet contradict each other; give one")
    return 1 if verbose else -1 if quiet else 0


quota_options = _stack(
    option("allow-partial", is_flag=True, group="Quotas",
           help="Claim what the phone-number quota allows instead of refusing."),
    option("phone-number-quota", type=click.IntRange(min=0), group="Quotas",
           help="Numbers per instance when Service Quotas cannot be read [default: not checked then]."),
    option("no-preflight", is_flag=True, group="Quotas",
           help="Skip the quota preflight (the service still enforces quotas)."),
)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"bulkclaim: error: {message}", err=True)
    sys.exit(code)


def target_of(opts: dict[str, Any]) -> Target:
    if bool(opts["instance_id"]) == bool(opts["target_arn"]):
        raise click.UsageError("give exactly one of --instance-id or --target-arn")
    return Target(instance_id=opts["instance_id"], target_arn=opts["target_arn"])


def default_journal(target: Target) -> Path:
    """A journal name derived from the target, so re-running the same command resumes."""
    name = target.instance_id or (target.target_arn or "").rsplit(":", 1)[-1]
    return Path(f"bulkclaim-{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}.journal")


def client_settings(opts: dict[str, Any], *, quotas: bool = False) -> ClientSettings:
    """Connect's settings, or (``quotas``) Service Quotas' — the same but for the endpoint."""
    endpoint = opts["endpoint_url"]
    if quotas:  # the sandbox serves both on loopback; a real Connect endpoint (VPC, FIPS) is not Service Quotas'
        local = bool(endpoint) and urlsplit(endpoint).hostname in ("127.0.0.1", "localhost", "::1")
        endpoint = opts["quotas_endpoint_url"] or (endpoint if local else None)
    return ClientSettings(region=opts["region"], profile=opts["profile"], endpoint_url=endpoint,
                          connect_timeout=opts["connect_timeout"], read_timeout=opts["read_timeout"])


async def read_run_quotas(opts: dict[str, Any]) -> Quotas:
    """The quotas a run needs, when it needs them (preflight or ``--rate auto``); problems are
    logged as warnings and the run goes on with the configured values."""
    import structlog

    from bulkclaim.quotas import Quotas, read_quotas

    if opts.get("no_preflight") and opts["rate"] != "auto":
        return Quotas()
    quotas = await read_quotas(client_settings(opts, quotas=True))
    log = structlog.get_logger("bulkclaim")
    for problem in quotas.problems:
        log.warning("quota.unreadable", problem=problem,
                    using="the configured --rate and --phone-number-quota (if given)")
    return quotas


def rate_settings(opts: dict[str, Any], quotas: Quotas) -> RateSettings:
    """``--rate`` as given, or ``auto`` (the default): the applied ClaimPhoneNumber rate quota, else 2/s.

    The rate must match the quota (issue 13: told 3x the rate, a run at the real 2/s had a quarter of
    its claims throttled before the controller measured the rate), so the quota is the default; a
    quota that could not be read falls back to Connect's documented default with a warning. A rate
    read from the quota is the account's real one: the controller is told so (``rate_is_quota``) and
    probes back up promptly after other callers' use; a given ``--rate`` or the fallback may be wrong,
    and keeps the cautious probing."""
    rate, from_quota = opts["rate"], False
    per_api: dict[str, tuple[float, int]] = {}
    if rate == "auto":
        import structlog

        log = structlog.get_logger("bulkclaim")
        # Contact-flow associations have a quota of their own (L-D2ECB451, default 2/s).
        per_api["AssociatePhoneNumberContactFlow"] = (quotas.flow_rate or 2.0, opts["burst"])
        per_api["UpdatePhoneNumber"] = (quotas.move_rate or 2.0, opts["burst"])  # moves: L-B7E1268D
        rate, from_quota = quotas.claim_rate or 2.0, bool(quotas.claim_rate)
        if quotas.claim_rate:
            log.info("rate.auto", rate=rate, source="Service Quotas L-21385E28")
        elif quotas.problems:
            log.warning("rate.auto", rate=rate, source="Connect's default: the quota could not be read",
                        hint="give --rate if your ClaimPhoneNumber quota is not 2/s")
        else:
            log.info("rate.auto", rate=rate, source="Connect's default")
    return RateSettings(float(rate), opts["burst"], max_in_flight=opts["max_in_flight"],
                        adaptive=not opts["no_adaptive"], per_api=per_api, rate_is_quota=from_quota)


def connect_enum(value: str, shape: str, hint: str) -> str:
    """``value`` (any case) if Connect's model allows it for ``shape``; a usage error otherwise."""
    import botocore.session  # the model is only needed here: keep it out of every CLI start

    model = botocore.session.get_session().get_service_model("connect")
    allowed: list[str] = model.shape_for(shape).enum  # type: ignore[attr-defined]  # StringShape, untyped
    if value.upper() not in allowed:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(allowed)}", param_hint=hint)
    return value.upper()
