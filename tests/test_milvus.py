"""MilvusKLStore against Milvus Lite (in-process, a local file URI): exactness, ANN recall,
upsert/delete, the norm-bound rebuild, filter parity with KLStore, reattaching and bad input."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers.filters import ALLOWED_OPERATORS
from kl_retrievers.gaussian import Gaussians, kl_query_constant, neg_kl_matrix
from kl_retrievers.index import KLStore
from kl_retrievers.milvus import MilvusConnectionError, MilvusKLStore, to_milvus_expr

K = 16


def _metas(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out: list[dict[str, object]] = []
    for i in range(n):
        m: dict[str, object] = {}
        if rng.random() < 0.8:
            m["n"] = int(rng.integers(0, 5))
        if rng.random() < 0.8:
            m["lang"] = str(rng.choice(["en", "de", "fr"]))
        if rng.random() < 0.5:
            m["year"] = float(rng.integers(2000, 2025))
        if i % 7 == 0:
            m["flag"] = bool(i % 2)
        out.append(m)
    return out


def _store(tmp_path: Path, name: str = "kl.db", **kw: object) -> MilvusKLStore:
    kw.setdefault("metric", "L2")  # these tests exercise the L2 reduction (flat collections default to IP)
    return MilvusKLStore(uri=str(tmp_path / name), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("metric", ["L2", "IP"])
def test_flat_equals_brute_force_neg_kl(tmp_path: Path, metric: str) -> None:
    docs = random_gaussians(400, K, seed=1)
    queries = random_gaussians(8, K, seed=2)
    store = _store(tmp_path, index_type="flat", metric=metric)
    store.add(gaussians=docs, ids=[f"d{i}" for i in range(400)], texts=[f"t{i}" for i in range(400)])
    exact = np.asarray(neg_kl_matrix(queries, docs))
    hits = store.search_batch(queries, k=10)
    for q, row in enumerate(hits):
        top = np.argsort(-exact[q])[:10]
        assert [h.id for h in row] == [f"d{i}" for i in top]
        np.testing.assert_allclose([h.score for h in row], exact[q, top], rtol=1e-5)
        assert row[0].text == f"t{top[0]}"
        assert all(a.score >= b.score for a, b in itertools.pairwise(row))  # higher is better


@pytest.mark.parametrize(("index_type", "compression"), [("hnsw", None), ("ivf", None), ("hnsw", "sq8")])
def test_approximate_indexes_have_high_recall(tmp_path: Path, index_type: str, compression: str | None) -> None:
    docs = random_gaussians(2000, K, seed=3)
    queries = random_gaussians(20, K, seed=4)
    store = _store(tmp_path, index_type=index_type, compression=compression, nlist=32, nprobe=16)
    store.add(gaussians=docs, ids=[str(i) for i in range(2000)])
    exact = np.argsort(-np.asarray(neg_kl_matrix(queries, docs)), axis=1)[:, :10]
    got = store.search_batch(queries, k=10)
    recall = np.mean([len({h.id for h in row} & {str(i) for i in ex}) / 10 for row, ex in zip(got, exact, strict=True)])
    assert recall >= 0.9, recall


def test_upsert_delete_get_and_gaussians(tmp_path: Path) -> None:
    docs = random_gaussians(30, K, seed=5)
    store = _store(tmp_path, index_type="hnsw")
    ids = store.add(texts=[f"t{i}" for i in range(30)], gaussians=docs, ids=[f"d{i}" for i in range(30)])
    assert ids[0] == "d0" and len(store) == 30
    store.add(texts=["new"], gaussians=docs[3], ids=["d3"], metadatas=[{"v": 2}])
    assert len(store) == 30
    assert store.get_by_ids(["d3", "nope", "d1"])[0].text == "new"
    assert [d.id for d in store.get_by_ids(["d3", "nope", "d1"])] == ["d3", "d1"]
    got = store.get_gaussians(["d4", "d2"])
    np.testing.assert_allclose(got.mean, docs.mean[[4, 2]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.var, docs.var[[4, 2]], rtol=1e-6)
    with pytest.raises(KeyError, match="nope"):
        store.get_gaussians(["nope"])
    report = store.delete(["d1", "zz", "d1"])
    assert report.deleted == ["d1"] and report.missing == ["zz"]
    assert len(store) == 29 and "d1" not in store and "d2" in store
    assert all(h.id != "d1" for h in store.search(docs[1], k=29))
    assert sorted(store.ids) == sorted(f"d{i}" for i in range(30) if i != 1)


def test_documents_beyond_the_norm_bound_trigger_a_reported_rebuild(tmp_path: Path) -> None:
    docs = random_gaussians(200, K, seed=6)
    store = _store(tmp_path, index_type="hnsw", metric="L2")
    store.add(gaussians=docs, ids=[f"a{i}" for i in range(200)])
    bound = store.norm_bound
    assert bound is not None and store.rebuild_count == 0
    big = Gaussians(docs.mean[:20] * 4.0, docs.var[:20] * 0.5)
    store.add(gaussians=big, ids=[f"b{i}" for i in range(20)])
    assert store.rebuild_count == 1 and store.norm_bound is not None and store.norm_bound > bound
    all_docs = Gaussians.concat([docs, big])
    all_ids = [f"a{i}" for i in range(200)] + [f"b{i}" for i in range(20)]
    exact = np.asarray(neg_kl_matrix(big, all_docs))
    for q in range(20):
        hit = store.search(big[q], k=1)[0]
        assert hit.id == all_ids[int(np.argmax(exact[q]))]
    # the new bound was persisted: a fresh client reattaches with it
    again = _store(tmp_path, index_type="hnsw", metric="L2")
    assert again.norm_bound == pytest.approx(store.norm_bound)


FILTERS = [
    {"lang": "en"},
    {"n": {"$ne": 2}},
    {"n": {"$in": [1, 3]}},
    {"lang": {"$nin": ["en", "de"]}},
    {"year": {"$gte": 2010, "$lt": 2020}},
    {"n": {"$gt": 1}, "lang": ["fr", "de"]},
    {"$or": [{"lang": "de"}, {"year": {"$lte": 2005}}]},
    {"$and": [{"n": {"$not": {"$in": [0, 1]}}}, {"lang": {"$ne": "en"}}]},
    {"$not": {"lang": "en"}},
    {"flag": True},
    {"year": 2015},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_filters_match_klstore(tmp_path: Path, flt: dict[str, object]) -> None:
    n = 300
    docs = random_gaussians(n, K, seed=7)
    queries = random_gaussians(3, K, seed=8)
    ids = [f"d{i}" for i in range(n)]
    metas = _metas(n)
    ref = KLStore()
    ref.add(gaussians=docs, ids=ids, metadatas=metas)
    store = _store(tmp_path, index_type="flat")
    store.add(gaussians=docs, ids=ids, metadatas=metas)
    want = ref.search_batch(queries, k=n, filter=flt)
    got = store.search_batch(queries, k=n, filter=flt)
    assert len(want[0]) > 0
    for w, g in zip(want, got, strict=True):
        assert [h.id for h in g] == [h.id for h in w]
        assert all(h.metadata == metas[int(h.id[1:])] for h in g)


def test_filter_translation_errors() -> None:
    with pytest.raises(ValueError, match=r"\$regex.*" + r"\$and"):
        to_milvus_expr({"a": {"$regex": "x"}})
    with pytest.raises(ValueError, match="callable"):
        to_milvus_expr(lambda m: True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list"):
        to_milvus_expr({"a": {"$in": 3}})
    assert set(ALLOWED_OPERATORS) >= {"$in", "$nin", "$not"}
    assert to_milvus_expr({"s": 'quote"d'}) == '(exists metadata["s"] and metadata["s"] == "quote\\"d")'


def test_reattach_and_refuse_mismatched_collections(tmp_path: Path) -> None:
    docs = random_gaussians(50, K, seed=9)
    store = _store(tmp_path, collection_name="c1", index_type="flat")
    store.add(gaussians=docs, ids=[f"d{i}" for i in range(50)], texts=[f"t{i}" for i in range(50)])
    want = [h.id for h in store.search(docs[7], k=5)]
    store.close()
    again = _store(tmp_path, collection_name="c1", index_type="flat")
    assert len(again) == 50 and again.dim == K
    assert [h.id for h in again.search(docs[7], k=5)] == want
    with pytest.raises(ValueError, match="dimension 16, not 8"):
        _store(tmp_path, collection_name="c1", dim=8)
    with pytest.raises(ValueError, match="metric 'L2', not 'IP'"):
        _store(tmp_path, collection_name="c1", metric="IP")
    with pytest.raises(ValueError, match="dimension"):
        again.add(gaussians=random_gaussians(2, 8), ids=["x", "y"])
    assert len(_store(tmp_path, collection_name="c1")) == 50  # nothing was overwritten
    # a collection made by someone else is never touched
    from pymilvus import DataType

    client = again.client
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    params = client.prepare_index_params()
    params.add_index(field_name="v", index_type="FLAT", metric_type="L2")
    client.create_collection("foreign", schema=schema, index_params=params)
    with pytest.raises(ValueError, match="not created by kl-retrievers"):
        MilvusKLStore(client=client, collection_name="foreign")
    assert client.has_collection("foreign")


def test_unreachable_server_fails_fast_with_a_clear_error() -> None:
    start = time.perf_counter()
    with pytest.raises(MilvusConnectionError, match=r"http://127\.0\.0\.1:9.*within 2 s"):
        MilvusKLStore(uri="http://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - start < 15


def test_bad_input(tmp_path: Path) -> None:
    store = _store(tmp_path, index_type="flat")
    q = random_gaussians(1, K)
    assert store.search(q) == []  # empty store
    assert len(store) == 0
    store.add(gaussians=random_gaussians(5, K), ids=list("abcde"))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        store.search(q, k=0)
    with pytest.raises(ValueError, match="dimension 4; this store has dimension 16"):
        store.search(random_gaussians(1, 4))
    with pytest.raises(ValueError, match="finite"):
        Gaussians(np.full((1, K), np.nan), np.ones((1, K)))
    assert len(store.search(q, k=50)) == 5  # k larger than the store: every document
    with pytest.raises(ValueError, match="unique"):
        store.add(gaussians=random_gaussians(2, K), ids=["x", "x"])
    with pytest.raises(ValueError, match="index_type"):
        _store(tmp_path, index_type="annoy")
    with pytest.raises(ValueError, match="max_text_length=10"):
        _store(tmp_path, "t.db", max_text_length=10).add(["x" * 11], gaussians=random_gaussians(1, K))


def test_text_add_and_search_with_an_encoder(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    texts = ["the cat sat on the mat", "tea and bread", "the sun and the moon", "black rock in the sea"]
    store = _store(tmp_path, encoder=enc, index_type="flat")
    store.add(texts, ids=["a", "b", "c", "d"], metadatas=[{"i": i} for i in range(4)])
    ref = KLStore(enc)
    ref.add(texts, ids=["a", "b", "c", "d"])
    for query in ("cat on a mat", "moon"):
        got, want = store.search(query, k=4), ref.search(query, k=4)
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5, atol=1e-7)


def test_langchain_klvectorstore_over_milvus(tmp_path: Path) -> None:
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    enc = make_tiny_encoder()
    texts = ["the cat sat", "tea and bread", "sun and moon", "black rock sea", "green water"]
    metas = [{"i": i, "even": i % 2 == 0} for i in range(5)]
    milvus = KLVectorStore(KLEmbeddings(enc), store=_store(tmp_path, index_type="flat"))
    local = KLVectorStore(KLEmbeddings(enc))
    ids = [f"x{i}" for i in range(5)]
    milvus.add_texts(texts, metadatas=metas, ids=ids)
    local.add_texts(texts, metadatas=metas, ids=ids)
    for flt in (None, {"even": True}):
        got = milvus.similarity_search_with_score("the sun", k=3, filter=flt)
        want = local.similarity_search_with_score("the sun", k=3, filter=flt)
        assert [d.id for d, _ in got] == [d.id for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-7)
    assert milvus.delete(["x0"]) and len(milvus) == 4
    with pytest.raises(NotImplementedError, match="Reconnect"):
        milvus.save_local(tmp_path / "saved")


def test_langchain_milvus_serves_kl_embeddings_with_inner_product(tmp_path: Path) -> None:
    """langchain-milvus allows metric_type IP: its ranking equals -KL and score + c(q) = -KL."""
    from langchain_milvus import Milvus

    from kl_retrievers.langchain import KLEmbeddings

    enc = make_tiny_encoder()
    emb = KLEmbeddings(enc)
    texts = [f"{a} {b} {c}" for a in ("cat", "dog", "sun") for b in ("tea", "sea", "rock") for c in ("mat", "moon")]
    vs = Milvus(
        embedding_function=emb,
        connection_args={"uri": str(tmp_path / "lc.db")},
        index_params={"index_type": "FLAT", "metric_type": "IP"},
        auto_id=True,
    )
    # langchain-milvus 0.3 reaches the collection through pymilvus' ORM, which pymilvus 2.6's
    # MilvusClient no longer registers; register its alias once (see docs/scale-out.md)
    from pymilvus import connections

    connections.connect(alias=vs.alias, uri=str(tmp_path / "lc.db"))
    vs.add_texts(texts)
    ref = KLStore(enc)
    ref.add(texts, ids=texts)
    query = "the cat on the moon"
    got = vs.similarity_search_with_score(query, k=5)
    want = ref.search(query, k=5)
    assert [d.page_content for d, _ in got] == [h.id for h in want]
    c = float(kl_query_constant(enc.encode_queries([query]).astype(np.float64))[0])
    np.testing.assert_allclose([s + c for _, s in got], [h.score for h in want], rtol=1e-4, atol=1e-4)


def test_llama_index_milvus_vector_store_with_inner_product(tmp_path: Path) -> None:
    """LlamaIndex's MilvusVectorStore with similarity_metric="IP" ranks our embeddings by -KL."""
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.milvus import MilvusVectorStore

    from kl_retrievers.llama_index import KLEmbedding

    enc = make_tiny_encoder()
    texts = [f"{a} {b}" for a in ("cat", "dog", "sun", "moon") for b in ("tea", "sea", "rock")]
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(texts)]
    vector_store = MilvusVectorStore(
        uri=str(tmp_path / "li.db"), dim=2 * enc.config.dim + 1, similarity_metric="IP", overwrite=True
    )
    index = VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=KLEmbedding(enc),
    )
    got = index.as_retriever(similarity_top_k=4).retrieve("sun and sea")
    ref = KLStore(enc)
    ref.add(texts, ids=[n.id_ for n in nodes])
    want = ref.search("sun and sea", k=4)
    assert [n.node.node_id for n in got] == [h.id for h in want]


