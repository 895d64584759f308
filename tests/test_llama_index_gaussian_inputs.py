"""``KLEmbedding.query_gaussians`` / ``document_gaussians`` check their texts as the encoder does.

A bare string is one text (not one per character), a mapping (its keys), a set (arbitrary order) or
``bytes`` is refused with the encoder's ``TypeError``; ``get_query_embedding`` given a list says that
the query must be a str.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder

pytest.importorskip("llama_index.core")

from kl_retrievers._encoding import check_texts
from kl_retrievers.gaussian import kl_query_vectors
from kl_retrievers.llama_index import KLEmbedding


@pytest.fixture(scope="module")
def emb() -> KLEmbedding:
    return KLEmbedding(make_tiny_encoder())


def test_a_bare_string_is_one_query_or_document(emb: KLEmbedding) -> None:
    q = emb.query_gaussians("the cat sat")
    assert q.mean.shape[0] == 1
    np.testing.assert_array_equal(q.mean, emb.query_gaussians(["the cat sat"]).mean)
    d = emb.document_gaussians("a dog in the sun")
    assert d.mean.shape[0] == 1
    np.testing.assert_array_equal(d.mean, emb.document_gaussians(["a dog in the sun"]).mean)
    # as the encoder itself: one row for a string
    assert emb.encoder.encode_documents("a dog in the sun").mean.shape[0] == 1


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ({"doc-1": "the cat sat"}, "dict"),
        ({"the cat sat", "a dog"}, "set"),
        (b"the cat sat", "bytes"),
        ({"doc-1": "the cat sat"}.keys(), "keys"),
    ],
)
def test_containers_the_encoder_refuses_are_refused(emb: KLEmbedding, bad: Any, what: str) -> None:
    with pytest.raises(TypeError) as expected:
        check_texts(bad, "texts")
    with pytest.raises(TypeError) as got:
        emb.document_gaussians(bad)
    assert str(got.value) == str(expected.value)
    with pytest.raises(TypeError) as expected_q:
        check_texts(bad, "queries")
    with pytest.raises(TypeError) as got_q:
        emb.query_gaussians(bad)
    assert str(got_q.value) == str(expected_q.value)
    with pytest.raises(TypeError):  # the encoder refuses it too
        emb.encoder.encode_documents(bad)


def test_get_query_embedding_of_a_list_says_the_query_must_be_a_str(emb: KLEmbedding) -> None:
    with pytest.raises(TypeError, match=r"query must be a str \(one query\); got list"):
        emb.get_query_embedding(["bees"])  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        emb.get_query_embedding("the bee"), kl_query_vectors(emb.query_gaussians(["the bee"]))[0]
    )
