"""A verified load hashes ``mean.npy`` and ``var.npy`` while it reads them; a file another program wrote in
Fortran order (its checksum recorded) must still load, as it did before the hash moved into the read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers import Gaussians, KLStore


def _fix_checksum(folder: Path, name: str) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    data = (folder / name).read_bytes()
    config["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize("name", ["mean.npy", "var.npy"])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_fortran_order_array_with_its_checksum_loads(tmp_path: Path, name: str, mmap: bool) -> None:
    rng = np.random.default_rng(0)
    g = Gaussians(rng.normal(size=(40, 6)).astype(np.float32), rng.uniform(0.5, 2, size=(40, 6)).astype(np.float32))
    store = KLStore()
    store.add(gaussians=g, ids=[f"d{i}" for i in range(40)])
    folder = store.save(tmp_path / "s")
    np.save(folder / name, np.asfortranarray(np.load(folder / name)))
    _fix_checksum(folder, name)
    loaded = KLStore.load(folder, mmap=mmap)
    expected = [[r.id for r in q] for q in store.search_batch(g[:5], k=3)]
    assert [[r.id for r in q] for q in loaded.search_batch(g[:5], k=3)] == expected


@pytest.mark.parametrize("mmap", [False, True])
def test_a_changed_fortran_order_array_is_still_refused(tmp_path: Path, mmap: bool) -> None:
    rng = np.random.default_rng(1)
    g = Gaussians(rng.normal(size=(30, 4)).astype(np.float32), rng.uniform(0.5, 2, size=(30, 4)).astype(np.float32))
    store = KLStore()
    store.add(gaussians=g, ids=[f"d{i}" for i in range(30)])
    folder = store.save(tmp_path / "s")
    np.save(folder / "mean.npy", np.asfortranarray(np.load(folder / "mean.npy")))
    _fix_checksum(folder, "mean.npy")
    data = bytearray((folder / "mean.npy").read_bytes())
    data[-1] ^= 0x40
    (folder / "mean.npy").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        KLStore.load(folder, mmap=mmap)
