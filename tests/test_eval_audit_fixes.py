"""Regression tests for audited defects of the evaluation path (``kl-retrievers evaluate``).

Each test fails on the code before its fix: a ``--depth`` below a metric's cutoff reported without
a word and not recorded, ``--compare`` pairing the queries of another collection or split (or of
no shared query at all), the paired test finding float rounding infinitely significant, NaN and
Infinity read from per-query files and printed as non-standard JSON, ``--split`` read as a path,
baselines' ``--json`` without their score, and malformed JSON lines reported at a column of the
next line.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_BEIR_CORPUS, make_tiny_encoder, write_tiny_beir
from kl_retrievers.cli import main
from kl_retrievers.datasets import DatasetError, load_beir
from kl_retrievers.evaluation import load_per_query, paired_test, save_per_query

CORPUS = TINY_BEIR_CORPUS
_beir = write_tiny_beir  # (root, qrels lines, corpus, split)


def _strict_json(text: str) -> Any:
    """Parse standard JSON only: NaN, Infinity and -Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ---------------------------------------------------------------- 2. --depth below a metric's cutoff


@pytest.mark.parametrize(
    ("depth", "named", "not_named"),
    [(5, ["ndcg@10", "recall@100"], []), (50, ["recall@100", "map@100"], ["ndcg@10", "mrr@10"])],
)
def test_a_depth_below_a_cutoff_warns_naming_the_metrics_and_is_recorded(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    depth: int,
    named: list[str],
    not_named: list[str],
) -> None:
    # more documents than the depth: a depth reaching the whole corpus does not warn (the run holds every document)
    filler = [{"_id": f"x{i}", "title": "", "text": f"filler {i}"} for i in range(60)]
    root = _beir(tmp_path / "beir", corpus=CORPUS + filler)
    caplog.set_level(logging.WARNING)
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--depth", str(depth)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["depth"] == depth
    warned = _warnings(caplog)
    assert f"--depth {depth}" in warned
    for name in named:
        assert name in warned
    for name in not_named:
        assert name not in warned


def test_the_depth_shows_in_json_the_per_query_meta_and_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = _beir(tmp_path / "beir")
    pq = tmp_path / "pq.json"
    caplog.set_level(logging.WARNING)
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--per-query", str(pq)]) == 0
    out = capsys.readouterr().out
    assert "depth: 100" in out and "score: bm25, higher is better" in out
    assert "--depth" not in _warnings(caplog)  # the default reaches every cutoff
    _, meta = load_per_query(pq)
    assert meta["depth"] == 100 and meta["score"] == "bm25"


# ---------------------------------------------------------------- 3. --compare across collections and splits


def _per_query_file(path: Path, meta: dict[str, Any] | None, qids: tuple[str, ...] = ("1", "2", "3")) -> Path:
    rows = {q: {"ndcg@10": 0.1 * i, "mrr@10": 0.2, "recall@100": 1.0, "map@100": 0.3} for i, q in enumerate(qids)}
    save_per_query(path, rows, meta=meta)  # meta None and a .tsv path: a file without meta (a TSV, an old file)
    return path


def test_compare_refuses_a_file_from_another_dataset_unless_compare_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = _beir(tmp_path / "cran300")
    other_root = _beir(tmp_path / "cran300b")  # another collection with the same numeric query ids
    other = _per_query_file(tmp_path / "other.json", {"dataset": str(other_root), "split": "test", "model": "x"})
    argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(other_root) in err and str(root) in err and "--compare-any" in err
    caplog.set_level(logging.WARNING)
    assert main([*argv, "--compare-any", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compare"]["tests"]["ndcg@10"]["n"] == 3
    assert str(other_root) in _warnings(caplog)


def test_compare_refuses_a_file_from_another_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir")
    other = _per_query_file(tmp_path / "other.json", {"dataset": str(root), "split": "train"})
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(other)]) == 2
    err = capsys.readouterr().err
    assert "split train" in err and "this run: test" in err


def test_compare_accepts_the_same_dataset_named_another_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _beir(tmp_path / "beir")
    monkeypatch.chdir(tmp_path)
    other = _per_query_file(tmp_path / "other.json", {"dataset": "beir", "split": "test"})  # relative, as recorded
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--compare", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["compare"]["tests"]["ndcg@10"]["n"] == 3


