"""Review of fd83e84, 5f47c04 and 043d350 (stop 46, round 8): ``kl-retrievers search`` on a manifest file of
any name, LangChain's hint for ``metadatas=d.items()``, ``KLHybridStore.add`` checking ids before encoding,
``KLStore.add`` refusing dict views as texts, and ``OnnxGaussianEncoder.to`` reading its arguments as torch does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers import KLStore
from kl_retrievers.cli import _kl_store_folder, main
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore

TEXTS = ["Bees dance to share where food is.", "Yeast makes bread rise.", "The moon orbits the earth."]
IDS = ["bees", "bread", "moon"]


def _gaussians(n: int, dim: int = 4) -> Gaussians:
    return Gaussians(np.zeros((n, dim)), np.ones((n, dim)))


class CountingEncoder:
    """A stand-in encoder that counts its ``encode_documents`` calls."""

    name_or_path = "fake"
    calls = 0

    class config:
        dim = 4

    def encode_documents(self, texts: list[str], **kwargs: Any) -> Gaussians:
        type(self).calls += 1
        return _gaussians(len(texts))

    encode_queries = encode_documents


# ------------------------------------------------------------------ 1. search on a manifest file of any name
def _small_store(folder: Path) -> Path:
    store = KLStore()
    store.add(gaussians=_gaussians(1), ids=["a"])
    return Path(store.save(folder))


@pytest.mark.parametrize("name", ["my_index.json", "index", "vector_store.json"])
def test_search_takes_a_llama_index_manifest_file_whatever_its_name(tmp_path: Path, name: str) -> None:
    """``KLVectorStore.persist("storage/my_index.json")`` writes my_index.json: it was refused as "a file"."""
    inner = _small_store(tmp_path / f"{name}.klstore")
    manifest = tmp_path / name
    manifest.write_text(
        json.dumps({"format": "kl-retrievers/llama-index-vector-store", "format_version": 1, "store": inner.name})
    )
    assert _kl_store_folder(manifest) == inner


def test_search_takes_a_langchain_manifest_file_whatever_its_name(tmp_path: Path) -> None:
    inner = _small_store(tmp_path / "klstore")
    manifest = tmp_path / "saved-langchain-manifest.json"
    manifest.write_text(json.dumps({"format": "kl-retrievers/langchain-klvectorstore", "format_version": 1}))
    assert _kl_store_folder(manifest) == inner


def test_a_folder_scan_finds_a_manifest_by_its_content_whatever_its_name(tmp_path: Path) -> None:
    """LlamaIndex manifests in a folder are found by content, whatever their names; two stores are refused."""
    inner = _small_store(tmp_path / "my_index.klstore")
    payload = {"format": "kl-retrievers/llama-index-vector-store", "format_version": 1, "store": inner.name}
    (tmp_path / "my_index.json").write_text(json.dumps(payload))
    assert _kl_store_folder(tmp_path) == inner
    (tmp_path / "vector_store.json").write_text(json.dumps(payload))
    assert _kl_store_folder(tmp_path) == inner  # two manifests, one store: searching it is unambiguous
    other = _small_store(tmp_path / "other.klstore")
    (tmp_path / "vector_store.json").write_text(json.dumps({**payload, "store": other.name}))
    with pytest.raises(ValueError) as info:
        _kl_store_folder(tmp_path)
    message = str(info.value)
    assert "2 KL stores" in message and "my_index.json" in message and "vector_store.json" in message, message


def test_another_file_is_refused_naming_the_formats_and_what_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError) as info:
        _kl_store_folder(path)
    message = str(info.value)
    assert f"{path} is a file, not a KL store" in message, message
    assert (
        "'kl-retrievers/llama-index-vector-store'" in message and "'kl-retrievers/langchain-klvectorstore'" in message
    )
    assert "*vector_store.json" not in message, message  # a file's name is not what decides


def test_cli_search_reads_a_store_persisted_under_any_manifest_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers import load_default_model
    from kl_retrievers.llama_index import KLVectorStore

    store = KLStore(load_default_model())
    store.add(TEXTS, ids=IDS)
    manifest = tmp_path / "storage" / "my_index.json"
    KLVectorStore(store=store).persist(str(manifest))
    assert main(["search", str(manifest), "how do bees communicate?", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == "bees"


# ------------------------------------------------------------------ 2. LangChain's hint for a dict's items
def test_langchain_items_view_hint_follows_the_parameter() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import _check_add_args

    metas = {"doc1": {"year": 2020}, "doc2": {"year": 2021}}
    with pytest.raises(TypeError) as info:
        _check_add_args(2, metas.items(), None)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("metadatas is a dict_items"), message
    assert "list(d.values()) for the dict's values" in message and "list(d) for the dict's keys" not in message
    with pytest.raises(TypeError) as info:
        _check_add_args(2, None, metas.items())  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("ids is a dict_items") and "list(d) for the dict's keys" in message, message


# ------------------------------------------------------------------ 3. KLHybridStore.add checks before encoding
@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        ({"x", "y"}, TypeError, r"ids is a set, whose iteration order is arbitrary"),
        (["x", "x"], ValueError, r"'x'"),
        (["x"], ValueError, r"got 1 ids but 2 texts"),
        (["x", 3], TypeError, r"ids\[1\] must be a str"),
        ({"x": 1, "y": 2}.items(), TypeError, r"ids is a dict_items, whose items are a dict's \(key, value\) pairs"),
    ],
)
def test_hybrid_add_refuses_bad_ids_before_encoding(ids: Any, error: type[Exception], match: str) -> None:
    pytest.importorskip("bm25s")
    CountingEncoder.calls = 0
    store = KLHybridStore(CountingEncoder(), fusion="rrf")  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        store.add(["a b", "c d"], ids=ids)
    assert CountingEncoder.calls == 0
    assert len(store) == 0


def test_hybrid_add_still_reads_ids_from_a_generator_and_a_dicts_keys() -> None:
    pytest.importorskip("bm25s")
    CountingEncoder.calls = 0
    store = KLHybridStore(CountingEncoder(), fusion="rrf")  # type: ignore[arg-type]
    assert store.add(["a b", "c d"], ids=(i for i in ["x", "y"])) == ["x", "y"]  # type: ignore[arg-type]
    assert store.add(["e f"], ids={"z": 0}.keys()) == ["z"]  # type: ignore[arg-type]
    assert CountingEncoder.calls == 2 and len(store) == 3
    assert [doc.text for doc in store.get_by_ids(["x", "y", "z"])] == ["a b", "c d", "e f"]


# ------------------------------------------------------------------ 4. KLStore.add: dict views as texts
@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ({"doc1": "a cat", "doc2": "tea"}.keys(), r"texts is a dict_keys, whose iteration gives a dict's keys"),
        ({"doc1": "a cat", "doc2": "tea"}.items(), r"texts is a dict_items, whose iteration gives a dict's \(key"),
        ({"doc1": "a cat", "doc2": "tea"}, r"texts is a dict, whose iteration gives its keys"),
        (b"ab", r"texts is bytes, not str"),
    ],
)
def test_klstore_add_refuses_texts_whose_iteration_gives_other_strings(texts: Any, match: str) -> None:
    """``texts=d.keys()`` stored the dict's keys (usually ids) as the texts; check_texts refuses it."""
    store = KLStore()
    with pytest.raises(TypeError, match=match):
        store.add(texts, gaussians=_gaussians(2))
    CountingEncoder.calls = 0
    with_encoder = KLStore(CountingEncoder())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=match):
        with_encoder.add(texts)
    assert CountingEncoder.calls == 0 and len(store) == 0 and len(with_encoder) == 0


