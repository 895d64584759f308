"""LlamaIndex KLVectorStore's refusal of the keyword and hybrid query modes names KLHybridRetriever."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

from kl_retrievers.gaussian import Gaussians, kl_document_vectors, kl_query_vectors
from kl_retrievers.llama_index import KLVectorStore


def _store_and_query(mode: VectorStoreQueryMode) -> tuple[KLVectorStore, VectorStoreQuery]:
    import numpy as np

    g = Gaussians(np.array([[0.5, -1.0], [1.0, 0.0]]), np.array([[2.0, 0.25], [1.0, 1.0]]))
    store = KLVectorStore()
    store.add(
        [
            TextNode(id_=f"n{i}", text=f"t{i}", embedding=list(map(float, v)))
            for i, v in enumerate(kl_document_vectors(g))
        ]
    )
    query = VectorStoreQuery(query_embedding=list(map(float, kl_query_vectors(g)[0])), similarity_top_k=1, mode=mode)
    return store, query


@pytest.mark.parametrize(
    "mode",
    [
        VectorStoreQueryMode.HYBRID,
        VectorStoreQueryMode.SPARSE,
        VectorStoreQueryMode.SEMANTIC_HYBRID,
        VectorStoreQueryMode.TEXT_SEARCH,
    ],
)
def test_keyword_query_modes_refusal_names_kl_hybrid_retriever(mode: VectorStoreQueryMode) -> None:
    store, query = _store_and_query(mode)
    with pytest.raises(
        ValueError,
        match=rf"query modes \('default', 'mmr'\); got '{mode.value}'; for BM25 \+ -KL hybrid search use "
        r"KLHybridRetriever\.from_defaults\(nodes=\.\.\.\)",
    ):
        store.query(query)


def test_other_query_modes_refusal_has_no_hybrid_hint() -> None:
    store, query = _store_and_query(VectorStoreQueryMode.SVM)
    with pytest.raises(ValueError, match=r"got 'svm'$"):
        store.query(query)
