"""What ``evaluate`` and its library functions print says what it means, without a second reading.

* ``evaluate --help``: which tools read from a ``--save-run`` file the metrics evaluate reports (trec_eval,
  pytrec_eval and ir_measures' nDCG@10, R@100 and AP@100), and that ir_measures' RR@10 breaks ties the other
  way: checked against ir_measures itself on a collection of tied documents.
* The QPP table marks a predictor correlated negated (``-uncertainty``) and says so in a last line.
* ``--compare`` says why a p is 0 or 1 without a t distribution (no variation), in the text output too.
* Counts of one read in the singular ("1 judged query has ...").
* The calibration metrics name the first bad probability or label, its index and how many are bad.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from conftest import write_beir
from kl_retrievers import qpp
from kl_retrievers.calibration import expected_calibration_error, reliability_table
from kl_retrievers.cli import build_parser, main
from kl_retrievers.evaluation import evaluate_run, save_per_query

ir_measures = pytest.importorskip("ir_measures")


def _help(command: str) -> str:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr,index]
    return " ".join(sub.format_help().split())


# ---------------------------------------------------------------- 1. the run file under other evaluators


#: q1 judges two of twelve identical documents (one score for all), t00 and t05; q2 judges x0, which it alone matches.
TIED_QRELS = {"q1": {"t00": 1, "t05": 2}, "q2": {"x0": 1}}


def _tied_collection(root: Path) -> Path:
    corpus = [{"_id": f"t{i:02d}", "title": "", "text": "apple banana orchard"} for i in range(12)]
    corpus.append({"_id": "x0", "title": "", "text": "cars and roads"})
    queries = [{"_id": "q1", "text": "apple orchard"}, {"_id": "q2", "text": "cars"}]
    lines = "".join(f"{q}\t{d}\t{g}\n" for q, docs in TIED_QRELS.items() for d, g in docs.items())
    return write_beir(root, corpus, queries, lines)


def test_help_says_which_evaluators_read_the_run_file_as_evaluate_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help("evaluate")
    assert "ir_measures (nDCG@10, R@100 and AP@100, which it computes with pytrec_eval)" in text
    assert "exactly the ndcg@10, recall@100 and map@100 evaluate reports, in every mode" in text
    assert "trec_eval's recip_rank has no cutoff" in text
    assert "ir_measures' RR@10 (its msmarco provider) orders tied documents by id ascending" in text
    assert "never with --hybrid, whose scores do not tie" in text

    data = _tied_collection(tmp_path / "ties")
    run_file = tmp_path / "bm25.trec"
    argv = ["evaluate", str(data), "--baseline", "bm25", "--json", "--no-progress", "--save-run", str(run_file)]
    assert main(argv) == 0
    reported = json.loads(capsys.readouterr().out)
    qrels = TIED_QRELS
    run = list(ir_measures.read_trec_run(str(run_file)))
    measures = {"ndcg@10": "nDCG@10", "recall@100": "R@100", "map@100": "AP@100", "mrr@10": "RR@10"}
    theirs = {
        ours: ir_measures.calc_aggregate([ir_measures.parse_measure(m)], qrels, run) for ours, m in measures.items()
    }
    values = {ours: next(iter(agg.values())) for ours, agg in theirs.items()}
    for name in ("ndcg@10", "recall@100", "map@100"):  # what the help says agrees, agrees
        assert values[name] == pytest.approx(reported[name], abs=1e-6), name
    # the caveat is real: t11 ... t00 in the file; ir_measures' RR@10 reads t00 first
    assert reported["mrr@10"] == pytest.approx((1 / 7 + 1.0) / 2, abs=1e-6)  # q1: t05 at rank 7; q2: x0 first
    assert values["mrr@10"] == pytest.approx(1.0)


# ---------------------------------------------------------------- 3. the QPP table's negated rows


def test_the_qpp_table_marks_the_negated_uncertainty_row() -> None:
    ndcg = {f"q{i}": i / 10 for i in range(10)}
    raw = {q: -v for q, v in ndcg.items()}  # higher uncertainty, worse query: a good predictor
    rep = qpp.qpp_report(ndcg, {"uncertainty": raw, "gap12": ndcg}, n_boot=0)
    lines = qpp.format_qpp(rep).splitlines()
    (row,) = [line for line in lines if "uncertainty" in line.split()[0]]
    assert row.split()[:3] == ["-uncertainty", "tau", "+1.000"]  # the sign of the negated values' correlation
    assert [line.split()[0] for line in lines if line.split()[0] == "gap12"] == ["gap12"]  # direction +1: as is
    assert lines[-1].strip().startswith("-name: correlated negated")
    assert "uncertainty" in _help("evaluate") and "its row reads -uncertainty" in _help("evaluate")


def test_the_qpp_table_has_no_negation_note_without_a_negated_row() -> None:
    ndcg = {f"q{i}": i / 10 for i in range(10)}
    rep = qpp.qpp_report(ndcg, {"gap12": ndcg, "uncertainty": dict.fromkeys(ndcg, 0.0)}, n_boot=0)
    text = qpp.format_qpp(rep)
    assert "-name" not in text and "-uncertainty" not in text  # uncertainty is listed as missing, not correlated


# ---------------------------------------------------------------- 4. --compare without variation


def test_compare_says_why_p_is_0_when_every_difference_is_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_beir(
        tmp_path / "data",
        [{"_id": "d1", "title": "", "text": "cat mat"}, {"_id": "d2", "title": "", "text": "green tea"}],
        [{"_id": "q1", "text": "cat mat"}, {"_id": "q2", "text": "green tea"}],
        "q1\td1\t1\nq2\td2\t1\n",
    )
    argv = ["evaluate", str(data), "--baseline", "bm25", "--no-progress"]
    assert main([*argv, "--per-query", str(tmp_path / "pq.json")]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "pq.json").read_text(encoding="utf-8"))
    lower = {q: {m: v - 0.25 for m, v in row.items()} for q, row in doc["per_query"].items()}
    save_per_query(tmp_path / "lower.json", lower, meta=doc["meta"])
    save_per_query(tmp_path / "same.json", doc["per_query"], meta=doc["meta"])
    assert main([*argv, "--compare", str(tmp_path / "lower.json")]) == 0
    out = capsys.readouterr().out
    assert "p = 0 (no variation: every shared query differs by +0.2500)" in out, out
    assert main([*argv, "--compare", str(tmp_path / "same.json")]) == 0
    assert "p = 1 (no variation: no query differs)" in capsys.readouterr().out


# ---------------------------------------------------------------- 5. counts of one


def test_one_judged_query_without_results_reads_in_the_singular(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluation"):
        evaluate_run({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}, "q9": {"a": 1.0}}, "ndcg@10")
    assert "1 judged query has no results in the run; it scores 0" in caplog.text
    assert "1 run query has no judgements and is ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluation"):
        evaluate_run({"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"b": 1}}, {"q1": {"a": 1.0}}, "ndcg@10")
    assert "2 judged queries have no results in the run; they score 0" in caplog.text


def test_qpp_counts_of_one_read_in_the_singular() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rep = qpp.qpp_report({"q1": 0.5}, {"gap12": {"q1": 1.0}}, n_boot=0)
    messages = [str(w.message) for w in seen]
    assert any(m.startswith("only 1 judged query (fewer than 10)") for m in messages), messages
    assert rep["missing"]["gap12"] == "only 1 judged query has a value"
    ndcg = {f"q{i}": i / 20 for i in range(20)}
    with pytest.warns(UserWarning, match=r"1 of the 20 judged queries has no relevant document .*: its ndcg@10 is"):
        rep = qpp.qpp_report(ndcg, {"gap12": ndcg}, no_relevant=["q0"], n_boot=0)
    assert "  1 judged query without a relevant document left out" in qpp.format_qpp(rep).splitlines()


# ---------------------------------------------------------------- 6. calibration's bad values


@pytest.mark.parametrize("metric", [expected_calibration_error, reliability_table])
def test_calibration_metrics_name_the_first_bad_probability(metric: object) -> None:
    with pytest.raises(
        ValueError, match=r"^probabilities must be finite and in \[0, 1\]; 2 of 4 are not, the first at index 1: 1\.5$"
    ):
        metric([0.2, 1.5, 0.3, float("nan")], [0, 1, 1, 0])  # type: ignore[operator]


def test_calibration_metrics_name_the_first_bad_label() -> None:
    with pytest.raises(
        ValueError, match=r"^labels must be finite and in \[0, 1\]; 1 of 3 is not, the first at index 2: -1\.0$"
    ):
        expected_calibration_error([0.2, 0.5, 0.3], [0, 1, -1])
