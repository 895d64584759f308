"""The public inner-product rewrite: type checks, the refusal of vectors that overflow, and what the docs
claim of it (a float32 engine needs the float64 re-score of docs/method.md; the L2 reduction's recovery formula).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kl_retrievers import (
    Gaussians,
    KLStore,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
    neg_kl,
    neg_kl_matrix,
    save_gaussians,
)
from kl_retrievers.evaluation import retrieve_exact, retrieve_vectors
from kl_retrievers.gaussian import (
    neg_kl_rows,
    reduce_document_vectors,
    reduce_query_vectors,
    reduction_norm_bound,
    reduction_offset,
    score_vectors_float32,
)
from kl_retrievers.qpp import corpus_mean_scores, uncertainty_predictor

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
WRAP = r"must be a Gaussians batch; got {}: wrap the means and variances as Gaussians\(mean, var\)"

MEAN, VAR = np.zeros((2, 4)), np.ones((2, 4))
G = Gaussians(MEAN, VAR)

# ------------------------------------------------------------------ arrays where Gaussians belong
CALLS: dict[str, Callable[[Any], object]] = {
    "kl_query_vectors": kl_query_vectors,
    "kl_document_vectors": kl_document_vectors,
    "kl_query_constant": kl_query_constant,
    "neg_kl": lambda x: neg_kl(x, G),
    "neg_kl_matrix": lambda x: neg_kl_matrix(x, G),
    "retrieve_exact": lambda x: retrieve_exact(x, G, ["q1", "q2"], ["a", "b"], k=1),
    "uncertainty_predictor": lambda x: uncertainty_predictor(x, ["q1", "q2"]),
    "corpus_mean_scores": lambda x: corpus_mean_scores(x, G),
    "neg_kl_rows": lambda x: neg_kl_rows(x, G, np.array([[0], [1]])),
    "score_vectors_float32": lambda x: score_vectors_float32(x, "query"),
    "Gaussians.concat": lambda x: Gaussians.concat([G, x]),
}
NOT_GAUSSIANS = {"ndarray": MEAN, "tuple": (MEAN, VAR), "Tensor": torch.zeros(2, 4)}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("given", sorted(NOT_GAUSSIANS))
def test_arrays_instead_of_gaussians_are_refused_by_name(call: str, given: str) -> None:
    with pytest.raises(TypeError, match=WRAP.format(given)):
        CALLS[call](NOT_GAUSSIANS[given])


def test_documents_side_is_named() -> None:
    with pytest.raises(TypeError, match="documents " + WRAP.format("ndarray")):
        neg_kl_matrix(G, MEAN)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="documents " + WRAP.format("tuple")):
        retrieve_exact(G, (MEAN, VAR), ["q1", "q2"], ["a", "b"], k=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="documents " + WRAP.format("ndarray")):
        neg_kl_rows(G, MEAN, np.array([[0], [1]]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="documents " + WRAP.format("tuple")):
        score_vectors_float32((MEAN, VAR), "document")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"parts\[1\] " + WRAP.format("ndarray")):
        Gaussians.concat([G, MEAN])  # type: ignore[list-item]


def test_save_gaussians_in_torch_save_order_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "g.safetensors"
    with pytest.raises(TypeError, match=r"takes the path first: save_gaussians\(path, gaussians\)"):
        save_gaussians(G, target)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="gaussians " + WRAP.format("ndarray")):
        save_gaussians(target, MEAN)
    assert list(tmp_path.iterdir()) == []


def test_retrieve_vectors_refuses_gaussians_and_mismatched_widths() -> None:
    with pytest.raises(TypeError, match="queries must be an array of vectors .* got a Gaussians batch"):
        retrieve_vectors(G, G, ["q1", "q2"], ["a", "b"], k=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="documents must be an array of vectors"):
        retrieve_vectors(MEAN, G, ["q1", "q2"], ["a", "b"], k=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"one width .* queries of shape \(1, 2\) and documents of shape \(3, 3\)"):
        retrieve_vectors(np.ones((1, 2)), np.eye(3), ["q"], ["a", "b", "c"], k=1)
    assert retrieve_vectors(np.array([[1.0, 2.0, 3.0]]), np.eye(3), ["q"], ["a", "b", "c"], k=1) == {"q": {"c": 3.0}}


# ------------------------------------------------------------------ vectors that overflow their dtype
def _tiny_variance_documents(dtype: Any) -> Gaussians:
    """Three valid documents (finite, variances > 0); the third's d~ overflows float32 (1 / var)."""
    var = np.ones((3, 2), dtype=dtype)
    var[2, 1] = 1e-39
    return Gaussians(np.zeros((3, 2), dtype=dtype), var)


