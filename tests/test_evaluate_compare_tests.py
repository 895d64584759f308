"""``evaluate --compare --test ttest|wilcoxon|both --correction none|holm``: the Wilcoxon signed-rank test beside the
paired t-test, and Holm's correction across the metrics compared, cross-checked against scipy.

The default (``--test ttest --correction none``) keeps the output the logged figures were read from.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import write_pairs_beir
from kl_retrievers.cli import main
from kl_retrievers.evaluate_cli import run_evaluate
from kl_retrievers.evaluation import (
    DEFAULT_METRICS,
    holm_adjust,
    load_per_query,
    paired_test,
    save_per_query,
    wilcoxon_test,
)

stats = pytest.importorskip("scipy.stats")

#: The legacy fields of one metric's test (the t-test's, as before --test).
T_FIELDS = {"metric", "n", "mean_a", "mean_b", "mean_diff", "t_statistic", "p_value", "method"}


def _pq(values: list[float], metric: str = "ndcg@10") -> dict[str, dict[str, float]]:
    return {f"q{i}": {metric: v} for i, v in enumerate(values)}


def test_wilcoxon_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=40), rng.uniform(size=40)
    res = wilcoxon_test(_pq(a.tolist()), _pq(b.tolist()))
    ref = stats.wilcoxon(a, b)
    assert res.n == res.n_nonzero == 40
    assert res.statistic == pytest.approx(float(ref.statistic)) and res.p_value == pytest.approx(float(ref.pvalue))
    assert res.method == "Wilcoxon signed-rank (scipy)"


def test_wilcoxon_with_ties_and_zero_differences_matches_scipys_wilcox_zero_method() -> None:
    """Zero differences are dropped (scipy's default zero_method="wilcox"), tied ones share their mean rank."""
    a = [0.5, 0.5, 0.75, 1.0, 0.25, 0.625, 1.0, 0.25, 0.875, 0.375]
    b = [0.5, 0.5, 0.5, 0.75, 0.0, 0.375, 0.5, 0.375, 0.875, 0.625]  # 3 zeros; |0.25| five times; 0.5; -0.125
    res = wilcoxon_test(_pq(a), _pq(b))
    diff = np.array(a) - np.array(b)  # exact in binary: the ties are ties
    ref = stats.wilcoxon(diff, zero_method="wilcox")
    assert res.n == 10 and res.n_nonzero == 7
    assert res.statistic == float(ref.statistic) and res.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)
    # scipy's default zero method is "wilcox": the same p-value without naming it
    assert res.p_value == pytest.approx(float(stats.wilcoxon(diff).pvalue), rel=1e-12)
    assert res.p_value != pytest.approx(float(stats.wilcoxon(diff, zero_method="pratt").pvalue), rel=1e-6)


def test_equal_differences_reached_along_other_float_paths_tie() -> None:
    """0.7 - 0.5 and 0.9 - 0.7 are 0.19999999999999996 and 0.20000000000000007: ranked as the tie they are."""
    a, b = [0.7, 0.9, 0.4, 0.55, 0.3], [0.5, 0.7, 0.6, 0.35, 0.1]
    res = wilcoxon_test(_pq(a), _pq(b))
    ref = stats.wilcoxon([0.2, 0.2, -0.2, 0.2, 0.2])
    assert res.statistic == float(ref.statistic) and res.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)


def test_wilcoxon_float_rounding_is_no_difference() -> None:
    a = [0.5, 0.7, 0.9]
    res = wilcoxon_test(_pq(a), _pq([0.5, 0.7 + 2e-16, 0.9]))
    assert (res.statistic, res.p_value, res.n_nonzero) == (0.0, 1.0, 0)
    assert res.method == "Wilcoxon signed-rank (no variation)"


def test_wilcoxon_refuses_fewer_than_two_shared_queries() -> None:
    with pytest.raises(ValueError, match="at least 2 shared queries"):
        wilcoxon_test(_pq([0.1]), _pq([0.2]))


def _holm_reference(ps: list[float]) -> list[float]:
    """Holm by its definition: reject in order while p_(j) <= alpha / (m - j + 1); adjusted p as the smallest alpha."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = min(1.0, max((m - j) * ps[order[j]] for j in range(rank + 1)))
    return out


@pytest.mark.parametrize(
    "ps", [[0.01, 0.04, 0.03], [0.2, 0.01, 0.5, 0.011], [0.9, 0.8], [0.001], [0.03, 0.03, 0.03, 0.5]]
)
def test_holm_adjust_matches_the_definition(ps: list[float]) -> None:
    assert holm_adjust(ps) == pytest.approx(_holm_reference(ps))


def test_holm_adjust_leaves_nan_out_of_the_family() -> None:
    out = holm_adjust([0.02, math.nan, 0.04])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def _two_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A BEIR folder, this run's --per-query file and a compare file whose values differ with ties and zeros."""
    root = write_pairs_beir(tmp_path / "beir", n_queries=12)
    mine = tmp_path / "mine.json"
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--per-query", str(mine)]) == 0
    pq, meta = load_per_query(mine)
    deltas = [0.0, 0.0, 0.1, 0.1, 0.1, 0.2, -0.05, 0.3, 0.1, 0.0, 0.25, -0.1]
    other = {
        qid: {m: (v - deltas[i] if m in DEFAULT_METRICS else v) for m, v in row.items()}
        for i, (qid, row) in enumerate(sorted(pq.items()))
    }
    theirs = tmp_path / "theirs.json"
    save_per_query(theirs, other, meta=meta)
    return root, mine, theirs


