"""bm25s' logger, quieted where bm25s left it at its own import default; bm25s' Lucene BM25 index from term counts.

bm25s sets its logger (``logging.getLogger("bm25s")``) to ``DEBUG`` when it is imported, so that its index
building logs at every BM25 index this library builds with it (:mod:`kl_retrievers.baselines`,
:func:`kl_retrievers.training.data.mine_bm25_negatives`).
:func:`quiet_bm25s_logger` sets it to ``WARNING`` only while it is still at that default: a level a user set
on the ``bm25s`` logger after importing bm25s (``INFO``, ``ERROR``...) is kept (``DEBUG`` itself cannot be
told from bm25s' default).

:func:`lucene_index` computes the index ``bm25s.BM25(method="lucene").index`` builds (its ``data``,
``indices`` and ``indptr`` arrays, the same float32 weights) from each document's term counts in a few
vectorised passes (numpy, then scipy's sparse transpose where installed), where bm25s counts every token in Python:
:class:`kl_retrievers.hybrid.KLHybridStore` keeps its documents' counts and rebuilds its BM25 half with it
after every change.

Examples:
    >>> import logging
    >>> quiet_bm25s_logger()  # doctest: +SKIP
    >>> logging.getLogger("bm25s").level  # doctest: +SKIP
    30
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["BM25S_LOGGER", "lucene_index", "quiet_bm25s_logger"]

#: The logger bm25s logs to, and sets to ``DEBUG`` at its import.
BM25S_LOGGER = "bm25s"


def quiet_bm25s_logger() -> None:
    """Set bm25s' logger to ``WARNING`` when its level is still bm25s' import default (``DEBUG``).

    Imports bm25s first (a no-op once imported), so that its import cannot set ``DEBUG`` again afterwards; a
    level set on the logger since then is left as it is.

    Raises:
        ModuleNotFoundError: bm25s is not installed (callers check their extra first).
    """
    import bm25s  # noqa: F401  # its import sets the logger to DEBUG: that must happen before the check

    bm25s_logger = logging.getLogger(BM25S_LOGGER)
    if bm25s_logger.level == logging.DEBUG:  # bm25s' own setting: it would log every index build
        bm25s_logger.setLevel(logging.WARNING)


def _scalar_sum_dtype() -> np.dtype:
    """The dtype of ``float64 scalar + float32 array``: float64 (numpy 2, NEP 50), float32 (numpy 1's value casting).

    bm25s adds each document's length normalisation (a float64 scalar) to its float32 term frequencies: the
    precision of the weights follows numpy's rule, and :func:`lucene_index` follows it too.
    """
    return (np.float64(1.0) + np.ones(1, dtype=np.float32)).dtype


def lucene_index(
    terms: np.ndarray, tf: np.ndarray, sizes: np.ndarray, n_vocab: int, k1: float, b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index ``bm25s.BM25(k1, b, method="lucene").index`` builds, from each document's distinct terms and counts.

    The weight of term ``t`` in document ``d`` is bm25s' (``dtype="float32"``), computed in the same order
    and precision: ``idf(t) * tf / (k1 * ((1 - b) + b * len(d) / avgdl) + tf)``, with the float32 IDF
    ``log(1 + (N - df + 0.5) / (df + 0.5))`` of the ``N`` documents (empty ones included, as in bm25s).

    Args:
        terms: Each (document, term) pair's term column in ``0 .. n_vocab - 1``, document by document (a
            term at most once per document).
        tf: Each pair's count of the term in the document (at least 1).
        sizes: Each document's number of distinct terms (0 for a document without tokens), in row order:
            the first ``sizes[0]`` pairs are row 0's, and so on.
        n_vocab: The number of columns (a column no document holds has no entry and IDF 0).
        k1: BM25's ``k1``.
        b: BM25's ``b``.

    Returns:
        ``data`` (float32 weights), ``indices`` (int32 rows) and ``indptr`` (int64): column ``t`` spans
        ``data[indptr[t]:indptr[t + 1]]``, its rows in increasing order (bm25s' CSC layout).

    Raises:
        ValueError: No pair (no document holds a term: bm25s would average over nothing).

    Examples:
        >>> data, indices, indptr = lucene_index(
        ...     np.array([0, 1, 0]), np.array([2, 1, 1]), np.array([2, 1]), 2, k1=0.9, b=0.4
        ... )
        >>> indices.tolist(), indptr.tolist()
        ([0, 1, 0], [0, 2, 3])
    """
    terms = np.asarray(terms)
    sizes = np.asarray(sizes, dtype=np.int64)
    if terms.size == 0:
        raise ValueError("lucene_index needs at least one (document, term) pair; got none")
    n_docs = int(sizes.size)
    rows = np.repeat(np.arange(n_docs, dtype=np.int32), sizes)
    tf32 = np.asarray(tf).astype(np.float32)  # bm25s' tf_array
    doc_len = np.bincount(rows, weights=tf32, minlength=n_docs).astype(np.int64)  # exact: integer counts
    avg_doc_len = doc_len.mean()  # bm25s: np.array([len(doc) ...]).mean(), a float64 scalar
    df = np.bincount(terms, minlength=n_vocab)
    # bm25s' IDF: math.log of each df (not np.log, whose last bit may differ), stored as float32; 0 where df is 0
    distinct = np.flatnonzero(np.bincount(df)).tolist()  # the dfs that occur, in order, without a sort
    by_df = np.zeros(distinct[-1] + 1, dtype=np.float32)
    for d in distinct:
        if d:
            by_df[d] = math.log(1 + (n_docs - d + 0.5) / (d + 0.5))
    idf = by_df[df]
    # bm25s: tf_array / (k1 * ((1 - b) + b * l_d / l_avg) + tf_array), its denominator a float64 scalar per document
    norm = k1 * ((1 - b) + b * doc_len / avg_doc_len)
    norm_pairs = np.repeat(norm, sizes).astype(_scalar_sum_dtype(), copy=False)
    tfc = tf32 / (norm_pairs + tf32)
    weights = (idf[terms] * tfc).astype(np.float32)  # bm25s stores idf * tfc in its float32 score array
    # bm25s' CSC layout: each column's pairs, their rows in increasing order (the pairs come row by row)
    try:
        import scipy.sparse
    except ImportError:  # bm25s without scipy (its "indexing" extra): numpy's stable sort, the same arrays, slower
        order = np.argsort(terms, kind="stable")
        indptr = np.zeros(n_vocab + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        return weights[order], rows[order], indptr
    row_ptr = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(sizes, out=row_ptr[1:])
    by_term = scipy.sparse.csr_matrix((weights, terms, row_ptr), shape=(n_docs, n_vocab)).tocsc()  # a counting sort
    return (
        np.asarray(by_term.data, dtype=np.float32),
        np.asarray(by_term.indices, dtype=np.int32),  # bm25s' int_dtype
        np.asarray(by_term.indptr, dtype=np.int64),  # as bm25s' numpy CSC builds it
    )
