"""``index.faiss`` is checked before FAISS reads it: an array length edited beyond the file is refused, not allocated.

FAISS reads an array by its length field, allocates that length, then reads it. A saved store whose ``index.faiss``
claims an array of 2^37 floats (its checksums updated in ``config.json``, as an attacker would) made
``KLStore.load`` allocate that (a GiB for 2^28, ``std::bad_alloc`` beyond) before the short read failed. Now
every length is checked against the file (and the index's own header) first, and the error names the array, what
it claims and what the file holds. The tampered folders are loaded in a child process limited to 3 GiB of address
space, so that a regression fails quickly instead of filling the machine's memory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, random_gaussians
from kl_retrievers.hub import sha256_file
from kl_retrievers.store import KLStore, StoreFormatError, _format

ROWS = 1100  # enough to train 8-bit product quantizers
HUGE = 1 << 37  # values: 512 GiB of floats, 1 TiB of ids; under FAISS's own 1 TiB cap for one array

#: Stores of every kind of index a KLStore writes (few rows, so building them is quick).
KINDS: dict[str, dict[str, object]] = {
    "flat": {},
    "hnsw": {"index_type": "hnsw"},
    "hnsw_sq8": {"index_type": "hnsw", "compression": "sq8"},
    "hnsw_pq": {"index_type": "hnsw", "compression": "pq", "pq_m": 2, "pq_nbits": 4},
    "hnsw_sq8_fp16": {"index_type": "hnsw", "compression": "sq8", "refine": "fp16"},
    "ivf": {"index_type": "ivf", "nlist": 4},
    "ivf_sq8": {"index_type": "ivf", "nlist": 4, "compression": "sq8"},
    "ivf_pq8": {"index_type": "ivf", "nlist": 4, "compression": "pq", "pq_m": 2, "pq_nbits": 8},
    "ivf_pq4_sq8": {"index_type": "ivf", "nlist": 4, "compression": "pq", "pq_m": 2, "pq_nbits": 4, "refine": "sq8"},
    "ivf_sparse": {"index_type": "ivf", "nlist": 64},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One saved store of 1,100 rows per kind (copy a folder before changing it)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # small k-means trainings are far faster on one thread
    root = tmp_path_factory.mktemp("kinds")
    docs = random_gaussians(ROWS, 8, seed=3)
    folders = {}
    try:
        for name, settings in KINDS.items():
            store = KLStore(**settings)  # type: ignore[arg-type]
            store.add(gaussians=docs, ids=[f"d{i}" for i in range(ROWS)])
            if name == "ivf_sparse":  # most lists empty (the deleted rows compacted away): sizes written sparse
                store.delete([f"d{i}" for i in range(10, ROWS)])
            store.save(root / name)
            folders[name] = root / name
        yield folders
    finally:
        faiss.omp_set_num_threads(threads)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


def _tamper(folder: Path, edit: Callable[[bytearray], None]) -> None:
    """Edit ``folder``'s index.faiss and record its new size and checksum in config.json (as an attacker would)."""
    index = folder / "index.faiss"
    data = bytearray(index.read_bytes())
    edit(data)
    index.write_bytes(bytes(data))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["files"]["index.faiss"] = {"bytes": index.stat().st_size, "sha256": sha256_file(index)}
    cfg.pop("flat_norm_max", None)  # its digest covers the index's checksum
    cfg.pop("flat_norm_max_sha256", None)
    (folder / "config.json").write_text(json.dumps(cfg))


def _u64(data: bytearray, at: int, value: int | None = None, was: int | None = None) -> int:
    """The uint64 at byte ``at`` (checked to be ``was``), replaced by ``value`` when given."""
    (old,) = struct.unpack_from("<Q", data, at)
    assert was is None or old == was, (at, old, was)
    if value is not None:
        struct.pack_into("<Q", data, at, value)
    return int(old)


#: An index header after its four-character kind: d (int32), ntotal, two unused int64, is_trained, metric (int32).
HEADER = 4 + 33


def _flat_codes(data: bytearray) -> None:
    assert data[:4] == b"IxFI"
    (d, n) = struct.unpack_from("<iq", data, 4)
    _u64(data, HEADER, HUGE, was=n * d)  # the vectors' length, in floats


def _hnsw_neighbours(data: bytearray) -> None:
    assert data[:4] == b"IHNf"
    (n,) = struct.unpack_from("<q", data, 8)
    at = HEADER
    at += 8 + 8 * _u64(data, at)  # level probabilities (float64)
    at += 8 + 4 * _u64(data, at)  # neighbours per level (int32)
    at += 8 + 4 * _u64(data, at, was=n)  # levels (int32)
    at += 8 + 8 * _u64(data, at, was=n + 1)  # offsets (uint64)
    _u64(data, at, HUGE)  # the neighbours (int32)


def _list_sizes(sparse: bool) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        at = data.index(b"ilar") + 4 + 16  # nlist, code size
        assert data[at : at + 4] == (b"sprs" if sparse else b"full")
        _u64(data, at + 4 + 8 + (8 if sparse else 0), 1 << 33)  # the first list's (or first named list's) size

    return edit


