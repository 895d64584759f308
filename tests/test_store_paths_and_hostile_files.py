"""Store paths (a folder name that is not UTF-8, a quoted ``~``) and hostile store files.

A FAISS index in a folder whose name is not valid UTF-8 is written and read (memory-mapped too); ``~`` in store,
adapter and command-line output paths is the home folder; a store ``.npy`` header claiming a huge shape, JSON
nested too deep, a named pipe, and hybrid halves or files linked from outside the folder are refused with the
stores' own errors; a hybrid store's saved token pattern that the documentation does not give is warned about;
LangChain ids ``""`` get a fresh id; per-query tables refuse the ids they cannot hold and read back every other.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import fed_if_opened, make_tiny_encoder, random_gaussians, write_tiny_beir
from kl_retrievers import Gaussians, KLStore
from kl_retrievers.evaluation import load_per_query, save_per_query
from kl_retrievers.hub import sha256_file
from kl_retrievers.store import StoreFormatError


def _store(n: int = 5, k: int = 4) -> KLStore:
    store = KLStore()
    store.add(gaussians=random_gaussians(n, k), ids=[f"d{i}" for i in range(n)], texts=[f"doc {i}" for i in range(n)])
    return store


def _query(k: int = 4) -> Gaussians:
    return random_gaussians(1, k, seed=9)


def _fix_checksums(folder: Path) -> None:
    """Make ``config.json``'s file table match the files as they are now (a tampering that checksums miss)."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for name in cfg["files"]:
        cfg["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")


# ------------------------------------------------------------------ FAISS and a folder name that is not UTF-8


@pytest.fixture
def latin1_folder(tmp_path: Path) -> Path:
    """A folder whose name holds the latin-1 byte 0xe9 (``os.fsdecode`` keeps it as the surrogate U+DCE9)."""
    if sys.platform == "win32" or sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
        pytest.skip("needs a POSIX file system with UTF-8 file names")
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/lat_\xe9"))
    try:
        folder.mkdir()
    except OSError as exc:  # a file system that refuses such names
        pytest.skip(f"cannot create a non-UTF-8 folder name here: {exc}")
    return folder


@pytest.mark.parametrize("mmap", [False, True])
def test_store_in_a_folder_whose_name_is_not_utf8_saves_and_loads(latin1_folder: Path, mmap: bool) -> None:
    store = _store()
    target = latin1_folder / "st"
    assert store.save(target) == target
    loaded = KLStore.load(target, mmap=mmap)
    assert len(loaded) == 5
    assert [h.id for h in loaded.search(_query(), k=3)] == [h.id for h in store.search(_query(), k=3)]
    if mmap:  # the index file is mapped (through its /proc/self/fd name), not read into memory
        assert loaded._engine.viewed


def test_mmap_of_a_non_utf8_name_without_proc_fd_names_the_way_out(
    latin1_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _store().save(latin1_folder / "st")
    isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: False if p == "/proc/self/fd" else isdir(p))
    with pytest.raises(StoreFormatError, match=r"cannot memory-map FAISS index .*not valid UTF-8.*mmap=False"):
        KLStore.load(target, mmap=True)
    assert len(KLStore.load(target, mmap=False)) == 5


# ------------------------------------------------------------------ "~" in store and output paths


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``HOME`` is ``tmp_path/home`` and the working folder ``tmp_path/cwd`` (where a literal ``~/`` would go)."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home