# ---------------------------------------------------------------- one reduction, one norm bound
def _shifted_gaussians(n: int, seed: int, shift: float = 2.0) -> Gaussians:
    """float32 Gaussians whose d~ has a first coordinate far from 0 (so the offset matters)."""
    g = random_gaussians(n, K, seed=seed, dtype=np.float32)
    return Gaussians((g.mean + shift).astype(np.float32), g.var)


def _stored_vectors(store: MilvusKLStore, ids: list[str]) -> np.ndarray:
    rows = store.client.get(store.collection_name, ids=ids, output_fields=["vector"])
    by_id = {r["id"]: r["vector"] for r in rows}
    return np.asarray([by_id[i] for i in ids], dtype=np.float64)


def _exact_top(queries: Gaussians, docs: Gaussians, ids: list[str], k: int) -> list[list[str]]:
    exact = np.asarray(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)))
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in exact]


def test_milvus_stores_klstores_reduced_vectors_offset_included(tmp_path: Path) -> None:
    docs = _shifted_gaussians(300, seed=21)
    ids = [f"d{i}" for i in range(300)]
    kl = KLStore(index_type="hnsw")
    kl.add(gaussians=docs, ids=ids)
    mv = _store(tmp_path, index_type="flat")
    mv.add(gaussians=docs, ids=ids)
    # the same centre, offset and norm bound as KLStore's build, and the very vectors its FAISS index holds
    assert abs(kl.index_offset) > 5.0  # the shift is large on this data, so a missing offset shows
    kl_centre = kl._engine.centre  # type: ignore[attr-defined]
    assert kl_centre is not None  # means shifted by 2: both centre them on the documents' mean
    assert mv._state.centre is not None
    np.testing.assert_allclose(mv._state.centre, kl_centre, rtol=1e-12)
    assert mv.index_offset == pytest.approx(kl.index_offset, rel=1e-12)
    assert mv.norm_bound == pytest.approx(kl.norm_bound, rel=1e-12)
    faiss_vectors = kl._index.reconstruct_n(0, len(ids))
    np.testing.assert_allclose(_stored_vectors(mv, ids), faiss_vectors, rtol=1e-6, atol=1e-5)
    # and the same rankings, equal to brute-force -KL
    queries = _shifted_gaussians(10, seed=22)
    want = _exact_top(queries, docs, ids, 5)
    assert [[h.id for h in row] for row in mv.search_batch(queries, k=5)] == want
    assert [[h.id for h in row] for row in kl.search_batch(queries, k=5)] == want
    # the offset is stored with M: a fresh client reattaches with both
    again = _store(tmp_path, index_type="flat")
    assert again.index_offset == mv.index_offset and again.norm_bound == mv.norm_bound


