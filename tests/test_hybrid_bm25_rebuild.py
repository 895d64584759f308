"""The hybrid store's BM25 rebuild after a change: from per-document term counts, not ``bm25s.BM25.index``.

The rebuilt index must be the one a fresh ``bm25s`` index over the live documents gives (same vocabulary,
same Lucene weights, rows in the store's order), after any sequence of adds, upserts and deletes, for
documents without tokens and unicode tokens, and for a loaded store (saved by this code or built by bm25s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_gaussians
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.index import KLStore

bm25s = pytest.importorskip("bm25s")

# numpy 2 (NEP 50) adds bm25s' float64 length normalisation to its float32 term frequencies in float64, as
# lucene_index does: the weights are bm25s' bit for bit. numpy 1's value-based casting is followed by
# lucene_index too (_scalar_sum_dtype), but it is not what this suite's environment checks: a tolerance there.
EXACT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"

K = 3  # Gaussian dimension of the synthetic documents
# stop words ("the", "and": documents of only those have no token), unicode words, repeated words
WORDS = ["apple", "pear", "plum", "fig", "kiwi", "the", "and", "café", "naïve", "東京", "straße", "ωμέγα", "x1"]
QUERIES = ["apple", "pear pear plum", "café 東京", "naïve straße ωμέγα fig", "kiwi x1 the", "zzz", "apple apple"]


def _gaussians(n: int, seed: int = 0) -> Gaussians:
    return random_gaussians(n, K, seed=seed)


def _query() -> Gaussians:
    return random_gaussians(1, K, seed=99)


def _rebuild(store: KLHybridStore) -> None:
    """A search: the first one after a change rebuilds the BM25 index."""
    store.candidates(["apple"], query_gaussians=_query())


def _assert_matches_bm25s(store: KLHybridStore, live: dict[str, str] | None = None) -> None:
    """The store's BM25 half is a fresh bm25s index over its live documents (in its row order)."""
    _rebuild(store)
    half = store._bm25
    assert half.ids == store.ids
    if live is not None:
        assert half.ids == list(live)  # an upsert moves a document to the end
    texts = {d.id: d.text or "" for d in store.kl.get_by_ids(half.ids)}
    corpus = [store._tokenizer(texts[i]) for i in half.ids]
    if not any(corpus):
        assert half.csc is None
        for q in QUERIES:
            scores, mass, matched = half.scores(store._tokenizer(q))
            assert scores.shape == (len(half.ids),) and not scores.any() and mass == matched == 0.0
        return
    index = bm25s.BM25(k1=store.k1, b=store.b, method="lucene")
    index.index(corpus, create_empty_token=False, show_progress=False)
    csc = half.csc
    assert csc is not None
    assert set(csc.vocab) == set(index.vocab_dict)  # no term of a deleted or replaced document
    assert sorted(csc.vocab.values()) == list(range(len(csc.vocab)))
    assert csc.data.dtype == np.float32 and csc.indices.dtype == index.scores["indices"].dtype
    # bm25s' arrays, their columns in bm25s' vocabulary order (which depends on the hash seed): our columns in
    # that order must give them, element for element
    ref = index.scores
    by_ref_column = sorted(csc.vocab, key=index.vocab_dict.__getitem__)
    spans = [(int(csc.indptr[csc.vocab[t]]), int(csc.indptr[csc.vocab[t] + 1])) for t in by_ref_column]
    np.testing.assert_array_equal(np.cumsum([0] + [hi - lo for lo, hi in spans]), ref["indptr"])
    np.testing.assert_array_equal(np.concatenate([csc.indices[lo:hi] for lo, hi in spans]), ref["indices"])
    data = np.concatenate([csc.data[lo:hi] for lo, hi in spans])
    if EXACT:
        np.testing.assert_array_equal(data, ref["data"])
    else:  # pragma: no cover - numpy 1
        np.testing.assert_allclose(data, ref["data"], rtol=1e-6, atol=0)
    for q in QUERIES:
        tokens = store._tokenizer(q)
        ours, _mass, _matched = half.scores(tokens)
        known = [t for t in tokens if t in index.vocab_dict]
        expected = index.get_scores(known).astype(np.float64) if known else np.zeros(len(half.ids))
        if len(known) <= 1 and EXACT:  # one column's weights: bm25s' float32 values, exactly
            np.testing.assert_array_equal(ours, expected)
        else:  # a sum of several columns: ours in float64, bm25s' in float32
            np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-12)


def _store(**kw: Any) -> KLHybridStore:
    return KLHybridStore(fusion="rrf", stemmer=None, **kw)


