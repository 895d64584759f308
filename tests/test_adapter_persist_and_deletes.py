"""LangChain / LlamaIndex adapters: saves that are one swap, loads of one copy, atomic deletes, clearer errors.

* ``save_local`` / ``persist`` swap in only the store folder, with a copy of the manifest (and its
  ``save_id`` / ``persist_id``) inside it, then write the manifest beside it: a save that fails part-way
  leaves a whole copy, a load that a save interrupts reads one copy (never one save's documents with
  another's settings), and the folder's other entries (named indexes, the user's files) are never touched.
* LlamaIndex ``delete_nodes(filters=)`` / ``delete(ref_doc_id)`` choose and delete in one step of the store.
* ``from_defaults(documents=<str>)``, a callable filter written for ``Document`` objects, and copying
  ``KLEmbeddings`` give clear errors or work.
"""

from __future__ import annotations

import copy
import json
import pickle
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from llama_index.core import Document as LIDocument
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

from conftest import max_score_calibrator, random_gaussians
from kl_retrievers import GaussianEncoder, Gaussians, _adapters, kl_document_vectors
from kl_retrievers import langchain as lc
from kl_retrievers import llama_index as li
from kl_retrievers.store import KLStore


def _kl_store(tag: str, n: int = 6) -> KLStore:
    store = KLStore()
    store.add([f"{tag} {i}" for i in range(n)], gaussians=random_gaussians(n, 4), ids=[f"{tag}{i}" for i in range(n)])
    return store


def _lc_store(tag: str) -> lc.KLVectorStore:
    return lc.KLVectorStore(store=_kl_store(tag), relevance="exp" if tag == "A" else "inverse")


def _li_store(tag: str) -> li.KLVectorStore:
    calibrator = max_score_calibrator() if tag == "B" else None
    return li.KLVectorStore(_kl_store(tag), relevance="exp" if tag == "A" else "inverse", calibrator=calibrator)


def _tags(ids: list[str]) -> set[str]:
    return {i[0] for i in ids}


# ------------------------------------------------------------------ 1. LangChain save_local / load_local
def test_langchain_save_that_fails_part_way_leaves_the_previous_copy_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "db"
    _lc_store("A").save_local(folder)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(lc, "write_manifest", fail)
    monkeypatch.setattr(_adapters, "write_manifest", fail)  # the copy inside klstore/, written before its swap
    with pytest.raises(OSError, match="disk full"):
        _lc_store("B").save_local(folder)
    monkeypatch.undo()
    loaded = lc.KLVectorStore.load_local(folder)
    assert _tags(loaded.store.ids) == {"A"}  # not B's documents under A's manifest
    assert loaded.relevance == "exp"


def test_langchain_load_interrupted_by_a_save_reads_one_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "db"
    _lc_store("A").save_local(folder)
    other, original = _lc_store("B"), KLStore._load_once
    calls: list[int] = []

    def load_once(*args: Any, **kwargs: Any) -> Any:
        if not calls:  # another save lands after the manifest was read, before the store part is
            other.save_local(folder)
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(KLStore, "_load_once", load_once)
    loaded = lc.KLVectorStore.load_local(folder)
    assert (_tags(loaded.store.ids), loaded.relevance) == ({"B"}, "inverse")


