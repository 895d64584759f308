"""Metadata filters and a store loaded without its encoder (stop 46, probes A 2 and B 2-5).

* A callable filter cannot change stored metadata, nested lists and dicts included.
* A datetime filter value compares with the stored ISO strings as a point in time: aware values as
  instants, naive against aware never matching (one warning); a date filter value with the stored
  value's calendar date; the same in memory and after a save and load.
* Keys that collide once written as JSON strings are refused at any depth, the message naming the path.
* ``KLStore.load(path)`` without ``encoder=`` searches and adds text with the model the store records,
  loaded lazily once (an info log names it); with none recorded the error names what to pass.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers import GaussianEncoder
from kl_retrievers.filters import compile_filter
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

K = 4
UTC = datetime.timezone.utc
EST = datetime.timezone(datetime.timedelta(hours=-5))


def _ids(hits: list[Any]) -> list[str]:
    return sorted(h.id for h in hits)


# ------------------------------------------------------------------ 1. callable filters and nested metadata
def test_a_callable_filter_cannot_change_nested_stored_metadata(tmp_path: Path) -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(2, K), ids=["a", "b"], metadatas=[{"tags": ["x"], "src": {"n": 1}}, {"n": 2}])

    def evil(m: Any) -> bool:
        if "tags" in m:
            m["tags"].append("EVIL")
            m["src"]["n"] = 99
        return True

    hits = store.search(random_gaussians(1, K, seed=1), k=2, filter=evil)
    want = {"tags": ["x"], "src": {"n": 1}}
    assert {h.id: h.metadata for h in hits}["a"] == want
    assert store.get_by_ids(["a"])[0].metadata == want
    store.save(tmp_path / "s")
    assert KLStore.load(tmp_path / "s").get_by_ids(["a"])[0].metadata == want

    def assign(m: Any) -> bool:
        m["x"] = 1
        return True

    with pytest.raises(TypeError):  # the view stays read-only at the top level
        store.search(random_gaussians(1, K), k=1, filter=assign)


def test_a_callable_filter_sees_equal_values_flat_or_nested() -> None:
    seen: list[Any] = []

    def record(m: Any) -> bool:
        seen.append((dict(m), type(m["tags"])))
        return bool(m["tags"] == ["x"])

    predicate = compile_filter(record)
    assert predicate is not None
    assert predicate({"tags": ["x"], "n": 1}) is True
    assert seen == [({"tags": ["x"], "n": 1}, list)]  # a plain list (a copy), compared as before
    assert compile_filter(lambda m: m["n"] == 1)({"n": 1}) is True  # type: ignore[misc]


# ------------------------------------------------------------------ 2. dates and times
DOCS: dict[str, dict[str, Any]] = {
    "date": {"t": datetime.date(2024, 1, 2)},
    "utc_evening": {"t": datetime.datetime(2024, 1, 2, 23, 0, tzinfo=UTC)},  # 18:00 EST
    "est_evening": {"t": datetime.datetime(2024, 1, 2, 20, 0, tzinfo=EST)},  # 2024-01-03 01:00 UTC
    "naive_noon": {"t": datetime.datetime(2024, 1, 2, 12, 0)},
    "text": {"t": "not a date"},
    "number": {"t": 7},
    "none": {},
}


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory) -> list[KLStore]:
    store = KLStore()
    store.add(gaussians=random_gaussians(len(DOCS), K), ids=list(DOCS), metadatas=list(DOCS.values()))
    path = tmp_path_factory.mktemp("dated") / "s"
    store.save(path)
    return [store, KLStore.load(path)]


DATE_CASES: list[tuple[Any, list[str]]] = [
    # aware values compare as instants
    ({"$gte": datetime.datetime(2024, 1, 3, tzinfo=UTC)}, ["est_evening"]),
    ({"$lt": datetime.datetime(2024, 1, 3, tzinfo=UTC)}, ["utc_evening"]),
    (datetime.datetime(2024, 1, 3, 1, 0, tzinfo=UTC), ["est_evening"]),
    ({"$in": [datetime.datetime(2024, 1, 2, 18, 0, tzinfo=EST)]}, ["utc_evening"]),
    (
        [datetime.datetime(2024, 1, 2, 18, 0, tzinfo=EST), datetime.datetime(2024, 1, 3, 1, tzinfo=UTC)],
        ["est_evening", "utc_evening"],
    ),
    # a stored date is a naive midnight for a datetime filter value; naive against aware never matches
    ({"$gte": datetime.datetime(2024, 1, 2)}, ["date", "naive_noon"]),
    (datetime.datetime(2024, 1, 2), ["date"]),
    ({"$gte": np.datetime64("2024-01-02T06:00", "ns")}, ["naive_noon"]),
    # a date filter value compares with the stored value's calendar date (an aware one's own local date)
    (datetime.date(2024, 1, 2), ["date", "est_evening", "naive_noon", "utc_evening"]),
    ({"$lte": datetime.date(2024, 1, 2)}, ["date", "est_evening", "naive_noon", "utc_evening"]),
    ({"$lt": datetime.date(2024, 1, 2)}, []),
    ({"$gt": datetime.date(2024, 1, 1)}, ["date", "est_evening", "naive_noon", "utc_evening"]),
    ({"$gt": datetime.date(2024, 1, 2)}, []),
    (np.datetime64("2024-01-02"), ["date", "est_evening", "naive_noon", "utc_evening"]),
    ({"$in": [datetime.date(2024, 1, 1), "not a date"]}, ["text"]),
    # $ne / $nin match what is not equal: other types, a missing key
    ({"$ne": datetime.date(2024, 1, 2)}, ["none", "number", "text"]),
    ({"$ne": datetime.datetime(2024, 1, 2)}, ["est_evening", "naive_noon", "none", "number", "text", "utc_evening"]),
    (
        {"$nin": [datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 2, 12)]},
        ["date", "est_evening", "none", "number", "text", "utc_evening"],
    ),
    (
        {"$not": {"$gte": datetime.datetime(2024, 1, 3, tzinfo=UTC)}},
        ["date", "naive_noon", "none", "number", "text", "utc_evening"],
    ),
    # a string filter value is compared as a string
    ("2024-01-02", ["date"]),
]


@pytest.mark.parametrize("cond, want", DATE_CASES, ids=[repr(c[0]) for c in DATE_CASES])
def test_date_filters_compare_points_in_time_in_memory_and_after_load(
    dated: list[KLStore], cond: Any, want: list[str]
) -> None:
    for store in dated:
        assert _ids(store.search(random_gaussians(1, K, seed=2), k=len(DOCS), filter={"t": cond})) == want


def test_naive_against_aware_warns_once_naming_both(dated: list[KLStore], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.filters"):
        hits = dated[0].search(
            random_gaussians(1, K), k=len(DOCS), filter={"t": {"$gte": datetime.datetime(2024, 1, 1)}}
        )
    assert _ids(hits) == ["date", "naive_noon"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "kl_retrievers.filters"]
    assert len(warnings) == 1, warnings
    assert "2024-01-01T00:00:00" in warnings[0] and "timezone-aware" in warnings[0] and "naive" in warnings[0]


def test_time_filters_compare_times() -> None:
    store = KLStore()
    times = [datetime.time(9, 30), datetime.time(10, 0, 0, 500), datetime.time(23, 0)]
    store.add(gaussians=random_gaussians(3, K), ids=["a", "b", "c"], metadatas=[{"at": t} for t in times])
    assert _ids(store.search(random_gaussians(1, K), k=3, filter={"at": {"$gte": datetime.time(10)}})) == ["b", "c"]
    assert _ids(store.search(random_gaussians(1, K), k=3, filter={"at": datetime.time(9, 30)})) == ["a"]


def test_nanosecond_datetime64_metadata_is_kept_as_an_iso_string() -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(1, K), ids=["a"], metadatas=[{"t": np.datetime64("2024-01-02T10:00", "ns")}])
    assert store.get_by_ids(["a"])[0].metadata == {"t": "2024-01-02T10:00:00"}


# ------------------------------------------------------------------ 3. colliding keys at any depth
@pytest.mark.parametrize(
    "meta, where",
    [
        ({"m": {1: "int", "1": "str"}}, r"metadatas\[1\]\['m'\]"),
        ({"a": [{"ok": 1}, {True: 1, "true": 2}]}, r"metadatas\[1\]\['a'\]\[1\]"),
        ({2: {None: 1, "null": 2}}, r"metadatas\[1\]\[2\]"),
    ],
)
def test_keys_colliding_inside_nested_metadata_are_refused_by_path(meta: dict[Any, Any], where: str) -> None:
    store = KLStore()
    with pytest.raises(TypeError, match=where + r" has keys that are the same once written as JSON strings: \['"):
        store.add(gaussians=random_gaussians(2, K), ids=["ok", "bad"], metadatas=[{"fine": {1: "x"}}, meta])
    assert len(store) == 0  # nothing added


def test_nested_non_string_keys_without_collision_are_kept_as_strings() -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(1, K), ids=["a"], metadatas=[{"m": {1: "x", 2.5: [{None: True}]}}])
    assert store.get_by_ids(["a"])[0].metadata == {"m": {"1": "x", "2.5": [{"null": True}]}}


# ------------------------------------------------------------------ 4. a store loaded without its encoder
TEXTS = ["the cat sat on the mat", "bread and tea for breakfast", "a dog in the park"]


def _saved_store(tmp_path: Path) -> tuple[GaussianEncoder, Path]:
    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    store = KLStore(encoder)
    store.add(TEXTS, ids=["a", "b", "c"])
    store.save(tmp_path / "st")
    return encoder, tmp_path / "st"


def test_a_loaded_store_searches_text_with_its_saved_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    encoder, path = _saved_store(tmp_path)
    want = [h.id for h in KLStore.load(path, encoder=encoder).search("tea for breakfast", k=3)]
    lazy = KLStore.load(path)
    assert lazy.encoder is None
    lazy.search(encoder.encode_queries(["tea"]), k=1)
    assert lazy.encoder is None  # query Gaussians: nothing loaded
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store.faiss"):
        assert [h.id for h in lazy.search("tea for breakfast", k=3)] == want
    assert any(
        "loading the encoder" in r.getMessage() and str(tmp_path / "enc") in r.getMessage() for r in caplog.records
    )
    first = lazy.encoder
    assert first is not None and str(first.name_or_path) == str(encoder.name_or_path)
    lazy.search_batch(["cat", "dog"], k=1)
    assert lazy.encoder is first  # loaded once


def test_a_loaded_store_adds_text_with_its_saved_model(tmp_path: Path) -> None:
    encoder, path = _saved_store(tmp_path)
    lazy = KLStore.load(path)
    assert lazy.add([], ids=[]) == [] and lazy.encoder is None  # nothing to encode: nothing loaded
    assert lazy.add(["the moon at night"], ids=["d"]) == ["d"]
    want = encoder.encode_documents(["the moon at night"])
    np.testing.assert_allclose(lazy.get_gaussians(["d"]).mean, want.mean, rtol=1e-5, atol=1e-6)


def test_a_store_with_no_model_names_what_to_pass(tmp_path: Path) -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(1, K), ids=["a"])
    store.save(tmp_path / "s")
    loaded = KLStore.load(tmp_path / "s")
    assert loaded.saved_encoder is None
    forms = r"KLStore\(encoder=load_model\(\.\.\.\)\) or KLStore\.load\(path, encoder=load_model\(\.\.\.\)\)"
    with pytest.raises(ValueError, match=r"searching by text needs an encoder.*" + forms + r".*query Gaussians"):
        loaded.search("x")
    with pytest.raises(
        ValueError, match=r"adding texts without gaussians needs an encoder.*" + forms + r".*gaussians="
    ):
        loaded.add(["x"])


def test_a_saved_model_that_fails_to_load_is_named_with_what_to_pass(tmp_path: Path) -> None:
    _, path = _saved_store(tmp_path)
    (tmp_path / "enc").rename(tmp_path / "gone")
    lazy = KLStore.load(path)
    with pytest.raises(
        ValueError, match=r"saved with, '.*enc', failed.*KLStore\.load\(path, encoder=.*query Gaussians"
    ):
        lazy.search("tea")
    q = Gaussians(np.zeros((1, lazy.dim or 1)), np.ones((1, lazy.dim or 1)))
    assert len(lazy.search(q, k=3)) == 3  # Gaussians still work
