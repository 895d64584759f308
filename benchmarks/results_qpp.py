"""The query performance prediction and calibration section of ``docs/results.md`` (issue 19), from the logs.

``benchmarks/results.py`` calls :func:`qpp_section`; every figure comes from a JSON line of
``runs/qpp/qpp.jsonl`` (written by ``benchmarks/qpp.py``, ``benchmarks/qpp_experiments.py`` and
``benchmarks/calibration.py combined``) or ``runs/qpp/calibration.jsonl`` (``benchmarks/calibration.py
report``). A log that is missing renders as "not run".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from results_qpp_targets import verdicts

QPP_LOG = Path("runs") / "qpp" / "qpp.jsonl"
CALIB_LOG = Path("runs") / "qpp" / "calibration.jsonl"
#: ``benchmarks/calibration.py report --hybrid --stemmer none``: the calibrators of stores with ``stemmer=None``.
UNSTEMMED_CALIB_LOG = Path("runs") / "qpp" / "calibration.unstemmed.jsonl"
DEFAULT = "minilm-gauss-soup"
COMBINED = f"{DEFAULT}+combined"
COLLECTIONS = {
    "scifact": "SciFact",
    "nfcorpus-preprocessed": "NFCorpus",
    "cranfield": "Cranfield",
    "trec-dl21-passage-pooled": "TREC DL21",
}
PREDICTORS = ("uncertainty", "max_score", "nqc", "gap12", "wig", "avg_idf", "scq")
TRAIN_SETS = ("scifact:train", "nfcorpus-preprocessed:train", "squad:train")
HYBRID_TRAIN_SETS = ("scifact:train", "nfcorpus-preprocessed:train", "squad:train-halving")
#: Experiment label (as logged; one ending in ``-`` names a family of variants) -> (what, the statistics it adds).
EXPERIMENTS = {
    f"{DEFAULT}+mc20": ("MC dropout, 20 samples", ("mc_mean_var", "mc_score_std", "mc_top10_overlap")),
    f"{DEFAULT}+ensemble3": ("soup members (3)", ("ens_mean_var", "ens_score_std", "ens_top10_overlap")),
    f"{DEFAULT}+varhead-": ("variance head: ridge to a difficulty target", ("uncertainty",)),
    f"{DEFAULT}+mcdistil-": ("variance head: MC-dropout top-10 stability distilled", ("uncertainty",)),
    COMBINED: ("combined predictor (fitted to nDCG@10 on training sets)", ("combined", "confidence")),
}


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _matches(model: str, label: str) -> bool:
    return model.startswith(label) if label.endswith("-") else model == label


def _newest(records: Sequence[Mapping[str, Any]], model: str, split: str = "test") -> dict[str, dict[str, Any]]:
    """The newest record of ``model`` on each collection."""
    return {r["collection"]: dict(r) for r in records if r["model"] == model and r["split"] == split}


def _tau(rec: Mapping[str, Any] | None, name: str) -> float | None:
    if rec is None:
        return None
    return rec["qpp"]["predictors"].get(name, {}).get("tau")


def _cell(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _mean(values: Sequence[float | None]) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None  # type: ignore[arg-type]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def tau_table(default: Mapping[str, dict], combined: Mapping[str, dict]) -> list[str]:
    """Kendall tau of every predictor on each test split, the combined predictor and the confidence beside them,
    then issue 19's targets, met or missed by the mean taus (:func:`results_qpp_targets.verdicts`)."""
    names = [*PREDICTORS, "combined", "confidence"]
    rows, cols = [], {n: [] for n in names}  # type: ignore[var-annotated]
    for coll, label in COLLECTIONS.items():
        d, c = default.get(coll), combined.get(coll)
        taus = [_tau(d, n) if n in PREDICTORS else _tau(c, n) for n in names]
        for n, t in zip(names, taus, strict=True):
            cols[n].append(t)
        rows.append([label, "n/a" if d is None else f"{d['ndcg@10']:.4f}", *map(_cell, taus)])
    rows.append(["mean", "", *(_cell(_mean(cols[n])) for n in names)])
    parts = next(iter(combined.values()), {}).get("features", [])
    return [*_table(["collection", "nDCG@10", *names], rows), "", *verdicts({n: _mean(cols[n]) for n in names}, parts)]


