"""Regression tests for audited bugs in the command line, the evaluation and the dataset loader.

Each test fails on the code before its fix: a relative ``--model`` folder recorded as given,
tied scores ranked differently per metric, unreadable TREC lines, output paths checked only after
the evaluation, ``--unknown-docs drop`` removing queries, non-UTF-8 and BOM files, malformed
``--compare`` files and malformed calibrator files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import evaluate_cli
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.cli import main
from kl_retrievers.datasets import DatasetError, load_beir
from kl_retrievers.evaluation import METRICS, evaluate_run, load_per_query, write_trec_run

CORPUS = [
    {"_id": "d1", "title": "", "text": "the cat sat on the mat"},
    {"_id": "d2", "title": "", "text": "green tea and bread"},
]
QUERIES = [{"_id": "q1", "text": "cat mat"}, {"_id": "q2", "text": "green tea"}]


def _beir(
    root: Path, qrels: str, corpus: list[dict[str, Any]] = CORPUS, queries: list[dict[str, Any]] = QUERIES
) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    return root


# ---------------------------------------------------------------- 1. relative --model folders


def test_index_records_an_absolute_model_path_so_search_elsewhere_loads_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(first / "model")
    make_tiny_encoder(seed=1).save_pretrained(second / "model")  # another model under the same relative name
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    store = tmp_path / "store"
    monkeypatch.chdir(first)
    assert main(["index", str(corpus), "--out", str(store), "--model", "model", "--no-progress"]) == 0
    recorded = json.loads((store / "config.json").read_text())["encoder"]["name_or_path"]
    assert recorded == str((first / "model").resolve())
    monkeypatch.chdir(second)
    capsys.readouterr()
    assert main(["search", str(store), "cat mat", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    from kl_retrievers import neg_kl

    q = enc.encode_queries(["cat mat"]).astype(np.float64)
    d = enc.encode_documents([c["text"] for c in CORPUS]).astype(np.float64)
    expected = dict(zip(["d1", "d2"], neg_kl(q, d), strict=True))
    for hit in hits:  # the first model's scores, not the second's
        assert hit["score"] == pytest.approx(expected[hit["id"]], rel=1e-5)


# ---------------------------------------------------------------- 2. tied scores


def test_tied_scores_give_one_ranking_for_every_metric() -> None:
    qrels = {"q": {"b": 1}}
    # ties go by doc id descending (trec_eval): "b" before "a", so b is first for every metric
    _, per_query = evaluate_run(qrels, {"q": {"a": 1.0, "b": 1.0, "c": 0.5}})
    assert per_query["q"] == {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@100": 1.0, "map@100": 1.0}
    # "z" before "b": b is second for every metric (RR@10 was 1.0 while nDCG@10 said second)
    _, per_query = evaluate_run(qrels, {"q": {"b": 1.0, "z": 1.0}})
    assert per_query["q"]["mrr@10"] == 0.5 and per_query["q"]["map@100"] == 0.5
    assert per_query["q"]["ndcg@10"] == pytest.approx(1 / np.log2(3))


def test_runs_without_ties_score_as_ir_measures_does() -> None:
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(30)]
    qrels = {f"q{j}": {d: int(rng.integers(0, 3)) for d in rng.choice(docs, 5, replace=False)} for j in range(6)}
    run = {q: {d: float(s) for d, s in zip(docs, rng.normal(size=len(docs)), strict=True)} for q in qrels}
    _, per_query = evaluate_run(qrels, run)
    measures = [ir_measures.parse_measure(m) for m in METRICS.values()]
    for m in ir_measures.iter_calc(measures, qrels, run):
        name = next(k for k, v in METRICS.items() if v == str(m.measure))
        assert per_query[m.query_id][name] == pytest.approx(m.value)


# ---------------------------------------------------------------- 3. ids with whitespace in TREC runs


def test_write_trec_run_refuses_ids_with_whitespace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'my doc'"):
        write_trec_run(tmp_path / "run.trec", {"q1": {"my doc": 1.0}})
    with pytest.raises(ValueError, match="'q 1'"):
        write_trec_run(tmp_path / "run.trec", {"q 1": {"d1": 1.0}})


def test_save_run_with_a_whitespace_id_fails_before_any_retrieval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = [*CORPUS, {"_id": "d 3", "title": "", "text": "water on black rock"}]
    root = _beir(tmp_path / "beir", "q1\td1\t1\n", corpus=corpus)

    def no_retrieval(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("retrieval started before the ids were checked")

    monkeypatch.setattr(evaluate_cli, "run_baseline", no_retrieval)
    run_file = tmp_path / "run.trec"
    code = main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--save-run", str(run_file)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--save-run" in err and "'d 3'" in err
    assert not run_file.exists()


# ---------------------------------------------------------------- 4. output paths checked first


@pytest.mark.parametrize("flag", ["--save-run", "--per-query"])
def test_output_paths_are_checked_before_the_dataset_is_loaded(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a_folder = tmp_path / "out"
    a_folder.mkdir()
    # the dataset folder does not exist: the output error comes first
    code = main(
        ["evaluate", str(tmp_path / "no-such-dataset"), "--baseline", "bm25", "--no-progress", flag, str(a_folder)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and "is a folder" in err and "not found" not in err


def test_unwritable_save_run_leaves_no_partial_per_query_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    pq = tmp_path / "pq.json"
    argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--per-query", str(pq)]
    code = main([*argv, "--save-run", str(blocker / "run.trec")])
    assert code == 2
    assert "--save-run" in capsys.readouterr().err
    assert not pq.exists()


# ---------------------------------------------------------------- 5. --unknown-docs drop keeps queries


def test_drop_keeps_queries_whose_every_judgement_names_an_unknown_doc(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\nq2\td9\t1\n")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.datasets"):
        ds = load_beir(root, "test", unknown_docs="drop")
    assert ds.query_ids == ["q1", "q2"]
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {}}
    assert "1 query" in caplog.text and "score 0" in caplog.text
    agg, per_query = evaluate_run(ds.qrels, {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d1": 2.0, "d2": 1.0}})
    assert per_query["q2"] == {name: 0.0 for name in METRICS}
    assert agg["ndcg@10"] == 0.5


def test_evaluate_with_drop_counts_every_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\nq2\td9\t1\n")
    code = main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--json", "--unknown-docs", "drop"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 2 and summary["ndcg@10"] == 0.5  # bm25 ranks d1 first for "cat mat"


def test_unknown_document_error_names_the_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir", "q1\td9\t1\n")
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--unknown-docs drop" in err and "unknown_docs=" not in err and "'d9'" in err
    with pytest.raises(DatasetError, match="unknown_docs='drop'"):  # the library keeps its own spelling
        load_beir(root, "test")


# ---------------------------------------------------------------- 6+7. encodings


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_files_that_are_not_utf8_name_the_file_and_line(tmp_path: Path, name: str) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\n")
    target = root / name
    lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace("q1", "q\xe91") if name.startswith("qrels") else lines[1].replace("tea", "t\xe9a")
    target.write_bytes("".join(lines).encode("latin-1"))
    with pytest.raises(DatasetError, match=rf"{name}, line 2: not UTF-8"):
        load_beir(root, "test")


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_a_utf8_bom_is_ignored(tmp_path: Path, name: str) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\n")
    target = root / name
    target.write_bytes(b"\xef\xbb\xbf" + target.read_bytes())
    ds = load_beir(root, "test")
    assert ds.qrels == {"q1": {"d1": 1}} and ds.doc_ids == ["d1", "d2"]


def test_a_bom_before_headerless_qrels_is_ignored(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir", "")
    (root / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbfq1\td1\t1\n")
    assert load_beir(root, "test").qrels == {"q1": {"d1": 1}}


# ---------------------------------------------------------------- 8. malformed --compare files


@pytest.mark.parametrize(
    "per_query",
    [{"q1": 0.5}, {"q1": {"ndcg@10": "n/a"}}, {"q1": {"ndcg@10": None}}, {"q1": {"ndcg@10": True}}, {"q1": [0.5]}],
)
def test_malformed_per_query_files_raise_value_error(tmp_path: Path, per_query: dict[str, Any]) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"per_query": per_query}))
    with pytest.raises(ValueError, match=r"other\.json.*'q1'"):
        load_per_query(path)


def test_malformed_compare_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\n")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"per_query": {"q1": 0.5}}))
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--compare", str(other)]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "other.json" in err


def test_per_query_meta_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"per_query": {"q1": {"ndcg@10": 0.5}}, "meta": [1, 2]}))
    with pytest.raises(ValueError, match=r"other\.json.*meta"):
        load_per_query(path)


# ---------------------------------------------------------------- 9. calibrator files


def _calibrator_dict() -> dict[str, Any]:
    cal = ConfidenceCalibrator()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, len(cal.features)))
    y = (rng.random(64) < 0.5).astype(np.float64)
    return cal.fit(x, y).to_dict()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("features", None),
        ("features", "gap12"),
        ("features", [1, 2, 3]),
        ("info", [1, 2, 3]),
        ("info", "text"),
        ("intercept", True),
        ("intercept", "0.5"),
        ("l2", True),
    ],
)
def test_calibrator_files_with_malformed_fields_name_the_field(tmp_path: Path, field: str, value: Any) -> None:
    data = _calibrator_dict()
    assert ConfidenceCalibrator.from_dict(data).is_fitted  # the unmodified file loads
    data[field] = value
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"'{field}'"):
        ConfidenceCalibrator.load(path)


def test_calibrator_info_may_be_null(tmp_path: Path) -> None:
    data = _calibrator_dict()
    data["info"] = None
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    assert ConfidenceCalibrator.load(path).info == {}


def test_encode_numbers_text_lines_as_the_sharded_path_does(tmp_path: Path) -> None:
    """A form feed or U+2028 inside a line does not split it; a no-break-space line is a record (as in shards)."""
    from kl_retrievers.cli import _read_records
    from kl_retrievers.sharded import plan_shards, read_shard

    path = tmp_path / "c.txt"
    path.write_bytes("x\r\n\u00a0\nthe\x0cdog\nsea\u2028shore\n\n  \nlast".encode())
    ids, texts, _rows = _read_records(path, "auto")
    assert texts == ["x", "\u00a0", "the\x0cdog", "sea\u2028shore", "last"]
    for size in (1, 2, 10):
        shards, _info = plan_shards(path, shard_size=size)
        got = [read_shard(path, spec) for spec in shards]
        assert [i for ids_, _ in got for i in ids_] == ids
        assert [t for _, ts in got for t in ts] == texts


# ---------------------------------------------------------------- token limits a baseline does not use


@pytest.mark.parametrize(
    ("baseline", "flags", "named"),
    [
        ("bm25", ["--max-length", "16"], "--max-length"),
        ("bm25", ["--query-max-length", "16"], "--query-max-length"),
        ("minilm", ["--query-max-length", "3"], "--query-max-length"),
        ("bge-small", ["--max-length", "64", "--query-max-length", "3"], "--query-max-length"),
    ],
)
def test_a_baseline_refuses_token_limits_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], baseline: str, flags: list[str], named: str
) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\n")
    assert main(["evaluate", str(root), "--baseline", baseline, "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert f"{named} does not apply to --baseline {baseline}" in err and "one token limit" in err


# ---------------------------------------------------------------- a vector twin is ranked by its own score


def _twin(tmp_path: Path, similarity: str) -> Path:
    enc = make_tiny_encoder(seed=3)
    enc.config.extra["training"] = {"recipe": {"similarity": similarity}}  # as `kl-retrievers train` records it
    enc.save_pretrained(tmp_path / similarity)
    return tmp_path / similarity


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_evaluate_ranks_a_vector_twin_by_the_similarity_it_was_trained_with(
    tmp_path: Path, similarity: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.pretrained import load_model

    corpus = CORPUS + [{"_id": f"x{i}", "title": "", "text": f"word{i} cat tea {i}"} for i in range(8)]
    root = _beir(tmp_path / "beir", "q1\td1\t1\nq2\td2\t1\n", corpus=corpus)
    model = _twin(tmp_path, similarity)
    assert (
        main(["evaluate", str(root), "--model", str(model), "--json", "--no-progress", "--no-cache", "--depth", "5"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == similarity
    assert "vector twin" in out["qpp"]["missing"]["uncertainty"]
    enc = load_model(str(model))
    ds = load_beir(root, "test")
    q = enc.encode_queries(ds.query_texts()).numpy().mean.astype(np.float64)
    d = enc.encode_documents(ds.document_texts()).numpy().mean.astype(np.float64)
    if similarity == "cosine":
        q, d = q / np.linalg.norm(q, axis=1, keepdims=True), d / np.linalg.norm(d, axis=1, keepdims=True)
    scores = q @ d.T
    from kl_retrievers.evaluation import evaluate_model

    run = evaluate_model(enc, ds, k=5, use_cache=False, show_progress=False).run
    column = {doc_id: j for j, doc_id in enumerate(ds.doc_ids)}
    for i, qid in enumerate(ds.query_ids):  # each hit carries its own similarity, and they are the top 5
        np.testing.assert_allclose([scores[i, column[d]] for d in run[qid]], list(run[qid].values()), rtol=1e-5)
        np.testing.assert_allclose(list(run[qid].values()), np.sort(scores[i])[::-1][:5], rtol=1e-5)
    kl_run = evaluate_model(enc, ds, k=5, use_cache=False, show_progress=False, similarity="neg_kl")
    assert kl_run.summary()["score"] == "neg_kl"
    assert main(["evaluate", str(root), "--model", str(model), "--hybrid", "rrf", "--no-progress", "--no-cache"]) == 2
    assert f"vector twin trained with --similarity {similarity}" in capsys.readouterr().err
