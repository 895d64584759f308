"""Calibrated confidence: the probability that a query's top-ranked document is relevant.

A :class:`ConfidenceCalibrator` maps per-query *signals* to a probability: the model's query
uncertainty and statistics of the query's own top-k ``neg_kl`` scores (:func:`query_features`). It
is a logistic regression on standardised features with an L2 penalty, fitted with numpy and scipy
(soft targets in ``[0, 1]`` are allowed, e.g. per-query nDCG@10 for a performance predictor),
and it saves to readable JSON (never pickle) together with the library version, the feature
names, the target and the training data it was fitted on.

The package default ships a calibrator fitted on training data only (SciFact train, NFCorpus
train and the train articles of the SQuAD retrieval set; ``benchmarks/calibration.py fit``):
:func:`default_calibrator` loads it. Its expected calibration error on the four dev collections'
test splits is in ``docs/results.md``.

Features (``s_1 >= s_2 >= ...``: the query's retrieved ``neg_kl`` scores, best first):

================  ================================================================  ================
name              definition                                                        needs
================  ================================================================  ================
``uncertainty``   the query's mean log-variance (:meth:`Gaussians.uncertainty`)      the query
``max_score``     ``s_1``                                                            1 score
``gap12``         ``s_1 - s_2``                                                      2 scores
``gap1_10``       ``s_1 - mean(s_1..s_10)``                                          10 scores
``std10``         ``std(s_1..s_10)``                                                 10 scores
``nqc``           ``std(s_1..s_100) / |ref|`` (:mod:`kl_retrievers.qpp`)             ``reference``
``wig``           ``mean(s_1..s_5) - ref``                                           ``reference``
================  ================================================================  ================

``ref`` is the query's corpus-level reference score (:func:`kl_retrievers.qpp.corpus_mean_scores`);
the default calibrator does not use it, so a retriever needs only the query's top 2 scores and
its uncertainty (:data:`DEFAULT_FEATURES`). Fewer scores than a feature's depth are used as given
(a corpus of 5 documents has 5 scores), but at least 2 are required.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 1))
    >>> y = (rng.random(400) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float)
    >>> cal = ConfidenceCalibrator(["max_score"], l2=0.0).fit(x, y)
    >>> p = cal.predict([[0.0], [3.0]])
    >>> bool(0.3 < p[0] < 0.7 and p[1] > 0.9)
    True
    >>> f = query_features([-0.5, -0.9, -1.0, -1.2], 0.01, ["max_score", "gap12", "uncertainty"])
    >>> f.round(2).tolist()
    [-0.5, 0.4, 0.01]
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from kl_retrievers._io import atomic_file, finite_json, library_version, user_path
from kl_retrievers._warn import warn
from kl_retrievers.gaussian import _real_numpy

__all__ = [
    "FEATURES",
    "DEFAULT_FEATURES",
    "CALIBRATION_FILE",
    "DEFAULT_MIN_CONFIDENCE",
    "CALIBRATOR_KINDS",
    "CalibratorKind",
    "HYBRID_FEATURES",
    "DEFAULT_HYBRID_FEATURES",
    "HYBRID_CALIBRATION_FILE",
    "DEFAULT_HYBRID_MIN_CONFIDENCE",
    "ConfidenceCalibrator",
    "query_features",
    "feature_matrix",
    "expected_calibration_error",
    "reliability_table",
    "default_calibrator",
    "hybrid_query_features",
    "bm25_matches_any",
    "hybrid_confidence",
    "default_hybrid_calibrator",
    "recommended_min_confidence",
]

logger = logging.getLogger(__name__)


class _Feature(NamedTuple):
    """One per-query feature: what it is, whether it needs the corpus reference score, how it is computed.

    ``compute(s, uncertainty, ref)`` takes the scores sorted best first, the query uncertainty and
    the reference score (``0.0`` when none is given).
    """

    description: str
    needs_reference: bool
    compute: Callable[[np.ndarray, float, float], float]


# The one definition of each feature (the module doc's table says the same in words).
_QUERY_FEATURES: dict[str, _Feature] = {
    "uncertainty": _Feature("mean log-variance of the query Gaussian", False, lambda s, u, r: u),
    "max_score": _Feature("top-1 neg_kl score", False, lambda s, u, r: float(s[0])),
    "gap12": _Feature("top-1 minus top-2 score", False, lambda s, u, r: float(s[0] - s[1])),
    "gap1_10": _Feature(
        "top-1 score minus the mean of the top-10 scores", False, lambda s, u, r: float(s[0] - s[:10].mean())
    ),
    "std10": _Feature("standard deviation of the top-10 scores", False, lambda s, u, r: float(s[:10].std())),
    "nqc": _Feature(
        "std of the top-100 scores / |corpus reference score|", True, lambda s, u, r: float(s[:100].std()) / abs(r)
    ),
    "wig": _Feature(
        "mean of the top-5 scores minus the corpus reference score", True, lambda s, u, r: float(s[:5].mean()) - r
    ),
}
#: Feature name -> what it is (see the module doc for the exact definitions).
FEATURES: dict[str, str] = {name: f.description for name, f in _QUERY_FEATURES.items()}
#: Features that need the corpus reference score.
NEEDS_REFERENCE = frozenset(name for name, f in _QUERY_FEATURES.items() if f.needs_reference)
#: The default calibrator's features: the model's uncertainty and the query's own top-2 scores.
DEFAULT_FEATURES: tuple[str, ...] = ("uncertainty", "max_score", "gap12")
#: File name of a calibrator shipped in a bundled model folder.
CALIBRATION_FILE = "confidence_calibration.json"
#: Recommended ``min_confidence`` for the default calibrator: below it a retriever abstains. Chosen on
#: the *training* articles of the SQuAD retrieval set only (half their questions made unanswerable
#: by removing their paragraphs): the threshold (grid 0.00..1.00, step 0.01) with the best
#: abstention F1 among those that still answer >= 90% of the answerable questions (``python
#: benchmarks/abstention.py --hybrid --seeds 10``, logged in ``runs/abstention/abstention.jsonl``;
#: the held-out articles' curve is in ``docs/hybrid.md``, "Abstention").
DEFAULT_MIN_CONFIDENCE = 0.30
FORMAT = "kl-retrievers-confidence-calibrator"
FORMAT_VERSION = 1


def _sorted_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """One query's scores (numbers, an array, a tensor: :class:`~kl_retrievers.gaussian.Gaussians`' rules), best first.

    Raises:
        TypeError: No real numbers (complex numbers, strings), naming the dtype.
        ValueError: Not 1-D (several queries' scores would be pooled), fewer than 2, or not finite.
    """
    s = _real_numpy(scores, "scores", "query features take").astype(np.float64)
    if s.ndim > 1:
        raise ValueError(
            f"scores must be one query's retrieved scores, a 1-D sequence; got shape {s.shape} (for several "
            "queries, compute each one's features from its own row)"
        )
    s = s.ravel()
    if s.size < 2:
        raise ValueError(f"query features need at least 2 retrieved scores; got {s.size}")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ValueError(f"score at position {int(bad[0])} is {s[bad[0]]}; every score must be finite")
    return np.sort(s)[::-1]


def _real_number(value: Any, name: str) -> float:
    """``value``, one finite real number (Python, numpy, a 0-d array or tensor), as a float; else an error naming it.

    Examples:
        >>> _real_number(np.array([0.1]), "uncertainty")
        Traceback (most recent call last):
        ...
        ValueError: uncertainty must be one number (the query's); got an array of shape (1,)
    """
    arr = _real_numpy(value, name, "query features take")
    if arr.ndim != 0:
        raise ValueError(f"{name} must be one number (the query's); got an array of shape {arr.shape}")
    number = float(arr)
    if not math.isfinite(number):
        raise ValueError(f"{name} is {value}; it must be finite")
    return number


def _check_names(names: Sequence[str], vocabulary: Mapping[str, str] | None = None) -> list[str]:
    vocabulary = FEATURES if vocabulary is None else vocabulary
    names = [str(n) for n in names]
    if not names:
        raise ValueError("at least one feature name is needed")
    unknown = [n for n in names if n not in vocabulary]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; choose from {sorted(vocabulary)}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature names must be distinct; got {names}")
    return names


def query_features(
    scores: Sequence[float] | np.ndarray,
    uncertainty: float,
    names: Sequence[str] = DEFAULT_FEATURES,
    *,
    reference: float | None = None,
) -> np.ndarray:
    """The features of one query, in the order of ``names``.

    Args:
        scores: The query's retrieved ``neg_kl`` scores (any order; the best 2 suffice for the
            default features, ``gap1_10`` and ``std10`` use 10, ``nqc`` up to 100).
        uncertainty: The query's uncertainty (mean log-variance).
        names: Feature names (keys of :data:`FEATURES`).
        reference: The query's corpus reference score, needed by ``nqc`` and ``wig`` only.

    Returns:
        Shape ``(len(names),)``, float64.

    Raises:
        TypeError: Scores, ``uncertainty`` or ``reference`` that are no real numbers (complex, strings).
        ValueError: Scores that are not 1-D (several queries' scores), fewer than 2 scores, a score or the
            uncertainty not finite or not one number, an unknown feature, or a feature that needs
            ``reference`` without one (or with a zero one, for ``nqc``).

    Examples:
        >>> query_features([-1.0, -2.0, -3.0], 0.0, ["gap12", "gap1_10"]).tolist()
        [1.0, 1.0]
    """
    names = _check_names(names)
    s = _sorted_scores(scores)
    u = _real_number(uncertainty, "uncertainty")
    missing_ref = [n for n in names if n in NEEDS_REFERENCE] if reference is None else []
    if missing_ref:
        raise ValueError(f"feature(s) {missing_ref} need the corpus reference score; pass reference=")
    ref = _real_number(reference, "reference") if reference is not None else 0.0
    if "nqc" in names and ref == 0.0:
        raise ValueError("nqc divides by |reference|; a reference score of 0 is not allowed")
    return np.array([_QUERY_FEATURES[n].compute(s, u, ref) for n in names], dtype=np.float64)


def feature_matrix(
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str] = DEFAULT_FEATURES,
) -> np.ndarray:
    """Features of many queries from records with ``top_scores``, ``uncertainty`` and optionally ``corpus_score``.

    Examples:
        >>> feature_matrix([{"top_scores": [-1.0, -1.5], "uncertainty": 0.0}], ["gap12"]).tolist()
        [[0.5]]
    """
    out = np.empty((len(rows), len(names)), dtype=np.float64)
    for i, row in enumerate(rows):
        try:
            out[i] = query_features(row["top_scores"], row["uncertainty"], names, reference=row.get("corpus_score"))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"query row {i}: {exc}") from exc
    return out


def _as_matrix(x: Any, n_features: int, what: str = "features") -> np.ndarray:
    arr = _real_numpy(x, what, "ConfidenceCalibrator takes").astype(np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(f"{what} must have shape (n_queries, {n_features}); got {np.shape(x)}")
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise ValueError(f"{what} row {i}, column {j} is {arr[i, j]}; every value must be finite")
    return arr


#: Standardised features are clipped to this many standard deviations before the logit.
_Z_LIMIT = 1e6
_SHARE_LIMIT = 1e100


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z
    return out


#: The ``info`` key of the BM25 stemmer a hybrid calibrator was fitted with (as the adaptive fusion parameters'
#: :attr:`AdaptiveParams.bm25_stemmer <kl_retrievers.hybrid.AdaptiveParams.bm25_stemmer>`).
_BM25_STEMMER_KEY = "bm25_stemmer"


def _check_info(info: Mapping[str, Any], where: str) -> None:
    """Refuse an ``info[_BM25_STEMMER_KEY]`` that is neither ``None`` (unstemmed) nor a stemmer's name."""
    stemmer = info.get(_BM25_STEMMER_KEY)
    if stemmer is not None and not (isinstance(stemmer, str) and stemmer.strip()):
        raise ValueError(
            f"{where}[{_BM25_STEMMER_KEY!r}] must be a PyStemmer language name (e.g. 'english') or None "
            f"(unstemmed BM25); got {stemmer!r}"
        )


class ConfidenceCalibrator:
    """Logistic regression from per-query features to the probability that the top-1 document is relevant.

    Args:
        features: Feature names (keys of :data:`FEATURES`, or of :data:`HYBRID_FEATURES` for
            ``kind="hybrid"``), the columns of every input.
        l2: L2 penalty on the coefficients of the standardised features (not on the intercept),
            relative to the total sample weight: the loss is the weighted mean log loss plus
            ``l2 / 2 * ||w||^2 / n``.
        kind: ``"dense"`` (a ``-KL`` retriever's confidence, features from its scores:
            :func:`query_features`) or ``"hybrid"`` (a :class:`~kl_retrievers.hybrid.KLHybridStore`'s,
            features from its candidates: :func:`hybrid_query_features`). Saved with the
            calibrator (a file without it is ``"dense"``); dense retrievers refuse a hybrid one.

    Examples:
        >>> cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
        >>> p = cal.predict([[0.05], [0.25]])
        >>> bool(p[0] < 0.5 < p[1])
        True
    """

    def __init__(
        self, features: Sequence[str] = DEFAULT_FEATURES, *, l2: float = 1.0, kind: CalibratorKind = "dense"
    ) -> None:
        if kind not in CALIBRATOR_KINDS:
            raise ValueError(f"kind must be one of {list(CALIBRATOR_KINDS)}; got {kind!r}")
        self.kind = kind
        self.features = _check_names(features, CALIBRATOR_KINDS[kind])
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0; got {l2!r}")
        self.l2 = float(l2)
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept: float | None = None
        self.info: dict[str, Any] = {}

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has set the parameters."""
        return self.coef is not None

    @property
    def records_bm25_stemmer(self) -> bool:
        """Whether :attr:`info` records the BM25 stemmer the calibrator was fitted with (``"bm25_stemmer"``).

        Examples:
            >>> cal = ConfidenceCalibrator(["gap12"], kind="hybrid").fit([[0.0], [1.0]], [0, 1])
            >>> cal.records_bm25_stemmer
            False
        """
        return _BM25_STEMMER_KEY in self.info

    @property
    def bm25_stemmer(self) -> str | None:
        """The BM25 stemmer a hybrid calibrator was fitted with (``info["bm25_stemmer"]``, lower-case).

        The same record as :attr:`AdaptiveParams.bm25_stemmer <kl_retrievers.hybrid.AdaptiveParams.bm25_stemmer>`:
        ``None`` is unstemmed BM25 when :attr:`records_bm25_stemmer`; otherwise the stemmer is not
        known, since :meth:`fit` reads features, not a store, and only its caller can record it
        (``info=``). Unlike the adaptive parameters, a missing record is not taken for unstemmed
        BM25 (hybrid calibrators were fitted on stemmed BM25, the default model's since stop 42,
        before they recorded it): hybrid retrievers compare only a recorded stemmer with their
        store's, and warn once when they differ. Dense calibrators read no BM25 and are not compared.

        Examples:
            >>> cal = ConfidenceCalibrator(["gap12"], kind="hybrid")
            >>> cal.fit([[0.0], [1.0]], [0, 1], info={"bm25_stemmer": "english"}).bm25_stemmer
            'english'
        """
        stemmer = self.info.get(_BM25_STEMMER_KEY)
        return stemmer.strip().lower() if isinstance(stemmer, str) else None

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        sample_weight: Any = None,
        info: Mapping[str, Any] | None = None,
    ) -> ConfidenceCalibrator:
        """Fit on features ``x`` (``(n, n_features)``) and targets ``y`` in ``[0, 1]``.

        Args:
            x: One row per query, columns in the order of :attr:`features`.
            y: 0/1 labels (top-1 relevant or not) or soft targets in ``[0, 1]``, one per query (shape ``(n,)``,
                ``(n, 1)`` or ``(1, n)``; a matrix such as ``2 x 2`` is refused).
            sample_weight: Non-negative weight per query (default 1), e.g. to weigh training
                sets equally.
            info: Facts stored with the calibrator (the training data, the target, the command). A
                hybrid calibrator should record the BM25 stemmer of the store its features came from,
                ``info["bm25_stemmer"]`` (its :attr:`~kl_retrievers.hybrid.KLHybridStore.stemmer`,
                ``None`` when unstemmed): hybrid retrievers warn when a store's stemmer differs
                (:attr:`bm25_stemmer`).

        Returns:
            ``self``.

        ``x``, ``y`` and ``sample_weight`` may be numbers, numpy arrays or torch tensors (detached and copied to
        the CPU, bfloat16 read as float32: :class:`~kl_retrievers.gaussian.Gaussians`' rules).

        Raises:
            TypeError: Values that are no real numbers (complex numbers, strings, objects), naming the dtype.
            ValueError: Shapes that disagree, a non-finite feature (naming its row and column), a
                target outside ``[0, 1]``, negative or all-zero weights, fewer than 2 queries, an
                ``info["bm25_stemmer"]`` that is neither ``None`` nor a name.
            ModuleNotFoundError: scipy is not installed (the message names the extra that installs it).
        """
        from kl_retrievers._encoding import require_modules

        require_modules("ConfidenceCalibrator.fit", ["scipy"], "hybrid")  # [eval] includes scipy too
        from scipy.optimize import minimize

        _check_info(info or {}, "info")
        xm = _as_matrix(x, len(self.features))
        t = _per_query(y, "targets")
        if t.shape[0] != xm.shape[0]:
            raise ValueError(f"{xm.shape[0]} feature rows but {t.shape[0]} targets")
        if xm.shape[0] < 2:
            raise ValueError(f"fitting needs at least 2 queries; got {xm.shape[0]}")
        bad = np.flatnonzero(~(np.isfinite(t) & (t >= 0) & (t <= 1)))
        if bad.size:
            raise ValueError(f"target at position {int(bad[0])} is {t[bad[0]]}; targets must be in [0, 1]")
        w = np.ones_like(t) if sample_weight is None else _per_query(sample_weight, "sample_weight")
        if w.shape != t.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sample_weight must hold one finite weight >= 0 per query, not all zero")
        w = w / w.mean()
        center = np.average(xm, axis=0, weights=w)
        scale = np.sqrt(np.average((xm - center) ** 2, axis=0, weights=w))
        scale = np.where(scale > 0, scale, 1.0)
        z = (xm - center) / scale
        n = float(w.sum())

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            logits = z @ theta[1:] + theta[0]
            # weighted mean log loss with soft targets: log(1 + e^l) - t * l
            value = float(np.sum(w * (np.logaddexp(0.0, logits) - t * logits)) / n)
            value += 0.5 * self.l2 * float(theta[1:] @ theta[1:]) / n
            r = w * (_sigmoid(logits) - t) / n
            grad = np.concatenate([[r.sum()], z.T @ r + self.l2 * theta[1:] / n])
            return value, grad

        res = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 1000})
        if not res.success:
            logger.warning("the logistic fit did not converge: %s", res.message)
        self.center, self.scale = center, scale
        self.intercept, self.coef = float(res.x[0]), np.asarray(res.x[1:], dtype=np.float64)
        self.info = {**dict(info or {}), "n_train": int(xm.shape[0]), "train_log_loss": round(float(res.fun), 6)}
        return self

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this ConfidenceCalibrator is not fitted: call fit() or ConfidenceCalibrator.load()")

    def decision_function(self, x: Any) -> np.ndarray:
        """The logit of each row (``(n,)``), finite for any finite input.

        The standardised features are clipped to ``[-1e6, 1e6]`` (a million standard deviations,
        far beyond any real query: inside it nothing changes), and, should the logit still overflow,
        each feature's share of it to ``[-1e100, 1e100]``; extreme inputs (``1e308``) thus saturate
        the probability at 0 or 1 instead of overflowing to ``inf - inf = nan``.
        """
        self._check_fitted()
        assert self.center is not None and self.scale is not None and self.coef is not None
        xm = _as_matrix(x, len(self.features))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            z = np.clip((xm - self.center) / self.scale, -_Z_LIMIT, _Z_LIMIT)
            logit = np.asarray(z @ self.coef + float(self.intercept or 0.0))
            bad = ~np.isfinite(logit)
            if bad.any():  # huge coefficients times clipped features: sum bounded shares instead
                shares = np.clip(z[bad] * self.coef, -_SHARE_LIMIT, _SHARE_LIMIT)
                logit[bad] = shares.sum(axis=1) + float(self.intercept or 0.0)
        return logit

    def predict(self, x: Any) -> np.ndarray:
        """Probabilities in ``[0, 1]``, one per row of ``x`` (a single row may be given as 1-D).

        Raises:
            RuntimeError: Not fitted.
            TypeError: Values that are no real numbers (complex numbers, strings, objects), naming the dtype.
            ValueError: Wrong number of columns or a non-finite value (naming its row and column).
        """
        return np.clip(_sigmoid(self.decision_function(x)), 0.0, 1.0)

    def confidence(
        self, scores: Sequence[float] | np.ndarray, uncertainty: float, *, reference: float | None = None
    ) -> float:
        """The probability for one query from its retrieved ``neg_kl`` scores and its uncertainty.

        ``scores`` is one query's, 1-D (numbers, a numpy array or a torch tensor); ``uncertainty`` one number.

        Raises:
            RuntimeError: Not fitted.
            TypeError: Scores or an uncertainty that are no real numbers (complex, strings), naming the dtype.
            ValueError: Scores that are not 1-D (several queries' scores would be pooled into one), fewer than 2,
                or not finite; an uncertainty that is not one finite number; a hybrid calibrator.

        Examples:
            >>> cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
            >>> 0.5 < cal.confidence([-1.0, -1.3], 0.0) <= 1.0
            True
        """
        if self.kind != "dense":
            raise ValueError(
                f"this is a {self.kind} calibrator: its features come from hybrid candidates; "
                "use kl_retrievers.calibration.hybrid_confidence(calibrator, candidates)"
            )
        x = query_features(scores, uncertainty, self.features, reference=reference)
        return float(self.predict(x)[0])

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (parameters, feature names, library version, training facts)."""
        self._check_fitted()
        assert self.center is not None and self.scale is not None and self.coef is not None
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": library_version(),
            "kind": self.kind,
            "model": "logistic regression: p = sigmoid(intercept + coef . (x - center) / scale)",
            "features": list(self.features),
            "feature_definitions": {n: CALIBRATOR_KINDS[self.kind][n] for n in self.features},
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "l2": self.l2,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfidenceCalibrator:
        """Rebuild a calibrator from :meth:`to_dict` output, checking every field.

        Raises:
            ValueError: A wrong format, a newer format version, or a missing or malformed field
                (the message names it).
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f"not a confidence calibrator: 'format' must be {FORMAT!r}")
        version = data.get("format_version")
        if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
            raise ValueError(
                f"calibrator format_version {version!r} is not supported (this library reads 1..{FORMAT_VERSION})"
            )
        kind = data.get("kind", "dense")  # files written before hybrid calibrators have no kind
        if not isinstance(kind, str) or kind not in CALIBRATOR_KINDS:
            raise ValueError(f"calibrator field 'kind' must be one of {list(CALIBRATOR_KINDS)}; got {kind!r}")
        if "features" not in data:
            raise ValueError("calibrator field 'features' is missing")
        features = data["features"]
        if not isinstance(features, list) or not all(isinstance(n, str) for n in features):
            raise ValueError(f"calibrator field 'features' must be a list of feature names; got {features!r}")
        try:
            names = _check_names(features, CALIBRATOR_KINDS[kind])
        except ValueError as exc:
            raise ValueError(f"calibrator field 'features': {exc}") from None
        l2 = data.get("l2", 1.0)
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"calibrator field 'l2' must be a finite number >= 0; got {l2!r}")
        info = data.get("info")
        if info is not None and not isinstance(info, Mapping):
            raise ValueError(f"calibrator field 'info' must be a JSON object or null; got {info!r}")
        _check_info(info or {}, "calibrator field 'info'")
        cal = cls(names, l2=float(l2), kind=kind)
        k = len(cal.features)
        arrays = {}
        for name in ("center", "scale", "coef"):
            try:
                value = np.asarray(data.get(name, []), dtype=np.float64)
            except (TypeError, ValueError):
                value = np.full(0, np.nan)  # not numbers: refused below, naming the field
            if value.shape != (k,) or not np.isfinite(value).all():
                raise ValueError(f"calibrator field {name!r} must be {k} finite numbers; got {data.get(name)!r}")
            arrays[name] = value
        if (arrays["scale"] <= 0).any():
            raise ValueError("calibrator field 'scale' must be positive")
        intercept = data.get("intercept")
        if isinstance(intercept, bool) or not isinstance(intercept, (int, float)) or not math.isfinite(intercept):
            raise ValueError(f"calibrator field 'intercept' must be a finite number; got {intercept!r}")
        cal.center, cal.scale, cal.coef = arrays["center"], arrays["scale"], arrays["coef"]
        cal.intercept = float(intercept)
        cal.info = dict(info or {})
        return cal

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibrator as JSON atomically (an interrupted save keeps the old copy); returns the path.

        The file is standard JSON: a float in :attr:`info` that is not finite (NaN, ±inf, e.g. an
        undefined ECE) is written as ``null``, with a ``UserWarning`` naming its key path (:meth:`load`
        then reads ``None`` there); the parameters are finite by construction.

        Raises:
            RuntimeError: Not fitted.
            ValueError: A parameter that is not finite (naming it).
            TypeError: ``info`` holds a value JSON cannot write (e.g. a numpy array).
        """
        out = Path(path)
        data = self.to_dict()
        for name in ("center", "scale", "coef", "intercept", "l2"):
            if not np.isfinite(np.asarray(data[name], dtype=np.float64)).all():
                raise ValueError(f"calibrator field {name!r} is not finite ({data[name]!r}); cannot save it")
        found: list[str] = []
        data["info"] = finite_json(data["info"], "info", found)
        if found:  # facts the caller recorded (fit's info=), which their call can fix: a warning, not a log line
            warn(
                "ConfidenceCalibrator.save: info values that are not finite (NaN or infinite) are saved as null "
                f"(standard JSON): {', '.join(found)}"
            )
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
        with atomic_file(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConfidenceCalibrator:
        """Read a calibrator written by :meth:`save`.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Not JSON, or not a valid calibrator (naming the field).
        """
        if Path(path).exists() and not Path(path).is_file():  # a named pipe would block the read: never opened
            raise ValueError(f"{path} is not a regular file (a folder, named pipe, device or socket)")
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from exc
        except (RecursionError, MemoryError) as exc:  # nested too deep (or too large) for the JSON parser
            raise ValueError(
                f"{path} is not a calibrator: {type(exc).__name__} (nested too deep or too large)"
            ) from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        kind = "" if self.kind == "dense" else f", kind={self.kind!r}"
        return f"ConfidenceCalibrator(features={self.features}, l2={self.l2}{kind}, {state})"


# ---------------------------------------------------------------------------------- measurement


def _per_query(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 vector of one value per query: a vector, or a column or row ``(n, 1)`` / ``(1, n)``.

    A matrix with two axes longer than 1 (``2 x 2``) is refused rather than flattened into more values than rows.
    """
    arr = _real_numpy(value, name, "ConfidenceCalibrator takes").astype(np.float64)
    if sum(n > 1 for n in arr.shape) > 1:
        raise ValueError(f"{name} must hold one value per query (shape (n,), (n, 1) or (1, n)); got shape {arr.shape}")
    return arr.ravel()


def _check_probs(prob: Any, labels: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``prob`` and ``labels`` as float64 vectors of one length, in ``[0, 1]``; ``n_bins`` an integer ``>= 1``.

    A value that is not finite or lies outside ``[0, 1]`` raises ``ValueError`` naming the first one, its index
    and how many are bad.

    Examples:
        >>> _check_probs([0.2, 1.5, -1.0], [0, 1, 1], 10)
        Traceback (most recent call last):
        ValueError: probabilities must be finite and in [0, 1]; 2 of 3 are not, the first at index 1: 1.5
    """
    p = _real_numpy(prob, "probabilities", "calibration metrics take").astype(np.float64).ravel()
    y = _real_numpy(labels, "labels", "calibration metrics take").astype(np.float64).ravel()
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"probabilities and labels must be non-empty and of one length; got {p.size} and {y.size}")
    for values, what in ((p, "probabilities"), (y, "labels")):
        bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)))
        if bad.size:
            raise ValueError(
                f"{what} must be finite and in [0, 1]; {bad.size} of {values.size} {'is' if bad.size == 1 else 'are'} "
                f"not, the first at index "
                f"{int(bad[0])}: {float(values[bad[0]])}"
            )
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    return p, y


def reliability_table(prob: Any, labels: Any, n_bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of predicted probability: each bin's count, mean confidence and observed rate.

    Bin ``b`` holds ``b / n_bins <= p < (b + 1) / n_bins`` (the last one includes 1); empty bins
    are listed with ``None`` for their means.

    Examples:
        >>> reliability_table([0.1, 0.15, 0.9], [0, 1, 1], n_bins=2)[0]
        {'low': 0.0, 'high': 0.5, 'n': 2, 'confidence': 0.125, 'observed': 0.5}
    """
    p, y = _check_probs(prob, labels, n_bins)
    n_bins = int(n_bins)  # a numpy integer too: the rows hold Python floats
    # The bin whose lower edge ``b / n_bins`` is the largest not above p, compared with the same float
    # edges the rows report: ``(p * n_bins).astype(int)`` put 15/22 in bin 14 (15/22 * 22 = 14.999...).
    edges = np.arange(n_bins + 1) / n_bins
    idx = np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        rows.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "n": n,
                "confidence": float(p[m].mean()) if n else None,
                "observed": float(y[m].mean()) if n else None,
            }
        )
    return rows


def expected_calibration_error(prob: Any, labels: Any, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean of ``|observed rate - mean confidence|`` over equal-width bins.

    Examples:
        >>> expected_calibration_error([0.1, 0.15, 0.9], [0, 1, 1], n_bins=2)  # (2 * 0.375 + 0.1) / 3
        0.2833333333333333
    """
    rows = reliability_table(prob, labels, n_bins)
    total = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["observed"] - r["confidence"]) for r in rows if r["n"]) / total)


