"""LangChain integration: embeddings, a vector store and retrievers ranked by ``-KL(Q || D)``.

Four pieces, all needing the ``[langchain]`` extra (``pip install "kl-retrievers[langchain]"``):

* :class:`KLEmbeddings` - LangChain ``Embeddings`` whose ``embed_query`` returns ``q~`` and whose
  ``embed_documents`` returns ``d~`` of the exact inner-product rewrite
  ``-KL(Q || D) = <q~, d~> + c(q)``.  The pair works in **any vector store that ranks by the raw
  inner product** (e.g. langchain-community ``FAISS`` with ``DistanceStrategy.MAX_INNER_PRODUCT``).
  **Cosine, L2 or normalising stores break the equivalence** and return wrong rankings; a warning
  is raised where that can be detected (see :func:`check_inner_product_store`).
* :class:`KLVectorStore` - a LangChain ``VectorStore`` over :class:`~kl_retrievers.index.KLStore`
  that reports the true ``-KL`` (higher is better) and stores the Gaussians themselves.
* :class:`KLRetriever` - a ``BaseRetriever`` whose documents carry their ``-KL`` score, the
  query's uncertainty (mean log-variance) and its calibrated confidence (P(top-1 relevant)) in
  their metadata, and which abstains (returns ``[]``) below ``min_confidence``.
* :class:`KLHybridRetriever` - the same over a :class:`~kl_retrievers.hybrid.KLHybridStore`:
  BM25 and ``-KL`` fused per query (``"rrf"``, ``"convex"``, ``"adaptive"``).

Examples:
    >>> from kl_retrievers.langchain import KLVectorStore
    >>> store = KLVectorStore.from_texts(["a cat sat", "tea and bread"])  # doctest: +SKIP
    >>> store.similarity_search_with_score("cat", k=1)  # doctest: +SKIP
    [(Document(id='...', metadata={}, page_content='a cat sat'), -0.3735...)]
"""

from __future__ import annotations

import enum
import functools
import inspect
import io
import itertools
import json
import logging
import math
import operator
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import uuid
import weakref
import zipfile
from collections import deque
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import numpy as np

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import BaseDocumentCompressor, BaseDocumentTransformer, Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
    from pydantic import ConfigDict, Field, PrivateAttr, SkipValidation, field_validator, model_validator
except ImportError as exc:  # pragma: no cover - exercised with langchain-core absent
    raise ImportError(
        'kl_retrievers.langchain needs langchain-core; install it with: pip install "kl-retrievers[langchain]"'
    ) from exc

from kl_retrievers._adapters import (
    DEFAULT_RELEVANCE,
    RELEVANCE_FUNCTIONS,
    RelevanceFn,
    RelevanceName,
    backend_refusal,
    cancellable_write,
    check_store_options,
    check_write_ids,
    document_precision_hint,
    encode_for_write,
    first_value_mismatch,
    init_option_names,
    loads_anywhere,
    mmr_select,
    present_gaussians,
    query_precision_hint,
    read_manifest,
    relevance_exp,
    relevance_exp_per_dim,
    relevance_inverse,
    resolve_relevance,
    save_store_with_manifest,
    store_option_names,
    store_write_unless_cancelled,
    warn_incompatible_store,
    warn_unreliable_query_variance,
    write_cancelled,
    write_manifest,
)
from kl_retrievers._checks import check_bool
from kl_retrievers._confidence import (
    CONFIDENCE_KEY,
    EMPTY_QUERY_REASON,
    ConfidenceScorer,
    abstention_enabled,
    abstention_reason,
    blank_query_confidence,
    check_calibrator,
    check_min_confidence,
    hybrid_search,
    is_blank_query,
    log_abstention,
    require_calibrator,
)
from kl_retrievers._encoding import check_texts, query_batch_size
from kl_retrievers._errors import NothingSavedError
from kl_retrievers._io import (
    LEFTOVER_NAME,
    check_dangling_link,
    describe_kl_folder,
    holds_nothing_saved,
    load_unchanged,
    make_dirs,
    user_path,
)
from kl_retrievers._warn import at_callers_line, user_stacklevel, warn
from kl_retrievers.filters import MetadataFilter
from kl_retrievers.gaussian import (
    SCORE_DIRECTION,
    SCORE_NAME,
    Gaussians,
    _real_numpy,
    check_k,
    document_gaussians_from_vectors,
    is_real_number,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
)
from kl_retrievers.hybrid import FusionConfig, FusionMode, HybridResult, KLHybridStore, Normalization
from kl_retrievers.index import KLStore, SearchResult, StoreFormatError
from kl_retrievers.store._format import CONFIG as _STORE_CONFIG
from kl_retrievers.store._format import STORE_FILES as _STORE_FILES

if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

logger = logging.getLogger(__name__)

__all__ = [
    "ABSTENTION_EVENT",
    "CONFIDENCE_KEY",
    "EMPTY_QUERY_REASON",
    "EmbeddingsGaussianEncoder",
    "KLEmbeddings",
    "KLHybridRetriever",
    "KLRetriever",
    "KLVectorStore",
    "LangChainFormatError",
    "RELEVANCE_FUNCTIONS",
    "check_inner_product_store",
    "relevance_exp",
    "relevance_exp_per_dim",
    "relevance_inverse",
]

#: Name of the LangChain custom event a retriever sends when it abstains (``astream_events``: ``on_custom_event``).
ABSTENTION_EVENT = "kl_retrievers_abstention"

_FORMAT_NAME = "kl-retrievers/langchain-klvectorstore"
_FORMAT_VERSION = 1
_MANIFEST = "langchain.json"
_STORE_DIR = "klstore"
#: Inside ``klstore/``: the copy of the manifest that save_local swaps in with the store (see load_local).
_INNER_MANIFEST = "langchain_manifest.json"
#: ``index_name`` of :meth:`KLVectorStore.save_local` / :meth:`~KLVectorStore.load_local` that means the folder itself.
_DEFAULT_INDEX_NAME = "index"


class LangChainFormatError(StoreFormatError):
    """A folder given to :meth:`KLVectorStore.load_local` was not written by a compatible ``save_local``."""


class _NoLangChainSavedError(NothingSavedError, LangChainFormatError):
    """A folder given to :meth:`KLVectorStore.load_local` that no kind kl_retrievers saves names as its own."""


# --------------------------------------------------------------------------- helpers
def _index_folder(folder: Path, index_name: Any) -> Path:
    """Where ``save_local`` / ``load_local`` keep ``index_name``: the folder for ``"index"``, else a sub-folder.

    Examples:
        >>> _index_folder(Path("db"), "index").as_posix(), _index_folder(Path("db"), "news").as_posix()
        ('db', 'db/news')
        >>> _index_folder(Path("db"), "../x")
        Traceback (most recent call last):
        ValueError: index_name must be a plain folder name (no path separator, not '.' or '..'); got '../x'
    """
    if not isinstance(index_name, str):
        raise TypeError(f"index_name must be a str; got {type(index_name).__name__}")
    if index_name == _DEFAULT_INDEX_NAME:
        return folder
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if index_name in ("", ".", "..") or any(sep in index_name for sep in seps) or "\0" in index_name:
        raise ValueError(
            f"index_name must be a plain folder name (no path separator, not '.' or '..'); got {index_name!r}"
        )
    if index_name in (_STORE_DIR, _MANIFEST):
        raise ValueError(f"index_name {index_name!r} is taken by the files of the default index; choose another name")
    return folder / index_name


def _is_save_leftover(path: Path) -> bool:
    """A temporary or previous copy of ``klstore/`` or ``langchain.json`` (``.klstore.tmp-HEX``) left by a save.

    A save still running has one, and one killed part-way leaves it; the next save of the folder removes it.

    Examples:
        >>> _is_save_leftover(Path("db/.klstore.tmp-0123abcd")), _is_save_leftover(Path("db/.notes.tmp-0123abcd"))
        (True, False)
    """
    match = LEFTOVER_NAME.fullmatch(path.name)
    return match is not None and match["name"] in (_STORE_DIR, _MANIFEST)


def _written_by_save_local(folder: Path, *, named: bool = True) -> bool:
    """Whether ``save_local`` may write into the existing folder ``folder`` (see :meth:`KLVectorStore.save_local`).

    It may when the folder is empty or holds only a save's leftovers (:func:`_is_save_leftover`), or holds
    ``langchain.json`` or ``klstore/langchain_manifest.json`` (a save that failed before ``langchain.json``);
    with ``named``, also when its entries are only leftovers and named indexes (sub-folders that pass this
    check themselves, being saved or saved). The entries are listed first, so that a concurrent save moving
    its temporary copy into place between the listing and the checks is still seen.
    """
    try:
        entries = list(folder.iterdir())
    except OSError:  # not a folder (any more)
        return False
    if all(_is_save_leftover(p) for p in entries):
        return True
    if (folder / _MANIFEST).is_file() or (folder / _STORE_DIR / _INNER_MANIFEST).is_file():
        return True
    return named and all(_is_save_leftover(p) or _written_by_save_local(p, named=False) for p in entries)


def _is_document_attribute_error(exc: AttributeError, metadata: Mapping[str, Any]) -> bool:
    """Whether ``exc`` is the lookup of a ``Document``'s ``metadata`` / ``page_content`` on ``metadata`` itself.

    Only that lookup is explained: an ``AttributeError`` raised elsewhere in the filter (or raised by
    hand) is the user's own.  Python 3.10+ records the object and the name (``exc.obj``, ``exc.name``);
    an error without them is recognised by its message only when it names the mapping's type.
    """
    names = ("metadata", "page_content")
    if not hasattr(exc, "obj"):  # pragma: no cover - not on the supported Pythons (3.10+)
        return any(f"{type(metadata).__name__!r} object has no attribute {n!r}" == str(exc) for n in names)
    return exc.obj is metadata and exc.name in names


def _explained_filter(filter: Any) -> Any:
    """A callable ``filter`` that explains the error of one written for LangChain ``Document`` objects.

    The store calls a callable filter with each document's metadata mapping, while
    ``InMemoryVectorStore`` passes the ``Document`` itself: ``lambda d: d.metadata["k"] == v`` then
    fails with an ``AttributeError`` on the mapping, re-raised as a ``TypeError`` that says so.
    A dict filter (or ``None``) is returned as it is.
    """
    if not callable(filter) or isinstance(filter, Mapping) or getattr(filter, "_kl_explained", False):
        return filter

    def explained(metadata: Mapping[str, Any]) -> Any:
        try:
            return filter(metadata)
        except AttributeError as exc:
            if _is_document_attribute_error(exc, metadata):
                raise TypeError(
                    f"the filter {getattr(filter, '__name__', filter)!r} failed with {exc}: a callable filter receives "
                    "each document's metadata mapping, not the Document (as InMemoryVectorStore passes it): write "
                    'it as lambda m: m["key"] == value'
                ) from exc
            raise

    explained._kl_explained = True  # type: ignore[attr-defined]
    return explained


def _pack_folder(folder: Path) -> bytes:
    """A zip archive (bytes) of the regular files under ``folder``, named by their POSIX paths relative to it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):  # save_local writes neither
                raise RuntimeError(f"not packing {path}: only regular files and folders are packed")
            if path.is_file():
                # float arrays and FAISS codes barely compress (about 7%) and deflating them is slow: stored as is
                packed = path.suffix in (".npy", ".faiss")
                kind = zipfile.ZIP_STORED if packed else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(folder).as_posix(), compress_type=kind)
    return buffer.getvalue()


#: The entries :func:`_pack_folder` writes for a :meth:`KLVectorStore.save_local` folder (its folder too).
_ARCHIVE_NAMES = frozenset(
    {_MANIFEST, _STORE_DIR} | {f"{_STORE_DIR}/{n}" for n in (_STORE_CONFIG, *_STORE_FILES, _INNER_MANIFEST)}
)
#: Unpacked bytes always allowed, and the most allowed per archive byte beyond that: the arrays and the
#: index are stored uncompressed, and only the JSON files are deflated.
_UNPACK_FLOOR = 64 << 20
_UNPACK_RATIO = 20


def _not_an_archive(data: bytes) -> str:
    """Why ``data`` is not what :meth:`KLVectorStore.serialize_to_bytes` returns (a zip archive).

    Never unpickles: a pickle is recognised by its protocol header, and langchain-community's FAISS
    pickle by the names it holds.

    Examples:
        >>> print(_not_an_archive(b"hello"))  # doctest: +ELLIPSIS
        not bytes from KLVectorStore.serialize_to_bytes (a zip archive): 5 bytes starting with b'hello'
    """
    what = (
        f"not bytes from KLVectorStore.serialize_to_bytes (a zip archive): {len(data)} bytes starting with "
        f"{data[:16]!r}"
    )
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        if any(name in data for name in (b"langchain_community", b"InMemoryDocstore", b"faiss")):
            return (
                f"{what}. They look like langchain-community FAISS's serialize_to_bytes output (a pickle); "
                "load them with FAISS.deserialize_from_bytes from a trusted source only, and move them over with "
                "KLVectorStore.from_documents (KLVectorStore never unpickles anything)"
            )
        return f"{what}. They look like a pickle, which KLVectorStore never unpickles"
    return what


def _unpack_archive(data: bytes, folder: Path) -> None:
    """Unpack ``data`` (a zip of :func:`_pack_folder`) into the empty ``folder``, refusing anything unsafe.

    Each entry must be a regular file or a folder with a relative path inside ``folder``: absolute
    paths, drive letters, backslashes, ``..``, links, devices, duplicates and encrypted entries
    are refused (the whole archive, before anything is written) with a :class:`LangChainFormatError`
    naming the entry.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise LangChainFormatError(_not_an_archive(data)) from exc
    with archive:
        infos = archive.infolist()
        seen: set[str] = set()
        for info in infos:
            name = info.filename
            parts = name.rstrip("/").split("/")
            mode = stat.S_IFMT(info.external_attr >> 16)  # 0: no type recorded (e.g. ZipFile.writestr): a file
            problem = None
            if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":") or "\0" in name:
                problem = "an absolute path, a drive letter or a backslash"
            elif any(part in ("", ".", "..") for part in parts):
                problem = "a path that is empty or holds '.' or '..'"
            elif mode and stat.S_ISLNK(mode):
                problem = "a symbolic link"
            elif mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                problem = f"not a regular file or folder (type {stat.filemode(mode)[0]!r})"
            elif info.flag_bits & 0x1:
                problem = "an encrypted entry"
            elif name.rstrip("/") in seen:
                problem = "a second entry of the same name"
            if problem is not None:
                raise LangChainFormatError(
                    f"refusing the serialized KLVectorStore: its archive entry {name!r} is {problem}; only regular "
                    "files and folders with relative paths inside the archive are unpacked"
                )
            seen.add(name.rstrip("/"))
        names = {info.filename for info in infos}
        if _MANIFEST not in names:
            raise LangChainFormatError(
                f"not bytes from KLVectorStore.serialize_to_bytes: a zip archive without {_MANIFEST} "
                f"(it holds {sorted(names)[:8]})"
            )
        unexpected = sorted(n for n in names if n.rstrip("/") not in _ARCHIVE_NAMES)
        if unexpected:
            raise LangChainFormatError(
                f"refusing the serialized KLVectorStore: its archive holds {unexpected[:5]}, which serialize_to_bytes "
                f"never writes (it writes {sorted(_ARCHIVE_NAMES)})"
            )
        unpacked = sum(info.file_size for info in infos)
        limit = max(_UNPACK_FLOOR, _UNPACK_RATIO * len(data))
        if unpacked > limit:
            raise LangChainFormatError(
                f"refusing the serialized KLVectorStore: its entries declare {unpacked} bytes unpacked from "
                f"{len(data)} bytes, more than the {limit} allowed (serialize_to_bytes stores the arrays and the "
                "index uncompressed, so its archives unpack to about their own size)"
            )
        root = folder.resolve()
        for info in infos:
            target = folder.joinpath(*info.filename.rstrip("/").split("/"))
            if not target.resolve().is_relative_to(root):  # checked above already; a second guard
                raise LangChainFormatError(f"refusing the archive entry {info.filename!r}: it leaves the folder")
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "xb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, zipfile.BadZipFile) as exc:  # a file where a folder should be, a bad CRC, ...
                raise LangChainFormatError(f"cannot unpack the archive entry {info.filename!r}: {exc}") from exc


def _check_saved_encoder_is_bundled(folder: Path, entry: str, field: str) -> None:
    """Refuse serialized bytes whose saved encoder is not a bundled model when no ``embeddings`` were given.

    Bytes may come from anywhere; without ``embeddings`` the encoder they name would be loaded, and a
    path or a hub id would load (or download) a model that the bytes chose. Every record of it is checked:
    ``langchain.json``'s (and its copy's) ``encoder``, and the store part's ``encoder.name_or_path``, which
    a search loads when the manifest names none.

    Args:
        folder: Where the bytes were unpacked.
        entry: The JSON file, relative to ``folder`` (``"klstore/config.json"``).
        field: Where the name is in it, dotted (``"encoder.name_or_path"``).
    """
    from kl_retrievers.hub import bundled_name

    try:
        name = json.loads((folder / entry).read_text(encoding="utf-8"))
        for key in field.split("."):
            name = name.get(key)
    except (OSError, ValueError, AttributeError):
        return  # missing (a copy is optional), no record, or damaged: load_local reports a damaged file
    if isinstance(name, str) and name and bundled_name(name) is None:
        raise ValueError(
            f"the serialized KLVectorStore ({entry}, field {field!r}) names the encoder {name!r}, which is not a "
            "model bundled with kl-retrievers; deserialize_from_bytes loads only bundled models by the name the "
            "bytes carry: pass embeddings= (the encoder the store was built with)"
        )


def _one_per_item(value: Any, name: str, n: int, what: str, single: type, item: str) -> list[Any] | None:
    """``value`` (``metadatas`` or ``ids``) as a list of ``n`` items, one per text; ``None`` stays ``None``.

    Any iterable is taken (a generator is read once, here) except one item (a ``single``, a str or
    bytes) and a set: its iteration order is arbitrary (for strings it changes from one Python process
    to the next), so its items would be paired with the texts at random. A dict's ``keys()`` view is
    taken (it keeps the dict's insertion order); its ``items()`` view ((key, value) pairs) is refused.
    """
    if value is None:
        return None
    kind = type(value).__name__
    if isinstance(value, (str, bytes, single)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be an iterable of {item}, one per text (e.g. a list); got a single {kind}: {value!r:.80}"
        )
    if isinstance(value, ItemsView):
        # ids are usually a dict's keys, metadatas its values (e.g. {id: metadata})
        hint = "list(d) for the dict's keys" if name == "ids" else "list(d.values()) for the dict's values"
        raise TypeError(
            f"{name} is a {kind}, whose items are a dict's (key, value) pairs, not {item}: pass a list, in the "
            f"order of the {what} (e.g. {hint}); got {value!r:.80}"
        )
    if isinstance(value, Set) and not isinstance(value, KeysView):
        raise TypeError(
            f"{name} is a {kind}, whose iteration order is arbitrary (for strings it changes from one Python process "
            f"to the next), so its items would be paired with the {what} at random: pass a list, in the order of "
            f"the {what}; got {value!r:.80}"
        )
    out = list(value)
    if len(out) != n:
        raise ValueError(f"got {len(out)} {name} for {n} {what}; pass one per text")
    return out


def _check_add_args(
    n: int, metadatas: Iterable[dict[str, Any] | None] | None, ids: Iterable[str | None] | None, what: str = "texts"
) -> tuple[list[dict[str, Any] | None] | None, list[str] | None]:
    """Check ``metadatas`` and ``ids`` against ``n`` items: the metadatas and the ids to store.

    Each may be any iterable but a set (see :func:`_one_per_item`); a single dict of metadata or a
    single str id is refused. ``None`` and empty (``""``) ids get a uuid4 hex, as a ``Document`` with
    ``id=""`` does.
    """
    metadata_list = _one_per_item(metadatas, "metadatas", n, what, Mapping, "dicts")
    id_list = _one_per_item(ids, "ids", n, what, str, "str")
    if not id_list:
        return metadata_list, None
    _str_ids(id_list, none=True)
    return metadata_list, [i if i is not None and i != "" else uuid.uuid4().hex for i in id_list]


def _str_ids(ids: Iterable[Any], *, none: bool = False) -> list[str]:
    """``ids`` as a list, each a str (or ``None`` where ``none``): never coerced with ``str()`` (``b"a"`` would
    become ``"b'a'"``, ``1.0`` the id ``"1.0"``), as the core stores refuse them; else a ``TypeError`` naming the
    position and value, as theirs does.

    Examples:
        >>> _str_ids(iter(["a", 1]))
        Traceback (most recent call last):
        TypeError: ids[1] must be a str; got int 1
    """
    out = list(ids)
    if set(map(type, out)) <= ({str, type(None)} if none else {str}):
        return out  # the common case in one C loop (an async write checks them on the event loop's thread)
    for j, doc_id in enumerate(out):
        if not (isinstance(doc_id, str) or (none and doc_id is None)):
            raise TypeError(f"ids[{j}] must be a str; got {type(doc_id).__name__} {doc_id!r:.80}")
    return out


def _check_texts(texts: Any, what: str = "texts") -> list[str]:
    return check_texts(texts, what, allow_str=False)


def _read_texts(texts: Any) -> list[Any]:
    """``texts`` read into a list, with the checks :func:`_check_texts` makes of the container but not of its items.

    For an async write's event-loop thread: a list, tuple or iterator (a generator) is read as it is (a copy of
    its references); anything else gets every check of :func:`_check_texts` (a refused container, such as a
    single str, a set or a dict, raises before any item is read). Checking each text (a str that UTF-8 can
    encode) is left to the worker thread, which checks them all again (:meth:`KLVectorStore.add_texts`).
    """
    if isinstance(texts, (list, tuple, Iterator)) and not hasattr(texts, "columns"):
        return list(texts)
    return _check_texts(texts)


def _check_query(query: Any) -> str:
    if not isinstance(query, str):
        raise TypeError(f"the query must be a str; got {type(query).__name__}")
    return query


_check_k = check_k  # the one check of k, fetch_k, batch_size (kl_retrievers.gaussian)


def _check_unit(value: Any, name: str) -> float:
    """A real number in ``[0, 1]`` (not a bool or a string); else a ``ValueError`` naming it and the range."""
    if not is_real_number(value) or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
    return float(value)


def _warn_ignored(kwargs: dict[str, Any], where: str, takes: str, accepted: tuple[str, ...] = ()) -> dict[str, Any]:
    """Warn about keyword arguments a method ignores (e.g. a misspelt ``filter``), naming what it takes.

    The warning points at the user's line (:func:`kl_retrievers._warn.warn`), however deep LangChain calls it.

    Returns:
        The ``accepted`` ones of ``kwargs``: what a method that checked them passes on (so that the method it
        calls does not warn again, naming itself).
    """
    ignored = sorted(set(kwargs) - set(accepted))
    if ignored:
        warn(f"KLVectorStore.{where} ignores the keyword argument(s) {ignored}; it takes {takes}")
    return {key: value for key, value in kwargs.items() if key in accepted}


