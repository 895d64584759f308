"""Small persistence helpers shared by every saved object: atomic folders and versions."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import math
import os
import re
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kl_retrievers._checks import check_bool
from kl_retrievers._errors import ConcurrentSaveError, KLRetrieversError, NothingSavedError
from kl_retrievers._warn import warn

try:
    import fcntl as _fcntl

    fcntl: Any = _fcntl
except ImportError:  # pragma: no cover - Windows: no locks, so stale copies are never removed
    fcntl = None

logger = logging.getLogger(__name__)

#: Seconds :func:`lock_file` waits for a lock before it warns that the holder (its PID named) may be paused or stuck.
LOCK_WAIT_WARNING_S = 30.0


@functools.cache
def library_version() -> str:
    """The installed version of kl-retrievers (``0+unknown`` when run from a bare checkout).

    Read from the installed package's metadata once per process (``importlib.metadata``, imported here on
    first use: it costs about as much as the rest of ``import kl_retrievers``), then cached.
    """
    from importlib import metadata as importlib_metadata

    try:
        return importlib_metadata.version("kl-retrievers")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


_VERSION_PATTERN = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d*))?"
    r"(?:[-_.]?(?P<post>post|rev|r)[-_.]?(?P<post_n>\d*))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev_n>\d*))?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?",
    re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


def _version_key(text: str) -> tuple[Any, ...] | None:
    """A sort key for a PEP 440 version (``None`` when ``text`` is not one).

    Dev releases sort below pre-releases, which sort below the release, which sorts below
    its post-releases; trailing zeros and the ``+local`` part are ignored.  (``packaging``
    is not a dependency of kl-retrievers, hence this small parser.)

    Examples:
        >>> _version_key("0.1.0.dev3") < _version_key("0.1.0rc1") < _version_key("0.1.0") < _version_key("0.1.0.post1")
        True
        >>> _version_key("1.0") == _version_key("1.0.0+local"), _version_key("unknown")
        (True, None)
    """
    match = _VERSION_PATTERN.fullmatch(text.strip())
    if match is None:
        return None
    release = [int(piece) for piece in match["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    has_dev = match["dev_n"] is not None
    if match["pre"] is not None:
        pre = (_PRE_RANK[match["pre"].lower()], int(match["pre_n"] or 0))
    elif has_dev and match["post"] is None:
        pre = (-1, 0)  # 1.0.dev0 < 1.0a0
    else:
        pre = (3, 0)  # no pre-release: above any
    post = int(match["post_n"] or 0) if match["post"] is not None else -1
    dev = (0, int(match["dev_n"] or 0)) if has_dev else (1, 0)
    return (tuple(release), pre, post, dev)


def check_version(meta: dict[str, Any], *, what: str, format_version: int) -> None:
    """Warn when ``meta`` was written by a newer library; refuse an unknown format.

    Args:
        meta: A saved object's JSON config with ``library_version`` and ``format_version``.
        what: How to name the object in messages.
        format_version: The newest format this code reads.
    """
    saved_format = meta.get("format_version", 1)
    if not isinstance(saved_format, int) or saved_format > format_version:
        raise ValueError(
            f"{what} uses format_version {saved_format!r}; this kl-retrievers ({library_version()}) reads up to "
            f"{format_version}: upgrade kl-retrievers"
        )
    saved = str(meta.get("library_version", "0"))
    ours = library_version()
    saved_key, our_key = _version_key(saved), _version_key(ours)
    if saved_key is not None and our_key is not None and saved_key > our_key:  # an unparsable version: no warning
        warn(f"{what} was written by kl-retrievers {saved}, newer than this {ours}; it may not load correctly")


def read_jsonl_objects(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file of objects, skipping blank lines; errors name the file and line.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.jsonl"
        >>> _ = p.write_text('{"a": 1}\\n\\n{"a": 2}\\n')
        >>> read_jsonl_objects(p)
        [{'a': 1}, {'a': 2}]
    """
    with open(user_path(path), encoding="utf-8") as fh:
        return [parse_json_object(line, f"{path}, line {number}") for number, line in enumerate(fh, 1) if line.strip()]


def parse_json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a dict; errors name ``where`` (file and line or record).

    Examples:
        >>> parse_json_object('{"a": 1}', "x.jsonl, line 1")
        {'a': 1}
    """
    import json

    # a JSON array (a pretty-printed one opens with "[" alone) is a common mistake: say what is read instead
    array = (
        "; the file must be JSON Lines (one JSON object per line), not a JSON array: convert it, e.g. "
        "jq -c '.[]' FILE.json > FILE.jsonl"
        if line.lstrip().startswith("[")
        else ""
    )
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}){array}") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}{array}")
    return row


def row_id(row: dict[str, Any], position: int, where: str) -> str:
    """A JSONL row's id: ``_id`` or ``id`` (a non-empty string or an integer), else its record number.

    The one id rule of ``kl-retrievers encode`` / ``index`` and of the sharded reader
    (:mod:`kl_retrievers.sharded`); ``_id`` wins when present, even when it is null (refused then).
    A string id with leading or trailing whitespace (``"d1 "``) is refused, naming the record and
    the id, as :func:`kl_retrievers.datasets.load_beir` refuses it: qrels columns are read stripped,
    so such an id could never be judged, and stripping it could merge it with a ``"d1"`` elsewhere.

    Args:
        row: The parsed JSON object.
        position: The row's record number from 0 (its id when it has none).
        where: The file and line, for messages (``"corpus.jsonl, line 3"``).

    Raises:
        ValueError: A null, empty or non-string, non-integer id, or one with surrounding whitespace.

    Examples:
        >>> row_id({"_id": 7}, 0, "c.jsonl, line 1"), row_id({"text": "a"}, 4, "c.jsonl, line 6")
        ('7', '4')
        >>> row_id({"_id": None, "id": "x"}, 0, "c.jsonl, line 1")
        Traceback (most recent call last):
        ValueError: c.jsonl, line 1: '_id' must be a string or an integer; got null
        >>> row_id({"_id": "d1 "}, 1, "c.jsonl, line 2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: c.jsonl, line 2 (record 2): the id 'd1 ' has leading or trailing whitespace, ...
    """
    key = "_id" if "_id" in row else "id" if "id" in row else None
    if key is None:
        return str(position)
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        got = "null" if value is None else type(value).__name__
        raise ValueError(f"{where}: {key!r} must be a string or an integer; got {got}")
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{where}: {key!r} is empty")
    if isinstance(value, str) and value != value.strip():
        record = f"record {position + 1}"
        at = where if where.endswith(record) else f"{where} ({record})"
        raise ValueError(
            f"{at}: the id {value!r} has leading or trailing whitespace, which ids may not have (load_beir refuses "
            "it too: qrels columns are read stripped, so it could never be judged); remove the spaces"
        )
    return str(value)


def row_text(row: dict[str, Any], field: str, where: str) -> str:
    """A JSONL row's text: ``field``, or ``"auto"`` for title + text (errors name ``where``)."""
    if field == "auto":
        if "text" not in row:
            raise ValueError(f"{where}: no 'text' field (fields: {sorted(row)}); choose one with --field")
        title = row.get("title")
        if title is not None and not isinstance(title, str):
            raise ValueError(f"{where}: 'title' must be a string or null; got {type(title).__name__}")
        text = _string_field(row, "text", where).strip()
        title = (title or "").strip()
        return f"{title} {text}".strip() if title else text
    if field not in row:
        raise ValueError(f"{where}: no {field!r} field (fields: {sorted(row)})")
    return _string_field(row, field, where)


def _string_field(row: dict[str, Any], field: str, where: str) -> str:
    """``row[field]`` when it is a string; null or any other type is refused (never ``str()``-ed)."""
    value = row[field]
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise ValueError(f"{where}: {field!r} must be a string; got {got}")
    return value


def is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both already resolved).

    Examples:
        >>> is_within(Path("/a/b"), Path("/a")), is_within(Path("/a"), Path("/a/b"))
        (True, False)
    """
    return path == folder or folder in path.parents


def in_model_folder(file: Path, folder: Path, *, subfolders: bool = False, pinned: bool = False) -> bool:
    """Whether ``file`` (symbolic links followed) lies directly in the model folder ``folder`` (or, with
    ``subfolders``, below it), so that loading it reads nothing outside the folder; a Hugging Face cache snapshot's
    links to the cache's ``blobs`` folder are the exception (that is how a downloaded model's files lie).

    ``pinned``: ``file`` is one of the package's own files (in a bundled model's folder, which the package ships as
    it ships its code; a shipped graph is also checked against the SHA-256 its ``config.json`` records), so it may
    be a link anywhere: installers lay package files as links into their cache (uv's ``link-mode=symlink``, Bazel
    runfiles, ``cp -rs``). A user's folder is never pinned.

    Examples:
        >>> in_model_folder(Path("/nonexistent/enc/model.onnx"), Path("/elsewhere"), pinned=True)
        True
        >>> in_model_folder(Path("/nonexistent/enc/model.onnx"), Path("/nonexistent/enc"))
        True
        >>> in_model_folder(Path("/nonexistent/enc/data/w.bin"), Path("/nonexistent/enc"))
        False
        >>> in_model_folder(Path("/nonexistent/enc/data/w.bin"), Path("/nonexistent/enc"), subfolders=True)
        True
    """
    if pinned:
        return True
    target, root = file.resolve(), folder.resolve()
    if target.parent == root or (subfolders and target != root and is_within(target, root)):
        return True
    return root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"


def some_names(names: list[str], shown: int = 5) -> str:
    """Up to ``shown`` names, and how many more there are (for messages).

    Examples:
        >>> some_names(["a", "b", "c"], shown=2)
        'a, b and 1 more'
    """
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def user_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded, as a shell would (``"~/st"`` is ``$HOME/st``).

    Unlike :meth:`pathlib.Path.expanduser` it never raises: where the home folder is unknown (``HOME`` unset
    and no password-database entry) the path is kept as given.

    Examples:
        >>> import os
        >>> user_path("~/st") == Path(os.path.expanduser("~")) / "st", user_path("a/~b")
        (True, PosixPath('a/~b'))
    """
    return Path(os.path.expanduser(os.fspath(path)))


