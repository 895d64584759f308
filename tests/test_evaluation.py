"""Tests for metrics, paired tests, exact -KL retrieval, the encoding cache, baselines and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kl_retrievers.baselines import bm25_run, run_baseline
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import (
    EncodingCache,
    add_evaluate_command,
    default_cache_dir,
    encode_dataset,
    evaluate_model,
    evaluate_run,
    load_per_query,
    model_fingerprint,
    paired_test,
    retrieve_exact,
    run_evaluate,
    save_per_query,
    t_two_sided_p,
    top_k,
    write_trec_run,
)
from kl_retrievers.gaussian import Gaussians, neg_kl_matrix

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr and sleep a lot."},
    {"_id": "d2", "title": "", "text": "Dogs bark at the postman."},
    {"_id": "d3", "title": "Fish ", "text": " Fish swim in water. "},
]
QUERIES = [{"_id": "q1", "text": "why do cats purr"}, {"_id": "q2", "text": "dogs barking"}]
QRELS = {"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"}


def write_beir(
    root: Path,
    corpus: list[dict[str, str]] | None = None,
    queries: list[dict[str, str]] | None = None,
    qrels: dict[str, str] | None = None,
) -> Path:
    """Write a tiny BEIR folder under tmp_path and return it."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in (corpus or CORPUS)))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in (queries or QUERIES)))
    for split, text in (qrels or QRELS).items():
        (root / "qrels" / f"{split}.tsv").write_text(text)
    return root


# ---------------------------------------------------------------------------- metrics


def test_evaluate_run_hand_computed() -> None:
    qrels = {"q1": {"a": 1, "c": 1}, "q2": {"x": 2, "y": 1}, "q3": {"z": 1}}
    run = {
        "q1": {"a": 3.0, "b": 2.0, "c": 1.0},
        "q2": {"y": 2.0, "x": 1.0},
        "q9": {"a": 1.0},  # unjudged: ignored
    }  # q3 missing: scores 0
    agg, pq = evaluate_run(qrels, run)
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))  # linear gains, as trec_eval
    assert pq["q1"]["ndcg@10"] == pytest.approx(ndcg_q1)
    assert pq["q2"]["ndcg@10"] == pytest.approx(ndcg_q2)
    assert pq["q1"]["map@100"] == pytest.approx((1 + 2 / 3) / 2)
    assert pq["q1"]["mrr@10"] == pytest.approx(1.0)
    assert pq["q2"]["recall@100"] == pytest.approx(1.0)
    assert pq["q3"] == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@100": 0.0, "map@100": 0.0}
    assert set(pq) == {"q1", "q2", "q3"}
    assert agg["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 3)
    assert agg["mrr@10"] == pytest.approx(2 / 3)
    assert list(agg) == ["ndcg@10", "mrr@10", "recall@100", "map@100"]


def test_evaluate_run_depth_cutoffs() -> None:
    qrels = {"q": {"rel": 1}}
    run = {"q": {f"n{i}": 100.0 - i for i in range(10)} | {"rel": 50.0}}  # relevant doc at rank 11
    agg, _ = evaluate_run(qrels, run)
    assert agg["ndcg@10"] == 0.0 and agg["mrr@10"] == 0.0
    assert agg["recall@100"] == 1.0 and agg["map@100"] == pytest.approx(1 / 11)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_run(qrels, run, ["p@5"])


# ---------------------------------------------------------------------------- paired test


def test_paired_test_matches_scipy_and_builtin() -> None:
    rng = np.random.default_rng(0)
    a_vals = rng.uniform(size=40)
    b_vals = np.clip(a_vals - 0.05 + rng.normal(scale=0.1, size=40), 0, 1)
    a = {f"q{i}": {"ndcg@10": float(v)} for i, v in enumerate(a_vals)}
    b = {f"q{i}": {"ndcg@10": float(v)} for i, v in enumerate(b_vals)}
    from scipy import stats

    ref = stats.ttest_rel(a_vals, b_vals)
    res = paired_test(a, b)
    assert res.n == 40 and res.method == "paired t-test (scipy)"
    assert res.p_value == pytest.approx(ref.pvalue) and res.t_statistic == pytest.approx(ref.statistic)
    assert res.mean_diff == pytest.approx(float(np.mean(a_vals - b_vals)))
    builtin = paired_test(a, b, use_scipy=False)
    assert builtin.method == "paired t-test (builtin)"
    assert builtin.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    for t, df in [(0.3, 3), (2.0, 10), (-4.5, 299), (12.0, 5)]:
        assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-8, abs=1e-15)
    json.dumps(res.to_dict())


