"""Evaluation during head training from backbone features: ``train_heads_cached`` with a ``retrieval_evaluator``.

The fast path computes the evaluation split's backbone features once (queries behind the query prefix, documents
as ``title + " " + text``, the encoder's token budgets; through ``cache_dir``) and evaluates each time by applying
the current heads to them, without running the backbone; the metrics equal the full path's (the evaluator called
with the encoder). Everything runs on a tiny random BERT and a tiny BEIR folder under ``tmp_path``.

Tolerance: the features come from backbone batches other than ``encode_queries`` / ``encode_documents``'
(other texts padded together, other batch shapes), so the Gaussians agree to float32 rounding (about 1e-7
relative), not bit for bit; the metrics are functions of the rankings, which such differences leave unchanged
unless two documents tie to within them, so the metrics are compared to 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder, make_train_world, tiny_train_config
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import encode_dataset
from kl_retrievers.training import TrainingSet, from_beir, retrieval_evaluator, train_heads_cached, trainer

#: Words of the tiny vocabulary (tests/conftest.py); the long document runs past the 64-token budget.
_LONG = " ".join(["water rock sea"] * 40) + " the cat sat on the mat"


def _write_beir(root: Path) -> Path:
    """A BEIR folder with titles, a document longer than the token budget, a repeated text and two splits."""
    docs = {
        "d1": ("cat", "the cat sat on the mat"),
        "d2": ("dog", "a dog is black"),
        "d3": ("", "the sun and the moon"),
        "d4": ("tea", "tea and bread"),
        "d5": ("sea", "green sea water"),
        "d6": ("star", "a star in the black sea"),
        "d7": ("rock", _LONG),
        "d8": ("bee", "the bee is green"),
        "d9": ("tea", "tea and bread"),  # the same encoder input as d4
        "d10": ("moon", "the moon and the star rise"),
    }
    queries = {"q1": "cat mat", "q2": "dog black", "q3": "sun moon", "q4": "sea water", "q5": "bee", "q6": "tea"}
    train = [("q1", "d1"), ("q2", "d2"), ("q3", "d3"), ("q4", "d5"), ("q4", "d7"), ("q5", "d8")]
    dev = [("q1", "d1"), ("q3", "d10"), ("q4", "d7"), ("q5", "d8"), ("q6", "d4"), ("q6", "d9")]
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in docs.items())
    )
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()))
    (root / "qrels").mkdir(exist_ok=True)
    for split, pairs in (("train", train), ("dev", dev)):
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in pairs)
        )
    return root


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_beir(tmp_path_factory.mktemp("stop44_beir") / "beir")


@pytest.fixture(scope="module")
def ts(beir: Path) -> TrainingSet:
    return from_beir(beir, split="train")


#: Encoder variants: [CLS] with [VAR] behind a query prefix; mean pooling without [VAR] or prefix.
_ENCODERS: dict[str, dict[str, Any]] = {
    "cls_var_prefix": {"pooling": "cls", "var_token": True, "extra": {"query_prefix": "query : "}},
    "mean_no_var": {"pooling": "mean", "var_token": False},
}


def _encoder(kind: str, seed: int) -> GaussianEncoder:
    return make_tiny_encoder(seed=seed, **_ENCODERS[kind])


def _count_backbone_calls(encoder: GaussianEncoder) -> list[int]:
    calls: list[int] = []
    encoder.backbone.register_forward_hook(lambda *args: calls.append(1))
    return calls


class _EvaluationBackboneCalls:
    """Backbone passes of the watched encoder during each evaluation (``during``), counted through
    ``trainer._run_evaluation``, and in all (``calls``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        self.during: list[int] = []
        run_evaluation = trainer._run_evaluation

        def counted(encoder: GaussianEncoder, evaluator: Any, step: int) -> dict[str, Any]:
            before = len(self.calls)
            try:
                return run_evaluation(encoder, evaluator, step)
            finally:
                self.during.append(len(self.calls) - before)

        monkeypatch.setattr(trainer, "_run_evaluation", counted)

    def watch(self, encoder: GaussianEncoder) -> GaussianEncoder:
        """Count ``encoder``'s backbone passes from now on (the counts start again)."""
        self.calls.clear()
        self.during.clear()
        encoder.backbone.register_forward_hook(lambda *args: self.calls.append(1))
        return encoder


@pytest.fixture
def feature_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per call of ``RetrievalEvaluator.features`` (the evaluation split's backbone pass)."""
    from kl_retrievers.training import RetrievalEvaluator

    passes: list[int] = []
    features = RetrievalEvaluator.features

    def counted(self: RetrievalEvaluator, *args: Any, **kwargs: Any) -> Any:
        passes.append(1)
        return features(self, *args, **kwargs)

    monkeypatch.setattr(RetrievalEvaluator, "features", counted)
    return passes


# ------------------------------------------------------------------ the features are what the encoder reads
@pytest.mark.parametrize("kind", list(_ENCODERS))
def test_split_features_give_the_encoders_gaussians(beir: Path, kind: str) -> None:
    """Queries behind the prefix, documents as title + text, truncated at the encoder's budgets."""
    enc = _encoder(kind, seed=3)
    ev = retrieval_evaluator(beir)
    q_feats, d_feats = ev.features(enc)
    q, d = encode_dataset(enc, load_beir(beir, "dev"), use_cache=False, show_progress=False)
    gq, gd = trainer.encode_from_features(enc, q_feats), trainer.encode_from_features(enc, d_feats)
    for got, want in ((gq, q), (gd, d)):
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.var, want.var, rtol=1e-5, atol=1e-6)
    # the prefix and the titles matter: features of the bare texts give other Gaussians
    if kind == "cls_var_prefix":
        bare = trainer.compute_features(enc, ev.dataset.query_texts(), max_length=enc.config.query_max_length)
        assert not np.allclose(trainer.encode_from_features(enc, bare).mean, q.mean, atol=1e-3)
    bodies = [ev.dataset.corpus[i]["text"] for i in ev.dataset.doc_ids]
    untitled = trainer.compute_features(enc, bodies, max_length=enc.config.max_length)
    assert not np.allclose(trainer.encode_from_features(enc, untitled).mean, d.mean, atol=1e-3)


@pytest.mark.parametrize(
    ("kind", "similarity", "metric"),
    [
        ("cls_var_prefix", "neg_kl", "ndcg@10"),
        ("mean_no_var", "dot", "mrr@10"),
        ("cls_var_prefix", "cosine", "map@100"),
    ],
)
def test_from_features_equals_a_call(beir: Path, kind: str, similarity: str, metric: str) -> None:
    enc = _encoder(kind, seed=6)
    ev = retrieval_evaluator(beir, metric=metric, similarity=similarity, k=5)
    got = ev.from_features(enc, *ev.features(enc))
    want = ev(enc)
    assert list(got) == [metric]
    assert got[metric] == pytest.approx(want[metric], abs=1e-6)


def test_from_features_refuses_features_of_another_set(beir: Path) -> None:
    enc = _encoder("cls_var_prefix", seed=1)
    ev = retrieval_evaluator(beir)
    q_feats, d_feats = ev.features(enc)
    with pytest.raises(ValueError, match="features of 6 documents given for the evaluation set's 10 documents"):
        ev.from_features(enc, q_feats, trainer.Features(d_feats.pooled[:6], d_feats.var_state[:6]))


# ------------------------------------------------------------------ training: same metrics, no backbone pass
@pytest.mark.parametrize(
    ("kind", "similarity", "metric"), [("cls_var_prefix", "neg_kl", "ndcg@10"), ("mean_no_var", "dot", "mrr@10")]
)
def test_fast_path_evaluations_equal_the_full_paths(
    ts: TrainingSet, beir: Path, kind: str, similarity: str, metric: str
) -> None:
    """The same run evaluated from features (a retrieval_evaluator) and through the backbone (the same
    evaluator behind a plain function, which the fast path calls with the encoder): the same metrics at
    every step, and the same training."""
    ev = retrieval_evaluator(beir, metric=metric, similarity=similarity)
    runs = []
    for evaluator in (ev, lambda encoder: ev(encoder)):
        enc = _encoder(kind, seed=7)
        result = train_heads_cached(
            enc, ts, tiny_train_config(5, similarity=similarity), evaluator=evaluator, eval_every=2
        )
        runs.append((result, enc))
    (fast, enc_fast), (full, enc_full) = runs
    assert [e["step"] for e in fast.evaluations] == [e["step"] for e in full.evaluations] == [2, 4, 5]
    for a, b in zip(fast.evaluations, full.evaluations, strict=True):
        assert a[metric] == pytest.approx(b[metric], abs=1e-6)
    assert fast.losses == full.losses
    assert torch.equal(enc_fast.mean_head.weight, enc_full.mean_head.weight)
    # the last evaluation is of the returned model, scored as evaluate_model scores it
    assert fast.evaluations[-1][metric] == pytest.approx(ev(enc_fast)[metric], abs=1e-6)
    assert 0.0 < fast.evaluations[-1][metric] <= 1.0


def test_fast_path_evaluations_do_not_run_the_backbone(
    ts: TrainingSet, beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ev = retrieval_evaluator(beir)
    counts = _EvaluationBackboneCalls(monkeypatch)
    for evaluator in (ev, lambda encoder: ev(encoder)):
        enc = counts.watch(_encoder("cls_var_prefix", seed=8))
        result = train_heads_cached(enc, ts, tiny_train_config(4), evaluator=evaluator, eval_every=1)
        assert [e["step"] for e in result.evaluations] == [1, 2, 3, 4]
        if evaluator is ev:
            assert counts.during == [0, 0, 0, 0]  # the heads applied to the split's features, computed before training
            assert counts.calls  # the features: the training data's and the split's, once
        else:  # another evaluator is called with the encoder and encodes through the backbone (the hook counts)
            assert len(counts.during) == 4 and all(n > 0 for n in counts.during)


def test_fast_path_evaluation_features_go_through_the_cache(ts: TrainingSet, beir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "features"
    first = _encoder("cls_var_prefix", seed=9)
    before = train_heads_cached(
        first, ts, tiny_train_config(2), cache_dir=cache, evaluator=retrieval_evaluator(beir), eval_every=1
    ).evaluations
    again = _encoder("cls_var_prefix", seed=9)  # the same backbone: every feature is in the cache now
    calls = _count_backbone_calls(again)
    result = train_heads_cached(
        again, ts, tiny_train_config(2), cache_dir=cache, evaluator=retrieval_evaluator(beir), eval_every=1
    )
    assert calls == []
    assert result.evaluations == before


def test_fast_path_training_is_unchanged_by_retrieval_evaluations(ts: TrainingSet, beir: Path) -> None:
    runs = []
    for evaluator in (None, retrieval_evaluator(beir)):
        enc = _encoder("cls_var_prefix", seed=10)
        result = train_heads_cached(enc, ts, tiny_train_config(4), evaluator=evaluator, eval_every=1)
        runs.append((result, {k: v.clone() for k, v in enc.state_dict().items()}))
    (plain, w_plain), (evaluated, w_evaluated) = runs
    assert plain.evaluations == [] and [e["step"] for e in evaluated.evaluations] == [1, 2, 3, 4]
    assert evaluated.losses == plain.losses
    assert all(torch.equal(w_plain[k], w_evaluated[k]) for k in w_plain)


# ------------------------------------------------------------------ the command line
def test_cli_fast_path_evaluates_from_cached_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``kl-retrievers train --heads-only-cached --eval-data``: no backbone pass in the evaluations, and the
    split's features go through ``--cache-dir`` (a second run runs the backbone for nothing)."""
    world = make_train_world(tmp_path / "world")
    eval_data = _write_beir(tmp_path / "eval")  # other texts than the training data's (whose features are cached)
    train, run_evaluation = trainer.train_heads_cached, trainer._run_evaluation
    seen: list[dict[str, Any]] = []
    calls: list[int] = []

    def recorded(encoder: GaussianEncoder, *args: Any, **kwargs: Any) -> Any:
        calls.clear()
        encoder.backbone.register_forward_hook(lambda *a: calls.append(1))
        seen.append({"cache_dir": kwargs.get("cache_dir"), "during": []})
        result = train(encoder, *args, **kwargs)
        seen[-1]["calls"] = len(calls)
        return result

    def counted(encoder: GaussianEncoder, evaluator: Any, step: int) -> dict[str, Any]:
        before = len(calls)
        try:
            return run_evaluation(encoder, evaluator, step)
        finally:
            seen[-1]["during"].append(len(calls) - before)

    monkeypatch.setattr(trainer, "train_heads_cached", recorded)
    monkeypatch.setattr(trainer, "_run_evaluation", counted)
    argv = ["train", "--data", str(world.beir), "--steps", "3", "--batch-size", "2", "--heads-only-cached"]
    argv += ["--cache-dir", str(world.cache), "--no-progress", "--device", "cpu", "--base", str(world.base)]
    argv += ["--dim", "8", "--max-length", "32", "--query-max-length", "16", "--eval-data", str(eval_data)]
    argv += ["--eval-every", "1"]
    for out in ("m1", "m2"):
        assert main([*argv, "--out", str(tmp_path / out)]) == 0
    assert [s["during"] for s in seen] == [[0, 0, 0], [0, 0, 0]]
    assert [Path(s["cache_dir"]) for s in seen] == [world.cache / "features"] * 2
    assert seen[0]["calls"] > 0 and seen[1]["calls"] == 0  # the second run found the split's features cached
    evaluations = [json.loads((tmp_path / o / "config.json").read_text())["encoder"]["extra"]["training"]["evaluations"]
                   for o in ("m1", "m2")]  # fmt: skip
    assert evaluations[0] == evaluations[1] and [e["step"] for e in evaluations[0]] == [1, 2, 3]


def test_the_evaluator_class_checks_its_arguments_when_built(beir: Path) -> None:
    """Built directly (it is public), bad arguments fail at construction, before any training step; a folder loads."""
    from kl_retrievers.training import RetrievalEvaluator

    ev = RetrievalEvaluator(beir, split="dev", metric="mrr@10", k=5)
    assert ev.dataset.split == "dev" and ev.metric == "mrr@10" and ev.k == 5
    assert len(ev.dataset.query_ids) == len(load_beir(beir, "dev").query_ids)
    with pytest.raises(ValueError, match="metric must be one of"):
        RetrievalEvaluator(beir, metric="ndcg@11")
    with pytest.raises(ValueError, match="similarity must be one of"):
        RetrievalEvaluator(beir, similarity="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        RetrievalEvaluator(beir, batch_size=0)
    with pytest.raises(ValueError):
        RetrievalEvaluator(beir, k=0)


def test_a_subclass_with_its_own_call_is_called_as_any_evaluator(
    ts: TrainingSet, beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The features path is for RetrievalEvaluator's own evaluation: a subclass that defines __call__ gets called
    (through the backbone); one that does not keeps the features path."""
    from kl_retrievers.training import RetrievalEvaluator

    seen: list[int] = []

    class Custom(RetrievalEvaluator):
        def __call__(self, encoder: GaussianEncoder) -> dict[str, float]:
            seen.append(1)
            return {"custom": 0.5}

    class Plain(RetrievalEvaluator):
        pass

    counts = _EvaluationBackboneCalls(monkeypatch)
    result = train_heads_cached(
        _encoder("cls_var_prefix", seed=3), ts, tiny_train_config(2), evaluator=Custom(beir), eval_every=1
    )
    assert seen == [1, 1] and [e["custom"] for e in result.evaluations] == [0.5, 0.5]
    enc = counts.watch(_encoder("cls_var_prefix", seed=3))
    plain = train_heads_cached(enc, ts, tiny_train_config(2), evaluator=Plain(beir), eval_every=1)
    assert counts.during == [0, 0] and "ndcg@10" in plain.evaluations[-1]  # the features path: no backbone pass


def test_a_refused_resume_computes_no_evaluation_features(
    ts: TrainingSet, beir: Path, tmp_path: Path, feature_passes: list[int]
) -> None:
    """The split's features are computed after a resume's checks: a resume refused for another recipe pays nothing."""
    computed = feature_passes
    ckpt = tmp_path / "ckpt"
    ev = retrieval_evaluator(beir)
    train_heads_cached(
        _encoder("mean_no_var", seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, evaluator=ev, eval_every=1
    )
    assert computed == [1]
    with pytest.raises(ValueError, match="resume"):
        train_heads_cached(
            _encoder("mean_no_var", seed=2),
            ts,
            tiny_train_config(4, lr=5e-3),
            checkpoint_dir=ckpt,
            resume=True,
            evaluator=ev,
            eval_every=1,
        )
    assert computed == [1]  # refused before the evaluation features
    resumed = train_heads_cached(
        _encoder("mean_no_var", seed=2),
        ts,
        tiny_train_config(4),
        checkpoint_dir=ckpt,
        resume=True,
        evaluator=ev,
        eval_every=1,
    )
    assert computed == [1, 1] and [e["step"] for e in resumed.evaluations] == [1, 2, 3, 4]


def test_a_finished_and_evaluated_resume_computes_no_evaluation_features(
    ts: TrainingSet, beir: Path, tmp_path: Path, feature_passes: list[int]
) -> None:
    computed = feature_passes
    ckpt = tmp_path / "ckpt"
    ev = retrieval_evaluator(beir)
    first = train_heads_cached(
        _encoder("mean_no_var", seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, evaluator=ev
    )
    again = train_heads_cached(
        _encoder("mean_no_var", seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, resume=True, evaluator=ev
    )
    assert computed == [1]  # the finished checkpoint already holds its last evaluation: nothing to compute
    assert again.evaluations == first.evaluations and [e["step"] for e in again.evaluations] == [2]


def test_a_refused_resume_computes_no_training_features_either(
    ts: TrainingSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In Python as on the command line: the recipe is checked before the training data's backbone features."""
    ckpt = tmp_path / "ckpt"
    train_heads_cached(_encoder("mean_no_var", seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt)
    computed: list[str] = []
    compute = trainer.compute_features

    def counted(*args: Any, **kwargs: Any) -> Any:
        computed.append(kwargs.get("desc", ""))
        return compute(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_features", counted)
    with pytest.raises(ValueError, match="resume"):
        train_heads_cached(
            _encoder("mean_no_var", seed=2), ts, tiny_train_config(4, lr=5e-3), checkpoint_dir=ckpt, resume=True
        )
    assert computed == []
    result = train_heads_cached(
        _encoder("mean_no_var", seed=2), ts, tiny_train_config(4), checkpoint_dir=ckpt, resume=True
    )
    assert computed == ["Query features", "Document features"] and result.steps_done == 4 and result.resumed_from == 2
