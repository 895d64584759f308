"""The adapters' loaders pass ``verify_checksums`` through to ``KLStore.load`` (stop 41).

A large store loaded with ``mmap=True`` is read lazily only when the SHA-256 check is skipped; the
LangChain and LlamaIndex loaders had no way to skip it. A config recording another checksum for an
intact file shows the switch: refused by default, loaded with ``verify_checksums=False``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers.store._format import MEAN, StoreFormatError

TEXTS = ["apples grow on trees", "the sea is deep and blue", "rockets fly to the moon"]


def _wrong_checksum(folder: Path) -> None:
    """Record another SHA-256 for ``mean.npy`` in the store's config (the file itself is intact)."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["files"][MEAN]["sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")


def _store_folder(root: Path) -> Path:
    found = [p.parent for p in root.rglob(MEAN)]
    assert len(found) == 1, found
    return found[0]


def test_langchain_load_local_verify_checksums(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    emb = KLEmbeddings(encoder=make_tiny_encoder())
    vs = KLVectorStore.from_texts(TEXTS, emb)
    vs.save_local(tmp_path / "lc")
    _wrong_checksum(_store_folder(tmp_path / "lc"))
    with pytest.raises(StoreFormatError, match="sha256|checksum|SHA-256"):
        KLVectorStore.load_local(tmp_path / "lc", emb)
    loaded = KLVectorStore.load_local(tmp_path / "lc", emb, mmap=True, verify_checksums=False)
    assert len(loaded.similarity_search("sea", k=3)) == 3


def test_llama_index_loaders_verify_checksums(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode

    from kl_retrievers.llama_index import KLVectorStore

    vs = KLVectorStore(encoder=make_tiny_encoder())
    vs.add([TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS)])
    persist_dir = tmp_path / "li"
    manifest = persist_dir / "default__vector_store.json"
    vs.persist(str(manifest))
    _wrong_checksum(_store_folder(persist_dir))
    with pytest.raises(StoreFormatError, match="sha256|checksum|SHA-256"):
        KLVectorStore.from_persist_path(manifest)
    assert len(KLVectorStore.from_persist_path(manifest, mmap=True, verify_checksums=False).kl_store) == 3
    assert len(KLVectorStore.from_persist_dir(persist_dir, verify_checksums=False).kl_store) == 3
    with pytest.raises(StoreFormatError):
        KLVectorStore.from_persist_dir(persist_dir)


def test_a_store_saved_again_without_its_encoder_keeps_the_saved_model_name(tmp_path: Path) -> None:
    from kl_retrievers import KLStore

    store = KLStore(encoder=make_tiny_encoder())
    store.encoder.name_or_path = "some/model"  # type: ignore[union-attr]
    store.add(TEXTS, ids=["a", "b", "c"])
    store.save(tmp_path / "one")
    loaded = KLStore.load(tmp_path / "one")
    assert loaded.encoder is None and loaded.saved_encoder == "some/model"
    loaded.save(tmp_path / "two")  # before any text search loaded a model
    assert KLStore.load(tmp_path / "two").saved_encoder == "some/model"
    first = json.loads((tmp_path / "one" / "config.json").read_text(encoding="utf-8"))["encoder"]
    again = json.loads((tmp_path / "two" / "config.json").read_text(encoding="utf-8"))["encoder"]
    assert again == first and first["name_or_path"] == "some/model" and first["config"]  # the whole record
