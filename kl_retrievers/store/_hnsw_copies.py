"""Identical documents in an HNSW graph: the rows no search of it reaches, found and scored apart.

FAISS's HNSW keeps ``2 x hnsw_m`` links per node at its lowest level and prunes a new link that a
closer neighbour already covers: copies of one vector, at distance 0 from each other, fill each
other's lists, and the links from them to a later document are pruned, so no search may reach it
(a distinct document among 100 copies was not found as its own top-1; see ``docs/ann.md``, "Many
identical documents"). IVF scans whole lists and is not affected.

Where more than ``2 x hnsw_m`` live documents of an HNSW store are identical, its
:class:`~kl_retrievers.store._engines.ApproxEngine` keeps an :class:`HnswCopies`: the live rows no
lowest-level path from the entry point leads to (:func:`hnsw_reached`) are its *rescue* rows,
which the engine scores exactly with every query, and it searches a query exactly where those are
more than a share of the rows the query allows. The interface the engine calls:

* :meth:`HnswCopies.track`: after every row of the index was (re)added (build, compaction, load);
* :meth:`HnswCopies.track_added`: after an add of rows to a built index (reads only the new rows'
  neighbourhoods, walking the whole graph again where that is needed);
* :meth:`HnswCopies.rows`: the rescue rows one query scores apart;
* :meth:`HnswCopies.clear`, :meth:`HnswCopies.snapshot` / :meth:`HnswCopies.restore`: the index
  dropped, a failed rebuild undone;
* :func:`gaussian_hashes`: which documents are identical (the engine hashes rows as it adds them).

Nothing is saved: a load walks the graph it reads. FAISS is imported on first use, not with this
module.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from kl_retrievers.store._table import DocumentTable

# The engines' logger: the store's warnings about identical documents are documented under it (docs/ann.md).
logger = logging.getLogger("kl_retrievers.store._engines")

#: Where the rows a query scores apart (:meth:`HnswCopies.rows`) are more than this share of the rows it allows,
#: the engine searches it exactly: scoring them with every query would cost about as much (measured crossover on
#: 20k documents, k = 128: docs/ann.md). The default of :attr:`HnswCopies.share`.
RESCUE_SHARE = 0.1
#: An HNSW store tracking identical documents walks its whole graph again once its live rows grew
#: by this share since the last walk (or an add brings copies of a tracked group); between walks
#: only the new rows' neighbourhoods are checked (:meth:`HnswCopies.track_added`).
_REWALK_GROWTH = 0.1
#: Graph nodes whose lowest-level links are read at once by a walk (bounds its memory).
_WALK_BLOCK = 16384
_NO_ROWS = np.zeros(0, dtype=np.int64)
NO_HASHES = np.zeros(0, dtype=np.uint64)

#: ``(neighbors, offsets, links, entry)``: the lowest level of an HNSW graph (:func:`_hnsw_graph`).
_Graph = tuple[np.ndarray, np.ndarray, np.ndarray, int]
#: ``(tied, group, partners, partner_group)``: :attr:`HnswCopies.ties`.
_Ties = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
#: What :meth:`HnswCopies.snapshot` returns and :meth:`HnswCopies.restore` takes back.
Snapshot = tuple[np.ndarray | None, np.ndarray, np.ndarray | None, int, np.ndarray, _Ties]
#: :attr:`HnswCopies.ties` where no rescue row ties with a reached row.
_NO_TIES: _Ties = (_NO_ROWS, _NO_ROWS, _NO_ROWS, _NO_ROWS)


def _row_hashes(*parts: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of the float32 values of ``parts`` side by side (same number of rows):
    identical rows hash alike, distinct ones almost never do.

    Each row's 64-bit words (pairs of float32) times fixed odd 64-bit multipliers, summed modulo
    ``2^64`` (an integer matrix product: exact, so the same for equal rows in any order); ``-0.0``
    counts as ``0.0``.
    """
    n, w = parts[0].shape[0], sum(part.shape[1] for part in parts)
    mult = np.random.default_rng(0x6B6C).integers(0, 1 << 62, size=(w + 1) // 2, dtype=np.uint64)
    mult = mult * np.uint64(2) + np.uint64(1)  # odd
    out = np.empty(n, dtype=np.uint64)
    for s in range(0, n, 4096):
        block = np.zeros((min(n, s + 4096) - s, 2 * mult.size), dtype=np.float32)
        j = 0
        for part in parts:
            block[:, j : j + part.shape[1]] = part[s : s + 4096]
            j += part.shape[1]
        block += np.float32(0.0)  # -0.0 -> 0.0
        out[s : s + 4096] = block.view(np.uint64) @ mult
    return out


def gaussian_hashes(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """:func:`_row_hashes` of Gaussians as stored (float32): documents with the same mean and variance hash alike."""
    return _row_hashes(mean, var)


def _hnsw_graph(index: Any) -> _Graph | None:
    """The lowest level of an HNSW index's graph: ``(neighbors, offsets, links, entry)``, or ``None``.

    ``neighbors[offsets[i] + links]`` are node ``i``'s lowest-level links (``-1`` unused);
    ``neighbors`` is a view of FAISS's own array where FAISS allows it (no copy). ``None`` where
    FAISS does not expose the graph.
    """
    import faiss as faiss_module

    faiss: Any = faiss_module  # the SWIG stubs miss keyword arguments (as the engines' _faiss)
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexRefine):
        idx = faiss.downcast_index(idx.base_index)
    try:
        hnsw = idx.hnsw
        try:  # a view, not a copy (the array is n x 2 hnsw_m int32 and more)
            neighbors = faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size())
        except (RuntimeError, TypeError, AttributeError, ValueError):
            neighbors = faiss.vector_to_array(hnsw.neighbors)
        offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
        links = np.arange(hnsw.cum_nb_neighbors(0), hnsw.cum_nb_neighbors(1), dtype=np.int64)
        entry = int(hnsw.entry_point)
    except (RuntimeError, TypeError, AttributeError) as exc:
        logger.info("cannot read the HNSW graph (%s); its unreachable nodes are not searched separately", exc)
        return None
    return neighbors, offsets, links, entry


