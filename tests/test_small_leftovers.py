"""Small leftovers: ``OnnxGaussianEncoder.to(tensor=...)``, metadata checked before encoding, LangChain's
``backend`` with an encoder object and a model name as ``embedding``, a LlamaIndex folder with one custom-named
manifest, result keys assigned after construction, and ``evaluate --sample-queries``.

Each test fails on the code before its fix, except three regression guards for behaviour that was already right
(ids checked before encoding, keys swapped one by one, a plain KLStore folder loading); tiny random encoders or
precomputed Gaussians, no download.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians, write_pairs_beir
from kl_retrievers import Gaussians
from kl_retrievers.cli import main
from kl_retrievers.store import KLStore


# ------------------------------------------------------------------ 1. OnnxGaussianEncoder.to(tensor=...)
@pytest.fixture(scope="module")
def onnx_encoder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    root = tmp_path_factory.mktemp("onnx-to-tensor")
    return OnnxGaussianEncoder(export_onnx(make_tiny_encoder(), root / "f32", quantize=None, verify=False))


def test_onnx_to_takes_the_tensor_by_keyword_as_positionally(onnx_encoder: Any) -> None:
    import torch

    enc = onnx_encoder
    assert enc.to(torch.zeros(2)) is enc
    assert enc.to(tensor=torch.zeros(2)) is enc  # torch.nn.Module.to(tensor=...) takes it
    assert enc.to(tensor=torch.zeros(2), non_blocking=True) is enc
    assert enc.to(tensor=torch.zeros(2), memory_format=torch.contiguous_format) is enc
    fixed = r"precision is fixed by its graph .*got torch.float16"
    with pytest.raises(TypeError, match=fixed):  # as to(float16 tensor)
        enc.to(tensor=torch.zeros(2, dtype=torch.float16))
    with pytest.raises(TypeError, match="tensor= takes a torch tensor .*got str"):
        enc.to(tensor="cpu")
    with pytest.raises(TypeError, match=r"to\(tensor=...\) takes the tensor alone"):  # torch refuses it too
        enc.to("cpu", tensor=torch.zeros(2))
    with pytest.raises(TypeError, match=r"to\(tensor=...\) takes the tensor alone"):
        enc.to(tensor=torch.zeros(2), dtype=torch.float32)


# ------------------------------------------------------------------ 2. metadatas checked before encoding
class _CountingEncoder:
    """An encoder that counts the texts it is asked to encode."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode_documents(self, texts: list[str], **kwargs: Any) -> Gaussians:
        self.encoded += len(texts)
        return random_gaussians(len(texts), 4)

    def encode_queries(self, texts: list[str], **kwargs: Any) -> Gaussians:
        return self.encode_documents(texts)


@pytest.mark.parametrize(
    ("metadatas", "error", "match"),
    [
        ([{"a": 1}], ValueError, "got 1 metadatas but 2 documents"),
        ([{"a": 1}, "b"], TypeError, r"metadatas\[1\] must be a dict or None"),
        ({"a": 1}, TypeError, "metadatas must be a sequence of dicts"),
        ([{"a": 1}, {"b": object()}], TypeError, r"metadatas\[1\] is not JSON-serialisable"),
    ],
)
def test_add_checks_metadatas_before_encoding_the_texts(metadatas: Any, error: type, match: str) -> None:
    encoder = _CountingEncoder()
    store = KLStore(encoder=encoder)
    with pytest.raises(error, match=match):
        store.add(["one text", "another"], ids=["a", "b"], metadatas=metadatas)
    assert encoder.encoded == 0  # nothing encoded for nothing
    assert len(store) == 0
    assert store.add(["one text", "another"], metadatas=[{"a": 1}, None]) and encoder.encoded == 2


def test_add_checks_ids_before_encoding_the_texts() -> None:
    encoder = _CountingEncoder()
    store = KLStore(encoder=encoder)
    with pytest.raises(ValueError, match="got 1 ids but 2 texts"):
        store.add(["one text", "another"], ids=["a"])
    with pytest.raises(TypeError):
        store.add(["one text", "another"], ids=["a", 2])  # type: ignore[list-item]
    assert encoder.encoded == 0