def _check_delete_kwargs(kwargs: dict[str, Any], where: str) -> None:
    """Refuse a ``filter`` (this store deletes by id only); warn about any other keyword (see :func:`_warn_ignored`)."""
    if "filter" in kwargs:
        raise TypeError(
            f"KLVectorStore.{where} deletes by id and takes no filter (got filter={kwargs['filter']!r:.80}): find "
            "the ids first (e.g. [d.id for d in store.similarity_search(query, k, filter=...)]) and pass them"
        )
    _warn_ignored(kwargs, where, "ids and delete_all")


#: What ``add_texts`` accepts besides its parameters: LangChain's ``index()`` passes ``batch_size`` (not used).
_ADD_KWARGS = ("batch_size",)

#: What ``similarity_search_with_relevance_scores`` takes besides ``query`` and ``k``, and its words for them.
_RELEVANCE_KWARGS = ("filter", "fetch_k", "score_threshold")
_RELEVANCE_TAKES = "query, k, filter and score_threshold"


def _load_default_encoder(backend: Backend | None = None) -> Any:
    from kl_retrievers.pretrained import load_model

    logger.info("loading the default kl-retrievers model (%s backend)", backend or "default")
    return load_model(None, backend=backend)


def _default_model_dim() -> int | None:
    """The default model's Gaussian dimension, read from its bundled config (``None``: cannot tell)."""
    import json

    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path

    try:
        config = json.loads((bundled_model_path(DEFAULT_MODEL) / "config.json").read_text(encoding="utf-8"))
        dim = config["encoder"]["dim"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dim if isinstance(dim, int) else None


def _check_default_encoder_fits(store: Any) -> None:
    """Refuse to load the default model for a store without an encoder whose documents it did not encode.

    A :class:`KLStore` loaded without ``encoder=`` keeps no encoder; loading the default model for it
    is right only when the store was saved with the default model (``saved_encoder``), or, when it
    records none, when its documents have the default model's dimension (or it is empty).
    """
    from kl_retrievers._io import is_within
    from kl_retrievers.pretrained import DEFAULT_MODEL, _bundled_name, bundled_model_path

    model = getattr(store, "saved_encoder", None)
    if isinstance(model, str) and model:
        try:
            name = _bundled_name(model)
        except ValueError:
            name = None
        if name is None and user_path(model).exists():  # a path to the bundled default's folder
            default_path = bundled_model_path(DEFAULT_MODEL).resolve()
            name = DEFAULT_MODEL if is_within(user_path(model).resolve(), default_path) else None
        if name == DEFAULT_MODEL:
            return
        raise ValueError(
            f"this {type(store).__name__} has no encoder and was saved with {model!r}, not the default model "
            f"{DEFAULT_MODEL!r}; pass embedding=... (a KLEmbeddings or Gaussian encoder of {model!r}), or load the "
            "store with KLStore.load(path, encoder=...)"
        )
    dim = store.dim
    default = _default_model_dim()
    if dim is None or default is None or dim == default:
        return
    raise ValueError(
        f"this {type(store).__name__} has no encoder and its documents (dimension {dim}) do not "
        f"match the default model {DEFAULT_MODEL!r} (dimension {default}); pass embedding=... (a KLEmbeddings or "
        "Gaussian encoder of the model the documents were encoded with), or load the store with "
        "KLStore.load(path, encoder=...)"
    )


def _unwrap_encoder(encoder: Any, call: str = "KLVectorStore.from_texts(texts, {embeddings})", hint: str = "") -> Any:
    """A Gaussian encoder from an encoder, a :class:`KLEmbeddings` or any LangChain ``Embeddings``.

    A model name or folder (a str or a path) is refused with the call that loads it: LangChain's stores take an
    ``Embeddings`` object there, and :class:`KLEmbeddings` is the one that loads a model by name. ``call`` is the
    caller's call as the message shows it, ``{embeddings}`` standing for that ``KLEmbeddings(...)``; ``hint``
    is added to the message (e.g. ``load_local``'s: leave ``embeddings`` out).
    """
    return _resolve_embedding(encoder, call, hint)[0]


def _resolve_embedding(
    encoder: Any, call: str = "KLVectorStore.from_texts(texts, {embeddings})", hint: str = ""
) -> tuple[Any, KLEmbeddings | None]:
    """:func:`_unwrap_encoder`'s encoder and the :class:`KLEmbeddings` that ``encoder`` is or wraps (``None`` if none).

    For a caller that needs both: the wrappers are searched once (:func:`_inner_klembeddings`), so a search cut
    short warns once per call.
    """
    if isinstance(encoder, (str, os.PathLike)):
        name = str(os.fspath(encoder))  # a str subclass (numpy's str_) would show its own repr
        load = f"KLEmbeddings(model_name={name!r})"
        raise TypeError(
            f"got the model name or folder {name!r} where an embeddings object is expected: {hint}load it with "
            f"{load} and pass that, e.g. {call.format(embeddings=load)}"
        )
    if isinstance(encoder, KLEmbeddings):
        return encoder.encoder, encoder
    if isinstance(encoder, Embeddings):
        inner = _inner_klembeddings(encoder)
        return (_wrapper_encoder(encoder, inner) if inner is not None else EmbeddingsGaussianEncoder(encoder)), inner
    if encoder is not None and not (hasattr(encoder, "encode_queries") and hasattr(encoder, "encode_documents")):
        raise TypeError(
            "encoder must be a Gaussian encoder (encode_queries / encode_documents), a KLEmbeddings "
            f"or a LangChain Embeddings; got {type(encoder).__name__}"
        )
    return encoder, None


#: Where a LangChain ``Embeddings`` wrapper keeps the ``Embeddings`` it wraps: ``CacheBackedEmbeddings``'
#: ``underlying_embeddings``, ``HypotheticalDocumentEmbedder``'s ``base_embeddings``, and the usual field names.
_WRAPPED_EMBEDDINGS_ATTRIBUTES = (
    "underlying_embeddings",
    "base_embeddings",
    "embeddings",
    "embedding",
    "_embeddings",
    "_embedding",
)


#: How many ``Embeddings`` objects :func:`_inner_klembeddings` looks into at most (and how many items of a list,
#: tuple or dict attribute): each wrapper of a realistic nesting (a cache in a rate limiter in a retry wrapper...,
#: a handful deep, one or two models each) is far within it, and so is a router over a registry of hundreds of
#: models (1,001 objects walk in about 8 ms), while an object graph larger still is not walked whole (a warning).
_MAX_WRAPPERS_SEARCHED = 1024


def _inner_klembeddings(embeddings: Any) -> KLEmbeddings | None:
    """The :class:`KLEmbeddings` a LangChain ``Embeddings`` wrapper holds (through any number of wrappers),
    ``embeddings`` itself when it is one; ``None`` when there is none.

    A wrapper's ``Embeddings``-valued attributes are searched breadth first (the nearest one is found): those
    named in :data:`_WRAPPED_EMBEDDINGS_ATTRIBUTES` first, then any other (its ``vars()`` and pydantic fields,
    e.g. a custom wrapper's ``self.inner``, and the items of a list, tuple or dict held there, e.g.
    ``self.models = [...]``), each object once (cycle-safe). At most :data:`_MAX_WRAPPERS_SEARCHED` objects are
    looked into, however deep, so the time it takes is bounded: a search stopped there with no ``KLEmbeddings``
    found warns (one may be further in; the vectors would then be taken for plain embeddings).
    """
    queue: deque[Any] = deque([embeddings])
    seen: set[int] = set()
    cut = False
    while queue:
        e = queue.popleft()
        if isinstance(e, KLEmbeddings):
            return e
        if not isinstance(e, Embeddings) or id(e) in seen:
            continue
        if len(seen) >= _MAX_WRAPPERS_SEARCHED:
            queue.appendleft(e)
            cut = True
            break
        seen.add(id(e))
        held, truncated = _held_embeddings(e)
        queue.extend(held)
        cut = cut or truncated
    found = next((e for e in queue if isinstance(e, KLEmbeddings)), None)  # found, not yet looked into
    if found is None and cut:
        warn(
            f"looked for a KLEmbeddings inside {type(embeddings).__name__} through {len(seen)} Embeddings objects "
            f"(at most {_MAX_WRAPPERS_SEARCHED}, and as many items of a list, tuple or dict attribute) and stopped "
            "there: one held further in is not found, and its q~ / d~ vectors would be taken for plain embeddings "
            "(ranked by L2 distance, not by -KL). If it wraps a KLEmbeddings, pass that KLEmbeddings (or its "
            "encoder) directly, e.g. KLVectorStore(kl_embeddings)"
        )
    return found


def _held_embeddings(wrapper: Any) -> tuple[list[Any], bool]:
    """The ``Embeddings`` objects ``wrapper``'s attributes hold (the known names first, then the others, then the
    items of its list, tuple and dict attributes), and whether a container was longer than the items looked at."""
    known = [_attribute(wrapper, name) for name in _WRAPPED_EMBEDDINGS_ATTRIBUTES]
    fields = getattr(type(wrapper), "model_fields", None)  # pydantic (v2): read through getattr as well
    try:
        values = list(vars(wrapper).values())
    except TypeError:  # no __dict__ (__slots__)
        values = []
    if isinstance(fields, dict):
        values += [_attribute(wrapper, str(name)) for name in fields]
    items: list[Any] = []
    truncated = False
    for value in values:
        if isinstance(value, (list, tuple, dict)):
            first = list(itertools.islice(value.values() if isinstance(value, dict) else value, _MAX_WRAPPERS_SEARCHED))
            items += first
            # cut short: only a container of embeddings (a long list of numbers is no registry of models)
            truncated = truncated or (len(value) > len(first) and any(isinstance(x, Embeddings) for x in first))
    held = [e for e in known + values + items if isinstance(e, Embeddings) and e is not wrapper]
    return list({id(e): e for e in held}.values()), truncated  # each once, in order


def _attribute(obj: Any, name: str) -> Any:
    """``obj.name``, ``None`` when reading it fails (a third-party property may raise anything)."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _shares_query_cache(wrapper: Any) -> bool:
    """Whether a ``CacheBackedEmbeddings`` caches queries under its documents' keys (``query_embedding_cache=True``,
    or the same byte store and key namespace): then one text's ``q~`` and ``d~`` take turns in one entry."""
    queries = getattr(wrapper, "query_embedding_store", None)
    documents = getattr(wrapper, "document_embedding_store", None)
    if queries is None or documents is None:
        return False
    if queries is documents:
        return True
    store = getattr(queries, "store", None)  # an EncoderBackedStore over a byte store: the same one, the same keys?
    if store is None or store is not getattr(documents, "store", None):
        return False
    try:
        probe = "kl-retrievers cache key probe"
        return bool(queries.key_encoder(probe) == documents.key_encoder(probe))
    except Exception:  # keys that cannot be compared: the same byte store may hold both
        return True


def _once(embeddings: KLEmbeddings, key: str, emit: Callable[[], None]) -> None:
    """Call ``emit`` (a warning) once per ``key`` and ``embeddings`` object: the bookkeeping of every warning
    :func:`_detect_caller_store` and the wrapper checks give."""
    warned: set[str] = embeddings.__dict__.setdefault("_kl_warned_stores", set())
    if key not in warned:
        emit()
        warned.add(key)  # after: a warning raised as an error (-W error) is raised again next time


def _warn_once(embeddings: KLEmbeddings, key: str, message: str) -> None:
    """Warn ``message`` once per ``key`` and ``embeddings`` object (:func:`_once`)."""
    _once(embeddings, key, lambda: warn(message))


def _shared_cache_message(wrapper: Any) -> str:
    name = type(wrapper).__name__
    return (
        f"{name} caches the queries of its KLEmbeddings under the keys of its documents (query_embedding_cache=True, "
        "or the same store and namespace): a text's query vector q~ and document vector d~ differ, so a query "
        "already embedded as a document gets its d~ (and a document embedded as a query its q~), which gives wrong "
        f"scores. Give queries a cache of their own: {name}.from_bytes_store(embeddings, store, namespace=..., "
        "query_embedding_cache=<another byte store>), or leave query_embedding_cache out"
    )


def _wrapper_encoder(wrapper: Embeddings, inner: KLEmbeddings) -> Any:
    """The Gaussian encoder for a LangChain ``Embeddings`` wrapper of the :class:`KLEmbeddings` ``inner``.

    A document cache (``CacheBackedEmbeddings``) is used, its vectors decoded back to Gaussians
    (:class:`_CachedKLEncoder`), unless it caches queries under its documents' keys. Any other wrapper (or such a
    cache) is bypassed, with a warning naming it: ``inner``'s model encodes the texts, as it does for ``inner``.
    """
    shared = _shares_query_cache(wrapper)
    if getattr(wrapper, "underlying_embeddings", None) is inner and hasattr(wrapper, "document_embedding_store"):
        if not shared:
            return _CachedKLEncoder(wrapper, inner)
        why = _shared_cache_message(wrapper) + ". A Gaussian store encodes with the KLEmbeddings' model, not this cache"
    else:
        why = (
            f"{type(wrapper).__name__} wraps a KLEmbeddings: a Gaussian store encodes its texts with that "
            f"KLEmbeddings' model, not through {type(wrapper).__name__} (its vectors cannot be read back as Gaussians)"
        )
    _warn_once(inner, f"wrapper:{type(wrapper).__name__}", why)
    return inner.encoder


def _refuse_model_name(embedding: Any, call: str) -> None:
    """Refuse a model name or folder given as ``embedding``, the message showing ``call`` (:func:`_unwrap_encoder`).

    For the constructors that pass ``embedding`` on to another one, so that the message shows the call made.
    """
    if isinstance(embedding, (str, os.PathLike)):
        _unwrap_encoder(embedding, call)


# --------------------------------------------------------------------------- store checks
_BAD_WORDS = ("cos", "euclid", "l2", "jaccard", "hamming", "manhattan", "l1")
_GOOD_WORDS = ("inner", "dot", "ip")


def _strategy_verdict(value: Any) -> bool | None:
    """``True`` for an inner-product strategy, ``False`` for cosine / L2 / others, ``None`` if unknown."""
    if value is None:
        return None
    text = str(getattr(value, "value", value)).lower()
    if any(w in text for w in ("inner", "dot")) or text in _GOOD_WORDS:
        return True
    if any(w in text for w in _BAD_WORDS):
        return False
    return None


def check_inner_product_store(vectorstore: Any, *, warn: bool = True) -> bool | None:
    """Check that a third-party vector store ranks by the raw inner product, as :class:`KLEmbeddings` needs.

    Looks at the usual attributes (``distance_strategy``, ``_distance_strategy``, ``distance_metric``,
    ``metric``, ``_normalize_L2``), at the ``metric_type`` of ``index_params`` / ``search_params``
    (langchain-milvus' ``Milvus``, whose default is ``"L2"``; ``"IP"`` is compatible) and at
    ``InMemoryVectorStore`` (always cosine).

    Args:
        vectorstore: Any LangChain vector store.
        warn: Emit a ``UserWarning`` when the store is known to be incompatible.

    Returns:
        ``True`` (inner product), ``False`` (cosine, L2, normalised, ...) or ``None`` (cannot tell).

    Examples:
        >>> class Store:
        ...     distance_strategy = "COSINE"
        >>> check_inner_product_store(Store(), warn=False)
        False
    """
    verdict, reason = _store_verdict(vectorstore)
    if verdict is False and warn:
        _warn_incompatible(type(vectorstore).__name__, reason)
    return verdict


def _store_verdict(vectorstore: Any) -> tuple[bool | None, str]:
    """:func:`check_inner_product_store`'s verdict on ``vectorstore`` and its reason (no warning)."""
    verdict: bool | None = None
    reason = ""
    if type(vectorstore).__name__ == "InMemoryVectorStore":
        verdict, reason = False, "InMemoryVectorStore ranks by cosine similarity"
    for attr in ("distance_strategy", "_distance_strategy", "distance_metric", "metric", "similarity"):
        value = getattr(vectorstore, attr, None)
        if value is not None and not callable(value):
            v = _strategy_verdict(value)
            if v is not None:
                verdict, reason = v, f"{attr}={getattr(value, 'value', value)!r}"
                break
    if verdict is None:
        verdict, reason = _metric_type_verdict(vectorstore)
    if getattr(vectorstore, "_normalize_L2", False) is True:
        verdict, reason = False, "normalize_L2=True rescales the vectors"
    return verdict, reason


def _metric_type_verdict(vectorstore: Any) -> tuple[bool | None, str]:
    """The verdict of a store's ``index_params`` / ``search_params`` ``metric_type`` (langchain-milvus' ``Milvus``).

    Each is a dict or a list of dicts (one per vector field); the index's metric decides, else the search's
    (a reopened collection's ``index_params`` may hold none). With several vector fields the metric is the
    one of the field a :class:`KLEmbeddings` fills (:func:`_metric_entries`), else the metrics of the
    fields that can hold its dense vectors (not a sparse index's nor BM25's) when they agree: ``None``
    when they disagree. Returns ``(None, "")`` when nothing names one.
    """
    fields = _klembeddings_fields(vectorstore)
    for attr in ("index_params", "search_params"):
        entries, identified = _metric_entries(vectorstore, attr, fields)
        verdicts = []
        for label, entry, note in entries:
            metric = entry.get("metric_type")
            verdict = _strategy_verdict(metric) if isinstance(metric, str) else None
            if verdict is not None:
                verdicts.append((verdict, f"{label}['metric_type']={metric!r}{note}"))
        if not verdicts:
            continue
        wrong = [reason for verdict, reason in verdicts if verdict is False]
        if wrong and len(wrong) < len(verdicts) and not identified:
            return None, ""  # vector fields that disagree, and which one is the KLEmbeddings' cannot be told
        return (False, wrong[0]) if wrong else (True, verdicts[0][1])
    return None, ""


def _klembeddings_fields(vectorstore: Any) -> list[str]:
    """The vector fields a :class:`KLEmbeddings` fills in a langchain-milvus ``Milvus`` (``[]``: none known).

    langchain-milvus pairs its ``embedding_func`` (one embedding or a list) with ``_vector_fields_from_embedding``
    (the field of each, in order).
    """
    fields = getattr(vectorstore, "_vector_fields_from_embedding", None)
    funcs = getattr(vectorstore, "embedding_func", None)
    if not isinstance(fields, list) or funcs is None:
        return []
    funcs = funcs if isinstance(funcs, list) else [funcs]
    return [field for field, func in zip(fields, funcs, strict=False) if isinstance(func, KLEmbeddings)]


def _metric_entries(
    vectorstore: Any, attr: str, fields: list[str]
) -> tuple[list[tuple[str, Mapping[str, Any], str]], bool]:
    """The ``(label, dict, note)`` entries of ``index_params`` or ``search_params`` that can give the KL metric,
    and whether they are those of the :class:`KLEmbeddings` fields ``fields``.

    A dict, or a list of one, is the store's only field. In a longer list (one dict per vector field) the
    entries of ``fields`` when they can be found: through langchain-milvus' ``_index_param_map`` (field ->
    index dict) or the field order (``_vector_field``, when the list has one dict per field); else every
    entry but a sparse index's or BM25's, which never hold the dense KL vectors.
    """
    params = getattr(vectorstore, attr, None)
    entries = [e if isinstance(e, Mapping) else {} for e in (params if isinstance(params, (list, tuple)) else [params])]
    if len(entries) <= 1:
        return [(attr, e, "") for e in entries], False
    order = getattr(vectorstore, "_vector_field", None)
    order = order if isinstance(order, list) and len(order) == len(entries) else []
    param_map = getattr(vectorstore, "_index_param_map", None) if attr == "index_params" else None
    found = []
    for field in fields:
        entry = param_map.get(field) if isinstance(param_map, Mapping) else None
        at = f"{attr}[{order.index(field)}]" if field in order else attr
        if not entry and field in order:
            entry = entries[order.index(field)]
        if isinstance(entry, Mapping) and entry:
            found.append((at, entry, f" (vector field {field!r}, the KLEmbeddings')"))
    if found:
        return found, True
    dense = [
        (f"{attr}[{i}]", e, "")
        for i, e in enumerate(entries)
        if not str(e.get("index_type", "")).upper().startswith("SPARSE") and str(e.get("metric_type")).upper() != "BM25"
    ]
    return dense, False


def _warn_incompatible(store_name: str, reason: str) -> None:
    warn_incompatible_store(
        "KLEmbeddings",
        store_name,
        reason,
        "Use an inner-product store (e.g. FAISS(distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)) or "
        "KLVectorStore.",
        stacklevel=user_stacklevel(1),  # the user's line (warnings.warn runs one call down)
    )


#: LangChain's document compressors and transformers that compare the vectors of their ``embeddings``
#: (langchain-classic's, langchain-community's, and langchain's before 1.0; their subclasses too), with how:
#: ``None`` where their ``similarity_fn`` does it (LangChain's cosine by default). Every other LangChain one
#: (``LLMChainFilter``, ``CrossEncoderReranker``, ``LongContextReorder``...) embeds nothing itself.
_EMBEDDING_COMPARERS: dict[str, str | None] = {
    "EmbeddingsFilter": None,  # a query's q~ against each document's d~
    # every two documents' d~: no plain similarity of two d~ (a dot product, a cosine of the user's) is a redundancy
    "EmbeddingsRedundantFilter": "a similarity of every two documents' vectors (its similarity_fn)",
    "EmbeddingsClusteringFilter": "Euclidean distance (k-means clustering)",
}
_LANGCHAIN_PACKAGES = ("langchain", "langchain_classic", "langchain_community")


def _is_cosine(fn: Any) -> bool:
    """Whether ``fn`` is a cosine similarity: named for the cosine, or langchain-community's
    ``cosine_similarity`` (``EmbeddingsFilter``'s and ``EmbeddingsRedundantFilter``'s default)."""
    if fn is None:
        return False
    for _ in range(8):  # functools.partial(cosine_similarity, ...), nested partials too
        if not isinstance(fn, functools.partial):
            break
        fn = fn.func
    if "cosine" in str(getattr(fn, "__name__", "")).lower():
        return True
    # where EmbeddingsFilter takes it from; not imported here: unless loaded, fn cannot be its cosine_similarity
    maths = sys.modules.get("langchain_community.utils.math")
    cosine = getattr(maths, "cosine_similarity", None)
    return cosine is not None and fn is cosine


