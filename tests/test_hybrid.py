"""KLHybridStore: BM25 + KL halves in sync, filters on both, save/load, fusion modes and their errors."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import WORDS, max_score_calibrator, random_gaussians
from kl_retrievers.gaussian import Gaussians, neg_kl
from kl_retrievers.hybrid import (
    ADAPTIVE_PARAMS_FILE,
    SIGNALS,
    AdaptiveParams,
    Candidates,
    FusionConfig,
    HybridFormatError,
    KLHybridStore,
    convex_scores,
    fit_adaptive,
    fuse,
    ndcg_at_k,
    normalize_scores,
    rrf_scores,
)

K = 4  # Gaussian dimension of the synthetic documents


def corpus(n: int = 40, seed: int = 0) -> tuple[list[str], list[str], Gaussians, list[dict[str, object]]]:
    rng = np.random.default_rng(seed)
    vocab = [w for w in WORDS if len(w) > 2]
    texts = [" ".join(rng.choice(vocab, size=5)) for _ in range(n)]
    ids = [f"d{i}" for i in range(n)]
    metas: list[dict[str, object]] = [{"lang": "en" if i % 3 else "de", "i": i} for i in range(n)]
    return ids, texts, random_gaussians(n, K, seed=seed), metas


def filled(fusion: str = "rrf", n: int = 40, **kw: object) -> tuple[KLHybridStore, list[str], list[str], Gaussians]:
    ids, texts, g, metas = corpus(n)
    store = KLHybridStore(fusion=fusion, **kw)  # type: ignore[arg-type]
    assert store.add(texts, gaussians=g, ids=ids, metadatas=metas) == ids
    return store, ids, texts, g


def params(normalization: str = "minmax", coef: float = 1.0) -> AdaptiveParams:
    n = len(SIGNALS)
    return AdaptiveParams(SIGNALS, (0.0,) * n, (1.0,) * n, (coef,) * n, 0.2, normalization, model="test")  # type: ignore[arg-type]


def query(seed: int = 99) -> Gaussians:
    return random_gaussians(1, K, seed=seed)


def bm25_list(store: KLHybridStore, text: str) -> list[str]:
    cand = store.candidates([text], query_gaussians=query())[0]
    ranked = sorted((r, d) for d, r in zip(cand.ids, cand.bm25_rank, strict=True) if r > 0)
    return [d for _, d in ranked]


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ sync
def test_add_upsert_delete_keep_both_halves_in_sync() -> None:
    store, ids, texts, g = filled()
    store.check_sync()
    assert store.kl.ids == ids and len(store) == len(ids)
    # upsert: a new text, seen by BM25 at once; the old words no longer find it
    old_words = set(texts[5].split())
    store.upsert(["zebra quokka"], ids=["d5"], gaussians=g[5], metadatas=[{"lang": "en", "i": 5}])
    store.check_sync()
    assert bm25_list(store, "zebra quokka") == ["d5"]
    for word in old_words:
        assert "d5" not in bm25_list(store, word) or word in ("zebra", "quokka")
    assert store.get_by_ids(["d5"])[0].text == "zebra quokka"
    # delete: gone from both halves, in every candidate list
    report = store.delete(["d5", "d7", "nope"])
    assert report.deleted == ["d5", "d7"] and report.missing == ["nope"]
    store.check_sync()
    cand = store.candidates(["zebra quokka " + texts[7]], query_gaussians=g[7])[0]
    assert "d5" not in cand.ids and "d7" not in cand.ids
    assert bm25_list(store, "zebra quokka") == []
    # add new documents (generated ids)
    new = store.add(["quokka"], gaussians=g[:1])
    assert len(new) == 1 and new[0] in store and bm25_list(store, "quokka") == new
    store.check_sync()


def test_a_refused_add_changes_neither_half() -> None:
    store, _ids, _texts, g = filled()
    with pytest.raises(ValueError, match="dimension"):
        store.add(["quokka"], gaussians=random_gaussians(1, K + 1), ids=["bad"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        store.add(["quokka", None], gaussians=g[:2], ids=["x", "y"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one string"):
        store.add("quokka", gaussians=g[:1])  # type: ignore[arg-type]
    store.check_sync()
    assert "bad" not in store and bm25_list(store, "quokka") == []


def test_check_sync_names_ids_changed_behind_its_back() -> None:
    store, *_ = filled()
    with store.kl._owner_writes():  # the KL half changed directly (past its guard, which refuses such a write)
        store.kl.delete(["d3"])
    with pytest.raises(RuntimeError, match=r"1 only in BM25 \['d3'\]"):
        store.check_sync()


def test_wrapping_a_filled_kl_store_indexes_its_texts() -> None:
    from kl_retrievers.index import KLStore

    ids, texts, g, metas = corpus()
    kl = KLStore()
    kl.add(texts, gaussians=g, ids=ids, metadatas=metas)
    store = KLHybridStore(fusion="rrf", kl_store=kl)
    store.check_sync()
    word = texts[0].split()[0]
    assert set(bm25_list(store, word)) == {i for i, t in zip(ids, texts, strict=True) if word in t.split()}
    bare = KLStore()
    bare.add(gaussians=g[:2], ids=["a", "b"])
    with pytest.raises(ValueError, match="without text"):
        KLHybridStore(fusion="rrf", kl_store=bare)


# ------------------------------------------------------------------ filters
@pytest.mark.parametrize("flt", [{"lang": "de"}, lambda m: m["lang"] == "de"], ids=["dict", "callable"])
def test_filters_restrict_both_halves_before_ranking(flt: object) -> None:
    store, ids, texts, g = filled(n=60)
    allowed = {i for i in ids if int(i[1:]) % 3 == 0}
    word = texts[1].split()[0]  # d1 is "en": it must not come back through BM25 either
    for q_text, qg in ((word, g[1]), (texts[2], g[2])):
        cand = store.candidates([q_text], query_gaussians=qg, filter=flt)[0]  # type: ignore[arg-type]
        assert cand.ids and set(cand.ids) <= allowed
        for mode in ("rrf", "convex"):
            hits = store.search(q_text, k=50, filter=flt, query_gaussians=qg, fusion=mode)  # type: ignore[arg-type]
            assert hits and {h.id for h in hits} <= allowed and all(h.metadata["lang"] == "de" for h in hits)
    unfiltered = store.candidates([word], query_gaussians=g[1])[0]
    assert "d1" in unfiltered.ids  # without the filter it is a candidate: the filter did the work


def test_filter_with_an_unknown_operator_fails_before_searching() -> None:
    store, *_ = filled()
    with pytest.raises(ValueError, match="unknown filter operator"):
        store.search("cat", query_gaussians=query(), filter={"i": {"$bad": 1}})


# ------------------------------------------------------------------ save / load
def test_save_load_round_trip_without_pickle(tmp_path: Path) -> None:
    store, ids, texts, g = filled(fusion="convex", weight=0.3, normalization="zscore")
    before = store.search_batch([texts[0], "cat dog"], k=8, query_gaussians=g[:2])
    folder = store.save(tmp_path / "hybrid")
    config = json.loads((folder / "hybrid.json").read_text())
    assert config["fusion"] == {
        "mode": "convex",
        "weight": 0.3,
        "normalization": "zscore",
        "rrf_k": 60.0,
        "candidates": 100,
    }
    assert config["score"]["name"] == "fused_convex" and config["score"]["direction"] == "higher_is_better"
    assert config["score"]["components"]["dense"] == {"name": "neg_kl", "direction": "higher_is_better"}
    assert config["library_version"] and config["count"] == len(ids)
    for npy in folder.rglob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises on a pickled array
    for p in folder.rglob("*"):
        assert p.suffix in ("", ".npy", ".json", ".jsonl", ".faiss"), p
    loaded = KLHybridStore.load(folder)
    after = loaded.search_batch([texts[0], "cat dog"], k=8, query_gaussians=g[:2])
    assert [[(h.id, h.score, h.bm25) for h in r] for r in after] == [
        [(h.id, h.score, h.bm25) for h in r] for r in before
    ]
    assert [h.neg_kl for r in after for h in r] == pytest.approx([h.neg_kl for r in before for h in r])
    assert loaded.fusion == store.fusion
    # a loaded store keeps changing both halves
    loaded.upsert(["quokka"], ids=["d0"], gaussians=g[0])
    loaded.delete(["d1"])
    loaded.check_sync()
    assert bm25_list(loaded, "quokka") == ["d0"]
    again = KLHybridStore.load(loaded.save(tmp_path / "hybrid"))
    assert bm25_list(again, "quokka") == ["d0"] and "d1" not in again


def test_empty_store_round_trip(tmp_path: Path) -> None:
    store = KLHybridStore(fusion="rrf")
    loaded = KLHybridStore.load(store.save(tmp_path / "empty"))
    assert len(loaded) == 0 and loaded.search("x", query_gaussians=query()) == []
    loaded.add(["cat"], gaussians=query(), ids=["c"])
    assert [h.id for h in loaded.search("cat", query_gaussians=query())] == ["c"]


def test_save_refuses_to_overwrite_another_folder(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    store, *_ = filled()
    with pytest.raises(ValueError, match="not a hybrid store folder"):
        store.save(other)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("half", ["bm25", "kl"])
def test_halves_from_different_saves_are_refused(tmp_path: Path, half: str) -> None:
    a, *_ = filled(n=30)
    b, _ids_b, _texts_b, g_b = filled(n=30)
    b.delete(["d2", "d4"])
    b.add(["new one"], gaussians=g_b[:1], ids=["x9"])
    fa, fb = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    shutil.rmtree(fa / half)
    shutil.copytree(fb / half, fa / half)
    snapshot = tree_digest(tmp_path)
    with pytest.raises(HybridFormatError) as err:
        KLHybridStore.load(fa)
    msg = str(err.value)
    assert "disagree on ids" in msg and "'x9'" in msg and "'d2'" in msg and "another save" in msg
    assert tree_digest(tmp_path) == snapshot  # nothing overwritten


def test_same_ids_but_another_save_is_refused(tmp_path: Path) -> None:
    a, _ids, _texts, g = filled(n=20)
    fa = a.save(tmp_path / "a")
    a.upsert(["quokka"], ids=["d0"], gaussians=g[0])  # same ids, other content
    fb = a.save(tmp_path / "b")
    shutil.rmtree(fa / "bm25")
    shutil.copytree(fb / "bm25", fa / "bm25")
    snapshot = tree_digest(tmp_path)
    with pytest.raises(HybridFormatError, match=r"not written by the same save \(save tokens: "):
        KLHybridStore.load(fa)
    assert tree_digest(tmp_path) == snapshot


def test_load_names_a_damaged_config(tmp_path: Path) -> None:
    store, *_ = filled()
    folder = store.save(tmp_path / "h")
    cfg = json.loads((folder / "hybrid.json").read_text())
    cfg["fusion"]["weight"] = 3
    (folder / "hybrid.json").write_text(json.dumps(cfg))
    with pytest.raises(HybridFormatError, match=r"field 'fusion'.*weight must be a number in \[0, 1\]"):
        KLHybridStore.load(folder)
    with pytest.raises(FileNotFoundError):
        KLHybridStore.load(tmp_path / "missing")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("mode", ["dense", "RRF", "", None, 3])
def test_unknown_fusion_mode_is_named(mode: object) -> None:
    with pytest.raises(ValueError, match=r"unknown fusion mode .*allowed modes: 'rrf', 'convex', 'adaptive'") as err:
        KLHybridStore(fusion=mode)  # type: ignore[arg-type]
    assert repr(mode) in str(err.value)
    store, *_ = filled()
    with pytest.raises(ValueError, match="unknown fusion mode"):
        store.search("cat", query_gaussians=query(), fusion=mode if mode is not None else "none")  # type: ignore[arg-type]


@pytest.mark.parametrize("fusion", ["rrf", "adaptive"])
def test_a_weight_for_a_fusion_without_one_is_refused_not_ignored(fusion: str) -> None:
    store, *_ = filled(fusion="convex", adaptive_params=params())
    with pytest.raises(ValueError, match=rf"weight=0.2 applies to convex fusion only; this call fuses with '{fusion}'"):
        store.search("cat", query_gaussians=query(), fusion=fusion, weight=0.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="convex fusion only"):
        store.search_run(["q1"], ["cat"], query_gaussians=query(), fusion=fusion, weight=0.2)  # type: ignore[arg-type]
    assert store.search("cat", query_gaussians=query(), weight=0.2)  # the store's own convex fusion
    assert store.search("cat", query_gaussians=query(), fusion=fusion)  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, math.inf, True, "0.5"])
def test_weight_outside_the_unit_interval_is_named(weight: object) -> None:
    with pytest.raises(ValueError, match=r"weight must be a number in \[0, 1\]") as err:
        KLHybridStore(fusion="convex", weight=weight)  # type: ignore[arg-type]
    assert repr(weight) in str(err.value)
    store, *_ = filled(fusion="convex")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        store.search("cat", query_gaussians=query(), weight=weight)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        convex_scores(np.zeros(2), np.zeros(2), weight)  # type: ignore[arg-type]


def test_other_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown normalization 'l2'"):
        KLHybridStore(fusion="convex", normalization="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="candidates must be an integer >= 1; got 0"):
        KLHybridStore(fusion="rrf", candidates=0)
    with pytest.raises(ValueError, match="rrf_k must be a finite number > 0; got -1"):
        KLHybridStore(fusion="rrf", rrf_k=-1)
    store, *_ = filled()
    with pytest.raises(ValueError, match="k must be"):
        store.search("cat", k=0, query_gaussians=query())
    with pytest.raises(ValueError, match="needs an encoder"):
        store.search("cat")
    with pytest.raises(ValueError, match="2 query Gaussians for 1 query texts"):
        store.search_batch(["cat"], query_gaussians=random_gaussians(2, K))


# ------------------------------------------------------------------ fusion maths
def test_rrf_formula_on_a_hand_made_case() -> None:
    # dense list: a, b, c; BM25 list: c, d, a
    c = Candidates(
        ids=["a", "b", "c", "d"],
        neg_kl=np.array([-1.0, -2.0, -3.0, -9.0]),
        bm25=np.array([1.0, 0.0, 5.0, 2.0]),
        dense_rank=np.array([1, 2, 3, 0]),
        bm25_rank=np.array([3, 0, 1, 2]),
        uncertainty=0.0,
        signals={},
    )
    scores, w = fuse(c, FusionConfig("rrf"))
    expected = [1 / 61 + 1 / 63, 1 / 62, 1 / 63 + 1 / 61, 1 / 62]
    assert w is None and scores.tolist() == pytest.approx(expected, abs=1e-15)
    assert rrf_scores(np.array([1, 0]), np.array([0, 1]), k=1).tolist() == [0.5, 0.5]


def test_rrf_scores_in_the_store_follow_the_ranks() -> None:
    store, _ids, texts, g = filled(n=60)
    hits = store.search(texts[3], k=10, query_gaussians=g[3])
    for h in hits:
        expected = sum(1.0 / (60 + r) for r in (h.dense_rank, h.bm25_rank) if r)
        assert h.score == pytest.approx(expected, rel=1e-12)
    assert hits[0].id == "d3"  # first in both lists
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_convex_normalisation() -> None:
    x = np.array([-5.0, -1.0, -3.0, -2.0])
    mm = normalize_scores(x, "minmax")
    assert mm.min() == 0.0 and mm.max() == 1.0 and mm.tolist() == [0.0, 1.0, 0.5, 0.75]
    z = normalize_scores(x, "zscore")
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)
    assert normalize_scores(np.full(3, 7.0), "minmax").tolist() == [0.0, 0.0, 0.0]
    assert normalize_scores(np.full(3, 7.0), "zscore").tolist() == [0.0, 0.0, 0.0]
    # scale and shift of either retriever change nothing
    bm = np.array([0.0, 3.0, 1.0, 2.0])
    for norm in ("minmax", "zscore"):
        a = convex_scores(x, bm, 0.4, norm)
        b = convex_scores(10 * x - 3, 0.5 * bm + 2, 0.4, norm)
        assert a == pytest.approx(b)


@pytest.mark.parametrize("norm", ["minmax", "zscore"])
def test_convex_weight_one_is_dense_and_zero_is_bm25(norm: str) -> None:
    store, _ids, texts, g = filled(fusion="convex", n=60, normalization=norm)
    q_text = f"{texts[4]} {texts[9]}"
    dense = [r.id for r in store.kl.search(g[4], k=10)]
    hits1 = store.search(q_text, k=10, query_gaussians=g[4], weight=1.0)
    assert [h.id for h in hits1] == dense and all(h.dense_weight == 1.0 for h in hits1)
    hits0 = store.search(q_text, k=10, query_gaussians=g[4], weight=0.0)
    bm = [h.bm25 for h in hits0]
    assert bm == sorted(bm, reverse=True) and set(bm25_list(store, q_text)[:3]) <= {h.id for h in hits0}


def test_every_result_carries_both_scores_and_the_query_uncertainty() -> None:
    store, _ids, texts, _g = filled(fusion="convex", weight=0.5)
    qg = query(7)
    hits = store.search(texts[0], k=40, query_gaussians=qg)
    stored = store.kl.get_gaussians([h.id for h in hits])
    exact = neg_kl(qg, Gaussians(stored.mean.astype(np.float64), stored.var.astype(np.float64)))
    assert [h.neg_kl for h in hits] == pytest.approx(exact.tolist(), rel=1e-9)
    assert all(h.query_uncertainty == pytest.approx(float(np.log(qg.var).mean())) for h in hits)
    assert any(h.bm25 > 0 for h in hits) and all(h.bm25 >= 0 for h in hits)
    assert hits[0].scores()["neg_kl"] == hits[0].neg_kl


def test_a_query_without_known_words_falls_back_to_dense() -> None:
    store, _ids, _texts, g = filled(fusion="convex", weight=0.2)
    hits = store.search("xyzzy plugh", k=5, query_gaussians=g[6])
    assert [h.id for h in hits] == [r.id for r in store.kl.search(g[6], k=5)]
    assert all(h.dense_weight == 1.0 and h.bm25 == 0.0 and h.bm25_rank is None for h in hits)


# ------------------------------------------------------------------ adaptive
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=len(SIGNALS), max_size=len(SIGNALS)),
    st.floats(-50, 50),
    st.floats(-50, 50),
)
def test_adaptive_weight_is_always_in_the_unit_interval(values: list[float], bias: float, coef: float) -> None:
    n = len(SIGNALS)
    p = AdaptiveParams(SIGNALS, (0.5,) * n, (2.0,) * n, (coef,) * n, bias)
    w = p.weight(dict(zip(SIGNALS, values, strict=True)))
    assert 0.0 <= w <= 1.0 and math.isfinite(w)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30),
    st.floats(0, 1),
    st.sampled_from(["minmax", "zscore"]),
)
def test_convex_scores_properties(values: list[float], w: float, norm: str) -> None:
    x = np.asarray(values)
    b = x[::-1].copy()
    s = convex_scores(x, b, w, norm)  # type: ignore[arg-type]
    assert np.isfinite(s).all()
    if norm == "minmax":
        assert (s >= -1e-12).all() and (s <= 1 + 1e-12).all()
    # weight 1 ranks exactly like the dense scores (ties aside)
    s1 = convex_scores(x, b, 1.0, norm)  # type: ignore[arg-type]
    i, j = int(np.argmax(x)), int(np.argmin(x))
    assert s1[i] >= s1[j]


def test_adaptive_search_uses_the_query_signals() -> None:
    p = params(coef=0.7)
    store, _ids, texts, g = filled(fusion="adaptive", n=60, adaptive_params=p)
    for i in (0, 3, 8):
        cand = store.candidates([texts[i]], query_gaussians=g[i])[0]
        assert set(cand.signals) == set(SIGNALS)
        hits = store.search(texts[i], k=5, query_gaussians=g[i])
        assert hits and 0.0 <= hits[0].dense_weight <= 1.0  # type: ignore[operator]
        assert hits[0].dense_weight == pytest.approx(p.weight(cand.signals))
        assert hits[0].fusion == "adaptive"


@pytest.mark.parametrize("fusion", ["rrf", "convex", "adaptive"])
def test_search_run_ranks_exactly_as_search_batch(fusion: str) -> None:
    """One ranking core: the run holds search_batch's ids in its order, scored ``k - rank``."""
    store, _ids, texts, g = filled(fusion=fusion, n=60, adaptive_params=params(coef=0.7))
    rows = [0, 3, 8, 11]
    qs, qg = [texts[i] for i in rows], Gaussians(g.mean[rows], g.var[rows])
    batch = store.search_batch(qs, k=7, query_gaussians=qg)
    run = store.search_run(["a", "b", "c", "d"], qs, k=7, query_gaussians=qg)
    assert list(run) == ["a", "b", "c", "d"]
    for qid, hits in zip("abcd", batch, strict=True):
        assert len(hits) == 7 and {h.fusion for h in hits} == {fusion}
        assert list(run[qid]) == [h.id for h in hits]
        assert list(run[qid].values()) == [7.0 - r for r in range(7)]
    cand = store.candidates(qs[:1], query_gaussians=qg[0])[0]
    assert store.to_results(cand, store.fuse_candidates(cand, 7), fusion) == batch[0]


