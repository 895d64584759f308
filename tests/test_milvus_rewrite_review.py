"""MilvusKLStore, review of the row-rewrite protocol: no mark left behind by a failed rewrite, one writer of a Milvus
Lite file's properties at a time, a refused attach releases the file, the recorded index build settings are the
collection's, waits for another writer's rewrite neither block this store's searches nor give up while it progresses,
and an upsert that races a repair() is written again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_milvus_rewrite_race import DIM, LOGGER, _pair  # A and B, two clients of one collection

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import milvus as milvus_mod
from kl_retrievers.store.milvus import MilvusKLStore


def _raise_bound(store: MilvusKLStore, doc_id: str = "z", var: float = 0.01) -> None:
    """A document with a tiny variance: its norm exceeds M, so the store stores a larger M and rewrites every row."""
    store.add([doc_id], gaussians=Gaussians(np.zeros((1, DIM)), np.full((1, DIM), var)), ids=[doc_id])


def _marks(store: MilvusKLStore) -> dict[str, str]:
    """The rewrite mark keys stored in the collection (an empty value counts as none)."""
    props = store.client.describe_collection("c")["properties"]
    return {k: v for k, v in props.items() if k.startswith(milvus_mod._REWRITING_PREFIX)}


def _config(store: MilvusKLStore, name: str = "c") -> dict[str, Any]:
    return dict(json.loads(store.client.describe_collection(name)["properties"][milvus_mod._CONFIG_KEY]))


def test_a_rewrite_whose_first_alter_raised_after_it_was_applied_leaves_no_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alter storing the generation and the mark raised after the server applied it (a lost reply): the mark
    stayed and every writer waited _REWRITE_STALL_S (120 s) for it."""
    a, b = _pair(tmp_path)
    monkeypatch.setattr(milvus_mod, "_REWRITE_STALL_S", 60.0)
    original = a._client.alter_collection_properties

    def flaky(name: str, properties: dict[str, str], **kwargs: Any) -> Any:
        out = original(name, properties=properties, **kwargs)
        if milvus_mod._REWRITE_GEN_KEY in properties:
            raise TimeoutError("reply lost after the server applied the alter")
        return out

    a._client.alter_collection_properties = flaky  # type: ignore[method-assign]
    with pytest.raises(TimeoutError, match="reply lost"):
        _raise_bound(a)
    assert not any(_marks(b).values())
    assert not milvus_mod._own_marks()  # this thread no longer counts as inside a rewrite
    start = time.monotonic()
    b.add(["w"], gaussians=Gaussians(np.ones((1, DIM)), np.ones((1, DIM))), ids=["w"])
    assert time.monotonic() - start < 20.0 and "w" in b


def test_two_stores_on_one_lite_file_never_write_its_properties_at_once(tmp_path: Path) -> None:
    """Milvus Lite's property alters and drops are not thread-safe (concurrent ones failed on its schema.json):
    the stores of one process on one file take turns."""
    a, b = _pair(tmp_path)
    inside: list[int] = []
    most: list[int] = [0]
    guard = threading.Lock()

    def counted(method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            with guard:
                inside.append(1)
                most[0] = max(most[0], len(inside))
            try:
                time.sleep(0.002)
                return method(*args, **kwargs)
            finally:
                with guard:
                    inside.pop()

        return call

    for store in (a, b):
        for name in ("alter_collection_properties", "drop_collection_properties"):
            setattr(store._client, name, counted(getattr(store._client, name)))
    errors: list[BaseException] = []

    def hammer(store: MilvusKLStore, tag: str) -> None:
        try:
            for i in range(30):
                store._drop_marks([f"{milvus_mod._REWRITING_PREFIX}{tag}{i}"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(s, t)) for s, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60.0)
    assert not errors and most[0] == 1


def test_a_refused_attach_releases_the_lite_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "kl.db")
    made = MilvusKLStore(uri=uri, collection_name="c", index_type="flat", dim=DIM)  # metric IP
    key = str(tmp_path / "kl.db")
    assert milvus_mod._lite_users.get(key) == 1
    with pytest.raises(ValueError, match="metric 'IP', not 'L2'"):
        MilvusKLStore(uri=uri, collection_name="c", index_type="flat", metric="L2")
    assert milvus_mod._lite_users.get(key) == 1  # the refused store counted itself and never let go
    made.close()
    assert key not in milvus_mod._lite_users


