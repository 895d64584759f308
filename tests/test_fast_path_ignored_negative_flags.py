"""The negatives' flags are refused where the fast path's pool softmax never reads them.

With ``--heads-only-cached`` and the default contrastive softmax over the whole pool, the batch's hard negatives
never enter the loss: ``--hard-negatives``, ``--mine-k``, ``--mine-mode`` and ``--negatives`` were accepted and
changed nothing (mining still ran), and ``--no-in-batch`` was ignored by any full-corpus softmax. They are refused
as ``--corpus-sample`` and ``--no-full-corpus`` are outside the fast path; ``--corpus-sample N`` or
``--no-full-corpus`` make them matter. Fails before the fix (every refused command exited 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import (
    TINY_TRAIN_ROWS,
    TrainWorld,
    cli_error_line,
    heads_cached_train_argv,
    make_tiny_encoder,
    make_train_world,
    rows_train_config,
)
from kl_retrievers.cli import main
from kl_retrievers.training import TrainingSet, train_heads_cached


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    return make_train_world(tmp_path_factory.mktemp("fast_path_flags"))


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--hard-negatives", "bm25"], "--hard-negatives bm25"),
        (["--hard-negatives", "model", "--mine-k", "2"], "--hard-negatives model and --mine-k 2"),
        (["--hard-negatives", "model", "--mine-mode", "replace"], "--hard-negatives model and --mine-mode replace"),
        (["--negatives", "3"], "--negatives 3"),
    ],
)
def test_negatives_flags_with_the_whole_pool_softmax_are_refused(
    world: TrainWorld, tmp_path: Path, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(world, out, *flags)) == 2
    err = cli_error_line(capsys, "train")
    assert f"{named} would be ignored" in err, err
    assert "--corpus-sample N" in err and "--no-full-corpus" in err, err
    assert not out.exists()


@pytest.mark.parametrize("where", [["--corpus-sample", "3"], ["--no-full-corpus"]])
def test_negatives_flags_train_where_the_batch_enters_the_loss(
    world: TrainWorld, tmp_path: Path, where: list[str]
) -> None:
    argv = heads_cached_train_argv(world, tmp_path / "m", "--hard-negatives", "bm25", "--mine-k", "2", *where)
    assert main([*argv, "--negatives", "2", "--steps", "1"]) == 0


@pytest.mark.parametrize("where", [[], ["--corpus-sample", "3"]])
def test_no_in_batch_with_a_pool_softmax_is_refused(
    world: TrainWorld, tmp_path: Path, where: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(heads_cached_train_argv(world, tmp_path / "m", "--no-in-batch", *where)) == 2
    err = cli_error_line(capsys, "train")
    assert "--no-in-batch would be ignored" in err and "add --no-full-corpus" in err, err
    argv = heads_cached_train_argv(world, tmp_path / "ok", "--no-in-batch", "--no-full-corpus", "--steps", "1")
    assert main(argv) == 0


def test_distillation_on_the_fast_path_still_mines(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a loss other than contrastive reads the batch's candidates: nothing to refuse (it needs teacher scores)
    argv = heads_cached_train_argv(world, tmp_path / "m", "--loss", "listwise", "--hard-negatives", "bm25")
    assert main(argv) == 2  # refused for the teacher scores it lacks, not for the flags
    err = cli_error_line(capsys, "train")
    assert "teacher scores" in err and "would be ignored" not in err, err
    # the common case: no flag of the negatives given, the pool softmax trains
    assert main(heads_cached_train_argv(world, tmp_path / "plain", "--steps", "1")) == 0


def test_mine_k_without_mining_is_refused(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = heads_cached_train_argv(world, tmp_path / "m", "--no-full-corpus", "--mine-k", "5")
    assert main(argv) == 2
    assert "--mine-k 5 applies to mined negatives, and --hard-negatives is none" in cli_error_line(capsys, "train")


def test_train_heads_cached_refuses_in_batch_off_with_the_full_corpus() -> None:
    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    with pytest.raises(ValueError, match=r"in_batch=False \(--no-in-batch\) would be ignored.*full_corpus=False"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(in_batch=False))
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(in_batch=False, full_corpus=False))