_TEXT = st.lists(st.sampled_from(WORDS), min_size=0, max_size=8).map(" ".join).map(lambda t: t or "!!!")
_ID = st.sampled_from([f"d{i}" for i in range(12)])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(_ID, _TEXT), min_size=1, max_size=5, unique_by=lambda p: p[0])),
        st.tuples(st.just("delete"), st.lists(_ID, min_size=1, max_size=6, unique=True)),
        st.tuples(st.just("search"), st.just([])),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, k1=st.sampled_from([0.9, 1.5]), b=st.sampled_from([0.0, 0.4, 1.0]))
def test_the_rebuilt_index_is_a_fresh_bm25s_index_after_any_adds_upserts_and_deletes(
    ops: list[tuple[str, list[Any]]], k1: float, b: float
) -> None:
    store = _store(k1=k1, b=b)
    live: dict[str, str] = {}
    for step, (kind, arg) in enumerate(ops):
        if kind == "add":
            ids, texts = [i for i, _ in arg], [t for _, t in arg]
            store.add(texts, gaussians=_gaussians(len(ids), seed=step), ids=ids)
            for doc_id, text in arg:
                live.pop(doc_id, None)
                live[doc_id] = text
        elif kind == "delete":
            gone = [i for i in arg if i in live]
            if gone:
                store.delete(gone)
                for doc_id in gone:
                    del live[doc_id]
        else:
            _rebuild(store)
    _assert_matches_bm25s(store, live)


def test_a_rebuild_after_a_small_add_does_not_index_again_with_bm25s(monkeypatch: pytest.MonkeyPatch) -> None:
    """bm25s.BM25.index counts every token of every document in Python: 76-118x a search, at 5k-40k documents."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the BM25 half was rebuilt with bm25s.BM25.index")

    store = _store()
    texts = [" ".join(WORDS[i % 7 : i % 7 + 4]) for i in range(30)]
    store.add(texts, gaussians=_gaussians(30), ids=[f"d{i}" for i in range(30)])
    monkeypatch.setattr(bm25s.BM25, "index", refuse)
    _rebuild(store)
    store.add(["kiwi café"], gaussians=_gaussians(1, seed=1), ids=["new"])
    _rebuild(store)
    store.delete(["d3"])
    _rebuild(store)
    monkeypatch.undo()
    _assert_matches_bm25s(store)


def test_terms_of_deleted_documents_leave_the_vocabulary_and_the_counts_are_renumbered() -> None:
    """bm25s' vocabulary after deletes is the live documents' terms; the counts do not keep dead terms forever."""
    store = _store()
    unique = [f"word{i}" for i in range(40)]
    store.add([f"apple {w}" for w in unique], gaussians=_gaussians(40), ids=[f"d{i}" for i in range(40)])
    _assert_matches_bm25s(store)
    store.delete([f"d{i}" for i in range(5)])  # a few dead terms: left in the counts' vocabulary, not in the index
    _assert_matches_bm25s(store)
    assert "word0" not in store._bm25.csc.vocab  # type: ignore[union-attr]
    store.delete([f"d{i}" for i in range(5, 36)])  # most terms dead: the vocabulary is renumbered
    _assert_matches_bm25s(store)
    assert len(store._bm25._vocab) == 5  # apple and the four live words
    store.add(["pear word0 apple", "word39 fig"], gaussians=_gaussians(2, seed=2), ids=["d0", "d39"])  # d39 upserted
    _assert_matches_bm25s(store)


def test_documents_without_tokens_and_an_all_empty_corpus() -> None:
    store = _store()
    store.add(["the and", "!!!", "the"], gaussians=_gaussians(3), ids=["a", "b", "c"])  # no document has a token
    _assert_matches_bm25s(store)
    hits = store.search("apple", k=3, query_gaussians=_query())
    assert sorted(h.id for h in hits) == ["a", "b", "c"]
    store.add(["apple pear", "apple"], gaussians=_gaussians(2, seed=1), ids=["x", "y"])  # empty ones still count
    _assert_matches_bm25s(store)
    cand = store.candidates(["apple"], query_gaussians=_query())[0]
    ranks = dict(zip(cand.ids, cand.bm25_rank.tolist(), strict=True))
    assert (ranks["y"], ranks["x"], ranks["a"]) == (1, 2, 0)  # the shorter document first; no token, no rank
    store.delete(["x", "y"])  # back to no token at all
    _assert_matches_bm25s(store)
    store.delete(["a", "b", "c"])
    _assert_matches_bm25s(store)
    assert len(store) == 0


def test_unicode_tokens_save_load_in_bm25s_and_rebuild_after_a_load(tmp_path: Path) -> None:
    store = _store()
    texts = ["café naïve", "東京 東京 straße", "ωμέγα café apple", "straße pear", "the 東京"]
    store.add(texts, gaussians=_gaussians(5), ids=[f"d{i}" for i in range(5)])
    _assert_matches_bm25s(store)
    folder = store.save(tmp_path / "h")
    index = bm25s.BM25.load(str(folder / "bm25"), allow_pickle=False)
    assert set(index.vocab_dict) == set(store._bm25.csc.vocab)  # type: ignore[union-attr]
    for q in QUERIES:
        known = [t for t in store._tokenizer(q) if t in index.vocab_dict]
        if known:
            ours = store._bm25.scores(store._tokenizer(q))[0]
            np.testing.assert_allclose(ours, index.get_scores(known), rtol=1e-6)
    loaded = KLHybridStore.load(folder)
    assert loaded._bm25.counts is None  # counted again from the texts only when the store changes
    _assert_matches_bm25s(loaded)
    loaded.add(["東京 kiwi"], gaussians=_gaussians(1, seed=3), ids=["d1"])  # an upsert after a load
    assert loaded._bm25.counts is not None
    _assert_matches_bm25s(loaded)
    loaded.delete(["d0"])
    _assert_matches_bm25s(loaded)


def test_a_store_whose_index_bm25s_built_loads_and_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save of the code before the counts (its index built by bm25s.BM25.index, columns in hash order) loads."""
    import kl_retrievers.hybrid as hybrid_module

    def bm25s_build(self: Any) -> None:  # the old build: bm25s over the documents' tokens
        ids = list(self.metas)  # the row order
        texts = {d.id: d.text or "" for d in store.kl.get_by_ids(ids)}
        corpus = [self.tokenizer(texts[i]) for i in ids]
        index = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        index.index(corpus, create_empty_token=False, show_progress=False)
        s = index.scores
        self.ids, self.row = ids, {doc_id: j for j, doc_id in enumerate(ids)}
        self.csc = hybrid_module._CSC(s["data"], s["indices"], s["indptr"], index.vocab_dict)
        self._set_idf()
        self.dirty = False

    store = _store()
    texts = [" ".join(WORDS[i % 9 : i % 9 + 3]) for i in range(20)]
    store.add(texts, gaussians=_gaussians(20), ids=[f"d{i}" for i in range(20)])
    with monkeypatch.context() as m:
        m.setattr(hybrid_module._BM25Half, "build", bm25s_build)
        folder = store.save(tmp_path / "old")
    loaded = KLHybridStore.load(folder)
    _assert_matches_bm25s(loaded)
    loaded.add(["fig fig kiwi", "x1"], gaussians=_gaussians(2, seed=4), ids=["d5", "n"])
    loaded.delete(["d6"])
    _assert_matches_bm25s(loaded)


