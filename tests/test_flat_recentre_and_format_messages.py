"""A flat store's centre follows its live documents; format refusals name the right field and writer.

1. A flat ``KLStore`` subtracts a centre (``flat_centre``, the first batch's mean) from every mean before its
   float32 candidate search. Once the documents that set it are deleted, every remaining document may lie
   far from it: the float32 error bound then exceeds the score gaps and every query falls back to float64
   scoring of every row (exact, about 20 times slower). ``rebuild()`` centres the index again on the live
   documents' mean, and a compaction does where that pays; results equal float64 brute force throughout.
2. A store refused for its ``score_direction`` names that field (tested with the other score refusals in
   ``test_klstore_score_refusal_wording.py``); a ``format_version`` above the one this library reads, written by a
   build of the same version, is not said to come from a "newer" release.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import edit_config
from kl_retrievers import Gaussians, KLStore
from kl_retrievers._io import library_version
from kl_retrievers.sharded import encode_corpus, load_encoded
from kl_retrievers.store import _engines
from kl_retrievers.store._format import FORMAT_VERSION, StoreFormatError

N, K, NQ, TOP = 3000, 32, 20, 10
OFFSET = 100.0
_FALLBACK = re.compile(r"(\d+) query\(ies\): float32 candidates not provably enough")


def _corpus(seed: int = 0) -> tuple[Gaussians, Gaussians]:
    """Documents at ``OFFSET`` +- 0.1 in every coordinate, and queries near the first ``NQ`` of them."""
    rng = np.random.default_rng(seed)
    mean = OFFSET + 0.1 * rng.normal(size=(N, K))
    var = np.exp(rng.normal(0.0, 0.3, size=(N, K)))
    docs = Gaussians(mean.astype(np.float32), var.astype(np.float32))
    queries = Gaussians(mean[:NQ] + 0.05 * rng.normal(size=(NQ, K)), var[:NQ])
    return docs, queries


def _outlier() -> Gaussians:
    return Gaussians(np.zeros((1, K), dtype=np.float32), np.ones((1, K), dtype=np.float32))


def _brute_force(queries: Gaussians, docs: Gaussians) -> tuple[np.ndarray, np.ndarray]:
    """Top ``TOP`` rows and -KL(Q || D) in float64 over the float32 documents, best first."""
    qm, qv = np.asarray(queries.mean, np.float64), np.asarray(queries.var, np.float64)
    dm, dv = np.asarray(docs.mean, np.float64), np.asarray(docs.var, np.float64)
    kl = 0.5 * (
        np.log(dv).sum(1)[None, :]
        - np.log(qv).sum(1)[:, None]
        + ((qv[:, None, :] + (qm[:, None, :] - dm[None, :, :]) ** 2) / dv[None, :, :]).sum(2)
        - K
    )
    rows = np.argsort(kl, axis=1, kind="stable")[:, :TOP]
    return rows, -np.take_along_axis(kl, rows, axis=1)


def _search(store: KLStore, queries: Gaussians, caplog: pytest.LogCaptureFixture) -> tuple[list[list[Any]], int]:
    """The store's results and how many queries fell back to float64 scoring of every row."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers.gaussian"):
        results = store.search_batch(queries, k=TOP)
    fallbacks = sum(int(m[1]) for r in caplog.records if (m := _FALLBACK.search(r.getMessage())))
    return results, fallbacks


def _assert_exact(results: list[list[Any]], queries: Gaussians, docs: Gaussians) -> None:
    rows, scores = _brute_force(queries, docs)
    for i, hits in enumerate(results):
        assert [h.id for h in hits] == [f"d{r}" for r in rows[i]]
        np.testing.assert_allclose([h.score for h in hits], scores[i], rtol=1e-9, atol=1e-9)


def _flat(store: KLStore) -> _engines.FlatEngine:
    engine = store._engine
    assert isinstance(engine, _engines.FlatEngine)
    return engine


def _centre(store: KLStore) -> np.ndarray:
    centre = _flat(store).centre
    assert centre is not None
    return centre


def _ids(n: int = N) -> list[str]:
    return [f"d{i}" for i in range(n)]


