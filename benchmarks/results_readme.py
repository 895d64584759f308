"""The README's results table and ``docs/hybrid.md``'s benchmark tables, from the logs.

``benchmarks/results.py`` writes each part of those pages between a :func:`begin` and an :func:`end` marker
(the rest of each page is hand-written); ``--check`` exits 1 when a part differs from what the logs render.

* README, ``results``: the baselines and the default from ``results.load_records`` (``runs/eval/eval.jsonl``,
  ``runs/qpp/qpp.jsonl``), the two hybrid rows from ``runs/eval/hybrid.jsonl`` (:data:`HYBRIDS`).
* README prose, :func:`readme_phrases`: the default's int8 ONNX figures (:func:`int8_records`) against its torch
  row, its abstention figures (``runs/abstention/abstention.jsonl``: the newest full stemmed hybrid line of seed 0
  at its shipped threshold, :func:`_abstention`) and its convex-against-adaptive means must be quoted as logged.
* ``results.py --check``, :func:`stale_per_query`: each rendered eval or qpp line's per-query file holds its
  queries and reproduces its figures (hybrid, abstention and calibration lines have none: not recomputed).
* ``docs/results.md``'s section on the README's table, :func:`readme_notes`: the figures the README leaves out.
* ``docs/hybrid.md``, one part per entry of :data:`HYBRID_TABLES`: the newest ``benchmarks/hybrid.py`` test
  run of that (model, adaptive parameters, BM25 stemmer) on all four collections (:func:`newest_hybrids`).

Typed here, with no log behind them: the row labels and the backend each row was measured on (read from
the code that logged it: ``kl_retrievers/baselines.py``, ``benchmarks/qpp.py`` and ``benchmarks/hybrid.py``
load their dense models on torch, float32).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from results_more import HYBRID_LOG, SPLIT, _seed, bundled_records, contradicted_claims, onnx_int8_records
from results_qpp import CALIB_LOG, _read, _table

from kl_retrievers.calibration import recommended_min_confidence
from kl_retrievers.evaluation import DEFAULT_METRICS, load_per_query

#: The repository, whose parameters files the runs are matched against (by sha256).
REPO = Path(__file__).resolve().parents[1]
README = Path("README.md")
ABSTENTION_LOG = Path("runs") / "abstention" / "abstention.jsonl"
EVAL_LOG = Path("runs") / "eval" / "eval.jsonl"
HYBRID_PAGE = Path("docs") / "hybrid.md"
_DEFAULT_PARAMS = "kl_retrievers/data/hybrid_adaptive.json"
_BGE = "bge-small-unit-variance"
_BGE_PARAMS = f"kl_retrievers/pretrained/{_BGE}/hybrid_adaptive.json"
_BGE_UNSTEMMED = f"kl_retrievers/pretrained/{_BGE}/hybrid_adaptive.unstemmed.json"
#: The quoted abstention runs' setting (``benchmarks/abstention.py --hybrid --seeds 10``, default ``--min-answered``)
#: and each model's backend and encoder as logged: the library's default (int8 ONNX) but torch for bge.
ABSTENTION_SETTING = {"bm25_stemmer": "english", "quick": False, "min_answered": 0.9}
_ABSTENTION_BACKENDS = {_BGE: ("torch", "GaussianEncoder")}
#: README column order and labels.
README_COLLECTIONS = {
    "scifact": "SciFact",
    "trec-dl21-passage-pooled": "TREC DL21 (pooled)",
    "cranfield": "Cranfield",
    "nfcorpus-preprocessed": "NFCorpus",
}
#: docs/hybrid.md row order and labels.
HYBRID_COLLECTIONS = {
    "scifact": "SciFact",
    "nfcorpus-preprocessed": "NFCorpus (preprocessed)",
    "cranfield": "Cranfield",
    "trec-dl21-passage-pooled": "TREC DL21 (pooled)",
}
#: README rows from ``results.load_records``: system -> (label, measured on).
SYSTEM_ROWS = {
    "bm25": ("BM25 (bm25s)", "bm25s (no model)"),
    "minilm": ("all-MiniLM-L6-v2 cosine", "torch float32"),
    "bge-small": ("bge-small-en-v1.5 int8", "ONNX int8"),
    "default": ("default `{model}` (-KL)", "torch float32"),
}
#: README hybrid rows: (model, adaptive parameters file, stemmer) -> (label, measured on).
HYBRIDS = {
    ("minilm-gauss-soup", _DEFAULT_PARAMS, "english"): (
        "hybrid BM25 + default, adaptive (`KLHybridStore`)",
        "torch float32",
    ),
    (_BGE, _BGE_PARAMS, "english"): (f"hybrid BM25 + `{_BGE}` (`[hybrid,bge]` extras)", "torch float32"),
}
#: docs/hybrid.md parts: name -> ((model, parameters file, stemmer), dense column label, with the RRF p and queries).
HYBRID_TABLES = {
    "default": (("minilm-gauss-soup", _DEFAULT_PARAMS, "english"), "dense (-KL)", True),
    "bge": ((_BGE, _BGE_PARAMS, "english"), "bge (-KL)", False),
    "bge-unstemmed": ((_BGE, _BGE_UNSTEMMED, None), "bge (-KL)", False),
}
_SYSTEMS = ("bm25", "dense", "rrf", "convex", "adaptive")


def begin(name: str) -> str:
    return f"<!-- Written by `python benchmarks/results.py` from the logs under runs/ ({name}); do not edit. -->"


def end(name: str) -> str:
    return f"<!-- End of the part ({name}) written by benchmarks/results.py. -->"


def splice(text: str, name: str, region: Sequence[str], path: Path) -> str:
    """``text`` with its part between ``begin(name)`` and ``end(name)`` replaced by ``region``.

    Examples:
        >>> splice(f"a\\n{begin('x')}\\nold\\n{end('x')}\\nb", "x", ["new"], Path("p")).split("\\n")[2:5]
        ['', 'new', '']
    """
    b, e = begin(name), end(name)
    if text.count(b) != 1 or text.count(e) != 1 or text.index(b) > text.index(e):
        raise SystemExit(f"{path}: needs one line {b} and, below it, one line {e}, around its rendered part")
    head, rest = text.split(b)
    return head + b + "\n\n" + "\n".join(region) + "\n\n" + e + rest.split(e)[1]


def newest_hybrids(root: Path) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    """The newest ``benchmarks/hybrid.py`` test run of each (model, adaptive parameters file, BM25 stemmer) shown.

    A run counts for a key (of :data:`HYBRIDS` and :data:`HYBRID_TABLES`) when it used that model and stemmer,
    parameters of the sha256 of that file in the repository now (whatever path it named: a file renamed since
    is still matched), on every collection of the tables (not a ``--collections`` subset).

    Raises:
        SystemExit: No run matches a key's file but some run named its path with other parameters (the file
            changed since, or the run tested others written there): rerun the benchmark with the file.
    """
    keys = {*HYBRIDS, *(key for key, _, _ in HYBRID_TABLES.values())}
    want = {key: hashlib.sha256((REPO / key[1]).read_bytes()).hexdigest() for key in keys}
    newest: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    other: dict[tuple[str, str, str | None], str] = {}  # the newest other sha256 logged under a key's path
    for rec in _read(root / HYBRID_LOG):
        if rec.get("benchmark") != "hybrid" or rec.get("split", SPLIT) != SPLIT:
            continue
        if not set(HYBRID_COLLECTIONS) <= set(rec.get("collections", {})):
            continue  # a partial run: its mean is not that of the tables' collections
        params = rec.get("adaptive_params") or {}
        for key, sha in want.items():
            if (rec.get("model"), rec.get("stemmer")) != (key[0], key[2]):
                continue
            if params.get("sha256") == sha:
                newest[key] = rec
            elif params.get("file") == key[1]:
                other[key] = str(params.get("sha256"))
    for key in want.keys() - newest.keys() & other.keys():
        raise SystemExit(
            f"{HYBRID_LOG}: no run of {key} with {key[1]} as it is now (sha256 {want[key]}); the newest run naming "
            f"that path used parameters of sha256 {other[key]}: rerun benchmarks/hybrid.py with the file"
        )
    return newest


def _bold(cells: list[str], values: Sequence[float | None]) -> list[str]:
    """``cells`` with those whose value is the largest in bold."""
    best = max((v for v in values if v is not None), default=None)
    return [f"**{c}**" if v is not None and v == best else c for c, v in zip(cells, values, strict=True)]


def readme_table(
    records: Mapping[tuple[str, str], Mapping[str, Any]], root: Path, default_model: str
) -> tuple[list[str], list[float | None]]:
    """nDCG@10 per collection and the mean of each README row, the best of each column in bold; the row means."""
    rows: list[tuple[str, str, list[float | None]]] = []
    for system, (label, backend) in SYSTEM_ROWS.items():
        vals = [records[(system, c)]["ndcg@10"] if (system, c) in records else None for c in README_COLLECTIONS]
        got = [v for v in vals if v is not None]
        mean = float(np.mean(got)) if len(got) == len(vals) else None
        rows.append((label.format(model=default_model), backend, [*vals, mean]))
    hybrids = newest_hybrids(root)
    for key, (label, backend) in HYBRIDS.items():
        rec = hybrids.get(key)
        vals = [None] * (len(README_COLLECTIONS) + 1)
        if rec is not None:
            got = [rec["collections"].get(c, {}).get("adaptive", {}).get("ndcg@10") for c in README_COLLECTIONS]
            vals = [*got, rec["mean_ndcg@10"]["adaptive"]]
        rows.append((label, backend, vals))
    columns = list(zip(*(vals for _, _, vals in rows), strict=True))
    cells = [[("not run" if v is None else f"{v:.4f}") for v in vals] for _, _, vals in rows]
    for j, col in enumerate(columns):
        bolded = _bold([row[j] for row in cells], col)
        for row, cell in zip(cells, bolded, strict=True):
            row[j] = cell
    body = [[label, *row, backend] for (label, backend, _), row in zip(rows, cells, strict=True)]
    return _table(["system", *README_COLLECTIONS.values(), "mean", "measured on"], body), [v[-1] for _, _, v in rows]


def _p(value: float) -> str:
    """Two significant digits, trailing zeros kept; ``1.0e-05`` below 1e-4, as ``docs/hybrid.md`` prints them."""
    return f"{value:#.2g}"


def hybrid_table(rec: Mapping[str, Any], dense: str, full: bool) -> list[str]:
    """One ``benchmarks/hybrid.py`` run: every system's nDCG@10, the adaptive fusion's gain and p-values."""
    fixed = rec["fixed_convex_scifact_train"]
    rows: list[list[str]] = []
    for coll, label in HYBRID_COLLECTIONS.items():
        c = rec["collections"].get(coll)
        if c is None:
            continue
        vals = [c[s]["ndcg@10"] for s in _SYSTEMS]
        cells = _bold([f"{v:.4f}" for v in vals], vals)
        if full:
            gain = f"{c['adaptive_minus_better']:+.4f} ({'BM25' if c['better_single'] == 'bm25' else 'dense'})"
            pvals = [_p(c[k]) for k in ("p_adaptive_vs_better", "p_adaptive_vs_rrf", "p_adaptive_vs_convex")]
            head = [label, str(c["queries"])]
        else:
            gain = f"{c['adaptive']['ndcg@10'] - c['dense']['ndcg@10']:+.4f}"
            p_dense = c["p_adaptive_vs_better"] if c["better_single"] == "dense" else c.get("p_adaptive_vs_dense")
            pvals = [_p(p_dense) if p_dense is not None else "not logged", _p(c["p_adaptive_vs_convex"])]
            head = [label]
        rows.append([*head, *cells, gain, *pvals, f"{c['adaptive_dense_weight']['mean']:.2f}"])
    means = [rec["mean_ndcg@10"][s] for s in _SYSTEMS]
    gain = f"{rec['summary']['hybrid_gain']:+.4f}"
    rows.append(["mean of the 4", *([""] if full else []), *_bold([f"{v:.4f}" for v in means], means), gain])
    rows[-1] += [""] * (4 if full else 3)
    convex = f"convex {fixed['weight']:.2f}"
    if full:
        head = ["collection", "queries", "BM25", dense, "RRF", convex, "adaptive", "adaptive - better single"]
        head += ["p (better)", "p (RRF)", "p (convex)", "w"]
    else:
        head = ["collection", "BM25", dense, "RRF", convex, "adaptive", "adaptive - bge", "p (bge)", "p (convex)", "w"]
    return _table(head, rows)


def _abstention(root: Path, model: str) -> dict[str, Any]:
    """The newest ``benchmarks/abstention.py --hybrid`` line of ``model`` in the shipped setting.

    That is: :data:`ABSTENTION_SETTING` (stemmed BM25, not ``--quick``, ``--min-answered 0.9``), seed 0 and 10 more,
    the model's backend (:data:`_ABSTENTION_BACKENDS`) and the hybrid threshold recommended for the model now
    (``recommended_min_confidence``: the library's constant for the default, else the calibrator's recorded one).
    A newer line at another threshold is not quoted: the pages say "the newest run at the shipped threshold".

    Raises:
        SystemExit: No such line; it lacks hybrid or dense results; its held-out curve does not end abstaining on all.
    """
    threshold = recommended_min_confidence(model, retriever="hybrid", stemmer="english")
    backend = _ABSTENTION_BACKENDS.get(model, (None, "OnnxGaussianEncoder"))
    setting = f"{ABSTENTION_SETTING}, seed 0, --seeds 10, backend and encoder {backend}, threshold {threshold}"
    found = [
        r
        for r in _read(root / ABSTENTION_LOG)
        if (r.get("model"), r.get("backend"), r.get("encoder"), _seed(r.get("command", ""))) == (model, *backend, 0)
        and all(r.get(key) == value for key, value in ABSTENTION_SETTING.items())
        and (hybrid := r.get("summary", {}).get("hybrid") or {}).get("threshold") == threshold
        and (hybrid.get("held_out_other_seeds") or {}).get("seeds") == 10
    ]
    if not found:
        raise SystemExit(f"{ABSTENTION_LOG}: no {model} line as the pages quote ({setting})")
    rec = found[-1]
    if missing := sorted({"hybrid", "dense"} - (rec["summary"].keys() & rec.get("held_out", {}).keys())):
        raise SystemExit(
            f"{ABSTENTION_LOG}: the newest {model} line ({setting}; started {rec.get('started')}) has no "
            f"{' and no '.join(missing)} results, which the pages quote: rerun `{rec.get('command')}`"
        )
    if rec["held_out"]["hybrid"]["curve"][-1]["answered"] != 0:
        raise SystemExit(f"{ABSTENTION_LOG}: the held-out hybrid curve of {model} does not end abstaining on all")
    return rec


def int8_records(root: Path, model: str) -> dict[str, dict[str, Any]]:
    """The newest ``runs/eval/eval.jsonl`` test line of ``model`` per README collection recorded as ``onnx-int8``.

    Raises:
        SystemExit: A collection has none (a newer torch or float32 ONNX run of it is not the README's int8 figure).
    """
    found = onnx_int8_records(root, EVAL_LOG, model)
    if missing := [c for c in README_COLLECTIONS if c not in found]:
        raise SystemExit(f"{EVAL_LOG}: no onnx-int8 {SPLIT} line of {model} on {', '.join(missing)}")
    return {c: found[c] for c in README_COLLECTIONS}


def stale_per_query(root: Path, records: Mapping[Any, Mapping[str, Any]], model: str) -> list[str]:
    """The rendered eval and qpp lines (``records``: ``results.load_records``'s; the bundled models' and
    :func:`int8_records`') whose per-query file is unreadable, has no queries or another number than the line's
    ``queries``, or means that differ from the line's figures by over 1e-4, named (the hybrid, abstention and
    calibration lines have no such file: their figures are not recomputed)."""
    found, twin = bundled_records(root, EVAL_LOG, README_COLLECTIONS)
    out, groups = [], [*found.values(), twin, int8_records(root, model), records]  # records last: they name their log
    lines = {(r.get("per_query_file"), r.get("started") or r.get("time")): r for g in groups for r in g.values()}
    for (file, when), rec in lines.items():
        line = f"{rec.get('log', EVAL_LOG)}: the line of {rec.get('system', rec['model'])} on {rec['collection']}"
        line += f" logged {when}, per-query file {file}:"
        try:
            pq = load_per_query(root / rec["per_query_file"])[0]
            if not pq or len(pq) != rec["queries"]:
                raise ValueError(f"{len(pq)} queries in the file, {rec['queries']} logged")
            means = {m: float(np.mean([q[m] for q in pq.values()])) for m in DEFAULT_METRICS if m in rec}
        except (KeyError, ValueError) as exc:
            out.append(f"{line} {exc!r}")
            continue
        out += [f"{line} {m} {rec[m]} logged, {v:.6f} in the file" for m, v in means.items() if abs(v - rec[m]) > 1e-4]
    return out


def readme_phrases(root: Path, model: str, records: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    """Phrases of the README's prose whose figures come from the logs (whitespace normalised)."""
    rec = _abstention(root, model)
    at = rec["summary"]["hybrid"]["held_out_at_threshold"]
    everything = rec["held_out"]["hybrid"]["curve"][-1]  # the highest threshold: every question abstained
    means = newest_hybrids(root)[("minilm-gauss-soup", _DEFAULT_PARAMS, "english")]["mean_ndcg@10"]
    torch = [records[("default", c)]["ndcg@10"] for c in README_COLLECTIONS]
    int8 = [r["ndcg@10"] for r in int8_records(root, model).values()]
    gap = max(abs(a - b) for a, b in zip(int8, torch, strict=True))
    return [
        f"within {gap:.4f} of the torch row on each collection (mean {np.mean(int8):.4f} against {np.mean(torch):.4f})",
        f"with F1 {at['f1']:.3f} while answering {at['answered']:.0%} of the answerable ones",
        f"abstaining on every question already gets F1 {everything['f1']:.3f} here",
        f"fixed convex weight (mean {means['convex']:.4f}) beats the default's adaptive fusion "
        f"({means['adaptive']:.4f})",
    ]


def _refused(root: Path, model: str) -> str:
    """The range of the shares of the README's collections' test queries that the model's hybrid threshold refuses."""
    threshold = recommended_min_confidence(model, retriever="hybrid", stemmer="english")
    answered = {
        r["collection"]: r["at_recommended_threshold"]["answered"]
        for r in _read(root / CALIB_LOG)
        if (r.get("model"), r.get("retriever"), r.get("split"), r.get("bm25_stemmer"))
        == (model, "hybrid", SPLIT, "english")
        and (r.get("at_recommended_threshold") or {}).get("threshold") == threshold
    }
    refused = [1 - answered[c] for c in README_COLLECTIONS]
    return f"{min(refused):.0%} to {max(refused):.0%}"


def readme_notes(root: Path, model: str) -> list[str]:
    """``docs/results.md``'s section on the README's table: its sources and the figures its prose leaves out."""
    out = ["## About the README's table", ""]
    missing = [f"`{log.as_posix()}`" for log in (ABSTENTION_LOG, HYBRID_LOG, CALIB_LOG) if not (root / log).exists()]
    if missing:
        return [*out, f"Not rendered: no {', '.join(missing)}.", ""]
    bge = newest_hybrids(root)[(_BGE, _BGE_PARAMS, "english")]
    first = next(  # bge's first stemmed fit, which adapted the weight per query
        r
        for r in _read(root / HYBRID_LOG)
        if r.get("benchmark") == "hybrid"
        and (r.get("model"), r.get("stemmer")) == (_BGE, "english")
        and r["adaptive_params"]["sha256"] != bge["adaptive_params"]["sha256"]
    )
    weights = sorted({f"{c['adaptive_dense_weight']['quartiles'][1]:.2f}" for c in bge["collections"].values()})
    recs = {m: _abstention(root, m) for m in (model, _BGE)}
    rows = []
    for m, rec in recs.items():
        hyb, dense = rec["summary"]["hybrid"], rec["summary"]["dense"]
        at, d_at = hyb["held_out_at_threshold"], dense["held_out_at_threshold"]
        rows.append([f"`{m}`", f"{hyb['threshold']:.2f}", f"{at['f1']:.3f}", f"{at['answered']:.1%}"])
        rows[-1] += [f"{hyb['held_out_other_seeds']['f1_mean']:.3f}", f"{dense['threshold']:.2f}"]
        rows[-1] += [f"{d_at['f1']:.3f}", f"{d_at['answered']:.1%}", _refused(root, m)]
    commands = " and ".join(f"`{r['command']}`" for r in recs.values())
    head = ["model", "threshold", "F1", "answered", f"F1, seeds 1-{hyb['held_out_other_seeds']['seeds']}"]
    head += ["dense threshold", "dense F1", "dense answered", "refused on the four collections"]
    return [
        *out,
        "**Rows** of the README's table (rendered from these logs, like this page): the first four are the zero-shot "
        "table's (`runs/eval/eval.jsonl`; the default from `runs/qpp/qpp.jsonl`, measured on torch float32 by "
        "`benchmarks/qpp.py`, while as shipped, int8 ONNX, it is the bundled models' table's row), the two hybrids "
        "the `adaptive` columns of the hybrid section (torch float32, `benchmarks/hybrid.py`), whose fusion was "
        "fitted on the training splits of SciFact and NFCorpus and a SQuAD training sample. all-MiniLM-L6-v2 and "
        "bge-small are their authors' pretrained models; the default was distilled on SQuAD. No model was trained "
        "on these test queries and judgements, but the pretrained all-MiniLM-L6-v2 and bge-small (and the "
        "default's MiniLM backbone) saw MS MARCO, which TREC DL21's passages come from.",
        "",
        "**bge's fusion**: its shipped weight, chosen on training data, is in effect one constant weight (the "
        f"median per-query dense weight is {' to '.join(dict.fromkeys([weights[0], weights[-1]]))} on each "
        "collection, z-scored scores). A per-query weight did worse in cross-validation and on these splits: its "
        f"first stemmed fit (commit {str(first.get('commit'))[:10]}) scored a mean of "
        f"{first['mean_ndcg@10']['adaptive']:.4f}, the shipped weight {bge['mean_ndcg@10']['adaptive']:.4f}.",
        "",
        '**Saying "nothing found"** (`runs/abstention/abstention.jsonl`, '
        f"{commands}; [details](hybrid.md#abstention)): SQuAD "
        "questions of held-out articles (scored by earlier experiments too, so not a clean held-out set), half "
        "made unanswerable by removing their passages. The F1 of abstaining on those and the share of the answerable "
        "ones answered, at each model's recommended thresholds (held-out draw seed 0, and the mean over more seeds); "
        "last, the share of the test queries of the four collections, all answerable, that the hybrid threshold "
        f"refuses (`{CALIB_LOG.as_posix()}`). Abstaining on every question already gets F1 "
        f"{recs[model]['held_out']['hybrid']['curve'][-1]['f1']:.3f} (answering none), so an F1 counts only "
        "together with the share answered; and the thresholds suit a setting like this one: choose yours on your "
        "own data.",
        "",
        *_table(head, rows),
        "",
    ]


def render_readme(path: Path, records: Mapping[tuple[str, str], Mapping[str, Any]], root: Path, model: str) -> str:
    """The README at ``path`` with its ``results`` part rendered from the logs under ``root``.

    Raises:
        SystemExit: A figure of its prose (:func:`readme_phrases`) is not quoted as logged, or the table's rows
            contradict a claim of it (``results_more.contradicted_claims``): edit the prose.
    """
    table, means = readme_table(records, root, model)
    text = splice(path.read_text(encoding="utf-8"), "results", table, path)
    flat = " ".join(text.split())
    missing = [phrase for phrase in readme_phrases(root, model, records) if " ".join(phrase.split()) not in flat]
    if missing:
        raise SystemExit(f"{path}: its prose does not quote the logs as: {'; '.join(map(repr, missing))}")
    row = {
        s: [records[(s, c)]["ndcg@10"] if (s, c) in records else None for c in README_COLLECTIONS] for s in SYSTEM_ROWS
    }
    if wrong := contradicted_claims(flat, row["default"], row["bge-small"], means, len(HYBRIDS)):
        raise SystemExit(f"{path}: the logged rows contradict its prose: {'; '.join(map(repr, wrong))}")
    return text


def render_hybrid_page(path: Path, root: Path) -> str:
    """``docs/hybrid.md`` at ``path`` with each of its :data:`HYBRID_TABLES` parts rendered from ``root``'s logs."""
    text = path.read_text(encoding="utf-8")
    hybrids = newest_hybrids(root)
    for name, (key, dense, full) in HYBRID_TABLES.items():
        rec = hybrids.get(key)
        region = hybrid_table(rec, dense, full) if rec is not None else [f"Not run: no `{HYBRID_LOG}` line of {key}."]
        text = splice(text, f"hybrid-{name}", region, path)
    return text