def default_calibrator(model: str | None = None) -> ConfidenceCalibrator:
    """The calibrator shipped with a bundled model (default: the package default).

    Raises:
        ValueError: The bundled model ships no calibrator.

    Examples:
        >>> default_calibrator().features
        ['uncertainty', 'max_score', 'gap12']
    """
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path

    path = bundled_model_path(model or DEFAULT_MODEL) / CALIBRATION_FILE
    if not path.is_file():
        raise ValueError(
            f"bundled model {model or DEFAULT_MODEL!r} ships no confidence calibrator ({CALIBRATION_FILE})"
        )
    return ConfidenceCalibrator.load(path)


# ---------------------------------------------------------------------------------- hybrid retrievers

#: Feature name -> what it is, for a hybrid retriever's calibrator (``kind="hybrid"``), all read from
#: one query's :class:`~kl_retrievers.hybrid.Candidates` (:func:`hybrid_query_features`). The dense
#: list is the candidates with a dense rank (their ``neg_kl``, best first), the BM25 list those with
#: a BM25 rank (their positive BM25 scores, best first); ``*_gap12`` / ``*_max_z`` (no ``_raw``) are
#: in standard deviations of their list (:func:`kl_retrievers.hybrid.query_signals`), so they, like
#: the ``rr`` and ``ratio`` features, do not depend on the corpus' BM25 scale; ``*_raw`` ones do.
HYBRID_FEATURES: dict[str, str] = {
    "uncertainty": "mean log-variance of the query Gaussian",
    "max_score": "top-1 neg_kl score of the dense list",
    "gap12": "dense top-1 minus top-2 neg_kl score",
    "gap1_10": "dense top-1 score minus the mean of the dense top-10 scores",
    "std10": "standard deviation of the dense top-10 scores",
    "dense_gap12": "dense top-1 minus top-2 score / std of the dense list",
    "dense_max_z": "(dense top-1 score - mean of the dense list) / its std",
    "bm25_gap12": "BM25 top-1 minus top-2 score / std of the BM25 list",
    "bm25_max_z": "(BM25 top-1 score - mean of the BM25 list) / its std",
    "bm25_coverage": "BM25 top-1 score / sum of the IDFs of the query's known terms",
    "bm25_matched": "share of the query's tokens found in the corpus",
    "overlap10": "share of the dense top 10 also in the BM25 top 10",
    "bm25_rr_dense_top1": "1 / BM25 rank of the dense top-1 document (0: not in the BM25 list)",
    "dense_rr_bm25_top1": "1 / dense rank of the BM25 top-1 document (0: not in the dense list, or no BM25 list)",
    "bm25_ratio_dense_top1": "BM25 score of the dense top-1 / BM25 top-1 score (0: no BM25 list)",
    "bm25_max_raw": "BM25 top-1 score (0: no BM25 list)",
    "bm25_gap12_raw": "BM25 top-1 minus top-2 score",
    "bm25_of_dense_top1_raw": "BM25 score of the dense top-1 document",
}
#: Calibrator kinds: a dense (``-KL``) retriever's, a hybrid one's.
CalibratorKind = Literal["dense", "hybrid"]
#: The vocabulary of each calibrator kind, one per :data:`CalibratorKind` (tests/test_literal_options.py keeps them
#: in step); the runtime checks read its keys.
CALIBRATOR_KINDS: dict[CalibratorKind, dict[str, str]] = {"dense": FEATURES, "hybrid": HYBRID_FEATURES}
#: File name of a hybrid retriever's calibrator shipped in a bundled model folder.
HYBRID_CALIBRATION_FILE = "hybrid_confidence_calibration.json"
#: File name of a model folder's hybrid calibrator fitted on *unstemmed* BM25 (``info["bm25_stemmer"]`` ``None``):
#: a store with ``stemmer=None`` (every store saved before the option) prefers it to :data:`HYBRID_CALIBRATION_FILE`
#: when the folder ships it (bundled ``minilm-gauss-soup`` and ``bge-small-unit-variance`` since stop 44), as
#: ``hybrid_adaptive.unstemmed.json`` for the adaptive fusion parameters.
_UNSTEMMED_HYBRID_CALIBRATION_FILE = "hybrid_confidence_calibration.unstemmed.json"


