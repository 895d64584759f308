"""``kl-retrievers evaluate --hybrid rrf|convex|adaptive``: BM25 + -KL fused, scored like any other run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers.cli import main
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluate_cli import HYBRID_MODES
from kl_retrievers.evaluation import encode_dataset, evaluate_run, load_per_query
from kl_retrievers.hybrid import FUSION_MODES, KLHybridStore

CORPUS = [
    ("d1", "the cat sat on the mat"),
    ("d2", "a dog and a cat"),
    ("d3", "hello world of gaussian text"),
    ("d4", "the sun and the moon"),
    ("d5", "green tea and black bread"),
    ("d6", "water on the rock by the sea"),
    ("d7", "a train to the star"),
    ("d8", "bee in the green sun"),
]
QUERIES = [("q1", "cat on a mat"), ("q2", "gaussian text"), ("q3", "moon and sun"), ("q4", "sea water")]
QRELS = [("q1", "d1", 1), ("q2", "d3", 1), ("q3", "d4", 2), ("q3", "d8", 1), ("q4", "d6", 1)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny BEIR folder, a saved tiny random encoder and an encoding cache folder."""
    tmp = tmp_path_factory.mktemp("hybrid-eval")
    root = tmp / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in CORPUS)
    )
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES))
    rows = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    model = make_tiny_encoder().save_pretrained(tmp / "model")
    return root, Path(model), tmp / "cache"


def _evaluate(setup: tuple[Path, Path, Path], *extra: str) -> list[str]:
    root, model, cache = setup
    return ["evaluate", str(root), "--model", str(model), "--no-progress", "--cache-dir", str(cache), *extra]


def test_modes_match_the_library() -> None:
    assert HYBRID_MODES == FUSION_MODES


@pytest.mark.parametrize("mode", ["rrf", "convex", "adaptive"])
def test_hybrid_json_and_per_query(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    pq = tmp_path / "pq.json"
    run_file = tmp_path / "run.trec"
    argv = _evaluate(setup, "--hybrid", mode, "--json", "--per-query", str(pq), "--save-run", str(run_file))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON line
    summary = json.loads(out)
    assert summary["fusion"] == mode and summary["hybrid"]["mode"] == mode
    assert summary["model"].endswith(f"+ bm25 [{mode}]")
    assert summary["queries"] == 4 and summary["score"] == "hybrid"
    for name in ("ndcg@10", "mrr@10", "recall@100", "map@100"):
        assert 0.0 <= summary[name] <= 1.0
    assert "uncertainty" in summary["qpp"]["predictors"]
    per_query, meta = load_per_query(pq)
    assert set(per_query) == {"q1", "q2", "q3", "q4"} and meta["fusion"] == mode
    assert all("uncertainty" in row and 0.0 <= row["ndcg@10"] <= 1.0 for row in per_query.values())
    if mode == "rrf":
        assert "dense_weight" not in per_query["q1"] and "weight" not in summary["hybrid"]
    else:
        assert all(0.0 <= row["dense_weight"] <= 1.0 for row in per_query.values())
    lines = run_file.read_text().splitlines()
    assert len(lines) == 4 * len(CORPUS)  # every document is a candidate of the tiny corpus


def test_rrf_equals_the_store(setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's figures are those of KLHybridStore.search_run on the same encodings."""
    root, model, cache = setup
    assert main(_evaluate(setup, "--hybrid", "rrf", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    from kl_retrievers.pretrained import load_model

    ds = load_beir(root, "test")
    q, d = encode_dataset(load_model(str(model), backend="torch"), ds, cache_dir=cache, show_progress=False)
    store = KLHybridStore(fusion="rrf")
    store.add(ds.document_texts(), gaussians=d, ids=ds.doc_ids)
    run = store.search_run(ds.query_ids, ds.query_texts(), k=100, query_gaussians=q)
    agg, _ = evaluate_run(ds.qrels, run)
    assert summary["ndcg@10"] == pytest.approx(agg["ndcg@10"], abs=1e-6)
    assert summary["map@100"] == pytest.approx(agg["map@100"], abs=1e-6)


def test_convex_weight_one_is_the_dense_ranking(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Dense weight 1 ranks by -KL alone (every document is a candidate here): the plain evaluation's figures."""
    assert main(_evaluate(setup, "--json")) == 0
    dense = json.loads(capsys.readouterr().out)
    assert main(_evaluate(setup, "--hybrid", "convex", "--hybrid-weight", "1", "--json")) == 0
    convex = json.loads(capsys.readouterr().out)
    assert convex["hybrid"]["weight"] == 1.0
    for name in ("ndcg@10", "mrr@10", "map@100"):
        assert convex[name] == pytest.approx(dense[name], abs=1e-6)


def test_table_output_and_foreign_model_warning(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert main(_evaluate(setup, "--hybrid", "adaptive")) == 0
    out = capsys.readouterr().out
    assert "+ bm25 [adaptive]" in out and "ndcg@10" in out
    assert "adaptive fusion parameters were fitted for" in caplog.text  # the tiny model is not the default


def test_bad_hybrid_options(setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(_evaluate(setup, "--hybrid", "mean"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'mean'" in err and "'rrf', 'convex', 'adaptive'" in err
    with pytest.raises(SystemExit):
        main(_evaluate(setup, "--hybrid", "convex", "--hybrid-weight", "1.5"))
    err = capsys.readouterr().err
    assert "[0, 1]" in err and "1.5" in err
    assert main(_evaluate(setup, "--hybrid", "rrf", "--hybrid-weight", "0.3")) == 2
    assert "--hybrid-weight applies to --hybrid convex only; got --hybrid rrf" in capsys.readouterr().err
    assert main(_evaluate(setup, "--hybrid-normalization", "zscore")) == 2
    assert "--hybrid-normalization needs --hybrid convex" in capsys.readouterr().err
    assert main(_evaluate(setup, "--hybrid", "rrf", "--means-only")) == 2
    assert "--means-only" in capsys.readouterr().err
    root = setup[0]
    assert main(["evaluate", str(root), "--baseline", "bm25", "--hybrid", "rrf", "--no-progress"]) == 2
    assert "not with --baseline bm25" in capsys.readouterr().err
