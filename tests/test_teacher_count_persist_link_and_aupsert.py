"""Fix G1: leftovers a review found in 4498a8e, 9e40c21 and 74ecb01.

1. ``CrossEncoderTeacher._count`` gave each piece after a counted one the usual length again (4498a8e); the next
   piece starts two words before the first word not counted, and where those two words are longer than a usual
   piece that word lay outside it, so the whole text was tokenized at once (+784 MB on 5 M characters).
2. LlamaIndex ``KLVectorStore.persist`` went through a linked folder once per part (as LangChain's
   ``save_local`` did before 9e40c21): a link re-pointed mid-persist split the parts across two folders.
3. LangChain ``aupsert`` re-implemented ``upsert`` on ``aadd_texts`` (74ecb01): a subclass's ``upsert`` was
   no longer called.
4. LangChain ``aadd_texts`` checked every text on the event loop's thread, and again in the worker (74ecb01);
   only the ids are checked on the loop's thread now.
5. ``KLHybridStore`` hinted ``query_gaussians=`` for any non-object array given as queries, bytes and strings too.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_teacher_cut_and_id_checks as cut_checks
from langchain_core.documents import Document
from test_async_add_order_and_metadata_keys import CountingEncoder, own_executor, within

import kl_retrievers.langchain as klc
from conftest import max_score_calibrator, random_gaussians
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.store import KLStore

#: The tiny random ONNX cross-encoder of the teacher's cut tests (a module-scoped fixture, built once here).
cross_encoder_dir = cut_checks.cross_encoder_dir

_USUAL = cut_checks.MAX_LENGTH * 16  # a piece's length with _COUNT_CHARS = 0: _CUT_CHARS_PER_TOKEN * max_length


# ------------------------------------------------------------------ 1: two long words before a piece's boundary
@pytest.mark.parametrize("word", [_USUAL // 2 + 44, 2 * _USUAL])  # each just over half a piece, or two pieces
# ordinary words before the long ones (with none, one piece from the start can hold the whole text, by design)
@pytest.mark.parametrize("before", [5, 37, 90])
def test_the_count_never_tokenizes_the_whole_text_after_two_long_words(
    cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch, word: int, before: int
) -> None:
    from kl_retrievers import _encoding
    from kl_retrievers.training import teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_COUNT_CHARS", 0)  # pieces of _USUAL characters
    assert _encoding._CUT_CHARS_PER_TOKEN * cut_checks.MAX_LENGTH == _USUAL
    teacher = cut_checks._teacher(cross_encoder_dir)
    plain = teacher._plain
    long_words = " ".join(chr(ord("a") + i) * word for i in range(4))  # consecutive words, one [UNK] each
    text = f"{cut_checks._words(before, 31)} {long_words} {cut_checks._words(400, 32)}".strip()
    lengths: list[int] = []  # the length of each text handed to the tokenizer
    teacher._plain = cut_checks._CountingTokenizer(plain, lengths)
    count = teacher._count(text)
    assert count == len(plain.encode(text, add_special_tokens=False).ids)  # the whole text's count
    assert len(lengths) > 3, lengths  # counted in pieces ...
    assert len(text) not in lengths, (len(text), lengths)  # ... never the whole text at once


# ------------------------------------------------------------------ 2: LlamaIndex persist through a re-pointed link
def _li_store(calibrator: Any = None) -> Any:
    from kl_retrievers.llama_index import KLVectorStore

    store = KLStore()
    store.add(["a", "b"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    return KLVectorStore(store, calibrator=calibrator)


@pytest.mark.parametrize("when", ["before_writes", "between_writes"])
@pytest.mark.parametrize("calibrated", [True, False])
def test_persist_writes_every_part_where_the_link_pointed_at_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, calibrated: bool
) -> None:
    from kl_retrievers import _adapters as adapters
    from kl_retrievers.llama_index import KLVectorStore

    (tmp_path / "v3").mkdir()
    (tmp_path / "v4").mkdir()
    (tmp_path / "v4" / "notes.txt").write_text("mine")
    link = tmp_path / "current"
    link.symlink_to("v3")
    manifest = "default__vector_store.json"
    stale = tmp_path / "v3" / "default__vector_store.calibrator.json"
    if not calibrated:  # a calibrator persisted earlier, which the persist without one removes
        _li_store(max_score_calibrator()).persist(str(tmp_path / "v3" / manifest))
        assert stale.is_file()

    def repoint() -> None:
        link.unlink()
        link.symlink_to("v4")

    real_save = adapters.save_store_with_manifest

    def save_store(*args: Any, **kwargs: Any) -> None:
        if when == "before_writes":  # after the folder was made, before the store folder is written
            repoint()
        real_save(*args, **kwargs)
        if when == "between_writes":  # after the store folder, before the calibrator and the manifest
            repoint()

    monkeypatch.setattr(adapters, "save_store_with_manifest", save_store)
    _li_store(max_score_calibrator() if calibrated else None).persist(str(link / manifest))
    saved = tmp_path / "v3"
    parts = {manifest, "default__vector_store.klstore"} | ({stale.name} if calibrated else set())
    assert {p.name for p in saved.iterdir()} == parts  # the stale calibrator removed there, without one
    assert [p.name for p in (tmp_path / "v4").iterdir()] == ["notes.txt"]  # nothing written there
    assert link.is_symlink() and os.readlink(link) == "v4"  # the link is kept (as re-pointed)
    loaded = KLVectorStore.from_persist_path(str(saved / manifest))
    assert len(loaded.kl_store) == 2
    outer = json.loads((saved / manifest).read_text())
    inner = json.loads(next((saved / "default__vector_store.klstore").glob("*manifest*.json")).read_text())
    assert outer["persist_id"] == inner["persist_id"]  # both from one persist


# ------------------------------------------------------------------ 3: aupsert calls a subclass's upsert
class TaggingStore(klc.KLVectorStore):
    """A subclass whose ``upsert`` tags every document's metadata."""

    def upsert(self, documents: Any, ids: list[str] | None = None) -> dict[str, list[str]]:
        docs = [Document(d.page_content, id=d.id, metadata={**d.metadata, "tagged": True}) for d in documents]
        return super().upsert(docs, ids)


