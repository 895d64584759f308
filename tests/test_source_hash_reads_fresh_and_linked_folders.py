"""How often a load reads a source folder's files to hash them (:func:`kl_retrievers.hub.source_sha256`).

- A folder written less than 2 s before it is loaded has no digest kept (git's "racy clean" rule): each check
  that asks for it reads the files again, at most three times in one load, and the load is still right (a stale
  shipped graph refused, the export made from the files as they are).
- The digest is kept per resolved folder: a bundled model loaded through a relative path or a symbolic link reads
  each file once, as by its absolute path (the shipped graph's weights identity hashes the resolved folder, the
  freshness check the folder as given); a link retargeted to another folder gives that folder's digest.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import kl_retrievers.hub as hub
import kl_retrievers.pretrained as pretrained
from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers._io import library_version
from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx


def _count_reads(monkeypatch: pytest.MonkeyPatch, *, ahead_s: int) -> Counter[str]:
    """How many times each source file (by name) is read to hash it, its digests forgotten first, on a clock
    ``ahead_s`` seconds ahead (0 at the epoch: every file looks just written, so no digest is kept)."""
    reads: Counter[str] = Counter()
    real = hub._hash_file_into

    def counting(h: Any, file: Path) -> None:
        reads[file.name] += 1
        real(h, file)

    hub._source_digest.cache_clear()
    monkeypatch.setattr(hub, "_hash_file_into", counting)
    clock = (lambda: 0) if ahead_s == 0 else (lambda: time.time_ns() + ahead_s * 10**9)
    monkeypatch.setattr(hub, "time", SimpleNamespace(time_ns=clock))
    return reads


def _fresh_digest(folder: Path) -> str:
    """``source_sha256(folder)`` computed here from the files (no memo)."""
    h = hashlib.sha256()
    for name in hub._SOURCE_FILES:
        if (folder / name).is_file():
            h.update(name.encode())
            h.update((folder / name).read_bytes())
    return h.hexdigest()


@pytest.fixture
def stale_shipping_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved tiny encoder shipping an int8 export of its files before an edit (stale), with an older cache entry
    under its prefix (so a load also tries the entry's earlier name), on a machine without a GPU."""
    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(cache))
    folder = make_tiny_encoder(dim=6, seed=5).save_pretrained(tmp_path / "enc")
    export_onnx(GaussianEncoder.from_pretrained(folder), folder / "onnx-int8", source_sha256=hub.source_sha256(folder))
    config = folder / "config.json"
    config.write_text(config.read_text(encoding="utf-8") + "\n", encoding="utf-8")  # written just now: stale graph
    (cache / f"enc-{library_version()}-int8-000000000000").mkdir(parents=True)  # an earlier export's entry
    return folder


def test_a_fresh_stale_shipping_folder_loads_its_current_files_reading_each_at_most_three_times(
    stale_shipping_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = stale_shipping_folder
    reads = _count_reads(monkeypatch, ahead_s=0)
    loaded = load_model(folder, backend="onnx", quantize="int8")  # check, earlier entry's name, export's record
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path.parent == folder.parent / "cache"
    assert loaded.meta["source"]["sha256"] == _fresh_digest(folder)  # an export of the files as they are
    assert loaded.weights_sha256 == GaussianEncoder.from_pretrained(folder).weights_sha256
    assert set(reads) == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert max(reads.values()) <= 3, reads


def test_a_fresh_stale_shipping_folder_without_torch_is_refused_reading_each_file_at_most_three_times(
    stale_shipping_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pretrained, "_has_torch", lambda: False)
    reads = _count_reads(monkeypatch, ahead_s=0)
    with pytest.raises(ModuleNotFoundError, match="onnx_cli export"):  # backend choice, check, earlier name
        load_model(stale_shipping_folder)
    assert reads and max(reads.values()) <= 3, reads


def test_a_fresh_current_shipping_folder_loads_its_shipped_graph(
    stale_shipping_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = stale_shipping_folder
    export_onnx(
        GaussianEncoder.from_pretrained(folder),
        folder / "onnx-int8",
        source_sha256=_fresh_digest(folder),
        overwrite=True,
    )
    reads = _count_reads(monkeypatch, ahead_s=0)
    loaded = load_model(folder)  # the backend choice and the check
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path == folder / "onnx-int8"
    assert reads and max(reads.values()) <= 2, reads


@pytest.mark.parametrize("how", ["relative", "link"])
def test_a_bundled_model_through_a_relative_path_or_a_link_reads_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    folder = pretrained.bundled_model_path(pretrained.DEFAULT_MODEL)
    if how == "relative":
        monkeypatch.chdir(folder.parent)
        given = f".{os.sep}{folder.name}"
    else:
        (tmp_path / "link").symlink_to(folder, target_is_directory=True)
        given = os.fspath(tmp_path / "link")
    reads = _count_reads(monkeypatch, ahead_s=10)  # the bundled files are past the 2 s in which none is kept
    loaded = load_model(given)
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path.resolve() == folder / "onnx-int8"
    assert loaded.weights_sha256 is not None  # the shipped graph's weights identity: its source hash matched
    want = {name for name in hub._SOURCE_FILES if (folder / name).is_file()}
    assert reads == Counter(dict.fromkeys(want, 1)), reads


def test_a_link_retargeted_to_another_folder_gives_that_folders_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_tiny_encoder(dim=6, seed=1).save_pretrained(tmp_path / "a")
    b = make_tiny_encoder(dim=6, seed=2).save_pretrained(tmp_path / "b")
    _count_reads(monkeypatch, ahead_s=10)  # digests kept
    link = tmp_path / "link"
    link.symlink_to(a, target_is_directory=True)
    assert hub.source_sha256(link) == hub.source_sha256(a) == _fresh_digest(a)
    link.unlink()
    link.symlink_to(b, target_is_directory=True)
    assert hub.source_sha256(link) == _fresh_digest(b) != _fresh_digest(a)
