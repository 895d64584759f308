"""``kl-retrievers evaluate --model`` with every encoding cached loads no model.

The model's files are fingerprinted without loading it (``encoding_cache.files_fingerprint``: every file of
the model folder, the backend and its session options, the packages that load it); a run that loads the
model records which model fingerprint those files are, and its encodings are keyed by that model. A second
run on the same collection finds both sides through that record, does not call ``load_model`` and reports
exactly what the first did. Any change in the files or settings (a weight byte, the backend, an ONNX session
option) is a files miss: the model is loaded, as before; the encodings are then those of the model it loads,
so a run differing only in ONNX session options or package versions shares the first run's encodings (the
same model), while a change of the token budget is a miss of the encodings themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import kl_retrievers.pretrained as pretrained
from conftest import make_tiny_encoder, write_tiny_beir
from kl_retrievers.cli import main

_REAL_LOAD_MODEL = pretrained.load_model
#: What differs between two runs of the same evaluation: how long its parts took.
_TIMINGS = ("encode_s", "retrieve_s", "seconds", "qpp_seconds")


class _Loaded(RuntimeError):
    """Raised by the fake load_model: the run needed the model."""


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``load_model`` replaced by one that records its call and stops the run (the command then fails)."""
    calls: list[Any] = []

    def fake(name_or_path: Any = None, **kwargs: Any) -> Any:
        calls.append(name_or_path)
        raise _Loaded(f"load_model({name_or_path!r}) was called")

    monkeypatch.setattr(pretrained, "load_model", fake)
    return calls


def _argv(model: Path, data: Path, cache: Path, *extra: str) -> list[str]:
    return ["evaluate", str(data), "--model", str(model), "--cache-dir", str(cache), "--no-progress", "--json", *extra]


