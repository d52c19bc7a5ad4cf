"""How a ``bulkclaim`` command that sends requests runs: errors mapped to exit codes, graceful
SIGINT/SIGTERM, and the quota preflight's report. ``claim`` and ``acquire`` share it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import anyio
import click
import structlog

from bulkclaim.claimer import Claimer
from bulkclaim.cli_common import EXIT_FATAL, EXIT_SIGNAL, EXIT_USAGE, JournalSpec, fail, shown
from bulkclaim.cli_signals import install_quit_handlers, quit_now, set_aside_report
from bulkclaim.inputs import InputFileError
from bulkclaim.logs import stderr_console
from bulkclaim.model import (
    BulkclaimError,
    ConfigurationError,
    EndpointUnreachableError,
    FatalServiceError,
    JournalError,
    ParametersChangedError,
    QuotaExceededError,
    QuotaReachedError,
    Target,
)
from bulkclaim.preflight import Preflight, preflight
from bulkclaim.quotas import Quotas
from bulkclaim.telemetry import Telemetry

__all__ = ["Harness", "check_quota", "debug_kill_point", "judge_preflight"]


@dataclass
class Harness:
    """Runs one command's async main and turns what ends it into the documented exit codes."""

    journal: JournalSpec
    opts: dict[str, Any]
    signal_received: signal.Signals | None = None
    requests_sent: int = 0
    #: Called before the process exits 3 (aborted after the run began): the claim command writes
    #: the report of what the journal holds then, so ``--report`` is never an earlier run's.
    before_abort: Callable[[], None] | None = None
    #: What the command's Claimers count, for ``--metrics-port`` / ``--metrics-textfile`` (cli_metrics.py).
    telemetry: Telemetry = field(default_factory=Telemetry)

    def run_main(self, main: Callable[[], Awaitable[None]]) -> None:
        """Run ``main``; exits the process (with a one-line message) on a configuration, input,
        journal or fatal service error. Returns normally when ``main`` finished or was stopped."""
        log = structlog.get_logger("bulkclaim")
        try:
            anyio.run(main)
        except (ParametersChangedError, ConfigurationError) as exc:
            fail(str(exc), EXIT_USAGE)
        except QuotaExceededError as exc:  # refused by the preflight, or reached during the run
            reached = isinstance(exc, QuotaReachedError)
            log.error("run.aborted" if reached else "run.refused", error_code=exc.code, error_message=exc.message)
            self._abort(f"aborted: {exc.message} (journal {self.journal})" if reached else f"refused: {exc.message}")
        except EndpointUnreachableError as exc:
            log.error("run.aborted", error_code=exc.code, error_message=exc.message, endpoint=exc.endpoint)
            how_long = f"{'unreachable for' if exc.ever_answered else 'no answer in'} {exc.seconds:.0f}s"
            self._abort(f"aborted: cannot reach {exc.endpoint}: {exc.cause} ({how_long}). Nothing was marked "
                        f"failed: the journal {shown(self.journal)} keeps every unfinished number with its token; run "
                        "the same command again to resume once the endpoint answers.")
        except FatalServiceError as exc:
            log.error("run.aborted", error_code=exc.code, error_message=exc.message)
            self._abort(f"aborted: {exc} (the journal {shown(self.journal)} is intact; fix the cause and run the same "
                        "command again to continue)")
        except (JournalError, InputFileError) as exc:  # exit 2 promises that nothing was sent
            if self.requests_sent:
                self._abort(str(exc))
            fail(str(exc), EXIT_USAGE)
        finally:  # asyncio put back the default handlers: outside the run, a signal quits at once
            install_quit_handlers()

    def _abort(self, message: str) -> NoReturn:
        if self.before_abort is not None:
            try:
                self.before_abort()
            except (BulkclaimError, OSError) as exc:
                message += f"; the report could not be written: {exc}"
        if aside := set_aside_report():
            message += f". {aside}"
        fail(message, EXIT_FATAL)

    def install_signals(self, stop: Callable[[], None], scope: anyio.CancelScope) -> None:
        """First SIGINT/SIGTERM: stop dispatching, give requests in flight ``--grace-period``.
        A second Ctrl-C leaves at once (the journal is consistent at every commit)."""
        loop = asyncio.get_running_loop()

        def on_signal(received: signal.Signals) -> None:
            if self.signal_received is not None:
                if received == signal.SIGINT:
                    quit_now(received, "second Ctrl-C: quit without waiting for requests in flight (the journal is "
                                       "consistent: run the same command again to resume; journal "
                                       f"{shown(self.journal)})")
                return
            self.signal_received = received
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                _tell(f"bulkclaim: {received.name}: finishing requests in flight (up to "
                      f"{self.opts['grace_period']:.0f}s; Ctrl-C again to quit now)…")
            stop()
            loop.call_later(self.opts["grace_period"], scope.cancel)

        for sig in EXIT_SIGNAL:
            loop.add_signal_handler(sig, on_signal, sig)

    def count_requests(self, claimer: Claimer) -> None:
        self.requests_sent = sum(limiter.sent for limiter in claimer.limiters.values())


