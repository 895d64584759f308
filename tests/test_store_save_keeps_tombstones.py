"""A ``KLStore`` save keeps its tombstones (deleted or replaced rows not compacted yet) as they are.

Saving used to compact first, which for an HNSW or IVF index re-adds every live row (HNSW rebuilds its
graph): at 100,000 documents a save after one delete took minutes, under the write lock. Below the
store's ``compact_threshold`` a save now writes the tombstones (``tombstones.npy``, ``format_version``
3) and a load restores them, so the loaded store searches exactly as the saved one; past it, a save
compacts first, as a write would. A store without tombstones is written as before.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import HYBRID_TEXTS, make_tiny_encoder, random_gaussians
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hub import sha256_file
from kl_retrievers.store import KLStore, StoreFormatError, _format

pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # tests/conftest.py

DIM = 8
N = 1200
TYPES = [
    ("flat", {}),
    ("hnsw", {"hnsw_m": 8, "ef_construction": 40}),
    ("ivf", {"nlist": 16, "nprobe": 4}),
    ("ivf", {"nlist": 16, "nprobe": 4, "compression": "sq8"}),
    ("hnsw", {"hnsw_m": 8, "compression": "pq", "pq_m": 2, "pq_nbits": 4}),
    ("ivf", {"nlist": 16, "nprobe": 4, "compression": "pq", "pq_m": 2, "pq_nbits": 4}),
]
DELETED = [f"d{i}" for i in range(0, 300, 7)]
UPSERTED = ["d1", "d2"]
FILTER = {"i": {"$gte": 100}}


def _docs() -> Gaussians:
    return random_gaussians(N, DIM, seed=3, dtype=np.float32)


def _queries() -> Gaussians:
    return random_gaussians(6, DIM, seed=4)


def _tombstoned(index_type: str, kw: dict[str, Any]) -> KLStore:
    """A built store of N documents, some deleted and two upserted (their old rows are tombstones too)."""
    docs = _docs()
    store = KLStore(index_type=index_type, **kw)  # type: ignore[arg-type]
    store.add(
        gaussians=docs,
        ids=[f"d{i}" for i in range(N)],
        texts=[f"text {i}" for i in range(N)],
        metadatas=[{"i": i} for i in range(N)],
    )
    assert store.is_built
    store.delete(DELETED)
    store.add(gaussians=docs[[1, 2]], ids=UPSERTED, texts=["new 1", "new 2"], metadatas=[{"i": 1001}, {"i": 1002}])
    return store


def _answers(store: KLStore) -> tuple[Any, ...]:
    """What a user sees: results with and without a filter, size, ids, and lookups of deleted / upserted ids."""
    q = _queries()
    return (
        store.search_batch(q, k=10),
        store.search_batch(q, k=10, filter=FILTER),
        len(store),
        store.ids,
        store.get_by_ids(DELETED[:3]),
        store.get_by_ids(UPSERTED),
        DELETED[0] in store,
    )


@pytest.mark.parametrize(("index_type", "kw"), TYPES)
def test_a_save_keeps_the_tombstones_and_a_load_restores_them(
    index_type: str, kw: dict[str, Any], tmp_path: Path
) -> None:
    store = _tombstoned(index_type, kw)
    rows, dead = store._table.n_rows, len(DELETED) + len(UPSERTED)
    index, compactions = store._index, store.compaction_count
    before = _answers(store)
    folder = store.save(tmp_path / "s")
    # nothing compacted or rebuilt: the same index, every entry still there
    assert store.compaction_count == compactions and store._index is index and index.ntotal == rows
    assert _answers(store) == before
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 3 and config["tombstones"] == dead and config["count"] == rows
    assert "tombstones.npy" in config["files"]
    saved = np.load(folder / "tombstones.npy", allow_pickle=False)
    assert saved.dtype == np.int64 and saved.tolist() == np.flatnonzero(~store._table.alive).tolist()
    # a tombstone keeps its id, not its text or metadata
    lines = [json.loads(line) for line in (folder / "documents.jsonl").read_text().splitlines()]
    assert len(lines) == rows and not any(line["text"] == f"text {DELETED[1][1:]}" for line in lines)
    assert [lines[r]["text"] for r in saved.tolist()] == [None] * dead
    for mmap in (False, True):
        loaded = KLStore.load(folder, mmap=mmap)
        assert _answers(loaded) == before
        assert loaded._table.n_rows == rows and loaded._table.dead() == dead
        assert loaded.get_by_ids(UPSERTED)[0].text == "new 1"
        # a further delete and save / load round keeps answering alike
        loaded.delete(["d500"])
        again = KLStore.load(loaded.save(tmp_path / f"again{mmap}"), mmap=mmap)
        assert _answers(again) == _answers(loaded) and "d500" not in again and len(again) == len(store) - 1
        # compacting drops them: the folder is written as before (no tombstones)
        again.compact()
        compacted = again.save(tmp_path / f"compacted{mmap}")
        config = json.loads((compacted / "config.json").read_text())
        assert "tombstones" not in config and not (compacted / "tombstones.npy").exists()
        assert config["format_version"] in (1, 2)
        assert KLStore.load(compacted).search_batch(_queries(), k=10) == again.search_batch(_queries(), k=10)


def test_a_store_without_tombstones_is_written_as_before(tmp_path: Path) -> None:
    store = KLStore(index_type="hnsw", hnsw_m=8)
    store.add(gaussians=_docs(), ids=[f"d{i}" for i in range(N)])
    config = json.loads((store.save(tmp_path / "s") / "config.json").read_text())
    assert "tombstones" not in config and sorted(config["files"]) == sorted(_format.STORE_FILES[:4])
    assert config["format_version"] == _format.format_version_for(store._engine.config()) < 3


def test_a_save_past_the_threshold_compacts_first(tmp_path: Path) -> None:
    store = _tombstoned("hnsw", {"hnsw_m": 8})
    store.compact_threshold = 0.01  # lowered after the deletes: the share of tombstones is past it
    compactions = store.compaction_count
    folder = store.save(tmp_path / "s")
    assert store.compaction_count == compactions + 1 and store._index.ntotal == len(store)
    assert "tombstones" not in json.loads((folder / "config.json").read_text())


def test_an_older_reader_refuses_a_folder_with_tombstones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _tombstoned("flat", {}).save(tmp_path / "s")
    monkeypatch.setattr(_format, "FORMAT_VERSION", 2)  # a release reading versions 1 and 2
    with pytest.raises(StoreFormatError, match="format_version 3"):
        KLStore.load(folder)


def _edit_config(folder: Path, **fields: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def _rewrite_tombstones(folder: Path, rows: np.ndarray) -> None:
    np.save(folder / "tombstones.npy", rows, allow_pickle=False)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    p = folder / "tombstones.npy"
    config["files"]["tombstones.npy"] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    path.write_text(json.dumps(config))


def test_damaged_tombstones_are_refused(tmp_path: Path) -> None:
    folder = _tombstoned("flat", {}).save(tmp_path / "s")
    config = json.loads((folder / "config.json").read_text())
    dead, count = config["tombstones"], config["count"]
    good = np.load(folder / "tombstones.npy")
    _edit_config(folder, format_version=2)
    with pytest.raises(StoreFormatError, match="field 'tombstones' is"):
        KLStore.load(folder)
    _edit_config(folder, format_version=3, tombstones=0)
    with pytest.raises(StoreFormatError, match="lists tombstones.npy but field 'tombstones' is 0"):
        KLStore.load(folder)
    _edit_config(folder, tombstones=dead)
    bad = good.copy()
    bad[-1] = count
    _rewrite_tombstones(folder, bad)
    with pytest.raises(StoreFormatError, match="distinct row numbers"):
        KLStore.load(folder)
    _rewrite_tombstones(folder, good.astype(np.int32))
    with pytest.raises(StoreFormatError, match="int64"):
        KLStore.load(folder)
    _rewrite_tombstones(folder, good[1:] if dead > 1 else good)  # one row fewer than the config says
    with pytest.raises(StoreFormatError, match=r"config says \(\d+,\) int64"):
        KLStore.load(folder)
    _rewrite_tombstones(folder, good)
    assert len(KLStore.load(folder)) == N - len(DELETED)


def test_an_upserted_id_without_its_tombstone_is_a_duplicate(tmp_path: Path) -> None:
    folder = _tombstoned("flat", {}).save(tmp_path / "s")
    rows = np.load(folder / "tombstones.npy")
    _rewrite_tombstones(folder, rows[rows != 1])  # d1's old row (replaced by the upsert) made live again
    _edit_config(folder, tombstones=int(rows.size) - 1)
    with pytest.raises(StoreFormatError, match="duplicate id 'd1'"):
        KLStore.load(folder)


def test_a_hybrid_store_keeps_the_tombstones_of_its_kl_half(tmp_path: Path) -> None:
    from kl_retrievers.hybrid import KLHybridStore

    docs = _docs()[:200]
    store = KLHybridStore(fusion="rrf")
    store.add([f"word{i} text" for i in range(200)], ids=[f"d{i}" for i in range(200)], gaussians=docs)
    store.delete(["d3", "d4"])
    q = _queries()[:2]
    before = store.search_batch(["word5 text", "word9"], k=5, query_gaussians=q)
    loaded = KLHybridStore.load(store.save(tmp_path / "h"))
    assert loaded.kl._table.dead() == store.kl._table.dead() == 2
    after = loaded.search_batch(["word5 text", "word9"], k=5, query_gaussians=q)
    assert [[(h.id, h.score) for h in r] for r in after] == [[(h.id, h.score) for h in r] for r in before]
    assert "d3" not in loaded and len(loaded) == 198


@pytest.mark.parametrize(("index_type", "kw"), TYPES[:3])
def test_a_delete_and_a_save_leave_a_memory_mapped_index_mapped(
    index_type: str, kw: dict[str, Any], tmp_path: Path
) -> None:
    """Neither a tombstone nor a save with nothing to compact changes the index: no copy of it into memory."""
    folder = _tombstoned(index_type, kw).save(tmp_path / "s")
    loaded = KLStore.load(folder, mmap=True)
    index = loaded._index
    assert loaded._engine.viewed
    loaded.delete(["d500"])
    assert loaded._engine.viewed and loaded._index is index and index.ntotal == loaded._table.n_rows
    before = _answers(loaded)
    other = loaded.save(tmp_path / "other")
    assert loaded._engine.viewed and loaded._index is index and _answers(loaded) == before
    assert (other / "index.faiss").read_bytes() == (folder / "index.faiss").read_bytes()
    assert loaded.save(folder) == folder  # over the folder it maps (written from the mapping, then swapped)
    assert loaded._engine.viewed and _answers(loaded) == before
    assert _answers(KLStore.load(folder)) == _answers(KLStore.load(other, mmap=True)) == before
    # a write that changes the index copies it first: an upsert, and a compaction
    loaded.add(gaussians=_docs()[[3]], ids=["d3"])
    assert not loaded._engine.viewed and loaded._index.ntotal == loaded._table.n_rows
    mapped, in_memory = KLStore.load(folder, mmap=True), KLStore.load(folder)
    mapped.compact()
    in_memory.compact()
    assert not mapped._engine.viewed and mapped._index.ntotal == len(mapped) == len(before[3])
    assert _answers(mapped) == _answers(in_memory)


def test_damaged_tombstones_are_named_with_the_row_and_the_path(tmp_path: Path) -> None:
    folder = _tombstoned("flat", {}).save(tmp_path / "s")
    good = np.load(folder / "tombstones.npy")
    count = json.loads((folder / "config.json").read_text())["count"]
    path = str(folder / "tombstones.npy")
    cases = [
        (np.concatenate([good[:-1], [count + 5]]), f"entry {good.size - 1} is {count + 5}"),
        (np.concatenate([[-1], good[1:]]), "entry 0 is -1"),
        (good[[1, 0, *range(2, good.size)]], f"entries 0 and 1 are {good[1]} and {good[0]}"),
        (good[[0, 0, *range(2, good.size)]], f"entries 0 and 1 are {good[0]} and {good[0]}"),
        (good.reshape(1, -1), r"has shape \(1, \d+\)"),
    ]
    for rows, named in cases:
        _rewrite_tombstones(folder, rows.astype(np.int64))
        with pytest.raises(StoreFormatError, match=named) as err:
            KLStore.load(folder)
        assert str(err.value).startswith(path)


def test_the_load_log_counts_live_documents_and_tombstones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(100, DIM, seed=5), ids=[f"d{i}" for i in range(100)])
    store.delete([f"d{i}" for i in range(20)])
    folder = store.save(tmp_path / "s")
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        assert len(KLStore.load(folder)) == 80
    assert f"loaded 80 documents (20 tombstones) from {folder}" in caplog.messages


def test_a_langchain_store_keeps_its_tombstones_in_a_folder_and_in_bytes(tmp_path: Path) -> None:
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    embeddings = KLEmbeddings(make_tiny_encoder(seed=1))
    ids = [f"d{i}" for i in range(len(HYBRID_TEXTS))]
    store = KLVectorStore.from_texts(HYBRID_TEXTS, embeddings, [{"n": i} for i in range(len(ids))], ids=ids)
    store.delete(["d1"])
    store.add_texts([HYBRID_TEXTS[2] + " changed"], metadatas=[{"n": 99}], ids=["d2"])
    assert store.store._table.dead() == 2

    def answers(vs: KLVectorStore) -> list[Any]:
        hits = [vs.similarity_search_with_score(q, k=4) for q in ("cat", "tea and bread")]
        return [[(d.id, d.page_content, d.metadata, score) for d, score in r] for r in hits]

    before = answers(store)
    folder = store.save_local(tmp_path / "lc")
    assert (folder / "klstore" / "tombstones.npy").is_file()
    assert HYBRID_TEXTS[1] not in (folder / "klstore" / "documents.jsonl").read_text()
    loaded = KLVectorStore.load_local(folder, embeddings)
    assert answers(loaded) == before and loaded.store._table.dead() == 2 and "d1" not in loaded.store
    data = store.serialize_to_bytes()
    assert "klstore/tombstones.npy" in zipfile.ZipFile(io.BytesIO(data)).namelist()
    restored = KLVectorStore.deserialize_from_bytes(data, embeddings)
    assert answers(restored) == before and restored.store._table.dead() == 2
    assert restored.get_by_ids(["d1", "d2"])[0].page_content == HYBRID_TEXTS[2] + " changed"