def test_two_writers_on_one_collection_keep_one_norm_bound(tmp_path: Path) -> None:
    base = random_gaussians(200, K, seed=23)
    big = Gaussians(base.mean[:20] * 4.0, base.var[:20] * 0.5)
    more = random_gaussians(100, K, seed=24)
    # a candidate pool of exactly k: rows stored under a smaller M win every L2 comparison
    opts: dict[str, Any] = {"index_type": "flat", "rescore_pool": 1, "rescore_factor": 1}
    first = _store(tmp_path, **opts)
    first.add(gaussians=base, ids=[f"a{i}" for i in range(200)])
    second = _store(tmp_path, **opts)  # another process attached to the same collection
    bound = first.norm_bound
    second.add(gaussians=big, ids=[f"b{i}" for i in range(20)])  # raises M
    assert second.norm_bound is not None and bound is not None and second.norm_bound > bound
    first.add(gaussians=more, ids=[f"c{i}" for i in range(100)])  # first still holds the old M in memory
    assert first.norm_bound == second.norm_bound
    docs = Gaussians.concat([base, big, more])
    ids = [f"a{i}" for i in range(200)] + [f"b{i}" for i in range(20)] + [f"c{i}" for i in range(100)]
    queries = Gaussians.concat([random_gaussians(12, K, seed=25), big[:3], more[:3]])
    want = _exact_top(queries, docs, ids, 5)
    for store in (first, second):
        assert [[h.id for h in row] for row in store.search_batch(queries, k=5)] == want
    # every stored row has norm M (the L2 reduction's invariant)
    norms = np.linalg.norm(_stored_vectors(first, ids), axis=1)
    np.testing.assert_allclose(norms, first.norm_bound, rtol=1e-5)
    # a stale writer that needs a larger M raises it from the stored bound, not from its own
    huge = Gaussians(base.mean[20:25] * 8.0, base.var[20:25] * 0.25)
    stale = second.norm_bound
    first.add(gaussians=huge, ids=[f"h{i}" for i in range(5)])
    second.add(gaussians=random_gaussians(3, K, seed=26), ids=["z0", "z1", "z2"])
    assert second.norm_bound == first.norm_bound and first.norm_bound is not None and stale is not None
    assert first.norm_bound > stale
    ids += [f"h{i}" for i in range(5)] + ["z0", "z1", "z2"]
    docs = Gaussians.concat([docs, huge, random_gaussians(3, K, seed=26)])
    want = _exact_top(queries, docs, ids, 5)
    for store in (first, second):
        assert [[h.id for h in row] for row in store.search_batch(queries, k=5)] == want
    np.testing.assert_allclose(np.linalg.norm(_stored_vectors(second, ids), axis=1), second.norm_bound, rtol=1e-5)


