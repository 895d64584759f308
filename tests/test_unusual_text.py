"""Unusual text: invisible-only queries, unknown-token texts, odd command-line bytes and near-miss ids.

* A query of only invisible characters (a zero-width space, a BOM, ``"\\x00"``...) is blank, as an
  empty one: the bundled tokenizers drop those characters, so it would match an empty document at
  ``-KL`` 0 and read as a sure answer. The CLI refuses it, the adapters give it confidence 0 and
  ``evaluate`` warns about it (:func:`~kl_retrievers._confidence.is_blank_query`).
* A text that encodes to ``[UNK]`` tokens only (a script or emoji missing from the vocabulary) is
  warned about once per encoder, on both backends.
* The CLI names a non-UTF-8 file name or command-line argument in its own terms, not the Python API's.
* ``load_beir`` names the near-miss of an unknown id (NFC/NFD, case, leading zeros).
* ``search``'s query line escapes only what the hits' lines escape.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, max_score_calibrator
from kl_retrievers._confidence import EMPTY_QUERY_REASON, is_blank_query
from kl_retrievers.cli import main
from kl_retrievers.datasets import BeirDataset, DatasetError, load_beir

INVISIBLE = ["\u200b", "\ufeff", "\u200d", "\x00", "\u2060", " \u200b\t\ufeff ", "\ue000"]
TEXTS = ["the cat sat on the mat", "green tea and bread", "water on black rock", ""]
IDS = [f"d{i}" for i in range(len(TEXTS))]
UNK_WARNING = "unknown tokens only ([UNK])"


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder().save_pretrained(tmp_path_factory.mktemp("unusual_model") / "model")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("unusual")
    model = model_dir
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(IDS[:3], TEXTS[:3], strict=True))
    )
    out = root / "store"
    assert main(["index", str(corpus), "--out", str(out), "--model", str(model), "--no-progress"]) == 0
    return out


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ------------------------------------------------------------------ F1: invisible-only queries are blank
@pytest.mark.parametrize("query", INVISIBLE)
def test_an_invisible_only_query_is_blank(query: str) -> None:
    assert is_blank_query(query)


@pytest.mark.parametrize("query", ["a\u200b", "\u200bcat", "e\u0301", "\u3000x", "😀", "\u20dd", "\u0301x"])
def test_a_query_with_a_visible_character_is_not_blank(query: str) -> None:
    assert not is_blank_query(query)


# What errors="replace" leaves, variation selectors, a grapheme joiner, Mongolian and Khmer fillers, lone marks.
DROPPED = ["\ufffd", "\ufe0f", "\ufe00", "\U000e0100", "\u034f", "\u180b", "\u17b4", "\u0301", "\u0301\ufe0f \ufffd"]


@pytest.mark.parametrize("query", DROPPED)
def test_a_query_of_characters_the_tokenizer_drops_is_blank(query: str) -> None:
    assert is_blank_query(query)


@pytest.mark.parametrize("name", ["minilm-gauss-soup", "bge-small-unit-variance"])
def test_is_blank_query_is_what_the_bundled_tokenizer_reads_as_the_empty_text(name: str) -> None:
    """Each BMP code point (and some beyond) is blank exactly when the bundled tokenizer drops it.

    The only exceptions are marks and format characters newer than the tokenizer's Unicode tables,
    which it reads as ``[UNK]``: a query of only those counts as blank all the same.
    """
    import unicodedata

    tokenizers = pytest.importorskip("tokenizers")
    from kl_retrievers.pretrained import bundled_model_path

    tok = tokenizers.Tokenizer.from_file(os.fspath(bundled_model_path(name) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    empty = tok.encode("").ids
    unknown = tok.encode("\U0001f600").ids  # an emoji: [CLS] [UNK] [SEP]
    sample = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    sample += [
        *(c for c in DROPPED if len(c) == 1),
        "\U000e0001",
        "\U000e007f",
        "\U000f0000",
        "\U0001d173",
        "\U0001bca0",
        "\U000e0080",
    ]
    categories = {unicodedata.category(c) for c in sample}
    assert {"Mn", "Me", "Mc", "Cc", "Cf", "Co", "Cn", "So", "Zs", "Lo"} <= categories  # every kind is in the sample
    wrong, newer = [], []
    for ch, encoding in zip(sample, tok.encode_batch(sample), strict=True):
        dropped = encoding.ids == empty
        if is_blank_query(ch) != dropped:
            if dropped or encoding.ids != unknown or unicodedata.category(ch) not in ("Mn", "Cf"):
                wrong.append(f"U+{ord(ch):04X} ({unicodedata.category(ch)}, dropped={dropped})")
            else:
                newer.append(ch)
    assert wrong == [], wrong[:20]
    assert len(newer) < 400, len(newer)  # the tokenizer's tables lag Python's by a few hundred marks


def test_the_tokenizer_reads_an_invisible_only_query_as_the_empty_text(encoder: Any) -> None:
    """Why such a query is blank: the encoder reads it as it reads the empty text (the same tokens)."""
    ids = encoder.tokenize(["", *INVISIBLE], 32)["input_ids"].tolist()
    assert all(row == ids[0] for row in ids[1:]), ids


def test_langchain_gives_an_invisible_query_confidence_zero(encoder: Any) -> None:
    from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore

    vs = KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), ids=IDS)
    retriever = KLRetriever(vectorstore=vs, k=2, calibrator=max_score_calibrator())
    assert retriever.invoke(TEXTS[1])[0].metadata["confidence"] > 0.5  # the calibrator: an exact match is sure
    for query in ("\u200b", "\ufeff\x00"):
        docs = retriever.invoke(query)  # before: the empty document at -KL 0, confidence ~1
        assert docs and {d.metadata["confidence"] for d in docs} == {0.0}, query


@pytest.mark.parametrize("query", ["\ufffd", "\ufe0f", "\u0301"])
def test_langchain_gives_a_query_the_tokenizer_drops_confidence_zero(encoder: Any, query: str) -> None:
    from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore

    vs = KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), ids=IDS)
    retriever = KLRetriever(vectorstore=vs, k=2, calibrator=max_score_calibrator())
    docs = retriever.invoke(query)  # before: the empty document, confidence ~0.98
    assert docs and {d.metadata["confidence"] for d in docs} == {0.0}


def test_llama_index_gives_an_invisible_query_confidence_zero(encoder: Any) -> None:
    from llama_index.core.schema import TextNode

    from kl_retrievers.llama_index import CONFIDENCE_KEY, CONFIDENCE_REASON_KEY
    from kl_retrievers.llama_index import KLRetriever as LIRetriever
    from kl_retrievers.llama_index import KLVectorStore as LIVectorStore

    vs = LIVectorStore(encoder=encoder, calibrator=max_score_calibrator())
    vs.add([TextNode(text=t, id_=i) for t, i in zip(TEXTS, IDS, strict=True)])
    nodes = LIRetriever(vs, similarity_top_k=2).retrieve("\u2060")
    assert nodes and {n.node.metadata[CONFIDENCE_KEY] for n in nodes} == {0.0}
    assert {n.node.metadata[CONFIDENCE_REASON_KEY] for n in nodes} == {EMPTY_QUERY_REASON}


def test_search_refuses_an_invisible_only_query(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["search", str(store), "cat", "\u200b"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "query 2 ('\\u200b') is blank" in lines[0], captured.err
    assert "invisible characters counted as whitespace" in lines[0]


def test_evaluate_warns_about_an_invisible_only_query(caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers.evaluate_cli import _warn_blank_queries

    ds = BeirDataset(Path("."), "test", {"d": {"text": "x"}}, {"a": "x", "b": "\ufeff"}, {"a": {"d": 1}, "b": {"d": 1}})
    with caplog.at_level(logging.WARNING):
        _warn_blank_queries(ds)
    assert any("1 of the 2 queries" in m and ": b;" in m for m in _warnings(caplog, "blank")), caplog.text


# ------------------------------------------------------------------ F2: [UNK]-only texts, warned once per encoder
def test_torch_encoder_warns_once_about_a_text_of_unknown_tokens(caplog: pytest.LogCaptureFixture) -> None:
    enc = make_tiny_encoder()
    with caplog.at_level(logging.WARNING):
        enc.encode_documents(["the cat", "green tea กรุงเทพ", "", "\u200b"])  # a known word beside: no warning
        assert _warnings(caplog, UNK_WARNING) == []
        enc.encode_documents(["the cat", "กรุงเทพมหานคร"])
        enc.encode_queries(["😀 😀"])
    (message,) = _warnings(caplog, UNK_WARNING)
    # the text stays out of the warning (it is logged at DEBUG): its length only
    assert "กรุงเทพมหานคร" not in message and "a text of length 13 " in message and "once per encoder" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_tiny_encoder().encode_queries(["😀"])  # another encoder warns on its own
    assert len(_warnings(caplog, UNK_WARNING)) == 1


def test_onnx_encoder_warns_once_about_a_text_of_unknown_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    enc = OnnxGaussianEncoder(export_onnx(make_tiny_encoder(), tmp_path / "f32", quantize=None, verify=False))
    with caplog.at_level(logging.WARNING):
        enc.encode_documents(["the cat", "tea 😀"])
        assert _warnings(caplog, UNK_WARNING) == []
        enc.encode_documents(["ພາສາລາວ", "the cat"])
        enc.encode_queries(["😀"])
    (message,) = _warnings(caplog, UNK_WARNING)
    assert "ພາສາລາວ" not in message and "a text of length 7 " in message


def _onnx_or_torch(backend: str, tmp_path: Path, **kw: Any) -> Any:
    enc = make_tiny_encoder(**kw)
    if backend == "torch":
        return enc
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    return OnnxGaussianEncoder(export_onnx(enc, tmp_path / "f32", quantize=None, verify=False))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_query_of_unknown_tokens_is_warned_about_despite_a_query_prefix(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A query prefix (bge's instruction) is known words: the query after it is what is checked."""
    enc = _onnx_or_torch(backend, tmp_path, extra={"query_prefix": "green tea "})
    with caplog.at_level(logging.WARNING):
        enc.encode_queries(["the cat", "mat 😀", "green tea"])  # a known word: no warning
        assert _warnings(caplog, UNK_WARNING) == []
        enc.encode_queries(["😀"])  # before: the prefix's words hid its [UNK]
    (message,) = _warnings(caplog, UNK_WARNING)
    assert "a text of length 1 " in message, message  # the query after the prefix ("green tea 😀": 11)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_concurrent_encodings_warn_once_about_unknown_tokens(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads that all find the flag unset before any sets it still warn once (the flag is claimed)."""
    import threading

    enc = _onnx_or_torch(backend, tmp_path)
    token = enc._unknown_token()
    assert token is not None
    threads = 4
    barrier = threading.Barrier(threads, timeout=10)

    def unknown_token_after_all_threads_checked() -> Any:
        barrier.wait()  # every thread has read the flag (unset) before any goes on
        return token

    monkeypatch.setattr(enc, "_unknown_token", unknown_token_after_all_threads_checked)
    unk = token[0]
    rows = [np.asarray([unk], dtype=np.int64)]
    with caplog.at_level(logging.WARNING):
        workers = [threading.Thread(target=enc._warn_unknown_only, args=(["😀"], rows)) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=20)
    assert len(_warnings(caplog, UNK_WARNING)) == 1


