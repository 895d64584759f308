"""Calibration of the default's confidence, and a combined query performance predictor (issue 19, items 3 and 2).

Sub-commands, in the order they are run (``runs/qpp/README.md`` lists the exact commands):

* ``dump``: encode a split with the package default (through the encoding cache), retrieve the top 100
  exactly by -KL, and write one small per-query file ``runs/qpp/calib/<collection>.<split>.json``: each
  query's top-10 scores, its uncertainty, the corpus reference score, its post-retrieval predictors,
  nDCG@10, RR@10 and whether the top-ranked document is relevant (qrels grade > 0, as RR@10 counts
  it). Training sets: ``scifact:train``, ``nfcorpus-preprocessed:train`` and ``squad:train`` (a seeded
  sample of 3,000 SQuAD queries of the train articles; every 10th article is held out, as the
  default's training split them); test splits: the four dev collections'.
* ``from-log``: the same file from a committed ``benchmarks/qpp.py`` per-query log instead of a new
  encoding (the top-2 scores only, ``s_2 = s_1 - gap12``: all that the calibrator needs).
* ``fit``: fit :class:`kl_retrievers.calibration.ConfidenceCalibrator` (features: the uncertainty, the
  top score and the top-1/top-2 gap) on the three training sets only, each weighing the same, and save
  it beside the default model; its leave-one-training-set-out ECE is printed and stored with it.
* ``report``: the calibrator's ECE (10 bins), Brier score and reliability table on each test split (and
  on the training sets, for reference), logged to ``runs/qpp/calibration.jsonl``.
* ``combined``: a combined query performance predictor (uncertainty plus score statistics: the same
  logistic model with per-query nDCG@10 as a soft target, fitted on the training sets; its feature set
  chosen by leave-one-training-set-out Kendall tau), and its tau on the four test splits beside each
  of its parts and the calibrator's confidence, logged to ``runs/qpp/qpp.jsonl`` like every other
  predictor (model label ``minilm-gauss-soup+combined``; ``benchmarks/qpp.py --quick --model
  minilm-gauss-soup+combined`` prints the table). Nothing is fitted or chosen on a test split.

The hybrid retriever's calibrator (``KLHybridRetriever``'s confidence: P(top-1 of the fused ranking is
relevant), ``kind="hybrid"``, features from the query's hybrid candidates,
:data:`kl_retrievers.calibration.HYBRID_FEATURES`):

* ``hybrid-dump``: for each set, a :class:`~kl_retrievers.hybrid.KLHybridStore` (adaptive fusion, 100
  candidates per half, the library's default backend) over its corpus; per judged query every hybrid
  feature and whether the fused top-1 is relevant, written to ``runs/qpp/calib/hybrid.<collection>.<split>.json``.
  ``squad:train-halving`` is the abstention benchmark's construction on the *training* articles
  (``benchmarks/abstention.py``: every question of the non-held-out articles, half made unanswerable
  by removing their paragraphs, seed 0; an unanswerable question's label is 0).
* ``fit --hybrid``: chooses a feature set (:data:`HYBRID_CANDIDATES`) and the training sets
  (:data:`HYBRID_TRAININGS`) on training data only: 5-fold cross-validation over the SQuAD training
  articles (folds by article) gives each candidate's out-of-fold abstention F1 at the best threshold
  that answers >= 90% of the answerable half; among the candidates within 0.02 of the best, the one
  with the lowest mean ECE on the training sets wins (SQuAD out of fold; SciFact and NFCorpus train
  left out of the fit). Fits it on its training sets (each weighing the same), saves it beside the
  default model (``hybrid_confidence_calibration.json``) and prints the recommended threshold: the
  best abstention F1 on the SQuAD training articles' curve among thresholds answering >= 90%
  (:data:`kl_retrievers.calibration.DEFAULT_HYBRID_MIN_CONFIDENCE`).
* ``report --hybrid``: its ECE, Brier score and reliability on the four test splits (and the training
  sets), logged to ``runs/qpp/calibration.jsonl``. As in the hybrid retrievers, every query gets the
  hybrid calibrator's confidence, also one whose BM25 half matched no candidate (near 0 with the shipped
  calibrators); the line records how many such queries there are and how they fare (``no_bm25_match``,
  ``no_bm25_match_observed_p@1``, ``no_bm25_match_mean_confidence``; e.g. 15 of NFCorpus test's 323 and
  127 of its train's 2,563 for the default, stemmed; none on the other sets).

Every ``dump`` and ``hybrid-dump`` file records how its encodings were made (meta ``encoding``, :func:`encoding_rule`:
whether the encoder is batch-invariant, the batch size, and each side's batch size and order as
:func:`kl_retrievers.evaluation.encode_dataset` encodes them); ``fit`` and ``report`` (dense or ``--hybrid``) log
one WARNING per dump whose rule differs from today's or is not recorded (every committed dump is of the latter:
an int8 encoder's were encoded with queries batched and documents longest first until 2026-12-06, so their dense
features differ from today's), and ``fit`` stores the dumps' rules in the calibrator's ``info["encoding"]``.

``--stemmer none`` on the three (default ``english``, the store's default) does the same for a store with
``stemmer=None`` (unstemmed BM25, as every store saved before the option): ``hybrid-dump`` builds the stores
unstemmed (with the model's unstemmed adaptive parameters) and writes ``runs/qpp/calib/hybrid-unstemmed[-NAME].*.json``,
``fit --hybrid`` writes ``hybrid_confidence_calibration.unstemmed.json`` beside the model (``info["bm25_stemmer"]``
``None``, its own recommended threshold chosen by the same rule), and ``report --hybrid`` logs to
``runs/qpp/calibration.unstemmed.jsonl`` (apart from the shipped stemmed calibrators' lines).

Examples:
    python benchmarks/calibration.py dump --sets scifact:train nfcorpus-preprocessed:train squad:train
    python benchmarks/calibration.py from-log --sets cranfield:test
    python benchmarks/calibration.py fit
    python benchmarks/calibration.py report
    python benchmarks/calibration.py combined
    python benchmarks/calibration.py hybrid-dump
    python benchmarks/calibration.py fit --hybrid
    python benchmarks/calibration.py report --hybrid
    python benchmarks/calibration.py hybrid-dump --model bge-small-unit-variance --backend torch

``--model NAME`` (every sub-command but ``from-log`` and ``combined``) does the same for another bundled
model: its dumps are ``runs/qpp/calib/NAME.*.json`` (dense) and ``runs/qpp/calib/hybrid-NAME.*.json``
(hybrid), its calibrators go to its own folder, their recommended thresholds are recorded in them
(``info["recommended_min_confidence"]``: ``fit --hybrid`` writes the hybrid one, ``benchmarks/abstention.py
--model NAME --record-threshold`` the dense one), and its report lines carry its name.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qpp import (
    COLLECTIONS,
    DATASETS,
    LOG_DIR,
    REFERENCE_MODEL,
    _refuse_existing,
    git_commit,
    latest,
    per_query_path,
    read_log,
)

from kl_retrievers.calibration import (
    _UNSTEMMED_HYBRID_CALIBRATION_FILE,
    CALIBRATION_FILE,
    DEFAULT_FEATURES,
    HYBRID_CALIBRATION_FILE,
    HYBRID_FEATURES,
    ConfidenceCalibrator,
    _hybrid_calibration_path,
    expected_calibration_error,
    feature_matrix,
    recommended_min_confidence,
    reliability_table,
)
from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.pretrained import bundled_model_path

logger = logging.getLogger("benchmarks.calibration")
ROOT = Path(__file__).resolve().parents[1]
CALIB_DIR = LOG_DIR / "calib"
SQUAD = "squad-v1.1-dev-retrieval"
TRAIN_SETS = ("scifact:train", "nfcorpus-preprocessed:train", "squad:train")
TEST_SETS = tuple(f"{c}:test" for c in COLLECTIONS)
#: Depth of the stored score list (the calibrator's features need no more).
TOP = 10
SQUAD_QUERIES = 3000
DEFAULT_OUT = bundled_model_path(REFERENCE_MODEL) / CALIBRATION_FILE
#: The bundled model the sub-commands work on (``--model``; default: the package default).
MODEL = REFERENCE_MODEL
#: The hybrid sub-commands' BM25 stemmer (``--stemmer``: ``"english"``, the store's default, or ``None``, unstemmed).
STEMMER: str | None = "english"


def dense_out() -> Path:
    """Where ``fit`` writes (and ``report`` reads) the dense calibrator: beside the model."""
    return bundled_model_path(MODEL) / CALIBRATION_FILE


def squad_train_split(seed: int = 0, n: int = SQUAD_QUERIES) -> BeirDataset:
    """A seeded sample of SQuAD queries from the train articles, against the whole SQuAD corpus.

    Every 10th article (sorted by id) is held out, as the default's training split them; the sample is
    the one ``benchmarks/qpp_experiments.py var-head`` used (same seed, same size).
    """
    squad = load_beir(DATASETS / SQUAD, "test")
    articles = sorted({d.split("-")[0] for d in squad.doc_ids})
    held = set(articles[::10])
    keep = [q for q, rel in squad.qrels.items() if not any(d.split("-")[0] in held for d in rel)]
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(keep, size=min(n, len(keep)), replace=False).tolist())
    return squad.subset(keep, squad.doc_ids)


def load_split(spec: str) -> BeirDataset:
    """``collection:split`` -> the loaded split (``squad:train``: :func:`squad_train_split`)."""
    name, _, split = spec.partition(":")
    if name == "squad":
        if split != "train":
            raise ValueError(f"only squad:train is defined (the train articles); got {spec!r}")
        return squad_train_split()
    return load_beir(DATASETS / name, split or "test")


def calib_path(spec: str) -> Path:
    name, _, split = spec.partition(":")
    tag = "" if MODEL == REFERENCE_MODEL else f"{MODEL}."
    return CALIB_DIR / f"{tag}{name}.{split or 'test'}.json"


def encoding_rule(batch_invariant: bool, batch_size: int) -> dict[str, Any]:
    """How :func:`~kl_retrievers.evaluation.encode_dataset` encodes a split today, for an encoder of that kind.

    ``batch_invariant``: the encoder's (``False`` for an int8 ONNX graph, whose Gaussians depend on the texts
    encoded with them); ``batch_size``: the one passed to ``encode_dataset``. Each side's batch size and order
    come from the cache key ``encode_dataset`` uses (which records them); a dump stores this as its meta's
    ``encoding``, and ``fit`` / ``report`` compare it with today's (:func:`warn_encoding`).

    Examples:
        >>> encoding_rule(False, 32)["queries"], encoding_rule(False, 32)["documents"]
        ({'batch_size': 1, 'order': 'input'}, {'batch_size': 32, 'order': 'input'})
        >>> encoding_rule(True, 32)["documents"]
        {'batch_size': 32, 'order': 'longest first'}
    """
    from kl_retrievers.evaluation import _encoding_key

    rule: dict[str, Any] = {"batch_invariant": bool(batch_invariant), "batch_size": int(batch_size)}
    for kind in ("queries", "documents"):
        key, size = _encoding_key(
            {}, kind, {}, batch_dependent=not batch_invariant, batch_size=int(batch_size), limit=None
        )
        # a batch-invariant encoder's sides are pre-sorted longest first (less padding); the key says "input"
        # where a batch-dependent one's are not (its queries, one at a time, have no order that matters)
        order = key.get("order", "longest first" if batch_invariant else "input")
        rule[kind] = {"batch_size": size, "order": order}
    return rule


def encoder_encoding(encoder: Any, batch_size: int) -> dict[str, Any]:
    """The :func:`encoding_rule` ``encode_dataset`` applies to ``encoder`` at ``batch_size`` (for a dump's meta)."""
    return encoding_rule(bool(getattr(encoder, "batch_invariant", True)), batch_size)


def _describe(rule: Mapping[str, Any]) -> str:
    """One line for an :func:`encoding_rule`: each side's batch size and order ("?" where it records none)."""
    sides = []
    for kind in ("queries", "documents"):
        side = rule.get(kind)
        if not isinstance(side, Mapping):
            sides.append(f"{kind} ?")
        elif side.get("batch_size") == 1:
            sides.append(f"{kind} one at a time")
        else:
            sides.append(f"{kind} in batches of {side.get('batch_size', '?')}, {side.get('order', '?')}")
    return ", ".join(sides)


def warn_encoding(path: Path, meta: Mapping[str, Any]) -> bool:
    """Warn (one stderr line naming the dump) when its recorded encoding rule differs from today's or is missing.

    Today's rule is :func:`encoding_rule` of the dump's own ``batch_invariant`` and ``batch_size``. A dump
    without a record (every dump written before ``dump`` / ``hybrid-dump`` recorded it) was made "before the
    rule was recorded": with a batch-dependent encoder (int8 ONNX), encodings made before 2026-12-06 batched
    the queries and sorted the documents longest first, so today's code gives other dense features.

    Returns:
        Whether it warned.
    """
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    made = f"encoder {meta.get('encoder') or meta.get('backend') or '?'}, dumped {meta.get('time', '?')}"
    again = "hybrid-dump" if path.name.startswith("hybrid") else "dump"
    recorded = meta.get("encoding")
    if not (
        isinstance(recorded, Mapping)
        and isinstance(recorded.get("batch_invariant"), bool)
        and isinstance(recorded.get("batch_size"), int)
    ):
        logger.warning(
            "%s: made before the encoding rule was recorded (no meta 'encoding'; %s). Today encode_dataset encodes "
            "a batch-dependent encoder's (int8 ONNX) %s; another's %s. If its encoder is batch-dependent, its "
            "dense features differ from today's: run %s again",
            name, made, _describe(encoding_rule(False, 32)), _describe(encoding_rule(True, 32)), again,
        )  # fmt: skip
        return True
    today = encoding_rule(recorded["batch_invariant"], recorded["batch_size"])
    if recorded != today:
        logger.warning(
            "%s: its encodings were made by another rule than today's (%s): recorded %s; today %s: run %s again",
            name, made, _describe(recorded), _describe(today), again,
        )  # fmt: skip
        return True
    return False


def cmd_dump(args: argparse.Namespace) -> None:
    import torch

    from kl_retrievers.evaluation import encode_dataset, evaluate_run, model_fingerprint, retrieve_exact
    from kl_retrievers.pretrained import load_model
    from kl_retrievers.qpp import gaussian_query_stats, post_retrieval_predictors

    torch.set_num_threads(args.threads)
    encoder = load_model(MODEL, backend=args.backend)  # torch: the encoder benchmarks/qpp.py logged
    CALIB_DIR.mkdir(parents=True, exist_ok=True)
    for spec in args.sets:
        t0 = time.perf_counter()
        ds = load_split(spec)
        q, d = encode_dataset(encoder, ds, batch_size=args.batch_size, show_progress=False)
        logger.info("%s: encodings ready in %.1f s", spec, time.perf_counter() - t0)
        stats = gaussian_query_stats(q, d, ds.query_ids)
        run = retrieve_exact(q, d, ds.query_ids, ds.doc_ids, 100)
        _, per_query = evaluate_run(ds.qrels, run, ["ndcg@10", "mrr@10"])
        post = post_retrieval_predictors(run, reference=stats["corpus_score"])
        out: dict[str, dict[str, Any]] = {}
        for qid in ds.query_ids:
            if qid not in per_query:
                continue  # unjudged query
            ranked = sorted(run[qid].items(), key=lambda kv: -kv[1])
            top1 = int(per_query[qid]["mrr@10"] == 1.0)  # as the evaluation breaks ties (NFCorpus has duplicates)
            out[qid] = {
                "top_scores": [round(float(s), 7) for _, s in ranked[:TOP]],
                "uncertainty": round(stats["uncertainty"][qid], 8),
                "corpus_score": round(stats["corpus_score"][qid], 7),
                **{f"qpp.{n}": round(v[qid], 8) for n, v in post.items() if qid in v},
                "ndcg@10": per_query[qid]["ndcg@10"],
                "mrr@10": per_query[qid]["mrr@10"],
                "top1_relevant": top1,
            }
        meta = {
            "model": MODEL,
            "backend": args.backend,
            "fingerprint": model_fingerprint(encoder),
            "encoding": encoder_encoding(encoder, args.batch_size),  # how encode_dataset encoded the split
            "set": spec,
            "queries": len(out),
            "ndcg@10": float(np.mean([v["ndcg@10"] for v in out.values()])),
            "p@1": float(np.mean([v["top1_relevant"] for v in out.values()])),
            "command": shlex.join(["python", *sys.argv]),
            "commit": git_commit(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        calib_path(spec).write_text(json.dumps({"meta": meta, "per_query": out}) + "\n", encoding="utf-8")
        logger.info("%s: %d queries, nDCG@10 %.4f, P@1 %.4f", spec, len(out), meta["ndcg@10"], meta["p@1"])
        print(f"{spec}: {len(out)} queries nDCG@10 {meta['ndcg@10']:.4f} P@1 {meta['p@1']:.4f}", flush=True)


def cmd_from_log(args: argparse.Namespace) -> None:
    """Per-query files from the committed ``benchmarks/qpp.py`` logs (top-2 scores only: ``s_2 = s_1 - gap12``).

    Each set's source is the per-query file that the newest ``qpp.jsonl`` line of the default on that
    collection and split names (``per_query_file``; each run writes a file of its own).
    """
    from kl_retrievers.evaluation import load_per_query

    CALIB_DIR.mkdir(parents=True, exist_ok=True)
    records = read_log(LOG_DIR)
    for spec in args.sets:
        name, _, split = spec.partition(":")
        line = latest(records, REFERENCE_MODEL, name, split or "test")
        if line is None or not line.get("per_query_file"):
            raise SystemExit(f"{LOG_DIR / 'qpp.jsonl'}: no line of {REFERENCE_MODEL} on {spec} naming a per-query file")
        source = ROOT / line["per_query_file"]  # relative to the repository root, or absolute
        per_query, meta = load_per_query(source)
        out = {}
        for qid, m in per_query.items():
            if "qpp.gap12" not in m:
                continue  # no second document retrieved
            s1 = m["qpp.max_score"]
            out[qid] = {
                "top_scores": [s1, s1 - m["qpp.gap12"]],
                "uncertainty": m["uncertainty"],
                **{k: v for k, v in m.items() if k.startswith("qpp.")},
                "ndcg@10": m["ndcg@10"],
                "mrr@10": m["mrr@10"],
                "top1_relevant": int(m["mrr@10"] == 1.0),
            }
        info = {
            "model": REFERENCE_MODEL,
            "fingerprint": meta.get("fingerprint"),
            "encoding": meta.get("encoding"),  # the source's record, if it has one (None: not recorded)
            "set": spec,
            "queries": len(out),
            "source": line["per_query_file"],
            "source_command": meta.get("command"),
            "ndcg@10": float(np.mean([v["ndcg@10"] for v in out.values()])),
            "p@1": float(np.mean([v["top1_relevant"] for v in out.values()])),
            **provenance(),
        }
        calib_path(spec).write_text(json.dumps({"meta": info, "per_query": out}) + "\n", encoding="utf-8")
        print(f"{spec}: {len(out)} queries from {info['source']} nDCG@10 {info['ndcg@10']:.4f} P@1 {info['p@1']:.4f}")


def read_calib(spec: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The per-query rows and the meta of one dumped split."""
    data = json.loads(calib_path(spec).read_text(encoding="utf-8"))
    return data["per_query"], data["meta"]


# ---------------------------------------------------------------------------------- fitting

#: Feature sets of the shipped calibrator: the uncertainty and the top-2 scores (a retriever has them; so do the
#: committed per-query logs of the test splits). One design, no choice: its leave-one-set-out ECE is reported.
CALIBRATOR_CANDIDATES: dict[str, tuple[str, ...]] = {"unc+max+gap12": DEFAULT_FEATURES}
#: Candidate feature sets of the combined predictor: every part that ``evaluate --json`` reports, or the calibrator's.
COMBINED_CANDIDATES: dict[str, tuple[str, ...]] = {
    "unc+post": ("uncertainty", "max_score", "nqc", "gap12", "wig"),
    "unc+max+gap12": DEFAULT_FEATURES,
}
PART_KEYS = {"uncertainty": "uncertainty", **{n: f"qpp.{n}" for n in ("max_score", "nqc", "gap12", "wig")}}
CALIB_LOG = LOG_DIR / "calibration.jsonl"
#: ``report --hybrid --stemmer none`` logs here, apart from the shipped (stemmed) calibrators' lines that
#: ``benchmarks/results_qpp.py`` reads.
UNSTEMMED_CALIB_LOG = LOG_DIR / "calibration.unstemmed.jsonl"
COMBINED_FILE = LOG_DIR / "combined_predictor.json"
COMBINED_LABEL = f"{REFERENCE_MODEL}+combined"


def features_of(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> np.ndarray:
    """Feature matrix of dumped rows: the parts as logged (``qpp.*``), the top-10 features recomputed."""
    logged = [n for n in names if n in ("nqc", "wig")]
    x = feature_matrix(rows, [n for n in names if n not in logged])
    cols = {n: x[:, i] for i, n in enumerate(n for n in names if n not in logged)}
    cols.update({n: np.array([r[PART_KEYS[n]] for r in rows], dtype=np.float64) for n in logged})
    return np.stack([cols[n] for n in names], axis=1)


def training_arrays(
    names: Sequence[str], target: str, sets: Sequence[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per training set: its feature matrix and its targets (``top1_relevant`` or ``ndcg@10``)."""
    out = {}
    for spec in sets or TRAIN_SETS:
        rows = list(read_calib(spec)[0].values())
        out[spec] = (features_of(rows, names), np.array([r[target] for r in rows], dtype=np.float64))
    return out


def fit_pooled(
    data: Mapping[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str], l2: float, kind: str = "dense"
) -> ConfidenceCalibrator:
    """Fit on the union of the sets, each set weighing the same in total."""
    x = np.concatenate([v[0] for v in data.values()])
    y = np.concatenate([v[1] for v in data.values()])
    w = np.concatenate([np.full(len(v[1]), 1.0 / len(v[1])) for v in data.values()])
    return ConfidenceCalibrator(names, l2=l2, kind=kind).fit(x, y, sample_weight=w)


def leave_one_set_out(names: Sequence[str], target: str, score: str, l2: float) -> dict[str, float]:
    """Fit on two training sets, score the third (``ece`` or Kendall ``tau`` against the target), for each."""
    from kl_retrievers.qpp import correlation

    data = training_arrays(names, target)
    out = {}
    for held in data:
        cal = fit_pooled({k: v for k, v in data.items() if k != held}, names, l2)
        x, y = data[held]
        p = cal.predict(x)
        out[held] = expected_calibration_error(p, y) if score == "ece" else float(correlation(p, y, n_boot=0)["tau"])
    return out


def train_info(target: str) -> list[dict[str, Any]]:
    rows = []
    for spec in TRAIN_SETS:
        per_query = read_calib(spec)[0]
        values = [r[target] for r in per_query.values()]
        rows.append({"set": spec, "queries": len(values), f"mean_{target}": round(float(np.mean(values)), 6),
                     "file": str(calib_path(spec).relative_to(ROOT))})  # fmt: skip
    return rows


def choose(candidates: Mapping[str, Sequence[str]], target: str, score: str, l2: float) -> tuple[str, dict]:
    """The candidate with the best mean leave-one-training-set-out score (lowest ECE / highest tau)."""
    results = {name: leave_one_set_out(names, target, score, l2) for name, names in candidates.items()}
    means = {name: float(np.mean(list(r.values()))) for name, r in results.items()}
    best = (min if score == "ece" else max)(means, key=lambda n: means[n])
    for name, r in results.items():
        cells = " ".join(f"{k}={v:.4f}" for k, v in r.items())
        print(f"  {name:<14} leave-one-set-out {score}: {cells}  mean {means[name]:.4f}", flush=True)
    return best, {"score": score, "per_set": results, "mean": means, "chosen": best}


def cmd_fit(args: argparse.Namespace) -> None:
    if args.hybrid:
        cmd_fit_hybrid(args)
        return
    args.out = args.out or dense_out()
    for spec in TRAIN_SETS:
        warn_encoding(calib_path(spec), read_calib(spec)[1])
    print("calibrator candidates (target: top-1 document relevant):")
    best, selection = choose(CALIBRATOR_CANDIDATES, "top1_relevant", "ece", args.l2)
    cal = fit_pooled(
        training_arrays(CALIBRATOR_CANDIDATES[best], "top1_relevant"), CALIBRATOR_CANDIDATES[best], args.l2
    )
    cal.info.update(
        target="top-1 document relevant (qrels grade > 0), as RR@10 = 1",
        model=MODEL,
        fingerprint=read_calib(TRAIN_SETS[0])[1]["fingerprint"],
        encoding={spec: read_calib(spec)[1].get("encoding") for spec in TRAIN_SETS},  # None: not recorded
        training_data=train_info("top1_relevant"),
        set_weights="each training set weighs the same in total",
        selection=selection,
        command=shlex.join(["python", *sys.argv]),
    )
    cal.save(args.out)
    print(f"chose {best}; wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    print(f"  coef {dict(zip(cal.features, np.round(cal.coef, 4).tolist(), strict=True))}")  # type: ignore[arg-type]


def provenance() -> dict[str, Any]:
    """The command line, the commit and the time of a logged record."""
    return {
        "command": shlex.join(["python", *sys.argv]),
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def log_line(path: Path, record: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def at_threshold(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """What ``min_confidence = threshold`` does to a natural query set (every query has an answer somewhere).

    ``answered``: share of queries kept; ``p@1_answered`` / ``p@1_refused``: share of them whose top-1 is
    relevant; ``right_refused``: share of the queries with a relevant top-1 that are refused.

    Examples:
        >>> at_threshold(np.array([0.1, 0.5, 0.9, 0.2]), np.array([0.0, 1.0, 1.0, 1.0]), 0.3)["answered"]
        0.5
    """
    keep = p >= threshold
    right = y > 0
    return {
        "threshold": threshold,
        "answered": float(keep.mean()),
        "p@1_answered": float(y[keep].mean()) if keep.any() else None,
        "p@1_refused": float(y[~keep].mean()) if (~keep).any() else None,
        "right_refused": float((right & ~keep).sum() / right.sum()) if right.any() else None,
    }


def _at_line(a: Mapping[str, Any] | None) -> str:
    if a is None:
        return "(no recommended threshold recorded)"
    return f"at {a['threshold']:.2f}: answered {a['answered']:.3f}, right top-1 refused {a['right_refused'] or 0:.3f}"


def recommended_threshold(cal: ConfidenceCalibrator) -> float | None:
    """The model's recommended ``min_confidence`` for ``cal``'s kind of retriever (``None``: none recorded).

    :func:`kl_retrievers.calibration.recommended_min_confidence` of ``--model``: the library constants for the
    default, else the threshold recorded in the model's shipped calibrator (by ``fit --hybrid``, or by
    ``benchmarks/abstention.py --record-threshold`` for a dense one); with ``--stemmer none`` the one recorded in
    the model's unstemmed hybrid calibrator. Only a threshold chosen for ``cal``'s kind: for a hybrid calibrator
    of a model that ships no hybrid one, ``recommended_min_confidence`` answers the dense calibrator's threshold
    (what the hybrid retrievers fall back to), a cut on another probability than ``cal``'s: ``None`` then.
    """
    if cal.kind == "hybrid" and _hybrid_calibration_path(MODEL, STEMMER) is None:
        logger.warning(
            "%s ships no hybrid confidence calibrator, so no hybrid threshold is recommended (its dense "
            "calibrator's is not one for the fused ranking's confidence); at_recommended_threshold is left out",
            MODEL,
        )
        return None
    try:
        return recommended_min_confidence(MODEL, retriever=cal.kind, stemmer=STEMMER)
    except ValueError:
        return None


def cmd_report(args: argparse.Namespace) -> None:
    if args.hybrid:
        cmd_report_hybrid(args)
        return
    path = Path(args.calibrator or dense_out())
    cal = ConfidenceCalibrator.load(path)
    recommended = recommended_threshold(cal)
    for spec in [*TEST_SETS, *TRAIN_SETS]:
        per_query, meta = read_calib(spec)
        warn_encoding(calib_path(spec), meta)
        rows = list(per_query.values())
        p = cal.predict(features_of(rows, cal.features))
        y = np.array([r["top1_relevant"] for r in rows], dtype=np.float64)
        ece = expected_calibration_error(p, y)
        name, _, split = spec.partition(":")
        record = {
            "collection": name, "split": split, "role": "test" if spec in TEST_SETS else "train",
            "calibrator": str(path.resolve().relative_to(ROOT)),
            "features": cal.features, "queries": len(rows), "observed_p@1": float(y.mean()),
            "mean_confidence": float(p.mean()),
            "ece": ece, "brier": float(np.mean((p - y) ** 2)), "reliability": reliability_table(p, y),
            "at_recommended_threshold": at_threshold(p, y, recommended) if recommended is not None else None,
            "per_query_file": str(calib_path(spec).relative_to(ROOT)),
            "model": MODEL,
            **provenance(),
        }  # fmt: skip
        log_line(CALIB_LOG, record)
        print(
            f"{spec:<34} n={len(rows):>5} P@1 {y.mean():.4f} mean conf {p.mean():.4f} ECE {ece:.4f} "
            f"{_at_line(record['at_recommended_threshold'])}",
            flush=True,
        )


def cmd_combined(args: argparse.Namespace) -> None:
    from kl_retrievers.evaluation import save_per_query
    from kl_retrievers.qpp import fitted_predictor, format_qpp, per_query_with_predictors, qpp_report

    print("combined predictor candidates (target: per-query nDCG@10):")
    best, selection = choose(COMBINED_CANDIDATES, "ndcg@10", "tau", args.l2)
    names = COMBINED_CANDIDATES[best]
    model = fit_pooled(training_arrays(names, "ndcg@10"), names, args.l2)
    model.info.update(target="per-query nDCG@10 (soft targets)", model=REFERENCE_MODEL,
                      training_data=train_info("ndcg@10"), selection=selection,
                      command=shlex.join(["python", *sys.argv]))  # fmt: skip
    model.save(COMBINED_FILE)
    conf = ConfidenceCalibrator.load(args.calibrator)
    for spec in TEST_SETS:
        per_query = read_calib(spec)[0]
        qids = list(per_query)
        rows = [per_query[q] for q in qids]
        values = {part: {q: float(r[key]) for q, r in zip(qids, rows, strict=True) if key in r}
                  for part, key in PART_KEYS.items()}  # fmt: skip
        values["combined"] = fitted_predictor(values, model)
        values["confidence"] = dict(zip(qids, conf.predict(features_of(rows, conf.features)).tolist(), strict=True))
        ndcg = {q: float(r["ndcg@10"]) for q, r in zip(qids, rows, strict=True)}
        report = qpp_report(ndcg, values, reference="corpus_mean_score")
        name, _, split = spec.partition(":")
        record: dict[str, Any] = {
            "model": COMBINED_LABEL, "collection": name, "split": split, "queries": len(qids),
            "ndcg@10": round(float(np.mean(list(ndcg.values()))), 6), "qpp": report,
            "experiment": "combined", "features": list(names), "combined_file": str(COMBINED_FILE.relative_to(ROOT)),
            "calibrator": str(Path(args.calibrator).resolve().relative_to(ROOT)),
            **provenance(),
        }  # fmt: skip
        pq_file = per_query_path(LOG_DIR, COMBINED_LABEL, name, split, time.gmtime())  # this run's own file
        _refuse_existing(pq_file)  # claimed atomically; never overwrites an earlier run's
        rounded = {n: {q: round(x, 8) for q, x in v.items()} for n, v in values.items()}
        pq = per_query_with_predictors({q: {"ndcg@10": v} for q, v in ndcg.items()}, rounded)
        save_per_query(pq_file, pq, meta={k: v for k, v in record.items() if k != "qpp"})
        record["per_query_file"] = str(pq_file.relative_to(ROOT))
        log_line(LOG_DIR / "qpp.jsonl", record)
        taus = {n: round(p["tau"], 3) for n, p in report["predictors"].items() if p["tau"] is not None}
        print(f"{spec}: taus {taus}", flush=True)
        if args.verbose:
            print(format_qpp(report))


# ---------------------------------------------------------------------------------- the hybrid retriever

SQUAD_HALVING = "squad:train-halving"
#: Training sets of the hybrid calibrator (the SQuAD training articles' halving and two natural sets).
HYBRID_TRAIN_SETS = (SQUAD_HALVING, "scifact:train", "nfcorpus-preprocessed:train")
#: Candidate feature sets, fixed before any fit: the dense calibrator's, the exploratory 14 signals of the
#: earlier abstention experiment (BM25 raw scores), and a scale-free set (no raw BM25 score).
HYBRID_CANDIDATES: dict[str, tuple[str, ...]] = {
    "dense3": DEFAULT_FEATURES,
    "signals14": (
        "uncertainty", "max_score", "gap12", "gap1_10", "std10", "bm25_max_raw", "bm25_gap12_raw",
        "bm25_of_dense_top1_raw", "dense_gap12", "dense_max_z", "bm25_max_z", "bm25_coverage", "bm25_matched",
        "overlap10",
    ),
    "scale_free15": (
        "uncertainty", "max_score", "gap12", "gap1_10", "std10", "dense_gap12", "dense_max_z", "bm25_gap12",
        "bm25_max_z", "bm25_coverage", "bm25_matched", "overlap10", "bm25_rr_dense_top1", "dense_rr_bm25_top1",
        "bm25_ratio_dense_top1",
    ),
}  # fmt: skip
#: Candidate training-set combinations (each set weighs the same in total).
HYBRID_TRAININGS: dict[str, tuple[str, ...]] = {"squad": (SQUAD_HALVING,), "squad+scifact+nfcorpus": HYBRID_TRAIN_SETS}
CV_FOLDS = 5
#: Candidates within this much of the best cross-validated F1 compete on training-set ECE.
F1_TOLERANCE = 0.02
MIN_ANSWERED = 0.9


def hybrid_out() -> Path:
    """Where ``fit --hybrid`` writes (and ``report --hybrid`` reads) the calibrator: beside the model.

    With ``--stemmer none`` it is the model's ``hybrid_confidence_calibration.unstemmed.json`` (what a
    ``stemmer=None`` store picks).
    """
    file = HYBRID_CALIBRATION_FILE if STEMMER is not None else _UNSTEMMED_HYBRID_CALIBRATION_FILE
    return bundled_model_path(MODEL) / file


def hybrid_path(spec: str) -> Path:
    """The ``hybrid-dump`` file of one set (``--stemmer none``: a ``hybrid-unstemmed`` prefix, apart from the stemmed).

    Examples:
        >>> hybrid_path("scifact:train").name
        'hybrid.scifact.train.json'
    """
    name, _, split = spec.partition(":")
    prefix = "hybrid" if STEMMER is not None else "hybrid-unstemmed"
    tag = prefix if MODEL == REFERENCE_MODEL else f"{prefix}-{MODEL}"
    return CALIB_DIR / f"{tag}.{name}.{split or 'test'}.json"


def hybrid_rows(
    store: Any, texts: Sequence[str], q: Any, qids: Sequence[str], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, Any]]:
    """Per query: every hybrid feature and whether the store's fused (adaptive) top-1 is relevant."""
    from kl_retrievers.calibration import hybrid_query_features

    names = list(HYBRID_FEATURES)
    out = {}
    for qid, c in zip(qids, store.candidates(list(texts), query_gaussians=q), strict=True):
        if int((c.dense_rank > 0).sum()) < 2:
            continue  # no confidence (as the retrievers: None)
        top = store.fuse_candidates(c, 1)[0][0]
        f = hybrid_query_features(c, None, names)
        out[qid] = {
            "x": [round(float(v), 7) for v in f],  # in the order of HYBRID_FEATURES (the file's meta "features")
            "top1": top,
            "top1_relevant": int(qrels.get(qid, {}).get(top, 0) > 0),
        }
    return out


def cmd_hybrid_dump(args: argparse.Namespace) -> None:
    from abstention import Experiment, article_of

    from kl_retrievers.evaluation import encode_dataset, model_fingerprint
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.pretrained import load_model

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    CALIB_DIR.mkdir(parents=True, exist_ok=True)
    encoder = None
    for spec in args.sets:
        t0 = time.perf_counter()
        if spec == SQUAD_HALVING:
            exp = Experiment(
                args.backend,
                model=MODEL,
                cache_dir=None,
                batch_size=args.batch_size,
                hybrid_calibrator=False,
                stemmer=STEMMER,
            )
            part = exp.halving("train", 0)
            store = exp.hybrid_store(part["keep"], part["d"])
            rows = hybrid_rows(store, exp.ds.query_texts(part["order"]), part["q"], part["order"], exp.ds.qrels)
            for qid, unans in zip(part["order"], part["unanswerable"].tolist(), strict=True):
                if qid in rows:
                    rows[qid].update(unanswerable=int(unans), article=article_of(next(iter(exp.ds.qrels[qid]))))
            fingerprint, backend = exp.fingerprint, exp.backend
            encoding = encoder_encoding(exp.encoder, args.batch_size)
        else:
            if encoder is None:
                encoder = load_model(MODEL, backend=args.backend)
            ds = load_split(spec)
            q, d = encode_dataset(encoder, ds, batch_size=args.batch_size, show_progress=False)
            judged = [i for i, qid in enumerate(ds.query_ids) if any(g > 0 for g in ds.qrels.get(qid, {}).values())]
            # the model's own adaptive parameters, if it ships them (unstemmed ones for stemmer=None)
            store = KLHybridStore(encoder, fusion="adaptive", stemmer=STEMMER)
            store.add(ds.document_texts(ds.doc_ids), gaussians=d, ids=ds.doc_ids)
            qids = [ds.query_ids[i] for i in judged]
            rows = hybrid_rows(store, ds.query_texts(qids), q[np.asarray(judged, dtype=np.int64)], qids, ds.qrels)
            fingerprint, backend = model_fingerprint(encoder), type(encoder).__name__
            encoding = encoder_encoding(encoder, args.batch_size)
        meta = {
            "model": MODEL, "encoder": backend, "backend": args.backend, "fingerprint": fingerprint,
            "encoding": encoding,  # how encode_dataset encoded the split (fit and report compare it with today's)
            "set": spec, "queries": len(rows), "fusion": "adaptive", "candidates": store.fusion.candidates,
            "stemmer": store.stemmer,
            "p@1": float(np.mean([r["top1_relevant"] for r in rows.values()])), "features": list(HYBRID_FEATURES),
            "seconds": round(time.perf_counter() - t0, 1), **provenance(),
        }  # fmt: skip
        hybrid_path(spec).write_text(json.dumps({"meta": meta, "per_query": rows}) + "\n", encoding="utf-8")
        print(f"{spec}: {len(rows)} queries, fused P@1 {meta['p@1']:.4f} ({meta['seconds']} s)", flush=True)


def read_hybrid(spec: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The per-query rows (in file order; ``features``: name -> value) and the meta of one ``hybrid-dump`` file."""
    data = json.loads(hybrid_path(spec).read_text(encoding="utf-8"))
    names = data["meta"]["features"]
    rows = list(data["per_query"].values())
    for r in rows:
        r["features"] = dict(zip(names, r.pop("x"), strict=True))
    return rows, data["meta"]


def hybrid_xy(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix (columns ``names``) and fused top-1 labels of dumped rows."""
    x = np.array([[r["features"][n] for n in names] for r in rows], dtype=np.float64)
    return x, np.array([r["top1_relevant"] for r in rows], dtype=np.float64)


def squad_threshold(prob: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The abstention choice on the SQuAD training halving: best F1 among thresholds answering >= 90%."""
    from abstention import GRID, abstention_curve, choose_threshold

    unans = np.array([bool(r["unanswerable"]) for r in rows])
    return choose_threshold(abstention_curve(prob, unans, GRID), MIN_ANSWERED)


def hybrid_selection_scores(names: Sequence[str], training: Sequence[str], l2: float) -> dict[str, Any]:
    """Cross-validated abstention F1 on the SQuAD training articles and training-set ECEs of one candidate."""
    sq_rows, _ = read_hybrid(SQUAD_HALVING)
    x_sq, y_sq = hybrid_xy(sq_rows, names)
    articles = sorted({r["article"] for r in sq_rows})
    fold_of = {a: i % CV_FOLDS for i, a in enumerate(articles)}
    folds = np.array([fold_of[r["article"]] for r in sq_rows])
    others = {spec: hybrid_xy(read_hybrid(spec)[0], names) for spec in HYBRID_TRAIN_SETS if spec != SQUAD_HALVING}
    oof = np.empty(len(sq_rows))
    for f in range(CV_FOLDS):
        fit_on = folds != f
        data = {SQUAD_HALVING: (x_sq[fit_on], y_sq[fit_on]), **{s: others[s] for s in training if s in others}}
        oof[~fit_on] = fit_pooled(data, names, l2, "hybrid").predict(x_sq[~fit_on])
    chosen = squad_threshold(oof, sq_rows)
    ece = {SQUAD_HALVING: expected_calibration_error(oof, y_sq)}
    for spec, (x, y) in others.items():  # each natural set scored by a fit that did not see it
        data = {SQUAD_HALVING: (x_sq, y_sq), **{s: others[s] for s in training if s in others and s != spec}}
        ece[spec] = expected_calibration_error(fit_pooled(data, names, l2, "hybrid").predict(x), y)
    return {
        "cv_f1": chosen["f1"], "cv_answered": chosen["answered"], "cv_threshold": chosen["threshold"],
        "ece": {k: round(v, 6) for k, v in ece.items()}, "mean_ece": round(float(np.mean(list(ece.values()))), 6),
    }  # fmt: skip


def cmd_fit_hybrid(args: argparse.Namespace) -> None:
    out = args.out or hybrid_out()
    for spec in HYBRID_TRAIN_SETS:  # every candidate reads them all
        warn_encoding(hybrid_path(spec), read_hybrid(spec)[1])
    print("hybrid calibrator candidates (target: fused top-1 relevant; SQuAD CV by article, training ECEs):")
    results: dict[str, dict[str, Any]] = {}
    for fname, names in HYBRID_CANDIDATES.items():
        for tname, training in HYBRID_TRAININGS.items():
            key = f"{fname} @ {tname}"
            r = results[key] = hybrid_selection_scores(names, training, args.l2)
            cells = " ".join(f"{k.split(':')[0]}={v:.4f}" for k, v in r["ece"].items())
            print(f"  {key:<38} CV F1 {r['cv_f1']:.4f} (answered {r['cv_answered']:.3f} at {r['cv_threshold']:.2f})"
                  f"  ECE {cells} mean {r['mean_ece']:.4f}", flush=True)  # fmt: skip
    best_f1 = max(r["cv_f1"] for r in results.values())
    eligible = [k for k, r in results.items() if r["cv_f1"] >= best_f1 - F1_TOLERANCE]
    best = min(eligible, key=lambda k: (results[k]["mean_ece"], -results[k]["cv_f1"]))
    fname, tname = best.split(" @ ")
    names, training = HYBRID_CANDIDATES[fname], HYBRID_TRAININGS[tname]
    rows = {spec: read_hybrid(spec) for spec in training}
    cal = fit_pooled({s: hybrid_xy(r, names) for s, (r, _) in rows.items()}, names, args.l2, "hybrid")
    sq_rows = rows[SQUAD_HALVING][0]
    threshold = squad_threshold(cal.predict(hybrid_xy(sq_rows, names)[0]), sq_rows)
    meta = rows[SQUAD_HALVING][1]
    for spec, (_, m) in rows.items():  # the output file is chosen by --stemmer: the dumps must agree with it
        if m.get("stemmer") != STEMMER:
            raise SystemExit(
                f"{hybrid_path(spec)} was dumped with BM25 stemmer {m.get('stemmer')!r}, not --stemmer's {STEMMER!r}: "
                "rerun hybrid-dump with the same --stemmer"
            )
    cal.info.update(
        target="top-1 of the hybrid store's fused ranking relevant (qrels grade > 0); 0 for an unanswerable question",
        retriever="KLHybridStore, adaptive fusion, 100 candidates per half",
        model=MODEL,
        encoder=meta["encoder"],
        fingerprint=meta["fingerprint"],
        encoding={s: m.get("encoding") for s, (_, m) in rows.items()},  # None: dumped before it was recorded
        bm25_stemmer=meta.get("stemmer"),  # dumps before stop 42 record none: they were not stemmed
        training_data=[
            {
                "set": s,
                "queries": len(r),
                "mean_top1_relevant": round(float(np.mean([x["top1_relevant"] for x in r])), 6),
                "file": str(hybrid_path(s).relative_to(ROOT)),
            }
            for s, (r, _) in rows.items()
        ],
        set_weights="each training set weighs the same in total",
        selection={
            "rule": f"best {CV_FOLDS}-fold (by article) out-of-fold abstention F1 on the SQuAD training articles' "
            f"halving (threshold with answered >= {MIN_ANSWERED}); among candidates within {F1_TOLERANCE} of it, "
            "the lowest mean training-set ECE (SQuAD out of fold, SciFact / NFCorpus train not in the fit)",
            "candidates": results,
            "chosen": best,
        },
        recommended_min_confidence={
            "threshold": threshold["threshold"],
            "rule": f"best abstention F1 on the SQuAD training articles' halving among thresholds answering >= "
            f"{MIN_ANSWERED} of the answerable half (grid 0.00..1.00, step 0.01)",
            "training_articles_at_threshold": threshold,
        },
        command=shlex.join(["python", *sys.argv]),
    )
    cal.save(out)
    print(f"chose {best}; wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    print(f"  coef {dict(zip(cal.features, np.round(cal.coef, 4).tolist(), strict=True))}")  # type: ignore[arg-type]
    where = "DEFAULT_HYBRID_MIN_CONFIDENCE" if STEMMER is not None else "info['recommended_min_confidence']"
    print(f"  recommended threshold ({where}) {threshold['threshold']:.2f}: training articles "
          f"F1 {threshold['f1']:.4f}, answered {threshold['answered']:.4f}")  # fmt: skip
    print(f"  DEFAULT_HYBRID_FEATURES = {tuple(names)}")


def no_bm25_match_stats(rows: Sequence[Mapping[str, Any]], p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """How many dumped rows match no BM25 candidate (``bm25_max_raw`` 0), their observed P@1 and mean confidence.

    Such a query is ranked by ``-KL`` alone; the hybrid calibrator gives it about 0 (``None`` for the two
    rates when there is none).
    """
    unmatched = np.array([r["features"]["bm25_max_raw"] == 0 for r in rows], dtype=bool)
    n = int(unmatched.sum())
    return {
        "no_bm25_match": n,
        "no_bm25_match_observed_p@1": float(y[unmatched].mean()) if n else None,
        "no_bm25_match_mean_confidence": float(p[unmatched].mean()) if n else None,
    }


def cmd_report_hybrid(args: argparse.Namespace) -> None:
    path = Path(args.calibrator or hybrid_out())
    cal = ConfidenceCalibrator.load(path)
    recommended = recommended_threshold(cal)
    for spec in [*TEST_SETS, *HYBRID_TRAIN_SETS]:
        rows, meta = read_hybrid(spec)
        warn_encoding(hybrid_path(spec), meta)
        x, y = hybrid_xy(rows, cal.features)
        p = cal.predict(x)
        unmatched = no_bm25_match_stats(rows, p, y)
        ece = expected_calibration_error(p, y)
        name, _, split = spec.partition(":")
        record = {
            "collection": name, "split": split, "role": "test" if spec in TEST_SETS else "train",
            "retriever": "hybrid", "calibrator": str(path.resolve().relative_to(ROOT)), "features": cal.features,
            "queries": len(rows), "observed_p@1": float(y.mean()), "mean_confidence": float(p.mean()),
            "ece": ece, "brier": float(np.mean((p - y) ** 2)), "reliability": reliability_table(p, y),
            "at_recommended_threshold": at_threshold(p, y, recommended) if recommended is not None else None,
            "per_query_file": str(hybrid_path(spec).relative_to(ROOT)), "encoder": meta["encoder"],
            "model": MODEL, "bm25_stemmer": STEMMER,
            **unmatched,  # the queries BM25 matched in no candidate: how many, their P@1 and mean confidence
            **provenance(),
        }  # fmt: skip
        log_line(CALIB_LOG if STEMMER is not None else UNSTEMMED_CALIB_LOG, record)
        print(
            f"{spec:<34} n={len(rows):>5} fused P@1 {y.mean():.4f} mean conf {p.mean():.4f} ECE {ece:.4f} "
            f"{_at_line(record['at_recommended_threshold'])} no BM25 match {unmatched['no_bm25_match']}",
            flush=True,
        )


def add_stemmer(parser: argparse.ArgumentParser) -> None:
    """The hybrid sub-commands' ``--stemmer`` option (the store's BM25 stemmer; ``none``: unstemmed)."""
    parser.add_argument(
        "--stemmer",
        choices=["english", "none"],
        default="english",
        help="BM25 stemmer of the hybrid store (default english, KLHybridStore's default); none: unstemmed, "
        "dumps runs/qpp/calib/hybrid-unstemmed[-MODEL].*.json and the model's "
        f"{_UNSTEMMED_HYBRID_CALIBRATION_FILE}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    model_help = f"bundled model (default {REFERENCE_MODEL})"
    s = sub.add_parser("dump", help="encode, retrieve and write the per-query files")
    s.add_argument("--model", default=REFERENCE_MODEL, help=model_help)
    s.add_argument("--sets", nargs="+", default=[*TRAIN_SETS, *TEST_SETS], metavar="COLLECTION:SPLIT")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="encoder backend (default: torch)")
    s = sub.add_parser("from-log", help="per-query files from the committed benchmarks/qpp.py logs (top-2 scores)")
    s.add_argument("--sets", nargs="+", required=True, metavar="COLLECTION:SPLIT")
    default_out = DEFAULT_OUT
    s = sub.add_parser("hybrid-dump", help="hybrid-store features and fused top-1 labels per query (for fit --hybrid)")
    s.add_argument("--sets", nargs="+", default=[*HYBRID_TRAIN_SETS, *TEST_SETS], metavar="COLLECTION:SPLIT")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument(
        "--backend", choices=["torch", "onnx"], default=None, help="encoder backend (default: the library's)"
    )
    s.add_argument("--model", default=REFERENCE_MODEL, help=model_help)
    add_stemmer(s)
    s = sub.add_parser("fit", help="choose and fit the confidence calibrator on the training sets")
    s.add_argument("--hybrid", action="store_true", help="the hybrid retriever's calibrator (needs hybrid-dump)")
    s.add_argument("--out", type=Path, default=None, help="default: beside the model")
    s.add_argument("--l2", type=float, default=1.0)
    s.add_argument("--model", default=REFERENCE_MODEL, help=model_help)
    add_stemmer(s)
    s = sub.add_parser("report", help="ECE and reliability of a calibrator on every dumped split")
    s.add_argument("--hybrid", action="store_true", help="the hybrid retriever's calibrator")
    s.add_argument("--calibrator", type=Path, default=None, help="default: the shipped one")
    s.add_argument("--model", default=REFERENCE_MODEL, help=model_help)
    add_stemmer(s)
    s = sub.add_parser("combined", help="fit the combined predictor and measure it on the test splits")
    s.add_argument("--calibrator", type=Path, default=default_out)
    s.add_argument("--l2", type=float, default=1.0)
    s.add_argument("--verbose", action="store_true")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "sub-commands:\n" + "\n".join(f"  {c.format_usage().strip()}" for c in sub.choices.values())
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = getattr(args, "model", REFERENCE_MODEL)
    if model != REFERENCE_MODEL and args.cmd in ("from-log", "combined"):
        p.error(f"--model {model}: {args.cmd} works on the default model's logs only")
    stemmer = getattr(args, "stemmer", "english")
    if stemmer != "english" and args.cmd in ("fit", "report") and not args.hybrid:
        p.error(f"--stemmer {stemmer}: only with --hybrid (the dense calibrator reads no BM25)")
    global MODEL, STEMMER
    MODEL = model
    STEMMER = None if stemmer == "none" else stemmer
    commands = {"dump": cmd_dump, "from-log": cmd_from_log, "fit": cmd_fit, "report": cmd_report}
    commands.update({"combined": cmd_combined, "hybrid-dump": cmd_hybrid_dump})
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
