"""The Python training API: checkpoint folders, vector twins' records, resume checks and input checks.

1. ``checkpoint_dir=`` pointing at a non-empty folder that is not a checkpoint (the training data, a user's
   folder) is refused before training, naming the folder; it used to be replaced silently.
2. A twin trained in Python (``TrainConfig(similarity="dot")``) records its similarity in
   ``config.extra["training"]`` (``record_training``): the in-training evaluator and ``save_pretrained`` score it
   by ``dot``; it used to be labelled and evaluated as -KL.
3. A resume whose training data changed at the same path is refused (``TrainingSet.data_sha256``), in Python and
   on the command line.
4. ``resume=True`` without a checkpoint (a mistyped folder, ``checkpoint_dir=None``) is a ``ValueError``.
5. A resume with another LoRA rank names the rank; the Python functions' refusals say how to proceed in their
   arguments (``resume=False``, ``checkpoint_dir``), not in flags.
6. ``mine_bm25_negatives`` refuses a ``k`` that is not an integer >= 1.
7. ``GaussianEncoder.from_backbone(seed=...)`` leaves torch's global RNG alone.
9. A list as data or a dict as config is a ``TypeError`` naming what is expected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import (
    TINY_TRAIN_ROWS,
    heads_cached_train_argv,
    make_tiny_encoder,
    make_train_world,
    rows_train_config,
    write_tiny_beir,
    write_train_jsonl,
)
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.evaluation import model_similarity
from kl_retrievers.training import (
    TrainingSet,
    apply_freezing,
    evaluator_description,
    load_training_data,
    mine_bm25_negatives,
    read_jsonl,
    retrieval_evaluator,
    train_encoder,
    train_heads_cached,
)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------ 1: checkpoint_dir over another folder
@pytest.mark.parametrize("trainer", ["heads", "encoder"])
def test_checkpoint_dir_that_is_not_a_checkpoint_is_refused_before_training(tmp_path: Path, trainer: str) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    ts = read_jsonl(write_train_jsonl(data / "train.jsonl", TINY_TRAIN_ROWS))
    (data / "notes.txt").write_text("my precious notes")
    before = _listing(data)
    enc = make_tiny_encoder(pooling="mean")
    heads_before = enc.mean_head.weight.detach().clone()
    with pytest.raises(ValueError, match=r"checkpoint_dir .*mydata.*not empty.*training checkpoint") as info:
        if trainer == "heads":
            train_heads_cached(enc, ts, rows_train_config(), checkpoint_dir=data)
        else:
            train_encoder(enc, ts, rows_train_config(), checkpoint_dir=data)
    assert "overwrite=True" in str(info.value)
    assert _listing(data) == before  # nothing replaced
    assert torch.equal(enc.mean_head.weight, heads_before)  # refused before any step
    # overwrite=True lets the checkpoint replace it; an earlier checkpoint (state.json) is fine without it
    ck = tmp_path / "other"
    ck.mkdir()
    (ck / "thesis.tex").write_text("x")
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(), checkpoint_dir=ck, overwrite=True)
    assert (ck / "state.json").is_file() and not (ck / "thesis.tex").exists()
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(), checkpoint_dir=ck)
    assert (ck / "state.json").is_file()


# ------------------------------------------------------------------ 2: a twin trained in Python is a twin
def test_python_twin_records_its_similarity_for_evaluation_and_save(tmp_path: Path) -> None:
    ts = read_jsonl(write_train_jsonl(tmp_path / "train.jsonl", TINY_TRAIN_ROWS))
    enc = make_tiny_encoder(pooling="mean")
    seen: list[str] = []

    def evaluator(encoder: Any) -> dict[str, float]:
        seen.append(model_similarity(encoder))  # what RetrievalEvaluator(similarity=None) ranks by
        return {"calls": float(len(seen))}

    result = train_heads_cached(enc, ts, rows_train_config(similarity="dot"), evaluator=evaluator, eval_every=1)
    assert seen == ["dot"] * 2 and len(result.evaluations) == 2
    described = evaluator_description(retrieval_evaluator(write_tiny_beir(tmp_path / "beir"), split="test"), enc)
    assert described["similarity"] == "dot"  # what a RetrievalEvaluator records and ranks by
    record = enc.config.extra["training"]
    assert record["recipe"]["similarity"] == "dot" and record["recipe"]["mode"] == "heads_only_cached"
    assert record["steps_done"] == 2 and record["n_queries"] == 3 and record["recipe"]["warmup_steps"] == 0
    saved = json.loads((enc.save_pretrained(tmp_path / "twin") / "config.json").read_text())
    assert saved["score"]["name"] == "dot"
    # the full loop records it too, and a later -KL run replaces the record
    full = make_tiny_encoder(pooling="mean")
    train_encoder(full, ts, rows_train_config(similarity="cosine"))
    assert model_similarity(full) == "cosine"
    train_encoder(full, ts, rows_train_config())
    assert model_similarity(full) == "neg_kl"


# ------------------------------------------------------------------ 3: resume on changed data
def test_resume_refuses_training_data_changed_at_the_same_path(tmp_path: Path) -> None:
    path = write_train_jsonl(tmp_path / "train.jsonl", TINY_TRAIN_ROWS)
    ck = tmp_path / "ck"
    train_heads_cached(
        make_tiny_encoder(pooling="mean"), read_jsonl(path), rows_train_config(time_budget_s=0.0), checkpoint_dir=ck
    )
    write_train_jsonl(path, [*TINY_TRAIN_ROWS[:2], {**TINY_TRAIN_ROWS[2], "positives": ["the moon and the sun"]}])
    with pytest.raises(ValueError, match=r"training data .*train\.jsonl.* content changed") as info:
        train_heads_cached(
            make_tiny_encoder(pooling="mean"), read_jsonl(path), rows_train_config(), checkpoint_dir=ck, resume=True
        )
    assert "--" not in str(info.value).split("content changed")[1]  # Python names no flags
    # the same content (a rewritten file) resumes
    write_train_jsonl(path, TINY_TRAIN_ROWS)
    result = train_heads_cached(
        make_tiny_encoder(pooling="mean"), read_jsonl(path), rows_train_config(), checkpoint_dir=ck, resume=True
    )
    assert (result.resumed_from, result.steps_done) == (1, 2)


def test_cli_resume_refuses_changed_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_train_world(tmp_path)
    argv = heads_cached_train_argv(world, tmp_path / "m", "--checkpoint-dir", str(tmp_path / "ck"))
    assert main([*argv, "--time-budget", "0"]) == 0
    qrels = world.beir / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join(lines[:-1]) + "\n")  # one judgement fewer
    capsys.readouterr()
    assert main([*argv, "--resume", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "content changed" in err and str(world.beir) in err and "--checkpoint-dir" in err


# ------------------------------------------------------------------ 4: resume without a checkpoint
def test_resume_without_a_checkpoint_raises(tmp_path: Path) -> None:
    ts = read_jsonl(write_train_jsonl(tmp_path / "train.jsonl", TINY_TRAIN_ROWS))
    with pytest.raises(ValueError, match=r"checkpoint_dir .*ck-typo does not exist"):
        train_heads_cached(
            make_tiny_encoder(), ts, rows_train_config(), checkpoint_dir=tmp_path / "ck-typo", resume=True
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty holds no checkpoint"):
        train_encoder(make_tiny_encoder(), ts, rows_train_config(), checkpoint_dir=tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match=r"resume=True needs checkpoint_dir"):
        train_encoder(make_tiny_encoder(), ts, rows_train_config(), resume=True)
    assert not (tmp_path / "ck-typo").exists()


# ------------------------------------------------------------------ 5: LoRA rank and Python wording
def test_resume_with_another_lora_rank_names_the_rank(tmp_path: Path) -> None:
    ts = read_jsonl(write_train_jsonl(tmp_path / "train.jsonl", TINY_TRAIN_ROWS))
    ck = tmp_path / "ck"

    def lora(r: int) -> GaussianEncoder:
        enc = make_tiny_encoder()
        if r:
            apply_freezing(enc, lora_r=r)
        return enc

    train_encoder(lora(2), ts, rows_train_config(time_budget_s=0.0), checkpoint_dir=ck)
    with pytest.raises(
        ValueError, match=r"encoder\.trainable\.lora_r \(LoRA rank, 0: none\): checkpoint 2, now 4"
    ) as info:
        train_encoder(lora(4), ts, rows_train_config(), checkpoint_dir=ck, resume=True)
    message = str(info.value)
    assert message.startswith("resume: ") and "--" not in message
    with pytest.raises(ValueError, match=r"lora_r \(LoRA rank, 0: none\): checkpoint 2, now 0"):
        train_encoder(lora(0), ts, rows_train_config(), checkpoint_dir=ck, resume=True)
    with pytest.raises(
        ValueError, match=r"--lr \(config\.lr\): checkpoint 0\.001, now 0\.5.* only steps, time_budget_s"
    ):
        train_encoder(lora(2), ts, rows_train_config(lr=0.5), checkpoint_dir=ck, resume=True)
    assert train_encoder(lora(2), ts, rows_train_config(), checkpoint_dir=ck, resume=True).resumed_from == 1


# ------------------------------------------------------------------ 6: mining depth
@pytest.mark.parametrize("k", [0, -3, 2.5, True, "5"])
def test_mine_bm25_negatives_refuses_a_bad_k(k: Any) -> None:
    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    with pytest.raises(ValueError, match=r"k \(negatives mined per query\) must be an integer >= 1"):
        mine_bm25_negatives(ts, k=k)


# ------------------------------------------------------------------ 7: from_backbone's seed
def test_from_backbone_seed_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    tiny = make_tiny_encoder()
    base = tmp_path / "base"
    tiny.backbone.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)  # type: ignore[attr-defined]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = GaussianEncoder.from_backbone(base, dim=4, max_length=32, query_max_length=16, seed=0)
    assert torch.equal(torch.rand(3), expected)
    b = GaussianEncoder.from_backbone(base, dim=4, max_length=32, query_max_length=16, seed=0)
    assert torch.equal(a.mean_head.weight, b.mean_head.weight)  # still reproducible


# ------------------------------------------------------------------ 9: wrong input types
def test_wrong_input_types_are_type_errors(tmp_path: Path) -> None:
    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    with pytest.raises(TypeError, match=r"ts must be a TrainingSet .*got list"):
        train_heads_cached(make_tiny_encoder(), TINY_TRAIN_ROWS, rows_train_config())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"cfg must be a TrainConfig \(TrainConfig\(\*\*d\).*got dict"):
        train_encoder(make_tiny_encoder(), ts, {"steps": 2})  # type: ignore[arg-type]


# ------------------------------------------------------------------ 10: a call failing before any step keeps the record
def _boom(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt("Ctrl-C while the features are computed")


@pytest.mark.parametrize("failure", ["interrupted_features", "nothing_to_train"])
def test_a_call_that_fails_before_its_first_step_keeps_the_previous_record(
    failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights did not change: a vector twin stays a twin (its record was replaced by the -KL run's)."""
    import kl_retrievers.training.trainer as trainer

    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    enc = make_tiny_encoder(pooling="mean")
    train_heads_cached(enc, ts, rows_train_config(similarity="dot"))
    before = json.loads(json.dumps(enc.config.extra["training"]))
    weights = enc.mean_head.weight.detach().clone()
    if failure == "interrupted_features":
        monkeypatch.setattr(trainer, "compute_features", _boom)
        with pytest.raises(KeyboardInterrupt):
            train_heads_cached(enc, ts, rows_train_config())
    else:
        for p in enc.parameters():
            p.requires_grad_(False)
        with pytest.raises(ValueError, match="nothing to train"):
            train_encoder(enc, ts, rows_train_config())
    assert torch.equal(enc.mean_head.weight, weights)
    assert enc.config.extra["training"] == before and model_similarity(enc) == "dot"
    # an encoder that had no record has none after such a call
    fresh = make_tiny_encoder(pooling="mean")
    for p in fresh.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train_encoder(fresh, ts, rows_train_config(similarity="dot"))
    assert "training" not in fresh.config.extra


