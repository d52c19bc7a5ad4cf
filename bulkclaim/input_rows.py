"""Input files read as rows, streaming: lines (UTF-8, a byte order mark, NUL bytes, over-long lines),
plain text, JSON Lines, and CSV as spreadsheets write it (RFC 4180: a quoted cell may span lines;
header names match regardless of case, spaces, hyphens and underscores).

Each reader yields ``(Line, fields)``: the line a row starts on (its ``source``) with any problem
reading it, and the row's cells by column name. What the cells mean is ``inputs``' business.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from bulkclaim.model import BulkclaimError

__all__ = ["InputFileError", "Line", "csv_records", "csv_rows", "jsonl_rows", "lines", "txt_rows"]

MAX_LINE = 64 * 1024
# The columns a row may have, by their spelling with case, spaces, hyphens and underscores removed:
# ``Phone Number``, ``PHONE_NUMBER``, ``phone-number`` and ``PhoneNumber`` all name ``phone_number``.
_COLUMNS = {name.replace("_", ""): name
            for name in ("phone_number", "description", "tags", "instance_id", "target_arn", "contact_flow",
                         "phone_number_id")}
_HEADER_NOISE = re.compile(r"[\s_\-]+")


class InputFileError(BulkclaimError):
    """A whole input file cannot be used; nothing from it is sent."""


class Line(NamedTuple):  # a tuple, not a dataclass: one is made per line, a million per large file
    number: int
    text: str
    problem: str | None  # set when the raw bytes could not be used as they are
    quotes: int | None = None  # for a line cut short: how many '"' the whole line had


def lines(path: Path) -> Iterator[Line]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark, as spreadsheets write
            raw = raw.rstrip(b"\r\n")
            if len(raw) <= MAX_LINE and b"\x00" not in raw:  # the usual line, quickly
                try:
                    yield Line(number, raw.decode("utf-8"), None)
                    continue
                except UnicodeDecodeError:
                    pass
            problem, quotes = None, None
            if len(raw) > MAX_LINE:
                problem, quotes, raw = f"line longer than {MAX_LINE} bytes", raw.count(b'"'), raw[:200]
            if b"\x00" in raw:
                problem, raw = problem or "line contains NUL bytes", raw.replace(b"\x00", b"")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem, text = problem or f"not valid UTF-8 (byte {exc.start + 1})", raw.decode("utf-8", "replace")
            yield Line(number, text, problem, quotes)


def txt_rows(path: Path) -> Iterator[tuple[Line, dict[str, Any]]]:
    for line in lines(path):
        text = line.text.split("#", 1)[0].strip()
        if text or line.problem:
            yield line, {"phone_number": text}


def jsonl_rows(path: Path) -> Iterator[tuple[Line, dict[str, Any]]]:
    for line in lines(path):
        if not line.text.strip() or line.problem:
            if line.problem:
                yield line, {}
            continue
        try:
            value = json.loads(line.text)
        except json.JSONDecodeError as exc:
            yield Line(line.number, line.text, f"not valid JSON: {exc.msg} (column {exc.colno})"), {}
            continue
        except RecursionError:
            yield Line(line.number, line.text[:200], "JSON nested too deeply"), {}
            continue
        if isinstance(value, str):
            value = {"phone_number": value}
        if not isinstance(value, dict):
            yield Line(line.number, line.text, "a JSON line must be an object or a string"), {}
            continue
        yield line, value


class _Record(NamedTuple):
    """One CSV record: its cells, the lines it spans and what went wrong reading it."""

    first: int  # the line the record starts on: the row's ``source``
    last: int
    cells: list[str]
    text: str  # its first line, for messages and reports
    problem: str | None  # a line of it could not be used as it is (bad UTF-8, NUL bytes, too long)
    malformed: str | None  # the csv module refused its quoting (on one line: the next record is sound)


class _CsvFeed:
    """A file's lines as ``csv.reader`` wants them: one string per line, so ``reader.line_num`` is
    the line number; notes what the csv module forgets (a record's first line, line-level problems,
    whether the file ended while a record was open)."""

    def __init__(self, lines: Iterator[Line]) -> None:
        self._lines = lines
        self.record_start = 1
        self.first_text = ""
        self.problem: str | None = None
        self.exhausted = False

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            if line.number == self.record_start:
                self.first_text = line.text
            if line.problem is None:
                yield line.text + "\n"
                continue
            if self.problem is None:
                where = "" if line.number == self.record_start else f"line {line.number}: "
                self.problem = where + line.problem
            yield _csv_text(line) + "\n"
        self.exhausted = True


def _csv_text(line: Line) -> str:
    """The text the csv module reads for ``line``. A line cut short keeps its quoting: its quotes
    are dropped and, if it had an odd number, one quote is put where it opens or closes a cell, so
    the records after it are read as they would have been."""
    if line.quotes is None:
        return line.text
    return line.text.replace('"', "") + (',"' if line.quotes % 2 else "")


def csv_records(path: Path) -> Iterator[_Record]:
    """Every record of a CSV, the header first, streaming (one record in memory at a time; a cell
    is at most ``csv.field_size_limit()`` characters). Quoting that breaks across lines (a quote
    that never closes, or one followed by stray text lines later) raises InputFileError naming the
    line where the quote opened: the record boundaries after it cannot be trusted."""
    feed = _CsvFeed(lines(path))
    reader = csv.reader(feed, strict=True)
    while True:
        feed.record_start, feed.first_text, feed.problem = reader.line_num + 1, "", None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            first, last = feed.record_start, reader.line_num
            if feed.exhausted or last > first:
                raise _broken_quoting(path, first, last, str(exc), at_end=feed.exhausted) from None
            yield _Record(first, last, [], feed.first_text, feed.problem, f"malformed CSV ({exc})")
            continue
        yield _Record(feed.record_start, reader.line_num, cells, feed.first_text, feed.problem, None)


def _broken_quoting(path: Path, first: int, last: int, error: str, *, at_end: bool) -> InputFileError:
    opened = _quote_opened(path, first, last, at_end=at_end)
    if "field limit" in error:  # csv.field_size_limit(): a cell this long is a quote left open
        return InputFileError(f"{path}:{opened}: the quote opened on line {opened} does not close within "
                              f"{csv.field_size_limit()} characters (line {last}); close it, or double a quote "
                              "meant as text (\"\")")
    if at_end:
        return InputFileError(f"{path}:{opened}: the quote opened on line {opened} never closes (the file ends "
                              "inside it); close it, or double a quote meant as text (\"\")")
    return InputFileError(f"{path}:{opened}: the quote opened on line {opened} is not closed where it should be "
                          f"(line {last}: {error}); close it, or double a quote meant as text (\"\")")


def _quote_opened(path: Path, first: int, last: int, *, at_end: bool) -> int:
    """The line where the quoted cell open at line ``last`` (at its end if ``at_end``, else at its
    start) was opened, reading lines ``first``..``last`` again; ``first`` if none is open. Runs only
    when a file is refused, so plain Python is fast enough."""
    quoted, opened, open_before_last = False, first, None
    for line in lines(path):
        if line.number < first:
            continue
        if line.number > last:
            break
        if line.number == last:
            open_before_last = opened if quoted else None
        text, position, field_start = _csv_text(line), 0, not quoted
        while True:
            if quoted:  # inside quotes only a quote matters: "" is a quote as text, one alone closes
                position = text.find('"', position)
                if position < 0:
                    break
                if text.startswith('"', position + 1):
                    position += 2
                    continue
                quoted, field_start, position = False, False, position + 1
            elif field_start and text.startswith('"', position):  # a quote opens a cell only at its start
                quoted, opened, position = True, line.number, position + 1
            else:
                position = text.find(",", position)
                if position < 0:
                    break
                field_start, position = True, position + 1
    if at_end:
        return opened if quoted else open_before_last or first
    return open_before_last or (opened if quoted else first)


def _csv_header(path: Path, record: _Record | None) -> list[str]:
    if record is None or (record.malformed is None and not any(cell.strip() for cell in record.cells)):
        raise InputFileError(f"{path}: empty file; a CSV needs a header with a phone_number column")
    if record.malformed:
        raise InputFileError(f"{path}:1: cannot read the CSV header ({record.malformed}); "
                             "lines must end in LF or CRLF")
    header: list[str] = []
    for cell in record.cells:
        name = _column(cell)
        if name in _COLUMNS.values() and name in header:
            raise InputFileError(f"{path}:1: the header names the {name} column twice ({record.text[:200]!r})")
        header.append(name)
    if "phone_number" not in header:
        raise InputFileError(f"{path}:1: no phone_number column in the header {header!r}; name the column "
                             "phone_number (or Phone Number), or pass --format txt for one number per line")
    return header


def _column(name: str) -> str:
    """The column a header cell names: a known one in any spelling, else the cell in lower case."""
    text = name.strip().lower()
    return _COLUMNS.get(_HEADER_NOISE.sub("", text), text)


def csv_rows(path: Path) -> Iterator[tuple[Line, dict[str, Any]]]:
    records = csv_records(path)
    header = _csv_header(path, next(records, None))
    for record in records:
        problem = record.problem or record.malformed
        if problem is None and not any(cell.strip() for cell in record.cells):
            continue  # blank, or only separators as spreadsheets export trailing rows
        if problem is None and len(record.cells) > len(header):
            problem = f"{len(record.cells)} cells but the header has {len(header)}"
        if problem is not None:
            yield Line(record.first, record.text, problem), {}
        else:
            yield Line(record.first, record.text, None), dict(zip(header, (c.strip() for c in record.cells),
                                                                   strict=False))