def test_tilde_in_store_paths_is_the_home_folder(home: Path) -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    assert _store().save("~/st") == home / "st"
    assert len(KLStore.load("~/st")) == 5
    hybrid = KLHybridStore(fusion="rrf")
    hybrid.add(["tea leaves", "black coffee"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    assert hybrid.save("~/hy") == home / "hy"
    assert KLHybridStore.load("~/hy").ids == ["a", "b"]
    assert not Path("~").exists()  # nothing written under a folder literally named ~


def test_tilde_in_langchain_save_local_is_the_home_folder(home: Path) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    emb = KLEmbeddings(make_tiny_encoder())
    vs = KLVectorStore.from_texts(["tea leaves", "black coffee"], emb, ids=["a", "b"])
    vs.save_local("~/lc")
    assert (home / "lc").is_dir()
    assert sorted(KLVectorStore.load_local("~/lc", emb).store.ids) == ["a", "b"]
    assert not Path("~").exists()


def test_tilde_in_command_line_outputs_is_the_home_folder(home: Path, tmp_path: Path) -> None:
    from kl_retrievers.cli import main

    model_dir = make_tiny_encoder().save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "a", "text": "tea"}) + "\n" + json.dumps({"_id": "b", "text": "sea"}) + "\n")
    assert main(["index", str(corpus), "--out", "~/st", "--model", str(model_dir), "--no-progress"]) == 0
    assert main(["encode", "tea", "--out", "~/g.safetensors", "--model", str(model_dir), "--no-progress"]) == 0
    beir = write_tiny_beir(tmp_path / "beir")
    argv = ["evaluate", str(beir), "--baseline", "bm25", "--no-progress", "--save-run", "~/run.trec"]
    assert main([*argv, "--per-query", "~/pq.json"]) == 0
    assert sorted(p.name for p in home.iterdir()) == ["g.safetensors", "pq.json", "run.trec", "st"]
    assert not Path("~").exists()


# ------------------------------------------------------------------ hostile KLStore files


def _huge_header(path: Path, shape: tuple[int, ...], payload: int) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * payload)


def test_npy_header_claiming_another_shape_is_refused_before_the_array_is_read(tmp_path: Path) -> None:
    folder = _store(n=5, k=4).save(tmp_path / "st")
    _huge_header(folder / "mean.npy", (2**33, 4), 5 * 4 * 4)  # 128 GiB claimed
    _fix_checksums(folder)
    with pytest.raises(StoreFormatError, match=r"mean\.npy has shape \(8589934592, 4\).*config says \(5, 4\)"):
        KLStore.load(folder)


@pytest.mark.parametrize("mmap", [False, True])
def test_npy_header_and_config_claiming_a_huge_count_are_refused_by_the_file_size(tmp_path: Path, mmap: bool) -> None:
    folder = _store(n=5, k=4).save(tmp_path / "st")
    _huge_header(folder / "mean.npy", (2**33, 4), 5 * 4 * 4)
    _fix_checksums(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**cfg, "count": 2**33}), encoding="utf-8")
    with pytest.raises(StoreFormatError, match=r"mean\.npy has 208 bytes, not the \d+ of its header"):
        KLStore.load(folder, mmap=mmap)


def test_truncated_npy_with_matching_checksums_is_refused(tmp_path: Path) -> None:
    folder = _store(n=5, k=4).save(tmp_path / "st")
    (folder / "var.npy").write_bytes((folder / "var.npy").read_bytes()[:-8])
    _fix_checksums(folder)
    with pytest.raises(StoreFormatError, match=r"var\.npy has \d+ bytes, not the \d+ of its header"):
        KLStore.load(folder)


