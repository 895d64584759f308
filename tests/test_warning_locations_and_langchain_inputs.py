"""Warnings point at the user's line (not the package's, LangChain's or LlamaIndex's), and the LangChain
adapter refuses the flags, ids and documents it used to coerce.

Every warning below must carry this file as its ``filename``: that is the line a user sees, and the module a
``filterwarnings(..., module=...)`` matches (a filter on ``langchain_community`` must not hide our warning).
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder

pytest.importorskip("langchain_core")

from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from kl_retrievers._warn import user_stacklevel
from kl_retrievers.langchain import KLEmbeddings, KLHybridRetriever, KLRetriever, KLVectorStore

HERE = os.path.abspath(__file__)
TEXTS = ["the cat sat on the mat", "a dog in the sun", "green tea and bread", "the moon and the star"]


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder()


@pytest.fixture
def store(encoder: Any) -> KLVectorStore:
    return KLVectorStore.from_texts(TEXTS, encoder, metadatas=[{"i": i} for i in range(4)], ids=list("abcd"))


def recorded(fn: Callable[[], Any]) -> list[warnings.WarningMessage]:
    """The warnings ``fn()`` emits (every one, as with the 'always' filter)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)  # third-party chatter (langchain_community's sunset)
        fn()
    return list(seen)


def assert_here(seen: list[warnings.WarningMessage], text: str) -> None:
    """Exactly one warning holding ``text``, and it points at this file."""
    ours = [w for w in seen if text in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in seen]
    assert os.path.abspath(ours[0].filename) == HERE, (ours[0].filename, ours[0].lineno)