# ------------------------------------------------------------------ 3-4. LangChain: backend, a name as embedding
def test_klembeddings_refuses_backend_with_an_encoder_object() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings

    encoder = make_tiny_encoder()
    with pytest.raises(ValueError, match="backend='onnx' applies to a model loaded here by name") as info:
        KLEmbeddings(encoder, backend="onnx")
    assert "GaussianEncoder" in str(info.value) and "leave backend out" in str(info.value)
    assert KLEmbeddings(encoder=encoder, backend="torch").encoder is encoder  # its own backend: harmless
    assert KLEmbeddings(encoder).encoder is encoder  # without backend: as before


@pytest.mark.parametrize("name", ["minilm-unit-variance", Path("some/model")])
def test_klvectorstore_refuses_a_model_name_as_embedding_showing_the_right_call(name: Any) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLRetriever, KLVectorStore

    shown = repr(str(name))
    right = f"KLVectorStore.from_texts(texts, KLEmbeddings(model_name={shown}))"
    with pytest.raises(TypeError) as info:
        KLVectorStore.from_texts(["the cat sat"], name)
    assert right in str(info.value), info.value
    with pytest.raises(TypeError, match="KLEmbeddings"):
        KLVectorStore(name)
    with pytest.raises(TypeError, match="KLEmbeddings"):
        KLRetriever.from_texts(["the cat sat"], name)


# ------------------------------------------------------------------ 5. LlamaIndex: a folder with one manifest
def _persisted_llama_store(path: Path) -> int:
    from llama_index.core.schema import TextNode

    from kl_retrievers import kl_document_vectors
    from kl_retrievers.llama_index import KLVectorStore

    store = KLVectorStore(KLStore())
    vectors = kl_document_vectors(random_gaussians(3, 4))
    store.add([TextNode(text=f"t{i}", id_=f"n{i}", embedding=[float(x) for x in v]) for i, v in enumerate(vectors)])
    store.persist(str(path))
    return 3


