"""``evaluate --no-progress`` / ``--progress``, and ``evaluate --quiet``: the deprecated old name of ``--no-progress``.

``--quiet`` (``-q``) is the command line's log level (errors only) before any subcommand and after every one but
``train``; ``evaluate``'s own ``--quiet`` meant something else (no progress bars). It is now ``--no-progress``, as
for ``encode`` and ``index``: the old spelling still hides the bars, with a warning naming both replacements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import (
    QUIET_WITH_NO_PROGRESS,
    assert_progress_flags_conflict,
    bare_root_logger,
    progress_and_log_flags,
    progress_flag_conflicts,
    write_tiny_beir,
)
from kl_retrievers import evaluate_cli
from kl_retrievers.cli import build_parser, main

DEPRECATED = "evaluate --quiet is deprecated"


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``show_progress`` each baseline run of ``evaluate`` is given (the baseline still runs)."""
    seen: list[Any] = []
    real = evaluate_cli.run_baseline

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("show_progress"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_cli, "run_baseline", recording)
    return seen


@pytest.mark.parametrize(
    ("flags", "expected", "warned"),
    [
        ([], False, False),  # pytest's stderr is no terminal: no bars by default
        (["--no-progress"], False, False),
        (["--progress"], True, False),  # shown anyway, as encode --progress
        (["--quiet"], False, True),  # the old spelling still works, and says what replaces it
        (["--quiet", "--no-progress"], False, True),  # a migrating user's spelling: accepted, still warned
    ],
)
def test_the_progress_flags_of_evaluate(
    flags: list[str],
    expected: bool,
    warned: bool,
    shown: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = write_tiny_beir(tmp_path / "beir")
    with bare_root_logger():
        assert main(["evaluate", str(root), "--baseline", "bm25", "--json", *flags]) == 0
    err = capsys.readouterr().err
    assert shown == [expected]
    assert (DEPRECATED in err) is warned, err
    if warned:
        assert "--no-progress now does" in err and "kl-retrievers -q evaluate ..." in err
        # what docs/upgrading.md says: the flag does not go away, it becomes the log level's
        assert "in the next release it will set the log level (errors only)" in err and "stops working" not in err


def test_the_deprecation_warning_is_a_log_line_that_q_hides(
    shown: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_beir(tmp_path / "beir")
    with bare_root_logger():
        assert main(["-q", "evaluate", str(root), "--baseline", "bm25", "--json", "--quiet"]) == 0
    assert shown == [False]
    assert DEPRECATED not in capsys.readouterr().err  # -q: errors only


@pytest.mark.parametrize(
    ("argv", "no_progress", "deprecated", "errors_only"),
    [
        (["evaluate", "data", "--no-progress"], True, False, False),
        (["evaluate", "data", "--quiet"], False, True, False),
        (["-q", "evaluate", "data", "--no-progress"], True, False, True),
        (["--quiet", "evaluate", "data"], False, False, True),
    ],
)
def test_the_log_level_and_the_bars_are_separate_flags(
    argv: list[str], no_progress: bool, deprecated: bool, errors_only: bool
) -> None:
    assert progress_and_log_flags(argv) == (no_progress, deprecated, errors_only)


@pytest.mark.parametrize(("pair", "message"), progress_flag_conflicts("evaluate"))
def test_the_progress_flags_exclude_each_other(
    pair: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_progress_flags_conflict(["evaluate", "data"], pair, message, capsys)


@pytest.mark.parametrize("pair", QUIET_WITH_NO_PROGRESS)
def test_quiet_with_no_progress_is_accepted(pair: list[str]) -> None:
    """A migrating user adds --no-progress before dropping --quiet: both say the same, the bars hidden."""
    args = build_parser().parse_args(["evaluate", "data", *pair])
    assert (args.no_progress, args.deprecated_quiet, args.progress) == (True, True, False)


def test_the_help_of_evaluate_says_what_each_quiet_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # the help wraps at the terminal's width
    assert "[--progress | --no-progress] [--quiet]" in out
    assert "--no-progress hide progress bars" in out
    assert "--quiet deprecated old name of --no-progress (it warns); to log errors only, give -q/--quiet" in out
    assert "kl-retrievers -q evaluate ..." in out


def test_q_after_evaluate_names_no_progress(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["evaluate", "data", "-q"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "-q/--quiet for logs goes before the subcommand: kl-retrievers -q evaluate ..." in err
    assert "evaluate --no-progress (formerly --quiet) hides its progress bars" in err
