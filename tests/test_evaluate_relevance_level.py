"""The relevance level of the binary metrics (``relevance_level=``, ``kl-retrievers evaluate --relevance-level``).

``mrr@10``, ``recall@100`` and ``map@100`` count a document as relevant when its grade is at least the level:
1 by default (trec_eval's ``-l 1``, the published figures), 2 by TREC DL's convention for its 0-3 grades
(probe P6: BM25 on DL21 has MAP@100 0.3146 at level 1 and 0.1713 at level 2). The metrics at a level equal
ir_measures' ``rel=`` measures; the level is recorded in ``--json``, the ``--per-query`` meta and the table, and
``--compare`` refuses a file scored at another level. The ``--compare`` lines say that their means are over the
shared queries, and ``--json``'s compare object counts the unshared ones.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import ir_measures
import pytest

from conftest import make_tiny_encoder, write_tiny_beir
from kl_retrievers.cli import main
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import (
    check_relevance_level,
    evaluate_model,
    evaluate_run,
    load_per_query,
    save_per_query,
)

#: Grades 0-3, as TREC DL's: each query has a grade-1 document and one of grade 2 or more.
QRELS = {"q1": {"a": 1, "b": 2, "c": 0}, "q2": {"a": 3, "d": 1}, "q3": {"b": 1, "c": 2, "e": 1}}
RUN = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"d": 2.0, "a": 1.0}, "q3": {"b": 3.0, "f": 2.0, "c": 1.0}}
#: The reported metrics at relevance level 2, as ir_measures spells them (nDCG reads the grades).
AT_LEVEL_2 = {"ndcg@10": "nDCG@10", "mrr@10": "RR(rel=2)@10", "recall@100": "R(rel=2)@100", "map@100": "AP(rel=2)@100"}
BINARY = ("mrr@10", "recall@100", "map@100")
#: The tiny BEIR folder's qrels (queries "cat mat", "green tea", "moon") with grades 0-3.
TINY_QRELS = "1\td1\t1\n1\td3\t2\n2\td2\t3\n2\td1\t0\n3\td4\t1\n3\td2\t2\n"


def _ir_measures(qrels: Any, run: Any) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """ir_measures' rel=2 values: the aggregate and per query, under the reported names."""
    measures = {ir_measures.parse_measure(spec): name for name, spec in AT_LEVEL_2.items()}
    aggregate = {measures[m]: float(v) for m, v in ir_measures.calc_aggregate(list(measures), qrels, run).items()}
    per_query: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc(list(measures), qrels, run):
        per_query.setdefault(m.query_id, {})[measures[m.measure]] = float(m.value)
    return aggregate, per_query


def test_evaluate_run_at_level_2_equals_ir_measures_rel_2() -> None:
    aggregate, per_query = evaluate_run(QRELS, RUN, relevance_level=2)
    expected, expected_pq = _ir_measures(QRELS, RUN)
    assert aggregate == pytest.approx(expected)
    for qid, values in expected_pq.items():
        assert per_query[qid] == pytest.approx(values)
    at_1, _ = evaluate_run(QRELS, RUN)
    assert at_1["ndcg@10"] == pytest.approx(aggregate["ndcg@10"])  # nDCG reads the grades at any level
    for name in BINARY:  # grade 1 is relevant at level 1 only
        assert at_1[name] != pytest.approx(aggregate[name]), name
    assert evaluate_run(QRELS, RUN, relevance_level=1) == evaluate_run(QRELS, RUN)  # the default


@pytest.mark.parametrize(("level", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), (2.0, TypeError)])
def test_a_relevance_level_that_is_not_an_integer_of_at_least_1_is_refused(level: Any, error: type) -> None:
    with pytest.raises(error, match=r"relevance_level must be an integer >= 1"):
        evaluate_run(QRELS, RUN, relevance_level=level)
    with pytest.raises(error, match=repr(level) if error is TypeError else str(level)):
        check_relevance_level(level)


def test_evaluate_model_scores_and_records_the_level(tmp_path: Path) -> None:
    dataset = load_beir(write_tiny_beir(tmp_path / "beir", qrels=TINY_QRELS))
    result = evaluate_model(make_tiny_encoder(), dataset, relevance_level=2, use_cache=False, show_progress=False)
    assert result.info["relevance_level"] == 2 and result.summary()["relevance_level"] == 2
    assert result.aggregate == pytest.approx(_ir_measures(dataset.qrels, result.run)[0])
    default = evaluate_model(make_tiny_encoder(), dataset, use_cache=False, show_progress=False)
    assert default.info["relevance_level"] == 1


