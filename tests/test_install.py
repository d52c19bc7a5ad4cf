"""bulkclaim installed the way users install it: a wheel, no extras, a fresh venv, another directory.

The rest of the suite runs from the repository with the dev extras installed, which once hid a CLI
that crashed on import without them (a type-stub package imported at run time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("botocore", "aiobotocore", "aiohttp", "structlog", "rich", "prometheus_client")


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("AWS_", "BULKCLAIM_", "PYTHON", "VIRTUAL_ENV", "PIP_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, "NO_COLOR": "1", **extra}


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the bulkclaim wheel and its runtime dependencies (pinned by constraints.txt)."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    # Built from a copy without the repository's build/ directory: setuptools never cleans it, so a
    # module since moved or deleted would still be in a wheel built in place (users build from a clean tree).
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "results"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels),
                  str(source)], root)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("bulkclaim-*.whl"))
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    pip = _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "-c", str(REPO / "constraints.txt"), str(wheel)], root)
    assert pip.returncode == 0, pip.stderr
    return root / "venv" / "bin"


def test_the_wheel_installs_no_dev_packages(installed: Path) -> None:
    listed = _run([str(installed / "python"), "-m", "pip", "list", "--format=freeze"], installed).stdout.lower()
    assert "bulkclaim==" in listed
    for dev_only in ("types-aiobotocore", "mypy", "pytest", "hypothesis", "psycopg", "prometheus"):
        assert dev_only not in listed


@pytest.mark.parametrize("args", [["--help"], ["sandbox", "--help"], ["claim", "--help"], ["--version"]])
def test_help_works_from_a_plain_install_outside_the_repository(installed: Path, tmp_path: Path,
                                                                 args: list[str]) -> None:
    result = _run([str(installed / "bulkclaim"), *args], tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip()


def test_a_postgresql_journal_without_the_extra_names_it(installed: Path, tmp_path: Path) -> None:
    result = _run([str(installed / "bulkclaim"), "status", "--journal", "postgresql://me@127.0.0.1:1/jobs"], tmp_path,
                  timeout=60)
    assert result.returncode == 2, result.stderr
    assert "pip install 'bulkclaim[postgres]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", [["--metrics-port", "0"], ["--metrics-textfile", "bulkclaim.prom"]])
def test_metrics_without_the_extra_exit_2_naming_it_before_anything_is_sent(installed: Path, tmp_path: Path,
                                                                            flag: list[str]) -> None:
    (tmp_path / "numbers.txt").write_text("+12065550100\n")
    result = _run([str(installed / "bulkclaim"), "claim", "numbers.txt", "--instance-id", "i-1", *flag], tmp_path,
                  timeout=60)
    assert result.returncode == 2, result.stderr
    assert "pip install 'bulkclaim[metrics]'" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numbers.txt"]  # no journal, no textfile


def test_demo_works_from_a_plain_install_in_any_directory(installed: Path, tmp_path: Path) -> None:
    result = _run([str(installed / "bulkclaim"), "demo"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "20/20 numbers claimed" in result.stdout
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the user's directory


@pytest.mark.parametrize("args", [["--help"], ["claim", "--help"], ["sandbox", "--help"], ["claim"],
                                  ["claim", "x.csv"], ["report"], ["status", "--bogus"], ["search", "--help"]])
def test_help_and_usage_errors_do_not_load_the_aws_sdk(tmp_path: Path, args: list[str]) -> None:
    result = _run([sys.executable, "-X", "importtime", "-m", "bulkclaim", *args], tmp_path, timeout=60)
    assert result.returncode in (0, 2), result.stderr
    loaded = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
              if line.startswith("import time:")}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