def _list_count(data: bytearray) -> None:
    _u64(data, data.index(b"ilar") + 4, 1 << 31, was=4)


def _fast_scan_ids(data: bytearray) -> None:
    at = data.index(b"ilbl") + 4 + 32  # nlist, code size, codes per block, block size
    _u64(data, at, 1 << 34)  # the first list's ids (int64)


def _unknown_kind(data: bytearray) -> None:
    data[:4] = b"IxHe"  # an LSH index: FAISS reads it, but no store writes one


#: (store kind, edit, what the error says)
CASES = {
    "flat codes": ("flat", _flat_codes, f"the flat index's vectors: a length of {HUGE} values, where the index's own"),
    "hnsw neighbours": ("hnsw", _hnsw_neighbours, f"the HNSW neighbours ({HUGE} values of 4 bytes): {4 * HUGE} bytes"),
    "full list sizes": ("ivf", _list_sizes(False), f"entries; the index's header {ROWS}"),
    "sparse list sizes": ("ivf_sparse", _list_sizes(True), "entries; the index's header 10"),
    "list count": ("ivf", _list_count, f"the inverted lists claim {1 << 31} lists"),
    "fast-scan ids": ("ivf_pq4_sq8", _fast_scan_ids, f"the ids of inverted list 0 ({1 << 34} values of 8 bytes)"),
    "unknown kind": ("flat", _unknown_kind, "it holds a FAISS index of kind b'IxHe', which no KLStore writes"),
}

CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from kl_retrievers.store import KLStore
out = {}
for name, folder in json.loads(sys.argv[1]).items():
    try:
        KLStore.load(folder)
        out[name] = ["loaded", ""]
    except BaseException as exc:
        out[name] = [type(exc).__name__, str(exc)]
out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps(out))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="limits the child's address space with RLIMIT_AS (Linux)")
def test_edited_array_lengths_are_refused_before_faiss_allocates_them(saved: dict[str, Path], tmp_path: Path) -> None:
    folders = {}
    for i, (name, (kind, edit, _)) in enumerate(CASES.items()):
        folders[name] = str(_copy(saved[kind], tmp_path / f"case{i}"))
        _tamper(Path(folders[name]), edit)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(folders)], capture_output=True, text=True, env=env, timeout=300
    )
    assert child.returncode == 0, child.stderr[-2000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    for name, (_, _, says) in CASES.items():
        kind, message = out[name]
        assert kind == "StoreFormatError", (name, kind, message)
        assert message.startswith(f"{folders[name]}/index.faiss: "), (name, message)
        assert says in message and "refused before FAISS reads it" in message, (name, message)
    assert out["peak_mib"] < 1024, out["peak_mib"]  # nothing of what the files claim was allocated


def test_every_kind_of_index_a_store_writes_passes_the_check_and_loads(saved: dict[str, Path]) -> None:
    seen = set()
    for name, folder in saved.items():
        data = (folder / "index.faiss").read_bytes()
        seen |= {data[i : i + 4] for i in range(len(data) - 3)} & _format.INDEX_KINDS
        _format.check_index_file(folder / "index.faiss")
        store = KLStore.load(folder)
        assert len(store) == (10 if name == "ivf_sparse" else ROWS)
    assert b"sprs" in (saved["ivf_sparse"] / "index.faiss").read_bytes()
    assert seen == _format.INDEX_KINDS - {b"IxFl"}, seen  # IxFl: flat vectors of a metric no store uses


def test_a_short_file_and_a_sparse_list_beyond_the_lists_are_named(saved: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(saved["ivf_sparse"], tmp_path / "short")
    index = folder / "index.faiss"
    index.write_bytes(index.read_bytes()[:-9])  # the last entries' ids cut short
    with pytest.raises(StoreFormatError, match=r"the codes and ids of the 10 entries in inverted lists: \d+ bytes"):
        _format.check_index_file(index)

    def far_list(data: bytearray) -> None:
        at = data.index(b"sprs") + 4 + 8
        _u64(data, at, 64)  # list 64 of 64

    folder = _copy(saved["ivf_sparse"], tmp_path / "far")
    _tamper(folder, far_list)
    with pytest.raises(StoreFormatError, match="sparse sizes name a list beyond their 64"):
        KLStore.load(folder)


def test_the_header_s_own_sizes_must_agree(saved: dict[str, Path], tmp_path: Path) -> None:
    def more_rows(data: bytearray) -> None:
        (n,) = struct.unpack_from("<q", data, 8)
        struct.pack_into("<q", data, 8, n + 1)  # the flat index's ntotal, one more than its vectors hold

    folder = _copy(saved["flat"], tmp_path / "rows")
    _tamper(folder, more_rows)
    with pytest.raises(StoreFormatError, match=r"a length of 18700 values, where the index's own header makes 18717"):
        KLStore.load(folder)
    assert np.load(folder / "mean.npy").shape == (ROWS, 8)  # the rest of the folder is untouched
