"""Loading a user's folder that ships ``onnx-int8/`` with the default backend reads its files once to hash them.

The backend choice, the shipped graph's check and the export cache's key each ask :func:`source_sha256` for the
folder's hash; :mod:`kl_retrievers.hub` keeps it while the files stay as they were, so each file is read once.
It keeps no hash of a file changed within the last 2 s (git's "racy clean" rule, tested beside the memo): these
tests load as if the folder had been saved a while ago.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import kl_retrievers.hub as hub
import kl_retrievers.pretrained as pretrained
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers.onnx import OnnxGaussianEncoder


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each file is read to hash it (:func:`source_sha256`), its digests forgotten first, on a
    clock 10 s ahead: the folder's files are past the 2 s in which the hash is not kept."""
    reads: Counter[str] = Counter()
    real = hub._hash_file_into

    def counting(h: Any, file: Path) -> None:
        reads[os.fspath(file)] += 1
        real(h, file)

    hub._source_digest.cache_clear()
    monkeypatch.setattr(hub, "_hash_file_into", counting)
    monkeypatch.setattr(hub, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + 10 * 10**9))
    return reads


def _read_once(reads: Counter[str], folder: Path) -> bool:
    """Each source file of ``folder`` was read exactly once, and nothing else."""
    files = {os.fspath(folder / name) for name in hub._SOURCE_FILES if (folder / name).is_file()}
    return bool(files) and reads == Counter(dict.fromkeys(files, 1))


@pytest.mark.parametrize("as_text", [True, False])
def test_default_backend_load_of_a_shipping_folder_hashes_it_once(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, as_text: bool
) -> None:
    reads = _count_reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"):
        loaded = load_model(os.fspath(shipping_folder) if as_text else shipping_folder)
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path == shipping_folder / "onnx-int8"
    assert _read_once(reads, shipping_folder), reads  # the backend choice's hash, reused by the check
    assert not caplog.records


def test_a_stale_shipped_graph_is_still_not_chosen_and_loads_torch(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = shipping_folder / "config.json"
    config.write_text(config.read_text() + "\n")  # the same model, other bytes: the graph is now stale
    reads = _count_reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"):
        loaded = load_model(shipping_folder)
    assert isinstance(loaded, GaussianEncoder)
    assert _read_once(reads, shipping_folder), reads
    assert not caplog.records


def test_a_stale_shipped_graph_without_torch_is_still_refused_naming_the_export_command(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = shipping_folder / "config.json"
    config.write_text(config.read_text() + "\n")
    monkeypatch.setattr(pretrained, "_has_torch", lambda: False)
    reads = _count_reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"), pytest.raises(ModuleNotFoundError):
        load_model(shipping_folder)
    warning = " ".join(r.getMessage() for r in caplog.records)
    onnx_int8 = shipping_folder / "onnx-int8"
    assert f"python -m kl_retrievers.onnx_cli export {shipping_folder} {onnx_int8} --overwrite" in warning
    assert _read_once(reads, shipping_folder), reads  # the backend choice's hash: the check and the cache key reuse it


def test_a_folder_changed_after_the_backend_choice_is_hashed_again_and_its_stale_graph_not_loaded(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = pretrained._onnx_options

    def change_then(*args: object, **kwargs: object) -> object:  # after the backend choice, before the check
        config = shipping_folder / "config.json"
        config.write_text(config.read_text() + "\n")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pretrained, "_onnx_options", change_then)
    reads = _count_reads(monkeypatch)  # the backend choice's hash is kept: the edit must still be seen
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"):
        loaded = load_model(shipping_folder)
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path != shipping_folder / "onnx-int8"
    assert reads[os.fspath(shipping_folder / "config.json")] == 2  # before the edit, and once after it
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"not using {shipping_folder / 'onnx-int8'}" in warning and "the model changed" in warning
