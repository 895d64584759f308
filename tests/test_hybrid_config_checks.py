"""Checks of a hybrid store's settings and saved config, and the score scale of a query BM25 does not match.

* ``hybrid.json``: ``format_version`` must be an integer >= 1; a format-2 config (the stemmer's) must name
  ``bm25.stemmer`` (without it a stemmed index would be searched with unstemmed queries).
* ``token_pattern`` with more than one capture group is refused at construction (``re.findall`` would return
  tuples, not tokens).
* Halves of two saves are named as such (their save tokens) with checksums on, as without them.
* With no BM25 hit, convex and adaptive fusion score ``n(-KL)`` with the configured normalisation (w = 1),
  the same scale as any other query.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bm25s")

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import (
    AdaptiveParams,
    Candidates,
    FusionConfig,
    HybridFormatError,
    KLHybridStore,
    fuse,
    normalize_scores,
)


def _g(n: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(rng.normal(size=(n, 4)), rng.uniform(0.5, 1.5, size=(n, 4)))


def _saved(
    tmp_path: Path, name: str = "s", texts: tuple[str, ...] = ("running dogs", "cats sleeping"), **kw: Any
) -> Path:
    store = KLHybridStore(fusion="rrf", **kw)
    store.add(list(texts), gaussians=_g(len(texts)), ids=["a", "b"])
    return store.save(tmp_path / name)


def _edit_config(folder: Path, change: Any) -> None:
    path = folder / "hybrid.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config), encoding="utf-8")


# ------------------------------------------------------------------ hybrid.json checks
def test_a_format_2_config_without_bm25_stemmer_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("Stemmer")
    folder = _saved(tmp_path, stemmer="english")
    assert json.loads((folder / "hybrid.json").read_text())["format_version"] == 2
    _edit_config(folder, lambda c: c["bm25"].pop("stemmer"))
    with pytest.raises(HybridFormatError, match=r"hybrid\.json.*lacks 'stemmer'"):
        KLHybridStore.load(folder)


def test_a_format_1_config_without_bm25_stemmer_still_loads_unstemmed(tmp_path: Path) -> None:
    """A save from before the stemmer option (format 1) has no key: it is an unstemmed store."""
    folder = _saved(tmp_path, stemmer=None)
    _edit_config(folder, lambda c: (c["bm25"].pop("stemmer"), c.__setitem__("format_version", 1)))
    assert KLHybridStore.load(folder).stemmer is None


@pytest.mark.parametrize("version", [0, -1, True, "2", 1.0, None])
def test_a_format_version_that_is_not_an_integer_of_at_least_1_is_refused(tmp_path: Path, version: Any) -> None:
    folder = _saved(tmp_path, stemmer=None)
    _edit_config(folder, lambda c: c.__setitem__("format_version", version))
    with pytest.raises(HybridFormatError, match=r"format_version .* must be an integer from 1 to"):
        KLHybridStore.load(folder)


def test_format_versions_1_and_2_load(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    for version in (1, 2):
        _edit_config(folder, lambda c, v=version: c.__setitem__("format_version", v))
        assert KLHybridStore.load(folder).ids == ["a", "b"]


# ------------------------------------------------------------------ token_pattern
@pytest.mark.parametrize("pattern", [r"(\w)(\w)", r"(a)|(b)|(c)"])
def test_a_token_pattern_with_several_capture_groups_is_refused_at_construction(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"token_pattern .* has [23] capture groups; at most one") as info:
        KLHybridStore(fusion="rrf", stemmer=None, token_pattern=pattern)
    assert repr(pattern) in str(info.value)


@pytest.mark.parametrize("pattern", [r"\w+", r"(\w+)", r"(?:\w)(\w+)"])
def test_a_token_pattern_with_at_most_one_capture_group_works(pattern: str) -> None:
    store = KLHybridStore(fusion="rrf", stemmer=None, token_pattern=pattern)
    store.add(["alpha beta", "gamma"], gaussians=_g(2), ids=["x", "y"])
    hits = store.search("gamma", k=1, query_gaussians=_g(1, seed=3))
    assert hits[0].id == "y" and hits[0].bm25 > 0


def test_a_saved_config_with_a_two_group_token_pattern_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    _edit_config(folder, lambda c: c["bm25"].__setitem__("token_pattern", r"(\w)(\w)"))
    with pytest.raises(HybridFormatError, match="capture groups"):
        KLHybridStore.load(folder)


# ------------------------------------------------------------------ halves of two saves
@pytest.mark.parametrize("verify_checksums", [True, False])
def test_halves_of_two_saves_are_named_by_their_save_tokens_with_or_without_checksums(
    tmp_path: Path, verify_checksums: bool
) -> None:
    a = _saved(tmp_path, "A", ("one two", "three four"), stemmer=None)
    b = _saved(tmp_path, "B", ("one two", "five six"), stemmer=None)  # the same ids, another save
    shutil.rmtree(a / "bm25")
    shutil.copytree(b / "bm25", a / "bm25")
    with pytest.raises(HybridFormatError, match=r"not written by the same save \(save tokens: "):
        KLHybridStore.load(a, verify_checksums=verify_checksums)


def test_a_changed_file_of_one_save_is_still_refused_by_its_checksum(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    data = folder / "bm25" / "data.csc.index.npy"
    array = np.load(data)
    array[0] = 99.0
    np.save(data, array)
    with pytest.raises(HybridFormatError, match=r"data\.csc\.index\.npy is not the file this save wrote"):
        KLHybridStore.load(folder)


# ------------------------------------------------------------------ fusion without BM25 hits
def _no_bm25_hits() -> Candidates:
    neg_kl = np.array([-1.0, -2.0, -4.0, -7.0])
    return Candidates(
        ["a", "b", "c", "d"], neg_kl, np.zeros(4), np.array([1, 2, 3, 4]), np.zeros(4, dtype=np.int64), 0.0, {}
    )


@pytest.mark.parametrize("normalization", ["minmax", "zscore"])
def test_convex_fusion_without_bm25_hits_uses_the_configured_normalisation(normalization: str) -> None:
    cand = _no_bm25_hits()
    scores, w = fuse(cand, FusionConfig("convex", weight=0.3, normalization=normalization))
    assert w == 1.0
    np.testing.assert_allclose(scores, normalize_scores(cand.neg_kl, normalization))
    assert np.argsort(-scores).tolist() == [0, 1, 2, 3]  # the dense ranking, as before


def test_adaptive_fusion_without_bm25_hits_uses_the_parameters_normalisation() -> None:
    params = AdaptiveParams(("uncertainty",), (0.0,), (1.0,), (-2.0,), 0.0, "zscore")
    cand = _no_bm25_hits()
    scores, w = fuse(cand, FusionConfig("adaptive"), params)
    assert w == 1.0
    np.testing.assert_allclose(scores, normalize_scores(cand.neg_kl, "zscore"))
    assert scores.min() < 0  # z-scores, not min-max's [0, 1]


def test_a_store_search_without_bm25_hits_keeps_the_zscore_scale() -> None:
    store = KLHybridStore(fusion="convex", normalization="zscore", weight=0.5, stemmer=None)
    store.add(["apple pie", "apple tart", "banana", "cherry"], gaussians=_g(4), ids=list("abcd"))
    q = _g(1, seed=5)
    hits = store.search("kiwi", k=4, query_gaussians=q)  # no query term in the corpus
    assert all(h.bm25_rank is None and h.bm25 == 0 for h in hits)
    scores = np.array([h.score for h in hits])
    np.testing.assert_allclose(scores, normalize_scores(np.array([h.neg_kl for h in hits]), "zscore"))
    assert [h.id for h in hits] == [h.id for h in store.search("kiwi", k=4, query_gaussians=q, weight=1.0)]
