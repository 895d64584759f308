"""Stateful fuzz of :class:`KLStore` against a dict model, for every index type (hypothesis).

Random sequences of add / upsert / delete / search / save + load / interrupted save run on a
store and on a plain ``dict`` (id -> float32 Gaussian, text, metadata). After every step the
store holds exactly the model's documents. Searches are checked against a brute-force float64
``-KL`` over the model: equal (top-k scores, and each hit's score) wherever the store searches
exactly (flat, or an approximate index in its exact fallback); elsewhere the invariants of an
approximate search: hits exist and pass the filter, each score is the exact ``-KL`` of its id,
scores are sorted, no duplicates, ``min(k, matching)`` hits. An interrupted save (an exception
in the middle of writing, as a crash would leave it) must leave the previous copy loadable and
equal to what was saved, and no temporary folder behind.

Profiles: ``ci`` (default, well under a minute for all index types) and ``fuzz`` (slow, thorough):
``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz_store.py`` or ``make fuzz``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kl_retrievers.store._format as format_module
from kl_retrievers import Gaussians, KLStore

settings.register_profile(
    "ci",
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    database=None,  # tests write only under tmp_path
    derandomize=True,  # the same sequences on every run: CI failures reproduce
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

K = 4  # Gaussian dimension
ID_POOL = [f"id{i}" for i in range(400)]
_TMP: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _tmp_root(tmp_path: Path) -> None:
    """Stateful machines cannot take fixtures: they read the test's tmp_path from here."""
    _TMP["root"] = tmp_path


class _Killed(Exception):
    """Stands for a process killed in the middle of a save."""


def _gaussians(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, K)).astype(np.float32)
    var = np.exp(rng.normal(scale=0.5, size=(n, K))).astype(np.float32)
    return mean, var


