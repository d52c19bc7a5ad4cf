"""The input readers: CSV, plain text and JSON Lines, E.164 normalization and Connect's own limits."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkclaim.inputs import (
    FORMATS,
    InputFileError,
    check_file,
    detect_format,
    normalize_number,
    read_file,
    read_inputs,
)
from bulkclaim.model import ClaimRequest, Rejected, Target

TARGET = Target(instance_id="11111111-2222-3333-4444-555555555555")
OTHER_INSTANCE = "99999999-8888-7777-6666-555555555555"
TDG_ARN = "arn:aws:connect:us-east-1:123456789012:traffic-distribution-group/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
BOM = b"\xef\xbb\xbf"


def number(i: int) -> str:
    """A valid US number, +12062000000 and up."""
    return f"+1206200{i:04d}"


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def rows(path: Path, *, target: Target | None = TARGET, fmt: str | None = None,
         default_region: str | None = None) -> list[ClaimRequest | Rejected]:
    return list(read_file(path, target=target, fmt=fmt, default_region=default_region))


def request(row: ClaimRequest | Rejected) -> ClaimRequest:
    assert isinstance(row, ClaimRequest), row
    return row


def rejected(row: ClaimRequest | Rejected) -> Rejected:
    assert isinstance(row, Rejected), row
    return row


def jsonl(path: Path, *values: Any) -> Path:
    return write(path, "".join(json.dumps(v) + "\n" for v in values))


# -- detect_format ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("numbers.csv", "csv"), ("NUMBERS.CSV", "csv"), ("numbers.txt", "txt"), ("numbers.lst", "txt"),
    ("numbers.jsonl", "jsonl"), ("numbers.ndjson", "jsonl"), ("dir.d/numbers.Jsonl", "jsonl"),
])
def test_detect_format_from_extension(name: str, expected: str) -> None:
    assert detect_format(Path(name)) == expected


@pytest.mark.parametrize("name", ["numbers", "numbers.xlsx", "numbers.json", "numbers.csv.gz"])
def test_detect_format_unknown_extension_is_an_input_file_error(name: str) -> None:
    with pytest.raises(InputFileError, match="cannot tell the format"):
        detect_format(Path(name))


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_format_explicit_overrides_extension(fmt: str) -> None:
    assert detect_format(Path("numbers.xlsx"), fmt) == fmt
    assert detect_format(Path("numbers.csv"), fmt) == fmt


def test_detect_format_rejects_unknown_explicit_format() -> None:
    with pytest.raises(InputFileError, match="unknown format 'xml'"):
        detect_format(Path("numbers.csv"), "xml")


# -- normalize_number ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "region", "expected"), [
    ("+1 (206) 200-0000", None, "+12062000000"),
    ("+12062000099", None, "+12062000099"),
    ("  +1.206.200.0001  ", None, "+12062000001"),
    ("+1 206/200-0002", None, "+12062000002"),
    ("+1 206 200 0003", "GB", "+12062000003"),  # an international number ignores the default region
    ("(206) 200-0000", "US", "+12062000000"),
    ("206-200-0004", "US", "+12062000004"),
    ("+44 20 7946 0000", "US", "+442079460000"),
])
def test_normalize_number_gives_e164(raw: str, region: str | None, expected: str) -> None:
    assert normalize_number(raw, region) == expected


@pytest.mark.parametrize(("raw", "region", "reason"), [
    ("", None, "empty phone number"),
    ("   ", "US", "empty phone number"),
    ("(206) 200-0000", None, "default region"),
    ("206 200 0000", None, "default region"),
    ("+1 206 CALL NOW", None, "characters other than digits"),
    ("+1 206 200 000O", None, "characters other than digits"),  # letter O, not zero
    ("+12062000000;ext=1", None, "characters other than digits"),
    ("+1 206", None, "not a valid number"),  # too short
    ("+1206200000000000", None, "not a valid number"),  # too long
    ("+1 206 200 00001", None, "not a valid number"),
    ("+19999999999", None, "not a valid number"),  # right length, no such area code
    ("+0", None, "not a phone number"),
])
def test_normalize_number_rejects_with_a_reason(raw: str, region: str | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_number(raw, region)


# -- plain text -----------------------------------------------------------------------------------------


def test_txt_skips_comments_and_blank_lines_and_counts_every_line(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt",
                 "# numbers for the Seattle office\n"  # 1
                 f"{number(0)}\n"  # 2
                 "\n"  # 3
                 "+1 (206) 200-0001   # inline comment, with a # inside\n"  # 4
                 "    # an indented comment\n"  # 5
                 "   \t  \n"  # 6
                 f"{number(2)}#no space before the comment\n"  # 7
                 f"  {number(3)}  \n")  # 8 (and no final newline is fine too)
    got = [request(r) for r in rows(path)]
    assert [r.phone_number for r in got] == [number(0), number(1), number(2), number(3)]
    assert [r.source for r in got] == [f"{path}:2", f"{path}:4", f"{path}:7", f"{path}:8"]
    assert all(r.target == TARGET and r.description is None and dict(r.tags) == {} for r in got)


def test_txt_without_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", f"{number(0)}\n{number(1)}")
    assert [request(r).phone_number for r in rows(path)] == [number(0), number(1)]


def test_txt_invalid_numbers_are_rejected_in_place(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", f"{number(0)}\nnot a number\n{number(1)}\n+1 206\n")
    got = rows(path)
    assert [type(r) for r in got] == [ClaimRequest, Rejected, ClaimRequest, Rejected]
    bad = rejected(got[1])
    assert bad.raw == "not a number"
    assert bad.source == f"{path}:2"
    assert "characters other than digits" in bad.reason
    assert bad.target == TARGET
    assert rejected(got[3]).source == f"{path}:4"


def test_txt_national_numbers_need_a_default_region(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", "(206) 200-0000\n+1 (206) 200-0001\n")
    without = rows(path)
    assert "default region" in rejected(without[0]).reason
    assert request(without[1]).phone_number == number(1)
    with_region = rows(path, default_region="US")
    assert [request(r).phone_number for r in with_region] == [number(0), number(1)]


def test_empty_txt_file_has_no_rows(tmp_path: Path) -> None:
    assert rows(write(tmp_path / "numbers.txt", b"")) == []
    assert rows(write(tmp_path / "comments.txt", "# nothing here\n\n")) == []


def test_no_target_at_all_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", f"{number(0)}\n")
    (row,) = rows(path, target=None)
    assert "no target" in rejected(row).reason
    assert rejected(row).target is None


# -- JSON Lines ----------------------------------------------------------------------------------------


def test_jsonl_objects_and_bare_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.jsonl",
                 json.dumps({"phone_number": number(0), "description": "Main line",
                             "tags": {"team": "sales", "cost": 12}}) + "\n"  # 1
                 + json.dumps(number(1)) + "\n"  # 2
                 + "\n"  # 3
                 + "   \n"  # 4
                 + json.dumps({"phone_number": "+1 (206) 200-0002", "tags": "env=prod;team=ops"}) + "\n"  # 5
                 + json.dumps({"phone_number": number(3), "instance_id": OTHER_INSTANCE}) + "\n"  # 6
                 + json.dumps({"phone_number": number(4), "target_arn": TDG_ARN, "extra": [1, 2]}) + "\n")  # 7
    got = [request(r) for r in rows(path)]
    assert [r.phone_number for r in got] == [number(i) for i in range(5)]
    assert [r.source for r in got] == [f"{path}:{n}" for n in (1, 2, 5, 6, 7)]
    assert got[0].description == "Main line"
    assert dict(got[0].tags) == {"team": "sales", "cost": "12"}
    assert got[1].description is None and dict(got[1].tags) == {}
    assert dict(got[2].tags) == {"env": "prod", "team": "ops"}
    assert [r.target for r in got] == [TARGET, TARGET, TARGET, Target(instance_id=OTHER_INSTANCE),
                                       Target(target_arn=TDG_ARN)]


def test_jsonl_broken_lines_are_rejected_and_reading_goes_on(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.jsonl",
                 f'"{number(0)}"\n'
                 '{"phone_number": "+12062000001"\n'
                 "{'phone_number': '+12062000002'}\n"
                 f'"{number(3)}"\n')
    got = rows(path)
    assert [type(r) for r in got] == [ClaimRequest, Rejected, Rejected, ClaimRequest]
    for row, line in ((got[1], 2), (got[2], 3)):
        bad = rejected(row)
        assert bad.reason.startswith("not valid JSON")
        assert bad.source == f"{path}:{line}"
        assert bad.target == TARGET
    assert rejected(got[1]).raw == '{"phone_number": "+12062000001"'


@pytest.mark.parametrize("value", ["[\"+12062000000\"]", "12062000000", "null", "true", "1.5"])
def test_jsonl_values_other_than_object_or_string_are_rejected(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "numbers.jsonl", f"{value}\n\"{number(1)}\"\n")
    bad, good = rows(path)
    assert "must be an object or a string" in rejected(bad).reason
    assert rejected(bad).raw == value
    assert request(good).phone_number == number(1)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"description": "x"}, "empty phone number"),
    ({"phone_number": None}, "empty phone number"),
    ({"phone_number": number(0), "description": 5}, "description must be text"),
    ({"phone_number": number(0), "tags": ["a", "b"]}, "tags must be a JSON object"),
    ({"phone_number": number(0), "tags": 7}, "tags must be a JSON object"),
    ({"phone_number": number(0), "tags": "{not json"}, "tags look like JSON but do not parse"),
    ({"phone_number": number(0), "tags": "env"}, "is not key=value"),
    ({"phone_number": number(0), "tags": {"": "empty key"}}, "1-128 letters"),
    ({"phone_number": number(0), "tags": {"bad!key": "v"}}, "1-128 letters"),
    ({"phone_number": number(0), "instance_id": OTHER_INSTANCE, "target_arn": TDG_ARN}, "not both"),
])
def test_jsonl_bad_fields_are_rejected(tmp_path: Path, fields: dict[str, Any], reason: str) -> None:
    (row,) = rows(jsonl(tmp_path / "numbers.jsonl", fields))
    assert reason in rejected(row).reason


def test_jsonl_number_as_json_number_needs_a_region(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "numbers.jsonl", {"phone_number": 2062000000})
    assert "default region" in rejected(rows(path)[0]).reason
    assert request(rows(path, default_region="US")[0]).phone_number == number(0)


# -- CSV ----------------------------------------------------------------------------------------------


def test_csv_with_description_and_tags_in_both_forms(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv",
                 "phone_number,description,tags\n"  # 1
                 '+1 (206) 200-0000,Main line,"{""team"": ""sales"", ""env"": ""prod""}"\n'  # 2
                 "\n"  # 3
                 f"{number(1)},Support,team=support; env = dev ;\n"  # 4
                 f"{number(2)},,\n"  # 5
                 f"{number(3)}\n"  # 6: fewer cells than the header is fine
                 f' {number(4)} ,"quoted, with a comma", a=b=c \n')  # 7
    got = [request(r) for r in rows(path)]
    assert [r.phone_number for r in got] == [number(i) for i in range(5)]
    assert [r.source for r in got] == [f"{path}:{n}" for n in (2, 4, 5, 6, 7)]
    assert got[0].description == "Main line"
    assert dict(got[0].tags) == {"team": "sales", "env": "prod"}
    assert got[1].description == "Support"
    assert dict(got[1].tags) == {"team": "support", "env": "dev"}
    assert got[2].description is None and dict(got[2].tags) == {}
    assert got[3].description is None and dict(got[3].tags) == {}
    assert got[4].description == "quoted, with a comma"
    assert dict(got[4].tags) == {"a": "b=c"}
    assert all(r.target == TARGET for r in got)


def test_csv_header_is_case_insensitive_and_column_order_free(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f" Description , PHONE_NUMBER \nfront desk,{number(0)}\n")
    (row,) = rows(path)
    assert request(row).phone_number == number(0)
    assert request(row).description == "front desk"
    assert request(row).source == f"{path}:2"


def test_csv_row_targets_override_the_default(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv",
                 "phone_number,instance_id,target_arn\n"
                 f"{number(0)},,\n"
                 f"{number(1)},{OTHER_INSTANCE},\n"
                 f"{number(2)},,{TDG_ARN}\n"
                 f"{number(3)},{OTHER_INSTANCE},{TDG_ARN}\n"
                 f"not-a-number,{OTHER_INSTANCE},\n")
    got = rows(path)
    assert request(got[0]).target == TARGET
    assert request(got[1]).target == Target(instance_id=OTHER_INSTANCE)
    assert request(got[2]).target == Target(target_arn=TDG_ARN)
    both = rejected(got[3])
    assert "not both" in both.reason
    assert both.raw == number(3)
    assert both.source == f"{path}:5"
    assert both.target == TARGET  # the row's own target is not trusted
    # a row that names a target and is rejected for another reason keeps its own target
    assert rejected(got[4]).target == Target(instance_id=OTHER_INSTANCE)


def test_csv_without_a_default_target_needs_one_in_each_row(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv",
                 "phone_number,instance_id,target_arn\n"
                 f"{number(0)},,\n"
                 f"{number(1)},{OTHER_INSTANCE},\n"
                 f"{number(2)},,{TDG_ARN}\n")
    got = rows(path, target=None)
    none = rejected(got[0])
    assert "no target" in none.reason
    assert none.target is None
    assert none.source == f"{path}:2"
    assert request(got[1]).target == Target(instance_id=OTHER_INSTANCE)
    assert request(got[2]).target == Target(target_arn=TDG_ARN)


def test_csv_row_with_more_cells_than_the_header_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f"phone_number,description\n{number(0)},a,b\n{number(1)},ok\n")
    bad, good = rows(path)
    assert "3 cells but the header has 2" in rejected(bad).reason
    assert request(good).description == "ok"


def test_csv_empty_file_is_an_input_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="empty file"):
        rows(write(tmp_path / "numbers.csv", b""))
    with pytest.raises(InputFileError, match="empty file"):
        rows(write(tmp_path / "blank.csv", "\n\n+12062000000\n"))
    with pytest.raises(InputFileError, match="empty file"):
        rows(write(tmp_path / "bom.csv", BOM))


@pytest.mark.parametrize("header", ["number,description", "phone,tags", "+12062000000", "description"])
def test_csv_header_without_phone_number_column_is_an_input_file_error(tmp_path: Path, header: str) -> None:
    path = write(tmp_path / "numbers.csv", f"{header}\n{number(0)}\n")
    with pytest.raises(InputFileError, match="no phone_number column"):
        rows(path)


def test_csv_header_only_has_no_rows(tmp_path: Path) -> None:
    assert rows(write(tmp_path / "numbers.csv", "phone_number,description,tags\n")) == []


# -- Connect's limits ------------------------------------------------------------------------------------


def test_description_limit_is_500_characters(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "numbers.jsonl",
                 {"phone_number": number(0), "description": "d" * 500},
                 {"phone_number": number(1), "description": "d" * 501},
                 {"phone_number": number(2), "description": "é" * 500})  # characters, not bytes
    ok, too_long, accents = rows(path)
    assert request(ok).description == "d" * 500
    assert "501 characters" in rejected(too_long).reason and "500" in rejected(too_long).reason
    assert rejected(too_long).source == f"{path}:2"
    assert request(accents).description == "é" * 500


def test_description_limit_in_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f"phone_number,description\n{number(0)},{'x' * 501}\n")
    assert "Connect allows 500" in rejected(rows(path)[0]).reason


def test_tag_count_limit_is_50(tmp_path: Path) -> None:
    fifty = {f"k{i}": str(i) for i in range(50)}
    fifty_one = {f"k{i}": str(i) for i in range(51)}
    path = jsonl(tmp_path / "numbers.jsonl", {"phone_number": number(0), "tags": fifty},
                 {"phone_number": number(1), "tags": fifty_one})
    ok, too_many = rows(path)
    assert dict(request(ok).tags) == fifty
    assert "51 tags" in rejected(too_many).reason


def test_tag_count_limit_in_csv_key_value_form(tmp_path: Path) -> None:
    tags = ";".join(f"k{i}=v" for i in range(51))
    path = write(tmp_path / "numbers.csv", f"phone_number,tags\n{number(0)},{tags}\n")
    assert "51 tags" in rejected(rows(path)[0]).reason


@pytest.mark.parametrize("key", ["aws:cost", "AWS:cost", "Aws:Team"])
def test_tag_keys_starting_with_aws_are_reserved(tmp_path: Path, key: str) -> None:
    path = jsonl(tmp_path / "numbers.jsonl", {"phone_number": number(0), "tags": {"ok": "1", key: "x"}})
    assert "reserved" in rejected(rows(path)[0]).reason


def test_tag_key_starting_with_aws_in_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f"phone_number,tags\n{number(0)},team=a;aws:createdBy=me\n")
    assert "reserved" in rejected(rows(path)[0]).reason


def test_tag_key_limit_is_128_characters(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "numbers.jsonl", {"phone_number": number(0), "tags": {"k" * 128: "v"}},
                 {"phone_number": number(1), "tags": {"k" * 129: "v"}},
                 {"phone_number": number(2), "tags": {"Straße ünïcode_.:/=+-@ 1": "v"}})
    ok, too_long, unicode = rows(path)
    assert dict(request(ok).tags) == {"k" * 128: "v"}
    assert "1-128" in rejected(too_long).reason
    assert dict(request(unicode).tags) == {"Straße ünïcode_.:/=+-@ 1": "v"}


def test_tag_value_limit_is_256_characters(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "numbers.jsonl", {"phone_number": number(0), "tags": {"k": "v" * 256}},
                 {"phone_number": number(1), "tags": {"k": "v" * 257}},
                 {"phone_number": number(2), "tags": {"k": None, "empty": ""}})
    ok, too_long, empty = rows(path)
    assert dict(request(ok).tags) == {"k": "v" * 256}
    assert "longer than 256" in rejected(too_long).reason
    assert dict(request(empty).tags) == {"k": "", "empty": ""}


@pytest.mark.parametrize("key", ["env\n", "a\tb"])
def test_tag_keys_with_control_whitespace_are_rejected(tmp_path: Path, key: str) -> None:
    path = jsonl(tmp_path / "numbers.jsonl", {"phone_number": number(0), "tags": {key: "v"}})
    assert isinstance(rows(path)[0], Rejected)


# -- encodings, line endings and bad bytes -----------------------------------------------------------------


def test_bom_and_crlf_in_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv",
                 BOM + b"phone_number,description,tags\r\n+12062000000,Main,a=1\r\n\r\n+12062000001,Other,\r\n")
    first, second = (request(r) for r in rows(path))
    assert (first.phone_number, first.description, dict(first.tags)) == (number(0), "Main", {"a": "1"})
    assert (second.phone_number, second.description, second.source) == (number(1), "Other", f"{path}:4")


def test_bom_and_crlf_in_txt(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", BOM + b"+12062000000\r\n# comment\r\n+12062000001 # x\r\n")
    got = [request(r) for r in rows(path)]
    assert [(r.phone_number, r.source) for r in got] == [(number(0), f"{path}:1"), (number(1), f"{path}:3")]


def test_bom_and_crlf_in_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.jsonl",
                 BOM + b'{"phone_number": "+12062000000", "description": "d"}\r\n"+12062000001"\r\n')
    got = [request(r) for r in rows(path)]
    assert [r.phone_number for r in got] == [number(0), number(1)]
    assert got[0].description == "d"


def test_bom_only_counts_at_the_start_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", b"+12062000000\n" + BOM + b"+12062000001\n")
    good, bad = rows(path)
    assert request(good).phone_number == number(0)
    assert rejected(bad).source == f"{path}:2"


@pytest.mark.parametrize(("name", "content"), [
    ("numbers.txt", b"+12062000000\n+1206200\xff0001\n+12062000002\n"),
    ("numbers.jsonl", b'"+12062000000"\n"+1206200\xe90001"\n"+12062000002"\n'),
    ("numbers.csv", b"phone_number,description\n+12062000000,a\n+12062000001,caf\xe9\n+12062000002,c\n"),
])
def test_non_utf8_row_is_rejected_and_the_others_are_read(tmp_path: Path, name: str, content: bytes) -> None:
    path = write(tmp_path / name, content)
    got = rows(path)
    assert [type(r) for r in got] == [ClaimRequest, Rejected, ClaimRequest]
    bad = rejected(got[1])
    assert "UTF-8" in bad.reason
    assert bad.source == f"{path}:{3 if name.endswith('.csv') else 2}"
    assert bad.target == TARGET
    assert "\ufffd" in bad.raw  # shown with a replacement character, not dropped
    assert [request(got[0]).phone_number, request(got[2]).phone_number] == [number(0), number(2)]


@pytest.mark.parametrize(("name", "content", "line"), [
    ("numbers.txt", b"+12062000000\n+1206200\x000001\n+12062000002\n", 2),
    ("numbers.jsonl", b'"+12062000000"\n"+1206200\x000001"\n"+12062000002"\n', 2),
    ("numbers.csv", b"phone_number\n+12062000000\n+1206200\x000001\n+12062000002\n", 3),
])
def test_nul_bytes_reject_the_row(tmp_path: Path, name: str, content: bytes, line: int) -> None:
    path = write(tmp_path / name, content)
    got = rows(path)
    assert [type(r) for r in got] == [ClaimRequest, Rejected, ClaimRequest]
    bad = rejected(got[1])
    assert "NUL" in bad.reason
    assert bad.source == f"{path}:{line}"
    assert "\x00" not in bad.raw


def test_csv_keeps_the_original_problem_of_a_row_with_too_many_cells(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", b"phone_number,description\n+12062000000,a\x00,b,c\n")
    assert "NUL" in rejected(rows(path)[0]).reason


LONG_DESCRIPTION = "d" * 70_000


@pytest.mark.parametrize(("name", "content", "line"), [
    ("numbers.txt", f"{number(0)}\n{number(1)}{' ' * 70_000}\n{number(2)}\n", 2),
    ("numbers.jsonl", f'"{number(0)}"\n{{"phone_number": "{number(1)}", "description": "{LONG_DESCRIPTION}"}}\n'
                      f'"{number(2)}"\n', 2),
    ("numbers.csv", f"phone_number,description\n{number(0)}\n{number(1)},{LONG_DESCRIPTION}\n{number(2)}\n", 3),
])
def test_line_longer_than_64k_is_rejected_without_crashing(tmp_path: Path, name: str, content: str,
                                                            line: int) -> None:
    path = write(tmp_path / name, content)
    got = rows(path)
    assert [type(r) for r in got] == [ClaimRequest, Rejected, ClaimRequest]
    bad = rejected(got[1])
    assert "longer than 65536 bytes" in bad.reason
    assert len(bad.raw) <= 200
    assert bad.source == f"{path}:{line}"
    assert [request(got[0]).phone_number, request(got[2]).phone_number] == [number(0), number(2)]


def test_very_long_line_of_a_megabyte(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", b"+12062000000\n" + b"9" * (1 << 20) + b"\n+12062000001\n")
    good, bad, last = rows(path)
    assert request(good).phone_number == number(0)
    assert "longer than" in rejected(bad).reason
    assert request(last).phone_number == number(1)


def test_line_of_exactly_64k_is_not_too_long(tmp_path: Path) -> None:
    line = b"+12062000000".ljust(64 * 1024, b" ")
    assert len(line) == 64 * 1024
    path = write(tmp_path / "numbers.txt", line + b"\r\n")
    assert request(rows(path)[0]).phone_number == number(0)


def test_csv_quoted_cell_may_span_lines_and_rows_keep_their_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv",
                 "phone_number,description\r\n"
                 f'{number(0)},"first line of a description\r\nsecond, line ""quoted"""\r\n'  # 2-3
                 f'{number(1)},"a\n\nb"\n'  # 4-6: an empty line inside a cell is part of it
                 f"not-a-number,after\n")  # 7
    got = rows(path)
    assert request(got[0]).description == 'first line of a description\nsecond, line "quoted"'
    assert request(got[0]).source == f"{path}:2"
    assert request(got[1]).description == "a\n\nb"
    assert request(got[1]).source == f"{path}:4"
    assert rejected(got[2]).source == f"{path}:7"


