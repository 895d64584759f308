"""``KLEmbedding`` hands LlamaIndex its KL vectors as lists of Python floats in one ``tolist`` call.

It converted them with ``[float(x) for x in row]``, one Python step per value (about 2.5x slower on a
2048 x 769 batch); the lists are the same: ``float`` values equal to ``float(x)``, ``-0.0``, ``nan`` and ``inf``
kept, for float32 and float64 arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import TextNode

from conftest import CountingEncoder
from kl_retrievers.gaussian import kl_document_vectors, kl_query_vectors
from kl_retrievers.llama_index import KLEmbedding, KLVectorStore, _python_floats


def _same(got: Any, want: Any) -> None:
    """``got == want`` value by value, each a Python ``float``, the sign of a zero and ``nan`` included."""
    assert type(got) is list and len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, list):
            _same(g, w)
            continue
        assert type(g) is float
        assert (math.isnan(g) and math.isnan(w)) or (g == w and math.copysign(1.0, g) == math.copysign(1.0, w))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_lists_as_a_python_float_per_value(dtype: Any) -> None:
    rows = np.random.default_rng(0).normal(size=(5, 9)).astype(dtype) * dtype(1e3)
    rows[0, :4] = [-0.0, np.nan, np.inf, -np.inf]
    rows[1, 0] = np.finfo(dtype).max
    rows[1, 1] = np.finfo(dtype).tiny / dtype(8)  # subnormal
    _same(_python_floats(rows), [[float(x) for x in row] for row in rows])
    _same(_python_floats(rows[2]), [float(x) for x in rows[2]])


def test_embedding_methods_give_the_per_value_lists() -> None:
    embed = KLEmbedding(CountingEncoder())
    texts = ["a cat", "a dog", "the mat"]
    documents = kl_document_vectors(embed.document_gaussians(texts))
    _same(embed.get_text_embedding_batch(texts), [[float(x) for x in row] for row in documents])
    _same(embed.get_text_embedding("a cat"), [float(x) for x in documents[0]])
    query = kl_query_vectors(embed.query_gaussians(["a cat"]))[0]
    _same(embed.get_query_embedding("a cat"), [float(x) for x in query])


def test_stored_nodes_come_back_with_the_per_value_lists() -> None:
    encoder = CountingEncoder()
    store = KLVectorStore(encoder=encoder)
    texts = ["a cat", "a dog"]
    embed = KLEmbedding(encoder)
    store.add([TextNode(text=t, id_=f"n{i}", embedding=embed.get_text_embedding(t)) for i, t in enumerate(texts)])
    nodes = store.get_nodes(["n0", "n1"])
    stored = kl_document_vectors(store._store.get_gaussians(["n0", "n1"]).astype(np.float64))
    _same([n.embedding for n in nodes], [[float(x) for x in row] for row in stored])
