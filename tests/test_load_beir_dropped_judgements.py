"""``load_beir(..., unknown_docs="drop")`` records on the dataset which judgements it dropped.

The judgements naming documents outside the corpus were only counted in a warning, so ``kl-retrievers evaluate
--unknown-docs drop`` read the qrels file a second time with the loader's private parser to tell which they were
(and reported nothing when two dropped grades of one pair conflicted). ``BeirDataset.dropped_judgements`` now
holds them: ``(query id, document id, grade)`` in file order, each once; empty with nothing dropped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from kl_retrievers.datasets import BeirDataset, load_beir


def _beir(root: Path, qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "text": f"text {i}"} for i in range(3)]
    queries = [{"_id": f"q{j}", "text": f"query {j}"} for j in range(3)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    return root


#: q0 keeps d0 and loses GHOST; q2 loses both of its judgements (X twice, once repeated, and GHOST graded 0)
QRELS = "q0\td0\t1\nq0\tGHOST\t2\nq1\td1\t1\nq2\tX\t1\nq2\tGHOST\t0\nq2\tX\t1\n"


def test_load_beir_drop_records_the_dropped_judgements_in_file_order_each_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _beir(tmp_path / "beir", QRELS)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.datasets"):
        ds = load_beir(root, unknown_docs="drop")
    assert ds.dropped_judgements == (("q0", "GHOST", 2), ("q2", "X", 1), ("q2", "GHOST", 0))
    assert ds.qrels == {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {}}
    assert "dropped 3 judgement(s)" in caplog.text  # the warning counts what the record lists
    # kept by a --sample-queries style replace, and by subset() for its queries
    assert dataclasses.replace(ds, qrels={"q0": ds.qrels["q0"]}).dropped_judgements == ds.dropped_judgements
    assert ds.subset(["q0", "q1"], ["d0", "d1"]).dropped_judgements == (("q0", "GHOST", 2),)


def test_conflicting_grades_of_a_dropped_pair_are_both_recorded(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir", "q0\td0\t1\nq1\tGHOST\t1\nq1\tGHOST\t2\n")
    assert load_beir(root, unknown_docs="drop").dropped_judgements == (("q1", "GHOST", 1), ("q1", "GHOST", 2))


def test_nothing_dropped_leaves_the_record_empty(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir", "q0\td0\t1\nq1\td1\t0\n")
    assert load_beir(root, unknown_docs="drop").dropped_judgements == ()
    assert load_beir(root).dropped_judgements == ()
    built = BeirDataset(Path("."), "test", {"d": {"text": "x"}}, {"q": "x"}, {"q": {"d": 1}})
    assert built.dropped_judgements == ()
