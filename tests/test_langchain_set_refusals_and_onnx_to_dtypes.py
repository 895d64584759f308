"""Review of 4c772e8 (round 4): LangChain ids / metadatas given as a set are refused (their order would pair
them with the texts at random), the constructors' hints and KLHybridRetriever.from_texts' checks match
add_texts, ``OnnxGaussianEncoder.to`` reads numpy dtypes, ``memory_format``, ``non_blocking`` and float32 as
torch does, and the FAQ / LangChain / ONNX pages say what the code does."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from conftest import make_tiny_encoder

pytest.importorskip("langchain_core")

from kl_retrievers import langchain as lc
from kl_retrievers.langchain import KLEmbeddings, KLHybridRetriever, KLRetriever, KLVectorStore

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["alpha text", "beta text", "gamma text"]


class ListSet(Set[Any]):
    """A ``collections.abc.Set`` that is not a ``set`` (its order is its list's, but a Set promises none)."""

    def __init__(self, items: list[Any]) -> None:
        self._items = list(items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@pytest.fixture(scope="module")
def embeddings() -> KLEmbeddings:
    return KLEmbeddings(make_tiny_encoder())


# ---------------------------------------------------------------- 1. a set of ids or metadatas is refused
@pytest.mark.parametrize(
    "ids", [{"id-a", "id-b", "id-c"}, frozenset({"id-a", "id-b", "id-c"}), ListSet(["id-a", "id-b", "id-c"])]
)
def test_add_texts_refuses_a_set_of_ids(embeddings: KLEmbeddings, ids: Any) -> None:
    """A set of ids used to be paired with the texts in set order (random across processes)."""
    store = KLVectorStore(embeddings)
    with pytest.raises(
        TypeError, match=rf"ids is a {type(ids).__name__}, whose iteration order is arbitrary.*pass a list"
    ):
        store.add_texts(TEXTS, ids=ids)
    assert len(store.store) == 0


def test_add_texts_refuses_a_set_of_metadatas(embeddings: KLEmbeddings) -> None:
    store = KLVectorStore(embeddings)
    metadatas = ListSet([{"n": 1}, {"n": 2}, {"n": 3}])
    with pytest.raises(TypeError, match=r"metadatas is a ListSet, whose iteration order is arbitrary.*pass a list"):
        store.add_texts(TEXTS, metadatas=metadatas)
    assert len(store.store) == 0


def test_add_embeddings_refuses_a_set_of_ids(embeddings: KLEmbeddings) -> None:
    store = KLVectorStore(embeddings)
    vectors = embeddings.embed_documents(TEXTS)
    with pytest.raises(TypeError, match=r"ids is a set, whose iteration order is arbitrary.*pass a list"):
        store.add_embeddings(zip(TEXTS, vectors, strict=True), ids={"a", "b", "c"})
    assert len(store.store) == 0


def test_a_dicts_keys_pair_as_ids_and_its_items_are_refused(embeddings: KLEmbeddings) -> None:
    """A dict's ``keys()`` keeps its insertion order, so it pairs with ``list(d.values())``; ``items()`` gives
    (key, value) pairs, which used to be stored as the ids ``"('k', 'v')"``."""
    docs = {"id-a": "alpha text", "id-b": "beta text", "id-c": "gamma text"}
    store = KLVectorStore(embeddings)
    assert store.add_texts(list(docs.values()), ids=docs.keys()) == list(docs)
    assert {d.id: d.page_content for d in store.get_by_ids(list(docs))} == docs
    with pytest.raises(TypeError, match=r"ids is a dict_items, whose items are a dict's \(key, value\) pairs"):
        store.add_texts(list(docs.values()), ids=cast(Any, docs.items()))


# ---------------------------------------------------------------- 2. hints and KLHybridRetriever.from_texts
@pytest.mark.parametrize(
    "method",
    [
        KLVectorStore.aadd_texts,
        KLVectorStore.from_texts,
        KLVectorStore.afrom_texts,
        KLVectorStore.from_embeddings,
        KLVectorStore.afrom_embeddings,
        KLRetriever.from_texts,
        KLHybridRetriever.from_texts,
    ],
)
def test_the_constructors_hints_say_any_iterable(method: Any) -> None:
    params = inspect.signature(method).parameters
    for name in ("texts", "metadatas", "ids"):
        if name in params:
            assert str(params[name].annotation).startswith("Iterable["), (method.__qualname__, name)


def test_from_texts_and_afrom_texts_take_generators(embeddings: KLEmbeddings) -> None:
    def gen(items: list[Any]) -> Iterator[Any]:
        yield from items

    store = KLVectorStore.from_texts(gen(TEXTS), embeddings, gen([{"n": 1}, {"n": 2}, {"n": 3}]), gen(["a", "b", "c"]))
    assert [d.metadata["n"] for d in store.get_by_ids(["a", "b", "c"])] == [1, 2, 3]
    store = asyncio.run(KLVectorStore.afrom_texts(gen(TEXTS), embeddings, None, gen(["x", "y", "z"])))
    assert [d.page_content for d in store.get_by_ids(["x", "y", "z"])] == TEXTS


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ids": {"a", "b", "c"}}, TypeError, r"ids is a set, whose iteration order is arbitrary.*pass a list"),
        ({"ids": ["a"]}, ValueError, r"got 1 ids for 3 texts; pass one per text"),
        ({"metadatas": {"n": 1}}, TypeError, r"metadatas must be an iterable of dicts.*got a single dict"),
        ({"metadatas": [{"n": 1}]}, ValueError, r"got 1 metadatas for 3 texts; pass one per text"),
        ({"ids": "abc"}, TypeError, r"ids must be an iterable of str.*got a single str: 'abc'"),
    ],
)
def test_hybrid_from_texts_checks_metadatas_and_ids_before_loading_a_model(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """They went to KLHybridStore.add unchecked, after the default model was loaded and the store built."""

    def no_model(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the default model was loaded before the arguments were checked")

    monkeypatch.setattr(lc, "_load_default_encoder", no_model)
    with pytest.raises(error, match=message):
        KLHybridRetriever.from_texts(TEXTS, None, **kwargs)


def test_hybrid_from_texts_takes_what_add_texts_takes(embeddings: KLEmbeddings) -> None:
    """A generator of ids with a ``None`` (a fresh uuid4 hex, as in add_texts) and a generator of metadatas."""
    retriever = KLHybridRetriever.from_texts(
        TEXTS, embeddings, (m for m in [{"n": 1}, None, {"n": 3}]), (i for i in ["a", None, "c"]), fusion="rrf"
    )
    ids = retriever.store.ids
    assert len(ids) == 3 and {"a", "c"} <= set(ids)
    fresh = next(i for i in ids if i not in ("a", "c"))
    assert len(fresh) == 32 and int(fresh, 16) >= 0
    assert [d.metadata for d in retriever.store.get_by_ids(["a", fresh, "c"])] == [{"n": 1}, {}, {"n": 3}]


# ---------------------------------------------------------------- 3. OnnxGaussianEncoder.to
@pytest.fixture(scope="module")
def onnx_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    root = tmp_path_factory.mktemp("onnx-to-r4")
    enc = make_tiny_encoder()
    return {
        "float32": OnnxGaussianEncoder(export_onnx(enc, root / "f32", quantize=None, verify=False)),
        "int8": OnnxGaussianEncoder(export_onnx(enc, root / "i8", quantize="int8", verify=False)),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.dtype("float32"), "float32", "torch.float16", float])
def test_onnx_to_reads_a_numpy_dtype_or_a_dtype_name_given_positionally_as_a_dtype(
    onnx_graphs: dict[str, Any], dtype: Any
) -> None:
    """They were taken as a device: "runs on cpu only; got device=dtype('float32')"."""
    enc = onnx_graphs["float32"]
    with pytest.raises(TypeError) as positional:
        enc.to(dtype)
    with pytest.raises(TypeError) as keyword:
        enc.to(dtype=dtype)
    assert str(positional.value) == str(keyword.value)
    assert "dtype must be a torch.dtype (e.g. torch.float32)" in str(positional.value)
    assert repr(dtype) in str(positional.value) and "device" not in str(positional.value)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        enc.to("cpu", dtype)


@pytest.mark.parametrize("graph", ["float32", "int8"])
def test_onnx_to_refuses_float16_with_advice_that_fits_the_graph(onnx_graphs: dict[str, Any], graph: str) -> None:
    """A float32 graph used to advise exporting with --quantize float32, which it already is."""
    import torch

    enc = onnx_graphs[graph]
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError) as info:
            enc.to(dtype)
        message = str(info.value)
        assert "precision is fixed by its graph" in message and f"got {dtype}" in message
        assert "--quantize float32" not in message
        assert "backend='torch'" in message and "no ONNX graph of that precision is offered" in message
        assert ("float32 weights, quantize=None" if graph == "float32" else "int8 weights, quantize='int8'") in message


