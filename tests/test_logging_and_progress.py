"""Logging that users see, and progress bars that obey the user.

* No ``NullHandler`` on the package logger: in a program that configured no logging, the library's
  warnings (a store loaded with another model, ...) reach stderr through Python's last-resort handler.
* Warnings that a service loop would repeat on every call: the naive / aware date filter warns once per
  process (DEBUG after), a delete of unknown ids logs at INFO, an upsert's "replaced" line at DEBUG.
* An abstention's log line holds the user's query text: DEBUG only (nothing at INFO).
* ``TQDM_DISABLE`` (any non-empty value, as tqdm reads it) hides every bar, also one asked for explicitly.
* A bar opened under another (an encoder's under the shard bar, an evaluation's under a training bar)
  clears its line when done; every bar is plain ``tqdm.tqdm`` (the shard bar was ``tqdm.auto``).
"""

from __future__ import annotations

import ast
import datetime
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tqdm

import kl_retrievers
from conftest import make_tiny_encoder, random_gaussians, tiny_train_config, write_tiny_beir
from kl_retrievers import filters
from kl_retrievers._encoding import progress_bar
from kl_retrievers.store import KLStore

K = 4
PACKAGE = Path(kl_retrievers.__file__).parent


# ------------------------------------------------------------------ 1. warnings reach stderr without a logging setup
_NO_LOGGING_SETUP = textwrap.dedent(
    """
    import datetime, logging
    import kl_retrievers
    from kl_retrievers import filters, store
    match = filters.compile_filter({"t": {"$gte": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)}})
    print(match({"t": "2024-01-02T00:00:00"}))
    logging.getLogger("kl_retrievers.store").warning("a warning of the package")
    logging.getLogger("kl_retrievers.store").info("an info line of the package")
    """
)


def test_warnings_reach_stderr_when_the_program_configured_no_logging() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NO_LOGGING_SETUP], capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert "metadata filter: the stored value '2024-01-02T00:00:00' is naive" in done.stderr
    assert "a warning of the package" in done.stderr
    assert "an info line of the package" not in done.stderr  # lastResort shows WARNING and above only


def test_the_package_logger_has_no_handler() -> None:
    assert logging.getLogger("kl_retrievers").handlers == []


# ------------------------------------------------------------------ 2. no warning flood in a service loop
def _records(caplog: pytest.LogCaptureFixture, name: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == level]


@pytest.fixture
def fresh_filter_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's own once-per-process set of date-filter warnings."""
    monkeypatch.setattr(filters, "_MISMATCH_WARNED", set(), raising=False)


@pytest.mark.usefixtures("fresh_filter_warnings")
def test_a_date_filter_repeated_by_a_service_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    store = KLStore()
    days = [{"when": f"2024-01-0{d}T00:00:00"} for d in (1, 2, 3)]  # naive
    store.add(gaussians=random_gaussians(3, K), ids=["a", "b", "c"], metadatas=days)
    aware = {"when": {"$gte": datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)}}
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers.filters"):
        for _ in range(20):
            assert store.search(random_gaussians(1, K, seed=1), k=3, filter=aware) == []
    warned = _records(caplog, "kl_retrievers.filters", logging.WARNING)
    assert len(warned) == 1, warned
    assert "naive" in warned[0] and "2024-01-02T00:00:00+00:00" in warned[0]
    assert len(_records(caplog, "kl_retrievers.filters", logging.DEBUG)) == 19  # still there for debugging
    caplog.clear()
    naive = {"when": {"$gte": datetime.datetime(2024, 1, 2)}}  # the other way round: its own first warning
    aware_store = KLStore()
    aware_store.add(gaussians=random_gaussians(1, K), ids=["z"], metadatas=[{"when": "2024-01-05T00:00:00+00:00"}])
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers.filters"):
        for _ in range(3):
            aware_store.search(random_gaussians(1, K), k=1, filter=naive)
    assert len(_records(caplog, "kl_retrievers.filters", logging.WARNING)) == 1


def test_deleting_unknown_ids_is_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(2, K), ids=["a", "b"])
    with caplog.at_level(logging.INFO, logger="kl_retrievers"):
        for _ in range(5):
            assert store.delete(["gone"]).missing == ["gone"]
    assert [r.levelno for r in caplog.records if "not found" in r.getMessage()] == [logging.INFO] * 5


def test_an_upsert_logs_its_replacements_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(2, K), ids=["a", "b"])
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers"):
        store.add(gaussians=random_gaussians(2, K, seed=3), ids=["a", "b"])
    levels = [r.levelno for r in caplog.records if "replaced 2 existing" in r.getMessage()]
    assert levels == [logging.DEBUG]


