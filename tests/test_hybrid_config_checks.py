"""Checks of a hybrid store's settings and saved config, and the score scale of a query BM25 does not match.

* ``hybrid.json``: ``format_version`` must be an integer >= 1; a format-2 config (the stemmer's) must name
  ``bm25.stemmer`` (without it a stemmed index would be searched with unstemmed queries).
* ``token_pattern`` with more than one capture group is refused at construction (``re.findall`` would return
  tuples, not tokens), and so are a value that is not a string (a compiled pattern included; ``TypeError``) and
  a pattern that matches the empty string (``""``, ``\\w*``); a saved store with such a pattern (earlier
  releases accepted it) loads when the pattern is passed to load as ``token_pattern=``, with one warning. An add
  whose texts give no token at all logs one warning naming the pattern (``\\b``, a lookahead, a capture group
  that stays empty).
* Halves of two saves are named as such (their save tokens) with checksums on, as without them; the message
  names the part whose token differs from the other two, or the half whose token file is missing (when the
  tokens present agree with hybrid.json's; else both).
* ``fuse`` in the adaptive mode without parameters says what it got and where parameters come from.
* With no BM25 hit, convex and adaptive fusion score ``n(-KL)`` with the configured normalisation (w = 1),
  the same scale as any other query.
"""

from __future__ import annotations

import json
import logging
import re
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
    scores, w = fuse(cand, FusionConfig("convex", weight=0.3, normalization=normalization))  # type: ignore[arg-type]
    assert w == 1.0
    np.testing.assert_allclose(scores, normalize_scores(cand.neg_kl, normalization))  # type: ignore[arg-type]
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


# ------------------------------------------------------------------ which part's save token differs
def _set_token(folder: Path, half: str, token: str) -> None:
    (folder / half / "hybrid_save.json").write_text(json.dumps({"save_token": token}), encoding="utf-8")


@pytest.mark.parametrize("verify_checksums", [True, False])
def test_a_hybrid_json_from_another_save_is_named_not_the_halves_that_agree(
    tmp_path: Path, verify_checksums: bool
) -> None:
    a = _saved(tmp_path, "A", stemmer=None)
    b = _saved(tmp_path, "B", stemmer=None)  # the same ids and texts, another save
    shutil.copy(b / "hybrid.json", a / "hybrid.json")
    with pytest.raises(HybridFormatError) as info:
        KLHybridStore.load(a, verify_checksums=verify_checksums)
    message = str(info.value)
    assert "hybrid.json was not written by the same save as its kl/ and bm25/ halves" in message
    assert "the halves agree and hybrid.json's 'save_token' differs" in message
    assert "the kl/ half and the bm25/ half were not" not in message


def test_a_hybrid_json_without_a_token_beside_halves_with_one_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    _edit_config(folder, lambda c: c.pop("save_token"))
    with pytest.raises(HybridFormatError, match=r"the halves agree and hybrid\.json has no 'save_token'"):
        KLHybridStore.load(folder, verify_checksums=False)


@pytest.mark.parametrize("half", ["kl", "bm25"])
@pytest.mark.parametrize("verify_checksums", [True, False])
def test_a_deleted_token_file_is_named_as_missing(tmp_path: Path, half: str, verify_checksums: bool) -> None:
    folder = _saved(tmp_path, stemmer=None)
    (folder / half / "hybrid_save.json").unlink()
    with pytest.raises(HybridFormatError) as info:
        KLHybridStore.load(folder, verify_checksums=verify_checksums)
    message = str(info.value)
    assert f"{half}/hybrid_save.json is missing, but hybrid.json holds save token" in message
    assert "were not written by the same save" not in message


def test_both_deleted_token_files_are_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    for half in ("kl", "bm25"):
        (folder / half / "hybrid_save.json").unlink()
    with pytest.raises(HybridFormatError, match=r"kl/hybrid_save\.json and bm25/hybrid_save\.json are missing"):
        KLHybridStore.load(folder)


@pytest.mark.parametrize(("half", "other"), [("kl", "bm25"), ("bm25", "kl")])
def test_a_changed_token_file_names_its_half_alone(tmp_path: Path, half: str, other: str) -> None:
    folder = _saved(tmp_path, stemmer=None)
    _set_token(folder, half, "0" * 32)
    with pytest.raises(HybridFormatError) as info:
        KLHybridStore.load(folder, verify_checksums=False)
    message = str(info.value)
    assert "the kl/ half and the bm25/ half were not written by the same save" in message
    assert f"{half}/hybrid_save.json differs from hybrid.json and the other half, which agree" in message
    assert f"so the {half}/ half comes from another save or its token file was changed" in message
    assert f"{other}/hybrid_save.json differs" not in message


