"""Training: losses (hand-computed), similarities, data readers, loops, resume, fast path, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from conftest import DATASETS, make_tiny_encoder, tiny_train_beir
from kl_retrievers import GaussianEncoder, Gaussians, NotAnEncoderError, neg_kl_matrix
from kl_retrievers.training import (
    TrainConfig,
    TrainingDivergedError,
    TrainingSet,
    apply_freezing,
    compute_features,
    contrastive_loss,
    encode_from_features,
    from_beir,
    heads_forward,
    lambdarank_loss,
    listwise_kl_loss,
    margin_mse_loss,
    merge_lora,
    mine_bm25_negatives,
    read_jsonl,
    score_candidates,
    score_matrix,
    train_encoder,
    train_heads_cached,
)

TOY = DATASETS / "train-toy-msmarco-nq-hardneg"


# ------------------------------------------------------------------ losses, by hand
def test_contrastive_loss_by_hand() -> None:
    scores = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.3, 0.1]])
    t = 0.1
    expected = 0.0
    for row, target in ((0, 0), (1, 1)):
        logits = [s / t for s in scores[row].tolist()]
        expected += -logits[target] + math.log(sum(math.exp(x) for x in logits))
    loss = contrastive_loss(scores, torch.tensor([0, 1]), temperature=t)
    assert float(loss) == pytest.approx(expected / 2, rel=1e-5)
    # masking another positive of query 0 (column 1) removes it from the softmax
    mask = torch.tensor([[False, True, False], [False, False, False]])
    masked = contrastive_loss(scores, torch.tensor([0, 1]), temperature=t, mask=mask)
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0))
    row1 = -3.0 + math.log(math.exp(0.0) + math.exp(3.0) + math.exp(1.0))
    assert float(masked) == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_margin_mse_by_hand() -> None:
    s = torch.tensor([[3.0, 1.0, 2.0]])
    t = torch.tensor([[5.0, 1.0, 5.0]])
    # margins: student (2, 1), teacher (4, 0) -> ((2-4)^2 + (1-0)^2) / 2
    assert float(margin_mse_loss(s, t)) == pytest.approx(2.5)


def test_listwise_kl_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    ps = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    pt = ps[::-1]
    expected = sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))
    assert float(listwise_kl_loss(s, t)) == pytest.approx(expected, rel=1e-5)
    assert float(listwise_kl_loss(t, t)) == pytest.approx(0.0, abs=1e-7)


def test_lambdarank_by_hand() -> None:
    s = torch.tensor([[0.0, 1.0, 2.0]])  # student ranks: d2=1, d1=2, d0=3
    t = torch.tensor([[3.0, 2.0, 1.0]])  # teacher prefers d0 > d1 > d2
    inv = {0: 1 / 3, 1: 1 / 2, 2: 1.0}
    sc = s[0].tolist()
    expected = 0.0
    for i, j in ((0, 1), (0, 2), (1, 2)):
        expected += abs(inv[i] - inv[j]) * math.log1p(math.exp(sc[j] - sc[i]))
    assert float(lambdarank_loss(s, t)) == pytest.approx(expected, rel=1e-5)
    # ties in the teacher give no pair
    assert float(lambdarank_loss(s, torch.ones(1, 3))) == 0.0


def test_score_matrix_matches_reference_neg_kl() -> None:
    g = torch.Generator().manual_seed(0)
    qm, dm = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    qv, dv = torch.rand(3, 4, generator=g) + 0.2, torch.rand(5, 4, generator=g) + 0.2
    ref = neg_kl_matrix(Gaussians(qm.double(), qv.double()), Gaussians(dm.double(), dv.double()))
    got = score_matrix(qm.double(), qv.double(), dm.double(), dv.double(), "neg_kl")
    torch.testing.assert_close(got, torch.as_tensor(ref))
    cand = score_candidates(qm, qv, dm[None].expand(3, 5, 4), dv[None].expand(3, 5, 4), "neg_kl")
    torch.testing.assert_close(cand, score_matrix(qm, qv, dm, dv, "neg_kl"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(score_matrix(qm, qv, dm, dv, "dot"), qm @ dm.T)
    cos = torch.nn.functional.cosine_similarity(qm[:, None], dm[None], dim=-1)
    torch.testing.assert_close(score_matrix(qm, qv, dm, dv, "cosine"), cos, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="similarity"):
        score_matrix(qm, qv, dm, dv, "l2")  # type: ignore[arg-type]


@pytest.mark.parametrize("similarity", ["neg_kl", "dot", "cosine"])
def test_similarity_decides_whether_variance_gets_gradient(similarity: str) -> None:
    enc = make_tiny_encoder()
    enc.train()
    batch = enc.tokenize(["the cat sat", "a dog", "hello world", "sun moon"], 16)
    mean, var = enc(**batch)
    scores = score_matrix(mean[:2], var[:2], mean[2:], var[2:], similarity)  # type: ignore[arg-type]
    contrastive_loss(scores, torch.tensor([0, 1]), temperature=0.5).backward()
    var_grad = enc.var_head.weight.grad
    assert enc.mean_head.weight.grad is not None and enc.mean_head.weight.grad.abs().sum() > 0
    if similarity == "neg_kl":
        assert var_grad is not None and var_grad.abs().sum() > 0
    else:
        assert var_grad is None or var_grad.abs().sum() == 0


# ------------------------------------------------------------------ data
def test_read_flagembedding_jsonl_with_teacher_scores() -> None:
    ts = read_jsonl(TOY / "flagembedding_msmarco.jsonl")
    assert len(ts.examples) == 10
    ex = ts.examples[0]
    assert len(ex.negatives) == 25 and ex.has_teacher
    assert ex.teacher_positives == [96.6875]


def test_read_documented_schema_and_errors(tmp_path: Path) -> None:
    rows = [
        {"query": "cat", "positives": ["the cat sat"], "negatives": ["a dog"],
         "teacher_scores": {"positives": [2.0], "negatives": [0.5]}},
        {"query": "sun", "positives": ["sun moon"]},
    ]  # fmt: skip
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ts = read_jsonl(path)
    assert ts.queries == ["cat", "sun"] and ts.docs == ["the cat sat", "a dog", "sun moon"]
    assert ts.examples[0].has_teacher and not ts.examples[1].has_teacher
    path.write_text(json.dumps({"query": "x", "negatives": ["y"]}) + "\n")
    with pytest.raises(ValueError, match="positives"):
        read_jsonl(path)
    path.write_text(json.dumps({"query": "x", "pos": ["y"], "pos_scores": [1.0, 2.0]}) + "\n")
    with pytest.raises(ValueError, match="teacher scores"):
        read_jsonl(path)


def test_beir_reader_and_bm25_negatives(tmp_path: Path) -> None:
    ts = from_beir(tiny_train_beir(tmp_path / "beir"), "train")
    assert len(ts.examples) == 5 and len(ts.docs) == 8
    assert len(ts.examples[3].positives) == 2
    mine_bm25_negatives(ts, k=3)
    for ex in ts.examples:
        assert not set(ex.negatives) & set(ex.positives)
        assert len(ex.negatives) <= 3
    assert ts.docs.index("a star in the black sea") in ts.examples[1].negatives  # shares "black"


def _toy_set() -> TrainingSet:
    rows = [
        {"query": "cat mat", "positives": ["the cat sat on the mat"], "negatives": ["a dog", "sun"],
         "teacher_scores": {"positives": [3.0], "negatives": [1.0, 0.0]}},
        {"query": "dog black", "positives": ["a dog is black"], "negatives": ["the moon", "tea"],
         "teacher_scores": {"positives": [2.5], "negatives": [0.5, 0.2]}},
        {"query": "sun moon", "positives": ["the sun and the moon"], "negatives": ["rock", "bread"],
         "teacher_scores": {"positives": [2.0], "negatives": [1.5, -1.0]}},
        {"query": "sea water", "positives": ["green sea water"], "negatives": ["star", "bee"],
         "teacher_scores": {"positives": [4.0], "negatives": [0.0, 0.1]}},
    ]  # fmt: skip
    return TrainingSet.from_rows(rows)


# ------------------------------------------------------------------ full loop
@pytest.mark.parametrize("loss", ["contrastive", "margin_mse", "listwise", "lambdarank"])
def test_train_encoder_each_loss_runs(loss: str) -> None:
    enc = make_tiny_encoder()
    cfg = TrainConfig(loss=loss, steps=3, batch_size=2, negatives=2, lr=1e-3, show_progress=False)  # type: ignore[arg-type]
    result = train_encoder(enc, _toy_set(), cfg)
    assert result.steps_done == 3 and all(math.isfinite(x) for x in result.losses)
    assert not enc.training


def test_distillation_without_teacher_is_a_clear_error() -> None:
    ts = _toy_set()
    ts.examples[0].teacher_negatives = None
    with pytest.raises(ValueError, match="teacher scores"):
        train_encoder(make_tiny_encoder(), ts, TrainConfig(loss="margin_mse", steps=1, show_progress=False))


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path: Path) -> None:
    ts = _toy_set()
    kw = {"steps": 6, "batch_size": 2, "negatives": 2, "lr": 1e-3, "grad_accum": 2, "show_progress": False}
    full = make_tiny_encoder()
    full.config.extra = {}
    res_full = train_encoder(full, ts, TrainConfig(**kw))  # type: ignore[arg-type]
    part = make_tiny_encoder()
    first = train_encoder(part, ts, TrainConfig(**kw, time_budget_s=0.0), checkpoint_dir=tmp_path / "ck")  # type: ignore[arg-type]
    assert first.stopped == "time_budget" and first.steps_done == 1
    assert (tmp_path / "ck" / "optimizer.safetensors").is_file()
    resumed = make_tiny_encoder(seed=5)  # different start: everything must come from the checkpoint
    resumed.load_state_dict(make_tiny_encoder().state_dict())
    res = train_encoder(resumed, ts, TrainConfig(**kw), checkpoint_dir=tmp_path / "ck", resume=True)  # type: ignore[arg-type]
    assert res.resumed_from == 1 and res.steps_done == 6
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    np.testing.assert_allclose(res.losses, res_full.losses[1:], rtol=1e-5)


def test_nan_loss_stops_with_a_clear_message() -> None:
    enc = make_tiny_encoder()
    with torch.no_grad():
        enc.mean_head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="loss is nan at step 0"):
        train_encoder(enc, _toy_set(), TrainConfig(steps=2, batch_size=2, show_progress=False))


def test_freeze_layers_and_backbone() -> None:
    enc = make_tiny_encoder()
    apply_freezing(enc, freeze_layers=1)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert not any("layer.0." in n or "embeddings" in n for n in trainable)
    assert any("layer.1." in n for n in trainable) and "mean_head.weight" in trainable
    apply_freezing(enc, freeze_backbone=True)
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == {
        "mean_head.weight", "mean_head.bias", "var_head.weight", "var_head.bias"
    }  # fmt: skip


def test_lora_trains_and_merges_into_plain_weights(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    apply_freezing(enc, lora_r=2)
    train_encoder(enc, _toy_set(), TrainConfig(steps=3, batch_size=2, lr=1e-2, show_progress=False))
    merge_lora(enc)
    after = enc.backbone.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("query" in k or "value" in k) for k in changed)
    enc.save_pretrained(tmp_path / "m")
    again = GaussianEncoder.from_pretrained(tmp_path / "m")
    batch = enc.tokenize(["the cat"], 16)
    torch.testing.assert_close(again(**batch), enc(**batch))


def _lora_trained_on_a_saved_backbone(tmp_path: Path) -> GaussianEncoder:
    tiny = make_tiny_encoder()
    base = tmp_path / "base"  # the "pinned backbone": a plain Hugging Face folder
    tiny.backbone.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    enc = GaussianEncoder.from_backbone(base, dim=8, max_length=64, query_max_length=32)
    apply_freezing(enc, lora_r=2)
    train_encoder(enc, _toy_set(), TrainConfig(steps=3, batch_size=2, lr=1e-2, show_progress=False))
    return enc


def test_lora_delta_save_stores_factors_and_loads_exactly_the_merged_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    enc = _lora_trained_on_a_saved_backbone(tmp_path)
    delta_dir = enc.save_pretrained(tmp_path / "delta", include_backbone=False)
    full_dir = enc.save_pretrained(tmp_path / "full")  # a full save of a wrapped encoder holds merged weights
    delta = load_file(str(delta_dir / "delta.safetensors"))
    backbone = sorted(k for k in delta if k.startswith("backbone."))
    assert backbone and all(k.endswith((".weight.lora_A", ".weight.lora_B", ".weight.lora_scaling")) for k in backbone)
    assert all(("query" in k or "value" in k) for k in backbone)
    a = delta["backbone.encoder.layer.0.attention.self.query.weight.lora_A"]
    assert a.shape[0] == 2 and float(delta["backbone.encoder.layer.0.attention.self.query.weight.lora_scaling"]) == 2.0
    from_delta = GaussianEncoder.from_pretrained(delta_dir).state_dict()
    from_full = GaussianEncoder.from_pretrained(full_dir).state_dict()
    merge_lora(enc)  # peft's own merge: the reference
    merged = enc.state_dict()
    assert set(from_delta) == set(merged) == set(from_full)
    for key, value in merged.items():
        assert torch.equal(from_delta[key], value), key
        assert torch.equal(from_full[key], value), key
    assert not torch.equal(
        merged["backbone.encoder.layer.0.attention.self.query.weight"],
        GaussianEncoder.from_backbone(tmp_path / "base", dim=8).state_dict()[
            "backbone.encoder.layer.0.attention.self.query.weight"
        ],
    )


def test_lora_delta_with_a_missing_factor_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    enc = _lora_trained_on_a_saved_backbone(tmp_path)
    out = enc.save_pretrained(tmp_path / "delta", include_backbone=False)
    delta = load_file(str(out / "delta.safetensors"))
    del delta["backbone.encoder.layer.1.attention.self.value.weight.lora_B"]
    save_file(delta, str(out / "delta.safetensors"))
    with pytest.raises(NotAnEncoderError, match=r"layer\.1\.attention\.self\.value\.weight needs 2-D"):
        GaussianEncoder.from_pretrained(out)


# ------------------------------------------------------------------ fast path
@pytest.mark.parametrize(
    ("pooling", "var_token", "normalize"), [("cls", True, False), ("mean", True, True), ("mean", False, True)]
)
def test_features_path_equals_forward(
    tmp_path: Path, pooling: Literal["cls", "mean"], var_token: bool, normalize: bool
) -> None:
    enc = make_tiny_encoder(pooling=pooling, var_token=var_token, normalize_pooled=normalize)
    texts = ["the cat sat on the mat", "a dog", "", "hello world query document gaussian text"]
    feats = compute_features(enc, texts, max_length=32, cache_dir=tmp_path, batch_size=3, show_progress=False)
    again = compute_features(enc, texts[::-1], max_length=32, cache_dir=tmp_path, show_progress=False)
    np.testing.assert_array_equal(again.pooled, feats.pooled[::-1])
    mean, var = heads_forward(enc, *feats.torch())
    with torch.no_grad():
        ref_mean, ref_var = enc(**enc.tokenize(texts, 32))
    torch.testing.assert_close(mean.detach(), ref_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var.detach(), ref_var, rtol=1e-4, atol=1e-5)


def test_heads_only_cached_training_loads_as_a_normal_encoder(tmp_path: Path) -> None:
    enc = make_tiny_encoder(pooling="mean")
    backbone_before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    ts = _toy_set()
    cfg = TrainConfig(steps=60, batch_size=4, lr=1e-2, temperature=0.5, show_progress=False)
    result = train_heads_cached(enc, ts, cfg, cache_dir=tmp_path / "cache")
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    assert all(torch.equal(v, enc.backbone.state_dict()[k]) for k, v in backbone_before.items())
    enc.save_pretrained(tmp_path / "m")
    loaded = GaussianEncoder.from_pretrained(tmp_path / "m")
    feats = compute_features(loaded, ts.docs, max_length=64, cache_dir=tmp_path / "cache", show_progress=False)
    g = encode_from_features(loaded, feats)
    ref = loaded.encode_documents(ts.docs)
    np.testing.assert_allclose(g.mean, ref.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.var, ref.var, rtol=1e-4, atol=1e-5)


def test_heads_cached_sampled_softmax_and_in_batch() -> None:
    ts = _toy_set()
    for extra in ({"corpus_sample": 3}, {"full_corpus": False}, {"full_corpus": False, "in_batch": False}):
        enc = make_tiny_encoder()
        cfg = TrainConfig(steps=3, batch_size=2, lr=1e-2, show_progress=False, **extra)  # type: ignore[arg-type]
        result = train_heads_cached(enc, ts, cfg)
        assert result.steps_done == 3 and all(math.isfinite(x) for x in result.losses)


def test_heads_cached_resume_matches(tmp_path: Path) -> None:
    ts = _toy_set()
    kw = {"steps": 8, "batch_size": 2, "lr": 1e-2, "loss": "lambdarank", "negatives": 2, "show_progress": False}
    a = make_tiny_encoder()
    train_heads_cached(a, ts, TrainConfig(**kw), cache_dir=tmp_path / "c")  # type: ignore[arg-type]
    b = make_tiny_encoder()
    ck = {"cache_dir": tmp_path / "c", "checkpoint_dir": tmp_path / "k"}
    train_heads_cached(b, ts, TrainConfig(**kw, time_budget_s=0.0), **ck)  # type: ignore[arg-type]
    b2 = make_tiny_encoder()
    train_heads_cached(b2, ts, TrainConfig(**kw), **ck, resume=True)  # type: ignore[arg-type]
    torch.testing.assert_close(a.mean_head.weight, b2.mean_head.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.var_head.bias, b2.var_head.bias, rtol=0, atol=1e-6)


def test_var_lr_gives_the_variance_head_its_own_learning_rate(tmp_path: Path) -> None:
    ts = _toy_set()
    kw = {"steps": 8, "batch_size": 2, "lr": 1e-2, "show_progress": False}
    moved = {}
    for var_lr in (None, 1e-4, 0.0):
        enc = make_tiny_encoder()
        var0, mean0 = enc.var_head.weight.detach().clone(), enc.mean_head.weight.detach().clone()
        train_heads_cached(enc, ts, TrainConfig(**kw, var_lr=var_lr), cache_dir=tmp_path / "c")  # type: ignore[arg-type]
        moved[var_lr] = float((enc.var_head.weight - var0).abs().max())
        assert not torch.equal(enc.mean_head.weight, mean0)  # the means train at lr in every case
    assert moved[0.0] == 0.0 and 0.0 < moved[1e-4] < moved[None] / 10
    # the two optimiser groups survive a checkpoint: an interrupted run resumes to the same heads
    a = make_tiny_encoder()
    train_heads_cached(a, ts, TrainConfig(**kw, var_lr=1e-3), cache_dir=tmp_path / "c")  # type: ignore[arg-type]
    ck = {"cache_dir": tmp_path / "c", "checkpoint_dir": tmp_path / "k"}
    train_heads_cached(make_tiny_encoder(), ts, TrainConfig(**kw, var_lr=1e-3, time_budget_s=0.0), **ck)  # type: ignore[arg-type]
    b = make_tiny_encoder()
    train_heads_cached(b, ts, TrainConfig(**kw, var_lr=1e-3), **ck, resume=True)  # type: ignore[arg-type]
    torch.testing.assert_close(a.var_head.weight, b.var_head.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.mean_head.weight, b.mean_head.weight, rtol=0, atol=1e-6)
    for bad in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="var_lr"):
            TrainConfig(var_lr=bad)


# ------------------------------------------------------------------ teacher and CLI
def test_int8_teacher_scores_and_cache(tmp_path: Path) -> None:
    from kl_retrievers.training.teacher import CrossEncoderTeacher, add_teacher_scores

    teacher = CrossEncoderTeacher(cache_dir=tmp_path / "t")
    ts = TrainingSet.from_rows(
        [{"query": "what is a cat", "positives": ["A cat is a small furry mammal kept as a pet."],
          "negatives": ["The stock market fell sharply on Tuesday."]}]
    )  # fmt: skip
    assert add_teacher_scores(ts, teacher) == 2
    ex = ts.examples[0]
    assert ex.has_teacher and ex.teacher_positives[0] > ex.teacher_negatives[0]  # type: ignore[index]
    again = CrossEncoderTeacher(cache_dir=tmp_path / "t")
    assert len(again._cache) == 2
    assert again.score([("what is a cat", ts.docs[0])])[0] == pytest.approx(ex.teacher_positives[0])  # type: ignore[index]


def test_cli_train_heads_only_writes_model_card_and_command(tmp_path: Path) -> None:
    from kl_retrievers.training.cli import main

    enc = make_tiny_encoder(pooling="mean")
    base = tmp_path / "tiny-base"
    enc.backbone.save_pretrained(base)
    tok = enc.tokenizer
    tok.save_pretrained(base)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"query": "cat mat", "positives": ["the cat sat on the mat"], "negatives": ["a dog"]},
        {"query": "sun moon", "positives": ["the sun and the moon"], "negatives": ["rock"]},
        {"query": "sea water", "positives": ["green sea water"]},
    ]))  # fmt: skip
    beir = tiny_train_beir(tmp_path / "beir")
    out = tmp_path / "model"
    argv = ["train", "--data", str(data), "--data", str(beir), "--out", str(out), "--base", str(base),
            "--heads-only-cached", "--steps", "20", "--batch-size", "4", "--dim", "8", "--hard-negatives", "bm25",
            "--corpus-sample", "4",
            "--cache-dir", str(tmp_path / "cache"), "--seed", "3", "--var-lr", "1e-4", "--no-progress",
            "--max-length", "32"]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    training = cfg["encoder"]["extra"]["training"]
    assert training["command"].startswith("kl-retrievers train --data")
    assert training["recipe"]["seed"] == 3 and training["steps_done"] == 20
    assert training["recipe"]["var_lr"] == 1e-4
    card = (out / "README.md").read_text()
    assert "kl-retrievers train" in card and "hardware" in card
    assert (out / "delta.safetensors").is_file()
    loaded = GaussianEncoder.from_pretrained(out)
    assert loaded.config.dim == 8
    # a diverging run exits 1 with a message, never a traceback
    assert main([*argv[:-2], "--lr", "1e30", "--max-length", "32", "--out", str(tmp_path / "bad")]) in (0, 1)


def test_cli_train_lora_saves_the_adapter_as_factors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from kl_retrievers.training.cli import main

    enc = make_tiny_encoder(pooling="mean")
    base = tmp_path / "tiny-base"
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    out = tmp_path / "model"
    argv = ["train", "--data", str(tiny_train_beir(tmp_path / "beir")), "--out", str(out), "--base", str(base),
            "--lora-r", "2", "--steps", "3", "--batch-size", "2", "--lr", "1e-2", "--dim", "8",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--max-length", "32"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]["recipe"]["mode"] == "lora"
    delta = load_file(str(out / "delta.safetensors"))
    factored = [k for k in delta if k.endswith(".lora_A")]
    assert factored and not [k for k in delta if k.startswith("backbone.") and k.endswith(".weight")]
    loaded = GaussianEncoder.from_pretrained(out)
    plain = GaussianEncoder.from_backbone(base, dim=8)
    key = factored[0][: -len(".lora_A")]
    assert not torch.equal(loaded.state_dict()[key], plain.state_dict()[key])  # the adapter was applied


# ------------------------------------------------------------------ real data, real backbone
def test_heads_only_on_real_scifact_slice_lowers_the_loss(tmp_path: Path, scifact_dir: Path) -> None:
    ts_full = from_beir(scifact_dir, "train")
    rng = np.random.default_rng(0)
    examples = [ts_full.examples[i] for i in rng.choice(len(ts_full.examples), 40, replace=False)]
    pos = sorted({d for ex in examples for d in ex.positives})
    others = [d for d in rng.choice(len(ts_full.docs), 200, replace=False).tolist() if d not in set(pos)]
    keep = pos + others[: 160 - len(pos)]
    remap = {d: i for i, d in enumerate(keep)}
    rows = [
        {"query": ts_full.queries[ex.query], "positives": [ts_full.docs[d] for d in ex.positives]} for ex in examples
    ]
    ts = TrainingSet.from_rows(rows)
    ts.docs += [ts_full.docs[d] for d in keep if ts_full.docs[d] not in set(ts.docs)]
    assert len(remap) == len(keep) and len(ts.docs) == len(keep)
    enc = GaussianEncoder.from_backbone(
        "sentence-transformers/all-MiniLM-L6-v2", pooling="mean", normalize_pooled=True, max_length=96
    )
    cfg = TrainConfig(steps=150, batch_size=16, lr=1e-3, temperature=0.05, show_progress=False)
    result = train_heads_cached(enc, ts, cfg, cache_dir=tmp_path / "cache")
    assert np.mean(result.losses[-20:]) < 0.7 * np.mean(result.losses[:20])
