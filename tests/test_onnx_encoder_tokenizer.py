"""The ONNX encoders have ``model.tokenizer``, as the torch encoder and sentence-transformers models do.

It is a ``tokenizers.Tokenizer`` (the ``tokenizers`` library's: the ONNX path imports no torch or transformers),
read-only, the same object at every read, and not the tokenizer the encoder uses (that tokenizes with copies of
its own, one per token budget, so threads need no lock). A sentence-transformers user expects ``model.tokenizer``
to be the live one, so the methods that change a tokenizer (``add_tokens``, ``enable_truncation``...) raise,
naming what to do instead, where they silently changed nothing before; ``copy.deepcopy`` gives a plain copy that
may be changed. What identifies the encoder's tokenizer (encoding caches, stores' records) is unchanged by it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import tiny_torch_and_onnx, write_tiny_shared_backbone

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tiny_torch_and_onnx(tmp_path_factory.mktemp("tok"))


def test_the_onnx_encoder_tokenizes_as_the_torch_encoder(pair: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    onnx, enc = pair["onnx"], pair["torch"]
    tok = onnx.tokenizer
    assert isinstance(tok, Tokenizer)
    text = "aspirin lowers fever"
    assert tok.encode(text).ids == enc.tokenizer(text)["input_ids"]
    assert [e.ids for e in tok.encode_batch([text, "fever"])] == enc.tokenizer([text, "fever"])["input_ids"]
    assert tok.token_to_id("[VAR]") == onnx.config.var_token_id
    assert tok.get_vocab_size() == len(enc.tokenizer)


def test_it_is_read_only_one_object_and_the_encoders_own_copy(pair: dict[str, Any]) -> None:
    import copy

    from tokenizers import Tokenizer, normalizers

    onnx = pair["onnx"]
    tok = onnx.tokenizer
    assert onnx.tokenizer is tok
    with pytest.raises(AttributeError):
        onnx.tokenizer = tok
    texts = ["a fairly long passage about aspirin and fever, with several words in it"]
    before = onnx.encode_documents(texts)
    vocab = tok.get_vocab_size()
    refused = {
        "add_tokens": ((["zebra"],), {}, "vocabulary is fixed"),
        "add_special_tokens": ((["[ZEBRA]"],), {}, "vocabulary is fixed"),
        "enable_truncation": ((), {"max_length": 3}, "pass max_length= to encode_queries / encode_documents"),
        "no_truncation": ((), {}, "pass max_length="),
        "enable_padding": ((), {"length": 40}, "pads each batch itself"),
        "no_padding": ((), {}, "pads each batch itself"),
        "train": (([],), {}, "vocabulary is fixed"),
        "train_from_iterator": ((["a b"],), {}, "vocabulary is fixed"),
    }
    for method, (args, kwargs, instead) in refused.items():
        with pytest.raises(TypeError, match="^OnnxGaussianEncoder.tokenizer is read-only: ") as caught:
            getattr(tok, method)(*args, **kwargs)
        message = str(caught.value)
        assert f"{method}(" in message and instead in message and "copy.deepcopy(model.tokenizer)" in message
    with pytest.raises(TypeError, match=r"read-only: enable_truncation\(max_length=3\) would change only this copy"):
        tok.enable_truncation(max_length=3)
    assert isinstance(tok, Tokenizer) and tok.get_vocab_size() == vocab
    assert tok.truncation is None and tok.padding is None
    # a plain copy may be changed, and changes nothing the encoder encodes either
    own = copy.deepcopy(tok)
    assert own.add_tokens(["zebra"]) == 1 and own.get_vocab_size() == vocab + 1
    own.enable_truncation(max_length=3)
    assert tok.get_vocab_size() == vocab and tok.truncation is None
    # its parts cannot be guarded (the tokenizers library gives no way): replacing one changes this object only
    original = tok.normalizer
    tok.normalizer = normalizers.Replace("aspirin", "fever")
    try:
        after = onnx.encode_documents(texts)
    finally:
        tok.normalizer = original
    np.testing.assert_array_equal(before.mean, after.mean)
    np.testing.assert_array_equal(before.var, after.var)


def test_copies_have_one_and_the_tokenizer_identity_is_unchanged(pair: dict[str, Any]) -> None:
    import copy

    from kl_retrievers.encoding_cache import _tokenizer_digest, canonical_json, tokenizer_identity

    onnx = pair["onnx"]
    _ = onnx.tokenizer
    for other in (pickle.loads(pickle.dumps(onnx)), copy.deepcopy(onnx)):
        assert other.tokenizer is not onnx.tokenizer
        assert other.tokenizer.encode("fever").ids == onnx.tokenizer.encode("fever").ids
    assert copy.copy(onnx).tokenizer is onnx.tokenizer
    # the digest (encoding caches, stores' tokenizer records) reads model.tokenizer now: still tokenizer.json's
    text_digest = hashlib.sha256(canonical_json(tokenizer_identity(onnx._tokenizer_json)).encode()).hexdigest()
    assert _tokenizer_digest(onnx) == text_digest
    assert _tokenizer_digest(onnx) == _tokenizer_digest(pair["torch"])


def test_the_shared_backbone_encoder_has_its_folders_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.onnx_heads as onnx_heads
    from kl_retrievers.hub import sha256_file

    enc, model_dir, graph_dir = write_tiny_shared_backbone(tmp_path)
    backbone = onnx_heads.SharedBackbone(
        "tiny-bert", "0" * 64, sha256_file(graph_dir / "model.onnx"), "pip install tiny-graph", lambda: graph_dir
    )
    monkeypatch.setitem(onnx_heads.SHARED_BACKBONES, "tiny-bert", lambda: backbone)
    heads = onnx_heads.OnnxHeadsGaussianEncoder(model_dir)
    assert heads.tokenizer.encode("aspirin lowers fever").ids == enc.tokenizer("aspirin lowers fever")["input_ids"]


def test_the_tokenizer_needs_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from kl_retrievers import load_model\n"
        "model = load_model(backend='onnx')\n"
        "print(type(model.tokenizer).__name__, model.tokenizer.encode('fever').tokens[0])\n"
    )
    env = {**os.environ, "KL_RETRIEVERS_ONNX_CACHE": str(tmp_path / "cache"), "KL_RETRIEVERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["Tokenizer", "[CLS]"]


def test_the_digest_hashes_tokenizer_json_as_written_by_another_tokenizers_version(
    pair: dict[str, Any], tmp_path: Path
) -> None:
    """A tokenizer.json that leaves out a field the installed tokenizers writes (an export under another version)
    keeps its digest and fingerprint: they hash the file's text, not the installed library's rewrite of it."""
    import json
    import shutil

    from kl_retrievers.encoding_cache import _tokenizer_digest, canonical_json, model_fingerprint, tokenizer_identity
    from kl_retrievers.hub import sha256_file
    from kl_retrievers.onnx import OnnxGaussianEncoder
    from kl_retrievers.store._format import encoder_tokenizer

    folder = tmp_path / "older"
    shutil.copytree(Path(pair["onnx"]._model_file).parent, folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert "strip_accents" in spec["normalizer"]
    del spec["normalizer"]["strip_accents"]  # a default an older tokenizers left out
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg["tokenizer_sha256"]["tokenizer.json"] = sha256_file(folder / "tokenizer.json")
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")

    onnx = OnnxGaussianEncoder(folder)
    raw = (folder / "tokenizer.json").read_text(encoding="utf-8")
    raw_digest = hashlib.sha256(canonical_json(tokenizer_identity(raw)).encode()).hexdigest()
    assert "strip_accents" in onnx.tokenizer.to_str()  # the installed tokenizers writes it back
    assert _tokenizer_digest(onnx) == encoder_tokenizer(onnx) == raw_digest
    fingerprint = model_fingerprint(onnx)
    _ = onnx.tokenizer  # reading the property first changes nothing
    assert model_fingerprint(OnnxGaussianEncoder(folder)) == fingerprint
    assert _tokenizer_digest(onnx) == raw_digest
