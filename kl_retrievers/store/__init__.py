"""Stores of documents ranked by exact ``-KL(Q || D)``: one interface, several backends.

What a store does is :class:`GaussianStore` (``add``, ``delete``, ``get_by_ids``, ``get_by_filter``,
``get_gaussians``, ``search``, ``search_batch``, ``len``, ``ids``); who serves it is the backend:

* :class:`KLStore` (:mod:`kl_retrievers.store.faiss`): in this process. What it holds (a
  :class:`~kl_retrievers.store._table.DocumentTable` of Gaussians, ids, texts and metadata, saved in
  the folder format of :mod:`kl_retrievers.store._format`) is apart from how it searches (a FAISS
  engine of :mod:`kl_retrievers.store._engines`: exact flat, or HNSW / IVF with SQ / PQ and refine).
* :class:`MilvusKLStore` (:mod:`kl_retrievers.store.milvus`): a Milvus collection, for corpora
  that outgrow one process; the same reduction of ``-KL`` to L2 as ``KLStore``'s approximate indexes.

Data flows one way: stores use :mod:`kl_retrievers.gaussian`, :mod:`kl_retrievers.filters` and the
persistence helpers, never the encoders, the evaluation or the framework adapters. Importing this
package loads neither FAISS nor pymilvus; each is imported when a store first needs it.
:mod:`kl_retrievers.index` and :mod:`kl_retrievers.milvus` are the earlier import paths of the
same classes.

Examples:
    >>> import numpy as np
    >>> from kl_retrievers.gaussian import Gaussians
    >>> store = KLStore()
    >>> _ = store.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))), ids=["a", "b", "c"])
    >>> isinstance(store, GaussianStore), len(store.search(Gaussians(np.zeros((1, 2)), np.ones((1, 2))), k=2))
    (True, 2)
"""

from __future__ import annotations

from kl_retrievers.store._base import (
    INDEX_TYPES,
    DeleteReport,
    GaussianStore,
    IndexType,
    SearchResult,
    StoredDocument,
    StoreFormatError,
)
from kl_retrievers.store._format import FORMAT_VERSION
from kl_retrievers.store.faiss import KLStore
from kl_retrievers.store.milvus import MilvusConnectionError, MilvusKLStore, to_milvus_expr

__all__ = [
    "FORMAT_VERSION",
    "INDEX_TYPES",
    "IndexType",
    "DeleteReport",
    "GaussianStore",
    "KLStore",
    "MilvusConnectionError",
    "MilvusKLStore",
    "SearchResult",
    "StoreFormatError",
    "StoredDocument",
    "to_milvus_expr",
]
