"""Notebook 05 reads the logs committed under runs/qpp/: run outside a checkout of the repository, its first code
cell says that a checkout is needed (and where to run it), not a bare ``FileNotFoundError: 'runs/qpp/qpp.jsonl'``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def first_code_cell() -> str:
    cells = json.loads((REPO / "notebooks" / "05_uncertainty.ipynb").read_text())["cells"]
    code = next(c for c in cells if c["cell_type"] == "code")
    return "".join(code["source"]) if isinstance(code["source"], list) else str(code["source"])


def test_uncertainty_notebook_outside_a_checkout_says_a_checkout_is_needed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "script.py").write_text(first_code_cell())
    done = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: ") and "checkout" in last, done.stderr
    assert str(tmp_path) in last and "notebooks/" in last, last


def test_uncertainty_notebook_first_cell_finds_the_logs_from_notebooks_and_the_root() -> None:
    pytest.importorskip("matplotlib")
    code = first_code_cell() + "\nprint(RUNS, len(newest))"
    for where, runs in [(REPO / "notebooks", "../runs/qpp"), (REPO, "runs/qpp")]:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=where, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == runs, done.stdout
