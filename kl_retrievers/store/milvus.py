"""``MilvusKLStore``: the :class:`~kl_retrievers.store.GaussianStore` interface served by Milvus.

The sibling of :class:`~kl_retrievers.store.faiss.KLStore` for corpora that outgrow one process:
the same public methods (checked the same way), the same reduction of ``-KL`` to L2, a Milvus
collection instead of a table and a FAISS index.  Each document is stored as one Milvus row: a
``VARCHAR`` primary key ``id``, its ``text``, a ``JSON`` ``metadata`` field, an ``INT64`` ``added``
(when it was added, for the order of tied scores; collections created before 2026-12-05 have none) and
a ``FLOAT_VECTOR`` holding the inner-product rewrite ``d~`` of its Gaussian (METHOD.md):

* ``metric="L2"`` (the default for HNSW and IVF): the MIPS -> L2 reduction, the very code :class:`KLStore` uses
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
* ``metric="IP"`` (the default for a new flat collection): ``d~`` searched by inner product (no norm bound), of
  the means centred on the mean of the first documents' means (``index_centre``, kept by later writers), as
  ``KLStore``'s flat index centres them: ``-KL`` does not change, and a common offset of the means no longer
  swamps the float32 inner products (means ``30 + 0.01 N(0, 1)``: recall@10 0.215 uncentred).  Collections of
  format version 3; an inner-product collection of an earlier format keeps its uncentred rows.  With HNSW or IVF
  it finds almost none of the true neighbours (``benchmarks/milvus.py``), which is why the L2 reduction is their
  default.  A client attaching to a collection without ``metric`` adopts the collection's.

Milvus returns a candidate pool (``max(rescore_pool, rescore_factor * k)``) with the stored
vectors; the winners' texts and metadata are fetched with their vectors, and a query whose winner
changed or vanished in between (a concurrent writer) is searched again with texts returned by the
search itself, so each hit is one stored version of its document; the Gaussians are recovered
from the float32 ``d~`` (``var = -1 / (2 d~_var)``, ``mu = d~_mu * var``: variances within about 1e-7 relative,
means within about 1e-7 relative or, in a centred collection, ``1e-7 * |mu - centre|``) and re-scored
in float64: a reported score is the ``-KL(Q || D)`` (query constant included) of the query and the Gaussian ``D``
recovered from the stored row, **higher is better**.  That ``D`` is not ``KLStore``'s float32 copy of the
document, so scores differ from ``KLStore``'s by the two roundings (docs/milvus.md, *Scores*).

``index_type="flat"`` ranks every matching row by its float32 score (on means centred on the first documents'
mean, either metric) and re-scores the pool in float64.  With ``prove_flat=True`` it is exact for those
Gaussians, as ``KLStore``'s flat index is, by the same core: :func:`~kl_retrievers.gaussian.refine_top_k` (a pool is
kept only where its witness, the best float32 score left out, plus a bound on the float32 error of any row that could
beat the ``k``-th, stays below the ``k``-th float64 score; else wider pools, re-scoring only the rows the bound cannot
rule out; else every matching row scored in float64 when at most ``max(k, exact_threshold)`` match, above that a
warning and the best rows re-scored), with Milvus' flat search as its candidates and Milvus' own bound
(:func:`_flat_error_bound`: from the query and the first pool's ``k``-th score alone, as no statistics of the
collection's rows are at hand).  When HNSW / IVF return fewer than ``k`` hits (a
selective filter) and at most ``exact_threshold`` rows match, every matching row is scored exactly.  docs/milvus.md,
*Known differences and limits*, lists what still differs from ``KLStore``.

Several writers: every row of the collection must be reduced with the same ``M`` and ``o``, or the
L2 ranking (and so the candidate pool) is wrong.  Milvus has no transactions and no atomic
compare-and-set on collection properties, so a writer (any :meth:`MilvusKLStore.add`) does this:

1. it re-reads the stored ``M``, ``o`` and version before writing and adopts them (a raise by
   another process is never overridden by a stale copy);
2. if it needs a larger ``M``, it stores the new ``M`` with version + 1 and a *rewrite pending* mark
   **before** changing any row, reads the properties back and starts over if another writer's
   value is there instead (write-then-verify: the closest Milvus allows to compare-and-set);
3. it rewrites every row under the stored ``M`` (each from its recovered Gaussian) and reads the stored
   publication again: where any other publication replaced the one it followed (the same version, as when two
   writers both read their own back in step 2, or a later one), it adopts the stored one and rewrites every row
   again under it, its mark of step 5 held all along, until the publication it followed is still the stored one.
   Then it marks the publication it followed done under a separate property key and drops its mark; where that
   was an adopted one, the ``add`` starts over from step 1 for its own rows, else it inserts them;
4. it re-reads ``M`` and ``o`` after inserting; if they changed meanwhile it starts over (rewriting
   its own rows, or every row when it had rewritten others' rows);
5. a row rewrite reads pages and writes them back later, which would undo another client's upsert or
   delete made in between: before reading any row it stores a new rewrite generation and a mark of its own
   (updated after every page, dropped at the end); every ``add`` and ``delete`` waits while a mark is
   there, and reads the generation and marks again after writing: if a rewrite may have overlapped its
   write, it waits for it to end (as long as it progresses) and writes (or deletes) again.  A mark without
   progress for :data:`_REWRITE_STALL_S` is an abandoned rewrite: dropped; one read back unchanged after the drop
   (a server that accepts the drop without applying it) is emptied (an empty mark counts as none), and a rewrite
   empties its own before dropping it.  :data:`_REWRITE_WAIT_S` without progress of any mark then raises
   ``RuntimeError``: the limit applies to a mark that could be neither dropped nor emptied.

Guarantee: once every concurrent ``add`` has returned, every row is reduced with the stored ``M``
and ``o``, so rankings are exact (flat) or as good as a single writer's (HNSW / IVF).  While adds
that raise ``M`` overlap, a search can briefly see rows under two bounds (a transient ranking
error, never a wrong score: scores are always re-computed exactly; a ``prove_flat`` search that sees a new ``M``
stored during its search, a pending rewrite, or a row rewrite in progress, goes to its float64 fallback instead).
A writer killed after storing
a raised ``M`` leaves the rewrite pending: the next ``add`` (or :meth:`MilvusKLStore.repair`) by any
process finishes it.  A write is not undone by a concurrent row rewrite (step 5), unless that rewrite
stalls longer than :data:`_REWRITE_STALL_S`.  Concurrent adds that raise ``M`` may rewrite the collection
more than once;
a re-inserted row of an ``add`` that had to start over can bring back a row another process
deleted in that window.  Collections written by the previous release (no offset, no version) are
read as ``o = 0``, version 0; this release stores format version 2, which older releases refuse to
write to (they do not follow this protocol), and version 3 for an inner-product collection it creates (its rows are
centred), which releases before it refuse to open (they would add uncentred rows to it).

The centre of an inner-product collection is chosen by its first ``add`` and stored before any row is written
(write-then-verify, as ``M``); an ``add`` that stored it reads it back after writing its rows and writes them again
under the stored one where another writer's first ``add`` replaced it meanwhile (not covered: a replacement stored
after that read).

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

import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from kl_retrievers._checks import check_bool
from kl_retrievers._encoding import progress_bar
from kl_retrievers._errors import KLRetrieversError
from kl_retrievers._io import library_version
from kl_retrievers._score import check_score, check_score_fields
from kl_retrievers.filters import (
    ALLOWED_OPERATORS,
    OPERATOR_ALIASES,
    MetadataFilter,
    _check_depth,
    _check_values,
    _stored_form_of_filter_values,
    compile_filter,
    stored_form,
)
from kl_retrievers.filters import _unknown as _filters_unknown
from kl_retrievers.gaussian import (
    FLOAT32_UNIT_ROUNDOFF,
    NORM_BOUND_RTOL,
    SCORE_DIRECTION,
    SCORE_NAME,
    Gaussians,
    centre_document_vectors,
    document_gaussians_from_vectors,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
    means_centre,
    neg_kl,
    neg_kl_rows,
    reduce_document_vectors,
    reduce_query_vectors,
    reduction_norm_bound,
    reduction_offset,
    refine_top_k,
    shift_document_vectors,
    worth_centring,
)
from kl_retrievers.runs import tie_ranks
from kl_retrievers.store._base import (
    INDEX_TYPES,
    DeleteReport,
    EncoderLike,
    GaussianStore,
    IndexType,
    SearchResult,
    StoredDocument,
    _check_store_args,
    _check_utf8,
    _identity_encoder,
    _NewDocuments,
    _refuse_model_name,
)
from kl_retrievers.store._engines import MAX_NORM_BOUND
from kl_retrievers.store._format import (
    TOKENIZER_FIELD,
    config_differences,
    encoder_backbone,
    encoder_tokenizer,
    encoder_weights,
    encoding_differences,
    warn_if_other_weights,
)
from kl_retrievers.store.faiss import _encoder_record, _write_proceeds

logger = logging.getLogger(__name__)

__all__ = [
    "MilvusKLStore",
    "MilvusConnectionError",
    "to_milvus_expr",
    "INDEX_TYPES",
    "METRICS",
    "IndexType",
    "MilvusCompression",
    "MilvusMetric",
]

#: Milvus metrics a store may search with (:class:`MilvusKLStore`'s ``metric``).
MilvusMetric = Literal["L2", "IP"]
#: The values of :data:`MilvusMetric`, which the runtime checks read.
METRICS: tuple[MilvusMetric, ...] = get_args(MilvusMetric)
#: Codes of a compressed Milvus index (``None``: uncompressed): ``HNSW_SQ`` / ``IVF_SQ8``.
MilvusCompression = Literal["sq8"]
COMPRESSIONS: tuple[MilvusCompression | None, ...] = (None, *get_args(MilvusCompression))
#: ``(index_type, compression)`` -> the Milvus index built for it (and read back when attaching).
_MILVUS_INDEXES: dict[tuple[str, str | None], str] = {
    ("flat", None): "FLAT",
    ("hnsw", None): "HNSW",
    ("hnsw", "sq8"): "HNSW_SQ",
    ("ivf", None): "IVF_FLAT",
    ("ivf", "sq8"): "IVF_SQ8",
}
#: Longest id (UTF-8 bytes: Milvus' VARCHAR ``max_length`` counts bytes) the collection's primary key holds.
MAX_ID_LENGTH = 512
#: Largest ``limit`` (top-k) Milvus accepts for one search.
MAX_TOPK = 16384
_FORMAT_NAME = "kl-retrievers/milvus"
#: 2: the first coordinate is shifted by ``index_offset``; ``M`` carries a version (1 had neither). Written for every
#: collection but a centred inner-product one (:data:`_FORMAT_VERSION`), so that releases reading version 2 at most
#: keep reading (and writing) them.
_BASE_FORMAT_VERSION = 2
#: 3 (the newest this release reads): a ``metric="IP"`` collection whose rows hold ``d~`` of the means centred on
#: ``index_centre`` (chosen by its first ``add``, as ``KLStore``'s flat index does). Releases that read version 2 at
#: most refuse it: they would add uncentred rows to it. An inner-product collection of an earlier version keeps
#: uncentred rows (``index_centre`` stays null).
_FORMAT_VERSION = 3
_CONFIG_KEY = "kl_retrievers.config"
#: Property key of the last finished row rewrite (``{"version", "writer"}`` of the publication it served).
_REWRITE_DONE_KEY = "kl_retrievers.rewrite_done"
#: Property key of the generation of row rewrites: a new random token stored by every rewrite before it reads a row.
_REWRITE_GEN_KEY = "kl_retrievers.rewrite_gen"
#: Prefix of the property keys marking a row rewrite in progress (one key per rewrite, dropped when it ends; its
#: value, the rows rewritten so far, changes after every page).
_REWRITING_PREFIX = "kl_retrievers.rewriting."
#: Seconds a writer waits for other writers' row rewrites while none of them makes progress before it raises
#: (a rewrite that keeps progressing is waited for; one stalled for :data:`_REWRITE_STALL_S` is dropped, or emptied
#: where the drop is not applied, first: the limit applies to a mark that could be neither).
_REWRITE_WAIT_S = 600.0
#: Seconds without progress after which a rewrite mark counts as abandoned (its writer died) and is dropped.
_REWRITE_STALL_S = 120.0
#: How often one ``add`` starts over after a concurrent writer changed ``M`` before it gives up.
_MAX_SYNC_ATTEMPTS = 20
_EXTRA = "pip install 'kl-retrievers[milvus]'"
#: Ids per ``id in [...]`` expression (fetches and deletes are split into requests of this many).
_ID_BATCH = 1000
#: On Milvus Lite, an ``$in`` / ``$nin`` with more values than this is resolved to the matching ids by the
#: store (one scan of the rows holding the key) instead of a chain of ``==`` that Milvus Lite evaluates
#: row by row, parsing the row's JSON once per value (5,000 values on 5,000 rows: about a minute per search).
#: Both costs grow with the rows; the scan wins from about 100 values (measured on 20,000 rows).
_IN_LOCAL_MIN = 128
#: A batch whose largest norm exceeds this many times the bound ``M`` it finds (or, for the first
#: documents, the batch's median norm) is logged: ``M`` then dwarfs the other documents' norms and
#: float32 L2 can no longer rank them (docs/milvus.md, *Known differences and limits*).
_NORM_JUMP_WARN = 1e3
#: :meth:`MilvusKLStore.repair` lowers ``M`` when it exceeds ``norm_headroom * max ||d^||`` by this factor.
_SHRINK_FACTOR = 2.0
#: Nullable INT64 field of collections created since 2026-12-05: when the row was (last) added, for the order of
#: exactly tied scores (the later-added first, as ``KLStore``). Rows without it (collections created earlier,
#: rows an earlier release wrote) rank after those with it, greatest id first.
_ADDED_FIELD = "added"
#: Config field of the SHA-256 of the documents' tokenizer (a KLStore record's ``tokenizer_identity_sha256``), beside
#: ``encoder_weights_sha256``; ``encoder_config`` holds their encoder's config (a KLStore record's ``config``).
_TOKENIZER_KEY = "encoder_" + TOKENIZER_FIELD
#: The defaults of the index build arguments: a collection built with others adopts its own without a warning.
_BUILD_DEFAULTS = {"hnsw_m": 32, "ef_construction": 80, "nlist": 1024}
#: The constructor's defaults of ``(index_type, compression)``: a collection with another index adopts its own silently.
_INDEX_DEFAULTS = ("hnsw", None)
_added_lock = threading.Lock()
_last_added = 0
#: The rewrite marks of the row rewrites running in this thread: never waited for by a write made from inside one (a
#: callback or hook would wait for itself), as if absent.
_own_rewrites = threading.local()


def _own_marks() -> set[str]:
    marks: set[str] | None = getattr(_own_rewrites, "marks", None)
    if marks is None:
        marks = _own_rewrites.marks = set()
    return marks


def _next_added(n: int) -> list[int]:
    """``n`` increasing insertion stamps, each above every stamp this process gave before.

    The stamps are nanoseconds of the wall clock, so writers in several processes order their documents
    by when each was added (as far as their clocks agree); within a process they never repeat or go back.
    """
    global _last_added
    with _added_lock:
        start = max(time.time_ns(), _last_added + 1)
        _last_added = start + n - 1
    return list(range(start, start + n))


class MilvusConnectionError(KLRetrieversError, ConnectionError):
    """Milvus could not be reached (or Milvus Lite could not start) within the timeout."""


class _ClosedClient:
    """The client of a closed :class:`MilvusKLStore`: any use raises a ``RuntimeError`` saying the store is closed
    (rather than pymilvus' ``should create connection first``, or a call on a given client the caller closed since).
    """

    def __init__(self, store: str) -> None:
        self._store = store

    def error(self) -> RuntimeError:
        """The error any use of the closed store raises."""
        return RuntimeError(f"{self._store} is closed (close() or the end of its with block); open a new store")

    def __getattr__(self, name: str) -> Any:
        raise self.error()


#: Milvus Lite files this process opened through a MilvusKLStore -> how many open stores use each (see close()).
_lite_users: dict[str, int] = {}
#: Of those, the files Milvus Lite already served when the first of these stores opened them (another client of the
#: process, e.g. the caller's ``MilvusClient``, started the server): their last store leaves the server running.
_lite_borrowed: set[str] = set()
_lite_lock = threading.Lock()
#: The lock around the collection property alters and drops of every Milvus Lite store of this process (Milvus Lite's
#: are not thread-safe; one lock for all files: a store given a client does not know its file, and they are rare).
_lite_properties_lock = threading.RLock()  # re-entered by a write from a hook around a property write


def _lite_file_locked(path: str) -> bool:
    """Whether another process holds the lock of the Milvus Lite data file ``path`` (``False`` where unknown).

    Milvus Lite locks ``<path>/LOCK`` (``flock``) for as long as a process serves the file.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: not known
        return False
    lock = os.path.join(os.path.abspath(path), "LOCK")
    if not os.path.exists(lock):
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _lite_servers() -> tuple[str, ...]:
    """The Milvus Lite files (absolute paths) this process serves now (none where milvus-lite does not tell)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # pragma: no cover - without milvus-lite (or another layout)
        return ()
    servers = getattr(server_manager_instance, "_servers", None)  # path -> (server, db, port)
    return tuple(servers) if isinstance(servers, dict) else ()


def _release_frames(exc: BaseException) -> None:
    """Drop the tracebacks of a swallowed exception and of its causes (``__cause__``, followed to its end).

    pymilvus re-raises its errors as ``raise e from e`` (an exception that is its own cause) or wraps a gRPC error
    that grpc's interceptor frames keep in a local variable of their own traceback: either way the exception sits in
    a reference cycle, and its traceback holds the frame of every caller up the stack, ``self`` of this store's
    methods among them, so a store that had handled one (a dropped collection, say) stayed alive until the cyclic
    garbage collector ran. Called where the store handles the error and goes on, never before a re-raise (the
    traceback is what the caller reads). ``__context__`` is left alone: in an ``except`` or ``finally`` block it can
    be another error still on its way up.
    """
    error: BaseException | None = exc
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__


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


def _id_filter(ids: Sequence[str]) -> str:
    r"""``id in [...]`` with every id as an escaped string literal (quotes, backslashes, newlines included).

    ``MilvusClient.get`` / ``delete(ids=...)`` paste ids into ``['...']`` unescaped, so an id such as
    ``O'Brien`` or ``c\d`` broke the expression or matched another row; Milvus Lite has no
    ``filter_params`` templates, so the ids are escaped here.

    Examples:
        >>> print(_id_filter(["O'Brien", 'c\\d']))
        id in ["O'Brien", "c\\d"]
    """
    return "id in [" + ", ".join(_string_literal(i) for i in ids) + "]"


def _check_sendable_ids(ids: Sequence[str], method: str) -> None:
    """Refuse, as ``add`` refuses it (:func:`~kl_retrievers.store._base._check_utf8`), an id that cannot be sent to
    Milvus: one holding a lone surrogate, which UTF-8 cannot encode (pymilvus raised a bare ``MilvusException``).

    Examples:
        >>> _check_sendable_ids(["a", "b\\udce9"], "delete")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: delete: id holds a lone surrogate '\\udce9' at character 1, which cannot be saved as UTF-8; ...
    """
    for doc_id in ids:
        _check_utf8(doc_id, f"{method}: id")


def _surrogate_at(text: str) -> int | None:
    """Where ``text`` holds its first lone surrogate (a code point U+D800 to U+DFFF), else ``None``.

    UTF-8 cannot encode such a string, so no stored value or key holds one (``add`` refuses them), and Milvus cannot be
    sent one (pymilvus raised a bare ``MilvusException``).

    Examples:
        >>> _surrogate_at("caf\\udce9"), _surrogate_at("café")
        (3, None)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return int(exc.start)
    return None


#: The first code point after the surrogates (U+D800 to U+DFFF), which no stored string holds.
_AFTER_SURROGATES = "\ue000"


def _literal(value: Any, where: str) -> str | None:
    """The Milvus literal of a filter value; ``None`` for a string holding a lone surrogate, which no stored value
    equals (as in ``KLStore``, where it matches nothing): the caller decides what that means for its operator.

    Raises:
        ValueError: A value Milvus cannot compare (not a str, int, float or bool), or a number that is not finite.
    """
    given = value
    value = stored_form(value)  # a date compares with the ISO string the store keeps
    if isinstance(value, str) and _surrogate_at(value) is not None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise ValueError(f"{where}: Milvus filters need finite numbers; got {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _string_literal(value)
    if isinstance(given, (set, frozenset)):  # as kl_retrievers.filters refuses it, not "got list"
        raise ValueError(
            f"{where}: the Milvus backend can filter on str, int, float or bool values; got the set {given!r}, "
            'which has no order to compare as a value: for "one of" write a list or {"$in": [...]} (a set is '
            "accepted as the values of $in / $nin only)"
        )
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
    return _filters_unknown(op)  # KLStore's message: the allowed operators and the aliases ($neq)


def _values(op: str, value: Any) -> list[Any]:
    if isinstance(value, np.ndarray) and op in ("$in", "$nin"):
        value = value.tolist()  # as KLStore takes an array of values (a 0-d array holds no list: refused)
    if not isinstance(value, (list, tuple, AbstractSet)):  # a set or a set-like view (dict.keys()): its elements
        raise ValueError(f"filter operator {op!r} needs a list of values; got {type(value).__name__}")
    return list(value)


def _join(word: str, parts: list[str], empty: str) -> str:
    """``parts`` joined by ``and`` / ``or`` in parentheses (``empty`` when there are none, a lone part as it is)."""
    if not parts:
        return empty
    return parts[0] if len(parts) == 1 else "(" + f" {word} ".join(parts) + ")"


#: Resolves ``{key: {"$in": values}}`` to an equivalent expression (``None``: the ``==`` chain); see
#: :meth:`MilvusKLStore._ids_in`.
_InHook = Callable[[str, list[Any]], "str | None"]


def _field_expr(ref: str, op: str, value: Any, where: str, key: str = "", hook: _InHook | None = None) -> str:
    """One operator applied to the field ``ref`` (the metadata key ``key``)."""
    op = OPERATOR_ALIASES.get(op, op)  # $neq: langchain-community FAISS's spelling of $ne
    if op == "$eq":
        literal = _literal(value, where)
        return _FALSE if literal is None else _present(ref, f"{ref} == {literal}")
    if op == "$ne":
        return f"(not {_field_expr(ref, '$eq', value, where)})"
    if op in ("$in", "$nin"):
        values = _values(op, value)
        if not values:
            return _FALSE if op == "$in" else _TRUE
        checked = [(v, _literal(v, where)) for v in values]  # checked whichever form is sent
        # a string holding a lone surrogate equals no stored value: left out (KLStore's "matches nothing")
        values = [v for v, lit in checked if lit is not None]
        literals = [lit for _, lit in checked if lit is not None]
        if not literals:
            return _FALSE if op == "$in" else _TRUE
        expr = hook(key, values) if hook is not None and len(values) > _IN_LOCAL_MIN else None
        if expr is None:
            expr = _present(ref, "(" + " or ".join(f"{ref} == {lit}" for lit in literals) + ")")
        return expr if op == "$in" else f"(not {expr})"
    if op in _COMPARE:
        if isinstance(value, bool):
            raise ValueError(f"{where}: {op} needs a number or a string; got a bool")
        literal = _literal(value, where)
        if literal is None:  # text.encode fails: an equivalent bound Milvus can be sent (_order_bound)
            return _present(ref, _order_bound(ref, op, stored_form(value)))
        return _present(ref, f"{ref} {_COMPARE[op]} {literal}")
    if op == "$not":
        return f"(not {_condition_expr(ref, value, where, key, hook)})"
    raise _unknown(op)


def _order_bound(ref: str, op: str, text: str) -> str:
    """``ref op text`` for a string ``text`` holding a lone surrogate, as a comparison with a string Milvus can be sent.

    No stored string holds a surrogate, and strings compare by code point (Python, as ``KLStore``) or by UTF-8 bytes
    (Milvus: the same order for strings without surrogates). With ``p`` the part of ``text`` before its first
    surrogate, a stored string ``v`` is below ``text`` exactly when it is below ``p + "\\ue000"`` (the first code point
    after the surrogates), and never equal to it: ``$lt`` and ``$lte`` become ``< p + "\\ue000"``, ``$gt`` and ``$gte``
    ``>= p + "\\ue000"``.

    Examples:
        >>> _order_bound('m["c"]', "$gt", "ab\\udce9z")
        'm["c"] >= "ab\\ue000"'
    """
    at = _surrogate_at(text)
    assert at is not None
    bound = _string_literal(text[:at] + _AFTER_SURROGATES)
    return f"{ref} {'<' if op in ('$lt', '$lte') else '>='} {bound}"


def _condition_expr(ref: str, cond: Any, where: str, key: str = "", hook: _InHook | None = None) -> str:
    """The right-hand side of ``{"field": cond}``: operators, a list (one of) or a value (equal to).

    Only a list (or a numpy array, read as ``cond.tolist()``) means "one of"; a tuple is a value (the
    list a stored tuple becomes), which Milvus cannot compare, so it raises as ``{"$eq": [1, 2]}`` does.
    """
    ops = [k for k in cond if isinstance(k, str) and k.startswith("$")] if isinstance(cond, Mapping) else []
    if ops and len(ops) < len(cond):
        plain = [k for k in cond if k not in ops]
        raise ValueError(f"a field condition cannot mix operators and plain keys; got plain keys {plain}")
    if ops:
        return _join("and", [_field_expr(ref, op, cond[op], where, key, hook) for op in ops], _TRUE)
    if isinstance(cond, np.ndarray):
        cond = cond.tolist()  # as in kl_retrievers.filters: a 1-D array is a list, a 0-d one its value
    if isinstance(cond, list):
        return _field_expr(ref, "$in", cond, where, key, hook)
    return _field_expr(ref, "$eq", cond, where, key, hook)


def _entry_expr(key: Any, value: Any, field: str, hook: _InHook | None = None) -> str:
    """One entry of a filter dict: ``$and`` / ``$or`` over sub-filters, ``$not`` of one, or a field's condition."""
    if not isinstance(key, str):
        raise ValueError(f"filter keys must be strings; got {key!r}")
    if key in ("$and", "$or"):
        subs = [_expr(sub, field, hook) for sub in _values(key, value)]
        return _join(key[1:], subs, _TRUE if key == "$and" else _FALSE)
    if key == "$not":
        return f"(not {_expr(value, field, hook)})"
    if key.startswith("$"):
        raise _unknown(key)
    _check_values(key, value)  # as KLStore: a set or another iterable that is no value, named before any conversion
    if _surrogate_at(key) is not None:
        # no stored metadata holds such a key (add refuses it) and Milvus cannot be sent one: the condition is checked
        # as any other (on a stand-in key), then judged, as KLStore judges it, on a missing key
        _condition_expr(_field_ref(field, "key"), value, f"filter on {key!r}", "key")
        predicate = compile_filter({key: value})
        assert predicate is not None
        return _TRUE if predicate({}) else _FALSE
    return _condition_expr(_field_ref(field, key), value, f"filter on {key!r}", key, hook)


def _expr(spec: Any, field: str, hook: _InHook | None = None) -> str:
    """A filter dict: the AND of its entries."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a filter must be a dict; got {type(spec).__name__}")
    return _join("and", [_entry_expr(key, value, field, hook) for key, value in spec.items()], _TRUE)


def to_milvus_expr(filter: MetadataFilter, field: str = "metadata") -> str:
    """Translate a dict filter (:mod:`kl_retrievers.filters` syntax) into a Milvus expression.

    Every comparison is guarded with ``exists``, so a document without the field never
    satisfies ``$eq``, ``$in`` or a range and always satisfies ``$ne``, ``$nin`` and ``$not``,
    exactly as in :class:`~kl_retrievers.store.faiss.KLStore`.  A comparison between incompatible types
    (``"a" > 1``) is false on a Milvus server (by its source), as in ``KLStore``, but unknown on Milvus Lite, where this
    expression under ``$not`` would drop such a document: :class:`MilvusKLStore` on Milvus Lite evaluates
    a filter negating an order comparison itself (``MilvusKLStore._ids_matching``), not with this expression.

    Args:
        filter: The filter dict.  Callables cannot run inside Milvus and raise ``ValueError``.
        field: The JSON field holding the metadata.

    Returns:
        A Milvus boolean expression.

    Raises:
        ValueError: An unknown operator, a callable, a value type Milvus cannot compare, or dicts and lists
            nested more than :data:`~kl_retrievers.filters.MAX_FILTER_DEPTH` levels deep (as in ``KLStore``).

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
    _check_depth(filter)  # before anything here recurses over the filter (_expr, _has_long_in, _has_negated_order)
    return _expr(filter, field)


def _has_long_in(spec: Any) -> bool:
    """Whether a (checked) filter dict holds a collection of more than :data:`_IN_LOCAL_MIN` values anywhere
    (an ``$in`` / ``$nin`` list, a list value, or a long ``$and`` / ``$or``: a false alarm costs nothing)."""
    if isinstance(spec, Mapping):
        spec = list(spec.values())
    elif isinstance(spec, np.ndarray):
        spec = spec.tolist()
    if not isinstance(spec, (list, tuple, AbstractSet)):
        return False
    return len(spec) > _IN_LOCAL_MIN or any(
        _has_long_in(v) for v in spec if isinstance(v, (Mapping, list, tuple, AbstractSet, np.ndarray))
    )


def _has_negated_order(spec: Any, negated: bool = False) -> bool:
    """Whether a (checked) filter dict holds an order comparison (``$gt``, ``$gte``, ``$lt``, ``$lte``) under a
    ``$not`` (the logical one or a field's), at any depth (a false alarm costs a scan on Milvus Lite, nothing more).

    Milvus Lite evaluates filters in Kleene three-valued logic: an order comparison between incompatible
    types (``"abc" > 2020``, a list or dict compared with a number) is *unknown*, and so is its negation,
    where :mod:`kl_retrievers.filters` calls the comparison false and its negation true.  Only a negation
    can tell the two apart (``and`` / ``or`` of an unknown and the top-level collapse to false agree with
    false), and ``==`` is never unknown for a present key; so such a filter is the one evaluated by the
    store (:meth:`MilvusKLStore._ids_matching`).

    Examples:
        >>> _has_negated_order({"$not": {"year": {"$gt": 3}}}), _has_negated_order({"year": {"$not": {"$lt": 3}}})
        (True, True)
        >>> _has_negated_order({"year": {"$gt": 3}}), _has_negated_order({"$not": {"year": {"$in": [1, "a"]}}})
        (False, False)
    """
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if negated and key in _COMPARE:
                return True
            if _has_negated_order(value, negated or key == "$not"):
                return True
    elif isinstance(spec, (list, tuple)):
        return any(_has_negated_order(v, negated) for v in spec)
    return False


def _is_lite_client(client: Any, timeout: float | None = None) -> bool:
    """Whether ``client`` (a ``pymilvus.MilvusClient``) is connected to Milvus Lite.

    A client made with ``MilvusClient("./x.db")`` keeps no trace of the file: pymilvus hands the
    path to ``milvus_lite``, which serves it on a local port, and the client holds that port's URL.
    Milvus Lite names itself in the server version (``"milvus_lite-3.2.2"``; a server answers
    ``"v2.5.4"`` and the like), so that is asked once (within ``timeout`` seconds). A client that
    cannot answer (an object standing in for a client) counts as a server, as every client passed did before.
    """
    try:
        version = client.get_server_version(timeout=timeout)
    except Exception as exc:  # any failure: treated as a server, as before
        logger.debug("could not read the Milvus server version of %r; treated as a server", client, exc_info=True)
        _release_frames(exc)
        return False
    return isinstance(version, str) and version.lower().startswith("milvus_lite")


@dataclass(frozen=True)
class _LiteFilter:
    """A checked dict filter resolved to ids at search time (Milvus Lite): its long ``$in`` lists, or all of it
    when it negates an order comparison (:func:`_has_negated_order`)."""

    spec: Any


# ------------------------------------------------------------------ exact flat search
# A prove_flat search is gaussian.refine_top_k's (the one exact top-k core: pools proven by the float32 error bound,
# wider pools, float64 over every row) with Milvus' flat search as its candidates. What is Milvus' own is the bound:
# no statistics of the collection's rows are at hand (KLStore's float32_score_bound needs the largest norm of each
# block of every row), so _flat_error_bound bounds the error of every row that could beat the k-th score from the
# query and that score alone, and covers what Milvus computes (an L2 distance of reduced rows, the stored first
# coordinate, the centring) against the float64 re-scoring of the recovered Gaussians.


class _PoolRows:
    """The rows the candidate pools of one search returned, numbered in the order first seen (the row numbers of
    :func:`~kl_retrievers.gaussian.refine_top_k`), with the Gaussians recovered from their stored vectors.

    A row that comes back again keeps the number (and the stored version) it was first seen with.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.rows: list[dict[str, Any]] = []
        self._numbers: dict[str, int] = {}
        self._parts: list[Gaussians] = []
        self._all: Gaussians | None = None

    def numbers(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The numbers of ``rows`` (each with its ``"id"`` and ``"vector"``), numbering the new ones."""
        new: list[dict[str, Any]] = []
        for r in rows:
            if str(r["id"]) not in self._numbers:
                self._numbers[str(r["id"])] = len(self.rows) + len(new)
                new.append(dict(r))
        if new:
            self._parts.append(document_gaussians_from_vectors([r["vector"] for r in new], self.dim))
            self.rows += new
            self._all = None
        return np.asarray([self._numbers[str(r["id"])] for r in rows], dtype=np.int64)

    def gaussians(self) -> Gaussians:
        """The recovered Gaussians of every row numbered so far, by number."""
        if self._all is None:
            means = [np.asarray(g.mean) for g in self._parts] or [np.zeros((0, self.dim))]
            variances = [np.asarray(g.var) for g in self._parts] or [np.ones((0, self.dim))]
            self._all = Gaussians(np.concatenate(means), np.concatenate(variances), validate=False)
        return self._all


def _ratio_bound(t: np.ndarray) -> np.ndarray:
    """An upper bound on the root ``x >= 1`` of ``x - 1 - log x = t`` (``t >= 0``): Newton's steps from above.

    ``f(x) = x - 1 - log x - t`` is convex and increasing for ``x > 1``, so Newton's iterates from a point above
    the root stay above it; the start ``2 (t + log 2) + 1`` is above it (``log x <= x / 2 + log 2 - 1``).

    Examples:
        >>> r = _ratio_bound(np.array([0.0, 1.0, 100.0]))
        >>> bool(np.all(r >= [1.0, 3.146, 105.66])), bool(np.all(r < [1.0 + 2e-9, 3.1462, 105.67]))
        (True, True)
    """
    x = 2.0 * (t + math.log(2.0)) + 1.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(60):
            step = (x - 1.0 - np.log(x) - t) / (1.0 - 1.0 / x)
            x = np.where(np.isfinite(step) & (step > 0), x - step, x)
    return x * (1.0 + 1e-9)  # the rounding of the last steps


def _flat_error_bound(
    queries: Gaussians, kl: np.ndarray, norm_bound: float | None = None, centre: np.ndarray | None = None
) -> np.ndarray:
    """Per query, a bound on how far Milvus' float32 score of a stored row, read as ``-KL``, can be from the row's
    float64 ``-KL`` (what the store reports), for every row whose float64 ``-KL`` to the query is ``-kl`` or more.

    Milvus compares the float32 query vector with the float32 row by a float32 inner product (``norm_bound`` None:
    ``metric="IP"``) or squared L2 distance of the reduced vectors (``M = norm_bound``); the store re-scores the
    Gaussian recovered from the row (its precisions and ``mu / var`` as stored, its first coordinate recomputed).
    With ``n`` terms, each float32 sum is off by at most ``gamma_(n+2)`` (rounding of the inputs included) times
    the sum of the terms' magnitudes (``sum_j |q~_j d~_j|``; for L2, ``(2 M)^2``). A row that scores ``-kl`` or
    more has ``sum_j (x_j - 1 - log x_j + (mu_q - mu_d)_j^2 / var_d) = 2 KL <= 2 kl`` (``x = var_q / var_d``; every
    term is >= 0), so in every dimension ``x`` lies below :func:`_ratio_bound` of ``2 kl`` and
    ``(|mu_q| + |mu_d|)^2 / var_d <= 8 mu_q^2 x / var_q + 2 (mu_q - mu_d)^2 / var_d``; summed over the dimensions,
    the ``2 kl`` is shared by them rather than spent in each (the proof is in the code): the magnitudes are bounded
    by the query and ``kl`` alone, whatever the stored rows (no statistics of the collection are needed). Means are
    those of the store's centred frame (``queries`` centred like the rows). An L2 collection's rows are centred from
    the ``d~`` of the means as given (:func:`centre_document_vectors`), whose float64 rounding follows the uncentred
    magnitudes: ``centre`` adds that term.

    Args:
        queries: float64 query Gaussians (centred), shape ``(n, k)``.
        kl: Per query, the ``KL`` of its ``k``-th candidate (``-score``; negative values count as 0).
        norm_bound: ``M`` of an L2 collection; ``None`` for inner product.
        centre: The centre an L2 collection's rows were centred on from their uncentred ``d~`` (``None``: none).

    Returns:
        float64, shape ``(n,)`` (``inf`` where ``kl`` is too large for a finite bound).

    Examples:
        >>> q = Gaussians(np.zeros((1, 4)), np.ones((1, 4)))
        >>> b = _flat_error_bound(q, np.array([0.5]))
        >>> bool(0 < b[0] < 1e-4)
        True
    """
    dims = np.asarray(queries.mean).shape[1]
    u = FLOAT32_UNIT_ROUNDOFF
    terms_n = 2 * dims + (2 if norm_bound is not None else 1) + 2  # + 2: the rounding of both inputs
    gamma = terms_n * u / (1.0 - terms_n * u) * (1.0 + 1e-6)
    magnitude, first, centred = _flat_magnitude_bound(queries, kl, centre)
    with np.errstate(over="ignore", invalid="ignore"):
        if norm_bound is None:
            bound = gamma * (magnitude + first) + first
        else:
            qnorm = np.linalg.norm(np.asarray(kl_query_vectors(queries), dtype=np.float64), axis=1)
            # (2 M)^2 (gamma + 2 u) of squared distance, times |q~| / (2 M); the recovered row: u |q~_j d~_j|
            bound = (2.0 * gamma + 8.0 * u) * float(norm_bound) * qnorm * (1.0 + 1e-6) + u * magnitude + first
        bound = bound + 1e-12 * magnitude + centred  # the float64 re-scoring, and the centring's rounding
    return np.where(np.isfinite(bound), bound, np.inf)


def _flat_magnitude_bound(
    queries: Gaussians, kl: np.ndarray, centre: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The terms of :func:`_flat_error_bound`, per query, for every row whose float64 ``-KL`` is ``-kl`` or more.

    Args:
        queries: float64 query Gaussians (centred), shape ``(n, k)``.
        kl: Per query, the ``KL`` of its ``k``-th candidate (``-score``; negative values count as 0).
        centre: The centre an L2 collection's rows were centred on from their uncentred ``d~`` (``None``: none).

    Returns:
        ``(magnitude, first, centred)``, float64, each of shape ``(n,)`` (``inf`` or ``nan`` where ``kl`` is too
        large for a finite bound): ``magnitude`` bounds ``sum_j |q~_j d~_j|`` of the row (as recovered) and the
        query vector; ``first``, how far the row's stored float32 first coordinate is from the recovered
        Gaussian's; ``centred``, the float64 rounding of centring the row on ``centre`` (0 without one).
    """
    mean = np.asarray(queries.mean, dtype=np.float64)
    var = np.asarray(queries.var, dtype=np.float64)
    dims = mean.shape[1]
    u = FLOAT32_UNIT_ROUNDOFF
    with np.errstate(over="ignore", invalid="ignore"):
        # Per dimension j of a row scoring -kl or more: x_j = var_q / var_d, s_j = x_j - 1 - log x_j >= 0 and
        # e_j = (mu_q - mu_d)^2 / var_d >= 0 with sum_j (s_j + e_j) = 2 KL <= t. Two bounds of each sum below, the
        # smaller kept: (a) every dimension alone: s_j, e_j <= t, x_j <= x_max, |log x_j| <= max(1 + t, log x_max);
        # (b) the budget t shared by the dimensions: max(1, x_j) - 1 and |log x_j| are both <= 2 s_j + sqrt(2 s_j),
        # since s >= (x - 1)^2 / (2 x) for x >= 1 (log x <= (x - 1/x) / 2) and, with y = -log x > 0,
        # s = e^-y - 1 + y >= y^2 / (2 (1 + y)) (its derivative 1 - e^-y >= 1 - 1/(1+y) >= (1 - 1/(1+y)^2) / 2);
        # either way v^2 <= 2 s (1 + v), so v <= s + sqrt(s^2 + 2 s) <= 2 s + sqrt(2 s). Summed, with Cauchy-Schwarz
        # (sum_j w_j sqrt(s_j) <= |w|_2 sqrt(t)): sum_j w_j max(1, x_j) <= sum w + 2 t max w + sqrt(2 t) |w|_2 for
        # weights w >= 0 (w = 1: sqrt(2 t dims)), and sum_j e_j <= t.
        t = 2.0 * np.maximum(np.asarray(kl, dtype=np.float64), 0.0)
        x_max = _ratio_bound(t)
        shared = np.sqrt(2.0 * t)

        def ratio_sum(w: np.ndarray) -> np.ndarray:  # sum_j w_j max(1, x_j) for weights w >= 0, shape (n, dims)
            total = w.sum(axis=1)
            return np.minimum(x_max * total, total + 2.0 * t * w.max(axis=1) + shared * np.linalg.norm(w, axis=1))

        log_x = np.minimum(dims * np.maximum(1.0 + t, np.log(x_max)), 2.0 * t + shared * math.sqrt(dims))
        log_var_d = np.abs(np.log(var)).sum(axis=1) + log_x  # bounds sum_j |log var_d|
        mu_q = ratio_sum(mean * mean / var)  # bounds sum_j mu_q^2 / var_d
        e = t  # bounds sum_j e_j ((a) gave dims * t)
        # sum_j |q~_j d~_j|: per dimension |log var_d| / 2 + x / 2 + (|mu_q| + |mu_d|)^2 / (2 var_d), the last at
        # most 4 mu_q^2 / var_d + e_j ((|mu_q| + |mu_d|)^2 <= 8 mu_q^2 + 2 (mu_q - mu_d)^2)
        magnitude = 0.5 * log_var_d + 0.5 * ratio_sum(np.ones_like(var)) + 4.0 * mu_q + e
        # the stored first coordinate against the recovered Gaussian's (float32 rounding of the row, ~3 u per
        # dimension of mu^2 / var and u per log var): |log var_d| / 2 + 2 mu_d^2 / var_d + 1 / 2 per dimension
        first = 1.02 * u * (0.5 * log_var_d + 4.0 * mu_q + 4.0 * e + 0.5 * dims)
        centred = np.zeros_like(magnitude)
        if centre is not None:  # float64 rounding of d0 + <c, b> + <c^2, a>, with mu = (mu - c) + c
            c2 = np.asarray(centre, dtype=np.float64) ** 2
            eps = 2.0 * (2 * dims + 3) * float(np.finfo(np.float64).eps)
            centred = eps * (0.5 * log_var_d + 16.0 * mu_q + 16.0 * e + 6.0 * ratio_sum(c2 / var))
    return magnitude, first, centred


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
    rewrite_gen: str | None = None  # token of the last row rewrite started (None: none yet, or an old collection)
    rewriting: tuple[tuple[str, str], ...] = ()  # (property key, progress) of each row rewrite marked in progress


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

    Documents whose scores tie exactly come back later-added first, as in
    :class:`~kl_retrievers.store.faiss.KLStore` (ids added as ``"b", "a", "c"``: ``c, a, b``; a document
    re-added under its id counts as added then), among the rows Milvus returns for re-scoring (with more
    exact ties than that pool holds, which of them come back is Milvus's choice). Milvus keeps no row
    order, so each row stores when it was added (an ``added`` field: nanoseconds of the writer's clock,
    increasing within a process; kept when the L2 reduction rewrites rows). Collections created before
    this field (2026-12-05) have no such record: there, and for rows an earlier release wrote, ties come
    back greatest id first (``trec_eval``'s order), after the stamped rows.

    Args:
        encoder: Optional encoder (``encode_queries`` / ``encode_documents``); needed to add or
            search by text.
        uri: A local file (``"./kl.db"``: Milvus Lite, in-process) or a server
            (``"http://host:19530"``).
        collection_name: The Milvus collection.
        dim: Gaussian dimension ``k``; inferred from the first :meth:`add` when ``None``.
        token: Milvus credentials (``"user:password"``) for a server with auth.
        index_type: ``"flat"`` (exact for the stored Gaussians: see the module docstring), ``"hnsw"`` or ``"ivf"``.
        metric: ``"L2"`` (MIPS -> L2 reduction) or ``"IP"``; ``None`` (default): an existing collection's
            metric, else ``"IP"`` for a new flat collection (exact) and ``"L2"`` for HNSW / IVF.
        compression: ``None`` or ``"sq8"`` (``HNSW_SQ`` / ``IVF_SQ8``).
        hnsw_m: HNSW graph degree ``M`` (at least 2).
        ef_construction: HNSW ``efConstruction``.
        ef_search: HNSW ``ef`` (raised to the candidate pool when smaller).
        nlist: IVF lists.
        nprobe: IVF lists probed per query.
        rescore_pool: Minimum candidates re-scored exactly per query.
        rescore_factor: The pool is ``max(rescore_pool, rescore_factor * k)`` (at most 16384).
        exact_threshold: When HNSW / IVF returns fewer than ``k`` hits for a query (a selective
            filter, or too few IVF lists probed) and at most this many rows match, every matching
            row is fetched and scored exactly, so all matching documents come back when fewer than
            ``k`` exist (as with ``KLStore``). With ``prove_flat``, a flat query whose candidates float32
            cannot prove to hold its top ``k`` scores every matching row in float64 when at most this many
            match (else a warning).
        prove_flat: Flat search only: keep a query's float32 candidate pool only where an error bound proves
            it holds the float64 top ``k``, else search again with wider pools
            (:func:`~kl_retrievers.gaussian.refine_top_k`), then score every matching row in float64. Off by
            default: a flat search then re-scores its centred pool in float64 without the proof (on ordinary data
            at dim 384 the proof holds for every pool and costs about nothing; where it does not, the wider
            searches and the scan do).
        norm_headroom: ``M = norm_headroom * max ||d~||`` for the L2 reduction (from 1 to 1e6).
        max_text_length: ``max_length`` of the ``text`` field; longer texts raise ``ValueError``.
        timeout: Seconds to wait for the server when connecting and for metadata calls.
        request_timeout: Seconds allowed for each data call (insert, search, get, delete,
            flush); ``None`` waits as long as the server needs.
        batch_size: Encoder batch size.
        insert_batch: Rows per insert request.
        show_progress_bar: Show bars while encoding and inserting.
        client: An existing ``pymilvus.MilvusClient`` to use instead of ``uri``; it stays the caller's:
            :meth:`close` leaves it open.

    A context manager: ``with MilvusKLStore(...) as store:`` calls :meth:`close` on leaving the block (an
    exception raised inside it propagates). Closing twice does nothing; using a closed store raises
    ``RuntimeError``.

    Raises:
        MilvusConnectionError: The server cannot be reached within ``timeout``.
        ValueError: Bad options, or an existing collection with another dimension or metric,
            or one not created by kl-retrievers (it is never overwritten).
        TypeError: ``show_progress_bar`` is not a bool (the string ``"no"`` is true).

    Examples:
        >>> import tempfile, os
        >>> store = MilvusKLStore(uri=os.path.join(tempfile.mkdtemp(), "kl.db"), dim=4)
        >>> len(store)
        0
        >>> store.close()
        >>> with MilvusKLStore(uri=os.path.join(tempfile.mkdtemp(), "kl.db"), dim=4) as store:
        ...     len(store)
        0
    """

    _dim: int | None  # the attached collection's state: see _forget
    _state: _Reduction
    _uid: str | None
    _identity: tuple[Any, str | None] | None
    _index_build: dict[str, Any] | None
    _ip_centred: bool

    def __init__(
        self,
        encoder: EncoderLike | None = None,
        *,
        uri: str = "./kl_retrievers.db",
        collection_name: str = "kl_retrievers",
        dim: int | None = None,
        token: str | None = None,
        index_type: IndexType = "hnsw",
        metric: MilvusMetric | None = None,
        compression: MilvusCompression | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
        nlist: int = 1024,
        nprobe: int = 32,
        rescore_pool: int = 100,
        rescore_factor: int = 10,
        exact_threshold: int = 20000,
        prove_flat: bool = False,
        norm_headroom: float = 1.1,
        max_text_length: int = 65535,
        timeout: float = 10.0,
        request_timeout: float | None = 300.0,
        batch_size: int = 32,
        insert_batch: int = 1000,
        show_progress_bar: bool = False,
        client: Any | None = None,
    ) -> None:
        _refuse_model_name(encoder, f"{type(self).__name__}(encoder={{}})")  # before anything is connected
        if metric is not None and metric not in METRICS:
            raise ValueError(
                f"metric must be one of {METRICS} or None (the collection's, else the index's); got {metric!r}"
            )
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
        # as KLStore (store.faiss._check_settings, same message): Milvus' HNSW takes M from 2 as well
        if hnsw_m < 2:
            raise ValueError(f"hnsw_m must be an integer >= 2 (neighbours per node of the HNSW graph); got {hnsw_m!r}")
        if (
            isinstance(exact_threshold, bool)
            or not isinstance(exact_threshold, (int, np.integer))
            or exact_threshold < 0
        ):
            raise ValueError(f"exact_threshold must be an integer >= 0; got {exact_threshold!r}")
        if not isinstance(prove_flat, bool):
            raise TypeError(f"prove_flat must be True or False; got {prove_flat!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive (seconds); got {timeout!r}")
        if request_timeout is not None and not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive (seconds) or None; got {request_timeout!r}")
        if not isinstance(collection_name, str) or not collection_name:
            raise ValueError(f"collection_name must be a non-empty string; got {collection_name!r}")
        check_bool(show_progress_bar, "show_progress_bar")  # bool("no") would be True
        if metric == "IP" and index_type != "flat":
            logger.warning(
                "metric='IP' with index_type=%r: graph and cluster indexes over the raw KL vectors find almost none "
                "of the true neighbours (recall@10 0.001 at 100k documents in benchmarks/milvus.py); use metric='L2', "
                "the MIPS -> L2 reduction",
                index_type,
            )
        self.encoder = encoder
        self._lite_path: str | None = None  # the Milvus Lite file this store opened (released by close())
        self._closed = False  # close() done: a second close does nothing
        self.uri = uri  # unused when a client is given (it is connected already)
        self._client_given = client is not None
        self._client_class = type(client).__name__  # for repr, also once closed
        self.collection_name = collection_name
        self.index_type = index_type
        self._metric_asked = metric  # None: the attached collection's metric, else the index's default
        # a flat index compares every row: inner products rank exactly; L2 over the reduction loses the documents
        # whose norm M dwarfs in float32 (variances spread widely), and graph / cluster indexes need the L2
        self.metric = metric if metric is not None else ("IP" if index_type == "flat" else "L2")
        self.compression = compression
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)
        self.rescore_pool = int(rescore_pool)
        self.rescore_factor = int(rescore_factor)
        self.exact_threshold = int(exact_threshold)
        self.prove_flat = prove_flat
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
        # waits for other writers' rewrites release the lock meanwhile (searches of this store go on)
        self._idle = threading.Condition(self._lock)
        # (collection uid, weights, backbone, encoder config as JSON, tokenizer) already warned about: once per record
        self._weights_warned: set[tuple[str | None, str, str | None, str, str | None]] = set()
        self._encoder_weights: str | None = None  # set by _forget, _create and _attach
        self._encoder_backbone: str | None = None  # the backbone SHA-256 recorded with it (same places)
        self._encoder_config: dict[str, Any] | None = None  # and the encoder config (same places)
        self._encoder_tokenizer: str | None = None  # and the tokenizer SHA-256 (same places)
        # (encoder, its tokenizer, the tokenizer's length, its SHA-256): what _records_own_model compares at every
        # add, computed again when one of the first three changed (tokenizer.add_tokens), not at every add
        self._own_tokenizer_of: tuple[Any, Any, int, str | None] | None = None
        # (collection uid, state version) at which an add last counted a collection whose record lacks the encoder
        # config, tokenizer or backbone (created before they were recorded): counted once per version (set by _forget)
        self._incomplete_counted: tuple[str | None, int] | None = None
        self._forget()  # no collection attached yet
        #: Milvus Lite (a local ``.db`` file, or a client connected to one): long ``$in`` / ``$nin`` lists are
        #: resolved to ids (:meth:`_ids_in`) and negated order comparisons evaluated here (:meth:`_ids_matching`).
        self._lite = _is_lite_client(client, self.timeout) if client is not None else str(uri).endswith(".db")
        #: The property key marking this client's row rewrites in progress (:data:`_REWRITING_PREFIX`).
        self._mark = _REWRITING_PREFIX + uuid.uuid4().hex
        self._client = client if client is not None else self._connect(uri, token)
        try:
            if self._client.has_collection(collection_name, timeout=self.timeout):
                self._attach(None if dim is None else int(dim))
            elif dim is not None:
                self._create(int(dim))
        except BaseException:
            if client is None:  # a refused attach keeps no Milvus Lite file locked (a given client is the caller's)
                self.close()
            raise

    # ------------------------------------------------------------ connection
    def _connect(self, uri: str, token: str | None) -> Any:
        pymilvus = _import_pymilvus()
        kwargs: dict[str, Any] = {"uri": uri, "timeout": self.timeout}
        if token:
            kwargs["token"] = token
        lite = None if not str(uri).endswith(".db") else os.path.abspath(uri)
        served = lite is not None and lite in _lite_servers()  # started before: by this process's stores or another
        try:
            client = pymilvus.MilvusClient(**kwargs)
        except Exception as exc:
            if lite is not None and _lite_file_locked(lite):
                raise MilvusConnectionError(
                    f"another process holds the Milvus Lite file {uri!r} (its LOCK); Milvus Lite allows one process "
                    "per file: close the store in the other process (MilvusKLStore.close() releases the file), or "
                    "use a Milvus server ('http://host:19530') for several writer processes"
                ) from exc
            raise MilvusConnectionError(
                f"could not connect to Milvus at {uri!r} within {self.timeout:g} s: {exc}. "
                "Check the URI (a local file such as './kl.db' starts Milvus Lite, which needs "
                f"{_EXTRA}; a server looks like 'http://host:19530')."
            ) from exc
        if lite is not None:
            with _lite_lock:
                if served and not _lite_users.get(lite):
                    _lite_borrowed.add(lite)  # another client of this process started it: never stopped here
                _lite_users[lite] = _lite_users.get(lite, 0) + 1
            self._lite_path = lite
        return client

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
        config = {
            "format": _FORMAT_NAME,
            "format_version": _FORMAT_VERSION if self._ip_centred else _BASE_FORMAT_VERSION,
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
            # the settings the index was built with (_create); absent in collections created before 2026-12-06, and
            # kept absent by later publications (a client's own arguments are not what an old index was built with)
            "index_build": self._index_build,
            "collection_uid": self._uid,
            "encoder": getattr(self._model, "name_or_path", None),
            # the weights the collection's documents were encoded with: the creator's encoder's, kept by every
            # later publication (compared when a client attaches, see _warn_if_other_weights)
            "encoder_weights_sha256": self._encoder_weights,
            # and the SHA-256 of the backbone under them (a delta model's identity does not cover its backbone)
            "encoder_backbone_sha256": self._encoder_backbone,
            # and, as a KLStore records them, that encoder's config and its tokenizer's SHA-256 (the same weights
            # give other encodings with another pooling, token budget, ... or vocabulary); both absent in
            # collections created before 2026-12-06
            "encoder_config": self._encoder_config,
            _TOKENIZER_KEY: self._encoder_tokenizer,
        }
        if self._index_build is None:
            del config["index_build"]
        return config

    @property
    def _model(self) -> Any:
        """The encoder whose identity the collection records and compares: :attr:`encoder`, or the Gaussian encoder
        of a wrapper such as :class:`kl_retrievers.langchain.KLEmbeddings` (:func:`_identity_encoder`), as a
        KLStore reads it."""
        return _identity_encoder(self.encoder)

    def _own_weights(self) -> str | None:
        """This client's encoder's weights identity (``encoder.weights_sha256``), else ``None``."""
        return encoder_weights(self._model)

    def _own_backbone(self) -> str | None:
        """The SHA-256 of the backbone this client's encoder says it was built on (its config), else ``None``."""
        return encoder_backbone(self._model)[0]

    def _own_config(self) -> dict[str, Any] | None:
        """This client's encoder's config as a KLStore records it (its ``to_dict()``, NaN and Infinity as ``None``),
        else ``None``; warns where it holds NaN or Infinity, as a KLStore's save does (the record is JSON)."""
        if self._model is None:
            return None
        record, found = _encoder_record(self._model)
        if found:  # the collection's config is standard JSON: the (informational) record says null
            logger.warning(
                "the encoder config holds NaN or Infinity at %s; recorded as null in Milvus collection %r",
                found,
                self.collection_name,
            )
        return record["config"]

    def _own_tokenizer(self, fresh: bool = False) -> str | None:
        """The SHA-256 of this client's encoder's tokenizer (:func:`~kl_retrievers.store._format.encoder_tokenizer`),
        else ``None``.

        Computed again when ``fresh`` (where a record is written) or when the encoder, its tokenizer object or the
        tokenizer's length changed (``tokenizer.add_tokens``); else the last one (the comparison at every add,
        :meth:`_records_own_model`). A tokenizer changed in place without changing its length is seen where a
        record is written, not by that comparison.
        """
        from kl_retrievers.encoding_cache import _hashed_tokenizer

        encoder = self._model
        tokenizer = _hashed_tokenizer(encoder)  # an ONNX encoder's tokenizer.json text, else its tokenizer
        try:
            size = len(tokenizer) if tokenizer is not None else -1
        except Exception:  # a foreign tokenizer without a length
            size = -1
        cached = self._own_tokenizer_of
        if fresh or cached is None or cached[0] is not encoder or cached[1] is not tokenizer or cached[2] != size:
            cached = self._own_tokenizer_of = encoder, tokenizer, size, encoder_tokenizer(encoder)
        return cached[3]

    def _record(self) -> tuple[str | None, str | None, dict[str, Any] | None, str | None]:
        """The adopted record: weights identity, backbone SHA-256, encoder config and tokenizer SHA-256."""
        return self._encoder_weights, self._encoder_backbone, self._encoder_config, self._encoder_tokenizer

    def _differences_from(self, record: tuple[str | None, str | None, dict[str, Any] | None, str | None]) -> list[str]:
        """How this client's encoder differs from a :meth:`_record` (each ``recorded vs now``): other weights, or
        the same over another backbone, with another output-relevant config or tokenizer; and what the record lacks
        (a collection created before it was recorded)."""
        weights, backbone, config, tokenizer = record
        own, own_backbone = self._own_weights(), self._own_backbone()
        if weights != own:
            return [f"weights SHA-256 {weights} vs {own}"]
        differ = []
        if backbone is not None and own_backbone is not None and backbone != own_backbone:
            differ.append(f"backbone SHA-256 {backbone} vs {own_backbone}")
        differ += encoding_differences(config, tokenizer, self._model)
        lacks = [name for name, v in (("encoder config", config), ("tokenizer SHA-256", tokenizer)) if v is None]
        if lacks:
            differ.append(f"{' and '.join(lacks)} not recorded")
        return differ

    def _adopt_weights_record(self, config: Mapping[str, Any]) -> None:
        """Take the weights identity the collection records, with the backbone SHA-256, encoder config and
        tokenizer SHA-256 recorded beside it (each absent in older collections: then not known)."""
        stored = config.get("encoder_weights_sha256")
        self._encoder_weights = stored if isinstance(stored, str) else None
        known = self._encoder_weights is not None
        backbone = config.get("encoder_backbone_sha256")  # absent in collections created before it was recorded
        self._encoder_backbone = backbone if isinstance(backbone, str) and known else None
        encoder_config = config.get("encoder_config")
        self._encoder_config = encoder_config if isinstance(encoder_config, dict) and known else None
        tokenizer = config.get(_TOKENIZER_KEY)
        self._encoder_tokenizer = tokenizer if isinstance(tokenizer, str) and known else None

    def _warn_if_other_weights(self, config: Mapping[str, Any]) -> None:
        """Adopt the weights identity the collection records; warn (once per collection and record: again when
        another client refills it with another model, :meth:`_read_state`) when this client's encoder has other
        weights, or the same over another backbone (both backbone SHA-256s known), or the same
        with another output-relevant config (pooling, beta, token budgets, query prefix, ...) or tokenizer than
        the recorded ones (:func:`kl_retrievers.store._format.warn_if_other_weights`, as a KLStore does). A
        collection created before its encoder config and tokenizer were recorded (2026-12-06) is compared by
        weights and backbone alone.

        The recorded identity is the collection creator's encoder's, which every later publication keeps (a
        client with a retrained model that adds documents does not make the old documents look re-indexed).
        """
        self._adopt_weights_record(config)  # absent in collections created before it was recorded
        weights, backbone = self._encoder_weights, self._encoder_backbone
        config_record, tokenizer = self._encoder_config, self._encoder_tokenizer
        if weights is None:
            return
        key = (self._uid, weights, backbone, json.dumps(config_record, sort_keys=True, default=str), tokenizer)
        if key in self._weights_warned:  # once per distinct record (another client may refill the collection)
            return
        where = f"Milvus collection {self.collection_name!r}"
        if warn_if_other_weights(
            weights, self._model, where, logger, backbone=backbone, config=config_record, tokenizer=tokenizer
        ):
            self._weights_warned.add(key)

    def _records_own_model(self, own: str, own_backbone: str | None) -> bool:
        """Whether the collection's record is this client's model: the same weights identity, the same backbone
        SHA-256 or one of the two not known (a collection created before it was recorded keeps its record), and
        no known difference in output-relevant config or tokenizer (what :meth:`_warn_if_other_weights` warns of)."""
        recorded = self._encoder_backbone
        if own != self._encoder_weights or not (own_backbone is None or recorded is None or own_backbone == recorded):
            return False
        if config_differences(self._encoder_config, self._model):
            return False
        own_tokenizer = self._own_tokenizer() if self._encoder_tokenizer is not None else None
        return own_tokenizer is None or own_tokenizer == self._encoder_tokenizer

    def _take_own_weights_if_empty(self) -> None:
        """Before adding to the attached collection: record this client's encoder's weights identity when the
        collection is empty (emptied, e.g. to re-index it with a retrained model), as an empty KLStore takes its
        encoder's; a collection that holds documents keeps its record.

        Only when that identity is known and differs from the recorded one, or equals it over another backbone
        (both backbone SHA-256s known and different: a delta model's identity does not cover its backbone) or with
        another output-relevant config or tokenizer (both known), one count request then. The backbone SHA-256,
        the encoder config and the tokenizer SHA-256 are recorded with it (``encoder_backbone_sha256``,
        ``encoder_config``, ``encoder_tokenizer_identity_sha256``), computed afresh. A record that lacks one of
        these three (a collection created before it was recorded) is completed the same way once the collection
        is empty, counted at most once per attach and state version (and again after this client deletes). It is
        stored by a publication (version + 1, the stored centre, ``M`` and offset unchanged, write-then-verify);
        when another writer publishes at the same time, its record stands (a warning names how it differs from
        this client's encoder). Milvus has no compare-and-set: a
        client of the old model that adds rows between this count and this publication, without publishing
        anything itself, leaves its rows under the new record, so refill an emptied collection from one client
        at a time.
        """
        own, own_backbone = self._own_weights(), self._own_backbone()
        if own is None:
            return
        if self._records_own_model(own, own_backbone):
            incomplete = self._encoder_config is None or self._encoder_tokenizer is None
            if not (incomplete or (self._encoder_backbone is None and own_backbone is not None)):
                return
            counted = (self._uid, self._state.version)  # a record without them: counted once per state version
            if counted == self._incomplete_counted:
                return
            self._incomplete_counted = counted
        if self._count("") != 0:
            return
        state = self._read_state(warn=False)  # a record another client left is replaced, not warned about
        previous = self._record()
        # the first publication records them where none is stored yet (metric "L2" before the first documents)
        self._encoder_weights, self._encoder_backbone = own, own_backbone
        self._encoder_config, self._encoder_tokenizer = self._own_config(), self._own_tokenizer(fresh=True)
        if self._record() == previous or (self.metric == "L2" and state.norm_bound is None):
            return

        def lost() -> str:  # after _read_state adopted the record that stands
            differ = "; ".join(self._differences_from(self._record()))
            return (
                f"another writer updated Milvus collection {self.collection_name!r}'s configuration at the same "
                "time; its weights record stands"
                + (f", which differs from this client's encoder: {differ} (recorded vs now)" if differ else "")
            )

        if not self._publish(state.norm_bound, state.offset, rewrite=state.pending, centre=state.centre, lost=lost):
            return  # another writer's publication won: _read_state adopted its record
        logger.info(
            "Milvus collection %r is empty: it now records this client's encoder (weights SHA-256 %s) in place of "
            "the previous record, which differed in %s (was vs now)",
            self.collection_name,
            own,
            "; ".join(self._differences_from(previous)) or "nothing compared",
        )

    def _build_params(self) -> dict[str, int]:
        """The settings the collection's index was built with (recorded in its config, adopted on attach)."""
        if self.index_type == "hnsw":
            return {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction}
        return {"nlist": self.nlist} if self.index_type == "ivf" else {}

    def _stored_build(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The build settings of the collection's index: from its config, else (collections created before
        2026-12-06) from the parameters a Milvus server describes (Milvus Lite describes none: ``{}``)."""
        build = config.get("index_build")
        if isinstance(build, Mapping):
            return dict(build)
        try:
            params = self._client.describe_index(self.collection_name, "vector")
        except Exception as exc:  # pragma: no cover - no index described: keep this client's settings
            _release_frames(exc)
            return {}
        if not isinstance(params, Mapping):
            return {}
        names = {"M": "hnsw_m", "efConstruction": "ef_construction", "nlist": "nlist"}
        return {names[key]: value for key, value in params.items() if key in names}

    def _adopt_build(self, config: Mapping[str, Any]) -> None:
        """Adopt the collection's index build settings, with a warning when this client asked for others."""
        differ: list[str] = []
        for key, value in self._stored_build(config).items():
            try:
                stored = int(value)
            except (TypeError, ValueError):
                continue  # not a number: this client's setting stays
            if key in ("hnsw_m", "ef_construction", "nlist") and stored != getattr(self, key):
                if getattr(self, key) != _BUILD_DEFAULTS[key]:  # a default the caller never passed: adopted silently
                    differ.append(f"{key}={stored} (asked: {getattr(self, key)})")
                setattr(self, key, stored)
        if differ:
            logger.warning(
                "Milvus collection %r was built with %s: using the collection's settings (drop it, or choose another "
                "collection_name, to build another index)",
                self.collection_name,
                ", ".join(differ),
            )

    def _index_params(self) -> tuple[str, dict[str, Any]]:
        kind = _MILVUS_INDEXES[(self.index_type, self.compression)]
        if self.index_type == "flat":
            return kind, {}
        if self.index_type == "hnsw":
            params: dict[str, Any] = {"M": self.hnsw_m, "efConstruction": self.ef_construction}
            return kind, ({**params, "sq_type": "SQ8"} if self.compression == "sq8" else params)
        return kind, {"nlist": self.nlist}

    def _create(self, k: int) -> None:
        pymilvus = _import_pymilvus()
        dt = pymilvus.DataType
        self._dim = k
        self._uid = uuid.uuid4().hex  # tells this collection from one re-created under the same name
        self._encoder_weights = self._own_weights()  # what its documents are encoded with (recorded in its config)
        self._encoder_backbone = self._own_backbone()
        self._encoder_config, self._encoder_tokenizer = self._own_config(), self._own_tokenizer(fresh=True)
        self._index_build = self._build_params()
        self._ip_centred = self.metric == "IP"  # centred on the first documents' mean (format version 3)
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", dt.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field("vector", dt.FLOAT_VECTOR, dim=self._vector_dim)
        # nullable (collections created since 2026-12-03): a document added without text reads back as None
        schema.add_field("text", dt.VARCHAR, max_length=self.max_text_length, nullable=True)
        schema.add_field("metadata", dt.JSON)
        # nullable (collections created since 2026-12-05): when the row was added, for the order of ties
        schema.add_field(_ADDED_FIELD, dt.INT64, nullable=True)
        index_params = self._client.prepare_index_params()
        index_type, params = self._index_params()
        index_params.add_index(field_name="vector", index_type=index_type, metric_type=self.metric, params=params)
        properties = {_CONFIG_KEY: json.dumps(self._config())}
        self._client.create_collection(self.collection_name, schema=schema, properties=properties, timeout=self.timeout)
        # what create_collection(index_params=...) does, but on Milvus Lite (which builds the index before it answers)
        # without pymilvus' wait for the build: that wait first asks for a timestamp Milvus Lite does not implement,
        # and grpc keeps the failed call's error in a reference cycle whose traceback holds every caller's frame up
        # the stack, this store included, until the cyclic garbage collector runs (and Milvus Lite logs the
        # "Method not implemented!" traceback); it also sleeps half a second
        self._client.create_index(self.collection_name, index_params, timeout=self.timeout, sync=not self._lite)
        self._client.load_collection(self.collection_name, timeout=self.timeout)
        self._text_nullable = True
        self._has_added = True
        info = self._client.describe_collection(self.collection_name, timeout=self.timeout)
        self._identity = self._identity_of(info, self._stored_config(info)[0])
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
        where = f"Milvus collection {name!r}"
        check_score(config, where)  # neg_kl / higher_is_better, when recorded (a score that is no object is refused)
        if "score" in config:  # absent before the field was written; it has always been written with both parts
            check_score_fields(config["score"], where, keys=("name", "direction"), prefix="score.", required=True)
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
            props.get(_REWRITE_GEN_KEY) or None,  # both absent in collections no rewrite ran on since 2026-12-06
            tuple(
                sorted(
                    (k, str(v))
                    for k, v in props.items()
                    if k.startswith(_REWRITING_PREFIX) and v and k not in _own_marks()
                )
            ),
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

    @staticmethod
    def _identity_of(info: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[Any, str | None]:
        """What tells this collection from one dropped and re-created under its name.

        Milvus' ``collection_id`` (always 0 in Milvus Lite) and the random ``collection_uid`` stored
        in the config at creation (absent in collections created before 2026-12-03).
        """
        return info.get("collection_id"), config.get("collection_uid")

    def _read_state(self, warn: bool = True) -> _Reduction:
        """Re-read ``M``, the offset and their version from the collection, and adopt them, with the weights record
        (a warning as on attach, unless not ``warn``, when it changed and this client's encoder is not its model).

        When the collection was dropped and re-created (by any client) since this one attached, its
        whole configuration (centre, ``M``, dimension, index) is read again instead, with a warning.
        """
        info = self._client.describe_collection(self.collection_name, timeout=self.timeout)
        config, state = self._stored_config(info)
        if self._identity is not None and self._identity_of(info, config) != self._identity:
            logger.warning(
                "Milvus collection %r was dropped and re-created since this client attached to it; "
                "re-reading its configuration (centre, norm bound, dimension, index)",
                self.collection_name,
            )
            self._forget()
            self._attach(None, info)
            return self._state
        before = self._record()
        self._adopt_weights_record(config)  # another client may have emptied and re-indexed it
        if warn and self._record() != before:  # warned as on attach where this client's encoder is not its model
            self._warn_if_other_weights(config)
        self._adopt(state)
        return state

    def _forget(self) -> None:
        """Forget the attached collection (none yet, or dropped): nothing known until the next attach or create."""
        self._dim = None
        self._state = _NO_REDUCTION  # M, the offset and their version, as this client last read them
        self._uid = None  # random id stored in the collection's config at creation
        self._identity = None  # (collection_id, uid) of the attached collection
        self._text_nullable = False  # a nullable text field keeps "no text" (None) apart from ""
        self._has_added = False  # the collection has the insertion-stamp field (_ADDED_FIELD)
        self._encoder_weights = None  # the weights SHA-256 the attached collection records
        self._encoder_backbone = None  # and the backbone SHA-256 recorded with it
        self._encoder_config = None  # and the encoder config
        self._encoder_tokenizer = None  # and the tokenizer SHA-256
        self._incomplete_counted = None  # an incomplete record is counted again after an attach
        self._index_build = None  # the index build settings the config records (none: an old collection)
        self._ip_centred = False  # an inner-product collection of format version 3: its rows are centred

    def _sync(self) -> None:
        """Check (one ``describe_collection``) that the collection is still the one attached, and re-read
        its state; attach to a collection another client created since, forget a dropped one."""
        if self._dim is None:
            if self._client.has_collection(self.collection_name, timeout=self.timeout):
                self._attach(None)
            return
        try:
            self._read_state()
        except Exception as exc:
            if self._client.has_collection(self.collection_name, timeout=self.timeout):
                raise
            _release_frames(exc)  # describe_collection's error on the missing collection
            logger.warning("Milvus collection %r was dropped by another client", self.collection_name)
            self._forget()

    def _stored_index(self, config: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(index_type, compression)`` of the collection: from its config, else from its vector index."""
        if "index_type" in config:
            return config.get("index_type"), config.get("compression")
        try:
            kind = str(self._client.describe_index(self.collection_name, "vector").get("index_type", ""))
        except Exception as exc:  # pragma: no cover - no index described: keep this client's settings
            _release_frames(exc)
            return self.index_type, self.compression
        known = {name: pair for pair, name in _MILVUS_INDEXES.items()}
        return known.get(kind, (self.index_type, self.compression))

    def _attach(self, dim: int | None, info: Mapping[str, Any] | None = None) -> None:
        if info is None:
            info = self._client.describe_collection(self.collection_name, timeout=self.timeout)
        name = self.collection_name
        config, state = self._stored_config(info)
        if self._metric_asked is None and config.get("metric") in METRICS:
            self.metric = config["metric"]  # the collection's, whichever index this client asked for
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
        index_type, compression = self._stored_index(config)
        stored = (index_type, compression)
        if index_type in INDEX_TYPES and compression in COMPRESSIONS and stored != (self.index_type, self.compression):
            # the index Milvus searches is the stored one; search parameters (ef / nprobe) must match it. A warning
            # only where the caller asked for another: a constructor default it never passed is adopted silently
            asked = zip((self.index_type, self.compression), _INDEX_DEFAULTS, stored, strict=True)
            if any(mine not in (default, theirs) for mine, default, theirs in asked):
                logger.warning(
                    "Milvus collection %r was created with index_type=%r, compression=%r; this client asked for "
                    "index_type=%r, compression=%r: using the collection's (drop it, or choose another "
                    "collection_name, to get another index)",
                    name,
                    index_type,
                    compression,
                    self.index_type,
                    self.compression,
                )
            self.index_type, self.compression = index_type, compression
        self._adopt_build(config)
        build = config.get("index_build")
        self._index_build = dict(build) if isinstance(build, Mapping) else None  # republished as stored
        self._text_nullable = bool((fields.get("text") or {}).get("nullable", False))
        self._has_added = _ADDED_FIELD in fields
        # an inner-product collection of an earlier format holds uncentred rows: kept so (no centre is chosen)
        self._ip_centred = self.metric == "IP" and int(config.get("format_version", 0)) >= _FORMAT_VERSION
        uid = config.get("collection_uid")
        self._uid = uid if isinstance(uid, str) else None
        self._warn_if_other_weights(config)
        self._identity = self._identity_of(info, config)
        self._adopt(state)
        self._client.load_collection(name, timeout=self.request_timeout)

    def _publish(
        self,
        norm_bound: float | None,
        offset: float,
        *,
        rewrite: bool,
        centre: tuple[float, ...] | None = None,
        lost: Callable[[], str] | None = None,
    ) -> bool:
        """Store a new ``M`` (version + 1) before any row uses it; ``False`` if another writer's won.

        Milvus has no compare-and-set on collection properties: the value is written, read back and
        compared with this publication's token (write-then-verify).  The caller has just re-read the
        stored state, so the version here is the stored one + 1.  ``centre`` is given with the first
        documents only; later publications keep the stored one (metric ``"IP"``, which stores no ``M``: the
        caller passes the stored centre).  ``norm_bound`` is ``None`` only where none is stored (metric ``"IP"``),
        in a publication that records a new weights identity (:meth:`_take_own_weights_if_empty`) or the centre of
        an inner-product collection's first documents (:meth:`_add_inner_product`); both pass ``lost``, called
        once the stored state is re-read, for their own message when another writer's publication wins.
        """
        config = self._config()
        writer = uuid.uuid4().hex
        config.update(
            norm_bound=norm_bound, index_offset=offset, version=self._state.version + 1, writer=writer, rewrite=rewrite
        )
        if self._state.norm_bound is None:  # the first documents choose the centre
            config["index_centre"] = None if centre is None else list(centre)
        self._alter_properties({_CONFIG_KEY: json.dumps(config)})
        state = self._read_state()
        if state.writer != writer:
            if lost is not None:
                logger.warning("%s (version %d)", lost(), state.version)
                return False
            logger.warning(
                "another writer stored the L2-reduction bound M=%s (version %d) at the same time; starting over",
                state.norm_bound,
                state.version,
            )
            return False
        return True

    def __len__(self) -> int:
        with self._lock:
            self._sync()  # dropped (0), or created or re-created by another client since
        if self._dim is None:
            return 0
        return self._count("")  # Strong, as ids: another writer's rows counted as soon as its add returned

    def __repr__(self) -> str:
        # a given client is connected elsewhere: the uri argument (its default included) says nothing then
        where = f"client={self._client_class}" if self._client_given else f"uri={self.uri!r}"
        return (
            f"MilvusKLStore({where}, collection={self.collection_name!r}, index_type={self.index_type!r}, "
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

    def _text(self, text: str | None) -> str | None:
        """The stored form of a text: ``None`` kept where the text field is nullable, else ``""``.

        Collections created before 2026-12-03 have a non-nullable text field: a document added there
        without text reads back as ``""`` (docs/milvus.md, *Known differences and limits*).
        """
        return text if text is not None or self._text_nullable else ""

    def _fields(self, *names: str) -> list[str]:
        """``names``, and the insertion stamp where the collection has it (the rows a ranking reads)."""
        return [*names, _ADDED_FIELD] if self._has_added else list(names)

    def _upsert(self, vectors: np.ndarray, id_list: Sequence[str], texts: Sequence[Any], metas: Sequence[Any]) -> None:
        added = _next_added(len(id_list)) if self._has_added else None
        starts = range(0, len(id_list), self.insert_batch)
        # the package's bar rule (TQDM_DISABLE wins; plain tqdm): _encoding.progress_bar
        with progress_bar(len(starts), desc="Inserting into Milvus", show=bool(self.show_progress_bar)) as bar:
            for s in starts:
                e = min(len(id_list), s + self.insert_batch)
                rows = [
                    {
                        "id": id_list[i],
                        "vector": vectors[i].tolist(),
                        "text": self._text(texts[i]),
                        "metadata": metas[i],
                    }
                    for i in range(s, e)
                ]
                if added is not None:
                    for i, row in enumerate(rows, start=s):
                        row[_ADDED_FIELD] = added[i]
                self._client.upsert(self.collection_name, rows, timeout=self.request_timeout)
                bar.update(1)

    def _add_documents(self, new: _NewDocuments) -> None:
        """Upsert; also ``ValueError`` for a text longer than ``max_text_length`` or an id longer than
        :data:`MAX_ID_LENGTH` (both in UTF-8 bytes, as Milvus counts them), and for metadata Milvus' JSON field
        cannot hold, before anything is written."""
        g, id_list, text_list = new.gaussians, new.ids, new.texts
        for doc_id, text in zip(id_list, text_list, strict=True):
            if text is not None and len(text.encode("utf-8")) > self.max_text_length:
                raise ValueError(f"text of document {doc_id!r} is longer than max_text_length={self.max_text_length}")
            if len(doc_id) > MAX_ID_LENGTH // 4 and (size := len(doc_id.encode("utf-8"))) > MAX_ID_LENGTH:
                raise ValueError(
                    f"id {doc_id[:40]!r}... has {len(doc_id)} characters; Milvus ids hold {MAX_ID_LENGTH} bytes in "
                    f"UTF-8 (its VARCHAR max_length counts bytes), this one {size}"
                )
        metas = [_milvus_metadata(m, doc_id) for m, doc_id in zip(new.metadatas, id_list, strict=True)]
        with self._lock:
            if not _write_proceeds():  # an async write cancelled while it waited for the lock
                return
            self._sync()  # the collection may have been dropped (and re-created) by another client
            if self._dim is None:
                if self._client.has_collection(self.collection_name, timeout=self.timeout):
                    self._attach(g.dim)
                else:
                    self._create(g.dim)
            if g.dim != self._dim:
                raise ValueError(f"document gaussians have dimension {g.dim}; this store has dimension {self._dim}")
            self._take_own_weights_if_empty()
            g64 = g.astype(np.float64)
            raw = np.asarray(kl_document_vectors(g64))  # refuses a row whose d~ is not finite, before any write
            if self.metric == "IP":
                self._add_inner_product(g64, id_list, text_list, metas)
            else:
                self._add_reduced(raw, np.asarray(g.mean), id_list, text_list, metas)

    def _add_inner_product(self, g64: Gaussians, id_list: list[str], texts: list[Any], metas: list[Any]) -> None:
        """Insert ``metric="IP"`` rows: ``d~`` of the means centred on the stored centre (none: as they are).

        In a collection of format version 3 (:data:`_FORMAT_VERSION`), the first documents choose the centre, the
        mean of their means (as ``KLStore``'s flat index does: the float32 ``d~`` and inner products then no longer
        depend on where the origin of the means lies), stored before any row is written (write-then-verify, as
        ``M``); later writers keep it. The centre is read again after the rows are written: where another writer's
        centre replaced the one used (two first adds at once), the rows are written again under it. An inner-product
        collection of an earlier format holds uncentred rows and keeps doing so.

        The rows are ``d~`` of the centred Gaussians (``mu - centre`` in float64), computed from them rather than from
        the ``d~`` of the means as given (:func:`centre_document_vectors`), whose float64 rounding follows the
        uncentred magnitudes: each row's first coordinate then agrees with the Gaussian its other coordinates hold
        within float32 rounding, which the exact flat search relies on (:func:`_flat_error_bound`).
        """
        for attempt in range(_MAX_SYNC_ATTEMPTS):
            state = self._state  # re-read by _sync just before, or by the previous attempt
            if self._ip_centred and state.centre is None:
                state = self._read_state()  # right before choosing: another writer may have just stored one
            if self._ip_centred and state.centre is None:
                centre = tuple(float(x) for x in means_centre(np.asarray(g64.mean)))

                def lost() -> str:
                    return (
                        f"another writer stored the centre of Milvus collection {self.collection_name!r} at the same "
                        "time; using it"
                    )

                if not self._publish(None, 0.0, rewrite=False, centre=centre, lost=lost):
                    continue  # another writer's centre won: _read_state adopted it
            used = self._state.centre
            centred = (
                g64 if used is None else Gaussians(np.asarray(g64.mean) - np.asarray(used), g64.var, validate=False)
            )
            self._upsert(self._rows(np.asarray(kl_document_vectors(centred))), id_list, texts, metas)
            if not self._ip_centred or state.centre is not None:
                return  # the centre was stored before this attempt began: it does not change
            if self._read_state().centre == used:
                return
            logger.warning(
                "another writer replaced the centre of Milvus collection %r while this add ran; writing its rows "
                "again under the stored centre (attempt %d of %d)",
                self.collection_name,
                attempt + 1,
                _MAX_SYNC_ATTEMPTS,
            )
        raise RuntimeError(
            f"Milvus collection {self.collection_name!r}: could not agree on the centre of the means with concurrent "
            f"writers in {_MAX_SYNC_ATTEMPTS} attempts; the documents may be stored under another centre: retry the "
            "add once the other writers are done"
        )

    def _add_reduced(
        self, raw: np.ndarray, means: np.ndarray, id_list: list[str], texts: list[Any], metas: list[Any]
    ) -> None:
        """Insert rows under the stored centre, ``M`` and offset, following the several-writers protocol.

        ``raw`` holds the ``d~`` rows of the Gaussians as given (``means`` their means); each attempt
        centres them on the stored centre (module docstring, *Several writers*).
        """
        need = 0.0  # a norm the bound must cover besides this batch's (a stored row found above M)
        rewrote_all = False  # rows of other writers were rewritten under a bound since replaced
        checked = False  # the batch's norms were compared with the bound (once per add)
        written = False  # some attempt upserted the rows (the error after the last attempt says whether)
        self._warn_if_inside_rewrite("add")
        for attempt in range(_MAX_SYNC_ATTEMPTS):
            state = self._await_rewrites(self._read_state())  # another writer's rewrite would undo these rows
            wrote_props = False  # this attempt stored a bound or rewrote rows: the state is read again
            if state.norm_bound is None:  # the collection's first documents: choose the centre, o and M
                c = means_centre(means)
                centre = tuple(float(x) for x in c) if worth_centring(raw, c) else None
                dvec = centre_document_vectors(raw, None if centre is None else np.asarray(centre))
                offset = reduction_offset(dvec)
                first_bound = reduction_norm_bound(dvec, offset, self.norm_headroom)
                self._refuse_kmeans_overflow(dvec, offset, first_bound, id_list, first=True)
                if not checked:
                    self._warn_norm_jump(dvec, offset, None, id_list)
                    checked = True
                if not self._publish(first_bound, offset, rewrite=False, centre=centre):
                    continue
                wrote_props = True
            else:
                dvec = self._centred(raw)
                top = max(reduction_norm_bound(dvec, state.offset), need)
                if top > state.norm_bound:
                    self._refuse_kmeans_overflow(dvec, state.offset, self.norm_headroom * top, id_list)
                if not checked:
                    self._warn_norm_jump(dvec, state.offset, state.norm_bound, id_list)
                    checked = True
                rewrite = rewrote_all or state.pending
                previous = None  # the bound this attempt's publication replaces
                if top > state.norm_bound:
                    if not self._publish(self.norm_headroom * top, state.offset, rewrite=True):
                        continue
                    rewrite, previous, wrote_props = True, state.norm_bound, True
                if rewrite:
                    followed = (self._state.version, self._state.writer)
                    try:
                        self._rewrite_rows(previous)
                    except _NeedsLargerBound as exc:
                        need, rewrote_all = max(need, exc.top), True
                        continue
                    if (self._state.version, self._state.writer) != followed:
                        # another writer's publication replaced the one rewritten for: every row was rewritten
                        # again under it, which may not cover this batch: start over from it
                        rewrote_all = False
                        continue
                    rewrote_all, wrote_props = True, True
            bound, offset = self._state.norm_bound, self._state.offset
            before = self._read_state() if wrote_props else state  # the rewrite generation this write starts under
            if before.rewriting or (before.norm_bound, before.offset) != (bound, offset):
                continue  # another writer's rewrite began (waited for at the top), or another bound was stored
            self._upsert(self._rows(self._centred(raw)), id_list, texts, metas)
            written = True
            after = self._read_state()
            if self._rewrite_overlapped(before, after, "add", attempt):
                continue  # a rewrite may have written back older copies of these rows: write them again
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
        outcome = (
            "the documents were written but may be ranked under another bound, or overwritten by another writer's "
            "row rewrite"
            if written
            else "none of the documents was written"
        )
        raise RuntimeError(
            f"Milvus collection {self.collection_name!r}: could not agree on the L2-reduction bound with concurrent "
            f"writers in {_MAX_SYNC_ATTEMPTS} attempts; {outcome}: retry the add, or call repair() once the other "
            "writers are done"
        )

    def _refuse_kmeans_overflow(
        self, dvec: np.ndarray, offset: float, bound: float, id_list: list[str], *, first: bool = False
    ) -> None:
        """``ValueError`` where an IVF collection would get the bound ``M=bound`` above :data:`MAX_NORM_BOUND`.

        Milvus trains the IVF lists with FAISS's k-means over float32 squared distances of the reduced vectors
        (norm ``M``): above the limit they overflow and the process aborts when the index is built (at the
        latest at ``close()``), and so does every later open of a Milvus Lite file holding the row.  Called
        before ``M`` is stored or a row written; HNSW and flat collections train no k-means (HNSW's recall
        suffers instead: docs/milvus.md, *Known differences and limits*).  ``first``: the collection's first
        documents (it was created with this client's IVF index and holds none).
        """
        if self.index_type != "ivf" or bound <= MAX_NORM_BOUND:
            return
        norms = np.linalg.norm(shift_document_vectors(dvec, offset), axis=1)
        worst = int(np.argmax(norms))
        headroom = f"norm_headroom={self.norm_headroom:.4g}"
        flat = "index_type='flat' (exact; a client of an existing collection gets the collection's index)"
        if self.norm_headroom * float(norms[worst]) > MAX_NORM_BOUND:  # refused before any row is written
            what = f"document {id_list[worst]!r} cannot be put in"
            whose = f"its reduced norm {float(norms[worst]):.4g} times {headroom}"
            if first:  # the collection was created (with the IVF index) and stays empty
                advice = (
                    f"nothing was added and the collection, created with the IVF index, holds no document: re-encode "
                    f"the document, or use another collection_name, or drop() this one, then {flat}"
                )
            else:
                advice = (
                    "nothing was added: re-encode the document, or keep such documents in another collection "
                    f"(another collection_name) created with {flat}"
                )
        else:  # a row an earlier release stored needs the bound (a retried add may have written its rows)
            what = "documents cannot be added to"
            whose = f"a stored document's reduced norm {bound / self.norm_headroom:.4g} times {headroom}"
            advice = (
                "the collection already holds that document: delete or re-encode it, or keep such documents in "
                f"another collection (another collection_name) created with {flat}"
            )
        raise ValueError(
            f"{what} Milvus collection {self.collection_name!r} (IVF index): {whose} gives the bound M={bound:.4g}, "
            f"above the {MAX_NORM_BOUND:.4g} at which the float32 squared distances of the IVF index's k-means "
            f"overflow (tiny variances, or a mean far from the others for its variances); {advice}"
        )

    def _warn_norm_jump(self, dvec: np.ndarray, offset: float, bound: float | None, id_list: list[str]) -> None:
        """Log a document whose norm dwarfs the bound ``M`` in force (or, for the first documents, the
        batch's median norm) by more than :data:`_NORM_JUMP_WARN`: ``M`` follows it and float32 L2 can
        then no longer rank the other documents (scores stay exact, the candidate pool does not: HNSW / IVF
        lose recall, a flat search scores every matching row, :meth:`_exact_flat`)."""
        norms = np.linalg.norm(shift_document_vectors(dvec, offset), axis=1)
        if bound is not None:
            ref, what = bound, f"the bound M={bound:.3g} in force"
        elif len(norms) > 1:
            ref, what = float(np.median(norms)), "the median norm of the documents added with it"
        else:
            return
        worst = int(np.argmax(norms))
        factor = float(norms[worst]) / max(ref, 1e-300)
        if factor > _NORM_JUMP_WARN:
            logger.warning(
                "document %r has a reduced norm %.3g, %.3g times %s (a tiny variance or a huge mean): the "
                "L2-reduction bound M grows to cover it, and float32 L2 search can then barely tell the other "
                "documents apart (HNSW / IVF recall drops far below 1, a flat search may too, or with prove_flat=True "
                "scores every matching row in float64 to stay exact; scores stay exact). M does not shrink when it "
                "is deleted: delete it and call repair() to lower M, or keep such documents in another collection",
                id_list[worst],
                float(norms[worst]),
                factor,
                what,
            )

    def _iter_all(
        self, output_fields: list[str], batch: int = 1000, filter: str = ""
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row (matching ``filter``) in pages of ``batch``, in primary-key order.

        The cursor pagination of ``MilvusClient.query_iterator`` (``id > "<last id>"`` with the id pasted
        in unescaped) loops forever or skips rows at an id holding a backslash or a quote; this is the
        same pagination (``iterator`` queries come back in primary-key order) with the id escaped.
        """
        fields = list(dict.fromkeys(["id", *output_fields]))
        last: str | None = None
        while True:
            parts = [f"({filter})"] if filter else []
            if last is not None:
                parts.append(f"id > {_string_literal(last)}")
            page = self._client.query(
                self.collection_name,
                filter=" and ".join(parts),
                output_fields=fields,
                limit=batch,
                timeout=self.request_timeout,
                consistency_level="Strong",  # see rows other writers have just inserted
                iterator="True",  # pages in primary-key order (as query_iterator asks for them)
                reduce_stop_for_best="False",
            )
            if not page:
                return
            yield list(page)
            if len(page) < batch:
                return
            last = str(page[-1]["id"])

    def _rewrite_rows(self, previous: float | None) -> None:
        """Rewrite every stored row under this client's (just stored) ``M`` and offset, then mark it done.

        Each row is rebuilt from the Gaussian recovered from its stored vector, so a row written under
        any earlier bound or offset comes out consistent.  Raises :class:`_NeedsLargerBound` when a
        stored row does not fit under ``M`` (the caller raises ``M`` and starts over).  ``previous`` is the
        bound this client's publication replaced (``None``: ``M`` is unchanged, a pending rewrite or a repair).

        A page is read, then written back: another writer's upsert or delete of one of its rows in between
        would be undone by the old copy.  So the rewrite first stores a new rewrite generation and a mark of
        its own (:data:`_REWRITE_GEN_KEY`, :data:`_REWRITING_PREFIX`) before it reads any row, updates the
        mark after every page and drops it at the end; every writer compares them before and after its
        write and writes again once the rewrite is over (:meth:`_rewrite_overlapped`).

        Two writers can both read their own publication of one version back (:meth:`_publish`): after the last page
        the rewrite reads the stored publication again, and where it is no longer the one it followed, it adopts the
        stored one and rewrites every row again under it, its mark held all along (a search proves nothing while a
        mark is there: :meth:`_rows_follow`), so that no row stays under the replaced ``M`` once the mark is gone.
        """
        state = self._state
        assert self._dim is not None and state.norm_bound is not None
        bound, offset, version, writer = state.norm_bound, state.offset, state.version, state.writer
        token = uuid.uuid4().hex
        mark = self._mark  # one key per client: where marks cannot be dropped, no empty key is left per rewrite
        rewritten = 0  # every pass's rows: the mark's progress
        passes = pass_rows = 0  # passes over every row, and the rows of the last one (logged)
        finished = False
        _own_marks().add(mark)
        try:
            # inside the try: a call that raises after the server applied it (a lost reply) still drops the mark
            self._alter_properties({_REWRITE_GEN_KEY: token, mark: "0"})
            for attempt in range(_MAX_SYNC_ATTEMPTS + 1):
                if attempt == _MAX_SYNC_ATTEMPTS:
                    raise RuntimeError(
                        f"Milvus collection {self.collection_name!r}: the L2-reduction bound M was replaced by "
                        f"concurrent writers during each of {_MAX_SYNC_ATTEMPTS} rewrites of every row; retry, or "
                        "call repair() once the other writers are done"
                    )
                passes, pass_rows = passes + 1, 0
                for page in self._iter_all(self._fields("id", "vector", "text", "metadata")):
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
                    if self._has_added:  # kept: a rewrite changes no row's place among ties
                        for row, r in zip(rows, page, strict=True):
                            row[_ADDED_FIELD] = r.get(_ADDED_FIELD)
                    self._client.upsert(self.collection_name, rows, timeout=self.request_timeout)
                    rewritten += len(rows)
                    pass_rows += len(rows)
                    # progress: writers waiting for this rewrite tell it from an abandoned one (_REWRITE_STALL_S)
                    self._alter_properties({mark: str(rewritten)})
                # two writers can both read their own publication of one version back (write-then-verify): the one
                # whose publication was replaced finds out here, with its mark still held (searches prove nothing
                # while it is there, _rows_follow), and rewrites every row again under the stored publication
                now = self._read_state()
                if (now.version, now.writer) == (version, writer):
                    break
                if now.norm_bound is None:
                    raise RuntimeError(
                        f"Milvus collection {self.collection_name!r} was re-created during the rewrite of its rows "
                        "(its stored L2-reduction bound M is gone); retry on the new collection"
                    )
                logger.warning(
                    "Milvus collection %r: another writer's publication of the L2-reduction bound M=%.6g (version "
                    "%d) replaced the one this rewrite followed (M=%.6g, version %d); rewriting every row again "
                    "under the stored one",
                    self.collection_name,
                    now.norm_bound,
                    now.version,
                    bound,
                    version,
                )
                bound, offset, version, writer = now.norm_bound, now.offset, now.version, now.writer
            # a separate key: a late mark can only name its own publication, never hide a newer pending one
            done = json.dumps({"version": version, "writer": writer})
            self._alter_properties({_REWRITE_DONE_KEY: done})
            finished = True
        finally:
            try:
                # emptied first (an empty mark counts as none): a server that accepts the drop without applying it
                # (one predating its delete_keys field) would otherwise leave the mark for every writer to wait on
                self._alter_properties({mark: ""})
                self._drop_marks([mark])
            except Exception:
                if finished:
                    raise
                # the rewrite's own error propagates; other writers drop the mark as abandoned (_REWRITE_STALL_S)
                logger.warning("could not drop the rewrite mark %s", mark, exc_info=True)
            finally:
                _own_marks().discard(mark)  # only once the drop was tried: a write of this thread never waits for it
        self.rebuild_count += 1
        logger.warning(
            "rewrote %d rows under the L2-reduction bound M=%.6g (version %d; %s; %d pass(es) over every row)",
            pass_rows,
            bound,
            version,
            f"raised from M={previous:.6g}"
            if previous is not None and previous != bound
            else "M unchanged: finishing a pending rewrite, or a repair",
            passes,
        )

    def _drop_marks(self, marks: list[str]) -> None:
        """Drop rewrite marks (an empty value where the client cannot drop collection properties)."""
        try:
            with self._properties_lock():
                self._client.drop_collection_properties(self.collection_name, property_keys=marks, timeout=self.timeout)
        except Exception as exc:  # pymilvus / Milvus without drop_collection_properties: an empty mark counts as none
            logger.debug("could not drop the rewrite marks %s; emptying them", marks, exc_info=True)
            _release_frames(exc)
            self._alter_properties(dict.fromkeys(marks, ""))

    def _properties_lock(self) -> Any:
        """The lock around this store's collection property writes: Milvus Lite's are not thread-safe (two stores
        of one process on one file fail on its ``schema.json``), so :data:`_lite_properties_lock`; none for a
        server."""
        return _lite_properties_lock if self._lite else contextlib.nullcontext()

    def _alter_properties(self, properties: dict[str, str]) -> None:
        """``alter_collection_properties`` under :meth:`_properties_lock`."""
        with self._properties_lock():
            self._client.alter_collection_properties(self.collection_name, properties=properties, timeout=self.timeout)

    def _await_rewrites(self, state: _Reduction) -> _Reduction:
        """Wait until no row rewrite is marked in progress (by another writer); the state read then.

        A mark whose progress has not changed for :data:`_REWRITE_STALL_S` seconds (of this client's clock)
        belongs to a writer that died: it is dropped with a warning (the pending rewrite it leaves is finished
        by the next ``add`` or :meth:`repair`).  A dropped mark read back with the same progress (a server that
        accepts the drop but does not apply it) is emptied (an empty mark counts as none); one still there after
        that is waited for like any other, until the :data:`_REWRITE_WAIT_S` limit.

        The store's lock is released while it sleeps (its searches, ``len`` and reads go on); the caller's state is
        read again after each sleep.

        Raises:
            RuntimeError: No progress of the rewrites in progress for :data:`_REWRITE_WAIT_S` seconds.
        """
        moved = time.monotonic()  # when a rewrite waited for last made progress (or the wait began)
        seen: dict[str, tuple[str, float]] = {}  # mark -> (progress, when this client first saw it)
        dropped: dict[str, str] = {}  # mark -> its progress when this client dropped it
        emptied: set[str] = set()  # marks dropped, read back unchanged and emptied: waited for until the limit
        delay = 0.01
        while state.rewriting:
            now = time.monotonic()
            for mark, progress in state.rewriting:
                if mark not in seen or seen[mark][0] != progress:
                    seen[mark] = (progress, now)
                    moved = now
                    dropped.pop(mark, None)  # it moved: its writer is alive
                    emptied.discard(mark)
            stalled = [
                mark
                for mark, _ in state.rewriting
                if now - seen[mark][1] >= _REWRITE_STALL_S and mark not in dropped and mark not in emptied
            ]
            back = [
                mark
                for mark, progress in state.rewriting
                if dropped.get(mark) == progress and mark not in emptied  # the drop was accepted, not applied
            ]
            if stalled:
                logger.warning(
                    "Milvus collection %r: %d row rewrite(s) made no progress for %g s (the writer died?); "
                    "dropping their marks",
                    self.collection_name,
                    len(stalled),
                    _REWRITE_STALL_S,
                )
                self._drop_marks(stalled)
                dropped.update((mark, seen[mark][0]) for mark in stalled)
            if back:
                logger.warning(
                    "Milvus collection %r: %d dropped rewrite mark(s) are still there (the server ignored the "
                    "drop?); emptying them",
                    self.collection_name,
                    len(back),
                )
                self._alter_properties(dict.fromkeys(back, ""))
                emptied.update(back)
            if now - moved >= _REWRITE_WAIT_S:
                raise RuntimeError(
                    f"Milvus collection {self.collection_name!r}: another writer's rewrite of every row (the "
                    f"L2-reduction bound M was raised) made no progress for {_REWRITE_WAIT_S:g} s; this "
                    "client waits for it because a rewrite writes back rows it read before and would undo a write "
                    "made meanwhile. Retry once the other writer is done (a rewrite making no progress for "
                    f"{_REWRITE_STALL_S:g} s is treated as abandoned and its mark dropped; this limit applies to a "
                    "mark that could be neither dropped nor emptied)"
                )
            with self._idle:
                self._idle.wait(delay)  # sleeps without the store's lock (every level of it)
            delay = min(2 * delay, 0.5)
            state = self._read_state()
        return state

    def _warn_if_inside_rewrite(self, what: str) -> None:
        """Warn when a write is made from inside a row rewrite running in this thread (a hook or callback): it
        cannot wait for that rewrite (it would wait for itself), which may then write back older copies of its rows."""
        if _own_marks():
            logger.warning(
                "Milvus collection %r: this %s runs inside a row rewrite of this thread (a hook or callback) and "
                "cannot wait for it; the rewrite may write back an older copy of its rows: write from another "
                "thread or process, or after the rewrite",
                self.collection_name,
                what,
            )

    def _rewrite_overlapped(self, before: _Reduction, after: _Reduction, what: str, attempt: int) -> bool:
        """Whether a row rewrite may have run between the reads ``before`` and ``after`` of a write (it may then
        have written back an older copy of a row the write changed: the caller writes again); logged."""
        if after.rewrite_gen == before.rewrite_gen and not after.rewriting:
            return False
        logger.warning(
            "Milvus collection %r: another writer rewrote the rows (the L2-reduction bound M was raised) while this "
            "client's %s ran, which can write back an older copy of its rows; writing again once the rewrite is "
            "done (attempt %d of %d)",
            self.collection_name,
            what,
            attempt + 1,
            _MAX_SYNC_ATTEMPTS,
        )
        return True

    def _stored_top(self, offset: float) -> float:
        """The largest shifted norm ``max ||d^||`` over the stored rows (0 for none; a full scan)."""
        assert self._dim is not None
        top = 0.0
        for page in self._iter_all(["vector"]):
            g = document_gaussians_from_vectors([r["vector"] for r in page], self._dim)
            top = max(top, reduction_norm_bound(np.asarray(kl_document_vectors(g)), offset))
        return top

    def repair(self) -> int:
        """Rewrite every row under the stored ``M`` and offset (a no-op for ``metric="IP"``).

        Needed when a writer died between storing a raised ``M`` and finishing the rewrite and
        no ``add`` has run since, or after an ``add`` gave up on concurrent writers.  Safe to run at
        any time (while other processes write, too).  It first scans the stored rows: where ``M``
        is more than twice ``norm_headroom * max ||d^||`` (the documents that raised it were
        deleted) it stores the lower ``M`` and rewrites every row under it, which restores the
        float32 precision of the L2 ranking (``M`` never shrinks by itself).

        Returns:
            The stored version of ``M`` the rows now follow.
        """
        with self._lock:
            if self._dim is None or self.metric == "IP":
                return self._state.version
            need = 0.0
            for _ in range(_MAX_SYNC_ATTEMPTS):
                state = self._await_rewrites(self._read_state())  # also drops the marks of abandoned rewrites
                if state.norm_bound is None:
                    return state.version
                top = max(self._stored_top(state.offset), need)
                if top > state.norm_bound * (1.0 + NORM_BOUND_RTOL):
                    if not self._publish(self.norm_headroom * top, state.offset, rewrite=True):
                        continue
                elif top > 0 and state.norm_bound > _SHRINK_FACTOR * self.norm_headroom * top:
                    # rows that needed a larger M are gone (deleted): a tighter M restores float32 precision
                    logger.warning(
                        "lowering the L2-reduction bound M=%.6g to %.6g (the largest stored norm is %.6g)",
                        state.norm_bound,
                        self.norm_headroom * top,
                        top,
                    )
                    if not self._publish(self.norm_headroom * top, state.offset, rewrite=True):
                        continue
                try:
                    self._rewrite_rows(state.norm_bound if self._state.norm_bound != state.norm_bound else None)
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
        _check_sendable_ids(ids, "delete")  # an empty store too, as add refuses such an id
        if self._dim is None or not ids:
            return DeleteReport(deleted=[], missing=ids)
        with self._lock:
            if not _write_proceeds():  # an async write cancelled while it waited for the lock
                return DeleteReport(deleted=[], missing=[])
            self._incomplete_counted = None  # an incomplete record is completed if this empties the collection
            # another writer's row rewrite can write back a copy of a row read before this delete: with the
            # L2 reduction, a delete checks the rewrite generation before and after, and deletes again
            l2 = self.metric == "L2"
            if l2:
                self._sync()  # the rewrite generation and marks (a dropped collection: nothing to delete)
                if self._dim is None:
                    return DeleteReport(deleted=[], missing=ids)
                self._warn_if_inside_rewrite("delete")
            before = self._await_rewrites(self._state) if l2 else self._state
            found = set(self._fetch(ids, []))
            deleted = [i for i in ids if i in found]
            for attempt in range(_MAX_SYNC_ATTEMPTS):
                for s in range(0, len(deleted), _ID_BATCH):
                    chunk = deleted[s : s + _ID_BATCH]
                    self._client.delete(self.collection_name, filter=_id_filter(chunk), timeout=self.request_timeout)
                if not l2 or not self._rewrite_overlapped(before, self._read_state(), "delete", attempt):
                    break
                before = self._await_rewrites(self._read_state())
            else:
                raise RuntimeError(
                    f"Milvus collection {self.collection_name!r}: other writers kept rewriting the rows during "
                    f"{_MAX_SYNC_ATTEMPTS} attempts of this delete; a deleted document may have been written back: "
                    "retry the delete once the other writers are done"
                )
        return DeleteReport(deleted=deleted, missing=[i for i in ids if i not in found])

    def _delete_matching(self, ids: list[str] | None, filter: str | _LiteFilter) -> DeleteReport:
        """Delete what the Milvus expression ``filter`` matches among ``ids`` (``None``: every stored row).

        The matching ids are queried (ids only) and deleted under this object's lock, so no other thread
        using this ``MilvusKLStore`` writes in between; another ``MilvusKLStore`` object (even over the same
        collection in this process) or another process may (Milvus has no transaction): a row it upserts
        between the query and the delete is deleted by id all the same.
        """
        _check_sendable_ids(ids or [], "delete")
        with self._lock:
            if not _write_proceeds():  # an async delete cancelled while it waited for the lock
                return DeleteReport(deleted=[], missing=[])
            self._sync()  # dropped, or created or re-created by another client since
            if self._dim is None:
                return DeleteReport(deleted=[], missing=[] if ids is None else ids)
            self._incomplete_counted = None  # an incomplete record is completed if this empties the collection
            expr = self._resolve_filter(filter)
            if ids is None:
                matching = [str(r["id"]) for r in self._rows_matching(None, expr, [])]
                missing: list[str] = []
            else:
                found = self._fetch(ids, [])
                missing = [i for i in ids if i not in found]
                present = [i for i in ids if i in found]
                hits = {str(r["id"]) for r in self._rows_matching(present, expr, [])}
                matching = [i for i in present if i in hits]
            report = self._delete(matching)
        return DeleteReport(deleted=report.deleted, missing=missing)

    def _rows_matching(self, ids: list[str] | None, expr: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        """The rows (``id`` and ``fields``) the Milvus expression ``expr`` matches, among ``ids`` (``None``: every row;
        asked by id in batches of :data:`_ID_BATCH`), as Milvus returns them: nothing else is read."""
        if ids is None:
            for page in self._iter_all(fields, filter=expr):
                yield from page
            return
        for s in range(0, len(ids), _ID_BATCH):
            part = _id_filter(ids[s : s + _ID_BATCH])
            for page in self._iter_all(fields, filter=f"({part}) and ({expr})" if expr else part):
                yield from page

    # -------------------------------------------------------------- reading
    def _fetch(self, ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """The stored rows of ``ids`` (``fields`` of each) by id; unknown ids are absent."""
        if self._dim is None or not ids:
            return {}
        unique = list(dict.fromkeys(ids))
        out: dict[str, dict[str, Any]] = {}
        for s in range(0, len(unique), _ID_BATCH):
            rows = self._client.query(
                self.collection_name,
                filter=_id_filter(unique[s : s + _ID_BATCH]),  # escaped: get(ids=...) pastes ids in raw
                output_fields=["id", *fields],
                timeout=self.request_timeout,
                consistency_level="Strong",  # read this client's (and others') latest writes
            )
            out.update((r["id"], r) for r in rows)
        return out

    def _documents(self, ids: list[str]) -> list[StoredDocument]:
        _check_sendable_ids(ids, "get_by_ids")
        by_id = self._fetch(ids, ["text", "metadata"])
        return [StoredDocument(i, by_id[i]["text"], dict(by_id[i]["metadata"] or {})) for i in ids if i in by_id]

    def _documents_matching(self, ids: list[str] | None, filter: str | _LiteFilter) -> list[StoredDocument]:
        """The documents the Milvus expression ``filter`` matches among ``ids`` (``None``: every row): Milvus
        evaluates it and returns only those rows (their text and metadata)."""
        _check_sendable_ids(ids or [], "get_by_filter")
        with self._lock:
            self._sync()  # dropped, or created or re-created by another client since
        if self._dim is None or ids == []:
            return []
        rows = self._rows_matching(ids, self._resolve_filter(filter), ["text", "metadata"])
        docs = {str(r["id"]): StoredDocument(str(r["id"]), r["text"], dict(r["metadata"] or {})) for r in rows}
        return list(docs.values()) if ids is None else [docs[i] for i in ids if i in docs]

    def _gaussians(self, ids: list[str]) -> Gaussians:
        """Recovered from the stored float32 vectors, as float32; ``KeyError`` for an unknown id.

        Variances within about 1e-7 relative; means too, except in a centred collection: within about
        ``1e-7 * |mu - centre|`` there (docs/milvus.md, *Recovered Gaussians*)."""
        _check_sendable_ids(ids, "get_gaussians")
        with self._lock:
            self._sync()  # the centre of a collection re-created (or first filled) by another client
        by_id = self._fetch(ids, ["vector"])
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"{len(missing)} unknown id(s): {missing[:5]}")  # as KLStore
        if not ids:
            k = self._dim or 1
            return Gaussians(np.zeros((0, k), np.float32), np.ones((0, k), np.float32))
        vectors = np.asarray([by_id[i]["vector"] for i in ids], dtype=np.float64).reshape(len(ids), -1)
        g = document_gaussians_from_vectors(vectors, self._dim)
        mean = np.asarray(g.mean) if self._state.centre is None else g.mean + np.asarray(self._state.centre)
        # float32, as KLStore returns them (the stored d~ is float32: about 1e-7 relative)
        return Gaussians(mean.astype(np.float32), np.asarray(g.var).astype(np.float32), validate=False)

    @property
    def ids(self) -> list[str]:
        """All stored ids (a full scan of the collection)."""
        with self._lock:
            self._sync()  # dropped ([]), or created or re-created by another client since
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
        return super()._check_k(k)  # above MAX_TOPK: checked against the matching rows in _search

    def _count(self, filter: str) -> int:
        """Rows matching ``filter`` (all rows for ``""``), counted by Milvus."""
        found = self._client.query(
            self.collection_name,
            filter=filter,
            output_fields=["count(*)"],
            timeout=self.request_timeout,
            consistency_level="Strong",
        )
        return int(found[0]["count(*)"]) if found else 0

    def _is_empty(self) -> bool:
        return self._dim is None  # no collection yet (counting the rows of one costs a request)

    def _prepare_filter(self, filter: MetadataFilter | None) -> str | _LiteFilter:
        """A Milvus expression (:func:`to_milvus_expr`; a callable filter raises ``ValueError``).

        On Milvus Lite, a filter with a long ``$in`` / ``$nin`` list, or one that negates an order comparison
        (:func:`_has_negated_order`), is kept as a :class:`_LiteFilter` (checked here, as any other) and
        turned into an expression at search time (:meth:`_resolve_filter`).
        """
        if filter is None:
            return ""
        expr = to_milvus_expr(filter)  # checks the filter whichever form is sent
        if self._lite and (_has_long_in(filter) or _has_negated_order(filter)):
            return _LiteFilter(filter)
        return expr

    def _resolve_filter(self, filter: str | _LiteFilter) -> str:
        """The expression sent to Milvus: a :class:`_LiteFilter`'s long ``$in`` lists become id lists, and one
        negating an order comparison the ids it matches (:meth:`_ids_matching`)."""
        if isinstance(filter, str):
            return filter
        if _has_negated_order(filter.spec):
            return self._ids_matching(filter.spec)
        return _expr(filter.spec, "metadata", self._ids_in)

    def _ids_matching(self, spec: Any) -> str:
        """``id in [...]`` naming the rows the dict filter ``spec`` matches as a Milvus server matches them.

        For a filter that negates an order comparison on Milvus Lite (:func:`_has_negated_order`): Milvus Lite
        calls ``not ("abc" > 2020)`` unknown, so ``{"$not": {"year": {"$gt": "abc"}}}`` dropped every document
        whose ``year`` is a number, where ``KLStore`` returns them (as a Milvus server should: by its source, it
        calls a comparison of mismatched JSON types false).  One scan of every row's metadata, judged by
        :func:`kl_retrievers.filters.compile_filter` on the filter with its date, datetime, time and
        ``np.datetime64`` values in their stored form: ISO strings, compared as text, as every other Milvus
        filter compares them (:func:`_literal`), so that a filter and its ``$not`` never both leave a document
        out.
        """
        predicate = compile_filter(_stored_form_of_filter_values(spec))
        assert predicate is not None
        matching = [
            str(r["id"]) for page in self._iter_all(["metadata"]) for r in page if predicate(r["metadata"] or {})
        ]
        return _id_filter(matching) if matching else _FALSE

    def _ids_in(self, key: str, values: list[Any]) -> str | None:
        """``id in [...]`` naming the rows whose metadata ``key`` equals one of ``values``, as Milvus Lite's own
        ``(exists metadata[key] and (metadata[key] == v1 or ...))`` selects them (``None``: send that instead).

        Milvus Lite compares the row's JSON value with each literal by Python's ``==`` (``1 == 1.0 == True``,
        ``"1" != 1``, a list or dict equal to no scalar), and ``exists`` is false for a missing key or a JSON
        ``null``; this does the same on one scan of the rows holding the key, with a set (``hash`` agrees
        with ``==`` on these values).  Integers beyond 64 bits are left to Milvus.
        """
        wanted = [stored_form(v) for v in values]
        if any(isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63 for v in wanted):
            return None
        allowed = set(wanted)
        ref = _field_ref("metadata", key)
        matching = [
            str(r["id"])
            for page in self._iter_all(["metadata"], filter=f"exists {ref}")
            for r in page
            if isinstance(value := (r["metadata"] or {}).get(key), (str, int, float)) and value in allowed
        ]
        return _id_filter(matching) if matching else _FALSE

    def _top(self, q64: Gaussians, rows: Sequence[Mapping[str, Any]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the top ``k`` of ``rows`` (each with its stored ``"vector"``) by exact ``-KL`` to the
        one (centred) query ``q64``, and every row's score."""
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        assert self._dim is not None
        pool = document_gaussians_from_vectors([r["vector"] for r in rows], self._dim)
        scores = np.asarray(neg_kl(q64, pool)) + 0.0  # + 0.0: a self-score of -0.0 reads 0.0
        return self._tie_order(rows, scores)[:k], scores

    @staticmethod
    def _tie_order(rows: Sequence[Mapping[str, Any]], scores: np.ndarray) -> np.ndarray:
        """Positions of ``rows`` by ``scores``, best first; exact ties: the later-added first (the stored insertion
        stamp, as KLStore's row order); rows without a stamp (collections created before 2026-12-05) after those
        with one, the greater id first among them."""
        added = np.asarray([-1 if r.get(_ADDED_FIELD) is None else r[_ADDED_FIELD] for r in rows], dtype=np.int64)
        ranks = tie_ranks([str(r["id"]) for r in rows])
        return np.lexsort((ranks, -added, -scores))

    def _rank(self, q64: Gaussians, rows: Sequence[Mapping[str, Any]], k: int) -> list[SearchResult]:
        """The top ``k`` of ``rows`` (each ``{"id", "vector", "text", "metadata"}``, one stored version of a
        document) by exact ``-KL`` to the one (centred) query ``q64``, scored from the row's own vector."""
        order, scores = self._top(q64, rows, k)
        return [
            SearchResult(str(rows[j]["id"]), float(scores[j]), rows[j]["text"], dict(rows[j]["metadata"] or {}))
            for j in order
        ]

    def _search(self, queries: Gaussians, k: int, filter: Any) -> list[list[SearchResult]]:
        qg = queries
        with self._lock:
            self._sync()  # one describe_collection: dropped / re-created since, the first documents' centre
            if self._dim is None or (self.metric == "L2" and self._state.norm_bound is None):
                return [[] for _ in range(len(qg))]  # nothing was ever added
            if qg.dim != self._dim:
                raise ValueError(f"queries have dimension {qg.dim}; this store has dimension {self._dim}")
            data = self._query_vectors(qg)
            q64 = self._query_centred(qg)  # the pool's recovered Gaussians are centred too
            index_type = self.index_type
            state = self._state  # the M, offset and centre the query vectors were made with
        filter = self._resolve_filter(filter)  # long $in lists on Milvus Lite: the matching ids, read now
        if k > MAX_TOPK:  # one Milvus search returns at most MAX_TOPK hits: enough when no more rows match
            count = self._count(filter)
            if count > MAX_TOPK:
                raise ValueError(
                    f"k must be at most {MAX_TOPK} with Milvus when more documents than that match ({count} do); "
                    f"got {k}"
                )
            k = max(count, 1)  # every matching document, as KLStore returns for k above their number
        pool = min(MAX_TOPK, max(k, self.rescore_pool, self.rescore_factor * k))
        params: dict[str, Any] = {}
        if index_type == "hnsw":
            params = {"ef": max(self.ef_search, pool)}
        elif index_type == "ivf":
            params = {"nprobe": self.nprobe}

        def search(vectors: np.ndarray, fields: list[str], limit: int = pool) -> list[list[dict[str, Any]]]:
            hits = self._client.search(
                self.collection_name,
                data=vectors.tolist(),
                limit=limit,
                filter=filter,
                output_fields=fields,
                search_params={"metric_type": self.metric, "params": params},
                anns_field="vector",
                timeout=self.request_timeout,
            )
            return [[{"id": h["id"], **h["entity"], "distance": h["distance"]} for h in row] for row in hits]

        # The pool comes with its vectors only (texts are long; a pool is 10 x k); the winners' text and
        # metadata are fetched with their vectors, and a winner whose vector changed or vanished in
        # between (a concurrent upsert or delete) sends its query to a second search that returns texts
        # too, so every hit is one stored version of its document: never torn, never dropped.
        if index_type == "flat" and self.prove_flat:
            rows, tops = self._proven_flat(q64, data, k, pool, filter, state, search)
        else:
            rows = search(data, self._fields("vector"))
            tops = [self._top(q64[i], row, k) for i, row in enumerate(rows)]
        winners = {rows[i][j]["id"] for i, (order, _) in enumerate(tops) for j in order}
        stored = self._fetch(list(winners), ["vector", "text", "metadata"])
        results: list[list[SearchResult]] = []
        stale: list[int] = []
        for i, (order, scores) in enumerate(tops):
            hits = []
            for j in order:
                row, now = rows[i][j], stored.get(rows[i][j]["id"])
                if now is None or not np.array_equal(
                    np.asarray(now["vector"], dtype=np.float32), np.asarray(row["vector"], dtype=np.float32)
                ):
                    stale.append(i)
                    break
                hits.append(SearchResult(str(row["id"]), float(scores[j]), now["text"], dict(now["metadata"] or {})))
            results.append(hits)
        if stale:
            # a winner rewritten since the search (another writer's raise of M) or replaced: the state is read again
            # and the query vectors made under it, as the rows now stored were
            with self._lock:
                self._sync()
                if self._dim == qg.dim and (self.metric == "IP" or self._state.norm_bound is not None):
                    data, q64 = self._query_vectors(qg), self._query_centred(qg)
            again = search(data[stale], self._fields("vector", "text", "metadata"))
            for i, row in zip(stale, again, strict=True):
                rows[i] = row
                results[i] = self._rank(q64[i], row, k)
        short = [i for i, row in enumerate(rows) if len(row) < k]
        if short and index_type != "flat":
            self._exact_when_short(q64, k, filter, short, min(len(rows[i]) for i in short), results)
        return results

    def _proven_flat(
        self,
        q64: Gaussians,
        data: np.ndarray,
        k: int,
        pool: int,
        filter: str,
        state: _Reduction,
        search: Callable[..., list[list[dict[str, Any]]]],
    ) -> tuple[list[list[dict[str, Any]]], list[tuple[np.ndarray, np.ndarray]]]:
        """The exact top ``k`` of a flat search (``prove_flat``): :func:`~kl_retrievers.gaussian.refine_top_k`
        over Milvus' float32 candidates, re-scored in float64 from the stored rows.

        The candidates of ``c`` rows are a flat search of that many (at most :data:`MAX_TOPK`); a pool holds at most
        ``max(k, MAX_TOPK - 1)`` rows (one search returns the pool and the best row left out, except where
        ``k = MAX_TOPK``), and a query that such a pool does not prove goes to the fallback below. The candidates
        are read as ``-KL`` less the query constant (inner product: the score; L2: ``(2 M^2 - dist) |q~| / (2 M)``,
        plus the offset ``o`` in the shift). Their error bound is :func:`_flat_error_bound` at the ``k``-th float64
        score of the first pool, which every later ``k``-th score is at least, so it holds for every row that can
        enter the top ``k``. With L2 it also needs every row the search ranked to be reduced with ``state``'s
        ``M`` (:meth:`_rows_follow`, one more request per candidate search, none where the first search returned
        every matching row): where not (another writer raised or lowered ``M`` meanwhile), the bound is infinite
        and the query goes to the fallback. A query the pools cannot prove scores every matching row in
        float64 when at most ``max(k, exact_threshold)`` match; above that, a warning and the best rows re-scored.
        Exact ties are broken among every row re-scored (the proof is strict: all the rows tied with the ``k``-th
        are among them) by the stored insertion order, as :meth:`_top` breaks them. The matching rows are counted (a
        request) only where a wider pool or the fallback needs their number: where every query's first search comes
        back short, each has returned every matching row, and that is their number (one request, so one filter and
        one snapshot for every query: their lengths agree; a query with fewer rows than the others would hold a
        ``-1`` label and go to the fallback). Where only some come back short, the lengths disagree and prove
        nothing: the rows are counted.

        Returns:
            Per query, its rows (each ``{"id", "vector"(, "added")}``, one stored version) and ``(order, scores)``
            as :meth:`_top` gives them.
        """
        nq = len(q64)
        if not nq:
            return [], []
        # the first pool: at most MAX_TOPK - 1 rows, so that one search returns it and the best row left out (the
        # witness); wider pools are capped likewise (max_pool)
        first = max(k, min(pool, MAX_TOPK - 1))
        limit = min(first + 1, MAX_TOPK)
        first_hits = search(data, self._fields("vector"), limit)
        hits: list[list[dict[str, Any]]] | None = first_hits  # candidates' first search, done
        counted: list[int] = []  # the matching rows, counted only where needed (one more request)
        lengths = [len(row) for row in first_hits]
        everything = max(lengths) < limit  # every query came back short: each holds every matching row
        if everything:  # their number (the first pool then holds them all: re-scored, the bound unused)
            counted.append(max(lengths))
        elif limit <= first:  # k = MAX_TOPK: a full search says nothing of the rows left out
            counted.append(self._count(filter))
        # else (all full, or some short and some full: lengths that disagree say nothing): counted where needed

        def n_allowed() -> int:
            if not counted:
                counted.append(self._count(filter))
            return counted[0]

        kk = min(k, counted[0]) if counted else k
        if not kk:
            return [[] for _ in range(nq)], [(np.zeros(0, dtype=np.int64), np.zeros(0)) for _ in range(nq)]
        first = min(first, counted[0]) if counted else first  # as refine_top_k takes it
        assert self._dim is not None
        seen = _PoolRows(self._dim)
        shift = np.asarray(kl_query_constant(q64), dtype=np.float64)
        m = state.norm_bound
        if self.metric == "IP":
            m = None
        else:
            assert m is not None
            qnorm = np.linalg.norm(np.asarray(kl_query_vectors(q64), dtype=np.float64), axis=1)
            shift = shift + state.offset  # <q~, d~> = <q~, d^> + o
        centre = None if m is None or state.centre is None else np.asarray(state.centre)
        scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (queries, rows, float64 scores)
        bound = np.zeros(0)
        first_scores: list[tuple[np.ndarray, np.ndarray]] = []  # the first pool's, scored for the bound
        unfollowed: set[int] = set()  # queries whose candidates were under another M (_rows_follow)

        def rescore(qi: np.ndarray, lab: np.ndarray) -> np.ndarray:
            if first_scores and np.array_equal(first_scores[0][0], lab):  # refine_top_k's first re-scoring
                scores = first_scores.pop()[1]
            else:
                scores = neg_kl_rows(q64[qi], seen.gaussians(), lab)
            scored.append((qi, lab, scores))
            return scores

        def candidates(qi: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            nonlocal bound, hits
            lab = np.full((qi.size, c), -1, dtype=np.int64)
            approx = np.full((qi.size, c), -np.inf)
            every = hits is not None and everything  # the first search returned every matching row: all re-scored
            found = hits if hits is not None else search(data[qi], self._fields("vector"), min(c, MAX_TOPK))
            hits = None  # the first search (every query) is the first pool's
            follow = every or self._rows_follow(state, qi.size)  # the state read after the search it vouches for
            for j, row in enumerate(found):
                lab[j, : len(row)] = seen.numbers(row)
                dist = np.asarray([float(r["distance"]) for r in row], dtype=np.float64)
                # ||x_q - x_d||^2 = 2 M^2 - 2 (M / |q~|) <q~, d^>
                approx[j, : len(row)] = dist if m is None else (2.0 * m * m - dist) * qnorm[qi[j]] / (2.0 * m)
            if not bound.size:  # the first pool (every query): the bound at its k-th float64 score
                pool_rows = lab[:, :first]
                first_scores.append((pool_rows, neg_kl_rows(q64[qi], seen.gaussians(), pool_rows)))
                kth = np.sort(first_scores[0][1], axis=1)[:, -kk]
                bound = _flat_error_bound(q64, -kth, m, centre)
            # rows under another M than the query's: their float32 scores prove nothing (the fallback scores them)
            if not follow:
                unfollowed.update(int(i) for i in qi)  # the reason was logged by _rows_follow
            return lab, approx, bound[qi] if follow else np.full(qi.size, np.inf)

        def fallback(qi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            count = n_allowed()
            scan = count <= max(kk, self.exact_threshold)
            if scan:
                logger.info(
                    "flat search: the float32 candidates of %d query(ies) are not provably enough for the exact top "
                    "k=%d; scoring all %d matching rows in float64",
                    qi.size,
                    kk,
                    count,
                )
            else:
                moved = sum(int(i) in unfollowed for i in qi)
                if not moved:
                    why = "float32 rounding is too coarse for their documents' scores"
                elif moved == qi.size:
                    why = "their rows may not all have been under the bound M of their query vectors, as logged above"
                else:
                    why = (
                        f"for {moved} of them the rows may not all have been under the bound M of their query "
                        "vectors, as logged above; for the others float32 rounding is too coarse for their documents' "
                        "scores"
                    )
                logger.warning(
                    "flat search: the float32 candidates of %d query(ies) are not provably enough for the exact top "
                    "k=%d (%s), and %d rows match, above exact_threshold=%d: those results may miss documents (raise "
                    "exact_threshold to score every matching row exactly)",
                    qi.size,
                    kk,
                    why,
                    count,
                    self.exact_threshold,
                )
                rows, scores = self._best_scored(qi, kk, seen, scored)
                return rows, scores
            best: list[list[dict[str, Any]]] = [[] for _ in range(qi.size)]
            best_scores = [np.zeros(0) for _ in range(qi.size)]
            for page in self._iter_all(self._fields("vector"), filter=filter):
                g = document_gaussians_from_vectors([r["vector"] for r in page], self._dim)
                page_scores = neg_kl_rows(q64[qi], g, np.broadcast_to(np.arange(len(page)), (qi.size, len(page))))
                for j in range(qi.size):
                    merged, merged_scores = best[j] + page, np.concatenate([best_scores[j], page_scores[j]])
                    order = self._tie_order(merged, merged_scores)[:kk]
                    best[j], best_scores[j] = [merged[o] for o in order], merged_scores[order]
            lab = np.full((qi.size, kk), -1, dtype=np.int64)
            for j, row in enumerate(best):
                lab[j, : len(row)] = seen.numbers(row)
            return lab, rescore(qi, lab)

        allowed = counted[0] if counted else n_allowed
        # tie_rank None (insertion order: _best_scored), max_pool MAX_TOPK - 1; positional, as tests' spies pass them
        refine_top_k(nq, kk, allowed, first - kk, candidates, rescore, fallback, shift, None, MAX_TOPK - 1)
        lab, scores = self._best_scored(np.arange(nq), kk, seen, scored)
        rows = [[seen.rows[r] for r in row if r >= 0] for row in lab]
        return rows, [(np.arange(len(row)), scores[i, : len(row)]) for i, row in enumerate(rows)]

    def _rows_follow(self, state: _Reduction, nq: int) -> bool:
        """Whether a flat search made after ``state`` was read ranked only rows reduced with its ``M`` (metric L2;
        ``True`` for inner product, whose rows are never rewritten); called after that search, for ``nq`` queries.

        A proof reads each float32 distance under the ``M`` the query vectors were made with. A row rewritten
        under a larger ``M'`` reads ``(M'^2 - M^2) |q~| / (2 M)`` too low, so it can be left out of a pool that the
        witness then wrongly proves (a row under a smaller bound reads too high: a proof stays sound, only looser).
        A writer stores a new ``M`` (version + 1, *rewrite pending*) before it rewrites any row (module docstring,
        *Several writers*), so every row is under ``state``'s ``M`` when ``state`` was not pending and the stored
        publication (version and writer token), read again now (one ``describe_collection``), is still
        ``state``'s: a raise stored between the two reads changes it. A pending ``state`` (a rewrite not marked
        done, rows under two bounds) proves nothing either: the rows a raise has not rewritten yet read too high
        (harmless), but those a :meth:`repair` lowering ``M`` has not rewritten read too low, and the state does
        not tell the two apart.

        Two writers that both read their own publication of one version back (:meth:`_publish`) rewrite the rows
        under two bounds, and the winner can mark its rewrite done while the loser's still writes rows under the
        replaced ``M``: so a row rewrite marked in progress (when ``state`` was read, or now) proves nothing either,
        nor does one started in between (a new rewrite generation); the loser keeps its mark until it has rewritten
        every row under the stored publication (:meth:`_rewrite_rows`).
        """
        if self.metric == "IP":
            return True
        hint = ""  # a rewrite mark can be one a killed writer left (dropped after _REWRITE_STALL_S by an add or repair)
        if state.rewriting:
            hint = "; call repair() if no writer is running"
            why = "another writer was rewriting the rows when the search began"
        elif not state.pending:
            info = self._client.describe_collection(self.collection_name, timeout=self.timeout)
            now = self._stored_config(info)[1]
            same = (now.version, now.writer, now.rewrite_gen) == (state.version, state.writer, state.rewrite_gen)
            if same and not now.rewriting:
                return True
            if (now.version, now.writer) == (state.version, state.writer):
                hint = "; call repair() if no writer is running"
            why = (
                f"another writer stored M={now.norm_bound} (version {now.version}) since the search read it"
                if (now.version, now.writer) != (state.version, state.writer)
                else "another writer rewrote the rows during the search"
            )
        else:
            why = "a rewrite of every row under a new M is pending (repair() finishes an abandoned one)"
        logger.warning(
            "flat search: %s, so its float32 candidates cannot prove the top k of %d query(ies): sent to the "
            "float64 fallback%s",
            why,
            nq,
            hint,
        )
        return False

    def _best_scored(
        self, qi: np.ndarray, k: int, seen: _PoolRows, scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query of ``qi``, the top ``k`` of every row re-scored for it (``scored``: queries, rows of ``seen``,
        float64 scores), exact ties broken as :meth:`_top` breaks them; ``-1`` / ``-inf`` padding."""
        lab = np.full((qi.size, k), -1, dtype=np.int64)
        out = np.full((qi.size, k), -np.inf)
        where = {int(i): j for j, i in enumerate(qi)}
        parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(qi.size)]
        for queries, rows, scores in scored:
            for p, i in enumerate(queries):
                j = where.get(int(i))
                if j is not None:
                    parts[j].append((rows[p], scores[p]))
        for j, found in enumerate(parts):
            if not found:
                continue
            rows = np.concatenate([r for r, _ in found])
            scores = np.concatenate([s for _, s in found])
            rows, first = np.unique(rows, return_index=True)  # a row re-scored twice scores the same
            scores = scores[first]
            keep = rows >= 0
            if keep.sum() > k:  # only the rows scoring at least the k-th can be among the top k
                keep &= scores >= np.partition(scores[keep], -k)[-k]
            rows, scores = rows[keep], scores[keep]
            order = self._tie_order([seen.rows[r] for r in rows], scores)[:k]
            lab[j, : order.size], out[j, : order.size] = rows[order], scores[order]
        return lab, out

    def _exact_when_short(
        self, q64: Gaussians, k: int, filter: str, short: list[int], fewest: int, results: list[list[SearchResult]]
    ) -> None:
        """Score every matching row exactly for the queries HNSW / IVF answered with fewer than ``k`` hits.

        A graph or cluster search under a selective filter (or with few IVF lists probed) can miss
        matching rows; the interface promises every matching document when fewer than ``k`` exist.
        When more rows match than were returned and at most ``max(k, exact_threshold)`` do, they are
        fetched (vector, text and metadata: one version each) and ranked exactly, like ``KLStore``.
        """
        count = self._count(filter)
        if count <= fewest:
            return  # the short rows hold every match
        if count > max(k, self.exact_threshold):
            logger.warning(
                "%s search returned fewer than k=%d hits although %d rows match; above exact_threshold=%d, so "
                "not re-scored exactly (raise ef_search / nprobe or exact_threshold)",
                self.index_type,
                k,
                count,
                self.exact_threshold,
            )
            return
        matching = [
            r for page in self._iter_all(self._fields("vector", "text", "metadata"), filter=filter) for r in page
        ]
        for i in short:
            results[i] = self._rank(q64[i], matching, k)

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
            self._forget()

    def close(self) -> None:
        """Close the client connection the store opened; on Milvus Lite, also stop serving the file when no other
        open ``MilvusKLStore`` of this process uses it, which releases it for another process. A client given as
        ``client=`` is left open: it is the caller's to close.

        A ``pymilvus.MilvusClient`` made outside the store on the same file in this process (Milvus Lite serves
        each file once per process) is cut off as well, unless Milvus Lite already served the file when the first of
        these stores opened it (that client started the server: it is left running); a store given ``client=``
        leaves the file to its owner.

        Closing a closed store does nothing (also on leaving a ``with`` block: see :meth:`__exit__`); any other use
        of it raises ``RuntimeError`` (the store is closed).
        """
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, _ClosedClient(f"MilvusKLStore(collection={self.collection_name!r})")
        if not self._client_given:
            client.close()
        lite, self._lite_path = self._lite_path, None
        if lite is None:
            return
        with _lite_lock:
            users = _lite_users.get(lite, 1) - 1
            if users > 0:
                _lite_users[lite] = users
                return
            _lite_users.pop(lite, None)
            if lite in _lite_borrowed:  # the server another client of this process started: left to it
                _lite_borrowed.discard(lite)
                return
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # pragma: no cover - another milvus-lite: released when the process exits
            return
        server_manager_instance.release_server(lite)

    def __enter__(self) -> MilvusKLStore:
        """The store itself, for ``with MilvusKLStore(...) as store:``.

        Raises:
            RuntimeError: The store is closed.
        """
        if isinstance(self._client, _ClosedClient):
            raise self._client.error()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """:meth:`close` the store on leaving the ``with`` block; an exception raised in it propagates."""
        self.close()
