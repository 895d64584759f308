"""ONNX export and the ONNX Runtime encoder (tiny random encoders; a few exports per module)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kl_retrievers.pretrained as pretrained
from conftest import make_tiny_encoder, write_tiny_shared_backbone
from kl_retrievers import GaussianEncoder, load_default_model, load_model
from kl_retrievers.cli import main
from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError, export_onnx, is_onnx_folder
from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path, bundled_onnx_path, source_sha256

TEXTS = [
    "hello world",
    "",
    "the cat sat on the mat " * 30,  # truncated at every budget below
    "a dog",
    "green sun moon rock water sea star bread",
    "query",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[GaussianEncoder, Path]]:
    """Tiny encoders and their exports: float32 (two pooling set-ups) and int8."""
    root = tmp_path_factory.mktemp("onnx")
    cls_enc = make_tiny_encoder()
    mean_enc = make_tiny_encoder(pooling="mean", normalize_pooled=True, var_token=False, beta=5.0, seed=1)
    return {
        "cls-float32": (cls_enc, cls_enc.export_onnx(root / "cls-f32", quantize=None)),
        "mean-float32": (mean_enc, export_onnx(mean_enc, root / "mean-f32", quantize=None, verify=False)),
        "cls-int8": (cls_enc, cls_enc.export_onnx(root / "cls-i8", quantize="int8")),
    }


@pytest.mark.parametrize("which", ["cls-float32", "mean-float32"])
def test_float32_graph_equals_torch_with_padding_and_truncation(
    exported: dict[str, tuple[GaussianEncoder, Path]], which: str
) -> None:
    enc, folder = exported[which]
    onnx_enc = OnnxGaussianEncoder(folder)
    for max_length in (None, 8, 3):
        for kind in ("encode_documents", "encode_queries"):
            expected = getattr(enc, kind)(TEXTS, max_length=max_length, batch_size=4)
            got = getattr(onnx_enc, kind)(TEXTS, max_length=max_length, batch_size=4)
            assert got.mean.dtype == np.float32 and got.var.dtype == np.float32
            np.testing.assert_allclose(got.mean, expected.mean, atol=1e-5, rtol=0)
            np.testing.assert_allclose(got.var, expected.var, atol=1e-5, rtol=1e-5)
    # texts longer than the model's position embeddings are clamped as the torch encoder does
    long = ["water " * 400]
    np.testing.assert_allclose(
        onnx_enc.encode_documents(long, max_length=500).mean, enc.encode_documents(long, max_length=500).mean, atol=1e-5
    )


def test_int8_export_stays_close_to_float32(exported: dict[str, tuple[GaussianEncoder, Path]]) -> None:
    enc, folder = exported["cls-int8"]
    ref = enc.encode_documents(TEXTS)
    got = OnnxGaussianEncoder(folder).encode_documents(TEXTS)
    cosine = (got.mean * ref.mean).sum(1) / np.linalg.norm(got.mean, axis=1) / np.linalg.norm(ref.mean, axis=1)
    assert cosine.min() > 0.98, cosine
    assert np.abs(np.log(got.var / ref.var)).max() < 0.1
    assert not np.array_equal(got.mean, ref.mean)  # it is quantised
    int8_size = (folder / "model.onnx").stat().st_size
    assert int8_size < (exported["cls-float32"][1] / "model.onnx").stat().st_size


def test_export_writes_config_and_tokenizer(exported: dict[str, tuple[GaussianEncoder, Path]]) -> None:
    enc, folder = exported["cls-int8"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.onnx", "tokenizer.json"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["backend"] == "onnx" and meta["quantize"] == "int8"
    assert meta["score"] == {"name": "neg_kl", "direction": "higher_is_better"}
    assert meta["library"] == "kl_retrievers" and meta["library_version"]
    assert meta["outputs"] == ["mean", "var"]
    assert meta["onnx"]["dim"] == enc.config.dim == 8
    assert meta["onnx"]["max_length"] == 64 and meta["onnx"]["query_max_length"] == 32
    assert meta["onnx"]["encoder"] == enc.config.to_dict()
    assert meta["onnx"]["var_token_id"] == enc.var_token_id
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id("[VAR]") == enc.var_token_id
    with pytest.raises(ValueError, match="quantize must be one of"):
        enc.export_onnx(folder.parent / "bad", quantize="int4")  # type: ignore[arg-type]
    assert not (folder.parent / "bad").exists()


def test_onnx_encoder_interface(exported: dict[str, tuple[GaussianEncoder, Path]]) -> None:
    _, folder = exported["cls-float32"]
    enc = OnnxGaussianEncoder(folder, num_threads=1)
    assert enc.config.dim == 8 and enc.quantize is None and enc.name_or_path == str(folder)
    assert "OnnxGaussianEncoder" in repr(enc)
    one_by_one = enc.encode_documents(TEXTS, batch_size=1)
    together = enc.encode_documents(TEXTS, batch_size=32, show_progress_bar=False)
    np.testing.assert_allclose(one_by_one.mean, together.mean, atol=1e-5)  # input order is kept
    single = enc.encode_queries("hello world")
    assert single.mean.shape == (1, 8)
    empty = enc.encode_documents([])
    assert empty.mean.shape == (0, 8)
    assert enc.encode_queries(["x"], convert_to="torch").is_torch
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode_documents(["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        enc.encode_documents(["a"], max_length=2)
    with pytest.raises(ValueError, match="cpu only"):
        enc.encode_documents(["a"], device="cuda")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.encode_documents(["a", 3])  # type: ignore[list-item]


def test_load_model_exports_once_and_loads_onnx_folders(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exported: dict[str, tuple[GaussianEncoder, Path]],
) -> None:
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "cache"))
    enc = make_tiny_encoder(seed=3)
    saved = enc.save_pretrained(tmp_path / "model")
    first = load_model(str(saved), backend="onnx", quantize=None)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and is_onnx_folder(cached[0]) and "float32" in cached[0].name
    np.testing.assert_allclose(first.encode_queries(TEXTS).mean, enc.encode_queries(TEXTS).mean, atol=1e-5)
    stamp = (cached[0] / "model.onnx").stat().st_mtime_ns
    again = load_model(str(saved), backend="onnx", quantize=None)
    assert (cached[0] / "model.onnx").stat().st_mtime_ns == stamp and again.name_or_path == str(saved)
    # a folder that holds model.onnx loads as it is; the torch backend refuses it by name
    _, folder = exported["cls-float32"]
    direct = load_model(str(folder), backend="onnx")
    assert direct.config.dim == 8 and len(list((tmp_path / "cache").iterdir())) == 1
    assert isinstance(load_model(str(folder)), OnnxGaussianEncoder)  # the default backend for an ONNX folder
    with pytest.raises(ValueError, match="backend='onnx'"):
        load_model(str(folder), backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model(str(folder), backend="tensorrt")  # type: ignore[call-overload]  # the runtime check


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_a_graph_that_does_not_match_its_config_is_refused(
    tmp_path: Path, exported: dict[str, tuple[GaussianEncoder, Path]]
) -> None:
    import onnx

    folder = _copy(exported["cls-float32"][1], tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    meta["onnx"]["dim"] = 16
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(OnnxModelError, match=r"copy.*output 'mean' has shape.*config.json says \(batch, 16\)"):
        OnnxGaussianEncoder(folder)

    meta["onnx"]["dim"] = 8
    (folder / "config.json").write_text(json.dumps(meta))
    model = onnx.load(str(folder / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = ["variance" if o == "var" else o for o in node.output]
    for out in model.graph.output:
        if out.name == "var":
            out.name = "variance"
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(OnnxModelError, match=r"copy: the ONNX graph lacks output\(s\) \['var'\]"):
        OnnxGaussianEncoder(folder)

    (folder / "model.onnx").unlink()
    with pytest.raises(OnnxModelError, match="missing model.onnx"):
        OnnxGaussianEncoder(folder)
    torch_folder = make_tiny_encoder().save_pretrained(tmp_path / "torch")
    with pytest.raises(OnnxModelError, match="backend 'torch'"):
        OnnxGaussianEncoder(torch_folder)


def test_cli_encode_with_the_onnx_backend(tmp_path: Path, exported: dict[str, tuple[GaussianEncoder, Path]]) -> None:
    from kl_retrievers import load_gaussians

    enc, folder = exported["cls-float32"]
    out = tmp_path / "out.safetensors"
    code = main(
        ["encode", "hello world", "a dog", "--out", str(out), "--model", str(folder), "--model-backend", "onnx"]
    )
    assert code == 0
    g, _ = load_gaussians(out)
    np.testing.assert_allclose(g.mean, enc.encode_documents(["hello world", "a dog"]).mean, atol=1e-5)


def test_framework_embeddings_take_a_backend(exported: dict[str, tuple[GaussianEncoder, Path]]) -> None:
    from kl_retrievers.langchain import KLEmbeddings
    from kl_retrievers.llama_index import KLEmbedding

    enc, folder = exported["cls-float32"]
    embed = KLEmbedding(str(folder), backend="onnx")
    assert isinstance(embed.encoder, OnnxGaussianEncoder)
    np.testing.assert_allclose(
        embed.query_gaussians(["hello world"]).mean, enc.encode_queries(["hello world"]).mean, atol=1e-5
    )
    assert KLEmbeddings(backend="onnx").backend == "onnx"  # the default model loads lazily, on first use
    with pytest.raises(ValueError, match="backend must be one of"):
        KLEmbeddings(backend="tensorrt")  # type: ignore[arg-type]


def test_a_graph_that_is_not_the_one_its_config_names_is_refused(
    tmp_path: Path, exported: dict[str, tuple[GaussianEncoder, Path]]
) -> None:
    folder = _copy(exported["cls-int8"][1], tmp_path)
    float32 = exported["cls-float32"][1] / "model.onnx"
    shutil.copyfile(float32, folder / "model.onnx")  # a valid graph of the same shape, but not this export's
    with pytest.raises(OnnxModelError, match=r"copy: model.onnx has SHA-256 [0-9a-f]{64}, but config.json"):
        OnnxGaussianEncoder(folder)


def _run(code: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where torch and transformers cannot be imported (as in the core install).

    ``cache``: the ONNX export cache (``$KL_RETRIEVERS_ONNX_CACHE``), an empty folder under tmp_path.
    """
    prelude = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
    env = {**os.environ, "KL_RETRIEVERS_ONNX_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300, check=False, env=env
    )