def test_langchain_default_save_keeps_named_indexes_and_other_entries(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    _lc_store("B").save_local(folder, index_name="news")
    _lc_store("A").save_local(folder)
    (folder / "notes.txt").write_text("mine")
    _lc_store("A").save_local(folder)  # swaps only klstore/: the rest stays where it is
    assert (folder / "notes.txt").read_text() == "mine"
    assert _tags(lc.KLVectorStore.load_local(folder).store.ids) == {"A"}
    news = lc.KLVectorStore.load_local(folder, index_name="news")
    assert (_tags(news.store.ids), news.relevance) == ({"B"}, "inverse")
    with pytest.raises(ValueError, match="not written by KLVectorStore.save_local"):
        (tmp_path / "foreign").mkdir()
        (tmp_path / "foreign" / "x.txt").write_text("x")
        _lc_store("A").save_local(tmp_path / "foreign")


def test_langchain_save_never_moves_or_changes_the_folders_other_entries(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    _lc_store("A").save_local(folder)
    _lc_store("B").save_local(folder, index_name="news")
    secret = folder / "secret.env"
    secret.write_text("key")
    secret.chmod(0o600)
    for name in (".env.old-2024", ".cache.tmp-1", ".klstore.tmp-zz"):  # dotfiles, some like leftover names
        (folder / name).write_text("x")
    (folder / "sub").mkdir()
    before = {p.name: (p.stat().st_ino, p.stat().st_mode) for p in folder.iterdir() if p.name != "klstore"}
    _lc_store("B").save_local(folder)
    after = {p.name: (p.stat().st_ino, p.stat().st_mode) for p in folder.iterdir() if p.name != "klstore"}
    assert before.keys() <= after.keys()
    assert {n: after[n] for n in before if n != "langchain.json"} == {
        n: v for n, v in before.items() if n != "langchain.json"
    }
    assert secret.stat().st_mode & 0o777 == 0o600
    assert _tags(lc.KLVectorStore.load_local(folder).store.ids) == {"B"}
    assert _tags(lc.KLVectorStore.load_local(folder, index_name="news").store.ids) == {"B"}


def test_langchain_save_keeps_a_symlinked_folder_and_works_from_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, link = tmp_path / "real", tmp_path / "db"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    _lc_store("A").save_local(link)
    _lc_store("A").save_local(link)
    assert link.is_symlink() and _tags(lc.KLVectorStore.load_local(real).store.ids) == {"A"}
    (link / "logs").mkdir()
    monkeypatch.chdir(link / "logs")
    _lc_store("B").save_local(link)
    assert link.is_symlink() and (real / "logs").is_dir() and Path.cwd().samefile(real / "logs")
    assert _tags(lc.KLVectorStore.load_local(link).store.ids) == {"B"}


def test_langchain_save_that_fails_before_the_outer_manifest_loads_the_new_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "db"
    _lc_store("A").save_local(folder)
    (folder / "notes.txt").write_text("mine")
    original = lc.write_manifest

    def fail_outer(path: Any, manifest: Any) -> Any:
        if Path(path).name == "langchain.json":
            raise OSError("disk full")
        return original(path, manifest)

    monkeypatch.setattr(lc, "write_manifest", fail_outer)
    with pytest.raises(OSError, match="disk full"):
        _lc_store("B").save_local(folder)
    monkeypatch.undo()
    assert (folder / "notes.txt").read_text() == "mine"
    loaded = lc.KLVectorStore.load_local(folder)  # B's store with B's settings (its copy), not A's manifest
    assert (_tags(loaded.store.ids), loaded.relevance) == ({"B"}, "inverse")
    (folder / "langchain.json").unlink()  # a first save that failed there: the copy is enough
    assert lc.KLVectorStore.load_local(folder).relevance == "inverse"
    _lc_store("A").save_local(folder)  # and the folder is taken as save_local's again
    assert lc.KLVectorStore.load_local(folder).relevance == "exp"


def test_langchain_hand_edited_manifest_applies_only_with_its_save_id(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    _lc_store("A").save_local(folder)
    path = folder / "langchain.json"
    manifest = json.loads(path.read_text())
    manifest["relevance"] = "inverse"
    path.write_text(json.dumps(manifest))
    assert lc.KLVectorStore.load_local(folder).relevance == "inverse"  # save_id kept: the edit applies
    del manifest["save_id"]
    path.write_text(json.dumps(manifest))
    assert lc.KLVectorStore.load_local(folder).relevance == "exp"  # the copy saved with the store applies


def test_langchain_folders_of_earlier_releases_load_and_new_ones_stay_readable(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    _lc_store("B").save_local(folder)
    assert (folder / "klstore" / "langchain_manifest.json").is_file()
    assert _tags(KLStore.load(folder / "klstore").ids) == {"B"}  # the copy does not disturb a KLStore load
    (folder / "klstore" / "langchain_manifest.json").unlink()  # as an earlier release saved it
    manifest = json.loads((folder / "langchain.json").read_text())
    del manifest["save_id"]
    manifest["relevance"] = "exp"
    (folder / "langchain.json").write_text(json.dumps(manifest))
    loaded = lc.KLVectorStore.load_local(folder)
    assert (_tags(loaded.store.ids), loaded.relevance) == ({"B"}, "exp")
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(_lc_store("A").serialize_to_bytes())).namelist()
    assert not any(n.endswith("langchain_manifest.json") for n in names)  # earlier releases refuse the entry
    assert lc.KLVectorStore.deserialize_from_bytes(_lc_store("A").serialize_to_bytes()).relevance == "exp"


# ------------------------------------------------------------------ 1. LlamaIndex persist / from_persist_path
def test_llama_index_persist_that_fails_part_way_leaves_the_previous_copy_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "default__vector_store.json"
    _li_store("A").persist(str(path))

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(li.adapters, "write_manifest", fail)
    with pytest.raises(OSError, match="disk full"):
        _li_store("B").persist(str(path))
    monkeypatch.undo()
    loaded = li.KLVectorStore.from_persist_dir(tmp_path)
    assert (_tags(loaded.kl_store.ids), loaded.relevance, loaded.calibrator) == ({"A"}, "exp", None)


def test_llama_index_persist_that_fails_writing_the_manifest_beside_loads_one_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "default__vector_store.json"
    _li_store("A").persist(str(path))
    original = li.adapters.write_manifest

    def fail_beside(target: Any, manifest: Any) -> Any:
        if Path(target) == path:
            raise OSError("disk full")
        return original(target, manifest)

    monkeypatch.setattr(li.adapters, "write_manifest", fail_beside)
    with pytest.raises(OSError, match="disk full"):
        _li_store("B").persist(str(path))
    monkeypatch.undo()
    loaded = li.KLVectorStore.from_persist_dir(tmp_path)  # B's store folder is in place: B's settings with it
    assert (_tags(loaded.kl_store.ids), loaded.relevance) == ({"B"}, "inverse")
    assert loaded.calibrator is not None


def test_llama_index_load_interrupted_by_a_persist_reads_one_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "default__vector_store.json"
    _li_store("A").persist(str(path))
    other, original = _li_store("B"), KLStore.load.__func__  # type: ignore[attr-defined]
    calls: list[int] = []

    def load(cls: type, *args: Any, **kwargs: Any) -> Any:
        if not calls:  # another persist lands after the manifest was read, before the store is
            other.persist(str(path))
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(KLStore, "load", classmethod(load))
    loaded = li.KLVectorStore.from_persist_dir(tmp_path)
    assert (_tags(loaded.kl_store.ids), loaded.relevance) == ({"B"}, "inverse")
    assert loaded.calibrator is not None  # B's calibrator, with B's nodes


def test_llama_index_folders_persisted_before_the_inner_copy_still_load(tmp_path: Path) -> None:
    path = tmp_path / "default__vector_store.json"
    _li_store("B").persist(str(path))
    store_dir = tmp_path / json.loads(path.read_text())["store"]
    (store_dir / "llama_index_manifest.json").unlink()  # what an earlier release wrote: no copy inside
    (store_dir / "calibrator.json").unlink()
    loaded = li.KLVectorStore.from_persist_dir(tmp_path)
    assert (_tags(loaded.kl_store.ids), loaded.relevance) == ({"B"}, "inverse")
    assert loaded.calibrator is not None  # from name.calibrator.json beside the folder


# ------------------------------------------------------------------ 2. LlamaIndex deletes in one step
def _node(nid: str, seed: int, ref_doc: str | None = None, **metadata: Any) -> TextNode:
    g = Gaussians(np.random.default_rng(seed).normal(size=(1, 4)), np.ones((1, 4)))
    relations = {} if ref_doc is None else {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=ref_doc)}
    return TextNode(
        text=nid,
        id_=nid,
        metadata=metadata,
        relationships=relations,
        embedding=[float(x) for x in kl_document_vectors(g)[0]],
    )


class _UpsertDuringChoice:
    """Wrap the function a delete's choice calls: on its first call, another thread upserts ``node``.

    The choice waits up to 0.5 s for that upsert: a delete that holds the store's lock while it chooses
    makes the upsert wait until it is done, and one that chooses from a copy sees the upsert land first
    (and deletes the upserted node on its stale copy).
    """

    def __init__(self, vs: li.KLVectorStore, node: TextNode, wrapped: Any) -> None:
        self.vs, self.node, self.wrapped = vs, node, wrapped
        self.thread: threading.Thread | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.thread is None:
            self.thread = threading.Thread(target=self.vs.add, args=([self.node],))
            self.thread.start()
            self.thread.join(0.5)
        return self.wrapped(*args, **kwargs)

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(10)


def _count_copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    original, calls = KLStore.get_by_ids, []

    def get_by_ids(self: KLStore, ids: Any) -> Any:
        calls.append(len(ids))
        return original(self, ids)

    monkeypatch.setattr(KLStore, "get_by_ids", get_by_ids)
    return calls


def test_delete_nodes_by_filter_keeps_a_node_upserted_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    vs = li.KLVectorStore()
    vs.add([_node("n", 1, status="stale"), _node("m", 2, status="stale"), _node("k", 3, status="fresh")])
    upserts: list[_UpsertDuringChoice] = []
    original = li.metadata_filters_to_predicate

    def to_predicate(filters: Any) -> Any:
        upserts.append(_UpsertDuringChoice(vs, _node("n", 1, status="fresh"), original(filters)))
        return upserts[-1]

    monkeypatch.setattr(li, "metadata_filters_to_predicate", to_predicate)
    copies = _count_copies(monkeypatch)
    vs.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="status", value="stale")]))
    upserts[0].join()
    monkeypatch.undo()
    assert sorted(vs.kl_store.ids) == ["k", "n"]  # n, upserted as fresh before or after the delete, is kept
    assert [d.metadata["status"] for d in vs.kl_store.get_by_ids(["n"])] == ["fresh"]
    assert copies == []  # no document was copied out to choose what to delete
    vs.delete_nodes(node_ids=["n", "k", "unknown"], filters=MetadataFilters(filters=[]))
    assert vs.kl_store.ids == []


