"""The hybrid store's add encodes its texts in one ``encode_documents`` call, empty ones included.

The encoders warn once per ``encode_documents`` call about empty or whitespace-only documents (they all get the
same Gaussian and can rank high); the hybrid store relies on that warning and gives none of its own, so it must
hand every text of one add to the encoder in one call (the encoder batches inside it), and its KL half must not
encode them again.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import CountingEncoder
from kl_retrievers.hybrid import KLHybridStore

pytest.importorskip("bm25s")


class _Recording(CountingEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def encode_documents(self, texts: Any, **kw: Any) -> Any:
        self.calls.append((list(texts), kw))
        return super().encode_documents(texts, **kw)


def test_one_add_is_one_encode_documents_call_with_every_text(caplog: pytest.LogCaptureFixture) -> None:
    encoder = _Recording()
    store = KLHybridStore(encoder, fusion="rrf", batch_size=2)
    texts = ["", "kiwi", "   ", "fig plum", "\n", "pear"]
    store.add(texts, ids=[f"d{i}" for i in range(len(texts))])
    assert [t for t, _ in encoder.calls] == [texts]  # one call, every text in input order (batch_size 2 inside it)
    assert encoder.calls[0][1]["batch_size"] == 2
    assert not [r for r in caplog.records if r.name == "kl_retrievers.hybrid"]  # no warning of the store's own
    store.upsert(["", "kiwi kiwi"], ids=["d0", "d1"])
    assert len(encoder.calls) == 2 and encoder.calls[1][0] == ["", "kiwi kiwi"]
    assert len(store) == len(texts)