def _with_ci(p: Mapping[str, Any]) -> str:
    lo, hi = p["tau_ci"] or (None, None)
    return f"{_cell(p['tau'])} [{_cell(lo)}, {_cell(hi)}]"


def combined_vs_parts(combined: Mapping[str, dict]) -> list[str]:
    """The combined predictor's tau with its 95% bootstrap interval beside its best part on each collection."""
    rows = []
    for coll, label in COLLECTIONS.items():
        rec = combined.get(coll)
        if rec is None:
            rows.append([label, "not run", "", ""])
            continue
        pred = rec["qpp"]["predictors"]
        parts = [n for n in rec.get("features", []) if n in pred]
        best = max(parts, key=lambda n: pred[n]["tau"] or -1.0) if parts else "uncertainty"
        rows.append(
            [label, _with_ci(pred["combined"]), f"{best}: {_with_ci(pred[best])}", _with_ci(pred["uncertainty"])]
        )
    return _table(["collection", "combined", "best part", "uncertainty"], rows)


def experiments_table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every experimental variant: its SciFact TRAIN tau and, for those sent to the test splits, the mean test tau."""
    rows = []
    for label, (what, stats) in EXPERIMENTS.items():
        for model in dict.fromkeys(r["model"] for r in records if _matches(r["model"], label)):
            test, dev = _newest(records, model), _newest(records, model, "train").get("scifact")
            full = len(test) == len(COLLECTIONS)
            nd = _mean([test[c]["ndcg@10"] for c in COLLECTIONS]) if full else None
            for stat in stats:
                mean = _mean([_tau(test.get(c), stat) for c in COLLECTIONS]) if full else None
                rows.append([what, f"`{model}`", stat, _cell(_tau(dev, stat)),
                             _cell(mean) if full else "not sent", "" if nd is None else f"{nd:.4f}"])  # fmt: skip
    return _table(["experiment", "label", "statistic", "SciFact TRAIN tau", "mean test tau", "mean nDCG@10"], rows)


def calibration_tables(
    calib: Sequence[Mapping[str, Any]], train_sets: Sequence[str] = TRAIN_SETS, *, reliability: bool = True
) -> list[str]:
    """ECE (10 bins) per split, and (``reliability``) the reliability table of the four test splits."""
    newest = {f"{r['collection']}:{r['split']}": dict(r) for r in calib}
    rows = []
    for key in [f"{c}:test" for c in COLLECTIONS] + list(train_sets):
        r = newest.get(key)
        if r is None:
            rows.append([key, "not run", "", "", "", ""])
            continue
        ece = f"**{r['ece']:.3f}**" if r["role"] == "test" else f"{r['ece']:.3f}"
        rows.append([key, r["role"], str(r["queries"]), f"{r['observed_p@1']:.3f}", f"{r['mean_confidence']:.3f}", ece])
    out = _table(["split", "role", "queries", "observed P@1", "mean confidence", "ECE"], rows)
    tests = [newest[f"{c}:test"] for c in COLLECTIONS if f"{c}:test" in newest]
    if not reliability or len(tests) < len(COLLECTIONS):
        return out
    bins = []
    for b, first in enumerate(tests[0]["reliability"]):
        cells = [f"{x['observed']:.2f} / {x['confidence']:.2f} ({x['n']})" if x["n"] else "" for x in
                 (r["reliability"][b] for r in tests)]  # fmt: skip
        bins.append([f"{first['low']:.1f}-{first['high']:.1f}", *cells])
    head = "Reliability on the test splits, per bin of confidence: `observed P@1 / mean confidence (queries)`."
    return [*out, "", head, "", *_table(["confidence", *COLLECTIONS.values()], bins)]


def qpp_section(root: Path) -> list[str]:
    """The whole section (Markdown lines)."""
    records = _read(root / QPP_LOG)
    # the package default's calibrators only (another model's lines carry its name: ``report --hybrid --model``)
    calib_all = [r for r in _read(root / CALIB_LOG) if r.get("model", DEFAULT) == DEFAULT]
    calib = [r for r in calib_all if r.get("retriever", "dense") == "dense"]
    hybrid = [r for r in calib_all if r.get("retriever") == "hybrid"]
    default, combined = _newest(records, DEFAULT), _newest(records, COMBINED)
    commands = [r["command"] for r in records if r["model"].startswith(DEFAULT + "+")]
    commands = list(dict.fromkeys(commands + _commands_of(root, calib)))
    hybrid_commands = _commands_of(root, hybrid)
    return [
        "## Query performance prediction and calibrated confidence (issue 19)",
        "",
        "Kendall tau-b of each predictor against per-query nDCG@10 of the same run, oriented so that positive "
        "means it predicts well (`uncertainty`, the query's mean log-variance, enters negated). `combined` is a "
        "logistic model on the uncertainty and score statistics fitted to nDCG@10 on training sets only (SciFact "
        "TRAIN, NFCorpus train, SQuAD train articles); `confidence` is the shipped calibrator's probability that the "
        "top-ranked document is relevant. Nothing here was fitted or chosen on a test split.",
        "",
        *tau_table(default, combined),
        "",
        "The combined predictor beside its best part and the uncertainty (tau, 95% bootstrap interval):",
        "",
        *combined_vs_parts(combined),
        "",
        "### Experiments towards an informative variance",
        "",
        "Each family's variant with the best SciFact TRAIN tau went to the test splits (rule in `runs/qpp/README.md`).",
        "",
        *experiments_table(records),
        "",
        "### Calibrated confidence: is the top-ranked document relevant?",
        "",
        "`kl_retrievers.calibration.default_calibrator()` (file `kl_retrievers/pretrained/minilm-gauss-soup/"
        "confidence_calibration.json`), fitted on the three training sets; expected calibration error over 10 "
        "equal-width bins.",
        "",
        "Relevant means any grade > 0, here (observed P@1 and the calibrator's target) as in the Recall@100 "
        "figures above and in `kl-retrievers evaluate`'s MRR@10: TREC DL's grade 1 (\"related\") counts as "
        "relevant, unlike TREC's own convention for binary measures (grade >= 2), so TREC DL21's P@1 here is "
        "higher than a TREC-style P@1.",
        "",
        *calibration_tables(calib),
        "",
        "Commands (from the repository root): the QPP runs in the order they were logged, then the calibration "
        "runs (the per-query dumps in time order, the fit, the report).",
        "",
        "```",
        *commands,
        "```",
        "",
        "### Hybrid confidence (issue 20): is the hybrid retriever's top-ranked document relevant?",
        "",
        "`kl_retrievers.calibration.default_hybrid_calibrator()` (file `kl_retrievers/pretrained/minilm-gauss-soup/"
        "hybrid_confidence_calibration.json`): dense and BM25 signals of a `KLHybridStore` query's candidates, "
        "fitted on the SQuAD training articles with half their questions made unanswerable (for abstention; "
        "[Hybrid retrieval](hybrid.md#abstention)); the target is the adaptive fusion's top-1. Fitted on SQuAD "
        "only, it is poorly calibrated on the other collections.",
        "",
        *calibration_tables(hybrid, HYBRID_TRAIN_SETS),
        *encoding_note(root, hybrid),
        "",
        "```",
        *hybrid_commands,
        "```",
        "",
        *other_models_calibration(root),
        *unstemmed_calibration(root),
    ]


def encoding_note(root: Path, lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """``["", paragraph]`` when the dumps behind ``lines`` are ONNX ones of before 2026-12-06 (no meta ``encoding``)."""
    files = {root / r["per_query_file"] for r in lines}
    metas = [json.loads(f.read_text("utf-8"))["meta"] for f in files if f.exists()]
    n = sum(m.get("encoder") == "OnnxGaussianEncoder" and m.get("time", "") < "2026-12-06" for m in metas)
    return [] if not n else ["", f"Measured on {n} dumps of int8 encodings made before 2026-12-06 by the old rule "
            "(queries in batches, documents longest first; since then one at a time and in input order): today's "
            "dumps give slightly different figures ([Hybrid retrieval](hybrid.md#calibration-on-the-dev-collections))"
            "; `calibration.py fit` and `report` warn about such dumps."]  # fmt: skip


def _commands_of(root: Path, lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """The runs behind some report lines: the per-query dumps (in time order), the fit, the reports."""
    dumps, fits = [], []
    for pq in dict.fromkeys(root / r["per_query_file"] for r in lines):  # each file read once
        if pq.exists():
            meta = json.loads(pq.read_text(encoding="utf-8"))["meta"]
            dumps.append((meta["time"], meta["command"]))
    for cal in dict.fromkeys(root / r["calibrator"] for r in lines):
        if cal.exists():
            info = json.loads(cal.read_text(encoding="utf-8"))["info"]
            fits.append(info["command"])
            if "command" in info.get("recommended_min_confidence", {}):
                fits.append(info["recommended_min_confidence"]["command"])
    return list(dict.fromkeys([c for _, c in sorted(dumps)] + fits + [r["command"] for r in lines]))


def other_models_calibration(root: Path) -> list[str]:
    """The calibrators other bundled models ship (report lines carrying another ``model``), dense then hybrid."""
    lines = [r for r in _read(root / CALIB_LOG) if r.get("model", DEFAULT) != DEFAULT]
    if not lines:
        return []
    out = [
        "### Other bundled models' calibrators",
        "",
        "Fitted the same way on each model's own training dumps (`--model NAME` on every sub-command of "
        "`benchmarks/calibration.py`); their recommended thresholds are recorded in the files.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in lines):
        for retriever, train_sets in (("dense", TRAIN_SETS), ("hybrid", HYBRID_TRAIN_SETS)):
            mine = [r for r in lines if r["model"] == model and r.get("retriever", "dense") == retriever]
            if not mine:
                continue
            title = f"**`{model}`**, {retriever} calibrator (`{mine[-1]['calibrator']}`):"
            out += _calibrator_block(root, title, calibration_tables(mine, train_sets), mine)
    return out


def _calibrator_block(root: Path, title: str, tables: Sequence[str], lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """One calibrator on the page: its title, its tables and the commands behind its report ``lines``."""
    return [title, "", *tables, "", "```", *_commands_of(root, lines), "```", ""]


def unstemmed_calibration(root: Path) -> list[str]:
    """The hybrid calibrators of unstemmed stores (``--stemmer none``), one ECE table per model."""
    lines = _read(root / UNSTEMMED_CALIB_LOG)
    if not lines:
        return []
    out = [
        "### Hybrid calibrators for unstemmed stores",
        "",
        "A `KLHybridStore(..., stemmer=None)` (every store saved before the stemmer option) takes its model's "
        "`hybrid_confidence_calibration.unstemmed.json`, fitted the same way on the unstemmed hybrid's own dumps "
        "(`--stemmer none` on every sub-command; [Hybrid retrieval](hybrid.md#bm25-tokens-stop-words-and-stemming)).",
        "",
    ]
    for model in dict.fromkeys(r.get("model", DEFAULT) for r in lines):
        mine = [r for r in lines if r.get("model", DEFAULT) == model]
        ece = [*calibration_tables(mine, HYBRID_TRAIN_SETS, reliability=False), *encoding_note(root, mine)]
        out += _calibrator_block(root, f"**`{model}`** (`{mine[-1]['calibrator']}`):", ece, mine)
    return out
