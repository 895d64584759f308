"""Runs and qrels, and the top-k step that turns a score matrix into a run.

The lowest layer of evaluation: :mod:`kl_retrievers.evaluation` (the Gaussian models) and
:mod:`kl_retrievers.baselines` both build their runs with it, and it imports nothing from the
package.

A *run* maps each query id to ``{document id: score}`` (higher is better); *qrels* map each
query id to ``{document id: relevance grade}``.

Examples:
    >>> import numpy as np
    >>> idx, vals = top_k(np.array([[0.1, 0.9, 0.5]]), 2)
    >>> run_from_top_k(["q"], ["a", "b", "c"], idx, vals)
    {'q': {'b': 0.9, 'c': 0.5}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np

__all__ = ["Qrels", "Run", "check_unique_ids", "inner_product_run", "run_from_top_k", "tie_ranks", "top_k"]

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def tie_ranks(doc_ids: Sequence[str]) -> np.ndarray:
    """Each document's place when tied scores are broken as ``trec_eval`` breaks them: by id, descending.

    :func:`kl_retrievers.evaluation.evaluate_run` ranks tied documents of a run this way; a run cut
    at a depth must keep the same tied documents, or a deeper run scores differently at ``@depth``.

    Args:
        doc_ids: Document ids, one per corpus row.

    Returns:
        ``int64`` array, one entry per row: ``0`` for the id that wins every tie (the largest), and so on.

    Examples:
        >>> tie_ranks(["a", "c", "b"]).tolist()
        [2, 0, 1]
    """
    order = sorted(range(len(doc_ids)), key=lambda i: str(doc_ids[i]), reverse=True)
    ranks = np.empty(len(doc_ids), dtype=np.int64)
    ranks[order] = np.arange(len(doc_ids), dtype=np.int64)
    return ranks


def top_k(scores: np.ndarray, k: int, tie_rank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` of a score matrix, best first (argpartition, then a sort of ``k``).

    Args:
        scores: Shape ``(n_queries, n_docs)``; higher is better.
        k: How many to keep (clipped to ``n_docs``).
        tie_rank: Per document column, its place among tied scores (lower first; see
            :func:`tie_ranks`). With it, documents tied at the ``k``-th score are kept and ordered
            by this rank, as ``trec_eval`` orders them, so the top ``k`` is a prefix of every deeper
            top-k. Without it, which tied documents are kept is unspecified.

    Returns:
        ``(indices, values)``, each of shape ``(n_queries, min(k, n_docs))``.

    Examples:
        >>> idx, val = top_k(np.array([[0.1, 0.9, 0.5]]), 2)
        >>> idx.tolist(), val.tolist()
        ([[1, 2]], [[0.9, 0.5]])
        >>> top_k(np.array([[1.0, 1.0, 1.0]]), 2, tie_rank=tie_ranks(["a", "c", "b"]))[0].tolist()
        [[1, 2]]
    """
    n = scores.shape[1]
    k = min(k, n)
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64), np.zeros((scores.shape[0], 0), dtype=scores.dtype)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (scores.shape[0], 1))
    vals = np.take_along_axis(scores, part, axis=1)
    if tie_rank is None:
        order = np.argsort(-vals, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
    tie_rank = np.asarray(tie_rank, dtype=np.int64)
    if tie_rank.shape != (n,):
        raise ValueError(f"tie_rank has shape {tie_rank.shape}; expected ({n},), one rank per document column")
    if k < n:
        kth = vals.min(axis=1)
        at_cut = (scores == kth[:, None]).sum(axis=1) > (vals == kth[:, None]).sum(axis=1)
        for i in np.flatnonzero(at_cut):  # a tie straddles the cut: keep the tied columns that rank first
            above = np.flatnonzero(scores[i] > kth[i])
            tied = np.flatnonzero(scores[i] == kth[i])
            need = k - above.size  # 1 <= need < tied.size here; O(n) per row, not a sort
            part[i] = np.concatenate([above, tied[np.argpartition(tie_rank[tied], need - 1)[:need]]])
        vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((tie_rank[part], -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def check_unique_ids(ids: Sequence[str], what: str) -> None:
    """Refuse a repeated id: a run maps each id to one entry, so a repeat would be merged silently.

    One set pass; the first id seen again is found only when there is one.

    Args:
        ids: Query or document ids, in row order.
        what: ``"query"`` or ``"document"`` (for the message).

    Raises:
        ValueError: Naming the first id seen again and both of its rows.

    Examples:
        >>> check_unique_ids(["a", "b"], "document")
        >>> check_unique_ids(["a", "b", "a"], "document")
        Traceback (most recent call last):
        ValueError: document id 'a' is repeated (rows 0 and 2); ids must be unique, a run holds one score per id
    """
    if len(set(ids)) == len(ids):
        return
    first: dict[str, int] = {}
    for row, ident in enumerate(ids):
        if ident in first:
            raise ValueError(
                f"{what} id {str(ident)!r} is repeated (rows {first[ident]} and {row}); ids must be unique, "
                "a run holds one score per id"
            )
        first[ident] = row


def _check_str_ids(ids: Any, name: str) -> None:
    """Refuse ids a run cannot be keyed by, naming the argument: ``ids`` must be a sequence (one id per row, in
    row order) of ``str``.

    A set's order is arbitrary (its ids would be paired with rows at random) and a dict gives its keys; an id that
    is not a str (``1``, ``np.int64(1)``) would key the run by a number, which matches no qrels entry.

    Raises:
        TypeError: Naming ``name``, and the position of an id that is not a str.

    Examples:
        >>> _check_str_ids(["a", "b"], "doc_ids")
        >>> _check_str_ids(["a", 1], "doc_ids")
        Traceback (most recent call last):
        TypeError: doc_ids[1] must be a str; got int 1
    """
    if isinstance(ids, (AbstractSet, Mapping)) or not hasattr(ids, "__getitem__"):
        unordered = ", whose iteration order is arbitrary" if isinstance(ids, AbstractSet) else ""
        raise TypeError(
            f"{name} must be a sequence of str ids (a list, in row order); got a {type(ids).__name__}{unordered}"
        )
    row = next((i for i, ident in enumerate(ids) if not isinstance(ident, str)), None)
    if row is not None:
        raise TypeError(f"{name}[{row}] must be a str; got {type(ids[row]).__name__} {ids[row]!r:.80}")


def run_from_top_k(query_ids: Sequence[str], doc_ids: Sequence[str], idx: np.ndarray, vals: np.ndarray) -> Run:
    """Build a :data:`Run` from top-k indices and scores.

    Raises:
        ValueError: A repeated query or document id (:func:`check_unique_ids`): the run would
            merge them silently.

    Examples:
        >>> run_from_top_k(["q"], ["a", "b"], np.array([[1, 0]]), np.array([[2.0, 1.0]]))
        {'q': {'b': 2.0, 'a': 1.0}}
    """
    check_unique_ids(query_ids, "query")
    check_unique_ids(doc_ids, "document")
    return _run_rows(query_ids, doc_ids, idx, vals)


def _run_rows(query_ids: Sequence[str], doc_ids: Sequence[str], idx: np.ndarray, vals: np.ndarray) -> Run:
    """:func:`run_from_top_k` without the id checks (for callers that made them once)."""
    return {
        qid: {doc_ids[int(j)]: float(s) for j, s in zip(idx[i], vals[i], strict=True)}
        for i, qid in enumerate(query_ids)
    }


def inner_product_run(
    queries: np.ndarray,
    documents: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int,
    *,
    max_block_elements: int = 1 << 25,
) -> Run:
    """Exact top-``k`` of every query by inner product with the documents, in blocks of queries.

    The products are computed in the arrays' own dtype; a block holds at most ``max_block_elements``
    scores.

    Raises:
        ValueError: A repeated query or document id (:func:`check_unique_ids`), before any scoring.

    Examples:
        >>> inner_product_run(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 3.0]]), ["q"], ["a", "b"], 2)
        {'q': {'a': 2.0, 'b': 0.0}}
    """
    check_unique_ids(query_ids, "query")
    check_unique_ids(doc_ids, "document")
    run: Run = {}
    ranks = tie_ranks(doc_ids)
    block = max(1, max_block_elements // max(1, len(doc_ids)))
    for start in range(0, len(query_ids), block):
        idx, vals = top_k(queries[start : start + block] @ documents.T, k, ranks)
        run.update(_run_rows(query_ids[start : start + block], doc_ids, idx, vals))
    return run