def _hybrid_calibration_path(model: str, stemmer: str | None) -> Path | None:
    """The hybrid calibrator file a store stemmed with ``stemmer`` takes from ``model``'s folder (``None``: none).

    The file fitted with the store's stemmer first: ``stemmer=None`` (unstemmed BM25) the folder's
    :data:`_UNSTEMMED_HYBRID_CALIBRATION_FILE`, a stemmer its :data:`HYBRID_CALIBRATION_FILE`; when the folder
    ships only the other one, that one (a hybrid calibrator fitted with another stemmer: the retrievers use it
    and warn, :func:`~kl_retrievers._confidence.check_calibrator_stemmer`).

    Examples:
        >>> _hybrid_calibration_path("minilm-gauss-soup", None).name
        'hybrid_confidence_calibration.unstemmed.json'
        >>> _hybrid_calibration_path("minilm-gauss-soup", "english").name
        'hybrid_confidence_calibration.json'
    """
    from kl_retrievers.pretrained import model_file

    own, other = HYBRID_CALIBRATION_FILE, _UNSTEMMED_HYBRID_CALIBRATION_FILE
    if stemmer is None:
        own, other = other, own
    return model_file(model, own) or model_file(model, other)


#: Features read from ``Candidates.signals`` as they are (:data:`kl_retrievers.hybrid.SIGNALS` but the uncertainty).
_SIGNAL_FEATURES: tuple[str, ...] = tuple(
    "dense_gap12 dense_max_z bm25_gap12 bm25_max_z bm25_coverage bm25_matched overlap10".split()
)