def _walk(graph: _Graph, seen: np.ndarray, front: np.ndarray, lo: int) -> None:
    """Mark in ``seen`` every node at or above ``lo`` that a path of lowest-level links leads to from ``front``.

    The frontier is read ``_WALK_BLOCK`` nodes at a time, so memory stays at ``seen``, the
    frontier's node ids and one block of links, whatever the size of the graph.
    """
    neighbors, offsets, links, _ = graph
    n = seen.size
    while front.size:
        found = []
        for s in range(0, front.size, _WALK_BLOCK):
            nxt = neighbors[offsets[front[s : s + _WALK_BLOCK], None] + links[None, :]].ravel()
            nxt = nxt[(nxt >= lo) & (nxt < n)]
            nxt = np.unique(nxt[~seen[nxt]])
            seen[nxt] = True
            found.append(nxt.astype(np.int64))
        front = np.concatenate(found) if found else _NO_ROWS


def hnsw_reached(index: Any) -> np.ndarray | None:
    """Which entries of an HNSW index a path of its lowest-level links leads to from the entry point.

    A search descends the upper levels greedily and then explores the lowest level's links
    only, so no search returns an entry that is not reached (unless the descent happens to end
    on it). ``None`` where FAISS does not expose the graph.
    """
    graph = _hnsw_graph(index)
    if graph is None:
        return None
    n, entry = int(index.ntotal), graph[3]
    seen = np.zeros(n, dtype=bool)
    if n == 0 or not 0 <= entry < n or graph[1].size < n + 1:
        seen[:] = True
        return seen
    seen[entry] = True
    _walk(graph, seen, np.array([entry], dtype=np.int64), 0)
    return seen


def hnsw_unreached(index: Any) -> np.ndarray | None:
    """Entries of an HNSW index that no path of its lowest-level links leads to from the entry point
    (:func:`hnsw_reached`); ``None`` where FAISS does not expose the graph."""
    seen = hnsw_reached(index)
    return None if seen is None else np.flatnonzero(~seen)


def _links_below(graph: _Graph, nodes: np.ndarray, below: int) -> np.ndarray:
    """The nodes under ``below`` that ``nodes`` link to at the lowest level (sorted, unique; read in blocks)."""
    neighbors, offsets, links, _ = graph
    out = [_NO_ROWS]
    for s in range(0, nodes.size, _WALK_BLOCK):
        nxt = neighbors[offsets[nodes[s : s + _WALK_BLOCK], None] + links[None, :]].ravel()
        out.append(np.unique(nxt[(nxt >= 0) & (nxt < below)]).astype(np.int64))
    return np.unique(np.concatenate(out))


