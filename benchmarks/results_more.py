"""Two sections of ``docs/results.md``: every bundled model, and the hybrid store (BM25 + -KL).

Both read committed logs only (``benchmarks/results.py`` calls them; ``--check`` covers them):

* ``runs/eval/eval.jsonl`` lines whose ``system`` is a bundled model's name, written by
  ``python benchmarks/results.py --run-models NAME... [--backend onnx|torch]``;
* ``runs/eval/hybrid.jsonl`` lines with ``"benchmark": "hybrid"``, written by ``python benchmarks/hybrid.py
  --quick [--model NAME] [--params FILE]``: the newest line of each (model, adaptive parameters file).
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from results_qpp import _read, _table

HYBRID_LOG = Path("runs") / "eval" / "hybrid.jsonl"
SPLIT = "test"
#: A bundled model that ranks exactly like a torch float32 baseline of the same log (its model card: unit
#: variances and an identity mean head, so -KL is cosine - 1): run on ONNX int8, its difference from
#: that baseline is the int8 graph's rounding alone.
INT8_TWIN = ("minilm-unit-variance", "minilm")


def _backend(command: str) -> str:
    """The ``--model-backend`` of a logged command; without one, the command's default.

    Both commands that log these lines default to torch: ``kl-retrievers evaluate`` (``--model-backend``
    default ``"torch"``, kl_retrievers/evaluate_cli.py) and ``benchmarks/qpp.py``.

    Examples:
        >>> _backend("kl-retrievers evaluate data --model m --model-backend onnx"), _backend("kl-retrievers evaluate d")
        ('onnx', 'torch')
    """
    tokens = shlex.split(command)
    if "--model-backend" in tokens:
        return tokens[tokens.index("--model-backend") + 1]
    return "torch"


def _seed(command: str) -> int:
    """The ``--seed`` of a logged ``benchmarks/abstention.py`` command (the lines record it nowhere else), else 0.

    Examples:
        >>> _seed("python benchmarks/abstention.py --hybrid --seeds 10"), _seed("x --seed 3"), _seed("x --seed=4")
        (0, 3, 4)
    """
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == "--seed" or word.startswith("--seed="):
            return int(word[7:] or words[i + 1])
    return 0


def int8_gap(twin: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The largest |nDCG@10 difference| over collections of :data:`INT8_TWIN`'s ONNX runs and its torch baseline.

    ``twin`` and ``baseline``: collection -> record. ``None`` when no collection has an ONNX run of the
    twin beside the baseline.

    Examples:
        >>> onnx = {"a": {"ndcg@10": 0.5, "command": "kl-retrievers evaluate a --model-backend onnx"}}
        >>> int8_gap(onnx, {"a": {"ndcg@10": 0.75}, "b": {"ndcg@10": 0.5}})
        0.25
        >>> int8_gap({"a": {"ndcg@10": 0.5, "command": "kl-retrievers evaluate a"}}, {"a": {"ndcg@10": 0.75}}) is None
        True
    """
    gaps = [
        abs(rec["ndcg@10"] - baseline[c]["ndcg@10"])
        for c, rec in twin.items()
        if c in baseline and _backend(rec.get("command", "")) == "onnx"
    ]
    return max(gaps) if gaps else None


#: Fixes to how a run is ranked or cut that can move logged figures where scores tie: (commit, when it
#: landed (UTC, the clock the logs' ``started``/``time`` use), what it changed).
RANKING_FIXES = (
    ("3f2136f", "2026-12-03T11:29:11", "every metric ranks tied scores by document id, descending; MRR@10 had not"),
    ("e5b5d67", "2026-12-04T05:13:09", "a run keeps the tied documents that rule ranks first at its depth cut"),
)


def ranking_fixes_note(
    records: Mapping[tuple[str, str], Mapping[str, Any]], systems: Mapping[str, str], collections: Mapping[str, str]
) -> list[str]:
    """A lead and one line per :data:`RANKING_FIXES` entry naming the cells logged before it (none: no lines).

    Examples:
        >>> rec = {("bm25", "c"): {"started": "2026-12-02T00:00:00"}}
        >>> ranking_fixes_note(rec, {"bm25": "BM25"}, {"c": "C"})[2][-12:]
        ': BM25 on C.'
        >>> ranking_fixes_note({("bm25", "c"): {}}, {"bm25": "BM25"}, {"c": "C"})[2][-12:]  # no time: before
        ': BM25 on C.'
    """
    lines = []
    for commit, landed, what in RANKING_FIXES:
        logged = {key: str(r.get("started") or r.get("time") or "") for key, r in records.items()}
        before = [f"{systems[s]} on {collections[c]}" for (s, c), when in logged.items() if when < landed]
        if before:
            lines.append(f"- Logged before `{commit}` ({what}): {', '.join(before)}.")
    if not lines:
        return []
    return [
        "Cells logged before a fix to how runs are ranked or cut (their times against the fix's) can differ from a "
        "run of today's code where scores tie exactly (BM25 ties are common; dense and -KL ties come from duplicate "
        "documents), in MRR@10 and the @100 metrics:",
        "",
        *lines,
        "",
    ]


