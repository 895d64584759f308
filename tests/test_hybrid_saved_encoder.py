"""A hybrid store loaded without ``encoder=`` encodes text with the model it was saved with.

``KLHybridStore.load(path)`` keeps the saved model's name (``saved_encoder``) and loads it by name,
once, lazily, at the first text search or text addition (its dimension checked, a failure named and
cached); nothing is loaded for an explicit encoder or for query / document Gaussians. The LlamaIndex
and LangChain hybrid retrievers over such a store get it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bm25s")

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import ADAPTIVE_PARAMS_FILE, AdaptiveParams, KLHybridStore

TEXTS = ["the cat sat on the mat", "bread and tea for breakfast", "a dog in the park"]
IDS = ["a", "b", "c"]


def _saved_hybrid(tmp_path: Path, fusion: str = "rrf") -> tuple[GaussianEncoder, Path]:
    """A hybrid store built with a tiny encoder loaded from a folder (so its saved name loads), saved."""
    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    store = KLHybridStore(encoder, fusion=fusion)  # type: ignore[arg-type]
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "hy")
    return encoder, tmp_path / "hy"


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``load_model`` record its calls and fail, as no retry can fix (an ``OSError`` is retried)."""
    from kl_retrievers import pretrained

    calls: list[str] = []

    def failing(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        raise ValueError("no such model")

    monkeypatch.setattr(pretrained, "load_model", failing)
    return calls


def _ids(hits: list[Any]) -> list[str]:
    return [h.id for h in hits]


def test_a_loaded_hybrid_store_searches_with_its_saved_model_loaded_lazily(tmp_path: Path) -> None:
    encoder, path = _saved_hybrid(tmp_path)
    want = _ids(KLHybridStore.load(path, encoder=encoder).search("tea for breakfast", k=3))
    lazy = KLHybridStore.load(path)
    assert lazy.saved_encoder == str(encoder.name_or_path)
    assert lazy.kl.encoder is None  # nothing loaded yet
    qg = encoder.encode_queries(["tea for breakfast"])
    assert _ids(lazy.search("tea for breakfast", k=3, query_gaussians=qg)) == want
    assert lazy.kl.encoder is None  # query Gaussians: still nothing loaded
    assert _ids(lazy.search("tea for breakfast", k=3)) == want
    assert lazy.kl.encoder is not None
    assert str(lazy.kl.encoder.name_or_path) == str(encoder.name_or_path)
    first = lazy.kl.encoder
    lazy.search("the cat", k=1)
    assert lazy.kl.encoder is first  # loaded once


def test_a_loaded_hybrid_store_encodes_added_texts_with_its_saved_model(tmp_path: Path) -> None:
    encoder, path = _saved_hybrid(tmp_path)
    lazy = KLHybridStore.load(path)
    assert lazy.add(["the moon at night"], ids=["d"]) == ["d"]
    want = encoder.encode_documents(["the moon at night"])
    np.testing.assert_allclose(lazy.kl.get_gaussians(["d"]).mean, want.mean, rtol=1e-5, atol=1e-6)
    assert lazy.search("moon", k=1)[0].id == "d"


def test_a_failed_load_of_the_saved_model_is_named_and_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder, path = _saved_hybrid(tmp_path)
    lazy = KLHybridStore.load(path)
    calls = _no_loading(monkeypatch)
    # Gaussians given: nothing to load, so nothing fails
    assert _ids(lazy.search("tea", k=1, query_gaussians=encoder.encode_queries(["tea"]))) == ["b"]
    assert lazy.add(["x y"], ids=["e"], gaussians=encoder.encode_documents(["x y"])) == ["e"]
    assert calls == []
    name = str(encoder.name_or_path)
    for _ in range(3):
        with pytest.raises(ValueError, match="saved with, .*enc.*failed .no such model.*pass encoder="):
            lazy.search("tea", k=1)
    with pytest.raises(ValueError, match="failed .no such model"):
        lazy.add(["more tea"], ids=["f"])
    assert calls == [name]  # one attempt, the failure kept
    assert "f" not in lazy


def test_a_saved_model_of_another_dimension_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import pretrained

    _, path = _saved_hybrid(tmp_path)
    lazy = KLHybridStore.load(path)
    other = make_tiny_encoder(dim=4, seed=1)
    monkeypatch.setattr(pretrained, "load_model", lambda name, **kwargs: other)
    with pytest.raises(ValueError, match=r"which now gives Gaussians of dimension 4; its documents have dimension 8"):
        lazy.search("tea", k=1)
    assert lazy.kl.encoder is None


def test_no_saved_model_and_no_encoder_says_what_to_pass() -> None:
    store = KLHybridStore(fusion="rrf")
    store.add(["a b"], gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["x"])
    assert store.saved_encoder is None and store.encoder is None
    with pytest.raises(ValueError, match=r"records no model it was saved with.*pass encoder=.*KLHybridStore\.load"):
        store.search("a", k=1)


def test_adaptive_parameters_come_from_the_saved_model_without_loading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    own = AdaptiveParams(("uncertainty",), (0.0,), (1.0,), (-2.0,), 0.25, "minmax", model="enc")
    own.save(tmp_path / "enc" / ADAPTIVE_PARAMS_FILE)
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    store = KLHybridStore(encoder)  # fusion="adaptive": the folder's parameters, looked up (not saved)
    assert store.adaptive_params() == own
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "hy")
    lazy = KLHybridStore.load(tmp_path / "hy")
    calls = _no_loading(monkeypatch)
    assert lazy.adaptive_params() == own  # the saved model's, not the default model's
    hits = lazy.search("tea", k=1, query_gaussians=encoder.encode_queries(["tea"]))
    assert hits[0].dense_weight is not None
    assert calls == []


