"""Persisting a KLVectorStore over Milvus removes the earlier KLStore-backed store its manifest names, nothing else.

The removal took the store folder and calibrator derived from ``persist_path`` (``<name>.klstore``), not those the
manifest at that path names: a manifest copied over another (naming ``a.klstore``) had the other persist's folder
deleted and its own left for a load. Now the names come from the manifest, checked as ``from_persist_path`` checks
them (bare names), and a folder goes only if ``persist`` wrote it (its copy of the manifest has the same
``persist_id``, or it holds a ``KLStore``'s ``config.json``), a link never; the calibrator only when named.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from llama_index.core.schema import TextNode

from conftest import max_score_calibrator, random_gaussians
from kl_retrievers import kl_document_vectors
from kl_retrievers.llama_index import KLVectorStore
from kl_retrievers.milvus import MilvusKLStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

MANIFEST = "default__vector_store.json"


def _nodes(prefix: str) -> list[TextNode]:
    vectors = kl_document_vectors(random_gaussians(3, 4, seed=1))
    return [TextNode(id_=f"{prefix}{i}", text="t", embedding=[float(x) for x in v]) for i, v in enumerate(vectors)]


def _persist_local(path: Path, prefix: str, *, calibrated: bool = False) -> None:
    store = KLVectorStore(calibrator=max_score_calibrator() if calibrated else None)
    store.add(_nodes(prefix))
    store.persist(str(path))


@pytest.fixture
def over_milvus(tmp_path: Path) -> Iterator[KLVectorStore]:
    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="flat")
    try:
        yield KLVectorStore(store=milvus)
    finally:
        milvus.close()


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_copied_manifest_removes_the_store_it_names_not_the_one_beside_it(
    tmp_path: Path, over_milvus: KLVectorStore, caplog: pytest.LogCaptureFixture
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    _persist_local(storage / "a.json", "a")
    _persist_local(storage / MANIFEST, "b")
    shutil.copy(storage / "a.json", storage / MANIFEST)  # the manifest at the path now names a.klstore
    with caplog.at_level(logging.INFO, logger="kl_retrievers.llama_index"):
        over_milvus.persist(str(storage / MANIFEST))
    assert _names(storage) == {"a.json", "default__vector_store.klstore"}  # no .tmp-* copy left either
    removal = [r for r in caplog.records if "removed the KLStore-backed store" in r.getMessage()]
    assert len(removal) == 1 and removal[0].levelno == logging.WARNING, caplog.text
    assert "a.klstore" in removal[0].getMessage() and "nothing written" not in caplog.text


@pytest.mark.parametrize("named", ["../outside", "..", "notes", "link.klstore"])
def test_a_store_folder_that_persist_did_not_write_is_kept(
    tmp_path: Path, over_milvus: KLVectorStore, named: str
) -> None:
    storage = tmp_path / "storage"
    _persist_local(storage / MANIFEST, "b", calibrated=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text(json.dumps({"format": "kl-retrievers/klstore"}))
    (storage / "notes").mkdir()
    (storage / "notes" / "mine.txt").write_text("mine")
    (storage / "link.klstore").symlink_to(storage / "default__vector_store.klstore")
    manifest = json.loads((storage / MANIFEST).read_text())
    (storage / MANIFEST).write_text(json.dumps({**manifest, "store": named, "calibrator": "notes"}))
    over_milvus.persist(str(storage / MANIFEST))
    # the manifest goes, so no load finds the old nodes; nothing it names that persist did not write is touched
    assert _names(storage) == {
        "default__vector_store.klstore",
        "default__vector_store.calibrator.json",
        "notes",
        "link.klstore",
    }
    assert (storage / "notes" / "mine.txt").is_file() and (tmp_path / "outside" / "config.json").is_file()
    assert (storage / "default__vector_store.klstore" / "config.json").is_file()


def test_the_named_calibrator_and_store_are_removed(tmp_path: Path, over_milvus: KLVectorStore) -> None:
    storage = tmp_path / "storage"
    _persist_local(storage / MANIFEST, "b", calibrated=True)
    (storage / "docstore.json").write_text("{}")
    over_milvus.persist(str(storage / MANIFEST))
    assert _names(storage) == {"docstore.json"}