def test_compare_without_a_shared_query_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir")
    other = _per_query_file(tmp_path / "other.json", {"dataset": str(root), "split": "test"}, qids=("7", "8"))
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(other)]) == 2
    captured = capsys.readouterr()
    assert "shares 0 queries" in captured.err and "compared with" not in captured.out


def test_compare_with_a_file_without_meta_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = _beir(tmp_path / "beir")
    other = _per_query_file(tmp_path / "other.tsv", None)
    caplog.set_level(logging.WARNING)
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(other)]) == 0
    assert "compared with" in capsys.readouterr().out
    warned = _warnings(caplog)
    assert "other.tsv" in warned and "dataset or split" in warned


# ---------------------------------------------------------------- 4. float rounding in the paired test


def test_float_rounding_alone_is_no_difference() -> None:
    a = {f"q{i}": {"m": v} for i, v in enumerate([0.1, 0.2, 0.3, 0.7])}
    b = {"q0": {"m": 0.1}, "q1": {"m": 0.2 + 2.2e-16}, "q2": {"m": 0.3}, "q3": {"m": 0.7 - 1.1e-16}}
    assert any(a[q]["m"] != b[q]["m"] for q in a)  # the values do differ in the last bit
    for use_scipy in (True, False):
        res = paired_test(a, b, "m", use_scipy=use_scipy)
        assert (res.t_statistic, res.p_value, res.mean_diff) == (0.0, 1.0, 0.0)
        assert res.to_dict()["t_statistic"] == 0.0


def test_rounding_beside_real_differences_is_tested_as_zero() -> None:
    a = {f"q{i}": {"m": v} for i, v in enumerate([0.5, 0.6, 0.7, 0.8])}
    b = {"q0": {"m": 0.5 + 2e-16}, "q1": {"m": 0.5}, "q2": {"m": 0.7}, "q3": {"m": 0.6}}
    from scipy import stats

    ref = stats.ttest_rel([0.0, 0.1, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0])
    for use_scipy in (True, False):
        res = paired_test(a, b, "m", use_scipy=use_scipy)
        assert res.t_statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)


def test_one_real_difference_throughout_is_still_infinitely_significant() -> None:
    a = {"q1": {"m": 0.5}, "q2": {"m": 0.7}}
    res = paired_test(a, {q: {"m": v["m"] - 0.1} for q, v in a.items()}, "m")
    assert math.isinf(res.t_statistic) and res.t_statistic > 0 and res.p_value == 0.0


# ---------------------------------------------------------------- 5. NaN and Infinity


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_per_query_files_with_non_finite_values_are_refused(tmp_path: Path, token: str) -> None:
    path = tmp_path / "pq.json"
    path.write_text('{"per_query": {"q1": {"ndcg@10": 0.5}, "q2": {"ndcg@10": TOKEN}}}'.replace("TOKEN", token))
    with pytest.raises(ValueError, match=r"pq\.json.*'q2'.*'ndcg@10'"):
        load_per_query(path)


@pytest.mark.parametrize("token", ["nan", "inf", "-inf", "NaN"])
def test_tsv_per_query_files_with_non_finite_values_are_refused(tmp_path: Path, token: str) -> None:
    path = tmp_path / "pq.tsv"
    path.write_text(f"query_id\tndcg@10\tmrr@10\nq1\t0.5\t0.5\nq2\t0.5\t{token}\n")
    with pytest.raises(ValueError, match=r"pq\.tsv, line 3.*'q2'.*'mrr@10'"):
        load_per_query(path)


def test_compare_with_a_nan_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir")
    other = tmp_path / "nan.pq.json"
    other.write_text('{"meta": {}, "per_query": {"1": {"ndcg@10": NaN}, "2": {"ndcg@10": 0.5}}}')
    argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--compare", str(other)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "'1'" in captured.err and "ndcg@10" in captured.err


