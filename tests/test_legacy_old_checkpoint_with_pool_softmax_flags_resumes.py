"""A legacy ``NAME.old`` checkpoint written with the negatives' flags on the pool softmax resumes.

Versions before the atomic checkpoint folders swapped a checkpoint in with two renames, so a run killed between
them left only ``<checkpoint>.old``, which a resume takes up (with a WARNING naming it). Versions before 8a50347
also accepted ``--negatives``, ``--hard-negatives``, ``--mine-k`` and ``--mine-mode`` on the fast path's softmax
over the whole pool (see ``test_pool_softmax_checkpoint_with_negatives_flags_resumes``). A checkpoint that is both
resumes with its own flags: the flags are read from the ``.old`` copy (one WARNING that the run continues with
them), and the run ends with the uninterrupted run's weights, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_pool_softmax_checkpoint_with_negatives_flags_resumes import (
    FLAGS,
    _assert_same_weights,
    _interrupted,
    _resumed_with_warnings,
    _warnings,
    _whole_and_interrupted,
)

from conftest import TrainWorld, cli_error_line, heads_cached_train_argv
from kl_retrievers.cli import main


@pytest.mark.parametrize("flags", FLAGS, ids=["negatives", "bm25", "model"])
def test_a_legacy_old_checkpoint_with_the_flags_resumes_to_the_uninterrupted_weights(
    train_world: TrainWorld,
    tmp_path: Path,
    flags: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _whole_and_interrupted(monkeypatch, train_world, tmp_path, flags)
    checkpoint = tmp_path / "m.checkpoint"
    legacy = checkpoint.rename(tmp_path / "m.checkpoint.old")  # killed between the old swap's two renames
    warned = _resumed_with_warnings(train_world, out, flags, caplog, capsys)
    assert len(warned) == 1, warned
    assert str(legacy) in warned[0] and " ".join(flags[:2]) in warned[0], warned[0]
    assert _warnings(caplog, f"resuming from the previous checkpoint {legacy}"), caplog.text
    _assert_same_weights(tmp_path / "whole", out)
    assert (checkpoint / "state.json").is_file()  # the run's own checkpoints are written to the folder again


def test_other_flags_than_a_legacy_old_checkpoint_was_written_with_are_refused(
    train_world: TrainWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "m"
    _interrupted(monkeypatch, train_world, out, "--negatives", "3")
    legacy = (tmp_path / "m.checkpoint").rename(tmp_path / "m.checkpoint.old")
    capsys.readouterr()
    assert main(heads_cached_train_argv(train_world, out, "--negatives", "2", "--resume")) == 2
    err = cli_error_line(capsys, "train")
    assert "--negatives 2 would play no part in the loss" in err, err
    assert f"the checkpoint {legacy} was written with --negatives 3" in err, err