def test_the_default_model_runs_from_its_shipped_graph_without_torch(tmp_path: Path) -> None:
    code = """
import sys
import kl_retrievers
enc = kl_retrievers.load_default_model()
g = enc.encode_documents(["Gaussian retrieval with -KL", "a second passage"])
q = kl_retrievers.load_model(None, backend="onnx").encode_queries("what is -KL?")
loaded = sys.modules.get("torch") is not None
print(type(enc).__name__, enc.quantize, g.mean.shape, q.mean.shape, loaded)
"""
    done = _run(code, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OnnxGaussianEncoder", "int8", "(2,", "384)", "(1,", "384)", "False"]
    assert not (tmp_path / "cache").exists()  # the shipped graph, not an export


def test_torch_paths_without_torch_name_the_extra(tmp_path: Path) -> None:
    code = """
import kl_retrievers
from kl_retrievers import load_model
for call in (lambda: load_model(backend="torch"), lambda: load_model("minilm-unit-variance"),
             lambda: load_model(None, backend="onnx", quantize=None),
             lambda: kl_retrievers.GaussianEncoder.from_pretrained("x"),
             lambda: kl_retrievers.load_model().encode_queries("x", convert_to="torch")):
    try:
        call()
    except ModuleNotFoundError as exc:
        print("ERROR", exc)
    else:
        print("LOADED")
"""
    done = _run(code, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5, done.stdout
    for line in lines:
        assert line.startswith("ERROR") and 'pip install "kl-retrievers[torch]"' in line, line
    assert "backend='torch' needs torch and transformers" in lines[0]
    assert "minilm-unit-variance ships no ONNX graph" in lines[1]
    assert "ships no float32 ONNX graph" in lines[2]


def test_the_shipped_graph_matches_the_bundled_model() -> None:
    folder = bundled_onnx_path(DEFAULT_MODEL)
    assert folder is not None and sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert (folder / "model.onnx").stat().st_size < 40e6  # every tracked file stays under 40 MB
    meta = json.loads((folder / "config.json").read_text())
    assert meta["quantize"] == "int8" and meta["int8_tables"] == ["enc.backbone.embeddings.word_embeddings.weight"]
    assert meta["source"]["sha256"] == source_sha256(bundled_model_path(DEFAULT_MODEL))
    assert meta["source"]["name_or_path"] == f"kl_retrievers:{DEFAULT_MODEL}"
    enc = load_default_model()
    assert isinstance(enc, OnnxGaussianEncoder) and enc.name_or_path == f"kl_retrievers:{DEFAULT_MODEL}"
    assert bundled_onnx_path("minilm-unit-variance") is None


def test_a_shipped_graph_left_behind_by_its_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pretrained"
    shutil.copytree(bundled_model_path(DEFAULT_MODEL), root / DEFAULT_MODEL)
    monkeypatch.setattr(pretrained, "_HERE", root)
    assert isinstance(load_model(), OnnxGaussianEncoder)
    cfg = root / DEFAULT_MODEL / "config.json"
    cfg.write_text(cfg.read_text().replace('"dim": 384', '"dim": 384 '))  # the model changed, its graph did not
    with pytest.raises(OnnxModelError, match=r"onnx-int8: config.json says the graph was exported from files"):
        load_model()


def test_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    assert pretrained.default_backend() == "onnx"
    assert pretrained.default_backend(DEFAULT_MODEL, device="cpu") == "onnx"
    assert pretrained.default_backend(device="cuda:0") == "torch"
    assert pretrained.default_backend("minilm-unit-variance") == "torch"  # no shipped graph; torch is installed
    monkeypatch.setattr(pretrained, "_cuda_available", lambda: True)
    assert pretrained.default_backend() == "torch"  # a CUDA GPU: torch, on it
    assert pretrained.default_backend(device="cpu") == "onnx"
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model(backend="tensorrt")  # type: ignore[call-overload]  # the runtime check


# ------------------------------------------------------------------------------ shared backbone graph + numpy heads
@pytest.fixture(scope="module")
def shared_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[GaussianEncoder, Path, Path]:
    """A tiny heads-only model folder and a float32 ONNX graph of its backbone (``last_hidden_state``)."""
    return write_tiny_shared_backbone(tmp_path_factory.mktemp("shared"))


@pytest.fixture
def tiny_shared_backbone(shared_tiny: tuple[GaussianEncoder, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.onnx_heads as onnx_heads
    from kl_retrievers.hub import sha256_file

    graph_dir = shared_tiny[2]
    backbone = onnx_heads.SharedBackbone(
        "tiny-bert", "0" * 64, sha256_file(graph_dir / "model.onnx"), "pip install tiny-graph", lambda: graph_dir
    )
    monkeypatch.setitem(onnx_heads.SHARED_BACKBONES, "tiny-bert", lambda: backbone)


@pytest.mark.usefixtures("tiny_shared_backbone")
def test_a_shared_backbone_encoder_named_by_a_relative_folder_records_it_absolute(
    shared_tiny: tuple[GaussianEncoder, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    model_dir = shared_tiny[1]
    monkeypatch.chdir(model_dir.parent)
    enc = OnnxHeadsGaussianEncoder(model_dir.name)
    assert enc.name_or_path == str(model_dir.resolve())  # not "model", which means another folder elsewhere
    assert OnnxHeadsGaussianEncoder(model_dir.name, name_or_path="mine").name_or_path == "mine"


@pytest.mark.usefixtures("tiny_shared_backbone")
def test_a_shared_backbone_graph_with_numpy_heads_equals_the_torch_encoder(
    shared_tiny: tuple[GaussianEncoder, Path, Path],
) -> None:
    from kl_retrievers.hub import sha256_file
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    enc, model_dir, _ = shared_tiny
    onnx_enc = OnnxHeadsGaussianEncoder(model_dir)
    assert onnx_enc.quantize == "int8" and onnx_enc.max_tokens == 128  # the shared graphs are int8 (this one not)
    assert onnx_enc.config.encoder["onnx_heads"]["delta_sha256"] == sha256_file(model_dir / "delta.safetensors")
    for max_length in (64, 8):  # padding, and truncation of the long text
        got = onnx_enc.encode_documents(TEXTS, max_length=max_length, batch_size=4)
        ref = enc.encode_documents(TEXTS, max_length=max_length)
        np.testing.assert_allclose(got.mean, ref.mean, atol=1e-4)
        np.testing.assert_allclose(got.var, ref.var, rtol=1e-4, atol=1e-6)
    assert not np.allclose(got.var, got.var[0])  # the variance head is not constant: a real check of it
    np.testing.assert_allclose(onnx_enc.encode_queries("a dog").mean, enc.encode_queries("a dog").mean, atol=1e-4)


@pytest.mark.usefixtures("tiny_shared_backbone")
def test_a_shared_graph_serves_only_frozen_heads_only_models_and_is_pinned(
    shared_tiny: tuple[GaussianEncoder, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import load_file, save_file

    import kl_retrievers.onnx_heads as onnx_heads

    _, model_dir, graph_dir = shared_tiny
    assert onnx_heads.shared_backbone_for(model_dir) is not None
    other = tmp_path / "lora"
    shutil.copytree(model_dir, other)
    delta = load_file(os.fspath(other / "delta.safetensors"))
    save_file({**delta, "backbone.x.lora_A": np.zeros((2, 2), np.float32)}, os.fspath(other / "delta.safetensors"))
    assert onnx_heads.shared_backbone_for(other) is None
    assert "fine-tuned" in onnx_heads.why_no_shared_graph(other)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["encoder"]["backbone_sha256"] = "1" * 64  # built on other weights
    (other / "config.json").write_text(json.dumps(cfg))
    shutil.copyfile(model_dir / "delta.safetensors", other / "delta.safetensors")
    assert onnx_heads.shared_backbone_for(other) is None
    assert "not those of the shared tiny-bert graph" in onnx_heads.why_no_shared_graph(other)
    with pytest.raises(OnnxModelError, match="no shared ONNX backbone graph serves this model"):
        onnx_heads.OnnxHeadsGaussianEncoder(other)
    wrong = tmp_path / "graph"
    wrong.mkdir()
    shutil.copyfile(graph_dir / "model.onnx", wrong / "model.onnx")
    with (wrong / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    pinned = onnx_heads.SHARED_BACKBONES["tiny-bert"]()
    monkeypatch.setitem(
        onnx_heads.SHARED_BACKBONES,
        "tiny-bert",
        lambda: onnx_heads.SharedBackbone(
            "tiny-bert", "0" * 64, pinned.graph_sha256, "pip install tiny", lambda: wrong
        ),
    )
    with pytest.raises(OnnxModelError, match=rf"SHA-256 [0-9a-f]{{64}}, but the pinned one has {pinned.graph_sha256}"):
        onnx_heads.OnnxHeadsGaussianEncoder(model_dir)


def test_numpy_heads_follow_torch_softplus_and_the_floor() -> None:
    import torch

    from kl_retrievers.onnx_heads import numpy_heads

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32) * 10
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    heads = {
        "mean_head.weight": rng.normal(size=(2, 4)).astype(np.float32),
        "mean_head.bias": rng.normal(size=2).astype(np.float32),
        "var_head.weight": rng.normal(size=(2, 4)).astype(np.float32),
        "var_head.bias": np.array([-1000.0, 12.0], np.float32),  # far below zero: the floor
    }
    for pooling in ("cls", "mean"):
        mean, var = numpy_heads(hidden, mask, heads, pooling=pooling, normalize_pooled=False, beta=2.0, var_floor=1e-3)
        h = torch.from_numpy(hidden)
        m = torch.from_numpy(mask).float()[:, :, None]
        pooled = h[:, 0] if pooling == "cls" else (h * m).sum(1) / m.sum(1)
        ref_mean = pooled @ torch.from_numpy(heads["mean_head.weight"]).T + torch.from_numpy(heads["mean_head.bias"])
        z = pooled @ torch.from_numpy(heads["var_head.weight"]).T + torch.from_numpy(heads["var_head.bias"])
        ref_var = torch.nn.functional.softplus(z, beta=2.0).clamp_min(1e-3)
        np.testing.assert_allclose(mean, ref_mean.numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(var, ref_var.numpy(), rtol=1e-5, atol=1e-6)
        assert (var[:, 0] == np.float32(1e-3)).all()
        assert pooling == "mean" or (2.0 * z[:, 1] > 20).any()  # torch's linear region above its threshold
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean'; got 'max'"):
        numpy_heads(hidden, mask, heads, pooling="max", normalize_pooled=False, beta=1.0, var_floor=1e-6)
