"""LlamaIndex integration: an embedding model, a vector store and a retriever scored by ``-KL(Q || D)``.

Install with ``pip install "kl-retrievers[llama-index]"``.  Three pieces:

* :class:`KLEmbedding` (a LlamaIndex ``BaseEmbedding``): a query embeds as
  ``q~ = [1, var + mu^2, mu]`` and a text (document) as
  ``d~ = [-1/2 sum(log var + mu^2 / var), -1 / (2 var), mu / var]``, so that
  ``<q~, d~> + c(q) = -KL(Q || D)`` exactly (see :mod:`kl_retrievers.gaussian`).  Only stores
  that rank by **inner product** preserve the -KL ranking with these vectors; cosine or L2
  stores silently rank something else.
* :class:`KLVectorStore` (a ``BasePydanticVectorStore``) over :class:`~kl_retrievers.index.KLStore`:
  both rewrites are exactly invertible (``var = -1 / (2 d~[1:k+1])``, ``mu = d~[k+1:] * var``;
  ``mu = q~[k+1:]``, ``var = q~[1:k+1] - mu^2``), so the store recovers every Gaussian from the
  embeddings LlamaIndex hands it and reports the exact ``-KL`` (query constant included) as
  the similarity.  Metadata filters (all LlamaIndex operators, AND / OR / NOT, nested) are
  applied before ranking.  Persistence is ``KLStore.save`` plus a small JSON manifest: no pickle.
* :class:`KLRetriever` (a ``BaseRetriever``): encodes the query string itself, returns
  ``NodeWithScore`` with ``score = -KL`` and the query's uncertainty (mean log-variance)
  under the node metadata key :data:`QUERY_UNCERTAINTY_KEY`.

Examples:
    >>> from llama_index.core import Document, StorageContext, VectorStoreIndex
    >>> from kl_retrievers.llama_index import KLEmbedding, KLVectorStore
    >>> embed = KLEmbedding()  # the default model  # doctest: +SKIP
    >>> storage = StorageContext.from_defaults(vector_store=KLVectorStore())  # doctest: +SKIP
    >>> index = VectorStoreIndex.from_documents(
    ...     [Document(text="Gaussians for retrieval")], storage_context=storage, embed_model=embed
    ... )  # doctest: +SKIP
    >>> index.as_retriever(similarity_top_k=1).retrieve("retrieval")[0].score  # -KL  # doctest: +SKIP
    -1.23
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers._io import library_version
from kl_retrievers.gaussian import (
    SCORE_DIRECTION,
    SCORE_NAME,
    Gaussians,
    check_k,
    document_gaussians_from_vectors,
    kl_document_vectors,
    kl_query_vectors,
    neg_kl_matrix,
)
from kl_retrievers.index import KLStore

_INSTALL_HINT = (
    'kl_retrievers.llama_index needs llama-index-core; install it with: pip install "kl-retrievers[llama-index]"'
)

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.callbacks.base import CallbackManager
    from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K
    from llama_index.core.schema import (
        BaseNode,
        Document,
        MetadataMode,
        NodeWithScore,
        QueryBundle,
        TextNode,
        TransformComponent,
    )
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


logger = logging.getLogger(__name__)

__all__ = [
    "QUERY_UNCERTAINTY_KEY",
    "SUPPORTED_FILTER_CONDITIONS",
    "SUPPORTED_FILTER_OPERATORS",
    "KLEmbedding",
    "KLRetriever",
    "KLVectorStore",
    "document_gaussians_from_embeddings",
    "metadata_filters_to_predicate",
    "query_gaussians_from_embeddings",
]

#: Node metadata key holding the query's uncertainty (mean log-variance) on retrieved nodes.
QUERY_UNCERTAINTY_KEY = "kl_query_uncertainty"

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

_MANIFEST_FORMAT = "kl-retrievers/llama-index-vector-store"
_MANIFEST_VERSION = 1
_STORE_SUFFIX = ".klstore"
_NAMESPACE_SEP = "__"
_DEFAULT_NAMESPACE = "default"
# Relative tolerance of the consistency check on d~[0] (float32 round trips stay far below it).
_DOC_CHECK_RTOL = 1e-4
_QUERY_CHECK_ATOL = 1e-6

# Encoders are torch modules; concurrent async calls are serialised through this lock.
_ENCODE_LOCK = threading.Lock()

Predicate = Callable[[Mapping[str, Any]], bool]


# --------------------------------------------------------------------------- inversion
def _as_2d(embeddings: Any, what: str) -> np.ndarray:
    arr = np.asarray(embeddings, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.shape[1] % 2 == 0:
        raise ValueError(
            f"{what} must have odd length 2k + 1 >= 3 (the KL inner-product rewrite); got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite; found NaN or infinite values")
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
        ValueError: Wrong length, non-finite values, non-negative precision coordinates or
            an inconsistent first coordinate.

    Examples:
        >>> import numpy as np
        >>> from kl_retrievers.gaussian import kl_document_vectors
        >>> g = Gaussians(np.array([[0.5, -1.0]]), np.array([[2.0, 0.25]]))
        >>> back = document_gaussians_from_embeddings(kl_document_vectors(g))
        >>> back.mean.tolist(), back.var.tolist()
        ([[0.5, -1.0]], [[2.0, 0.25]])
    """
    d = _as_2d(embeddings, "document embeddings")
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
        log_var = np.log(var)
        ratio = mean**2 / var
        first = -0.5 * (log_var + ratio).sum(axis=1)
        scale = 0.5 * (np.abs(log_var) + ratio).sum(axis=1) + 1.0
        bad = np.flatnonzero(np.abs(first - d[:, 0]) > _DOC_CHECK_RTOL * scale)
        if bad.size:
            raise ValueError(
                f"{bad.size} document embedding(s) (first at position {int(bad[0])}) are not KL document "
                "vectors: the first coordinate does not match -1/2 sum(log var + mu^2 / var); "
                "embed documents with KLEmbedding"
            )
    return Gaussians(mean, var)


