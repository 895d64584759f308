"""``KLStore``: a document store searched by exact ``-KL(Q || D)`` with FAISS.

Documents and queries are diagonal Gaussians (see :mod:`kl_retrievers.gaussian`).  The
store keeps every document's Gaussian (float32), its text and metadata, and a FAISS index:

* ``"flat"`` (default, exact): ``IndexFlatIP`` over the ``2k + 1``-dimensional rewrite
  ``d~`` of each document, every mean first centred on the mean of the first batch added (which
  changes no score and keeps float32 cancellation small); a query searches with its centred
  ``q~``, a small pool of candidates is re-scored with the exact ``-KL`` in float64, and a bound
  on the float32 error proves that the pool holds the top ``k`` (else the pool grows, and at
  last every row is scored in float64: :func:`kl_retrievers.gaussian.exact_top_k`'s section).
  Rankings are the float64 ones and reported scores the true ``-KL`` (query constant ``c(q)``
  included). Means and variances whose rewrite float32 cannot hold are refused, naming the row.
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

import contextlib
import json
import logging
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import faiss
import numpy as np

from kl_retrievers._io import atomic_dir, library_version, recover_dir
from kl_retrievers.filters import MetadataFilter, compile_filter
from kl_retrievers.gaussian import (
    FLOAT32_UNIT_ROUNDOFF,
    SCORE_DIRECTION,
    SCORE_NAME,
    Gaussians,
    check_float32_scorable,
    check_k,
    exact_top_k,
    float32_score_bound,
    float64_top_k,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
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
#: The only files a store folder holds (besides config.json); load() reads nothing else.
_STORE_FILES = (_MEAN, _VAR, _DOCS, _INDEX)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Elements (queries x candidates x dims) re-scored per block, and rows per block when building.
_RESCORE_BLOCK = 1 << 22
_BUILD_BLOCK = 32768
# New rows' float32 flat vectors (elements) kept from the check in add() to the index, not recomputed.
_FLAT_KEEP_ELEMENTS = 1 << 24


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
    """A writer-preferring readers-writer lock, re-entrant per thread.

    A thread that already holds the read lock gets it again at once, even while a writer
    waits (a callable filter that reads the store during a search would otherwise block
    itself and the writer forever); the thread holding the write lock may read and write
    again. A thread holding only the read lock cannot take the write lock: that upgrade
    would wait for its own read to end, so it raises ``RuntimeError`` instead.

    Examples:
        >>> lock = _RWLock()
        >>> with lock.read(), lock.read():
        ...     pass
        >>> with lock.write(), lock.read(), lock.write():
        ...     pass
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None  # thread ident of the writer
        self._waiting_writers = 0
        self._local = threading.local()  # .reads: read locks this thread holds

    def _held_reads(self) -> int:
        return int(getattr(self._local, "reads", 0))

    @contextmanager
    def read(self) -> Iterator[None]:
        if self._writer == threading.get_ident():  # reading inside this thread's own write
            yield
            return
        held = self._held_reads()
        with self._cond:
            if not held:
                while self._writer is not None or self._waiting_writers:
                    self._cond.wait()
            self._readers += 1
        self._local.reads = held + 1
        try:
            yield
        finally:
            self._local.reads = held
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me:  # nested write in the same thread
            yield
            return
        if self._held_reads():
            raise RuntimeError(
                "this thread is reading the store (e.g. inside a callable filter during a search) and cannot "
                "modify it there; modify the store after the search returns"
            )
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
                if self._writer is None and not self._waiting_writers:
                    self._cond.notify_all()  # readers held back by this (possibly interrupted) wait
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
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


_check_k = check_k  # the one check of k (kl_retrievers.gaussian); milvus.py imports it under this name


def _id_list(ids: Any, what: str = "ids") -> list[str]:
    """``ids`` as a list of ``str``: a bare string is ONE id; otherwise an iterable of strings.

    Ids are never coerced with ``str()`` (``None`` would become ``"None"`` and ``b"ab"`` the ids
    ``"97"``, ``"98"``): anything but a string raises ``TypeError`` naming its position and type.

    Examples:
        >>> _id_list("ab"), _id_list(["a", "b"])
        (['ab'], ['a', 'b'])
        >>> _id_list(["a", None])
        Traceback (most recent call last):
        TypeError: ids[1] must be a str; got NoneType None
    """
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, (bytes, bytearray, memoryview, Mapping)) or not isinstance(ids, Iterable):
        raise TypeError(f"{what} must be a str or a sequence of str; got {type(ids).__name__}")
    out = list(ids)
    for j, doc_id in enumerate(out):
        if not isinstance(doc_id, str):
            raise TypeError(f"{what}[{j}] must be a str; got {type(doc_id).__name__} {doc_id!r:.80}")
    return [str(doc_id) for doc_id in out]