def _record(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    record = json.loads(capsys.readouterr().out)
    return {k: v for k, v in record.items() if k not in _TIMINGS}


def _first_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run once with the real model (it encodes and fills the cache); its record without timings."""
    assert main(argv) == 0
    return _record(capsys)


def _with_real_loader(run: Any) -> Any:
    """Call ``run`` with the real load_model in place of the ``loads`` fixture's fake, then put the fake back."""
    fake = pretrained.load_model
    pretrained.load_model = _REAL_LOAD_MODEL
    try:
        return run()
    finally:
        pretrained.load_model = fake


def _needs_the_model(argv: list[str], loads: list[Any]) -> bool:
    """Whether the run called load_model (a miss) rather than finishing from the cache."""
    before = len(loads)
    assert main(argv) != 0  # the fake load_model stops it
    return len(loads) == before + 1


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A saved tiny torch encoder, the tiny BEIR collection and an empty cache folder."""
    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    return tmp_path / "model", write_tiny_beir(tmp_path / "data"), tmp_path / "cache"


def test_a_fully_cached_run_loads_no_model_and_reports_the_same(
    world: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, cache = world
    pq1, pq2 = tmp_path / "pq1.json", tmp_path / "pq2.json"
    first = _first_run([*_argv(model, data, cache), "--per-query", str(pq1)], capsys)
    assert first["backend"] == "torch" and first["weights_sha256"]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("every encoding is cached: the model must not be loaded")

    monkeypatch.setattr(pretrained, "load_model", refuse)
    assert main([*_argv(model, data, cache), "--per-query", str(pq2)]) == 0
    second = _record(capsys)
    assert second == first  # metrics, model label, backend, weights, QPP: all as the run that loaded the model
    rows1 = json.loads(pq1.read_text(encoding="utf-8"))
    rows2 = json.loads(pq2.read_text(encoding="utf-8"))
    assert rows1["per_query"] == rows2["per_query"]


def test_a_changed_weight_byte_misses(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    model, data, cache = world
    _with_real_loader(lambda: _first_run(_argv(model, data, cache), capsys))
    assert main(_argv(model, data, cache)) == 0 and loads == []  # unchanged: a hit
    capsys.readouterr()
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # one bit of the last tensor's last byte
    weights.write_bytes(bytes(blob))
    assert _needs_the_model(_argv(model, data, cache), loads)


def test_another_token_budget_misses(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    model, data, cache = world
    _with_real_loader(lambda: _first_run(_argv(model, data, cache), capsys))
    assert main(_argv(model, data, cache)) == 0 and loads == []
    capsys.readouterr()
    assert _needs_the_model(_argv(model, data, cache, "--max-length", "16"), loads)
    assert _needs_the_model(_argv(model, data, cache, "--query-max-length", "8"), loads)


def test_another_backend_misses(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    model, data, cache = world
    _with_real_loader(lambda: _first_run(_argv(model, data, cache), capsys))
    assert main(_argv(model, data, cache)) == 0 and loads == []
    capsys.readouterr()
    assert _needs_the_model(_argv(model, data, cache, "--model-backend", "onnx"), loads)


def test_an_onnx_graph_is_found_by_its_files_and_its_session_options_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    graph, data, cache = tmp_path / "graph", write_tiny_beir(tmp_path / "data"), tmp_path / "cache"
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")
    enc.export_onnx(graph, quantize="int8")
    argv = _argv(graph, data, cache, "--model-backend", "onnx")
    first = _with_real_loader(lambda: _first_run(argv, capsys))
    assert first["backend"] == "onnx-int8"
    assert main(argv) == 0 and loads == []
    assert _record(capsys) == first
    assert _needs_the_model([*argv, "--model-threads", "1"], loads)
    assert _needs_the_model([*argv, "--batch-size", "2"], loads)  # an int8 graph's encodings depend on the batch


def test_a_model_that_is_not_what_its_files_say_is_not_keyed_by_them(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Facts read from the files are checked against the loaded model before anything is cached under them."""
    import dataclasses

    import kl_retrievers.evaluate_cli as evaluate_cli

    model, data, cache = world
    real = evaluate_cli._files_plan

    def wrong(*args: Any, **kwargs: Any) -> Any:
        plan = real(*args, **kwargs)
        assert plan is not None, "a saved torch folder is known by its files"
        return dataclasses.replace(plan, facts=dataclasses.replace(plan.facts, similarity="dot"))

    monkeypatch.setattr(evaluate_cli, "_files_plan", wrong)
    first = _first_run(_argv(model, data, cache), capsys)
    assert first["score"] == "neg_kl"  # the loaded model's, not what the (wrong) files plan said
    loads: list[Any] = []
    real_load = pretrained.load_model

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", counting)
    assert _first_run(_argv(model, data, cache), capsys) == first
    assert len(loads) == 1  # nothing was keyed by the files: the model is loaded again


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_default_bundled_model_is_found_by_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """By bundled name, on torch (a delta folder whose backbone its config pins) and on its shipped int8 graph."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, cache = write_tiny_beir(tmp_path / "data"), tmp_path / "cache"
    argv = ["evaluate", str(data), "--model", "minilm-gauss-soup", "--model-backend", backend]
    argv += ["--cache-dir", str(cache), "--no-progress", "--json"]
    first = _first_run(argv, capsys)
    assert first["model"] == "kl_retrievers:minilm-gauss-soup"
    loads: list[Any] = []
    monkeypatch.setattr(pretrained, "load_model", lambda *a, **k: loads.append(a))
    assert main(argv) == 0 and loads == []
    assert _record(capsys) == first


# --------------------------------------------------------------------------------------------------------------------
# What the files key must also follow: a delta folder's backbone, files in sub-folders; and whom it shares entries with
# --------------------------------------------------------------------------------------------------------------------


def _delta_world(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A delta folder (``delta.safetensors``) on a saved tiny backbone its config pins, the tiny BEIR collection and
    an empty cache folder: ``(delta, backbone, data, cache)``."""
    import torch

    from kl_retrievers.encoder import GaussianEncoder

    base = tmp_path / "base"
    tiny = make_tiny_encoder(seed=0)
    tiny.backbone.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    enc = GaussianEncoder.from_backbone(str(base), dim=8, max_length=64, query_max_length=32)
    with torch.no_grad():
        enc.mean_head.weight.add_(0.1)
    enc.save_pretrained(tmp_path / "delta", include_backbone=False)
    assert (tmp_path / "delta" / "delta.safetensors").is_file() and enc.config.backbone_sha256
    return tmp_path / "delta", base, write_tiny_beir(tmp_path / "data"), tmp_path / "cache"


def test_a_delta_folder_whose_backbone_config_changed_misses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backbone's config.json (its activation, a norm's epsilon) sets the output as much as the weights it pins."""
    delta, base, data, cache = _delta_world(tmp_path)
    first = _first_run(_argv(delta, data, cache), capsys)
    loads: list[Any] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(args)
        return _REAL_LOAD_MODEL(*args, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", counting)
    assert _first_run(_argv(delta, data, cache), capsys) == first and loads == []  # unchanged: a hit
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config.update(hidden_act="relu", layer_norm_eps=0.5)
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    second = _first_run(_argv(delta, data, cache), capsys)
    assert len(loads) == 1  # the files key missed: the model was loaded
    truth = _first_run(_argv(delta, data, cache, "--no-cache"), capsys)
    assert second == truth != first  # and the model's own key missed too: encoded anew


def test_model_fingerprint_follows_the_backbone_config(tmp_path: Path) -> None:
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.encoding_cache import _legacy_fingerprint, model_fingerprint

    delta, base, _, _ = _delta_world(tmp_path)
    before = GaussianEncoder.from_pretrained(delta)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["hidden_act"] = "relu"
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    after = GaussianEncoder.from_pretrained(delta)
    assert model_fingerprint(before) != model_fingerprint(after)
    # the fingerprint before the backbone config counted, which sharded encodings' manifests still accept
    assert _legacy_fingerprint(before) == _legacy_fingerprint(after) != model_fingerprint(before)
    # the same model loaded by another path (its backbone's _name_or_path differs) keeps its fingerprint
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in delta.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert model_fingerprint(GaussianEncoder.from_pretrained(copy)) == model_fingerprint(after)


def test_a_swapped_pinned_backbone_misses(tmp_path: Path, capsys: pytest.CaptureFixture[str], loads: list[Any]) -> None:
    """Backbone weights rewritten (no longer what the delta pins) are a miss: the load then refuses them."""
    delta, base, data, cache = _delta_world(tmp_path)
    _with_real_loader(lambda: _first_run(_argv(delta, data, cache), capsys))
    assert main(_argv(delta, data, cache)) == 0 and loads == []
    capsys.readouterr()
    make_tiny_encoder(seed=1).backbone.save_pretrained(base)
    assert _needs_the_model(_argv(delta, data, cache), loads)


def test_a_file_in_a_sub_folder_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str], loads: list[Any]) -> None:
    """An ONNX graph whose weights are external data in a sub-folder (data/weights.bin): editing them is a miss."""
    import numpy as np
    import onnx

    from kl_retrievers.hub import sha256_file

    graph, data, cache = tmp_path / "graph", write_tiny_beir(tmp_path / "data"), tmp_path / "cache"
    make_tiny_encoder(seed=0).export_onnx(graph, quantize=None)
    (graph / "data").mkdir()
    onnx.save_model(
        onnx.load(str(graph / "model.onnx")),
        str(graph / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="data/weights.bin",
        size_threshold=0,
    )
    config = json.loads((graph / "config.json").read_text(encoding="utf-8"))
    config["onnx"]["model_sha256"] = sha256_file(graph / "model.onnx")  # the graph, without its weights
    config["onnx"]["external_data_sha256"] = {"data/weights.bin": sha256_file(graph / "data" / "weights.bin")}
    (graph / "config.json").write_text(json.dumps(config), encoding="utf-8")
    argv = _argv(graph, data, cache, "--model-backend", "onnx")
    assert _with_real_loader(lambda: _first_run(argv, capsys))["backend"] == "onnx-float32"
    assert main(argv) == 0 and loads == []
    capsys.readouterr()
    weights = graph / "data" / "weights.bin"
    floats = np.frombuffer(weights.read_bytes(), dtype=np.float32) * 1.5  # same size, other values
    weights.write_bytes(floats.tobytes())
    assert _needs_the_model(argv, loads)


def test_files_fingerprint_reads_sub_folders(tmp_path: Path) -> None:
    import os

    from kl_retrievers.encoding_cache import files_fingerprint

    (tmp_path / "m" / "onnx").mkdir(parents=True)
    (tmp_path / "m" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "m" / "onnx" / "model.onnx").write_bytes(b"graph")
    before = files_fingerprint([tmp_path / "m"], {})
    (tmp_path / "m" / "onnx" / "model.onnx").write_bytes(b"other")
    assert files_fingerprint([tmp_path / "m"], {}) != before
    os.symlink(tmp_path / "m", tmp_path / "m" / "onnx" / "loop")  # a folder linked into itself: no end of files
    with pytest.raises(OSError, match="linked into"):
        files_fingerprint([tmp_path / "m"], {})


def test_a_plain_run_shares_its_encodings_with_hybrid_runs_and_the_library(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from kl_retrievers.datasets import load_beir
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.evaluation import encode_dataset

    model, data, cache = world
    _first_run(_argv(model, data, cache), capsys)
    with caplog.at_level(logging.INFO, logger="kl_retrievers.evaluation"):
        assert main(_argv(model, data, cache, "--hybrid", "rrf")) == 0
        capsys.readouterr()
        encode_dataset(GaussianEncoder.from_pretrained(model), load_beir(data), cache_dir=cache, show_progress=False)
    encoded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoding ")]
    assert encoded == []  # neither encoded anything: the plain run's entries served both


def test_a_library_run_s_encodings_serve_the_command_which_then_loads_no_model(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    from kl_retrievers.datasets import load_beir
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.evaluation import encode_dataset

    model, data, cache = world
    encoder = GaussianEncoder.from_pretrained(model)
    encode_dataset(encoder, load_beir(data), cache_dir=cache, show_progress=False)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("every encoding is cached: nothing is encoded")

    encoder.encode_queries = encoder.encode_documents = refuse  # type: ignore[method-assign]
    _with_real_loader(lambda: _with_loaded(encoder, lambda: _first_run(_argv(model, data, cache), capsys)))
    assert loads == []
    assert main(_argv(model, data, cache)) == 0 and loads == []  # recorded by the run that loaded it


def _with_loaded(encoder: Any, run: Any) -> Any:
    """Call ``run`` with load_model returning ``encoder`` (counted nowhere), then put the loader back."""
    real = pretrained.load_model
    pretrained.load_model = lambda *a, **k: encoder
    try:
        return run()
    finally:
        pretrained.load_model = real


def test_the_backend_and_session_options_are_in_the_files_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No two plans of different backends read the same folders, so only what is hashed can show the backend counts."""
    import kl_retrievers.encoding_cache as encoding_cache
    from kl_retrievers.evaluate_cli import _files_plan

    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")
    enc.export_onnx(tmp_path / "graph", quantize="int8")
    seen: list[tuple[Any, dict[str, Any]]] = []
    real = encoding_cache.files_fingerprint

    def recording(folders: Any, settings: Any) -> str:
        seen.append((list(folders), dict(settings)))
        return real(folders, settings)

    monkeypatch.setattr(encoding_cache, "files_fingerprint", recording)
    for model, backend, options in (
        (tmp_path / "model", "torch", None),
        (tmp_path / "graph", "onnx", None),
        (tmp_path / "graph", "onnx", {"num_threads": 1}),
    ):
        seen.clear()
        plan = _files_plan(str(model), backend, options)
        assert plan is not None and len(seen) == 1
        folders, settings = seen[0]
        assert settings["backend"] == backend and settings["session"] == dict(options or {})
        assert settings["quantize"] == ("int8" if backend == "onnx" else None)
        assert plan.fingerprint == real(folders, settings)
        assert real(folders, {**settings, "backend": "torch" if backend == "onnx" else "onnx"}) != plan.fingerprint