def test_document_vectors_that_overflow_are_refused_like_the_store() -> None:
    docs = _tiny_variance_documents(np.float32)
    message = r"document 2 cannot be scored in float32: coordinate 2 of its rewrite d~ is -5e\+38"
    with pytest.raises(ValueError, match=message + r".*variances 1e-39 to 1\); pass float64 Gaussians"):
        kl_document_vectors(docs)
    with pytest.raises(ValueError, match=message):
        kl_document_vectors(docs.torch())
    with pytest.raises(ValueError, match=message):  # the store refuses the same document
        KLStore().add(gaussians=docs, ids=["a", "b", "c"])
    wide = kl_document_vectors(docs.astype(np.float64))  # float64 holds it
    assert np.isfinite(wide).all() and wide[2, 2] == pytest.approx(-5e38, rel=1e-6)


def test_overflow_advice_names_the_cast_that_works_for_torch() -> None:
    """The advice said ``g.astype(np.float64)`` also for torch Gaussians, where that cast fails."""
    docs = _tiny_variance_documents(np.float32)
    with pytest.raises(ValueError, match=r"pass float64 Gaussians \(g\.astype\(torch\.float64\)\)"):
        kl_document_vectors(docs.torch())
    with pytest.raises(ValueError, match=r"pass float64 Gaussians \(g\.astype\(np\.float64\)\)"):
        kl_document_vectors(docs)
    assert bool(torch.isfinite(kl_document_vectors(docs.torch().astype(torch.float64))).all())  # the advice works
    queries = Gaussians(torch.full((1, 2), 1e20), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"query 0 .*\(g\.astype\(torch\.float64\)\)"):
        kl_query_vectors(queries)


def test_document_vectors_and_the_store_refuse_in_their_own_dtype() -> None:
    """The docstring said the store refuses "the same documents": float64 Gaussians pass here, not there."""
    g64 = Gaussians(np.full((1, 2), 1e10), np.full((1, 2), 1e-20))
    assert np.isfinite(kl_document_vectors(g64)).all()
    with pytest.raises(ValueError, match="document 0 cannot be scored in float32"):
        KLStore().add(gaussians=g64, ids=["a"])
    doc = " ".join((kl_document_vectors.__doc__ or "").split())
    assert "refuses the same documents" not in doc and "not always the same documents" in doc


def test_docs_say_which_stores_are_exact_and_what_runs_in_float32() -> None:
    faq = " ".join((REPO / "docs" / "faq.md").read_text(encoding="utf-8").split())
    assert "adapters in this package are always exact" not in faq
    assert "`KLStore`, `MilvusKLStore` and the `KLVectorStore` adapters" in faq
    assert "`KLEmbeddings` (LlamaIndex: `KLEmbedding`) in a third-party float32 store are not" in faq
    method = " ".join(METHOD.read_text(encoding="utf-8").split())
    assert "re-scored as above in float32" not in method
    assert "searched in float32, its candidates re-scored in float64" in method


