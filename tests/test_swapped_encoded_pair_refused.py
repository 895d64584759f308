"""``load_encoded`` returns ``(gaussians, ids)`` and ``iter_encoded`` yields ``(ids, gaussians)``; a pair unpacked
the wrong way round and given to a store is refused naming the Gaussians and both orders (probe P3 tripped on the
orders), in ``add`` and in the calls taking ids (``delete``, ``get_by_ids``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers import KLStore
from kl_retrievers.sharded import encode_corpus, iter_encoded, load_encoded

ORDERS = r"got Gaussians \(.*load_encoded returns \(gaussians, ids\), iter_encoded yields \(ids, gaussians\)\)"


def test_a_swapped_pair_is_refused_naming_both_orders(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"text number {i}\n" for i in range(4)))
    encode_corpus(corpus, tmp_path / "enc", encoder=make_tiny_encoder(), shard_size=2, show_progress_bar=False)
    ids, gaussians = load_encoded(tmp_path / "enc")  # the wrong way round: iter_encoded's order
    store = KLStore()
    with pytest.raises(TypeError, match=rf"^ids must be a str or a sequence of str; {ORDERS}"):
        store.add(gaussians=gaussians, ids=ids)  # type: ignore[arg-type]
    for shard_gaussians, shard_ids in iter_encoded(tmp_path / "enc"):  # load_encoded's order, the wrong one here
        with pytest.raises(TypeError, match=ORDERS):
            store.add(gaussians=shard_gaussians, ids=shard_ids)  # type: ignore[arg-type]
    good, good_ids = load_encoded(tmp_path / "enc")
    store.add(gaussians=good, ids=good_ids)
    with pytest.raises(TypeError, match=ORDERS):
        store.delete(good)
    with pytest.raises(TypeError, match=ORDERS):
        store.get_by_ids(good)
    assert len(store) == 4
