"""``KLHybridStore(stemmer=...)``: PyStemmer stemming of the BM25 tokens, for documents and queries alike.

The default is ``"english"`` (``DEFAULT_STEMMER``, chosen on training data); ``stemmer=None`` tokenises as
before the option; a stemmer is saved in ``hybrid.json`` and restored by
``load`` (a save without the key loads unstemmed); a bad language or a missing PyStemmer fails at
construction, naming what to do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore

TEXTS = ["the dog was running in the park", "bread and tea for breakfast", "a cat sat on the mat"]
IDS = ["run", "tea", "cat"]


def _g(n: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(rng.normal(size=(n, 4)), rng.uniform(0.5, 1.5, size=(n, 4)))


def _store(**kwargs: object) -> KLHybridStore:
    store = KLHybridStore(fusion="rrf", **kwargs)  # type: ignore[arg-type]
    store.add(TEXTS, gaussians=_g(len(TEXTS)), ids=IDS)
    return store


def _bm25(store: KLHybridStore, query: str) -> dict[str, float]:
    hits = store.search(query, k=len(TEXTS), query_gaussians=_g(1, seed=7))
    return {h.id: h.bm25 for h in hits}


def test_a_stemmed_store_matches_running_for_the_query_runs() -> None:
    store = _store(stemmer="english")
    assert store.stemmer == "english"
    scores = _bm25(store, "runs")
    assert scores["run"] > 0
    assert scores["tea"] == 0 and scores["cat"] == 0
    # the query-side signals use the same tokens: the one query word is found in the corpus
    (cand,) = store.candidates(["runs"], query_gaussians=_g(1, seed=7))
    assert cand.signals["bm25_matched"] == 1.0
    assert cand.signals["bm25_coverage"] > 0


def test_the_default_stems_in_english_and_stemmer_none_tokenizes_as_before() -> None:
    """The default became English stemming (chosen on training data, stop 42); ``None`` is the old tokenizer."""
    from kl_retrievers.hybrid import DEFAULT_STEMMER

    assert DEFAULT_STEMMER == "english" and _store().stemmer == "english"
    assert _bm25(_store(), "runs")["run"] > 0
    store = _store(stemmer=None)
    assert store.stemmer is None
    assert all(v == 0 for v in _bm25(store, "runs").values())
    assert _bm25(store, "running")["run"] > 0
    (cand,) = store.candidates(["runs"], query_gaussians=_g(1, seed=7))
    assert cand.signals["bm25_matched"] == 0.0


def test_upsert_and_delete_of_a_stemmed_store_use_the_stemmer() -> None:
    store = _store(stemmer="english")
    store.upsert(["cats jumped over walls"], ids=["cat"], gaussians=_g(1, seed=3))
    assert _bm25(store, "jumping cat")["cat"] > 0
    store.delete(["run"])
    assert "run" not in _bm25(store, "runs")
    assert _bm25(store, "walled")["cat"] > 0


def test_save_and_load_keep_the_stemmer(tmp_path: Path) -> None:
    store = _store(stemmer="english")
    before = _bm25(store, "runs")
    store.save(tmp_path / "hy")
    config = json.loads((tmp_path / "hy" / "hybrid.json").read_text(encoding="utf-8"))
    assert config["bm25"]["stemmer"] == "english"
    assert config["format_version"] == 2  # a release reading only 1 refuses it instead of searching unstemmed
    again = KLHybridStore.load(tmp_path / "hy")
    assert again.stemmer == "english"
    assert _bm25(again, "runs") == pytest.approx(before)
    # a loaded store re-tokenises its texts when changed: with the same stemmer
    again.add(["runners run daily"], gaussians=_g(1, seed=4), ids=["runner"])
    scores = _bm25(again, "running")
    assert scores["run"] > 0 and scores["runner"] > 0


def test_an_unstemmed_save_still_writes_format_1_and_an_old_save_without_the_key_loads_unstemmed(
    tmp_path: Path,
) -> None:
    _store(stemmer=None).save(tmp_path / "hy")
    cfg_path = tmp_path / "hy" / "hybrid.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    assert config["format_version"] == 1 and config["bm25"]["stemmer"] is None
    del config["bm25"]["stemmer"]  # as a save from before the option
    cfg_path.write_text(json.dumps(config), encoding="utf-8")
    old = KLHybridStore.load(tmp_path / "hy")
    assert old.stemmer is None
    assert all(v == 0 for v in _bm25(old, "runs").values())


def test_a_bad_stemmer_language_names_it_and_the_allowed_ones() -> None:
    import Stemmer

    with pytest.raises(ValueError, match=r"stemmer 'klingon' is not a PyStemmer language; allowed: .*english") as err:
        KLHybridStore(stemmer="klingon")
    assert all(name in str(err.value) for name in Stemmer.algorithms())
    with pytest.raises(TypeError, match="stemmer must be a PyStemmer language name"):
        KLHybridStore(stemmer=True)  # type: ignore[arg-type]


def test_a_bad_stemmer_in_a_saved_config_is_refused_at_load(tmp_path: Path) -> None:
    from kl_retrievers.hybrid import HybridFormatError

    _store(stemmer="english").save(tmp_path / "hy")
    cfg_path = tmp_path / "hy" / "hybrid.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    config["bm25"]["stemmer"] = "klingon"
    cfg_path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(HybridFormatError, match="klingon"):
        KLHybridStore.load(tmp_path / "hy", verify_checksums=False)


def test_a_missing_pystemmer_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "Stemmer", None)  # import Stemmer raises ImportError
    with pytest.raises(ImportError, match=r'PyStemmer.*pip install "kl-retrievers\[hybrid\]"'):
        KLHybridStore(stemmer="english")
    with pytest.raises(ModuleNotFoundError, match=r"stemmer='english' \(the default\) needs PyStemmer.*stemmer=None"):
        KLHybridStore()  # the default stems: the message names the extra
    assert KLHybridStore(stemmer=None).stemmer is None  # no stemmer: PyStemmer is not needed


def test_language_case_is_folded_and_iso_codes_are_refused_with_the_reason() -> None:
    assert KLHybridStore(stemmer=" English ").stemmer == "english"  # saved under the language's own name
    with pytest.raises(ValueError, match=r"stemmer 'en' is not a PyStemmer language.*ISO codes such as 'en'"):
        KLHybridStore(stemmer="en")


def test_the_tokenizer_copies_and_pickles_with_and_without_a_stemmer() -> None:
    """A thread-local made at construction could not be copied or pickled (review of the option)."""
    import copy
    import pickle

    for stemmer in (None, "english"):
        tokenizer = _store(stemmer=stemmer)._tokenizer
        expected = tokenizer("the dogs were running")
        for twin in (copy.deepcopy(tokenizer), pickle.loads(pickle.dumps(tokenizer))):
            assert twin("the dogs were running") == expected
            assert twin.stemmer == stemmer


def test_the_adaptive_parameters_follow_the_stores_stemmer(caplog: pytest.LogCaptureFixture) -> None:
    """A stemmed store gets the parameters fitted on stemmed BM25, an unstemmed one those fitted unstemmed
    (shipped until stop 42); parameters fitted otherwise than the store are warned about."""
    import logging

    from kl_retrievers.hybrid import AdaptiveParams

    stemmed, plain = AdaptiveParams.default(), AdaptiveParams.default(None)
    assert stemmed.bm25_stemmer == "english" and plain.bm25_stemmer is None and stemmed != plain
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        assert _store().adaptive_params() == stemmed
        assert _store(stemmer=None).adaptive_params() == plain
    assert not [r for r in caplog.records if "were fitted on BM25" in r.getMessage()]

    class _Bge:  # an encoder named like the bundled bge model, whose folder ships both fits since stop 43
        name_or_path = "kl_retrievers:bge-small-unit-variance"

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        params = KLHybridStore(_Bge()).adaptive_params()  # type: ignore[arg-type]
        unstemmed = KLHybridStore(_Bge(), stemmer=None).adaptive_params()  # type: ignore[arg-type]
    assert params.model == unstemmed.model == "bge-small-unit-variance"
    assert params.bm25_stemmer == "english" and unstemmed.bm25_stemmer is None and params != unstemmed
    assert not [r for r in caplog.records if "were fitted on BM25" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        porter = KLHybridStore(_Bge(), stemmer="porter").adaptive_params()  # type: ignore[arg-type]
    assert porter == params  # no fit for porter: the stemmed one, with a warning
    assert any(
        "were fitted on BM25 stemmed with 'english', but this store's BM25 is stemmed with 'porter'" in r.getMessage()
        and "pass stemmer='english'" in r.getMessage()
        for r in caplog.records
    )