def test_delete_ref_doc_keeps_a_node_moved_to_another_document_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    vs = li.KLVectorStore()
    vs.add([_node("n", 1, "d1"), _node("m", 2, "d1"), _node("k", 3, "d2")])
    upsert = _UpsertDuringChoice(vs, _node("n", 1, "d2"), li._ref_doc_id)
    monkeypatch.setattr(li, "_ref_doc_id", upsert)
    copies = _count_copies(monkeypatch)
    vs.delete("d1")
    upsert.join()
    monkeypatch.undo()
    assert sorted(vs.kl_store.ids) == ["k", "n"]  # n, moved to d2 before or after the delete, is kept
    assert copies == []  # no document was copied out to choose what to delete
    vs.clear()
    assert vs.kl_store.ids == []


# ------------------------------------------------------------------ 3. docstring examples show what they print
def test_docstring_examples_show_current_outputs() -> None:
    assert "-0.3735..." in (lc.__doc__ or "")
    assert "{'neg_kl': -0.362, 'query_uncertainty': 0.0, 'confidence': 0.997}" in (lc.KLRetriever.__doc__ or "")
    assert "(0.726, -0.32)" in (li.__doc__ or "")
    assert "[0.77, 0.45]" in (li.KLEmbedding.similarity.__doc__ or "")


