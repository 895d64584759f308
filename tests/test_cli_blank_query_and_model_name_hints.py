"""Probe g45 fixes: a blank query on the command line, and near-miss bundled model names.

* ``kl-retrievers search STORE ""`` is refused (exit 2, one line naming the query), before any file
  is read; so is ``kl-retrievers demo ""`` (before the model loads).
* ``load_model`` suggests the closest bundled name for a typo, ``_`` for ``-`` or another case,
  loads a bundled name with surrounding blanks, and ``kl_retrievers:UNKNOWN`` raises a
  :class:`~kl_retrievers.hub.ModelNotFoundError` that is still a ``ValueError``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers._confidence import EMPTY_QUERY_REASON
from kl_retrievers.cli import main
from kl_retrievers.hub import ModelNotFoundError
from kl_retrievers.pretrained import BundledModelNotFoundError, load_model


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe45")
    model = make_tiny_encoder().save_pretrained(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(["cat", "tea"])))
    out = root / "store"
    assert main(["index", str(corpus), "--out", str(out), "--model", str(model), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize(
    ("queries", "named"),
    [([""], "query ''"), (["   "], "query '   '"), (["cat", "\t"], "query 2 ('\\t')")],
)
def test_search_refuses_a_blank_query_with_one_line(
    store: Path, queries: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["search", str(store), *queries]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no ranking at all, not even for the good query
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kl-retrievers search: error:"), captured.err
    assert f"{named} is blank" in lines[0] and "Traceback" not in captured.err


def test_search_still_answers_a_query_with_words(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(store), "cat", "-k", "1", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["query"] == "cat" and len(row["results"]) == 1


def test_demo_refuses_a_blank_query_as_search_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "", "  ", "why does bread rise", "-k", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no ranking at all, not even for the good query
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kl-retrievers demo: error:"), captured.err
    assert "query 1 ('') is blank" in lines[0] and EMPTY_QUERY_REASON not in lines[0]


@pytest.mark.parametrize("name", ["minilm-gaus-soup", "minilm_gauss_soup", "MiniLM-Gauss-Soup"])
def test_a_near_miss_name_suggests_the_bundled_one(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"[Dd]id you mean 'minilm-gauss-soup'\?") as err:
        load_model(name, backend="onnx")
    assert "Bundled models" in str(err.value)


def test_a_far_name_suggests_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_model("qqqq-zzzz", backend="onnx")
    assert "did you mean" not in str(err.value).lower()


@pytest.mark.parametrize("name", ["minilm-gauss-soup ", " minilm-gauss-soup\n", " kl_retrievers:minilm-gauss-soup "])
def test_a_bundled_name_with_surrounding_blanks_loads_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_model(name, backend="onnx").name_or_path == "kl_retrievers:minilm-gauss-soup"


def test_an_existing_folder_with_blanks_is_not_stripped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = make_tiny_encoder().save_pretrained(tmp_path / "minilm-gauss-soup ")
    enc = load_model("minilm-gauss-soup ", backend="torch")
    assert Path(enc.name_or_path).resolve() == Path(folder).resolve()


@pytest.mark.parametrize(("name", "hint"), [("kl_retrievers:bogus", ""), ("kl_retrievers:minilm_gauss_soup", "x")])
def test_an_unknown_kl_retrievers_name_is_a_model_not_found_error(name: str, hint: str) -> None:
    with pytest.raises(ModelNotFoundError, match="no bundled model named") as err:
        load_model(name)
    assert isinstance(err.value, ValueError) and isinstance(err.value, BundledModelNotFoundError)
    assert ("did you mean 'minilm-gauss-soup'?" in str(err.value)) == bool(hint)
    with pytest.raises(ValueError, match="bundled models"):  # what callers caught before still catches it
        load_model(name)
