"""The command line's signal policy, from the first instruction to the last (the library has none).

- While a run sends requests, :class:`bulkclaim.cli_run.Harness` owns SIGINT, SIGTERM and SIGHUP:
  the first one stops sending and lets requests in flight finish; a second Ctrl-C quits at once.
- At every other moment (starting up, reading inputs, planning, writing the report) a signal quits
  at once through :func:`quit_now`: the journal is consistent at every commit, so there is nothing
  to finish.

Either way the exit code is 128 + the signal (130 SIGINT, 143 SIGTERM, 129 SIGHUP: a closed
terminal), never a traceback, and a report the run has not rewritten yet is never left looking like
this run's: :func:`quit_now` moves it aside and says so.

This module is imported first by the entry point, so it imports nothing heavy.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import suppress
from pathlib import Path
from types import FrameType

__all__ = ["EXIT_SIGNAL", "expect_report", "install_quit_handlers", "quit_now", "report_written", "set_aside_report"]

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}

# The report this command will write and the journal it comes from, until it is written.
_expected: tuple[Path, str] | None = None
_HANDLED = frozenset(int(s) for s in EXIT_SIGNAL)
_quitting = threading.Lock()
_wakeup: tuple[int, int] | None = None  # the pipe the C-level handler writes each signal's number to


def install_quit_handlers() -> None:
    """Make every handled signal quit at once with its exit code (the default outside a run).

    Python runs a signal's handler in the main thread between two bytecodes, so a signal that lands
    just before a blocking call (``input()`` at the release question, a read) would wait until that
    call returns. The interpreter also writes every signal's number to a "wakeup" pipe the moment it
    arrives; a watcher thread reading it quits whatever the main thread is doing.
    """
    global _wakeup
    for received in EXIT_SIGNAL:
        signal.signal(received, _on_signal)
    if _wakeup is None:
        _wakeup = os.pipe()
        os.set_blocking(_wakeup[1], False)
        threading.Thread(target=_watch, args=(_wakeup[0],), name="bulkclaim-signals", daemon=True).start()
    signal.set_wakeup_fd(_wakeup[1], warn_on_full_buffer=False)  # an event loop took it over during a run


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    quit_now(signal.Signals(signum))


def _watch(read_end: int) -> None:
    while received := os.read(read_end, 1):
        if received[0] in _HANDLED:
            quit_now(signal.Signals(received[0]))


def quit_now(received: signal.Signals, reason: str = "") -> None:
    """Leave at once with the signal's exit code: remove half-written files, set an earlier run's
    report aside, and say so in one line on stderr (which a closed terminal may have taken away)."""
    if not _quitting.acquire(blocking=False):
        return  # another thread is already on its way out
    report = sys.modules.get("bulkclaim.report")
    for partial in list(getattr(report, "PARTIAL_FILES", ())):
        with suppress(OSError):
            os.unlink(partial)
    lines = [f"bulkclaim: {received.name}: {reason or 'stopped'}."]
    if aside := set_aside_report():
        lines.append(aside)
    _say(" ".join(lines))
    os._exit(EXIT_SIGNAL[received])


def expect_report(path: Path | None, journal: Path | str) -> None:
    """This command will write ``path`` from ``journal`` (once it has something to report)."""
    from bulkclaim.journal import journal_name  # a URL is shown without its password

    global _expected
    _expected = (path, journal_name(journal)) if path is not None else None


def report_written() -> None:
    global _expected
    _expected = None


def set_aside_report() -> str:
    """If the expected report exists and is an earlier run's, rename it to ``<name>.previous`` so
    nobody takes it for this run's; returns what to tell the user ('' if there was nothing to do)."""
    global _expected
    if _expected is None:
        return ""
    path, journal = _expected
    _expected = None
    if not path.exists():
        return ""
    previous = path.with_name(path.name + ".previous")
    try:
        os.replace(path, previous)
    except OSError as exc:
        return (f"The report {path} is an earlier run's and could not be moved aside ({exc.strerror}): "
                f"do not trust it; `bulkclaim report --journal {journal} --output {path}` writes the current one.")
    return (f"The report {path} was an earlier run's: moved to {previous}; "
            f"`bulkclaim report --journal {journal} --output {path}` writes the current one.")


def _say(line: str) -> None:
    with suppress(OSError):
        os.write(2, f"\n{line}\n".encode())
