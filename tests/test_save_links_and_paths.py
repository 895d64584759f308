"""Saves onto symbolic links, '~' paths that cannot be expanded, permissions kept by a re-save, no home folder.

Only the saves of a folder the user names (a store, ``save_gaussians``, LangChain's ``save_local``) follow a
link at their target; a cache entry, a checkpoint or a download replaces a link planted there and never
deletes the folder it points to. ``~nosuchuser`` and ``~`` without a home folder are kept as given (no
``RuntimeError``). A read-only store re-saved by its owner leaves no copy behind; root re-saving another
user's private store keeps it private and the user's. Full training and a local BEIR copy need no home folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import heads_cached_train_argv, make_train_world, random_gaussians
from kl_retrievers import _io
from kl_retrievers.store import KLStore

NO_USER = "~no-such-user-kl-retrievers"


def _kl_store() -> KLStore:
    store = KLStore()
    store.add(["a", "b"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    return store


# ------------------------------------------------------------------ 1. only user-facing saves follow a link
def test_a_link_planted_at_a_cache_entry_is_replaced_and_its_folder_kept(tmp_path: Path) -> None:
    from kl_retrievers.encoding_cache import EncodingCache

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work", encoding="utf-8")
    cache = EncodingCache(tmp_path / "shared_cache")
    entry = cache.entry_dir("documents", {"model": "m"})
    entry.parent.mkdir(parents=True)
    entry.symlink_to(victim)  # planted by another user of the shared cache
    cache.save("documents", {"model": "m"}, ["a"], {"emb": np.zeros((1, 2), np.float32)})
    assert sorted(os.listdir(victim)) == ["thesis.tex"]
    assert entry.is_dir() and not entry.is_symlink()


def test_atomic_dir_replaces_a_link_unless_asked_to_follow_it(tmp_path: Path) -> None:
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "old.txt").write_text("v3", encoding="utf-8")
    (tmp_path / "current").symlink_to("v3")
    with _io.atomic_dir(tmp_path / "current") as tmp:
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert not (tmp_path / "current").is_symlink() and (tmp_path / "current" / "new.txt").is_file()
    assert sorted(os.listdir(tmp_path / "v3")) == ["old.txt"]
    (tmp_path / "current2").symlink_to("v3")
    with _io.atomic_dir(tmp_path / "current2", follow_link=True) as tmp:
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert (tmp_path / "current2").is_symlink() and sorted(os.listdir(tmp_path / "v3")) == ["new.txt"]


def test_atomic_dir_replaces_a_dangling_link_at_a_cache_entry(tmp_path: Path) -> None:
    (tmp_path / "entry").symlink_to(tmp_path / "missing" / "deeper")
    with _io.atomic_dir(tmp_path / "entry") as tmp:
        (tmp / "a.txt").write_text("a", encoding="utf-8")
    assert (tmp_path / "entry" / "a.txt").is_file() and not (tmp_path / "entry").is_symlink()
    assert not (tmp_path / "missing").exists()


def test_store_and_gaussians_saves_follow_a_link(tmp_path: Path) -> None:
    (tmp_path / "v3").mkdir()
    (tmp_path / "current").symlink_to("v3")
    _kl_store().save(tmp_path / "current")
    assert (tmp_path / "current").is_symlink() and (tmp_path / "v3" / "config.json").is_file()
    (tmp_path / "g3").mkdir()
    (tmp_path / "g").symlink_to("g3")
    _io.save_gaussians(tmp_path / "g", random_gaussians(2, 3), ids=["a", "b"])
    assert (tmp_path / "g").is_symlink() and (tmp_path / "g3" / "mean.npy").is_file()


# ------------------------------------------------------------------ 7. a dangling link as a save target
def test_a_dangling_link_is_saved_through_as_a_new_folder(tmp_path: Path) -> None:
    from kl_retrievers.langchain import KLVectorStore

    (tmp_path / "d1").symlink_to("nothere")
    _kl_store().save(tmp_path / "d1")  # no overwrite needed: a new path
    assert (tmp_path / "d1").is_symlink() and (tmp_path / "nothere" / "config.json").is_file()
    (tmp_path / "lc").symlink_to("lc_target")
    KLVectorStore(store=_kl_store()).save_local(tmp_path / "lc")
    assert (tmp_path / "lc").is_symlink() and (tmp_path / "lc_target" / "langchain.json").is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_dangling_link_into_missing_folders_is_refused(tmp_path: Path, overwrite: bool) -> None:
    from kl_retrievers.langchain import KLVectorStore

    (tmp_path / "d2").symlink_to("missing/deeper/x")
    with pytest.raises(ValueError, match=r"d2: it is a dangling symbolic link to .*missing/deeper/x, whose folder"):
        _kl_store().save(tmp_path / "d2", overwrite=overwrite)
    with pytest.raises(ValueError, match=r"d2: it is a dangling symbolic link"):
        KLVectorStore(store=_kl_store()).save_local(tmp_path / "d2")
    assert not (tmp_path / "missing").exists()


def test_a_dangling_link_is_named_where_the_save_does_not_follow_links(tmp_path: Path) -> None:
    (tmp_path / "d").symlink_to("nothere")
    with pytest.raises(ValueError, match=r"it is a dangling symbolic link \(to nothere\); pass overwrite=True"):
        _io.check_replace_target(tmp_path / "d", is_ours=lambda p: False, what="a model")
    _io.check_replace_target(tmp_path / "d", is_ours=lambda p: False, what="a model", overwrite=True)


# ------------------------------------------------------------------ 2. '~' that cannot be expanded
def test_tilde_of_no_user_is_a_plain_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.cli import _user_path
    from kl_retrievers.hybrid import AdaptiveParams, KLHybridStore
    from kl_retrievers.langchain import KLVectorStore

    monkeypatch.chdir(tmp_path)
    assert _kl_store().save(NO_USER) == Path(NO_USER)
    assert len(KLStore.load(NO_USER)) == 2 and (tmp_path / NO_USER / "config.json").is_file()
    assert _user_path(NO_USER + "/x") == Path(NO_USER) / "x"
    for load in (KLHybridStore.load, KLVectorStore.load_local, AdaptiveParams.load):
        with pytest.raises(FileNotFoundError):
            load(NO_USER + "/nothing")


def test_tilde_without_a_home_folder_is_a_plain_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_home: None
) -> None:
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.langchain import KLVectorStore

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="~/x"):
        KLStore.load("~/x")
    for load in (KLHybridStore.load, KLVectorStore.load_local):
        with pytest.raises(FileNotFoundError):
            load("~/x")
    _kl_store().save("~/st")
    assert (tmp_path / "~" / "st" / "config.json").is_file()


# ------------------------------------------------------------------ 3. a read-only store re-saved by its owner
def _drop_dac_override() -> None:
    """Drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH / CAP_FOWNER from this (forked) process: root then meets
    permission bits as their owner would (``capset``)."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for bit in (1, 2, 3):  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
        data[0].effective &= ~(1 << bit)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="permission bits and capset as on Linux")
