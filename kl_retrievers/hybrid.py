"""Hybrid retrieval: BM25 and the ``-KL`` store over the same documents, fused per query.

:class:`KLHybridStore` holds a BM25 index (``bm25s``, Lucene variant, ``k1 = 0.9``, ``b = 0.4``,
English stop words, the BM25 baseline's tokens stemmed in English by PyStemmer unless
``stemmer=None``) and a :class:`~kl_retrievers.index.KLStore`
over the same documents. ``add`` / ``upsert`` / ``delete`` change both halves; a metadata
filter (:mod:`kl_retrievers.filters`) restricts both halves before anything is ranked; ``save``
writes both halves and a JSON config into one folder, atomically and without pickle; ``load``
refuses a folder whose halves disagree.

A search takes the top ``candidates`` (default 100) documents of each half, scores every
candidate of the union with both retrievers (the exact ``-KL`` and the BM25 score) and fuses:

* ``"rrf"``: reciprocal rank fusion, ``sum over the two lists of 1 / (rrf_k + rank)`` with
  ``rrf_k = 60`` and ranks from 1 (a document absent from a list gets nothing from it); both
  lists rank exactly tied scores the later added (higher row) first, so duplicate documents keep
  one order in both lists and in the fused one;
* ``"convex"``: ``w * n(-KL) + (1 - w) * n(BM25)`` with one fixed dense weight ``w`` in
  ``[0, 1]``, ``n`` a min-max (``"minmax"``) or z-score (``"zscore"``) normalisation over the
  candidates;
* ``"adaptive"``: the same convex sum, but ``w`` is chosen per query from the query's signals
  (:data:`SIGNALS`: statistics of the two candidate lists and, optionally, the query uncertainty,
  the mean log-variance of its Gaussian, which of the shipped parameter files only the default model's
  stemmed one reads: cross-validation on the training sets chose it by a tie in the fourth decimal),
  ``w = sigmoid(bias + sum_i coef_i * (s_i - center_i) / scale_i)``,
  with parameters fitted on training queries only (:func:`fit_adaptive`;
  ``python benchmarks/hybrid.py --fit`` for the default model). The fitted parameters of the
  default model ship in ``kl_retrievers/data/hybrid_adaptive.json``.

Every :class:`HybridResult` carries its fused score and both raw scores (``neg_kl``, higher is
better, and ``bm25``), its rank in each list, the dense weight used and the query uncertainty,
so a caller can threshold, calibrate or explain a result.

BM25 statistics (IDF, average length) depend on the whole corpus, so after a change the BM25
index is rebuilt at the next search, from each document's term counts kept in memory (a loaded store
counts its stored texts again at its first change, while searches go on): add documents in batches.
The index (bm25s' Lucene weights, computed with numpy, and scipy where installed) is saved in
``bm25s``' file layout, which ``bm25s.BM25.load`` reads; ``bm25s`` itself is imported only for its
English stop words.

Examples:
    >>> import numpy as np
    >>> from kl_retrievers.gaussian import Gaussians
    >>> rng = np.random.default_rng(0)
    >>> g = Gaussians(rng.normal(size=(3, 4)), np.ones((3, 4)))
    >>> store = KLHybridStore(fusion="rrf")
    >>> _ = store.add(["red apples", "green pears", "ripe red cherries"], gaussians=g, ids=["a", "p", "c"])
    >>> hits = store.search("red fruit", k=2, query_gaussians=g[2])
    >>> hits[0].id, round(hits[0].score, 4)
    ('c', 0.0325)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, cast, get_args

import numpy as np

from kl_retrievers._checks import check_bool
from kl_retrievers._encoding import check_texts, query_batch_size, require_modules
from kl_retrievers._errors import NothingSavedError
from kl_retrievers._io import (
    atomic_dir,
    check_replace_target,
    describe_kl_folder,
    fsync_dir,
    fsync_file,
    library_version,
    load_unchanged,
    read_json_object,
    recover_dir,
    user_path,
)
from kl_retrievers._score import check_score
from kl_retrievers.filters import MetadataFilter
from kl_retrievers.gaussian import SCORE_DIRECTION, SCORE_NAME, Gaussians, check_k, neg_kl
from kl_retrievers.gaussian import is_real_number as _is_real
from kl_retrievers.hub import sha256_file as _sha256
from kl_retrievers.index import DeleteReport, KLStore, StoredDocument, StoreFormatError
from kl_retrievers.runs import top_k
from kl_retrievers.store._base import (
    _READING_WRITES,
    EncoderLike,
    _check_texts_and_ids,
    _check_texts_container,
    _id_list,
    _metadata_list,
    _NotCopyable,
    _refuse_model_name,
    _refuse_unordered,
    _RWLock,
)
from kl_retrievers.store._format import check_npy_header
from kl_retrievers.store.faiss import _write_proceeds

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTIVE_PARAMS_FILE",
    "ADAPTIVE_PARAMS_PATH",
    "BM25_TOKEN_PATTERN",
    "DEFAULT_CANDIDATES",
    "DEFAULT_STEMMER",
    "FUSION_MODES",
    "NORMALIZATIONS",
    "RRF_K",
    "SIGNALS",
    "AdaptiveParams",
    "Candidates",
    "FusionConfig",
    "FusionMode",
    "HybridFormatError",
    "HybridResult",
    "KLHybridStore",
    "Normalization",
    "convex_scores",
    "fit_adaptive",
    "fuse",
    "ndcg_at_k",
    "ndcg_curves",
    "normalize_scores",
    "query_signals",
    "rrf_scores",
]

#: Fusion modes: reciprocal rank fusion, a convex combination of normalised scores, the per-query adaptive weight.
FusionMode = Literal["rrf", "convex", "adaptive"]
#: The values of :data:`FusionMode`, which the runtime checks read.
FUSION_MODES: tuple[FusionMode, ...] = get_args(FusionMode)
#: Score normalisations of convex fusion: min-max to ``[0, 1]``, z-score.
Normalization = Literal["minmax", "zscore"]
#: The values of :data:`Normalization`, which the runtime checks read.
NORMALIZATIONS: tuple[Normalization, ...] = get_args(Normalization)
#: The RRF constant of Cormack et al. (2009).
RRF_K = 60
#: Documents taken from each half per query before fusion.
DEFAULT_CANDIDATES = 100
#: The BM25 half's stemmer (PyStemmer's English Snowball stemmer), chosen on training data (stop 42: BM25 and the
#: adaptive fusion gain on every training set; docs/research-notes.md). A save from before the option records
#: none and loads unstemmed.
DEFAULT_STEMMER = "english"
#: The BM25 baseline's tokens (kl_retrievers.baselines.BM25_TOKEN_PATTERN): one-character tokens kept.
BM25_TOKEN_PATTERN = r"(?u)\b\w+\b"
#: Per-query signals the adaptive weight reads (see :func:`query_signals`).
SIGNALS: tuple[str, ...] = (
    "uncertainty",
    "dense_gap12",
    "dense_max_z",
    "bm25_gap12",
    "bm25_max_z",
    "bm25_coverage",
    "bm25_matched",
    "overlap10",
)
#: Name of the adaptive parameters a model folder may ship (bundled ``bge-small-unit-variance`` does); they
#: win over the default model's for an encoder of that model.
ADAPTIVE_PARAMS_FILE = "hybrid_adaptive.json"
#: A folder's parameters fitted on unstemmed BM25, beside the stemmed ones (the default model's, shipped until
#: stop 42; bundled ``bge-small-unit-variance``'s since stop 43): a store with ``stemmer=None`` gets these.
_UNSTEMMED_PARAMS_FILE = "hybrid_adaptive.unstemmed.json"
#: The fitted adaptive parameters of the package's default model.
ADAPTIVE_PARAMS_PATH = Path(__file__).resolve().parent / "data" / ADAPTIVE_PARAMS_FILE
#: The default model's parameters fitted on unstemmed BM25 (e.g. for a store saved before the option).
_UNSTEMMED_PARAMS_PATH = ADAPTIVE_PARAMS_PATH.with_name(_UNSTEMMED_PARAMS_FILE)

#: 2: ``bm25.stemmer`` is set (a release that reads only 1 would ignore it and search unstemmed);
#: a save without a stemmer still writes 1, which every release reads.
FORMAT_VERSION = 2
_FORMAT_NAME = "kl-retrievers/hybrid"
_ADAPTIVE_FORMAT = "kl-retrievers/hybrid-adaptive"
_CONFIG = "hybrid.json"
_KL_DIR = "kl"
_BM25_DIR = "bm25"
_BM25_IDS = "ids.json"
_BM25_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy")
_BM25_VOCAB = "vocab.index.json"
_BM25_PARAMS = "params.index.json"
_EXAMPLES = 5
#: The refusal of a write inside :meth:`KLHybridStore.consistent` (it would wait for the thread's own read lock).
_CONSISTENT_WRITES = (
    "this thread is inside KLHybridStore.consistent(), which holds the store's read lock, and cannot modify it "
    "there (add, upsert and delete wait for every read to end, its own too); modify the store after the with block"
)
# A file in each half's folder holding the save's token (also in hybrid.json): halves of two saves disagree on it.
_SAVE_TOKEN_FILE = "hybrid_save.json"
_SAVE_TOKEN_KEY = "save_token"
# The files hybrid.json's ``files`` records a checksum of (:func:`_checked_files`): these always (the save tokens'
# since there are tokens), the index files when BM25 is indexed. Load refuses any other name (a drive, UNC or
# absolute name would be opened outside the folder on Windows) and a table lacking one of them (its file would go
# unchecked).
_TOKEN_FILES = (f"{_KL_DIR}/{_SAVE_TOKEN_FILE}", f"{_BM25_DIR}/{_SAVE_TOKEN_FILE}")
_CHECKED_FILES = (f"{_KL_DIR}/config.json", f"{_BM25_DIR}/{_BM25_IDS}", *_TOKEN_FILES)
_CHECKED_INDEX_FILES = tuple(f"{_BM25_DIR}/{name}" for name in (*_BM25_FILES, _BM25_VOCAB, _BM25_PARAMS))
# Why the halves of a store in memory disagree (the end of its check_sync / save / search message).
_CHANGED_DIRECTLY = (
    "the KL half (.kl, or the kl_store it wraps) was changed directly: change documents only through the hybrid "
    "store (add, upsert, delete), which keeps both halves in sync"
)


class HybridFormatError(StoreFormatError):
    """A hybrid store folder that cannot be loaded: missing files, a bad config, or halves that disagree."""


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _check_mode(mode: Any) -> FusionMode:
    if not isinstance(mode, str) or mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; allowed modes: {', '.join(repr(m) for m in FUSION_MODES)}")
    return cast(FusionMode, mode)


def _check_weight(weight: Any, name: str = "weight") -> float:
    if not _is_real(weight) or not math.isfinite(float(weight)) or not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (the dense side's share); got {weight!r}")
    return float(weight)


def _check_normalization(normalization: Any) -> Normalization:
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}; allowed: {', '.join(repr(n) for n in NORMALIZATIONS)}"
        )
    return cast(Normalization, normalization)


def _check_positive(value: Any, name: str, *, integer: bool) -> Any:
    ok = isinstance(value, (int, np.integer)) if integer else _is_real(value)
    if not ok or isinstance(value, bool) or not math.isfinite(float(value)) or value <= 0:
        what = "an integer >= 1" if integer else "a finite number > 0"
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class FusionConfig:
    """How the two candidate lists are fused; every field is checked when built.

    Args:
        mode: ``"rrf"``, ``"convex"`` or ``"adaptive"``.
        weight: The dense weight of ``"convex"``, in ``[0, 1]`` (1: ``-KL`` only, 0: BM25 only).
        normalization: Score normalisation of ``"convex"``: ``"minmax"`` or ``"zscore"``
            (``"adaptive"`` uses the one its parameters were fitted with).
        rrf_k: The RRF constant (> 0).
        candidates: Documents taken from each half per query (>= 1; at least ``k`` are taken).

    Raises:
        ValueError: An unknown mode or normalisation, a weight outside ``[0, 1]``, or a
            non-positive ``rrf_k`` / ``candidates``; the message names the value and what is allowed.

    Examples:
        >>> FusionConfig("convex", weight=0.3).weight
        0.3
        >>> FusionConfig("convex", weight=1.5)
        Traceback (most recent call last):
        ValueError: weight must be a number in [0, 1] (the dense side's share); got 1.5
    """

    mode: FusionMode = "adaptive"
    weight: float = 0.5
    normalization: Normalization = "minmax"
    rrf_k: float = RRF_K
    candidates: int = DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _check_mode(self.mode))
        object.__setattr__(self, "weight", _check_weight(self.weight))
        object.__setattr__(self, "normalization", _check_normalization(self.normalization))
        object.__setattr__(self, "rrf_k", _check_positive(self.rrf_k, "rrf_k", integer=False))
        object.__setattr__(self, "candidates", _check_positive(self.candidates, "candidates", integer=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "mode": self.mode,
            "weight": self.weight,
            "normalization": self.normalization,
            "rrf_k": self.rrf_k,
            "candidates": self.candidates,
        }

    def replace(self, **changes: Any) -> FusionConfig:
        """A copy with some fields changed (``None`` values are ignored), checked again."""
        fields = self.to_dict()
        fields.update({key: value for key, value in changes.items() if value is not None})
        return FusionConfig(**fields)

    def for_call(
        self,
        fusion: FusionMode | None = None,
        weight: float | None = None,
        normalization: Normalization | None = None,
        *,
        what: str = "this call",
    ) -> FusionConfig:
        """The fusion of one search (or retriever): :meth:`replace`, refusing a ``weight`` or ``normalization`` the
        fusion would ignore (given with ``"rrf"`` or ``"adaptive"``).

        Args:
            fusion: The fusion mode (``None``: this config's).
            weight: The convex weight given (``None``: not given, this config's).
            normalization: The convex normalisation given (``None``: not given, this config's).
            what: What fuses, for the message (``"this call"``, ``"this retriever"``).

        Raises:
            ValueError: A bad value, or ``weight`` / ``normalization`` given with a fusion other than ``"convex"``.

        Examples:
            >>> FusionConfig("convex").for_call(weight=0.3).weight
            0.3
            >>> FusionConfig("convex").for_call("rrf", weight=0.3)
            Traceback (most recent call last):
            ValueError: weight=0.3 applies to convex fusion only; this call fuses with 'rrf' ...
        """
        config = self.replace(mode=fusion, weight=weight, normalization=normalization)
        _refuse_convex_only(config.mode, weight, normalization, what)
        return config


def _refuse_convex_only(mode: str, weight: Any, normalization: Any, what: str) -> None:
    """Refuse a ``weight`` or ``normalization`` given with a fusion mode other than ``"convex"`` (it would be ignored).

    ``"rrf"`` fuses ranks, not scores; ``"adaptive"`` picks its weight per query and normalises the
    scores as its parameters were fitted (:attr:`AdaptiveParams.normalization`).

    Args:
        mode: The (checked) fusion mode.
        weight: The weight given (``None``: not given).
        normalization: The normalisation given (``None``: not given).
        what: What fuses, for the message (``"this call"``, ``"this store"``, ``"this retriever"``).

    Raises:
        ValueError: Either is given and ``mode`` is not ``"convex"``, naming the value, the mode and the remedy.

    Examples:
        >>> _refuse_convex_only("adaptive", None, "zscore", "this call")
        Traceback (most recent call last):
        ValueError: normalization='zscore' applies to convex fusion only; this call fuses with 'adaptive', ...
    """
    if mode == "convex":
        return
    if weight is not None:
        raise ValueError(
            f"weight={weight!r} applies to convex fusion only; {what} fuses with {mode!r} "
            "(pass fusion='convex', or leave weight out)"
        )
    if normalization is not None:
        why = (
            "which fuses ranks, not scores"
            if mode == "rrf"
            else "which normalises the scores as its adaptive parameters were fitted (AdaptiveParams.normalization)"
        )
        raise ValueError(
            f"normalization={normalization!r} applies to convex fusion only; {what} fuses with {mode!r}, {why} "
            "(pass fusion='convex', or leave normalization out)"
        )


#: The default fusion settings (the weight and normalisation a store gets when none is given).
_DEFAULT_FUSION = FusionConfig()


# --------------------------------------------------------------------------------------
# Adaptive parameters
# --------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64))))


@dataclass(frozen=True)
class AdaptiveParams:
    """The per-query dense weight ``w = sigmoid(bias + sum_i coef_i * (s_i - center_i) / scale_i)``.

    ``s_i`` are the query's :data:`SIGNALS`; ``w`` is always in ``[0, 1]``. Saved as readable
    JSON (:meth:`to_dict`); :meth:`default` reads the parameters fitted for the package's
    default model.

    Attributes:
        signals: Signal names, in the order of ``center``, ``scale`` and ``coef``.
        center: Training mean of each signal.
        scale: Training standard deviation of each signal (> 0).
        coef: Coefficient of each standardised signal.
        bias: Intercept (logit of the weight of an average query).
        normalization: Score normalisation the weight was fitted with (``"minmax"`` or ``"zscore"``).
        candidates: Candidate depth the signals were computed at.
        model: The encoder the parameters were fitted for (the uncertainty is model-specific).
        info: Free-form facts: training data, objective, command.

    Examples:
        >>> p = AdaptiveParams(("uncertainty",), (0.0,), (1.0,), (-2.0,), 0.0, "minmax")
        >>> round(p.weight({"uncertainty": 1.0}), 4)
        0.1192
    """

    signals: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    bias: float
    normalization: Normalization = "minmax"
    candidates: int = DEFAULT_CANDIDATES
    model: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _arrays: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sig = tuple(self.signals)
        unknown = [s for s in sig if s not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown adaptive signal(s) {unknown}; allowed: {list(SIGNALS)}")
        if len(set(sig)) != len(sig):
            raise ValueError(f"adaptive signals must be distinct; got {list(sig)}")
        for name in ("center", "scale", "coef"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != len(sig):
                raise ValueError(f"adaptive {name} has {len(values)} values for {len(sig)} signals")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"adaptive {name} must be finite; got {list(values)}")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.scale):
            raise ValueError(f"adaptive scale values must be > 0; got {list(self.scale)}")
        if not _is_real(self.bias) or not math.isfinite(float(self.bias)):
            raise ValueError(f"adaptive bias must be a finite number; got {self.bias!r}")
        object.__setattr__(self, "signals", sig)
        object.__setattr__(self, "bias", float(self.bias))
        object.__setattr__(self, "normalization", _check_normalization(self.normalization))
        object.__setattr__(self, "candidates", _check_positive(self.candidates, "candidates", integer=True))
        arrays = (np.asarray(self.center), np.asarray(self.scale), np.asarray(self.coef))
        object.__setattr__(self, "_arrays", arrays)

    @property
    def bm25_stemmer(self) -> str | None:
        """The stemmer of the BM25 half these parameters were fitted with (``info["bm25_stemmer"]``).

        Parameters that do not record one were fitted before the option existed, on unstemmed BM25 (``None``).
        """
        stemmer = self.info.get("bm25_stemmer")
        return stemmer if isinstance(stemmer, str) else None

    def weights(self, signals: np.ndarray) -> np.ndarray:
        """Dense weights for a matrix of signals, shape ``(n, len(self.signals))``, each in ``[0, 1]``."""
        x = np.asarray(signals, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.signals):
            raise ValueError(f"signals must have shape (n, {len(self.signals)}); got {x.shape}")
        center, scale, coef = self._arrays
        return np.clip(_sigmoid(self.bias + ((np.nan_to_num(x) - center) / scale) @ coef), 0.0, 1.0)

    def weight(self, signals: Mapping[str, float]) -> float:
        """The dense weight of one query from its signals (a missing signal counts as its centre)."""
        center, scale, coef = self._arrays
        row = np.fromiter(
            (signals.get(name, c) for name, c in zip(self.signals, self.center, strict=True)),
            dtype=np.float64,
            count=len(self.signals),
        )
        logit = self.bias + float(((np.nan_to_num(row) - center) / scale) @ coef)
        return min(1.0, max(0.0, 0.5 * (1.0 + math.tanh(0.5 * logit))))

    def to_dict(self) -> dict[str, Any]:
        """A readable JSON object (signals keyed by name)."""
        return {
            "format": _ADAPTIVE_FORMAT,
            "format_version": 1,
            "library_version": library_version(),
            "model": self.model,
            "weight_formula": (
                "dense_weight = 1 / (1 + exp(-(bias + sum_i coef[i] * (signal[i] - center[i]) / scale[i]))); "
                "fused = dense_weight * n(neg_kl) + (1 - dense_weight) * n(bm25), n = normalization over the candidates"
            ),
            "normalization": self.normalization,
            "candidates": self.candidates,
            "bias": self.bias,
            "signals": list(self.signals),
            "coef": dict(zip(self.signals, self.coef, strict=True)),
            "center": dict(zip(self.signals, self.center, strict=True)),
            "scale": dict(zip(self.signals, self.scale, strict=True)),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "adaptive parameters") -> AdaptiveParams:
        """Parameters from :meth:`to_dict`'s JSON; a malformed object raises ``ValueError`` naming ``where``."""
        try:
            if data.get("format") != _ADAPTIVE_FORMAT:
                raise ValueError(f"field 'format' is {data.get('format')!r}, expected {_ADAPTIVE_FORMAT!r}")
            if data.get("format_version", 1) != 1:
                raise ValueError(f"format_version {data.get('format_version')!r} is newer than this release reads (1)")
            signals = list(data["signals"])
            return cls(
                signals=tuple(signals),
                center=tuple(data["center"][s] for s in signals),
                scale=tuple(data["scale"][s] for s in signals),
                coef=tuple(data["coef"][s] for s in signals),
                bias=data["bias"],
                normalization=data.get("normalization", "minmax"),
                candidates=data.get("candidates", DEFAULT_CANDIDATES),
                model=data.get("model"),
                info=dict(data.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: not valid adaptive fusion parameters ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AdaptiveParams:
        """Read parameters from a JSON file."""
        source = user_path(path)
        try:
            data = _json_in(source, ValueError)
        except FileNotFoundError:
            raise FileNotFoundError(f"no adaptive fusion parameters at {source}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object")
        return cls.from_dict(data, str(source))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as indented JSON."""
        from kl_retrievers._io import atomic_file

        target = user_path(path)
        with atomic_file(target) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def default(cls, stemmer: str | None = DEFAULT_STEMMER) -> AdaptiveParams:
        """The parameters fitted for the package's default model (``kl_retrievers/data/hybrid_adaptive.json``).

        Args:
            stemmer: The BM25 stemmer of the store they are for: ``None`` (unstemmed BM25, e.g. a store
                saved before the option) gives the parameters fitted on unstemmed BM25
                (``hybrid_adaptive.unstemmed.json``, the ones shipped until stop 42); any other value the
                current ones (fitted with :data:`DEFAULT_STEMMER`).

        Raises:
            FileNotFoundError: When the file is missing; fit it with ``python benchmarks/hybrid.py --fit``.
        """
        path = _UNSTEMMED_PARAMS_PATH if stemmer is None and _UNSTEMMED_PARAMS_PATH.is_file() else ADAPTIVE_PARAMS_PATH
        if not path.is_file():
            raise FileNotFoundError(
                f"no fitted adaptive fusion parameters at {path}; fit them with "
                "`python benchmarks/hybrid.py --fit` or pass adaptive_params=..."
            )
        return cls.load(path)


# --------------------------------------------------------------------------------------
# Fusion (pure functions over one query's candidates)
# --------------------------------------------------------------------------------------


def normalize_scores(scores: np.ndarray | Sequence[float], method: Normalization = "minmax") -> np.ndarray:
    """Min-max (to ``[0, 1]``) or z-score normalisation; constant scores map to 0.

    Examples:
        >>> normalize_scores([1.0, 2.0, 3.0]).tolist()
        [0.0, 0.5, 1.0]
        >>> normalize_scores([1.0, 2.0, 3.0], "zscore").round(4).tolist()
        [-1.2247, 0.0, 1.2247]
    """
    method = _check_normalization(method)
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    if method == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    sd = float(x.std())
    return (x - float(x.mean())) / sd if sd > 0 else np.zeros_like(x)


def rrf_scores(dense_rank: np.ndarray, bm25_rank: np.ndarray, k: float = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion: ``1 / (k + rank_dense) + 1 / (k + rank_bm25)``, ranks from 1.

    Args:
        dense_rank: Each candidate's 1-based rank in the dense list, 0 when absent from it.
        bm25_rank: The same for the BM25 list.
        k: The RRF constant.

    Examples:
        >>> rrf_scores(np.array([1, 0]), np.array([2, 1])).round(5).tolist()
        [0.03252, 0.01639]
    """
    k = _check_positive(k, "rrf_k", integer=False)
    out = np.zeros(len(dense_rank), dtype=np.float64)
    for ranks in (np.asarray(dense_rank), np.asarray(bm25_rank)):
        present = ranks > 0
        out[present] += 1.0 / (k + ranks[present])
    return out


def convex_scores(
    neg_kl_scores: np.ndarray, bm25_scores: np.ndarray, weight: float, normalization: Normalization = "minmax"
) -> np.ndarray:
    """``weight * n(neg_kl) + (1 - weight) * n(bm25)`` over one query's candidates.

    Examples:
        >>> convex_scores(np.array([-1.0, -3.0]), np.array([0.0, 4.0]), 0.75).tolist()
        [0.75, 0.25]
    """
    w = _check_weight(weight)
    return w * normalize_scores(neg_kl_scores, normalization) + (1.0 - w) * normalize_scores(bm25_scores, normalization)


def _z_stats(top: np.ndarray) -> tuple[float, float]:
    """``(gap12, max_z)`` of a descending score list, in units of its standard deviation."""
    if top.size < 2:
        return 0.0, 0.0
    sd = float(top.std())
    if not sd > 0:
        return 0.0, 0.0
    return float(top[0] - top[1]) / sd, float(top[0] - top.mean()) / sd


def query_signals(
    uncertainty: float,
    dense_top: np.ndarray,
    bm25_top: np.ndarray,
    *,
    bm25_coverage: float,
    bm25_matched: float,
    overlap10: float,
) -> dict[str, float]:
    """One query's :data:`SIGNALS` from its two candidate lists (scores best first).

    Args:
        uncertainty: Mean log-variance of the query Gaussian (higher: more uncertain).
        dense_top: The dense list's ``-KL`` scores, best first.
        bm25_top: The BM25 list's scores (positive ones), best first.
        bm25_coverage: The best BM25 score over the sum of the IDFs of the query's distinct
            known terms (the share of the query's term weight the best document matches, about
            ``[0, 1]``).
        bm25_matched: Share of the query's tokens (stop words removed) found in the corpus.
        overlap10: Share of the dense top 10 also in the BM25 top 10.

    Returns:
        Name -> value for every name in :data:`SIGNALS`; ``*_gap12`` and ``*_max_z`` are the
        gap between the first two scores and the first score's distance from the list mean, in
        standard deviations of the list (0 for lists shorter than 2 or constant).

    Examples:
        >>> s = query_signals(0.5, np.array([3.0, 1.0, 0.0]), np.array([]), bm25_coverage=0.0,
        ...                   bm25_matched=0.0, overlap10=0.0)
        >>> round(s["dense_gap12"], 4), s["bm25_gap12"]
        (1.6036, 0.0)
    """
    d_gap, d_max = _z_stats(np.asarray(dense_top, dtype=np.float64))
    b_gap, b_max = _z_stats(np.asarray(bm25_top, dtype=np.float64))
    return {
        "uncertainty": float(uncertainty),
        "dense_gap12": d_gap,
        "dense_max_z": d_max,
        "bm25_gap12": b_gap,
        "bm25_max_z": b_max,
        "bm25_coverage": float(bm25_coverage),
        "bm25_matched": float(bm25_matched),
        "overlap10": float(overlap10),
    }


@dataclass
class Candidates:
    """One query's candidates: the union of both halves' top lists, scored by both retrievers.

    Attributes:
        ids: Candidate ids (the dense list first, best first, then the BM25-only ones).
        neg_kl: Exact ``-KL`` of each candidate (higher is better).
        bm25: BM25 score of each candidate (0 when no query term occurs in it).
        dense_rank: 1-based rank in the dense list, 0 when absent from it.
        bm25_rank: 1-based rank in the BM25 list, 0 when absent from it.
        uncertainty: Mean log-variance of the query Gaussian.
        signals: The query's :data:`SIGNALS`.
    """

    ids: list[str]
    neg_kl: np.ndarray
    bm25: np.ndarray
    dense_rank: np.ndarray
    bm25_rank: np.ndarray
    uncertainty: float
    signals: dict[str, float]

    def __repr__(self) -> str:
        """A short summary (the arrays hold one value per candidate): the count, the first ids and the list sizes.

        Examples:
            >>> Candidates(["a", "b", "c", "d"], np.zeros(4), np.zeros(4), np.array([1, 2, 3, 0]),
            ...            np.array([0, 1, 0, 2]), -0.5, {"bm25_matched": 1.0})
            Candidates(4 ids ['a', 'b', 'c', ...], in dense list: 3, in BM25 list: 2, uncertainty=-0.5, signals: 1)
        """
        ids = ", ".join(repr(doc_id) for doc_id in self.ids[:3]) + (", ..." if len(self.ids) > 3 else "")
        in_dense = int(np.count_nonzero(np.asarray(self.dense_rank) > 0))
        in_bm25 = int(np.count_nonzero(np.asarray(self.bm25_rank) > 0))
        return (
            f"Candidates({len(self.ids)} ids [{ids}], in dense list: {in_dense}, in BM25 list: {in_bm25}, "
            f"uncertainty={self.uncertainty:.4g}, signals: {len(self.signals)})"
        )

    def signal_vector(self, names: Sequence[str] = SIGNALS) -> np.ndarray:
        """The signals as a vector in the order of ``names``."""
        return np.asarray([self.signals[n] for n in names], dtype=np.float64)

    def at_depth(self, depth: int) -> Candidates:
        """These candidates as a search ``depth`` documents deep per half finds them, without searching again.

        The top ``depth`` of each half's list (the dense list first, then the BM25-only ones in BM25
        order, as :meth:`KLHybridStore.candidates` orders them), with the ranks beyond ``depth`` cleared
        and the :data:`SIGNALS` recomputed from the shorter lists. Equal to a search at ``depth`` (with
        the same filter: it is not called again) up to ties and an approximate index's recall, whose
        deeper search is the better one. ``self`` when no list is deeper than ``depth``.

        Examples:
            >>> c = Candidates(["a", "b", "c"], np.array([-1.0, -2.0, -3.0]), np.array([0.0, 1.0, 2.0]),
            ...                np.array([1, 2, 0]), np.array([0, 2, 1]), 0.0,
            ...                {"bm25_coverage": 0.5, "bm25_matched": 1.0})
            >>> top1 = c.at_depth(1)
            >>> top1.ids, top1.dense_rank.tolist(), top1.bm25_rank.tolist()
            (['a', 'c'], [1, 0], [0, 1])
            >>> c.at_depth(2) is c
            True
        """
        depth = check_k(depth, "depth")
        d_rank, b_rank = np.asarray(self.dense_rank), np.asarray(self.bm25_rank)
        if max(int(d_rank.max(initial=0)), int(b_rank.max(initial=0))) <= depth:
            return self
        dense_pos = np.flatnonzero((d_rank > 0) & (d_rank <= depth))
        dense_pos = dense_pos[np.argsort(d_rank[dense_pos], kind="stable")]
        extra_pos = np.flatnonzero((b_rank > 0) & (b_rank <= depth) & ~((d_rank > 0) & (d_rank <= depth)))
        extra_pos = extra_pos[np.argsort(b_rank[extra_pos], kind="stable")]
        pos = np.concatenate([dense_pos, extra_pos]).astype(np.int64)
        new_d = np.where((d_rank[pos] > 0) & (d_rank[pos] <= depth), d_rank[pos], 0)
        new_b = np.where((b_rank[pos] > 0) & (b_rank[pos] <= depth), b_rank[pos], 0)
        neg, bm25 = np.asarray(self.neg_kl)[pos], np.asarray(self.bm25)[pos]
        bm25_top = np.sort(bm25[new_b > 0])[::-1]
        dense_ids = {self.ids[j] for j in pos[(new_d > 0) & (new_d <= 10)].tolist()}
        bm25_ids = {self.ids[j] for j in pos[(new_b > 0) & (new_b <= 10)].tolist()}
        signals = dict(self.signals)
        if {"bm25_coverage", "bm25_matched"} <= signals.keys():  # query-level ones, the same at any depth >= 1
            signals.update(
                query_signals(
                    self.uncertainty,
                    neg[new_d > 0],  # best first: the dense list's order
                    bm25_top,
                    bm25_coverage=signals["bm25_coverage"],
                    bm25_matched=signals["bm25_matched"],
                    overlap10=len(dense_ids & bm25_ids) / 10.0,
                )
            )
        return Candidates(
            [self.ids[j] for j in pos.tolist()], neg, bm25, new_d.astype(np.int64), new_b.astype(np.int64),
            self.uncertainty, signals,
        )  # fmt: skip


def fuse(
    candidates: Candidates, config: FusionConfig, params: AdaptiveParams | None = None
) -> tuple[np.ndarray, float | None]:
    """Fused scores of one query's candidates (higher is better) and the dense weight used.

    With an empty BM25 list (no query term in the corpus, or none allowed by the filter) the
    convex and adaptive modes use the dense side alone (weight 1: ``n(-KL)``, with the same
    normalisation ``n`` as any other query, so the fused scores keep one scale), and the RRF scores
    follow the dense ranks: every mode ranks the candidates as the dense list does.

    Args:
        candidates: One query's candidates (:meth:`KLHybridStore.fuse_candidates` gives them).
        config: The fusion mode and its settings.
        params: The adaptive weight's parameters; needed by ``"adaptive"``, ignored by the other modes.

    Returns:
        ``(scores, dense_weight)``; ``dense_weight`` is ``None`` for ``"rrf"``.

    Raises:
        ValueError: ``config.mode`` is ``"adaptive"`` and ``params`` is ``None``; the message says where
            parameters come from (:meth:`AdaptiveParams.default`, :meth:`AdaptiveParams.load`,
            :func:`fit_adaptive`, :meth:`KLHybridStore.adaptive_params`).
        TypeError: ``config.mode`` is ``"adaptive"`` and ``params`` is not an :class:`AdaptiveParams` (e.g. a
            path: read it with :meth:`AdaptiveParams.load`).

    Examples:
        >>> c = Candidates(["a", "b"], np.array([-1.0, -2.0]), np.array([0.0, 3.0]),
        ...                np.array([1, 2]), np.array([0, 1]), 0.0, {})
        >>> fuse(c, FusionConfig("convex", weight=0.25))[0].tolist()
        [0.25, 0.75]
    """
    if config.mode == "rrf":
        return rrf_scores(candidates.dense_rank, candidates.bm25_rank, config.rrf_k), None
    adaptive = params if config.mode == "adaptive" else None
    if config.mode == "adaptive" and not isinstance(adaptive, AdaptiveParams):
        where = (
            "AdaptiveParams.default() (the default model's), AdaptiveParams.load(path) (a JSON file such as a model "
            f"folder's {ADAPTIVE_PARAMS_FILE}), fit_adaptive(...) or a store's adaptive_params()"
        )
        if adaptive is None:
            raise ValueError(
                f"fusion mode 'adaptive' needs its parameters: params=AdaptiveParams(...); got params=None. Pass "
                f"{where}, or fuse with mode 'convex' or 'rrf', which need none"
            )
        raise TypeError(f"params must be an AdaptiveParams; got {adaptive!r} ({type(adaptive).__name__}): pass {where}")
    norm = adaptive.normalization if adaptive is not None else config.normalization
    if not (candidates.bm25_rank > 0).any():  # the BM25 side contributes nothing: w = 1
        return normalize_scores(candidates.neg_kl, norm), 1.0
    w = adaptive.weight(candidates.signals) if adaptive is not None else config.weight
    return convex_scores(candidates.neg_kl, candidates.bm25, w, norm), w


def _order(
    scores: np.ndarray,
    neg_kl_scores: np.ndarray,
    ids: Sequence[str] | None = None,
    row: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Candidate positions best first: fused score, ties broken by ``-KL``, then the later added first.

    Args:
        scores: The fused scores.
        neg_kl_scores: Each candidate's ``-KL``.
        ids: The candidates' ids, with ``row``: read only when two candidates tie on both scores.
        row: The store's row of each id (rows follow the order of addition): of candidates tied on both scores,
            the higher row (the later added) first, as :class:`~kl_retrievers.index.KLStore` ranks tied ``-KL``
            scores; an id it lacks goes last. ``None``: such ties keep the candidates' order.

    Examples:
        >>> _order(np.array([1.0, 1.0, 2.0]), np.zeros(3), ["a", "b", "c"], {"a": 0, "b": 1, "c": 2}).tolist()
        [2, 1, 0]
    """
    order = np.lexsort((-neg_kl_scores, -scores))
    if ids is None or row is None or order.size < 2:
        return order
    s, n = scores[order], neg_kl_scores[order]
    if not ((s[1:] == s[:-1]) & (n[1:] == n[:-1])).any():
        return order
    last = np.iinfo(np.int64).max  # an id the store lacks
    later_first = np.fromiter((-row[i] if i in row else last for i in ids), dtype=np.int64, count=len(ids))
    return np.lexsort((later_first, -neg_kl_scores, -scores))


def ndcg_at_k(ranked_ids: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with linear gains and ``log2(rank + 1)`` discounts (as trec_eval's ``ndcg_cut``).

    Examples:
        >>> round(ndcg_at_k(["b", "a"], {"a": 1}), 4)
        0.6309
    """
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(max(0, qrels.get(doc, 0)) * discounts[i] for i, doc in enumerate(ranked_ids[:k]))
    return float(dcg / float(np.dot(ideal, discounts[: len(ideal)])))


# --------------------------------------------------------------------------------------
# The BM25 half
# --------------------------------------------------------------------------------------


def _stopword_list(stopwords: str | Sequence[str] | None) -> list[str]:
    if stopwords is None:
        return []
    if isinstance(stopwords, str):
        if stopwords not in ("english", "en"):
            raise ValueError(f"stopwords must be 'english', a list of words or None; got {stopwords!r}")
        from kl_retrievers._bm25 import quiet_bm25s_logger

        quiet_bm25s_logger()  # importing bm25s sets its logger to DEBUG (a level the user set is kept)
        from bm25s.stopwords import STOPWORDS_EN

        return list(STOPWORDS_EN)
    words = list(stopwords)
    if not all(isinstance(w, str) for w in words):
        raise TypeError("stopwords must be strings")
    return words


def _check_stemmer(stemmer: Any) -> str | None:
    """``stemmer`` checked: ``None`` or a PyStemmer language name (a bad one fails now, not at the first add).

    Raises:
        TypeError: Not a string or ``None``.
        ImportError: A language is named but PyStemmer is not installed (naming the extra that installs it).
        ValueError: Not one of ``Stemmer.algorithms()`` (the message lists them).
    """
    if stemmer is None:
        return None
    if not isinstance(stemmer, str):
        raise TypeError(f"stemmer must be a PyStemmer language name (e.g. 'english') or None; got {stemmer!r}")
    try:
        import Stemmer
    except ImportError:
        default = " (the default)" if stemmer == DEFAULT_STEMMER else ""
        raise ModuleNotFoundError(
            f"stemmer={stemmer!r}{default} needs PyStemmer, which the core install of kl-retrievers leaves out; "
            'install it with: pip install "kl-retrievers[hybrid]" (or pip install PyStemmer), or pass stemmer=None '
            "for unstemmed BM25",
            name="Stemmer",
        ) from None
    allowed = sorted(Stemmer.algorithms())
    name = stemmer.strip().lower()  # 'English' is 'english'
    if name not in allowed:
        raise ValueError(
            f"stemmer {stemmer!r} is not a PyStemmer language; allowed: {', '.join(allowed)}, by its full name (ISO "
            "codes such as 'en' are not taken), or None: no stemming"
        )
    return name


def _token_regex(token_pattern: Any, *, saved: bool = False) -> re.Pattern[str]:
    r"""``token_pattern`` compiled, once checked: a string, an expression, one capture group at most, not matching "".

    Args:
        token_pattern: The pattern.
        saved: The pattern of a saved store: one that matches the empty string is accepted (stores saved
            before such patterns were refused worked, their empty tokens dropped); :meth:`KLHybridStore.load`
            warns about it.

    Raises:
        TypeError: ``token_pattern`` is not a string (a compiled ``re.Pattern`` included: the store saves the
            pattern's text, so pass ``pattern.pattern`` with any flags written inline, e.g. ``(?i)``).
        ValueError: ``token_pattern`` is not a regular expression, has more than one capture group, or
            (unless ``saved``) matches the empty string (``""`` or ``r"\w*"``: empty tokens are dropped, and
            ``""`` would index nothing). A pattern whose capture group alone can be empty
            (``r"(\d*)[a-z]+"``) is accepted; its empty tokens are dropped too. The message names the value.

    Examples:
        >>> _token_regex(r"(?u)\b\w+\b").findall("Two words")
        ['Two', 'words']
        >>> _token_regex(r"\w*")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: token_pattern '\\w*' matches an empty string, ...
    """
    if isinstance(token_pattern, re.Pattern):
        raise TypeError(
            f"token_pattern must be a string; got the compiled pattern {token_pattern!r}: the store saves the "
            "pattern's text, so pass pattern.pattern, with any flags written inline, e.g. (?i)"
        )
    if not isinstance(token_pattern, str):
        raise TypeError(
            f"token_pattern must be a regular expression as a string (e.g. r'{BM25_TOKEN_PATTERN}'); got "
            f"{token_pattern!r} ({type(token_pattern).__name__})"
        )
    try:
        compiled = re.compile(token_pattern)
    except re.error as exc:
        raise ValueError(f"token_pattern {token_pattern!r} is not a valid regular expression: {exc}") from None
    if compiled.groups > 1:  # re.findall would return tuples of the groups, not tokens
        raise ValueError(
            f"token_pattern {token_pattern!r} has {compiled.groups} capture groups; at most one is allowed "
            "(a token is the whole match, or the text of its one capture group): make the others "
            "non-capturing, (?:...)"
        )
    if not saved and compiled.fullmatch("") is not None:  # "" itself: every match empty, nothing indexed
        raise ValueError(
            f"token_pattern {token_pattern!r} matches an empty string, so it gives empty tokens (they are "
            f"dropped); a token needs at least one character: use + instead of * or ?, e.g. r'{BM25_TOKEN_PATTERN}'"
        )
    return compiled


class _Tokenizer:
    """bm25s' tokenisation (lower-case, regex tokens, stop words dropped, then stemmed when a stemmer is set).

    The same object tokenises the corpus (add, upsert, a loaded store's texts) and the queries (BM25
    scores and the ``bm25_matched`` / ``bm25_coverage`` signals), so both sides always agree.
    """

    def __init__(
        self,
        stopwords: str | Sequence[str] | None,
        token_pattern: str,
        stemmer: str | None = None,
        *,
        saved: bool = False,
    ) -> None:
        self.stopwords_spec: Any = stopwords if stopwords is None or isinstance(stopwords, str) else list(stopwords)
        self.stemmer = _check_stemmer(stemmer)
        self._split = _token_regex(token_pattern, saved=saved).findall
        self.token_pattern = token_pattern
        self._stop: frozenset[str] | None = None
        # one PyStemmer object per thread (they are not thread-safe), made at the first use: a tokenizer
        # without a stemmer holds no thread-local (it copies and pickles as before)
        self._local: threading.local | None = None

    def _stem_words(self) -> Callable[[list[str]], list[str]]:
        local = self._local
        if local is None:
            local = self._local = threading.local()
        stem = getattr(local, "stem", None)
        if stem is None:
            import Stemmer

            stem = local.stem = Stemmer.Stemmer(self.stemmer).stemWords
        return stem  # type: ignore[no-any-return]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_local": None}  # the per-thread stemmers are made again where they are used

    def __call__(self, text: str) -> list[str]:
        if self._stop is None:
            self._stop = frozenset(_stopword_list(self.stopwords_spec))
        stop = self._stop
        tokens = [t for t in self._split(text.lower()) if t and t not in stop]
        if self.stemmer is not None and tokens:  # as bm25s.tokenize: stop words go first, then the stemmer
            tokens = self._stem_words()(tokens)
        return tokens


def _bm25_settings(
    k1: Any, b: Any, stopwords: Any, token_pattern: Any, stemmer: Any = None, *, saved: bool = False
) -> tuple[float, float, _Tokenizer]:
    """``k1``, ``b`` and the tokenizer, each checked (a bad value fails now, not at the first add).

    ``saved``: the settings of a saved store (a ``token_pattern`` matching "" is accepted, see :func:`_token_regex`).
    """
    k1 = _check_positive(k1, "k1", integer=False)
    if not _is_real(b) or not 0.0 <= float(b) <= 1.0:
        raise ValueError(f"b must be a number in [0, 1]; got {b!r}")
    tokenizer = _Tokenizer(stopwords, token_pattern, stemmer, saved=saved)
    _stopword_list(stopwords)
    return float(k1), float(b), tokenizer


@dataclass
class _CSC:
    """A BM25 index as ``bm25s`` lays it out: per vocabulary column, the documents and their BM25 weights."""

    data: np.ndarray  # float32 weight of each (token, document) pair, column by column
    indices: np.ndarray  # int32 document row of each pair
    indptr: np.ndarray  # column t spans data[indptr[t]:indptr[t + 1]]
    vocab: dict[str, int]  # token -> column


class _BM25Half:
    """Term counts, metadata and a BM25 index (Lucene BM25 as ``bm25s`` computes it) over the same ids as the KL half.

    Each document's tokens are counted as soon as its text is tokenised (:meth:`count`, outside the store's lock)
    and numbered when it is put (its distinct terms, numbered in a vocabulary that grows as documents come,
    and their counts: one small int32 array), so that :meth:`build` computes the whole
    index in a few vectorised passes over those counts (:func:`kl_retrievers._bm25.lucene_index`, bm25s'
    weights bit for bit) instead of ``bm25s.BM25.index``'s Python loops over every token of every document.
    """

    def __init__(self, tokenizer: _Tokenizer, k1: float, b: float) -> None:
        self.tokenizer = tokenizer
        self.k1 = k1
        self.b = b
        # id -> int32 array of shape (distinct terms, 2): each term's number in _vocab and its count; None: not
        # in memory (a loaded half), counted again from the texts on demand (recount)
        self._counts: dict[str, np.ndarray] | None = {}
        self._vocab: dict[str, int] = {}  # term -> number, in order of first use; terms no document holds any
        # more stay until build() finds them the majority (they never reach the index)
        self.metas: dict[str, dict[str, Any]] = {}
        self.csc: _CSC | None = None  # None when empty or no document has a token
        self.ids: list[str] = []  # the index's row order
        self.row: dict[str, int] = {}
        self.idf: np.ndarray = np.zeros(0)
        self.dirty = False

    def __len__(self) -> int:
        return len(self.metas)

    @property
    def counts(self) -> Mapping[str, np.ndarray] | None:
        """Each document's counted terms, read-only (``None``: not in memory, as in a loaded half: :meth:`recount`)."""
        return self._counts

    def count(self, text: str) -> Counter[str]:
        """The tokens of one text, counted: what :meth:`put` numbers (no state is read: callable without a lock)."""
        return Counter(self.tokenizer(text))

    def recount(self, texts: Mapping[str, str]) -> None:
        """Count every document afresh from ``{id: text}`` (in row order), each text as soon as it is tokenised.

        The new counts and vocabulary replace the old ones together, once all are counted.
        """
        self._counts, self._vocab = self.counted(texts)

    def counted(self, texts: Mapping[str, str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """What :meth:`recount` installs for ``{id: text}``: each document's numbered counts and their vocabulary.

        Reads no state of the half (callable without a lock, on texts read under one).
        """
        vocab: dict[str, int] = {}
        counts = {doc_id: self._number(self.count(text), vocab) for doc_id, text in texts.items()}
        return counts, vocab

    @staticmethod
    def _number(counted: Counter[str], vocab: dict[str, int]) -> np.ndarray:
        """One document's distinct terms (numbered in ``vocab``, new ones added) beside their counts, as int32."""
        pairs = np.empty((len(counted), 2), dtype=np.int32)
        pairs[:, 0] = [vocab.setdefault(term, len(vocab)) for term in counted]
        pairs[:, 1] = list(counted.values())
        return pairs

    def put(self, ids: Sequence[str], counted: list[Counter[str] | None], metas: Sequence[dict[str, Any]]) -> None:
        """Put documents with their counted tokens (:meth:`count`), numbered now; ``counted``'s items become None.

        Each document's :class:`~collections.Counter` is dropped from ``counted`` once numbered, so that the
        counters of a large batch and its numbered arrays are not all in memory at once.
        """
        assert self._counts is not None
        for j, (doc_id, meta) in enumerate(zip(ids, metas, strict=True)):
            tally = counted[j]
            counted[j] = None
            assert tally is not None
            self._counts.pop(doc_id, None)  # an upsert moves to the end, like the KL half
            self.metas.pop(doc_id, None)
            self._counts[doc_id] = self._number(tally, self._vocab)
            self.metas[doc_id] = meta
        self.dirty = True

    def remove(self, ids: Iterable[str]) -> None:
        assert self._counts is not None
        for doc_id in ids:
            self._counts.pop(doc_id, None)
            self.metas.pop(doc_id, None)
        self.dirty = True

    def build(self) -> None:
        """Rebuild the index from the term counts in memory (Lucene BM25, as ``bm25s.BM25.index`` builds it).

        The vocabulary is the live documents' terms (bm25s' after the same changes); its column order, unlike
        bm25s', does not depend on the hash seed.
        """
        assert self._counts is not None
        ids = list(self._counts)
        arrays = list(self._counts.values())
        sizes = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        csc = None
        if sizes.any():
            from kl_retrievers._bm25 import lucene_index

            terms, tf = np.concatenate(arrays).T
            live = np.bincount(terms, minlength=len(self._vocab)) > 0
            if live.all():
                vocab = dict(self._vocab)
            else:  # terms that only deleted or replaced documents held: not in the index (nor in bm25s')
                number = (np.cumsum(live) - 1).astype(np.int32)  # each live term's column
                terms = number[terms]
                if 2 * int(np.count_nonzero(live)) < live.size:  # mostly dead: renumber the documents' terms
                    self._compact(live, number)
                    vocab = dict(self._vocab)
                else:
                    names = list(self._vocab)
                    vocab = {names[g]: j for j, g in enumerate(np.flatnonzero(live).tolist())}
            data, indices, indptr = lucene_index(terms, tf, sizes, len(vocab), self.k1, self.b)
            csc = _CSC(data, indices, indptr, vocab)
        else:
            self._vocab = {}  # no document holds a term
        self.ids, self.row = ids, dict(zip(ids, range(len(ids)), strict=True))
        self.csc = csc
        self._set_idf()
        self.dirty = False

    def _compact(self, live: np.ndarray, number: np.ndarray) -> None:
        """Renumber the vocabulary to its ``live`` terms (``number``: each old number's new one) in every document.

        The renumbered arrays are new ones, and they replace the counts together with the new vocabulary at the
        end: an interruption part-way (``KeyboardInterrupt``, ``MemoryError``) leaves both as they were.
        """
        names = list(self._vocab)
        vocab = {names[g]: j for j, g in enumerate(np.flatnonzero(live).tolist())}
        assert self._counts is not None
        counts: dict[str, np.ndarray] = {}
        for doc_id, pairs in self._counts.items():
            renumbered = pairs.copy()
            renumbered[:, 0] = number[pairs[:, 0]]
            counts[doc_id] = renumbered
        self._counts, self._vocab = counts, vocab

    def _set_idf(self) -> None:
        if self.csc is None:
            self.idf = np.zeros(0)
            return
        df = np.diff(self.csc.indptr.astype(np.int64)).astype(np.float64)
        n = float(len(self.ids))
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))  # bm25s' Lucene IDF

    def scores(self, tokens: list[str]) -> tuple[np.ndarray, float, float]:
        """BM25 of every row for one query's tokens, the IDF mass of its distinct known terms and its matched share."""
        n = len(self.ids)
        csc = self.csc
        if csc is None or not tokens:
            return np.zeros(n), 0.0, 0.0
        token_ids = [csc.vocab[t] for t in tokens if t in csc.vocab]
        if not token_ids:
            return np.zeros(n), 0.0, 0.0
        # bm25s' get_scores_from_ids (a repeated query token counts again), in one bincount over the
        # CSC columns of the query's tokens instead of one np.add.at per token
        indptr = csc.indptr
        if len(token_ids) == 1:
            lo, hi = int(indptr[token_ids[0]]), int(indptr[token_ids[0] + 1])
            rows, weights = csc.indices[lo:hi], csc.data[lo:hi]
        else:
            spans = [(int(indptr[t]), int(indptr[t + 1])) for t in token_ids]
            rows = np.concatenate([csc.indices[lo:hi] for lo, hi in spans])
            weights = np.concatenate([csc.data[lo:hi] for lo, hi in spans])
        values = np.bincount(rows, weights=weights, minlength=n).astype(np.float64, copy=False)
        # summed in value order: the vocabulary's column order depends on the hash seed, the sum must not
        mass = float(np.sort(self.idf[np.unique(np.asarray(token_ids, dtype=np.int64))]).sum())
        return values, mass, len(token_ids) / len(tokens)

    def top_rows(self, scores: np.ndarray, mask: np.ndarray | None, depth: int) -> np.ndarray:
        """The ``depth`` best rows by ``scores`` (:meth:`scores`) among those above 0 that ``mask`` allows, best first.

        Exact ties put the later added (higher) row first: the dense list's order (``FaissEngine.tie_rank``), so that
        duplicate documents rank in one order in both lists and RRF does not split them. The rows
        :func:`~kl_retrievers.runs.top_k` keeps with ``tie_rank=-rows``: one partition of the matching rows' scores
        finds the ``depth``-th best score (the rows tied at it come in increasing order, the highest last), and
        :func:`~kl_retrievers.runs.top_k` orders only the rows kept.

        Examples:
            >>> _BM25Half(_Tokenizer(None, BM25_TOKEN_PATTERN), 0.9, 0.4).top_rows(
            ...     np.array([0.0, 2.0, 1.0, 2.0, 1.0, 1.0]), None, 3).tolist()
            [3, 1, 5]
        """
        allowed = scores > 0
        if mask is not None:
            allowed &= mask
        rows = np.flatnonzero(allowed)
        if rows.size > depth:
            values = scores[rows]
            cut = np.partition(values, rows.size - depth)[rows.size - depth]  # the depth-th best score
            above, tied = rows[values > cut], rows[values == cut]
            rows = np.concatenate([above, tied[tied.size - (depth - above.size) :]])
        return rows[top_k(scores[None, rows], depth, -rows)[0][0]]

    def mask(self, predicate: Callable[[Mapping[str, Any]], bool] | None) -> np.ndarray | None:
        """The rows ``predicate`` allows (``None``: no filter), calling it on every row's metadata."""
        if predicate is None:
            return None
        return np.fromiter((bool(predicate(self.metas[i])) for i in self.ids), dtype=bool, count=len(self.ids))

    def shared_mask(
        self,
        predicate: Callable[[Mapping[str, Any]], bool] | None,
        live_ids: list[str] | None,
        allowed: np.ndarray | None,
    ) -> np.ndarray | None:
        """:meth:`mask` from what the filter allowed in the KL half, calling it again only for ids the KL half lacks.

        Args:
            predicate: The compiled filter (``None``: no filter, no mask).
            live_ids: The KL half's live ids in row order (:meth:`KLStore._top_ids`).
            allowed: Whether the filter allowed each of ``live_ids``.

        The halves hold the same documents with the same metadata, and normally in the same order (both
        append, and an upsert moves a document to the end of both): then the KL half's answers are this
        half's. Otherwise each id takes the KL half's answer, and an id only this half holds (the KL half
        was changed directly) is asked to ``predicate``, as :meth:`mask` would.
        """
        if predicate is None:
            return None
        if live_ids is None or allowed is None:
            return self.mask(predicate)
        if self.ids == live_ids:
            return allowed
        by_id = dict(zip(live_ids, allowed.tolist(), strict=True))
        return np.fromiter(
            (by_id[i] if i in by_id else bool(predicate(self.metas[i])) for i in self.ids),
            dtype=bool,
            count=len(self.ids),
        )

    def save(self, folder: Path) -> dict[str, Any]:
        """``ids.json`` and, when indexed, the files of ``bm25s.BM25.save`` (which ``bm25s.BM25.load`` reads)."""
        folder.mkdir()
        (folder / _BM25_IDS).write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
        csc = self.csc
        if csc is not None:
            for name, array in zip(_BM25_FILES, (csc.data, csc.indices, csc.indptr), strict=True):
                np.save(folder / name, np.ascontiguousarray(array), allow_pickle=False)
            (folder / _BM25_VOCAB).write_text(json.dumps(csc.vocab, ensure_ascii=False), encoding="utf-8")
            params = {
                "k1": self.k1,
                "b": self.b,
                "delta": 0.5,
                "method": "lucene",
                "idf_method": "lucene",
                "dtype": str(csc.data.dtype),
                "int_dtype": str(csc.indices.dtype),
                "num_docs": len(self.ids),
                "backend": "numpy",
            }
            (folder / _BM25_PARAMS).write_text(json.dumps(params, indent=4), encoding="utf-8")
        for path in sorted(folder.iterdir()):  # durable before the hybrid save swaps its folder into place
            fsync_file(path)
        fsync_dir(folder)
        return {"count": len(self.ids), "indexed": csc is not None}

    @classmethod
    def load(cls, folder: Path, tokenizer: _Tokenizer, k1: float, b: float, *, indexed: bool, mmap: bool) -> _BM25Half:
        half = cls(tokenizer, k1, b)
        half._counts = None  # counted again from the stored texts at the first change (recount)
        ids = _read_json(folder / _BM25_IDS)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HybridFormatError(f"{folder / _BM25_IDS} must hold a JSON list of string ids")
        if len(set(ids)) != len(ids):
            raise HybridFormatError(f"{folder / _BM25_IDS} repeats an id")
        half.ids, half.row = ids, {doc_id: j for j, doc_id in enumerate(ids)}
        if indexed:
            half.csc = _load_csc(folder, len(ids), k1, b, mmap)
        half._set_idf()
        return half


def _check_store_file(path: Path) -> None:
    """Refuse a store file that is missing, not a regular file (a FIFO would block the read), or a link to a
    file outside its own folder (the rule :class:`KLStore` applies to its files)."""
    if not path.exists():
        raise HybridFormatError(f"{path} is missing")
    if path.resolve().parent != path.parent.resolve():
        raise HybridFormatError(f"{path} resolves to {path.resolve()}, outside the store folder")
    if not path.is_file():
        raise HybridFormatError(f"{path} is not a regular file")


def _json_in(path: Path, error: type[ValueError]) -> Any:
    """The JSON value in the file ``path``; not JSON, or nested too deeply to read: ``error`` naming the file.

    A missing file raises ``FileNotFoundError`` (the callers name what is missing).
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:  # the C decoder recurses once per level of nesting
        raise error(f"{path} nests JSON arrays or objects too deeply to read") from None


def _read_json(path: Path) -> Any:
    _check_store_file(path)
    try:
        return _json_in(path, HybridFormatError)
    except FileNotFoundError:
        raise HybridFormatError(f"{path} is missing") from None


def _load_csc(folder: Path, count: int, k1: float, b: float, mmap: bool) -> _CSC:
    """The BM25 index of a saved half: ``.npy`` arrays read without pickle, vocabulary and parameters as JSON."""
    params = _read_json(folder / _BM25_PARAMS)
    expected = {"k1": k1, "b": b, "method": "lucene", "num_docs": count}
    if not isinstance(params, dict) or any(params.get(key) != value for key, value in expected.items()):
        got = {key: params.get(key) for key in expected} if isinstance(params, dict) else params
        raise HybridFormatError(f"{folder / _BM25_PARAMS} holds {got}; this hybrid store expects {expected}")
    vocab = _read_json(folder / _BM25_VOCAB)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
        raise HybridFormatError(f"{folder / _BM25_VOCAB} must map each token to an integer column")
    arrays = []
    for name in _BM25_FILES:
        _check_store_file(folder / name)
        try:
            check_npy_header(folder / name, None, None, name)  # a header claiming a huge array: refused unread
        except StoreFormatError as exc:
            raise HybridFormatError(str(exc)) from None
        try:
            arrays.append(np.load(folder / name, allow_pickle=False, mmap_mode="r" if mmap else None))
        except (OSError, ValueError) as exc:
            raise HybridFormatError(f"{folder / name} cannot be read as a .npy array without pickle ({exc})") from None
    data, indices, indptr = arrays
    n_vocab = len(vocab)
    problems = []
    if data.dtype.kind != "f" or indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        problems.append(f"unexpected dtypes {data.dtype}, {indices.dtype}, {indptr.dtype}")
    elif indptr.ndim != 1 or indptr.size != n_vocab + 1:
        problems.append(f"indptr has {indptr.size} entries for a vocabulary of {n_vocab}")
    elif indptr[0] != 0 or indptr[-1] != data.size or data.size != indices.size or (np.diff(indptr) < 0).any():
        problems.append("indptr does not describe the data and indices arrays")
    elif indices.size and (int(indices.min()) < 0 or int(indices.max()) >= count):
        problems.append(f"a document index is outside 0..{count - 1}")
    elif n_vocab and sorted(vocab.values()) != list(range(n_vocab)):
        problems.append("the vocabulary does not number the columns 0..n-1")
    elif data.size and not np.isfinite(data).all():
        problems.append("a BM25 weight is not finite")
    if problems:
        raise HybridFormatError(f"{folder}: the BM25 index is damaged: {'; '.join(problems)}")
    return _CSC(data, indices, indptr, vocab)


# --------------------------------------------------------------------------------------
# Results and the store
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HybridResult:
    """One fused hit, with what both retrievers said about it.

    Attributes:
        id: Document id.
        score: Fused score (higher is better; its scale depends on ``fusion``).
        text: Document text.
        metadata: Document metadata.
        neg_kl: Exact ``-KL(Q || D)`` of the document (higher is better).
        bm25: BM25 score of the document (0 when no query term occurs in it).
        dense_rank: 1-based rank in the dense candidate list, ``None`` when absent from it.
        bm25_rank: 1-based rank in the BM25 candidate list, ``None`` when absent from it.
        dense_weight: The dense weight used for this query (``None`` for ``"rrf"``).
        query_uncertainty: Mean log-variance of the query Gaussian (higher: more uncertain).
        fusion: The fusion mode.

    Frozen, compared by value, and unhashable (``metadata`` is a dict): key a dict or set by ``id``.

    Examples:
        >>> HybridResult("d1", 0.8, "text", {}, -3.5, 2.0, 1, 4, 0.6, -1.2, "adaptive").neg_kl
        -3.5
    """

    id: str
    score: float
    text: str | None
    metadata: dict[str, Any]
    neg_kl: float
    bm25: float
    dense_rank: int | None
    bm25_rank: int | None
    dense_weight: float | None
    query_uncertainty: float
    fusion: str

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # frozen, but equal by a dict: unhashable

    #: The keys of :meth:`scores`, in its order, and the attribute each one reads.
    SCORE_KEYS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("fused_score", "score"),
        ("fusion", "fusion"),
        (SCORE_NAME, "neg_kl"),
        ("bm25", "bm25"),
        ("dense_rank", "dense_rank"),
        ("bm25_rank", "bm25_rank"),
        ("dense_weight", "dense_weight"),
        ("query_uncertainty", "query_uncertainty"),
    )

    def scores(self) -> dict[str, Any]:
        """The scores as a flat dict (e.g. for framework metadata); its keys are :attr:`SCORE_KEYS`."""
        return {key: getattr(self, attr) for key, attr in self.SCORE_KEYS}


#: Metadata keys the LlamaIndex and LangChain retrievers over a :class:`KLHybridStore` write a hit's scores
#: under (:meth:`HybridResult.scores`, the query's confidence and why it is missing): a document's own key of
#: one of these names is shadowed in the documents they return.
_RESERVED_METADATA_KEYS = frozenset({*(key for key, _ in HybridResult.SCORE_KEYS), "confidence", "confidence_reason"})


def _warn_metadata_keys(
    log: logging.Logger, where: str, keys: Sequence[str], effect: str, reserved: str, what: str = "document metadata"
) -> None:
    """One warning that documents added to ``where`` use score keys (``keys``) in their own metadata.

    Args:
        log: The logger of the module that warns.
        where: What the documents were added to (e.g. ``"KLHybridStore.add"``).
        keys: The reserved keys the metadata uses, sorted.
        effect: What happens to them in results (a clause).
        reserved: Every reserved key, for the message.
        what: What uses them (``"document metadata"``, ``"node metadata"``...).
    """
    log.warning(
        "%s: added %s uses the key(s) %s, which a search writes its scores under: %s; the stored metadata, "
        "which filters see, keeps your value. Rename the key(s) to keep them in results. Reserved keys: %s",
        where,
        what,
        ", ".join(repr(k) for k in keys),
        effect,
        reserved,
    )


_HYBRID_EFFECT = (
    "the hits the LlamaIndex and LangChain hybrid retrievers return carry the score under that name, not your value"
)


def _ids_digest(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def _examples(ids: Iterable[str]) -> list[str]:
    return sorted(ids)[:_EXAMPLES]


class KLHybridStore(_NotCopyable):
    r"""BM25 and a :class:`~kl_retrievers.index.KLStore` over the same documents, fused per query.

    Args:
        encoder: Gaussian encoder for texts (documents added without Gaussians, text queries
            without ``query_gaussians``); passed to the KL half.
        fusion: Default fusion mode: ``"rrf"``, ``"convex"`` or ``"adaptive"``.
        weight: Dense weight of ``"convex"``, in ``[0, 1]`` (``None``: 0.5): the store's default for every
            search that fuses with ``"convex"``, also with another default ``fusion`` (then it serves the
            searches that pass ``fusion="convex"``; it is saved and loaded with the store). A *search* given
            ``weight=`` with a non-convex fusion raises ``ValueError`` (it would be ignored).
        normalization: ``"minmax"`` or ``"zscore"`` (``None``: ``"minmax"``): the convex searches'
            normalisation, kept as ``weight`` is.
        rrf_k: The RRF constant.
        candidates: Documents taken from each half per query.
        adaptive_params: :class:`AdaptiveParams`, a path to their JSON, or ``None``: the ones the
            encoder's model folder ships (``hybrid_adaptive.json``, e.g. ``bge-small-unit-variance``;
            with ``stemmer=None``, its ``hybrid_adaptive.unstemmed.json`` when it ships one), else the
            default model's (read when first needed).
        k1: BM25 ``k1``.
        b: BM25 ``b``.
        stopwords: ``"english"`` (bm25s' list), a list of words, or ``None``.
        token_pattern: Regular expression of a token (text is lower-cased first), as a string, as ``re.findall``
            reads it: a token is the whole match or, with one capture group, that group's text (a pattern
            with more capture groups, or one that matches the empty string, is refused; the empty tokens of a
            capture group that can be empty, as in ``r"(\d*)[a-z]+"``, are dropped). A pattern that gives no
            token for any text of an :meth:`add` is logged (one warning naming it).
        stemmer: A PyStemmer language (default :data:`DEFAULT_STEMMER`, ``"english"``; see
            ``Stemmer.algorithms()``) stemming every token after the stop words are dropped, for the
            documents and the queries alike (saved with the store); ``None``: no stemming (the BM25
            baseline's tokens, and every hybrid store saved before stop 42). Needs ``PyStemmer``
            (the ``hybrid`` extra).
        kl_store: An existing (possibly filled) KLStore to use as the KL half; its texts are
            indexed by BM25, so every document needs one. It becomes this store's: its ``add`` / ``delete``
            raise ``RuntimeError`` from then on unless this store calls them (a store that is already another
            hybrid store's KL half is refused, ``ValueError``).
        **kl_options: Options of a new :class:`KLStore` (``index_type``, ...), when ``kl_store`` is not given.

    Raises:
        ValueError: A bad fusion setting, an unknown ``stemmer`` language or a ``token_pattern`` that is not a
            regular expression, has more than one capture group or matches the empty string (as ``""`` and
            ``r"\w*"`` do; a pattern whose capture group alone can be empty, ``r"(\d*)[a-z]+"``, is accepted and
            its empty tokens are dropped), naming the value and what is allowed.
        TypeError: ``token_pattern`` is not a string (a compiled ``re.Pattern`` is refused: pass its ``.pattern``).
        ImportError: ``stemmer`` is set and PyStemmer is not installed.

    Examples:
        >>> KLHybridStore(fusion="convex", weight=2.0)
        Traceback (most recent call last):
        ValueError: weight must be a number in [0, 1] (the dense side's share); got 2.0
    """

    def __init__(
        self,
        encoder: EncoderLike | None = None,
        *,
        fusion: FusionMode = "adaptive",
        weight: float | None = None,
        normalization: Normalization | None = None,
        rrf_k: float = RRF_K,
        candidates: int = DEFAULT_CANDIDATES,
        adaptive_params: AdaptiveParams | str | os.PathLike[str] | None = None,
        k1: float = 0.9,
        b: float = 0.4,
        stopwords: str | Sequence[str] | None = "english",
        token_pattern: str = BM25_TOKEN_PATTERN,
        stemmer: str | None = DEFAULT_STEMMER,
        kl_store: KLStore | None = None,
        **kl_options: Any,
    ) -> None:
        _refuse_model_name(encoder, f"{type(self).__name__}(encoder={{}})")
        require_modules("KLHybridStore's BM25 half", ["bm25s"], "hybrid")
        self.fusion = FusionConfig(
            fusion,
            _DEFAULT_FUSION.weight if weight is None else weight,
            _DEFAULT_FUSION.normalization if normalization is None else normalization,
            rrf_k,
            candidates,
        )  # weight and normalization: the defaults of convex searches, whatever the default fusion
        self.k1, self.b, self._tokenizer = _bm25_settings(k1, b, stopwords, token_pattern, stemmer)
        if adaptive_params is not None and not isinstance(adaptive_params, AdaptiveParams):
            adaptive_params = AdaptiveParams.load(adaptive_params)
        self._adaptive = adaptive_params
        self._adaptive_given = adaptive_params is not None
        if kl_store is not None and kl_options:
            raise ValueError(f"give either kl_store or KLStore options, not both; got options {sorted(kl_options)}")
        if kl_store is not None and not isinstance(kl_store, KLStore):
            raise TypeError(f"kl_store must be a KLStore; got {type(kl_store).__name__}")
        if kl_store is not None:
            kl_store._refuse_second_owner()  # before anything changes it
        self._kl = kl_store if kl_store is not None else KLStore(encoder=encoder, **kl_options)
        if encoder is not None and kl_store is not None:
            self._kl.encoder = encoder
        self._lock = _RWLock()  # searches share it; add, upsert and delete take it alone
        self._build_lock = threading.Lock()  # one reader rebuilds a stale BM25 index, the others wait for it
        self._count_lock = threading.Lock()  # one writer counts a loaded store's texts, the others wait for it
        self._bm25 = _BM25Half(self._tokenizer, self.k1, self.b)
        self._reserved_warned = False  # see _warn_reserved_keys: one warning per store
        if len(self._kl):
            ids = self._kl.ids
            docs = self._kl.get_by_ids(ids)
            missing = [d.id for d in docs if d.text is None]
            if missing:
                raise ValueError(
                    f"kl_store holds {len(missing)} document(s) without text (e.g. {_examples(missing)}); "
                    "BM25 needs every document's text"
                )
            counted: list[Counter[str] | None] = [self._bm25.count(d.text or "") for d in docs]
            if not any(counted):
                self._warn_no_tokens([d.text or "" for d in docs])
            self._bm25.put(ids, counted, [d.metadata for d in docs])
            self._warn_reserved_keys([d.metadata for d in docs], "KLHybridStore(kl_store=...)")
        self._kl._set_owner(self)  # its add / delete refuse from now on unless made by this store (while it lives)

    def _warn_reserved_keys(
        self,
        metadatas: Iterable[Mapping[Any, Any] | None],
        where: str,
        keys: frozenset[str] = _RESERVED_METADATA_KEYS,
        effect: str = _HYBRID_EFFECT,
        reserved: str | None = None,
        log: logging.Logger = logger,
    ) -> None:
        """Warn (once per store) when any of ``metadatas`` uses a reserved key (:data:`_RESERVED_METADATA_KEYS`)."""
        if self._reserved_warned:
            return
        found = sorted({key for meta in metadatas if meta for key in keys.intersection(meta)})
        if found:
            self._reserved_warned = True
            _warn_metadata_keys(log, where, found, effect, reserved or ", ".join(sorted(keys)))

    def _warn_stored_reserved_keys(self, where: str, **kwargs: Any) -> None:
        """:meth:`_warn_reserved_keys` for the documents already stored (a loaded or core-API-filled store)."""
        if self._reserved_warned:
            return
        with self._lock.read():
            metas = list(self._bm25.metas.values())
        self._warn_reserved_keys(metas, where, **kwargs)

    # ------------------------------------------------------------------ basics
    @property
    def kl(self) -> KLStore:
        """The KL half: read it freely; its ``add`` / ``delete`` raise ``RuntimeError`` unless this store calls them.

        A change through it alone (also through a LangChain or LlamaIndex vector store wrapping it) would leave
        the BM25 half stale: change documents through :meth:`add`, :meth:`upsert` and :meth:`delete`.
        """
        return self._kl

    @property
    def encoder(self) -> Any | None:
        """The Gaussian encoder: the KL half's, else the model the store was saved with.

        A store loaded without ``encoder=`` (:meth:`load`) has none until text is encoded: then the
        model it was saved with (:attr:`saved_encoder`) is loaded by name, once, and becomes the KL
        half's encoder; reading this property loads it too (so that the calibrator and the adaptive
        parameters are that model's). ``None``: no encoder was given and the store records none.

        Raises:
            ValueError: Loading the saved model failed, or it gives Gaussians of another dimension
                than the stored documents' (naming the model and what to pass instead). A file, network or
                hub failure (an ``OSError``) is kept and raised again without any lookup for 30 seconds, then
                the next call tries once more; any other is kept, and raised again without retrying.
        """
        encoder = self._kl.encoder
        return encoder if encoder is not None else self._saved_encoder()

    @property
    def stemmer(self) -> str | None:
        """The PyStemmer language of the BM25 tokens (``None``: not stemmed); see the ``stemmer`` argument."""
        return self._tokenizer.stemmer

    @property
    def saved_encoder(self) -> str | None:
        """The model the KL half was saved with (its ``name_or_path``; ``None``: none recorded, or not loaded)."""
        return self._kl.saved_encoder

    def _saved_encoder(self) -> Any | None:
        """Load the encoder the store was saved with, by name, once (``None`` when it records none)."""
        try:
            return self._kl._load_saved_encoder()
        except ValueError as exc:
            raise ValueError(
                f"{exc}: pass encoder= to KLHybridStore.load (or to LlamaIndex's KLHybridRetriever.from_defaults), "
                "or give Gaussians (query_gaussians= to search, gaussians= to add)"
            ) from None

    @property
    def ids(self) -> list[str]:
        """Ids of the stored documents (the KL half's order)."""
        return self._kl.ids

    def __len__(self) -> int:
        return len(self._kl)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._kl

    def __repr__(self) -> str:
        return f"KLHybridStore(fusion={self.fusion.mode!r}, documents={len(self)}, kl={self._kl!r})"

    def adaptive_params(self) -> AdaptiveParams:
        """The adaptive fusion parameters: those given, else the encoder's model's, else the default model's."""
        if self._adaptive is None:
            from kl_retrievers.pretrained import model_file

            # the saved model's name when it is not loaded yet: nothing is loaded here (query Gaussians need none)
            encoder = self._kl.encoder
            name = str(getattr(encoder, "name_or_path", "") if encoder is not None else self.saved_encoder or "")
            own = (model_file(name, _UNSTEMMED_PARAMS_FILE) if self.stemmer is None else None) or model_file(
                name, ADAPTIVE_PARAMS_FILE
            )
            if own is not None:
                self._adaptive = AdaptiveParams.load(own)
                self._warn_stemmer_mismatch(self._adaptive, f"{name}'s {own.name}")
                return self._adaptive
            self._adaptive = AdaptiveParams.default(self.stemmer)
            self._warn_stemmer_mismatch(self._adaptive, "the default model's parameters")
            model = self._adaptive.model or ""
            if name and model and Path(name.rsplit(":", 1)[-1]).name != model:  # "kl_retrievers:NAME" or a folder
                logger.warning(
                    "the adaptive fusion parameters were fitted for %r, but the encoder is %r; the query "
                    "uncertainty is model-specific: fit parameters for this model (kl_retrievers.hybrid.fit_adaptive)",
                    model,
                    name,
                )
        return self._adaptive

    def _warn_stemmer_mismatch(self, params: AdaptiveParams, what: str) -> None:
        """Log one warning when ``params`` were fitted on BM25 stemmed otherwise than this store's."""
        if params.bm25_stemmer != self.stemmer:
            logger.warning(
                "%s were fitted on BM25 %s, but this store's BM25 is %s; the adaptive weights read BM25 "
                "signals: pass stemmer=%r to match them, or fit parameters for this store (kl_retrievers.hybrid."
                "fit_adaptive)",
                what,
                f"stemmed with {params.bm25_stemmer!r}" if params.bm25_stemmer else "not stemmed",
                f"stemmed with {self.stemmer!r}" if self.stemmer else "not stemmed",
                params.bm25_stemmer,
            )

    def check_sync(self) -> None:
        """Raise ``RuntimeError`` when the two halves hold different ids (e.g. the KL half was changed directly)."""
        with self._lock.read():
            if set(self._kl.ids) != set(self._bm25.metas):
                raise RuntimeError(self._out_of_sync(self._bm25))

    def _out_of_sync(self, half: _BM25Half) -> str:
        """The message of halves that disagree on ids (``half``: the BM25 half in use); under the lock."""
        return _mismatch("this hybrid store", set(half.metas), set(self._kl.ids), _CHANGED_DIRECTLY)

    def get_by_ids(self, ids: Sequence[str]) -> list[StoredDocument]:
        """Stored documents for the given ids, in order; unknown ids are skipped (as :meth:`KLStore.get_by_ids`)."""
        return self._kl.get_by_ids(ids)

    # ------------------------------------------------------------------ mutation
    def add(
        self,
        texts: Sequence[str],
        *,
        gaussians: Gaussians | None = None,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[Any, Any] | None] | None = None,
    ) -> list[str]:
        """Add documents to both halves; an existing id is replaced in both (upsert).

        A metadata key named like a score the LlamaIndex and LangChain hybrid retrievers write into
        their hits' metadata (``bm25``, ``fusion``, ``neg_kl``, ``confidence``...) is shadowed in their
        results: the store logs one warning naming it (once per store).

        Args:
            texts: Document texts (BM25 needs them; encoded by the encoder unless ``gaussians``: for a
                store loaded without one, the model it was saved with, see :attr:`encoder`): a list,
                a tuple, a numpy array, a pandas Series or a generator, as :meth:`KLStore.add` takes.
            gaussians: Precomputed document Gaussians, one per text.
            ids: Document ids (uuid4 hex when omitted).
            metadatas: One JSON-serialisable dict per document (or ``None``).

        Returns:
            The ids, in input order.

        Raises:
            TypeError: ``texts`` is a single string, not iterable (``None`` too: BM25 needs the texts, also
                with ``gaussians``), or holds a non-string.
            ValueError / TypeError: Whatever :meth:`KLStore.add` refuses (its checks of ``texts``, ``ids`` and
                ``metadatas``, e.g. a set of texts or ids, a dict of texts, a miscounted or non-JSON metadata, run
                before any text is encoded, with its messages), or the saved model failed to load
                (:attr:`encoder`); then neither half changes.

        Examples:
            >>> import numpy as np
            >>> s = KLHybridStore(fusion="rrf")
            >>> s.add(["a b"], gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["x"])
            ['x']
        """
        # add(g), a dict, bytes, a table: KLStore.add refuses it, with its message (add(g): pass gaussians=g)
        _check_texts_container(texts)
        if isinstance(texts, str):
            raise TypeError(
                f"texts must be a sequence of strings, not one string; got {texts!r:.80}: wrap it in a list"
            )
        if not isinstance(texts, Iterable):  # None, a number...: BM25 has nothing to index
            raise TypeError(
                "texts must be a sequence of strings (BM25 indexes every document's text, also when gaussians= is "
                f"given); got {type(texts).__name__}"
            )
        _refuse_unordered("texts", texts)  # a set, as KLStore.add
        text_list = list(texts)  # a list, a tuple, a numpy array, a pandas Series, a generator: as KLStore.add
        for j, text in enumerate(text_list):
            if not isinstance(text, str):
                raise TypeError(
                    f"texts[{j}] must be a str (BM25 indexes every document's text); got {type(text).__name__}"
                )
        # KLStore.add's rules for texts and ids (a set, a bad, repeated or miscounted id...), before encoding
        _, id_list = _check_texts_and_ids(text_list, gaussians, ids)
        if not text_list and gaussians is None and not id_list and not metadatas:
            return []  # nothing to add (and no model to load for it)
        # each text counted as soon as it is tokenised (outside the lock), its terms numbered under it (put)
        counted: list[Counter[str] | None] = [self._bm25.count(t) for t in text_list]
        if not any(counted):
            self._warn_no_tokens(text_list)
        encoder = None
        if gaussians is None and text_list:
            _metadata_list(metadatas, len(text_list))  # KLStore.add's metadata checks, before any text is encoded
            encoder = self.encoder  # a loaded store: its saved model
        if encoder is not None:  # encode before the lock: searches go on
            gaussians = encoder.encode_documents(
                text_list, batch_size=self._kl.batch_size, show_progress_bar=self._kl.show_progress_bar
            )
        self._ensure_tokens()  # a loaded store's first change: its texts counted while searches go on
        with self._lock.write():
            if not _write_proceeds():  # an async write cancelled while it waited for the lock
                return []
            if self._bm25.counts is None:  # a write nested in this thread's own (see _ensure_tokens)
                self._count_stored_texts()
            with self._kl._owner_writes():
                new_ids = self._kl.add(text_list, gaussians=gaussians, ids=id_list, metadatas=metadatas)
            if not new_ids:
                return []
            metas = [d.metadata for d in self._kl.get_by_ids(new_ids)]
            self._bm25.put(new_ids, counted, metas)
        self._warn_reserved_keys(metas, "KLHybridStore.add")
        return new_ids

    def _warn_no_tokens(self, texts: Sequence[str]) -> None:
        """One warning when the token pattern matches the texts but only ever gives empty tokens (r'\\b').

        Texts the pattern does not match at all (punctuation, emoji: no word) are not the pattern's fault, and
        tokens that are all stop words show that the pattern works: neither is warned about.
        """
        written = [t for t in texts if t.strip()]
        pattern = self._tokenizer.token_pattern
        split = re.compile(pattern).findall
        matched = False
        for text in written:
            for token in split(text.lower()):
                if token:
                    return  # tokens (maybe all stop words): the pattern works
                matched = True
        if not matched:
            return
        logger.warning(
            "token_pattern %r gave no token for any of the %d non-empty text(s) added (e.g. %r): BM25 indexes "
            "nothing for them and only the dense half can find them; a token pattern must match the token's "
            "characters (e.g. r'%s'), not only a position such as r'\\b' or a lookahead",
            pattern,
            len(written),
            written[0][:80],
            BM25_TOKEN_PATTERN,
        )

    def upsert(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str],
        gaussians: Gaussians | None = None,
        metadatas: Sequence[Mapping[Any, Any] | None] | None = None,
    ) -> list[str]:
        """Insert or replace documents by id in both halves (:meth:`add` with ids required)."""
        if ids is None:
            raise ValueError("upsert needs ids")
        return self.add(texts, gaussians=gaussians, ids=ids, metadatas=metadatas)

    def delete(self, ids: Sequence[str] | None = None, *, filter: MetadataFilter | None = None) -> DeleteReport:
        """Delete documents from both halves by id, by a metadata filter, or both; unknown ids are reported (warning).

        As ``KLStore.delete``: ``filter`` (a dict or a callable
        ``metadata -> bool``) chooses among ``ids`` (``None``: every document) on the KL half's metadata, and the
        documents are chosen and deleted from both halves under this store's write lock (its searches wait,
        also while a callable filter runs). Delete through this store, never through :attr:`kl` (the halves
        would no longer hold the same documents).

        Raises:
            TypeError: An id that is not a ``str``.
            ValueError: Neither ``ids`` nor ``filter`` given (to delete everything, pass ``filter={}``), or a
                malformed filter.
            RuntimeError: A callable filter that modifies the store.

        Examples:
            >>> import numpy as np
            >>> s = KLHybridStore(fusion="rrf")
            >>> g = Gaussians(np.zeros((3, 2)), np.ones((3, 2)))
            >>> _ = s.add(["a", "b", "c"], gaussians=g, ids=["x", "y", "z"], metadatas=[{"n": 1}, {"n": 2}, {"n": 1}])
            >>> s.delete(["x", "w"]).missing, len(s)
            (['w'], 2)
            >>> s.delete(filter={"n": 1}).deleted, s.ids
            (['z'], ['y'])
        """
        if not self._deletes_nothing(ids, filter):
            self._ensure_tokens()  # a loaded store's first change: its texts counted while searches go on
        with self._lock.write():
            if not _write_proceeds():  # an async write cancelled while it waited for the lock
                return DeleteReport(deleted=[], missing=[])
            if self._bm25.counts is None and not self._deletes_nothing(ids, filter):
                self._count_stored_texts()  # a write nested in this thread's own (see _ensure_tokens)
            with self._kl._owner_writes():
                report = self._kl.delete(ids, filter=filter)
            if report.deleted:
                self._bm25.remove(report.deleted)
        return report

    def _deletes_nothing(self, ids: Any, filter: Any) -> bool:
        """Whether ``delete(ids, filter)`` deletes nothing for sure: a list or tuple of ids, no filter, none stored.

        Such a delete needs no term counts (a loaded store is not counted for it); anything else (a filter, ids in
        another container, a non-string id, which the KL half refuses) is not judged here.
        """
        if filter is not None or not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
            return False
        metas = self._bm25.metas
        return not any(doc_id in metas for doc_id in ids)

    def _ensure_tokens(self) -> None:
        """A loaded store keeps no term counts until it is changed: count its stored texts again, without
        holding searches off; :meth:`add` and :meth:`delete` call it before they take the write lock.

        The texts are read under the read lock (searches go on), counted with no lock held, and the counts
        installed under the write lock, unless another writer installed them meanwhile (writers count one at a
        time, ``_count_lock``: a second one waits for the first one's counts). No write changes a store whose
        counts are not in memory (every change of a half needs them, :meth:`_BM25Half.put` and ``remove``), so
        texts read while they were missing are still the store's when the counts are installed. A thread that
        already reads the store (inside :meth:`consistent`: its write refuses, ``RuntimeError``) or writes it counts
        nothing here (the write counts under its lock, :meth:`_count_stored_texts`).
        """
        lock = self._lock
        if self._bm25.counts is not None or lock._held_reads() or lock._writer == threading.get_ident():
            return
        with self._count_lock:
            with self._lock.read():
                half = self._bm25
                if half.counts is not None:  # another writer counted them while this one waited
                    return
                texts = {d.id: d.text or "" for d in self._kl.get_by_ids(half.ids)}
            counts, vocab = half.counted(texts)
            del texts
            with self._lock.write():
                if self._bm25 is half and half.counts is None:
                    half._counts, half._vocab = counts, vocab

    def _count_stored_texts(self) -> None:
        """Count the stored texts again under the write lock (searches wait): what :meth:`_ensure_tokens` does
        without holding them off, for a write that finds the counts still missing."""
        docs = self._kl.get_by_ids(self._bm25.ids)
        self._bm25.recount({d.id: d.text or "" for d in docs})

    def _ensure_index(self) -> None:
        """Rebuild the BM25 index after a change; called under the read (or write) lock.

        No writer runs meanwhile, so the first reader to get here rebuilds and the others wait for it.
        """
        if self._bm25.dirty:
            with self._build_lock:
                if self._bm25.dirty:
                    self._bm25.build()

    # ------------------------------------------------------------------ search
    def _query_gaussians(self, texts: list[str], query_gaussians: Gaussians | None) -> Gaussians:
        if query_gaussians is None:
            encoder = self.encoder  # a store loaded without one: the model it was saved with, loaded now
            if encoder is None:
                raise ValueError(
                    "searching by text needs an encoder, and this store has none (and records no model it was "
                    "saved with): pass encoder= (KLHybridStore(...) / KLHybridStore.load), or query_gaussians "
                    "(one per query) instead"
                )
            if not texts:
                return Gaussians(np.zeros((0, self._kl.dim or 1)), np.ones((0, self._kl.dim or 1)), validate=False)
            query_gaussians = encoder.encode_queries(  # one at a time on int8: results independent of the others
                texts, batch_size=query_batch_size(encoder, self._kl.batch_size), show_progress_bar=False
            )
        if not isinstance(query_gaussians, Gaussians):
            raise TypeError(f"query_gaussians must be a Gaussians batch; got {type(query_gaussians).__name__}")
        g = query_gaussians.numpy()
        if len(g) != len(texts):
            raise ValueError(f"got {len(g)} query Gaussians for {len(texts)} query texts; give one per query")
        return Gaussians(np.asarray(g.mean, dtype=np.float64), np.asarray(g.var, dtype=np.float64))

    def candidates(
        self,
        queries: Sequence[str],
        *,
        query_gaussians: Gaussians | None = None,
        filter: MetadataFilter | None = None,
        depth: int | None = None,
    ) -> list[Candidates]:
        """Each query's candidates from both halves, scored by both retrievers (no fusion yet).

        Args:
            queries: Query texts (BM25 reads them; encoded unless ``query_gaussians`` is given).
            query_gaussians: One query Gaussian per text.
            filter: Metadata filter applied to both halves before ranking (called once per document:
                the BM25 half reuses what it allowed in the KL half; a dict of plain JSON values repeated
                on an unchanged store is not called again, see :meth:`KLStore.search`).
            depth: Documents from each half (default: the store's ``candidates``).

        Returns:
            One :class:`Candidates` per query.
        """
        return self._candidates(_query_texts(queries), query_gaussians, filter, depth)

    def _candidates(
        self,
        texts: list[str],
        query_gaussians: Gaussians | None,
        filter: MetadataFilter | None,
        depth: int | None,
        *,
        signals: bool = True,
    ) -> list[Candidates]:
        """:meth:`candidates` of checked query texts; ``signals=False``: without the :data:`SIGNALS` (empty dicts)."""
        depth = self.fusion.candidates if depth is None else check_k(depth, "depth")
        predicate = self._kl._prepare_filter(
            filter
        )  # a plain-JSON dict filter's rows are cached by the KL half's table
        qg = self._query_gaussians(texts, query_gaussians)
        # a callable filter that writes is refused as in a search, also inside consistent() (which words its own)
        with self._lock.read(), self._lock.no_writes(_READING_WRITES):
            self._ensure_index()
            half = self._bm25
            if len(self._kl):
                # ids and scores only (the hits' texts and metadata are read for the fused top k alone), and
                # the filter called once per document: the BM25 half reuses what it allowed in the KL half
                top = self._kl._top_ids(qg, depth, predicate)
                dense_ids, dense_scores = top.ids, top.scores
                mask = half.shared_mask(predicate, top.live_ids, top.allowed)
            else:
                dense_ids, dense_scores = [[] for _ in texts], [np.zeros(0) for _ in texts]
                mask = half.mask(predicate)
            uncertainty = np.log(qg.var).mean(axis=1) if len(qg) else np.zeros(0)
            out = []
            for i, text in enumerate(texts):
                out.append(
                    self._one_candidates(
                        qg[i],
                        text,
                        dense_ids[i],
                        dense_scores[i],
                        half,
                        mask,
                        depth,
                        float(uncertainty[i]),
                        signals=signals,
                    )
                )
        return out

    def encode_queries(self, queries: Sequence[str]) -> Gaussians:
        """The query Gaussians :meth:`candidates` computes for ``queries`` (with the store's encoder).

        Encode first, then call :meth:`candidates` with ``query_gaussians=`` inside :meth:`consistent`,
        so that the lock is not held while encoding.
        """
        return self._query_gaussians(_query_texts(queries), None)

    @contextlib.contextmanager
    def consistent(self) -> Iterator[KLHybridStore]:
        """Hold the store's lock: :meth:`candidates`, :meth:`fuse_candidates` and :meth:`to_results`
        called inside see one state of the store.

        :meth:`search` and :meth:`search_batch` do this themselves. Use it when calling the three steps
        yourself while other threads add, upsert or delete: otherwise a hit can carry the text of a
        document replaced (or deleted) after its scores were computed. It is a read lock: other
        searches run meanwhile, writers wait (and this thread cannot add, upsert or delete inside:
        ``RuntimeError``), so encode queries before entering (:meth:`encode_queries`).

        Examples:
            >>> s = KLHybridStore(fusion="rrf")
            >>> _ = s.add(["x y"], gaussians=Gaussians(np.eye(2)[:1], np.ones((1, 2))), ids=["a"])
            >>> qg = Gaussians(np.eye(2)[:1], np.ones((1, 2)))
            >>> with s.consistent():
            ...     c = s.candidates(["x"], query_gaussians=qg)[0]
            ...     [h.text for h in s.to_results(c, s.fuse_candidates(c, 1), "rrf")]
            ['x y']
        """
        with self._lock.read(), self._lock.no_writes(_CONSISTENT_WRITES):
            yield self

    def _one_candidates(
        self,
        q: Gaussians,
        text: str,
        dense_ids: list[str],
        dense_scores: np.ndarray,
        half: _BM25Half,
        mask: np.ndarray | None,
        depth: int,
        u: float,
        *,
        signals: bool = True,
    ) -> Candidates:
        """One query's :class:`Candidates` from its dense list and the BM25 half (``signals=False``: none computed).

        Both lists are matched by BM25 row: each dense id's row is looked up once, and the BM25 list's rows are
        never turned into ids but for its BM25-only candidates.
        """
        full, idf_mass, matched = half.scores(self._tokenizer(text))
        rows = half.top_rows(full, mask, depth)
        n_dense = len(dense_ids)
        dense_rows = np.fromiter((half.row.get(d, -1) for d in dense_ids), dtype=np.int64, count=n_dense)
        # each BM25 candidate's position in the dense list, -1 when absent (a dense id the BM25 half lacks is row -1,
        # which no BM25 candidate has)
        position = dict(zip(dense_rows.tolist(), range(n_dense), strict=True))
        in_dense = np.fromiter((position.get(r, -1) for r in rows.tolist()), dtype=np.int64, count=rows.size)
        extra_pos = np.flatnonzero(in_dense < 0)  # the BM25-only candidates' places in the BM25 list
        extra_rows = rows[extra_pos]
        ids = dense_ids + [half.ids[r] for r in extra_rows.tolist()]
        neg = np.empty(len(ids))
        neg[:n_dense] = dense_scores
        if extra_pos.size:
            neg[n_dense:] = self._neg_kl(q, ids[n_dense:], half)
        cand_rows = np.concatenate([dense_rows, extra_rows])
        bm25 = np.zeros(len(ids))
        known = cand_rows >= 0
        if full.size:
            bm25[known] = full[cand_rows[known]]
        dense_rank = np.zeros(len(ids), dtype=np.int64)
        dense_rank[:n_dense] = np.arange(1, n_dense + 1)
        bm25_rank = np.zeros(len(ids), dtype=np.int64)
        shared = np.flatnonzero(in_dense >= 0)
        bm25_rank[in_dense[shared]] = shared + 1
        bm25_rank[n_dense:] = extra_pos + 1
        if not signals:
            return Candidates(ids, neg, bm25, dense_rank, bm25_rank, u, {})
        top_b = full[rows]
        coverage = float(top_b[0]) / idf_mass if top_b.size and idf_mass > 0 else 0.0
        top10 = in_dense[:10]
        overlap = int(np.count_nonzero((top10 >= 0) & (top10 < 10))) / 10.0  # BM25 top 10 also in the dense top 10
        query = query_signals(u, neg[:n_dense], top_b, bm25_coverage=coverage, bm25_matched=matched, overlap10=overlap)
        return Candidates(ids, neg, bm25, dense_rank, bm25_rank, u, query)

    def _neg_kl(self, q: Gaussians, ids: list[str], half: _BM25Half) -> np.ndarray:
        """Exact float64 ``-KL`` of the query ``q`` against the KL half's documents ``ids``.

        Raises:
            RuntimeError: The KL half lacks one of ``ids`` (it was changed directly), naming the mismatch.
        """
        try:
            docs = self._kl._gaussians(ids)  # the caller checked the ids (the BM25 half's own)
        except KeyError:
            raise RuntimeError(self._out_of_sync(half)) from None
        return neg_kl(q, Gaussians(docs.mean.astype(np.float64), docs.var.astype(np.float64), validate=False))

    def fuse_candidates(
        self, candidates: Candidates, k: int, fusion: FusionConfig | None = None
    ) -> list[tuple[str, float, int, float | None]]:
        """Rank one query's candidates: ``(id, fused score, candidate position, dense weight)``, best first."""
        config = fusion or self.fusion
        params = self.adaptive_params() if config.mode == "adaptive" else None
        scores, w = fuse(candidates, config, params)
        order = _order(scores, candidates.neg_kl, candidates.ids, self._bm25.row)[:k]
        return [(candidates.ids[j], float(scores[j]), int(j), w) for j in order]

    def to_results(
        self, candidates: Candidates, ranked: Sequence[tuple[str, float, int, float | None]], fusion: str
    ) -> list[HybridResult]:
        """One query's :meth:`fuse_candidates` ranking as :class:`HybridResult` hits, with stored text and metadata.

        Args:
            candidates: The query's candidates (:meth:`candidates`).
            ranked: Their fused ranking (:meth:`fuse_candidates`).
            fusion: The fusion mode that ranked them (reported on every hit).

        Returns:
            The hits, in ``ranked`` order.

        Examples:
            >>> s = KLHybridStore(fusion="rrf")
            >>> _ = s.add(["x y", "y z"], gaussians=Gaussians(np.eye(2), np.ones((2, 2))), ids=["a", "b"])
            >>> c = s.candidates(["z"], query_gaussians=Gaussians(np.eye(2)[1:], np.ones((1, 2))))[0]
            >>> [(h.id, h.text, h.bm25_rank) for h in s.to_results(c, s.fuse_candidates(c, 2), "rrf")]
            [('b', 'y z', 1), ('a', 'x y', None)]
        """
        docs = {d.id: d for d in self._kl.get_by_ids([doc_id for doc_id, *_ in ranked])}
        hits = []
        for doc_id, score, j, w in ranked:
            doc = docs.get(doc_id)
            hits.append(
                HybridResult(
                    id=doc_id,
                    score=score,
                    text=doc.text if doc is not None else None,
                    metadata=doc.metadata if doc is not None else {},
                    neg_kl=float(candidates.neg_kl[j]),
                    bm25=float(candidates.bm25[j]),
                    dense_rank=int(candidates.dense_rank[j]) or None,
                    bm25_rank=int(candidates.bm25_rank[j]) or None,
                    dense_weight=w,
                    query_uncertainty=candidates.uncertainty,
                    fusion=fusion,
                )
            )
        return hits

    def search_run(
        self,
        query_ids: Sequence[str],
        queries: Sequence[str],
        k: int = 100,
        filter: MetadataFilter | None = None,
        *,
        query_gaussians: Gaussians | None = None,
        fusion: FusionMode | None = None,
        weight: float | None = None,
        normalization: Normalization | None = None,
    ) -> dict[str, dict[str, float]]:
        """The fused rankings as an evaluation run: query id -> {document id: score}.

        Scores are ``k - rank`` (``k`` for the first document), so that an evaluator ranks exactly
        as the store does, ties included (the fused scores of RRF often tie).

        Raises:
            TypeError: ``query_ids`` is one string instead of a sequence of ids, or holds an id that is not a str
                (``1`` is not coerced to ``"1"``; naming its position), or a query is not a str.
            ValueError: Not one id per query, or an id repeats.

        Examples:
            >>> s = KLHybridStore(fusion="rrf")
            >>> _ = s.add(["x y", "y z"], gaussians=Gaussians(np.eye(2), np.ones((2, 2))), ids=["a", "b"])
            >>> s.search_run(["q1"], ["z"], k=2, query_gaussians=Gaussians(np.eye(2)[1:], np.ones((1, 2))))
            {'q1': {'b': 2.0, 'a': 1.0}}
        """
        k = check_k(k)
        if isinstance(query_ids, str):
            raise TypeError(f"query_ids must be a sequence of ids, not one string; got {query_ids!r}")
        keys = _id_list(query_ids, "query_ids")  # never coerced with str(): 1 would become "1"
        texts = _query_texts(queries)  # each read once (generators too)
        if len(keys) != len(texts):
            raise ValueError(f"give one query id per query; got {len(keys)} ids for {len(texts)} queries")
        repeated = [q for q, n in Counter(keys).items() if n > 1]
        if repeated:
            raise ValueError(f"query ids must be unique (a run maps each id to one ranking); {repeated[0]!r} repeats")
        config = self.fusion.for_call(fusion, weight, normalization)
        run: dict[str, dict[str, float]] = {}
        for qid, (_, ranked) in zip(keys, self._ranked(texts, k, filter, query_gaussians, config), strict=True):
            run[qid] = {doc_id: float(k - r) for r, (doc_id, *_) in enumerate(ranked)}
        return run

    def _ranked(
        self,
        queries: Sequence[str],
        k: int,
        filter: MetadataFilter | None,
        query_gaussians: Gaussians | None,
        config: FusionConfig,
    ) -> list[tuple[Candidates, list[tuple[str, float, int, float | None]]]]:
        """Each query's candidates and its fused top ``k`` (:meth:`fuse_candidates`): the core of every search.

        Args:
            queries: Query texts.
            k: Results per query, already checked.
            filter: Metadata filter applied to both halves.
            query_gaussians: One query Gaussian per text (else the encoder encodes them).
            config: The fusion settings of this call.

        Returns:
            One ``(candidates, ranked)`` pair per query; missing adaptive parameters fail before any retrieval.

        Examples:
            >>> s = KLHybridStore(fusion="rrf")
            >>> _ = s.add(["x y", "y z"], gaussians=Gaussians(np.eye(2), np.ones((2, 2))), ids=["a", "b"])
            >>> [[doc_id for doc_id, *_ in ranked] for _, ranked in s._ranked(
            ...     ["z"], 2, None, Gaussians(np.eye(2)[1:], np.ones((1, 2))), s.fusion)]
            [['b', 'a']]
        """
        if config.mode == "adaptive":
            self.adaptive_params()  # missing parameters fail before any work
        # the signals are read by the adaptive weight alone
        cands = self._candidates(
            _query_texts(queries), query_gaussians, filter, max(k, config.candidates), signals=config.mode == "adaptive"
        )
        return [(c, self.fuse_candidates(c, k, config)) for c in cands]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        filter: MetadataFilter | None = None,
        *,
        query_gaussians: Gaussians | None = None,
        fusion: FusionMode | None = None,
        weight: float | None = None,
        normalization: Normalization | None = None,
    ) -> list[list[HybridResult]]:
        """Top-``k`` fused results for each query text.

        Args:
            queries: Query texts (BM25 reads them; the encoder encodes them unless ``query_gaussians`` is given).
            k: Results per query, a positive integer; fewer when fewer candidates exist.
            filter: Metadata filter (dict or callable) applied to both halves before ranking.
            query_gaussians: One precomputed query Gaussian per text (else the encoder encodes them).
            fusion: Override the store's fusion mode for this call.
            weight: Override the convex dense weight (in ``[0, 1]``).
            normalization: Override the convex normalisation.

        Returns:
            One list of :class:`HybridResult` per query, in the order of ``queries``, best first by the fused
            ``score``: **higher is better**, on a scale set by the fusion mode (fused scores of different
            modes are not comparable):

            * ``"rrf"``: ``1 / (rrf_k + dense rank) + 1 / (rrf_k + BM25 rank)``, a rank absent from a list adding
              nothing: above 0, at most ``2 / (rrf_k + 1)``;
            * ``"convex"``: ``weight * n(-KL) + (1 - weight) * n(BM25)``, ``n`` the normalisation over the
              query's candidates: in ``[0, 1]`` with ``"minmax"``, centred on 0 with ``"zscore"``;
            * ``"adaptive"``: the convex score with a dense weight fitted per query (reported as
              ``dense_weight``) and the adaptive parameters' normalisation.

            Ties are broken by ``-KL``, then the later added document first (as :class:`KLStore` ranks tied
            ``-KL`` scores). Each hit also reports both retrievers' own scores: ``neg_kl``, the exact
            ``-KL(Q || D)`` (higher is better, at most 0), and ``bm25`` (higher is better, 0 when no query term
            occurs in the document), with the document's rank in each candidate list.

        Raises:
            ValueError: A bad ``k``, fusion mode, weight or normalisation (naming the value and
                what is allowed), or no encoder for text queries without ``query_gaussians``.

        Examples:
            >>> import numpy as np
            >>> s = KLHybridStore(fusion="rrf")
            >>> _ = s.add(["x y", "y z"], gaussians=Gaussians(np.eye(2), np.ones((2, 2))), ids=["a", "b"])
            >>> qg = Gaussians(np.eye(2)[1:], np.ones((1, 2)))
            >>> [[r.id for r in hits] for hits in s.search_batch(["z"], k=2, query_gaussians=qg)]
            [['b', 'a']]
        """
        k = check_k(k)
        config = self.fusion.for_call(fusion, weight, normalization)
        texts = _query_texts(queries)  # read once: a generator is not read again by the search
        qg = self._query_gaussians(texts, query_gaussians)  # encoded before the lock
        with self._lock.read():  # candidates, fusion and the stored texts from one state of the store
            return [self.to_results(c, ranked, config.mode) for c, ranked in self._ranked(texts, k, filter, qg, config)]

    def search(
        self,
        query: str,
        k: int = 10,
        filter: MetadataFilter | None = None,
        *,
        query_gaussians: Gaussians | None = None,
        fusion: FusionMode | None = None,
        weight: float | None = None,
        normalization: Normalization | None = None,
    ) -> list[HybridResult]:
        """Top-``k`` fused results for one query text (see :meth:`search_batch`).

        Args:
            query: The query text (BM25 reads it; the encoder encodes it unless ``query_gaussians`` is given).
            k: Number of results, a positive integer; fewer when fewer candidates exist.
            filter: Metadata filter (a dict, see :mod:`kl_retrievers.filters`, or a callable ``metadata ->
                bool``) applied to both halves before ranking.
            query_gaussians: The query's precomputed Gaussian (one row), else the encoder encodes ``query``.
            fusion: Override the store's fusion mode for this call (``"rrf"``, ``"convex"``, ``"adaptive"``).
            weight: Override the convex dense weight (in ``[0, 1]``; ``"convex"`` only).
            normalization: Override the convex normalisation (``"minmax"`` or ``"zscore"``; ``"convex"`` only).

        Returns:
            :class:`HybridResult` hits, best first by the fused ``score``: **higher is better**, on the fusion
            mode's scale (see :meth:`search_batch`; ``"convex"`` with ``"minmax"`` in ``[0, 1]``). Each hit
            also carries ``neg_kl``, the exact ``-KL(Q || D)`` (higher is better, at most 0), and ``bm25``.

        Raises:
            TypeError: ``query`` is not a string.
            ValueError: As :meth:`search_batch`.

        Examples:
            >>> import numpy as np
            >>> from kl_retrievers import Gaussians
            >>> from kl_retrievers.hybrid import KLHybridStore
            >>> store = KLHybridStore(fusion="rrf")
            >>> _ = store.add(["x y", "y z"], gaussians=Gaussians(np.eye(2), np.ones((2, 2))), ids=["a", "b"])
            >>> qg = Gaussians(np.eye(2)[1:], np.ones((1, 2)))
            >>> hits = store.search("z", k=2, query_gaussians=qg)
            >>> [(hit.id, round(hit.score, 4), round(hit.neg_kl, 2)) for hit in hits]
            [('b', 0.0328, 0.0), ('a', 0.0161, -1.0)]
            >>> KLHybridStore(fusion="rrf").search("anything", query_gaussians=qg)
            []
        """
        if not isinstance(query, str):
            hint = f": {_QUERY_GAUSSIANS_HINT}" if _gaussians_meant(query) else ""
            raise TypeError(f"query must be a string (BM25 reads it); got {type(query).__name__}{hint}")
        return self.search_batch(
            [query],
            k,
            filter,
            query_gaussians=query_gaussians,
            fusion=fusion,
            weight=weight,
            normalization=normalization,
        )[0]

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        # Only parameters the user gave are saved: looked-up ones are looked up again at load, from the
        # encoder given there (they are model-specific, and the store may be loaded with another model).
        adaptive = self._adaptive.to_dict() if self._adaptive_given and self._adaptive is not None else None
        return {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION if self._tokenizer.stemmer is not None else 1,
            "library_version": library_version(),
            "score": {
                "name": f"fused_{self.fusion.mode}",
                "direction": "higher_is_better",
                "components": {
                    "dense": {"name": SCORE_NAME, "direction": SCORE_DIRECTION},
                    "bm25": {"name": "bm25", "direction": "higher_is_better"},
                },
            },
            "fusion": self.fusion.to_dict(),
            "adaptive": adaptive,
            "bm25": {
                "library": "bm25s",
                "method": "lucene",
                "k1": self.k1,
                "b": self.b,
                "stopwords": self._tokenizer.stopwords_spec,
                "token_pattern": self._tokenizer.token_pattern,
                "stemmer": self._tokenizer.stemmer,
                "lower": True,
            },
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save both halves and the config to the folder ``path``, atomically, without pickle.

        Layout: ``hybrid.json`` (library version, fusion mode and parameters, the adaptive
        parameters when they were given to the constructor, BM25 settings, score name and direction,
        the ids' digest, every file's SHA-256 and a random per-save token), ``kl/``
        (:meth:`KLStore.save`) and ``bm25/`` (``bm25s``' ``.npy`` arrays and JSON vocabulary, plus
        ``ids.json``, the row order); each half also holds the save token in ``hybrid_save.json``,
        so :meth:`load` refuses halves of two saves even without checksums. An interrupted save
        leaves the previous copy intact.

        Args:
            path: The folder to write: a new path, an empty folder or an earlier hybrid save.
            overwrite: Replace whatever folder is at ``path``.

        Raises:
            ValueError: ``path`` is a non-empty folder that is not a hybrid store folder (its
                ``hybrid.json`` must name the hybrid format), and ``overwrite`` is not set.

        Examples:
            >>> import tempfile
            >>> s = KLHybridStore(fusion="rrf")
            >>> _ = s.add(["a b"], gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["x"])
            >>> with tempfile.TemporaryDirectory() as d:
            ...     KLHybridStore.load(s.save(Path(d) / "h")).ids
            ['x']
        """
        target = user_path(path)  # "~/x" is the home folder's x, as load_model reads it ("~nobody" stays as given)
        final = check_replace_target(  # a link you name (current -> v3) is resolved once, here: v3 is saved
            target,
            is_ours=_is_hybrid_folder,
            what=f"a hybrid store folder (an earlier save: its {_CONFIG} has format {_FORMAT_NAME!r})",
            overwrite=overwrite,
            follow_link=True,
        )
        with self._lock.read():
            self._ensure_index()
            config = self._config()
            with atomic_dir(final) as tmp:
                self._kl.save(tmp / _KL_DIR)
                kl_ids = set(self._kl.ids)
                bm25_info = self._bm25.save(tmp / _BM25_DIR)
                if kl_ids != set(self._bm25.ids):
                    raise RuntimeError(_mismatch(str(target), set(self._bm25.ids), kl_ids, _CHANGED_DIRECTLY))
                # one token per save, in hybrid.json and in both halves: load refuses halves of two saves
                token = uuid.uuid4().hex
                for sub in (_KL_DIR, _BM25_DIR):
                    (tmp / sub / _SAVE_TOKEN_FILE).write_text(
                        json.dumps({_SAVE_TOKEN_KEY: token}) + "\n", encoding="utf-8"
                    )
                    fsync_file(tmp / sub / _SAVE_TOKEN_FILE)
                    fsync_dir(tmp / sub)  # the new entry (the half's own files are synced by its save)
                files = {}
                for rel in _checked_files(indexed=bm25_info["indexed"], tokens=True):
                    files[rel] = _sha256(tmp / rel)
                config.update(
                    {
                        _SAVE_TOKEN_KEY: token,
                        "count": len(kl_ids),
                        "ids_sha256": _ids_digest(kl_ids),
                        "bm25_indexed": bm25_info["indexed"],
                        "files": files,
                    }
                )
                (tmp / _CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                fsync_file(tmp / _CONFIG)  # atomic_dir syncs the folder itself before its swap
        logger.info("saved a hybrid store of %d documents to %s", len(kl_ids), target)
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: EncoderLike | None = None,
        *,
        mmap: bool = False,
        verify_checksums: bool = True,
        token_pattern: str | None = None,
    ) -> KLHybridStore:
        """Load a folder written by :meth:`save`; nothing on disk is changed.

        Args:
            path: The hybrid store folder.
            encoder: Gaussian encoder for text queries and additions. ``None``: the model the store was
                saved with (:attr:`saved_encoder`: a bundled name, folder or hub id) is loaded by name at
                the first text search or addition that needs it (once; its dimension is checked, and a
                failure names the model; a file, network or hub failure is kept for 30 seconds, then tried again
                by the next call that needs it, any other is raised again without retrying); nothing is loaded for
                query or document Gaussians. Stores of this process that load the same model share one copy of it
                while any holds it, as :meth:`KLStore.load <kl_retrievers.store.faiss.KLStore.load>`'s do. Unless
                the saved store was given its adaptive parameters, they are looked up from this encoder's model
                (else the saved model's), as in the constructor.
            mmap: Memory-map the arrays of both halves (copied on the first change).
            verify_checksums: Check every file's SHA-256 against the config. Without it the halves'
                ids and save tokens are still checked (a folder saved before tokens has none and loads). Either
                way a config whose ``files`` lacks the checksum of a file its save wrote is refused.
            token_pattern: The BM25 ``token_pattern`` the store was saved with, given to trust it. ``None``: the
                saved pattern must be one docs/hybrid.md gives (the default, bm25s' two-character one, the CJK and
                the combining-mark patterns), since it runs on every document and query and ``hybrid.json`` could
                name one that backtracks catastrophically; a store saved with a pattern of your own loads when
                you pass that pattern here. Given, it must equal the saved pattern.

        Raises:
            FileNotFoundError: No hybrid store at ``path``.
            NothingSavedError: (a ``FileNotFoundError`` and a ``ValueError``) no folder, or one without its config.
            HybridFormatError: A folder kl_retrievers saved as another kind (the message names it), a bad config
                or file, or halves that disagree (ids, or a file
                not written by the same save); the message names the mismatch. A saved ``token_pattern`` that
                docs/hybrid.md does not give, without ``token_pattern=``; another one than ``token_pattern=``.
            TypeError: ``mmap`` or ``verify_checksums`` is not a bool (the string ``"no"`` is true), or
                ``token_pattern`` is neither a str nor ``None``.

        Examples:
            >>> KLHybridStore.load("/nonexistent")  # doctest: +SKIP
        """
        check_bool(mmap, "mmap")  # KLStore._load_once checks them too, but only once this folder's config is read
        check_bool(verify_checksums, "verify_checksums")
        if token_pattern is not None and not isinstance(token_pattern, str):
            raise TypeError(
                f"token_pattern must be the saved token pattern as a str, or None; got {type(token_pattern).__name__}"
            )
        _refuse_model_name(encoder, f"{cls.__name__}.load(path, encoder={{}})")  # before any file is read
        require_modules("KLHybridStore's BM25 half", ["bm25s"], "hybrid")
        folder = user_path(path)
        if not folder.exists() and recover_dir(folder, required=_CONFIG):
            logger.warning("loading %s from the copy saved before an interrupted save", folder)
        if not folder.is_dir():
            raise NothingSavedError(f"no hybrid store folder at {folder}")
        # a save of the same path during the load swaps the folder between reads: read it again then
        return load_unchanged(folder, lambda: cls._load_once(folder, encoder, mmap, verify_checksums, token_pattern))

    @classmethod
    def _load_once(
        cls, folder: Path, encoder: EncoderLike | None, mmap: bool, verify_checksums: bool, trusted: str | None
    ) -> KLHybridStore:
        """One read of a hybrid store folder (:meth:`load` repeats it when a save replaced the folder meanwhile);
        ``trusted`` is load's ``token_pattern``."""
        cfg_path = folder / _CONFIG
        if not cfg_path.is_file():
            if (other := describe_kl_folder(folder)) is not None:
                raise HybridFormatError(f"{folder} is not a hybrid store folder: it is {other}")
            raise NothingSavedError(f"{folder} has no {_CONFIG}; not a hybrid store folder")
        config = _read_config(cfg_path)
        bm25_cfg, fusion = config["bm25"], config["fusion"]
        pattern = bm25_cfg["token_pattern"]
        _check_saved_pattern(cfg_path, pattern, trusted)  # before either half is read
        root = folder.resolve()
        for sub in (_KL_DIR, _BM25_DIR):
            if not (folder / sub).is_dir():
                raise HybridFormatError(f"{folder}: the {sub}/ half is missing")
            if (folder / sub).resolve() != root / sub:  # KLStore's rule for its files, applied to the halves
                raise HybridFormatError(
                    f"{folder / sub} resolves to {(folder / sub).resolve()}, outside the store folder (a link)"
                )
        kl_dir, where = folder / _KL_DIR, f"the hybrid store at {folder}"  # the folder named in a weights warning
        kl = load_unchanged(kl_dir, lambda: KLStore._load_once(kl_dir, encoder, mmap, verify_checksums, where=where))
        tokenizer = _Tokenizer(bm25_cfg["stopwords"], pattern, bm25_cfg.get("stemmer"), saved=True)
        half = _BM25Half.load(
            folder / _BM25_DIR, tokenizer, bm25_cfg["k1"], bm25_cfg["b"], indexed=config["bm25_indexed"], mmap=mmap
        )
        kl_ids, bm25_ids = set(kl.ids), set(half.ids)
        if kl_ids != bm25_ids:
            raise HybridFormatError(
                _mismatch(str(folder), bm25_ids, kl_ids) + "; refusing to load it (nothing was changed)"
            )
        if len(kl_ids) != config["count"] or _ids_digest(kl_ids) != config["ids_sha256"]:
            raise HybridFormatError(
                f"{folder}: both halves hold the same {len(kl_ids)} ids, but not the {config['count']} ids "
                f"{_CONFIG} was saved with; the halves come from another save: refusing to load it "
                "(nothing was changed)"
            )
        # the halves' save tokens, with or without checksums (three small reads), before the checksums: halves of
        # two saves are named as such, not as a changed file (the id checks above name the mismatch better still)
        _check_save_tokens(folder, config)
        if verify_checksums:
            for rel, digest in config["files"].items():
                p = folder / rel
                if not p.is_file():
                    raise HybridFormatError(f"{folder}: {rel} is missing")
                if _sha256(p) != digest:
                    raise HybridFormatError(
                        f"{folder}: {rel} is not the file this save wrote (SHA-256 differs); one half comes from "
                        "another save or was changed: refusing to load it (nothing was changed)"
                    )
        adaptive = config["adaptive"] or None  # AdaptiveParams (checked by _read_config) or None
        # a pattern matching "" (r"\w*"), saved before the constructor refused it: its store worked (empty tokens
        # dropped) and still loads, with the saved tokenizer set below (the constructor gets the default pattern)
        empty_matching = re.compile(pattern).fullmatch("") is not None
        if empty_matching:
            logger.warning(
                "%s: its token_pattern %r matches the empty string; the store loads as it was saved (empty tokens "
                "are dropped%s), but a new KLHybridStore refuses such a pattern: a token needs at least one "
                "character (use + instead of * or ?, e.g. r'%s')",
                folder,
                pattern,
                "; this pattern gives no other token, so BM25 indexes nothing" if pattern == "" else "",
                BM25_TOKEN_PATTERN,
            )
        store = cls(
            fusion=fusion["mode"],
            weight=fusion["weight"],
            normalization=fusion["normalization"],
            rrf_k=fusion["rrf_k"],
            candidates=fusion["candidates"],
            adaptive_params=adaptive,
            k1=bm25_cfg["k1"],
            b=bm25_cfg["b"],
            stopwords=bm25_cfg["stopwords"],
            token_pattern=BM25_TOKEN_PATTERN if empty_matching else pattern,
            stemmer=bm25_cfg.get("stemmer"),  # a save from before the option has none: no stemming
        )
        kl._set_owner(store)  # the loaded half is read-only on its own too
        store._kl = kl
        half.metas = {d.id: d.metadata for d in kl.get_by_ids(half.ids)}
        store._bm25 = half
        store._tokenizer = tokenizer
        logger.info("loaded a hybrid store of %d documents from %s", len(kl_ids), folder)
        return store


#: Token patterns docs/hybrid.md gives (besides the marks-keeping ones, :func:`_documented_pattern`): the default,
#: bm25s' own (two or more characters) and the one making kana, CJK ideographs and Thai one token a character.
_DOCUMENTED_PATTERNS = frozenset(
    {BM25_TOKEN_PATTERN, r"(?u)\b\w\w+\b", r"[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]|\w+"}
)


def _check_saved_pattern(cfg_path: Path, saved: str, trusted: str | None) -> None:
    r"""Refuse a saved BM25 token pattern that docs/hybrid.md does not give, unless the caller passed it to load.

    The pattern runs on every document and query, and ``hybrid.json`` (which no checksum covers) could name one
    that backtracks catastrophically (``(?:\w+\s?)+!``: 9 s for a 24-character query, holding the GIL).

    Args:
        cfg_path: The store's ``hybrid.json``, for the message.
        saved: Its ``bm25.token_pattern``.
        trusted: :meth:`KLHybridStore.load`'s ``token_pattern`` (``None``: not given).

    Raises:
        HybridFormatError: ``trusted`` is given and differs from ``saved``, or is not given and ``saved`` is not
            one docs/hybrid.md gives (:func:`_documented_pattern`).

    Examples:
        >>> _check_saved_pattern(Path("hybrid.json"), r"(?u)\b\w+\b", None)
        >>> _check_saved_pattern(Path("hybrid.json"), r"[a-z]+", r"[a-z]+")
        >>> _check_saved_pattern(Path("hybrid.json"), r"(\w+\s?)+!", None)
        Traceback (most recent call last):
        kl_retrievers.hybrid.HybridFormatError: hybrid.json: field 'bm25.token_pattern' is '(\\w+\\s?)+!', not one ...
    """
    shown = repr(saved) if len(saved) <= 200 else f"{saved[:200]!r}... ({len(saved)} characters)"
    if trusted is not None:
        if trusted != saved:
            raise HybridFormatError(
                f"{cfg_path}: field 'bm25.token_pattern' is {shown}, not the token_pattern= given to load "
                f"({trusted[:200]!r}); BM25 indexed the store's documents with the saved pattern: pass that one, or "
                "leave token_pattern= out"
            )
        return
    if not _documented_pattern(saved):
        raise HybridFormatError(
            f"{cfg_path}: field 'bm25.token_pattern' is {shown}, not one docs/hybrid.md gives; it would run on every "
            "document and query, and a pattern that backtracks catastrophically makes each search take seconds to "
            "hours: if you trust this store (saved with a pattern of your own), pass that pattern to load, "
            "KLHybridStore.load(path, token_pattern=...)"
        )


#: A ``\uXXXX`` escape in a pattern's text (not itself escaped: ``\\u0041`` is a backslash and ``u0041``).
_UNICODE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})")


def _unescaped(pattern: str) -> str:
    r"""``pattern`` with its ``\uXXXX`` escapes written as the characters (the same regular expression).

    Examples:
        >>> _unescaped(r"[\u3040-\u30ff]|\w+") == "[\u3040-\u30ff]|\\w+"
        True
    """
    return _UNICODE_ESCAPE.sub(lambda m: m[1] + chr(int(m[2], 16)), pattern)


_MARKS = ("Mn", "Mc", "Me")


def _documented_pattern(pattern: str) -> bool:
    r"""Whether a saved token pattern is one docs/hybrid.md gives (it loads without ``token_pattern=``).

    The ``\uXXXX`` escapes of the CJK pattern may be written as the characters (a non-raw string). The
    marks-keeping patterns (``\w[\w<marks>]*``, alone or after the CJK class) count whatever Unicode version
    listed their marks: every character of the class must be a combining mark (Mn, Mc, Me) or one this
    Python's Unicode does not know yet (Cn), as a newer Python's marks are.

    Examples:
        >>> _documented_pattern(BM25_TOKEN_PATTERN), _documented_pattern(r"(\w+\s?)+!")
        (True, False)
        >>> _documented_pattern("\\w[\\w\u0300\u0301]*"), _documented_pattern("\\w[\\w\u0300a]*")
        (True, False)
    """
    text = _unescaped(pattern)
    if text in {_unescaped(documented) for documented in _DOCUMENTED_PATTERNS}:
        return True
    for head in (r"\w[\w", _unescaped(r"[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]|\w[\w")):  # words keeping marks
        if text.startswith(head) and text.endswith("]*"):
            return all(unicodedata.category(char) in (*_MARKS, "Cn") for char in text[len(head) : -2])
    return False


#: What a hybrid store's search says to a query given as Gaussians (BM25 needs the texts).
_QUERY_GAUSSIANS_HINT = (
    "a KLHybridStore searches query texts (BM25 ranks their words): pass the texts, and precomputed query "
    "Gaussians beside them as query_gaussians=Gaussians(mean, var), one per text"
)


def _query_texts(queries: Any) -> list[str]:
    """Query texts as a list, read once (a generator too), each checked as ``KLStore.search_batch`` checks them.

    Query Gaussians given as the queries (a ``Gaussians`` batch, an array of means, or a ``(mean, var)`` pair) are
    refused with a hint to pass the texts and the Gaussians as ``query_gaussians=``, as ``KLStore``'s hint says
    to wrap arrays as ``Gaussians(mean, var)``.

    Examples:
        >>> _query_texts((np.zeros((1, 2)), np.ones((1, 2))))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: queries[0] is ndarray; every text must be a str: a KLHybridStore searches query texts ...
    """
    try:
        return check_texts(queries, "queries")
    except TypeError as exc:
        if _gaussians_meant(queries):
            raise TypeError(f"{exc}: {_QUERY_GAUSSIANS_HINT}") from None
        raise


def _gaussians_meant(queries: Any) -> bool:
    """Whether ``queries`` (refused as texts) look like query Gaussians: a ``Gaussians`` batch, an array of numbers
    (means, or a tensor), or arrays of numbers in a list or tuple (``(mean, var)``), as ``KLStore``'s check tells
    them. An array of bytes or strings (``np.array([b"x"])``) is not: it holds texts, of the wrong type or shape."""

    def numeric(array: Any) -> bool:  # numpy's bool, int, uint and float kinds; a tensor's dtype has no kind
        dtype = getattr(array, "dtype", None)
        if dtype is None or not hasattr(array, "ndim"):
            return False
        kind = getattr(dtype, "kind", None)
        return kind is None or kind in ("b", "i", "u", "f")

    if isinstance(queries, Gaussians):
        return True
    if numeric(queries):
        return True
    return isinstance(queries, (list, tuple)) and any(numeric(q) and q.ndim >= 1 for q in queries)


def _save_token(path: Path) -> str | None:
    """The save token in a half's :data:`_SAVE_TOKEN_FILE` (``None``: no such file, a save before tokens)."""
    if not path.is_file():
        return None
    data = _read_json(path)
    token = data.get(_SAVE_TOKEN_KEY) if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise HybridFormatError(f"{path} must hold a JSON object with a non-empty string {_SAVE_TOKEN_KEY!r}")
    return token


def _check_save_tokens(folder: Path, config: Mapping[str, Any]) -> None:
    """Refuse halves written by different saves (checked with or without checksums: three small reads).

    A folder saved before tokens were written has none anywhere and passes. Otherwise the message names
    the part whose token differs from the other two (``hybrid.json``, the ``kl/`` or the ``bm25/`` half), or
    the half whose token file is missing although ``hybrid.json`` holds a token (when the tokens present agree
    with ``hybrid.json``'s; else the parts come from different saves too, and the message says both).
    """
    config_token = config.get(_SAVE_TOKEN_KEY)
    halves = {sub: _save_token(folder / sub / _SAVE_TOKEN_FILE) for sub in (_KL_DIR, _BM25_DIR)}
    tokens = {_CONFIG: config_token, **{f"{sub}/": token for sub, token in halves.items()}}
    if len(set(tokens.values())) == 1:
        return
    told = "save tokens: " + ", ".join(
        f"{where} {token if token is not None else 'none'}" for where, token in tokens.items()
    )
    refusing = "refusing to load it (nothing was changed)"
    missing = [f"{sub}/{_SAVE_TOKEN_FILE}" for sub, token in halves.items() if token is None]
    are = "is" if len(missing) == 1 else "are"
    present_agree = all(token in (None, config_token) for token in halves.values())
    if config_token is not None and missing and present_agree:
        raise HybridFormatError(
            f"{folder}: {' and '.join(missing)} {are} missing, but {_CONFIG} holds save token {config_token}, which "
            f"every save also writes into both halves ({told}): the file was deleted, or its half comes from a save "
            f"made before save tokens; {refusing}"
        )
    for odd, token in tokens.items():
        others = {t for where, t in tokens.items() if where != odd}
        if len(others) != 1 or token in others:
            continue
        if odd == _CONFIG:
            differs = (
                f"{_CONFIG} has no {_SAVE_TOKEN_KEY!r}" if token is None else f"{_CONFIG}'s {_SAVE_TOKEN_KEY!r} differs"
            )
            raise HybridFormatError(
                f"{folder}: {_CONFIG} was not written by the same save as its {_KL_DIR}/ and {_BM25_DIR}/ halves "
                f"({told}): the halves agree and {differs}, so {_CONFIG} comes from another save or was changed; "
                f"{refusing}"
            )
        differs = (
            f"holds a token where {_CONFIG} and the other half hold none"
            if others == {None}
            else f"differs from {_CONFIG} and the other half, which agree"
        )
        raise HybridFormatError(
            f"{folder}: the {_KL_DIR}/ half and the {_BM25_DIR}/ half were not written by the same save ({told}): "
            f"{odd}{_SAVE_TOKEN_FILE} {differs}, so the {odd} half comes from another save or its token file was "
            f"changed; {refusing}"
        )
    also_missing = f"; {' and '.join(missing)} {are} missing as well" if missing else ""
    raise HybridFormatError(
        f"{folder}: no two of {_CONFIG}, the {_KL_DIR}/ half and the {_BM25_DIR}/ half agree on a save token "
        f"({told}): they come from different saves, or token files were changed{also_missing}; {refusing}"
    )


def _mismatch(where: str, bm25_ids: set[str], kl_ids: set[str], cause: str = "one half comes from another save") -> str:
    only_bm25, only_kl = bm25_ids - kl_ids, kl_ids - bm25_ids
    return (
        f"{where}: the BM25 half and the KL half disagree on ids: the BM25 half holds {len(bm25_ids)} and the KL half "
        f"{len(kl_ids)}; {len(only_bm25)} only in BM25 {_examples(only_bm25)}, {len(only_kl)} only in KL "
        f"{_examples(only_kl)}; {cause}"
    )


def _is_hybrid_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a hybrid store's ``hybrid.json`` (a save may replace it)."""
    config = read_json_object(folder / _CONFIG)
    return config is not None and config.get("format") == _FORMAT_NAME


def _checked_files(*, indexed: bool, tokens: bool) -> tuple[str, ...]:
    """The files a save lists in ``hybrid.json``'s ``files``: ``indexed``: its BM25 half is indexed; ``tokens``: it
    holds a save token (every save since the tokens; an earlier one listed no token file).

    Examples:
        >>> _checked_files(indexed=False, tokens=False)
        ('kl/config.json', 'bm25/ids.json')
        >>> len(_checked_files(indexed=True, tokens=True))  # what every indexed save since the tokens wrote
        9
    """
    always = _CHECKED_FILES if tokens else tuple(rel for rel in _CHECKED_FILES if rel not in _TOKEN_FILES)
    return always + (_CHECKED_INDEX_FILES if indexed else ())


def _read_config(cfg_path: Path) -> dict[str, Any]:
    """``hybrid.json``, checked field by field (errors name the field)."""
    config = _read_json(cfg_path)
    if not isinstance(config, dict):
        raise HybridFormatError(f"{cfg_path} must hold a JSON object")
    if config.get("format") != _FORMAT_NAME:
        raise HybridFormatError(f"{cfg_path} is not a hybrid store config: field 'format' is {config.get('format')!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise HybridFormatError(
            f"{cfg_path}: format_version {config.get('format_version', '<missing>')!r} is not a format version: "
            f"it must be an integer from 1 to {FORMAT_VERSION} (the newest this kl-retrievers reads)"
        )
    if version > FORMAT_VERSION:
        raise HybridFormatError(
            f"{cfg_path}: format_version {version!r} is not one this kl-retrievers ({library_version()}) reads "
            f"(up to {FORMAT_VERSION}): upgrade kl-retrievers"
        )

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise HybridFormatError(f"{cfg_path}: field {name!r} must be {what}; got {config.get(name, '<missing>')!r}")

    need(isinstance(config.get("fusion"), dict), "fusion", "an object")
    need(isinstance(config.get("bm25"), dict), "bm25", "an object")
    need(isinstance(config.get("count"), int), "count", "an integer")
    need(isinstance(config.get("ids_sha256"), str), "ids_sha256", "a string")
    need(isinstance(config.get("bm25_indexed"), bool), "bm25_indexed", "true or false")
    need(isinstance(config.get("files"), dict), "files", "an object")
    token = config.get(_SAVE_TOKEN_KEY)
    need(token is None or (isinstance(token, str) and bool(token)), _SAVE_TOKEN_KEY, "a non-empty string")
    need(config.get("adaptive") is None or isinstance(config.get("adaptive"), dict), "adaptive", "an object or null")
    allowed = (*_CHECKED_FILES, *_CHECKED_INDEX_FILES)
    for rel in config["files"]:
        if rel not in allowed:  # also every absolute, drive, UNC or '..' name: load opens folder / rel
            raise HybridFormatError(
                f"{cfg_path}: field 'files' names {rel!r}, which is not a file of a hybrid store folder; "
                f"it may name only {list(allowed)}"
            )
    # every file the save wrote, with or without verify_checksums (as KLStore's config.json): load checks only the
    # names listed, so a file left out (an emptied table) would be served unchecked
    required = _checked_files(indexed=config["bm25_indexed"], tokens=token is not None)
    missing = [rel for rel in required if rel not in config["files"]]
    if missing:
        raise HybridFormatError(
            f"{cfg_path}: field 'files' has no checksum for {missing}, which a save of this config "
            f"('bm25_indexed' {str(config['bm25_indexed']).lower()}, {'a' if token is not None else 'no'} "
            f"'{_SAVE_TOKEN_KEY}') lists; unlisted, they would load unchecked: refusing to load it (nothing was "
            "changed)"
        )
    try:
        mode = FusionConfig(**config["fusion"]).mode
    except (TypeError, ValueError) as exc:
        raise HybridFormatError(f"{cfg_path}: field 'fusion' holds an invalid value: {exc}") from None
    # the scores it serves (every release wrote them; a config without them loads, as in the other formats)
    higher, fused = "higher_is_better", f" (the fused score of fusion mode {mode!r})"
    check_score(config, cfg_path, name=f"fused_{mode}", direction=higher, error=HybridFormatError, note=fused)
    check_score(config, cfg_path, field="score.components.dense", error=HybridFormatError)
    check_score(config, cfg_path, field="score.components.bm25", name="bm25", direction=higher, error=HybridFormatError)
    bm25 = config["bm25"]
    for key in ("k1", "b", "stopwords", "token_pattern"):
        if key not in bm25:
            raise HybridFormatError(f"{cfg_path}: field 'bm25' lacks {key!r}")
    if version >= 2 and "stemmer" not in bm25:  # format 2 is the stemmer's: without it the tokens would not match
        raise HybridFormatError(
            f"{cfg_path}: field 'bm25' lacks 'stemmer', which format_version {version} always writes (null: not "
            "stemmed); without it the BM25 half's stemmed index would be searched with unstemmed queries"
        )
    try:  # the values, checked as the constructor checks them, before either half is read
        _bm25_settings(bm25["k1"], bm25["b"], bm25["stopwords"], bm25["token_pattern"], bm25.get("stemmer"), saved=True)
    except (TypeError, ValueError) as exc:
        raise HybridFormatError(f"{cfg_path}: field 'bm25' holds an invalid value: {exc}") from None
    if config["adaptive"]:
        try:
            config["adaptive"] = AdaptiveParams.from_dict(config["adaptive"], "field 'adaptive'")
        except ValueError as exc:
            raise HybridFormatError(f"{cfg_path}: {exc}") from None
    return config


# --------------------------------------------------------------------------------------
# Fitting the adaptive weight (training data only)
# --------------------------------------------------------------------------------------


def ndcg_curves(
    candidates: Sequence[Candidates],
    qrels: Sequence[Mapping[str, int]],
    grid: np.ndarray,
    normalization: Normalization,
    k: int = 10,
) -> np.ndarray:
    """nDCG@k of each query's convex fusion at every dense weight of ``grid``, shape ``(n, len(grid))``."""
    out = np.zeros((len(candidates), len(grid)))
    for i, (c, rel) in enumerate(zip(candidates, qrels, strict=True)):
        has_bm25 = bool((c.bm25_rank > 0).any())
        nd = normalize_scores(c.neg_kl, normalization)
        nb = normalize_scores(c.bm25, normalization)
        for j, w in enumerate(grid):
            scores = w * nd + (1.0 - w) * nb if has_bm25 else nd
            order = _order(scores, c.neg_kl)[:k]
            out[i, j] = ndcg_at_k([c.ids[p] for p in order], rel, k)
    return out


def _interp(curves: np.ndarray, w: np.ndarray) -> np.ndarray:
    g = curves.shape[1] - 1
    pos = np.clip(w, 0.0, 1.0) * g
    lo = np.minimum(np.floor(pos).astype(np.int64), g - 1)
    frac = pos - lo
    rows = np.arange(len(w))
    return curves[rows, lo] * (1.0 - frac) + curves[rows, lo + 1] * frac


def fit_adaptive(
    groups: Mapping[str, tuple[Sequence[Candidates], Sequence[Mapping[str, int]]]],
    *,
    normalization: Normalization = "minmax",
    signals: Sequence[str] = SIGNALS,
    grid_size: int = 21,
    l2: float = 1e-3,
    restarts: int = 8,
    seed: int = 0,
    model: str | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    info: Mapping[str, Any] | None = None,
    precomputed: Mapping[str, np.ndarray] | None = None,
) -> AdaptiveParams:
    """Fit :class:`AdaptiveParams` to maximise mean nDCG@10 on training queries.

    Each group (a training collection) counts equally. Per query, nDCG@10 of the convex fusion
    is computed at ``grid_size`` dense weights and linearly interpolated in between; the
    objective, the mean over groups of the mean interpolated nDCG@10 at each query's weight
    minus ``l2`` times the squared coefficients, is maximised with Powell's method from
    ``restarts`` seeded starts (the first at the best fixed weight). The signals are rounded to
    float32 precision and the objective to 1e-12, so the same training data fitted in two
    processes (whose sums may differ in the last bits) gives identical parameters. Needs ``scipy``.

    Args:
        groups: Name -> (candidates of each query, each query's qrels).
        normalization: Score normalisation of the fusion.
        signals: Which :data:`SIGNALS` the weight reads.
        grid_size: Dense weights evaluated per query (evenly spaced in ``[0, 1]``).
        l2: Penalty on the squared coefficients of the standardised signals.
        restarts: Optimiser starts.
        seed: Seed of the random starts.
        model: The encoder the candidates came from (recorded).
        candidates: Candidate depth the signals were computed at (recorded).
        info: Extra facts to record (training data, command).
        precomputed: Group name -> its :func:`ndcg_curves` at ``grid_size`` evenly spaced weights
            with this ``normalization`` (saves recomputing them across fits).

    Returns:
        The fitted parameters; ``info`` also records the training objective and the best
        fixed weight's.

    Raises:
        ModuleNotFoundError: scipy is not installed (the message names the extra that installs it).
    """
    require_modules("fit_adaptive", ["scipy"], "hybrid")  # one line naming the extra, not a bare "No module named"
    from scipy.optimize import minimize

    normalization = _check_normalization(normalization)
    grid = np.linspace(0.0, 1.0, grid_size)
    xs, curves, weights = [], [], []
    for name, (cands, rels) in groups.items():
        if not cands:
            continue
        xs.append(np.stack([c.signal_vector(signals) for c in cands]))
        given = (precomputed or {}).get(name)
        if given is not None and given.shape != (len(cands), grid_size):
            raise ValueError(
                f"precomputed curves of {name!r} have shape {given.shape}; expected {(len(cands), grid_size)}"
            )
        curves.append(given if given is not None else ndcg_curves(cands, rels, grid, normalization))
        weights.append(np.full(len(cands), 1.0 / len(cands)))
    if not xs:
        raise ValueError("fit_adaptive needs at least one group with queries")
    # Signals are rounded to float32 precision and the objective to 1e-12: the same training data computed in
    # another process (other thread timings, other memory alignment) can differ in the last bits, and Powell's
    # comparisons on this piecewise-flat objective would otherwise follow those bits to another optimum.
    x = np.concatenate(xs).astype(np.float32).astype(np.float64)
    curve = np.concatenate(curves)
    qw = np.concatenate(weights) / len(xs)
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    z = (x - center) / scale
    fixed = curve.T @ qw
    best_fixed = int(np.argmax(fixed))
    w0 = float(np.clip(grid[best_fixed], 0.02, 0.98))

    def objective(theta: np.ndarray) -> float:
        w = _sigmoid(theta[0] + z @ theta[1:])
        return round(-float(_interp(curve, w) @ qw) + l2 * float(theta[1:] @ theta[1:]), 12)

    rng = np.random.default_rng(seed)
    starts = [np.concatenate([[math.log(w0 / (1 - w0))], np.zeros(len(signals))])]
    starts += [np.concatenate([[rng.normal(0, 1)], rng.normal(0, 0.5, len(signals))]) for _ in range(restarts - 1)]
    best: Any = None
    for start in starts:
        res = minimize(objective, start, method="Powell", options={"maxiter": 20000, "xtol": 1e-4, "ftol": 1e-7})
        if best is None or res.fun < best.fun:
            best = res
    theta = np.asarray(best.x)
    fitted = float(_interp(curve, _sigmoid(theta[0] + z @ theta[1:])) @ qw)
    record = dict(info or {})
    record.update(
        {
            "objective": "mean over groups of mean nDCG@10 (convex fusion, weight interpolated on a grid)",
            "grid_size": grid_size,
            "l2": l2,
            "restarts": restarts,
            "seed": seed,
            "groups": {name: len(c) for name, (c, _) in groups.items()},
            "train_ndcg@10_adaptive": round(fitted, 6),
            "train_ndcg@10_best_fixed": round(float(fixed[best_fixed]), 6),
            "best_fixed_weight": float(grid[best_fixed]),
        }
    )
    return AdaptiveParams(
        signals=tuple(signals),
        center=tuple(float(v) for v in center),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in theta[1:]),
        bias=float(theta[0]),
        normalization=normalization,
        candidates=candidates,
        model=model,
        info=record,
    )
