"""The ONNX export cache of ``load_model(..., backend="onnx")`` and ONNX graphs with external data.

- A cache entry holding another model's export is named as such (not "the model changed"), with no command that
  the CLI would refuse; it is exported again in place. The command a stale shipped ``onnx-int8/`` names works.
- A cache hit hashes the source folder once (the entry's name and its check share one hash).
- Weights kept outside ``model.onnx`` (ONNX external data) are pinned like ``model.onnx``: an edited external-data
  file is refused on load (and a cache entry holding one is exported again), as an edited graph file is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import kl_retrievers.hub as hub
import kl_retrievers.onnx as onnx_module
import kl_retrievers.pretrained as pretrained
from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers.hub import sha256_file
from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError, export_onnx
from kl_retrievers.onnx_cli import main as onnx_cli

QUERY = ["hello world"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(folder))
    return folder


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 export of a tiny encoder, exported once for the module: copy it before changing it."""
    root = tmp_path_factory.mktemp("f2-export")
    source = make_tiny_encoder(dim=6, seed=5).save_pretrained(root / "encoder")
    digest = pretrained.source_sha256(source)
    return export_onnx(
        GaussianEncoder.from_pretrained(source), root / "export", quantize=None, verify=False, source_sha256=digest
    )


def _copy(plain_export: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(plain_export, tmp_path / "export"))


def _load(folder: Path) -> Any:
    return load_model(os.fspath(folder), backend="onnx", quantize=None)


def _count_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []
    real = onnx_module._export_onnx  # load_model imports it from the module when it exports

    def counting(encoder: Any, folder: Any, **kwargs: Any) -> Path:
        made.append(Path(folder))
        return real(encoder, folder, **kwargs)

    monkeypatch.setattr(onnx_module, "_export_onnx", counting)
    return made


