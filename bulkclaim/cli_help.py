"""``--help`` as users read it: options in sections (input, target, journal and report, rate, ...)
instead of one long list, the sections in the same order for every command."""

from __future__ import annotations

from typing import Any

import click

__all__ = ["SECTIONS", "GroupedCommand", "GroupedOption"]

#: Section titles in the order they are shown; an option names its section with ``group=``.
SECTIONS = (
    "Input",
    "Target (give exactly one)",
    "Numbers to find",
    "Journal and report",
    "Claiming",
    "Rate",
    "Quotas",
    "AWS",
    "Output",
    "Metrics",
    "Options",
)


class GroupedOption(click.Option):
    """A click option that knows which help section it belongs to."""

    def __init__(self, *args: Any, group: str = "Options", **kwargs: Any) -> None:
        if group not in SECTIONS:
            raise ValueError(f"unknown help section {group!r}")
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A click command whose ``--help`` lists its options section by section."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "Options"), []).append(record)
        for title in SECTIONS:
            if title in sections:
                with formatter.section(title):
                    formatter.write_dl(sections[title])