def test_a_raised_norm_bound_is_persisted_before_rows_are_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = random_gaussians(200, K, seed=27)
    big = Gaussians(base.mean[:20] * 4.0, base.var[:20] * 0.5)
    store = _store(tmp_path, index_type="flat", rescore_pool=1, rescore_factor=1)
    store.add(gaussians=base, ids=[f"a{i}" for i in range(200)])
    old = store.norm_bound
    assert old is not None

    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("writer killed mid-rewrite")

    monkeypatch.setattr(store.client, "upsert", killed)  # the first row write of the rewrite fails
    with pytest.raises(RuntimeError, match="mid-rewrite"):
        store.add(gaussians=big, ids=[f"b{i}" for i in range(20)])
    monkeypatch.undo()
    fresh = _store(tmp_path, index_type="flat", rescore_pool=1, rescore_factor=1)
    raised = fresh.norm_bound
    assert raised is not None and raised > old  # the raised M was stored before any row changed
    # the next write (by any process) finishes the interrupted rewrite before adding its rows
    fresh.add(gaussians=big, ids=[f"b{i}" for i in range(20)])
    assert fresh.norm_bound == raised
    docs = Gaussians.concat([base, big])
    ids = [f"a{i}" for i in range(200)] + [f"b{i}" for i in range(20)]
    np.testing.assert_allclose(np.linalg.norm(_stored_vectors(fresh, ids), axis=1), raised, rtol=1e-5)
    queries = Gaussians.concat([random_gaussians(10, K, seed=28), big[:4]])
    want = _exact_top(queries, docs, ids, 5)
    for s in (fresh, store):
        assert [[h.id for h in row] for row in s.search_batch(queries, k=5)] == want