def test_paired_test_edge_cases() -> None:
    a = {"q1": {"m": 0.5}, "q2": {"m": 0.7}}
    assert paired_test(a, a, "m").p_value == 1.0
    shifted = {q: {"m": v["m"] - 0.1} for q, v in a.items()}
    res = paired_test(a, shifted, "m")
    assert res.p_value == 0.0 and math.isinf(res.t_statistic)
    assert res.to_dict()["t_statistic"] == "inf"
    with pytest.raises(ValueError, match="at least 2 shared"):
        paired_test(a, {"q1": {"m": 0.1}}, "m")


# ---------------------------------------------------------------------------- exact retrieval


def random_gaussians(rng: np.random.Generator, n: int, k: int) -> Gaussians:
    return Gaussians(rng.normal(size=(n, k)), np.exp(rng.normal(scale=0.7, size=(n, k))))


def test_top_k() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    idx, vals = top_k(scores, 2)
    assert idx.tolist() == [[1, 3], [0, 1]] and vals.tolist() == [[0.9, 0.7], [4.0, 3.0]]
    idx, _ = top_k(scores, 10)
    assert idx.shape == (2, 4) and idx[0].tolist() == [1, 3, 2, 0]


@pytest.mark.parametrize("as_torch", [False, True])
def test_retrieve_exact_matches_brute_force(as_torch: bool) -> None:
    rng = np.random.default_rng(1)
    q, d = random_gaussians(rng, 7, 16), random_gaussians(rng, 300, 16)
    qids, dids = [f"q{i}" for i in range(7)], [f"d{j}" for j in range(300)]
    ref = neg_kl_matrix(q, d)
    qq, dd = (q.torch(), d.torch()) if as_torch else (q.astype(np.float32), d.astype(np.float32))
    run = retrieve_exact(qq, dd, qids, dids, k=20, max_block_elements=600)  # several query blocks
    for i, qid in enumerate(qids):
        expected = np.argsort(-ref[i])[:20]
        assert list(run[qid]) == [dids[j] for j in expected]
        got = np.array(list(run[qid].values()))
        np.testing.assert_allclose(got, ref[i, expected], rtol=1e-5, atol=1e-4)


def test_retrieve_exact_means_only() -> None:
    rng = np.random.default_rng(2)
    q, d = random_gaussians(rng, 5, 8), random_gaussians(rng, 120, 8)
    run = retrieve_exact(q, d, list("abcde"), [str(j) for j in range(120)], k=10, means_only=True)
    ref = -((q.mean[:, None, :] - d.mean[None, :, :]) ** 2).sum(-1)
    for i, qid in enumerate("abcde"):
        expected = np.argsort(-ref[i])[:10]
        assert [int(x) for x in run[qid]] == expected.tolist()
        np.testing.assert_allclose(list(run[qid].values()), ref[i, expected])
    # unit variances: -KL ranks like -||mu_q - mu_d||^2
    ones_q, ones_d = Gaussians(q.mean, np.ones_like(q.mean)), Gaussians(d.mean, np.ones_like(d.mean))
    kl = retrieve_exact(ones_q, ones_d, list("abcde"), [str(j) for j in range(120)], k=10)
    assert all(list(kl[x]) == list(run[x]) for x in "abcde")


def test_retrieve_exact_validates() -> None:
    rng = np.random.default_rng(3)
    q, d = random_gaussians(rng, 2, 4), random_gaussians(rng, 3, 4)
    with pytest.raises(ValueError, match="ids do not match"):
        retrieve_exact(q, d, ["a"], ["x", "y", "z"])
    run = retrieve_exact(q, d, ["a", "b"], ["x", "y", "z"], k=100)
    assert all(len(v) == 3 for v in run.values())


# ---------------------------------------------------------------------------- encoder + cache


class FakeConfig:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim}


