"""A Milvus collection records its documents' encoder config and tokenizer SHA-256, as a KLStore does, and a client
attaching with the same weights but another pooling / beta / token budget / query prefix or tokenizer is warned
(:func:`kl_retrievers.store._format.warn_if_other_weights` with ``config`` and ``tokenizer``). Collections created
before those fields were recorded attach as before, compared by weights and backbone alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, make_tiny_encoder
from kl_retrievers import GaussianEncoder
from kl_retrievers.store._format import encoder_tokenizer

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from kl_retrievers.store import milvus as milvus_mod
from kl_retrievers.store.milvus import MilvusKLStore

QUERIES = ("bees dance", "yeast")


def model_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings that the collection's documents were encoded with another model or settings."""
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "was indexed with" in r.getMessage()
    ]


def _config(store: MilvusKLStore) -> dict[str, object]:
    """The kl-retrievers config the collection stores."""
    raw = store.client.describe_collection(store.collection_name)["properties"][milvus_mod._CONFIG_KEY]
    return dict(json.loads(raw))


def _indexed(tmp_path: Path, metric: str = "IP") -> tuple[str, GaussianEncoder]:
    """A flat collection indexed with a saved tiny encoder (pooling 'cls'); its URI and the encoder."""
    make_tiny_encoder().save_pretrained(tmp_path / "model")
    first = GaussianEncoder.from_pretrained(tmp_path / "model")
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(first, uri=uri, index_type="flat", metric=metric)  # type: ignore[arg-type]
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.close()
    return uri, first


def _reconfigured(tmp_path: Path) -> GaussianEncoder:
    """The same weights re-saved (into another folder) with pooling 'mean'."""
    again = GaussianEncoder.from_pretrained(tmp_path / "model")
    again.config.pooling = "mean"
    again.save_pretrained(tmp_path / "mean")
    return GaussianEncoder.from_pretrained(tmp_path / "mean")


def test_the_collection_records_the_encoder_config_and_tokenizer(tmp_path: Path) -> None:
    uri, first = _indexed(tmp_path)
    store = MilvusKLStore(first, uri=uri, index_type="flat")
    config = _config(store)
    store.close()
    assert config["encoder_weights_sha256"] == first.weights_sha256
    assert config["encoder_config"] == first.config.to_dict()
    assert config["encoder_tokenizer_identity_sha256"] == encoder_tokenizer(first)


def test_same_weights_with_another_pooling_warns_naming_the_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, _ = _indexed(tmp_path)
    other = _reconfigured(tmp_path)
    assert other.weights_sha256 == GaussianEncoder.from_pretrained(tmp_path / "model").weights_sha256
    caplog.set_level(logging.WARNING)
    MilvusKLStore(other, uri=uri, index_type="flat").close()
    warned = model_warnings(caplog)
    assert len(warned) == 1
    assert "Milvus collection 'kl_retrievers'" in warned[0] and "pooling 'cls' vs 'mean'" in warned[0]
    caplog.clear()
    MilvusKLStore(
        GaussianEncoder.from_pretrained(tmp_path / "model"), uri=uri, index_type="flat"
    ).close()  # the recorded settings
    assert model_warnings(caplog) == []


def test_same_weights_behind_another_tokenizer_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, first = _indexed(tmp_path)
    other = GaussianEncoder.from_pretrained(tmp_path / "model")
    other.tokenizer.add_tokens(["zebra"])  # another vocabulary, the same weights
    assert other.weights_sha256 == first.weights_sha256
    assert encoder_tokenizer(other) != encoder_tokenizer(first)
    caplog.set_level(logging.WARNING)
    MilvusKLStore(other, uri=uri, index_type="flat").close()
    warned = model_warnings(caplog)
    assert len(warned) == 1 and "tokenizer (vocabulary, normalisation, added tokens) SHA-256" in warned[0]