def test_a_collection_from_the_previous_release_loads_and_grows(tmp_path: Path) -> None:
    """Rows of the previous format: ``[d~, sqrt(M^2 - ||d~||^2)]`` (no offset), no version stored."""
    import json

    from kl_retrievers.gaussian import kl_document_vectors

    docs = random_gaussians(150, K, seed=29)
    ids = [f"d{i}" for i in range(150)]
    made = _store(tmp_path, index_type="flat", dim=K)  # creates the collection, nothing stored yet
    dvec = np.asarray(kl_document_vectors(docs))
    bound = 1.1 * float(np.linalg.norm(dvec, axis=1).max())
    extra = np.sqrt(bound**2 - np.einsum("ij,ij->i", dvec, dvec))
    rows = [
        {"id": i, "vector": np.append(v, e).astype(np.float32).tolist(), "text": "", "metadata": {}}
        for i, v, e in zip(ids, dvec, extra, strict=True)
    ]
    made.client.upsert(made.collection_name, rows)
    key = "kl_retrievers.config"
    config = json.loads(made.client.describe_collection(made.collection_name)["properties"][key])
    for new_key in ("index_offset", "version", "writer", "rewrite"):
        config.pop(new_key, None)
    config.update(format_version=1, norm_bound=bound)
    made.client.alter_collection_properties(made.collection_name, properties={key: json.dumps(config)})
    old = _store(tmp_path, index_type="flat", rescore_pool=1, rescore_factor=1)
    assert old.norm_bound == bound and old.index_offset == 0.0
    queries = random_gaussians(8, K, seed=30)
    assert [[h.id for h in row] for row in old.search_batch(queries, k=5)] == _exact_top(queries, docs, ids, 5)
    big = Gaussians(docs.mean[:10] * 4.0, docs.var[:10] * 0.5)
    old.add(gaussians=big, ids=[f"b{i}" for i in range(10)])
    assert old.norm_bound is not None and old.norm_bound > bound and old.index_offset == 0.0
    all_ids = ids + [f"b{i}" for i in range(10)]
    want = _exact_top(queries, Gaussians.concat([docs, big]), all_ids, 5)
    assert [[h.id for h in row] for row in old.search_batch(queries, k=5)] == want


