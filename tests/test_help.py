"""``--help`` as a user reads it, through the real entry point: every option explained, options in
sections, the required target visible, nothing pointing at files users do not have."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from bulkclaim.cli import cli

COMMANDS = sorted(cli.commands)


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "bulkclaim", *args, "--help"], capture_output=True, text=True,
                          env=env, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_top_level_summaries_are_whole_at_80_columns() -> None:
    listed = _help().split("Commands:", 1)[1]
    assert "..." not in listed
    assert sorted(line.split()[0] for line in listed.strip().splitlines()) == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_says_what_it_does(name: str) -> None:
    command = cli.commands[name]
    silent = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert silent == []
    shown = _help(name)
    assert "DESIGN" not in shown and "§" not in shown


def test_claim_help_groups_options_and_shows_the_required_target() -> None:
    shown = _help("claim")
    sections = [line for line in shown.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections == ["Input:", "Target (give exactly one):", "Journal and report:", "Claiming:", "Rate:",
                        "Quotas:", "AWS:", "Output:", "Metrics:", "Options:"]
    target = shown.split("Target (give exactly one):", 1)[1].split("Journal and report:", 1)[0]
    assert "--instance-id" in target and "--target-arn" in target
