"""Loading a saved store's model, and the LangChain adapter's keyword messages (each test failed on the previous code).

1. ``KLStore._load_saved_encoder`` (a store loaded without ``encoder=``) and ``KLVectorStore.load_local``
   (without ``embeddings=``) loaded the saved model on the library's default backend (int8 ONNX on CPU),
   even for a store whose saved encoder record says it was built with torch: its queries were answered by
   another model than its documents. They now load on the recorded backend, as ``kl-retrievers search`` does
   (torch recorded but not installed: the default, with a warning).
2. A store saved with a LangChain ``Embeddings`` (recorded as ``langchain:<class>``) or with a model folder
   that no longer exists: the lazy load asked the hub and said "the Hugging Face hub is unreachable or does
   not have it". It now says why the name cannot be loaded, without a lookup; ``load_local`` says to pass
   ``embeddings=``.
3. ``KLRetriever.from_store(vector_store, embedding=...)`` said the retriever takes no ``embedding`` (it does,
   with a ``KLStore``); ``vectorstore=`` gave pydantic's / Python's "multiple values" error.
4. ``retriever.invoke(query, fliter=...)`` raised Python's ``_get_relevant_documents() got an unexpected keyword
   argument``; it now names the keyword and the per-call keywords taken, as the constructor does.
5. ``KLVectorStore().as_retriever()`` loaded the default model at construction (LangChain's retriever tags read
   ``embeddings``); it is now loaded at the first query.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, KLStore
from kl_retrievers.langchain import KLEmbeddings, KLHybridRetriever, KLRetriever, KLVectorStore

TEXTS = ["the cat sat on the mat", "bread and tea for breakfast", "a dog in the park", "green tea"]


def _torch_store(tmp_path: Path) -> tuple[Path, Path]:
    """A KLStore built with a tiny torch encoder loaded from a folder (its saved name loads), saved."""
    make_tiny_encoder(seed=4).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    store = KLStore(encoder=encoder)
    store.add(TEXTS)
    store.save(tmp_path / "kl")
    return tmp_path / "enc", tmp_path / "kl"


def _spy_load_model(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> list[dict[str, Any]]:
    """Make ``load_model`` record its calls; it loads ``folder`` (torch) or, without one, fails naming the hub."""
    from kl_retrievers import pretrained

    calls: list[dict[str, Any]] = []

    def spy(name_or_path: Any = None, **kwargs: Any) -> Any:
        calls.append({"name": name_or_path, **kwargs})
        if folder is None:
            raise pretrained.ModelNotFoundError(
                f"cannot find model {name_or_path!r}: not a local folder, and the Hugging Face hub is unreachable"
            )
        return GaussianEncoder.from_pretrained(folder)

    monkeypatch.setattr(pretrained, "load_model", spy)
    return calls


# ---------------------------------------------------------------- 1. the recorded backend
def test_lazy_loader_uses_the_recorded_torch_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, path = _torch_store(tmp_path)
    record = json.loads((path / "config.json").read_text())["encoder"]
    assert "backend" not in record["config"]  # a torch encoder's config records none: built with torch
    calls = _spy_load_model(monkeypatch, folder)
    store = KLStore.load(path)
    encoder = store._load_saved_encoder()
    assert [c.get("backend") for c in calls] == ["torch"]
    assert calls[0]["name"] == str(folder.resolve())
    assert isinstance(encoder, GaussianEncoder) and store.encoder is encoder
    assert store.search("green tea", k=1)[0].text == "green tea"


def test_lazy_loader_backend_onnx_recorded_and_torch_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder, path = _torch_store(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["encoder"]["config"]["backend"] = "onnx"  # what an ONNX encoder's config records
    (path / "config.json").write_text(json.dumps(cfg))
    calls = _spy_load_model(monkeypatch, folder)
    KLStore.load(path, verify_checksums=False)._load_saved_encoder()
    assert calls[-1]["backend"] == "onnx"

    cfg["encoder"]["config"]["backend"] = "torch"
    (path / "config.json").write_text(json.dumps(cfg))
    from kl_retrievers.store import faiss

    monkeypatch.setattr(faiss, "_torch_installed", lambda: False)
    store = KLStore.load(path, verify_checksums=False)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.faiss"):
        store._load_saved_encoder()
    assert calls[-1]["backend"] is None  # torch not installed: the library's default, with a warning
    assert any("not installed" in r.getMessage() for r in caplog.records)


def test_load_local_uses_the_recorded_torch_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tiny_encoder(seed=4).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder)).save_local(tmp_path / "lc")
    calls = _spy_load_model(monkeypatch, tmp_path / "enc")
    loaded = KLVectorStore.load_local(tmp_path / "lc")
    assert [c.get("backend") for c in calls] == ["torch"]
    assert loaded.similarity_search("green tea", k=1)[0].page_content == "green tea"


def test_cli_keeps_its_own_backend_hint(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers import cli

    info = {"name_or_path": "m", "config": {"dim": 8}}
    monkeypatch.setattr("kl_retrievers.store.faiss._torch_installed", lambda: True)
    assert cli._recorded_backend(info) == "torch"
    monkeypatch.setattr("kl_retrievers.store.faiss._torch_installed", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert cli._recorded_backend(info) is None
    assert any("--model-backend" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- 2. names that cannot be loaded
def test_langchain_embeddings_name_is_not_looked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vs = KLVectorStore.from_texts(TEXTS, DeterministicFakeEmbedding(size=8))
    vs.save_local(tmp_path / "lc")
    vs.store.save(tmp_path / "kl")
    calls = _spy_load_model(monkeypatch, None)
    store = KLStore.load(tmp_path / "kl")
    assert store.saved_encoder == "langchain:DeterministicFakeEmbedding"
    for _ in range(2):  # the failure is kept
        with pytest.raises(
            ValueError, match="LangChain Embeddings, which is not saved with the store and cannot be loaded by name"
        ) as info:
            store._load_saved_encoder()
        assert "hub" not in str(info.value)
    with pytest.raises(ValueError, match="LangChain Embeddings.*pass embeddings= to load_local") as info:
        KLVectorStore.load_local(tmp_path / "lc")
    assert "hub" not in str(info.value)
    assert calls == []  # no lookup at all
    fixed = KLVectorStore.load_local(tmp_path / "lc", DeterministicFakeEmbedding(size=8))
    assert fixed.similarity_search(TEXTS[1], k=1)[0].page_content == TEXTS[1]


def test_a_model_folder_that_is_gone_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, path = _torch_store(tmp_path)
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    calls = _spy_load_model(monkeypatch, None)
    with pytest.raises(
        ValueError, match="saved with, .*enc.?, failed .it names a model folder that no longer exists"
    ) as info:
        KLStore.load(path)._load_saved_encoder()
    assert "hub" not in str(info.value) and calls == []


# ---------------------------------------------------------------- 3. from_store
def test_from_store_names_the_bad_keyword(tmp_path: Path) -> None:
    encoder = make_tiny_encoder(seed=1)
    vs = KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder))
    with pytest.raises(TypeError, match=r"embedding= with a KLStore only.*KLVectorStore\(embedding, store="):
        KLRetriever.from_store(vs, embedding=KLEmbeddings(encoder))
    with pytest.raises(TypeError, match=r"from_store got unexpected keyword argument\(s\) \['foo'\].*min_confidence"):
        KLRetriever.from_store(vs, foo=1)
    with pytest.raises(TypeError, match=r"\['fetch_k'\].*MMR"):
        KLRetriever.from_store(vs, fetch_k=5)
    with pytest.raises(TypeError, match="from_store got vectorstore= besides the store"):
        KLRetriever.from_store(vs, vectorstore=vs)
    with pytest.raises(TypeError, match="takes a KLVectorStore or a KLStore; got DeterministicFakeEmbedding"):
        KLRetriever.from_store(DeterministicFakeEmbedding(size=8))  # type: ignore[arg-type]
    vs.store.save(tmp_path / "kl")  # still taken: embedding= with a KLStore, store= as a keyword
    bare = KLStore.load(tmp_path / "kl")
    assert len(KLRetriever.from_store(bare, embedding=KLEmbeddings(encoder), k=2).invoke("tea")) == 2
    assert len(KLRetriever.from_store(store=vs, k=3).invoke("tea")) == 3


# ---------------------------------------------------------------- 4. per-call keywords
def test_per_call_unknown_keywords_are_named() -> None:
    embeddings = KLEmbeddings(make_tiny_encoder(seed=1))
    dense = KLRetriever.from_texts(TEXTS, embeddings, k=2)
    with pytest.raises(TypeError, match=r"KLRetriever.invoke got unexpected keyword argument\(s\) \['fliter'\]; "):
        dense.invoke("tea", fliter={"n": 1})
    with pytest.raises(TypeError, match=r"it takes k, filter, min_confidence, config; score_threshold: "):
        dense.invoke("tea", score_threshold=0.5)
    with pytest.raises(TypeError, match=r"\['foo'\]"):
        asyncio.run(dense.ainvoke("tea", foo=1))
    with pytest.raises(TypeError, match=r"\['foo'\]"):
        dense.batch(["tea"], foo=1)
    # LangChain's own keywords still work: config, and the deprecated callbacks / tags of get_relevant_documents
    assert len(dense.invoke("tea", config={"tags": ["x"]}, k=1)) == 1
    pytest.importorskip("bm25s")
    fused = KLHybridRetriever.from_texts(TEXTS, embeddings, k=2)
    with pytest.raises(TypeError, match=r"KLHybridRetriever.invoke got .*\['weights'\].*fusion, weight, normalization"):
        fused.invoke("tea", weights=[0.5, 0.5])
    assert len(fused.invoke("tea", fusion="rrf")) == 2


# ---------------------------------------------------------------- 5. as_retriever is lazy
def test_as_retriever_does_not_load_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import langchain

    loads: list[Any] = []

    def fake_default(backend: str | None = None) -> Any:
        loads.append(backend)
        return make_tiny_encoder(seed=2)

    monkeypatch.setattr(langchain, "_load_default_encoder", fake_default)
    store = KLVectorStore()
    retriever = store.as_retriever(search_kwargs={"k": 1})
    assert loads == []
    assert retriever.tags == ["KLVectorStore", "KLEmbeddings"]  # LangChain's tags, unchanged
    store.add_texts(TEXTS)
    assert loads == [None]
    assert retriever.invoke("green tea")[0].page_content == "green tea"
    assert len(loads) == 1


def test_hybrid_retriever_over_a_store_built_with_langchain_embeddings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    KLHybridRetriever.from_texts(TEXTS, DeterministicFakeEmbedding(size=8)).store.save(tmp_path / "hy")
    calls = _spy_load_model(monkeypatch, None)
    retriever = KLHybridRetriever(store=KLHybridStore.load(tmp_path / "hy"))
    with pytest.raises(ValueError, match="LangChain Embeddings, which is not saved.*pass encoder=") as info:
        retriever.invoke("tea")
    assert "hub" not in str(info.value) and calls == []


# ---------------------------------------------------------------- 6. KLVectorStore(store=) over a loaded store
def test_vector_store_over_a_loaded_store_uses_its_saved_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KLVectorStore(store=KLStore.load(path))`` refused a store saved with a model other than the default.

    ``load_local``, the hybrid store and the LlamaIndex store load the saved model; this path now does too, on
    the recorded backend, and never the default model.
    """
    import kl_retrievers.langchain as lc

    folder, path = _torch_store(tmp_path)
    calls = _spy_load_model(monkeypatch, folder)

    def no_default() -> Any:
        raise AssertionError("the default model must not be loaded for a store saved with another model")

    monkeypatch.setattr(lc, "_load_default_encoder", no_default)
    vs = KLVectorStore(store=KLStore.load(path))
    assert calls == []  # nothing loaded at construction
    assert vs.similarity_search("green tea", k=1)[0].page_content == "green tea"
    assert [c.get("backend") for c in calls] == ["torch"]
    assert vs.store.encoder is vs.embeddings.encoder


def test_run_options_given_as_keywords_say_where_they_go(tmp_path: Path) -> None:
    """``invoke(q, tags=[...])`` is refused (the search would not see it); the message points to ``config=``."""
    folder, path = _torch_store(tmp_path)
    retriever = KLRetriever.from_store(KLStore.load(path, encoder=GaussianEncoder.from_pretrained(folder)), k=1)
    with pytest.raises(TypeError, match=r"\['tags'\].*tags: a run option: pass it in config=\{'tags': \.\.\.\}"):
        retriever.invoke("green tea", tags=["x"])
    assert retriever.invoke("green tea", config={"tags": ["x"]})[0].page_content == "green tea"