class FakeEncoder:
    """Deterministic Gaussians per text (bag of hashed words), counting calls."""

    name_or_path = "fake-encoder"

    def __init__(self, dim: int = 8) -> None:
        self.config = FakeConfig(dim)
        self.calls: list[tuple[str, int, Any]] = []

    def _encode(self, texts: list[str]) -> Gaussians:
        k = self.config.dim
        mean, var = np.zeros((len(texts), k)), np.ones((len(texts), k))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                h = int(hashlib.md5(w.strip(".?").encode()).hexdigest(), 16)
                mean[i, h % k] += 1.0
            var[i] += 0.1 * (len(t) % 5)
        return Gaussians(mean.astype(np.float32), var.astype(np.float32))

    def encode_queries(self, texts: list[str], batch_size: int = 32, show_progress_bar: bool = False) -> Gaussians:
        self.calls.append(("queries", len(texts), None))
        return self._encode(texts)

    def encode_documents(
        self, texts: list[str], batch_size: int = 32, show_progress_bar: bool = False, max_length: int | None = None
    ) -> Gaussians:
        self.calls.append(("documents", len(texts), max_length))
        return self._encode(texts)


def test_encode_dataset_order_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_beir(write_beir(tmp_path / "beir"), "test")
    enc = FakeEncoder()
    cache_dir = tmp_path / "cache"
    q, d = encode_dataset(enc, ds, cache_dir=cache_dir, max_length=64, show_progress=False)
    direct = enc._encode(ds.document_texts())
    np.testing.assert_allclose(d.mean, direct.mean)  # the longest-first sort is undone
    np.testing.assert_allclose(q.var, enc._encode(ds.query_texts()).var)
    assert [c[0] for c in enc.calls] == ["queries", "documents"]
    assert enc.calls[1][2] == 64  # max_length passed where accepted
    enc.calls.clear()
    _, d2 = encode_dataset(enc, ds, cache_dir=cache_dir, max_length=64, show_progress=False)
    assert enc.calls == []  # hit
    np.testing.assert_array_equal(d2.mean, d.mean)
    encode_dataset(enc, ds, cache_dir=cache_dir, max_length=32, show_progress=False)
    assert [c[0] for c in enc.calls] == ["documents"]  # another document max_length: documents miss
    enc.calls.clear()
    encode_dataset(enc, ds, cache_dir=cache_dir, max_length=64, query_max_length=16, show_progress=False)
    assert [c[0] for c in enc.calls] == ["queries"]  # another query max_length: queries miss
    enc.calls.clear()
    other = FakeEncoder(dim=4)  # other config: other fingerprint
    assert model_fingerprint(other) != model_fingerprint(enc)
    encode_dataset(other, ds, cache_dir=cache_dir, max_length=64, show_progress=False)
    assert len(other.calls) == 2
    # corrupt every cached document array: recompute, not crash
    for f in cache_dir.glob("gauss-documents-*/mean.npy"):
        f.write_bytes(b"not an npy file")
    encode_dataset(enc, ds, cache_dir=cache_dir, max_length=64, show_progress=False)
    assert [c[0] for c in enc.calls] == ["documents"]
    enc.calls.clear()
    encode_dataset(enc, ds, cache_dir=cache_dir, max_length=64, show_progress=False)
    assert enc.calls == []  # rewritten after the corrupt entry
    # the key is the encoder input: a rewritten file with the same documents still hits...
    corpus = tmp_path / "beir" / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + "\n")
    encode_dataset(enc, load_beir(tmp_path / "beir"), cache_dir=cache_dir, max_length=64, show_progress=False)
    assert enc.calls == []
    # ...and a changed document text invalidates the document encodings only
    corpus.write_text(corpus.read_text().replace("Fish", "Whales", 1))
    encode_dataset(enc, load_beir(tmp_path / "beir"), cache_dir=cache_dir, max_length=64, show_progress=False)
    assert [c[0] for c in enc.calls] == ["documents"]
    # env var sets the default cache directory
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    encode_dataset(enc, ds, show_progress=False)
    assert any((tmp_path / "envcache").iterdir())
    assert not any(p.suffix == ".pkl" for p in cache_dir.rglob("*"))