@pytest.mark.parametrize(("text", "line"), [
    (f'phone_number,description\n{number(0)},ok\n{number(1)},"never closed\n{number(2)},x\n', 3),
    (f'phone_number,description\n{number(0)},ok\n{number(1)},"last line', 3),
    # the quote of line 2 is closed by the first quote of line 4, which is not followed by a separator
    (f'phone_number,description\n{number(0)},"open\n{number(1)},x\n{number(2)},"closed"\n', 2),
    (f'phone_number,description\n{number(0)},"a\nb"\n{number(1)},x,"y\nz\n', 4),
])
def test_csv_quote_that_never_closes_is_an_input_file_error_naming_its_line(tmp_path: Path, text: str,
                                                                           line: int) -> None:
    path = write(tmp_path / "numbers.csv", text)
    with pytest.raises(InputFileError, match=rf"^{re.escape(str(path))}:{line}: the quote opened on line {line} "):
        rows(path)
    with pytest.raises(InputFileError, match=rf"^{re.escape(str(path))}:{line}: "):
        check_file(path)


def test_csv_quote_open_for_more_than_the_field_limit_is_found_without_reading_on(tmp_path: Path) -> None:
    body = "".join(f"{number(i % 10_000)},row {i}\n" for i in range(20_000))
    path = write(tmp_path / "numbers.csv", f'phone_number,description\n{number(0)},"open\n{body}')
    with pytest.raises(InputFileError, match=r":2: the quote opened on line 2 does not close within"):
        check_file(path)


