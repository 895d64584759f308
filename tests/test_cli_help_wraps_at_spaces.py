"""The command line's help wraps at spaces only, at any terminal width.

argparse wraps help text with :mod:`textwrap`, which breaks lines after a hyphen by default: at 55 or 60
columns ``evaluate --help`` read ``--no-`` / ``progress``, ``--qpp-`` / ``...`` and ``kl-`` / ``retrievers``,
which neither a search nor a copy finds. Every parser of ``kl-retrievers`` (the subcommands and their own
subcommands) and of ``python -m kl_retrievers.training.cli`` wraps at spaces only: only the line breaks change
with the width, never the words.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from kl_retrievers.cli import build_parser
from kl_retrievers.cli_common import _Parser, add_global_arguments, add_verbose_to_commands
from kl_retrievers.training.cli import add_train_command

WIDTHS = (40, 55, 60, 80, 200)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every parser under it (subcommands, and theirs), each with its ``prog``."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # an alias names the same parser
                yield from _parsers(sub)


def _standalone_training_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m kl_retrievers.training.cli`` (built as its ``main`` builds it)."""
    parser = _Parser(prog="kl-retrievers")
    add_global_arguments(parser, quiet=True)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    add_verbose_to_commands(sub, quiet=True)
    return parser


def _helps(build: object, monkeypatch: pytest.MonkeyPatch, columns: int) -> dict[str, str]:
    monkeypatch.setenv("COLUMNS", str(columns))  # argparse wraps at the terminal's width, read at format time
    return {prog: sub.format_help() for prog, sub in _parsers(build())}  # type: ignore[operator]


@pytest.mark.parametrize("build", [build_parser, _standalone_training_parser], ids=["kl-retrievers", "training.cli"])
@pytest.mark.parametrize("columns", WIDTHS)
def test_the_help_wraps_at_spaces_only(build: object, columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    unwrapped = _helps(build, monkeypatch, 10_000)
    wrapped = _helps(build, monkeypatch, columns)
    assert wrapped.keys() == unwrapped.keys() and len(wrapped) > 1
    for prog, text in wrapped.items():
        assert text.split() == unwrapped[prog].split(), f"{prog} --help at {columns} columns"


@pytest.mark.parametrize("columns", WIDTHS)
def test_no_help_line_ends_in_a_split_word(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The symptom itself: no line of any help ends with a word's hyphen (``--no-``, ``kl-``, ``--model-``)."""
    for prog, text in _helps(build_parser, monkeypatch, columns).items():
        split = [line for line in text.splitlines() if line.rstrip()[-2:-1].isalpha() and line.rstrip()[-1] == "-"]
        assert split == [], f"{prog} --help at {columns} columns"
