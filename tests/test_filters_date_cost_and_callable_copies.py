"""Review of the stop-46 filters (38f7dbe): cost and warnings of date filters, the date rule, NaT, callables.

* ``$in`` / ``$nin`` / a list of dates parse each stored value once per row (not once per filter value), a
  range on one field once too, and a compiled filter warns at most once about naive against aware values.
* A ``date`` filter value compares with the stored value's calendar date: an aware stored timestamp
  matches its own day (it did not since 38f7dbe, with a warning).
* A ``pd.NaT`` filter value is no date: it compares as the string ``"NaT"`` the store keeps (it raised).
* A callable filter reads nested lists and dicts as copies made when it reads them (never the stored
  objects, by any way of reading), and nothing of flat metadata is copied, in memory, after a
  replacement, a compaction and a load.
* (round 2, 17d55ae) What ``MappingProxyType`` offers beyond a ``Mapping`` (``copy()``, ``|``, reversed,
  ``|=`` refused) works alike on flat and nested rows of one store, and changes nothing stored.
* A load computes no per-row nested flag: the first callable filter does, and every change of the rows
  (append, undo, compaction, before or after that) keeps them right.
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.filters as filters
import kl_retrievers.store._table as table_mod
from conftest import random_gaussians
from kl_retrievers.filters import _is_nested, compile_filter
from kl_retrievers.store import KLStore
from kl_retrievers.store._table import DocumentTable

K = 4
UTC = datetime.timezone.utc
EST = datetime.timezone(datetime.timedelta(hours=-5))


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The stored values ``filters._stored_datetime`` is asked to read, in order."""
    seen: list[Any] = []
    real = filters._stored_datetime

    def counting(value: Any) -> Any:
        seen.append(value)
        return real(value)

    monkeypatch.setattr(filters, "_stored_datetime", counting)
    yield seen


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kl_retrievers.filters"]


# ------------------------------------------------------------------ 1. one parse per row, one warning per filter
ROWS = [{"t": f"2024-02-{d:02d}T10:00:00+00:00"} for d in (1, 5, 25)]


@pytest.mark.parametrize(
    "cond",
    [
        {"$in": [datetime.datetime(2024, 2, d, 10, tzinfo=UTC) for d in range(1, 21)]},
        {"$nin": [datetime.datetime(2024, 2, d, 10, tzinfo=UTC) for d in range(1, 21)]},
        [datetime.datetime(2024, 2, d, 10, tzinfo=UTC) for d in range(1, 21)],
        {"$gte": datetime.datetime(2024, 2, 2, tzinfo=UTC), "$lt": datetime.datetime(2024, 3, 1, tzinfo=UTC)},
        {"$in": [datetime.date(2024, 2, d) for d in range(1, 21)] + [datetime.datetime(2024, 2, 25, 10, tzinfo=UTC)]},
    ],
    ids=["$in", "$nin", "list", "range", "dates and datetimes"],
)
def test_each_stored_value_is_parsed_once_per_row(parses: list[Any], cond: Any) -> None:
    predicate = compile_filter({"t": cond})
    assert predicate is not None
    answers = [predicate(m) for m in ROWS]
    assert parses == [m["t"] for m in ROWS]
    want = {
        "$in": [True, True, False],
        "$nin": [False, False, True],
        "list": [True, True, False],
        "range": [False, True, True],
        "dates and datetimes": [True, True, True],
    }
    assert answers == next(v for k, v in want.items() if k in _case_name(cond))


def _case_name(cond: Any) -> str:
    if isinstance(cond, list):
        return "list"
    if "$gte" in cond:
        return "range"
    if "$in" in cond and isinstance(cond["$in"][0], datetime.datetime):
        return "$in"
    return "$nin" if "$nin" in cond else "dates and datetimes"