def hnsw_reached_new(index: Any, reached: np.ndarray, graph: _Graph | None = None) -> np.ndarray | None:
    """``reached`` (one flag per old entry) extended to the entries added since, from their neighbourhoods only.

    A new entry is reached where a reached entry links to it: the entries that can link to it
    are those it linked to when it was added (FAISS adds the reverse links there, or prunes them)
    and the other new entries, so only their links are read. Old entries keep their flags (an
    old entry whose last link in was pruned by an add counts as reached until the next full walk;
    :meth:`HnswCopies.track_added` walks the whole graph where such pruning is likely).
    ``graph``: :func:`_hnsw_graph` of ``index`` where the caller has read it. ``None`` where FAISS
    does not expose the graph.
    """
    graph = _hnsw_graph(index) if graph is None else graph
    if graph is None:
        return None
    offsets, entry = graph[1], graph[3]
    n, start = int(index.ntotal), reached.size
    seen = np.concatenate([reached, np.zeros(n - start, dtype=bool)])
    if offsets.size < n + 1:
        seen[:] = True
        return seen
    if start <= entry < n:
        seen[entry] = True
    new = np.arange(start, n, dtype=np.int64)
    old = _links_below(graph, new, start)  # old entries the new ones link to: the reached ones lead on
    _walk(graph, seen, np.concatenate([new[seen[new]], old[seen[old]]]), start)
    return seen


class _Settings(Protocol):
    """The store setting the tracking reads, at every use."""

    hnsw_m: int