def hybrid_query_features(candidates: Any, uncertainty: float | None = None, names: Sequence[str] = ()) -> np.ndarray:
    """The :data:`HYBRID_FEATURES` of one query, in the order of ``names``, from its hybrid candidates.

    Args:
        candidates: A :class:`~kl_retrievers.hybrid.Candidates` (what
            :meth:`KLHybridStore.candidates <kl_retrievers.hybrid.KLHybridStore.candidates>`
            returns; any object with its ``ids``, ``neg_kl``, ``bm25``, ``dense_rank``,
            ``bm25_rank``, ``uncertainty`` and ``signals``).
        uncertainty: The query's uncertainty (``None``: ``candidates.uncertainty``).
        names: Feature names (keys of :data:`HYBRID_FEATURES`; empty: :data:`DEFAULT_HYBRID_FEATURES`).

    Returns:
        Shape ``(len(names),)``, float64.

    Raises:
        ValueError: Fewer than 2 dense candidates, a non-finite score or uncertainty, an unknown
            feature, or a signal feature missing from ``candidates.signals``.

    Examples:
        >>> from types import SimpleNamespace
        >>> c = SimpleNamespace(neg_kl=np.array([-1.0, -1.5, -3.0]), bm25=np.array([2.0, 0.0, 4.0]),
        ...                     dense_rank=np.array([1, 2, 0]), bm25_rank=np.array([2, 0, 1]),
        ...                     uncertainty=0.5, signals={})
        >>> hybrid_query_features(c, None, ["gap12", "bm25_rr_dense_top1", "bm25_ratio_dense_top1",
        ...                                 "dense_rr_bm25_top1", "bm25_max_raw"]).tolist()
        [0.5, 0.5, 0.5, 0.0, 4.0]
    """
    names = _check_names(names or DEFAULT_HYBRID_FEATURES, HYBRID_FEATURES)
    u = float(candidates.uncertainty if uncertainty is None else uncertainty)
    if not math.isfinite(u):
        raise ValueError(f"uncertainty is {u}; it must be finite")
    neg = np.asarray(candidates.neg_kl, dtype=np.float64)
    bm25 = np.asarray(candidates.bm25, dtype=np.float64)
    d_rank = np.asarray(candidates.dense_rank)
    b_rank = np.asarray(candidates.bm25_rank)
    dense = _sorted_scores(neg[d_rank > 0])
    b_list = np.sort(bm25[b_rank > 0])[::-1]
    if not np.isfinite(b_list).all():
        raise ValueError("every BM25 score must be finite")
    top_d = int(np.flatnonzero(d_rank == 1)[0])
    b1 = float(b_list[0]) if b_list.size else 0.0
    b2 = float(b_list[1]) if b_list.size > 1 else 0.0
    missing = [n for n in names if n in _SIGNAL_FEATURES and n not in candidates.signals]
    if missing:
        raise ValueError(f"feature(s) {missing} need the candidates' signals (KLHybridStore.candidates computes them)")

    def dense_rr_bm25_top1() -> float:
        hit = np.flatnonzero(b_rank == 1)
        return 1.0 / float(d_rank[hit[0]]) if hit.size and d_rank[hit[0]] > 0 else 0.0

    values = {
        "bm25_rr_dense_top1": lambda: 1.0 / float(b_rank[top_d]) if b_rank[top_d] > 0 else 0.0,
        "dense_rr_bm25_top1": dense_rr_bm25_top1,
        "bm25_ratio_dense_top1": lambda: float(bm25[top_d]) / b1 if b1 > 0 else 0.0,
        "bm25_max_raw": lambda: b1,
        "bm25_gap12_raw": lambda: b1 - b2,
        "bm25_of_dense_top1_raw": lambda: float(bm25[top_d]),
    }

    def value(name: str) -> float:
        if name in _SIGNAL_FEATURES:
            return float(candidates.signals[name])
        if name in _QUERY_FEATURES:  # the dense calibrator's features, on the dense list (none needs a reference)
            return _QUERY_FEATURES[name].compute(dense, u, 0.0)
        return values[name]()

    return np.array([value(n) for n in names], dtype=np.float64)


