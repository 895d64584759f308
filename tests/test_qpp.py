"""Tests for query performance prediction (kl_retrievers.qpp) and its place in `evaluate --json`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import make_tiny_encoder
from kl_retrievers.evaluation import add_evaluate_command, load_per_query, run_evaluate
from kl_retrievers.gaussian import Gaussians, neg_kl_matrix
from kl_retrievers.qpp import (
    PREDICTORS,
    LexicalStats,
    _kendall_weighted,
    corpus_mean_scores,
    correlation,
    gaussian_query_stats,
    post_retrieval_predictors,
    qpp_for_run,
    qpp_report,
    uncertainty_predictor,
)

# ---------------------------------------------------------------------------- correlations


def _data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = np.clip(0.5 + 0.3 * x + rng.normal(scale=0.3, size=n), 0, 1).round(1)  # ties, like nDCG
    x[:5] = 0.0  # ties in the predictor too
    return x, y


def test_tau_and_pearson_match_scipy() -> None:
    x, y = _data()
    out = correlation(x, y, n_boot=0)
    assert out["tau"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert out["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert out["n"] == 60 and out["tau_ci"] is None and out["pearson_ci"] is None
    assert correlation(-x, y, n_boot=0)["tau"] == pytest.approx(-out["tau"])
    # a constant predictor has no correlation: None, not NaN (JSON has no NaN)
    const = correlation(np.ones(20), y[:20], n_boot=50)
    assert const["tau"] is None and const["pearson"] is None and const["tau_ci"] is None


def test_bootstrap_interval_contains_estimate_and_is_seeded() -> None:
    x, y = _data(80)
    a = correlation(x, y, n_boot=300, seed=3)
    b = correlation(x, y, n_boot=300, seed=3)
    c = correlation(x, y, n_boot=300, seed=4)
    assert a == b
    assert a["tau_ci"] != c["tau_ci"]
    for name in ("tau", "pearson"):
        lo, hi = a[f"{name}_ci"]
        assert lo < a[name] < hi
        assert -1 <= lo < hi <= 1


def test_weighted_bootstrap_tau_equals_scipy_on_each_resample() -> None:
    x, y = _data(40, seed=1)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 40, size=(7, 40))
    counts = np.zeros((7, 40))
    np.add.at(counts, (np.repeat(np.arange(7), 40), idx.ravel()), 1.0)
    fast = _kendall_weighted(x, y, counts)
    slow = [stats.kendalltau(x[i], y[i]).statistic for i in idx]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_correlation_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        correlation([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="position 2"):
        correlation([1.0, 2.0, math.nan] + [0.0] * 10, list(range(13)))


def test_fewer_than_ten_queries_warn_but_are_computed() -> None:
    with pytest.warns(UserWarning, match="meaningless"):
        out = correlation([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.5, 0.4], n_boot=20)
    assert out["tau"] == pytest.approx(0.8) and out["n"] == 5
    with pytest.warns(UserWarning, match="only 3 judged queries"):
        rep = qpp_report({"a": 0.1, "b": 0.5, "c": 0.9}, {"max_score": {"a": 1.0, "b": 2.0, "c": 3.0}}, n_boot=10)
    assert rep["predictors"]["max_score"]["tau"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ten queries: no warning
        correlation(list(range(10)), list(range(10)), n_boot=5)


# ---------------------------------------------------------------------------- predictors


def test_post_retrieval_predictors_hand_made_run() -> None:
    run = {
        "q1": {"a": -1.0, "b": -2.0, "c": -4.0},  # scores in any order
        "q2": {"x": -3.0, "y": -0.5},
        "q3": {"only": -1.5},
        "q4": {},
    }
    out = post_retrieval_predictors(run, reference={"q1": -5.0, "q2": -2.0, "q3": -3.0, "q4": -1.0}, wig_k=2)
    assert out["max_score"] == {"q1": -1.0, "q2": -0.5, "q3": -1.5}
    assert out["gap12"] == {"q1": 1.0, "q2": 2.5}  # q3 has one result, q4 none
    assert out["wig"]["q1"] == pytest.approx(-1.5 + 5.0) and out["wig"]["q2"] == pytest.approx(-1.75 + 2.0)
    assert out["nqc"]["q1"] == pytest.approx(np.std([-1.0, -2.0, -4.0]) / 5.0)
    assert out["nqc"]["q3"] == 0.0
    # without a reference: the mean of the retrieved scores
    own = post_retrieval_predictors({"q": {"a": 3.0, "b": 1.0}}, wig_k=1)
    assert own["wig"]["q"] == pytest.approx(3.0 - 2.0) and own["nqc"]["q"] == pytest.approx(1.0 / 2.0)
    with pytest.raises(ValueError, match=r"query index 0 \(id 'q'\)"):
        post_retrieval_predictors({"q": {"a": math.nan}})
    with pytest.raises(ValueError, match="nqc of query index 0"):
        post_retrieval_predictors({"q": {"a": 1.0}}, reference={"q": 0.0})
    with pytest.raises(ValueError, match="no reference score for query index 1"):
        post_retrieval_predictors({"p": {"a": 1.0}, "q": {"a": 1.0}}, reference={"p": 1.0})


def test_uncertainty_and_corpus_reference() -> None:
    rng = np.random.default_rng(0)
    q = Gaussians(rng.normal(size=(4, 3)), np.exp(rng.normal(size=(4, 3))))
    d = Gaussians(rng.normal(size=(9, 3)), np.exp(rng.normal(size=(9, 3))))
    unc = uncertainty_predictor(q, ["a", "b", "c", "d"])
    assert list(unc.values()) == pytest.approx(np.log(q.var).mean(axis=1).tolist())
    ref = corpus_mean_scores(q, d)
    np.testing.assert_allclose(ref, neg_kl_matrix(q, d).mean(axis=1), rtol=1e-12)
    sq = -((q.mean[:, None, :] - d.mean[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(corpus_mean_scores(q, d, means_only=True), sq.mean(axis=1), rtol=1e-12)
    both = gaussian_query_stats(q.astype(np.float32), d, ["a", "b", "c", "d"])
    assert set(both) == {"uncertainty", "corpus_score"} and list(both["corpus_score"]) == ["a", "b", "c", "d"]


def test_non_finite_uncertainty_names_the_query_index() -> None:
    var = np.ones((3, 2))
    var[2, 1] = np.inf
    bad = Gaussians(np.zeros((3, 2)), var, validate=False)
    with pytest.raises(ValueError, match=r"query index 2 \(id 'z'\).*finite"):
        uncertainty_predictor(bad, ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"uncertainty of query index 1 \(id 'b'\)"):
        qpp_report({"a": 0.1, "b": 0.2}, {"uncertainty": {"a": 0.0, "b": math.inf}}, n_boot=0)


def test_lexical_predictors_hand_computed() -> None:
    corpus = ["the cat sat", "a dog barked", "the cat ran", "cat cat cat"]
    lex = LexicalStats(corpus, stopwords=["the", "a"])
    assert lex.df["cat"] == 3 and lex.cf["cat"] == 5 and "the" not in lex.df
    idf_cat, idf_dog = math.log(1 + 1.5 / 3.5), math.log(1 + 3.5 / 1.5)
    scq_cat, scq_dog = (1 + math.log(5)) * math.log(1 + 4 / 3), (1 + 0.0) * math.log(1 + 4 / 1)
    out = lex.predictors(["q1", "q2", "q3"], ["The Cat and the DOG", "unicorn", "the"])
    assert out["avg_idf"]["q1"] == pytest.approx((idf_cat + idf_dog) / 2)  # "and" is unknown: ignored
    assert out["scq"]["q1"] == pytest.approx((scq_cat + scq_dog) / 2)
    assert out["avg_idf"]["q2"] == 0.0 and out["scq"]["q3"] == 0.0
    default = LexicalStats(corpus)  # bm25s' English stop words
    assert "the" not in default.df and "a" not in default.df


def test_qpp_for_run_orients_uncertainty_and_reports_missing() -> None:
    qids = [f"q{i}" for i in range(12)]
    ndcg = {q: i / 11 for i, q in enumerate(qids)}
    run = {q: {"a": -5.0 + i * 0.1, "b": -6.0, "c": -7.0 + 0.05 * i} for i, q in enumerate(qids)}
    unc = {q: -0.01 * i for i, q in enumerate(qids)}  # the best queries are the least uncertain
    report, values = qpp_for_run(
        run,
        {q: {"ndcg@10": v} for q, v in ndcg.items()},
        query_ids=qids,
        query_texts=["cat"] * 12,
        corpus_texts=["cat dog", "dog"],
        query_stats={"uncertainty": unc, "corpus_score": {q: -10.0 for q in qids}},
        n_boot=20,
    )
    assert report["reference"] == "corpus_mean_score"
    assert report["predictors"]["uncertainty"]["tau"] == pytest.approx(1.0)  # -uncertainty predicts nDCG
    assert report["predictors"]["uncertainty"]["direction"] == -1
    assert report["predictors"]["max_score"]["tau"] == pytest.approx(1.0)
    assert report["predictors"]["avg_idf"]["tau"] is None  # every query has the same terms
    assert values["uncertainty"] == unc and set(values) == set(PREDICTORS)
    report, values = qpp_for_run(
        run,
        {q: {"ndcg@10": v} for q, v in ndcg.items()},
        query_ids=qids,
        query_texts=["cat"] * 12,
        missing_uncertainty="no variances here",
        n_boot=0,
    )
    assert report["missing"]["uncertainty"] == "no variances here" and "uncertainty" not in report["predictors"]
    assert report["reference"] == "retrieved_mean_score" and "avg_idf" in report["missing"]


def test_qpp_report_orients_other_predictors() -> None:
    ndcg = {f"q{i}": i / 10 for i in range(10)}
    disagreement = {q: -v for q, v in ndcg.items()}  # high on the hard queries
    rep = qpp_report(ndcg, {"disagreement": disagreement}, directions={"disagreement": -1}, n_boot=0)
    entry = rep["predictors"]["disagreement"]
    assert entry["tau"] == pytest.approx(1.0) and entry["direction"] == -1 and entry["kind"] == "other"
    assert qpp_report(ndcg, {"disagreement": disagreement}, n_boot=0)["predictors"]["disagreement"]["tau"] < 0
    with pytest.raises(ValueError, match="direction of 'x'"):
        qpp_report(ndcg, {"x": ndcg}, directions={"x": 0}, n_boot=0)


# ---------------------------------------------------------------------------- evaluate --json

CORPUS = [
    ("d0", "the cat sat on the mat"),
    ("d1", "a dog and a cat"),
    ("d2", "the sun and the moon"),
    ("d3", "green tea and bread"),
    ("d4", "black rock in the water"),
    ("d5", "a star over the sea"),
    ("d6", "hello world of text"),
    ("d7", "the bee and the tea"),
]


def _tiny_beir(root: Path, n_queries: int = 12) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in CORPUS)
    )
    words = "cat dog sun moon tea bread rock water star sea hello bee".split()
    queries = [
        {"_id": f"q{i}", "text": f"the {words[i % len(words)]} {words[(3 * i) % len(words)]}"} for i in range(n_queries)
    ]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    qrels = "".join(f"q{i}\td{i % len(CORPUS)}\t1\n" for i in range(n_queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return root


def _evaluate(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kl-retrievers")
    add_evaluate_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *argv])


def test_evaluate_json_has_qpp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tiny_beir(tmp_path / "beir")
    model = make_tiny_encoder().save_pretrained(tmp_path / "model")
    pq = tmp_path / "pq.json"
    argv = [str(root), "--model", str(model), "--json", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert run_evaluate(_evaluate([*argv, "--per-query", str(pq)])) == 0
    summary = json.loads(capsys.readouterr().out)
    qpp = summary["qpp"]
    assert qpp["metric"] == "ndcg@10" and qpp["reference"] == "corpus_mean_score" and qpp["missing"] == {}
    assert set(qpp["predictors"]) == set(PREDICTORS)
    for name, entry in qpp["predictors"].items():
        assert {"tau", "tau_ci", "pearson", "pearson_ci", "n", "kind", "direction"} <= set(entry), name
        assert entry["n"] == 12, name
    unc = qpp["predictors"]["uncertainty"]
    assert unc["n"] == 12 and unc["kind"] == "pre" and unc["direction"] == -1
    assert unc["tau_ci"][0] <= unc["tau"] <= unc["tau_ci"][1]
    per_query, meta = load_per_query(pq)
    assert len(per_query) == 12 and all(math.isfinite(v["uncertainty"]) for v in per_query.values())
    assert {"ndcg@10", "uncertainty", "qpp.max_score", "qpp.avg_idf"} <= set(per_query["q0"])
    assert meta["qpp"]["predictors"]["uncertainty"]["tau"] == unc["tau"]

    # a baseline has no variances: the other predictors, and why the uncertainty is missing
    assert run_evaluate(_evaluate([str(root), "--baseline", "bm25", "--json", "--no-progress"])) == 0
    base = json.loads(capsys.readouterr().out)["qpp"]
    assert "uncertainty" not in base["predictors"] and "bm25" in base["missing"]["uncertainty"]
    assert {"max_score", "nqc", "gap12", "wig", "avg_idf", "scq"} <= set(base["predictors"])
    assert base["reference"] == "retrieved_mean_score"


def test_evaluate_few_queries_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tiny_beir(tmp_path / "beir", n_queries=4)
    with pytest.warns(UserWarning, match="meaningless"):
        assert run_evaluate(_evaluate([str(root), "--baseline", "bm25", "--json", "--no-progress"])) == 0
    report = json.loads(capsys.readouterr().out)["qpp"]
    assert report["predictors"]["max_score"]["n"] == 4


def test_fitted_predictor_combines_the_run_predictors() -> None:
    from kl_retrievers.calibration import ConfidenceCalibrator
    from kl_retrievers.qpp import fitted_predictor

    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(40)]
    gap, unc = rng.random(40), rng.normal(size=40)
    ndcg = np.clip(gap + 0.1 * rng.normal(size=40), 0, 1)
    model = ConfidenceCalibrator(["uncertainty", "gap12"]).fit(np.column_stack([unc, gap]), ndcg)
    values = {"uncertainty": dict(zip(ids, unc, strict=True)), "gap12": dict(zip(ids[1:], gap[1:], strict=True))}
    out = fitted_predictor(values, model)
    assert set(out) == set(ids[1:])  # q0 has no gap12: no combined value either
    assert all(0.0 <= v <= 1.0 for v in out.values())
    rep = qpp_report(dict(zip(ids, ndcg, strict=True)), {"combined": out}, n_boot=0)
    assert rep["predictors"]["combined"]["tau"] > 0.5
    with pytest.raises(ValueError, match=r"needs predictor\(s\) \['gap12'\]"):
        fitted_predictor({"uncertainty": values["uncertainty"]}, model)


# ---------------------------------------------------------------------------- audited defects (each failed before)


def _graded_run(n: int = 40, seed: int = 0) -> tuple[list[str], dict[str, dict[str, float]], dict[str, float]]:
    """Query ids, a run whose top score rises with the query's nDCG@10, and that nDCG@10."""
    rng = np.random.default_rng(seed)
    qids = [f"q{i}" for i in range(n)]
    ndcg = {q: float(v) for q, v in zip(qids, rng.random(n), strict=True)}
    run = {q: {f"d{j}": -1.0 + ndcg[q] - 0.1 * j - 0.01 * j * rng.random() for j in range(20)} for q in qids}
    return qids, run, ndcg