def _old_hnsw_collection(tmp_path: Path) -> MilvusKLStore:
    """An HNSW collection built with hnsw_m=8 whose config records no build settings (created before 2026-12-06)."""
    made = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="hnsw", hnsw_m=8, dim=DIM)
    made.add(["a"], gaussians=Gaussians(np.zeros((1, DIM)), np.ones((1, DIM))), ids=["a"])
    config = _config(made)
    del config["index_build"]
    made.client.alter_collection_properties("c", properties={milvus_mod._CONFIG_KEY: json.dumps(config)})
    return made


def test_a_publication_keeps_an_old_collections_missing_build_record(tmp_path: Path) -> None:
    """A client attaching to an old collection with default arguments published them as the index's build
    settings (Milvus Lite describes none), and later clients adopted that wrong record."""
    made = _old_hnsw_collection(tmp_path)
    new = MilvusKLStore(client=made.client, collection_name="c")  # defaults: hnsw_m=32
    _raise_bound(new)  # stores a larger M: a publication
    assert new.norm_version == 2 and "index_build" not in _config(new)
    third = MilvusKLStore(client=made.client, collection_name="c", hnsw_m=8)
    assert third.hnsw_m == 8


def test_a_publication_keeps_the_recorded_build_settings(tmp_path: Path) -> None:
    made = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="hnsw", hnsw_m=8, dim=DIM)
    made.add(["a"], gaussians=Gaussians(np.zeros((1, DIM)), np.ones((1, DIM))), ids=["a"])
    other = MilvusKLStore(client=made.client, collection_name="c", hnsw_m=16)
    other.hnsw_m = 16  # as if the attach had not adopted the record: the publication must still keep it
    _raise_bound(other)
    assert _config(other)["index_build"] == {"hnsw_m": 8, "ef_construction": 80}


def test_default_build_arguments_are_adopted_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """'hnsw_m=8 (asked: 32)' named a value the caller never passed (the default)."""
    made = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="hnsw", hnsw_m=8, dim=DIM)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        quiet = MilvusKLStore(client=made.client, collection_name="c")
    assert quiet.hnsw_m == 8 and not [r for r in caplog.records if "was built with" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        asked = MilvusKLStore(client=made.client, collection_name="c", hnsw_m=16)
    assert asked.hnsw_m == 8 and any("hnsw_m=8 (asked: 16)" in r.getMessage() for r in caplog.records)


def test_waiting_for_another_writers_rewrite_does_not_block_this_stores_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's add waited for another client's rewrite holding B's lock: B's search from another thread waited too
    (up to _REWRITE_WAIT_S, 600 s)."""
    a, b = _pair(tmp_path)
    monkeypatch.setattr(milvus_mod, "_REWRITE_STALL_S", 60.0)
    key = milvus_mod._REWRITING_PREFIX + "someone"
    a.client.alter_collection_properties("c", properties={key: "0"})  # another client's rewrite in progress
    errors: list[BaseException] = []

    def add() -> None:
        try:
            b.add(["w"], gaussians=Gaussians(np.ones((1, DIM)), np.ones((1, DIM))), ids=["w"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=add)
    thread.start()
    time.sleep(0.5)  # B's add is waiting
    done: list[Any] = []
    searcher = threading.Thread(
        target=lambda: done.append((len(b), b.search(Gaussians(np.zeros((1, DIM)), np.ones((1, DIM))), k=1)))
    )
    searcher.start()
    searcher.join(timeout=5.0)
    waiting = thread.is_alive()
    a.client.drop_collection_properties("c", property_keys=[key])  # the rewrite ends
    thread.join(timeout=60.0)
    searcher.join(timeout=60.0)
    assert waiting and done and done[0][0] == 2  # answered while the add still waited
    assert not thread.is_alive() and not errors and "w" in b


def test_a_writer_keeps_waiting_while_the_rewrite_progresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """_REWRITE_WAIT_S counted from the start of the wait: a long rewrite that visibly progressed made writers give
    up (600 s)."""
    a, b = _pair(tmp_path)
    monkeypatch.setattr(milvus_mod, "_REWRITE_WAIT_S", 0.6)
    key = milvus_mod._REWRITING_PREFIX + "someone"
    a.client.alter_collection_properties("c", properties={key: "0"})

    def progress() -> None:
        for i in range(1, 10):  # 1.8 s of progress, three times the wait limit
            time.sleep(0.2)
            a.client.alter_collection_properties("c", properties={key: str(100 * i)})
        a.client.drop_collection_properties("c", property_keys=[key])

    other = threading.Thread(target=progress)
    other.start()
    try:
        b.add(["w"], gaussians=Gaussians(np.ones((1, DIM)), np.ones((1, DIM))), ids=["w"])
    finally:
        other.join(timeout=60.0)
    assert "w" in a


def test_an_add_that_wrote_nothing_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts that start over before writing ended in 'the documents were written'."""
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="flat", metric="L2")
    monkeypatch.setattr(store, "_publish", lambda *args, **kwargs: False)  # another writer always wins
    with pytest.raises(RuntimeError, match="none of the documents was written"):
        store.add(["x"], gaussians=Gaussians(np.zeros((1, DIM)), np.ones((1, DIM))), ids=["x"])
    assert len(store) == 0


