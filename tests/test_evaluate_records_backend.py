"""``kl-retrievers evaluate`` records what measured a run: its backend and the model's weights.

For ``--model`` runs (``--hybrid`` included), ``--json`` and the ``--per-query`` file's meta carry
``backend`` (``torch``, ``onnx-int8`` or ``onnx-float32``) and ``weights_sha256`` when the model knows its
weights' identity; ``--compare`` warns (without refusing) when the other file was measured on another
backend, or names the same model with other weights (not for every comparison of two models).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers.cli import main
from kl_retrievers.evaluation import load_per_query

CORPUS = [
    {"_id": "d1", "title": "", "text": "the cat sat on the mat"},
    {"_id": "d2", "title": "", "text": "green tea and bread"},
    {"_id": "d3", "title": "", "text": "a dog in the park"},
]
QUERIES = [{"_id": "q1", "text": "cat mat"}, {"_id": "q2", "text": "green tea"}]


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    return root


def _evaluate(model: Path, data: Path, *extra: str) -> list[str]:
    return ["evaluate", str(data), "--model", str(model), "--no-progress", "--no-cache", "--depth", "3", *extra]


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, str]:
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")
    sha = enc.weights_sha256
    assert sha, "a saved encoder knows its weights' identity"
    return tmp_path / "model", _beir(tmp_path / "data"), sha


def test_json_and_per_query_meta_record_backend_and_weights(
    world: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, sha = world
    pq = tmp_path / "pq.json"
    assert main(_evaluate(model, data, "--json", "--per-query", str(pq))) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["backend"] == "torch"
    assert record["weights_sha256"] == sha
    meta = load_per_query(pq)[1]
    assert meta["backend"] == "torch"
    assert meta["weights_sha256"] == sha


def test_a_baseline_record_is_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A baseline's label names its model and precision; its record (quoted in docs/baselines.md) stays as it was."""
    data = _beir(tmp_path / "data")
    assert main(["evaluate", str(data), "--baseline", "bm25", "--no-progress", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert "backend" not in record and "weights_sha256" not in record


def test_compare_warns_when_the_other_run_was_measured_differently(
    world: tuple[Path, Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, data, sha = world
    pq = tmp_path / "pq.json"
    assert main(_evaluate(model, data, "--per-query", str(pq))) == 0
    capsys.readouterr()

    # the same run: nothing to warn about
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        assert main(_evaluate(model, data, "--json", "--compare", str(pq))) == 0
    # the filter of the warnings below (which it finds): a warning here would not go unseen
    assert not [r for r in caplog.records if "its differences are not only" in r.getMessage()], caplog.text
    record = json.loads(capsys.readouterr().out)
    assert record["compare"]["backend"] == "torch" and record["compare"]["weights_sha256"] == sha

    # the same file, as if measured on ONNX with other weights: a warning for each, and the comparison still runs
    doc = json.loads(pq.read_text(encoding="utf-8"))
    doc["meta"].update(backend="onnx", weights_sha256="f" * 64)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc), encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        assert main(_evaluate(model, data, "--json", "--compare", str(other))) == 0
    warned = [r.getMessage() for r in caplog.records if "its differences are not only" in r.getMessage()]
    assert len(warned) == 2
    assert "measured on another backend: onnx there, torch in this run" in warned[0]
    assert f"names the same model ({model}) with other weights: weights_sha256 ffffffffffffffff there" in warned[1]
    assert json.loads(capsys.readouterr().out)["compare"]["tests"]  # compared all the same


def test_an_onnx_run_compared_with_a_torch_file_warns_about_the_backend(
    world: tuple[Path, Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other direction of the warning above: a real ONNX run (not an edited file) against a torch file."""
    model, data, _ = world
    pq = tmp_path / "torch.json"
    assert main(_evaluate(model, data, "--per-query", str(pq))) == 0
    capsys.readouterr()
    make_tiny_encoder(seed=0).export_onnx(tmp_path / "graph")  # the same weights as ``model`` (int8 by default)
    onnx = ["--model-backend", "onnx", "--json", "--compare", str(pq)]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        assert main(_evaluate(tmp_path / "graph", data, *onnx)) == 0
    warned = [r.getMessage() for r in caplog.records if "its differences are not only" in r.getMessage()]
    assert any("measured on another backend: torch there, onnx-int8 in this run" in m for m in warned), warned
    assert json.loads(capsys.readouterr().out)["compare"]["backend"] == "torch"


def test_comparing_two_models_does_not_warn_about_their_weights(
    world: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Two models have other weights by definition: only the same model with other weights is worth a warning."""
    model, data, sha = world
    make_tiny_encoder(seed=1).save_pretrained(tmp_path / "other-model")
    pq = tmp_path / "other.json"
    assert main(_evaluate(tmp_path / "other-model", data, "--per-query", str(pq))) == 0
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        assert main(_evaluate(model, data, "--json", "--compare", str(pq))) == 0
    assert not [r for r in caplog.records if "weights" in r.getMessage()], caplog.text
    compare = json.loads(capsys.readouterr().out)["compare"]
    assert compare["weights_sha256"] not in (None, sha)  # recorded all the same


@pytest.mark.parametrize(("quantize", "backend"), [("int8", "onnx-int8"), (None, "onnx-float32")])
def test_an_onnx_run_records_its_graphs_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quantize: str | None, backend: str
) -> None:
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")  # a saved encoder knows its weights' identity, and the export records it
    enc.export_onnx(tmp_path / "graph", quantize=quantize)  # type: ignore[arg-type]
    data = _beir(tmp_path / "data")
    assert main(_evaluate(tmp_path / "graph", data, "--model-backend", "onnx", "--json")) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["backend"] == backend
    assert record["weights_sha256"] == enc.weights_sha256  # the export reports the float32 weights' identity


def test_a_hybrid_run_records_backend_and_weights(
    world: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, sha = world
    pq = tmp_path / "hybrid.json"
    assert main(_evaluate(model, data, "--hybrid", "rrf", "--json", "--per-query", str(pq))) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["backend"], record["weights_sha256"]) == ("torch", sha)
    meta = load_per_query(pq)[1]
    assert (meta["backend"], meta["weights_sha256"]) == ("torch", sha)