def test_csv_rows_of_only_separators_are_skipped_even_when_wider_than_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f"phone_number,description\n,,,\n  ,  \n{number(0)},x\n")
    (row,) = rows(path)
    assert request(row).source == f"{path}:4"


def test_csv_quote_error_on_one_line_rejects_only_that_row(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f'phone_number,description\n{number(0)},"ab"c\n{number(1)},x\n')
    bad, good = rows(path)
    assert "malformed CSV" in rejected(bad).reason and rejected(bad).source == f"{path}:2"
    assert request(good).source == f"{path}:3"


def test_csv_problem_line_inside_a_quoted_cell_rejects_the_row_at_its_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv",
                 f'phone_number,description\n{number(0)},"one\n'.encode() + b"t\xffwo\"\n"
                 + f"{number(1)},x\n".encode())
    bad, good = rows(path)
    assert rejected(bad).source == f"{path}:2"
    assert rejected(bad).reason == "line 3: not valid UTF-8 (byte 2)"
    assert request(good).source == f"{path}:4"


@pytest.mark.parametrize("name", ["Phone Number", "PHONE_NUMBER", "phone-number", "PhoneNumber", " phone  number "])
def test_csv_header_names_ignore_case_spaces_hyphens_and_underscores(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "numbers.csv",
                 f"{name},Description,TAGS,Instance ID\n{number(0)},desk,a=b,{OTHER_INSTANCE}\n")
    (row,) = rows(path)
    assert request(row).phone_number == number(0)
    assert (request(row).description, dict(request(row).tags)) == ("desk", {"a": "b"})
    assert request(row).target == Target(instance_id=OTHER_INSTANCE)


