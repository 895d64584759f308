"""The stale-index warning of an index trained by k-means counts the rows written (added or upserted) since its
last build, not the live documents: a store that deletes most of its documents and takes as many new ones, again
and again, holds as many documents as it was built over, in lists trained on none of them. It used to compare the
live count with the build's, and never warned.

Pure growth warns as before (tests/test_approx_store_tuning_messages.py): the build's documents plus those written
since come to more than ``STALE_GROWTH`` times the build's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore
from kl_retrievers.store._engines import STALE_GROWTH

pytest.importorskip("faiss")


def _stale(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "index's k-means was trained " in str(w.message)]


@pytest.mark.parametrize("upsert", [False, True])
def test_churn_without_growth_warns_once_the_writes_pass_the_factor(upsert: bool) -> None:
    rng = np.random.default_rng(0)
    batch = Gaussians(
        rng.normal(size=(32, 8)).astype(np.float32), np.exp(rng.normal(0.0, 0.3, (32, 8))).astype(np.float32)
    )
    store = KLStore(index_type="ivf", nlist=4)
    store.add(gaussians=batch, ids=[f"a{i}" for i in range(32)])  # built over these 32
    assert store.is_built
    live = [f"a{i}" for i in range(32)]
    caught_per_cycle = []
    for cycle in range(STALE_GROWTH + 1):  # 24 of the 32 replaced per cycle: 32 + 5 x 24 = 152 > 4 x 32
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if upsert:  # new Gaussians under the same ids (a copy of the batch: norms under M, no rebuild)
                store.add(gaussians=batch[:24], ids=live[:24])
            else:
                store.delete(live[:24])
                new = [f"c{cycle}-{i}" for i in range(24)]
                store.add(gaussians=batch[:24], ids=new)
                live = live[24:] + new
        caught_per_cycle.append(_stale(caught))
        assert len(store) == 32 and store.rebuild_count == 0
    assert caught_per_cycle[:STALE_GROWTH] == [[]] * STALE_GROWTH
    (message,) = caught_per_cycle[STALE_GROWTH]
    assert "when the store held 32 documents, and 120 have been added or upserted since: 4.8 times" in message
    assert "(it now holds 32)" in message and "Call store.rebuild()" in message
    store.rebuild()  # retrained over the live documents: armed again, counting from zero
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.add(gaussians=batch[:24], ids=live[:24])
    assert not _stale(caught)