def test_cached_sha256_sees_a_file_rewritten_with_its_size_and_time_restored(tmp_path: Path) -> None:
    import os

    from kl_retrievers.hub import cached_sha256, sha256_file

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 64)
    st = f.stat()
    first = cached_sha256(f)
    f.write_bytes(b"b" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cached_sha256(f) == sha256_file(f) != first


def test_a_miss_run_hashes_the_weights_once_in_a_folder_of_many_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time
    from types import SimpleNamespace

    import kl_retrievers.hub as hub

    make_tiny_encoder(seed=0).save_pretrained(
        tmp_path / "model", extra_files={f"note{i:02d}.md": "x" for i in range(40)}
    )
    data, cache = write_tiny_beir(tmp_path / "data"), tmp_path / "cache"
    hashed: list[str] = []
    real = hub.sha256_file

    def counting(path: Any) -> str:
        hashed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(hub, "sha256_file", counting)
    later = time.time_ns() + 10 * 10**9  # the model written long ago: its digests are kept (racy clean rule)
    monkeypatch.setattr(hub, "time", SimpleNamespace(time_ns=lambda: later))
    _first_run(_argv(tmp_path / "model", data, cache), capsys)
    assert sum(h.endswith("model.safetensors") for h in hashed) == 1


def test_backbone_weights_swapped_with_size_and_time_restored_miss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    """Other weights of the same size given the old modification time (``cp -p``, ``rsync -t``) are a miss."""
    import os

    delta, base, data, cache = _delta_world(tmp_path)
    _with_real_loader(lambda: _first_run(_argv(delta, data, cache), capsys))
    assert main(_argv(delta, data, cache)) == 0 and loads == []
    capsys.readouterr()
    weights = base / "model.safetensors"
    st = os.stat(weights)
    make_tiny_encoder(seed=1).backbone.save_pretrained(base)  # other weights, the same architecture and size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(weights).st_size == st.st_size and os.stat(weights).st_mtime_ns == st.st_mtime_ns
    assert _needs_the_model(_argv(delta, data, cache), loads)  # was a hit: the first weights' scores


def test_a_run_with_other_session_options_shares_the_model_s_encodings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session options are in the files key (the model is loaded) but not in the encodings' (the same model)."""
    import kl_retrievers.evaluation as evaluation

    graph, data, cache = tmp_path / "graph", write_tiny_beir(tmp_path / "data"), tmp_path / "cache"
    make_tiny_encoder(seed=0).export_onnx(graph, quantize="int8")
    argv = _argv(graph, data, cache, "--model-backend", "onnx")
    first = _first_run(argv, capsys)
    # an int8 graph gives the same vectors on one thread as on the default threads: sharing is sound
    assert _first_run([*argv, "--no-cache", "--model-threads", "1"], capsys) == first
    encoded: list[Any] = []
    real = evaluation._encode_sorted

    def counting(*args: Any, **kwargs: Any) -> Any:
        encoded.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "_encode_sorted", counting)
    assert _first_run([*argv, "--model-threads", "1"], capsys) == first
    assert encoded == []  # both sides were the default-threads run's


