"""``KLStore`` under its first import path: the same classes as :mod:`kl_retrievers.store`.

The store now lives in the package :mod:`kl_retrievers.store`: what it holds
(:mod:`~kl_retrievers.store._table`, :mod:`~kl_retrievers.store._format`) apart from how it searches
(:mod:`~kl_retrievers.store._engines`), with :class:`~kl_retrievers.store.faiss.KLStore` and
:class:`~kl_retrievers.store.milvus.MilvusKLStore` as siblings behind
:class:`~kl_retrievers.store.GaussianStore`. Every name below is the one object defined there, so
``from kl_retrievers.index import KLStore`` and saved store folders keep working.

Examples:
    >>> from kl_retrievers.store import KLStore as Same
    >>> KLStore is Same
    True
"""

from __future__ import annotations

from kl_retrievers.store import (
    FORMAT_VERSION,
    INDEX_TYPES,
    DeleteReport,
    GaussianStore,
    KLStore,
    SearchResult,
    StoredDocument,
    StoreFormatError,
)
from kl_retrievers.store._base import _check_k as _check_k  # an old private name, importable, not public
from kl_retrievers.store.faiss import COMPRESSIONS, REFINES

__all__ = [
    "INDEX_TYPES",
    "FORMAT_VERSION",
    "COMPRESSIONS",
    "REFINES",
    "GaussianStore",
    "KLStore",
    "SearchResult",
    "StoredDocument",
    "DeleteReport",
    "StoreFormatError",
]
