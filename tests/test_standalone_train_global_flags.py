"""``python -m kl_retrievers.training.cli`` takes the global flags ``kl-retrievers`` takes for ``train``.

Its ``train --help`` lacked ``--verbose, -v``, though its ``--quiet`` help says "a -v before train still shows
every INFO line", and its parser refused ``-v`` before or after ``train``. Both parsers now add the flags with
the same code (:func:`kl_retrievers.cli_common.add_global_arguments`, ``add_verbose_to_commands``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

import pytest

from kl_retrievers.cli import build_parser
from kl_retrievers.training import cli as training_cli


def test_the_standalone_train_help_is_kl_retrievers_train_help() -> None:
    env = {**os.environ, "COLUMNS": "100"}
    standalone = subprocess.run(
        [sys.executable, "-m", "kl_retrievers.training.cli", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "--verbose, -v" in standalone, standalone
    assert "-v before train" in standalone  # the --quiet help that names it
    main_help = subprocess.run(
        [sys.executable, "-m", "kl_retrievers.cli", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert standalone == main_help


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["-v", "train"], True),
        (["--verbose", "train"], True),
        (["train", "-v"], True),
        (["train"], False),
    ],
)
def test_the_standalone_parser_accepts_verbose_as_kl_retrievers_does(
    argv: list[str], verbose: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = [*argv, "--data", "d.jsonl", "--out", "o"]
    parsed: list[argparse.Namespace] = []

    def run_train(args: argparse.Namespace) -> int:  # no training: only what main parsed
        parsed.append(args)
        return 0

    monkeypatch.setattr(training_cli, "run_train", run_train)
    assert training_cli.main(full) == 0
    assert parsed[0].verbose == verbose  # a count: 1 for -v
    assert build_parser().parse_args(full).verbose == verbose


def test_verbose_keeps_info_lines_under_quiet_when_run_as_a_program(monkeypatch: pytest.MonkeyPatch) -> None:
    levels: list[int] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: levels.append(kwargs["level"]))
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    training_cli._setup_logging(quiet=True, verbose=True)
    training_cli._setup_logging(quiet=True)
    training_cli._setup_logging(quiet=False)
    assert levels == [logging.INFO, logging.WARNING, logging.INFO]
