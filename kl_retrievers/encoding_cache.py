"""An on-disk cache of encodings: arrays as ``.npy`` files (never pickled), keyed by a JSON identity.

:func:`kl_retrievers.evaluation.encode_dataset` caches Gaussian encodings in it and
:func:`kl_retrievers.baselines.dense_run` the dense baselines' vectors. From the package it
imports only :mod:`kl_retrievers.hub`'s hashing (:func:`~kl_retrievers.hub.cached_sha256`,
:func:`~kl_retrievers.hub.read_sha256`, :class:`~kl_retrievers.hub.HashingWriter`) and :mod:`kl_retrievers._io`.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     cache = EncodingCache(tmp)
    ...     cache.save("documents", {"model": "m"}, ["a"], {"emb": np.zeros((1, 2), dtype=np.float32)})
    ...     cache.load("documents", {"model": "m"}, ["a"])["emb"].shape
    (1, 2)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers._io import (
    LEFTOVER_NAME,
    atomic_dir,
    atomic_file,
    folder_identity,
    make_dirs,
    npy_from_buffer,
    remove_unless_locked,
    user_cache_dir,
    user_path,
)
from kl_retrievers.hub import HashingWriter, cached_sha256, read_sha256

__all__ = [
    "CACHE_ENV",
    "EncodingCache",
    "canonical_json",
    "default_cache_dir",
    "files_fingerprint",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "KL_RETRIEVERS_CACHE"
_CACHE_FORMAT = 1
_STALE_TMP_SECONDS = 3600  # a ``.tmp-*`` folder untouched this long is a killed save's
#: Part of every :func:`files_fingerprint`: raised whenever what the loaders make of the same files may change
#: (their code), so that keys taken before miss.
_FILES_REVISION = 2  # 2: files in sub-folders hashed too
#: An array's name: its file is ``NAME.npy`` inside the entry (no separator, no ``..``).
_ARRAY_NAME = re.compile(r"[A-Za-z0-9_-]+")


_NO_FOLDER_WARNED = False


def _warn_once() -> None:
    global _NO_FOLDER_WARNED
    _NO_FOLDER_WARNED = True


def default_cache_dir() -> Path:
    """``$KL_RETRIEVERS_CACHE`` if set (empty or blank counts as unset), else ``~/.cache/kl_retrievers/encodings``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set (as for the other caches,
    :func:`kl_retrievers._io.user_cache_dir`).

    Examples:
        >>> default_cache_dir().name  # doctest: +SKIP
        'encodings'
    """
    return user_cache_dir(CACHE_ENV, "encodings")


def canonical_json(obj: Any) -> str:
    """One JSON text per value (sorted keys, no spaces, ``str`` for what JSON lacks): what cache keys hash.

    Examples:
        >>> canonical_json({"b": 1, "a": [1.0, None]})
        '{"a":[1.0,null],"b":1}'
    """
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


class EncodingCache:
    """Arrays on disk (``.npy``, never pickled) keyed by a JSON-able identity dict.

    Each entry is a folder ``<kind>-<sha256 of the key>`` holding one ``.npy`` per array
    and ``meta.json`` (the full key, the row ids, the array shapes and each ``.npy`` file's
    SHA-256), written atomically (:func:`kl_retrievers._io.atomic_dir`: a reader sees the previous or
    the new complete entry). An entry that fails to load, does not match its key, lists no arrays or whose
    files do not match their checksums is deleted and reported as a miss; one that another process
    replaced while it was read is only reported as a miss (never deleted). An entry written
    before checksums were recorded is checked as it used to be (shapes, finite values) and, if
    it passes, its checksums are recorded then, so caches that took hours to fill stay usable.

    Where no default folder can be named (``$KL_RETRIEVERS_CACHE``, ``$XDG_CACHE_HOME`` and ``HOME`` unset, and
    the user has no password-database entry) the cache is off, with a warning (once a process): every load misses and
    nothing is saved (``root`` is ``None``), as with a cache folder that cannot be written.

    Args:
        cache_dir: Root folder (a leading ``~`` is expanded); defaults to :func:`default_cache_dir`.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     cache = EncodingCache(tmp)
        ...     key = {"model": "m", "max_length": 8}
        ...     miss = cache.load("documents", key, ["a", "b"])
        ...     cache.save("documents", key, ["a", "b"], {"emb": np.ones((2, 3), dtype=np.float32)})
        ...     hit = cache.load("documents", key, ["a", "b"])
        >>> miss is None, hit["emb"].shape
        (True, (2, 3))
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root: Path | None
        if cache_dir is not None:
            self.root = user_path(cache_dir)
        else:
            try:
                self.root = default_cache_dir()
            except OSError as exc:  # no home folder to put it in: a cache is optional
                log = logger.info if _NO_FOLDER_WARNED else logger.warning  # once a process, not once a cache
                log("%s; encodings are not cached", exc)
                _warn_once()
                self.root = None
        self.hits = 0
        self.misses = 0

    def entry_dir(self, kind: str, key: Mapping[str, Any]) -> Path:
        """Folder of the entry for ``(kind, key)``; ``kind`` is a plain name (letters, digits, ``-``, ``_``)."""
        if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", kind):
            raise ValueError(f"kind must be a plain name of letters, digits, '-' or '_' (a folder name); got {kind!r}")
        if self.root is None:
            raise OSError("the encoding cache is off: no folder could be named for it (set KL_RETRIEVERS_CACHE)")
        digest = hashlib.sha256(
            canonical_json({"kind": kind, "key": key, "format": _CACHE_FORMAT}).encode()
        ).hexdigest()
        return self.root / f"{kind}-{digest[:32]}"

    def load(self, kind: str, key: Mapping[str, Any], ids: Sequence[str]) -> dict[str, np.ndarray] | None:
        """The cached arrays for ``(kind, key)`` whose rows are ``ids``, or ``None`` on a miss."""
        if self.root is None:  # the cache is off (no folder for it)
            self.misses += 1
            return None
        folder = self.entry_dir(kind, key)
        before = folder_identity(folder)
        if before is None or not folder.is_dir():
            self.misses += 1
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != _CACHE_FORMAT or canonical_json(meta.get("key")) != canonical_json(key):
                raise ValueError("key mismatch")
            if meta.get("ids") != list(ids):
                raise ValueError("row ids differ")
            table, checksums = meta.get("arrays"), meta.get("sha256")
            if not isinstance(table, dict) or not table:
                raise ValueError("meta.json lists no arrays")
            adopt = checksums is None  # written before checksums: record them once it passes the old checks
            if not adopt and (not isinstance(checksums, dict) or set(checksums) != set(table)):
                raise ValueError("meta.json has no checksum for every array")
            arrays: dict[str, np.ndarray] = {}
            digests: dict[str, str] = {}
            for name, shape in table.items():
                if not _ARRAY_NAME.fullmatch(name):  # a name like "../x" would read a file outside the entry
                    raise ValueError(f"meta.json names an array {name!r}, not a plain name (letters, digits, -, _)")
                path = folder / f"{name}.npy"
                data, digests[name] = read_sha256(path)  # read once: hashed, then parsed from the same bytes
                if not adopt and digests[name] != checksums[name]:
                    raise ValueError(f"{path.name} does not match its checksum")
                arr = npy_from_buffer(data)
                if list(arr.shape) != list(shape) or arr.shape[0] != len(ids):
                    raise ValueError(f"array {name!r} has shape {arr.shape}, expected {shape}")
                if arr.dtype.kind != "f":
                    raise ValueError(f"array {name!r} has dtype {arr.dtype}; the cache holds floating-point arrays")
                if not np.isfinite(arr).all():
                    raise ValueError(f"array {name!r} holds non-finite values")
                arrays[name] = arr
            # A save that replaced the entry between two files (or between meta.json and a file) would hand back
            # arrays of two saves (one's means with the other's variances), each matching its own checksum. Every
            # save swaps in a new folder, so an unchanged identity means one save's.
            if folder_identity(folder) != before:
                raise FileNotFoundError(f"{folder} was replaced while it was read")
            if adopt:
                meta["sha256"] = digests
                with atomic_file(folder / "meta.json") as tmp_meta:
                    tmp_meta.write_text(json.dumps(meta), encoding="utf-8")
        except Exception as exc:  # any damage means recompute
            self.misses += 1
            if isinstance(exc, FileNotFoundError) or folder_identity(folder) != before:
                logger.info("encoding cache entry %s was replaced while it was read (%s); recomputing", folder, exc)
                return None
            if isinstance(exc, PermissionError):  # another user's entry: not ours to delete
                logger.warning(
                    "encoding cache entry %s cannot be read (%s); recomputing. A cache shared between users needs a "
                    "common group and umask 002 (see the FAQ)",
                    folder,
                    exc,
                )
                return None
            logger.warning("encoding cache entry %s is unusable (%s); recomputing", folder, exc)
            self._remove_entry(folder, before)
            return None
        self.hits += 1
        logger.info("encoding cache hit: %s", folder)
        return arrays

    def save(self, kind: str, key: Mapping[str, Any], ids: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Store ``arrays`` (first axis = ``ids``) for ``(kind, key)``; failures only warn.

        Its temporary folder is always removed; leftovers of saves killed over an hour ago (of any
        entry, not only this one) are removed first.
        An array name that is not a plain name (letters, digits, ``-``, ``_``) or an array that is not
        floating-point (what :meth:`load` refuses) is not written (a warning, as for any failure). Nothing is
        written when the cache is off (``root`` is ``None``).
        """
        if self.root is None:
            return
        folder = self.entry_dir(kind, key)
        try:
            for name, value in arrays.items():  # what load() would refuse is not written
                if not isinstance(name, str) or not _ARRAY_NAME.fullmatch(name):
                    raise ValueError(f"array names must be plain names of letters, digits, '-' or '_'; got {name!r}")
                if np.asarray(value).dtype.kind != "f":
                    raise ValueError(
                        f"array {name!r} has dtype {np.asarray(value).dtype}; the cache holds floating-point arrays"
                    )
            make_dirs(self.root)  # each new folder synced into its parent: a crash cannot lose the path
            self._remove_stale_tmp()
            with atomic_dir(folder) as tmp:  # readers see the previous or the new complete entry, never none
                shapes: dict[str, list[int]] = {}
                checksums: dict[str, str] = {}
                for name, value in arrays.items():
                    arr = np.ascontiguousarray(value)
                    with open(tmp / f"{name}.npy", "wb") as fh:
                        out = HashingWriter(fh)  # hashed as written, not read back
                        np.save(out, arr, allow_pickle=False)
                    shapes[name] = list(arr.shape)
                    checksums[name] = out.hexdigest()
                meta = {
                    "format": _CACHE_FORMAT,
                    "kind": kind,
                    "key": json.loads(canonical_json(key)),
                    "ids": list(ids),
                    "arrays": shapes,
                    "sha256": checksums,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            logger.info("encoding cache saved: %s", folder)
        except Exception as exc:  # a cache must never break the run it speeds up
            logger.warning("could not write encoding cache %s: %s", folder, exc)

    def _remove_entry(self, folder: Path, identity: tuple[int, int, int, int]) -> None:
        """Delete a damaged entry, but only the copy that was read (``identity``: its :func:`folder_identity`).

        The entry is first renamed aside (one atomic step); if what was moved is not the copy that was
        read (a save replaced it meanwhile), it is put back unless another copy is already in place.
        """
        aside = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root)) / "entry"
        try:
            os.rename(folder, aside)
        except OSError:  # gone or replaced meanwhile: nothing of ours to delete
            shutil.rmtree(aside.parent, ignore_errors=True)
            return
        moved = folder_identity(aside)
        if moved is None or moved[:2] != identity[:2]:  # device and inode (a rename changes the ctime)
            with contextlib.suppress(OSError):  # OSError: yet another copy is in place already
                os.rename(aside, folder)  # a newer save's entry: put it back
        shutil.rmtree(aside.parent, ignore_errors=True)

    def _remove_stale_tmp(self) -> None:
        """Remove leftovers of killed saves not modified for :data:`_STALE_TMP_SECONDS`.

        These are the ``.tmp-*`` folders :meth:`_remove_entry` makes and the ``.NAME.tmp-TOKEN`` /
        ``.NAME.old-TOKEN`` copies :func:`~kl_retrievers._io.atomic_dir` makes (a killed save of one
        entry leaves a whole entry behind, which only a later save of that same entry would remove);
        those are removed only when no running save holds them locked, as
        :func:`~kl_retrievers._io.clean_stale` decides. What this process may not remove (another user's
        leftovers in a shared cache) is skipped without a word, every time.
        """
        if self.root is None:
            return
        cutoff = time.time() - _STALE_TMP_SECONDS
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for path in entries:
            leftover = LEFTOVER_NAME.fullmatch(path.name)
            if not (path.name.startswith(".tmp-") or leftover):
                continue
            try:
                if not path.is_dir() or path.is_symlink() or path.stat().st_mtime >= cutoff:
                    continue
            except OSError:
                continue
            if leftover:
                if remove_unless_locked(path):
                    logger.info("removed %s, left by an interrupted encoding cache save", path)
            else:
                shutil.rmtree(path, ignore_errors=True)  # what cannot be removed is skipped


def _state_dict_of(encoder: Any) -> Mapping[str, Any] | None:
    for obj in (encoder, getattr(encoder, "model", None)):
        fn = getattr(obj, "state_dict", None)
        if callable(fn):
            try:
                sd = fn()
            except Exception:  # a fingerprint must never fail
                continue
            if isinstance(sd, Mapping):
                return sd
    return None


def _tokenizer_text(tokenizer: Any) -> str | None:
    """A fast tokenizer's serialised state (``tokenizer.json`` text): ``tokenizer`` itself when a ``str``, else its
    backend's (or a ``tokenizers.Tokenizer``'s) ``to_str()``; ``None`` for a slow tokenizer."""
    if isinstance(tokenizer, str):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    if callable(getattr(tokenizer, "to_str", None)):  # a tokenizers.Tokenizer
        return tokenizer.to_str()
    return None


def _text_identity(text: str) -> Any:
    """:func:`tokenizer_identity` of a fast tokenizer's serialised state ``text``."""
    try:
        state = json.loads(text)
    except ValueError:
        return {"text_sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()}
    if isinstance(state, dict):
        state.pop("truncation", None)
        state.pop("padding", None)
    return {"fast": state}


@functools.lru_cache(maxsize=8)  # keyed by the text itself: a changed tokenizer (add_tokens) serialises otherwise
def _text_digest(text: str) -> str:
    """SHA-256 of :func:`_text_identity` (parsing and re-serialising a vocabulary of 30,000 tokens takes 0.2 s)."""
    return _digest_of(_text_identity(text))


def _digest_of(ident: Any) -> str:
    return hashlib.sha256(canonical_json(ident).encode("utf-8", "surrogatepass")).hexdigest()


def tokenizer_identity(tokenizer: Any) -> Any:
    """What a tokenizer turns text into, as JSON-ready data (hashed into :func:`model_fingerprint`).

    A fast (``tokenizers``-backed) tokenizer is its serialised state; a ``tokenizers.Tokenizer`` (the
    ONNX encoders') the same; a ``str`` the text of its ``tokenizer.json``. The truncation and padding
    settings are left out (each call changes them). A slow tokenizer is its class, vocabulary, added
    tokens and settings (file paths left out, so copies of one tokenizer agree).
    :func:`kl_retrievers.training.features.tokenizer_fingerprint` hashes it too.

    Examples:
        >>> tokenizer_identity('{"model": {"vocab": {"a": 0}}, "padding": null}')
        {'fast': {'model': {'vocab': {'a': 0}}}}
    """
    text = _tokenizer_text(tokenizer)
    if text is not None:
        return _text_identity(text)
    settings = {
        k: v
        for k, v in (getattr(tokenizer, "init_kwargs", None) or {}).items()
        if "file" not in k and k not in ("name_or_path", "auto_map")
    }
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    get_vocab = getattr(tokenizer, "get_vocab", None)
    return {
        "class": type(tokenizer).__name__,
        "vocab": sorted(get_vocab().items()) if callable(get_vocab) else None,
        "added": sorted((int(i), str(t)) for i, t in added.items()),
        "settings": settings,
    }


def _hashed_tokenizer(encoder: Any) -> Any:
    """The tokenizer :func:`_tokenizer_digest` hashes: an ONNX encoder's ``tokenizer.json`` text as the folder
    holds it, else ``encoder.tokenizer``; ``None`` when it has neither.

    The text comes first: the ONNX encoder's ``tokenizer`` (a ``tokenizers.Tokenizer`` made from that text)
    serialises as the installed ``tokenizers`` writes it (with the fields an older version left out), so a
    folder exported under another version would change its fingerprint.
    """
    text = getattr(encoder, "_tokenizer_json", None)
    return text if text is not None else getattr(encoder, "tokenizer", None)


def _tokenizer_digest(encoder: Any) -> str | None:
    """SHA-256 of the encoder's tokenizer (:func:`tokenizer_identity` of :func:`_hashed_tokenizer`); ``None``
    when it has none.

    The torch encoder keeps it as ``tokenizer``; the ONNX encoders keep their ``tokenizer.json`` text.
    """
    tokenizer = _hashed_tokenizer(encoder)
    if tokenizer is None:
        return None
    try:
        text = _tokenizer_text(tokenizer)
        if text is not None:  # cached per text: every fingerprint, store save and load asks again
            return _text_digest(text)
        ident = tokenizer_identity(tokenizer)
    except Exception:  # a fingerprint must never fail: the tokenizer's class stands in
        ident = {"class": type(tokenizer).__name__}
    return _digest_of(ident)


def _pins_weights(config: Any) -> bool:
    """Whether an encoder config pins its weights by content: a non-empty ``model_sha256`` string (ONNX encoders).

    Everything else that sets such an encoder's output is in the rest of its config, hashed besides: the
    quantisation, the dimension and token budgets, ``[VAR]`` and padding, the source model's settings and, for
    adapter heads on a shared graph, the heads' SHA-256 (``encoder.onnx_heads.delta_sha256``).
    """
    pinned = config.get("model_sha256") if isinstance(config, Mapping) else None
    return isinstance(pinned, str) and bool(pinned.strip())


def model_fingerprint(encoder: Any) -> str:
    """A short hash identifying an encoder: class, config, tokenizer and weights (or ``name_or_path``).

    When the encoder (or its ``.model``) has a torch ``state_dict``, every tensor's bytes
    are hashed, so a fine-tuned model never reuses the encodings of its checkpoint, while the
    same weights loaded by bundled name or by folder path share one cache entry. Without a
    ``state_dict`` the config's ``model_sha256`` stands in for the weights where it records one (an
    ONNX encoder's: the SHA-256 of its graph, which loading checks the file against, and of an
    adapter's heads in its ``encoder`` section), so the same graph loaded by bundled name, by folder
    path or from a copy shares one fingerprint; otherwise the ``name_or_path`` does. The tokenizer
    (:func:`tokenizer_identity`: vocabulary, normalisation, added tokens) is hashed too: the same
    weights behind another tokenizer give other encodings. So is a torch encoder's backbone config
    (``encoder.backbone.config``, its name left out): the same weights under another activation or norm
    epsilon give other encodings too (hashed since 2026-12-06: encodings cached before miss once).

    Examples:
        >>> class E:
        ...     name_or_path = "toy"
        >>> len(model_fingerprint(E()))
        16
    """
    return _fingerprint(encoder, legacy=False)


def _legacy_fingerprint(encoder: Any) -> str | None:
    """The fingerprint a kl-retrievers before 2026-12-05 gave an encoder whose config pins its weights by
    ``model_sha256`` (it hashed ``name_or_path`` too); ``None`` where :func:`model_fingerprint` is unchanged.

    Sharded encodings record the fingerprint in their manifest: resuming or checking one written before
    accepts this one as well, so those folders stay usable.
    """
    config = getattr(encoder, "config", None)
    to_dict = getattr(config, "to_dict", None)
    config_dict = to_dict() if callable(to_dict) else config
    if _state_dict_of(encoder) is not None:  # before 2026-12-06 its backbone's config was not hashed
        return _fingerprint(encoder, legacy=True) if _backbone_config_of(encoder) is not None else None
    if not _pins_weights(config_dict):
        return None
    return _fingerprint(encoder, legacy=True)


def _backbone_config_of(encoder: Any) -> Any:
    """The config of an encoder's transformers backbone (``encoder.backbone.config``) as JSON-ready data, or
    ``None`` without one. The same weights under another config (an activation, a norm's epsilon) encode
    otherwise; the name it was loaded by (``_name_or_path``) is left out, so copies of one model agree."""
    to_dict = getattr(getattr(getattr(encoder, "backbone", None), "config", None), "to_dict", None)
    if not callable(to_dict):
        return None
    try:
        config = to_dict()
    except Exception:  # a fingerprint must never fail: the weights and the rest still count
        return None
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if k != "_name_or_path"}