def _misused_by(owner: Any) -> str | None:
    """How a LangChain document compressor or transformer compares :class:`KLEmbeddings`' vectors, when that
    means nothing (``None``: it does not, or not in a way known to be wrong).

    One of LangChain's :data:`_EMBEDDING_COMPARERS`: ``EmbeddingsClusteringFilter`` always (k-means by Euclidean
    distance), ``EmbeddingsRedundantFilter`` always (no plain similarity of two ``d~`` measures redundancy, a
    function of the user's neither), ``EmbeddingsFilter`` when its ``similarity_fn`` is a cosine (its default,
    also in a ``functools.partial``), not with a function of the user's (a dot product ranks a query's documents
    by -KL). Any other
    compressor or transformer only when it has a ``similarity_fn`` that is a cosine: a reranker, an LLM filter or a
    compressor of the user's that scores by ``<q~, d~>`` gets no warning.
    """
    known = next(
        (
            cls.__name__
            for cls in type(owner).__mro__
            if cls.__name__ in _EMBEDDING_COMPARERS and str(cls.__module__).split(".")[0] in _LANGCHAIN_PACKAGES
        ),
        None,
    )
    how = _EMBEDDING_COMPARERS.get(known) if known is not None else None
    if how is not None:
        return how
    return "cosine similarity (its similarity_fn)" if _is_cosine(_attribute(owner, "similarity_fn")) else None


def _misuse_message(owner: Any, how: str) -> str:
    """Why ``KLEmbeddings`` vectors mean nothing to ``owner``, a LangChain document compressor or transformer that
    compares them by ``how``."""
    name = type(owner).__name__
    kind = "compressor" if isinstance(owner, BaseDocumentCompressor) else "transformer"
    return (
        f"KLEmbeddings used by {name} (a LangChain document {kind}): it compares their vectors by {how}, which, "
        "between a query's q~ and a document's d~ or between two d~, says nothing of relevance or redundancy "
        "(only <q~, d~> does: -KL = <q~, d~> + c(q)), so documents are kept or dropped at random. Cut by the -KL "
        'ranking instead: KLRetriever(min_confidence=...), or KLVectorStore.as_retriever(search_type="similarity_'
        'score_threshold", search_kwargs={"score_threshold": '
        f"...}}); or give {name} other embeddings"
    )


def _detect_caller_store(embeddings: KLEmbeddings) -> None:
    """Warn when the caller (found on the stack) is known to break the rewrite.

    A vector store that does not rank by the raw inner product; a LangChain document compressor or transformer
    that compares the vectors in a way that means nothing for them (``EmbeddingsFilter``, ``EmbeddingsRedundantFilter``
    and ``EmbeddingsClusteringFilter``: :func:`_misused_by`); a ``CacheBackedEmbeddings`` that caches queries under its
    documents' keys (:func:`_shares_query_cache`). Once per caller type and ``embeddings`` object (a store embeds at
    every add and search). A warning raised as an error (``-W error``) propagates; any other failure of this
    best-effort check is logged.
    """

    def incompatible(store_name: str, reason: str) -> None:
        _once(embeddings, store_name, lambda: _warn_incompatible(store_name, reason))

    frame = inspect.currentframe()
    try:
        f = frame.f_back.f_back if frame and frame.f_back else None
        for _ in range(6):
            if f is None:
                return
            loc = f.f_locals
            owner = loc.get("self")
            if isinstance(owner, (BaseDocumentCompressor, BaseDocumentTransformer)):
                how = _misused_by(owner)
                if how is not None:
                    _warn_once(embeddings, type(owner).__name__, _misuse_message(owner, how))
                return
            if isinstance(owner, Embeddings) and owner is not embeddings and _shares_query_cache(owner):
                _warn_once(embeddings, f"wrapper:{type(owner).__name__}", _shared_cache_message(owner))
            if isinstance(owner, VectorStore):
                if isinstance(owner, KLVectorStore):
                    return
                verdict, reason = _store_verdict(owner)
                if verdict is False:
                    incompatible(type(owner).__name__, reason)
                return
            kwargs = loc.get("kwargs")
            cls = loc.get("cls")
            if isinstance(cls, type) and issubclass(cls, VectorStore) and isinstance(kwargs, dict):
                if kwargs.get("normalize_L2") is True:
                    incompatible(cls.__name__, "normalize_L2=True rescales the vectors")
                    return
                strategy = kwargs.get("distance_strategy")
                if strategy is None and cls.__name__ == "FAISS":
                    strategy = "EUCLIDEAN_DISTANCE (the FAISS default)"
                if _strategy_verdict(strategy) is False:
                    incompatible(cls.__name__, f"distance_strategy={getattr(strategy, 'value', strategy)!r}")
                return
            f = f.f_back
    except Warning:  # our own warning, raised as an error (warnings filter "error"): the user asked for it
        raise
    except Exception:  # pragma: no cover - a best-effort check must never break embedding
        logger.debug("vector store compatibility check failed", exc_info=True)
    finally:
        del frame