def test_a_collection_created_before_the_record_attaches_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, first = _indexed(tmp_path)
    store = MilvusKLStore(first, uri=uri, index_type="flat")
    config = _config(store)
    del config["encoder_config"], config["encoder_tokenizer_identity_sha256"]  # as written before 2026-12-06
    store.client.alter_collection_properties(
        store.collection_name, properties={milvus_mod._CONFIG_KEY: json.dumps(config)}
    )
    store.close()
    caplog.set_level(logging.WARNING)
    old = MilvusKLStore(_reconfigured(tmp_path), uri=uri, index_type="flat")
    assert model_warnings(caplog) == []  # nothing recorded to compare with
    old.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])
    assert old._config()["encoder_config"] is None  # what a later publication writes: still no record
    old.close()
    reader = MilvusKLStore(first, uri=uri, index_type="flat")
    assert sorted(h.id for h in reader.search(QUERIES[0], k=10)) == IDENTITY_IDS
    config = _config(reader)
    reader.close()
    assert config.get("encoder_config") is None and config.get("encoder_tokenizer_identity_sha256") is None
    assert model_warnings(caplog) == []


@pytest.mark.parametrize("metric", ["L2", "IP"])
def test_an_emptied_collection_takes_the_config_of_the_client_that_refills_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, metric: str
) -> None:
    uri, _ = _indexed(tmp_path, metric)
    other = _reconfigured(tmp_path)
    caplog.set_level(logging.WARNING)
    refill = MilvusKLStore(other, uri=uri, index_type="flat", metric=metric)  # type: ignore[arg-type]
    assert len(model_warnings(caplog)) == 1
    refill.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])  # not empty: the record stays the first model's
    assert _config(refill)["encoder_config"] == GaussianEncoder.from_pretrained(tmp_path / "model").config.to_dict()
    refill.delete(IDENTITY_IDS)
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)  # re-indexed with the reconfigured model
    assert _config(refill)["encoder_config"] == other.config.to_dict()
    refill.close()
    caplog.clear()
    MilvusKLStore(GaussianEncoder.from_pretrained(tmp_path / "mean"), uri=uri, index_type="flat", metric=metric).close()  # type: ignore[arg-type]
    assert model_warnings(caplog) == []
    MilvusKLStore(
        GaussianEncoder.from_pretrained(tmp_path / "model"),
        uri=uri,
        index_type="flat",
        metric=metric,  # type: ignore[arg-type]
    ).close()
    assert len(model_warnings(caplog)) == 1  # the first settings are now the other ones


