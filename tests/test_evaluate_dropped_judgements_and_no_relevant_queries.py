"""What ``kl-retrievers evaluate`` says about judgements that do not count as they seem to.

``--unknown-docs drop`` removes the judgements of documents outside the corpus from the qrels, so every figure
is relative to the judged documents in the corpus: the table says how many were dropped, and ``--json`` (with
the ``--per-query`` meta) records it under ``unknown_docs``. Queries without a judged document at the
``--relevance-level`` score 0 and count in the means: a warning says so in every mode, not only when QPP is
computed. QPP's target, ``ndcg@10``, reads the grades whatever the level: a query judged grade 1 only keeps its
place in the correlations at ``--relevance-level 2``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import write_pairs_beir
from kl_retrievers.cli import main

#: The judgements of the six queries (``q<i>`` asks for ``d<i>``'s words, :func:`conftest.write_pairs_beir`):
#: q0 loses one of its two grade-2 judgements, q5 both of its (one graded 0): GHOST and X are not in the corpus.
#: q1 is judged grade 1 only, q2 grade 0 only.
QRELS = "q0\td0\t2\nq0\tGHOST\t2\nq1\td1\t1\nq2\td2\t0\nq3\td3\t2\nq4\td4\t2\nq5\tGHOST\t1\nq5\tX\t0\n"


def _evaluate(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> str:
    capsys.readouterr()
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", *flags]) == 0
    return capsys.readouterr().out


def _json(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(_evaluate(capsys, root, "--json", *flags))
    return summary


def test_unknown_docs_drop_is_recorded_in_json_per_query_meta_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_pairs_beir(tmp_path / "beir", QRELS)
    pq = tmp_path / "pq.json"
    summary = _json(capsys, root, "--unknown-docs", "drop", "--per-query", str(pq))
    expected = {
        "mode": "drop",
        "dropped_judgements": 3,
        "dropped_relevant": 2,  # GHOST of q0 (2) and of q5 (1); X of q5 is graded 0
        "dropped_documents": 2,
        "queries_affected": 2,
        "queries_emptied": 1,
    }
    assert summary["unknown_docs"] == expected
    assert json.loads(pq.read_text(encoding="utf-8"))["meta"]["unknown_docs"] == expected
    # the relevant ones counted at the run's level
    at_2 = _json(capsys, root, "--unknown-docs", "drop", "--relevance-level", "2")
    assert at_2["unknown_docs"]["dropped_relevant"] == 1
    out = _evaluate(capsys, root, "--unknown-docs", "drop")
    footnote = [line for line in out.splitlines() if "--unknown-docs drop" in line]
    assert footnote == [
        "  --unknown-docs drop: 3 judgements of 2 documents outside the corpus (2 of grade >= 1) dropped from the "
        "qrels of 2 queries, 1 left with none (scoring 0): the metrics are relative to the judged documents in the "
        "corpus, not to the full qrels"
    ]


def test_unknown_docs_drop_counts_only_the_sampled_queries_and_nothing_when_nothing_is_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_pairs_beir(tmp_path / "beir", QRELS)
    sampled = _json(capsys, root, "--unknown-docs", "drop", "--sample-queries", "3", "--seed", "0")
    record = sampled["unknown_docs"]
    pq = tmp_path / "pq.json"
    _json(capsys, root, "--unknown-docs", "drop", "--sample-queries", "3", "--seed", "0", "--per-query", str(pq))
    drawn = set(json.loads(pq.read_text(encoding="utf-8"))["per_query"])
    lost = {"q0": 1, "q5": 2}  # the judgements each query lost
    assert record["dropped_judgements"] == sum(n for q, n in lost.items() if q in drawn)
    assert record["queries_affected"] == len(drawn & set(lost))
    assert 0 < record["dropped_judgements"] < 3  # the draw (seed 0: q3, q4, q5) holds some of them, not all
    clean = write_pairs_beir(tmp_path / "clean")  # each query judged its own document
    nothing = _json(capsys, clean, "--unknown-docs", "drop")
    assert nothing["unknown_docs"]["dropped_judgements"] == 0
    assert "--unknown-docs drop" not in _evaluate(capsys, clean, "--unknown-docs", "drop")  # no footnote
    assert "unknown_docs" not in _json(capsys, clean)  # the default, error: the qrels are whole


def test_unknown_docs_drop_whose_dropped_judgements_conflict_still_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the loader drops both grades of (q5, GHOST) without comparing them, and records both: the counts are known
    root = write_pairs_beir(
        tmp_path / "beir", "".join(f"q{j}\td{j}\t1\n" for j in range(5)) + "q5\tGHOST\t1\nq5\tGHOST\t2\n"
    )
    summary = _json(capsys, root, "--unknown-docs", "drop")
    assert summary["unknown_docs"] == {
        "mode": "drop",
        "dropped_judgements": 2,
        "dropped_relevant": 2,
        "dropped_documents": 1,
        "queries_affected": 1,
        "queries_emptied": 1,
    }
    out = _evaluate(capsys, root, "--unknown-docs", "drop")
    assert (
        "--unknown-docs drop: 2 judgements of 1 document outside the corpus (2 of grade >= 1) dropped from the "
        "qrels of 1 query, 1 left with none (scoring 0)" in out
    )


def _no_relevant_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "kl_retrievers.evaluate_cli" and "no judged document of grade" in r.getMessage()
    ]


@pytest.mark.parametrize("flags", [(), ("--save-run", "RUN")], ids=["table", "save-run"])
def test_queries_without_a_relevant_document_are_warned_about_in_every_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, flags: tuple[str, ...]
) -> None:
    root = write_pairs_beir(tmp_path / "beir", QRELS)
    flags = tuple(str(tmp_path / "run.trec") if f == "RUN" else f for f in flags)
    with caplog.at_level(logging.WARNING):
        _evaluate(capsys, root, "--unknown-docs", "drop", *flags)  # no --qpp, --json or --per-query
    assert _no_relevant_warnings(caplog) == [
        "2 of the 6 queries evaluated have no judged document of grade >= 1 (--relevance-level 1): q2, q5; every "
        "metric scores them 0, and the means count them (as trec_eval -c and BEIR do)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _evaluate(capsys, root, "--unknown-docs", "drop", "--relevance-level", "2")
    assert _no_relevant_warnings(caplog) == [
        "3 of the 6 queries evaluated have no judged document of grade >= 2 (--relevance-level 2): q1, q2, q5; "
        "mrr@10, recall@100 and map@100 score them 0 (ndcg@10 too, for the 2 with no grade > 0), and the means "
        "count them (as trec_eval -c and BEIR do)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _evaluate(capsys, write_pairs_beir(tmp_path / "graded"))
    assert _no_relevant_warnings(caplog) == []


def test_many_queries_without_a_relevant_document_are_counted_and_a_few_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = write_pairs_beir(tmp_path / "beir", "q0\td0\t1\n" + "".join(f"q{j}\td{j}\t0\n" for j in range(1, 6)))
    with caplog.at_level(logging.WARNING):
        _evaluate(capsys, root, "--relevance-level", "3")
    (message,) = _no_relevant_warnings(caplog)
    assert message.startswith("6 of the 6 queries evaluated have no judged document of grade >= 3")
    assert ": q0, q1, q2, q3, q4, ...; mrr@10, recall@100 and map@100 score them 0 (ndcg@10 too, for the 5" in message


def test_qpp_leaves_out_only_queries_without_a_grade_above_0_whatever_the_relevance_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # its target, ndcg@10, reads the grades: q1 (grade 1 only) has one at --relevance-level 2, so it stays
    root = write_pairs_beir(tmp_path / "beir", QRELS)
    pq = tmp_path / "pq.json"
    with caplog.at_level(logging.WARNING):
        summary = _json(capsys, root, "--unknown-docs", "drop", "--relevance-level", "2", "--per-query", str(pq))
    # said once, by the no-relevant warning (QPP's own note is logged at INFO, not warned a second time)
    assert "; the QPP correlations leave out the 2 with no grade > 0" in caplog.text
    assert "no relevant document (no grade > 0)" not in caplog.text
    per_query = json.loads(pq.read_text(encoding="utf-8"))["per_query"]
    assert per_query["q1"]["ndcg@10"] > 0 and per_query["q1"]["mrr@10"] == 0  # bm25 ranks d1 first for q1
    assert summary["qpp"]["excluded_no_relevant"] == 2  # q2 (grade 0) and q5 (no judgement left), not q1
    assert summary["qpp"]["predictors"]["max_score"]["n"] == 4
