"""Per-query confidence and abstention for the framework adapters (LangChain, LlamaIndex).

A retriever's *confidence* is the probability that the top-ranked document of its dense (``-KL``)
ranking is relevant, from a :class:`~kl_retrievers.calibration.ConfidenceCalibrator`: the one
given explicitly, else the one the encoder's model ships (``confidence_calibration.json`` in a
bundled model or a saved model folder). A model without one gives ``confidence=None`` and one
logged warning per model; abstention (``min_confidence``) then refuses to run, since it cannot
judge anything.

Examples:
    >>> check_min_confidence(0.4)
    0.4
    >>> check_min_confidence(1.5)
    Traceback (most recent call last):
    ValueError: min_confidence must be a number in [0, 1] (a probability) or None; got 1.5
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers.calibration import CALIBRATION_FILE, NEEDS_REFERENCE, ConfidenceCalibrator

logger = logging.getLogger(__name__)

#: Metadata key of the calibrated confidence on every result.
CONFIDENCE_KEY = "confidence"

_WARNED: set[str] = set()
_WARN_LOCK = threading.Lock()
# Scores a feature reads (the deepest feature sets how many results are fetched).
_DEPTH = {"uncertainty": 0, "max_score": 1, "gap12": 2, "gap1_10": 10, "std10": 10}


def check_min_confidence(value: Any, name: str = "min_confidence", *, allow_none: bool = True) -> float | None:
    """``None`` (if allowed) or a probability in ``[0, 1]``; else a ``ValueError`` naming the value and the range.

    Examples:
        >>> check_min_confidence(None) is None
        True
        >>> check_min_confidence("high", allow_none=False)
        Traceback (most recent call last):
        ValueError: min_confidence must be a number in [0, 1] (a probability); got 'high'
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        also = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a number in [0, 1] (a probability){also}; got {value!r}")
    return float(value)


def check_calibrator(calibrator: Any) -> ConfidenceCalibrator | None:
    """A fitted calibrator from a :class:`ConfidenceCalibrator`, a path to its JSON, or ``None``.

    Raises:
        TypeError: Neither of those.
        ValueError: Not fitted, or it uses features that need a corpus reference score (``nqc``,
            ``wig``), which a retriever does not compute.
    """
    if calibrator is None:
        return None
    if isinstance(calibrator, (str, os.PathLike)):
        calibrator = ConfidenceCalibrator.load(calibrator)
    if not isinstance(calibrator, ConfidenceCalibrator):
        raise TypeError(
            f"calibrator must be a ConfidenceCalibrator, a path to its JSON or None; got {type(calibrator).__name__}"
        )
    if not calibrator.is_fitted:
        raise ValueError("calibrator is not fitted: fit it or load one with ConfidenceCalibrator.load(path)")
    bad = sorted(set(calibrator.features) & NEEDS_REFERENCE)
    if bad:
        raise ValueError(
            f"calibrator features {bad} need a corpus reference score, which retrievers do not compute; "
            f"use a calibrator on {sorted(_DEPTH)} only"
        )
    return calibrator


def model_calibration_path(encoder: Any) -> Path | None:
    """The ``confidence_calibration.json`` the encoder's model ships, or ``None``.

    Looks at ``encoder.name_or_path``: a bundled model name (also ``kl_retrievers:NAME``) or a
    local model folder.

    Examples:
        >>> class Encoder:
        ...     name_or_path = "kl_retrievers:minilm-gauss-soup"
        >>> model_calibration_path(Encoder()).name
        'confidence_calibration.json'
    """
    name = str(getattr(encoder, "name_or_path", "") or "")
    if not name:
        return None
    from kl_retrievers.pretrained import bundled_model_path, bundled_models

    short = name.split(":", 1)[1] if name.startswith("kl_retrievers:") else name
    if short in bundled_models():
        path = bundled_model_path(short) / CALIBRATION_FILE
        return path if path.is_file() else None
    try:
        path = Path(name).expanduser() / CALIBRATION_FILE
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def _warn_once(model: str) -> None:
    with _WARN_LOCK:
        if model in _WARNED:
            return
        _WARNED.add(model)
    logger.warning(
        "the model %r ships no confidence calibration (%s): results carry confidence=None. Pass calibrator= "
        "(a kl_retrievers.calibration.ConfidenceCalibrator fitted for this model, or a path to its JSON)",
        model,
        CALIBRATION_FILE,
    )


