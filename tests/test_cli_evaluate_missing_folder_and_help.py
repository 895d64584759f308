"""``kl-retrievers evaluate`` on a folder that is not there says how to fetch one; its help line reads like the rest."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from kl_retrievers.cli import build_parser, main


def test_a_missing_dataset_folder_says_how_to_fetch_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "datasets" / "scifact"
    assert main(["evaluate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "dataset folder not found" in err
    command = re.search(r'python -c ("[^"]+")', err)
    assert command, err
    code = shlex.split(command[1])[0]
    assert code == (
        f"from kl_retrievers.datasets import fetch_beir; print(fetch_beir('scifact', {folder.parent.as_posix()!r}))"
    )
    assert "$KL_RETRIEVERS_DATA/scifact" in err and "docs/getting-started.md" in err


def test_an_existing_folder_with_a_missing_file_gets_no_fetch_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "corpus" in err and "fetch_beir" not in err


def test_evaluate_help_line_matches_the_other_commands() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert len(helps) >= 5, helps
    for name, text in helps.items():
        assert text and text[0].islower() and not text.endswith("."), (name, text)
