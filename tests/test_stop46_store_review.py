"""Review of 38f7dbe, the store part.

1. A saved store records the backbone its documents were encoded over (``encoder.backbone_sha256``), kept by
   every save as the weights identity is: saving a store loaded with the other model of the same delta
   (``bge-small-unit-variance`` on a ``minilm-unit-variance`` store) recorded that model's backbone, so the
   next load warned for the right model and said nothing for the wrong one.
2. On Milvus Lite, a filter negating an order comparison is judged in Python on date values in their stored
   form (ISO strings compared as text), as the Milvus expression compares them: a filter and its ``$not``
   no longer both leave a document out.
3. A store loaded without an encoder retries loading its saved model after a transient failure (an
   ``OSError``); other failures are kept, and one thread loads at a time.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, make_tiny_encoder, weights_warnings
from kl_retrievers import GaussianEncoder, KLStore, load_model
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store._format import StoreFormatError, encoder_backbone

MINILM = "minilm-unit-variance"
BGE = "bge-small-unit-variance"


def _bundled(name: str) -> Any:
    return load_model(name, backend="torch", device="cpu")


def _record(folder: Path) -> dict[str, Any]:
    record = json.loads((folder / "config.json").read_text())["encoder"]
    assert isinstance(record, dict)
    return record


# ---------------------------------------------------------------- 1. the backbone record follows the documents
def test_saving_a_store_loaded_with_the_other_model_keeps_the_documents_backbone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    minilm, bge = _bundled(MINILM), _bundled(BGE)
    store = KLStore(minilm)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s1")
    assert _record(tmp_path / "s1")["backbone_sha256"] == encoder_backbone(minilm)[0]
    caplog.set_level(logging.WARNING)
    loaded = KLStore.load(tmp_path / "s1", encoder=bge)  # the wrong model: warns
    assert len(weights_warnings(caplog)) == 1
    loaded.save(tmp_path / "s2")  # nothing re-encoded: the documents are still MiniLM's
    record = _record(tmp_path / "s2")
    assert record["backbone_sha256"] == encoder_backbone(minilm)[0]
    assert record["config"]["backbone_sha256"] == encoder_backbone(bge)[0]  # the saving encoder's config
    caplog.clear()
    KLStore.load(tmp_path / "s2", encoder=_bundled(MINILM))  # the documents' model: silent
    assert weights_warnings(caplog) == []
    KLStore.load(tmp_path / "s2", encoder=_bundled(BGE))  # the other model: warns, naming both backbones
    (message,) = weights_warnings(caplog)
    assert f"SHA-256 {encoder_backbone(minilm)[0]}" in message and f"SHA-256 {encoder_backbone(bge)[0]}" in message
    assert "'bge-small-en'" in message  # the encoder's backbone by name; the recorded one's config is bge's
    assert message.count("'bge-small-en'") == 1


def test_a_store_saved_without_an_encoder_and_loaded_lazily_keeps_and_compares_the_backbone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained

    minilm = _bundled(MINILM)
    store = KLStore(minilm)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s1")
    KLStore.load(tmp_path / "s1", encoder=_bundled(BGE)).save(tmp_path / "s2")
    plain = KLStore.load(tmp_path / "s2")  # no encoder: the record (and its backbone) is written back as read
    plain.save(tmp_path / "s3")
    assert _record(tmp_path / "s3")["backbone_sha256"] == encoder_backbone(minilm)[0]
    monkeypatch.setattr(pretrained, "load_model", lambda name, **kwargs: _bundled(BGE))  # the name s2 records
    caplog.set_level(logging.WARNING)
    caplog.clear()
    KLStore.load(tmp_path / "s3")._load_saved_encoder()
    assert len(weights_warnings(caplog)) == 1


def test_a_store_emptied_and_refilled_by_the_other_model_records_that_models_backbone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    minilm, bge = _bundled(MINILM), _bundled(BGE)
    store = KLStore(minilm)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s1")
    loaded = KLStore.load(tmp_path / "s1", encoder=bge)
    loaded.delete(IDENTITY_IDS)
    loaded.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)  # re-indexed with bge into the emptied store
    loaded.save(tmp_path / "s2")
    assert _record(tmp_path / "s2")["backbone_sha256"] == encoder_backbone(bge)[0]
    caplog.set_level(logging.WARNING)
    caplog.clear()
    KLStore.load(tmp_path / "s2", encoder=_bundled(BGE))
    assert weights_warnings(caplog) == []
    KLStore.load(tmp_path / "s2", encoder=_bundled(MINILM))
    assert len(weights_warnings(caplog)) == 1


def test_a_record_whose_backbone_is_not_known_stays_not_known_across_saves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = KLStore(_bundled(MINILM))
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s1")
    cfg_path = tmp_path / "s1" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["encoder"]["backbone_sha256"]  # as saved before the field, by a model whose config has none
    cfg["encoder"]["config"].pop("backbone_sha256")
    cfg_path.write_text(json.dumps(cfg))
    KLStore.load(tmp_path / "s1", encoder=_bundled(BGE)).save(tmp_path / "s2")
    assert _record(tmp_path / "s2")["backbone_sha256"] is None  # not bge's, which the config beside it names
    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "s2", encoder=_bundled(MINILM))  # compared by weights alone: silent
    assert weights_warnings(caplog) == []


def test_a_backbone_record_that_is_not_a_string_is_refused_by_name(tmp_path: Path) -> None:
    encoder = make_tiny_encoder(seed=1)
    store = KLStore(encoder)
    store.add(["a cat", "tea"], ids=["a", "b"])
    store.save(tmp_path / "s")
    cfg_path = tmp_path / "s" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["encoder"]["backbone_sha256"] = 12
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError, match=r"'encoder\.backbone_sha256' must be a string or null, not 12"):
        KLStore.load(tmp_path / "s", verify_checksums=False)


# ---------------------------------------------------------------- 2. Milvus Lite: dates under $not
def test_milvus_lite_date_filter_and_its_negation_split_the_documents(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.store.milvus import MilvusKLStore

    utc, est = datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=-5))
    values = {
        "est_evening": datetime.datetime(2024, 1, 2, 20, tzinfo=est),  # 01:00 UTC on 3 January
        "utc_evening": datetime.datetime(2024, 1, 2, 23, tzinfo=utc),
        "date": datetime.date(2024, 1, 2),
        "naive_noon": datetime.datetime(2024, 1, 2, 12),
        "later": datetime.datetime(2024, 1, 4, tzinfo=utc),
    }
    rng = np.random.default_rng(0)
    g = Gaussians(rng.normal(size=(len(values), 4)), rng.uniform(0.5, 2, size=(len(values), 4)))
    q = Gaussians(rng.normal(size=(1, 4)), np.ones((1, 4)))
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat")
    store.add(gaussians=g, ids=list(values), metadatas=[{"t": v} for v in values.values()])

    def ids(f: dict[str, Any]) -> set[str]:
        return {h.id for h in store.search(q, k=10, filter=f)}

    cutoff = datetime.datetime(2024, 1, 3, tzinfo=utc)
    day = np.datetime64("2024-01-03")
    for inner in ({"$gt": cutoff}, {"$lte": cutoff}, {"$gte": datetime.date(2024, 1, 2)}, {"$lt": day}):
        matched = ids({"t": inner})
        assert matched == {k for k, v in values.items() if _text_compare(v, inner)}
        for negated in ({"$not": {"t": inner}}, {"t": {"$not": inner}}):
            assert ids(negated) == set(values) - matched, (inner, negated)
    assert "est_evening" not in ids({"t": {"$gt": cutoff}})  # compared as text, as the docs say
    assert "est_evening" in ids({"$not": {"t": {"$gt": cutoff}}})
    store.close()


def _text_compare(stored: Any, spec: dict[str, Any]) -> bool:
    """The ISO strings compared as text, as Milvus compares them."""
    ((op, value),) = spec.items()
    a, b = stored.isoformat(), str(value) if isinstance(value, np.datetime64) else value.isoformat()
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


# ---------------------------------------------------------------- 3. the lazy load of the saved model
def _saved_tiny(tmp_path: Path) -> Path:
    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    store = KLStore(GaussianEncoder.from_pretrained(tmp_path / "enc"))
    store.add(["a cat", "tea", "a dog"], ids=["a", "b", "c"])
    store.save(tmp_path / "st")
    return tmp_path / "st"


def test_a_transient_failure_to_load_the_saved_model_is_retried_by_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained

    path = _saved_tiny(tmp_path)
    real, calls = pretrained.load_model, []

    def flaky(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise OSError("temporary network error")
        return real(name, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", flaky)
    lazy = KLStore.load(path)
    with pytest.raises(ValueError, match=r"failed \(temporary network error; the next call that needs it tries again"):
        lazy.search("tea", k=1)
    assert lazy.search("tea", k=1)[0].id == "b"  # tried again, and loaded
    assert len(calls) == 2 and lazy.encoder is not None
    lazy.search("a cat", k=1)
    assert len(calls) == 2  # loaded once


def test_a_failure_no_retry_can_fix_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import pretrained

    path = _saved_tiny(tmp_path)
    calls: list[str] = []

    def broken(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        raise ValueError("not a Gaussian encoder folder")

    monkeypatch.setattr(pretrained, "load_model", broken)
    lazy = KLStore.load(path)
    for _ in range(3):
        with pytest.raises(ValueError, match=r"failed \(not a Gaussian encoder folder\): pass encoder="):
            lazy.search("tea", k=1)
    assert len(calls) == 1


def test_threads_share_one_load_of_the_saved_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import pretrained

    path = _saved_tiny(tmp_path)
    real, calls = pretrained.load_model, []

    def slow(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        time.sleep(0.2)
        return real(name, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", slow)
    lazy = KLStore.load(path)
    errors: list[BaseException] = []

    def go() -> None:
        try:
            lazy.search("tea", k=1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(calls) == 1