def test_deeply_nested_store_config_is_a_store_format_error(tmp_path: Path) -> None:
    folder = _store().save(tmp_path / "st")
    text = (folder / "config.json").read_text(encoding="utf-8")
    (folder / "config.json").write_text(text.rstrip()[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(StoreFormatError, match="nests JSON arrays or objects too deeply"):
        KLStore.load(folder)


# ------------------------------------------------------------------ hostile hybrid store files


@pytest.fixture
def hybrid_folder(tmp_path: Path) -> Path:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    store = KLHybridStore(fusion="rrf")
    store.add(["tea leaves", "black coffee", "green tea"], gaussians=random_gaussians(3, 4), ids=["a", "b", "c"])
    return store.save(tmp_path / "hy")


@pytest.mark.parametrize("name", ["hybrid.json", "bm25/vocab.index.json"])
def test_deeply_nested_hybrid_json_is_a_hybrid_format_error(hybrid_folder: Path, name: str) -> None:
    from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

    (hybrid_folder / name).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(HybridFormatError, match=f"{name.split('/')[-1]} nests JSON arrays or objects too deeply"):
        KLHybridStore.load(hybrid_folder, verify_checksums=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_as_bm25_ids_is_refused_unread(hybrid_folder: Path) -> None:
    from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

    ids = hybrid_folder / "bm25" / "ids.json"
    content = ids.read_bytes()
    ids.unlink()
    os.mkfifo(ids)
    with fed_if_opened(ids, content), pytest.raises(HybridFormatError, match=r"ids\.json is not a regular file"):
        KLHybridStore.load(hybrid_folder, verify_checksums=False)


@pytest.mark.parametrize("rel", ["kl", "bm25", "bm25/data.csc.index.npy"])
def test_hybrid_half_or_file_linked_from_outside_is_refused(hybrid_folder: Path, tmp_path: Path, rel: str) -> None:
    from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

    inside, outside = hybrid_folder / rel, tmp_path / "outside"
    inside.rename(outside)
    inside.symlink_to(outside)
    with pytest.raises(HybridFormatError, match="outside the store folder"):
        KLHybridStore.load(hybrid_folder)


def test_hybrid_saved_token_pattern_not_in_the_docs_is_refused_unless_named(tmp_path: Path) -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import BM25_TOKEN_PATTERN, HybridFormatError, KLHybridStore

    marks = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me"))
    documented = [BM25_TOKEN_PATTERN, r"[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]|\w+", rf"\w[\w{marks}]*"]
    for i, pattern in enumerate([*documented, r"(\w+\s?)+!"]):
        store = KLHybridStore(fusion="rrf", token_pattern=pattern)
        store.add(["tea leaves", "black coffee"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
        folder = store.save(tmp_path / f"hy{i}")
        if pattern in documented:
            KLHybridStore.load(folder)
        else:
            with pytest.raises(HybridFormatError, match=r"not one docs/hybrid\.md gives") as info:
                KLHybridStore.load(folder)
            assert r"(\\w+\\s?)+!" in str(info.value)
            KLHybridStore.load(folder, token_pattern=pattern)  # named by the caller: trusted


# ------------------------------------------------------------------ LangChain: an empty id is no id


def test_langchain_add_texts_gives_an_empty_id_a_fresh_one() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLVectorStore

    vs = KLVectorStore(make_tiny_encoder())
    first = vs.add_texts(["first text"], ids=[""])
    second = vs.add_texts(["second text"], ids=[""])
    assert "" not in first + second and first != second
    assert sorted(vs.store.ids) == sorted(first + second)


# ------------------------------------------------------------------ per-query tables


@pytest.mark.parametrize(
    ("suffix", "qid"),
    [(".tsv", "q\t1"), (".tsv", "q\n1"), (".tsv", "q\r1"), (".csv", "q\r1"), (".csv", "q\r\n1")],
)
def test_per_query_table_refuses_an_id_it_cannot_hold(tmp_path: Path, suffix: str, qid: str) -> None:
    path = tmp_path / f"pq{suffix}"
    with pytest.raises(ValueError, match=re.escape(f"query id {qid!r} contains")):
        save_per_query(path, {qid: {"ndcg@10": 0.5}, "q2": {"ndcg@10": 1.0}})
    assert not path.exists()


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
@pytest.mark.parametrize("qid", ["q\u20281", "q\x1c1", "q\x851", "q\x0b1", "q\x0c1", "q,1", '"q"'])
def test_per_query_table_reads_back_every_id_it_writes(tmp_path: Path, suffix: str, qid: str) -> None:
    path = tmp_path / f"pq{suffix}"
    save_per_query(path, {qid: {"ndcg@10": 0.5}, "q2": {"ndcg@10": 1.0}})
    assert load_per_query(path)[0] == {qid: {"ndcg@10": 0.5}, "q2": {"ndcg@10": 1.0}}


def test_per_query_csv_holds_a_line_feed_and_tsv_reads_windows_line_ends(tmp_path: Path) -> None:
    save_per_query(tmp_path / "pq.csv", {"q\n1": {"ndcg@10": 0.5}})
    assert load_per_query(tmp_path / "pq.csv")[0] == {"q\n1": {"ndcg@10": 0.5}}
    (tmp_path / "w.tsv").write_bytes(b"query_id\tndcg@10\r\nq1\t0.5\r\n")
    assert load_per_query(tmp_path / "w.tsv")[0] == {"q1": {"ndcg@10": 0.5}}


def test_bm25_npy_header_claiming_a_huge_array_is_refused_unread(hybrid_folder: Path) -> None:
    from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

    path = hybrid_folder / "bm25" / "data.csc.index.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**37,)})
        f.write(b"\0" * 64)
    with pytest.raises(HybridFormatError, match=r"data\.csc\.index\.npy has \d+ bytes, not the \d+ of its header"):
        KLHybridStore.load(hybrid_folder, verify_checksums=False)