def test_a_bm25_half_of_another_save_with_the_same_ids_is_named(tmp_path: Path) -> None:
    a = _saved(tmp_path, "A", ("one two", "three four"), stemmer=None)
    b = _saved(tmp_path, "B", ("one two", "five six"), stemmer=None)
    shutil.rmtree(a / "bm25")
    shutil.copytree(b / "bm25", a / "bm25")
    with pytest.raises(HybridFormatError, match=r"not written by the same save \(save tokens: ") as info:
        KLHybridStore.load(a)
    assert "bm25/hybrid_save.json differs from hybrid.json and the other half" in str(info.value)
    assert "so the bm25/ half comes from another save" in str(info.value)


def test_three_different_tokens_are_named_as_such(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    _set_token(folder, "kl", "1" * 32)
    _set_token(folder, "bm25", "2" * 32)
    with pytest.raises(HybridFormatError, match=r"no two of hybrid\.json, the kl/ half and the bm25/ half agree"):
        KLHybridStore.load(folder, verify_checksums=False)


def test_an_unreadable_token_file_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    (folder / "kl" / "hybrid_save.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HybridFormatError, match=r"kl/hybrid_save\.json is not valid JSON"):
        KLHybridStore.load(folder, verify_checksums=False)


def test_a_folder_without_any_save_token_still_loads(tmp_path: Path) -> None:
    """A save from before the tokens: none in hybrid.json, none in the halves."""
    folder = _saved(tmp_path, stemmer=None)
    for half in ("kl", "bm25"):
        (folder / half / "hybrid_save.json").unlink()
    _edit_config(
        folder, lambda c: (c.pop("save_token"), [c["files"].pop(f"{h}/hybrid_save.json") for h in ("kl", "bm25")])
    )
    assert KLHybridStore.load(folder).ids == ["a", "b"]


# ------------------------------------------------------------------ token_pattern: a string giving non-empty tokens
@pytest.mark.parametrize("pattern", [None, 5, 1.5, b"\\w+", ["\\w+"]])
def test_a_token_pattern_that_is_not_a_string_is_refused_naming_it(pattern: Any) -> None:
    with pytest.raises(TypeError, match="token_pattern must be a regular expression as a string") as info:
        KLHybridStore(fusion="rrf", stemmer=None, token_pattern=pattern)
    assert f"got {pattern!r} ({type(pattern).__name__})" in str(info.value)


def test_a_compiled_token_pattern_is_refused_with_how_to_pass_it() -> None:
    compiled = re.compile(r"\w+")
    with pytest.raises(TypeError, match=r"token_pattern must be a string; got the compiled pattern") as info:
        KLHybridStore(fusion="rrf", stemmer=None, token_pattern=compiled)  # type: ignore[arg-type]
    assert repr(compiled) in str(info.value) and "pattern.pattern" in str(info.value)


@pytest.mark.parametrize("pattern", ["", r"\w*", r"(?:\w+|)", r"\d?"])
def test_a_token_pattern_that_matches_the_empty_string_is_refused(pattern: str) -> None:
    """Empty tokens are dropped: such a pattern gives empty tokens (``""``: only empty ones, nothing indexed)."""
    with pytest.raises(ValueError, match="matches an empty string") as info:
        KLHybridStore(fusion="rrf", stemmer=None, token_pattern=pattern)
    assert f"token_pattern {pattern!r}" in str(info.value)


@pytest.mark.parametrize(
    "pattern",
    [r"(?u)\b\w\w+\b", r"[\u3040-\u30ff\u3400-\u9fff]|\w+", r"(?:(\w+))+", r"(?:x|y)(\w+)", r"(?>(\w+))"],
)
def test_token_patterns_whose_tokens_are_never_empty_are_accepted(pattern: str) -> None:
    store = KLHybridStore(fusion="rrf", stemmer=None, token_pattern=pattern)
    store.add(["xalpha ybeta", "xgamma"], gaussians=_g(2), ids=["x", "y"])
    hits = store.search("xgamma", k=1, query_gaussians=_g(1, seed=3))
    assert hits[0].id == "y" and hits[0].bm25 > 0


@pytest.mark.parametrize("pattern", [r"\w*", r"[\u3040-\u30ff\u3400-\u9fff]|\w*", ""])
def test_a_saved_store_whose_token_pattern_matches_the_empty_string_loads_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pattern: str
) -> None:
    """Earlier releases saved such patterns (their empty tokens dropped): the store loads; only new ones refuse it."""
    folder = _saved(tmp_path, stemmer=None)
    _edit_config(folder, lambda c: c["bm25"].__setitem__("token_pattern", pattern))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        store = KLHybridStore.load(folder, token_pattern=pattern)  # not one docs/hybrid.md gives: named to load it
    warned = [r.getMessage() for r in caplog.records if "matches the empty string" in r.getMessage()]
    assert len(warned) == 1, warned
    assert repr(pattern) in warned[0] and "a new KLHybridStore refuses such a pattern" in warned[0]
    assert ("BM25 indexes nothing" in warned[0]) == (pattern == "")
    hits = store.search("cats", k=2, query_gaussians=_g(1, seed=3))
    if pattern:  # the saved tokenizer serves the queries: "cats" is a token
        assert hits[0].id == "b" and hits[0].bm25 > 0
    store.add(["kiwi fruit"], gaussians=_g(1, seed=4), ids=["c"])
    kiwi = store.search("kiwi", k=3, query_gaussians=_g(1, seed=5))
    assert (max(h.bm25 for h in kiwi if h.id == "c") > 0) == bool(pattern)
    again = store.save(tmp_path / "again")  # the saved pattern is kept, not the constructor's default
    assert json.loads((again / "hybrid.json").read_text(encoding="utf-8"))["bm25"]["token_pattern"] == pattern


def test_a_saved_token_pattern_with_two_groups_or_not_a_string_is_still_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path, stemmer=None)
    _edit_config(folder, lambda c: c["bm25"].__setitem__("token_pattern", 5))
    with pytest.raises(HybridFormatError, match=r"field 'bm25' holds an invalid value: token_pattern must be"):
        KLHybridStore.load(folder)


