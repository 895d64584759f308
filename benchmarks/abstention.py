"""Abstention on the SQuAD retrieval set: can the default's calibrated confidence say "nothing found"? (issue 20).

The construction (issue 20's target): the SQuAD v1.1 dev retrieval set of ``../shared/datasets``
(2,067 paragraphs, 10,570 questions, one relevant paragraph each), split by article as the default
model's training split it (articles sorted by id, every 10th held out; the default trained on
questions of the others). Within one group of articles (the *held-out* articles for the reported
curve, the *training* articles for choosing the threshold), the paragraphs that some question of
the group points to are shuffled with a fixed seed and removed from the corpus one by one until
their questions make up half of the group's questions: those questions are *unanswerable* (their
only relevant paragraph is gone), the others *answerable* (theirs is still there). Removing
paragraphs rather than picking questions keeps the two halves clean: SQuAD asks about 5 questions
per paragraph, and a removed paragraph must not also be the answer of an "answerable" question.
The corpus is every other paragraph of the collection (both article groups), so the distractors are
the same in both constructions.

Each question is encoded with the package default (``minilm-gauss-soup``; ``--backend``, default
the library's CPU default, ONNX int8) through the encoding cache, retrieved exactly by ``-KL``
against the reduced corpus, and given the shipped calibrator's confidence
(:func:`kl_retrievers.calibration.default_calibrator`: the query uncertainty and its top-2
``neg_kl`` scores, as the LangChain / LlamaIndex adapters compute it). A retriever with
``min_confidence = t`` abstains when the confidence is below ``t``. For every ``t`` on a grid
(0.00, 0.01, ..., 1.00) the script reports, with "positive" = abstained:

* abstention precision: the share of abstained questions that are unanswerable;
* abstention recall: the share of unanswerable questions abstained on;
* abstention F1;
* answered: the share of answerable questions *not* abstained on (and P@1 of those answered).

The recommended threshold (``DEFAULT_MIN_CONFIDENCE`` in :mod:`kl_retrievers.calibration`) is
chosen on the *training* articles only: the largest abstention F1 among thresholds that answer at
least 90% of the answerable half (``--min-answered``). It is then applied to the held-out articles,
whose curve is reported as measured. The same is repeated over ``--seeds`` further random halvings
(mean and spread), and, with ``--hybrid``, for the hybrid store (BM25 + ``-KL``, adaptive fusion),
twice:

* ``hybrid``: what the hybrid retrievers ship (``KLHybridRetriever`` in LangChain and LlamaIndex):
  the model's *hybrid* calibrator (:func:`kl_retrievers.calibration.default_hybrid_calibrator`:
  P(top-1 of the fused ranking is relevant) from dense and BM25 signals of the query's candidates,
  fitted on the training articles' halving and two other training sets by ``python
  benchmarks/calibration.py fit --hybrid``) at its shipped threshold
  (:data:`kl_retrievers.calibration.DEFAULT_HYBRID_MIN_CONFIDENCE`, chosen there on the training
  articles' curve; this script reports the training curve's own choice beside it as a check);
* ``hybrid_dense_cal``: the previous design, the dense calibrator on the ``neg_kl`` scores of the
  hybrid's own top-10 results, its threshold chosen on the training articles like the dense one.

(The exploratory ``--signals`` model of an earlier version is gone: the shipped hybrid calibrator
is that idea, fitted and chosen on training data.)

The held-out articles are not a clean held-out set for the hybrid figures (F1 0.660, 92% answered):
that exploratory ``--signals`` model was scored on them (``runs/abstention/abstention.jsonl`` line 2,
2026-12-02, held-out F1 0.656) before the shipped hybrid calibrator was designed on its idea (its
features are the ``signals14`` candidate of ``benchmarks/calibration.py``'s ``HYBRID_CANDIDATES``;
the shipped ``scale_free15`` shares 11 of them), and in round 1 the same articles were "SQuAD dev"
for choosing models (``benchmarks/gpu_lora.py``, docs/results-archive.md). The calibrator's fit and
thresholds read only the training articles; its design did not (docs/hybrid.md, "Abstention").

Every run appends one JSON line to ``runs/abstention/abstention.jsonl`` (the command included; a
``--stemmer none`` run to ``runs/abstention/abstention.unstemmed.jsonl``); the last printed line is::

    abstention_f1=X answered=Y threshold=Z [hybrid_f1=X2 hybrid_answered=Y2 hybrid_threshold=Z2]

X and Y: the held-out articles' abstention F1 and answered share at the threshold Z chosen on the
training articles (seed 0, dense retriever); with ``--hybrid`` the same for the hybrid retriever
with its shipped calibrator at its shipped threshold Z2.

``--model NAME`` runs the same with another bundled model and the calibrators it ships, the hybrid one at
the threshold recorded in it (a model without a dense calibrator is scored by the hybrid store only). The
dense retriever needs the model's dense calibrator, ``--hybrid`` its hybrid calibrator and threshold:
a model that lacks what is asked for stops with a message naming it before anything is loaded or
encoded (:func:`calibrator_problem`; e.g. ``minilm-gauss-lora`` ships neither).
``--record-threshold`` writes the dense threshold chosen on the training articles into a non-default model's
dense calibrator (``bge-small-unit-variance``'s 0.27 came from the last example with ``--record-threshold``).

A question whose BM25 half matches none of its candidates gets, as in the hybrid retrievers, the hybrid
calibrator's confidence, near 0 (:func:`kl_retrievers.calibration.hybrid_confidence`).
``--count-no-bm25-match`` counts such questions in each halving without encoding anything (BM25 only)
and exits: none in the training and held-out halvings of seeds 0 to 10, stemmed or not, so no figure
here depends on how such questions are scored.

Examples:
    python benchmarks/abstention.py --quick
    python benchmarks/abstention.py --hybrid --seeds 10
    python benchmarks/abstention.py --hybrid --model bge-small-unit-variance --backend torch --seeds 10
    python benchmarks/abstention.py --count-no-bm25-match --seeds 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hybrid import git_commit  # the benchmarks' one HEAD reader (benchmarks/hybrid.py)

from kl_retrievers.calibration import (
    ConfidenceCalibrator,
    bm25_matches_any,
    default_calibrator,
    default_hybrid_calibrator,
    hybrid_confidence,
    recommended_min_confidence,
)
from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.gaussian import Gaussians

if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

logger = logging.getLogger("benchmarks.abstention")
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
SQUAD = "squad-v1.1-dev-retrieval"
LOG = ROOT / "runs" / "abstention" / "abstention.jsonl"
#: ``--stemmer none`` runs log here, apart from the shipped (stemmed) calibrators' runs that docs/results.md reads.
UNSTEMMED_LOG = LOG.with_name("abstention.unstemmed.jsonl")
MODEL = "minilm-gauss-soup"
#: Thresholds scanned (the choice is made on this grid).
GRID = np.round(np.linspace(0.0, 1.0, 101), 2)
#: Thresholds shown in the printed table and in docs/hybrid.md.
TABLE = np.round(np.linspace(0.0, 1.0, 11), 2)
#: Depth of the retrieved list the confidence reads (the calibrator needs the top 2).
DEPTH = 10
#: Training questions used by --quick (a seeded sample of the training articles' questions).
QUICK_TRAIN = 3000


def article_of(doc_id: str) -> str:
    """The SQuAD article of a paragraph id (``"12-3"`` -> ``"12"``)."""
    return doc_id.split("-")[0]


def held_out_articles(doc_ids: Sequence[str]) -> set[str]:
    """Every 10th article, sorted by id: the articles the default model never trained on."""
    articles = sorted({article_of(d) for d in doc_ids})
    return set(articles[::10])


@dataclass
class Halving:
    """One group's questions split into an answerable and an unanswerable half."""

    answerable: list[str]
    unanswerable: list[str]
    removed: set[str]


