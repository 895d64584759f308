"""A persist folder switched from a KLVectorStore over a KLStore to one over a MilvusKLStore holds no stale store.

The store over Milvus persists no nodes (they are in the collection), so persisting it where a store over a
``KLStore`` was persisted left that manifest, store folder and calibrator in place: a later load of the folder
(``KLVectorStore.from_persist_dir``, ``StorageContext.from_defaults(persist_dir=...)``) picked up the old nodes.
Persisting over Milvus now removes them, the manifest first; anything else there is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from llama_index.core import StorageContext
from llama_index.core.schema import TextNode

from conftest import max_score_calibrator, random_gaussians
from kl_retrievers import kl_document_vectors
from kl_retrievers.llama_index import KLVectorStore
from kl_retrievers.milvus import MilvusKLStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

K = 4
MANIFEST = "default__vector_store.json"
PARTS = {MANIFEST, "default__vector_store.klstore", "default__vector_store.calibrator.json"}


def _nodes(prefix: str, n: int, seed: int) -> list[TextNode]:
    vectors = kl_document_vectors(random_gaussians(n, K, seed=seed))
    return [
        TextNode(id_=f"{prefix}{i}", text=f"{prefix} {i}", embedding=[float(x) for x in v])
        for i, v in enumerate(vectors)
    ]


def test_persisting_over_milvus_removes_the_klstore_store_persisted_in_the_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    persist_dir = tmp_path / "storage"
    local = KLVectorStore(calibrator=max_score_calibrator())
    local.add(_nodes("old", 3, seed=1))
    StorageContext.from_defaults(vector_store=local).persist(persist_dir=str(persist_dir))
    assert {p.name for p in persist_dir.iterdir()} >= PARTS
    assert len(KLVectorStore.from_persist_dir(persist_dir).kl_store) == 3

    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="nodes", index_type="flat")
    try:
        over_milvus = KLVectorStore(store=milvus)
        over_milvus.add(_nodes("new", 2, seed=2))
        with caplog.at_level(logging.INFO, logger="kl_retrievers.llama_index"):
            StorageContext.from_defaults(vector_store=over_milvus).persist(persist_dir=str(persist_dir))
        removal = [r for r in caplog.records if "removed the KLStore-backed store" in r.getMessage()]
        assert len(removal) == 1 and removal[0].levelno == logging.WARNING, caplog.text  # it deletes user data
        assert "nothing written" not in caplog.text
        left = {p.name for p in persist_dir.iterdir()}
        assert not left & PARTS and not [n for n in left if "klstore" in n], left
        assert "docstore.json" in left and "index_store.json" in left  # LlamaIndex's own files are written
        with pytest.raises(FileNotFoundError):  # the old nodes are not loaded in place of the Milvus ones
            KLVectorStore.from_persist_dir(persist_dir)
        loaded = StorageContext.from_defaults(persist_dir=str(persist_dir))
        assert "default" not in loaded.vector_stores  # no such file, as after a persist over any server's store
        # reconnecting to the collection, as the docs say, serves the nodes persisted over Milvus
        back = StorageContext.from_defaults(persist_dir=str(persist_dir), vector_store=KLVectorStore(store=milvus))
        assert sorted(n.node_id for n in back.vector_store.get_nodes()) == ["new0", "new1"]
        over_milvus.persist(str(persist_dir / MANIFEST))  # again: nothing left to remove
        assert {p.name for p in persist_dir.iterdir()} == left
    finally:
        milvus.close()


def test_a_file_at_the_persist_path_that_is_no_store_manifest_is_kept(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST
    path.write_text('{"embedding_dict": {}, "text_id_to_ref_doc_id": {}, "metadata_dict": {}}')  # SimpleVectorStore's
    (tmp_path / "default__vector_store.klstore").mkdir()  # not named by a manifest: not the adapter's to remove
    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="nodes", index_type="flat")
    try:
        KLVectorStore(store=milvus).persist(str(path))
    finally:
        milvus.close()
    assert path.is_file() and (tmp_path / "default__vector_store.klstore").is_dir()


def test_a_persist_through_a_link_removes_the_parts_where_it_points(tmp_path: Path) -> None:
    (tmp_path / "v3").mkdir()
    (tmp_path / "current").symlink_to("v3")
    local = KLVectorStore(calibrator=max_score_calibrator())
    local.add(_nodes("old", 2, seed=1))
    local.persist(str(tmp_path / "v3" / MANIFEST))
    (tmp_path / "v3" / "notes.txt").write_text("mine")
    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="nodes", index_type="flat")
    try:
        KLVectorStore(store=milvus).persist(str(tmp_path / "current" / MANIFEST))
    finally:
        milvus.close()
    assert [p.name for p in (tmp_path / "v3").iterdir()] == ["notes.txt"]
    assert (tmp_path / "current").is_symlink()
