"""Regression tests for the audit of the LangChain adapter (kl_retrievers/langchain.py and what it shares).

1. ``min_confidence`` fails closed when the confidence cannot be computed (one candidate).
2. Metadata: numpy values and dates are converted; memory keeps the JSON round trip (as disk does).
3. MMR drops a candidate deleted between the search and reading its Gaussian.
4. MMR computes redundancy only against the chosen documents, with the same picks as before
   (fetch_k=1000, dim 384, k=10, measured side by side: 10 to 17 s before, 0.1 to 0.2 s after).
5. Filters accept FAISS's ``$neq``.
6. ``save_local`` / ``load_local`` take FAISS's ``index_name``.
7. A ``KLStore`` without an encoder whose dimension the default model lacks fails early and clearly.
9. A callable relevance logs a warning at ``save_local`` (it is not saved).

All on a tiny random encoder (``conftest.make_tiny_encoder``).
"""

from __future__ import annotations

import datetime
import importlib
import logging
import math
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document

from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers import Gaussians, KLStore
from kl_retrievers._adapters import (
    mmr_select,
    relevance_exp,
    relevance_exp_per_dim,
    relevance_inverse,
)
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.filters import compile_filter
from kl_retrievers.gaussian import check_k, neg_kl_matrix
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.langchain import (
    ABSTENTION_EVENT,
    CONFIDENCE_KEY,
    KLEmbeddings,
    KLHybridRetriever,
    KLRetriever,
    KLVectorStore,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*langchain-community.*:DeprecationWarning")

TEXTS = HYBRID_TEXTS
META = [{"n": i} for i in range(len(TEXTS))]
ONE_LEFT = {"n": 3}  # a filter that leaves one document
REASON = "confidence needs 2 candidates, 1 found (a filter or a small store)"


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


@pytest.fixture
def store(encoder: Any) -> KLVectorStore:
    return KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), META, ids=[f"d{i}" for i in range(len(TEXTS))])


class _Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))


# ------------------------------------------------------------------ 1. one candidate: fail closed
def _check_fail_closed(retriever: Any, query: str, caplog: pytest.LogCaptureFixture, **call: Any) -> None:
    handler = _Events()
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers._confidence"):
        refused = retriever.invoke(query, config={"callbacks": [handler]}, min_confidence=0.01, **call)
    assert refused == []  # even a floor just above 0 cannot pass a query that has no confidence
    assert any(f"abstained on {query!r}: {REASON}" == r.getMessage() for r in caplog.records)
    assert len(handler.events) == 1
    name, data = handler.events[0]
    assert name == ABSTENTION_EVENT
    assert data["confidence"] is None and data["min_confidence"] == 0.01 and data["reason"] == REASON
    # without a floor nothing changes: answered, confidence None
    answered = retriever.invoke(query, **call)
    assert len(answered) == 1 and answered[0].metadata[CONFIDENCE_KEY] is None