def _faiss() -> Any:
    pytest.importorskip("faiss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.vectorstores import FAISS
    return FAISS


# ------------------------------------------------------------------ the helper
def _library_like(depth: int) -> int:
    """A call chain in this file: the user's frames, none skipped."""
    return user_stacklevel() if depth == 0 else _library_like(depth - 1)


def test_user_stacklevel_skips_package_frames() -> None:
    namespace: dict[str, Any] = {"__name__": "kl_retrievers.fake", "user_stacklevel": user_stacklevel}
    exec(  # a function whose frames count as the package's (its globals' __name__)
        "def chain(depth):\n    return user_stacklevel() if depth == 0 else chain(depth - 1)\n", namespace
    )
    assert namespace["chain"](0) == 2  # warnings.warn in chain -> level 2 is this test
    assert namespace["chain"](3) == 5
    assert _library_like(2) == 1  # this file's frames are the user's: no frame skipped


# ------------------------------------------------------------------ version checks and QPP
def _newer(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["library_version"] = "99.0"
    path.write_text(json.dumps(meta))


def test_newer_saved_gaussians_warn_at_the_callers_line(tmp_path: Path, encoder: Any) -> None:
    from kl_retrievers import load_gaussians, save_gaussians

    folder = tmp_path / "g"
    save_gaussians(folder, encoder.encode_documents(["the cat", "a dog"]))
    _newer(folder / "config.json")
    assert_here(recorded(lambda: load_gaussians(folder)), "newer than this")


def test_newer_encoder_warns_at_the_callers_line(tmp_path: Path, encoder: Any) -> None:
    from kl_retrievers import GaussianEncoder, load_model

    folder = tmp_path / "enc"
    encoder.save_pretrained(folder)
    edited = 0
    for path in folder.glob("*.json"):
        if "library_version" in json.loads(path.read_text()):
            _newer(path)
            edited += 1
    assert edited
    assert_here(recorded(lambda: GaussianEncoder.from_pretrained(str(folder))), "newer than this")
    assert_here(recorded(lambda: load_model(str(folder))), "newer than this")


def test_qpp_for_run_few_queries_warns_at_the_callers_line() -> None:
    from kl_retrievers import qpp

    target = {f"q{i}": float(i % 3) for i in range(5)}
    run = {q: {f"d{j}": -float(j) - i for j in range(5)} for i, q in enumerate(target)}
    per_query = {q: {"ndcg@10": v} for q, v in target.items()}
    seen = recorded(
        lambda: qpp.qpp_for_run(run, per_query, query_ids=list(run), query_texts=["cat"] * 5, n_boot=0, depth=5)
    )
    assert_here(seen, "only 5 judged queries")


# ------------------------------------------------------------------ LangChain: ignored keyword arguments
IGNORED: dict[str, tuple[Callable[[KLVectorStore], Any], str]] = {
    "similarity_search": (lambda s: s.similarity_search("cat", k=2, filtr={"i": 1}), "similarity_search ignores"),
    "with_score": (
        lambda s: s.similarity_search_with_score("cat", k=2, filtr={"i": 1}),
        "similarity_search_with_score ignores",
    ),
    "relevance_scores": (
        lambda s: s.similarity_search_with_relevance_scores("cat", k=2, filtr={"i": 1}),
        "similarity_search_with_relevance_scores ignores",
    ),
    "search": (lambda s: s.search("cat", "similarity", k=2, filtr={"i": 1}), "similarity_search ignores"),
    "retriever_invoke": (
        lambda s: s.as_retriever(search_kwargs={"filtr": {"i": 1}}).invoke("cat"),
        "similarity_search ignores",
    ),
    "async": (
        lambda s: asyncio.run(s.asimilarity_search("cat", k=2, filtr={"i": 1})),
        "asimilarity_search ignores",
    ),
    "by_vector": (
        lambda s: s.similarity_search_by_vector(s.embeddings.embed_query("cat"), k=2, filtr={"i": 1}),
        "similarity_search_by_vector ignores",
    ),
    "add_texts": (lambda s: s.add_texts(["x"], foo=1), "add_texts ignores"),
    "delete": (lambda s: s.delete(["a"], foo=1), "delete ignores"),
}


@pytest.mark.parametrize("case", sorted(IGNORED))
def test_ignored_keyword_warns_once_at_the_callers_line_naming_the_method(store: KLVectorStore, case: str) -> None:
    call, text = IGNORED[case]
    seen = recorded(lambda: call(store))
    assert_here(seen, text)
    assert len([w for w in seen if "ignores the keyword" in str(w.message)]) == 1


# ------------------------------------------------------------------ LangChain and LlamaIndex: incompatible stores
def test_incompatible_store_warns_at_the_callers_line(encoder: Any) -> None:
    assert_here(recorded(lambda: InMemoryVectorStore.from_texts(TEXTS, KLEmbeddings(encoder))), "InMemoryVectorStore")
    FAISS = _faiss()
    assert_here(recorded(lambda: FAISS.from_texts(TEXTS, KLEmbeddings(encoder))), "KLEmbeddings used with FAISS")


def test_filtering_langchain_community_by_module_keeps_our_warning(encoder: Any) -> None:
    FAISS = _faiss()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module="langchain_community")
        FAISS.from_texts(TEXTS, KLEmbeddings(encoder))
    assert any("KLEmbeddings used with FAISS" in str(w.message) for w in seen)


def test_llama_index_incompatible_store_warns_at_the_callers_line(encoder: Any, mock_llm_settings: None) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document as LlamaDocument
    from llama_index.core import VectorStoreIndex

    from kl_retrievers.llama_index import KLEmbedding

    embedding = KLEmbedding(encoder=encoder)
    seen = recorded(
        lambda: VectorStoreIndex.from_documents([LlamaDocument(text=t) for t in TEXTS], embed_model=embedding)
    )
    assert_here(seen, "KLEmbedding used with SimpleVectorStore")


def test_incompatible_store_warning_raises_under_the_error_filter(encoder: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="InMemoryVectorStore"):
            InMemoryVectorStore.from_texts(TEXTS, KLEmbeddings(encoder))


def test_incompatible_store_warns_once_per_store_type_and_embeddings(encoder: Any) -> None:
    emb = KLEmbeddings(encoder)
    store = InMemoryVectorStore(emb)

    def use() -> None:
        for i in range(3):
            store.add_texts([f"the cat {i}"])
            store.similarity_search("cat", k=1)

    assert len(recorded(use)) == 1
    assert len(recorded(use)) == 0  # the same embeddings object, the same store type
    other = InMemoryVectorStore(KLEmbeddings(encoder))
    assert_here(recorded(lambda: other.add_texts(["x"])), "InMemoryVectorStore")  # another embeddings object


# ------------------------------------------------------------------ LangChain: flags, ids and documents
@pytest.mark.parametrize("flag", ["no", "false", 1, None])
def test_delete_all_must_be_a_bool(store: KLVectorStore, encoder: Any, flag: Any) -> None:
    with pytest.raises(TypeError, match=f"delete_all must be a bool; got {flag!r}"):
        store.delete(delete_all=flag)
    assert len(store) == 4
    hybrid = KLHybridRetriever.from_texts(TEXTS[:2], encoder)
    with pytest.raises(TypeError, match="delete_all must be a bool"):
        hybrid.delete(delete_all=flag)
    assert len(hybrid.store.ids) == 2


def test_delete_refuses_a_filter(store: KLVectorStore) -> None:
    with pytest.raises(TypeError, match="takes no filter"):
        store.delete(["a", "b"], filter={"i": 0})
    assert len(store) == 4


@pytest.mark.parametrize(
    ("bad", "shown"), [(b"a", "bytes b'a'"), (1.0, "float 1.0"), (7, "int 7"), (object(), "object <object")]
)
def test_non_str_ids_are_refused_not_coerced(store: KLVectorStore, encoder: Any, bad: Any, shown: str) -> None:
    with pytest.raises(TypeError, match=f"ids\\[1\\] must be a str; got {shown}"):
        store.add_texts(["x", "y"], ids=["x", bad])
    with pytest.raises(TypeError, match=f"ids\\[1\\] must be a str; got {shown}"):
        KLVectorStore.from_texts(["x", "y"], encoder, ids=["x", bad])
    with pytest.raises(TypeError, match=f"ids\\[1\\] must be a str; got {shown}"):
        store.delete(["a", bad])
    assert len(store) == 4 and "x" not in store.store


def test_none_and_empty_ids_still_get_fresh_ids(store: KLVectorStore) -> None:
    ids = store.add_texts(["x", "y"], ids=[None, ""])
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)