def onnx_int8_records(root: Path, eval_log: Path, model: str) -> dict[str, dict[str, Any]]:
    """The newest test line of ``model`` per collection in ``eval_log`` recorded as ``onnx-int8``.

    ``onnx-int8`` is the backend ``kl-retrievers evaluate --json`` records for a model's int8 ONNX run (the
    default as shipped); its torch and float32 ONNX lines are left out.
    """
    key = (model, SPLIT, "onnx-int8")
    return {r["collection"]: r for r in _read(root / eval_log) if (r["system"], r["split"], r.get("backend")) == key}


#: Qualitative claims of the README's prose that :func:`contradicted_claims` checks against its table's rows.
README_CLAIMS = (
    "does **not** beat bge-small on any of the four collections",
    "The best row's gain comes from BM25 fusion",
)


def contradicted_claims(
    flat: str, default: Sequence[float | None], bge: Sequence[float | None], means: Sequence[float | None], hybrids: int
) -> list[str]:
    """The :data:`README_CLAIMS` that ``flat`` (the README, whitespace normalised) makes and its rows contradict.

    ``default`` and ``bge``: those rows' nDCG@10 per collection (None: not run); ``means``: each row's mean
    (None: incomplete), the last ``hybrids`` the hybrid rows'. The first claim fails when the default is not
    below bge-small on a collection, the second when the best mean is not a hybrid row's.

    Examples:
        >>> flat = "It does **not** beat bge-small on any of the four collections."
        >>> contradicted_claims(flat, [0.5, 0.4], [0.6, 0.4], [0.5, 0.6], 1)
        ['does **not** beat bge-small on any of the four collections']
        >>> contradicted_claims("The best row's gain comes from BM25 fusion", [], [], [0.6, 0.5], 1)
        ["The best row's gain comes from BM25 fusion"]
    """
    beats = any(d is not None and b is not None and d >= b for d, b in zip(default, bge, strict=True))
    cut = len(means) - hybrids
    singles, fused = [m for m in means[:cut] if m is not None], [m for m in means[cut:] if m is not None]
    not_fusion = not fused or (bool(singles) and max(singles) >= max(fused))
    return [claim for claim, broken in zip(README_CLAIMS, (beats, not_fusion), strict=True) if broken and claim in flat]