def test_onnx_to_int8_on_a_float32_graph_names_the_int8_export(onnx_graphs: dict[str, Any]) -> None:
    import torch

    with pytest.raises(TypeError, match=r"got torch.int8: for int8 weights export another graph .*--quantize int8"):
        onnx_graphs["float32"].to(torch.int8)
    with pytest.raises(TypeError, match=r"got torch.int8: this graph's weights are already int8"):
        onnx_graphs["int8"].to(torch.int8)


@pytest.mark.parametrize("graph", ["float32", "int8"])
def test_onnx_to_accepts_torchs_no_op_memory_formats(onnx_graphs: dict[str, Any], graph: str) -> None:
    import torch

    enc = onnx_graphs[graph]
    assert enc.to(memory_format=torch.contiguous_format) is enc
    assert enc.to(memory_format=torch.preserve_format) is enc
    assert enc.to("cpu", torch.float32, memory_format=torch.contiguous_format) is enc
    for fmt in (torch.channels_last, torch.channels_last_3d):  # any torch.memory_format, as torch takes it
        assert enc.to(memory_format=fmt) is enc
    with pytest.raises(TypeError, match=r"memory_format must be a torch.memory_format .*got 'channels_last'"):
        enc.to(memory_format="channels_last")


def test_onnx_to_float32_is_a_no_op_on_an_int8_graph(onnx_graphs: dict[str, Any]) -> None:
    """The generic ``model.to("cpu", torch.float32)`` failed on the default (int8) graph, whose outputs are
    float32; its weights stay int8 (as torch leaves a dynamically quantised module's)."""
    import torch

    enc = onnx_graphs["int8"]
    before = enc.encode_documents(TEXTS)
    for call in (
        lambda: enc.to(torch.float32),
        lambda: enc.to("cpu", torch.float32),
        lambda: enc.to(dtype=torch.float32),
        lambda: enc.to(torch.zeros(2)),
        lambda: enc.to(torch.float),
    ):
        assert call() is enc
    assert enc.quantize == "int8" and enc.batch_invariant is False
    after = enc.encode_documents(TEXTS)
    assert after.mean.dtype == np.float32
    np.testing.assert_array_equal(after.mean, before.mean)
    np.testing.assert_array_equal(after.var, before.var)