@pytest.mark.parametrize("cls", [KLVectorStore, KLRetriever, KLHybridRetriever])
def test_from_documents_of_strings_names_document(encoder: Any, cls: Any) -> None:
    with pytest.raises(TypeError, match=r"documents\[0\] must be a langchain_core Document; got str"):
        cls.from_documents(["the cat"], encoder)
    built = cls.from_documents([Document(page_content="the cat", id="c")], encoder)
    assert built is not None


def test_warnings_tolerate_frames_outside_any_module(store: KLVectorStore) -> None:
    """A caller whose globals have no ``__name__`` (exec'd code) is the user's frame."""
    seen: list[Any] = []
    code = compile("seen.extend(recorded(lambda: store.similarity_search('cat', filtr=1)))", HERE, "exec")
    exec(code, {"seen": seen, "recorded": recorded, "store": store})
    assert_here(seen, "similarity_search ignores")


# ------------------------------------------------------------------ LangChain's own keywords, async methods, -W error
def test_langchain_index_and_add_documents_batch_size_do_not_warn(store: KLVectorStore) -> None:
    from langchain_core.indexing import InMemoryRecordManager, aindex, index

    docs = [Document(page_content=f"text {i}", metadata={"source": f"s{i}"}) for i in range(3)]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ignores the keyword")  # LangChain passes batch_size
        manager = InMemoryRecordManager("sync")
        manager.create_schema()
        assert index(docs, manager, store, cleanup="full", key_encoder="sha256")["num_added"] == 3
        manager = InMemoryRecordManager("async")
        manager.create_schema()
        result = asyncio.run(
            aindex(docs, manager, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
        )
        assert result["num_skipped"] + result["num_added"] + result["num_updated"] == 3
        assert len(store.add_documents([Document(page_content="x", id="x")], batch_size=64)) == 1
        assert len(asyncio.run(store.aadd_documents([Document(page_content="y", id="y")], batch_size=64))) == 1
    assert store.get_by_ids(["x", "y"])[1].page_content == "y"


ASYNC_IGNORED: dict[str, tuple[Callable[[KLVectorStore], Any], str]] = {
    "with_score": (lambda s: s.asimilarity_search_with_score("cat", k=2, filtr=1), "asimilarity_search_with_score"),
    "by_vector": (
        lambda s: s.asimilarity_search_by_vector(s.embeddings.embed_query("cat"), k=2, filtr=1),
        "asimilarity_search_by_vector",
    ),
    "mmr": (lambda s: s.amax_marginal_relevance_search("cat", k=2, filtr=1), "amax_marginal_relevance_search"),
    "mmr_by_vector": (
        lambda s: s.amax_marginal_relevance_search_by_vector(s.embeddings.embed_query("cat"), k=2, filtr=1),
        "amax_marginal_relevance_search_by_vector",
    ),
    "adelete": (lambda s: s.adelete(["zz"], foo=1), "adelete"),
}


@pytest.mark.parametrize("case", sorted(ASYNC_IGNORED))
def test_async_ignored_keyword_warns_at_the_callers_line_naming_the_async_method(
    store: KLVectorStore, case: str
) -> None:
    call, method = ASYNC_IGNORED[case]
    seen = recorded(lambda: asyncio.run(call(store)))
    assert_here(seen, f"KLVectorStore.{method} ignores")
    assert len([w for w in seen if "ignores the keyword" in str(w.message)]) == 1


def test_async_search_keeps_the_filter_and_adelete_refuses_one(store: KLVectorStore) -> None:
    docs = asyncio.run(store.amax_marginal_relevance_search("cat", k=2, filter={"i": 1}))
    assert [d.id for d in docs] == ["b"]
    found = asyncio.run(store.asimilarity_search_with_score("cat", k=4, filter={"i": 2}))
    assert [d.id for d, _ in found] == ["c"]
    with pytest.raises(TypeError, match="adelete deletes by id and takes no filter"):
        asyncio.run(store.adelete(["a"], filter={"i": 0}))
    assert asyncio.run(store.adelete(["a"])) is True and len(store) == 3


def test_worker_thread_warning_falls_back_to_the_line_that_asked(store: KLVectorStore) -> None:
    import concurrent.futures
    import linecache

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the worker's stack: library frames only
        seen = recorded(lambda: pool.submit(store.similarity_search, "cat", 2, None, filtr=1).result())
    (ours,) = [w for w in seen if "similarity_search ignores" in str(w.message)]
    assert ours.filename.endswith(os.path.join("kl_retrievers", "langchain.py"))
    assert '_warn_ignored(kwargs, "similarity_search"' in linecache.getline(ours.filename, ours.lineno)


@pytest.mark.parametrize(
    ("module", "skipped"),
    [
        ("langchain_app", False),
        ("langchainx.tools", False),
        ("llama_index_tools", False),
        ("langchain_core.fake", True),
        ("langchain_community.fake", True),
        ("langchain", True),
        ("llama_index.core.fake", True),
        ("langchain_tests.unit_tests.fake", True),  # framework packages that run adapters' code too
        ("langchain_protocol.fake", True),
        ("langgraph.pregel.fake", True),
        ("llama_agents.fake", True),
        ("workflows", False),  # LlamaIndex's workflows package: too common a name not to be a user's own
    ],
)
def test_user_packages_named_like_the_frameworks_are_the_users(module: str, skipped: bool) -> None:
    namespace: dict[str, Any] = {"__name__": module, "user_stacklevel": user_stacklevel}
    exec("def ask():\n    return user_stacklevel()\n", namespace)
    assert namespace["ask"]() == (2 if skipped else 1)  # 1: the frame that warns is the user's own


def test_user_package_named_langchain_app_gets_the_warning(store: KLVectorStore) -> None:
    seen: list[Any] = []
    path = os.path.join(os.path.dirname(HERE), "langchain_app", "__init__.py")  # never written: a name only
    code = compile("seen.extend(recorded(lambda: store.similarity_search('cat', filtr=1)))", path, "exec")
    exec(code, {"__name__": "langchain_app", "seen": seen, "recorded": recorded, "store": store})
    (ours,) = [w for w in seen if "similarity_search ignores" in str(w.message)]
    assert ours.filename == path


def test_incompatible_store_warning_raises_again_under_the_error_filter(encoder: Any) -> None:
    embeddings = KLEmbeddings(encoder)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="KLEmbeddings used with")
        for _ in range(2):  # the second time too: the once-guard counts only a warning that was shown
            with pytest.raises(UserWarning, match="InMemoryVectorStore"):
                InMemoryVectorStore.from_texts(TEXTS, embeddings)
    assert len([w for w in recorded(lambda: InMemoryVectorStore.from_texts(TEXTS, embeddings))]) == 1
    assert recorded(lambda: InMemoryVectorStore.from_texts(TEXTS, embeddings)) == []
