"""``_vector_hash``, by which a ``KLVectorStore`` knows its nodes' embeddings came from a ``KLEmbedding``.

It hashed ``tuple(float(x) for x in vector)``, a Python step per value (28% of LlamaIndex's non-model insert
overhead over 5,000 nodes); it now hashes a list as it is and reads an array as Python floats in one call.
Equal values must still hash equal whatever holds them, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from kl_retrievers.llama_index import _vector_hash


def _old_hash(vector: object) -> int:
    return hash(tuple(float(x) for x in vector))  # type: ignore[attr-defined]


def test_equal_values_hash_equal_whatever_holds_them() -> None:
    values = np.random.default_rng(0).normal(size=769).astype(np.float32)  # exact in float32 and float64
    as_list = [float(x) for x in values]
    holders: list[Any] = [
        as_list,
        tuple(as_list),
        values,
        values.astype(np.float64),
        list(values),  # numpy float32 scalars
        list(values.astype(np.float64)),
    ]
    assert {_vector_hash(v) for v in holders} == {_old_hash(as_list)}


def test_negative_zero_hashes_as_zero_and_ints_as_floats() -> None:
    assert _vector_hash([-0.0, 1.0, 2.5]) == _vector_hash([0.0, 1, 2.5]) == _vector_hash(np.array([0.0, 1.0, 2.5]))
    assert _vector_hash(np.array([-0.0, 1.0], dtype=np.float32)) == _old_hash([0.0, 1.0])


def test_different_values_hash_differently() -> None:
    base = [0.1, 0.2, 0.3]
    assert len({_vector_hash(base), _vector_hash([0.1, 0.2, 0.30000000000000004]), _vector_hash(base[:2])}) == 3
