"""A model folder may ship parameters fitted on unstemmed BM25 beside its stemmed ones (bundled bge does)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kl_retrievers.hybrid import ADAPTIVE_PARAMS_FILE, SIGNALS, AdaptiveParams, KLHybridStore


class _Named:
    """Stands in for an encoder: only its ``name_or_path`` is read when the adaptive parameters are resolved."""

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = name_or_path


def _params(coef: float, stemmer: str | None) -> AdaptiveParams:
    n = len(SIGNALS)
    info = {} if stemmer is None else {"bm25_stemmer": stemmer}
    return AdaptiveParams(SIGNALS, (0.0,) * n, (1.0,) * n, (coef,) * n, 0.2, "zscore", model="my-model", info=info)


def test_an_unstemmed_store_gets_the_folders_unstemmed_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    stemmed, plain = _params(0.5, "english"), _params(-0.5, None)
    stemmed.save(folder / ADAPTIVE_PARAMS_FILE)
    plain.save(folder / "hybrid_adaptive.unstemmed.json")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        assert KLHybridStore(_Named(str(folder))).adaptive_params() == stemmed  # type: ignore[arg-type]
        assert KLHybridStore(_Named(str(folder)), stemmer=None).adaptive_params() == plain  # type: ignore[arg-type]
    assert not [r for r in caplog.records if "were fitted on BM25" in r.getMessage()]


def test_a_folder_with_only_a_stemmed_fit_warns_an_unstemmed_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    stemmed = _params(0.5, "english")
    stemmed.save(folder / ADAPTIVE_PARAMS_FILE)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        assert KLHybridStore(_Named(str(folder)), stemmer=None).adaptive_params() == stemmed  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records if "were fitted on BM25" in r.getMessage()]
    assert len(messages) == 1 and "hybrid_adaptive.json" in messages[0] and "pass stemmer='english'" in messages[0]


def test_bundled_bge_ships_a_stemmed_fit_and_its_unstemmed_one() -> None:
    """The stemmed fit passed the rule written before it (docs/research-notes.md): it is bge's default."""

    bge = KLHybridStore(_Named("kl_retrievers:bge-small-unit-variance"))  # type: ignore[arg-type]
    plain = KLHybridStore(_Named("kl_retrievers:bge-small-unit-variance"), stemmer=None)  # type: ignore[arg-type]
    stemmed_params, plain_params = bge.adaptive_params(), plain.adaptive_params()
    assert stemmed_params.bm25_stemmer == "english" and plain_params.bm25_stemmer is None
    assert stemmed_params.model == plain_params.model == "bge-small-unit-variance"
    for p in (stemmed_params, plain_params):
        assert all("test" not in name for name in p.info["fitted_on"])  # training splits only
