"""How a :class:`~kl_retrievers.store.faiss.KLStore` searches: its FAISS engines over a :class:`DocumentTable`.

An engine owns the FAISS index over the table's rows (index entry ``i`` is row ``i``) and answers
"the exact top ``k`` of these allowed rows" with float64 ``-KL`` scores:

* :class:`FlatEngine` (``"flat"``): ``IndexFlatIP`` over the float32 rewrite ``d~`` of every mean
  centred on the documents' mean (the first batch's, chosen again where that pays); candidates re-scored
  in float64 and proven complete by the float32 error bound (:func:`~kl_retrievers.gaussian.refine_top_k`),
  so results are exact.
* :class:`ApproxEngine` (``"hnsw"`` / ``"ivf"``, optional ``"sq8"`` / ``"pq"`` compression and
  ``refine``): the MIPS -> L2 reduction of METHOD.md (shared with Milvus, ``reduction to L2`` in
  :mod:`kl_retrievers.gaussian`), a candidate pool per query, trimmed in float32 only as far as a
  bound on the float32 error allows, then re-scored in float64.

Both fall back to float64 scoring of every allowed row where an index cannot help (few allowed
rows, an index not built yet). An HNSW graph's groups of identical documents, and the rows no search
of it reaches, are tracked apart (:class:`~kl_retrievers.store._hnsw_copies.HnswCopies`); the engine
scores those rows with every query. FAISS is imported on first use (:func:`_faiss`), not with this module.

Examples:
    >>> import numpy as np
    >>> from kl_retrievers.store import KLStore
    >>> store = KLStore(index_type="hnsw")
    >>> type(store._engine).__name__, type(KLStore()._engine).__name__
    ('ApproxEngine', 'FlatEngine')
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from kl_retrievers.gaussian import (
    CENTRE_GAIN,
    FLOAT32_UNIT_ROUNDOFF,
    Gaussians,
    _reduction_extra,
    centre_document_vectors,
    exact_top_k,
    float32_score_bound,
    float64_top_k,
    kl_query_constant,
    kl_query_vectors,
    means_centre,
    neg_kl_rows,
    pool_terms,
    reduce_document_vectors,
    reduce_query_vectors,
    refine_top_k,
    rewrite_block_norms,
    score_vectors_float32,
    shift_document_vectors,
    top_k_rows,
)
from kl_retrievers.store._base import IndexType, StoreFormatError
from kl_retrievers.store._format import CENTRE_FIELDS, BlockCheck, centre_from_config, check_index_file
from kl_retrievers.store._hnsw_copies import NO_HASHES, HnswCopies, gaussian_hashes
from kl_retrievers.store._table import DocumentTable

if TYPE_CHECKING:
    from kl_retrievers.store.faiss import Compression, Refine

logger = logging.getLogger(__name__)

# Elements (queries x candidates x dims) re-scored per block, and rows per block when building.
_RESCORE_BLOCK = 1 << 22
_BUILD_BLOCK = 32768
# New rows' float32 flat vectors (elements) kept from the check in add() to the index, not recomputed.
_FLAT_KEEP_ELEMENTS = 1 << 24
#: Queries whose rescue rows are scored at once (bounds the memory of a large batch).
_RESCUE_QUERY_BLOCK = 1024
#: Most threads for the numpy re-scoring of candidate pools (numpy releases the GIL in its loops); fewer
#: where the process may run on fewer CPUs or FAISS uses fewer OpenMP threads (:func:`_rescore_threads`).
_RESCORE_THREADS = 4
#: Values (rows x vector length) per block where a float64 rewrite of rows is computed (an approximate
#: index's training sample, the flat index's vectors): each float64 temporary of a block is 32 MB.
_BLOCK_ELEMENTS = 1 << 22
#: The largest float16 value: ``refine="fp16"`` copies of reduced vectors (coordinates up to ``M``) above it are inf.
FLOAT16_MAX = 65504.0
#: The largest norm bound ``M`` of an index trained by k-means (IVF, or PQ compression): FAISS computes
#: float32 squared L2 distances between reduced vectors (norm ``M``) and centroids, up to ``(2M)^2``;
#: above ``sqrt(float32 max) / 8`` (about 2.3e18) they could overflow, and an overflowing k-means
#: assignment aborts the process (``invalid cluster assignment``). HNSW (flat or SQ8 codes) trains no
#: k-means and has no such bound.
MAX_NORM_BOUND = math.sqrt(float(np.finfo(np.float32).max)) / 8.0
#: Live rows (spread over the table) whose float32 error bounds decide whether a new flat centre pays.
_RECENTRE_SAMPLE = 2048
#: Most values (rows x ``2k + 1``) of the float32 ``d~`` an engine keeps for its exact path
#: (:meth:`FaissEngine._kept_vectors`): 128 MB; a larger table is rewritten block by block at each exact search.
_KEPT_VECTORS_MAX = 1 << 25
#: Kept ``d~`` are extended by appended rows around their centre (:meth:`FaissEngine.rows_appended`) while the
#: largest block norms of every kept row stay within this factor of those at the build (the float32 error bound of
#: an exact search grows with them); past it they are built again, around the mean of every row.
_KEPT_NORM_GROWTH = 4.0
#: At most this many documents far out from the others are scored exactly with every query (:func:`_far_out`).
_FAR_ROWS = 64
#: A document is far out where the norm of its centred, shifted ``d~`` exceeds this many times the
#: ``_FAR_ROWS + 1``-th largest such norm in the index (:func:`_far_out`).
_FAR_FACTOR = 4.0
_NO_ROWS = np.zeros(0, dtype=np.int64)
#: ``(rows, norms)``: the ``_FAR_ROWS + 1`` largest norms of an index's rows (:func:`_largest_norms`).
_TopNorms = tuple[np.ndarray, np.ndarray]
_NO_TOP: _TopNorms = (_NO_ROWS, np.zeros(0))
#: A rebuild's live rows as its norm pass leaves them where its sample is every live row
#: (:meth:`ApproxEngine._norm_pass`): their float32 reduced vectors, and the norms of their centred, shifted ``d~``.
_Reduced = tuple[np.ndarray, np.ndarray]


class _Kept(NamedTuple):
    """The float32 ``d~`` an engine keeps for its exact path (:meth:`FaissEngine._kept_vectors`).

    ``vectors`` and ``norms`` are the first rows of ``room`` (buffers grown by doubling as rows are appended,
    :meth:`FaissEngine.rows_appended`), so an append copies the kept rows only when the buffers fill up.
    """

    version: int  # the table version they are exact for
    centre: np.ndarray  # the vector every mean was centred on
    vectors: np.ndarray  # float32 d~ of every row, (n_rows, width)
    norms: np.ndarray  # rewrite_block_norms of each, (n_rows, 3)
    room: tuple[np.ndarray, np.ndarray]  # the buffers vectors and norms are the first rows of
    built_top: np.ndarray  # the largest block norms at the build around centre (see _KEPT_NORM_GROWTH)


def _faiss() -> Any:
    """The ``faiss`` module, imported on first use (typed ``Any``: the SWIG stubs miss keyword arguments).

    The first call also registers a fork handler (:func:`_register_fork_handler`, once per process), so
    a search of ours in a child made by ``fork`` cannot hang on the parent's OpenMP threads.
    """
    import faiss

    if not _FORK_HANDLER[0]:
        _register_fork_handler(faiss)
    return faiss


#: ``[True]`` once :func:`_register_fork_handler` has run in this process (a forked child inherits both
#: the flag and the registration). No lock: a lock held by another thread at a fork would stay held in
#: the child, while two threads racing here at most register the (idempotent) handler twice.
_FORK_HANDLER = [False]


def _register_fork_handler(faiss: Any) -> None:
    """Run ``faiss.omp_set_num_threads(1)`` in every child this process forks from now on.

    FAISS's OpenMP runtime (the ``libgomp`` bundled with faiss-cpu) keeps a pool of worker threads
    once the parent has used it (a flat search over 10,000+ documents, a batch of queries, building an
    HNSW or IVF index). A ``fork`` copies only the calling thread, so the child's first parallel FAISS
    region waits forever for workers that do not exist (``multiprocessing``'s default ``fork`` start
    method on Linux, ``gunicorn --preload``). On one thread each parallel region runs on the calling
    thread alone and the pool is never woken; two threads still hang. So the child's FAISS (and the
    store's re-scoring, :func:`_rescore_threads`) runs on one thread. Raising it again in the child
    (``faiss.omp_set_num_threads(n)``, ``n > 1``) can bring the hang back: a child that needs threaded
    FAISS should be started with the ``spawn`` method. Registered at our first use of FAISS (even where
    the user imported ``faiss`` before us), which precedes any index or search of ours, so it covers
    every fork after which the parent could have started the pool through us; a fork before that, after
    the user's own threaded FAISS calls, is not covered.
    A no-op where ``os.register_at_fork`` does not exist (not POSIX).

    Args:
        faiss: The imported ``faiss`` module.
    """
    _FORK_HANDLER[0] = True
    set_threads = getattr(faiss, "omp_set_num_threads", None)
    register = getattr(os, "register_at_fork", None)
    if set_threads is None or register is None:
        return

    def _fork_handler() -> None:
        # In the child, right after fork: no logging (its lock may be held by a thread that no longer
        # exists) and no import; an exception here would only be printed, so none is raised.
        with contextlib.suppress(Exception):
            set_threads(1)

    register(after_in_child=_fork_handler)


def _native_path(path: Path) -> str | None:
    """``str(path)`` where FAISS can open it by name, else ``None``.

    FAISS takes a file name as a UTF-8 ``char *``: a name that is not valid UTF-8 on disk (``os.fsdecode``
    keeps its bytes as lone surrogates, e.g. a latin-1 ``\\xe9``) cannot reach it, nor can one whose
    file-system encoding is not UTF-8. Such files are opened here and passed as a stream (or a
    ``/proc/self/fd`` name where FAISS must map the file itself).
    """
    name = str(path)
    try:
        return name if name.encode("utf-8") == os.fsencode(name) else None
    except UnicodeError:
        return None


def _read_index(path: Path, mmap: bool) -> tuple[Any, bool]:
    """Read a FAISS index (memory-mapped where FAISS can); ``(index, viewed)``; FAISS errors are StoreFormatError.

    A name FAISS cannot take (:func:`_native_path`) is read through a Python stream, or memory-mapped
    through its ``/proc/self/fd`` name; where there is no such name, ``mmap=True`` raises StoreFormatError.
    The file's array lengths are checked first (:func:`~kl_retrievers.store._format.check_index_file`): FAISS
    allocates an array's length before it reads the array, so an edited length would cost that memory. An
    IVF-PQ index is read without its precomputed table (``nlist x M x 2^nbits`` floats, which a small file can
    make a GiB): :meth:`FaissEngine.attach` builds it once the sizes are the config's (:func:`_precompute_table`).
    """
    check_index_file(path)
    faiss = _faiss()
    name = _native_path(path)
    flags = faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE
    if mmap:
        if name is None and not os.path.isdir("/proc/self/fd"):
            raise StoreFormatError(
                f"cannot memory-map FAISS index {path!r}: FAISS maps files by name, and this name is not "
                "valid UTF-8; load with mmap=False or move the store to a folder whose name is UTF-8"
            )
        fd = None if name is not None else os.open(path, os.O_RDONLY)
        try:
            return faiss.read_index(name or f"/proc/self/fd/{fd}", faiss.IO_FLAG_MMAP_IFC | flags), True
        except (RuntimeError, AttributeError) as exc:
            logger.info("memory-mapped index read not supported (%s); reading into memory", exc)
        finally:
            if fd is not None:
                os.close(fd)
    try:
        if name is not None:
            return faiss.read_index(name, flags), False
        with open(path, "rb") as f:
            return faiss.read_index(faiss.PyCallbackIOReader(f.read), flags), False
    except RuntimeError as exc:
        raise StoreFormatError(f"cannot read FAISS index {path}: {str(exc).splitlines()[0][:300]}") from exc


def _precompute_table(index: Any) -> None:
    """Build the precomputed table of an IVF-PQ ``index`` (or of its refine stage's base) that :func:`_read_index`
    skipped, as FAISS builds it when it reads one (``by_residual`` lists of a trained index)."""
    faiss = _faiss()
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexRefine):
        idx = faiss.downcast_index(idx.base_index)
    if isinstance(idx, faiss.IndexIVFPQ) and idx.is_trained and idx.by_residual:
        idx.use_precomputed_table = 0  # FAISS chooses the kind of table, as when it reads the index
        idx.precompute_table()


def _write_index(path: Path, index: Any) -> None:
    """Write ``index`` to ``path``; a name FAISS cannot take (:func:`_native_path`) through a Python stream."""
    faiss = _faiss()
    name = _native_path(path)
    if name is not None:
        faiss.write_index(index, name)
        return
    with open(path, "wb") as f:
        writer = faiss.PyCallbackIOWriter(f.write)
        faiss.write_index(index, writer)
        del writer  # flushes its buffer into f


def _disown(*objects: Any) -> None:
    """Hand SWIG-wrapped FAISS objects to the C++ index that now owns (and frees) them."""
    for obj in objects:
        obj.this.disown()


#: Training points per k-means centroid below which FAISS warns (its ``min_points_per_centroid`` default).
_POINTS_PER_CENTROID = 39
#: An index trained by k-means (IVF lists, PQ codebooks) warns once its store holds more than this many times the
#: documents it was built over (:meth:`ApproxEngine.stale_training`): it is not retrained as documents are added.
STALE_GROWTH = 4


def _quiet_clustering(index: Any) -> list[tuple[str, int]]:
    """Turn off FAISS's stderr warning about few training points in each k-means of ``index``.

    Returns:
        ``(what, number of centroids)`` of each k-means training ``index`` runs: the coarse
        quantizer of an IVF index (``"lists"``), the product quantizer's sub-quantizers
        (``"codes per sub-quantizer"``). The store logs the same advice once
        (``ApproxEngine._warn_few_training_points``).
    """
    faiss = _faiss()
    out: list[tuple[str, int]] = []
    if not isinstance(index, faiss.Index):  # not a FAISS index (a stand-in): nothing to quieten
        return out
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexRefine):
        base = faiss.downcast_index(base.base_index)
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(base))  # IndexIVFPQ etc., with its pq
    except RuntimeError:  # not an IVF index
        ivf = None
    if ivf is not None:
        ivf.cp.min_points_per_centroid = 1
        out.append(("lists", int(ivf.nlist)))
    storage = getattr(base, "storage", None)  # an HNSW index's codes
    holder = ivf if ivf is not None else None if storage is None else faiss.downcast_index(storage)
    pq = getattr(holder, "pq", None)
    if pq is not None:
        pq.cp.min_points_per_centroid = 1
        out.append(("codes per sub-quantizer", int(pq.ksub)))
    return out


def _rescore_threads() -> int:
    """Threads for re-scoring, read at each use: at most :data:`_RESCORE_THREADS`, the CPUs this process may
    run on (``os.sched_getaffinity``: ``taskset``, a container's CPU set) and ``faiss.omp_get_max_threads()``
    (``OMP_NUM_THREADS``, or ``faiss.omp_set_num_threads``), so one setting limits FAISS and the re-scoring."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        omp = int(_faiss().omp_get_max_threads())
    except (ImportError, AttributeError):
        omp = cpus
    return max(1, min(_RESCORE_THREADS, cpus, omp))


def _query_blocks(nq: int, per_query: int, fn: Callable[[int, int], None]) -> None:
    """Call ``fn(start, stop)`` over blocks of queries, on several threads when the work is large.

    ``per_query`` is the number of array elements one query touches; a block holds at most
    ``_RESCORE_BLOCK`` of them. Blocks write disjoint rows of their output, so they can run at once.
    """
    step = max(1, _RESCORE_BLOCK // max(1, per_query))
    threads = _rescore_threads() if nq * per_query >= 1 << 20 else 1
    if threads > 1:
        step = min(step, -(-nq // threads))
    starts = range(0, nq, step)
    if threads == 1 or len(starts) == 1:
        for s in starts:
            fn(s, min(nq, s + step))
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(starts))) as pool:
        for _ in pool.map(lambda s: fn(s, min(nq, s + step)), starts):
            pass


def _block_rows(width: int) -> int:
    """Rows per block of vectors of length ``width`` (:data:`_BLOCK_ELEMENTS`)."""
    return max(1, _BLOCK_ELEMENTS // max(1, width))


def _first_pool_margin(kk: int) -> int:
    """Extra float32 candidates in the first pool of every exact search for ``kk`` results (:func:`refine_top_k`).

    A first pool of ``kk + kk // 2 + 16`` is usually provably enough. The float32 error bound is far
    above the actual error (about 300x on embedding-like data: means near the unit sphere, variances
    near 1, SciFact's with the default model), so the pool must reach that far below the ``kk``-th
    score. ``max(8, kk // 4)`` did not, for a third of SciFact's queries and nearly every query on
    unit-norm Gaussians at ``kk`` = 50 to 100, each then re-scoring a pool 8x as large in float64 (up to
    5 times the CPU time of the whole search; the results are exact either way). Used by the flat index's
    search, the exact search without the index (:meth:`FaissEngine._exact_top_k`) and the exact scoring of
    an approximate search's rescue rows (:meth:`ApproxEngine._with_rescue`).
    """
    return kk // 2 + 16


def _shifted_bound(first: np.ndarray, rest: np.ndarray) -> float:
    """The largest norm of ``d~`` rows after their first coordinate is shifted by its mean (as
    :func:`~kl_retrievers.gaussian.worth_centring` measures it), from each row's first coordinate and the
    squared norm of its other coordinates."""
    return float(np.sqrt(((first - first.mean()) ** 2 + rest).max()))


def _row_sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of each row of ``x`` (as :func:`~kl_retrievers.gaussian.reduce_document_vectors`
    computes it for its extra coordinate)."""
    return np.einsum("ij,ij->i", x, x)


def _row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row of ``x``."""
    return np.sqrt(_row_sq_norms(x))


def _largest_norms(top: _TopNorms, rows: np.ndarray, norms: np.ndarray) -> _TopNorms:
    """``top`` merged with more ``rows`` and their ``norms``: the ``_FAR_ROWS + 1`` largest norms and their rows."""
    r, n = np.concatenate([top[0], rows.astype(np.int64)]), np.concatenate([top[1], norms.astype(np.float64)])
    if n.size > _FAR_ROWS + 1:
        keep = np.argpartition(-n, _FAR_ROWS)[: _FAR_ROWS + 1]
        r, n = r[keep], n[keep]
    return r, n


def _far_out(top: _TopNorms) -> np.ndarray:
    """The rows far out from the others (sorted): of the ``_FAR_ROWS + 1`` largest norms ``top``, those above
    ``_FAR_FACTOR`` times the smallest of them; none in an index of ``_FAR_ROWS`` rows or fewer.

    One document far from the others sets the norm bound ``M`` of the reduction alone: its reduced vector
    is far from every other, so neither an HNSW graph nor an IVF list leads a search to it, not even
    its own Gaussian's (docs/ann.md, 'One outlier document'). The engine scores these rows exactly
    with every query (:meth:`ApproxEngine.top_k`); in ordinary data there are none.
    """
    rows, norms = top
    if norms.size <= _FAR_ROWS:
        return _NO_ROWS
    return np.sort(rows[norms > _FAR_FACTOR * norms.min()])


def _sample_rows(n: int) -> np.ndarray:
    """Up to 8 row numbers spread over ``n`` rows (first and last included): the rows checked on load."""
    return np.unique(np.linspace(0, n - 1, num=min(n, 8)).astype(np.int64))


def _overflows(g: Gaussians, centre: np.ndarray) -> bool:
    """Whether the float32 ``d~`` of ``g`` around ``centre`` overflows (:func:`score_vectors_float32` refuses it)."""
    try:
        score_vectors_float32(g, "document", centre=centre)
    except ValueError:
        return True
    return False


def _check_rows(got: np.ndarray, expected: np.ndarray, rows: np.ndarray, atol: float | np.ndarray, what: str) -> None:
    """Raise ``StoreFormatError(what + details)`` unless ``got`` matches ``expected`` (rtol 1e-5, ``atol``)."""
    got64, exp64 = got.astype(np.float64), expected.astype(np.float64)
    err = np.abs(got64 - exp64) - 1e-5 * np.abs(exp64) - atol
    if np.all(err <= 0):
        return
    i, j = np.unravel_index(int(np.argmax(err)), err.shape)
    raise StoreFormatError(
        f"{what}: row {int(rows[i])} of index.faiss has {float(got64[i, j]):.6g} at coordinate {int(j)}, but the "
        f"stored Gaussian gives {float(exp64[i, j]):.6g} with the configured numbers (a damaged or edited config.json?)"
    )


def _index_structure(index: Any) -> dict[str, Any]:
    """What a FAISS index is, in the config's terms: ``index_type``, ``compression``, ``refine`` and sizes.

    Keys: ``index_type`` (``"flat"`` / ``"hnsw"`` / ``"ivf"`` or the FAISS class name), ``compression``
    (``None`` / ``"sq8"`` / ``"pq"`` or a class name), ``refine`` (``None`` / ``"sq8"`` / ``"fp16"``,
    ``"fp32"`` for float32 copies (:meth:`ApproxEngine.refine_codes`), or a description), and where
    they apply ``metric``, ``hnsw_m``, ``nlist``, ``pq_m``, ``pq_nbits``.
    """
    faiss = _faiss()
    idx = faiss.downcast_index(index)
    out: dict[str, Any] = {"refine": None}
    if isinstance(idx, faiss.IndexRefine):
        ref = faiss.downcast_index(idx.refine_index)
        qtypes = {faiss.ScalarQuantizer.QT_8bit: "sq8", faiss.ScalarQuantizer.QT_fp16: "fp16"}
        if isinstance(ref, faiss.IndexScalarQuantizer) and ref.sq.qtype in qtypes:
            out["refine"] = qtypes[ref.sq.qtype]
        elif isinstance(ref, faiss.IndexFlat):
            out["refine"] = "fp32"
        else:
            out["refine"] = f"{type(ref).__name__} codes"
        idx = faiss.downcast_index(idx.base_index)
    name = type(idx).__name__
    out["metric"] = int(idx.metric_type)
    if isinstance(idx, faiss.IndexHNSW):
        out["index_type"], out["hnsw_m"] = "hnsw", int(idx.hnsw.nb_neighbors(1))
        storage = faiss.downcast_index(idx.storage)
        out["metric"] = int(storage.metric_type)
        if isinstance(storage, faiss.IndexFlat):
            out["compression"] = None
        elif isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
            out["compression"] = "sq8"
        elif isinstance(storage, faiss.IndexPQ):
            out["compression"], out["pq_m"], out["pq_nbits"] = "pq", int(storage.pq.M), int(storage.pq.nbits)
        else:
            out["compression"] = f"{type(storage).__name__} storage"
    elif isinstance(idx, faiss.IndexIVF):
        out["index_type"], out["nlist"] = "ivf", int(idx.nlist)
        if isinstance(idx, faiss.IndexIVFFlat):
            out["compression"] = None
        elif isinstance(idx, faiss.IndexIVFScalarQuantizer) and idx.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
            out["compression"] = "sq8"
        elif isinstance(idx, (faiss.IndexIVFPQ, faiss.IndexIVFPQFastScan)):
            out["compression"], out["pq_m"], out["pq_nbits"] = "pq", int(idx.pq.M), int(idx.pq.nbits)
        else:
            out["compression"] = f"{name} lists"
    elif isinstance(idx, faiss.IndexFlat):
        out["index_type"], out["compression"] = "flat", None
    else:
        out["index_type"], out["compression"] = name, None
    return out


def _check_structure(index: Any, expected: dict[str, Any], cfg_path: Path) -> None:
    """``StoreFormatError`` naming the config field, its value and the index's, for the first difference.

    ``expected["metric"]`` is one FAISS metric or a tuple of those accepted; any other value may be a
    tuple too: the config's value as written first, then the other structures it accepts.
    """
    got = _index_structure(index)
    fields = ("index_type", "compression", "refine", "hnsw_m", "nlist", "pq_m", "pq_nbits")
    for key in fields:
        want = expected.get(key)
        accepted = want if isinstance(want, tuple) else (want,)
        if key in expected and got.get(key) not in accepted:
            field = key if key == "index_type" else f"index_params.{key}"
            note = ""
            if key == "refine" and accepted[0] == "fp16":
                note = (
                    f"; a refine='fp16' index holds float16 copies, or float32 ('fp32') ones where field 'norm_bound' "
                    f"exceeds float16's largest value {FLOAT16_MAX:.0f}"
                )
            raise StoreFormatError(
                f"{cfg_path}: field {field!r} is {accepted[0]!r}, but index.faiss holds {got.get(key)!r} "
                f"(a {got['index_type']} index; compression {got['compression']!r}, refine {got['refine']!r}){note}"
            )
    if "metric" in expected:
        allowed = expected["metric"] if isinstance(expected["metric"], tuple) else (expected["metric"],)
        if got["metric"] not in allowed:
            shown = " or ".join(str(m) for m in allowed)
            raise StoreFormatError(
                f"{cfg_path}: index.faiss uses FAISS metric {got['metric']}; a {expected['index_type']} store "
                f"searches with metric {shown}"
            )


class Settings(Protocol):
    """The settings an engine reads from its store, at every use (so a change to the store applies at once)."""

    index_type: IndexType
    hnsw_m: int
    ef_search: int
    ef_construction: int
    nlist: int
    nprobe: int
    compression: Compression | None
    pq_m: int
    pq_nbits: int
    refine: Refine | None
    rescore_pool: int
    rescore_factor: int
    norm_headroom: float
    exact_threshold: int
    seed: int


class FaissEngine(ABC):
    """What both engines share: the index, its life cycle, and exact float64 scoring of table rows.

    Args:
        settings: The store (its public settings are read at every use). The engine holds it weakly (a
            :func:`weakref.proxy`): the store holds its engine, and a cycle between them would leave a dropped
            store, its FAISS index and its rows' memory to the cyclic garbage collector, which runs too seldom
            for that memory (loading and dropping a store of 30,000 documents 500 times grew the process by
            1.3 GB). An engine is used only through its store.
        table: The rows the index numbers.
    """

    def __init__(self, settings: Settings, table: DocumentTable) -> None:
        self.settings: Settings = weakref.proxy(settings)
        self.table = table
        self.index: Any = None
        self.viewed = False  # memory-mapped FAISS data that must not be mutated
        #: Full rebuilds caused by a document norm above ``M`` (approximate indexes).
        self.rebuild_count = 0
        self._ranks = np.zeros(0, dtype=np.int64)  # -0, -1, -2, ...: see tie_rank
        self._kept: _Kept | None = None  # see _kept_vectors
        # (table version, rows the exact searches at that version rewrote one by one): see _kept_vectors
        self._kept_rewritten = (-1, 0)
        self._kept_failed = -1  # the table version whose kept vectors could not be built (float32 overflow)
        self._kept_lock = threading.Lock()  # one build at a time; taken without waiting

    def tie_rank(self) -> np.ndarray:
        """The order of rows whose exact scores tie, one entry per row, lower first: the higher row first.

        Every search path (FAISS candidates, the exact and float64 paths, a filter) ranks exactly
        tied documents this way, the later added (the highest row; compaction keeps the order)
        first, which is the order ``IndexFlatIP`` gives ties. One array ``-row`` is kept and
        grown, so a query allocates nothing for it.
        """
        n, ranks = self.table.n_rows, self._ranks
        if ranks.size < n:
            ranks = -np.arange(max(n, ranks.size + ranks.size // 4), dtype=np.int64)
            self._ranks = ranks
        return ranks[:n]

    # ------------------------------------------------------------ life cycle
    def reset(self, k: int) -> None:
        """A fresh (empty) index for ``k``-dimensional Gaussians, or none until enough rows exist."""
        self.index, self.viewed = None, False
        self._forget_kept()

    @property
    def norm_bound(self) -> float | None:
        """``M`` of the MIPS -> L2 reduction (``None`` for the flat index)."""
        return None

    @property
    def index_offset(self) -> float:
        """The shift ``o`` of the first coordinate of the centred ``d~`` (``0`` for the flat index)."""
        return 0.0

    @property
    def compacts_at_once(self) -> bool:
        """Whether tombstones are dropped at once rather than past ``compact_threshold``.

        Not on the flat index: a compaction rebuilds the table's id, text and metadata lists and its id
        map, and copies every row (36 ms at 100,000 x 64: ``python benchmarks/store_writes.py``), so a
        one-document upsert or delete that compacted at once paid that under the write lock every time.
        Tombstoned rows are left out of its searches by the same selector a metadata filter uses, exactly.
        """
        return False

    def prepare(self, mean: np.ndarray, var: np.ndarray) -> Any:
        """Check new rows before anything changes (``ValueError`` names a bad row); passed to :meth:`add_rows`."""
        return None

    def own(self) -> None:
        """Replace a memory-mapped index by an owned copy before mutating it.

        The index is written to an in-memory buffer that is then read back (not ``faiss.clone_index``:
        its copy still views the mapped file, and FAISS aborts the process when it changes one). The
        buffer is handed from the writer to the reader, so the copy costs the buffer and the new
        index (``faiss.serialize_index`` / ``deserialize_index`` copy the buffer twice more, as numpy).
        """
        if self.index is not None and self.viewed:
            faiss = _faiss()
            writer = faiss.VectorIOWriter()
            faiss.write_index(self.index, writer)
            reader = faiss.VectorIOReader()
            reader.data.swap(writer.data)
            del writer
            self.index = faiss.read_index(reader)
            self.viewed = False

    @abstractmethod
    def add_rows(self, start: int, prepared: Any) -> None:
        """Index the table's rows from ``start`` on (just appended)."""

    @abstractmethod
    def remove_rows(self, dead: np.ndarray) -> None:
        """Drop the index entries of rows the table just compacted away (``dead``: their old numbers)."""

    def rebuild(self, forced: bool = False) -> None:  # noqa: B027 - the flat index has nothing to retrain
        """Rebuild (and retrain) the index from the table (approximate indexes only).

        Args:
            forced: Asked for (``KLStore.rebuild``): train on as few rows as FAISS can, not only
                on as many as the automatic build waits for.
        """

    def stale_training(self) -> str | None:
        """A warning, once, that the store has outgrown the sample its index was trained on (``None``: no warning).

        The flat index trains nothing; see :meth:`ApproxEngine.stale_training`.
        """
        return None

    def drop_entries_from(self, n: int) -> None:
        """Drop index entries numbered ``n`` and above (rows the table no longer holds, after a failed add)."""
        self._forget_kept()
        if self.index is not None and self.index.ntotal > n:
            self.own()
            self.index.remove_ids(_faiss().IDSelectorRange(n, self.index.ntotal))

    def repair(self) -> None:  # noqa: B027 - the flat index is never left partial (remove_ids is one FAISS call)
        """Rebuild an index that an interrupted write left holding only some rows (approximate indexes only)."""

    def config(self) -> dict[str, Any]:
        """The engine's numbers saved in ``config.json``."""
        return {"norm_bound": self.norm_bound, "index_offset": 0.0, "flat_centre": None, "index_centre": None}

    def restore(self, config: dict[str, Any], cfg_path: Path) -> BlockCheck | None:
        """Take a saved store's numbers from its (validated) config, before its rows are read.

        Returns:
            What to run on each block of rows as they are read (see :func:`read_gaussians`), or ``None``.
        """
        return None

    @property
    @abstractmethod
    def width(self) -> int:
        """Length of the vectors in the index."""

    @abstractmethod
    def expected_structure(self) -> dict[str, Any]:
        """What the index must be, in the terms of :func:`_index_structure` (from the settings)."""

    def attach(self, index: Any, viewed: bool, cfg_path: Path) -> None:
        """Use the index read from a saved store (after its rows), checked against the config and the rows.

        ``config.json`` is not covered by the checksums, so the index's kind, compression, refine
        stage and sizes must be the config's (:meth:`expected_structure`; a mismatch would crash
        inside FAISS or search with the wrong settings), it must hold one entry per row, and the
        engines compare a few of its rows with those rebuilt from the stored Gaussians.

        Raises:
            StoreFormatError: Naming the config field that does not match the index.
        """
        _check_structure(index, self.expected_structure(), cfg_path)
        n, d = self.table.n_rows, self.width
        if index.d != d or index.ntotal != n:
            raise StoreFormatError(f"index has d={index.d}, ntotal={index.ntotal}; expected d={d}, ntotal={n}")
        _precompute_table(index)  # skipped by _read_index until nlist, pq_m and pq_nbits were the config's
        self.index, self.viewed = index, viewed

    def write(self, path: Path) -> None:
        """Write the index to ``path``."""
        _write_index(path, self.index)

    # ----------------------------------------------------------------- search
    @abstractmethod
    def top_k(
        self, qg: Gaussians, kk: int, mask: np.ndarray | None, n_allowed: int, filtered: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and exact ``-KL`` scores of each query's top ``kk`` among the allowed rows, best first.

        Args:
            qg: float64 query Gaussians.
            kk: Results per query (``<= n_allowed``).
            mask: Allowed rows (``None``: every row).
            n_allowed: How many rows are allowed.
            filtered: The mask comes from a metadata filter (not only tombstones).

        Returns:
            ``(rows, scores)``, shape ``(nq, kk)``; ``-1`` / ``-inf`` padding.
        """

    def _selector(self, mask: np.ndarray) -> Any:
        faiss = _faiss()
        allowed = np.flatnonzero(mask).astype(np.int64)
        if allowed.size * 32 < mask.size:
            return faiss.IDSelectorBatch(allowed)
        bitmap = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(bitmap)
        sel.referenced_bitmap = bitmap  # keep the buffer alive as long as the selector
        return sel

    def _rescore(self, qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Exact float64 ``-KL`` for candidate rows (``-inf`` for padding / disallowed)."""
        nq, c = labels.shape
        out = np.full((nq, c), -np.inf)
        if c == 0:
            return out
        docs, sumlogvar = self.table.gaussians, self.table.sumlogvar

        def block(s: int, e: int) -> None:
            lab = labels[s:e]
            score = neg_kl_rows(qg[s:e], docs, lab, doc_sumlogvar=sumlogvar)
            if mask is not None:
                score[~mask[np.where(lab < 0, 0, lab)]] = -np.inf
            out[s:e] = score

        _query_blocks(nq, c * int(qg.dim), block)
        return out

    def _forget_kept(self) -> None:
        """Let the kept ``d~`` of :meth:`_kept_vectors` go: the rows are about to change (a write step)."""
        self._kept = None

    def rows_tombstoned(self, before: int) -> None:
        """The table's rows were only tombstoned since its version ``before`` (a delete; callers hold the write lock).

        The rows keep their numbers and Gaussians, and the exact path leaves tombstones out (its mask), so the
        kept ``d~`` of :meth:`_kept_vectors` for version ``before`` stay exact: they are kept for the new version,
        with the count of rows rewritten since and a failed build's mark. Older ones are let go now, not at the
        next exact search.
        """
        now, kept = self.table.version, self._kept
        self._kept = None if kept is None or kept.version != before else kept._replace(version=now)
        if self._kept_rewritten[0] == before:
            self._kept_rewritten = (now, self._kept_rewritten[1])
        if self._kept_failed == before:
            self._kept_failed = now

    def rows_compacted(self, before: int, dead: np.ndarray) -> None:
        """The table just dropped its tombstones ``dead`` (their old numbers), its only change since its version
        ``before`` (a compaction; callers hold the write lock).

        The kept ``d~`` of :meth:`_kept_vectors` are per row, around a centre that stays valid: those for version
        ``before`` lose the same rows (:meth:`_compact_kept`) and are kept for the new version, with the count of
        rows rewritten since, so the exact search after a compaction (at every upsert or delete of an approximate
        index not built yet) reads them instead of computing every row's again. Kept ``d~`` of an older version
        are left to :meth:`rows_appended` (an add that compacted: its rows were appended since) or to the next
        search. Never fails the write.
        """
        table, kept = self.table, self._kept
        if self._kept_rewritten[0] == before and table.version == before + 1:
            self._kept_rewritten = (table.version, self._kept_rewritten[1])
        if kept is None or kept.version != before:
            return
        self._kept = None  # from here on a partly moved copy is never read (an interrupt, a failure)
        if table.version != before + 1 or len(kept.vectors) != table.n_rows + dead.size:
            return
        try:
            self._kept = self._compact_kept(kept, dead)._replace(version=table.version)
        except Exception as exc:  # an optimisation only (MemoryError): the write has happened
            logger.debug("kept d~ not compacted (%s: %s)", type(exc).__name__, exc)

    def rows_appended(self, before: int, start: int, dead: np.ndarray | None = None) -> None:
        """The table's rows from ``start`` on were just appended and indexed, and then (``dead``: the old numbers of
        the rows it dropped) its tombstones compacted, its only changes since its version ``before`` (an add or
        upsert; callers hold the write lock).

        Kept ``d~`` of :meth:`_kept_vectors` for version ``before`` lose the compacted rows (:meth:`_compact_kept`)
        and are extended by the new rows' ``d~`` around their centre (which stays), into buffers grown by
        doubling, so an add followed by exact searches costs the new rows' rewrite, not the whole table's. They
        are let go instead where the rows changed otherwise since (a rebuild), where a new row overflows float32
        around the centre, or where the largest block norms of the kept rows would grow past
        :data:`_KEPT_NORM_GROWTH` times those at the build (a float32 error bound that large would send exact
        searches to more candidate rounds): then the next exact search builds them again, around the mean of
        every row. Never fails the write.
        """
        table, kept = self.table, self._kept
        self._kept = None
        changes = 1 if dead is None else 2  # the append, then the compaction
        if kept is None or kept.version != before or table.version != before + changes or len(kept.vectors) != start:
            return
        try:
            if dead is not None:  # the kept rows all precede the appended ones, which follow them once compacted
                old = dead[dead < start]
                kept, start = self._compact_kept(kept, old), start - old.size
            self._kept = self._extend_kept(kept, start)
        except Exception as exc:  # an optimisation only (MemoryError): the write has happened
            logger.debug("kept d~ not extended by the new rows (%s: %s)", type(exc).__name__, exc)
        if self._kept is None:  # the searches had rewritten the table once already: the next one builds them
            self._kept_rewritten = (table.version, table.n_rows)

    @staticmethod
    def _compact_kept(kept: _Kept, dead: np.ndarray) -> _Kept:
        """``kept`` without its rows ``dead`` (ascending), the others moved up in place in its buffers, in order.

        Only the rows after the first dead one move, block by block: each block's rows come from rows at or after
        it, which no earlier block overwrote. The buffers are those of ``kept``: callers let it go first.
        """
        n = len(kept.vectors)
        if not dead.size:
            return kept
        live = np.ones(n, dtype=bool)
        live[dead] = False
        rows = np.flatnonzero(live)
        vectors, norms = kept.room
        step = _block_rows(vectors.shape[1])
        for s in range(int(dead[0]), rows.size, step):
            e = min(rows.size, s + step)
            vectors[s:e], norms[s:e] = vectors[rows[s:e]], norms[rows[s:e]]
        return kept._replace(vectors=vectors[: rows.size], norms=norms[: rows.size])

    def _extend_kept(self, kept: _Kept, start: int) -> _Kept | None:
        """``kept`` with the ``d~`` of the table's rows from ``start`` on appended (see :meth:`rows_appended`)."""
        table = self.table
        n, width = table.n_rows, kept.vectors.shape[1]
        if n * width > _KEPT_VECTORS_MAX:
            return None
        vectors, norms = kept.room
        if len(vectors) < n:  # amortised: the buffers at least double
            rows = max(n, min(2 * len(vectors), _KEPT_VECTORS_MAX // width))
            vectors, norms = np.empty((rows, width), dtype=np.float32), np.empty((rows, norms.shape[1]))
            vectors[:start], norms[:start] = kept.vectors, kept.norms
        limit = _KEPT_NORM_GROWTH * kept.built_top
        step = _block_rows(width)
        for s in range(start, n, step):
            e = min(n, s + step)
            g = Gaussians(np.asarray(table.mean[s:e]), np.asarray(table.var[s:e]), validate=False)
            try:
                v = score_vectors_float32(g, "document", centre=kept.centre, row_numbers=np.arange(s, e))
            except ValueError as exc:  # overflow around this centre; the mean of every row may fit
                logger.debug("kept d~ not extended by the new rows: %s", exc)
                return None
            b = rewrite_block_norms(v)
            if (b > limit).any():
                return None
            vectors[s:e], norms[s:e] = v, b  # rows past the kept ones: no search reads them
        return kept._replace(version=table.version, vectors=vectors[:n], norms=norms[:n], room=(vectors, norms))

    def _kept_vectors(self, allowed: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None:
        """``(centre, (d~, block norms))`` of every row for :func:`exact_top_k`, kept while the rows are unchanged.

        An exact search (a filter matching at most ``exact_threshold`` rows, an index not built yet) rewrites the
        ``d~`` of its ``allowed`` rows. Once the exact searches since the last change of the rows (the table's
        ``version``) have rewritten, together, at least as many rows as the table holds, the next one computes
        the float32 ``d~`` of every row around the mean of the means, and :func:`rewrite_block_norms` of each,
        and keeps them, so each later exact search reads the allowed rows' vectors instead of rewriting them.
        Searches between writes thus cost at most about twice what rewriting their allowed rows did, however
        few they are. The kept vectors are let go by every write step of the engine (:meth:`_forget_kept`) and
        by a search that finds them older than the rows; a delete that only tombstones rows keeps them
        (:meth:`rows_tombstoned`), a compaction drops the same rows from them (:meth:`rows_compacted`), and an add
        or upsert extends them by its new rows (:meth:`rows_appended`).

        ``None`` (the allowed rows rewritten at this search, around their own mean) until then, above
        :data:`_KEPT_VECTORS_MAX` values, while another search is computing them (one computes them at a
        time; the others do not wait), or where a row's ``d~`` around that centre overflows float32 (not tried
        again until the rows change). The centre is the mean of every row, so a filter allowing only rows
        far from it (one tenant's documents, offset from the others) gets larger float32 error bounds than
        around its own rows' mean: its searches may need more candidate rounds or fall back to float64
        scoring (their results stay exact). The count of rewritten rows is updated without a lock: concurrent
        searches may lose part of it, which only delays the build.

        Args:
            allowed: The rows this search allows (all rows without a filter).
        """
        table = self.table
        n, width = table.n_rows, 2 * table.mean.shape[1] + 1
        kept, version = self._kept, table.version
        if kept is not None:
            if kept.version == version:
                return kept.centre, (kept.vectors, kept.norms)
            self._kept = None  # older than the rows: let them go
        if n * width > _KEPT_VECTORS_MAX or self._kept_failed == version:
            return None
        counted, rewritten = self._kept_rewritten
        if counted != version:
            rewritten = 0
        if rewritten < n:
            self._kept_rewritten = (version, rewritten + allowed)
            return None
        if not self._kept_lock.acquire(blocking=False):
            return None  # another search is computing them
        try:
            kept = self._kept
            if kept is None or kept.version != version:
                kept = self._build_kept(version, n, width)
                if kept is None:
                    self._kept_failed = version
                    return None
                self._kept = kept
        finally:
            self._kept_lock.release()
        return kept.centre, (kept.vectors, kept.norms)

    def _build_kept(self, version: int, n: int, width: int) -> _Kept | None:
        """The kept ``d~`` of the table's ``n`` rows (``d~`` of ``width`` values) for :meth:`_kept_vectors`
        (``None``: overflow)."""
        table = self.table
        centre = means_centre(table.mean)
        vectors, norms = np.empty((n, width), dtype=np.float32), np.empty((n, 3))
        step = _block_rows(width)
        try:
            for s in range(0, n, step):
                e = min(n, s + step)
                g = Gaussians(np.asarray(table.mean[s:e]), np.asarray(table.var[s:e]), validate=False)
                vectors[s:e] = score_vectors_float32(g, "document", centre=centre, row_numbers=np.arange(s, e))
                norms[s:e] = rewrite_block_norms(vectors[s:e])
        except ValueError as exc:  # the rewrite around the allowed rows' mean may still fit
            logger.debug("no float32 d~ kept for exact searches: %s", exc)
            return None
        top = norms.max(axis=0) if n else np.zeros(norms.shape[1])
        return _Kept(version, centre, vectors, norms, (vectors, norms), top)

    def _exact_top_k(self, qg: Gaussians, kk: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``kk`` over every allowed row, without the index (:func:`exact_top_k`, reading the kept
        ``d~`` of :meth:`_kept_vectors` where there is one)."""
        ranks = self.tie_rank()
        rows = None if mask is None else np.flatnonzero(mask)
        kept = self._kept_vectors(self.table.n_rows if rows is None else int(rows.size))
        rows, scores = exact_top_k(
            qg,
            self.table.gaussians,
            kk,
            rows=rows,
            centre=None if kept is None else kept[0],
            margin=_first_pool_margin(kk),
            doc_sumlogvar=self.table.sumlogvar,
            tie_rank=ranks,
            doc_vectors=None if kept is None else kept[1],
        )
        return top_k_rows(scores, rows, kk, ranks)  # padded to kk


# ====================================================================== flat
class FlatEngine(FaissEngine):
    """Exact search: ``IndexFlatIP`` over the centred float32 ``d~``, made exact by the float32 error bound.

    -KL does not change when one vector is subtracted from every mean (queries too), so the rows
    are centred on the mean of the first batch added to the empty index (saved as ``flat_centre``),
    which keeps ``q~``, ``d~`` and their float32 error small. A store saved before centring has its
    vectors centred on 0. The float32 error bound of a search grows with the largest ``d~`` in the index,
    so documents far from the centre (one is enough) make it large, and searches fall back to float64
    scoring of every row (exact, but about 20 times slower). Once the documents that set the centre
    are deleted, the centre is chosen again, as the live documents' mean: by :meth:`rebuild` (always),
    and at a compaction where that at least halves the float32 error bound of a sample of the documents
    searched as queries (:meth:`_maybe_recentre`); each row's ``d~`` is then computed again into a new
    index (as costly as adding every document again). A loaded index centred on 0 (written as format
    version 1, which releases before centring read) is centred again only by :meth:`rebuild`, so that
    it stays readable by them. No centre helps while far-apart documents are all in the store.
    """

    def __init__(self, settings: Settings, table: DocumentTable) -> None:
        super().__init__(settings, table)
        self.centre: np.ndarray | None = None  # None: not chosen yet, or a store saved before centring
        # (id of the flat index, largest norm of each block of a d~ row in it): see _flat_norm_max
        self._flat_norm: tuple[int, np.ndarray] | None = None
        self._saved_norm: np.ndarray | None = None  # flat_norm_max of the config being loaded (restore -> attach)
        # False for a loaded index centred on 0 (format version 1, which releases before centring read): only
        # rebuild() centres it, so that adding to it keeps it readable by them
        self._auto_centre = True

    @property
    def width(self) -> int:
        return 2 * self.table.mean.shape[1] + 1

    def reset(self, k: int) -> None:
        super().reset(k)
        self.index = _faiss().IndexFlatIP(self.width)

    def config(self) -> dict[str, Any]:
        """The base numbers, ``flat_centre`` and ``flat_norm_max``: the largest norm of each block of the ``d~``
        rows in the index (an upper bound after deletions), which a load of verified files takes instead of
        reading every row of the index at its first search (:meth:`attach`)."""
        centre = None if self.centre is None else [float(x) for x in self.centre]
        bound = None if self.index is None else [float(x) for x in self._flat_norm_max()]
        return {**super().config(), "flat_centre": centre, "flat_norm_max": bound}

    def restore(self, config: dict[str, Any], cfg_path: Path) -> BlockCheck | None:
        k = self.table.mean.shape[1]
        centre_from_config(config, cfg_path, "index_centre", k)  # null in a flat store
        self.centre = centre_from_config(config, cfg_path, "flat_centre", k)
        self._auto_centre = self.centre is not None and bool(self.centre.any())
        saved = config.get("flat_norm_max")  # validated by read_config; None: not saved, or files not verified
        self._saved_norm = None if saved is None else np.asarray(saved, dtype=np.float64)
        return None

    def expected_structure(self) -> dict[str, Any]:
        faiss = _faiss()
        return {"index_type": "flat", "compression": None, "refine": None, "metric": faiss.METRIC_INNER_PRODUCT}

    def attach(self, index: Any, viewed: bool, cfg_path: Path) -> None:
        """Use a loaded ``IndexFlatIP``; a few of its rows must be the stored Gaussians' ``d~`` around ``flat_centre``.

        The index holds exactly the float32 rows :func:`score_vectors_float32` builds (rtol 1e-5
        leaves room for nothing but a different FAISS build); a damaged ``flat_centre`` would
        otherwise load and rank wrongly, since every query is centred on it.
        """
        super().attach(index, viewed, cfg_path)
        saved, self._saved_norm = self._saved_norm, None
        n = self.table.n_rows
        if not n:
            if saved is not None:
                self._flat_norm = (id(self.index), saved)
            return
        rows = _sample_rows(n)
        recon = _reconstruct(self.index, rows)
        if recon is None:
            logger.debug("flat index cannot reconstruct rows; flat_centre not checked against it")
            return
        centre = self._flat_centre()
        expected = self._block_vectors(np.asarray(self.table.mean[rows]), np.asarray(self.table.var[rows]), centre, 0)
        scale = np.abs(expected.astype(np.float64)).max(axis=1, keepdims=True)
        _check_rows(recon, expected, rows, 1e-5 * scale, f"{cfg_path}: field 'flat_centre' does not match index.faiss")
        if saved is not None:
            # Written by the save that wrote these (verified) files. The rows read above must lie under it: a
            # cheap check of a damaged or edited value (one below a row's norm would leave searches inexact).
            norms = rewrite_block_norms(recon)
            over = np.argwhere(norms > saved * (1.0 + 1e-9))  # room for the last bit of another summation order
            if over.size:
                i, b = (int(x) for x in over[0])
                raise StoreFormatError(
                    f"{cfg_path}: field 'flat_norm_max' holds {float(saved[b]):.17g} for block {b} of d~, below its "
                    f"norm {float(norms[i, b]):.17g} in row {int(rows[i])} of index.faiss (a damaged or edited "
                    "config.json?)"
                )
            self._flat_norm = (id(self.index), saved)

    def _flat_centre(self, batch_mean: np.ndarray | None = None) -> np.ndarray:
        """The vector every mean is centred on before its ``d~`` enters the index (see the class docstring)."""
        k = self.table.mean.shape[1]
        if self.index is not None and self.index.ntotal > 0:
            if self.centre is None:  # saved before centring
                self.centre = np.zeros(k)
            return self.centre
        if batch_mean is None or not len(batch_mean):
            return np.zeros(k)
        return means_centre(np.asarray(batch_mean))

    @staticmethod
    def _block_vectors(mean: np.ndarray, var: np.ndarray, centre: np.ndarray, first: int) -> np.ndarray:
        g = Gaussians(mean, var, validate=False)
        return score_vectors_float32(g, "document", centre=centre, row_numbers=np.arange(first, first + len(g)))

    def prepare(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
        """Check new rows (float32 means and variances) before anything changes.

        Returns:
            ``(centre, largest norm of each block of their d~, the float32 d~ rows in blocks
            (:func:`_block_rows`) when small enough to keep, else None)``: :meth:`add_rows` adds the
            blocks one by one, so the batch's vectors are never concatenated (which held them twice).

        Raises:
            ValueError: A row whose centred ``d~`` overflows float32 (its number in this batch).
        """
        centre = self._flat_centre(mean)
        n = mean.shape[0]
        keep = n * (2 * mean.shape[1] + 1) <= _FLAT_KEEP_ELEMENTS
        blocks: list[np.ndarray] = []
        top = np.zeros(3)
        step = _block_rows(self.width)
        for s in range(0, n, step):
            v = self._block_vectors(mean[s : s + step], var[s : s + step], centre, s)
            top = np.maximum(top, rewrite_block_norms(v).max(axis=0))
            if keep:
                blocks.append(v)
        return centre, top, (blocks if keep else None)

    def add_rows(self, start: int, prepared: Any) -> None:
        table = self.table
        mean, var = table.mean[start:], table.var[start:]
        centre, top, vectors = prepared if prepared is not None else self.prepare(mean, var)
        if self.index.ntotal == 0:  # a fresh start: the new rows' norms are all there is
            self._flat_norm = (id(self.index), np.zeros(3))
            self._auto_centre = True
        if vectors is not None:
            vectors.reverse()
            while vectors:  # each block is let go once the index holds its copy
                self.index.add(vectors.pop())
        else:
            step = _block_rows(self.width)
            for s in range(0, mean.shape[0], step):
                self.index.add(self._block_vectors(mean[s : s + step], var[s : s + step], centre, s))
        self.centre = centre
        if self._flat_norm is not None and self._flat_norm[0] == id(self.index):
            self._flat_norm = (id(self.index), np.maximum(self._flat_norm[1], top))

    def own(self) -> None:
        """As :meth:`FaissEngine.own`; the copy holds the same rows, so their norms' bound carries over."""
        before, known = id(self.index), self._flat_norm
        super().own()
        if known is not None and known[0] == before:
            self._flat_norm = (id(self.index), known[1])

    def remove_rows(self, dead: np.ndarray) -> None:
        if self.index is None:
            return
        # the deleted rows may have held the documents' mean far from the centre: a re-centred index is built
        # from the (already compacted) table's rows alone, so the dead rows need not be removed first
        if self._maybe_recentre():
            return
        self.own()
        self.index.remove_ids(_faiss().IDSelectorBatch(dead.astype(np.int64)))
        # the bound of the rows before may be far above those left (a large row deleted): computed again from
        # the rows at the next search or save, so a loose bound neither slows searches nor is saved
        self._flat_norm = None

    def rebuild(self, forced: bool = False) -> None:
        """Centre the index on the live documents' mean, every ``d~`` computed again, and drop the tombstones.

        The remedy for a centre far from the documents (see the class docstring); the index, its centre
        and the table change only once the new index holds every live row.

        Raises:
            ValueError: A document whose ``d~`` around the new centre overflows float32 (the store is
                left as it was).
        """
        if self.index is None or not len(self.table):
            return
        centre = self._live_mean()
        try:
            self._recentre(centre, compact=True)
        except ValueError as exc:
            raise ValueError(
                f"the flat index cannot be centred on the live documents' mean (norm {np.linalg.norm(centre):.4g}): "
                f"{exc}; the store is unchanged"
            ) from exc
        logger.info("flat index centred on the mean of its %d documents", len(self.table))

    def _live_mean(self) -> np.ndarray:
        """float64 mean of the live rows' means (read in blocks, no copy of the table)."""
        table = self.table
        alive = table.alive
        n = int(np.count_nonzero(alive))
        if n == alive.size:
            return means_centre(table.mean)
        total = np.zeros(table.mean.shape[1])
        for s in range(0, alive.size, _BUILD_BLOCK):
            total += np.asarray(table.mean[s : s + _BUILD_BLOCK][alive[s : s + _BUILD_BLOCK]], np.float64).sum(axis=0)
        return total / max(n, 1)

    def _error_bound(self, rows: np.ndarray, centre: np.ndarray) -> float:
        """The largest float32 error bound of ``rows`` searched as queries among themselves around ``centre``.

        Scores do not depend on the centre, so this compares what centres cost in float32 precision
        (``inf`` where a row's rewrite overflows float32 around it).
        """
        g = Gaussians(np.asarray(self.table.mean[rows]), np.asarray(self.table.var[rows]), validate=False)
        try:
            docs = score_vectors_float32(g, "document", centre=centre, row_numbers=rows)
            queries = score_vectors_float32(g, "query", centre=centre, row_numbers=rows)
        except ValueError:
            return math.inf
        return float(float32_score_bound(queries, rewrite_block_norms(docs).max(axis=0)).max())

    def _maybe_recentre(self) -> bool:
        """Centre the index on the live documents' mean where that at least halves the float32 error bound.

        The bound is that of :data:`_RECENTRE_SAMPLE` live rows spread over the table, searched as
        queries among themselves (:meth:`_error_bound`), around the current centre and around the
        live mean. Re-centring changes no result: it only spares searches the float64 fallback. Called by
        :meth:`remove_rows` once the table is compacted (the new index holds its rows only); being an
        optimisation, it never fails the write that called it: any error (``MemoryError`` building the new
        index included) keeps the old index and centre, with a warning.

        Returns:
            Whether the index was replaced by one of the table's rows around the new centre.
        """
        live = np.flatnonzero(self.table.alive)
        if not self._auto_centre or self.index is None or self.index.ntotal == 0 or not live.size:
            return False
        try:
            centre = self._live_mean()
            sample = live[
                np.unique(np.linspace(0, live.size - 1, num=min(live.size, _RECENTRE_SAMPLE)).astype(np.int64))
            ]
            now, then = self._error_bound(sample, self._flat_centre()), self._error_bound(sample, centre)
            if not (math.isfinite(then) and then <= CENTRE_GAIN * now):
                return False
            self._recentre(centre, compact=False)
        except ValueError as exc:  # a row overflows float32 around the new centre: keep the old one
            logger.debug("flat index not re-centred: %s", exc)
            return False
        except Exception as exc:  # an optimisation only: the write that compacted has happened
            logger.warning(
                "flat index not re-centred on the mean of its %d documents (%s: %s); it keeps its centre "
                "(results are unchanged; searches may fall back to float64 until rebuild())",
                live.size,
                type(exc).__name__,
                exc,
            )
            return False
        logger.info(
            "flat index centred again on the mean of its %d documents (float32 error bound of a sample %.3g -> %.3g)",
            live.size,
            now,
            then,
        )
        return True

    def _recentre(self, centre: np.ndarray, *, compact: bool) -> None:
        """Replace the index by one of every row's ``d~`` around ``centre`` (``compact``: the live rows', the
        table then compacted). Nothing changes unless every row is in the new index."""
        table = self.table
        rows = np.flatnonzero(table.alive) if compact and table.dead() else None
        n = table.n_rows if rows is None else int(rows.size)
        index = _faiss().IndexFlatIP(self.width)
        top = np.zeros(3)
        step = _block_rows(self.width)
        for s in range(0, n, step):
            e = min(n, s + step)
            numbers = np.arange(s, e) if rows is None else rows[s:e]
            part: slice | np.ndarray = slice(s, e) if rows is None else numbers
            g = Gaussians(np.asarray(table.mean[part]), np.asarray(table.var[part]), validate=False)
            try:
                vectors = score_vectors_float32(g, "document", centre=centre, row_numbers=numbers)
            except ValueError as exc:  # name the document (the message gives its row)
                bad = next((j for j in range(len(g)) if _overflows(g[j : j + 1], centre)), 0)
                raise ValueError(f"document {table.ids[int(numbers[bad])]!r}: {exc}") from exc
            top = np.maximum(top, rewrite_block_norms(vectors).max(axis=0))
            index.add(vectors)
            del vectors
        if rows is not None:
            table.compact()
        self.index, self.viewed, self.centre = index, False, np.asarray(centre, dtype=np.float64)
        self._flat_norm = (id(index), top)
        self._auto_centre = True

    def _flat_norm_max(self) -> np.ndarray:
        """The largest norm of each block of the ``d~`` rows in the index (an upper bound after deletions).

        Kept up to date by :meth:`add_rows` for the index object it was computed on, and computed
        from the index's own vectors once for any other (a fresh, loaded or copied index).
        """
        index = self.index
        if self._flat_norm is None or self._flat_norm[0] != id(index):
            n, d = index.ntotal, index.d
            xb = _faiss().rev_swig_ptr(index.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
            top = np.zeros(3)
            step = _block_rows(d)
            for s in range(0, n, step):
                top = np.maximum(top, rewrite_block_norms(xb[s : s + step]).max(axis=0))
            self._flat_norm = (id(index), top)
        return self._flat_norm[1]

    def top_k(
        self, qg: Gaussians, kk: int, mask: np.ndarray | None, n_allowed: int, filtered: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``kk``: float32 FAISS candidates around the centre, re-scored in float64 and
        proven complete by the float32 error bound (:func:`refine_top_k`)."""
        qv = score_vectors_float32(qg, "query", centre=self._flat_centre())
        bound = float32_score_bound(qv, self._flat_norm_max())
        params = None if mask is None else _faiss().SearchParameters(sel=self._selector(mask))
        index, ranks = self.index, self.tie_rank()

        def candidates(qi: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x = np.ascontiguousarray(qv[qi])
            dist, lab = index.search(x, c) if params is None else index.search(x, c, params=params)
            return lab, dist, bound[qi]

        def rescore(qi: np.ndarray, lab: np.ndarray) -> np.ndarray:
            return self._rescore(qg[qi], lab, mask)

        def fallback(qi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rows = None if mask is None else np.flatnonzero(mask)
            return float64_top_k(
                qg[qi], self.table.gaussians, kk, rows=rows, doc_sumlogvar=self.table.sumlogvar, tie_rank=ranks
            )

        return refine_top_k(
            len(qg), kk, n_allowed, _first_pool_margin(kk), candidates, rescore, fallback, kl_query_constant(qg), ranks
        )


# ============================================================== approximate
class ApproxEngine(FaissEngine):
    """HNSW / IVF (optionally SQ8 / PQ compressed, optionally refined) over the MIPS -> L2 reduction.

    Where the means share a large common offset, every mean (queries too) is first centred on
    ``centre``, the mean of the document means at the last (re)build (saved as ``index_centre``;
    see :func:`means_centre` and :func:`~kl_retrievers.gaussian.worth_centring`): -KL does not change, and the index no
    longer depends on where the origin of the means lies (without it, a common shift of 20 of every
    mean cut recall@10 from 0.996 to 0.50 for HNSW and from 0.63 to 0.19 for IVF on 5,000
    synthetic Gaussians, ``k = 16``). Means already about centred are used as given (``centre``
    ``None``), as are those of a store saved before ``index_centre`` existed, until its next rebuild.
    The first coordinate of the centred ``d~`` (a sum over all ``k`` dimensions) is shifted by ``offset``, its
    mean over a sample at build time: ``q~`` has ``1`` there, so ``<q~, d~>`` only drops by a
    constant, but a large shared offset no longer dominates every norm (IVF recall on synthetic
    Gaussians rises sharply). Every shifted row ``d^`` gets one more coordinate
    ``sqrt(M^2 - ||d^||^2)`` (``M = norm_headroom * max ||d^||``); a query is scaled to norm ``M``.
    A later row whose norm exceeds ``M`` triggers a rebuild. Tombstones stay in the index (HNSW has
    no ``remove_ids``) until compaction. Where more than ``2 x hnsw_m`` documents are identical, the
    HNSW rows the graph cannot reach are scored exactly with every query (:attr:`_copies`, an
    :class:`~kl_retrievers.store._hnsw_copies.HnswCopies`). ``refine="fp16"`` keeps float32 refine
    copies instead where ``M`` exceeds float16's range (:meth:`refine_codes`).
    """

    def __init__(self, settings: Settings, table: DocumentTable) -> None:
        super().__init__(settings, table)
        self._norm_bound: float | None = None
        self.offset = 0.0  # subtracted from the first coordinate of d~ before the reduction
        self.centre: np.ndarray | None = None  # subtracted from every mean; None: not built, or saved before centring
        self._loaded_top = 0.0  # on load: the largest shifted d~ norm among the rows read
        self._warned_unbuilt = False  # the "not built yet" warning is logged once per store
        self._warned_training = False  # and the "few training points for the k-means" one (IVF, PQ)
        # live documents when the index was last built (or loaded), the rows written (added or upserted) into it
        # since, and whether stale_training warned since
        self._built_rows = 0
        self._written_rows = 0
        self._warned_stale = False
        self._built_at_load = False  # _built_rows counted at a load (the index was trained then or earlier)
        # the live documents at that load where fewer than a build trains on (_built_rows counts that fewest instead)
        self._rows_at_load: int | None = None
        self._saved_growth: dict[str, Any] | None = None  # index_growth of the config being loaded (restore -> attach)
        self._held_refine: str | None = None  # the refine copies the index holds (see refine_codes); None: none
        # HNSW groups of more than 2 x hnsw_m identical live documents, and the rows the graph cannot reach
        self._copies = HnswCopies(self.settings, table)  # the store, held weakly (see FaissEngine)
        self._load_hashes: list[np.ndarray] = []  # per block of rows read by load (HNSW)
        # the largest norms of the index's rows, and the rows among them far out from the others (_far_out),
        # scored exactly with every query
        self._top_norms: _TopNorms = _NO_TOP
        self._far = _NO_ROWS
        self._load_rows = 0  # rows read so far by load
        self._build_rows: _Reduced | None = None  # during a rebuild's add: the rows its norm pass kept (_norm_pass)
        # the index was reset and not every row added back (an interrupted _refill): searches are exact, and the
        # next write rebuilds it (see _refill)
        self._partial = False

    @property
    def norm_bound(self) -> float | None:
        return self._norm_bound

    @property
    def index_offset(self) -> float:
        return self.offset

    @property
    def compacts_at_once(self) -> bool:
        return self.index is None  # an index not built yet holds no tombstones

    def refine_codes(self) -> str | None:
        """The refine copies a (re)build at the current ``M`` keeps: the ``refine`` setting, but ``"fp32"``
        for ``refine="fp16"`` where ``M`` exceeds :data:`FLOAT16_MAX`.

        The reduced vectors' coordinates range up to ``M`` (the appended ``sqrt(M^2 - ||d^||^2)`` too),
        and float16 overflows to inf above 65504: an ``"fp16"`` refine stage would hold inf copies
        and re-rank the pool on them. Float32 copies rank as the float16 ones would have (the refine
        stage only chooses which candidates reach the exact re-scoring), at twice their memory. An
        index loaded from an earlier release may hold float16 copies above 65504 (:meth:`attach`).
        """
        s, m = self.settings, self._norm_bound
        if s.refine == "fp16" and m is not None and m > FLOAT16_MAX:
            return "fp32"
        return s.refine

    def config(self) -> dict[str, Any]:
        """The base numbers, ``index_offset``, ``index_centre`` and ``index_growth``: the counts
        :meth:`stale_training` compares (live documents at the last build, rows written since, and whether the
        former were counted at a load, with the documents at that load where fewer), so that a loaded store warns
        where, and as, the saved one would have."""
        centre = None if self.centre is None else [float(x) for x in self.centre]
        growth = None
        if self.index is not None:
            growth = {
                "built_rows": self._built_rows,
                "written_rows": self._written_rows,
                "built_at_load": self._built_at_load,
            }
            if self._rows_at_load is not None:  # only then: the counts stay as before where none is named
                growth["rows_at_load"] = self._rows_at_load
        # 0 / None until built
        return {**super().config(), "index_offset": self.offset, "index_centre": centre, "index_growth": growth}

    def restore(self, config: dict[str, Any], cfg_path: Path) -> BlockCheck | None:
        k = self.table.mean.shape[1]
        centre_from_config(config, cfg_path, "flat_centre", k)  # null here
        self._norm_bound, self.offset = config["norm_bound"], config["index_offset"]
        self._saved_growth = config["index_growth"] if config["index_built"] else None  # validated by read_config
        if not config["index_built"]:
            return None
        self.centre = centre_from_config(config, cfg_path, CENTRE_FIELDS[self.settings.index_type], k)
        self._loaded_top = 0.0
        self._load_hashes = []
        self._load_rows = 0
        self._set_top_norms(_NO_TOP)
        hnsw = self.settings.index_type == "hnsw"

        def on_block(mean: np.ndarray, var: np.ndarray, sumlogvar: np.ndarray) -> None:
            if hnsw:
                self._load_hashes.append(gaussian_hashes(mean, var))
            # ||d^||^2 from the blocks of d~ = [-1/2 (sum log var + sum mu^2 / var), -1 / (2 var), mu / var]
            # of the centred means
            m = mean.astype(np.float64)
            if self.centre is not None:
                m -= self.centre
            prec = 1.0 / var
            scaled = m * prec
            first = -0.5 * (sumlogvar + np.einsum("ij,ij->i", m, scaled)) - self.offset
            sq = first * first + 0.25 * np.einsum("ij,ij->i", prec, prec) + np.einsum("ij,ij->i", scaled, scaled)
            if sq.size:
                self._loaded_top = max(self._loaded_top, float(np.sqrt(sq.max())))
                rows = self._load_rows + np.arange(sq.size)
                self._set_top_norms(_largest_norms(self._top_norms, rows, np.sqrt(sq)))
                self._load_rows += sq.size

        return on_block

    def expected_structure(self) -> dict[str, Any]:
        faiss, s = _faiss(), self.settings
        # the settings as written; refine="fp16" holds float32 copies where M exceeds float16's range (attach)
        refine = ("fp16", "fp32") if s.refine == "fp16" else s.refine
        out: dict[str, Any] = {"index_type": s.index_type, "compression": s.compression, "refine": refine}
        if s.index_type == "hnsw":
            out["hnsw_m"] = s.hnsw_m
        else:
            out["nlist"] = s.nlist
        if s.compression == "pq":
            out["pq_m"], out["pq_nbits"] = s.pq_m, s.pq_nbits
        if s.index_type == "ivf" and s.compression == "pq":
            # scanned by inner product (see _new_ivf_pq); stores saved before that scanned their codes by L2,
            # which searches as it did then, until the next rebuild makes an inner-product index
            out["metric"] = (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2)
        else:
            out["metric"] = faiss.METRIC_L2
        return out

    def attach(self, index: Any, viewed: bool, cfg_path: Path) -> None:
        """Use the index read from a saved store (:meth:`FaissEngine.attach`), or rebuild an unusable one.

        A ``refine="fp16"`` index holds float16 refine copies, or float32 ones where ``M`` exceeds
        :data:`FLOAT16_MAX` (:meth:`refine_codes`). Float16 copies with ``M`` above it were saved by
        an earlier release: where all are finite the index is used as saved (:meth:`add_rows` rebuilds
        it with float32 copies once a new row's copy would overflow); where some are inf, the index is
        rebuilt from the stored rows (:meth:`rebuild`, in memory) with one warning.
        """
        s, bound = self.settings, self._norm_bound
        super().attach(index, viewed, cfg_path)
        growth, self._saved_growth = self._saved_growth, None
        fewest = self._min_train_size()  # a build trains on at least these: a count below would warn at once
        self._rows_at_load = None
        if growth is None:  # saved before index_growth was: counted from the size at load
            self._built_rows, self._written_rows = max(len(self.table), fewest), 0
            self._built_at_load = True
            if len(self.table) < fewest:  # named in the stale-index warning beside the count it uses
                self._rows_at_load = len(self.table)
        elif growth["built_rows"] < fewest:
            raise StoreFormatError(
                f"{cfg_path}: field 'index_growth.built_rows' is {growth['built_rows']!r}, but a built "
                f"{s.index_type} index with these settings was trained on at least {fewest} documents (the fewest "
                "its k-means and quantizers train on; a damaged or edited config.json?)"
            )
        else:  # more than the live rows is fine: documents deleted since the build
            self._built_rows, self._written_rows = growth["built_rows"], growth["written_rows"]
            self._built_at_load, self._rows_at_load = growth["built_at_load"], growth["rows_at_load"]
        # warned already where the saved counts are past the factor (every write of the saved store asked)
        self._warned_stale = self._built_rows + self._written_rows > STALE_GROWTH * self._built_rows
        held = _index_structure(index)["refine"]
        if s.refine == "fp16" and held == "fp32" and not (bound is not None and bound > FLOAT16_MAX):
            raise StoreFormatError(
                f"{cfg_path}: field 'norm_bound' is {bound!r}, but index.faiss holds float32 refine copies, which a "
                f"refine='fp16' index keeps only where norm_bound exceeds float16's largest value {FLOAT16_MAX:.0f} "
                "(a damaged or edited config.json?)"
            )
        self._held_refine = held
        if held == "fp16" and bound is not None and bound > FLOAT16_MAX:
            inf_rows = self._inf_refine_rows()
            if inf_rows:
                self._rebuild_inf_copies(inf_rows, cfg_path)
                return
        elif held == "fp32" and s.refine == "fp16":
            logger.info(
                "%s: refine='fp16' index with float32 refine copies (norm bound M=%.4g exceeds float16's range)",
                cfg_path.parent,
                bound,
            )
        if self.settings.compression == "pq" and _index_structure(index)["metric"] == _faiss().METRIC_L2:
            logger.info(
                "%s: an IVF-PQ index whose codes are scanned by L2 (saved by an earlier release); it searches as it "
                "did then, and rebuild() makes the inner-product one this release builds",
                cfg_path.parent,
            )
        if self.table.n_rows:
            self.check_loaded(cfg_path)
        hashes, self._load_hashes = self._load_hashes, []
        if hashes:
            self._copies.track(self.index, np.concatenate(hashes))

    def _inf_refine_rows(self) -> int:
        """How many rows of the index's refine copies hold an inf (float16 copies saved by an earlier release)."""
        faiss = _faiss()
        ref = faiss.downcast_index(faiss.downcast_index(self.index).refine_index)
        n, bad = int(ref.ntotal), 0
        for b in range(0, n, _BUILD_BLOCK):
            copies = np.asarray(ref.reconstruct_n(b, min(_BUILD_BLOCK, n - b)))
            bad += int((~np.isfinite(copies)).any(axis=1).sum())
        return bad

    def _rebuild_inf_copies(self, inf_rows: int, cfg_path: Path) -> None:
        """Replace a loaded index whose float16 refine copies overflowed by one rebuilt from the stored rows."""
        bound, viewed = self._norm_bound, self.viewed
        self._load_hashes = []  # the rebuild counts identical HNSW rows itself
        self._warned_training = True  # said when the store was built, as a load of any store does not repeat it
        self.rebuild(forced=True, warn_switch=False)
        copies = "float32" if self._held_refine == "fp32" else "float16"
        logger.warning(
            "%s: index.faiss holds float16 refine copies, %d of %d rows of them inf: it was saved by an earlier "
            "release, which kept float16 copies although the norm bound M=%.4g exceeds float16's largest value %.0f. "
            "The %s index was rebuilt from the stored Gaussians, in memory%s, %s; saving the store writes the fixed "
            "index (docs/ann.md, 'Float16 refine copies and a large M')",
            cfg_path.parent,
            inf_rows,
            self.table.n_rows,
            bound,
            FLOAT16_MAX,
            self.settings.index_type,
            " (the memory-mapped index was not used)" if viewed else "",
            "without an index (too few documents; searches are exact)"
            if self.index is None
            else f"with {copies} refine copies (M={self._norm_bound:.4g})",
        )

    # ---------------------------------------------------------- the reduction
    @property
    def width(self) -> int:
        """``2k + 2``, zero-padded to a multiple of ``pq_m`` for PQ."""
        s = self.settings
        d = 2 * self.table.mean.shape[1] + 2
        if s.compression == "pq":
            d = -(-d // s.pq_m) * s.pq_m
        return d

    def _shifted(self, dvec: np.ndarray) -> np.ndarray:
        """``d~`` with its first coordinate shifted by the build-time offset (``<q~, d~>`` drops by a constant)."""
        return shift_document_vectors(dvec, self.offset)

    def _centred(self, dvec: np.ndarray) -> np.ndarray:
        """``d~`` rows of the means as stored -> ``d~`` of the means centred on ``centre``."""
        return centre_document_vectors(dvec, self.centre)

    def _reduced(self, dvec: np.ndarray) -> np.ndarray:
        """float32 reduced vectors of ``d~`` rows of the stored means (centred and shifted here; the offset is
        applied by _shifted, the one place the engine shifts; :meth:`_reduce_shifted`)."""
        return self._reduce_shifted(self._shifted(self._centred(dvec)))[0]

    def _reduce_shifted(self, shifted: np.ndarray, sq: np.ndarray | None = None) -> _Reduced:
        """float32 reduced vectors of centred, shifted ``d~`` rows and their norms, each row's squared norm computed
        once (``sq``, where the caller has it): what :func:`~kl_retrievers.gaussian.reduce_document_vectors` and
        :func:`_row_norms` give, bit for bit, without computing the norms twice (:meth:`_complete`)."""
        vectors = np.zeros((shifted.shape[0], self.width), dtype=np.float32)
        vectors[:, : shifted.shape[1]] = shifted
        return self._complete((vectors, _row_sq_norms(shifted) if sq is None else sq))

    def _query_vectors(self, qg: Gaussians) -> np.ndarray:
        """float64 ``q~`` of the queries' means centred on ``centre`` (their first coordinate stays 1)."""
        if self.centre is None:
            return np.asarray(kl_query_vectors(qg), dtype=np.float64)
        mean = np.asarray(qg.mean, dtype=np.float64) - self.centre[None, :]
        return np.asarray(kl_query_vectors(Gaussians(mean, np.asarray(qg.var, np.float64), validate=False)))

    def _query_reduced(self, qg: Gaussians) -> np.ndarray:
        """float32 reduced query vectors (:func:`~kl_retrievers.gaussian.reduce_query_vectors`)."""
        assert self._norm_bound is not None
        return reduce_query_vectors(self._query_vectors(qg), self._norm_bound, width=self.width)

    def _live_blocks(self, live: np.ndarray) -> list[np.ndarray | slice]:
        """Row selectors of the table's live rows ``live`` in blocks of ``_BUILD_BLOCK`` (slices when none is dead)."""
        n, dense = live.size, live.size == self.table.n_rows
        return [slice(b, b + _BUILD_BLOCK) if dense else live[b : b + _BUILD_BLOCK] for b in range(0, n, _BUILD_BLOCK)]

    # ------------------------------------------------------------------ build
    def min_build_size(self) -> int:
        """How many documents the index needs before it is built (searches are exact until then)."""
        return self._min_build_size()

    def _min_build_size(self) -> int:
        s = self.settings
        if s.index_type == "ivf":
            return max(s.nlist * 8, 4 << s.pq_nbits if s.compression == "pq" else 1)
        if s.compression == "pq":
            return 4 << s.pq_nbits
        if s.compression == "sq8":
            return 256
        return 1

    def _min_train_size(self) -> int:
        """The fewest rows FAISS can train the index on (k-means needs a point per centroid): what an
        explicit rebuild needs, where :meth:`_min_build_size` is what the automatic build waits for."""
        s = self.settings
        pq = 1 << s.pq_nbits if s.compression == "pq" else 1
        return max(s.nlist, pq) if s.index_type == "ivf" else pq

    def _build_rule(self) -> str:
        """Why :meth:`_min_build_size` is what it is (for messages)."""
        s = self.settings
        if s.index_type == "ivf":
            return f"8 x nlist={s.nlist}" + (f", and 4 x 2^pq_nbits={4 << s.pq_nbits}" if s.compression == "pq" else "")
        if s.compression == "pq":
            return f"4 x 2^pq_nbits={4 << s.pq_nbits} to train the product quantizer"
        return "256 to train the scalar quantizer"

    def _new_index(self, fp32_refine: bool = False) -> Any:
        """An empty index for the settings (``fp32_refine``: float32 refine copies, see :meth:`refine_codes`)."""
        faiss, s, d = _faiss(), self.settings, self.width
        refine = "fp32" if fp32_refine else s.refine
        if s.compression is None:
            storage = "Flat"
        elif s.compression == "sq8":
            storage = "SQ8"
        else:
            storage = f"PQ{s.pq_m}x{s.pq_nbits}"
        if s.index_type == "hnsw":
            index = faiss.index_factory(d, f"HNSW{s.hnsw_m},{storage}", faiss.METRIC_L2)
            faiss.downcast_index(index).hnsw.efConstruction = s.ef_construction
        elif s.compression == "pq":
            index = self._new_ivf_pq(d)
        else:
            index = faiss.index_factory(d, f"IVF{s.nlist},{storage}", faiss.METRIC_L2)
        if refine is not None:
            # the pool's candidates are re-ranked on 8-bit / float16 (float32: refine_codes) copies of the
            # reduced vectors (C++, multithreaded), so a large pool costs far less than the exact re-scoring
            base = index
            if refine == "fp32":
                codes = faiss.IndexFlat(d, index.metric_type)
            else:
                qtype = faiss.ScalarQuantizer.QT_8bit if refine == "sq8" else faiss.ScalarQuantizer.QT_fp16
                codes = faiss.IndexScalarQuantizer(d, qtype, index.metric_type)
            index = faiss.IndexRefine(base, codes)
            index.own_fields = True  # the C++ object owns (and frees) both parts
            index.own_refine_index = True
            _disown(base, codes)
        return index

    def _new_ivf_pq(self, d: int) -> Any:
        """IVF-PQ: lists chosen by L2 on the reduced vectors, codes scanned by inner product.

        Every reduced document vector has norm ``M`` and the query is scaled to norm ``M``, so
        the L2 distance ``2 M^2 - 2 <x_q, x_d>`` is dominated by ``2 M^2``: a product quantizer's
        lookup tables for L2 spend their precision on that constant, and 4-bit fast-scan tables
        (quantized to 8 bits) lose the ranking entirely (recall@10 0.001 on 100k synthetic
        Gaussians). The codes are therefore scanned by inner product, which ranks exactly like
        the L2 distance on the reduced vectors (``<x_q, x_d> = (M / ||q~||) (<q~, d~> - o)``,
        ``o`` the shift of the first coordinate), while the coarse quantizer still assigns
        lists by L2. ``pq_nbits=4`` uses FAISS's SIMD fast-scan lists.
        """
        faiss, s = _faiss(), self.settings
        quantizer = faiss.IndexFlatL2(d)
        index: Any
        if s.pq_nbits == 4:
            index = faiss.IndexIVFPQFastScan(quantizer, d, s.nlist, s.pq_m, 4, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, s.nlist, s.pq_m, s.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        # plain k-means on the reduced vectors (FAISS makes it spherical for an inner-product IVF,
        # which would normalise the centroids to unit norm and leave residuals of norm ~M)
        index.cp.spherical = False
        index.own_fields = True
        _disown(quantizer)
        return index

    def _warn_few_training_points(self, centroids: list[tuple[str, int]], n_train: int) -> None:
        """Log once per store when the k-means FAISS is about to run gets fewer points than it recommends.

        FAISS's own warning (a raw line on stderr per k-means, ``WARNING clustering N points to K
        centroids: please provide at least 39*K training points``, one per product sub-quantizer) is
        silenced by :func:`_quiet_clustering`; this says the same once, on the store's logger.
        """
        short = [(what, k) for what, k in centroids if n_train < _POINTS_PER_CENTROID * k]
        if not short or self._warned_training:
            return
        self._warned_training = True
        logger.warning(
            "%s index trained on %d documents, fewer than FAISS recommends (%s; %d per centroid): its "
            "clustering, and so its recall, may be poor until more documents are added and rebuild() is called",
            self.settings.index_type,
            n_train,
            ", ".join(f"{_POINTS_PER_CENTROID * k:,} for {k} {what}" for what, k in short),
            _POINTS_PER_CENTROID,
        )

    def _warn_fp32_copies(self) -> None:
        """Log that a rebuild switched a ``refine="fp16"`` index to float32 copies (:meth:`refine_codes`)."""
        logger.warning(
            "refine='fp16': the reduced vectors' norm bound M=%.4g exceeds float16's largest value %.0f, so float16 "
            "copies would be inf; the %s index now keeps float32 refine copies instead (twice the memory, %d bytes a "
            "document). refine='sq8' keeps 8-bit ones; rescaling the Gaussians lowers M (docs/ann.md)",
            self._norm_bound,
            FLOAT16_MAX,
            self.settings.index_type,
            4 * self.width,
        )

    def stale_training(self) -> str | None:
        """A warning, once per trained index, that the store outgrew the documents its k-means was trained over.

        IVF lists and PQ codebooks are learnt at a build and kept as documents are added: the new ones go into
        the lists (and get the codes) learnt from the first ones, however different they are. Once the live
        documents of the last build (for a folder saved before ``index_growth``, its load, counted as at least the
        fewest a build trains on; the warning names both numbers where they differ) and the rows written (added or
        upserted) since come to more than :data:`STALE_GROWTH` times the former, this returns
        the warning (the store gives it at the caller's line) naming ``rebuild()``, which retrains the index and
        arms the warning again. The writes are counted, not the live documents: a store that deleted most of its
        documents and took as many new ones holds as many as it was built over, in lists that no longer fit them.
        HNSW without PQ trains nothing.
        """
        s, built, written = self.settings, self._built_rows, self._written_rows
        kmeans = s.index_type == "ivf" or s.compression == "pq"
        if not kmeans or self.index is None or self._warned_stale or built + written <= STALE_GROWTH * built:
            return None
        self._warned_stale = True
        what = {"ivf": "lists", "pq": "product-quantizer codebooks"}
        learnt = " and ".join(what[key] for key in ("ivf", "pq") if key in (s.index_type, s.compression))
        loaded = self._rows_at_load  # fewer than a build trains on: counted as that many (the reason, named)
        return (
            f"the {s.index_type} index's k-means was trained "
            + ("before the store was loaded with" if self._built_at_load else "when the store held")
            + f" {built if loaded is None else loaded:,} documents, and {written:,} have been added or upserted "
            f"since: {(built + written) / max(built, 1):.1f} times as many in all, more than {STALE_GROWTH}"
            + (
                ""
                if loaded is None
                else f", counting the {loaded:,} at the load as {built:,}, the fewest documents a build of this "
                f"{s.index_type} index trains on"
            )
            + f" (it now holds {len(self.table):,}). Every document added since went into the {learnt} learnt from "
            "the first ones. "
            "Call store.rebuild() to retrain it on a sample of all of them"
            + (
                ", then check nprobe: retrained lists may hold the documents in another balance, so that the same "
                "nprobe scans fewer of them"
                if s.index_type == "ivf"
                else ""
            )
            + " (docs/ann.md, 'Memory and threads at scale'). This warns once per build"
        )

    def _add_all(self, index: Any, live: np.ndarray | None = None) -> float:
        """Add the table's rows (``live``: only these, in order; default every row) to ``index``.

        For HNSW, identical live documents among them are counted (:meth:`HnswCopies.track
        <kl_retrievers.store._hnsw_copies.HnswCopies.track>`; without ``live``, the table says which rows are live).
        A rebuild's rows whose reduced vectors and norms its norm pass kept (:attr:`_build_rows`) are read from
        there; other rows' are built here.

        Returns:
            The largest norm of their centred, shifted ``d~`` (``0`` for none).
        """
        assert self._norm_bound is not None
        table, top = self.table, 0.0
        rows = np.arange(table.n_rows) if live is None else live
        reduced = None if live is None else self._build_rows
        if reduced is not None and not reduced[0].shape[0] == reduced[1].size == rows.size:
            raise RuntimeError(  # an internal error: the norm pass read the same live rows, in the same blocks
                f"internal error: the rebuild's norm pass kept {reduced[0].shape[0]} reduced vectors and "
                f"{reduced[1].size} norms for {rows.size} live rows"
            )
        hnsw = self.settings.index_type == "hnsw"
        hashes = []
        largest, b = _NO_TOP, 0  # entry b + j is the j-th row of a block (a row number once compacted)
        for sel in self._live_blocks(rows):
            if reduced is None:
                shifted = self._shifted(self._centred(table.doc_vectors(sel)))  # as _reduced, keeping the norms
                vectors, norms = self._reduce_shifted(shifted)
                del shifted
            else:  # the blocks of _live_blocks, which the norm pass read too
                vectors, norms = reduced[0][b : b + _BUILD_BLOCK], reduced[1][b : b + _BUILD_BLOCK]
            top = max(top, float(norms.max()))
            largest = _largest_norms(largest, b + np.arange(norms.size), norms)
            b += norms.size
            if hnsw:
                hashes.append(gaussian_hashes(table.mean[sel], table.var[sel]))
            index.add(vectors)
        if hnsw:
            self._copies.track(index, np.concatenate(hashes) if hashes else NO_HASHES, live)
        self._set_top_norms(largest)
        return top

    def _set_top_norms(self, top: _TopNorms) -> None:
        """Keep the largest norms of its rows ``top`` and the rows far out from the others (:func:`_far_out`)."""
        self._top_norms, self._far = top, _far_out(top)
        if self._far.size:
            logger.debug("%d document(s) far out from the others, scored exactly with every query", self._far.size)

    def _drop_index(self, n: int, needed: int, forced: bool) -> None:
        """No index (exact searches, as before the first build) for ``n`` live rows, fewer than ``needed``."""
        if self.index is not None or forced:
            logger.warning(
                "%s index %s: %d documents, fewer than the %d it needs (%s); searches are exact until an add "
                "reaches that number, which builds it",
                self.settings.index_type,
                "dropped" if self.index is not None else "not built",
                n,
                needed,
                self._build_rule(),
            )
        if self.table.dead():
            self.table.compact()
        self.index, self.viewed, self._held_refine, self._partial = None, False, None, False
        self._norm_bound, self.offset, self.centre = None, 0.0, None
        self._copies.clear()
        self._set_top_norms(_NO_TOP)
        self._warned_unbuilt = True

    def _sample_blocks(self, n: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of the blocks of ``n`` sampled rows whose float64 ``d~`` is built at once."""
        step = _block_rows(2 * self.table.mean.shape[1] + 1)
        return [(b, min(n, b + step)) for b in range(0, n, step)]

    def _sample_parts(
        self, rows: np.ndarray, centre: np.ndarray
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Per sampled row: ``d~``'s first coordinate and the squared norm of the others, for the means as
        stored and centred on ``centre``: all that :func:`~kl_retrievers.gaussian.worth_centring` and the
        offset read from the sample (``||d^||^2 = (d_0 - o)^2 + rest``), without the sample's float64 ``d~``."""
        n = rows.size
        plain, centred = (np.empty(n), np.empty(n)), (np.empty(n), np.empty(n))
        for s, e in self._sample_blocks(n):
            dvec = self.table.doc_vectors(rows[s:e])
            for (first, rest), d in ((plain, dvec), (centred, centre_document_vectors(dvec, centre))):
                first[s:e] = d[:, 0]
                rest[s:e] = np.einsum("ij,ij->i", d[:, 1:], d[:, 1:])
        return plain, centred

    def _training_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The float32 reduced vectors of the sampled ``rows`` that train the index, built block by block
        (:meth:`_sample_blocks`; float64 only within a block): 4 bytes per coordinate of the sample."""
        out = np.empty((rows.size, self.width), dtype=np.float32)
        for s, e in self._sample_blocks(rows.size):
            out[s:e] = self._reduced(self.table.doc_vectors(rows[s:e]))
        return out

    def _norm_pass(self, live: np.ndarray, keep: bool) -> tuple[float, int, _Reduced | None]:
        """The largest norm of the live rows' centred, shifted ``d~`` (:meth:`_norms`), its position in ``live``,
        and with ``keep`` the rows' reduced vectors and norms (``None`` without).

        ``keep`` is for a build whose sample is every live row (at most the sample's size, :meth:`rebuild`: 16,384
        rows for an index that needs no training, ``max(65,536, 64 x nlist)`` for IVF, 65,536 for HNSW with trained
        codes): each block's float64 ``d~``, built here once, also gives the rows' float32 reduced vectors
        (:meth:`_reduced`: the same values), whose last coordinate is filled in once ``M`` is known (from each row's
        squared norm, kept meanwhile). The training and :meth:`_add_all` then read them, instead of building every
        row's ``d~`` twice more. They take 4 bytes per coordinate, as the training sample they stand for; float64
        only within a block.
        """
        table = self.table
        width = 2 * table.mean.shape[1] + 1
        vectors = np.zeros((live.size if keep else 0, self.width), dtype=np.float32)
        sq_norms = np.empty(live.size if keep else 0)
        max_norm, top_row, b = 0.0, 0, 0
        for sel in self._live_blocks(live):
            shifted = self._shifted(self._centred(table.doc_vectors(sel)))
            sq = _row_sq_norms(shifted)
            norms = np.sqrt(sq)  # _row_norms, keeping the squares
            j = int(np.argmax(norms))
            if norms[j] > max_norm:
                max_norm, top_row = float(norms[j]), b + j
            if keep:
                vectors[b : b + norms.size, :width] = shifted
                sq_norms[b : b + norms.size] = sq
            b += norms.size
        return max_norm, top_row, ((vectors, sq_norms) if keep else None)

    def _complete(self, kept: _Reduced) -> _Reduced:
        """:meth:`_norm_pass`'s kept rows (vectors, squared norms) once ``M`` is set: their reduced vectors, each
        with its last coordinate ``sqrt(M^2 - ||d^||^2)`` (as :func:`reduce_document_vectors` gives it), and norms."""
        assert self._norm_bound is not None
        vectors, sq_norms = kept
        vectors[:, 2 * self.table.mean.shape[1] + 1] = _reduction_extra(sq_norms, self._norm_bound)
        return vectors, np.sqrt(sq_norms)

    def rebuild(self, forced: bool = False, *, warn_switch: bool = True) -> None:
        """(Re)build the index over every live row, then compact the table's tombstones; callers hold the write lock.

        With fewer live rows than :meth:`_min_build_size` (``forced``: :meth:`_min_train_size`, as
        few as FAISS can train IVF k-means and the quantizers on) the index is dropped instead:
        searches are exact, as before the first build, and the add that reaches the minimum
        builds it again. Otherwise the new index, its centre, offset and ``M`` replace the old ones
        (and the table is compacted) only once the index is trained and holds every live row: if
        FAISS fails, the engine and the table are as they were. A rebuild that raises ``M`` more
        than tenfold logs a warning naming the document that set it (one outlier squeezes every
        other document's reduced vector into a tiny cap of the sphere, which costs HNSW and IVF
        most of their recall; see docs/ann.md). A ``refine="fp16"`` index switched to float32 copies
        (:meth:`refine_codes`) logs a warning once built (``warn_switch``), each time it switches.
        """
        self._forget_kept()
        table, s, started = self.table, self.settings, monotonic()
        live = np.flatnonzero(table.alive)
        n = int(live.size)
        if n < (self._min_train_size() if forced else self._min_build_size()):
            self._drop_index(n, self._min_build_size(), forced)
            return
        index = self._new_index()
        rng = np.random.default_rng(s.seed)
        if index.is_trained:  # the sample only sets the offset
            n_train = min(n, 16384)
        else:
            n_train = min(n, max(65536, 64 * s.nlist) if s.index_type == "ivf" else 65536)
        sample = live[np.sort(rng.choice(n, size=n_train, replace=False))]  # its rows (d~ built in blocks)
        before = (self.centre, self.offset, self._norm_bound)
        tracked = self._copies.snapshot()
        try:
            # The means are centred on the documents' mean (-KL unchanged; see means_centre) where that
            # shrinks the norm bound by half or more, i.e. where a common offset of the means would
            # otherwise shape the index (worth_centring).
            centre = means_centre(table.mean if n == table.n_rows else table.mean[live])
            plain, centred = self._sample_parts(sample, centre)
            self.centre = centre if _shifted_bound(*centred) <= CENTRE_GAIN * _shifted_bound(*plain) else None
            # The first coordinate of d~, -1/2 sum_i (log var_i + mu_i^2 / var_i), is a sum over all k
            # dimensions: its shared offset (about -270 for k = 384 synthetic Gaussians) would dominate
            # ||d~||, the extra coordinate and hence the index's geometry. Shifting it changes no
            # ranking, since the query's first coordinate is 1. Only this coordinate is shifted:
            # centring all of d~ (not the means) cut IVF recall on real SciFact Gaussians (0.88 -> 0.55, nprobe 32).
            self.offset = float((plain if self.centre is None else centred)[0].mean())
            del plain, centred
            max_norm, top_row, kept = self._norm_pass(live, keep=n_train == n)  # n_train == n: the sample is live
            self._norm_bound = s.norm_headroom * max(max_norm, 1e-12)
            kmeans = s.index_type == "ivf" or s.compression == "pq"
            if kmeans and not self._norm_bound <= MAX_NORM_BOUND:  # before FAISS sees a vector (NaN included)
                raise ValueError(
                    f"document {table.ids[int(live[top_row])]!r} cannot be put in the "
                    f"{s.index_type} index: its reduced norm {max_norm:.4g} times norm_headroom="
                    f"{s.norm_headroom:.4g} gives the bound M={self._norm_bound:.4g}, "
                    f"above the {MAX_NORM_BOUND:.4g} at which the float32 squared distances of FAISS's k-means "
                    "(IVF, PQ) overflow "
                    "(tiny variances, or a mean far from the others for its variances); delete or re-encode it, or use "
                    'index_type="flat" (exact) or "hnsw" without PQ'
                )
            reduced = None if kept is None else self._complete(kept)
            del kept
            held = self.refine_codes()
            if held != s.refine:  # float16 copies would overflow (refine_codes): float32 ones
                index = self._new_index(fp32_refine=True)
            if not index.is_trained:
                self._warn_few_training_points(_quiet_clustering(index), n_train)
                if s.compression == "pq":  # long: started is logged, so that a user with -v sees it
                    logger.info(
                        "training the %s index's product quantizer (pq_m=%d, pq_nbits=%d) on %d documents: one "
                        "k-means per sub-quantizer, which can take minutes; searches and writes wait for it",
                        s.index_type,
                        s.pq_m,
                        s.pq_nbits,
                        n_train,
                    )
                index.train(self._training_vectors(sample) if reduced is None else reduced[0])
            del sample
            if s.index_type == "hnsw":
                logger.info(
                    "building the HNSW graph (hnsw_m=%d, ef_construction=%d) over %d documents: minutes for a large "
                    "store; searches and writes wait for it",
                    s.hnsw_m,
                    s.ef_construction,
                    n,
                )
            self._build_rows = reduced
            del reduced
            try:
                self._add_all(index, live)
            finally:
                self._build_rows = None
        except BaseException:
            self.centre, self.offset, self._norm_bound = before
            self._copies.restore(tracked)
            raise
        top_id = table.ids[int(live[top_row])]
        if table.dead():
            table.compact()
        switched = held == "fp32" and self._held_refine != "fp32"
        self.index, self.viewed, self._held_refine, self._partial = index, False, held, False
        self._built_rows, self._warned_stale, self._built_at_load, self._rows_at_load = n, False, False, None
        self._written_rows = 0
        logger.info(
            "built %s index over %d documents in %.1f s (norm bound M=%.4g)%s",
            s.index_type,
            n,
            monotonic() - started,
            self._norm_bound,
            f"; its k-means trained on {n_train} of them and is not retrained as documents are added: call "
            f"rebuild() once the store has grown well past that (a warning past {STALE_GROWTH} x {n}; docs/ann.md, "
            "'Memory and threads at scale')"
            if kmeans
            else "",
        )
        if switched and warn_switch:
            self._warn_fp32_copies()
        if before[2] is not None and self._norm_bound > 10.0 * before[2]:
            logger.warning(
                "the %s index's norm bound M grew %.3g-fold (%.4g -> %.4g) because of document %r: one "
                "document far from the others costs HNSW / IVF most of their recall while it is in the store; "
                "deleting it shrinks M again at the next compaction (docs/ann.md, 'One outlier document')",
                s.index_type,
                self._norm_bound / before[2],
                before[2],
                self._norm_bound,
                top_id,
            )

    def add_rows(self, start: int, prepared: Any) -> None:
        table = self.table  # the kept d~ stay for rows_appended, unless a rebuild lets them go
        if self._partial and self.index is not None:  # over every row, the new ones too
            self.repair()
            return
        if self.index is None:
            needed = self._min_build_size()
            if len(table) >= needed:
                self.rebuild()
            elif not self._warned_unbuilt:
                self._warned_unbuilt = True
                logger.warning(
                    "%s index not built yet: %d documents, fewer than the %d it needs (%s); searches are exact "
                    "until then",
                    self.settings.index_type,
                    len(table),
                    needed,
                    self._build_rule(),
                )
            return
        assert self._norm_bound is not None
        # float16 refine copies above float16's range, all finite, kept from an earlier release (attach)
        fp16_over = self._held_refine == "fp16" and self._norm_bound > FLOAT16_MAX
        blocks, largest = [], self._top_norms
        for s in range(start, table.n_rows, _BUILD_BLOCK):
            shifted = self._shifted(self._centred(table.doc_vectors(slice(s, min(table.n_rows, s + _BUILD_BLOCK)))))
            sq = _row_sq_norms(shifted)
            norms = np.sqrt(sq)  # _row_norms, keeping the squares for the reduction below
            top = float(norms.max())
            if top > self._norm_bound:
                old = self._norm_bound
                self.rebuild()  # may refuse the new bound (IVF, PQ): logged once the index holds it
                self.rebuild_count += 1
                if self.index is not None:  # else dropped (too few live rows), which rebuild() logs
                    logger.warning(
                        "a new document's norm %.4g exceeded the index bound M=%.4g; rebuilt the %s index (M=%.4g)",
                        top,
                        old,
                        self.settings.index_type,
                        self._norm_bound,
                    )
                return
            reduced, _ = self._reduce_shifted(shifted, sq)  # the norm checked above, not computed again
            del shifted
            if fp16_over and float(np.abs(reduced).max()) > FLOAT16_MAX:
                logger.info(
                    "a new document's float16 refine copy would overflow (M=%.4g); rebuilding the %s index",
                    self._norm_bound,
                    self.settings.index_type,
                )
                self.rebuild()
                return
            blocks.append(reduced)
            largest = _largest_norms(largest, s + np.arange(norms.size), norms)
        for reduced in blocks:
            self.index.add(reduced)
        self._set_top_norms(largest)
        if self.settings.index_type == "hnsw":
            self._copies.track_added(self.index, start)
        self._written_rows += table.n_rows - start  # last: a failed add (undone by drop_entries_from) wrote none

    def remove_rows(self, dead: np.ndarray) -> None:
        """Re-add the (compacted) table's rows; rebuild where ``M`` is now far above every live norm.

        ``M`` only grows as documents come (a rebuild when one exceeds it), so deleting the
        outlier that set it would leave every other document squeezed under a bound far above
        its norm, and recall low. When ``M / norm_headroom`` is more than twice the largest live
        norm, and there are enough rows to train the index (:meth:`_min_build_size`), the index
        is rebuilt with a new ``M``. The kept ``d~`` of the exact path do not depend on the index: the store
        compacts them after (:meth:`FaissEngine.rows_compacted`), unless a rebuild here lets them go.
        """
        if self.index is None:
            return
        s = self.settings
        if s.index_type == "hnsw":  # as long as a build's graph (logged as it starts there too)
            logger.info(
                "compacting the HNSW index: building its graph again (hnsw_m=%d, ef_construction=%d) over the %d "
                "live documents, without the %d deleted or replaced: minutes for a large store; searches and writes "
                "wait for it",
                s.hnsw_m,
                s.ef_construction,
                self.table.n_rows,
                dead.size,
            )
        top = self._refill()
        assert self._norm_bound is not None
        limit = self._norm_bound / self.settings.norm_headroom
        if limit > 2.0 * top and self.table.n_rows >= self._min_build_size():
            logger.info(
                "the largest live document norm %.4g is under half of M / norm_headroom = %.4g after the deletions; "
                "rebuilding the %s index",
                top,
                limit,
                self.settings.index_type,
            )
            try:
                self.rebuild()
            except Exception as exc:  # the engine is unchanged, and consistent: keep the old M
                logger.warning("rebuild after the deletions failed (%s); the index keeps M=%.4g", exc, self._norm_bound)

    def drop_entries_from(self, n: int) -> None:
        """Keep only the index entries of rows below ``n`` (HNSW cannot remove: every row is re-added)."""
        self._forget_kept()
        if self.index is not None and self.index.ntotal > n:
            self._refill()

    def _refill(self) -> float:
        """Reset the index (its trained quantizers kept; HNSW graphs built again) and add every table row back.

        The index is marked partial until every row is back in: an interrupt (``KeyboardInterrupt``) or a failure
        (``MemoryError``) on the way leaves it holding only some rows, under the compacted row numbers. Searches
        are then exact (:meth:`top_k`, as without an index), :meth:`add_rows` and :meth:`repair` (the next write
        or save) rebuild it from the table, and so does ``KLStore.rebuild()``.

        Returns:
            The largest norm of the rows' centred, shifted ``d~`` (:meth:`_add_all`).
        """
        self.own()
        self._partial = True
        self.index.reset()
        top = self._add_all(self.index)
        self._partial = False
        return top

    def repair(self) -> None:
        """Rebuild an index left partial by an interrupted :meth:`_refill` (callers hold the write lock)."""
        if self._partial and self.index is not None:
            logger.warning(
                "the %s index holds %d of the %d rows after an interrupted re-add (a compaction, or the undo of a "
                "failed add): rebuilding it",
                self.settings.index_type,
                self.index.ntotal,
                self.table.n_rows,
            )
            self.rebuild()

    # ------------------------------------------------------------------- load
    def check_loaded(self, cfg_path: Path) -> None:
        """Check a loaded index against its config's ``norm_bound`` M (after :meth:`restore`'s check saw every row).

        Every reduced document vector in the index has norm exactly M (the reduction appends
        ``sqrt(M^2 - ||d~||^2)``), and every stored document's shifted ``d~`` must fit under M. A
        damaged ``norm_bound`` would load and silently rank differently, so both are checked: all
        rows against the lower bound, a few rows reconstructed from the index against M itself
        (compressed codes reconstruct approximately, hence the loose factor of 2).
        """
        faiss, bound = _faiss(), self._norm_bound
        assert bound is not None
        top = self._loaded_top
        if top > bound * (1.0 + 1e-5):
            raise StoreFormatError(
                f"{cfg_path}: field 'norm_bound' is {bound:.6g}, below the largest stored document norm {top:.6g} "
                "(computed with the fields 'index_centre' and 'index_offset')"
            )
        n = self.table.n_rows
        rows = np.unique(np.linspace(0, n - 1, num=min(n, 8)).astype(np.int64))
        # FAISS crashes (not raises) reconstructing fast-scan codes and memory-mapped IVF lists
        names = {type(self.index).__name__}
        with contextlib.suppress(RuntimeError, AttributeError):
            names.add(type(faiss.extract_index_ivf(self.index)).__name__)
        if self.viewed or any("FastScan" in name for name in names):
            self._check_centroid_norms(bound, cfg_path, names)
            return
        recon = _reconstruct(self.index, rows)
        if recon is None:
            logger.debug("index %s cannot reconstruct rows; norm_bound checked from below only", "/".join(names))
            return
        norms = np.linalg.norm(recon.astype(np.float64), axis=1)
        if not np.all((norms > bound / 2.0) & (norms < bound * 2.0)):
            raise StoreFormatError(
                f"{cfg_path}: field 'norm_bound' is {bound:.6g}, but the index's vectors have norms "
                f"{norms.min():.6g} to {norms.max():.6g} (they must all equal it)"
            )
        self._check_centre(recon, rows, cfg_path)

    def _check_centre(self, recon: np.ndarray, rows: np.ndarray, cfg_path: Path) -> None:
        """Reconstructed rows against the stored Gaussians' ``d~`` around ``index_centre``, shifted by ``index_offset``.

        The expected rows come from :func:`score_vectors_float32` (float32 ``d~`` of the centred
        means, as the flat index checks its own), not from the build's code path. Uncompressed
        codes (and float32 refine copies, :meth:`refine_codes`) are compared to within ``1e-5`` of
        ``M + |o|`` (float32 rounding); ``refine="fp16"`` codes (what an ``IndexRefine`` reconstructs
        from) to within ``2e-3 M``. SQ8 codes clip
        values outside the range they were trained on, so the expected rows are first encoded and
        decoded by the index's own SQ8 codec, then compared to within ``0.02 M`` (8 bits over a
        per-dimension range up to ``2 M``: a few quantization steps). PQ codes without a refine
        stage are not compared: their reconstruction error is of the order of what a damaged
        centre changes (their norm is still checked against ``M``).
        """
        s, bound = self.settings, self._norm_bound
        assert bound is not None
        codes = self._held_refine if s.refine is not None else s.compression
        tol = {None: 1e-5, "fp32": 1e-5, "fp16": 2e-3, "sq8": 2e-2}.get(codes)
        what = f"{cfg_path}: field 'index_centre' (or 'index_offset') does not match index.faiss"
        if tol is None:
            logger.debug("index_centre not checked against %s codes (lossy)", codes)
            return
        table, w = self.table, 2 * self.table.mean.shape[1] + 1
        g = Gaussians(np.asarray(table.mean[rows]), np.asarray(table.var[rows]), validate=False)
        expected = score_vectors_float32(g, "document", centre=self.centre, row_numbers=rows).astype(np.float64)
        expected[:, 0] -= self.offset
        if codes == "sq8":
            try:
                reduced = reduce_document_vectors(expected, 0.0, bound * (1.0 + 1e-5), width=self.width)
            except ValueError as exc:
                raise StoreFormatError(f"{what}: {exc}") from exc
            decoded = _sq8_round_trip(self.index, reduced)
            if decoded is None:
                logger.debug("index_centre not checked: the SQ8 codec of this index cannot encode rows")
                return
            expected = decoded[:, :w].astype(np.float64)
        atol = tol * (bound + (abs(self.offset) if codes in (None, "fp32") else 0.0))
        _check_rows(recon[:, :w], expected, rows, atol, what)

    def _check_centroid_norms(self, bound: float, cfg_path: Path, names: set[str]) -> None:
        """The coarse centroids (exact vectors, in memory) average reduced vectors of norm M."""
        faiss = _faiss()
        try:
            ivf = faiss.extract_index_ivf(self.index)
            cent = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        except (RuntimeError, AttributeError):
            logger.debug("norm_bound of a %s index checked from below only", "/".join(sorted(names)))
            return
        top_c = float(np.linalg.norm(cent.astype(np.float64), axis=1).max())
        if not bound / 1000.0 < top_c < bound * 1.01:
            raise StoreFormatError(
                f"{cfg_path}: field 'norm_bound' is {bound:.6g}, but the index's coarse centroids have norms "
                f"up to {top_c:.6g} (they average vectors of norm equal to it)"
            )

    # ----------------------------------------------------------------- search
    def top_k(
        self, qg: Gaussians, kk: int, mask: np.ndarray | None, n_allowed: int, filtered: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        cand = min(n_allowed, max(kk * s.rescore_factor, s.rescore_pool))
        keep = kk + max(16, 2 * kk)  # candidates that reach the float64 re-scoring
        if self.index is None or self._partial or n_allowed <= cand or (filtered and n_allowed <= s.exact_threshold):
            return self._exact_top_k(qg, kk, mask)
        rescue = self._copies.rows(mask, kk)  # read once: an add may replace it meanwhile
        far = self._far if mask is None else self._far[mask[self._far]]  # see _far_out
        if far.size:
            rescue = np.union1d(rescue, far)
        if rescue.size > self._copies.share * n_allowed:  # see HnswCopies: cheaper exactly
            return self._exact_top_k(qg, kk, mask)
        pool, trimmed = self._approx_candidates(qg, cand, mask, n_allowed, keep=keep)
        # efSearch >= the pool, and at least that many rows are allowed: an HNSW search that returns fewer did
        # not reach part of the graph (e.g. next to many identical documents; see HnswCopies), so its
        # pool may miss the best rows
        few = (pool >= 0).sum(axis=1) < pool.shape[1] if s.index_type == "hnsw" else np.zeros(len(pool), bool)
        if rescue.size:  # scored apart (_with_rescue): out of the pools
            taken = np.zeros(self.table.n_rows, dtype=bool)
            taken[rescue] = True
            pool = np.where(taken[np.maximum(pool, 0)], -1, pool)
            if trimmed is not None:
                trimmed = (np.where(taken[np.maximum(trimmed[0], 0)], -1, trimmed[0]), trimmed[1])
        rows, scores = self._pool_top_k(qg, pool, mask, kk, keep, trimmed)
        if rescue.size:
            rows, scores = self._with_rescue(qg, rows, scores, rescue)
        few |= (rows >= 0).sum(axis=1) < kk
        short = np.flatnonzero(few)
        if short.size:
            logger.debug("%d query(ies) got fewer candidates than asked for; searching exactly", short.size)
            rows[short], scores[short] = self._exact_top_k(qg[short], kk, mask)
        return rows, scores

    def _with_rescue(
        self, qg: Gaussians, rows: np.ndarray, scores: np.ndarray, rescue: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's top ``(rows, scores)`` merged with the exact top of the ``rescue`` rows (allowed, not in it).

        The rescue rows are scored as the exact search scores every row (:func:`exact_top_k`: a
        float32 matrix product, re-scored in float64), ``_RESCUE_QUERY_BLOCK`` queries at a time.
        """
        nq, kk = rows.shape
        ranks = self.tie_rank()
        best = np.full((nq, kk), -1, dtype=np.int64)
        best_scores = np.full((nq, kk), -np.inf)
        for s in range(0, nq, _RESCUE_QUERY_BLOCK):
            e = min(nq, s + _RESCUE_QUERY_BLOCK)
            r, sc = exact_top_k(
                qg[s:e],
                self.table.gaussians,
                kk,
                rows=rescue,
                margin=_first_pool_margin(kk),
                doc_sumlogvar=self.table.sumlogvar,
                tie_rank=ranks,
                max_block_elements=_RESCORE_BLOCK,
            )
            best[s:e, : r.shape[1]], best_scores[s:e, : r.shape[1]] = r, sc
        return top_k_rows(np.concatenate([scores, best_scores], 1), np.concatenate([rows, best], 1), kk, ranks)

    def _approx_candidates(
        self, qg: Gaussians, cand: int, mask: np.ndarray | None, n_allowed: int, keep: int | None = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Each query's candidate pool from the index, and its float32 trim to ``keep`` where one is sound.

        Without compression the index's L2 distances on the reduced vectors are an exact monotone
        function of ``<q~, d~>`` up to float32 rounding, so the best ``keep`` by distance go on to
        the (costlier) float64 re-scoring, with a bound on what the others can score
        (:meth:`_l2_score_upper`); compressed codes give no such bound (:meth:`_prescore_bounded`
        trims their pool instead).

        Returns:
            ``(pool, trimmed)``: the pool's rows ``(nq, c)`` (``-1`` padding), and ``(kept rows,
            upper bound on the exact -KL of every row left out)`` or ``None`` when not trimmed.
        """
        faiss, s = _faiss(), self.settings
        qr = self._query_reduced(qg)
        sel = None if mask is None else self._selector(mask)
        if s.index_type == "hnsw":
            widen = 1.0 if mask is None else min(8.0, self.table.n_rows / max(1, n_allowed))
            params: Any = faiss.SearchParametersHNSW(efSearch=int(max(s.ef_search, cand) * widen))
        else:
            nprobe = self._nprobe(None if mask is None else n_allowed)
            params = faiss.SearchParametersIVF(nprobe=nprobe, max_codes=0)
        if sel is not None:
            params.sel = sel
        if s.refine is not None:
            # the base index's pool of ``cand``, re-ranked on the refine codes down to ``keep``; an IndexRefine
            # takes only its own parameter type, so a pool no larger than ``keep`` still needs it (k_factor 1)
            shrink = keep is not None and cand > keep
            k_factor = cand / keep if shrink and keep is not None else 1.0
            params = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=params)
            cand = keep if shrink and keep is not None else cand
        dist, labels = self.index.search(qr, cand, params=params)
        if keep is None or s.compression is not None or labels.shape[1] <= keep:
            return labels, None
        dist = np.where(labels < 0, np.inf, dist)
        best = np.argpartition(dist, keep - 1, axis=1)[:, :keep]
        left_out = dist.copy()
        np.put_along_axis(left_out, best, np.inf, axis=1)
        return labels, (np.take_along_axis(labels, best, axis=1), self._l2_score_upper(qg, left_out.min(axis=1)))

    def _nprobe(self, n_allowed: int | None) -> int:
        """The IVF lists a search scans: ``nprobe``, and with ``n_allowed`` of the index's rows allowed (``None``:
        all), ``nprobe x rows / n_allowed`` (at most ``nlist``).

        The lists scanned then hold about as many allowed rows as ``nprobe`` lists hold rows, so a filter
        keeps the recall of an unfiltered search (a fixed factor of at most 8 lost a fifth of the matching
        top 10 under a 0.5% filter; docs/ann.md, 'Filters on an approximate store'). FAISS skips the rows the
        selector does not allow before computing a distance, so it computes about as many as without a filter.
        """
        s = self.settings
        if n_allowed is None:
            return int(min(s.nlist, s.nprobe))
        return int(min(s.nlist, math.ceil(s.nprobe * self.table.n_rows / max(1, n_allowed))))

    def _l2_score_upper(self, qg: Gaussians, dist: np.ndarray) -> np.ndarray:
        """Per query, an upper bound on the exact ``-KL`` of any row whose float32 L2 distance is ``>= dist``.

        With ``x_q``, ``x_d`` the reduced vectors (norm ``M``) and ``q~`` the query's (centred) rewrite,
        ``-KL = o + c(q) + ||q~|| M - ||q~|| ||x_q - x_d||^2 / (2 M)``. FAISS's float32 distance of the
        stored float32 vectors differs from the exact one by at most ``4 gamma_{n+2} M^2`` (any order of summation, the
        difference of squares or the expanded form ``|x|^2 + |y|^2 - 2 <x, y>``) plus ``(8 u + 4 u^2)
        M^2`` from rounding the float64 vectors to float32 (``u``: float32 unit roundoff, ``n`` the
        vector length); the bound is 1% looser still, for the float64 arithmetic around it. Unlike the
        flat index's bound this one grows with ``M^2``, so where the margin is small (large means,
        tiny variances) the whole pool is re-scored instead.
        """
        assert self._norm_bound is not None
        m, n, u = self._norm_bound, self.width + 2, FLOAT32_UNIT_ROUNDOFF
        gamma = n * u / (1.0 - n * u)
        err = 1.01 * (4.0 * gamma + 8.0 * u + 4.0 * u * u) * m * m
        qn = np.linalg.norm(self._query_vectors(qg), axis=1)
        constant = self.offset + np.asarray(kl_query_constant(qg), dtype=np.float64) + qn * m
        with np.errstate(invalid="ignore"):
            upper = constant - qn * (dist.astype(np.float64) - err) / (2.0 * m)
        upper = upper + 1e-12 * (np.abs(constant) + qn * m)  # float64 rounding of the line above
        return np.where(dist == np.inf, -np.inf, np.where(np.isnan(upper), np.inf, upper))

    def _prescore(self, qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None, keep: int) -> np.ndarray:
        """The best ``keep`` candidates of each row by a float32 ``-KL`` (see :meth:`_prescore_bounded`)."""
        return self._prescore_bounded(qg, labels, mask, keep)[0]

    def _prescore_bounded(
        self, qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None, keep: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``keep`` candidates of each row by a float32 ``-KL``, and the most any other can score.

        A large candidate pool (compressed indexes need one) would otherwise all go through the
        float64 re-scoring; this pass reads each candidate's Gaussian once, in float32, and only
        ``keep`` per query go on to the exact score. Its float32 error is bounded per candidate
        (for ``p = -(sum log var_d + t)``, ``t = sum_i (var_q + (mu_q - mu_d)^2) / var_d``)::

            |p^ - p| <= u |S| + 2 u |p^| + rho / (1 - rho) * t^,
            rho = gamma_{k+6} + 2 u r + 6 u^2 r^2,  r = max |mu_q| / sqrt(min var_q)

        (the ``r`` terms bound the rounding of ``mu_q`` against ``(mu_q - mu_d)^2`` via
        Cauchy-Schwarz and ``sum 1 / var_d <= t / min var_q``).

        Returns:
            ``(kept, upper)``: the kept rows, shape ``(nq, keep)`` (the input when it is no wider),
            and per query an upper bound on the exact ``-KL`` of every allowed candidate left out
            (``-inf`` when none is; NaN or ``inf`` when the float32 pass cannot tell).
        """
        nq, c = labels.shape
        if c <= keep:
            return labels, np.full(nq, -np.inf)
        k = int(qg.dim)
        u = FLOAT32_UNIT_ROUNDOFF
        qm64, qv64 = np.asarray(qg.mean, dtype=np.float64), np.asarray(qg.var, dtype=np.float64)
        qm = qm64.astype(np.float32)
        qvar = qv64.astype(np.float32)
        r = np.abs(qm64).max(axis=1) / np.sqrt(qv64.min(axis=1))
        rho = (k + 6) * u / (1 - (k + 6) * u) + 2 * u * r + 6 * (u * r) ** 2
        rho = np.where(rho < 0.5, rho, np.inf)
        sumlog_q = np.log(qv64).sum(axis=1)
        out = np.empty((nq, keep), dtype=labels.dtype)
        upper = np.empty(nq)
        table = self.table

        def block(s: int, e: int) -> None:
            lab = labels[s:e]
            safe, t = pool_terms(qm[s:e], qvar[s:e], table.mean, table.var, lab, np.float32)
            bad = lab < 0
            if mask is not None:
                bad |= ~mask[safe]
            sumlog_d = table.sumlogvar[safe]
            score = -(sumlog_d.astype(np.float32) + t)
            score[bad] = -np.inf
            best = np.argpartition(-score, keep - 1, axis=1)[:, :keep]
            out[s:e] = np.take_along_axis(lab, best, axis=1)
            with np.errstate(invalid="ignore", over="ignore"):
                t64, p64 = t.astype(np.float64), score.astype(np.float64)
                err = u * np.abs(sumlog_d) + 2 * u * np.abs(p64) + (rho[s:e, None] / (1 - rho[s:e, None])) * t64
                high = p64 + err
            dropped = ~bad
            np.put_along_axis(dropped, best, False, axis=1)
            high = np.where(dropped, high, -np.inf)
            # back to -KL: -KL = (p + sum log var_q + k) / 2, with a little float64 slack
            top = high.max(axis=1)
            with np.errstate(invalid="ignore"):
                back = 0.5 * (top + sumlog_q[s:e] + k) + 1e-9 * np.abs(top)
            upper[s:e] = np.where(top == -np.inf, -np.inf, back)

        _query_blocks(nq, c * k, block)
        return out, upper

    def _pool_top_k(
        self,
        qg: Gaussians,
        labels: np.ndarray,
        mask: np.ndarray | None,
        kk: int,
        keep: int,
        trimmed: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``kk`` of each query's candidate pool (``-1`` / ``-inf`` padding).

        The pool is trimmed to ``keep`` in float32 (``trimmed``: already, by the index's distances;
        else by :meth:`_prescore_bounded`); a query whose left-out candidates are not provably below
        its ``kk``-th exact score has its whole pool re-scored in float64.
        """
        kept, upper = trimmed if trimmed is not None else self._prescore_bounded(qg, labels, mask, keep)
        ranks = self.tie_rank()
        rows, scores = top_k_rows(self._rescore(qg, kept, mask), kept, kk, ranks)
        redo = np.flatnonzero(~(upper < scores[:, kk - 1]))
        if kept is not labels and redo.size:
            logger.debug("%d query(ies): float32 pre-selection not provably enough; re-scoring the pool", redo.size)
            rows[redo], scores[redo] = top_k_rows(self._rescore(qg[redo], labels[redo], mask), labels[redo], kk, ranks)
        return rows, scores


def _reconstruct(index: Any, rows: np.ndarray) -> np.ndarray | None:
    """Rows of ``index`` decoded back to vectors, or ``None`` where FAISS cannot reconstruct them."""
    try:
        return np.stack([index.reconstruct(int(r)) for r in rows])
    except RuntimeError:
        pass
    try:  # IVF indexes reconstruct through a direct map, built for this check and dropped after
        ivf = _faiss().extract_index_ivf(index)
        ivf.make_direct_map(True)
        try:
            return np.stack([index.reconstruct(int(r)) for r in rows])
        finally:
            ivf.make_direct_map(False)
    except (RuntimeError, AttributeError):
        return None


def _sq8_round_trip(index: Any, vectors: np.ndarray) -> np.ndarray | None:
    """``vectors`` encoded and decoded by the codec ``index.reconstruct`` decodes (a refine stage, an HNSW
    storage, or the IVF index itself), or ``None`` where FAISS cannot."""
    faiss = _faiss()
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexRefine):
        codec = faiss.downcast_index(idx.refine_index)
    elif isinstance(idx, faiss.IndexHNSW):
        codec = faiss.downcast_index(idx.storage)
    else:
        codec = idx
    try:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        return np.asarray(codec.sa_decode(codec.sa_encode(x)))
    except (RuntimeError, AttributeError):
        return None


def new_engine(settings: Settings, table: DocumentTable) -> FaissEngine:
    """The engine for ``settings.index_type``."""
    return FlatEngine(settings, table) if settings.index_type == "flat" else ApproxEngine(settings, table)