# --------------------------------------------------------------------------- encoders
class EmbeddingsGaussianEncoder:
    """Wrap any LangChain ``Embeddings`` as a Gaussian encoder with a constant (unit) variance.

    ``-KL`` between two such point-like Gaussians is ``-||q - d||^2 / (2 var)``: plain L2 search,
    with no uncertainty.  This lets :class:`KLVectorStore` accept any embedding model (and the
    fakes that LangChain's test suites use); it is *not* how the Gaussian models are meant to run.

    Empty input (no queries, no documents) gives no Gaussians of the vectors' dimension, shape ``(0, dim)``.
    A LangChain ``Embeddings`` does not say its dimension: while this wrapper has returned no vector yet,
    empty input makes one ``embed_query("dimension")`` call to learn it (then remembered; an ``Embeddings``
    whose synchronous methods raise, e.g. an async-only one, raises here too).

    Args:
        embeddings: A LangChain ``Embeddings``.
        variance: The constant variance of every dimension (> 0).

    Examples:
        >>> from langchain_core.embeddings import DeterministicFakeEmbedding
        >>> enc = EmbeddingsGaussianEncoder(DeterministicFakeEmbedding(size=4))
        >>> enc.encode_queries(["hi"]).var.tolist()
        [[1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, embeddings: Embeddings, variance: float = 1.0) -> None:
        if not isinstance(embeddings, Embeddings):
            raise TypeError(f"embeddings must be a LangChain Embeddings; got {type(embeddings).__name__}")
        if not (variance > 0 and math.isfinite(variance)):
            raise ValueError(f"variance must be a finite number > 0; got {variance!r}")
        self.embeddings = embeddings
        self.variance = float(variance)
        self.name_or_path = f"langchain:{type(embeddings).__name__}"
        self.config = None
        self._dim: int | None = None  # the vectors' length, once seen (for empty inputs)

    def _gaussians(self, vectors: list[list[float]]) -> Gaussians:
        mean = np.asarray(vectors, dtype=np.float32)
        if mean.ndim != 2:
            mean = mean.reshape(len(vectors), -1)
        self._dim = int(mean.shape[1])
        return Gaussians(mean, np.full_like(mean, self.variance))

    def _empty(self) -> Gaussians:
        """No Gaussians, at the vectors' dimension.

        A LangChain ``Embeddings`` does not say its dimension: it is the length of a vector this wrapper
        returned before, else of one ``embed_query`` call made here (once; later calls remember it).
        """
        if self._dim is None:
            self._dim = int(self._gaussians([self.embeddings.embed_query("dimension")]).dim)
        empty = np.zeros((0, self._dim), np.float32)
        return Gaussians(empty, np.full_like(empty, self.variance), validate=False)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False) -> Gaussians:
        """Embed each query with ``embed_query``.

        No queries give no Gaussians, shape ``(0, dim)``: see :meth:`encode_documents`.
        """
        items = _check_texts(texts)
        if not items:
            return self._empty()
        return self._gaussians([self.embeddings.embed_query(t) for t in items])

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False
    ) -> Gaussians:
        """Embed documents with ``embed_documents``.

        No texts give no Gaussians of the vectors' dimension, shape ``(0, dim)``, as the Gaussian encoders
        return: the dimension is that of the vectors returned before, else learnt from one ``embed_query``
        call (a LangChain ``Embeddings`` does not say its dimension otherwise).
        """
        items = _check_texts(texts)
        if not items:
            return self._empty()
        return self._gaussians(self.embeddings.embed_documents(items))


#: ``HuggingFaceEmbeddings``' keywords and what KLEmbeddings takes instead.
_HF_EMBEDDINGS_KEYWORDS = {
    "model_kwargs": "the model is loaded with kl_retrievers.load_model: choose its backend with backend='torch' or "
    "'onnx', and a device by passing an encoder loaded and moved yourself (load_model(name, backend='torch')"
    ".to('cuda'))",
    "encode_kwargs": "pass batch_size= and show_progress_bar= here; normalize_embeddings has no meaning (the "
    "vectors are the exact -KL rewrite, which normalising breaks)",
    "show_progress": "it is show_progress_bar= here",
    "cache_folder": "models are found as kl_retrievers.load_model finds them (bundled names, folders, the hub "
    "cache); pass a folder as model_name",
    "multi_process": "there are no multi-process pools: ONNX Runtime and torch use the cores themselves",
}


def _unexpected_embeddings_keywords(unexpected: dict[str, Any]) -> str:
    """The ``TypeError`` message for keywords that :class:`KLEmbeddings` does not take, with our equivalents of
    ``HuggingFaceEmbeddings``' (``model_kwargs``, ``encode_kwargs``, ``show_progress``...).

    Examples:
        >>> print(_unexpected_embeddings_keywords({"show_progress": True}))  # doctest: +ELLIPSIS
        KLEmbeddings got unexpected keyword argument(s) ['show_progress'] (show_progress: it is show_progress_bar= ...
    """
    known = [f"{name}: {_HF_EMBEDDINGS_KEYWORDS[name]}" for name in unexpected if name in _HF_EMBEDDINGS_KEYWORDS]
    why = f" ({'; '.join(known)})" if known else ""
    return (
        f"KLEmbeddings got unexpected keyword argument(s) {sorted(unexpected)}{why}; it takes encoder, model_name, "
        "batch_size, show_progress_bar and backend"
    )


class KLEmbeddings(Embeddings):
    """LangChain ``Embeddings`` producing the two sides of the exact ``-KL`` inner-product rewrite.

    ``embed_query(q)`` returns ``q~ = [1, var_q + mu_q^2, mu_q]`` and ``embed_documents`` returns
    ``d~`` (``2k + 1`` floats each), so that ``<q~, d~> = -KL(Q || D) - c(q)``: an **inner-product**
    store ranks exactly by ``-KL`` (its scores differ from ``-KL`` by the query-only constant
    :meth:`query_constant`).

    Warning:
        Only stores that rank by the **raw inner product** are compatible (FAISS with
        ``DistanceStrategy.MAX_INNER_PRODUCT``, ``DOT_PRODUCT`` stores, ...).  **Cosine or L2 stores,
        and any store that normalises vectors, break the equivalence** and return wrong rankings.
        A ``UserWarning`` is emitted when such a store is detected on the call stack; check a
        store explicitly with :func:`check_inner_product_store`.

    Args:
        encoder: A Gaussian encoder (or a :class:`KLEmbeddings` or LangChain ``Embeddings``, as
            :class:`KLVectorStore` takes), a model name or folder (a str or a path, loaded here
            like ``model_name``), or ``None``: ``model_name``, else the default model
            (:func:`~kl_retrievers.load_default_model`, loaded lazily on first use).
        model_name: A model to load here with :func:`~kl_retrievers.load_model`, as
            ``HuggingFaceEmbeddings(model_name=...)`` takes one: a bundled model's name (also
            ``kl_retrievers:NAME``), a saved encoder folder or a hub id. Give ``encoder`` or
            ``model_name``, not both. The store records the loaded encoder's ``name_or_path`` when
            saved (a bundled name, or a folder's absolute path), so ``load_local`` loads it again.
        batch_size: Encoder batch size (queries are encoded one at a time on an encoder whose output depends
            on its batch: int8 ONNX, ``batch_invariant`` ``False``).
        show_progress_bar: Show the encoder's progress bar for documents.
        backend: For a model loaded by name (``model_name``, a name or folder as ``encoder``) or
            the default model: ``"torch"``, ``"onnx"`` (ONNX Runtime with int8 weights) or ``None``
            (the default: :func:`~kl_retrievers.pretrained.default_backend`, ONNX on CPU; see
            :func:`~kl_retrievers.load_model`). With an encoder object, which is already loaded, only its
            own backend is accepted (the same rule as :class:`kl_retrievers.llama_index.KLEmbedding`).

    Raises:
        ValueError: Both ``encoder`` and ``model_name`` given, an unknown ``backend``, or ``backend`` with
            an encoder object on another backend (or of a class that has none); the message names both
            and the call that loads the model on ``backend``.
        TypeError: ``model_name`` is not a str or a path, ``encoder`` is none of the above, or another keyword
            is given (``HuggingFaceEmbeddings``' ``model_kwargs``, ``encode_kwargs``, ``show_progress``... are
            named with what to pass here instead).
        kl_retrievers.hub.ModelNotFoundError: No model has that name (from
            :func:`~kl_retrievers.load_model`, which names it and suggests a close bundled name).

    Examples:
        >>> emb = KLEmbeddings()  # doctest: +SKIP
        >>> len(emb.embed_query("what is KL?")) == 2 * emb.dim + 1  # doctest: +SKIP
        True
        >>> KLEmbeddings(model_name="minilm-unit-variance")  # doctest: +SKIP
        KLEmbeddings(encoder='kl_retrievers:minilm-unit-variance', batch_size=32)
    """

    def __init__(
        self,
        encoder: Any | str | os.PathLike[str] | None = None,
        *,
        model_name: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        backend: Backend | None = None,
        **unexpected: NoReturn,  # any other keyword: a TypeError naming it, and an error for mypy (its type: Never)
    ) -> None:
        from kl_retrievers.pretrained import BACKENDS

        if unexpected:
            raise TypeError(_unexpected_embeddings_keywords(unexpected))
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if encoder is not None and model_name is not None:
            given = encoder if isinstance(encoder, (str, os.PathLike)) else type(encoder).__name__
            raise ValueError(
                f"pass either encoder or model_name, not both; got encoder={given!r} and model_name={model_name!r} "
                "(model_name loads a model by name or folder; encoder takes a loaded encoder, or a name too)"
            )
        if backend is not None and encoder is not None and not isinstance(encoder, (str, os.PathLike)):
            # a loaded encoder stays on its own backend: the same backend is harmless, another one is refused
            loaded = encoder.encoder if isinstance(encoder, KLEmbeddings) else encoder
            refusal = backend_refusal(loaded, backend, "KLEmbeddings(model_name={name}, backend={backend})")
            if refusal is not None:
                raise ValueError(refusal)
        if model_name is not None and not isinstance(model_name, (str, os.PathLike)):
            raise TypeError(
                "model_name must be a model name or folder (a str or a path, as kl_retrievers.load_model takes); "
                f"got {type(model_name).__name__}"
            )
        self.batch_size = _check_k(batch_size, "batch_size")
        self.show_progress_bar = bool(show_progress_bar)
        self.backend = backend
        name = encoder if isinstance(encoder, (str, os.PathLike)) else model_name
        if name is not None:  # loaded here, so a wrong name fails now and names itself
            from kl_retrievers.pretrained import load_model

            encoder = load_model(name, backend=backend)
        try:
            self._encoder = _unwrap_encoder(encoder) if encoder is not None else None
        except TypeError as exc:
            raise TypeError(f"{exc}; KLEmbeddings also takes a model name or folder (a str or a path)") from None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """The state that ``copy.deepcopy`` and ``pickle`` copy: the attributes without the lock (not copyable).

        The encoder is copied as it is (an encoder that cannot be pickled makes this fail, naming it).
        """
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore :meth:`__getstate__`'s state with a new lock."""
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def encoder(self) -> Any:
        """The Gaussian encoder (the default model is loaded here on first use)."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = _load_default_encoder(self.backend)
        return self._encoder

    def _recorded_encoder(self) -> Any:
        """The Gaussian encoder (:attr:`encoder`) whose name, config and weights identities a ``KLStore`` holding
        this object records and compares, so ``KLStore(KLEmbeddings(enc))`` saves what ``KLStore(enc)`` does.

        Asking never loads the default model: before its first use this object itself stands for it (it names no
        model), so ``KLStore.load(path, encoder=KLEmbeddings())`` loads no model until a text needs encoding."""
        return self._encoder if self._encoder is not None else self

    @property
    def dim(self) -> int | None:
        """The Gaussian dimension ``k`` when the encoder exposes it (vectors have ``2k + 1`` floats)."""
        cfg = getattr(self.encoder, "config", None)
        return getattr(cfg, "dim", None)

    def __repr__(self) -> str:
        name = getattr(self._encoder, "name_or_path", None) if self._encoder is not None else "<default, not loaded>"
        return f"KLEmbeddings(encoder={name!r}, batch_size={self.batch_size})"

    # -- Gaussians
    @property
    def batch_invariant(self) -> bool:
        """The encoder's ``batch_invariant`` (``True`` when it has none): whether a text's Gaussian is the same
        in any batch. ``False`` (int8 ONNX) makes a store encode queries one at a time, as for the encoder."""
        return bool(getattr(self.encoder, "batch_invariant", True))

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int | None = None, show_progress_bar: bool | None = False
    ) -> Gaussians:
        """Query Gaussians (numpy) for ``texts``; the keywords as the encoder's ``encode_queries`` takes them.

        So this object serves a ``KLStore`` as its encoder does (``KLStore(KLEmbeddings(enc))`` encodes
        as ``KLStore(enc)``; the store passes its ``batch_size`` and ``show_progress_bar``).

        Args:
            texts: The queries.
            batch_size: Queries per forward pass, used as given (``None``: this object's ``batch_size``, or 1 on
                an encoder whose output depends on its batch, int8 ONNX (``batch_invariant`` ``False``), so a
                query's Gaussian does not depend on the others: what :meth:`embed_query` and ``KLStore.search``
                give it).
            show_progress_bar: The encoder's progress bar (``None``: when stderr is a terminal and there are
                several batches).
        """
        items = _check_texts(texts)
        size = query_batch_size(self.encoder, self.batch_size) if batch_size is None else batch_size
        return self.encoder.encode_queries(items, batch_size=size, show_progress_bar=show_progress_bar).numpy()

    def encode_documents(
        self, texts: Sequence[str], *, batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> Gaussians:
        """Document Gaussians (numpy) for ``texts``; the keywords as the encoder's ``encode_documents`` takes them.

        Args:
            texts: The documents.
            batch_size: Documents per forward pass (``None``: this object's ``batch_size``).
            show_progress_bar: The encoder's progress bar (``None``: this object's ``show_progress_bar``).
        """
        items = _check_texts(texts)
        return self.encoder.encode_documents(
            items,
            batch_size=self.batch_size if batch_size is None else batch_size,
            show_progress_bar=self.show_progress_bar if show_progress_bar is None else show_progress_bar,
        ).numpy()

    # -- LangChain API
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Document vectors ``d~`` (``2k + 1`` floats each) for an inner-product store.

        Raises:
            TypeError: A text is not a str.
        """
        items = _check_texts(texts)
        _detect_caller_store(self)
        if not items:
            return []
        g = self.encode_documents(items).astype(np.float64)
        return np.asarray(kl_document_vectors(g), dtype=np.float64).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Query vector ``q~`` (``2k + 1`` floats), computed in float64 so :meth:`decode_query` recovers the Gaussian.

        Raises:
            TypeError: ``text`` is not a str.
        """
        _check_query(text)
        _detect_caller_store(self)
        g = self.encode_queries([text]).astype(np.float64)
        return np.asarray(kl_query_vectors(g), dtype=np.float64)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (runs in a worker thread)."""
        from langchain_core.runnables.config import run_in_executor

        _detect_caller_store(self)  # here: the worker thread's stack does not hold the calling store
        with at_callers_line():  # a blank-document warning points at the caller's line, not the worker's
            return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query` (runs in a worker thread)."""
        from langchain_core.runnables.config import run_in_executor

        _detect_caller_store(self)  # here: the worker thread's stack does not hold the calling store
        return await run_in_executor(None, self.embed_query, text)

    def query_constant(self, text: str) -> float:
        """``c(q)``: add it to an inner-product store's score to get the true ``-KL``."""
        _check_query(text)
        return float(kl_query_constant(self.encode_queries([text]).astype(np.float64))[0])

    @staticmethod
    def decode_query(vector: Sequence[float]) -> Gaussians:
        """The query Gaussian behind a ``q~`` vector from :meth:`embed_query`.

        ``mean = q~[k+1:]`` exactly, and ``var = q~[1:k+1] - mean**2``: for the float64 ``q~`` that
        :meth:`embed_query` returns, exact up to the round-off of ``var + mean**2`` (a relative error of about
        ``1e-16 * (var + mean**2) / var``; 1.3e-9 measured at ``|mean|`` 98, ``var`` 2.6e-4). A ``q~`` that came in
        float32 (a float32 array, or numbers that are all float32 numbers) keeps ``var + mean**2`` to about 7
        digits only, which can lose a variance that is small beside ``mean**2``: it is decoded all the same, with a
        ``UserWarning`` naming the precision and saying to pass float64, when a decoded variance may be off by
        more than 0.1%.

        The vector may be a list of numbers, a numpy array or a torch tensor (detached and copied to the CPU,
        bfloat16 read as float32), converted by the rules of :class:`~kl_retrievers.gaussian.Gaussians`.

        Raises:
            TypeError: The vector holds no real numbers (complex numbers, strings, objects), naming its dtype.
            ValueError: The vector has an even length or does not start with ``1`` (a ``d~``
                document vector, or an embedding from another model), or a decoded variance is clearly
                negative.

        Examples:
            >>> g = KLEmbeddings.decode_query([1.0, 4.5, 2.0])
            >>> g.mean.tolist(), g.var.tolist()
            ([[2.0]], [[0.5]])
        """
        v = _real_numpy(vector, "the q~ vector", "KLEmbeddings.decode_query takes").astype(np.float64).reshape(-1)
        if v.size < 3 or v.size % 2 != 1:
            raise ValueError(f"a q~ vector has 2k + 1 values; got {v.size}")
        if not abs(v[0] - 1.0) < 1e-6:
            raise ValueError(
                f"not a q~ query vector (its first value is {v[0]:g}, not 1): pass a vector from "
                "KLEmbeddings.embed_query, not a document vector or another model's embedding"
            )
        k = (v.size - 1) // 2
        mean = v[1 + k :]
        var = v[1 : 1 + k] - mean**2
        floor = 1e-12 * np.maximum(1.0, v[1 : 1 + k])
        if (var < -1e-6 * np.maximum(1.0, v[1 : 1 + k])).any():
            hint = query_precision_hint(vector, v[None, :])
            raise ValueError(f"not a q~ query vector: var_q + mu_q^2 is smaller than mu_q^2{hint}")
        used = np.maximum(var, floor)[None, :]
        warn_unreliable_query_variance(vector, v[None, :], "KLEmbeddings.decode_query (a q~ to search by)", used)
        return Gaussians(mean[None, :], used)


def _check_first_values(vectors: np.ndarray, gaussians: Gaussians, name: str) -> None:
    """Check that document vectors ``d~`` start with the value the Gaussians behind them give.

    Coordinates ``1..2k`` recover a Gaussian (:func:`~kl_retrievers.gaussian.document_gaussians_from_vectors`,
    which does not read the first one); the first must then be ``-1/2 sum(log var + mu^2 / var)``: an ordinary
    embedding (or another kind of vector) whose coordinates ``1..k`` happen to be negative is no ``d~``. The check
    is :func:`kl_retrievers._adapters.first_value_mismatch`, as in LlamaIndex's adapter.

    Args:
        vectors: The float64 rows, shape ``(n, 2k + 1)``.
        gaussians: The Gaussians recovered from them.
        name: The rows' name in the message (``name[j]``).

    Raises:
        ValueError: A row whose first value is not its Gaussian's, naming the first and how many.
    """
    found = first_value_mismatch(vectors, gaussians)  # float32 rows round trip well within its tolerance
    if found is not None:
        first = float(vectors[found.row, 0])
        gives = f"the Gaussian its other values give has {found.expected:.6g} there"
        if np.isfinite(first):
            why = f"its first value is {first:.6g}, but {gives}"
        else:  # a d~ row's values must be finite, whatever the Gaussian gives there
            why = f"its first value is {first:.6g}, not a finite number; {gives}"
        raise ValueError(f"{name}[{found.row}] is not one: {why} ({found.mismatched} such vector(s))")


class _CachedKLEncoder:
    """The Gaussian encoder of a document cache over a :class:`KLEmbeddings` (LangChain's ``CacheBackedEmbeddings``).

    Documents go through the cache (served from it, or encoded by the model and cached there) and their ``d~``
    come back as the Gaussians behind them (:func:`~kl_retrievers.gaussian.document_gaussians_from_vectors`: exact
    up to rounding, in float32 as the model gives them), so a store's scores are the model's. Queries go through
    the cache's own query cache when it has one (``q~`` decoded by :meth:`KLEmbeddings.decode_query`), else to the
    model. The cache encodes at the :class:`KLEmbeddings`' batch size. Every other attribute (name, config, batch
    invariance, tokenizer...) and the identities a store records are the model's.
    """

    def __init__(self, wrapper: Embeddings, embeddings: KLEmbeddings) -> None:
        self.wrapper = wrapper
        self.embeddings = embeddings

    def __getattr__(self, name: str) -> Any:
        """The model's attribute ``name`` (``name_or_path``, ``config``, ``batch_invariant``...)."""
        if name.startswith("__") or name in ("wrapper", "embeddings"):  # not during copying or unpickling
            raise AttributeError(name)
        return getattr(self.embeddings.encoder, name)

    def _recorded_encoder(self) -> Any:
        """The model whose identities a store records (see :meth:`KLEmbeddings._recorded_encoder`)."""
        return self.embeddings._recorded_encoder()

    def __repr__(self) -> str:
        return f"_CachedKLEncoder({type(self.wrapper).__name__} of {self.embeddings!r})"

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False
    ) -> Gaussians:
        """Document Gaussians through the cache (``batch_size`` and ``show_progress_bar``: the KLEmbeddings')."""
        items = _check_texts(texts)
        if not items:
            return self.embeddings.encode_documents(items)
        vectors = self.wrapper.embed_documents(items)
        model = self.embeddings._encoder  # its dimension, when loaded (a cache hit loads no model)
        dim = getattr(getattr(model, "config", None), "dim", None)
        try:
            gaussians = document_gaussians_from_vectors(vectors)
            _check_first_values(np.asarray(vectors, dtype=np.float64), gaussians, "vectors")
            if isinstance(dim, int) and gaussians.dim != dim:
                raise ValueError(f"dimension {gaussians.dim}, the model's is {dim}")
        except ValueError as exc:
            raise ValueError(
                f"{type(self.wrapper).__name__}.embed_documents returned vectors that are not this KLEmbeddings' "
                f"document vectors d~ ({exc}): does its cache hold another model's vectors, or query vectors? Give "
                "each model its own namespace and queries a cache of their own"
            ) from None
        return Gaussians(gaussians.mean.astype(np.float32), gaussians.var.astype(np.float32))

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False) -> Gaussians:
        """Query Gaussians through the cache's query cache, else from the model (as :class:`KLEmbeddings` gives)."""
        items = _check_texts(texts)
        if not items or getattr(self.wrapper, "query_embedding_store", None) is None:
            return self.embeddings.encode_queries(items, batch_size=batch_size, show_progress_bar=show_progress_bar)
        decoded = [KLEmbeddings.decode_query(self.wrapper.embed_query(text)) for text in items]
        mean = np.concatenate([g.mean for g in decoded]).astype(np.float32)
        return Gaussians(mean, np.concatenate([g.var for g in decoded]).astype(np.float32))


# --------------------------------------------------------------------------- vector store
_STORE_METHODS = ("add", "delete", "get_by_ids", "get_gaussians", "search")
#: Why a KLVectorStore does not pickle or deep-copy, and what to do (the LlamaIndex store's message, for LangChain).
_NO_COPY_STORE = (
    "a KLVectorStore cannot be pickled or deep-copied (its store holds locks and an index): save it with "
    "store.save_local(folder) (or store.serialize_to_bytes()), and load it with KLVectorStore.load_local(folder) "
    "(or KLVectorStore.deserialize_from_bytes(data, embeddings)); share the object itself between threads"
)


def _delete_by_ids(store: Any, ids: Any, delete_all: bool, owner: str) -> bool:
    """``owner.delete(ids, delete_all=...)`` on ``store`` (a KLStore, MilvusKLStore or KLHybridStore): ``True``.

    Ids already absent are not a failure (logged at DEBUG level): LangChain's ``index(cleanup=...)`` deletes
    every id its record manager holds, also one a person deleted by hand meanwhile, and raises on ``False``.

    Raises:
        ValueError: No ids and no ``delete_all=True``, or both.
        TypeError: ``ids`` is a single str, an id is not a str, or ``delete_all`` is not a bool (a string
            such as ``"no"`` is true: it would empty the store).
    """
    check_bool(delete_all, "delete_all")
    if ids is None:
        if not delete_all:
            raise ValueError(
                f"{owner}.delete() needs the ids to delete (got ids=None); to delete every document "
                "call delete(delete_all=True) or clear()"
            )
        if not _write_cancelled_after_count(store, f"{owner}.adelete"):
            with store_write_unless_cancelled(f"{owner}.adelete") as gate:
                if gate.go:
                    store.delete(store.ids)  # every document: none can be absent (nothing read back first)
        return True
    if delete_all:
        raise ValueError(f"pass either ids or delete_all=True to {owner}.delete, not both")
    if isinstance(ids, str):
        raise TypeError("ids must be a list of str, not a single str")
    wanted = list(dict.fromkeys(_str_ids(ids)))
    if isinstance(store, (KLStore, KLHybridStore)):  # ids held in memory: a membership test, no document read
        present = {i for i in wanted if i in store}
    else:  # MilvusKLStore (whose `in` is a query per id): one read of them all
        present = {d.id for d in store.get_by_ids(wanted)} if wanted else set()
    absent = [i for i in wanted if i not in present]
    if absent:  # not a failure; left out of the store's delete, which would log a WARNING about them
        logger.debug("%s.delete: %d id(s) were already absent: %s", owner, len(absent), absent[:10])
    if len(absent) < len(wanted) and not _write_cancelled_after_count(store, f"{owner}.adelete"):
        with store_write_unless_cancelled(f"{owner}.adelete") as gate:
            if gate.go:
                store.delete([i for i in wanted if i in present])
    return True


def _document_fields(
    documents: Iterable[Document], ids: Iterable[str | None] | None
) -> tuple[list[str], list[dict[str, Any]], Iterable[str | None] | None]:
    """``(texts, metadatas, ids)`` of ``documents``, as ``VectorStore.add_documents`` passes them to ``add_texts``.

    ``ids`` given wins; else the documents' ``id`` fields when any is set (a document without one gets a
    uuid4 hex, :func:`_check_add_args`); else ``None``.

    Raises:
        TypeError: ``documents`` is no iterable of ``Document`` objects (e.g. of strings: use ``from_texts``).
    """
    docs, ids = _document_list(documents, ids)
    return [d.page_content for d in docs], [dict(d.metadata) for d in docs], ids


def _document_list(
    documents: Iterable[Document], ids: Iterable[str | None] | None
) -> tuple[list[Document], Iterable[str | None] | None]:
    """``documents`` read into a list, each checked to be a ``Document``, and the ids :func:`_document_fields` gives.

    Reads no ``page_content`` or ``metadata``: an async add calls it on the event loop's thread (the documents'
    types and ids in a few C loops), and leaves the texts and the metadata copies to its worker thread.

    Raises:
        TypeError: ``documents`` is no iterable of ``Document`` objects (e.g. of strings: use ``from_texts``).
    """
    if isinstance(documents, (str, bytes, Document)) or not isinstance(documents, Iterable):
        raise TypeError(
            f"documents must be an iterable of langchain_core Document objects; got a single {type(documents).__name__}"
        )
    docs = list(documents)
    if not all(issubclass(kind, Document) for kind in set(map(type, docs))):
        for j, doc in enumerate(docs):
            if not isinstance(doc, Document):
                hint = " (for plain texts use from_texts or add_texts)" if isinstance(doc, str) else ""
                raise TypeError(
                    f"documents[{j}] must be a langchain_core Document; got {type(doc).__name__} {doc!r:.80}{hint}"
                )
    if ids is None:
        own = list(map(_DOCUMENT_ID, docs))
        if any(own):
            ids = own
    return docs, ids


_DOCUMENT_ID = operator.attrgetter("id")


def _without_search_scores(metadata: dict[str, Any], keys: Set[str]) -> dict[str, Any]:
    """``metadata`` without ``keys`` when it holds every one of them, else itself.

    ``keys`` are those a retriever writes on every document it returns (its scores): a returned document
    added again carries them all, and they are left out, as LlamaIndex's ``KLHybridRetriever.add_nodes``
    leaves out the scores its search added; a document holding only some is the user's, kept as it is.
    """
    if not keys or not keys <= metadata.keys():
        return metadata
    return {key: value for key, value in metadata.items() if key not in keys}


def _write_cancelled_after_count(store: Any, what: str) -> bool:
    """:func:`~kl_retrievers._adapters.write_cancelled`, asked after a loaded ``KLHybridStore`` counted its texts.

    A loaded hybrid store's first write counts every stored text (seconds on a large store) before it takes its
    write lock (``KLHybridStore._ensure_tokens``); counted here first, a cancellation during the count is seen
    by the check after it, and the write changes nothing. A store already counted, or any other store: only
    the check. Outside an async write the count is the one ``store.add`` / ``store.delete`` would make next.
    """
    if write_cancelled(what):
        return True
    if not isinstance(store, KLHybridStore):
        return False
    store._ensure_tokens()  # no lock held meanwhile: searches go on
    return write_cancelled(what)


def _store_texts(
    store: Any, items: list[str], metadatas: list[dict[str, Any] | None] | None, ids: list[str] | None
) -> list[str]:
    """``store.add(items, ids=ids, metadatas=metadatas)``, a refused metadata naming its document id.

    In a cancelled async write (:func:`~kl_retrievers._adapters.cancellable_write`) nothing is written: the
    texts are encoded here first (after the checks of ``ids`` and ``metadatas`` that ``store.add`` makes before
    encoding), a loaded ``KLHybridStore``'s stored texts counted (:func:`_write_cancelled_after_count`), and the
    cancellation is checked before the store takes its write lock and again once it holds it
    (:func:`~kl_retrievers._adapters.store_write_unless_cancelled`).
    """
    what = f"{type(store).__name__}.add"
    try:
        gaussians = encode_for_write(store, items, metadatas, ids)
        if _write_cancelled_after_count(store, what):
            return []
        with store_write_unless_cancelled(what) as gate:
            if not gate.go:
                return []
            if gaussians is not None:
                added = list(store.add(items, gaussians=gaussians, ids=ids, metadatas=metadatas))
            else:
                added = list(store.add(items, ids=ids, metadatas=metadatas))
        return added if gate.go else []
    except (TypeError, ValueError) as exc:
        named = _name_the_document(exc, ids)
        if named is exc:
            raise
        raise named from exc


def _name_the_document(exc: TypeError | ValueError, ids: Sequence[str] | None) -> TypeError | ValueError:
    """``exc`` (a store's refusal of ``metadatas[j]``) naming the document id ``ids[j]`` too, when known.

    A batch of LangChain's ``index()`` is any slice of the documents: the row within it alone does not say
    which document it is.
    """
    found = re.match(r"metadatas\[(\d+)\]", str(exc))
    if found is None or not ids or int(found.group(1)) >= len(ids):
        return exc
    end = found.end()
    message = str(exc)
    return type(exc)(f"{message[:end]} (document id {ids[int(found.group(1))]!r}){message[end:]}")


# The reserved metadata keys a dense KLRetriever warned about, per KLVectorStore searched (see
# KLRetriever._warn_reserved_keys): once per store and key, whichever retriever object searched it.
_WARNED_RESERVED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_WARNED_RESERVED_LOCK = threading.Lock()


class KLVectorStore(VectorStore):
    """A LangChain vector store ranked by exact ``-KL(Q || D)`` (higher is better) over :class:`KLStore`.

    Scores from ``similarity_search_with_score`` are the true ``-KL`` (``<= 0``, ``0`` for identical
    Gaussians).  Relevance scores (``similarity_search_with_relevance_scores`` and
    ``search_type="similarity_score_threshold"``) map ``-KL`` in ``(-inf, 0]`` to ``(0, 1]`` with
    ``relevance="exp"`` (default): ``exp(-KL)``, the geometric mean over the query's likely points
    ``x`` of ``D(x) / Q(x)``; ``1`` for identical Gaussians, ``0.5`` at ``KL = ln 2``.  With the
    bundled models ``KL`` is close to ``1 - cos`` of the means, so unrelated texts score about
    0.3 to 0.45 and near-duplicates about 0.9 or more: ``score_threshold=0.5`` keeps texts about as
    similar as a cosine of 0.31.  It is not a calibrated probability.  Also ``"inverse"``
    (``1 / (1 + KL)``), ``"exp_per_dim"`` (``exp(-KL / k)``) or a callable ``f(neg_kl, dim) -> float``.

    ``delete()`` needs ids; ``delete(delete_all=True)`` or :meth:`clear` empties the store.

    Args:
        embedding: A :class:`KLEmbeddings`, a Gaussian encoder, or any LangChain ``Embeddings``
            (wrapped by :class:`EmbeddingsGaussianEncoder`: unit variance, i.e. L2 search; a wrapper of a
            :class:`KLEmbeddings` serves as that KLEmbeddings, a ``CacheBackedEmbeddings`` through its cache);
            default: the package's default model, loaded on first use. A model name or folder is
            refused (``TypeError``): pass ``KLEmbeddings(model_name=...)``.
        store: An existing :class:`KLStore` or :class:`~kl_retrievers.milvus.MilvusKLStore` to
            wrap (its encoder is replaced by ``embedding``'s when one is given). A store without an
            encoder (``KLStore.load(path)``) and no ``embedding`` gets the default model at the
            first text query, only if its documents have the default model's dimension; otherwise
            that query raises a ``ValueError`` asking for ``embedding=``.
        relevance: Relevance function (see above).
        batch_size: Encoder batch size (``None``: a :class:`KLEmbeddings` ``embedding``'s, else 32). A new
            :class:`KLStore` encodes documents at it, and, when not given in ``store_kwargs``, with the
            :class:`KLEmbeddings`' ``show_progress_bar``.
        **store_kwargs: Passed to :class:`KLStore` when ``store`` is not given (e.g. ``index_type``). An unknown
            keyword raises a ``TypeError`` naming it, the closest option and every option.

    :attr:`embeddings` is the :class:`KLEmbeddings` given as ``embedding`` (the same object), else one made
    once over the store's encoder. The store does not pickle or deep-copy (a ``TypeError``): save it with
    :meth:`save_local` (or :meth:`serialize_to_bytes`) and load it with :meth:`load_local`; ``copy.copy``
    gives a second view of the same documents.

    Examples:
        >>> store = KLVectorStore.from_texts(["the cat sat", "tea"], KLEmbeddings())  # doctest: +SKIP
        >>> store.as_retriever(search_kwargs={"k": 1}).invoke("cat")  # doctest: +SKIP
        [Document(id='...', metadata={}, page_content='the cat sat')]
    """

    def __init__(
        self,
        embedding: Any | None = None,
        *,
        store: Any | None = None,
        relevance: RelevanceName | RelevanceFn = DEFAULT_RELEVANCE,
        batch_size: int | None = None,
        **store_kwargs: Any,
    ) -> None:
        resolve_relevance(relevance)
        self.relevance = relevance
        # the KLEmbeddings given, or the one a wrapper holds (CacheBackedEmbeddings): the wrappers are searched once
        encoder, given = _resolve_embedding(embedding)
        if batch_size is None:
            batch_size = given.batch_size if given is not None else 32
        self.batch_size = _check_k(batch_size, "batch_size")
        check_store_options(
            type(self).__name__,
            store_kwargs,
            init_option_names(type(self)),
            store_option_names(KLStore.__init__, skip=("batch_size",)),
        )
        if store is not None and store_kwargs:
            raise ValueError(f"pass either store or KLStore options, not both; got {sorted(store_kwargs)}")
        if store is not None and not isinstance(store, KLStore):
            missing = [m for m in _STORE_METHODS if not callable(getattr(store, m, None))]
            if missing:
                raise TypeError(
                    f"store must be a KLStore or a MilvusKLStore (an object with {', '.join(_STORE_METHODS)}); "
                    f"got {type(store).__name__}, which lacks {', '.join(missing)}"
                )
        self._encoder: Any = encoder
        #: the KLEmbeddings that `embeddings` returns: the one given, else one made at the first use
        self._embeddings: KLEmbeddings | None = given
        if store is None:
            if given is not None:
                store_kwargs.setdefault("show_progress_bar", given.show_progress_bar)
            store = KLStore(encoder=self._encoder, batch_size=self.batch_size, **store_kwargs)
        elif self._encoder is not None:
            store.encoder = self._encoder
        else:
            self._encoder = store.encoder
        self.store = store
        self._lock = threading.Lock()

    # -- encoder / embeddings
    def _get_encoder(self) -> Any:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    load = getattr(self.store, "_load_saved_encoder", None)  # KLStore's
                    if load is not None and getattr(self.store, "saved_encoder", None):
                        try:  # the model the store was saved with (its recorded backend), as load_local does
                            encoder = load()
                        except ValueError as exc:
                            raise ValueError(
                                f"{exc}; pass embedding=... (a KLEmbeddings or Gaussian encoder of the model the "
                                "documents were encoded with)"
                            ) from None
                    else:
                        _check_default_encoder_fits(self.store)
                        encoder = _load_default_encoder()
                    self._encoder = encoder
                    self.store.encoder = encoder
        return self._encoder

    @property
    def embeddings(self) -> KLEmbeddings:
        """The :class:`KLEmbeddings` given as ``embedding``, else one over this store's encoder, made once
        (``q~`` / ``d~`` of the rewrite); the same object at every access."""
        if self._embeddings is None:
            made = KLEmbeddings(self._get_encoder(), batch_size=self.batch_size)
            with self._lock:
                if self._embeddings is None:
                    self._embeddings = made
        return self._embeddings

    def __getstate__(self) -> dict[str, Any]:
        """Refuse to pickle: the wrapped store holds locks and an index (see :data:`_NO_COPY_STORE`).

        Raises:
            TypeError: Always; it says to use :meth:`save_local` / :meth:`load_local`.
        """
        raise TypeError(_NO_COPY_STORE)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> KLVectorStore:
        """Refuse to deep-copy (the wrapped store holds locks and an index); see :meth:`__getstate__`."""
        raise TypeError(_NO_COPY_STORE)

    def __copy__(self) -> KLVectorStore:
        """A shallow copy: another view of the same store (as before :meth:`__getstate__` refused pickling)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        return copy

    def _get_retriever_tags(self) -> list[str]:
        """``VectorStore``'s retriever tags (the store's and the embeddings' class names) without loading the model.

        LangChain's reads :attr:`embeddings`, which loads the encoder: ``as_retriever()`` would load the default
        model at construction instead of at the first query. The embeddings here are always a :class:`KLEmbeddings`.
        """
        return [type(self).__name__, KLEmbeddings.__name__]

    def as_retriever(self, **kwargs: Any) -> VectorStoreRetriever:
        """LangChain's ``VectorStoreRetriever`` over this store, with a warning for a search option passed outside
        ``search_kwargs``.

        ``as_retriever(filter={...})`` (or ``k=``, ``fetch_k=``, ...) is dropped by LangChain without a word, so
        the retriever would search unfiltered; it is still dropped (LangChain's behaviour is unchanged), with a
        ``UserWarning`` naming it and ``search_kwargs={"filter": ...}``.

        Args:
            **kwargs: ``VectorStoreRetriever``'s fields: ``search_type``, ``search_kwargs`` (``k``, ``filter``,
                ``fetch_k``, ``lambda_mult``, ``score_threshold``), ``tags``, ``metadata`` and ``name``.
        """
        _warn_ignored(
            kwargs,
            "as_retriever",
            "search_type, search_kwargs, tags, metadata and name; search options go in search_kwargs, e.g. "
            'as_retriever(search_kwargs={"filter": ..., "k": ...})',
            accepted=tuple(VectorStoreRetriever.model_fields),
        )
        return super().as_retriever(**kwargs)

    @property
    def dim(self) -> int | None:
        """Gaussian dimension ``k`` of the stored documents (``None`` while empty)."""
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"KLVectorStore({self.store!r}, relevance={self.relevance!r})"

    def _encode_query(self, query: str) -> Gaussians:
        _check_query(query)
        enc = self._get_encoder()
        return enc.encode_queries([query], batch_size=self.batch_size, show_progress_bar=False).numpy()

    # -- writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Encode and add texts; an existing id is replaced (upsert).

        Args:
            texts: Texts to add.
            metadatas: One JSON-serialisable dict per text (a list or any other iterable, read once;
                not a single dict, nor a set).
            ids: One id per text (``None`` and ``""`` entries get a fresh uuid4 hex; a list or any other iterable,
                read once, such as a dict's ``keys()``; not a single str, nor a set, whose order is
                arbitrary); also taken by position, as langchain-community's FAISS takes it.
            **kwargs: ``batch_size`` (which LangChain's ``index()``, ``aindex()`` and ``add_documents(docs,
                batch_size=...)`` pass) is accepted and not used: the texts of one call are written together,
                encoded in batches of this store's ``batch_size``. Anything else is ignored with a warning.

        Returns:
            The ids, in input order.

        Raises:
            TypeError: A text is not a str, or ``metadatas`` / ``ids`` is a single dict / str, not one per
                text, or a set (its order would pair them with the texts at random), or an id is not a str.
            ValueError: ``metadatas`` or ``ids`` do not match ``texts`` in length, or repeated ids.
        """
        _warn_ignored(kwargs, "add_texts", "texts, metadatas and ids", accepted=_ADD_KWARGS)
        items = _check_texts(texts)
        metadata_list, id_values = _check_add_args(len(items), metadatas, ids)
        if not items:
            return []
        self._get_encoder()
        return _store_texts(self.store, items, metadata_list, id_values)

    def upsert(self, documents: Sequence[Document], ids: list[str] | None = None) -> dict[str, list[str]]:
        """Insert or replace documents by id (``Document.id``, or ``ids``).

        Returns:
            ``{"succeeded": [...ids], "failed": []}`` (the shape of LangChain's ``UpsertResponse``).
        """
        docs = list(documents)
        if ids is None:
            ids = [d.id or uuid.uuid4().hex for d in docs]
        done = self.add_texts([d.page_content for d in docs], [dict(d.metadata) for d in docs], ids=ids)
        return {"succeeded": done, "failed": []}

    async def aupsert(self, documents: Sequence[Document], ids: list[str] | None = None) -> dict[str, list[str]]:
        """Async :meth:`upsert` (a subclass's too), in a worker thread; a cancelled call writes nothing if it can,
        and bad ids fail before anything is encoded (see :meth:`aadd_texts`).

        The documents and ids are read here, on the caller's thread, and the ids checked as :meth:`add_texts`
        checks them (``ids``, else each document's ``id``; ``None`` and ``""`` get a uuid4 hex in :meth:`upsert`).
        """
        docs = list(documents)
        if isinstance(ids, Iterator):  # a generator: read once, here, and the same ids handed to upsert
            ids = list(ids)
        given = ids if ids is not None else [getattr(d, "id", None) for d in docs]
        check_write_ids(_check_add_args(len(docs), None, given)[1])
        return await cancellable_write(self.upsert, docs, ids)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async :meth:`add_texts` (runs in a worker thread; ``ids`` also by position, as in FAISS).

        A cancelled call (``asyncio.wait_for``'s timeout too) writes nothing, as ``InMemoryVectorStore``: the
        worker thread goes on encoding, then stops before the store's write lock; a write that holds the lock
        already completes (:func:`~kl_retrievers._adapters.cancellable_write`); :meth:`aadd_documents` writes so
        too. The texts, metadatas and ids are read here, on the caller's thread, and the ids checked as
        :meth:`add_texts` checks them: a bad id (not a str, repeated, a lone surrogate) fails at once, before
        anything is encoded. Each text is checked in the worker thread (a str, that UTF-8 can encode), as
        :meth:`add_texts` checks it, so that many texts do not hold the event loop; a container that is not
        texts (a single str, a set, a dict) is refused here.
        """
        _warn_ignored(kwargs, "aadd_texts", "texts, metadatas and ids", accepted=_ADD_KWARGS)
        items = _read_texts(texts)  # each text is checked in the worker thread (add_texts): it costs the loop time
        metadata_list, id_values = _check_add_args(len(items), metadatas, ids)
        check_write_ids(id_values)
        return await cancellable_write(self.add_texts, items, metadata_list, id_values)

    async def aadd_documents(self, documents: Iterable[Document], **kwargs: Any) -> list[str]:
        """Async ``add_documents`` (runs in a worker thread); a cancelled call writes nothing if it can, as
        :meth:`aadd_texts`.

        The documents (a generator too) and the ids (``ids=``, else the documents' ``id`` fields when any is set)
        are read, and the ids checked, here, on the caller's thread: a bad id, or an item that is not a
        ``Document``, fails at once, before anything is encoded. The texts and the metadata are read in the worker
        thread (``add_documents``, then :meth:`add_texts`), so that many documents do not hold the event loop.
        ``batch_size`` is accepted and not used, as :meth:`add_texts` takes it; any other keyword is ignored with
        a warning.
        """
        ids = kwargs.pop("ids", None)
        passed = _warn_ignored(kwargs, "aadd_documents", "documents and ids", accepted=_ADD_KWARGS)
        docs, id_values = _document_list(documents, ids)  # no page_content or metadata read here
        _, id_list = _check_add_args(len(docs), None, id_values, "documents")
        return await cancellable_write(self.add_documents, docs, ids=check_write_ids(id_list), **passed)

    def delete(self, ids: list[str] | None = None, *, delete_all: bool = False, **kwargs: Any) -> bool | None:
        """Delete documents by id; ids already absent are ignored (idempotent, as ``InMemoryVectorStore``).

        ``delete()`` with no ids refuses (a forgotten argument must not wipe the store); empty the
        store with ``delete(delete_all=True)`` or :meth:`clear`.

        Args:
            ids: The ids to delete.
            delete_all: Delete every document (``ids`` must then be ``None``); a bool.
            **kwargs: Ignored, with a warning; ``filter`` is refused (this store deletes by id only).

        Returns:
            ``True``: every given id is absent afterwards (the ids that were already absent are logged at
            DEBUG level). LangChain's ``index(cleanup=...)`` reads ``False`` as a failed deletion and
            raises, so an id deleted by hand between two syncs must not give ``False``.

        Raises:
            ValueError: No ids and no ``delete_all=True``, or both.
            TypeError: ``delete_all`` is not a bool, an id is not a str, or a ``filter`` is given.

        Examples:
            >>> store.delete(["a", "b"])  # doctest: +SKIP
            True
        """
        _check_delete_kwargs(kwargs, "delete")
        return _delete_by_ids(self.store, ids, delete_all, "KLVectorStore")

    async def adelete(self, ids: list[str] | None = None, *, delete_all: bool = False, **kwargs: Any) -> bool | None:
        """Async :meth:`delete` (runs in a worker thread); a call cancelled before it deletes deletes nothing.

        The keywords are checked here, before, so that a warning names ``adelete`` and the caller's line.
        """
        _check_delete_kwargs(kwargs, "adelete")
        return await cancellable_write(self.delete, ids, delete_all=delete_all)

    def clear(self) -> None:
        """Delete every document (the store's settings are kept); same as ``delete(delete_all=True)``."""
        self.delete(delete_all=True)

    def _expected_dim(self) -> int | None:
        """The Gaussian dimension new documents must have: the stored documents', else the encoder's (``None``: any)."""
        own = self.store.dim
        encoder = self.store.encoder
        if own is None and encoder is not None:
            own = getattr(getattr(encoder, "config", None), "dim", None)
            if own is None:  # e.g. a LangChain Embeddings wrapped with unit variances: its dimension shows in use
                own = encoder.encode_queries(["dimension"]).dim
        return int(own) if isinstance(own, (int, np.integer)) else None

    def add_embeddings(
        self,
        text_embeddings: Iterable[tuple[str, Sequence[float]]],
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add texts with document vectors computed earlier (FAISS's ``add_embeddings``); nothing is encoded.

        Each vector is a document vector ``d~`` (``2k + 1`` floats) as :meth:`KLEmbeddings.embed_documents`
        returns it; the Gaussian behind it is recovered (exactly, up to float rounding) and stored, so the
        store scores it as if the text had been encoded here. An existing id is replaced (upsert).

        Args:
            text_embeddings: ``(text, d~)`` pairs.
            metadatas: One JSON-serialisable dict per pair (a list or any other iterable, read once;
                not a set).
            ids: One id per pair (``None`` and ``""`` entries get a fresh uuid4 hex; any iterable, read once, but a
                set).

        Returns:
            The ids, in input order.

        Raises:
            TypeError: An item is not a ``(str, vector)`` pair, a vector holds no real numbers (complex
                numbers, strings, objects: naming its dtype), or ``metadatas`` / ``ids`` is a single
                dict / str or a set.
            ValueError: A vector that is no document vector ``d~`` (an ordinary embedding, a ``q~``
                query vector, another length than ``2k + 1``), Gaussians of another dimension than this
                store's documents or encoder, or ``metadatas`` / ``ids`` that do not match in length.
                Nothing is added then.

        Examples:
            >>> emb = KLEmbeddings()  # doctest: +SKIP
            >>> texts = ["Aspirin lowers fever."]  # doctest: +SKIP
            >>> store.add_embeddings(zip(texts, emb.embed_documents(texts)))  # doctest: +SKIP
        """
        _warn_ignored(kwargs, "add_embeddings", "text_embeddings, metadatas and ids")
        pairs = list(text_embeddings)
        for j, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"text_embeddings[{j}] must be a (text, vector) pair; got {type(pair).__name__}")
        items = _check_texts([text for text, _ in pairs], "the texts of text_embeddings")
        metadata_list, id_values = _check_add_args(len(items), metadatas, ids, "text_embeddings")
        if not items:
            return []
        what = (
            "add_embeddings takes document vectors d~ as KLEmbeddings.embed_documents returns them (2k + 1 floats "
            "per text: -1/2 sum(log var + mu^2 / var), then -1 / (2 var), then mu / var)"
        )
        lengths = [len(vec) if hasattr(vec, "__len__") else None for _, vec in pairs]
        odd = next((j for j, n in enumerate(lengths) if n != lengths[0]), None)
        if odd is not None:
            raise ValueError(
                f"{what}; text_embeddings[0] has {lengths[0]} floats but text_embeddings[{odd}] has {lengths[odd]}"
            )
        raw = [vec for _, vec in pairs]  # the caller's: numbers, arrays or tensors (Gaussians' rules)
        rows: Any
        try:  # all rows at once (row by row took 2.5x as long on 5,000 rows of 769 floats)
            rows = _real_numpy(raw, "text_embeddings", "add_embeddings takes")
        except (TypeError, ValueError):  # row by row: the message names the first bad row
            rows = [_real_numpy(vec, f"text_embeddings[{j}]", "add_embeddings takes") for j, vec in enumerate(raw)]
        try:
            vectors = np.asarray(rows, dtype=np.float64)
            gaussians = document_gaussians_from_vectors(vectors)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}; {exc}") from exc
        try:
            _check_first_values(vectors, gaussians, "text_embeddings")
        except ValueError as exc:
            raise ValueError(f"{what}; {exc}{document_precision_hint(raw, vectors)}") from None
        own = self._expected_dim()
        if own is not None and gaussians.dim != own:
            raise ValueError(
                f"the document vectors hold Gaussians of dimension {gaussians.dim} ({2 * gaussians.dim + 1} floats); "
                f"this store needs dimension {own} ({2 * own + 1} floats): embed them with the store's model"
            )
        return self.store.add(items, gaussians=gaussians, ids=id_values, metadatas=metadata_list)

    def merge_from(self, target: KLVectorStore) -> None:
        """Add every document of ``target`` to this store, as langchain-community's ``FAISS.merge_from`` does.

        The documents keep their ids, texts and metadata, and their stored Gaussians are copied (nothing
        is encoded again, so ``target`` may have been built with another encoder of the same dimension).
        ``target`` is left unchanged. The documents are read from ``target`` and added in one call, so
        they are held in memory once more meanwhile.

        Args:
            target: Another :class:`KLVectorStore` (over a :class:`KLStore` or a ``MilvusKLStore``).

        Raises:
            TypeError: ``target`` is not a :class:`KLVectorStore` (e.g. a langchain-community FAISS).
            ValueError: An id of ``target`` is already in this store (as FAISS, whose message, "Tried to
                add ids that already exist", this one starts with), or ``target`` holds Gaussians of
                another dimension than this store's documents or encoder. Nothing is added then.

        Examples:
            >>> store.merge_from(other)  # doctest: +SKIP
        """
        if not isinstance(target, KLVectorStore):
            raise TypeError(
                f"merge_from takes a KLVectorStore; got {type(target).__name__} (move a FAISS store's documents "
                "over with add_documents, which encodes them)"
            )
        ids = list(target.store.ids)
        if not ids:
            return
        if target is self:
            raise ValueError(
                f"Tried to add ids that already exist: {sorted(ids)[:10]} (KLVectorStore.merge_from was given the "
                "store itself; nothing was merged)"
            )
        dim = target.store.dim
        own = self._expected_dim()
        if dim is not None and own is not None and own != dim:
            raise ValueError(
                f"cannot merge a store of Gaussians of dimension {dim} into one of dimension {own} (its documents "
                "or its encoder); merge stores built with encoders of the same dimension. Nothing was merged"
            )
        existing = set(self.store.ids)
        clash = [i for i in ids if i in existing]
        if clash:
            raise ValueError(
                f"Tried to add ids that already exist: {sorted(clash)[:10]} (KLVectorStore.merge_from: {len(clash)} "
                f"of the target's {len(ids)} ids are in this store; nothing was merged: delete them from one "
                "store first)"
            )
        docs = target.store.get_by_ids(ids)
        gaussians = target.store.get_gaussians([d.id for d in docs])
        texts: Any = [d.text for d in docs]  # None for a document stored without text: add takes it with gaussians
        self.store.add(
            texts,
            gaussians=gaussians,
            ids=[d.id for d in docs],
            metadatas=[d.metadata for d in docs],
        )
        logger.info("merged %d documents into %r", len(docs), self)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Stored documents for ``ids`` (unknown ids skipped), with ``Document.id`` set."""
        if isinstance(ids, str):
            raise TypeError(f"ids must be a list of str, not a single str; got {ids!r}")
        return [
            Document(id=d.id, page_content=d.text or "", metadata=dict(d.metadata))
            for d in self.store.get_by_ids(_str_ids(ids))
        ]

    # -- searching
    def _hits(self, query: Gaussians, k: int, filter: MetadataFilter | None) -> list[SearchResult]:
        """The store's top-``k`` hits (their metadata already the store's copy; empty for an empty store)."""
        k = _check_k(k)
        filter = _explained_filter(filter)
        if len(self.store) == 0:
            self.store._prepare_filter(filter)  # a malformed filter raises as on a filled store
            return []
        return self.store.search(query, k=k, filter=filter)

    def _results(self, query: Gaussians, k: int, filter: MetadataFilter | None) -> list[tuple[Document, float]]:
        return [
            (Document(id=h.id, page_content=h.text or "", metadata=dict(h.metadata)), float(h.score))
            for h in self._hits(query, k, filter)
        ]

    def similarity_search_with_score(  # type: ignore[override]
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Top-``k`` documents with their exact ``-KL(Q || D)`` (higher is better, ``<= 0``).

        Args:
            query: Query text.
            k: Number of documents (>= 1).
            filter: Metadata filter: a dict with the operators of langchain-community's FAISS
                (``$eq $ne $in $nin $gt $gte $lt $lte $not $and $or``; FAISS's ``$neq`` is an
                alias of ``$ne``) or a callable on the metadata. A document without the key never
                matches ``{"key": None}`` or ``$in [None]`` (unlike FAISS; :mod:`kl_retrievers.filters`).
            **kwargs: ``fetch_k`` is accepted and ignored (FAISS compatibility); anything else is
                ignored with a warning (e.g. ``filters=``, or FAISS' ``score_threshold``: use
                :meth:`similarity_search_with_relevance_scores` for a threshold in ``[0, 1]``).
        """
        _warn_ignored(kwargs, "similarity_search_with_score", "query, k and filter", accepted=("fetch_k",))
        k = _check_k(k)
        return self._results(self._encode_query(query), k, filter)

    def similarity_search(
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, **kwargs: Any
    ) -> list[Document]:
        """Top-``k`` documents by ``-KL``; see :meth:`similarity_search_with_score`."""
        kwargs = _warn_ignored(kwargs, "similarity_search", "query, k and filter", accepted=("fetch_k",))
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """Async :meth:`similarity_search` (runs in a worker thread; an ignored keyword warns before, here)."""
        kwargs = _warn_ignored(kwargs, "asimilarity_search", "query, k and filter", accepted=("fetch_k", "filter"))
        return await super().asimilarity_search(query, k, **kwargs)

    async def asimilarity_search_with_score(  # type: ignore[override]
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score` (runs in a worker thread; an ignored keyword warns before)."""
        from langchain_core.runnables.config import run_in_executor

        kwargs = _warn_ignored(kwargs, "asimilarity_search_with_score", "query, k and filter", accepted=("fetch_k",))
        return await run_in_executor(None, self.similarity_search_with_score, query, k, filter=filter, **kwargs)

    def _vector_to_gaussian(self, embedding: Any) -> Gaussians:
        if isinstance(embedding, Gaussians):
            g = embedding.numpy()
            if len(g) != 1:
                raise ValueError(f"search by Gaussian takes exactly one query Gaussian; got {len(g)}")
            return g
        g = KLEmbeddings.decode_query(embedding)
        if self.store.dim is not None and g.dim != self.store.dim:
            raise ValueError(
                f"the q~ vector has {2 * g.dim + 1} values; this store needs {2 * self.store.dim + 1} (2k + 1)"
            )
        return g

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float] | Gaussians, k: int = 4, filter: MetadataFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Like :meth:`similarity_search_with_score` for a query given as a vector.

        Args:
            embedding: Either the ``q~`` vector of the rewrite (what ``self.embeddings.embed_query``
                returns: ``2k + 1`` floats starting with ``1``; the query Gaussian is decoded from
                it exactly) or one query :class:`~kl_retrievers.gaussian.Gaussians`.
            k: Number of documents.
            filter: Metadata filter (dict or callable).
            **kwargs: Ignored (with a warning; ``fetch_k`` silently, for FAISS compatibility).

        Raises:
            ValueError: Not a ``q~`` vector (e.g. a document vector ``d~``), or the wrong size.
        """
        _warn_ignored(
            kwargs, "similarity_search_with_score_by_vector", "embedding, k and filter", accepted=("fetch_k",)
        )
        k = _check_k(k)
        return self._results(self._vector_to_gaussian(embedding), k, filter)

    async def asimilarity_search_with_score_by_vector(
        self, embedding: Sequence[float] | Gaussians, k: int = 4, filter: MetadataFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score_by_vector` (runs in a worker thread; FAISS has it too)."""
        from langchain_core.runnables.config import run_in_executor

        kwargs = _warn_ignored(
            kwargs, "asimilarity_search_with_score_by_vector", "embedding, k and filter", accepted=("fetch_k",)
        )
        return await run_in_executor(
            None, self.similarity_search_with_score_by_vector, embedding, k, filter=filter, **kwargs
        )

    def similarity_search_by_vector(
        self, embedding: Sequence[float] | Gaussians, k: int = 4, filter: MetadataFilter | None = None, **kwargs: Any
    ) -> list[Document]:  # type: ignore[override]
        """Documents for a ``q~`` vector or a query Gaussian; see :meth:`similarity_search_with_score_by_vector`."""
        kwargs = _warn_ignored(kwargs, "similarity_search_by_vector", "embedding, k and filter", accepted=("fetch_k",))
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter, **kwargs)]

    async def asimilarity_search_by_vector(  # type: ignore[override]
        self, embedding: Sequence[float] | Gaussians, k: int = 4, filter: MetadataFilter | None = None, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`similarity_search_by_vector` (runs in a worker thread; an ignored keyword warns before)."""
        from langchain_core.runnables.config import run_in_executor

        kwargs = _warn_ignored(kwargs, "asimilarity_search_by_vector", "embedding, k and filter", accepted=("fetch_k",))
        return await run_in_executor(None, self.similarity_search_by_vector, embedding, k, filter=filter, **kwargs)

    def similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """LangChain's relevance search: ``(document, relevance)`` with relevance in ``[0, 1]``, higher is better.

        The relevance is this store's ``relevance`` function of ``-KL`` (default ``exp(-KL)``).
        ``score_threshold`` (a number in ``[0, 1]``) drops documents below it; ``filter`` works as in
        :meth:`similarity_search_with_score`.

        Raises:
            ValueError: ``score_threshold`` is not a number in ``[0, 1]``.
        """
        kwargs = _warn_ignored(kwargs, "similarity_search_with_relevance_scores", _RELEVANCE_TAKES, _RELEVANCE_KWARGS)
        if kwargs.get("score_threshold") is not None:
            _check_unit(kwargs["score_threshold"], "score_threshold")
        return super().similarity_search_with_relevance_scores(query, k, **kwargs)

    async def asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_relevance_scores` (the same checks)."""
        kwargs = _warn_ignored(kwargs, "asimilarity_search_with_relevance_scores", _RELEVANCE_TAKES, _RELEVANCE_KWARGS)
        if kwargs.get("score_threshold") is not None:
            _check_unit(kwargs["score_threshold"], "score_threshold")
        return await super().asimilarity_search_with_relevance_scores(query, k, **kwargs)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        fn, dim = resolve_relevance(self.relevance), self.store.dim
        return lambda score: float(fn(score, dim))

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Maximal marginal relevance with ``-KL`` on both sides.

        ``fetch_k`` candidates are fetched by ``-KL(Q || D)``; then documents are picked greedily by
        ``lambda_mult * rel(Q, D) - (1 - lambda_mult) * max_S rel(D, S)`` (see
        :func:`kl_retrievers._adapters.mmr_select`, shared with the LlamaIndex store), where ``rel``
        is this store's relevance function applied to ``-KL(Q || D)`` and to the symmetrised
        ``-(KL(D || S) + KL(S || D)) / 2`` between the stored Gaussians.

        Args:
            query: Query text.
            k: Documents to return.
            fetch_k: Candidates to choose from (``>= k``).
            lambda_mult: ``1`` = pure relevance, ``0`` = maximal diversity.
            filter: Metadata filter (dict or callable).
            **kwargs: Ignored, with a warning.
        """
        _warn_ignored(kwargs, "max_marginal_relevance_search", "query, k, fetch_k, lambda_mult and filter")
        return self._mmr(self._encode_query(query), k, fetch_k, lambda_mult, filter)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: Sequence[float] | Gaussians,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:  # type: ignore[override]
        """:meth:`max_marginal_relevance_search` for a ``q~`` vector or a query Gaussian."""
        _warn_ignored(
            kwargs, "max_marginal_relevance_search_by_vector", "embedding, k, fetch_k, lambda_mult and filter"
        )
        return self._mmr(self._vector_to_gaussian(embedding), k, fetch_k, lambda_mult, filter)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search` (runs in a worker thread; an ignored keyword warns before)."""
        from langchain_core.runnables.config import run_in_executor

        _warn_ignored(kwargs, "amax_marginal_relevance_search", "query, k, fetch_k, lambda_mult and filter")
        return await run_in_executor(
            None, self.max_marginal_relevance_search, query, k, fetch_k, lambda_mult, filter=filter
        )

    async def amax_marginal_relevance_search_by_vector(  # type: ignore[override]
        self,
        embedding: Sequence[float] | Gaussians,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search_by_vector` (runs in a worker thread; keywords checked before)."""
        from langchain_core.runnables.config import run_in_executor

        _warn_ignored(
            kwargs, "amax_marginal_relevance_search_by_vector", "embedding, k, fetch_k, lambda_mult and filter"
        )
        return await run_in_executor(
            None, self.max_marginal_relevance_search_by_vector, embedding, k, fetch_k, lambda_mult, filter=filter
        )

    def max_marginal_relevance_search_with_score_by_vector(
        self,
        embedding: Sequence[float] | Gaussians,
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """:meth:`max_marginal_relevance_search_by_vector` with each pick's ``-KL(Q || D)`` (FAISS's method)."""
        _warn_ignored(
            kwargs,
            "max_marginal_relevance_search_with_score_by_vector",
            "embedding, k, fetch_k, lambda_mult and filter",
        )
        return self._mmr_with_scores(self._vector_to_gaussian(embedding), k, fetch_k, lambda_mult, filter)

    async def amax_marginal_relevance_search_with_score_by_vector(
        self,
        embedding: Sequence[float] | Gaussians,
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Async :meth:`max_marginal_relevance_search_with_score_by_vector` (runs in a worker thread)."""
        from langchain_core.runnables.config import run_in_executor

        kwargs = _warn_ignored(
            kwargs,
            "amax_marginal_relevance_search_with_score_by_vector",
            "embedding, k, fetch_k, lambda_mult and filter",
        )
        return await run_in_executor(
            None,
            self.max_marginal_relevance_search_with_score_by_vector,
            embedding,
            k=k,
            fetch_k=fetch_k,
            lambda_mult=lambda_mult,
            filter=filter,
            **kwargs,
        )

    def _mmr(
        self, query: Gaussians, k: int, fetch_k: int, lambda_mult: float, filter: MetadataFilter | None
    ) -> list[Document]:
        return [doc for doc, _ in self._mmr_with_scores(query, k, fetch_k, lambda_mult, filter)]

    def _mmr_with_scores(
        self, query: Gaussians, k: int, fetch_k: int, lambda_mult: float, filter: MetadataFilter | None
    ) -> list[tuple[Document, float]]:
        k = _check_k(k)
        fetch_k = max(k, _check_k(fetch_k, "fetch_k"))
        lambda_mult = _check_unit(lambda_mult, "lambda_mult")
        cands = self._results(query, fetch_k, filter)
        keep, g = present_gaussians(self.store, [str(d.id) for d, _ in cands])
        if g is None:
            return []
        cands = [cands[i] for i in keep]
        order = mmr_select([s for _, s in cands], g, k, lambda_mult, resolve_relevance(self.relevance), self.store.dim)
        return [cands[i] for i in order]

    # -- constructors
    @classmethod
    def from_texts(  # type: ignore[override]
        cls,
        texts: Iterable[str],
        embedding: Any | None = None,
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        **kwargs: Any,
    ) -> KLVectorStore:
        """Build a store and add ``texts``.

        Args:
            texts: Texts to add (any iterable of str but a set, as in :meth:`add_texts`).
            embedding: A :class:`KLEmbeddings`, a Gaussian encoder or a LangChain ``Embeddings``
                (default: the package's default model).
            metadatas: One dict per text (any iterable but a single dict or a set).
            ids: One id per text (any iterable but a single str or a set; also by position, as in
                langchain-community's FAISS).
            **kwargs: Passed to :class:`KLVectorStore` (``relevance``, ``batch_size``, ``index_type``...).
        """
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(  # type: ignore[override]
        cls,
        texts: Iterable[str],
        embedding: Any | None = None,
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        **kwargs: Any,
    ) -> KLVectorStore:
        """Async :meth:`from_texts` (runs in a worker thread; ``ids`` also by position, as in FAISS)."""
        from langchain_core.runnables.config import run_in_executor

        with at_callers_line():  # a blank-document warning points at the caller's line, not the worker's
            return await run_in_executor(None, cls.from_texts, texts, embedding, metadatas, ids, **kwargs)

    @classmethod
    def from_embeddings(
        cls,
        text_embeddings: Iterable[tuple[str, Sequence[float]]],
        embedding: Any | None,
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        **kwargs: Any,
    ) -> KLVectorStore:
        """Build a store from ``(text, d~)`` pairs computed earlier (FAISS's ``from_embeddings``).

        The vectors are read as in :meth:`add_embeddings`; nothing is encoded.

        Args:
            text_embeddings: ``(text, d~)`` pairs, the vectors from :meth:`KLEmbeddings.embed_documents`.
            embedding: The encoder the vectors came from (for text queries; required, as in FAISS:
                ``None`` asks for the default model, which ranks other models' vectors wrongly).
            metadatas: One dict per pair (any iterable but a single dict or a set).
            ids: One id per pair (any iterable but a single str or a set).
            **kwargs: Passed to :class:`KLVectorStore` (``relevance``, ``batch_size``, ``index_type``...).
        """
        store = cls(embedding, **kwargs)
        store.add_embeddings(text_embeddings, metadatas, ids)
        return store

    @classmethod
    async def afrom_embeddings(
        cls,
        text_embeddings: Iterable[tuple[str, Sequence[float]]],
        embedding: Any | None,
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        **kwargs: Any,
    ) -> KLVectorStore:
        """Async :meth:`from_embeddings` (runs in a worker thread)."""
        from langchain_core.runnables.config import run_in_executor

        return await run_in_executor(None, cls.from_embeddings, text_embeddings, embedding, metadatas, ids, **kwargs)

    @classmethod
    def from_documents(  # type: ignore[override]
        cls, documents: list[Document], embedding: Any | None = None, **kwargs: Any
    ) -> KLVectorStore:
        """Build a store from documents (their ``id`` fields are kept)."""
        _refuse_model_name(embedding, f"{cls.__name__}.from_documents(documents, {{embeddings}})")
        texts, metadatas, ids = _document_fields(documents, kwargs.pop("ids", None))
        return cls.from_texts(texts, embedding, metadatas, ids=ids, **kwargs)

    # -- persistence
    @classmethod
    def load_local(
        cls,
        folder_path: str | os.PathLike[str],
        embeddings: Any | None = None,
        index_name: str = _DEFAULT_INDEX_NAME,
        *,
        relevance: RelevanceName | RelevanceFn | None = None,
        mmap: bool = False,
        verify_checksums: bool = True,
        allow_dangerous_deserialization: bool = False,
    ) -> KLVectorStore:
        """Load a folder written by :meth:`save_local` (never unpickles anything).

        ``klstore/`` is read with the copy of the manifest that :meth:`save_local` put inside it;
        ``langchain.json`` applies when its ``save_id`` is the copy's (so a hand edit that keeps the
        ``save_id`` applies), else the copy does (a concurrent save, a save that failed part-way, or an
        edited ``langchain.json`` without the ``save_id``). A folder saved by an earlier release (no copy)
        loads with its ``langchain.json``.

        Args:
            folder_path: The folder.
            embeddings: A :class:`KLEmbeddings`, Gaussian encoder or LangChain ``Embeddings``;
                default: the saved encoder name through :func:`~kl_retrievers.load_model`, on the backend
                (torch or ONNX) the store was built with when it records it (torch not installed: the
                library's default, with a warning).
            index_name: As in langchain-community's FAISS (and, as there, also the third positional
                argument): ``"index"`` (the default) reads the folder itself; another name reads the
                sub-folder ``folder_path/index_name`` that ``save_local(folder_path, index_name)`` wrote.
            relevance: Override the saved relevance function (needed for a callable).
            mmap: Memory-map the stored arrays (see :meth:`KLStore.load`).
            verify_checksums: Check every stored file's SHA-256 (sizes and the stored values are
                always checked); ``False`` skips one read of every file (see :meth:`KLStore.load`).
            allow_dangerous_deserialization: Accepted so that code written for langchain-community's
                FAISS runs unchanged, and ignored: nothing here is unpickled, so there is nothing to allow.

        Raises:
            FileNotFoundError: No such folder.
            NothingSavedError: No folder, or one without a manifest (then also a ``LangChainFormatError``).
            ValueError: ``index_name`` is not a plain folder name; no ``embeddings`` and the saved encoder
                cannot be loaded (a LangChain ``Embeddings``, which is not saved, a folder that no longer
                exists, a model of another dimension...): the message says to pass ``embeddings=``.
            LangChainFormatError: (a ``ValueError``) the folder was written by another store
                (e.g. langchain-community FAISS), by a raw :meth:`KLStore.save`, or by an
                unsupported format version.
        """
        folder = _index_folder(user_path(folder_path), index_name)
        if not folder.is_dir():
            raise NothingSavedError(f"no KLVectorStore folder at {folder}")
        call = f"{cls.__name__}.load_local(folder_path, {{embeddings}})"
        manifest, store, encoder, klembeddings = cls._read_folder(
            folder, embeddings, call, mmap=mmap, verify_checksums=verify_checksums
        )
        man_path, saved = folder / _MANIFEST, manifest.get("encoder")
        if embeddings is None and saved:
            if not isinstance(saved, str):
                raise LangChainFormatError(f"{man_path}: the encoder must be a model name (str); got {saved!r}")
            # the manifest's name is the one loaded (deserialize_from_bytes checked it); the store's record gives
            # the backend it was built with (torch or ONNX) when it names the same model
            store.saved_encoder = saved
            try:
                encoder = store._load_saved_encoder()
            except ValueError as exc:
                raise ValueError(
                    f"cannot load the saved encoder {saved!r}: {exc}; pass embeddings= to load_local (the embeddings "
                    "or Gaussian encoder the store was built with)"
                ) from exc
        if relevance is None and "relevance" in manifest and manifest["relevance"] is None:
            logger.warning(
                "load_local: the store was saved with a callable relevance function, which is not saved; its "
                "relevance scores now use the default %r: pass relevance= to load_local for the saved behaviour",
                DEFAULT_RELEVANCE,
            )
        rel = relevance if relevance is not None else (manifest.get("relevance") or DEFAULT_RELEVANCE)
        # the same object as `embeddings` (a KLEmbeddings, or a wrapper of one: CacheBackedEmbeddings)
        given = embeddings if klembeddings is not None else encoder
        return cls(given, store=store, relevance=rel, batch_size=int(manifest.get("batch_size") or 32))

    @classmethod
    def _read_folder(
        cls, folder: Path, embeddings: Any | None, call: str, *, mmap: bool, verify_checksums: bool
    ) -> tuple[dict[str, Any], KLStore, Any, KLEmbeddings | None]:
        """The manifest, store part and encoder of a :meth:`save_local` folder (see :meth:`load_local`), and the
        :class:`KLEmbeddings` that ``embeddings`` is or wraps (``None`` if none).

        ``klstore/`` is read once, with the copy of the manifest inside it (save_local swaps it in as a
        whole). The ``langchain.json`` beside it applies when it comes from the same save (its ``save_id``
        is the copy's) or the folder has no copy (saved by an earlier release); else the copy applies: the
        manifest beside it was written by a concurrent save, a save failed before writing it, or it was
        edited by hand without its ``save_id``.
        """
        man_path, kl_dir = folder / _MANIFEST, folder / _STORE_DIR
        inner_path = kl_dir / _INNER_MANIFEST
        if not man_path.is_file() and not inner_path.is_file():
            found = sorted(p.name for p in folder.iterdir())
            hint = ""
            if "config.json" in found and "documents.jsonl" in found:
                hint = " It looks like a KLStore folder; use KLVectorStore(embedding, store=KLStore.load(path))."
            elif (other := describe_kl_folder(folder)) is not None:
                hint = f" It is {other}."
            elif any(n.endswith(".pkl") for n in found) or "index.faiss" in found:
                hint = " It looks like a langchain-community FAISS folder; load it with FAISS.load_local."
            else:
                named = [p.name for p in sorted(folder.iterdir()) if (p / _MANIFEST).is_file()]
                if named:
                    hint = f" It holds the named indexes {named[:8]}; pass index_name= to load one."
            error = _NoLangChainSavedError if holds_nothing_saved(folder, _MANIFEST) else LangChainFormatError
            raise error(
                f"{folder} was not written by KLVectorStore.save_local (no {_MANIFEST}; found {found[:8]}).{hint}"
            )

        def read(path: Path) -> dict[str, Any]:
            return read_manifest(
                path,
                format_name=_FORMAT_NAME,
                format_version=_FORMAT_VERSION,
                what="KLVectorStore",
                error=LangChainFormatError,
            )

        outer = read(man_path) if man_path.is_file() else None
        saved = (outer or {}).get("encoder")
        hint = ""  # a name given as embeddings: the model the store records loads when they are left out
        if isinstance(saved, str) and saved and loads_anywhere(saved):
            hint = f"leave embeddings out to use the model the store was saved with ({saved!r}, which load_local "
            hint += "loads), or "
        encoder, klembeddings = _resolve_embedding(embeddings, call, hint)
        where = f"the LangChain store at {folder}"  # the folder its user passed

        def read_store() -> tuple[dict[str, Any] | None, KLStore]:
            inner = read(inner_path) if inner_path.is_file() else None
            return inner, KLStore._load_once(kl_dir, encoder, mmap, verify_checksums, where=where)

        # save_local swaps in klstore/ with the copy of the manifest inside it: read both from one copy
        inner, store = load_unchanged(kl_dir, read_store)
        if inner is not None and (outer is None or outer.get("save_id") != inner.get("save_id")):
            logger.info("%s comes from another save than %s: using the settings saved with the store", man_path, kl_dir)
            return inner, store, encoder, klembeddings
        if outer is None:  # the copy vanished meanwhile: klstore/ was replaced by an earlier release's save
            raise LangChainFormatError(f"{folder} was not written by KLVectorStore.save_local (no {_MANIFEST})")
        return outer, store, encoder, klembeddings

    def save_local(self, folder_path: str | os.PathLike[str], index_name: str = _DEFAULT_INDEX_NAME) -> Path:
        """Save to a folder (JSON, ``.npy`` and a FAISS index; no pickle anywhere).

        The folder holds ``langchain.json`` (format, library version, relevance, encoder name)
        and ``klstore/`` (:meth:`KLStore.save`).  A callable relevance function is not saved
        (a warning is logged); pass it again to :meth:`load_local`.

        ``klstore/`` is written with a copy of the manifest inside it (``langchain_manifest.json``,
        ignored by earlier releases) into a temporary folder that replaces it in one swap; then
        ``langchain.json`` is written with the same random ``save_id``. Nothing else in the folder
        (named indexes, files of yours) is moved, replaced or changed. :meth:`load_local` uses
        ``langchain.json`` only when its ``save_id`` is the copy's, so a concurrent save or load of
        the same folder never pairs one save's documents with another's settings, and a save that
        fails part-way leaves the previous copy whole. A symbolic link given as the folder (``current ->
        v3``, or a link above it) is followed, as :meth:`KLStore.save` follows one: it is resolved once,
        before anything is written, and both parts go into ``v3`` (the link is kept), even if the link
        is re-pointed during the save.

        Args:
            folder_path: The folder.
            index_name: As in langchain-community's FAISS, so that several indexes can share one
                folder: ``"index"`` (the default) saves into the folder itself; another name saves
                into the sub-folder ``folder_path/index_name``. A plain folder name (no path
                separator, not ``.`` or ``..``).

        Returns:
            The folder written (``folder_path``, or ``folder_path/index_name``).

        Raises:
            ValueError: ``index_name`` is not a plain folder name, or the folder is not empty and
                was not written by ``save_local`` (the temporary copies of a save running or killed,
                ``.klstore.tmp-HEX``, and named indexes, saved or being saved, do not count).
        """
        parent = user_path(folder_path)
        folder = _index_folder(parent, index_name)
        for link in (parent, folder):  # a dangling link is followed as a new path, as KLStore.save follows it
            check_dangling_link(link)
        # a link (current -> v3, at the folder or above it) is resolved once, here, as KLStore.save resolves it:
        # the folder judged below is the one both parts are written into, even if the link is re-pointed meanwhile
        real = Path(os.path.realpath(folder))
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{parent} exists and is not a folder")
        if real.exists() and not real.is_dir():
            raise ValueError(f"{folder} exists and is not a folder")
        if not callable(getattr(self.store, "save", None)):
            raise NotImplementedError(
                f"{type(self.store).__name__} keeps its documents in its own server (e.g. Milvus); there is nothing "
                "to save locally. Reconnect later with the same uri and collection_name instead."
            )
        # a folder that holds only other named indexes (save_local(folder, index_name=...)) takes the default one;
        # the temporary copies of a save running (or killed) and a named index being saved do not count as foreign
        if real.is_dir() and not _written_by_save_local(real):
            raise ValueError(f"{folder} is not empty and was not written by KLVectorStore.save_local; refusing")
        if not isinstance(self.relevance, str):
            logger.warning(
                "KLVectorStore.save_local: the relevance function %r is a callable and is not saved; load_local "
                "will use %r unless you pass relevance= to it again",
                getattr(self.relevance, "__name__", self.relevance),
                DEFAULT_RELEVANCE,
            )
        enc = self.store.encoder
        # the model the store part records for its documents (KLStore.save keeps the documents' model, not an
        # attached encoder known to be another one), so that load_local without embeddings loads that model
        kept = self.store._kept_documents_model()
        name = kept.get("name_or_path") if kept is not None else None
        if enc is not None and not (isinstance(name, str) and name):
            name = str(getattr(enc, "name_or_path", ""))
        manifest = {
            "format": _FORMAT_NAME,
            "format_version": _FORMAT_VERSION,
            "score_name": SCORE_NAME,
            "score_direction": SCORE_DIRECTION,
            "relevance": self.relevance if isinstance(self.relevance, str) else None,
            "batch_size": self.batch_size,
            "encoder": None if enc is None else name,
            # the same in the copy inside klstore/: load_local tells whether both come from one save
            "save_id": uuid.uuid4().hex,
        }
        # Only klstore/, with a copy of the manifest inside it, is swapped in (at once); langchain.json is written
        # after it. The folder's other entries (named indexes, the user's files) are never touched.
        make_dirs(real)  # each new folder synced into its parent, as atomic_dir does for its own
        save_store_with_manifest(self.store, real / _STORE_DIR, _INNER_MANIFEST, manifest)
        write_manifest(real / _MANIFEST, manifest)
        logger.info("saved KLVectorStore (%d documents) to %s", len(self.store), folder)
        return folder

    def serialize_to_bytes(self) -> bytes:
        """The store as bytes (FAISS's method of the same name), without pickle.

        The bytes are a zip archive of what :meth:`save_local` writes (JSON, ``.npy`` and a FAISS
        index), written through a temporary folder that is deleted afterwards. Read them back with
        :meth:`deserialize_from_bytes`.

        Raises:
            NotImplementedError: The store keeps its documents in a server (``MilvusKLStore``).

        Examples:
            >>> data = store.serialize_to_bytes()  # doctest: +SKIP
            >>> KLVectorStore.deserialize_from_bytes(data, embeddings)  # doctest: +SKIP
        """
        with tempfile.TemporaryDirectory(prefix="klvectorstore-") as tmp:
            folder = self.save_local(Path(tmp) / "store")
            # a private copy that no other save touches: the manifest copy is not needed (and earlier releases'
            # deserialize_from_bytes refuse the entry)
            (folder / _STORE_DIR / _INNER_MANIFEST).unlink()
            return _pack_folder(folder)

    @classmethod
    def deserialize_from_bytes(
        cls,
        serialized: bytes | bytearray | memoryview,
        embeddings: Any | None = None,
        *,
        allow_dangerous_deserialization: bool = False,
        **kwargs: Any,
    ) -> KLVectorStore:
        """Rebuild a store from :meth:`serialize_to_bytes` (FAISS's signature; never unpickles anything).

        The archive is checked before anything is written: only regular files and folders with
        relative paths inside it are accepted (no absolute path, ``..``, link or device). It is
        unpacked into a temporary folder, loaded with :meth:`load_local` (arrays read into memory,
        ``mmap=False``) and the folder is deleted.

        Args:
            serialized: The bytes (``bytes``, ``bytearray`` or ``memoryview``).
            embeddings: As in :meth:`load_local`. Without it, the saved encoder is loaded by name only
                when it is a bundled model (the bytes could name any path or hub id): every record of
                it must be one (``langchain.json``'s ``encoder`` and ``klstore/config.json``'s
                ``encoder.name_or_path``). Pass it for a store built with your own model.
            allow_dangerous_deserialization: Accepted so that code written for langchain-community's
                FAISS runs unchanged, and ignored: nothing here is unpickled.
            **kwargs: :meth:`load_local`'s ``relevance`` and ``verify_checksums``.

        Raises:
            TypeError: ``serialized`` is not bytes, or an unknown keyword argument.
            ValueError: ``mmap=True`` (the temporary folder does not outlive the call), or no
                ``embeddings`` and a record of the saved encoder is not a bundled model (the message
                names the file, the field and the value).
            LangChainFormatError: (a ``ValueError``) bytes that are not from :meth:`serialize_to_bytes`
                (langchain-community FAISS's pickle is named as such, not unpickled), an archive entry
                that is refused (named), or damaged files.
        """
        if not isinstance(serialized, (bytes, bytearray, memoryview)):
            raise TypeError(f"serialized must be bytes (from serialize_to_bytes); got {type(serialized).__name__}")
        if kwargs.get("mmap"):
            raise ValueError(
                "deserialize_from_bytes cannot memory-map (mmap=True): it unpacks into a temporary folder that is "
                "deleted before it returns; save_local the store and load_local(..., mmap=True) it instead"
            )
        kwargs.pop("mmap", None)
        unknown = sorted(set(kwargs) - {"relevance", "verify_checksums"})
        if unknown:
            raise TypeError(
                f"deserialize_from_bytes got unexpected keyword argument(s) {unknown}; it takes relevance and "
                "verify_checksums (and FAISS's allow_dangerous_deserialization, ignored)"
            )
        data = bytes(serialized)
        with tempfile.TemporaryDirectory(prefix="klvectorstore-") as tmp:
            folder = Path(tmp) / "store"
            folder.mkdir()
            _unpack_archive(data, folder)
            if embeddings is None:
                _check_saved_encoder_is_bundled(folder, _MANIFEST, "encoder")
                _check_saved_encoder_is_bundled(folder, f"{_STORE_DIR}/{_INNER_MANIFEST}", "encoder")
                _check_saved_encoder_is_bundled(folder, f"{_STORE_DIR}/{_STORE_CONFIG}", "encoder.name_or_path")
            try:
                return cls.load_local(folder, embeddings, mmap=False, **kwargs)
            except StoreFormatError as exc:
                if isinstance(exc, LangChainFormatError):
                    raise
                raise LangChainFormatError(f"the serialized KLVectorStore is damaged: {exc}") from exc