def test_llama_index_hybrid_retriever_over_a_loaded_store_uses_its_saved_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLHybridRetriever

    encoder, path = _saved_hybrid(tmp_path)
    calls = _no_loading(monkeypatch)
    given = KLHybridRetriever.from_defaults(store=KLHybridStore.load(path), encoder=encoder, similarity_top_k=3)
    want = [n.node.node_id for n in given.retrieve("tea for breakfast")]
    assert calls == []  # an encoder given: nothing loaded
    monkeypatch.undo()
    retriever = KLHybridRetriever.from_defaults(store=KLHybridStore.load(path), similarity_top_k=3)
    assert [n.node.node_id for n in retriever.retrieve("tea for breakfast")] == want
    loaded = retriever.store.kl.encoder
    assert loaded is not None and str(loaded.name_or_path) == str(encoder.name_or_path)  # not the default model


def test_llama_index_hybrid_retriever_names_a_saved_model_that_fails_to_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLHybridRetriever

    _, path = _saved_hybrid(tmp_path)
    calls = _no_loading(monkeypatch)
    retriever = KLHybridRetriever.from_defaults(store=KLHybridStore.load(path))
    for _ in range(2):
        with pytest.raises(ValueError, match=r"saved with, '.*enc'.*pass encoder= to KLHybridStore\.load"):
            retriever.retrieve("tea")
    assert len(calls) == 1


def test_langchain_hybrid_retriever_over_a_loaded_store_uses_its_saved_model(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLHybridRetriever

    encoder, path = _saved_hybrid(tmp_path)
    want = [d.id for d in KLHybridRetriever(store=KLHybridStore.load(path, encoder=encoder), k=3).invoke("tea")]
    lazy = KLHybridRetriever(store=KLHybridStore.load(path), k=3)
    assert [d.id for d in lazy.invoke("tea")] == want
    # the calibrator is looked up for the saved model already at the first query (it ships none)
    floor = KLHybridRetriever(store=KLHybridStore.load(path), k=3, min_confidence=0.5)
    with pytest.raises(ValueError, match=r"needs a confidence calibrator, and the model '.*enc' ships none"):
        floor.invoke("tea")