def test_dense_min_confidence_fails_closed_with_one_candidate_after_a_filter(
    store: KLVectorStore, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    retriever = KLRetriever.from_store(store, k=2, calibrator=calibrator)
    _check_fail_closed(retriever, TEXTS[3], caplog, filter=ONE_LEFT)
    # two candidates: judged as before (the query equals a stored text: confident)
    assert retriever.invoke(TEXTS[3], min_confidence=0.5)[0].page_content == TEXTS[3]


def test_dense_min_confidence_fails_closed_on_a_one_document_store(
    encoder: Any, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    retriever = KLRetriever.from_texts([TEXTS[0]], KLEmbeddings(encoder), k=3, calibrator=calibrator)
    _check_fail_closed(retriever, TEXTS[0], caplog)


def test_no_candidate_is_not_an_abstention(store: KLVectorStore, calibrator: ConfidenceCalibrator) -> None:
    handler = _Events()
    retriever = KLRetriever.from_store(store, calibrator=calibrator, min_confidence=0.5)
    assert retriever.invoke(TEXTS[0], filter={"n": 99}, config={"callbacks": [handler]}) == []
    assert handler.events == []


def test_hybrid_min_confidence_fails_closed_with_one_candidate(
    encoder: Any, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    hybrid = KLHybridStore(encoder, fusion="rrf")
    hybrid.add(TEXTS, ids=[f"d{i}" for i in range(len(TEXTS))], metadatas=META)
    retriever = KLHybridRetriever(store=hybrid, k=2, calibrator=calibrator)
    _check_fail_closed(retriever, TEXTS[3], caplog, filter=ONE_LEFT)


# ------------------------------------------------------------------ 2. metadata: numpy, dates, the JSON round trip
def test_time_weighted_retriever_with_datetime_metadata(encoder: Any) -> None:
    try:
        retrievers = importlib.import_module("langchain_classic.retrievers")
    except ImportError:  # pragma: no cover - older LangChain
        retrievers = pytest.importorskip("langchain.retrievers")
    vs = KLVectorStore(KLEmbeddings(encoder))
    tw = retrievers.TimeWeightedVectorStoreRetriever(vectorstore=vs, decay_rate=0.01, k=2)
    ids = tw.add_documents([Document(page_content=t) for t in TEXTS[:3]])
    assert len(ids) == 3
    stored = vs.get_by_ids(ids)[0].metadata
    assert isinstance(stored["created_at"], str)  # kept as its ISO 8601 string
    assert datetime.datetime.fromisoformat(stored["created_at"])
    docs = tw.invoke(TEXTS[1])
    assert TEXTS[1] in [d.page_content for d in docs]


def test_numpy_and_date_metadata_are_converted(store: KLVectorStore) -> None:
    when = datetime.datetime(2024, 5, 1, 12, 30)
    meta = {
        "i": np.int64(3),
        "f": np.float32(0.5),
        "b": np.bool_(True),
        "a": np.arange(3),
        "when": when,
        "day": when.date(),
        "t": when.time(),
    }
    (new_id,) = store.add_texts(["numpy metadata"], [meta])
    got = store.get_by_ids([new_id])[0].metadata
    assert got == {
        "i": 3,
        "f": 0.5,
        "b": True,
        "a": [0, 1, 2],
        "when": "2024-05-01T12:30:00",
        "day": "2024-05-01",
        "t": "12:30:00",
    }
    assert type(got["i"]) is int and type(got["b"]) is bool
    assert store.similarity_search(TEXTS[0], k=1, filter={"i": 3}) != []


def test_other_non_json_metadata_still_names_the_row(store: KLVectorStore) -> None:
    with pytest.raises(TypeError, match=r"metadatas\[1\] is not JSON-serialisable"):
        store.add_texts(["a", "b"], [{}, {"x": object()}])
    with pytest.raises(ValueError, match=r"metadatas\[0\] holds nan at \['x'\]:"):
        store.add_texts(["a"], [{"x": np.float64("nan")}])


def test_metadata_in_memory_equals_metadata_after_save_and_load(
    store: KLVectorStore, encoder: Any, tmp_path: Path
) -> None:
    meta: dict[Any, Any] = {"tup": (1, 2), 7: "int key", "nested": {"t": ("a", 1), 2: [3, (4,)]}, "n": 1}
    (new_id,) = store.add_texts(["round trip"], [meta], ids=["rt"])
    in_memory = store.get_by_ids([new_id])[0].metadata
    assert in_memory == {"tup": [1, 2], "7": "int key", "nested": {"t": ["a", 1], "2": [3, [4]]}, "n": 1}
    store.save_local(tmp_path / "db")
    loaded = KLVectorStore.load_local(tmp_path / "db", KLEmbeddings(encoder))
    assert loaded.get_by_ids([new_id])[0].metadata == in_memory
    # filters see the same values before and after
    for s in (store, loaded):
        assert [d.id for d in s.similarity_search(TEXTS[0], k=10, filter={"tup": [[1, 2]]})] == ["rt"]


def test_hybrid_store_keeps_the_same_round_trip(encoder: Any) -> None:
    hybrid = KLHybridStore(encoder, fusion="rrf")
    hybrid.add(
        ["x y", "y z"], ids=["a", "b"], metadatas=[{"t": (1,), 2: np.int32(5)}, {"d": datetime.date(2020, 1, 2)}]
    )
    assert [d.metadata for d in hybrid.get_by_ids(["a", "b"])] == [{"t": [1], "2": 5}, {"d": "2020-01-02"}]


# ------------------------------------------------------------------ 3. MMR and a concurrent delete
def test_mmr_drops_a_candidate_deleted_after_the_search(store: KLVectorStore, monkeypatch: pytest.MonkeyPatch) -> None:
    original = KLVectorStore._results
    deleted: list[str] = []

    def results_then_delete(self: KLVectorStore, *args: Any, **kwargs: Any) -> Any:
        hits = original(self, *args, **kwargs)
        if not deleted:  # another thread deletes the best candidate right after the search
            deleted.append(str(hits[0][0].id))
            self.delete(deleted)
        return hits

    monkeypatch.setattr(KLVectorStore, "_results", results_then_delete)
    docs = store.max_marginal_relevance_search(TEXTS[0], k=3, fetch_k=6)
    assert len(docs) == 3 and deleted and deleted[0] not in [d.id for d in docs]


# ------------------------------------------------------------------ 4. MMR: same picks as the O(n^2) version
def _reference_mmr_select(
    query_neg_kl: Any, docs: Gaussians, k: int, lambda_mult: float, relevance: Any = relevance_exp, dim: Any = None
) -> list[int]:
    """The implementation before the audit (the whole n x n matrix), kept as the reference."""
    k = check_k(k)
    lam = float(lambda_mult)
    scores = [float(s) for s in query_neg_kl]
    if not scores:
        return []
    rel_q = np.array([relevance(s, dim) for s in scores])
    g = docs.numpy().astype(np.float64)
    m = np.asarray(neg_kl_matrix(g, g))
    sym = 0.5 * (m + m.T)
    rel_d = np.vectorize(lambda s: relevance(float(s), dim))(sym)
    chosen = [int(np.argmax(rel_q))]
    while len(chosen) < min(k, len(scores)):
        redundancy = rel_d[:, chosen].max(axis=1)
        value = lam * rel_q - (1.0 - lam) * redundancy
        value[chosen] = -np.inf
        chosen.append(int(np.argmax(value)))
    return chosen


def _user_relevance(score: float, dim: int | None) -> float:
    return 1.0 / (1.0 + abs(score)) ** 2


@pytest.mark.parametrize("relevance", [relevance_exp, relevance_inverse, relevance_exp_per_dim, _user_relevance])
def test_mmr_select_picks_exactly_what_the_full_matrix_version_picked(relevance: Any) -> None:
    rng = np.random.default_rng(42)
    for trial in range(12):
        n, dim = int(rng.integers(1, 40)), int(rng.integers(1, 24))
        mean = rng.normal(size=(n, dim)).astype(np.float32)
        var = rng.uniform(0.3, 2.0, size=(n, dim)).astype(np.float32)
        if n > 3 and trial % 2:  # exact duplicates: tied candidates, tied redundancies
            mean[1], var[1] = mean[0], var[0]
            mean[n - 1], var[n - 1] = mean[2], var[2]
        docs = Gaussians(mean, var)
        query = Gaussians(rng.normal(size=(1, dim)), rng.uniform(0.5, 1.5, size=(1, dim)))
        scores = np.asarray(neg_kl_matrix(query, docs.astype(np.float64)))[0].tolist()
        if trial % 3 == 0:
            scores = [round(s, 0) for s in scores]  # many tied query scores
        for k in (1, 2, 5, n + 3):
            for lam in (0.0, 0.3, 0.5, 1.0):
                expected = _reference_mmr_select(scores, docs, k, lam, relevance, dim)
                assert mmr_select(scores, docs, k, lam, relevance, dim) == expected, (trial, n, k, lam)


def test_mmr_select_scores_redundancy_only_against_the_chosen_documents() -> None:
    """O(k n) relevance evaluations (n for the query, one column of n per pick after the first), not n^2."""
    rng = np.random.default_rng(0)
    n, k = 60, 4
    docs = Gaussians(rng.normal(size=(n, 5)), rng.uniform(0.5, 1.5, size=(n, 5)))
    scores = (-rng.uniform(0.0, 3.0, size=n)).tolist()
    calls = []

    def counting(score: float, dim: int | None) -> float:
        calls.append(score)
        return relevance_exp(score, dim)

    expected = _reference_mmr_select(scores, docs, k, 0.5, relevance_exp, None)
    assert mmr_select(scores, docs, k, 0.5, counting) == expected
    assert len(calls) <= n + (k - 1) * n + 1  # the full matrix took n + n * n


def test_mmr_select_refuses_nan_scores_as_before() -> None:
    docs = Gaussians(np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"score \(-KL\) in \[-inf, 0\]"):
        mmr_select([0.0, math.nan], docs, 2, 0.5)


# ------------------------------------------------------------------ 5. $neq
def _matches(spec: Any, doc: dict[str, Any]) -> bool:
    predicate = compile_filter(spec)
    assert predicate is not None
    return predicate(doc)


def test_neq_is_an_alias_of_ne(store: KLVectorStore) -> None:
    for value, doc in [(2, {"n": 2}), (2, {"n": 3}), (2, {})]:
        assert _matches({"n": {"$neq": value}}, doc) == _matches({"n": {"$ne": value}}, doc)
    got = {d.id for d in store.similarity_search(TEXTS[0], k=10, filter={"n": {"$neq": 2}})}
    assert got == {f"d{i}" for i in range(len(TEXTS)) if i != 2}
    with pytest.raises(ValueError, match=r"\$neq is accepted as an alias of \$ne"):
        compile_filter({"n": {"$nope": 1}})


def test_missing_key_does_not_match_none(store: KLVectorStore) -> None:
    """Kept (documented): a document without the key does not match {"key": None} or $in [None]."""
    assert _matches({"k": None}, {}) is False
    assert _matches({"k": {"$in": [None]}}, {}) is False
    assert _matches({"k": None}, {"k": None}) is True


# ------------------------------------------------------------------ 6. index_name
def test_save_and_load_with_index_name(store: KLVectorStore, encoder: Any, tmp_path: Path) -> None:
    emb = KLEmbeddings(encoder)
    other = KLVectorStore.from_texts(["only one text"], emb, ids=["x"])
    folder = tmp_path / "shared"
    assert store.save_local(folder, index_name="a") == folder / "a"
    other.save_local(folder, index_name="b")
    store.save_local(folder)  # the default "index": the folder itself, beside the named ones
    assert len(KLVectorStore.load_local(folder, emb, index_name="a")) == len(TEXTS)
    assert KLVectorStore.load_local(folder, emb, index_name="b").get_by_ids(["x"])[0].page_content == "only one text"
    assert len(KLVectorStore.load_local(folder, emb)) == len(TEXTS)
    assert len(KLVectorStore.load_local(folder, emb, index_name="index")) == len(TEXTS)
    with pytest.raises(FileNotFoundError):
        KLVectorStore.load_local(folder, emb, index_name="c")
    for bad in ("../evil", "a/b", "..", ".", "", "a\\b"):
        with pytest.raises(ValueError, match="plain folder name"):
            store.save_local(folder, index_name=bad)
        with pytest.raises(ValueError, match="plain folder name"):
            KLVectorStore.load_local(folder, emb, index_name=bad)
    assert not (tmp_path / "evil").exists()


def test_named_indexes_only_folder_hints_at_index_name(store: KLVectorStore, encoder: Any, tmp_path: Path) -> None:
    store.save_local(tmp_path / "db", index_name="news")
    with pytest.raises(ValueError, match=r"named indexes \['news'\]; pass index_name="):
        KLVectorStore.load_local(tmp_path / "db", KLEmbeddings(encoder))


# ------------------------------------------------------------------ 7. a KLStore without an encoder
def _no_default_model(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the default model was loaded")


def test_store_without_encoder_of_another_dimension_fails_early(
    encoder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kl_retrievers.langchain as lc
    from kl_retrievers import pretrained

    KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder)).store.save(tmp_path / "s")
    bare = KLStore.load(tmp_path / "s")  # encoder=None
    assert bare.encoder is None and bare.dim == 8
    monkeypatch.setattr(lc, "_load_default_encoder", _no_default_model)

    def unloadable(name: Any = None, **kwargs: Any) -> Any:  # no hub lookup in a test
        raise pretrained.ModelNotFoundError(f"cannot find model {name!r}")

    monkeypatch.setattr(pretrained, "load_model", unloadable)
    # since stop 42 the model it was saved with ('tiny-random', which cannot be loaded) is tried, never the default
    pattern = (
        r"has no encoder to encode text, and loading the model it was saved with, 'tiny-random', failed"
        r".*pass embedding="
    )
    with pytest.raises(ValueError, match=pattern):
        KLVectorStore(store=bare).similarity_search("cat")
    with pytest.raises(ValueError, match=pattern):
        KLRetriever.from_store(bare).invoke("cat")
    # searching by Gaussian needs no encoder and still works
    q = encoder.encode_queries(["cat"]).numpy()
    assert len(KLVectorStore(store=bare).similarity_search_by_vector(q, k=2)) == 2
    # with an encoder it works
    assert len(KLRetriever.from_store(bare, embedding=KLEmbeddings(encoder), k=2).invoke("cat")) == 2


def test_store_without_encoder_of_the_default_dimension_loads_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.langchain as lc

    bare = KLStore()
    bare.add(gaussians=Gaussians(np.ones((2, 384)) / 20, np.ones((2, 384))), ids=["a", "b"])
    loaded: list[Any] = []

    class _Default:
        name_or_path = "kl_retrievers:fake-default"

        def encode_queries(self, texts: Any, **kwargs: Any) -> Gaussians:
            loaded.append(texts)
            return Gaussians(np.ones((len(texts), 384)) / 20, np.ones((len(texts), 384)))

        def encode_documents(self, texts: Any, **kwargs: Any) -> Gaussians:
            return self.encode_queries(texts)

    monkeypatch.setattr(lc, "_load_default_encoder", lambda backend=None: _Default())
    assert len(KLVectorStore(store=bare).similarity_search("q", k=2)) == 2 and loaded


# ------------------------------------------------------------------ 9. a callable relevance is not saved
def test_save_local_warns_about_a_callable_relevance(
    encoder: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def my_relevance(score: float, dim: int | None) -> float:
        return math.exp(score / 2)

    vs = KLVectorStore.from_texts(TEXTS[:2], KLEmbeddings(encoder), relevance=my_relevance)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.langchain"):
        vs.save_local(tmp_path / "db")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "my_relevance" in r.getMessage()]
    assert len(warned) == 1 and "not saved" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.langchain"):
        KLVectorStore.from_texts(TEXTS[:2], KLEmbeddings(encoder)).save_local(tmp_path / "db2")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_store_saved_with_another_model_of_the_same_dimension_fails_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bundled model is 384-dimensional: the recorded model, not the dimension, decides.

    Since stop 42 the model the store was saved with is loaded (as ``load_local`` does); one that cannot be
    loaded is refused with the name, and never replaced by the default model.
    """
    import json

    import kl_retrievers.langchain as lc
    from kl_retrievers import pretrained

    store = KLStore()
    store.add(gaussians=Gaussians(np.ones((2, 384)) / 20, np.ones((2, 384))), ids=["a", "b"])
    store.save(tmp_path / "s")
    config_file = tmp_path / "s" / "config.json"
    monkeypatch.setattr(lc, "_load_default_encoder", _no_default_model)

    def unloadable(name: Any = None, **kwargs: Any) -> Any:
        raise pretrained.ModelNotFoundError(f"cannot find model {name!r}")

    monkeypatch.setattr(pretrained, "load_model", unloadable)
    for saved_with in ("kl_retrievers:bge-small-unit-variance", str(tmp_path / "my-model")):
        config = json.loads(config_file.read_text())
        config["encoder"] = {"name_or_path": saved_with, "config": None}
        config_file.write_text(json.dumps(config))
        bare = KLStore.load(tmp_path / "s")
        assert bare.saved_encoder == saved_with
        with pytest.raises(ValueError, match=r"has no encoder.*saved with.*pass embedding="):
            KLVectorStore(store=bare).similarity_search("cat")


# ------------------------------------------------------------------ review of the fixes
def test_k_1_with_a_floor_and_several_candidates_is_answered(
    store: KLVectorStore, encoder: Any, calibrator: ConfidenceCalibrator
) -> None:
    """The candidate count is the depth read for the confidence, not the k returned: k=1 does not abstain."""
    dense = KLRetriever.from_store(store, k=1, calibrator=calibrator, min_confidence=0.01)
    assert [d.page_content for d in dense.invoke(TEXTS[3])] == [TEXTS[3]]
    hybrid = KLHybridStore(encoder, fusion="rrf")
    hybrid.add(TEXTS, ids=[f"d{i}" for i in range(len(TEXTS))], metadatas=META)
    fused = KLHybridRetriever(store=hybrid, k=1, calibrator=calibrator, min_confidence=0.01)
    assert len(fused.invoke(TEXTS[3])) == 1


def test_date_filters_compare_with_the_stored_iso_strings(store: KLVectorStore) -> None:
    store.add_texts(["dated a", "dated b"], [{"d": datetime.date(2024, 5, 1)}, {"d": datetime.date(2020, 1, 1)}])
    after = store.similarity_search("dated", k=5, filter={"d": {"$gte": datetime.date(2023, 1, 1)}})
    assert [d.page_content for d in after] == ["dated a"]
    same = store.similarity_search("dated", k=5, filter={"d": datetime.date(2020, 1, 1)})
    assert [d.page_content for d in same] == ["dated b"]


def test_keys_that_collide_as_json_strings_are_refused(store: KLVectorStore) -> None:
    with pytest.raises(TypeError, match=r"metadatas\[0\] has keys that are the same once written as JSON strings"):
        store.add_texts(["x"], [{1: "int", "1": "str"}])  # type: ignore[dict-item]


def test_hybrid_retrievers_refuse_a_weight_their_fusion_ignores(encoder: Any) -> None:
    from kl_retrievers.llama_index import KLHybridRetriever as LlamaHybridRetriever

    hybrid = KLHybridStore(encoder, fusion="rrf")
    hybrid.add(TEXTS, ids=[f"d{i}" for i in range(len(TEXTS))])
    with pytest.raises(ValueError, match="applies to convex fusion only"):
        KLHybridRetriever(store=hybrid, weight=0.2)
    with pytest.raises(ValueError, match="applies to convex fusion only"):
        LlamaHybridRetriever(hybrid, weight=0.2)
    convex = KLHybridRetriever(store=hybrid, fusion="convex", weight=0.2)
    assert {d.metadata["dense_weight"] for d in convex.invoke("green tea")} == {0.2}
    assert convex.invoke("green tea", fusion="rrf")  # its own weight is not forced on another fusion
    with pytest.raises(ValueError, match="applies to convex fusion only"):
        convex.invoke("green tea", fusion="rrf", weight=0.3)


def test_index_name_cannot_take_the_default_index_files(store: KLVectorStore, tmp_path: Path) -> None:
    for name in ("klstore", "langchain.json"):
        with pytest.raises(ValueError, match="taken by the files of the default index"):
            store.save_local(tmp_path / "db", index_name=name)
