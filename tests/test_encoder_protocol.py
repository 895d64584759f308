"""The stores' ``Encoder`` protocol: the package's encoders and a simple user encoder satisfy it.

The static half is :func:`_encoders_are_encoders`, never called: mypy checks it over ``tests`` (``make typecheck``),
so a change to the protocol or to an encoder's signature that breaks ``e: Encoder = load_default_model()`` fails
the suite's type check. The runtime half checks that the stores call an encoder as the protocol says (the texts by
position, ``batch_size`` and ``show_progress_bar`` by keyword), so an encoder written to the protocol serves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore
from kl_retrievers.store._base import Encoder, SearchResult

if TYPE_CHECKING:
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.langchain import EmbeddingsGaussianEncoder, KLEmbeddings
    from kl_retrievers.onnx import OnnxGaussianEncoder
    from kl_retrievers.store import MilvusKLStore


class UserEncoder:
    """A simple user encoder, written as the docs describe one: ``encode_queries`` / ``encode_documents`` giving
    numpy Gaussians, with the usual positional-or-keyword signature."""

    name_or_path = "my-encoder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool | None]] = []

    def _encode(self, texts: Sequence[str]) -> Gaussians:
        mean = np.array([[float(len(t)), float(t.count("a"))] for t in texts], dtype=np.float32).reshape(-1, 2)
        return Gaussians(mean, np.ones_like(mean))

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False) -> Gaussians:
        self.calls.append(("queries", batch_size, show_progress_bar))
        return self._encode(texts)

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> Gaussians:
        self.calls.append(("documents", batch_size, show_progress_bar))
        return self._encode(texts)


class KeywordOnlyEncoder:
    """An encoder whose texts are positional-only and whose options are keyword-only, without defaults: what the
    stores pass and nothing more (no ``name_or_path`` either)."""

    def __init__(self) -> None:
        self.user = UserEncoder()

    def encode_queries(self, items: Sequence[str], /, *, batch_size: int, show_progress_bar: bool) -> Gaussians:
        return self.user.encode_queries(items, batch_size, show_progress_bar)

    def encode_documents(
        self, items: Sequence[str], /, *, batch_size: int, show_progress_bar: bool | None
    ) -> Gaussians:
        return self.user.encode_documents(items, batch_size, show_progress_bar)


def _encoders_are_encoders(
    torch_encoder: GaussianEncoder,
    onnx_encoder: OnnxGaussianEncoder,
    embeddings: KLEmbeddings,
    langchain_encoder: EmbeddingsGaussianEncoder,
    milvus: MilvusKLStore,
    hybrid: KLHybridStore,
) -> list[Encoder | None]:
    """Never called: mypy checks that each assignment type-checks (the suite's ``mypy`` step fails if not)."""
    from kl_retrievers.pretrained import load_default_model, load_model

    encoders: list[Encoder] = [torch_encoder, onnx_encoder, embeddings, langchain_encoder, UserEncoder()]
    default: Encoder = load_default_model()
    onnx: Encoder = load_model("minilm-gauss-soup", backend="onnx")
    keyword_only: Encoder = KeywordOnlyEncoder()
    store = KLStore(encoder=default)
    store.encoder = onnx
    store.encoder = None
    stores_encoders: list[Encoder | None] = [store.encoder, milvus.encoder, hybrid.encoder, keyword_only]
    return [*encoders, *stores_encoders]


def test_a_store_calls_its_encoder_as_the_protocol_says() -> None:
    """Texts by position, ``batch_size`` and ``show_progress_bar`` by keyword: an encoder whose texts are
    positional-only and options keyword-only (the protocol's shape) adds and searches by text."""
    encoder = KeywordOnlyEncoder()
    store = KLStore(encoder=encoder, batch_size=7)
    store.add(["aaa", "b", "ab"], ids=["x", "y", "z"])
    hits = store.search("aaa", k=1)
    assert [h.id for h in hits] == ["x"]
    assert isinstance(hits[0], SearchResult)
    assert encoder.user.calls == [("documents", 7, False), ("queries", 7, False)]


def test_a_simple_user_encoder_serves_a_store() -> None:
    encoder: Encoder = UserEncoder()
    store = KLStore(encoder=encoder)
    store.add(["aaa", "b"], ids=["x", "y"])
    assert store.encoder is encoder
    assert [h.id for h in store.search("b", k=2)] == ["y", "x"]