def test_queries_without_a_relevant_document_are_left_out_of_the_qpp_target() -> None:
    qids, run, ndcg = _graded_run()
    hopeless = qids[::3]  # judged, but every grade is 0: nDCG@10 is 0 whatever the predictor says
    qrels = {q: {"d0": 0 if q in hopeless else 1} for q in qids}
    per_query = {q: {"ndcg@10": 0.0 if q in hopeless else ndcg[q]} for q in qids}
    with pytest.warns(UserWarning, match=rf"{len(hopeless)} of the 40 judged queries have no relevant document"):
        report, _ = qpp_for_run(run, per_query, query_ids=qids, query_texts=["x"] * 40, qrels=qrels, n_boot=0)
    assert report["excluded_no_relevant"] == len(hopeless)
    entry = report["predictors"]["max_score"]
    assert entry["n"] == 40 - len(hopeless) and entry["tau"] == pytest.approx(1.0)  # the zeros no longer drag it down
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        unknown, _ = qpp_for_run(run, per_query, query_ids=qids, query_texts=["x"] * 40, n_boot=0)
    assert unknown["excluded_no_relevant"] is None and unknown["predictors"]["max_score"]["n"] == 40


def test_a_constant_predictor_says_why_it_has_no_correlation() -> None:
    ndcg = {f"q{i}": i / 12 for i in range(12)}
    unit = {q: 0.0 for q in ndcg}  # a unit-variance model: the same uncertainty for every query
    tenths = {q: 0.1 for q in ndcg}  # equal values whose float mean is not exactly 0.1
    rep = qpp_report(ndcg, {"uncertainty": unit, "max_score": tenths}, n_boot=50)
    for name in ("uncertainty", "max_score"):
        assert rep["missing"][name].startswith("constant (") and "over the 12 judged queries" in rep["missing"][name]
        assert rep["predictors"][name]["tau"] is None and rep["predictors"][name]["pearson"] is None, name
        assert rep["predictors"][name]["tau_ci"] is None and rep["predictors"][name]["bootstrap_valid"] == 0
    assert "fixed variances" in rep["missing"]["uncertainty"]
    flat = qpp_report({q: 0.5 for q in ndcg}, {"gap12": {q: float(i) for i, q in enumerate(ndcg)}}, n_boot=0)
    assert flat["missing"]["gap12"].startswith("ndcg@10 is constant")