def test_a_cached_side_of_another_model_is_not_used_next_to_the_loaded_one(tmp_path: Path) -> None:
    """One side found through the files' record is dropped when the loaded model is not the recorded one."""
    import numpy as np

    from kl_retrievers.datasets import load_beir
    from kl_retrievers.encoding_cache import EncodingCache, model_fingerprint
    from kl_retrievers.evaluation import _cached_encodings, _dataset_identities, _encode_dataset, _save_model_of_files
    from kl_retrievers.gaussian import Gaussians

    dataset = load_beir(write_tiny_beir(tmp_path / "data"))
    encoder = make_tiny_encoder(seed=0)
    fp = model_fingerprint(encoder)
    cache = tmp_path / "cache"
    assert _cached_encodings(dataset, "f" * 32, batch_invariant=True, identities=_dataset_identities(dataset),
                             cache_dir=cache) == ({}, None)  # fmt: skip
    _save_model_of_files(EncodingCache(cache), "f" * 32, fp)
    found = _cached_encodings(
        dataset, "f" * 32, batch_invariant=True, identities=_dataset_identities(dataset), cache_dir=cache
    )
    assert found == ({}, fp)  # the record's model, no sides cached yet
    n = len(dataset.query_ids)
    stale = Gaussians(np.full((n, 8), 7.0, np.float32), np.ones((n, 8), np.float32))
    other = "0" * 16 if fp != "0" * 16 else "1" * 16
    q, _ = _encode_dataset(
        encoder, dataset, cached={"queries": stale}, cached_model=other, use_cache=False, show_progress=False
    )
    assert not np.array_equal(np.asarray(q.mean), stale.mean)  # encoded by the loaded model instead
    np.testing.assert_allclose(
        np.asarray(q.mean), np.asarray(encoder.encode_queries(dataset.query_texts()).mean), atol=1e-5
    )
    q, _ = _encode_dataset(
        encoder, dataset, cached={"queries": stale}, cached_model=fp, use_cache=False, show_progress=False
    )
    assert np.array_equal(np.asarray(q.mean), stale.mean)  # the loaded model's own: used
