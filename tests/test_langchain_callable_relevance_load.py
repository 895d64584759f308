"""A LangChain store saved with a callable relevance (not saved) warns at ``load_local`` that the default applies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers.langchain import DEFAULT_RELEVANCE, KLEmbeddings, KLVectorStore


def test_load_local_of_a_callable_relevance_save_warns_and_uses_the_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emb = KLEmbeddings(make_tiny_encoder(), batch_size=4)
    store = KLVectorStore.from_texts(["tea and bread", "sun and moon"], emb, ids=["a", "b"])
    KLVectorStore(emb, store=store.store, relevance=lambda s, k: 1.0).save_local(str(tmp_path / "lc"))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.langchain"):
        loaded = KLVectorStore.load_local(str(tmp_path / "lc"), emb)
    assert loaded.relevance == DEFAULT_RELEVANCE
    assert any("callable relevance" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.langchain"):
        KLVectorStore.load_local(str(tmp_path / "lc"), emb, relevance="inverse")
        store.save_local(str(tmp_path / "named"))
        KLVectorStore.load_local(str(tmp_path / "named"), emb)
    assert not any("callable relevance" in r.getMessage() for r in caplog.records)