def test_onnx_to_reads_non_blocking_as_torch_does(onnx_graphs: dict[str, Any]) -> None:
    """``to(True)`` silently returned self (torch refuses it); a positional and a keyword non_blocking were
    reported as "two devices"."""
    import torch

    enc = onnx_graphs["float32"]
    with pytest.raises(TypeError, match=r"got True, which is neither a device nor a dtype"):
        enc.to(True)
    with pytest.raises(TypeError, match=r"got False, which is neither a device nor a dtype"):
        enc.to(False, non_blocking=True)
    with pytest.raises(TypeError, match=r"non_blocking given twice, by position \(True\) and by keyword"):
        enc.to("cpu", torch.float32, True, non_blocking=True)
    with pytest.raises(TypeError, match=r"non_blocking given twice"):
        enc.to(torch.float32, False, non_blocking=False)
    with pytest.raises(TypeError, match=r"got True, which is neither a device nor a dtype, nor a non_blocking"):
        enc.to("cpu", True)  # torch reads no non_blocking after a device alone
    assert enc.to("cpu", torch.float32, True) is enc
    assert enc.to(torch.zeros(2), True) is enc
    with pytest.raises(TypeError, match=r"device= takes a device, not a tensor"):
        enc.to(device=torch.zeros(2))


# ---------------------------------------------------------------- 4-6. the pages
def _read(name: str) -> str:
    return " ".join((REPO / "docs" / name).read_text(encoding="utf-8").split())


