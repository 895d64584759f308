"""Issue 19's targets, met or missed, as ``docs/results.md`` states them below the mean taus (``results_qpp.py``).

The verdicts are computed from the mean test taus that ``results_qpp.tau_table`` renders from the logs; only the
targets themselves are typed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: The post-retrieval predictors (they read the ranking's scores, which a query's own variance cannot).
POST = ("max_score", "nqc", "gap12", "wig")
#: Issue 19's target for the query uncertainty: a mean test tau of at least this, and above every POST predictor's.
UNCERTAINTY_TAU_TARGET = 0.3


def verdicts(mean: Mapping[str, float | None], parts: Sequence[str]) -> list[str]:
    """One line per target, met or missed.

    Args:
        mean: Mean test tau of ``uncertainty``, ``combined`` and every POST predictor (``None``: not run on every
            test split).
        parts: The predictors the combined predictor was fitted on (its logged ``features``).

    Examples:
        >>> m = {"uncertainty": -0.05, "combined": 0.22, "max_score": 0.23, "nqc": 0.2, "gap12": 0.1, "wig": 0.2}
        >>> [line.split("**")[1] for line in verdicts(m, ["uncertainty", "max_score", "gap12"])[2:]]
        ['missed', 'missed']
    """
    if not parts or any(mean.get(n) is None for n in ("uncertainty", "combined", *POST, *parts)):
        return ["The issue's targets: not measured on every test split."]
    m = {n: float(v) for n, v in mean.items() if v is not None}
    u, c, post, part = m["uncertainty"], m["combined"], max(POST, key=m.__getitem__), max(parts, key=m.__getitem__)
    met = ("missed", "met")
    return [
        "The issue's targets, from the means above:",
        "",
        f"- The query uncertainty: a mean tau of at least {UNCERTAINTY_TAU_TARGET:.2f} and above every post-retrieval "
        f"predictor's: **{met[u >= max(UNCERTAINTY_TAU_TARGET, m[post])]}** ({u:+.3f}; the best post-retrieval "
        f"predictor, {post}: {m[post]:+.3f}).",
        f"- The combined predictor above each of its parts ({', '.join(parts)}): **{met[c > m[part]]}** ({c:+.3f}; "
        f"its best part, {part}: {m[part]:+.3f}).",
    ]