@pytest.mark.parametrize(
    "cond",
    [
        {"$in": [datetime.datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)]},
        {"$gte": datetime.datetime(2024, 1, 1, tzinfo=UTC), "$lt": datetime.datetime(2024, 2, 1, tzinfo=UTC)},
        {"$or": [{"$gte": datetime.datetime(2024, 1, 1, tzinfo=UTC)}, {"$lt": datetime.datetime(2025, 1, 1)}]},
    ],
    ids=["$in of 3", "range", "$or"],
)
def test_a_compiled_filter_warns_once_about_naive_against_aware(
    caplog: pytest.LogCaptureFixture, cond: dict[str, Any]
) -> None:
    naive_rows = [{"t": "2024-01-02T10:00:00"}, {"t": "2024-01-03T10:00:00"}]
    spec: Any = {"$or": [{"t": c} for c in cond["$or"]]} if "$or" in cond else {"t": cond}
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.filters"):
        predicate = compile_filter(spec)
        assert predicate is not None
        answers = [predicate(m) for m in naive_rows]
        assert len(_warnings(caplog)) == 1, _warnings(caplog)
        assert "naive" in _warnings(caplog)[0] and "2024-01-02T10:00:00" in _warnings(caplog)[0]
        compile_filter(spec)(naive_rows[0])  # type: ignore[misc]
    assert answers == ([True, True] if "$or" in cond else [False, False])  # $or: the naive branch matches
    assert len(_warnings(caplog)) == 1  # once per process for this kind of mismatch: the next search is quiet


