"""The bge table of ``docs/backbones.md`` (``bge-small-unit-variance`` against the int8 baseline), from the logs.

``benchmarks/results.py`` writes the part of that page between ``results_readme.begin(PART)`` and
``results_readme.end(PART)`` (the rest of the page is hand-written); ``--check`` exits 1 when it differs from what
the logs render. Each row pairs the newest ``runs/eval/eval.jsonl`` test line of the bundled model
(``results_more.bundled_records``) with the newest line of the ``bge-small`` baseline (``results.load_records``, the
one ``docs/results.md`` shows), and recomputes the difference and the paired t-test from the per-query files those
two lines name. The same paired cell fills ``docs/results.md``'s table of the default against each baseline.

Typed here, with no log behind them: the column labels and the significance level of the sentence below the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from results_more import bundled_records
from results_qpp import _table
from results_readme import splice

from kl_retrievers.evaluation import PairedTestResult, load_per_query, paired_test

PAGE = Path("docs") / "backbones.md"
EVAL_LOG = Path("runs") / "eval" / "eval.jsonl"
PART = "backbones-bge"
MODEL = "bge-small-unit-variance"
BASELINE = "bge-small"
#: Row order and labels.
COLLECTIONS = {
    "scifact": "SciFact",
    "nfcorpus-preprocessed": "NFCorpus (preprocessed)",
    "cranfield": "Cranfield",
    "trec-dl21-passage-pooled": "TREC DL21 (pooled)",
}
#: Two-sided, per collection, not corrected for multiple comparisons.
ALPHA = 0.05


def paired_ndcg(a: Mapping[str, Any], b: Mapping[str, Any], root: Path) -> PairedTestResult:
    """Line ``a`` against line ``b``: the paired t-test of nDCG@10 over the queries both per-query files score."""
    first, second = (load_per_query(root / rec["per_query_file"])[0] for rec in (a, b))
    return paired_test(first, second, "ndcg@10")


def paired_cell(res: PairedTestResult) -> str:
    """The difference (A minus B), its p-value and the number of queries paired, as both pages print them."""
    return f"{res.mean_diff:+.4f} (p = {res.p_value:.2g}, n = {res.n})"


def _cell(rec: Mapping[str, Any] | None) -> str:
    return "not run" if rec is None else f"{rec['ndcg@10']:.4f} ({rec['recall@100']:.4f})"


def _dates(recs: Sequence[Mapping[str, Any]]) -> str:
    """The days the lines were logged (their UTC ``started``), e.g. ``2026-12-04`` or ``2026-12-02 to 2026-12-04``."""
    days = sorted({str(r.get("started") or "an unknown day")[:10] for r in recs})
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def bge_region(
    root: Path, eval_log: Path, records: Mapping[tuple[str, str], Mapping[str, Any]], collections: Mapping[str, str]
) -> list[str]:
    """The table, a sentence on significance and one naming the lines (Markdown lines).

    ``records``: ``results.load_records(root)``, (system, collection) -> the newest test record;
    ``collections``: name -> row label, in row order.
    """
    model = bundled_records(root, eval_log, collections)[0].get(MODEL, {})
    rows, pairs = [], []
    for coll, label in collections.items():
        a, b = model.get(coll), records.get((BASELINE, coll))
        if a is None or b is None:
            rows.append([label, _cell(a), _cell(b), "not run"])
            continue
        pairs.append((label, a, b, paired_ndcg(a, b, root)))
        rows.append([label, _cell(a), _cell(b), paired_cell(pairs[-1][3])])
    if len(pairs) == len(collections):  # the means of the logged figures
        ma = float(np.mean([a["ndcg@10"] for _, a, _, _ in pairs]))
        mb = float(np.mean([b["ndcg@10"] for _, _, b, _ in pairs]))
        rows.append([f"mean of the {len(pairs)}", f"{ma:.4f}", f"{mb:.4f}", f"{ma - mb:+.4f}"])
    head = ["data", f"`{MODEL}` (-KL)", "bge-small-en-v1.5 (int8)", "difference (paired t-test)"]
    significant = [f"{label} ({res.mean_diff:+.4f})" for label, _, _, res in pairs if res.p_value < ALPHA]
    if significant:
        verdict = f"Significant at p < {ALPHA} (two-sided, not corrected for multiple comparisons): "
        verdict += ", ".join(significant) + "."
    else:
        verdict = (
            f"No difference is significant (two-sided p >= {ALPHA} on each, not corrected for multiple comparisons): "
            "the float32 rebuild ranks like the int8 model it comes from."
        )
    logged = [r for _, a, b, _ in pairs for r in (a, b)]
    return [
        *_table(head, rows),
        "",
        verdict,
        "",
        f"Each row pairs the newest `{eval_log.as_posix()}` test line of `{MODEL}` (logged "
        f"{_dates(logged[::2])}) with the newest of the int8 baseline (logged {_dates(logged[1::2])}, as on "
        "[Results](results.md)); the differences and p-values are recomputed from the per-query files those lines "
        "name.",
    ]


def render_backbones(path: Path, records: Mapping[tuple[str, str], Mapping[str, Any]], root: Path) -> str:
    """``docs/backbones.md`` at ``path`` with its :data:`PART` rendered from the logs under ``root``.

    ``records``: ``results.load_records(root)``.
    """
    region = bge_region(root, EVAL_LOG, records, COLLECTIONS)
    return splice(path.read_text(encoding="utf-8"), PART, region, path)
