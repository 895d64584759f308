"""Benchmark fixes: abstention.py's calibrator check, hybrid_threads.py's base thread count, and the
figure results_more.py used to type into docs/results.md."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import abstention  # noqa: E402
import hybrid_threads  # noqa: E402
import results  # noqa: E402
import results_more  # noqa: E402


class _Reached(Exception):
    """Raised by a stub: the code got to loading or encoding data."""


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading SQuAD, loading the model or encoding anything raises :class:`_Reached`."""

    def reached(*_: Any, **__: Any) -> Any:
        raise _Reached

    monkeypatch.setattr(abstention, "load_beir", reached)
    monkeypatch.setattr("kl_retrievers.pretrained.load_model", reached)
    monkeypatch.setattr("kl_retrievers.evaluation.encode_dataset", reached)


@pytest.mark.usefixtures("no_data")
def test_abstention_hybrid_without_a_hybrid_calibrator_fails_early(capsys: pytest.CaptureFixture[str]) -> None:
    """``--model minilm-gauss-lora --hybrid`` used to encode all of SQuAD, then die in ValueError."""
    with pytest.raises(SystemExit) as exc:
        abstention.main(["--model", "minilm-gauss-lora", "--hybrid", "--no-log"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'minilm-gauss-lora'" in err and "ships no hybrid confidence calibrator" in err, err
    assert "fit --hybrid --model minilm-gauss-lora" in err, err  # what is needed


@pytest.mark.usefixtures("no_data")
def test_abstention_without_any_calibrator_to_score_fails_before_encoding(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --hybrid only the dense retriever is scored; a model without a dense calibrator has nothing."""
    with pytest.raises(SystemExit):
        abstention.main(["--model", "minilm-gauss-lora", "--no-log"])
    err = capsys.readouterr().err
    assert "'minilm-gauss-lora'" in err and "ships no dense confidence calibrator" in err, err
    with pytest.raises(SystemExit):
        abstention.main(["--model", "minilm-gauss-lora", "--hybrid", "--record-threshold", "--no-log"])
    assert "--record-threshold" in capsys.readouterr().err


@pytest.mark.parametrize("hybrid", [False, True])
def test_abstention_main_passes_hybrid_to_the_experiment(monkeypatch: pytest.MonkeyPatch, hybrid: bool) -> None:
    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise _Reached

    monkeypatch.setattr(abstention, "Experiment", spy)
    with pytest.raises(_Reached):
        abstention.main(["--model", "bge-small-unit-variance", "--no-log", *(["--hybrid"] if hybrid else [])])
    assert seen["hybrid_calibrator"] is hybrid and seen["model"] == "bge-small-unit-variance"


@pytest.fixture
def dense_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bundled model ``dense-only`` that ships a dense calibrator and no hybrid one."""
    import kl_retrievers.pretrained as pretrained
    from kl_retrievers.calibration import CALIBRATION_FILE

    real = pretrained.bundled_model_path
    folder = tmp_path / "dense-only"
    folder.mkdir()
    for name in ("config.json", CALIBRATION_FILE):
        shutil.copy(real("bge-small-unit-variance") / name, folder / name)
    monkeypatch.setattr(pretrained, "bundled_model_path", lambda n: folder if n == "dense-only" else real(n))
    return "dense-only"


def test_abstention_dense_part_runs_for_a_model_without_a_hybrid_calibrator(
    dense_only: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert abstention.calibrator_problem(dense_only, hybrid=False) is None
    problem = abstention.calibrator_problem(dense_only, hybrid=True)
    assert problem is not None and repr(dense_only) in problem and "without --hybrid" in problem
    # Experiment: the dense calibrator, no hybrid one; asking for one fails before SQuAD is read
    ds = SimpleNamespace(doc_ids=["1-0", "2-0"], query_ids=["q1", "q2"], qrels={"q1": {"1-0": 1}, "q2": {"2-0": 1}})
    monkeypatch.setattr(abstention, "load_beir", lambda *a, **k: ds)
    monkeypatch.setattr("kl_retrievers.pretrained.load_model", lambda *a, **k: object())
    monkeypatch.setattr("kl_retrievers.evaluation.model_fingerprint", lambda *a, **k: "fp")
    monkeypatch.setattr("kl_retrievers.evaluation.encode_dataset", lambda *a, **k: (None, None))
    exp = abstention.Experiment(None, cache_dir=None, batch_size=2, hybrid_calibrator=False, model=dense_only)
    assert exp.cal is not None and exp.hybrid_cal is None
    monkeypatch.setattr(abstention, "load_beir", lambda *a, **k: pytest.fail("SQuAD read before the calibrator check"))
    with pytest.raises(ValueError, match="ships no hybrid confidence calibrator"):
        abstention.Experiment(None, cache_dir=None, batch_size=2, hybrid_calibrator=True, model=dense_only)


def _threads_summary(capsys: pytest.CaptureFixture[str], *threads: str) -> str:
    hybrid_threads.main(["--n", "200", "--dim", "8", "--queries", "8", "--repeats", "1", "--threads", *threads])
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_hybrid_threads_names_the_real_base_thread_count(capsys: pytest.CaptureFixture[str]) -> None:
    """``--threads 2 4`` used to print 2 threads' rate as ``hybrid_qps_1``."""
    line = _threads_summary(capsys, "2", "4")
    assert line.startswith("hybrid_qps_2=") and "hybrid_qps_1=" not in line, line
    assert line.endswith("(relative to 2 threads)"), line
    assert _threads_summary(capsys, "2", "1").startswith("hybrid_qps_1="), "the 1-thread row, wherever it is"
    line = hybrid_threads.summary_line([(2, 150.0, 0.0), (1, 100.0, 0.0), (4, 250.0, 0.0)])
    assert line == "hybrid_qps_1=100.0 hybrid_qps_max=250.0 speedup=2.50"


def test_hybrid_threads_refuses_zero_threads() -> None:
    with pytest.raises(SystemExit):
        hybrid_threads.main(["--threads", "0", "2"])


def test_evaluate_without_model_backend_is_labelled_torch() -> None:
    from kl_retrievers.evaluate_cli import add_evaluate_command

    parser = argparse.ArgumentParser(prog="kl-retrievers")
    add_evaluate_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "data", "--model", "m"])
    assert args.model_backend is None  # not given (a baseline refuses one); run_evaluate fills in evaluate's default
    assert results_more._backend("kl-retrievers evaluate ../shared/datasets/scifact --model m --json") == "torch"
    assert results_more._backend("kl-retrievers evaluate d --model m --model-backend onnx") == "onnx"


def _section(root: Path) -> str:
    records = results.load_records(root)
    default = {c: records[("default", c)] for c in results.COLLECTIONS if ("default", c) in records}
    lines = results_more.bundled_models_section(
        root, results.EVAL_LOG, results.COLLECTIONS, default, results.DEFAULT_MODEL
    )
    return "\n".join(lines)


def test_int8_figure_is_computed_from_the_eval_log(tmp_path: Path) -> None:
    """The "differ by up to about X" of the bundled-models section is max |int8 twin - torch baseline|."""
    twin, base = "minilm-unit-variance", "minilm"  # ranks exactly like MiniLM cosine (its model card)
    recs = [json.loads(line) for line in (REPO / results.EVAL_LOG).read_text(encoding="utf-8").splitlines() if line]
    newest = {(r["system"], r["collection"]): r for r in recs if r["split"] == "test"}
    gap = max(
        abs(newest[(twin, c)]["ndcg@10"] - newest[(base, c)]["ndcg@10"])
        for c in results.COLLECTIONS
        if (twin, c) in newest and (base, c) in newest
    )
    assert f"by up to about {gap:.3f} here" in _section(REPO)

    # the same logs with the twin's SciFact figure moved by 0.05 render the new gap
    for log in (results.EVAL_LOG, results.QPP_LOG):
        (tmp_path / log).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / log, tmp_path / log)
    lines = (tmp_path / results.EVAL_LOG).read_text(encoding="utf-8").splitlines()
    i = max(j for j, line in enumerate(lines) if (r := json.loads(line))["system"] == twin and r["split"] == "test")
    rec = json.loads(lines[i])
    rec["ndcg@10"] = newest[(base, rec["collection"])]["ndcg@10"] + 0.05
    lines[i] = json.dumps(rec)
    (tmp_path / results.EVAL_LOG).write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert "by up to about 0.050 here" in _section(tmp_path)