# ------------------------------------------------------------------ 2. a date filter value: the calendar date
@pytest.mark.parametrize(
    "cond, stored, want",
    [
        ({"$gte": datetime.date(2024, 1, 2)}, "2024-01-02T10:00:00+00:00", True),
        ({"$lte": datetime.date(2024, 1, 2)}, "2024-01-02T12:00:00", True),
        ({"$lte": datetime.date(2024, 1, 2)}, "2024-01-02T23:30:00-05:00", True),  # its own date, not UTC's
        ({"$gt": datetime.date(2024, 1, 2)}, "2024-01-02T23:30:00-05:00", False),
        ({"$gt": datetime.date(2024, 1, 1)}, "2024-01-02T00:00:00+00:00", True),
        (datetime.date(2024, 1, 2), "2024-01-02T23:59:59.999999+09:00", True),
        (datetime.date(2024, 1, 2), "2024-01-03T00:00:00+00:00", False),
        ({"$ne": datetime.date(2024, 1, 2)}, "2024-01-02T08:00:00+00:00", False),
        ({"$in": [datetime.date(2024, 1, 2), datetime.date(2024, 1, 9)]}, "2024-01-09T08:00:00+01:00", True),
        ({"$nin": [datetime.date(2024, 1, 2)]}, "2024-01-02T08:00:00+01:00", False),
        (np.datetime64("2024-01-02"), "2024-01-02T08:00:00+01:00", True),
        ({"$lt": datetime.date(2024, 1, 2)}, "2024-01-01", True),
        ({"$lt": datetime.date(2024, 1, 2)}, "not a date", False),
    ],
)
def test_a_date_filter_value_compares_with_the_stored_calendar_date(
    caplog: pytest.LogCaptureFixture, cond: Any, stored: str, want: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.filters"):
        assert compile_filter({"t": cond})({"t": stored}) is want  # type: ignore[misc]
    assert _warnings(caplog) == []


def test_a_date_filter_value_matches_aware_timestamps_in_a_store_and_after_load(tmp_path: Path) -> None:
    store = KLStore()
    stamps = {
        "utc_morning": datetime.datetime(2024, 1, 2, 10, tzinfo=UTC),
        "est_night": datetime.datetime(2024, 1, 2, 23, 30, tzinfo=EST),  # 2024-01-03 04:30 UTC
        "next_day": datetime.datetime(2024, 1, 3, 0, 0, tzinfo=UTC),
    }
    store.add(gaussians=random_gaussians(3, K), ids=list(stamps), metadatas=[{"t": t} for t in stamps.values()])
    store.save(tmp_path / "s")
    for s in (store, KLStore.load(tmp_path / "s")):
        hits = s.search(random_gaussians(1, K), k=3, filter={"t": {"$lte": datetime.date(2024, 1, 2)}})
        assert sorted(h.id for h in hits) == ["est_night", "utc_morning"]


# ------------------------------------------------------------------ 3. NaT is no date
def test_a_nat_filter_value_compares_as_the_stored_string() -> None:
    pd = pytest.importorskip("pandas")
    assert filters.stored_form(pd.NaT) == "NaT"
    assert compile_filter({"t": pd.NaT})({"t": "NaT"}) is True  # type: ignore[misc]
    assert compile_filter({"t": {"$ne": pd.NaT}})({"t": "2024-01-02"}) is True  # type: ignore[misc]
    assert compile_filter({"t": {"$in": [pd.NaT, datetime.date(2024, 1, 2)]}})({"t": "NaT"}) is True  # type: ignore[misc]
    assert compile_filter({"t": [pd.NaT, datetime.date(2024, 1, 2)]})({"t": "2024-01-02T10:00"}) is True  # type: ignore[misc]
    assert compile_filter({"t": {"$gte": pd.NaT}})({"t": "2024-01-02"}) is False  # type: ignore[misc]
    assert compile_filter({"t": np.datetime64("NaT")})({"t": None}) is True  # type: ignore[misc]


def test_stored_form_of_filter_values_keeps_the_filter_shape() -> None:
    spec = {
        "t": {"$gte": datetime.datetime(2024, 1, 2, tzinfo=UTC), "$in": [datetime.date(2024, 1, 2), "x"]},
        "pos": (1, 2),
        "$or": [{"at": datetime.time(9, 30)}, {"d": np.array(["2024-01-02"], dtype="datetime64[D]")}],
    }
    assert filters._stored_form_of_filter_values(spec) == {
        "t": {"$gte": "2024-01-02T00:00:00+00:00", "$in": ["2024-01-02", "x"]},
        "pos": (1, 2),
        "$or": [{"at": "09:30:00"}, {"d": ["2024-01-02"]}],
    }


# ------------------------------------------------------------------ 4. a callable filter: copies of what it reads
@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The values ``filters._copied`` is asked to copy (top-level calls and recursive ones)."""
    seen: list[Any] = []
    real = filters._copied

    def counting(value: Any) -> Any:
        seen.append(value)
        return real(value)

    monkeypatch.setattr(filters, "_copied", counting)
    yield seen


def _every_way_of_reading(m: Any) -> list[Any]:
    """Each nested value a callable can get from its argument, by every way of reading one."""
    return [m["tags"], m.get("src"), dict(m.items())["tags"], next(v for v in m.values() if isinstance(v, dict))] + [
        m[key] for key in m if key == "tags"
    ]


def test_nested_values_given_to_a_callable_are_copies_by_every_way_of_reading() -> None:
    stored = {"tags": ["x"], "src": {"n": 1, "deep": [{"k": 1}]}, "year": 2020}
    seen: list[Any] = []

    def evil(m: Any) -> bool:
        for value in _every_way_of_reading(m):
            seen.append(value)
            if isinstance(value, list):
                value.append("EVIL")
            else:
                value["n"] = 99
                value["deep"][0]["k"] = 99
        return True

    assert compile_filter(evil)(stored) is True  # type: ignore[misc]
    assert stored == {"tags": ["x"], "src": {"n": 1, "deep": [{"k": 1}]}, "year": 2020}
    assert len(seen) == 5
    assert all(v is not stored["tags"] and v is not stored["src"] for v in seen)


def test_a_callable_copies_only_the_nested_values_it_reads(copies: list[Any]) -> None:
    stored = {"tags": ["x"], "src": {"n": 1}, "year": 2020}
    assert compile_filter(lambda m: m["year"] == 2020)(stored) is True  # type: ignore[misc]
    assert copies == [2020]  # the value read, nothing else: no list or dict copied
    copies.clear()
    assert compile_filter(lambda m: m["tags"] == ["x"])(stored) is True  # type: ignore[misc]
    assert copies[0] == ["x"] and stored["src"] not in copies


def test_flat_metadata_is_not_copied_and_keeps_its_objects(copies: list[Any]) -> None:
    stored = {"lang": "en", "year": 2020, "big": 10**30}
    seen: list[Any] = []

    def record(m: Any) -> bool:
        seen.append((type(m).__name__, m["big"]))
        return True

    assert compile_filter(record)(stored) is True  # type: ignore[misc]
    assert seen[0][0] == "mappingproxy" and seen[0][1] is stored["big"]
    assert copies == []


def test_a_store_copies_no_metadata_for_a_callable_reading_flat_keys(tmp_path: Path, copies: list[Any]) -> None:
    store = KLStore()
    metas = [{"year": 2020 + i, "tags": ["t"] * i, "src": {"n": i}} for i in range(4)] + [{"year": 1}, {"year": 2}]
    store.add(gaussians=random_gaussians(6, K), ids=[str(i) for i in range(6)], metadatas=metas)
    hits = store.search(random_gaussians(1, K), k=6, filter=lambda m: m["year"] >= 2021)
    assert sorted(h.id for h in hits) == ["1", "2", "3"]
    assert all(not isinstance(v, (list, dict)) for v in copies)  # only the scalars read, through the view


@pytest.mark.parametrize("change", ["replace", "compact", "load"])
def test_a_callable_cannot_change_nested_metadata_after_the_rows_change(tmp_path: Path, change: str) -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(3, K), ids=["a", "b", "c"], metadatas=[{"n": 1}, {"n": 2}, {"n": 3}])
    store.add(gaussians=random_gaussians(1, K, seed=3), ids=["b"], metadatas=[{"tags": ["x"]}])  # flat -> nested
    if change in ("compact", "load"):
        store.delete(["a"])
        store.compact()
    if change == "load":
        store.save(tmp_path / "s")
        store = KLStore.load(tmp_path / "s")

    def evil(m: Any) -> bool:
        for value in m.values():
            if isinstance(value, list):
                value.append("EVIL")
        return True

    assert len(store.search(random_gaussians(1, K), k=3, filter=evil)) == (3 if change == "replace" else 2)
    assert store.get_by_ids(["b"])[0].metadata == {"tags": ["x"]}


# ------------------------------------------------------------------ 5. the proxy's methods on nested rows too
FLAT = {"lang": "en", "year": 2020}
NESTED = {"lang": "en", "year": 2020, "tags": ["a"], "src": {"n": 1}}
PROXY_WAYS: dict[str, Any] = {
    "copy": lambda m: m.copy(),
    "or": lambda m: m | {"x": 1},
    "ror": lambda m: {"x": 1} | m,
    "or itself": lambda m: m | m,
    "reversed": lambda m: list(reversed(m)),
    "str": lambda m: str(m),
}


@pytest.mark.parametrize("way", list(PROXY_WAYS))
@pytest.mark.parametrize("meta", [FLAT, NESTED], ids=["flat", "nested"])
def test_a_callable_reads_flat_and_nested_rows_by_the_proxy_methods(way: str, meta: dict[str, Any]) -> None:
    stored = copy.deepcopy(meta)
    got: list[Any] = []

    def evil(m: Any) -> bool:
        out = PROXY_WAYS[way](m)
        got.append(copy.deepcopy(out))  # as given, before the changes below
        for value in out.values() if isinstance(out, dict) else ():
            if isinstance(value, list):
                value.append("EVIL")
            elif isinstance(value, dict):
                value["n"] = 99
        if isinstance(out, dict):
            out["lang"] = "EVIL"
        return True

    assert compile_filter(evil)(stored) is True  # type: ignore[misc]
    assert stored == meta  # nothing stored changed, nested values included
    want: dict[str, Any] = {
        "copy": meta,
        "or": {**meta, "x": 1},
        "ror": {"x": 1, **meta},
        "or itself": meta,
        "reversed": list(reversed(list(meta))),
        "str": str(meta),
    }
    out = got[0]
    if isinstance(out, dict):
        assert type(out) is dict and list(out) == list(want[way])  # a plain dict, keys in the proxy's order
        assert {k: v for k, v in out.items() if k != "lang"} == {k: v for k, v in want[way].items() if k != "lang"}
    else:
        assert out == want[way]


@pytest.mark.parametrize("way", list(PROXY_WAYS))
def test_a_store_callable_gives_flat_and_nested_rows_the_same_methods(way: str) -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(2, K), ids=["flat", "nested"], metadatas=[FLAT, NESTED])
    hits = store.search(random_gaussians(1, K), k=2, filter=lambda m: bool(PROXY_WAYS[way](m)))
    assert sorted(h.id for h in hits) == ["flat", "nested"]


@pytest.mark.parametrize("meta", [FLAT, NESTED], ids=["flat", "nested"])
def test_in_place_or_is_refused_on_flat_and_nested_rows(meta: dict[str, Any]) -> None:
    stored = copy.deepcopy(meta)

    def ior(m: Any) -> bool:
        m |= {"lang": "EVIL"}
        return True

    with pytest.raises(TypeError, match=r"'\|=' is not supported by \w+.*use '\|' instead"):
        compile_filter(ior)(stored)  # type: ignore[misc]
    assert stored == meta


def test_or_with_a_non_mapping_names_both_types() -> None:
    for meta in (FLAT, NESTED):
        with pytest.raises(TypeError, match="unsupported operand type.*'int'"):
            compile_filter(lambda m: bool(m | 1))(dict(meta))  # type: ignore[misc]
        with pytest.raises(TypeError, match="unsupported operand type.*'int'"):
            compile_filter(lambda m: bool(1 | m))(dict(meta))  # type: ignore[misc]


# ------------------------------------------------------------------ 6. nested flags: computed when first needed
@pytest.fixture
def flag_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The metadata dicts the table asks ``_is_nested`` about."""
    seen: list[Any] = []

    def counting(meta: Any) -> bool:
        seen.append(meta)
        return _is_nested(meta)

    monkeypatch.setattr(table_mod, "_is_nested", counting)
    yield seen


def test_a_load_computes_no_nested_flag_until_a_callable_filter(tmp_path: Path, flag_calls: list[Any]) -> None:
    store = KLStore()
    metas: list[dict[str, Any]] = [{"year": 2020 + i} for i in range(5)] + [{"tags": ["x"]}]
    store.add(gaussians=random_gaussians(6, K), ids=[str(i) for i in range(6)], metadatas=metas)
    store.save(tmp_path / "s")
    flag_calls.clear()
    loaded = KLStore.load(tmp_path / "s")
    assert flag_calls == []  # the load pays nothing for callable filters
    loaded.search(random_gaussians(1, K), k=6, filter={"year": {"$gte": 2022}})
    assert flag_calls == []  # nor does a dict filter
    hits = loaded.search(random_gaussians(1, K), k=6, filter=lambda m: m.get("year", 0) >= 2022)
    assert sorted(h.id for h in hits) == ["2", "3", "4"] and len(flag_calls) == 6
    loaded.search(random_gaussians(1, K), k=6, filter=lambda m: True)
    assert len(flag_calls) == 6  # computed once


def _check(t: DocumentTable) -> None:
    assert t.nested == [_is_nested(m) for m in t.metas]


@pytest.mark.parametrize("first_use", range(5))
def test_nested_flags_follow_every_change_of_the_rows(first_use: int) -> None:
    """Rows loaded, appended (flat replaced by nested), an append undone, compacted: the flags, first read at
    each step in turn, match the metadata after every later step."""
    t = DocumentTable(2)
    metas: list[dict[str, Any]] = [{"n": 1}, {"tags": ["a"]}, {"n": 3}]
    t.set_rows(
        (np.zeros((3, 2), np.float32), np.ones((3, 2), np.float32), np.zeros(3)), ["a", "b", "c"], [None] * 3, metas
    )

    def append(ids: list[str], new: list[dict[str, Any]]) -> tuple[int, list[str]]:
        n = len(ids)
        return t.append(np.zeros((n, 2), np.float32), np.ones((n, 2), np.float32), ids, [None] * n, new)

    def append_undone() -> None:  # "c" replaced by a nested row and "e" added, then undone
        previous = {"c": t.row["c"]}
        start, _ = append(["c", "e"], [{"s": {"k": 1}}, {"tags": []}])
        t.undo_append(start, previous)

    steps: list[Callable[[], Any]] = [
        lambda: append(["a", "d"], [{"tags": ["x"]}, {"n": 4}]),  # flat "a" replaced by a nested row
        append_undone,
        lambda: t.tombstone(["b"]),
        lambda: t.compact(),
        lambda: append(["b"], [{"n": 2}]),
    ]
    for i, step in enumerate(steps):
        if i >= first_use:
            _check(t)
        step()
        if i >= first_use:
            _check(t)
    _check(t)
    assert [t.ids[r] for r, flag in enumerate(t.nested) if flag] == ["a"]
