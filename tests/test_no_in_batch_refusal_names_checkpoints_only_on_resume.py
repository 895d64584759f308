"""The refusal of ``--no-in-batch`` where no loss reads it names checkpoints only when the run resumes.

Earlier versions accepted ``--no-in-batch`` (``in_batch=False``) where it is not read and recorded it; such a
checkpoint resumes without it, and the refusal says so (``a checkpoint written with it resumes without it``). On a
fresh run there is no checkpoint to resume, and the clause said it anyway. Where the refusal knows whether the run
resumes (the command, :func:`~kl_retrievers.training.train_heads_cached`), the clause is given only on a resume.
:class:`~kl_retrievers.training.TrainConfig`, built before any run and without knowing whether it resumes, keeps it;
the command, which builds it, drops it on a fresh run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TrainWorld, cli_error_line, heads_cached_train_argv, make_tiny_encoder, rows_train_argv
from kl_retrievers.cli import main
from kl_retrievers.training import TrainConfig, TrainingSet, train_heads_cached

CLAUSE = "a checkpoint written with it resumes without it"


def test_a_fresh_fast_path_run_is_refused_without_the_checkpoint_clause(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(heads_cached_train_argv(train_world, tmp_path / "m", "--no-in-batch")) == 2
    err = cli_error_line(capsys, "train")
    assert "--no-in-batch would be ignored" in err and "or drop --no-in-batch" in err, err
    assert CLAUSE not in err and not err.endswith(")"), err


def test_a_fresh_run_with_a_distillation_loss_is_refused_without_the_checkpoint_clause(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = rows_train_argv(train_world, tmp_path)  # margin_mse
    assert main([*argv, "--no-in-batch"]) == 2
    err = cli_error_line(capsys, "train")
    assert "'margin_mse' scores each query against its own candidates only" in err and "drop it" in err, err
    assert CLAUSE not in err, err
    # a resume (refused before its checkpoint is read): the clause is what it needs
    (tmp_path / "m.checkpoint").mkdir()
    (tmp_path / "m.checkpoint" / "state.json").write_text("{}")
    assert main([*argv, "--no-in-batch", "--resume"]) == 2
    assert f"drop it ({CLAUSE})" in cli_error_line(capsys, "train")


def test_train_heads_cached_names_the_checkpoint_only_when_resuming(tmp_path: Path) -> None:
    ts = TrainingSet.from_rows([{"query": "cat", "positives": ["the cat sat"]}, {"query": "tea", "positives": ["tea"]}])
    cfg = TrainConfig(steps=1, batch_size=2, negatives=0, in_batch=False, show_progress=False, device="cpu")
    enc = make_tiny_encoder(pooling="mean")
    with pytest.raises(ValueError, match="or leave in_batch on$"):
        train_heads_cached(enc, ts, cfg, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=rf"or leave in_batch on \({CLAUSE}\)$"):
        train_heads_cached(enc, ts, cfg, cache_dir=tmp_path / "c", checkpoint_dir=tmp_path / "k", resume=True)


def test_train_config_which_cannot_know_keeps_the_clause() -> None:
    with pytest.raises(ValueError, match=rf"drop it \({CLAUSE}\)$"):
        TrainConfig(loss="listwise", in_batch=False)
