"""Regression tests for the CLI audit (``kl-retrievers encode / index / search``): one test per finding.

Every test runs in-process on a tiny random encoder saved under ``tmp_path`` (no download), except
the closed-pipe one, which also runs the real console entry point in a subprocess.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import Gaussians
from kl_retrievers.cli import main

DOCS = [
    {"_id": "d0", "title": "Cats", "text": "the cat sat on the mat"},
    {"_id": "d1", "title": "", "text": "hello world"},
    {"_id": "d2", "title": "Tea", "text": "green tea and black tea"},
    {"_id": "d3", "title": "", "text": "a dog in the sun"},
    {"_id": "d4", "title": "Sea", "text": "a train at sea"},
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(make_tiny_encoder().save_pretrained(tmp_path_factory.mktemp("audit-model") / "model"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit-corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("audit-store") / "store"
    assert main(["index", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    return out


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


# ---------------------------------------------------------------- 1. encode --out FOLDER
def test_encode_refuses_to_replace_a_folder_that_is_not_an_encode_output(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("precious")
    base = ["encode", "hello world", "--model", str(model_dir), "--no-progress", "--out"]
    assert main([*base, str(project)]) == 2
    err = _error(capsys)
    assert str(project) in err and "not an encode output" in err, err
    assert (project / "notes.txt").read_text() == "precious"
    # a folder holding a config.json that is not saved Gaussians (a saved model) is refused too
    assert main([*base, str(model_dir)]) == 2
    assert "not an encode output" in _error(capsys)
    assert (model_dir / "config.json").is_file()
    # an encode output is replaced; an empty folder is used; a .safetensors file is overwritten
    out = tmp_path / "g"
    assert main([*base, str(out)]) == 0
    assert main(["encode", "the cat", "sea", "--model", str(model_dir), "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "ids.json").read_text()) == ["0", "1"]
    (tmp_path / "empty").mkdir()
    assert main([*base, str(tmp_path / "empty")]) == 0
    file_out = tmp_path / "g.safetensors"
    assert main([*base, str(file_out)]) == 0
    assert main([*base, str(file_out)]) == 0
    (tmp_path / "dir.safetensors").mkdir()
    assert main([*base, str(tmp_path / "dir.safetensors")]) == 2
    assert "is a folder" in _error(capsys)


# ---------------------------------------------------------------- 2. index --out FOLDER with a config.json
def test_index_refuses_a_folder_whose_config_is_not_a_kl_store(
    tmp_path: Path, model_dir: Path, corpus: Path, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    model_copy = tmp_path / "model-copy"
    shutil.copytree(model_dir, model_copy)
    before = sorted(p.name for p in model_copy.iterdir())
    argv = ["index", str(corpus), "--model", str(model_dir), "--no-progress", "--out"]
    assert main([*argv, str(model_copy)]) == 2
    err = _error(capsys)
    assert "not a KL store folder" in err and str(model_copy) in err, err
    assert sorted(p.name for p in model_copy.iterdir()) == before
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project"}')
    assert main([*argv, str(project)]) == 2
    assert "not a KL store folder" in _error(capsys)
    assert (project / "config.json").read_text() == '{"name": "my project"}'
    # a KL store is replaced
    again = tmp_path / "store"
    shutil.copytree(store_dir, again)
    assert main([*argv, str(again)]) == 0


def test_the_store_format_is_the_one_klstore_writes(store_dir: Path) -> None:
    from kl_retrievers.cli_common import KLSTORE_FORMAT
    from kl_retrievers.store import _format

    assert _format.FORMAT_NAME == KLSTORE_FORMAT == json.loads((store_dir / "config.json").read_text())["format"]


# ---------------------------------------------------------------- 3. index a BEIR folder
def test_index_a_beir_folder_reads_its_corpus(
    tmp_path: Path,
    model_dir: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(corpus.read_text())
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "cat"}\n')
    (beir / "SOURCE.md").write_text("# where this data came from\n")
    out = tmp_path / "store"
    with caplog.at_level(logging.INFO, logger="kl_retrievers.cli"):
        assert main(["index", str(beir), "--out", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    assert any("corpus.jsonl" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    rows = [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [d["_id"] for d in DOCS]
    assert rows[0]["text"] == "Cats the cat sat on the mat"  # title + text, as encode reads a BEIR corpus
    capsys.readouterr()
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "data.bin").write_bytes(b"\x00")
    assert main(["index", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2"), "--model", str(model_dir)]) == 2
    err = _error(capsys)
    assert "corpus.jsonl" in err and ".jsonl" in err and ".txt or .md" in err, err


# ---------------------------------------------------------------- 4. JSON lines suffixes
@pytest.mark.parametrize("name", ["c.JSONL", "c.ndjson", "c.json", "c.Json"])
def test_json_lines_are_read_whatever_the_suffix_case(tmp_path: Path, corpus: Path, name: str) -> None:
    from kl_retrievers.cli import read_texts
    from kl_retrievers.sharded import plan_shards, read_shard

    path = tmp_path / name
    path.write_text(corpus.read_text())
    ids, texts = read_texts(path)
    assert ids == [d["_id"] for d in DOCS] and texts[1] == "hello world"
    specs, _ = plan_shards(path, shard_size=2)
    sharded = [read_shard(path, spec) for spec in specs]
    assert [i for part, _ in sharded for i in part] == ids
    assert [t for _, part in sharded for t in part] == texts


def test_a_json_array_file_fails_at_its_first_line(tmp_path: Path) -> None:
    from kl_retrievers.cli import read_texts

    path = tmp_path / "docs.json"
    path.write_text(json.dumps(DOCS, indent=1))
    with pytest.raises(ValueError, match=r"docs\.json, line 1: not valid JSON"):
        read_texts(path)


# ---------------------------------------------------------------- 5. queries encoded alone when not batch-invariant
class _BatchDependent:
    """The tiny torch encoder, made to behave like int8 ONNX: a query's encoding depends on its batch."""

    batch_invariant = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, texts: Any, *, batch_size: int = 32, **kw: Any) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.batch_sizes.append(batch_size)
        means, variances = [], []
        for s in range(0, len(texts), batch_size):
            g = self.inner.encode_queries(texts[s : s + batch_size], show_progress_bar=False)
            mean = np.asarray(g.mean, dtype=np.float64)
            means.append(mean + 0.3 * mean.mean(axis=0))  # like a per-batch activation scale
            variances.append(np.asarray(g.var, dtype=np.float64))
        return Gaussians(np.concatenate(means), np.concatenate(variances))


