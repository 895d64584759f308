"""Training fixes: the query prefix in training, positives of a repeated query text never
negatives, float32 full-corpus scores under bf16 autocast, seed checked, heads back on their
device, replace=False mining depth, and a divergence check on the weights."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder
from kl_retrievers.training import losses as loss_fns
from kl_retrievers.training import trainer
from kl_retrievers.training.data import TrainingSet, mine_bm25_negatives, mine_negatives_from_scores
from kl_retrievers.training.features import compute_features
from kl_retrievers.training.trainer import (
    TrainConfig,
    TrainingDivergedError,
    _loss_from_scores,
    _sample,
    encode_from_features,
    train_encoder,
    train_heads_cached,
)

PREFIX = "query document "  # words of the tiny vocabulary


def _rows_set() -> TrainingSet:
    return TrainingSet.from_rows(
        [
            {"query": "the cat sat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"]},
            {"query": "green tea", "positives": ["green tea and bread"], "negatives": ["the moon and the star"]},
            {"query": "black rock", "positives": ["water on black rock"], "negatives": ["a train at sea"]},
        ]
    )


def _spy_tokenize(enc: GaussianEncoder, calls: list[tuple[list[str], int]]) -> None:
    real = enc.tokenize

    def spy(texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        calls.append((list(texts), max_length))
        return real(texts, max_length)

    enc.tokenize = spy  # type: ignore[method-assign]


# ------------------------------------------------------------------ 1. query prefix
def test_train_encoder_tokenizes_queries_as_encode_queries_does() -> None:
    enc = make_tiny_encoder(extra={"query_prefix": PREFIX})
    ts = _rows_set()
    seen: list[tuple[list[str], int]] = []
    _spy_tokenize(enc, seen)
    cfg = TrainConfig(steps=1, batch_size=3, negatives=1, lr=1e-4, show_progress=False)
    train_encoder(enc, ts, cfg)
    q_texts = {t for texts, n in seen if n == enc.config.query_max_length for t in texts}
    d_texts = {t for texts, n in seen if n == enc.config.max_length for t in texts}
    seen.clear()
    enc.encode_queries(ts.queries)
    inference = {t for texts, _ in seen for t in texts}
    assert q_texts == inference == {PREFIX + q for q in ts.queries}
    assert d_texts and not any(t.startswith(PREFIX) for t in d_texts)  # documents get no prefix


def test_heads_cached_query_features_are_those_of_encode_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = make_tiny_encoder(extra={"query_prefix": PREFIX})
    ts = _rows_set()
    featurised: list[list[str]] = []

    def spy(encoder: GaussianEncoder, texts: list[str], **kw: Any) -> Any:
        featurised.append(list(texts))
        return compute_features(encoder, texts, **kw)

    monkeypatch.setattr(trainer, "compute_features", spy)
    train_heads_cached(enc, ts, TrainConfig(steps=1, batch_size=3, lr=1e-4, show_progress=False))
    assert featurised[0] == [PREFIX + q for q in ts.queries] and featurised[1] == ts.docs
    assert trainer.prefixed_queries(enc, ts.queries) == featurised[0]
    fast = encode_from_features(enc, compute_features(enc, featurised[0], max_length=32, show_progress=False))
    ref = enc.encode_queries(ts.queries)
    np.testing.assert_allclose(fast.mean, ref.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast.var, ref.var, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ 2. positives of a repeated query text
def _dup_set() -> TrainingSet:
    return TrainingSet.from_rows(
        [
            {"query": "cat mat", "positives": ["the cat sat on the mat"]},
            {"query": "cat mat", "positives": ["a cat on the mat"]},  # same query, another judged positive
            {"query": "sun", "positives": ["a dog in the sun"]},
            {"query": "tea", "positives": ["green tea and bread"]},
        ]
    )


def test_mining_never_takes_a_positive_of_the_same_query_text() -> None:
    ts = _dup_set()
    a, b = ts.examples[0].positives[0], ts.examples[1].positives[0]

    def score_fn(rows: list[int]) -> np.ndarray:
        s = np.zeros((len(rows), len(ts.docs)))
        for r, q in enumerate(rows):
            if q == 0:
                s[r, [a, b]] = [5.0, 4.0]
        return s

    mine_negatives_from_scores(ts, score_fn, k=1, show_progress=False)
    for ex in ts.examples[:2]:
        assert len(ex.negatives) == 1 and not {a, b} & set(ex.negatives), ex.negatives
    ts = _dup_set()
    mine_bm25_negatives(ts, k=2)
    for ex in ts.examples[:2]:
        assert not {a, b} & set(ex.negatives), ex.negatives
    assert ts.positives_by_query() == {0: {a, b}, 1: {ts.examples[2].positives[0]}, 2: {ts.examples[3].positives[0]}}


def test_sample_and_loss_mask_every_positive_of_the_query_text() -> None:
    ts = _dup_set()
    pos = {ts.examples[0].positives[0], ts.examples[1].positives[0]}  # both judged positives of "cat mat"
    cfg = TrainConfig(steps=1, batch_size=4, negatives=30, show_progress=False)
    for step in range(5):
        batch = _sample(ts, cfg, step, 0, False)
        for q, row, masked in zip(batch.queries, batch.cands, batch.positives, strict=True):
            if q == 0:
                assert masked == pos and not pos & set(row[1:].tolist())  # random negatives skip both
    two = TrainingSet(ts.queries, ts.docs, ts.examples[:2])
    batch = _sample(two, TrainConfig(steps=1, batch_size=2, negatives=0, show_progress=False), 0, 0, False)
    cols = np.asarray(sorted(pos))
    loss = _loss_from_scores(cfg, batch, None, torch.zeros(2, 2), cols)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)  # the other positive is masked, not a negative (was log 2)


def test_a_rows_negative_that_is_a_judged_positive_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.data"):
        ts = TrainingSet.from_rows(
            [
                {"query": "q", "positives": ["A"], "negatives": ["A", "B"], "teacher_scores": {
                    "positives": [3.0], "negatives": [2.5, 1.0]}},
                {"query": "q", "positives": ["C"], "negatives": ["B", "A"]},  # A: a judged positive of "q"
            ]
        )  # fmt: skip
    doc = {t: i for i, t in enumerate(ts.docs)}
    assert ts.examples[0].negatives == [doc["B"]] and ts.examples[0].teacher_negatives == [1.0]
    assert ts.examples[0].has_teacher
    assert ts.examples[1].negatives == [doc["B"]]
    assert "dropped 2 negatives" in caplog.text


# ------------------------------------------------------------------ 3. full-corpus scores outside bf16 autocast
def test_full_corpus_scores_run_in_float32_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    def cpu_bf16(device: torch.device, cfg: TrainConfig) -> AbstractContextManager[Any]:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    real: Callable[..., torch.Tensor] = loss_fns.score_matrix
    errors: list[float] = []

    def spy(qm: torch.Tensor, qv: torch.Tensor, dm: torch.Tensor, dv: torch.Tensor, sim: str = "neg_kl") -> Any:
        out = real(qm, qv, dm, dv, sim)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):  # the same inputs, plain float32
            ref = real(*(t.detach().float() for t in (qm, qv, dm, dv)), sim)
        assert out.dtype == torch.float32
        errors.append(float((out.detach() - ref).abs().max()))
        return out

    monkeypatch.setattr(trainer, "_autocast", cpu_bf16)
    monkeypatch.setattr(loss_fns, "score_matrix", spy)
    enc = make_tiny_encoder(dim=32)
    result = train_heads_cached(enc, _dup_set(), TrainConfig(steps=2, batch_size=4, lr=1e-3, show_progress=False))
    assert result.steps_done == 2 and len(errors) == 2
    # -KL's expansion cancels terms of ~10: its bf16 matmuls were off by ~1e-1 (t5_bf16.py: loss 0.399 vs 0.139)
    assert max(errors) <= 1e-6, errors


# ------------------------------------------------------------------ 4. seed
@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_seed_is_checked(seed: Any) -> None:
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        TrainConfig(seed=seed)


# ------------------------------------------------------------------ 5. heads back beside the backbone
def test_heads_are_moved_back_beside_the_backbone_after_training() -> None:
    """On a GPU the heads train on cuda while the backbone stays put; they must come back (the old code
    left a mixed-device encoder). On CPU the move is observed: each head is sent back to its device."""
    enc = make_tiny_encoder()
    moves: list[tuple[str, Any]] = []
    for name in ("mean_head", "var_head"):
        head = getattr(enc, name)
        original = head.to

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            moves.append((_name, args[0] if args else kwargs.get("device")))
            return _original(*args, **kwargs)

        head.to = spy  # type: ignore[method-assign]
    train_heads_cached(enc, _rows_set(), TrainConfig(steps=1, batch_size=3, device="cpu", show_progress=False))
    assert ("mean_head", torch.device("cpu")) in moves and ("var_head", torch.device("cpu")) in moves
    assert {p.device.type for p in enc.parameters()} == {"cpu"}
    enc.encode_queries(["the cat"])


# ------------------------------------------------------------------ 6. replace=False mines k new negatives
def test_replace_false_adds_k_new_negatives() -> None:
    rows = [{"query": "q", "positives": ["P"], "negatives": ["N1", "N2"]}]
    ts = TrainingSet.from_rows(rows + [{"query": f"x{i}", "positives": [f"D{i}"]} for i in range(6)])

    def score_fn(rows: list[int]) -> np.ndarray:  # P, N1, N2 on top, then D0..D5
        return np.tile(-np.arange(len(ts.docs), dtype=float), (len(rows), 1))

    mine_negatives_from_scores(ts, score_fn, k=2, replace=False, show_progress=False)
    assert [ts.docs[d] for d in ts.examples[0].negatives] == ["N1", "N2", "D0", "D1"]
    docs = ["cat sun", "cat", "cat cat", "cat dog", "cat tea", "cat moon"]
    ts = TrainingSet.from_rows(
        [{"query": "cat", "positives": [docs[0]], "negatives": docs[1:3]}]
        + [{"query": f"x{i}", "positives": [d]} for i, d in enumerate(docs[3:])]
    )
    mine_bm25_negatives(ts, k=2, replace=False)
    assert len(ts.examples[0].negatives) == 4


# ------------------------------------------------------------------ 7. weights that diverge
def test_non_finite_weights_stop_the_run_before_a_checkpoint(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    cfg = TrainConfig(steps=1, batch_size=3, lr=3e37, weight_decay=10.0, warmup_steps=0, show_progress=False)
    with pytest.raises(TrainingDivergedError, match="weights became NaN or infinite at step 0"):
        train_heads_cached(enc, _rows_set(), cfg, checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "ck" / "state.json").exists()
