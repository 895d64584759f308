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

Round 2 (review of 7c8fb92):

4. An ``OSError`` (a ``ModelNotFoundError`` too: a hub id that no longer exists) is kept and raised again without
   any lookup for ``_SAVED_ENCODER_RETRY_S`` seconds; only then does one call try again (a fake clock here).
5. A save by an encoder known to be another model than the documents' (``bge-small-unit-variance`` on a
   ``minilm-unit-variance`` store) keeps the documents' model name and config beside their weights and
   backbone: a reload with MiniLM no longer says the store was built with BGE, and a reload without an encoder
   loads MiniLM. The same model (by identity) or an unknown identity records the attached encoder, as before.
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
    assert record["config"]["backbone_sha256"] == encoder_backbone(minilm)[0]  # the documents' model's config
    caplog.clear()
    KLStore.load(tmp_path / "s2", encoder=_bundled(MINILM))  # the documents' model: silent
    assert weights_warnings(caplog) == []
    KLStore.load(tmp_path / "s2", encoder=_bundled(BGE))  # the other model: warns, naming both backbones
    (message,) = weights_warnings(caplog)
    assert f"SHA-256 {encoder_backbone(minilm)[0]}" in message and f"SHA-256 {encoder_backbone(bge)[0]}" in message
    assert f"{encoder_backbone(bge)[1]!r}" in message and f"{encoder_backbone(minilm)[1]!r}" in message  # by name


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
    monkeypatch.setattr(pretrained, "load_model", lambda name, **kwargs: _bundled(BGE))  # another model than s2's
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


