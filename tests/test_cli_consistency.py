"""The command line says what its outputs mean where entry points differ, and ``--help`` stays light.

* ``evaluate --save-run``: the score column is the run's own score (``-KL`` for a model), or ``depth - rank``
  with ``--hybrid`` (the fused order, which trec_eval would otherwise re-break at ties); tied scores are
  ranked by document id descending, where the stores return tied documents later-added first. Both are
  documented in ``evaluate --help`` (so in docs/cli.md) and docs/hybrid.md, and pinned here.
* Blank queries: ``search`` refuses one (documented in its ``--help``); ``evaluate`` ranks one, with a warning
  naming it.
* ``kl-retrievers --help`` builds every subcommand's parser: the CLI modules import numpy (through
  :mod:`kl_retrievers.sharded`, :mod:`kl_retrievers.evaluation`, ...) only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _beir(root: Path, corpus: list[tuple[str, str]], queries: list[tuple[str, str]], qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in corpus), encoding="utf-8"
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries), encoding="utf-8"
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    return root


def _help(command: str) -> str:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr,index]
    return " ".join(sub.format_help().split())  # one line: wrapping does not split the phrases checked


# ---------------------------------------------------------------- evaluate's run file: scores and ties


def test_evaluate_help_says_what_the_run_file_scores_mean_and_how_ties_rank() -> None:
    text = _help("evaluate")
    assert "see the end of this help" in text  # --save-run points to the note
    assert "with --hybrid it is depth - rank (100, 99, ... at --depth 100)" in text
    assert "the model's -KL" in text and "exactly the ndcg@10, recall@100 and map@100 evaluate reports" in text
    assert "ir_measures' RR@10 (its msmarco provider) orders tied documents by id ascending" in text
    assert "ranked by document id, descending" in text and "later-added first" in text
    page = " ".join((ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split())
    assert "with --hybrid it is depth - rank" in page  # the generated page carries it
    hybrid = " ".join((ROOT / "docs" / "hybrid.md").read_text(encoding="utf-8").split())
    assert "**The run file.** With `--hybrid`, the score column of `--save-run` is `depth - rank`" in hybrid
    assert "later-added first" in hybrid


def test_run_files_hold_what_the_help_says(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dense: the -KL, tied duplicates by id descending (the store: later-added first); hybrid: depth - rank."""
    from kl_retrievers.index import KLStore

    corpus = [("m", "green tea and bread"), ("c", "green tea and bread"), ("x", "a dog on the moon")]
    root = _beir(tmp_path / "beir", corpus, [("q1", "green tea"), ("q2", "dog moon")], "q1\tc\t1\nq2\tx\t1\n")
    encoder = make_tiny_encoder()
    model = encoder.save_pretrained(tmp_path / "model")
    base = ["evaluate", str(root), "--model", str(model), "--no-progress", "--no-cache", "--depth", "3"]
    assert main([*base, "--save-run", str(tmp_path / "dense.run")]) == 0
    assert main([*base, "--hybrid", "rrf", "--save-run", str(tmp_path / "hybrid.run")]) == 0
    capsys.readouterr()

    def rows(name: str) -> list[list[str]]:
        return [line.split() for line in (tmp_path / name).read_text().splitlines() if line.startswith("q1 ")]

    dense = rows("dense.run")
    tied = [r for r in dense if r[2] in ("m", "c")]
    assert tied[0][4] == tied[1][4]  # identical texts: one -KL
    assert [r[2] for r in tied] == ["m", "c"]  # ranked by document id, descending
    store = KLStore(encoder)
    store.add([t for _, t in corpus], ids=[i for i, _ in corpus])
    hits = [h for h in store.search("green tea", k=3) if h.id in ("m", "c")]
    assert [h.id for h in hits] == ["c", "m"]  # the store: the later-added first
    assert float(tied[0][4]) == pytest.approx(hits[0].score, abs=1e-4)  # the score column is the -KL
    assert [float(r[4]) for r in rows("hybrid.run")] == [3.0, 2.0, 1.0]  # depth - rank


# ---------------------------------------------------------------- blank queries


def test_search_help_documents_that_a_blank_query_is_refused() -> None:
    text = _help("search")
    assert "a blank one (empty or whitespace only) asks for nothing and is refused, exit status 2" in text


