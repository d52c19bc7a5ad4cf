"""Options shared by the commands that bring numbers to a target through the journal (``claim``, ``move``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bulkclaim.cli_common import (
    JournalOption,
    JournalSpec,
    _stack,
    aws_options,
    option,
    quota_options,
    rate_options,
    verbosity,
    verbosity_options,
)
from bulkclaim.cli_metrics import check_metrics, metrics_options
from bulkclaim.inputs import FORMATS

__all__ = ["prepare_run", "run_options"]

#: The options of a command that brings numbers to a target through the journal: claim and move.
run_options = _stack(
    option("journal", type=JournalOption(), group="Journal and report",
           help="The journal: a file, or a postgresql:// URL; re-running with it resumes "
                "[default: bulkclaim-<target>.journal]."),
    option("report", type=click.Path(dir_okay=False, path_type=Path), group="Journal and report",
           help="Write the report of this run's numbers here (.csv or .jsonl), replaced atomically."),
    rate_options,
    option("no-verify", is_flag=True, group="Claiming",
           help="Do not wait for CLAIMED; leave accepted claims in_progress."),
    option("verify-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True, group="Claiming",
           help="Seconds to wait for an accepted claim to settle CLAIMED or FAILED."),
    option("retry-failed", is_flag=True, group="Claiming",
           help="Try failed numbers again, with new tokens, and failed contact-flow associations."),
    option("default-region-for-numbers", metavar="CC", group="Input", help="Country for national numbers, e.g. US."),
    option("resolve-flow-names", is_flag=True, group="Input",
           help="Let contact_flow name flows by name (looked up once with ListContactFlows), not only by id or ARN."),
    option("format", dest="input_format", type=click.Choice(FORMATS), group="Input",
           help="Input format [default: from extension]."),
    option("dry-run", is_flag=True, group="Claiming", help="Read, validate, plan and check quotas; claim nothing."),
    quota_options,
    aws_options,
    option("no-progress", is_flag=True, group="Output", help="No progress bar, even on a terminal."),
    verbosity_options,
    metrics_options,
    option("grace-period", type=click.FloatRange(min=0), default=10.0, show_default=True, group="Claiming",
           help="Seconds in-flight requests get to finish after SIGINT/SIGTERM."),
)


def prepare_run(inputs: tuple[Path, ...], opts: dict[str, Any], default_journal: Path) -> JournalSpec:
    """What ``claim`` and ``move`` do before reading a row: logging and metrics set up, every input file
    and the report's path checked (InputFileError, ValueError: nothing is sent); the run's journal."""
    from bulkclaim.inputs import check_file
    from bulkclaim.logs import configure_logging
    from bulkclaim.report import check_writable, report_format

    opts["verbosity"] = verbosity(opts)
    configure_logging(opts["log_format"], verbosity=opts["verbosity"])
    check_metrics(opts)
    for path in inputs:
        check_file(path, opts["input_format"])
    if opts["report"]:
        report_format(opts["report"])
        check_writable(opts["report"])
    journal: JournalSpec = opts["journal"] or default_journal
    return journal