def test_rebuild_centres_a_flat_store_again_once_the_first_document_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs, queries = _corpus()
    store = KLStore()
    store.add(gaussians=_outlier(), ids=["first"])  # the centre: its mean, 0
    store.add(gaussians=docs, ids=_ids())
    store.delete(["first"])  # a tombstone: no compaction at 1 row in 3001
    assert store._table.dead() == 1
    results, fallbacks = _search(store, queries, caplog)
    _assert_exact(results, queries, docs)
    assert fallbacks > NQ // 2  # far from the centre: the float32 bound proves (almost) nothing

    store.rebuild()
    engine = _flat(store)
    assert engine.centre is not None
    np.testing.assert_allclose(engine.centre, np.asarray(docs.mean, np.float64).mean(axis=0), rtol=1e-12)
    assert store._table.dead() == 0 and store._table.n_rows == N == engine.index.ntotal
    assert float(np.linalg.norm(engine._flat_norm_max())) < 100.0  # was above 1e5 with the old centre
    results, fallbacks = _search(store, queries, caplog)
    _assert_exact(results, queries, docs)
    assert fallbacks == 0

    folder = store.save(tmp_path / "s")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    np.testing.assert_array_equal(config["flat_centre"], engine.centre)
    assert config["format_version"] == 2
    loaded = KLStore.load(folder)
    results, fallbacks = _search(loaded, queries, caplog)
    _assert_exact(results, queries, docs)
    assert fallbacks == 0


def test_compaction_centres_a_flat_store_again_when_that_pays(caplog: pytest.LogCaptureFixture) -> None:
    docs, queries = _corpus(seed=1)
    store = KLStore()
    store.add(gaussians=_outlier(), ids=["first"])
    store.add(gaussians=docs, ids=_ids())
    store.delete(["first"])
    store.compact()
    engine = _flat(store)
    assert engine.centre is not None
    np.testing.assert_allclose(engine.centre, np.asarray(docs.mean, np.float64).mean(axis=0), rtol=1e-12)
    results, fallbacks = _search(store, queries, caplog)
    _assert_exact(results, queries, docs)
    assert fallbacks == 0


