"""sentence-transformers' names on the Gaussian encoders (torch and ONNX): what works, and what is refused, why."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from conftest import assert_same_gaussians, make_tiny_encoder, tiny_torch_and_onnx
from kl_retrievers import neg_kl_matrix
from kl_retrievers.onnx import OnnxGaussianEncoder

QUERIES = ["what do bees share", "bread rise"]
DOCS = ["bees dance to share where food is", "yeast makes bread rise", "the sun and the moon"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny torch encoder and its float32 ONNX export."""
    return tiny_torch_and_onnx(tmp_path_factory.mktemp("st"))


@pytest.fixture(params=["torch", "onnx"])
def encoder(request: pytest.FixtureRequest, encoders: dict[str, Any]) -> Any:
    return encoders[request.param]


def test_st_v5_names_encode_queries_and_documents_as_ours(encoder: Any) -> None:
    assert_same_gaussians(encoder.encode_query(QUERIES), encoder.encode_queries(QUERIES))
    assert_same_gaussians(encoder.encode_document(DOCS), encoder.encode_documents(DOCS))
    assert_same_gaussians(encoder.encode(QUERIES, prompt_name="query"), encoder.encode_queries(QUERIES))
    for name in ("document", "passage", "corpus"):
        assert_same_gaussians(encoder.encode(DOCS, prompt_name=name), encoder.encode_documents(DOCS))
    assert_same_gaussians(encoder.encode_document(DOCS, prompt_name="passage"), encoder.encode_documents(DOCS))
    # The query budget is not the document budget: the two encodings of a long text differ.
    long = [" ".join(["bees"] * 60)]
    assert not np.allclose(encoder.encode_query(long).mean, encoder.encode_document(long).mean)


def test_encode_without_a_role_is_refused_naming_both_methods(encoder: Any) -> None:
    for kwargs in ({}, {"prompt_name": "classification"}):
        with pytest.raises(ValueError, match="prompt_name='query' or 'document'.*encode_query.*encode_document"):
            encoder.encode(QUERIES, **kwargs)


def test_similarity_is_the_neg_kl_matrix_queries_first(encoder: Any) -> None:
    q, d = encoder.encode_query(QUERIES), encoder.encode_document(DOCS)
    scores = encoder.similarity(q, d)
    assert scores.shape == (2, 3)
    np.testing.assert_array_equal(scores, neg_kl_matrix(q, d))
    assert (scores <= 1e-5).all()  # -KL: 0 at best
    assert not np.allclose(encoder.similarity(d, q).T, scores)  # not symmetric: the order matters
    tensor_scores = encoder.similarity(q.torch(), d.torch())
    assert isinstance(tensor_scores, torch.Tensor)
    np.testing.assert_allclose(tensor_scores.numpy(), scores, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="similarity takes Gaussians.*queries is ndarray"):
        encoder.similarity(q.mean, d)
    with pytest.raises(TypeError, match="documents is ndarray"):
        encoder.similarity(q, d.mean)


def test_st_output_keywords_are_translated(encoder: Any) -> None:
    assert encoder.encode_query(QUERIES, convert_to_tensor=True).is_torch
    assert encoder.encode_document(DOCS, convert_to_numpy=False).is_torch
    plain = encoder.encode_document(DOCS, convert_to_numpy=True, convert_to_tensor=False)
    assert not plain.is_torch
    assert_same_gaussians(plain, encoder.encode_documents(DOCS))
    same = encoder.encode_document(
        DOCS,
        batch_size=1,
        show_progress_bar=False,
        device="cpu",
        normalize_embeddings=False,
        precision="float32",
        output_value="sentence_embedding",
        truncate_dim=None,
        prompt=None,
    )
    assert_same_gaussians(same, plain)
    with pytest.raises(ValueError, match="convert_to='numpy' contradicts convert_to_tensor=True"):
        encoder.encode_query(QUERIES, convert_to_tensor=True, convert_to="numpy")
    with pytest.raises(TypeError, match="encode_query: convert_to_tensor must be a bool; got .yes."):
        encoder.encode_query(QUERIES, convert_to_tensor="yes")


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("normalize_embeddings", True, "not cosine"),
        ("truncate_dim", 4, "Matryoshka"),
        ("precision", "int8", "float32"),
        ("output_value", "token_embeddings", "one Gaussian per text"),
        ("prompt", "query: ", "query_prefix"),
        ("pool", {}, "multi-process"),
        ("chunk_size", 8, "multi-process"),
    ],
)
def test_st_keywords_without_a_meaning_for_gaussians_are_refused_not_ignored(
    encoder: Any, name: str, value: object, why: str
) -> None:
    for method in (encoder.encode_query, encoder.encode_document):
        with pytest.raises(ValueError, match=f"{method.__name__}\\({name}=.*{why}"):
            method(QUERIES, **{name: value})
    with pytest.raises(ValueError, match=name):
        encoder.encode(QUERIES, prompt_name="document", **{name: value})


