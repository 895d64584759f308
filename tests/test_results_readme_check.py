"""README's results table and docs/hybrid.md's benchmark tables are rendered from the logs and checked.

``python benchmarks/results.py --check`` fails when a figure of those parts was typed by hand (or went
stale); each check runs on a copy of the pages under ``tmp_path``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
import results_readme  # noqa: E402

from kl_retrievers.calibration import DEFAULT_HYBRID_MIN_CONFIDENCE  # noqa: E402

#: A float literal with three or more decimals: a figure typed into the renderer instead of read from a log.
FIGURE = re.compile(r"(?<![\w.])\d+\.\d{3,}(?![\w.])")


def _pages(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """A copy of every page ``results.py`` writes, and the arguments that point it at them."""
    page = tmp_path / "results.md"
    page.write_text(results.render(), encoding="utf-8")
    sources = {"choosing": "docs/choosing-a-model.md", "readme": "README.md", "hybrid": "docs/hybrid.md"}
    copies = {name: tmp_path / Path(rel).name for name, rel in sources.items()}
    for name, rel in sources.items():
        shutil.copy(REPO / rel, copies[name])
    args = ["--check", "--page", str(page), "--choosing", str(copies["choosing"])]
    args += ["--readme", str(copies["readme"]), "--hybrid-page", str(copies["hybrid"])]
    return args, copies["readme"], copies["hybrid"]


def _swap_cell(path: Path, row_start: str, cell: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith(row_start))
    assert f" {cell} " in row, (row_start, cell, row)
    path.write_text(text.replace(row, row.replace(f" {cell} ", f" {new} ", 1)), encoding="utf-8")


def test_the_pages_match_the_logs(tmp_path: Path) -> None:
    args, _, _ = _pages(tmp_path)
    assert results.main(args) == 0, "README.md or docs/hybrid.md is stale: run `python benchmarks/results.py`"


@pytest.mark.parametrize(
    ("row_start", "cell"),
    [
        ("| default `minilm-gauss-soup` (-KL) |", "0.6525"),  # from runs/qpp/qpp.jsonl
        ("| bge-small-en-v1.5 int8 |", "0.7108"),  # from runs/eval/eval.jsonl
        ("| hybrid BM25 + default, adaptive", "0.5263"),  # a mean from runs/eval/hybrid.jsonl
        ("| hybrid BM25 + `bge-small-unit-variance`", "**0.7407**"),
    ],
)
def test_a_changed_readme_cell_fails_check(tmp_path: Path, row_start: str, cell: str) -> None:
    args, readme, _ = _pages(tmp_path)
    _swap_cell(readme, row_start, cell, "0.9999")
    assert results.main(args) == 1
    # the normal render writes the logged figure back
    assert results.main(args[1:]) == 0
    assert readme.read_text(encoding="utf-8") == (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("part", "row_start", "cell"),
    [
        ("hybrid-default", "| SciFact | 300 |", "0.7339"),
        ("hybrid-default", "| Cranfield | 225 |", "0.00054"),  # a p-value
        ("hybrid-bge", "| SciFact | 0.6803 | 0.7130 |", "**0.7407**"),
        ("hybrid-bge-unstemmed", "| TREC DL21 (pooled) | 0.3996 |", "-0.0040"),
    ],
)
def test_a_changed_hybrid_page_cell_fails_check(tmp_path: Path, part: str, row_start: str, cell: str) -> None:
    args, _, hybrid = _pages(tmp_path)
    text = hybrid.read_text(encoding="utf-8")
    inside = text[text.index(results_readme.begin(part)) : text.index(results_readme.end(part))]
    assert row_start in inside, (part, row_start)
    _swap_cell(hybrid, row_start, cell, "0.9407")
    assert results.main(args) == 1


def test_prose_outside_the_parts_is_the_pages_own(tmp_path: Path) -> None:
    args, readme, hybrid = _pages(tmp_path)
    readme.write_text(readme.read_text(encoding="utf-8").replace("## What you get", "## What you get here"))
    hybrid.write_text(hybrid.read_text(encoding="utf-8").replace("### Search latency", "### Latency"))
    assert results.main(args) == 0
    # without its markers the README cannot be rendered, and the message names the missing line
    readme.write_text(readme.read_text(encoding="utf-8").replace(results_readme.end("results"), ""))
    with pytest.raises(SystemExit, match=r"End of the part \(results\)"):
        results.main(args)


def test_the_readme_renderer_types_no_figure() -> None:
    source = (REPO / "benchmarks" / "results_readme.py").read_text(encoding="utf-8")
    assert FIGURE.findall(source) == []
    # with the prose of docs/results.md's section on the README's table and the abstention line's selection rule
    assert len(source.splitlines()) < 420


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("with F1 0.672 while", "with F1 0.700 while"),  # the default hybrid's abstention F1, seed 0
        ("answering 91% of", "answering 90% of"),  # the share of answerable questions it answers
        ("already gets F1 0.674", "already gets F1 0.5"),  # abstaining on everything
        ("(mean 0.5307)", "(mean 0.5370)"),  # the default's fixed convex weight, from runs/eval/hybrid.jsonl
        ("fusion (0.5263)", "fusion (0.5626)"),  # its adaptive fusion
        ("within 0.0046 of", "within 0.0002 of"),  # int8 ONNX against torch, the largest gap of a collection
        ("(mean 0.4825 against 0.4819)", "(mean 0.4852 against 0.4819)"),  # runs/eval/eval.jsonl, runs/qpp/qpp.jsonl
    ],
)
def test_a_changed_readme_prose_figure_fails(tmp_path: Path, old: str, new: str) -> None:
    """The README's prose figures (int8 against torch, abstention, convex against adaptive) are quoted from the logs."""
    args, readme, _ = _pages(tmp_path)
    text = readme.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    readme.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(SystemExit, match="does not quote the logs"):
        results.main(args)


