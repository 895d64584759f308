"""``KLStore``: a document store searched by exact ``-KL(Q || D)`` with FAISS.

Documents and queries are diagonal Gaussians (see :mod:`kl_retrievers.gaussian`).  The
store keeps every document's Gaussian (float32), its text and metadata, and a FAISS index:

* ``"flat"`` (default, exact): ``IndexFlatIP`` over the ``2k + 1``-dimensional rewrite
  ``d~`` of each document; a query searches with ``q~`` and a small candidate margin is
  re-scored with the exact ``-KL`` in float64, so rankings match a brute-force float64
  evaluation and reported scores are the true ``-KL`` (query constant ``c(q)`` included).
* ``"hnsw"`` / ``"ivf"`` (approximate, optional ``"sq8"`` or ``"pq"`` compression): built on
  the MIPS -> L2 reduction of METHOD.md.  The first coordinate of ``d~`` (a sum over all ``k``
  dimensions) is first shifted by ``o``, its mean over a sample at build time: ``q~`` has ``1``
  there, so ``<q~, d~>`` only drops by the constant ``o`` and no ranking changes, but a large
  shared offset no longer dominates every norm (IVF recall on synthetic Gaussians rises
  sharply).  Every shifted document vector ``d^`` gets one more coordinate
  ``sqrt(M^2 - ||d^||^2)`` (``M = norm_headroom * max ||d^||``, the headroom leaves room for
  later documents), a query gets ``0`` there and is scaled to norm ``M``; the index is
  searched by L2 and a candidate pool is re-scored with the exact ``-KL``.  A later document
  whose norm exceeds ``M`` triggers a rebuild (logged, counted in ``rebuild_count``).
  Deletions are tombstones (HNSW has no ``remove_ids``), excluded at search time with an
  ``IDSelector`` and compacted on :meth:`KLStore.save`, :meth:`KLStore.compact`, a rebuild,
  or when more than ``compact_threshold`` of the rows are dead.
* ``compression="pq"`` on ``"ivf"``: lists are still chosen by L2 on the reduced vectors, but
  the PQ codes are scanned by inner product (the same ranking: every reduced document has norm
  ``M``), because L2 lookup tables spend their precision on the constant ``2 M^2``;
  ``pq_nbits=4`` uses FAISS's SIMD fast-scan lists.  ``refine="sq8"`` (or ``"fp16"``) keeps a
  second, finer copy of the reduced vectors that re-ranks a large pool inside FAISS, so only
  ``k + max(16, 2k)`` candidates per query reach the exact re-scoring.  Measured at 1M
  synthetic Gaussians in ``docs/ann.md``.

Scores are ``-KL`` (:data:`~kl_retrievers.gaussian.SCORE_NAME`): **higher is better**.

Examples:
    >>> import numpy as np
    >>> from kl_retrievers.gaussian import Gaussians
    >>> rng = np.random.default_rng(0)
    >>> docs = Gaussians(rng.normal(size=(50, 8)), np.exp(rng.normal(0, 0.5, size=(50, 8))))
    >>> store = KLStore()
    >>> ids = store.add(gaussians=docs, ids=[f"d{i}" for i in range(50)])
    >>> hits = store.search(docs[3], k=2)
    >>> hits[0].id, len(hits)
    ('d3', 2)
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from kl_retrievers._io import atomic_dir, library_version
from kl_retrievers.filters import MetadataFilter, compile_filter
from kl_retrievers.gaussian import (
    SCORE_DIRECTION,
    SCORE_NAME,
    Gaussians,
    kl_document_vectors,
    kl_query_vectors,
)
from kl_retrievers.hub import sha256_file

logger = logging.getLogger(__name__)
_faiss: Any = faiss  # the SWIG stubs do not know SearchParameters keyword arguments

__all__ = [
    "INDEX_TYPES",
    "FORMAT_VERSION",
    "KLStore",
    "SearchResult",
    "StoredDocument",
    "DeleteReport",
    "StoreFormatError",
]

INDEX_TYPES = ("flat", "hnsw", "ivf")
COMPRESSIONS = (None, "sq8", "pq")
#: Second-stage codes that re-rank a compressed index's pool in FAISS before the exact re-scoring.
REFINES = (None, "sq8", "fp16")
FORMAT_VERSION = 1
_FORMAT_NAME = "kl-retrievers/klstore"
_CONFIG = "config.json"
_MEAN = "mean.npy"
_VAR = "var.npy"
_DOCS = "documents.jsonl"
_INDEX = "index.faiss"
# Elements (queries x candidates x dims) re-scored per block, and rows per block when building.
_RESCORE_BLOCK = 1 << 22
_BUILD_BLOCK = 32768
_EXACT_BLOCK = 65536


class StoreFormatError(ValueError):
    """A saved store folder is incomplete, inconsistent or corrupted."""


class Encoder(Protocol):
    """What ``KLStore`` needs from an encoder (duck-typed)."""

    name_or_path: str

    def encode_queries(self, texts: list[str], batch_size: int = ..., show_progress_bar: bool = ...) -> Gaussians:
        """Encode queries as numpy Gaussians."""
        ...

    def encode_documents(self, texts: list[str], batch_size: int = ..., show_progress_bar: bool = ...) -> Gaussians:
        """Encode documents as numpy Gaussians."""
        ...


@dataclass(frozen=True)
class SearchResult:
    """One ranked hit: ``score`` is the exact ``-KL(Q || D)`` (higher is better).

    Examples:
        >>> SearchResult("d1", -3.5, "some text", {"lang": "en"}).score
        -3.5
    """

    id: str
    score: float
    text: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredDocument:
    """A stored document as returned by :meth:`KLStore.get_by_ids`.

    Examples:
        >>> StoredDocument("d1", "text", {}).id
        'd1'
    """

    id: str
    text: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeleteReport:
    """Outcome of :meth:`KLStore.delete`: which ids were removed and which were not found.

    Examples:
        >>> DeleteReport(deleted=["a"], missing=["b"]).missing
        ['b']
    """

    deleted: list[str]
    missing: list[str]


class _RWLock:
    """A writer-preferring readers-writer lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _write_jsonl(path: Path, ids: list[str], texts: list[str | None], metadatas: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, text, meta in zip(ids, texts, metadatas, strict=True):
            f.write(json.dumps({"id": doc_id, "text": text, "metadata": meta}, ensure_ascii=False) + "\n")


def _write_index(path: Path, index: Any) -> None:
    faiss.write_index(index, str(path))


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    return int(k)


def _as_numpy_gaussians(g: Gaussians, what: str) -> Gaussians:
    if not isinstance(g, Gaussians):
        raise TypeError(f"{what} must be a Gaussians batch; got {type(g).__name__}")
    g = g.numpy()
    mean, var = np.asarray(g.mean), np.asarray(g.var)
    if not (np.isfinite(mean).all() and np.isfinite(var).all()):
        raise ValueError(f"{what} must be finite; found NaN or infinite values")
    if not (var > 0).all():
        raise ValueError(f"{what} variances must be > 0")
    return Gaussians(mean, var, validate=False)


#: Threads for the numpy re-scoring of candidate pools (numpy releases the GIL in its loops).
_RESCORE_THREADS = max(1, min(4, os.cpu_count() or 1))


def _query_blocks(nq: int, per_query: int, fn: Callable[[int, int], None]) -> None:
    """Call ``fn(start, stop)`` over blocks of queries, on several threads when the work is large.

    ``per_query`` is the number of array elements one query touches; a block holds at most
    ``_RESCORE_BLOCK`` of them. Blocks write disjoint rows of their output, so they can run at once.
    """
    step = max(1, _RESCORE_BLOCK // max(1, per_query))
    threads = _RESCORE_THREADS if nq * per_query >= 1 << 20 else 1
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


def _disown(*objects: Any) -> None:
    """Hand SWIG-wrapped FAISS objects to the C++ index that now owns (and frees) them."""
    for obj in objects:
        obj.this.disown()


def _check_store_args(
    index_type: str,
    compression: str | None,
    dim: int | None,
    norm_headroom: float,
    positive: Sequence[tuple[str, Any]],
    compressions: Sequence[str | None] = COMPRESSIONS,
) -> None:
    """The argument checks shared by :class:`KLStore` and the Milvus store (ValueError naming the value)."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}; got {index_type!r}")
    if compression not in compressions:
        raise ValueError(f"compression must be one of {tuple(compressions)}; got {compression!r}")
    if compression is not None and index_type == "flat":
        raise ValueError("compression applies to 'hnsw' and 'ivf' only; the flat index is exact")
    if dim is not None and (isinstance(dim, bool) or int(dim) <= 0):
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    for name, value in positive:
        if isinstance(value, bool) or int(value) <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if not norm_headroom >= 1.0:
        raise ValueError(f"norm_headroom must be >= 1; got {norm_headroom!r}")


@dataclass
class _NewDocuments:
    """Validated input of one ``add`` call."""

    gaussians: Gaussians
    texts: list[str | None]
    ids: list[str]
    metadatas: list[dict[str, Any]]


def _new_documents(
    store: Any,
    texts: Sequence[str] | None,
    gaussians: Gaussians | None,
    ids: Sequence[str] | None,
    metadatas: Sequence[Mapping[str, Any] | None] | None,
) -> _NewDocuments | None:
    """Check an ``add`` call's arguments; ``None``: nothing to add.

    Texts without Gaussians are encoded with ``store.encoder`` (``store.batch_size``,
    ``store.show_progress_bar``).
    """
    encoder = store.encoder
    if texts is not None and isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    if gaussians is None:
        if texts is None:
            raise ValueError("add needs texts (with an encoder) or gaussians")
        if encoder is None:
            raise ValueError("adding texts without gaussians needs an encoder")
        text_list = list(texts)
        if not text_list:
            return None
        gaussians = encoder.encode_documents(
            text_list, batch_size=store.batch_size, show_progress_bar=store.show_progress_bar
        )
    g = _as_numpy_gaussians(gaussians, "document gaussians")  # type: ignore[arg-type]
    n = len(g)
    text_values: list[str | None] = list(texts) if texts is not None else [None] * n
    if len(text_values) != n:
        raise ValueError(f"got {len(text_values)} texts but {n} gaussians")
    if ids is None:
        id_values = [uuid.uuid4().hex for _ in range(n)]
    else:
        if isinstance(ids, str):
            raise ValueError("ids must be a sequence of strings, not a single string")
        id_values = [str(i) for i in ids]
        if len(id_values) != n:
            raise ValueError(f"got {len(id_values)} ids but {n} documents")
        if len(set(id_values)) != n:
            raise ValueError("ids must be unique within one add call")
    if metadatas is None:
        meta_values: list[dict[str, Any]] = [{} for _ in range(n)]
    else:
        meta_values = [dict(m) if m is not None else {} for m in metadatas]
        if len(meta_values) != n:
            raise ValueError(f"got {len(meta_values)} metadatas but {n} documents")
        for m in meta_values:
            json.dumps(m)  # fail early (TypeError) on non-serialisable metadata
    if n == 0:
        return None
    return _NewDocuments(g, text_values, id_values, meta_values)


def _query_gaussians(
    queries: str | Sequence[str] | Gaussians, *, encoder: Any, batch_size: int, dim: int | None
) -> Gaussians:
    """Query texts (encoded) or a Gaussians batch, checked and as float64."""
    if isinstance(queries, Gaussians):
        g = _as_numpy_gaussians(queries, "query gaussians")
    else:
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("queries must be strings or a Gaussians batch")
        if encoder is None:
            raise ValueError("searching by text needs an encoder; pass query Gaussians instead")
        if not texts:
            return Gaussians(np.zeros((0, dim or 1)), np.ones((0, dim or 1)), validate=False)
        g = _as_numpy_gaussians(
            encoder.encode_queries(texts, batch_size=batch_size, show_progress_bar=False), "query gaussians"
        )
    if dim is not None and g.dim != dim:
        raise ValueError(f"query gaussians have dimension {g.dim}; this store has dimension {dim}")
    return g.astype(np.float64)


def _one_query(query: str | Gaussians) -> list[str] | Gaussians:
    """``search``'s single query as a batch of one for ``search_batch``."""
    if isinstance(query, Gaussians) and len(query) != 1:
        raise ValueError(f"search takes one query; got {len(query)} (use search_batch)")
    if not isinstance(query, (str, Gaussians)):
        raise TypeError(f"query must be a string or Gaussians; got {type(query).__name__}")
    return query if isinstance(query, Gaussians) else [query]


class KLStore:
    """A document store ranked by exact ``-KL(Q || D)`` (higher is better), served by FAISS.

    Args:
        encoder: Optional encoder with ``encode_queries`` / ``encode_documents`` returning numpy
            :class:`Gaussians`, ``name_or_path`` and ``config.to_dict()``; needed to add or
            search by text.
        dim: Gaussian dimension ``k``; inferred from the first :meth:`add` when ``None``.
        index_type: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"``.
        hnsw_m: HNSW graph degree ``M``.
        ef_search: HNSW ``efSearch`` (raised to the candidate pool when smaller).
        ef_construction: HNSW ``efConstruction``.
        nlist: IVF number of lists.
        nprobe: IVF lists probed per query.
        compression: ``None``, ``"sq8"`` (8-bit scalar quantizer) or ``"pq"`` (product quantizer).
        pq_m: PQ sub-quantizers; the vector is zero-padded to a multiple of ``pq_m``.
        pq_nbits: Bits per PQ code (8 is standard; 4 trains much faster and, on ``"ivf"``,
            scans with FAISS's SIMD fast-scan kernels).
        refine: ``None``, ``"sq8"`` or ``"fp16"`` (compressed indexes only): re-rank the pool of
            ``rescore_pool`` candidates inside FAISS on 8-bit / float16 copies of the reduced
            vectors (+``2k + 2`` or ``2 (2k + 2)`` bytes a document) before the exact re-scoring.
        rescore_pool: Minimum candidates re-scored exactly per query on approximate indexes;
            the pool is ``max(rescore_pool, rescore_factor * k)``.
        rescore_factor: See ``rescore_pool``.
        norm_headroom: ``M = norm_headroom * max ||d~||`` for the L2 reduction (>= 1).
        exact_threshold: With a filter on an approximate index, search exactly over the
            matching documents when at most this many match.
        compact_threshold: Fraction of tombstoned rows above which the index is compacted.
        batch_size: Encoder batch size.
        show_progress_bar: Passed to the encoder when adding texts.
        seed: Seed for the training sample of IVF / SQ / PQ.

    Examples:
        >>> import numpy as np
        >>> from kl_retrievers.gaussian import Gaussians
        >>> store = KLStore(index_type="flat")
        >>> _ = store.add(gaussians=Gaussians(np.zeros((2, 4)), np.ones((2, 4))), ids=["a", "b"])
        >>> len(store)
        2
    """

    def __init__(
        self,
        encoder: Any | None = None,
        dim: int | None = None,
        *,
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_search: int = 256,
        ef_construction: int = 80,
        nlist: int = 1024,
        nprobe: int = 32,
        compression: str | None = None,
        pq_m: int = 64,
        pq_nbits: int = 8,
        refine: str | None = None,
        rescore_pool: int = 100,
        rescore_factor: int = 10,
        norm_headroom: float = 1.1,
        exact_threshold: int = 20000,
        compact_threshold: float = 0.3,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        seed: int = 0,
    ) -> None:
        _check_store_args(
            index_type,
            compression,
            dim,
            norm_headroom,
            [
                ("hnsw_m", hnsw_m),
                ("ef_search", ef_search),
                ("ef_construction", ef_construction),
                ("nlist", nlist),
                ("nprobe", nprobe),
                ("pq_m", pq_m),
                ("pq_nbits", pq_nbits),
                ("rescore_pool", rescore_pool),
                ("rescore_factor", rescore_factor),
                ("batch_size", batch_size),
            ],
        )
        if refine not in REFINES:
            raise ValueError(f"refine must be one of {REFINES}; got {refine!r}")
        if refine is not None and compression is None:
            raise ValueError(
                f"refine={refine!r} applies to a compressed index (compression 'sq8' or 'pq'); "
                "an uncompressed one is already exact"
            )
        self.encoder = encoder
        self.index_type = index_type
        self.hnsw_m = int(hnsw_m)
        self.ef_search = int(ef_search)
        self.ef_construction = int(ef_construction)
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)
        self.compression = compression
        self.pq_m = int(pq_m)
        self.pq_nbits = int(pq_nbits)
        self.refine = refine
        self.rescore_pool = int(rescore_pool)
        self.rescore_factor = int(rescore_factor)
        self.norm_headroom = float(norm_headroom)
        self.exact_threshold = int(exact_threshold)
        self.compact_threshold = float(compact_threshold)
        self.batch_size = int(batch_size)
        self.show_progress_bar = bool(show_progress_bar)
        self.seed = int(seed)
        #: Full rebuilds of an approximate index caused by a document norm above ``M``.
        self.rebuild_count = 0
        #: Tombstone compactions performed.
        self.compaction_count = 0
        self._lock = _RWLock()
        self._dim: int | None = None
        self._index: Any = None
        self._index_viewed = False  # memory-mapped FAISS data that must not be mutated
        self._norm_bound: float | None = None
        self._offset = 0.0  # subtracted from the first coordinate of d~ before the L2 reduction
        self._reset_rows(0)
        if dim is not None:
            self._init_dim(int(dim))

    # ------------------------------------------------------------------ basics
    def _reset_rows(self, k: int) -> None:
        self._mean = np.zeros((0, k), dtype=np.float32)
        self._var = np.ones((0, k), dtype=np.float32)
        self._sumlogvar = np.zeros(0, dtype=np.float64)
        self._alive = np.zeros(0, dtype=bool)
        self._ids: list[str] = []
        self._texts: list[str | None] = []
        self._metas: list[dict[str, Any]] = []
        self._row: dict[str, int] = {}

    def _init_dim(self, k: int) -> None:
        self._dim = k
        self._reset_rows(k)
        if self.index_type == "flat":
            self._index = faiss.IndexFlatIP(2 * k + 1)

    @property
    def dim(self) -> int | None:
        """The Gaussian dimension ``k`` (``None`` until known)."""
        return self._dim

    @property
    def is_built(self) -> bool:
        """Whether the FAISS index exists (approximate indexes are built once enough documents exist)."""
        return self._index is not None

    @property
    def norm_bound(self) -> float | None:
        """``M`` of the MIPS -> L2 reduction (approximate indexes only)."""
        return self._norm_bound

    @property
    def ids(self) -> list[str]:
        """Ids of the live documents, in insertion order."""
        with self._lock.read():
            return [i for i, a in zip(self._ids, self._alive, strict=True) if a]

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row

    def __repr__(self) -> str:
        return f"KLStore(index_type={self.index_type!r}, dim={self._dim}, documents={len(self)})"

    def _index_params(self) -> dict[str, Any]:
        return {
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "ef_construction": self.ef_construction,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "compression": self.compression,
            "pq_m": self.pq_m,
            "pq_nbits": self.pq_nbits,
            "refine": self.refine,
            "rescore_pool": self.rescore_pool,
            "rescore_factor": self.rescore_factor,
            "norm_headroom": self.norm_headroom,
            "exact_threshold": self.exact_threshold,
            "compact_threshold": self.compact_threshold,
            "seed": self.seed,
        }

    # ---------------------------------------------------------- vector helpers
    @property
    def _reduced_dim(self) -> int:
        assert self._dim is not None
        d = 2 * self._dim + 2
        if self.compression == "pq":
            d = -(-d // self.pq_m) * self.pq_m
        return d

    def _doc_vectors(self, rows: np.ndarray | slice) -> np.ndarray:
        """Float64 ``d~`` for the given rows."""
        g = Gaussians(self._mean[rows].astype(np.float64), self._var[rows].astype(np.float64), validate=False)
        return np.asarray(kl_document_vectors(g))

    def _shifted(self, dvec: np.ndarray) -> np.ndarray:
        """``d~`` with its first coordinate shifted by the build-time offset (``<q~, d~>`` drops by a constant)."""
        if not self._offset:
            return dvec
        out = dvec.copy()
        out[:, 0] -= self._offset
        return out

    def _reduced(self, dvec: np.ndarray) -> np.ndarray:
        assert self._norm_bound is not None
        dvec = self._shifted(dvec)
        out = np.zeros((dvec.shape[0], self._reduced_dim), dtype=np.float32)
        out[:, : dvec.shape[1]] = dvec
        sq = np.maximum(self._norm_bound**2 - np.einsum("ij,ij->i", dvec, dvec), 0.0)
        out[:, dvec.shape[1]] = np.sqrt(sq)
        return out

    def _query_reduced(self, qg: Gaussians) -> np.ndarray:
        assert self._norm_bound is not None
        qv = np.asarray(kl_query_vectors(qg))
        out = np.zeros((qv.shape[0], self._reduced_dim), dtype=np.float32)
        scale = self._norm_bound / np.linalg.norm(qv, axis=1, keepdims=True)
        out[:, : qv.shape[1]] = qv * scale
        return out

    def _min_build_size(self) -> int:
        if self.index_type == "ivf":
            return max(self.nlist * 8, 4 << self.pq_nbits if self.compression == "pq" else 1)
        if self.compression == "pq":
            return 4 << self.pq_nbits
        if self.compression == "sq8":
            return 256
        return 1

    def _new_approx_index(self) -> Any:
        d = self._reduced_dim
        if self.compression is None:
            storage = "Flat"
        elif self.compression == "sq8":
            storage = "SQ8"
        else:
            storage = f"PQ{self.pq_m}x{self.pq_nbits}"
        if self.index_type == "hnsw":
            index = faiss.index_factory(d, f"HNSW{self.hnsw_m},{storage}", faiss.METRIC_L2)
            _faiss.downcast_index(index).hnsw.efConstruction = self.ef_construction
        elif self.compression == "pq":
            index = self._new_ivf_pq(d)
        else:
            index = faiss.index_factory(d, f"IVF{self.nlist},{storage}", faiss.METRIC_L2)
        if self.refine is not None:
            # the pool's candidates are re-ranked on 8-bit / float16 copies of the reduced vectors
            # (C++, multithreaded), so a large pool costs far less than the exact re-scoring
            qtype = faiss.ScalarQuantizer.QT_8bit if self.refine == "sq8" else faiss.ScalarQuantizer.QT_fp16
            base, codes = index, faiss.IndexScalarQuantizer(d, qtype, index.metric_type)
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
        quantizer = faiss.IndexFlatL2(d)
        index: Any
        if self.pq_nbits == 4:
            index = faiss.IndexIVFPQFastScan(quantizer, d, self.nlist, self.pq_m, 4, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, self.nlist, self.pq_m, self.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        # plain k-means on the reduced vectors (FAISS makes it spherical for an inner-product IVF,
        # which would normalise the centroids to unit norm and leave residuals of norm ~M)
        index.cp.spherical = False
        index.own_fields = True
        _disown(quantizer)
        return index

    def _build_approx(self) -> None:
        """(Re)build the approximate index over every row; callers hold the write lock."""
        if self._alive.size and not self._alive.all():
            self._compact_rows()
        n = len(self._ids)
        index = self._new_approx_index()
        rng = np.random.default_rng(self.seed)
        if index.is_trained:  # the sample only sets the offset
            n_train = min(n, 16384)
        else:
            n_train = min(n, max(65536, 64 * self.nlist) if self.index_type == "ivf" else 65536)
        sample = self._doc_vectors(np.sort(rng.choice(n, size=n_train, replace=False)))
        # The first coordinate of d~, -1/2 sum_i (log var_i + mu_i^2 / var_i), is a sum over all k
        # dimensions: its shared offset (about -270 for k = 384 synthetic Gaussians) would dominate
        # ||d~||, the extra coordinate and hence the index's geometry. Shifting it changes no
        # ranking, since the query's first coordinate is 1. Only this coordinate is shifted:
        # centring all of d~ cut IVF recall on real SciFact Gaussians (0.88 -> 0.55, nprobe 32).
        self._offset = float(sample[:, 0].mean())
        max_norm = 0.0
        for s in range(0, n, _BUILD_BLOCK):
            dvec = self._shifted(self._doc_vectors(slice(s, s + _BUILD_BLOCK)))
            max_norm = max(max_norm, float(np.sqrt(np.einsum("ij,ij->i", dvec, dvec).max())))
        self._norm_bound = self.norm_headroom * max(max_norm, 1e-12)
        if not index.is_trained:
            index.train(self._reduced(sample))
        del sample
        for s in range(0, n, _BUILD_BLOCK):
            index.add(self._reduced(self._doc_vectors(slice(s, s + _BUILD_BLOCK))))
        self._index = index
        self._index_viewed = False
        logger.info("built %s index over %d documents (M=%.4g)", self.index_type, n, self._norm_bound)

    def _own_index(self) -> None:
        """Replace a memory-mapped index by an owned copy before mutating it."""
        if self._index is not None and self._index_viewed:
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
            self._index_viewed = False

    # ----------------------------------------------------------------- mutation
    def add(
        self,
        texts: Sequence[str] | None = None,
        *,
        gaussians: Gaussians | None = None,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        """Add (or replace) documents.

        Args:
            texts: Document texts; encoded with the encoder when ``gaussians`` is not given.
            gaussians: Precomputed document Gaussians (numpy or torch), one per document.
            ids: Document ids (uuid4 hex when omitted). An existing id is replaced (upsert).
            metadatas: One JSON-serialisable dict per document.

        Returns:
            The ids, in input order.

        Raises:
            ValueError: Mismatched lengths, wrong dimension, non-finite values, duplicate ids
                within the call, or texts without an encoder.

        Examples:
            >>> import numpy as np
            >>> s = KLStore()
            >>> s.add(["x"], gaussians=Gaussians(np.zeros((1, 3)), np.ones((1, 3))), ids=["x1"])
            ['x1']
        """
        new = _new_documents(self, texts, gaussians, ids, metadatas)
        if new is None:
            return []
        g, text_values, id_values, meta_values = new.gaussians, new.texts, new.ids, new.metadatas
        n = len(g)
        mean = np.ascontiguousarray(g.mean, dtype=np.float32)
        var = np.ascontiguousarray(g.var, dtype=np.float32)
        if not (var > 0).all() or not np.isfinite(var).all():
            raise ValueError("document variances underflow or overflow float32")
        with self._lock.write():
            if self._dim is None:
                self._init_dim(g.dim)
            if g.dim != self._dim:
                raise ValueError(f"document gaussians have dimension {g.dim}; this store has dimension {self._dim}")
            self._own_index()
            replaced = [i for i in id_values if i in self._row]
            for doc_id in replaced:
                self._alive[self._row.pop(doc_id)] = False
            start = len(self._ids)
            self._mean = np.concatenate([self._mean, mean])
            self._var = np.concatenate([self._var, var])
            self._sumlogvar = np.concatenate([self._sumlogvar, np.log(var.astype(np.float64)).sum(axis=1)])
            self._alive = np.concatenate([self._alive, np.ones(n, dtype=bool)])
            self._ids.extend(id_values)
            self._texts.extend(text_values)
            self._metas.extend(meta_values)
            for j, doc_id in enumerate(id_values):
                self._row[doc_id] = start + j
            self._index_new_rows(start)
            self._maybe_compact()
        if replaced:
            logger.info("replaced %d existing document(s)", len(replaced))
        return id_values

    def _index_new_rows(self, start: int) -> None:
        n = len(self._ids)
        if self.index_type == "flat":
            for s in range(start, n, _BUILD_BLOCK):
                self._index.add(self._doc_vectors(slice(s, min(n, s + _BUILD_BLOCK))).astype(np.float32))  # type: ignore[union-attr]
            return
        if self._index is None:
            if len(self._row) >= self._min_build_size():
                self._build_approx()
            return
        assert self._norm_bound is not None
        blocks = []
        for s in range(start, n, _BUILD_BLOCK):
            dvec = self._doc_vectors(slice(s, min(n, s + _BUILD_BLOCK)))
            shifted = self._shifted(dvec)
            top = float(np.sqrt(np.einsum("ij,ij->i", shifted, shifted).max()))
            if top > self._norm_bound:
                logger.warning(
                    "a new document's norm %.4g exceeds the index bound M=%.4g; rebuilding the %s index",
                    top,
                    self._norm_bound,
                    self.index_type,
                )
                self.rebuild_count += 1
                self._build_approx()
                return
            blocks.append(dvec)
        for dvec in blocks:
            self._index.add(self._reduced(dvec))

    def delete(self, ids: Sequence[str]) -> DeleteReport:
        """Delete documents by id; unknown ids are reported (warning), never raised.

        Args:
            ids: Ids to delete.

        Returns:
            A :class:`DeleteReport` with the deleted and the missing ids.

        Examples:
            >>> import numpy as np
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["a"])
            >>> s.delete(["a", "zz"])
            DeleteReport(deleted=['a'], missing=['zz'])
        """
        if isinstance(ids, str):
            ids = [ids]
        deleted: list[str] = []
        missing: list[str] = []
        with self._lock.write():
            for doc_id in dict.fromkeys(str(i) for i in ids):
                row = self._row.pop(doc_id, None)
                if row is None:
                    missing.append(doc_id)
                else:
                    self._alive[row] = False
                    deleted.append(doc_id)
            if deleted:
                self._own_index()
                self._maybe_compact()
        if missing:
            logger.warning("delete: %d id(s) not found and ignored: %s", len(missing), missing[:10])
        return DeleteReport(deleted=deleted, missing=missing)

    def _maybe_compact(self) -> None:
        dead = int(self._alive.size - np.count_nonzero(self._alive))
        if not dead:
            return
        if self.index_type == "flat" or self._index is None or dead > self.compact_threshold * self._alive.size:
            self._compact()

    def _compact_rows(self) -> np.ndarray:
        keep = np.flatnonzero(self._alive)
        dead = np.flatnonzero(~self._alive)
        self._mean = self._mean[keep]
        self._var = self._var[keep]
        self._sumlogvar = self._sumlogvar[keep]
        self._alive = np.ones(keep.size, dtype=bool)
        self._ids = [self._ids[i] for i in keep]
        self._texts = [self._texts[i] for i in keep]
        self._metas = [self._metas[i] for i in keep]
        self._row = {doc_id: j for j, doc_id in enumerate(self._ids)}
        self.compaction_count += 1
        return dead

    def _compact(self) -> None:
        """Drop tombstoned rows from the arrays and the index; callers hold the write lock."""
        if self._alive.all():
            return
        dead = self._compact_rows()
        if self._index is None:
            return
        self._own_index()
        if self.index_type == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(dead.astype(np.int64)))
            return
        # Keep the trained quantizers; re-add the live rows (HNSW graphs are rebuilt).
        self._index.reset()
        n = len(self._ids)
        for s in range(0, n, _BUILD_BLOCK):
            self._index.add(self._reduced(self._doc_vectors(slice(s, s + _BUILD_BLOCK))))

    def compact(self) -> None:
        """Remove tombstoned documents from the index now.

        Examples:
            >>> KLStore().compact()
        """
        with self._lock.write():
            self._compact()

    def rebuild(self) -> None:
        """Rebuild (and retrain) an approximate index from the stored Gaussians.

        Useful after many additions to an IVF / PQ index trained on an early sample.

        Examples:
            >>> KLStore(index_type="hnsw").rebuild()
        """
        with self._lock.write():
            if self.index_type != "flat" and self._row:
                self._build_approx()

    def get_by_ids(self, ids: Sequence[str]) -> list[StoredDocument]:
        """Documents for the given ids, in the given order; unknown ids are skipped.

        Examples:
            >>> KLStore().get_by_ids(["nope"])
            []
        """
        if isinstance(ids, str):
            ids = [ids]
        out = []
        with self._lock.read():
            for doc_id in ids:
                row = self._row.get(str(doc_id))
                if row is not None:
                    out.append(StoredDocument(self._ids[row], self._texts[row], dict(self._metas[row])))
        return out

    def get_gaussians(self, ids: Sequence[str]) -> Gaussians:
        """Stored float32 Gaussians for the given (existing) ids, in order; unknown ids raise ``KeyError``.

        Examples:
            >>> import numpy as np
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["a"])
            >>> s.get_gaussians(["a"]).dim
            2
        """
        with self._lock.read():
            rows = np.array([self._row[str(i)] for i in ids], dtype=np.int64)
            return Gaussians(self._mean[rows].copy(), self._var[rows].copy(), validate=False)

    # ------------------------------------------------------------------- search
    def _query_gaussians(self, queries: str | Sequence[str] | Gaussians) -> Gaussians:
        return _query_gaussians(queries, encoder=self.encoder, batch_size=self.batch_size, dim=self._dim)

    def search(self, query: str | Gaussians, k: int = 10, filter: MetadataFilter | None = None) -> list[SearchResult]:
        """Top-``k`` documents for one query, best first, scored by exact ``-KL(Q || D)``.

        Args:
            query: Query text (needs an encoder) or one query Gaussian.
            k: Number of results; all matching documents when fewer exist.
            filter: Metadata filter dict (see :mod:`kl_retrievers.filters`) or callable.

        Returns:
            Ranked :class:`SearchResult` objects (empty for an empty store).

        Raises:
            ValueError: ``k <= 0``, wrong dimension, non-finite query, unknown filter operator.

        Examples:
            >>> import numpy as np
            >>> s = KLStore()
            >>> s.search(Gaussians(np.zeros((1, 2)), np.ones((1, 2))))
            []
        """
        return self.search_batch(_one_query(query), k=k, filter=filter)[0]

    def search_batch(
        self, queries: Sequence[str] | Gaussians, k: int = 10, filter: MetadataFilter | None = None
    ) -> list[list[SearchResult]]:
        """Top-``k`` results for each of several queries (texts or a Gaussians batch).

        Examples:
            >>> import numpy as np
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))))
            >>> [len(r) for r in s.search_batch(Gaussians(np.zeros((2, 2)), np.ones((2, 2))), k=2)]
            [2, 2]
        """
        k = _check_k(k)
        predicate = compile_filter(filter)
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, Gaussians) and not self._row:
            return [[] for _ in queries]
        qg = self._query_gaussians(queries)
        nq = len(qg)
        with self._lock.read():
            if not self._row or nq == 0:
                return [[] for _ in range(nq)]
            mask: np.ndarray | None = None
            if predicate is not None:
                mask = self._alive.copy()
                for row in np.flatnonzero(mask):
                    if not predicate(self._metas[row]):
                        mask[row] = False
            elif not self._alive.all():
                mask = self._alive
            n_allowed = len(self._row) if mask is None else int(np.count_nonzero(mask))
            if n_allowed == 0:
                return [[] for _ in range(nq)]
            rows, scores = self._search_rows(qg, min(k, n_allowed), mask, n_allowed, predicate is not None)
            return [
                [
                    SearchResult(self._ids[r], float(s), self._texts[r], dict(self._metas[r]))
                    for r, s in zip(rows_q, scores_q, strict=True)
                ]
                for rows_q, scores_q in zip(rows, scores, strict=True)
            ]

    def _selector(self, mask: np.ndarray) -> Any:
        allowed = np.flatnonzero(mask).astype(np.int64)
        if allowed.size * 32 < mask.size:
            return faiss.IDSelectorBatch(allowed)
        bitmap = np.packbits(mask, bitorder="little")
        sel = _faiss.IDSelectorBitmap(bitmap)
        sel.referenced_bitmap = bitmap  # keep the buffer alive as long as the selector
        return sel

    def _search_rows(
        self, qg: Gaussians, kk: int, mask: np.ndarray | None, n_allowed: int, filtered: bool
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if self.index_type == "flat":
            # float32 inner products are within ~1e-6 relative of the exact score: a small margin
            # beyond k, re-scored in float64, gives the exact top k
            cand = min(n_allowed, kk + max(8, kk // 4))
            qv = np.ascontiguousarray(kl_query_vectors(qg), dtype=np.float32)
            if mask is None:
                _, labels = self._index.search(qv, cand)  # type: ignore[union-attr]
            else:
                params = _faiss.SearchParameters(sel=self._selector(mask))
                _, labels = self._index.search(qv, cand, params=params)  # type: ignore[union-attr]
        else:
            cand = min(n_allowed, max(kk * self.rescore_factor, self.rescore_pool))
            keep = kk + max(16, 2 * kk)  # candidates that reach the float64 re-scoring
            exact = self._index is None or n_allowed <= cand or (filtered and n_allowed <= self.exact_threshold)
            if exact:
                labels = self._exact_candidates(qg, cand, mask)
            else:
                labels = self._approx_candidates(qg, cand, mask, n_allowed, keep=keep)
                short = np.flatnonzero((labels >= 0).sum(axis=1) < kk)
                if short.size:
                    logger.debug("%d query(ies) got fewer than k candidates; searching exactly", short.size)
                    labels_short = self._exact_candidates(qg[short], cand, mask)
                    labels = np.concatenate([labels, np.full((labels.shape[0], max(0, cand - labels.shape[1])), -1)], 1)
                    labels[short, : labels_short.shape[1]] = labels_short
                    labels[short, labels_short.shape[1] :] = -1
            labels = self._prescore(qg, labels, mask, keep=keep)
        scores = self._rescore(qg, labels, mask)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        rows_out, scores_out = [], []
        for i in range(labels.shape[0]):
            s = scores[i, order[i]]
            ok = np.isfinite(s)
            rows_out.append(labels[i, order[i]][ok])
            scores_out.append(s[ok])
        return rows_out, scores_out

    def _approx_candidates(
        self, qg: Gaussians, cand: int, mask: np.ndarray | None, n_allowed: int, keep: int | None = None
    ) -> np.ndarray:
        """Candidate rows from the approximate index.

        Without compression the index's L2 distance on the reduced vectors is an exact monotone
        function of ``<q~, d~>`` up to float32 rounding, so only the best ``keep`` of the pool go on
        to the (costlier) float64 re-scoring.
        """
        qr = self._query_reduced(qg)
        widen = 1.0 if mask is None else min(8.0, len(self._ids) / max(1, n_allowed))
        sel = None if mask is None else self._selector(mask)
        if self.index_type == "hnsw":
            ef = int(max(self.ef_search, cand) * widen)
            params: Any = _faiss.SearchParametersHNSW(efSearch=ef)
        else:
            nprobe = int(min(self.nlist, math.ceil(self.nprobe * widen)))
            params = _faiss.SearchParametersIVF(nprobe=nprobe, max_codes=0)
        if sel is not None:
            params.sel = sel
        if self.refine is not None and keep is not None and cand > keep:
            # the base index's pool of ``cand``, re-ranked on the refine codes down to ``keep``
            params = _faiss.IndexRefineSearchParameters(k_factor=cand / keep, base_index_params=params)
            cand = keep
        dist, labels = self._index.search(qr, cand, params=params)  # type: ignore[union-attr]
        if keep is not None and self.compression is None and labels.shape[1] > keep:
            dist = np.where(labels < 0, np.inf, dist)
            best = np.argpartition(dist, keep - 1, axis=1)[:, :keep]
            labels = np.take_along_axis(labels, best, axis=1)
        return labels

    def _exact_candidates(self, qg: Gaussians, cand: int, mask: np.ndarray | None) -> np.ndarray:
        """Top-``cand`` rows by the float32 inner-product rewrite over all allowed rows."""
        rows = np.arange(len(self._ids)) if mask is None else np.flatnonzero(mask)
        qv = np.asarray(kl_query_vectors(qg), dtype=np.float32)
        nq = qv.shape[0]
        best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
        best_r = np.zeros((nq, 0), dtype=np.int64)
        for s in range(0, rows.size, _EXACT_BLOCK):
            block = rows[s : s + _EXACT_BLOCK]
            sc = qv @ self._doc_vectors(block).astype(np.float32).T
            all_s = np.concatenate([best_s, sc], axis=1)
            all_r = np.concatenate([best_r, np.broadcast_to(block, (nq, block.size))], axis=1)
            if all_s.shape[1] > cand:
                top = np.argpartition(-all_s, cand - 1, axis=1)[:, :cand]
                all_s = np.take_along_axis(all_s, top, 1)
                all_r = np.take_along_axis(all_r, top, 1)
            best_s, best_r = all_s, all_r
        return best_r

    def _prescore(self, qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None, keep: int) -> np.ndarray:
        """The best ``keep`` candidates of each row by a float32 ``-KL`` (less query constants).

        A large candidate pool (compressed indexes need one) would otherwise all go through the
        float64 re-scoring; this pass reads each candidate's Gaussian once, in float32, and only
        ``keep`` per query go on to the exact score. Its rounding (~1e-6 relative) is far below
        the margin of ``keep - k`` extra candidates.
        """
        nq, c = labels.shape
        if c <= keep:
            return labels
        qm = np.asarray(qg.mean, dtype=np.float32)
        qvar = np.asarray(qg.var, dtype=np.float32)
        out = np.empty((nq, keep), dtype=labels.dtype)

        def block(s: int, e: int) -> None:
            lab = labels[s:e]
            safe, t, bad = self._pool_terms(qm[s:e], qvar[s:e], lab, mask, np.float32)
            score = -(self._sumlogvar[safe].astype(np.float32) + t)
            score[bad] = -np.inf
            best = np.argpartition(-score, keep - 1, axis=1)[:, :keep]
            out[s:e] = np.take_along_axis(lab, best, axis=1)

        _query_blocks(nq, c * int(qg.dim), block)
        return out

    def _pool_terms(
        self, qm: np.ndarray, qvar: np.ndarray, lab: np.ndarray, mask: np.ndarray | None, dtype: type[np.floating]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For candidate rows ``lab`` (``-1``: padding) of some queries: the rows to read (padding
        read as row 0), ``sum_i (q_var + (q_mu - d_mu)^2) / d_var`` in ``dtype``, and the rows to drop
        (padding, or not allowed by ``mask``)."""
        safe = np.where(lab < 0, 0, lab)
        # in place on one buffer (fancy indexing already copied the rows)
        buf = self._mean[safe].astype(dtype, copy=False)
        np.subtract(qm[:, None, :], buf, out=buf)
        np.square(buf, out=buf)
        buf += qvar[:, None, :]
        buf /= self._var[safe]
        bad = lab < 0
        if mask is not None:
            bad |= ~mask[safe]
        return safe, buf.sum(axis=2), bad

    def _rescore(self, qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Exact float64 ``-KL`` for candidate rows (``-inf`` for padding / disallowed)."""
        nq, c = labels.shape
        k = int(qg.dim)
        out = np.full((nq, c), -np.inf)
        if c == 0:
            return out
        qm, qvar = np.asarray(qg.mean), np.asarray(qg.var)
        sumlog_q = np.log(qvar).sum(axis=1)

        def block(s: int, e: int) -> None:
            safe, t, bad = self._pool_terms(qm[s:e], qvar[s:e], labels[s:e], mask, np.float64)
            score = -0.5 * (self._sumlogvar[safe] - sumlog_q[s:e, None] - k + t)
            score[bad] = -np.inf
            out[s:e] = score

        _query_blocks(nq, c * k, block)
        # a row can appear twice only through padding; keep the first occurrence
        return out

    # -------------------------------------------------------------- persistence
    def _config(self) -> dict[str, Any]:
        encoder_info = None
        if self.encoder is not None:
            cfg = getattr(self.encoder, "config", None)
            try:
                cfg_dict = cfg.to_dict() if cfg is not None else None
                json.dumps(cfg_dict)
            except (TypeError, ValueError, AttributeError):
                cfg_dict = None
            encoder_info = {"name_or_path": str(getattr(self.encoder, "name_or_path", "")), "config": cfg_dict}
        return {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": library_version(),
            "faiss_version": getattr(faiss, "__version__", "unknown"),
            "score_name": SCORE_NAME,
            "score_direction": SCORE_DIRECTION,
            "dim": self._dim,
            "count": len(self._ids),
            "dtype": "float32",
            "index_type": self.index_type,
            "index_params": self._index_params(),
            "index_built": self._index is not None,
            "norm_bound": self._norm_bound,
            "index_offset": self._offset,  # 0 unless an approximate index was built
            "encoder": encoder_info,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save atomically to the folder ``path`` (tombstones are compacted first).

        Files are written into a temporary sibling folder which then replaces ``path``; an
        interrupted save leaves the previous copy intact.  No pickle is used anywhere.

        Returns:
            The folder path.

        Examples:
            >>> import tempfile, numpy as np
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((2, 2)), np.ones((2, 2))))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     len(KLStore.load(s.save(Path(d) / "store")))
            2
        """
        target = Path(path)
        if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / _CONFIG).exists())):
            raise ValueError(f"{target} exists and is not a KLStore folder; refusing to overwrite it")
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.write():
            self._own_index()
            self._compact()
            with atomic_dir(target) as tmp:
                config = self._config()
                files: dict[str, Any] = {}
                _write_npy(tmp / _MEAN, self._mean)
                _write_npy(tmp / _VAR, self._var)
                _write_jsonl(tmp / _DOCS, self._ids, self._texts, self._metas)
                if self._index is not None:
                    _write_index(tmp / _INDEX, self._index)
                for name in (_MEAN, _VAR, _DOCS, _INDEX):
                    p = tmp / name
                    if p.exists():
                        _fsync(p)
                        files[name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                config["files"] = files
                with open(tmp / _CONFIG, "w", encoding="utf-8") as f:
                    json.dump(config, f, indent=2, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
        logger.info("saved %d documents to %s", len(self._ids), target)
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: Any | None = None,
        mmap: bool = False,
        verify_checksums: bool = True,
    ) -> KLStore:
        """Load a store written by :meth:`save`.

        Args:
            path: The store folder.
            encoder: Optional encoder for text queries / additions (a name differing from the
                saved one logs a warning).
            mmap: Memory-map the Gaussians (read-only ``np.load(mmap_mode="r")``) and, where
                FAISS supports it, the index codes; they are copied on the first mutation.
            verify_checksums: Check SHA-256 of every file (sizes are always checked).

        Raises:
            FileNotFoundError: ``path`` or its config is missing.
            StoreFormatError: (a ``ValueError``) files missing, sizes / checksums / counts /
                dimensions not matching the config, or an unreadable index.

        Examples:
            >>> KLStore.load("/nonexistent")  # doctest: +SKIP
        """
        folder = Path(path)
        cfg_path = folder / _CONFIG
        if not folder.is_dir():
            raise FileNotFoundError(f"no KLStore folder at {folder}")
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder} has no {_CONFIG}; not a KLStore folder")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreFormatError(f"{cfg_path} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict) or config.get("format") != _FORMAT_NAME:
            raise StoreFormatError(f"{cfg_path} is not a KLStore config")
        if config.get("format_version") != FORMAT_VERSION:
            raise StoreFormatError(
                f"unsupported store format_version {config.get('format_version')!r} "
                f"(this library reads {FORMAT_VERSION})"
            )
        if config.get("score_name") != SCORE_NAME or config.get("score_direction") != SCORE_DIRECTION:
            raise StoreFormatError(f"store scores {config.get('score_name')!r}; this library serves {SCORE_NAME!r}")
        try:
            dim = config["dim"]
            count = int(config["count"])
            files = dict(config["files"])
            params = dict(config["index_params"])
            index_type = str(config["index_type"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreFormatError(f"{cfg_path} lacks a required field: {exc}") from exc
        required = [_MEAN, _VAR, _DOCS] + ([_INDEX] if config.get("index_built") else [])
        for name in required:
            if name not in files:
                raise StoreFormatError(f"config lists no entry for required file {name}")
        for name, info in files.items():
            p = folder / name
            if not p.is_file():
                raise StoreFormatError(f"missing file {p} listed in the config")
            size = p.stat().st_size
            if size != int(info["bytes"]):
                raise StoreFormatError(
                    f"{p} has {size} bytes; the config says {info['bytes']} (truncated or replaced?)"
                )
            if verify_checksums and sha256_file(p) != info["sha256"]:
                raise StoreFormatError(f"{p} does not match its SHA-256 checksum in the config (corrupted?)")

        store = cls(encoder=encoder, index_type=index_type, **params)
        if config.get("encoder") and encoder is not None:
            saved = config["encoder"].get("name_or_path")
            now = str(getattr(encoder, "name_or_path", ""))
            if saved and now and saved != now:
                logger.warning("store was built with encoder %r but is loaded with %r", saved, now)
        if dim is None:
            if count:
                raise StoreFormatError("config has no dimension but a non-zero count")
            return store
        store._init_dim(int(dim))
        try:
            mean = np.load(folder / _MEAN, allow_pickle=False, mmap_mode="r" if mmap else None)
            var = np.load(folder / _VAR, allow_pickle=False, mmap_mode="r" if mmap else None)
        except ValueError as exc:
            raise StoreFormatError(f"cannot read the Gaussians: {exc}") from exc
        for name, arr in ((_MEAN, mean), (_VAR, var)):
            if arr.shape != (count, int(dim)) or arr.dtype != np.float32:
                raise StoreFormatError(
                    f"{name} has shape {arr.shape} and dtype {arr.dtype}; config says ({count}, {dim}) float32"
                )
        ids: list[str] = []
        texts: list[str | None] = []
        metas: list[dict[str, Any]] = []
        with open(folder / _DOCS, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                    ids.append(str(rec["id"]))
                    texts.append(rec.get("text"))
                    metas.append(dict(rec.get("metadata") or {}))
                except (ValueError, KeyError, TypeError) as exc:
                    raise StoreFormatError(f"{_DOCS} line {line_no} is malformed: {exc}") from exc
        if len(ids) != count:
            raise StoreFormatError(f"{_DOCS} has {len(ids)} documents; the config says {count}")
        if len(set(ids)) != count:
            raise StoreFormatError(f"{_DOCS} contains duplicate ids")
        store._mean, store._var = mean, var
        store._sumlogvar = np.zeros(count)
        for s in range(0, count, _BUILD_BLOCK):
            store._sumlogvar[s : s + _BUILD_BLOCK] = np.log(np.asarray(var[s : s + _BUILD_BLOCK], np.float64)).sum(1)
        store._alive = np.ones(count, dtype=bool)
        store._ids, store._texts, store._metas = ids, texts, metas
        store._row = {doc_id: j for j, doc_id in enumerate(ids)}
        store._norm_bound = config.get("norm_bound")
        if config.get("index_built"):
            store._index, store._index_viewed = _read_index(folder / _INDEX, mmap)
            expected_d = 2 * int(dim) + 1 if index_type == "flat" else store._reduced_dim
            if store._index.d != expected_d or store._index.ntotal != count:
                raise StoreFormatError(
                    f"index has d={store._index.d}, ntotal={store._index.ntotal}; "
                    f"expected d={expected_d}, ntotal={count}"
                )
            if index_type != "flat" and store._norm_bound is None:
                raise StoreFormatError("approximate index without norm_bound in the config")
            offset = config.get("index_offset", 0.0)  # absent in stores saved before the shift
            if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
                raise StoreFormatError(f"index_offset must be a finite number; got {offset!r}")
            store._offset = float(offset)
        elif index_type == "flat":
            raise StoreFormatError("flat store without an index file")
        logger.info("loaded %d documents from %s", count, folder)
        return store


def _read_index(path: Path, mmap: bool) -> tuple[Any, bool]:
    """Read a FAISS index, turning FAISS errors into :class:`StoreFormatError`."""
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC), True
        except (RuntimeError, AttributeError) as exc:
            logger.info("memory-mapped index read not supported (%s); reading into memory", exc)
    try:
        return faiss.read_index(str(path)), False
    except RuntimeError as exc:
        raise StoreFormatError(f"cannot read FAISS index {path}: {str(exc).splitlines()[0][:300]}") from exc
