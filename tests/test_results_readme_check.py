"""README's results table and docs/hybrid.md's benchmark tables are rendered from the logs and checked.

``python benchmarks/results.py --check`` fails when a figure of those parts was typed by hand (or went
stale); each check runs on a copy of the pages under ``tmp_path``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
import results_readme  # noqa: E402

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
        ("| bge-small-en-v1.5 int8 |", "0.7115"),  # from runs/eval/eval.jsonl
        ("| hybrid BM25 + default, adaptive", "0.5266"),  # a mean from runs/eval/hybrid.jsonl
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
        ("hybrid-default", "| SciFact | 300 |", "0.7249"),
        ("hybrid-default", "| Cranfield | 225 |", "0.00018"),  # a p-value
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
    assert len(source.splitlines()) < 300


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("with F1 0.660 while", "with F1 0.700 while"),  # the default hybrid's abstention F1, seed 0
        ("91.3%", "93.1%"),  # bge hybrid's share answered
        ("F1 0.414", "F1 0.441"),  # bge dense
        ("already gets\nF1 0.674", "already gets\nF1 0.5"),  # abstaining on everything
        ("(mean 0.5307)", "(mean 0.5370)"),  # the default's fixed convex weight, from runs/eval/hybrid.jsonl
    ],
)
def test_a_changed_readme_prose_figure_fails(tmp_path: Path, old: str, new: str) -> None:
    """The README's abstention figures and the convex/adaptive means are quoted from the logs, or results.py stops."""
    args, readme, _ = _pages(tmp_path)
    text = readme.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    readme.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(SystemExit, match="does not quote the logs"):
        results.main(args)