def _notes(page: str) -> str:
    """The section of ``docs/results.md`` on the README's table (the page's last)."""
    return page[page.index("## About the README's table") :]


def test_the_readme_links_the_section_that_keeps_what_it_leaves_out() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/results.md#about-the-readmes-table" in readme
    assert "## About the README's table" in (REPO / "docs" / "results.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "figure",
    [
        "| 0.692 |",  # bge hybrid's abstention F1, seed 0
        "| 91.3% |",  # the share of answerable questions it answers
        "| 0.414 |",  # bge's dense retriever
        "| 89.0% |",
        "| 0.677 |",  # the default hybrid, mean of seeds 1-10
        "| 0.369 | 89.9% |",  # the default's dense retriever (F1 and share answered)
        "| 15% to 35% |",  # queries of the four collections the default's hybrid threshold refuses
        "| 11% to 32% |",  # bge's
        "0.5434",  # bge's per-query fusion, its first stemmed fit
        "F1 0.674 (answering none)",  # abstaining on everything
    ],
)
def test_a_changed_figure_of_the_readme_notes_fails_check(tmp_path: Path, figure: str) -> None:
    """The figures moved from the README to docs/results.md are rendered from the logs: an edited one fails --check."""
    args, _, _ = _pages(tmp_path)
    page = tmp_path / "results.md"
    text = page.read_text(encoding="utf-8")
    assert text.count(figure) == 1 and figure in _notes(text), figure
    page.write_text(text.replace(figure, figure.replace("0.", "0.9").replace("%", "0%"), 1), encoding="utf-8")
    assert results.main(args) == 1


def test_the_readme_notes_are_read_from_the_logs(tmp_path: Path) -> None:
    root = _logs(tmp_path)
    (root / results_readme.CALIB_LOG).parent.mkdir(parents=True)
    shutil.copy(REPO / results_readme.CALIB_LOG, root / results_readme.CALIB_LOG)
    before = "\n".join(results_readme.readme_notes(root, results.DEFAULT_MODEL)).rstrip("\n")
    assert before == _notes((REPO / "docs" / "results.md").read_text(encoding="utf-8")).rstrip("\n")
    # a newer bge line in the shipped setting is quoted
    rec = copy.deepcopy(results_readme._abstention(root, "bge-small-unit-variance"))
    rec["summary"]["hybrid"]["held_out_at_threshold"]["f1"] = 0.25
    _append(root / results_readme.ABSTENTION_LOG, rec)
    # a newer calibration report of the default answering every SciFact test query
    calib = [
        r
        for r in _lines(root / results_readme.CALIB_LOG)
        if (r.get("model"), r.get("retriever"), r.get("collection"), r.get("split"), r.get("bm25_stemmer"))
        == (results.DEFAULT_MODEL, "hybrid", "scifact", "test", "english")
    ][-1]
    calib["at_recommended_threshold"]["answered"] = 1.0
    _append(root / results_readme.CALIB_LOG, calib)
    after = "\n".join(results_readme.readme_notes(root, results.DEFAULT_MODEL))
    assert "| 0.250 |" in after and "| 0.692 |" not in after
    assert "| 0% to 35% |" in after and "| 15% to 35% |" not in after
    # without its logs the section says so instead of stopping the page
    (root / results_readme.CALIB_LOG).unlink()
    assert (
        results_readme.readme_notes(root, results.DEFAULT_MODEL)[2] == "Not rendered: no `runs/qpp/calibration.jsonl`."
    )


