"""A load that saves of the same folder keep overlapping ends in ``ConcurrentSaveError``, a public class.

A loader reads a saved folder again when a save replaced it meanwhile (``load_unchanged``), at most
``LOAD_ATTEMPTS`` times. Where saves from other processes run back to back, every read can be overlapped; the
load then gave up with a plain ``OSError``, which a caller could not tell from a damaged disk. It is now a
:class:`~kl_retrievers.ConcurrentSaveError` (still an ``OSError``, and a ``KLRetrieversError``) that a caller can
retry on, and the docs say so.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from conftest import random_gaussians
from kl_retrievers import ConcurrentSaveError, KLRetrieversError, KLStore, _io
from kl_retrievers.hybrid import KLHybridStore

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _always_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every look at a folder's identity sees another save's copy."""
    looks = itertools.count()
    monkeypatch.setattr(_io, "folder_identity", lambda path: next(looks))


def test_a_store_load_replaced_during_every_read_raises_concurrent_save_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KLStore(dim=4)
    store.add(["a", "b"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    store.save(tmp_path / "store")
    _always_replaced(monkeypatch)
    with pytest.raises(ConcurrentSaveError, match=f"during each of {_io.LOAD_ATTEMPTS} attempts") as info:
        KLStore.load(tmp_path / "store")
    assert isinstance(info.value, OSError) and isinstance(info.value, KLRetrieversError)
    assert str(tmp_path / "store") in str(info.value)


def test_a_hybrid_load_raises_it_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KLHybridStore(stemmer=None)
    store.add(["x y", "z w"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    store.save(tmp_path / "hybrid")
    _always_replaced(monkeypatch)
    with pytest.raises(ConcurrentSaveError):
        KLHybridStore.load(tmp_path / "hybrid")


def test_it_is_chained_to_the_last_failed_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _always_replaced(monkeypatch)
    reads = [0]

    def torn() -> None:
        reads[0] += 1
        raise ValueError(f"torn read {reads[0]}")

    with pytest.raises(ConcurrentSaveError) as info:
        _io.load_unchanged(tmp_path, torn)
    assert reads[0] == _io.LOAD_ATTEMPTS
    assert isinstance(info.value.__cause__, ValueError) and str(info.value.__cause__) == f"torn read {reads[0]}"


def test_the_docs_name_the_limit_and_the_error() -> None:
    for page in ("hybrid.md", "reliability.md"):
        text = " ".join((DOCS / page).read_text().split())
        assert f"at most {_io.LOAD_ATTEMPTS} reads" in text and "ConcurrentSaveError" in text, page
    assert "::: kl_retrievers.ConcurrentSaveError" in (DOCS / "api.md").read_text()
