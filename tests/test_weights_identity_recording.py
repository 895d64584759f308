"""Weights identity, review round 2 (commits 1fca92f and 44dc6cc).

1. ``store.add`` with an encoder trained in memory, then ``encoder.save_pretrained``, then ``store.save``: the
   store records the identity those same weights got (and nothing when they changed in between).
2. The warning says to re-index into a new (or emptied) store; re-adding every id keeps the old record.
3. An emptied Milvus collection takes the identity of the client that fills it again.
4. Exporting an encoder whose identity is not known to ONNX warns.
5. A malformed ``weights_identity`` is lower-cased (upper-case hex) or ignored with a warning, never fatal.
6. The hybrid store's warning names the hybrid folder, not its inner ``kl`` folder.
7. The getting-started paragraph tells the user what to do; docs/onnx.md's paragraph is wrapped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, make_tiny_encoder, retrain_in_place, weights_warnings
from kl_retrievers import KLStore
from kl_retrievers.encoder import GaussianEncoder

REPO = Path(__file__).resolve().parents[1]
TEXTS = IDENTITY_TEXTS
IDS = IDENTITY_IDS


def _recorded(store_folder: Path) -> object:
    return json.loads((store_folder / "config.json").read_text())["encoder"].get("weights_sha256")


# ---------------------------------------------------------------- 1. add, save_pretrained, store.save


def test_store_built_before_its_model_was_saved_records_the_saved_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enc = make_tiny_encoder(seed=0)  # built / trained in memory: no identity yet
    store = KLStore(enc)
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "early")  # before save_pretrained: nothing known, nothing recorded
    assert _recorded(tmp_path / "early") is None
    enc.save_pretrained(tmp_path / "model")
    store.save(tmp_path / "store")
    assert _recorded(tmp_path / "store") == enc.weights_sha256 is not None
    store.save(tmp_path / "store")  # kept by later saves
    assert _recorded(tmp_path / "store") == enc.weights_sha256

    new = retrain_in_place(tmp_path / "model")
    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "store", encoder=new)
    (message,) = weights_warnings(caplog)
    assert str(enc.weights_sha256) in message and str(new.weights_sha256) in message


def test_weights_changed_between_the_add_and_the_model_save_record_nothing(tmp_path: Path) -> None:
    enc = make_tiny_encoder(seed=0)
    store = KLStore(enc)
    store.add(TEXTS[:2], ids=IDS[:2])
    with torch.no_grad():
        enc.mean_head.weight.add_(0.5)  # trained further: the documents' weights are not the ones saved next
    enc.save_pretrained(tmp_path / "model")
    store.add(TEXTS[2:], ids=IDS[2:])  # a mixed store
    store.save(tmp_path / "store")
    assert enc.weights_sha256 is not None
    assert _recorded(tmp_path / "store") is None


# ---------------------------------------------------------------- 2. what the warning tells the user to do


def test_warning_says_re_index_into_a_new_or_emptied_store_and_re_adding_keeps_the_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    old = GaussianEncoder.from_pretrained(tmp_path / "model")
    store = KLStore(old)
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "store")
    new = retrain_in_place(tmp_path / "model")
    caplog.set_level(logging.WARNING)
    loaded = KLStore.load(tmp_path / "store", encoder=new)
    (message,) = weights_warnings(caplog)
    assert "re-indexed" in message and "into a new (or emptied) store" in message
    assert "adding them again to this one keeps the old record" in message
    loaded.add(TEXTS, ids=IDS)  # every id again, with the new model: still the first model's record (documented)
    loaded.save(tmp_path / "store")
    assert _recorded(tmp_path / "store") == old.weights_sha256
    fresh = KLStore(new)  # what the warning says to do
    fresh.add(TEXTS, ids=IDS)
    fresh.save(tmp_path / "store2")
    KLStore.load(tmp_path / "store2", encoder=new)
    assert len(weights_warnings(caplog)) == 1


# ---------------------------------------------------------------- 3. an emptied Milvus collection


@pytest.mark.parametrize("metric", ["L2", "IP"])
def test_emptied_milvus_collection_takes_the_identity_of_the_client_that_refills_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, metric: str
) -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.store.milvus import MilvusKLStore

    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    old = GaussianEncoder.from_pretrained(tmp_path / "model")
    uri = str(tmp_path / "kl.db")
    first = MilvusKLStore(old, uri=uri, index_type="flat", metric=metric)  # type: ignore[arg-type]
    first.add(TEXTS, ids=IDS)
    first.close()
    new = retrain_in_place(tmp_path / "model")
    caplog.set_level(logging.WARNING)

    filled = MilvusKLStore(new, uri=uri, index_type="flat", metric=metric)  # type: ignore[arg-type]
    assert len(weights_warnings(caplog)) == 1
    filled.add(TEXTS[:1], ids=IDS[:1])  # not empty: the collection keeps the old record
    filled.close()
    MilvusKLStore(new, uri=uri, index_type="flat", metric=metric).close()  # type: ignore[arg-type]
    assert len(weights_warnings(caplog)) == 2

    exact = KLStore(new)
    exact.add(TEXTS, ids=IDS)
    expected = [[h.id for h in exact.search(q, k=4)] for q in ("bees dance", "yeast")]
    refill = MilvusKLStore(new, uri=uri, index_type="flat", metric=metric)  # type: ignore[arg-type]
    refill.delete(IDS)
    refill.add(TEXTS, ids=IDS)  # an emptied collection re-indexed with the new model
    assert [[h.id for h in refill.search(q, k=4)] for q in ("bees dance", "yeast")] == expected
    refill.close()
    before = len(weights_warnings(caplog))
    again = MilvusKLStore(new, uri=uri, index_type="flat", metric=metric)  # type: ignore[arg-type]
    assert [[h.id for h in again.search(q, k=4)] for q in ("bees dance", "yeast")] == expected
    again.close()
    assert len(weights_warnings(caplog)) == before  # the new identity: no warning
    MilvusKLStore(old, uri=uri, index_type="flat", metric=metric).close()  # type: ignore[arg-type]
    assert len(weights_warnings(caplog)) == before + 1  # and the old model is now the other one


# ---------------------------------------------------------------- 4. exporting an encoder of unknown identity


def test_onnx_export_of_an_encoder_of_unknown_identity_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    caplog.set_level(logging.WARNING, logger="kl_retrievers.onnx")
    GaussianEncoder.from_pretrained(tmp_path / "model").export_onnx(tmp_path / "saved", quantize=None)
    assert not [r for r in caplog.records if "no known identity" in r.getMessage()]

    enc = GaussianEncoder.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        enc.mean_head.weight.add_(0.5)  # trained in memory, not saved
    enc.export_onnx(tmp_path / "unsaved", quantize=None)
    (record,) = [r for r in caplog.records if "no known identity" in r.getMessage()]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "save_pretrained first, or export the saved folder" in message and str(tmp_path / "unsaved") in message
    source = json.loads((tmp_path / "unsaved" / "config.json").read_text())["source"]
    assert source["weights_sha256"] is None


# ---------------------------------------------------------------- 5. a malformed weights_identity


def test_malformed_weights_identity_is_lowercased_or_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    file_sha = cfg["weights_sha256"]["model.safetensors"]

    cfg["weights_identity"] = "AB" * 32
    cfg_file.write_text(json.dumps(cfg))
    caplog.set_level(logging.WARNING)
    assert GaussianEncoder.from_pretrained(tmp_path / "m").weights_sha256 == "ab" * 32
    assert not [r for r in caplog.records if "weights_identity" in r.getMessage()]

    for bad in (["x"], "z" * 500, 12, "ab" * 31):
        caplog.clear()
        cfg["weights_identity"] = bad
        cfg_file.write_text(json.dumps(cfg))
        assert GaussianEncoder.from_pretrained(tmp_path / "m").weights_sha256 == file_sha  # loads; file's SHA
        (message,) = [r.getMessage() for r in caplog.records if "'weights_identity'" in r.getMessage()]
        assert str(cfg_file) in message
        shown = repr(bad)
        if len(shown) > 80:
            assert shown[:77] + "..." in message and shown not in message
        else:
            assert shown in message


# ---------------------------------------------------------------- 6. the hybrid store names its own folder


def test_hybrid_store_warning_names_the_hybrid_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    hybrid = KLHybridStore(GaussianEncoder.from_pretrained(tmp_path / "model"))
    hybrid.add(TEXTS, ids=IDS)
    hybrid.save(tmp_path / "hyb")
    new = retrain_in_place(tmp_path / "model")
    caplog.set_level(logging.WARNING)
    KLHybridStore.load(tmp_path / "hyb", encoder=new)
    (message,) = weights_warnings(caplog)
    assert message.startswith(f"the hybrid store at {tmp_path / 'hyb'} was indexed with ")


# ---------------------------------------------------------------- 7. the docs


def test_getting_started_says_what_to_do_and_onnx_paragraph_is_wrapped() -> None:
    page = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    start = page.index("The store's `config.json` records")
    paragraph = " ".join(page[start : page.index("\n\n", start)].split())
    assert "into a new (or emptied) store" in paragraph
    assert "`store.add(...)`, `encoder.save_pretrained(...)`, `store.save(...)`" in paragraph
    assert "p.data" not in paragraph and "version" not in paragraph  # internals live in the property's docstring
    onnx_page = (REPO / "docs" / "onnx.md").read_text(encoding="utf-8")
    start = onnx_page.index("OUT. An export records")
    lines = onnx_page[start : onnx_page.index("\n\n", start)].splitlines()
    assert all(len(line) >= 60 for line in lines[:-1]), lines  # no short line inside the paragraph
    assert "save_pretrained` first, or export the saved folder" in " ".join(lines)