def test_search_results_do_not_depend_on_the_other_queries(
    store_dir: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.cli as cli
    from kl_retrievers.index import KLStore

    inner = cli._load_encoder(str(model_dir))
    fake = _BatchDependent(inner)
    monkeypatch.setattr(cli, "_load_encoder", lambda *a, **kw: fake)

    def hits(*queries: str) -> list[list[tuple[str, float]]]:
        capsys.readouterr()
        assert main(["search", str(store_dir), *queries, "-k", "5", "--json"]) == 0
        lines = capsys.readouterr().out.splitlines()
        return [[(r["id"], r["score"]) for r in json.loads(line)["results"]] for line in lines]

    alone = hits("hello world")[0]
    together = hits("green tea", "hello world", "the cat sat on the mat")
    assert together[1] == alone
    assert hits("the cat sat on the mat")[0] == together[2]
    api = [(h.id, h.score) for h in KLStore.load(store_dir, encoder=fake).search("hello world", k=5)]
    assert [i for i, _ in api] == [i for i, _ in alone]
    np.testing.assert_allclose([s for _, s in api], [s for _, s in alone], rtol=1e-9)


def test_encode_kind_query_encodes_each_query_alone(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``encode --kind query`` on an int8-like encoder: each saved Gaussian is what ``search(query)`` encodes."""
    import kl_retrievers.cli as cli
    from kl_retrievers import load_gaussians

    fake = _BatchDependent(cli._load_encoder(str(model_dir)))
    monkeypatch.setattr(cli, "_load_encoder", lambda *a, **kw: fake)
    queries = ["green tea", "hello world", "the cat sat on the mat"]
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "text": q}) + "\n" for i, q in enumerate(queries)))
    out = tmp_path / "q.safetensors"
    assert (
        main(
            ["encode", "--input", str(src), "--kind", "query", "--out", str(out), "--batch-size", "8", "--no-progress"]
        )
        == 0
    )
    assert fake.batch_sizes == [1]
    saved, ids = load_gaussians(out)
    assert ids == ["q0", "q1", "q2"]
    for i, q in enumerate(queries):
        alone = fake.encode_queries([q], batch_size=1)
        np.testing.assert_allclose(np.asarray(saved.mean)[i], np.asarray(alone.mean)[0], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- 6. sharded encode and --model-backend
class _OnnxLike:
    """The tiny torch encoder under an ONNX encoder's recorded config (``backend: "onnx"``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.config = self

    def to_dict(self) -> dict[str, Any]:
        return {**self.inner.config.to_dict(), "backend": "onnx"}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_sharded_encode_uses_and_records_the_model_backend(
    tmp_path: Path, model_dir: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.pretrained as pretrained

    real = pretrained.load_model
    seen: list[Any] = []

    def load_model(model: Any = None, *args: Any, backend: str | None = None, **kw: Any) -> Any:
        seen.append(backend)
        encoder = real(model, *args, backend="torch", **kw)
        return _OnnxLike(encoder) if backend == "onnx" else encoder

    monkeypatch.setattr(pretrained, "load_model", load_model)
    out = tmp_path / "shards"
    argv = ["encode", "--input", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"]
    assert main([*argv, "--shard-size", "2", "--model-backend", "torch"]) == 0, _error(capsys)
    assert seen and set(seen) == {"torch"}
    assert json.loads((out / "manifest.json").read_text())["model_backend"] == "torch"
    # resuming with another backend is refused, naming it; onnx itself is accepted
    seen.clear()
    assert main([*argv, "--shard-size", "2", "--model-backend", "onnx"]) == 2
    err = _error(capsys)
    assert "model_backend" in err and "not supported" not in err, err
    assert seen == ["onnx"]
    out2 = tmp_path / "shards-onnx"
    assert main([*argv[:4], str(out2), *argv[5:], "--shard-size", "2", "--model-backend", "onnx"]) == 0
    assert json.loads((out2 / "manifest.json").read_text())["model_backend"] == "onnx"


# ---------------------------------------------------------------- 7. sharded encode and duplicate ids
def test_sharded_encode_refuses_duplicate_ids(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.sharded import plan_shards

    path = tmp_path / "dup.jsonl"
    path.write_text('{"_id": "x", "text": "a"}\n{"_id": "y", "text": "b"}\n\n{"_id": "x", "text": "c"}\n')
    out = tmp_path / "shards"
    argv = ["encode", "--input", str(path), "--out", str(out), "--model", str(model_dir), "--no-progress"]
    assert main([*argv, "--shard-size", "1"]) == 2
    err = _error(capsys)
    assert "line 4: duplicate id 'x' (first on line 1)" in err and str(path) in err, err
    assert not (out / "manifest.json").exists()
    # an integer id and a record number are ids too, as plain encode reads them
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text('{"text": "a"}\n{"id": 0, "text": "b"}\n')
    with pytest.raises(ValueError, match=r"line 2: duplicate id '0' \(first on line 1\)"):
        plan_shards(numbered, shard_size=5)
    unique = tmp_path / "unique.jsonl"
    unique.write_text("".join(json.dumps({"_id": f"d{i}", "text": "tea"}) + "\n" for i in range(50)))
    assert len(plan_shards(unique, shard_size=7)[0]) == 8


# ---------------------------------------------------------------- 8. search on the store's backend
def test_search_defaults_to_the_backend_the_store_was_built_with(
    tmp_path: Path,
    model_dir: Path,
    corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import kl_retrievers.cli as cli

    out = tmp_path / "store"
    argv = ["index", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"]
    assert main([*argv, "--model-backend", "torch"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "backend" not in config["encoder"]["config"]  # a torch encoder's config records none
    real = cli._load_encoder
    seen: list[Any] = []

    def spy(model: Any, device: Any = None, backend: Any = None) -> Any:
        seen.append(backend)
        return real(model, device, "torch")

    monkeypatch.setattr(cli, "_load_encoder", spy)
    with caplog.at_level(logging.INFO, logger="kl_retrievers.cli"):
        assert main(["search", str(out), "hello world", "-k", "2"]) == 0
    assert seen == ["torch"]
    assert any("torch backend" in r.getMessage() and "built with" in r.getMessage() for r in caplog.records)
    assert main(["search", str(out), "hello world", "-k", "2", "--model-backend", "onnx"]) == 0
    assert seen[-1] == "onnx"  # an explicit choice wins
    cfg = json.loads((out / "config.json").read_text())
    cfg["encoder"]["config"]["backend"] = "onnx"  # what an ONNX encoder's config records
    (out / "config.json").write_text(json.dumps(cfg))
    assert main(["search", str(out), "hello world", "-k", "2"]) == 0, _error(capsys)
    assert seen[-1] == "onnx"
    cfg["encoder"]["config"]["backend"] = "torch"
    (out / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr("kl_retrievers.store.faiss._torch_installed", lambda: False)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert main(["search", str(out), "hello world", "-k", "2"]) == 0, _error(capsys)
    assert seen[-1] is None  # torch not installed: the library's default, with a warning
    assert any("not installed" in r.getMessage() for r in caplog.records)
    del cfg["encoder"]["config"]  # a store that records no encoder config: today's default
    (out / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr("kl_retrievers.store.faiss._torch_installed", lambda: True)
    assert main(["search", str(out), "hello world", "-k", "2"]) == 0, _error(capsys)
    assert seen[-1] is None


# ---------------------------------------------------------------- 9. an IVF index not built yet
def test_index_says_when_the_ivf_index_is_not_built_yet(
    tmp_path: Path,
    model_dir: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "store"
    argv = ["index", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store._engines"):
        assert main([*argv, "--index-type", "ivf", "--nlist", "4"]) == 0
    printed = capsys.readouterr().out
    assert "(ivf not built yet: fewer than 32 documents; searches are exact, k=8)" in printed, printed
    warned = [r for r in caplog.records if r.name == "kl_retrievers.store._engines" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "not built yet" in warned[0].getMessage()
    # once per store, not per add
    from kl_retrievers.index import KLStore

    caplog.clear()
    store = KLStore(index_type="ivf", nlist=4)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store._engines"):
        for i in range(3):
            store.add(gaussians=Gaussians(np.full((2, 4), float(i)), np.ones((2, 4))), ids=[f"a{i}", f"b{i}"])
    assert sum("not built yet" in r.getMessage() for r in caplog.records) == 1
    assert not store.is_built


# ---------------------------------------------------------------- 10. a non-UTF-8 file in an index folder
def test_index_folder_names_a_file_that_is_not_utf8(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("hello world")
    (docs / "latin1.md").write_bytes("caf\xe9 au lait".encode("latin-1"))
    assert main(["index", str(docs), "--out", str(tmp_path / "s"), "--model", str(model_dir)]) == 2
    err = _error(capsys)
    assert f"{docs / 'latin1.md'}, line 1: not UTF-8" in err, err


# ---------------------------------------------------------------- 11. folders given where files are read, and back
def test_encode_input_folder_and_search_on_an_encode_output(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    base = ["encode", "--input", str(folder), "--model", str(model_dir), "--no-progress", "--out"]
    for extra in ([], ["--shard-size", "2"]):
        assert main([*base, str(tmp_path / "g"), *extra]) == 2
        err = _error(capsys)
        assert "is a folder" in err and "not accepted" in err and ".jsonl" in err and "not found" not in err, err
    enc_out = tmp_path / "encoded"
    assert main(["encode", "hello world", "--model", str(model_dir), "--no-progress", "--out", str(enc_out)]) == 0
    capsys.readouterr()
    assert main(["search", str(enc_out), "hello"]) == 2
    err = _error(capsys)
    assert "is an encode output" in err and "not a KL store" in err, err
    shards = tmp_path / "shards"
    corpus = tmp_path / "c.txt"
    corpus.write_text("one\ntwo\n")
    argv = ["encode", "--input", str(corpus), "--model", str(model_dir), "--out", str(shards), "--shard-size", "1"]
    assert main([*argv, "--no-progress"]) == 0
    assert main(["search", str(shards), "hello"]) == 2
    assert "is an encode output" in _error(capsys)


# ---------------------------------------------------------------- 12. a closed pipe
def test_search_into_a_closed_pipe_exits_quietly(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` has gone
    stream = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        code = main(["search", str(store_dir), "hello world", "the cat", "-k", "5"])
    finally:
        monkeypatch.undo()
        stream.close()
    assert code == 141
    assert "Broken pipe" not in capsys.readouterr().err


def test_another_broken_pipe_is_still_an_error(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.cli as cli

    def broken(*args: Any, **kw: Any) -> Any:
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a connection to a server, not stdout

    read_end, write_end = os.pipe()  # stdout is a pipe whose reader is still there
    stream = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)
    monkeypatch.setattr(cli, "_load_encoder", broken)
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        code = main(["search", str(store_dir), "hello world"])
    finally:
        monkeypatch.undo()
        stream.close()
        os.close(read_end)
    assert code == 2
    assert "error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_search_into_a_closed_pipe_in_a_real_process(store_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KL_RETRIEVERS_CACHE": str(tmp_path / "cache")}
    queries = [f"hello world {i}" for i in range(40)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kl_retrievers.cli", "search", str(store_dir), *queries, "-k", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.integration
def test_search_with_the_default_int8_onnx_model_does_not_depend_on_the_other_queries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.index import KLStore
    from kl_retrievers.pretrained import load_model

    topics = ["bees", "bread", "rivers", "stars", "tea", "trains", "cats", "volcanoes", "chess", "rain"]
    texts = [f"{topics[i % 10]} and {topics[(3 * i + 1) % 10]}: a short note, number {i}" for i in range(30)]
    corpus = tmp_path / "notes.txt"
    corpus.write_text("\n".join(texts) + "\n")
    store_dir = tmp_path / "store"
    assert main(["index", str(corpus), "--out", str(store_dir), "--no-progress"]) == 0
    assert json.loads((store_dir / "config.json").read_text())["encoder"]["config"]["backend"] == "onnx"
    queries = ["how do bees make honey", "why does bread rise", "what is a volcano"]

    def hits(*qs: str) -> list[list[tuple[str, float]]]:
        capsys.readouterr()
        assert main(["search", str(store_dir), *qs, "-k", "10", "--json"]) == 0
        return [[(r["id"], r["score"]) for r in json.loads(x)["results"]] for x in capsys.readouterr().out.splitlines()]

    together = hits(*queries)
    encoder = load_model(None, backend="onnx")
    assert encoder.batch_invariant is False
    store = KLStore.load(store_dir, encoder=encoder)
    for query, got in zip(queries, together, strict=True):
        assert hits(query)[0] == got
        api = [(h.id, h.score) for h in store.search(query, k=10)]
        assert [i for i, _ in api] == [i for i, _ in got]
        np.testing.assert_allclose([s for _, s in api], [s for _, s in got], rtol=1e-9)


def test_search_with_another_model_does_not_take_the_stores_backend(
    tmp_path: Path, model_dir: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recorded backend belongs to the store's model; another --model (an ONNX export, say) picks its own."""
    import shutil

    import kl_retrievers.cli as cli

    out = tmp_path / "store"
    assert main(["index", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    other = tmp_path / "other-model"
    shutil.copytree(model_dir, other)
    real = cli._load_encoder
    seen: list[Any] = []

    def spy(model: Any, device: Any = None, backend: Any = None) -> Any:
        seen.append((model, backend))
        return real(model, device, "torch")

    monkeypatch.setattr(cli, "_load_encoder", spy)
    assert main(["search", str(out), "hello world", "-k", "2", "--model", str(other)]) == 0, _error(capsys)
    assert seen == [(str(other), None)]
    assert main(["search", str(out), "hello world", "-k", "2"]) == 0, _error(capsys)
    assert seen[-1][1] == "torch"  # its own model: the recorded backend
