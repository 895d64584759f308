"""``docs/backbones.md``'s bge table is rendered from the newest logged lines, its paired tests recomputed.

``benchmarks/results.py`` writes the table of ``bge-small-unit-variance`` against the int8 bge-small baseline
(``benchmarks/results_backbones.py``) and ``--check`` fails when the page differs from what the logs render.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from kl_retrievers.evaluation import load_per_query, paired_test

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
import results_backbones  # noqa: E402
import results_readme  # noqa: E402

PAGE = REPO / results_backbones.PAGE
#: A float literal with three or more decimals: a figure typed into the renderer instead of read from a log.
FIGURE = re.compile(r"(?<![\w.])\d+\.\d{3,}(?![\w.])")


def _region(text: str) -> str:
    part = results_backbones.PART
    return text[text.index(results_readme.begin(part)) : text.index(results_readme.end(part))]


def _row(region: str, label: str) -> list[str]:
    line = next(line for line in region.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _pq(root: Path, rec: dict[str, Any]) -> dict[str, dict[str, float]]:
    return load_per_query(root / rec["per_query_file"])[0]


def _newest(root: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Independently of the renderer: the newest test line of the model and of the baseline, per collection."""
    model: dict[str, dict[str, Any]] = {}
    base: dict[str, dict[str, Any]] = {}
    for line in (root / results.EVAL_LOG).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("split") == "test" and rec["system"] == results_backbones.MODEL:
            model[rec["collection"]] = rec
        elif rec.get("split") == "test" and rec["system"] == results_backbones.BASELINE:
            base[rec["collection"]] = rec
    return model, base


def test_the_page_is_what_the_logs_render() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert results_backbones.render_backbones(PAGE, results.load_records(), REPO) == text
    assert "not recomputed" not in text and "p not recomputed" not in text


def test_the_table_pairs_the_newest_lines_and_recomputes_each_test() -> None:
    """Each row: the newest logged line of both systems, the paired t-test over their per-query files."""
    region = _region(PAGE.read_text(encoding="utf-8"))
    model, base = _newest(REPO)
    for coll, label in results_backbones.COLLECTIONS.items():
        a, b = model[coll], base[coll]
        res = paired_test(_pq(REPO, a), _pq(REPO, b), "ndcg@10")
        cells = _row(region, label)
        assert cells[1] == f"{a['ndcg@10']:.4f} ({a['recall@100']:.4f})", (coll, cells)
        assert cells[2] == f"{b['ndcg@10']:.4f} ({b['recall@100']:.4f})", (coll, cells)
        assert cells[3] == f"{res.mean_diff:+.4f} (p = {res.p_value:.2g}, n = {res.n})", (coll, cells)
    mean_b = sum(base[c]["ndcg@10"] for c in results_backbones.COLLECTIONS) / len(results_backbones.COLLECTIONS)
    assert _row(region, "mean of the 4")[2] == f"{mean_b:.4f}"
    assert f"int8 baseline (logged {max(r['started'] for r in base.values())[:10]}" in region


def test_check_fails_on_an_edited_cell_and_the_render_writes_it_back(tmp_path: Path) -> None:
    page = tmp_path / "backbones.md"
    shutil.copy(PAGE, page)
    results_page = tmp_path / "results.md"
    results_page.write_text(results.render(), encoding="utf-8")
    args = ["--check", "--page", str(results_page), "--backbones-page", str(page)]
    assert results.main(args) == 0
    text = page.read_text(encoding="utf-8")
    cell = _row(_region(text), "SciFact")[2]
    page.write_text(text.replace(f"| {cell} |", "| 0.9999 (0.9999) |", 1), encoding="utf-8")
    assert results.main(args) == 1
    rendered = results_backbones.render_backbones(page, results.load_records(), REPO)
    assert rendered == PAGE.read_text(encoding="utf-8")
    # prose outside the marked part is the page's own
    assert "### Query prefix" in text
    page.write_text(text.replace("### Query prefix", "### The query prefix", 1), encoding="utf-8")
    assert results.main(args) == 0
    # without its markers the page cannot be rendered, and the message says what is missing
    page.write_text(text.replace(results_readme.end(results_backbones.PART), ""), encoding="utf-8")
    with pytest.raises(SystemExit, match="backbones-bge"):
        results.main(args)


def test_a_newer_baseline_line_is_rendered_with_its_test_recomputed(tmp_path: Path) -> None:
    """A new baseline run replaces the old one in the table; difference, p and significance are recomputed."""
    (tmp_path / results.EVAL_LOG).parent.mkdir(parents=True)
    shutil.copy(REPO / results.EVAL_LOG, tmp_path / results.EVAL_LOG)
    model, base = _newest(REPO)
    for rec in [*model.values(), *base.values()]:
        (tmp_path / rec["per_query_file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rec["per_query_file"], tmp_path / rec["per_query_file"])
    # a later SciFact run of the baseline, scoring every query 0.25 below the model (clipped at 0)
    old = base["scifact"]
    doc = json.loads((REPO / old["per_query_file"]).read_text(encoding="utf-8"))
    for qid, row in doc["per_query"].items():
        row["ndcg@10"] = max(0.0, _pq(REPO, model["scifact"])[qid]["ndcg@10"] - 0.25)
    new_file = "runs/eval/pq/bge-small.scifact.test.29991231T000000Z.json"
    (tmp_path / new_file).write_text(json.dumps(doc), encoding="utf-8")
    ndcg = sum(r["ndcg@10"] for r in doc["per_query"].values()) / len(doc["per_query"])
    new = {**old, "ndcg@10": ndcg, "per_query_file": new_file, "started": "2999-12-31T00:00:00"}
    with (tmp_path / results.EVAL_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(new) + "\n")

    page = tmp_path / "backbones.md"
    shutil.copy(PAGE, page)
    region = _region(results_backbones.render_backbones(page, results.load_records(tmp_path), tmp_path))
    res = paired_test(_pq(tmp_path, model["scifact"]), _pq(tmp_path, new), "ndcg@10")
    assert res.p_value < results_backbones.ALPHA
    cells = _row(region, "SciFact")
    assert cells[2] == f"{ndcg:.4f} ({old['recall@100']:.4f})"
    assert cells[3] == f"{res.mean_diff:+.4f} (p = {res.p_value:.2g}, n = {res.n})"
    assert f"comparisons): SciFact ({res.mean_diff:+.4f})." in region
    assert "No difference is significant" not in region
    assert f"(logged {min(r['started'] for r in base.values())[:10]} to 2999-12-31" in region
    assert _row(region, "Cranfield") == _row(_region(PAGE.read_text(encoding="utf-8")), "Cranfield")


def test_results_md_paired_table_uses_the_same_cell() -> None:
    """docs/results.md's default-against-baseline table prints the same paired cell (one renderer for both)."""
    records = results.load_records()
    a, b = records[("default", "scifact")], records[("bge-small", "scifact")]
    res = paired_test(_pq(REPO, a), _pq(REPO, b), "ndcg@10")
    cell = f"{res.mean_diff:+.4f} (p = {res.p_value:.2g}, n = {res.n})"
    assert results_backbones.paired_cell(results_backbones.paired_ndcg(a, b, REPO)) == cell
    assert cell in (REPO / "docs" / "results.md").read_text(encoding="utf-8")


def test_the_renderer_types_no_figure_and_stays_small() -> None:
    source = (REPO / "benchmarks" / "results_backbones.py").read_text(encoding="utf-8")
    assert FIGURE.findall(source) == []
    assert len(source.splitlines()) < 300