def test_the_report_records_the_depth_that_nqc_and_wig_read(recwarn: pytest.WarningsRecorder) -> None:
    qids, run, ndcg = _graded_run(12)
    per_query = {q: {"ndcg@10": v} for q, v in ndcg.items()}
    full, _ = qpp_for_run(run, per_query, query_ids=qids, query_texts=["x"] * 12, depth=100, n_boot=0)
    assert (full["depth"], full["nqc_k"], full["wig_k"]) == (100, 20, 5)  # the lists hold 20 scores
    assert not [w for w in recwarn if "fewer than NQC" in str(w.message)]
    shallow = {q: dict(list(docs.items())[:3]) for q, docs in run.items()}
    with pytest.warns(UserWarning, match="3 documents per query, fewer than NQC's 100"):
        rep, _ = qpp_for_run(shallow, per_query, query_ids=qids, query_texts=["x"] * 12, depth=3, n_boot=0)
    assert (rep["depth"], rep["nqc_k"], rep["wig_k"]) == (3, 3, 3)
    one = {q: dict(list(docs.items())[:1]) for q, docs in run.items()}
    with pytest.warns(UserWarning, match="fewer than NQC"):
        rep, _ = qpp_for_run(one, per_query, query_ids=qids, query_texts=["x"] * 12, n_boot=0)
    assert rep["depth"] == 1 and "depth 1" in rep["missing"]["nqc"] and "depth <= 5" in rep["missing"]["wig"]
    definition = PREDICTORS["nqc"]["definition"]
    assert "min(100, depth)" in definition and "all its retrieved" in definition