def test_klstore_add_refuses_a_table_as_texts() -> None:
    class Table:
        columns = ("text",)

        def __iter__(self) -> Any:
            return iter(["text"])

    with pytest.raises(TypeError, match=r"texts is a Table \(a table\), whose iteration gives its column names"):
        KLStore().add(Table(), gaussians=_gaussians(1))  # type: ignore[arg-type]


def test_klstore_add_takes_a_dicts_keys_as_ids_but_not_its_items() -> None:
    store = KLStore()
    d = {"doc1": "a cat", "doc2": "tea"}
    assert store.add(list(d.values()), gaussians=_gaussians(2), ids=d.keys()) == ["doc1", "doc2"]  # type: ignore[arg-type]
    assert [doc.text for doc in store.get_by_ids(["doc1", "doc2"])] == ["a cat", "tea"]
    with pytest.raises(TypeError, match=r"ids is a dict_items, whose items are a dict's \(key, value\) pairs"):
        store.add(list(d.values()), gaussians=_gaussians(2), ids=d.items())  # type: ignore[arg-type]


def test_klstore_add_documents_the_container_refusals() -> None:
    doc = KLStore.add.__doc__ or ""
    flat = " ".join(doc.split())
    assert "a set of texts or ids" in flat and "``keys()`` or ``items()`` view" in flat, flat


