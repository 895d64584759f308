"""``python -m kl_retrievers.training.cli`` honours stdout for ``--help`` as ``kl-retrievers train --help`` does.

Its parser was a plain ``argparse.ArgumentParser``: with stdout closed (``>&-``) the help went to stderr with exit
status 0, and a full stdout (``> /dev/full``) or a reader that went away (``| head -0``) exited 0 with nothing
said. It is now ``kl-retrievers``' own parser class: one line on stderr and exit status 2, or 141 in silence.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from kl_retrievers.training.cli import main


class _FullStdout:
    """A stdout whose writes fail as on a full disk."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass


class _GoneStdout:
    """A stdout whose reader went away (``| head -0``)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_standalone_help_to_a_full_closed_or_gone_stdout(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = "kl-retrievers train" if argv[0] == "train" else "kl-retrievers"
    monkeypatch.setattr(sys, "stdout", _FullStdout())
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: writing the output to stdout failed (No space left on device)"), err
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: stdout is closed, so the output cannot be written"), err
    assert "usage:" not in err  # not the help itself, written to stderr instead
    monkeypatch.setattr(sys, "stdout", _GoneStdout())
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 141
    assert capsys.readouterr().err == ""


def test_standalone_help_still_prints_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("usage: kl-retrievers train") and printed.err == ""


def test_standalone_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kl-retrievers: error: "), err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_standalone_help_to_dev_full_exits_2_in_a_real_process() -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "kl_retrievers.training.cli", "train", "--help"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kl-retrievers train: error: writing the output to stdout failed"), done.stderr
    assert "Exception ignored" not in done.stderr  # the interpreter's final flush does not fail again