class _Clock:
    """A fake ``monotonic`` the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_transient_failure_to_load_the_saved_model_is_retried_after_the_retry_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained
    from kl_retrievers.store import faiss as faiss_module

    path = _saved_tiny(tmp_path)
    real, calls, clock = pretrained.load_model, [], _Clock()
    monkeypatch.setattr(faiss_module, "monotonic", clock)

    def flaky(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise OSError("temporary network error")
        return real(name, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", flaky)
    lazy = KLStore.load(path)
    with pytest.raises(ValueError, match=r"failed \(temporary network error; kept for 30 s, then the next call that"):
        lazy.search("tea", k=1)
    clock.now += faiss_module._SAVED_ENCODER_RETRY_S
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


# ---------------------------------------------------------------- 4. the retry of a transient failure is bounded
def test_a_model_the_hub_does_not_have_is_looked_up_again_only_after_the_retry_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained
    from kl_retrievers.hub import ModelNotFoundError
    from kl_retrievers.store import faiss as faiss_module

    path = _saved_tiny(tmp_path)
    clock, real, calls = _Clock(), pretrained.load_model, []
    delay = faiss_module._SAVED_ENCODER_RETRY_S
    monkeypatch.setattr(faiss_module, "monotonic", clock)

    def gone(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) <= 2:
            clock.now += 5.0  # the lookup itself takes time (an offline timeout): the delay counts from its end
            raise ModelNotFoundError(f"{name!r} not found: no local folder, hub copy or installed package")
        return real(name, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", gone)
    lazy = KLStore.load(path)
    expected = rf"not found: no local folder, hub copy or installed package; kept for {delay:g} s, then the next call"
    for _ in range(5):
        with pytest.raises(ValueError, match=expected):
            lazy.search("tea", k=1)
    assert len(calls) == 1  # one lookup for five searches
    clock.now += delay - 0.1
    with pytest.raises(ValueError, match=expected):
        lazy.search("tea", k=1)
    assert len(calls) == 1
    clock.now += 0.1
    with pytest.raises(ValueError, match=expected):  # the delay has passed: one more lookup, failing again
        lazy.search("tea", k=1)
    assert len(calls) == 2
    with pytest.raises(ValueError, match=expected):  # kept again, from this failure
        lazy.search("tea", k=1)
    assert len(calls) == 2
    clock.now += delay
    assert lazy.search("tea", k=1)[0].id == "b"  # the model is back: loaded, and the failure forgotten
    lazy.search("a cat", k=1)
    assert len(calls) == 3 and lazy.encoder is not None


def test_threads_waiting_on_a_failed_load_do_not_each_look_it_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained
    from kl_retrievers.store import faiss as faiss_module

    path = _saved_tiny(tmp_path)
    monkeypatch.setattr(faiss_module, "monotonic", _Clock())
    lazy = KLStore.load(path)
    calls: list[str] = []
    errors: list[str] = []

    def search() -> None:
        try:
            lazy.search("tea", k=1)
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=search) for _ in range(5)]

    def offline(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:  # the others start while this lookup holds the lock: they wait, or come after it
            for t in threads:
                t.start()
        raise OSError("connection timed out")

    monkeypatch.setattr(pretrained, "load_model", offline)
    search()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(errors) == 6 and len(set(errors)) == 1


def test_a_failure_kept_for_the_retry_delay_names_the_model_and_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained
    from kl_retrievers.store import faiss as faiss_module

    path = _saved_tiny(tmp_path)
    monkeypatch.setattr(faiss_module, "monotonic", _Clock())

    def offline(name: str, **kwargs: Any) -> Any:
        raise OSError("network unreachable")

    monkeypatch.setattr(pretrained, "load_model", offline)
    lazy = KLStore.load(path)
    for _ in range(2):  # the first failure and the kept one say the same
        with pytest.raises(ValueError) as info:
            lazy.add(["a bird"], ids=["e"])
        message = str(info.value)
        assert repr(lazy.saved_encoder) in message and "network unreachable" in message
        assert "kept for 30 s, then the next call that needs it tries again" in message and "pass encoder=" in message


# ---------------------------------------------------------------- 5. the model record follows the documents too
def test_a_save_by_the_other_model_keeps_the_documents_model_name_and_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained

    minilm, bge = _bundled(MINILM), _bundled(BGE)
    store = KLStore(minilm)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s1")
    KLStore.load(tmp_path / "s1", encoder=bge).save(tmp_path / "s2")
    assert _record(tmp_path / "s2") == _record(tmp_path / "s1")  # MiniLM's name, config, weights and backbone
    caplog.set_level(logging.WARNING)
    caplog.clear()
    KLStore.load(tmp_path / "s2", encoder=_bundled(MINILM))  # the documents' model: nothing to say
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    KLStore.load(tmp_path / "s2", encoder=bge)
    assert any(
        f"built with encoder {minilm.name_or_path!r} but is loaded with" in r.getMessage() for r in caplog.records
    )
    loaded: list[tuple[str, Any]] = []

    def load(name: str, **kwargs: Any) -> Any:
        loaded.append((name, kwargs.get("backend")))
        return _bundled(name)

    monkeypatch.setattr(pretrained, "load_model", load)
    lazy = KLStore.load(tmp_path / "s2")
    assert lazy.saved_encoder == minilm.name_or_path
    caplog.clear()
    assert lazy.search("tea", k=1)[0].id == "c"  # encoded by MiniLM, lazily loaded by the recorded name
    assert loaded == [(minilm.name_or_path, "torch")] and weights_warnings(caplog) == []


def test_an_encoder_swapped_after_the_first_add_is_not_recorded_for_the_documents(tmp_path: Path) -> None:
    minilm = _bundled(MINILM)
    store = KLStore(minilm)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s1")
    store.encoder = _bundled(BGE)  # the first add's model record is the documents'
    store.save(tmp_path / "s2")
    assert _record(tmp_path / "s2") == _record(tmp_path / "s1")
    store.delete(IDENTITY_IDS)  # emptied, then re-indexed with BGE: BGE's record
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s3")
    record = _record(tmp_path / "s3")
    assert record["name_or_path"] == store.encoder.name_or_path != minilm.name_or_path
    assert record["backbone_sha256"] == record["config"]["backbone_sha256"] == encoder_backbone(store.encoder)[0]


def test_the_same_model_or_an_unknown_identity_records_the_attached_encoder(tmp_path: Path) -> None:
    import copy

    minilm = _bundled(MINILM)
    store = KLStore(minilm)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.save(tmp_path / "s1")
    renamed = _bundled(MINILM)
    renamed.name_or_path = "my-minilm"  # the same weights and backbone under another name: the same model
    KLStore.load(tmp_path / "s1", encoder=renamed).save(tmp_path / "s2")
    assert _record(tmp_path / "s2")["name_or_path"] == "my-minilm"
    unknown = copy.deepcopy(_bundled(BGE))  # a copy's identity is not known: not known to be another model
    assert unknown.weights_sha256 is None
    KLStore.load(tmp_path / "s1", encoder=unknown).save(tmp_path / "s3")
    record = _record(tmp_path / "s3")
    assert record["name_or_path"] == unknown.name_or_path != minilm.name_or_path
    assert record["weights_sha256"] == _record(tmp_path / "s1")["weights_sha256"]  # the documents' identity kept


def test_langchain_save_by_the_other_model_names_the_documents_model(tmp_path: Path) -> None:
    """The LangChain manifest names the model the store part records for its documents, not an attached other one."""
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    minilm = _bundled(MINILM)
    vs = KLVectorStore.from_texts(IDENTITY_TEXTS, KLEmbeddings(encoder=minilm), ids=IDENTITY_IDS)
    vs.save_local(tmp_path / "a")
    other = KLVectorStore.load_local(tmp_path / "a", KLEmbeddings(encoder=_bundled(BGE)))
    other.save_local(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "langchain.json").read_text())
    assert manifest["encoder"] == str(minilm.name_or_path)
    assert _record(tmp_path / "b" / "klstore")["name_or_path"] == str(minilm.name_or_path)
    again = KLVectorStore.load_local(tmp_path / "b")  # no embeddings: the documents' model is loaded by name
    assert str(again.store.encoder.name_or_path) == str(minilm.name_or_path)
    assert again.similarity_search("tea", k=1)[0].id == "c"


def test_a_record_without_a_name_saved_with_another_model_still_loads(tmp_path: Path) -> None:
    """read_config accepts an encoder record without name_or_path; a save with another model must not write null."""
    import numpy as np

    from kl_retrievers.gaussian import Gaussians

    class Enc:
        dim = 4
        config = None

        def __init__(self, name: str, weights: str) -> None:
            self.name_or_path, self.weights_sha256 = name, weights

    store = KLStore(encoder=Enc("model-A", "a" * 64))
    store.add(gaussians=Gaussians(np.zeros((3, 4)), np.ones((3, 4))), ids=["x", "y", "z"])
    folder = store.save(tmp_path / "s")
    config = json.loads((folder / "config.json").read_text())
    del config["encoder"]["name_or_path"]
    (folder / "config.json").write_text(json.dumps(config))
    KLStore.load(folder, encoder=Enc("model-B", "b" * 64)).save(tmp_path / "s2")
    assert _record(tmp_path / "s2")["name_or_path"] == ""
    assert len(KLStore.load(tmp_path / "s2")) == 3
