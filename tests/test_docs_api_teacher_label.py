"""docs/api.md's ``TEACHER_LABEL`` row quotes the whole value a training record names the teacher by."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_row_quotes_the_whole_label() -> None:
    tree = ast.parse((REPO / "kl_retrievers" / "training" / "teacher.py").read_text(encoding="utf-8"))
    (label,) = (  # read from the source: importing the module needs torch
        str(node.value.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "TEACHER_LABEL" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    )
    row = next(
        line for line in (REPO / "docs" / "api.md").read_text().splitlines() if line.startswith("| `TEACHER_LABEL`")
    )
    assert f'`"{label}"`' in row, (label, row)
