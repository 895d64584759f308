"""``kl-retrievers encode`` / ``index`` inputs and outputs: file modes, what may be replaced, corpus formats, flags.

Every test runs in-process on a tiny random encoder saved under ``tmp_path`` (no download).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import Gaussians
from kl_retrievers._io import load_gaussians, save_gaussians
from kl_retrievers.cli import build_parser, main


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(make_tiny_encoder().save_pretrained(tmp_path_factory.mktemp("inputs-model") / "model"))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _err(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"kl-retrievers {command}: error:"), err
    return err[-1]


def _documents(store: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (store / "documents.jsonl").read_text().splitlines() if line.strip()]


def _index(corpus: Path, out: Path, model_dir: Path, *extra: str) -> int:
    return main(["index", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress", *extra])


# ---------------------------------------------------------------- 1. file mode of a .safetensors output
@pytest.mark.usefixtures("umask_022")
def test_encode_safetensors_gets_the_umask_mode(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "g.safetensors"
    assert main(["encode", "hello", "world", "--out", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not safetensors' 0600


@pytest.mark.usefixtures("umask_022")
def test_save_gaussians_file_gets_the_umask_mode(tmp_path: Path) -> None:
    out = save_gaussians(tmp_path / "g.safetensors", Gaussians(np.zeros((2, 3)), np.ones((2, 3))))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


# ---------------------------------------------------------------- 2. an existing .safetensors that is not ours
def _weights(path: Path) -> bytes:
    from safetensors.numpy import save_file

    save_file({"weight": np.ones((2, 2), np.float32)}, str(path))
    return path.read_bytes()


def test_encode_refuses_to_replace_model_weights(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "model.safetensors"
    before = _weights(weights)
    assert main(["encode", "hi", "--out", str(weights), "--model", str(model_dir), "--no-progress"]) == 2
    err = _err(capsys, "encode")
    assert str(weights) in err and "does not hold saved Gaussians" in err
    assert weights.read_bytes() == before


def test_encode_replaces_its_own_safetensors(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "g.safetensors"
    for texts in (["one"], ["one", "two"]):
        assert main(["encode", *texts, "--out", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    g, ids = load_gaussians(out)
    assert len(g) == 2 and ids == ["0", "1"]


def test_save_gaussians_refuses_another_file_unless_overwrite(tmp_path: Path) -> None:
    g = Gaussians(np.zeros((1, 3)), np.ones((1, 3)))
    other = tmp_path / "data.safetensors"
    other.write_text("not a safetensors file")
    with pytest.raises(ValueError, match="does not hold saved Gaussians"):
        save_gaussians(other, g)
    assert other.read_text() == "not a safetensors file"
    save_gaussians(other, g, overwrite=True)
    assert len(load_gaussians(other)[0]) == 1


# ---------------------------------------------------------------- 3. nested metadata and other non-scalar fields
def test_index_flattens_beir_metadata_and_warns_about_dropped_fields(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": "a", "title": "T1", "text": "the cat", "metadata": {"year": 2020, "title": "inner", "tags": ["x"]}},
        {"_id": "b", "title": "T2", "text": "a dog", "metadata": {"year": 2010}, "links": [1, 2]},
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert _index(corpus, tmp_path / "s", model_dir) == 0
    metas = {d["id"]: d["metadata"] for d in _documents(tmp_path / "s")}
    assert metas == {"a": {"title": "T1", "year": 2020}, "b": {"title": "T2", "year": 2010}}
    warned = [r.getMessage() for r in caplog.records if r.name == "kl_retrievers.cli"]
    assert len(warned) == 2, warned  # one about the clash, one about the dropped fields
    assert any("title" in w and "top-level" in w for w in warned)
    assert any("links" in w and "metadata.tags" in w and "2 value(s)" in w for w in warned)


# ---------------------------------------------------------------- 4. .tsv and .csv inputs
def test_index_reads_tsv_as_id_tab_text_and_skips_a_header(tmp_path: Path, model_dir: Path) -> None:
    corpus = tmp_path / "collection.TSV"
    corpus.write_text("pid\tpassage\n7\tthe cat sat\n3\tdog in the sun\n")
    assert _index(corpus, tmp_path / "s", model_dir) == 0
    docs = _documents(tmp_path / "s")
    assert [(d["id"], d["text"]) for d in docs] == [("7", "the cat sat"), ("3", "dog in the sun")]


def test_encode_input_tsv_takes_its_ids(tmp_path: Path, model_dir: Path) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_text("d7\tthe cat sat\r\nd3\tdog in the sun\r\n")
    out = tmp_path / "g.safetensors"
    argv = ["encode", "--input", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"]
    assert main(argv) == 0
    assert load_gaussians(out)[1] == ["d7", "d3"]


def test_tsv_with_another_column_count_is_refused_naming_the_line(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_text("1\tone\n2\ttwo\textra\n")
    assert _index(corpus, tmp_path / "s", model_dir) == 2
    err = _err(capsys, "index")
    assert "line 2" in err and "3 tab-separated columns" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["index", "encode"])
def test_csv_is_refused_with_a_conversion_hint(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    corpus = tmp_path / "c.Csv"
    corpus.write_text("id,text\n1,one\n")
    if command == "index":
        assert _index(corpus, tmp_path / "s", model_dir) == 2
    else:
        argv = ["encode", "-i", str(corpus), "--out", str(tmp_path / "g"), "--model", str(model_dir)]
        assert main(argv) == 2
    err = _err(capsys, command)
    assert ".csv" in err and "JSON Lines" in err


# ---------------------------------------------------------------- 5. Ray flags without --backend ray
@pytest.mark.parametrize("flag", [["--num-workers", "8"], ["--ray-address", "10.0.0.1:6379"]])
def test_ray_flags_need_backend_ray(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n')
    out = tmp_path / "enc"
    argv = ["encode", "-i", str(corpus), "--out", str(out), "--shard-size", "1", "--model", str(model_dir), *flag]
    assert main([*argv, "--no-progress"]) == 2
    err = _err(capsys, "encode")
    assert flag[0] in err and "--backend ray" in err
    assert not out.exists()


# ---------------------------------------------------------------- 6. index options for other index kinds
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--nprobe", "3"], "--nprobe applies to --index-type ivf only"),
        (["--pool", "5"], "--pool applies to --index-type hnsw or ivf only"),
        (["--pq-m", "3"], "--pq-m applies to --index-type hnsw or ivf only"),
        (["--index-type", "hnsw", "--nlist", "8"], "--nlist applies to --index-type ivf only"),
        (["--index-type", "ivf", "--pq-nbits", "4"], "--pq-nbits applies to --compression pq only"),
        (["--index-type", "hnsw", "--compression", "sq8", "--pq-m", "4"], "--pq-m applies to --compression pq"),
        (["--compression", "sq8"], "--compression applies to --index-type hnsw or ivf only"),
    ],
)
def test_index_refuses_options_that_do_not_apply(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n')
    assert _index(corpus, tmp_path / "s", model_dir, *extra) == 2
    assert named in _err(capsys, "index")
    assert not (tmp_path / "s").exists()


def test_index_passes_options_that_apply(tmp_path: Path, model_dir: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(3)))
    assert _index(corpus, tmp_path / "s", model_dir, "--index-type", "ivf", "--nlist", "2", "--nprobe", "2") == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert '"nlist": 2' in json.dumps(config) and '"nprobe": 2' in json.dumps(config)


# ---------------------------------------------------------------- 7. --field
def test_field_is_refused_for_text_input_and_positional_texts(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\n")
    base = ["--out", str(tmp_path / "g.safetensors"), "--model", str(model_dir), "--field", "nosuch", "--no-progress"]
    assert main(["encode", "--input", str(lines), *base]) == 2
    assert "--field nosuch" in _err(capsys, "encode")
    assert main(["encode", "some", "text", *base]) == 2
    assert "--field nosuch" in _err(capsys, "encode")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    assert _index(folder, tmp_path / "s", model_dir, "--field", "body") == 2
    assert "--field body" in _err(capsys, "index")
    assert not (tmp_path / "g.safetensors").exists() and not (tmp_path / "s").exists()


def test_field_chosen_is_not_copied_into_metadata(tmp_path: Path, model_dir: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "a", "contents": "the cat", "lang": "en"}) + "\n")
    assert _index(corpus, tmp_path / "s", model_dir, "--field", "contents") == 0
    (doc,) = _documents(tmp_path / "s")
    assert doc["text"] == "the cat" and doc["metadata"] == {"lang": "en"}


# ---------------------------------------------------------------- 8. smaller ones
def test_json_array_says_json_lines_are_needed(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in ('[{"_id": "a", "text": "x"}]\n', '[\n  {"_id": "a", "text": "x"}\n]\n'):
        corpus = tmp_path / "c.json"
        corpus.write_text(text)
        assert _index(corpus, tmp_path / "s", model_dir) == 2
        err = _err(capsys, "index")
        assert "JSON Lines (one JSON object per line)" in err and "line 1" in err


def test_text_folder_suffixes_in_any_case(tmp_path: Path, model_dir: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "A.TXT").write_text("upper case suffix")
    (folder / "b.Md").write_text("mixed case suffix")
    assert _index(folder, tmp_path / "s", model_dir) == 0
    assert sorted(d["id"] for d in _documents(tmp_path / "s")) == ["A.TXT", "b.Md"]


def test_stdin_input_is_refused_clearly(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["encode", "--input", "-", "--out", "g.safetensors", "--model", str(model_dir), "--no-progress"]
    assert main(argv) == 2
    assert "stdin" in _err(capsys, "encode")
    assert _index(Path("-"), tmp_path / "s", model_dir) == 2
    assert "stdin" in _err(capsys, "index")


@pytest.mark.parametrize("command", ["encode", "index"])
def test_batch_size_help_shows_its_default(command: str) -> None:
    parser = build_parser()
    choices: Any = next(a for a in parser._actions if a.dest == "command").choices
    action = next(a for a in choices[command]._actions if a.dest == "batch_size")
    assert action.help and "default 32" in action.help


def test_search_of_a_missing_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexist"
    assert main(["search", str(missing), "q"]) == 2
    err = _err(capsys, "search")
    assert "no such folder" in err and "config.json" not in err


def test_streaming_encode_refuses_field_with_text_input(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (a .tsv input is read by the streaming path too: tests/test_sharded_tsv.py)
    base = ["--out", str(tmp_path / "enc"), "--shard-size", "1", "--model", str(model_dir), "--no-progress"]
    lines = tmp_path / "lines.txt"
    lines.write_text("one\n")
    assert main(["encode", "-i", str(lines), "--field", "body", *base]) == 2
    assert "--field body" in _err(capsys, "encode")
    assert not (tmp_path / "enc").exists()


# ---------------------------------------------------------------- 9. second review of the inputs and outputs
def _encode_argv(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", *extra, "--out", str(out), "--model", str(model_dir), "--no-progress"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_encode_out_a_named_pipe_is_refused_without_opening_it(tmp_path: Path, model_dir: Path) -> None:
    import kl_retrievers

    fifo = tmp_path / "g.safetensors"
    os.mkfifo(fifo)
    # in a child process: opening the pipe blocks in native code holding the GIL, so a thread could not time out
    code = "import sys; from kl_retrievers.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(Path(kl_retrievers.__file__).resolve().parents[1])}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *_encode_argv(model_dir, fifo, "hi")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("encode --out NAMED_PIPE.safetensors waited on the pipe")
    assert done.returncode == 2, done.stderr
    assert "not a regular file" in done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # refused, not replaced


@pytest.mark.parametrize(
    ("header", "columns"),
    [("qid\tquery", ("qid", "query")), ("id\ttext", ("id", "text")), ("docid\tTitle", ("docid", "Title"))],
)
def test_tsv_header_is_skipped_with_a_warning_naming_its_columns(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture, header: str, columns: tuple[str, str]
) -> None:
    corpus = tmp_path / "q.tsv"
    corpus.write_text(f"\n{header}\n1\twhat is x\n")
    out = tmp_path / "g.safetensors"
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert main(_encode_argv(model_dir, out, "--input", str(corpus))) == 0
    assert load_gaussians(out)[1] == ["1"]
    warned = [r for r in caplog.records if r.name == "kl_retrievers.cli" and r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "line 2" in warned[0].getMessage() and all(repr(c) in warned[0].getMessage() for c in columns)


def test_tsv_with_a_byte_order_mark(tmp_path: Path, model_dir: Path) -> None:
    headed, bare = tmp_path / "headed.tsv", tmp_path / "bare.tsv"
    headed.write_bytes("\ufeffpid\tpassage\nd1\tone\n".encode())
    bare.write_bytes("\ufeffd1\tone\nd2\ttwo\n".encode())
    for corpus, ids in ((headed, ["d1"]), (bare, ["d1", "d2"])):
        out = tmp_path / f"{corpus.stem}.safetensors"
        assert main(_encode_argv(model_dir, out, "--input", str(corpus))) == 0
        assert load_gaussians(out)[1] == ids


def test_tsv_empty_id_says_the_id_column_is_empty(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_text("d1\tone\n \thello\n")
    assert main(_encode_argv(model_dir, tmp_path / "g.safetensors", "--input", str(corpus))) == 2
    err = _err(capsys, "encode")
    assert "line 2" in err and "the id column is empty" in err and "'_id'" not in err


def test_csv_message_is_right_with_and_without_shard_size(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.csv"
    corpus.write_text("id,text\n1,one\n")
    for extra in ([], ["--shard-size", "1"]):
        assert main(_encode_argv(model_dir, tmp_path / "enc", "--input", str(corpus), *extra)) == 2
        err = _err(capsys, "encode")
        assert "JSON Lines" in err and ".tsv" in err and "without --shard-size" in err


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the umask is read from /proc on Linux")
@pytest.mark.usefixtures("umask_022")
def test_atomic_writes_read_the_umask_without_changing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers._io import atomic_dir, atomic_file

    calls: list[int] = []
    real_umask = os.umask

    def spy(mask: int) -> int:
        calls.append(mask)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", spy)
    with atomic_file(tmp_path / "a.json") as tmp:
        os.close(os.open(tmp, os.O_WRONLY | os.O_TRUNC, 0o600))
    with atomic_dir(tmp_path / "folder") as folder:
        (folder / "b.txt").write_text("b")
    assert calls == []  # setting it (even briefly to 0) would race with files other threads create
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder" / "b.txt").stat().st_mode) == 0o644


@pytest.mark.usefixtures("umask_022")
def test_reencoding_keeps_the_mode_the_user_gave_the_file(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "g.safetensors"
    assert main(_encode_argv(model_dir, out, "hello")) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    out.chmod(0o600)
    assert main(_encode_argv(model_dir, out, "hello", "world")) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(load_gaussians(out)[0]) == 2


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ('{"_id": "a", "text": "x", "metadata": {"s": NaN}}', "'metadata.s' is NaN"),
        ('{"_id": "a", "text": "x", "s": Infinity}', "'s' is Infinity"),
    ],
)
def test_index_refuses_non_finite_metadata_naming_file_and_line(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], row: str, field: str
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "b", "text": "y"}\n\n' + row + "\n")
    assert _index(corpus, tmp_path / "s", model_dir) == 2
    err = _err(capsys, "index")
    assert f"{corpus}, line 3" in err and field in err
    assert not (tmp_path / "s").exists()


def test_index_nested_metadata_never_gives_the_id_or_text_and_fills_a_dropped_field(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = tmp_path / "c.jsonl"
    row = {"_id": "a", "text": "x", "tags": ["l"], "metadata": {"tags": "t", "_id": "z", "id": "inner", "text": "?"}}
    corpus.write_text(json.dumps(row) + "\n")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert _index(corpus, tmp_path / "s", model_dir) == 0
    (doc,) = _documents(tmp_path / "s")
    assert (doc["id"], doc["text"], doc["metadata"]) == ("a", "x", {"tags": "t"})
    warned = " | ".join(r.getMessage() for r in caplog.records if r.name == "kl_retrievers.cli")
    assert "top-level value is kept" not in warned  # the top-level tags (a list) is not kept
    assert "_id, id, text" in warned and "for tags, the 'metadata' object's scalar value" in warned


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_index_without_options_records_the_store_defaults(tmp_path: Path, model_dir: Path, index_type: str) -> None:
    from kl_retrievers.index import KLStore

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n')
    assert _index(corpus, tmp_path / "cli", model_dir, "--index-type", index_type) == 0
    store = KLStore(make_tiny_encoder(), index_type=index_type, show_progress_bar=False)  # type: ignore[arg-type]
    store.add(["x"], ids=["a"])
    store.save(tmp_path / "lib")
    params = [json.loads((tmp_path / name / "config.json").read_text())["index_params"] for name in ("cli", "lib")]
    assert params[0] == params[1]
