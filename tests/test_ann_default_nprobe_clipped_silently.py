"""The rule for an ``nprobe`` above an IVF store's ``nlist``: the default ``nprobe`` (never given) is clipped to
``nlist`` silently; one given (to the constructor, other than the default, or by any assignment) warns where it
comes in, and where an assignment of ``nlist`` or ``index_type`` leaves it above ``nlist``. An ``nlist`` assignment
used to check the value instead: an ``nprobe`` assigned the default's value (32) was let through silently."""

from __future__ import annotations

import warnings

import pytest

from kl_retrievers.store import KLStore
from kl_retrievers.store.faiss import DEFAULT_NPROBE

pytest.importorskip("faiss")


def _warned(store: KLStore, **assign: object) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, value in assign.items():
            setattr(store, name, value)
    return [str(w.message) for w in caught if "exceeds this store's nlist" in str(w.message)]


def test_an_assigned_nprobe_of_the_defaults_value_warns_when_an_nlist_assignment_leaves_it_above() -> None:
    store = KLStore(index_type="ivf")  # nlist 1024
    assert not _warned(store, nprobe=DEFAULT_NPROBE)  # given, under nlist
    (message,) = _warned(store, nlist=16)
    assert message.startswith(f"nprobe={DEFAULT_NPROBE} exceeds this store's nlist=16: ")


def test_the_default_nprobe_is_clipped_silently_whatever_nlist_is_assigned() -> None:
    store = KLStore(index_type="ivf")
    assert not _warned(store, nlist=16)
    assert not _warned(store, nlist=8)
    assert _warned(store, nprobe=DEFAULT_NPROBE)  # given now: said at once
    assert _warned(store, nlist=4)
