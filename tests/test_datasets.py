"""Tests for the BEIR loader (kl_retrievers.datasets)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kl_retrievers.datasets import (
    BeirDataset,
    DatasetError,
    available_splits,
    document_text,
    fetch_beir,
    load_beir,
)

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


def test_cache_identity_follows_content_not_the_file(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "beir"), "test")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "beir", copy)
    os.utime(copy / "corpus.jsonl", ns=(1, 1))  # another path and time stamp, same content
    same = load_beir(copy, "test")
    assert same.corpus_identity() == ds.corpus_identity()
    assert same.queries_identity() == ds.queries_identity()
    corpus = copy / "corpus.jsonl"
    stat = corpus.stat()
    text = corpus.read_text(encoding="utf-8")
    edited = text.replace("Fish", "Fizh", 1)
    assert len(edited) == len(text) and edited != text
    corpus.write_text(edited, encoding="utf-8")
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and time stamp, other content
    assert load_beir(copy, "test").corpus_identity() != ds.corpus_identity()


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


def test_trec_qrels_only_without_the_beir_header(tmp_path: Path) -> None:
    # Headerless, 4 columns, numeric 4th: TREC "qid iteration docid grade".
    root = write_beir(tmp_path / "trec", qrels={"test": "q1\t0\td1\t1\nq2\tQ0\td2\t2\n"})
    assert load_beir(root, "test").qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    head = "query-id\tcorpus-id\tscore\n"
    # A BEIR line with a trailing tab (as BEIR tools sometimes write) used to be read as TREC and
    # fail with "score '' is not a number"; now the message says what is wrong.
    for name, text, line in (
        ("tab", head + "q1\td1\t1\t\n", 2),
        ("tab2", head + "q1\td1\t1\nq2\td2\t2\t\n", 3),
        ("headerless-tab", "q1\td1\t1\t\n", 1),
        ("headerless-tab2", "q1\td1\t1\nq2\td2\t2\t\n", 2),
    ):
        _expect(tmp_path / name, r"got 4 columns \(trailing tab\?\)", line=line, file="test.tsv", qrels={"test": text})
    # An extra numeric column in a BEIR file used to be read as TREC (its grade "1" as a document id).
    _expect(
        tmp_path / "extra",
        "got 4 columns .*without the BEIR header",
        line=2,
        file="test.tsv",
        qrels={"test": head + "q1\td1\t1\t1\n"},
    )
    # The layout is fixed by the first judgement: no mixing TREC and BEIR lines in one file.
    _expect(
        tmp_path / "mix1",
        "the first judgement had 3",
        line=2,
        file="test.tsv",
        qrels={"test": "q1\td1\t1\nq2\t0\td2\t1\n"},
    )
    _expect(
        tmp_path / "mix2",
        "expected 4 tab-separated columns .*TREC.*got 3",
        line=2,
        file="test.tsv",
        qrels={"test": "q1\t0\td1\t1\nq2\td2\t1\n"},
    )
    _expect(
        tmp_path / "trec-tab",
        r"got 5 columns \(trailing tab\?\)",
        line=2,
        file="test.tsv",
        qrels={"test": "q1\t0\td1\t1\nq2\t0\td2\t1\t\n"},
    )
    _expect(
        tmp_path / "trec-word",
        "only when the 4th, the grade, is a number",
        line=1,
        file="test.tsv",
        qrels={"test": "q1\t0\td1\thigh\n"},
    )
    # The header may follow blank lines.
    root = write_beir(tmp_path / "blank-first", qrels={"test": "\n" + head + "q1\td1\t1\n"})
    assert load_beir(root, "test").qrels == {"q1": {"d1": 1}}


def test_padded_ids_are_refused(tmp_path: Path) -> None:
    # Qrels columns are stripped, so a corpus id "d1 " could never be judged ("unknown document id 'd1'"
    # before); stripping it instead could merge it with another "d1" and change the id ties break on.
    padded_doc = [{"_id": "d1 ", "title": "", "text": "x"}, *CORPUS[1:]]
    _expect(
        tmp_path / "a",
        "\"_id\" 'd1 ' has leading or trailing whitespace",
        line=1,
        file="corpus.jsonl",
        corpus=padded_doc,
        qrels={"test": "query-id\tcorpus-id\tscore\nq1\td1 \t1\n"},
    )
    _expect(
        tmp_path / "b",
        "\"_id\" ' q2' has leading or trailing whitespace",
        line=2,
        file="queries.jsonl",
        queries=[QUERIES[0], {"_id": " q2", "text": "dogs"}],
    )
    # Padding in the qrels file itself is still read stripped.
    root = write_beir(tmp_path / "c", qrels={"test": "query-id\tcorpus-id\tscore\n q1 \td1 \t 1 \n"})
    assert load_beir(root, "test").qrels == {"q1": {"d1": 1}}


# ------------------------------------------------------------------ fetch_beir: root, local copy, download
def _zip_of(folder: Path, archive: Path, prefix: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


@pytest.fixture
def no_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("KL_RETRIEVERS_DATA", "KL_RETRIEVERS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(env, raising=False)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on localhost serving ``tmp_path/www``; yields its base URL and the paths requested."""
    (tmp_path / "www").mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path / "www"), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requested
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("no_local_copy")
@pytest.mark.parametrize("prefix", ["scifact/", ""])
def test_fetch_beir_downloads_once_then_reuses(tmp_path: Path, served: tuple[str, list[str]], prefix: str) -> None:
    base, requested = served
    _zip_of(write_beir(tmp_path / "src"), tmp_path / "www" / "scifact.zip", prefix)
    folder = fetch_beir("scifact", tmp_path / "data", url=f"{base}/scifact.zip", timeout=10)
    assert folder == tmp_path / "data" / "scifact" and requested == ["/scifact.zip"]
    assert load_beir(folder, "test").qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
    again = fetch_beir("scifact", tmp_path / "data", url=f"{base}/missing.zip", timeout=10)
    assert again == folder and requested == ["/scifact.zip"]  # found on disk: no second request