async def check_quota(claimer: Claimer, target: Target, run: int, quotas: Callable[[], Awaitable[Quotas]],
                      opts: dict[str, Any], stop: anyio.Event | None = None, *,
                      once: str = "preflight") -> Preflight | None:
    """The preflight of a claim run, before its first claim (see :func:`judge_preflight`). Workers sharing
    the run (PostgreSQL) make it once, with the ``--allow-partial`` of the one that makes it: the others
    take its verdict (and its cut), and one started with another ``--allow-partial`` stops (exit 2).
    ``once``: the name of this check among the run's run-wide steps (a move checks each destination).
    None if ``stop`` was set while this worker waited for another one's preflight (nothing is sent)."""
    async def check() -> str:
        found = await preflight(claimer.api, claimer.journal, target, run, await quotas(),
                                configured_quota=opts["phone_number_quota"], allow_partial=opts["allow_partial"],
                                action=opts.get("action", "claim"))
        return json.dumps({"allow_partial": opts["allow_partial"], "found": asdict(found)})

    kept = await claimer.journal.once(run, once, check, stop=stop)
    if kept is None:  # check() always finishes with a result: stopped while another worker made it
        return None
    made = json.loads(kept)
    if made["allow_partial"] != opts["allow_partial"]:
        raise ConfigurationError(
            f"the run these inputs are on (run {run}) was started {'with' if made['allow_partial'] else 'without'} "
            f"--allow-partial and this worker {'with' if opts['allow_partial'] else 'without'} it: start every "
            "worker of a run with the same options (or this one once the run has ended); nothing was sent")
    found = Preflight(**made["found"])
    judge_preflight(found, opts)
    return found


def judge_preflight(found: Preflight, opts: dict[str, Any]) -> None:
    """Log what the preflight found; refuse (QuotaExceededError) a run beyond the phone-number quota
    unless ``--allow-partial``; warn about what could not be checked and about churn."""
    log = structlog.get_logger("bulkclaim")
    for problem in found.problems:
        log.warning("preflight.incomplete", problem=problem)
    if found.quota is None:
        log.warning("preflight.quota_unknown", hint="give --phone-number-quota to check the run against it")
    if warning := found.churn_warning():
        log.warning("preflight.churn", message=warning)
    log.info("preflight", target=found.target, quota=found.quota, quota_source=found.quota_source,
             on_target=found.on_target, to_claim=found.to_claim, allowed=found.allowed, churn=found.churn,
             churn_limit=found.churn_limit)
    if found.over and not opts["allow_partial"]:
        raise QuotaExceededError(found.refusal())
    if found.over:
        log.warning("preflight.partial", action=found.action, claiming=found.allowed, left_out=found.over,
                    error_code="PhoneNumberQuotaExceeded")


def _tell(message: str) -> None:
    """A line on stderr; on a terminal through the console the progress bar shares, so it shows above the bar."""
    if sys.stderr.isatty():
        from rich.text import Text

        stderr_console().print(Text(message), soft_wrap=True)
    else:
        click.echo(f"\n{message}", err=True)


def debug_kill_point() -> None:
    """BULKCLAIM_DEBUG_KILL_AFTER_PLAN=1 makes the process SIGKILL itself once every token is durable
    and before anything is sent: the crash tests use it to prove a resumed run re-sends those tokens."""
    if os.environ.get("BULKCLAIM_DEBUG_KILL_AFTER_PLAN") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
