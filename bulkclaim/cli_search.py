"""``bulkclaim search``: find available numbers (SearchAvailablePhoneNumbers) and write them as a
file that ``bulkclaim claim`` reads as it is. Searching claims nothing.

Only the command's options are defined at import time; the AWS SDK and the pipeline are imported
when the command runs, so ``bulkclaim --help`` stays fast.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from bulkclaim.cli_common import (
    EXIT_FATAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    aws_options,
    connect_enum,
    fail,
    number_search_options,
    option,
    rate_options,
    target_of,
    target_options,
)
from bulkclaim.cli_help import GroupedCommand
from bulkclaim.inputs import FORMATS, InputFileError, detect_format
from bulkclaim.report import atomic_write, check_writable

if TYPE_CHECKING:
    from bulkclaim.model import Target
    from bulkclaim.search import Found

__all__ = ["search_command"]


@click.command("search", cls=GroupedCommand, short_help="Find available numbers and write them as a claim input.")
@target_options
@number_search_options
@option("count", type=click.IntRange(min=1), required=True, group="Numbers to find", help="How many numbers to find.")
@option("output", type=click.Path(dir_okay=False, path_type=Path), required=True,
        help="Write the numbers here (.csv, .jsonl or .txt), as a `bulkclaim claim` input.")
@option("format", dest="output_format", type=click.Choice(FORMATS),
        help="Output format [default: from --output's extension].")
@rate_options
@aws_options
def search_command(**opts: Any) -> None:
    """Find COUNT available numbers with SearchAvailablePhoneNumbers and write them to --output.

    Claims nothing: `bulkclaim claim OUTPUT` does. Exits 1 if the inventory had fewer than COUNT, or
    if the service kept throttling the search through every retry (the file then holds those found).
    Numbers found are not reserved: someone else may claim one before you do (`bulkclaim acquire`
    claims exactly COUNT, replacing numbers taken meanwhile)."""
    from bulkclaim.logs import configure_logging

    configure_logging(opts["log_format"])
    target = target_of(opts)
    country = connect_enum(opts["country"], "PhoneNumberCountryCode", "--country")
    number_type = connect_enum(opts["number_type"], "PhoneNumberType", "--type")
    output: Path = opts["output"]
    try:
        fmt = detect_format(output, opts["output_format"])
    except InputFileError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        check_writable(output, "output")  # before any request
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    found = _run_search(target, country, number_type, opts)
    try:
        with atomic_write(output) as handle:
            _write_numbers(handle, fmt, found.numbers)
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}", EXIT_FATAL)
    prefix = f" starting {opts['prefix']}" if opts["prefix"] else ""
    what = f"{country} {number_type} numbers{prefix}"
    if found.interrupted:  # throttling is not a refusal: what was found is written, and a re-run may find more
        click.echo(f"found only {len(found.numbers)} of {opts['count']} available {what}: searching stopped early "
                   f"({found.interrupted}); wrote them to {output}; search again later or at a lower --rate")
        sys.exit(EXIT_INCOMPLETE)
    if found.exhausted:
        click.echo(f"found only {len(found.numbers)} of {opts['count']} available {what}: the inventory has no "
                   f"more ({found.pages} page(s) searched); wrote them to {output}")
        sys.exit(EXIT_INCOMPLETE)
    click.echo(f"found {len(found.numbers)} available {what}; wrote them to {output} "
               f"(claim them with: bulkclaim claim {output} ...)")
    sys.exit(EXIT_OK)


def _run_search(target: Target, country: str, number_type: str, opts: dict[str, Any]) -> Found:
    """The search, or the process's exit: 2 for a configuration problem, 3 for a refusal by the
    service (access denied, unknown target, bad parameter, unreachable). A signal quits at once
    (``cli_signals``): nothing has been written then."""
    import anyio
    import structlog

    from bulkclaim.claimer import connect_api
    from bulkclaim.cli_common import client_settings, rate_settings
    from bulkclaim.model import BulkclaimError, FatalServiceError
    from bulkclaim.quotas import Quotas
    from bulkclaim.search import search_numbers

    log = structlog.get_logger("bulkclaim")

    async def search() -> Found:
        async with connect_api(client_settings(opts), rate_settings(opts, Quotas())) as api:
            return await search_numbers(api, target, country, number_type, opts["prefix"], opts["count"],
                                        on_page=lambda found: log.info("search.page", found=found,
                                                                       wanted=opts["count"]))

    try:
        return anyio.run(search)
    except FatalServiceError as exc:
        log.error("search.aborted", error_code=exc.code, error_message=exc.message)
        fail(f"aborted: {exc}; nothing written", EXIT_FATAL)
    except BulkclaimError as exc:
        fail(f"{exc}; nothing written", EXIT_USAGE)


def _write_numbers(handle: IO[str], fmt: str, numbers: list[str]) -> None:
    """``numbers`` as a claim input of format ``fmt``; the CSV has an empty description column to fill in."""
    if fmt == "csv":
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["phone_number", "description"])
        writer.writerows([number, ""] for number in numbers)
    elif fmt == "jsonl":
        handle.writelines(json.dumps({"phone_number": number}) + "\n" for number in numbers)
    else:
        handle.writelines(number + "\n" for number in numbers)
