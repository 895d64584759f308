"""``KLHybridStore.save`` makes every file and folder it writes durable (fsync) before the folder swap.

The KL half's files are synced by :meth:`KLStore.save`; the hybrid save's own files (the BM25 half's
arrays and JSON files, both ``hybrid_save.json`` and ``hybrid.json``) and the folders that gained entries
(``bm25/``, ``kl/``) must be too, or a crash right after the swap could leave a folder whose files are
empty or partial. Each folder's last sync comes after the files written into it (a sync only makes the
entries made before it durable).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bm25s")

import kl_retrievers._io as io_module
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name fds")

_SWAP = "<swap>"


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every ``os.fsync`` and, as :data:`_SWAP`, each folder swap, in order."""
    events: list[str] = []
    real_fsync: Callable[[int], None] = os.fsync
    real_swap: Callable[..., Any] = io_module._swap_into_place

    def fsync(fd: int) -> None:
        events.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def swap(tmp: Path, final: Path, old: Path) -> None:
        events.append(_SWAP + str(tmp))
        real_swap(tmp, final, old)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(io_module, "_swap_into_place", swap)
    return events


def _store() -> KLHybridStore:
    store = KLHybridStore(fusion="rrf", stemmer=None)
    rng = np.random.default_rng(0)
    store.add(
        ["red apples", "green pears"], gaussians=Gaussians(rng.normal(size=(2, 4)), np.ones((2, 4))), ids=["a", "p"]
    )
    return store


def _synced_before_swap(events: list[str], tmp_path: Path) -> set[str]:
    """The paths (relative to the save's temporary folder) synced before the hybrid folder's swap."""
    swaps = [e[len(_SWAP) :] for e in events if e.startswith(_SWAP)]
    hybrid_tmp = next(s for s in swaps if Path(s).parent == tmp_path.resolve())  # the outer save's swap
    before = events[: events.index(_SWAP + hybrid_tmp)]
    return {os.path.relpath(p, hybrid_tmp) for p in before if p == hybrid_tmp or p.startswith(hybrid_tmp + os.sep)}


@pytest.mark.parametrize("overwrite", [False, True])
def test_every_file_and_folder_the_hybrid_save_writes_is_synced_before_the_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    store = _store()
    target = tmp_path / "h"
    if overwrite:
        store.save(target)  # the second save replaces an earlier one
    events = _record_syncs(monkeypatch)
    store.save(target, overwrite=overwrite)
    synced = _synced_before_swap(events, tmp_path)

    bm25_files = {f"bm25/{p.name}" for p in (target / "bm25").iterdir()}
    assert {"bm25/data.csc.index.npy", "bm25/vocab.index.json", "bm25/ids.json"} <= bm25_files  # an indexed half
    own = bm25_files | {"kl/hybrid_save.json", "hybrid.json"}
    assert own - synced == set(), f"written but not synced before the swap: {sorted(own - synced)}"
    assert {"bm25", "kl", "."} <= synced  # the folders that gained entries, and the save's folder itself
    assert KLHybridStore.load(target).ids == ["a", "p"]


def test_an_unindexed_bm25_half_is_synced_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty store has no BM25 index: its ``ids.json`` and token file are still synced."""
    store = KLHybridStore(fusion="rrf", stemmer=None)
    events = _record_syncs(monkeypatch)
    store.save(tmp_path / "h")
    synced = _synced_before_swap(events, tmp_path)
    assert {"bm25/ids.json", "bm25/hybrid_save.json", "kl/hybrid_save.json", "hybrid.json", "bm25", "kl"} <= synced
    assert KLHybridStore.load(tmp_path / "h").ids == []


def _sync_positions(events: list[str], tmp_path: Path) -> dict[str, list[int]]:
    """Where (event positions) each path of the hybrid save's temporary folder was synced, before its swap."""
    swaps = [e[len(_SWAP) :] for e in events if e.startswith(_SWAP)]
    hybrid_tmp = next(s for s in swaps if Path(s).parent == tmp_path.resolve())
    positions: dict[str, list[int]] = {}
    for i, path in enumerate(events[: events.index(_SWAP + hybrid_tmp)]):
        if path == hybrid_tmp or path.startswith(hybrid_tmp + os.sep):
            positions.setdefault(os.path.relpath(path, hybrid_tmp), []).append(i)
    return positions


@pytest.mark.parametrize("overwrite", [False, True])
def test_each_folder_is_synced_after_the_files_written_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    """A folder's sync makes its entries durable only for the entries made before it: the last one comes last.

    Syncing ``bm25/`` or ``kl/`` before ``hybrid_save.json`` is written into it (or the save's folder before
    ``hybrid.json``) would leave the new entry unsynced at the swap, although each path was synced once.
    """
    store = _store()
    target = tmp_path / "h"
    if overwrite:
        store.save(target)
    events = _record_syncs(monkeypatch)
    store.save(target, overwrite=overwrite)
    positions = _sync_positions(events, tmp_path)

    files = {rel for rel in positions if (target / rel).is_file()}
    assert {"hybrid.json", "kl/hybrid_save.json", "bm25/hybrid_save.json", "bm25/ids.json"} <= files

    def last_sync_of_folder(rel: str) -> int:
        return max(positions.get(os.path.dirname(rel) or ".", [-1]))

    late = [rel for rel in sorted(files) if last_sync_of_folder(rel) < max(positions[rel])]
    assert late == [], f"these files' folders were last synced before the files were: {late} ({positions})"
    assert KLHybridStore.load(target).ids == ["a", "p"]