@pytest.mark.asyncio
async def test_aupsert_runs_a_subclasss_upsert_in_a_worker_thread() -> None:
    store = TaggingStore(CountingEncoder())
    with own_executor(asyncio.get_running_loop()) as pool:
        done = await within(store.aupsert([Document("x", id="a"), Document("y", id="")]))
        assert pool.submitted == 1  # one worker thread ran it
        docs: Any = iter([Document("z")])  # iterators, read once, on this thread
        ids = await within(store.aupsert(docs, ids=iter(["c"])))  # type: ignore[arg-type]
    assert done["succeeded"][0] == "a" and len(done["succeeded"][1]) == 32
    assert ids == {"succeeded": ["c"], "failed": []}
    assert [d.metadata for d in store.get_by_ids(["a", done["succeeded"][1], "c"])] == [{"tagged": True}] * 3


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("docs", "ids", "error", "match"),
    [
        ([Document("x", id="a"), Document("y", id="a")], None, ValueError, "ids must be unique within one add call"),
        ([Document("x"), Document("y")], ["a", "b\udce9"], ValueError, r"ids\[1\] holds a lone surrogate"),
        ([Document("x")], ["a", "b"], ValueError, "got 2 ids for 1 texts"),
    ],
)
async def test_aupsert_of_a_subclass_refuses_bad_ids_before_its_upsert_runs(
    docs: list[Document], ids: list[str] | None, error: type[Exception], match: str
) -> None:
    store = TaggingStore(CountingEncoder())
    with own_executor(asyncio.get_running_loop()) as pool:
        with pytest.raises(error, match=match):
            await within(store.aupsert(docs, ids=ids))
        assert pool.submitted == 0  # raised on the caller's thread
    assert len(store) == 0