def query_gaussians_from_embeddings(embeddings: Any) -> Gaussians:
    """Recover query Gaussians from ``q~ = [1, var + mu^2, mu]`` (the inverse of ``kl_query_vectors``).

    ``mu = q~[k+1:]`` and ``var = q~[1:k+1] - mu^2``: exact up to float64 rounding for the
    float64 vectors :class:`KLEmbedding` returns.

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
            "vector or lost precision (keep it in float64)"
        )
    return Gaussians(mean, var)


# ----------------------------------------------------------------------------- filters
def _enum_value(x: Any) -> str:
    return str(x.value if isinstance(x, Enum) else x)


def _as_values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _safe(fn: Callable[[], Any]) -> bool:
    try:
        return bool(fn())
    except TypeError:
        return False


def _compile_one(f: MetadataFilter) -> Predicate:
    op = _enum_value(f.operator)
    if op not in SUPPORTED_FILTER_OPERATORS:
        raise ValueError(
            f"unsupported filter operator {op!r} on key {f.key!r}; "
            f"supported operators are: {', '.join(SUPPORTED_FILTER_OPERATORS)}"
        )
    key, ref = f.key, f.value

    def empty(v: Any) -> bool:
        return v is None or v == "" or (isinstance(v, (list, tuple)) and len(v) == 0)

    def test(v: Any) -> bool:
        if op == "is_empty":
            return empty(v)
        if v is None:  # a missing field only satisfies "!=" and "nin"
            return op in ("!=", "nin")
        if op == "==":
            return bool(v == ref)
        if op == "!=":
            return bool(v != ref)
        if op == ">":
            return _safe(lambda: v > ref)
        if op == ">=":
            return _safe(lambda: v >= ref)
        if op == "<":
            return _safe(lambda: v < ref)
        if op == "<=":
            return _safe(lambda: v <= ref)
        if op == "in":
            return any(v == x for x in _as_values(ref))
        if op == "nin":
            return all(v != x for x in _as_values(ref))
        if op == "contains":
            return _safe(lambda: ref in v)
        if op in ("text_match", "text_match_insensitive"):
            if not (isinstance(v, str) and isinstance(ref, str)):
                return False
            return ref in v if op == "text_match" else ref.lower() in v.lower()
        have = _as_values(v)
        wanted = _as_values(ref)
        if op == "any":
            return any(w in have for w in wanted)
        return all(w in have for w in wanted)  # "all"

    return lambda m: test(m.get(key))


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
    if condition == "and":
        return lambda m: all(p(m) for p in parts)
    if condition == "or":
        return lambda m: any(p(m) for p in parts) if parts else True
    return lambda m: not any(p(m) for p in parts)  # "not": none of the filters matches


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
            :data:`SUPPORTED_FILTER_CONDITIONS` (the message lists them).

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


def _and(*preds: Predicate | None) -> Predicate | None:
    active = [p for p in preds if p is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda m: all(p(m) for p in active)


def _check_top_k(k: Any) -> int:
    return check_k(k, "similarity_top_k")


def _unwrap_encoder(encoder: Any) -> Any:
    if isinstance(encoder, KLEmbedding):
        return encoder.encoder
    return encoder


def _encode(fn: Callable[..., Gaussians], texts: list[str], batch_size: int) -> Gaussians:
    with _ENCODE_LOCK:
        g = fn(texts, batch_size=max(1, batch_size), show_progress_bar=False)
    return g.numpy().astype(np.float64)


# --------------------------------------------------------------------------- embedding
class KLEmbedding(BaseEmbedding):
    """LlamaIndex embedding model giving the exact inner-product rewrite of ``-KL(Q || D)``.

    Queries embed as ``q~`` and texts (documents) as ``d~``, both ``2k + 1``-dimensional
    float64 lists, so ``<q~, d~> + c(q) = -KL``.  Use them only with stores that rank by
    **inner product** (:class:`KLVectorStore`, or a third-party store configured for dot
    product); cosine / L2 stores do not preserve the -KL ranking.  Averaging query
    embeddings (``get_agg_embedding_from_queries``) gives the ``q~`` of the moment-matched
    Gaussian of the queries, which is still a valid query vector.

    Args:
        encoder: A :class:`~kl_retrievers.encoder.GaussianEncoder` (or anything with
            ``encode_queries`` / ``encode_documents``), a model name / path for
            :func:`~kl_retrievers.pretrained.load_model`, or ``None`` for the default model.
        embed_batch_size: Texts encoded per encoder call (each batch is one call).
        callback_manager: LlamaIndex callback manager.
        backend: When ``encoder`` is a name, a path or ``None``: ``"torch"`` or ``"onnx"`` (ONNX
            Runtime with int8 weights, see :func:`~kl_retrievers.pretrained.load_model`).
        **kwargs: Other ``BaseEmbedding`` fields (``num_workers``, ...).

    Examples:
        >>> embed = KLEmbedding()  # doctest: +SKIP
        >>> len(embed.get_query_embedding("hello")) == 2 * embed.encoder.config.dim + 1  # doctest: +SKIP
        True
    """

    _encoder: Any = PrivateAttr()

    def __init__(
        self,
        encoder: Any | str | None = None,
        embed_batch_size: int = 32,
        callback_manager: CallbackManager | None = None,
        backend: str = "torch",
        **kwargs: Any,
    ) -> None:
        if encoder is None or isinstance(encoder, (str, os.PathLike)):
            from kl_retrievers.pretrained import load_model

            encoder = load_model(None if encoder is None else str(encoder), backend=backend)
        if not (hasattr(encoder, "encode_queries") and hasattr(encoder, "encode_documents")):
            raise TypeError(
                f"encoder must have encode_queries / encode_documents (a GaussianEncoder); got {type(encoder).__name__}"
            )
        kwargs.setdefault("model_name", str(getattr(encoder, "name_or_path", type(encoder).__name__)))
        super().__init__(
            embed_batch_size=embed_batch_size, callback_manager=callback_manager or CallbackManager(), **kwargs
        )
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialisation."""
        return "KLEmbedding"

    @property
    def encoder(self) -> Any:
        """The wrapped Gaussian encoder."""
        return self._encoder

    def query_gaussians(self, queries: list[str]) -> Gaussians:
        """Encode queries as float64 Gaussians (one encoder call)."""
        return _encode(self._encoder.encode_queries, list(queries), self.embed_batch_size)

    def document_gaussians(self, texts: list[str]) -> Gaussians:
        """Encode documents as float64 Gaussians (one encoder call)."""
        return _encode(self._encoder.encode_documents, list(texts), self.embed_batch_size)

    def _get_query_embedding(self, query: str) -> Embedding:
        return [float(x) for x in kl_query_vectors(self.query_gaussians([query]))[0]]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        vectors = kl_document_vectors(self.document_gaussians(texts))
        return [[float(x) for x in row] for row in vectors]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


