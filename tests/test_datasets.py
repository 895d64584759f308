"""Tests for the BEIR loader (kl_retrievers.datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kl_retrievers.datasets import BeirDataset, DatasetError, available_splits, document_text, load_beir

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr and sleep a lot."},
    {"_id": "d2", "title": "", "text": "Dogs bark at the postman."},
    {"_id": "d3", "title": "Fish ", "text": " Fish swim in water. "},
]
QUERIES = [
    {"_id": "q1", "text": "why do cats purr"},
    {"_id": "q2", "text": "dogs barking"},
    {"_id": "q3", "text": "unjudged query"},
]
TEST_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"


def write_beir(
    root: Path, corpus: list[dict] | None = None, queries: list[dict] | None = None, qrels: dict[str, str] | None = None
) -> Path:
    """Write a tiny BEIR folder and return its path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in (corpus or CORPUS)))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in (queries or QUERIES)))
    (root / "qrels").mkdir(exist_ok=True)
    for split, text in (qrels or {"test": TEST_QRELS, "train": "query-id\tcorpus-id\tscore\nq3\td3\t1\n"}).items():
        (root / "qrels" / f"{split}.tsv").write_text(text)
    return root


def test_load_beir_basic(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "beir"), "test")
    assert isinstance(ds, BeirDataset)
    assert ds.doc_ids == ["d1", "d2", "d3"]
    assert ds.query_ids == ["q1", "q2"]  # restricted to the split's judged queries
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
    assert all(isinstance(v, int) for docs in ds.qrels.values() for v in docs.values())
    assert ds.document_texts() == [
        "Cats Cats purr and sleep a lot.",
        "Dogs bark at the postman.",
        "Fish Fish swim in water.",
    ]
    assert ds.query_texts() == ["why do cats purr", "dogs barking"]
    train = load_beir(tmp_path / "beir", "train")
    assert train.query_ids == ["q3"]
    assert available_splits(tmp_path / "beir") == ["test", "train"]
    assert "docs=3" in repr(ds)


def test_document_text() -> None:
    assert document_text({"title": "T", "text": "x"}) == "T x"
    assert document_text({"text": " x "}) == "x"
    assert document_text({"title": "  ", "text": "x"}) == "x"


def test_subset_and_identity(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "beir"), "test")
    small = ds.subset(["q1", "q2"], ["d1", "d3"])
    assert small.doc_ids == ["d1", "d3"]
    assert small.qrels == {"q1": {"d1": 1}, "q2": {"d3": 0}}
    assert small.corpus_identity() != ds.corpus_identity()
    assert small.corpus_identity()["corpus"]["size"] == (tmp_path / "beir" / "corpus.jsonl").stat().st_size


def _expect(tmp_path: Path, match: str, *, line: int | None, file: str, **kwargs: object) -> DatasetError:
    root = write_beir(tmp_path / "beir", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=match) as info:
        load_beir(root, "test")
    err = info.value
    assert err.path is not None and err.path.endswith(file)
    assert err.line == line
    assert file in str(err)
    if line is not None:
        assert f"line {line}" in str(err)
    return err


def test_missing_files(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir")
    (root / "queries.jsonl").unlink()
    with pytest.raises(DatasetError, match="queries.jsonl"):
        load_beir(root)
    with pytest.raises(DatasetError, match="not found"):
        load_beir(tmp_path / "nowhere")
    root2 = write_beir(tmp_path / "beir2")
    with pytest.raises(DatasetError, match=r"split 'dev' not found; available splits: \['test', 'train'\]"):
        load_beir(root2, "dev")
    with pytest.raises(DatasetError, match="qrels directory"):
        available_splits(tmp_path / "nowhere")


def test_malformed_json_line(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir")
    lines = (root / "corpus.jsonl").read_text().splitlines()
    lines[1] = '{"_id": "d2", "text": '
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"corpus.jsonl, line 2: malformed JSON") as info:
        load_beir(root)
    assert info.value.line == 2


def test_missing_fields_and_duplicates(tmp_path: Path) -> None:
    _expect(tmp_path / "a", 'missing "_id"', line=2, file="corpus.jsonl", corpus=[CORPUS[0], {"text": "x"}])
    _expect(tmp_path / "b", 'missing "text"', line=1, file="queries.jsonl", queries=[{"_id": "q1"}])
    _expect(tmp_path / "c", "duplicate document id 'd1'", line=2, file="corpus.jsonl", corpus=[CORPUS[0], CORPUS[0]])
    _expect(tmp_path / "d", '"text" must be a string', line=1, file="corpus.jsonl", corpus=[{"_id": "d1", "text": 3}])


def test_qrels_errors(tmp_path: Path) -> None:
    head = "query-id\tcorpus-id\tscore\n"
    _expect(
        tmp_path / "a",
        "unknown query id 'q9'",
        line=3,
        file="test.tsv",
        qrels={"test": head + "q1\td1\t1\nq9\td1\t1\n"},
    )
    _expect(tmp_path / "b", "unknown document id 'd9'", line=2, file="test.tsv", qrels={"test": head + "q1\td9\t1\n"})
    _expect(
        tmp_path / "c", "score 'high' is not a number", line=2, file="test.tsv", qrels={"test": head + "q1\td1\thigh\n"}
    )
    _expect(
        tmp_path / "d", "expected 3 tab-separated columns", line=2, file="test.tsv", qrels={"test": head + "q1 d1 1\n"}
    )
    _expect(
        tmp_path / "e", "conflicting grades", line=3, file="test.tsv", qrels={"test": head + "q1\td1\t1\nq1\td1\t2\n"}
    )
    _expect(tmp_path / "f", "no judgements", line=None, file="test.tsv", qrels={"test": head})


def test_unknown_docs_drop(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir", qrels={"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n"})
    ds = load_beir(root, "test", unknown_docs="drop")
    assert ds.qrels == {"q1": {"d1": 1}}
    with pytest.raises(ValueError):
        load_beir(root, "test", unknown_docs="ignore")


def test_headerless_qrels_and_blank_lines(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir", qrels={"test": "q1\td1\t1\n\nq2\td2\t1.0\n"})
    ds = load_beir(root, "test")
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}