# ------------------------------------------------------------------ 4: aadd_texts checks texts in the worker only
@pytest.mark.asyncio
async def test_aadd_texts_checks_the_texts_in_the_worker_thread_only(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    real = klc.check_texts

    def recording(*args: Any, **kwargs: Any) -> list[str]:
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(klc, "check_texts", recording)
    store = klc.KLVectorStore(CountingEncoder())
    loop_thread = threading.current_thread()
    with own_executor(asyncio.get_running_loop()):
        assert await within(store.aadd_texts(["x", "y"], ids=["a", "b"])) == ["a", "b"]
        assert await within(store.aadd_texts((t for t in ["z"]), ids=iter(["c"]))) == ["c"]
        assert threads and loop_thread not in threads, threads  # checked, in the worker thread only
        # a bad text still fails, in the worker, with add_texts' error; a bad container on the caller's thread
        with pytest.raises(TypeError, match=r"texts\[1\] is int; every text must be a str"):
            await within(store.aadd_texts(["x", 1], ids=["d", "e"]))  # type: ignore[list-item]
        with pytest.raises(TypeError, match="texts must be a sequence of str, not a single str"):
            await within(store.aadd_texts("xy", ids=["d", "e"]))
    assert sorted(store.store.ids) == ["a", "b", "c"]


def test_check_write_ids_fast_path_gives_the_full_checks_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common case is checked in a few C loops (one by one, 200,000 ids held the event loop 0.45 s); what
    it lets through or refuses is the full check's."""
    from kl_retrievers._adapters import check_write_ids
    from kl_retrievers.store import _base

    full: list[int] = []
    real = _base._check_texts_and_ids

    def recording(texts: Any, gaussians: Any, ids: Any) -> Any:
        full.append(len(ids))
        return real(texts, gaussians, ids)

    monkeypatch.setattr(_base, "_check_texts_and_ids", recording)
    ids = [f"id{i}" for i in range(1000)]
    assert check_write_ids(ids) == ids and check_write_ids(ids) is not ids
    assert full == []  # the common case: no check one by one
    assert check_write_ids([]) == [] and check_write_ids(None) is None
    cases: list[tuple[Any, type[Exception], str]] = [
        (["a", "b", "a"], ValueError, "'a' is at positions 0 and 2"),
        (["a", "\ud83d", "\ude00"], ValueError, r"ids\[1\] holds a lone surrogate"),  # a pair across two ids
        (["a", 1], TypeError, r"ids\[1\] must be a str"),
    ]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            check_write_ids(bad)


# ------------------------------------------------------------------ 5: the query_gaussians= hint for numbers only
@pytest.mark.parametrize(
    ("queries", "hinted"),
    [
        (np.array([b"x"]), False),  # bytes
        (np.array([["x"], ["y"]]), False),  # strings, the wrong shape
        (("x", np.array(["a"])), False),  # a str array in a tuple
        (np.array([[0.0, 1.0], [1.0, 0.0]]), True),  # means
        (np.array([[0, 1], [1, 0]]), True),  # integer means
        (("x", np.array([1.0])), True),  # (mean, var)-like
    ],
)
def test_only_numeric_arrays_get_the_query_gaussians_hint(queries: Any, hinted: bool) -> None:
    store = KLHybridStore(fusion="rrf")
    store.add(["x y", "y z"], gaussians=Gaussians(np.eye(2), np.ones((2, 2))), ids=["a", "b"])
    with pytest.raises(TypeError) as info:
        store.search_batch(queries, k=1, query_gaussians=Gaussians(np.eye(2), np.ones((2, 2))))
    assert ("query_gaussians=" in str(info.value)) is hinted, str(info.value)
