"""Store load and write paths: a verified load hashes the Gaussians and documents as it reads them (one read of
each file), reporting a checksum mismatch before any other error of a file that does not match; the sizes saved
are the bytes written; an approximate index's reduced vectors are those of ``reduce_document_vectors``, bit for
bit, with each row's norm computed once."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers import hub
from kl_retrievers.gaussian import Gaussians, reduce_document_vectors
from kl_retrievers.store import KLStore, StoreFormatError, _format
from kl_retrievers.store._engines import ApproxEngine, _row_norms

pytest.importorskip("faiss")


def _saved(tmp_path: Path, n: int = 50) -> Path:
    rng = np.random.default_rng(0)
    store = KLStore()
    g = Gaussians(rng.normal(size=(n, 4)), np.exp(rng.normal(0.0, 0.3, (n, 4))))
    store.add(gaussians=g, ids=[f"d{i}" for i in range(n)], texts=[f"text {i}" for i in range(n)])
    return store.save(tmp_path / "store")


@pytest.mark.parametrize("mmap", [False, True])
def test_a_verified_load_reads_the_gaussians_and_documents_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mmap: bool
) -> None:
    folder = _saved(tmp_path)
    hashed: list[str] = []
    real = hub.sha256_file

    def counted(path: Any) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(_format, "sha256_file", counted)
    store = KLStore.load(folder, mmap=mmap, verify_checksums=True)
    assert len(store) == 50
    assert sorted(hashed) == [_format.INDEX]  # mean.npy, var.npy, documents.jsonl: hashed as they were read


@pytest.mark.parametrize("name", [_format.MEAN, _format.VAR, _format.DOCS])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_changed_byte_is_a_checksum_mismatch(tmp_path: Path, name: str, mmap: bool) -> None:
    folder = _saved(tmp_path)
    path = folder / name
    data = bytearray(path.read_bytes())
    if name == _format.DOCS:
        data = data.replace(b'"text 12"', b'"text 13"')
    else:
        data[-3] ^= 0x01  # a value that still parses: only the checksum tells
    path.write_bytes(bytes(data))
    with pytest.raises(StoreFormatError, match="does not match its SHA-256 checksum"):
        KLStore.load(folder, mmap=mmap, verify_checksums=True)
    KLStore.load(folder, mmap=mmap, verify_checksums=False)  # the value is valid: loads unverified


@pytest.mark.parametrize("mmap", [False, True])
def test_a_checksum_mismatch_is_reported_before_a_bad_value(tmp_path: Path, mmap: bool) -> None:
    folder = _saved(tmp_path)
    path = folder / _format.VAR
    original = path.read_bytes()
    var = np.load(path)
    var[7, 2] = -1.0
    np.save(path, var)
    with pytest.raises(StoreFormatError, match="does not match its SHA-256 checksum"):
        KLStore.load(folder, mmap=mmap, verify_checksums=True)
    with pytest.raises(StoreFormatError, match="not a positive finite number in row 7"):
        KLStore.load(folder, mmap=mmap, verify_checksums=False)
    docs = folder / _format.DOCS
    docs.write_bytes(b"x" + docs.read_bytes()[1:])  # line 1 malformed, the size unchanged
    path.write_bytes(original)
    with pytest.raises(StoreFormatError, match="documents.jsonl does not match its SHA-256 checksum"):
        KLStore.load(folder, mmap=mmap, verify_checksums=True)


def test_the_saved_sizes_are_the_bytes_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat_calls: list[str] = []
    real = Path.stat

    def counted(self: Path, **kwargs: Any) -> Any:
        stat_calls.append(self.name)
        return real(self, **kwargs)

    monkeypatch.setattr(Path, "stat", counted)
    folder = _saved(tmp_path)
    monkeypatch.undo()
    assert not {_format.MEAN, _format.VAR, _format.DOCS} & set(stat_calls)  # HashingWriter counted them
    files = json.loads((folder / _format.CONFIG).read_text())["files"]
    for name, info in files.items():
        assert info["bytes"] == (folder / name).stat().st_size
        assert info["sha256"] == hub.sha256_file(folder / name)


@pytest.mark.parametrize("settings", [{"index_type": "hnsw"}, {"index_type": "ivf", "nlist": 8}])
def test_reduced_rows_are_those_of_reduce_document_vectors_bit_for_bit(settings: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    n = 400
    g = Gaussians(rng.normal(size=(n, 8)) + 2.0, np.exp(rng.normal(0.0, 0.4, (n, 8))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = KLStore(**settings)
        store.add(gaussians=g, ids=[f"d{i}" for i in range(n)])
    engine = store._engine
    assert isinstance(engine, ApproxEngine) and engine.norm_bound is not None
    shifted = engine._shifted(engine._centred(store._table.doc_vectors(slice(None))))
    vectors, norms = engine._reduce_shifted(shifted)
    want = reduce_document_vectors(shifted, 0.0, engine.norm_bound, width=engine.width)
    assert vectors.dtype == want.dtype and vectors.tobytes() == want.tobytes()
    assert norms.tobytes() == _row_norms(shifted).tobytes()
    assert np.array_equal(engine.index.reconstruct_n(0, n)[:, : want.shape[1]], want) or settings["index_type"] == "ivf"