def test_a_read_only_store_resaved_by_its_owner_leaves_no_copy(tmp_path: Path) -> None:
    store = _kl_store()
    target = tmp_path / "parent" / "ro"
    store.save(target)
    for path in target.iterdir():
        os.chmod(path, 0o444)
    os.chmod(target, 0o555)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            if os.geteuid() == 0:
                _drop_dac_override()
            for _ in range(3):
                store.save(target, overwrite=True)
            code = 0 if sorted(os.listdir(target.parent)) == ["ro"] else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    leftovers = sorted(os.listdir(target.parent))
    os.chmod(target, 0o755)
    for here, dirs, _ in os.walk(target.parent):
        for name in dirs:
            os.chmod(os.path.join(here, name), 0o755)
    assert os.waitstatus_to_exitcode(status) == 0, leftovers
    assert leftovers == ["ro"]
    assert stat.S_IMODE(os.stat(target / "config.json").st_mode) == 0o444


# ------------------------------------------------------------------ 4. root re-saving another user's store
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root saves over another user's files")
def test_root_resaving_another_users_private_store_keeps_it_private(tmp_path: Path) -> None:
    store = _kl_store()
    target = tmp_path / "alice"
    store.save(target)
    for path in (target, *target.iterdir()):
        os.chown(path, 1000, 1000)
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    old = os.umask(0o022)
    try:
        store.save(target, overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in target.iterdir()} == {0o600}
    # ... and leaves it the user's: they can still list and read it (root-owned 0700, they could not)
    assert {(os.stat(p).st_uid, os.stat(p).st_gid) for p in (target, *target.iterdir())} == {(1000, 1000)}
    os.chmod(tmp_path, 0o711)  # the user may pass through tmp_path (its parents are reached through a descriptor)
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pid = os.fork()
        if pid == 0:  # the child, as the user: exit 0 when every file of the store can be read
            code = 1
            try:
                os.setgroups([])
                os.setgid(1000)
                os.setuid(1000)
                folder = os.open("alice", os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
                for name in os.listdir(folder):
                    os.close(os.open(name, os.O_RDONLY, dir_fd=folder))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(parent)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------------ 5. no home folder
def test_full_training_needs_no_home_folder(tmp_path: Path, no_home: None) -> None:
    from kl_retrievers.cli import main

    world = make_train_world(tmp_path)
    argv = heads_cached_train_argv(world, tmp_path / "out", "--steps", "1")
    argv.remove("--heads-only-cached")  # full training: no features cache
    at = argv.index("--cache-dir")
    del argv[at : at + 2]
    assert main(argv) == 0
    assert (tmp_path / "out" / "config.json").is_file()


def _tiny_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n", encoding="utf-8")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "y"}) + "\n", encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    return folder


def test_fetch_beir_uses_a_local_copy_without_a_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_home: None
) -> None:
    from kl_retrievers.datasets import LOCAL_COPY_ENV, fetch_beir

    local = _tiny_beir(tmp_path / "local" / "scifact")
    assert fetch_beir("scifact", local_copy=local) == local
    monkeypatch.setenv(LOCAL_COPY_ENV, str(tmp_path / "local"))
    assert fetch_beir("scifact") == local
    monkeypatch.delenv(LOCAL_COPY_ENV)
    with pytest.raises(_io.CacheFolderError, match="datasets cache"):
        fetch_beir("scifact")