def test_json_output_is_standard_json_even_with_an_undefined_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.qpp as qpp

    real = qpp.qpp_for_run

    def with_nan(*args: Any, **kwargs: Any) -> Any:
        report, values = real(*args, **kwargs)
        report["undefined"] = float("nan")  # a value the code meant as "undefined"
        return report, values

    monkeypatch.setattr(qpp, "qpp_for_run", with_nan)
    root = _beir(tmp_path / "beir")
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json"]) == 0
    summary = _strict_json(capsys.readouterr().out)
    assert summary["qpp"]["undefined"] is None


def test_save_per_query_refuses_what_load_per_query_would(tmp_path: Path) -> None:
    for name in ("pq.json", "pq.tsv"):
        with pytest.raises(ValueError, match=r"'q2'.*'ndcg@10'"):
            save_per_query(tmp_path / name, {"q1": {"ndcg@10": 0.5}, "q2": {"ndcg@10": float("nan")}})
        assert not (tmp_path / name).exists()
    save_per_query(tmp_path / "ok.json", {"q1": {"ndcg@10": 0.5}}, meta={"r": float("nan")})
    assert _strict_json((tmp_path / "ok.json").read_text())["meta"]["r"] is None


# ---------------------------------------------------------------- 6. --split is a name, not a path


@pytest.mark.parametrize("split", ["../../other/qrels/test", "..", "sub/test", "sub\\test", "nosuch"])
def test_a_split_must_name_one_of_the_folders_qrels_files(tmp_path: Path, split: str) -> None:
    root = _beir(tmp_path / "beir")
    _beir(tmp_path / "other", "1\td3\t1\n")  # another folder's qrels, with ids this corpus knows
    (root / "qrels" / "sub").mkdir()
    (root / "qrels" / "sub" / "test.tsv").write_text("1\td3\t1\n")
    with pytest.raises(DatasetError, match=r"available splits: \['test'\]"):
        load_beir(root, split)


def test_evaluate_refuses_a_split_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir")
    _beir(tmp_path / "other", "1\td3\t1\n")
    assert (
        main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--split", "../../other/qrels/test"]) == 2
    )
    err = capsys.readouterr().err
    assert "not a split name" in err and "['test']" in err


# ---------------------------------------------------------------- 7. the --json schema: score, direction, depth


def test_baseline_json_names_its_score_direction_and_depth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir")
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--depth", "20"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["score"] == "bm25"
    assert summary["score_direction"] == "higher_is_better"
    assert summary["depth"] == 20


def test_dense_baselines_rank_by_cosine() -> None:
    from kl_retrievers.evaluate_cli import BASELINE_SCORES

    assert BASELINE_SCORES == {"bm25": "bm25", "minilm": "cosine", "bge-small": "cosine"}


def test_model_json_names_its_score_direction_and_depth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir")
    model = make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    argv = ["evaluate", str(root), "--model", str(model), "--no-progress", "--json", "--no-cache", "--depth", "3"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["score"], summary["score_direction"], summary["depth"]) == ("neg_kl", "higher_is_better", 3)


# ---------------------------------------------------------------- 8. the column of a malformed JSON line


def test_a_malformed_json_line_is_reported_at_its_own_column(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir")
    line = '{"_id": "d5", "text": "cut short"'
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(line + "\r\n")
    with pytest.raises(
        DatasetError, match=rf"line 5: malformed JSON \(Expecting ',' delimiter at column {len(line) + 1}\)"
    ):
        load_beir(root)


def test_compare_accepts_the_same_dataset_recorded_from_another_working_directory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the repo's runs/eval/pq files record ../shared/datasets/NAME, written from the repo root
    root = _beir(tmp_path / "data" / "beir")
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    other = _per_query_file(tmp_path / "other.json", {"dataset": "../data/beir", "split": "test"})
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")  # ../data/beir names no folder from here
    caplog.set_level(logging.WARNING)
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--compare", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["compare"]["tests"]["ndcg@10"]["n"] == 3
    assert "relative to another working directory" in _warnings(caplog)


def test_compare_still_refuses_a_relative_dataset_of_another_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _beir(tmp_path / "data" / "beir")
    (tmp_path / "elsewhere").mkdir()
    other = _per_query_file(tmp_path / "other.json", {"dataset": "../data/cranfield", "split": "test"})
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(other)]) == 2
    assert "--compare-any" in capsys.readouterr().err