def test_model_fingerprint_sees_weights() -> None:
    class TorchEncoder(FakeEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Linear(3, 2)

    a = TorchEncoder()
    fp = model_fingerprint(a)
    with torch.no_grad():
        a.model.weight.add_(1.0)
    assert model_fingerprint(a) != fp


def test_model_fingerprint_ignores_the_name_of_identical_weights() -> None:
    class TorchEncoder(FakeEncoder):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name_or_path = name
            torch.manual_seed(0)
            self.model = torch.nn.Linear(3, 2)

    # the same weights loaded by bundled name and by folder path share one cache entry
    assert model_fingerprint(TorchEncoder("kl_retrievers:m")) == model_fingerprint(TorchEncoder("/some/folder/m"))

    class Named:
        def __init__(self, name: str) -> None:
            self.name_or_path = name

    # without weights to hash, the name is what identifies the model
    assert model_fingerprint(Named("a")) != model_fingerprint(Named("b"))


def test_encoding_cache_rejects_mismatch(tmp_path: Path) -> None:
    cache = EncodingCache(tmp_path)
    cache.save("x", {"k": 1}, ["a", "b"], {"emb": np.ones((2, 2), dtype=np.float32)})
    assert cache.load("x", {"k": 1}, ["b", "a"]) is None  # rows differ -> miss and removal
    assert cache.load("x", {"k": 1}, ["a", "b"]) is None
    cache.save("x", {"k": 1}, ["a", "b"], {"emb": np.ones((2, 2), dtype=np.float32)})
    meta = next(tmp_path.glob("x-*/meta.json"))
    meta.write_text("{broken")
    assert cache.load("x", {"k": 1}, ["a", "b"]) is None
    assert cache.hits == 0 and cache.misses == 3


def test_evaluate_model_end_to_end(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "beir"), "test")
    res = evaluate_model(FakeEncoder(), ds, cache_dir=tmp_path / "c", show_progress=False)
    assert set(res.aggregate) == {"ndcg@10", "mrr@10", "recall@100", "map@100"}
    assert set(res.per_query) == {"q1", "q2"}
    assert res.summary()["queries"] == 2 and res.summary()["score"] == "neg_kl"
    assert all(len(docs) == 3 for docs in res.run.values())
    res_mo = evaluate_model(FakeEncoder(), ds, cache_dir=tmp_path / "c", show_progress=False, means_only=True)
    assert res_mo.model.endswith("[means only]")


# ---------------------------------------------------------------------------- per-query files, runs


@pytest.mark.parametrize("suffix", [".json", ".tsv"])
def test_per_query_round_trip(tmp_path: Path, suffix: str) -> None:
    pq = {"q1": {"ndcg@10": 0.25, "mrr@10": 1 / 3}, "q2": {"ndcg@10": 0.0, "mrr@10": 0.0}}
    path = tmp_path / f"pq{suffix}"
    save_per_query(path, pq, meta={"model": "m"})
    loaded, meta = load_per_query(path)
    assert loaded == pq
    assert meta == ({"model": "m"} if suffix == ".json" else {})
    bad = tmp_path / "bad.tsv"
    bad.write_text("query_id\tndcg@10\nq1\t0.5\t0.1\n")
    with pytest.raises(ValueError, match="line 2"):
        load_per_query(bad)