def test_missing_adaptive_parameters_fail_before_any_retrieval(monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ids, texts, g = filled(fusion="adaptive", n=20)

    def missing(cls: type[AdaptiveParams], stemmer: str | None = None) -> AdaptiveParams:
        raise FileNotFoundError("no fitted adaptive fusion parameters (test)")

    def retrieve(*args: object, **kwargs: object) -> list[Candidates]:
        raise AssertionError("retrieved candidates before checking the adaptive parameters")

    monkeypatch.setattr(AdaptiveParams, "default", classmethod(missing))
    monkeypatch.setattr(store, "candidates", retrieve)
    with pytest.raises(FileNotFoundError, match=r"no fitted adaptive .*\(test\)"):
        store.search_batch([texts[0]], query_gaussians=g[0])
    with pytest.raises(FileNotFoundError, match=r"no fitted adaptive .*\(test\)"):
        store.search_run(["q"], [texts[0]], query_gaussians=g[0])


def test_adaptive_params_round_trip_and_bad_files(tmp_path: Path) -> None:
    p = params("zscore", coef=-0.3)
    again = AdaptiveParams.load(p.save(tmp_path / "p.json"))
    assert again == p
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["coef"]["uncertainty"] == -0.3 and "weight_formula" in data  # readable: keyed by signal
    data["scale"]["uncertainty"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="scale values must be > 0"):
        AdaptiveParams.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown adaptive signal"):
        AdaptiveParams(("nope",), (0.0,), (1.0,), (1.0,), 0.0)


def test_the_default_adaptive_parameters_ship_with_the_package() -> None:
    p = AdaptiveParams.default()
    assert p.model == "minilm-gauss-soup" and set(p.signals) <= set(SIGNALS)
    assert "command" in p.info and "benchmarks/hybrid.py --fit" in p.info["command"]
    assert all(not any(s in name for s in ("test",)) for name in p.info["groups"])  # training splits only
    assert 0.0 <= p.weight({}) <= 1.0


def test_fit_adaptive_learns_a_signal_that_says_which_side_to_trust() -> None:
    """Synthetic queries: when ``overlap10`` is high, dense finds the relevant document; else BM25."""
    rng = np.random.default_rng(0)
    cands, rels = [], []
    for i in range(80):
        dense_good = i % 2 == 0
        ids = [f"x{j}" for j in range(6)]
        neg = -np.arange(6, dtype=float)  # dense ranks x0 first
        bm = np.arange(6, dtype=float)  # BM25 ranks x5 first
        signals = {s: float(rng.normal()) for s in SIGNALS}
        signals["overlap10"] = (1.0 if dense_good else 0.0) + 0.1 * float(rng.normal())
        cands.append(Candidates(ids, neg, bm, np.arange(1, 7), np.arange(6, 0, -1), 0.0, signals))
        rels.append({"x0": 1} if dense_good else {"x5": 1})
    p = fit_adaptive({"synthetic": (cands, rels)}, restarts=3)
    assert p.info["train_ndcg@10_adaptive"] > p.info["train_ndcg@10_best_fixed"] + 0.2
    assert p.weight({**dict.fromkeys(SIGNALS, 0.0), "overlap10": 1.0}) > p.weight(
        {**dict.fromkeys(SIGNALS, 0.0), "overlap10": 0.0}
    )


def test_fit_adaptive_does_not_follow_last_bit_differences_of_its_signals() -> None:
    """The same training data recomputed in another process differs in the last bits; the fit must not move.

    nDCG@10 of a fusion is piecewise constant in the weight, so the objective has flat stretches where
    Powell's comparisons would otherwise be decided by those bits (this perturbation moved every parameter
    before signals were rounded to float32 and the objective to 1e-12).
    """

    def problem(perturb: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        rng = np.random.default_rng(0)
        cands, curves = [], []
        grid = np.linspace(0.0, 1.0, 21)
        for i in range(300):
            sig = {s: float(rng.normal()) for s in SIGNALS}
            if perturb:  # one ulp up or down
                sig = {
                    s: float(np.nextafter(v, np.inf if (i + j) % 2 else -np.inf))
                    for j, (s, v) in enumerate(sig.items())
                }
            best_w = 1.0 / (1.0 + np.exp(-(sig[SIGNALS[0]] + 0.5 * rng.normal())))
            curves.append(np.round(np.clip(1 - np.abs(grid - best_w) * rng.uniform(0.5, 2), 0, 1) * 4) / 4)
            ids = ["x0", "x1", "x2"]
            cands.append(
                Candidates(ids, -np.arange(3.0), np.arange(3.0), np.arange(1, 4), np.arange(3, 0, -1), 0.0, sig)
            )
        return {"g": (cands, [{}] * len(cands))}, {"g": np.array(curves)}

    a = fit_adaptive(problem(False)[0], precomputed=problem(False)[1], restarts=4)
    b = fit_adaptive(problem(True)[0], precomputed=problem(True)[1], restarts=4)
    assert a.coef[0] > 0.5  # it learnt the signal that places each query's best weight
    assert (a.bias, a.coef, a.center, a.scale) == (b.bias, b.coef, b.center, b.scale)


def test_ndcg_at_k_matches_the_evaluation_module() -> None:
    from kl_retrievers.evaluation import evaluate_run

    qrels = {"q": {"a": 2, "c": 1, "z": 1}}
    ranked = ["b", "c", "a", "d"]
    agg, _ = evaluate_run(qrels, {"q": {d: float(10 - i) for i, d in enumerate(ranked)}}, ["ndcg@10"])
    assert ndcg_at_k(ranked, qrels["q"]) == pytest.approx(agg["ndcg@10"])


# ------------------------------------------------------------------ with an encoder, and lazily imported
def test_text_search_with_an_encoder(tiny_encoder: Any) -> None:
    ids, texts, _, metas = corpus(12)
    store = KLHybridStore(tiny_encoder, fusion="convex", weight=0.5)
    store.add(texts, ids=ids, metadatas=metas)
    hits = store.search(texts[2], k=3)
    assert "d2" in [h.id for h in hits]
    qg = tiny_encoder.encode_queries([texts[2]])  # type: ignore[attr-defined]
    assert hits[0].query_uncertainty == pytest.approx(float(np.log(np.asarray(qg.var, dtype=np.float64)).mean()))


def test_importing_the_module_does_not_import_bm25s() -> None:
    code = "import sys, kl_retrievers.hybrid; print('bm25s' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_bm25_half_matches_bm25s_and_its_files_load_in_bm25s(tmp_path: Path) -> None:
    """The saved BM25 half is ``bm25s.BM25.save``'s layout; ``bm25s`` loads it and scores like the store."""
    import bm25s

    store, _ids, texts, _g = filled(n=50)
    folder = store.save(tmp_path / "h")
    index = bm25s.BM25.load(str(folder / "bm25"), allow_pickle=False)
    half = KLHybridStore.load(folder)._bm25
    for q_text in (texts[0], f"{texts[1]} {texts[1]}", "cat", "cat cat dog zzz"):
        tokens = store._tokenizer(q_text)
        ours, _, _ = half.scores(tokens)
        known = [t for t in tokens if t in index.vocab_dict]
        assert known
        assert ours == pytest.approx(index.get_scores(known).astype(np.float64), rel=1e-6, abs=1e-6)


class _Named:
    """Stands in for an encoder: only its ``name_or_path`` is read when the adaptive parameters are resolved."""

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = name_or_path


def test_adaptive_parameters_come_from_the_encoder_model_folder_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    mine = params("zscore", coef=-0.7)
    mine.save(folder / ADAPTIVE_PARAMS_FILE)
    with caplog.at_level("WARNING", logger="kl_retrievers.hybrid"):
        # stemmer=None: both were fitted on unstemmed BM25 (a stemmed store warns, tests/test_hybrid_stemmer.py)
        assert KLHybridStore(_Named(str(folder)), fusion="adaptive", stemmer=None).adaptive_params() == mine
        # a bundled model that ships its own: bge-small-unit-variance, fitted for it by benchmarks/hybrid.py --fit
        bge = KLHybridStore(_Named("kl_retrievers:bge-small-unit-variance"), stemmer=None).adaptive_params()
    assert not caplog.records  # no "fitted for another model" warning for either
    assert bge.model == "bge-small-unit-variance" and bge != AdaptiveParams.default()
    assert "--model bge-small-unit-variance" in bge.info["command"]
    assert all("test" not in name for name in bge.info["fitted_on"])  # training splits only
    # given parameters win; a model folder without the file falls back to the default model's, with a warning
    assert KLHybridStore(_Named(str(folder)), adaptive_params=params()).adaptive_params() == params()
    with caplog.at_level("WARNING", logger="kl_retrievers.hybrid"):
        assert KLHybridStore(_Named(str(tmp_path))).adaptive_params() == AdaptiveParams.default()
    assert any("fitted for 'minilm-gauss-soup'" in r.getMessage() for r in caplog.records)


def test_looked_up_adaptive_parameters_are_looked_up_again_at_load_given_ones_are_kept(tmp_path: Path) -> None:
    """Parameters resolved from the encoder's model are model-specific: a save does not fix them, a given set is."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    mine = params("zscore", coef=-0.7)
    mine.save(folder / ADAPTIVE_PARAMS_FILE)
    store, *_ = filled(fusion="adaptive", n=10)
    assert store.adaptive_params() == AdaptiveParams.default()  # no encoder: the default model's
    saved = store.save(tmp_path / "looked-up")
    assert json.loads((saved / "hybrid.json").read_text())["adaptive"] is None
    assert KLHybridStore.load(saved, encoder=_Named(str(folder))).adaptive_params() == mine
    assert KLHybridStore.load(saved).adaptive_params() == AdaptiveParams.default()
    given, *_ = filled(fusion="adaptive", n=10, adaptive_params=params(coef=0.3))
    kept = given.save(tmp_path / "given")
    assert KLHybridStore.load(kept, encoder=_Named(str(folder))).adaptive_params() == params(coef=0.3)


def test_bm25_candidates_break_ties_at_the_cut_by_row() -> None:
    """Rows tied at the candidate cut: the later row gets in (as in the dense list), not what argpartition picks."""
    g = Gaussians(np.zeros((6, 2)), np.ones((6, 2)))
    q = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
    for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]):
        texts = ["apple pie", "apple pie", "apple", "apple", "apple pie", "pear"]
        store = KLHybridStore(fusion="rrf", candidates=3)
        store.add([texts[i] for i in order], gaussians=g, ids=[f"d{i}" for i in order])
        cand = store.candidates(["apple"], query_gaussians=q)[0]
        bm25 = sorted((int(r), i) for i, r in zip(cand.ids, cand.bm25_rank, strict=True) if r)
        last_pie = "d4" if order[0] == 0 else "d0"  # the latest stored "apple pie" row
        assert [i for _, i in bm25] == (["d3", "d2", last_pie] if order[0] == 0 else ["d2", "d3", last_pie])


def test_search_run_refuses_repeated_and_string_query_ids() -> None:
    store, _ids, texts, g = filled(n=10)
    qg = Gaussians(g.mean[:2], g.var[:2])
    with pytest.raises(ValueError, match="'q' repeats"):
        store.search_run(["q", "q"], texts[:2], k=2, query_gaussians=qg)
    with pytest.raises(TypeError, match=r"query_ids\[0\] must be a str; got int 1"):  # never coerced to '1'
        store.search_run([1, "1"], texts[:2], k=2, query_gaussians=qg)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one string; got 'ab'"):
        store.search_run("ab", texts[:2], k=2, query_gaussians=qg)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("token_pattern", 5, "field 'bm25' holds an invalid value"),
        ("token_pattern", "(", "not a valid regular expression"),
        ("stopwords", "french", "stopwords must be 'english'"),
        ("stopwords", 3, "field 'bm25' holds an invalid value"),
        ("k1", -1, "k1"),
        ("b", 2, r"b must be a number in \[0, 1\]; got 2"),
        ("adaptive", {"format": "x"}, "field 'adaptive': not valid adaptive fusion parameters"),
    ],
)
def test_a_bad_value_in_hybrid_json_is_a_format_error_naming_the_file(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    store, *_ = filled(n=5)
    saved = store.save(tmp_path / "h")
    cfg = json.loads((saved / "hybrid.json").read_text())
    (cfg if field == "adaptive" else cfg["bm25"])[field] = value
    (saved / "hybrid.json").write_text(json.dumps(cfg))
    with pytest.raises(HybridFormatError, match=message) as err:
        KLHybridStore.load(saved)
    assert "hybrid.json" in str(err.value)


def test_building_the_bm25_half_does_not_log_bm25s_debug_lines(caplog: pytest.LogCaptureFixture) -> None:
    """bm25s sets its own logger to DEBUG; `evaluate --hybrid --quiet` printed its "Building index" line."""
    import logging

    logging.getLogger("bm25s").setLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG):
        store, _ids, texts, g = filled(n=10)
        store.search(texts[0], query_gaussians=g[0])
    assert not [r for r in caplog.records if r.name.startswith("bm25s") and r.levelno < logging.WARNING]


# ------------------------------------------------------------------ the [hybrid] extra
def test_without_bm25s_the_hybrid_store_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, _, _ = filled()
    store.save(tmp_path / "h")
    monkeypatch.setitem(sys.modules, "bm25s", None)  # as if not installed: import and find_spec both fail
    for make in (lambda: KLHybridStore(), lambda: KLHybridStore.load(tmp_path / "h")):
        with pytest.raises(ModuleNotFoundError, match=r"kl-retrievers\[hybrid\]"):
            make()


# ------------------------------------------------------------------ concurrent changes
class _FixedQueries:
    name_or_path = "fixed"

    def encode_queries(self, batch: list[str], **_: object) -> Gaussians:
        return query()


class _ChangesAfterFusion(KLHybridStore):
    """Starts ``change`` in another thread right after the fusion, where a write used to tear a hit."""

    change: Any = None

    def fuse_candidates(self, candidates: Any, k: int, fusion: Any = None) -> Any:
        ranked = super().fuse_candidates(candidates, k, fusion)
        change, self.change = self.change, None
        if change is not None:
            import threading

            writer = threading.Thread(target=change)
            writer.start()
            writer.join(timeout=1.0)  # it waits for the search's lock (before the fix, it ran now)
        return ranked


@pytest.mark.parametrize("path", ["search", "hybrid_search"])
@pytest.mark.parametrize("what", ["delete", "upsert"])
def test_a_change_during_a_search_cannot_tear_its_hits(what: str, path: str) -> None:
    from kl_retrievers._confidence import ConfidenceScorer, hybrid_search

    ids, texts, g, metas = corpus()
    store = _ChangesAfterFusion(_FixedQueries(), fusion="rrf")
    store.add(texts, gaussians=g, ids=ids, metadatas=metas)
    cal = max_score_calibrator()

    def run() -> list[Any]:
        if path == "search":
            return store.search(texts[3], k=5)
        return hybrid_search(store, texts[3], 5, scorer=ConfidenceScorer(cal))[0]

    before = {h.id: (h.text, h.metadata, h.neg_kl) for h in run()}
    n = len(before)
    if what == "delete":
        store.change = lambda: store.delete(list(before))
    else:
        other = Gaussians(np.repeat(g.numpy().mean[:1], n, 0), np.repeat(g.numpy().var[:1], n, 0))
        store.change = lambda: store.upsert(
            ["stock prices"] * n, ids=list(before), gaussians=other, metadatas=[{"v": 2}] * n
        )
    hits = run()
    assert [h.id for h in hits] == list(before)
    for h in hits:  # text and metadata are the version the scores were computed for
        assert (h.text, h.metadata, h.neg_kl) == before[h.id]


def test_add_encodes_before_taking_the_lock_so_searches_go_on() -> None:
    ids, texts, g, _ = corpus()
    searched: list[int] = []

    class SlowEncoder:
        name_or_path = "slow"

        def encode_documents(self, batch: list[str], **_: object) -> Gaussians:
            import threading

            t = threading.Thread(target=lambda: searched.append(len(store.search("x", query_gaussians=query()))))
            t.start()
            t.join(timeout=20)  # a search from another thread while this add encodes
            return random_gaussians(len(batch), K, seed=7)

        def encode_queries(self, batch: list[str], **_: object) -> Gaussians:
            return random_gaussians(len(batch), K, seed=8)

    store = KLHybridStore(SlowEncoder(), fusion="rrf")
    store.add(texts[:10], gaussians=g[:10], ids=ids[:10])
    assert store.add(["one more text"], ids=["new"]) == ["new"]
    assert searched == [10]  # it ran (and saw the store as it was before the add)


def test_searches_of_one_store_run_at_the_same_time() -> None:
    """Two searches meet inside a callable filter: with one lock for everything they never could."""
    import threading

    ids, texts, g, metas = corpus()
    store = KLHybridStore(fusion="rrf")
    store.add(texts, gaussians=g, ids=ids, metadatas=metas)
    store.search(texts[0], k=3, query_gaussians=query())  # the BM25 index is built before the race
    meeting = threading.Barrier(2, timeout=10)
    met: list[bool] = []
    seen = threading.local()

    def meet(meta: Any) -> bool:
        if not getattr(seen, "done", False):  # each search waits here once, for the other one
            seen.done = True
            meeting.wait()
            met.append(True)
        return True

    results: list[list[str]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append([h.id for h in store.search(texts[3], k=5, filter=meet, query_gaussians=query())])
        except BaseException as exc:  # a broken barrier: the other search could not start
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(met) == 2 and len(results) == 2 and results[0] == results[1]


def test_a_stale_bm25_index_is_rebuilt_once_by_concurrent_searches(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import kl_retrievers.hybrid as hybrid_module

    ids, texts, g, metas = corpus()
    store = KLHybridStore(fusion="rrf")
    store.add(texts, gaussians=g, ids=ids, metadatas=metas)
    builds = [0]
    original = hybrid_module._BM25Half.build

    def slow_build(half: Any) -> None:
        builds[0] += 1
        threading.Event().wait(0.2)  # long enough for the other searches to find the index stale
        original(half)

    monkeypatch.setattr(hybrid_module._BM25Half, "build", slow_build)
    expected = [h.id for h in KLHybridStore.search(store, texts[3], k=5, query_gaussians=query())]
    assert builds == [1]
    store.add(["one more text"], gaussians=g[:1], ids=["new"])
    results: list[list[str]] = []
    threads = [
        threading.Thread(
            target=lambda: results.append([h.id for h in store.search(texts[3], k=5, query_gaussians=query())])
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert builds == [2] and len(results) == 4
    assert all(r == results[0] for r in results) and set(results[0]) <= set(expected) | {"new"}


def test_a_change_inside_consistent_is_refused_not_deadlocked() -> None:
    ids, texts, g, _ = corpus()
    store = KLHybridStore(fusion="rrf")
    store.add(texts, gaussians=g, ids=ids)
    with store.consistent(), pytest.raises(RuntimeError, match="cannot modify it there"):
        store.delete([ids[0]])
    assert ids[0] in store and len(store) == len(ids)
    store.delete([ids[0]])  # after the block, writes go through
    assert ids[0] not in store


def test_a_save_in_the_middle_of_a_hybrid_load_gives_one_saves_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kl_retrievers.hybrid as hybrid_module

    path = tmp_path / "h"
    first, _, _, _ = filled(n=30)
    second, ids2, texts2, _ = filled(n=40)
    second.delete(ids2[:5])
    first.save(path)
    original = hybrid_module._BM25Half.load
    calls = [0]

    def load_after_a_save(*args: Any, **kwargs: Any) -> Any:  # the KL half is read; now a save swaps the folder
        calls[0] += 1
        if calls[0] == 1:
            second.save(path)
        return original(*args, **kwargs)

    monkeypatch.setattr(hybrid_module._BM25Half, "load", staticmethod(load_after_a_save))
    loaded = KLHybridStore.load(path)
    assert calls[0] == 2 and loaded.ids == second.ids
    assert [d.text for d in loaded.kl.get_by_ids(loaded.ids)] == texts2[5:]
