"""docs/choosing-a-model.md's size column is one measure for every model, taken from the folders when rendered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results_choosing  # noqa: E402


def test_each_size_is_the_sum_of_the_folders_file_sizes() -> None:
    text = (REPO / results_choosing.PAGE).read_text(encoding="utf-8")
    region = text[text.index(results_choosing.BEGIN) : text.index(results_choosing.END)]
    assert "sum of the sizes of the files" in text and "(`du -sh kl_retrievers" not in text
    for name in results_choosing.MODELS:
        folder = REPO / "kl_retrievers" / "pretrained" / name
        tracked = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=folder, capture_output=True, check=True)
        total = sum((folder / f).stat().st_size for f in tracked.stdout.decode().split("\0") if f)  # git's files only
        row = next(line for line in region.splitlines() if line.startswith(f"| `{name}`"))
        assert f"| {total / 1e6:.1f} MB" in row, (name, total, row)


def test_the_onnx_graph_is_measured_the_same_way() -> None:
    graph = sum(p.stat().st_size for p in (REPO / "kl_retrievers" / "pretrained" / "minilm-gauss-soup").rglob("*.onnx"))
    assert results_choosing.folder_size("minilm-gauss-soup").endswith(f"({graph / 1e6:.1f} MB of it the ONNX graph)")
    assert results_choosing.folder_size("no-such-model") == "not here"
