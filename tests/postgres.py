"""A throwaway PostgreSQL server for the tests: the ``postgres`` session fixture.

``initdb`` into a temporary directory and ``pg_ctl start`` listening on a unix socket there only (no
TCP port: nothing to collide with, nothing reachable from outside), as the ``postgres`` OS user when
the tests run as root (initdb refuses root). Stopped (``-m immediate``) and removed at the end of
the session, whatever happened. The server binaries are found with ``pg_config --bindir``, in
/usr/lib/postgresql/*/bin, or on the PATH; without them the PostgreSQL tests are skipped, unless
``BULKCLAIM_REQUIRE_POSTGRES`` is set (``.ci/run`` sets it after installing them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PgServer", "ServerFailed", "postgres", "server_binaries", "throwaway_server"]


@dataclass(frozen=True)
class PgServer:
    socket_dir: Path
    #: how to stop and start it again (``pg_ctl`` and its arguments), for the tests of a database away
    control: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``: every session cut, as a crash or a failover)."""
        assert self.control is not None
        subprocess.run([*self.control[0], "stop", "-m", "immediate"], check=True, capture_output=True, timeout=60,
                       cwd=self.socket_dir)

    def start(self) -> None:
        assert self.control is not None
        subprocess.run([*self.control[0], "start", "-w", "-t", "60", *self.control[1]], check=True,
                       capture_output=True, timeout=90, cwd=self.socket_dir)

    def url(self, schema: str | None = None, database: str = "postgres") -> str:
        """A journal URL on this server; a fresh ``schema`` is a fresh, empty journal."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}" + (f"&schema={schema}" if schema else "")

    def fresh_url(self) -> str:
        return self.url(schema=f"t{uuid.uuid4().hex[:16]}")


def server_binaries() -> Path | None:
    """The directory of initdb and pg_ctl, if this machine has them."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(found.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(Path(pg_ctl).resolve().parent)
    return next((c for c in candidates if (c / "pg_ctl").exists() and (c / "initdb").exists()), None)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    bindir = server_binaries()
    if bindir is None:
        message = "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
        if os.environ.get("BULKCLAIM_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        with throwaway_server(bindir) as server:
            yield server
    except ServerFailed as exc:
        pytest.fail(str(exc))


class ServerFailed(Exception):
    """The throwaway server could not be started (the message has its log)."""


@contextmanager
def throwaway_server(bindir: Path) -> Iterator[PgServer]:
    """A PostgreSQL server in a temporary directory, on a unix socket there (see the module's doc);
    also what the benchmarks use."""
    root = Path(tempfile.mkdtemp(prefix="bcpg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, log = root / "data", root / "server.log"

    def run(*command: str | Path) -> None:
        subprocess.run([*as_user, *map(str, command)], cwd=root, check=True, capture_output=True, timeout=120)

    options = (f"-c listen_addresses='' -c unix_socket_directories={root} -c max_connections=200 "
               "-c fsync=off -c full_page_writes=off")  # a throwaway server: no crash of *it* is tested
    try:
        try:
            run(bindir / "initdb", "-D", data, "--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
                "--no-sync")
            run(bindir / "pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", log, "-o", options)
        except subprocess.CalledProcessError as exc:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise ServerFailed(f"could not start PostgreSQL: {exc}\n{exc.stderr!r}\n{server_log}") from None
        pg_ctl = (*as_user, str(bindir / "pg_ctl"), "-D", str(data))
        yield PgServer(root, (pg_ctl, ("-l", str(log), "-o", options)))
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(data)],
                           cwd=root, capture_output=True, check=False, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