def _to_external_data(folder: Path, location: str = "model.onnx.data", *, pin: bool = True) -> Path:
    """Re-save ``folder``'s graph with its weights as external data at ``location``; pin the new graph's SHA-256
    (and, with ``pin``, the external-data file's) in ``config.json``, as a user converting an export would."""
    import onnx

    graph = onnx.load(os.fspath(folder / "model.onnx"))
    onnx.save_model(
        graph,
        os.fspath(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["onnx"]["model_sha256"] = sha256_file(folder / "model.onnx")
    if pin:
        config["onnx"]["external_data_sha256"] = {location: sha256_file(folder / location)}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder / location


def _scale(data_file: Path, factor: float = 1.5) -> None:
    """Other weights, same size, same graph file."""
    values = np.frombuffer(data_file.read_bytes(), dtype=np.float32) * factor
    data_file.write_bytes(values.tobytes())


# ------------------------------------------------------------------ 1. another model's export at a cache entry
def test_a_foreign_export_at_a_cache_entry_is_named_as_such_and_replaced(
    tmp_path: Path, cache: Path, plain_export: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    b = make_tiny_encoder(dim=6, seed=2).save_pretrained(tmp_path / "B")
    want = _load(b).encode_queries(QUERY).mean
    (entry,) = list(cache.iterdir())
    shutil.rmtree(entry)
    shutil.copytree(plain_export, entry)  # another model's export copied to B's entry
    made = _count_exports(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        got = _load(b)
    np.testing.assert_allclose(got.encode_queries(QUERY).mean, want, rtol=1e-5, atol=1e-6)
    assert made == [entry]  # exported again, in place
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    (warning,) = [w for w in warnings if os.fspath(entry) in w]
    assert f"the ONNX cache entry {entry} is not an export of {b}" in warning
    assert json.loads((plain_export / "config.json").read_text(encoding="utf-8"))["source"]["sha256"] in warning
    assert "exporting" in warning and "into it again" in warning
    assert "model changed" not in warning and "does not load" not in warning
    assert "onnx_cli" not in warning  # no command to run: the load itself replaces the entry
    source = json.loads((entry / "config.json").read_text(encoding="utf-8"))["source"]
    assert source["sha256"] == pretrained.source_sha256(b)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        _load(b)
    assert made == [entry] and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_command_a_stale_shipped_graph_names_is_accepted_and_works(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's folder shipping an ``onnx-int8/`` of other files: the warning's command regenerates it."""
    folder = tmp_path / "my-enc"
    encoder = make_tiny_encoder(dim=6, seed=3)
    encoder.save_pretrained(folder)
    other = tmp_path / "other"
    make_tiny_encoder(dim=6, seed=4).save_pretrained(other)
    export_onnx(
        GaussianEncoder.from_pretrained(other), folder / "onnx-int8", source_sha256=pretrained.source_sha256(other)
    )
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        loaded = load_model(os.fspath(folder), backend="onnx", quantize="int8")
    assert loaded.path != folder / "onnx-int8"  # not used: exported into the cache instead
    (warning,) = [r.getMessage() for r in caplog.records if "not using" in r.getMessage()]
    assert "or the graph is another model's export" in warning
    command = warning.split("; run ", 1)[1]
    prefix = "python -m kl_retrievers.onnx_cli "
    assert command.startswith(prefix)
    assert onnx_cli(command.removeprefix(prefix).split()) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        regenerated = load_model(os.fspath(folder), backend="onnx", quantize="int8")
    assert regenerated.path == folder / "onnx-int8" and not caplog.records


# ------------------------------------------------------------------ 2. a load hashes the source folder once
def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each file is read for :func:`kl_retrievers.hub.source_sha256` (its digests forgotten first)."""
    reads: Counter[str] = Counter()
    real = hub._hash_file_into

    def counting(h: Any, file: Path) -> None:
        reads[os.fspath(file)] += 1
        real(h, file)

    hub._source_digest.cache_clear()
    monkeypatch.setattr(hub, "_hash_file_into", counting)
    return reads


def test_a_cache_hit_hashes_the_source_folder_once(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = make_tiny_encoder(dim=6, seed=2).save_pretrained(tmp_path / "B")
    want = _load(b).encode_queries(QUERY).mean  # a miss: exported
    hashed: list[Path] = []
    real = hub.source_sha256

    def counting(folder: Any, recipe: str = "") -> str:
        hashed.append(Path(folder))
        return real(folder, recipe)

    for module in (hub, pretrained):  # pretrained imports the name; onnx imports it from hub when it needs it
        monkeypatch.setattr(module, "source_sha256", counting)
    reads = _count_reads(monkeypatch)
    made = _count_exports(monkeypatch)
    got = _load(b)
    assert made == []  # a hit
    assert hashed == [b]  # one hash: the entry's name and its check share it
    files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert reads == Counter({os.fspath(b / name): 1 for name in files})
    np.testing.assert_allclose(got.encode_queries(QUERY).mean, want, rtol=1e-5, atol=1e-6)
    assert got.meta["source"]["sha256"] == real(b)  # what the miss exported records the files' hash


def test_a_bundled_models_shipped_graph_reads_its_source_files_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its weights identity (onnx.py) and its freshness check (pretrained) each hash the bundled folder."""
    reads = _count_reads(monkeypatch)
    loaded = load_model(pretrained.DEFAULT_MODEL, backend="onnx")
    folder = pretrained.bundled_model_path(pretrained.DEFAULT_MODEL)
    assert loaded.path == folder / "onnx-int8" and loaded.weights_sha256 is not None
    assert reads and set(reads.values()) == {1}, reads
    assert {Path(file).parent for file in reads} == {folder}


def test_a_source_file_changed_since_it_was_hashed_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its digest kept (the folder aged past the 2 s in which none is kept), then an in-place edit of the same
    size with its modification time put back: only the status-change time tells, and the file is read again."""
    folder = make_tiny_encoder(dim=6, seed=2).save_pretrained(tmp_path / "B")
    reads = _count_reads(monkeypatch)
    monkeypatch.setattr(hub, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + 10 * 10**9))  # aged 10 s
    before = hub.source_sha256(folder)
    assert hub.source_sha256(folder) == before and reads[os.fspath(folder / "config.json")] == 1  # kept
    config = folder / "config.json"
    info = config.stat()
    text = config.read_text(encoding="utf-8")
    assert '"dim": 6' in text
    config.write_text(text.replace('"dim": 6', '"dim": 7'), encoding="utf-8")  # same size, in place
    os.utime(config, ns=(info.st_atime_ns, info.st_mtime_ns))  # modification time put back: still seen
    edited = config.stat()  # only its status-change time differs
    assert (edited.st_size, edited.st_mtime_ns, edited.st_ino) == (info.st_size, info.st_mtime_ns, info.st_ino)
    after = hub.source_sha256(folder)
    assert after != before and reads[os.fspath(folder / "config.json")] == 2
    hub._source_digest.cache_clear()
    assert hub.source_sha256(folder) == after


# ------------------------------------------------------------------ 3. external data is pinned as model.onnx is
def test_an_edited_external_data_file_is_refused_as_an_edited_graph_is(tmp_path: Path, plain_export: Path) -> None:
    folder = _copy(plain_export, tmp_path)
    want = OnnxGaussianEncoder(folder).encode_queries(QUERY).mean
    data = _to_external_data(folder)
    loaded = OnnxGaussianEncoder(folder)
    np.testing.assert_allclose(loaded.encode_queries(QUERY).mean, want, rtol=1e-5, atol=1e-6)
    assert loaded.config.external_data_sha256 == {"model.onnx.data": sha256_file(data)}

    original = data.read_bytes()
    _scale(data)
    for load in (lambda: OnnxGaussianEncoder(folder), lambda: load_model(os.fspath(folder), backend="onnx")):
        with pytest.raises(OnnxModelError, match="external-data files of model.onnx have SHA-256") as info:
            load()
        assert "onnx.external_data_sha256" in str(info.value) and "not the ones its config describes" in str(info.value)
    data.write_bytes(original)
    import onnx

    graph = onnx.load(os.fspath(folder / "model.onnx"), load_external_data=False)
    graph.doc_string = "edited"  # the graph file edited (the same external data): refused alike
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    with pytest.raises(OnnxModelError, match="not the one its config describes"):
        OnnxGaussianEncoder(folder)


def test_external_data_not_pinned_beside_a_pinned_graph_is_refused_with_the_pin_to_add(
    tmp_path: Path, plain_export: Path
) -> None:
    folder = _copy(plain_export, tmp_path)
    data = _to_external_data(folder, "data.bin", pin=False)
    with pytest.raises(OnnxModelError, match="does not pin") as info:
        OnnxGaussianEncoder(folder)
    message = str(info.value)
    pin = json.loads(message[message.index("{") : message.rindex("}") + 1])
    assert pin == {"external_data_sha256": {"data.bin": sha256_file(data)}}
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["onnx"].update(pin)  # what the message says to do
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert OnnxGaussianEncoder(folder).config.external_data_sha256 == pin["external_data_sha256"]


@pytest.mark.parametrize("value", [["data.bin"], {"data.bin": "not a sha"}, {"": "0" * 64}, "x"])
def test_a_malformed_external_data_pin_is_refused_naming_the_field(
    tmp_path: Path, plain_export: Path, value: object
) -> None:
    folder = _copy(plain_export, tmp_path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["onnx"]["external_data_sha256"] = value
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(OnnxModelError, match=r"field 'onnx\.external_data_sha256' must be an object"):
        OnnxGaussianEncoder(folder)


def test_a_cache_entry_whose_external_data_was_edited_is_exported_again(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    b = make_tiny_encoder(dim=6, seed=2).save_pretrained(tmp_path / "B")
    want = _load(b).encode_queries(QUERY).mean
    (entry,) = list(cache.iterdir())
    data = _to_external_data(entry)
    made = _count_exports(monkeypatch)
    np.testing.assert_allclose(_load(b).encode_queries(QUERY).mean, want, rtol=1e-5, atol=1e-6)
    assert made == []  # pinned external data that matches: a hit
    _scale(data)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        got = _load(b)
    assert made == [entry]  # as for an edited model.onnx: the entry does not load, and is exported again
    assert any("does not load" in r.getMessage() and "external-data" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(got.encode_queries(QUERY).mean, want, rtol=1e-5, atol=1e-6)
    assert not data.exists()


def test_an_export_whose_graph_has_external_data_pins_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph too big for one file (over 2 GB) keeps its weights outside model.onnx: the export pins them."""
    import onnx

    real = onnx_module._fused_graph

    def external(encoder: Any, traced: Path, target: Path, tokenizer_json: str) -> tuple[Path, bool]:
        path, fused = real(encoder, traced, target, tokenizer_json)
        onnx.save_model(
            onnx.load(os.fspath(path)),
            os.fspath(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
            size_threshold=0,
        )
        return target, fused

    monkeypatch.setattr(onnx_module, "_fused_graph", external)
    folder = export_onnx(make_tiny_encoder(dim=6, seed=5), tmp_path / "export", quantize=None)
    data = folder / "model.onnx.data"
    recorded = json.loads((folder / "config.json").read_text(encoding="utf-8"))["onnx"]["external_data_sha256"]
    assert recorded == {"model.onnx.data": sha256_file(data)}
    OnnxGaussianEncoder(folder).encode_queries(QUERY)
    _scale(data)
    with pytest.raises(OnnxModelError, match="external-data files"):
        OnnxGaussianEncoder(folder)
