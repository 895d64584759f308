"""``KLStore``: a document store searched by exact ``-KL(Q || D)`` with FAISS, in this process.

Documents and queries are diagonal Gaussians (see :mod:`kl_retrievers.gaussian`). A ``KLStore`` is
two parts behind the :class:`~kl_retrievers.store.GaussianStore` interface:

* what it holds, a :class:`~kl_retrievers.store._table.DocumentTable`: every document's float32
  Gaussian, its id, text and metadata, with tombstones for deleted rows; plus the lock, the
  persistence (:mod:`kl_retrievers.store._format`) and the metadata filters;
* how it searches, an engine (:mod:`kl_retrievers.store._engines`) owning the FAISS index:

  * ``"flat"`` (default, exact): ``IndexFlatIP`` over the ``2k + 1``-dimensional rewrite ``d~``
    of each document, every mean first centred on the mean of the first batch added (which
    changes no score and keeps float32 cancellation small); a query searches with its centred
    ``q~``, a small pool of candidates is re-scored with the exact ``-KL`` in float64, and a bound
    on the float32 error proves that the pool holds the top ``k`` (else the pool grows, and at
    last every row is scored in float64: :func:`kl_retrievers.gaussian.exact_top_k`'s section).
    Rankings are the float64 ones and reported scores the true ``-KL`` (query constant ``c(q)``
    included). Means and variances whose rewrite float32 cannot hold are refused, naming the row.
    Deletions (and the old rows of upserts) are tombstones here too, left out of searches exactly
    (the selector a metadata filter uses) and compacted as below: compacting at every one-document
    write cost 36 ms at 100,000 x 64 under the write lock (``python benchmarks/store_writes.py``).
  * ``"hnsw"`` / ``"ivf"`` (approximate, optional ``"sq8"`` or ``"pq"`` compression): built on
    the MIPS -> L2 reduction of METHOD.md.  Every mean (queries too) is first centred on the mean
    of the document means at build time (saved as ``index_centre``), like the flat index: no score
    changes, and recall no longer depends on where the origin of the means lies (a common shift
    of 20 had cut HNSW recall@10 from 0.99 to 0.50).  The first coordinate of the centred ``d~``
    (a sum over all ``k`` dimensions) is then shifted by ``o``, its mean over a sample at build time: ``q~`` has ``1``
    there, so ``<q~, d~>`` only drops by the constant ``o`` and no ranking changes, but a large
    shared offset no longer dominates every norm (IVF recall on synthetic Gaussians rises
    sharply).  Every shifted document vector ``d^`` gets one more coordinate
    ``sqrt(M^2 - ||d^||^2)`` (``M = norm_headroom * max ||d^||``, the headroom leaves room for
    later documents), a query gets ``0`` there and is scaled to norm ``M``; the index is
    searched by L2 and a candidate pool is re-scored with the exact ``-KL`` (the pool is trimmed
    in float32 first only as far as a bound on the float32 error proves it harmless).  A later
    document whose norm exceeds ``M`` triggers a rebuild (logged, counted in ``rebuild_count``).
    Deletions are tombstones (HNSW has no ``remove_ids``), excluded at search time with an
    ``IDSelector`` and compacted (every live row re-added) on :meth:`KLStore.compact`, a rebuild,
    or when more than ``compact_threshold`` of the rows are dead; :meth:`KLStore.save` writes them as
    they are (``tombstones.npy``).
  * ``compression="pq"`` on ``"ivf"``: lists are still chosen by L2 on the reduced vectors, but
    the PQ codes are scanned by inner product (the same ranking: every reduced document has norm
    ``M``), because L2 lookup tables spend their precision on the constant ``2 M^2``;
    ``pq_nbits=4`` uses FAISS's SIMD fast-scan lists.  ``refine="sq8"`` (or ``"fp16"``) keeps a
    second, finer copy of the reduced vectors that re-ranks a large pool inside FAISS, so only
    ``k + max(16, 2k)`` candidates per query reach the exact re-scoring.  Measured at 1M
    synthetic Gaussians in ``docs/ann.md``.

Scores are ``-KL`` (:data:`~kl_retrievers.gaussian.SCORE_NAME`): **higher is better**. Documents
whose scores tie exactly rank the later added (higher row) first among the candidates a search
considers, on every index and search path (``FaissEngine.tie_rank``). On the flat index (and the
exact and float64 paths) that makes a search at ``k`` a prefix of one at ``k + 1``; HNSW and IVF
re-score a candidate pool whose size grows with ``k``, so a deeper search there may find a
document a shallower one missed. FAISS is imported when a store first needs it, not with this module.

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

import contextvars
import difflib
import importlib.util
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from itertools import compress
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import numpy as np

from kl_retrievers._checks import check_bool
from kl_retrievers._errors import ConcurrentSaveError, NothingSavedError
from kl_retrievers._io import (
    atomic_dir,
    check_replace_target,
    describe_kl_folder,
    finite_json,
    library_version,
    load_unchanged,
    recover_dir,
    user_path,
)
from kl_retrievers._warn import warn
from kl_retrievers.filters import MetadataFilter, _filter_key, compile_filter
from kl_retrievers.gaussian import SCORE_DIRECTION, SCORE_NAME, Gaussians
from kl_retrievers.store import _format
from kl_retrievers.store._base import (
    MAX_INT32,
    MAX_NORM_HEADROOM,
    DeleteReport,
    EncoderLike,
    GaussianStore,
    IndexType,
    SearchResult,
    StoredDocument,
    StoreFormatError,
    _check_store_args,
    _identity_encoder,
    _NewDocuments,
    _query_gaussians,
    _refuse_model_name,
    _RWLock,
    _shared_saved_model,
)
from kl_retrievers.store._engines import _faiss, _read_index, new_engine
from kl_retrievers.store._format import FORMAT_VERSION, INDEX_PARAMS
from kl_retrievers.store._table import DocumentTable, KeyedFilter

if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

logger = logging.getLogger(__name__)

__all__ = ["KLStore", "FORMAT_VERSION", "COMPRESSIONS", "REFINES", "Compression", "Refine"]

#: Asked by a store's write (``KLStore``'s, ``KLHybridStore``'s, ``MilvusKLStore``'s add and delete) once it holds
#: its write lock, before it changes anything: ``False`` means write nothing. The adapters' async writes set it
#: (:func:`kl_retrievers._adapters.store_write_unless_cancelled`) to their caller's cancellation, so that a write
#: that waited for the lock behind a search or another write, cancelled meanwhile, writes nothing, while what comes
#: before the lock (a delete's filter judged under the read lock, an add's checks and casts) runs without it.
#: ``None`` (the default): every write goes ahead.
_WRITE_PROCEEDS: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "kl_retrievers_write_proceeds", default=None
)


def _write_proceeds() -> bool:
    """Whether the write about to change the store goes ahead (:data:`_WRITE_PROCEEDS`); called under its write lock.

    Examples:
        >>> _write_proceeds()
        True
    """
    proceed = _WRITE_PROCEEDS.get()
    return proceed is None or proceed()


#: The prefix of the name that :class:`~kl_retrievers.langchain.EmbeddingsGaussianEncoder` records (a LangChain
#: ``Embeddings`` wrapped as a Gaussian encoder): not a model that can be loaded by name.
_LANGCHAIN_PREFIX = "langchain:"

#: Seconds a failure to load a store's saved model that a retry may fix (an ``OSError``: a file or network error,
#: a hub that could not be reached or does not have the model) is kept and raised again without any lookup; the
#: first call that needs the model after that tries once more (:meth:`KLStore._load_saved_encoder`).
_SAVED_ENCODER_RETRY_S = 30.0

#: The largest share of tombstoned rows a store keeps, whatever its ``compact_threshold`` (at 1.0 no share exceeds
#: it, and a store upserting the same documents grew without bound).
_MAX_DEAD_SHARE = 0.9

#: The error for a callable filter of ``delete(filter=...)`` that modifies the store.
_DELETE_FILTER_WRITES = (
    "this thread is choosing the documents to delete (inside a callable filter of delete) and cannot modify the "
    "store there; modify it after delete returns"
)


def _torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def _recorded_backend(encoder_info: Any, *, hint: str = "pass encoder= to choose") -> Backend | None:
    """The backend (``"torch"`` / ``"onnx"``) a store's encoder ran on, from its config.json record, else ``None``.

    An ONNX encoder's config records ``backend: "onnx"``; a torch encoder's config records no backend,
    so a recorded encoder config without one was built with torch. When torch is not installed, the
    model is loaded on the library's default backend instead, with a warning (scores can differ slightly).

    Args:
        encoder_info: The ``encoder`` record of a store's config.json (``{"name_or_path", "config"}``).
        hint: How the caller chooses the backend itself, ending the warning.

    Returns:
        ``"torch"``, ``"onnx"``, or ``None`` (no encoder config recorded, an unknown backend, or torch
        recorded but not installed): the library's default backend.

    Examples:
        >>> _recorded_backend({"name_or_path": "m", "config": {"dim": 8, "backend": "onnx"}})
        'onnx'
        >>> _recorded_backend({"name_or_path": "m", "config": None}) is None
        True
    """
    cfg = encoder_info.get("config") if isinstance(encoder_info, dict) else None
    if not isinstance(cfg, dict):
        return None
    backend = cfg.get("backend", "torch")
    if backend not in ("torch", "onnx"):
        return None
    if backend == "torch" and not _torch_installed():
        logger.warning(
            "the store was built with the torch backend, which is not installed; encoding queries on the "
            "library's default backend instead (scores can differ slightly; %s)",
            hint,
        )
        return None
    return "onnx" if backend == "onnx" else "torch"


def _unloadable_saved_name(name: str) -> str | None:
    """Why the saved model name ``name`` cannot be loaded by name (no hub lookup can help), else ``None``.

    Examples:
        >>> _unloadable_saved_name("langchain:FakeEmbeddings")  # doctest: +ELLIPSIS
        'it names a LangChain Embeddings, ...'
        >>> _unloadable_saved_name("minilm-gauss-soup") is None
        True
    """
    if name.startswith(_LANGCHAIN_PREFIX):
        return "it names a LangChain Embeddings, which is not saved with the store and cannot be loaded by name"
    from kl_retrievers.hub import is_path_name  # ./enc, models/v1/enc, an absolute path: never a hub id

    if is_path_name(name) and not user_path(name).exists():
        return "it names a model folder that no longer exists"
    return None


def _saved_model_source(name: str) -> str:
    """Where the saved model name ``name`` is loaded from, for the log line that names it: a bundled model, a local
    folder (its absolute path; a relative one is read from the current directory), else the hub.

    Examples:
        >>> _saved_model_source("minilm-gauss-soup")
        'a model bundled with kl-retrievers'
        >>> _saved_model_source("no-such-owner/no-such-model")
        'not a local folder: a Hugging Face hub id (an installed copy, the hub cache or a download)'
    """
    from kl_retrievers.hub import bundled_name

    if bundled_name(name) is not None:
        return "a model bundled with kl-retrievers"
    folder = user_path(name)
    if folder.is_dir():
        relative = "" if folder.is_absolute() else ", a relative path read from the current directory"
        return f"the local folder {folder.resolve()}{relative}"
    return "not a local folder: a Hugging Face hub id (an installed copy, the hub cache or a download)"


def _encoder_record(encoder: Any) -> tuple[dict[str, Any], list[str]]:
    """The ``encoder`` record a KLStore's config.json holds for ``encoder`` (``{"name_or_path", "config"}``),
    and where its config held NaN or Infinity (recorded as null: config.json is standard JSON).

    The config is its ``to_dict()``, or ``None`` when it has none or it is not JSON.

    Examples:
        >>> class Enc:
        ...     name_or_path = "models/enc"
        >>> _encoder_record(Enc())
        ({'name_or_path': 'models/enc', 'config': None}, [])
    """
    cfg = getattr(encoder, "config", None)
    found: list[str] = []
    try:
        cfg_dict = finite_json(cfg.to_dict(), found=found) if cfg is not None else None
        json.dumps(cfg_dict, allow_nan=False)
    except (TypeError, ValueError, AttributeError):
        cfg_dict, found = None, []
    return {"name_or_path": str(getattr(encoder, "name_or_path", "")), "config": cfg_dict}, found


#: :meth:`KLStore.load`'s options after ``path`` and ``encoder``, in their former positional order.
_LOAD_OPTIONS = ("mmap", "verify_checksums")


class _Default:
    """A load option's default when no keyword gave it, so that a positional value beside *any* keyword is refused.

    Its repr is the default's, so ``help(KLStore.load)`` shows ``mmap: bool = False``.
    """

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_MMAP_DEFAULT: Any = _Default(False)
_VERIFY_DEFAULT: Any = _Default(True)


def _load_options(name: str, positional: tuple[Any, ...], mmap: Any, verify_checksums: Any) -> tuple[bool, bool]:
    """``(mmap, verify_checksums)`` of a :meth:`KLStore.load` call, some perhaps given by position (deprecated).

    Options given by position warn (``DeprecationWarning``, naming each keyword) and are taken, as the signature
    before they became keyword-only did; options not given at all take their defaults.

    Raises:
        TypeError: More than :data:`_LOAD_OPTIONS` given by position, or one given both by position and by
            keyword (whatever the keyword's value, as Python's own "multiple values" error).

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     _load_options("KLStore", (True,), _MMAP_DEFAULT, _VERIFY_DEFAULT)
        (True, True)
        >>> _load_options("KLStore", (), _MMAP_DEFAULT, False)
        (False, False)
    """
    if len(positional) > len(_LOAD_OPTIONS):
        raise TypeError(
            f"{name}.load() takes at most 4 positional arguments (path, encoder, and the deprecated mmap and "
            f"verify_checksums); got {2 + len(positional)}"
        )
    given = {"mmap": mmap, "verify_checksums": verify_checksums}
    for option, value in zip(_LOAD_OPTIONS, positional, strict=False):
        if not isinstance(given[option], _Default):
            raise TypeError(f"{name}.load() got multiple values for argument {option!r} (by position and by keyword)")
        given[option] = value
    if positional:
        keywords = ", ".join(f"{option}={value!r}" for option, value in zip(_LOAD_OPTIONS, positional, strict=False))
        warnings.warn(
            f"{name}.load(path, encoder, {', '.join(repr(v) for v in positional)}): passing "
            f"{' and '.join(_LOAD_OPTIONS[: len(positional)])} by position is deprecated (keyword-only from the next "
            f"release, as in KLHybridStore.load); pass {name}.load(path, encoder, {keywords})",
            DeprecationWarning,
            stacklevel=3,
        )
    resolved = {option: value.value if isinstance(value, _Default) else value for option, value in given.items()}
    return resolved["mmap"], resolved["verify_checksums"]


class _TopIds(NamedTuple):
    """:meth:`KLStore._top_ids`: each query's ranked ids and scores, and what the filter allowed.

    Attributes:
        ids: Each query's ids, best first (what :meth:`KLStore.search_batch` returns, as ids).
        scores: Each query's float64 ``-KL`` scores, in the order of ``ids``.
        live_ids: With a filter, the live documents' ids in row order (insertion order); else ``None``.
        allowed: With a filter, whether it allows each of ``live_ids``; else ``None``.
    """

    ids: list[list[str]]
    scores: list[np.ndarray]
    live_ids: list[str] | None
    allowed: np.ndarray | None


class _Ranking(NamedTuple):
    """:meth:`KLStore._rank`: the rows a search may return, and each query's ranked rows and scores.

    Attributes:
        mask: Per row (tombstones included), whether the search may return it; ``None`` for every
            row. Always an array with a filter.
        top: ``(rows, scores)`` of shape ``(nq, kk)``, best first, ``-1`` / ``-inf`` padding
            (:meth:`FaissEngine.top_k`); ``None`` when nothing was ranked.
    """

    mask: np.ndarray | None
    top: tuple[np.ndarray, np.ndarray] | None


#: Codes of a compressed index (``None``: uncompressed): 8-bit scalar quantizer, product quantizer.
Compression = Literal["sq8", "pq"]
#: ``None`` and the values of :data:`Compression`, which the runtime checks read.
COMPRESSIONS: tuple[Compression | None, ...] = (None, *get_args(Compression))
#: Second-stage codes that re-rank a compressed index's pool in FAISS before the exact re-scoring.
Refine = Literal["sq8", "fp16"]
#: ``None`` and the values of :data:`Refine`, which the runtime checks read.
REFINES: tuple[Refine | None, ...] = (None, *get_args(Refine))


#: The largest ``pq_nbits``: FAISS's product quantizers take up to 24, but 2^16 centroids per sub-quantizer
#: already need 4 x 2^16 documents before the index is built (:meth:`ApproxEngine.min_build_size
#: <kl_retrievers.store._engines.ApproxEngine.min_build_size>`), and FAISS trains such codebooks slowly.
MAX_PQ_NBITS = 16
#: Saved index parameters that are not integers counts (checked by _check_settings / _check_store_args).
_OTHER_PARAMS = ("compression", "refine", "norm_headroom", "exact_threshold", "compact_threshold", "seed")
#: Integer settings, in the order the constructor checks them (the saved index parameters' order).
_INT_SETTINGS = tuple(name for name in INDEX_PARAMS if name not in _OTHER_PARAMS)
#: Settings that shape the FAISS index (its kind, sizes and codes; checked against index.faiss on load):
#: fixed once a store holds documents.
BUILD_SETTINGS = ("index_type", "hnsw_m", "nlist", "compression", "pq_m", "pq_nbits", "refine")
#: Settings read at every search (or at the next (re)build): they may change at any time, checked as by the constructor.
#: The saved index parameters that do not shape the index (in their order), and ``batch_size`` (not saved).
TUNABLE_SETTINGS = (*(name for name in INDEX_PARAMS if name not in BUILD_SETTINGS), "batch_size")
_SETTINGS = frozenset(BUILD_SETTINGS + TUNABLE_SETTINGS)
#: ``KLStore``'s default ``nprobe``: left as it is, above a small ``nlist`` (it then probes every list) without a
#: warning, where an ``nprobe`` given above ``nlist`` warns (:meth:`KLStore._warn_nprobe_above_nlist`).
DEFAULT_NPROBE = 32
#: Settings read by one kind of index only: (setting, what it needs) -> assigning one to a store of another kind
#: warns (the constructor takes every setting, at its default, for every kind).
_KIND_SETTINGS = {
    "hnsw_m": ("index_type", "hnsw"),
    "ef_search": ("index_type", "hnsw"),
    "ef_construction": ("index_type", "hnsw"),
    "nlist": ("index_type", "ivf"),
    "nprobe": ("index_type", "ivf"),
    "pq_m": ("compression", "pq"),
    "pq_nbits": ("compression", "pq"),
}


def _check_settings(
    compression: str | None,
    refine: Any,
    exact_threshold: Any,
    compact_threshold: Any,
    seed: Any,
    *,
    hnsw_m: int = 32,
    pq_nbits: int = 8,
) -> None:
    """KLStore's own settings: ``refine``, ``exact_threshold``, ``compact_threshold``, ``seed``, and the
    ranges FAISS allows for ``hnsw_m`` and ``pq_nbits`` (ValueError naming the value)."""
    if hnsw_m < 2:  # FAISS's HNSW crashes the process (no exception) on the first add with M = 1
        raise ValueError(f"hnsw_m must be an integer >= 2 (neighbours per node of the HNSW graph); got {hnsw_m!r}")
    if not 1 <= pq_nbits <= MAX_PQ_NBITS:
        raise ValueError(
            f"pq_nbits must be an integer from 1 to {MAX_PQ_NBITS} (bits per product-quantizer code; 8 is standard, "
            f"4 uses FAISS's fast-scan lists on 'ivf'); got {pq_nbits!r}"
        )
    if refine not in REFINES:
        raise ValueError(f"refine must be one of {REFINES}; got {refine!r}")
    if refine is not None and compression is None:
        raise ValueError(
            f"refine={refine!r} applies to a compressed index (compression 'sq8' or 'pq'); "
            "an uncompressed one is already exact"
        )
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


#: The largest value of each integer FAISS receives (a C ``int``): larger ones raised a raw ``OverflowError``
#: at the first add or search. A filtered HNSW search asks FAISS for up to 8 x ``ef_search``
#: (:meth:`ApproxEngine._approx_candidates <kl_retrievers.store._engines.ApproxEngine._approx_candidates>`
#: widens it).
_FAISS_MAXIMA = {
    "dim": MAX_INT32,
    "hnsw_m": MAX_INT32,
    "ef_search": MAX_INT32 // 8,
    "ef_construction": MAX_INT32,
    "nlist": MAX_INT32,
    "nprobe": MAX_INT32,
    "pq_m": MAX_INT32,
}


def _check_all(values: dict[str, Any], dim: int | None = None) -> None:
    """Every constructor check of the settings ``values`` (one value per name in :data:`_SETTINGS`)."""
    ints = [(name, values[name]) for name in _INT_SETTINGS]
    _check_store_args(
        values["index_type"],
        values["compression"],
        dim,
        values["norm_headroom"],
        [*ints, ("batch_size", values["batch_size"])],
        COMPRESSIONS,
        _FAISS_MAXIMA,
    )
    _check_settings(
        values["compression"],
        values["refine"],
        values["exact_threshold"],
        values["compact_threshold"],
        values["seed"],
        hnsw_m=values["hnsw_m"],
        pq_nbits=values["pq_nbits"],
    )


def _normalised(name: str, value: Any) -> Any:
    """A checked setting as the store keeps it (Python ``int`` / ``float``)."""
    if name in _INT_SETTINGS or name in ("exact_threshold", "seed", "batch_size"):
        return int(value)
    if name in ("norm_headroom", "compact_threshold"):
        return float(value)
    return value


class KLStore(GaussianStore):
    """A document store ranked by exact ``-KL(Q || D)`` (higher is better), served by FAISS.

    Args:
        encoder: Optional encoder with ``encode_queries`` / ``encode_documents`` returning numpy
            :class:`Gaussians`, ``name_or_path`` and ``config.to_dict()``; needed to add or
            search by text.
        dim: Gaussian dimension ``k``; inferred from the first :meth:`add` when ``None``.
        index_type: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"``.
        hnsw_m: HNSW graph degree ``M`` (at least 2).
        ef_search: HNSW ``efSearch`` (raised to the candidate pool when smaller).
        ef_construction: HNSW ``efConstruction``.
        nlist: IVF number of lists.
        nprobe: IVF lists probed per query (a value above ``nlist`` acts as ``nlist``, every list, as in FAISS;
            one given above ``nlist`` warns, here (any value but the default 32, which a constructor cannot tell
            from none) or by assignment, as does an assignment of ``nlist`` or ``index_type`` that leaves it above;
            the default is clipped silently). A store-wide setting, like every other: see below.
        compression: ``None``, ``"sq8"`` (8-bit scalar quantizer) or ``"pq"`` (product quantizer).
        pq_m: PQ sub-quantizers; the vector is zero-padded to a multiple of ``pq_m``.
        pq_nbits: Bits per PQ code, 1 to 16 (8 is standard; 4 trains much faster and, on ``"ivf"``,
            scans with FAISS's SIMD fast-scan kernels).
        refine: ``None``, ``"sq8"`` or ``"fp16"`` (compressed indexes only): re-rank the pool of
            ``rescore_pool`` candidates inside FAISS on 8-bit / float16 copies of the reduced
            vectors (+``2k + 2`` or ``2 (2k + 2)`` bytes a document) before the exact re-scoring.
            Where the norm bound ``M`` exceeds float16's range (65504), ``"fp16"`` keeps float32
            copies (``4 (2k + 2)`` bytes; a warning when a build switches to them; docs/ann.md).
        rescore_pool: Minimum candidates re-scored exactly per query on approximate indexes;
            the pool is ``max(rescore_pool, rescore_factor * k)``.
        rescore_factor: See ``rescore_pool``.
        norm_headroom: ``M = norm_headroom * max ||d~||`` for the L2 reduction (from 1 to 1e6).
        exact_threshold: With a filter on an approximate index, search exactly over the
            matching documents when at most this many match (above it, an IVF search scans
            ``nprobe x documents / matching`` lists, at most ``nlist``; docs/ann.md).
        compact_threshold: Fraction of tombstoned (deleted or replaced) rows above which the table and
            the index are compacted, on every index type; :meth:`compact` compacts at once, and :meth:`save`
            writes the tombstones below it as they are (a store past it compacts first).
            Values above 0.9 act as 0.9 (``1.0`` included): a store never holds more than nine dead rows per
            live one, and one whose documents are all deleted holds no rows. Searches of a flat store with
            tombstones leave them out with a FAISS selector, a little slower than over a table without any:
            :meth:`compact` restores the full speed.
        batch_size: Encoder batch size.
        show_progress_bar: Passed to the encoder when adding texts: ``False`` (default, as LangChain's and
            LlamaIndex's embedding wrappers: a server's threads print nothing) never shows its bar, ``True``
            always, ``None`` when stderr is a terminal and there are several batches.
        seed: Seed for the training sample of IVF / SQ / PQ.

    The settings are attributes of the same names. Assigning one is checked as the constructor
    checks it; the search-time ones (``nprobe``, ``ef_search``, ``rescore_pool``, ... :data:`TUNABLE_SETTINGS`)
    apply from the next search, while those that shape the index (``index_type``, ``hnsw_m``,
    ``nlist``, ``compression``, ``pq_m``, ``pq_nbits``, ``refine``: :data:`BUILD_SETTINGS`) can
    change only before the first document is added. Changing one that the store's kind does not read
    (``nprobe`` on an HNSW store, ``ef_search`` on an IVF one) warns; assigning a name that is no
    setting or attribute (FAISS's ``efSearch``) raises ``AttributeError`` naming the closest one.
    There are no per-call values (``search(query, k, filter)`` takes none): an assignment applies to every
    search that starts after it, in every thread, so tune a store before serving it, not per request.

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
        encoder: EncoderLike | None = None,
        dim: int | None = None,
        *,
        index_type: IndexType = "flat",
        hnsw_m: int = 32,
        ef_search: int = 256,
        ef_construction: int = 80,
        nlist: int = 1024,
        nprobe: int = DEFAULT_NPROBE,
        compression: Compression | None = None,
        pq_m: int = 64,
        pq_nbits: int = 8,
        refine: Refine | None = None,
        rescore_pool: int = 100,
        rescore_factor: int = 10,
        norm_headroom: float = 1.1,
        exact_threshold: int = 20000,
        compact_threshold: float = 0.3,
        batch_size: int = 32,
        show_progress_bar: bool | None = False,
        seed: int = 0,
    ) -> None:
        _check_all(
            {
                "index_type": index_type,
                "hnsw_m": hnsw_m,
                "ef_search": ef_search,
                "ef_construction": ef_construction,
                "nlist": nlist,
                "nprobe": nprobe,
                "compression": compression,
                "pq_m": pq_m,
                "pq_nbits": pq_nbits,
                "refine": refine,
                "rescore_pool": rescore_pool,
                "rescore_factor": rescore_factor,
                "norm_headroom": norm_headroom,
                "exact_threshold": exact_threshold,
                "compact_threshold": compact_threshold,
                "seed": seed,
                "batch_size": batch_size,
            },
            dim,
        )
        check_bool(show_progress_bar, "show_progress_bar", allow_none=True)
        _refuse_model_name(encoder, f"{type(self).__name__}(encoder={{}})")
        self.encoder = encoder
        #: The encoder a loaded store was saved with (its ``name_or_path``; ``None``: not recorded, or not loaded).
        self.saved_encoder: str | None = None
        self._saved_encoder_record: dict[str, Any] | None = None  # config.json's encoder record, as loaded
        self._saved_encoder_lock = threading.Lock()  # one thread loads the saved model (_load_saved_encoder)
        self._saved_encoder_problem: str | None = None  # why loading it failed, where no retry can help (kept)
        # Why loading it last failed where a retry may help (an OSError), and when (monotonic()): kept and raised
        # again without a lookup for _SAVED_ENCODER_RETRY_S, then the next call tries once more.
        self._saved_encoder_failure: tuple[str, float] | None = None
        # The weights identity (encoder.weights_sha256) the documents were encoded with: the encoder's when the
        # first documents are added to an empty store, else the one config.json records; kept by every save.
        self._documents_weights: str | None = None
        # The SHA-256 of the backbone under those weights (a delta model's identity does not cover its backbone):
        # taken and kept alike, from the encoder's config at the first add or from config.json's record
        # (encoder.backbone_sha256, else for older saves the recorded encoder config); None when not known.
        self._documents_backbone: str | None = None
        # The record ({"name_or_path", "config"}) of the model those documents were encoded with: the encoder's at
        # the first add, else config.json's. A save by an encoder known to be another model records it, with the
        # weights and backbone, so that a reload names (and lazily loads) the documents' model; None: not known.
        self._documents_model: dict[str, Any] | None = None
        # The SHA-256 of the tokenizer those documents were encoded with (_format.encoder_tokenizer), taken and kept
        # alike (config.json's encoder.tokenizer_identity_sha256); None when not known.
        self._documents_tokenizer: str | None = None
        # When that identity was not known at the first add (an encoder built or trained in memory): the encoder's
        # parameter versions then, so that a save after encoder.save_pretrained of those same weights records the
        # identity they got (_documents_identity); None otherwise.
        self._documents_versions: tuple[tuple[int, int], ...] | None = None
        #: Bumped by every add, upsert and delete (what a wrapper caching something about the documents checks).
        self.write_count = 0
        self.index_type = index_type
        self.hnsw_m, self.ef_search, self.ef_construction = int(hnsw_m), int(ef_search), int(ef_construction)
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        # nprobe given (a constructor value other than the default, or any assignment): see _warn_nprobe_above_nlist
        self._nprobe_given = self.nprobe != DEFAULT_NPROBE
        self.compression, self.pq_m, self.pq_nbits, self.refine = compression, int(pq_m), int(pq_nbits), refine
        self.rescore_pool, self.rescore_factor = int(rescore_pool), int(rescore_factor)
        self.norm_headroom = float(norm_headroom)
        self.exact_threshold, self.compact_threshold = int(exact_threshold), float(compact_threshold)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.show_progress_bar = None if show_progress_bar is None else bool(show_progress_bar)
        self._lock = _RWLock()
        self._dim: int | None = None
        self._table = DocumentTable()
        self._engine = new_engine(self, self._table)
        if dim is not None:
            self._init_dim(int(dim))
        if self._nprobe_given:
            self._warn_nprobe_above_nlist(self.nprobe)

    def _init_dim(self, k: int) -> None:
        self._dim = k
        self._table.reset(k)
        self._engine.reset(k)

    def __setattr__(self, name: str, value: Any) -> None:
        """A setting assigned after construction is checked first (:meth:`_set_setting`); other attributes as usual,
        except that a public name the store does not have is refused (:meth:`_check_public_name`)."""
        if "_engine" in self.__dict__:  # constructed
            if name in _SETTINGS:
                self._set_setting(name, value)
                return
            if not name.startswith("_"):
                self._check_public_name(name)
                if name == "show_progress_bar":
                    check_bool(value, name, allow_none=True)
        super().__setattr__(name, value)

    def _check_public_name(self, name: str) -> None:
        """Refuse assigning a public attribute the store does not have (FAISS's ``efSearch`` for ``ef_search``):
        it would only add an attribute that nothing reads. A subclass may add its own attributes: on one, only a
        setting's name in other case or underscores (``efSearch``, ``efsearch``) is refused (``nlists`` or
        ``batch_sizes`` may be the subclass's own).

        Raises:
            AttributeError: Naming the closest setting or attribute, where there is one.
        """
        if name in self.__dict__ or hasattr(type(self), name):
            return
        known = sorted(_SETTINGS | {n for n in (*self.__dict__, *dir(type(self))) if not n.startswith("_")})
        folded = {n.replace("_", "").lower(): n for n in known}
        close = [folded[key]] if (key := name.replace("_", "").lower()) in folded else []
        if type(self) is not KLStore:
            if not (close and close[0] in _SETTINGS):
                return  # a subclass's own attribute: only a setting's own name, spelt otherwise, is refused
        else:
            close = close or difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AttributeError(
            f"{type(self).__name__} has no setting or attribute {name!r}{hint} (assigning it would add an attribute "
            f"that nothing reads). Its settings: {', '.join(sorted(_SETTINGS))}"
        )

    def _set_setting(self, name: str, value: Any) -> None:
        """Assign a setting after construction, with the constructor's checks.

        Search-time settings (:data:`TUNABLE_SETTINGS`) apply from the next search (or rebuild).
        Those that shape the index (:data:`BUILD_SETTINGS`) may change only while the store holds
        no rows (a new, empty engine takes them); afterwards the index on hand and a saved copy
        would no longer match them (a folder :meth:`load` refuses, or a search failing inside FAISS).

        A change to a setting that this kind of store does not read (``nprobe`` on an HNSW store,
        :data:`_KIND_SETTINGS`) is taken, as the constructor takes it (an empty store may still change
        ``index_type``), with a ``UserWarning``.

        Raises:
            ValueError: The value the constructor would refuse (same message), or a change to a
                setting in :data:`BUILD_SETTINGS` of a store holding documents.
        """
        _check_all({**{key: getattr(self, key) for key in _SETTINGS}, name: value})
        value = _normalised(name, value)
        needs = _KIND_SETTINGS.get(name)
        unused = None
        if needs is not None and getattr(self, needs[0]) != needs[1] and value != getattr(self, name):
            unused = (
                f"{name}={value!r} has no effect on this store: it applies to {needs[0]}={needs[1]!r}, and this "
                f"store has {needs[0]}={getattr(self, needs[0])!r}"
            )
            if not self._table.n_rows:  # the kind may still change: the setting is kept for it
                unused += f", unless {needs[0]} is changed to {needs[1]!r} before the first add"
        if name == "nprobe":
            object.__setattr__(self, "_nprobe_given", True)
            self._warn_nprobe_above_nlist(value)
        # a new nlist or kind: a given nprobe checked against it (the default is clipped silently, as at construction)
        recheck = name in ("nlist", "index_type") and value != getattr(self, name) and self._nprobe_given
        if name not in BUILD_SETTINGS or value == getattr(self, name):
            object.__setattr__(self, name, value)
            if unused:
                warnings.warn(unused, UserWarning, stacklevel=3)
            return
        with self._lock.write():
            if self._table.n_rows:
                raise ValueError(
                    f"{name} cannot change once a store holds documents: it shapes the store's {self.index_type} "
                    f"index (this store has {self._table.n_rows} row(s), {name}={getattr(self, name)!r}). Build a new "
                    f"KLStore with {name}={value!r} and add the documents to it (get_gaussians(ids) returns them)"
                )
            object.__setattr__(self, name, value)
            self._engine = new_engine(self, self._table)
            if self._dim is not None:
                self._engine.reset(self._dim)
        if unused:
            warnings.warn(unused, UserWarning, stacklevel=3)
        if recheck:
            self._warn_nprobe_above_nlist(self.nprobe)

    def _warn_nprobe_above_nlist(self, nprobe: int) -> None:
        """Warn (at the user's line) where ``nprobe`` exceeds an IVF store's ``nlist``: FAISS takes it and probes
        ``min(nprobe, nlist)`` lists, as this store does, so it is accepted, as FAISS users expect (``nprobe=nlist``
        or more means every list), but said once, where it is given: a constructor value other than the default
        (:data:`DEFAULT_NPROBE`, which exceeds a small ``nlist``), any assignment of ``nprobe`` (the default value
        too), and an assignment of ``nlist`` or ``index_type`` under such a given ``nprobe``. An ``nprobe`` never
        given, the default, is clipped to ``nlist`` silently, whatever ``nlist`` is assigned."""
        if self.index_type == "ivf" and nprobe > self.nlist:
            warn(
                f"nprobe={nprobe} exceeds this store's nlist={self.nlist}: a search probes at most nlist lists, so "
                f"it acts as nprobe={self.nlist}, every list (each search scans every document, like a flat store)"
            )

    # ------------------------------------------------------------------ state
    @property
    def is_built(self) -> bool:
        """Whether the FAISS index exists (approximate indexes are built once enough documents exist)."""
        return self._engine.index is not None

    def _reduction(self) -> tuple[float | None, float]:
        return self._engine.norm_bound, float(self._engine.index_offset)  # (None, 0.0) for flat

    @property
    def rebuild_count(self) -> int:
        """Full rebuilds of an approximate index caused by a document norm above ``M``."""
        return self._engine.rebuild_count

    @property
    def compaction_count(self) -> int:
        """Tombstone compactions performed."""
        return self._table.compactions

    @property
    def _index(self) -> Any:
        """The FAISS index (``None`` before an approximate index is built); for tests and benchmarks."""
        return self._engine.index

    @property
    def ids(self) -> list[str]:
        """Ids of the live documents, in insertion order."""
        with self._lock.read():
            return self._table.live_ids()

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._table

    def __repr__(self) -> str:
        return f"KLStore(index_type={self.index_type!r}, dim={self._dim}, documents={len(self)})"

    def _index_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in INDEX_PARAMS}

    # --------------------------------------------------------------- mutation
    def _add_documents(self, new: _NewDocuments) -> None:
        g = new.gaussians
        mean = np.ascontiguousarray(g.mean, dtype=np.float32)
        var = np.ascontiguousarray(g.var, dtype=np.float32)
        if not (var > 0).all() or not np.isfinite(var).all():
            raise ValueError("document variances underflow or overflow float32")
        with self._lock.write():
            if not _write_proceeds():  # an async write cancelled while it waited for the lock
                return
            if self._dim is None:
                self._init_dim(g.dim)
            if g.dim != self._dim:
                raise ValueError(f"document gaussians have dimension {g.dim}; this store has dimension {self._dim}")
            prepared = self._engine.prepare(mean, var)  # every check before any change
            self._engine.own()
            table = self._table
            if not len(table):  # the first documents: what they are encoded with (saved, compared at load)
                model = self._model
                self._documents_weights = _format.encoder_weights(model)
                self._documents_backbone = _format.encoder_backbone(model)[0]
                self._documents_model = None if model is None else _encoder_record(model)[0]
                self._documents_tokenizer = _format.encoder_tokenizer(model)
                self._documents_versions = None
                if self._documents_weights is None and hasattr(model, "_parameter_versions"):
                    self._documents_versions = model._parameter_versions()  # a later save_pretrained names them
            previous = {doc_id: table.row[doc_id] for doc_id in new.ids if doc_id in table.row}
            before = table.version
            start, replaced = table.append(mean, var, new.ids, new.texts, new.metadatas)
            try:
                self._engine.add_rows(start, prepared)
            except BaseException:
                self._undo_add(start, len(new.ids), previous)
                raise
            self.write_count += 1  # first: counted even where the compaction is interrupted (as a delete)
            dead = self._maybe_compact()
            # the exact path's kept d~ lose the compacted rows and take the new ones; an interrupt while it copies
            # them leaves the write compacted and counted, and the stale check (after it) armed for the next write
            self._engine.rows_appended(before, start, dead)
            stale = self._engine.stale_training()
        if replaced:
            logger.debug("replaced %d existing document(s)", len(replaced))
        if stale is not None:  # after the add, outside the lock: an "error" filter raises with the add kept
            warn(stale)

    def _undo_add(self, start: int, m: int, previous: dict[str, int]) -> None:
        """After the engine failed to index ``m`` rows appended at ``start``: the table and index as before.

        ``previous`` maps each replaced id to its old row (live again). An engine fails before it
        changes the table (a rebuild compacts it only once it succeeded), so the new rows are the last ones.
        """
        table = self._table
        if table.n_rows != start + m:
            logger.error("a failed add left the store with %d rows; it cannot be undone", table.n_rows)
            return
        table.undo_append(start, previous)
        try:
            self._engine.drop_entries_from(start)
        except Exception as exc:
            logger.error(
                "the index could not drop the entries of a failed add (%s); searches are exact meanwhile, and the "
                "next add or save() rebuilds it",
                exc,
            )

    def _delete(self, ids: list[str]) -> DeleteReport:
        with self._lock.write():
            if not _write_proceeds():  # an async write cancelled while it waited for the lock
                return DeleteReport(deleted=[], missing=[])
            before = self._table.version
            deleted, missing = self._table.tombstone(ids)
            self._engine.rows_tombstoned(before)  # the version changed, even where nothing was deleted
            if deleted:  # a tombstone leaves the index (a memory-mapped one mapped); remove_rows copies it
                self.write_count += 1  # first: counted even where the compaction is interrupted
                self._maybe_compact()
        return DeleteReport(deleted=deleted, missing=missing)

    def _delete_matching(self, ids: list[str] | None, filter: Any) -> DeleteReport:
        """Delete what ``filter`` (a compiled predicate) matches among ``ids`` (``None``: every live document).

        Each candidate's metadata is judged (through the read-only view a callable filter gets; no text is
        copied) under the read lock, so that searches go on while a slow filter runs; then, under the write
        lock, the matches are deleted if no write happened meanwhile (:attr:`write_count` unchanged), else
        they are chosen again there. Either way no other thread writes between the choice and the deletion.
        The filter cannot modify the store (``RuntimeError``), as during a search.
        """
        with self._lock.read():
            seen = self.write_count
            chosen, missing = self._matching(ids, filter)
        with self._lock.write():
            if not _write_proceeds():  # an async delete cancelled while it waited for the lock
                return DeleteReport(deleted=[], missing=missing)
            if self.write_count != seen:  # another thread wrote since: choose again, now that none can
                chosen, missing = self._matching(ids, filter)
            report = self._delete(chosen)
        return DeleteReport(deleted=report.deleted, missing=missing)

    def _matching(
        self, ids: list[str] | None, filter: Any, refusal: str | None = _DELETE_FILTER_WRITES
    ) -> tuple[list[str], list[str]]:
        """The ids ``filter`` matches among ``ids`` (``None``: every live document), and the missing ids; callers
        hold the lock. ``refusal`` is the error for a callable filter that writes (default: a delete's; ``None``: a
        search's)."""
        table = self._table
        if isinstance(filter, KeyedFilter):  # a delete judges afresh (it changes the rows): no cached mask
            filter = filter.predicate
        with self._lock.no_writes(refusal):
            if ids is None:
                mask, _ = table.allowed(filter)
                rows = np.flatnonzero(table.alive if mask is None else mask).tolist()
                return [table.ids[r] for r in rows], []
            missing = [doc_id for doc_id in ids if doc_id not in table.row]
            rows = [table.row[doc_id] for doc_id in ids if doc_id in table.row]
            if filter is not None and rows:
                rows = list(compress(rows, table.judge(filter, rows)))
            return [table.ids[r] for r in rows], missing

    def _maybe_compact(self) -> np.ndarray | None:
        """Compact where the tombstones call for it (:meth:`_compact`); ``None`` where it did not."""
        dead = self._table.dead()
        threshold = min(self.compact_threshold, _MAX_DEAD_SHARE)
        if dead and (self._engine.compacts_at_once or dead > threshold * self._table.n_rows):
            return self._compact()
        return None

    def _compact(self) -> np.ndarray | None:
        """Drop tombstoned rows from the table and the index; callers hold the write lock.

        Returns:
            The dropped rows' old numbers (``None``: there were none).
        """
        table = self._table
        if not table.dead():
            return None
        before = table.version
        dead = table.compact()
        self._engine.remove_rows(dead)
        # then the exact path's kept d~ (they do not depend on the index): an interrupt while they are moved leaves
        # the table and the index compacted together, and the kept d~ let go
        self._engine.rows_compacted(before, dead)
        return dead

    def compact(self) -> None:
        """Remove tombstoned documents from the index now.

        A flat store's searches leave its tombstones out with a FAISS selector, a little slower than a search
        over a table without any; compacting restores the full speed. An HNSW or IVF index is reset and every
        live row re-added (HNSW builds its graph again), under the write lock. :meth:`save` keeps tombstones
        below ``compact_threshold``; compact first to save a folder without them.

        Examples:
            >>> KLStore().compact()
        """
        with self._lock.write():
            self._compact()

    def rebuild(self) -> None:
        """Rebuild (and retrain) an approximate index from the stored Gaussians; centre a flat one again.

        Useful after many additions to an IVF / PQ index trained on an early sample. A flat index is
        centred on its live documents' mean (the centre its float32 candidate search subtracts from every
        mean; the first documents' mean until then), each document's vector computed again, and its
        tombstones dropped: the remedy for a flat store whose searches fall back to float64 scoring
        because the documents that set the centre were deleted (docs/ann.md, *A flat store's centre*).
        Results do not change. With fewer documents than FAISS can train an approximate index on
        (``nlist`` for IVF, ``2^pq_nbits`` for PQ) the index is dropped instead: searches are exact,
        and the add that reaches the number an automatic build waits for (``8 x nlist``,
        ``4 x 2^pq_nbits``, 256 for SQ8) builds it again. If FAISS fails, the store is left as it was.

        Raises:
            ValueError: An IVF index, or one with ``compression="pq"``, over a document whose reduced norm
                gives a bound ``M`` above ``_engines.MAX_NORM_BOUND`` (about 2.3e18: FAISS's k-means would
                overflow float32 and abort the process); the message names the document, and the store
                is left as it was (docs/ann.md, *One outlier document*). A flat index with a document whose
                vector overflows float32 around the new centre (the store is left as it was).

        Examples:
            >>> KLStore(index_type="hnsw").rebuild()
        """
        with self._lock.write():
            if self._table:
                self._engine.rebuild(forced=True)

    # ---------------------------------------------------------------- reading
    def _documents(self, ids: list[str]) -> list[StoredDocument]:
        with self._lock.read():
            return self._table.documents(ids)

    def _documents_matching(self, ids: list[str] | None, filter: Any) -> list[StoredDocument]:
        """The documents ``filter`` matches (judged under the read lock, as in a search), read without the others."""
        with self._lock.read():
            chosen, _ = self._matching(ids, filter, refusal=None)
            return self._table.documents(chosen)

    def _gaussians(self, ids: list[str]) -> Gaussians:
        with self._lock.read():
            return self._table.gaussians_of(ids)

    def _prepare_filter(self, filter: MetadataFilter | None) -> Any:
        """The compiled filter; a dict of plain JSON values comes with its key, so the table caches its rows.

        A callable, or a dict holding a date, a tuple, a numpy value, ..., has no key
        (:func:`~kl_retrievers.filters._filter_key`): it is called once per live document in every search.
        """
        predicate = compile_filter(filter)
        key = None if predicate is None else _filter_key(filter)
        return predicate if key is None or predicate is None else KeyedFilter(predicate, key)

    def _rank(self, queries: Gaussians, k: int, predicate: Callable[[Mapping[str, Any]], bool] | None) -> _Ranking:
        """The one ranking :meth:`_search` and :meth:`_top_ids` report; callers hold the read lock.

        Args:
            queries: Checked float64 query Gaussians.
            k: Checked results per query.
            predicate: A compiled metadata filter, or ``None``.

        Returns:
            A :class:`_Ranking`; its ``top`` is ``None`` when the store has no live document (the
            predicate is not called then, and allows no row), the predicate allows none, or there are
            no queries.
        """
        table = self._table
        if not table:
            return _Ranking(None if predicate is None else np.zeros(table.alive.shape, dtype=bool), None)
        mask, n_allowed = table.allowed(predicate)
        if n_allowed == 0 or len(queries) == 0:
            return _Ranking(mask, None)
        return _Ranking(mask, self._engine.top_k(queries, min(k, n_allowed), mask, n_allowed, predicate is not None))

    def _search(self, queries: Gaussians, k: int, filter: Any) -> list[list[SearchResult]]:
        with self._lock.read():
            top = self._rank(queries, k, filter).top
            return [[] for _ in range(len(queries))] if top is None else self._table.results(*top)

    def _top_ids(self, queries: Gaussians, k: int, predicate: Callable[[Mapping[str, Any]], bool] | None) -> _TopIds:
        """:meth:`search_batch` without its results: ranked ids and scores, for a caller that fuses rankings.

        The same checks and the same ranking as ``search_batch(queries, k, filter)`` with ``predicate =
        compile_filter(filter)``, but no :class:`SearchResult` is built (no text, no metadata copy): the
        hybrid store needs only ids and scores from its dense candidates. With a predicate it also returns
        which live documents the predicate allowed (called once per live document; not at all for a
        :class:`~kl_retrievers.store._table.KeyedFilter` whose rows the table cached, as in ``search_batch``),
        so the caller can restrict another ranking without calling it again.

        Args:
            queries: Query Gaussians (checked as :meth:`search_batch` checks them).
            k: Results per query.
            predicate: A compiled metadata filter, or ``None``.

        Returns:
            A :class:`_TopIds`.
        """
        k = self._check_k(k)
        qg = _query_gaussians(queries, encoder=self.encoder, batch_size=self.batch_size, dim=self.dim)
        nq = len(qg)
        with self._lock.read():
            table = self._table
            mask, top = self._rank(qg, k, predicate)
            live_ids, allowed = None, None
            if predicate is not None:
                assert mask is not None
                alive = table.alive
                live_ids = list(compress(table.ids, alive.tolist()))
                allowed = mask[alive]
            if top is None:
                return _TopIds([[] for _ in range(nq)], [np.zeros(0) for _ in range(nq)], live_ids, allowed)
            row_ids = table.ids
            ids, score_lists = [], []
            for rows_q, scores_q in zip(*top, strict=True):
                keep = rows_q >= 0  # -1 is padding, skipped as DocumentTable.results skips it
                ids.append([row_ids[r] for r in rows_q[keep].tolist()])
                score_lists.append(np.asarray(scores_q[keep], dtype=np.float64))
            return _TopIds(ids, score_lists, live_ids, allowed)

    def _load_saved_encoder(self) -> Any | None:
        """The encoder; for a store loaded without one, the model it was saved with, loaded by name once.

        ``None`` when there is no encoder and none is recorded. Used by a text search or text add, the
        adapters and the hybrid store when they have text to encode; the caller adds what to pass instead to
        the error. One thread loads at a time; the others wait and use what it loaded.

        Raises:
            ValueError: Loading the saved model failed, or it gives Gaussians of another dimension than the
                documents. A failure a retry may fix (an ``OSError``: a file or network error, a hub that could
                not be reached, or :class:`~kl_retrievers.hub.ModelNotFoundError`, which a typo'd or deleted hub id
                raises too) is kept and raised again without any lookup for 30 seconds after it
                (``_SAVED_ENCODER_RETRY_S``), so that a store whose model is gone does not make one hub round trip
                (or wait for an offline timeout) per search; the first call after that tries once more (one
                thread; the others wait and use what it got). Any other failure (a name that cannot be loaded,
                which is refused without a lookup, another dimension, a model that does not load) is kept for
                good, and raised again without retrying.
            ConcurrentSaveError: Saves of the saved model's folder replaced it during each of the loader's reads
                (an ``OSError``), raised as it is and not kept: the next call tries again.
        """
        if self.encoder is not None:
            return self.encoder
        name = self.saved_encoder
        if not name:
            return None
        with self._saved_encoder_lock:
            if self.encoder is None:
                if self._saved_encoder_problem is not None:
                    raise ValueError(self._saved_encoder_problem)
                failure = self._saved_encoder_failure
                if failure is not None and monotonic() - failure[1] < _SAVED_ENCODER_RETRY_S:
                    raise ValueError(failure[0])  # no lookup until the retry delay has passed
                record = self._saved_encoder_record
                unloadable = _unloadable_saved_name(name)  # no lookup can help: none is made
                problem = (
                    None
                    if unloadable is None
                    else f"loading the model it was saved with, {name!r}, failed ({unloadable})"
                )
                if problem is None:
                    same = isinstance(record, dict) and record.get("name_or_path") == name
                    backend = _recorded_backend(record) if same else None  # the backend it was built with
                    logger.info(
                        "loading the encoder %r this store was saved with (%s; %s backend), to encode text",
                        name,
                        _saved_model_source(name),
                        backend or "default",
                    )
                    try:
                        # one copy per process for every store that needs this model (while any holds it)
                        encoder = _shared_saved_model(name, backend, self._documents_weights)
                    except ConcurrentSaveError:  # saves kept replacing the model's folder: nothing to keep
                        raise
                    except OSError as exc:  # a file or network error, a hub that failed: retried after a delay
                        message = (
                            f"this store has no encoder to encode text, and loading the model it was saved with, "
                            f"{name!r}, failed ({exc}; kept for {_SAVED_ENCODER_RETRY_S:g} s, then the next call "
                            "that needs it tries again)"
                        )
                        self._saved_encoder_failure = message, monotonic()  # from the end of this lookup
                        raise ValueError(message) from None
                    except Exception as exc:
                        problem = f"loading the model it was saved with, {name!r}, failed ({exc})"
                    else:
                        dim = getattr(getattr(encoder, "config", None), "dim", None)
                        if self._dim is not None and isinstance(dim, int) and dim != self._dim:
                            problem = (
                                f"it was saved with {name!r}, which now gives Gaussians of dimension {dim}; its "
                                f"documents have dimension {self._dim}"
                            )
                        else:
                            _format.warn_if_other_weights(
                                self._documents_weights,
                                encoder,
                                "this store",
                                logger,
                                backbone=self._backbone_record(),
                                config=(self._documents_model or {}).get("config"),
                                tokenizer=self._documents_tokenizer,
                            )
                if problem is not None:
                    self._saved_encoder_problem = f"this store has no encoder to encode text, and {problem}"
                    raise ValueError(self._saved_encoder_problem)
                self.encoder, self._saved_encoder_failure = encoder, None
        return self.encoder

    def _text_encoder(self, task: str, instead: str) -> Any:
        """The encoder, or for a store loaded without one the model it was saved with, loaded now (once).

        A text search or a text add of ``KLStore.load(path)`` encodes with the model ``path`` records
        (:attr:`saved_encoder`; an info log names it), as the LangChain / LlamaIndex adapters and the
        hybrid store over it do; nothing is loaded for query or document Gaussians.

        Raises:
            ValueError: No encoder and none recorded, or the recorded model failed to load (the message
                names it, and what to pass instead).
            ConcurrentSaveError: Saves of the recorded model's folder kept replacing it (:meth:`_load_saved_encoder`).
        """
        try:
            encoder = self._load_saved_encoder()
        except ValueError as exc:
            raise ValueError(
                f"{exc}: pass encoder= (KLStore.load(path, encoder=load_model(...)), from kl_retrievers import "
                f"load_model), or {instead}"
            ) from None
        if encoder is None:
            raise self._no_encoder(task, instead, " (nor a recorded model it was saved with)")
        return encoder

    # ------------------------------------------------------------ persistence
    @property
    def _model(self) -> Any:
        """The encoder whose identity a save records and compares: :attr:`encoder`, or the Gaussian encoder of a
        wrapper such as :class:`kl_retrievers.langchain.KLEmbeddings` (:func:`_identity_encoder`)."""
        return _identity_encoder(self.encoder)

    def _documents_identity(self) -> str | None:
        """The weights identity the documents were encoded with (``None``: not known).

        Known from the first add, or from the loaded config.json; else, when the encoder's identity was not
        known at the first add (built or trained in memory), the identity its weights got since, provided they
        are still the very weights the documents were encoded with (the parameter versions of the first add):
        the common order ``store.add(...)``, ``encoder.save_pretrained(m)``, ``store.save(s)`` records ``m``'s.
        """
        if self._documents_weights is None and self._documents_versions is not None:
            encoder = self._model
            now = _format.encoder_weights(encoder)
            if now is not None and getattr(encoder, "_parameter_versions", lambda: None)() == self._documents_versions:
                self._documents_weights, self._documents_versions = now, None
        return self._documents_weights

    def _encoder_is_other_model(self) -> bool:
        """Whether the attached encoder is known to encode otherwise than the model the documents were encoded
        with: both weights identities known and different, or equal over backbones both known and different, or
        equal on another backend (torch and ONNX), or equal with another output-relevant config or another
        tokenizer than the documents' (both known: :func:`_format.encoding_differences`, what
        :func:`_format.warn_if_other_weights` warns about at load)."""
        model = self._model
        if model is None:
            return False
        documents, own = self._documents_identity(), _format.encoder_weights(model)
        if documents is None or own is None:
            return False
        backbone, own_backbone = self._documents_backbone, _format.encoder_backbone(model)[0]
        if documents != own or (backbone is not None and own_backbone is not None and backbone != own_backbone):
            return True
        config = (self._documents_model or {}).get("config")
        backend, own_backend = _format._config_backend(config), _format._config_backend(getattr(model, "config", None))
        if backend is not None and own_backend is not None and backend != own_backend:
            return True  # the same weights on another backend (torch documents, ONNX queries): keep the record
        return bool(_format.encoding_differences(config, self._documents_tokenizer, model))

    def _backbone_record(self) -> tuple[str | None, str | None]:
        """``(SHA-256, name)`` of the backbone the documents were encoded over, as :func:`_format.warn_if_other_weights`
        takes it; the name only where the loaded record's encoder config names that same backbone."""
        sha = self._documents_backbone
        recorded_sha, recorded_name = _format.recorded_backbone(self._saved_encoder_record, self._documents_weights)
        return sha, (recorded_name if sha is not None and recorded_sha == sha else None)

    def _kept_documents_model(self) -> dict[str, Any] | None:
        """The documents' model record (``name_or_path``, ``config``) a save writes in place of the attached
        encoder's, where that encoder is known to be another model; ``None``: a save records the attached one."""
        return self._documents_model if len(self._table) and self._encoder_is_other_model() else None

    def _config(self) -> dict[str, Any]:
        encoder_info = None
        documents_model = self._kept_documents_model()
        if documents_model is not None:  # the documents' model, whose weights and backbone are recorded below
            encoder_info = dict(documents_model)
        elif self.encoder is not None:
            encoder_info, found = _encoder_record(self._model)
            if found:  # config.json is standard JSON: the (informational) record says null
                logger.warning("the encoder config holds NaN or Infinity at %s; recorded as null in the store", found)
        elif self.saved_encoder:  # loaded without encoder=: the record of the model it was saved with stays
            record = self._saved_encoder_record
            if isinstance(record, dict) and record.get("name_or_path") == self.saved_encoder:
                encoder_info = dict(record)
            else:
                encoder_info = {"name_or_path": self.saved_encoder, "config": None}
        if encoder_info is not None:
            # The weights the documents were encoded with, kept across saves (a save after loading with a
            # retrained model must not record the new weights for the old documents); an empty store takes its
            # encoder's. Compared at load (_format.warn_if_other_weights); absent when not known.
            # The backbone under them likewise (the encoder config beside it is the saving encoder's, which may
            # be another model with the same delta identity): null when not known.
            # And the SHA-256 of the tokenizer they were encoded with (null when not known), kept alike.
            if len(self._table):
                weights, backbone = self._documents_identity(), self._documents_backbone
                tokenizer = self._documents_tokenizer
            else:
                model = self._model
                weights, backbone = _format.encoder_weights(model), _format.encoder_backbone(model)[0]
                tokenizer = _format.encoder_tokenizer(model)
            encoder_info.pop("weights_sha256", None)
            encoder_info.pop("backbone_sha256", None)
            encoder_info.pop(_format.TOKENIZER_FIELD, None)
            if weights is not None:
                encoder_info["weights_sha256"] = weights
                encoder_info["backbone_sha256"] = backbone
                encoder_info[_format.TOKENIZER_FIELD] = tokenizer
        engine_config = self._engine.config()  # norm_bound, index_offset, flat_centre, index_centre
        dead = self._table.dead()
        return {
            "format": _format.FORMAT_NAME,
            # 3 with tombstones, else 2 when index.faiss holds centred vectors (a release reading only 1 refuses
            # it), else 1
            "format_version": _format.format_version_for(engine_config, dead),
            "library_version": library_version(),
            "faiss_version": getattr(_faiss(), "__version__", "unknown"),
            "score_name": SCORE_NAME,
            "score_direction": SCORE_DIRECTION,
            "dim": self._dim,
            "count": self._table.n_rows,
            "dtype": "float32",
            "index_type": self.index_type,
            "index_params": self._index_params(),
            "index_built": self.is_built,
            **engine_config,
            "encoder": encoder_info,
            **({"tombstones": dead} if dead else {}),  # absent without: such a folder is written as before
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save atomically to the folder ``path``, tombstones included.

        Files are written into a temporary sibling folder which then replaces ``path`` as a whole;
        an interrupted save leaves the previous copy intact.  No pickle is used anywhere.

        Deleted and replaced documents not compacted yet (fewer than ``compact_threshold`` of the rows: a
        store past it compacts first, as a write would) are saved as tombstones: their rows keep their
        Gaussians and index entries, their ids lose text and metadata, and ``tombstones.npy`` lists them, so
        a save costs only its writes (compacting an HNSW or IVF index re-adds every live row) and a load
        searches exactly as the saved store did. Such a folder is written as ``format_version`` 3, which
        earlier releases refuse; :meth:`compact` first to save without them (and to leave deleted
        documents' Gaussians out of the folder).

        ``config.json``'s ``encoder`` record names the model the documents were encoded with, which a
        :meth:`load` compares with its ``encoder=`` (by name, weights and backbone) and loads by name when
        given none (as ``kl-retrievers search`` does): the weights identity and backbone SHA-256 of the first
        documents (``weights_sha256``, ``backbone_sha256``), kept by every save, and beside them the model's
        ``name_or_path`` and encoder ``config``, and the SHA-256 of their tokenizer (``tokenizer_identity_sha256``).
        These are the attached encoder's, except when it is known to encode otherwise than the documents'
        model (both weights identities known and different, or equal over backbones both known and different:
        ``bge-small-unit-variance`` attached to a store built with ``minilm-unit-variance``; or equal with
        another output-relevant config or tokenizer, such as the model folder re-saved with mean pooling); then
        the documents' model's are kept too (from the first add, or the loaded record), so the next load still
        warns. When either identity is not known (an encoder built or trained in memory, a store
        saved before identities were recorded), the attached encoder is recorded. A store with no encoder
        writes back the record it was loaded with; an empty store records its encoder.

        Args:
            path: A new or empty folder, or an earlier save of a KLStore (its ``config.json`` has
                ``format`` ``"kl-retrievers/klstore"``).
            overwrite: Replace ``path`` even when it is a non-empty folder that is not a saved
                KLStore (everything in it is deleted).

        Returns:
            The folder path.

        Raises:
            ValueError: ``path`` is a non-empty folder that is not a saved KLStore (without ``overwrite``;
                the message names it and some of its entries), or it exists and is not a folder.
            NotADirectoryError: A parent of ``path`` is a file.

        Examples:
            >>> import tempfile, numpy as np
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((2, 2)), np.ones((2, 2))))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     len(KLStore.load(s.save(Path(d) / "store")))
            2
        """
        target = user_path(path)  # "~/x" is the home folder's x, as load_model reads it ("~nobody" stays as given)
        final = check_replace_target(  # a link you name (current -> v3) is resolved once, here: v3 is saved
            target,
            is_ours=_format.is_store_folder,
            what=f"a KLStore folder (an earlier save: its config.json has format {_format.FORMAT_NAME!r})",
            overwrite=overwrite,
            follow_link=True,
        )
        table = self._table

        def write_files(documents: tuple[list[str], list[str | None], list[dict[str, Any]]], dead: Any) -> None:
            index = self._engine.index
            if index is not None and index.ntotal != table.n_rows:  # load() would refuse the folder
                raise RuntimeError(
                    f"not saving to {target}: the {self.index_type} index holds {index.ntotal} entries but the store "
                    f"has {table.n_rows} rows (an update that failed part-way?); the folder is left as it was. "
                    "rebuild() rebuilds an approximate index from the stored rows"
                )
            with atomic_dir(final) as tmp:
                _format.write_folder(
                    tmp,
                    self._config(),
                    (table.mean, table.var),
                    documents,
                    self._engine.write if self.is_built else None,
                    dead,
                )

        # Compact (only past the threshold) under the write lock, then turn it into a read lock (no writer gets
        # in between) and write the files under it, so that searches go on during the (long) writing.
        # A memory-mapped index is written from the mapping: only a compaction copies it (remove_rows owns it first).
        with self._lock.write_then_read() as downgrade:
            self._maybe_compact()
            self._engine.repair()  # an index left partial by an interrupted compaction is rebuilt, not refused
            downgrade()
            dead = np.flatnonzero(~table.alive) if table.dead() else None
            documents = table.ids, table.texts, table.metas
            if dead is not None:  # a tombstone is never returned: only its id is kept
                alive = table.alive.tolist()
                texts = [text if live else None for text, live in zip(table.texts, alive, strict=True)]
                metas = [meta if live else {} for meta, live in zip(table.metas, alive, strict=True)]
                documents = table.ids, texts, metas
            write_files(documents, dead)
        logger.info("saved %d documents (%d tombstones) to %s", len(table), table.n_rows - len(table), target)
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: EncoderLike | None = None,
        *positional: bool,
        mmap: bool = _MMAP_DEFAULT,
        verify_checksums: bool = _VERIFY_DEFAULT,
    ) -> KLStore:
        """Load a store written by :meth:`save`.

        A save of the same path (another thread or process) may swap in its new copy while the
        files are read one by one; the load then notices that the folder changed and reads it
        again (up to 4 times), so it returns one save's complete copy, never a mix of two, and a
        damaged folder that no save replaces still fails at once.

        A ``refine="fp16"`` folder saved by an earlier release with inf float16 refine copies (its
        ``norm_bound`` above 65504) has its index rebuilt from the stored Gaussians, in memory (also
        with ``mmap=True``), with one warning; saving the store writes the fixed index (docs/ann.md).

        Args:
            path: The store folder.
            encoder: Optional encoder for text queries / additions (a name differing from the
                saved one logs a warning, unless the weights identity is the recorded one and neither
                backbone, config nor tokenizer is known to differ: a folder path of the bundled model;
                another Gaussian dimension is an error). Without one, the
                first text search or text add loads the model the store was saved with
                (:attr:`saved_encoder`, by name, once; an info log names it); stores of this process that load
                the same model (name, backend, folder, recorded weights) share one copy of it while any holds it
                (one whose parameters were changed since, in place, by ``.half()`` or ``.to()``, is not handed
                to a store loaded later: that one loads its own).
            mmap: Memory-map the Gaussians (read-only ``np.load(mmap_mode="r")``) and, where
                FAISS supports it, the index codes; they are copied on the first mutation.
            verify_checksums: Check SHA-256 of every file (sizes and every stored value are always
                checked). The Gaussians and documents are hashed in the load's own pass over them, the
                index read once more, ``mmap=True`` or not: ``False`` loads a large store you trust
                faster. Without it a flat store's saved norm bound (bound to the index's checksum) is not
                taken: its first search computes it from the index, one pass over it.
            *positional: Deprecated: ``mmap`` and ``verify_checksums`` given by position, as before they
                became keyword-only (as in :meth:`KLHybridStore.load <kl_retrievers.hybrid.KLHybridStore.load>`):
                still taken, with a ``DeprecationWarning`` naming the keyword; refused in the next release.

        Raises:
            FileNotFoundError: ``path`` or its config is missing.
            NothingSavedError: (a ``FileNotFoundError`` and a ``ValueError``) no folder, or one without its config.
            StoreFormatError: (a ``ValueError``) a folder kl_retrievers saved as another kind (a hybrid store,
                an encoder...: the message names it), files missing, sizes / checksums / counts /
                dimensions not matching the config, or an unreadable index.
            ValueError: ``encoder`` gives Gaussians of another dimension than the stored ones.
            OSError: Other saves of ``path`` replaced it during every load attempt (see above).
            TypeError: More than four positional arguments, an option given both by position and by keyword, or
                ``mmap`` / ``verify_checksums`` not a bool (the string ``"no"`` is true).

        Examples:
            >>> KLStore.load("/nonexistent")  # doctest: +SKIP
        """
        mmap, verify_checksums = _load_options(cls.__name__, positional, mmap, verify_checksums)
        _refuse_model_name(encoder, f"{cls.__name__}.load(path, encoder={{}})")  # before any file is read
        folder = user_path(path)
        return load_unchanged(folder, lambda: cls._load_once(folder, encoder, mmap, verify_checksums))

    @classmethod
    def _load_once(
        cls, folder: Path, encoder: EncoderLike | None, mmap: bool, verify_checksums: bool, *, where: str | None = None
    ) -> KLStore:
        """One read of the folder for :meth:`load` (which repeats it when a save replaced the folder meanwhile).

        ``where`` names the store in the weights warning (default ``"the store at FOLDER"``): a store that holds
        this one as a part (the hybrid store) names its own folder, the one its user passed.

        The flags are checked here, before any file is read, so that every loader of a store folder (the hybrid
        store's, LangChain's ``load_local``) refuses ``verify_checksums=0`` as :meth:`load` does.

        Raises:
            TypeError: ``mmap`` or ``verify_checksums`` is not a bool (the string ``"no"`` is true).
        """
        check_bool(mmap, "mmap")
        check_bool(verify_checksums, "verify_checksums")
        if not folder.exists() and recover_dir(folder, required=_format.CONFIG):
            logger.warning("loading %s from the copy saved before an interrupted save", folder)
        cfg_path = folder / _format.CONFIG
        if not folder.is_dir():
            raise NothingSavedError(f"no KLStore folder at {folder}")
        if not cfg_path.is_file():
            if (other := describe_kl_folder(folder)) is not None:
                raise StoreFormatError(f"{folder} is not a KLStore folder: it is {other}")
            raise NothingSavedError(f"{folder} has no {_format.CONFIG}; not a KLStore folder")
        config = _format.read_config(cfg_path)
        dim, count = config["dim"], config["count"]
        files = config["files"]
        # the Gaussians and documents are hashed as they are read and checked (one read of each; none where the
        # store is empty, dim null: they are not read), the others here
        on_read = frozenset({_format.MEAN, _format.VAR, _format.DOCS} if verify_checksums and dim is not None else ())
        _format.check_files(folder, files, verify_checksums, on_read)
        # the flat index's saved norm bound is taken over verified files only, with its checksum
        config["flat_norm_max"] = _format.flat_norm_from_config(config, cfg_path, verify_checksums)
        params = dict(config["index_params"])
        headroom = params.get("norm_headroom")
        if (
            isinstance(headroom, (int, float))
            and not isinstance(headroom, bool)
            and MAX_NORM_HEADROOM < headroom < float("inf")
        ):
            # an earlier release accepted any headroom >= 1: its store loads; later raises of M use the limit
            logger.warning(
                "%s was saved with norm_headroom=%g, above the %g a store now accepts; loaded with %g (it only "
                "sets how far M is raised when a larger document arrives)",
                folder,
                headroom,
                MAX_NORM_HEADROOM,
                MAX_NORM_HEADROOM,
            )
            params["norm_headroom"] = MAX_NORM_HEADROOM
        try:
            store = cls(encoder=encoder, index_type=config["index_type"], **params)
        except (TypeError, ValueError) as exc:
            raise StoreFormatError(f"{cfg_path}: field 'index_params' holds an invalid value: {exc}") from exc
        saved = (config["encoder"] or {}).get("name_or_path")
        model = _identity_encoder(encoder)  # a KLEmbeddings' Gaussian encoder: what its saves record
        now = str(getattr(model, "name_or_path", "")) if model is not None else ""
        store.saved_encoder = saved if isinstance(saved, str) and saved else None
        store._saved_encoder_record = config["encoder"]  # written back by a save without an encoder
        recorded = (config["encoder"] or {}).get("weights_sha256")  # read_config checked: a str or None
        store._documents_weights = recorded if isinstance(recorded, str) else None
        store._documents_backbone = _format.recorded_backbone(config["encoder"], store._documents_weights)[0]
        record = config["encoder"]
        tokenizer = record.get(_format.TOKENIZER_FIELD) if isinstance(record, dict) else None  # checked: str or None
        store._documents_tokenizer = tokenizer if isinstance(tokenizer, str) and store._documents_weights else None
        if isinstance(record, dict) and isinstance(record.get("name_or_path", ""), str):
            # the documents' model, kept by a save with another one (a record without a name keeps "": read_config
            # accepts it, and a save must write back what read_config accepts)
            store._documents_model = {"name_or_path": record.get("name_or_path", ""), "config": record.get("config")}
        other_encoding = False
        if encoder is not None:
            other_encoding = _format.warn_if_other_weights(
                store._documents_weights,
                model,
                where or f"the store at {folder}",
                logger,
                backbone=store._backbone_record(),
                config=(store._documents_model or {}).get("config"),
                tokenizer=store._documents_tokenizer,
            )
        # Another name for the same model (a folder path vs its bundled name: the weights identities equal, and
        # neither backbone, config nor tokenizer known to differ) is not worth a warning.
        same_model = not other_encoding and store._documents_weights is not None
        same_model = same_model and store._documents_weights == _format.encoder_weights(model)
        same_model = same_model and store._documents_tokenizer is not None  # else a new vocabulary goes unseen
        if saved and now and saved != now and not same_model:
            logger.warning("store was built with encoder %r but is loaded with %r", saved, now)
        if encoder is not None and count:
            _format.note_if_onnx_over_torch(config["encoder"], model, where or f"the store at {folder}", logger)
        enc_dim = getattr(getattr(model, "config", None), "dim", None)
        if dim is not None and isinstance(enc_dim, int) and enc_dim != dim:
            raise ValueError(
                f"the encoder {now or type(encoder).__name__!r} gives Gaussians of dimension {enc_dim}, but the "
                f"store at {folder} holds dimension {dim} (built with {saved or 'another encoder'!r}): load it with "
                "that encoder"
            )
        if dim is None:
            if count:
                raise StoreFormatError(f"{cfg_path}: field 'dim' is null but 'count' is {count}")
            return store
        store._init_dim(dim)
        check = store._engine.restore(config, cfg_path)  # before the rows: its check runs as they are read
        sums = (files[_format.MEAN]["sha256"], files[_format.VAR]["sha256"]) if verify_checksums else None
        arrays = _format.read_gaussians(folder, mmap, count, dim, on_block=check, checksums=sums)
        dead = _format.read_tombstones(folder, count, config["tombstones"])
        docs_sum = files[_format.DOCS]["sha256"] if verify_checksums else None
        store._table.set_rows(arrays, *_format.read_documents(folder / _format.DOCS, count, dead, docs_sum), dead)
        if config["index_built"]:
            store._engine.attach(*_read_index(folder / _format.INDEX, mmap), cfg_path)
        elif store.index_type == "flat":
            raise StoreFormatError(f"{cfg_path}: field 'index_built' is false, but a flat store always has its index")
        logger.info("loaded %d documents (%d tombstones) from %s", len(store._table), count - len(store._table), folder)
        return store
