"""A JSONL row that gives one field under two of its names is refused, naming the line and both fields.

``positives`` and ``positive``, ``query`` and ``anchor``, ``negatives`` and ``neg``, ``teacher_scores`` and
``pos_scores``: the loader took the first name it knew and dropped the other in silence (as it refuses a
``negatives`` list with ``negative_1``). Fails before the fix (every row loaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kl_retrievers.training import TrainingSet, read_jsonl

BASE: dict[str, Any] = {"query": "cat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"]}


@pytest.mark.parametrize(
    ("row", "fields"),
    [
        ({**BASE, "positive": "green tea and bread"}, "'positives' and 'positive'"),
        ({**BASE, "pos": ["green tea and bread"]}, "'positives' and 'pos'"),
        ({**BASE, "anchor": "tea"}, "'query' and 'anchor'"),
        ({**BASE, "neg": ["water on black rock"]}, "'negatives' and 'neg'"),
        ({**BASE, "negative": "water on black rock"}, "'negatives' and 'negative'"),
        (
            {**BASE, "teacher_scores": {"positives": [1.0], "negatives": [0.0]}, "pos_scores": [2.0]},
            "'teacher_scores' and 'pos_scores'",
        ),
    ],
)
def test_two_names_of_one_field_are_refused(tmp_path: Path, row: dict[str, Any], fields: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(BASE) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 2: ") as info:
        read_jsonl(path)
    assert fields in str(info.value), info.value
    with pytest.raises(ValueError, match=fields):
        TrainingSet.from_rows([row])


def test_one_name_per_field_and_null_aliases_still_load(tmp_path: Path) -> None:
    rows = [
        {"anchor": "cat", "positive": "the cat sat on the mat", "negative_1": "a dog in the sun"},
        {"query": "tea", "pos": ["green tea"], "neg": ["rock"], "pos_scores": [2.0], "neg_scores": [1.0]},
        {**BASE, "anchor": None, "positive": None, "teacher_scores": None},  # a null column of a table export
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ts = read_jsonl(path)
    assert len(ts.examples) == 3
