"""A query's Gaussian must not depend on what else is encoded with it, when the encoder's output does.

An int8 ONNX graph quantises activations per batch (``batch_invariant`` is ``False``): a text's Gaussian
depends on the other texts of its batch. Every path that encodes several queries (``KLStore.search_batch``,
``KLHybridStore.search_batch``, ``KLEmbedding.query_gaussians``, ``evaluation.encode_dataset``) encodes them
one at a time then, so each query gets what ``search(query)`` gives it; ``encode_dataset`` encodes
documents in the corpus order (no pre-sort), as one ``KLStore.add`` of the corpus does.

The encoder here is the tiny random torch encoder made batch-dependent the way int8 is: each batch's means
are shifted by a multiple of the batch's mean (a per-batch activation scale), batches cut in input order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import Gaussians
from kl_retrievers.datasets import load_beir
from kl_retrievers.encoding_cache import EncodingCache, model_fingerprint
from kl_retrievers.evaluation import encode_dataset
from kl_retrievers.index import KLStore

DOCS = [
    "the cat sat on the mat",
    "a dog in the sun and the moon and the star over black rock",
    "green tea",
    "the moon and the star",
    "water on black rock in the sea at the train and the bread",
    "a train at sea",
    "bee",
    "hello world of the long gaussian document text",
]
QUERIES = ["green tea", "the cat on the mat", "a bee in the sun", "moon"]


class BatchDependent:
    """A tiny encoder whose Gaussians depend on their batch (like int8 ONNX), ``batch_invariant`` ``False``."""

    batch_invariant = False

    def __init__(self) -> None:
        self.inner = make_tiny_encoder()
        self.query_batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _batched(self, fn: Any, texts: Any, batch_size: int) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        means, variances = [], []
        for s in range(0, len(texts), batch_size):
            g = fn(texts[s : s + batch_size], show_progress_bar=False)
            mean = np.asarray(g.mean, dtype=np.float32)
            means.append(mean + np.float32(0.3) * mean.mean(axis=0))  # a per-batch activation scale
            variances.append(np.asarray(g.var, dtype=np.float32))
        return Gaussians(np.concatenate(means), np.concatenate(variances))

    def encode_queries(self, texts: Any, *, batch_size: int = 32, **_: Any) -> Gaussians:
        self.query_batch_sizes.append(batch_size)
        return self._batched(self.inner.encode_queries, texts, batch_size)

    def encode_documents(self, texts: Any, *, batch_size: int = 32, **_: Any) -> Gaussians:
        return self._batched(self.inner.encode_documents, texts, batch_size)


@pytest.fixture
def encoder() -> BatchDependent:
    return BatchDependent()


def test_the_fake_encoder_is_batch_dependent(encoder: BatchDependent) -> None:
    """The premise: encoded together, a query gets another Gaussian than alone."""
    together = encoder.encode_queries(QUERIES, batch_size=32).mean
    alone = np.concatenate([encoder.encode_queries([q], batch_size=32).mean for q in QUERIES])
    assert np.abs(together - alone).max() > 1e-3


def test_klstore_search_batch_scores_each_query_as_search_does(encoder: BatchDependent) -> None:
    store = KLStore(encoder, batch_size=32)
    store.add(DOCS)
    batch = store.search_batch(QUERIES, k=len(DOCS))
    for query, hits in zip(QUERIES, batch, strict=True):
        alone = store.search(query, k=len(DOCS))
        assert [h.id for h in hits] == [h.id for h in alone]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in alone], rtol=1e-9, atol=0)
    assert set(encoder.query_batch_sizes) == {1}


def test_klstore_keeps_its_batch_size_for_a_batch_invariant_encoder() -> None:
    inner = make_tiny_encoder()
    sizes: list[int] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def encode_queries(self, texts: Any, *, batch_size: int = 32, **kw: Any) -> Gaussians:
            sizes.append(batch_size)
            return inner.encode_queries(texts, batch_size=batch_size, **kw)

    store = KLStore(Recording(), batch_size=7)
    store.add(DOCS)
    store.search_batch(QUERIES, k=2)
    assert sizes == [7]


def test_hybrid_search_batch_scores_each_query_as_search_does(encoder: BatchDependent) -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    store = KLHybridStore(encoder, fusion="convex", weight=0.5)
    store.add(DOCS)
    batch = store.search_batch(QUERIES, k=len(DOCS))
    for query, hits in zip(QUERIES, batch, strict=True):
        alone = store.search(query, k=len(DOCS))
        assert [h.id for h in hits] == [h.id for h in alone]
        np.testing.assert_allclose([h.neg_kl for h in hits], [h.neg_kl for h in alone], rtol=1e-9, atol=0)
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in alone], rtol=1e-9, atol=0)
    np.testing.assert_array_equal(
        store.encode_queries(QUERIES).mean,
        np.concatenate([store.encode_queries([q]).mean for q in QUERIES]),
    )


def test_llama_index_query_gaussians_encode_each_query_alone(encoder: BatchDependent) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLEmbedding

    emb = KLEmbedding(encoder, embed_batch_size=32)
    together = emb.query_gaussians(QUERIES)
    alone = [emb.query_gaussians([q]) for q in QUERIES]
    np.testing.assert_array_equal(together.mean, np.concatenate([g.mean for g in alone]))
    np.testing.assert_array_equal(together.var, np.concatenate([g.var for g in alone]))


def test_langchain_encode_queries_encode_each_query_alone(encoder: BatchDependent) -> None:
    """KLEmbeddings.encode_queries (a list at its batch_size) gives each query what embed_query gives it."""
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings

    emb = KLEmbeddings(encoder, batch_size=32)
    together = emb.encode_queries(QUERIES)
    alone = [emb.encode_queries([q]) for q in QUERIES]
    np.testing.assert_array_equal(together.mean, np.concatenate([g.mean for g in alone]))
    np.testing.assert_array_equal(together.var, np.concatenate([g.var for g in alone]))
    assert set(encoder.query_batch_sizes) == {1}
    vector = emb.embed_query(QUERIES[0])  # the same Gaussian through the LangChain API
    np.testing.assert_allclose(emb.decode_query(vector).mean[0], together.mean[0], rtol=1e-6, atol=1e-6)


def test_langchain_keeps_its_batch_size_for_a_batch_invariant_encoder() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings

    inner = make_tiny_encoder()
    sizes: list[int] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def encode_queries(self, texts: Any, *, batch_size: int = 32, **kw: Any) -> Gaussians:
            sizes.append(batch_size)
            return inner.encode_queries(texts, batch_size=batch_size, **kw)

    KLEmbeddings(Recording(), batch_size=7).encode_queries(QUERIES)
    assert sizes == [7]


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(DOCS))
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES))
    )
    rows = "".join(f"q{i}\td{i}\t1\n" for i in range(len(QUERIES)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


def test_encode_dataset_encodes_queries_as_search_does(tmp_path: Path, encoder: BatchDependent) -> None:
    ds = load_beir(_beir(tmp_path / "beir"), "test")
    q, _ = encode_dataset(encoder, ds, batch_size=3, use_cache=False, show_progress=False)
    alone = np.concatenate([encoder.encode_queries([t], batch_size=3).mean for t in ds.query_texts()])
    np.testing.assert_array_equal(q.mean, alone)
    store = KLStore(encoder, batch_size=3)
    store.add(ds.document_texts(), ids=ds.doc_ids)
    for i, text in enumerate(ds.query_texts()):  # and each query's scores are what search gives
        np.testing.assert_allclose(
            store.search_batch(q[i : i + 1], k=3)[0][0].score, store.search(text, k=3)[0].score, rtol=1e-9
        )


def test_encode_dataset_encodes_documents_as_one_store_add(tmp_path: Path, encoder: BatchDependent) -> None:
    """Documents as one ``KLStore.add`` of the corpus in its order at the same batch size (no pre-sort)."""
    ds = load_beir(_beir(tmp_path / "beir"), "test")
    _, d = encode_dataset(encoder, ds, batch_size=3, use_cache=False, show_progress=False)
    store = KLStore(encoder, batch_size=3)
    store.add(ds.document_texts(), ids=ds.doc_ids)
    added = store.get_gaussians(ds.doc_ids)
    np.testing.assert_allclose(d.mean, added.mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d.var, added.var, rtol=1e-6, atol=1e-7)


def test_encode_dataset_reuses_no_batched_or_presorted_cache_entry(tmp_path: Path, encoder: BatchDependent) -> None:
    """Entries an earlier release wrote (queries batched, documents pre-sorted, keyed on batch_size) miss."""
    ds = load_beir(_beir(tmp_path / "beir"), "test")
    cache_dir = tmp_path / "cache"
    fp = model_fingerprint(encoder)
    cache = EncodingCache(cache_dir)
    for kind, ids, ident in (
        ("queries", ds.query_ids, ds.queries_identity),
        ("documents", ds.doc_ids, ds.corpus_identity),
    ):
        old_key = {"model": fp, "data": ident(), "max_length": None, "batch_size": 3}
        junk = np.full((len(ids), 8), 7.0, dtype=np.float32)
        cache.save(f"gauss-{kind}", old_key, ids, {"mean": junk, "var": np.ones_like(junk)})
    q, d = encode_dataset(encoder, ds, batch_size=3, cache_dir=cache_dir, show_progress=False)
    fresh_q, fresh_d = encode_dataset(encoder, ds, batch_size=3, use_cache=False, show_progress=False)
    np.testing.assert_array_equal(q.mean, fresh_q.mean)
    np.testing.assert_array_equal(d.mean, fresh_d.mean)
    # the new entries are used again, and another batch size re-encodes the documents only
    encoder.query_batch_sizes.clear()
    q2, _ = encode_dataset(encoder, ds, batch_size=5, cache_dir=cache_dir, show_progress=False)
    assert encoder.query_batch_sizes == []
    np.testing.assert_array_equal(q2.mean, q.mean)


def test_encode_dataset_presorts_only_for_a_batch_invariant_encoder(tmp_path: Path) -> None:
    """Longest first saves padding where it changes nothing; a batch-dependent encoder gets the corpus order."""
    ds = load_beir(_beir(tmp_path / "beir"), "test")
    inner = make_tiny_encoder()
    seen: list[list[str]] = []

    class Recording:
        def __init__(self, invariant: bool) -> None:
            self.batch_invariant = invariant

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def encode_documents(self, texts: Any, **kw: Any) -> Gaussians:
            seen.append(list(texts))
            return inner.encode_documents(texts, **kw)

    encode_dataset(Recording(True), ds, batch_size=3, use_cache=False, show_progress=False)
    encode_dataset(Recording(False), ds, batch_size=3, use_cache=False, show_progress=False)
    texts = ds.document_texts()
    assert seen == [sorted(texts, key=len, reverse=True), texts]


class BatchDependentDense:
    """A dense baseline encoder whose unit vectors depend on their batch (like bge-small int8)."""

    label = "batch-dependent dense"
    batch_invariant = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], int]] = []

    def identity(self) -> dict[str, Any]:
        return {"encoder": "batch-dependent-dense"}

    def _encode(self, kind: str, texts: Any, batch_size: int) -> np.ndarray:
        texts = list(texts)
        self.calls.append((kind, texts, batch_size))
        out = []
        for s in range(0, len(texts), batch_size):  # batches cut in input order
            rngs = [np.random.default_rng(sum(t.encode()) + 7 * len(t)) for t in texts[s : s + batch_size]]
            base = np.stack([rng.normal(size=8) for rng in rngs])
            out.append(base + 0.3 * base.mean(axis=0))  # a per-batch activation scale
        x = np.concatenate(out).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_queries(self, texts: Any, batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        return self._encode("queries", texts, batch_size)

    def encode_documents(self, texts: Any, batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
        return self._encode("documents", texts, batch_size)


def test_dense_run_encodes_queries_alone_and_documents_in_corpus_order(tmp_path: Path) -> None:
    """dense_run (evaluate --baseline bge-small) on a batch-dependent encoder, as encode_dataset does."""
    from kl_retrievers.baselines import dense_run

    ds = load_beir(_beir(tmp_path / "beir"), "test")
    enc = BatchDependentDense()
    run = dense_run(enc, ds, k=len(DOCS), batch_size=3, use_cache=False, show_progress=False)
    assert [(kind, size) for kind, _, size in enc.calls] == [("queries", 1), ("documents", 3)]
    assert enc.calls[1][1] == ds.document_texts()
    docs = enc.encode_documents(ds.document_texts(), batch_size=3)
    for qid, text in zip(ds.query_ids, ds.query_texts(), strict=True):
        alone = enc.encode_queries([text], batch_size=3)[0]  # a batch of one, whatever the batch size
        expected = docs @ alone
        got = np.array([run[qid][d] for d in ds.doc_ids])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_dense_run_reuses_no_batched_cache_entry(tmp_path: Path) -> None:
    """Entries keyed as an earlier release keyed them (queries batched at batch_size) are not read."""
    import hashlib

    from kl_retrievers.baselines import dense_run

    ds = load_beir(_beir(tmp_path / "beir"), "test")
    enc = BatchDependentDense()
    cache = EncodingCache(tmp_path / "cache")
    model_id = hashlib.sha256(repr(sorted(enc.identity().items())).encode()).hexdigest()[:16]
    for kind, ids, ident in (
        ("queries", ds.query_ids, ds.queries_identity),
        ("documents", ds.doc_ids, ds.corpus_identity),
    ):
        for size in (1, 3):  # written by `--batch-size 1` or `--batch-size 3` runs
            old_key = {"model": model_id, "identity": enc.identity(), "data": ident(), "batch_size": size}
            junk = np.zeros((len(ids), 8), dtype=np.float32)
            junk[:, 0] = 1.0
            cache.save(f"dense-{kind}", old_key, ids, {"emb": junk})
    cached = dense_run(enc, ds, k=len(DOCS), batch_size=3, cache_dir=tmp_path / "cache", show_progress=False)
    fresh = dense_run(enc, ds, k=len(DOCS), batch_size=3, use_cache=False, show_progress=False)
    assert cached == fresh


def test_bge_small_baseline_is_batch_dependent_and_batches_in_input_order() -> None:
    """bge-small int8 says it is batch-dependent and cuts its batches in the order it is given the texts."""
    from types import SimpleNamespace

    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    assert BgeSmallOnnxEncoder.batch_invariant is False
    seen: list[list[str]] = []

    class Tokenizer:
        def encode_batch(self, texts: list[str]) -> list[Any]:
            seen.append(texts)
            return [SimpleNamespace(ids=[len(t)], attention_mask=[1], type_ids=[0]) for t in texts]

    class Session:
        def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            ids = feeds["input_ids"].astype(np.float32)
            return [np.concatenate([ids, np.ones_like(ids)], axis=1)[:, None, :]]

    enc: Any = object.__new__(BgeSmallOnnxEncoder)  # no model files: a fake tokenizer and session
    enc.tokenizer, enc.session = Tokenizer(), Session()
    texts = ["a", "ccc", "bb", "dddd", "e"]
    enc.encode_documents(texts, batch_size=2, show_progress=False)
    assert seen == [["a", "ccc"], ["bb", "dddd"], ["e"]]


def test_sharded_query_encoding_encodes_each_query_alone(tmp_path: Path, encoder: BatchDependent) -> None:
    """encode_corpus(kind="query") gives each query what a search encodes; the manifest records batch_size 1."""
    from kl_retrievers.sharded import encode_corpus, load_encoded

    source = tmp_path / "queries.jsonl"
    source.write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES)))
    out = tmp_path / "encoded"
    encode_corpus(source, out, encoder=encoder, kind="query", field="text", batch_size=3, show_progress_bar=False)
    assert set(encoder.query_batch_sizes) == {1}
    assert json.loads((out / "manifest.json").read_text())["batch_size"] == 1
    g, ids = load_encoded(out)
    assert list(ids) == [f"q{i}" for i in range(len(QUERIES))]
    alone = np.concatenate([encoder.encode_queries([q], batch_size=3).mean for q in QUERIES])
    np.testing.assert_array_equal(np.asarray(g.mean), alone)


def test_sharded_query_folder_without_batch_size_is_refused(
    tmp_path: Path, encoder: BatchDependent, caplog: pytest.LogCaptureFixture
) -> None:
    """A query folder an older release wrote (no batch_size: batched queries) is refused, not resumed one at a time."""
    from kl_retrievers.sharded import encode_corpus

    source = tmp_path / "queries.jsonl"
    source.write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES * 3)))
    out = tmp_path / "encoded"
    kw: dict[str, Any] = dict(encoder=encoder, kind="query", field="text", batch_size=3, shard_size=2)
    encode_corpus(source, out, show_progress_bar=False, **kw)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["batch_size"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    shards = sorted(p.name for p in out.iterdir() if p.name.startswith("shard-"))
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    encoder.query_batch_sizes.clear()
    with pytest.raises(ValueError, match="without a recorded batch_size") as err:
        encode_corpus(source, out, show_progress_bar=False, **kw)
    assert "one at a time (batch_size 1)" in str(err.value)
    assert encoder.query_batch_sizes == []
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("shard-")) == shards
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert "resuming with batch_size 3" not in caplog.text
