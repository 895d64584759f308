"""The hybrid retriever's confidence: one calibrator for every query, at one depth whatever ``k``; what ``add`` takes.

* A query whose BM25 half matches none of its (filtered) candidates gets the hybrid calibrator's
  confidence like any other (the shipped calibrators give it about 0; a dense-calibrator fallback
  was tried and reverted: on NFCorpus' training queries BM25 does not match, the dense top-1 is
  rarely right).
* The confidence reads the candidates at the store's ``candidates`` depth (at least the 2 scores a
  calibrator needs), whatever ``k`` is, from one search: a filter is called once per document.
* It is the adaptive ranking's: the same for every fusion; ``min_confidence`` with another fusion
  and the shipped calibrator warns once (not with an explicit calibrator).
* ``KLHybridStore.add`` takes the sequences ``KLStore.add`` takes (numpy arrays, generators, pandas
  Series), refuses what it refuses with its messages, and checks metadatas before encoding.

The tiny random encoder *claims* to be the default model, so the shipped calibrators are found; their
values mean nothing on it, so the tests compare with the calibrators computed directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from conftest import HYBRID_TEXTS, make_tiny_encoder, random_gaussians
from kl_retrievers._confidence import ConfidenceScorer, hybrid_search
from kl_retrievers.calibration import (
    bm25_matches_any,
    default_calibrator,
    default_hybrid_calibrator,
    hybrid_confidence,
)
from kl_retrievers.hybrid import Candidates, KLHybridStore
from kl_retrievers.index import KLStore

DEFAULT_NAME = "kl_retrievers:minilm-gauss-soup"
NO_WORD = "hello world query"  # none of its words is in HYBRID_TEXTS
IDS = [f"d{i}" for i in range(len(HYBRID_TEXTS))]


def _named_encoder() -> Any:
    enc = make_tiny_encoder(seed=1)
    enc.name_or_path = DEFAULT_NAME  # the default model's name: its shipped calibrators are found
    return enc


@pytest.fixture(scope="module")
def store() -> KLHybridStore:
    s = KLHybridStore(_named_encoder(), fusion="adaptive")
    s.add(HYBRID_TEXTS, ids=IDS, metadatas=[{"n": i} for i in range(len(HYBRID_TEXTS))])
    return s


def _dense_confidence(c: Candidates) -> float:
    dense = np.sort(c.neg_kl[c.dense_rank > 0])[::-1]
    return default_calibrator().confidence(dense, c.uncertainty)


def test_a_query_bm25_does_not_match_gets_the_hybrid_calibrators_confidence(store: KLHybridStore) -> None:
    from kl_retrievers.langchain import CONFIDENCE_KEY, KLHybridRetriever

    c = store.candidates([NO_WORD])[0]
    assert not bm25_matches_any(c)
    want = hybrid_confidence(default_hybrid_calibrator(), c)
    assert want != pytest.approx(_dense_confidence(c))  # not the dense calibrator's (the reverted fallback)
    docs = KLHybridRetriever(store=store, k=3).invoke(NO_WORD)
    assert [d.metadata[CONFIDENCE_KEY] for d in docs] == pytest.approx([want] * 3)
    assert [d.id for d in docs] == [c.ids[j] for j in np.argsort(-c.neg_kl)[:3]]  # ranked as the dense list
    assert KLHybridRetriever(store=store, k=3, min_confidence=min(1.0, want + 1e-6)).invoke(NO_WORD) == []
    assert len(KLHybridRetriever(store=store, k=3, min_confidence=max(0.0, want - 1e-6)).invoke(NO_WORD)) == 3


def test_a_filter_that_leaves_no_bm25_match_keeps_the_hybrid_confidence(store: KLHybridStore) -> None:
    flt = {"n": {"$ne": 4}}  # "water on black rock" is the only document with "rock"
    c = store.candidates(["rock"], filter=flt)[0]
    assert not bm25_matches_any(c) and bm25_matches_any(store.candidates(["rock"])[0])
    hits, confidence, reason = hybrid_search(store, "rock", 2, filter=flt, scorer=ConfidenceScorer(None, "hybrid"))
    assert reason is None and len(hits) == 2 and "d4" not in {h.id for h in hits}
    assert confidence == pytest.approx(hybrid_confidence(default_hybrid_calibrator(), c))
    assert confidence != pytest.approx(_dense_confidence(c))


def test_the_confidence_does_not_change_with_k() -> None:
    s = KLHybridStore(_named_encoder(), fusion="adaptive", candidates=3)
    s.add(HYBRID_TEXTS, ids=IDS)
    query = "the black sun and a cat"
    want = hybrid_confidence(default_hybrid_calibrator(), s.candidates([query], depth=3)[0])
    scorer = ConfidenceScorer(None, "hybrid")
    for k in (1, 3, 4, 6):
        hits, confidence, _ = hybrid_search(s, query, k, scorer=scorer)
        assert len(hits) == k and confidence == pytest.approx(want), k
    floor = min(1.0, want + 1e-6)
    assert hybrid_search(s, query, 6, scorer=scorer, min_confidence=floor)[0] == []  # refused at every k
    assert len(hybrid_search(s, query, 6, scorer=scorer, min_confidence=max(0.0, want - 1e-6))[0]) == 6


@pytest.mark.parametrize("k", [1, 3])
def test_one_candidate_per_half_still_gives_a_confidence(k: int) -> None:
    """``candidates=1``: the confidence is read at the 2 candidates a calibrator needs, whatever ``k``."""
    s = KLHybridStore(_named_encoder(), fusion="adaptive", candidates=1)
    s.add(HYBRID_TEXTS, ids=IDS)
    want = hybrid_confidence(default_hybrid_calibrator(), s.candidates(["black rock"], depth=2)[0])
    hits, confidence, reason = hybrid_search(
        s, "black rock", k, scorer=ConfidenceScorer(None, "hybrid"), min_confidence=0.0
    )
    assert reason is None and len(hits) == k and confidence == pytest.approx(want)
    # the ranking is still the one of candidates=1 (the deeper read is for the confidence only)
    ranked = [doc_id for doc_id, *_ in s.fuse_candidates(s.candidates(["black rock"], depth=max(k, 1))[0], k)]
    assert [h.id for h in hits] == ranked


@pytest.mark.parametrize("k", [3, 6])
def test_the_filter_is_called_once_per_document_whatever_k(k: int) -> None:
    s = KLHybridStore(_named_encoder(), fusion="adaptive", candidates=3)
    s.add(HYBRID_TEXTS, ids=IDS, metadatas=[{"n": i} for i in range(len(HYBRID_TEXTS))])
    calls: list[int] = []

    def allow(meta: Mapping[str, Any]) -> bool:
        calls.append(1)
        return meta.get("n") != 4

    hits, confidence, _ = hybrid_search(s, "black rock", k, filter=allow, scorer=ConfidenceScorer(None, "hybrid"))
    assert len(calls) == len(HYBRID_TEXTS)  # one search, not one per depth
    assert len(hits) == min(k, len(HYBRID_TEXTS) - 1) and "d4" not in {h.id for h in hits}
    want = hybrid_confidence(default_hybrid_calibrator(), s.candidates(["black rock"], filter=allow, depth=3)[0])
    assert confidence == pytest.approx(want)


@pytest.mark.parametrize("seed", range(4))
def test_a_shallower_view_equals_a_search_at_that_depth(seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = "cat dog sat mat sun tea bread moon star water rock train sea green black".split()
    texts = [" ".join(rng.choice(words, size=4)) for _ in range(40)]
    g = random_gaussians(40, 4, seed=seed)
    s = KLHybridStore(fusion="adaptive")
    s.add(texts, gaussians=g, ids=[f"t{i}" for i in range(40)], metadatas=[{"n": i} for i in range(40)])
    queries, qg = ["black cat on the sea", "moon rock", NO_WORD], random_gaussians(3, 4, seed=seed + 10)
    for flt in (None, {"n": {"$lt": 25}}):
        deep = s.candidates(queries, query_gaussians=qg, filter=flt, depth=30)
        for depth in (1, 2, 7, 12):
            direct = s.candidates(queries, query_gaussians=qg, filter=flt, depth=depth)
            for d, want in zip(deep, direct, strict=True):
                view = d.at_depth(depth)
                assert view.ids == want.ids
                assert view.dense_rank.tolist() == want.dense_rank.tolist()
                assert view.bm25_rank.tolist() == want.bm25_rank.tolist()
                assert view.neg_kl == pytest.approx(want.neg_kl) and view.bm25 == pytest.approx(want.bm25)
                assert view.signals == pytest.approx(want.signals)
    assert deep[0].at_depth(30) is deep[0]


def test_the_fusion_warning_is_for_the_shipped_calibrator_only(
    store: KLHybridStore, caplog: pytest.LogCaptureFixture
) -> None:
    import kl_retrievers._confidence as confidence_module

    confidence_module._WARNED.discard("hybrid-fusion\0rrf")
    shipped = ConfidenceScorer(None, "hybrid")
    explicit = ConfidenceScorer(default_hybrid_calibrator(), "hybrid")  # e.g. one fitted for rrf
    adaptive = hybrid_search(store, "black rock", 2, scorer=shipped)[1]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        assert hybrid_search(store, "black rock", 2, fusion="rrf", scorer=shipped)[1] == adaptive
        assert hybrid_search(store, "black rock", 2, fusion="adaptive", scorer=shipped, min_confidence=0.0)[1]
        hybrid_search(store, "black rock", 2, fusion="rrf", scorer=explicit, min_confidence=0.01)
        hybrid_search(store, "black rock", 2, fusion="rrf", scorer=shipped, min_confidence=0.0)  # never abstains
        assert not [r for r in caplog.records if "fusion=" in r.getMessage()]  # no floor, 0, adaptive, or explicit
        for _ in range(2):
            hybrid_search(store, "black rock", 2, fusion="rrf", scorer=shipped, min_confidence=0.01)
    warned = [r.getMessage() for r in caplog.records if "fusion='rrf'" in r.getMessage()]
    assert len(warned) == 1 and "'adaptive' fusion's ranking" in warned[0]


def _texts_of(kind: str) -> Any:
    texts = ["a b", "c d"]
    if kind == "tuple":
        return tuple(texts)
    if kind == "ndarray":
        return np.array(texts)
    if kind == "generator":
        return (t for t in texts)
    pd = pytest.importorskip("pandas")
    return pd.Series(texts)


@pytest.mark.parametrize("kind", ["tuple", "ndarray", "generator", "pandas"])
def test_add_takes_the_sequences_klstore_add_takes(kind: str) -> None:
    g = random_gaussians(2, 4)
    kl = KLStore()
    assert kl.add(_texts_of(kind), gaussians=g, ids=["x", "y"]) == ["x", "y"]
    s = KLHybridStore(fusion="rrf")
    assert s.add(_texts_of(kind), gaussians=g, ids=["x", "y"]) == ["x", "y"]
    s.check_sync()
    assert [d.text for d in s.get_by_ids(["x", "y"])] == ["a b", "c d"]
    assert [h.id for h in s.search("d", k=1, query_gaussians=g[1:])] == ["y"]  # BM25 indexed them


def _message(add: Any, texts: Any) -> tuple[type[BaseException], str]:
    with pytest.raises((TypeError, ValueError)) as info:
        add(texts, gaussians=random_gaussians(2, 4), ids=["x", "y"])
    return info.type, str(info.value)


@pytest.mark.parametrize(
    "texts",
    [{"a b", "c d"}, {"x": "a b", "y": "c d"}, {"x": "a b", "y": "c d"}.keys(), b"ab"],
    ids=["set", "dict", "keys", "bytes"],
)
def test_add_refuses_what_klstore_add_refuses_with_its_message(texts: Any) -> None:
    s = KLHybridStore(fusion="rrf")
    assert _message(s.add, texts) == _message(KLStore().add, texts)
    assert len(s) == 0


def test_add_refuses_one_string_no_texts_and_non_strings_saying_why() -> None:
    s = KLHybridStore(fusion="rrf")
    with pytest.raises(TypeError, match="not one string; got 'a b': wrap it in a list"):
        s.add("a b", gaussians=random_gaussians(1, 4))  # type: ignore[arg-type]
    for texts, name in ((None, "NoneType"), (5, "int")):
        with pytest.raises(
            TypeError, match=rf"BM25 indexes every document's text, also when gaussians= is given\); got {name}$"
        ) as info:
            s.add(texts, gaussians=random_gaussians(1, 4))  # type: ignore[arg-type]
        assert "one string" not in str(info.value)

    def gen() -> Iterator[Any]:
        yield "a b"
        yield 3

    with pytest.raises(TypeError, match=r"texts\[1\] must be a str \(BM25 indexes every document's text\); got int"):
        s.add(gen(), gaussians=random_gaussians(2, 4))  # type: ignore[arg-type]
    assert len(s) == 0


class _CountingEncoder:
    """Encodes nothing real; counts the texts it was asked to encode."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode_documents(self, texts: Any, **_: Any) -> Any:
        self.encoded += len(texts)
        return random_gaussians(len(texts), 4)

    def encode_queries(self, texts: Any, **_: Any) -> Any:
        return self.encode_documents(texts)


@pytest.mark.parametrize(
    ("metadatas", "error", "message"),
    [
        ([{"a": 1}], ValueError, "got 1 metadatas but 2 documents"),
        ([{"a": 1}, "b"], TypeError, r"metadatas\[1\] must be a dict or None; got str"),
        ([{"a": 1}, {"b": object()}], TypeError, r"metadatas\[1\] is not JSON-serialisable"),
    ],
    ids=["miscounted", "not-a-dict", "not-json"],
)
def test_add_checks_metadatas_before_encoding(metadatas: Any, error: type[Exception], message: str) -> None:
    for make in (lambda e: KLStore(encoder=e), lambda e: KLHybridStore(e, fusion="rrf")):
        enc = _CountingEncoder()
        s = make(enc)
        with pytest.raises(error, match=message):
            s.add(["one", "two"], ids=["a", "b"], metadatas=metadatas)
        assert enc.encoded == 0 and len(s) == 0, type(s).__name__
