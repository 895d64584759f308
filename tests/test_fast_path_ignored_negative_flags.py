"""The negatives' flags are refused where the fast path's pool softmax never reads them.

With ``--heads-only-cached`` and the default contrastive softmax over the whole pool, the batch's hard negatives
never enter the loss: ``--hard-negatives``, ``--mine-k``, ``--mine-mode`` and ``--negatives`` were accepted and
changed nothing (mining still ran), and ``--no-in-batch`` was ignored by any full-corpus softmax. They are refused
as ``--corpus-sample`` and ``--no-full-corpus`` are outside the fast path; ``--corpus-sample N`` or
``--no-full-corpus`` make them matter. Fails before the fix (every refused command exited 0).

The refusal says they play no part in the loss, not that they change nothing: their random draws share each
micro-batch's stream with the draw of each query's positive, so for a query judged several positives they change
which one trains, and the weights (the stream is kept: changing it would change every run's weights).
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
    rows_train_config,
)
from kl_retrievers.cli import main
from kl_retrievers.training import TrainingSet, train_heads_cached

#: Six queries in the tiny vocabulary without negatives (the fast path then draws random pool documents).
SIX = ["cat", "tea", "moon", "dog", "sea", "rock"]


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
    train_world: TrainWorld, tmp_path: Path, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, *flags)) == 2
    err = cli_error_line(capsys, "train")
    assert f"{named} would play no part in the loss" in err and "would be ignored" not in err, err
    assert "which positive trains, for a query judged several" in err, err
    assert "--corpus-sample N" in err and "--no-full-corpus" in err, err
    assert not out.exists()


@pytest.mark.parametrize("where", [["--corpus-sample", "3"], ["--no-full-corpus"]])
def test_negatives_flags_train_where_the_batch_enters_the_loss(
    train_world: TrainWorld, tmp_path: Path, where: list[str]
) -> None:
    argv = heads_cached_train_argv(train_world, tmp_path / "m", "--hard-negatives", "bm25", "--mine-k", "2", *where)
    assert main([*argv, "--negatives", "2", "--steps", "1"]) == 0


@pytest.mark.parametrize("where", [[], ["--corpus-sample", "3"]])
def test_no_in_batch_with_a_pool_softmax_is_refused(
    train_world: TrainWorld, tmp_path: Path, where: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(heads_cached_train_argv(train_world, tmp_path / "m", "--no-in-batch", *where)) == 2
    err = cli_error_line(capsys, "train")
    assert "--no-in-batch would be ignored" in err and "add --no-full-corpus" in err, err
    argv = heads_cached_train_argv(train_world, tmp_path / "ok", "--no-in-batch", "--no-full-corpus", "--steps", "1")
    assert main(argv) == 0


def test_distillation_on_the_fast_path_still_mines(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a loss other than contrastive reads the batch's candidates: nothing to refuse (it needs teacher scores)
    argv = heads_cached_train_argv(train_world, tmp_path / "m", "--loss", "listwise", "--hard-negatives", "bm25")
    assert main(argv) == 2  # refused for the teacher scores it lacks, not for the flags
    err = cli_error_line(capsys, "train")
    assert "teacher scores" in err and "no part in the loss" not in err, err
    # the common case: no flag of the negatives given, the pool softmax trains
    assert main(heads_cached_train_argv(train_world, tmp_path / "plain", "--steps", "1")) == 0


def test_mine_k_without_mining_is_refused(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = heads_cached_train_argv(train_world, tmp_path / "m", "--no-full-corpus", "--mine-k", "5")
    assert main(argv) == 2
    assert "--mine-k 5 applies to mined negatives, and --hard-negatives is none" in cli_error_line(capsys, "train")


def test_train_heads_cached_refuses_in_batch_off_with_the_full_corpus() -> None:
    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    with pytest.raises(ValueError, match=r"in_batch=False \(--no-in-batch\) would be ignored.*full_corpus=False"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(in_batch=False))
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(in_batch=False, full_corpus=False))


@pytest.mark.parametrize("several", [False, True], ids=["one-positive", "several-positives"])
def test_negatives_on_the_pool_softmax_change_the_weights_only_through_the_positive_drawn(several: bool) -> None:
    # what the refusal's wording rests on: with one positive per query the negatives leave the weights as they
    # are; with several, their draws change which positive later queries of the micro-batch train on
    rows = [
        {"query": q, "positives": [f"the {q} here", *([f"a {q} there", f"{q} and more"] if several else [])]}
        for q in SIX
    ]
    ts = TrainingSet.from_rows(rows)
    weights = []
    for negatives in (0, 1, 7):
        enc = make_tiny_encoder(pooling="mean")
        train_heads_cached(enc, ts, rows_train_config(steps=4, batch_size=4, negatives=negatives, lr=1e-2))
        weights.append(enc.mean_head.weight.detach().clone())
    same = [bool((w == weights[0]).all()) for w in weights[1:]]
    assert same == ([False, False] if several else [True, True])
