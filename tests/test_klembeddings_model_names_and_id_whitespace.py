"""LangChain ``KLEmbeddings`` takes a model by name (``model_name=`` or a str / path
as ``encoder``) and the saved store records it; the one-shot ``encode`` / ``index`` commands refuse ids
with surrounding whitespace as ``load_beir`` and the sharded path do; the docs qualify the raw
inner-product HNSW claim as the FAQ does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers._io import row_id
from kl_retrievers.cli import main
from kl_retrievers.hub import ModelNotFoundError
from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["the cat sat on the mat", "green tea and bread", "a train at sea"]


# ---------------------------------------------------------------- 1. KLEmbeddings(model_name=...)
@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    """A tiny random encoder saved to ``tmp_path/enc`` (torch backend when loaded)."""
    return Path(make_tiny_encoder().save_pretrained(tmp_path / "enc"))


@pytest.mark.parametrize("form", ["model_name", "positional", "encoder=", "model_name path"])
def test_klembeddings_loads_a_model_by_name_or_folder(saved_model: Path, form: str) -> None:
    folder = str(saved_model)
    made = {
        "model_name": lambda: KLEmbeddings(model_name=folder),
        "positional": lambda: KLEmbeddings(folder),
        "encoder=": lambda: KLEmbeddings(encoder=folder),
        "model_name path": lambda: KLEmbeddings(model_name=saved_model),
    }[form]()
    assert made.encoder.name_or_path == str(saved_model.resolve())
    expected = KLEmbeddings(make_tiny_encoder()).embed_query("the cat")
    np.testing.assert_allclose(made.embed_query("the cat"), expected, rtol=1e-5, atol=1e-6)
    assert str(saved_model.resolve()) in repr(made)


def test_klembeddings_still_takes_an_encoder_or_klembeddings() -> None:
    encoder = make_tiny_encoder()
    assert KLEmbeddings(encoder).encoder is encoder
    assert KLEmbeddings(encoder=encoder).encoder is encoder
    assert KLEmbeddings(KLEmbeddings(encoder)).encoder is encoder


@pytest.mark.parametrize("backend", [None, "torch", "onnx"])
@pytest.mark.parametrize("how", ["model_name", "positional"])
def test_klembeddings_name_and_backend_reach_load_model(
    monkeypatch: pytest.MonkeyPatch, backend: Any, how: str
) -> None:
    import kl_retrievers.pretrained as pretrained

    seen: list[Any] = []
    encoder = make_tiny_encoder()

    def load_model(name: Any, *, backend: Any = None) -> Any:
        seen.append((name, backend))
        return encoder

    monkeypatch.setattr(pretrained, "load_model", load_model)
    emb = KLEmbeddings(model_name="some-model", backend=backend) if how == "model_name" else None
    if emb is None:
        emb = KLEmbeddings("some-model", backend=backend)
    assert seen == [("some-model", backend)]  # loaded at construction, once
    assert emb.encoder is encoder and len(emb.embed_query("tea")) == 2 * 8 + 1
    assert seen == [("some-model", backend)]


def test_klembeddings_refuses_encoder_and_model_name_together(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.pretrained as pretrained

    def load_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing may be loaded")

    monkeypatch.setattr(pretrained, "load_model", load_model)
    with pytest.raises(ValueError, match=r"either encoder or model_name, not both; got encoder='a' and model_name='b'"):
        KLEmbeddings("a", model_name="b")
    with pytest.raises(ValueError, match=r"got encoder='GaussianEncoder' and model_name='b'"):
        KLEmbeddings(make_tiny_encoder(), model_name="b")


def test_klembeddings_bad_model_names_are_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"model_name must be a model name or folder .*got int"):
        KLEmbeddings(model_name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got int; KLEmbeddings also takes a model name or folder"):
        KLEmbeddings(3)
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=re.escape(str(missing))):
        KLEmbeddings(model_name=str(missing))
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'tensorrt'"):
        KLEmbeddings(model_name="minilm-gauss-soup", backend="tensorrt")  # type: ignore[arg-type]


def test_store_built_from_a_relative_model_folder_records_it_absolute(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(saved_model.parent)
    store = KLVectorStore.from_texts(TEXTS, KLEmbeddings(model_name="enc"), ids=["a", "b", "c"])
    folder = store.save_local(tmp_path / "saved")
    manifest = json.loads((folder / "langchain.json").read_text(encoding="utf-8"))
    assert manifest["encoder"] == str(saved_model.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative name no longer resolves: the recorded absolute path does
    loaded = KLVectorStore.load_local(folder)
    assert loaded.store.encoder.name_or_path == str(saved_model.resolve())
    expected = [(d.id, round(s, 5)) for d, s in store.similarity_search_with_score("green tea", k=3)]
    assert [(d.id, round(s, 5)) for d, s in loaded.similarity_search_with_score("green tea", k=3)] == expected
    again = KLVectorStore.deserialize_from_bytes(store.serialize_to_bytes(), KLEmbeddings(model_name=saved_model))
    assert [(d.id, round(s, 5)) for d, s in again.similarity_search_with_score("green tea", k=3)] == expected


def test_store_built_from_a_bundled_model_name_records_and_reloads_it(tmp_path: Path) -> None:
    emb = KLEmbeddings(model_name="minilm-gauss-soup", backend="onnx")
    assert emb.encoder.name_or_path == "kl_retrievers:minilm-gauss-soup"
    store = KLVectorStore.from_texts(TEXTS, emb, ids=["a", "b", "c"])
    folder = store.save_local(tmp_path / "saved")
    assert json.loads((folder / "langchain.json").read_text(encoding="utf-8"))["encoder"] == (
        "kl_retrievers:minilm-gauss-soup"
    )
    expected = [(d.id, round(s, 4)) for d, s in store.similarity_search_with_score("bread and tea", k=3)]
    assert expected[0][0] == "b"
    loaded = KLVectorStore.load_local(folder)
    assert [(d.id, round(s, 4)) for d, s in loaded.similarity_search_with_score("bread and tea", k=3)] == expected
    again = KLVectorStore.deserialize_from_bytes(store.serialize_to_bytes())  # a bundled name loads by name
    assert [(d.id, round(s, 4)) for d, s in again.similarity_search_with_score("bread and tea", k=3)] == expected


# ---------------------------------------------------------------- 2. ids with surrounding whitespace
@pytest.mark.parametrize("bad", ["d1 ", " d1", "d1\t", "\u00a0d1"])
def test_row_id_refuses_surrounding_whitespace_naming_the_record_and_id(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        row_id({"_id": bad, "text": "sea"}, 1, "corpus.jsonl, line 3")
    assert str(info.value).startswith(f"corpus.jsonl, line 3 (record 2): the id {bad!r} has leading or trailing")
    with pytest.raises(ValueError, match=r"^corpus\.jsonl, record 2: the id"):  # where already names the record
        row_id({"id": bad}, 1, "corpus.jsonl, record 2")
    assert row_id({"_id": "d 1"}, 1, "corpus.jsonl, line 3") == "d 1"  # inner blanks are part of the id


def _corpus_with_blank_id(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": "d0", "text": "cat"}, {"_id": "d1 ", "text": "sea"}]
    corpus.write_text("\n" + "".join(json.dumps(row) + "\n" for row in rows))  # a blank line first: line 3
    return corpus


@pytest.mark.parametrize("command", ["encode", "index"])
def test_one_shot_commands_refuse_ids_with_surrounding_whitespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    corpus = _corpus_with_blank_id(tmp_path)
    out = tmp_path / "out"
    argv = ["encode", "--input", str(corpus)] if command == "encode" else ["index", str(corpus)]
    assert main([*argv, "--out", str(out), "--model", str(tmp_path / "never-loaded"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl, line 3 (record 2): the id 'd1 ' has leading or trailing whitespace" in err, err
    assert not out.exists()


def test_one_shot_and_sharded_encode_refuse_alike(tmp_path: Path) -> None:
    from kl_retrievers.cli import read_texts

    corpus = _corpus_with_blank_id(tmp_path)
    with pytest.raises(ValueError) as one_shot:
        read_texts(corpus, "auto")
    with pytest.raises(ValueError) as planned:
        sharded.plan_shards(corpus, shard_size=1)
    assert str(one_shot.value) == str(planned.value)


# ---------------------------------------------------------------- 3. docs: the raw inner-product claim
FAQ_LINK = "faq.md#why-do-hnsw-and-ivf-need-special-treatment"


@pytest.mark.parametrize(
    ("page", "heading"),
    [
        ("method.md", "## Approximate search: the L2 reduction"),
        ("langchain.md", "Incompatible (cosine, L2 or normalising):"),
        ("llama_index.md", "| store | works? |"),
    ],
)
def test_raw_inner_product_claim_is_qualified_as_in_the_faq(page: str, heading: str) -> None:
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    section = " ".join(text.split(heading, 1)[1].split("\n## ", 1)[0].split())
    assert FAQ_LINK in section
    assert "close to 1" in section and "much less affected" in section
    assert "synthetic" in section
    assert "very uneven norms" not in section and "poor recall on these vectors" not in section
    assert "norms vary widely" not in section
    assert "9.86" not in section  # the figures stay in the FAQ block that measures them
