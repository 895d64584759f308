"""``evaluate --sample-queries``: the text table says the queries are a sample, and ``--compare`` against a
file of other queries warns about the unshared queries once, not once per metric (tiny BEIR folder, BM25)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import write_pairs_beir
from kl_retrievers.cli import main

pytest.importorskip("ir_measures")
pytest.importorskip("bm25s")


def test_the_text_table_says_the_queries_are_a_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_pairs_beir(tmp_path / "beir", n_queries=12)
    assert (
        main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--sample-queries", "5", "--seed", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "queries: 5 (a sample of 12, seed 2)" in out, out
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress"]) == 0
    assert "sample" not in capsys.readouterr().out


def test_compare_warns_about_unshared_queries_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = write_pairs_beir(tmp_path / "beir", n_queries=12)
    full = tmp_path / "full.json"
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--per-query", str(full)]) == 0
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluation"):
        argv = [
            "evaluate",
            str(root),
            "--baseline",
            "bm25",
            "--no-progress",
            "--sample-queries",
            "5",
            "--compare",
            str(full),
        ]
        assert main(argv) == 0
    unshared = [r for r in caplog.records if "paired test on" in r.getMessage()]
    assert len(unshared) == 1, [r.getMessage() for r in caplog.records]
    assert "(0 only in A, 7 only in B)" in unshared[0].getMessage()