def test_rewrites_reuse_one_mark_key_where_marks_cannot_be_dropped(tmp_path: Path) -> None:
    """Without drop_collection_properties a mark is emptied, not dropped: each rewrite left one more key."""
    a, _ = _pair(tmp_path)

    def no_drop(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("drop_collection_properties")

    a._client.drop_collection_properties = no_drop  # type: ignore[method-assign]
    _raise_bound(a, "z1", 0.01)
    _raise_bound(a, "z2", 1e-4)
    assert a.rebuild_count == 2
    assert list(_marks(a).values()) == [""]


def test_an_upsert_that_raced_a_repair_is_written_again(tmp_path: Path) -> None:
    """B's add read the state before A's repair() began and upserts 'x' while A holds an old copy of x's page:
    B must see the new rewrite generation and write again (the add path's overlap check)."""
    a, b = _pair(tmp_path)
    b_in, a_read, b_done = threading.Event(), threading.Event(), threading.Event()
    original_upsert = b._upsert
    calls: list[int] = []

    def upsert(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            b_in.set()
            assert a_read.wait(timeout=30.0)  # B writes only once A holds its copy of the page
        original_upsert(*args, **kwargs)
        b_done.set()

    b._upsert = upsert  # type: ignore[method-assign]
    original_iter = a._iter_all
    fired: list[bool] = []

    def hooked(fields: list[str], *args: Any, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
        for page in original_iter(fields, *args, **kwargs):
            if not fired and "vector" in fields and "text" in fields:
                fired.append(True)
                a_read.set()
                assert b_done.wait(timeout=30.0)
            yield page

    a._iter_all = hooked  # type: ignore[method-assign, assignment]
    errors: list[BaseException] = []

    def add_x() -> None:
        try:
            new = Gaussians(np.full((1, DIM), 0.5), np.full((1, DIM), 2.0))
            b.add(["NEW x"], gaussians=new, ids=["x"], metadatas=[{"v": "new"}])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=add_x)
    thread.start()
    assert b_in.wait(timeout=30.0)
    a.repair()
    thread.join(timeout=60.0)
    assert not thread.is_alive() and not errors
    assert len(calls) == 2  # written again after the repair
    (doc,) = a.get_by_ids(["x"])
    assert (doc.text, doc.metadata) == ("NEW x", {"v": "new"})
    np.testing.assert_allclose(a.get_gaussians(["x"]).var, np.full((1, DIM), 2.0), rtol=1e-5)


def test_a_refused_attach_leaves_the_callers_lite_server_running(tmp_path: Path) -> None:
    """A store refused on a Milvus Lite file that the caller's own MilvusClient serves stopped that server: the
    caller's client and a store given it failed ('Fail connecting to server')."""
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    uri = str(tmp_path / "kl.db")
    client = MilvusClient(uri)
    try:
        given = MilvusKLStore(client=client, collection_name="c", index_type="flat", dim=DIM)  # metric IP
        given.add(["x"], gaussians=Gaussians(np.zeros((1, DIM)), np.ones((1, DIM))), ids=["x"])
        with pytest.raises(ValueError, match="metric 'IP', not 'L2'"):
            MilvusKLStore(uri=uri, collection_name="c", index_type="flat", metric="L2")
        assert len(given) == 1 and client.list_collections() == ["c"]
        opened = MilvusKLStore(uri=uri, collection_name="c")  # the same file by uri, closed before its owner
        opened.close()
        assert len(given) == 1 and client.list_collections() == ["c"]
        assert str(tmp_path / "kl.db") not in milvus_mod._lite_users
    finally:
        client.close()
        server_manager_instance.release_server(uri)


def _noop_drops(store: MilvusKLStore, ignore_empty: bool = False) -> dict[str, int]:
    """Make ``store``'s client accept drops of collection properties without applying them (a server predating the
    drop's ``delete_keys`` field), and with ``ignore_empty`` also ignore alters emptying a rewrite mark; call counts."""
    calls = {"drop": 0, "describe": 0}
    client = store.client
    describe, alter = client.describe_collection, client.alter_collection_properties

    def counted_describe(*args: Any, **kwargs: Any) -> Any:
        calls["describe"] += 1
        return describe(*args, **kwargs)

    def noop_drop(*args: Any, **kwargs: Any) -> None:
        calls["drop"] += 1

    def partial_alter(name: str, properties: dict[str, str], **kwargs: Any) -> Any:
        kept = {k: v for k, v in properties.items() if v or not k.startswith(milvus_mod._REWRITING_PREFIX)}
        return alter(name, properties=kept, **kwargs) if kept else None

    client.describe_collection = counted_describe
    client.drop_collection_properties = noop_drop
    if ignore_empty:
        client.alter_collection_properties = partial_alter
    return calls


def _add_in_thread(store: MilvusKLStore, add: Any, limit: float = 20.0) -> tuple[bool, list[BaseException]]:
    """Run ``add(store)`` in a daemon thread for at most ``limit`` s: (whether it still runs, its errors)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            add(store)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)  # daemon: a writer that spins forever ends with pytest
    thread.start()
    thread.join(timeout=limit)
    return thread.is_alive(), errors


def test_a_mark_whose_drop_is_ignored_is_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop accepted but not applied left every rewrite mark; a writer that found one stalled dropped it again
    and again without sleeping (thousands of calls a second, forever)."""
    a, b = _pair(tmp_path)
    monkeypatch.setattr(milvus_mod, "_REWRITE_STALL_S", 0.2)
    calls = _noop_drops(a)
    running, errors = _add_in_thread(a, _raise_bound)  # this writer's own rewrite: its mark cannot be dropped
    assert not running and not errors and "z" in b
    key = milvus_mod._REWRITING_PREFIX + "someone"  # a dead writer's mark
    a.client.alter_collection_properties("c", properties={key: "5"})
    calls.update(drop=0, describe=0)
    running, errors = _add_in_thread(a, lambda s: _raise_bound(s, "w", 1.0))
    assert not running and not errors and "w" in b
    assert calls["drop"] <= 3 and calls["describe"] <= 60
    assert not any(_marks(a).values())  # emptied: an empty mark counts as none


def test_a_mark_that_can_be_neither_dropped_nor_emptied_hits_the_wait_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 600 s limit without progress never applied: a stalled mark was dropped first, each time, with no sleep."""
    a, _ = _pair(tmp_path)
    monkeypatch.setattr(milvus_mod, "_REWRITE_STALL_S", 0.2)
    monkeypatch.setattr(milvus_mod, "_REWRITE_WAIT_S", 1.0)
    key = milvus_mod._REWRITING_PREFIX + "someone"
    a.client.alter_collection_properties("c", properties={key: "5"})
    calls = _noop_drops(a, ignore_empty=True)
    started = time.monotonic()
    running, errors = _add_in_thread(a, lambda s: _raise_bound(s, "w", 1.0))
    assert not running and time.monotonic() - started < 10.0
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError) and "no progress for 1 s" in str(errors[0])
    assert calls["drop"] <= 3 and calls["describe"] <= 60
    assert "w" not in a
