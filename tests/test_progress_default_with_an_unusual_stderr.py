"""The "bars on a terminal only" default with a stderr that cannot say whether it is one.

An embedding host or a GUI shell may set ``sys.stderr`` to an object with only ``write`` and ``flush`` (no
``isatty``), and a program may leave it closed (``isatty`` raises ``ValueError``). Neither is a terminal: the
encoder's default (``show_progress_bar=None``) and the CLI's (:func:`~kl_retrievers.cli_common.progress_default`)
draw no bar there, and encoding goes on; both read one rule, :func:`kl_retrievers._encoding.stderr_is_terminal`.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder
from kl_retrievers._encoding import show_progress
from kl_retrievers.cli_common import progress_default


class _WriteOnly:
    """A stderr with only ``write`` and ``flush``, as some hosts install."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, text: str) -> int:
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _write_only(tmp_path: Path) -> Any:
    return _WriteOnly()


def _closed(tmp_path: Path) -> Any:
    stream = (tmp_path / "closed.log").open("w", encoding="utf-8")
    stream.close()
    return stream


UNUSUAL = pytest.mark.parametrize("make_stderr", [_write_only, _closed], ids=["write-only", "closed"])


@pytest.fixture(autouse=True)
def _bars_not_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # else progress_disabled() answers before stderr is read


@UNUSUAL
def test_encoding_with_the_default_bar_goes_on_without_a_bar(
    make_stderr: Callable[[Path], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = make_tiny_encoder()
    stderr = make_stderr(tmp_path)
    monkeypatch.setattr(sys, "stderr", stderr)
    out = encoder.encode_documents([f"text {i}" for i in range(10)], batch_size=2)  # several batches
    assert out.mean.shape[0] == 10
    assert not getattr(stderr, "written", [])  # no bar drawn


@UNUSUAL
def test_neither_default_counts_it_as_a_terminal(
    make_stderr: Callable[[Path], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", make_stderr(tmp_path))
    assert show_progress(None, 100, 1) is False
    assert progress_default(False) is False


def test_both_defaults_read_one_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kl_retrievers._encoding import stderr_is_terminal

    for stderr, terminal in [
        (_Terminal(), True),
        (io.StringIO(), False),
        (None, False),
        (_WriteOnly(), False),
        (_closed(tmp_path), False),
    ]:
        monkeypatch.setattr(sys, "stderr", stderr)
        assert stderr_is_terminal() is terminal, stderr
        assert progress_default(False) is terminal and progress_default(True) is False, stderr
        assert show_progress(None, 100, 1) is terminal and show_progress(None, 1, 1) is False, stderr
