"""A q~ whose variance decodes below KLEmbeddings.decode_query's floor warns naming the floored value.

At large means (|mu| 1e4) float64 keeps no variance below about 3e-5 beside mu^2; decode_query raises the decoded
variance to ``1e-12 * (var + mu^2)`` and the -KL scores use that value, which the warning names.
"""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.langchain import KLEmbeddings


def test_warning_names_the_floored_variance_the_scores_use() -> None:
    q = [1.0, 1e8 + 1.6e-6, 1e4]
    with pytest.warns(UserWarning, match=r"var 1\.\d+e-06, raised to the floor 0\.0001\); the -KL scores use 0\.0001"):
        g = KLEmbeddings.decode_query(q)
    np.testing.assert_allclose(g.var, [[1e-4]])


def test_warning_names_the_decoded_variance_when_not_floored() -> None:
    mu, var = 98.0, 5e-3  # float32 keeps var + mu^2 to about 1e-3 here: var is off; far above the floor
    q = np.array([1.0, var + mu**2, mu], dtype=np.float32).tolist()  # float32 numbers
    with pytest.warns(UserWarning, match=r"mu 98, var (\S+)\); the -KL scores use \1\.") as seen:
        g = KLEmbeddings.decode_query(q)
    assert all("raised to the floor" not in str(w.message) for w in seen)
    assert g.var[0, 0] > 1e-6
