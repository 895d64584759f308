from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers._io import load_gaussians, save_gaussians
from kl_retrievers.cli import build_parser, main, read_texts


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert choices is not None
    commands = list(choices)
    assert {"demo", "encode"} <= set(commands)
    for name in [None, *commands]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"] if name is None else [name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: kl-retrievers" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kl_retrievers.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("kl-retrievers ")


def test_read_texts_formats(tmp_path: Path) -> None:
    beir = tmp_path / "corpus.jsonl"
    beir.write_text(json.dumps({"_id": "d1", "title": "T", "text": "body"}) + "\n\n")
    assert read_texts(beir) == (["d1"], ["T body"])
    plain = tmp_path / "texts.txt"
    plain.write_text("one\n\ntwo\n")
    assert read_texts(plain) == (["0", "1"], ["one", "two"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2"):
        read_texts(bad)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="--field"):
        read_texts(other)
    assert read_texts(other, "body") == (["0"], ["x"])


@pytest.mark.parametrize("out_name", ["out.safetensors", "out_npy"])
def test_encode_command_writes_what_the_encoder_computes(tmp_path: Path, out_name: str) -> None:
    enc = make_tiny_encoder()
    model_dir = enc.save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(["hello world", "the cat sat", "sea"])]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / out_name
    code = main(["encode", "--input", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"])
    assert code == 0
    g, ids = load_gaussians(out)
    assert ids == ["d0", "d1", "d2"]
    expected = enc.encode_documents(["hello world", "the cat sat", "sea"])
    np.testing.assert_allclose(g.mean, expected.mean, atol=1e-6)
    np.testing.assert_allclose(g.var, expected.var, rtol=1e-6)
    if out.suffix != ".safetensors":
        meta = json.loads((out / "config.json").read_text())
        assert meta["score"]["direction"] == "higher_is_better" and meta["metadata"]["kind"] == "document"
        assert not list(out.glob("*.pkl"))


def test_encode_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["encode", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "input file not found" in capsys.readouterr().err
    assert main(["encode", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "kl-retrievers encode: error: nothing to encode: give texts or --input FILE\n"


def test_saved_gaussians_reject_wrong_ids_and_missing_files(tmp_path: Path) -> None:
    from conftest import random_gaussians

    with pytest.raises(ValueError, match="one id per row"):
        save_gaussians(tmp_path / "g", random_gaussians(2, 3), ids=["only-one"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="mean.npy is missing"):
        load_gaussians(tmp_path / "empty")


@pytest.mark.integration
def test_demo_prints_scores_and_uncertainty(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "-k", "2", "why does bread rise"]) == 0
    out = capsys.readouterr().out
    assert "query: 'why does bread rise'" in out and "uncertainty" in out
    first = next(line for line in out.splitlines() if line.strip().startswith("1."))
    assert "-KL=" in first and "[cook-1]" in first
    # the default ships a calibrator: each query also gets its confidence, a probability
    head = next(line for line in out.splitlines() if line.startswith("query: 'why does bread rise'"))
    confidence = float(head.rsplit("confidence ", 1)[1].rstrip(")"))
    assert 0.0 <= confidence <= 1.0
    assert sum(line.strip().startswith(("1.", "2.", "3.")) for line in out.splitlines()) == 2  # -k 2, not the depth


def test_index_and_search_commands_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc = make_tiny_encoder()
    model_dir = enc.save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": "a", "title": "", "text": "the cat sat on the mat", "year": 2020},
        {"_id": "b", "title": "", "text": "hello world", "year": 2021},
        {"_id": "c", "title": "", "text": "green tea and black tea", "year": 2022},
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store_dir = tmp_path / "store"
    assert main(["index", str(corpus), "--out", str(store_dir), "--model", str(model_dir), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(store_dir), "hello world", "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == "neg_kl" and len(result["results"]) == 3
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True)
    # the scores are the exact -KL of the saved encoder's Gaussians
    from kl_retrievers import neg_kl

    q = enc.encode_queries(["hello world"]).astype(np.float64)
    d = enc.encode_documents([str(r["text"]) for r in rows]).astype(np.float64)
    expected = dict(zip("abc", neg_kl(q, d), strict=True))
    for hit in result["results"]:
        assert hit["score"] == pytest.approx(expected[hit["id"]], rel=1e-5)
    assert main(["search", str(store_dir), "hello", "--json", "--filter", '{"year": {"$gte": 2021}}']) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert {h["id"] for h in hits} == {"b", "c"}


def test_index_a_folder_of_text_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = make_tiny_encoder().save_pretrained(tmp_path / "model")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "one.txt").write_text("hello world")
    (docs / "sub" / "two.md").write_text("# the cat\nsat on the mat")
    (docs / "skip.bin").write_bytes(b"\x00")
    out = tmp_path / "store"
    assert main(["index", str(docs), "--out", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    assert main(["search", str(out), "cat", "-k", "5"]) == 0
    text = capsys.readouterr().out
    assert "[one.txt]" in text and "[sub/two.md]" in text and "skip.bin" not in text
    assert main(["search", str(tmp_path / "nothing"), "cat"]) == 2


def test_index_command_passes_the_approximate_index_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = make_tiny_encoder().save_pretrained(tmp_path / "model")
    corpus = tmp_path / "texts.txt"
    corpus.write_text("".join(f"document number {i} about topic {i % 7}\n" for i in range(300)))
    out = tmp_path / "store"
    args = ["index", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress", "--index-type", "ivf"]
    args += ["--compression", "pq", "--pq-m", "4", "--pq-nbits", "4", "--nlist", "4", "--nprobe", "2"]
    assert main([*args, "--refine", "sq8", "--pool", "50"]) == 0
    params = json.loads((out / "config.json").read_text())["index_params"]
    assert (params["nlist"], params["nprobe"], params["pq_m"], params["pq_nbits"]) == (4, 2, 4, 4)
    assert (params["refine"], params["rescore_pool"], params["compression"]) == ("sq8", 50, "pq")
    capsys.readouterr()
    assert main(["search", str(out), "document number 17 about topic 3", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    with pytest.raises(SystemExit):
        main([*args, "--refine", "pq"])