def test_csv_header_naming_a_column_twice_is_an_input_file_error(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f"phone_number,Phone Number\n{number(0)},{number(1)}\n")
    with pytest.raises(InputFileError, match="names the phone_number column twice"):
        rows(path)


@pytest.mark.parametrize("raw", ["+1\t206 200 0000", "+1 206\t200\t0000", "+1\u00a0206\u00a0200\u00a00000"])
def test_tabs_and_non_breaking_spaces_in_a_number_separate_like_spaces(raw: str) -> None:
    assert normalize_number(raw, None) == number(0)


def test_messages_name_the_flag_that_fixes_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--default-region-for-numbers"):
        normalize_number("(206) 200-0000", None)
    with pytest.raises(InputFileError, match="--format"):
        detect_format(Path("numbers.xlsx"))
    with pytest.raises(InputFileError, match="--format txt"):
        rows(write(tmp_path / "numbers.csv", f"{number(0)}\n{number(1)}\n"))


# -- whole-file errors ---------------------------------------------------------------------------------


def test_missing_file_is_an_input_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        rows(tmp_path / "missing.csv")


def test_directory_is_an_input_file_error(tmp_path: Path) -> None:
    (tmp_path / "numbers.txt").mkdir()
    with pytest.raises(InputFileError, match="is a directory"):
        rows(tmp_path / "numbers.txt")


