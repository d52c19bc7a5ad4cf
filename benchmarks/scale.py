"""Scale: a 1,000,000-row input (issue 5, scenario 5).

Measures, each in its own process so peak RSS is the process's own (``os.wait4``):

1. ``bulkclaim claim --dry-run``: read + normalize + validate every row against an empty journal.
2. planning: the engine's ``plan`` (read, validate, reserve every token durably), as the first run
   of a migration does before sending anything.
3. the journal is then marked fully claimed (as after a finished migration), and the real
   ``bulkclaim claim`` is run again against a sandbox: the time until it exits with nothing to do.
4. the same re-run with a changed input file (one extra row), which cannot take over the earlier
   plan and reads every row again.

    .venv/bin/python benchmarks/scale.py             # 1,000,000 rows
    .venv/bin/python benchmarks/scale.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.sandbox_throughput import sandbox_process
from bulkclaim.sandbox import TEST_CREDENTIALS, SandboxConfig

INSTANCE_ID = SandboxConfig().instance_ids[0]

_PLAN_ONLY = """
import anyio, sys, logging, structlog
from pathlib import Path
from bulkclaim.engine import Engine
from bulkclaim.inputs import read_inputs, fingerprint
from bulkclaim.journal import SqliteJournal
from bulkclaim.model import Target
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
async def main() -> None:
    path, target = Path(sys.argv[1]), Target(instance_id=sys.argv[3])
    journal = SqliteJournal.open(sys.argv[2])
    async def ignore(_: object) -> None: ...
    digest = fingerprint([path], target=target)
    engine = Engine(None, journal)  # type: ignore[arg-type]  # planning sends nothing: no client needed
    summary = await engine.plan(read_inputs([path], target=target), ignore, fingerprint=digest, emit_done=False)
    await journal.close()
    print(summary.to_send)
anyio.run(main)
"""


def run_measured(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str, str]:
    """Run ``argv``; return (seconds, peak RSS MB, exit code, stdout, stderr)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return (seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), out.read().decode(),
                err.read().decode(errors="replace"))


def write_input(path: Path, rows: int) -> None:
    # +1 206 2xx xxxx: valid US numbers (checked by the dry run, which must report 0 invalid)
    with path.open("w") as handle:
        for start in range(0, rows, 100_000):
            handle.write("".join(f"+1206{2_000_000 + i}\n" for i in range(start, min(rows, start + 100_000))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    opts = parser.parse_args()
    rows: int = opts.rows
    work = Path(tempfile.mkdtemp(prefix="bulkclaim-scale-"))
    source, journal = work / "numbers.txt", work / "scale.journal"
    write_input(source, rows)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BULKCLAIM_"))}
    cli = [sys.executable, "-m", "bulkclaim", "claim", str(source), "--instance-id", INSTANCE_ID,
           "--journal", str(journal), "--log-format", "json", "--no-progress"]
    results: list[tuple[str, float, float, str]] = []

    seconds, rss, code, out, _ = run_measured([*cli, "--dry-run"], base_env, work)
    assert code == 0 and f"would claim:       {rows}" in out, out
    results.append(("dry run: read + normalize + validate", seconds, rss, f"{rows / seconds:,.0f} rows/s"))

    seconds, rss, code, out, err = run_measured(
        [sys.executable, "-c", _PLAN_ONLY, str(source), str(journal), INSTANCE_ID], base_env, work)
    assert code == 0 and out.strip() == str(rows), err[-2000:]
    results.append(("plan: read + validate + reserve tokens (fsync'd)", seconds, rss,
                    f"{rows / seconds:,.0f} rows/s"))

    with sqlite3.connect(journal) as conn:  # as after a finished migration
        conn.execute("UPDATE numbers SET status='claimed', phone_number_id='done', attempts=1")

    with sandbox_process(10) as (endpoint, _pid):
        env = {**base_env, "AWS_ENDPOINT_URL_CONNECT": endpoint, "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS.access_key_id,
               "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS.secret_access_key}
        seconds, rss, code, out, err = run_measured(cli, env, work)
        assert code == 0 and f"claimed {rows}" in out, (out, err[-2000:])
        results.append(("resume, fully claimed, same input: to 'nothing to do'", seconds, rss,
                        _planned_at(err)))
        with source.open("a") as handle:
            handle.write(f"+1206{2_000_000 + rows}\n")  # one more row: the earlier plan cannot be taken over
        seconds, rss, code, out, err = run_measured(cli, env, work)
        # the extra number is not in this small sandbox's inventory: it fails, and the run exits 1
        assert code == 1 and f"claimed {rows}" in out, (out, err[-2000:])
        results.append(("resume, input changed (+1 row): read every row again", seconds, rss, _planned_at(err)))

    print(f"scale benchmark, {rows:,} rows — {time.strftime('%Y-%m-%d', time.gmtime())}, "
          f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: .venv/bin/python benchmarks/scale.py --rows {rows}")
    print("| step | seconds | peak RSS MB | note |")
    print("|---|---|---|---|")
    for name, seconds, rss, note in results:
        print(f"| {name} | {seconds:.1f} | {rss:.0f} | {note} |")


def _planned_at(stderr: str) -> str:
    events: list[dict[str, Any]] = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    planned = next((e for e in events if e.get("event") == "run.planned"), {})
    return f"to_send={planned.get('to_send')}, already_done={planned.get('already_done')}"


if __name__ == "__main__":
    main()
