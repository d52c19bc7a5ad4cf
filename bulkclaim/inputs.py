"""Streaming readers for number lists (CSV, plain text, JSON Lines), with E.164 normalization.

Files are streamed, never loaded whole, so memory stays flat in the input size. Each row becomes a
:class:`ClaimRequest`, or a :class:`Rejected` naming ``file:line`` (the line where the row starts) and
the reason; a row that breaks one of Connect's own limits is rejected here and never sent. Problems
with a whole file (missing, a directory, no phone column, unknown format, a CSV quote that never
closes) raise :class:`InputFileError`.

CSV follows RFC 4180 as spreadsheets write it: a quoted cell may span lines (a description with line
breaks), header names are matched regardless of case, spaces, hyphens and underscores. How files are
read into rows is ``input_rows``; this module says what the rows mean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import phonenumbers

from bulkclaim.contact_flows import FlowNames, flow_id, is_flow_name
from bulkclaim.input_rows import InputFileError, csv_records, csv_rows, jsonl_rows, txt_rows
from bulkclaim.model import ClaimRequest, Rejected, Target, valid_tag_key

__all__ = [
    "FORMATS", "InputFileError", "check", "check_file", "detect_format", "file_rows", "fingerprint",
    "flow_names_used", "normalize_number", "read_inputs",
]

FORMATS = ("csv", "txt", "jsonl")
_EXTENSIONS = {".csv": "csv", ".txt": "txt", ".lst": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_MAX_DESCRIPTION = 500
_MAX_TAGS = 50
_NUMBER_CHARS = re.compile(r"^[0-9+\s\-.()/]+$")
_POSSIBILITY = {
    phonenumbers.ValidationResult.TOO_LONG: " (too long)",
    phonenumbers.ValidationResult.TOO_SHORT: " (too short)",
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: " (unknown country code)",
}
_CANONICAL = re.compile(r"\+[1-9][0-9]{6,14}")
# Bumped whenever the same bytes may read differently (CSV cells spanning lines came in with 2): a
# plan recorded by an older reader is then not taken over as it is (see ``fingerprint``).
_READER_VERSION = 2


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
                default_region: str | None = None, flow_names: FlowNames | None = None) -> str:
    """A digest of everything that decides how these inputs are planned: the files' names as given
    (they appear in report rows) and contents, the target, the format, the default region and the
    flows names resolved to (a flow renamed since is planned again).
    Equal fingerprints plan identically, which lets a re-run take over an earlier plan as it is."""
    names = {instance: dict(flows) for instance, flows in (flow_names or {}).items()}
    digest = hashlib.sha256(json.dumps([target.key if target else None, fmt, default_region, _READER_VERSION,
                                        *([names] if names else [])], sort_keys=True).encode())
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
            for _ in csv_records(path):
                pass
        except OSError as exc:
            raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None


def read_inputs(paths: Iterable[Path], *, target: Target | None, fmt: str | None = None,
                default_region: str | None = None, flow_names: FlowNames | None = None,
                ) -> Iterator[ClaimRequest | Rejected]:
    """Every row of every file, in order. Whole-file problems raise before that file's first row, but
    for a CSV quote that never closes, found where the file ends: ``check_file`` finds it up front.
    ``flow_names`` (``--resolve-flow-names``): contact flows named by name, by instance."""
    for path in paths:
        yield from read_file(path, target=target, fmt=fmt, default_region=default_region, flow_names=flow_names)


def read_file(path: Path, *, target: Target | None, fmt: str | None = None,
              default_region: str | None = None, flow_names: FlowNames | None = None,
              ) -> Iterator[ClaimRequest | Rejected]:
    for source, fields in file_rows(path, fmt):
        if isinstance(fields, Rejected):
            yield dataclasses.replace(fields, target=target)
        else:
            yield _to_request(fields, source, target, default_region, flow_names)


def file_rows(path: Path, fmt: str | None) -> Iterator[tuple[str, Mapping[str, Any] | Rejected]]:
    """Each row of ``path`` as its cells by column, or as a Rejected row (without a target) it could not
    read: what a row *means* is the caller's (claims here, moves in ``move``)."""
    kind = detect_format(path, fmt)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a file")
    reader = {"csv": csv_rows, "txt": txt_rows, "jsonl": jsonl_rows}[kind]
    try:
        for line, fields in reader(path):
            source = f"{path}:{line.number}"
            if line.problem:
                yield source, Rejected(raw=line.text[:200], source=source, reason=line.problem)
                continue
            yield source, fields
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None


def flow_names_used(paths: Iterable[Path], *, target: Target | None, fmt: str | None = None,
                    ) -> dict[str, dict[str, str]]:
    """The contact flows rows name by name (``--resolve-flow-names``): instance id -> name -> the first
    ``file:line`` naming it. Rows that are invalid otherwise are left to the run to report."""
    used: dict[str, dict[str, str]] = {}
    for path in paths:
        for source, fields in file_rows(path, fmt):
            if isinstance(fields, Rejected) or fields.get("contact_flow") in (None, ""):
                continue
            name = str(fields["contact_flow"]).strip()
            try:
                instance = _row_target(fields, target).instance
            except ValueError:
                continue
            if instance is not None and is_flow_name(name):
                used.setdefault(instance, {}).setdefault(name, source)
    return used


def _to_request(fields: Mapping[str, Any], source: str, default_target: Target | None,
                default_region: str | None, flow_names: FlowNames | None = None) -> ClaimRequest | Rejected:
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
        flow = fields.get("contact_flow")
        contact_flow = None if flow in (None, "") else flow_id(flow, target, flow_names)
    except ValueError as exc:
        return Rejected(raw=raw, source=source, reason=str(exc), target=target)
    return ClaimRequest(number, target, description, MappingProxyType(tags), source, checked=not canonical,
                        contact_flow=contact_flow)


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
