"""The encoders as a sentence-transformers user calls them (torch and ONNX): the texts under its keywords
(``sentences=``, ``inputs=``), ``truncate_dim`` equal to the dimension, its attributes (``similarity_fn_name``,
``get_max_seq_length()``, ``similarity_pairwise``, ``eval()`` / ``cpu()`` / ``training``), a query prefix written
by hand warned about once, and a pickled torch encoder keeping its weights' identity."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import assert_same_gaussians, make_tiny_encoder, tiny_torch_and_onnx
from kl_retrievers import GaussianEncoder, neg_kl, neg_kl_matrix

QUERIES = ["what do bees share", "bread rise"]
DOCS = ["bees dance to share where food is", "yeast makes bread rise", "the sun and the moon"]
PREFIX = "query the "


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny torch encoder with a query prefix, and its float32 ONNX export."""
    return tiny_torch_and_onnx(tmp_path_factory.mktemp("st_user"), extra={"query_prefix": PREFIX})


@pytest.fixture(params=["torch", "onnx"])
def encoder(request: pytest.FixtureRequest, encoders: dict[str, Any]) -> Any:
    return encoders[request.param]


def test_texts_under_sentence_transformers_keywords(encoder: Any) -> None:
    queries, documents = encoder.encode_queries(QUERIES), encoder.encode_documents(DOCS)
    for keyword in ("sentences", "inputs", "texts"):
        assert_same_gaussians(encoder.encode_query(**{keyword: QUERIES}), queries)
        assert_same_gaussians(encoder.encode_document(**{keyword: DOCS}), documents)
        assert_same_gaussians(encoder.encode(**{keyword: QUERIES}, prompt_name="query"), queries)
        assert_same_gaussians(encoder.encode(**{keyword: DOCS}, prompt_name="passage", batch_size=2), documents)


def test_texts_twice_or_none_are_refused_naming_the_keywords(encoder: Any) -> None:
    with pytest.raises(TypeError, match="^encode_query got its texts twice, as texts and sentences; pass them once$"):
        encoder.encode_query(QUERIES, sentences=QUERIES)
    with pytest.raises(TypeError, match="encode_document got its texts twice, as sentences and inputs"):
        encoder.encode_document(sentences=DOCS, inputs=DOCS)
    with pytest.raises(TypeError, match="encode got its texts twice, as texts and inputs"):
        encoder.encode(QUERIES, "query", inputs=QUERIES)
    for method in (encoder.encode_query, encoder.encode_document):
        with pytest.raises(TypeError, match="needs the texts: pass them first, or as texts=, sentences= or inputs="):
            method(batch_size=2)
    with pytest.raises(TypeError, match="^encode needs the texts"):
        encoder.encode(prompt_name="query")


def test_truncate_dim_equal_to_the_dimension_is_no_truncation(encoder: Any) -> None:
    dim = encoder.get_sentence_embedding_dimension()
    assert_same_gaussians(encoder.encode_query(QUERIES, truncate_dim=dim), encoder.encode_queries(QUERIES))
    assert_same_gaussians(encoder.encode_document(DOCS, truncate_dim=np.int64(dim)), encoder.encode_documents(DOCS))
    assert_same_gaussians(encoder.encode_queries(QUERIES, truncate_dim=dim), encoder.encode_queries(QUERIES))
    assert_same_gaussians(
        encoder.encode(DOCS, prompt_name="document", truncate_dim=None), encoder.encode_documents(DOCS)
    )
    for value in (dim - 1, dim + 1, float(dim), True):
        with pytest.raises(ValueError, match=f"truncate_dim={value!r}.*Matryoshka.*leave it at None \\(or {dim},"):
            encoder.encode_query(QUERIES, truncate_dim=value)
    with pytest.raises(ValueError, match="encode_documents\\(truncate_dim=4\\)"):
        encoder.encode_documents(DOCS, truncate_dim=4)


