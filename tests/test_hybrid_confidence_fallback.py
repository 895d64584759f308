"""The hybrid retriever's confidence when BM25 matches nothing, at any ``k`` and any fusion; what ``add`` takes.

* A query whose BM25 half matches none of its (filtered) candidates is ranked as the dense list ranks
  it, so with the model's hybrid calibrator its confidence is the model's *dense* calibrator's (the
  hybrid one, fitted on SQuAD where no common word meant no answer, gave such queries about 0).
* The confidence reads the candidates at the store's ``candidates`` depth, whatever ``k`` is.
* It is the adaptive ranking's: the same for every fusion; ``min_confidence`` with another fusion
  warns once.
* ``KLHybridStore.add`` takes the sequences ``KLStore.add`` takes (numpy arrays, generators, pandas
  Series) and refuses what it refuses, with its messages.

The tiny random encoder *claims* to be the default model, so the shipped calibrators are found; their
values mean nothing on it, so the tests compare with the calibrators computed directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import HYBRID_TEXTS, make_tiny_encoder, random_gaussians
from kl_retrievers._confidence import ConfidenceScorer, hybrid_search
from kl_retrievers.calibration import (
    HYBRID_CALIBRATION_FILE,
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


def test_a_query_bm25_does_not_match_gets_the_dense_calibrators_confidence(store: KLHybridStore) -> None:
    from kl_retrievers.langchain import CONFIDENCE_KEY, KLHybridRetriever

    c = store.candidates([NO_WORD])[0]
    assert not bm25_matches_any(c)
    want = _dense_confidence(c)
    assert want != pytest.approx(hybrid_confidence(default_hybrid_calibrator(), c))  # the old, hybrid value
    docs = KLHybridRetriever(store=store, k=3).invoke(NO_WORD)
    assert [d.metadata[CONFIDENCE_KEY] for d in docs] == pytest.approx([want] * 3)
    assert [d.id for d in docs] == [c.ids[j] for j in np.argsort(-c.neg_kl)[:3]]  # the dense ranking
    # abstention judges that confidence
    assert KLHybridRetriever(store=store, k=3, min_confidence=min(1.0, want + 1e-6)).invoke(NO_WORD) == []
    assert len(KLHybridRetriever(store=store, k=3, min_confidence=max(0.0, want - 1e-6)).invoke(NO_WORD)) == 3
    # a query BM25 matches keeps the hybrid calibrator's confidence
    matched = store.candidates(["black rock"])[0]
    hits, confidence, _ = hybrid_search(store, "black rock", 3, scorer=ConfidenceScorer(None, "hybrid"))
    assert bm25_matches_any(matched) and len(hits) == 3
    assert confidence == pytest.approx(hybrid_confidence(default_hybrid_calibrator(), matched))


def test_a_filter_that_leaves_no_bm25_match_gives_the_dense_confidence(store: KLHybridStore) -> None:
    flt = {"n": {"$ne": 4}}  # "water on black rock" is the only document with "rock"
    c = store.candidates(["rock"], filter=flt)[0]
    assert not bm25_matches_any(c) and bm25_matches_any(store.candidates(["rock"])[0])
    hits, confidence, reason = hybrid_search(store, "rock", 2, filter=flt, scorer=ConfidenceScorer(None, "hybrid"))
    assert reason is None and len(hits) == 2 and "d4" not in {h.id for h in hits}
    assert confidence == pytest.approx(_dense_confidence(c))


def test_an_explicit_or_lone_hybrid_calibrator_is_used_as_given(store: KLHybridStore, tmp_path: Path) -> None:
    cal = default_hybrid_calibrator()
    c = store.candidates([NO_WORD])[0]
    _, explicit, _ = hybrid_search(store, NO_WORD, 2, scorer=ConfidenceScorer(cal, "hybrid"))
    assert explicit == pytest.approx(hybrid_confidence(cal, c))
    # a model folder that ships a hybrid calibrator and no dense one: the hybrid one for every query
    folder = tmp_path / "model"
    folder.mkdir()
    cal.save(folder / HYBRID_CALIBRATION_FILE)
    enc = make_tiny_encoder(seed=1)
    enc.name_or_path = str(folder)
    lone = KLHybridStore(enc, fusion="adaptive", adaptive_params=store.adaptive_params())
    lone.add(HYBRID_TEXTS, ids=IDS)
    scorer = ConfidenceScorer(None, "hybrid")
    assert scorer.no_bm25_calibrator(enc) is None
    _, confidence, _ = hybrid_search(lone, NO_WORD, 2, scorer=scorer)
    assert confidence == pytest.approx(hybrid_confidence(cal, lone.candidates([NO_WORD])[0]))


def test_hybrid_confidence_takes_a_dense_calibrator_for_unmatched_queries() -> None:
    c = Candidates(
        ["a", "b", "c"], np.array([-2.0, -1.0, -3.0]), np.zeros(3), np.array([2, 1, 0]), np.zeros(3, int), 0.3, {}
    )
    hybrid = default_hybrid_calibrator()
    dense = default_calibrator()
    assert hybrid_confidence(hybrid, c, dense) == pytest.approx(dense.confidence([-1.0, -2.0], 0.3))
    matched = Candidates(c.ids, c.neg_kl, np.array([0.0, 0.0, 2.0]), c.dense_rank, np.array([0, 0, 1]), 0.3, {})
    features = {n: 0.5 for n in hybrid.features}
    matched.signals = {n: features[n] for n in hybrid.features if n not in ("uncertainty", "max_score", "gap12")}
    assert hybrid_confidence(hybrid, matched, dense) == pytest.approx(hybrid_confidence(hybrid, matched))
    with pytest.raises(ValueError, match="must be of kind 'dense'; got kind 'hybrid'"):
        hybrid_confidence(hybrid, c, hybrid)


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


def test_the_confidence_is_the_adaptive_rankings_and_other_fusions_warn_once_under_a_floor(
    store: KLHybridStore, caplog: pytest.LogCaptureFixture
) -> None:
    import kl_retrievers._confidence as confidence_module

    confidence_module._WARNED.discard("hybrid-fusion\0rrf")
    scorer = ConfidenceScorer(None, "hybrid")
    adaptive = hybrid_search(store, "black rock", 2, scorer=scorer)[1]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        assert hybrid_search(store, "black rock", 2, fusion="rrf", scorer=scorer)[1] == adaptive
        assert hybrid_search(store, "black rock", 2, fusion="adaptive", scorer=scorer, min_confidence=0.0)[1]
        assert not [r for r in caplog.records if "fusion=" in r.getMessage()]  # no floor, or adaptive: silent
        for _ in range(2):
            hybrid_search(store, "black rock", 2, fusion="rrf", scorer=scorer, min_confidence=0.0)
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


def test_add_still_refuses_one_string_and_non_strings() -> None:
    s = KLHybridStore(fusion="rrf")
    with pytest.raises(TypeError, match="not one string"):
        s.add("a b", gaussians=random_gaussians(1, 4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sequence of strings \(not one string\); got int"):
        s.add(5, gaussians=random_gaussians(1, 4))  # type: ignore[arg-type]

    def gen() -> Iterator[Any]:
        yield "a b"
        yield 3

    with pytest.raises(TypeError, match=r"texts\[1\] must be a str \(BM25 indexes every document's text\); got int"):
        s.add(gen(), gaussians=random_gaussians(2, 4))  # type: ignore[arg-type]
    assert len(s) == 0
