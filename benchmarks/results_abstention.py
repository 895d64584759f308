"""``docs/hybrid.md``'s held-out abstention curves and table, from the newest logged abstention run at the shipped
threshold.

``benchmarks/results.py`` writes the part of the page between the ``abstention`` markers
(``results_readme.begin`` / ``end``) from the line of ``runs/abstention/abstention.jsonl`` that the README quotes
too (``results_readme._abstention``: the newest ``benchmarks/abstention.py --hybrid`` line of the default model in
the shipped setting, at the shipped threshold: a newer run that chose another one is not quoted); the curves are
printed by ``benchmarks/abstention.py``'s own ``print_table``, so they read as the script prints them. The page's
prose around the part must quote that line's figures (:func:`abstention_phrases`); ``--check`` exits 1 when the part
differs from what the log renders.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from abstention import print_table
from results_qpp import _table
from results_readme import ABSTENTION_LOG, _abstention, _bold, splice

#: The systems of the held-out table, in its order: label of the table's row.
SYSTEMS = {
    "hybrid": "hybrid calibrator, hybrid retriever (shipped)",
    "dense": "dense calibrator, dense retriever",
    "hybrid_dense_cal": "dense calibrator on the hybrid's top 10 (previous)",
}


def _curve(title: str, rows: Any, threshold: float) -> list[str]:
    """The curve as ``benchmarks/abstention.py`` prints it (its own ``print_table``), without the blank line above."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_table(title, rows, threshold)
    return out.getvalue().strip("\n").splitlines()


def _range(other: Mapping[str, Any], key: str) -> str:
    return f"{other[f'{key}_mean']:.3f} ({other[f'{key}_min']:.3f}-{other[f'{key}_max']:.3f})"


def abstention_region(rec: Mapping[str, Any]) -> list[str]:
    """The rendered part: the held-out curves of seed 0, the table at each threshold, the hybrid's training curve."""
    held, train, summary = rec["held_out"], rec["train"], rec["summary"]
    seed, systems = held["seed"], [s for s in SYSTEMS if s in summary]
    curves: list[str] = []
    for s in systems:
        title = f"{s}: held-out articles (seed {seed}, {held['questions']} questions)"
        curves += [*_curve(title, held[s]["curve"], summary[s]["threshold"]), ""]
    seeds = summary[systems[0]]["held_out_other_seeds"]["seeds"]
    head = [f"held-out articles (seed {seed})", "threshold", "precision", "recall", "F1", "answered"]
    head += ["P@1 answered", "AUROC", f"F1, seeds 1-{seeds}", f"answered, seeds 1-{seeds}"]
    at = {s: summary[s]["held_out_at_threshold"] for s in systems}
    f1 = _bold([f"{at[s]['f1']:.3f}" for s in systems], [at[s]["f1"] for s in systems])
    answered = _bold([f"{at[s]['answered']:.3f}" for s in systems], [at[s]["answered"] for s in systems])
    rows = []
    for i, s in enumerate(systems):
        a, other = at[s], summary[s]["held_out_other_seeds"]
        label = f"**{SYSTEMS[s]}**" if s == "hybrid" else SYSTEMS[s]
        rows.append([label, f"{summary[s]['threshold']:.2f}", f"{a['precision']:.3f}", f"{a['recall']:.3f}", f1[i]])
        rows[-1] += [answered[i], f"{a['answered_p@1']:.3f}", f"{summary[s]['held_out_auroc']:.3f}"]
        rows[-1] += [_range(other, "f1"), _range(other, "answered")]
    title = f"hybrid: training articles (seed {train['seed']}, {train['questions']} questions)"
    return [
        f"As `{rec['command']}` printed them (the newest run of the default model at the shipped threshold, "
        f"{summary['hybrid']['threshold']:.2f}, in `{ABSTENTION_LOG.as_posix()}`: started {rec['started'][:10]}, "
        f"commit {str(rec.get('commit'))[:10]}):",
        "",
        "```",
        *curves[:-1],
        "```",
        "",
        *_table(head, rows),
        "",
        "The training articles' curve of the hybrid (in-sample for its calibrator), for comparison:",
        "",
        "```",
        *_curve(title, train["hybrid"]["curve"], summary["hybrid"]["threshold"]),
        "```",
    ]


def abstention_phrases(rec: Mapping[str, Any]) -> list[str]:
    """Phrases of the page's prose (the target above the part, the notes below it) quoting the same line."""
    hyb, dense = rec["summary"]["hybrid"], rec["summary"]["dense"]
    other, at, d_at = hyb["held_out_other_seeds"], hyb["held_out_at_threshold"], dense["held_out_at_threshold"]
    return [
        f"is **{at['f1']:.3f}** (target >= 0.6) while answering **{at['answered']:.1%}** of",
        f"F1 {other['f1_mean']:.3f} ({other['f1_min']:.3f} to {other['f1_max']:.3f}) while answering "
        f"{other['answered_mean']:.1%} ({other['answered_min']:.1%} to {other['answered_max']:.1%})",
        f"still misses (F1 {d_at['f1']:.3f} at {d_at['answered']:.1%}). These are the newest logged run at the "
        f"shipped threshold ({rec['started'][:10]},",
        f"with an AUROC of {hyb['held_out_auroc']:.3f} on the held-out articles ({hyb['train_auroc']:.3f} on the "
        f"training articles), against {dense['held_out_auroc']:.3f} for the dense one",
        f"P@1 of the answered questions {at['answered_p@1']:.3f} at the hybrid's threshold, "
        f"against {d_at['answered_p@1']:.3f} for the dense retriever",
        f"the 90% floor on the training articles ({hyb['train_at_threshold']['answered']:.1%}); on the held-out "
        f"articles it answers {at['answered']:.1%} (seed {rec['held_out']['seed']}) and "
        f"{other['answered_min']:.1%} to {other['answered_max']:.1%} (seeds 1 to {other['seeds']})",
    ]


def render_abstention(text: str, path: Path, root: Path, model: str) -> str:
    """``text`` (``docs/hybrid.md`` at ``path``) with its ``abstention`` part rendered from ``root``'s log.

    Raises:
        SystemExit: The page has no such part, or its prose does not quote the line's figures
            (:func:`abstention_phrases`): edit the prose.
    """
    rec = _abstention(root, model)
    text = splice(text, "abstention", abstention_region(rec), path)
    flat = " ".join(text.split())
    if missing := [p for p in abstention_phrases(rec) if " ".join(p.split()) not in flat]:
        raise SystemExit(f"{path}: its prose does not quote the logs as: {'; '.join(map(repr, missing))}")
    return text
