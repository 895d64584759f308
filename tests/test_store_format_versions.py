"""A KLStore folder's ``format_version``: 2 when ``index.faiss`` holds centred vectors, else 1.

A release reading only version 1 ignores ``flat_centre`` / ``index_centre`` and would search a centred
index with uncentred queries (wrong results, no error); version 2 makes it refuse the folder. A store
without a centre stays at version 1 so that earlier releases still read it. This release reads both,
and the version-1 folders with a centre saved before version 2 existed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians, KLStore
from kl_retrievers.index import FORMAT_VERSION, StoreFormatError

N, K = 300, 8


def _gaussians(offset: float, n: int = N, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = (rng.normal(size=(n, K)) + offset).astype(np.float32)
    var = np.exp(rng.normal(scale=0.5, size=(n, K))).astype(np.float32)
    return Gaussians(mean, var)


def _store(index_type: str, offset: float) -> KLStore:
    kw: dict[str, Any] = {}
    if index_type == "ivf":
        kw = {"nlist": 4, "nprobe": 4}
    elif index_type == "hnsw":
        kw = {"hnsw_m": 8, "ef_search": 64}
    store = KLStore(index_type=index_type, exact_threshold=0, **kw)  # type: ignore[arg-type]
    store.add(gaussians=_gaussians(offset), ids=[f"d{i}" for i in range(N)])
    return store


def _config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_a_centred_store_is_saved_as_format_2_and_loads(tmp_path: Path, index_type: str) -> None:
    store = _store(index_type, offset=20.0)  # means far from 0: the index is centred
    folder = store.save(tmp_path / "s")
    config = _config(folder)
    field = "flat_centre" if index_type == "flat" else "index_centre"
    assert config[field] is not None
    assert config["format_version"] == 2 and FORMAT_VERSION == 3  # 3: saved with tombstones
    queries = _gaussians(20.0, n=3, seed=1)
    loaded = KLStore.load(folder)
    for j in range(3):
        query = Gaussians(queries.mean[j : j + 1], queries.var[j : j + 1])
        assert [h.id for h in loaded.search(query, k=5)] == [h.id for h in store.search(query, k=5)]


def test_an_approximate_store_without_a_centre_stays_format_1(tmp_path: Path) -> None:
    store = _store("hnsw", offset=0.0)  # means around 0: not worth centring
    folder = store.save(tmp_path / "s")
    config = _config(folder)
    assert config["flat_centre"] is None and config["index_centre"] is None
    assert config["format_version"] == 1
    assert len(KLStore.load(folder)) == N


def test_a_flat_store_saved_before_centring_stays_format_1_after_adding(tmp_path: Path) -> None:
    """An earlier release's flat store (no flat_centre) keeps a zero centre when added to: still version 1."""
    rng = np.random.default_rng(3)
    half = rng.normal(size=(1, K)).astype(np.float32)
    first = Gaussians(np.concatenate([half, -half]), np.ones((2, K), dtype=np.float32))  # centre exactly 0
    store = KLStore()
    store.add(gaussians=first, ids=["a", "b"])
    folder = store.save(tmp_path / "old")
    config = _config(folder)
    assert config["format_version"] == 1
    config["flat_centre"] = None  # as a release before centring wrote it (the same index: centre 0)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = KLStore.load(folder)
    loaded.add(gaussians=_gaussians(20.0, n=5), ids=[f"n{i}" for i in range(5)])
    config = _config(loaded.save(tmp_path / "again"))
    assert config["format_version"] == 1
    assert not any(config["flat_centre"] or [])


def test_an_empty_store_stays_format_1(tmp_path: Path) -> None:
    assert _config(KLStore().save(tmp_path / "s"))["format_version"] == 1


def test_a_version_1_folder_with_a_centre_still_loads(tmp_path: Path) -> None:
    """Saved by this release's predecessors of format 2 (a centre recorded under version 1)."""
    store = _store("flat", offset=20.0)
    folder = store.save(tmp_path / "s")
    config = _config(folder)
    config["format_version"] = 1
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    queries = _gaussians(20.0, n=1, seed=1)
    loaded = KLStore.load(folder)
    assert [h.id for h in loaded.search(queries, k=5)] == [h.id for h in store.search(queries, k=5)]


