"""``train --no-progress`` / ``--progress``, and ``train --quiet``: the deprecated old name of ``--no-progress``.

``--quiet`` (``-q``) is the command line's log level (errors only) before any subcommand; ``train``'s own
``--quiet`` meant something else (no progress bars, and none of the training's INFO lines). The bars are now
``--progress`` / ``--no-progress``, as for ``encode``, ``index`` and ``evaluate``, and the INFO lines follow the
log level (``-q`` hides them, ``-v`` shows every INFO line); the old spelling still works, with a warning that
names the replacements. ``python -m kl_retrievers.training.cli`` takes the same flags, ``-q`` included.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    QUIET_WITH_NO_PROGRESS,
    assert_progress_flags_conflict,
    bare_root_logger,
    progress_and_log_flags,
    progress_flag_conflicts,
)
from kl_retrievers.cli import build_parser, main
from kl_retrievers.training import cli as training_cli

DEPRECATED = "train --quiet is deprecated"
#: An INFO line of the training, logged where the run builds its TrainConfig (as evaluations and checkpoints are).
INFO_LINE = "an INFO line of the training"


class _Stop(Exception):
    pass


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``show_progress`` each ``train`` run gives its TrainConfig, which then logs :data:`INFO_LINE` and stops."""
    import kl_retrievers.training.trainer as trainer

    seen: list[Any] = []

    def config(**kwargs: Any) -> Any:
        seen.append(kwargs.get("show_progress"))
        logging.getLogger("kl_retrievers.training.trainer").info(INFO_LINE)
        raise _Stop()  # no training: an internal error, exit status 1

    monkeypatch.setattr(trainer, "TrainConfig", config)
    return seen


def _train(tmp_path: Path, *flags: str, before: tuple[str, ...] = ()) -> int:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query": "q", "positives": ["a"], "negatives": ["b"]}) + "\n", encoding="utf-8")
    with bare_root_logger():
        return main([*before, "train", "--data", str(rows), "--out", str(tmp_path / "m"), "--steps", "2", *flags])


@pytest.mark.parametrize(
    ("before", "flags", "expected", "info", "warned"),
    [
        ((), [], False, True, False),  # pytest's stderr is no terminal: no bars by default; INFO lines shown
        ((), ["--no-progress"], False, True, False),  # the bars only
        ((), ["--progress"], True, True, False),  # shown anyway, as encode --progress
        (("-q",), ["--no-progress"], False, False, False),  # what train --quiet did, warnings hidden too
        (("-v",), ["--no-progress"], False, True, False),
        ((), ["--quiet"], False, False, True),  # the old spelling still works, and says what replaces it
        ((), ["--quiet", "--no-progress"], False, False, True),  # a migrating user's spelling: accepted, warned
        (("-v",), ["--quiet"], False, True, True),  # -v still wins over it
        (("-q",), ["--quiet"], False, False, False),  # the warning is a log line: -q hides it
    ],
)
def test_the_progress_flags_of_train(
    before: tuple[str, ...],
    flags: list[str],
    expected: bool,
    info: bool,
    warned: bool,
    shown: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _train(tmp_path, *flags, before=before) == 1
    err = capsys.readouterr().err
    assert shown == [expected]
    assert (INFO_LINE in err) is info, err
    assert err.count(DEPRECATED) == int(warned), err  # once
    if warned:
        assert "--no-progress now does" in err and "kl-retrievers -q train --no-progress" in err


@pytest.mark.parametrize(
    ("argv", "no_progress", "deprecated", "errors_only"),
    [
        (["train", "--no-progress"], True, False, False),
        (["train", "--quiet"], False, True, False),
        (["-q", "train", "--no-progress"], True, False, True),
        (["--quiet", "train"], False, False, True),
    ],
)
def test_the_log_level_and_the_bars_are_separate_flags(
    argv: list[str], no_progress: bool, deprecated: bool, errors_only: bool
) -> None:
    assert progress_and_log_flags([*argv, "--data", "d.jsonl", "--out", "o"]) == (no_progress, deprecated, errors_only)


@pytest.mark.parametrize(("pair", "message"), progress_flag_conflicts("train"))
def test_the_progress_flags_exclude_each_other(
    pair: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_progress_flags_conflict(["train", "--data", "d.jsonl", "--out", "o"], pair, message, capsys)


@pytest.mark.parametrize("pair", QUIET_WITH_NO_PROGRESS)
def test_quiet_with_no_progress_is_accepted(pair: list[str]) -> None:
    """A migrating user adds --no-progress before dropping --quiet: both say the same, the bars hidden."""
    args = build_parser().parse_args(["train", "--data", "d.jsonl", "--out", "o", *pair])
    assert (args.no_progress, args.deprecated_quiet, args.progress) == (True, True, False)


def test_the_help_of_train_says_what_each_quiet_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping, which may break a line at a hyphen ("kl-" "retrievers")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[--progress | --no-progress] [--quiet]" in out
    assert "--no-progress hide progress bars" in out
    assert "--quiet deprecated old name of --no-progress that also hides the training's INFO lines" in out
    assert "to log errors only, give -q/--quiet before the subcommand" in out and "kl-retrievers -q train ..." in out
    assert "--progress / --no-progress may change" in out  # --resume's list


def _standalone(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    parsed: list[argparse.Namespace] = []

    def run_train(args: argparse.Namespace) -> int:  # no training: only what main parsed
        parsed.append(args)
        return 0

    monkeypatch.setattr(training_cli, "run_train", run_train)
    assert training_cli.main([*argv, "--data", "d.jsonl", "--out", "o"]) == 0
    return parsed[0]


def test_the_standalone_cli_takes_the_same_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _standalone(["-q", "train", "--no-progress"], monkeypatch)
    assert (args.errors_only, args.no_progress, args.deprecated_quiet) == (True, True, False)
    args = _standalone(["train", "--quiet"], monkeypatch)
    assert (args.errors_only, args.no_progress, args.deprecated_quiet) == (False, False, True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-q", "-v", "train"], "--quiet (-q) and --verbose (-v) contradict each other"),
        (["train", "-q"], "-q/--quiet for logs goes before the subcommand: kl-retrievers -q train ..."),
    ],
)
def test_the_standalone_cli_refuses_what_kl_retrievers_refuses(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        training_cli.main([*argv, "--data", "d.jsonl", "--out", "o"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_standalone_cli_logs_errors_only_with_q(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a program, ``-q`` is ERROR, on the handler too: the training's own INFO level does not get past it."""
    with bare_root_logger() as root:
        monkeypatch.setattr(training_cli, "__name__", "__main__")  # main() then sets up the program's logging
        args = _standalone(["-q", "train"], monkeypatch)
        assert args.errors_only
        assert root.level == logging.ERROR
        assert [handler.level for handler in root.handlers] == [logging.ERROR]