def test_a_prompt_name_of_the_other_role_and_unknown_keywords_are_refused(encoder: Any) -> None:
    with pytest.raises(ValueError, match="encode_query\\(prompt_name='document'\\).*encode_document for documents"):
        encoder.encode_query(QUERIES, prompt_name="document")
    with pytest.raises(ValueError, match="encode_document\\(prompt_name='query'\\)"):
        encoder.encode_document(DOCS, prompt_name="query")
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\) 'normalise'.*normalize_embeddings"):
        encoder.encode_document(DOCS, normalise=True)


def test_dimension_and_token_budget_under_st_names(encoder: Any) -> None:
    assert encoder.get_sentence_embedding_dimension() == encoder.get_embedding_dimension() == 8
    assert encoder.max_seq_length == encoder.config.max_length == 64
    with pytest.raises(AttributeError, match="max_seq_length=128 cannot be set.*query_max_length for queries \\(32\\)"):
        encoder.max_seq_length = 128
    assert encoder.max_seq_length == 64 and encoder.config.query_max_length == 32


def test_a_single_string_gives_one_row_not_a_vector(encoder: Any) -> None:
    g = encoder.encode_query("what do bees share")
    assert g.mean.shape == g.var.shape == (1, 8)
    assert_same_gaussians(g, encoder.encode_query(["what do bees share"]))


def test_onnx_to_cpu_is_itself_and_other_devices_are_refused(encoders: dict[str, Any]) -> None:
    onnx: OnnxGaussianEncoder = encoders["onnx"]
    assert onnx.to("cpu") is onnx
    with pytest.raises(ValueError, match="cpu only; got device='cuda' \\(use backend='torch'\\)"):
        onnx.to("cuda")


def test_the_shared_backbone_onnx_encoder_has_the_st_names() -> None:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    for name in ("encode", "encode_query", "encode_document", "similarity", "get_sentence_embedding_dimension", "to"):
        assert getattr(OnnxHeadsGaussianEncoder, name) is getattr(OnnxGaussianEncoder, name)
    assert isinstance(OnnxGaussianEncoder.max_seq_length, property)


def test_a_list_of_devices_is_refused_naming_it(encoder: Any) -> None:
    """sentence-transformers' ``device=[...]`` (multi-process) is refused with a ValueError, not torch's TypeError."""
    with pytest.raises(ValueError, match="device=\\['cpu', 'cpu'\\]\\): one device only.*multi-process"):
        encoder.encode_query(QUERIES, device=["cpu", "cpu"])
    with pytest.raises(ValueError, match="\\['cpu'\\]"):
        encoder.encode_queries(QUERIES, device=["cpu"])


# --------------------------------------------------------------------------- review fixes (stop 41)
@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_similarity_of_a_vector_twin_is_the_score_it_was_trained_for(kind: str) -> None:
    twin = make_tiny_encoder(seed=5)
    twin.config.extra = {**(twin.config.extra or {}), "training": {"recipe": {"similarity": kind}}}
    q, d = twin.encode_query(QUERIES), twin.encode_document(DOCS)
    qm, dm = q.mean.astype(np.float64), d.mean.astype(np.float64)
    if kind == "cosine":
        qm = qm / np.linalg.norm(qm, axis=1, keepdims=True)
        dm = dm / np.linalg.norm(dm, axis=1, keepdims=True)
    np.testing.assert_allclose(twin.similarity(q, d), qm @ dm.T, rtol=1e-5, atol=1e-6)
    assert not np.allclose(twin.similarity(q, d), neg_kl_matrix(q, d))
    torch_scores = twin.similarity(q.torch(), d.torch())
    assert isinstance(torch_scores, torch.Tensor)
    np.testing.assert_allclose(torch_scores.numpy(), qm @ dm.T, rtol=1e-4, atol=1e-5)


def test_onnx_to_takes_every_spelling_of_the_cpu(encoders: dict[str, Any]) -> None:
    onnx = encoders["onnx"]
    for device in ("cpu", "cpu:0", torch.device("cpu")):
        assert onnx.to(device) is onnx
    assert_same_gaussians(onnx.encode_query(QUERIES, device=torch.device("cpu")), onnx.encode_queries(QUERIES))
    with pytest.raises(ValueError, match="runs on cpu only; got device='cuda'"):
        onnx.to("cuda")
    with pytest.raises(TypeError, match="precision is fixed by its graph.*torch.float16"):
        onnx.to(torch.float16)


def test_max_seq_length_is_the_budget_applied(encoder: Any) -> None:
    cap = encoder.max_tokens
    assert cap is not None
    old = encoder.config.max_length
    try:
        encoder.config.max_length = cap + 100
        assert encoder.max_seq_length == cap  # clamped to what the backbone reads, as encoding is
    finally:
        encoder.config.max_length = old
    assert encoder.max_seq_length == min(old, cap)


def test_prompt_name_is_also_encode_s_second_positional_argument(encoder: Any) -> None:
    assert_same_gaussians(encoder.encode(QUERIES, "query"), encoder.encode_queries(QUERIES))