# ------------------------------------------------------------------ patterns that give no token at all
@pytest.mark.parametrize("pattern", [r"\b", r"\B", r"(?=\w)", r"(?<=\w)", r"(\d*)[a-z]+"])
@pytest.mark.parametrize("method", ["add", "upsert"])
def test_an_add_whose_texts_give_no_token_warns_naming_the_pattern(
    caplog: pytest.LogCaptureFixture, pattern: str, method: str
) -> None:
    store = KLHybridStore(fusion="rrf", stemmer=None, token_pattern=pattern)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        getattr(store, method)(["running dogs", "cats sleeping", ""], gaussians=_g(3), ids=["a", "b", "c"])
    warned = [r.getMessage() for r in caplog.records if "gave no token" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"token_pattern {pattern!r}" in warned[0] and "2 non-empty text(s)" in warned[0]


@pytest.mark.parametrize(
    ("pattern", "texts"),
    [
        (r"(?u)\b\w+\b", ["running dogs", "cats"]),
        (r"(?u)\b\w+\b", ["the and of", "a"]),  # tokens, all stop words: the pattern works
        (r"(?u)\b\w+\b", ["", "  "]),  # nothing to tokenise
        (r"(\d*)[a-z]+", ["4dogs", "cats"]),  # some tokens: one text gave an empty group only
        (r"(?u)\b\w+\b", ["!!!", "???"]),  # no word in the texts: not the pattern's fault
    ],
)
def test_an_add_with_tokens_stop_words_or_blank_texts_does_not_warn(
    caplog: pytest.LogCaptureFixture, pattern: str, texts: list[str]
) -> None:
    store = KLHybridStore(fusion="rrf", stemmer=None, token_pattern=pattern)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        store.add(texts, gaussians=_g(2), ids=["a", "b"])
    assert not [r for r in caplog.records if "gave no token" in r.getMessage()]
    assert len(store) == 2


def test_a_hybrid_over_a_kl_store_whose_texts_give_no_token_warns(caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers.index import KLStore

    kl = KLStore()
    kl.add(["running dogs", "cats sleeping"], gaussians=_g(2), ids=["a", "b"])
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        KLHybridStore(fusion="rrf", stemmer=None, token_pattern=r"\b", kl_store=kl)
    assert len([r for r in caplog.records if "gave no token" in r.getMessage()]) == 1


# ------------------------------------------------------------------ a missing token file beside disagreeing tokens
@pytest.mark.parametrize(("half", "missing"), [("kl", "bm25"), ("bm25", "kl")])
def test_a_missing_token_file_beside_a_token_of_another_save_names_both(
    tmp_path: Path, half: str, missing: str
) -> None:
    folder = _saved(tmp_path, stemmer=None)
    _set_token(folder, half, "1" * 32)
    (folder / missing / "hybrid_save.json").unlink()
    with pytest.raises(HybridFormatError) as info:
        KLHybridStore.load(folder, verify_checksums=False)
    message = str(info.value)
    assert "no two of hybrid.json, the kl/ half and the bm25/ half agree on a save token" in message
    assert f"{missing}/hybrid_save.json is missing as well" in message
    assert "is missing, but hybrid.json holds save token" not in message


# ------------------------------------------------------------------ fuse() without adaptive parameters
def test_adaptive_fuse_without_parameters_says_what_was_passed_and_where_parameters_come_from() -> None:
    with pytest.raises(ValueError, match=r"fusion mode 'adaptive' needs its parameters.*got params=None") as info:
        fuse(_no_bm25_hits(), FusionConfig("adaptive"))
    for source in ("AdaptiveParams.default()", "AdaptiveParams.load(path)", "fit_adaptive(", "'convex' or 'rrf'"):
        assert source in str(info.value)


def test_adaptive_fuse_with_a_path_instead_of_parameters_is_a_type_error_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "hybrid_adaptive.json")
    with pytest.raises(TypeError, match=r"params must be an AdaptiveParams; got '.*hybrid_adaptive\.json' \(str\)"):
        fuse(_no_bm25_hits(), FusionConfig("adaptive"), path)  # type: ignore[arg-type]