def test_unknown_extension_is_an_input_file_error_and_explicit_format_reads_it(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.data", f"{number(0)}\n")
    with pytest.raises(InputFileError, match="cannot tell the format"):
        rows(path)
    assert request(rows(path, fmt="txt")[0]).phone_number == number(0)


def test_explicit_format_overrides_the_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.csv", f'"{number(0)}"\n{{"phone_number": "{number(1)}"}}\n')
    assert [request(r).phone_number for r in rows(path, fmt="jsonl")] == [number(0), number(1)]
    txt = write(tmp_path / "list.jsonl", f"{number(2)}\n")
    assert request(rows(txt, fmt="txt")[0]).phone_number == number(2)
    assert "not valid JSON" in rejected(rows(txt)[0]).reason


def test_unknown_explicit_format_is_an_input_file_error(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", f"{number(0)}\n")
    with pytest.raises(InputFileError, match="unknown format"):
        rows(path, fmt="xlsx")


# -- read_inputs ----------------------------------------------------------------------------------------


def test_read_inputs_reads_every_file_in_order(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "a.csv", f"phone_number\n{number(0)}\n{number(1)}\n")
    txt_path = write(tmp_path / "b.txt", f"{number(2)}\nbad\n")
    jsonl_path = jsonl(tmp_path / "c.jsonl", number(3))
    got = list(read_inputs([csv_path, txt_path, jsonl_path], target=TARGET))
    assert [r.source for r in got] == [f"{csv_path}:2", f"{csv_path}:3", f"{txt_path}:1", f"{txt_path}:2",
                                       f"{jsonl_path}:1"]
    assert [type(r) for r in got] == [ClaimRequest, ClaimRequest, ClaimRequest, Rejected, ClaimRequest]


def test_read_inputs_passes_format_and_region(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.list", "(206) 200-0000\n")
    (row,) = read_inputs([path], target=TARGET, fmt="txt", default_region="US")
    assert request(row).phone_number == number(0)


def test_read_inputs_raises_for_a_bad_file_after_the_rows_before_it(tmp_path: Path) -> None:
    good = write(tmp_path / "good.txt", f"{number(0)}\n")
    rows_iter = read_inputs([good, tmp_path / "missing.txt"], target=TARGET)
    assert request(next(rows_iter)).phone_number == number(0)
    with pytest.raises(InputFileError, match=re.escape("missing.txt: no such file")):
        next(rows_iter)


def test_read_inputs_with_no_files_is_empty() -> None:
    assert list(read_inputs([], target=TARGET)) == []


# -- streaming ------------------------------------------------------------------------------------------


def _big_file(path: Path, lines: int) -> Path:
    with path.open("w") as handle:
        handle.writelines(f"+1206200{i % 10_000:04d}\n" for i in range(lines))
    return path


def test_read_file_is_a_lazy_iterator(tmp_path: Path) -> None:
    path = _big_file(tmp_path / "numbers.txt", 200_000)
    reader = read_file(path, target=TARGET)
    assert isinstance(reader, Iterator)
    assert iter(reader) is reader
    first = [request(r) for r in itertools.islice(reader, 10)]
    assert [r.phone_number for r in first] == [number(i) for i in range(10)]
    assert [r.source for r in first] == [f"{path}:{i}" for i in range(1, 11)]
    # Cut the file short: a reader that had already loaded it would still yield all 200,000 rows.
    os.truncate(path, len(f"{number(0)}\n") * 20)
    rest = list(reader)
    assert len(rest) < 200_000 - 10
    assert request(rest[0]).source == f"{path}:11"


def test_read_file_sees_lines_appended_while_it_reads(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", f"{number(0)}\n{number(1)}\n")
    reader = read_file(path, target=TARGET)
    assert request(next(reader)).phone_number == number(0)
    with path.open("a") as handle:
        handle.write(f"{number(2)}\n")
    assert [request(r).phone_number for r in reader] == [number(1), number(2)]


def test_whole_file_errors_raise_on_first_row_not_on_call(tmp_path: Path) -> None:
    reader = read_file(tmp_path / "missing.csv", target=TARGET)
    with pytest.raises(InputFileError):
        next(reader)