# --------------------------------------------------------------------------- retrievers
class _Unset(enum.Enum):
    """A per-call argument left out: the retriever's own setting applies (``None`` given clears it)."""

    UNSET = "unset"


_UNSET = _Unset.UNSET

_MMR_HINT = (
    "MMR is KLVectorStore.as_retriever(search_type='mmr', search_kwargs={'fetch_k': ..., 'lambda_mult': ...}) "
    "(over a KLHybridStore, dense only: KLVectorStore(embedding, store=hybrid_store.kl))"
)
#: Options of LangChain's ``VectorStoreRetriever``, ``EnsembleRetriever`` and ``BM25Retriever`` that the
#: retrievers here do not take, each with what to use instead (a swapped-in retriever must not ignore them).
_FOREIGN_OPTIONS: dict[str, str] = {
    "score_threshold": (
        "there is no relevance threshold on this retriever: abstain with min_confidence= (a calibrated "
        "P(top-1 relevant)), or use KLVectorStore.as_retriever(search_type='similarity_score_threshold', "
        "search_kwargs={'score_threshold': ...})"
    ),
    "fetch_k": _MMR_HINT,
    "lambda_mult": _MMR_HINT,
    "weights": (
        "EnsembleRetriever's weights: KLHybridRetriever's fusion='rrf' is its RRF with equal weights; for another "
        "balance use fusion='convex' with weight= (the dense share, in [0, 1]) or fusion='adaptive' (set per query)"
    ),
    "c": "EnsembleRetriever's RRF constant c is rrf_k= here (the same 1 / (rrf_k + rank), default 60)",
    "id_key": "documents are fused by their store id here; EnsembleRetriever's id_key is not needed",
    "retrievers": "KLHybridRetriever searches both halves of one KLHybridStore; it does not wrap other retrievers",
    "bm25_params": "BM25Retriever's bm25_params: pass k1= and b= (bm25s' BM25; defaults k1=0.9, b=0.4)",
    "preprocess_func": (
        "BM25Retriever's preprocess_func: the BM25 tokenizer is token_pattern= (a regular expression), "
        "stopwords= and stemmer= (a PyStemmer language; saved with the store, so a callable is not taken)"
    ),
    **{
        name: f"a run option: pass it in config={{'{name}': ...}} (invoke(query, config=...)), as for any Runnable"
        for name in ("callbacks", "tags", "metadata", "run_name")
    },
}