# ------------------------------------------------------------------ 4. from_defaults(documents=<not Documents>)
@pytest.mark.parametrize("documents", ["hello", ["a text"]])
@pytest.mark.parametrize("cls", [li.KLRetriever, li.KLHybridRetriever])
def test_from_defaults_refuses_plain_strings_as_documents(
    tiny_encoder: GaussianEncoder, cls: Any, documents: Any
) -> None:
    with pytest.raises(TypeError, match=r"llama_index Document objects \(e\.g\. .*Document\(text=\.\.\.\)"):
        cls.from_defaults(documents=documents, encoder=tiny_encoder)
    retriever = cls.from_defaults(documents=[LIDocument(text="the cat sat")], encoder=tiny_encoder)
    assert retriever.retrieve("cat")
    with pytest.raises(TypeError, match=r"got a single Document .*documents=\[document\]"):
        cls.from_defaults(documents=LIDocument(text="the cat sat"), encoder=tiny_encoder)


# ------------------------------------------------------------------ 5. a callable filter written for Documents
def test_callable_filter_written_for_documents_says_it_gets_metadata(tiny_encoder: GaussianEncoder) -> None:
    store = lc.KLVectorStore.from_texts(
        ["the cat sat", "tea and bread"], lc.KLEmbeddings(tiny_encoder), metadatas=[{"y": 2021}, {"y": 2019}]
    )
    hits = store.similarity_search("cat", k=2, filter=lambda m: m["y"] > 2020)
    assert [d.page_content for d in hits] == ["the cat sat"]
    with pytest.raises(TypeError, match=r"metadata mapping.*lambda m: m\[") as info:
        store.similarity_search("cat", k=2, filter=lambda d: d.metadata["y"] > 2020)
    assert isinstance(info.value.__cause__, AttributeError)
    retriever = store.as_retriever(search_kwargs={"filter": lambda d: d.page_content == "tea"})
    with pytest.raises(TypeError, match="metadata mapping"):
        retriever.invoke("cat")
    with pytest.raises(AttributeError, match="nothing_here"):  # other AttributeErrors are the user's own
        store.similarity_search("cat", k=2, filter=lambda m: m.nothing_here)
    other = types.SimpleNamespace()
    with pytest.raises(AttributeError, match="metadata"):  # the same name looked up on another object
        store.similarity_search("cat", k=2, filter=lambda m: other.metadata)

    def by_hand(metadata: Any) -> bool:
        raise AttributeError("page_content is not set")

    with pytest.raises(AttributeError, match="page_content is not set"):
        store.similarity_search("cat", k=2, filter=by_hand)