# --- which log lines the pages are rendered from (benchmarks/results_readme.py's selection) ---

_UNSTEMMED = "kl_retrievers/pretrained/bge-small-unit-variance/hybrid_adaptive.unstemmed.json"  # as the page names it
_UNSTEMMED_KEY = ("bge-small-unit-variance", _UNSTEMMED, None)
_DEFAULT_PARAMS = "kl_retrievers/data/hybrid_adaptive.json"
_DEFAULT_KEY = ("minilm-gauss-soup", _DEFAULT_PARAMS, "english")


def _logs(tmp_path: Path) -> Path:
    """A root holding a copy of the two logs the selection reads."""
    for rel in (results_readme.HYBRID_LOG, results_readme.ABSTENTION_LOG):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    return tmp_path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _append(path: Path, rec: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


def _sha(rel: str) -> str:
    return hashlib.sha256((REPO / rel).read_bytes()).hexdigest()


def _newest_test_run(root: Path, model: str, stemmer: str | None) -> dict[str, Any]:
    runs = [r for r in _lines(root / results_readme.HYBRID_LOG) if r.get("benchmark") == "hybrid"]
    return copy.deepcopy([r for r in runs if r["model"] == model and r.get("stemmer") == stemmer][-1])


def test_the_unstemmed_table_is_the_run_of_the_unstemmed_parameters(tmp_path: Path) -> None:
    root = _logs(tmp_path)
    log = root / results_readme.HYBRID_LOG
    chosen = results_readme.newest_hybrids(root)[_UNSTEMMED_KEY]
    assert chosen["adaptive_params"]["sha256"] == _sha(_UNSTEMMED)  # logged under its old path
    # a run with --stemmer none but the shipped stemmed parameters is not the unstemmed table's (case A)
    stemmed = _newest_test_run(root, "bge-small-unit-variance", "english")
    stemmed["stemmer"] = None
    _append(log, stemmed)
    assert results_readme.newest_hybrids(root)[_UNSTEMMED_KEY] == chosen
    # a rerun as docs/hybrid.md says (--stemmer none, the unstemmed file by its path) is (case B)
    rerun = copy.deepcopy(chosen)
    rerun["adaptive_params"]["file"] = _UNSTEMMED
    rerun["mean_ndcg@10"]["adaptive"] = 0.25
    _append(log, rerun)
    assert results_readme.newest_hybrids(root)[_UNSTEMMED_KEY]["mean_ndcg@10"]["adaptive"] == 0.25


def test_a_partial_run_does_not_replace_a_complete_one(tmp_path: Path) -> None:
    root = _logs(tmp_path)
    complete = results_readme.newest_hybrids(root)[_DEFAULT_KEY]
    partial = copy.deepcopy(complete)  # as logged by --collections scifact (case C)
    partial["collections"] = {"scifact": partial["collections"]["scifact"]}
    partial["mean_ndcg@10"] = {s: partial["collections"]["scifact"][s]["ndcg@10"] for s in partial["mean_ndcg@10"]}
    _append(root / results_readme.HYBRID_LOG, partial)
    assert results_readme.newest_hybrids(root)[_DEFAULT_KEY] == complete


def test_a_run_of_other_parameters_under_the_shipped_path_is_not_shown(tmp_path: Path) -> None:
    root = _logs(tmp_path)
    log = root / results_readme.HYBRID_LOG
    shipped = results_readme.newest_hybrids(root)[_DEFAULT_KEY]
    other = copy.deepcopy(shipped)  # case D: other parameters written to the shipped path for a test
    other["adaptive_params"]["sha256"] = "0" * 64
    other["mean_ndcg@10"]["adaptive"] = 0.6
    _append(log, other)
    assert results_readme.newest_hybrids(root)[_DEFAULT_KEY] == shipped
    # with no run of the file as it is now, the page cannot be rendered: the message names both sha256
    kept = [
        r for r in _lines(log) if r.get("adaptive_params", {}).get("sha256") != shipped["adaptive_params"]["sha256"]
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    with pytest.raises(SystemExit, match=f"sha256 {_sha(_DEFAULT_PARAMS)}.*sha256 {'0' * 64}"):
        results_readme.newest_hybrids(root)


@pytest.mark.parametrize(
    "change",
    [
        {"quick": True},
        {"command": "python benchmarks/abstention.py --hybrid --seed 3 --seeds 10"},
        {"threshold": 0.3},
    ],
)
def test_the_abstention_prose_quotes_the_shipped_setting_only(tmp_path: Path, change: dict[str, Any]) -> None:
    """A newer --quick line, one of another --seed or another threshold is not the README's (case E)."""
    root = _logs(tmp_path)
    model = results.DEFAULT_MODEL
    shipped = results_readme._abstention(root, model)
    shipped_threshold = shipped["summary"]["hybrid"]["threshold"]
    assert shipped_threshold == DEFAULT_HYBRID_MIN_CONFIDENCE
    rec = copy.deepcopy(shipped)
    rec["summary"]["hybrid"]["held_out_at_threshold"]["f1"] = 0.25
    if "threshold" in change:
        rec["summary"]["hybrid"]["threshold"] = change["threshold"]
    else:
        rec.update(change)
    _append(root / results_readme.ABSTENTION_LOG, rec)
    assert results_readme._abstention(root, model) == shipped
    # the same line in the shipped setting is the newest one, and is quoted
    _append(
        root / results_readme.ABSTENTION_LOG,
        {**rec, "quick": False, "command": shipped["command"]}
        | {"summary": {**rec["summary"], "hybrid": {**rec["summary"]["hybrid"], "threshold": shipped_threshold}}},
    )
    assert results_readme._abstention(root, model)["summary"]["hybrid"]["held_out_at_threshold"]["f1"] == 0.25


def test_an_abstention_curve_that_does_not_end_abstaining_on_all_stops(tmp_path: Path) -> None:
    root = _logs(tmp_path)
    rec = copy.deepcopy(results_readme._abstention(root, results.DEFAULT_MODEL))
    rec["held_out"]["hybrid"]["curve"][-1]["answered"] = 0.01
    _append(root / results_readme.ABSTENTION_LOG, rec)
    with pytest.raises(SystemExit, match="does not end abstaining"):
        results_readme._abstention(root, results.DEFAULT_MODEL)


@pytest.mark.parametrize(
    ("system", "value", "claim"),
    [
        ("bge-small", 0.5, "does **not** beat bge-small on any of the four collections"),  # default beats it on one
        ("bm25", 0.99, "The best row's gain comes from BM25 fusion"),  # a row that is no hybrid is the best
    ],
)
def test_a_readme_claim_the_rows_contradict_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str, value: float, claim: str
) -> None:
    """The README's qualitative claims were not checked: logs contradicting them rendered the same prose."""
    monkeypatch.setattr(results_readme, "readme_phrases", lambda *args: [])  # the figures' phrases: checked above
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    records = results.load_records(REPO)
    model = results.DEFAULT_MODEL
    assert claim in " ".join(readme.read_text(encoding="utf-8").split())
    results_readme.render_readme(readme, records, REPO, model)  # the logged rows bear both claims out
    changed = copy.deepcopy(records)
    for coll in results_readme.README_COLLECTIONS if system == "bm25" else ["scifact"]:
        changed[(system, coll)]["ndcg@10"] = value
    with pytest.raises(SystemExit, match="the logged rows contradict its prose") as exc:
        results_readme.render_readme(readme, changed, REPO, model)
    assert claim in str(exc.value)
    flat = " ".join(readme.read_text(encoding="utf-8").split())
    readme.write_text(flat.replace(claim, "(claim removed)"), encoding="utf-8")  # prose that no longer claims it
    results_readme.render_readme(readme, changed, REPO, model)