def _check_unique(ids: list[str]) -> None:
    """Refuse a repeated id, naming it and both positions."""
    first: dict[str, int] = {}
    for j, doc_id in enumerate(ids):
        if doc_id in first:
            raise ValueError(
                f"ids must be unique within one add call; {doc_id!r:.80} is at positions {first[doc_id]} and {j}"
            )
        first[doc_id] = j


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
    for name, value in [("dim", dim), *positive]:
        if name == "dim" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if (
        isinstance(norm_headroom, bool)
        or not isinstance(norm_headroom, (int, float, np.integer, np.floating))
        or not 1.0 <= norm_headroom < math.inf
    ):
        raise ValueError(f"norm_headroom must be a finite number >= 1; got {norm_headroom!r}")


def _check_thresholds(exact_threshold: Any, compact_threshold: Any, seed: Any) -> None:
    """KLStore's ``exact_threshold`` (integer >= 0), ``compact_threshold`` (in [0, 1]) and ``seed`` (integer >= 0)."""
    if isinstance(exact_threshold, bool) or not isinstance(exact_threshold, (int, np.integer)) or exact_threshold < 0:
        raise ValueError(f"exact_threshold must be an integer >= 0; got {exact_threshold!r}")
    if (
        isinstance(compact_threshold, bool)
        or not isinstance(compact_threshold, (int, float, np.integer, np.floating))
        or not 0.0 <= compact_threshold <= 1.0
    ):
        raise ValueError(f"compact_threshold must be a fraction in [0, 1]; got {compact_threshold!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")


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
    if texts is not None:
        texts = list(texts)
        for j, text in enumerate(texts):
            if not isinstance(text, str) and (text is not None or gaussians is None):
                raise TypeError(f"texts[{j}] must be a str (or None with gaussians); got {type(text).__name__}")
    if ids is not None:
        if isinstance(ids, str):
            raise ValueError("ids must be a sequence of strings, not a single string")
        ids = _id_list(ids)  # checked before any encoding: a bad or repeated id fails at once
        _check_unique(ids)
        if texts is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids but {len(texts)} texts")
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
    check_float32_scorable(g, "document")  # stored as float32 and scored through d~: names the row
    n = len(g)
    text_values: list[str | None] = list(texts) if texts is not None else [None] * n
    if len(text_values) != n:
        raise ValueError(f"got {len(text_values)} texts but {n} gaussians")
    if ids is None:
        id_values = [uuid.uuid4().hex for _ in range(n)]
    else:
        id_values = list(ids)
        if len(id_values) != n:
            raise ValueError(f"got {len(id_values)} ids but {n} documents")
    if metadatas is None:
        meta_values: list[dict[str, Any]] = [{} for _ in range(n)]
    else:
        if isinstance(metadatas, (str, bytes, Mapping)):
            raise TypeError(f"metadatas must be a sequence of dicts (one per document); got {type(metadatas).__name__}")
        meta_values = []
        for j, m in enumerate(metadatas):
            if m is not None and not isinstance(m, Mapping):
                raise TypeError(f"metadatas[{j}] must be a dict or None; got {type(m).__name__}")
            meta_values.append(dict(m) if m is not None else {})
        if len(meta_values) != n:
            raise ValueError(f"got {len(meta_values)} metadatas but {n} documents")
        for j, m in enumerate(meta_values):
            try:  # fail early on what JSON cannot hold (the store saves metadata as JSON)
                json.dumps(m, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"metadatas[{j}] is not JSON-serialisable: {exc}") from None
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
    check_float32_scorable(g, "query")  # q~ is searched in float32: names the row
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
        _check_thresholds(exact_threshold, compact_threshold, seed)
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
        # flat index: every mean is centred on this before its d~ goes in (None: not chosen yet, or
        # a store saved before centring, whose vectors are centred on 0); see _flat_centre
        self._centre: np.ndarray | None = None
        # (id of the flat index, largest norm of each block of a d~ row in it): see _flat_norm_max
        self._flat_norm: tuple[int, np.ndarray] | None = None
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
        return shift_document_vectors(dvec, self._offset)

    def _reduced(self, dvec: np.ndarray) -> np.ndarray:
        """float32 reduced vectors of ``d~`` rows (:func:`~kl_retrievers.gaussian.reduce_document_vectors`)."""
        assert self._norm_bound is not None
        # the offset is applied by _shifted, the one place KLStore shifts (offset 0 below: already shifted)
        return reduce_document_vectors(self._shifted(dvec), 0.0, self._norm_bound, width=self._reduced_dim)

    def _query_reduced(self, qg: Gaussians) -> np.ndarray:
        """float32 reduced query vectors (:func:`~kl_retrievers.gaussian.reduce_query_vectors`)."""
        assert self._norm_bound is not None
        return reduce_query_vectors(np.asarray(kl_query_vectors(qg)), self._norm_bound, width=self._reduced_dim)

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
            ids: Document ids, each a ``str`` (uuid4 hex when omitted); never coerced with ``str()``.
                An existing id is replaced (upsert).
            metadatas: One JSON-serialisable dict per document (or ``None``). The store keeps and
                saves it as JSON, so after :meth:`save` and :meth:`load` non-string keys come back
                as strings (``{1: "a"}`` loads as ``{"1": "a"}``); NaN and infinite values are refused.

        Returns:
            The ids, in input order.

        Raises:
            ValueError: Mismatched lengths, wrong dimension, non-finite values, duplicate ids
                within the call (named), or texts without an encoder.
            TypeError: An id that is not a ``str``, a text that is not a ``str``, or metadata that
                is not a JSON-serialisable dict (the message names its position).

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
            flat = self._flat_vectors(mean, var) if self.index_type == "flat" else None  # checked before any change
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
            self._index_new_rows(start, flat)
            self._maybe_compact()
        if replaced:
            logger.info("replaced %d existing document(s)", len(replaced))
        return id_values

    def _index_new_rows(self, start: int, flat: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None) -> None:
        n = len(self._ids)
        if self.index_type == "flat":
            mean, var = self._mean[start:n], self._var[start:n]
            self._add_flat(mean, var, flat if flat is not None else self._flat_vectors(mean, var))
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
            ids: Ids to delete: a sequence of ``str``, or one ``str`` (one id, like
                :meth:`get_by_ids` and :meth:`get_gaussians`).

        Returns:
            A :class:`DeleteReport` with the deleted and the missing ids.

        Raises:
            TypeError: An id that is not a ``str``.

        Examples:
            >>> import numpy as np
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["a"])
            >>> s.delete(["a", "zz"])
            DeleteReport(deleted=['a'], missing=['zz'])
        """
        id_list = _id_list(ids)
        deleted: list[str] = []
        missing: list[str] = []
        with self._lock.write():
            for doc_id in dict.fromkeys(id_list):
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

        ``ids`` is a sequence of ``str`` or one ``str`` (one id); anything else raises ``TypeError``.

        Examples:
            >>> KLStore().get_by_ids(["nope"])
            []
        """
        id_list = _id_list(ids)
        out = []
        with self._lock.read():
            for doc_id in id_list:
                row = self._row.get(doc_id)
                if row is not None:
                    out.append(StoredDocument(self._ids[row], self._texts[row], dict(self._metas[row])))
        return out

    def get_gaussians(self, ids: Sequence[str]) -> Gaussians:
        """Stored float32 Gaussians for the given (existing) ids, in order; unknown ids raise ``KeyError``.

        ``ids`` is a sequence of ``str`` or one ``str`` (one id, as in :meth:`get_by_ids` and
        :meth:`delete`); anything else raises ``TypeError``.

        Examples:
            >>> import numpy as np
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["a"])
            >>> s.get_gaussians(["a"]).dim, len(s.get_gaussians("a"))
            (2, 1)
        """
        id_list = _id_list(ids)
        with self._lock.read():
            unknown = [i for i in id_list if i not in self._row]
            if unknown:
                raise KeyError(f"{len(unknown)} unknown id(s): {unknown[:5]}")
            rows = np.array([self._row[i] for i in id_list], dtype=np.int64)
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
        """Rows and exact ``-KL`` scores of each query's top ``kk`` among the allowed rows, best first."""
        if self.index_type == "flat":
            rows, scores = self._flat_top_k(qg, kk, mask, n_allowed)
        else:
            cand = min(n_allowed, max(kk * self.rescore_factor, self.rescore_pool))
            keep = kk + max(16, 2 * kk)  # candidates that reach the float64 re-scoring
            if self._index is None or n_allowed <= cand or (filtered and n_allowed <= self.exact_threshold):
                rows, scores = self._exact_top_k(qg, kk, mask)
            else:
                labels = self._approx_candidates(qg, cand, mask, n_allowed, keep=keep)
                rows, scores = self._pool_top_k(qg, labels, mask, kk, keep)
                short = np.flatnonzero((rows >= 0).sum(axis=1) < kk)
                if short.size:
                    logger.debug("%d query(ies) got fewer than k candidates; searching exactly", short.size)
                    rows[short], scores[short] = self._exact_top_k(qg[short], kk, mask)
        ok = rows >= 0
        return [r[o] for r, o in zip(rows, ok, strict=True)], [s[o] for s, o in zip(scores, ok, strict=True)]

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
        if self.refine is not None:
            # the base index's pool of ``cand``, re-ranked on the refine codes down to ``keep``; an IndexRefine
            # takes only its own parameter type, so a pool no larger than ``keep`` still needs it (k_factor 1)
            shrink = keep is not None and cand > keep
            k_factor = cand / keep if shrink and keep is not None else 1.0
            params = _faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=params)
            cand = keep if shrink and keep is not None else cand
        dist, labels = self._index.search(qr, cand, params=params)  # type: ignore[union-attr]
        if keep is not None and self.compression is None and labels.shape[1] > keep:
            dist = np.where(labels < 0, np.inf, dist)
            best = np.argpartition(dist, keep - 1, axis=1)[:, :keep]
            labels = np.take_along_axis(labels, best, axis=1)
        return labels

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

        def block(s: int, e: int) -> None:
            lab = labels[s:e]
            safe, t = pool_terms(qm[s:e], qvar[s:e], self._mean, self._var, lab, np.float32)
            bad = lab < 0
            if mask is not None:
                bad |= ~mask[safe]
            sumlog_d = self._sumlogvar[safe]
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

    def _rescore(self, qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Exact float64 ``-KL`` for candidate rows (``-inf`` for padding / disallowed)."""
        nq, c = labels.shape
        out = np.full((nq, c), -np.inf)
        if c == 0:
            return out
        docs = Gaussians(self._mean, self._var, validate=False)

        def block(s: int, e: int) -> None:
            lab = labels[s:e]
            score = neg_kl_rows(qg[s:e], docs, lab, doc_sumlogvar=self._sumlogvar)
            if mask is not None:
                score[~mask[np.where(lab < 0, 0, lab)]] = -np.inf
            out[s:e] = score

        _query_blocks(nq, c * int(qg.dim), block)
        return out

    def _pool_top_k(
        self, qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None, kk: int, keep: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``kk`` of each query's candidate pool (``-1`` / ``-inf`` padding).

        The float32 pre-selection keeps ``keep`` candidates; a query whose left-out candidates are
        not provably below its ``kk``-th exact score has its whole pool re-scored in float64.
        """
        kept, upper = self._prescore_bounded(qg, labels, mask, keep)
        rows, scores = top_k_rows(self._rescore(qg, kept, mask), kept, kk)
        redo = np.flatnonzero(~(upper < scores[:, kk - 1]))
        if kept is not labels and redo.size:
            logger.debug("%d query(ies): float32 pre-selection not provably enough; re-scoring the pool", redo.size)
            rows[redo], scores[redo] = top_k_rows(self._rescore(qg[redo], labels[redo], mask), labels[redo], kk)
        return rows, scores

    def _exact_top_k(self, qg: Gaussians, kk: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``kk`` over every allowed row, without the index (:func:`exact_top_k`)."""
        rows, scores = exact_top_k(
            qg,
            Gaussians(self._mean, self._var, validate=False),
            kk,
            rows=None if mask is None else np.flatnonzero(mask),
            margin=max(8, kk // 4),
            doc_sumlogvar=self._sumlogvar,
        )
        return top_k_rows(scores, rows, kk)  # padded to kk

    # ------------------------------------------------------------ flat index
    def _flat_centre(self, batch_mean: np.ndarray | None = None) -> np.ndarray:
        """The vector every mean is centred on before its ``d~`` enters the flat index.

        -KL does not change when one vector is subtracted from every mean (queries too), so any
        fixed centre ranks the same; one near the data keeps ``q~`` and ``d~`` small, and their
        float32 error with them. The centre is the mean of the first rows added to the empty index,
        kept for its lifetime and saved with the store (``flat_centre`` in the config); a store
        saved before centring has its vectors centred on 0.
        """
        assert self._dim is not None
        if self._index is not None and self._index.ntotal > 0:
            if self._centre is None:  # saved before centring
                self._centre = np.zeros(self._dim)
            return self._centre
        if batch_mean is None or not len(batch_mean):
            return np.zeros(self._dim)
        return np.asarray(batch_mean, dtype=np.float64).mean(axis=0)

    def _flat_block_vectors(self, mean: np.ndarray, var: np.ndarray, centre: np.ndarray, first: int) -> np.ndarray:
        g = Gaussians(mean, var, validate=False)
        return score_vectors_float32(g, "document", centre=centre, row_numbers=np.arange(first, first + len(g)))

    def _flat_vectors(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Check new rows (float32 means and variances) for the flat index before anything changes.

        Returns:
            ``(centre, largest norm of each block of their d~, the float32 d~ rows when small enough
            to keep, else None)``.

        Raises:
            ValueError: A row whose centred ``d~`` overflows float32 (its number in this batch).
        """
        centre = self._flat_centre(mean)
        n = mean.shape[0]
        keep = n * (2 * mean.shape[1] + 1) <= _FLAT_KEEP_ELEMENTS
        blocks: list[np.ndarray] = []
        top = np.zeros(3)
        for s in range(0, n, _BUILD_BLOCK):
            v = self._flat_block_vectors(mean[s : s + _BUILD_BLOCK], var[s : s + _BUILD_BLOCK], centre, s)
            top = np.maximum(top, rewrite_block_norms(v).max(axis=0))
            if keep:
                blocks.append(v)
        return centre, top, (np.concatenate(blocks) if keep and blocks else None)

    def _add_flat(
        self, mean: np.ndarray, var: np.ndarray, flat: tuple[np.ndarray, np.ndarray, np.ndarray | None]
    ) -> None:
        """Add rows checked by :meth:`_flat_vectors` to the flat index (callers hold the write lock)."""
        centre, top, vectors = flat
        if self._index.ntotal == 0:  # a fresh start: the new rows' norms are all there is
            self._flat_norm = (id(self._index), np.zeros(3))
        if vectors is not None:
            self._index.add(vectors)  # type: ignore[union-attr]
        else:
            for s in range(0, mean.shape[0], _BUILD_BLOCK):
                v = self._flat_block_vectors(mean[s : s + _BUILD_BLOCK], var[s : s + _BUILD_BLOCK], centre, s)
                self._index.add(v)  # type: ignore[union-attr]
        self._centre = centre
        if self._flat_norm is not None and self._flat_norm[0] == id(self._index):
            self._flat_norm = (id(self._index), np.maximum(self._flat_norm[1], top))

    def _flat_norm_max(self) -> np.ndarray:
        """The largest norm of each block of the ``d~`` rows in the flat index (an upper bound after deletions).

        Kept up to date by :meth:`_add_flat` for the index object it was computed on, and computed
        from the index's own vectors once for any other (a fresh, loaded or copied index).
        """
        index = self._index
        if self._flat_norm is None or self._flat_norm[0] != id(index):
            n, d = index.ntotal, index.d
            xb = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
            top = np.zeros(3)
            for s in range(0, n, _BUILD_BLOCK):
                top = np.maximum(top, rewrite_block_norms(xb[s : s + _BUILD_BLOCK]).max(axis=0))
            self._flat_norm = (id(index), top)
        return self._flat_norm[1]

    def _flat_top_k(
        self, qg: Gaussians, kk: int, mask: np.ndarray | None, n_allowed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``kk`` from the flat index: float32 FAISS candidates around the centre,
        re-scored in float64 and proven complete by the float32 error bound (:func:`refine_top_k`)."""
        qv = score_vectors_float32(qg, "query", centre=self._flat_centre())
        bound = float32_score_bound(qv, self._flat_norm_max())
        params = None if mask is None else _faiss.SearchParameters(sel=self._selector(mask))

        def candidates(qi: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x = np.ascontiguousarray(qv[qi])
            if params is None:
                dist, lab = self._index.search(x, c)  # type: ignore[union-attr]
            else:
                dist, lab = self._index.search(x, c, params=params)  # type: ignore[union-attr]
            return lab, dist, bound[qi]

        def rescore(qi: np.ndarray, lab: np.ndarray) -> np.ndarray:
            return self._rescore(qg[qi], lab, mask)

        def fallback(qi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rows = None if mask is None else np.flatnonzero(mask)
            return float64_top_k(qg[qi], Gaussians(self._mean, self._var, validate=False), kk, rows=rows)

        # float32 scores of the first pool of kk + max(8, kk / 4) are usually far enough apart
        return refine_top_k(
            len(qg), kk, n_allowed, max(8, kk // 4), candidates, rescore, fallback, kl_query_constant(qg)
        )

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
            "flat_centre": None if self._centre is None else [float(x) for x in self._centre],
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
        if not folder.exists() and recover_dir(folder, required=_CONFIG):
            logger.warning("loading %s from the copy saved before an interrupted save", folder)
        cfg_path = folder / _CONFIG
        if not folder.is_dir():
            raise FileNotFoundError(f"no KLStore folder at {folder}")
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder} has no {_CONFIG}; not a KLStore folder")
        config = _read_config(cfg_path)
        dim, count, index_type = config["dim"], config["count"], config["index_type"]
        index_built = config["index_built"]
        _check_files(folder, config["files"], verify_checksums)

        try:
            store = cls(encoder=encoder, index_type=index_type, **config["index_params"])
        except (TypeError, ValueError) as exc:
            raise StoreFormatError(f"{cfg_path}: field 'index_params' holds an invalid value: {exc}") from exc
        if config["encoder"] and encoder is not None:
            saved = config["encoder"].get("name_or_path")
            now = str(getattr(encoder, "name_or_path", ""))
            if saved and now and saved != now:
                logger.warning("store was built with encoder %r but is loaded with %r", saved, now)
        if dim is None:
            if count:
                raise StoreFormatError(f"{cfg_path}: field 'dim' is null but 'count' is {count}")
            return store
        store._init_dim(dim)
        mean = _read_array(folder / _MEAN, mmap, count, dim)
        var = _read_array(folder / _VAR, mmap, count, dim)
        sumlogvar = np.zeros(count)
        for s in range(0, count, _BUILD_BLOCK):
            m_block = np.asarray(mean[s : s + _BUILD_BLOCK])
            v_block = np.asarray(var[s : s + _BUILD_BLOCK], np.float64)
            if not np.isfinite(m_block).all():
                row = s + int(np.argwhere(~np.isfinite(m_block))[0, 0])
                raise StoreFormatError(f"{folder / _MEAN} holds a non-finite value in row {row}")
            if not (np.isfinite(v_block).all() and (v_block > 0).all()):
                row = s + int(np.argwhere(~(np.isfinite(v_block) & (v_block > 0)))[0, 0])
                raise StoreFormatError(
                    f"{folder / _VAR} holds a variance that is not a positive finite number in row {row}"
                )
            sumlogvar[s : s + _BUILD_BLOCK] = np.log(v_block).sum(1)
        ids, texts, metas = _read_documents(folder / _DOCS, count)
        store._mean, store._var = mean, var
        store._sumlogvar = sumlogvar
        store._alive = np.ones(count, dtype=bool)
        store._ids, store._texts, store._metas = ids, texts, metas
        store._row = {doc_id: j for j, doc_id in enumerate(ids)}
        store._norm_bound = config["norm_bound"]
        if index_built:
            store._index, store._index_viewed = _read_index(folder / _INDEX, mmap)
            expected_d = 2 * dim + 1 if index_type == "flat" else store._reduced_dim
            if store._index.d != expected_d or store._index.ntotal != count:
                raise StoreFormatError(
                    f"index has d={store._index.d}, ntotal={store._index.ntotal}; "
                    f"expected d={expected_d}, ntotal={count}"
                )
            store._offset = config["index_offset"]
            store._centre = _flat_centre_from_config(config, cfg_path, index_type, dim)
            if index_type != "flat" and count:
                _check_norm_bound(store, cfg_path)
        elif index_type == "flat":
            raise StoreFormatError(f"{cfg_path}: field 'index_built' is false, but a flat store always has its index")
        logger.info("loaded %d documents from %s", count, folder)
        return store


def _check_norm_bound(store: KLStore, cfg_path: Path) -> None:
    """Check a loaded approximate index against its config's ``norm_bound`` M.

    Every reduced document vector in the index has norm exactly M (the reduction appends
    ``sqrt(M^2 - ||d~||^2)``), and every stored document's shifted ``d~`` must fit under M. A
    damaged ``norm_bound`` would load and silently rank differently, so both are checked: all
    rows against the lower bound, a few rows reconstructed from the index against M itself
    (compressed codes reconstruct approximately, hence the loose factor of 2).
    """
    bound = store._norm_bound
    assert bound is not None
    n = len(store._ids)
    top = 0.0
    for s in range(0, n, _BUILD_BLOCK):
        dvec = store._shifted(store._doc_vectors(slice(s, s + _BUILD_BLOCK)))
        top = max(top, float(np.sqrt(np.einsum("ij,ij->i", dvec, dvec).max())))
    if top > bound * (1.0 + 1e-5):
        raise StoreFormatError(
            f"{cfg_path}: field 'norm_bound' is {bound:.6g}, below the largest stored document norm {top:.6g}"
        )
    rows = np.unique(np.linspace(0, n - 1, num=min(n, 8)).astype(np.int64))
    # FAISS crashes (not raises) reconstructing fast-scan codes and memory-mapped IVF lists
    names = {type(store._index).__name__}
    with contextlib.suppress(RuntimeError, AttributeError):
        names.add(type(faiss.extract_index_ivf(store._index)).__name__)
    if store._index_viewed or any("FastScan" in name for name in names):
        # the coarse centroids (exact vectors, in memory) average reduced vectors of norm M
        try:
            ivf = faiss.extract_index_ivf(store._index)
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
        return
    recon = _reconstruct(store._index, rows)
    if recon is None:
        logger.debug("index type %s cannot reconstruct rows; norm_bound checked from below only", store.index_type)
        return
    norms = np.linalg.norm(recon.astype(np.float64), axis=1)
    if not np.all((norms > bound / 2.0) & (norms < bound * 2.0)):
        raise StoreFormatError(
            f"{cfg_path}: field 'norm_bound' is {bound:.6g}, but the index's vectors have norms "
            f"{norms.min():.6g} to {norms.max():.6g} (they must all equal it)"
        )


def _reconstruct(index: Any, rows: np.ndarray) -> np.ndarray | None:
    """Rows of ``index`` decoded back to vectors, or ``None`` where FAISS cannot reconstruct them."""
    try:
        return np.stack([index.reconstruct(int(r)) for r in rows])
    except RuntimeError:
        pass
    try:  # IVF indexes reconstruct through a direct map, built for this check and dropped after
        ivf = faiss.extract_index_ivf(index)
        ivf.make_direct_map(True)
        try:
            return np.stack([index.reconstruct(int(r)) for r in rows])
        finally:
            ivf.make_direct_map(False)
    except (RuntimeError, AttributeError):
        return None


def _flat_centre_from_config(config: dict[str, Any], cfg_path: Path, index_type: str, dim: int) -> np.ndarray | None:
    """The flat index's centre (``flat_centre``: ``dim`` finite numbers, or absent / null before centring)."""
    value = config.get("flat_centre")
    if value is None:
        return None
    if not (index_type == "flat" and isinstance(value, list) and len(value) == dim and all(_is_real(x) for x in value)):
        raise StoreFormatError(
            f"{cfg_path}: field 'flat_centre' must be null or, for a flat store, a list of {dim} finite numbers"
        )
    return np.asarray(value, dtype=np.float64)


def _known_index_params() -> frozenset[str]:
    """The ``index_params`` keys this release writes (and so reads)."""
    return frozenset(KLStore()._index_params())


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_config(cfg_path: Path) -> dict[str, Any]:
    """Read and validate a store's ``config.json``; every problem is a :class:`StoreFormatError` naming the field.

    Stores saved by earlier releases of format version 1 (without ``index_offset`` or some
    ``index_params``) are accepted; a newer format version or an ``index_params`` key this
    release does not know (what a newer release would write) is refused.
    """
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreFormatError(f"{cfg_path} is not valid JSON: {exc}") from exc

    def bad(field: str, what: str) -> StoreFormatError:
        got = config.get(field, "<missing>") if field in config else "<missing>"
        return StoreFormatError(f"{cfg_path}: field {field!r} must be {what}; got {got!r}")

    if not isinstance(config, dict):
        raise StoreFormatError(f"{cfg_path} must hold a JSON object; got a JSON {type(config).__name__}")
    if config.get("format") != _FORMAT_NAME:
        raise StoreFormatError(f"{cfg_path} is not a KLStore config: field 'format' is {config.get('format')!r}")
    saved_version = config.get("library_version", "unknown")
    version = config.get("format_version")
    if not _is_int(version):
        raise bad("format_version", "an integer")
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{cfg_path.parent} was written by a newer kl-retrievers ({saved_version}) in store format_version "
            f"{version}; this kl-retrievers ({library_version()}) reads format_version {FORMAT_VERSION}: "
            "upgrade kl-retrievers to load it"
        )
    if version != FORMAT_VERSION:
        raise StoreFormatError(
            f"{cfg_path}: unsupported store format_version {version} (this library reads {FORMAT_VERSION})"
        )
    if config.get("score_name") != SCORE_NAME or config.get("score_direction") != SCORE_DIRECTION:
        raise StoreFormatError(
            f"{cfg_path}: field 'score_name' is {config.get('score_name')!r} "
            f"({config.get('score_direction')!r}); this library serves {SCORE_NAME!r} ({SCORE_DIRECTION!r})"
        )
    dim = config.get("dim")
    if dim is not None and not (_is_int(dim) and dim > 0):
        raise bad("dim", "a positive integer (or null for an empty store)")
    if not (_is_int(config.get("count")) and config["count"] >= 0):
        raise bad("count", "a non-negative integer")
    if config.get("dtype", "float32") != "float32":
        raise bad("dtype", "'float32'")
    if config.get("index_type") not in INDEX_TYPES:
        raise bad("index_type", f"one of {INDEX_TYPES}")
    if not isinstance(config.get("index_built"), bool):
        raise bad("index_built", "true or false")
    params = config.get("index_params")
    if not isinstance(params, dict):
        raise bad("index_params", "a JSON object")
    unknown = sorted(set(params) - _known_index_params())
    if unknown:
        raise StoreFormatError(
            f"{cfg_path}: field 'index_params' has unknown key(s) {unknown}; the store was written by "
            f"kl-retrievers {saved_version}, this is {library_version()} (a newer release's store? upgrade "
            "kl-retrievers)"
        )
    norm_bound = config.get("norm_bound")
    approximate = config["index_type"] != "flat" and config["index_built"]
    if norm_bound is not None or approximate:
        if not (_is_real(norm_bound) and norm_bound > 0):
            raise bad("norm_bound", "a positive finite number")
        config["norm_bound"] = float(norm_bound)
    config.setdefault("index_offset", 0.0)  # absent in stores saved before the shift
    if not _is_real(config["index_offset"]):
        raise bad("index_offset", "a finite number")
    config["index_offset"] = float(config["index_offset"])
    encoder = config.get("encoder")
    if encoder is not None:
        if not isinstance(encoder, dict):
            raise bad("encoder", "a JSON object or null")
        if not isinstance(encoder.get("name_or_path", ""), str):
            raise StoreFormatError(f"{cfg_path}: field 'encoder.name_or_path' must be a string")
        if not isinstance(encoder.get("config"), (dict, type(None))):
            raise StoreFormatError(f"{cfg_path}: field 'encoder.config' must be a JSON object or null")
    config["encoder"] = encoder
    files = config.get("files")
    if not isinstance(files, dict):
        raise bad("files", "a JSON object mapping file names to their size and checksum")
    for name, info in files.items():
        if name not in _STORE_FILES:
            raise StoreFormatError(
                f"{cfg_path}: field 'files' names {name!r}; a store folder holds only {list(_STORE_FILES)}"
            )
        if not isinstance(info, dict):
            raise StoreFormatError(f"{cfg_path}: field 'files.{name}' must be an object with 'bytes' and 'sha256'")
        if not (_is_int(info.get("bytes")) and info["bytes"] >= 0):
            raise StoreFormatError(
                f"{cfg_path}: field 'files.{name}.bytes' must be a non-negative integer; got {info.get('bytes')!r}"
            )
        if not (isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])):
            raise StoreFormatError(
                f"{cfg_path}: field 'files.{name}.sha256' must be 64 lowercase hex digits; got {info.get('sha256')!r}"
            )
    required = [_MEAN, _VAR, _DOCS] + ([_INDEX] if config["index_built"] else [])
    for name in required:
        if name not in files:
            raise StoreFormatError(f"{cfg_path}: field 'files' has no entry for required file {name}")
    if _INDEX in files and not config["index_built"]:
        raise StoreFormatError(f"{cfg_path}: field 'files' lists {_INDEX} but 'index_built' is false")
    return config