def test_without_scipy_the_index_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """scipy is bm25s' optional "indexing" extra: without it, numpy's stable sort lays out the same arrays."""
    import sys

    from kl_retrievers._bm25 import lucene_index

    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 6, size=50)
    terms = np.concatenate([rng.choice(30, size=k, replace=False) for k in sizes]).astype(np.int32)
    tf = rng.integers(1, 4, size=terms.size)
    with_scipy = lucene_index(terms, tf, sizes, 30, k1=0.9, b=0.4)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)  # as if not installed
    without = lucene_index(terms, tf, sizes, 30, k1=0.9, b=0.4)
    for ours, theirs in zip(with_scipy, without, strict=True):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    assert with_scipy[0].dtype == np.float32 and with_scipy[1].dtype == np.int32 and with_scipy[2].dtype == np.int64


class _Interrupted(Exception):
    """Stands for a KeyboardInterrupt or MemoryError in the middle of a rebuild."""


class _InterruptingCounts(np.ndarray):
    """A document's counts whose term column, read while armed, raises on the ``at``-th read of all of them."""

    reads: ClassVar[list[int]] = [0]
    at: ClassVar[int | None] = None

    def __getitem__(self, key: Any) -> Any:
        cls = _InterruptingCounts
        if cls.at is not None and isinstance(key, tuple) and key[1:] == (0,):  # pairs[:, 0]: the term numbers
            cls.reads[0] += 1
            if cls.reads[0] == cls.at:
                raise _Interrupted(f"interrupted at the term column read #{cls.at}")
        return super().__getitem__(key)


