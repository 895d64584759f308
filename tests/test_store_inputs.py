"""Issue 25 items 2, 3 and 8: no deadlock with callable filters, no quiet coercion of ids or settings,
and token budgets beyond the backbone's position embeddings clamped instead of crashing."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers import Gaussians, KLStore


def _store(n: int = 20, k: int = 4) -> KLStore:
    store = KLStore()
    store.add(gaussians=random_gaussians(n, k), ids=[f"d{i}" for i in range(n)])
    return store


def _run_threads(*targets: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Run each target on a daemon thread; fail (naming the hung ones) unless all end within ``timeout``."""
    errors: dict[str, Any] = {}

    def wrap(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors[fn.__name__] = exc

        return run

    threads = [threading.Thread(target=wrap(fn), name=fn.__name__, daemon=True) for fn in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"deadlock: {hung} still blocked after {timeout} s"
    return errors


# ---------------------------------------------------------------- item 3: no deadlock
def test_a_callable_filter_that_reads_the_store_while_a_writer_waits_does_not_deadlock() -> None:
    store = _store()
    query = random_gaussians(1, 4, seed=5)
    in_filter = threading.Event()
    state: dict[str, Any] = {}

    def predicate(meta: Mapping[str, Any]) -> bool:
        if not in_filter.is_set():
            in_filter.set()
            deadline = time.monotonic() + 5
            while not store._lock._waiting_writers and time.monotonic() < deadline:
                time.sleep(0.001)
            state["writer_waiting"] = store._lock._waiting_writers > 0
            state["live"] = len(store.ids)  # re-reads the store while the writer waits
        return True

    def search() -> None:
        state["hits"] = store.search(query, k=3, filter=predicate)

    def write() -> None:
        assert in_filter.wait(5)
        store.add(gaussians=random_gaussians(1, 4, seed=9), ids=["new"])
        state["added"] = True

    errors = _run_threads(search, write)
    assert not errors
    assert state["writer_waiting"], "the scenario needs the writer to be waiting while the filter reads"
    assert state["live"] == 20 and len(state["hits"]) == 3 and state["added"] and "new" in store


def test_modifying_the_store_inside_a_callable_filter_raises_instead_of_deadlocking() -> None:
    store = _store()
    query = random_gaussians(1, 4, seed=5)
    state: dict[str, Any] = {}

    def predicate(meta: Mapping[str, Any]) -> bool:
        store.delete(["d1"])
        return True

    def search() -> None:
        with pytest.raises(RuntimeError, match="callable filter"):
            store.search(query, k=3, filter=predicate)
        state["done"] = True

    assert not _run_threads(search) and state["done"]
    assert "d1" in store and len(store.search(query, k=30)) == 20  # the lock was released
    store.delete(["d1"])  # and a write after the search works
    assert "d1" not in store


def test_the_lock_is_reentrant_for_the_writer_and_still_excludes_other_threads() -> None:
    lock = _store()._lock
    order: list[str] = []

    def reader() -> None:
        with lock.read():
            order.append("reader")

    def writer() -> None:
        with lock.write():
            with lock.read(), lock.write():  # the writing thread may read and write again
                order.append("nested")
            t = threading.Thread(target=reader, daemon=True)
            t.start()
            time.sleep(0.05)
            order.append("writer done")  # the reader must still be blocked here
        t.join(5)

    assert not _run_threads(writer)
    assert order == ["nested", "writer done", "reader"]


# ---------------------------------------------------------------- item 8: ids are strings, never str()-ed
@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (["a", None], r"ids\[1\] must be a str; got NoneType"),
        ([1, 2], r"ids\[0\] must be a str; got int"),
        (b"ab", "ids must be a str or a sequence of str; got bytes"),
        ([b"a", b"b"], r"ids\[0\] must be a str; got bytes"),
    ],
)
def test_add_refuses_ids_that_are_not_strings(ids: Any, match: str) -> None:
    store = KLStore()
    with pytest.raises(TypeError, match=match):
        store.add(gaussians=random_gaussians(2, 3), ids=ids)
    assert len(store) == 0


def test_a_bare_string_is_one_id_for_get_gaussians_get_by_ids_and_delete() -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(3, 3), ids=["ab", "a", "b"])
    one = store.get_gaussians("ab")
    assert len(one) == 1
    np.testing.assert_array_equal(one.mean, store.get_gaussians(["ab"]).mean)
    assert [d.id for d in store.get_by_ids("ab")] == ["ab"]
    assert store.delete("ab").deleted == ["ab"] and sorted(store.ids) == ["a", "b"]
    with pytest.raises(KeyError, match="unknown id"):
        store.get_gaussians("ab")
    for call in (store.get_gaussians, store.get_by_ids, store.delete):
        with pytest.raises(TypeError, match=r"ids\[0\] must be a str"):
            call([None])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="got bytes"):
            call(b"a")  # type: ignore[arg-type]


