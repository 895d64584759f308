"""langchain-tests standard suites for :mod:`kl_retrievers.langchain` (none overridden, none xfail).

These suites test the LangChain *plumbing* (ids, upserts, deletes, async, return types), not
retrieval quality: they run on a tiny random BERT (see ``tests/conftest.py``) whose vocabulary is
extended with the words the suites use, so that every test text tokenizes to distinct tokens.
Ranking assertions in ``VectorStoreIntegrationTests`` only need an exact text match to rank first,
which holds for any encoder: ``KL(Q || D) = 0`` exactly when the query and document Gaussians are
identical, and ``> 0`` otherwise.
"""

from __future__ import annotations

import functools
from typing import Any
from unittest import mock

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests

import conftest
from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore

# The async standard tests are plain ``async def`` methods: mark every test here for pytest-asyncio
# (whatever asyncio_mode the project uses) and silence the notice this gives the sync ones.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:.*is marked with '@pytest.mark.asyncio' but it is not an async function"),
]

# Words used by the standard suites, added to the tiny encoder's vocabulary.
SUITE_WORDS = ("foo", "bar", "baz", "new", "some", "other", "field")

RETRIEVER_TEXTS = [
    "the cat sat on the mat",
    "a dog in the sun",
    "green tea and bread",
    "the moon and the star",
    "water on black rock",
    "a train at sea",
]


@functools.cache
def tiny_encoder() -> Any:
    """One tiny random Gaussian encoder (k=8) shared by the suites; read-only after creation."""
    with mock.patch.object(conftest, "WORDS", (*conftest.WORDS, *SUITE_WORDS)):
        return conftest.make_tiny_encoder(seed=1)


@functools.cache
def retriever_store() -> KLVectorStore:
    return KLVectorStore.from_texts(
        RETRIEVER_TEXTS, KLEmbeddings(tiny_encoder()), [{"n": i} for i in range(len(RETRIEVER_TEXTS))]
    )


class TestKLVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> VectorStore:
        """A fresh, empty store for every test."""
        return KLVectorStore(KLEmbeddings(tiny_encoder()))


class TestKLRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return KLRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"vectorstore": retriever_store(), "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "a cat on a mat"


class TestKLEmbeddingsUnitStandard(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return KLEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"encoder": tiny_encoder(), "batch_size": 4}


class TestKLEmbeddingsIntegrationStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return KLEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"encoder": tiny_encoder(), "batch_size": 4}