def test_search_refuses_a_blank_query_before_reading_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", str(tmp_path / "no-such-store"), "  "]) == 2
    err = capsys.readouterr().err
    assert "is blank (empty or whitespace only)" in err and "no-such-store" not in err


def test_evaluate_warns_about_blank_queries_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    corpus = [("d1", "the cat sat on the mat"), ("d2", "green tea and bread")]
    queries = [("q1", "cat mat"), ("q2", ""), ("q3", " \t "), ("q4", "green tea")]
    root = _beir(tmp_path / "beir", corpus, queries, "q1\td1\t1\nq2\td2\t1\nq3\td2\t1\nq4\td2\t1\n")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluate_cli"):
        assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress"]) == 0
    capsys.readouterr()
    warned = [r.getMessage() for r in caplog.records if "blank" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("2 of the 4 queries evaluated are blank (empty or whitespace only): q2, q3;")


def test_evaluate_names_the_first_blank_queries_only_and_is_silent_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    corpus = [("d1", "the cat sat on the mat")]
    plain = _beir(tmp_path / "plain", corpus, [("q1", "cat"), ("q2", "mat")], "q1\td1\t1\nq2\td1\t1\n")
    queries = [("q1", "cat")] + [(f"b{i}", "") for i in range(7)]
    blank = _beir(tmp_path / "blank", corpus, queries, "".join(f"{q}\td1\t1\n" for q, _ in queries))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.evaluate_cli"):
        assert main(["evaluate", str(plain), "--baseline", "bm25", "--no-progress"]) == 0
        assert not [r for r in caplog.records if "blank" in r.getMessage()]
        assert main(["evaluate", str(blank), "--baseline", "bm25", "--no-progress"]) == 0
    capsys.readouterr()
    warned = [r.getMessage() for r in caplog.records if "blank" in r.getMessage()]
    assert len(warned) == 1 and "7 of the 8 queries evaluated are blank" in warned[0]
    assert ": b0, b1, b2, b3, b4, ...;" in warned[0]


# ---------------------------------------------------------------- --help imports no numpy

_NO_NUMPY = (
    "import argparse, sys\n"
    "import kl_retrievers.cli\n"
    "from kl_retrievers.evaluate_cli import add_evaluate_command\n"
    "add_evaluate_command(argparse.ArgumentParser().add_subparsers())\n"
    "print(sorted(m for m in ('numpy', 'kl_retrievers.sharded', 'kl_retrievers.evaluation') if m in sys.modules))\n"
    "print(kl_retrievers.cli.__file__)\n"
)


def test_the_cli_module_and_evaluates_parser_import_no_numpy() -> None:
    proc = subprocess.run([sys.executable, "-c", _NO_NUMPY], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded, where = proc.stdout.splitlines()
    assert Path(where).resolve().is_relative_to(ROOT)  # this checkout's package
    assert loaded == "[]"


def test_top_level_help_imports_no_numpy() -> None:
    code = "import sys\nfrom kl_retrievers.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print('numpy' in sys.modules, file=sys.stderr)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "usage: kl-retrievers" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "False"


def test_names_evaluate_cli_keeps_without_importing_them() -> None:
    import kl_retrievers.evaluate_cli as evaluate_cli
    from kl_retrievers import baselines, encoding_cache, evaluation

    assert evaluate_cli.CACHE_ENV == encoding_cache.CACHE_ENV  # spelled out for the parser
    assert evaluate_cli.metric_cutoff is evaluation.metric_cutoff  # still importable from here
    assert evaluate_cli.missing_modules(["json", "no_such_module_here"]) == ["no_such_module_here"]
    assert callable(baselines.run_baseline) and callable(evaluate_cli.run_baseline)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = evaluate_cli.nope  # type: ignore[attr-defined]


def test_train_help_names_every_reported_metric_and_reads_ir_measures_spellings(tmp_path: Path) -> None:
    """--eval-metric lists the metrics without importing them (no numpy at parse time) and reads as evaluate_model."""
    from kl_retrievers.evaluation import METRICS
    from kl_retrievers.training import cli as train_cli

    assert set(train_cli._EVAL_METRICS) == set(METRICS)
    assert train_cli._eval_metric("nDCG@10") == "ndcg@10" and train_cli._eval_metric("R@100") == "recall@100"
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown metric 'P@10'"):
        train_cli._eval_metric("P@10")