class _CountingEncoder:
    name_or_path = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def encode_documents(self, texts: list[str], **_: Any) -> Gaussians:
        self.calls += 1
        return random_gaussians(len(texts), 3)

    def encode_queries(self, texts: list[str], **_: Any) -> Gaussians:
        return self.encode_documents(texts)


def test_bad_or_duplicate_ids_and_texts_fail_before_any_encoding_and_name_the_id() -> None:
    encoder = _CountingEncoder()
    store = KLStore(encoder)
    with pytest.raises(ValueError, match=r"'x' is at positions 0 and 2"):
        store.add(["one", "two", "three"], ids=["x", "y", "x"])
    with pytest.raises(TypeError, match=r"ids\[1\]"):
        store.add(["one", "two"], ids=["x", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="got 1 ids but 2 texts"):
        store.add(["one", "two"], ids=["x"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        store.add(["one", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"metadatas\[0\] must be a dict"):
        store.add(gaussians=random_gaussians(1, 3), metadatas=["not a dict"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"metadatas\[0\] holds nan at \['x'\]:"):
        store.add(gaussians=random_gaussians(1, 3), metadatas=[{"x": math.nan}])
    assert encoder.calls == 0 and len(store) == 0
    assert store.add(["one"], ids=["x"]) == ["x"] and encoder.calls == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"compact_threshold": math.nan}, r"compact_threshold must be a fraction in \[0, 1\]"),
        ({"compact_threshold": 1.5}, r"compact_threshold must be a fraction in \[0, 1\]"),
        ({"exact_threshold": -1}, "exact_threshold must be an integer >= 0"),
        ({"exact_threshold": 2.5}, "exact_threshold must be an integer >= 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"nlist": 2.5}, "nlist must be a positive integer"),
        ({"batch_size": "8"}, "batch_size must be a positive integer"),
        ({"dim": 2.5}, "dim must be a positive integer"),
        ({"norm_headroom": math.inf}, "norm_headroom must be a finite number >= 1"),
        ({"norm_headroom": math.nan}, "norm_headroom must be a finite number >= 1"),
    ],
)
def test_constructor_refuses_out_of_range_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KLStore(**kwargs)


def test_integer_metadata_keys_come_back_as_strings_after_save_and_load(tmp_path: Path) -> None:
    """Documented in KLStore.add: metadata is kept as JSON, whose object keys are strings, in memory as on disk."""
    store = KLStore()
    store.add(gaussians=random_gaussians(1, 3), ids=["a"], metadatas=[{1: "one", "k": 2}])
    assert store.get_by_ids("a")[0].metadata == {"1": "one", "k": 2}  # at once, not only after a save
    loaded = KLStore.load(store.save(tmp_path / "s"))
    assert loaded.get_by_ids("a")[0].metadata == {"1": "one", "k": 2}
    assert "non-string keys become strings" in " ".join((KLStore.add.__doc__ or "").split())


# ---------------------------------------------------------------- item 2: token budgets
def test_max_length_above_the_position_embeddings_is_clamped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    enc = make_tiny_encoder()  # 128 position embeddings
    assert enc.max_tokens == 128
    long_text = "the cat sat on the mat " * 60
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.encoder"):
        over = enc.encode_documents([long_text], max_length=1000)
        queries = enc.encode_queries([long_text], max_length=129)
    assert "max_length 1000 is above what" in caplog.text and "128 tokens" in caplog.text
    np.testing.assert_allclose(over.mean, enc.encode_documents([long_text], max_length=128).mean, rtol=1e-6)
    assert np.isfinite(queries.mean).all()
    enc.config.max_length = 500  # a config asking for more than the backbone reads
    assert np.isfinite(enc.encode_documents([long_text]).mean).all()


@pytest.mark.parametrize("bad", [0, 2, -1, True, 3.5])
def test_max_length_out_of_range_is_refused_not_replaced_by_the_default(bad: Any) -> None:
    enc = make_tiny_encoder()
    for encode in (enc.encode_documents, enc.encode_queries):
        with pytest.raises(ValueError, match="max_length must be an int >= 3"):
            encode(["hello"], max_length=bad)


def test_a_refined_index_searched_with_a_pool_no_larger_than_its_refine_stage_does_not_crash() -> None:
    """Found by tests/test_fuzz_store.py: FAISS refused the IVF parameters on an IndexRefine when the pool was small."""
    store = KLStore(
        index_type="ivf", nlist=2, nprobe=1, compression="pq", pq_m=2, pq_nbits=4, refine="sq8", rescore_pool=4
    )
    store.add(gaussians=random_gaussians(100, 4), ids=[f"d{i}" for i in range(100)])
    assert store.is_built
    query = random_gaussians(1, 4, seed=3)
    for k in (1, 5, 30):
        hits = store.search(query, k=k)
        assert len(hits) == k and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
