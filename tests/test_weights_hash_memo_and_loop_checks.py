"""``cached_sha256``'s memo follows git's "racy clean" rule; async adds check no text on the event loop's thread.

- ``hub.cached_sha256`` keeps no digest while the file's modification or status-change time is within
  ``hub._RACY_NS`` (2 s) of now, or ahead of it, as ``hub.source_sha256`` does: on a file system with coarse
  timestamps an in-place edit of the same size in that tick leaves every stamp as it was.
- LangChain's ``KLHybridRetriever.aadd_documents`` and LlamaIndex's ``KLVectorStore.async_add`` and
  ``KLHybridRetriever.async_add_nodes`` check the ids on the caller's (event loop's) thread and leave the text
  checks (``check_texts``) to the worker thread, as LangChain's ``KLVectorStore.aadd_texts`` does; a bad text
  still fails with the sync method's error.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import TextNode
from test_async_add_order_and_metadata_keys import CountingEncoder, own_executor, within

import kl_retrievers._encoding as encoding
import kl_retrievers.hub as hub
import kl_retrievers.hybrid as hybrid
import kl_retrievers.langchain as klc
import kl_retrievers.llama_index as kli
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.store import KLStore, _base

# ------------------------------------------------------------------ cached_sha256's memo: git's "racy clean"


def test_a_file_stamped_now_is_not_memoised_and_an_old_one_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights-v1")
    tick = 1_700_000_000 * 10**9  # a coarse file system: every change in this second is stamped with it
    real_stat = os.stat

    class CoarseOs:
        """``os`` as ``hub`` sees it, with ``weights`` stamped ``tick`` (modification and status change)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
            info = real_stat(path, *args, **kwargs)
            if os.fspath(path) != os.fspath(weights):
                return info
            return SimpleNamespace(st_size=info.st_size, st_ino=info.st_ino, st_mtime_ns=tick, st_ctime_ns=tick)

    monkeypatch.setattr(hub, "os", CoarseOs())
    clock = [tick + 500_000_000]  # half a second after the file was stamped
    monkeypatch.setattr(hub, "time", SimpleNamespace(time_ns=lambda: clock[0]), raising=False)
    reads: Counter[str] = Counter()
    real_read = hub.sha256_file

    def counting(path: Any) -> str:
        reads[Path(path).name] += 1
        return real_read(path)

    monkeypatch.setattr(hub, "sha256_file", counting)

    def fresh() -> str:
        return hashlib.sha256(weights.read_bytes()).hexdigest()

    assert hub.cached_sha256(weights) == fresh()
    with weights.open("r+b") as fh:  # edited in place, same size, in the same tick: every stamp as it was
        fh.write(b"weights-v2")
    assert hub.cached_sha256(weights) == fresh()  # read again, not the digest of the old bytes
    assert hub.file_matches_sha256(weights, fresh())
    assert reads["model.safetensors"] == 3

    clock[0] = tick - 5 * 10**9  # stamped ahead of this clock (another machine's): not trusted either
    hub.cached_sha256(weights)
    assert reads["model.safetensors"] == 4

    clock[0] = tick + 10 * 10**9  # long after the last change: kept
    assert hub.cached_sha256(weights) == fresh()
    assert hub.cached_sha256(weights) == fresh()
    assert reads["model.safetensors"] == 5


# ------------------------------------------------------------------ async adds: texts checked in the worker only


@pytest.fixture
def check_threads(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The thread of each ``check_texts`` call, in every module that imports it."""
    threads: list[threading.Thread] = []
    real = encoding.check_texts

    def recording(*args: Any, **kwargs: Any) -> list[str]:
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    for module in (encoding, klc, kli, hybrid, _base):
        monkeypatch.setattr(module, "check_texts", recording)
    return threads


@pytest.mark.asyncio
async def test_langchain_hybrid_aadd_documents_checks_the_texts_in_the_worker_thread_only(
    check_threads: list[threading.Thread],
) -> None:
    retriever = klc.KLHybridRetriever(store=KLHybridStore(CountingEncoder()))
    loop_thread = threading.current_thread()
    with own_executor(asyncio.get_running_loop()):
        docs = [Document(page_content="x"), Document(page_content="y")]
        assert await within(retriever.aadd_documents(docs, ids=["a", "b"])) == ["a", "b"]
        assert await within(retriever.aadd_documents(d for d in [Document(page_content="z", id="c")])) == ["c"]
        assert check_threads and loop_thread not in check_threads, check_threads  # in the worker thread only
        bad = [Document(page_content="ok"), Document(page_content="caf\udce9")]
        with pytest.raises(ValueError) as sync_error:
            retriever.add_documents(bad, ids=["d", "e"])  # on this thread: its check_texts call is not counted
        check_threads.clear()
        with pytest.raises(ValueError) as async_error:  # the worker's, add_documents' error
            await within(retriever.aadd_documents(bad, ids=["d", "e"]))
        assert str(async_error.value) == str(sync_error.value)
        with pytest.raises(TypeError, match=r"ids\[1\] must be a str"):  # a bad id: on the caller's thread
            await within(retriever.aadd_documents(docs, ids=["d", 1]))  # type: ignore[list-item]
    assert loop_thread not in check_threads
    assert sorted(retriever.store.ids) == ["a", "b", "c"]


@pytest.mark.asyncio
async def test_llama_index_async_adds_check_no_text_on_the_event_loop_thread(
    check_threads: list[threading.Thread],
) -> None:
    vector_store = kli.KLVectorStore(KLStore(CountingEncoder()))
    retriever = kli.KLHybridRetriever(KLHybridStore(CountingEncoder()))
    loop_thread = threading.current_thread()
    with own_executor(asyncio.get_running_loop()):
        assert await within(vector_store.async_add([TextNode(text="x", id_="a")])) == ["a"]
        assert await within(retriever.async_add_nodes([TextNode(text="y", id_="b")])) == ["b"]
        with pytest.raises(TypeError, match=r"nodes\[0\]\.node_id must be a str"):  # ids: on the caller's thread
            await within(vector_store.async_add([TextNode.model_construct(text="z", id_=1)]))
    assert loop_thread not in check_threads, check_threads
    assert vector_store._store.ids == ["a"] and retriever.store.ids == ["b"]
