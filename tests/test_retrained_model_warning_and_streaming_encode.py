"""Probe fixes: a store warns when its model's weights changed, streaming encode checks every record's
UTF-8 before any shard, counts records in its bar, an ONNX export without its graph says so, and per-query
files refuse a suffix they would not honour (``.csv`` is written as CSV)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import IDENTITY_TEXTS, make_tiny_encoder, retrain_in_place, weights_warnings
from kl_retrievers import KLStore, load_model
from kl_retrievers._config import NotAnEncoderError
from kl_retrievers.cli import _read_records, main
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.evaluation import load_per_query, save_per_query
from kl_retrievers.onnx import OnnxGaussianEncoder
from kl_retrievers.sharded import encode_corpus
from kl_retrievers.store import StoreFormatError

TEXTS = IDENTITY_TEXTS


def _saved_model(folder: Path, seed: int = 0) -> GaussianEncoder:
    make_tiny_encoder(seed=seed).save_pretrained(folder)
    return GaussianEncoder.from_pretrained(folder)


# ---------------------------------------------------------------- 1. weights identity of a store's encoder


def test_store_loaded_after_its_model_was_retrained_in_place_warns_naming_both_identities(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model"
    enc = _saved_model(model)
    before = enc.weights_sha256
    assert isinstance(before, str) and len(before) == 64
    store = KLStore(enc)
    store.add(TEXTS, ids=["a", "b", "c", "d"])
    store.save(tmp_path / "store")
    assert json.loads((tmp_path / "store" / "config.json").read_text())["encoder"]["weights_sha256"] == before

    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "store", encoder=GaussianEncoder.from_pretrained(model))
    assert weights_warnings(caplog) == []  # the same weights: nothing to say

    retrain_in_place(model)
    after = GaussianEncoder.from_pretrained(model)
    assert after.weights_sha256 not in (None, before)
    KLStore.load(tmp_path / "store", encoder=after)
    (message,) = weights_warnings(caplog)
    assert before in message and str(after.weights_sha256) in message
    assert "re-indexed" in message and "wrong" in message


def test_store_loaded_without_encoder_warns_when_it_loads_the_retrained_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model"
    store = KLStore(_saved_model(model))
    store.add(TEXTS, ids=["a", "b", "c", "d"])
    store.save(tmp_path / "store")
    retrain_in_place(model)
    caplog.set_level(logging.WARNING)
    loaded = KLStore.load(tmp_path / "store")
    loaded._load_saved_encoder()  # what the adapters and the hybrid store do to encode text
    assert len(weights_warnings(caplog)) == 1


def test_cli_search_of_a_store_whose_model_was_retrained_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model"
    make_tiny_encoder().save_pretrained(model)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    store = tmp_path / "store"
    assert main(["index", str(corpus), "--out", str(store), "--model", str(model), "--no-progress"]) == 0
    caplog.set_level(logging.WARNING)
    assert main(["search", str(store), "bees", "-k", "1"]) == 0
    assert weights_warnings(caplog) == []
    retrain_in_place(model)
    assert main(["search", str(store), "bees", "-k", "1"]) == 0
    assert len(weights_warnings(caplog)) == 1


def test_torch_store_loaded_with_the_onnx_export_of_the_same_folder_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model"
    enc = _saved_model(model)
    onnx = OnnxGaussianEncoder(enc.export_onnx(tmp_path / "onnx", quantize=None))
    assert onnx.weights_sha256 == enc.weights_sha256
    for built, loaded, name in ((enc, onnx, "torch-built"), (onnx, enc, "onnx-built")):
        store = KLStore(built)
        store.add(TEXTS, ids=["a", "b", "c", "d"])
        store.save(tmp_path / name)
        caplog.set_level(logging.WARNING)
        KLStore.load(tmp_path / name, encoder=loaded)
    assert weights_warnings(caplog) == []
    # and the export of a retrained model does warn against a store of the old one
    retrain_in_place(model)
    new_onnx = OnnxGaussianEncoder(
        GaussianEncoder.from_pretrained(model).export_onnx(tmp_path / "onnx2", quantize=None)
    )
    KLStore.load(tmp_path / "torch-built", encoder=new_onnx)
    assert len(weights_warnings(caplog)) == 1


def test_bundled_model_by_name_or_folder_on_either_backend_reports_one_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path

    folder = str(bundled_model_path(DEFAULT_MODEL))
    torch_enc = load_model(DEFAULT_MODEL, backend="torch")
    others: list[Any] = [load_model(DEFAULT_MODEL, backend="onnx"), load_model(folder, backend="torch")]
    assert torch_enc.weights_sha256 is not None
    assert {e.weights_sha256 for e in others} == {torch_enc.weights_sha256}
    store = KLStore(torch_enc)
    store.add(TEXTS[:2], ids=["a", "b"])
    store.save(tmp_path / "store")
    caplog.set_level(logging.WARNING)
    for other in others:
        KLStore.load(tmp_path / "store", encoder=other)
    assert weights_warnings(caplog) == []


def test_no_identity_no_warning_and_a_bad_record_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "model"
    enc = _saved_model(model)
    store = KLStore(enc)
    store.add(TEXTS, ids=["a", "b", "c", "d"])
    store.save(tmp_path / "store")
    cfg_file = tmp_path / "store" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["encoder"]["weights_sha256"]  # as a store saved before it was recorded
    cfg_file.write_text(json.dumps(cfg))
    retrain_in_place(model)
    caplog.set_level(logging.WARNING)
    KLStore.load(tmp_path / "store", encoder=GaussianEncoder.from_pretrained(model))
    assert weights_warnings(caplog) == []

    # weights changed in memory since the load: the identity is unknown, so none is recorded
    changed = GaussianEncoder.from_pretrained(model)
    with torch.no_grad():
        changed.var_head.bias.add_(1.0)
    assert changed.weights_sha256 is None
    mem = KLStore(changed)
    mem.add(TEXTS[:1], ids=["a"])
    mem.save(tmp_path / "mem")
    assert "weights_sha256" not in json.loads((tmp_path / "mem" / "config.json").read_text())["encoder"]

    cfg["encoder"]["weights_sha256"] = 5
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError, match="encoder.weights_sha256"):
        KLStore.load(tmp_path / "store")


# ---------------------------------------------------------------- 2. lone surrogates fail the planning pass


def _corpus(path: Path, bad_line: int, bad: dict[str, str]) -> Path:
    rows = [{"_id": f"d{i}", "text": f"document number {i}"} for i in range(1, 21)]
    rows[bad_line - 1] = bad
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # json escapes \ud800
    return path


@pytest.mark.parametrize(
    ("bad", "what"),
    [({"_id": "bad1", "text": "bad \ud800 x"}, "text"), ({"_id": "x\ud800", "text": "fine"}, "id")],
)
def test_streaming_encode_refuses_a_lone_surrogate_before_any_shard_naming_the_line(
    tmp_path: Path, bad: dict[str, str], what: str
) -> None:
    corpus = _corpus(tmp_path / "corpus.jsonl", 13, bad)
    out = tmp_path / "enc"
    with pytest.raises(ValueError, match=rf"corpus\.jsonl, line 13: the {what} holds a lone surrogate U\+D800"):
        encode_corpus(corpus, out, encoder=make_tiny_encoder(), shard_size=5, show_progress_bar=False)
    assert not list(out.glob("shard-*"))  # nothing was encoded
    with pytest.raises(ValueError, match=rf"line 13: the {what} holds a lone surrogate"):
        _read_records(corpus, "auto")  # the one-shot path says the same


# ---------------------------------------------------------------- 3. the streaming bar counts records


def test_streaming_encode_bar_counts_records_and_forwards_the_per_shard_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": f"text {i}"}) + "\n" for i in range(12)))
    enc = make_tiny_encoder()
    seen: list[Any] = []
    encode = enc.encode_documents

    def spy(texts: Any, **kw: Any) -> Any:
        seen.append(kw.get("show_progress_bar"))
        return encode(texts, **kw)

    monkeypatch.setattr(enc, "encode_documents", spy)
    encode_corpus(corpus, tmp_path / "enc", encoder=enc, shard_size=5, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "12/12" in err and "record" in err  # records, not 3 shards
    assert seen == [None, None, None]  # the encoder's own bar: its terminal rule decides
    encode_corpus(corpus, tmp_path / "enc2", encoder=enc, shard_size=5, show_progress_bar=False)
    assert capsys.readouterr().err == "" and seen[3:] == [False, False, False]


# ---------------------------------------------------------------- 4. an ONNX export without its graph


def test_onnx_export_without_model_onnx_names_the_missing_file(tmp_path: Path) -> None:
    folder = make_tiny_encoder().export_onnx(tmp_path / "broken", quantize=None)
    (folder / "model.onnx").unlink()
    for backend in ("onnx", "torch", None):
        with pytest.raises(NotAnEncoderError) as info:
            load_model(str(folder), backend=backend)
        message = str(info.value)
        assert f"{folder / 'model.onnx'} is missing" in message and "config.json says" in message
        assert "load it with" not in message  # not the circular advice


# ---------------------------------------------------------------- 5. per-query files by suffix


def test_per_query_csv_is_csv_and_another_suffix_is_refused(tmp_path: Path) -> None:
    pq = {"q,1": {"ndcg@10": 0.25, "mrr@10": 0.5}, "q2": {"ndcg@10": 1.0}}
    save_per_query(tmp_path / "pq.csv", pq, meta={"model": "m"})
    lines = (tmp_path / "pq.csv").read_text().splitlines()
    assert lines[0] == "query_id,ndcg@10,mrr@10" and lines[1] == '"q,1",0.25,0.5' and lines[2] == "q2,1.0,"
    assert load_per_query(tmp_path / "pq.csv") == (pq, {})
    for name in ("pq.txt", "pq"):
        with pytest.raises(ValueError, match=r"not one of \.json .*\.tsv"):
            save_per_query(tmp_path / name, pq)
        assert not (tmp_path / name).exists()


def test_evaluate_per_query_csv_writes_csv(tmp_path: Path) -> None:
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(TEXTS)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "bread yeast"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    pq = tmp_path / "pq.csv"
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--per-query", str(pq)]) == 0
    text = pq.read_text()
    assert text.startswith("query_id,") and not text.lstrip().startswith("{")
    assert set(load_per_query(pq)[0]) == {"q1"}


# ---------------------------------------------------------------- 1b. the same check for a Milvus collection


def test_milvus_collection_attached_with_a_retrained_model_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.store.milvus import MilvusKLStore

    model = tmp_path / "model"
    enc = _saved_model(model)
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(enc, uri=uri, index_type="flat")
    store.add(TEXTS, ids=["a", "b", "c", "d"])
    store.close()
    caplog.set_level(logging.WARNING)
    same = MilvusKLStore(GaussianEncoder.from_pretrained(model), uri=uri, index_type="flat")
    same.close()
    assert weights_warnings(caplog) == []
    retrain_in_place(model)
    after = GaussianEncoder.from_pretrained(model)
    other = MilvusKLStore(after, uri=uri, index_type="flat")
    other.add(["a new document"], ids=["e"])  # the record of the old weights stays (the next attach warns)
    other.search("bees", k=1)
    other.close()
    (message,) = weights_warnings(caplog)
    assert str(enc.weights_sha256) in message and str(after.weights_sha256) in message and "re-indexed" in message
    again = MilvusKLStore(after, uri=uri, index_type="flat")
    again.close()
    assert len(weights_warnings(caplog)) == 2
