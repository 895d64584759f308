"""Per-query confidence and abstention for the framework adapters (LangChain, LlamaIndex).

A retriever's *confidence* is the probability that the top-ranked document of its ranking is
relevant, from a :class:`~kl_retrievers.calibration.ConfidenceCalibrator`: the one given
explicitly, else the one the encoder's model ships in a bundled model or a saved model folder. A
model without one gives ``confidence=None`` and one logged warning per model; abstention
(``min_confidence``) then refuses to run, since it cannot judge anything. A query with only one
candidate document (a filter, a small store) has no confidence either (the calibrators read the
top two scores): without a floor it is answered with ``confidence=None``; with a floor above 0 it
abstains (fail closed, :func:`abstention_reason`). ``min_confidence=0`` answers every query
(:func:`abstention_enabled`).

Two kinds of calibrator (:attr:`ConfidenceCalibrator.kind`):

* ``"dense"`` (``confidence_calibration.json``): P(top-1 of the ``-KL`` ranking is relevant), from
  the query's uncertainty and best ``-KL`` scores. Dense retrievers take only this kind.
* ``"hybrid"`` (``hybrid_confidence_calibration.json``): P(top-1 of a
  :class:`~kl_retrievers.hybrid.KLHybridStore`'s ``"adaptive"`` fusion ranking is relevant), from
  dense and BM25 signals of the query's candidates (:func:`~kl_retrievers.calibration.hybrid_query_features`),
  the same whatever fusion ranks the results (a query whose BM25 half matches no candidate gets about 0:
  :func:`~kl_retrievers.calibration.hybrid_confidence`).
  Hybrid retrievers use the model's hybrid calibrator by default; an explicit dense calibrator is
  also accepted there (and, when the model ships no hybrid one, its dense one is used, with one
  WARNING per model): the confidence is then the dense ranking's, read from the dense candidates.

A calibrator's features are on the score scale of the model it was fitted for, which it records
(``info["model"]``). An explicit calibrator recorded for another model than the encoder's (its
bundled name; for a folder, what its own calibrators record or the bundled model an ONNX export
came from: :func:`encoder_model_names`) is used all the same, since a reuse may be deliberate, but
with one WARNING per calibrator and model naming both (:func:`check_calibrator_model`): its
confidences, and ``min_confidence`` abstention, are then likely off. Likewise a hybrid calibrator
records the BM25 stemmer of the store it was fitted on (``info["bm25_stemmer"]``, ``None``:
unstemmed); a hybrid store stemmed otherwise uses it with one WARNING naming both
(:func:`check_calibrator_stemmer`; a calibrator that records no stemmer passes silently). A store
with ``stemmer=None`` (unstemmed, as every store saved before the option) takes its model's
``hybrid_confidence_calibration.unstemmed.json`` when the model ships one (both bundled models with a
hybrid calibrator do), else the stemmed one with that warning.

Examples:
    >>> check_min_confidence(0.4)
    0.4
    >>> check_min_confidence(1.5)
    Traceback (most recent call last):
    ValueError: min_confidence must be a number in [0, 1] (a probability) or None; got 1.5
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from kl_retrievers._encoding import is_blank_text
from kl_retrievers._io import user_path
from kl_retrievers.calibration import (
    _UNSTEMMED_HYBRID_CALIBRATION_FILE,
    CALIBRATION_FILE,
    HYBRID_CALIBRATION_FILE,
    NEEDS_REFERENCE,
    ConfidenceCalibrator,
    _hybrid_calibration_path,
    hybrid_confidence,
)
from kl_retrievers.gaussian import is_real_number

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
    if not is_real_number(value) or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        also = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a number in [0, 1] (a probability){also}; got {value!r}")
    return float(value)


#: The calibrator kinds each retriever kind accepts (the first one is the one its model ships).
RETRIEVER_CALIBRATORS: dict[str, tuple[str, ...]] = {"dense": ("dense",), "hybrid": ("hybrid", "dense")}
#: The file a model ships each calibrator kind in.
CALIBRATION_FILES: dict[str, str] = {"dense": CALIBRATION_FILE, "hybrid": HYBRID_CALIBRATION_FILE}


def check_calibrator(calibrator: Any, retriever: str = "dense") -> ConfidenceCalibrator | None:
    """A fitted calibrator from a :class:`ConfidenceCalibrator`, a path to its JSON, or ``None``.

    Args:
        calibrator: The calibrator, a path to its JSON, or ``None``.
        retriever: The retriever it is for: ``"dense"`` takes dense calibrators only, ``"hybrid"``
            hybrid or dense ones (:data:`RETRIEVER_CALIBRATORS`).

    Raises:
        TypeError: Neither of those.
        ValueError: Not fitted, a calibrator kind the retriever cannot use (a hybrid calibrator
            for a dense retriever), or it uses features that need a corpus reference score
            (``nqc``, ``wig``), which a retriever does not compute.

    The model it was fitted for is not checked here (no encoder is known yet): a
    :class:`ConfidenceScorer` checks it against each encoder it meets
    (:func:`check_calibrator_model`; a mismatch warns, it is not refused).

    Examples:
        >>> cal = ConfidenceCalibrator(["bm25_coverage"], kind="hybrid").fit([[0.1], [0.9]], [0, 1])
        >>> check_calibrator(cal, "hybrid").kind
        'hybrid'
        >>> check_calibrator(cal)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: calibrator is of kind 'hybrid' (...); a dense retriever takes kind 'dense' only: use it with ...
    """
    if retriever not in RETRIEVER_CALIBRATORS:
        raise ValueError(f"retriever must be one of {list(RETRIEVER_CALIBRATORS)}; got {retriever!r}")
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
    allowed = RETRIEVER_CALIBRATORS[retriever]
    if calibrator.kind not in allowed:
        what = {"hybrid": "a hybrid retriever's BM25 + -KL candidates", "dense": "-KL scores"}[calibrator.kind]
        hint = "use it with KLHybridRetriever, or " if calibrator.kind == "hybrid" else ""
        raise ValueError(
            f"calibrator is of kind {calibrator.kind!r} (fitted on {what}); a {retriever} retriever takes kind "
            f"{' or '.join(repr(k) for k in allowed)} only: {hint}pass a {allowed[0]} calibrator "
            f"({CALIBRATION_FILES[allowed[0]]})"
        )
    bad = sorted(set(calibrator.features) & NEEDS_REFERENCE)
    if bad:
        raise ValueError(
            f"calibrator features {bad} need a corpus reference score, which retrievers do not compute; "
            f"use a calibrator on {sorted(_DEPTH)} only"
        )
    return calibrator


def model_calibration_path(encoder: Any, file: str = CALIBRATION_FILE) -> Path | None:
    """The ``confidence_calibration.json`` (or another ``file``) the encoder's model ships, or ``None``.

    Looks at ``encoder.name_or_path``: a bundled model name (also ``kl_retrievers:NAME``) or a
    local model folder.

    Examples:
        >>> class Encoder:
        ...     name_or_path = "kl_retrievers:minilm-gauss-soup"
        >>> model_calibration_path(Encoder()).name
        'confidence_calibration.json'
    """
    from kl_retrievers.pretrained import model_file

    return model_file(_encoder_model(encoder), file)


def _encoder_model(encoder: Any) -> str:
    """The model reference an encoder records (``name_or_path``; ``""`` when it records none)."""
    return str(getattr(encoder, "name_or_path", "") or "")


def _model_name(name: str) -> str:
    """A model reference as a calibrator records it: the bundled name, else the last path component."""
    name = name.strip().removeprefix("kl_retrievers:")
    return Path(name.rstrip("/\\")).name or name


def encoder_model_names(encoder: Any) -> frozenset[str] | None:
    """The names a calibrator fitted for ``encoder``'s model records (``info["model"]``); ``None``: not known.

    From ``encoder.name_or_path``: a bundled model's name (also ``kl_retrievers:NAME``); for a local
    model folder, the models its own calibrators record and, for an ONNX export, the bundled model
    it was exported from (its ``config.json``'s ``source.name_or_path``). A folder that says neither
    (e.g. a re-saved or fine-tuned copy, whose weights may or may not be the original's), a hub id
    or anything else names no known model, so no calibrator is warned about for it.

    Examples:
        >>> class Encoder:
        ...     name_or_path = "kl_retrievers:bge-small-unit-variance"
        >>> sorted(encoder_model_names(Encoder()))
        ['bge-small-unit-variance']
        >>> encoder_model_names(type("E", (), {"name_or_path": "org/some-hub-model"})()) is None
        True
    """
    from kl_retrievers.pretrained import _bundled_name

    reference = _encoder_model(encoder)
    if not reference:
        return None
    try:
        bundled = _bundled_name(reference)
    except ValueError:  # kl_retrievers:NAME of a model this install lacks: still its name
        return frozenset({_model_name(reference)}) if reference.startswith("kl_retrievers:") else None
    if bundled is not None:
        return frozenset({bundled})
    folder = user_path(reference)
    try:
        if not folder.is_dir():
            return None
    except OSError:
        return None
    names: set[str] = set()
    for file in (*CALIBRATION_FILES.values(), _UNSTEMMED_HYBRID_CALIBRATION_FILE):
        try:
            own = ConfidenceCalibrator.load(folder / file).info.get("model") if (folder / file).is_file() else None
        except (OSError, ValueError):
            own = None
        if isinstance(own, str) and own.strip():
            names.add(_model_name(own))
    try:  # an ONNX export names the model it was exported from
        source = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("source")
        origin = source.get("name_or_path") if isinstance(source, dict) else None
        origin_name = _bundled_name(origin) if isinstance(origin, str) and origin else None
    except (OSError, ValueError, AttributeError):
        origin_name = None
    if origin_name is not None:
        names.add(origin_name)
    return frozenset(names) or None


def _first_warning(key: str) -> bool:
    """Whether the warning ``key`` names is due: ``True`` the first time only (this process, every thread)."""
    with _WARN_LOCK:
        if key in _WARNED:
            return False
        _WARNED.add(key)
    return True


def check_calibrator_model(calibrator: ConfidenceCalibrator, encoder: Any) -> bool:
    """Whether ``calibrator`` may have been fitted for ``encoder``'s model; warns once when it was not.

    A calibrator's features (its ``-KL`` or BM25 scores) are on the scale of the model it was
    fitted for, recorded as ``info["model"]``. When that name and the encoder's model name
    (:func:`encoder_model_names`) are both known and differ, one WARNING per calibrator and
    model names both; the calibrator is still used (a deliberate reuse is allowed). Names are
    compared, not fingerprints (one model's dense and hybrid calibrators carry different ones).
    A calibrator without a recorded model, or an encoder of an unknown model, passes silently.

    Returns:
        ``False`` for a known mismatch (warned), else ``True``.

    Examples:
        >>> cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [1.0]], [0, 1], info={"model": "minilm-gauss-soup"})
        >>> check_calibrator_model(cal, type("E", (), {"name_or_path": "kl_retrievers:minilm-gauss-soup"})())
        True
    """
    recorded = calibrator.info.get("model")
    if not isinstance(recorded, str) or not recorded.strip():
        return True
    names = encoder_model_names(encoder)
    if names is None or _model_name(recorded) in names:
        return True
    model = str(getattr(encoder, "name_or_path", ""))
    key = f"model-mismatch\0{recorded}\0{calibrator.info.get('fingerprint')}\0{calibrator.kind}\0{model}"
    if not _first_warning(key):
        return False
    logger.warning(
        "the %s confidence calibrator was fitted for the model %r (its info['model']) but is used with the model "
        "%r: its features are on the fitted model's score scale, so confidences and min_confidence abstention "
        "are likely wrong. Pass a calibrator fitted for %r (or calibrator=None for the one its model ships); "
        "ignore this if the reuse is deliberate",
        calibrator.kind,
        recorded,
        model,
        model,
    )
    return False


def _stemmed(stemmer: str | None) -> str:
    return f"stemmed with {stemmer!r}" if stemmer else "not stemmed"


def check_calibrator_stemmer(calibrator: ConfidenceCalibrator, stemmer: str | None) -> bool:
    """Whether a hybrid ``calibrator`` was fitted on BM25 stemmed as a store's ``stemmer``; warns once when not.

    A hybrid calibrator's BM25 features, and the fused top-1 it predicts, depend on the BM25 half's
    tokens, so one fitted with another stemmer (:attr:`ConfidenceCalibrator.bm25_stemmer`) than the
    store's gives shifted confidences. It is still used (a deliberate reuse is allowed), with one
    WARNING per calibrator and store stemmer naming both, as for the adaptive fusion parameters. A
    dense calibrator (no BM25) or a hybrid one that records no stemmer passes silently.

    Args:
        calibrator: The calibrator a hybrid retriever uses.
        stemmer: The store's :attr:`~kl_retrievers.hybrid.KLHybridStore.stemmer` (``None``: unstemmed).

    Returns:
        ``False`` for a recorded stemmer that differs (warned), else ``True``.

    Examples:
        >>> cal = ConfidenceCalibrator(["gap12"], kind="hybrid")
        >>> _ = cal.fit([[0.0], [1.0]], [0, 1], info={"bm25_stemmer": None})  # fitted on unstemmed BM25
        >>> check_calibrator_stemmer(cal, None)
        True
    """
    if calibrator.kind != "hybrid" or not calibrator.records_bm25_stemmer:
        return True
    recorded = calibrator.bm25_stemmer
    if recorded == stemmer:
        return True
    info = calibrator.info
    key = f"stemmer-mismatch\0{info.get('model')}\0{info.get('fingerprint')}\0{recorded}\0{stemmer}"
    if not _first_warning(key):
        return False
    logger.warning(
        "the hybrid confidence calibrator%s was fitted on BM25 %s, but this store's BM25 is %s; its BM25 features "
        "and the fused ranking it predicts depend on the BM25 tokens, so confidences and min_confidence abstention "
        "are likely off: pass stemmer=%r to the store to match it, or a calibrator fitted for this store "
        "(info['bm25_stemmer'] records its stemmer)",
        f" of {info['model']!r}" if isinstance(info.get("model"), str) else "",
        _stemmed(recorded),
        _stemmed(stemmer),
        recorded,
    )
    return False


def _warn_once(model: str) -> None:
    if not _first_warning(model):
        return
    logger.warning(
        "the model %r ships no confidence calibration (%s): results carry confidence=None. Pass calibrator= "
        "(a kl_retrievers.calibration.ConfidenceCalibrator fitted for this model, or a path to its JSON)",
        model,
        CALIBRATION_FILE,
    )


def _warn_dense_fallback(model: str, path: Path) -> None:
    """One WARNING per model: a hybrid retriever's confidence comes from the model's dense calibrator."""
    if not _first_warning(f"hybrid-dense-fallback\0{model}"):
        return
    logger.warning(
        "the model %r ships no hybrid confidence calibrator (%s or %s), so the hybrid retriever's confidence comes "
        "from its dense calibrator (%s): P(top-1 of the dense -KL ranking is relevant), read from the dense "
        "candidates, not P(top-1 of the fused ranking it returns is relevant), so min_confidence abstention judges "
        "the dense side only. Pass calibrator= (a hybrid ConfidenceCalibrator fitted for this model) for the fused "
        "ranking's",
        model,
        HYBRID_CALIBRATION_FILE,
        _UNSTEMMED_HYBRID_CALIBRATION_FILE,
        os.fspath(path),
    )


def _warn_fusion(mode: str) -> None:
    """One WARNING per fusion mode: ``min_confidence`` judges the adaptive ranking's top document, not ``mode``'s."""
    if not _first_warning(f"hybrid-fusion\0{mode}"):
        return
    logger.warning(
        "min_confidence with fusion=%r: the hybrid confidence is the calibrated probability that the top document "
        "of the 'adaptive' fusion's ranking is relevant (what the hybrid calibrator was fitted for), computed from "
        "the query's candidates, so it is the same whatever fusion ranks the results, and the %r ranking's top "
        "document may differ from the adaptive one's. Use fusion='adaptive' for abstention, or judge the %r "
        "ranking with a calibrator fitted for it (calibrator=)",
        mode,
        mode,
        mode,
    )


class ConfidenceScorer:
    """Computes a query's confidence for a retriever; resolves the model's calibrator once per encoder.

    Args:
        calibrator: An explicit calibrator (or a path to its JSON); ``None``: the encoder's model's.
            An explicit calibrator recorded for another model than an encoder's is used, with
            one warning (:func:`check_calibrator_model`).
        retriever: ``"dense"`` (the model's ``confidence_calibration.json``) or ``"hybrid"`` (its
            ``hybrid_confidence_calibration.json``, else its dense one, with one WARNING per model that the
            confidence is then the dense ranking's; for a store with ``stemmer=None``
            its ``hybrid_confidence_calibration.unstemmed.json`` first, see :meth:`calibrator`); see
            :func:`check_calibrator`.

    Examples:
        >>> cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
        >>> scorer = ConfidenceScorer(cal)
        >>> scorer.depth, 0.5 < scorer.confidence(None, [-1.0, -1.3], 0.0) <= 1.0
        (2, True)
    """

    def __init__(
        self, calibrator: ConfidenceCalibrator | str | os.PathLike[str] | None = None, retriever: str = "dense"
    ) -> None:
        self.retriever = retriever
        self.explicit = check_calibrator(calibrator, retriever)
        self._cache: dict[tuple[int, bool], tuple[Any, ConfidenceCalibrator | None]] = {}
        self._checked: dict[int, Any] = {}  # encoders the explicit calibrator was checked against
        self._lock = threading.Lock()

    def calibrator(self, encoder: Any, stemmer: str | None = "english") -> ConfidenceCalibrator | None:
        """The calibrator used for queries encoded by ``encoder`` (``None``: none known, warned once).

        An explicit calibrator is used as it is, and checked against each new encoder's model
        (:func:`check_calibrator_model`: a mismatch warns once, the calibrator is still used).

        Args:
            encoder: The query encoder (its ``name_or_path`` names the model folder).
            stemmer: The hybrid store's BM25 stemmer (default ``"english"``,
                :data:`~kl_retrievers.hybrid.DEFAULT_STEMMER`): with ``None`` a hybrid scorer takes the
                model's ``hybrid_confidence_calibration.unstemmed.json`` when it ships one, else its
                stemmed one (which :func:`check_calibrator_stemmer` warns about; a stemmed store likewise
                takes the unstemmed one when the model ships only that), as
                :class:`~kl_retrievers.hybrid.KLHybridStore` picks its adaptive parameters. Ignored by
                a dense scorer.

        A hybrid scorer of a model that ships no hybrid calibrator takes the model's dense one, with one WARNING
        per model (not per query) that the confidence is then the dense ranking's, not the fused ranking's.
        """
        if self.explicit is not None:
            if encoder is not None:
                with self._lock:
                    seen = self._checked.get(id(encoder)) is encoder
                    if not seen:
                        self._checked[id(encoder)] = encoder
                if not seen:
                    check_calibrator_model(self.explicit, encoder)
            return self.explicit
        if encoder is None:
            return None
        unstemmed = self.retriever == "hybrid" and stemmer is None
        with self._lock:
            hit = self._cache.get((id(encoder), unstemmed))
            if hit is not None and hit[0] is encoder:
                return hit[1]
            cal = None
            fallback: Path | None = None  # a hybrid scorer's: the model's dense calibrator file, taken for want of one
            for kind in RETRIEVER_CALIBRATORS[self.retriever]:
                if kind == "hybrid":  # the unstemmed file first for an unstemmed store
                    path = _hybrid_calibration_path(_encoder_model(encoder), None if unstemmed else "english")
                else:
                    path = model_calibration_path(encoder, CALIBRATION_FILES[kind])
                if path is not None:
                    cal = check_calibrator(path, self.retriever)
                    if self.retriever == "hybrid" and kind == "dense":
                        fallback = Path(path)
                    break
            self._cache[(id(encoder), unstemmed)] = (encoder, cal)
        model = str(getattr(encoder, "name_or_path", None) or type(encoder).__name__)
        if cal is None:
            _warn_once(model)
        elif fallback is not None:  # once per model, not per query (the cache answers the later calls)
            _warn_dense_fallback(model, fallback)
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


#: How many candidate documents a confidence needs (the calibrators read the top two scores).
MIN_CANDIDATES = 2


#: Why a retriever abstains on (or gives confidence 0 to) a blank query: it asks for nothing.
EMPTY_QUERY_REASON = "the query is empty (blank): it asks for nothing, so no document can answer it"


def is_blank_query(text: str | None) -> bool:
    """Whether a query text is blank: empty, or only whitespace and characters the tokenizers drop (``None`` is not).

    :func:`kl_retrievers._encoding.is_blank_text` (the one rule for queries and documents), which lists those
    characters.

    Examples:
        >>> is_blank_query(""), is_blank_query(" \\n\\t"), is_blank_query("\\u200b"), is_blank_query("a")
        (True, True, True, False)
    """
    return is_blank_text(text)


def blank_query_confidence(calibrated: bool) -> tuple[float | None, str | None]:
    """The confidence of a blank query (:func:`is_blank_query`) and why, whatever its scores.

    A blank query asks for nothing, so with a calibrator its confidence is 0 (a store holding an
    empty text scores ``""`` at ``-KL`` 0, which a calibrator would read as a sure match), with
    :data:`EMPTY_QUERY_REASON`. Without a calibrator no query has a confidence, a blank one neither.

    Args:
        calibrated: Whether the retriever has a confidence calibrator for the query.

    Returns:
        ``(0.0, EMPTY_QUERY_REASON)`` when ``calibrated``, else ``(None, None)``.

    Examples:
        >>> blank_query_confidence(True)[0], blank_query_confidence(False)
        (0.0, (None, None))
    """
    return (0.0, EMPTY_QUERY_REASON) if calibrated else (None, None)


def abstention_enabled(min_confidence: float | None) -> TypeGuard[float]:
    """Whether a ``min_confidence`` floor can refuse a query: it is set and above 0.

    ``None`` never abstains, and neither does ``0``: no confidence is below it, so it answers every
    query, as the threshold sweeps' 0.00 row says. The rules that refuse a query whatever its
    confidence (a blank query, a single candidate document: :func:`abstention_reason`) apply only
    above 0.

    Examples:
        >>> abstention_enabled(None), abstention_enabled(0.0), abstention_enabled(0.01)
        (False, False, True)
    """
    return min_confidence is not None and min_confidence > 0.0


def too_few_candidates_reason(candidates: int | None) -> str | None:
    """Why a query with ``candidates`` candidate documents has no confidence (``None``: not for that reason).

    The calibrators read the top two scores (:data:`MIN_CANDIDATES`), so one candidate cannot be
    judged; no candidate at all (or an unknown count) is not this reason.

    Examples:
        >>> too_few_candidates_reason(1)
        'confidence needs 2 candidates, 1 found (a filter or a small store)'
        >>> too_few_candidates_reason(0) is None, too_few_candidates_reason(2) is None
        (True, True)
    """
    if candidates is not None and 0 < candidates < MIN_CANDIDATES:
        return f"confidence needs {MIN_CANDIDATES} candidates, {candidates} found (a filter or a small store)"
    return None


def abstention_reason(
    confidence: float | None, min_confidence: float | None, candidates: int | None = None
) -> str | None:
    """Why a query is refused at ``min_confidence``; ``None`` when it is answered.

    A query is refused when its confidence is below ``min_confidence``, and also (fail closed)
    when a floor above 0 is set but the confidence could not be computed because only one document
    was a candidate (``candidates``: a filter that leaves one document, or a one-document store):
    the calibrator reads the top two scores, so it cannot judge such a query
    (:func:`too_few_candidates_reason`). No candidate at all is not an abstention (there is nothing
    to refuse), and neither is ``confidence=None`` for another reason or without a floor. A floor of
    ``None`` or 0 refuses nothing (:func:`abstention_enabled`).

    Args:
        confidence: The query's confidence (``None``: not computed).
        min_confidence: The floor (``None`` or 0: never abstain).
        candidates: How many candidate documents the query had (``None``: not known).

    Examples:
        >>> abstention_reason(0.2, 0.5)
        'confidence 0.200 < min_confidence 0.500'
        >>> abstention_reason(0.2949, 0.295)  # more decimals where 3 would print the two alike
        'confidence 0.2949 < min_confidence 0.2950'
        >>> abstention_reason(None, 0.5, candidates=1)
        'confidence needs 2 candidates, 1 found (a filter or a small store)'
        >>> abstention_reason(None, None, candidates=1) is None, abstention_reason(None, 0.5, candidates=0) is None
        (True, True)
        >>> abstention_reason(None, 0.0, candidates=1) is None, abstention_reason(0.0, 0.0) is None
        (True, True)
    """
    if not abstention_enabled(min_confidence):
        return None
    if confidence is None:
        return too_few_candidates_reason(candidates)
    if confidence < min_confidence:
        return _below(confidence, min_confidence)
    return None


def _below(confidence: float, min_confidence: float) -> str:
    """``confidence < min_confidence``, with 3 decimals or as many more as the two values need to print apart.

    Examples:
        >>> _below(0.2, 0.5)
        'confidence 0.200 < min_confidence 0.500'
        >>> _below(0.2949, 0.295)
        'confidence 0.2949 < min_confidence 0.2950'
        >>> _below(1e-20, 2e-20)
        'confidence 1e-20 < min_confidence 2e-20'
    """
    for digits in range(3, 18):
        low, high = f"{confidence:.{digits}f}", f"{min_confidence:.{digits}f}"
        if low != high:
            return f"confidence {low} < min_confidence {high}"
    return f"confidence {confidence!r} < min_confidence {min_confidence!r}"  # below 1e-17: the shortest repr


def abstains(confidence: float | None, min_confidence: float | None, candidates: int | None = None) -> bool:
    """Whether a query is refused at ``min_confidence`` (see :func:`abstention_reason`).

    ``None`` confidence abstains only when a floor above 0 is set and ``candidates`` says one
    document was a candidate (fewer than the two the confidence needs); a floor of 0 never abstains.

    Examples:
        >>> abstains(0.2, 0.5), abstains(0.7, 0.5), abstains(0.2, None)
        (True, False, False)
        >>> abstains(None, 0.5, candidates=1), abstains(None, None, candidates=1), abstains(None, 0.5)
        (True, False, False)
    """
    return abstention_reason(confidence, min_confidence, candidates) is not None


def require_calibrator(
    scorer: ConfidenceScorer, encoder: Any, min_confidence: float | None, stemmer: str | None = "english"
) -> None:
    """Refuse a ``min_confidence`` above 0 without a calibrator: abstention could never happen (``None`` and 0
    never abstain, :func:`abstention_enabled`, so they need none).

    ``stemmer``: the hybrid store's BM25 stemmer (see :meth:`ConfidenceScorer.calibrator`).
    """
    if not abstention_enabled(min_confidence) or scorer.calibrator(encoder, stemmer) is not None:
        return
    model = getattr(encoder, "name_or_path", None) if encoder is not None else None
    looked_up = [CALIBRATION_FILES[k] for k in RETRIEVER_CALIBRATORS[scorer.retriever]]
    if scorer.retriever == "hybrid":  # both hybrid files are looked up (the store's stemmer's first)
        looked_up.insert(1, _UNSTEMMED_HYBRID_CALIBRATION_FILE)
    files = " or ".join(looked_up)
    raise ValueError(
        f"min_confidence={min_confidence} needs a confidence calibrator, and the model {model!r} ships none "
        f"({files}); pass calibrator= (a fitted kl_retrievers.calibration.ConfidenceCalibrator "
        "or a path to its JSON) or leave min_confidence=None"
    )


def log_abstention(
    query: str, confidence: float | None, min_confidence: float | None, reason: str | None = None
) -> None:
    """One DEBUG line for an abstention (the query is shortened), saying why (``reason``: :func:`abstention_reason`).

    DEBUG, not INFO: the line holds the user's query text (private data in a service's logs), and comes on
    every abstaining query.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return
    short = query if len(query) <= 80 else query[:77] + "..."
    if reason is None:
        reason = abstention_reason(confidence, min_confidence) or "abstained"
    logger.debug("abstained on %r: %s", short, reason)


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
) -> tuple[list[Any], float | None, str | None]:
    """One query on a :class:`~kl_retrievers.hybrid.KLHybridStore` with its confidence and abstention.

    The confidence is the calibrator's (``scorer``: explicit, else the encoder's model's; for a
    store with ``stemmer=None`` the model's ``hybrid_confidence_calibration.unstemmed.json`` when it
    ships one, else its stemmed one with a warning). With a
    *hybrid* calibrator (the default model ships one, ``hybrid_confidence_calibration.json``) it is
    P(top-1 of the ``"adaptive"`` fusion's ranking is relevant), from dense and BM25 signals of the
    query's candidates (:func:`~kl_retrievers.calibration.hybrid_query_features`): it was fitted for
    that fusion with 100 candidates per half, and it is the same number whatever ``fusion`` ranks the
    results (with ``min_confidence``, the model's shipped calibrator and another fusion, one WARNING
    per fusion mode says so); another store ``candidates`` setting shifts it. The features are read
    from the candidates at the store's ``candidates`` depth (at least the 2 scores a calibrator
    needs) whatever ``k`` is (a ``k`` above it ranks deeper candidates, the confidence does not
    change): one search at the deeper of the two depths, the shallower view taken from it
    (:meth:`~kl_retrievers.hybrid.Candidates.at_depth`), so a filter is still called once per
    document. A query whose BM25 half matches none of its candidates (no query word in the corpus,
    or in the documents the filter allows) is ranked as the dense list ranks it, and the shipped
    hybrid calibrators give it a confidence near 0 even when that ranking is right
    (:func:`~kl_retrievers.calibration.hybrid_confidence`). With a *dense* calibrator it is read from
    the query's dense candidate list (its best ``-KL`` scores) and its uncertainty, as for a dense
    retriever: how well the ``-KL`` side found something.

    With ``min_confidence`` set, a query is refused when its confidence is below it, and also, for a
    floor above 0, when the confidence cannot be computed because only one document is a candidate (a
    filter or a small store; :func:`abstention_reason`): it fails closed. ``min_confidence=0`` answers
    every query (:func:`abstention_enabled`).

    A blank ``query`` (:func:`is_blank_query`) has the confidence :func:`blank_query_confidence` gives
    (0 with a calibrator, ``None`` without); with ``min_confidence`` above 0 it is refused
    (:data:`EMPTY_QUERY_REASON`) without a search, after the same setup checks as any query (the fusion
    settings, the calibrator, its stemmer, the adaptive parameters).

    Returns:
        ``(hits, confidence, abstained)``: the fused :class:`~kl_retrievers.hybrid.HybridResult`
        list (empty when abstaining), the confidence (``None`` without a calibrator or with fewer
        than 2 dense candidates) and why the query was refused (a message, see
        :func:`abstention_reason`; ``None`` when it was answered).
    """
    config = store.fusion.for_call(fusion, weight, normalization)
    encoder = store.encoder
    require_calibrator(scorer, encoder, min_confidence, store.stemmer)
    cal = scorer.calibrator(encoder, store.stemmer)
    if cal is not None:
        check_calibrator_stemmer(cal, store.stemmer)
        shipped = scorer.explicit is None  # an explicit calibrator may have been fitted for this fusion
        if cal.kind == "hybrid" and config.mode != "adaptive" and abstention_enabled(min_confidence) and shipped:
            _warn_fusion(config.mode)
    if config.mode == "adaptive":
        store.adaptive_params()  # missing parameters fail before any work
    blank = is_blank_query(query)
    if blank and abstention_enabled(min_confidence):  # a calibrator exists (require_calibrator): refused unsearched
        confidence, reason = blank_query_confidence(True)
        log_abstention(query, confidence, min_confidence, reason)
        return [], confidence, reason
    qg = store.encode_queries([query])  # before the lock: writers are not held up by encoding
    with store.consistent():  # candidates and the stored texts of the hits from one state of the store
        # the confidence reads the candidates at the depth the calibrators were fitted at (and at least the
        # scores they need), whatever k is: one search at the deeper depth, the other a view of it
        ranked_depth = max(k, config.candidates)
        scored_depth = config.candidates
        if cal is not None:
            scored_depth = max(scored_depth, MIN_CANDIDATES if cal.kind == "hybrid" else scorer.depth_for(cal))
        deep = store.candidates([query], query_gaussians=qg, filter=filter, depth=max(ranked_depth, scored_depth))[0]
        cand, scored = deep.at_depth(ranked_depth), deep.at_depth(scored_depth)
        has_dense = bool((np.asarray(cand.dense_rank) > 0).any())
        top = np.sort(np.asarray(scored.neg_kl)[np.asarray(scored.dense_rank) > 0])[::-1]
        if cal is not None and cal.kind == "hybrid" and top.size >= 2:
            confidence = hybrid_confidence(cal, scored)
        elif cal is not None and top.size >= 2:  # a dense calibrator: the query's best -KL scores
            confidence = cal.confidence(top[: scorer.depth_for(cal)].tolist(), float(cand.uncertainty))
        else:
            confidence = None
        if blank and has_dense:  # a blank query asks for nothing (no floor above 0 here: it is answered)
            confidence = blank_query_confidence(cal is not None)[0]
        reason = abstention_reason(confidence, min_confidence, int(top.size))
        if reason is not None:
            log_abstention(query, confidence, min_confidence, reason)
            return [], confidence, reason
        ranked = store.fuse_candidates(cand, k, config)
        return store.to_results(cand, ranked, config.mode), confidence, None