def bm25_matches_any(candidates: Any) -> bool:
    """Whether the BM25 half matched any of a query's (filtered) candidates (some ``bm25_rank`` is set).

    When it matched none (no query word in the corpus, or none in the documents a filter allows),
    every fusion ranks the candidates as the dense list does, and the hybrid calibrator gives the query
    a confidence near 0 (see :func:`hybrid_confidence`).

    Examples:
        >>> from types import SimpleNamespace
        >>> has, has_not = SimpleNamespace(bm25_rank=np.array([0, 1])), SimpleNamespace(bm25_rank=np.zeros(2))
        >>> bm25_matches_any(has), bm25_matches_any(has_not)
        (True, False)
    """
    return bool((np.asarray(candidates.bm25_rank) > 0).any())


def hybrid_confidence(calibrator: ConfidenceCalibrator, candidates: Any) -> float:
    """P(top-1 of the hybrid's adaptive ranking is relevant) for one query, from a hybrid calibrator and its candidates.

    The hybrid calibrator was fitted for the top document of the ``"adaptive"`` fusion's ranking (100
    candidates per half): its value reads the candidates only, so it is the same whatever fusion ranks
    the results. It is used for every query, also one whose BM25 half matches none of its candidates
    (:func:`bm25_matches_any`; every fusion then ranks as the dense list does): the shipped calibrators,
    fitted on SQuAD questions, where no word in common nearly always meant no answer, give such a query
    a confidence near 0 even when the dense top document is right. (Giving such queries the dense
    calibrator's confidence instead was tried and reverted: on NFCorpus' training queries that BM25
    matches nowhere, the dense top document is right for 6 of 127 with the default model; see
    ``docs/hybrid.md``, "Abstention".)

    Args:
        calibrator: A fitted calibrator of kind ``"hybrid"``.
        candidates: The query's :class:`~kl_retrievers.hybrid.Candidates` (at the depth the
            calibrator was fitted at: :attr:`FusionConfig.candidates <kl_retrievers.hybrid.FusionConfig>`).

    Raises:
        ValueError: ``calibrator`` is not of kind ``"hybrid"``, or the features cannot be computed
            (:func:`hybrid_query_features`).

    Examples:
        >>> from types import SimpleNamespace
        >>> c = SimpleNamespace(neg_kl=np.array([-1.0, -1.5]), bm25=np.array([2.0, 0.0]),
        ...                     dense_rank=np.array([1, 2]), bm25_rank=np.array([1, 0]), uncertainty=0.5, signals={})
        >>> cal = ConfidenceCalibrator(["gap12"], kind="hybrid").fit([[0.0], [0.2], [0.4], [0.6]], [0, 0, 1, 1])
        >>> 0.0 < hybrid_confidence(cal, c) < 1.0
        True
    """
    if calibrator.kind != "hybrid":
        raise ValueError(f"hybrid_confidence needs a calibrator of kind 'hybrid'; got kind {calibrator.kind!r}")
    return float(calibrator.predict(hybrid_query_features(candidates, None, calibrator.features))[0])


