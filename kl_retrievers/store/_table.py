"""What a :class:`~kl_retrievers.store.faiss.KLStore` holds: one row per document, whatever searches it.

:class:`DocumentTable` keeps each document's float32 Gaussian, ``sum_i log var_i`` (float64, for the
exact re-scoring), its id, text and metadata, and an id -> row map. Rows are appended in insertion
order; a deleted or replaced document's row stays as a tombstone (``alive`` false) until
:meth:`DocumentTable.compact` drops every tombstone at once and renumbers the rows. A search
engine numbers its index entries by these rows, so the store compacts both together.

Every change of the rows (:meth:`DocumentTable.append`, :meth:`~DocumentTable.undo_append`,
:meth:`~DocumentTable.tombstone`, :meth:`~DocumentTable.compact`, :meth:`~DocumentTable.set_rows`,
:meth:`~DocumentTable.reset`) bumps :attr:`DocumentTable.version`. The rows a dict filter allows are
cached under ``(version, the filter's key)`` (:class:`KeyedFilter`), so a search repeating a filter
(a tenant's, say) calls no predicate until the rows change.

Examples:
    >>> import numpy as np
    >>> t = DocumentTable(2)
    >>> t.append(np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32), ["a", "b"], [None, None], [{}, {}])
    (0, [])
    >>> t.tombstone(["a", "z"]), len(t), t.n_rows
    ((['a'], ['z']), 1, 2)
    >>> t.compact().tolist(), t.n_rows, t.row["b"]
    ([0], 1, 0)
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import numpy as np

from kl_retrievers.filters import _all_immutable, _copied, _is_nested, _ReadOnlyCall
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store._base import SearchResult, StoredDocument

logger = logging.getLogger(__name__)

#: Rows whose ``sum log var`` :meth:`DocumentTable.append` computes at a time (float64 copies of one block only).
_LOG_BLOCK = 8192

#: Masks of allowed rows :meth:`DocumentTable.allowed` keeps (the most recently used; one bool per row each).
MASK_CACHE_SIZE = 8

_Method = TypeVar("_Method", bound=Callable[..., Any])


class KeyedFilter:
    """A compiled dict filter and its canonical key (:func:`~kl_retrievers.filters._filter_key`).

    Called like the predicate it holds. A :class:`DocumentTable` given one keeps the rows it allows, so
    the same filter in a later search calls no predicate while the rows are unchanged.

    Args:
        predicate: The compiled filter.
        key: Its key: two filters with one key match the same documents.

    Examples:
        >>> f = KeyedFilter(lambda m: m.get("n") == 1, '{"n":1}')
        >>> f({"n": 1}), f
        (True, KeyedFilter('{"n":1}'))
    """

    __slots__ = ("key", "predicate")

    def __init__(self, predicate: Callable[[Mapping[str, Any]], bool], key: str) -> None:
        self.predicate = predicate
        self.key = key

    def __call__(self, metadata: Mapping[str, Any]) -> bool:
        return bool(self.predicate(metadata))

    def __repr__(self) -> str:
        return f"KeyedFilter({self.key!r})"


def _changes_rows(method: _Method) -> _Method:
    """Mark a :class:`DocumentTable` method that changes rows: each call (even one that fails) bumps the version."""

    @functools.wraps(method)
    def changing(self: DocumentTable, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._changed()

    return cast(_Method, changing)


def _copy_metadata(meta: dict[str, Any], nested: bool | None = None) -> dict[str, Any]:
    """A copy of one document's metadata that shares nothing mutable with the stored dict.

    Flat metadata (the usual case) is copied shallowly; nested lists and dicts are copied level by
    level, without recursion (:func:`~kl_retrievers.filters._copied`: stored metadata is plain JSON, dicts,
    lists and scalars, and may nest as deeply as ``add`` and a saved store take it).

    Args:
        meta: The stored metadata.
        nested: :func:`~kl_retrievers.filters._is_nested` of ``meta`` when the caller knows it (a table's
            per-row flags); ``None``: found here.

    Examples:
        >>> stored = {"tags": ["a"], "lang": "en"}
        >>> out = _copy_metadata(stored)
        >>> out["tags"].append("b")
        >>> stored
        {'tags': ['a'], 'lang': 'en'}
    """
    if nested is None:  # what _is_nested says (that name computes the table's per-row flags)
        nested = not _all_immutable(map(type, meta.values()))
    return cast(dict[str, Any], _copied(meta)) if nested else dict(meta)


class DocumentTable:
    """The rows of a store: Gaussians, ids, texts, metadata, and which rows are alive.

    Args:
        k: Gaussian dimension (``0`` until known).

    Attributes:
        mean: float32 ``(n_rows, k)`` means (possibly a read-only memory map after a load).
        var: float32 ``(n_rows, k)`` variances.
        sumlogvar: float64 ``sum_i log var_i`` per row.
        alive: ``False`` for tombstones.
        row: Live id -> row number.
        compactions: How many times tombstones were dropped.
        version: Bumped by every change of the rows (the methods marked ``_changes_rows``; nothing else
            writes the arrays and lists above).
    """

    def __init__(self, k: int = 0) -> None:
        self.compactions = 0
        self.version = 0
        # (version, filter key) -> (read-only mask, allowed rows), least recently used first. Searches read
        # it concurrently (under the store's read lock), so every access holds _masks_lock.
        self._masks: OrderedDict[tuple[int, str], tuple[np.ndarray, int]] = OrderedDict()
        self._masks_lock = threading.Lock()
        self.reset(k)

    def _changed(self) -> None:
        """The rows changed: a new :attr:`version`, and no cached mask (each was for an older version)."""
        with self._masks_lock:
            self.version += 1
            self._masks.clear()

    @_changes_rows
    def reset(self, k: int) -> None:
        """Drop every row; the table now holds ``k``-dimensional Gaussians."""
        self._hold(
            np.zeros((0, k), dtype=np.float32),
            np.ones((0, k), dtype=np.float32),
            np.zeros(0, dtype=np.float64),
            np.zeros(0, dtype=bool),
        )
        self.ids: list[str] = []
        self.texts: list[str | None] = []
        self.metas: list[dict[str, Any]] = []
        self._nested: list[bool] | None = []  # see :attr:`nested`; None: not computed since a load
        self.row: dict[str, int] = {}

    @_changes_rows
    def set_rows(
        self,
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
        ids: list[str],
        texts: list[str | None],
        metas: list[dict[str, Any]],
        tombstones: np.ndarray | None = None,
    ) -> None:
        """Hold rows read from a saved store (``arrays``: mean, var, sumlogvar); alive but the ``tombstones`` rows."""
        alive = np.ones(len(ids), dtype=bool)
        if tombstones is not None:
            alive[tombstones] = False
        self._hold(*arrays, alive)
        self.ids, self.texts, self.metas = ids, texts, metas
        self._nested = None  # computed by the first callable filter (a load of flat rows does not pay for it)
        if tombstones is None:
            self.row = {doc_id: j for j, doc_id in enumerate(ids)}
        else:
            self.row = {ids[j]: j for j in np.flatnonzero(alive).tolist()}

    # ------------------------------------------------------------------ arrays
    # The four arrays are the first ``_n`` rows of buffers with spare capacity, so that appending a
    # few rows to a large table does not copy it (amortised O(1) per row; the buffers grow by a
    # quarter, so at most ~25% of the rows' memory is spare). A held array (a load's memory map,
    # a compaction's result) has no spare rows until the first append copies it into a buffer.
    def _hold(self, mean: np.ndarray, var: np.ndarray, sumlogvar: np.ndarray, alive: np.ndarray) -> None:
        self._mean, self._var, self._sumlogvar, self._alive = mean, var, sumlogvar, alive
        self._n = len(alive)

    @property
    def mean(self) -> np.ndarray:
        """float32 ``(n_rows, k)`` means (a view; read-only memory map after a load until the first change)."""
        return self._mean[: self._n]

    @property
    def var(self) -> np.ndarray:
        """float32 ``(n_rows, k)`` variances."""
        return self._var[: self._n]

    @property
    def sumlogvar(self) -> np.ndarray:
        """float64 ``sum_i log var_i`` per row."""
        return self._sumlogvar[: self._n]

    @property
    def alive(self) -> np.ndarray:
        """``False`` for tombstones (a view: writing it marks rows)."""
        return self._alive[: self._n]

    def _room_for(self, extra: int) -> None:
        """Make the buffers hold ``extra`` more rows, growing (by a quarter at least) into owned arrays."""
        need = self._n + extra
        if need <= len(self._alive) and all(a.flags.writeable for a in (self._mean, self._var, self._sumlogvar)):
            return
        cap = max(need, self._n + self._n // 4 + 16)

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.empty((cap, *a.shape[1:]), dtype=a.dtype)
            out[: self._n] = a[: self._n]
            return out

        self._mean, self._var = grown(self._mean), grown(self._var)
        self._sumlogvar, self._alive = grown(self._sumlogvar), grown(self._alive)

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self.row)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.row

    @property
    def n_rows(self) -> int:
        """Rows, tombstones included (the numbering an index uses)."""
        return len(self.ids)

    def dead(self) -> int:
        """Number of tombstones."""
        return int(self.alive.size - np.count_nonzero(self.alive))

    # -------------------------------------------------------------- rewriting
    @property
    def gaussians(self) -> Gaussians:
        """Every row's float32 Gaussian (tombstones included), without a copy."""
        return Gaussians(self.mean, self.var, validate=False)

    def doc_vectors(self, rows: np.ndarray | slice) -> np.ndarray:
        """Float64 ``d~`` of the given rows (:func:`~kl_retrievers.gaussian.kl_document_vectors`, the same values).

        Computed in place in the output and in float64 copies of the rows' means and variances (no
        other temporaries), so a block of rows costs about twice its ``d~``; callers pass blocks of rows.
        """
        m = np.asarray(self.mean[rows], dtype=np.float64)
        v = np.array(self.var[rows], dtype=np.float64)
        k = m.shape[1]
        out = np.empty((m.shape[0], 2 * k + 1))
        prec, mid = out[:, k + 1 :], out[:, 1 : k + 1]
        np.divide(1.0, v, out=prec)  # 1 / var
        np.log(v, out=v)
        np.multiply(m, m, out=mid)
        np.multiply(mid, prec, out=mid)  # mu^2 / var
        np.add(v, mid, out=v)
        np.multiply(v, -0.5, out=v)
        out[:, 0] = v.sum(axis=1)  # -1/2 sum(log var + mu^2 / var)
        np.multiply(prec, -0.5, out=mid)  # -1 / (2 var)
        np.multiply(m, prec, out=prec)  # mu / var
        return out

    # --------------------------------------------------------------- mutation
    @_changes_rows
    def append(
        self, mean: np.ndarray, var: np.ndarray, ids: list[str], texts: list[str | None], metas: list[dict[str, Any]]
    ) -> tuple[int, list[str]]:
        """Append rows (float32 means and variances); an existing id's old row becomes a tombstone.

        Returns:
            ``(first new row, the ids that replaced a live document)``.
        """
        replaced = [i for i in ids if i in self.row]
        for doc_id in replaced:
            self.alive[self.row.pop(doc_id)] = False
        start, m = len(self.ids), len(ids)
        self._room_for(m)
        self._mean[start : start + m] = mean
        self._var[start : start + m] = var
        for s in range(0, m, _LOG_BLOCK):  # in blocks: a float64 copy of a large batch would double its memory
            self._sumlogvar[start + s : start + min(m, s + _LOG_BLOCK)] = np.log(
                var[s : s + _LOG_BLOCK].astype(np.float64)
            ).sum(axis=1)
        self._alive[start : start + m] = True
        self._n = start + m
        self.ids.extend(ids)
        self.texts.extend(texts)
        self.metas.extend(metas)
        if self._nested is not None:
            self._nested.extend(_is_nested(m) for m in metas)
        for j, doc_id in enumerate(ids):
            self.row[doc_id] = start + j
        return start, replaced

    @_changes_rows
    def undo_append(self, start: int, previous: dict[str, int]) -> None:
        """Undo the last :meth:`append`, whose first new row was ``start``.

        Args:
            start: What that append returned first.
            previous: The rows the replaced ids had before it (alive again).
        """
        for doc_id in self.ids[start:]:
            self.row.pop(doc_id, None)
        del self.ids[start:], self.texts[start:], self.metas[start:]
        if self._nested is not None:
            del self._nested[start:]
        self._n = start
        for doc_id, row in previous.items():
            self.row[doc_id] = row
            self.alive[row] = True

    @_changes_rows
    def tombstone(self, ids: list[str]) -> tuple[list[str], list[str]]:
        """Mark distinct ``ids`` deleted; returns ``(deleted, missing)``."""
        deleted: list[str] = []
        missing: list[str] = []
        for doc_id in ids:
            row = self.row.pop(doc_id, None)
            if row is None:
                missing.append(doc_id)
            else:
                self.alive[row] = False
                deleted.append(doc_id)
        return deleted, missing

    @_changes_rows
    def compact(self) -> np.ndarray:
        """Drop every tombstone (rows renumbered in order); returns the dropped rows' old numbers."""
        keep = np.flatnonzero(self.alive)
        dead = np.flatnonzero(~self.alive)
        # everything new is built first, then held at once: a failure (MemoryError) leaves the table as it was
        arrays = (self.mean[keep], self.var[keep], self.sumlogvar[keep], np.ones(keep.size, dtype=bool))
        rows = keep.tolist()
        ids = [self.ids[i] for i in rows]
        texts = [self.texts[i] for i in rows]
        metas = [self.metas[i] for i in rows]
        nested = None if self._nested is None else [self._nested[i] for i in rows]
        row = {doc_id: j for j, doc_id in enumerate(ids)}
        self._hold(*arrays)
        self.ids, self.texts, self.metas, self._nested, self.row = ids, texts, metas, nested, row
        self.compactions += 1
        return dead

    # ---------------------------------------------------------------- reading
    @property
    def nested(self) -> list[bool]:
        """Per row: whether its metadata holds a list or a dict (a callable filter then reads copies of them).

        Computed for every row on first use after a load (a store searched with no callable filter never
        pays for it), then kept in step with :attr:`metas` by each change of the rows.
        """
        nested = self._nested
        if nested is None:  # two searches (read lock) may both compute it: the same list of flags
            nested = self._nested = [_is_nested(m) for m in self.metas]
        return nested

    def live_ids(self) -> list[str]:
        """Ids of the live rows, in row order."""
        return [i for i, a in zip(self.ids, self.alive, strict=True) if a]

    def allowed(self, predicate: Callable[[Mapping[str, Any]], bool] | None) -> tuple[np.ndarray | None, int]:
        """The rows a search may return: ``(mask or None for every row, how many)``.

        A :class:`KeyedFilter`'s mask is kept (read-only) for the next search with the same key, while the
        rows stay unchanged (:data:`MASK_CACHE_SIZE` of them, the most recently used): the predicate is
        then not called at all. Another predicate is called once per live row.
        """
        if predicate is None:
            if not self.alive.all():
                return self.alive, len(self.row)
            return None, len(self.row)
        key, version = None, self.version
        if isinstance(predicate, KeyedFilter):
            key = predicate.key
            hit = self._cached_mask(version, key)
            if hit is not None:
                return hit
            predicate = predicate.predicate
        rows = np.flatnonzero(self.alive)
        keep = np.array(self.judge(predicate, rows.tolist()), dtype=bool).reshape(-1)
        mask = np.zeros(self.alive.shape, dtype=bool)
        mask[rows[keep]] = True
        found = mask, int(np.count_nonzero(keep))
        if key is not None:
            mask.flags.writeable = False  # shared by the searches that find it cached
            self._keep_mask(version, key, found)
        return found

    def _cached_mask(self, version: int, key: str) -> tuple[np.ndarray, int] | None:
        """The cached ``(mask, allowed rows)`` of filter ``key`` at ``version`` (now the most recently used)."""
        with self._masks_lock:
            hit = self._masks.get((version, key))
            if hit is not None:
                self._masks.move_to_end((version, key))
            return hit

    def _keep_mask(self, version: int, key: str, found: tuple[np.ndarray, int]) -> None:
        """Cache ``found`` for filter ``key``, unless the rows changed since ``version`` (then it is stale)."""
        with self._masks_lock:
            if version != self.version:
                return
            self._masks[(version, key)] = found
            self._masks.move_to_end((version, key))
            while len(self._masks) > MASK_CACHE_SIZE:
                self._masks.popitem(last=False)

    def judge(self, predicate: Callable[[Mapping[str, Any]], bool], rows: list[int]) -> list[bool]:
        """``predicate``'s answer for each row of ``rows`` (a callable filter gets each row's read-only view).

        Always a fresh call per row: callers pass a :class:`KeyedFilter`'s ``predicate`` (only :meth:`allowed`
        reads and keeps cached masks; a delete judges the rows it removes afresh).
        """
        if isinstance(predicate, _ReadOnlyCall):  # a callable filter: each row's nestedness is known
            return predicate.rows(self.metas, self.nested, rows)
        metas = self.metas
        return [bool(predicate(metas[r])) for r in rows]

    def documents(self, ids: list[str]) -> list[StoredDocument]:
        """Stored documents for ``ids`` in order; unknown ids skipped, metadata copied."""
        out = []
        for doc_id in ids:
            row = self.row.get(doc_id)
            if row is not None:
                out.append(StoredDocument(self.ids[row], self.texts[row], self._metadata_copy(row)))
        return out

    def _metadata_copy(self, row: int) -> dict[str, Any]:
        """A copy of ``row``'s metadata (:func:`_copy_metadata`), told the row's :attr:`nested` flag when known.

        The flags are not computed here: after a load they exist only once a callable filter asked for them.
        """
        flags = self._nested
        return _copy_metadata(self.metas[row], None if flags is None else flags[row])

    def gaussians_of(self, ids: list[str]) -> Gaussians:
        """Copies of the stored Gaussians of ``ids``, in order; ``KeyError`` naming unknown ids."""
        unknown = [i for i in ids if i not in self.row]
        if unknown:
            raise KeyError(f"{len(unknown)} unknown id(s): {unknown[:5]}")
        if not ids and not self.mean.shape[1]:  # an empty store of no dimension yet: (0, 1), as Milvus gives
            return Gaussians(np.zeros((0, 1), self.mean.dtype), np.ones((0, 1), self.var.dtype), validate=False)
        rows = np.array([self.row[i] for i in ids], dtype=np.int64)
        return Gaussians(self.mean[rows].copy(), self.var[rows].copy(), validate=False)

    def results(self, rows: np.ndarray, scores: np.ndarray) -> list[list[SearchResult]]:
        """Search results for each query's ranked rows (row ``-1`` is padding and skipped)."""
        copy = self._metadata_copy
        return [
            [
                SearchResult(self.ids[r], float(s), self.texts[r], copy(r))
                for r, s in zip(rows_q.tolist(), scores_q.tolist(), strict=True)
                if r >= 0
            ]
            for rows_q, scores_q in zip(rows, scores, strict=True)
        ]