@pytest.mark.parametrize(("hook", "nth"), [("alter_collection_properties", 1), ("upsert", 1), ("upsert", 2)])
def test_a_writer_raced_by_another_starts_over_and_ends_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str, nth: int
) -> None:
    """Another process raises M right after this writer's nth call of ``hook``: just after it stored
    its own M (the other value wins the write-then-verify), in the middle of its row rewrite (a stored
    row above M), or after it inserted its rows (caught by the check after the insert)."""
    base = random_gaussians(150, K, seed=31)
    big = Gaussians(base.mean[:10] * 4.0, base.var[:10] * 0.5)
    bigger = Gaussians(base.mean[10:15] * 6.0, base.var[10:15] * 0.4)
    opts: dict[str, Any] = {"index_type": "flat", "rescore_pool": 1, "rescore_factor": 1}
    first = _store(tmp_path, **opts)
    first.add(gaussians=base, ids=[f"a{i}" for i in range(150)])
    second = _store(tmp_path, **opts)
    real = getattr(first.client, hook)
    calls: list[int] = []

    def racing(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == nth:
            second.add(gaussians=bigger, ids=[f"c{i}" for i in range(5)])
        return out

    monkeypatch.setattr(first.client, hook, racing)
    first.add(gaussians=big, ids=[f"b{i}" for i in range(10)])
    monkeypatch.undo()
    assert len(calls) >= nth and first.norm_bound == second.norm_bound
    docs = Gaussians.concat([base, big, bigger])
    ids = [f"a{i}" for i in range(150)] + [f"b{i}" for i in range(10)] + [f"c{i}" for i in range(5)]
    assert first.norm_bound is not None
    np.testing.assert_allclose(np.linalg.norm(_stored_vectors(first, ids), axis=1), first.norm_bound, rtol=1e-5)
    queries = Gaussians.concat([random_gaussians(8, K, seed=32), big[:3], bigger[:2]])
    want = _exact_top(queries, docs, ids, 5)
    for store in (first, second):
        assert [[h.id for h in row] for row in store.search_batch(queries, k=5)] == want
    assert first.repair() == first.norm_version  # nothing left to repair; the rows stay as they are
    assert [[h.id for h in row] for row in first.search_batch(queries, k=5)] == want


def test_milvus_centres_shifted_means_like_klstore_and_returns_them_uncentred(tmp_path: Path) -> None:
    """Means sharing a large offset are centred (recall does not depend on the origin); get_gaussians undoes it."""
    docs = _shifted_gaussians(300, seed=31, shift=20.0)
    ids = [f"d{i}" for i in range(300)]
    mv = _store(tmp_path, index_type="flat")
    mv.add(gaussians=docs, ids=ids)
    assert mv._state.centre is not None
    np.testing.assert_allclose(mv._state.centre, np.asarray(docs.mean, np.float64).mean(axis=0), rtol=1e-9)
    back = mv.get_gaussians(ids[:5])
    np.testing.assert_allclose(back.mean, docs.mean[:5], rtol=1e-5, atol=1e-4)
    queries = _shifted_gaussians(10, seed=32, shift=20.0)
    want = _exact_top(queries, docs, ids, 5)
    hits = mv.search_batch(queries, k=5)
    assert [[h.id for h in row] for row in hits] == want
    exact = neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64))
    np.testing.assert_allclose(hits[0][0].score, exact[0].max(), rtol=1e-6)
    again = _store(tmp_path, index_type="flat")  # a fresh client reattaches with the same centre
    assert again._state.centre == mv._state.centre
    more = _shifted_gaussians(50, seed=33, shift=20.0)  # a second writer's rows use the stored centre
    again.add(gaussians=more, ids=[f"m{i}" for i in range(50)])
    assert again._state.centre == mv._state.centre
    np.testing.assert_allclose(again.get_gaussians(["m0"]).mean, more.mean[:1], rtol=1e-5, atol=1e-4)


