"""``kl-retrievers train --resume`` refuses a damaged checkpoint early, and training data reads blank texts as blank.

The CLI's early ``--resume`` check (before the backbone is loaded) reads the checkpoint's ``state.json`` with the
trainer's own checks: a file nested too deep for the JSON parser, a field of another type or a malformed
``recipe.config`` is one line naming the file and the field (exit 2), not a traceback or a load of the backbone.
A training query or document of only invisible characters (zero-width spaces, BOM: ``is_blank_query``) is blank
like an empty one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import TrainWorld, make_train_world, tiny_train_beir
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.training.data import from_beir, read_jsonl

#: Texts of only invisible characters: a zero-width space, a BOM, a word joiner (``is_blank_query``).
INVISIBLE = ["\u200b", "\ufeff \u200b", "\u2060\t"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    return make_train_world(tmp_path_factory.mktemp("resume_checks"))


def _argv(w: TrainWorld, out: Path, *extra: str) -> list[str]:
    argv = ["train", "--data", str(w.beir), "--out", str(out), "--steps", "4", "--batch-size", "2"]
    argv += ["--cache-dir", str(w.cache), "--no-progress", "--device", "cpu"]
    argv += ["--base", str(w.base), "--dim", "8", "--max-length", "32", "--query-max-length", "16"]
    return [*argv, *extra]


@pytest.fixture(scope="module")
def checkpoint(world: TrainWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a run stopped by its time budget (what ``--resume`` continues)."""
    root = tmp_path_factory.mktemp("resume_checkpoint")
    ck = root / "ck"
    assert main(_argv(world, root / "m1", "--checkpoint-dir", str(ck), "--time-budget", "0")) == 0
    assert (ck / "state.json").is_file()
    return ck


class _Loaded(Exception):
    """Raised by the patched loader: the checkpoint's check came too late."""


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise _Loaded("loaded the backbone before checking the checkpoint")


def _resume_damaged(
    world: TrainWorld,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    state_text: str,
) -> tuple[int, str, Path]:
    ck = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    (ck / "state.json").write_text(state_text, encoding="utf-8")
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    capsys.readouterr()
    rc = main(_argv(world, tmp_path / "m2", "--checkpoint-dir", str(ck), "--resume"))
    return rc, capsys.readouterr().err, ck / "state.json"


def _state(checkpoint: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    return state


# ------------------------------------------------------------------ 1: the CLI's early --resume check
def test_resume_with_a_state_json_nested_too_deep_is_one_line_naming_the_file(
    world: TrainWorld,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    rc, err, state_file = _resume_damaged(world, checkpoint, tmp_path, monkeypatch, capsys, deep)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert str(state_file) in err and "cannot be read as JSON" in err and "RecursionError" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("field", "value"),
    [("step", "three"), ("losses", [1.0, "nan"]), ("recipe", ["not", "an", "object"])],
)
def test_resume_with_a_damaged_state_field_is_refused_before_the_backbone(
    world: TrainWorld,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: Any,
) -> None:
    state = _state(checkpoint) | {field: value}
    rc, err, state_file = _resume_damaged(world, checkpoint, tmp_path, monkeypatch, capsys, json.dumps(state))
    assert rc == 2, err
    assert f"{state_file}: field {field!r}" in err and "the checkpoint is damaged" in err
    assert "loaded the backbone" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err


@pytest.mark.parametrize("config", [["warmup_resolved", 0], "warmup", 7])
def test_resume_with_a_malformed_recipe_config_is_refused_naming_the_field(
    world: TrainWorld,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config: Any,
) -> None:
    state = _state(checkpoint)
    state["recipe"]["config"] = config
    rc, err, state_file = _resume_damaged(world, checkpoint, tmp_path, monkeypatch, capsys, json.dumps(state))
    assert rc == 2, err
    assert str(state_file) in err and "recipe.config" in err, err
    assert "AttributeError" not in err and "loaded the backbone" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err


# ------------------------------------------------------------------ 2: the bge rebuild benchmark's loaders
def test_bge_rebuild_benchmark_loads_with_trust_remote_code_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the package's loaders, the benchmark never runs (or asks about) a model folder's own code."""
    import importlib.util

    import transformers

    spec = importlib.util.spec_from_file_location(
        "bge_rebuild_under_test", Path(__file__).resolve().parents[1] / "benchmarks" / "bge_rebuild.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: list[dict[str, Any]] = []

    class _Model:
        def eval(self) -> _Model:
            return self

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return _Model()

    monkeypatch.setattr(module, "resolve_model_path", lambda name: tmp_path)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", record)
    module.RebuiltBgeEncoder("bge-small-en")
    assert len(calls) == 2
    assert all(kwargs.get("trust_remote_code") is False for kwargs in calls), calls


# ------------------------------------------------------------------ 4: evaluate's blank-query warning
def test_evaluate_warns_that_invisible_characters_count_as_whitespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = tiny_train_beir(tmp_path / "beir")
    queries = [json.loads(line) for line in (root / "queries.jsonl").read_text().splitlines()]
    queries[1]["text"] = "\u200b\ufeff"  # q2: looks empty, is not whitespace to str.strip
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text((root / "qrels" / "train.tsv").read_text())
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluate_cli"):
        assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress"]) == 0
    capsys.readouterr()
    warned = [r.getMessage() for r in caplog.records if "blank" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith(
        "1 of the 5 queries evaluated is blank (empty or whitespace only, invisible characters counted as "
        "whitespace): q2;"
    ), warned


# ------------------------------------------------------------------ 5: training data's blank texts
@pytest.mark.parametrize("text", INVISIBLE)
@pytest.mark.parametrize(
    ("where", "what"),
    [
        ("query", "the query is empty"),
        ("positive", "positive 2 of 2 is empty"),
        ("negative", "negative 1 of 1 is empty"),
    ],
)
def test_jsonl_texts_of_only_invisible_characters_are_refused(tmp_path: Path, text: str, where: str, what: str) -> None:
    row: dict[str, Any] = {"query": "q", "positives": ["a", "b"], "negatives": ["n"]}
    if where == "query":
        row["query"] = text
    elif where == "positive":
        row["positives"] = ["a", text]
    else:
        row["negatives"] = [text]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"query": "ok", "positives": ["b"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=f"d.jsonl, line 2: {what} \\(or only whitespace and invisible characters\\)"):
        read_jsonl(path)


def test_beir_query_and_positive_of_only_invisible_characters_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tiny_train_beir(tmp_path / "beir")
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
    for q in queries:
        if q["_id"] == "q2":
            q["text"] = "\u200b\ufeff"
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    for d in docs:
        if d["_id"] in ("d5", "d8"):  # q4's second positive (d7 stays) and q5's only one
            d["text"] = "\u2060\u200b"
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.data"):
        ts = from_beir(folder, "train")
    assert sorted(ts.queries[ex.query] for ex in ts.examples) == ["cat mat", "sea water", "sun moon"]
    assert [ts.docs[i] for ex in ts.examples for i in ex.positives if "\u200b" in ts.docs[i]] == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("queries.jsonl: 1 judged queries have an empty text" in m and "q2" in m for m in warnings), warnings
    assert any(
        "corpus.jsonl: 2 judged positives have an empty text" in m and "d5, d8" in m and "q5" in m for m in warnings
    ), warnings
    assert all("invisible characters" in m for m in warnings if "empty text" in m), warnings
