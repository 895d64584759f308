"""A store loaded without its encoder logs where the model its folder names is loaded from.

``KLStore.load(folder)`` (and LangChain's ``load_local(folder)`` without ``embeddings``) loads, at the first text
search, whatever model ``config.json``'s ``encoder.name_or_path`` names (as documented): a bundled name, a folder
(a relative one read from the current directory) or a hub id. The INFO line naming the model now says which of
these it is, with the folder's absolute path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import fake_hub, make_tiny_encoder
from kl_retrievers import KLStore
from kl_retrievers.encoder import GaussianEncoder

TEXTS = ["a cat sat on the mat", "dogs run in the park"]


def _store_saved_with(tmp_path: Path, model: Path) -> Path:
    enc = GaussianEncoder.from_pretrained(model)
    store = KLStore(encoder=enc)
    store.add(TEXTS, ids=["a", "b"])
    return store.save(tmp_path / "store")


def _rename_model(store: Path, name: str) -> None:
    path = store / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["encoder"]["name_or_path"] = name
    path.write_text(json.dumps(config), encoding="utf-8")


def _loading_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "this store was saved with" in r.getMessage()]


def test_a_saved_model_folder_is_logged_with_its_absolute_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_tiny_encoder().save_pretrained(tmp_path / "enc")
    store = KLStore.load(_store_saved_with(tmp_path, model))
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        assert store.search("a cat", k=1)[0].id == "a"
    (line,) = _loading_lines(caplog)
    assert f"(the local folder {model.resolve()}; torch backend)" in line


def test_a_relative_folder_is_logged_as_read_from_the_current_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_tiny_encoder().save_pretrained(tmp_path / "models" / "v1" / "enc")
    folder = _store_saved_with(tmp_path, model)
    _rename_model(folder, "models/v1/enc")
    monkeypatch.chdir(tmp_path)
    store = KLStore.load(folder)
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        store.search("a cat", k=1)
    (line,) = _loading_lines(caplog)
    assert f"the local folder {model.resolve()}, a relative path read from the current directory" in line


def test_a_hub_id_is_logged_as_one_before_the_lookup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_tiny_encoder().save_pretrained(tmp_path / "enc")
    folder = _store_saved_with(tmp_path, model)
    _rename_model(folder, "someone/some-encoder")
    looked_up = fake_hub(monkeypatch, None)  # unreachable
    monkeypatch.chdir(tmp_path)
    store = KLStore.load(folder)
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"), pytest.raises(ValueError):
        store.search("a cat", k=1)
    (line,) = _loading_lines(caplog)
    assert "'someone/some-encoder'" in line and "not a local folder: a Hugging Face hub id" in line
    assert looked_up == ["someone/some-encoder"]


def test_langchain_load_local_logs_where_the_saved_encoder_comes_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    model = make_tiny_encoder().save_pretrained(tmp_path / "enc")
    vs = KLVectorStore.from_texts(TEXTS, KLEmbeddings(GaussianEncoder.from_pretrained(model)))
    vs.save_local(tmp_path / "lc")
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        KLVectorStore.load_local(tmp_path / "lc")
    (line,) = _loading_lines(caplog)
    assert f"the local folder {model.resolve()}" in line
