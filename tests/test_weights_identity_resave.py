"""Review fixes of the weights identity stores record (``encoder.weights_sha256``, commit 1fca92f).

1. Re-saving unchanged weights keeps their identity (``weights_identity`` in the new folder's config.json): a
   full copy of the bundled delta model, a delta copy of it and the encoder that saved them are one model.
2. A store keeps the identity of the weights its documents were encoded with across saves: saving it after
   loading it with a retrained model does not silence the next load's warning (KLStore and Milvus, one helper).
3. The property documents which changes in memory it sees (and those it does not).
4. A bundled model's shipped ONNX graph loaded as a folder reports its bundled folder's identity.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, make_tiny_encoder, retrain_in_place, weights_warnings
from kl_retrievers import KLStore, load_model
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.hub import sha256_file
from kl_retrievers.onnx import OnnxGaussianEncoder

TEXTS = IDENTITY_TEXTS
IDS = IDENTITY_IDS


def _config(folder: Path) -> dict[str, object]:
    return json.loads((folder / "config.json").read_text())


# ---------------------------------------------------------------- 1. re-saving unchanged weights


def test_resaving_the_bundled_model_full_or_delta_keeps_its_identity_and_no_store_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enc = GaussianEncoder.from_pretrained("minilm-gauss-soup")
    identity = enc.weights_sha256
    assert isinstance(identity, str) and len(identity) == 64
    store = KLStore(enc)
    store.add(TEXTS[:3], ids=IDS[:3])
    store.save(tmp_path / "store")

    enc.save_pretrained(tmp_path / "full")
    assert enc.weights_sha256 == identity  # the same object is still the same model
    full_cfg = _config(tmp_path / "full")
    assert full_cfg["weights_identity"] == identity
    assert full_cfg["weights_sha256"] == {"model.safetensors": sha256_file(tmp_path / "full" / "model.safetensors")}
    full = GaussianEncoder.from_pretrained(tmp_path / "full")
    assert full.weights_sha256 == identity

    fresh = GaussianEncoder.from_pretrained("minilm-gauss-soup")
    fresh.save_pretrained(tmp_path / "delta", include_backbone=False)
    assert GaussianEncoder.from_pretrained(tmp_path / "delta").weights_sha256 == identity
    # a re-save of the re-saved copy: still the same identity
    full.save_pretrained(tmp_path / "full2", include_backbone=False)
    assert GaussianEncoder.from_pretrained(tmp_path / "full2").weights_sha256 == identity

    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "store", encoder=enc)
    KLStore.load(tmp_path / "store", encoder=full)
    assert weights_warnings(caplog) == []


def test_only_an_unknown_identity_takes_the_new_files_sha256_and_exports_copy_it(tmp_path: Path) -> None:
    built = make_tiny_encoder(seed=0)
    assert built.weights_sha256 is None  # built in memory
    built.save_pretrained(tmp_path / "m0")
    first = sha256_file(tmp_path / "m0" / "model.safetensors")
    assert built.weights_sha256 == first == _config(tmp_path / "m0")["weights_identity"]

    loaded = GaussianEncoder.from_pretrained(tmp_path / "m0")
    loaded.save_pretrained(tmp_path / "m1")  # unchanged: m0's identity, whatever m1's file hashes to
    assert GaussianEncoder.from_pretrained(tmp_path / "m1").weights_sha256 == first
    onnx = OnnxGaussianEncoder(
        GaussianEncoder.from_pretrained(tmp_path / "m1").export_onnx(tmp_path / "x", quantize=None)
    )
    assert onnx.weights_sha256 == first  # the export of the copy is the same model too

    with torch.no_grad():
        loaded.var_head.bias.add_(1.0)
    assert loaded.weights_sha256 is None
    loaded.save_pretrained(tmp_path / "m2")
    changed = sha256_file(tmp_path / "m2" / "model.safetensors")
    assert changed != first
    assert loaded.weights_sha256 == changed == GaussianEncoder.from_pretrained(tmp_path / "m2").weights_sha256


def test_a_folder_without_weights_identity_is_its_files_and_a_bad_one_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    file_sha = cfg["weights_sha256"]["model.safetensors"]
    cfg["weights_identity"] = "f" * 64  # as a copy of another folder's weights records it
    cfg_file.write_text(json.dumps(cfg))
    assert GaussianEncoder.from_pretrained(tmp_path / "m").weights_sha256 == "f" * 64
    del cfg["weights_identity"]  # as saved before the field existed
    cfg_file.write_text(json.dumps(cfg))
    assert GaussianEncoder.from_pretrained(tmp_path / "m").weights_sha256 == file_sha
    cfg["weights_identity"] = "not-a-sha"  # only feeds a warning: ignored with one, the model still loads
    cfg_file.write_text(json.dumps(cfg))
    caplog.set_level(logging.WARNING)
    assert GaussianEncoder.from_pretrained(tmp_path / "m").weights_sha256 == file_sha
    assert any("weights_identity" in r.getMessage() and "'not-a-sha'" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- 2. the store keeps its documents' identity


def test_saving_a_store_loaded_with_a_retrained_model_keeps_the_old_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model"
    make_tiny_encoder(seed=0).save_pretrained(model)
    old = GaussianEncoder.from_pretrained(model)
    store = KLStore(old)
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "store")
    retrain_in_place(model)
    new = GaussianEncoder.from_pretrained(model)
    caplog.set_level(logging.WARNING)

    loaded = KLStore.load(tmp_path / "store", encoder=new)
    assert len(weights_warnings(caplog)) == 1
    loaded.delete(["d"])  # a change that re-indexes nothing
    loaded.save(tmp_path / "store")
    assert _config(tmp_path / "store")["encoder"]["weights_sha256"] == old.weights_sha256  # type: ignore[index]
    KLStore.load(tmp_path / "store", encoder=new)
    assert len(weights_warnings(caplog)) == 2  # still the old documents: still a warning

    # an encoder of unknown identity keeps the recorded one too
    unknown = GaussianEncoder.from_pretrained(model)
    with torch.no_grad():
        unknown.var_head.bias.add_(1.0)
    KLStore.load(tmp_path / "store", encoder=unknown).save(tmp_path / "store")
    assert _config(tmp_path / "store")["encoder"]["weights_sha256"] == old.weights_sha256  # type: ignore[index]

    # an emptied store re-indexed with the new model takes the new identity
    emptied = KLStore.load(tmp_path / "store", encoder=new)
    emptied.delete(IDS)
    emptied.add(TEXTS[:2], ids=IDS[:2])
    emptied.save(tmp_path / "store")
    assert _config(tmp_path / "store")["encoder"]["weights_sha256"] == new.weights_sha256  # type: ignore[index]
    before = len(weights_warnings(caplog))
    KLStore.load(tmp_path / "store", encoder=new)
    assert len(weights_warnings(caplog)) == before


def test_milvus_and_klstore_give_the_same_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.store.milvus import MilvusKLStore

    model = tmp_path / "model"
    make_tiny_encoder(seed=0).save_pretrained(model)
    old = GaussianEncoder.from_pretrained(model)
    uri = str(tmp_path / "kl.db")
    milvus = MilvusKLStore(old, uri=uri, index_type="flat")
    milvus.add(TEXTS, ids=IDS)
    milvus.close()
    store = KLStore(old)
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "store")
    retrain_in_place(model)
    new = GaussianEncoder.from_pretrained(model)
    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "store", encoder=new)
    MilvusKLStore(new, uri=uri, index_type="flat").close()
    faiss_message, milvus_message = weights_warnings(caplog)
    tail = faiss_message.split(" was indexed with ", 1)[1]
    assert milvus_message.startswith("Milvus collection ")
    assert milvus_message.split(" was indexed with ", 1)[1] == tail


# ---------------------------------------------------------------- 3. what the change tracking sees


def test_change_tracking_is_as_documented(tmp_path: Path) -> None:
    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "m")

    def fresh() -> GaussianEncoder:
        return GaussianEncoder.from_pretrained(tmp_path / "m")

    identity = fresh().weights_sha256
    copied = copy.deepcopy(fresh())
    reloaded = fresh()
    reloaded.load_state_dict(make_tiny_encoder(seed=1).state_dict())
    in_place = fresh()
    with torch.no_grad():
        in_place.mean_head.weight.copy_(in_place.mean_head.weight * 2)
    for what, changed in (("deepcopy", copied), ("load_state_dict", reloaded), ("p.copy_", in_place)):
        assert changed.weights_sha256 is None, what
    unseen = fresh()
    unseen.mean_head.weight.data.add_(1.0)  # documented as not detected
    assert unseen.weights_sha256 == identity
    doc = GaussianEncoder.weights_sha256.__doc__ or ""
    assert "Not detected" in doc and "p.data" in doc and "load_state_dict" in doc


# ---------------------------------------------------------------- 4. the shipped ONNX graph as a folder


def test_shipped_onnx_graph_loaded_as_a_folder_reports_the_bundled_identity() -> None:
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_onnx_path

    shipped = bundled_onnx_path(DEFAULT_MODEL)
    if shipped is None:
        pytest.skip("this install ships no ONNX graph")
    torch_identity = load_model(DEFAULT_MODEL, backend="torch").weights_sha256
    assert torch_identity is not None
    assert OnnxGaussianEncoder(shipped).weights_sha256 == torch_identity
    assert load_model(DEFAULT_MODEL, backend="onnx").weights_sha256 == torch_identity
