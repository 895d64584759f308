"""A LlamaIndex store persisted by kl-retrievers 0.1.0 (manifest without ``relevance``) loads with a warning.

0.1.0 reported the raw ``-KL`` as each node's similarity; this release reports the relevance ``exp(-KL)``.
The ranking is the same; the load says once that the numbers changed and where the raw ``-KL`` is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
from llama_index.core import Document, StorageContext, VectorStoreIndex

from conftest import make_tiny_encoder
from kl_retrievers.llama_index import KLEmbedding, KLVectorStore

TEXTS = ["the cat sat on the mat", "green tea and black bread", "the moon and the star rise", "a dog in the sea"]
#: The keys kl-retrievers 0.1.0 wrote in ``default__vector_store.json``.
OLD_KEYS = ("flat_metadata", "format", "format_version", "score_direction", "score_name", "store")


def _persist(folder: Path, embed: KLEmbedding) -> list[str]:
    storage = StorageContext.from_defaults(vector_store=KLVectorStore())
    docs = [Document(text=t, id_=f"doc{i}") for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex.from_documents(docs, storage_context=storage, embed_model=embed)
    storage.persist(persist_dir=str(folder))
    return [h.node.node_id for h in index.as_retriever(similarity_top_k=3).retrieve("cat on a mat")]


def _relevance_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "relevance" in r.getMessage()]


@pytest.fixture(scope="module")
def embed() -> KLEmbedding:
    return KLEmbedding(make_tiny_encoder(), embed_batch_size=4)


def test_an_old_manifest_keeps_the_ranking_and_warns_once(
    tmp_path: Path, embed: KLEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "storage"
    before = _persist(folder, embed)
    manifest_path = folder / "default__vector_store.json"
    manifest = json.loads(manifest_path.read_text())
    old = {key: manifest[key] for key in OLD_KEYS}
    old["library_version"] = "0.1.0"
    manifest_path.write_text(json.dumps(old))
    (folder / old["store"] / "llama_index_manifest.json").unlink()  # 0.1.0 kept no copy in the store folder
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.llama_index"):
        store = KLVectorStore.from_persist_dir(str(folder))
    warnings = _relevance_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "0.1.0" in warnings[0] and "exp(-KL)" in warnings[0] and "'neg_kl'" in warnings[0]
    assert store.relevance == "exp"
    hits = VectorStoreIndex.from_vector_store(store, embed_model=embed).as_retriever(similarity_top_k=3)
    found = hits.retrieve("cat on a mat")
    assert [h.node.node_id for h in found] == before
    neg_kl = np.array([h.node.metadata["neg_kl"] for h in found])
    np.testing.assert_allclose([h.get_score(raise_error=True) for h in found], np.exp(neg_kl), rtol=1e-12)


def test_a_manifest_that_records_its_relevance_loads_without_the_warning(
    tmp_path: Path, embed: KLEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "storage"
    _persist(folder, embed)
    assert json.loads((folder / "default__vector_store.json").read_text())["relevance"] == "exp"
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.llama_index"):
        KLVectorStore.from_persist_dir(str(folder))
    assert _relevance_warnings(caplog) == []
