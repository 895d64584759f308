"""Write ``docs/results.md`` from the run logs committed under ``runs/``, and run the evaluations that write them.

Every figure on the page is read from, or computed from, a JSON line of a log in this repository:

* ``runs/eval/eval.jsonl``: one line per (system, collection, split), written by ``--run``: the JSON that
  ``kl-retrievers evaluate --json`` printed, plus the exact command, the commit and the time. Per-query
  metrics (for the paired tests) are in ``runs/eval/pq/``, in a file of each run's own (its line names it).
* ``runs/qpp/qpp.jsonl``: the package default's lines, written by ``benchmarks/qpp.py`` through the same
  exact -KL evaluation (per-query files in ``runs/qpp/``). A default logged in ``runs/eval/`` wins. With
  ``runs/qpp/calibration.jsonl`` it also feeds the QPP and calibration section (``benchmarks/results_qpp.py``).
* ``runs/eval/hybrid.jsonl``: the hybrid section, written by ``benchmarks/hybrid.py`` (``benchmarks/results_more.py``).

The same records also fill the marked part of ``docs/choosing-a-model.md`` (``benchmarks/results_choosing.py``),
the marked parts of ``README.md`` and ``docs/hybrid.md`` and its last section (``benchmarks/results_readme.py``;
the abstention part of ``docs/hybrid.md``: ``benchmarks/results_abstention.py``),
and the bge table of ``docs/backbones.md`` (``benchmarks/results_backbones.py``; its paired cell is this page's too).

The page is never edited by hand: ``--check`` exits 1 when it (or a part) differs from what the logs render
(``tests/test_results_page.py``) or a line it renders has a per-query file whose means are not the line's figures;
the first round's page, whose logs were not committed, is ``docs/results-archive.md``.

Examples:
    python benchmarks/results.py                              # write docs/results.md
    python benchmarks/results.py --check                      # is the page what the logs say?
    python benchmarks/results.py --run bm25 bge-small minilm  # evaluate, append to runs/eval/eval.jsonl
    python benchmarks/results.py --run-models minilm-gauss-zs --backend onnx  # a bundled model by name
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from results_abstention import render_abstention
from results_backbones import PAGE as BACKBONES_PAGE
from results_backbones import paired_cell, paired_ndcg, render_backbones
from results_choosing import PAGE as CHOOSING_PAGE
from results_choosing import choosing_region, splice, sync
from results_more import HYBRID_LOG, bundled_models_section, hybrid_section, ranking_fixes_note
from results_qpp import _read as read_jsonl  # every JSON line of a log, oldest first
from results_qpp import qpp_section
from results_readme import HYBRID_PAGE, README, readme_notes, render_hybrid_page, render_readme, stale_per_query

from kl_retrievers.pretrained import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results.md"
EVAL_LOG = Path("runs") / "eval" / "eval.jsonl"
QPP_LOG = Path("runs") / "qpp" / "qpp.jsonl"
SPLIT = "test"
COLLECTIONS = {
    "scifact": "SciFact",
    "trec-dl21-passage-pooled": "TREC DL21 (pooled)",
    "cranfield": "Cranfield",
    "nfcorpus-preprocessed": "NFCorpus (preprocessed)",
}
#: Column order; ``default`` is the package default Gaussian model (no ``--baseline``).
SYSTEMS = {
    "bm25": "BM25",
    "bge-small": "bge-small-en-v1.5 (int8)",
    "minilm": "MiniLM cosine",
    "default": f"default `{DEFAULT_MODEL}` (-KL)",
}


def load_records(root: Path = ROOT) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest logged record of each (system, collection) on the test split."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in read_jsonl(root / QPP_LOG):  # the default, as benchmarks/qpp.py logged it
        if rec.get("model") == DEFAULT_MODEL and rec.get("split") == SPLIT and rec.get("collection") in COLLECTIONS:
            found[("default", rec["collection"])] = {**rec, "log": QPP_LOG.as_posix()}
    for rec in read_jsonl(root / EVAL_LOG):
        if rec["split"] == SPLIT and rec["collection"] in COLLECTIONS and rec["system"] in SYSTEMS:
            found[(rec["system"], rec["collection"])] = {**rec, "log": EVAL_LOG.as_posix()}
    return found


def num(value: float) -> str:
    return f"{value:.4f}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def systems_present(records: Mapping[tuple[str, str], Any]) -> list[str]:
    return [s for s in SYSTEMS if any((s, c) in records for c in COLLECTIONS)]


def score_table(records: Mapping[tuple[str, str], dict[str, Any]], systems: Sequence[str]) -> list[str]:
    """nDCG@10 (Recall@100) per collection and system, the best of each row in bold, then the means."""
    rows = []
    for coll, name in COLLECTIONS.items():
        recs = [records.get((s, coll)) for s in systems]
        queries = sorted({r["queries"] for r in recs if r})
        best = max((r["ndcg@10"] for r in recs if r), default=None)
        cells = []
        for r in recs:
            cell = "not run" if r is None else f"{num(r['ndcg@10'])} ({num(r['recall@100'])})"
            cells.append(f"**{cell}**" if r is not None and r["ndcg@10"] == best else cell)
        rows.append([name, SPLIT, "/".join(map(str, queries)), *cells])
    means = []
    for s in systems:
        recs = [records.get((s, c)) for c in COLLECTIONS]
        means.append(num(float(np.mean([r["ndcg@10"] for r in recs if r]))) if all(recs) else "incomplete")
    rows.append([f"mean nDCG@10 of the {len(COLLECTIONS)}", "", "", *means])
    return table(["data", "split", "queries", *(SYSTEMS[s] for s in systems)], rows)


def paired_table(records: Mapping[tuple[str, str], dict[str, Any]], systems: Sequence[str], root: Path) -> list[str]:
    """The default minus each baseline: nDCG@10 difference and two-sided paired t-test p over the queries."""
    others = [s for s in systems if s != "default"]
    rows = []
    for coll, name in COLLECTIONS.items():
        cells = []
        for s in others:
            a, b = records.get(("default", coll)), records.get((s, coll))
            if a is None or b is None:
                cells.append("not run")
                continue
            cells.append(paired_cell(paired_ndcg(a, b, root)))
        rows.append([name, *cells])
    return table(["data", *(f"default minus {SYSTEMS[s]}" for s in others)], rows)


def summary(records: Mapping[tuple[str, str], dict[str, Any]], systems: Sequence[str]) -> list[str]:
    """One line per collection: where the default stands, naming every column above it (all from the logs)."""
    lines = []
    for coll, name in COLLECTIONS.items():
        have = {s: records[(s, coll)]["ndcg@10"] for s in systems if (s, coll) in records}
        if "default" not in have or len(have) < 2:
            continue
        above = [f"{SYSTEMS[s]} ({num(have[s])})" for s in have if have[s] > have["default"]]
        where = f"below {', '.join(above)}" if above else "the best column"
        lines.append(f"- {name}: the default ({num(have['default'])}) is {where}.")
    return lines


def provenance(records: Mapping[tuple[str, str], dict[str, Any]], systems: Sequence[str]) -> list[str]:
    rows = []
    for s in systems:
        recs = [records[(s, c)] for c in COLLECTIONS if (s, c) in records]
        models = sorted({str(r["model"]) for r in recs})
        commits = sorted({str(r.get("commit") or "unknown")[:10] for r in recs})
        logs = sorted({f"`{r['log']}`" for r in recs})
        rows.append([SYSTEMS[s], "; ".join(models), ", ".join(logs), ", ".join(commits)])
    return table(["column", "model (as logged)", "log", "commit"], rows)


def render(root: Path = ROOT) -> str:
    """The whole page, from the logs under ``root``."""
    records = load_records(root)
    systems = systems_present(records)
    ordered = [records[(s, c)] for s in systems for c in COLLECTIONS if (s, c) in records]
    commands = list(dict.fromkeys(r["command"] for r in ordered))
    default = {c: records[("default", c)] for c in COLLECTIONS if ("default", c) in records}
    out = [
        "# Results",
        "",
        "<!-- Written by `python benchmarks/results.py` from the logs under runs/; do not edit by hand. -->",
        "",
        f"Every figure on this page is read from a JSON line of `{EVAL_LOG.as_posix()}`, "
        f"`{HYBRID_LOG.as_posix()}`, `{QPP_LOG.as_posix()}` or `runs/qpp/calibration.jsonl`, or computed from the "
        "files those lines name; `python benchmarks/results.py --check` fails when the page and the logs disagree. "
        "The first round of experiments (training recipes, dev choices, the in-domain protocol) is on [Results, round "
        "1 (archive)](results-archive.md); its logs were not committed, so its figures cannot be re-derived here.",
        "",
        "## Zero-shot: the test splits of the four dev collections",
        "",
        "Exact retrieval of the top 100 documents per query; no choice on this page was made by looking at these "
        "splits. nDCG@10, Recall@100 in brackets; the best nDCG@10 of each row in bold.",
        "",
        *score_table(records, systems),
        "",
        *summary(records, systems),
        "",
        "### The default against each baseline (paired, per query)",
        "",
        "nDCG@10 difference (default minus baseline) and the two-sided paired t-test p-value over the queries "
        "both systems were scored on. Not corrected for multiple comparisons.",
        "",
        *paired_table(records, systems, root),
        "",
        "### Where each column comes from",
        "",
        *provenance(records, systems),
        "",
        "The commit is the repository's HEAD when the line was logged (the working tree may have held uncommitted "
        "changes). Commands (from the repository root), in the order of the table's columns and rows; "
        "`python benchmarks/results.py --run SYSTEM` runs the `kl-retrievers evaluate` lines and logs them:",
        "",
        "```",
        *commands,
        "```",
        "",
        *ranking_fixes_note({k: records[k] for k in sorted(records)}, SYSTEMS, COLLECTIONS),
        *bundled_models_section(root, EVAL_LOG, COLLECTIONS, default, DEFAULT_MODEL),
        *hybrid_section(root, COLLECTIONS),
        *qpp_section(root),
        *readme_notes(root, DEFAULT_MODEL),
    ]
    return "\n".join(out)


def render_choosing(path: Path, root: Path = ROOT) -> str:
    """The page at ``path`` (docs/choosing-a-model.md) with its marked part rendered from the logs under ``root``."""
    region = choosing_region(root, EVAL_LOG, load_records(root), list(COLLECTIONS), DEFAULT_MODEL)
    return splice(path.read_text(encoding="utf-8"), region, path)


def git_commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None


def run(systems: Sequence[str], collections: Sequence[str], backend: str | None = None) -> None:
    """Evaluate each system on each collection's test split with the CLI and append its JSON to the log.

    A system that is not in :data:`SYSTEMS` is a bundled model's name (``--model NAME``), run on ``backend``
    (``--model-backend``) when one is given. Each run writes a per-query file of its own, named by its system (and a
    model's backend), collection and UTC start, claimed atomically (an empty file that evaluate replaces; gone if
    the run fails or raises): one that exists already, e.g. of a run started in the same second, is not overwritten.
    """
    exe = Path(sys.executable).with_name("kl-retrievers")
    for system in systems:
        for coll in collections:
            t0 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())  # UTC (qpp.py and hybrid.py log local time)
            name = system if system in SYSTEMS else f"{system}.{backend or 'torch'}"  # evaluate's default: torch
            pq = f"runs/eval/pq/{name}.{coll}.{SPLIT}.{t0.replace('-', '').replace(':', '')}Z.json"
            try:  # claim the name: of two runs started in the same second, the second stops here
                (ROOT / pq).open("x").close()
            except FileExistsError:
                raise SystemExit(f"{pq} exists: not overwriting the per-query file of an earlier run") from None
            args = ["evaluate", f"../shared/datasets/{coll}", "--split", SPLIT]
            args += ["--baseline", system] if system in SYSTEMS and system != "default" else []
            if system not in SYSTEMS:
                args += ["--model", system] + (["--model-backend", backend] if backend else [])
            args += ["--json", "--no-progress", "--per-query", pq]
            try:
                proc = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, check=False)
            finally:  # a run that raised (e.g. interrupted) leaves no claim behind: the file while it is still empty
                if (ROOT / pq).is_file() and not (ROOT / pq).stat().st_size:
                    (ROOT / pq).unlink()
            if proc.returncode != 0:
                (ROOT / pq).unlink(missing_ok=True)  # the claim, or what the failed run left there
                raise SystemExit(f"kl-retrievers {shlex.join(args)} failed:\n{proc.stderr[-3000:]}")
            record = json.loads(proc.stdout)
            record.update(system=system, collection=coll, per_query_file=pq, started=t0)
            record.update(command=shlex.join(["kl-retrievers", *args]), commit=git_commit())
            with (ROOT / EVAL_LOG).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            print(f"{system} {coll}: nDCG@10 {num(record['ndcg@10'])}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a page differs from what the logs render")
    p.add_argument("--page", type=Path, default=PAGE, help="the page (default: docs/results.md)")
    p.add_argument("--choosing", type=Path, default=ROOT / CHOOSING_PAGE, help="the page of the model-choice table")
    p.add_argument("--readme", type=Path, default=ROOT / README, help="the README, whose results part too")
    p.add_argument("--hybrid-page", type=Path, default=ROOT / HYBRID_PAGE, help="the page of the hybrid tables")
    p.add_argument("--backbones-page", type=Path, default=ROOT / BACKBONES_PAGE, help="the page of the bge table")
    p.add_argument("--run", nargs="+", choices=list(SYSTEMS), metavar="SYSTEM", help=f"evaluate: {', '.join(SYSTEMS)}")
    p.add_argument("--run-models", nargs="+", default=[], metavar="MODEL", help="evaluate bundled models by name")
    p.add_argument("--backend", choices=["onnx", "torch"], default=None, help="--model-backend of --run-models")
    p.add_argument("--collections", nargs="+", choices=list(COLLECTIONS), default=list(COLLECTIONS), metavar="NAME")
    args = p.parse_args(argv)
    if named := [m for m in args.run_models if m in SYSTEMS]:
        p.error(f"--run-models {' '.join(named)}: a system of --run ({', '.join(SYSTEMS)}), not a model name")
    if args.run or args.run_models:
        (ROOT / EVAL_LOG).parent.mkdir(parents=True, exist_ok=True)
        run([*(args.run or []), *args.run_models], args.collections, args.backend)
    choosing = render_choosing(args.choosing)
    readme = render_readme(args.readme, load_records(), ROOT, DEFAULT_MODEL)
    pages = [(args.page, render()), (args.choosing, choosing), (args.readme, readme)]
    hybrid = render_abstention(render_hybrid_page(args.hybrid_page, ROOT), args.hybrid_page, ROOT, DEFAULT_MODEL)
    pages.append((args.hybrid_page, hybrid))
    pages.append((args.backbones_page, render_backbones(args.backbones_page, load_records(), ROOT)))
    stale = stale_per_query(ROOT, load_records(), DEFAULT_MODEL) if args.check else []
    sys.stderr.writelines(f"per-query file does not match: {line}\n" for line in stale)
    return max(int(bool(stale)), *(sync(path, text, args.check) for path, text in pages))


if __name__ == "__main__":
    sys.exit(main())