def test_faq_cache_intro_says_which_folders_follow_kl_retrievers_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kl_retrievers.encoding_cache import CACHE_ENV
    from kl_retrievers.training.features import default_feature_cache_dir

    faq = _read("faq.md")
    section = faq.split("## Where are the caches, and how do I clear them?", 1)[1].split("| folder |", 1)[0]
    assert "each movable with its own variable" not in section
    assert "`features/` and `teacher/` have none: they follow `KL_RETRIEVERS_CACHE`" in section
    assert "train --cache-dir" in section
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "enc"))
    assert default_feature_cache_dir() == tmp_path / "enc" / "features"  # teacher/: its sibling (train's cache_root)


def test_langchain_page_states_the_date_filter_rules_the_code_follows(caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers.filters import compile_filter

    page = _read("langchain.md")
    assert "compares with the ISO string the store keeps" not in page
    for claim in (
        "timezone-aware datetimes as instants",
        "a naive datetime never equal to nor ordered with an aware one",
        "[Reliability](reliability.md#where-the-guarantees-live)",
        "its nested lists and dicts are copies",
    ):
        assert claim in page, claim
    assert "## Where the guarantees live" in (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    utc = datetime.timezone.utc
    aware, naive = (compile_filter({"t": datetime.datetime(2024, 1, 3, 1, tzinfo=tz)}) for tz in (utc, None))
    assert aware is not None and naive is not None
    assert aware({"t": "2024-01-02T20:00:00-05:00"})
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.filters"):
        assert not naive({"t": "2024-01-03T01:00:00+00:00"})
    assert "naive" in caplog.text


def test_langchain_page_says_search_reads_a_save_local_folder(embeddings: KLEmbeddings, tmp_path: Path) -> None:
    from kl_retrievers.cli import _kl_store_folder

    page = _read("langchain.md")
    assert "`kl-retrievers search` takes a `save_local` folder (or its `langchain.json`) as its store" in page
    store = KLVectorStore.from_texts(TEXTS, embeddings, ids=["a", "b", "c"])
    folder = store.save_local(tmp_path / "db")
    assert _kl_store_folder(folder) == folder / "klstore"
    assert _kl_store_folder(folder / "langchain.json") == folder / "klstore"
    store.save_local(tmp_path / "multi", index_name="news")
    with pytest.raises(ValueError, match=r"holds 1 LangChain KLVectorStore index .*pass .*news"):
        _kl_store_folder(tmp_path / "multi")


def test_onnx_page_documents_to_and_float32_on_every_graph() -> None:
    page = _read("onnx.md")
    assert "`torch.float32` is a no-op on every graph" in page
    assert "an int8 graph's weights stay int8" in page
    assert "`memory_format=torch.contiguous_format`" in page
