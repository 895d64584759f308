"""``docs/results.md`` is written by ``benchmarks/results.py`` from the logs committed under ``runs/``, and only so."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402

#: A float literal with three or more decimals: a figure typed into the renderer instead of read from a log.
FIGURE = re.compile(r"(?<![\w.])\d+\.\d{3,}(?![\w.])")


def test_page_is_what_the_logs_render() -> None:
    assert results.main(["--check"]) == 0, "docs/results.md is stale: run `python benchmarks/results.py`"


def test_renderer_types_no_figure_and_stays_small() -> None:
    source = (REPO / "benchmarks" / "results.py").read_text(encoding="utf-8")
    assert FIGURE.findall(source) == []
    assert len(source.splitlines()) < 300


def test_every_figure_on_the_page_comes_from_the_logs() -> None:
    """Each nDCG@10 / Recall@100 cell of the main table is a logged value (means are computed from them)."""
    page = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    records = results.load_records()
    assert {s for s, _ in records} >= {"bm25", "default"}, "the page needs at least BM25 and the default"
    logged = {results.num(r[m]) for r in records.values() for m in ("ndcg@10", "recall@100")}
    cells = re.findall(r"(\d\.\d{4}) \((\d\.\d{4})\)", page)
    assert len(cells) == len(records)
    assert {x for cell in cells for x in cell} <= logged


def test_check_fails_when_the_page_or_a_log_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "results.md"
    page.write_text(results.render(), encoding="utf-8")
    assert results.main(["--check", "--page", str(page)]) == 0
    edited = page.read_text(encoding="utf-8").replace("| SciFact | test |", "| SciFact | test (edited) |", 1)
    page.write_text(edited, encoding="utf-8")
    assert results.main(["--check", "--page", str(page)]) == 1

    # A copy of the logs with one figure changed renders a different page.
    for log in (results.EVAL_LOG, results.QPP_LOG):
        (tmp_path / log).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / log, tmp_path / log)
    lines = (tmp_path / results.EVAL_LOG).read_text(encoding="utf-8").splitlines()
    newest = json.loads(lines[-1])  # the newest line of its (system, collection): the one the page shows
    newest["ndcg@10"] = 0.125
    (tmp_path / results.EVAL_LOG).write_text("\n".join([*lines[:-1], json.dumps(newest)]) + "\n", encoding="utf-8")
    for rec in results.load_records(tmp_path).values():
        (tmp_path / rec["per_query_file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rec["per_query_file"], tmp_path / rec["per_query_file"])
    changed = results.render(tmp_path)
    assert changed != results.render() and "0.1250" in changed
