"""Logging setup for the command line only (the library never configures logging).

Logs go to stderr, so stdout stays free for reports and summaries:

- on a terminal, a colored console renderer printed through the same rich :class:`Console` the
  progress bar uses, so each line appears *above* the live bar instead of being written into it.
  The default level is WARNING there (the bar says how the run goes); ``-v`` adds the per-number
  events (INFO and below), ``-q`` keeps only errors (and no bar).
- otherwise (cron, CI, Kubernetes), JSON lines, INFO by default; ``-v`` adds DEBUG, ``-q`` keeps
  warnings and errors (a machine reading the log still wants to know what went wrong). The same
  levels apply to JSON asked for on a terminal and to console lines written to a file.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import TYPE_CHECKING, Any, Literal

import structlog

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["LogFormat", "Verbosity", "configure_logging", "log_level", "stderr_console", "uses_json"]

LogFormat = Literal["auto", "console", "json"]
#: -1 quiet (-q), 0 default, 1 verbose (-v)
Verbosity = Literal[-1, 0, 1]

_CONSOLE_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.DEBUG}
_JSON_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def uses_json(log_format: LogFormat) -> bool:
    """Whether logs are JSON lines: asked for, or ``auto`` with stderr not a terminal."""
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def log_level(log_format: LogFormat, verbosity: Verbosity) -> int:
    """The lowest level logged for this format and ``-v``/``-q`` (see the module's docstring): the
    terminal's levels only for console lines on a terminal (where the bar tells how the run goes);
    console lines into a file keep INFO, like JSON."""
    terminal = not uses_json(log_format) and sys.stderr.isatty()
    return (_CONSOLE_LEVELS if terminal else _JSON_LEVELS)[verbosity]


@functools.cache
def stderr_console() -> Console:
    """The one rich Console on stderr that log lines and the progress bar share (so rich keeps the
    bar below the lines it prints instead of both writing to the terminal at once)."""
    from rich.console import Console

    return Console(stderr=True)


class _ConsoleLogger:
    """A structlog logger that prints rendered lines through :func:`stderr_console`."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def msg(self, message: str) -> None:
        from rich.text import Text

        self._console.print(Text.from_ansi(message), soft_wrap=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def _console_logger_factory(*_: Any) -> _ConsoleLogger:
    return _ConsoleLogger(stderr_console())


def configure_logging(log_format: LogFormat = "auto", level: int | None = None, *, verbosity: Verbosity = 0) -> None:
    """Configure structlog for the CLI. ``level`` overrides what ``verbosity`` would choose."""
    use_json = uses_json(log_format)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # On a terminal every line (JSON too, if asked for) goes through the console the bar redraws around.
    factory: Any = _console_logger_factory if sys.stderr.isatty() else structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(log_level(log_format, verbosity) if level is None
                                                            else level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
