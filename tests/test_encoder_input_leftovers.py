"""Encoder input leftovers: one query batch rule, torch checked before encoding, empty inputs of a wrapper.

- :func:`kl_retrievers._encoding.query_batch_size` is the one rule (1 on a batch-dependent encoder) that the
  stores and the CLI share;
- ``convert_to="torch"`` / ``convert_to_tensor=True`` without torch fails before any batch is encoded,
  naming the extra to install (it failed only after the whole input was encoded);
- LangChain's ``EmbeddingsGaussianEncoder`` gives empty Gaussians of the vectors' dimension for no texts
  (``encode_queries([])`` raised "cannot reshape", ``encode_documents([])`` had dimension 1).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from conftest import block_modules
from kl_retrievers import Gaussians
from kl_retrievers._encoding import EncoderMixin, query_batch_size


class _Int8:
    batch_invariant = False


def test_query_batch_size_is_one_only_on_a_batch_dependent_encoder() -> None:
    assert query_batch_size(_Int8(), 32) == 1
    assert query_batch_size(SimpleNamespace(batch_invariant=True), 32) == 32
    assert query_batch_size(object(), 7) == 7  # an encoder without the attribute is taken as invariant


def test_the_stores_and_the_cli_use_the_one_rule() -> None:
    import kl_retrievers.cli as cli
    from kl_retrievers import hybrid, llama_index
    from kl_retrievers.store import _base

    # what KLStore, the hybrid store and LlamaIndex call
    assert _base.query_batch_size is hybrid.query_batch_size is llama_index._query_batch_size is query_batch_size
    assert not hasattr(cli, "_query_batch_size")  # no copy of the rule left in the CLI
    assert cli._QUERY_BATCH_SIZE == 32  # the CLI's batch size on a batch-invariant encoder, as before


class _Counting(EncoderMixin):
    """The smallest encoder on :class:`EncoderMixin`: counts the batches it encodes."""

    name_or_path = "counting"

    def __init__(self) -> None:
        self.config = SimpleNamespace(dim=4, max_length=16, query_max_length=8, extra={})
        self.batches = 0

    def _use_device(self, device: Any) -> None:
        pass

    def _encode_batches(
        self, texts: list[str], *, max_length: int, batch_size: int, show_bar: bool, desc: str
    ) -> Gaussians:
        self.batches += -(-len(texts) // batch_size)
        mean = np.zeros((len(texts), 4), np.float32)
        return Gaussians(mean, np.ones_like(mean))


@pytest.mark.parametrize(
    "call",
    [
        lambda enc: enc.encode_queries(["a query"] * 10, batch_size=2, convert_to="torch"),
        lambda enc: enc.encode_documents(["a document"] * 10, batch_size=2, convert_to_tensor=True),
        lambda enc: enc.encode_query(["a query"] * 10, batch_size=2, convert_to_numpy=False),
        lambda enc: enc.encode_document([], convert_to_tensor=True),
    ],
    ids=["encode_queries", "encode_documents", "encode_query", "empty"],
)
def test_torch_output_without_torch_fails_before_encoding(monkeypatch: pytest.MonkeyPatch, call: Any) -> None:
    block_modules(monkeypatch, "torch")
    enc = _Counting()
    with pytest.raises(ModuleNotFoundError, match=r'pip install "kl-retrievers\[torch\]"') as err:
        call(enc)
    assert enc.batches == 0  # nothing was encoded before the error
    assert err.value.name == "torch" and "convert_to='torch' (or convert_to_tensor=True)" in str(err.value)


def test_numpy_output_needs_no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    block_modules(monkeypatch, "torch")
    enc = _Counting()
    g = enc.encode_documents(["a", "b", "c"], batch_size=2)
    assert g.mean.shape == (3, 4) and not g.is_torch and enc.batches == 2


# -------------------------------------------------------------- LangChain's EmbeddingsGaussianEncoder
class _Fake:
    """A LangChain Embeddings of 4-dim vectors that counts its calls."""

    def __init__(self) -> None:
        from langchain_core.embeddings import DeterministicFakeEmbedding

        self.inner = DeterministicFakeEmbedding(size=4)
        self.calls = 0

    def embeddings(self) -> Any:
        from langchain_core.embeddings import Embeddings

        fake = self

        class Counted(Embeddings):
            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                fake.calls += 1
                return fake.inner.embed_documents(texts)

            def embed_query(self, text: str) -> list[float]:
                fake.calls += 1
                return fake.inner.embed_query(text)

        return Counted()


@pytest.mark.parametrize("method", ["encode_queries", "encode_documents"])
def test_wrapper_gives_empty_gaussians_of_the_vectors_dimension(method: str) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import EmbeddingsGaussianEncoder

    fake = _Fake()
    enc = EmbeddingsGaussianEncoder(fake.embeddings(), variance=2.0)
    empty = getattr(enc, method)([])
    assert empty.mean.shape == empty.var.shape == (0, 4)
    assert empty.mean.dtype == np.float32 and fake.calls == 1  # the dimension learnt from one call
    again = getattr(enc, method)([])
    assert again.mean.shape == (0, 4) and fake.calls == 1  # remembered
    full = Gaussians.concat([empty, enc.encode_documents(["a", "b"])])
    assert full.mean.shape == (2, 4) and np.all(full.var == 2.0)


def test_wrapper_empty_input_after_a_call_makes_no_call() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import EmbeddingsGaussianEncoder

    fake = _Fake()
    enc = EmbeddingsGaussianEncoder(fake.embeddings())
    enc.encode_queries(["q"])
    assert fake.calls == 1
    assert enc.encode_queries([]).dim == enc.encode_documents([]).dim == 4
    assert fake.calls == 1