def test_a_call_that_fails_after_a_step_keeps_the_new_record() -> None:
    """Once a step has changed the weights, the record says how they were trained (no result: it failed)."""
    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    enc = make_tiny_encoder(pooling="mean")
    train_heads_cached(enc, ts, rows_train_config(similarity="dot"))

    def failing(encoder: Any) -> dict[str, float]:
        raise RuntimeError("the evaluator failed")

    with pytest.raises(RuntimeError, match="evaluator failed"):
        train_heads_cached(enc, ts, rows_train_config(), evaluator=failing, eval_every=1)
    record = enc.config.extra["training"]
    assert model_similarity(enc) == "neg_kl" and "steps_done" not in record


# ------------------------------------------------------------------ 11: resume refusals name what differs
def test_resume_with_reordered_sources_names_the_order_and_the_other_changes(tmp_path: Path) -> None:
    a = write_train_jsonl(tmp_path / "a.jsonl", TINY_TRAIN_ROWS[:2])
    b = write_train_jsonl(tmp_path / "b.jsonl", TINY_TRAIN_ROWS[2:])
    ck = tmp_path / "ck"
    train_heads_cached(
        make_tiny_encoder(pooling="mean"),
        load_training_data([a, b]),
        rows_train_config(time_budget_s=0.0),
        checkpoint_dir=ck,
    )
    with pytest.raises(ValueError, match="different recipe") as info:
        train_heads_cached(
            make_tiny_encoder(pooling="mean"),
            load_training_data([b, a]),
            rows_train_config(lr=0.5),
            checkpoint_dir=ck,
            resume=True,
        )
    message = str(info.value)
    assert "content changed" not in message  # the sources' order differs, not their content
    assert "data_sha256" in message and str(b) in message.split("now")[1]
    assert "lr" in message and "0.5" in message
    # the same sources with changed content and another lr: the content change, and the lr too
    write_train_jsonl(b, [{**TINY_TRAIN_ROWS[2], "positives": ["the moon and the sun"]}])
    with pytest.raises(ValueError, match="content changed") as info:
        train_heads_cached(
            make_tiny_encoder(pooling="mean"),
            load_training_data([a, b]),
            rows_train_config(lr=0.5),
            checkpoint_dir=ck,
            resume=True,
        )
    assert "lr" in str(info.value) and "0.5" in str(info.value)


