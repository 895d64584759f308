"""Small persistence helpers shared by every saved object: atomic folders and versions."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def library_version() -> str:
    """The installed version of kl-retrievers (``0+unknown`` when run from a bare checkout)."""
    try:
        return importlib_metadata.version("kl-retrievers")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


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
    if _version_tuple(ours) and _version_tuple(saved) > _version_tuple(ours):
        warnings.warn(
            f"{what} was written by kl-retrievers {saved}, newer than this {ours}; it may not load correctly",
            UserWarning,
            stacklevel=3,
        )


def read_jsonl_objects(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file of objects, skipping blank lines; errors name the file and line.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.jsonl"
        >>> _ = p.write_text('{"a": 1}\\n\\n{"a": 2}\\n')
        >>> read_jsonl_objects(p)
        [{'a': 1}, {'a': 2}]
    """
    with open(path, encoding="utf-8") as fh:
        return [parse_json_object(line, f"{path}, line {number}") for number, line in enumerate(fh, 1) if line.strip()]


def parse_json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a dict; errors name ``where`` (file and line or record).

    Examples:
        >>> parse_json_object('{"a": 1}', "x.jsonl, line 1")
        {'a': 1}
    """
    import json

    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def row_text(row: dict[str, Any], field: str, where: str) -> str:
    """A JSONL row's text: ``field``, or ``"auto"`` for title + text (errors name ``where``)."""
    if field == "auto":
        if "text" not in row:
            raise ValueError(f"{where}: no 'text' field (fields: {sorted(row)}); choose one with --field")
        title = str(row.get("title") or "").strip()
        text = str(row["text"]).strip()
        return f"{title} {text}".strip() if title else text
    if field not in row:
        raise ValueError(f"{where}: no {field!r} field (fields: {sorted(row)})")
    return str(row[field])


def _normalise_permissions(folder: Path) -> None:
    """Give written files the usual umask-based mode (some writers create them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a folder atomically: yield a temporary sibling, then swap it into place.

    If the body raises, the temporary folder is removed and ``target`` is untouched.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "saved"
        >>> with atomic_dir(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hello")
        >>> (out / "a.txt").read_text()
        'hello'
    """
    final = Path(target)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} exists and is not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.tmp-{token}"
    old = final.parent / f".{final.name}.old-{token}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _normalise_permissions(tmp)
    if final.exists():
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_gaussians(
    path: str | os.PathLike[str],
    gaussians: Any,
    *,
    ids: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save Gaussians without pickle: a ``.safetensors`` file, or else a folder of ``.npy`` files.

    A folder holds ``mean.npy``, ``var.npy``, ``ids.json`` (when given) and ``config.json``
    (library version, score name and direction, shape, and ``metadata``).

    Args:
        path: Ends in ``.safetensors`` for one file; anything else is a folder.
        gaussians: A :class:`~kl_retrievers.gaussian.Gaussians` batch.
        ids: Optional row ids, one per Gaussian.
        metadata: Optional JSON-ready facts (e.g. the model name).

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

    from kl_retrievers.gaussian import SCORE_DIRECTION, SCORE_NAME

    g = gaussians.numpy()
    if ids is not None and len(ids) != len(g):
        raise ValueError(f"got {len(ids)} ids for {len(g)} Gaussians; give one id per row")
    meta = {
        "library": "kl_retrievers",
        "library_version": library_version(),
        "kind": "gaussians",
        "score": {"name": SCORE_NAME, "direction": SCORE_DIRECTION},
        "shape": list(g.mean.shape),
        "dtype": str(g.mean.dtype),
        "metadata": metadata or {},
    }
    target = Path(path)
    if target.suffix == ".safetensors":
        from safetensors.numpy import save_file

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        header = {"config": json.dumps(meta)}
        if ids is not None:
            header["ids"] = json.dumps(list(ids))
        save_file({"mean": np.ascontiguousarray(g.mean), "var": np.ascontiguousarray(g.var)}, tmp, metadata=header)
        os.replace(tmp, target)
        return target
    with atomic_dir(target) as tmp_dir:
        np.save(tmp_dir / "mean.npy", g.mean, allow_pickle=False)
        np.save(tmp_dir / "var.npy", g.var, allow_pickle=False)
        if ids is not None:
            (tmp_dir / "ids.json").write_text(json.dumps(list(ids)))
        (tmp_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target


def load_gaussians(path: str | os.PathLike[str]) -> tuple[Any, list[str] | None]:
    """Load what :func:`save_gaussians` wrote: ``(Gaussians, ids or None)``."""
    import json

    import numpy as np

    from kl_retrievers.gaussian import Gaussians

    source = Path(path)
    if source.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(os.fspath(source), framework="np") as fh:
            header = fh.metadata() or {}
            mean, var = fh.get_tensor("mean"), fh.get_tensor("var")
        ids = json.loads(header["ids"]) if "ids" in header else None
        return Gaussians(mean, var), ids
    for name in ("mean.npy", "var.npy", "config.json"):
        if not (source / name).is_file():
            raise ValueError(f"{source} is not a saved Gaussians folder: {name} is missing")
    mean = np.load(source / "mean.npy", allow_pickle=False)
    var = np.load(source / "var.npy", allow_pickle=False)
    ids = json.loads((source / "ids.json").read_text()) if (source / "ids.json").is_file() else None
    return Gaussians(mean, var), ids
