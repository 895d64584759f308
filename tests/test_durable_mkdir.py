"""Every save path that creates folders makes each new folder durable in its parent.

:func:`kl_retrievers._io.make_dirs` creates a folder and its missing parents, outermost first, and syncs
(``fsync``) each created folder's parent once it holds the new entry; a parent that another process
creates meanwhile is synced too. LangChain's ``save_local``, LlamaIndex's ``persist`` and
``encode_corpus`` create their folders with it, so :func:`~kl_retrievers._io.atomic_dir` finding them
existing afterwards loses nothing: a crash after the save cannot lose the path to the saved copy.
"""

from __future__ import annotations

import json
import os
import pathlib
from pathlib import Path
from typing import Any

import pytest

from conftest import folders_not_synced, make_tiny_encoder, random_gaussians, record_folder_syncs
from kl_retrievers import _io
from kl_retrievers.store import KLStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name fds")


def _kl_store() -> KLStore:
    store = KLStore()
    store.add(["a", "b"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    return store


# ------------------------------------------------------------------ make_dirs itself
def test_make_dirs_syncs_each_created_folder_into_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path.resolve()
    synced = record_folder_syncs(monkeypatch)
    created = _io.make_dirs(root / "new" / "sub" / "leaf")
    assert created == [root / "new", root / "new" / "sub", root / "new" / "sub" / "leaf"]
    assert (root / "new" / "sub" / "leaf").is_dir()
    assert folders_not_synced(synced, root, "new", "sub", "leaf") == []


def test_make_dirs_syncs_nothing_when_the_folder_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "old").mkdir()
    synced = record_folder_syncs(monkeypatch)
    assert _io.make_dirs(tmp_path / "old") == []
    assert synced == []


def test_make_dirs_names_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match=r"blocker is a file, but it must be a folder"):
        _io.make_dirs(tmp_path / "blocker" / "new")
    with pytest.raises(NotADirectoryError, match=r"blocker is a file, but it must be a folder"):
        _io.make_dirs(tmp_path / "blocker")
    assert (tmp_path / "blocker").read_text(encoding="utf-8") == "x"


# ------------------------------------------------------------------ a folder made meanwhile by another process
def _made_meanwhile(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Another process creates ``folder`` (without syncing its parent) just before this one's mkdir of it."""
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == folder and not self.exists():
            os.mkdir(self)
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)


def test_atomic_dir_syncs_a_parent_folder_made_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path.resolve()
    _made_meanwhile(monkeypatch, root / "new")
    synced = record_folder_syncs(monkeypatch)
    with _io.atomic_dir(root / "new" / "h") as tmp:
        (tmp / "a.txt").write_text("x", encoding="utf-8")
    assert (root / "new" / "h" / "a.txt").read_text(encoding="utf-8") == "x"
    assert folders_not_synced(synced, root, "new", "h") == []


def test_make_dirs_syncs_a_folder_made_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path.resolve()
    _made_meanwhile(monkeypatch, root / "new" / "sub")
    synced = record_folder_syncs(monkeypatch)
    assert _io.make_dirs(root / "new" / "sub") == [root / "new"]
    assert folders_not_synced(synced, root, "new", "sub") == []


# ------------------------------------------------------------------ the save paths that create folders
def test_langchain_save_local_syncs_the_folders_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers import langchain as lc

    root = tmp_path.resolve()
    synced = record_folder_syncs(monkeypatch)
    lc.KLVectorStore(store=_kl_store()).save_local(root / "new" / "sub")
    assert (root / "new" / "sub" / "langchain.json").is_file()
    assert folders_not_synced(synced, root, "new", "sub", "klstore") == []


def test_llama_index_persist_syncs_the_folders_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers import llama_index as li

    root = tmp_path.resolve()
    synced = record_folder_syncs(monkeypatch)
    li.KLVectorStore(_kl_store()).persist(str(root / "new" / "sub" / "default__vector_store.json"))
    assert (root / "new" / "sub" / "default__vector_store.json").is_file()
    assert folders_not_synced(synced, root, "new", "sub", "default__vector_store.klstore") == []


def test_encode_corpus_syncs_the_output_folders_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.sharded import encode_corpus

    model = tmp_path / "tiny-model"
    make_tiny_encoder().save_pretrained(model)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(3)))
    root = tmp_path.resolve()
    synced = record_folder_syncs(monkeypatch)
    encode_corpus(corpus, root / "new" / "out", model=str(model), shard_size=2, show_progress_bar=False)
    assert (root / "new" / "out" / "manifest.json").is_file()
    assert folders_not_synced(synced, root, "new", "out", "manifest.json") == []


# ------------------------------------------------------------------ the FAQ on saving onto a symbolic link
def test_faq_says_folder_saves_follow_a_link_and_file_writes_refuse_one(tmp_path: Path) -> None:
    from kl_retrievers.evaluation import write_trec_run

    faq = " ".join((Path(__file__).resolve().parents[1] / "docs" / "faq.md").read_text(encoding="utf-8").split())
    assert "onto a symbolic link follows it" in faq
    assert "A single file is never written over a symbolic link (dangling or not), a named pipe, a device" in faq
    # what the FAQ says, checked: a folder save replaces the folder the link points to and keeps the link,
    # a file write refuses it
    (tmp_path / "v3").mkdir()
    (tmp_path / "current").symlink_to("v3")
    _kl_store().save(tmp_path / "current")
    assert (tmp_path / "current").is_symlink() and (tmp_path / "v3" / "config.json").is_file()
    (tmp_path / "real.trec").write_text("old", encoding="utf-8")
    (tmp_path / "run.trec").symlink_to("real.trec")
    with pytest.raises(ValueError, match=r"run\.trec: it is a symbolic link to 'real\.trec'"):
        write_trec_run(tmp_path / "run.trec", {"q": {"d": 1.0}})
    assert (tmp_path / "real.trec").read_text(encoding="utf-8") == "old"


def test_make_dirs_names_a_dangling_link_in_the_way(tmp_path: Path) -> None:
    from kl_retrievers._io import make_dirs

    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="is a dangling symbolic link, but it must be a folder"):
        make_dirs(tmp_path / "dang" / "sub")