def _refuse_foreign_options(names: Iterable[str], where: str, takes: Iterable[str]) -> None:
    """Raise a ``TypeError`` for keyword arguments ``where`` does not take, naming them, what it takes, and the
    equivalent of LangChain's own retrievers' options (``weights``, ``c``, ``bm25_params``...)."""
    names = sorted(names)
    if not names:
        return
    hints = "".join(f"; {name}: {_FOREIGN_OPTIONS[name]}" for name in names if name in _FOREIGN_OPTIONS)
    raise TypeError(f"{where} got unexpected keyword argument(s) {names}; it takes {', '.join(takes)}{hints}")


def _check_search_type(value: Any, where: str) -> None:
    if value != "similarity":
        raise ValueError(
            f"{where} takes search_type='similarity' only; got {value!r}. For 'mmr' or "
            "'similarity_score_threshold' use KLVectorStore.as_retriever(search_type=..., search_kwargs=...) "
            "(LangChain's VectorStoreRetriever; without this retriever's confidence and abstention; over a "
            "KLHybridStore it is dense only: KLVectorStore(embedding, store=hybrid_store.kl).as_retriever(...))"
        )


class _ConfidenceRetriever(BaseRetriever):
    """Fields and helpers shared by :class:`KLRetriever` and :class:`KLHybridRetriever`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    k: int = 4
    filter: Any = None
    min_confidence: float | None = None
    calibrator: Any = None
    score_key: str = SCORE_NAME
    uncertainty_key: str = "query_uncertainty"
    confidence_key: str = CONFIDENCE_KEY
    #: Per-call settings applied to every call, as ``VectorStoreRetriever.search_kwargs`` (a ``configurable_fields``
    #: target too); a key here wins over the field of that name, an ``invoke`` keyword wins over both.
    search_kwargs: dict[str, Any] = Field(default={})  # pydantic copies it per instance; {} left out of repr
    #: ``VectorStoreRetriever``'s search type: only ``"similarity"`` here (accepted so that swapped-in code runs).
    search_type: str = "similarity"
    #: The retriever kind whose calibrators are accepted (``"dense"``: dense calibrators only).
    calibrator_for: ClassVar[str] = "dense"
    #: The keys ``search_kwargs`` takes (the per-call keywords of ``_search_documents``).
    search_keys: ClassVar[tuple[str, ...]] = ("k", "filter", "min_confidence")

    #: The ``calibrator`` value a confidence scorer was built from, and that scorer: one pair, assigned in one
    #: statement (see :meth:`_refresh_scorer`), so that concurrent queries never pair a scorer with another value.
    _scorer_state: tuple[Any, ConfidenceScorer] = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _known_options(cls, data: Any) -> Any:
        """Refuse keywords that are no field (pydantic would drop them: a typo, ``weights``...), naming them."""
        if isinstance(data, dict):
            _refuse_foreign_options(set(data) - set(cls.model_fields), cls.__name__, sorted(cls.model_fields))
        return data

    @field_validator("search_type")
    @classmethod
    def _valid_search_type(cls, value: str) -> str:
        _check_search_type(value, cls.__name__)
        return value

    @field_validator("search_kwargs", mode="before")
    @classmethod
    def _valid_search_kwargs(cls, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise TypeError(f"search_kwargs must be a dict; got {type(value).__name__}")
        value = dict(value)
        _refuse_foreign_options(set(value) - set(cls.search_keys), f"{cls.__name__} search_kwargs", cls.search_keys)
        if "k" in value:
            value["k"] = _check_k(value["k"])
        if "min_confidence" in value:
            value["min_confidence"] = check_min_confidence(value["min_confidence"])
        return value

    @field_validator("k", mode="before")
    @classmethod
    def _valid_k(cls, value: Any) -> int:
        # before pydantic's coercion (True, 2.0 and "2" would become ints): the check of invoke(k=...)
        return _check_k(value)

    @field_validator("min_confidence", mode="before")
    @classmethod
    def _valid_min_confidence(cls, value: Any) -> float | None:
        return check_min_confidence(value)

    @field_validator("calibrator", mode="before")
    @classmethod
    def _valid_calibrator(cls, value: Any) -> Any:
        return check_calibrator(value, cls.calibrator_for)

    #: Metadata keys the retriever writes besides ``score_key``, ``uncertainty_key`` and ``confidence_key``.
    written_keys: ClassVar[tuple[str, ...]] = ()

    def model_post_init(self, context: Any, /) -> None:
        """Set up the confidence scorer (the model's calibrator is found on first use); check the metadata keys."""
        super().model_post_init(context)
        self._check_result_keys()
        calibrator = self.calibrator
        self._scorer_state = (calibrator, ConfidenceScorer(calibrator, self.calibrator_for))

    @property
    def _scorer(self) -> ConfidenceScorer:
        """The confidence scorer built last (a query uses the one :meth:`_refresh_scorer` returned to it)."""
        return self._scorer_state[1]

    def _refresh_scorer(self) -> ConfidenceScorer:
        """The confidence scorer for the current ``calibrator``, rebuilt when it changed since it was built.

        Pydantic assigns a field without validating it, and ``model_copy(update=...)`` keeps the scorer:
        ``retriever.calibrator = cal`` takes effect at the next query, checked as the constructor checks it.
        The scorer and the value it was built from are stored as one pair in one assignment, and the
        caller uses the scorer returned for its whole query: queries running while ``calibrator`` is
        reassigned each use one scorer, and the pair left behind always says which value its scorer is
        for (a later query rebuilds it when that is not the field's value).

        Raises:
            TypeError / ValueError: The new calibrator is refused (:func:`~kl_retrievers._confidence.check_calibrator`).
        """
        calibrator = self.calibrator
        built_for, scorer = self._scorer_state
        if calibrator is not built_for:
            scorer = ConfidenceScorer(calibrator, self.calibrator_for)
            self._scorer_state = (calibrator, scorer)
        return scorer

    def _check_result_keys(self) -> None:
        """Refuse a ``score_key`` / ``uncertainty_key`` / ``confidence_key`` that another result field writes too.

        Two fields under one metadata key would lose one value silently (the fused score under ``"bm25"``...).

        Raises:
            ValueError: Naming the key, the fields that share it and the names already taken.
        """
        named = {"score_key": self.score_key, "uncertainty_key": self.uncertainty_key}
        named["confidence_key"] = self.confidence_key
        for field, key in named.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{type(self).__name__}: {field} must be a non-empty str; got {key!r}")
            sharing = [other for other, value in named.items() if value == key and other != field]
            if key in self.written_keys:
                what = f"{field}={key!r} is the key of the {key!r} result field the retriever writes"
                pick = "Pick a key"
                taken = sorted({*self.written_keys, *(v for f, v in named.items() if f != field)})
            elif sharing:  # the fields that share it, named alike (whichever of them was assigned last)
                fields = [field, *sharing]
                both = "both" if len(fields) == 2 else "all"
                what = f"{', '.join(fields[:-1])} and {fields[-1]} are {both} {key!r}"
                pick = "Give all but one of them a key" if len(fields) > 2 else "Give one of them a key"
                taken = sorted({*self.written_keys, *named.values()})
            else:
                continue
            raise ValueError(
                f"{type(self).__name__}: {what}; one value would overwrite the other in each document's metadata. "
                f"{pick} other than the names taken: {', '.join(repr(k) for k in taken)}"
            )

    def _call_settings(
        self,
        k: int | None,
        filter: MetadataFilter | _Unset | None,
        min_confidence: float | _Unset | None,
    ) -> tuple[int, Any, float | None, ConfidenceScorer]:
        """The call's ``k``, filter, floor and confidence scorer (:meth:`_refresh_scorer`; the query uses it
        throughout): an argument left out takes ``search_kwargs``' value, else the
        retriever's field; an explicit ``filter=None`` or ``min_confidence=None`` clears it for this call (as
        LangChain's ``VectorStoreRetriever`` merges per-call keywords over its ``search_kwargs``).

        The metadata keys are checked again here: pydantic assigns a field without validating it
        (``retriever.score_key = "confidence"``), and one value would then overwrite the other unnoticed. So
        are an assigned ``min_confidence`` and ``calibrator`` (the scorer is rebuilt for a new one).
        """
        self._check_result_keys()  # also after an assignment (checked once per call: keys may be swapped one by one)
        scorer = self._refresh_scorer()
        unknown = sorted(set(self.search_kwargs) - set(self.search_keys))  # also after an assignment
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.search_kwargs holds {unknown}, which it does not take; it takes "
                f"{', '.join(self.search_keys)}"
            )
        kk = _check_k(self._default("k") if k is None else k)
        flt = self._default("filter") if filter is _UNSET else filter
        # the field or search_kwargs' value is checked again too: either may have been assigned since
        floor = check_min_confidence(self._default("min_confidence") if min_confidence is _UNSET else min_confidence)
        return kk, _explained_filter(flt), floor, scorer

    def _refuse_call_options(self, kwargs: dict[str, Any]) -> None:
        """Refuse per-call keywords a search does not take (``invoke(q, fliter=...)``), naming them and those it takes.

        ``invoke`` / ``ainvoke`` / ``batch`` pass their extra keywords here (``config`` and the run manager are
        LangChain's own and never among them); LangChain's ``VectorStoreRetriever`` hands them to the store's search,
        whose options (``score_threshold``, ``fetch_k``...) are named with their equivalent here.
        """
        _refuse_foreign_options(kwargs, f"{type(self).__name__}.invoke", [*self.search_keys, "config"])

    def _default(self, name: str) -> Any:
        """A setting left out of the call: ``search_kwargs[name]`` when there, else the field ``name``."""
        return self.search_kwargs[name] if name in self.search_kwargs else getattr(self, name)

    def _get_ls_params(self, **kwargs: Any) -> Any:
        """Tracing metadata as ``VectorStoreRetriever`` gives it: the retriever, vector store and embeddings names."""
        params = super()._get_ls_params(**kwargs)
        params["ls_vector_store_provider"] = type(self._searched_store()).__name__
        params["ls_embedding_provider"] = KLEmbeddings.__name__
        return params

    def _searched_store(self) -> Any:
        raise NotImplementedError  # pragma: no cover - each retriever names its store

    #: How to save and load the store a retriever searches (for the message of a refused pickle or deep copy).
    saving: ClassVar[str] = ""

    def _no_copy(self) -> TypeError:
        """The error of a refused pickle or deep copy (the LlamaIndex store's wording): how to save and load."""
        return TypeError(
            f"a {type(self).__name__} cannot be pickled or deep-copied (its store holds locks and an index): "
            f"{self.saving}; share the object itself between threads (copy.copy and model_copy() share the store)"
        )

    def __getstate__(self) -> dict[Any, Any]:
        """Refuse to pickle: the store searched holds locks and an index.

        Raises:
            TypeError: Always; it says how to save and load the store (``copy.copy`` and ``model_copy()``, which
                share the store, work).
        """
        raise self._no_copy()

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        """Refuse to deep-copy (the store searched holds locks and an index); see :meth:`__getstate__`."""
        raise self._no_copy()

    @classmethod
    def _retriever_options(cls, kwargs: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """Take the retriever's own fields (``filter``, ``search_kwargs``, ``tags``...) out of a constructor's
        ``kwargs`` (the rest go to the store), leaving those in ``keep``; foreign options are refused."""
        names = set(cls.model_fields) - {"store", "vectorstore"}
        own = {name: kwargs.pop(name) for name in list(kwargs) if name in names and name not in keep}
        _refuse_foreign_options(
            set(kwargs) & set(_FOREIGN_OPTIONS), f"{cls.__name__}.from_texts", [*sorted(names), "the store's options"]
        )
        return own

    def _search_documents(self, query: str, **kwargs: Any) -> tuple[list[Document], dict[str, Any] | None]:
        """The documents for ``query`` and, when the retriever abstains, the :data:`ABSTENTION_EVENT` data.

        The search itself (each retriever's), with no callback: the sync and async paths send the event
        from the thread and event loop their callbacks expect.
        """
        raise NotImplementedError  # pragma: no cover - each retriever searches its store

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """The documents for ``query`` with the per-call settings ``kwargs`` (``k``, ``filter``, ...);
        an abstention is sent to the run's callbacks (:data:`ABSTENTION_EVENT`)."""
        documents, abstention = self._search_documents(query, **kwargs)
        if abstention is not None:
            self._signal_abstention(run_manager, abstention)
        return documents

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """Async retrieval with the same per-call settings as the sync one (``k``, ``filter``, ...).

        LangChain's default takes no keyword arguments, yet ``ainvoke``/``abatch`` pass them on because
        :meth:`_get_relevant_documents` takes them. The search runs in a worker thread; an abstention is
        sent afterwards on the caller's event loop, through the async run manager, so an async callback
        handler runs there (awaiting the caller's queues, as ``astream_events`` does), as for a native async
        retriever. A subclass that overrides :meth:`_get_relevant_documents` (and not this method) has its
        override run in the worker thread, as LangChain's default async path runs it.
        """
        from langchain_core.runnables.config import run_in_executor

        if type(self)._get_relevant_documents is not _ConfidenceRetriever._get_relevant_documents:
            # a subclass's own sync retrieval: run it, as LangChain's default async path does
            return await run_in_executor(
                None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs
            )
        documents, abstention = await run_in_executor(None, self._search_documents, query, **kwargs)
        if abstention is not None:
            try:
                await run_manager.get_child().on_custom_event(ABSTENTION_EVENT, abstention, run_id=run_manager.run_id)
            except Exception:  # pragma: no cover - a callback handler must never break retrieval
                logger.debug("abstention event not delivered", exc_info=True)
        return documents

    @staticmethod
    def _abstention(query: str, confidence: float | None, floor: float | None, reason: str | None) -> dict[str, Any]:
        """The :data:`ABSTENTION_EVENT` data: the query, its confidence, the floor and why it was refused."""
        return {"query": query, "confidence": confidence, "min_confidence": floor, "reason": reason}

    def _abstain_on_blank(self, query: str, floor: float) -> dict[str, Any]:
        """Log the abstention on a blank query under a floor (which needs a calibrator, so its confidence is 0:
        :func:`~kl_retrievers._confidence.blank_query_confidence`); the event's data."""
        confidence, reason = blank_query_confidence(True)
        log_abstention(query, confidence, floor, reason)
        return self._abstention(query, confidence, floor, reason)

    @staticmethod
    def _signal_abstention(run_manager: CallbackManagerForRetrieverRun, data: dict[str, Any]) -> None:
        """Tell the run's callbacks (``astream_events``: an ``on_custom_event``) that the query was refused, and why."""
        try:
            run_manager.get_child().on_custom_event(ABSTENTION_EVENT, data, run_id=run_manager.run_id)
        except Exception:  # pragma: no cover - a callback handler must never break retrieval
            logger.debug("abstention event not delivered", exc_info=True)


class KLRetriever(_ConfidenceRetriever):
    """A LangChain retriever ranked by ``-KL(Q || D)``; each document carries its score and the query's confidence.

    Every returned ``Document`` has in its metadata (key names configurable):

    * ``score_key`` (default ``"neg_kl"``): the exact ``-KL``, higher is better;
    * ``uncertainty_key`` (default ``"query_uncertainty"``): the query's mean log-variance
      (higher: the model is less sure of the query; with the default model it barely predicts which
      queries go well, Kendall tau -0.045 against per-query nDCG@10: read the confidence for that);
    * ``confidence_key`` (default ``"confidence"``): the calibrated probability, in ``[0, 1]``,
      that the query's top-ranked document is relevant (the same value on every document of one
      query; :class:`~kl_retrievers.calibration.ConfidenceCalibrator`). It comes from
      ``calibrator`` when given, else from the calibrator the encoder's model ships
      (``confidence_calibration.json``; the default model has one). A model without one gives
      ``None`` and logs one warning.

    **Abstention**: with ``min_confidence`` set, a query whose confidence is below it gets **no
    documents** (``[]``): a chain branches on the empty list (see ``docs/langchain.md``). The
    retriever also logs one DEBUG line (it holds the query text) and sends the LangChain custom event
    :data:`ABSTENTION_EVENT` (``{"query", "confidence", "min_confidence", "reason"}``) to the run's
    callbacks, so ``astream_events`` and tracing show why nothing came back. ``min_confidence`` above 0
    needs a calibrator (``ValueError`` otherwise). A query with only one candidate document (a filter
    that leaves one, or a one-document store) has no confidence (the calibrator reads the top two
    scores): without ``min_confidence`` it is answered with ``confidence=None``; with it above 0, it
    **abstains** (fail closed; the log line and the event's ``reason`` say
    ``confidence needs 2 candidates, 1 found``). A blank query (empty, or only whitespace and
    invisible characters such as a zero-width space) asks for nothing: its confidence is 0 (``None``
    without a calibrator, like any query's), and with ``min_confidence`` above 0 it abstains without a
    search (``reason``: :data:`EMPTY_QUERY_REASON`); without it, it is answered as LangChain's stores
    answer ``""``. ``min_confidence=0`` answers every query, these two included.
    :class:`KLHybridRetriever` does the same.

    Attributes:
        vectorstore: The :class:`KLVectorStore` searched.
        k: Documents per query (>= 1); ``invoke(q, k=...)`` overrides it per call.
        filter: Default metadata filter (dict or callable); ``invoke(q, filter=...)`` overrides it
            per call (``filter=None``: no filter for that call).
        min_confidence: Abstain below this confidence, in ``[0, 1]`` (``None`` or 0: never);
            ``invoke(q, min_confidence=...)`` overrides it per call (``None``: no abstention).
        calibrator: A fitted ``ConfidenceCalibrator`` or a path to its JSON (default: the model's);
            ``retriever.calibrator = cal`` after construction is used from the next query on.
        search_kwargs: Per-call defaults as on LangChain's ``VectorStoreRetriever`` (``k``, ``filter``,
            ``min_confidence``): a key here wins over the field, an ``invoke`` keyword over both; a
            ``configurable_fields`` target. ``search_type="similarity"`` is accepted at construction;
            ``"mmr"`` / ``"similarity_score_threshold"`` are refused (``vectorstore.as_retriever`` has them).

    Raises:
        ValueError: ``k < 1``, or ``min_confidence`` not a number in ``[0, 1]`` (at construction,
            naming the value and the range; one assigned later, at the next query); ``min_confidence``
            above 0 without a calibrator (at the first query); a ``search_type`` other than ``"similarity"``;
            ``score_key``, ``uncertainty_key`` and ``confidence_key`` not all different (naming the key and
            the names taken; at construction, and at the next query after an assignment such as
            ``retriever.score_key = ...``).
        TypeError: A keyword that is no field, or a ``search_kwargs`` key a search does not take (the
            message names it, and the equivalent of ``VectorStoreRetriever`` / ``EnsembleRetriever`` /
            ``BM25Retriever`` options such as ``score_threshold``, ``weights``, ``c``, ``bm25_params``).

    Examples:
        >>> retriever = KLRetriever.from_texts(["the cat sat", "tea"], k=1)  # doctest: +SKIP
        >>> {key: round(value, 3) for key, value in retriever.invoke("cat")[0].metadata.items()}  # doctest: +SKIP
        {'neg_kl': -0.362, 'query_uncertainty': 0.0, 'confidence': 0.997}
        >>> KLRetriever.from_texts(["the cat sat", "tea"], min_confidence=0.9).invoke("stock prices")  # doctest: +SKIP
        []
    """

    vectorstore: KLVectorStore

    saving: ClassVar[str] = (
        "save its store with retriever.vectorstore.save_local(folder) and wrap KLVectorStore.load_local(folder) "
        "again (KLRetriever.from_store)"
    )

    def _searched_store(self) -> Any:
        return self.vectorstore

    def _warn_reserved_keys(self, hits: Sequence[SearchResult]) -> None:
        """Warn once per store and key when the documents found use ``score_key`` / ``uncertainty_key`` /
        ``confidence_key`` in their own metadata: the returned documents carry the score under that name.

        Once per store (:data:`_WARNED_RESERVED`), not per retriever: ``configurable_fields`` and
        ``from_store`` make a new retriever per call over the same store.
        """
        reserved = {self.score_key, self.uncertainty_key, self.confidence_key}
        found = sorted({key for hit in hits for key in reserved.intersection(hit.metadata)})
        if not found:
            return
        with _WARNED_RESERVED_LOCK:
            try:
                warned = _WARNED_RESERVED.setdefault(self.vectorstore, set())
            except TypeError:  # a store that takes no weak reference: warn for this retriever's calls
                warned = self.__dict__.setdefault("_kl_warned_reserved", set())
            new = [key for key in found if key not in warned]
            warned.update(found)
        if new:
            logger.warning(
                "KLRetriever: the returned documents' metadata uses the key(s) %s, which a search writes its scores "
                "under: the documents it returns carry the score under that name, not your value; the stored "
                "metadata, which filters see, keeps it. Rename the key(s) (or set score_key / uncertainty_key / "
                "confidence_key) to keep them in results. Reserved keys: %s",
                ", ".join(repr(k) for k in found),
                ", ".join(sorted(reserved)) + " (score_key, uncertainty_key and confidence_key)",
            )

    @classmethod
    def from_store(cls, store: KLVectorStore | KLStore, **kwargs: Any) -> KLRetriever:
        """Wrap a :class:`KLVectorStore` (or a :class:`KLStore`, with ``embedding=`` optional).

        Args:
            store: The store searched.
            **kwargs: The retriever's fields (``k``, ``filter``, ``min_confidence``, ``calibrator``,
                ``search_kwargs``...) and, with a :class:`KLStore` only, ``embedding`` (a
                :class:`KLEmbeddings`, Gaussian encoder or LangChain ``Embeddings``).

        Raises:
            TypeError: ``store`` is neither a :class:`KLVectorStore` nor a :class:`KLStore`; a keyword that is
                no field (named, with what is taken); ``vectorstore=`` besides the store; ``embedding=``
                with a :class:`KLVectorStore`, which searches with its own encoder.
        """
        where = f"{cls.__name__}.from_store"
        fields = sorted(set(cls.model_fields) - {"vectorstore"})
        if not isinstance(store, (KLVectorStore, KLStore)):
            hint = ""
            if type(store).__name__ == "KLHybridStore":
                hint = "; for a KLHybridStore use KLHybridRetriever(store=...)"
            raise TypeError(f"{where} takes a KLVectorStore or a KLStore; got {type(store).__name__}{hint}")
        if "vectorstore" in kwargs:
            raise TypeError(
                f"{where} got vectorstore= besides the store it wraps; pass the store once (its first argument, "
                f"or store=); the other keywords it takes are {', '.join(fields)} (and embedding with a KLStore)"
            )
        if isinstance(store, KLVectorStore) and "embedding" in kwargs:
            raise TypeError(
                f"{where} takes embedding= with a KLStore only; this KLVectorStore searches with its own encoder. "
                "Wrap the KLStore instead (KLRetriever.from_store(kl_store, embedding=...)) or build "
                "KLVectorStore(embedding, store=kl_store)"
            )
        embedding = kwargs.pop("embedding", None)
        _refuse_foreign_options(set(kwargs) - set(fields), where, [*fields, "embedding (with a KLStore)"])
        if isinstance(store, KLStore):
            store = KLVectorStore(embedding, store=store)
        return cls(vectorstore=store, **kwargs)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        embedding: Any | None = None,
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        *,
        k: int = 4,
        min_confidence: float | None = None,
        calibrator: Any = None,
        **kwargs: Any,
    ) -> KLRetriever:
        """Index ``texts`` in a new :class:`KLVectorStore` and wrap it.

        ``ids`` is also the fourth positional argument, as in :meth:`KLVectorStore.from_texts`. Keywords that are
        fields of the retriever (``filter``, ``search_kwargs``, ``score_key``, ``tags``...) go to it, the rest to
        the store (``relevance``, ``batch_size``, ``index_type``...).
        """
        check_min_confidence(min_confidence)
        own = cls._retriever_options(kwargs)
        _refuse_model_name(embedding, f"{cls.__name__}.from_texts(texts, {{embeddings}})")
        return cls(
            vectorstore=KLVectorStore.from_texts(texts, embedding, metadatas, ids=ids, **kwargs),
            k=k,
            min_confidence=min_confidence,
            calibrator=calibrator,
            **own,
        )

    @classmethod
    def from_documents(
        cls,
        documents: list[Document],
        embedding: Any | None = None,
        *,
        k: int = 4,
        min_confidence: float | None = None,
        calibrator: Any = None,
        **kwargs: Any,
    ) -> KLRetriever:
        """Index ``documents`` in a new :class:`KLVectorStore` and wrap it (keywords as in :meth:`from_texts`)."""
        check_min_confidence(min_confidence)
        own = cls._retriever_options(kwargs)
        _refuse_model_name(embedding, f"{cls.__name__}.from_documents(documents, {{embeddings}})")
        return cls(
            vectorstore=KLVectorStore.from_documents(documents, embedding, **kwargs),
            k=k,
            min_confidence=min_confidence,
            calibrator=calibrator,
            **own,
        )

    def _search_documents(
        self,
        query: str,
        *,
        k: int | None = None,
        filter: MetadataFilter | _Unset | None = _UNSET,
        min_confidence: float | _Unset | None = _UNSET,
        **kwargs: Any,
    ) -> tuple[list[Document], dict[str, Any] | None]:
        self._refuse_call_options(kwargs)
        kk, flt, floor, scorer = self._call_settings(k, filter, min_confidence)
        encoder = self.vectorstore._get_encoder()
        require_calibrator(scorer, encoder, floor)
        blank = is_blank_query(_check_query(query))
        if blank and abstention_enabled(floor):  # require_calibrator passed: a calibrator exists
            return [], self._abstain_on_blank(query, floor)
        g = self.vectorstore._encode_query(query)
        uncertainty = float(np.asarray(g.uncertainty())[0])
        cal = scorer.calibrator(encoder)
        depth = max(kk, scorer.depth_for(cal)) if cal is not None else kk
        # the store's hits, not KLVectorStore's Documents: each returned Document is built once, with its scores
        hits = self.vectorstore._hits(g, depth, flt)
        scores = [float(h.score) for h in hits]
        if blank and hits:  # a blank query asks for nothing: confidence 0 with a calibrator, whatever its scores
            confidence = blank_query_confidence(cal is not None)[0]
        else:
            confidence = scorer.confidence(encoder, scores, uncertainty)
        reason = abstention_reason(confidence, floor, len(hits))
        if reason is not None:
            log_abstention(query, confidence, floor, reason)
            return [], self._abstention(query, confidence, floor, reason)
        self._warn_reserved_keys(hits[:kk])
        return [
            Document(
                id=hit.id,
                page_content=hit.text or "",
                metadata={
                    **hit.metadata,
                    self.score_key: score,
                    self.uncertainty_key: uncertainty,
                    self.confidence_key: confidence,
                },
            )
            for hit, score in zip(hits[:kk], scores[:kk], strict=True)
        ], None