@pytest.mark.parametrize("at", [1, 2, 5])
def test_an_interruption_while_the_vocabulary_is_renumbered_leaves_the_counts_as_they_were(
    at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renumbering the counts of a mostly dead vocabulary is all or nothing: a rebuild interrupted part-way (Ctrl-C,
    MemoryError) leaves counts and vocabulary as they were, and the next search's rebuild is bm25s' index again."""
    store = _store()
    unique = [f"word{i}" for i in range(40)]
    store.add(
        [f"apple {w} pear {unique[(i + 1) % 40]}" for i, w in enumerate(unique)],
        gaussians=_gaussians(40),
        ids=[f"d{i}" for i in range(40)],
    )
    _assert_matches_bm25s(store)
    store.delete([f"d{i}" for i in range(34)])  # 9 of 42 terms live: the next rebuild renumbers most of them
    counts = store._bm25._counts
    assert counts is not None
    for doc_id in counts:
        counts[doc_id] = counts[doc_id].view(_InterruptingCounts)
    monkeypatch.setattr(_InterruptingCounts, "reads", [0])
    monkeypatch.setattr(_InterruptingCounts, "at", at)
    with pytest.raises(_Interrupted):
        _rebuild(store)
    assert _InterruptingCounts.reads[0] == at  # it did stop part-way through the documents
    monkeypatch.setattr(_InterruptingCounts, "at", None)
    assert store._bm25.dirty  # the next search rebuilds
    _assert_matches_bm25s(store)
    assert len(store._bm25._vocab) == 9  # apple, pear, word0 and word34..word39: renumbered this time
    store.add(["word3 kiwi apple"], gaussians=_gaussians(1, seed=5), ids=["d35"])
    _assert_matches_bm25s(store)


@pytest.mark.skipif(not EXACT, reason="numpy 1 casts differently: the weights are compared with a tolerance there")
def test_the_weights_are_compared_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 length normalisation (bm25s' is float64 on numpy 2) moves some weights by a bit: the check sees it."""
    import kl_retrievers._bm25 as bm25_module

    store = _store()
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for _ in range(300)]
    store.add(texts, gaussians=_gaussians(300), ids=[f"d{i}" for i in range(300)])
    _assert_matches_bm25s(store)
    store.add(["apple"], gaussians=_gaussians(1, seed=1), ids=["d0"])  # changed: the next search rebuilds
    monkeypatch.setattr(bm25_module, "_scalar_sum_dtype", lambda: np.dtype(np.float32))
    with pytest.raises(AssertionError, match="not equal"):
        _assert_matches_bm25s(store)


def test_each_text_is_counted_as_soon_as_it_is_tokenised(monkeypatch: pytest.MonkeyPatch) -> None:
    """add and the constructor keep one text's token list at a time, not the whole batch's beside its counts."""
    import weakref

    import kl_retrievers.hybrid as hybrid_module

    class Tokens(list):  # type: ignore[type-arg]  # a token list whose life can be watched
        pass

    alive: set[int] = set()
    most = [0]
    tokenize = hybrid_module._Tokenizer.__call__

    def watched(self: Any, text: str) -> list[str]:
        tokens = Tokens(tokenize(self, text))
        alive.add(id(tokens))
        weakref.finalize(tokens, alive.discard, id(tokens))
        most[0] = max(most[0], len(alive))
        return tokens

    monkeypatch.setattr(hybrid_module._Tokenizer, "__call__", watched)
    store = _store()
    texts = [" ".join(WORDS[i % 9 : i % 9 + 3]) for i in range(50)]
    store.add(texts, gaussians=_gaussians(50), ids=[f"d{i}" for i in range(50)])
    assert most[0] <= 2, f"{most[0]} token lists alive at once while adding 50 texts"
    kl = KLStore()
    kl.add(texts, gaussians=_gaussians(50), ids=[f"d{i}" for i in range(50)])
    most[0] = 0
    again = KLHybridStore(kl_store=kl, fusion="rrf", stemmer=None)  # counts its KL store's texts
    assert most[0] <= 2, f"{most[0]} token lists alive at once while counting a store's 50 texts"
    monkeypatch.undo()
    _assert_matches_bm25s(store)
    _assert_matches_bm25s(again)


def test_the_counts_are_read_only_and_recounted_from_texts(tmp_path: Path) -> None:
    """``counts`` only reads the counts; ``recount`` counts texts afresh (a loaded store, at its first change)."""
    store = _store()
    store.add(["apple pear pear", "fig"], gaussians=_gaussians(2), ids=["a", "b"])
    half = store._bm25
    counts = half.counts
    assert counts is not None and sorted(counts) == ["a", "b"]
    assert sorted(counts["a"][:, 1].tolist()) == [1, 2]  # apple once, pear twice
    with pytest.raises(AttributeError):
        half.counts = None  # type: ignore[misc]
    half.recount({"a": "kiwi kiwi", "b": "fig apple"})
    counts = half.counts
    assert counts is not None and set(half._vocab) == {"kiwi", "fig", "apple"}
    assert counts["a"].tolist() == [[half._vocab["kiwi"], 2]]
    loaded = KLHybridStore.load(store.save(tmp_path / "h"))
    assert loaded._bm25.counts is None
    loaded.delete(["b"])  # the first change counts the stored texts again
    assert loaded._bm25.counts is not None and list(loaded._bm25.counts) == ["a"]
    _assert_matches_bm25s(loaded)
