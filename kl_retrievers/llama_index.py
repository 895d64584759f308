"""LlamaIndex integration: an embedding model, a vector store and a retriever scored by ``-KL(Q || D)``.

Install with ``pip install "kl-retrievers[llama-index]"``.  The pieces:

* :class:`KLEmbedding` (a LlamaIndex ``BaseEmbedding``): a query embeds as
  ``q~ = [1, var + mu^2, mu]`` and a text (document) as
  ``d~ = [-1/2 sum(log var + mu^2 / var), -1 / (2 var), mu / var]``, so that
  ``<q~, d~> + c(q) = -KL(Q || D)`` exactly (see :mod:`kl_retrievers.gaussian`).  Only stores
  that rank by **inner product** preserve the -KL ranking with these vectors; cosine or L2
  stores silently rank something else.
* :class:`KLVectorStore` (a ``BasePydanticVectorStore``) over :class:`~kl_retrievers.index.KLStore` (or a
  ``MilvusKLStore``):
  both rewrites are exactly invertible (``var = -1 / (2 d~[1:k+1])``, ``mu = d~[k+1:] * var``;
  ``mu = q~[k+1:]``, ``var = q~[1:k+1] - mu^2``), so the store recovers every Gaussian from the
  embeddings LlamaIndex hands it and ranks by the exact ``-KL`` (query constant included).
  The similarity it reports is the relevance ``exp(-KL)`` in ``(0, 1]`` (see
  :func:`~kl_retrievers._adapters.relevance_exp`), so LlamaIndex's postprocessors
  (``SimilarityPostprocessor(similarity_cutoff=...)``) work; the exact ``-KL`` is in each node's
  metadata under ``"neg_kl"``.  Metadata filters (all LlamaIndex operators, AND / OR / NOT,
  nested) are applied before ranking; those made only of ``==``, ``!=``, orderings, ``in`` and ``nin``
  on JSON values reach the store in its JSON filter form, whose allowed rows it caches for the next
  query; ``vector_store_query_mode="mmr"`` runs KL-based MMR.
  Persistence is ``KLStore.save`` plus a small JSON manifest (no pickle), and the plain
  ``load_index_from_storage(StorageContext.from_defaults(persist_dir=...))`` loads it back.
* :class:`KLRetriever` (a ``BaseRetriever``): encodes the query string itself, returns
  ``NodeWithScore`` with the same relevance score, ``-KL`` under ``"neg_kl"`` and the query's
  uncertainty (mean log-variance) under the node metadata key :data:`QUERY_UNCERTAINTY_KEY`.
* Every node a search returns also carries the query's calibrated confidence (P(top-1
  relevant), :mod:`kl_retrievers.calibration`) under :data:`CONFIDENCE_KEY`;
  :class:`KLConfidencePostprocessor` drops all of a query's nodes below ``min_confidence``
  (abstention, in any query engine).
* :class:`KLHybridRetriever` (a ``BaseRetriever``) over a :class:`~kl_retrievers.hybrid.KLHybridStore`:
  BM25 and ``-KL`` fused per query.

Examples:
    >>> from llama_index.core import Document, StorageContext, VectorStoreIndex
    >>> from kl_retrievers.llama_index import KLEmbedding, KLVectorStore
    >>> embed = KLEmbedding()  # the default model  # doctest: +SKIP
    >>> storage = StorageContext.from_defaults(vector_store=KLVectorStore())  # doctest: +SKIP
    >>> index = VectorStoreIndex.from_documents(
    ...     [Document(text="Gaussians for retrieval")], storage_context=storage, embed_model=embed
    ... )  # doctest: +SKIP
    >>> hit = index.as_retriever(similarity_top_k=1).retrieve("retrieval")[0]  # doctest: +SKIP
    >>> round(hit.score, 3), round(hit.node.metadata["neg_kl"], 3)  # exp(-KL) and -KL  # doctest: +SKIP
    (0.726, -0.32)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import inspect
import json
import logging
import math
import operator
import os
import pickle
import shutil
import stat
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from enum import Enum
from pathlib import Path, PurePath
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from kl_retrievers import _adapters as adapters
from kl_retrievers._adapters import RELEVANCE_FUNCTIONS, relevance_exp, relevance_exp_per_dim, relevance_inverse
from kl_retrievers._confidence import (
    CONFIDENCE_KEY,
    EMPTY_QUERY_REASON,
    MIN_CANDIDATES,
    ConfidenceScorer,
    abstention_enabled,
    abstention_reason,
    blank_query_confidence,
    check_min_confidence,
    hybrid_search,
    is_blank_query,
    too_few_candidates_reason,
)
from kl_retrievers._encoding import check_texts
from kl_retrievers._encoding import query_batch_size as _query_batch_size
from kl_retrievers._errors import NothingSavedError
from kl_retrievers._io import clean_stale, describe_kl_folder, fsync_dir, load_unchanged, make_dirs, user_path
from kl_retrievers._warn import at_callers_line, user_stacklevel, warn
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.filters import _plain_json, _short
from kl_retrievers.gaussian import (
    SCORE_DIRECTION,
    SCORE_NAME,
    Gaussians,
    _first_bad,
    _real_numpy,
    check_k,
    document_gaussians_from_vectors,
    is_real_number,
    kl_document_vectors,
    kl_query_vectors,
    neg_kl_matrix,
)
from kl_retrievers.hybrid import (
    FusionConfig,
    FusionMode,
    HybridResult,
    KLHybridStore,
    Normalization,
    _warn_metadata_keys,
)
from kl_retrievers.index import KLStore
from kl_retrievers.store import DeleteReport, GaussianStore, StoredDocument, StoreFormatError
from kl_retrievers.store._base import _check_utf8, _metadata_list
from kl_retrievers.store._format import FORMAT_NAME as KLSTORE_FORMAT_NAME

_INSTALL_HINT = (
    'kl_retrievers.llama_index needs llama-index-core; install it with: pip install "kl-retrievers[llama-index]"'
)

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding, SimilarityMode
    from llama_index.core.bridge.pydantic import (
        BaseModel,
        ConfigDict,
        Field,
        PrivateAttr,
        SerializationInfo,
        SerializerFunctionWrapHandler,
        TypeAdapter,
        field_validator,
        model_serializer,
    )
    from llama_index.core.callbacks.base import CallbackManager
    from llama_index.core.callbacks.schema import CBEventType, EventPayload
    from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent, EmbeddingStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import (
        BaseNode,
        Document,
        ImageNode,
        IndexNode,
        MetadataMode,
        Node,
        NodeRelationship,
        NodeWithScore,
        QueryBundle,
        RelatedNodeInfo,
        TextNode,
        TransformComponent,
    )
    from llama_index.core.vector_stores.simple import SimpleVectorStore
    from llama_index.core.vector_stores.types import (
        DEFAULT_PERSIST_DIR,
        DEFAULT_PERSIST_FNAME,
        BasePydanticVectorStore,
        FilterCondition,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(_INSTALL_HINT) from exc


if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

logger = logging.getLogger(__name__)
# LlamaIndex's instrumentation: KLEmbedding's batch methods send the embedding events its base class sends
_dispatcher = get_dispatcher(__name__)

__all__ = [
    "CONFIDENCE_KEY",
    "EMPTY_QUERY_REASON",
    "QUERY_UNCERTAINTY_KEY",
    "RELEVANCE_FUNCTIONS",
    "SUPPORTED_FILTER_CONDITIONS",
    "SUPPORTED_FILTER_OPERATORS",
    "SUPPORTED_QUERY_MODES",
    "KLConfidencePostprocessor",
    "KLEmbedding",
    "KLHybridRetriever",
    "KLRetriever",
    "KLVectorStore",
    "document_gaussians_from_embeddings",
    "metadata_filters_to_predicate",
    "query_gaussians_from_embeddings",
    "relevance_exp",
    "relevance_exp_per_dim",
    "relevance_inverse",
]

#: Node metadata key holding the query's uncertainty (mean log-variance) on retrieved nodes.
QUERY_UNCERTAINTY_KEY = "query_uncertainty"

#: LlamaIndex ``FilterOperator`` values that :class:`KLVectorStore` understands.
SUPPORTED_FILTER_OPERATORS = (
    "==",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "in",
    "nin",
    "any",
    "all",
    "contains",
    "text_match",
    "text_match_insensitive",
    "is_empty",
)
#: LlamaIndex ``FilterCondition`` values that :class:`KLVectorStore` understands.
SUPPORTED_FILTER_CONDITIONS = ("and", "or", "not")
#: ``VectorStoreQueryMode`` values that :class:`KLVectorStore` understands.
SUPPORTED_QUERY_MODES = (VectorStoreQueryMode.DEFAULT.value, VectorStoreQueryMode.MMR.value)
#: The keyword and hybrid modes, whose refusal names :class:`KLHybridRetriever` (BM25 fused with ``-KL``).
_KEYWORD_QUERY_MODES = frozenset(
    m.value
    for m in (
        VectorStoreQueryMode.HYBRID,
        VectorStoreQueryMode.SEMANTIC_HYBRID,
        VectorStoreQueryMode.SPARSE,
        VectorStoreQueryMode.TEXT_SEARCH,
    )
)
# LlamaIndex's MMR defaults: lambda (``mmr_threshold``) and candidates per result (``mmr_prefetch_factor``).
_MMR_THRESHOLD = 0.5
_MMR_PREFETCH_FACTOR = 4.0

_MANIFEST_FORMAT = "kl-retrievers/llama-index-vector-store"
_MANIFEST_VERSION = 1
_STORE_SUFFIX = ".klstore"
_CALIBRATOR_SUFFIX = ".calibrator.json"
#: Inside the store folder persist writes: the copy of the manifest and the calibrator that loads read.
_INNER_MANIFEST = "llama_index_manifest.json"
_INNER_CALIBRATOR = "calibrator.json"
_NAMESPACE_SEP = "__"
_DEFAULT_NAMESPACE = "default"
_QUERY_CHECK_ATOL = 1e-6
# Written into the manifest under SimpleVectorStore's key, so that a SimpleVectorStore that reads the
# file without this module's loader (see _install_simple_vector_store_loader) fails with this text
# ("could not convert string to float: '...'") instead of loading an empty store.
_NOT_A_SIMPLE_VECTOR_STORE = (
    "this file is a kl-retrievers KLVectorStore, not a SimpleVectorStore: import kl_retrievers.llama_index "
    "before load_index_from_storage, or load it with KLVectorStore.from_persist_dir(persist_dir)"
)
# How far up the call stack KLEmbedding looks for the vector store it is embedding for.
_STACK_DEPTH = 40
# (store, query, _index_retriever_verdict): what KLVectorStore.aquery found on the event loop's thread's stack,
# for the query it runs in a worker thread (see KLVectorStore._as_retriever_lists).
_AS_RETRIEVER_LIST: contextvars.ContextVar[tuple[Any, Any, bool | None] | None] = contextvars.ContextVar(
    "kl_retrievers_as_retriever_list", default=None
)

Predicate = Callable[[Mapping[str, Any]], bool]


# --------------------------------------------------------------------------- inversion
def _ragged_rows(embeddings: Any, what: str, labels: Sequence[str] | None) -> str | None:
    """Why ``embeddings`` is not one ``(n, 2k + 1)`` array because its rows differ in length (``None``: they do not)."""
    try:
        lengths = [len(row) for row in embeddings]
    except TypeError:
        return None
    odd = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
    if odd is None:
        return None
    names = [repr(x) for x in labels] if labels is not None else [f"at position {i}" for i in range(len(lengths))]
    return (
        f"{what} must all have the same length 2k + 1 (KL vectors of one model); {names[0]} has length "
        f"{lengths[0]}, {names[odd]} has length {lengths[odd]}"
    )


def _as_2d(embeddings: Any, what: str, labels: Sequence[str] | None = None) -> np.ndarray:
    """``embeddings`` (one vector or rows: numbers, arrays, tensors) as finite float64 rows of odd length 2k + 1.

    Converted by the rules of :class:`~kl_retrievers.gaussian.Gaussians` (a tensor detached and copied to the
    CPU, bfloat16 read as float32); complex numbers, strings and objects raise ``TypeError`` naming the dtype.
    """
    try:
        arr = _real_numpy(embeddings, what, "KL embeddings take").astype(np.float64)
    except ValueError as exc:
        problem = _ragged_rows(embeddings, what, labels)
        if problem is None:
            raise ValueError(f"{what} must be numbers, one vector of length 2k + 1 per row: {exc}") from exc
        raise ValueError(problem) from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.shape[1] % 2 == 0:
        raise ValueError(
            f"{what} must have odd length 2k + 1 >= 3 (the KL inner-product rewrite); got shape {arr.shape}"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{what} must be finite; found NaN or infinite values ({_first_bad(arr, ~finite)})")
    return arr


def document_gaussians_from_embeddings(embeddings: Any, *, check: bool = True) -> Gaussians:
    """Recover document Gaussians exactly from ``d~`` vectors (the inverse of ``kl_document_vectors``).

    ``var = -1 / (2 d~[1:k+1])`` and ``mu = d~[k+1:] * var``; with ``check`` the first
    coordinate must match ``-1/2 sum(log var + mu^2 / var)`` (relative tolerance 1e-4), which
    catches vectors that were not produced by :class:`KLEmbedding` (e.g. another model's).

    Args:
        embeddings: One vector or an ``(n, 2k + 1)`` array / list of lists.
        check: Verify the first coordinate.

    Returns:
        float64 :class:`~kl_retrievers.gaussian.Gaussians`, shape ``(n, k)``.

    Raises:
        TypeError: Values that are no real numbers (complex numbers, strings, objects), naming the dtype.
        ValueError: Wrong length, non-finite values, non-negative precision coordinates or
            an inconsistent first coordinate (naming the values, and float16 or bfloat16 input, which
            is too coarse for it).

    Examples:
        >>> import numpy as np
        >>> from kl_retrievers.gaussian import kl_document_vectors
        >>> g = Gaussians(np.array([[0.5, -1.0]]), np.array([[2.0, 0.25]]))
        >>> back = document_gaussians_from_embeddings(kl_document_vectors(g))
        >>> back.mean.tolist(), back.var.tolist()
        ([[0.5, -1.0]], [[2.0, 0.25]])
    """
    return _document_gaussians(_as_2d(embeddings, "document embeddings"), embeddings, check)


def _document_gaussians(d: np.ndarray, raw: Any, check: bool = True) -> Gaussians:
    """:func:`document_gaussians_from_embeddings` of rows ``d`` that :func:`_as_2d` read from the caller's ``raw``."""
    k = (d.shape[1] - 1) // 2
    neg_half_precision = d[:, 1 : k + 1]
    if not (neg_half_precision < 0).all():
        raise ValueError(
            "document embeddings are not KL document vectors d~: coordinates 1..k (-1 / (2 var)) must be < 0; "
            "embed documents with KLEmbedding (get_text_embedding), not get_query_embedding or another model"
        )
    recovered = document_gaussians_from_vectors(d, k, validate=False)
    var, mean = recovered.var, recovered.mean
    if not (np.isfinite(var).all() and (var > 0).all() and np.isfinite(mean).all()):
        raise ValueError("document embeddings give non-finite or non-positive variances")
    if check:
        found = adapters.first_value_mismatch(d, recovered)
        if found is not None:
            i = found.row
            raise ValueError(
                f"{found.mismatched} document embedding(s) (first at position {i}) are not KL document "
                f"vectors: the first coordinate does not match -1/2 sum(log var + mu^2 / var) (position {i}: "
                f"{d[i, 0]:.6g}, but the Gaussian its other values give has {found.expected:.6g} there); "
                f"embed documents with KLEmbedding{adapters.document_precision_hint(raw, d)}"
            )
    return Gaussians(mean, var)


def query_gaussians_from_embeddings(embeddings: Any) -> Gaussians:
    """Recover query Gaussians from ``q~ = [1, var + mu^2, mu]`` (the inverse of ``kl_query_vectors``).

    ``mu = q~[k+1:]`` and ``var = q~[1:k+1] - mu^2``: exact up to the float64 round-off of ``var + mu^2`` (a
    relative error of about ``1e-16 * (var + mu^2) / var``) for the float64 vectors :class:`KLEmbedding` returns.
    A vector that came in float32 (a float32 array, or numbers that are all float32 numbers, as a float32 vector
    turned into a list is) keeps ``var + mu^2`` to about 7 digits only: it is decoded all the same, with a
    ``UserWarning`` naming the precision and saying to pass float64, when a decoded variance may be off by more
    than 0.1% (see :func:`kl_retrievers._adapters.warn_unreliable_query_variance`).

    Args:
        embeddings: One vector or an ``(n, 2k + 1)`` array / list of lists.

    Returns:
        float64 :class:`~kl_retrievers.gaussian.Gaussians`, shape ``(n, k)``.

    Raises:
        ValueError: Wrong length, first coordinate not 1, or a recovered variance <= 0.

    Examples:
        >>> query_gaussians_from_embeddings([1.0, 4.5, 2.0]).var.tolist()
        [[0.5]]
    """
    q = _as_2d(embeddings, "query embeddings")
    k = (q.shape[1] - 1) // 2
    if not np.allclose(q[:, 0], 1.0, rtol=0.0, atol=_QUERY_CHECK_ATOL):
        raise ValueError(
            "query embeddings are not KL query vectors q~ (the first coordinate must be 1); "
            "embed queries with KLEmbedding.get_query_embedding, not get_text_embedding or another model"
        )
    mean = q[:, k + 1 :]
    var = q[:, 1 : k + 1] - mean**2
    if not (var > 0).all():
        raise ValueError(
            "query embeddings give a variance <= 0 (var = q~[1:k+1] - mu^2); the vector is not a KL query "
            f"vector or lost precision (keep it in float64){adapters.query_precision_hint(embeddings, q)}"
        )
    adapters.warn_unreliable_query_variance(embeddings, q, "query_gaussians_from_embeddings (a query_embedding q~)")
    return Gaussians(mean, var)


# ----------------------------------------------------------------------------- filters
def _enum_value(x: Any) -> str:
    return str(x.value if isinstance(x, Enum) else x)


def _as_values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _field_predicate(key: str, op: str, ref: Any) -> Predicate:
    """The predicate of one filter ``key op ref`` on a document's metadata, specialised once per filter.

    A filter is checked on every stored document of a query, so the operator is dispatched here,
    when the filter is compiled, not per document, and each predicate reads the field itself (one
    call per document); each gives what the general form did (a missing or ``None`` field satisfies
    only ``!=``, ``nin`` and ``is_empty``; a comparison of incompatible types is false).
    """
    if op == "is_empty":

        def is_empty(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            return v is None or bool(v == "") or (isinstance(v, (list, tuple)) and len(v) == 0)

        return is_empty
    if op == "==":

        def equal(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            return v is not None and bool(v == ref)

        return equal
    if op == "!=":

        def not_equal(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            return v is None or bool(v != ref)

        return not_equal
    if op in _ORDERINGS:
        compare = _ORDERINGS[op]

        def ordered(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            if v is None:
                return False
            try:
                return bool(compare(v, ref))
            except TypeError:
                return False

        return ordered
    # the filter's own list (or set) is read at each call, as before; a single value is a list of one
    values = ref if isinstance(ref, (list, tuple, set, frozenset)) else [ref]
    if op == "in":

        def one_of(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            return v is not None and any(v == x for x in values)

        return one_of
    if op == "nin":

        def none_of(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            return v is None or all(v != x for x in values)

        return none_of
    if op == "contains":

        def contains(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            if v is None:
                return False
            try:
                return bool(ref in v)
            except TypeError:
                return False

        return contains
    if op in ("text_match", "text_match_insensitive"):
        if not isinstance(ref, str):
            return lambda m: False
        if op == "text_match":

            def text_match(m: Mapping[str, Any]) -> bool:
                v = m.get(key)
                return isinstance(v, str) and ref in v

            return text_match
        lowered = ref.lower()

        def text_match_insensitive(m: Mapping[str, Any]) -> bool:
            v = m.get(key)
            return isinstance(v, str) and lowered in v.lower()

        return text_match_insensitive
    match_all = op == "all"

    def members(m: Mapping[str, Any]) -> bool:  # "any" / "all": a scalar field reads as a one-element list
        v = m.get(key)
        if v is None:
            return False
        have = _as_values(v)
        if match_all:
            return all(w in have for w in values)
        return any(w in have for w in values)

    return members


#: The ordering operators, as functions of ``(field value, filter value)``.
_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


#: The operators that compare the filter's value as one value, where a set (no order) is refused.
_ONE_VALUE_OPERATORS = ("==", "!=", *_ORDERINGS, "contains")


def _refuse_set_value(key: str, op: str, value: Any) -> None:
    """Raise ``ValueError`` for a set (or set-like view) where ``op`` compares the filter's value as one value.

    Also for a set as the value of ``text_match`` / ``text_match_insensitive`` (which take a string): it matched
    nothing. Their other values that are no string (a number, a list: LlamaIndex's model accepts them) still
    compile and match nothing, as before.

    A set has no order: compared as a value it matches nothing (the stored metadata is JSON, which has no
    sets), so it is refused here as :mod:`kl_retrievers.filters` refuses one, naming the key and what to
    write; ``in`` / ``nin`` / ``any`` / ``all`` take its elements, where order does not matter. LlamaIndex's
    ``MetadataFilter`` turns a set given to its constructor into a list in the set's iteration order (for
    strings, one that depends on ``PYTHONHASHSEED``), which cannot be told from a list here; a set assigned
    afterwards (``f.value = {...}``) stays a set and is caught.

    Examples:
        >>> _refuse_set_value("n", "==", [1, 2]), _refuse_set_value("n", "in", {1, 2})
        (None, None)
        >>> _refuse_set_value("n", ">", {3})
        Traceback (most recent call last):
        ...
        ValueError: filter on 'n': {3} is a set, which has no order to compare as a value; > compares with ...
    """
    if op in ("text_match", "text_match_insensitive") and isinstance(value, AbstractSet):
        raise ValueError(
            f"filter on {key!r}: {op} takes a string (matched as a substring of the field's text); got "
            f"{type(value).__name__} {_short(value)}"
        )
    if op not in _ONE_VALUE_OPERATORS:
        return
    if isinstance(value, AbstractSet):
        found: Any = value
    elif isinstance(value, (list, tuple)):
        found = next((v for v in value if isinstance(v, AbstractSet)), None)
    else:
        found = None
    if found is None:
        return
    values = sorted(found, key=repr)  # a stable order for the message
    if found is not value:
        hint = "write its elements in a list instead"
    elif op == "==":
        hint = (
            f'for "one of" write MetadataFilter(key={key!r}, value={_short(values)}, operator="in") ("any" / "all" for '
            "a list field: any or all of them), or a list in the stored order for =="
        )
    elif op == "!=":
        hint = f'for "none of" write MetadataFilter(key={key!r}, value={_short(values)}, operator="nin")'
    else:
        hint = f"{op} compares with a single value"
    kind = "a set" if isinstance(found, (set, frozenset)) else f"set-like ({type(found).__name__})"
    where = "" if found is value else f" in {_short(value)}"
    raise ValueError(
        f"filter on {key!r}: {_short(found)}{where} is {kind}, which has no order to compare as a value; {hint} (a "
        "set is accepted as the value of in / nin / any / all only)"
    )


def _compile_one(f: MetadataFilter) -> Predicate:
    op = _enum_value(f.operator)
    if op not in SUPPORTED_FILTER_OPERATORS:
        raise ValueError(
            f"unsupported filter operator {op!r} on key {f.key!r}; "
            f"supported operators are: {', '.join(SUPPORTED_FILTER_OPERATORS)}"
        )
    _refuse_set_value(f.key, op, f.value)
    return _field_predicate(f.key, op, f.value)


def _compile_filters(filters: MetadataFilters) -> Predicate:
    condition = _enum_value(filters.condition or FilterCondition.AND)
    if condition not in SUPPORTED_FILTER_CONDITIONS:
        raise ValueError(
            f"unsupported filter condition {condition!r}; supported conditions are: "
            f"{', '.join(SUPPORTED_FILTER_CONDITIONS)}"
        )
    parts: list[Predicate] = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(_compile_filters(f))
        elif isinstance(f, MetadataFilter):
            parts.append(_compile_one(f))
        else:
            raise ValueError(f"filters must hold MetadataFilter or MetadataFilters; got {type(f).__name__}")
    checks = tuple(parts)
    if condition == "and":
        return _all_of(checks)
    if condition == "or":
        if not checks:
            return lambda m: True

        def some(m: Mapping[str, Any]) -> bool:
            for check in checks:  # noqa: SIM110 - a plain loop, as in _all_of
                if check(m):
                    return True
            return False

        return some

    def none_of(m: Mapping[str, Any]) -> bool:  # "not": none of the filters matches
        for check in checks:  # noqa: SIM110 - as above
            if check(m):
                return False
        return True

    return none_of


def metadata_filters_to_predicate(filters: MetadataFilters | None) -> Predicate | None:
    """Translate LlamaIndex ``MetadataFilters`` into a ``KLStore`` filter callable.

    Semantics follow LlamaIndex's ``SimpleVectorStore``: a missing (or ``None``) field only
    satisfies ``!=``, ``nin`` and ``is_empty``; ``NOT`` matches when none of its filters does;
    nested ``MetadataFilters`` are supported.  Comparing incompatible types is false (never an
    error); ``any`` / ``all`` read a scalar field as a one-element list.

    Args:
        filters: The filters, or ``None``.

    Returns:
        A predicate ``metadata -> bool`` for ``KLStore.search(filter=...)``, or ``None``.

    Raises:
        ValueError: An operator or condition outside :data:`SUPPORTED_FILTER_OPERATORS` /
            :data:`SUPPORTED_FILTER_CONDITIONS` (the message lists them), or a set as the value of
            ``==``, ``!=``, an ordering or ``contains`` (no order to compare; accepted by ``in`` / ``nin`` /
            ``any`` / ``all``).

    Examples:
        >>> from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
        >>> pred = metadata_filters_to_predicate(
        ...     MetadataFilters(filters=[MetadataFilter(key="year", value=2020, operator=">=")])
        ... )
        >>> pred({"year": 2021}), pred({"year": 2019}), pred({})
        (True, False, False)
    """
    if filters is None:
        return None
    if not isinstance(filters, MetadataFilters):
        raise TypeError(f"filters must be llama_index MetadataFilters; got {type(filters).__name__}")
    return _compile_filters(filters)


#: The operators with an exact equivalent in the package's JSON filter form (:mod:`kl_retrievers.filters`),
#: for a filter value that is plain JSON and no ``None`` (see :func:`_json_leaf`).
_JSON_OPERATORS = {
    "==": "$eq",
    "!=": "$ne",
    ">": "$gt",
    ">=": "$gte",
    "<": "$lt",
    "<=": "$lte",
    "in": "$in",
    "nin": "$nin",
}


def _exact_in_json(op: str, ref: Any) -> bool:
    """Whether ``{key: {op: ref}}`` (a JSON operator) allows what the LlamaIndex filter it was made from allows.

    The two differ only on a stored ``None``, which satisfies LlamaIndex's ``!=`` / ``nin`` and never its
    ``==`` / ``in`` (as a missing field), where the JSON form compares it as a value: a ``None`` filter value
    (or one among the values of ``$in`` / ``$nin``) has no equivalent. A value that is no plain JSON (a
    tuple, a set, a date, a numpy value, a subclass) is compared in the JSON form as the store keeps it,
    not as LlamaIndex compares it: none either.
    """
    try:
        if ref is None or not _plain_json(ref):
            return False
    except RecursionError:  # nested deeper than a filter value sensibly is: the predicate
        return False
    return op not in ("$in", "$nin") or all(x is not None for x in ref)


def _json_leaf(f: MetadataFilter) -> dict[str, Any] | None:
    """``f`` in the package's JSON filter form, ``{key: {op: value}}``; ``None`` where that is not exact.

    ``in`` / ``nin`` hold the filter's own list (read when the store compiles the filter, as the predicate
    reads it at each call); a single value is a list of one, a tuple a list of its values.
    """
    op = _JSON_OPERATORS.get(_enum_value(f.operator))
    key, ref = f.key, cast(Any, f.value)  # any value: LlamaIndex validates only the constructor's
    if op is None or type(key) is not str or key.startswith("$"):  # a "$" key would read as an operator
        return None
    if op in ("$in", "$nin"):
        if type(ref) is tuple:
            ref = list(ref)
        elif isinstance(ref, (list, tuple, set, frozenset)):
            if type(ref) is not list:  # a set (no order to keep) or a subclass: the predicate
                return None
        else:
            ref = [ref]
    return {key: {op: ref}} if _exact_in_json(op, ref) else None


def _json_filters(filters: MetadataFilters) -> dict[str, Any] | None:
    """``filters`` (checked) in the package's JSON filter form, nested; ``None`` where a leaf has no exact form."""
    parts: list[dict[str, Any]] = []
    for f in filters.filters:
        part = _json_filters(f) if isinstance(f, MetadataFilters) else _json_leaf(f)
        if part is None:
            return None
        parts.append(part)
    condition = _enum_value(filters.condition or FilterCondition.AND)
    one = parts[0] if len(parts) == 1 else None
    if condition == "and" or (not parts and condition == "or"):  # an empty OR allows every document, as AND
        return one if one is not None else {"$and": parts}
    if condition == "or":
        return one if one is not None else {"$or": parts}
    return {"$not": one if one is not None else {"$or": parts}}  # "not": none of the filters matches


def _json_exact(spec: Mapping[str, Any]) -> bool:
    """Whether a filter :func:`_json_filters` made is still exact (its lists, the filter's own, may have changed)."""
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not all(_json_exact(part) for part in value):
                return False
        elif key == "$not":
            if not _json_exact(value):
                return False
        elif not all(_exact_in_json(op, ref) for op, ref in value.items()):
            return False
    return True


def _store_filter(filters: MetadataFilters | None, predicate: Predicate | None) -> dict[str, Any] | Predicate | None:
    """What a search passes to the store for ``filters``: their JSON filter form where it is exact, else ``predicate``.

    ``predicate`` is :func:`metadata_filters_to_predicate` of ``filters`` (which checked them). ``==``, ``!=``,
    the orderings, ``in`` and ``nin`` on plain JSON values other than ``None``, in any AND / OR / NOT nesting,
    have an exact JSON form: the store caches the rows such a filter allows (keyed by its JSON), so a
    repeated filter is not called again per document on an unchanged store. ``contains``, ``text_match``,
    ``text_match_insensitive``, ``is_empty``, ``any`` and ``all`` (and ``None`` or non-JSON values) have
    none: filters holding one are passed as the predicate, called per document.

    Examples:
        >>> from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
        >>> years = MetadataFilters(filters=[MetadataFilter(key="year", value=2020, operator=">=")])
        >>> _store_filter(years, metadata_filters_to_predicate(years))
        {'year': {'$gte': 2020}}
        >>> text = MetadataFilters(filters=[MetadataFilter(key="t", value="x", operator="contains")])
        >>> callable(_store_filter(text, metadata_filters_to_predicate(text)))
        True
    """
    if predicate is None or filters is None:
        return predicate
    spec = _json_filters(filters)
    return predicate if spec is None else spec


def _all_of(checks: Sequence[Predicate]) -> Predicate:
    """True where every check is (none: always); one check is returned as is, with no wrapper around it."""
    if len(checks) == 1:  # the common case, called once per stored document
        return checks[0]
    checks = tuple(checks)

    def every(m: Mapping[str, Any]) -> bool:
        for check in checks:  # noqa: SIM110 - a plain loop: all(generator) costs more per document
            if not check(m):
                return False
        return True

    return every


def _and(*preds: Predicate | None) -> Predicate | None:
    active = [p for p in preds if p is not None]
    return _all_of(active) if active else None


def _check_top_k(k: Any) -> int:
    return check_k(k, "similarity_top_k")


def _mmr_prefetch(top_k: int, kwargs: Mapping[str, Any]) -> int:
    """MMR candidates from LlamaIndex's ``mmr_prefetch_k`` (a positive integer) or ``mmr_prefetch_factor`` (>= 1)."""
    prefetch_k = kwargs.get("mmr_prefetch_k")
    if prefetch_k is not None:
        return check_k(prefetch_k, "mmr_prefetch_k")
    factor = kwargs.get("mmr_prefetch_factor", _MMR_PREFETCH_FACTOR)
    if not is_real_number(factor) or not math.isfinite(float(factor)) or float(factor) < 1.0:
        raise ValueError(f"mmr_prefetch_factor must be a finite number >= 1 (candidates per result); got {factor!r}")
    return int(top_k * float(factor))


def _unwrap_encoder(encoder: Any, hint: str = "") -> Any:
    """The Gaussian encoder of an encoder or a :class:`KLEmbedding` (``None`` stays ``None``).

    A model name or folder (a str or a path) is refused with the call that loads it, as
    :class:`kl_retrievers.langchain.KLVectorStore` refuses one: ``encoder=`` takes a loaded encoder
    (it would otherwise fail only at the first query), and :class:`KLEmbedding` loads a model by name.

    ``hint`` is added to the message of an object that is no encoder.

    Raises:
        TypeError: ``encoder`` is a str or a path, or (not ``None``) has no ``encode_queries`` / ``encode_documents``.
    """
    if isinstance(encoder, (str, os.PathLike)):
        name = os.fspath(encoder)
        raise TypeError(
            f"got the model name or folder {name!r} where an encoder is expected: load it with "
            f"KLEmbedding({name!r}) (or kl_retrievers.load_model({name!r})) and pass that as encoder"
        )
    if isinstance(encoder, KLEmbedding):
        return encoder.encoder
    if encoder is not None and not (hasattr(encoder, "encode_queries") and hasattr(encoder, "encode_documents")):
        raise TypeError(
            f"encoder must be a Gaussian encoder (encode_queries / encode_documents), a KLEmbedding or None; got "
            f"{type(encoder).__name__} {_short(encoder)}{hint}"
        )
    return encoder


def _encode(fn: Callable[..., Gaussians], texts: list[str], batch_size: int, show_progress: bool = False) -> Gaussians:
    # No lock here: calls on different stores / encoders (and concurrent aretrieve / aquery calls) overlap.
    # Encoders guard their own shared state (the ONNX encoder is thread-safe; GaussianEncoder locks its tokenizer).
    g = fn(texts, batch_size=max(1, batch_size), show_progress_bar=show_progress)
    return g.numpy().astype(np.float64)


def _python_floats(values: Any) -> Any:
    """``values`` (a numpy array or scalar) as (nested) lists of Python ``float``: ``float(x)`` of each element.

    One C call (``tolist``) rather than a Python step per value; a float32 array is widened to float64 first, so
    each value is the one ``float(x)`` gives (``-0.0``, ``nan`` and ``inf`` kept).

    Examples:
        >>> _python_floats(np.array([[0.1, -0.0]], dtype=np.float32))
        [[0.10000000149011612, -0.0]]
    """
    return np.asarray(values, dtype=np.float64).tolist()


# --------------------------------------------------------------------------- store checks
def _last_occurrences(ids: Sequence[str], warning: str) -> list[int]:
    """Positions of the last occurrence of each id, in order (upsert semantics within one call); logs
    ``warning`` (a ``%d`` format: how many positions are dropped) when an id repeats."""
    keep = sorted({node_id: i for i, node_id in enumerate(ids)}.values())
    if len(keep) < len(ids):
        logger.warning(warning, len(ids) - len(keep))
    return keep


def _id_restriction(ids: Any, name: str) -> list[str] | None:
    """``node_ids`` / ``doc_ids`` as a list of ``str`` (``None`` stays ``None``), read once.

    A bare string is refused, not read as its characters (``delete_nodes("ab")`` would delete ``"a"`` and ``"b"``).

    Raises:
        TypeError: ``ids`` is a string, bytes, a mapping or no iterable, or one of its ids is not a str.

    Examples:
        >>> _id_restriction(("a", "b"), "node_ids"), _id_restriction(None, "doc_ids")
        (['a', 'b'], None)
        >>> _id_restriction("ab", "node_ids")
        Traceback (most recent call last):
        TypeError: node_ids must be a list of str, not a single str; got 'ab' (for one id pass ['ab'])
    """
    if ids is None:
        return None
    if isinstance(ids, (str, bytes, bytearray)):
        raise TypeError(
            f"{name} must be a list of str, not a single {type(ids).__name__}; got {ids!r:.80} "
            f"(for one id pass [{ids!r:.80}])"
        )
    if isinstance(ids, Mapping) or not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be a list of str; got {type(ids).__name__} {ids!r:.80}")
    out = list(ids)
    for j, one in enumerate(out):  # never str(): [2] would delete "2", [b"a"] look up "b'a'", [2.0] miss "2"
        if not isinstance(one, str):
            raise TypeError(f"{name}[{j}] must be a str; got {type(one).__name__} {one!r:.80}")
    return out


def _check_query_ids(query: VectorStoreQuery) -> None:
    """Refuse a ``VectorStoreQuery`` whose ``node_ids`` / ``doc_ids`` is a bare string (see :func:`_id_restriction`)."""
    _id_restriction(query.node_ids, "VectorStoreQuery.node_ids")
    _id_restriction(query.doc_ids, "VectorStoreQuery.doc_ids")


#: The keyword arguments :meth:`KLVectorStore.query` reads (LlamaIndex's ``vector_store_kwargs``).
_QUERY_KWARGS = ("mmr_threshold", "mmr_prefetch_k", "mmr_prefetch_factor")
#: What :meth:`KLVectorStore.add` (and ``async_add``) adds to a refusal of its ``nodes`` argument.
_ADD_HINT = " (KLVectorStore.add takes nodes, as VectorStoreIndex passes them)"


#: How to abstain below a confidence in LlamaIndex: the store and the retrievers return every node they rank.
_ABSTENTION_HINT = (
    "to abstain below a confidence, add node_postprocessors=[KLConfidencePostprocessor(min_confidence=...)] to "
    "the query engine, or run it on the retrieved nodes: KLConfidencePostprocessor(min_confidence=...)"
    ".postprocess_nodes(nodes)"
)


def _warn_ignored_query_kwargs(kwargs: Mapping[str, Any], where: str) -> None:
    """Warn about keyword arguments ``KLVectorStore.query`` ignores (e.g. ``top_k=``), naming what it reads.

    At the user's line (:func:`~kl_retrievers._warn.user_stacklevel`), past LlamaIndex's retriever and query engine.
    """
    ignored = sorted(set(kwargs) - set(_QUERY_KWARGS))
    if ignored:
        abstain = f"; {_ABSTENTION_HINT}" if "min_confidence" in ignored else ""
        warnings.warn(
            f"KLVectorStore.{where} ignores the keyword argument(s) {ignored}; it reads {list(_QUERY_KWARGS)} "
            "(the number of results is VectorStoreQuery.similarity_top_k, the filters VectorStoreQuery.filters)"
            + abstain,
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _check_mmr_threshold(value: Any) -> float:
    """The MMR lambda ``mmr_threshold``: a real number in ``[0, 1]`` (not a bool or a string)."""
    if not is_real_number(value) or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"the MMR lambda (mmr_threshold) must be in [0, 1], a number (1: pure relevance, 0: most diverse); "
            f"got {value!r:.80}"
        )
    return float(value)


def _listed(items: Any, what: str, kind: str, example: str, single: str, hint: str = "") -> list[Any]:
    """``items`` read once into a list (a generator is consumed here); what the list holds is the caller's check.

    Args:
        items: What the caller was given.
        what: Its name in the messages.
        kind: What the list must hold, in words (``"llama_index nodes"``).
        example: One such item, as code (``"TextNode(text=...)"``).
        single: The fix for a single item given alone (``"[node]"``).
        hint: Added to the message about a string, a mapping or no iterable.

    Raises:
        TypeError: ``items`` is a single node, a string, a mapping or no iterable.
    """
    if isinstance(items, BaseNode):  # a pydantic model iterates over its fields: "got a tuple" otherwise
        raise TypeError(
            f"{what} must be a list of {kind}; got a single {type(items).__name__} "
            f"({str(items)[:40]!r}): pass it in a list, {single}"
        )
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(
            f"{what} must be a list of {kind} (e.g. [{example}]); got {type(items).__name__} {str(items)[:40]!r}{hint}"
        )
    return list(items)


def _node_list(nodes: Any, what: str, hint: str = "") -> list[BaseNode]:
    """``nodes`` as a list of LlamaIndex nodes, read once (a generator is consumed here, and only here).

    Raises:
        TypeError: ``nodes`` is a single node, a string, a mapping or no iterable, or holds something else
            than ``BaseNode`` objects (e.g. plain strings); ``hint`` is added to the message.
    """
    node_list = _listed(nodes, what, "llama_index nodes", "TextNode(text=...)", "[node]", hint)
    for j, node in enumerate(node_list):
        if not isinstance(node, BaseNode):
            raise TypeError(
                f"{what} must hold llama_index nodes (e.g. TextNode(text=...)); {what}[{j}] is a "
                f"{type(node).__name__} ({str(node)[:40]!r}): wrap each text as TextNode(text=text){hint}"
            )
    return node_list


def _check_node_ids(nodes: Sequence[BaseNode], what: str = "nodes") -> None:
    """Refuse, before anything is encoded, a node id the store would refuse: not a ``str`` (a node built with
    ``model_construct``), or holding a lone surrogate (it could not be saved as UTF-8); the message names the node.

    A repeated id is no error: the last occurrence wins (:func:`_last_occurrences`).
    """
    for j, node in enumerate(nodes):
        node_id = node.node_id
        if not isinstance(node_id, str):
            raise TypeError(f"{what}[{j}].node_id must be a str; got {type(node_id).__name__} {node_id!r:.80}")
        _check_utf8(node_id, f"{what}[{j}].node_id")


def _caller_selves(frame: FrameType | None) -> Iterator[dict[str, Any]]:
    """The attributes (``__dict__``) of ``self`` in ``frame`` and its callers, nearest first, up to
    :data:`_STACK_DEPTH` frames (frames without such a ``self`` are skipped)."""
    f = frame
    for _ in range(_STACK_DEPTH):
        if f is None:
            return
        attrs = getattr(f.f_locals.get("self"), "__dict__", None)
        if isinstance(attrs, dict):
            yield attrs
        f = f.f_back


def _caller_vector_store() -> BasePydanticVectorStore | None:
    """The vector store of the nearest caller holding one (a ``VectorStoreIndex``, retriever or pipeline)."""
    frame = inspect.currentframe()
    try:
        for attrs in _caller_selves(frame.f_back if frame is not None else None):
            for name in ("_vector_store", "vector_store"):
                store = attrs.get(name)
                if isinstance(store, BasePydanticVectorStore):
                    return store
        return None
    finally:
        del frame


def _index_retriever_verdict(store: BasePydanticVectorStore, node_ids: Sequence[str]) -> bool | None:
    """Whether ``node_ids`` is the list ``VectorStoreIndex.as_retriever`` passed to ``store``: no restriction.

    Walks the call stack for the retriever that built the query: an object holding the index
    (``_index``, with ``index_struct.nodes_dict``), ``store`` as its ``_vector_store`` (or
    ``_image_vector_store``) and this very ``node_ids`` list as its ``_node_ids`` (what
    ``VectorIndexRetriever`` and ``MultiModalVectorIndexRetriever`` keep and put in their
    ``VectorStoreQuery``). ``as_retriever`` passes ``list(index_struct.nodes_dict.values())``; for a
    store that keeps the text LlamaIndex records there only the ``IndexNode`` / ``ImageNode`` nodes
    it inserted through that index object, never the text nodes, and never removes an id (also not
    when the node is deleted, or re-inserted as a ``TextNode``). So the list is the as_retriever list
    when it equals the index's ``nodes_dict`` values now: ``True``. Anything else is read as a real
    restriction (``False``): a list given to ``VectorIndexRetriever(index, node_ids=...)``, also a
    part of the index's own list (it cannot be told from an ``as_retriever`` list made before a later
    insert, and widening a restriction someone asked for is worse than narrowing a stale one), and
    the list of an index with ``store_nodes_override=True``, which records every node it inserted.
    ``None``: no such retriever on the stack (a direct query).
    """
    frame = inspect.currentframe()
    try:
        for attrs in _caller_selves(frame.f_back if frame is not None else None):
            if "_node_ids" not in attrs or "_index" not in attrs:
                continue
            own = attrs["_node_ids"]
            if own is not node_ids and own != node_ids:
                continue
            if not any(attrs.get(name) is store for name in ("_vector_store", "_image_vector_store")):
                continue
            index = attrs["_index"]
            nodes_dict = getattr(getattr(index, "index_struct", None), "nodes_dict", None)
            if not isinstance(nodes_dict, dict):
                continue
            if getattr(index, "_store_nodes_override", False):
                return False
            return [str(v) for v in nodes_dict.values()] == [str(i) for i in node_ids]
        return None
    finally:
        del frame


def _vector_hash(vector: Sequence[float] | np.ndarray) -> int:
    """A hash of an embedding's values (a node's embedding against those a :class:`KLEmbedding` gave).

    Python's numeric hash: equal values hash equal whatever holds them (a list of floats, a float32 or float64
    array, ``-0.0`` and ``0.0``), as ``hash(tuple(float(x) for x in vector))`` does, without a Python step per
    value (a list is hashed as it is, an array read as Python floats in one call). The hashes are compared within
    one process only (a :class:`KLVectorStore` does not pickle); float hashes are not salted anyway.
    """
    if isinstance(vector, np.ndarray):
        vector = vector.tolist()
    return hash(tuple(vector))


def _store_problem(store: BasePydanticVectorStore) -> str | None:
    """Why ``store`` cannot rank ``q~`` / ``d~`` by inner product, or ``None`` (fine, or cannot tell)."""
    if isinstance(store, SimpleVectorStore):
        return "SimpleVectorStore, the LlamaIndex default, ranks by cosine similarity"
    faiss_index = getattr(store, "_faiss_index", None)
    if faiss_index is not None and getattr(faiss_index, "metric_type", None) == 1:  # faiss.METRIC_L2
        return "its faiss index ranks by L2 distance"
    return None


# --------------------------------------------------------------------------- embedding
# The pickled encoder in a KLEmbedding's pickled state, when it cannot be loaded again by name.
_ENCODER_STATE = "kl_retrievers_encoder"
# The pickled encoder's weights identity (``weights_sha256``), next to it: the unpickled encoder's parameters are
# new objects, which its weights record does not know, though they hold the same weights.
_WEIGHTS_STATE = "kl_retrievers_weights_sha256"


_reloadable_model = adapters.loads_anywhere  # whether load_model loads a name in any process
_encoder_backend = adapters.encoder_backend


def _unloadable_model(name: str) -> str:
    return (
        f"KLEmbedding has no encoder and cannot load the model {name!r} named by model_name: it is neither a "
        "bundled model (kl_retrievers.pretrained.bundled_models()) nor an existing absolute folder. Pass the "
        "encoder (KLEmbedding(encoder) or KLEmbedding.from_dict(data, encoder=encoder)), or save it with "
        "encoder.save_pretrained(folder) and use KLEmbedding(kl_retrievers.load_model(folder)), whose model_name "
        "is then the folder"
    )


#: The key of :meth:`KLEmbedding.to_dict` holding what the embeddings depend on besides the model name.
_IDENTITY_KEY = "encoder_identity"
#: ``show_progress`` of the :meth:`KLEmbedding.get_text_embedding_batch` call running in this context: the
#: encoder's progress bar (LlamaIndex's cache path calls ``_get_text_embeddings`` without it).
_SHOW_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("kl_retrievers_show_progress", default=False)


def _warn_embeddings_cache(cache: Any) -> None:
    """Warn that ``BaseEmbedding.embeddings_cache`` (``None``: nothing to say) is keyed by the text alone.

    LlamaIndex keeps its entries in one collection (``"embeddings"``) under the text, whatever the model and
    whether the text was embedded as a query or as a document, and ``BaseEmbedding`` offers no hook to key them
    otherwise: another model sharing the cache, or a query with the text of a cached document (``q~`` and
    ``d~`` differ), gets the wrong embedding.
    """
    if cache is None:
        return
    logger.warning(
        "KLEmbedding(embeddings_cache=%s): LlamaIndex keys that cache by the text alone, so a query whose text "
        "is a cached document's gets that document's embedding (KLEmbedding embeds queries and documents "
        "differently), and another model (or a retrained one) sharing the cache gets this model's embeddings. "
        "Use it for one model's documents only, with queries embedded without it; IngestionPipeline(cache=...), "
        "keyed by KLEmbedding.to_dict() (which holds the encoder's identity), caches ingestion safely",
        type(cache).__name__,
    )


def _text_list(texts: Any, where: str) -> list[str]:
    """``texts`` as a list; a bare string is refused, not embedded character by character (LlamaIndex takes a list)."""
    if isinstance(texts, (str, bytes)):
        one = "aget_text_embedding" if where.startswith("a") else "get_text_embedding"
        raise TypeError(
            f"KLEmbedding.{where} takes a list of texts, not a single {type(texts).__name__}; got {texts!r:.80} "
            f"(pass [text], or call {one}(text) for one text)"
        )
    return list(texts)


class KLEmbedding(BaseEmbedding):
    """LlamaIndex embedding model giving the exact inner-product rewrite of ``-KL(Q || D)``.

    Queries embed as ``q~`` and texts (documents) as ``d~``, both ``2k + 1``-dimensional
    float64 lists, so ``<q~, d~> + c(q) = -KL``.  Use them only with stores that rank by
    **inner product** (:class:`KLVectorStore`, or a third-party store configured for dot
    product); cosine / L2 stores do not preserve the -KL ranking.  Averaging query
    embeddings (``get_agg_embedding_from_queries``) gives the ``q~`` of the moment-matched
    Gaussian of the queries, which is still a valid query vector.

    When it embeds for a store known to rank otherwise (LlamaIndex's default cosine
    ``SimpleVectorStore``, a FAISS L2 index), it emits one ``UserWarning`` per store type,
    as :class:`kl_retrievers.langchain.KLEmbeddings` does.  :meth:`similarity` (what
    ``SentenceEmbeddingOptimizer`` and ``SemanticSplitterNodeParser`` call) is a KL relevance,
    not cosine.

    ``get_text_embedding_batch`` (what ``VectorStoreIndex`` and ``IngestionPipeline`` call) encodes its whole
    list in one encoder call, as ``KLStore.add`` does (LlamaIndex's cuts it into calls of ``embed_batch_size``
    texts): on an encoder whose output depends on its batch (int8 ONNX, ``batch_invariant`` ``False``) a text
    then gets the Gaussian ``KLStore.add`` of the same list (with ``batch_size=embed_batch_size``) gives it.
    The call sends one LlamaIndex embedding event (callbacks and instrumentation) for the list, and
    ``show_progress=True`` shows the encoder's progress bar.

    Args:
        encoder: A :class:`~kl_retrievers.encoder.GaussianEncoder` (or anything with
            ``encode_queries`` / ``encode_documents``), a model name / path for
            :func:`~kl_retrievers.pretrained.load_model`, or ``None`` for the default model.
        embed_batch_size: Texts per forward pass of the encoder (``batch_size`` of its ``encode_documents``,
            which sorts the texts by length first), as ``KLStore``'s ``batch_size``.
        callback_manager: LlamaIndex callback manager.
        backend: When ``encoder`` is a name, a path or ``None``: ``"torch"``, ``"onnx"`` (ONNX
            Runtime with int8 weights) or ``None`` (the default:
            :func:`~kl_retrievers.pretrained.default_backend`; see
            :func:`~kl_retrievers.pretrained.load_model`). With an encoder object, which is already
            loaded, only its own backend is accepted (a ``ValueError`` names both and the call that loads
            the model on the other; the rule of :class:`kl_retrievers.langchain.KLEmbeddings`). The field
            records the backend of the encoder in use (``None`` for another encoder class).
        **kwargs: Other ``BaseEmbedding`` fields (``num_workers``, ...). ``model_name`` defaults to
            the encoder's ``name_or_path``; with ``encoder=None`` it names the model to load (see below).
            ``embeddings_cache`` logs a WARNING (also when assigned later): LlamaIndex keys that cache by
            the text alone, with no hook to add the model or whether the text was a query, so another model
            sharing it, or a query with a cached document's text, gets a wrong embedding;
            ``IngestionPipeline(cache=...)``, keyed by :meth:`to_dict`, caches ingestion correctly.

    Serialisation: ``model_name`` and ``backend`` are fields, so ``to_dict()`` records the model (and,
    under ``"encoder_identity"``, its weights' SHA-256 and config: ``IngestionPipeline``'s cache key, see
    :meth:`to_dict`) and
    ``KLEmbedding.from_dict(embed.to_dict())`` (or ``KLEmbedding(model_name=...)``) loads it again
    with :func:`~kl_retrievers.pretrained.load_model`, when it is a bundled model (also
    ``kl_retrievers:NAME``) or an existing absolute folder (what ``load_model(folder)`` records);
    another name (an in-memory encoder's) raises a ``ValueError`` naming it, never loading the
    default model in its place. Pickling (``IngestionPipeline(num_workers=...)`` pickles its
    transformations) stores such a loadable name and the backend, or else the pickled encoder
    itself with its weights' identity (``weights_sha256``, so that an unpickled copy's
    :meth:`to_dict`, the pipeline's cache key, is the original's); an encoder that neither has a
    loadable name nor pickles (an ONNX encoder whose folder was moved, an encoder of your own
    holding a lock or a session) raises a ``TypeError`` naming the model when pickled.

    Examples:
        >>> embed = KLEmbedding()  # doctest: +SKIP
        >>> len(embed.get_query_embedding("hello")) == 2 * embed.encoder.config.dim + 1  # doctest: +SKIP
        True
    """

    backend: str | None = Field(
        default=None, description='The encoder\'s backend, "onnx" or "torch" (None: another encoder class).'
    )

    _encoder: Any = PrivateAttr()
    _warned: set[str] = PrivateAttr(default_factory=set)
    # the digest of in-memory weights (no weights_sha256) and the parameter versions it is right for
    _weights_digest: tuple[Any, str | None] | None = PrivateAttr(default=None)

    def __init__(
        self,
        encoder: Any | str | None = None,
        embed_batch_size: int = 32,
        callback_manager: CallbackManager | None = None,
        backend: Backend | None = None,
        **kwargs: Any,
    ) -> None:
        if encoder is None or isinstance(encoder, (str, os.PathLike)):
            from kl_retrievers.pretrained import load_model

            named = kwargs.get("model_name")
            if encoder is not None and named is not None and str(named) != str(encoder):
                raise ValueError(
                    f"pass either encoder or model_name, not both; got encoder={str(encoder)!r} and "
                    f"model_name={str(named)!r}"
                )
            if encoder is None and named is not None:  # from_dict, unpickling, KLEmbedding(model_name=...)
                if not _reloadable_model(str(named)):
                    raise ValueError(_unloadable_model(str(named)))
                encoder = load_model(str(named), backend=backend)
            else:
                encoder = load_model(None if encoder is None else str(encoder), backend=backend)
        if not (hasattr(encoder, "encode_queries") and hasattr(encoder, "encode_documents")):
            raise TypeError(
                f"encoder must have encode_queries / encode_documents (a GaussianEncoder); got {type(encoder).__name__}"
            )
        if backend is not None:  # a loaded encoder stays on its own backend: the same one is harmless
            from kl_retrievers.pretrained import BACKENDS

            if backend not in BACKENDS:
                raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
            refusal = adapters.backend_refusal(encoder, backend, "KLEmbedding({name}, backend={backend})")
            if refusal is not None:
                raise ValueError(refusal)
        _warn_embeddings_cache(kwargs.get("embeddings_cache"))
        kwargs.setdefault("model_name", str(getattr(encoder, "name_or_path", type(encoder).__name__)))
        super().__init__(
            embed_batch_size=embed_batch_size,
            callback_manager=callback_manager or CallbackManager(),
            backend=_encoder_backend(encoder) or backend,  # type: ignore[call-arg]  # our field
            **kwargs,
        )
        self._encoder = encoder

    def __setattr__(self, name: str, value: Any) -> None:
        """Set a field; an ``embeddings_cache`` warns as in the constructor (see :func:`_warn_embeddings_cache`)."""
        if name == "embeddings_cache":
            _warn_embeddings_cache(value)
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[Any, Any]:
        """The pickled state: the fields, and the encoder by name when it can be loaded again, else itself.

        LlamaIndex's own ``__getstate__`` drops an encoder that does not pickle and its
        ``__setstate__`` calls ``__init__`` with the fields alone, which loaded the default model.

        Raises:
            TypeError: The encoder does not pickle and ``model_name`` is not a model that
                :func:`~kl_retrievers.pretrained.load_model` loads anywhere (the message names it).
        """
        state = BaseModel.__getstate__(self)
        fields = {}
        for key, value in self.__dict__.items():
            try:  # as LlamaIndex does: a field that does not pickle (a callback handler) is left out
                pickle.dumps(value)
            except Exception:  # whatever pickling raises
                logger.warning("KLEmbedding: not pickling the field %r, which does not pickle", key)
                continue
            fields[key] = value
        private = {k: v for k, v in (state.get("__pydantic_private__") or {}).items() if k != "_encoder"}
        out = {**state, "__dict__": fields, "__pydantic_private__": private}
        name = str(self.model_name)
        if (
            _encoder_backend(self._encoder) == "onnx"  # a torch encoder may differ from its folder (trained in memory)
            and name == str(getattr(self._encoder, "name_or_path", ""))
            and _reloadable_model(name)
        ):
            return out  # __setstate__ loads it by name, with the recorded backend
        known = getattr(self._encoder, "weights_sha256", None)  # read before: it holds for the weights pickled
        try:
            out[_ENCODER_STATE] = pickle.dumps(self._encoder, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # whatever pickling raises
            raise TypeError(
                f"cannot pickle this KLEmbedding: its encoder ({type(self._encoder).__name__}, model {name!r}) does "
                f"not pickle ({type(exc).__name__}: {exc}), and {name!r} is not a model that load_model can load "
                "again elsewhere (a bundled model or an existing absolute folder). Save the model with "
                "encoder.save_pretrained(folder) and use KLEmbedding(kl_retrievers.load_model(folder)), or "
                "do not pickle it (e.g. IngestionPipeline.run without num_workers)"
            ) from exc
        if isinstance(known, str):
            out[_WEIGHTS_STATE] = known  # so that to_dict() (the cache key) is the same in the unpickled copy
        return out

    def __setstate__(self, state: dict[Any, Any]) -> None:
        """Rebuild from :meth:`__getstate__`'s state (the encoder unpickled, or loaded by ``model_name``).

        Raises:
            ValueError: No encoder in the state and ``model_name`` cannot be loaded (a pickle made by
                LlamaIndex's own ``__getstate__``, which dropped an encoder that does not pickle).
        """
        fields = dict(state.get("__dict__") or {})
        blob = state.get(_ENCODER_STATE)
        # the pickled encoder (our own state, inside the pickle being loaded); else it is loaded by name, or
        # comes from a pickle made by LlamaIndex's __getstate__ that kept it
        private = state.get("__pydantic_private__") or {}
        encoder = pickle.loads(blob) if blob is not None else private.get("_encoder")
        known = state.get(_WEIGHTS_STATE)
        remember = getattr(encoder, "_remember_weights", None)
        if isinstance(known, str) and callable(remember) and getattr(encoder, "weights_sha256", None) is None:
            remember(known)  # the weights pickled, whose identity was known: the same cache key as the original's
        self.__init__(encoder, **fields)  # type: ignore[misc]

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialisation."""
        return "KLEmbedding"

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """The fields, and under ``"encoder_identity"`` what the embeddings depend on besides the model name.

        ``IngestionPipeline`` keys its cache by this dict: ``encoder_identity`` holds the weights' SHA-256
        (``encoder.weights_sha256``; for weights changed in memory, whose identity is not known, a SHA-256 of
        the parameters, ``"parameters:..."``) and the encoder config (``max_length``, ``query_max_length``,
        the query prefix in ``extra``...), so a model retrained in the same folder, or another token budget,
        gets a new cache key instead of the old embeddings. :meth:`from_dict` ignores it (the model is loaded
        by ``model_name``).
        """
        data = super().to_dict(**kwargs)
        data[_IDENTITY_KEY] = self._encoder_identity()
        return data

    def _encoder_identity(self) -> dict[str, Any]:
        """``{"weights_sha256", "config"}`` of the encoder (``None`` where it does not say)."""
        to_dict = getattr(getattr(self._encoder, "config", None), "to_dict", None)
        config = to_dict() if callable(to_dict) else None
        return {"weights_sha256": self._weights_identity(), "config": config}

    def _weights_identity(self) -> str | None:
        """``encoder.weights_sha256``, else (weights changed in memory) a SHA-256 of its parameters, else ``None``."""
        encoder = self._encoder
        known = getattr(encoder, "weights_sha256", None)
        if isinstance(known, str):
            return known
        state_dict = getattr(encoder, "state_dict", None)
        if not callable(state_dict):
            return None
        versions = getattr(encoder, "_parameter_versions", None)
        version = versions() if callable(versions) else None
        cached = self._weights_digest
        if version is not None and cached is not None and cached[0] == version:
            return cached[1]
        import torch

        digest = hashlib.sha256()
        for name, tensor in state_dict().items():
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        identity = f"parameters:{digest.hexdigest()}"
        self._weights_digest = (version, identity)
        return identity

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> KLEmbedding:
        """Rebuild from :meth:`to_dict`'s ``data`` (the model loaded by its recorded name and backend).

        An encoder object given as ``encoder=`` is used as it is: the backend recorded in ``data`` (the
        one of the encoder saved) is dropped, logged at DEBUG level when it differs from that encoder's,
        and the field records the given encoder's backend. A ``backend=`` given here too is checked
        against the encoder as in the constructor.
        """
        data = {key: value for key, value in data.items() if key != _IDENTITY_KEY}  # to_dict's, for the cache key
        encoder = kwargs.get("encoder")
        if encoder is not None and not isinstance(encoder, (str, os.PathLike)) and "backend" not in kwargs:
            recorded = data.pop("backend", None)
            if recorded is not None and recorded != _encoder_backend(encoder):
                logger.debug(
                    "KLEmbedding.from_dict: the given %s replaces the recorded model's backend %r",
                    type(encoder).__name__,
                    recorded,
                )
        return cast(KLEmbedding, super().from_dict(data, **kwargs))

    @property
    def encoder(self) -> Any:
        """The wrapped Gaussian encoder (a ``GaussianEncoder``, ``OnnxGaussianEncoder`` or any object with
        ``encode_queries`` / ``encode_documents`` returning :class:`~kl_retrievers.gaussian.Gaussians`)."""
        return self._encoder

    def _check_store(self) -> KLVectorStore | None:
        """Warn (once per store type) when embedding for a store that does not rank by inner product.

        Returns the :class:`KLVectorStore` found on the stack, if any, which learns the encoder (for its
        model's calibrator); the caller hands it the document vectors it then embeds (see
        :meth:`KLVectorStore._adopt_document_encoder`).
        """
        store = _caller_vector_store()
        if isinstance(store, KLVectorStore):
            store._adopt_query_encoder(self._encoder)
        problem = None if store is None else _store_problem(store)
        if store is None or problem is None or type(store).__name__ in self._warned:
            return store if isinstance(store, KLVectorStore) else None
        adapters.warn_incompatible_store(
            "KLEmbedding",
            type(store).__name__,
            problem,
            "Use KLVectorStore (StorageContext.from_defaults(vector_store=KLVectorStore())) or a store "
            "configured for inner product.",
            stacklevel=user_stacklevel(1),  # the user's line (warnings.warn runs one call down)
        )
        self._warned.add(type(store).__name__)  # after: a warning raised as an error (-W error) is raised again
        return store if isinstance(store, KLVectorStore) else None

    def _embedded_for(self, store: KLVectorStore | None, vectors: list[Embedding]) -> list[Embedding]:
        """``vectors``, the document vectors of texts embedded for ``store``, noted by it (see
        :meth:`KLVectorStore._adopt_document_encoder`)."""
        if store is not None:
            store._adopt_document_encoder(self._encoder, vectors)
        return vectors

    def query_gaussians(self, queries: str | Sequence[str]) -> Gaussians:
        """Encode queries as float64 Gaussians (one encoder call).

        ``queries`` is checked as the encoder checks it: a bare string is one query; a mapping, a set or
        ``bytes`` is refused with a ``TypeError``. An encoder whose output depends on its batch (int8 ONNX:
        ``batch_invariant`` is ``False``) encodes them one at a time, so a query's Gaussian does not depend
        on the others (what :class:`KLVectorStore` and ``KLStore.search`` give it).
        """
        texts = check_texts(queries, "queries")
        return _encode(self._encoder.encode_queries, texts, _query_batch_size(self._encoder, self.embed_batch_size))

    def document_gaussians(self, texts: str | Sequence[str]) -> Gaussians:
        """Encode documents as float64 Gaussians (one encoder call).

        ``texts`` is checked as the encoder checks it: a bare string is one document; a mapping, a set or
        ``bytes`` is refused with a ``TypeError``.
        """
        return _encode(
            self._encoder.encode_documents, check_texts(texts, "texts"), self.embed_batch_size, _SHOW_PROGRESS.get()
        )

    def similarity(
        self,
        embedding1: Embedding,
        embedding2: Embedding,
        mode: SimilarityMode = SimilarityMode.DEFAULT,
    ) -> float:
        """Similarity of two KL vectors as a relevance in ``(0, 1]`` (higher is more similar).

        LlamaIndex components that compare embeddings through ``embed_model.similarity``
        (``SentenceEmbeddingOptimizer``, ``SemanticSplitterNodeParser``, ...) call this. Cosine is
        meaningless for ``q~`` / ``d~``, so with the default ``mode`` the vectors are inverted back
        to their Gaussians (:func:`query_gaussians_from_embeddings`,
        :func:`document_gaussians_from_embeddings`) and:

        * a query and a document vector (either order): ``exp(-KL(Q || D))``, the relevance
          :class:`KLVectorStore` reports by default, so ranking by it is ranking by ``-KL``;
        * two document vectors (what ``SemanticSplitterNodeParser`` compares) or two query vectors:
          ``exp(-(KL(A || B) + KL(B || A)) / 2)``, the relevance of the symmetrised KL, which is
          also the redundancy :class:`KLVectorStore`'s MMR uses (``1`` for identical Gaussians,
          symmetric in its arguments).

        Any other ``mode`` (``"dot_product"``, ``"euclidean"``), vectors of different lengths and
        vectors that are not KL vectors get LlamaIndex's :meth:`BaseEmbedding.similarity`.

        Examples:
            >>> embed = KLEmbedding()  # doctest: +SKIP
            >>> q = embed.get_query_embedding("caffeine")  # doctest: +SKIP
            >>> d = embed.get_text_embedding_batch(["Coffee has caffeine.", "Aspirin lowers fever."])  # doctest: +SKIP
            >>> [round(embed.similarity(q, x), 2) for x in d]  # exp(-KL), as KLVectorStore scores  # doctest: +SKIP
            [0.77, 0.45]
        """
        if mode == SimilarityMode.DEFAULT:
            score = _kl_similarity(embedding1, embedding2)
            if score is not None:
                return score
        return super().similarity(embedding1, embedding2, mode=mode)

    def _query_vector(self, query: str) -> Embedding:
        if not isinstance(query, str):  # a list would otherwise fail as "texts[0] is list"
            raise TypeError(f"query must be a str (one query); got {type(query).__name__}")
        return _python_floats(kl_query_vectors(self.query_gaussians([query]))[0])

    def _document_vectors(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        return _python_floats(kl_document_vectors(self.document_gaussians(texts)))

    async def _adocument_vectors(self, texts: list[str]) -> list[Embedding]:
        """:meth:`_document_vectors` in a worker thread; a blank-document warning points at the caller's line."""
        with at_callers_line():  # found here: the worker thread's stack holds no user's frame
            return await asyncio.to_thread(self._document_vectors, texts)

    def _get_query_embedding(self, query: str) -> Embedding:
        self._check_store()
        return self._query_vector(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        self._check_store()
        return await asyncio.to_thread(self._query_vector, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        store = self._check_store()
        return self._embedded_for(store, self._document_vectors([text]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        store = self._check_store()
        return self._embedded_for(store, await self._adocument_vectors([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        store = self._check_store()
        return self._embedded_for(store, self._document_vectors(texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        store = self._check_store()
        return self._embedded_for(store, await self._adocument_vectors(texts))

    def _event_payload(self) -> dict[str, Any]:
        """What LlamaIndex's embedding events carry: ``to_payload()`` where it exists, else ``to_dict()`` (0.14.0)."""
        to_payload = getattr(self, "to_payload", None)
        return dict(to_payload() if callable(to_payload) else self.to_dict())

    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[Embedding]:
        """Document vectors ``d~`` of ``texts``, all in one encoder call (see the class docstring).

        LlamaIndex's version encodes ``embed_batch_size`` texts per call, in input order; this one hands the
        whole list to the encoder (which sorts it by length, then batches it), as ``KLStore.add`` does, so a
        ``VectorStoreIndex`` stores what ``KLStore.add`` of the same texts stores, also on an int8 encoder.
        As LlamaIndex's: an ``EMBEDDING`` callback event and the instrumentation's start and end events (one
        each, for the whole list), the rate limiter and the embeddings cache (the texts not cached are
        encoded in one call); ``show_progress`` shows the encoder's progress bar.

        Raises:
            TypeError: ``texts`` is a single string (pass a list; ``get_text_embedding`` embeds one text).
        """
        texts = _text_list(texts, "get_text_embedding_batch")
        if not texts:
            return []
        model_dict = self._event_payload()
        _dispatcher.event(EmbeddingStartEvent(model_dict=model_dict))
        with self.callback_manager.event(CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}) as event:
            limiter = getattr(self, "rate_limiter", None)  # LlamaIndex's fields (not in every 0.14 release)
            if limiter is not None:
                limiter.acquire()
            token = _SHOW_PROGRESS.set(bool(show_progress))
            try:
                if getattr(self, "embeddings_cache", None) is not None:
                    embeddings = self._get_text_embeddings_cached(texts)
                else:
                    embeddings = self._get_text_embeddings(texts)
            finally:
                _SHOW_PROGRESS.reset(token)
            event.on_end(payload={EventPayload.CHUNKS: texts, EventPayload.EMBEDDINGS: embeddings})
        _dispatcher.event(EmbeddingEndEvent(chunks=texts, embeddings=embeddings))
        return embeddings

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Async :meth:`get_text_embedding_batch`: one encoder call, in a worker thread (the event loop keeps
        running); the same events, rate limiter and cache as LlamaIndex's async version."""
        texts = _text_list(texts, "aget_text_embedding_batch")
        if not texts:
            return []
        model_dict = self._event_payload()
        _dispatcher.event(EmbeddingStartEvent(model_dict=model_dict))
        event_id = self.callback_manager.on_event_start(
            CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
        )
        token = _SHOW_PROGRESS.set(bool(show_progress))  # asyncio.to_thread copies it into the worker thread
        try:
            if getattr(self, "embeddings_cache", None) is not None:
                embeddings = await self._aget_text_embeddings_cached(texts)
            else:
                limiter = getattr(self, "rate_limiter", None)
                if limiter is not None:
                    await limiter.async_acquire()
                embeddings = await self._aget_text_embeddings(texts)
        finally:
            _SHOW_PROGRESS.reset(token)
        _dispatcher.event(EmbeddingEndEvent(chunks=texts, embeddings=embeddings))
        self.callback_manager.on_event_end(
            CBEventType.EMBEDDING,
            payload={EventPayload.CHUNKS: texts, EventPayload.EMBEDDINGS: embeddings},
            event_id=event_id,
        )
        return embeddings


def _kl_gaussian(vector: Any) -> tuple[bool, Gaussians] | None:
    """``(is_query, Gaussian)`` of one KL vector (``q~`` or ``d~``), or ``None`` when it is neither."""
    if np.ndim(vector) != 1:
        return None
    try:
        return False, document_gaussians_from_embeddings(vector)
    except ValueError:
        pass
    try:
        return True, query_gaussians_from_embeddings(vector)
    except ValueError:
        return None


def _kl_similarity(embedding1: Any, embedding2: Any) -> float | None:
    """:meth:`KLEmbedding.similarity` of two KL vectors (``None``: not two KL vectors of one size)."""
    if len(embedding1) != len(embedding2):
        return None
    first, second = _kl_gaussian(embedding1), _kl_gaussian(embedding2)
    if first is None or second is None:
        return None
    relevance = adapters.resolve_relevance(adapters.DEFAULT_RELEVANCE)
    (query1, a), (query2, b) = first, second
    if query1 != query2:  # -KL(query || document)
        query, document = (a, b) if query1 else (b, a)
        return relevance(float(np.asarray(neg_kl_matrix(query, document))[0, 0]), a.dim)
    symmetric = 0.5 * (np.asarray(neg_kl_matrix(a, b))[0, 0] + np.asarray(neg_kl_matrix(b, a))[0, 0])
    return relevance(float(symmetric), a.dim)


# ------------------------------------------------------------------------ vector store
def _node_text(node: BaseNode, mode: MetadataMode = MetadataMode.NONE) -> str | None:
    """The node's content in ``mode`` (``NONE``: its own text; ``EMBED``: what an embedder reads), else ``None``."""
    try:
        return node.get_content(metadata_mode=mode)
    except (AttributeError, NotImplementedError, ValueError):
        return None


def _stored_metadata(node: BaseNode, flat_metadata: bool = False, *, remove_text: bool = True) -> dict[str, Any]:
    """What a store keeps as a node's metadata: LlamaIndex's ``node_to_metadata_dict`` (by default without the text).

    The user's metadata at the top level (what filters see), plus ``ref_doc_id`` / ``doc_id`` /
    ``document_id`` and the node JSON under ``_node_content`` (its class, relationships and
    excluded metadata keys), which :func:`_to_node` rebuilds the node from. ``remove_text=False``
    keeps the node's own text in that JSON: for a store whose document text is another one (a
    hybrid store indexes the node's ``MetadataMode.EMBED`` content, see :func:`_indexed_text`).
    """
    node = _with_checked_metadata(_without_search_scores(node))
    try:
        return node_to_metadata_dict(node, remove_text=remove_text, flat_metadata=flat_metadata)
    except ValueError as exc:  # pydantic's PydanticSerializationError is one
        if isinstance(node, IndexNode) and node.obj is not None and not _object_serialises(node):
            raise ValueError(
                f"IndexNode {node.node_id!r} carries an object ({type(node.obj).__name__}) that cannot be stored "
                "as JSON; give the retriever the object instead: VectorStoreIndex(objects=[...]) (its as_retriever "
                "and KLRetriever.from_defaults(index=...) look it up by index_id), KLRetriever.from_defaults("
                "nodes=[...]) / KLHybridRetriever.from_defaults(nodes=[...]), or object_map={index_id: obj}"
            ) from exc
        raise


def _pydantic_json_values(value: Any, where: str = "metadatas[0]") -> Any:
    """``value`` with each ``uuid.UUID`` and path as its str and each ``Enum`` as its value, as pydantic's JSON
    mode stored them before 2026-12-06 (a ``Path`` from ``SimpleDirectoryReader(file_metadata=...)``), in
    nested dicts, lists and tuples too; each dict key as LlamaIndex's own node JSON writes it
    (:func:`_pydantic_json_key`: ``{uuid: ...}`` as ``{str(uuid): ...}``, ``{(1, 2): ...}`` as ``{"1,2": ...}``,
    a date as its ISO text; ``TextNode`` refuses such a key at construction, not in a dict set or changed later);
    anything else is left to :func:`_metadata_list`'s check.

    Raises:
        TypeError: Two keys of one dict that are the same once converted (``uuid`` and ``str(uuid)``, an ``Enum``
            and its value, ``(1, 2)`` and ``"1,2"``), naming where (``where``): JSON would keep one of them.

    Examples:
        >>> _pydantic_json_values({uuid.UUID(int=1): [PurePath("a")]})
        {'00000000-0000-0000-0000-000000000001': ['a']}
        >>> import datetime
        >>> _pydantic_json_values({(1, 2): {datetime.date(2024, 5, 1): "d"}})
        {'1,2': {'2024-05-01': 'd'}}
    """
    if isinstance(value, Enum):
        return _pydantic_json_values(value.value, where)
    if isinstance(value, (uuid.UUID, PurePath)):
        return str(value)
    if isinstance(value, dict):
        converted = {_pydantic_json_key(key): (key, item) for key, item in value.items()}
        if len(converted) < len(value):
            spellings = [_pydantic_json_key(key) for key in value]
            same = sorted({repr(key) for key, new in zip(value, spellings, strict=True) if spellings.count(new) > 1})
            raise TypeError(
                f"{where} has keys that are the same once written as JSON strings: {', '.join(same)} (a UUID or "
                "path key is written as its str, an Enum key as its value, a tuple key as its items joined by "
                "commas and a date key as its ISO text, as LlamaIndex's node JSON writes them; rename one of them)"
            )
        return {new: _pydantic_json_values(item, f"{where}[{key!r}]") for new, (key, item) in converted.items()}
    if type(value) in (list, tuple):
        return type(value)(_pydantic_json_values(item, f"{where}[{i}]") for i, item in enumerate(value))
    return value


def _pydantic_json_key(key: Any) -> Any:
    """A dict key as pydantic's JSON mode writes it, where that differs from ``json.dumps``: a ``uuid.UUID`` or
    a path as its str, an ``Enum`` as its value (converted the same way); a key ``json.dumps`` refuses as
    LlamaIndex's node JSON (``node.model_dump(mode="json")``, what ``SimpleVectorStore`` stores) writes it: a
    tuple as its items joined by commas (``(1, 2)`` as ``"1,2"``), a date, time or datetime as its ISO text
    (pydantic's: ``...Z`` for UTC), a ``timedelta`` as ISO 8601 (``"PT3S"``), ``bytes`` as UTF-8 text, a
    ``Decimal`` as its str. A str, int, float, bool or ``None`` key is left to ``json.dumps``, and a key pydantic
    cannot write either (a frozenset, a numpy scalar) to :func:`_metadata_list`'s check, which names it.

    Examples:
        >>> import datetime
        >>> [_pydantic_json_key(k) for k in [(1, "a"), datetime.date(2024, 5, 1), 3, "x"]]
        ['1,a', '2024-05-01', 3, 'x']
    """
    if type(key) is str:
        return key
    new = key
    while isinstance(new, Enum):
        new = new.value
    if isinstance(new, (uuid.UUID, PurePath)):
        return str(new)
    try:
        hash(new)
    except TypeError:  # an Enum whose value is a list: no key (JSON refuses the Enum key, as before)
        return key
    if new is None or isinstance(new, (str, int, float)):
        return new
    try:
        (spelled,) = _json_mode_dict().dump_python({new: None}, mode="json", warnings=False)
    except (TypeError, ValueError):  # pydantic's PydanticSerializationError is a ValueError
        return key
    return spelled


@functools.cache
def _json_mode_dict() -> TypeAdapter[dict[str, Any]]:
    """A ``dict[str, Any]`` as pydantic serialises ``BaseNode.metadata`` (built on first use)."""
    return TypeAdapter(dict[str, Any])


def _checked_metadata(metadata: dict[str, Any], whose: str) -> dict[str, Any]:
    """``metadata`` as ``KLStore.add`` keeps it (:func:`_with_checked_metadata`), else its error naming ``whose``."""
    try:
        (checked,) = _metadata_list([_pydantic_json_values(metadata)], 1)
    except (TypeError, ValueError) as exc:
        message = str(exc).replace("metadatas[0]", f"the metadata of {whose}")
        if "is not JSON-serialisable" in message:
            message += " (stores keep metadata as JSON, which cannot serialize it: convert the value or drop the key)"
        raise type(exc)(message) from None
    return cast("dict[str, Any]", checked)


def _with_checked_metadata(node: BaseNode) -> BaseNode:
    """A copy of ``node`` with its metadata as ``KLStore.add`` keeps metadata, else ``KLStore.add``'s error.

    ``KLStore.add``'s check (:func:`~kl_retrievers.store._base._metadata_list`): numpy scalars and arrays
    and dates become JSON values; what JSON cannot hold (``Decimal``, a set, bytes, NaN...) raises the
    ``TypeError`` it raises, naming the node and its document, instead of pydantic's silent conversion (or
    its error). A ``uuid.UUID`` or a path becomes its str and an ``Enum`` its value, as pydantic stored them,
    as a value or as a dict key; a dict key JSON refuses (a tuple, a date...) is written as LlamaIndex's node
    JSON writes it (``"1,2"``, ISO text: :func:`_pydantic_json_key`). The metadata copied into the node's
    relationships (a split node's ``SOURCE``: its document's metadata) is converted the same way.
    """
    whose = f"node {node.node_id!r:.80}"
    if node.ref_doc_id is not None:
        whose += f" (document {node.ref_doc_id!r:.80})"
    checked = _checked_metadata(node.metadata, whose)
    relationships: dict[Any, Any] = {}
    for kind, related in node.relationships.items():
        infos = related if isinstance(related, list) else [related]
        copies = [
            info.model_copy(
                update={"metadata": _checked_metadata(info.metadata, f"{whose}'s related node {info.node_id!r:.80}")}
            )
            if info.metadata
            else info
            for info in infos
        ]
        relationships[kind] = copies if isinstance(related, list) else copies[0]
    # even when equal: np.float32(1) == 1.0, but pydantic fails
    return node.model_copy(update={"metadata": checked, "relationships": relationships})


def _object_serialises(node: IndexNode) -> bool:
    """Whether an ``IndexNode``'s object is stored with it (LlamaIndex serialises nodes and pydantic models)."""
    try:
        node.model_dump(mode="json")
    except ValueError:
        return False
    return True


def _detach_objects(nodes: Sequence[BaseNode]) -> list[BaseNode]:
    """``nodes``, with a copy without its object for each ``IndexNode`` whose object cannot be stored.

    What ``VectorStoreIndex`` does (it moves such an object to its object map); the inputs are not modified.
    """
    return [
        n.model_copy(update={"obj": None})
        if isinstance(n, IndexNode) and n.obj is not None and not _object_serialises(n)
        else n
        for n in nodes
    ]


def _search_score_keys(node: BaseNode) -> frozenset[str]:
    """The score keys a search of this package added to ``node`` (left out of both its LLM and embedding text)."""
    hidden = set(node.excluded_llm_metadata_keys).intersection(node.excluded_embed_metadata_keys)
    return _SCORE_KEYS.intersection(node.metadata).intersection(hidden)


def _without_search_scores(node: BaseNode) -> BaseNode:
    """``node`` without the per-query scores a search added (a returned node added again), else itself."""
    keys = _search_score_keys(node)
    if not keys:
        return node
    copy = node.model_copy()
    copy.metadata = {k: v for k, v in node.metadata.items() if k not in keys}
    copy.excluded_llm_metadata_keys = [k for k in node.excluded_llm_metadata_keys if k not in keys]
    copy.excluded_embed_metadata_keys = [k for k in node.excluded_embed_metadata_keys if k not in keys]
    return copy


def _has_node_content(metadata: Mapping[str, Any]) -> bool:
    return "_node_content" in metadata


# Where a store filled with the core API (a KLStore or a KLHybridStore) keeps a node's source document id:
# the node comes back with it as its SOURCE relationship (ref_doc_id), not as metadata. Nodes added through
# LlamaIndex carry their node JSON instead (see _stored_metadata).
_REF_DOC_KEY = "ref_doc_id"


#: The keys ``node_to_metadata_dict`` writes beside a node's own metadata: the node JSON, its class and its
#: source document id (under three names). The rest of a stored metadata dict is the node's metadata.
_NODE_DICT_KEYS = frozenset({"_node_content", "_node_type", "document_id", "doc_id", _REF_DOC_KEY})


def _indexed_text(metadata: Mapping[str, Any]) -> str:
    """The text a hybrid store indexes for a node stored as ``metadata`` (:func:`_stored_metadata`): its
    ``MetadataMode.EMBED`` content, what ``VectorStoreIndex`` embeds and :class:`KLVectorStore` encodes.

    Read from the node as :func:`_to_node` rebuilds it, so that :func:`_to_node` recognises it.
    """
    return _node_text(metadata_dict_to_node(dict(metadata)), MetadataMode.EMBED) or ""


def _take_stored_metadata(node: BaseNode, metadata: Mapping[str, Any]) -> None:
    """Give a node rebuilt from its JSON the stored metadata, which filters read.

    They differ after a core-API upsert that copied the stored metadata (the JSON with it) and changed
    a key: the stored value wins, a key removed there is removed, a key added there is added. A key of
    the node named like one that ``node_to_metadata_dict`` writes (:data:`_NODE_DICT_KEYS`) keeps the
    JSON's value (the top-level one is the node's id). The source document is the stored one, read as
    ``delete(ref_doc_id)`` and ``doc_ids=`` read it (:func:`_ref_doc_id`: ``ref_doc_id``, else ``doc_id``):
    a changed one becomes the node's SOURCE relationship, a removed or ``None`` one removes it.
    """
    own = node.metadata
    merged = {k: v for k, v in own.items() if k in _NODE_DICT_KEYS or k in metadata}
    merged.update((k, v) for k, v in metadata.items() if k not in _NODE_DICT_KEYS)
    if merged != own:
        node.metadata = {k: merged[k] for k in [*own, *metadata] if k in merged}  # the node's key order first
    ref = _ref_doc_id(metadata)
    if ref is None or str(ref) == "None":  # "None": what node_to_metadata_dict writes for a node without a source
        node.relationships.pop(NodeRelationship.SOURCE, None)
    elif str(ref) != node.ref_doc_id:
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(ref))


def _to_node(doc_id: str, text: str | None, metadata: Mapping[str, Any], *, hybrid: bool = False) -> BaseNode:
    """The node stored under ``doc_id`` with ``text`` and ``metadata`` (a plain document: a ``TextNode``).

    A node stored through LlamaIndex is rebuilt from its JSON with the stored metadata
    (:func:`_take_stored_metadata`). Its text is the stored one, except in a hybrid store (``hybrid``),
    which stores the text it indexed (:func:`_indexed_text`) and keeps the node's own in the JSON:
    there the stored text replaces it only when it is not what was indexed for that node (a core-API
    upsert that gave the document a new text).
    """
    if _has_node_content(metadata):
        node = metadata_dict_to_node(dict(metadata), text=None if hybrid else text)
        indexed = _node_text(node, MetadataMode.EMBED) if hybrid else None
        _take_stored_metadata(node, metadata)
        # a hybrid node saved before the JSON kept its text: the stored text is its own (nothing indexed matches)
        if hybrid and text is not None and text not in (indexed, _node_text(node, MetadataMode.EMBED)):
            node.set_content(text)
        return node
    # A plain document (added with the core API): a TextNode with its metadata, whose "ref_doc_id" key, if any,
    # becomes its source document.
    plain = dict(metadata)
    ref = plain.pop(_REF_DOC_KEY, None)
    node = TextNode(id_=doc_id, text=text or "", metadata=plain)
    if ref is not None:
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(ref))
    return node


#: ``_node_type`` of the nodes that ``VectorStoreIndex`` keeps in its docstore and index struct for a store that
#: keeps the text, and swaps back in for the store's copy of them.
_NON_TEXT_NODE_TYPES = frozenset({IndexNode.class_name(), ImageNode.class_name()})
#: The JSON filter (:mod:`kl_retrievers.filters`) matching those nodes, by the ``_node_type`` LlamaIndex stores.
_NON_TEXT_FILTER = {"_node_type": {"$in": sorted(_NON_TEXT_NODE_TYPES)}}


def _is_non_text(node_type: Any) -> bool:
    """Whether a stored ``_node_type`` names an ``IndexNode`` / ``ImageNode`` (a document added with the core API may
    hold any JSON value there, a list or an object included).

    Examples:
        >>> _is_non_text("IndexNode"), _is_non_text("TextNode"), _is_non_text(["IndexNode"])
        (True, False, False)
    """
    return isinstance(node_type, str) and node_type in _NON_TEXT_NODE_TYPES


#: Node metadata key on nodes whose confidence could not be computed although a calibrator exists: fewer
#: than two candidate documents (a filter or a small store), the reason as text (see
#: :func:`kl_retrievers._confidence.abstention_reason`); also on a blank query's nodes, whose confidence is 0
#: (:data:`EMPTY_QUERY_REASON`). :class:`KLConfidencePostprocessor` abstains on it.
CONFIDENCE_REASON_KEY = "confidence_reason"

#: Metadata keys a search adds to the nodes it returns (dense and hybrid): per-query, not the document's.
#: A node's own metadata key of one of these names is shadowed by the score in returned nodes (see
#: :meth:`KLVectorStore.add`).
_SCORE_KEYS = frozenset(
    {
        SCORE_NAME,
        QUERY_UNCERTAINTY_KEY,
        CONFIDENCE_KEY,
        CONFIDENCE_REASON_KEY,
        *(k for k, _ in HybridResult.SCORE_KEYS),
    }
)
#: :data:`_SCORE_KEYS` in a stable order, for messages and docs.
_RESERVED_KEYS_TEXT = ", ".join(sorted(_SCORE_KEYS))


class _StoredNodeScan:
    """A callable filter for one pass over a ``KLStore``'s metadata (:meth:`KLVectorStore._scan_stored_nodes`).

    It matches the ``IndexNode`` / ``ImageNode`` nodes (:func:`_is_non_text`), so that ``get_by_filter``
    copies only them, and records in :attr:`reserved` the score keys (:data:`_SCORE_KEYS`) that any
    document's metadata uses (its top-level keys), whether the document matches or not.
    """

    def __init__(self) -> None:
        self.reserved: set[str] = set()

    def __call__(self, metadata: Mapping[str, Any]) -> bool:
        if not _SCORE_KEYS.isdisjoint(metadata):
            self.reserved.update(_SCORE_KEYS.intersection(metadata))
        return _is_non_text(metadata.get("_node_type"))


def _mark_blank_query(nodes: Sequence[BaseNode], calibrated: bool) -> None:
    """Give a blank query's scored nodes confidence 0 and :data:`EMPTY_QUERY_REASON` (kept out of LLM / embed text)
    when a calibrator exists (:func:`~kl_retrievers._confidence.blank_query_confidence`); without one they keep
    confidence ``None``, as any query's nodes."""
    confidence, reason = blank_query_confidence(calibrated)
    if reason is None:
        return
    added = {CONFIDENCE_KEY: confidence, CONFIDENCE_REASON_KEY: reason}
    for node in nodes:
        node.metadata.update(added)
        for excluded in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
            excluded.extend(key for key in added if key not in excluded)


def _reserved_keys_in(nodes: Sequence[BaseNode]) -> list[str]:
    """The score keys (:data:`_SCORE_KEYS`) that the nodes' own metadata uses, sorted (empty: none)."""
    found: set[str] = set()
    for node in nodes:  # the scores a search added to a returned node, added again, are not the user's
        found.update(_SCORE_KEYS.intersection(node.metadata) - _search_score_keys(node))
    return sorted(found)


#: What a reserved key in a node's own metadata does in results (see :func:`_warn_reserved_keys`).
_NODE_EFFECT = (
    "the nodes it returns carry the score under that name (and leave the key out of the LLM and embedding text)"
)


def _warn_reserved_keys(keys: Sequence[str], where: str) -> None:
    """One warning that nodes added to ``where`` use score keys in their own metadata."""
    _warn_metadata_keys(logger, where, keys, _NODE_EFFECT, _RESERVED_KEYS_TEXT, "node metadata")


def _unscored_hash(node: BaseNode, cls: type[BaseNode]) -> str:
    """``cls``'s hash of ``node`` with the per-query score keys left out of its metadata."""
    if not _SCORE_KEYS.intersection(node.metadata):
        return str(cls.hash.fget(node))  # type: ignore[attr-defined]
    plain = node.model_copy(update={"metadata": {k: v for k, v in node.metadata.items() if k not in _SCORE_KEYS}})
    return str(cls.hash.fget(plain))  # type: ignore[attr-defined]


class _UnscoredHash:
    """Mixin of a returned node class: ``hash`` without the search's score keys (see :func:`_scored_node`),
    and printed as the LlamaIndex node class it extends (its second base)."""

    @property
    def hash(self) -> str:
        return _unscored_hash(cast(BaseNode, self), type(self).__bases__[1])

    def __repr_name__(self) -> str:
        return type(self).__bases__[1].__name__


class _ScoredTextNode(_UnscoredHash, TextNode):
    """A returned ``TextNode`` (see :class:`_UnscoredHash`)."""


class _ScoredIndexNode(_UnscoredHash, IndexNode):
    """A returned ``IndexNode`` (see :class:`_UnscoredHash`)."""


class _ScoredImageNode(_UnscoredHash, ImageNode):
    """A returned ``ImageNode`` (see :class:`_UnscoredHash`)."""


class _ScoredNode(_UnscoredHash, Node):
    """A returned generic ``Node`` (LlamaIndex's media node, text in ``text_resource``; see :class:`_UnscoredHash`)."""


#: The node class -> its returned subclass.
_SCORED_CLASSES: dict[type, type] = {
    c.__bases__[1]: c for c in (_ScoredTextNode, _ScoredIndexNode, _ScoredImageNode, _ScoredNode)
}


def _scored_node(
    doc_id: str, text: str | None, metadata: Mapping[str, Any], scores: Mapping[str, Any], *, hybrid: bool = False
) -> BaseNode:
    """A stored node rebuilt by :func:`_to_node`, with ``scores`` added to its metadata.

    The score keys are appended to the node's own excluded LLM and embedding metadata keys, so the
    LLM and the embedder read what they read before the search. The node's ``hash`` leaves them
    out too: LlamaIndex's ``QueryFusionRetriever`` matches one document across result lists (ours,
    a BM25 retriever's, another query's) by ``node.hash``, which hashes the text and the whole
    metadata, so per-query scores would make every copy look like another document. The class
    is a subclass of the node's own (``TextNode``, ``IndexNode``, ``ImageNode``, or the generic
    ``Node``) with the same ``class_name()``, so serialised nodes are unchanged. ``hybrid``: see :func:`_to_node`.
    """
    node = _to_node(doc_id, text, metadata, hybrid=hybrid)
    node.metadata.update(scores)
    for excluded in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
        excluded.extend(key for key in scores if key not in excluded)
    scored = _SCORED_CLASSES.get(type(node))
    if scored is not None:
        object.__setattr__(node, "__class__", scored)
    return node


def _ref_doc_id(metadata: Mapping[str, Any]) -> Any:
    return metadata.get("ref_doc_id", metadata.get("doc_id"))


def _ref_doc_filter(targets: Iterable[str]) -> dict[str, Any] | None:
    """A JSON filter (:mod:`kl_retrievers.filters`) matching every node whose ``str(_ref_doc_id(metadata))`` is one of
    ``targets``, for a store to evaluate; it may match a few more nodes, which callers judge with that test.

    LlamaIndex stores a node's source document as a string under ``ref_doc_id`` and ``doc_id``; a document added with
    the core API may hold another JSON value there whose ``str()`` is a target (``5``, ``5.0``, ``True``), asked for
    too. ``None`` (no such filter: every node is judged) for a target only a null, a list or an object would give.

    Examples:
        >>> _ref_doc_filter(["d1", "7"])
        {'$or': [{'ref_doc_id': {'$in': ['d1', '7', 7]}}, {'doc_id': {'$in': ['d1', '7', 7]}}]}
        >>> _ref_doc_filter(["None"]) is None
        True
    """
    values: list[Any] = []
    for target in targets:
        if target == "None" or target[:1] in ("[", "{"):
            return None
        values.append(target)
        if target in ("True", "False"):
            values.append(target == "True")
        with contextlib.suppress(ValueError):
            number = int(target)
            if str(number) == target:
                if not -(2**63) <= number < 2**63:  # beyond a JSON number of the stores: judged on every node
                    return None
                values.append(number)
        with contextlib.suppress(ValueError):
            real = float(target)
            if math.isfinite(real) and str(real) == target:
                values.append(real)
    return {"$or": [{key: {"$in": values}} for key in ("ref_doc_id", "doc_id")]}


def _write_count(store: GaussianStore) -> int | None:
    """``store.write_count`` for a :class:`KLStore` (bumped by every write to it); ``None`` for a store without one.

    A ``MilvusKLStore`` has none: other clients write to its collection unseen, so nothing read from it is cached.
    """
    return store.write_count if isinstance(store, KLStore) else None


def _manifest_and_store_paths(persist_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The manifest and store folder of ``persist_path`` (a leading ``~`` expanded, as a shell would)."""
    path = user_path(persist_path)
    store_dir = path.with_suffix(_STORE_SUFFIX) if path.suffix == ".json" else Path(str(path) + _STORE_SUFFIX)
    return path, store_dir


def _manifest_in_folder(folder: Path) -> Path | None:
    """The one :meth:`KLVectorStore.persist` manifest in ``folder`` (any name, found by its ``format``), or ``None``.

    ``None`` for a ``KLStore`` folder (``config.json``) or a folder holding no manifest.

    Raises:
        ValueError: Several manifests in ``folder``: which one is meant is ambiguous; the message names them.
    """
    if (folder / "config.json").is_file():
        return None
    found = adapters.manifests_in_folder(folder, _MANIFEST_FORMAT)
    if len(found) > 1:
        raise ValueError(
            f"{folder} holds {len(found)} KLVectorStore manifests ({', '.join(p.name for p in found)}); pass the "
            f"one to load, e.g. KLVectorStore.from_persist_path({str(found[0])!r})"
        )
    return found[0] if found else None


def _no_store_in_folder(folder: Path) -> str:
    """Why ``folder`` loads as neither form :meth:`KLVectorStore.from_persist_path` takes, and what it holds.

    Names the two forms (a ``KLStore`` folder, a folder holding one manifest), the ``*.json`` files that
    could not be read as JSON (a damaged manifest is one) and the ``*.klstore`` sub-folders (a store
    :meth:`KLVectorStore.persist` wrote, whose manifest may be missing: it loads as a ``KLStore`` folder).
    """
    unreadable, stores = [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name.endswith(_STORE_SUFFIX):
            stores.append(entry.name)
        elif entry.is_file() and entry.suffix == ".json":
            try:
                json.loads(entry.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                unreadable.append(f"{entry.name} ({type(exc).__name__})")
    found = []
    if unreadable:
        found.append(f"*.json files that could not be read: {', '.join(unreadable)}")
    if stores:
        found.append(
            f"*{_STORE_SUFFIX} folders, which load as KLStore folders without their manifest's settings: "
            + ", ".join(f"KLVectorStore.from_persist_path({str(folder / name)!r})" for name in stores)
        )
    return (
        f"{folder} is not a folder KLVectorStore.from_persist_path loads: it takes a KLStore folder (with "
        f"config.json) or a folder holding one KLVectorStore manifest (what persist wrote, e.g. "
        f"default__vector_store.json), and this holds neither "
        f"({'; '.join(found) if found else 'no unreadable *.json file, no *' + _STORE_SUFFIX + ' folder'})"
    )


def _persisted_paths(persist_path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The manifest, store folder and calibrator file :meth:`KLVectorStore.persist` writes for ``persist_path``.

    A link (``current -> v3``, at the manifest's folder or above it) is resolved once, here, as ``KLStore.save``
    and LangChain's ``save_local`` resolve it: every part goes into that folder, even if the link is re-pointed
    meanwhile.
    """
    given, store_dir = _manifest_and_store_paths(persist_path)
    folder = Path(os.path.realpath(given.parent))
    manifest_path = folder / given.name
    return manifest_path, folder / store_dir.name, _calibrator_path(manifest_path)


def _bare_name(value: Any, suffix: str = "") -> str | None:
    """``value`` if it is a file name a manifest may give (no folder, not ``..``, ending in ``suffix``), else ``None``.

    Examples:
        >>> _bare_name("a.klstore"), _bare_name("../x"), _bare_name(".."), _bare_name(3), _bare_name("x", ".klstore")
        ('a.klstore', None, None, None, None)
    """
    if not isinstance(value, str) or not value or value == ".." or Path(value).name != value:
        return None
    return value if value.endswith(suffix) else None


def _is_persisted_store(store_dir: Path, persist_id: Any) -> bool:
    """Whether ``store_dir`` is a folder (not a link) that :meth:`KLVectorStore.persist` wrote: its copy of the
    manifest carries ``persist_id``, or it holds a ``KLStore``'s ``config.json`` (a store persisted by an earlier
    release, or with its copy of the manifest lost)."""
    try:
        if not stat.S_ISDIR(os.lstat(store_dir).st_mode):
            return False
    except OSError:
        return False
    inner_path = store_dir / _INNER_MANIFEST
    if isinstance(persist_id, str) and persist_id and adapters.looks_like_manifest(inner_path, _MANIFEST_FORMAT):
        with contextlib.suppress(OSError, ValueError):  # UnicodeDecodeError is a ValueError
            if json.loads(inner_path.read_text(encoding="utf-8")).get("persist_id") == persist_id:
                return True
    return adapters.looks_like_manifest(store_dir / "config.json", KLSTORE_FORMAT_NAME)


def _remove_persisted(persist_path: str | os.PathLike[str]) -> bool:
    """Remove what :meth:`KLVectorStore.persist` of a store over a ``KLStore`` wrote at ``persist_path``, if anything.

    For a store over a ``MilvusKLStore`` persisted to the same place (it writes nothing there): a later load
    (``load_index_from_storage``) would otherwise find the earlier nodes. The manifest, which every load starts
    from, goes first, in one step (a file at ``persist_path`` that is no such manifest is kept, and so is all else);
    then what it names, checked as :meth:`KLVectorStore.from_persist_path` checks the names (bare file names): the
    calibrator file, and the store folder when it is one that ``persist`` wrote (see :func:`_is_persisted_store`;
    a link or another folder is kept). The folder is renamed to a ``.NAME.tmp-*`` sibling before it is deleted, so
    a concurrent load never finds it half deleted, and an interrupted deletion leaves a copy that the next save of
    that folder removes and that no load restores (as it would a ``.NAME.old-*`` one). Logged at WARNING level.

    Returns:
        Whether a manifest was found and removed.

    Raises:
        OSError: The manifest, the calibrator or the store folder cannot be removed or renamed (a read-only folder).
    """
    manifest_path, _, _ = _persisted_paths(persist_path)
    if not adapters.looks_like_manifest(manifest_path, _MANIFEST_FORMAT):
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # replaced meanwhile: not the manifest looks_like_manifest read
        return False
    folder = manifest_path.parent
    name, calibrator = _bare_name(manifest.get("store")), _bare_name(manifest.get("calibrator"), _CALIBRATOR_SUFFIX)
    store_dir = None if name is None else folder / name
    if store_dir is not None and not _is_persisted_store(store_dir, manifest.get("persist_id")):
        store_dir = None
    manifest_path.unlink(missing_ok=True)
    fsync_dir(folder)
    removed = [manifest_path.name]
    if calibrator is not None and (folder / calibrator).is_file() and not (folder / calibrator).is_symlink():
        (folder / calibrator).unlink(missing_ok=True)
        removed.append(calibrator)
    if store_dir is not None:
        clean_stale(store_dir)  # copies an interrupted persist left, which a load of the folder could put back
        doomed = folder / f".{store_dir.name}.tmp-{uuid.uuid4().hex}"  # a leftover clean_stale would remove
        os.rename(store_dir, doomed)
        fsync_dir(folder)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(store_dir.name)
    logger.warning(
        "KLVectorStore.persist: removed the KLStore-backed store persisted earlier at %s (%s in %s), whose nodes a "
        "load of that path would find instead of the Milvus collection's",
        manifest_path,
        ", ".join(removed),
        folder,
    )
    return True


def _calibrator_path(manifest_path: Path) -> Path:
    """Where :meth:`KLVectorStore.persist` writes an explicit calibrator: ``<name>.calibrator.json``.

    The name does not end in ``vector_store.json``, so ``StorageContext.from_defaults(persist_dir=...)``
    does not mistake it for a vector store.
    """
    stem = manifest_path.with_suffix("") if manifest_path.suffix == ".json" else manifest_path
    return stem.with_name(stem.name + _CALIBRATOR_SUFFIX)


def _read_persisted(
    store_dir: Path, encoder: Any, mmap: bool, verify_checksums: bool, *, load_calibrator: bool
) -> tuple[dict[str, Any] | None, KLStore, ConfidenceCalibrator | None]:
    """The copy of the manifest, the store and the calibrator in a :meth:`KLVectorStore.persist` store folder.

    One read of ``store_dir`` (persist swaps it in as a whole); the manifest copy is ``None`` in a folder
    persisted by an earlier release, and the calibrator ``None`` when the copy names none (or when
    ``load_calibrator`` is false).
    """
    inner_path, inner, calibrator = store_dir / _INNER_MANIFEST, None, None
    if inner_path.is_file():
        inner = adapters.read_manifest(
            inner_path, format_name=_MANIFEST_FORMAT, format_version=_MANIFEST_VERSION, what="KLVectorStore"
        )
        saved = inner.get("calibrator")
        if load_calibrator and saved is not None:
            if saved != _INNER_CALIBRATOR:
                raise ValueError(f"{inner_path} names an invalid calibrator file {saved!r}")
            calibrator = ConfidenceCalibrator.load(store_dir / saved)
    store = KLStore.load(store_dir, encoder=encoder, mmap=mmap, verify_checksums=verify_checksums)
    return inner, store, calibrator


def _is_local_fs(fs: Any) -> bool:
    protocol = "file" if fs is None else getattr(fs, "protocol", "file")
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return bool({"file", "local"} & set(protocols))


def _check_fs(fs: Any) -> None:
    if not _is_local_fs(fs):
        raise NotImplementedError(
            f"KLVectorStore persists to the local filesystem only; got fs protocol {getattr(fs, 'protocol', None)!r}"
        )


#: The key under which :meth:`KLVectorStore.to_dict` records how many nodes the dict does not carry.
_NODES_NOT_CARRIED = "nodes_not_carried"
#: The key under which it records the ``collection_name`` of a ``MilvusKLStore`` (whose nodes stay in Milvus).
_NODES_IN_MILVUS = "nodes_in_milvus"


@functools.cache
def _klstore_options() -> tuple[str, ...]:
    """The :class:`KLStore` keyword options a :class:`KLVectorStore` passes on (all but ``encoder``)."""
    return tuple(adapters.store_option_names(KLStore.__init__))


@functools.cache
def _klstore_defaults() -> dict[str, Any]:
    """The defaults of :func:`_klstore_options`."""
    params = inspect.signature(KLStore.__init__).parameters
    return {name: params[name].default for name in _klstore_options()}


def _drop_serialisation_keys(options: dict[str, Any]) -> None:
    """Remove what :meth:`KLVectorStore.to_dict` writes besides constructor options, warning about left-out nodes.

    ``class_name`` is LlamaIndex's serialisation key (``from_dict`` drops it; ``model_validate`` and
    ``KLVectorStore(**data)`` pass it on); ``"nodes_not_carried"`` counts the nodes of the store the dict
    describes, which a dict never holds, and ``"nodes_in_milvus"`` where a ``MilvusKLStore``'s nodes stay.

    Raises:
        ValueError: ``class_name`` names another class.
    """
    name = options.pop("class_name", KLVectorStore.class_name())
    if name != KLVectorStore.class_name():
        raise ValueError(f"class_name must be {KLVectorStore.class_name()!r} (a KLVectorStore's dict); got {name!r}")
    held = options.pop(_NODES_NOT_CARRIED, 0)
    milvus = options.pop(_NODES_IN_MILVUS, None)
    if held:
        if isinstance(milvus, Mapping):
            fix = (
                f"They stay in the Milvus collection {milvus.get('collection_name')!r}: reopen it, "
                f"KLVectorStore(store=MilvusKLStore(uri, collection_name={milvus.get('collection_name')!r})) "
                "(from kl_retrievers.milvus import MilvusKLStore)"
            )
        else:
            fix = (
                "To keep the nodes, persist the store (store.persist(path), or "
                "index.storage_context.persist(persist_dir=...)) and load it (KLVectorStore.from_persist_dir / "
                "from_persist_path, or load_index_from_storage)"
            )
        warn(
            f"this KLVectorStore is built from the dict (to_dict / model_dump) of a store that held {held} node(s), "
            f"which a dict does not carry: the new store has the same settings but no nodes. {fix}"
        )


class KLVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store ranked by exact ``-KL(Q || D)``, backed by a :class:`KLStore` or a ``MilvusKLStore``.

    Nodes carry ``d~`` embeddings from :class:`KLEmbedding`; the store recovers each
    document Gaussian from ``d~`` exactly (see :func:`document_gaussians_from_embeddings`),
    so it needs no encoder.  With an ``encoder`` it can also embed nodes that have no
    embedding (their ``MetadataMode.EMBED`` content, as ``VectorStoreIndex`` would) and answer
    queries given only ``query_str``.

    Nodes are ranked by the exact ``-KL``.  The reported similarity (``NodeWithScore.score``) is
    the relevance ``relevance(-KL)`` in ``(0, 1]``, by default ``exp(-KL)`` (``1`` for identical
    Gaussians, ``0.5`` at ``KL = ln 2``; with the bundled models unrelated texts score about 0.3
    to 0.45 and near-duplicates about 0.9 or more; not a calibrated probability), so LlamaIndex's
    ``SimilarityPostprocessor(similarity_cutoff=...)`` and score-based fusion work.  The exact
    ``-KL`` is in each returned node's metadata under ``"neg_kl"`` (excluded from the LLM and
    embedding text, like :data:`QUERY_UNCERTAINTY_KEY`).

    Query modes: ``"default"`` and ``"mmr"`` (KL-based maximal marginal relevance, the same as
    the LangChain store's: ``vector_store_kwargs={"mmr_threshold": 0.5, "mmr_prefetch_factor": 4.0}``
    or ``"mmr_prefetch_k"``).

    Each node is stored under its ``node_id`` (re-adding an id replaces it) with its text
    and, as metadata, LlamaIndex's ``node_to_metadata_dict`` (user metadata at the top
    level, the node JSON under ``_node_content``, ``ref_doc_id`` / ``doc_id``). A document of a
    wrapped ``KLStore`` filled with the core API comes back as a ``TextNode`` whose ``"ref_doc_id"``
    metadata key, if any, is its source document (``node.ref_doc_id``), as in :class:`KLHybridRetriever`.

    Reserved metadata keys: a search writes its scores into each returned node's metadata under
    ``neg_kl``, ``query_uncertainty``, ``confidence`` and ``confidence_reason`` (and
    :class:`KLHybridRetriever` also under ``fused_score``, ``fusion``, ``bm25``, ``dense_rank``,
    ``bm25_rank`` and ``dense_weight``), and leaves them out of the LLM and embedding text. A node's
    own metadata key of one of these names is shadowed in the returned nodes (the stored metadata,
    which filters see, keeps it); :meth:`add` logs one warning per store naming such a key, and so
    does creating a store over a ``KLStore`` whose documents already use one.

    ``VectorStoreIndex.as_retriever()`` passes, as ``node_ids``, the ids of the ``IndexNode`` and
    ``ImageNode`` nodes that index object inserted (for a store that keeps the text LlamaIndex
    records only those); :meth:`query` recognises that list by the retriever that sends it (its
    index's ``nodes_dict``, see :func:`_index_retriever_verdict`) and reads it as no restriction,
    so ``TextNode`` hits are found too, also when the store holds non-text nodes that index does
    not list (an index reopened with ``from_vector_store``, a store shared by two indexes) or the
    list names a node re-inserted as a ``TextNode``. LlamaIndex then replaces the non-text hits
    with its docstore's copies, which lack the score keys (their confidence reads as missing);
    :meth:`KLRetriever.from_defaults` (``index=``) returns every node as the store scored it, so
    prefer it for indexes that mix node types. Any other ``node_ids`` list restricts the search
    (the list of an index with ``store_nodes_override=True`` too); a query that no such retriever
    sent is read as no restriction only when it lists exactly the stored ``IndexNode`` /
    ``ImageNode`` nodes (at least one) and no other stored node.

    The store does not pickle or deep-copy (a ``TypeError``): persist it (:meth:`persist`,
    ``StorageContext.persist``) and load it (:meth:`from_persist_dir`, ``load_index_from_storage``).

    Args:
        store: An existing :class:`KLStore` or :class:`~kl_retrievers.milvus.MilvusKLStore` to wrap (a fresh flat
            ``KLStore`` by default). Over a ``MilvusKLStore``, filters with a JSON form run in Milvus; ``doc_ids``
            and ``delete(ref_doc_id)`` read only the nodes Milvus finds by their ``ref_doc_id`` (judged here), a
            ``node_ids`` list only those nodes, and a filter with no JSON form is judged here on every stored
            node (a read of the whole collection); :meth:`persist` writes no nodes (they are in Milvus).
        encoder: Optional Gaussian encoder or :class:`KLEmbedding` (see above).
        relevance: A name in :data:`RELEVANCE_FUNCTIONS`: ``"exp"`` (default), ``"inverse"``
            (``1 / (1 + KL)``) or ``"exp_per_dim"`` (``exp(-KL / k)``).
        calibrator: A fitted dense ``ConfidenceCalibrator`` (or a path to its JSON, or its ``to_dict()``) for the
            confidence in node metadata (default: the query encoder's model's). An explicit one is
            saved by :meth:`persist` and loaded back.
        stores_text: LlamaIndex's field; must be ``True`` (accepted so that
            ``KLVectorStore.from_dict(store.to_dict())`` reads it back). That round trip, ``model_validate`` of a
            ``model_dump`` and ``KLVectorStore(**store.to_dict())`` build a store with the same settings (the fields,
            the :class:`KLStore` options, an explicit calibrator) but none of the nodes, with a ``UserWarning``
            when the store held some (see :meth:`custom_model_dump`).
        flat_metadata: LlamaIndex's field: require flat node metadata on :meth:`add`.
        is_embedding_query: LlamaIndex's field: ``False`` makes ``VectorStoreIndex`` retrievers pass
            only the query string (the store then needs an ``encoder``; a store loaded without one,
            as ``load_index_from_storage`` loads it, loads the model it was saved with, by name, at
            the first such query).
        **store_kwargs: Passed to :class:`KLStore` when ``store`` is ``None``
            (``index_type="hnsw"``, ...). An unknown keyword raises a ``TypeError`` naming it, the closest
            option and every option; ``class_name`` (LlamaIndex's serialisation key) is ignored.

    Examples:
        >>> import numpy as np
        >>> from llama_index.core.schema import TextNode
        >>> from llama_index.core.vector_stores import VectorStoreQuery
        >>> from kl_retrievers.gaussian import kl_document_vectors, kl_query_vectors
        >>> g = Gaussians(np.array([[0.0, 0.0], [3.0, 0.0]]), np.ones((2, 2)))
        >>> vs = KLVectorStore()
        >>> vectors = kl_document_vectors(g)
        >>> nodes = [TextNode(id_=f"n{i}", text=f"t{i}", embedding=list(v)) for i, v in enumerate(vectors)]
        >>> vs.add(nodes)
        ['n0', 'n1']
        >>> res = vs.query(VectorStoreQuery(query_embedding=list(kl_query_vectors(g[0])[0]), similarity_top_k=2))
        >>> res.ids, [round(n.metadata["neg_kl"], 6) + 0.0 for n in res.nodes], round(res.similarities[1], 4)
        (['n0', 'n1'], [0.0, -4.5], 0.0111)
    """

    stores_text: bool = True
    flat_metadata: bool = False
    relevance: str = adapters.DEFAULT_RELEVANCE

    _store: GaussianStore = PrivateAttr()
    _scorer: ConfidenceScorer = PrivateAttr()
    _query_encoder: Any = PrivateAttr(default=None)
    # The encoders KLEmbedding objects embedded texts for this store with since the last add, while it was empty
    # and without an encoder, each with the hashes of the vectors it gave; and the encoder add recorded from them
    # (see _adopt_document_encoder)
    _embedded_by: list[tuple[Any, set[int]]] = PrivateAttr(default_factory=list)
    _recorded_encoder: Any = PrivateAttr(default=None)
    _adopt_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _warned_reserved: bool = PrivateAttr(default=False)
    # Whether a query logged (at INFO) that it read node_ids as the as_retriever list: later ones log at DEBUG
    _said_unrestricted: bool = PrivateAttr(default=False)
    # The ids of the stored IndexNode / ImageNode nodes and the store's write_count they are right for (None:
    # unknown): kept up to date by add / delete through this object, rescanned when the store was changed
    # otherwise (see _stored_non_text_ids).
    _non_text: tuple[int, frozenset[str]] | None = PrivateAttr(default=None)
    _non_text_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self,
        store: GaussianStore | None = None,
        *,
        encoder: Any | None = None,
        relevance: adapters.RelevanceName = adapters.DEFAULT_RELEVANCE,
        calibrator: Any = None,
        stores_text: bool = True,
        flat_metadata: bool = False,
        is_embedding_query: bool = True,
        **store_kwargs: Any,
    ) -> None:
        _drop_serialisation_keys(store_kwargs)
        adapters.check_store_options(
            type(self).__name__, store_kwargs, adapters.init_option_names(type(self)), _klstore_options()
        )
        if not isinstance(relevance, str):
            raise TypeError(f"relevance must be one of {sorted(RELEVANCE_FUNCTIONS)}; got {type(relevance).__name__}")
        adapters.resolve_relevance(relevance)
        if isinstance(calibrator, Mapping):  # what to_dict records of an explicit calibrator
            calibrator = ConfidenceCalibrator.from_dict(calibrator)
        if stores_text is not True:
            raise ValueError(
                f"stores_text must be True (a KLVectorStore always keeps the node text and JSON); got {stores_text!r}"
            )
        super().__init__(stores_text=True, is_embedding_query=is_embedding_query)
        self.relevance = relevance
        self.flat_metadata = flat_metadata
        encoder = _unwrap_encoder(encoder)
        if store is None:
            store = KLStore(encoder=encoder, **store_kwargs)
        else:
            if not isinstance(store, GaussianStore):
                hint = " (a KLHybridStore goes to KLHybridRetriever)" if isinstance(store, KLHybridStore) else ""
                raise TypeError(
                    f"store must be a KLStore or a MilvusKLStore (a kl_retrievers.store.GaussianStore); "
                    f"got {type(store).__name__}{hint}"
                )
            if store_kwargs:
                raise ValueError(f"store options {sorted(store_kwargs)} apply only when no store is passed")
            if encoder is not None:
                store.encoder = encoder
        self._store = store
        self._scorer = ConfidenceScorer(calibrator)
        self._scan_stored_nodes()

    def _scan_stored_nodes(self) -> None:
        """Look at the wrapped store's metadata once: the non-text node ids, and a warning for reserved keys.

        Only a :class:`KLStore` (in memory) is read here, in one pass over its stored metadata that copies
        only the ``IndexNode`` / ``ImageNode`` documents (:class:`_StoredNodeScan`). The collection of a
        ``MilvusKLStore`` may be large and is read only by what needs it (see :meth:`_stored_non_text_ids`).
        """
        version = _write_count(self._store)
        if version is None:
            return
        scan = _StoredNodeScan()
        self._cache_non_text(version, self._store.get_by_filter(scan) if len(self._store) else [])
        reserved = sorted(scan.reserved)
        if reserved:
            self._warned_reserved = True
            _warn_reserved_keys(reserved, "KLVectorStore(store=...) (documents already stored)")

    def _cache_non_text(self, version: int | None, docs: Sequence[StoredDocument]) -> frozenset[str]:
        """The ids of the ``IndexNode`` / ``ImageNode`` nodes among ``docs`` (those :class:`_StoredNodeScan` or
        :data:`_NON_TEXT_FILTER` matches, read at the store's ``write_count`` ``version``), cached unless a write
        landed during the read (never cached for a store without a ``write_count``, a ``MilvusKLStore``: ``version``
        ``None``)."""
        found = frozenset(d.id for d in docs if _is_non_text(d.metadata.get("_node_type")))
        with self._non_text_lock:
            if version is not None and _write_count(self._store) == version:  # no write landed during the scan
                self._non_text = (version, found)
        return found

    def _note_write(self, before: int | None, bumps: int, removed: Sequence[str], non_text: Sequence[str] = ()) -> None:
        """After a write through this object: update the non-text ids instead of scanning the store again.

        ``before`` is the store's ``write_count`` read before the write and ``bumps`` how often the
        write bumped it; any other count means another write landed meanwhile (the ids are then
        rescanned at the next query that needs them).
        """
        with self._non_text_lock:
            cached = self._non_text
            after = _write_count(self._store)
            if cached is None or before is None or after is None or cached[0] != before or after != before + bumps:
                self._non_text = None
                return
            self._non_text = (after, (cached[1] - frozenset(removed)) | frozenset(non_text))

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialisation."""
        return "KLVectorStore"

    @model_serializer(mode="wrap")
    def custom_model_dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """The fields (and ``class_name``, as LlamaIndex writes them), with the settings a new store needs.

        What ``to_dict``, ``to_json`` and ``model_dump`` return: the wrapped :class:`KLStore`'s options that differ
        from their defaults (``index_type``, ``hnsw_m``, ``dim``, ...), an explicit calibrator (its
        ``ConfidenceCalibrator.to_dict()``) and, when the store holds nodes, their number under
        ``"nodes_not_carried"`` (and, for a ``MilvusKLStore``, whose nodes stay in Milvus, its ``collection_name``
        under ``"nodes_in_milvus"``): the nodes themselves are not in it (:meth:`persist` saves them), so
        ``from_dict``, ``model_validate`` or ``KLVectorStore(**data)`` build an empty store with these settings and
        then warn that the nodes were left behind.
        """
        data = cast("dict[str, Any]", super().custom_model_dump(handler, info))
        if isinstance(self._store, KLStore):  # a MilvusKLStore's settings and nodes live in Milvus
            defaults = _klstore_defaults()
            for name in _klstore_options():
                value = getattr(self._store, name, defaults[name])
                if value != defaults[name]:
                    data[name] = value
        if len(self._store):  # a MilvusKLStore's too: a store rebuilt from the dict is an empty in-memory one
            data[_NODES_NOT_CARRIED] = len(self._store)
            if not isinstance(self._store, KLStore) and hasattr(self._store, "collection_name"):
                # where the nodes stay, for the warning (not the uri: an address may carry a password)
                data[_NODES_IN_MILVUS] = {"collection_name": self._store.collection_name}
        if self._scorer.explicit is not None:
            data["calibrator"] = self._scorer.explicit.to_dict()
        return data

    def __getstate__(self) -> dict[Any, Any]:
        """Refuse to pickle: LlamaIndex would rebuild an empty store from the fields alone.

        Raises:
            TypeError: Always; it says to use :meth:`persist` (``StorageContext.persist``) and
                :meth:`from_persist_dir` / ``load_index_from_storage``.
        """
        raise TypeError(_NO_PICKLE)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> KLVectorStore:
        """Refuse to deep-copy (the wrapped :class:`KLStore` holds locks and an index); see :meth:`__getstate__`."""
        raise TypeError(_NO_PICKLE)

    def __repr__(self) -> str:
        """The wrapped store (its index type, dimension and document count) and the settings that are not defaults.

        Examples:
            >>> KLVectorStore()
            KLVectorStore(KLStore(index_type='flat', dim=None, documents=0), relevance='exp')
        """
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (("flat_metadata", False), ("is_embedding_query", True))
            if getattr(self, name) != default
        )
        return f"KLVectorStore({self._store!r}, relevance={self.relevance!r}{extra})"

    @property
    def kl_store(self) -> GaussianStore:
        """The underlying store, a :class:`KLStore` or a ``MilvusKLStore`` (also :attr:`client`)."""
        return self._store

    client = kl_store

    @property
    def encoder(self) -> Any:
        """The store's encoder (``None`` when it only takes embeddings)."""
        return self._store.encoder

    @property
    def calibrator(self) -> ConfidenceCalibrator | None:
        """The explicit confidence calibrator (``calibrator=``, or the one :meth:`persist` saved), as the
        retrievers' ``calibrator`` is; ``None``: the query encoder's model's is used, found at the first query.

        Given at construction or loading only (``KLVectorStore(calibrator=...)``,
        ``from_persist_dir(..., calibrator=...)``): every retriever and index over the store reads it.
        """
        return self._scorer.explicit

    def _adopt_query_encoder(self, encoder: Any) -> None:
        """Remember the encoder a :class:`KLEmbedding` embeds queries with (for its model's calibrator)."""
        if self._query_encoder is None:
            self._query_encoder = encoder

    def _adopt_document_encoder(self, encoder: Any, vectors: Sequence[Sequence[float]]) -> None:
        """Note that a :class:`KLEmbedding` found this store on the call stack (``VectorStoreIndex``, an
        ingestion pipeline) and embedded ``vectors`` for it with ``encoder``; :meth:`add` may record that
        encoder as the documents' model (see :meth:`_record_document_encoder`). Noted only while the store
        is empty and has no encoder; forgotten at each :meth:`add` (but one cancelled before it writes) and when
        the store is emptied."""
        if self._store.encoder is not None or len(self._store):
            return
        hashes = {_vector_hash(v) for v in vectors}
        with self._adopt_lock:
            for known, seen in self._embedded_by:
                if known is encoder:
                    seen.update(hashes)
                    return
            self._embedded_by.append((encoder, hashes))

    def _forget_document_encoders(self) -> list[tuple[Any, set[int]]]:
        """The encoders noted by :meth:`_adopt_document_encoder` since the last call, forgotten."""
        with self._adopt_lock:
            noted, self._embedded_by = self._embedded_by, []
        return noted

    def _record_document_encoder(
        self, noted: list[tuple[Any, set[int]]], nodes: Sequence[BaseNode], k: int | None
    ) -> None:
        """Give an empty store without an encoder the one a :class:`KLEmbedding` embedded ``nodes`` with, before
        they are added: the store then records that model, as ``KLStore.add`` of texts records its encoder, so
        that a persisted store names it (``kl-retrievers search FOLDER`` needs no ``--model``,
        ``is_embedding_query=False`` queries load it).

        Only when that is certain: exactly one encoder embedded texts for this store since the last add
        (``noted``; two, e.g. a ``SemanticSplitterNodeParser``'s and the pipeline's, record none), every node's
        embedding is one it gave, and its dimension is ``k`` (the nodes'). Otherwise the store records no
        encoder, as a store filled with vectors does (a wrong model recorded is worse than none).
        """
        if len(noted) != 1 or self._store.encoder is not None or len(self._store):
            return
        encoder, seen = noted[0]
        dim = getattr(getattr(encoder, "config", None), "dim", None)
        if k is None or dim != k:
            return  # the embeddings are not this encoder's
        if not all(n.embedding is not None and _vector_hash(n.embedding) in seen for n in nodes):
            return  # some nodes were embedded otherwise (before, elsewhere): their model is unknown
        self._store.encoder = encoder
        self._recorded_encoder = encoder
        logger.debug("KLVectorStore: recording %s, which embedded the nodes, as the store's encoder", type(encoder))

    def _forget_recorded_encoder(self) -> None:
        """After the store was emptied (or its first add failed): drop the encoder :meth:`_record_document_encoder`
        gave it (an encoder given by the user stays), and the encoders noted since."""
        self._forget_document_encoders()
        recorded, self._recorded_encoder = self._recorded_encoder, None
        if recorded is not None and not len(self._store) and self._store.encoder is recorded:
            self._store.encoder = None

    def _confidence_encoder(self, encoder: Any | None = None) -> Any:
        if encoder is not None:
            return encoder
        return self._store.encoder if self._store.encoder is not None else self._query_encoder

    def _confidence(
        self, query: Gaussians, scores: Sequence[float], encoder: Any | None = None
    ) -> tuple[float | None, str | None]:
        """The calibrated confidence of one query from its best ``-KL`` scores (best first), and why it is missing.

        The reason (:data:`CONFIDENCE_REASON_KEY`) is given only when a calibrator exists but fewer
        than two documents were candidates; otherwise it is ``None``.
        """
        if len(scores) < MIN_CANDIDATES:
            known = bool(scores) and self._scorer.calibrator(self._confidence_encoder(encoder)) is not None
            return None, too_few_candidates_reason(len(scores)) if known else None
        confidence = self._scorer.confidence(
            self._confidence_encoder(encoder), list(scores), float(query.numpy().uncertainty()[0])
        )
        return confidence, None

    def _calibrated(self, encoder: Any | None = None) -> bool:
        """Whether queries encoded by ``encoder`` (default: see :meth:`_confidence_encoder`) get a confidence."""
        return self._scorer.calibrator(self._confidence_encoder(encoder)) is not None

    def _depth(self, k: int, encoder: Any | None = None) -> int:
        """How many nodes to rank so that the confidence sees the scores it reads."""
        cal = self._scorer.calibrator(self._confidence_encoder(encoder))
        return k if cal is None else max(k, self._scorer.depth_for(cal))

    # ------------------------------------------------------------------ writing
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Add (or replace, by ``node_id``) nodes; returns their ids in input order.

        Args:
            nodes: Nodes with ``d~`` embeddings (from :class:`KLEmbedding`); nodes without an
                embedding are encoded when the store has an encoder.  Inputs are not modified.
            **add_kwargs: Ignored (LlamaIndex API).

        Raises:
            TypeError: ``nodes`` is not a list of nodes (a single node, a string, strings), or a node's
                metadata holds a value JSON cannot hold (as ``KLStore.add`` refuses it).
            ValueError: A node without an embedding and no encoder, an embedding that is
                not a KL document vector, or a dimension different from the store's.
        """
        nodes = _node_list(nodes, "nodes", _ADD_HINT)
        if not nodes:
            self._forget_document_encoders()
            return []
        # Checked (the ids first), then encoded, then the cancellation checked, then written. Every add forgets the
        # encoders noted for its nodes (_adopt_document_encoder) except one cancelled before it writes: a retry of
        # the same embedded nodes may still record their encoder.
        try:
            _check_node_ids(nodes)  # before anything is encoded (KLStore.add would refuse them after the encoding)
            ids = [n.node_id for n in nodes]
            keep = _last_occurrences(ids, "add: %d repeated node id(s) in one call; the last occurrence wins")
            if not self._warned_reserved:
                reserved = _reserved_keys_in([nodes[i] for i in keep])
                if reserved:
                    self._warned_reserved = True
                    _warn_reserved_keys(reserved, "KLVectorStore.add")
            kept_ids = [ids[i] for i in keep]
            # before any text is encoded: metadata JSON cannot hold fails first, as in KLStore.add
            metadatas = [_stored_metadata(nodes[i], self.flat_metadata) for i in keep]
            missing = [i for i, n in enumerate(nodes) if n.embedding is None]
            if missing and self.encoder is None and self._saved_encoder() is None:
                raise ValueError(
                    f"{len(missing)} node(s) have no embedding (first: {nodes[missing[0]].node_id!r}) and this "
                    "KLVectorStore has no encoder to embed them; embed them with KLEmbedding (e.g. "
                    "VectorStoreIndex(..., embed_model=KLEmbedding(...)) or an IngestionPipeline ending in "
                    "KLEmbedding), or create KLVectorStore(encoder=...)"
                )
            k = self._store.dim
            mean = np.zeros((len(nodes), 0))
            var = np.ones((len(nodes), 0))
            with_embedding = [i for i, n in enumerate(nodes) if n.embedding is not None]
            if with_embedding:
                raw = [nodes[i].embedding for i in with_embedding]
                rows = _as_2d(raw, "node embeddings", labels=[nodes[i].node_id for i in with_embedding])
                g = _document_gaussians(rows, raw)
                k = g.dim if k is None else k
                if g.dim != k:
                    raise ValueError(f"node embeddings have k={g.dim} (length {2 * g.dim + 1}); this store has k={k}")
                mean = np.zeros((len(nodes), k))
                var = np.ones((len(nodes), k))
                mean[with_embedding], var[with_embedding] = g.mean, g.var
            if missing and adapters.write_cancelled("KLVectorStore.async_add"):  # cancelled before encoding
                return []
            if missing:
                texts = [nodes[i].get_content(metadata_mode=MetadataMode.EMBED) for i in missing]
                g = _encode(self.encoder.encode_documents, texts, self._store.batch_size)
                k = g.dim if k is None else k
                if g.dim != k:
                    raise ValueError(f"the encoder gives k={g.dim}; this store has k={k}")
                if mean.shape[1] != k:
                    mean = np.zeros((len(nodes), k))
                    var = np.ones((len(nodes), k))
                mean[missing], var[missing] = g.mean, g.var
        except BaseException:
            self._forget_document_encoders()  # a refused add
            raise
        if adapters.write_cancelled("KLVectorStore.async_add"):  # encoded; the write lock is not taken yet
            return []  # nothing changed: the encoders noted for these nodes stay noted
        noted = self._forget_document_encoders()  # the encoders that embedded texts for this store, this add's
        before = _write_count(self._store)
        try:
            if not missing:  # every node embedded: by the KLEmbedding that embedded texts for this store, if any
                self._record_document_encoder(noted, nodes, k)
            # cancelled while it waited for the store's write lock: nothing written (the encoder just recorded
            # for an empty store is forgotten again)
            with adapters.store_write_unless_cancelled("KLVectorStore.async_add") as gate:
                if gate.go:
                    self._store.add(
                        [_node_text(nodes[i]) or "" for i in keep],
                        gaussians=Gaussians(mean[keep], var[keep]),
                        ids=kept_ids,
                        metadatas=metadatas,
                    )
            if not gate.go:
                self._forget_recorded_encoder()
                return []
        except BaseException:
            with self._non_text_lock:
                self._non_text = None  # a failed add changes nothing, but do not rely on it
            self._forget_recorded_encoder()  # an encoder recorded for these nodes, when the store is still empty
            raise
        non_text = [i for i, m in zip(kept_ids, metadatas, strict=True) if _is_non_text(m.get("_node_type"))]
        self._note_write(before, 1, kept_ids, non_text)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose ``ref_doc_id`` (source document) is ``ref_doc_id``; unknown ids are a no-op.

        Over a :class:`KLStore` the nodes are chosen and deleted in one step of the store (no node is copied),
        so a node upserted meanwhile under another document is never deleted. Over a ``MilvusKLStore`` only the
        nodes Milvus finds by their ``ref_doc_id`` (or ``doc_id``) are read, the matching ones chosen here and
        deleted by id: a write from another client in between is not seen.
        """
        target = str(ref_doc_id)
        self._delete_where(None, lambda m: str(_ref_doc_id(m)) == target, narrow=_ref_doc_filter([target]))

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes by id and / or metadata filter (both: nodes matching both); missing ids are ignored.

        Over a :class:`KLStore` the nodes matching ``filters`` are chosen and deleted in one step of the
        store, so a node upserted meanwhile with metadata that no longer matches is kept. Over a
        ``MilvusKLStore`` a filter with a JSON form is applied by the server in one delete; any other is judged
        here on the nodes read back, and the matching ids deleted (another client's write in between is not seen).

        Raises:
            TypeError: ``node_ids`` is a single string (pass a list: ``["id"]``).
            ValueError: Neither ``node_ids`` nor ``filters`` given (use :meth:`clear`).
        """
        wanted = _id_restriction(node_ids, "node_ids")
        if wanted is None and filters is None:
            raise ValueError("delete_nodes needs node_ids and/or filters; call clear() to delete every node")
        # unknown ids are ignored, as LlamaIndex's stores do (the store's delete would warn about them)
        ids = None if wanted is None else [d.id for d in self._store.get_by_ids(wanted)]
        if ids is not None and not ids:
            return
        predicate = metadata_filters_to_predicate(filters)
        # a store that takes no callable filter (MilvusKLStore) gets the filters' JSON form where it is exact
        where = predicate if isinstance(self._store, KLStore) else self._server_filter(filters, predicate)
        # filters that match everything (an empty MetadataFilters) with no node_ids: every node, as before
        self._delete_where(ids, where if where is not None or ids is not None else {})

    def clear(self) -> None:
        """Delete every node (the store's settings and dimension are kept)."""
        self._delete_where(None, {})

    def _delete_where(
        self, ids: list[str] | None, where: Predicate | dict[str, Any] | None, narrow: dict[str, Any] | None = None
    ) -> None:
        """``KLStore.delete(ids, filter=where)``: chosen under the read lock, deleted under the write lock.

        The store chooses again, under the write lock, when another thread wrote in between. A cancelled async
        call (:meth:`adelete`, :meth:`adelete_nodes`, :meth:`aclear`) that has not started deleting deletes nothing.
        A store that takes no callable filter (``MilvusKLStore``) gets a callable ``where`` judged here, on the
        documents among ``ids`` (``None``: every stored one) that the JSON filter ``narrow`` matches (``None``: all of
        them; the store evaluates it), and the ids it matches deleted: a write from another client between the
        reading and the deletion is not seen.
        """
        if adapters.write_cancelled("KLVectorStore's async delete"):
            return
        before = _write_count(self._store)
        try:
            # the store asks the gate once it holds its write lock: a KLStore judges the filter before, under its
            # read lock (searches go on); cancelled meanwhile, nothing is deleted
            with adapters.store_write_unless_cancelled("KLVectorStore's async delete") as gate:
                if not gate.go:
                    return
                if callable(where) and not isinstance(self._store, KLStore):
                    report = self._delete_matching_here(ids, where, narrow)
                elif where is not None:
                    report = self._store.delete(ids, filter=where)
                else:
                    report = self._store.delete(ids)
            if not gate.go:  # cancelled while it waited for the store's write lock
                return
        except BaseException:
            with self._non_text_lock:
                self._non_text = None
            raise
        self._note_write(before, 1 if report.deleted else 0, report.deleted)
        if not len(self._store):
            self._forget_recorded_encoder()  # emptied: the next nodes may be another model's

    def _server_filter(
        self, filters: MetadataFilters | None, predicate: Predicate | None
    ) -> dict[str, Any] | Predicate | None:
        """:func:`_store_filter`, kept as the predicate where the store cannot take that JSON form.

        A ``MilvusKLStore`` filters on str, int, float and bool values only: a filter LlamaIndex allows with a
        list value (``tags == ["a", "b"]``, ``!=``, an ordering) is judged here, per document, as over a
        ``KLStore`` (it raised ``ValueError`` in Milvus's filter translation before).
        """
        where = _store_filter(filters, predicate)
        if isinstance(where, dict) and not isinstance(self._store, KLStore):
            try:
                cast(Any, self._store)._prepare_filter(where)  # the server's form: what it cannot hold raises
            except ValueError:
                return predicate
        return where

    def _delete_matching_here(
        self, ids: list[str] | None, where: Predicate, narrow: dict[str, Any] | None = None
    ) -> DeleteReport:
        """Delete the documents among ``ids`` (``None``: all) whose metadata ``where`` matches, judged here.

        For a store that filters outside Python (``MilvusKLStore`` takes JSON filters only): each document that
        ``narrow`` matches (:meth:`_documents_where`) is read, ``where`` called on its metadata, and the matching
        ids deleted.
        """
        chosen = [d.id for d in self._documents_where(ids, where, narrow)]
        return self._store.delete(chosen) if chosen else DeleteReport(deleted=[], missing=[])

    def _documents_where(
        self, ids: list[str] | None, where: Predicate | dict[str, Any] | None, narrow: dict[str, Any] | None = None
    ) -> list[StoredDocument]:
        """The stored documents among ``ids`` (``None``: every one) that ``where`` matches (``None``: all).

        Read with :meth:`~kl_retrievers.store.GaussianStore.get_by_filter`, so that the store reads only the
        matching documents. A store that takes no callable filter (``MilvusKLStore``) gets a callable ``where``
        judged here, on the documents the JSON filter ``narrow`` matches (the store evaluates it; it may match
        more than ``where``, never less; ``None``: every document among ``ids``).
        """
        store = self._store
        if callable(where) and not isinstance(store, KLStore):
            return [d for d in store.get_by_filter(narrow, ids=ids) if where(d.metadata)]
        return store.get_by_filter(where, ids=ids)

    # The async variants run the sync method in a worker thread (LlamaIndex's base class would run it on the
    # event loop, stalling it for the whole encode / search / scan); the KLStore is thread-safe. A cancelled
    # write (asyncio.wait_for's timeout too) writes nothing unless it holds the store's write lock already.
    async def async_add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """:meth:`add` in a worker thread (the event loop keeps running while nodes are encoded and added).

        A cancelled call writes nothing: the worker thread finishes encoding, then stops before the store's
        write lock (a write that holds the lock already completes). The nodes are read and their ids checked
        here, on the caller's thread: a bad id fails at once, before anything is encoded.
        """
        node_list = _node_list(nodes, "nodes", _ADD_HINT)
        _check_node_ids(node_list)
        return await adapters.cancellable_write(self.add, node_list, **add_kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """:meth:`delete` in a worker thread; a call cancelled before it deletes deletes nothing."""
        await adapters.cancellable_write(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """:meth:`delete_nodes` in a worker thread; a call cancelled before it deletes deletes nothing."""
        await adapters.cancellable_write(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        """:meth:`clear` in a worker thread; a call cancelled before it deletes deletes nothing."""
        await adapters.cancellable_write(self.clear)

    # ------------------------------------------------------------------ reading
    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """Stored nodes by id (in the given order; unknown ids skipped) and / or filter.

        Returned nodes carry ``d~`` embeddings recomputed from the stored float32 Gaussians.

        Raises:
            TypeError: ``node_ids`` is a single string (pass a list: ``["id"]``).
        """
        wanted = _id_restriction(node_ids, "node_ids")
        docs = self._documents_where(wanted, self._server_filter(filters, metadata_filters_to_predicate(filters)))
        if not docs:
            return []
        vectors = kl_document_vectors(self._store.get_gaussians([d.id for d in docs]).astype(np.float64))
        out = []
        for d, vec in zip(docs, vectors, strict=True):
            node = _to_node(d.id, d.text, d.metadata)
            node.embedding = _python_floats(vec)
            out.append(node)
        return out

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """:meth:`get_nodes` in a worker thread."""
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    def _saved_encoder(self) -> Any:
        """The encoder the store was saved with, loaded by name once (``None`` when it records none).

        A store that ``load_index_from_storage`` loads gets no encoder; with ``is_embedding_query=False``
        its retrievers pass only the query string, which the model the store was saved with encodes
        (as LangChain's ``load_local`` loads that model).
        """
        load = getattr(self._store, "_load_saved_encoder", None)  # KLStore's; another store keeps what it has
        if load is None:
            return self._store.encoder
        try:
            return load()
        except ValueError as exc:
            raise ValueError(f"{exc}: pass encoder= to KLVectorStore.from_persist_dir / from_persist_path") from None

    def _query_gaussian(self, query: VectorStoreQuery) -> Gaussians:
        if query.query_embedding is not None:
            return query_gaussians_from_embeddings(query.query_embedding)
        if query.query_str is not None:
            encoder = self.encoder if self.encoder is not None else self._saved_encoder()
            if encoder is not None:
                return _encode(encoder.encode_queries, [query.query_str], 1)
            if is_blank_query(query.query_str):  # LlamaIndex embeds no empty query string: say so, not "no embedding"
                raise ValueError(
                    f"the query is empty (query_str={query.query_str!r}): LlamaIndex computes no embedding for an "
                    "empty query, and this store has no encoder to encode it; ask a non-empty question, or give "
                    "the store an encoder (KLVectorStore(encoder=...))"
                )
        raise ValueError(
            "the query has no embedding; pass a KLEmbedding query embedding, or give the store an encoder "
            "(KLVectorStore(encoder=...)) and a query_str"
        )

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top ``similarity_top_k`` nodes by exact ``-KL``, after ``node_ids`` / ``doc_ids`` / ``filters``.

        ``similarities`` are relevances in ``(0, 1]`` (see the class docstring); with
        ``mode="mmr"`` the nodes come in MMR order (:meth:`mmr_search_gaussian`), with the lambda
        ``mmr_threshold`` (keyword, else ``query.mmr_threshold``, else 0.5) and
        ``mmr_prefetch_k`` or ``mmr_prefetch_factor`` (default 4) candidates per result.

        Other keyword arguments are ignored, with a ``UserWarning`` naming them.

        Raises:
            TypeError: ``query.node_ids`` or ``query.doc_ids`` is a single string.
            ValueError: ``similarity_top_k < 1``, a query mode outside :data:`SUPPORTED_QUERY_MODES`,
                an unsupported filter operator, a query embedding that is not a KL query vector, or
                ``mmr_threshold`` that is no number in ``[0, 1]``.
        """
        known = _AS_RETRIEVER_LIST.get()  # what aquery found on the event loop's thread's stack (see there)
        if known is not None and known[0] is self and known[1] is query:  # aquery checked query and kwargs
            unrestricted = self._as_retriever_lists(query, known[2])
        else:
            _warn_ignored_query_kwargs(kwargs, "query")
            _check_query_ids(query)
            unrestricted = self._as_retriever_lists(query, self._stack_verdict(query))
        return self._query(query, unrestricted, **kwargs)

    def _stack_verdict(self, query: VectorStoreQuery) -> bool | None:
        """:func:`_index_retriever_verdict` for ``query.node_ids`` (read on the caller's thread: it walks the stack)."""
        return _index_retriever_verdict(self, query.node_ids) if query.node_ids else False

    def _as_retriever_lists(self, query: VectorStoreQuery, verdict: bool | None) -> bool:
        """Whether ``query.node_ids`` is the list ``VectorStoreIndex.as_retriever`` sends: no restriction.

        ``verdict`` is :meth:`_stack_verdict`'s answer; when no retriever was on the stack
        (``None``), a list of exactly the stored ``IndexNode`` / ``ImageNode`` nodes counts too
        (:meth:`_lists_the_non_text_nodes`, which may read the stored ``IndexNode`` / ``ImageNode`` nodes:
        never called on the event loop's thread by :meth:`aquery`). Reading the list as no restriction is
        logged at INFO by the first query of this store that does so, at DEBUG by later ones.
        """
        node_ids = query.node_ids
        if not node_ids:
            return False
        if verdict is None:
            verdict = self._lists_the_non_text_nodes(node_ids)
        if verdict:  # at INFO once per store (a service would log it at every request), then at DEBUG
            level = logging.DEBUG if self._said_unrestricted else logging.INFO
            self._said_unrestricted = True
            logger.log(
                level,
                "node_ids is the list VectorStoreIndex.as_retriever passes (its IndexNode / ImageNode nodes): "
                "searching every node. To search only those nodes use KLRetriever(node_ids=...)",
            )
        return verdict

    def _query(self, query: VectorStoreQuery, unrestricted: bool, **kwargs: Any) -> VectorStoreQueryResult:
        """:meth:`query`, with ``unrestricted`` saying whether to ignore ``query.node_ids`` (the as_retriever list)."""
        mode = _enum_value(query.mode)
        if mode not in SUPPORTED_QUERY_MODES:
            raise ValueError(
                f"KLVectorStore supports the query modes {SUPPORTED_QUERY_MODES}; got {mode!r}"
                + (
                    "; for BM25 + -KL hybrid search use KLHybridRetriever.from_defaults(nodes=...) (a KLHybridStore)"
                    if mode in _KEYWORD_QUERY_MODES
                    else ""
                )
            )
        gaussian = self._query_gaussian(query)
        # what VectorStoreIndex.as_retriever passes: no restriction (see the class docstring)
        node_ids = None if unrestricted else query.node_ids
        if mode == VectorStoreQueryMode.DEFAULT.value:
            result = self.search_gaussian(
                gaussian, query.similarity_top_k, query.filters, node_ids=node_ids, doc_ids=query.doc_ids
            )
        else:
            top_k = _check_top_k(query.similarity_top_k)
            threshold = kwargs.get("mmr_threshold", query.mmr_threshold)
            result = self.mmr_search_gaussian(
                gaussian,
                top_k,
                mmr_threshold=_MMR_THRESHOLD if threshold is None else threshold,
                prefetch_k=max(top_k, _mmr_prefetch(top_k, kwargs)),
                filters=query.filters,
                node_ids=node_ids,
                doc_ids=query.doc_ids,
            )
        # a blank query asks for nothing: confidence 0. Judged from query_str, the text this store encodes (and,
        # with a query embedding, the one LlamaIndex embedded, unless the bundle had custom embedding strings)
        if is_blank_query(query.query_str):
            _mark_blank_query(result.nodes or [], self._calibrated())
        return result

    def _stored_non_text_ids(self) -> frozenset[str]:
        """Ids of the stored ``IndexNode`` / ``ImageNode`` nodes (from their ``_node_type``).

        Kept up to date by :meth:`add` and the deletes through this object (they know the node
        types); the store is scanned again only when it was changed otherwise (its ``write_count``,
        which every add, upsert and delete bumps, differs from the one the ids are right for: a
        write to the wrapped ``KLStore`` itself, or through another wrapper).
        """
        with self._non_text_lock:
            cached = self._non_text
        version = _write_count(self._store)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]
        # only those nodes, found by their _node_type (by Milvus for a MilvusKLStore, asked at every call)
        return self._cache_non_text(version, self._store.get_by_filter(_NON_TEXT_FILTER))

    def _lists_the_non_text_nodes(self, node_ids: Sequence[str]) -> bool:
        """The guess for a query no ``VectorStoreIndex`` retriever sent (see :meth:`_as_retriever_lists`).

        For a store that keeps the text, LlamaIndex records only ``IndexNode`` / ``ImageNode`` nodes
        in the index struct (to swap them back in from its docstore) and ``as_retriever`` passes
        their ids as ``node_ids``; as a restriction it would hide every ``TextNode``. So a list that
        holds every stored ``IndexNode`` / ``ImageNode`` (at least one) and no other stored node is
        read as no restriction; ids the store does not hold are ignored (LlamaIndex keeps the ids of
        such nodes after they are deleted). Any other list restricts.
        """
        stored = self._stored_non_text_ids()
        if not stored:
            return False
        wanted = {str(i) for i in node_ids}
        if not stored <= wanted:
            return False
        return not self._store.get_by_ids(sorted(wanted - stored))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """:meth:`query` in a worker thread (the event loop keeps running while the query is encoded and ranked)."""
        _warn_ignored_query_kwargs(kwargs, "aquery")
        _check_query_ids(query)
        # Decided here: the worker thread's stack holds no retriever. to_thread copies this context into it.
        token = _AS_RETRIEVER_LIST.set((self, query, self._stack_verdict(query)))
        try:
            return await asyncio.to_thread(self.query, query, **kwargs)
        finally:
            _AS_RETRIEVER_LIST.reset(token)

    def search_gaussian(
        self,
        query: Gaussians,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        filters: MetadataFilters | None = None,
        node_ids: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
        *,
        encoder: Any | None = None,
    ) -> VectorStoreQueryResult:
        """Rank the nodes for one query Gaussian by exact ``-KL`` (the engine behind :meth:`query`).

        Args:
            query: One query Gaussian.
            similarity_top_k: Number of nodes (>= 1).
            filters: LlamaIndex metadata filters, applied before ranking.
            node_ids: Restrict to these node ids (an empty list: no restriction, as
                ``VectorStoreIndex.as_retriever`` passes one for an index without ``IndexNode`` /
                ``ImageNode`` nodes; :meth:`query` also reads the list of those as no restriction).
            doc_ids: Restrict to nodes of these source documents (``ref_doc_id``; empty: none).
            encoder: The encoder that made ``query`` (its model's calibrator gives the
                confidence; default: the store's, else the :class:`KLEmbedding`'s that embedded
                queries for this store).

        Returns:
            ``VectorStoreQueryResult`` with nodes, ids and ``similarities`` = relevance (best
            first); each node's metadata holds its exact ``-KL`` under ``"neg_kl"``, the query
            uncertainty under :data:`QUERY_UNCERTAINTY_KEY` and the query's calibrated confidence
            under :data:`CONFIDENCE_KEY` (``None`` without a calibrator, or with a single candidate
            node: then :data:`CONFIDENCE_REASON_KEY` says so when a calibrator exists).

        Examples:
            >>> import numpy as np
            >>> KLVectorStore().search_gaussian(Gaussians(np.zeros(2), np.ones(2))).ids
            []
        """
        k = _check_top_k(similarity_top_k)
        ids, scores, texts, metas = self._ranked(query, self._depth(k, encoder), filters, node_ids, doc_ids)
        confidence, reason = self._confidence(query, scores, encoder)
        return self._result(query, ids[:k], scores[:k], texts[:k], metas[:k], confidence, reason)

    def mmr_search_gaussian(
        self,
        query: Gaussians,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        mmr_threshold: float = _MMR_THRESHOLD,
        prefetch_k: int | None = None,
        filters: MetadataFilters | None = None,
        node_ids: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> VectorStoreQueryResult:
        """KL-based maximal marginal relevance among the ``prefetch_k`` nodes nearest by ``-KL``.

        The same selection as the LangChain store's ``max_marginal_relevance_search``
        (:func:`kl_retrievers._adapters.mmr_select`): ``mmr_threshold`` is the lambda (``1``:
        pure relevance, ``0``: most diverse); redundancy is the relevance of the symmetrised KL
        between the stored Gaussians.  ``similarities`` are each node's relevance to the query.

        Examples:
            >>> import numpy as np
            >>> KLVectorStore().mmr_search_gaussian(Gaussians(np.zeros(2), np.ones(2))).ids
            []
        """
        k = _check_top_k(similarity_top_k)
        mmr_threshold = _check_mmr_threshold(mmr_threshold)
        fetch = max(k, _check_top_k(prefetch_k if prefetch_k is not None else int(k * _MMR_PREFETCH_FACTOR)))
        ids, scores, texts, metas = self._ranked(query, max(fetch, self._depth(k)), filters, node_ids, doc_ids)
        confidence, reason = self._confidence(query, scores)  # from the deeper ranking the calibrator reads
        # MMR picks among the `fetch` nearest only (mmr_prefetch_k / mmr_prefetch_factor)
        ids, scores, texts, metas = ids[:fetch], scores[:fetch], texts[:fetch], metas[:fetch]
        if not ids:
            return self._result(query, ids, scores, texts, metas, confidence, reason)
        keep, gaussians = adapters.present_gaussians(self._store, ids)  # a node deleted meanwhile is dropped
        if gaussians is None:
            return self._result(query, [], [], [], [], confidence, reason)
        if len(keep) < len(ids):
            ids, scores = [ids[i] for i in keep], [scores[i] for i in keep]
            texts, metas = [texts[i] for i in keep], [metas[i] for i in keep]
        relevance = adapters.resolve_relevance(self.relevance)
        order = adapters.mmr_select(scores, gaussians, k, mmr_threshold, relevance, self._store.dim)
        return self._result(
            query,
            [ids[i] for i in order],
            [scores[i] for i in order],
            [texts[i] for i in order],
            [metas[i] for i in order],
            confidence,
            reason,
        )

    def _ranked(
        self,
        query: Gaussians,
        similarity_top_k: int,
        filters: MetadataFilters | None,
        node_ids: Sequence[str] | None,
        doc_ids: Sequence[str] | None,
    ) -> tuple[list[str], list[float], list[str | None], list[dict[str, Any]]]:
        """Ids, ``-KL`` scores, texts and metadata of the best nodes (best first)."""
        k = _check_top_k(similarity_top_k)
        # VectorStoreIndex.as_retriever passes node_ids=[] for stores that keep the text
        # (its index struct lists no nodes): an empty list means "no restriction".
        node_ids = _id_restriction(node_ids, "node_ids") or None
        doc_ids = _id_restriction(doc_ids, "doc_ids") or None
        if len(query) != 1:
            raise ValueError(f"search_gaussian takes one query Gaussian; got {len(query)}")
        dim = self._store.dim
        if dim is not None and query.dim != dim:
            # checked here, not only by KLStore.search: a node_ids list naming no stored node (or a filter
            # leaving none) would otherwise answer a query of another model with no hits instead of an error
            raise ValueError(
                f"the query Gaussian has dimension k={query.dim} (a vector of length {2 * query.dim + 1}); this "
                f"store has k={dim} (length {2 * dim + 1}): embed the query with the model that embedded the nodes"
            )
        predicate = metadata_filters_to_predicate(filters)
        if doc_ids is not None:
            wanted = {str(d) for d in doc_ids}
            predicate = _and(predicate, lambda m: str(_ref_doc_id(m)) in wanted)
        # a store that filters outside Python (MilvusKLStore: JSON filters only) reads only the nodes that the
        # filters' exact JSON form (if any) matches; the predicate is then judged here on those
        outside = not isinstance(self._store, KLStore)
        server = self._server_filter(filters, metadata_filters_to_predicate(filters)) if outside else None
        server = server if isinstance(server, dict) and server else None
        if node_ids is not None:
            return self._search_among(query, k, node_ids, predicate, server)
        # filters with an exact JSON form go as that: the store caches the rows they allow
        where = predicate if doc_ids is not None else self._server_filter(filters, predicate)
        if callable(where) and outside:
            # judged here, on the nodes of those source documents (the store finds them by their ref_doc_id)
            # that the filters' JSON form matches, else on every node
            narrow = None if doc_ids is None else _ref_doc_filter(doc_ids)
            if server is not None:
                narrow = server if narrow is None else {"$and": [narrow, server]}
            return self._rank_documents(query, k, self._documents_where(None, where, narrow))
        hits = self._store.search(query, k=k, filter=where)
        return [h.id for h in hits], [float(h.score) for h in hits], [h.text for h in hits], [h.metadata for h in hits]

    def _result(
        self,
        query: Gaussians,
        ids: list[str],
        scores: list[float],
        texts: list[str | None],
        metas: list[dict[str, Any]],
        confidence: float | None = None,
        reason: str | None = None,
    ) -> VectorStoreQueryResult:
        """Nodes with ``neg_kl``, the query uncertainty and confidence in their metadata; similarities = relevance.

        ``reason`` (why the confidence is missing, see :meth:`_confidence`) is added under
        :data:`CONFIDENCE_REASON_KEY` when given.
        """
        relevance, dim = adapters.resolve_relevance(self.relevance), self._store.dim
        uncertainty = float(query.numpy().uncertainty()[0])
        nodes = []
        for doc_id, text, meta, score in zip(ids, texts, metas, scores, strict=True):
            added: dict[str, Any] = {SCORE_NAME: score, QUERY_UNCERTAINTY_KEY: uncertainty, CONFIDENCE_KEY: confidence}
            if reason is not None:
                added[CONFIDENCE_REASON_KEY] = reason
            nodes.append(_scored_node(doc_id, text, meta, added))
        return VectorStoreQueryResult(nodes=nodes, similarities=[relevance(x, dim) for x in scores], ids=list(ids))

    def _search_among(
        self,
        query: Gaussians,
        k: int,
        node_ids: Sequence[str],
        predicate: Predicate | None,
        server: dict[str, Any] | None = None,
    ) -> tuple[list[str], list[float], list[str | None], list[dict[str, Any]]]:
        """Exact -KL over an explicit set of node ids (float64, like KLStore's re-scoring).

        Tied scores are ranked as a ``KLStore`` ranks them (docs/ann.md, "Tied scores"): the later added first,
        not in the order of ``node_ids``. The insertion order is read only when two scores tie. Over another
        store (``MilvusKLStore``, whose insertion order is not read here) they keep the order of ``node_ids``.
        ``server``, a JSON filter that matches every node ``predicate`` does, is evaluated by the store: only the
        nodes it matches are read.
        """
        wanted = [str(i) for i in dict.fromkeys(node_ids)]
        docs = self._store.get_by_ids(wanted) if server is None else self._store.get_by_filter(server, ids=wanted)
        if predicate is not None:
            docs = [d for d in docs if predicate(d.metadata)]
        return self._rank_documents(query, k, docs)

    def _rank_documents(
        self, query: Gaussians, k: int, docs: Sequence[StoredDocument]
    ) -> tuple[list[str], list[float], list[str | None], list[dict[str, Any]]]:
        """The top ``k`` of ``docs`` by exact -KL (see :meth:`_search_among`; ties kept in the order of ``docs``
        over a store other than a ``KLStore``)."""
        if not docs:
            return [], [], [], []
        g = self._store.get_gaussians([d.id for d in docs]).astype(np.float64)
        scores = neg_kl_matrix(query.numpy().astype(np.float64), g)[0]
        store = self._store
        if np.unique(scores).size < scores.size and isinstance(store, KLStore):
            # the store's rows follow the insertion order (compaction keeps it): read only these documents' rows
            with store._lock.read():
                row = store._table.row
                later_first = np.array([-row.get(d.id, -1) for d in docs], dtype=np.int64)
            order = np.lexsort((later_first, -scores))[:k]
        else:
            order = np.argsort(-scores, kind="stable")[:k]
        return (
            [docs[i].id for i in order],
            [float(scores[i]) for i in order],
            [docs[i].text for i in order],
            [docs[i].metadata for i in order],
        )

    # -------------------------------------------------------------- persistence
    def persist(
        self,
        persist_path: str = os.path.join(DEFAULT_PERSIST_DIR, DEFAULT_PERSIST_FNAME),
        fs: Any | None = None,
    ) -> None:
        """Save the store: a :class:`KLStore` folder beside a small JSON manifest (no pickle).

        ``persist_path`` is the manifest (``StorageContext.persist`` passes
        ``<dir>/default__vector_store.json``); the store folder is the same path with the
        suffix ``.klstore``.  An explicit ``calibrator=`` is written as JSON
        (:meth:`~kl_retrievers.calibration.ConfidenceCalibrator.save`) to ``<name>.calibrator.json``
        and recorded in the manifest, so abstention survives a reload; a store without one records
        ``None`` (the query encoder's model's calibrator is found again after loading). The manifest
        also records ``relevance``, ``flat_metadata`` and ``is_embedding_query``.  The store folder
        holds a copy of the manifest and the calibrator and is swapped into place at once (the manifest
        and calibrator beside the folder are written after it, for LlamaIndex to find and for earlier
        releases); :meth:`from_persist_path` reads that copy with the store and uses the manifest
        beside it only when both come from the same persist, so a concurrent persist or load, or a
        persist that failed part-way, never pairs one persist's nodes with another's settings (a manifest
        edited by hand applies only while it keeps the copy's ``persist_id``; else the copy's settings do).
        Persisting again overwrites it. A symbolic link in ``persist_path``'s folder (``current -> v3``, or a link
        above it) is followed: it is resolved once, before anything is written, and every part goes into ``v3``
        (the link is kept), even if the link is re-pointed during the persist.
        ``load_index_from_storage(StorageContext.from_defaults(persist_dir=dir))`` loads the
        store back as a :class:`KLVectorStore` (see :meth:`from_persist_path`).

        A store over a ``MilvusKLStore`` writes nothing (logged at INFO level), as LlamaIndex's own stores over a
        server do: its nodes are in the Milvus collection already, and ``StorageContext.persist`` still writes the
        docstore and index store. Reopen it with ``KLVectorStore(store=MilvusKLStore(uri, collection_name=...))``.
        What a store over a ``KLStore`` persisted at ``persist_path`` earlier (its manifest, then the calibrator
        and the store folder that manifest names, when that folder is one ``persist`` wrote) is removed instead,
        logged at WARNING level: no load then finds those nodes in place of the collection's.

        Raises:
            NotImplementedError: ``fs`` is not a local filesystem (over a ``KLStore``).
            OSError: The folder cannot be written; over a ``MilvusKLStore``: a store persisted there earlier cannot
                be removed (a read-only folder).
        """
        if not isinstance(self._store, KLStore):
            # a KLStore persists to a local filesystem only: nothing of its elsewhere
            if not (_is_local_fs(fs) and _remove_persisted(persist_path)):
                logger.info(
                    "KLVectorStore.persist: the %s keeps its nodes in its own server; nothing written to %s "
                    "(reconnect with the same uri and collection_name instead)",
                    type(self._store).__name__,
                    persist_path,
                )
            return
        _check_fs(fs)
        given = user_path(persist_path)
        manifest_path, store_dir, calibrator_path = _persisted_paths(persist_path)
        make_dirs(manifest_path.parent)  # each new folder synced into its parent
        calibrator = self._scorer.explicit
        manifest = {
            "format": _MANIFEST_FORMAT,
            "format_version": _MANIFEST_VERSION,
            "store": store_dir.name,
            "score_name": SCORE_NAME,
            "score_direction": SCORE_DIRECTION,
            "flat_metadata": self.flat_metadata,
            "relevance": self.relevance,
            "is_embedding_query": self.is_embedding_query,
            "calibrator": calibrator_path.name if calibrator is not None else None,
            "embedding_dict": {"kl-retrievers": [_NOT_A_SIMPLE_VECTOR_STORE]},
            # the same in the copy inside the store folder: from_persist_path tells whether both come from one persist
            "persist_id": uuid.uuid4().hex,
        }
        # The store folder, with a copy of the manifest and the calibrator inside it, replaces the previous one in
        # one swap. from_persist_path reads them together and uses the manifest beside the folder only when its
        # persist_id is the copy's, so a concurrent persist or load never pairs one persist's nodes with another's
        # settings.
        inner = {**manifest, "calibrator": _INNER_CALIBRATOR if calibrator is not None else None}
        adapters.save_store_with_manifest(
            self._store,
            store_dir,
            _INNER_MANIFEST,
            inner,
            extra=None if calibrator is None else lambda tmp: calibrator.save(tmp / _INNER_CALIBRATOR),
        )
        if calibrator is not None:
            calibrator.save(calibrator_path)
        adapters.write_manifest(manifest_path, manifest)
        if calibrator is None:
            calibrator_path.unlink(missing_ok=True)  # a calibrator persisted earlier no longer applies
        logger.info("persisted %d nodes to %s (+ %s)", len(self._store), given, store_dir.name)

    @classmethod
    def from_persist_path(
        cls,
        persist_path: str | os.PathLike[str],
        fs: Any | None = None,
        *,
        encoder: Any | None = None,
        mmap: bool = False,
        calibrator: Any = None,
        verify_checksums: bool = True,
    ) -> KLVectorStore:
        """Load a store written by :meth:`persist` (``persist_path`` = the manifest, or a KLStore folder).

        Importing this module also routes ``SimpleVectorStore.from_persist_path`` here for such a
        manifest, which is what ``StorageContext.from_defaults(persist_dir=...)`` calls for every
        ``*vector_store.json`` it finds: the plain ``load_index_from_storage`` recipe then gets this
        store back instead of an empty ``SimpleVectorStore``.

        Args:
            persist_path: The manifest path given to :meth:`persist`, a folder holding one such
                manifest (whatever its name: ``persist("storage/my_index.json")`` writes
                ``my_index.json``), or a ``KLStore`` folder.
            fs: Must be ``None`` or a local filesystem.
            encoder: Optional encoder (see the class docstring).
            mmap: Memory-map the saved arrays (see :meth:`KLStore.load`).
            calibrator: A confidence calibrator (or a path to its JSON); it takes precedence over
                the one :meth:`persist` saved (manifests written before calibrators were saved
                record none).
            verify_checksums: Check every stored file's SHA-256 (sizes and the stored values are
                always checked); ``False`` skips one read of every file (see :meth:`KLStore.load`).

        Raises:
            FileNotFoundError: Nothing at ``persist_path``, a folder that is neither form (the message lists
                its ``*.json`` files that could not be read and its ``*.klstore`` sub-folders), or the
                calibrator file the manifest names is missing.
            NothingSavedError: (a ``FileNotFoundError`` and a ``ValueError``) no folder, or one without a manifest.
            StoreFormatError: (a ``ValueError``) A folder kl_retrievers saved as another kind (a hybrid store,
                an encoder...: the message names it), where the manifest (or the manifest's folder) is expected.
            ValueError: The manifest is not a KLVectorStore manifest (or the store or calibrator is corrupted);
                a folder holding several manifests (each is named: pass one).
        """
        _check_fs(fs)
        encoder = _unwrap_encoder(encoder)
        path = user_path(persist_path)  # "~/storage/x.json" is under the home folder, as persist saves it
        if path.is_dir():
            manifest_path = _manifest_in_folder(path)
            if manifest_path is None and not (path / "config.json").is_file():
                if (other := describe_kl_folder(path)) is not None:
                    raise StoreFormatError(f"{path} is not a LlamaIndex KLVectorStore: it is {other}")
                raise NothingSavedError(_no_store_in_folder(path))
            if manifest_path is None:
                return cls(
                    KLStore.load(path, encoder=encoder, mmap=mmap, verify_checksums=verify_checksums),
                    calibrator=calibrator,
                )
            logger.info("%s holds one KLVectorStore manifest: loading %s", path, manifest_path.name)
            path = manifest_path
        if not path.is_file():
            folder = path.parent
            other = describe_kl_folder(folder) if folder.is_dir() else None
            if other is not None and not adapters.manifests_in_folder(folder, _MANIFEST_FORMAT):
                raise StoreFormatError(f"{folder} is not a LlamaIndex persist folder: it is {other}")
            raise NothingSavedError(f"no KLVectorStore at {path}")
        manifest = adapters.read_manifest(
            path, format_name=_MANIFEST_FORMAT, format_version=_MANIFEST_VERSION, what="KLVectorStore"
        )
        name = str(manifest.get("store", ""))
        if not name or Path(name).name != name:
            raise ValueError(f"{path} names an invalid store folder {name!r}")
        store_dir = path.parent / name
        # persist swaps in the store folder with a copy of the manifest and the calibrator inside it: read them
        # from one copy. The manifest beside it applies when it comes from the same persist (the copy's
        # persist_id; a folder persisted by an earlier release has no copy), else the copy does: the manifest
        # was written by a concurrent persist, or a persist failed before writing it.
        inner, store, inner_calibrator = load_unchanged(
            store_dir,
            lambda: _read_persisted(store_dir, encoder, mmap, verify_checksums, load_calibrator=calibrator is None),
        )
        if inner is not None and inner.get("persist_id") != manifest.get("persist_id"):
            logger.info(
                "%s comes from another persist than %s: using the settings persisted with the store", path, name
            )
            manifest = inner
        saved = manifest.get("calibrator")
        if calibrator is None and saved is not None:
            calibrator = inner_calibrator
            if calibrator is None:  # persisted by an earlier release: the file beside the manifest
                if not isinstance(saved, str) or not saved or Path(saved).name != saved:
                    raise ValueError(f"{path} names an invalid calibrator file {saved!r}")
                calibrator = path.parent / saved
                if not calibrator.is_file():
                    raise FileNotFoundError(
                        f"{path} records the calibrator {saved!r}, which is missing from {path.parent}"
                    )
        relevance = manifest.get("relevance") or adapters.DEFAULT_RELEVANCE
        if "relevance" not in manifest:
            # persisted by kl-retrievers 0.1.0, whose similarities were the raw -KL: same ranking, other numbers
            logger.warning(
                "%s was persisted before the store recorded its relevance (kl-retrievers 0.1.0, whose similarities "
                "were the raw -KL): similarities are now the relevance %s, exp(-KL) in (0, 1], in the same order; "
                "the raw -KL is in each node's metadata under %r (no relevance setting reports it as the "
                "similarity). Persisting the store again records the relevance and ends this warning",
                path,
                adapters.DEFAULT_RELEVANCE,
                SCORE_NAME,
            )
        # a manifest written before the field was recorded: LlamaIndex's default, as then
        is_embedding_query = manifest.get("is_embedding_query", True)
        if not isinstance(is_embedding_query, bool):
            raise ValueError(f"{path}: 'is_embedding_query' must be true or false; got {is_embedding_query!r}")
        return cls(
            store,
            relevance=cast(adapters.RelevanceName, str(relevance)),  # checked by the constructor
            calibrator=calibrator,
            flat_metadata=bool(manifest.get("flat_metadata", False)),
            is_embedding_query=is_embedding_query,
        )

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str] = DEFAULT_PERSIST_DIR,
        namespace: str = _DEFAULT_NAMESPACE,
        fs: Any | None = None,
        *,
        encoder: Any | None = None,
        mmap: bool = False,
        calibrator: Any = None,
        verify_checksums: bool = True,
    ) -> KLVectorStore:
        """Load the store that ``StorageContext.persist(persist_dir)`` wrote (``<namespace>__vector_store.json``).

        ``encoder``, ``mmap``, ``calibrator`` and ``verify_checksums`` are as in :meth:`from_persist_path`.
        The arguments follow ``SimpleVectorStore.from_persist_dir(persist_dir, namespace, fs)``; a
        filesystem given second, as ``FaissVectorStore.from_persist_dir(persist_dir, fs)`` takes it,
        is read as ``fs`` (with the default namespace).

        Raises:
            NothingSavedError: (a ``FileNotFoundError`` and a ``ValueError``) no ``persist_dir``, or no store in it.
            TypeError: ``namespace`` is neither a string nor (with no ``fs``) a filesystem.

        Examples:
            >>> KLVectorStore.from_persist_dir("./storage")  # doctest: +SKIP
        """
        if not isinstance(namespace, str):
            if fs is None and hasattr(namespace, "protocol"):  # FaissVectorStore's (persist_dir, fs) order
                fs, namespace = namespace, _DEFAULT_NAMESPACE
            else:
                raise TypeError(
                    f"namespace must be a string (the <namespace>__vector_store.json prefix, {_DEFAULT_NAMESPACE!r} "
                    f"by default); got {type(namespace).__name__}"
                )
        fname = f"{namespace}{_NAMESPACE_SEP}{DEFAULT_PERSIST_FNAME}"
        return cls.from_persist_path(
            user_path(persist_dir) / fname,
            fs=fs,
            encoder=encoder,
            mmap=mmap,
            calibrator=calibrator,
            verify_checksums=verify_checksums,
        )


_ORIGINAL_ATTR = "_kl_retrievers_original"
_NO_PICKLE = (
    "a KLVectorStore cannot be pickled or deep-copied (LlamaIndex would rebuild an empty store from its fields): "
    "save it with store.persist(path) or index.storage_context.persist(persist_dir=...), and load it with "
    "KLVectorStore.from_persist_dir(persist_dir) or load_index_from_storage(StorageContext.from_defaults("
    "persist_dir=...)); share the object itself between threads"
)


def _install_simple_vector_store_loader() -> None:
    """Route ``SimpleVectorStore.from_persist_path`` to :meth:`KLVectorStore.from_persist_path` for our manifests.

    ``StorageContext.from_defaults(persist_dir=...)`` loads every ``*vector_store.json`` in the
    folder with ``SimpleVectorStore``, whatever store wrote it; a KLVectorStore manifest would
    load as an empty store and every query would return nothing.  The wrapper hands only files
    that are a KLVectorStore manifest (small JSON with its ``format``) to KLVectorStore and
    everything else to the original loader.  Idempotent (re-importing this module re-wraps
    the original, not the previous wrapper).
    """
    current = SimpleVectorStore.__dict__["from_persist_path"].__func__
    original = getattr(current, _ORIGINAL_ATTR, current)

    def from_persist_path(cls: type, persist_path: str, fs: Any | None = None) -> BasePydanticVectorStore:
        if (
            cls is SimpleVectorStore
            and _is_local_fs(fs)
            and adapters.looks_like_manifest(user_path(persist_path), _MANIFEST_FORMAT)
        ):
            logger.info("%s is a KLVectorStore manifest; loading it as a KLVectorStore", persist_path)
            return KLVectorStore.from_persist_path(persist_path, fs=fs)
        return original(cls, persist_path, fs=fs)  # type: ignore[no-any-return]

    setattr(from_persist_path, _ORIGINAL_ATTR, original)
    from_persist_path.__doc__ = original.__doc__
    setattr(SimpleVectorStore, "from_persist_path", classmethod(from_persist_path))  # noqa: B010


_install_simple_vector_store_loader()


# --------------------------------------------------------------------------- retriever
#: Added to from_defaults' message for ``nodes=`` that are not nodes.
_NODES_HINT = ", or pass the texts as documents=[Document(text=text), ...]"


def _objects_of(nodes: Sequence[BaseNode] | None) -> dict[str, Any]:
    """``index_id -> obj`` of the ``IndexNode`` nodes that carry an object (what ``VectorStoreIndex`` records).

    The store keeps a node as JSON, so the object (a retriever, a query engine) does not come back
    with the hit; LlamaIndex's recursive retrieval finds it by ``index_id`` in the retriever's ``object_map``.
    """
    return {n.index_id: n.obj for n in nodes or () if isinstance(n, IndexNode) and n.obj is not None}


def _default_encoder(encoder: Any) -> Any:
    """``encoder``; when it is ``None``, ``Settings.embed_model``'s encoder if that is a :class:`KLEmbedding`, else
    the package's default model (loaded, and logged)."""
    if encoder is not None:
        return encoder
    from llama_index.core import Settings

    # the private attribute: reading Settings.embed_model resolves (and loads) LlamaIndex's default, OpenAI
    embed_model = getattr(Settings, "_embed_model", None)
    if isinstance(embed_model, KLEmbedding):
        logger.info("no encoder given; using Settings.embed_model's (a KLEmbedding)")
        return embed_model.encoder
    from kl_retrievers.pretrained import load_default_model

    logger.info("no encoder given; loading the default model")
    return load_default_model()


def _embed_model_encoder(where: str, encoder: Any, embed_model: Any) -> Any:
    """``encoder``, or the :class:`KLEmbedding` given as ``embed_model`` (LlamaIndex's name for it) to ``where``.

    Raises:
        TypeError: ``embed_model`` is no :class:`KLEmbedding` (another embedding gives no Gaussians to rank by -KL).
        ValueError: Both are given, naming different encoders.
    """
    if embed_model is None:
        return encoder
    if not isinstance(embed_model, KLEmbedding):
        raise TypeError(
            f"{where}: embed_model must be a KLEmbedding (the retriever ranks by -KL between Gaussians, which "
            f"another embedding model does not give); got {type(embed_model).__name__}: pass "
            "embed_model=KLEmbedding(...), or a Gaussian encoder as encoder="
        )
    if encoder is not None and _unwrap_encoder(encoder) is not embed_model.encoder:
        raise ValueError(
            f"{where}: got both encoder= and embed_model=, with different encoders; pass one (embed_model= takes "
            "a KLEmbedding, encoder= a Gaussian encoder or a KLEmbedding)"
        )
    return embed_model


#: What to pass instead of a keyword that :class:`KLRetriever`'s constructor does not take.
_RETRIEVER_KEYWORD_HINTS = {
    "embed_model": "pass the KLEmbedding as encoder= (it takes a KLEmbedding or a Gaussian encoder), or build the "
    "retriever with KLRetriever.from_defaults(embed_model=...)",
    "min_confidence": _ABSTENTION_HINT,
}

#: The same for :class:`KLHybridRetriever`'s constructor (its store's encoder encodes the queries).
_HYBRID_RETRIEVER_KEYWORD_HINTS = {
    **dict.fromkeys(
        ("encoder", "embed_model"),
        "the store's encoder encodes the queries: build the store with it, KLHybridStore(encoder), or the retriever "
        "with KLHybridRetriever.from_defaults(store=store, embed_model=...)",
    ),
    "min_confidence": _ABSTENTION_HINT,
}


def _split_documents(
    documents: Sequence[Document], transformations: Sequence[TransformComponent] | None
) -> list[BaseNode]:
    """``documents`` run through ``transformations`` (default: ``SentenceSplitter()``), as ``from_defaults`` splits.

    Raises:
        TypeError: ``documents`` is a string, a mapping or a single ``Document`` (not in a list), or holds
            something else than LlamaIndex ``Document`` (or node) objects, e.g. plain strings.
    """
    kind = "llama_index Document objects"
    documents = _listed(documents, "documents", kind, "Document(text=...)", "documents=[document]")
    at = next((j for j, d in enumerate(documents) if not isinstance(d, BaseNode)), None)  # a None is wrong too
    if at is not None:
        wrong = documents[at]
        raise TypeError(
            f"documents must be llama_index Document objects (e.g. Document(text=...)); got a "
            f"{type(wrong).__name__} ({str(wrong)[:40]!r}): wrap each text as Document(text=text)"
        )
    from llama_index.core.ingestion import run_transformations
    from llama_index.core.node_parser import SentenceSplitter

    steps = list(transformations) if transformations is not None else [SentenceSplitter()]
    return list(run_transformations(list(documents), steps))


def _given_settings(settings: Iterable[tuple[str, Any]], show: Callable[[Any], str] = _short) -> str:
    """``", name=value"`` for each of a retriever's ``(name, value)`` settings that is not ``None`` (its ``repr``'s
    tail), each value written by ``show`` (default: a repr shortened for long containers).

    Examples:
        >>> _given_settings((("filters", None), ("node_ids", ["a"])))
        ", node_ids=['a']"
    """
    return "".join(f", {name}={show(value)}" for name, value in settings if value is not None)


def _query_texts(query_bundle: QueryBundle) -> list[str]:
    """The texts a query bundle asks to encode: its custom embedding strings, else its query string."""
    return list(query_bundle.custom_embedding_strs) if query_bundle.custom_embedding_strs else [query_bundle.query_str]


def _query_text(query_bundle: QueryBundle) -> str:
    """:func:`_query_texts` joined (blank only when each of them is): what the blank-query rule judges."""
    return " ".join(_query_texts(query_bundle))


def _encode_query_texts(encoder: Any, texts: list[str]) -> Gaussians:
    """One query Gaussian for ``texts``: the text's, or for several the moment-matched Gaussian of theirs.

    As ``VectorIndexRetriever`` embeds a query bundle (``get_agg_embedding_from_queries``: the mean of the
    texts' ``q~``, each text encoded alone), whose mean ``q~`` is that of the moment-matched Gaussian (the mean
    of the means; the mean second moment less the squared mean as the variance).
    """
    if len(texts) == 1:
        return _encode(encoder.encode_queries, texts, 1)
    vectors = np.concatenate([kl_query_vectors(_encode(encoder.encode_queries, [text], 1)) for text in texts])
    return query_gaussians_from_embeddings(vectors.mean(axis=0))


class _TopKRetriever(BaseRetriever):
    """A LlamaIndex retriever with a checked, settable ``similarity_top_k`` (shared by the two below)."""

    _similarity_top_k: int

    @property
    def similarity_top_k(self) -> int:
        """Number of nodes returned."""
        return self._similarity_top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int) -> None:
        self._similarity_top_k = _check_top_k(value)


class KLRetriever(_TopKRetriever):
    """LlamaIndex retriever over a :class:`KLVectorStore`, scored by exact ``-KL(Q || D)``.

    The query string is encoded with ``encoder``, or, when the bundle has several
    ``custom_embedding_strs`` (HyDE keeps the question beside its hypothetical answer), each of them is,
    and the moment-matched Gaussian of theirs is searched (the mean ``q~``, what
    ``get_agg_embedding_from_queries`` gives: it ranks as ``index.as_retriever()`` does over the same
    store). The bundle's ``embedding`` is searched only without an encoder (a ``q~`` from
    :class:`KLEmbedding`, else a ``ValueError``): ``QueryFusionRetriever`` shares one bundle between
    retrievers, and ``VectorIndexRetriever`` writes its own model's embedding into it, which another KL
    model of the same width could not be told apart from this one's. Nodes are ranked by ``-KL``;
    ``NodeWithScore.score`` is the store's relevance (``exp(-KL)`` by default, in ``(0, 1]``), and each
    node's metadata holds the exact ``-KL`` under ``"neg_kl"``, the query's uncertainty (mean log-variance) under
    :data:`QUERY_UNCERTAINTY_KEY` and its calibrated confidence under :data:`CONFIDENCE_KEY` (with
    :data:`CONFIDENCE_REASON_KEY` when a single node was a candidate), all excluded from the LLM and
    embedding text. These are reserved keys: a node's own metadata key of one of these names
    (``neg_kl``, ``query_uncertainty``, ``confidence``, ``confidence_reason``) is shadowed in the
    returned nodes (see :class:`KLVectorStore`). Over a ``VectorStoreIndex`` that holds ``IndexNode``
    or ``ImageNode`` nodes, ``KLRetriever.from_defaults(index=index)`` returns them with their scores,
    where ``index.as_retriever()`` swaps in LlamaIndex's docstore copies without them. A blank query
    (empty, or only whitespace and invisible characters such as a zero-width space) asks for nothing: its
    nodes carry confidence 0 and :data:`EMPTY_QUERY_REASON` (:class:`KLConfidencePostprocessor` abstains on it).
    The rule judges the text actually searched, the bundle's ``custom_embedding_strs`` when it has them, where
    the store (``index.as_retriever()``) judges ``query_str``: ``QueryBundle("  ", custom_embedding_strs=["", q])``
    gets ``q``'s confidence here and 0 from the store.

    Args:
        vector_store: The store to search.
        encoder: Gaussian encoder or :class:`KLEmbedding` (default: the store's encoder).
        similarity_top_k: Number of nodes to return (>= 1).
        filters: Metadata filters applied before ranking.
        node_ids: Restrict to these node ids.
        doc_ids: Restrict to nodes of these source documents.
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex verbosity flag.
        object_map: ``index_id -> object`` for LlamaIndex's recursive retrieval: an ``IndexNode`` hit
            whose ``index_id`` is a key is replaced by what that object (a retriever, a query
            engine, a node) returns, as in ``VectorIndexRetriever``.
        objects: ``IndexNode`` nodes carrying their objects (``BaseRetriever``'s alternative to ``object_map``).
        **unknown: Refused.

    Raises:
        TypeError: ``vector_store`` is no :class:`KLVectorStore`, or a keyword is not one of the above: the
            message names each, its closest option, every option, and for ``embed_model`` what to pass
            (``encoder=``, or :meth:`from_defaults`'s ``embed_model=``).

    Examples:
        >>> retriever = KLRetriever.from_defaults(documents=docs, similarity_top_k=3)  # doctest: +SKIP
        >>> hits = retriever.retrieve("what is KL?")  # doctest: +SKIP
        >>> [(round(n.score, 2), round(n.node.metadata["neg_kl"], 2)) for n in hits]  # doctest: +SKIP
        [(0.72, -0.33), (0.61, -0.49), (0.4, -0.92)]
    """

    def __init__(
        self,
        vector_store: KLVectorStore,
        encoder: Any | None = None,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        filters: MetadataFilters | None = None,
        node_ids: list[str] | None = None,
        doc_ids: list[str] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        object_map: dict[str, Any] | None = None,
        objects: list[IndexNode] | None = None,
        **unknown: Any,
    ) -> None:
        adapters.refuse_unknown_keywords(
            type(self).__name__, unknown, adapters.init_option_names(type(self)), _RETRIEVER_KEYWORD_HINTS
        )
        if not isinstance(vector_store, KLVectorStore):
            raise TypeError(f"vector_store must be a KLVectorStore; got {type(vector_store).__name__}")
        self._vector_store = vector_store
        # the second positional argument is encoder here, similarity_top_k in KLHybridRetriever
        hint = f" (for similarity_top_k={encoder!r}, pass it by keyword)" if is_real_number(encoder) else ""
        self._encoder = _unwrap_encoder(encoder, hint) if encoder is not None else vector_store.encoder
        self._similarity_top_k = _check_top_k(similarity_top_k)
        metadata_filters_to_predicate(filters)  # fail early on unsupported operators
        self._filters = filters
        self._node_ids = _id_restriction(node_ids, "node_ids")  # a list: a generator would restrict one query only
        self._doc_ids = _id_restriction(doc_ids, "doc_ids")
        super().__init__(callback_manager=callback_manager, object_map=object_map, objects=objects, verbose=verbose)

    @property
    def vector_store(self) -> KLVectorStore:
        """The store searched."""
        return self._vector_store

    def __repr__(self) -> str:
        """``similarity_top_k``, the store searched and the restrictions given (filters, node and document ids)."""
        extra = _given_settings((("filters", self._filters), ("node_ids", self._node_ids), ("doc_ids", self._doc_ids)))
        return f"KLRetriever(similarity_top_k={self._similarity_top_k}, vector_store={self._vector_store!r}{extra})"

    @property
    def calibrator(self) -> ConfidenceCalibrator | None:
        """The explicit confidence calibrator of the store searched (:attr:`KLVectorStore.calibrator`; ``None``:
        the query encoder's model's).

        Not settable here: the confidence comes from the store, shared by every retriever and index over it.
        Assigning raises an ``AttributeError`` that says to build the store with ``KLVectorStore(calibrator=...)``.
        """
        return self._vector_store.calibrator

    @calibrator.setter
    def calibrator(self, value: Any) -> None:
        raise AttributeError(
            f"KLRetriever.calibrator cannot be set (got {type(value).__name__}): a LlamaIndex KLRetriever's "
            "confidence comes from its vector store, whose calibrator every retriever and index over it reads. "
            "Give it to the store: KLVectorStore(calibrator=cal), or KLVectorStore.from_persist_dir(folder, "
            "calibrator=cal) for a persisted one (KLHybridRetriever's calibrator is settable: it has its own)"
        )

    @classmethod
    def from_defaults(
        cls,
        *,
        nodes: Sequence[BaseNode] | None = None,
        documents: Sequence[Document] | None = None,
        index: Any | None = None,
        vector_store: KLVectorStore | None = None,
        encoder: Any | None = None,
        transformations: Sequence[TransformComponent] | None = None,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        filters: MetadataFilters | None = None,
        embed_model: KLEmbedding | None = None,
        **kwargs: Any,
    ) -> KLRetriever:
        """Build a retriever from nodes, documents, a ``VectorStoreIndex`` or a :class:`KLVectorStore`.

        Exactly one of ``nodes``, ``documents``, ``index`` and ``vector_store`` is required.
        Documents are split with ``transformations`` (default: ``SentenceSplitter()``); nodes
        without embeddings are encoded with ``encoder``.  The encoder defaults to the store's,
        then the index's :class:`KLEmbedding`'s, then ``Settings.embed_model``'s when that is a
        :class:`KLEmbedding`, then the package's default model.  Unless
        ``object_map`` (or ``objects``) is given, the retriever resolves ``IndexNode`` hits as
        ``index.as_retriever()`` does: through the index's object map (``index=``), or the objects
        that the ``IndexNode`` nodes given as ``nodes=`` carry.

        Args:
            nodes: Nodes to index (in a new flat :class:`KLVectorStore`).
            documents: Documents to split and index.
            index: A ``VectorStoreIndex`` whose vector store is a :class:`KLVectorStore`.
            vector_store: An existing :class:`KLVectorStore`.
            encoder: Gaussian encoder or :class:`KLEmbedding`.
            transformations: Node parsers for ``documents``.
            similarity_top_k: Number of nodes to return.
            filters: Metadata filters.
            embed_model: A :class:`KLEmbedding`, LlamaIndex's name for ``encoder`` (give one of the two).
            **kwargs: Passed to :class:`KLRetriever` (``node_ids``, ``doc_ids``, ``object_map``, ...).

        Raises:
            ValueError: Not exactly one source given, or ``encoder`` and ``embed_model`` naming different encoders.
            TypeError: ``index`` does not use a :class:`KLVectorStore`, or ``embed_model`` is no :class:`KLEmbedding`.

        Examples:
            >>> KLRetriever.from_defaults(nodes=nodes, encoder=my_encoder)  # doctest: +SKIP
        """
        sources = [x is not None for x in (nodes, documents, index, vector_store)]
        if sum(sources) != 1:
            raise ValueError("from_defaults needs exactly one of nodes=, documents=, index= or vector_store=")
        if nodes is not None:  # read once: the object map and the store both need them
            nodes = _node_list(nodes, "nodes", _NODES_HINT)
        encoder = _embed_model_encoder("KLRetriever.from_defaults", encoder, embed_model)
        encoder = _unwrap_encoder(encoder) if encoder is not None else None
        if kwargs.get("object_map") is None and kwargs.get("objects") is None:
            # as VectorStoreIndex.as_retriever passes index._object_map (the index's IndexNode objects)
            found = getattr(index, "_object_map", None) if index is not None else _objects_of(nodes)
            if found:
                kwargs["object_map"] = found
        if index is not None:
            store = getattr(index, "vector_store", None)
            if not isinstance(store, KLVectorStore):
                raise TypeError(
                    f"index must use a KLVectorStore; its vector store is {type(store).__name__} "
                    "(build it with StorageContext.from_defaults(vector_store=KLVectorStore()))"
                )
            vector_store = store
            embed_model = getattr(index, "_embed_model", None)
            if encoder is None and isinstance(embed_model, KLEmbedding):
                encoder = embed_model.encoder
        if vector_store is not None and encoder is None:
            # a loaded store keeps no encoder: the model it was saved with, before the default
            encoder = vector_store.encoder if vector_store.encoder is not None else vector_store._saved_encoder()
        encoder = _default_encoder(encoder)
        if vector_store is None:
            vector_store = KLVectorStore(encoder=encoder)
            if documents is not None:
                nodes = _split_documents(documents, transformations)
            vector_store.add(_detach_objects(list(nodes or [])))  # their objects are in object_map
        return cls(vector_store, encoder=encoder, similarity_top_k=similarity_top_k, filters=filters, **kwargs)

    def _query_gaussian(self, query_bundle: QueryBundle) -> Gaussians:
        # With an encoder the text is encoded, never the bundle's embedding: QueryFusionRetriever hands one bundle
        # to every retriever, and index.as_retriever() writes its own model's embedding into it, which another KL
        # model of the same width (every bundled model is 384 wide) could not be told apart from this one's.
        if self._encoder is not None:
            return _encode_query_texts(self._encoder, _query_texts(query_bundle))
        if query_bundle.embedding is not None:
            return query_gaussians_from_embeddings(query_bundle.embedding)
        saved = self._vector_store._saved_encoder()  # a loaded store: the model it was saved with
        if saved is not None:
            self._encoder = saved
            return self._query_gaussian(query_bundle)
        if is_blank_query(_query_text(query_bundle)):
            raise ValueError(
                f"the query is empty ({_query_text(query_bundle)!r}) and KLRetriever has no encoder to encode it "
                "(LlamaIndex computes no embedding for an empty query); ask a non-empty question, or pass encoder="
            )
        raise ValueError("KLRetriever has no encoder and the query bundle has no KL query embedding")

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self._vector_store.search_gaussian(
            self._query_gaussian(query_bundle),
            similarity_top_k=self._similarity_top_k,
            filters=self._filters,
            node_ids=self._node_ids,
            doc_ids=self._doc_ids,
            encoder=self._encoder,
        )
        if is_blank_query(_query_text(query_bundle)):  # the text encoded (or embedded) for this search
            _mark_blank_query(result.nodes or [], self._vector_store._calibrated(self._encoder))
        return [
            NodeWithScore(node=node, score=score)
            for node, score in zip(result.nodes or [], result.similarities or [], strict=True)
        ]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


# --------------------------------------------------------------------------- abstention
class KLConfidencePostprocessor(BaseNodePostprocessor):
    """Drop every node of a query whose calibrated confidence is below ``min_confidence`` (abstention).

    Works in any query engine (``node_postprocessors=[KLConfidencePostprocessor(min_confidence=0.4)]``)
    after a retriever that writes the query's confidence into node metadata under
    ``confidence_key`` (:data:`CONFIDENCE_KEY`, ``"confidence"``): :class:`KLRetriever`,
    :class:`KLHybridRetriever`, or ``VectorStoreIndex.as_retriever()`` over a
    :class:`KLVectorStore`. The query's confidence is the largest one among the nodes (all nodes
    of one KL query carry the same value; a fusion of several queries keeps the best). When it is
    below ``min_confidence`` the postprocessor returns ``[]``, which LlamaIndex's response
    synthesizers answer with ``"Empty Response"`` without calling the LLM; it also logs one DEBUG line
    (DEBUG, not INFO: the line holds the query text). ``min_confidence=0`` keeps every node: no query
    is refused, the two rules below included.

    A blank query (empty, or only whitespace and invisible characters) asks for nothing: when every node
    that a KL retriever scored (one carrying ``confidence_key`` or :data:`CONFIDENCE_REASON_KEY`) carries
    :data:`EMPTY_QUERY_REASON`, the postprocessor abstains at any ``min_confidence`` above 0, logging that
    reason (nodes of several queries, some not blank, are judged by their best confidence, a blank
    query's being 0). Only when no node comes from a KL retriever is the query bundle read instead:
    the postprocessor abstains when its query string and its embedding strings are all blank.

    A query with a single candidate document (a filter that leaves one node, a one-node store) has
    no confidence: the calibrator reads the top two scores. The KL retrievers then write why under
    :data:`CONFIDENCE_REASON_KEY` (``"confidence_reason"``), and the postprocessor abstains on it
    (fail closed, as LangChain's ``min_confidence`` does), logging the reason at DEBUG. Nodes with
    neither a confidence nor that reason (another retriever, a model with no calibrator, or the
    ``IndexNode`` / ``ImageNode`` hits that ``VectorStoreIndex.as_retriever()`` swaps for its docstore's
    copies) cannot be judged: they are kept, with one logged warning per postprocessor.

    Attributes:
        min_confidence: The threshold, a probability in ``[0, 1]`` (0: keep every node).
        confidence_key: The node metadata key to read.

    Raises:
        ValueError: ``min_confidence`` is not a number in ``[0, 1]`` (naming the value and the range),
            at construction or when assigned later.

    Examples:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> nodes = [NodeWithScore(node=TextNode(text="x", metadata={"confidence": 0.2}), score=0.5)]
        >>> KLConfidencePostprocessor(min_confidence=0.3).postprocess_nodes(nodes)
        []
        >>> len(KLConfidencePostprocessor(min_confidence=0.1).postprocess_nodes(nodes))
        1
    """

    # Assigning post.min_confidence later is checked as the constructor checks it (as LlamaIndex's nodes do).
    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    min_confidence: float
    confidence_key: str = CONFIDENCE_KEY

    _warned: bool = PrivateAttr(default=False)

    @field_validator("min_confidence", mode="before")
    @classmethod
    def _valid_min_confidence(cls, value: Any) -> float:
        floor = check_min_confidence(value, allow_none=False)
        assert floor is not None
        return floor

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialisation."""
        return "KLConfidencePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes or not abstention_enabled(self.min_confidence):  # a floor of 0 refuses nothing
            return nodes
        query = query_bundle.query_str if query_bundle is not None else ""
        scored = [
            n for n in nodes if self.confidence_key in n.node.metadata or CONFIDENCE_REASON_KEY in n.node.metadata
        ]
        if scored:  # the KL retrievers judged their own query texts: their reason decides
            blank = all(n.node.metadata.get(CONFIDENCE_REASON_KEY) == EMPTY_QUERY_REASON for n in scored)
        else:  # no KL node: the query bundle (what another retriever searched or embedded)
            blank = query_bundle is not None and all(
                is_blank_query(t) for t in (query_bundle.query_str, _query_text(query_bundle))
            )
        if blank:  # a blank query asks for nothing: abstain, whatever the floor
            logger.debug("abstained on %r: %s", query[:80], EMPTY_QUERY_REASON)
            return []
        values = [n.node.metadata.get(self.confidence_key) for n in nodes]
        known = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not known:
            reason = next(
                (r for n in nodes if isinstance(r := n.node.metadata.get(CONFIDENCE_REASON_KEY), str) and r), None
            )
            if reason is not None:  # a calibrator exists but could not judge the query: fail closed
                logger.debug("abstained on %r: %s", query[:80], reason)
                return []
            if not self._warned:
                self._warned = True
                logger.warning(
                    "KLConfidencePostprocessor: no node carries %r (a retriever that does not score confidence, "
                    "a model without a calibrator, or IndexNode / ImageNode hits that VectorStoreIndex swapped for "
                    "its docstore's copies); the nodes are kept unjudged",
                    self.confidence_key,
                )
            return nodes
        confidence = max(known)
        if confidence < self.min_confidence:
            logger.debug("abstained on %r: %s", query[:80], abstention_reason(confidence, self.min_confidence))
            return []
        return nodes


# --------------------------------------------------------------------------- hybrid
_FUSION_WARNED: set[str] = set()  # the fusion modes _warn_hybrid_fusion warned about (this process)
_FUSION_WARNED_LOCK = threading.Lock()


def _hybrid_write_cancelled(store: KLHybridStore, what: str) -> bool:
    """:func:`~kl_retrievers._adapters.write_cancelled`, asked after a loaded ``store`` counted its stored texts.

    A loaded hybrid store's first write counts every stored text (seconds on a large store) before it takes its
    write lock (``KLHybridStore._ensure_tokens``); counted here first, a cancellation during the count is seen
    by the check after it, and the write changes nothing. Outside an async write the count is the one
    ``store.add`` / ``store.delete`` would make next.
    """
    if adapters.write_cancelled(what):
        return True
    store._ensure_tokens()  # no lock held meanwhile: searches go on
    return adapters.write_cancelled(what)


def _add_nodes_to_hybrid(store: KLHybridStore, nodes: Sequence[BaseNode], where: str) -> list[str]:
    """Add ``nodes`` to both halves of ``store`` as :class:`KLVectorStore` stores them; their ids in input order.

    The node JSON (:func:`_stored_metadata`, keeping the node's text) is the metadata; both halves index what
    ``VectorStoreIndex`` embeds (the EMBED content, :func:`_indexed_text`). The last occurrence of a repeated
    id wins, as in :meth:`KLVectorStore.add` (``KLHybridStore.add`` refuses repeats); objects that ``IndexNode``
    nodes carry are left out of the JSON (:func:`_detach_objects`).
    """
    node_list = _detach_objects(list(nodes))
    keep = _last_occurrences(
        [n.node_id for n in node_list], f"{where}: %d repeated node id(s); the last occurrence wins"
    )
    node_list = [node_list[i] for i in keep]
    _check_node_ids(node_list)  # before anything is encoded or serialised
    reserved = _reserved_keys_in(node_list)
    if reserved and not store._reserved_warned:
        store._reserved_warned = True  # one warning, this one (not KLHybridStore.add's too)
        _warn_reserved_keys(reserved, f"KLHybridRetriever.{where}")
    if not node_list:
        return []
    metadatas = [_stored_metadata(n, remove_text=False) for n in node_list]
    texts = [_indexed_text(m) for m in metadatas]
    ids = [n.node_id for n in node_list]
    gaussians = adapters.encode_for_write(store, texts, metadatas, ids)  # None outside a cancellable async write
    if _hybrid_write_cancelled(store, f"KLHybridRetriever.async_{where}"):  # encoded; the write lock is not taken yet
        return []
    with adapters.store_write_unless_cancelled(f"KLHybridRetriever.async_{where}") as gate:
        if not gate.go:
            return []
        if gaussians is not None:
            added = store.add(texts, gaussians=gaussians, ids=ids, metadatas=metadatas)
        else:
            added = store.add(texts, ids=ids, metadatas=metadatas)
    return added if gate.go else []  # cancelled while it waited for the store's write lock: nothing written


def _warn_hybrid_fusion(mode: str) -> None:
    """One WARNING per fusion mode: the shipped hybrid confidence judges the adaptive ranking, not ``mode``'s.

    LangChain's hybrid retriever warns so when ``min_confidence`` is used with another fusion; here the
    confidence is in every node's metadata and :class:`KLConfidencePostprocessor` abstains on it, so the
    first query of a retriever with another fusion warns.
    """
    with _FUSION_WARNED_LOCK:
        if mode in _FUSION_WARNED:
            return
        _FUSION_WARNED.add(mode)
    logger.warning(
        "KLHybridRetriever with fusion=%r: the hybrid confidence in the nodes' metadata (%r, what "
        "KLConfidencePostprocessor abstains on) is the calibrated probability that the top node of the 'adaptive' "
        "fusion's ranking is relevant (what the hybrid calibrator was fitted for), computed from the query's "
        "candidates, so it is the same whatever fusion ranks the results, and the %r ranking's top node may differ "
        "from the adaptive one's. Use fusion='adaptive' for abstention, or judge the %r ranking with a calibrator "
        "fitted for it (calibrator=)",
        mode,
        CONFIDENCE_KEY,
        mode,
        mode,
    )


class KLHybridRetriever(_TopKRetriever):
    """LlamaIndex retriever over a :class:`~kl_retrievers.hybrid.KLHybridStore`: BM25 and ``-KL`` fused per query.

    ``NodeWithScore.score`` is the fused score (its scale depends on the fusion mode, e.g. about
    ``1 / 60`` per list for RRF), so use :class:`KLConfidencePostprocessor` rather than
    ``SimilarityPostprocessor`` to cut. Both halves search the bundle's ``query_str`` only (``retrieve`` and
    ``aretrieve`` alike; LlamaIndex's ``BM25Retriever`` reads it too): its ``custom_embedding_strs`` (HyDE's) are
    not searched, where :class:`KLRetriever` searches their moment-matched Gaussian, nor is its ``embedding`` (the
    store's encoder encodes ``query_str``, as :class:`KLRetriever` with an encoder encodes its text), since BM25
    reads one text and the hybrid calibrator and adaptive fusion were fitted on the dense half's Gaussian of that
    same text; a blank ``query_str`` is a blank query. Both halves index a node's ``MetadataMode.EMBED`` content
    (what ``VectorStoreIndex`` embeds and :class:`KLRetriever` encodes: its metadata string, then its text), the
    store's document text. Nodes are stored as :class:`KLVectorStore` stores them (LlamaIndex's
    ``node_to_metadata_dict``, with the node's own text in its JSON) and come back as they went in: their text,
    class (an ``IndexNode`` stays one), relationships and own excluded metadata keys; filters see the same keys as
    :class:`KLVectorStore`'s (the node's metadata plus ``ref_doc_id`` / ``doc_id``), and
    a returned node shows the stored metadata (also after a core-API upsert that changed it). Each
    node's metadata carries what both retrievers said (:meth:`~kl_retrievers.hybrid.HybridResult.scores`):
    ``fused_score``, ``fusion``, ``neg_kl`` (the exact ``-KL``), ``bm25``, ``dense_rank`` /
    ``bm25_rank``, ``dense_weight``, the query uncertainty under :data:`QUERY_UNCERTAINTY_KEY`
    and the query's calibrated confidence under :data:`CONFIDENCE_KEY` (``None`` without a
    calibrator, or with a single candidate node: then :data:`CONFIDENCE_REASON_KEY` says so when a
    calibrator exists); these keys are kept out of the LLM and embedding text, and a node's own
    metadata key of one of these names is shadowed in the returned nodes (``from_defaults`` logs a
    warning naming it). The confidence is the
    probability that the *adaptive* ranking's top node is relevant (the same whatever ``fusion`` is), from
    the hybrid calibrator the
    model ships (``hybrid_confidence_calibration.json``, or ``hybrid_confidence_calibration.unstemmed.json``
    for a store with ``stemmer=None`` when the model ships one: dense and BM25 signals of the query's
    candidates; fitted for ``"adaptive"`` fusion with 100 candidates per half, it is the adaptive
    ranking's whatever ``fusion`` ranks the nodes: with another fusion and that calibrator, one WARNING
    per fusion mode says so at the first query); an explicit dense ``calibrator=`` gives the dense
    ranking's instead. To abstain, add
    ``KLConfidencePostprocessor(min_confidence=DEFAULT_HYBRID_MIN_CONFIDENCE)``
    (:data:`kl_retrievers.calibration.DEFAULT_HYBRID_MIN_CONFIDENCE`, the default model's, chosen on training
    data; another model's or an unstemmed store's:
    ``recommended_min_confidence(model, retriever="hybrid", stemmer=store.stemmer)``).

    Why not ``QueryFusionRetriever`` over a vector retriever and ``BM25Retriever``: the hybrid
    store keeps both halves in sync (add, upsert, delete, filters before ranking, save / load),
    scores every candidate with both retrievers, and its ``"adaptive"`` fusion chooses the dense
    weight per query from signals of both candidate lists (score statistics, BM25's coverage of the query, their
    overlap; of the shipped parameter files only the default model's stemmed one also reads the query
    uncertainty).

    Args:
        store: The hybrid store (its encoder encodes the queries; a store loaded with
            ``KLHybridStore.load(path)`` loads the model it was saved with at the first query, see
            :attr:`~kl_retrievers.hybrid.KLHybridStore.encoder`).
        similarity_top_k: Nodes per query (>= 1).
        fusion: ``"rrf"``, ``"convex"`` or ``"adaptive"`` (``None``: the store's default).
        weight: Convex dense weight in ``[0, 1]`` (``None``: the store's); for a convex retriever only
            (refused with another fusion: it would be ignored).
        normalization: ``"minmax"`` or ``"zscore"`` (``None``: the store's); as ``weight``.
        filters: LlamaIndex ``MetadataFilters`` on the stored metadata, applied to both halves before ranking.
        calibrator: A fitted ``ConfidenceCalibrator`` (kind ``"hybrid"`` or ``"dense"``) or a path
            to its JSON (default: the model's hybrid calibrator, else its dense one); settable later
            (:attr:`calibrator`).
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex verbosity flag.
        object_map: ``index_id -> object`` for LlamaIndex's recursive retrieval of ``IndexNode`` hits
            (as in :class:`KLRetriever`; :meth:`from_defaults` fills it from the ``IndexNode`` nodes
            that carry an object).
        objects: ``IndexNode`` nodes carrying their objects (``BaseRetriever``'s alternative to ``object_map``).
        **unknown: Refused.

    Raises:
        TypeError: ``store`` is not a ``KLHybridStore``, or a keyword is not one of the above: the message names
            each, its closest option, every option, and for ``encoder`` / ``embed_model`` what to do instead.
        ValueError: A bad fusion setting or ``similarity_top_k`` (naming the value and what is allowed).

    Examples:
        >>> retriever = KLHybridRetriever.from_defaults(documents=docs, similarity_top_k=3)  # doctest: +SKIP
        >>> hit = retriever.retrieve("caffeine")[0]  # doctest: +SKIP
        >>> hit.node.metadata["bm25_rank"], hit.node.metadata["confidence"]  # doctest: +SKIP
        (1, 0.71)
    """

    def __init__(
        self,
        store: KLHybridStore,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        fusion: FusionMode | None = None,
        weight: float | None = None,
        normalization: Normalization | None = None,
        filters: MetadataFilters | None = None,
        calibrator: Any = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        object_map: dict[str, Any] | None = None,
        objects: list[IndexNode] | None = None,
        **unknown: Any,
    ) -> None:
        adapters.refuse_unknown_keywords(
            type(self).__name__, unknown, adapters.init_option_names(type(self)), _HYBRID_RETRIEVER_KEYWORD_HINTS
        )
        if not isinstance(store, KLHybridStore):
            raise TypeError(f"store must be a KLHybridStore; got {type(store).__name__}")
        store.fusion.for_call(fusion, weight, normalization, what="this retriever")  # fail early
        self._store = store
        self._similarity_top_k = _check_top_k(similarity_top_k)
        self._fusion, self._weight, self._normalization = fusion, weight, normalization
        self._predicate = metadata_filters_to_predicate(filters)
        # the JSON form, where exact: the store caches the rows it allows (see _store_filter)
        where = _store_filter(filters, self._predicate)
        self._where = where if isinstance(where, dict) else None
        self._filters = filters
        self._scorer = ConfidenceScorer(calibrator, "hybrid")
        super().__init__(callback_manager=callback_manager, object_map=object_map, objects=objects, verbose=verbose)
        # documents already in the store (loaded, or added with the core API) may use a score key: once per store
        store._warn_stored_reserved_keys(
            "KLHybridRetriever (documents already stored)",
            keys=_SCORE_KEYS,
            effect=_NODE_EFFECT,
            reserved=_RESERVED_KEYS_TEXT,
            log=logger,
        )

    @property
    def store(self) -> KLHybridStore:
        """The hybrid store searched."""
        return self._store

    def __repr__(self) -> str:
        """``similarity_top_k``, the store searched and the retriever's own fusion settings (``None``: the store's)."""
        fusion = (("fusion", self._fusion), ("weight", self._weight), ("normalization", self._normalization))
        extra = _given_settings(fusion, repr) + _given_settings((("filters", self._filters),))
        return f"KLHybridRetriever(similarity_top_k={self._similarity_top_k}, store={self._store!r}{extra})"

    @property
    def calibrator(self) -> ConfidenceCalibrator | None:
        """The explicit confidence calibrator (``None``: the model's, found at the first query).

        Settable: ``retriever.calibrator = cal`` (a ``ConfidenceCalibrator``, a path to its JSON or ``None``)
        is checked as the constructor's ``calibrator=`` and used from the next query on.
        """
        return self._scorer.explicit

    @calibrator.setter
    def calibrator(self, value: Any) -> None:
        self._scorer = ConfidenceScorer(value, "hybrid")

    @classmethod
    def from_defaults(
        cls,
        *,
        nodes: Sequence[BaseNode] | None = None,
        documents: Sequence[Document] | None = None,
        store: KLHybridStore | None = None,
        encoder: Any | None = None,
        transformations: Sequence[TransformComponent] | None = None,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        fusion: FusionMode | None = None,
        filters: MetadataFilters | None = None,
        calibrator: Any = None,
        object_map: dict[str, Any] | None = None,
        embed_model: KLEmbedding | None = None,
        **store_kwargs: Any,
    ) -> KLHybridRetriever:
        """Build a hybrid retriever from nodes, documents or an existing :class:`~kl_retrievers.hybrid.KLHybridStore`.

        Exactly one of ``nodes``, ``documents`` and ``store`` is required. Documents are split
        with ``transformations`` (default: ``SentenceSplitter()``); each node is stored under its
        ``node_id`` (a repeated id: the last node wins, as in :meth:`KLVectorStore.add`) with its
        metadata and ``ref_doc_id``; both halves index its ``MetadataMode.EMBED`` content, as
        ``VectorStoreIndex`` and :meth:`KLRetriever.from_defaults` embed it (the returned node keeps its
        text). The encoder defaults to the
        store's (for ``store=KLHybridStore.load(path)``, the model it was saved with, loaded by name at
        the first query; nothing is loaded when ``encoder`` is given), then, for a new store,
        ``Settings.embed_model``'s when that is a :class:`KLEmbedding`, then the package's default model.

        Args:
            nodes: Nodes to index.
            documents: Documents to split and index.
            store: An existing hybrid store (``store_kwargs`` then do not apply, except ``weight`` and
                ``normalization``, which go to the retriever as ``fusion`` does).
            encoder: Gaussian encoder or :class:`KLEmbedding` (with ``store=``, it replaces the store's).
            transformations: Node parsers for ``documents``.
            similarity_top_k: Nodes per query.
            fusion: The new store's fusion mode (``None``: ``"adaptive"``); with ``store=``, the retriever's
                own fusion (``None``: the store's), as ``KLHybridRetriever(store, fusion=...)``.
            filters: Metadata filters.
            calibrator: Confidence calibrator (default: the model's).
            object_map: ``index_id -> object`` for recursive retrieval (default: the objects that the
                ``IndexNode`` nodes among ``nodes`` / ``documents`` carry).
            embed_model: A :class:`KLEmbedding`, LlamaIndex's name for ``encoder`` (give one of the two).
            **store_kwargs: Passed to a new :class:`~kl_retrievers.hybrid.KLHybridStore` (``weight``,
                ``candidates``, ``stemmer``...); its ``weight`` / ``normalization`` only with ``fusion="convex"``
                (the retriever fuses as the new store does). With ``store=``, ``weight`` and ``normalization``
                are the retriever's (as in ``KLHybridRetriever(store, fusion=..., weight=...)``).

        Raises:
            ValueError: Not exactly one source given, store options other than ``weight`` / ``normalization``
                with ``store=``, a bad fusion setting (also ``weight`` / ``normalization`` when the retriever
                fuses otherwise than ``"convex"``), ``node_ids`` / ``doc_ids`` (not supported: the message says
                how to restrict the search), or ``encoder`` and ``embed_model`` naming different encoders.
            TypeError: ``embed_model`` is no :class:`KLEmbedding`.
        """
        if sum(x is not None for x in (nodes, documents, store)) != 1:
            raise ValueError("from_defaults needs exactly one of nodes=, documents= or store=")
        if nodes is not None:  # read once: the store and the object map both need them
            nodes = _node_list(nodes, "nodes", _NODES_HINT)
        restrict = sorted(name for name in ("doc_ids", "node_ids") if name in store_kwargs)
        if restrict:
            raise ValueError(
                f"KLHybridRetriever.from_defaults: {' and '.join(n + '=' for n in restrict)} "
                f"{'is' if len(restrict) == 1 else 'are'} not supported (the hybrid "
                "retriever searches every stored node, the filters' matches); restrict to source documents with a "
                "filter, filters=MetadataFilters(filters=[MetadataFilter(key='ref_doc_id', value=[...], "
                "operator='in')]), or to nodes with a filter on a metadata key of theirs, or build the retriever "
                "from those nodes only (nodes=[...]); KLRetriever takes node_ids= / doc_ids="
            )
        encoder = _unwrap_encoder(_embed_model_encoder("KLHybridRetriever.from_defaults", encoder, embed_model))
        convex_only: dict[str, Any] = {
            name: store_kwargs.pop(name) for name in ("weight", "normalization") if name in store_kwargs
        }
        if store is not None:
            if store_kwargs:
                raise ValueError(f"store options {sorted(store_kwargs)} apply only when no store is passed")
            if encoder is not None:
                store.kl.encoder = encoder
            own = convex_only  # the retriever's, as fusion (checked by its constructor)
        else:
            # the new store's weight / normalization; the retriever fuses as the store does, so they are refused
            # with a fusion other than "convex" (they would be ignored), before anything is encoded
            FusionConfig().for_call(
                fusion or "adaptive",
                convex_only.get("weight"),
                convex_only.get("normalization"),
                what="this retriever",
            )
            store_kwargs.update(convex_only)
            own = {}
            encoder = _default_encoder(encoder)
            if documents is not None:
                nodes = _split_documents(documents, transformations)
            store = KLHybridStore(encoder, fusion="adaptive" if fusion is None else fusion, **store_kwargs)
            fusion = None  # the new store's: the retriever follows it
            _add_nodes_to_hybrid(store, nodes or [], "from_defaults")
        if object_map is None:
            object_map = _objects_of(nodes) or None
        return cls(
            store,
            similarity_top_k=similarity_top_k,
            fusion=fusion,
            filters=filters,
            calibrator=calibrator,
            object_map=object_map,
            **own,
        )

    # ------------------------------------------------------------------ keeping the store in sync
    def add_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        """Add (or replace, by ``node_id``) nodes in both halves of :attr:`store`, as :meth:`from_defaults` adds them.

        Each node is stored as :class:`KLVectorStore` stores it (its metadata, ``ref_doc_id`` and relationships
        in LlamaIndex's node JSON), so it comes back from a search as it went in; both halves index its
        ``MetadataMode.EMBED`` content. A repeated ``node_id`` within the call: the last node wins. An
        ``IndexNode`` carrying an object adds that object to the retriever's ``object_map``.

        Args:
            nodes: Nodes (e.g. ``SentenceSplitter().get_nodes_from_documents(documents)``); their embeddings
                are not used (the store's encoder encodes the EMBED content, as for ``from_defaults``).

        Returns:
            The ids stored, in input order (a repeated id once, at its last position).
        """
        node_list = _node_list(nodes, "nodes")
        ids = _add_nodes_to_hybrid(self._store, node_list, "add_nodes")
        objects = _objects_of(node_list)
        if objects and ids:  # none stored: a cancelled async_add_nodes
            self.object_map.update(objects)
        return ids

    def delete_ref_doc(self, ref_doc_id: str) -> list[str]:
        """Delete, from both halves of :attr:`store`, every node whose source document is ``ref_doc_id``.

        As :meth:`KLVectorStore.delete` (and ``VectorStoreIndex.delete_ref_doc``): the nodes are chosen by
        their ``ref_doc_id`` and deleted in one step of the store; an unknown ``ref_doc_id`` deletes nothing.
        Replacing a changed document is ``delete_ref_doc(doc.doc_id)`` then :meth:`add_nodes` of its new nodes.

        Returns:
            The ids of the nodes deleted.
        """
        target = str(ref_doc_id)
        if _hybrid_write_cancelled(self._store, "KLHybridRetriever.adelete_ref_doc"):
            return []
        with adapters.store_write_unless_cancelled("KLHybridRetriever.adelete_ref_doc") as gate:
            if not gate.go:
                return []
            return self._store.delete(filter=lambda m: str(_ref_doc_id(m)) == target).deleted

    async def async_add_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        """:meth:`add_nodes` in a worker thread (the event loop keeps running while the nodes are encoded).

        A cancelled call (``asyncio.wait_for``'s timeout too) writes nothing, as :meth:`KLVectorStore.async_add`:
        the worker thread finishes encoding, then stops before the store's write lock (a write that holds the
        lock already completes). The nodes are read and their ids checked here, on the caller's thread: a bad id
        fails at once, before anything is encoded.
        """
        node_list = _node_list(nodes, "nodes")
        _check_node_ids(node_list)
        return await adapters.cancellable_write(self.add_nodes, node_list)

    async def adelete_ref_doc(self, ref_doc_id: str) -> list[str]:
        """:meth:`delete_ref_doc` in a worker thread; a call cancelled before it deletes deletes nothing."""
        return await adapters.cancellable_write(self.delete_ref_doc, ref_doc_id)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        scorer = self._scorer  # read once: a calibrator assigned meanwhile applies from the next query
        hits, confidence, _ = hybrid_search(
            self._store,
            query_bundle.query_str,
            self._similarity_top_k,
            filter=self._where if self._where is not None and _json_exact(self._where) else self._predicate,
            fusion=self._fusion,
            weight=self._weight,
            normalization=self._normalization,
            scorer=scorer,
        )
        reason = None
        calibrator = scorer.calibrator(self._store.encoder, self._store.stemmer)
        if calibrator is not None and calibrator.kind == "hybrid" and scorer.explicit is None:
            # the model's hybrid calibrator judges the adaptive ranking (an explicit one may fit this fusion)
            mode = self._store.fusion.for_call(self._fusion, self._weight, self._normalization).mode
            if mode != "adaptive":
                _warn_hybrid_fusion(mode)
        calibrated = bool(hits) and calibrator is not None
        if is_blank_query(query_bundle.query_str):  # the text searched (BM25 and the encoder): confidence 0
            reason = blank_query_confidence(calibrated)[1]  # hybrid_search gave its confidence
        elif confidence is None and calibrated:
            # With a calibrator the confidence is missing only when fewer than MIN_CANDIDATES documents were
            # dense candidates, and a hit means at least one was: say so (KLConfidencePostprocessor abstains).
            reason = too_few_candidates_reason(MIN_CANDIDATES - 1)
        out = []
        for hit in hits:
            # a document added with the core API: _to_node turns its "ref_doc_id" key into its source document
            added = {**hit.scores(), QUERY_UNCERTAINTY_KEY: hit.query_uncertainty, CONFIDENCE_KEY: confidence}
            if reason is not None:
                added[CONFIDENCE_REASON_KEY] = reason
            node = _scored_node(hit.id, hit.text, hit.metadata, added, hybrid=True)
            out.append(NodeWithScore(node=node, score=hit.score))
        return out

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
