"""The ONNX encoder tokenizes each text once, however many chunks of batches its input spans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import WORDS, make_tiny_encoder
from kl_retrievers.onnx import _TOKENIZE_CHUNK, OnnxGaussianEncoder


class _CountingTokenizer:
    """A tokenizer that records how many texts each of its ``encode*`` calls is given."""

    def __init__(self, inner: Any, calls: list[int]) -> None:
        self._inner, self._calls = inner, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not name.startswith("encode"):
            return attr

        def counted(texts: Any, *args: Any, **kwargs: Any) -> Any:
            self._calls.append(len(texts) if isinstance(texts, list) else 1)
            return attr(texts, *args, **kwargs)

        return counted


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder().export_onnx(tmp_path_factory.mktemp("tiny") / "f32", quantize=None)


def _counted(enc: OnnxGaussianEncoder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The texts given to each call of the truncating tokenizers (those of a token budget) from now on."""
    calls: list[int] = []
    tokenizer_for = enc._tokenizer_for

    def spy(max_length: int | None) -> Any:
        tokenizer = tokenizer_for(max_length)
        return tokenizer if max_length is None else _CountingTokenizer(tokenizer, calls)

    monkeypatch.setattr(enc, "_tokenizer_for", spy)
    return calls


@pytest.mark.parametrize(("n", "batch_size"), [(300, 3), (2500, 32), (40, 8)])
def test_each_text_is_tokenized_once(
    onnx_folder: Path, monkeypatch: pytest.MonkeyPatch, n: int, batch_size: int
) -> None:
    rng = np.random.default_rng(n)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 40)))) for _ in range(n)]
    enc = OnnxGaussianEncoder(onnx_folder)
    expected = [enc.encode_documents([t], max_length=32).mean[0] for t in texts[:20]]  # one text a call
    calls = _counted(enc, monkeypatch)
    got = enc.encode_documents(texts, batch_size=batch_size, max_length=32).mean
    # (300, 3) and (2500, 32) span several chunks of batches (48 and 512 texts); (40, 8) is one
    assert sum(calls) == n, f"{sum(calls)} texts tokenized for {n} texts, in calls of {calls}"
    assert max(calls) <= _TOKENIZE_CHUNK
    np.testing.assert_allclose(got[:20], np.stack(expected), atol=1e-6)  # each row is its own text's
