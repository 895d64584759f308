"""``OnnxGaussianEncoder.tokenizer`` refuses the calls that would change it (``TypeError`` naming the call): a long
call was cut at 80 characters with nothing to say so; it now ends with ``...``. Copies of the tokenizer itself
(``copy.copy``, ``copy.deepcopy``, a pickle) are plain tokenizers that may be changed; a pickled or deep-copied
encoder's tokenizer is read-only again."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_torch_and_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tiny_torch_and_onnx(tmp_path_factory.mktemp("tok"))


def test_a_long_refused_call_is_cut_with_an_ellipsis(pair: dict[str, Any]) -> None:
    tok = pair["onnx"].tokenizer
    with pytest.raises(TypeError) as caught:
        tok.add_tokens(["z" * 200])
    shown = re.search(r"add_tokens\((.*)\) would change only this copy", str(caught.value))
    assert shown is not None
    assert shown.group(1) == repr(["z" * 200])[:77] + "..."
    with pytest.raises(TypeError, match=r"enable_truncation\(max_length=3\) would change"):  # short: whole
        tok.enable_truncation(max_length=3)


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_copies_of_the_tokenizer_are_plain_tokenizers(pair: dict[str, Any], how: str) -> None:
    tok = pair["onnx"].tokenizer
    vocab = tok.get_vocab_size()
    other = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": lambda t: pickle.loads(pickle.dumps(t))}[how](tok)
    assert other.add_tokens(["zebra"]) == 1 and other.get_vocab_size() == vocab + 1
    other.enable_truncation(max_length=3)
    assert tok.get_vocab_size() == vocab and tok.truncation is None


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_encoders_tokenizer_is_read_only(pair: dict[str, Any], how: str) -> None:
    onnx = pair["onnx"]
    _ = onnx.tokenizer
    other = copy.deepcopy(onnx) if how == "deepcopy" else pickle.loads(pickle.dumps(onnx))
    with pytest.raises(TypeError, match=r"^OnnxGaussianEncoder\.tokenizer is read-only: add_tokens\("):
        other.tokenizer.add_tokens(["zebra"])
    assert other.tokenizer.encode("fever").ids == onnx.tokenizer.encode("fever").ids


def test_the_tokenizer_documents_what_it_cannot_refuse() -> None:
    from kl_retrievers.onnx import OnnxGaussianEncoder

    doc = " ".join((OnnxGaussianEncoder.tokenizer.__doc__ or "").split())
    assert "encode_special_tokens" in doc
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "onnx.md").read_text().split())
    assert "`encode_special_tokens` setting can still be replaced" in page