class KLHybridRetriever(_ConfidenceRetriever):
    """A LangChain retriever over a :class:`~kl_retrievers.hybrid.KLHybridStore`: BM25 and ``-KL`` fused per query.

    Documents come in fused order; each carries in its metadata what both retrievers said
    (:meth:`~kl_retrievers.hybrid.HybridResult.scores`): ``fused_score``, ``fusion``, ``neg_kl``
    (the exact ``-KL``, higher is better), ``bm25``, ``dense_rank`` / ``bm25_rank`` (1-based,
    ``None`` when the document was not in that list), ``dense_weight`` (the dense share used for
    this query; ``None`` for RRF), ``query_uncertainty`` and ``confidence``: the calibrated
    probability that the *adaptive* ranking's top document is relevant (the same whatever ``fusion`` is),
    from the hybrid calibrator
    the model ships (``hybrid_confidence_calibration.json``, or ``hybrid_confidence_calibration.unstemmed.json``
    for a store with ``stemmer=None`` when the model ships one: dense and BM25 signals of the
    query's candidates, :func:`~kl_retrievers.calibration.hybrid_query_features`; fitted for the
    ``"adaptive"`` fusion with 100 candidates per half). It is the query's confidence, not a
    per-document one. An explicit ``calibrator=`` wins: a hybrid one, or a dense one (then the
    confidence is the *dense* ranking's, from the dense candidates, as :class:`KLRetriever`'s).

    Abstention works as in :class:`KLRetriever`: below ``min_confidence`` the retriever returns
    ``[]``, logs, and sends :data:`ABSTENTION_EVENT`. The recommended threshold for a model's
    hybrid calibrator is ``recommended_min_confidence(model, retriever="hybrid", stemmer=store.stemmer)``
    (:func:`kl_retrievers.calibration.recommended_min_confidence`; the default model's is
    :data:`kl_retrievers.calibration.DEFAULT_HYBRID_MIN_CONFIDENCE`; chosen on training data,
    ``docs/hybrid.md``, "Abstention"). ``invoke`` takes per-call ``k``, ``filter``,
    ``min_confidence``, ``fusion``, ``weight`` and ``normalization``. ``ainvoke`` runs the search in
    a worker thread (LangChain's default).

    Why a separate retriever and not ``LangChain``'s ``EnsembleRetriever`` over two retrievers: the
    hybrid store keeps BM25 and the Gaussians in sync (add, upsert, delete, filters, save / load),
    scores every candidate with both retrievers, and its ``"adaptive"`` fusion picks the dense
    weight per query from signals (the query uncertainty, both lists' score statistics) that an
    ensemble of two opaque retrievers cannot see.

    Attributes:
        store: The hybrid store searched.
        k: Documents per query (>= 1).
        fusion: ``"rrf"``, ``"convex"`` or ``"adaptive"`` (``None``: the store's default).
        weight: The convex dense weight in ``[0, 1]`` (``None``: the store's); for convex calls only
            (refused with another fusion, not applied to a call that switches to one).
        normalization: ``"minmax"`` or ``"zscore"`` for convex fusion (``None``: the store's); as ``weight``.
        filter: Default metadata filter (dict or callable), applied to both halves before ranking;
            ``invoke(q, filter=...)`` overrides it per call (``filter=None``: no filter for that call).
        min_confidence: Abstain below this confidence (``None`` or 0: never); ``invoke(q, min_confidence=...)``
            overrides it per call (``None``: no abstention).
        calibrator: A fitted ``ConfidenceCalibrator`` (kind ``"hybrid"`` or ``"dense"``) or a path
            to its JSON (default: the model's hybrid calibrator, else its dense one); assignable, as in
            :class:`KLRetriever`.
        search_kwargs: Per-call defaults (``k``, ``filter``, ``min_confidence``, ``fusion``, ``weight``,
            ``normalization``), as in :class:`KLRetriever`.

    Raises:
        ValueError: An unknown fusion mode or normalisation, a weight or ``min_confidence``
            outside ``[0, 1]``, a weight or normalisation with a fusion other than ``"convex"``, or a
            ``score_key`` / ``uncertainty_key`` / ``confidence_key`` that another result field uses
            (``bm25``, ``neg_kl``...) (at construction, and at the next query after an assignment; the message
            names the value and what is allowed).
        TypeError: A keyword that is no field (as in :class:`KLRetriever`; ``EnsembleRetriever``'s
            ``weights``, ``c`` and ``id_key`` are answered with the equivalent here).

    Examples:
        >>> retriever = KLHybridRetriever.from_texts(["red apples", "green pears"], k=1, fusion="rrf")  # doctest: +SKIP
        >>> retriever.invoke("red fruit")[0].metadata["bm25_rank"]  # doctest: +SKIP
        1
    """

    store: KLHybridStore
    # typed for type checkers; checked by FusionConfig (model_post_init), whose messages name the allowed values
    fusion: SkipValidation[FusionMode | None] = None
    weight: float | None = None
    normalization: SkipValidation[Normalization | None] = None
    score_key: str = "fused_score"

    saving: ClassVar[str] = (
        "save its store with retriever.store.save(folder) and wrap KLHybridStore.load(folder) again "
        "(KLHybridRetriever(store=...))"
    )

    #: The result fields written under fixed keys (:meth:`~kl_retrievers.hybrid.HybridResult.scores` less the
    #: fused score and the query uncertainty, whose keys are ``score_key`` and ``uncertainty_key``).
    written_keys: ClassVar[tuple[str, ...]] = tuple(
        key for key, _ in HybridResult.SCORE_KEYS if key not in ("fused_score", "query_uncertainty")
    )

    #: Hybrid retrievers take a hybrid or a dense calibrator (:func:`kl_retrievers._confidence.check_calibrator`).
    calibrator_for: ClassVar[str] = "hybrid"
    search_keys: ClassVar[tuple[str, ...]] = ("k", "filter", "min_confidence", "fusion", "weight", "normalization")

    def _searched_store(self) -> Any:
        return self.store

    def model_post_init(self, context: Any, /) -> None:
        """Check the fusion settings against the store's (fails early, naming the bad value)."""
        super().model_post_init(context)
        if not isinstance(self.store, KLHybridStore):
            raise TypeError(f"store must be a KLHybridStore; got {type(self.store).__name__}")
        # checked as a call without per-call keywords would use them (search_kwargs before the fields)
        self.store.fusion.for_call(*self._fusion_settings(checking=True), what="this retriever")
        # documents already in the store (loaded, or added with the core API) may use a score key: once per store
        self.store._warn_stored_reserved_keys("KLHybridRetriever (documents already stored)")

    def _fusion_settings(
        self,
        fusion: FusionMode | None = None,
        weight: float | None = None,
        normalization: Normalization | None = None,
        *,
        checking: bool = False,
    ) -> tuple[FusionMode | None, float | None, Normalization | None]:
        """``(fusion, weight, normalization)`` of a call: the call's own, else the retriever's defaults
        (:meth:`_default`); the retriever's ``weight`` and ``normalization`` apply to a convex call only.

        Args:
            fusion: The call's fusion (``None``: the retriever's, else the store's).
            weight: The call's convex weight (``None``: the retriever's for a convex call).
            normalization: The call's convex normalisation (as ``weight``).
            checking: At construction: the retriever's ``weight`` / ``normalization`` are also returned for a
                non-convex fusion, to be refused (they would be ignored), unless ``search_kwargs`` picks that
                fusion and not them (then they serve the calls that switch to ``"convex"``).
        """
        fusion = fusion if fusion is not None else self._default("fusion")
        convex = (fusion or self.store.fusion.mode) == "convex"
        given: dict[str, Any] = {"weight": weight, "normalization": normalization}
        for name, value in given.items():
            kept = checking and (name in self.search_kwargs or "fusion" not in self.search_kwargs)
            if value is None and (convex or kept):
                given[name] = self._default(name)
        return fusion, given["weight"], given["normalization"]

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        embedding: Any | None = None,
        metadatas: Iterable[dict[str, Any] | None] | None = None,
        ids: Iterable[str | None] | None = None,
        *,
        k: int = 4,
        fusion: FusionMode | None = None,
        min_confidence: float | None = None,
        calibrator: Any = None,
        **store_kwargs: Any,
    ) -> KLHybridRetriever:
        """Index ``texts`` in a new :class:`~kl_retrievers.hybrid.KLHybridStore` and wrap it.

        Args:
            texts: Document texts (any iterable of str but a set, as in :meth:`KLVectorStore.add_texts`).
            embedding: A :class:`KLEmbeddings`, Gaussian encoder or LangChain ``Embeddings``
                (default: the package's default model).
            metadatas: One dict per text (any iterable but a single dict or a set).
            ids: One id per text (any iterable but a single str or a set; ``None`` entries get a fresh
                uuid4 hex; also the fourth positional argument). Checked, like ``metadatas``, before any
                encoding.
            k: Documents per query.
            fusion: The store's fusion mode (``None``: ``"adaptive"``).
            min_confidence: Abstain below this confidence.
            calibrator: Confidence calibrator (default: the model's).
            **store_kwargs: The retriever's other fields (``filter``, ``search_kwargs``, ``score_key``,
                ``tags``...) go to it; the rest to :class:`~kl_retrievers.hybrid.KLHybridStore` (``weight``,
                ``normalization``, ``rrf_k``, ``k1``, ``b``, ``stemmer``, ``candidates``, ``index_type``...).
                ``weight`` / ``normalization`` are refused (``ValueError``, before any encoding) unless the
                retriever fuses with ``"convex"`` (``fusion``, or ``search_kwargs["fusion"]``).
                ``EnsembleRetriever``'s and ``BM25Retriever``'s options (``weights``, ``c``, ``bm25_params``,
                ``preprocess_func``...) raise a ``TypeError`` naming the equivalent here.
        """
        check_min_confidence(min_confidence)
        own = cls._retriever_options(store_kwargs, keep=("weight", "normalization"))
        # weight= / normalization= go to the store; the retriever fuses as it does (or as its search_kwargs
        # say): refused before any encoding when that fusion is not convex (they would be ignored)
        search_kwargs = own.get("search_kwargs")
        searched = search_kwargs.get("fusion") if isinstance(search_kwargs, Mapping) else None
        retriever_fusion = searched or fusion or "adaptive"
        FusionConfig().for_call(
            retriever_fusion, store_kwargs.get("weight"), store_kwargs.get("normalization"), what="this retriever"
        )
        items = _check_texts(texts)
        metadata_list, id_values = _check_add_args(len(items), metadatas, ids)
        if embedding is None:
            encoder = _load_default_encoder()
        else:
            encoder = _unwrap_encoder(embedding, f"{cls.__name__}.from_texts(texts, {{embeddings}})")
        store = KLHybridStore(encoder, fusion="adaptive" if fusion is None else fusion, **store_kwargs)
        store.add(items, ids=id_values, metadatas=metadata_list)
        return cls(store=store, k=k, min_confidence=min_confidence, calibrator=calibrator, **own)

    @classmethod
    def from_documents(
        cls, documents: list[Document], embedding: Any | None = None, **kwargs: Any
    ) -> KLHybridRetriever:
        """Index ``documents`` (their ``id`` fields are kept) in a new hybrid store; see :meth:`from_texts`."""
        _refuse_model_name(embedding, f"{cls.__name__}.from_documents(documents, {{embeddings}})")
        texts, metadatas, ids = _document_fields(documents, kwargs.pop("ids", None))
        return cls.from_texts(texts, embedding, metadatas, ids=ids, **kwargs)

    # -- writing: both halves of the store, as KLVectorStore writes (the store's add, upsert and delete)
    def add_documents(self, documents: Iterable[Document], ids: Iterable[str | None] | None = None) -> list[str]:
        """Add documents to both halves of :attr:`store`; an existing id is replaced in both (upsert).

        Documents map to the store as :meth:`KLVectorStore.add_documents` maps them: ``page_content`` is the
        text (BM25 indexes it, the encoder encodes it), ``metadata`` the metadata, ``ids`` (else the documents'
        ``id`` fields, when any is set; a document without one gets a uuid4 hex) the ids. Checked as
        :meth:`KLVectorStore.add_texts` checks them, before anything is encoded. A document this retriever
        returned (its metadata holds every key a search writes: :attr:`written_keys`, ``score_key``,
        ``neg_kl``, ``uncertainty_key`` and ``confidence_key``) is stored without those scores, which belong
        to one query (as LlamaIndex's ``add_nodes`` stores a returned node); a document with only some of those
        keys keeps them (its own metadata; ``KLHybridStore.add`` warns once that results shadow them).

        Returns:
            The ids, in input order.

        Raises:
            TypeError / ValueError: What :meth:`KLVectorStore.add_texts` refuses (a metadata that is not JSON
                names its document id); then neither half changes.
        """
        texts, metadatas, id_values = _document_fields(documents, ids)
        scores = self._result_keys()
        metadatas = [_without_search_scores(m, scores) for m in metadatas]  # a returned document added again
        items = _check_texts(texts, "documents")
        metadata_list, id_list = _check_add_args(len(items), metadatas, id_values, "documents")
        if not items:
            return []
        return _store_texts(self.store, items, metadata_list, id_list)

    def _result_keys(self) -> frozenset[str]:
        """The metadata keys a search of this retriever writes on every document it returns."""
        return frozenset({*self.written_keys, self.score_key, SCORE_NAME, self.uncertainty_key, self.confidence_key})

    async def aadd_documents(self, documents: Iterable[Document], ids: Iterable[str | None] | None = None) -> list[str]:
        """Async :meth:`add_documents` (runs in a worker thread); a cancelled call writes nothing if it can, as
        :meth:`KLVectorStore.aadd_texts`. The documents (a generator too) and ids are read and the ids checked here,
        on the caller's thread: a bad id, or an item that is not a ``Document``, fails at once, before anything is
        encoded. The texts and the metadata copies are made in the worker thread (:meth:`add_documents`), so that
        many documents do not hold the event loop."""
        docs, id_values = _document_list(documents, ids)
        _, id_list = _check_add_args(len(docs), None, id_values, "documents")
        return await cancellable_write(self.add_documents, docs, check_write_ids(id_list))

    def delete(self, ids: list[str] | None = None, *, delete_all: bool = False) -> bool:
        """Delete documents from both halves of :attr:`store` by id, as :meth:`KLVectorStore.delete` does.

        Ids already absent are ignored (logged at DEBUG level): the result is ``True`` whenever every given id
        is absent afterwards. ``delete()`` with no ids refuses; ``delete(delete_all=True)`` empties the store.

        Raises:
            ValueError: No ids and no ``delete_all=True``, or both.
            TypeError: ``ids`` is a single str.
        """
        return _delete_by_ids(self.store, ids, delete_all, type(self).__name__)

    async def adelete(self, ids: list[str] | None = None, *, delete_all: bool = False) -> bool:
        """Async :meth:`delete` (runs in a worker thread); a call cancelled before it deletes deletes nothing."""
        return await cancellable_write(self.delete, ids, delete_all=delete_all)

    def _search_documents(
        self,
        query: str,
        *,
        k: int | None = None,
        filter: MetadataFilter | _Unset | None = _UNSET,
        min_confidence: float | _Unset | None = _UNSET,
        fusion: FusionMode | None = None,
        weight: float | None = None,
        normalization: Normalization | None = None,
        **kwargs: Any,
    ) -> tuple[list[Document], dict[str, Any] | None]:
        self._refuse_call_options(kwargs)
        kk, flt, floor, scorer = self._call_settings(k, filter, min_confidence)
        _check_query(query)
        fusion, weight, normalization = self._fusion_settings(fusion, weight, normalization)
        # a blank query: confidence 0 with a calibrator; refused unsearched under a floor, after the setup checks
        hits, confidence, reason = hybrid_search(
            self.store,
            query,
            kk,
            filter=flt,
            fusion=fusion,
            weight=weight,
            normalization=normalization,
            scorer=scorer,
            min_confidence=floor,
        )
        if reason is not None:
            return [], self._abstention(query, confidence, floor, reason)
        out = []
        for hit in hits:
            scores = hit.scores()
            extra = {key: value for key, value in scores.items() if key not in ("fused_score", SCORE_NAME)}
            extra.pop("query_uncertainty", None)
            out.append(
                Document(
                    id=hit.id,
                    page_content=hit.text or "",
                    metadata={
                        **hit.metadata,
                        **extra,
                        self.score_key: hit.score,
                        SCORE_NAME: hit.neg_kl,
                        self.uncertainty_key: hit.query_uncertainty,
                        self.confidence_key: confidence,
                    },
                )
            )
        return out, None
