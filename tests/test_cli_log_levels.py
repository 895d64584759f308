"""The command line's log levels: ``-v`` INFO, ``-vv`` DEBUG, ``-q`` / ``--quiet`` errors only.

``kl-retrievers`` had ``-v`` / ``--verbose`` only. ``-v`` counts now (before or after the subcommand, the counts
add up: ``-v search ... -v`` is ``-vv``), and ``-q`` / ``--quiet`` keeps the log lines at ERROR: no warnings,
the Python warnings that the command line logs (``WARNING py.warnings: ...``) included, nor a logger's lines
that a level of its own lets through (``train``'s INFO lines). Errors are still one line on stderr.
``evaluate`` and ``train`` keep ``--quiet`` as the deprecated old name of their ``--no-progress``
(tests/test_evaluate_no_progress_flag.py, tests/test_train_no_progress_flag.py); ``-q`` before them is the log level.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any

import pytest

from conftest import bare_root_logger
from kl_retrievers import cli
from kl_retrievers.cli import _cli_logging, build_parser, main

SEARCH = ["search", "store", "query"]


@pytest.mark.parametrize(
    ("argv", "verbose", "errors_only"),
    [
        (SEARCH, 0, False),
        (["-v", *SEARCH], 1, False),
        (["-vv", *SEARCH], 2, False),
        ([*SEARCH, "-vv"], 2, False),
        (["-v", *SEARCH, "-v"], 2, False),
        (["--verbose", "--verbose", *SEARCH], 2, False),
        (["-q", *SEARCH], 0, True),
        ([*SEARCH, "--quiet"], 0, True),
        (["encode", "hi", "--out", "x.safetensors", "-q"], 0, True),
    ],
)
def test_the_flags_before_and_after_the_subcommand(argv: list[str], verbose: int, errors_only: bool) -> None:
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.errors_only) == (verbose, errors_only)
    assert not hasattr(args, "verbose_after_command")


def test_evaluate_keeps_its_old_quiet() -> None:
    own = build_parser().parse_args(["evaluate", "data", "--quiet"])  # no progress bars (deprecated), the log level
    assert (own.deprecated_quiet, own.errors_only) == (True, False)
    logs = build_parser().parse_args(["-q", "evaluate", "data"])
    assert (logs.deprecated_quiet, logs.errors_only) == (False, True)


def test_quiet_and_verbose_contradict_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["-q", *SEARCH, "-v"])
    assert info.value.code == 2
    assert "--quiet (-q) and --verbose (-v) contradict each other" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("verbose", "quiet", "level"),
    [(0, False, logging.WARNING), (1, False, logging.INFO), (2, False, logging.DEBUG), (0, True, logging.ERROR)],
)
def test_the_root_level_of_a_command(verbose: int, quiet: bool, level: int) -> None:
    with bare_root_logger() as root:
        with _cli_logging(verbose, quiet=quiet):
            assert root.level == level
        assert root.handlers == [] and root.level == logging.WARNING


def test_commands_running_at_once_log_at_the_lowest_of_their_levels() -> None:
    with bare_root_logger() as root, _cli_logging(0, quiet=True):
        assert root.level == logging.ERROR
        with _cli_logging(2):
            assert root.level == logging.DEBUG and root.handlers[0].level == logging.NOTSET
        assert root.level == logging.ERROR and root.handlers[0].level == logging.ERROR


def _logging_command(args: argparse.Namespace) -> int:
    log = logging.getLogger("kl_retrievers.log_levels_test")
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    warnings.warn("a Python warning", UserWarning, stacklevel=1)
    own = logging.getLogger("kl_retrievers.log_levels_test.own")
    own.setLevel(logging.INFO)  # as train raises kl_retrievers.training's INFO lines
    try:
        own.info("a line of a logger with a level of its own")
    finally:
        own.setLevel(logging.NOTSET)
    log.error("an error line")
    return 0


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        ([], ["a warning line", "a Python warning", "a level of its own", "an error line"], ["an info line"]),
        (["-v"], ["an info line", "a warning line"], ["a debug line"]),
        (["-vv"], ["a debug line", "an info line", "a warning line", "an error line"], []),
        (["-q"], ["an error line"], ["a warning line", "a Python warning", "a level of its own", "an info line"]),
    ],
)
def test_what_each_level_shows(
    flags: list[str],
    shown: list[str],
    hidden: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "_run_search", _logging_command)
    with bare_root_logger(), warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main([*flags, *SEARCH]) == 0
    err = capsys.readouterr().err
    for line in shown:
        assert line in err, (flags, err)
    for line in hidden:
        assert line not in err, (flags, err)


def test_quiet_keeps_the_error_line_and_verbose_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_run_search", broken)
    with bare_root_logger():
        assert main(["-q", *SEARCH]) == 1
        quiet = capsys.readouterr().err
        assert main(["-v", *SEARCH]) == 1
        verbose = capsys.readouterr().err
    assert "internal error RuntimeError: boom" in quiet and "Traceback" not in quiet
    assert "internal error RuntimeError: boom" in verbose and "Traceback" in verbose


def test_the_help_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--quiet, -q" in out and "-vv" in out


@pytest.mark.parametrize(
    ("argv", "bars"),
    [
        (["evaluate", "data", "-q"], "evaluate --no-progress (formerly --quiet) hides its progress bars"),
        (
            ["train", "--data", "d.jsonl", "--out", "o", "-q"],
            "train --no-progress (formerly --quiet) hides its progress bars",
        ),
    ],
    ids=["evaluate", "train"],
)
def test_q_after_evaluate_or_train_says_where_it_goes(
    argv: list[str], bars: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``evaluate`` and ``train`` have a deprecated ``--quiet`` and no ``-q``: the error says where ``-q`` goes."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: -q" in err
    assert f"-q/--quiet for logs goes before the subcommand: kl-retrievers -q {argv[0]} ..." in err
    assert bars in err


def test_other_unrecognized_arguments_get_no_quiet_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "data", "--no-such-flag"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no-such-flag" in err and "goes before the subcommand" not in err


@pytest.mark.parametrize(
    ("verbose", "quiet", "level"),
    [(0, False, logging.INFO), (0, True, logging.WARNING), (1, True, logging.INFO), (2, False, logging.DEBUG)],
)
def test_the_standalone_training_cli_root_level(
    verbose: int, quiet: bool, level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m kl_retrievers.training.cli`` lists the shared ``-vv: DEBUG lines too``, and ``-vv`` is DEBUG."""
    from kl_retrievers.training import cli as training_cli

    levels: list[int] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: levels.append(kwargs["level"]))
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    training_cli._setup_logging(quiet=quiet, verbose=verbose)
    assert levels == [level]
