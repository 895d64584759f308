"""Saved score names and directions are checked on every load, and a float32 ``q~`` warns when it loses the variance.

1. docs/api.md says saved folders record the score (``"neg_kl"``, ``"higher_is_better"``) and refuse others; only
   ``KLStore`` did. A hybrid store's ``hybrid.json`` (its dense component too), the LangChain manifest, the
   LlamaIndex manifest, a saved encoder's and an ONNX export's ``config.json``, saved Gaussians (folder and
   ``.safetensors``) and an encoded-shards ``manifest.json`` loaded with another name or direction, without a
   word. Each now refuses it, naming the field, the value found and the value served; a file without the
   field (saved before it was recorded) still loads.
2. ``KLEmbeddings.decode_query`` (and LlamaIndex's ``query_embedding``) decoded a float32 ``q~`` silently with a
   variance 52% off; it now warns, naming the precision and saying to pass float64. A float64 ``q~`` decodes
   within float64 round-off, without a warning.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import HYBRID_TEXTS, make_tiny_encoder, random_gaussians
from kl_retrievers import Gaussians, KLStore, load_gaussians, save_gaussians
from kl_retrievers._config import NotAnEncoderError
from kl_retrievers.gaussian import kl_query_vectors

WRONG = [
    pytest.param({"name": "cosine"}, "name", "'cosine'", id="name"),
    pytest.param({"direction": "lower_is_better"}, "direction", "'lower_is_better'", id="direction"),
]


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _set_score(**values: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["score"].update(values)

    return change


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for key in keys:
            data.pop(key, None)

    return change


def _gaussian_store() -> KLStore:
    store = KLStore()
    store.add(gaussians=random_gaussians(4, 8, seed=1), ids=list("abcd"), texts=HYBRID_TEXTS[:4])
    return store


# ---------------------------------------------------------------- 1. the score each saved format records
@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=5)


def _hybrid_folder(root: Path) -> Path:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    store = KLHybridStore(fusion="rrf")
    store.add(HYBRID_TEXTS, gaussians=random_gaussians(len(HYBRID_TEXTS), 8, seed=2), ids=[f"h{i}" for i in range(6)])
    return store.save(root / "hybrid")


@pytest.mark.parametrize(("value", "key", "found"), WRONG)
def test_a_hybrid_store_with_another_score_is_refused(
    tmp_path: Path, value: dict[str, str], key: str, found: str
) -> None:
    from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

    folder = _hybrid_folder(tmp_path)
    _edit(folder / "hybrid.json", _set_score(**value))
    with pytest.raises(HybridFormatError, match=rf"field 'score\.{key}' is {found}; this library serves 'fused_rrf'"):
        KLHybridStore.load(folder)


def test_a_hybrid_store_with_another_dense_component_is_refused(tmp_path: Path) -> None:
    from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

    folder = _hybrid_folder(tmp_path)
    _edit(folder / "hybrid.json", lambda c: c["score"]["components"]["dense"].update(direction="lower_is_better"))
    with pytest.raises(HybridFormatError) as info:
        KLHybridStore.load(folder)
    assert "field 'score.components.dense.direction' is 'lower_is_better'" in str(info.value)
    assert "this library serves 'neg_kl' ('higher_is_better')" in str(info.value)


def test_a_hybrid_store_whose_score_names_another_fusion_mode_is_refused(tmp_path: Path) -> None:
    from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

    folder = _hybrid_folder(tmp_path)
    _edit(folder / "hybrid.json", _set_score(name="fused_convex"))  # the fusion section says rrf
    with pytest.raises(HybridFormatError, match="'fused_convex'; this library serves 'fused_rrf'"):
        KLHybridStore.load(folder)


def test_a_hybrid_store_without_a_score_record_still_loads(tmp_path: Path) -> None:
    from kl_retrievers.hybrid import KLHybridStore

    folder = _hybrid_folder(tmp_path)
    _edit(folder / "hybrid.json", _drop("score"))
    assert sorted(KLHybridStore.load(folder).ids) == [f"h{i}" for i in range(6)]


def _langchain_folder(root: Path, encoder: Any) -> Path:
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    store = KLVectorStore.from_texts(HYBRID_TEXTS[:3], KLEmbeddings(encoder), ids=["a", "b", "c"])
    return store.save_local(root / "lc")


@pytest.mark.parametrize("manifest", ["langchain.json", "klstore/langchain_manifest.json"])
@pytest.mark.parametrize(
    ("key", "value"), [("score_name", "cosine"), ("score_direction", "lower_is_better")], ids=["name", "direction"]
)
def test_a_langchain_folder_with_another_score_is_refused(
    tmp_path: Path, encoder: Any, manifest: str, key: str, value: str
) -> None:
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore, LangChainFormatError

    folder = _langchain_folder(tmp_path, encoder)
    _edit(folder / manifest, lambda m: m.update({key: value}))
    with pytest.raises(LangChainFormatError, match=rf"field '{key}' is '{value}'; this library serves 'neg_kl'"):
        KLVectorStore.load_local(folder, KLEmbeddings(encoder))


def test_a_langchain_folder_without_score_fields_still_loads(tmp_path: Path, encoder: Any) -> None:
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    folder = _langchain_folder(tmp_path, encoder)
    for manifest in ("langchain.json", "klstore/langchain_manifest.json"):
        _edit(folder / manifest, _drop("score_name", "score_direction"))
    assert len(KLVectorStore.load_local(folder, KLEmbeddings(encoder)).store) == 3


def _llama_manifest(root: Path) -> Path:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLVectorStore

    path = root / "storage" / "default__vector_store.json"
    KLVectorStore(_gaussian_store()).persist(str(path))
    return path


@pytest.mark.parametrize(
    ("key", "value"), [("score_name", "cosine"), ("score_direction", "lower_is_better")], ids=["name", "direction"]
)
def test_a_llama_index_manifest_with_another_score_is_refused(tmp_path: Path, key: str, value: str) -> None:
    from kl_retrievers.llama_index import KLVectorStore

    path = _llama_manifest(tmp_path)
    _edit(path, lambda m: m.update({key: value}))
    with pytest.raises(ValueError, match=rf"field '{key}' is '{value}'; this library serves 'neg_kl'"):
        KLVectorStore.from_persist_path(str(path))


def test_a_llama_index_manifest_without_score_fields_still_loads(tmp_path: Path) -> None:
    from kl_retrievers.llama_index import KLVectorStore

    path = _llama_manifest(tmp_path)
    _edit(path, _drop("score_name", "score_direction"))
    for inner in path.parent.glob("*/llama_index_manifest.json"):
        _edit(inner, _drop("score_name", "score_direction"))
    assert len(KLVectorStore.from_persist_path(str(path))._store) == 4


@pytest.mark.parametrize(("value", "key", "found"), WRONG)
def test_a_saved_encoder_with_another_score_is_refused(
    tmp_path: Path, encoder: Any, value: dict[str, str], key: str, found: str
) -> None:
    from kl_retrievers import GaussianEncoder

    encoder.save_pretrained(tmp_path / "enc")
    _edit(tmp_path / "enc" / "config.json", _set_score(**value))
    with pytest.raises(NotAnEncoderError, match=rf"field 'score\.{key}' is {found}; this library serves 'neg_kl'"):
        GaussianEncoder.from_pretrained(tmp_path / "enc")


def test_a_saved_encoder_without_a_score_record_still_loads(tmp_path: Path, encoder: Any) -> None:
    from kl_retrievers import GaussianEncoder

    encoder.save_pretrained(tmp_path / "enc")
    _edit(tmp_path / "enc" / "config.json", _drop("score"))
    assert GaussianEncoder.from_pretrained(tmp_path / "enc").config.dim == encoder.config.dim


def test_a_vector_twin_loads_with_its_own_score_or_the_old_neg_kl_and_refuses_another(tmp_path: Path) -> None:
    """A twin records its similarity; releases before 0.2.0 recorded neg_kl for every model, which still loads."""
    from kl_retrievers import GaussianEncoder

    twin = make_tiny_encoder(seed=3)
    twin.config.extra["training"] = {"recipe": {"similarity": "dot"}}
    twin.save_pretrained(tmp_path / "twin")
    cfg = tmp_path / "twin" / "config.json"
    assert GaussianEncoder.from_pretrained(tmp_path / "twin").config.extra["training"]["recipe"]["similarity"] == "dot"
    _edit(cfg, _set_score(name="neg_kl"))
    GaussianEncoder.from_pretrained(tmp_path / "twin")
    _edit(cfg, _set_score(name="cosine"))
    with pytest.raises(NotAnEncoderError, match="field 'score.name' is 'cosine'; this library serves 'dot'"):
        GaussianEncoder.from_pretrained(tmp_path / "twin")


@pytest.mark.parametrize(("value", "key", "found"), WRONG)
def test_an_onnx_export_with_another_score_is_refused(
    tmp_path: Path, encoder: Any, value: dict[str, str], key: str, found: str
) -> None:
    pytest.importorskip("onnxruntime")
    from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError, export_onnx

    folder = export_onnx(encoder, tmp_path / "onnx", quantize=None, verify=False)
    _edit(Path(folder) / "config.json", _set_score(**value))
    with pytest.raises(OnnxModelError, match=rf"field 'score\.{key}' is {found}; this library serves 'neg_kl'"):
        OnnxGaussianEncoder(folder)
    _edit(Path(folder) / "config.json", _drop("score"))
    assert OnnxGaussianEncoder(folder).config.dim == encoder.config.dim


@pytest.mark.parametrize(("value", "key", "found"), WRONG)
def test_saved_gaussians_with_another_score_are_refused(
    tmp_path: Path, value: dict[str, str], key: str, found: str
) -> None:
    folder = save_gaussians(tmp_path / "g", random_gaussians(3, 4))
    _edit(folder / "config.json", _set_score(**value))
    with pytest.raises(ValueError, match=rf"field 'score\.{key}' is {found}; this library serves 'neg_kl'"):
        load_gaussians(folder)
    _edit(folder / "config.json", _drop("score"))
    assert load_gaussians(folder)[0].mean.shape == (3, 4)


def test_a_safetensors_file_of_gaussians_with_another_score_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = save_gaussians(tmp_path / "g.safetensors", random_gaussians(3, 4))
    with safe_open(str(path), framework="np") as fh:
        header = dict(fh.metadata() or {})
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    config = json.loads(header["config"])
    config["score"]["direction"] = "lower_is_better"
    save_file(tensors, str(path), metadata={**header, "config": json.dumps(config)})
    with pytest.raises(ValueError, match="field 'score.direction' is 'lower_is_better'"):
        load_gaussians(path)


@pytest.mark.parametrize(("value", "key", "found"), WRONG)
def test_encoded_shards_with_another_score_are_refused(
    tmp_path: Path, encoder: Any, value: dict[str, str], key: str, found: str
) -> None:
    from kl_retrievers.sharded import encode_corpus, load_encoded

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(HYBRID_TEXTS)))
    out = tmp_path / "shards"
    encode_corpus(corpus, out, encoder=encoder, shard_size=4, show_progress_bar=False)
    _edit(out / "manifest.json", _set_score(**value))
    with pytest.raises(ValueError, match=rf"field 'score\.{key}' is {found}; this library serves 'neg_kl'"):
        load_encoded(out)
    _edit(out / "manifest.json", _drop("score"))
    assert load_encoded(out)[1] == [f"d{i}" for i in range(len(HYBRID_TEXTS))]


def test_a_score_that_is_not_an_object_is_refused() -> None:
    from kl_retrievers._score import check_score

    with pytest.raises(ValueError, match="field 'score' must be a JSON object; got 'neg_kl'"):
        check_score({"score": "neg_kl"}, "x.json")


# ---------------------------------------------------------------- 2. decoding q~
def _query(dtype: type) -> tuple[Gaussians, list[float]]:
    """A query whose variances are small beside its squared means (|mu| up to 100, var down to 1e-4)."""
    rng = np.random.default_rng(0)
    k = 32
    mean = rng.choice([-1, 1], size=(1, k)) * rng.uniform(10, 100, size=(1, k))
    var = np.exp(rng.uniform(np.log(1e-4), np.log(1e4), size=(1, k)))
    g = Gaussians(mean.astype(dtype), var.astype(dtype))
    return g, np.asarray(kl_query_vectors(g), dtype=np.float64)[0].tolist()


def _precision_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if "q~ query vector came" in str(w.message)]


def test_a_float64_q_decodes_within_round_off_without_a_warning() -> None:
    from kl_retrievers.langchain import KLEmbeddings

    g, vector = _query(np.float64)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        back = KLEmbeddings.decode_query(vector)
    assert _precision_warnings(seen) == []
    np.testing.assert_array_equal(back.mean, g.mean)
    np.testing.assert_allclose(back.var, g.var, rtol=1e-7)


def test_a_float32_q_that_loses_the_variance_warns_naming_float32() -> None:
    from kl_retrievers.langchain import KLEmbeddings

    _, vector = _query(np.float32)  # float32 numbers in a list of Python floats
    with pytest.warns(UserWarning, match="q~ query vector came as float32 numbers") as seen:
        KLEmbeddings.decode_query(vector)
    message = _precision_warnings(list(seen))[0]
    assert "Pass the q~ in float64" in message and "more than its own value" in message
    array = np.asarray(kl_query_vectors(_query(np.float32)[0]))[0]
    assert array.dtype == np.float32
    with pytest.warns(UserWarning, match="came as a float32 array"):
        KLEmbeddings.decode_query(array)


def test_a_float32_q_whose_variance_survives_decodes_without_a_warning() -> None:
    from kl_retrievers.langchain import KLEmbeddings

    g = random_gaussians(1, 16, seed=4, dtype=np.float32)  # |mu| ~ 1, var ~ 1: float32 keeps var to ~1e-7
    vector = np.asarray(kl_query_vectors(g))[0]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        back = KLEmbeddings.decode_query(vector)
    assert _precision_warnings(seen) == []
    np.testing.assert_allclose(back.var, g.var, rtol=1e-5)


def test_a_float32_q_that_decodes_to_a_negative_variance_names_the_precision() -> None:
    from kl_retrievers.langchain import KLEmbeddings

    vector: Any = np.array([1.0, 999_990.0, 1000.0], dtype=np.float32)  # a float32 array, as LangChain may pass
    with pytest.raises(ValueError, match="smaller than mu_q\\^2; it came as a float32 array"):
        KLEmbeddings.decode_query(vector)


def test_a_llama_index_query_embedding_in_float32_warns_too() -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import query_gaussians_from_embeddings

    _, vector64 = _query(np.float64)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        query_gaussians_from_embeddings(vector64)
    assert _precision_warnings(seen) == []
    _, vector32 = _query(np.float32)
    with pytest.warns(UserWarning, match="query_embedding q~.*came as float32 numbers"):
        query_gaussians_from_embeddings(vector32)
    with pytest.raises(ValueError, match="variance <= 0.*it came as a float32 array"):
        query_gaussians_from_embeddings(np.array([1.0, 999_990.0, 1000.0], dtype=np.float32))


def test_a_llama_index_query_by_a_float32_embedding_warns() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from kl_retrievers.llama_index import KLVectorStore

    rng = np.random.default_rng(1)
    docs = Gaussians(rng.uniform(10, 100, size=(4, 32)), np.exp(rng.uniform(-9, 9, size=(4, 32))))
    store = KLStore()
    store.add(gaussians=docs, ids=list("abcd"), texts=list("abcd"))
    _, vector32 = _query(np.float32)
    with pytest.warns(UserWarning, match="came as float32 numbers"):
        result = KLVectorStore(store).query(VectorStoreQuery(query_embedding=vector32, similarity_top_k=2))
    assert len(result.ids or []) == 2
