"""An on-disk cache of encodings: arrays as ``.npy`` files (never pickled), keyed by a JSON identity.

:func:`kl_retrievers.evaluation.encode_dataset` caches Gaussian encodings in it and
:func:`kl_retrievers.baselines.dense_run` the dense baselines' vectors. It imports nothing from
the package.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     cache = EncodingCache(tmp)
    ...     cache.save("documents", {"model": "m"}, ["a"], {"emb": np.zeros((1, 2), dtype=np.float32)})
    ...     cache.load("documents", {"model": "m"}, ["a"])["emb"].shape
    (1, 2)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_ENV", "EncodingCache", "canonical_json", "default_cache_dir"]

logger = logging.getLogger(__name__)

CACHE_ENV = "KL_RETRIEVERS_CACHE"
_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$KL_RETRIEVERS_CACHE`` if set, else ``~/.cache/kl_retrievers/encodings``.

    Examples:
        >>> default_cache_dir().name  # doctest: +SKIP
        'encodings'
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kl_retrievers" / "encodings"


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
    and ``meta.json`` (the full key, the row ids and the array shapes). An entry that
    fails to load or does not match its key is deleted and reported as a miss.

    Args:
        cache_dir: Root folder; defaults to :func:`default_cache_dir`.

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
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def entry_dir(self, kind: str, key: Mapping[str, Any]) -> Path:
        """Folder of the entry for ``(kind, key)``."""
        digest = hashlib.sha256(
            canonical_json({"kind": kind, "key": key, "format": _CACHE_FORMAT}).encode()
        ).hexdigest()
        return self.root / f"{kind}-{digest[:32]}"

    def load(self, kind: str, key: Mapping[str, Any], ids: Sequence[str]) -> dict[str, np.ndarray] | None:
        """The cached arrays for ``(kind, key)`` whose rows are ``ids``, or ``None`` on a miss."""
        folder = self.entry_dir(kind, key)
        if not folder.is_dir():
            self.misses += 1
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != _CACHE_FORMAT or canonical_json(meta.get("key")) != canonical_json(key):
                raise ValueError("key mismatch")
            if meta.get("ids") != list(ids):
                raise ValueError("row ids differ")
            arrays: dict[str, np.ndarray] = {}
            for name, shape in meta["arrays"].items():
                arr = np.load(folder / f"{name}.npy", allow_pickle=False)
                if list(arr.shape) != list(shape) or arr.shape[0] != len(ids):
                    raise ValueError(f"array {name!r} has shape {arr.shape}, expected {shape}")
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise ValueError(f"array {name!r} holds non-finite values")
                arrays[name] = arr
        except Exception as exc:  # any damage means recompute
            logger.warning("encoding cache entry %s is unusable (%s); recomputing", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            self.misses += 1
            return None
        self.hits += 1
        logger.info("encoding cache hit: %s", folder)
        return arrays

    def save(self, kind: str, key: Mapping[str, Any], ids: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Store ``arrays`` (first axis = ``ids``) for ``(kind, key)``; failures only warn."""
        folder = self.entry_dir(kind, key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            for name, arr in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
            meta = {
                "format": _CACHE_FORMAT,
                "kind": kind,
                "key": json.loads(canonical_json(key)),
                "ids": list(ids),
                "arrays": {name: list(arr.shape) for name, arr in arrays.items()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            logger.info("encoding cache saved: %s", folder)
        except OSError as exc:
            logger.warning("could not write encoding cache %s: %s", folder, exc)
            if "tmp" in locals():
                shutil.rmtree(tmp, ignore_errors=True)