def halve(qrels: Mapping[str, Mapping[str, int]], query_ids: Sequence[str], seed: int) -> Halving:
    """Remove shuffled relevant paragraphs until their questions are half of ``query_ids``.

    Args:
        qrels: Query id -> {relevant document id: grade}.
        query_ids: The group's questions.
        seed: Shuffle seed.

    Returns:
        The answerable questions (every relevant document kept), the unanswerable ones (every
        relevant document removed) and the removed documents.

    Examples:
        >>> q = {"a": {"p1": 1}, "b": {"p1": 1}, "c": {"p2": 1}, "d": {"p3": 1}}
        >>> h = halve(q, ["a", "b", "c", "d"], seed=0)
        >>> len(h.unanswerable) >= 2 and set(h.answerable) | set(h.unanswerable) == {"a", "b", "c", "d"}
        True
    """
    by_doc: dict[str, list[str]] = {}
    for qid in query_ids:
        for doc in qrels[qid]:
            by_doc.setdefault(doc, []).append(qid)
    docs = sorted(by_doc)
    order = np.random.default_rng(seed).permutation(len(docs))
    removed: set[str] = set()
    gone: set[str] = set()
    target = len(query_ids) / 2
    for j in order:
        if len(gone) >= target:
            break
        removed.add(docs[j])
        gone.update(q for q in by_doc[docs[j]] if set(qrels[q]) <= removed)
    unanswerable = [q for q in query_ids if set(qrels[q]) <= removed]
    answerable = [q for q in query_ids if not (set(qrels[q]) & removed)]
    # a question with one relevant paragraph removed and another kept is neither: none in SQuAD
    return Halving(answerable, unanswerable, removed)


