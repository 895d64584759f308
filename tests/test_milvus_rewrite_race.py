"""MilvusKLStore: a row rewrite (the L2-reduction bound M raised) no longer undoes another writer's upsert or delete.

A rewrite reads a page of rows and writes it back later; a write by another client in between was overwritten by
the old copy (an upsert lost, a deleted row back). The interleavings are forced with hooks on the rewriting
client's page iterator, the way a second process can hit them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import milvus as milvus_mod
from kl_retrievers.store.milvus import MilvusKLStore

DIM = 4
LOGGER = "kl_retrievers.store.milvus"


def _pair(tmp_path: Path) -> tuple[MilvusKLStore, MilvusKLStore]:
    """A (with 'x' and 'y' stored) and B, a second client of the same collection."""
    rng = np.random.default_rng(0)
    a = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="flat", metric="L2")
    a.add(
        ["old x", "y"],
        gaussians=Gaussians(rng.normal(0, 1, (2, DIM)), np.ones((2, DIM))),
        ids=["x", "y"],
        metadatas=[{"v": "old"}, {"v": "y"}],
    )
    b = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="flat", metric="L2")
    return a, b


def _raise_bound(a: MilvusKLStore) -> None:
    """A adds a document with a tiny variance: its norm exceeds M, so A stores a larger M and rewrites every row."""
    a.add(["z"], gaussians=Gaussians(np.zeros((1, DIM)), np.full((1, DIM), 0.01)), ids=["z"], metadatas=[{"v": "z"}])


def _hook_first_page(store: MilvusKLStore, between: Any) -> None:
    """Run ``between()`` after ``store``'s rewrite has read its first page and before it writes that page back."""
    original = store._iter_all
    fired: list[bool] = []

    def hooked(*args: Any, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
        for page in original(*args, **kwargs):
            if not fired and "vector" in (args[0] if args else kwargs.get("output_fields", [])):
                fired.append(True)
                between()
            yield page

    store._iter_all = hooked  # type: ignore[method-assign]


def test_an_upsert_during_a_rewrite_is_not_undone(tmp_path: Path) -> None:
    """B upserts 'x' while A's rewrite holds an old copy of it: B's version must survive (it was lost)."""
    a, b = _pair(tmp_path)
    errors: list[BaseException] = []

    def upsert_x() -> None:
        try:
            new = Gaussians(np.full((1, DIM), 0.5), np.full((1, DIM), 2.0))
            b.add(["NEW x"], gaussians=new, ids=["x"], metadatas=[{"v": "new"}])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=upsert_x)

    def between() -> None:
        thread.start()
        thread.join(timeout=2.0)  # the old code wrote at once; now B waits for A's rewrite to finish

    _hook_first_page(a, between)
    _raise_bound(a)
    thread.join(timeout=60.0)
    assert not thread.is_alive() and not errors
    (doc,) = a.get_by_ids(["x"])
    assert (doc.text, doc.metadata) == ("NEW x", {"v": "new"})
    np.testing.assert_allclose(a.get_gaussians(["x"]).var, np.full((1, DIM), 2.0), rtol=1e-5)
    assert len(a) == 3 and a.search(Gaussians(np.full((1, DIM), 0.5), np.full((1, DIM), 2.0)), k=1)[0].id == "x"


def test_a_delete_that_raced_a_rewrite_is_done_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """B read the state before A's rewrite began and deletes 'y' between A's read of the page and its write:
    B must notice the rewrite and delete again (the old code let A's old copy bring 'y' back)."""
    a, b = _pair(tmp_path)
    a_read, b_deleted = threading.Event(), threading.Event()
    original_delete = b._client.delete
    calls: list[int] = []

    def delete(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            assert a_read.wait(timeout=30.0)  # B deletes only once A holds its copy of the page
        calls.append(1)
        out = original_delete(*args, **kwargs)
        b_deleted.set()
        return out

    b._client.delete = delete  # type: ignore[method-assign]
    reports: list[Any] = []
    thread = threading.Thread(target=lambda: reports.append(b.delete(["y"])))
    thread.start()  # B reads the state (no rewrite yet) and waits in delete for A

    def between() -> None:
        a_read.set()
        assert b_deleted.wait(timeout=30.0)

    _hook_first_page(a, between)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _raise_bound(a)
        thread.join(timeout=60.0)
    assert not thread.is_alive() and reports and reports[0].deleted == ["y"]
    assert "y" not in a and a.get_by_ids(["y"]) == [] and len(a) == 2
    assert len(calls) == 2  # deleted again once the rewrite was over
    assert any("writing again once the rewrite is done" in r.getMessage() for r in caplog.records)


def _mark(store: MilvusKLStore, progress: str = "0") -> str:
    """A rewrite mark as another writer stores it (a rewrite in progress)."""
    key = milvus_mod._REWRITING_PREFIX + "someone"
    store.client.alter_collection_properties("c", properties={key: progress})
    return key


def test_a_writer_waits_for_a_rewrite_and_says_so_when_it_does_not_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _pair(tmp_path)
    _mark(a)
    monkeypatch.setattr(milvus_mod, "_REWRITE_WAIT_S", 0.3)
    doc = Gaussians(np.zeros((1, DIM)), np.ones((1, DIM)))
    with pytest.raises(RuntimeError, match=r"rewrite of every row .* made no progress for 0.3 s"):
        b.add(["w"], gaussians=doc, ids=["w"])
    with pytest.raises(RuntimeError, match="made no progress"):
        b.delete(["x"])
    assert "x" in a and "w" not in a  # nothing was written or deleted while the rewrite ran
    props = a.client.describe_collection("c")["properties"]
    assert props.get(milvus_mod._REWRITING_PREFIX + "someone") == "0"  # a live mark is not dropped by a waiter


def test_an_abandoned_rewrite_mark_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = _pair(tmp_path)
    key = _mark(a)
    monkeypatch.setattr(milvus_mod, "_REWRITE_STALL_S", 0.2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        b.add(["w"], gaussians=Gaussians(np.zeros((1, DIM)), np.ones((1, DIM))), ids=["w"])
    assert "w" in a and len(a) == 3
    assert any("made no progress" in r.getMessage() for r in caplog.records)
    props = a.client.describe_collection("c")["properties"]
    assert not props.get(key)


def test_the_rewrite_log_names_the_bound_it_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The log said 'before: M=X' with the bound already adopted when a client finished a pending rewrite."""
    a, b = _pair(tmp_path)
    before = a.norm_bound
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _raise_bound(a)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rewrote ")]
    assert a.norm_bound is not None and before is not None and a.norm_bound > before
    assert f"raised from M={before:.6g}" in line and f"M={a.norm_bound:.6g}" in line
    caplog.clear()
    # a writer stored a larger M and died before rewriting: B's next add finishes the rewrite under that M
    assert a._publish(2 * a.norm_bound, a._state.offset, rewrite=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        b.add(["w"], gaussians=Gaussians(np.zeros((1, DIM)), np.ones((1, DIM))), ids=["w"])
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rewrote ")]
    assert f"M={a.norm_bound:.6g}" in line and "M unchanged" in line and "raised from" not in line
    props = a.client.describe_collection("c")["properties"]
    assert not any(k.startswith(milvus_mod._REWRITING_PREFIX) and v for k, v in props.items())
    assert props.get(milvus_mod._REWRITE_GEN_KEY)  # the generation a writer compares
