"""A training JSONL row's field that no reader knows (a misspelt ``negtives``, a foreign ``hard_negatives``) was
dropped in silence: the row trained on random pool negatives. It now warns once per file, at the user's line,
naming the unknown fields, the closest known name and the known ones; FlagEmbedding's ``prompt`` and ``type`` and
every documented alias stay silent. A row repeated exactly within one file counted twice in silence: one warning
per file now gives the count."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from kl_retrievers.training.data import TrainingSet, read_jsonl


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_misspelt_negatives_field_warns_once_naming_it_and_the_known_ones(tmp_path: Path) -> None:
    data = _write(
        tmp_path / "typo.jsonl",
        [
            {"query": "cat", "positives": ["the cat sat"], "negtives": ["a dog in the sun"]},
            {"query": "tea", "positives": ["green tea"], "hard_negatives": ["black rock"]},
            {"query": "sun", "positives": ["the sun"], "negtives": ["the moon"]},
        ],
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ts = read_jsonl(data)
    assert [len(ex.negatives) for ex in ts.examples] == [0, 0, 0]
    messages = [str(w.message) for w in seen]
    assert len(messages) == 1, messages
    message = messages[0]
    assert str(data) in message
    assert "'negtives' (line 1; did you mean 'negatives'?)" in message
    assert "'hard_negatives' (line 2; did you mean 'negatives'?)" in message
    assert "Known fields: query, anchor, positives, pos, positive, negatives, neg, negative" in message
    assert seen[0].filename == __file__  # the warning points at the user's line


@pytest.mark.parametrize(
    "row",
    [
        {
            "query": "q",
            "pos": ["a"],
            "neg": ["b"],
            "pos_scores": [1.0],
            "neg_scores": [0.0],
            "prompt": "p",
            "type": "t",
        },
        {"anchor": "q", "positive": "a", "negative": "b"},
        {"anchor": "q", "positive": "a", "negative_1": "b", "negative_2": "c"},
        {
            "query": "q",
            "positives": ["a"],
            "negatives": ["b"],
            "teacher_scores": {"positives": [1.0], "negatives": [0.0]},
        },
    ],
)
def test_documented_fields_and_aliases_are_silent(tmp_path: Path, row: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_jsonl(_write(tmp_path / "ok.jsonl", [row]))
        TrainingSet.from_rows([row])


def test_exact_repeats_of_a_row_warn_once_with_the_count(tmp_path: Path) -> None:
    row = {"query": "cat", "positives": ["the cat sat"]}
    other = {"query": "tea", "positives": ["green tea"]}
    reordered = {"positives": ["the cat sat"], "query": "cat"}  # the same JSON object, its fields in another order
    data = _write(tmp_path / "dup.jsonl", [row, other, reordered, row])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ts = read_jsonl(data)
    assert len(ts.examples) == 4  # each copy still counts, as written
    messages = [str(w.message) for w in seen if "repeat" in str(w.message)]
    assert messages == [
        f"{data}: 2 rows repeat an earlier row exactly (e.g. line 3 repeats line 1); each copy counts as one more "
        "example (drop the repeats to weigh each row once)"
    ]
    assert seen[0].filename == __file__  # a warning at the user's line, as the unknown fields' one


def test_distinct_rows_do_not_warn_about_repeats(tmp_path: Path) -> None:
    rows = [{"query": "cat", "positives": ["the cat sat"]}, {"query": "cat", "positives": ["the cat"]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_jsonl(_write(tmp_path / "ok.jsonl", rows))


@pytest.mark.parametrize(
    ("field", "hint"),
    [
        ("query_id", ""),
        ("pos_id", ""),
        ("neg_ids", ""),
        ("_id", ""),
        ("negative_0", "; the numbered negatives start at negative_1"),
        ("scores", "; a list [positive, negative_1, ...] as sentence-transformers' mine_hard_negatives writes? give "
                   "it as pos_scores [positive] and neg_scores [negative_1, ...]"),
        ("postives", "; did you mean 'positives'?"),
    ],
)  # fmt: skip
def test_the_unknown_field_hint_names_no_known_field_for_metadata_columns(
    tmp_path: Path, field: str, hint: str
) -> None:
    data = _write(tmp_path / "meta.jsonl", [{"query": "cat", "positives": ["the cat sat"], field: [1]}])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        read_jsonl(data)
    [message] = [str(w.message) for w in seen]
    assert f"{field!r} (line 1{hint})" in message