def default_hybrid_calibrator(model: str | None = None, stemmer: str | None = "english") -> ConfidenceCalibrator:
    """The hybrid retriever's calibrator shipped with a bundled model (default: the package default).

    Args:
        model: A bundled model's name (``None``: the package default).
        stemmer: The BM25 stemmer of the store it is for (default ``"english"``,
            :data:`~kl_retrievers.hybrid.DEFAULT_STEMMER`): with ``None`` (unstemmed BM25) the model's
            ``hybrid_confidence_calibration.unstemmed.json`` when it ships one, else its stemmed one.

    Raises:
        ValueError: The bundled model ships none.

    Examples:
        >>> default_hybrid_calibrator().kind
        'hybrid'
        >>> default_hybrid_calibrator(stemmer=None).bm25_stemmer is None
        True
    """
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path

    folder = bundled_model_path(model or DEFAULT_MODEL)
    path = _hybrid_calibration_path(str(folder), stemmer) or folder / HYBRID_CALIBRATION_FILE
    if not path.is_file():
        raise ValueError(
            f"bundled model {model or DEFAULT_MODEL!r} ships no hybrid confidence calibrator "
            f"({HYBRID_CALIBRATION_FILE} or {_UNSTEMMED_HYBRID_CALIBRATION_FILE})"
        )
    return ConfidenceCalibrator.load(path)


