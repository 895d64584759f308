"""``evaluate --save-run`` / ``--per-query``: what an output path may replace, and ``-``.

An existing file is replaced only when it is an earlier output of the same kind (a TREC run for
``--save-run``, a per-query file for ``--per-query``), recognised by its content, as ``encode --out
X.safetensors`` replaces saved Gaussians only; model weights, a tokenizer or a user's file are refused
before any work. ``-`` (stdout) is refused for both, and a ``--save-run`` name with the suffix of model
weights. Tiny BEIR folder under ``tmp_path`` and the BM25 baseline: no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_alpha_beir
from kl_retrievers.cli import main
from kl_retrievers.evaluation import load_per_query, save_per_query, write_trec_run


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a file named "-" would land here


def _evaluate(ds: Path, *extra: str) -> int:
    return main(["evaluate", str(ds), "--baseline", "bm25", "--no-progress", *extra])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("kl-retrievers evaluate: error:"), err
    return err[-1]


def _model_folder(root: Path) -> Path:
    """A model folder's look-alike: binary weights, a tokenizer.json and a config.json."""
    root.mkdir()
    (root / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 8)
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {"a": 0}}}))
    (root / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return root


# ---------------------------------------------------------------- F2: files that are not an earlier output


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ("--save-run", "model.safetensors"),  # refused by its suffix
        ("--save-run", "weights"),  # the same bytes without a suffix: refused by its content
        ("--save-run", "tokenizer.json"),
        ("--save-run", "config.json"),
        ("--per-query", "tokenizer.json"),
        ("--per-query", "config.json"),
    ],
)
def test_an_output_over_a_model_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, name: str
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    folder = _model_folder(tmp_path / "tiny")
    (folder / "weights").write_bytes((folder / "model.safetensors").read_bytes())
    target = folder / name
    before = target.read_bytes()
    assert _evaluate(ds, flag, str(target)) == 2
    line = _error(capsys)
    assert flag in line and str(target) in line, line
    assert ("suffix" if target.suffix == ".safetensors" else "the file exists and is not") in line, line
    assert target.read_bytes() == before


def test_save_run_over_model_weights_is_refused_even_when_the_dataset_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _model_folder(tmp_path / "tiny") / "model.safetensors"
    before = weights.read_bytes()
    assert _evaluate(tmp_path / "no-such-dataset", "--save-run", str(weights)) == 2
    line = _error(capsys)
    assert "--save-run" in line and "not found" not in line, line
    assert weights.read_bytes() == before


@pytest.mark.parametrize(
    ("flag", "name", "content"),
    [
        ("--save-run", "notes.txt", "my notes\nsecond line\n"),
        ("--save-run", "data.tsv", "q1\td1\t1\n"),  # a qrels-like table is not a run
        ("--per-query", "results.csv", "a,b\n1,2\n"),
        ("--per-query", "other.json", '{"results": {"q1": 0.5}}\n'),
        ("--per-query", "list.json", "[1, 2, 3]\n"),
    ],
)
def test_an_output_over_a_user_file_that_is_not_that_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, name: str, content: str
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    target = tmp_path / name
    target.write_text(content)
    assert _evaluate(ds, flag, str(target)) == 2
    line = _error(capsys)
    assert flag in line and str(target) in line and "delete the file first" in line, line
    assert target.read_text() == content


def test_save_run_over_a_per_query_file_says_which_output_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    pq = tmp_path / "pq.json"
    save_per_query(pq, {"q1": {"ndcg@10": 0.5}}, meta={"model": "m"})
    before = pq.read_bytes()
    assert _evaluate(ds, "--save-run", str(pq)) == 2
    assert "is a per-query results file" in _error(capsys)
    assert pq.read_bytes() == before


def test_per_query_over_a_run_file_says_which_output_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    run = tmp_path / "run.tsv"
    write_trec_run(run, {"q1": {"d1": 1.0}}, tag="t")
    before = run.read_bytes()
    assert _evaluate(ds, "--per-query", str(run)) == 2
    assert "is a TREC run" in _error(capsys)
    assert run.read_bytes() == before


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".onnx", ".npy", ".SafeTensors"])
def test_save_run_refuses_a_weights_suffix_even_for_a_new_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    target = tmp_path / f"run{suffix}"
    assert _evaluate(ds, "--save-run", str(target)) == 2
    line = _error(capsys)
    assert "--save-run" in line and "suffix" in line and suffix in line, line
    assert not target.exists()


# ---------------------------------------------------------------- earlier outputs are still replaced


def test_a_rerun_replaces_its_own_run_and_per_query_files(tmp_path: Path) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    run, pq = tmp_path / "out" / "bm25.trec", tmp_path / "out" / "pq.json"
    assert _evaluate(ds, "--save-run", str(run), "--per-query", str(pq)) == 0
    first = run.read_text()
    run.write_text("q9 Q0 d9 1 0.5 old\n")  # an earlier run of another query: replaced
    assert _evaluate(ds, "--save-run", str(run), "--per-query", str(pq)) == 0
    assert run.read_text() == first
    assert set(load_per_query(pq)[0]) == {"q1", "q2"}


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_a_per_query_table_is_replaced(tmp_path: Path, suffix: str) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    pq = tmp_path / f"pq{suffix}"
    save_per_query(pq, {"old": {"ndcg@10": 0.5}})
    assert _evaluate(ds, "--per-query", str(pq)) == 0
    assert set(load_per_query(pq)[0]) == {"q1", "q2"}


def test_an_empty_file_and_a_long_run_are_replaced(tmp_path: Path) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    empty = tmp_path / "empty.trec"
    empty.touch()  # e.g. made by mktemp
    assert _evaluate(ds, "--save-run", str(empty)) == 0
    assert empty.read_text().startswith("q1 Q0 ")
    long_run = tmp_path / "long.trec"  # longer than what is read to recognise it
    write_trec_run(long_run, {f"q{i}": {f"d{j}": float(j) for j in range(50)} for i in range(100)})
    assert long_run.stat().st_size > 1 << 16
    assert _evaluate(ds, "--save-run", str(long_run)) == 0
    assert long_run.read_text().startswith("q1 Q0 ")


# ---------------------------------------------------------------- F8: "-"


@pytest.mark.parametrize("flag", ["--save-run", "--per-query"])
def test_a_dash_output_is_refused_as_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    assert _evaluate(ds, flag, "-") == 2
    line = _error(capsys)
    assert f"{flag} -" in line and "stdout" in line and "./-" in line, line
    assert not (tmp_path / "-").exists()


def test_a_file_named_dash_is_written_when_spelled_with_its_folder(tmp_path: Path) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    assert _evaluate(ds, "--save-run", "./-") == 0
    assert (tmp_path / "-").read_text().startswith("q1 Q0 ")