class HnswCopies:
    """What an HNSW engine keeps about its groups of more than ``2 x hnsw_m`` identical live documents.

    Args:
        settings: The store's settings (``hnsw_m`` read at every use).
        table: The store's rows (index entry ``i`` is row ``i``).
        share: Where the rows a query scores apart are more than this share of the rows it allows, the
            engine searches it exactly; the warnings say so (default :data:`RESCUE_SHARE`).

    Attributes:
        share: As the argument; the engine reads it at every search.
        hashes: :func:`gaussian_hashes` of every index entry's document, or ``None`` where no group of
            more than ``2 x hnsw_m`` was found (nothing tracked).
        groups: The hashes of those groups.
        reached: Which entries the last walk of the graph reached (``None``: FAISS does not expose it).
        walked_live: The live rows at the last walk.
        rescue: The live rows the graph cannot reach (sorted), scored exactly with every query, less
            (:meth:`rows`) those in ``ties``.
        ties: ``(tied, group, partners, partner_group)``: the rescue rows that are copies of a reached
            live row (they tie with it), each one's group, the reached rows of those groups and each
            one's group; a query skips a tied row where it allows enough reached rows of its group.
    """

    def __init__(
        self,
        settings: _Settings,
        table: DocumentTable,
        share: float = RESCUE_SHARE,
    ) -> None:
        self.settings, self.table, self.share = settings, table, share
        self.hashes: np.ndarray | None = None
        self.groups = NO_HASHES
        self.reached: np.ndarray | None = None
        self.walked_live = 0
        self.rescue = _NO_ROWS
        self.ties: _Ties = _NO_TIES
        self._warned_duplicates = False  # the "many identical documents" warning is logged once per store
        self._warned_exact = False  # and the "too many rows the graph cannot reach: exact searches" one

    def clear(self) -> None:
        """Track nothing (no index, or no group of more than ``2 x hnsw_m``); :attr:`walked_live` is kept."""
        self.hashes, self.groups, self.reached, self.rescue, self.ties = None, NO_HASHES, None, _NO_ROWS, _NO_TIES

    def snapshot(self) -> Snapshot:
        """What is tracked now, for :meth:`restore` (the arrays are replaced, never changed in place)."""
        return self.hashes, self.groups, self.reached, self.walked_live, self.rescue, self.ties

    def restore(self, snapshot: Snapshot) -> None:
        """Track again what :meth:`snapshot` returned (a failed rebuild leaves the old index)."""
        self.hashes, self.groups, self.reached, self.walked_live, self.rescue, self.ties = snapshot

    def track(self, index: Any, hashes: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Where more than ``2 x hnsw_m`` live documents of ``index`` are identical: warn; score what the graph
        cannot reach.

        The live rows no lowest-level path from the entry point leads to (:func:`hnsw_reached`) are
        kept in :attr:`rescue` and scored exactly with every query, less copies of a reachable row
        where the query allows at least k reachable copies of that group (they tie with them;
        :meth:`rows`); where those it scores so are more than :attr:`share` of the allowed rows, the
        query is searched exactly. The hashes are kept for later adds (:meth:`track_added`). One
        warning per store.

        Args:
            index: The HNSW index, holding one entry per hash.
            hashes: :func:`gaussian_hashes` of its entries' documents, in entry order.
            rows: The table rows the entries were added from, all live (default: the same numbers,
                live or not as the table says).
        """
        self.clear()
        limit = 2 * self.settings.hnsw_m
        if hashes.size <= limit:
            return
        alive = np.ones(hashes.size, dtype=bool) if rows is not None else np.asarray(self.table.alive[: hashes.size])
        live = np.flatnonzero(alive)
        if live.size <= limit:
            return
        uniq, first, counts = np.unique(hashes[live], return_index=True, return_counts=True)
        big = counts > limit
        if not big.any():
            return
        self.hashes, self.groups = hashes, uniq[big]
        self._find_unreached(index, alive)
        if self._warned_duplicates:
            return
        self._warned_duplicates = True
        j = int(np.argmax(counts))
        example = int(live[first[j]])
        example = example if rows is None else int(rows[example])
        logger.warning(
            "%d documents of the hnsw index are copies of one vector (e.g. document %r; %d such group(s) of more "
            "than %d): more than 2 x hnsw_m = %d, the links an HNSW node keeps, so the graph search misses documents "
            "(%s); deduplicate the documents (one copy each, the others' ids kept elsewhere), or use "
            "index_type='flat' (exact) or 'ivf', which this does not affect (docs/ann.md, 'Many identical documents')",
            int(counts[j]),
            self.table.ids[example],
            int(big.sum()),
            limit,
            limit,
            self._note(int(live.size)),
        )

    def _note(self, n_live: int) -> str:
        """What the store does about the rows its graph cannot reach, for the warning of :meth:`track`."""
        r = int(self.rescue.size - self.ties[0].size)
        if self.reached is None:
            return "FAISS does not expose this graph, so the documents it cannot reach are not found"
        if not r:
            return "it reaches every document from its entry point, but finds those near the copies less often"
        if r > self.share * n_live:
            return (
                f"it cannot reach {r} of the {n_live} live documents at all, more than {self.share:.0%}: "
                "queries are searched exactly, without the index, while that lasts"
            )
        return f"the {r} it cannot reach at all are scored exactly with every query, but recall still suffers"

    def _find_unreached(self, index: Any, alive: np.ndarray) -> None:
        """Walk the graph of ``index``: set :attr:`reached`, :attr:`walked_live`, :attr:`rescue`, :attr:`ties`.

        Every live row the walk does not reach is a rescue row. Those that are copies of a
        reached live row are also kept in :attr:`ties` with the reached rows of their group: a query
        for k results that allows k of these finds them and skips the others (:meth:`rows`), and
        one that allows fewer (reached copies deleted or filtered out) still scores them.
        """
        assert self.hashes is not None
        self.rescue, self.ties, self.walked_live = _NO_ROWS, _NO_TIES, int(alive.sum())
        self.reached = hnsw_reached(index)
        if self.reached is None:
            return
        hashes = self.hashes
        lost, ties = np.flatnonzero(~self.reached & alive), _NO_TIES
        if lost.size:
            found = np.flatnonzero(self.reached & alive)
            shared = np.intersect1d(hashes[lost], hashes[found])
            if shared.size:
                tied, partners = lost[np.isin(hashes[lost], shared)], found[np.isin(hashes[found], shared)]
                groups = np.searchsorted(shared, hashes[tied]), np.searchsorted(shared, hashes[partners])
                ties = (tied, groups[0].astype(np.int64), partners, groups[1].astype(np.int64))
        self._set_rescue(lost, ties)

    def _set_rescue(self, rows: np.ndarray, ties: _Ties) -> None:
        """Score ``rows`` (sorted, unique) with every query, less ``ties`` (see :meth:`_find_unreached`); warn once
        per store where there are too many for that."""
        self.rescue, self.ties = rows.astype(np.int64), ties
        n_live, n_rescue = len(self.table), int(rows.size - ties[0].size)
        if n_rescue > self.share * n_live and not self._warned_exact:
            self._warned_exact = True
            logger.warning(
                "the hnsw graph cannot reach %d of the %d live documents, more than %s: queries are searched "
                "exactly, without the index, while that lasts (deduplicate the documents, or use index_type='flat' "
                "or 'ivf'; docs/ann.md, 'Many identical documents')",
                n_rescue,
                n_live,
                f"{self.share:.0%}",
            )

    def rows(self, mask: np.ndarray | None, kk: int) -> np.ndarray:
        """The rescue rows a query for ``kk`` results allowing ``mask`` (``None``: every row, all live) scores apart.

        A rescue row that ties with a reached row (:attr:`ties`) is skipped where the query allows at least
        ``kk`` reached rows of its group: the graph search finds those, with the same score, and they fill
        every place a copy could take. With fewer (a filter or deletes left fewer reached copies than
        ``kk``), the group's unreached copies are scored too, or the top ``kk`` would miss some.
        Returns the rows, sorted.
        """
        rescue, (tied, group, partners, partner_group) = self.rescue, self.ties
        if tied.size:
            allowed = partner_group if mask is None else partner_group[mask[partners]]
            size = int(max(group.max(), partner_group.max())) + 1
            covered = np.bincount(allowed, minlength=size) >= kk
            rescue = np.setdiff1d(rescue, tied[covered[group]], assume_unique=True)
        if rescue.size and mask is not None:
            rescue = rescue[mask[rescue]]
        return rescue

    def track_added(self, index: Any, start: int) -> None:
        """After an add of the table's rows ``start:`` to ``index`` (which held the rows before ``start``).

        Where the rows before ``start`` are tracked, the tracking goes on from them
        (:meth:`_track_new_rows`). Otherwise the whole index is hashed and walked (:meth:`track`)
        where other rows were tracked, or the add brings more than ``2 x hnsw_m`` copies of one
        document; a store tracking nothing stays so after an add without such a group (copies that
        small adds gather are counted at the next build, compaction or load).
        """
        table, limit = self.table, 2 * self.settings.hnsw_m
        new = gaussian_hashes(table.mean[start:], table.var[start:])
        if self.hashes is not None and self.hashes.size == start:
            self._track_new_rows(index, start, new)
        elif self.hashes is not None or (new.size > limit and np.unique(new, return_counts=True)[1].max() > limit):
            self.track(index, gaussian_hashes(table.mean, table.var))

    def _track_new_rows(self, index: Any, start: int, new: np.ndarray) -> None:
        """After an add of rows ``start:`` (hashes ``new``) to a store tracking identical documents.

        The whole graph is walked again (:meth:`track`) where the add brings a copy of a tracked
        group, or a new group of more than ``2 x hnsw_m``, or the live rows grew by
        ``_REWALK_GROWTH`` since the last walk, or a new row links to a copy of a tracked group:
        FAISS then adds the reverse link to the copy's full list and prunes one, and the link it
        prunes may be the last one into an older row near the copies (which no search would reach
        again). Otherwise only the new rows' neighbourhoods are read (:func:`hnsw_reached_new`),
        and the new live rows no reached row links to are scored with every query too. Between
        walks, an old row that an add away from the copies left with no link in is not noticed,
        nor a group that smaller adds build up.
        """
        assert self.hashes is not None
        hashes, limit = np.concatenate([self.hashes, new]), 2 * self.settings.hnsw_m
        regroup = bool(np.isin(new, self.groups).any()) or (
            new.size > limit and int(np.unique(new, return_counts=True)[1].max()) > limit
        )
        if regroup or self.reached is None or len(self.table) >= (1.0 + _REWALK_GROWTH) * self.walked_live:
            self.track(index, hashes)
            return
        graph = _hnsw_graph(index)
        if graph is None or graph[1].size < index.ntotal + 1:
            self.track(index, hashes)
            return
        near = _links_below(graph, np.arange(start, index.ntotal, dtype=np.int64), start)
        if np.isin(self.hashes[near], self.groups).any():  # pruning around the copies: walk it all
            self.track(index, hashes)
            return
        reached = hnsw_reached_new(index, self.reached, graph)
        assert reached is not None
        self.hashes, self.reached = hashes, reached
        lost = start + np.flatnonzero(~reached[start:] & np.asarray(self.table.alive[start : reached.size]))
        if lost.size:
            self._set_rescue(np.union1d(self.rescue, lost), self.ties)
