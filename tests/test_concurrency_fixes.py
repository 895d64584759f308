"""Loading a KLStore while another save replaces the same folder: one save's copy, never a mix or a false error.

``KLStore.save`` swaps a new folder into place (``atomic_dir``) while ``KLStore.load`` reads the
files one by one by path, so a load that overlaps a save used to read files of both saves: a
spurious "does not match its SHA-256 checksum (corrupted?)" / "does not match index.faiss" error,
or silently a store mixing two saves. These tests make a save land in the middle of a load
deterministically (a wrapped read that saves first) instead of racing threads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import random_gaussians
from kl_retrievers._io import LOAD_ATTEMPTS, load_unchanged
from kl_retrievers.store import KLStore, StoreFormatError, _format

DIM = 4


def _store(version: int, count: int = 20) -> KLStore:
    store = KLStore(dim=DIM)
    ids = [f"d{i}" for i in range(count)]
    store.add(
        [f"text {i} of save {version}" for i in range(count)],
        gaussians=random_gaussians(count, DIM, seed=version),
        ids=ids,
        metadatas=[{"v": version} for _ in ids],
    )
    return store


def _assert_same(loaded: KLStore, saved: KLStore) -> None:
    assert loaded.ids == saved.ids
    got, want = loaded.get_by_ids(saved.ids), saved.get_by_ids(saved.ids)
    assert [(d.text, d.metadata) for d in got] == [(d.text, d.metadata) for d in want]
    np.testing.assert_array_equal(loaded.get_gaussians(saved.ids).mean, saved.get_gaussians(saved.ids).mean)
    np.testing.assert_array_equal(loaded.get_gaussians(saved.ids).var, saved.get_gaussians(saved.ids).var)


def _save_during(monkeypatch: pytest.MonkeyPatch, name: str, save: Callable[[], Any], times: int = 1) -> list[int]:
    """Wrap ``_format.<name>`` (a read inside ``KLStore.load``) so that its first ``times`` calls run ``save`` first."""
    original = getattr(_format, name)
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            save()
        return original(*args, **kwargs)

    monkeypatch.setattr(_format, name, wrapped)
    return calls


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    return _save_during(monkeypatch, name, lambda: None, times=0)


@pytest.mark.parametrize("verify_checksums", [True, False])
@pytest.mark.parametrize("new_count", [20, 25], ids=["same-count", "other-count"])
@pytest.mark.parametrize("read", ["read_gaussians", "read_documents"])
def test_a_save_in_the_middle_of_a_load_gives_one_saves_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str, new_count: int, verify_checksums: bool
) -> None:
    path = tmp_path / "store"
    first, second = _store(1), _store(2, new_count)
    first.save(path)
    configs = _count_calls(monkeypatch, "read_config")
    _save_during(monkeypatch, read, lambda: second.save(path))
    loaded = KLStore.load(path, verify_checksums=verify_checksums)
    _assert_same(loaded, second)  # it read the folder again after the swap
    assert configs[0] == 2


def test_a_save_in_the_middle_of_a_memory_mapped_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store"
    first, second = _store(1), _store(2)
    first.save(path)
    _save_during(monkeypatch, "read_documents", lambda: second.save(path))
    _assert_same(KLStore.load(path, mmap=True), second)


def test_a_corrupted_folder_still_fails_at_once_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _store(1).save(tmp_path / "store")
    var = path / _format.VAR
    data = bytearray(var.read_bytes())
    data[-1] ^= 0xFF  # same size, another checksum
    var.write_bytes(bytes(data))
    configs = _count_calls(monkeypatch, "read_config")
    with pytest.raises(StoreFormatError, match=r"var\.npy does not match its SHA-256 checksum"):
        KLStore.load(path)
    assert configs[0] == 1  # no retry: nothing replaced the folder


def test_a_missing_folder_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no KLStore folder"):
        KLStore.load(tmp_path / "nothing")


def test_saves_replacing_the_folder_during_every_attempt_end_in_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    stores = [_store(v) for v in range(2)]
    stores[0].save(path)
    saves = [0]

    def save() -> None:
        saves[0] += 1
        stores[saves[0] % 2].save(path)

    configs = _count_calls(monkeypatch, "read_config")
    _save_during(monkeypatch, "read_documents", save, times=1000)
    with pytest.raises(OSError, match=rf"replaced by other saves during each of {LOAD_ATTEMPTS} attempts"):
        KLStore.load(path)
    assert configs[0] == LOAD_ATTEMPTS


def test_load_unchanged_retries_only_while_the_folder_changes(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    calls = [0]

    def fails() -> None:
        calls[0] += 1
        raise ValueError("damaged")

    with pytest.raises(ValueError, match="damaged"):
        load_unchanged(folder, fails)
    assert calls[0] == 1

    def replaced_once() -> int:
        calls[0] += 1
        if calls[0] == 2:
            (folder / "x").write_text("new entry")  # the folder's mtime changes
            raise ValueError("torn read")
        return calls[0]

    assert load_unchanged(folder, replaced_once) == 3


def test_searches_go_on_while_a_save_writes_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save compacts under the write lock, then writes the files under the read lock."""
    import threading

    store = _store(1)
    store.delete(["d0"])  # a tombstone to compact
    original = _format.write_folder
    found: list[list[str]] = []

    def write_while_searching(*args: Any, **kwargs: Any) -> Any:
        searcher = threading.Thread(
            target=lambda: found.append([r.id for r in store.search(random_gaussians(1, DIM, seed=5), k=3)])
        )
        searcher.start()
        searcher.join(timeout=10)  # it would wait for the save's write lock before
        return original(*args, **kwargs)

    monkeypatch.setattr(_format, "write_folder", write_while_searching)
    store.save(tmp_path / "s")
    assert len(found) == 1 and len(found[0]) == 3 and "d0" not in found[0]
    monkeypatch.setattr(_format, "write_folder", original)
    loaded = KLStore.load(tmp_path / "s")
    assert loaded.ids == store.ids and len(loaded) == 19
