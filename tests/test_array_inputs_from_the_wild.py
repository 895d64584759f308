"""Arrays as callers pass them: float32 overflow, 2-D scores, tensors with gradients, half precision, read-only memory.

1. ``neg_kl`` / ``neg_kl_matrix`` returned ``-inf`` without a word where a float32 -KL overflows (a variance of
   1e-45; means of 1e20 and -1e20), where ``kl_document_vectors`` refuses the same Gaussians: they refuse it too,
   naming the pair, its float64 value and float64 as the fix.
2. ``ConfidenceCalibrator.confidence`` and ``query_features`` pooled the scores of several queries given as one
   2-D array; a numpy integer ``n_bins`` was refused; an uncertainty of shape ``(1,)`` or a complex one failed
   with numpy's or Python's words.
3. The decoders' precision hint blamed float32 for a float64 ``q~`` whose values happen to be float32 numbers
   (mean 1e4, var 1e-10: the variance cancels against mu^2 in float64 itself) and for an integer array.
4. The by-vector entries (``KLEmbeddings.decode_query``, LangChain's ``add_embeddings``, LlamaIndex's query
   embedding, ``ConfidenceCalibrator``) crashed on a tensor that requires grad or is bfloat16, and parsed strings
   and dropped imaginary parts that ``Gaussians`` refuses: they convert as ``Gaussians`` does.
5. float16 node embeddings were refused as "not KL document vectors" without the reason: float16.
6. An empty batch of another dimension was added (``[]``) to a store of dimension k.
7. ``Gaussians.torch()`` of a read-only array gave a tensor writing into that array (and torch's warning).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians, KLStore, kl_document_vectors, kl_query_vectors, neg_kl, neg_kl_matrix
from kl_retrievers.calibration import (
    ConfidenceCalibrator,
    expected_calibration_error,
    query_features,
    reliability_table,
)


# ---------------------------------------------------------------- 1. -KL that overflows float32
def test_neg_kl_refuses_a_score_that_overflows_float32_naming_the_pair_and_float64() -> None:
    q = Gaussians(np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32))
    d = Gaussians(np.array([[0.0], [1.0]], np.float32), np.array([[1.0], [1e-45]], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not an overflow RuntimeWarning and -inf
        with pytest.raises(ValueError, match=r"query 0 and document 1 cannot be scored in float32: their -KL is -7"):
            neg_kl_matrix(q, d)
        with pytest.raises(ValueError, match=r"document 1 .*pass float64 Gaussians \(g.astype\(np.float64\)\)"):
            neg_kl(q, d)
    big = Gaussians(np.array([[1e20], [-1e20]], np.float32), np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match="query 0 and document 1 cannot be scored in float32"):
        neg_kl_matrix(big, big)
    scores = neg_kl_matrix(q.astype(np.float64), d.astype(np.float64))  # float64 holds it
    assert np.isfinite(scores).all() and scores[0, 0] == 0.0


def test_neg_kl_refuses_a_torch_float32_overflow() -> None:
    torch = pytest.importorskip("torch")
    q = Gaussians(torch.zeros(1, 1), torch.ones(1, 1))
    d = Gaussians(torch.ones(1, 1), torch.tensor([[1e-45]]))
    with pytest.raises(ValueError, match=r"float32.*g.astype\(torch.float64\)"):
        neg_kl_matrix(q, d)
    with pytest.raises(ValueError, match="float32"):
        kl_document_vectors(d)  # the same Gaussians, the same refusal
    assert torch.isfinite(neg_kl_matrix(q.astype(torch.float64), d.astype(torch.float64))).all()


# ---------------------------------------------------------------- 2. calibration inputs
def _calibrator() -> ConfidenceCalibrator:
    return ConfidenceCalibrator(["gap12", "max_score"]).fit([[0.0, -1], [1.0, -2], [0.5, -3], [2.0, -1]], [0, 1, 0, 1])


def test_confidence_refuses_the_scores_of_several_queries() -> None:
    two_queries = np.array([[-1.0, -5.0], [-1.1, -1.2]])
    with pytest.raises(ValueError, match=r"one query's retrieved scores.*shape \(2, 2\)"):
        _calibrator().confidence(two_queries, 0.0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        query_features(two_queries, 0.0, ["gap12"])
    assert _calibrator().confidence(two_queries[0], 0.0) == _calibrator().confidence([-1.0, -5.0], 0.0)


def test_calibration_error_takes_a_numpy_integer_number_of_bins() -> None:
    prob, labels = [0.1, 0.15, 0.9], [0, 1, 1]
    assert expected_calibration_error(prob, labels, np.int64(2)) == expected_calibration_error(prob, labels, 2)
    rows = reliability_table(prob, labels, np.int32(2))
    assert rows == reliability_table(prob, labels, 2) and type(rows[1]["low"]) is float
    for bad in (True, 2.0, 0):
        with pytest.raises(ValueError, match="n_bins must be an integer >= 1"):
            expected_calibration_error(prob, labels, bad)  # type: ignore[arg-type]


def test_confidence_refuses_an_uncertainty_that_is_no_single_real_number() -> None:
    cal = _calibrator()
    with pytest.raises(ValueError, match=r"uncertainty must be one number.*shape \(1,\)"):
        cal.confidence([-1.0, -2.0], np.array([0.1]))  # type: ignore[arg-type]
    for value in (1 + 2j, np.complex128(0.5)):
        with pytest.raises(TypeError, match="uncertainty has dtype complex"):
            cal.confidence([-1.0, -2.0], value)  # type: ignore[arg-type]
    assert cal.confidence([-1.0, -2.0], np.float32(0.1)) == cal.confidence([-1.0, -2.0], 0.1)
    zero_d: Any = np.array(0.1)
    assert cal.confidence([-1.0, -2.0], zero_d) == cal.confidence([-1.0, -2.0], 0.1)


# ---------------------------------------------------------------- 3. the precision hint
def _cancelling_query() -> Any:
    """A float64 q~ (mean 1e4, var 1e-10) whose values happen to be float32 numbers: var cancels in float64."""
    q = np.asarray(kl_query_vectors(Gaussians(np.array([[1e4]]), np.array([[1e-10]]))))[0]
    assert q.dtype == np.float64 and np.array_equal(q.astype(np.float32), q)
    return q


def test_the_precision_hint_blames_float32_only_for_float32_input() -> None:
    pytest.importorskip("llama_index.core")
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings
    from kl_retrievers.llama_index import query_gaussians_from_embeddings

    q = _cancelling_query()
    with pytest.raises(ValueError, match="variance <= 0") as refused:
        query_gaussians_from_embeddings(q)
    assert "float32" not in str(refused.value)
    assert "cancellation against mu^2" in str(refused.value) and "Centre the means" in str(refused.value)
    with pytest.warns(UserWarning, match="cancellation against mu\\^2") as seen:
        KLEmbeddings.decode_query(q)
    assert not any("float32" in str(w.message) for w in seen)
    integers: Any = np.array([1, 2, 0, 1, 5, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="smaller than mu_q") as refused:
        KLEmbeddings.decode_query(integers)  # an integer array: no q~, no precision
    assert "float32" not in str(refused.value)
    single: Any = np.array([1.0, 1e4**2 + 1.0, 1e4], dtype=np.float32)
    with pytest.warns(UserWarning, match="came as a float32 array"):  # a float32 array is float32
        KLEmbeddings.decode_query(single)


# ---------------------------------------------------------------- 4. tensors, bfloat16, strings
def test_the_by_vector_entries_convert_as_gaussians_do() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("llama_index.core")
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings
    from kl_retrievers.langchain import KLVectorStore as LangChainStore
    from kl_retrievers.llama_index import query_gaussians_from_embeddings

    v = torch.tensor([1.0, 4.5, 2.0])
    for given in (v.clone().requires_grad_(), v.bfloat16(), [v.clone().requires_grad_()]):
        for decode in (KLEmbeddings.decode_query, query_gaussians_from_embeddings):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # bfloat16's precision warning (tests/test_saved_score_checks...)
                g = decode(given)
            assert g.mean.tolist() == [[2.0]] and g.var.tolist() == [[0.5]]
    bad: Any
    for bad in (np.array(["1", "4.5", "2"]), np.array([1, 4.5 + 3j, 2]), np.array([1.0, 4.5, 2.0], dtype=object)):
        for decode in (KLEmbeddings.decode_query, query_gaussians_from_embeddings):
            with pytest.raises(TypeError, match=f"has dtype {bad.dtype}"):
                decode(bad)

    dvec = torch.tensor(np.asarray(kl_document_vectors(Gaussians(np.array([[2.0]]), np.array([[0.5]])))))
    store = LangChainStore()
    assert store.add_embeddings([("tea", dvec[0].clone().requires_grad_())], ids=["t"]) == ["t"]
    assert store.store.get_gaussians(["t"]).var.tolist() == [[0.5]]
    strings: Any = np.array(["-1", "-0.5", "2"])
    with pytest.raises(TypeError, match=r"text_embeddings\[0\] has dtype <U"):
        store.add_embeddings([("tea", strings)])

    cal = ConfidenceCalibrator(["gap12"]).fit(torch.tensor([[0.0], [1.0]]).bfloat16(), torch.tensor([0.0, 1.0]))
    assert cal.predict(torch.tensor([[0.5]], requires_grad=True)).shape == (1,)
    assert 0 <= cal.confidence(torch.tensor([-1.0, -2.0]).bfloat16(), 0.1) <= 1
    with pytest.raises(TypeError, match="features has dtype complex"):
        cal.predict(np.array([[0.5 + 1j]]))
    with pytest.raises(TypeError, match="scores has dtype <U"):
        cal.confidence(np.array(["-1", "-2"]), 0.1)


# ---------------------------------------------------------------- 5. float16 node embeddings
def test_float16_node_embeddings_are_refused_naming_float16() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode

    from kl_retrievers.llama_index import KLVectorStore

    rng = np.random.default_rng(2)
    g = Gaussians(rng.normal(size=(3, 4)), rng.uniform(0.3, 3, size=(3, 4)))
    dvec = np.asarray(kl_document_vectors(g))
    nodes = [TextNode(id_=str(i), text="x", embedding=dvec[i].astype(np.float16)) for i in range(3)]
    with pytest.raises(ValueError, match="not KL document vectors.*came as float16 numbers.*float32 or float64"):
        KLVectorStore().add(nodes)
    store = KLVectorStore()  # float32 keeps what a d~ needs
    store.add([TextNode(id_=str(i), text="x", embedding=dvec[i].astype(np.float32).tolist()) for i in range(3)])


# ---------------------------------------------------------------- 6. an empty batch of another dimension
def test_an_empty_batch_of_another_dimension_is_refused() -> None:
    from kl_retrievers.hybrid import KLHybridStore

    store = KLStore()
    store.add(gaussians=Gaussians(np.zeros((2, 3)), np.ones((2, 3))), ids=["a", "b"])
    with pytest.raises(ValueError, match="document gaussians have dimension 5; this store has dimension 3"):
        store.add(gaussians=Gaussians(np.zeros((0, 5)), np.ones((0, 5))))
    assert store.add(gaussians=Gaussians(np.zeros((0, 3)), np.ones((0, 3)))) == []
    hybrid = KLHybridStore()
    hybrid.add(["a b", "c d"], gaussians=Gaussians(np.zeros((2, 3)), np.ones((2, 3))), ids=["a", "b"])
    with pytest.raises(ValueError, match="dimension 5; this store has dimension 3"):
        hybrid.add([], gaussians=Gaussians(np.zeros((0, 5)), np.ones((0, 5))))


# ---------------------------------------------------------------- 7. read-only arrays to torch
def test_torch_of_a_read_only_array_copies_it(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    frozen = np.ones((1, 2))
    frozen.setflags(write=False)
    path = tmp_path / "var.npy"
    np.save(path, np.full((1, 2), 2.0))
    mapped: Any = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's non-writable UserWarning
        t = Gaussians(frozen, mapped).torch()
    assert isinstance(t.mean, torch.Tensor)
    t.mean[0, 0] = 5.0
    t.var[0, 0] = 7.0
    assert frozen[0, 0] == 1.0 and mapped[0, 0] == 2.0  # the caller's read-only memory is left alone
    writable = np.ones((1, 2))
    shared = Gaussians(writable, writable).torch()
    shared.mean[0, 0] = 3.0
    assert writable[0, 0] == 3.0  # a writable array is still shared, as documented