# ------------------------------------------------------------------ 6. copying KLEmbeddings
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_kl_embeddings_deepcopy_and_pickle(tiny_encoder: GaussianEncoder, how: str) -> None:
    emb = lc.KLEmbeddings(tiny_encoder)
    copied = copy.deepcopy(emb) if how == "deepcopy" else pickle.loads(pickle.dumps(emb))
    assert copied.embed_query("the cat") == pytest.approx(emb.embed_query("the cat"))
    assert copied._lock is not emb._lock and copied._lock.acquire(blocking=False)
    li_emb = li.KLEmbedding(tiny_encoder)
    li_copied = copy.deepcopy(li_emb) if how == "deepcopy" else pickle.loads(pickle.dumps(li_emb))
    assert li_copied.get_query_embedding("the cat") == pytest.approx(li_emb.get_query_embedding("the cat"))


# ------------------------------------------------------------------ save_local beside a save's leftovers
def test_langchain_save_beside_a_killed_saves_temporary_copy(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    leftover = folder / ".klstore.tmp-0123abcd"  # what a first save killed part-way leaves
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    _lc_store("A").save_local(folder)
    assert _tags(lc.KLVectorStore.load_local(folder).store.ids) == {"A"}
    named = tmp_path / "db2" / "news" / ".langchain.json.tmp-00ff"  # the same inside a named index
    named.parent.mkdir(parents=True)
    named.write_text("{")
    _lc_store("A").save_local(tmp_path / "db2")
    assert _tags(lc.KLVectorStore.load_local(tmp_path / "db2").store.ids) == {"A"}
    for foreign in (".notes.tmp-0123abcd", "notes.txt"):  # another name stays foreign
        other = tmp_path / foreign.strip(".")
        other.mkdir()
        (other / foreign).write_text("x")
        with pytest.raises(ValueError, match="not written by KLVectorStore.save_local"):
            _lc_store("A").save_local(other)
    (tmp_path / "sub" / "news").mkdir(parents=True)
    (tmp_path / "sub" / "news" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not written by KLVectorStore.save_local"):
        _lc_store("A").save_local(tmp_path / "sub")


@pytest.mark.parametrize("second", ["index", "news"])
def test_langchain_save_while_another_first_save_of_the_folder_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str
) -> None:
    folder = tmp_path / "db"
    first, other = _lc_store("A"), _lc_store("B")
    save = first.store.save
    seen: list[list[str]] = []

    def save_then_save_the_other(path: Path, *args: Any, **kwargs: Any) -> Any:
        # the first save's temporary copy is in the folder, its klstore/ and langchain.json are not yet
        seen.append(sorted(p.name for p in folder.iterdir()))
        other.save_local(folder, index_name=second)
        return save(path, *args, **kwargs)

    monkeypatch.setattr(first.store, "save", save_then_save_the_other)
    first.save_local(folder)
    assert seen and seen[0][0].startswith(".klstore.tmp-")
    assert not any(p.name.startswith(".klstore.") for p in folder.iterdir())
    if second == "news":
        assert _tags(lc.KLVectorStore.load_local(folder, index_name="news").store.ids) == {"B"}
    assert _tags(lc.KLVectorStore.load_local(folder).store.ids) == {"A"}


def test_langchain_default_save_beside_a_named_index_being_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "db"
    named = _lc_store("B")
    save = named.store.save

    def save_then_save_the_default(path: Path, *args: Any, **kwargs: Any) -> Any:
        _lc_store("A").save_local(folder)  # news/ holds only the named save's temporary copy now
        return save(path, *args, **kwargs)

    monkeypatch.setattr(named.store, "save", save_then_save_the_default)
    named.save_local(folder, index_name="news")
    assert _tags(lc.KLVectorStore.load_local(folder).store.ids) == {"A"}
    assert _tags(lc.KLVectorStore.load_local(folder, index_name="news").store.ids) == {"B"}


def test_langchain_default_save_beside_a_named_index_that_failed_before_its_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "db"
    write = lc.write_manifest

    def fail_outer(path: Path, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "langchain.json":
            raise OSError("disk full (simulated)")
        return write(path, *args, **kwargs)

    monkeypatch.setattr(lc, "write_manifest", fail_outer)
    with pytest.raises(OSError, match="disk full"):
        _lc_store("B").save_local(folder, index_name="news")
    monkeypatch.setattr(lc, "write_manifest", write)
    assert sorted(p.name for p in (folder / "news").iterdir()) == ["klstore"]
    (folder / "empty").mkdir()  # an empty sub-folder does not make the folder foreign either
    _lc_store("A").save_local(folder)
    assert _tags(lc.KLVectorStore.load_local(folder).store.ids) == {"A"}
    assert _tags(lc.KLVectorStore.load_local(folder, index_name="news").store.ids) == {"B"}


# ------------------------------------------------------------------ deserialize_from_bytes trusts only bundled names
def test_bytes_whose_store_part_records_a_model_path_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import zipfile

    import kl_retrievers.pretrained as pretrained

    loads: list[Any] = []
    monkeypatch.setattr(pretrained, "load_model", lambda name, *a, **k: loads.append(name))
    evil = str(tmp_path / "evil-model")
    data = _lc_store("A").serialize_to_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "langchain.json":
                assert json.loads(body)["encoder"] is None  # the manifest names no encoder ...
            if info.filename == "klstore/config.json":  # ... but the store part records one
                config = json.loads(body)
                config["encoder"] = {"name_or_path": evil, "config": None}
                body = json.dumps(config).encode()
            dst.writestr(info, body)
    with pytest.raises(ValueError, match=r"\(klstore/config\.json, field 'encoder\.name_or_path'\)") as err:
        lc.KLVectorStore.deserialize_from_bytes(out.getvalue())
    assert repr(evil) in str(err.value) and "embeddings=" in str(err.value)
    assert loads == []
    assert len(lc.KLVectorStore.deserialize_from_bytes(data).store) == 6  # the untouched bytes still load


def test_a_numpy_str_model_name_is_shown_as_a_plain_str() -> None:
    with pytest.raises(TypeError, match=r"got the model name or folder 'm' ") as err:
        lc.KLVectorStore(np.str_("m"))
    assert "np.str_" not in str(err.value)