def _fingerprint(encoder: Any, *, legacy: bool) -> str:
    """:func:`model_fingerprint`; ``legacy``: with ``name_or_path`` even where the config pins the weights."""
    h = hashlib.sha256()
    config = getattr(encoder, "config", None)
    config_dict: Any = None
    if config is not None:
        to_dict = getattr(config, "to_dict", None)
        config_dict = to_dict() if callable(to_dict) else config
    sd = _state_dict_of(encoder)
    ident = {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "config": config_dict,
    }
    if sd is None and (legacy or not _pins_weights(config_dict)):
        ident["name_or_path"] = str(getattr(encoder, "name_or_path", None))
    backbone = None if legacy else _backbone_config_of(encoder)
    if backbone is not None:  # absent (no key at all) for an encoder without a transformers backbone
        ident["backbone_config"] = backbone
    tokenizer = _tokenizer_digest(encoder)
    if tokenizer is not None:  # absent (no key at all) for an encoder without a tokenizer
        ident["tokenizer"] = tokenizer
    h.update(canonical_json(ident).encode())
    if sd is not None:
        import torch

        for name in sorted(sd):
            value = sd[name]
            h.update(name.encode())
            if isinstance(value, torch.Tensor):
                t = value.detach().cpu().contiguous()
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(value).encode())
    return h.hexdigest()[:16]


