"""Two sections of ``docs/results.md``: every bundled model, and the hybrid store (BM25 + -KL).

Both read committed logs only (``benchmarks/results.py`` calls them; ``--check`` covers them):

* ``runs/eval/eval.jsonl`` lines whose ``system`` is a bundled model's name, written by
  ``python benchmarks/results.py --run-models NAME... [--backend onnx|torch]``;
* ``runs/eval/hybrid.jsonl`` lines with ``"benchmark": "hybrid"``, written by ``python benchmarks/hybrid.py
  --quick [--model NAME] [--params FILE]``: the newest line of each (model, adaptive parameters file).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLLECTIONS = {
    "scifact": "SciFact",
    "trec-dl21-passage-pooled": "TREC DL21 (pooled)",
    "cranfield": "Cranfield",
    "nfcorpus-preprocessed": "NFCorpus (preprocessed)",
}
EVAL_LOG = Path("runs") / "eval" / "eval.jsonl"
HYBRID_LOG = Path("runs") / "eval" / "hybrid.jsonl"
SPLIT = "test"


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _backend(command: str) -> str:
    tokens = shlex.split(command)
    if "--model-backend" in tokens:
        return tokens[tokens.index("--model-backend") + 1]
    return "torch" if tokens[:2] == ["python", "benchmarks/qpp.py"] else "library default"  # qpp.py: torch


def bundled_models_section(root: Path, default: Mapping[str, Mapping[str, Any]], default_name: str) -> list[str]:
    """nDCG@10 of every bundled model with logged test runs; ``default``: collection -> the default's record."""
    from kl_retrievers.pretrained import bundled_models

    names = set(bundled_models())
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in _lines(root / EVAL_LOG):
        if rec.get("system") in names and rec.get("split") == SPLIT and rec.get("collection") in COLLECTIONS:
            found.setdefault(rec["system"], {})[rec["collection"]] = rec
    found[default_name] = dict(default)
    rows, commands = [], []
    for name in sorted(found, key=lambda n: (n != default_name, n)):
        recs = found[name]
        cells = [f"{recs[c]['ndcg@10']:.4f}" if c in recs else "not run" for c in COLLECTIONS]
        complete = all(c in recs for c in COLLECTIONS)
        mean = f"{sum(recs[c]['ndcg@10'] for c in COLLECTIONS) / len(COLLECTIONS):.4f}" if complete else "incomplete"
        backends = sorted({_backend(r["command"]) if "command" in r else "torch" for r in recs.values()})
        label = f"`{name}`" + (" (default)" if name == default_name else "")
        rows.append([label, *cells, mean, ", ".join(backends)])
        commands += [r["command"] for r in recs.values() if "command" in r and name != default_name]
    return [
        "## Every bundled model (test splits)",
        "",
        "nDCG@10 of each model in `kl_retrievers/pretrained/` (the default's row is the one above). `backend`: "
        "the `--model-backend` of the logged command (ONNX int8 graphs differ from torch float32 by up to about "
        "0.008 here). Which to choose: [Choosing a model](choosing-a-model.md).",
        "",
        *_table(["model", *COLLECTIONS.values(), "mean", "backend"], rows),
        "",
        "```",
        *commands,
        "```",
        "",
    ]


def hybrid_section(root: Path) -> list[str]:
    """The newest ``benchmarks/hybrid.py`` test run of each (model, adaptive parameters), every system."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in _lines(root / HYBRID_LOG):
        if rec.get("benchmark") == "hybrid" and rec.get("split", SPLIT) == SPLIT:
            newest[(rec["model"], rec["adaptive_params"]["file"])] = rec
    out = [
        "## Hybrid retrieval: BM25 + -KL (test splits)",
        "",
        "From `runs/eval/hybrid.jsonl` (`python benchmarks/hybrid.py --quick`; details and caveats on "
        "[Hybrid retrieval](hybrid.md#benchmark)). `convex`: the fixed dense weight and normalisation chosen on "
        "SciFact TRAIN for that model; `adaptive`: the per-query weight of the named parameters, fitted on training "
        "data only; p: paired t-test of adaptive against the fixed convex weight.",
        "",
    ]
    for (model, params), rec in newest.items():
        fixed = rec["fixed_convex_scifact_train"]
        rows = []
        for coll, label in COLLECTIONS.items():
            c = rec["collections"].get(coll)
            if c is None:
                continue
            cells = [f"{c[s]['ndcg@10']:.4f}" for s in ("bm25", "dense", "rrf", "convex", "adaptive")]
            rows.append([label, *cells, f"{c['p_adaptive_vs_convex']:.2g}"])
        means = rec["mean_ndcg@10"]
        rows.append(["mean of the 4", *(f"{means[s]:.4f}" for s in ("bm25", "dense", "rrf", "convex", "adaptive")), ""])
        out += [
            f"**`{model}`**, adaptive parameters `{params}`, convex {fixed['weight']:.2f} {fixed['normalization']}:",
            "",
            *_table(["data", "BM25", "dense (-KL)", "RRF", "convex", "adaptive", "p (convex)"], rows),
            "",
            f"`{rec['command']}` (commit {str(rec.get('commit'))[:10]})",
            "",
        ]
    return out
