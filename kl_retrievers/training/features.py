"""The fast path: cache frozen-backbone features once, then train only the heads on them.

With the backbone frozen, the heads of a :class:`~kl_retrievers.encoder.GaussianEncoder` read
two vectors per text: the pooled representation (``[CLS]`` or the masked mean, before the
optional L2 normalisation) and the ``[VAR]`` state (``hidden[:, 1]``; the pooled vector when
the encoder has no ``[VAR]`` token). :func:`compute_features` runs the backbone exactly as
:meth:`GaussianEncoder.forward` does (same tokenisation, ``[VAR]`` inserted after ``[CLS]``)
and caches the two vectors on disk, keyed by a hash of the backbone weights, the encoder
settings, the token budget and the text. :func:`heads_forward` then gives the same mean and
variance as ``encoder.forward`` from those features, so the heads can be trained for
thousands of steps a minute on a CPU and the result is a normal encoder.

Examples:
    >>> feats = compute_features(encoder, ["a text"], max_length=64, cache_dir="cache")  # doctest: +SKIP
    >>> mean, var = heads_forward(encoder, *feats.torch())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kl_retrievers._encoding import eval_mode, progress_enabled
from kl_retrievers._io import env_value, make_dirs, user_cache_dir, user_path
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.encoding_cache import CACHE_ENV, tokenizer_identity

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureCache",
    "Features",
    "backbone_fingerprint",
    "compute_features",
    "default_feature_cache_dir",
    "heads_forward",
    "text_key",
    "tokenizer_fingerprint",
]


def default_feature_cache_dir() -> Path:
    """``$KL_RETRIEVERS_CACHE/features`` if that variable is set, else ``~/.cache/kl_retrievers/features``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set, as for the encoding cache
    (:func:`kl_retrievers.encoding_cache.default_cache_dir`, :func:`kl_retrievers._io.user_cache_dir`).

    Examples:
        >>> default_feature_cache_dir().name
        'features'
    """
    env = env_value(CACHE_ENV)
    return user_path(env) / "features" if env is not None else user_cache_dir(CACHE_ENV, "features")


@dataclass
class Features:
    """Backbone features of some texts, float32 numpy arrays of shape ``(n, hidden)``.

    Attributes:
        pooled: The pooled representation the mean head reads (before ``normalize_pooled``).
        var_state: The state the variance head reads (``[VAR]``, or ``pooled`` without it).
    """

    pooled: np.ndarray
    var_state: np.ndarray

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    def torch(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Both arrays as float32 tensors on ``device``."""
        return torch.from_numpy(self.pooled).to(device), torch.from_numpy(self.var_state).to(device)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A SHA-256 of what a tokenizer turns text into: its vocabulary, normalisation, pre-tokenisation,
    added tokens and special-token processing (not its size alone: two tokenizers of the same size
    may split or lowercase text differently).

    A fast tokenizer is hashed through its serialised ``tokenizers`` state without the truncation
    and padding settings (each call changes those); a slow one through its class, vocabulary, added
    tokens and settings (file paths left out, so copies of one tokenizer hash the same).

    Examples:
        >>> len(tokenizer_fingerprint(encoder.tokenizer))  # doctest: +SKIP
        64
    """
    ident = tokenizer_identity(tokenizer)  # the rule the encoding cache's fingerprint uses too
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def backbone_fingerprint(encoder: GaussianEncoder) -> str:
    """A hash of everything the features depend on: backbone weights (with the ``[VAR]`` row),
    the tokenizer (:func:`tokenizer_fingerprint`: vocabulary, normalisation, added tokens), pooling
    and ``var_token``.

    Examples:
        >>> len(backbone_fingerprint(encoder))  # doctest: +SKIP
        16
    """
    h = hashlib.sha256()
    cfg = encoder.config
    ident = {
        "pooling": cfg.pooling,
        "var_token": cfg.var_token,
        "var_token_id": encoder.var_token_id,
        "vocab": len(encoder.tokenizer),
        "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
        "backbone_sha256": cfg.backbone_sha256,
    }
    h.update(json.dumps(ident, sort_keys=True).encode())
    for name, value in sorted(encoder.backbone.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def text_key(text: str, max_length: int) -> bytes:
    """Cache key of one text at one token budget (32 hex characters, as bytes)."""
    return hashlib.sha256(f"{max_length}\0{text}".encode()).hexdigest()[:32].encode()


class FeatureCache:
    """Feature shards on disk: ``<root>/<fingerprint>/{keys,pooled,var}-<id>.npy``.

    Keys are fixed-width byte strings (``S32``), so every file loads with
    ``allow_pickle=False``. New features are appended as a new shard; nothing is rewritten.

    Args:
        root: Cache folder.
        fingerprint: :func:`backbone_fingerprint` of the encoder.
    """

    def __init__(self, root: str | os.PathLike[str], fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[tuple[np.ndarray, np.ndarray]] = []
        if self.dir.is_dir():
            for keys_file in sorted(self.dir.glob("keys-*.npy")):
                sid = keys_file.stem[len("keys-") :]
                try:
                    keys = np.load(keys_file, allow_pickle=False)
                    pooled = np.load(self.dir / f"pooled-{sid}.npy", allow_pickle=False)
                    var = np.load(self.dir / f"var-{sid}.npy", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    logger.warning("skipping unreadable feature shard %s: %s", keys_file, exc)
                    continue
                n = len(self._shards)
                self._shards.append((pooled, var))
                for row, key in enumerate(keys.tolist()):
                    self._index[key] = (n, row)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def get(self, keys: Sequence[bytes]) -> Features:
        """Features for keys that are all in the cache."""
        rows = [self._index[k] for k in keys]
        pooled = np.stack([self._shards[s][0][r] for s, r in rows]) if rows else np.zeros((0, 0), np.float32)
        var = np.stack([self._shards[s][1][r] for s, r in rows]) if rows else np.zeros((0, 0), np.float32)
        return Features(pooled.astype(np.float32, copy=False), var.astype(np.float32, copy=False))

    def add(self, keys: Sequence[bytes], feats: Features) -> None:
        """Write a new shard (atomically: files are renamed into place)."""
        if not keys:
            return
        make_dirs(self.dir)  # each new folder synced into its parent: a crash cannot lose the path to the shard
        sid = uuid.uuid4().hex[:12]
        arrays = {"pooled": feats.pooled, "var": feats.var_state, "keys": np.asarray(list(keys), dtype="S32")}
        for name, arr in arrays.items():  # keys last: a shard without keys is ignored
            tmp = self.dir / f".{name}-{sid}.tmp.npy"
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, self.dir / f"{name}-{sid}.npy")
        n = len(self._shards)
        self._shards.append((feats.pooled, feats.var_state))
        for row, key in enumerate(keys):
            self._index[key] = (n, row)


@torch.inference_mode()
def _backbone_features(encoder: GaussianEncoder, texts: Sequence[str], max_length: int) -> Features:
    batch = {k: v.to(encoder.device) for k, v in encoder.tokenize(texts, max_length).items()}
    pooled, var_in = encoder.backbone_features(**batch)
    return Features(pooled.float().cpu().numpy(), var_in.float().cpu().numpy())


def compute_features(
    encoder: GaussianEncoder,
    texts: Sequence[str],
    *,
    max_length: int,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    desc: str = "Backbone features",
) -> Features:
    """Backbone features of ``texts`` (computed once, then read from ``cache_dir``).

    Args:
        encoder: The encoder whose (frozen) backbone and tokenisation are used.
        texts: Texts, in the order wanted.
        max_length: Token budget (``config.max_length`` for documents, ``query_max_length`` for queries).
        cache_dir: Cache root (``None``: no cache).
        batch_size: Texts per backbone pass (texts are sorted by length first).
        show_progress: A tqdm bar over batches.
        desc: Label of the bar.

    Returns:
        :class:`Features` in the order of ``texts``.

    Examples:
        >>> f = compute_features(encoder, ["hello world"], max_length=32)  # doctest: +SKIP
        >>> f.pooled.shape  # doctest: +SKIP
        (1, 384)
    """
    texts = list(texts)
    hidden = int(encoder.backbone.config.hidden_size)
    if not texts:
        empty = np.zeros((0, hidden), np.float32)
        return Features(empty, empty.copy())
    keys = [text_key(t, max_length) for t in texts]
    cache = FeatureCache(cache_dir, backbone_fingerprint(encoder)) if cache_dir is not None else None
    todo_keys: dict[bytes, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if (cache is None or k not in cache) and k not in todo_keys:
            todo_keys[k] = t
    if todo_keys:
        new_keys = list(todo_keys)
        new_texts = [todo_keys[k] for k in new_keys]
        order = np.argsort([-len(t) for t in new_texts], kind="stable")
        pooled_parts, var_parts = [], []
        save_every = 64 * batch_size
        done = 0
        with eval_mode(encoder):  # shared with concurrent encodings (no dropout, mode restored)
            for start in tqdm(
                range(0, len(order), batch_size),
                desc=desc,
                disable=not progress_enabled(show_progress),
                unit="batch",
                leave=False,
            ):
                idx = order[start : start + batch_size]
                f = _backbone_features(encoder, [new_texts[i] for i in idx], max_length)
                pooled_parts.append(f.pooled)
                var_parts.append(f.var_state)
                if cache is not None and sum(len(p) for p in pooled_parts) >= save_every:
                    n = sum(len(p) for p in pooled_parts)
                    cache.add(
                        [new_keys[i] for i in order[done : done + n]],
                        Features(np.concatenate(pooled_parts), np.concatenate(var_parts)),
                    )
                    done += n
                    pooled_parts, var_parts = [], []
        rest = Features(
            np.concatenate(pooled_parts) if pooled_parts else np.zeros((0, hidden), np.float32),
            np.concatenate(var_parts) if var_parts else np.zeros((0, hidden), np.float32),
        )
        if cache is None:
            computed = {new_keys[i]: (rest.pooled[j], rest.var_state[j]) for j, i in enumerate(order)}
            return Features(np.stack([computed[k][0] for k in keys]), np.stack([computed[k][1] for k in keys]))
        cache.add([new_keys[i] for i in order[done:]], rest)
    assert cache is not None
    return cache.get(keys)


def heads_forward(
    encoder: GaussianEncoder, pooled: torch.Tensor, var_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads of ``encoder`` applied to cached features: same result as ``encoder.forward``.

    Examples:
        >>> mean, var = heads_forward(encoder, pooled, var_state)  # doctest: +SKIP
    """
    return encoder.heads(pooled, var_state)