# ------------------------------------------------------------------ 3. abstentions: no query text at INFO
SECRET = "patient John Doe, HIV positive: treatment options?"


def _abstain_with_the_confidence_helper() -> None:
    from kl_retrievers._confidence import log_abstention

    log_abstention(SECRET, 0.1, 0.5)


def _abstain_with_the_llama_index_postprocessor() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from kl_retrievers.llama_index import KLConfidencePostprocessor

    nodes = [NodeWithScore(node=TextNode(text="x", metadata={"confidence": 0.1}), score=0.5)]
    assert KLConfidencePostprocessor(min_confidence=0.5).postprocess_nodes(nodes, QueryBundle(SECRET)) == []


@pytest.mark.parametrize("abstain", [_abstain_with_the_confidence_helper, _abstain_with_the_llama_index_postprocessor])
def test_an_abstention_logs_the_query_text_at_debug_only(caplog: pytest.LogCaptureFixture, abstain: Any) -> None:
    with caplog.at_level(logging.INFO, logger="kl_retrievers"):
        abstain()
    assert [r.getMessage() for r in caplog.records if "John Doe" in r.getMessage()] == []
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers"):
        abstain()
    said = [r for r in caplog.records if "John Doe" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG and "abstained on" in said[0].getMessage()


# ------------------------------------------------------------------ 4. TQDM_DISABLE hides every bar
def _exact(show: bool) -> None:
    from kl_retrievers.evaluation import retrieve_exact

    ids = [f"d{i}" for i in range(5)]
    retrieve_exact(random_gaussians(3, K), random_gaussians(5, K), ["q0", "q1", "q2"], ids, k=2, show_progress=show)


def _encode(show: bool) -> None:
    make_tiny_encoder().encode_documents([f"text {i}" for i in range(5)], batch_size=2, show_progress_bar=show)


def _bm25(show: bool, tmp: Path) -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.baselines import bm25_run
    from kl_retrievers.datasets import load_beir

    bm25_run(load_beir(str(write_tiny_beir(tmp / "beir")), split="test"), k=2, show_progress=show)


def _train(show: bool) -> None:
    from kl_retrievers.training import TrainingSet, train_encoder

    rows = [
        {"query": "cat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"]},
        {"query": "tea", "positives": ["green tea and bread"], "negatives": ["water on black rock"]},
    ]
    train_encoder(make_tiny_encoder(), TrainingSet.from_rows(rows), tiny_train_config(2, show_progress=show))


def _features(show: bool, tmp: Path) -> None:
    from kl_retrievers.training.features import compute_features

    texts = [f"text number {i}" for i in range(5)]
    compute_features(make_tiny_encoder(), texts, max_length=16, batch_size=2, show_progress=show, desc="Feat bar")


def _mine(show: bool) -> None:
    import numpy as np

    from kl_retrievers.training import TrainingSet
    from kl_retrievers.training.data import mine_negatives_from_scores

    ts = TrainingSet.from_rows([{"query": "cat", "positives": ["the cat"]}, {"query": "dog", "positives": ["a dog"]}])
    n_docs = len(ts.docs)
    mine_negatives_from_scores(ts, lambda idx: np.ones((len(idx), n_docs)), k=1, batch_size=1, show_progress=show)


BARS: dict[str, Any] = {
    "evaluation.retrieve_exact": lambda show, tmp: _exact(show),
    "encoder": lambda show, tmp: _encode(show),
    "baselines.bm25_run": _bm25,
    "trainer": lambda show, tmp: _train(show),
    "features": _features,
    "data.mine_negatives_from_scores": lambda show, tmp: _mine(show),
}


