"""Files are hashed as they are written or read, not read once more for their SHA-256.

A KLStore save hashes the files it writes itself (the arrays, documents.jsonl) as it writes them: only
``index.faiss``, which FAISS writes, is read back. An encoding cache entry's ``.npy`` files are hashed as they are
saved and read once on a load (hashed, then parsed from the same bytes). The bytes written and the checksums
recorded are the ones written before.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians, KLStore
from kl_retrievers.encoding_cache import EncodingCache, model_fingerprint


def _count_npy_reads(monkeypatch: pytest.MonkeyPatch, root: Path) -> Counter[str]:
    """Count every opening for reading of an ``.npy`` file under ``root``, by file name."""
    reads: Counter[str] = Counter()
    real_open = builtins.open

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        npy = isinstance(file, (str, Path)) and "r" in mode and str(file).endswith(".npy")
        if npy and Path(file).resolve().is_relative_to(root.resolve()):
            reads[Path(file).name] += 1
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return reads


def _store(n: int = 40, dim: int = 6) -> KLStore:
    rng = np.random.default_rng(0)
    store = KLStore()
    store.add(
        [f"text {i} é" for i in range(n)],
        gaussians=Gaussians(rng.normal(size=(n, dim)), rng.uniform(0.5, 2.0, size=(n, dim))),
        ids=[f"d{i}" for i in range(n)],
        metadatas=[{"i": i, "tag": "ü"} for i in range(n)],
    )
    return store


def test_a_store_save_hashes_its_own_files_as_it_writes_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import kl_retrievers.store._format as fmt

    hashed: list[str] = []
    real = fmt.sha256_file

    def counting(path: Any) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(fmt, "sha256_file", counting)
    store = _store()
    store.delete(["d3"])  # a tombstone: tombstones.npy is written too
    folder = store.save(tmp_path / "s")
    assert hashed == ["index.faiss"]  # FAISS writes it: the only file read back
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert set(config["files"]) == {"mean.npy", "var.npy", "documents.jsonl", "index.faiss", "tombstones.npy"}
    for name, info in config["files"].items():
        data = (folder / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert len(KLStore.load(folder, verify_checksums=True)) == len(store)


def test_a_store_save_writes_the_bytes_it_wrote_before(tmp_path: Path) -> None:
    store = _store()
    folder = store.save(tmp_path / "s")
    for name, array in (("mean.npy", store._table.mean), ("var.npy", store._table.var)):
        expected = io.BytesIO()
        np.save(expected, np.ascontiguousarray(array), allow_pickle=False)
        assert (folder / name).read_bytes() == expected.getvalue()
    lines = [
        json.dumps({"id": f"d{i}", "text": f"text {i} é", "metadata": {"i": i, "tag": "ü"}}, ensure_ascii=False) + "\n"
        for i in range(40)
    ]
    assert (folder / "documents.jsonl").read_bytes() == "".join(lines).encode("utf-8")


def test_a_store_save_of_more_documents_than_a_block_writes_every_line(tmp_path: Path) -> None:
    store = _store(n=4096 * 2 + 5, dim=2)
    loaded = KLStore.load(store.save(tmp_path / "s"), verify_checksums=True)
    assert loaded._table.ids == store._table.ids
    assert (tmp_path / "s" / "documents.jsonl").read_bytes().count(b"\n") == 4096 * 2 + 5


def _entry(tmp_path: Path) -> tuple[EncodingCache, dict[str, Any], list[str], dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {
        "mean": rng.normal(size=(5, 3)).astype(np.float32),
        "var": rng.uniform(0.1, 1, (5, 3)),
    }
    return EncodingCache(tmp_path / "cache"), {"model": "m"}, [f"d{i}" for i in range(5)], arrays


def test_an_encoding_cache_save_does_not_read_its_arrays_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache, key, ids, arrays = _entry(tmp_path)
    reads = _count_npy_reads(monkeypatch, tmp_path)
    cache.save("documents", key, ids, arrays)
    assert reads == Counter()
    meta = json.loads((cache.entry_dir("documents", key) / "meta.json").read_text(encoding="utf-8"))
    for name, array in arrays.items():
        expected = io.BytesIO()
        np.save(expected, array, allow_pickle=False)
        data = (cache.entry_dir("documents", key) / f"{name}.npy").read_bytes()
        assert data == expected.getvalue()
        assert meta["sha256"][name] == hashlib.sha256(data).hexdigest()


def test_an_encoding_cache_load_reads_each_array_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache, key, ids, arrays = _entry(tmp_path)
    cache.save("documents", key, ids, arrays)
    reads = _count_npy_reads(monkeypatch, tmp_path)
    got = cache.load("documents", key, ids)
    assert reads == Counter({"mean.npy": 1, "var.npy": 1})
    assert got is not None and set(got) == set(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array)
        assert got[name].flags.writeable


def test_an_encoding_cache_entry_saved_before_checksums_is_read_once_and_adopted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache, key, ids, arrays = _entry(tmp_path)
    cache.save("documents", key, ids, arrays)
    meta_path = cache.entry_dir("documents", key) / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    checksums = meta.pop("sha256")
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    reads = _count_npy_reads(monkeypatch, tmp_path)
    assert cache.load("documents", key, ids) is not None
    assert reads == Counter({"mean.npy": 1, "var.npy": 1})
    assert json.loads(meta_path.read_text(encoding="utf-8"))["sha256"] == checksums


def test_an_encoding_cache_array_not_matching_its_checksum_is_a_miss(tmp_path: Path) -> None:
    cache, key, ids, arrays = _entry(tmp_path)
    cache.save("documents", key, ids, arrays)
    path = cache.entry_dir("documents", key) / "var.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert cache.load("documents", key, ids) is None
    assert not cache.entry_dir("documents", key).exists()


def test_an_encoders_tokenizer_text_is_parsed_once_per_text(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.encoding_cache as ec

    ec._text_digest.cache_clear()  # the digest cache lives as long as the process: a rerun starts from empty
    text = json.dumps({"model": {"vocab": {f"t{i}": i for i in range(50)}}, "marker": "f10-tokenizer"})
    parsed: list[str] = []
    real_loads = ec.json.loads

    def counting_loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(s, str) and "f10-tokenizer" in s:
            parsed.append(s)
        return real_loads(s, *args, **kwargs)

    monkeypatch.setattr(ec.json, "loads", counting_loads)

    class Encoder:
        name_or_path = "toy"

        def __init__(self, tokenizer_json: str) -> None:
            self._tokenizer_json = tokenizer_json

    first = [model_fingerprint(Encoder(text)) for _ in range(3)]
    assert len(set(first)) == 1 and len(parsed) == 1
    changed = text.replace('"t49": 49', '"t49": 49, "new": 50')  # a token added: another identity
    assert model_fingerprint(Encoder(changed)) != first[0]
    assert (
        ec._tokenizer_digest(Encoder(text))
        == hashlib.sha256(ec.canonical_json(ec.tokenizer_identity(text)).encode()).hexdigest()
    )
