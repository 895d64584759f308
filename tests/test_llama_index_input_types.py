"""LlamaIndex adapter with everyday wrong-type inputs: a bare str for ids or texts, generators of nodes,
strings instead of nodes, metadata JSON cannot hold, a bad ``mmr_threshold`` and unknown query keywords."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import os
import re
import uuid
import warnings
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import IndexNode, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

from conftest import make_tiny_encoder
from kl_retrievers import KLStore
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever, KLRetriever, KLVectorStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

TEXTS = ["the cat sat on the mat", "a dog in the sun", "green tea and bread"]


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=1)


def _store(encoder: GaussianEncoder) -> KLVectorStore:
    vs = KLVectorStore(encoder=encoder)
    vs.add([TextNode(text="the cat", id_="a"), TextNode(text="a dog", id_="b"), TextNode(text="green tea", id_="ab")])
    return vs


# ------------------------------------------------------------------ 1. a bare str of ids
def test_delete_nodes_refuses_a_single_str_id_and_deletes_nothing(encoder: GaussianEncoder) -> None:
    vs = _store(encoder)
    with pytest.raises(TypeError, match=r"node_ids must be a list of str, not a single str; got 'ab'"):
        vs.delete_nodes("ab")  # type: ignore[arg-type]
    assert sorted(vs.kl_store.ids) == ["a", "ab", "b"]
    vs.delete_nodes(["ab"])
    assert sorted(vs.kl_store.ids) == ["a", "b"]


def test_get_nodes_and_retriever_refuse_a_single_str_id(encoder: GaussianEncoder) -> None:
    vs = _store(encoder)
    with pytest.raises(TypeError, match=r"node_ids must be a list of str.*'ab'"):
        vs.get_nodes("ab")  # type: ignore[arg-type]
    assert [n.node_id for n in vs.get_nodes(["ab"])] == ["ab"]
    with pytest.raises(TypeError, match=r"node_ids must be a list of str.*'ab'"):
        KLRetriever(vs, node_ids="ab")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"doc_ids must be a list of str.*'doc'"):
        KLRetriever(vs, doc_ids="doc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"VectorStoreQuery.node_ids must be a list of str.*'ab'"):
        vs.query(VectorStoreQuery(query_str="the cat", similarity_top_k=3, node_ids="ab"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"VectorStoreQuery.doc_ids must be a list of str.*'doc'"):
        asyncio.run(vs.aquery(VectorStoreQuery(query_str="the cat", similarity_top_k=3, doc_ids="doc")))  # type: ignore[arg-type]
    query = encoder.encode_queries(["the cat"])
    with pytest.raises(TypeError, match=r"node_ids must be a list of str.*'ab'"):
        vs.search_gaussian(query, 3, node_ids="ab")
    hits = KLRetriever(vs, node_ids=["ab"], similarity_top_k=3).retrieve("the cat")
    assert [h.node.node_id for h in hits] == ["ab"]


def test_retriever_node_ids_generator_restricts_every_query(encoder: GaussianEncoder) -> None:
    retriever = KLRetriever(_store(encoder), node_ids=(i for i in ["a"]), similarity_top_k=3)  # type: ignore[arg-type]
    for _ in range(2):  # the second query too: the generator is read once, at construction
        assert [h.node.node_id for h in retriever.retrieve("green tea")] == ["a"]


# ------------------------------------------------------------------ 2. nodes given as a generator
def test_from_defaults_indexes_a_generator_of_nodes(encoder: GaussianEncoder) -> None:
    nodes = (TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS))
    retriever = KLRetriever.from_defaults(nodes=nodes, encoder=encoder, similarity_top_k=2)  # type: ignore[arg-type]
    assert len(retriever.vector_store.kl_store) == 3
    assert len(retriever.retrieve("the cat")) == 2


def _index_node() -> IndexNode:
    return IndexNode(text="see the sub index", id_="idx", index_id="sub", obj=TextNode(text="inner", id_="inner"))


def test_from_defaults_keeps_the_objects_of_a_generator_of_nodes(encoder: GaussianEncoder) -> None:
    nodes = (n for n in [TextNode(text=TEXTS[0], id_="t"), _index_node()])
    retriever = KLRetriever.from_defaults(nodes=nodes, encoder=encoder)  # type: ignore[arg-type]
    assert len(retriever.vector_store.kl_store) == 2
    assert "sub" in retriever.object_map
    more = (n for n in [TextNode(text=TEXTS[0], id_="t"), _index_node()])
    hybrid = KLHybridRetriever.from_defaults(nodes=more, encoder=encoder)  # type: ignore[arg-type]
    assert sorted(hybrid.store.ids) == ["idx", "t"]
    assert "sub" in hybrid.object_map


# ------------------------------------------------------------------ 3. a bare str of texts to embed
def test_text_embedding_batch_refuses_a_single_str(encoder: GaussianEncoder) -> None:
    embedding = KLEmbedding(encoder)
    with pytest.raises(TypeError, match=r"get_text_embedding_batch takes a list of texts.*'the cat'"):
        embedding.get_text_embedding_batch("the cat")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"aget_text_embedding_batch takes a list of texts.*'the cat'"):
        asyncio.run(embedding.aget_text_embedding_batch("the cat"))  # type: ignore[arg-type]
    assert len(embedding.get_text_embedding_batch(["the cat"])) == 1


# ------------------------------------------------------------------ 4. metadata JSON cannot hold
def _klstore_reason(encoder: GaussianEncoder, value: Any) -> str:
    """What KLStore.add says about metadata {"v": value}, after its 'metadatas[0] ...: ' prefix."""
    with pytest.raises((TypeError, ValueError)) as info:
        KLStore(encoder=encoder).add(["the cat"], metadatas=[{"v": value}])
    return str(info.value).split(": ", 1)[1]


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        (decimal.Decimal("1.5"), TypeError, "is not JSON-serialisable"),
        (float("nan"), ValueError, r"holds nan at \['v'\]"),  # a bad value, named by its key
        ({"x"}, TypeError, "is not JSON-serialisable"),
        (b"x", TypeError, "is not JSON-serialisable"),
    ],
    ids=["decimal", "nan", "set", "bytes"],
)
def test_add_refuses_metadata_that_klstore_refuses(
    encoder: GaussianEncoder, value: Any, error: type[Exception], says: str
) -> None:
    vs = KLVectorStore(encoder=encoder)
    with pytest.raises(error, match=rf"the metadata of node 'd' {says}") as info:
        vs.add([TextNode(text="the cat", id_="d", metadata={"v": value})])
    assert _klstore_reason(encoder, value) in str(info.value)  # KLStore.add's reason
    assert len(vs.kl_store) == 0
    hybrid = KLHybridRetriever.from_defaults(nodes=[TextNode(text="a dog", id_="h")], encoder=encoder)
    with pytest.raises(error, match=rf"the metadata of node 'd' {says}"):
        hybrid.add_nodes([TextNode(text="the cat", id_="d", metadata={"v": value})])
    assert hybrid.store.ids == ["h"]


def test_add_converts_numpy_and_date_metadata_as_klstore_does(encoder: GaussianEncoder) -> None:
    meta = {"p": np.float32(1.5), "n": np.int64(3), "day": datetime.date(2024, 5, 1), "t": (1, 2)}
    vs = KLVectorStore(encoder=encoder)
    vs.add([TextNode(text="the cat", id_="e", metadata=meta)])
    stored = vs.get_nodes(["e"])[0].metadata
    core = KLStore(encoder=encoder)
    core.add(["the cat"], ids=["e"], metadatas=[meta])
    assert stored == core.get_by_ids(["e"])[0].metadata == {"p": 1.5, "n": 3, "day": "2024-05-01", "t": [1, 2]}
    assert type(stored["p"]) is float


# ------------------------------------------------------------------ 5. strings or one node instead of nodes
def test_wrong_node_containers_name_what_was_given(encoder: GaussianEncoder) -> None:
    with pytest.raises(TypeError, match=r"nodes\[0\] is a str \('the cat'\).*TextNode\(text=text\)"):
        KLRetriever.from_defaults(nodes=["the cat"], encoder=encoder)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"got a single TextNode"):
        KLRetriever.from_defaults(nodes=TextNode(text="x"), encoder=encoder)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nodes must be a list of llama_index nodes.*got str 'the cat'"):
        KLVectorStore(encoder=encoder).add("the cat")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nodes\[1\] is a str"):
        KLVectorStore(encoder=encoder).add([TextNode(text="x"), "the cat"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"nodes\[0\] is a str"):
        KLHybridRetriever.from_defaults(nodes=["the cat"], encoder=encoder)  # type: ignore[list-item]
    hybrid = KLHybridRetriever.from_defaults(nodes=[TextNode(text="a dog", id_="h")], encoder=encoder)
    with pytest.raises(TypeError, match=r"got a single TextNode"):
        hybrid.add_nodes(TextNode(text="x"))  # type: ignore[arg-type]


# ------------------------------------------------------------------ 6. mmr_threshold and unknown query keywords
def test_bad_mmr_threshold_is_named(encoder: GaussianEncoder) -> None:
    vs = _store(encoder)
    mmr = VectorStoreQuery(query_str="the cat", similarity_top_k=2, mode=VectorStoreQueryMode.MMR)
    with pytest.raises(ValueError, match=r"\(mmr_threshold\) must be in \[0, 1\], a number .*; got 'x'"):
        vs.query(mmr, mmr_threshold="x")
    with pytest.raises(ValueError, match=r"\(mmr_threshold\) must be in \[0, 1\].*; got 'x'"):
        vs.mmr_search_gaussian(encoder.encode_queries(["the cat"]), 2, mmr_threshold="x")  # type: ignore[arg-type]
    assert len(vs.query(mmr, mmr_threshold=0.3).ids or []) == 2


def test_query_warns_about_keywords_it_ignores(encoder: GaussianEncoder) -> None:
    vs = _store(encoder)
    query = VectorStoreQuery(query_str="the cat", similarity_top_k=2)
    with pytest.warns(UserWarning, match=r"KLVectorStore.query ignores the keyword argument\(s\) \['top_k'\]"):
        result = vs.query(query, top_k=1)
    assert len(result.ids or []) == 2  # similarity_top_k, not top_k
    with pytest.warns(UserWarning, match=r"KLVectorStore.aquery ignores .*\['top_k'\]"):
        asyncio.run(vs.aquery(query, top_k=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vs.query(query, mmr_threshold=0.5, mmr_prefetch_k=3)  # what it reads: no warning
        asyncio.run(vs.aquery(query, mmr_prefetch_factor=2))


# ------------------------------------------------------------------ 7. uuid, path and Enum metadata
class _Colour(Enum):
    RED = "red"


def test_add_stores_uuid_path_and_enum_metadata_as_pydantic_did(encoder: GaussianEncoder) -> None:
    key = uuid.UUID(int=1)
    meta = {"u": key, "p": Path("/tmp/x"), "e": _Colour.RED, "nested": {"p": [PurePosixPath("a/b"), _Colour.RED]}}
    vs = KLVectorStore(encoder=encoder)
    vs.add([TextNode(text="the cat", id_="m", metadata=meta)])
    stored = vs.get_nodes(["m"])[0].metadata
    assert stored == {"u": str(key), "p": "/tmp/x", "e": "red", "nested": {"p": ["a/b", "red"]}}
    assert meta["p"] == Path("/tmp/x")  # the input node is not modified


def test_documents_numpy_metadata_reaches_the_store(encoder: GaussianEncoder) -> None:
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    vs = KLVectorStore(encoder=encoder)
    doc = Document(text="the cat sat on the mat", id_="d1", metadata={"score": np.float32(0.5), "file": Path("a.txt")})
    VectorStoreIndex.from_documents(
        [doc], storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=KLEmbedding(encoder=encoder)
    )
    (node,) = vs.get_nodes()
    assert node.metadata == {"score": 0.5, "file": "a.txt"}
    assert node.source_node is not None and node.source_node.metadata == {"score": 0.5, "file": "a.txt"}
    assert node.ref_doc_id == "d1"


def test_refused_metadata_names_the_document(encoder: GaussianEncoder) -> None:
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    vs = KLVectorStore(encoder=encoder)
    doc = Document(text="the cat sat on the mat", id_="d1", metadata={"p": decimal.Decimal("1.5")})
    with pytest.raises(TypeError, match=r"the metadata of node '[^']+' \(document 'd1'\) is not JSON-serialisable"):
        VectorStoreIndex.from_documents(
            [doc],
            storage_context=StorageContext.from_defaults(vector_store=vs),
            embed_model=KLEmbedding(encoder=encoder),
        )
    assert len(vs.kl_store) == 0


# ------------------------------------------------------------------ 8. ids that are not str
@pytest.mark.parametrize(("bad", "shown"), [(2, "int 2"), (2.0, "float 2.0"), (b"a", "bytes b'a'")])
def test_non_str_ids_in_lists_are_refused_not_coerced(encoder: GaussianEncoder, bad: Any, shown: str) -> None:
    vs = KLVectorStore(encoder=encoder)
    vs.add([TextNode(text=t, id_=i) for t, i in [("the cat", "2"), ("a dog", "2.0"), ("tea", "b'a'")]])
    with pytest.raises(TypeError, match=rf"node_ids\[1\] must be a str; got {re.escape(shown)}"):
        vs.delete_nodes(["x", bad])
    with pytest.raises(TypeError, match=rf"node_ids\[0\] must be a str; got {re.escape(shown)}"):
        vs.get_nodes([bad])
    with pytest.raises(TypeError, match=rf"doc_ids\[0\] must be a str; got {re.escape(shown)}"):
        KLRetriever(vs, doc_ids=[bad])
    assert sorted(vs.kl_store.ids) == ["2", "2.0", "b'a'"]


# ------------------------------------------------------------------ 9. warning locations and -W error
def test_ignored_query_keyword_warns_at_the_callers_line(encoder: GaussianEncoder) -> None:
    from llama_index.core import StorageContext, VectorStoreIndex

    vs = KLVectorStore(encoder=encoder)
    nodes = [TextNode(text=t, id_=str(i)) for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=KLEmbedding(encoder=encoder)
    )
    for run in (
        lambda: index.as_retriever(vector_store_kwargs={"top_k": 2}).retrieve("cat"),
        lambda: asyncio.run(index.as_retriever(vector_store_kwargs={"top_k": 2}).aretrieve("cat")),
    ):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            run()
        (ours,) = [w for w in seen if "ignores the keyword" in str(w.message)]
        assert os.path.abspath(ours.filename) == os.path.abspath(__file__), (ours.filename, ours.lineno)


def test_incompatible_store_warning_raises_again_under_the_error_filter(encoder: GaussianEncoder) -> None:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.vector_stores import SimpleVectorStore

    embedding = KLEmbedding(encoder=encoder)

    def build() -> None:
        context = StorageContext.from_defaults(vector_store=SimpleVectorStore())
        VectorStoreIndex([TextNode(text="the cat")], storage_context=context, embed_model=embedding)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="KLEmbedding used with")
        for _ in range(2):  # the second time too: the once-guard counts only a warning that was shown
            with pytest.raises(UserWarning, match="SimpleVectorStore"):
                build()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build()
        build()
    assert len([w for w in seen if "KLEmbedding used with" in str(w.message)]) == 1