def _counting(store: MilvusKLStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each count request ``store`` makes (the expressions), calling through to the real one."""
    calls: list[str] = []
    real = store._count

    def count(expr: str) -> int:
        calls.append(expr)
        return real(expr)

    monkeypatch.setattr(store, "_count", count)
    return calls


def test_a_non_finite_config_value_is_recorded_as_null_with_a_warning_and_never_reported_as_a_difference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tiny_encoder().save_pretrained(tmp_path / "model")
    enc = GaussianEncoder.from_pretrained(tmp_path / "model")
    enc.config.beta = float("inf")  # standard JSON has no Infinity: recorded as null
    caplog.set_level(logging.WARNING)
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(enc, uri=uri, index_type="flat")
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    recorded = _config(store)["encoder_config"]
    assert isinstance(recorded, dict) and recorded["beta"] is None
    non_finite = [r.getMessage() for r in caplog.records if "holds NaN or Infinity" in r.getMessage()]
    assert len(non_finite) == 1 and "['beta']" in non_finite[0] and "Milvus collection 'kl_retrievers'" in non_finite[0]
    calls = _counting(store, monkeypatch)
    for i in range(3):
        store.add(IDENTITY_TEXTS[:1], ids=[f"again{i}"])
    assert calls == []  # the record is this client's: no count request per add
    store.close()
    MilvusKLStore(enc, uri=uri, index_type="flat").close()
    assert model_warnings(caplog) == []  # not "beta None vs inf"
    from kl_retrievers.store.faiss import KLStore

    saved = KLStore(encoder=enc)
    saved.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    saved.save(tmp_path / "ks")
    KLStore.load(tmp_path / "ks", encoder=enc)
    assert model_warnings(caplog) == []  # KLStore.load compares the same way


def test_a_refill_after_add_tokens_records_the_new_tokenizer_digest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, _ = _indexed(tmp_path)
    enc = GaussianEncoder.from_pretrained(tmp_path / "model")
    store = MilvusKLStore(enc, uri=uri, index_type="flat")
    store.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])  # the per-add comparison has seen this tokenizer
    old = encoder_tokenizer(enc)
    store.delete(IDENTITY_IDS)
    enc.tokenizer.add_tokens(["zebra"])  # the same objects, another vocabulary
    assert encoder_tokenizer(enc) != old
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)  # re-indexed with it
    assert _config(store)["encoder_tokenizer_identity_sha256"] == encoder_tokenizer(enc)
    store.close()
    caplog.set_level(logging.WARNING)
    MilvusKLStore(enc, uri=uri, index_type="flat").close()
    assert model_warnings(caplog) == []


def test_a_refill_by_a_client_with_only_another_tokenizer_records_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, first = _indexed(tmp_path)
    other = GaussianEncoder.from_pretrained(tmp_path / "model")
    other.tokenizer.add_tokens(["zebra"])  # the same weights and config
    refill = MilvusKLStore(other, uri=uri, index_type="flat")
    refill.delete(IDENTITY_IDS)
    caplog.set_level(logging.INFO, logger="kl_retrievers.store.milvus")
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    assert _config(refill)["encoder_tokenizer_identity_sha256"] == encoder_tokenizer(other)
    refill.close()
    infos = [r.getMessage() for r in caplog.records if "is empty: it now records" in r.getMessage()]
    assert len(infos) == 1 and "tokenizer (vocabulary, normalisation, added tokens) SHA-256" in infos[0]
    caplog.clear()
    MilvusKLStore(first, uri=uri, index_type="flat").close()
    assert len(model_warnings(caplog)) == 1  # the first tokenizer is now the other one


def test_the_refill_message_names_what_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, first = _indexed(tmp_path)
    other = _reconfigured(tmp_path)
    refill = MilvusKLStore(other, uri=uri, index_type="flat")
    refill.delete(IDENTITY_IDS)
    caplog.set_level(logging.INFO, logger="kl_retrievers.store.milvus")
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    refill.close()
    infos = [r.getMessage() for r in caplog.records if "is empty: it now records" in r.getMessage()]
    assert len(infos) == 1
    assert "pooling 'cls' vs 'mean'" in infos[0] and infos[0].count(str(first.weights_sha256)) == 1


def test_an_attached_client_is_warned_once_when_another_refills_the_collection_with_other_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pymilvus import MilvusClient

    make_tiny_encoder().save_pretrained(tmp_path / "model")
    client = MilvusClient(str(tmp_path / "kl.db"))
    attached = MilvusKLStore(GaussianEncoder.from_pretrained(tmp_path / "model"), client=client, index_type="flat")
    attached.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    refill = MilvusKLStore(_reconfigured(tmp_path), client=client, index_type="flat")
    refill.delete(IDENTITY_IDS)
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)  # the record is now pooling 'mean'
    caplog.clear()  # the refilling client's warning on attach
    attached.search(QUERIES[0], k=3)
    warned = model_warnings(caplog)
    assert len(warned) == 1 and "pooling 'mean' vs 'cls'" in warned[0]
    attached.add(IDENTITY_TEXTS[:1], ids=["later"])
    attached.search(QUERIES[1], k=3)
    assert len(model_warnings(caplog)) == 1  # once per record


def test_a_client_attached_before_a_refill_publishes_the_new_config_not_its_old_one(tmp_path: Path) -> None:
    from pymilvus import MilvusClient

    make_tiny_encoder().save_pretrained(tmp_path / "model")
    client = MilvusClient(str(tmp_path / "kl.db"))
    first = MilvusKLStore(GaussianEncoder.from_pretrained(tmp_path / "model"), client=client, index_type="flat")
    first.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    other = _reconfigured(tmp_path)
    second = MilvusKLStore(other, client=client, index_type="flat")  # attached while the record is 'cls'
    refill = MilvusKLStore(other, client=client, index_type="flat")
    refill.delete(IDENTITY_IDS)
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    assert _config(refill)["encoder_config"] == other.config.to_dict()
    for store in (first, second):
        store.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])  # re-reads the collection's state
        state = store._read_state()
        assert store._publish(state.norm_bound, state.offset, rewrite=False)  # e.g. a new M
        assert _config(store)["encoder_config"] == other.config.to_dict()


def test_a_lost_refill_race_names_how_the_standing_record_differs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymilvus import MilvusClient

    make_tiny_encoder().save_pretrained(tmp_path / "model")
    client = MilvusClient(str(tmp_path / "kl.db"))
    setup = MilvusKLStore(
        GaussianEncoder.from_pretrained(tmp_path / "model"), client=client, index_type="flat", metric="IP"
    )
    setup.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    setup.delete(IDENTITY_IDS)
    loser = MilvusKLStore(_reconfigured(tmp_path), client=client, index_type="flat", metric="IP")
    winner = MilvusKLStore(
        GaussianEncoder.from_pretrained(tmp_path / "model"), client=client, index_type="flat", metric="IP"
    )
    winner.encoder.tokenizer.add_tokens(["zebra"])
    write = loser._alter_properties

    raced: list[bool] = []

    def racing(properties: dict[str, str]) -> None:
        write(properties)
        if not raced:
            raced.append(True)
            winner._take_own_weights_if_empty()  # lands between the loser's write and its read-back

    monkeypatch.setattr(loser, "_alter_properties", racing)
    caplog.clear()  # the loser's warning on attach
    loser.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])
    assert raced
    assert _config(loser)["encoder_tokenizer_identity_sha256"] == encoder_tokenizer(winner.encoder)
    lost = [r.getMessage() for r in caplog.records if "its weights record stands" in r.getMessage()]
    assert len(lost) == 1 and "pooling 'cls' vs 'mean'" in lost[0] and "tokenizer" in lost[0]
    assert len(model_warnings(caplog)) == 1  # the loser, of the record that stands


def _old_collection(tmp_path: Path) -> str:
    """A collection indexed with the tiny encoder whose config lacks the encoder config and tokenizer (as written
    before 2026-12-06); its URI."""
    uri, first = _indexed(tmp_path)
    store = MilvusKLStore(first, uri=uri, index_type="flat")
    config = _config(store)
    del config["encoder_config"], config["encoder_tokenizer_identity_sha256"]
    store.client.alter_collection_properties(
        store.collection_name, properties={milvus_mod._CONFIG_KEY: json.dumps(config)}
    )
    store.close()
    return uri


def test_an_old_collection_emptied_and_refilled_gains_the_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = _old_collection(tmp_path)
    other = _reconfigured(tmp_path)
    refill = MilvusKLStore(other, uri=uri, index_type="flat")
    refill.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])  # not empty: still no record
    assert _config(refill).get("encoder_config") is None
    refill.delete(IDENTITY_IDS)
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)  # re-indexed with pooling 'mean'
    config = _config(refill)
    refill.close()
    assert config["encoder_config"] == other.config.to_dict()
    assert config["encoder_tokenizer_identity_sha256"] == encoder_tokenizer(other)
    caplog.set_level(logging.WARNING)
    MilvusKLStore(GaussianEncoder.from_pretrained(tmp_path / "model"), uri=uri, index_type="flat").close()
    warned = model_warnings(caplog)
    assert len(warned) == 1 and "pooling 'mean' vs 'cls'" in warned[0]


def test_adding_to_an_old_collection_counts_at_most_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _old_collection(tmp_path)
    store = MilvusKLStore(GaussianEncoder.from_pretrained(tmp_path / "model"), uri=uri, index_type="flat")
    calls = _counting(store, monkeypatch)
    for i in range(3):
        store.add(IDENTITY_TEXTS[:1], ids=[f"more{i}"])
    store.close()
    assert len(calls) <= 1  # once at most (the collection is not empty), not per add
