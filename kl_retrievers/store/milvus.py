"""``MilvusKLStore``: the :class:`~kl_retrievers.store.GaussianStore` interface served by Milvus.

The sibling of :class:`~kl_retrievers.store.faiss.KLStore` for corpora that outgrow one process:
the same public methods (checked the same way), the same reduction of ``-KL`` to L2, a Milvus
collection instead of a table and a FAISS index.  Each document is stored as one Milvus row: a
``VARCHAR`` primary key ``id``, its ``text``, a ``JSON`` ``metadata`` field and a
``FLOAT_VECTOR`` holding the inner-product rewrite ``d~`` of its Gaussian (METHOD.md):

* ``metric="L2"`` (default): the MIPS -> L2 reduction, the very code :class:`KLStore` uses
  (``reduction to L2`` in :mod:`kl_retrievers.gaussian`).  The first coordinate of ``d~`` is
  shifted by an offset ``o`` (the mean first coordinate of the first documents added; it changes
  no ranking, and without it that coordinate's shared part dominates every norm and IVF recall
  suffers), giving ``d^``; the vector is ``[d^, sqrt(M^2 - ||d^||^2)]`` with
  ``M = norm_headroom * max ||d^||``; a query is ``[q~ * M / ||q~||, 0]``.  Where the first
  documents' means share a large common offset, every mean (queries too) is first centred on
  their mean (``index_centre``, kept by later writers; as in ``KLStore``'s HNSW / IVF engines,
  :func:`~kl_retrievers.gaussian.worth_centring`).  A later document whose
  norm exceeds ``M`` makes the store raise ``M`` and rewrite every row (logged, counted in
  ``rebuild_count``).  ``M`` and ``o`` are stored in the collection with a version number, so
  several writer processes share them; see *Several writers* below.
* ``metric="IP"``: ``d~`` as it is, searched by inner product (no norm bound).  Exact with
  ``index_type="flat"``; with HNSW or IVF it finds almost none of the true neighbours
  (``benchmarks/milvus.py``), which is why the L2 reduction is the default.

Milvus returns a candidate pool (``max(rescore_pool, rescore_factor * k)``) with the stored
vectors; the Gaussians are recovered from ``d~`` exactly (``var = -1 / (2 d~_var)``,
``mu = d~_mu * var``) and re-scored with the exact ``-KL`` in float64, so reported scores are
the true ``-KL(Q || D)`` (query constant included): **higher is better**.

Several writers: every row of the collection must be reduced with the same ``M`` and ``o``, or the
L2 ranking (and so the candidate pool) is wrong.  Milvus has no transactions and no atomic
compare-and-set on collection properties, so a writer (any :meth:`MilvusKLStore.add`) does this:

1. it re-reads the stored ``M``, ``o`` and version before writing and adopts them (a raise by
   another process is never overridden by a stale copy);
2. if it needs a larger ``M``, it stores the new ``M`` with version + 1 and a *rewrite pending* mark
   **before** changing any row, reads the properties back and starts over if another writer's
   value is there instead (write-then-verify: the closest Milvus allows to compare-and-set);
3. it rewrites every row under the stored ``M`` (each from its recovered Gaussian), then marks the
   rewrite done under a separate property key, and inserts its own rows;
4. it re-reads ``M`` and ``o`` after inserting; if they changed meanwhile it starts over (rewriting
   its own rows, or every row when it had rewritten others' rows).

Guarantee: once every concurrent ``add`` has returned, every row is reduced with the stored ``M``
and ``o``, so rankings are exact (flat) or as good as a single writer's (HNSW / IVF).  While adds
that raise ``M`` overlap, a search can briefly see rows under two bounds (a transient ranking
error, never a wrong score: scores are always re-computed exactly).  A writer killed after storing
a raised ``M`` leaves the rewrite pending: the next ``add`` (or :meth:`MilvusKLStore.repair`) by any
process finishes it.  Concurrent adds that raise ``M`` may rewrite the collection more than once;
a re-inserted row of an ``add`` that had to start over can bring back a row another process
deleted in that window.  Collections written by the previous release (no offset, no version) are
read as ``o = 0``, version 0; this release stores format version 2, which older releases refuse to
write to (they do not follow this protocol).

Dict filters in :mod:`kl_retrievers.filters` syntax are translated to Milvus boolean
expressions over the JSON field by :func:`to_milvus_expr` and applied by Milvus before
ranking.  The store's configuration (format, dimension, metric, ``M``, library version) lives in
the collection's properties, so a store reattaches to its collection and refuses one created
with another dimension or metric, without overwriting anything.

Tests use Milvus Lite (``pip install "kl-retrievers[milvus]"``): a local file ``uri`` such as
``"./kl.db"`` starts it in-process.  Pointing the same code at a cluster is a one-line change:
``uri="http://milvus-host:19530"`` (plus ``token="user:password"`` when auth is on).

Examples:
    >>> import numpy as np, tempfile, os
    >>> from kl_retrievers.gaussian import Gaussians
    >>> rng = np.random.default_rng(0)
    >>> docs = Gaussians(rng.normal(size=(50, 8)), np.exp(rng.normal(0, 0.3, size=(50, 8))))
    >>> store = MilvusKLStore(uri=os.path.join(tempfile.mkdtemp(), "kl.db"), index_type="flat")
    >>> _ = store.add(gaussians=docs, ids=[f"d{i}" for i in range(50)])
    >>> store.search(docs[3], k=2)[0].id
    'd3'
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kl_retrievers._io import library_version
from kl_retrievers.filters import ALLOWED_OPERATORS, MetadataFilter
from kl_retrievers.gaussian import (
    NORM_BOUND_RTOL,
    SCORE_DIRECTION,
    SCORE_NAME,
    Gaussians,
    centre_document_vectors,
    document_gaussians_from_vectors,
    kl_document_vectors,
    kl_query_vectors,
    means_centre,
    neg_kl,
    reduce_document_vectors,
    reduce_query_vectors,
    reduction_norm_bound,
    reduction_offset,
    worth_centring,
)
from kl_retrievers.store._base import (
    INDEX_TYPES,
    DeleteReport,
    GaussianStore,
    SearchResult,
    StoredDocument,
    _check_store_args,
    _NewDocuments,
)

logger = logging.getLogger(__name__)

__all__ = ["MilvusKLStore", "MilvusConnectionError", "to_milvus_expr", "INDEX_TYPES", "METRICS"]

METRICS = ("L2", "IP")
COMPRESSIONS = (None, "sq8")
#: Longest id (characters) the collection's VARCHAR primary key holds.
MAX_ID_LENGTH = 512
#: Largest ``limit`` (top-k) Milvus accepts for one search.
MAX_TOPK = 16384
_FORMAT_NAME = "kl-retrievers/milvus"
#: 2: the first coordinate is shifted by ``index_offset``; ``M`` carries a version (1 had neither).
_FORMAT_VERSION = 2
_CONFIG_KEY = "kl_retrievers.config"
#: Property key of the last finished row rewrite (``{"version", "writer"}`` of the publication it served).
_REWRITE_DONE_KEY = "kl_retrievers.rewrite_done"
#: How often one ``add`` starts over after a concurrent writer changed ``M`` before it gives up.
_MAX_SYNC_ATTEMPTS = 20
_EXTRA = "pip install 'kl-retrievers[milvus]'"


class MilvusConnectionError(ConnectionError):
    """Milvus could not be reached (or Milvus Lite could not start) within the timeout."""


def _import_pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"the Milvus backend needs pymilvus (and milvus-lite for local files): {_EXTRA}") from exc
    return pymilvus


# ------------------------------------------------------------------ filters
def _string_literal(text: str) -> str:
    """A Milvus expression string literal: UTF-8 as it is, only ``\\``, ``"``, newline and CR escaped.

    ``json.dumps`` escapes non-ASCII as ``\\uXXXX``, which Milvus' parser refuses ("unknown escape
    sequence"), so a filter on ``"Zürich"`` failed.

    Examples:
        >>> print(_string_literal('Zürich "old" town'))
        "Zürich \\"old\\" town"
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _literal(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise ValueError(f"{where}: Milvus filters need finite numbers; got {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _string_literal(value)
    raise ValueError(
        f"{where}: the Milvus backend can filter on str, int, float or bool values; got {type(value).__name__}"
    )


def _field_ref(field: str, key: str) -> str:
    return f"{field}[{_string_literal(key)}]"


def _milvus_metadata(meta: Any, doc_id: str) -> Any:
    """Metadata as Milvus' JSON field stores it: keys as strings (as a save and load of KLStore makes them).

    Raises:
        ValueError: An integer outside 64 bits (Milvus' JSON numbers), naming the document.
    """

    def check(value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            raise ValueError(
                f"metadata of document {doc_id!r} holds the integer {value}, beyond the 64 bits Milvus keeps"
            )
        for child in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            check(child)

    check(meta)
    return json.loads(json.dumps(meta))


def _present(ref: str, test: str) -> str:
    # "exists ref and ..." is FALSE (not NULL) for a missing key, so NOT keeps two-valued logic
    return f"(exists {ref} and {test})"


_TRUE, _FALSE = "(1 == 1)", "(1 == 0)"
_COMPARE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _unknown(op: str) -> ValueError:
    return ValueError(f"unknown filter operator {op!r}; allowed operators are: {', '.join(ALLOWED_OPERATORS)}")


def _values(op: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"filter operator {op!r} needs a list of values; got {type(value).__name__}")
    return list(value)


def _join(word: str, parts: list[str], empty: str) -> str:
    """``parts`` joined by ``and`` / ``or`` in parentheses (``empty`` when there are none, a lone part as it is)."""
    if not parts:
        return empty
    return parts[0] if len(parts) == 1 else "(" + f" {word} ".join(parts) + ")"


def _field_expr(ref: str, op: str, value: Any, where: str) -> str:
    """One operator applied to the field ``ref``."""
    if op == "$eq":
        return _present(ref, f"{ref} == {_literal(value, where)}")
    if op == "$ne":
        return f"(not {_field_expr(ref, '$eq', value, where)})"
    if op in ("$in", "$nin"):
        values = _values(op, value)
        if not values:
            return _FALSE if op == "$in" else _TRUE
        alts = " or ".join(f"{ref} == {_literal(v, where)}" for v in values)
        expr = _present(ref, f"({alts})")
        return expr if op == "$in" else f"(not {expr})"
    if op in _COMPARE:
        if isinstance(value, bool):
            raise ValueError(f"{where}: {op} needs a number or a string; got a bool")
        return _present(ref, f"{ref} {_COMPARE[op]} {_literal(value, where)}")
    if op == "$not":
        return f"(not {_condition_expr(ref, value, where)})"
    raise _unknown(op)


def _condition_expr(ref: str, cond: Any, where: str) -> str:
    """The right-hand side of ``{"field": cond}``: operators, a list (one of) or a value (equal to)."""
    ops = [k for k in cond if isinstance(k, str) and k.startswith("$")] if isinstance(cond, Mapping) else []
    if ops and len(ops) < len(cond):
        plain = [k for k in cond if k not in ops]
        raise ValueError(f"a field condition cannot mix operators and plain keys; got plain keys {plain}")
    if ops:
        return _join("and", [_field_expr(ref, op, cond[op], where) for op in ops], _TRUE)
    if isinstance(cond, (list, tuple)):
        return _field_expr(ref, "$in", list(cond), where)
    return _field_expr(ref, "$eq", cond, where)


def _entry_expr(key: Any, value: Any, field: str) -> str:
    """One entry of a filter dict: ``$and`` / ``$or`` over sub-filters, ``$not`` of one, or a field's condition."""
    if not isinstance(key, str):
        raise ValueError(f"filter keys must be strings; got {key!r}")
    if key in ("$and", "$or"):
        return _join(key[1:], [_expr(sub, field) for sub in _values(key, value)], _TRUE if key == "$and" else _FALSE)
    if key == "$not":
        return f"(not {_expr(value, field)})"
    if key.startswith("$"):
        raise _unknown(key)
    return _condition_expr(_field_ref(field, key), value, f"filter on {key!r}")


def _expr(spec: Any, field: str) -> str:
    """A filter dict: the AND of its entries."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a filter must be a dict; got {type(spec).__name__}")
    return _join("and", [_entry_expr(key, value, field) for key, value in spec.items()], _TRUE)


def to_milvus_expr(filter: MetadataFilter, field: str = "metadata") -> str:
    """Translate a dict filter (:mod:`kl_retrievers.filters` syntax) into a Milvus expression.

    Every comparison is guarded with ``exists``, so a document without the field never
    satisfies ``$eq``, ``$in`` or a range and always satisfies ``$ne``, ``$nin`` and ``$not``,
    exactly as in :class:`~kl_retrievers.store.faiss.KLStore`.  One difference remains: Milvus treats
    a comparison between incompatible types (``"a" > 1``) as unknown, so under ``$not`` such a
    document is excluded where ``KLStore`` includes it.

    Args:
        filter: The filter dict.  Callables cannot run inside Milvus and raise ``ValueError``.
        field: The JSON field holding the metadata.

    Returns:
        A Milvus boolean expression.

    Raises:
        ValueError: An unknown operator, a callable, or a value type Milvus cannot compare.

    Examples:
        >>> to_milvus_expr({"lang": "en"})
        '(exists metadata["lang"] and metadata["lang"] == "en")'
        >>> to_milvus_expr({"year": {"$gte": 2020}})
        '(exists metadata["year"] and metadata["year"] >= 2020)'
    """
    if callable(filter) and not isinstance(filter, Mapping):
        raise ValueError(
            "the Milvus backend needs a dict filter (it is translated to a Milvus expression); "
            f"a callable cannot run inside Milvus. Allowed operators: {', '.join(ALLOWED_OPERATORS)}"
        )
    return _expr(filter, field)


# ------------------------------------------------------------------ store
@dataclass(frozen=True)
class _Reduction:
    """The L2 reduction's shared state as stored in the collection's properties."""

    norm_bound: float | None  # M; None until the first documents are added
    offset: float  # o, subtracted from the first coordinate of d~
    version: int  # +1 on every publication of a new M
    writer: str | None  # token of the publication (tells two writers of one version apart)
    pending: bool  # a raised M whose row rewrite has not been marked done
    centre: tuple[float, ...] | None = None  # subtracted from every mean (chosen with the first documents)


_NO_REDUCTION = _Reduction(norm_bound=None, offset=0.0, version=0, writer=None, pending=False)


class _NeedsLargerBound(Exception):
    """A stored row's norm exceeds the stored ``M`` (a concurrent writer's raise was overwritten)."""

    def __init__(self, top: float) -> None:
        super().__init__(f"a stored row has norm {top:.6g}, above the stored bound")
        self.top = top


class MilvusKLStore(GaussianStore):
    """A document store ranked by exact ``-KL(Q || D)`` (higher is better), served by Milvus.

    Same interface as :class:`~kl_retrievers.store.faiss.KLStore` (:class:`GaussianStore`):
    ``add``, ``delete``, ``get_by_ids``, ``get_gaussians``, ``len``, ``search`` and ``search_batch``.

    Several instances (in several processes) may write to one collection: each ``add`` re-reads
    the stored norm bound ``M`` and offset with their version, stores a raised ``M`` before it
    rewrites any row and checks afterwards that no other writer changed it (see the module
    docstring, *Several writers*, for what this guarantees and what it cannot).

    Args:
        encoder: Optional encoder (``encode_queries`` / ``encode_documents``); needed to add or
            search by text.
        uri: A local file (``"./kl.db"``: Milvus Lite, in-process) or a server
            (``"http://host:19530"``).
        collection_name: The Milvus collection.
        dim: Gaussian dimension ``k``; inferred from the first :meth:`add` when ``None``.
        token: Milvus credentials (``"user:password"``) for a server with auth.
        index_type: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"``.
        metric: ``"L2"`` (MIPS -> L2 reduction, default) or ``"IP"``.
        compression: ``None`` or ``"sq8"`` (``HNSW_SQ`` / ``IVF_SQ8``).
        hnsw_m: HNSW graph degree ``M``.
        ef_construction: HNSW ``efConstruction``.
        ef_search: HNSW ``ef`` (raised to the candidate pool when smaller).
        nlist: IVF lists.
        nprobe: IVF lists probed per query.
        rescore_pool: Minimum candidates re-scored exactly per query.
        rescore_factor: The pool is ``max(rescore_pool, rescore_factor * k)`` (at most 16384).
        norm_headroom: ``M = norm_headroom * max ||d~||`` for the L2 reduction (>= 1).
        max_text_length: ``max_length`` of the ``text`` field; longer texts raise ``ValueError``.
        timeout: Seconds to wait for the server when connecting and for metadata calls.
        request_timeout: Seconds allowed for each data call (insert, search, get, delete,
            flush); ``None`` waits as long as the server needs.
        batch_size: Encoder batch size.
        insert_batch: Rows per insert request.
        show_progress_bar: Show bars while encoding and inserting.
        client: An existing ``pymilvus.MilvusClient`` to use instead of ``uri``.

    Raises:
        MilvusConnectionError: The server cannot be reached within ``timeout``.
        ValueError: Bad options, or an existing collection with another dimension or metric,
            or one not created by kl-retrievers (it is never overwritten).

    Examples:
        >>> import tempfile, os
        >>> store = MilvusKLStore(uri=os.path.join(tempfile.mkdtemp(), "kl.db"), dim=4)
        >>> len(store)
        0
    """

    def __init__(
        self,
        encoder: Any | None = None,
        *,
        uri: str = "./kl_retrievers.db",
        collection_name: str = "kl_retrievers",
        dim: int | None = None,
        token: str | None = None,
        index_type: str = "hnsw",
        metric: str = "L2",
        compression: str | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
        nlist: int = 1024,
        nprobe: int = 32,
        rescore_pool: int = 100,
        rescore_factor: int = 10,
        norm_headroom: float = 1.1,
        max_text_length: int = 65535,
        timeout: float = 10.0,
        request_timeout: float | None = 300.0,
        batch_size: int = 32,
        insert_batch: int = 1000,
        show_progress_bar: bool = False,
        client: Any | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
        _check_store_args(
            index_type,
            compression,
            dim,
            norm_headroom,
            [
                ("hnsw_m", hnsw_m),
                ("ef_construction", ef_construction),
                ("ef_search", ef_search),
                ("nlist", nlist),
                ("nprobe", nprobe),
                ("rescore_pool", rescore_pool),
                ("rescore_factor", rescore_factor),
                ("max_text_length", max_text_length),
                ("batch_size", batch_size),
                ("insert_batch", insert_batch),
            ],
            compressions=COMPRESSIONS,
        )
        if not timeout > 0:
            raise ValueError(f"timeout must be positive (seconds); got {timeout!r}")
        if request_timeout is not None and not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive (seconds) or None; got {request_timeout!r}")
        if not isinstance(collection_name, str) or not collection_name:
            raise ValueError(f"collection_name must be a non-empty string; got {collection_name!r}")
        if metric == "IP" and index_type != "flat":
            logger.warning(
                "metric='IP' with index_type=%r: graph and cluster indexes over the raw KL vectors find almost none "
                "of the true neighbours (recall@10 0.001 at 100k documents in benchmarks/milvus.py); use metric='L2', "
                "the MIPS -> L2 reduction",
                index_type,
            )
        self.encoder = encoder
        self.uri = uri
        self.collection_name = collection_name
        self.index_type = index_type
        self.metric = metric
        self.compression = compression
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)
        self.rescore_pool = int(rescore_pool)
        self.rescore_factor = int(rescore_factor)
        self.norm_headroom = float(norm_headroom)
        self.max_text_length = int(max_text_length)
        self.timeout = float(timeout)
        self.request_timeout = None if request_timeout is None else float(request_timeout)
        self.batch_size = int(batch_size)
        self.insert_batch = int(insert_batch)
        self.show_progress_bar = bool(show_progress_bar)
        #: Rewrites of every row's extra coordinate caused by a document norm above ``M``.
        self.rebuild_count = 0
        self._lock = threading.RLock()
        self._dim: int | None = None
        self._state = _NO_REDUCTION  # M, the offset and their version, as this client last read them
        self._client = client if client is not None else self._connect(uri, token)
        if self._client.has_collection(collection_name, timeout=self.timeout):
            self._attach(None if dim is None else int(dim))
        elif dim is not None:
            self._create(int(dim))

    # ------------------------------------------------------------ connection
    def _connect(self, uri: str, token: str | None) -> Any:
        pymilvus = _import_pymilvus()
        kwargs: dict[str, Any] = {"uri": uri, "timeout": self.timeout}
        if token:
            kwargs["token"] = token
        try:
            return pymilvus.MilvusClient(**kwargs)
        except Exception as exc:
            raise MilvusConnectionError(
                f"could not connect to Milvus at {uri!r} within {self.timeout:g} s: {exc}. "
                "Check the URI (a local file such as './kl.db' starts Milvus Lite, which needs "
                f"{_EXTRA}; a server looks like 'http://host:19530')."
            ) from exc

    @property
    def client(self) -> Any:
        """The underlying ``pymilvus.MilvusClient``."""
        return self._client

    def _reduction(self) -> tuple[float | None, float]:
        return self._state.norm_bound, self._state.offset  # (None, 0.0) for metric="IP"

    @property
    def norm_version(self) -> int:
        """Version of the stored ``M``: +1 each time a writer stores a new one (0: none yet, or an old collection)."""
        return self._state.version

    @property
    def _vector_dim(self) -> int:
        assert self._dim is not None
        return 2 * self._dim + (2 if self.metric == "L2" else 1)

    def _config(self) -> dict[str, Any]:
        return {
            "format": _FORMAT_NAME,
            "format_version": _FORMAT_VERSION,
            "library_version": library_version(),
            "score": {"name": SCORE_NAME, "direction": SCORE_DIRECTION},
            "dim": self._dim,
            "metric": self.metric,
            "vector_dim": self._vector_dim,
            "norm_bound": self._state.norm_bound,
            "index_offset": self._state.offset,
            "index_centre": None if self._state.centre is None else list(self._state.centre),
            "version": self._state.version,
            "writer": self._state.writer,
            "rewrite": False,
            "index_type": self.index_type,
            "compression": self.compression,
            "encoder": getattr(self.encoder, "name_or_path", None),
        }

    def _index_params(self) -> tuple[str, dict[str, Any]]:
        if self.index_type == "flat":
            return "FLAT", {}
        if self.index_type == "hnsw":
            params: dict[str, Any] = {"M": self.hnsw_m, "efConstruction": self.ef_construction}
            if self.compression == "sq8":
                return "HNSW_SQ", {**params, "sq_type": "SQ8"}
            return "HNSW", params
        return ("IVF_SQ8" if self.compression == "sq8" else "IVF_FLAT"), {"nlist": self.nlist}

    def _create(self, k: int) -> None:
        pymilvus = _import_pymilvus()
        dt = pymilvus.DataType
        self._dim = k
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", dt.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field("vector", dt.FLOAT_VECTOR, dim=self._vector_dim)
        schema.add_field("text", dt.VARCHAR, max_length=self.max_text_length)
        schema.add_field("metadata", dt.JSON)
        index_params = self._client.prepare_index_params()
        index_type, params = self._index_params()
        index_params.add_index(field_name="vector", index_type=index_type, metric_type=self.metric, params=params)
        self._client.create_collection(
            self.collection_name,
            schema=schema,
            index_params=index_params,
            properties={_CONFIG_KEY: json.dumps(self._config())},
            timeout=self.timeout,
        )
        logger.info("created Milvus collection %r (%s, %s, dim %d)", self.collection_name, index_type, self.metric, k)

    def _stored_config(self, info: Mapping[str, Any]) -> tuple[dict[str, Any], _Reduction]:
        """The kl-retrievers config in a ``describe_collection`` answer and the reduction state it stores."""
        props = info.get("properties") or {}
        raw = props.get(_CONFIG_KEY)
        name = self.collection_name
        if raw is None:
            raise ValueError(
                f"Milvus collection {name!r} exists but was not created by kl-retrievers; "
                "choose another collection_name (nothing was changed)"
            )
        config = json.loads(raw)
        if config.get("format") != _FORMAT_NAME or int(config.get("format_version", 0)) > _FORMAT_VERSION:
            raise ValueError(f"Milvus collection {name!r} has an unsupported format: {config.get('format')!r}")
        bound, offset = config.get("norm_bound"), config.get("index_offset", 0.0)  # both absent before version 2
        for what, value in (("norm_bound", bound), ("index_offset", offset)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"Milvus collection {name!r}: stored {what} must be a number; got {value!r}")
        if bound is not None and not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"Milvus collection {name!r}: stored norm_bound must be finite and > 0; got {bound!r}")
        if offset is None or not math.isfinite(offset):
            raise ValueError(f"Milvus collection {name!r}: stored index_offset must be finite; got {offset!r}")
        centre = config.get("index_centre")  # absent before 2026-12-03: no centring
        ok = isinstance(centre, list) and len(centre) == config.get("dim")
        if centre is not None and not (
            ok and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in centre)
        ):
            raise ValueError(
                f"Milvus collection {name!r}: stored index_centre must be null or {config.get('dim')} finite numbers"
            )
        version, writer = int(config.get("version", 0)), config.get("writer")
        done = json.loads(props.get(_REWRITE_DONE_KEY) or "{}")
        pending = bool(config.get("rewrite")) and (done.get("version"), done.get("writer")) != (version, writer)
        state = _Reduction(
            None if bound is None else float(bound),
            float(offset),
            version,
            writer,
            pending,
            None if centre is None else tuple(float(c) for c in centre),
        )
        return config, state

    def _adopt(self, state: _Reduction) -> None:
        if self._state.norm_bound is not None and state.norm_bound != self._state.norm_bound:
            logger.info(
                "adopting the stored L2-reduction bound M=%s (version %d); this client held M=%.6g",
                state.norm_bound,
                state.version,
                self._state.norm_bound,
            )
        self._state = state

    def _read_state(self) -> _Reduction:
        """Re-read ``M``, the offset and their version from the collection, and adopt them."""
        info = self._client.describe_collection(self.collection_name, timeout=self.timeout)
        state = self._stored_config(info)[1]
        self._adopt(state)
        return state

    def _attach(self, dim: int | None) -> None:
        info = self._client.describe_collection(self.collection_name, timeout=self.timeout)
        name = self.collection_name
        config, state = self._stored_config(info)
        if config.get("metric") != self.metric:
            raise ValueError(
                f"Milvus collection {name!r} was created with metric {config.get('metric')!r}, not {self.metric!r}; "
                "pass the same metric or choose another collection_name (nothing was overwritten)"
            )
        if dim is not None and int(config["dim"]) != dim:
            raise ValueError(
                f"Milvus collection {name!r} holds Gaussians of dimension {config['dim']}, not {dim}; "
                "choose another collection_name (nothing was overwritten)"
            )
        fields = {f["name"]: f for f in info.get("fields", [])}
        vdim = int((fields.get("vector") or {}).get("params", {}).get("dim", -1))
        self._dim = int(config["dim"])
        if vdim != self._vector_dim:
            raise ValueError(
                f"Milvus collection {name!r}: its vector field has dimension {vdim}, but its kl-retrievers config "
                f"says {self._vector_dim}; the collection is inconsistent (nothing was changed)"
            )
        self._adopt(state)
        self._client.load_collection(name, timeout=self.request_timeout)

    def _publish(
        self, norm_bound: float, offset: float, *, rewrite: bool, centre: tuple[float, ...] | None = None
    ) -> bool:
        """Store a new ``M`` (version + 1) before any row uses it; ``False`` if another writer's won.

        Milvus has no compare-and-set on collection properties: the value is written, read back and
        compared with this publication's token (write-then-verify).  The caller has just re-read the
        stored state, so the version here is the stored one + 1.  ``centre`` is given with the first
        documents only; later publications keep the stored one.
        """
        config = self._config()
        writer = uuid.uuid4().hex
        config.update(
            norm_bound=norm_bound, index_offset=offset, version=self._state.version + 1, writer=writer, rewrite=rewrite
        )
        if self._state.norm_bound is None:  # the first documents choose the centre
            config["index_centre"] = None if centre is None else list(centre)
        self._client.alter_collection_properties(
            self.collection_name, properties={_CONFIG_KEY: json.dumps(config)}, timeout=self.timeout
        )
        state = self._read_state()
        if state.writer != writer:
            logger.warning(
                "another writer stored the L2-reduction bound M=%s (version %d) at the same time; starting over",
                state.norm_bound,
                state.version,
            )
            return False
        return True

    def __len__(self) -> int:
        if self._dim is None:
            return 0
        rows = self._client.query(
            self.collection_name, filter="", output_fields=["count(*)"], timeout=self.request_timeout
        )
        return int(rows[0]["count(*)"])

    def __repr__(self) -> str:
        return (
            f"MilvusKLStore(uri={self.uri!r}, collection={self.collection_name!r}, index_type={self.index_type!r}, "
            f"metric={self.metric!r}, dim={self._dim})"
        )

    # -------------------------------------------------------------- writing
    def _centred(self, raw: np.ndarray) -> np.ndarray:
        """``d~`` rows of the means centred on the stored centre (unchanged when there is none)."""
        centre = self._state.centre
        return centre_document_vectors(raw, None if centre is None else np.asarray(centre))

    def _rows(self, dvec: np.ndarray) -> np.ndarray:
        """Float32 vectors to store for float64 (centred) ``d~`` rows, reduced with this client's ``M`` and offset."""
        if self.metric == "IP":
            return dvec.astype(np.float32)
        assert self._state.norm_bound is not None
        return reduce_document_vectors(dvec, self._state.offset, self._state.norm_bound, width=self._vector_dim)

    def _upsert(self, vectors: np.ndarray, id_list: Sequence[str], texts: Sequence[Any], metas: Sequence[Any]) -> None:
        rng: Any = range(0, len(id_list), self.insert_batch)
        if self.show_progress_bar:
            from tqdm.auto import tqdm

            rng = tqdm(rng, desc="Inserting into Milvus", unit="batch")
        for s in rng:
            e = min(len(id_list), s + self.insert_batch)
            rows = [
                {"id": id_list[i], "vector": vectors[i].tolist(), "text": texts[i] or "", "metadata": metas[i]}
                for i in range(s, e)
            ]
            self._client.upsert(self.collection_name, rows, timeout=self.request_timeout)

    def _add_documents(self, new: _NewDocuments) -> None:
        """Upsert; also ``ValueError`` for a text longer than ``max_text_length`` (UTF-8 bytes) or an id
        longer than :data:`MAX_ID_LENGTH`, and for metadata Milvus' JSON field cannot hold, before anything
        is written."""
        g, id_list, text_list = new.gaussians, new.ids, new.texts
        for doc_id, text in zip(id_list, text_list, strict=True):
            if text is not None and len(text.encode("utf-8")) > self.max_text_length:
                raise ValueError(f"text of document {doc_id!r} is longer than max_text_length={self.max_text_length}")
            if len(doc_id) > MAX_ID_LENGTH:
                raise ValueError(f"id {doc_id[:40]!r}... has {len(doc_id)} characters; Milvus ids hold {MAX_ID_LENGTH}")
        metas = [_milvus_metadata(m, doc_id) for m, doc_id in zip(new.metadatas, id_list, strict=True)]
        with self._lock:
            if self._dim is None:
                if self._client.has_collection(self.collection_name, timeout=self.timeout):
                    self._attach(g.dim)
                else:
                    self._create(g.dim)
            if g.dim != self._dim:
                raise ValueError(f"gaussians have dimension {g.dim}; this store has dimension {self._dim}")
            raw = np.asarray(kl_document_vectors(g.astype(np.float64)))
            if self.metric == "IP":
                self._upsert(self._rows(raw), id_list, text_list, metas)
            else:
                self._add_reduced(raw, np.asarray(g.mean), id_list, text_list, metas)

    def _add_reduced(
        self, raw: np.ndarray, means: np.ndarray, id_list: list[str], texts: list[Any], metas: list[Any]
    ) -> None:
        """Insert rows under the stored centre, ``M`` and offset, following the several-writers protocol.

        ``raw`` holds the ``d~`` rows of the Gaussians as given (``means`` their means); each attempt
        centres them on the stored centre (module docstring, *Several writers*).
        """
        need = 0.0  # a norm the bound must cover besides this batch's (a stored row found above M)
        rewrote_all = False  # rows of other writers were rewritten under a bound since replaced
        for attempt in range(_MAX_SYNC_ATTEMPTS):
            state = self._read_state()
            if state.norm_bound is None:  # the collection's first documents: choose the centre, o and M
                c = means_centre(means)
                centre = tuple(float(x) for x in c) if worth_centring(raw, c) else None
                dvec = centre_document_vectors(raw, None if centre is None else np.asarray(centre))
                offset = reduction_offset(dvec)
                first_bound = reduction_norm_bound(dvec, offset, self.norm_headroom)
                if not self._publish(first_bound, offset, rewrite=False, centre=centre):
                    continue
            else:
                dvec = self._centred(raw)
                top = max(reduction_norm_bound(dvec, state.offset), need)
                rewrite = rewrote_all or state.pending
                if top > state.norm_bound:
                    if not self._publish(self.norm_headroom * top, state.offset, rewrite=True):
                        continue
                    rewrite = True
                if rewrite:
                    try:
                        self._rewrite_rows(state.norm_bound)
                    except _NeedsLargerBound as exc:
                        need, rewrote_all = max(need, exc.top), True
                        continue
                    rewrote_all = True
            bound, offset = self._state.norm_bound, self._state.offset
            self._upsert(self._rows(self._centred(raw)), id_list, texts, metas)
            after = self._read_state()
            if (after.norm_bound, after.offset) == (bound, offset):
                return
            logger.warning(
                "another writer changed the L2-reduction bound while this add ran (M %.6g -> %s); rewriting "
                "(attempt %d of %d)",
                bound,
                after.norm_bound,
                attempt + 1,
                _MAX_SYNC_ATTEMPTS,
            )
        raise RuntimeError(
            f"Milvus collection {self.collection_name!r}: could not agree on the L2-reduction bound with concurrent "
            f"writers in {_MAX_SYNC_ATTEMPTS} attempts; the documents were written but may be ranked under another "
            "bound: retry the add, or call repair() once the other writers are done"
        )

    def _iter_all(self, output_fields: list[str], batch: int = 1000) -> Iterator[list[dict[str, Any]]]:
        it = self._client.query_iterator(
            self.collection_name,
            batch_size=batch,
            filter="",
            output_fields=output_fields,
            timeout=self.request_timeout,
            consistency_level="Strong",  # see rows other writers have just inserted
        )
        try:
            while True:
                page = it.next()
                if not page:
                    break
                yield list(page)
        finally:
            it.close()

    def _rewrite_rows(self, old_bound: float | None) -> None:
        """Rewrite every stored row under this client's (just stored) ``M`` and offset, then mark it done.

        Each row is rebuilt from the Gaussian recovered from its stored vector, so a row written under
        any earlier bound or offset comes out consistent.  Raises :class:`_NeedsLargerBound` when a
        stored row does not fit under ``M`` (the caller raises ``M`` and starts over).
        """
        state = self._state
        assert self._dim is not None and state.norm_bound is not None
        bound, offset, version, writer = state.norm_bound, state.offset, state.version, state.writer
        rewritten = 0
        for page in self._iter_all(["id", "vector", "text", "metadata"]):
            g = document_gaussians_from_vectors([r["vector"] for r in page], self._dim)
            dvec = np.asarray(kl_document_vectors(g))
            top = reduction_norm_bound(dvec, offset)
            if top > bound * (1.0 + NORM_BOUND_RTOL):  # beyond the float32 rounding of the stored rows
                raise _NeedsLargerBound(top)
            vectors = reduce_document_vectors(dvec, offset, bound, width=self._vector_dim)
            rows = [
                {"id": r["id"], "vector": v.tolist(), "text": r["text"], "metadata": r["metadata"]}
                for r, v in zip(page, vectors, strict=True)
            ]
            self._client.upsert(self.collection_name, rows, timeout=self.request_timeout)
            rewritten += len(rows)
        # a separate key: a late mark can only name its own publication, never hide a newer pending one
        done = json.dumps({"version": version, "writer": writer})
        self._client.alter_collection_properties(
            self.collection_name, properties={_REWRITE_DONE_KEY: done}, timeout=self.timeout
        )
        self.rebuild_count += 1
        logger.warning(
            "rewrote %d rows under the L2-reduction bound M=%.6g (version %d; before: M=%s)",
            rewritten,
            bound,
            version,
            old_bound,
        )

    def repair(self) -> int:
        """Rewrite every row under the stored ``M`` and offset (a no-op for ``metric="IP"``).

        Needed only when a writer died between storing a raised ``M`` and finishing the rewrite and
        no ``add`` has run since, or after an ``add`` gave up on concurrent writers.  Safe to run at
        any time (while other processes write, too).

        Returns:
            The stored version of ``M`` the rows now follow.
        """
        with self._lock:
            if self._dim is None or self.metric == "IP":
                return self._state.version
            need = 0.0
            for _ in range(_MAX_SYNC_ATTEMPTS):
                state = self._read_state()
                if state.norm_bound is None:
                    return state.version
                if need > state.norm_bound and not self._publish(self.norm_headroom * need, state.offset, rewrite=True):
                    continue
                try:
                    self._rewrite_rows(state.norm_bound)
                except _NeedsLargerBound as exc:
                    need = max(need, exc.top)
                    continue
                if self._read_state().norm_bound == self._state.norm_bound:
                    return self._state.version
            raise RuntimeError(f"repair: the bound kept changing under concurrent writers ({_MAX_SYNC_ATTEMPTS} tries)")

    def _delete(self, ids: list[str]) -> DeleteReport:
        """Delete distinct ids (see :meth:`GaussianStore.delete`).

        Examples:
            >>> import tempfile, os
            >>> MilvusKLStore(uri=os.path.join(tempfile.mkdtemp(), "kl.db")).delete(["x"]).missing
            ['x']
        """
        if self._dim is None or not ids:
            return DeleteReport(deleted=[], missing=ids)
        with self._lock:
            found = {r["id"] for r in self._client.get(self.collection_name, ids=ids, output_fields=["id"])}
            deleted = [i for i in ids if i in found]
            if deleted:
                self._client.delete(self.collection_name, ids=deleted, timeout=self.request_timeout)
        return DeleteReport(deleted=deleted, missing=[i for i in ids if i not in found])

    # -------------------------------------------------------------- reading
    def _fetch(self, ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """The stored rows of ``ids`` (``fields`` of each) by id; unknown ids are absent."""
        if self._dim is None or not ids:
            return {}
        rows = self._client.get(self.collection_name, ids=list(dict.fromkeys(ids)), output_fields=fields)
        return {r["id"]: r for r in rows}

    def _documents(self, ids: list[str]) -> list[StoredDocument]:
        by_id = self._fetch(ids, ["text", "metadata"])
        return [StoredDocument(i, by_id[i]["text"], dict(by_id[i]["metadata"] or {})) for i in ids if i in by_id]

    def _gaussians(self, ids: list[str]) -> Gaussians:
        """Recovered exactly from the stored float32 vectors; ``KeyError`` for an unknown id."""
        by_id = self._fetch(ids, ["vector"])
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"unknown ids: {missing[:5]}")
        if not ids:
            k = self._dim or 1
            return Gaussians(np.zeros((0, k)), np.ones((0, k)))
        vectors = np.asarray([by_id[i]["vector"] for i in ids], dtype=np.float64).reshape(len(ids), -1)
        g = document_gaussians_from_vectors(vectors, self._dim)
        if self.metric == "L2" and self._state.norm_bound is None:
            with self._lock:
                self._read_state()  # another client added the first documents (and chose the centre) since
        if self._state.centre is None:
            return g
        return Gaussians(g.mean + np.asarray(self._state.centre), g.var, validate=False)  # the stored means are centred

    @property
    def ids(self) -> list[str]:
        """All stored ids (a full scan of the collection)."""
        if self._dim is None:
            return []
        return [r["id"] for page in self._iter_all(["id"]) for r in page]

    def _query_centred(self, qg: Gaussians) -> Gaussians:
        """float64 query Gaussians with their means centred like the stored ones (-KL unchanged)."""
        q64 = qg.astype(np.float64)
        if self._state.centre is None:
            return q64
        return Gaussians(np.asarray(q64.mean) - np.asarray(self._state.centre), q64.var, validate=False)

    def _query_vectors(self, qg: Gaussians) -> np.ndarray:
        qv = np.asarray(kl_query_vectors(self._query_centred(qg)), dtype=np.float64)
        if self.metric == "IP":
            return qv.astype(np.float32)
        assert self._state.norm_bound is not None
        # any M > 0 gives the same L2 ranking (every stored row has norm M), so no re-read is needed here
        return reduce_query_vectors(qv, self._state.norm_bound, width=self._vector_dim)

    def _check_k(self, k: Any) -> int:
        k = super()._check_k(k)
        if k > MAX_TOPK:
            raise ValueError(f"k must be at most {MAX_TOPK} with Milvus; got {k}")
        return k

    def _is_empty(self) -> bool:
        return self._dim is None  # no collection yet (counting the rows of one costs a request)

    def _prepare_filter(self, filter: MetadataFilter | None) -> str:
        """A Milvus expression (:func:`to_milvus_expr`; a callable filter raises ``ValueError``)."""
        return "" if filter is None else to_milvus_expr(filter)

    def _search(self, queries: Gaussians, k: int, filter: Any) -> list[list[SearchResult]]:
        qg = queries
        if self._dim is None:
            return [[] for _ in range(len(qg))]
        with self._lock:
            if self.metric == "L2" and self._state.norm_bound is None:
                self._read_state()  # another process may have added the first documents since
                if self._state.norm_bound is None:
                    return [[] for _ in range(len(qg))]  # nothing was ever added
            data = self._query_vectors(qg)
            q64 = self._query_centred(qg)  # the pool's recovered Gaussians are centred too
        pool = min(MAX_TOPK, max(k, self.rescore_pool, self.rescore_factor * k))
        params: dict[str, Any] = {}
        if self.index_type == "hnsw":
            params = {"ef": max(self.ef_search, pool)}
        elif self.index_type == "ivf":
            params = {"nprobe": self.nprobe}
        hits = self._client.search(
            self.collection_name,
            data=data.tolist(),
            limit=pool,
            filter=filter,
            output_fields=["vector"],
            search_params={"metric_type": self.metric, "params": params},
            anns_field="vector",
            timeout=self.request_timeout,
        )
        ranked: list[list[tuple[str, float]]] = []
        for i, row in enumerate(hits):
            row = list(row)
            if not row:
                ranked.append([])
                continue
            pool_gaussians = document_gaussians_from_vectors([h["entity"]["vector"] for h in row], self._dim)
            scores = np.asarray(neg_kl(q64[i], pool_gaussians))
            order = np.argsort(-scores, kind="stable")[:k]
            ranked.append([(str(row[j]["id"]), float(scores[j])) for j in order])
        # texts and metadata only for the winners, not for the whole candidate pool
        winners = list(dict.fromkeys(doc_id for row in ranked for doc_id, _ in row))
        docs = {d.id: d for d in self._documents(winners)} if winners else {}
        return [
            [SearchResult(i, s, docs[i].text, dict(docs[i].metadata)) for i, s in row if i in docs] for row in ranked
        ]

    def flush(self, wait_for_index: bool = False) -> None:
        """Seal what was added into segments that Milvus indexes.

        Milvus searches rows that are not yet in an indexed segment by brute force (exact, but
        slow and memory-hungry at scale), so call this after a bulk load.

        Args:
            wait_for_index: Also release and reload the collection, which returns only once every
                sealed segment's index is built and loaded.  The collection is briefly unavailable
                meanwhile: meant for bulk loads and benchmarks, not a live service.
        """
        if self._dim is None:
            return
        self._client.flush(self.collection_name, timeout=self.request_timeout)
        if wait_for_index:
            self._client.release_collection(self.collection_name, timeout=self.timeout)
            self._client.load_collection(self.collection_name, timeout=None)

    def drop(self) -> None:
        """Drop the collection (all documents) from Milvus."""
        with self._lock:
            if self._client.has_collection(self.collection_name, timeout=self.timeout):
                self._client.drop_collection(self.collection_name, timeout=self.timeout)
            self._dim = None
            self._state = _NO_REDUCTION

    def close(self) -> None:
        """Close the client connection."""
        self._client.close()
