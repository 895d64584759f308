"""benchmarks/qpp_speed.py runs, picks its data as its docstring says, and ends with its ``key=value`` line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers.evaluation import load_per_query, save_per_query
from kl_retrievers.qpp import qpp_for_run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import qpp_speed  # noqa: E402

SMALL = ["--bootstrap", "20", "--repeats", "1", "--docs", "50"]


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


def _last(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split())


def _write(path: Path, n: int, *, uncertainty: float | None = None, with_uncertainty: bool = True) -> Path:
    rng = np.random.default_rng(1)
    rows = {}
    for i in range(n):
        row = {"ndcg@10": float(rng.uniform()), "qpp.max_score": -0.3 - float(rng.uniform()), "qpp.gap12": 0.05}
        if with_uncertainty:
            row["uncertainty"] = float(rng.normal()) if uncertainty is None else uncertainty
        rows[f"q{i}"] = row
    save_per_query(path, rows, meta={"dataset": str(path.parent / "no-such-collection"), "split": "test"})
    return path


def test_synthetic_run_ends_with_the_key_value_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qpp_speed.main(["--queries", "30,40", "--pq-dir", str(tmp_path), *SMALL])  # no file there: synthetic
    lines = _lines(capsys)
    assert lines[0].startswith("library=") and "bootstrap=20 repeats=1" in lines[0], lines[0]
    assert "n=30 data=synthetic predictors=7 " in lines[1], lines[1]
    assert "n=40 data=synthetic predictors=7 " in lines[2], lines[2]
    last = _last(lines[-1])
    assert list(last) == ["wall_30", "cpu_30", "nb0_wall_30", "wall_40", "cpu_40", "nb0_wall_40", "digest"]
    assert all(float(v) >= 0 for k, v in last.items() if k != "digest")
    assert len(last["digest"]) == 16 and int(last["digest"], 16) >= 0


def test_a_logged_file_of_that_size_is_read_and_the_digest_repeats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "a_constant.json", 30, uncertainty=0.5)  # constant uncertainty: not picked
    picked = _write(tmp_path / "b_model.json", 30)
    _write(tmp_path / "c_other_size.json", 31)
    qpp_speed.main(["--queries", "30", "--pq-dir", str(tmp_path), *SMALL])
    first = _lines(capsys)
    assert f"n=30 data=pq:{picked} texts=synthetic predictors=7 " in first[1], first[1]
    qpp_speed.main(["--queries", "30", "--pq-dir", str(tmp_path), *SMALL])
    assert _last(_lines(capsys)[-1])["digest"] == _last(first[-1])["digest"]  # seeded: the same reports


def test_a_baseline_file_without_uncertainty_gives_six_predictors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "bm25.json", 25, with_uncertainty=False)
    qpp_speed.main(["--per-query", str(path), *SMALL])
    lines = _lines(capsys)
    assert f"n=25 data=pq:{path} texts=synthetic predictors=6 " in lines[1], lines[1]
    assert list(_last(lines[-1])) == ["wall_25", "cpu_25", "nb0_wall_25", "digest"]


def test_queries_logged_without_scores_get_the_runs_evaluate_gave_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a BM25 file: q0 and q1 retrieved nothing (no qpp.max_score), q2 one document (no qpp.gap12)
    path = _write(tmp_path / "bm25.json", 25, with_uncertainty=False)
    rows, meta = load_per_query(path)
    for q in ("q0", "q1"):
        del rows[q]["qpp.max_score"], rows[q]["qpp.gap12"]
    del rows["q2"]["qpp.gap12"]
    save_per_query(path, rows, meta=meta)
    calls: list[dict[str, Any]] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return qpp_for_run(*args, **kwargs)

    monkeypatch.setattr(qpp_speed, "qpp_for_run", recording)
    qpp_speed.main(["--per-query", str(path), *SMALL])
    assert f"n=25 data=pq:{path} texts=synthetic predictors=6 " in _lines(capsys)[1]
    timed = calls[-1]  # the last call: no bootstrap, the same inputs
    run, per_query = timed["run"], timed["per_query"]
    assert run["q0"] == {} and run["q1"] == {}  # an empty run, as evaluate's
    assert run["q2"] == {"d0": rows["q2"]["qpp.max_score"]}
    assert all(len(run[f"q{i}"]) == 100 for i in range(3, 25))
    assert per_query["q0"] == {"ndcg@10": rows["q0"]["ndcg@10"]} and len(per_query) == 25  # their nDCG kept
    report, _ = qpp_for_run(**{k: v for k, v in timed.items() if k != "n_boot"}, n_boot=0)
    assert report["predictors"]["max_score"]["n"] == 23 and report["predictors"]["gap12"]["n"] == 22


@pytest.mark.parametrize("problem", ["missing", "not-per-query", "no-ndcg"])
def test_an_unusable_per_query_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    path = tmp_path / "run.json"
    if problem == "not-per-query":
        path.write_text('{"results": []}', encoding="utf-8")
    elif problem == "no-ndcg":
        save_per_query(path, {"q0": {"ndcg@10": 0.5}, "q1": {"mrr@10": 0.5}})
    with pytest.raises(SystemExit) as info:
        qpp_speed.main(["--per-query", str(path), *SMALL])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and f"error: --per-query: {path}" in err, err
    expected = {"missing": "cannot read per-query file", "not-per-query": "per_query", "no-ndcg": "'q1' has no"}
    assert expected[problem] in err, err
