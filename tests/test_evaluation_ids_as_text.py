"""Ids are compared as text by runs, qrels and TREC files, and a per-query file holds each query once.

* ``write_trec_run`` ranks tied scores by id descending as text (``"9"`` before ``"10"``), as ``evaluate_run``
  and ``trec_eval`` do, also for ``int`` ids (it sorted them as numbers, and mixed ``int`` and ``str`` ids
  raised ``TypeError``).
* Ids that are one id as text (``1`` and ``"1"``) are refused, naming them, by ``evaluate_run`` (it merged
  them silently) and ``write_trec_run`` (it wrote the id twice, a file ``trec_eval`` refuses).
* ``load_per_query`` refuses a query repeated in a ``.tsv`` / ``.csv`` table or a key repeated in one JSON
  object, naming it and its line (the last one won silently).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kl_retrievers.evaluation import evaluate_run, load_per_query, write_trec_run


def _ranked_ids(path: Path) -> list[str]:
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    assert [int(cols[3]) for cols in lines] == list(range(1, len(lines) + 1))
    return [cols[2] for cols in lines]


def test_tied_int_ids_are_written_in_the_order_evaluate_run_ranks_them(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec_run(path, {"q": {9: 1.0, 10: 1.0, 2: 3.0}})  # type: ignore[dict-item]
    assert _ranked_ids(path) == ["2", "9", "10"]  # ties by id descending as text: "9" > "10"
    # evaluate_run ranks "9" above "10" as well: only "10" relevant, it is second
    _, per_query = evaluate_run({"q": {"10": 1}}, {"q": {"9": 1.0, "10": 1.0}}, "mrr@10")
    assert per_query["q"]["mrr@10"] == 0.5


def test_mixed_int_and_str_ids_are_written(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec_run(path, {"q": {"a": 1.0, 1: 1.0, "b": 2.0}})  # type: ignore[dict-item]
    assert _ranked_ids(path) == ["b", "a", "1"]


@pytest.mark.parametrize(
    ("qrels", "run", "named"),
    [
        ({"q": {"1": 1}}, {"q": {1: 0.5, "1": 2.0}}, "run: query 'q', document ids 1 and '1'"),
        ({"q": {1: 1, "1": 0}}, {"q": {"1": 1.0}}, "qrels: query 'q', document ids 1 and '1'"),
        ({"1": {"d": 1}}, {1: {"d": 1.0}, "1": {"d": 2.0}}, "run: query ids 1 and '1'"),
        ({1: {"d": 1}, "1": {"d": 0}}, {"1": {"d": 1.0}}, "qrels: query ids 1 and '1'"),
    ],
)
def test_evaluate_run_refuses_ids_that_are_one_id_as_text(qrels: Any, run: Any, named: str) -> None:
    with pytest.raises(ValueError, match="one id as text") as raised:
        evaluate_run(qrels, run)
    assert named in str(raised.value)


@pytest.mark.parametrize(
    ("run", "named"),
    [
        ({"q": {1: 0.5, "1": 2.0}}, "run: query 'q', document ids 1 and '1'"),
        ({1: {"d": 1.0}, "1": {"e": 2.0}}, "run: query ids 1 and '1'"),
    ],
)
def test_write_trec_run_refuses_ids_that_are_one_id_as_text(tmp_path: Path, run: Any, named: str) -> None:
    path = tmp_path / "run.trec"
    with pytest.raises(ValueError, match="one id as text") as raised:
        write_trec_run(path, run)
    assert named in str(raised.value)
    assert not path.exists()  # nothing written


@pytest.mark.parametrize(("suffix", "sep"), [(".tsv", "\t"), (".csv", ",")])
def test_a_query_repeated_in_a_table_is_refused_naming_it_and_its_lines(tmp_path: Path, suffix: str, sep: str) -> None:
    path = tmp_path / f"pq{suffix}"
    rows = [["query_id", "ndcg@10"], ["q1", "0.5"], ["q2", "0.25"], ["q1", "0.75"]]
    path.write_text("".join(sep.join(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 4: query 'q1' repeats line 2"):
        load_per_query(path)


def test_a_query_repeated_in_a_json_file_is_refused_naming_it_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "pq.json"
    text = json.dumps({"meta": {"depth": 100}, "per_query": {"q1": {"ndcg@10": 0.5}, "q2": {"ndcg@10": 0.2}}}, indent=1)
    text = text.replace('"q2"', '"q1"')  # json.dumps cannot write a repeated key: the file is edited
    path.write_text(text, encoding="utf-8")
    second = [i for i, line in enumerate(text.splitlines(), start=1) if '"q1"' in line][1]
    with pytest.raises(ValueError, match=rf"pq.json, line {second}: query id 'q1' appears twice"):
        load_per_query(path)


def test_a_metric_repeated_in_one_json_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pq.json"
    path.write_text('{"meta": {}, "per_query": {"q1": {"ndcg@10": 0.5, "ndcg@10": 0.9}}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"key 'ndcg@10' appears twice in one JSON object"):
        load_per_query(path)


def test_a_query_id_that_repeats_a_metric_name_elsewhere_loads(tmp_path: Path) -> None:
    path = tmp_path / "pq.json"  # the same key in two objects is no repeat
    path.write_text('{"meta": {"q1": 1}, "per_query": {"q1": {"q1": 0.5}, "q2": {"q1": 0.2}}}', encoding="utf-8")
    per_query, meta = load_per_query(path)
    assert per_query == {"q1": {"q1": 0.5}, "q2": {"q1": 0.2}} and meta == {"q1": 1}
