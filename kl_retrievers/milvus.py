"""``MilvusKLStore`` under its first import path: the same classes as :mod:`kl_retrievers.store.milvus`.

Examples:
    >>> from kl_retrievers.store import MilvusKLStore as Same
    >>> MilvusKLStore is Same
    True
"""

from __future__ import annotations

from kl_retrievers.store.milvus import INDEX_TYPES, METRICS, MilvusConnectionError, MilvusKLStore, to_milvus_expr

__all__ = ["MilvusKLStore", "MilvusConnectionError", "to_milvus_expr", "INDEX_TYPES", "METRICS"]