# ------------------------------------------------------------------ 6. the documented token patterns
def test_marks_patterns_of_another_unicode_version_and_a_non_raw_cjk_pattern_are_documented() -> None:
    from kl_retrievers.hybrid import _documented_pattern

    marks = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me"))
    older = marks.replace("\u0300", "")  # an older Unicode: fewer marks
    newer = marks + "\U000e01f0"  # a newer one: a mark this Python does not know yet (Cn here)
    assert unicodedata.category("\U000e01f0") == "Cn"
    cjk = "[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]|"
    for chars in (marks, older, newer):
        assert _documented_pattern(rf"\w[\w{chars}]*")
        assert _documented_pattern(cjk + rf"\w[\w{chars}]*")
    assert _documented_pattern("[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]|\\w+")  # non-raw: the characters
    assert _documented_pattern(r"[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]|\w+")
    assert not _documented_pattern(rf"\w[\w{marks}a]*")  # a letter in the class: not the documented one
    assert not _documented_pattern(r"\w[\w]-]*")
    assert not _documented_pattern(r"[\\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]|\w+")  # an escaped backslash


def test_index_out_tilde_of_no_user_is_a_folder_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import make_tiny_encoder
    from kl_retrievers.cli import main

    model = make_tiny_encoder().save_pretrained(tmp_path / "model")
    (tmp_path / "c.jsonl").write_text(json.dumps({"_id": "a", "text": "hello world"}) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["index", "c.jsonl", "--out", "~draft", "--model", str(model), "--no-progress"]) == 0
    assert len(KLStore.load(tmp_path / "~draft")) == 1
