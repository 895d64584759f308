"""Every ``kl-retrievers`` subcommand fed bad input: it must fail with ONE line, never a traceback.

What is checked, precisely: the exit status is 2 (argparse's status for a usage error, used for
every failure caused by the input); stderr, after dropping blank lines and log records (``LEVEL
logger: message``, the format ``main`` configures), is exactly one line that starts with
``kl-retrievers``, contains ``error:`` and the file or flag at fault; ``Traceback`` appears nowhere.
Most calls run ``main`` in-process (fast, a tiny random encoder saved under ``tmp_path``); a few run
the real console entry point in a subprocess, where logging goes to the real stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers.cli import build_parser, main

LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
CORPUS = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(["the cat sat", "hello world", "green tea"])]
QUERIES = [{"_id": "q1", "text": "cat"}, {"_id": "q2", "text": "tea"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td2\t1\n"


@dataclass
class World:
    """Paths every case may use (built once per module)."""

    root: Path
    model: Path
    corpus: Path
    store: Path
    beir: Path

    def file(self, name: str, text: str | bytes) -> str:
        path = self.root / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return str(path)

    def damaged_store(self, name: str, damage: Callable[[Path], object]) -> str:
        target = self.root / "stores" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.store, target)
        damage(target)
        return str(target)

    def damaged_model(self, name: str, damage: Callable[[dict], object]) -> str:
        target = self.root / "models" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.model, target)
        config = json.loads((target / "config.json").read_text())
        damage(config)
        (target / "config.json").write_text(json.dumps(config))
        return str(target)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("cli-bad-input")
    model = make_tiny_encoder().save_pretrained(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    store = root / "store"
    assert main(["index", str(corpus), "--out", str(store), "--model", str(model), "--no-progress"]) == 0
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(corpus.read_text())
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    for split in ("test", "train"):
        (beir / "qrels" / f"{split}.tsv").write_text(QRELS)
    (root / "a-file").write_text("not a folder")
    (root / "not-a-store").mkdir()
    (root / "not-a-store" / "keep.txt").write_text("precious")
    (root / "no-texts").mkdir()
    (root / "no-texts" / "data.bin").write_bytes(b"\x00")
    (root / "dir.safetensors").mkdir()
    return World(root, Path(model), corpus, store, beir)


def _mutate_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# (case id, argv built from the world, a fragment the one error line must contain)
Case = tuple[str, Callable[[World], list[str]], str]


def _enc(w: World, *extra: str) -> list[str]:
    return ["encode", "--model", str(w.model), "--no-progress", *extra]


def _idx(w: World, corpus: str, *extra: str) -> list[str]:
    return ["index", corpus, "--model", str(w.model), "--no-progress", "--out", str(w.root / "out-store"), *extra]


def _ev(w: World, *extra: str) -> list[str]:
    return ["evaluate", str(w.beir), "--model", str(w.model), "--no-progress", "--no-cache", *extra]


def _tr(w: World, *extra: str) -> list[str]:
    args = ["train", "--data", str(w.beir), "--base", str(w.model), "--out", str(w.root / "trained"), "--no-progress"]
    return [*args, *extra]


CASES: list[Case] = [
    # ------------------------------------------------------------------ top level
    ("unknown-command", lambda w: ["frobnicate"], "invalid choice"),
    ("unknown-option", lambda w: ["encode", "--nope", "--out", "x"], "--nope"),
    # ------------------------------------------------------------------ encode
    ("encode/missing-input", lambda w: _enc(w, "--input", str(w.root / "nope.jsonl"), "--out", "o"), "nope.jsonl"),
    (
        "encode/malformed-jsonl",
        lambda w: _enc(w, "--input", w.file("bad.jsonl", '{"text": "a"}\n{oops\n'), "--out", str(w.root / "o")),
        "bad.jsonl, line 2: not valid JSON",
    ),
    (
        "encode/jsonl-not-object",
        lambda w: _enc(w, "--input", w.file("list.jsonl", "[1, 2]\n"), "--out", str(w.root / "o")),
        "list.jsonl, line 1: expected a JSON object",
    ),
    (
        "encode/null-text",
        lambda w: _enc(w, "--input", w.file("null.jsonl", '{"text": "a"}\n\n{"text": null}\n'), "--out", "o"),
        "null.jsonl, line 3: 'text' must be a string; got null",
    ),
    (
        "encode/id-wrong-type",
        lambda w: _enc(w, "--input", w.file("idlist.jsonl", '{"_id": [1], "text": "a"}\n'), "--out", "o"),
        "idlist.jsonl, line 1: '_id' must be a string or an integer; got list",
    ),
    (
        "encode/not-utf8",
        lambda w: _enc(w, "--input", w.file("latin1.txt", "caf\xe9\n".encode("latin-1")), "--out", "o"),
        "latin1.txt, line 1: not UTF-8",
    ),
    ("encode/empty-input", lambda w: _enc(w, "--input", w.file("empty.txt", "\n\n"), "--out", "o"), "holds no texts"),
    ("encode/nothing", lambda w: _enc(w, "--out", "o"), "nothing to encode"),
    ("encode/texts-and-input", lambda w: _enc(w, "hi", "--input", str(w.corpus), "--out", "o"), "not both"),
    ("encode/batch-size-0", lambda w: _enc(w, "hi", "--out", "o", "--batch-size", "0"), "--batch-size: must be >= 1"),
    ("encode/batch-size-type", lambda w: _enc(w, "hi", "--out", "o", "--batch-size", "ten"), "--batch-size"),
    ("encode/max-length-0", lambda w: _enc(w, "hi", "--out", "o", "--max-length", "0"), "--max-length: must be >= 3"),
    ("encode/shard-size-0", lambda w: _enc(w, "--input", str(w.corpus), "--out", "o", "--shard-size", "0"), "shard"),
    (
        "encode/out-under-a-file",
        lambda w: _enc(w, "hi", "--out", str(w.root / "a-file" / "g.safetensors")),
        "--out",
    ),
    ("encode/out-unwritable", lambda w: _enc(w, "hi", "--out", "/proc/kl-retrievers-test/g"), "--out"),
    ("encode/out-is-a-folder", lambda w: _enc(w, "hi", "--out", str(w.root / "dir.safetensors")), "is a folder"),
    ("encode/model-missing", lambda w: ["encode", "hi", "--out", "o", "--model", str(w.root / "no-model")], "no-model"),
    (
        "encode/model-empty-encoder-section",
        lambda w: ["encode", "hi", "--out", "o", "--model", w.damaged_model("empty", lambda c: c.update(encoder={}))],
        "field 'encoder'",
    ),
    (
        "encode/model-encoder-wrong-type",
        lambda w: ["encode", "hi", "--out", "o", "--model", w.damaged_model("str", lambda c: c.update(encoder="x"))],
        "field 'encoder'",
    ),
    (
        "encode/model-bad-dim",
        lambda w: [
            "encode",
            "hi",
            "--out",
            "o",
            "--model",
            w.damaged_model("dim", lambda c: c["encoder"].update(dim=0)),
        ],
        "dim",
    ),
    # ------------------------------------------------------------------ index
    ("index/missing-corpus", lambda w: _idx(w, str(w.root / "none.jsonl")), "none.jsonl"),
    ("index/empty-corpus", lambda w: _idx(w, w.file("empty.jsonl", "\n")), "holds no documents"),
    (
        "index/duplicate-id",
        lambda w: _idx(w, w.file("dup.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')),
        "line 2: duplicate id 'a' (first on line 1)",
    ),
    (
        "index/null-text",
        lambda w: _idx(w, w.file("nulltext.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": null}\n')),
        "nulltext.jsonl, line 2: 'text' must be a string; got null",
    ),
    ("index/text-number", lambda w: _idx(w, w.file("num.jsonl", '{"_id": "a", "text": 5}\n')), "got int"),
    ("index/malformed-jsonl", lambda w: _idx(w, w.file("bad2.jsonl", "{\n")), "bad2.jsonl, line 1"),
    ("index/empty-folder", lambda w: _idx(w, str(w.root / "no-texts")), "no .txt or .md"),
    (
        "index/out-not-a-store",
        lambda w: [*_idx(w, str(w.corpus))[:-2], "--out", str(w.root / "not-a-store")],
        "not a KL store folder",
    ),
    ("index/out-a-file", lambda w: [*_idx(w, str(w.corpus))[:-2], "--out", str(w.root / "a-file")], "--out"),
    ("index/nlist-0", lambda w: _idx(w, str(w.corpus), "--nlist", "0"), "--nlist: must be >= 1"),
    ("index/pool-negative", lambda w: _idx(w, str(w.corpus), "--pool", "-5"), "--pool"),
    ("index/pq-nbits-5", lambda w: _idx(w, str(w.corpus), "--pq-nbits", "5"), "--pq-nbits"),
    ("index/compression-flat", lambda w: _idx(w, str(w.corpus), "--compression", "pq"), "compression"),
    (
        "index/refine-uncompressed",
        lambda w: _idx(w, str(w.corpus), "--index-type", "hnsw", "--refine", "sq8"),
        "refine",
    ),
    # ------------------------------------------------------------------ search
    ("search/missing-store", lambda w: ["search", str(w.root / "no-store"), "cat"], "no such folder"),
    (
        "search/config-not-json",
        lambda w: ["search", w.damaged_store("nojson", lambda p: (p / "config.json").write_text("{")), "cat"],
        "config.json",
    ),
    (
        "search/config-a-list",
        lambda w: [
            "search",
            w.damaged_store("list", lambda p: (p / "config.json").write_text("[1]")),
            "cat",
            "--model",
            str(w.model),
        ],
        "config.json",
    ),
    (
        "search/config-no-encoder",
        lambda w: [
            "search",
            w.damaged_store("noenc", lambda p: _mutate_json(p / "config.json", lambda c: c.update(encoder=None))),
            "cat",
        ],
        "pass --model",
    ),
    (
        "search/truncated-mean",
        lambda w: [
            "search",
            w.damaged_store("trunc", lambda p: (p / "mean.npy").write_bytes((p / "mean.npy").read_bytes()[:-8])),
            "cat",
        ],
        "mean.npy",
    ),
    (
        "search/missing-documents",
        lambda w: ["search", w.damaged_store("nodocs", lambda p: (p / "documents.jsonl").unlink()), "cat"],
        "documents.jsonl",
    ),
    ("search/k-0", lambda w: ["search", str(w.store), "cat", "-k", "0"], "-k: must be >= 1"),
    ("search/k-type", lambda w: ["search", str(w.store), "cat", "-k", "many"], "-k"),
    ("search/filter-not-json", lambda w: ["search", str(w.store), "cat", "--filter", "{year"], "--filter"),
    ("search/filter-a-list", lambda w: ["search", str(w.store), "cat", "--filter", "[1]"], "--filter"),
    ("search/filter-bad-op", lambda w: ["search", str(w.store), "cat", "--filter", '{"y": {"$near": 1}}'], "$near"),
    # ------------------------------------------------------------------ evaluate
    ("evaluate/missing-folder", lambda w: ["evaluate", str(w.root / "no-beir"), "--no-progress"], "no-beir"),
    ("evaluate/missing-split", lambda w: _ev(w, "--split", "dev"), "split 'dev'"),
    (
        "evaluate/malformed-corpus",
        lambda w: ["evaluate", str(w.root / "beir-bad"), "--no-progress", "--model", str(w.model)],
        "corpus.jsonl, line 2",
    ),
    ("evaluate/depth-0", lambda w: _ev(w, "--depth", "0"), "--depth"),
    ("evaluate/depth-negative", lambda w: _ev(w, "--depth", "-5"), "--depth"),
    ("evaluate/batch-size-0", lambda w: _ev(w, "--batch-size", "0"), "--batch-size"),
    ("evaluate/max-length-1", lambda w: _ev(w, "--max-length", "1"), "--max-length"),
    ("evaluate/compare-missing", lambda w: _ev(w, "--compare", str(w.root / "none.json")), "none.json"),
    (
        "evaluate/compare-malformed",
        lambda w: _ev(w, "--compare", w.file("pq.json", "{not json")),
        "pq.json",
    ),
    (
        "evaluate/means-only-baseline",
        lambda w: ["evaluate", str(w.beir), "--baseline", "bm25", "--means-only"],
        "means",
    ),
    ("evaluate/per-query-unwritable", lambda w: _ev(w, "--per-query", str(w.root / "a-file" / "pq.json")), "pq.json"),
    ("evaluate/per-query-suffix", lambda w: _ev(w, "--per-query", str(w.root / "pq.txt")), "pq.txt"),
    # ------------------------------------------------------------------ train
    ("train/missing-data", lambda w: [*_tr(w)[:2], str(w.root / "no-data"), *_tr(w)[3:]], "no-data"),
    ("train/steps-0", lambda w: _tr(w, "--steps", "0"), "--steps"),
    ("train/batch-size-type", lambda w: _tr(w, "--batch-size", "x"), "--batch-size"),
    ("train/max-length-2", lambda w: _tr(w, "--max-length", "2"), "--max-length"),
    ("train/out-under-a-file", lambda w: [*_tr(w), "--out", str(w.root / "a-file" / "m")], "--out"),
    (
        "train/malformed-jsonl-data",
        lambda w: ["train", "--data", w.file("train.jsonl", "{oops\n"), "--out", str(w.root / "t2"), "--no-progress"],
        "train.jsonl",
    ),
    # ------------------------------------------------------------------ demo
    ("demo/k-0", lambda w: ["demo", "-k", "0"], "-k: must be >= 1"),
    ("demo/model-missing", lambda w: ["demo", "--model", str(w.root / "no-model")], "no-model"),
]


def _prepare(case_id: str, world: World) -> None:
    """Per-case set-up that a lambda cannot hold."""
    if case_id == "evaluate/malformed-corpus":
        bad = world.root / "beir-bad"
        shutil.copytree(world.beir, bad, dirs_exist_ok=True)
        (bad / "corpus.jsonl").write_text(json.dumps(CORPUS[0]) + "\n{broken\n")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def _check(code: object, stderr: str, fragment: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = _error_lines(stderr)
    assert code == 2, f"exit status {code!r}; stderr:\n{stderr}"
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("kl-retrievers") and "error:" in line, line
    assert "internal error" not in line, line
    assert fragment in line, f"{fragment!r} not in {line!r}"


@pytest.mark.parametrize(("case_id", "build", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line(
    case_id: str,
    build: Callable[[World], list[str]],
    fragment: str,
    world: World,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(world.root)  # relative outputs ("o") land in the module's tmp folder
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(world.root / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _prepare(case_id, world)
    argv = build(world)
    capsys.readouterr()
    try:
        code: object = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    _check(code, capsys.readouterr().err, fragment)


def test_the_table_covers_every_subcommand() -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert choices is not None
    commands = set(choices)
    covered = {case_id.split("/")[0] for case_id, _, _ in CASES}
    assert commands <= covered, f"no bad-input case for {sorted(commands - covered)}"


def test_nothing_was_written_by_the_failed_calls(world: World) -> None:
    """Runs after the table (same module): refused outputs were never created, the guarded folder is intact."""
    assert not (world.root / "out-store").exists()
    assert not (world.root / "o").exists()
    assert (world.root / "not-a-store" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("case_id", "fragment"),
    [("index/duplicate-id", "duplicate id 'a'"), ("search/truncated-mean", "mean.npy")],
)
def test_console_entry_point_in_a_subprocess(case_id: str, fragment: str, world: World) -> None:
    """The real process: logging configured on the real stderr, exit status from ``sys.exit(main())``."""
    build = next(b for c, b, _ in CASES if c == case_id)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KL_RETRIEVERS_CACHE": str(world.root / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "kl_retrievers.cli", "--verbose", *build(world)],
        capture_output=True,
        text=True,
        env=env,
        cwd=world.root,
        timeout=300,
    )
    _check(proc.returncode, proc.stderr, fragment)
    assert proc.stdout == ""
