"""Streaming readers for number lists (CSV, plain text, JSON Lines), with E.164 normalization.

Files are streamed, never loaded whole, so memory stays flat in the input size. Each row becomes a
:class:`ClaimRequest`, or a :class:`Rejected` naming ``file:line`` (the line where the row starts) and
the reason; a row that breaks one of Connect's own limits is rejected here and never sent. Problems
with a whole file (missing, a directory, no phone column, unknown format, a CSV quote that never
closes) raise :class:`InputFileError`.

CSV follows RFC 4180 as spreadsheets write it: a quoted cell may span lines (a description with line
breaks), header names are matched regardless of case, spaces, hyphens and underscores.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import phonenumbers

from bulkclaim.model import BulkclaimError, ClaimRequest, Rejected, Target, valid_tag_key

__all__ = [
    "FORMATS", "InputFileError", "check", "check_file", "detect_format", "fingerprint", "normalize_number",
    "read_inputs",
]

FORMATS = ("csv", "txt", "jsonl")
_EXTENSIONS = {".csv": "csv", ".txt": "txt", ".lst": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_MAX_LINE = 64 * 1024
_MAX_DESCRIPTION = 500
_MAX_TAGS = 50
_NUMBER_CHARS = re.compile(r"^[0-9+\s\-.()/]+$")
_POSSIBILITY = {
    phonenumbers.ValidationResult.TOO_LONG: " (too long)",
    phonenumbers.ValidationResult.TOO_SHORT: " (too short)",
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: " (unknown country code)",
}
_CANONICAL = re.compile(r"\+[1-9][0-9]{6,14}")
# The columns a row may have, by their spelling with case, spaces, hyphens and underscores removed:
# ``Phone Number``, ``PHONE_NUMBER``, ``phone-number`` and ``PhoneNumber`` all name ``phone_number``.
_COLUMNS = {name.replace("_", ""): name
            for name in ("phone_number", "description", "tags", "instance_id", "target_arn")}
_HEADER_NOISE = re.compile(r"[\s_\-]+")
# Bumped whenever the same bytes may read differently (CSV cells spanning lines came in with 2): a
# plan recorded by an older reader is then not taken over as it is (see ``fingerprint``).
_READER_VERSION = 2


class InputFileError(BulkclaimError):
    """A whole input file cannot be used; nothing from it is sent."""


class _Line(NamedTuple):  # a tuple, not a dataclass: one is made per line, a million per large file
    number: int
    text: str
    problem: str | None  # set when the raw bytes could not be used as they are
    quotes: int | None = None  # for a line cut short: how many '"' the whole line had


def detect_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise InputFileError(f"{path}: unknown format {explicit!r} (--format takes {', '.join(FORMATS)})")
        return explicit
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise InputFileError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                             f"name it .csv, .txt or .jsonl, or pass --format {'|'.join(FORMATS)}")
    return found


def normalize_number(raw: str, default_region: str | None) -> str:
    """E.164 form of ``raw``, or ValueError with a reason a user can act on."""
    text = " ".join(raw.split())  # tabs, non-breaking spaces and runs of them separate like one space
    if not text:
        raise ValueError("empty phone number")
    if not _NUMBER_CHARS.match(text):
        raise ValueError(f"phone number {text!r} has characters other than digits, '+', spaces and -.()/")
    if not text.startswith("+") and default_region is None:
        raise ValueError(f"{text!r} is not in international format (+country code); "
                         "give a default region for national numbers: --default-region-for-numbers US (or CA, GB, ...)")
    try:
        parsed = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{text!r} is not a phone number: {exc._msg}") from None
    if not phonenumbers.is_valid_number(parsed):
        reason = _POSSIBILITY.get(phonenumbers.is_possible_number_with_reason(parsed), "")
        raise ValueError(f"{text!r} is not a valid number for its country{reason}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def fingerprint(paths: Iterable[Path], *, target: Target | None, fmt: str | None = None,
                default_region: str | None = None) -> str:
    """A digest of everything that decides how these inputs are planned: the files' names as given
    (they appear in report rows) and contents, the target, the format and the default region.
    Equal fingerprints plan identically, which lets a re-run take over an earlier plan as it is."""
    digest = hashlib.sha256(json.dumps([target.key if target else None, fmt, default_region,
                                        _READER_VERSION]).encode())
    for path in paths:
        digest.update(b"\0" + str(path).encode() + b"\0")
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None
    return digest.hexdigest()


def check_file(path: Path, fmt: str | None = None) -> None:
    """Raise InputFileError for a file that cannot be read as ``fmt`` at all, before anything starts
    (missing, a directory, unknown format, a CSV without a usable header or with a quote that never
    closes).

    A CSV is read through once here, records only (no number parsing: about half a second per
    million rows), because its quoting decides every row boundary after it: an unclosed quote near
    the end must stop the run before the first token is reserved, not after planning the rows above it.
    """
    kind = detect_format(path, fmt)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a file")
    if kind == "csv":
        try:
            for _ in _csv_records(path):
                pass
        except OSError as exc:
            raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None


def read_inputs(paths: Iterable[Path], *, target: Target | None, fmt: str | None = None,
                default_region: str | None = None) -> Iterator[ClaimRequest | Rejected]:
    """Every row of every file, in order. Whole-file problems raise before that file's first row, but
    for a CSV quote that never closes, found where the file ends: ``check_file`` finds it up front."""
    for path in paths:
        yield from read_file(path, target=target, fmt=fmt, default_region=default_region)


def read_file(path: Path, *, target: Target | None, fmt: str | None = None,
              default_region: str | None = None) -> Iterator[ClaimRequest | Rejected]:
    kind = detect_format(path, fmt)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a file")
    reader = {"csv": _csv_rows, "txt": _txt_rows, "jsonl": _jsonl_rows}[kind]
    try:
        for line, fields in reader(path):
            source = f"{path}:{line.number}"
            if line.problem:
                yield Rejected(raw=line.text[:200], source=source, reason=line.problem, target=target)
                continue
            yield _to_request(fields, source, target, default_region)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None


def _lines(path: Path) -> Iterator[_Line]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark, as spreadsheets write
            raw = raw.rstrip(b"\r\n")
            if len(raw) <= _MAX_LINE and b"\x00" not in raw:  # the usual line, quickly
                try:
                    yield _Line(number, raw.decode("utf-8"), None)
                    continue
                except UnicodeDecodeError:
                    pass
            problem, quotes = None, None
            if len(raw) > _MAX_LINE:
                problem, quotes, raw = f"line longer than {_MAX_LINE} bytes", raw.count(b'"'), raw[:200]
            if b"\x00" in raw:
                problem, raw = problem or "line contains NUL bytes", raw.replace(b"\x00", b"")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem, text = problem or f"not valid UTF-8 (byte {exc.start + 1})", raw.decode("utf-8", "replace")
            yield _Line(number, text, problem, quotes)


def _txt_rows(path: Path) -> Iterator[tuple[_Line, dict[str, Any]]]:
    for line in _lines(path):
        text = line.text.split("#", 1)[0].strip()
        if text or line.problem:
            yield line, {"phone_number": text}


def _jsonl_rows(path: Path) -> Iterator[tuple[_Line, dict[str, Any]]]:
    for line in _lines(path):
        if not line.text.strip() or line.problem:
            if line.problem:
                yield line, {}
            continue
        try:
            value = json.loads(line.text)
        except json.JSONDecodeError as exc:
            yield _Line(line.number, line.text, f"not valid JSON: {exc.msg} (column {exc.colno})"), {}
            continue
        except RecursionError:
            yield _Line(line.number, line.text[:200], "JSON nested too deeply"), {}
            continue
        if isinstance(value, str):
            value = {"phone_number": value}
        if not isinstance(value, dict):
            yield _Line(line.number, line.text, "a JSON line must be an object or a string"), {}
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

    def __init__(self, lines: Iterator[_Line]) -> None:
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


def _csv_text(line: _Line) -> str:
    """The text the csv module reads for ``line``. A line cut short keeps its quoting: its quotes
    are dropped and, if it had an odd number, one quote is put where it opens or closes a cell, so
    the records after it are read as they would have been."""
    if line.quotes is None:
        return line.text
    return line.text.replace('"', "") + (',"' if line.quotes % 2 else "")


def _csv_records(path: Path) -> Iterator[_Record]:
    """Every record of a CSV, the header first, streaming (one record in memory at a time; a cell
    is at most ``csv.field_size_limit()`` characters). Quoting that breaks across lines (a quote
    that never closes, or one followed by stray text lines later) raises InputFileError naming the
    line where the quote opened: the record boundaries after it cannot be trusted."""
    feed = _CsvFeed(_lines(path))
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
    for line in _lines(path):
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


def _csv_rows(path: Path) -> Iterator[tuple[_Line, dict[str, Any]]]:
    records = _csv_records(path)
    header = _csv_header(path, next(records, None))
    for record in records:
        problem = record.problem or record.malformed
        if problem is None and not any(cell.strip() for cell in record.cells):
            continue  # blank, or only separators as spreadsheets export trailing rows
        if problem is None and len(record.cells) > len(header):
            problem = f"{len(record.cells)} cells but the header has {len(header)}"
        if problem is not None:
            yield _Line(record.first, record.text, problem), {}
        else:
            yield _Line(record.first, record.text, None), dict(zip(header, (c.strip() for c in record.cells),
                                                                   strict=False))


def _to_request(fields: Mapping[str, Any], source: str, default_target: Target | None,
                default_region: str | None) -> ClaimRequest | Rejected:
    raw = str(fields.get("phone_number") or "")
    try:
        target = _row_target(fields, default_target)
    except ValueError as exc:
        return Rejected(raw=raw, source=source, reason=str(exc), target=default_target)
    try:
        # Already canonical E.164: its check against the numbering plan (the costly part, ~25 us) is
        # left to `check`, which planning calls only for numbers the journal does not know yet.
        canonical = _CANONICAL.fullmatch(raw) is not None
        number = raw if canonical else normalize_number(raw, default_region)
        description = _description(fields.get("description"))
        tags = _tags(fields.get("tags"))
    except ValueError as exc:
        return Rejected(raw=raw, source=source, reason=str(exc), target=target)
    return ClaimRequest(number, target, description, MappingProxyType(tags), source, checked=not canonical)


def check(request: ClaimRequest) -> ClaimRequest | Rejected:
    """Finish validating a request read without its numbering-plan check (see ``ClaimRequest.checked``)."""
    if request.checked:
        return request
    try:
        normalize_number(request.phone_number, None)
    except ValueError as exc:
        return Rejected(raw=request.phone_number, source=request.source, reason=str(exc), target=request.target)
    return dataclasses.replace(request, checked=True)


def _row_target(fields: Mapping[str, Any], default: Target | None) -> Target:
    instance_id, target_arn = fields.get("instance_id") or None, fields.get("target_arn") or None
    if instance_id and target_arn:
        raise ValueError("a row may name instance_id or target_arn, not both")
    if instance_id:
        return Target(instance_id=str(instance_id))
    if target_arn:
        return Target(target_arn=str(target_arn))
    if default is None:
        raise ValueError("no target: give --instance-id or --target-arn for the run, "
                         "or an instance_id or target_arn column in the row")
    return default


def _description(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError("description must be text")
    if len(value) > _MAX_DESCRIPTION:
        raise ValueError(f"description has {len(value)} characters; Connect allows {_MAX_DESCRIPTION}")
    return value


def _tags(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        value = _parse_tag_text(value)
    if not isinstance(value, dict):
        raise ValueError("tags must be a JSON object or key=value pairs separated by ';'")
    if len(value) > _MAX_TAGS:
        raise ValueError(f"{len(value)} tags; Connect allows {_MAX_TAGS}")
    tags: dict[str, str] = {}
    for key, tag_value in value.items():
        key = str(key)
        if key.lower().startswith("aws:"):
            raise ValueError(f"tag key {key!r}: keys starting with 'aws:' are reserved by AWS")
        if not valid_tag_key(key):
            raise ValueError(f"tag key {key[:40]!r}: 1-128 letters, digits, spaces or _.:/=+-@")
        if isinstance(tag_value, bool) or not isinstance(tag_value, str | int | float | type(None)):
            raise ValueError(f"tag {key!r}: the value must be text, not {type(tag_value).__name__}")
        text = "" if tag_value is None else str(tag_value)
        if len(text) > 256:
            raise ValueError(f"tag {key!r}: value longer than 256 characters")
        tags[key] = text
    return tags


def _parse_tag_text(text: str) -> Any:
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError("tags look like JSON but do not parse") from None
        except RecursionError:
            raise ValueError("tags JSON nested too deeply") from None
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"tag {item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return pairs