@pytest.mark.usefixtures("no_local_copy")
def test_fetch_beir_default_root_is_the_cache(
    tmp_path: Path, served: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = served
    _zip_of(write_beir(tmp_path / "src"), tmp_path / "www" / "nfc.zip", "nfc/")
    monkeypatch.setenv("KL_RETRIEVERS_DATASET_CACHE", str(tmp_path / "cache"))
    assert fetch_beir("nfc", url=f"{base}/nfc.zip", timeout=10) == tmp_path / "cache" / "nfc"


def test_fetch_beir_prefers_a_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = write_beir(tmp_path / "mirror" / "scifact")
    no_server = "http://127.0.0.1:9/never.zip"  # port 9 (discard): a download attempt fails the test
    assert fetch_beir("scifact", tmp_path / "data", local_copy=copy, url=no_server, timeout=2) == copy
    monkeypatch.setenv("KL_RETRIEVERS_DATA", str(tmp_path / "mirror"))
    monkeypatch.setenv("KL_RETRIEVERS_OFFLINE", "1")
    assert fetch_beir("scifact", tmp_path / "data", url=no_server) == copy
    assert not (tmp_path / "data" / "scifact").exists()  # used in place, not copied


@pytest.mark.usefixtures("no_local_copy")
def test_fetch_beir_offline_or_unreachable_names_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match=r"could not download http://127\.0\.0\.1:9/x\.zip .*KL_RETRIEVERS_DATA"):
        fetch_beir("scifact", tmp_path / "data", url="http://127.0.0.1:9/x.zip", timeout=2)
    assert not (tmp_path / "data" / "scifact").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"HF_HUB_OFFLINE is set, so https://public\.ukp.*scifact\.zip is not"):
        fetch_beir("scifact", tmp_path / "data")


@pytest.mark.usefixtures("no_local_copy")
def test_fetch_beir_refuses_unsafe_or_foreign_archives(tmp_path: Path, served: tuple[str, list[str]]) -> None:
    base, _ = served
    with zipfile.ZipFile(tmp_path / "www" / "evil.zip", "w") as zf:
        zf.writestr("corpus.jsonl", '{"_id": "d", "text": "t"}\n')
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DatasetError, match="unsafe path '../escape.txt'"):
        fetch_beir("evil", tmp_path / "data", url=f"{base}/evil.zip", timeout=10)
    assert not (tmp_path / "data" / "evil").exists() and not (tmp_path / "data" / "escape.txt").exists()
    (tmp_path / "www" / "page.zip").write_text("<html>not a zip</html>")
    with pytest.raises(DatasetError, match="not a zip file"):
        fetch_beir("page", tmp_path / "data", url=f"{base}/page.zip", timeout=10)
    with pytest.raises(ValueError, match="name must be a BEIR collection name"):
        fetch_beir("../scifact", tmp_path / "data")
