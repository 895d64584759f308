"""docs/hybrid.md's held-out abstention curves and table are rendered from the newest logged run, and checked.

``python benchmarks/results.py --check`` fails when a figure of that part (or of the prose below it that quotes
the same run) differs from ``runs/abstention/abstention.jsonl``; each check runs on a copy of the pages.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
import results_readme  # noqa: E402


def _args(tmp_path: Path) -> tuple[list[str], Path]:
    page = tmp_path / "results.md"
    page.write_text(results.render(), encoding="utf-8")
    hybrid = tmp_path / "hybrid.md"
    shutil.copy(REPO / "docs" / "hybrid.md", hybrid)
    args = ["--check", "--page", str(page), "--hybrid-page", str(hybrid)]
    for flag, rel in (("--choosing", "docs/choosing-a-model.md"), ("--readme", "README.md")):
        shutil.copy(REPO / rel, tmp_path / Path(rel).name)
        args += [flag, str(tmp_path / Path(rel).name)]
    return args, hybrid


def _part(text: str) -> str:
    return text[text.index(results_readme.begin("abstention")) : text.index(results_readme.end("abstention"))]


def test_the_tables_are_the_newest_logged_run() -> None:
    rec = results_readme._abstention(REPO, results.DEFAULT_MODEL)
    part = _part((REPO / "docs" / "hybrid.md").read_text(encoding="utf-8"))
    at = rec["summary"]["hybrid"]["held_out_at_threshold"]
    assert rec["started"][:10] in part and rec["command"] in part
    row = next(line for line in part.splitlines() if line.startswith("| **hybrid calibrator"))
    assert f" {at['precision']:.3f} | {at['recall']:.3f} | **{at['f1']:.3f}** " in row
    assert "the earlier run" not in (REPO / "docs" / "hybrid.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    0.17       514     0.868", "    0.17       500     0.872"),  # a curve row, as in an older run
        ("| 0.677 (0.640-0.720) |", "| 0.665 (0.625-0.713) |"),  # the other seeds' range, as in an older run
    ],
)
def test_a_changed_figure_in_the_part_fails_check(tmp_path: Path, old: str, new: str) -> None:
    args, hybrid = _args(tmp_path)
    assert results.main(args) == 0
    text = hybrid.read_text(encoding="utf-8")
    assert _part(text).count(old) == 1, old
    hybrid.write_text(text.replace(old, new), encoding="utf-8")
    assert results.main(args) == 1
    assert results.main(args[1:]) == 0  # the normal render writes the logged figures back
    assert hybrid.read_text(encoding="utf-8") == (REPO / "docs" / "hybrid.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("is **0.672** (target", "is **0.664** (target"),  # the target paragraph above the part (an older run's)
        ("with an AUROC of 0.855 on", "with an AUROC of 0.854 on"),  # the notes below it (an older run's)
    ],
)
def test_the_prose_around_quotes_the_same_run(tmp_path: Path, old: str, new: str) -> None:
    args, hybrid = _args(tmp_path)
    text = hybrid.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    hybrid.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(SystemExit, match="does not quote the logs"):
        results.main(args)