def files_fingerprint(folders: Sequence[str | os.PathLike[str]], settings: Mapping[str, Any]) -> str:
    """A hash of a model's files, taken without loading it: every file in ``folders``, and ``settings``.

    Each regular file (links followed) inside each folder or any of its sub-folders (an ONNX graph's external
    data, a shipped ``onnx-int8/``), folder by folder in the order given, is hashed by its path relative to the
    folder and its SHA-256 content (once per process while the file's size, times and inode stay,
    :func:`~kl_retrievers.hub.cached_sha256`). A sub-folder linked into one of its own parents raises
    ``OSError`` (no end to its files). ``settings`` (JSON data) holds the
    rest of what the load makes of the files: its backend and the backend's options, the quantisation, the
    versions of the packages that load it. A revision of the loaders is hashed too (raised when
    what they make of the same files changes). Unlike
    :func:`model_fingerprint`, nothing is loaded, so ``kl-retrievers evaluate`` records, once a load confirmed
    the files, which :func:`model_fingerprint` they are (a ``model-files`` entry keyed by it) and then finds the
    encodings, keyed by the model as ever, without loading it. A file added to, removed from or changed in a
    folder (even a model card) changes it: a miss, never a wrong hit. Other settings are a miss of this
    fingerprint only: the load they take finds the same model, whose encodings are shared (as every run with
    that model shares them: ONNX session options such as the thread count and package versions do not key
    encodings; an int8 graph gives the same vectors on 1 thread as on 4).

    Raises:
        OSError: A folder or one of its files cannot be read.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "config.json").write_text("{}")
        ...     a = files_fingerprint([tmp], {"backend": "torch"})
        ...     b = files_fingerprint([tmp], {"backend": "onnx"})
        ...     _ = (Path(tmp) / "config.json").write_text('{"dim": 8}')
        ...     c = files_fingerprint([tmp], {"backend": "torch"})
        >>> len(a), a == b, a == c
        (32, False, False)
    """
    listing: list[list[list[str]]] = []
    for folder in folders:
        files: list[list[str]] = []
        _list_files(os.fspath(folder), "", [], files)
        listing.append(files)
    ident = {"revision": _FILES_REVISION, "settings": settings, "files": listing}
    return hashlib.sha256(canonical_json(ident).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _list_files(folder: str, prefix: str, parents: list[tuple[int, int]], out: list[list[str]]) -> None:
    """Append ``[relative path, SHA-256]`` of every regular file under ``folder`` to ``out``, sorted by name at each
    level; ``parents``: the (device, inode) of the folders above, to refuse a folder linked into its own parent."""
    st = os.stat(folder)
    ident = (st.st_dev, st.st_ino)
    if ident in parents:
        raise OSError(f"{folder} is linked into one of its own parent folders")
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            _list_files(entry.path, f"{prefix}{entry.name}/", [*parents, ident], out)
        elif entry.is_file():
            out.append([prefix + entry.name, cached_sha256(entry.path)])
