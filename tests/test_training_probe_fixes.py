"""Regression tests for the training fixes of probe P1.

Each test fails on the code before the fix: mining that silently replaced the given negatives and their
teacher scores (and a teacher-score message blaming the scores when the negatives were missing), training
on a test split or evaluating on the training queries without a word, fast-path-only flags ignored outside
the fast path, per-step evaluation lines hidden without ``-v``, ``--freeze-layers`` beyond the backbone's
depth, ``--resume`` with a ``--checkpoint-dir`` holding no checkpoint, empty texts in JSONL, the same
``--data`` counted twice, and ``listwise_kl_loss`` with a temperature <= 0. Everything runs on a tiny
random BERT and tiny data.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TrainWorld, heads_cached_train_argv, make_tiny_encoder, make_train_world, tiny_train_config
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.training import TrainingSet, mine_bm25_negatives, mine_negatives_from_scores
from kl_retrievers.training.data import load_training_data, read_jsonl
from kl_retrievers.training.losses import listwise_kl_loss
from kl_retrievers.training.trainer import _check_teacher, apply_freezing

# rows with given negatives and teacher scores; "zzz" shares no word with any document
TEACHER_ROWS: list[dict[str, Any]] = [
    {"query": "cat mat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"],
     "teacher_scores": {"positives": [3.0], "negatives": [1.0]}},
    {"query": "dog black", "positives": ["a dog is black"], "negatives": ["tea and bread"],
     "teacher_scores": {"positives": [2.0], "negatives": [0.5]}},
    {"query": "sea water", "positives": ["green sea water"]},
    {"query": "zzz", "positives": ["the bee is green"]},
    {"query": "moon", "positives": ["the sun and the moon"], "negatives": ["a star in the black sea"],
     "teacher_scores": {"positives": [2.5], "negatives": [0.2]}},
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    w = make_train_world(tmp_path_factory.mktemp("probe_fixes"))
    for split in ("dev", "test"):  # copies of the train judgements
        shutil.copy(w.beir / "qrels" / "train.tsv", w.beir / "qrels" / f"{split}.tsv")
    return w


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _card(out: Path) -> str:
    return (out / "README.md").read_text()


# ------------------------------------------------------------------ 1. mining keeps given negatives
def test_bm25_mining_keeps_given_negatives_and_teacher_scores(caplog: pytest.LogCaptureFixture) -> None:
    ts = TrainingSet.from_rows(TEACHER_ROWS)
    before = [(list(ex.negatives), ex.teacher_negatives) for ex in ts.examples]
    with caplog.at_level(logging.INFO, logger="kl_retrievers.training.data"):
        mine_bm25_negatives(ts, k=2)
    for i in (0, 1, 4):  # given negatives and their teacher scores are kept, and the rows stay distillable
        assert (ts.examples[i].negatives, ts.examples[i].teacher_negatives) == before[i]
        assert ts.examples[i].has_teacher
    assert ts.examples[2].negatives  # a row without negatives gets mined ones
    assert ts.examples[3].negatives == []  # "zzz" shares no word: nothing mined
    text = caplog.text
    assert "for 1 of 5 queries" in text and "3 kept their given negatives" in text and "found none for 1" in text
    assert any(
        r.levelno == logging.WARNING and "no negative for 1 of 2 queries" in r.getMessage() for r in caplog.records
    )


def test_model_mining_keeps_given_negatives_and_replace_is_explicit() -> None:
    ts = TrainingSet.from_rows(TEACHER_ROWS)
    n_docs = len(ts.docs)
    given = list(ts.examples[0].negatives)

    def score_fn(rows: list[int]) -> np.ndarray:
        return np.tile(-np.arange(n_docs, dtype=float), (len(rows), 1))

    mine_negatives_from_scores(ts, score_fn, k=1, show_progress=False)
    assert ts.examples[0].negatives == given and ts.examples[0].teacher_negatives == [1.0]
    assert len(ts.examples[2].negatives) == 1 and not ts.examples[2].has_teacher
    mine_negatives_from_scores(ts, score_fn, k=1, existing="replace", show_progress=False)
    assert ts.examples[0].teacher_negatives is None and len(ts.examples[0].negatives) == 1
    with pytest.raises(ValueError, match="existing must be one of"):
        mine_negatives_from_scores(ts, score_fn, k=1, existing="drop", show_progress=False)


def test_replace_mode_leaves_a_row_mining_finds_nothing_for_as_it_was() -> None:
    ts = TrainingSet.from_rows(
        [
            {"query": "zzz", "positives": ["the cat sat"], "negatives": ["a dog"]},
            {"query": "moon", "positives": ["moon"]},
        ]
    )
    mine_bm25_negatives(ts, k=2, existing="replace")
    assert [ts.docs[d] for d in ts.examples[0].negatives] == ["a dog"]


def test_teacher_message_names_missing_negatives() -> None:
    ts = TrainingSet.from_rows([{"query": "q", "positives": ["a"], "pos_scores": [1.0], "neg_scores": []}])
    ts.docs.append("b")
    with pytest.raises(ValueError, match=r"1 have no negatives") as info:
        _check_teacher(ts, tiny_train_config(1, loss="listwise"))
    assert "lack teacher scores" not in str(info.value)


def test_cli_distillation_with_mining_keeps_the_given_teacher_scores(world: TrainWorld, tmp_path: Path) -> None:
    rows = [r for r in TEACHER_ROWS if "negatives" in r]  # every row distillable as given
    data = _write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "m"
    argv = heads_cached_train_argv(world, out, "--loss", "listwise", "--hard-negatives", "bm25", "--mine-k", "2")
    argv[argv.index(str(world.beir))] = str(data)
    assert main(argv) == 0
    assert "hard negatives: bm25 (given negatives: keep)" in _card(out)
    training = json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]
    assert training["recipe"]["mine_mode"] == "keep"


def test_mine_mode_without_mining_is_refused(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(heads_cached_train_argv(world, tmp_path / "m", "--mine-mode", "replace")) == 2
    assert "--mine-mode replace applies to mined negatives" in capsys.readouterr().err


# ------------------------------------------------------------------ 2. test splits, evaluation on training queries
def test_training_on_a_test_split_warns_and_is_recorded(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(world, out, "--split", "test", "--steps", "1")) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("test split of" in m and "for reporting only" in m for m in warnings), warnings
    assert "- WARNING: trained on the test split" in _card(out)


def test_evaluating_on_the_training_split_warns(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(world, out, "--steps", "1", "--eval-data", str(world.beir), "--eval-split", "train")
    assert main(argv) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("on the training queries, not held out" in m for m in warnings), warnings
    assert "not held out" in _card(out)


# ------------------------------------------------------------------ 3. fast-path-only flags
@pytest.mark.parametrize("flags", [["--corpus-sample", "5"], ["--no-full-corpus"]])
def test_fast_path_flags_outside_the_fast_path_are_refused(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    argv = heads_cached_train_argv(world, tmp_path / "m", *flags)
    argv.remove("--heads-only-cached")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} applies only to the fast path (--heads-only-cached)" in err
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ 4. per-step evaluation lines without -v
def test_evaluation_lines_are_shown_without_verbose(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = heads_cached_train_argv(world, tmp_path / "m", "--steps", "2", "--eval-data", str(world.beir))
    argv += ["--eval-split", "dev", "--eval-every", "1"]
    assert "--no-progress" in argv  # it hides the bars, not these lines
    assert logging.getLogger().getEffectiveLevel() > logging.INFO  # as without -v
    assert main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if "evaluation at step" in r.getMessage()]
    assert len(lines) == 2, lines
    assert logging.getLogger("kl_retrievers.training").level == logging.NOTSET  # restored after the run


# ------------------------------------------------------------------ 5. --freeze-layers beyond the depth
def test_freeze_layers_beyond_the_backbone_is_refused() -> None:
    enc = make_tiny_encoder()
    with pytest.raises(ValueError, match=r"--freeze-layers\) 5 is more than the backbone's 2 layers"):
        apply_freezing(enc, freeze_layers=5)
    apply_freezing(enc, freeze_layers=2)  # every layer: allowed
    assert any(p.requires_grad for p in enc.mean_head.parameters())


def test_cli_freeze_layers_beyond_the_backbone_fails_before_features(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = heads_cached_train_argv(world, tmp_path / "m", "--freeze-layers", "5")
    argv.remove("--heads-only-cached")
    assert main(argv) == 2
    assert "(--freeze-layers) 5 is more than the backbone's 2 layers (--base" in capsys.readouterr().err  # config.json


# ------------------------------------------------------------------ 6. --resume with a missing checkpoint folder
def test_resume_from_a_named_folder_without_checkpoint_is_refused(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loaded before checking --resume")

    monkeypatch.setattr(GaussianEncoder, "from_backbone", boom)
    typo = tmp_path / "typo.ckpt"
    assert main(heads_cached_train_argv(world, tmp_path / "m", "--resume", "--checkpoint-dir", str(typo))) == 2
    assert f"--checkpoint-dir {typo} does not exist" in capsys.readouterr().err
    typo.mkdir()
    assert main(heads_cached_train_argv(world, tmp_path / "m", "--resume", "--checkpoint-dir", str(typo))) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------ 7. empty texts in JSONL
@pytest.mark.parametrize(
    ("row", "what"),
    [
        ({"query": "  ", "positives": ["a"]}, "the query is empty"),
        ({"query": "q", "positives": ["a", ""]}, "positive 2 of 2 is empty"),
        ({"query": "q", "positives": ["a"], "negatives": ["\t"]}, "negative 1 of 1 is empty"),
    ],
)
def test_empty_texts_are_refused_naming_file_and_line(tmp_path: Path, row: dict[str, Any], what: str) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"query": "ok", "positives": ["b"]}, row])
    with pytest.raises(ValueError, match=f"d.jsonl, line 2: {what}"):
        read_jsonl(path)


# ------------------------------------------------------------------ 8. the same --data twice
def test_the_same_data_twice_is_read_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", TEACHER_ROWS)
    ts = load_training_data([path, tmp_path / "." / "d.jsonl"])
    assert len(ts.examples) == len(TEACHER_ROWS)
    assert "given more than once" in caplog.text


def test_cli_card_counts_the_duplicated_data_once(world: TrainWorld, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(world, out, "--steps", "1", "--data", str(world.beir))) == 0
    card = _card(out)
    assert "training queries: 5 " in card and card.count(f"- {world.beir} (split train)") == 1


# ------------------------------------------------------------------ 9. listwise temperature
@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"temperature": -1.0}, {"teacher_temperature": 0.0}])
def test_listwise_loss_refuses_temperatures_at_or_below_zero(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        listwise_kl_loss(torch.zeros(1, 3), torch.zeros(1, 3), **kw)
