"""A cached d~ whose first value is NaN (a damaged document cache) is refused on the cache path, not stored.

The cache path decodes each cached d~ back to a Gaussian from its coordinates ``1..2k`` (which do not read the
first value) and checks the first value against that Gaussian; a NaN compares false both ways, and the check
refuses it (``~(|d - expected| <= tol)``), naming the vector.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from langchain_core.stores import InMemoryByteStore

import kl_retrievers.langchain as lc
from conftest import CountingEncoder
from kl_retrievers.gaussian import document_gaussians_from_vectors


def test_a_nan_first_value_is_refused_by_the_check() -> None:
    kl = lc.KLEmbeddings(encoder=CountingEncoder())
    vectors = np.array(kl.embed_documents(["x", "y"]))
    vectors[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"vectors\[1\] is not one: its first value is nan"):
        lc._check_first_values(vectors, document_gaussians_from_vectors(vectors), "vectors")


def test_a_cached_vector_with_a_nan_first_value_is_not_stored() -> None:
    cache_backed = pytest.importorskip("langchain_classic.embeddings").CacheBackedEmbeddings
    cache = InMemoryByteStore()
    kl = lc.KLEmbeddings(encoder=CountingEncoder())
    cached = cache_backed.from_bytes_store(kl, cache, namespace="kl", key_encoder="sha256")
    cached.embed_documents(["cat sat", "dog ran"])  # both in the cache
    for key in list(cache.yield_keys()):
        value = json.loads(cache.mget([key])[0] or b"[]")
        value[0] = math.nan
        cache.mset([(key, json.dumps(value).encode())])
    store = lc.KLVectorStore(cached)
    with pytest.raises(ValueError, match=r"first value is nan"):
        store.add_texts(["cat sat", "dog ran"], ids=["a", "b"])
    assert store.store.ids == []