def test_the_default_output_is_the_t_test_alone_as_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, mine, theirs = _two_files(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--compare", str(theirs)]) == 0
    compare = json.loads(capsys.readouterr().out)["compare"]
    assert (compare["test"], compare["correction"]) == ("ttest", "none")
    a, b = load_per_query(mine)[0], load_per_query(theirs)[0]
    for name, row in compare["tests"].items():
        assert set(row) == T_FIELDS
        assert row["p_value"] == paired_test(a, b, name).p_value
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(theirs)]) == 0
    out = capsys.readouterr().out
    assert "  p = " in out and "Wilcoxon" not in out and "Holm" not in out and "t-test" not in out


def test_both_tests_with_holm_match_scipy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, mine, theirs = _two_files(tmp_path)
    capsys.readouterr()
    argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(theirs)]
    assert main([*argv, "--json", "--test", "both", "--correction", "holm"]) == 0
    compare = json.loads(capsys.readouterr().out)["compare"]
    assert (compare["test"], compare["correction"]) == ("both", "holm")
    a, b = load_per_query(mine)[0], load_per_query(theirs)[0]
    t_ps, w_ps = [], []
    for name, row in compare["tests"].items():
        qids = sorted(a)
        x = np.array([a[q][name] for q in qids])
        y = np.array([b[q][name] for q in qids])
        diff = np.round(x - y, 12)
        assert row["p_value"] == pytest.approx(float(stats.ttest_rel(x, y).pvalue), rel=1e-9)
        assert row["wilcoxon_p_value"] == pytest.approx(float(stats.wilcoxon(diff, zero_method="wilcox").pvalue))
        assert row["wilcoxon_n_nonzero"] == 9  # three zero differences dropped
        t_ps.append(row["p_value"])
        w_ps.append(row["wilcoxon_p_value"])
    assert len(t_ps) == len(DEFAULT_METRICS)
    rows = list(compare["tests"].values())
    assert [r["p_value_holm"] for r in rows] == pytest.approx(_holm_reference(t_ps))
    assert [r["wilcoxon_p_value_holm"] for r in rows] == pytest.approx(_holm_reference(w_ps))
    assert main([*argv, "--test", "both", "--correction", "holm"]) == 0
    out = capsys.readouterr().out
    assert "t-test p = " in out and ", Wilcoxon p = " in out and "(Holm " in out, out
    assert f"Holm: p corrected over the {len(DEFAULT_METRICS)} metrics compared" in out


def test_wilcoxon_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _, theirs = _two_files(tmp_path)
    capsys.readouterr()
    argv = [
        "evaluate",
        str(root),
        "--baseline",
        "bm25",
        "--no-progress",
        "--compare",
        str(theirs),
        "--test",
        "wilcoxon",
    ]
    assert main([*argv, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["compare"]["tests"]["ndcg@10"]
    assert "p_value" not in row and "t_statistic" not in row and "wilcoxon_p_value" in row and "p_value_holm" not in row
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Wilcoxon p = " in out and "t-test" not in out and "  p = " not in out


@pytest.mark.parametrize(("flag", "value"), [("--test", "sign"), ("--correction", "bonferroni")])
def test_bad_values_exit_2_naming_the_value_and_the_allowed_ones(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_pairs_beir(tmp_path / "beir")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(root), "--baseline", "bm25", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert repr(value) in err and flag in err
    allowed = ("ttest", "wilcoxon", "both") if flag == "--test" else ("none", "holm")
    assert all(choice in err for choice in allowed), err
    # a namespace built without the parser: the same refusal, before anything is read
    from kl_retrievers.evaluate_cli import add_evaluate_command

    parser = argparse.ArgumentParser()
    add_evaluate_command(parser.add_subparsers())
    args = parser.parse_args(["evaluate", str(root), "--baseline", "bm25"])
    setattr(args, flag[2:], value)
    assert run_evaluate(args) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be one of {', '.join(allowed)}; got {value!r}" in err


def test_test_options_without_compare_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = write_pairs_beir(tmp_path / "beir")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluate_cli"):
        assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--test", "both"]) == 0
    assert any("--test has no effect without --compare" in r.getMessage() for r in caplog.records)