def bundled_records(
    root: Path, eval_log: Path, collections: Collection[str]
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """The newest test line of each (bundled model, collection) in ``eval_log``, and of :data:`INT8_TWIN`'s baseline.

    Returns (model -> collection -> record, collection -> the baseline's record); the default is in the first
    only if it was logged in ``eval_log`` under its name.
    """
    from kl_retrievers.pretrained import bundled_models

    names = set(bundled_models())
    found: dict[str, dict[str, dict[str, Any]]] = {}
    baseline: dict[str, dict[str, Any]] = {}  # the newest line of INT8_TWIN's baseline, per collection
    for rec in _read(root / eval_log):
        if rec.get("split") == SPLIT and rec.get("collection") in collections:
            if rec.get("system") in names:
                found.setdefault(rec["system"], {})[rec["collection"]] = rec
            elif rec.get("system") == INT8_TWIN[1]:
                baseline[rec["collection"]] = rec
    return found, baseline


def bundled_models_section(
    root: Path,
    eval_log: Path,
    collections: Mapping[str, str],
    default: Mapping[str, Mapping[str, Any]],
    default_name: str,
) -> list[str]:
    """nDCG@10 of every bundled model with logged test runs (``eval_log`` under ``root``).

    ``collections``: name -> column label, in column order; ``default``: collection -> the default's record.
    """
    found, baseline = bundled_records(root, eval_log, collections)
    gap = int8_gap(found.get(INT8_TWIN[0], {}), baseline)
    # the default's row is the one above (runs/qpp); its ONNX int8 runs in eval_log (as shipped) follow it, its
    # other --run-models lines (torch, float32 ONNX) are not shown: the docs call that row the int8 one
    entries = [(f"`{default_name}` (default)", {c: dict(r) for c, r in default.items()}, False)]
    found.pop(default_name, None)
    if int8 := {c: r for c, r in onnx_int8_records(root, eval_log, default_name).items() if c in collections}:
        entries.append((f"`{default_name}` (default, logged by `--run-models`)", int8, True))
    entries += [(f"`{name}`", found[name], True) for name in sorted(found)]
    rows, commands = [], []
    for label, recs, listed in entries:
        cells = [f"{recs[c]['ndcg@10']:.4f}" if c in recs else "not run" for c in collections]
        complete = all(c in recs for c in collections)
        mean = f"{sum(recs[c]['ndcg@10'] for c in collections) / len(collections):.4f}" if complete else "incomplete"
        backends = sorted({_backend(r["command"]) if "command" in r else "torch" for r in recs.values()})
        rows.append([label, *cells, mean, ", ".join(backends)])
        commands += [r["command"] for r in recs.values() if "command" in r and listed]
    return [
        "## Every bundled model (test splits)",
        "",
        "nDCG@10 of each model in `kl_retrievers/pretrained/` (the default's row is the one above). `backend`: "
        "the `--model-backend` of the logged command"
        + ("" if gap is None else f" (ONNX int8 graphs differ from torch float32 by up to about {gap:.3f} here)")
        + ". Which to choose: [Choosing a model](choosing-a-model.md).",
        "",
        *_table(["model", *collections.values(), "mean", "backend"], rows),
        "",
        "```",
        *commands,
        "```",
        "",
    ]


def hybrid_section(root: Path, collections: Mapping[str, str]) -> list[str]:
    """The newest ``benchmarks/hybrid.py`` test run of each (model, adaptive parameters, BM25 stemmer), every system.

    A line without ``stemmer`` (before stop 42) was run unstemmed; the newest runs come first. A run that lacks
    any of ``collections`` (``hybrid.py --collections``) is skipped: its means are not those of the table.
    """
    newest: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for rec in _read(root / HYBRID_LOG):
        if (
            rec.get("benchmark") == "hybrid"
            and rec.get("split", SPLIT) == SPLIT
            and all(c in rec.get("collections", {}) for c in collections)
        ):
            key = (rec["model"], rec["adaptive_params"]["file"], rec.get("stemmer"))
            newest.pop(key, None)
            newest[key] = rec
    out = [
        "## Hybrid retrieval: BM25 + -KL (test splits)",
        "",
        "From `runs/eval/hybrid.jsonl` (`python benchmarks/hybrid.py --quick`; details and caveats on "
        "[Hybrid retrieval](hybrid.md#benchmark)). `convex`: the fixed dense weight and normalisation chosen on "
        "SciFact TRAIN for that model; `adaptive`: the per-query weight of the named parameters, fitted on training "
        "data only; p: paired t-test of adaptive against the fixed convex weight.",
        "",
    ]
    for (model, params, stemmer), rec in reversed(newest.items()):
        fixed = rec["fixed_convex_scifact_train"]
        rows = []
        for coll, label in collections.items():
            c = rec["collections"].get(coll)
            if c is None:
                continue
            cells = [f"{c[s]['ndcg@10']:.4f}" for s in ("bm25", "dense", "rrf", "convex", "adaptive")]
            rows.append([label, *cells, f"{c['p_adaptive_vs_convex']:.2g}"])
        means = rec["mean_ndcg@10"]
        rows.append(["mean of the 4", *(f"{means[s]:.4f}" for s in ("bm25", "dense", "rrf", "convex", "adaptive")), ""])
        out += [
            f"**`{model}`**, BM25 {'stemmed (' + stemmer + ')' if stemmer else 'not stemmed'}, adaptive parameters "
            f"`{params}` (sha256 {rec['adaptive_params']['sha256'][:10]}), convex {fixed['weight']:.2f} "
            f"{fixed['normalization']}:",
            "",
            *_table(["data", "BM25", "dense (-KL)", "RRF", "convex", "adaptive", "p (convex)"], rows),
            "",
            f"`{rec['command']}` (commit {str(rec.get('commit'))[:10]})",
            "",
        ]
    return out
