"""LangChain's ``EmbeddingsRedundantFilter`` over KLEmbeddings warns whatever its ``similarity_fn`` (no plain
similarity of two d~ measures redundancy), and a cosine in a ``functools.partial`` is recognised as a cosine
(``EmbeddingsFilter(similarity_fn=partial(cosine_similarity))`` was not warned about).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document

import kl_retrievers.langchain as lc
from conftest import CountingEncoder

TEXTS = ["the cat sat on the mat", "a dog ran", "green tea and bread", "the cat ran"]


def _dot(x: Any, y: Any) -> np.ndarray:
    return np.asarray(x) @ np.asarray(y).T


def _cosine_similarity(x: Any, y: Any) -> np.ndarray:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def test_a_cosine_in_a_partial_is_a_cosine() -> None:
    assert lc._is_cosine(functools.partial(_cosine_similarity))
    assert lc._is_cosine(functools.partial(functools.partial(_cosine_similarity)))
    assert not lc._is_cosine(functools.partial(_dot))


def test_embeddings_filter_with_a_partial_cosine_warns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
        filters = pytest.importorskip("langchain_classic.retrievers.document_compressors")
    emb = lc.KLEmbeddings(encoder=CountingEncoder())
    docs = [Document(page_content=t) for t in TEXTS]
    compressor = filters.EmbeddingsFilter(
        embeddings=emb, similarity_fn=functools.partial(_cosine_similarity), k=2, similarity_threshold=None
    )
    with pytest.warns(UserWarning, match=r"KLEmbeddings used by EmbeddingsFilter"):
        compressor.compress_documents(docs, "cat")


def test_redundant_filter_with_a_function_of_the_users_warns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        transformers = pytest.importorskip("langchain_community.document_transformers")
    emb = lc.KLEmbeddings(encoder=CountingEncoder())
    docs = [Document(page_content=t) for t in TEXTS]
    with pytest.warns(UserWarning, match=r"KLEmbeddings used by EmbeddingsRedundantFilter .*similarity_fn"):
        transformers.EmbeddingsRedundantFilter(embeddings=emb, similarity_fn=_dot).transform_documents(docs)