def test_the_cli_option_scores_at_the_level_and_records_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tiny_beir(tmp_path / "beir", qrels=TINY_QRELS)
    run_file, pq = tmp_path / "run.trec", tmp_path / "pq.json"
    argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--save-run", str(run_file)]
    assert main([*argv, "--json", "--relevance-level", "2", "--per-query", str(pq)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["relevance_level"] == 2
    qrels = {qid: docs for qid, docs in load_beir(root).qrels.items()}
    run: dict[str, dict[str, float]] = {}
    for row in ir_measures.read_trec_run(str(run_file)):
        run.setdefault(row.query_id, {})[row.doc_id] = row.score
    expected, _ = _ir_measures(qrels, run)
    assert {name: summary[name] for name in AT_LEVEL_2} == pytest.approx(expected, abs=1e-6)
    _, meta = load_per_query(pq)
    assert meta["relevance_level"] == 2
    assert main([*argv, "--json"]) == 0  # the default: level 1, as the published figures
    at_1 = json.loads(capsys.readouterr().out)
    assert at_1["relevance_level"] == 1 and at_1["mrr@10"] > summary["mrr@10"]
    assert main([*argv, "--relevance-level", "2"]) == 0
    assert "relevant: grade >= 2" in capsys.readouterr().out  # the table says it
    with pytest.raises(SystemExit) as exited:  # a usage error of the parser
        main([*argv, "--relevance-level", "0"])
    assert exited.value.code == 2 and "--relevance-level: must be >= 1" in capsys.readouterr().err


def test_relevance_level_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    # argparse wraps at the terminal's width and may break a line after a hyphen ("--relevance-" / "level 2")
    help_text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))
    assert "--relevance-level N" in help_text and "TREC DL's convention" in help_text
    assert "--relevance-level 2" in help_text


def test_compare_refuses_a_file_at_another_level_unless_compare_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = write_tiny_beir(tmp_path / "beir", qrels=TINY_QRELS)
    pq = tmp_path / "pq2.json"
    base = ["evaluate", str(root), "--baseline", "bm25", "--no-progress"]
    assert main([*base, "--relevance-level", "2", "--per-query", str(pq)]) == 0
    capsys.readouterr()
    assert main([*base, "--compare", str(pq)]) == 2  # this run at the default level 1
    err = capsys.readouterr().err
    assert "relevance level 2" in err and "this run at 1" in err and "--compare-any" in err
    caplog.set_level(logging.WARNING)
    assert main([*base, "--compare", str(pq), "--compare-any", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compare"]["relevance_level"] == 2
    assert "relevance level 2" in caplog.text
    assert main([*base, "--compare", str(pq), "--relevance-level", "2", "--json"]) == 0  # the same level
    assert json.loads(capsys.readouterr().out)["compare"]["tests"]


def test_compare_takes_a_file_from_before_the_option_as_level_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_beir(tmp_path / "beir", qrels=TINY_QRELS)
    old = tmp_path / "old.json"
    rows = {q: {"ndcg@10": 0.1 * i, "mrr@10": 0.2, "recall@100": 1.0, "map@100": 0.3} for i, q in enumerate("123")}
    save_per_query(old, rows, meta={"dataset": str(root), "split": "test", "depth": 100})
    base = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(old)]
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compare"]["relevance_level"] == 1
    assert main([*base, "--relevance-level", "2"]) == 2
    assert "from before --relevance-level" in capsys.readouterr().err


def test_compare_lines_say_their_means_are_over_the_shared_queries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_beir(tmp_path / "beir", qrels=TINY_QRELS)
    other = tmp_path / "other.json"
    rows = {q: {"ndcg@10": 0.5, "mrr@10": 0.5, "recall@100": 1.0, "map@100": 0.5} for q in ("1", "2", "x", "y")}
    save_per_query(other, rows, meta={"dataset": str(root), "split": "test", "depth": 100})
    base = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(other)]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "(means over the 2 shared queries)" in out
    assert "not compared: 1 queries only in this run, 2 only in the compared file" in out
    assert main([*base, "--json"]) == 0
    compare = json.loads(capsys.readouterr().out)["compare"]
    assert compare["shared_queries"] == 2
    assert compare["unshared_queries"] == {"this_run": 1, "compare_file": 2}