def _umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux's ``/proc/self/status``).

    Elsewhere it is read by setting and restoring it (``os.umask``), which briefly sets it to 0 for
    every thread of the process.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _normalise_permissions(folder: Path, replaced: Path | None = None) -> None:
    """Give a written folder and its entries their modes (some writers create files 0600).

    An entry that replaces one of the same kind (a folder or a regular file) and the same owner at the same
    place in ``replaced`` (the folder the save replaces) keeps that one's permission bits, as
    :func:`atomic_file` keeps a replaced file's: a store folder its owner made 0700 stays so when it is saved
    again; another owner's entry of the same kind caps the umask-based mode at its bits (root re-saving a user's
    0700 store keeps it 0700, never widens it). Run as root, entries that replace another owner's are given to that
    owner (its uid and gid), and so are new ones below a replaced folder of another owner, so that root re-saving a
    user's store leaves it the user's (best effort: a refused ``chown`` leaves root's). Any other entry gets the
    usual umask-based mode (``0o777 & ~umask`` for a folder, ``0o666 & ~umask`` for a file). A folder keeps the
    setgid bit ``mkdir`` gave it in a setgid (group-shared) parent, so its new entries keep taking the group as they
    would in a folder made by hand. Symbolic links are skipped: ``chmod`` would follow them and change
    files outside ``folder``.

    Args:
        folder: The written folder.
        replaced: The folder it replaces; by default, for :func:`atomic_dir`'s temporary copy
            ``.NAME.tmp-TOKEN``, ``NAME`` beside it.
    """
    if replaced is None:
        match = LEFTOVER_NAME.fullmatch(folder.name)
        replaced = folder.parent / match["name"] if match is not None and match["kind"] == "tmp" else None
    if replaced is not None and replaced.is_symlink():
        replaced = None  # a link the save replaces (not followed): the folder it points to gives no modes
    umask = _umask()
    as_root = getattr(os, "geteuid", lambda: None)() == 0
    owner: tuple[int, int] | None = None  # root re-saving another owner's folder: the owner of new entries
    for path in (folder, *folder.rglob("*")):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not stat.S_ISREG(st.st_mode):
            continue  # a symbolic link (or something else no chmod should touch)
        mode = (0o777 if is_dir else 0o666) & ~umask
        if replaced is not None:
            try:
                old = os.lstat(replaced / path.relative_to(folder))
            except (OSError, ValueError):
                old = None
            same_kind = old is not None and (stat.S_ISDIR(old.st_mode) if is_dir else stat.S_ISREG(old.st_mode))
            if as_root and path == folder and old is not None and same_kind and old.st_uid != st.st_uid:
                owner = (old.st_uid, old.st_gid)
            another = old is not None and same_kind and old.st_uid != st.st_uid
            give = (old.st_uid, old.st_gid) if old is not None and another else owner if old is None else None
            if as_root and give is not None and give != (st.st_uid, st.st_gid):
                try:
                    os.chown(path, *give, follow_symlinks=False)  # the owner keeps their store
                    st = os.lstat(path)
                except OSError:  # EPERM (a file system that refuses it): root's it stays, the mode capped below
                    pass
            if old is not None and same_kind and old.st_uid == st.st_uid:
                mode = stat.S_IMODE(old.st_mode) & (0o3777 if is_dir else 0o777)  # never set-user-id
            elif old is not None and same_kind:  # another owner's (root re-saving a user's 0700 store): never wider
                mode &= stat.S_IMODE(old.st_mode)
        if is_dir:
            mode |= stat.S_IMODE(st.st_mode) & stat.S_ISGID  # inherited from a setgid parent, as mkdir does
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)


def _sibling(final: Path, kind: str, token: str) -> Path:
    """``.NAME.tmp-TOKEN`` / ``.NAME.old-TOKEN`` beside ``final``."""
    return final.parent / f".{final.name}.{kind}-{token}"


#: The name :func:`atomic_dir` / :func:`atomic_file` give their temporary and previous copies: ``.NAME.KIND-HEX``.
LEFTOVER_NAME = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]+")


def _siblings(final: Path, kinds: tuple[str, ...]) -> list[Path]:
    """The temporary / previous copies that :func:`atomic_dir` or :func:`atomic_file` made for ``final``.

    Only names of exactly the form ``.NAME.KIND-HEX`` (:data:`LEFTOVER_NAME`) count, so another
    object's copies (another ``NAME`` that merely starts the same way) are never touched.
    """
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return []
    matches = ((p, LEFTOVER_NAME.fullmatch(p.name)) for p in entries)
    return [p for p, m in matches if m is not None and m["name"] == final.name and m["kind"] in kinds]


def _lock_fd(path: Path, *, wait: bool) -> int | None:
    """Open ``path`` (a file or a folder) and take an exclusive ``flock`` on it.

    The lock travels with the inode through renames and is released by the kernel when the
    process ends, even by ``kill -9``: a locked copy belongs to a save still running.

    Returns:
        The open descriptor holding the lock, or ``None`` when the lock is held elsewhere
        (``wait=False``), the path vanished, or the platform has no ``fcntl``.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    except BaseException:  # interrupted while waiting (Ctrl-C): the descriptor is not kept
        os.close(fd)
        raise
    return fd


def _unlock_fd(fd: int | None) -> None:
    """Release the lock taken by :func:`_lock_fd` and close its descriptor.

    Unlocked explicitly before the close: a child forked while the lock was held shares the open file
    description, and closing only this process's descriptor would leave the lock held until the child exits.
    """
    if fd is not None:
        if fcntl is not None:  # (without fcntl no lock was taken)
            with contextlib.suppress(OSError):  # nothing to release
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def lock_file(path: str | os.PathLike[str], *, purpose: str) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` while the body runs: one process at a time does ``purpose``.

    The file is created (its folder must exist) and removed when the lock is released. The lock is an
    ``flock`` (:func:`_lock_fd`), which the kernel releases when its process ends, even by ``kill -9``: a lock
    file left by a killed process is taken at once, never waited for. The holder writes its PID into the file. A
    process that finds the lock held logs at INFO that it waits, then waits (polling) until the holder releases it;
    after :data:`LOCK_WAIT_WARNING_S` it logs one WARNING naming the holder's PID, which may be paused (Ctrl-Z, a
    debugger) or stuck. Ctrl-C stops the wait. Where no lock can be taken (no ``fcntl``,
    as on Windows; a file system without ``flock``; a folder where the file cannot be created) the body runs
    unlocked, logged at DEBUG.

    Yields:
        Whether another process held the lock first and this one waited for it (what ``purpose`` names may have
        been done meanwhile).

    Examples:
        >>> import tempfile, pathlib
        >>> lock = pathlib.Path(tempfile.mkdtemp()) / ".entry.lock"
        >>> with lock_file(lock, purpose="writing entry") as waited:
        ...     waited
        False
        >>> lock.exists()
        False
    """
    file = Path(path)
    fd, waited = (None, False) if fcntl is None else _take_lock_file(file, purpose)
    if fcntl is None:
        logger.debug("no flock on this platform: %s runs unlocked", purpose)
    try:
        yield waited
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):  # before unlocking: a process waiting on this inode then retries
                file.unlink()
            _unlock_fd(fd)


def _take_lock_file(file: Path, purpose: str) -> tuple[int | None, bool]:
    """:func:`lock_file`'s lock: the descriptor holding it (``None``: none could be taken) and whether it waited.

    A holder removes the file before it unlocks it, so a lock taken on an inode no longer at ``file`` is
    dropped, and the new file locked instead. The lock is polled (``LOCK_NB``, pauses from :func:`_lock_waits`)
    rather than waited for in the kernel, so that a long wait is reported.
    """
    waits = _lock_waits(file, purpose)
    waited = False
    for _ in range(100):
        try:
            fd = os.open(file, os.O_RDONLY | os.O_CREAT, 0o666)
        except OSError as exc:
            logger.debug("cannot create the lock file %s (%s): %s runs unlocked", file, exc, purpose)
            return None, waited
        try:
            while not _try_flock(fd):  # another process (or another open of the file) holds it
                waited = True
                next(waits)
        except OSError as exc:
            os.close(fd)
            logger.debug("cannot lock %s (%s; a file system without flock?): %s runs unlocked", file, exc, purpose)
            return None, waited
        except BaseException:  # interrupted while waiting (Ctrl-C): the descriptor is not kept
            os.close(fd)
            raise
        if _locked_inode_is_at(file, fd):
            with contextlib.suppress(OSError):  # for the warning of those waiting (best effort)
                _write_holder_pid(file)
            return fd, waited
        _unlock_fd(fd)
    logger.debug("could not lock %s (removed and created again by others each time): %s runs unlocked", file, purpose)
    return None, waited


def _try_flock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting: whether it was free (``OSError``: no flock here)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_waits(file: Path, purpose: str) -> Iterator[None]:
    """The pauses of a wait for the lock file ``file``, growing from 0.05 s to 0.5 s, one per ``next``.

    Logs at INFO that the wait starts (at the first ``next``), and one WARNING once it has lasted
    :data:`LOCK_WAIT_WARNING_S`, naming the holder's PID (read from the file).
    """
    logger.info("waiting for %s: another process or thread holds %s", purpose, file)
    warn_at: float | None = time.monotonic() + LOCK_WAIT_WARNING_S
    pause = 0.05
    while True:
        if warn_at is not None and time.monotonic() >= warn_at:
            warn_at = None
            logger.warning(
                "still waiting for %s after %g s: %s holds the lock %s and may be paused (Ctrl-Z, a debugger) "
                "or stuck. Resume or end it: the lock is released when that process ends (do not delete the "
                "file while it runs)",
                purpose,
                LOCK_WAIT_WARNING_S,
                _lock_holder(file),
                file,
            )
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
        yield