#: The shipped hybrid calibrator's features, all free of the corpus' BM25 scale (chosen on training data only by
#: ``python benchmarks/calibration.py fit --hybrid``: cross-validated abstention F1 on the SQuAD training articles,
#: then training-set ECE; the candidates and their scores are stored in the calibrator's ``info``).
DEFAULT_HYBRID_FEATURES: tuple[str, ...] = (
    *("uncertainty", "max_score", "gap12", "gap1_10", "std10"),
    *_SIGNAL_FEATURES,
    *("bm25_rr_dense_top1", "dense_rr_bm25_top1", "bm25_ratio_dense_top1"),
)
#: Recommended ``min_confidence`` for the hybrid retriever's shipped calibrator, chosen like
#: :data:`DEFAULT_MIN_CONFIDENCE` on the SQuAD *training* articles only (the best abstention F1 among
#: thresholds answering >= 90% of the answerable half; ``python benchmarks/calibration.py fit --hybrid``
#: prints it; the held-out curve: ``python benchmarks/abstention.py --hybrid --seeds 10``, docs/hybrid.md).
DEFAULT_HYBRID_MIN_CONFIDENCE = 0.17


def recommended_min_confidence(
    model: str | None = None, *, retriever: CalibratorKind = "dense", stemmer: str | None = "english"
) -> float:
    """The ``min_confidence`` a model recommends for its dense or hybrid retrievers.

    For the package default these are :data:`DEFAULT_MIN_CONFIDENCE` and
    :data:`DEFAULT_HYBRID_MIN_CONFIDENCE`; another model records its own in its calibrator's
    ``info["recommended_min_confidence"]``. A hybrid store with ``stemmer=None`` (unstemmed BM25)
    gets the threshold recorded in the model's ``hybrid_confidence_calibration.unstemmed.json``
    (every model's, the default's too) when it ships one, else the stemmed calibrator's. A model that
    ships no hybrid calibrator but a dense one (``confidence_calibration.json``) gets, for ``"hybrid"``,
    the dense calibrator's threshold with one WARNING: the hybrid retrievers fall back to that
    calibrator (:class:`~kl_retrievers._confidence.ConfidenceScorer`), whose confidence is the dense
    ranking's (how well the ``-KL`` side found something), not the fused ranking's. The shipped
    ones were chosen on the SQuAD *training* articles (the best abstention F1 among thresholds
    answering >= 90% of the answerable half), so they suit SQuAD-like data; on a collection where
    every query has an answer they refuse more (docs/hybrid.md).

    Args:
        model: A bundled model's name (also ``kl_retrievers:NAME``, an encoder's ``name_or_path``) or a
            saved model folder holding the calibrator; ``None``: the package default.
        retriever: ``"dense"`` (``KLRetriever``, ``KLVectorStore``) or ``"hybrid"`` (``KLHybridRetriever``).
        stemmer: The hybrid store's BM25 stemmer (default ``"english"``,
            :data:`~kl_retrievers.hybrid.DEFAULT_STEMMER`; ignored for ``"dense"``).

    Raises:
        ValueError: An unknown ``retriever``, or the model ships no such calibrator (for ``"hybrid"``: neither a
            hybrid nor a dense one) or recorded no threshold.

    Examples:
        >>> recommended_min_confidence(), recommended_min_confidence(retriever="hybrid")
        (0.3, 0.17)
        >>> recommended_min_confidence("kl_retrievers:bge-small-unit-variance")
        0.27
    """
    from kl_retrievers.pretrained import DEFAULT_MODEL, _bundled_name, model_file

    if retriever not in CALIBRATOR_KINDS:
        raise ValueError(f"retriever must be one of {list(CALIBRATOR_KINDS)}; got {retriever!r}")
    default = DEFAULT_HYBRID_MIN_CONFIDENCE if retriever == "hybrid" else DEFAULT_MIN_CONFIDENCE
    file = HYBRID_CALIBRATION_FILE if retriever == "hybrid" else CALIBRATION_FILE
    # the calibrator the retriever takes: for a hybrid store the one fitted with its stemmer when shipped
    path = (
        _hybrid_calibration_path(model or DEFAULT_MODEL, stemmer)
        if retriever == "hybrid"
        else model_file(model or DEFAULT_MODEL, file)
    )
    if path is None:
        if model is not None and _bundled_name(model) is None and not user_path(str(model)).is_dir():
            from kl_retrievers.pretrained import bundled_models

            raise ValueError(
                f"model must be a bundled model {sorted(bundled_models())}, 'kl_retrievers:NAME' or a saved model "
                f"folder; got {model!r}"
            )
        if retriever == "hybrid" and model_file(model or DEFAULT_MODEL, CALIBRATION_FILE) is not None:
            # what the hybrid retrievers use then (ConfidenceScorer): the model's dense calibrator
            logger.warning(
                "model %r ships no hybrid confidence calibrator (%s or %s): the hybrid retrievers fall back to its "
                "dense one (%s), whose confidence is the dense (-KL) ranking's, not the fused ranking's; this is "
                "that calibrator's recommended min_confidence",
                model,
                HYBRID_CALIBRATION_FILE,
                _UNSTEMMED_HYBRID_CALIBRATION_FILE,
                CALIBRATION_FILE,
            )
            return recommended_min_confidence(model, retriever="dense")
        files = f"{file} or {_UNSTEMMED_HYBRID_CALIBRATION_FILE}" if retriever == "hybrid" else file
        nor = f" nor a dense one ({CALIBRATION_FILE}, which the hybrid retrievers fall back to)"
        message = f"model {model!r} ships no {retriever} confidence calibrator ({files})"
        raise ValueError(message + (nor if retriever == "hybrid" else ""))
    own = model_file(DEFAULT_MODEL, file)
    if Path(path).name == file and own is not None and Path(path).read_bytes() == Path(own).read_bytes():
        return default  # the default model's calibrator (its folder, or a copy): the library constant
    recorded = ConfidenceCalibrator.load(path).info.get("recommended_min_confidence")
    if not isinstance(recorded, Mapping) or "threshold" not in recorded:
        raise ValueError(f"model {model!r} records no recommended min_confidence in {path}")
    return float(recorded["threshold"])