def _neg_kl(qm: np.ndarray, qv: np.ndarray, dm: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Brute-force float64 -KL(Q || D) of one query against rows of documents."""
    qm, qv, dm, dv = (np.asarray(a, dtype=np.float64) for a in (qm, qv, dm, dv))
    terms = np.log(dv) - np.log(qv) - 1.0 + qv / dv + (qm - dm) ** 2 / dv
    return -0.5 * terms.sum(axis=1)


FILTERS = st.one_of(
    st.none(),
    st.integers(0, 2).map(lambda g: ("eq", g)),
    st.lists(st.integers(0, 2), min_size=1, max_size=2).map(lambda gs: ("in", tuple(gs))),
    st.integers(0, 2).map(lambda g: ("callable", g)),
)


def _filter(spec: Any) -> tuple[Any, Any]:
    """(the filter passed to search, a predicate on metadata for the model)."""
    if spec is None:
        return None, lambda m: True
    kind, value = spec
    if kind == "eq":
        return {"g": value}, lambda m: m["g"] == value
    if kind == "in":
        return {"g": {"$in": list(value)}}, lambda m: m["g"] in value
    return (lambda m: m["g"] != value), (lambda m: m["g"] != value)


class StoreMachine(RuleBasedStateMachine):
    """One store and its model; subclasses set the index type."""

    STORE_KWARGS: ClassVar[dict[str, Any]] = {}
    INITIAL_MAX: ClassVar[int] = 40  # documents added by the first step (0..INITIAL_MAX)

    def __init__(self) -> None:
        super().__init__()
        self.store = KLStore(**self.STORE_KWARGS)
        self.model: dict[str, tuple[np.ndarray, np.ndarray, str, dict[str, Any]]] = {}
        self.version = 0
        self.folder = _TMP["root"] / f"store-{uuid.uuid4().hex[:8]}"
        self.saved: dict[str, tuple[np.ndarray, np.ndarray, str, dict[str, Any]]] | None = None

    # ------------------------------------------------------------------ helpers
    def _add(self, ids: list[str], seed: int, groups: list[int]) -> None:
        mean, var = _gaussians(seed, len(ids))
        self.version += 1
        texts = [f"{doc_id} v{self.version}" for doc_id in ids]
        metas = [{"g": g, "v": self.version} for g in groups[: len(ids)]]
        metas += [{"g": 0, "v": self.version} for _ in range(len(ids) - len(metas))]
        returned = self.store.add(texts, gaussians=Gaussians(mean, var), ids=ids, metadatas=metas)
        assert returned == ids
        for j, doc_id in enumerate(ids):
            self.model[doc_id] = (mean[j], var[j], texts[j], metas[j])

    def _check_equal(self, store: KLStore, model: dict[str, Any]) -> None:
        assert len(store) == len(model) and sorted(store.ids) == sorted(model)
        if not model:
            return
        ids = sorted(model)
        g = store.get_gaussians(ids)
        np.testing.assert_array_equal(g.mean, np.stack([model[i][0] for i in ids]))
        np.testing.assert_array_equal(g.var, np.stack([model[i][1] for i in ids]))
        docs = store.get_by_ids(ids)
        assert [(d.id, d.text, d.metadata) for d in docs] == [(i, model[i][2], model[i][3]) for i in ids]

    # ------------------------------------------------------------------ rules
    @initialize(
        n=st.one_of(st.just(-1), st.integers(0, 10**6)),
        seed=st.integers(0, 2**32 - 1),
        groups=st.lists(st.integers(0, 2)),
    )
    def start(self, n: int, seed: int, groups: list[int]) -> None:
        n = self.INITIAL_MAX if n < 0 else n % (self.INITIAL_MAX + 1)  # often full: approximate indexes get built
        if n:
            self._add(ID_POOL[:n], seed, groups)

    @rule(
        ids=st.lists(st.sampled_from(ID_POOL[:120]), min_size=1, max_size=12, unique=True),
        seed=st.integers(0, 2**32 - 1),
        groups=st.lists(st.integers(0, 2), max_size=12),
    )
    def add(self, ids: list[str], seed: int, groups: list[int]) -> None:
        self._add(ids, seed, groups)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def upsert(self, data: st.DataObject, seed: int) -> None:
        existing = sorted(self.model)
        ids = data.draw(st.lists(st.sampled_from(existing), min_size=1, max_size=6, unique=True))
        self._add(ids, seed, data.draw(st.lists(st.integers(0, 2), max_size=6)))

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), missing=st.booleans())
    def delete(self, data: st.DataObject, missing: bool) -> None:
        existing = sorted(self.model)
        ids = data.draw(st.lists(st.sampled_from(existing), min_size=1, max_size=8, unique=True))
        extra = ["never-added"] if missing else []
        report = self.store.delete(ids + extra)
        assert sorted(report.deleted) == sorted(ids) and report.missing == extra
        for doc_id in ids:
            del self.model[doc_id]

    @rule(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 15), spec=FILTERS)
    def search(self, seed: int, k: int, spec: Any) -> None:
        qm, qv = _gaussians(seed, 1)
        flt, keep = _filter(spec)
        hits = self.store.search(Gaussians(qm, qv), k=k, filter=flt)
        allowed = sorted(i for i, (_, _, _, meta) in self.model.items() if keep(meta))
        assert len(hits) == min(k, len(allowed)), (len(hits), k, len(allowed))
        if not allowed:
            return
        mean = np.stack([self.model[i][0] for i in allowed])
        var = np.stack([self.model[i][1] for i in allowed])
        exact = dict(zip(allowed, _neg_kl(qm, qv, mean, var), strict=True))
        ids = [h.id for h in hits]
        scores = np.array([h.score for h in hits])
        assert len(set(ids)) == len(ids), ids
        assert set(ids) <= set(allowed)
        assert np.all(np.diff(scores) <= 1e-12), scores
        np.testing.assert_allclose(scores, [exact[i] for i in ids], rtol=1e-9, atol=1e-9)
        for h in hits:
            assert h.text == self.model[h.id][2] and h.metadata == self.model[h.id][3]
        exactly = self._searches_exactly(len(hits), len(allowed), flt is not None)
        event(f"search: {'exact' if exactly else 'approximate'}{' + filter' if flt is not None else ''}")
        if exactly:
            best = np.sort(np.fromiter(exact.values(), dtype=np.float64))[::-1][: len(hits)]
            np.testing.assert_allclose(scores, best, rtol=1e-9, atol=1e-9)

    def _searches_exactly(self, kk: int, n_allowed: int, filtered: bool) -> bool:
        s = self.store
        if s.index_type == "flat" or not s.is_built:
            return True
        pool = max(kk * s.rescore_factor, s.rescore_pool)
        return n_allowed <= pool or (filtered and n_allowed <= s.exact_threshold)

    @rule(mmap=st.booleans())
    def save_and_load(self, mmap: bool) -> None:
        self.store.save(self.folder)
        self.saved = {i: v for i, v in self.model.items()}
        loaded = KLStore.load(self.folder, mmap=mmap)
        self._check_equal(loaded, self.model)
        assert loaded.is_built == self.store.is_built
        self.store = loaded  # later steps mutate the loaded (possibly memory-mapped) copy

    @rule(where=st.sampled_from(["_write_npy", "_write_jsonl", "_fsync"]))
    def save_interrupted(self, where: str) -> None:
        real = getattr(format_module, where)

        def crash(path: Path, *args: Any) -> None:
            if where != "_fsync":
                real(path, *args)
                with open(path, "r+b") as f:  # a torn file, as a killed writer leaves it
                    f.truncate(max(0, f.seek(0, 2) // 2))
            raise _Killed(f"killed in {where}")

        with mock.patch.object(format_module, where, crash), pytest.raises(_Killed):
            self.store.save(self.folder)
        leftovers = [p.name for p in self.folder.parent.iterdir() if p.name.startswith(f".{self.folder.name}.tmp")]
        assert not leftovers, leftovers
        if self.saved is None:
            assert not (self.folder / "config.json").exists()
        else:
            self._check_equal(KLStore.load(self.folder), self.saved)
        self._check_equal(self.store, self.model)  # the store in memory is untouched

    # ------------------------------------------------------------------ invariants
    @invariant()
    def same_documents(self) -> None:
        assert len(self.store) == len(self.model)
        assert sorted(self.store.ids) == sorted(self.model)


_APPROX = {"rescore_pool": 4, "rescore_factor": 1, "exact_threshold": 6}


class FlatMachine(StoreMachine):
    STORE_KWARGS: ClassVar[dict[str, Any]] = {}


class HNSWMachine(StoreMachine):
    STORE_KWARGS: ClassVar[dict[str, Any]] = {"index_type": "hnsw", "hnsw_m": 8, "ef_search": 8, **_APPROX}


class HNSWSQ8Machine(StoreMachine):
    STORE_KWARGS: ClassVar[dict[str, Any]] = {"index_type": "hnsw", "compression": "sq8", "hnsw_m": 8, **_APPROX}
    INITIAL_MAX = 300  # SQ8 trains once 256 documents exist


class IVFMachine(StoreMachine):
    STORE_KWARGS: ClassVar[dict[str, Any]] = {"index_type": "ivf", "nlist": 2, "nprobe": 1, **_APPROX}


class IVFPQMachine(StoreMachine):
    STORE_KWARGS: ClassVar[dict[str, Any]] = {
        "index_type": "ivf",
        "nlist": 2,
        "nprobe": 1,
        "compression": "pq",
        "pq_m": 2,
        "pq_nbits": 4,
        "refine": "sq8",
        **_APPROX,
    }
    INITIAL_MAX = 90  # 4-bit PQ trains once 64 documents exist


TestFlat = FlatMachine.TestCase
TestHNSW = HNSWMachine.TestCase
TestHNSWSQ8 = HNSWSQ8Machine.TestCase
TestIVF = IVFMachine.TestCase
TestIVFPQ = IVFPQMachine.TestCase
for _case in (TestFlat, TestHNSW, TestHNSWSQ8, TestIVF, TestIVFPQ):
    _case.settings = PROFILE
del _case