def _check_files(folder: Path, files: dict[str, Any], verify_checksums: bool) -> None:
    """Every listed file is a regular file inside ``folder`` with the recorded size (and SHA-256)."""
    root = folder.resolve()
    for name, info in files.items():
        p = folder / name
        if p.resolve().parent != root:
            raise StoreFormatError(f"{p} resolves to {p.resolve()}, outside the store folder")
        if not p.is_file():
            raise StoreFormatError(f"missing file {p} listed in the config")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise StoreFormatError(f"{p} has {size} bytes; the config says {info['bytes']} (truncated or replaced?)")
        if verify_checksums and sha256_file(p) != info["sha256"]:
            raise StoreFormatError(f"{p} does not match its SHA-256 checksum in the config (corrupted?)")


def _read_array(path: Path, mmap: bool, count: int, dim: int) -> np.ndarray:
    """A ``(count, dim)`` float32 array from ``path`` (no pickle)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreFormatError(f"cannot read {path}: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.shape != (count, dim) or arr.dtype != np.dtype(np.float32):
        raise StoreFormatError(
            f"{path.name} has shape {getattr(arr, 'shape', None)} and dtype {getattr(arr, 'dtype', None)}; "
            f"config says ({count}, {dim}) float32"
        )
    return arr


def _read_documents(path: Path, count: int) -> tuple[list[str], list[str | None], list[dict[str, Any]]]:
    """Ids, texts and metadata from ``documents.jsonl``, checked against ``count``."""
    ids: list[str] = []
    texts: list[str | None] = []
    metas: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise StoreFormatError(f"{_DOCS} line {line_no} is malformed: {exc}") from exc
                if not isinstance(rec, dict):
                    raise StoreFormatError(f"{_DOCS} line {line_no} is malformed: not a JSON object")
                doc_id, text, meta = rec.get("id"), rec.get("text"), rec.get("metadata")
                if not isinstance(doc_id, str):
                    raise StoreFormatError(f"{_DOCS} line {line_no}: field 'id' must be a string; got {doc_id!r}")
                if not isinstance(text, (str, type(None))):
                    raise StoreFormatError(f"{_DOCS} line {line_no}: field 'text' must be a string or null")
                if not isinstance(meta, (dict, type(None))):
                    raise StoreFormatError(f"{_DOCS} line {line_no}: field 'metadata' must be an object or null")
                ids.append(doc_id)
                texts.append(text)
                metas.append(meta or {})
    except UnicodeDecodeError as exc:
        raise StoreFormatError(f"{path} is not UTF-8 text: {exc}") from exc
    if len(ids) != count:
        raise StoreFormatError(f"{_DOCS} has {len(ids)} documents; the config says {count}")
    if len(set(ids)) != count:
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise StoreFormatError(f"{_DOCS} contains duplicate id {dup!r}")
    return ids, texts, metas


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