def test_milvus_leaves_about_centred_means_as_they_are(tmp_path: Path) -> None:
    mv = _store(tmp_path, index_type="flat")
    mv.add(gaussians=random_gaussians(200, K, seed=34), ids=[f"d{i}" for i in range(200)])
    assert mv._state.centre is None and mv._config()["index_centre"] is None


def test_filters_on_non_ascii_and_escaped_strings_match_klstore(tmp_path: Path) -> None:
    """json.dumps wrote "Z\\u00fcrich", which Milvus' parser refuses ("unknown escape sequence")."""
    values = ["Zürich", "日本", "😀", 'a "quoted" \\ path', "line\nbreak", "cr\rhere", "plain"]
    g = random_gaussians(len(values), K, seed=41)
    ids = [f"d{i}" for i in range(len(values))]
    metas = [{"city": v, "é": i} for i, v in enumerate(values)]
    mv = _store(tmp_path, index_type="flat")
    mv.add(gaussians=g, ids=ids, metadatas=metas)
    kl = KLStore()
    kl.add(gaussians=g, ids=ids, metadatas=metas)
    q = random_gaussians(1, K, seed=42)
    n = len(values)
    filters: list[dict[str, Any]] = [
        *({"city": v} for v in values),
        {"city": {"$in": ["Zürich", "日本"]}},
        {"city": {"$ne": "😀"}},
        {"é": {"$gte": 3}},
        {"city": {"$gt": "Z"}},
    ]
    for flt in filters:
        got = {h.id for h in mv.search(q, k=n, filter=flt)}
        assert got == {h.id for h in kl.search(q, k=n, filter=flt)}, flt
        assert got, flt