# ------------------------------------------------------------------ 12: Python runs' messages name no flags
def test_python_runs_log_their_arguments_not_flags(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    ck = tmp_path / "ck"
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(), checkpoint_dir=ck)
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(warmup_steps=5), checkpoint_dir=ck)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    fresh = [m for m in warnings if "holds the checkpoint of an earlier run" in m]
    warm = [m for m in warnings if "warmup_steps" in m]
    assert len(fresh) == 1 and "resume=True" in fresh[0] and "--" not in fresh[0]
    assert len(warm) == 1 and "--" not in warm[0]
    # a time-budget stop is expected: INFO, not a warning
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers"):
        result = train_heads_cached(make_tiny_encoder(pooling="mean"), ts, rows_train_config(time_budget_s=0.0))
    assert result.stopped == "time_budget"
    budget = [r for r in caplog.records if "time budget" in r.getMessage()]
    assert [r.levelno for r in budget] == [logging.INFO]


# ------------------------------------------------------------------ 13: a seed does not reseed CUDA
def test_from_backbone_seed_reseeds_no_cuda_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fork_rng(devices=[]) restores the CPU generator only: torch.manual_seed would reseed every CUDA device."""
    tiny = make_tiny_encoder()
    base = tmp_path / "base"
    tiny.backbone.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)  # type: ignore[attr-defined]
    seeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    a = GaussianEncoder.from_backbone(base, dim=4, max_length=32, query_max_length=16, seed=0)
    b = GaussianEncoder.from_backbone(base, dim=4, max_length=32, query_max_length=16, seed=0)
    assert seeded == []
    assert torch.equal(a.mean_head.weight, b.mean_head.weight)