def test_write_trec_run(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec_run(path, {"q": {"a": 1.0, "b": 2.0}}, tag="my model")
    assert path.read_text().splitlines() == ["q Q0 b 1 2.0 my_model", "q Q0 a 2 1.0 my_model"]


# ---------------------------------------------------------------------------- baselines


def test_bm25_ranks_obvious_document_first(tmp_path: Path) -> None:
    corpus = [
        {"_id": "cat", "title": "", "text": "The cat sat on the mat and purred."},
        {"_id": "dog", "title": "", "text": "A dog chased the ball in the park."},
        {"_id": "fish", "title": "Aquarium", "text": "Goldfish swim slowly in a glass aquarium."},
        {"_id": "car", "title": "", "text": "The car engine needs new oil."},
    ]
    queries = [{"_id": "q1", "text": "goldfish aquarium"}, {"_id": "q2", "text": "dog park ball"}]
    qrels = {"test": "query-id\tcorpus-id\tscore\nq1\tfish\t1\nq2\tdog\t1\n"}
    ds = load_beir(write_beir(tmp_path / "beir", corpus, queries, qrels), "test")
    run = bm25_run(ds, k=10, show_progress=False)
    assert next(iter(run["q1"])) == "fish" and next(iter(run["q2"])) == "dog"
    assert "car" not in run["q1"]  # no shared term -> not retrieved
    agg, _ = evaluate_run(ds.qrels, run)
    assert agg["ndcg@10"] == 1.0
    run2, label = run_baseline("bm25", ds, show_progress=False)
    assert run2 == run and label.startswith("BM25")
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baseline("tfidf", ds)


# ---------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kl-retrievers")
    add_evaluate_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_json_per_query_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_beir(tmp_path / "beir")
    pq = tmp_path / "bm25.json"
    args = _parse(
        [
            "evaluate",
            str(root),
            "--baseline",
            "bm25",
            "--json",
            "--no-progress",
            "--per-query",
            str(pq),
            "--save-run",
            str(tmp_path / "run.trec"),
        ]
    )
    assert run_evaluate(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)  # exactly one JSON object
    assert out.count("\n") == 1
    for key in ("dataset", "split", "model", "ndcg@10", "mrr@10", "recall@100", "map@100", "queries"):
        assert key in summary
    assert summary["queries"] == 2 and summary["split"] == "test"
    assert pq.exists() and (tmp_path / "run.trec").exists()
    args = _parse(["evaluate", str(root), "--baseline", "bm25", "--json", "--no-progress", "--compare", str(pq)])
    assert run_evaluate(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compare"]["tests"]["ndcg@10"]["p_value"] == 1.0
    args = _parse(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(pq)])
    assert run_evaluate(args) == 0
    assert "ndcg@10" in capsys.readouterr().out


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_evaluate(_parse(["evaluate", str(tmp_path / "none"), "--baseline", "bm25", "--no-progress"])) == 2
    assert "not found" in capsys.readouterr().err
    root = write_beir(tmp_path / "beir")
    args = _parse(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--means-only"])
    assert run_evaluate(args) == 2
    with pytest.raises(SystemExit):
        _parse(["evaluate", str(root), "--baseline", "bm25", "--model", "x"])


# ---------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED_DATASETS / "scifact").is_dir(), reason="shared SciFact not available")
def test_bm25_on_scifact_slice() -> None:
    ds = load_beir(SHARED_DATASETS / "scifact", "test")
    assert len(ds.corpus) == 5183 and len(ds.queries) == 300
    qids = ds.query_ids[:50]
    relevant = {d for q in qids for d in ds.qrels[q]}
    others = [d for d in ds.doc_ids if d not in relevant][:500]
    small = ds.subset(qids, [d for d in ds.doc_ids if d in relevant or d in set(others)])
    assert len(small.queries) == 50 and len(small.corpus) == len(relevant) + 500
    run = bm25_run(small, k=100, show_progress=False)
    agg, per_query = evaluate_run(small.qrels, run)
    assert len(per_query) == 50
    # a small corpus is easier than the full one (full-collection BM25 nDCG@10 is about 0.66)
    assert 0.6 < agg["ndcg@10"] < 0.95
    assert agg["recall@100"] > 0.85


def test_encode_dataset_keys_a_batch_dependent_encoder_on_batch_size(tmp_path: Path) -> None:
    """An int8 ONNX graph's vectors depend on the batch: another batch size must not reuse its cache."""
    ds = load_beir(write_beir(tmp_path / "beir"), "test")
    cache_dir = tmp_path / "cache"
    steady, batchy = FakeEncoder(), FakeEncoder()
    batchy.batch_invariant = False  # type: ignore[attr-defined]
    for enc, misses_on_new_batch_size in ((steady, False), (batchy, True)):
        encode_dataset(enc, ds, cache_dir=cache_dir / str(misses_on_new_batch_size), batch_size=32, show_progress=False)
        enc.calls.clear()
        encode_dataset(enc, ds, cache_dir=cache_dir / str(misses_on_new_batch_size), batch_size=32, show_progress=False)
        assert enc.calls == []  # the same batch size hits either way
        encode_dataset(enc, ds, cache_dir=cache_dir / str(misses_on_new_batch_size), batch_size=4, show_progress=False)
        # queries of a batch-dependent encoder are encoded one at a time, whatever batch_size: they still hit
        assert [c[0] for c in enc.calls] == (["documents"] if misses_on_new_batch_size else [])
