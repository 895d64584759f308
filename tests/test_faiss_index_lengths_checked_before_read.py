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
from typing import Any

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
# this process's own peak (VmHWM: ru_maxrss keeps the parent's peak across fork + exec, pytest's in a whole suite)
out["peak_mib"] = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) // 1024
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


def _pq_table_bomb(folder: Path) -> None:
    """Replace ``folder``'s IVF-PQ index by an empty one of 8,000 lists, 9 sub-quantizers of 12 bits (a 0.9 MB file).

    FAISS builds an IVF-PQ index's precomputed table (``nlist x M x 2^nbits`` floats: 1.1 GiB here) as it reads
    the file, for ``by_residual`` lists under an L2 quantizer; every array of the file is as long as it claims.
    """
    import faiss

    d = faiss.read_index(str(folder / "index.faiss")).d
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(np.random.default_rng(0).normal(size=(8000, d)).astype(np.float32))
    index = faiss.IndexIVFPQ(quantizer, d, 8000, 9, 12)
    index.is_trained = True
    faiss.write_index(index, str(folder / "index.faiss"))
    _tamper(folder, lambda data: None)


@pytest.mark.skipif(sys.platform != "linux", reason="limits the child's address space with RLIMIT_AS (Linux)")
def test_an_ivf_pq_index_s_precomputed_table_waits_for_the_config_check(saved: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(saved["ivf_pq8"], tmp_path / "bomb")
    _pq_table_bomb(folder)
    _format.check_index_file(folder / "index.faiss")  # every array fits the file: only the table is large
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({"bomb": str(folder)})],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    kind, message = out["bomb"]
    assert kind == "StoreFormatError" and "field 'index_params.nlist' is 4, but index.faiss holds 8000" in message
    assert out["peak_mib"] < 1024, out["peak_mib"]  # the 1.1 GiB table was never built


def _ivf_pq(index: Any) -> Any:
    import faiss

    idx = faiss.downcast_index(index)
    return faiss.downcast_index(idx.base_index) if isinstance(idx, faiss.IndexRefine) else idx


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("kind", ["ivf_pq8", "ivf_pq4_sq8"])
def test_a_loaded_ivf_pq_store_searches_exactly_as_the_saved_one(kind: str, mmap: bool, tmp_path: Path) -> None:
    import faiss

    before = KLStore(**KINDS[kind])  # type: ignore[arg-type]
    before.add(gaussians=random_gaussians(ROWS, 8, seed=3), ids=[f"d{i}" for i in range(ROWS)])
    before.save(tmp_path / "store")
    after = KLStore.load(tmp_path / "store", mmap=mmap)
    queries = random_gaussians(20, 8, seed=5)
    for store in (before, after):
        store.nprobe = 2
    got, want = after.search_batch(queries, k=10), before.search_batch(queries, k=10)
    assert [[(r.id, r.score) for r in rs] for rs in got] == [[(r.id, r.score) for r in rs] for rs in want]
    old, new = _ivf_pq(before._engine.index), _ivf_pq(after._engine.index)
    assert new.use_precomputed_table == old.use_precomputed_table
    table = faiss.rev_swig_ptr(new.precomputed_table.data(), new.precomputed_table.size())
    expected = faiss.rev_swig_ptr(old.precomputed_table.data(), old.precomputed_table.size())
    assert np.array_equal(table, expected)
    if kind == "ivf_pq8":
        assert new.use_precomputed_table == 1 and new.precomputed_table.size() > 0
    x = np.random.default_rng(7).normal(size=(20, old.d)).astype(np.float32)
    faiss.extract_index_ivf(before._engine.index).nprobe = faiss.extract_index_ivf(after._engine.index).nprobe = 4
    for a, b in zip(after._engine.index.search(x, 10), before._engine.index.search(x, 10), strict=True):
        assert np.array_equal(a, b)  # FAISS's own distances and labels, bit for bit
