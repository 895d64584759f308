"""``kl-retrievers index`` and ``search`` on a one-document store: a singular count, and why no confidence shows.

The confidence reads the top two scores, so a one-document store (or a filter that leaves one document) has
none; the query line says so instead of looking like a model that ships no calibrator.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from kl_retrievers.cli import main

WHY = "no confidence: confidence needs 2 candidates, 1 found (a filter or a small store)"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The one-document store and what ``index`` printed."""
    folder = tmp_path_factory.mktemp("one")
    corpus = folder / "one.jsonl"
    corpus.write_text(json.dumps({"_id": "d1", "text": "Bees communicate by dancing."}) + "\n", encoding="utf-8")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["index", str(corpus), "--out", str(folder / "store")]) == 0
    return folder / "store", printed.getvalue()


def test_index_says_1_document(indexed: tuple[Path, str]) -> None:
    assert indexed[1].startswith("indexed 1 document (flat, k=") and "1 documents" not in indexed[1]


def test_search_says_why_a_one_document_store_has_no_confidence(
    indexed: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = indexed[0]
    capsys.readouterr()
    assert main(["search", str(store), "how do bees communicate?"]) == 0
    query_line, hit = capsys.readouterr().out.splitlines()
    assert query_line.endswith(f", {WHY})") and "[d1]" in hit
    # with --min-confidence the abstention line gives the reason, and the query line does not repeat it
    assert main(["search", str(store), "how do bees communicate?", "--min-confidence", "0.5"]) == 0
    query_line, abstained = capsys.readouterr().out.splitlines()
    assert "no confidence" not in query_line and query_line.endswith(")")
    assert abstained == "  abstained (no results): confidence needs 2 candidates, 1 found (a filter or a small store)"
