"""Adapter review fixes (LangChain / LlamaIndex): one ``backend`` rule for an encoder object in both adapters
(its own backend is accepted, another refused naming both, never suggesting a call that fails on an ONNX
export), a model name as LlamaIndex ``encoder=`` refused up front, name refusals showing the call made,
a LlamaIndex folder that is no store listing what it holds, result-key clashes named neutrally, and the
LlamaIndex hybrid retriever's warning that the shipped confidence is the adaptive ranking's.

Each test fails on the code before its fix (tiny random encoders or precomputed Gaussians, no download).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import HYBRID_TEXTS, make_tiny_encoder, random_gaussians
from kl_retrievers import kl_document_vectors
from kl_retrievers.store import KLStore

DEFAULT_NAME = "kl_retrievers:minilm-gauss-soup"  # a bundled name: load_model loads it anywhere


class _PlainEncoder:
    """An encoder of another class (no backend): it encodes as the tiny torch encoder does."""

    def __init__(self) -> None:
        self._inner = make_tiny_encoder()
        self.name_or_path = "plain"

    def encode_queries(self, texts: Any, **kwargs: Any) -> Any:
        return self._inner.encode_queries(texts, **kwargs)

    def encode_documents(self, texts: Any, **kwargs: Any) -> Any:
        return self._inner.encode_documents(texts, **kwargs)


@pytest.fixture(scope="module")
def onnx_encoder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    root = tmp_path_factory.mktemp("onnx-backend")
    return OnnxGaussianEncoder(export_onnx(make_tiny_encoder(), root / "f32", quantize=None, verify=False))


def _embeddings_classes() -> list[Any]:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from kl_retrievers.langchain import KLEmbeddings
    from kl_retrievers.llama_index import KLEmbedding

    return [KLEmbeddings, KLEmbedding]


# ------------------------------------------------------------------ (2) one backend rule in both adapters
def test_both_adapters_accept_an_encoder_objects_own_backend() -> None:
    lc, llama = _embeddings_classes()
    encoder = make_tiny_encoder()
    assert lc(encoder, backend="torch").encoder is encoder  # was refused
    embed = llama(encoder, backend="torch")
    assert embed.encoder is encoder and embed.backend == "torch"


@pytest.mark.parametrize("adapter", [0, 1], ids=["langchain", "llama_index"])
def test_both_adapters_refuse_another_backend_for_an_encoder_object_naming_both(adapter: int) -> None:
    cls = _embeddings_classes()[adapter]
    with pytest.raises(ValueError) as info:  # LlamaIndex accepted it and kept the torch encoder
        cls(make_tiny_encoder(), backend="onnx")
    message = str(info.value)
    assert "backend='onnx'" in message and "GaussianEncoder" in message and "'torch' backend" in message
    assert "leave backend out" in message
    with pytest.raises(ValueError, match="which has no backend"):  # an encoder class with no backend at all
        cls(_PlainEncoder(), backend="torch")


def test_llama_index_refuses_an_unknown_backend_with_an_encoder_object() -> None:
    _, llama = _embeddings_classes()
    with pytest.raises(ValueError, match=r"backend must be one of \('torch', 'onnx'\); got 'tensorrt'"):
        llama(make_tiny_encoder(), backend="tensorrt")


@pytest.mark.parametrize("adapter", [0, 1], ids=["langchain", "llama_index"])
def test_the_backend_refusal_suggests_a_load_only_when_it_works(adapter: int) -> None:
    cls = _embeddings_classes()[adapter]
    encoder = make_tiny_encoder()
    encoder.name_or_path = DEFAULT_NAME  # a bundled model loads on either backend: the call is shown
    with pytest.raises(ValueError) as info:
        cls(encoder, backend="onnx")
    assert f"{DEFAULT_NAME!r}, backend='onnx')" in str(info.value)
    with pytest.raises(ValueError) as info:
        cls(make_tiny_encoder(), backend="onnx")  # 'tiny-random' loads nowhere: no call with that name
    assert "'tiny-random'" not in str(info.value)


@pytest.mark.parametrize("adapter", [0, 1], ids=["langchain", "llama_index"])
def test_the_backend_refusal_of_an_onnx_export_suggests_no_failing_call(adapter: int, onnx_encoder: Any) -> None:
    from kl_retrievers.pretrained import OnnxExportOnTorchError, load_model

    cls = _embeddings_classes()[adapter]
    folder = str(onnx_encoder.name_or_path)
    with pytest.raises(OnnxExportOnTorchError):  # what the old suggestion ran into
        load_model(folder, backend="torch")
    with pytest.raises(ValueError) as info:
        cls(onnx_encoder, backend="torch")
    message = str(info.value)
    assert f"{folder!r}, backend='torch')" not in message, message
    assert "is an ONNX export" in message and "exported from 'tiny-random'" in message
    assert "'onnx' backend" in message and "leave backend out" in message
    assert cls(onnx_encoder, backend="onnx").encoder is onnx_encoder  # its own backend


# ------------------------------------------------------------------ (3) a model name as LlamaIndex encoder=
@pytest.mark.parametrize("name", ["minilm-unit-variance", Path("some/model")])
def test_llama_index_refuses_a_model_name_as_encoder_up_front(name: Any) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLRetriever, KLVectorStore

    shown = repr(str(name))
    with pytest.raises(TypeError) as info:  # was accepted, then AttributeError at the first query
        KLVectorStore(KLStore(), encoder=name)
    assert f"KLEmbedding({shown})" in str(info.value) and f"load_model({shown})" in str(info.value)
    store = KLVectorStore(KLStore())
    with pytest.raises(TypeError, match="KLEmbedding"):
        KLRetriever(store, encoder=name)


# ------------------------------------------------------------------ (4) LangChain name refusal fits the call
def test_langchain_load_local_name_refusal_says_to_leave_embeddings_out(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    named = make_tiny_encoder()
    named.name_or_path = DEFAULT_NAME  # recorded on save: a model load_local loads without embeddings
    KLVectorStore.from_texts(["a b", "c d"], KLEmbeddings(named)).save_local(tmp_path / "named")
    with pytest.raises(TypeError) as info:
        KLVectorStore.load_local(tmp_path / "named", "minilm-unit-variance")
    message = str(info.value)
    assert "from_texts" not in message, message
    assert "KLVectorStore.load_local(folder_path, KLEmbeddings(model_name='minilm-unit-variance'))" in message
    assert (
        f"leave embeddings out to use the model the store was saved with ({DEFAULT_NAME!r}, which load_local loads)"
        in message
    )
    KLVectorStore.from_texts(["a b", "c d"], KLEmbeddings(make_tiny_encoder())).save_local(tmp_path / "tiny")
    with pytest.raises(TypeError) as info:  # 'tiny-random' cannot be loaded: no advice to leave them out
        KLVectorStore.load_local(tmp_path / "tiny", "minilm-unit-variance")
    assert "leave embeddings out" not in str(info.value) and "load_local(folder_path," in str(info.value)


@pytest.mark.parametrize(
    ("cls_name", "method"),
    [
        ("KLHybridRetriever", "from_texts"),
        ("KLHybridRetriever", "from_documents"),
        ("KLRetriever", "from_texts"),
        ("KLRetriever", "from_documents"),
        ("KLVectorStore", "from_documents"),
    ],
)
def test_langchain_name_refusal_shows_the_call_made(cls_name: str, method: str) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("bm25s")
    from langchain_core.documents import Document

    import kl_retrievers.langchain as lc

    first = ["a"] if method == "from_texts" else [Document(page_content="a")]
    with pytest.raises(TypeError) as info:
        getattr(getattr(lc, cls_name), method)(first, "minilm-unit-variance")
    message = str(info.value)
    what = "texts" if method == "from_texts" else "documents"
    assert f"{cls_name}.{method}({what}, KLEmbeddings(model_name='minilm-unit-variance'))" in message, message
    assert "KLVectorStore.from_texts" not in message  # what every one of them showed


# ------------------------------------------------------------------ (5) a LlamaIndex folder that is no store
def _persisted_llama_store(path: Path) -> None:
    from llama_index.core.schema import TextNode

    from kl_retrievers.llama_index import KLVectorStore

    store = KLVectorStore(KLStore())
    vectors = kl_document_vectors(random_gaussians(3, 4))
    store.add([TextNode(text=f"t{i}", id_=f"n{i}", embedding=[float(x) for x in v]) for i, v in enumerate(vectors)])
    store.persist(str(path))


def test_llama_index_folder_with_a_damaged_manifest_names_it_and_both_forms(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "storage"
    _persisted_llama_store(folder / "idx.json")
    (folder / "idx.json").write_text("{oops", encoding="utf-8")
    (folder / "docstore.json").write_text(json.dumps({"fine": 1}), encoding="utf-8")  # readable: not listed
    with pytest.raises(FileNotFoundError) as info:
        KLVectorStore.from_persist_path(folder)
    message = str(info.value)
    assert "no config.json; not a KLStore folder" not in message
    assert "a KLStore folder (with config.json)" in message and "one KLVectorStore manifest" in message
    assert "idx.json (JSONDecodeError)" in message and "docstore.json" not in message
    assert "idx.klstore" in message


def test_llama_index_folder_holding_only_a_klstore_folder_points_at_it(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "storage"
    _persisted_llama_store(folder / "idx.json")
    (folder / "idx.json").unlink()
    with pytest.raises(FileNotFoundError) as info:
        KLVectorStore.from_persist_path(folder)
    shown = f"KLVectorStore.from_persist_path({str(folder / 'idx.klstore')!r})"
    assert shown in str(info.value), info.value
    assert len(KLVectorStore.from_persist_path(folder / "idx.klstore")._store) == 3  # the shown call works
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="a KLStore folder .* or a folder holding one KLVectorStore manifest"):
        KLVectorStore.from_persist_path(tmp_path / "empty")


# ------------------------------------------------------------------ (7) result-key clashes named neutrally
def test_langchain_key_clash_names_both_fields_whichever_was_assigned() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLRetriever

    retriever = KLRetriever.from_texts(["the cat sat", "green tea"], KLEmbeddings(make_tiny_encoder()))
    retriever.uncertainty_key = "neg_kl"  # score_key was 'neg_kl' all along
    with pytest.raises(ValueError) as info:
        retriever.invoke("cat")
    message = str(info.value)
    assert "score_key and uncertainty_key are both 'neg_kl'" in message, message
    assert "is also" not in message and "'confidence', 'neg_kl'" in message
    with pytest.raises(ValueError, match="score_key, uncertainty_key and confidence_key are all 'x'"):
        KLRetriever(vectorstore=retriever.vectorstore, score_key="x", uncertainty_key="x", confidence_key="x")


# ------------------------------------------------------------------ (R2-6) LlamaIndex hybrid fusion warning
@pytest.fixture(scope="module")
def default_named_hybrid_store() -> Any:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    encoder = make_tiny_encoder(seed=1)
    encoder.name_or_path = DEFAULT_NAME  # the default model's name: its shipped hybrid calibrator is found
    store = KLHybridStore(encoder, fusion="adaptive")
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(len(HYBRID_TEXTS))])
    return store


def test_llama_index_hybrid_warns_once_that_the_shipped_confidence_is_the_adaptive_rankings(
    default_named_hybrid_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("llama_index.core")
    import kl_retrievers.llama_index as llama_module
    from kl_retrievers.calibration import default_hybrid_calibrator
    from kl_retrievers.llama_index import KLHybridRetriever

    getattr(llama_module, "_FUSION_WARNED", set()).discard("rrf")
    store = default_named_hybrid_store
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.llama_index"):
        KLHybridRetriever(store, similarity_top_k=2).retrieve("black rock")  # adaptive: nothing to say
        explicit = KLHybridRetriever(store, similarity_top_k=2, fusion="rrf", calibrator=default_hybrid_calibrator())
        explicit.retrieve("black rock")  # an explicit calibrator may have been fitted for rrf
        assert not [r for r in caplog.records if "fusion=" in r.getMessage()]
        rrf = KLHybridRetriever(store, similarity_top_k=2, fusion="rrf")
        for _ in range(2):
            assert rrf.retrieve("black rock")[0].node.metadata["confidence"] is not None
    warned = [r.getMessage() for r in caplog.records if "fusion='rrf'" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "'adaptive' fusion's ranking" in warned[0] and "KLConfidencePostprocessor" in warned[0]