# ------------------------------------------------------------------ 5. OnnxGaussianEncoder.to as torch reads it
@pytest.fixture(scope="module")
def onnx_encoder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from conftest import make_tiny_encoder
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    root = tmp_path_factory.mktemp("onnx-to-r8")
    return OnnxGaussianEncoder(export_onnx(make_tiny_encoder(), root / "f32", quantize=None, verify=False))


def _torch_accepts(*args: Any, **kwargs: Any) -> bool:
    import torch

    try:
        torch.nn.Linear(2, 2).to(*args, **kwargs)
    except (TypeError, RuntimeError):
        return False
    return True


def test_onnx_to_reads_a_positional_bool_where_torch_does(onnx_encoder: Any) -> None:
    """``to("cpu", False)`` was taken (as device, non_blocking); torch refuses it: a bool is non_blocking only
    third after a device and a dtype, or second after a dtype or a tensor."""
    import torch

    enc = onnx_encoder
    refused: list[tuple[Any, ...]] = [("cpu", False), ("cpu:0", True), (torch.device("cpu"), True)]
    for args in refused:
        assert not _torch_accepts(*args)
        with pytest.raises(TypeError, match=r"neither a device nor a dtype, nor a non_blocking where torch reads one"):
            enc.to(*args)
    accepted: list[tuple[Any, ...]] = [
        ("cpu", torch.float32, True),
        (torch.float32, False),
        (torch.zeros(2), True),
        ("cpu", None, True),
        (None, torch.float32, True),
        ("cpu", None),
        (None,),
    ]
    for args in accepted:
        assert _torch_accepts(*args), args
        assert enc.to(*args) is enc, args
    with pytest.raises(TypeError, match=r"non_blocking must be a bool \(True or False\).*got 1"):
        enc.to("cpu", non_blocking=1)
    assert not _torch_accepts("cpu", non_blocking=1)


def test_onnx_to_takes_every_torch_memory_format_as_a_no_op(onnx_encoder: Any) -> None:
    """``to(memory_format=torch.channels_last)`` was a ValueError; torch takes any memory format."""
    import torch

    enc = onnx_encoder
    before = enc.encode_documents(TEXTS)
    for fmt in (torch.contiguous_format, torch.preserve_format, torch.channels_last, torch.channels_last_3d):
        assert _torch_accepts(memory_format=fmt)
        assert enc.to(memory_format=fmt) is enc
        assert enc.to("cpu", torch.float32, memory_format=fmt) is enc
    after = enc.encode_documents(TEXTS)
    np.testing.assert_array_equal(after.mean, before.mean)
    assert not _torch_accepts(memory_format="channels_last")
    with pytest.raises(TypeError, match=r"memory_format must be a torch.memory_format .*got 'channels_last'"):
        enc.to(memory_format="channels_last")


def test_onnx_page_and_docstring_say_what_to_accepts() -> None:
    from kl_retrievers.onnx import OnnxGaussianEncoder

    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "onnx.md").read_text(encoding="utf-8").split())
    doc = " ".join((OnnxGaussianEncoder.to.__doc__ or "").split())
    for text in (page, doc):
        assert "torch.channels_last_3d" in text and "torch.memory_format" in text
        assert 'to("cpu", False)' in text