def test_llama_index_folder_with_one_custom_named_manifest_loads(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "storage"
    n = _persisted_llama_store(folder / "my_index.json")
    assert len(KLVectorStore.from_persist_path(folder / "my_index.json")._store) == n  # the file: as before
    assert len(KLVectorStore.from_persist_path(folder)._store) == n  # the folder: its one manifest
    assert len(KLVectorStore.from_persist_path(str(folder))._store) == n


def test_llama_index_folder_with_several_manifests_names_them(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "storage"
    _persisted_llama_store(folder / "my_index.json")
    _persisted_llama_store(folder / "other.json")
    with pytest.raises(ValueError, match="holds 2 KLVectorStore manifests") as info:
        KLVectorStore.from_persist_path(folder)
    assert "my_index.json" in str(info.value) and "other.json" in str(info.value)


def test_llama_index_klstore_folder_still_loads(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "kl"
    plain = KLStore()
    plain.add(gaussians=random_gaussians(2, 4), ids=["a", "b"])
    plain.save(folder)
    assert len(KLVectorStore.from_persist_path(folder)._store) == 2


# ------------------------------------------------------------------ 6. result keys assigned after construction
@pytest.mark.parametrize(("field", "value"), [("score_key", "confidence"), ("confidence_key", "neg_kl")])
def test_langchain_retriever_checks_result_keys_assigned_after_construction(field: str, value: str) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLRetriever

    retriever = KLRetriever.from_texts(["the cat sat on the mat", "green tea"], KLEmbeddings(make_tiny_encoder()))
    with pytest.raises(ValueError, match=f"are both {value!r}"):  # at construction, as before
        options: dict[str, Any] = {field: value}
        KLRetriever(vectorstore=retriever.vectorstore, **options)
    setattr(retriever, field, value)  # pydantic assigns without validating
    with pytest.raises(ValueError, match="one value would overwrite the other"):
        retriever.invoke("cat")


def test_langchain_retriever_keys_swapped_one_by_one_are_taken() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLRetriever

    retriever = KLRetriever.from_texts(["the cat sat on the mat", "green tea"], KLEmbeddings(make_tiny_encoder()))
    retriever.score_key, retriever.uncertainty_key = "query_uncertainty", "neg_kl"  # a swap: no clash once done
    docs = retriever.invoke("cat")
    assert docs and {"neg_kl", "query_uncertainty"} <= set(docs[0].metadata)
    assert docs[0].metadata["query_uncertainty"] <= 0  # the -KL, now under the other key


# ------------------------------------------------------------------ 7. evaluate --sample-queries
def _evaluate(capsys: pytest.CaptureFixture[str], root: Path, per_query: Path, *flags: str) -> dict[str, Any]:
    argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--per-query", str(per_query)]
    assert main([*argv, *flags]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def _queries_of(per_query: Path) -> list[str]:
    return sorted(json.loads(per_query.read_text(encoding="utf-8"))["per_query"])


def test_evaluate_sample_queries_is_deterministic_and_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_pairs_beir(tmp_path / "beir", n_queries=12)
    pq = [tmp_path / f"pq{i}.json" for i in range(4)]
    first = _evaluate(capsys, root, pq[0], "--sample-queries", "5", "--seed", "3")
    again = _evaluate(capsys, root, pq[1], "--sample-queries", "5", "--seed", "3")
    other = _evaluate(capsys, root, pq[2], "--sample-queries", "5", "--seed", "4")
    whole = _evaluate(capsys, root, pq[3])
    assert first["queries"] == 5 and first["sample"] == {"size": 5, "of": 12, "seed": 3}
    assert _queries_of(pq[0]) == _queries_of(pq[1])  # the same N and seed: the same queries
    assert {**again, "seconds": 0, "qpp_seconds": 0} == {**first, "seconds": 0, "qpp_seconds": 0}
    assert len(_queries_of(pq[2])) == 5 and _queries_of(pq[2]) != _queries_of(pq[0])
    assert other["sample"]["seed"] == 4
    assert whole["queries"] == 12 and "sample" not in whole
    assert json.loads(pq[0].read_text(encoding="utf-8"))["meta"]["sample"] == first["sample"]


def test_evaluate_sample_queries_defaults_seed_zero_and_takes_all_when_n_is_large(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = write_pairs_beir(tmp_path / "beir", n_queries=12)
    default = _evaluate(capsys, root, tmp_path / "a.json", "--sample-queries", "4")
    zero = _evaluate(capsys, root, tmp_path / "b.json", "--sample-queries", "4", "--seed", "0")
    assert default["sample"] == zero["sample"] == {"size": 4, "of": 12, "seed": 0}
    assert _queries_of(tmp_path / "a.json") == _queries_of(tmp_path / "b.json")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluate_cli"):
        big = _evaluate(capsys, root, tmp_path / "c.json", "--sample-queries", "50")
    assert big["queries"] == 12 and big["sample"] == {"size": 12, "of": 12, "seed": 0}
    assert any("evaluating all of them" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_evaluate_sample_queries_refuses_n_below_one_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    root = write_pairs_beir(tmp_path / "beir", n_queries=12)
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--sample-queries", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--sample-queries" in err and f"must be >= 1; got {value}" in err


def test_evaluate_seed_must_be_non_negative(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_pairs_beir(tmp_path / "beir", n_queries=12)
    with pytest.raises(SystemExit):
        main(["evaluate", str(root), "--baseline", "bm25", "--sample-queries", "2", "--seed", "-1"])
    err = capsys.readouterr().err
    assert "argument --seed: must be >= 0; got -1" in err, err


def test_sampled_dataset_keeps_the_whole_corpus(tmp_path: Path) -> None:
    from kl_retrievers.datasets import load_beir
    from kl_retrievers.evaluate_cli import _sample_queries

    ds = load_beir(write_pairs_beir(tmp_path / "beir", n_queries=12))
    small, sample = _sample_queries(ds, 3, 11)
    assert sample == {"size": 3, "of": 12, "seed": 11}
    assert small.doc_ids == ds.doc_ids and len(small.queries) == 3
    order = ds.query_ids
    assert [order.index(q) for q in small.query_ids] == sorted(order.index(q) for q in small.query_ids)
    assert np.all([small.qrels[q] == ds.qrels[q] for q in small.query_ids])