# ------------------------------------------------------------------------ vector store
def _node_text(node: BaseNode) -> str | None:
    try:
        return node.get_content(metadata_mode=MetadataMode.NONE)
    except (AttributeError, NotImplementedError, ValueError):
        return None


def _to_node(doc_id: str, text: str | None, metadata: Mapping[str, Any]) -> BaseNode:
    if "_node_content" in metadata:
        return metadata_dict_to_node(dict(metadata), text=text)
    # A plain KLStore document (added with the core API): a TextNode with its metadata.
    return TextNode(id_=doc_id, text=text or "", metadata=dict(metadata))


def _ref_doc_id(metadata: Mapping[str, Any]) -> Any:
    return metadata.get("ref_doc_id", metadata.get("doc_id"))


def _manifest_and_store_paths(persist_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    path = Path(persist_path)
    store_dir = path.with_suffix(_STORE_SUFFIX) if path.suffix == ".json" else Path(str(path) + _STORE_SUFFIX)
    return path, store_dir


def _check_fs(fs: Any) -> None:
    if fs is None:
        return
    protocol = getattr(fs, "protocol", "file")
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if not {"file", "local"} & set(protocols):
        raise NotImplementedError(f"KLVectorStore persists to the local filesystem only; got fs protocol {protocol!r}")


class KLVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store ranked by exact ``-KL(Q || D)``, backed by a :class:`KLStore`.

    Nodes carry ``d~`` embeddings from :class:`KLEmbedding`; the store recovers each
    document Gaussian from ``d~`` exactly (see :func:`document_gaussians_from_embeddings`),
    so it needs no encoder.  With an ``encoder`` it can also embed nodes that have no
    embedding (their ``MetadataMode.EMBED`` content, as ``VectorStoreIndex`` would) and answer
    queries given only ``query_str``.  Similarities are the exact ``-KL`` (higher is better).

    Each node is stored under its ``node_id`` (re-adding an id replaces it) with its text
    and, as metadata, LlamaIndex's ``node_to_metadata_dict`` (user metadata at the top
    level, the node JSON under ``_node_content``, ``ref_doc_id`` / ``doc_id``).

    Args:
        store: An existing :class:`KLStore` to wrap (a fresh flat one by default).
        encoder: Optional Gaussian encoder or :class:`KLEmbedding` (see above).
        **store_kwargs: Passed to :class:`KLStore` when ``store`` is ``None``
            (``index_type="hnsw"``, ...).

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
        >>> res.ids, [round(s, 6) + 0.0 for s in res.similarities]
        (['n0', 'n1'], [0.0, -4.5])
    """

    stores_text: bool = True
    flat_metadata: bool = False

    _store: KLStore = PrivateAttr()

    def __init__(self, store: KLStore | None = None, *, encoder: Any | None = None, **store_kwargs: Any) -> None:
        super().__init__(stores_text=True)
        encoder = _unwrap_encoder(encoder)
        if store is None:
            store = KLStore(encoder=encoder, **store_kwargs)
        else:
            if not isinstance(store, KLStore):
                raise TypeError(f"store must be a KLStore; got {type(store).__name__}")
            if store_kwargs:
                raise ValueError(f"store options {sorted(store_kwargs)} apply only when no store is passed")
            if encoder is not None:
                store.encoder = encoder
        self._store = store

    @classmethod
    def class_name(cls) -> str:
        """Name used in LlamaIndex serialisation."""
        return "KLVectorStore"

    @property
    def client(self) -> KLStore:
        """The underlying :class:`KLStore`."""
        return self._store

    @property
    def kl_store(self) -> KLStore:
        """The underlying :class:`KLStore` (same as :attr:`client`)."""
        return self._store

    @property
    def encoder(self) -> Any:
        """The store's encoder (``None`` when it only takes embeddings)."""
        return self._store.encoder

    # ------------------------------------------------------------------ writing
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Add (or replace, by ``node_id``) nodes; returns their ids in input order.

        Args:
            nodes: Nodes with ``d~`` embeddings (from :class:`KLEmbedding`); nodes without an
                embedding are encoded when the store has an encoder.  Inputs are not modified.
            **add_kwargs: Ignored (LlamaIndex API).

        Raises:
            ValueError: A node without an embedding and no encoder, an embedding that is
                not a KL document vector, or a dimension different from the store's.
        """
        nodes = list(nodes)
        if not nodes:
            return []
        missing = [i for i, n in enumerate(nodes) if n.embedding is None]
        if missing and self.encoder is None:
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
            g = document_gaussians_from_embeddings([nodes[i].embedding for i in with_embedding])
            k = g.dim if k is None else k
            if g.dim != k:
                raise ValueError(f"node embeddings have k={g.dim} (length {2 * g.dim + 1}); this store has k={k}")
            mean = np.zeros((len(nodes), k))
            var = np.ones((len(nodes), k))
            mean[with_embedding], var[with_embedding] = g.mean, g.var
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
        ids = [n.node_id for n in nodes]
        # The last occurrence of a repeated id wins (upsert semantics within one call too).
        last = {node_id: i for i, node_id in enumerate(ids)}
        keep = sorted(last.values())
        if len(keep) < len(ids):
            logger.warning("add: %d repeated node id(s) in one call; the last occurrence wins", len(ids) - len(keep))
        self._store.add(
            [_node_text(nodes[i]) or "" for i in keep],
            gaussians=Gaussians(mean[keep], var[keep]),
            ids=[ids[i] for i in keep],
            metadatas=[
                node_to_metadata_dict(nodes[i], remove_text=True, flat_metadata=self.flat_metadata) for i in keep
            ],
        )
        return ids

    def _matching_ids(self, node_ids: Sequence[str] | None, predicate: Predicate | None) -> list[str]:
        candidates = self._store.ids if node_ids is None else [str(i) for i in dict.fromkeys(node_ids)]
        docs = self._store.get_by_ids(candidates)
        if predicate is None:
            return [d.id for d in docs]
        return [d.id for d in docs if predicate(d.metadata)]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose ``ref_doc_id`` (source document) is ``ref_doc_id``; unknown ids are a no-op."""
        target = str(ref_doc_id)
        ids = self._matching_ids(None, lambda m: str(_ref_doc_id(m)) == target)
        if ids:
            self._store.delete(ids)

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes by id and / or metadata filter (both: nodes matching both); missing ids are ignored.

        Raises:
            ValueError: Neither ``node_ids`` nor ``filters`` given (use :meth:`clear`).
        """
        if node_ids is None and filters is None:
            raise ValueError("delete_nodes needs node_ids and/or filters; call clear() to delete every node")
        ids = self._matching_ids(node_ids, metadata_filters_to_predicate(filters))
        if ids:
            self._store.delete(ids)

    def clear(self) -> None:
        """Delete every node (the store's settings and dimension are kept)."""
        ids = self._store.ids
        if ids:
            self._store.delete(ids)

    # ------------------------------------------------------------------ reading
    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """Stored nodes by id (in the given order; unknown ids skipped) and / or filter.

        Returned nodes carry ``d~`` embeddings recomputed from the stored float32 Gaussians.
        """
        predicate = metadata_filters_to_predicate(filters)
        candidates = self._store.ids if node_ids is None else [str(i) for i in node_ids]
        docs = [d for d in self._store.get_by_ids(candidates) if predicate is None or predicate(d.metadata)]
        if not docs:
            return []
        vectors = kl_document_vectors(self._store.get_gaussians([d.id for d in docs]).astype(np.float64))
        out = []
        for d, vec in zip(docs, vectors, strict=True):
            node = _to_node(d.id, d.text, d.metadata)
            node.embedding = [float(x) for x in vec]
            out.append(node)
        return out

    def _query_gaussian(self, query: VectorStoreQuery) -> Gaussians:
        if query.query_embedding is not None:
            return query_gaussians_from_embeddings(query.query_embedding)
        if query.query_str is not None and self.encoder is not None:
            return _encode(self.encoder.encode_queries, [query.query_str], 1)
        raise ValueError(
            "the query has no embedding; pass a KLEmbedding query embedding, or give the store an encoder "
            "(KLVectorStore(encoder=...)) and a query_str"
        )

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top ``similarity_top_k`` nodes by exact ``-KL``, after ``node_ids`` / ``doc_ids`` / ``filters``.

        Raises:
            ValueError: ``similarity_top_k < 1``, a query mode other than ``default``, an
                unsupported filter operator, or a query embedding that is not a KL query vector.
        """
        mode = _enum_value(query.mode)
        if mode != VectorStoreQueryMode.DEFAULT.value:
            raise ValueError(f"KLVectorStore supports only the 'default' query mode; got {mode!r}")
        return self.search_gaussian(
            self._query_gaussian(query),
            similarity_top_k=query.similarity_top_k,
            filters=query.filters,
            node_ids=query.node_ids,
            doc_ids=query.doc_ids,
        )

    def search_gaussian(
        self,
        query: Gaussians,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        filters: MetadataFilters | None = None,
        node_ids: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> VectorStoreQueryResult:
        """Rank the nodes for one query Gaussian by exact ``-KL`` (the engine behind :meth:`query`).

        Args:
            query: One query Gaussian.
            similarity_top_k: Number of nodes (>= 1).
            filters: LlamaIndex metadata filters, applied before ranking.
            node_ids: Restrict to these node ids (an empty list: no restriction, as
                ``VectorStoreIndex.as_retriever`` passes one).
            doc_ids: Restrict to nodes of these source documents (``ref_doc_id``; empty: none).

        Returns:
            ``VectorStoreQueryResult`` with nodes, ids and ``similarities`` = -KL (best first);
            each node's metadata holds the query uncertainty under :data:`QUERY_UNCERTAINTY_KEY`.

        Examples:
            >>> import numpy as np
            >>> KLVectorStore().search_gaussian(Gaussians(np.zeros(2), np.ones(2))).ids
            []
        """
        k = _check_top_k(similarity_top_k)
        # VectorStoreIndex.as_retriever passes node_ids=[] for stores that keep the text
        # (its index struct lists no nodes): an empty list means "no restriction".
        node_ids = node_ids or None
        doc_ids = doc_ids or None
        if len(query) != 1:
            raise ValueError(f"search_gaussian takes one query Gaussian; got {len(query)}")
        predicate = metadata_filters_to_predicate(filters)
        if doc_ids is not None:
            wanted = {str(d) for d in doc_ids}
            predicate = _and(predicate, lambda m: str(_ref_doc_id(m)) in wanted)
        if node_ids is not None:
            ids, scores, texts, metas = self._search_among(query, k, node_ids, predicate)
        else:
            hits = self._store.search(query, k=k, filter=predicate)
            ids = [h.id for h in hits]
            scores = [float(h.score) for h in hits]
            texts = [h.text for h in hits]
            metas = [h.metadata for h in hits]
        uncertainty = float(query.numpy().uncertainty()[0])
        nodes = []
        for doc_id, text, meta in zip(ids, texts, metas, strict=True):
            node = _to_node(doc_id, text, meta)
            node.metadata[QUERY_UNCERTAINTY_KEY] = uncertainty
            for excluded in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                if QUERY_UNCERTAINTY_KEY not in excluded:
                    excluded.append(QUERY_UNCERTAINTY_KEY)
            nodes.append(node)
        return VectorStoreQueryResult(nodes=nodes, similarities=scores, ids=ids)

    def _search_among(
        self, query: Gaussians, k: int, node_ids: Sequence[str], predicate: Predicate | None
    ) -> tuple[list[str], list[float], list[str | None], list[dict[str, Any]]]:
        """Exact -KL over an explicit set of node ids (float64, like KLStore's re-scoring)."""
        docs = self._store.get_by_ids([str(i) for i in dict.fromkeys(node_ids)])
        if predicate is not None:
            docs = [d for d in docs if predicate(d.metadata)]
        if not docs:
            return [], [], [], []
        g = self._store.get_gaussians([d.id for d in docs]).astype(np.float64)
        scores = neg_kl_matrix(query.numpy().astype(np.float64), g)[0]
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
        suffix ``.klstore``.  Both are written atomically; persisting again overwrites them.

        Raises:
            NotImplementedError: ``fs`` is not a local filesystem.
        """
        _check_fs(fs)
        manifest_path, store_dir = _manifest_and_store_paths(persist_path)
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        self._store.save(store_dir)
        manifest = {
            "format": _MANIFEST_FORMAT,
            "format_version": _MANIFEST_VERSION,
            "store": store_dir.name,
            "score_name": SCORE_NAME,
            "score_direction": SCORE_DIRECTION,
            "flat_metadata": self.flat_metadata,
            "library_version": library_version(),
        }
        tmp = manifest_path.with_name(f".{manifest_path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, manifest_path)
        logger.info("persisted %d nodes to %s (+ %s)", len(self._store), manifest_path, store_dir.name)

    @classmethod
    def from_persist_path(
        cls,
        persist_path: str | os.PathLike[str],
        fs: Any | None = None,
        *,
        encoder: Any | None = None,
        mmap: bool = False,
    ) -> KLVectorStore:
        """Load a store written by :meth:`persist` (``persist_path`` = the manifest, or a KLStore folder).

        Args:
            persist_path: The manifest path given to :meth:`persist`, or a ``KLStore`` folder.
            fs: Must be ``None`` or a local filesystem.
            encoder: Optional encoder (see the class docstring).
            mmap: Memory-map the saved arrays (see :meth:`KLStore.load`).

        Raises:
            FileNotFoundError: Nothing at ``persist_path``.
            ValueError: The manifest is not a KLVectorStore manifest (or the store is corrupted).
        """
        _check_fs(fs)
        encoder = _unwrap_encoder(encoder)
        path = Path(persist_path)
        if path.is_dir():
            return cls(KLStore.load(path, encoder=encoder, mmap=mmap))
        if not path.is_file():
            raise FileNotFoundError(f"no KLVectorStore at {path}")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a KLVectorStore manifest: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
            raise ValueError(f"{path} is not a KLVectorStore manifest")
        if manifest.get("format_version") != _MANIFEST_VERSION:
            raise ValueError(f"unsupported KLVectorStore manifest version {manifest.get('format_version')!r}")
        name = str(manifest.get("store", ""))
        if not name or Path(name).name != name:
            raise ValueError(f"{path} names an invalid store folder {name!r}")
        vs = cls(KLStore.load(path.parent / name, encoder=encoder, mmap=mmap))
        vs.flat_metadata = bool(manifest.get("flat_metadata", False))
        return vs

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str] = DEFAULT_PERSIST_DIR,
        namespace: str = _DEFAULT_NAMESPACE,
        fs: Any | None = None,
        *,
        encoder: Any | None = None,
        mmap: bool = False,
    ) -> KLVectorStore:
        """Load the store that ``StorageContext.persist(persist_dir)`` wrote (``<namespace>__vector_store.json``).

        Examples:
            >>> KLVectorStore.from_persist_dir("./storage")  # doctest: +SKIP
        """
        fname = f"{namespace}{_NAMESPACE_SEP}{DEFAULT_PERSIST_FNAME}"
        return cls.from_persist_path(Path(persist_dir) / fname, fs=fs, encoder=encoder, mmap=mmap)


# --------------------------------------------------------------------------- retriever
class KLRetriever(BaseRetriever):
    """LlamaIndex retriever over a :class:`KLVectorStore`, scored by exact ``-KL(Q || D)``.

    The query string is encoded with ``encoder`` (or, without one, the query bundle's
    ``q~`` embedding is inverted).  ``NodeWithScore.score`` is the ``-KL`` (higher is better)
    and each node's metadata holds the query's uncertainty (mean log-variance) under
    :data:`QUERY_UNCERTAINTY_KEY` (excluded from the LLM and embedding text).

    Args:
        vector_store: The store to search.
        encoder: Gaussian encoder or :class:`KLEmbedding` (default: the store's encoder).
        similarity_top_k: Number of nodes to return (>= 1).
        filters: Metadata filters applied before ranking.
        node_ids: Restrict to these node ids.
        doc_ids: Restrict to nodes of these source documents.
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex verbosity flag.

    Examples:
        >>> retriever = KLRetriever.from_defaults(documents=docs, similarity_top_k=3)  # doctest: +SKIP
        >>> [n.score for n in retriever.retrieve("what is KL?")]  # doctest: +SKIP
        [-12.1, -13.4, -15.0]
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
    ) -> None:
        if not isinstance(vector_store, KLVectorStore):
            raise TypeError(f"vector_store must be a KLVectorStore; got {type(vector_store).__name__}")
        self._vector_store = vector_store
        self._encoder = _unwrap_encoder(encoder) if encoder is not None else vector_store.encoder
        self._similarity_top_k = _check_top_k(similarity_top_k)
        metadata_filters_to_predicate(filters)  # fail early on unsupported operators
        self._filters = filters
        self._node_ids = node_ids
        self._doc_ids = doc_ids
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def vector_store(self) -> KLVectorStore:
        """The store searched."""
        return self._vector_store

    @property
    def similarity_top_k(self) -> int:
        """Number of nodes returned."""
        return self._similarity_top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int) -> None:
        self._similarity_top_k = _check_top_k(value)

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
        **kwargs: Any,
    ) -> KLRetriever:
        """Build a retriever from nodes, documents, a ``VectorStoreIndex`` or a :class:`KLVectorStore`.

        Exactly one of ``nodes``, ``documents``, ``index`` and ``vector_store`` is required.
        Documents are split with ``transformations`` (default: ``SentenceSplitter()``); nodes
        without embeddings are encoded with ``encoder``.  The encoder defaults to the store's,
        then the index's :class:`KLEmbedding`'s, then the package's default model.

        Args:
            nodes: Nodes to index (in a new flat :class:`KLVectorStore`).
            documents: Documents to split and index.
            index: A ``VectorStoreIndex`` whose vector store is a :class:`KLVectorStore`.
            vector_store: An existing :class:`KLVectorStore`.
            encoder: Gaussian encoder or :class:`KLEmbedding`.
            transformations: Node parsers for ``documents``.
            similarity_top_k: Number of nodes to return.
            filters: Metadata filters.
            **kwargs: Passed to :class:`KLRetriever` (``node_ids``, ``doc_ids``, ...).

        Raises:
            ValueError: Not exactly one source given.
            TypeError: ``index`` does not use a :class:`KLVectorStore`.

        Examples:
            >>> KLRetriever.from_defaults(nodes=nodes, encoder=my_encoder)  # doctest: +SKIP
        """
        sources = [x is not None for x in (nodes, documents, index, vector_store)]
        if sum(sources) != 1:
            raise ValueError("from_defaults needs exactly one of nodes=, documents=, index= or vector_store=")
        encoder = _unwrap_encoder(encoder) if encoder is not None else None
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
        if vector_store is not None:
            encoder = encoder if encoder is not None else vector_store.encoder
        if encoder is None:
            from kl_retrievers.pretrained import load_default_model

            logger.info("no encoder given; loading the default model")
            encoder = load_default_model()
        if vector_store is None:
            vector_store = KLVectorStore(encoder=encoder)
            if documents is not None:
                from llama_index.core.ingestion import run_transformations
                from llama_index.core.node_parser import SentenceSplitter

                steps = list(transformations) if transformations is not None else [SentenceSplitter()]
                nodes = list(run_transformations(list(documents), steps))
            vector_store.add(list(nodes or []))
        return cls(vector_store, encoder=encoder, similarity_top_k=similarity_top_k, filters=filters, **kwargs)

    def _query_gaussian(self, query_bundle: QueryBundle) -> Gaussians:
        if self._encoder is not None:
            text = (
                " ".join(query_bundle.embedding_strs) if query_bundle.custom_embedding_strs else query_bundle.query_str
            )
            return _encode(self._encoder.encode_queries, [text], 1)
        if query_bundle.embedding is not None:
            return query_gaussians_from_embeddings(query_bundle.embedding)
        raise ValueError("KLRetriever has no encoder and the query bundle has no KL query embedding")

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self._vector_store.search_gaussian(
            self._query_gaussian(query_bundle),
            similarity_top_k=self._similarity_top_k,
            filters=self._filters,
            node_ids=self._node_ids,
            doc_ids=self._doc_ids,
        )
        return [
            NodeWithScore(node=node, score=score)
            for node, score in zip(result.nodes or [], result.similarities or [], strict=True)
        ]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