@pytest.mark.parametrize("version", [0, -1, FORMAT_VERSION + 1])
def test_versions_outside_1_to_2_are_refused(tmp_path: Path, version: int) -> None:
    folder = _store("flat", offset=20.0).save(tmp_path / "s")
    config = _config(folder)
    config["format_version"] = version
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(StoreFormatError, match="format_version"):
        KLStore.load(folder)


# ---------------------------------------------------------------- torch documents, ONNX queries
@pytest.fixture(scope="module")
def torch_and_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A saved tiny torch encoder and its int8 ONNX export (the same weights identity)."""
    from conftest import make_tiny_encoder

    root = tmp_path_factory.mktemp("models")
    encoder = make_tiny_encoder()
    encoder.save_pretrained(root / "torch")
    encoder.export_onnx(root / "int8", quantize="int8")
    return root / "torch", root / "int8"


def _backend_notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "on the torch backend (float32)" in r.getMessage()]


def test_torch_documents_queried_by_the_onnx_export_log_one_info(
    tmp_path: Path, torch_and_onnx: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers import load_model

    torch_path, onnx_path = torch_and_onnx
    torch_encoder, onnx_encoder = load_model(str(torch_path), backend="torch"), load_model(str(onnx_path))
    assert torch_encoder.weights_sha256 == onnx_encoder.weights_sha256
    store = KLStore(torch_encoder)
    store.add(texts=["the cat sat", "green tea", "the moon rose"], ids=["a", "b", "c"])
    folder = store.save(tmp_path / "s")
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        loaded = KLStore.load(folder, encoder=onnx_encoder)
    notes = _backend_notes(caplog)
    assert len(notes) == 1, notes
    assert "int8 ONNX" in notes[0] and "backend='torch'" in notes[0] and str(folder) in notes[0]
    assert len(loaded.search("the cat", k=3)) == 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        KLStore.load(folder, encoder=torch_encoder)
    assert _backend_notes(caplog) == []
    # a save through the ONNX export keeps the documents' torch record: the note comes again, and a load
    # without an encoder still loads the torch model
    loaded.save(tmp_path / "again")
    record = json.loads((tmp_path / "again" / "config.json").read_text())["encoder"]
    assert (record["config"] or {}).get("backend") != "onnx"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        KLStore.load(tmp_path / "again", encoder=onnx_encoder)
    assert len(_backend_notes(caplog)) == 1


def test_onnx_documents_queried_by_onnx_log_nothing(
    tmp_path: Path, torch_and_onnx: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers import load_model

    onnx_encoder = load_model(str(torch_and_onnx[1]))
    store = KLStore(onnx_encoder)
    store.add(texts=["the cat sat", "green tea"], ids=["a", "b"])
    folder = store.save(tmp_path / "s")
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        KLStore.load(folder, encoder=onnx_encoder)
    assert _backend_notes(caplog) == []


@pytest.mark.parametrize("headroom", [1e7, 1e301])
def test_a_store_saved_with_a_norm_headroom_above_the_limit_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, headroom: float
) -> None:
    """Earlier releases accepted any headroom >= 1; new stores are limited to MAX_NORM_HEADROOM (1e6)."""
    from conftest import random_gaussians
    from kl_retrievers.store._base import MAX_NORM_HEADROOM

    store = KLStore(index_type="hnsw")
    store.add(gaussians=random_gaussians(20, 4), ids=[f"d{i}" for i in range(20)])
    store.save(tmp_path / "s")
    cfg = tmp_path / "s" / "config.json"
    config = json.loads(cfg.read_text())
    config["index_params"]["norm_headroom"] = headroom
    cfg.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.faiss"):
        loaded = KLStore.load(tmp_path / "s", verify_checksums=False)
    assert f"norm_headroom={headroom:g}" in caplog.text
    assert loaded.norm_headroom == MAX_NORM_HEADROOM
    assert [r.id for r in loaded.search(random_gaussians(1, 4, seed=3), k=3)]
    with pytest.raises(ValueError, match="norm_headroom"):
        KLStore(index_type="hnsw", norm_headroom=1e7)