def test_bootstrap_reports_its_valid_resamples_and_refuses_a_thin_interval() -> None:
    x, y = _data(60)
    ok = correlation(x, y, n_boot=200)
    assert ok["bootstrap_valid"] == 200 and ok["tau_ci"] is not None
    nearly = np.zeros(12)
    nearly[0] = 1.0  # about a third of the resamples miss the one distinct value: no correlation there
    out = correlation(nearly, np.arange(12.0), n_boot=1000)
    assert out["tau"] is not None and 0 < out["bootstrap_valid"] < 900
    assert out["tau_ci"] is None and out["pearson_ci"] is None
    ndcg = {f"q{i}": float(i) for i in range(12)}
    with pytest.warns(UserWarning, match="too few bootstrap resamples"):
        rep = qpp_report(ndcg, {"gap12": dict(zip(ndcg, nearly.tolist(), strict=True))}, n_boot=1000)
    assert rep["predictors"]["gap12"]["bootstrap_valid"] == out["bootstrap_valid"]


def test_a_predictor_with_values_for_fewer_than_ten_queries_warns() -> None:
    ndcg = {f"q{i}": i / 12 for i in range(12)}
    sparse = {f"q{i}": float(i) for i in range(4)}
    with pytest.warns(UserWarning, match=r"fewer than 10 judged queries have a value of max_score \(4\)"):
        rep = qpp_report(ndcg, {"max_score": sparse, "gap12": {q: v for q, v in ndcg.items()}}, n_boot=0)
    assert rep["predictors"]["max_score"]["n"] == 4 and rep["predictors"]["gap12"]["n"] == 12