def test_similarity_fn_name_max_seq_length_and_pairwise_scores(encoder: Any) -> None:
    assert encoder.similarity_fn_name == "neg_kl"
    with pytest.raises(AttributeError, match="similarity_fn_name='cosine' cannot be set.*'neg_kl'"):
        encoder.similarity_fn_name = "cosine"
    assert encoder.get_max_seq_length() == encoder.max_seq_length == 64
    q, d = encoder.encode_query(QUERIES), encoder.encode_document(DOCS[:2])
    pairwise = encoder.similarity_pairwise(q, d)
    assert pairwise.shape == (2,)
    np.testing.assert_allclose(pairwise, np.diag(encoder.similarity(q, d)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pairwise, neg_kl(q, d))
    with pytest.raises(TypeError, match="similarity_pairwise takes Gaussians.*documents is ndarray"):
        encoder.similarity_pairwise(q, d.mean)
    three = encoder.encode_document(["a", "b", "c"])
    with pytest.raises(ValueError, match="similarity_pairwise pairs rows one to one.*use similarity for all pairs"):
        encoder.similarity_pairwise(q, three)  # the method called is named, not neg_kl


@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_pairwise_scores_of_a_vector_twin(kind: str) -> None:
    twin = make_tiny_encoder(seed=5)
    twin.config.extra = {"training": {"recipe": {"similarity": kind}}}
    assert twin.similarity_fn_name == kind
    q, d = twin.encode_query(QUERIES), twin.encode_document(DOCS[:2])
    np.testing.assert_allclose(twin.similarity_pairwise(q, d), np.diag(twin.similarity(q, d)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pairs rows one to one.*2 queries and 3 documents"):
        twin.similarity_pairwise(q, twin.encode_document(DOCS))


def test_eval_cpu_and_training_answer_on_both_backends(encoders: dict[str, Any]) -> None:
    onnx = encoders["onnx"]
    assert onnx.eval() is onnx and onnx.cpu() is onnx and onnx.training is False
    torch_encoder = make_tiny_encoder()
    torch_encoder.train()
    assert torch_encoder.training is True and torch_encoder.backbone.training is True
    assert torch_encoder.eval() is torch_encoder  # nn.Module's: the whole module switches
    assert torch_encoder.training is False and torch_encoder.backbone.training is False
    assert torch_encoder.cpu() is torch_encoder


def test_a_query_that_already_starts_with_the_prefix_is_warned_about_once(encoders: dict[str, Any]) -> None:
    for backend in ("torch", "onnx"):
        encoder = (
            copy.copy(encoders[backend]) if backend == "onnx" else make_tiny_encoder(extra={"query_prefix": PREFIX})
        )
        encoder.__dict__.pop("_warned_prefixed_queries", None)  # a copy carries the shared encoder's flag
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            encoder.encode_queries(QUERIES)  # no prefix written: nothing said
            assert not seen
            twice = encoder.encode_query([QUERIES[0], PREFIX + QUERIES[1]])
            encoder.encode_queries([PREFIX + QUERIES[0]])  # once per encoder
        assert len(seen) == 1, backend
        message = str(seen[0].message)
        assert message.startswith(f"1 of the 2 queries already start with the query prefix {PREFIX!r} of ")
        assert "encoded with it twice" in message and "removeprefix" in message
        assert seen[0].filename == __file__  # at the caller's line
        # not stripped: the user may mean it
        assert not np.allclose(twice.mean[1], encoder.encode_queries([QUERIES[1]]).mean[0])


def test_a_pickled_torch_encoder_keeps_its_weights_identity_a_deep_copy_does_not(tmp_path: Path) -> None:
    make_tiny_encoder().save_pretrained(tmp_path / "m")
    enc = GaussianEncoder.from_pretrained(tmp_path / "m")
    identity = enc.weights_sha256
    assert identity is not None
    restored = pickle.loads(pickle.dumps(enc))
    assert restored.weights_sha256 == identity
    assert_same_gaussians(restored.encode_documents(DOCS), enc.encode_documents(DOCS))
    np.testing.assert_array_equal(
        neg_kl_matrix(restored.encode_queries(QUERIES), restored.encode_documents(DOCS)),
        neg_kl_matrix(enc.encode_queries(QUERIES), enc.encode_documents(DOCS)),
    )
    restored.load_state_dict(make_tiny_encoder(seed=3).state_dict())  # a change after unpickling is seen
    assert restored.weights_sha256 is None
    assert copy.deepcopy(enc).weights_sha256 is None  # as documented: a copy in memory is not known
    assert copy.copy(enc).weights_sha256 == identity
    assert enc.weights_sha256 == identity