# ------------------------------------------------------------------ F6: non-UTF-8 names and arguments
@pytest.mark.skipif(os.name != "posix", reason="a file name of arbitrary bytes needs a POSIX file system")
def test_index_names_a_file_whose_name_is_not_utf8(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "plain.txt").write_text("plain text")
    try:
        with open(os.fsencode(folder) + b"/caf\xe9.txt", "wb") as fh:
            fh.write(b"a latin-1 file name")
    except OSError:
        pytest.skip("this file system refuses a non-UTF-8 file name")
    assert main(["index", str(folder), "--out", str(tmp_path / "st"), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "the file name b'caf\\xe9.txt' is not valid UTF-8" in err and "rename the file" in err, err
    assert "ids[0]" not in err and "errors=" not in err


@pytest.mark.parametrize("command", ["search", "demo", "encode"])
def test_a_command_line_text_that_is_not_utf8_is_named(
    command: str, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = os.fsdecode(b"bread \xff")  # what Python makes of such an argument (surrogateescape)
    argv = {
        "search": ["search", str(store), "cat", bad],
        "demo": ["demo", "cat", bad],
        "encode": ["encode", "cat", bad, "--out", str(tmp_path / "g.safetensors")],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    what = "text" if command == "encode" else "query"
    assert f"{what} 2 on the command line is not valid UTF-8 text (byte 0xff at character 6" in err, err
    assert "texts[" not in err and "errors=" not in err


def test_encode_names_the_line_of_a_text_file_that_is_not_utf8(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"ok\n" * 50 + b"\ncaf\xe9\n")
    assert main(["encode", "-i", str(source), "--out", str(tmp_path / "g.safetensors"), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{source}, line 52: not UTF-8 text (" in err and "at byte 3 of the line)" in err, err


def test_search_refuses_a_filter_that_is_not_utf8(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    bad = os.fsdecode(b'{"lang": "\xff"}')
    assert main(["search", str(store), "cat", "--filter", bad]) == 2
    err = capsys.readouterr().err
    assert "--filter on the command line is not valid UTF-8 text (byte 0xff at character 10" in err, err


@pytest.mark.skipif(os.name != "posix", reason="a folder name of arbitrary bytes needs a POSIX file system")
def test_index_names_a_folder_whose_name_is_not_utf8(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "plain.txt").write_text("plain text")
    try:
        os.makedirs(os.fsencode(folder) + b"/sub\xe9")
        with open(os.fsencode(folder) + b"/sub\xe9/a.txt", "wb") as fh:
            fh.write(b"nested")
    except OSError:
        pytest.skip("this file system refuses a non-UTF-8 folder name")
    assert main(["index", str(folder), "--out", str(tmp_path / "st"), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "the folder name b'sub\\xe9' (in b'sub\\xe9/a.txt') is not valid UTF-8" in err, err
    assert "rename the folder" in err and "rename the file" not in err, err


# ------------------------------------------------------------------ F7: near-miss ids
def _beir(root: Path, query_id: str, doc_id: str, qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(f'{{"_id": {doc_id}, "text": "bees"}}\n{{"_id": "d9", "text": "x"}}\n')
    (root / "queries.jsonl").write_text(f'{{"_id": {query_id}, "text": "bees"}}\n')
    (root / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\n{qrels}\t1\n")
    return root


@pytest.mark.parametrize(
    ("query_id", "doc_id", "qrels", "hint"),
    [
        ("7", '"d0"', "07\td0", "unknown query id '07' (not in queries.jsonl); did you mean '7'? (the same number"),
        ('"07"', '"d0"', "7\td0", "unknown query id '7' (not in queries.jsonl); did you mean '07'?"),
        (
            '"q"',
            '"caf\u00e9"',
            "q\tcafe\u0301",
            "did you mean 'caf\u00e9'? ('caf\\xe9' in corpus.jsonl, 'cafe\\u0301' here: the same id in another "
            "Unicode normal form",
        ),
        (
            '"Q1"',
            '"d0"',
            "q1\td0",
            "unknown query id 'q1' (not in queries.jsonl); did you mean 'Q1'? (the same id when case-folded",
        ),
    ],
)
def test_an_unknown_id_names_its_near_miss(tmp_path: Path, query_id: str, doc_id: str, qrels: str, hint: str) -> None:
    with pytest.raises(DatasetError) as err:
        load_beir(_beir(tmp_path, query_id, doc_id, qrels))
    assert hint in str(err.value)


def test_a_near_miss_of_another_normal_form_puts_the_fix_before_dropping(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_beir(_beir(tmp_path, '"q"', '"caf\u00e9"', "q\tcafe\u0301"))
    message = str(err.value)
    fix = message.index("normalise the ids of both files to one form")
    assert fix < message.index("unknown_docs='drop'"), message
    assert "instead (this one would be lost)" in message


def test_a_near_miss_prefers_the_same_id_in_another_normal_form(tmp_path: Path) -> None:
    """An id equal after NFC is named before one equal only after case folding, whichever comes first."""
    root = _beir(tmp_path, '"q"', '"CAF\u00c9"', "q\tCafe\u0301")
    with open(root / "corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"_id": "Caf\u00e9", "text": "x"}\n')
    with pytest.raises(DatasetError, match="did you mean 'Caf\u00e9'\\? \\('Caf\\\\xe9' in corpus.jsonl"):
        load_beir(root)


def test_a_case_folded_near_miss_is_called_so(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_beir(_beir(tmp_path, '"q"', '"Stra\u00dfe"', "q\tstrasse"))
    message = str(err.value)
    assert (
        "did you mean 'Stra\u00dfe'? ('Stra\\xdfe' in corpus.jsonl, 'strasse' here: the same id when case-folded"
        in (message)
    ), message
    assert "another case;" not in message


def test_an_unknown_id_without_a_near_miss_has_no_hint(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown query id 'q2'") as err:
        load_beir(_beir(tmp_path, '"q1"', '"d0"', "q2\td0"))
    assert "did you mean" not in str(err.value)


def test_a_float_id_is_refused_saying_strings_and_integers_are_allowed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match='"_id" must be a string or an integer, got float'):
        load_beir(_beir(tmp_path, "1.0", '"d0"', "1.0\td0"))


# ------------------------------------------------------------------ F8: the query line follows the hits' rule
def test_search_query_line_keeps_what_hits_keep(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = "cat\u200dtea\u00a0mat\u3000rock"  # a zero-width joiner, a no-break space, an ideographic space
    capsys.readouterr()
    assert main(["search", str(store), query, "-k", "1"]) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("query: "))
    assert head.startswith(f"query: '{query}'  (uncertainty"), head
    assert main(["search", str(store), "cat\x1b[31m", "-k", "1"]) == 0  # a control character is still escaped
    head = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("query: "))
    assert head.startswith("query: 'cat\\x1b[31m'"), head