def test_evaluate_computes_qpp_only_when_asked_and_prints_it_with_qpp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    root = _tiny_beir(tmp_path / "beir", n_queries=4)  # fewer than 10: QPP would warn
    assert run_evaluate(_evaluate([str(root), "--baseline", "bm25", "--no-progress"])) == 0
    assert "QPP" not in capsys.readouterr().out
    assert not [w for w in recwarn if "meaningless" in str(w.message)]  # not computed, so no warning about it
    with pytest.warns(UserWarning, match="meaningless"):
        assert run_evaluate(_evaluate([str(root), "--baseline", "bm25", "--no-progress", "--qpp"])) == 0
    out = capsys.readouterr().out
    assert "ndcg@10" in out and "QPP against ndcg@10" in out and "max_score" in out
    assert "uncertainty  missing: the bm25 baseline has no variances" in out
    with pytest.warns(UserWarning, match="meaningless"):
        assert run_evaluate(_evaluate([str(root), "--baseline", "bm25", "--no-progress", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["qpp"]["predictors"]["max_score"]["n"] == 4  # --json: always


def test_evaluate_json_qpp_records_depth_and_excluded_queries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = _tiny_beir(tmp_path / "beir", n_queries=12)
    qrels = root / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    lines[1] = lines[1][:-1] + "0"  # q0: judged, not relevant
    qrels.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert (
            run_evaluate(_evaluate([str(root), "--baseline", "bm25", "--json", "--no-progress", "--depth", "4"])) == 0
        )
    # said once, by evaluate's warning on queries without a relevant document; QPP's own note is at INFO
    assert "1 of the 12 queries evaluated has no judged document of grade >= 1" in caplog.text
    assert "the QPP correlations leave it out" in caplog.text
    assert not [w for w in seen if "no relevant document (no grade > 0)" in str(w.message)]
    summary = json.loads(capsys.readouterr().out)
    qpp = summary["qpp"]
    assert qpp["excluded_no_relevant"] == 1 and qpp["predictors"]["max_score"]["n"] == 11
    assert (qpp["depth"], qpp["nqc_k"], qpp["wig_k"]) == (4, 4, 4)
    assert summary["queries"] == 12  # the metric means still count q0, at 0
