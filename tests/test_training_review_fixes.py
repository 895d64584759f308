"""Regression tests for the training review of the mining-modes commit.

Each test fails on the code before the fix: checkpoints made before ``--mine-mode`` (no recorded mode, a
``--data`` source listed twice, ``--corpus-sample`` recorded outside the fast path) could not be resumed; a
``~`` path hid a test split; BEIR folders trained on empty texts silently; ``keep`` with every row holding
negatives encoded everything and mined nothing at INFO; the teacher-score message did not name the mining
mode that dropped the data's scores, and append's "found no negative" meant "nothing new"; ``replace=``
overrode a conflicting ``existing=``; the docs' example counts did not add up; ``--quiet``'s help did not say
that ``-v`` wins. Everything runs on a tiny random BERT and tiny data.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import REPO, TrainWorld, heads_cached_train_argv, make_train_world, tiny_train_config
from kl_retrievers.cli import main
from kl_retrievers.training import TrainingSet, mine_negatives_from_scores
from kl_retrievers.training.cli import add_train_command
from kl_retrievers.training.data import from_beir
from kl_retrievers.training.trainer import _check_teacher, _recipe_differences

# every row has given negatives and teacher scores (distillable as given)
TEACHER_ROWS: list[dict[str, Any]] = [
    {"query": "cat mat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"],
     "teacher_scores": {"positives": [3.0], "negatives": [1.0]}},
    {"query": "dog black", "positives": ["a dog is black"], "negatives": ["tea and bread"],
     "teacher_scores": {"positives": [2.0], "negatives": [0.5]}},
    {"query": "moon", "positives": ["the sun and the moon"], "negatives": ["a star in the black sea"],
     "teacher_scores": {"positives": [2.5], "negatives": [0.2]}},
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    w = make_train_world(tmp_path_factory.mktemp("review_fixes"))
    shutil.copy(w.beir / "qrels" / "train.tsv", w.beir / "qrels" / "test.tsv")
    return w


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ------------------------------------------------------------------ 2. checkpoints made before --mine-mode
#: model mining on the fast path, with the in-batch softmax that reads the mined negatives
_MINED = ("--hard-negatives", "model", "--mine-k", "2", "--no-full-corpus")


def _make_old_checkpoint(world: TrainWorld, out: Path) -> Path:
    """A fast-path checkpoint (2 steps, model mining) rewritten as the earlier version recorded it: no
    ``cli.mine_mode`` and the ``--data`` source listed twice (it kept a repeated --data)."""
    assert main(heads_cached_train_argv(world, out, "--steps", "2", *_MINED)) == 0
    state = out.with_name(out.name + ".checkpoint") / "state.json"
    meta = json.loads(state.read_text())
    del meta["recipe"]["cli"]["mine_mode"]
    meta["recipe"]["data"] = meta["recipe"]["data"] * 2
    state.write_text(json.dumps(meta))
    return state


def test_checkpoint_without_mine_mode_resumes_with_replace(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    _make_old_checkpoint(world, out)
    resume = heads_cached_train_argv(world, out, "--steps", "3", *_MINED)
    assert main([*resume, "--resume"]) == 2  # contrastive's default mode is append: refused, saying how
    err = capsys.readouterr().err
    assert "cli.mine_mode" in err and "give --mine-mode replace to resume it" in err, err
    assert "data" not in re.findall(r"\(([a-z_.]+)\): checkpoint", err)  # [a, a] is a
    assert main([*resume, "--resume", "--mine-mode", "replace"]) == 0
    assert "after 3 steps" in capsys.readouterr().out  # the summary line is on stdout


def test_recipe_differences_read_older_checkpoints_as_they_meant() -> None:
    cli = {"hard_negatives": "bm25", "mine_k": 5}
    old = {"mode": "encoder", "data": ["a:train", "a:train"], "cli": cli}
    assert (
        _recipe_differences(old, {"mode": "encoder", "data": ["a:train"], "cli": cli | {"mine_mode": "replace"}}) == []
    )
    diffs = _recipe_differences(old, {"mode": "encoder", "data": ["a:train"], "cli": cli | {"mine_mode": "keep"}})
    assert len(diffs) == 1 and "before --mine-mode" in diffs[0], diffs
    # without mining no mode is recorded on either side
    plain = {"mode": "encoder", "cli": {"hard_negatives": "none"}}
    assert _recipe_differences(plain, plain) == []


# ------------------------------------------------------------------ 3. fast-path entries outside the fast path
def test_fast_path_entries_are_not_compared_outside_the_fast_path() -> None:
    saved = {"mode": "encoder", "config": {"corpus_sample": 5, "full_corpus": False, "lr": 2e-5}}
    now = {"mode": "encoder", "config": {"corpus_sample": 0, "full_corpus": True, "lr": 2e-5}}
    assert _recipe_differences(saved, now) == []
    fast = _recipe_differences({**saved, "mode": "heads_only_cached"}, {**now, "mode": "heads_only_cached"})
    assert len(fast) == 2, fast  # still compared where they apply


# ------------------------------------------------------------------ 4. a test split behind a "~" path
def test_test_split_of_a_home_path_warns(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(world.root))
    out = tmp_path / "m"
    argv = heads_cached_train_argv(world, out, "--split", "test", "--steps", "1")
    argv[argv.index(str(world.beir))] = "~/" + world.beir.name
    assert main(argv) == 0
    assert any("test split of ~/beir" in m for m in _warnings(caplog)), _warnings(caplog)
    card = (out / "README.md").read_text()
    assert "- WARNING: trained on the test split" in card
    assert "~/beir (split test)" in card


# ------------------------------------------------------------------ 5. empty texts in BEIR folders
def test_beir_empty_query_and_positive_are_skipped_with_a_warning(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = shutil.copytree(world.beir, tmp_path / "beir")
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
    for q in queries:
        if q["_id"] == "q2":
            q["text"] = "  "
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    for d in docs:
        if d["_id"] in ("d5", "d8"):  # q4's second positive (d7 stays) and q5's only one
            d["text"] = ""
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    ts = from_beir(folder, "train")
    assert sorted(ts.queries[ex.query] for ex in ts.examples) == ["cat mat", "sea water", "sun moon"]
    assert all(ts.docs[i].strip() for ex in ts.examples for i in ex.positives)
    warnings = _warnings(caplog)
    assert any("queries.jsonl: 1 judged queries have an empty text" in m and "q2" in m for m in warnings), warnings
    assert any(
        "corpus.jsonl: 2 judged positives have an empty text" in m and "d5, d8" in m and "q5" in m for m in warnings
    ), warnings


# ------------------------------------------------------------------ 6. keep with nothing to mine
def test_keep_with_every_row_holding_negatives_scores_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ts = TrainingSet.from_rows(TEACHER_ROWS)

    def boom(rows: list[int]) -> np.ndarray:
        raise AssertionError("score_fn called with nothing to mine")

    mine_negatives_from_scores(ts, boom, k=2, show_progress=False)
    assert any("--mine-mode append|replace" in m for m in _warnings(caplog)), _warnings(caplog)


def test_cli_model_mining_with_nothing_to_mine_encodes_nothing(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kl_retrievers.training.trainer as trainer

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("encoded for mining with nothing to mine")

    monkeypatch.setattr(trainer, "encode_from_features", boom)
    data = _write_jsonl(tmp_path / "rows.jsonl", TEACHER_ROWS)
    argv = heads_cached_train_argv(world, tmp_path / "m", "--loss", "listwise", "--hard-negatives", "model")
    argv[argv.index(str(world.beir))] = str(data)
    assert main([*argv, "--mine-k", "2", "--steps", "1"]) == 0
    assert any("mining changed nothing" in m for m in _warnings(caplog)), _warnings(caplog)


# ------------------------------------------------------------------ 7. teacher scores dropped by mining
def test_teacher_message_names_the_mining_mode(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_jsonl(tmp_path / "rows.jsonl", TEACHER_ROWS)
    argv = heads_cached_train_argv(world, tmp_path / "m", "--loss", "listwise", "--hard-negatives", "bm25")
    argv[argv.index(str(world.beir))] = str(data)
    assert main([*argv, "--mine-k", "2", "--mine-mode", "append"]) == 2
    err = capsys.readouterr().err
    assert "--mine-mode append" in err and "--mine-mode keep" in err, err
    assert not (tmp_path / "m").exists()


def test_check_teacher_names_the_mode_only_where_it_dropped_scores() -> None:
    ts = TrainingSet.from_rows([{"query": "q", "positives": ["a"], "negatives": ["b"]}])
    cfg = tiny_train_config(1, loss="listwise")
    with pytest.raises(ValueError, match=r"--mine-mode replace\)") as info:
        _check_teacher(ts, cfg, mined="replace")
    assert "use data with teacher_scores" not in str(info.value)
    with pytest.raises(ValueError, match="use data with teacher_scores") as info:
        _check_teacher(ts, cfg, mined="keep")
    assert "--mine-mode" not in str(info.value)


def test_append_that_finds_nothing_new_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kl_retrievers.training")
    ts = TrainingSet.from_rows([{"query": "q", "positives": ["a"], "negatives": ["b"]}])  # pool: a, b

    def scores(rows: list[int]) -> np.ndarray:
        return np.array([[1.0, 0.5]] * len(rows))

    mine_negatives_from_scores(ts, scores, k=2, existing="append", show_progress=False)
    assert ts.examples[0].negatives == [1]
    messages = [r.getMessage() for r in caplog.records]
    assert any("mining found nothing new for 1" in m for m in messages), messages
    assert any("found no new negative for 1 of 1" in m for m in _warnings(caplog)), messages


# ------------------------------------------------------------------ small: existing= and replace=
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"existing": "append", "replace": True}, "disagree"),
        ({"existing": "keep", "replace": False}, "disagree"),
        ({"existing": "bogus", "replace": True}, "existing must be one of"),
    ],
)
def test_conflicting_or_unknown_mining_modes_are_refused(kw: dict[str, Any], match: str) -> None:
    ts = TrainingSet.from_rows([{"query": "q", "positives": ["a"], "negatives": ["b"]}])
    ts.docs.append("c")
    with pytest.raises(ValueError, match=match):
        mine_negatives_from_scores(ts, lambda rows: np.zeros((len(rows), 3)), k=1, show_progress=False, **kw)
    assert ts.examples[0].negatives == [1]  # unchanged


def test_replace_alone_still_names_the_mode() -> None:
    ts = TrainingSet.from_rows([{"query": "q", "positives": ["a"], "negatives": ["b"]}])
    ts.docs.append("c")
    mine_negatives_from_scores(ts, lambda rows: np.array([[0.0, 0.0, 1.0]]), k=1, replace=True, show_progress=False)
    assert ts.examples[0].negatives == [2]


# ------------------------------------------------------------------ small: docs and --quiet
def test_docs_example_mining_counts_add_up() -> None:
    text = " ".join((REPO / "docs" / "training.md").read_text().split())
    found = re.search(
        r"for (\d+) of (\d+) queries \(\d+ of them replacing given ones\); (\d+) kept their given negatives "
        r"unmined; mining found none for (\d+)",
        text,
    )
    assert found is not None
    mined, total, kept, none = map(int, found.groups())
    assert mined + kept + none == total


def test_quiet_help_says_that_verbose_wins() -> None:
    parser = argparse.ArgumentParser()
    train = add_train_command(parser.add_subparsers())
    quiet = next(a for a in train._actions if "--quiet" in a.option_strings)
    assert "-v" in (quiet.help or "")