class ConfidenceScorer:
    """Computes a query's confidence for a retriever; resolves the model's calibrator once per encoder.

    Args:
        calibrator: An explicit calibrator (or a path to its JSON); ``None``: the encoder's model's.

    Examples:
        >>> cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
        >>> scorer = ConfidenceScorer(cal)
        >>> scorer.depth, 0.5 < scorer.confidence(None, [-1.0, -1.3], 0.0) <= 1.0
        (2, True)
    """

    def __init__(self, calibrator: ConfidenceCalibrator | str | os.PathLike[str] | None = None) -> None:
        self.explicit = check_calibrator(calibrator)
        self._cache: dict[int, tuple[Any, ConfidenceCalibrator | None]] = {}
        self._lock = threading.Lock()

    def calibrator(self, encoder: Any) -> ConfidenceCalibrator | None:
        """The calibrator used for queries encoded by ``encoder`` (``None``: none known, warned once)."""
        if self.explicit is not None:
            return self.explicit
        if encoder is None:
            return None
        with self._lock:
            hit = self._cache.get(id(encoder))
            if hit is not None and hit[0] is encoder:
                return hit[1]
            path = model_calibration_path(encoder)
            cal = check_calibrator(path) if path is not None else None
            self._cache[id(encoder)] = (encoder, cal)
        if cal is None:
            _warn_once(str(getattr(encoder, "name_or_path", None) or type(encoder).__name__))
        return cal

    @property
    def depth(self) -> int:
        """Scores the explicit calibrator reads (2 when it is resolved per encoder, the default features)."""
        return self.depth_for(self.explicit)

    @staticmethod
    def depth_for(calibrator: ConfidenceCalibrator | None) -> int:
        """How many top scores ``calibrator`` reads (at least 2)."""
        if calibrator is None:
            return 2
        return max(2, *(_DEPTH.get(f, 2) for f in calibrator.features))

    def confidence(self, encoder: Any, scores: Sequence[float], uncertainty: float) -> float | None:
        """P(top-1 relevant) from the query's best ``-KL`` scores; ``None`` without a calibrator or 2 scores."""
        cal = self.calibrator(encoder)
        if cal is None or len(scores) < 2:
            return None
        return cal.confidence(list(scores), float(uncertainty))


def abstains(confidence: float | None, min_confidence: float | None) -> bool:
    """Whether a query with ``confidence`` is refused at ``min_confidence`` (``None`` confidence: never).

    Examples:
        >>> abstains(0.2, 0.5), abstains(0.7, 0.5), abstains(0.2, None)
        (True, False, False)
    """
    return min_confidence is not None and confidence is not None and confidence < min_confidence


def require_calibrator(scorer: ConfidenceScorer, encoder: Any, min_confidence: float | None) -> None:
    """Refuse ``min_confidence`` without a calibrator: abstention could never happen."""
    if min_confidence is None or scorer.calibrator(encoder) is not None:
        return
    model = getattr(encoder, "name_or_path", None) if encoder is not None else None
    raise ValueError(
        f"min_confidence={min_confidence} needs a confidence calibrator, and the model {model!r} ships none "
        f"({CALIBRATION_FILE}); pass calibrator= (a fitted kl_retrievers.calibration.ConfidenceCalibrator "
        "or a path to its JSON) or leave min_confidence=None"
    )


def log_abstention(query: str, confidence: float | None, min_confidence: float | None) -> None:
    """One INFO line for an abstention (the query is shortened)."""
    short = query if len(query) <= 80 else query[:77] + "..."
    logger.info("abstained on %r: confidence %.3f < min_confidence %.3f", short, confidence, min_confidence)


def hybrid_search(
    store: Any,
    query: str,
    k: int,
    *,
    filter: Any = None,
    fusion: str | None = None,
    weight: float | None = None,
    normalization: str | None = None,
    scorer: ConfidenceScorer,
    min_confidence: float | None = None,
) -> tuple[list[Any], float | None, bool]:
    """One query on a :class:`~kl_retrievers.hybrid.KLHybridStore` with its confidence and abstention.

    The confidence is the calibrator's, read from the query's *dense* candidate list (its best
    ``-KL`` scores) and its uncertainty, as for a dense retriever: it says how well the ``-KL``
    side found something, whatever the fusion then does.

    Returns:
        ``(hits, confidence, abstained)``: the fused :class:`~kl_retrievers.hybrid.HybridResult`
        list (empty when abstaining), the confidence (``None`` without a calibrator or with fewer
        than 2 dense candidates) and whether the query was refused.
    """
    config = store.fusion.replace(mode=fusion, weight=weight, normalization=normalization)
    encoder = store.encoder
    require_calibrator(scorer, encoder, min_confidence)
    if config.mode == "adaptive":
        store.adaptive_params()  # missing parameters fail before any work
    cand = store.candidates([query], filter=filter, depth=max(k, config.candidates))[0]
    cal = scorer.calibrator(encoder)
    dense = np.sort(np.asarray(cand.neg_kl)[np.asarray(cand.dense_rank) > 0])[::-1]
    confidence = scorer.confidence(encoder, dense[: scorer.depth_for(cal)].tolist(), cand.uncertainty)
    if abstains(confidence, min_confidence):
        log_abstention(query, confidence, min_confidence)
        return [], confidence, True
    ranked = store.fuse_candidates(cand, k, config)
    return store.to_results(cand, ranked, config.mode), confidence, False