def test_compaction_keeps_a_centre_that_is_already_good() -> None:
    docs, _ = _corpus(seed=2)
    store = KLStore()
    store.add(gaussians=docs, ids=_ids())
    centre, index = _centre(store).copy(), _flat(store).index
    store.delete(_ids()[: N // 2])  # past the compaction threshold: compacted now
    assert store._table.dead() == 0 and len(store) == N - N // 2
    np.testing.assert_array_equal(_centre(store), centre)  # still within 0.1 of every mean
    assert _flat(store).index is index  # compacted in place, not rebuilt


def test_a_store_saved_before_centring_is_centred_only_by_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Such a folder (centre 0) stays format version 1 through compactions; rebuild() centres it."""
    docs, queries = _corpus(seed=3)
    with monkeypatch.context() as patch:  # as a release before centring built it: d~ of the raw means
        patch.setattr(_engines, "means_centre", lambda mean: np.zeros(np.shape(mean)[1]))
        store = KLStore()
        store.add(gaussians=docs, ids=_ids())
    extra = Gaussians(np.full((4, K), OFFSET, np.float32), np.ones((4, K), np.float32))
    store.add(gaussians=extra, ids=[f"x{i}" for i in range(4)])
    folder = store.save(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["format_version"] == 1
    config["flat_centre"] = None
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")

    loaded = KLStore.load(folder)
    loaded.delete([f"x{i}" for i in range(4)])
    loaded.compact()
    assert not _centre(loaded).any()
    again = json.loads((loaded.save(tmp_path / "again") / "config.json").read_text(encoding="utf-8"))
    assert again["format_version"] == 1
    results, fallbacks = _search(loaded, queries, caplog)
    _assert_exact(results, queries, docs)
    assert fallbacks > NQ // 2

    loaded.rebuild()
    assert _centre(loaded).any()
    results, fallbacks = _search(loaded, queries, caplog)
    _assert_exact(results, queries, docs)
    assert fallbacks == 0
    rebuilt = json.loads((loaded.save(tmp_path / "rebuilt") / "config.json").read_text(encoding="utf-8"))
    assert rebuilt["format_version"] == 2


def test_a_rebuild_that_would_overflow_float32_leaves_the_flat_store_unchanged() -> None:
    """Around the new centre, a document with a tiny variance far from it overflows ``(mu - c) / var``."""
    store = KLStore()
    tiny = Gaussians(np.zeros((1, 4), np.float32), np.full((1, 4), 1e-30, np.float32))  # the centre: 0
    far = Gaussians(np.full((1, 4), 1e9, np.float32), np.ones((1, 4), np.float32))
    store.add(gaussians=tiny, ids=["tiny"])
    store.add(gaussians=Gaussians(np.concatenate([far.mean] * 3), np.concatenate([far.var] * 3)), ids=["a", "b", "c"])
    engine = _flat(store)
    store.delete(["c"])
    store.compact()  # the compaction's re-centring would overflow too: skipped
    assert store._table.dead() == 0 and not _centre(store).any()
    index = engine.index
    with pytest.raises(ValueError, match=r"cannot be centred on the live documents' mean.*document 'tiny'.*unchanged"):
        store.rebuild()
    assert engine.index is index and not _centre(store).any()
    assert [h.id for h in store.search(tiny, k=3)] == ["tiny", "b", "a"]


# ---------------------------------------------- format refusals (the score: test_klstore_score_refusal_wording.py)
def test_a_newer_format_from_the_same_version_is_not_called_newer(saved_klstore: Path) -> None:
    ours = library_version()
    edit_config(saved_klstore, format_version=FORMAT_VERSION + 1, library_version=ours)
    with pytest.raises(StoreFormatError) as info:
        KLStore.load(saved_klstore)
    message = str(info.value).replace(str(saved_klstore), "<folder>")  # the test's name is in the path
    assert "newer" not in message
    assert f"store format_version {FORMAT_VERSION + 1} by kl-retrievers {ours}" in message
    assert "another build of this same version" in message
    assert f"reads store format_version {FORMAT_VERSION} and earlier" in message


def test_a_newer_format_from_a_later_release_is_called_newer(saved_klstore: Path) -> None:
    edit_config(saved_klstore, format_version=FORMAT_VERSION + 1, library_version="999.0.0")
    with pytest.raises(StoreFormatError, match=r"by a newer kl-retrievers \(999\.0\.0\).*upgrade kl-retrievers"):
        KLStore.load(saved_klstore)


def test_a_newer_format_without_a_recorded_writer_does_not_guess_it(saved_klstore: Path) -> None:
    edit_config(saved_klstore, format_version=FORMAT_VERSION + 1, library_version=None)
    with pytest.raises(StoreFormatError) as info:
        KLStore.load(saved_klstore)
    message = str(info.value)
    assert "newer kl-retrievers" not in message and "(unknown)" not in message
    assert "whose version it does not record" in message


class _FakeEncoder:
    """Gaussians from the text length (no model)."""

    name_or_path = "fake"

    def encode_documents(self, texts: list[str], **kw: Any) -> Gaussians:
        lengths = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        return Gaussians(lengths, np.ones_like(lengths))

    encode_queries = encode_documents


@pytest.mark.parametrize(("writer", "newer"), [("same", False), ("999.0.0", True)])
def test_shards_of_a_newer_format_name_their_writer_truly(tmp_path: Path, writer: str, newer: bool) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"text {i} " + "x" * i for i in range(5)) + "\n", encoding="utf-8")
    out = tmp_path / "enc"
    encode_corpus(corpus, out, encoder=_FakeEncoder(), shard_size=2, show_progress_bar=False)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    writer = library_version() if writer == "same" else writer
    manifest.update(format_version=manifest.get("format_version", 1) + 1, library_version=writer)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_encoded(out)
    message = str(info.value).replace(str(tmp_path), "<tmp>")  # the test's name is in the path
    assert ("newer" in message) is newer
    assert writer in message and "format_version 2" in message and "reads format_version 1 and earlier" in message
