"""Prometheus metrics of a command that sends requests (claim, acquire, release): ``--metrics-port``
serves ``/metrics`` while it runs, ``--metrics-textfile`` writes node_exporter's textfile format (for
cron jobs) every ``--metrics-interval`` seconds and at the end. Both need the ``bulkclaim[metrics]``
extra; without it, asking for them exits 2 before anything is sent. ``prometheus_client`` is imported
only when they are asked for: ``--help`` and runs without metrics never load it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bulkclaim.cli_common import EXIT_USAGE, _stack, fail, option
from bulkclaim.cli_signals import EXIT_SIGNAL, install_quit_handlers

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from bulkclaim.telemetry import Telemetry

__all__ = ["check_metrics", "exporting", "metrics_options"]

_GROUP = "Metrics"

metrics_options = _stack(
    option("metrics-port", type=click.IntRange(min=0, max=65535), group=_GROUP,
           help="Serve Prometheus metrics at http://ADDR:PORT/metrics during the run (0: any free port; the "
                "URL is logged as metrics.serving). Needs pip install 'bulkclaim[metrics]'."),
    option("metrics-addr", default="127.0.0.1", show_default=True, group=_GROUP,
           help="Address --metrics-port listens on (0.0.0.0 for a scraper outside the host or pod)."),
    option("metrics-textfile", type=click.Path(dir_okay=False, path_type=Path), group=_GROUP,
           help="Write the metrics here in node_exporter's textfile format (name it *.prom), replaced "
                "atomically every --metrics-interval seconds and at the end."),
    option("metrics-interval", type=click.FloatRange(min=0.1), default=15.0, show_default=True, group=_GROUP,
           help="Seconds between two writes of --metrics-textfile."),
    option("metrics-linger", type=click.FloatRange(min=0), default=0.0, show_default=True, group=_GROUP,
           help="Keep serving --metrics-port this many seconds after the run, so a last scrape sees the final "
                "counts (SIGINT/SIGTERM ends the wait; the exit code stays the run's)."),
)


def _wanted(opts: dict[str, Any]) -> bool:
    return opts["metrics_port"] is not None or opts["metrics_textfile"] is not None


def check_metrics(opts: dict[str, Any]) -> None:
    """Exit 2 (nothing sent yet) if metrics are asked for without the extra, or the textfile cannot be written."""
    if not _wanted(opts):
        return
    try:
        import bulkclaim.metrics  # noqa: F401  # the extra is there
    except ImportError as exc:
        fail(f"--metrics-port/--metrics-textfile: {exc}", EXIT_USAGE)
    if opts["metrics_textfile"] is not None:
        from bulkclaim.report import check_writable

        try:
            check_writable(opts["metrics_textfile"], "metrics textfile")
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)


@contextmanager
def exporting(opts: dict[str, Any], telemetry: Telemetry) -> Iterator[None]:
    """Export ``telemetry`` as the options say while the block runs (a command's run, report and exit):
    then write the textfile a last time and, with ``--metrics-linger``, keep serving a while."""
    if not _wanted(opts):
        yield
        return
    import structlog

    from bulkclaim.metrics import registry_of

    log = structlog.get_logger("bulkclaim")
    registry = registry_of(telemetry)
    textfile: Path | None = opts["metrics_textfile"]
    with _serving(registry, opts, log) as served:
        ticker = _Ticker(opts["metrics_interval"], lambda: _write(registry, textfile, log)) if textfile else None
        try:
            yield
        except SystemExit:  # the command's end (its exit code): the final counts are wanted all the same
            _finish(ticker, registry, textfile, served and opts["metrics_linger"], log)
            raise
        _finish(ticker, registry, textfile, served and opts["metrics_linger"], log)


@contextmanager
def _serving(registry: CollectorRegistry, opts: dict[str, Any], log: Any) -> Iterator[bool]:
    from bulkclaim.metrics import serve

    if opts["metrics_port"] is None:
        yield False
        return
    with ExitStack() as stack:
        try:
            url = stack.enter_context(serve(registry, opts["metrics_port"], opts["metrics_addr"]))
        except OSError as exc:
            fail(f"--metrics-port: cannot listen on {opts['metrics_addr']}:{opts['metrics_port']}: "
                 f"{exc.strerror or exc}", EXIT_USAGE)
        log.info("metrics.serving", url=url)
        yield True


def _finish(ticker: _Ticker | None, registry: CollectorRegistry, textfile: Path | None, linger: float,
            log: Any) -> None:
    if ticker is not None:
        ticker.stop()  # first: a periodic write must not replace the final one
    if textfile is not None:
        _write(registry, textfile, log)
    if linger:
        _linger(linger, log)


def _write(registry: CollectorRegistry, path: Path, log: Any) -> None:
    """Write the textfile; a failure is a warning (the run goes on, the journal has every outcome)."""
    from bulkclaim.metrics import write_textfile

    try:
        write_textfile(registry, path)
    except OSError as exc:
        log.warning("metrics.textfile_failed", path=str(path), error_message=exc.strerror or str(exc))


class _Ended(Exception):
    """A signal ended the linger."""


def _linger(seconds: float, log: Any) -> None:
    """Wait ``seconds`` (the server thread goes on serving); a SIGINT/SIGTERM/SIGHUP ends the wait."""
    def end(_signum: int, _frame: object) -> None:
        raise _Ended

    signal.set_wakeup_fd(-1)  # the quit watcher (cli_signals) would exit with the signal's code
    for received in EXIT_SIGNAL:
        signal.signal(received, end)
    log.info("metrics.lingering", seconds=seconds)
    try:
        threading.Event().wait(seconds)
    except _Ended:
        pass
    finally:
        install_quit_handlers()


class _Ticker:
    """Calls ``action`` every ``interval`` seconds from a daemon thread until stopped."""

    def __init__(self, interval: float, action: Callable[[], None]) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval, action), name="bulkclaim-metrics",
                                        daemon=True)
        self._thread.start()

    def _loop(self, interval: float, action: Callable[[], None]) -> None:
        while not self._stopped.wait(interval):
            action()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
