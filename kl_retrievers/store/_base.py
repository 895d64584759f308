"""What every store shares, whatever serves its search: the interface, the result types, the input checks.

A store holds documents (an id, a text, a metadata dict and a diagonal Gaussian each) and ranks
them for a query Gaussian by the exact ``-KL(Q || D)`` (higher is better). :class:`GaussianStore`
names the interface and implements its public methods once (argument checks, encoding texts,
one query as a batch of one); a backend implements the ``_``-prefixed hooks:

* :class:`~kl_retrievers.store.faiss.KLStore`: in this process, FAISS indexes over a table of
  float32 Gaussians;
* :class:`~kl_retrievers.store.milvus.MilvusKLStore`: one Milvus collection.

Nothing here imports FAISS or Milvus.

Examples:
    >>> r = SearchResult("d1", -3.5, "some text", {"lang": "en"})
    >>> r.score, _id_list("d1"), _id_list(["a", "b"])
    (-3.5, ['d1'], ['a', 'b'])
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import threading
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeAlias, get_args

import numpy as np

from kl_retrievers._encoding import check_texts, query_batch_size
from kl_retrievers._errors import KLRetrieversError
from kl_retrievers._io import user_path
from kl_retrievers.filters import MetadataFilter, stored_form
from kl_retrievers.gaussian import Gaussians, _first_bad, check_float32_scorable, check_k

if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

logger = logging.getLogger(__name__)

__all__ = [
    "INDEX_TYPES",
    "IndexType",
    "GaussianStore",
    "SearchResult",
    "StoredDocument",
    "DeleteReport",
    "StoreFormatError",
]

#: Index types every backend offers: exact, graph (HNSW) and inverted lists (IVF).
IndexType = Literal["flat", "hnsw", "ivf"]
#: The values of :data:`IndexType`, which the runtime checks read.
INDEX_TYPES: tuple[IndexType, ...] = get_args(IndexType)
_check_k = check_k  # the one check of k (kl_retrievers.gaussian); kl_retrievers.index re-exports this name


class StoreFormatError(KLRetrieversError, ValueError):
    """A saved store folder is incomplete, inconsistent or corrupted."""


class QueryEncoder(Protocol):
    """An encoder of queries, as a store calls it: ``encode_queries(texts, batch_size=..., show_progress_bar=False)``.

    The texts (a ``list[str]``) by position, the options by keyword, so an encoder whose options are
    keyword-only (the package's) or positional-or-keyword (``batch_size: int = 32``) both satisfy it.
    """

    def encode_queries(self, texts: list[str], /, *, batch_size: int, show_progress_bar: bool) -> Gaussians:
        """Encode queries as numpy Gaussians, one row per text."""
        ...


class DocumentEncoder(Protocol):
    """An encoder of documents, as a store calls it: ``encode_documents(texts, batch_size=..., show_progress_bar=...)``.

    ``show_progress_bar`` is the store's own: a bool, or ``None`` only for a ``KLStore(show_progress_bar=None)``,
    which asks an encoder that takes ``None`` (the package's do) for its default bar.
    """

    def encode_documents(self, texts: list[str], /, *, batch_size: int, show_progress_bar: bool) -> Gaussians:
        """Encode documents as numpy Gaussians, one row per text."""
        ...


class Encoder(QueryEncoder, DocumentEncoder, Protocol):
    """What a store needs from an encoder of text (duck-typed): both methods, as a store calls them.

    :class:`~kl_retrievers.encoder.GaussianEncoder` and :class:`~kl_retrievers.onnx.OnnxGaussianEncoder`
    (keyword-only options, more of them, ``None`` defaults), LangChain's ``KLEmbeddings`` and
    ``EmbeddingsGaussianEncoder``, and a simple encoder of your own all satisfy it::

        class MyEncoder:
            def encode_queries(self, texts: list[str], batch_size=32, show_progress_bar=False) -> Gaussians:
                ...

            def encode_documents(self, texts: list[str], batch_size=32, show_progress_bar=False) -> Gaussians:
                ...

    What a store reads beside the methods is optional: ``name_or_path`` and ``config`` (the model a save
    records), ``batch_invariant`` (``False``: queries encoded one at a time).
    """


class NamedModel(Protocol):
    """A stand-in for the model of a store whose Gaussians are computed elsewhere: the name a save records."""

    @property
    def name_or_path(self) -> str:
        """The model's name or folder."""
        ...


#: What a store's ``encoder`` argument takes (besides ``None``): an :class:`Encoder`, or one of queries alone
#: (it serves a store whose documents are added as Gaussians), of documents alone, or a :class:`NamedModel`
#: stand-in. At run time anything else (a model name, a Hugging Face model or tokenizer, a LangChain
#: ``Embeddings``) is refused with a ``TypeError`` saying what to pass (:func:`_refuse_model_name`).
EncoderLike: TypeAlias = Encoder | QueryEncoder | DocumentEncoder | NamedModel


@dataclass(frozen=True)
class SearchResult:
    """One ranked hit.

    Attributes:
        id: The document id.
        score: The exact ``-KL(Q || D)``: higher is better, ``0`` for a document equal to the query.
            ``D`` is the document as stored: stores keep documents in float32 (:meth:`GaussianStore.add`),
            so a document added in float64 scores against its rounded copy: with large means and small
            variances, slightly below ``0`` against itself (more so the more dimensions).
        text: The document text (``None`` when only Gaussians were added).
        metadata: A copy of the document's metadata.

    Frozen, compared by value, and unhashable (``metadata`` is a dict): key a dict or set by ``id``.

    Examples:
        >>> SearchResult("d1", -3.5, "some text", {"lang": "en"}).score
        -3.5
    """

    id: str
    score: float
    text: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # frozen, but equal by a dict: unhashable


@dataclass(frozen=True)
class StoredDocument:
    """A stored document as :meth:`GaussianStore.get_by_ids` returns it.

    Its ``metadata`` is a copy: changing it changes nothing in the store. Frozen, compared by value, and
    unhashable (``metadata`` is a dict): key a dict or set by ``id``.

    Examples:
        >>> StoredDocument("d1", "text", {"lang": "en"}).metadata
        {'lang': 'en'}
    """

    id: str
    text: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # frozen, but equal by a dict: unhashable


@dataclass(frozen=True)
class DeleteReport:
    """Outcome of :meth:`GaussianStore.delete`: ``deleted`` ids were removed, ``missing`` ones were not there.

    Frozen, compared by value, and unhashable (its fields are lists).

    Examples:
        >>> DeleteReport(deleted=["a"], missing=["b"]).missing
        ['b']
    """

    deleted: list[str]
    missing: list[str]

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # frozen, but equal by lists: unhashable


#: The refusal of a write by a thread that reads the store (:meth:`_RWLock.no_writes` words others).
_READING_WRITES = (
    "this thread is reading the store (e.g. inside a callable filter during a search) and cannot modify it there; "
    "modify the store after the search returns"
)


class _RWLock:
    """A phase-fair readers-writer lock, re-entrant per thread.

    Neither side starves: a writer that arrives while searches run waits for them, and searches
    arriving after it wait for it; when a writer releases the lock, every reader waiting at that
    moment is admitted (counted as reading before it wakes) ahead of the next writer. A writer-
    preferring lock without that hand-off let a thread writing in a loop take the lock again before
    the readers it woke ran (one search waited 5 s behind back-to-back upserts, in an unlogged run).

    A thread that already holds the read lock gets it again at once, even while a writer
    waits (a callable filter that reads the store during a search would otherwise block
    itself and the writer forever); the thread holding the write lock may read and write
    again, except inside :meth:`no_writes`. A thread holding only the read lock cannot take the
    write lock: that upgrade would wait for its own read to end, so it raises ``RuntimeError`` instead.

    Examples:
        >>> lock = _RWLock()
        >>> with lock.read(), lock.read():
        ...     pass
        >>> with lock.write(), lock.read(), lock.write():
        ...     pass
        >>> with lock.write(), lock.no_writes(), lock.write():  # doctest: +ELLIPSIS
        ...     pass
        Traceback (most recent call last):
        RuntimeError: this thread is reading the store ...
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0  # threads reading, including those admitted by a writer's release but not yet awake
        self._writer: int | None = None  # thread ident of the writer
        self._waiting_writers = 0
        self._waiting_readers = 0  # readers waiting for the current (or next) writer to release
        self._phase = 0  # write phases ended: a waiting reader is admitted when it changes
        self._local = threading.local()  # .reads: read locks this thread holds; .frozen: inside no_writes

    def _held_reads(self) -> int:
        return int(getattr(self._local, "reads", 0))

    def _admit_waiting_readers(self) -> None:
        """End the write phase: every waiting reader now reads (callers hold ``_cond``)."""
        self._readers += self._waiting_readers
        self._waiting_readers = 0
        self._phase += 1
        self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        if self._writer == threading.get_ident():  # reading inside this thread's own write
            yield
            return
        held = self._held_reads()
        with self._cond:
            if held or (self._writer is None and not self._waiting_writers):
                self._readers += 1
            else:  # wait for the end of the current (or next) write phase, which admits this reader
                self._waiting_readers += 1
                phase = self._phase
                try:
                    while self._phase == phase:
                        self._cond.wait()
                except BaseException:
                    if self._phase == phase:
                        self._waiting_readers -= 1
                    else:  # admitted meanwhile: leave again
                        self._readers -= 1
                        if not self._readers:
                            self._cond.notify_all()
                    raise
        self._local.reads = held + 1
        try:
            yield
        finally:
            self._local.reads = held
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me and not getattr(self._local, "frozen", False):  # nested write in the same thread
            yield
            return
        self._acquire_write(me)
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._admit_waiting_readers()

    def _acquire_write(self, me: int) -> None:
        """Wait for the write lock (not held by this thread in any way)."""
        if self._held_reads() or self._writer == me:
            raise RuntimeError(getattr(self._local, "refusal", None) or _READING_WRITES)
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            except BaseException:
                if self._writer is None and self._waiting_writers == 1 and self._waiting_readers:
                    self._admit_waiting_readers()  # readers held back by this interrupted wait
                raise
            finally:
                self._waiting_writers -= 1
            self._writer = me

    @contextmanager
    def write_then_read(self) -> Iterator[Callable[[], None]]:
        """The write lock, which the callable it yields turns into a read lock at once (no writer gets in between).

        Readers waiting at that moment are admitted with it; the read lock is released at the end of the
        ``with``. Inside this thread's own write lock it is that write lock throughout (the callable does nothing).

        Examples:
            >>> lock = _RWLock()
            >>> with lock.write_then_read() as downgrade:
            ...     downgrade()
            ...     with lock.read():
            ...         lock._writer is None
            True
        """
        me = threading.get_ident()
        if self._writer == me and not getattr(self._local, "frozen", False):  # nested in this thread's write
            yield lambda: None
            return
        self._acquire_write(me)
        held = self._held_reads()
        downgraded = False

        def downgrade() -> None:
            nonlocal downgraded
            if downgraded:
                return
            with self._cond:
                self._writer = None
                self._readers += 1  # this thread, before any writer waiting can take the lock
                self._admit_waiting_readers()
            self._local.reads = held + 1
            downgraded = True

        try:
            yield downgrade
        finally:
            if downgraded:
                self._local.reads = held
                with self._cond:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()
            else:
                with self._cond:
                    self._writer = None
                    self._admit_waiting_readers()

    @contextmanager
    def no_writes(self, refusal: str | None = None) -> Iterator[None]:
        """Refuse a write by this thread (``RuntimeError``), e.g. from a callable filter, nested or under a read.

        Args:
            refusal: The error's message (default: the one of an enclosing ``no_writes`` of this thread, else
                ``_READING_WRITES``, worded for a search's filter).
        """
        frozen = getattr(self._local, "frozen", False)
        before = getattr(self._local, "refusal", None)
        self._local.frozen = True
        if refusal is not None:
            self._local.refusal = refusal
        try:
            yield
        finally:
            self._local.frozen = frozen
            self._local.refusal = before


# ------------------------------------------------------------------ input checks
def _id_list(ids: Any, what: str = "ids", *, ordered: bool = True) -> list[str]:
    """``ids`` as a list of ``str``: a bare string is ONE id; otherwise an iterable of strings.

    Ids are never coerced with ``str()`` (``None`` would become ``"None"`` and ``b"ab"`` the ids
    ``"97"``, ``"98"``): anything but a string raises ``TypeError`` naming its position and type.
    A set is refused, as a dict is, unless ``ordered=False`` (ids that are not paired with anything
    by position, as :meth:`GaussianStore.delete`'s): its iteration order is arbitrary. A dict's
    ``keys()`` view keeps the dict's order and is taken.

    Examples:
        >>> _id_list("ab"), _id_list(["a", "b"])
        (['ab'], ['a', 'b'])
        >>> _id_list(["a", None])
        Traceback (most recent call last):
        TypeError: ids[1] must be a str; got NoneType None
        >>> _id_list({"a"}, "query_ids")
        Traceback (most recent call last):
        TypeError: query_ids is a set, whose iteration order is arbitrary, ... pass a list, in order; got {'a'}
    """
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, Gaussians):  # (gaussians, ids) unpacked the wrong way round
        raise TypeError(
            f"{what} must be a str or a sequence of str; got Gaussians (mind the orders of the shard loaders: "
            "load_encoded returns (gaussians, ids), iter_encoded yields (ids, gaussians))"
        )
    if isinstance(ids, (bytes, bytearray, memoryview, Mapping)) or not isinstance(ids, Iterable):
        raise TypeError(f"{what} must be a str or a sequence of str; got {type(ids).__name__}")
    if ordered and isinstance(ids, AbstractSet) and not isinstance(ids, KeysView):
        raise TypeError(
            f"{what} is a {type(ids).__name__}, whose iteration order is arbitrary, so it cannot be paired with the "
            f"other arguments by position: pass a list, in order; got {ids!r:.80}"
        )
    out = list(ids)
    for j, doc_id in enumerate(out):
        if not isinstance(doc_id, str):
            raise TypeError(f"{what}[{j}] must be a str; got {type(doc_id).__name__} {doc_id!r:.80}")
    return [str(doc_id) for doc_id in out]


def _check_unique(ids: list[str]) -> None:
    """Refuse a repeated id, naming it and both positions."""
    first: dict[str, int] = {}
    for j, doc_id in enumerate(ids):
        if doc_id in first:
            raise ValueError(
                f"ids must be unique within one add call; {doc_id!r:.80} is at positions {first[doc_id]} and {j}"
            )
        first[doc_id] = j


def _as_numpy_gaussians(g: Gaussians, what: str) -> Gaussians:
    if not isinstance(g, Gaussians):
        raise TypeError(f"{what} must be a Gaussians batch; got {type(g).__name__}")
    g = g.numpy()
    mean, var = np.asarray(g.mean), np.asarray(g.var)
    for part, arr in (("means", mean), ("variances", var)):
        finite = np.isfinite(arr)
        if not finite.all():
            raise ValueError(f"{what} {part} must be finite; found NaN or infinite values ({_first_bad(arr, ~finite)})")
    if not (var > 0).all():
        raise ValueError(f"{what} variances must be > 0 ({_first_bad(var, var <= 0)})")
    return Gaussians(mean, var, validate=False)


#: The largest 32-bit C integer: FAISS takes its settings (``efSearch``, ``nprobe``, ``M``, ...) as such, and a
#: larger one fails only at the first add or search (an ``OverflowError`` from the bindings).
MAX_INT32 = 2**31 - 1


#: The largest ``norm_headroom`` (:func:`_check_store_args`): ``M = norm_headroom * max ||d^||``; far above
#: any useful headroom (the default is 1.1), the documents' own part of the float32 reduced vectors is lost to
#: rounding and an ordinary document's ``M`` can pass the k-means limit (``_engines.MAX_NORM_BOUND``).
MAX_NORM_HEADROOM = 1e6


def _check_store_args(
    index_type: str,
    compression: str | None,
    dim: int | None,
    norm_headroom: float,
    positive: Sequence[tuple[str, Any]],
    compressions: Sequence[str | None],
    maxima: Mapping[str, int] | None = None,
) -> None:
    """The constructor checks every backend shares (``ValueError`` naming the value).

    Each of ``dim`` and ``positive`` must be a positive integer, and at most ``maxima[name]`` where
    ``maxima`` names it (e.g. :data:`MAX_INT32` for what the index library takes as a C ``int``).

    Examples:
        >>> _check_store_args("hnsw", None, None, 1.1, [("ef_search", 2**40)], [None], {"ef_search": MAX_INT32})
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: ef_search must be an integer from 1 to 2147483647 (...); got 1099511627776
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}; got {index_type!r}")
    if compression not in compressions:
        raise ValueError(f"compression must be one of {tuple(compressions)}; got {compression!r}")
    if compression is not None and index_type == "flat":
        raise ValueError("compression applies to 'hnsw' and 'ivf' only; the flat index is exact")
    for name, value in [("dim", dim), *positive]:
        if name == "dim" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if maxima and name in maxima and value > maxima[name]:
            raise ValueError(
                f"{name} must be an integer from 1 to {maxima[name]} (the index library takes it as a 32-bit "
                f"integer); got {value!r}"
            )
    if (
        isinstance(norm_headroom, bool)
        or not isinstance(norm_headroom, (int, float, np.integer, np.floating))
        or not 1.0 <= norm_headroom <= MAX_NORM_HEADROOM
    ):
        raise ValueError(
            f"norm_headroom must be a finite number >= 1 and <= {MAX_NORM_HEADROOM:g}; got {norm_headroom!r}: "
            "M = norm_headroom * the largest document norm, and a larger headroom only buys room for later, larger "
            "documents at the cost of float32 precision (each document's own part of a reduced vector shrinks as "
            "1/norm_headroom) and of the k-means limit on M (an ordinary document would be refused by an IVF or "
            "PQ index)"
        )


@dataclass
class _NewDocuments:
    """Validated input of one ``add`` call (the hook :meth:`GaussianStore._add_documents` receives)."""

    gaussians: Gaussians
    texts: list[str | None]
    ids: list[str]
    metadatas: list[dict[str, Any]]


def _check_utf8(value: str, what: str) -> None:
    """Refuse a string that cannot be written as UTF-8 (a lone surrogate), naming it and the character.

    Such strings come from decoding bytes with ``errors="surrogateescape"``; every store saves its
    texts, ids and metadata as UTF-8, so they are refused at ``add`` rather than at ``save``.

    Examples:
        >>> _check_utf8("caf\\udce9", "texts[0]")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: texts[0] holds a lone surrogate '\\udce9' at character 3, which cannot be saved as UTF-8; ...
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} holds a lone surrogate {value[exc.start]!r} at character {exc.start}, which cannot be saved "
            f'as UTF-8; got {value!r:.80} (decode its bytes with errors="replace", or fix them)'
        ) from None


def _check_texts_container(texts: Any) -> None:
    """Refuse, for ``add``'s texts, a container whose iteration gives other strings than the texts.

    A dict or its ``keys()`` / ``items()`` view (keys are usually ids), bytes, a table with
    ``.columns``: refused as :func:`~kl_retrievers._encoding.check_texts` refuses them, with its message.
    A :class:`~kl_retrievers.gaussian.Gaussians` (``add(g)``) is refused with a hint to pass it as ``gaussians=``.
    """
    if isinstance(texts, Gaussians):  # add(g): the Gaussians given where the texts go
        raise TypeError(
            "add's first positional argument is texts (the documents' strings); got a Gaussians: pass it by "
            "keyword, gaussians=g (add(gaussians=g), or add(texts, gaussians=g) to keep the texts too)"
        )
    if isinstance(texts, (Mapping, KeysView, ItemsView, bytes, bytearray, memoryview)) or hasattr(texts, "columns"):
        check_texts(texts, "texts", allow_str=False)  # raises its TypeError, which says what to pass


def _refuse_unordered(name: str, given: object) -> None:
    """Refuse a set for ``add``'s ``name`` argument: its iteration order is arbitrary (a dict's keys keep theirs)."""
    if isinstance(given, AbstractSet) and not isinstance(given, KeysView):
        raise TypeError(
            f"{name} is a {type(given).__name__}, whose iteration order is arbitrary, so it cannot be paired "
            f"with the other arguments of add: pass a list, in order; got {given!r:.80}"
        )


def _check_texts_and_ids(
    texts: Sequence[str] | None, gaussians: Gaussians | None, ids: Sequence[str] | None
) -> tuple[list[str | None] | None, list[str] | None]:
    """``add``'s texts and ids as lists, checked before anything is encoded.

    A set (its iteration order is arbitrary) is refused for either. For ``texts``, the containers whose
    iteration gives other strings than the texts are refused as :func:`~kl_retrievers._encoding.check_texts`
    refuses them, with its message: a dict or its ``keys()`` / ``items()`` view (keys are usually ids),
    bytes, a table with ``.columns``. For ``ids``, a dict's ``keys()`` view is taken (it keeps the
    dict's order); its ``items()`` view ((key, value) pairs) is refused.
    """
    if texts is not None and isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    _check_texts_container(texts)
    if isinstance(ids, ItemsView):
        raise TypeError(
            f"ids is a {type(ids).__name__}, whose items are a dict's (key, value) pairs, not ids: pass a list, "
            f"in order (e.g. list(d) for the dict's keys); got {ids!r:.80}"
        )
    for name, given in (("texts", texts), ("ids", ids)):
        _refuse_unordered(name, given)
    text_list: list[str | None] | None = None
    if texts is not None:
        text_list = list(texts)
        for j, text in enumerate(text_list):
            if not isinstance(text, str) and (text is not None or gaussians is None):
                raise TypeError(f"texts[{j}] must be a str (or None with gaussians); got {type(text).__name__}")
            if text is not None:
                _check_utf8(text, f"texts[{j}]")
    if ids is None:
        return text_list, None
    if isinstance(ids, str):
        raise ValueError("ids must be a sequence of strings, not a single string")
    id_list = _id_list(ids)  # a bad or repeated id fails before any encoding
    for j, doc_id in enumerate(id_list):
        _check_utf8(doc_id, f"ids[{j}]")
    _check_unique(id_list)
    if text_list is not None and len(id_list) != len(text_list):
        raise ValueError(f"got {len(id_list)} ids but {len(text_list)} texts")
    return text_list, id_list


def _json_default(value: Any) -> Any:
    """What ``json.dumps`` cannot hold but a metadata value often is: numpy scalars and arrays, dates and times."""
    if isinstance(value, (np.generic, np.ndarray, datetime.datetime, datetime.date, datetime.time)):
        return stored_form(value)  # the same form a filter compares with
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _non_finite_at(metadata: Mapping[Any, Any]) -> tuple[str, float] | None:
    """Where ``metadata`` holds a NaN or infinite number: ``(its key path, the number)``, else ``None``.

    Numbers are looked for as the store would write them (numpy scalars and arrays converted); a value JSON
    cannot hold at all (a set) is skipped, so a NaN is named whatever else the metadata holds. The walk goes
    level by level, without recursion: metadata may nest as deeply as ``add`` takes it.

    Examples:
        >>> _non_finite_at({"title": "x", "nested": {"score": float("nan")}})
        ("['nested']['score']", nan)
        >>> _non_finite_at({"v": np.array([1.0, np.inf], dtype=np.float32), "s": {1}})
        ("['v'][1]", inf)
        >>> _non_finite_at({"v": 1.0}) is None
        True
    """

    def convert(value: Any) -> Any:
        try:
            return _json_default(value)
        except TypeError:
            return None

    try:  # NaN and infinities as JSON's extension (json.loads reads them back as floats)
        plain = json.loads(json.dumps(metadata, ensure_ascii=False, default=convert))
    except (TypeError, ValueError, RecursionError):  # a circular reference, or nesting JSON cannot write
        return None
    todo: list[tuple[str, Any]] = [("", plain)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path, value
        items: Iterable[tuple[Any, Any]] = ()
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        todo.extend((f"{path}[{key!r}]", item) for key, item in reversed(list(items)))  # the first key first
    return None


def _metadata_list(metadatas: Sequence[Mapping[Any, Any] | None] | None, n: int) -> list[dict[str, Any]]:
    """One metadata dict per document (``{}`` for ``None``): exactly what its JSON round trip gives.

    Stores save metadata as JSON, so what is kept in memory is ``json.loads(json.dumps(m))``:
    a search before and after a save and load sees the same values (tuples become lists,
    non-string keys strings). Values JSON cannot hold are converted first: numpy scalars to
    Python numbers (``.item()``), numpy arrays to lists, ``datetime`` / ``date`` / ``time`` to
    ISO 8601 strings (``.isoformat()``). Anything else raises ``TypeError``; NaN and infinities raise
    ``ValueError``, naming their key path (``metadatas[0] holds nan at ['nested']['score']: ...``).
    The result is the store's own copy: a caller changing a nested list or dict later changes nothing.

    Examples:
        >>> import datetime
        >>> _metadata_list([{"t": (1, 2), 3: np.int64(4), "d": datetime.date(2024, 5, 1)}], 1)
        [{'t': [1, 2], '3': 4, 'd': '2024-05-01'}]
    """
    if metadatas is None:
        return [{} for _ in range(n)]
    if isinstance(metadatas, (str, bytes, Mapping)):
        raise TypeError(f"metadatas must be a sequence of dicts (one per document); got {type(metadatas).__name__}")
    out = []
    for j, m in enumerate(metadatas):
        if m is not None and not isinstance(m, Mapping):
            raise TypeError(f"metadatas[{j}] must be a dict or None; got {type(m).__name__}")
        out.append(dict(m) if m is not None else {})
    if len(out) != n:
        raise ValueError(f"got {len(out)} metadatas but {n} documents")
    try:  # one JSON round trip for the batch; any problem is found again row by row below, to name the row
        dumped_all = json.dumps(out, allow_nan=False, ensure_ascii=False, default=_json_default)
        _check_utf8(dumped_all, "metadatas (as JSON)")
        loaded_all = json.loads(dumped_all)
    except (TypeError, ValueError):
        loaded_all = None
    if loaded_all is not None and _same_json(loaded_all, dumped_all):
        return list(loaded_all)
    kept = []
    for j, m in enumerate(out):
        try:  # fail early on what JSON cannot hold (stores save metadata as JSON)
            dumped = json.dumps(m, allow_nan=False, ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError) as exc:
            found = _non_finite_at(m)
            if found is not None:  # a bad value, not a bad type
                path, number = found
                if len(path) > 200:  # nested very deeply: the outermost and innermost keys, whole
                    path = f"{path[: path.rfind(']', 0, 80) + 1]}...{path[path.find('[', len(path) - 100) :]}"
                raise ValueError(
                    f"metadatas[{j}] holds {number} at {path}: metadata values must be JSON values, whose numbers "
                    "are finite (not NaN or infinity; store None, or drop the key)"
                ) from None
            raise TypeError(f"metadatas[{j}] is not JSON-serialisable: {exc}") from None
        _check_utf8(dumped, f"metadatas[{j}] (as JSON)")
        loaded = json.loads(dumped)  # memory keeps what disk keeps
        if not _same_json(loaded, dumped):
            where, same = _colliding_keys(m, f"metadatas[{j}]") or (f"metadatas[{j}]", [])
            raise TypeError(
                f"{where} has keys that are the same once written as JSON strings: {same} (JSON keys are strings, "
                "so a dict cannot hold both 1 and '1', or True and 'true'; rename one of them)"
            )
        kept.append(loaded)
    return kept


def _same_json(loaded: Any, dumped: str) -> bool:
    """Whether ``loaded = json.loads(dumped)`` lost nothing: no dict, at any depth, had two keys of one JSON spelling.

    Such keys (``1`` and ``"1"``) are written twice and read back once, so the text written again differs;
    with none, a JSON text read and written again is the same text. One C-level pass, however deep the metadata.
    """
    return json.dumps(loaded, allow_nan=False, ensure_ascii=False) == dumped


def _colliding_keys(value: Any, path: str) -> tuple[str, list[str]] | None:
    """The first dict in ``value`` (depth first) with keys of the same JSON spelling: ``(its path, those keys)``.

    Examples:
        >>> _colliding_keys({"a": [{"m": {1: "int", "1": "str"}}]}, "metadatas[0]")
        ("metadatas[0]['a'][0]['m']", ['1'])
        >>> _colliding_keys({"a": [1, 2]}, "metadatas[0]") is None
        True
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()  # as the store writes it (an object array may hold dicts)
    if isinstance(value, Mapping):
        keys = sorted(key if isinstance(key, str) else json.dumps(key) for key in value)  # as JSON spells them
        same = sorted({key for key in keys if keys.count(key) > 1})
        if same:
            return path, same
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _colliding_keys(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def _new_documents(
    store: GaussianStore,
    texts: Sequence[str] | None,
    gaussians: Gaussians | None,
    ids: Sequence[str] | None,
    metadatas: Sequence[Mapping[Any, Any] | None] | None,
) -> _NewDocuments | None:
    """Check an ``add`` call's arguments; ``None``: nothing to add.

    Texts without Gaussians are encoded with ``store.encoder`` (``store.batch_size``,
    ``store.show_progress_bar``).
    """
    text_list, id_list = _check_texts_and_ids(texts, gaussians, ids)
    meta_values: list[dict[str, Any]] | None = None
    if gaussians is None:
        if text_list is None:
            raise ValueError("add needs texts (with an encoder) or gaussians")
        if not text_list:
            return None  # nothing to encode: no encoder needed (nor loaded)
        # one Gaussian per text: the metadata (lengths, types, JSON) is checked before any text is encoded
        meta_values = _metadata_list(metadatas, len(text_list))
        encoder = store._text_encoder("adding texts without gaussians", "pass gaussians= (one per text)")
        gaussians = encoder.encode_documents(
            text_list, batch_size=store.batch_size, show_progress_bar=store.show_progress_bar
        )
    g = _as_numpy_gaussians(gaussians, "document gaussians")  # type: ignore[arg-type]
    if store.dim is not None and g.dim != store.dim:  # also for an empty batch, which adds nothing
        raise ValueError(f"document gaussians have dimension {g.dim}; this store has dimension {store.dim}")
    check_float32_scorable(g, "document")  # stored as float32 and scored through d~: names the row
    n = len(g)
    text_values: list[str | None] = text_list if text_list is not None else [None] * n
    if len(text_values) != n:
        raise ValueError(f"got {len(text_values)} texts but {n} gaussians")
    id_values = [uuid.uuid4().hex for _ in range(n)] if id_list is None else id_list
    if len(id_values) != n:
        raise ValueError(f"got {len(id_values)} ids but {n} documents")
    if meta_values is None:
        meta_values = _metadata_list(metadatas, n)
    if n == 0:
        return None
    return _NewDocuments(g, text_values, id_values, meta_values)


def _query_gaussians(
    queries: str | Sequence[str] | Gaussians,
    *,
    encoder: Any,
    batch_size: int,
    dim: int | None,
    load_encoder: Callable[[], Any] | None = None,
) -> Gaussians:
    """Query texts (encoded) or a Gaussians batch, checked and as float64.

    ``load_encoder`` gives the encoder when ``encoder`` is ``None`` and there is text to encode (a store's
    :meth:`GaussianStore._text_encoder`, which raises naming what to pass when there is none).
    """
    if isinstance(queries, Gaussians):
        g = _as_numpy_gaussians(queries, "query gaussians")
    else:
        texts = _query_texts(queries)
        if not texts:
            return Gaussians(np.zeros((0, dim or 1)), np.ones((0, dim or 1)), validate=False)
        if encoder is None and load_encoder is not None:
            encoder = load_encoder()
        if encoder is None:
            raise ValueError("searching by text needs an encoder; pass query Gaussians instead")
        g = _as_numpy_gaussians(
            encoder.encode_queries(texts, batch_size=query_batch_size(encoder, batch_size), show_progress_bar=False),
            "query gaussians",
        )
    if dim is not None and g.dim != dim:
        raise ValueError(f"query gaussians have dimension {g.dim}; this store has dimension {dim}")
    check_float32_scorable(g, "query")  # q~ is searched in float32: names the row
    return g.astype(np.float64)


def _query_texts(queries: Any) -> list[str]:
    """Query texts as a list, read once (a generator too), each checked: raises naming a bad item's position.

    A dict (its keys, not a BEIR ``{qid: text}``'s texts), a set (arbitrary order), a table (its column
    names) or bytes are refused as :func:`~kl_retrievers._encoding.check_texts` refuses them. Arrays of numbers
    (query means, or a ``(mean, var)`` pair) are refused with a hint to wrap them as ``Gaussians(mean, var)``.

    Examples:
        >>> _query_texts(q for q in ["a", "b"])
        ['a', 'b']
        >>> _query_texts(["a", None])
        Traceback (most recent call last):
        TypeError: queries[1] is NoneType; every text must be a str
    """
    if queries is None or not hasattr(queries, "__iter__"):
        raise TypeError(f"queries must be query texts or a Gaussians batch; got {type(queries).__name__}")
    try:
        return check_texts(queries, "queries")
    except TypeError as exc:
        # an array of numbers (means, or a tensor), or arrays in a list or tuple ((mean, var)): Gaussians meant
        numeric = hasattr(queries, "ndim") and getattr(getattr(queries, "dtype", None), "kind", None) != "O"
        if numeric or (isinstance(queries, (list, tuple)) and any(getattr(q, "ndim", 0) >= 1 for q in queries)):
            raise TypeError(f"{exc}: pass query Gaussians as Gaussians(mean, var)") from None
        raise


def _one_query(query: str | Gaussians) -> list[str] | Gaussians:
    """``search``'s single query as a batch of one for ``search_batch``."""
    if isinstance(query, Gaussians) and len(query) != 1:
        raise ValueError(f"search takes one query; got {len(query)} (use search_batch)")
    if not isinstance(query, (str, Gaussians)):
        raise TypeError(f"query must be a string or Gaussians; got {type(query).__name__}")
    return query if isinstance(query, Gaussians) else [query]


#: The models stores loaded by name (:func:`_shared_saved_model`), each while anything holds it: key -> model.
_SHARED_MODELS: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
#: What each shared model was when loaded (:func:`_model_state`): a changed one is not handed out again.
_SHARED_MODEL_STATES: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
_SHARED_MODELS_LOCK = threading.Lock()  # guards the dicts
#: One lock per key while a thread loads (or waits to load) that model, with the number of those threads: the
#: last one out removes it, so a process that loads many models keeps no lock for each.
_SHARED_MODEL_LOADS: dict[tuple[Any, ...], list[Any]] = {}


def _folder_stamp(name: str) -> tuple[Any, ...] | None:
    """For a name that is a local folder: its absolute path, and the size, modification time (ns) and inode of
    each entry in it (a model saved again in place gives another stamp); ``None`` for any other name."""
    try:
        folder = user_path(name)
        if not folder.is_dir():
            return None
        stats = []
        with os.scandir(folder) as entries:
            for entry in entries:
                info = entry.stat()
                stats.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
        return (str(folder.resolve()), tuple(sorted(stats)))
    except (OSError, ValueError):  # unreadable, or not a path at all: keyed by the name alone
        return None


def _model_state(model: Any) -> tuple[Any, ...]:
    """What decides whether a shared model is still the one loaded: for each of its torch parameters and buffers,
    its identity, in-place version counter (an optimizer step, ``load_state_dict`` or an in-place edit bumps it),
    dtype, device and data pointer (``.half()``, ``.to()``, a ``.data`` swap). Empty for a model without torch
    tensors (ONNX), whose weights cannot be changed in place."""
    state: list[Any] = []
    for attr in ("parameters", "buffers"):
        tensors = getattr(model, attr, None)
        if not callable(tensors):
            continue
        try:
            state.extend((id(t), int(t._version), str(t.dtype), str(t.device), int(t.data_ptr())) for t in tensors())
        except (AttributeError, RuntimeError, TypeError):  # not torch tensors: nothing to compare there
            continue
    return tuple(state)


def _shared_saved_model(name: str, backend: Backend | None, weights: str | None = None) -> Any:
    """``load_model(name, backend=backend)``, shared by every store that loads the same model while any holds it.

    A process-wide cache of weak references (thread-safe; one thread loads a given model, the others wait
    and get it) keyed by what decides what the model computes: ``name``, ``backend``, the folder a name
    of a local folder resolves to with the size, time and inode of its entries (a relative name read from
    another working folder, or a model saved again in place, is another key), the weights identity the
    store records (stores encoded with other weights never share), and the loader itself. A model no
    store holds any more is freed as before, and the next store to need it loads it again. A model changed
    since it was loaded (a parameter edited in place or trained, ``.half()``, ``.to()``: :func:`_model_state`)
    is not handed out again: the next store loads its own copy, which later ones share. Stores that share a
    model see what their users do to it meanwhile.

    Args:
        name: The model's recorded ``name_or_path`` (a bundled name, a folder or a hub id).
        backend: ``"torch"``, ``"onnx"`` or ``None`` (:func:`kl_retrievers.pretrained.default_backend`).
        weights: The weights identity the store records for its documents (``None``: not known).

    Raises:
        Exception: What :func:`kl_retrievers.load_model` raises (nothing is kept then; the next call loads again).
    """
    from kl_retrievers import pretrained

    loader = pretrained.load_model  # looked up at each call, as before (a stand-in loads under another key)
    key = (name, backend, _folder_stamp(name), weights, loader)

    def unchanged() -> Any:  # the cached model if it is still what was loaded (caller holds _SHARED_MODELS_LOCK)
        cached = _SHARED_MODELS.get(key)
        if cached is None:
            return None
        try:
            loaded = _SHARED_MODEL_STATES.get(cached)
        except TypeError:  # not hashable: never cached (see below)
            return None
        if loaded is not None and _model_state(cached) == loaded:
            return cached
        logger.debug("the shared model %r changed since it was loaded: loading it again", name)
        del _SHARED_MODELS[key]
        return None

    with _SHARED_MODELS_LOCK:
        model = unchanged()
        if model is not None:
            return model
        entry = _SHARED_MODEL_LOADS.setdefault(key[:4], [threading.Lock(), 0])
        entry[1] += 1  # this thread holds or waits on the lock
    try:
        with entry[0]:
            with _SHARED_MODELS_LOCK:
                model = unchanged()
            if model is not None:  # another thread loaded it meanwhile
                return model
            model = loader(name, backend=backend)
            state = _model_state(model)
            try:
                with _SHARED_MODELS_LOCK:
                    _SHARED_MODEL_STATES[model] = state
                    _SHARED_MODELS[key] = model
            except TypeError:  # an object that cannot be referenced weakly (or hashed) is not shared
                logger.debug("the model %r (%s) cannot be shared between stores", name, type(model).__name__)
            return model
    finally:
        with _SHARED_MODELS_LOCK:
            entry[1] -= 1
            if not entry[1]:
                _SHARED_MODEL_LOADS.pop(key[:4], None)


def _identity_encoder(encoder: Any) -> Any:
    """The object a store reads its model's identity from (name, config, weights, backbone and tokenizer identities)
    and records: ``encoder``, or the Gaussian encoder a wrapper holds (an object with ``_recorded_encoder()``, as
    :class:`kl_retrievers.langchain.KLEmbeddings` has), so ``KLStore(KLEmbeddings(enc))`` records what
    ``KLStore(enc)`` does."""
    inner = getattr(encoder, "_recorded_encoder", None)
    return inner() if callable(inner) else encoder


#: What a store reads from its encoder (duck-typed, see :class:`Encoder`): the methods that encode text, and the
#: name a save records. An object with none of them can serve a store for nothing (:func:`_refuse_model_name`);
#: one is enough: an encoder of queries alone serves a store whose documents are added as Gaussians, and an
#: object with ``name_or_path`` alone names the model of a store whose Gaussians are computed elsewhere.
_ENCODER_ATTRIBUTES = ("encode_queries", "encode_documents", "name_or_path")

#: What a Hugging Face ``transformers`` model or tokenizer has (beside its ``name_or_path``): such an object without
#: an encode method is a backbone or tokenizer passed for the Gaussian encoder built on it, not a named stand-in.
_PRETRAINED_ATTRIBUTES = ("from_pretrained", "save_pretrained")


def _refuse_model_name(encoder: Any, call: str) -> None:
    """Refuse, as ``encoder``, a model name or folder (a str, bytes or a path) or anything that is not an encoder.

    A model name or folder is refused naming the call that loads it. Taken are ``None``, an object with
    ``encode_queries`` or ``encode_documents``, and an object with only ``name_or_path`` (what a store reads from
    an encoder: :data:`_ENCODER_ATTRIBUTES`; a named stand-in for a store whose Gaussians come from elsewhere)
    unless it looks like a Hugging Face model or tokenizer (:data:`_PRETRAINED_ATTRIBUTES`). Anything else is
    refused naming its value, with a hint where one is known: a dimension (``KLStore(384)``, as FAISS's
    ``IndexFlatIP(384)``) is pointed at ``dim=``, a LangChain ``Embeddings`` at its wrapper, a LlamaIndex
    ``KLEmbedding`` at its ``encoder``, a ``transformers`` model or tokenizer at ``load_model`` and
    ``GaussianEncoder.from_backbone``. Each would otherwise fail only at the first add or text search (an
    ``AttributeError``); the framework adapters refuse a model name with the same words.

    Args:
        encoder: What was given.
        call: How to pass the loaded model instead, ``{}`` standing for ``load_model(NAME)``
            (``"KLStore(encoder={})"``).

    Raises:
        TypeError: ``encoder`` is a model name or folder, or not an encoder.

    Examples:
        >>> _refuse_model_name("minilm-gauss-soup", "KLStore.load(path, encoder={})")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: got the model name or folder 'minilm-gauss-soup' where ... KLStore.load(path, encoder=load_model(...
        >>> _refuse_model_name(384, "KLStore(encoder={})")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: encoder must be a Gaussian encoder ... or None; got int 384: ... pass KLStore(dim=384)
    """
    if isinstance(encoder, (str, bytes, os.PathLike)):
        name = str(os.fsdecode(encoder))  # a str subclass (numpy's str_) would show its own repr
        raise TypeError(
            f"got the model name or folder {name!r} where an encoder is expected: load it with "
            f"kl_retrievers.load_model({name!r}) and pass that as encoder, e.g. " + call.format(f"load_model({name!r})")
        )
    if encoder is None or hasattr(encoder, "encode_queries") or hasattr(encoder, "encode_documents"):
        return
    pretrained = any(hasattr(encoder, name) for name in _PRETRAINED_ATTRIBUTES)
    if hasattr(encoder, "name_or_path") and not pretrained:
        return  # a named stand-in: what a save records, for Gaussians added as such
    hint = ""
    constructor = call.endswith("(encoder={})") and ".load(" not in call
    if constructor and isinstance(encoder, (int, np.integer)) and not isinstance(encoder, bool):
        hint = f": to set the Gaussian dimension, pass {call[: -len('(encoder={})')]}(dim={int(encoder)})"
    elif callable(getattr(encoder, "embed_documents", None)):
        hint = ": a LangChain Embeddings is wrapped by kl_retrievers.langchain.EmbeddingsGaussianEncoder(embeddings)"
    elif callable(getattr(encoder, "get_text_embedding", None)):
        inner = getattr(encoder, "encoder", None)
        if hasattr(inner, "encode_queries") or hasattr(inner, "encode_documents"):
            hint = ": a LlamaIndex KLEmbedding wraps its Gaussian encoder: pass kl_embedding.encoder"
        else:
            hint = ": a LlamaIndex embedding model gives vectors, not Gaussians (pass kl_retrievers.load_model(...))"
    elif pretrained:
        hint = (
            ": a Hugging Face model or tokenizer is not a Gaussian encoder; load one with kl_retrievers.load_model("
            "name), or start one on this backbone with kl_retrievers.GaussianEncoder.from_backbone(name_or_path)"
        )
    shown = " ".join(repr(encoder).split())  # a torch module's repr spans many lines
    raise TypeError(
        "encoder must be a Gaussian encoder (an object with encode_queries / encode_documents, such as "
        "kl_retrievers.load_model(...) returns: " + call.format("load_model(...)") + ") or None; got "
        f"{type(encoder).__name__} {shown:.80}{hint}"
    )


class _NotCopyable:
    """Refuses ``copy.copy``, ``copy.deepcopy`` and pickling with a ``TypeError`` that says what to do instead.

    A store holds locks, an index and (Milvus) a connection: ``copy.copy`` shared all of them with the
    original (an add on the copy changed the original too), and a deep copy or a pickle failed on a lock
    (``cannot pickle '_thread.lock' object``). The library never pickles: :meth:`save` and :meth:`load`
    make an independent copy.

    Examples:
        >>> import copy
        >>> from kl_retrievers.store import KLStore
        >>> copy.copy(KLStore())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: a KLStore cannot be copied with copy.copy: ... KLStore.load(store.save(path)) ...
    """

    def _copy_refusal(self, how: str) -> TypeError:
        """The error for ``how`` (``"copy.copy"``, ``"copy.deepcopy"`` or ``"pickle"``)."""
        name = type(self).__name__
        if how == "copy.copy":
            why = (
                f"a {name} cannot be copied with copy.copy: the copy would share the original's locks, index and "
                "documents, so that a change to the copy would change the original"
            )
        else:
            what = "deep-copied (copy.deepcopy)" if how == "copy.deepcopy" else "pickled"
            why = f"a {name} cannot be {what}: it holds locks and an index, and the library never pickles a store"
        if callable(getattr(type(self), "save", None)) and callable(getattr(type(self), "load", None)):
            instead = f"save it and load the copy, {name}.load(store.save(path)) (mmap=True maps the files read-only)"
        else:
            instead = f"its documents live in its backend: open another {name} over the same collection"
        return TypeError(f"{why}. For an independent copy, {instead}")

    def __copy__(self) -> Any:
        raise self._copy_refusal("copy.copy")

    def __deepcopy__(self, memo: Any) -> Any:
        raise self._copy_refusal("copy.deepcopy")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise self._copy_refusal("pickle")


# ------------------------------------------------------------------ the interface
class GaussianStore(_NotCopyable, ABC):
    """The interface of every store: documents ranked by exact ``-KL(Q || D)``, higher is better.

    The public methods check their arguments the same way for every backend, encode texts with
    ``encoder`` and return :class:`SearchResult` / :class:`StoredDocument` / :class:`DeleteReport`.
    A backend sets ``_dim``, implements ``ids``, ``__len__`` and the hooks ``_add_documents``,
    ``_delete``, ``_documents``, ``_gaussians``, ``_prepare_filter`` and ``_search``, and optionally
    ``_delete_matching`` (for ``delete(filter=...)``) and (when it searches by the reduction of ``-KL`` to L2)
    ``_reduction``; a hybrid store (another score beside ``-KL``) would implement the same.

    A store cannot be copied (``copy.copy`` / ``copy.deepcopy``) or pickled (``TypeError``): ``save`` it
    and ``load`` the copy, where the backend has them.

    Attributes:
        encoder: Optional encoder with ``encode_queries`` / ``encode_documents`` returning numpy
            :class:`~kl_retrievers.gaussian.Gaussians`; needed to add or search by text.
        batch_size: Encoder batch size.
        show_progress_bar: Passed to the encoder when adding texts.

    Examples:
        >>> from kl_retrievers.store import KLStore
        >>> isinstance(KLStore(), GaussianStore)
        True
    """

    batch_size: int
    show_progress_bar: bool | None
    _dim: int | None  # set by the backend: None until the first add (or a dim given up front)

    @property
    def encoder(self) -> Any:
        """The encoder (``None``: none); assigning a model name or folder raises ``TypeError``.

        Examples:
            >>> from kl_retrievers.store import KLStore
            >>> KLStore().encoder = "minilm-gauss-soup"  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            TypeError: got the model name or folder 'minilm-gauss-soup' where an encoder is expected: ...
        """
        return self.__dict__.get("_encoder")

    @encoder.setter
    def encoder(self, value: Any) -> None:
        _refuse_model_name(value, "store.encoder = {}")
        self.__dict__["_encoder"] = value

    @property
    def dim(self) -> int | None:
        """The Gaussian dimension ``k`` (``None`` until known)."""
        return self._dim

    @property
    def norm_bound(self) -> float | None:
        """``M`` of the MIPS -> L2 reduction, the same for every backend that uses it.

        A bound on the norms of the shifted rows ``d^`` of the *centred* means (see :attr:`index_offset`).
        ``None`` before the first add and where no reduction is used (a flat ``KLStore``, a
        ``MilvusKLStore`` with ``metric="IP"``).
        """
        return self._reduction()[0]

    @property
    def index_offset(self) -> float:
        """The offset ``o`` subtracted from the first coordinate of the centred ``d~`` before the L2 reduction.

        The centred ``d~`` is that of the means minus the backend's centre of the document means (where it
        centres them: -KL is unchanged), not :func:`~kl_retrievers.gaussian.kl_document_vectors` of the stored
        Gaussians; the centre is internal, so ``o`` and :attr:`norm_bound` do not reduce vectors made outside
        the store. ``0`` where no reduction is used, and before an approximate ``KLStore`` index is built.
        """
        return self._reduction()[1]

    # ---------------------------------------------------------- backend hooks
    def _reduction(self) -> tuple[float | None, float]:
        """``(M, o)`` of the backend's reduction of ``-KL`` to L2 search; ``(None, 0.0)`` without one."""
        return None, 0.0

    @property
    @abstractmethod
    def ids(self) -> list[str]:
        """Ids of the stored documents."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of stored documents."""

    @abstractmethod
    def _add_documents(self, new: _NewDocuments) -> None:
        """Store checked documents (an existing id is replaced)."""

    @abstractmethod
    def _delete(self, ids: list[str]) -> DeleteReport:
        """Delete distinct ids; report the deleted and the missing ones."""

    def _delete_matching(self, ids: list[str] | None, filter: Any) -> DeleteReport:
        """Delete the documents ``filter`` (from :meth:`_prepare_filter`) matches, among distinct ``ids``
        (``None``: all), choosing and deleting them in one step; report the deleted and the missing ids.

        Optional: a backend without it deletes by id only (``delete(filter=...)`` raises ``NotImplementedError``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not delete by a filter (it implements no _delete_matching): "
            "delete by ids instead"
        )

    @abstractmethod
    def _documents(self, ids: list[str]) -> list[StoredDocument]:
        """Stored documents for ``ids`` in order, unknown ids skipped."""

    def _documents_matching(self, ids: list[str] | None, filter: Any) -> list[StoredDocument]:
        """The stored documents ``filter`` (from :meth:`_prepare_filter`) matches, among distinct ``ids`` (``None``:
        all), in the order of ``ids`` (unknown ids skipped), else in the backend's order.

        Optional: a backend without it reads documents by id only (``get_by_filter`` raises ``NotImplementedError``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not read documents by a filter (it implements no _documents_matching): "
            "read them by ids instead (get_by_ids)"
        )

    @abstractmethod
    def _gaussians(self, ids: list[str]) -> Gaussians:
        """Stored Gaussians for ``ids`` in order; ``KeyError`` for an unknown id."""

    @abstractmethod
    def _prepare_filter(self, filter: MetadataFilter | None) -> Any:
        """The backend's form of a metadata filter, checked before anything is searched."""

    @abstractmethod
    def _search(self, queries: Gaussians, k: int, filter: Any) -> list[list[SearchResult]]:
        """Top ``k`` for each of the checked float64 ``queries`` (``filter`` from :meth:`_prepare_filter`)."""

    def _check_k(self, k: Any) -> int:
        """``k`` checked (a backend may add its own limit)."""
        return check_k(k)

    def _is_empty(self) -> bool:
        """Whether a text query can be answered without encoding it (nothing to search)."""
        return len(self) == 0

    def _text_encoder(self, task: str, instead: str) -> Any:
        """The encoder for text that ``task`` must encode; ``ValueError`` naming what to pass when there is none.

        A backend that can load the model a saved store records (``KLStore``) overrides this to load it then.

        Args:
            task: What needs the encoder, for the message (``"searching by text"``).
            instead: What the caller can pass instead, for the message (``"pass query Gaussians instead"``).
        """
        if self.encoder is None:
            raise self._no_encoder(task, instead)
        return self.encoder

    def _no_encoder(self, task: str, instead: str, note: str = "") -> ValueError:
        """The error for ``task`` on a store without an encoder: how to give it one, or what to pass ``instead``.

        Examples:
            >>> from kl_retrievers.store import KLStore
            >>> print(KLStore()._no_encoder("searching by text", "pass query Gaussians instead"))
            ... # doctest: +NORMALIZE_WHITESPACE
            searching by text needs an encoder, and this KLStore has none: pass one, as
            KLStore(encoder=load_model(...)) or KLStore.load(path, encoder=load_model(...))
            (from kl_retrievers import load_model), or pass query Gaussians instead
        """
        name = type(self).__name__
        ways = f"{name}(encoder=load_model(...))"
        if callable(getattr(type(self), "load", None)):
            ways += f" or {name}.load(path, encoder=load_model(...))"
        return ValueError(
            f"{task} needs an encoder, and this {name} has none{note}: pass one, as {ways} "
            f"(from kl_retrievers import load_model), or {instead}"
        )

    # ------------------------------------------------------------ the owner's guard
    def _set_owner(self, owner: object) -> None:
        """Make this store the half of the composite store ``owner`` (a :class:`~kl_retrievers.hybrid.KLHybridStore`).

        From then on :meth:`add` and :meth:`delete` refuse (``RuntimeError``) unless the owner calls them, inside
        :meth:`_owner_writes`: a write to this half alone would leave the owner's other half (BM25) stale. The
        owner is held by a weak reference: once it is garbage-collected this store has no owner (nothing is left
        to go stale), so it takes writes again and may become the half of another composite store. A str
        ``owner`` (a composite store's class name) makes the ownership permanent.

        Raises:
            ValueError: This store already belongs to a live composite store (two owners would each miss the
                other's writes).
        """
        self._refuse_second_owner()
        if isinstance(owner, str):
            self.__dict__["_owner"] = owner
        else:
            self.__dict__["_owner"] = (type(owner).__name__, weakref.ref(owner))

    def _owner_name(self) -> str | None:
        """The class name of the live composite store this store is the half of (``None``: none, or it is gone)."""
        owner = self.__dict__.get("_owner")
        if owner is None or isinstance(owner, str):
            return owner
        name, ref = owner
        return name if ref() is not None else None

    def _refuse_second_owner(self) -> None:
        """Raise ``ValueError`` when this store already belongs to a composite store (see :meth:`_set_owner`)."""
        owner = self._owner_name()
        if owner is not None:
            raise ValueError(
                f"this {type(self).__name__} is already the KL half of a {owner}; a store can "
                "be the half of one hybrid store only (each would miss the other's writes): give this one a "
                f"{type(self).__name__} of its own"
            )

    @contextmanager
    def _owner_writes(self) -> Iterator[None]:
        """Let the owner's :meth:`add` / :meth:`delete` calls through, in this thread (the owner's write lock)."""
        previous = self.__dict__.get("_owner_writer")
        self.__dict__["_owner_writer"] = threading.get_ident()
        try:
            yield
        finally:
            self.__dict__["_owner_writer"] = previous

    def _check_writable(self, method: str) -> None:
        """Refuse ``method`` (a write) on the half of a composite store unless its owner makes it."""
        owner = self._owner_name()
        if owner is None or self.__dict__.get("_owner_writer") == threading.get_ident():
            return
        raise RuntimeError(
            f"{type(self).__name__}.{method}: this store is the KL half of a {owner}, which is read-only on its "
            f"own: {method} here would leave the {owner}'s BM25 half stale. Change documents through the "
            f"{owner} ({owner}.add / upsert / delete; LangChain's KLHybridRetriever.add_documents / delete; "
            "LlamaIndex's KLHybridRetriever.add_nodes / delete_ref_doc). Searching this half (also wrapped in a "
            "vector store) is fine"
        )

    # ------------------------------------------------------------ the interface
    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self._documents([doc_id]))

    def add(
        self,
        texts: Sequence[str] | None = None,
        *,
        gaussians: Gaussians | None = None,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[Any, Any] | None] | None = None,
    ) -> list[str]:
        """Add (or replace: upsert) documents.

        Args:
            texts: Document texts; encoded with the encoder when ``gaussians`` is not given.
            gaussians: Precomputed document Gaussians (numpy or torch), one per document.
            ids: Document ids, each a ``str`` (uuid4 hex when omitted); never coerced with ``str()``.
                An existing id is replaced (upsert).
            metadatas: One JSON-serialisable dict per document (or ``None``). Stores keep its
                JSON round trip, in memory as on disk (or in Milvus): non-string keys become
                strings (``{1: "a"}`` as ``{"1": "a"}``) and tuples lists, at once and after a
                save and load alike. numpy scalars and arrays are converted to numbers and lists,
                ``datetime`` / ``date`` / ``time`` to ISO 8601 strings; NaN and infinite values
                are refused (``ValueError``, naming the key path).

        Returns:
            The ids, in input order.

        Documents are stored in float32 (``KLStore`` keeps the means and variances rounded to float32,
        ``MilvusKLStore`` their float32 rewrite): searches score, exactly, those rounded documents
        (:meth:`get_gaussians` returns them), so a score can differ from the float64 ``-KL`` of the
        Gaussians as given by their rounding; where that matters (means far from 0 next to tiny
        variances), centre the means (documents and queries by one vector: ``-KL`` is unchanged).

        Raises:
            ValueError: Mismatched lengths, wrong dimension, non-finite values (in the Gaussians, or a
                metadata number: the message names its key path), duplicate ids
                within the call (named), texts without an encoder, or a text, id or metadata
                string holding a lone surrogate (it could not be saved as UTF-8). An IVF index (``KLStore``:
                also ``compression="pq"``) refuses a document whose reduced norm would set the L2-reduction
                bound ``M`` above about 2.3e18 (tiny variances, or a mean far from the others), where the
                float32 k-means that trains the index overflows and aborts the process: the message names
                the document, and nothing of the call is added (docs/ann.md, *One outlier document*).
            TypeError: An id that is not a ``str``, a text that is not a ``str``, or metadata that
                is not a JSON-serialisable dict (the message names its position); a ``Gaussians`` passed
                positionally (it goes to ``gaussians=``, a keyword); a set of texts or ids
                (its iteration order is arbitrary, so it cannot be paired with the other arguments); a
                dict, its ``keys()`` or ``items()`` view, bytes or a table (``.columns``) as ``texts``
                (their iteration gives other strings than the texts); a dict's ``items()`` view as
                ``ids``. A dict's ``keys()`` view is taken as ``ids`` (it keeps the dict's order).
                All of these, and the number of ids and of metadatas, are checked before any text is encoded.

        Examples:
            >>> import numpy as np
            >>> from kl_retrievers.store import KLStore
            >>> s = KLStore()
            >>> s.add(["x"], gaussians=Gaussians(np.zeros((1, 3)), np.ones((1, 3))), ids=["x1"])
            ['x1']
        """
        self._check_writable("add")
        new = _new_documents(self, texts, gaussians, ids, metadatas)
        if new is None:
            return []
        self._add_documents(new)
        return new.ids

    def delete(self, ids: Sequence[str] | None = None, *, filter: MetadataFilter | None = None) -> DeleteReport:
        """Delete documents by id, by a metadata filter, or both; unknown ids are reported (warning), never raised.

        With ``filter``, a ``KLStore`` chooses and deletes in two phases, for every kind of filter (a
        dict or a callable): it judges each document's metadata (no text is copied) under the read lock,
        so that searches go on meanwhile; then, under the write lock, it deletes the matches if no other
        thread wrote in between, else it chooses them again there first. Either way no write comes
        between the final choice and the deletion, so a document upserted by another thread meanwhile is
        judged as it is when deleted, never on metadata it no longer has (a callable filter may therefore
        run twice on a document). A ``KLStore`` keeps a deleted document's id and Gaussian (not its text or
        metadata) until it compacts, in a saved folder too: ``compact()`` before ``save()`` to leave them out.
        (A ``MilvusKLStore`` is atomic only against the other threads using the same ``MilvusKLStore`` object:
        another object, even over the same collection in the same process, or another process may write between
        its query of the matching ids and their deletion.)

        Args:
            ids: Ids to delete: a sequence of ``str``, or one ``str`` (one id, like
                :meth:`get_by_ids` and :meth:`get_gaussians`). With ``filter``: only these ids are
                considered; ``None``: every stored document is.
            filter: A metadata filter as :meth:`search` takes it (a dict, see
                :mod:`kl_retrievers.filters`, or a callable ``metadata -> bool`` where the backend
                takes one): only the documents it matches are deleted. Ids it does not match are kept
                and reported neither deleted nor missing.

        Returns:
            A :class:`DeleteReport` with the deleted ids (in the order of ``ids``; without ``ids``, in the
            backend's order: insertion order for a ``KLStore``) and the missing ones.

        Raises:
            TypeError: An id that is not a ``str``.
            ValueError: Neither ``ids`` nor ``filter`` given (to delete everything, pass ``filter={}``),
                or a malformed filter.
            RuntimeError: A callable filter that modifies the store.
            NotImplementedError: ``filter`` given to a backend that deletes by id only.

        Examples:
            >>> import numpy as np
            >>> from kl_retrievers.store import KLStore
            >>> s = KLStore()
            >>> g = Gaussians(np.zeros((3, 2)), np.ones((3, 2)))
            >>> _ = s.add(gaussians=g, ids=["a", "b", "c"], metadatas=[{"src": "x"}, {"src": "y"}, {"src": "x"}])
            >>> s.delete(["a", "zz"])
            DeleteReport(deleted=['a'], missing=['zz'])
            >>> s.delete(filter={"src": "x"}), s.ids
            (DeleteReport(deleted=['c'], missing=[]), ['b'])
        """
        self._check_writable("delete")
        if ids is None and filter is None:
            raise ValueError(
                "delete needs ids, a filter, or both; got neither (to delete every document, pass filter={})"
            )
        id_list = None if ids is None else list(dict.fromkeys(_id_list(ids, ordered=False)))
        if filter is None:
            assert id_list is not None
            report = self._delete(id_list)
        else:
            report = self._delete_matching(id_list, self._prepare_filter(filter))
        if report.missing:
            logger.info("delete: %d id(s) not found and ignored: %s", len(report.missing), report.missing[:10])
        return report

    def get_by_ids(self, ids: Sequence[str]) -> list[StoredDocument]:
        """Documents for the given ids, in the given order; unknown ids are skipped.

        ``ids`` is a sequence of ``str`` or one ``str`` (one id); anything else raises ``TypeError``.

        Examples:
            >>> from kl_retrievers.store import KLStore
            >>> KLStore().get_by_ids(["nope"])
            []
        """
        return self._documents(_id_list(ids, ordered=False))

    def get_by_filter(self, filter: MetadataFilter | None, *, ids: Sequence[str] | None = None) -> list[StoredDocument]:
        """The documents whose metadata ``filter`` matches (``None``: every document), among ``ids`` (``None``: every
        stored document).

        Only the matching documents are read: a ``MilvusKLStore`` sends ``filter`` to Milvus, which returns the
        matching rows alone (on Milvus Lite a filter that :meth:`search` resolves to ids first, one with a long
        ``$in`` list or a negated order comparison, reads the metadata it needs for that, as a search does), and a
        ``KLStore`` judges the stored metadata without copying the other documents.

        Args:
            filter: A metadata filter as :meth:`search` takes it (a dict, see :mod:`kl_retrievers.filters`, or a
                callable ``metadata -> bool`` where the backend takes one); ``None`` or ``{}`` matches every document.
            ids: Only these ids are considered (a sequence of ``str``, or one ``str``; unknown ids are skipped).

        Returns:
            The matching documents, as :meth:`get_by_ids` returns them: in the order of ``ids``, else in the
            backend's order (insertion order for a ``KLStore``, primary-key order for a ``MilvusKLStore``).

        Raises:
            TypeError: An id that is not a ``str``.
            ValueError: A malformed filter (or a callable one, for a backend that filters outside Python).
            NotImplementedError: A backend that reads documents by id only.

        Examples:
            >>> import numpy as np
            >>> from kl_retrievers.store import KLStore
            >>> s = KLStore()
            >>> g = Gaussians(np.zeros((3, 2)), np.ones((3, 2)))
            >>> _ = s.add(gaussians=g, ids=["a", "b", "c"], metadatas=[{"src": "x"}, {"src": "y"}, {"src": "x"}])
            >>> [d.id for d in s.get_by_filter({"src": "x"})], [d.id for d in s.get_by_filter({}, ids=["c", "b"])]
            (['a', 'c'], ['c', 'b'])
        """
        id_list = None if ids is None else list(dict.fromkeys(_id_list(ids, ordered=False)))
        return self._documents_matching(id_list, self._prepare_filter(filter))

    def get_gaussians(self, ids: Sequence[str]) -> Gaussians:
        """Stored Gaussians for the given (existing) ids, in order; unknown ids raise ``KeyError``.

        ``ids`` is a sequence of ``str`` or one ``str`` (one id, as in :meth:`get_by_ids` and
        :meth:`delete`); anything else raises ``TypeError``.

        Examples:
            >>> import numpy as np
            >>> from kl_retrievers.store import KLStore
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["a"])
            >>> s.get_gaussians(["a"]).dim, len(s.get_gaussians("a"))
            (2, 1)
        """
        return self._gaussians(_id_list(ids, ordered=False))

    def search(self, query: str | Gaussians, k: int = 10, filter: MetadataFilter | None = None) -> list[SearchResult]:
        """Top-``k`` documents for one query, best first, scored by exact ``-KL(Q || D)``: higher is better.

        Exact for the documents as stored, in float32 (see :meth:`add`); the query is kept in float64.

        Args:
            query: Query text (needs an encoder; a ``KLStore`` loaded without one loads the model it
                was saved with) or one query Gaussian.
            k: Number of results, a positive integer; all matching documents when fewer exist.
            filter: Only documents whose metadata it matches are ranked (``None``: all): a dict in the
                operator syntax of :mod:`kl_retrievers.filters` (``{"lang": "en"}``,
                ``{"year": {"$gte": 2020}}``) or a callable ``metadata -> bool`` (a backend that filters
                outside Python, such as Milvus, takes dicts only).

        Returns:
            Ranked :class:`SearchResult` objects, best first (empty for an empty store). Each ``score`` is
            ``-KL(Q || D)`` (:data:`~kl_retrievers.gaussian.SCORE_NAME` ``"neg_kl"``), so **higher is
            better**: never above ``0``, which only a document equal to the query scores, and not bounded
            below (a score is not a similarity in ``[0, 1]``).

        Raises:
            ValueError: ``k`` not a positive integer (or above the backend's limit), wrong
                dimension, non-finite query, unknown filter operator.

        Examples:
            >>> import numpy as np
            >>> from kl_retrievers import Gaussians, KLStore
            >>> store = KLStore()
            >>> _ = store.add(gaussians=Gaussians(np.zeros((2, 2)), np.array([[1.0, 1.0], [2.0, 2.0]])), ids=["a", "b"])
            >>> query = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
            >>> [(hit.id, round(hit.score, 3)) for hit in store.search(query, k=2)]
            [('a', 0.0), ('b', -0.193)]
            >>> KLStore().search(query)
            []
        """
        return self.search_batch(_one_query(query), k=k, filter=filter)[0]

    def search_batch(
        self, queries: Sequence[str] | Gaussians, k: int = 10, filter: MetadataFilter | None = None
    ) -> list[list[SearchResult]]:
        """Top-``k`` results for each of several queries (texts or a Gaussians batch); see :meth:`search`.

        Args:
            queries: Query texts (a list or other ordered iterable of str, encoded in one batch) or a batch of
                query Gaussians.
            k: Results per query; see :meth:`search`.
            filter: A metadata filter applied to every query; see :meth:`search`.

        Returns:
            One ranked list of :class:`SearchResult` per query, in the order of ``queries``, each as
            :meth:`search` returns it (scores ``-KL(Q || D)``, higher is better).

        Raises:
            TypeError: A query that is not a str (naming its position), or a container whose iteration
                gives other strings than its texts: a dict (its keys: pass ``list(d.values())``), a set
                (arbitrary order), a table such as a DataFrame (its column names), bytes; also on an empty store.

        Examples:
            >>> import numpy as np
            >>> from kl_retrievers.store import KLStore
            >>> s = KLStore()
            >>> _ = s.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))))
            >>> [len(r) for r in s.search_batch(Gaussians(np.zeros((2, 2)), np.ones((2, 2))), k=2)]
            [2, 2]
        """
        k = self._check_k(k)
        prepared = self._prepare_filter(filter)
        if not isinstance(queries, Gaussians):
            queries = _query_texts(queries)  # checked (and a generator read once) before the empty-store shortcut
        if not isinstance(queries, Gaussians) and self._is_empty():  # nothing to search: encode nothing
            return [[] for _ in queries]
        qg = _query_gaussians(
            queries,
            encoder=self.encoder,
            batch_size=self.batch_size,
            dim=self.dim,
            load_encoder=lambda: self._text_encoder("searching by text", "pass query Gaussians instead"),
        )
        if len(qg) == 0:
            return []
        return self._search(qg, k, prepared)