def test_query_vectors_that_overflow_are_refused() -> None:
    queries = Gaussians(np.array([[0.0, 1.0], [1e20, 0.0]], dtype=np.float32), np.ones((2, 2), dtype=np.float32))
    message = r"query 1 cannot be scored in float32: coordinate 1 of its rewrite q~ is 1e\+40"
    with pytest.raises(ValueError, match=message):
        kl_query_vectors(queries)
    with pytest.raises(ValueError, match=message):
        kl_query_vectors(queries.torch())
    assert np.isfinite(kl_query_vectors(queries.astype(np.float64))).all()


def test_float64_overflow_and_unvalidated_zero_variance_are_refused() -> None:
    message = "document 0 cannot be scored in float64: coordinate 2 of its rewrite d~ is -inf"
    for var in (1e-320, 0.0):
        g = Gaussians(np.zeros((1, 2)), np.array([[1.0, var]]), validate=False)
        with pytest.raises(ValueError, match=message):
            kl_document_vectors(g)


def test_finite_vectors_are_unchanged() -> None:
    rng = np.random.default_rng(0)
    g = Gaussians(rng.normal(size=(5, 3)), np.exp(rng.normal(size=(5, 3))))
    m, v = g.mean, g.var
    inv = 1.0 / v
    expected = np.concatenate([-0.5 * (np.log(v) + m**2 * inv).sum(axis=1, keepdims=True), -0.5 * inv, m * inv], axis=1)
    np.testing.assert_array_equal(kl_document_vectors(g), expected)
    np.testing.assert_array_equal(kl_query_vectors(g), np.concatenate([np.ones((5, 1)), v + m**2, m], axis=1))
    assert kl_document_vectors(Gaussians(np.zeros((0, 3)), np.ones((0, 3)))).shape == (0, 7)


# ------------------------------------------------------------------ docs/method.md
def _method_block(marker: str) -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", METHOD.read_text(encoding="utf-8"), re.S | re.M)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/method.md should hold one python block using {marker}"
    return found[0]


def test_docs_float32_rescore_example_ranks_like_exact_neg_kl() -> None:
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    exec(compile(_method_block("neg_kl_rows"), str(METHOD), "exec"), namespace)
    docs, queries = namespace["docs"], namespace["queries"]
    exact = np.asarray(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)))
    top = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(namespace["rows"], top)
    np.testing.assert_allclose(namespace["scores"], np.take_along_axis(exact, top, 1), rtol=1e-12)
    # the plain float32 inner products the example starts from do not rank like -KL
    plain = np.argsort(-(namespace["query_vectors"] @ namespace["doc_vectors"].T), axis=1, kind="stable")[:, :10]
    assert (plain != top).any(axis=1).sum() >= len(top) // 2


def test_docs_l2_recovery_formula_matches_the_reduction_helpers() -> None:
    assert "(2 M^2 - ||x_q - x_d||^2) * ||q~|| / (2 M) + o + c(q)" in METHOD.read_text(encoding="utf-8")
    assert "||q~||^2 + M^2 - 2 <q~, d~>" not in METHOD.read_text(encoding="utf-8")
    rng = np.random.default_rng(0)
    docs = Gaussians(rng.normal(size=(100, 8)), np.exp(rng.normal(0.0, 0.5, (100, 8))))
    queries = docs[:3]
    dvec, qvec = np.asarray(kl_document_vectors(docs)), np.asarray(kl_query_vectors(queries))
    offset = reduction_offset(dvec)
    bound = reduction_norm_bound(dvec, offset)
    x_d = reduce_document_vectors(dvec, offset, bound, dtype=np.float64)
    x_q = reduce_query_vectors(qvec, bound, dtype=np.float64)
    dist = ((x_q[:, None, :] - x_d[None, :, :]) ** 2).sum(axis=-1)
    norm_q = np.linalg.norm(qvec, axis=1, keepdims=True)
    recovered = (2 * bound**2 - dist) * norm_q / (2 * bound) + offset + np.asarray(kl_query_constant(queries))[:, None]
    np.testing.assert_allclose(recovered, neg_kl_matrix(queries, docs), atol=1e-9)