def abstention_curve(
    confidence: np.ndarray,
    unanswerable: np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    top1_relevant: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Abstention precision, recall, F1 and the answered share of the answerable questions per threshold.

    A question is abstained on when its confidence is below the threshold.

    Args:
        confidence: One confidence per question.
        unanswerable: Boolean, per question.
        thresholds: ``min_confidence`` values.
        top1_relevant: Optional boolean per question (answerable ones): whether its top-1 is relevant.

    Returns:
        One row per threshold.

    Examples:
        >>> rows = abstention_curve(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], bool), [0.5])
        >>> rows[0]["f1"], rows[0]["answered"]
        (1.0, 1.0)
    """
    conf = np.asarray(confidence, dtype=np.float64)
    unans = np.asarray(unanswerable, dtype=bool)
    if conf.shape != unans.shape:
        raise ValueError(f"{conf.size} confidences but {unans.size} labels")
    n_unans, n_ans = int(unans.sum()), int((~unans).sum())
    rows = []
    for t in thresholds:
        abstain = conf < t
        tp = int((abstain & unans).sum())
        n_abstain = int(abstain.sum())
        precision = tp / n_abstain if n_abstain else 1.0
        recall = tp / n_unans if n_unans else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        answered = ~abstain & ~unans
        row: dict[str, Any] = {
            "threshold": float(t),
            "abstained": n_abstain,
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
            "answered": round(int(answered.sum()) / n_ans, 6) if n_ans else 0.0,
        }
        if top1_relevant is not None:
            hits = np.asarray(top1_relevant, dtype=bool)
            row["answered_p@1"] = round(float(hits[answered].mean()), 6) if answered.any() else None
        rows.append(row)
    return rows


def choose_threshold(rows: Sequence[Mapping[str, Any]], min_answered: float) -> dict[str, Any]:
    """The row with the largest F1 among those answering at least ``min_answered`` (ties: the lower threshold).

    Examples:
        >>> choose_threshold([{"threshold": 0.1, "f1": 0.5, "answered": 1.0},
        ...                   {"threshold": 0.2, "f1": 0.7, "answered": 0.95},
        ...                   {"threshold": 0.3, "f1": 0.8, "answered": 0.8}], 0.9)["threshold"]
        0.2
    """
    ok = [r for r in rows if r["answered"] >= min_answered]
    if not ok:
        raise ValueError(f"no threshold answers at least {min_answered} of the answerable questions")
    return dict(max(ok, key=lambda r: (r["f1"], -r["threshold"])))


# ---------------------------------------------------------------------------------- scoring


def dense_confidence(
    cal: ConfidenceCalibrator,
    q: Gaussians,
    d: Gaussians,
    doc_ids: Sequence[str],
    qrels: Mapping[str, Any],
    qids: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Each question's confidence from its exact top-``DEPTH`` ``neg_kl`` scores, and whether its top-1 is relevant."""
    from kl_retrievers.evaluation import retrieve_exact

    run = retrieve_exact(q, d, list(qids), list(doc_ids), DEPTH)
    unc = np.asarray(q.uncertainty(), dtype=np.float64)
    conf = np.empty(len(qids))
    top1 = np.zeros(len(qids), dtype=bool)
    for i, qid in enumerate(qids):
        ranked = sorted(run[qid].items(), key=lambda kv: -kv[1])
        conf[i] = cal.confidence([s for _, s in ranked], float(unc[i]))
        top1[i] = ranked[0][0] in qrels[qid]
    return conf, top1


