"""``kl-retrievers evaluate --hybrid MODE --hybrid-stemmer LANG|none``: the hybrid's BM25 stemmer, recorded in --json.

The store's default stems in English (stop 42); ``none`` reproduces the unstemmed runs; a bad language or the
flag without ``--hybrid`` exits with status 2 before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

from conftest import make_tiny_encoder
from kl_retrievers.cli import main

CORPUS = [
    ("d1", "the dog was running in the park"),
    ("d2", "bread and tea for breakfast"),
    ("d3", "a cat sat on the mat"),
    ("d4", "the sun and the moon"),
]
QUERIES = [("q1", "runs"), ("q2", "breakfasts")]
QRELS = [("q1", "d1", 1), ("q2", "d2", 1)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("stem-eval")
    root = tmp / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in CORPUS))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES))
    rows = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    model = Path(make_tiny_encoder().save_pretrained(tmp / "model"))
    return ["evaluate", str(root), "--model", str(model), "--no-progress", "--cache-dir", str(tmp / "cache")]


def test_the_stemmer_is_the_default_recorded_and_none_turns_it_off(
    setup: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # BM25 alone (dense weight 0): stemmed, "runs" finds "running" and "breakfasts" finds "breakfast"
    assert main([*setup, "--hybrid", "convex", "--hybrid-weight", "0", "--json"]) == 0
    stemmed = json.loads(capsys.readouterr().out)
    assert stemmed["hybrid"]["bm25"]["stemmer"] == "english"
    assert stemmed["ndcg@10"] == pytest.approx(1.0)
    argv = [*setup, "--hybrid", "convex", "--hybrid-weight", "0", "--hybrid-stemmer", "none", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["hybrid"]["bm25"]["stemmer"] is None
    # unstemmed, neither query word occurs in the corpus: the fusion ranks by -KL alone, as the plain evaluation
    assert main([*setup, "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert plain["ndcg@10"] == pytest.approx(dense["ndcg@10"], abs=1e-9)


def test_bad_stemmer_options_exit_2(setup: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*setup, "--hybrid", "rrf", "--hybrid-stemmer", "klingon"]) == 2
    err = capsys.readouterr().err
    assert "--hybrid-stemmer: stemmer 'klingon' is not a PyStemmer language" in err and "english" in err
    assert main([*setup, "--hybrid-stemmer", "english"]) == 2
    assert "--hybrid-stemmer needs --hybrid" in capsys.readouterr().err


def test_a_missing_pystemmer_exits_2_before_the_model_loads(
    setup: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default stemmer is checked with the other options, not after the corpus was encoded."""
    import sys

    from kl_retrievers import pretrained

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setitem(sys.modules, "Stemmer", None)
    monkeypatch.setattr(pretrained, "load_model", no_model)
    assert main([*setup, "--hybrid", "rrf"]) == 2
    err = capsys.readouterr().err
    assert "needs PyStemmer" in err and "--hybrid-stemmer none for unstemmed BM25" in err