def _write_holder_pid(file: Path) -> None:
    """Write this process's PID into the lock file ``file`` it holds (what :func:`_lock_holder` reads)."""
    fd = os.open(file, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _lock_holder(file: Path) -> str:
    """Who holds the lock file ``file``, from the PID its holder wrote into it (for a log message)."""
    try:
        pid = int(file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return "another process (PID unknown)"
    return f"another thread of this process (PID {pid})" if pid == os.getpid() else f"process {pid}"


def fsync_file(path: Path) -> None:
    """Make a written file's contents durable (flushed to disk).

    The file is opened for writing, as Windows' ``os.fsync`` needs; it must exist.
    """
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (new files, renames) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _locked_tmp(final: Path, *, folder: bool) -> tuple[Path, int | None]:
    """Create ``.NAME.tmp-TOKEN`` beside ``final`` and lock it before anyone may take it for stale.

    A :func:`clean_stale` in another process may lock and delete the new entry between its
    creation and our lock; then the locked inode is no longer at the path, and we try again.
    """
    for _ in range(20):
        tmp = _sibling(final, "tmp", uuid.uuid4().hex[:8])
        if folder:
            tmp.mkdir()
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        fd = _lock_fd(tmp, wait=True)
        if fd is None:
            if fcntl is None:
                return tmp, None
            continue
        if _locked_inode_is_at(tmp, fd):
            return tmp, fd
        _unlock_fd(fd)
    raise OSError(f"could not create a temporary copy beside {final}")


def _locked_inode_is_at(path: Path, fd: int) -> bool:
    """Whether the file locked through ``fd`` is still the one at ``path`` (another process may have removed it,
    or removed it and created another, between our open and our lock)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _tmp_beside(final: Path, *, folder: bool) -> tuple[Path, int | None]:
    """:func:`_locked_tmp`; a parent that cannot be written is named as the cause, with what to do instead.

    A save replaces its target through a temporary copy beside it, so it needs to write the target's
    parent even when the target itself is writable (a volume mounted at the store's path).

    Raises:
        PermissionError: The parent cannot be written (also on a read-only file system); the message names
            the target, the parent and, for a folder that exists, a sub-folder to save into instead.
    """
    try:
        return _locked_tmp(final, folder=folder)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        what = "folder" if folder else "file"
        advice = (
            f"save into a sub-folder of it instead (e.g. {final / 'store'}), as for a volume mounted at {final}, "
            f"or make {final.parent} writable"
            if folder and final.is_dir()
            else f"make {final.parent} writable, or save elsewhere"
        )
        error = PermissionError(
            f"cannot save {final}: a save replaces the {what} as a whole through a temporary copy beside it in "
            f"{final.parent}, which this process cannot write ({exc.strerror}); {advice}"
        )
        error.errno = exc.errno  # str(error) stays the message (no filename set)
        raise error from None


def _mount_point_error(final: Path, exc: BaseException) -> OSError | None:
    """The error to raise when a folder swap failed because ``final`` is a mount point (``EBUSY``), else ``None``."""
    if not isinstance(exc, OSError) or exc.errno != errno.EBUSY or not os.path.ismount(final):
        return None
    error = OSError(
        f"cannot save {final}: it is a mount point, which cannot be replaced, and a save replaces the folder as a "
        f"whole (through a temporary copy beside it); save into a sub-folder of it instead (e.g. {final / 'store'})"
    )
    error.errno = exc.errno
    return error


def _naming_target(exc: BaseException, final: Path, tmp: Path) -> OSError | None:
    """An ``OSError`` like ``exc`` (same class and errno) whose message names ``final``, the path being saved.

    A failed write inside a save (a full disk: ``[Errno 28] No space left on device``) would otherwise reach the
    user without saying what was being saved. The new error keeps ``exc``'s file name (``.filename``, with
    ``.strerror`` its message) where it has one, a path in ``tmp`` (the save's temporary copy) given as the path
    it would have had in ``final``; a message of a nested save naming a path in ``tmp`` (``cannot save
    /data/.hybrid.tmp-1a2b/kl: ...``) names it in ``final`` instead (``cannot save /data/hybrid/kl: ...``).

    ``None`` (``exc`` stands) when it is no built-in ``OSError`` class (a library's own error keeps its class and
    message), has no errno, concerns a file outside ``tmp`` and ``final`` (a source the save failed to read keeps
    its message and file name), or already says what was being saved.

    Examples:
        >>> error = _naming_target(OSError(errno.ENOSPC, "No space left on device"), Path("/data/store"), Path("/t"))
        >>> error.errno == errno.ENOSPC, str(error)  # doctest: +ELLIPSIS
        (True, 'cannot save /data/store: No space left on device; free some space there and save again; ...')
        >>> _naming_target(FileNotFoundError(errno.ENOENT, "No such file", "/src/a"), Path("/data/store"), Path("/t"))
    """
    if not isinstance(exc, OSError) or type(exc).__module__ != "builtins" or exc.errno is None:
        return None
    tmp_text, final_text = os.path.abspath(tmp), os.path.abspath(final)

    def in_final(name: Any) -> str | None:
        """``name`` (a file name of ``exc``) as a path in ``final`` (where it lies in ``tmp``); ``None``: elsewhere."""
        if name is None:
            return None
        path = os.path.abspath(os.fsdecode(name))
        if is_within(Path(path), Path(tmp_text)):
            return final_text + path[len(tmp_text) :]
        return path if is_within(Path(path), Path(final_text)) else None

    filename, filename2 = in_final(exc.filename), in_final(exc.filename2)
    if exc.filename is not None and filename is None:
        return None  # a file elsewhere (a source the body reads): its own error says what failed
    message = exc.strerror if exc.strerror is not None else str(exc)
    if message.startswith("cannot save ") or final_text in message:  # a nested save's, safetensors_write_error's
        if tmp_text not in message and filename == exc.filename:
            return None
        reason = message.replace(tmp_text, final_text)
    else:
        full = exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))  # disk, size, quota
        advice = "free some space there and save again; nothing was replaced" if full else "nothing was replaced"
        reason = f"cannot save {final}: {message.replace(tmp_text, final_text)}; {advice}"
    if filename is None:
        error = type(exc)(reason)  # a PermissionError stays one
        error.errno = exc.errno  # str(error) stays the message
        return error
    return type(exc)(exc.errno, reason, filename, None, filename2)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):  # a write-protected folder (a read-only store, 0555): make ours writable, retry
            _make_writable(path)
            shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()


def _make_writable(folder: Path) -> None:
    """Add ``u+w`` to ``folder`` and the folders below it that this process owns (links are not followed)."""
    uid = getattr(os, "getuid", lambda: None)()
    for here, dirs, _files in os.walk(folder):  # top down: each folder is writable before its entries are listed
        with contextlib.suppress(OSError):
            st = os.lstat(here)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & stat.S_IWUSR:
                os.chmod(here, stat.S_IMODE(st.st_mode) | stat.S_IWUSR | stat.S_IXUSR)
        dirs[:] = [name for name in dirs if not os.path.islink(os.path.join(here, name))]


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
        ``False`` where the platform, C library or file system cannot do it (the caller
        then falls back to two renames).
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (AttributeError, OSError):
            _renameat2 = False
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _renameat2 = fn
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


_TAKEN = (errno.ENOTEMPTY, errno.EEXIST)  # a rename onto a folder that another writer just put there
_SWAP_ATTEMPTS = 50


def _swap_into_place(tmp: Path, final: Path, old: Path) -> None:
    """Put the finished folder ``tmp`` at ``final``, replacing what is there.

    Where the OS can exchange two folders atomically there is no moment without a complete
    copy at ``final``; a kill before ``tmp`` (now the previous copy) is removed leaves a stale
    ``.NAME.tmp-*`` that the next save deletes.  Elsewhere the previous copy is renamed to
    ``old`` (locked while this runs) and ``tmp`` into place; a kill between the two renames
    leaves ``final`` missing and :func:`recover_dir` (called by the loaders) restores ``old``.

    Another process saving the same ``final`` at the same time may put its copy there (or
    move it aside) between any two of these steps; then the step is retried, so the last
    writer wins, as when ``final`` already existed.
    """
    for _ in range(_SWAP_ATTEMPTS):
        if not os.path.lexists(final):  # a dangling link at `final` is exchanged (and removed) below
            try:
                os.replace(tmp, final)
                return
            except OSError as exc:
                if exc.errno not in _TAKEN:
                    raise
                continue  # another writer's copy appeared meanwhile: replace it below
        try:
            if _exchange(tmp, final):
                _remove_tree(tmp)  # now the previous copy
                return
        except FileNotFoundError:
            continue  # another writer moved `final` aside meanwhile
        if _replace_aside(tmp, final, old):
            return
    raise OSError(f"could not put {tmp} in place of {final}: other saves kept replacing it")


def _replace_aside(tmp: Path, final: Path, old: Path) -> bool:
    """The fallback swap: rename ``final`` to ``old``, ``tmp`` to ``final``, remove ``old``.

    Returns:
        ``False`` when another writer got in the way (``final`` vanished, or its copy landed
        between the two renames); the caller then tries again.
    """
    guard = _lock_fd(final, wait=False)  # follows the inode to `old`: a loader will not restore it under us
    try:
        try:
            os.replace(final, old)
        except FileNotFoundError:
            return False
        try:
            os.replace(tmp, final)
        except BaseException as exc:
            if isinstance(exc, OSError) and exc.errno in _TAKEN and final.exists():
                _remove_tree(old)  # `final` holds the other writer's complete copy
                return False
            if old.exists() and not final.exists():
                os.replace(old, final)
            raise
        _remove_tree(old)
        return True
    finally:
        _unlock_fd(guard)


def clean_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the leftovers of interrupted saves of ``target``; return what was removed.

    Removes ``.NAME.tmp-*`` and ``.NAME.old-*`` siblings of ``target`` (``NAME`` its exact
    name), but only while ``target`` itself exists as a regular file or a folder (so a ``.old``
    copy that may be the only one left is kept, and nothing is removed beside a device, a pipe,
    a socket or a symbolic link, which no save wrote) and only those no running save holds
    locked.  Without ``fcntl`` (no way to tell a live save from a dead one) nothing is removed.
    What cannot be removed (another user's copies in a shared folder) is skipped silently.
    """
    final = user_path(target)
    if fcntl is None or not _is_file_or_folder(final):
        return []
    removed = [path for path in _siblings(final, ("tmp", "old")) if remove_unless_locked(path)]
    if removed:
        logger.info("removed %d leftover(s) of interrupted saves of %s", len(removed), final)
    return removed


def _is_file_or_folder(path: Path) -> bool:
    """Whether ``path`` itself (a symbolic link not followed) is a regular file or a folder."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def remove_unless_locked(path: Path) -> bool:
    """Remove ``path``, a copy :func:`atomic_dir` / :func:`atomic_file` left, unless a running save holds it.

    A running save keeps its copy locked (``flock``; the kernel drops the lock when the process dies,
    even by ``kill -9``), so a copy that can be locked belongs to a save that ended. Without ``fcntl``
    there is no telling, and the copy is removed: the caller decides by its age. A copy this process may
    not remove (another user's, in a folder shared between users) is left as it is, without a warning
    (every later save would repeat it): its owner's next save removes it.

    Returns:
        Whether it was removed (``False`` also when it could not be, wholly or in part).
    """
    fd = _lock_fd(path, wait=False)
    if fd is None and fcntl is not None:
        return False  # a save in progress holds it, it just vanished, or it cannot be opened (another user's)
    try:
        _remove_tree(path)
    finally:
        _unlock_fd(fd)
    if os.path.lexists(path):
        logger.debug("could not remove %s (left by an interrupted save; another user's?): skipped", path)
        return False
    return True


def recover_dir(target: str | os.PathLike[str], *, required: str | None = None) -> bool:
    """Restore ``target`` from its ``.NAME.old-*`` copy when a save was killed mid-swap.

    Only acts when ``target`` is missing.  The newest ``.old`` copy that no running save
    holds (and that contains ``required``, when given) is renamed back into place, with a
    warning.

    Returns:
        Whether a copy was restored.

    Raises:
        OSError: The copy cannot be put back because the place is read-only (the message names the copy).
    """
    final = user_path(target)
    if final.exists():
        return False
    if final.is_symlink():  # a dangling link: atomic_dir saves (and leaves copies) where it points
        final = Path(os.path.realpath(final))
    candidates = []
    for path in _siblings(final, ("old",)):
        if not path.is_dir() or (required is not None and not (path / required).is_file()):
            continue
        fd = _lock_fd(path, wait=False)
        if fd is None and fcntl is not None:
            continue  # a save is between its two renames: it is about to put a new copy in place
        _unlock_fd(fd)
        candidates.append((path.stat().st_mtime_ns, path))
    if not candidates:
        return False
    source = max(candidates)[1]
    try:
        os.replace(source, final)
    except OSError as exc:
        if final.exists():  # a save (or another loader) put a copy there first
            return False
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            place = "is on a read-only file system" if exc.errno == errno.EROFS else "cannot be written here"
            error = type(exc)(
                f"{final} is missing (a save was interrupted mid-swap); a previous copy exists at {source}, but the "
                f"folder cannot be restored because {final.parent} {place} ({exc.strerror}): make it writable "
                f"and load again (the copy is put back then), or copy {source} elsewhere and load the copy"
            )
            error.errno = exc.errno
            raise error from exc
        raise
    fsync_dir(final.parent)
    logger.warning("%s was missing after an interrupted save; restored the previous copy from %s", final, source.name)
    return True


_T = TypeVar("_T")
#: How many times :func:`load_unchanged` reads a folder that other saves keep replacing.
LOAD_ATTEMPTS = 4


def folder_identity(folder: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """What changes when :func:`atomic_dir` puts a new copy at ``folder``: device, inode, mtime and ctime.

    Every save swaps in a new folder (another inode, written just now), so two equal identities
    mean no save replaced the folder in between (mtime and ctime also tell apart a new folder
    that reuses a deleted one's inode).  ``None`` when nothing is at ``folder``.
    """
    try:
        st = os.stat(user_path(folder))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def load_unchanged(folder: str | os.PathLike[str], load: Callable[[], _T], *, attempts: int = LOAD_ATTEMPTS) -> _T:
    """Run ``load`` (which reads ``folder`` file by file) again when a save replaced the folder meanwhile.

    A loader reads the files of a saved folder one by one, by path; a save of the same path in
    another thread or process (:func:`atomic_dir`) may swap in its new copy between two reads,
    and the loader then sees files of two saves: a checksum or count mismatch, a missing file, or
    (without checksums) a silently mixed object.  This compares :func:`folder_identity` before
    and after ``load`` and, when the folder changed, loads again: whether ``load`` raised or
    returned.  When the folder did not change, an error is raised at once (a genuinely damaged
    folder keeps its message and costs one read), and a result is returned.

    Use it around a whole loader, e.g. ``load_unchanged(path, lambda: read_everything(path))``;
    nested loaders (a store inside a saved folder) may use it too.

    Args:
        folder: The saved folder (the path that saves replace).
        load: Reads it and returns the loaded object.
        attempts: Reads at most (>= 1).

    Raises:
        ConcurrentSaveError: Saves replaced the folder during every one of ``attempts`` reads (an
            ``OSError``, chained to the last read's error, if it failed): load again when the saves pause.
        Exception: Whatever ``load`` raised when the folder did not change.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "saved"
        >>> with atomic_dir(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hello")
        >>> load_unchanged(out, lambda: (out / "a.txt").read_text())
        'hello'
    """
    last_error: Exception | None = None
    for attempt in range(1, max(1, attempts) + 1):
        before = folder_identity(folder)
        try:
            result = load()
        except Exception as exc:
            if folder_identity(folder) == before:
                raise
            last_error = exc
            logger.info(
                "%s was replaced by a save while loading (attempt %d failed: %s); reading it again",
                folder,
                attempt,
                exc,
            )
            continue
        if folder_identity(folder) == before:
            return result
        last_error = None
        logger.info("%s was replaced by a save while loading (attempt %d); reading it again", folder, attempt)
    raise ConcurrentSaveError(
        f"{folder} was replaced by other saves during each of {max(1, attempts)} attempts to load it, so no "
        "attempt read one complete copy; load it again when the saves pause"
    ) from last_error


def make_dirs(folder: str | os.PathLike[str], *, saving: Path | None = None) -> list[Path]:
    """Create ``folder`` and its missing parents (like ``mkdir -p``), each made durable in its own parent.

    The missing folders are made outermost first, and each one's parent is synced (``fsync``) once it
    holds the new entry, so a crash after a save cannot lose the path to what was saved inside. A folder
    that another process creates meanwhile is synced into its parent too (that process may not have done
    it). Folders that already existed cost nothing.

    Args:
        folder: The folder to create; it may exist already.
        saving: What is saved into ``folder``, for the error message (``folder`` is then its parent).

    Returns:
        The folders this call created, outermost first.

    Raises:
        NotADirectoryError: ``folder`` or one of its parents exists and is not a folder (the message names it).
    """
    path = user_path(folder)
    missing: list[Path] = []
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    created: list[Path] = []
    try:
        for candidate in reversed(missing):  # outermost first: each one's parent exists when it is made
            try:
                candidate.mkdir()
                created.append(candidate)
            except FileExistsError:
                if not candidate.is_dir():
                    raise
                # made meanwhile by another process, which may not have synced its parent: sync it here
            fsync_dir(candidate.parent)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (path, *path.parents) if os.path.lexists(p) and not p.is_dir()), None)
        if blocking is None:
            raise
        doing = f"cannot create the folder {path}" if saving is None else f"cannot save {saving}"
        where = "" if saving is None else " (the parent of what is saved)"
        what = "a dangling symbolic link" if blocking.is_symlink() and not blocking.exists() else "a file"
        raise NotADirectoryError(f"{doing}: {blocking} is {what}, but it must be a folder{where}") from None
    return created


def _make_parent(final: Path) -> None:
    """Create ``final``'s missing parent folders with :func:`make_dirs`; an error names the ancestor that is a file."""
    make_dirs(final.parent, saving=final)


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, follow_link: bool = False) -> Iterator[Path]:
    """Write a folder atomically: yield a temporary sibling, then swap it into place.

    If the body raises, the temporary folder is removed and ``target`` is untouched.  A
    process killed at any point leaves a complete copy (the previous or the new one) at
    ``target`` or, on platforms without an atomic folder exchange, in a ``.NAME.old-*``
    sibling that :func:`recover_dir` restores.  Leftovers of earlier interrupted saves of
    this ``target`` are removed after each successful one, and so is the temporary folder of
    a save whose final swap failed.

    ``target`` is made absolute first (a leading ``~`` expanded), so ``"."`` (the working folder) is saved
    as the folder it names, and this process then works in the new copy; a folder that holds the working
    folder is refused (``ValueError``). A symbolic link at ``target`` is replaced by the new folder (the folder
    it points to is left as it is), unless ``follow_link``: then (``current -> store-v3``) the folder it points
    to is replaced atomically and the link is kept; only saves to a folder the user names pass it, never one
    into a cache, where another user could plant a link to a folder of yours. The new folder keeps the
    permission bits of the folder it replaces (and each of its files those of the file of the same name
    there); a new one gets the umask's, and the setgid bit ``mkdir`` gives it in a setgid parent.

    Raises:
        PermissionError: The target's parent cannot be written (the save writes its temporary copy there).
        OSError: The target is a mount point (it cannot be replaced; the message says to save into a sub-folder).
            A write that fails in the body or the swap (a full disk) is raised as an ``OSError`` of the same class
            and errno whose message names the target (the original chained; its file name kept, as in the target,
            not the temporary copy); an error about a file elsewhere (a source the body reads) is raised as it is.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "saved"
        >>> with atomic_dir(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hello")
        >>> (out / "a.txt").read_text()
        'hello'
    """
    final, is_cwd = _absolute_target(target, follow_link=follow_link)
    if final.exists() and not final.is_dir() and not final.is_symlink():  # a link not followed is replaced
        raise NotADirectoryError(f"{final} exists and is not a folder")
    _make_parent(final)
    tmp, guard = _tmp_beside(final, folder=True)  # the lock marks it as in use for clean_stale elsewhere
    try:
        try:
            yield tmp
            _normalise_permissions(tmp)  # the modes of what it replaces, if anything
            fsync_dir(tmp)
            _swap_into_place(tmp, final, _sibling(final, "old", tmp.name.rsplit("-", 1)[1]))
        except BaseException as exc:
            _remove_tree(tmp)  # the body or the swap failed: no hidden copy is left behind
            mount_point = _mount_point_error(final, exc)
            if mount_point is not None:
                raise mount_point from None
            named = _naming_target(exc, final, tmp)
            if named is not None:  # a full disk: say what was being saved
                raise named from exc
            raise
        fsync_dir(final.parent)
        if is_cwd:  # the previous copy, this process's working folder, is gone: work in the new one
            os.chdir(final)
    finally:
        _unlock_fd(guard)
    clean_stale(final)


def _absolute_target(target: str | os.PathLike[str], *, follow_link: bool = False) -> tuple[Path, bool]:
    """``target`` as an absolute path (``"."`` becomes a named folder), and whether it is the working folder.

    A leading ``~`` is expanded (:func:`user_path`) and the path made absolute lexically
    (``os.path.abspath``); with ``follow_link`` a symbolic link at ``target`` is then resolved
    (``os.path.realpath``), so the save replaces the folder it points to and the link stays; otherwise the
    link itself is replaced. The OS refuses to rename ``"."`` (``EBUSY``), which the absolute name avoids;
    :func:`atomic_dir` then moves this process into the new copy.

    Raises:
        ValueError: ``target`` holds the current working folder (the save would delete it).

    Examples:
        >>> _absolute_target("/a/b/../c")
        (PosixPath('/a/c'), False)
    """
    final = Path(os.path.abspath(user_path(target)))
    if follow_link and final.is_symlink():
        check_dangling_link(final)
        final = Path(os.path.realpath(final))
    try:
        cwd = Path(os.getcwd())
    except OSError:  # the working folder was deleted: nothing to protect
        return final, False
    # the working folder's name has its links resolved: compare it with the target's real location (its parent
    # resolved; a link at the target itself was resolved above, or is replaced, not followed)
    real = Path(os.path.realpath(final.parent)) / final.name
    if cwd != real and is_within(cwd, real):
        raise ValueError(
            f"cannot save into {os.fspath(target)!r} ({final}): it holds the current working folder {cwd}, and a "
            "save replaces its target folder as a whole; save into another folder"
        )
    return final, cwd == real


def check_dangling_link(path: Path) -> None:
    """Refuse a dangling symbolic link at ``path`` that a save following it could not save through.

    A save that follows a link (:func:`atomic_dir`'s ``follow_link``) writes a dangling link's target as a
    new folder, as it would a new path; it never creates missing folders along the link, nor saves into a loop.

    Raises:
        ValueError: ``path`` is a dangling link whose target's folder does not exist, or a link loop.
    """
    if not path.is_symlink() or path.exists():
        return
    real = Path(os.path.realpath(path))
    if real.is_symlink():  # realpath stops in a loop
        raise ValueError(f"cannot save into {path}: it is a symbolic link loop; remove it or point it at a folder")
    if not real.parent.is_dir():
        raise ValueError(
            f"cannot save into {path}: it is a dangling symbolic link to {real}, whose folder {real.parent} does "
            "not exist; create that folder, or point the link elsewhere"
        )


def check_replace_target(
    target: str | os.PathLike[str],
    *,
    is_ours: Callable[[Path], bool],
    what: str,
    overwrite: bool = False,
    flag: str = "overwrite=True",
    follow_link: bool = False,
) -> Path:
    """Refuse to replace a folder that holds something else than an earlier save of the same kind.

    A save that replaces its target folder as a whole (:func:`atomic_dir`) may go to a new path, an
    empty folder, or a folder ``is_ours`` accepts (an earlier save); anything else (a user's
    folder, a saved store) needs ``overwrite``.

    Args:
        target: The folder about to be replaced.
        is_ours: Whether an existing non-empty folder is an earlier save that may be replaced.
        what: What an earlier save is, for the message (e.g. ``"a saved GaussianEncoder"``).
        overwrite: Replace any folder.
        flag: How to ask for ``overwrite``, for the message.
        follow_link: The save follows a symbolic link at ``target`` (:func:`atomic_dir`'s ``follow_link``):
            what the link points to is judged, and a dangling one is a new path (:func:`check_dangling_link`).
            Otherwise the link itself is what the save replaces, so a link (dangling or not) is replaced only
            with ``overwrite``, whatever it points to.

    Returns:
        The folder the save replaces, for :func:`atomic_dir` (without ``follow_link``): ``target`` (``~``
        expanded), or with ``follow_link`` the folder a link there points to, resolved once, here: a link
        re-pointed after this check is then replaced as a link, never followed to a folder that was not judged.

    Raises:
        ValueError: ``target`` is a non-empty folder that ``is_ours`` refuses (the message names it, a few
            of its entries, and ``flag``), or it exists and is not a folder, or it is a symbolic link that the
            save would replace (not following it), a dangling link it cannot save through, or a link followed
            to a folder that holds the link itself (``cur -> .``: the save would delete it with the rest).
        NotADirectoryError: With ``overwrite``, a link followed points to a file (the message names the link;
            without ``overwrite`` it is the ``ValueError`` of a file at ``target``).
        TypeError: ``overwrite`` is not a bool (the string ``"no"`` is true).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_replace_target(folder / "new", is_ours=lambda p: False, what="a model") == folder / "new"
        True
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> check_replace_target(folder, is_ours=lambda p: False, what="a model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: cannot save into ...: the folder is not empty (notes.txt) and is not a model; ...
    """
    check_bool(overwrite, "overwrite")  # "no" would replace the folder
    path = user_path(target)
    shown = path  # the path messages name (the link, where one is followed)
    if follow_link and path.is_symlink():  # resolved once: the folder judged is the folder saved
        check_dangling_link(path)
        real = Path(os.path.realpath(path))
        if real.exists() and not real.is_dir():  # the type the save itself would raise, the link named
            raise (NotADirectoryError if overwrite else ValueError)(
                f"cannot save into {path} (a symbolic link to {real}): it exists and is not a folder; a save "
                "through a link replaces the folder it points to. Point the link at a folder, or remove it"
            )
        if is_within(Path(os.path.realpath(path.parent)), real):
            raise ValueError(
                f"cannot save into {path}: it is a symbolic link to {real}, which holds the link itself, and a save "
                "replaces the folder it points to as a whole (the link with it); point the link at another folder"
            )
        if not real.exists():
            return real  # a dangling link: its target is saved as a new folder
        path = real
    if path.is_symlink() and not path.exists():  # a dangling link
        if overwrite:
            return path  # the link itself is replaced
        raise ValueError(
            f"cannot save into {path}: it is a dangling symbolic link (to {os.readlink(path)}); pass {flag} to "
            "replace the link"
        )
    if path.is_symlink():  # the link is what is replaced, never what it points to: judge it
        if overwrite:
            return path
        pointed = _kind_of(path.stat().st_mode)
        raise ValueError(
            f"cannot save into {path}: it is a symbolic link (to {os.readlink(path)}, {pointed}), which this save "
            "replaces by a folder (it does not write into what the link points to, which is left as it is); pass "
            f"{flag} to replace the link, or save into the link's target"
        )
    if not path.exists():
        return path
    if not path.is_dir():
        if overwrite:
            return path
        raise ValueError(f"cannot save into {path}: it exists and is not a folder")
    try:
        names = sorted(entry.name for entry in path.iterdir())
    except OSError as exc:
        raise ValueError(f"cannot save into {shown}: its entries cannot be listed ({exc})") from None
    if not names or overwrite or is_ours(path):
        return path
    raise ValueError(
        f"cannot save into {shown}: the folder is not empty ({some_names(names)}) and is not {what}; the save "
        f"replaces the folder as a whole and would delete them. Choose a new or empty folder, or pass {flag} "
        "to replace it"
    )


def _replaced_file_mode(final: Path) -> int:
    """The permission bits for a file written at ``final``: those of the regular file there, else the umask's."""
    try:
        st = os.lstat(final)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode) & 0o777
    return 0o666 & ~_umask()


def _kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages (``"a named pipe"``)."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def check_file_target(target: str | os.PathLike[str]) -> None:
    """Refuse a path that :func:`atomic_file` must not replace: anything there but a regular file.

    A file is written by renaming a new copy onto its path, which would turn a device (``/dev/null``,
    a terminal), a named pipe or a socket into a regular file and never write to it, and would replace
    a symbolic link (even ``/dev/stdout``) instead of writing to what it points to. Such a target is
    refused; the links are not followed, as :func:`atomic_dir` does not follow a link at its target.
    A missing path (the file is created) and a regular file (replaced) are fine.

    Raises:
        ValueError: ``target`` is a device, a named pipe, a socket, or a symbolic link (dangling or not);
            the message names the path, what it is and, for a link, what the link points to.
        IsADirectoryError: ``target`` is a folder.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_file_target(folder / "new.json")  # a new file
        >>> (folder / "link.json").symlink_to(folder / "nowhere.json")
        >>> check_file_target(folder / "link.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: cannot write ...link.json: it is a dangling symbolic link to ...
    """
    final = user_path(target)
    try:
        mode = os.lstat(final).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:  # an ancestor is a file: _make_parent names it
        return
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{final} is a folder; atomic_file writes a file: remove it or choose another path")
    if stat.S_ISLNK(mode):
        try:
            link = os.readlink(final)
        except OSError:
            link = "?"
        try:
            pointed = _kind_of(os.stat(final).st_mode)
        except OSError:
            pointed = ""
        if not pointed:
            raise ValueError(
                f"cannot write {final}: it is a dangling symbolic link to {link!r} (nothing is there); the file is "
                "written by replacing the path, which would replace the link rather than create its target. Remove "
                "the link, or write to another path"
            )
        advice = (
            "Write to the link's target directly, or remove the link first"
            if pointed == "a regular file"
            else "Choose a path to a regular file or a new one"
        )
        raise ValueError(
            f"cannot write {final}: it is a symbolic link to {link!r} ({pointed}); the file is written by replacing "
            f"the path, which would replace the link rather than write to what it points to. {advice}"
        )
    raise ValueError(
        f"cannot write {final}: it is {_kind_of(mode)}, not a regular file; the file is written by renaming a new "
        f"regular file onto the path, which would replace {_kind_of(mode)} instead of writing to it. Choose a path "
        "to a regular file or a new one"
    )


@contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file atomically: yield a temporary sibling path to write, then rename it into place.

    If the body raises, the temporary file is removed.  Leftovers of earlier interrupted
    writes of this ``target`` are removed after each successful one. A new file gets the usual
    umask-based mode (``0o666 & ~umask``, e.g. 0644), as :func:`atomic_dir`'s files do, even when the
    body's writer created it 0600 (``safetensors``' ``save_file`` does); a regular file it replaces keeps
    its permission bits (a file the user made 0600 stays so).

    Only a new path or a regular file is written: a device, a named pipe, a socket or a symbolic link
    at ``target`` is refused before the body runs (:func:`check_file_target`), so nothing is written,
    replaced or cleaned up beside it.

    Raises:
        ValueError: ``target`` is not a regular file (see :func:`check_file_target`).
        IsADirectoryError: ``target`` is a folder.
        OSError: A write failed (a full disk): the same class and errno, the message naming the target.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> with atomic_file(out) as tmp:
        ...     _ = tmp.write_text("{}")
        >>> out.read_text()
        '{}'
    """
    final = user_path(target)
    check_file_target(final)  # before anything is written beside it
    _make_parent(final)
    tmp, guard = _tmp_beside(final, folder=False)
    try:
        try:
            yield tmp
            if not tmp.is_symlink():  # chmod would follow a link the body made
                tmp.chmod(_replaced_file_mode(final))
            fsync_file(tmp)
            check_file_target(final)  # again: something else may have been put there while the body wrote
            os.replace(tmp, final)
        except BaseException as exc:
            _remove_tree(tmp)
            named = _naming_target(exc, final, tmp)
            if named is not None:  # a full disk: say what was being saved
                raise named from exc
            raise
        fsync_dir(final.parent)
    finally:
        _unlock_fd(guard)
    clean_stale(final)


def safetensors_write_error(exc: Exception, file: Path, saving: Path) -> OSError:
    """The ``OSError`` for safetensors' error ``exc`` writing ``file`` of ``saving``, with the errno it names.

    safetensors raises its own ``SafetensorError`` (no ``OSError``) when a write fails, e.g. ``Error while
    serializing: I/O error: No space left on device (os error 28)`` on a full disk, which callers (the CLI) would
    take for a bug. The ``OSError`` carries the error number the message gives (``errno.ENOSPC`` there), and is of
    that number's class, as ``OSError(errno, ...)`` makes it (``PermissionError`` for ``EACCES``, ...); its message
    names ``saving`` and the file.

    Examples:
        >>> full = ValueError("Error while serializing: I/O error: No space left on device (os error 28)")
        >>> error = safetensors_write_error(full, Path("tmp/w.safetensors"), Path("model"))
        >>> error.errno == errno.ENOSPC, str(error).split(";")[0]
        (True, 'cannot save model: writing w.safetensors failed (No space left on device)')
        >>> denied = ValueError("Error while serializing: I/O error: Permission denied (os error 13)")
        >>> type(safetensors_write_error(denied, Path("tmp/w.safetensors"), Path("model"))).__name__
        'PermissionError'
    """
    text = str(exc)
    found = re.search(r"os error (\d+)|code: (\d+)", text)  # "(os error 28)"; older releases "Os { code: 28, ..."
    code = int(found[1] or found[2]) if found else (errno.ENOSPC if "No space left on device" in text else None)
    reason = os.strerror(code) if code is not None else text
    full = code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))  # disk, file size, quota
    advice = "free some space there and save again; nothing was replaced" if full else "nothing was replaced"
    # OSError(code, ...) picks the class of the error number (PermissionError for EACCES, ...), so that
    # `except PermissionError` catches it; built from the message alone, str(error) stays the message
    kind = type(OSError(code, "")) if code is not None else OSError
    error = kind(f"cannot save {saving}: writing {file.name} failed ({reason}); {advice}")
    error.errno = code
    return error


@contextmanager
def safetensors_writing(file: Path, saving: Path) -> Iterator[None]:
    """Run a safetensors write of ``file`` (for the save of ``saving``); its failure is :func:`safetensors_write_error`.

    Raises:
        OSError: The write failed (a full disk: ``errno.ENOSPC``); the message names ``saving`` and ``file``.
    """
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        raise safetensors_write_error(exc, file, saving) from exc


#: The newest format :func:`save_gaussians` writes (and :func:`load_gaussians` reads).
GAUSSIANS_FORMAT_VERSION = 1


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in the file ``path``, or ``None`` when it is missing, unreadable, not JSON or not an object.

    Only a regular file (links followed) is read: a named pipe, a device or a folder is ``None`` at once (never
    waited on), and so is JSON nested too deep to parse.

    What the saves read to tell an earlier save of their own kind (a folder they may replace) from anything else.

    Examples:
        >>> read_json_object(Path("/no/such/config.json")) is None
        True
    """
    import json

    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer; anything but a regular file is not a config
        fd = os.open(user_path(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            config = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting recurses
        return None
    return config if isinstance(config, dict) else None


#: What each ``format`` of a folder kl_retrievers saves (``kl-retrievers/<kind>``) is, and how to load it.
_SAVED_FORMATS = {
    "klstore": "a saved KL store (load it with KLStore.load)",
    "hybrid": "a saved hybrid store (load it with kl_retrievers.hybrid.KLHybridStore.load)",
    "langchain-klvectorstore": (
        "a LangChain KLVectorStore folder (load it with kl_retrievers.langchain.KLVectorStore.load_local)"
    ),
    "llama-index-vector-store": (
        "a LlamaIndex persist folder (load it with kl_retrievers.llama_index.KLVectorStore.from_persist_dir)"
    ),
    "encoded-shards": "a folder of encoded shards (load them with kl_retrievers.sharded.load_encoded)",
}
#: The JSON files that name the kind of a folder kl_retrievers saves (a LlamaIndex persist folder's
#: ``<namespace>__vector_store.json`` too), in the order :func:`describe_kl_folder` reads them.
_MARKER_FILES = ("config.json", "hybrid.json", "langchain.json", "manifest.json")


def describe_saved_meta(meta: dict[str, Any]) -> str | None:
    """What a ``config.json`` (or other marker file) written by kl_retrievers belongs to, and how to load it.

    ``None`` for a file kl_retrievers did not write.

    Examples:
        >>> describe_saved_meta({"format": "kl-retrievers/klstore"})
        'a saved KL store (load it with KLStore.load)'
        >>> describe_saved_meta({"library": "kl_retrievers", "kind": "gaussians"})
        'saved Gaussians (load them with kl_retrievers.load_gaussians)'
        >>> describe_saved_meta({"model_type": "bert"}) is None
        True
    """
    fmt = meta.get("format")
    if isinstance(fmt, str) and fmt.startswith("kl-retrievers/"):
        return _SAVED_FORMATS.get(fmt.split("/", 1)[1], f"a folder saved by kl_retrievers ({fmt})")
    if meta.get("library") != "kl_retrievers":
        return None
    if meta.get("kind") == "gaussians":
        return "saved Gaussians (load them with kl_retrievers.load_gaussians)"
    if meta.get("backend") == "onnx":
        return "an ONNX export of a Gaussian encoder (load it with kl_retrievers.load_model(path, backend='onnx'))"
    if "encoder" in meta:
        return (
            "a saved GaussianEncoder (load it with GaussianEncoder.from_pretrained(path) or "
            "kl_retrievers.load_model(path))"
        )
    return "a folder saved by kl_retrievers, not an encoder"


def describe_kl_folder(folder: str | os.PathLike[str]) -> str | None:
    """What the folder ``folder`` is, by the marker file kl_retrievers wrote in it, and how to load it.

    ``None`` for a missing folder and for one without such a file. The loaders name it when a folder of another
    kind is given to them (a hybrid store to ``KLStore.load``, an encoder to ``load_gaussians``).

    Examples:
        >>> describe_kl_folder("/no/such/folder") is None
        True
    """
    path = user_path(folder)
    try:
        llama = sorted(p.name for p in path.glob("*vector_store.json"))  # LlamaIndex: <namespace>__vector_store.json
    except OSError:
        llama = []
    for name in (*_MARKER_FILES, *llama):
        meta = read_json_object(path / name)
        what = describe_saved_meta(meta) if meta is not None else None
        if what is not None:
            return what
    return None


def why_not_this_kind(folder: str | os.PathLike[str], missing: str) -> str:
    """Why ``folder`` is not what a loader wanted, its ``missing`` file absent: ``"it is <the kind it is>"``
    (:func:`describe_kl_folder`), else ``"<missing> is missing"``; the end of each loader's refusal.

    Examples:
        >>> why_not_this_kind("/no/such/folder", "config.json")
        'config.json is missing'
    """
    other = describe_kl_folder(folder)
    return f"it is {other}" if other is not None else f"{missing} is missing"


def holds_nothing_saved(folder: str | os.PathLike[str], *needed: str) -> bool:
    """Whether ``folder`` is a folder without one of the ``needed`` files that no kind kl_retrievers saves names as
    its own (:func:`describe_kl_folder`): empty, or written by something else.

    Examples:
        >>> import tempfile
        >>> holds_nothing_saved(tempfile.mkdtemp(), "config.json")
        True
    """
    path = user_path(folder)
    return path.is_dir() and not all((path / name).is_file() for name in needed) and describe_kl_folder(path) is None


def not_this_kind_error(
    folder: str | os.PathLike[str],
    what: str,
    missing: str,
    *,
    other_kind: type[Exception] = ValueError,
    nothing: type[Exception] = NothingSavedError,
) -> Exception:
    """The refusal of a loader of ``what`` given ``folder``, which lacks the ``missing`` file: ``"<folder> is not
    <what>: <why_not_this_kind>"``, an ``other_kind`` (the loader's format error) when kl_retrievers saved the
    folder as another kind, else a ``nothing`` (:class:`~kl_retrievers.NothingSavedError` or the loader's subclass
    of it).

    Examples:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> error = not_this_kind_error(folder, "a saved thing", "thing.json")
        >>> type(error).__name__, str(error) == f"{folder} is not a saved thing: thing.json is missing"
        ('NothingSavedError', True)
    """
    other = describe_kl_folder(folder)
    if other is not None:
        return other_kind(f"{folder} is not {what}: it is {other}")
    return nothing(f"{folder} is not {what}: {missing} is missing")


def is_gaussians_config(config: Mapping[str, Any] | None) -> bool:
    """Whether a folder's ``config.json`` (:func:`read_json_object`) is that of saved Gaussians."""
    return config is not None and config.get("library") == "kl_retrievers" and config.get("kind") == "gaussians"


def is_gaussians_folder(folder: Path) -> bool:
    """Whether ``folder`` holds what :func:`save_gaussians` writes (its ``config.json`` says so): a save may replace it.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text('{"dim": 4}')
        >>> is_gaussians_folder(folder)
        False
    """
    return is_gaussians_config(read_json_object(folder / "config.json"))


def is_gaussians_file(path: Path) -> bool:
    """Whether ``path`` is a ``.safetensors`` file that :func:`save_gaussians` wrote (its ``config`` header says so).

    Anything but a regular file (a named pipe, a device) is not one, and is never opened (opening a pipe
    would wait for a writer).

    Examples:
        >>> is_gaussians_file(Path("/no/such/g.safetensors"))
        False
    """
    import json

    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="np") as fh:
            header = fh.metadata() or {}
        config = json.loads(header.get("config", "null"))
    except Exception:  # not a safetensors file, unreadable, or a header that is not JSON: not ours
        return False
    return is_gaussians_config(config if isinstance(config, dict) else None)


def check_replace_gaussians_file(
    target: str | os.PathLike[str], *, overwrite: bool = False, flag: str | None = "overwrite=True"
) -> None:
    """Refuse to replace an existing file that does not hold saved Gaussians (:func:`check_replace_target` for files).

    ``save_gaussians("X.safetensors", ...)`` may write a new path or replace an earlier save of Gaussians;
    any other file (a model's ``model.safetensors``, a user's data) needs ``overwrite``.

    Raises:
        ValueError: ``target`` exists and is not a ``.safetensors`` file of saved Gaussians (the message
            names it, why it is not one, and ``flag``), or it is not a regular file at all (a device, a
            named pipe, a socket or a symbolic link: :func:`check_file_target`, whatever ``overwrite`` says).
        TypeError: ``overwrite`` is not a bool.

    Examples:
        >>> import tempfile
        >>> weights = Path(tempfile.mkdtemp()) / "model.safetensors"
        >>> check_replace_gaussians_file(weights)  # a new path
        >>> _ = weights.write_bytes(b"weights")
        >>> check_replace_gaussians_file(weights)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: cannot save into ...model.safetensors: the file exists and does not hold saved Gaussians ...
    """
    check_bool(overwrite, "overwrite")
    path = user_path(target)
    if path.is_dir() and not path.is_symlink():  # a folder: atomic_file says
        return
    check_file_target(path)  # a device, pipe, socket or symbolic link is never replaced, even with overwrite
    if overwrite or not path.exists() or is_gaussians_file(path):
        return
    raise ValueError(
        f"cannot save into {path}: the file exists and does not hold saved Gaussians (it is not a .safetensors "
        "file written by save_gaussians or `kl-retrievers encode`, e.g. it holds model weights); the save would "
        "replace it. Choose a new path, or delete the file first" + (f" (or pass {flag})" if flag else "") + " to "
        "replace it"
    )


def refuse_json_constant(where: str = "") -> Callable[[str], Any]:
    """A ``parse_constant`` for :func:`json.loads` that refuses ``NaN``, ``Infinity`` and ``-Infinity``.

    They are not standard JSON (other readers reject the file), and no kl-retrievers file writes them.

    Examples:
        >>> import json
        >>> json.loads('{"a": NaN}', parse_constant=refuse_json_constant("x.json"))
        Traceback (most recent call last):
        ValueError: x.json: holds NaN, which is not standard JSON (only finite numbers are)
    """
    prefix = f"{where}: " if where else ""

    def refuse(name: str) -> Any:
        raise ValueError(f"{prefix}holds {name}, which is not standard JSON (only finite numbers are)")

    return refuse


def _gaussians_meta(text: str, where: str) -> dict[str, Any]:
    """The config of saved Gaussians, checked: a JSON object of kind ``gaussians`` in a format this release reads.

    Its ``score``, when recorded, must be the one this library serves (:func:`kl_retrievers._score.check_score`).

    ``NaN`` / ``Infinity`` are refused outside ``metadata`` (only recorded, never returned: earlier releases
    wrote a caller's non-finite values there as they were).
    """
    import json

    too_deep = f"{where} nests JSON arrays or objects too deeply to read"
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:  # the C decoder recurses once per level of nesting
        raise ValueError(too_deep) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where} must hold a JSON object; got a JSON {type(meta).__name__}")
    found: list[str] = []
    try:
        finite_json(meta, found=found)
    except RecursionError:  # nesting the decoder took, but not this (recursive, Python) walk
        raise ValueError(too_deep) from None
    refused = [key for key in found if not key.startswith("metadata.") and not key.startswith("metadata[")]
    if refused:
        raise ValueError(f"{where}: field(s) {refused} hold NaN or Infinity, which is not standard JSON")
    if meta.get("kind") != "gaussians":
        raise ValueError(
            f"{where}: field 'kind' is {meta.get('kind')!r}, not 'gaussians'; this is not what save_gaussians writes"
        )
    check_version(meta, what=f"the saved Gaussians at {where}", format_version=GAUSSIANS_FORMAT_VERSION)
    from kl_retrievers._score import check_score  # neg_kl / higher_is_better, when recorded

    check_score(meta, where)
    return meta


def _checked_ids(ids: Any, rows: int, where: str) -> list[str]:
    """Saved row ids: a JSON list of strings, one per row (``where`` names the file)."""
    if not isinstance(ids, list):
        raise ValueError(f"{where}: the ids must be a JSON list of strings; got a JSON {type(ids).__name__}")
    if len(ids) != rows:
        raise ValueError(f"{where}: holds {len(ids)} ids for {rows} Gaussians; expected one id per row")
    bad = next((i for i, value in enumerate(ids) if not isinstance(value, (str, int)) or isinstance(value, bool)), None)
    if bad is not None:
        raise ValueError(f"{where}: id {bad} is {ids[bad]!r} ({type(ids[bad]).__name__}); every id must be a string")
    if any(isinstance(value, int) for value in ids):  # an older save: save_gaussians took int ids then
        logger.warning("%s: holds integer ids (an older save); they are read as strings, e.g. %r", where, str(ids[0]))
        return [str(value) for value in ids]
    return ids


def save_gaussians(
    path: str | os.PathLike[str],
    gaussians: Any,
    *,
    ids: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save Gaussians without pickle: a ``.safetensors`` file, or else a folder of ``.npy`` files.

    A folder holds ``mean.npy``, ``var.npy``, ``ids.json`` (when given) and ``config.json``
    (library version, score name and direction, shape, and ``metadata``). The folder replaces
    ``path`` as a whole, so an existing non-empty folder must be an earlier save of Gaussians
    (unless ``overwrite``).

    Args:
        path: Ends in ``.safetensors`` for one file; anything else is a folder.
        gaussians: A :class:`~kl_retrievers.gaussian.Gaussians` batch.
        ids: Optional row ids, one string per Gaussian.
        metadata: Optional JSON-ready facts (e.g. the model name); a NaN or infinite number in it
            is written as null, with a warning (files are standard JSON).
        overwrite: Replace ``path`` even when it is a non-empty folder, or an existing file, that does
            not hold saved Gaussians (its files are deleted).

    Raises:
        TypeError: ``gaussians`` is not a Gaussians batch, or the arguments come in ``torch.save``'s
            order (``save_gaussians(gaussians, path)``).
        ValueError: ``ids`` are not one string per row, or ``path`` is a non-empty folder or an
            existing file that does not hold saved Gaussians (without ``overwrite``).

    Examples:
        >>> import numpy as np, tempfile, pathlib
        >>> from kl_retrievers import Gaussians
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "g"
        >>> _ = save_gaussians(out, Gaussians(np.zeros((2, 3)), np.ones((2, 3))), ids=["a", "b"])
        >>> g, ids = load_gaussians(out)
        >>> g.mean.shape, ids
        ((2, 3), ['a', 'b'])
    """
    import json

    import numpy as np

    from kl_retrievers.gaussian import SCORE_DIRECTION, SCORE_NAME, Gaussians, _require_gaussians

    if isinstance(path, Gaussians):
        raise TypeError(
            "save_gaussians takes the path first: save_gaussians(path, gaussians), not torch.save's order "
            f"(got Gaussians, then {type(gaussians).__name__})"
        )
    g = _require_gaussians(gaussians, "gaussians").numpy()
    if ids is not None:
        if isinstance(ids, str):
            raise ValueError("ids must be a list of strings (one per row), not a single string")
        ids = list(ids)
        if len(ids) != len(g):
            raise ValueError(f"got {len(ids)} ids for {len(g)} Gaussians; give one id per row")
        bad = next((i for i, value in enumerate(ids) if not isinstance(value, str)), None)
        if bad is not None:
            raise ValueError(f"ids[{bad}] is {ids[bad]!r} ({type(ids[bad]).__name__}); every id must be a string")
    found: list[str] = []
    clean_metadata = finite_json(metadata or {}, found=found)
    if found:
        # the caller's own metadata, which their call can fix: a warning at their line, not a log line
        warn(f"save_gaussians: metadata holds NaN or infinite values at {found}; written as null (standard JSON)")
    meta = {
        "library": "kl_retrievers",
        "library_version": library_version(),
        "format_version": GAUSSIANS_FORMAT_VERSION,
        "kind": "gaussians",
        "score": {"name": SCORE_NAME, "direction": SCORE_DIRECTION},
        "shape": list(g.mean.shape),
        "dtype": str(g.mean.dtype),
        "metadata": clean_metadata,
    }
    target = user_path(path)
    if target.suffix == ".safetensors":
        from safetensors.numpy import save_file

        check_replace_gaussians_file(target, overwrite=overwrite)
        header = {"config": json.dumps(meta, allow_nan=False)}
        if ids is not None:
            header["ids"] = json.dumps(ids)
        with atomic_file(target) as tmp, safetensors_writing(target, target):
            save_file({"mean": np.ascontiguousarray(g.mean), "var": np.ascontiguousarray(g.var)}, tmp, metadata=header)
        return target
    final = check_replace_target(  # a link you name (current -> v3) is resolved once, here: v3 is saved
        target,
        is_ours=is_gaussians_folder,
        what="saved Gaussians (a save_gaussians folder)",
        overwrite=overwrite,
        follow_link=True,
    )
    with atomic_dir(final) as tmp_dir:
        np.save(tmp_dir / "mean.npy", g.mean, allow_pickle=False)
        np.save(tmp_dir / "var.npy", g.var, allow_pickle=False)
        if ids is not None:
            (tmp_dir / "ids.json").write_text(json.dumps(ids))
        (tmp_dir / "config.json").write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    return target


def read_npy_header(path: Path) -> tuple[tuple[int, ...], Any, int]:
    """What an ``.npy`` file's header declares, its data not read: ``(shape, dtype, offset of the data)``.

    ``np.load`` allocates the declared shape before it reads the data: a header claiming a huge shape over a
    few bytes of data costs that memory (or ``MemoryError``), so a loader of files it did not write compares the
    file's size with this first.

    Raises:
        OSError: The file cannot be read.
        ValueError: Not an ``.npy`` header (or ``EOFError``, ``SyntaxError``, ``TypeError``: numpy's parser).
    """
    with open(path, "rb") as fh:
        shape, _, dtype = _read_npy_header(fh)
        return shape, dtype, fh.tell()


def _read_npy_header(fh: Any) -> tuple[tuple[int, ...], bool, Any]:
    """``(shape, fortran_order, dtype)`` from an ``.npy`` header, ``fh`` left at the data."""
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(fh)
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran_order, dtype = read(fh)
    if any(d < 0 for d in shape):  # np.load refuses them too; np.frombuffer's reshape would take -1 as "the rest"
        raise ValueError(f"the .npy header declares negative dimensions {tuple(shape)}; dimensions are >= 0")
    return tuple(shape), fortran_order, dtype


def npy_from_buffer(data: Any) -> Any:
    """The array of an ``.npy`` file's bytes ``data`` (a ``uint8`` array as :func:`read_sha256
    <kl_retrievers.hub.read_sha256>` reads them, or any bytes-like object), as ``np.load(allow_pickle=False)`` makes
    it, over ``data`` without a copy (writable where ``data`` is).

    Raises:
        ValueError: Not an ``.npy`` file, an object array (pickled), or fewer bytes than its header declares (or
            ``EOFError``, ``SyntaxError``, ``TypeError``: numpy's header parser).

    Examples:
        >>> import io, numpy as np
        >>> buf = io.BytesIO()
        >>> np.save(buf, np.arange(6.0).reshape(2, 3))
        >>> npy_from_buffer(bytearray(buf.getvalue()))[1]
        array([3., 4., 5.])
    """
    import io

    import numpy as np

    data = memoryview(data).cast("B")
    fh = io.BytesIO(data[:12])  # magic and header length (2 bytes in version 1, 4 after)
    major = fh.read(8)[6:7]
    end = 10 + int.from_bytes(fh.read(2), "little") if major == b"\x01" else 12 + int.from_bytes(fh.read(4), "little")
    header = io.BytesIO(data[:end])
    shape, fortran_order, dtype = _read_npy_header(header)
    if dtype.hasobject:
        raise ValueError("the array holds Python objects (pickled), which are never loaded")
    count = math.prod(shape)
    offset = header.tell()
    if data.nbytes < offset + count * dtype.itemsize:
        raise ValueError(
            f"{data.nbytes} bytes, fewer than the {offset + count * dtype.itemsize} of its header ({shape} {dtype})"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def load_gaussians(path: str | os.PathLike[str]) -> tuple[Any, list[str] | None]:
    """Load what :func:`save_gaussians` wrote: ``(Gaussians, ids or None)``.

    A folder is read again when a save replaces it meanwhile (:func:`load_unchanged`), so the arrays of two saves
    are never mixed; one that a save killed mid-swap left missing is restored first (:func:`recover_dir`).
    The arrays must be float32 or float64 (what :func:`save_gaussians` writes; integers, booleans, float16 or
    other floats are refused, not converted). A folder's files must lie in it: a symbolic link to a file
    elsewhere is refused, as ``KLStore.load`` refuses one; an ``.npy`` file is read only once its size is
    the one its header declares.

    Raises:
        FileNotFoundError: Nothing exists at ``path`` (a folder or a ``.safetensors`` file).
        NothingSavedError: (a ``FileNotFoundError`` and a ``ValueError``) no folder, or one without its files.
        OSError: Saves replaced the folder during each of the reads.
        ValueError: The folder is of another kind (the message names it: a KL store, an encoder...), a file is
            missing, links out of the folder, or is not what its header declares, the arrays
            are not float32 or float64, the config is not that of saved Gaussians (another ``kind``, a
            newer ``format_version``, another ``score`` name or direction than ``neg_kl``, ``higher_is_better``),
            a JSON file nests arrays or objects too deeply to read, or the ids are not a list of strings, one
            per row (the message names the file).
    """
    import json

    import numpy as np

    from kl_retrievers.gaussian import Gaussians

    def check_dtype(dtype: Any, where: str) -> None:
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ValueError(
                f"{where} holds {dtype} values; saved Gaussians are float32 or float64 (what save_gaussians writes)"
            )

    def read_ids(text: str, rows: int, where: str) -> list[str]:
        try:
            ids = json.loads(text, parse_constant=refuse_json_constant())
        except ValueError as exc:
            raise ValueError(f"{where} is not valid JSON: {exc}") from None
        except RecursionError:  # the C decoder recurses once per level of nesting
            raise ValueError(f"{where} nests JSON arrays or objects too deeply to read") from None
        return _checked_ids(ids, rows, where)

    source = user_path(path)
    if source.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(os.fspath(source), framework="np") as fh:
            header = fh.metadata() or {}
            mean, var = fh.get_tensor("mean"), fh.get_tensor("var")
        for name, array in (("mean", mean), ("var", var)):
            check_dtype(array.dtype, f"{source} (its {name!r} tensor)")
        g = Gaussians(mean, var)
        if "config" in header:
            _gaussians_meta(header["config"], f"{source} (its 'config' header)")
        ids = read_ids(header["ids"], len(g), f"{source} (its 'ids' header)") if "ids" in header else None
        return g, ids
    # Where a folder swap is not atomic (macOS), a save killed between its two renames leaves only the previous
    # copy beside the folder (.NAME.old-*): put it back first, as KLStore.load does.
    recover_dir(source, required="config.json")
    if not source.exists():
        raise NothingSavedError(f"no saved Gaussians at {source}")

    def read_array(file: Path) -> Any:
        try:
            shape, dtype, offset = read_npy_header(file)
        except (ValueError, EOFError, SyntaxError, TypeError) as exc:
            raise ValueError(f"cannot read {file}: {exc}") from None
        check_dtype(dtype, str(file))
        size, needed = file.stat().st_size, offset + math.prod(shape) * dtype.itemsize
        if size != needed:
            raise ValueError(
                f"{file} has {size} bytes, not the {needed} of its header ({shape} {dtype.name}); truncated or edited?"
            )
        return np.load(file, allow_pickle=False)

    def load() -> tuple[Any, list[str] | None]:
        root = source.resolve()
        for name in ("mean.npy", "var.npy", "config.json", "ids.json"):
            file = source / name
            if file.resolve().parent != root:  # a link out of the folder: as KLStore.load refuses one (check_files)
                raise ValueError(f"{file} resolves to {file.resolve()}, outside the saved Gaussians folder")
            if name != "ids.json" and not file.is_file():
                # a damaged Gaussians folder (its own config.json) is described by its missing file, not its kind
                if is_gaussians_config(read_json_object(source / "config.json")):
                    raise ValueError(f"{source} is not a saved Gaussians folder: {name} is missing")
                raise not_this_kind_error(source, "a saved Gaussians folder", name)
        meta = read_json_object(source / "config.json")
        # a config with a "kind" of its own is checked field by field below ("config.json: field 'kind' ...")
        if meta is not None and "kind" not in meta and (other := describe_saved_meta(meta)) is not None:
            raise ValueError(f"{source} is not a saved Gaussians folder: it is {other}")
        _gaussians_meta((source / "config.json").read_text(encoding="utf-8"), str(source / "config.json"))
        g = Gaussians(read_array(source / "mean.npy"), read_array(source / "var.npy"))
        ids_path = source / "ids.json"
        ids = read_ids(ids_path.read_text(encoding="utf-8"), len(g), str(ids_path)) if ids_path.is_file() else None
        return g, ids

    # The files are read one by one: a save of the same folder meanwhile (in another thread or process) swaps in
    # its copy between two reads, and the means of one save would meet the variances of the next: read again then.
    return load_unchanged(source, load)


def env_value(name: str) -> str | None:
    """The environment variable ``name``'s value, or ``None`` when it is unset, empty or blank (only spaces).

    A blank value counts as unset, as the XDG convention has it for its folder variables (a folder named by it
    would be ``" "`` in the working folder). The value is returned as set, spaces included.

    Examples:
        >>> import os
        >>> os.environ["KL_EXAMPLE_VALUE"] = "  "
        >>> env_value("KL_EXAMPLE_VALUE") is None, env_value("KL_EXAMPLE_UNSET_VALUE") is None
        (True, True)
        >>> os.environ["KL_EXAMPLE_VALUE"] = "/tmp/x"
        >>> env_value("KL_EXAMPLE_VALUE")
        '/tmp/x'
        >>> del os.environ["KL_EXAMPLE_VALUE"]
    """
    value = os.environ.get(name)
    return value if value and value.strip() else None


def user_cache_dir(env: str, name: str) -> Path:
    """A kl-retrievers cache folder: ``$env`` when set, else ``~/.cache/kl_retrievers/<name>``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set. A variable set to an empty or blank value (only
    spaces) counts as unset (:func:`env_value`), as the XDG convention has it (it would otherwise name a
    folder ``" "`` in the working folder).

    Raises:
        CacheFolderError: Neither variable is set and the home folder is unknown (``HOME`` unset and no
            password-database entry, as in a container run under an arbitrary user id); an ``OSError`` whose
            message names ``env``. Where a cache is optional, treat it as an unwritable cache.

    Examples:
        >>> import os
        >>> os.environ["KL_EXAMPLE_CACHE"] = "/tmp/kl-example"
        >>> str(user_cache_dir("KL_EXAMPLE_CACHE", "example"))
        '/tmp/kl-example'
        >>> del os.environ["KL_EXAMPLE_CACHE"]
    """
    value = env_value(env)
    if value is not None:
        return user_path(value)
    xdg = env_value("XDG_CACHE_HOME")
    if xdg is not None:
        return user_path(xdg) / "kl_retrievers" / name
    home = os.path.expanduser("~")
    if home == "~":  # Path.home() would raise RuntimeError("Could not determine home directory.")
        raise CacheFolderError(
            f"no folder for the kl-retrievers {name} cache: {env} and XDG_CACHE_HOME are not set, and the home "
            f"folder is unknown (HOME is not set and user id {_uid()} has no entry in the password database); set "
            f"{env} to a writable folder (or XDG_CACHE_HOME, or HOME)"
        )
    return Path(home) / ".cache" / "kl_retrievers" / name


class CacheFolderError(KLRetrieversError, OSError):
    """No cache folder can be named: its variable and ``XDG_CACHE_HOME`` are unset, and the home folder is unknown.

    An ``OSError``, so code that treats an unwritable cache as no cache treats this one so too.
    """


def _uid() -> str:
    getuid = getattr(os, "getuid", None)
    return str(getuid()) if getuid is not None else "?"


def finite_json(obj: Any, where: str = "", found: list[str] | None = None) -> Any:
    """``obj`` with every float that is not finite (NaN, ±inf) replaced by ``None``, for standard JSON.

    Where the code means "undefined" it writes ``None`` already (a QPP correlation on constant
    input); this is the net under that, so ``json.dumps(..., allow_nan=False)`` never meets
    ``NaN`` or ``Infinity``. Mappings, lists and tuples are copied; ``found`` (when given) collects
    the key path of each value replaced.

    Examples:
        >>> found = []
        >>> finite_json({"a": 1.0, "b": [float("nan"), 2], "c": {"d": float("inf")}}, found=found)
        {'a': 1.0, 'b': [None, 2], 'c': {'d': None}}
        >>> found
        ['b[0]', 'c.d']
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        if found is not None:
            found.append(where or "(top)")
        return None
    if isinstance(obj, Mapping):
        return {k: finite_json(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj
