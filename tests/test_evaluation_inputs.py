"""Inputs that made an evaluation silently wrong, and the cost of the QPP bootstrap (probe P2).

Repeated query or document ids (a run keeps one score per id), fractional qrels grades (``int``
truncated them), the paired test's method when no t distribution was read, a constant QPP
predictor listed twice, and the tau bootstrap above ``_PAIRWISE_MAX`` (one scipy call per
resample, with every resample's values held at once).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from conftest import write_pairs_beir
from kl_retrievers import qpp
from kl_retrievers.cli import main
from kl_retrievers.evaluation import evaluate_run, paired_test, retrieve_exact, retrieve_vectors
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.runs import inner_product_run, run_from_top_k

# ---------------------------------------------------------------------------- repeated ids

Q = np.array([[1.0, 0.0]])
D = np.array([[0.9, 0.0], [0.1, 0.0], [0.5, 0.0]])


def test_retrieve_vectors_refuses_repeated_document_ids() -> None:
    with pytest.raises(ValueError, match=r"document id 'a' is repeated \(rows 0 and 1\)"):
        retrieve_vectors(Q, D, ["q"], ["a", "a", "b"], k=3)
    assert retrieve_vectors(Q, D, ["q"], ["a", "c", "b"], k=3) == {"q": {"a": 0.9, "b": 0.5, "c": 0.1}}


def test_retrieve_exact_refuses_repeated_document_and_query_ids() -> None:
    docs = Gaussians(D, np.ones_like(D))
    with pytest.raises(ValueError, match=r"document id 'b' is repeated \(rows 1 and 2\)"):
        retrieve_exact(Gaussians(Q, np.ones_like(Q)), docs, ["q"], ["a", "b", "b"], k=3)
    queries = Gaussians(np.vstack([Q, -Q, Q]), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"query id 'q' is repeated \(rows 0 and 2\)"):
        retrieve_exact(queries, docs, ["q", "p", "q"], ["a", "b", "c"], k=1)
    run = retrieve_exact(queries, docs, ["q", "p", "r"], ["a", "b", "c"], k=1)
    assert list(run) == ["q", "p", "r"] and list(run["p"]) == ["b"]


def test_inner_product_run_and_run_from_top_k_refuse_repeated_ids() -> None:
    with pytest.raises(ValueError, match="query id 'q' is repeated"):
        inner_product_run(np.vstack([Q, Q]), D, ["q", "q"], ["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="document id 'c' is repeated"):
        inner_product_run(Q, D, ["q"], np.array(["c", "b", "c"]), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="document id 'a' is repeated"):
        run_from_top_k(["q"], ["a", "a"], np.array([[0, 1]]), np.array([[2.0, 1.0]]))
    with pytest.raises(ValueError, match="query id 'q' is repeated"):
        run_from_top_k(["q", "q"], ["a", "b"], np.array([[0], [1]]), np.array([[2.0], [1.0]]))


# ---------------------------------------------------------------------------- qrels grades


def test_evaluate_run_refuses_fractional_grades() -> None:
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    fractional: list[dict[str, Any]] = [{"a": 0.5, "b": 1, "c": 2}, {"a": 1, "b": np.float64(1.7)}, {"a": math.nan}]
    for grades, match in zip(
        fractional,
        [r"query 'q', document 'a': grade 0.5 is not an integer grade", r"document 'b': grade 1.7 is not", "grade nan"],
        strict=True,
    ):
        with pytest.raises(ValueError, match=match):
            evaluate_run({"q": grades}, run)
    # integral floats (and numpy integers) are grades: the same scores as ints
    integral: dict[str, Any] = {"a": 0.0, "b": 1.0, "c": np.int64(2)}
    assert evaluate_run({"q": integral}, run) == evaluate_run({"q": {"a": 0, "b": 1, "c": 2}}, run)


# ---------------------------------------------------------------------------- paired test, QPP table


def test_paired_test_names_the_no_variation_case() -> None:
    a = {f"q{i}": {"ndcg@10": i / 10} for i in range(5)}
    same = paired_test(a, a)
    assert same.method == "paired t-test (no variation)" and same.p_value == 1.0
    shifted = paired_test(a, {q: {"ndcg@10": v["ndcg@10"] - 0.05} for q, v in a.items()})
    assert shifted.method == "paired t-test (no variation)" and shifted.t_statistic == np.inf
    b = {f"q{i}": {"ndcg@10": (i * 7 % 5) / 10} for i in range(5)}
    assert paired_test(a, b).method == "paired t-test (scipy)"
    assert paired_test(a, b, use_scipy=False).method == "paired t-test (builtin)"


def test_format_qpp_lists_a_constant_predictor_once() -> None:
    ndcg = {f"q{i}": i / 10 for i in range(10)}
    rep = qpp.qpp_report(ndcg, {"gap12": ndcg, "uncertainty": dict.fromkeys(ndcg, 0.0)}, n_boot=0)
    assert rep["predictors"]["uncertainty"]["tau"] is None and "uncertainty" in rep["missing"]
    lines = qpp.format_qpp(rep).splitlines()
    assert sum(line.split()[0] == "uncertainty" for line in lines[1:]) == 1
    assert any(line.split()[:2] == ["uncertainty", "missing:"] for line in lines)
    assert sum(line.split()[0] == "gap12" for line in lines[1:]) == 1


# ---------------------------------------------------------------------------- QPP bootstrap above _PAIRWISE_MAX


def _pairs(n: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "ties":  # like nDCG: many ties on both sides
        x = np.round(rng.normal(size=n), 1)
        return x, np.round(rng.random(n) + 0.3 * x, 1)
    if kind == "rare":  # one side nearly constant: many resamples have no tau
        x = np.zeros(n)
        x[:2] = 1.0
        return x, rng.random(n)
    return rng.normal(size=n), rng.normal(size=n)


@pytest.mark.parametrize(("n", "kind"), [(2, "cont"), (7, "ties"), (33, "cont"), (60, "ties"), (101, "rare")])
def test_resampled_tau_equals_scipy_on_each_resample(n: int, kind: str) -> None:
    x, y = _pairs(n, kind, seed=n)
    idx = np.random.default_rng(1).integers(0, n, size=(70, n))  # more than one chunk of resamples
    fast = qpp._kendall_resampled(x, y, idx)
    slow = np.array([stats.kendalltau(x[i], y[i]).statistic for i in idx])
    np.testing.assert_array_equal(fast, slow)  # bit for bit, NaN where a resample is constant


def test_bootstrap_above_pairwise_max_calls_scipy_once(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _pairs(300, "ties", seed=3)
    n_boot = 200
    idx = np.random.default_rng(7).integers(0, x.size, size=(n_boot, x.size))  # the draw correlation makes
    taus = np.array([stats.kendalltau(x[i], y[i]).statistic for i in idx])
    calls: list[int] = []
    real = stats.kendalltau

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stats, "kendalltau", counted)
    monkeypatch.setattr(qpp, "_PAIRWISE_MAX", 50)
    out = qpp.correlation(x, y, n_boot=n_boot, seed=7)
    assert len(calls) == 1  # the point estimate only, not one call per resample
    assert out["bootstrap_valid"] == n_boot
    alpha = (1.0 - 0.95) / 2.0  # as correlation computes its percentiles
    assert out["tau_ci"] == [float(v) for v in np.quantile(taus, [alpha, 1.0 - alpha])]
    assert out["tau"] == pytest.approx(real(x, y).statistic, abs=0)


# ---------------------------------------------------------------------------- kl-retrievers evaluate

#: q5's only judgement names a document outside the corpus: kept, with empty qrels, under --unknown-docs drop.
QRELS = "".join(f"q{j}\td{j}\t1\n" for j in range(5)) + "q5\tGHOST\t1\n"


def _evaluate_json(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> dict[str, Any]:
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", *flags]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def test_sample_queries_keeps_a_query_without_judged_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_pairs_beir(tmp_path / "beir", QRELS)
    whole = _evaluate_json(capsys, root, "--unknown-docs", "drop")
    assert whole["queries"] == 6  # load_beir keeps q5 (it scores 0)
    held_q5 = 0
    for seed in range(6):
        pq = tmp_path / f"pq{seed}.json"
        out = _evaluate_json(
            capsys, root, "--unknown-docs", "drop", "--sample-queries", "5", "--seed", str(seed), "--per-query", str(pq)
        )
        evaluated = json.loads(pq.read_text(encoding="utf-8"))["per_query"]
        assert out["queries"] == out["sample"]["size"] == len(evaluated) == 5, (seed, out["sample"])
        held_q5 += "q5" in evaluated
    assert held_q5 > 0  # some samples hold q5


def test_compare_refuses_a_file_of_another_depth_below_a_cutoff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = write_pairs_beir(tmp_path / "beir")
    shallow, deep = tmp_path / "d10.json", tmp_path / "d200.json"
    _evaluate_json(capsys, root, "--depth", "10", "--per-query", str(shallow))
    _evaluate_json(capsys, root, "--depth", "200", "--per-query", str(deep))
    argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress"]
    assert main([*argv, "--compare", str(shallow)]) == 2
    err = capsys.readouterr().err
    assert f"--compare {shallow} records depth 10 and this run has depth 100: recall@100 and map@100 read" in err
    assert "--compare-any" in err
    assert main([*argv, "--compare", str(deep)]) == 0  # depths 100 and 200: every cutoff is within both
    assert main([*argv, "--depth", "10", "--compare", str(shallow)]) == 0  # the same depth
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--compare", str(shallow), "--compare-any", "--json"]) == 0
    assert "recall@100" in json.loads(capsys.readouterr().out)["compare"]["tests"]
    assert any("records depth 10" in r.getMessage() and "compared anyway" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("baseline", "flags", "message"),
    [
        (
            "bm25",
            ["--model-backend", "onnx"],
            "--model-backend does not apply to --baseline bm25, which encodes nothing",
        ),
        ("bm25", ["--batch-size", "7"], "--batch-size does not apply to --baseline bm25"),
        ("bm25", ["--max-length", "16", "--no-cache"], "--max-length and --no-cache do not apply to --baseline bm25"),
        ("bm25", ["--means-only", "--model-threads", "2"], "--model-threads and --means-only do not apply"),
        (
            "minilm",
            ["--backend", "torch", "--query-max-length", "3", "--batch-size", "4", "--max-length", "64"],
            "--model-backend and --query-max-length do not apply to --baseline minilm, which takes --batch-size",
        ),
    ],
)
def test_options_a_baseline_ignores_are_refused_by_one_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], baseline: str, flags: list[str], message: str
) -> None:
    root = write_pairs_beir(tmp_path / "beir", QRELS)
    assert main(["evaluate", str(root), "--baseline", baseline, "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("error:") == 1


def test_qpp_bootstrap_sets_the_resamples_and_qpp_seconds_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.evaluate_cli import QPP_BOOTSTRAP  # (here: a name this test adds)

    root = write_pairs_beir(tmp_path / "beir")
    assert QPP_BOOTSTRAP == qpp.N_BOOT
    default = _evaluate_json(capsys, root)
    assert default["qpp"]["bootstrap"] == QPP_BOOTSTRAP and default["qpp_seconds"] >= 0
    none = _evaluate_json(capsys, root, "--qpp-bootstrap", "0")
    assert none["qpp"]["bootstrap"] == 0 and isinstance(none["qpp_seconds"], float)
    assert all(p["tau_ci"] is None and p["pearson_ci"] is None for p in none["qpp"]["predictors"].values())
    few = _evaluate_json(capsys, root, "--qpp-bootstrap", "20")
    assert few["qpp"]["bootstrap"] == 20
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--qpp-bootstrap", "5"]) == 0
    assert any("--qpp-bootstrap has no effect" in r.getMessage() for r in caplog.records)
    with pytest.raises(SystemExit):
        main(["evaluate", str(root), "--baseline", "bm25", "--qpp-bootstrap", "-1"])
