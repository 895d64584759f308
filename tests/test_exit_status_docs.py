"""docs/cli.md's exit-status table says what a diverged ``kl-retrievers train`` exits with (1, not only a bug).

The table defined 1 as "an internal error (a bug)", while a training run whose loss or weights became NaN or
infinite exits 1 too, as docs/training.md says. Fails before the fix (the row did not mention it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import pytest

import kl_retrievers.training.trainer as trainer
from conftest import TrainWorld, cli_error_line, heads_cached_train_argv, make_train_world
from kl_retrievers.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _row(text: str, status: int) -> str:
    rows = re.findall(rf"^\| {status} \|(.*)\|$", text, flags=re.MULTILINE)
    assert len(rows) == 1, rows
    return str(rows[0])


def test_the_exit_status_table_gives_a_diverged_training_status_1() -> None:
    row = _row((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), 1)
    assert "internal error" in row and "`train`" in row and "diverged" in row, row
    assert "exits 1" in (ROOT / "docs" / "training.md").read_text(encoding="utf-8")


def test_a_diverged_training_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world: TrainWorld = make_train_world(tmp_path / "world")

    def diverge(*args: Any, **kwargs: Any) -> NoReturn:
        raise trainer.TrainingDivergedError("the loss is nan at step 1 (lr too high?)")

    monkeypatch.setattr(trainer, "train_heads_cached", diverge)
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(world, out)) == 1
    assert "the loss is nan at step 1" in cli_error_line(capsys, "train")
    assert not out.exists()
