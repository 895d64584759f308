"""``kl-retrievers evaluate`` warns when it scores a model on a split the model was trained on.

Training records the BEIR splits it trained on in the model's training record (``config.json``,
``encoder.extra.training.trained_splits``): each folder's name (not its path), the split, the SHA-256 of the
split's query texts (the whole split's) and how many of its queries were trained on (``queries_used`` of
``queries_total``). ``evaluate`` warns once when the split it scores has that folder name and split, or the same
query texts (a ``dev`` split copied from ``train``): train-split numbers must not be reported as held-out ones.
Training on some of a split's queries (``from_beir(..., query_ids=...)``) is warned about as ``trained on N of its
M queries``; before, the record read as if the whole split had been trained on. A record saved before the counts
gets the whole split's wording. A model whose record lists no split (saved before it was recorded, trained on
JSONL only, not trained here) gets no warning. Before, nothing was recorded and nothing warned.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import TrainWorld, heads_cached_train_argv, make_tiny_encoder, train_world_with_dev, write_train_jsonl
from kl_retrievers.cli import main
from kl_retrievers.datasets import load_beir
from kl_retrievers.training import TrainConfig, from_beir, load_training_data, train_heads_cached

WARNED = "was trained on"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    w = train_world_with_dev(tmp_path_factory.mktemp("trained_split"))  # dev: a copy of train's judgements
    # a held-out split: other queries (q1 and q2 judged on other documents is enough to differ from train)
    (w.beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\nq2\td4\t1\n")
    assert main(heads_cached_train_argv(w, w.root / "model", "--steps", "1")) == 0
    return w


def _record(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((folder / "config.json").read_text())["encoder"]["extra"]["training"]
    return record


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and WARNED in r.getMessage()]


def _evaluate(world: TrainWorld, model: Path, split: str, cache: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        argv = ["evaluate", str(world.beir), "--model", str(model), "--split", split, "--no-progress"]
        assert main([*argv, "--cache-dir", str(cache)]) == 0
    return _warnings(caplog)


def test_training_records_its_beir_splits_by_name_split_and_queries(world: TrainWorld, tmp_path: Path) -> None:
    queries = load_beir(world.beir, "train").queries_identity()["texts_sha256"]
    splits = _record(world.root / "model")["trained_splits"]
    whole = {"dataset": "beir", "split": "train", "queries_sha256": queries, "queries_used": 5, "queries_total": 5}
    assert splits == [whole]
    assert str(world.root) not in json.dumps(splits)  # the folder's name, not the user's path
    # the Python functions record them too; a JSONL source is no BEIR split
    ts = load_training_data([world.beir, write_train_jsonl(tmp_path / "rows.jsonl")], split="dev")
    enc = make_tiny_encoder(pooling="mean")
    train_heads_cached(enc, ts, TrainConfig(steps=1, batch_size=2, show_progress=False, device="cpu"))
    assert enc.config.extra["training"]["trained_splits"] == [{**whole, "split": "dev"}]


def test_evaluate_warns_once_on_the_training_split_loaded_or_cached(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = world.root / "model"
    (warning,) = _evaluate(world, model, "train", tmp_path / "cache", caplog)
    assert f"{model} was trained on beir split train (its training record" in warning, warning
    assert "is that split: these metrics are on training queries, not held out" in warning, warning
    # every encoding now cached: the model is not loaded, and its files' record still warns
    import kl_retrievers.pretrained

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(kl_retrievers.pretrained, "load_model", no_load)
    assert len(_evaluate(world, model, "train", tmp_path / "cache", caplog)) == 1


def test_evaluate_warns_on_a_split_with_the_training_queries_not_on_a_held_out_one(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (warning,) = _evaluate(world, world.root / "model", "dev", tmp_path / "cache", caplog)
    assert "was trained on beir split train" in warning and "split dev has its query texts" in warning, warning
    assert _evaluate(world, world.root / "model", "test", tmp_path / "cache", caplog) == []


def test_training_on_some_of_a_splits_queries_is_recorded_and_warned_about_as_such(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # as the bundled recipe trains on ~2,000 of SQuAD's 10,570 queries: the record said the whole split
    ts = from_beir(world.beir, "train", query_ids=["q1", "q2", "q4"])
    enc = make_tiny_encoder(pooling="mean")
    train_heads_cached(enc, ts, TrainConfig(steps=1, batch_size=2, show_progress=False, device="cpu"))
    (split,) = enc.config.extra["training"]["trained_splits"]
    # the whole split's query texts: what a split scored is matched on
    assert split["queries_sha256"] == load_beir(world.beir, "train").queries_identity()["texts_sha256"]
    assert (split["queries_used"], split["queries_total"]) == (3, 5), split
    model = tmp_path / "some"
    enc.save_pretrained(model)
    (warning,) = _evaluate(world, model, "train", tmp_path / "cache", caplog)
    assert "was trained on beir split train, on 3 of its 5 queries (its training record" in warning, warning
    assert "is that split: these metrics are partly on training queries, not held out" in warning, warning
    # a dev split with the same queries: the same count
    (warning,) = _evaluate(world, model, "dev", tmp_path / "cache", caplog)
    assert "on 3 of its 5 queries" in warning and "split dev has its query texts" in warning, warning


def test_a_record_without_the_counts_keeps_the_whole_splits_wording(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    older = tmp_path / "older"
    shutil.copytree(world.root / "model", older)
    config = json.loads((older / "config.json").read_text())
    for split in config["encoder"]["extra"]["training"]["trained_splits"]:  # as saved before the counts
        del split["queries_used"], split["queries_total"]
    (older / "config.json").write_text(json.dumps(config))
    (warning,) = _evaluate(world, older, "train", tmp_path / "cache", caplog)
    assert "was trained on beir split train (its training record" in warning, warning
    assert "these metrics are on training queries" in warning, warning


def test_a_model_without_the_record_is_not_warned_about(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    older = tmp_path / "older"
    shutil.copytree(world.root / "model", older)
    config = json.loads((older / "config.json").read_text())
    del config["encoder"]["extra"]["training"]["trained_splits"]  # as a model saved before they were recorded
    (older / "config.json").write_text(json.dumps(config))
    assert _evaluate(world, older, "train", tmp_path / "cache", caplog) == []


def test_a_folder_of_the_same_name_and_split_is_warned_about(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.evaluate_cli import _warn_trained_on

    other = load_beir(world.beir, "test")  # other queries, in a folder named as the training one
    with caplog.at_level(logging.WARNING):
        _warn_trained_on("m", [{"dataset": "beir", "split": "test", "queries_sha256": "0" * 64}], other)
        counts = {"queries_sha256": "0" * 64, "queries_used": 1, "queries_total": 2}
        _warn_trained_on(
            "m",
            [{"dataset": "beir", "split": "dev", **counts}, {"dataset": "scifact", "split": "test", **counts}],
            other,
        )
    (warning,) = _warnings(caplog)
    assert "m was trained on beir split test" in warning and "has that folder name and split" in warning, warning