def hybrid_confidences(
    dense_cal: ConfidenceCalibrator | None,
    hybrid_cal: ConfidenceCalibrator,
    store: Any,
    q: Gaussians,
    texts: Sequence[str],
    qrels: Mapping[str, Any],
    qids: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hybrid store's (adaptive fusion, 100 candidates per half) confidences of every question.

    Returns:
        ``(hybrid, dense_cal, top1)``: the hybrid calibrator's confidence from each query's
        candidates (as ``KLHybridRetriever`` computes it), the dense calibrator's from the ``neg_kl``
        scores of the fused top ``DEPTH`` (NaN without one), and whether the fused top-1 is relevant.
    """
    cands = store.candidates(list(texts), query_gaussians=q)
    conf_h, conf_d = np.empty(len(qids)), np.empty(len(qids))
    top1 = np.zeros(len(qids), dtype=bool)
    unmatched = sum(not bm25_matches_any(c) for c in cands)
    if unmatched:  # the hybrid calibrator gives them about 0
        logger.info("%d of %d questions match no BM25 candidate", unmatched, len(cands))
    for i, (c, qid) in enumerate(zip(cands, qids, strict=True)):
        ranked = store.fuse_candidates(c, DEPTH)
        conf_h[i] = hybrid_confidence(hybrid_cal, c)
        conf_d[i] = (
            np.nan
            if dense_cal is None
            else dense_cal.confidence([float(c.neg_kl[j]) for _, _, j, _ in ranked], c.uncertainty)
        )
        top1[i] = bool(ranked) and ranked[0][0] in qrels[qid]
    return conf_h, conf_d, top1


def no_bm25_match_counts(stemmer: str | None, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """How many questions of each halving match no document of its corpus in BM25 (no encoding needed).

    Such a question's BM25 half is empty among its candidates (no filter here), so the hybrid
    retrievers rank it by ``-KL`` and the hybrid calibrator gives it a confidence near 0
    (:func:`kl_retrievers.calibration.hybrid_confidence`); a group with none has no figure that depends
    on how such questions are scored. Tokens as the hybrid store's (``stemmer``, English stop words).

    Returns:
        One row per group (training articles: ``seeds[0]``; held-out articles: every seed):
        ``group``, ``seed``, ``questions`` and ``no_bm25_match``.
    """
    from kl_retrievers.hybrid import KLHybridStore

    ds = load_beir(DATASETS / SQUAD, "test")
    tokenize = KLHybridStore(stemmer=stemmer)._tokenizer  # the store's tokenizer (documents and queries alike)
    doc_tokens = dict(zip(ds.doc_ids, (set(tokenize(t)) for t in ds.document_texts(ds.doc_ids)), strict=True))
    query_tokens = dict(zip(ds.query_ids, (set(tokenize(t)) for t in ds.query_texts(ds.query_ids)), strict=True))
    held = held_out_articles(ds.doc_ids)
    groups = {
        "train": [q for q in ds.query_ids if article_of(next(iter(ds.qrels[q]))) not in held],
        "held_out": [q for q in ds.query_ids if article_of(next(iter(ds.qrels[q]))) in held],
    }
    rows = []
    for group, seeds_of in (("train", seeds[:1]), ("held_out", seeds)):
        for seed in seeds_of:
            h = halve(ds.qrels, groups[group], seed)
            vocab = set().union(*(toks for d, toks in doc_tokens.items() if d not in h.removed))
            qids = h.answerable + h.unanswerable
            blind = sum(not (query_tokens[q] & vocab) for q in qids)
            rows.append({"group": group, "seed": seed, "questions": len(qids), "no_bm25_match": blind})
    return rows


class Experiment:
    """The encoded SQuAD set and the calibrator: evaluates one group (held-out or training) for one seed."""

    def __init__(
        self,
        backend: Backend | None,
        *,
        cache_dir: str | None,
        batch_size: int,
        hybrid_calibrator: bool = True,
        model: str = MODEL,
        stemmer: str | None = "english",
    ) -> None:
        from kl_retrievers.evaluation import encode_dataset, model_fingerprint
        from kl_retrievers.pretrained import load_model

        # the calibrators first, so that a missing one fails before anything is encoded: the model's dense
        # calibrator (a model that ships none is scored by the hybrid only)
        self.cal: ConfidenceCalibrator | None = None
        try:
            self.cal = default_calibrator(model)
        except ValueError:
            logger.info("%s ships no dense calibrator: the dense retriever is not scored", model)
        # the shipped hybrid calibrator, only when asked for (``--hybrid``; not there yet while
        # benchmarks/calibration.py hybrid-dump makes its data); raises ValueError when the model ships none
        # ``stemmer``: the hybrid store's BM25 stemmer (None: unstemmed, with the model's unstemmed calibrator)
        self.stemmer = stemmer
        self.hybrid_cal = default_hybrid_calibrator(model, stemmer) if hybrid_calibrator else None
        self.ds: BeirDataset = load_beir(DATASETS / SQUAD, "test")
        t0 = time.perf_counter()
        self.model = model
        self.encoder = load_model(model, backend=backend)
        self.backend = type(self.encoder).__name__
        self.fingerprint = model_fingerprint(self.encoder)
        self.q, self.d = encode_dataset(
            self.encoder, self.ds, batch_size=batch_size, cache_dir=cache_dir, show_progress=False
        )
        self.encode_s = round(time.perf_counter() - t0, 1)
        logger.info("encodings ready in %.1f s (%s)", self.encode_s, self.backend)
        self.qrow = {qid: i for i, qid in enumerate(self.ds.query_ids)}
        self.drow = {did: i for i, did in enumerate(self.ds.doc_ids)}
        held = held_out_articles(self.ds.doc_ids)
        self.groups = {
            "held_out": [q for q in self.ds.query_ids if article_of(next(iter(self.ds.qrels[q]))) in held],
            "train": [q for q in self.ds.query_ids if article_of(next(iter(self.ds.qrels[q]))) not in held],
        }
        self.held_articles = sorted(held)

    def halving(self, group: str, seed: int, sample: int | None = None) -> dict[str, Any]:
        """One group halved with ``seed``: its questions (answerable first), their Gaussians, labels, corpus left.

        Returns:
            ``halving`` (:class:`Halving`), ``order`` (question ids), ``q`` (their Gaussians),
            ``unanswerable`` (boolean per question), ``keep`` (document ids left) and ``d`` (their Gaussians).
        """
        qids = self.groups[group]
        if sample is not None and sample < len(qids):
            rng = np.random.default_rng(seed)
            qids = sorted(rng.choice(qids, size=sample, replace=False).tolist(), key=self.qrow.__getitem__)
        h = halve(self.ds.qrels, qids, seed)
        keep = [d for d in self.ds.doc_ids if d not in h.removed]
        order = h.answerable + h.unanswerable
        return {
            "halving": h,
            "order": order,
            "q": self.q[np.asarray([self.qrow[x] for x in order], dtype=np.int64)],
            "unanswerable": np.array([False] * len(h.answerable) + [True] * len(h.unanswerable)),
            "keep": keep,
            "d": self.d[np.asarray([self.drow[x] for x in keep], dtype=np.int64)],
        }

    def hybrid_store(self, keep: Sequence[str], d: Gaussians) -> Any:
        """A hybrid store (adaptive fusion, the defaults of ``KLHybridStore`` but this run's stemmer) over ``keep``."""
        from kl_retrievers.hybrid import KLHybridStore

        # the model's own adaptive parameters, if it ships them (its unstemmed ones for stemmer=None)
        store = KLHybridStore(self.encoder, fusion="adaptive", stemmer=self.stemmer)
        store.add(self.ds.document_texts(list(keep)), gaussians=d, ids=list(keep))
        return store

    def run(self, group: str, seed: int, *, sample: int | None = None, hybrid: bool = False) -> dict[str, Any]:
        """Halve one group with ``seed`` and score every question (dense; and the hybrid store if asked)."""
        part = self.halving(group, seed, sample)
        h, order, q, unans, keep, d = (part[k] for k in ("halving", "order", "q", "unanswerable", "keep", "d"))
        out: dict[str, Any] = {
            "group": group,
            "seed": seed,
            "questions": len(order),
            "answerable": len(h.answerable),
            "unanswerable": len(h.unanswerable),
            "removed_paragraphs": len(h.removed),
            "corpus": len(keep),
        }
        if self.cal is not None:
            t0 = time.perf_counter()
            conf, top1 = dense_confidence(self.cal, q, d, keep, self.ds.qrels, order)
            out["dense"] = {
                "curve": abstention_curve(conf, unans, GRID, top1),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            out["dense"]["auroc"] = auroc(-conf, unans)
        if hybrid:
            t0 = time.perf_counter()
            store = self.hybrid_store(keep, d)
            if self.hybrid_cal is None:
                raise ValueError("this Experiment was made with hybrid_calibrator=False")
            conf_h, conf_hd, top1_h = hybrid_confidences(
                self.cal, self.hybrid_cal, store, q, self.ds.query_texts(order), self.ds.qrels, order
            )
            seconds = round(time.perf_counter() - t0, 1)
            scored = [("hybrid", conf_h)] + ([("hybrid_dense_cal", conf_hd)] if self.cal is not None else [])
            for system, conf_s in scored:
                out[system] = {
                    "curve": abstention_curve(conf_s, unans, GRID, top1_h),
                    "auroc": auroc(-conf_s, unans),
                    "seconds": seconds,
                }
        return out


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (ties count half).

    Examples:
        >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
        0.75
    """
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    r = rankdata(score)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return round(float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)), 6)


def at(rows: Sequence[Mapping[str, Any]], threshold: float) -> dict[str, Any]:
    """The curve row of one grid threshold."""
    return dict(next(r for r in rows if abs(r["threshold"] - threshold) < 1e-9))


def print_table(title: str, rows: Sequence[Mapping[str, Any]], chosen: float) -> None:
    print(f"\n{title}")
    print(f"{'min_conf':>8} {'abstained':>9} {'precision':>9} {'recall':>7} {'F1':>6} {'answered':>8} {'P@1 ans.':>8}")
    shown = sorted({*(float(t) for t in TABLE), chosen})
    for t in shown:
        r = at(rows, t)
        p1 = r.get("answered_p@1")
        mark = "  <- chosen on training articles" if abs(t - chosen) < 1e-9 else ""
        print(
            f"{t:8.2f} {r['abstained']:9d} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} "
            f"{r['answered']:8.3f} {p1 if p1 is None else format(p1, '8.3f')}{mark}"
        )


def calibrator_problem(
    model: str, *, hybrid: bool, record_threshold: bool = False, stemmer: str | None = "english"
) -> str | None:
    """Why ``model`` cannot be scored as asked (``None``: it can), read from its files before anything is encoded.

    Without ``hybrid`` the dense retriever is scored, which needs the model's dense calibrator; with it
    the hybrid store too, which needs the model's hybrid calibrator and its recorded threshold (a model
    without a dense calibrator is then scored by the hybrid store only). ``record_threshold`` needs the
    dense calibrator. ``stemmer=None`` (an unstemmed hybrid store) takes the model's unstemmed hybrid
    calibrator and its recorded threshold when it ships one, else its stemmed one (warned at use).

    Examples:
        >>> calibrator_problem("minilm-gauss-soup", hybrid=True) is None
        True
        >>> print(calibrator_problem("minilm-gauss-lora", hybrid=True))  # doctest: +ELLIPSIS
        --hybrid: bundled model 'minilm-gauss-lora' ships no hybrid confidence calibrator ...
    """
    from kl_retrievers.calibration import CALIBRATION_FILE, HYBRID_CALIBRATION_FILE
    from kl_retrievers.pretrained import bundled_model_path

    try:
        folder = bundled_model_path(model)
    except ValueError as exc:
        return f"--model: {exc}"
    has_dense = (folder / CALIBRATION_FILE).is_file()
    has_hybrid = (folder / HYBRID_CALIBRATION_FILE).is_file()
    make_hybrid = (
        f"make one with `python benchmarks/calibration.py hybrid-dump --model {model}` and "
        f"`python benchmarks/calibration.py fit --hybrid --model {model}`"
    )
    if record_threshold and not has_dense:
        return f"--record-threshold: bundled model {model!r} ships no dense confidence calibrator ({CALIBRATION_FILE})"
    if hybrid and not has_hybrid:
        instead = (
            "or run without --hybrid to score the dense retriever only"
            if has_dense
            else f"it ships no dense calibrator ({CALIBRATION_FILE}) either, so nothing can be scored without one"
        )
        return (
            f"--hybrid: bundled model {model!r} ships no hybrid confidence calibrator ({HYBRID_CALIBRATION_FILE}), "
            f"which the hybrid retriever's confidence needs: {make_hybrid}; {instead}"
        )
    if hybrid:
        try:
            recommended_min_confidence(model, retriever="hybrid", stemmer=stemmer)
        except ValueError as exc:
            return f"--hybrid: {exc}"
    if not hybrid and not has_dense:
        then = (
            "pass --hybrid to score the hybrid store with its hybrid calibrator"
            if has_hybrid
            else f"it ships no hybrid calibrator ({HYBRID_CALIBRATION_FILE}) either: {make_hybrid}, then pass --hybrid"
        )
        return (
            f"bundled model {model!r} ships no dense confidence calibrator ({CALIBRATION_FILE}), so without --hybrid "
            f"there is nothing to score: {then}"
        )
    return None


def record_threshold(
    cal: ConfidenceCalibrator, model: str, dense: Mapping[str, Any], questions: int, command: str
) -> Path:
    """Store the training articles' dense threshold choice in the model's dense calibrator file."""
    from kl_retrievers.calibration import CALIBRATION_FILE
    from kl_retrievers.pretrained import bundled_model_path

    cal.info["recommended_min_confidence"] = {
        "threshold": dense["train_choice"],
        "rule": "best abstention F1 on the SQuAD training articles' halving (seed 0) among thresholds answering "
        "at least the given share of the answerable half (grid 0.00..1.00, step 0.01)",
        "training_articles_at_threshold": dense["train_at_threshold"],
        "training_questions": questions,
        "command": command,
    }
    path = cal.save(bundled_model_path(model) / CALIBRATION_FILE)
    print(f"recorded threshold {dense['train_choice']:.2f} in {path.relative_to(ROOT)}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help=f"choose the threshold on {QUICK_TRAIN} training questions")
    p.add_argument("--backend", choices=("torch", "onnx"), default=None, help="model backend (default: the library's)")
    p.add_argument("--model", default=MODEL, help=f"bundled model (default {MODEL}); its shipped calibrators are used")
    p.add_argument("--seed", type=int, default=0, help="the main halving's seed (default 0)")
    p.add_argument("--seeds", type=int, default=0, help="further halvings of the held-out group (seeds 1..N)")
    p.add_argument("--min-answered", type=float, default=0.9, help="answered share the threshold must keep")
    p.add_argument("--hybrid", action="store_true", help="also the hybrid store (BM25 + -KL, adaptive)")
    p.add_argument(
        "--stemmer",
        choices=("english", "none"),
        default="english",
        help="BM25 stemmer of the hybrid store (default english, KLHybridStore's default); none: unstemmed, scored "
        "with the model's hybrid_confidence_calibration.unstemmed.json and its threshold when it ships one",
    )
    p.add_argument(
        "--count-no-bm25-match",
        action="store_true",
        help="only count the questions that match no document in BM25 (training articles at --seed, held-out "
        "articles at --seed and the --seeds further ones; no encoding, nothing logged) and exit",
    )
    p.add_argument("--cache-dir", default=None, help="encoding cache (default: the library's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--no-log",
        action="store_true",
        help="do not append to runs/abstention/abstention.jsonl (--stemmer none: abstention.unstemmed.jsonl)",
    )
    p.add_argument(
        "--record-threshold",
        action="store_true",
        help="write the dense threshold chosen on the training articles into the model's dense calibrator "
        "(info['recommended_min_confidence']; not for the default model, whose threshold is a library constant)",
    )
    args = p.parse_args(argv)
    if args.record_threshold and args.model == MODEL:
        p.error(f"--record-threshold: {MODEL}'s threshold is kl_retrievers.calibration.DEFAULT_MIN_CONFIDENCE")
    if not 0.0 <= args.min_answered <= 1.0:
        p.error(f"--min-answered must be in [0, 1]; got {args.min_answered}")
    if args.stemmer != "english" and not (args.hybrid or args.count_no_bm25_match):
        p.error(f"--stemmer {args.stemmer}: only with --hybrid (the dense retriever reads no BM25)")
    stemmer = None if args.stemmer == "none" else args.stemmer
    if args.count_no_bm25_match:
        rows = no_bm25_match_counts(stemmer, list(range(args.seed, args.seed + 1 + args.seeds)))
        for r in rows:
            blind, n = r["no_bm25_match"], r["questions"]
            print(f"{r['group']} seed {r['seed']}: {blind} of {n} questions match no BM25 document")
        print(f"no_bm25_match={sum(r['no_bm25_match'] for r in rows)} stemmer={args.stemmer}")
        return 0
    problem = calibrator_problem(
        args.model, hybrid=args.hybrid, record_threshold=args.record_threshold, stemmer=stemmer
    )
    if problem:
        p.error(problem)  # before the SQuAD set is loaded or encoded
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t_all = time.perf_counter()
    # the default model's hybrid threshold is the library constant; another model's is recorded in its calibrator
    hybrid_threshold = (
        recommended_min_confidence(args.model, retriever="hybrid", stemmer=stemmer) if args.hybrid else None
    )
    exp = Experiment(
        args.backend,
        model=args.model,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        hybrid_calibrator=args.hybrid,
        stemmer=stemmer,
    )
    sample = QUICK_TRAIN if args.quick else None
    train = exp.run("train", args.seed, sample=sample, hybrid=args.hybrid)
    held = exp.run("held_out", args.seed, hybrid=args.hybrid)
    record: dict[str, Any] = {
        "benchmark": "abstention",
        "command": shlex.join(["python", "benchmarks/abstention.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "model_fingerprint": exp.fingerprint,
        "encoder": exp.backend,
        "backend": args.backend,  # None: the library's default backend
        "calibrator": {"features": exp.cal.features, "command": exp.cal.info.get("command")} if exp.cal else None,
        "hybrid_calibrator": {
            "features": exp.hybrid_cal.features if exp.hybrid_cal else None,
            "command": exp.hybrid_cal.info.get("command") if exp.hybrid_cal else None,
            "shipped_threshold": hybrid_threshold,
        },
        "bm25_stemmer": stemmer if args.hybrid else None,  # the store's (english, its default; none before stop 42)
        "held_out_articles": exp.held_articles,
        "min_answered": args.min_answered,
        "quick": args.quick,
        "encode_s": exp.encode_s,
    }
    summary: dict[str, Any] = {}
    systems: list[str] = [name for name in ("dense", "hybrid", "hybrid_dense_cal") if name in train]
    for system in systems:
        chosen = choose_threshold(train[system]["curve"], args.min_answered)
        # the shipped hybrid calibrator comes with its shipped threshold (chosen on the same training curve)
        t = hybrid_threshold if system == "hybrid" and hybrid_threshold is not None else chosen["threshold"]
        ho = at(held[system]["curve"], t)
        summary[system] = {
            "threshold": t,
            "train_choice": chosen["threshold"],
            "train_at_threshold": at(train[system]["curve"], t),
            "held_out_at_threshold": ho,
            "held_out_best_f1_with_min_answered": choose_threshold(held[system]["curve"], args.min_answered),
            "train_auroc": train[system]["auroc"],
            "held_out_auroc": held[system]["auroc"],
            "target_met": bool(ho["f1"] >= 0.6 and ho["answered"] >= 0.9),
        }
        print_table(
            f"{system}: training articles (seed {args.seed}, {train['questions']} questions)", train[system]["curve"], t
        )
        print_table(
            f"{system}: held-out articles (seed {args.seed}, {held['questions']} questions)", held[system]["curve"], t
        )
        print(
            f"{system}: AUROC (abstain on unanswerable) train {train[system]['auroc']:.3f}, "
            f"held-out {held[system]['auroc']:.3f}"
        )
        if system == "hybrid":
            print(f"hybrid: shipped threshold {t:.2f}; the training articles' curve chooses {chosen['threshold']:.2f}")
    if args.seeds:
        extra: dict[str, list[dict[str, Any]]] = {s: [] for s in summary}
        for seed in range(args.seed + 1, args.seed + 1 + args.seeds):
            r = exp.run("held_out", seed, hybrid=args.hybrid)
            for system in summary:
                extra[system].append({"seed": seed, **at(r[system]["curve"], summary[system]["threshold"])})
        for system, rows in extra.items():
            f1 = np.array([r["f1"] for r in rows])
            ans = np.array([r["answered"] for r in rows])
            summary[system]["held_out_other_seeds"] = {
                "seeds": len(rows),
                "f1_mean": round(float(f1.mean()), 4),
                "f1_min": round(float(f1.min()), 4),
                "f1_max": round(float(f1.max()), 4),
                "answered_mean": round(float(ans.mean()), 4),
                "answered_min": round(float(ans.min()), 4),
                "answered_max": round(float(ans.max()), 4),
                "rows": rows,
            }
            print(
                f"{system}: {len(rows)} more halvings of the held-out group at {summary[system]['threshold']:.2f}: "
                f"F1 {f1.mean():.3f} [{f1.min():.3f}, {f1.max():.3f}], "
                f"answered {ans.mean():.3f} [{ans.min():.3f}, {ans.max():.3f}]"
            )
    record.update(
        {
            "summary": summary,
            "train": train,
            "held_out": held,
            "commit": git_commit(),
            "started": started,
            "seconds": round(time.perf_counter() - t_all, 1),
        }
    )
    if args.record_threshold:
        if exp.cal is None:
            raise SystemExit(f"--record-threshold: {args.model} ships no dense calibrator")
        record_threshold(exp.cal, args.model, summary["dense"], train["questions"], record["command"])
    if not args.no_log:
        log = LOG if args.stemmer == "english" else UNSTEMMED_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"\nlogged to {log.relative_to(ROOT)}")
    line = ""
    if "dense" in summary:
        s = summary["dense"]
        ho = s["held_out_at_threshold"]
        line = f"abstention_f1={ho['f1']:.4f} answered={ho['answered']:.4f} threshold={s['threshold']:.2f}"
    if "hybrid" in summary:
        sh = summary["hybrid"]
        hh = sh["held_out_at_threshold"]
        line += f" hybrid_f1={hh['f1']:.4f} hybrid_answered={hh['answered']:.4f} hybrid_threshold={sh['threshold']:.2f}"
    print(line.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