def test_add_checks_ids_and_metadata_before_writing_anything(tmp_path: Path) -> None:
    mv = _store(tmp_path, index_type="flat", insert_batch=2)
    g = random_gaussians(3, K, seed=43)
    with pytest.raises(ValueError, match="513 characters; Milvus ids hold 512"):
        mv.add(gaussians=g, ids=["a", "b", "x" * 513])
    with pytest.raises(ValueError, match="integer 1180591620717411303424, beyond the 64 bits"):
        mv.add(gaussians=g[:1], ids=["a"], metadatas=[{"v": [1, {"w": 2**70}]}])
    assert len(mv) == 0  # nothing was written
    # keys become strings, as KLStore's save makes them
    mv.add(gaussians=g[:1], ids=["a"], metadatas=[{1: "one"}])
    assert mv.get_by_ids(["a"])[0].metadata == {"1": "one"}


def test_a_client_attached_before_the_first_documents_sees_the_centre(tmp_path: Path) -> None:
    docs = _shifted_gaussians(50, seed=44, shift=20.0)
    early = _store(tmp_path, index_type="flat", dim=K)  # creates the empty collection
    writer = _store(tmp_path, index_type="flat")
    writer.add(gaussians=docs, ids=[f"d{i}" for i in range(50)])
    np.testing.assert_allclose(early.get_gaussians(["d0"]).mean, docs.mean[:1], rtol=1e-5, atol=1e-4)


def test_empty_stores_give_an_empty_batch_of_gaussians(tmp_path: Path) -> None:
    assert KLStore().get_gaussians([]).mean.shape == (0, 1)
    assert _store(tmp_path).get_gaussians([]).mean.shape[0] == 0