@pytest.mark.parametrize("site", sorted(BARS))
def test_tqdm_disable_hides_a_bar_asked_for(
    site: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    BARS[site](True, tmp_path / "shown")
    assert "%|" in capsys.readouterr().err  # the bar this site draws when asked
    monkeypatch.setenv("TQDM_DISABLE", "1")
    BARS[site](True, tmp_path / "hidden")
    assert "%|" not in capsys.readouterr().err


@pytest.mark.parametrize(("value", "hidden"), [("1", True), ("0", True), ("true", True), ("", False)])
def test_tqdm_disable_is_read_as_tqdm_reads_it(monkeypatch: pytest.MonkeyPatch, value: str, hidden: bool) -> None:
    from kl_retrievers._encoding import progress_enabled

    monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress_enabled(True) is not hidden
    assert progress_enabled(False) is False


def _tqdm_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "tqdm":
                yield node


def test_every_bar_of_the_package_follows_the_rule() -> None:
    """Each ``tqdm(...)`` passes ``disable=not progress_enabled(...)`` (or is :func:`progress_bar`'s own)."""
    unruled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "_encoding.py":
            continue
        for call in _tqdm_calls(ast.parse(path.read_text(encoding="utf-8"))):
            disable = next((kw.value for kw in call.keywords if kw.arg == "disable"), None)
            if disable is None or "progress_enabled(" not in ast.unparse(disable):
                unruled.append(f"{rel}:{call.lineno}")
    assert unruled == []
    tqdm_auto = [
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "tqdm.auto" in p.read_text(encoding="utf-8")
    ]
    assert tqdm_auto == []  # one kind of bar: plain tqdm.tqdm


# ------------------------------------------------------------------ 5. nested bars leave no line
@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """``(desc, whether its line stays)`` of every ``tqdm.tqdm`` bar closed from now on (tqdm's own rule)."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    closed: list[tuple[str, bool]] = []

    class Recording(tqdm.tqdm):  # type: ignore[type-arg]
        def close(self) -> None:
            if not self.disable:  # close() disables the bar: a second close is not counted
                pos = abs(self.pos)
                closed.append((self.desc, pos == 0 if self.leave is None else bool(self.leave)))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    return closed


def test_an_evaluation_under_a_training_bar_leaves_no_line(
    bars: list[tuple[str, bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    with progress_bar(2, desc="training", show=True) as outer:
        _exact(True)
        outer.update(2)
    _exact(True)  # alone, its line stays
    assert bars == [("exact retrieval", False), ("training", True), ("exact retrieval", True)]


def test_a_sharded_encode_keeps_the_shard_bar_only(
    bars: list[tuple[str, bool]], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.sharded import encode_corpus

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the encoder's own bar shows on a terminal only
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"text number {i} about bees\n" for i in range(12)), encoding="utf-8")
    encode_corpus(corpus, tmp_path / "out", encoder=make_tiny_encoder(), shard_size=4, batch_size=2)
    assert bars == [("Encoding documents", False)] * 3 + [("Encoding 3 shards", True)]


# ------------------------------------------------------------------ 6. a user's text stays out of warnings
def test_an_unknown_tokens_warning_holds_no_text(caplog: pytest.LogCaptureFixture) -> None:
    """The [UNK]-only warning reaches stderr: it says how long the text is; the text itself is at DEBUG."""
    secret = "กรุงเทพมหานคร"
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers"):
        make_tiny_encoder().encode_queries([secret])
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "unknown tokens only" in warned[0] and f"a text of length {len(secret)} " in warned[0]
    assert secret not in warned[0]
    assert any(secret in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


# ------------------------------------------------------------------ 7. the Milvus insert bar obeys the rule
class _UpsertRecorder:
    """What ``MilvusKLStore._upsert`` reads of its store: the batch size, the bar flag, and a client."""

    insert_batch = 2
    _has_added = False
    collection_name = "c"
    request_timeout = None

    def __init__(self, show: bool) -> None:
        self.show_progress_bar = show
        self._client = self
        self.batches: list[list[str]] = []

    def upsert(self, collection: str, rows: list[dict[str, Any]], timeout: Any = None) -> None:
        self.batches.append([row["id"] for row in rows])

    def _text(self, text: str | None) -> str | None:
        return text


@pytest.mark.parametrize("tqdm_disable", ["", "1"])
def test_the_milvus_insert_bar_is_a_plain_bar_that_tqdm_disable_hides(
    bars: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tqdm_disable: str
) -> None:
    import numpy as np

    from kl_retrievers.store.milvus import MilvusKLStore

    if tqdm_disable:
        monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    store = _UpsertRecorder(show=True)
    ids = [f"d{i}" for i in range(5)]
    MilvusKLStore._upsert(store, np.zeros((5, 3)), ids, ["t"] * 5, [{}] * 5)  # type: ignore[arg-type]
    assert store.batches == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    assert bars == ([] if tqdm_disable else [("Inserting into Milvus", True)])
    quiet = _UpsertRecorder(show=False)
    MilvusKLStore._upsert(quiet, np.zeros((5, 3)), ids, ["t"] * 5, [{}] * 5)  # type: ignore[arg-type]
    assert quiet.batches == store.batches and len(bars) == (0 if tqdm_disable else 1)
