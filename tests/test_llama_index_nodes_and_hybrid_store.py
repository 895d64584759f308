"""An audit of the LlamaIndex store and the hybrid store (tiny random encoder, ``tmp_path`` only).

1. ``as_retriever()`` hid every ``TextNode`` once the store held an ``IndexNode`` its index does not list
   (an index reopened with ``from_vector_store``) or the list named a node re-inserted as a ``TextNode``;
2. the stored ``IndexNode`` / ``ImageNode`` ids were rescanned from every node's metadata after each write;
3. reserved (score) metadata keys went unwarned in ``KLHybridStore.add``, the ``KLHybridRetriever``
   constructor over a filled store and ``KLVectorStore(store=filled KLStore)``;
4. ``is_embedding_query`` was lost by ``persist`` / ``from_persist_path``;
5. ``KLHybridRetriever.from_defaults`` refused a repeated node id (``KLVectorStore.add``: the last one wins);
6. ``KLHybridStore.load(verify_checksums=False)`` accepted halves of two saves holding the same ids;
7. a search after the KL half was changed directly raised a bare ``KeyError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("bm25s")

from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever
from llama_index.core.schema import IndexNode, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers import GaussianEncoder, KLStore
from kl_retrievers.hybrid import HybridFormatError, KLHybridStore
from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever, KLVectorStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

TEXTS = ["the cat sat", "a dog", "the moon", "green tea", "a train"]
TEXT_IDS = [f"t{i}" for i in range(len(TEXTS))]
RESERVED = "reserved"


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=3)


@pytest.fixture(scope="module")
def embed(encoder: GaussianEncoder) -> KLEmbedding:
    return KLEmbedding(encoder)


def _nodes() -> list[Any]:
    return [TextNode(id_=i, text=t) for i, t in zip(TEXT_IDS, TEXTS, strict=True)] + [
        IndexNode(id_="i0", text="rock water", index_id="x")
    ]


def _index(embed: KLEmbedding) -> tuple[KLVectorStore, VectorStoreIndex]:
    vs = KLVectorStore()
    index = VectorStoreIndex(_nodes(), storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=embed)
    return vs, index


def _ids(hits: list[NodeWithScore]) -> set[str]:
    return {h.node.node_id for h in hits}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if RESERVED in r.getMessage().lower()]


# ------------------------------------------------------------------- 1. the as_retriever list is no restriction
def test_reopened_index_with_a_new_index_node_still_finds_text_nodes(embed: KLEmbedding) -> None:
    vs, _ = _index(embed)
    reopened = VectorStoreIndex.from_vector_store(vs, embed_model=embed)
    reopened.insert_nodes([IndexNode(id_="i1", text="black sun", index_id="y")])
    assert list(reopened.index_struct.nodes_dict.values()) == ["i1"]  # i0 is stored but not listed
    want = {*TEXT_IDS, "i0", "i1"}
    assert _ids(reopened.as_retriever(similarity_top_k=10).retrieve("cat")) == want
    assert _ids(asyncio.run(reopened.as_retriever(similarity_top_k=10).aretrieve("cat"))) == want


def test_index_node_reinserted_as_text_node_still_finds_text_nodes(embed: KLEmbedding) -> None:
    _, index = _index(embed)
    index.insert_nodes([TextNode(id_="i0", text="rock water v2")])
    assert list(index.index_struct.nodes_dict.values()) == ["i0"]  # LlamaIndex never removes it
    assert _ids(index.as_retriever(similarity_top_k=10).retrieve("cat")) == {*TEXT_IDS, "i0"}


def test_explicit_node_ids_still_restrict(embed: KLEmbedding) -> None:
    vs, index = _index(embed)
    q = embed.get_query_embedding("cat")
    res = vs.query(VectorStoreQuery(query_embedding=q, similarity_top_k=10, node_ids=["t0", "i0"]))
    assert set(res.ids or []) == {"t0", "i0"}
    retriever = VectorIndexRetriever(index, similarity_top_k=10, node_ids=["t1", "t2"])
    assert _ids(retriever.retrieve("cat")) == {"t1", "t2"}
    # an index that records every node (store_nodes_override) restricts to its own nodes
    own = VectorStoreIndex(
        [TextNode(id_="o0", text="the sun")],
        storage_context=StorageContext.from_defaults(vector_store=vs),
        embed_model=embed,
        store_nodes_override=True,
    )
    assert _ids(own.as_retriever(similarity_top_k=10).retrieve("cat")) == {"o0"}


def test_a_part_of_the_index_own_list_still_restricts(embed: KLEmbedding) -> None:
    """A VectorIndexRetriever restricted to the first of the index's IndexNodes must not be widened."""
    _, index = _index(embed)
    index.insert_nodes([IndexNode(id_="i1", text="black sun", index_id="y")])
    assert list(index.index_struct.nodes_dict.values()) == ["i0", "i1"]
    retriever = VectorIndexRetriever(index, similarity_top_k=10, node_ids=["i0"])
    assert _ids(retriever.retrieve("cat")) == {"i0"}
    assert _ids(asyncio.run(retriever.aretrieve("cat"))) == {"i0"}
    assert _ids(index.as_retriever(similarity_top_k=10).retrieve("cat")) == {*TEXT_IDS, "i0", "i1"}


def test_aquery_does_not_scan_the_store_on_the_event_loop(embed: KLEmbedding, monkeypatch: pytest.MonkeyPatch) -> None:
    """A direct aquery with node_ids needs the stored non-text ids: read in the worker thread, not the loop's."""
    import threading

    vs, _ = _index(embed)
    kl = vs.kl_store
    kl.delete(["t0"])  # changed directly: the next lookup rescans
    threads: list[str] = []

    def recording(original: Any) -> Any:
        def read(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return original(*args, **kwargs)

        return read

    for name in ("get_by_ids", "get_by_filter"):  # every read of stored documents, wherever it happens
        monkeypatch.setattr(kl, name, recording(getattr(kl, name)))
    q = embed.get_query_embedding("cat")

    async def run() -> Any:
        loop_thread = threading.current_thread().name
        res = await vs.aquery(VectorStoreQuery(query_embedding=q, similarity_top_k=10, node_ids=["i0"]))
        return loop_thread, res

    loop_thread, res = asyncio.run(run())
    assert set(res.ids or []) == {*TEXT_IDS[1:], "i0"}  # exactly the stored IndexNodes: no restriction
    assert threads and loop_thread not in threads, threads


# ---------------------------------------------------------------- 2. non-text ids kept up to date, not rescanned
def test_non_text_ids_follow_writes_without_a_scan(embed: KLEmbedding, monkeypatch: pytest.MonkeyPatch) -> None:
    vs, index = _index(embed)
    assert vs._stored_non_text_ids() == {"i0"}
    kl = vs.kl_store
    calls: list[Any] = []
    by_ids, by_filter = kl.get_by_ids, kl.get_by_filter

    def counting(ids: Any) -> Any:
        calls.append(len(ids))
        return by_ids(ids)

    def filtering(filter: Any, **kwargs: Any) -> Any:
        found = by_filter(filter, **kwargs)
        calls.append(("filter", [d.id for d in found]))
        return found

    monkeypatch.setattr(kl, "get_by_ids", counting)
    monkeypatch.setattr(kl, "get_by_filter", filtering)
    index.insert_nodes([IndexNode(id_="i1", text="black sun", index_id="y"), TextNode(id_="i0", text="now text")])
    assert vs._stored_non_text_ids() == {"i1"}
    vs.delete_nodes(["i1"])
    assert vs._stored_non_text_ids() == frozenset()
    index.insert_nodes([IndexNode(id_="i2", text="the star", index_id="z")])
    assert vs._stored_non_text_ids() == {"i2"}
    assert calls == [len(["i1"])]  # only delete_nodes read its own ids: never the whole store
    calls.clear()
    index.insert_nodes([IndexNode(id_="i3", text="a comet", index_id="w")])
    kl.delete(["i2"])  # the wrapped KLStore changed directly: looked up again, reading only the non-text nodes
    assert vs._stored_non_text_ids() == {"i3"}
    assert calls == [("filter", ["i3"])], calls


# ------------------------------------------------------------------------------- 3. reserved metadata keys
def test_hybrid_store_add_warns_once_about_reserved_keys(
    encoder: GaussianEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    with caplog.at_level(logging.WARNING):
        store.add(HYBRID_TEXTS[:3], ids=["a", "b", "c"], metadatas=[{"bm25": "mine"}, None, {"page": 1}])
        store.add(HYBRID_TEXTS[3:4], ids=["d"], metadatas=[{"fusion": "x"}])
    warned = _warnings(caplog)
    assert len(warned) == 1 and "KLHybridStore.add" in warned[0] and "'bm25'" in warned[0], warned


def test_hybrid_retriever_over_a_filled_store_warns_once(
    encoder: GaussianEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(6)], metadatas=[{"confidence": "high"}] * 6)
    loaded = KLHybridStore.load(store.save(tmp_path / "h"), encoder=encoder)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        KLHybridRetriever(loaded)
        KLHybridRetriever(loaded)
    warned = _warnings(caplog)
    assert len(warned) == 1 and "KLHybridRetriever" in warned[0] and "'confidence'" in warned[0], warned


def test_hybrid_from_defaults_warns_once(embed: KLEmbedding, caplog: pytest.LogCaptureFixture) -> None:
    nodes = [TextNode(id_=f"h{i}", text=t, metadata={"bm25": "mine"}) for i, t in enumerate(HYBRID_TEXTS)]
    with caplog.at_level(logging.WARNING):
        KLHybridRetriever.from_defaults(nodes=nodes, encoder=embed, fusion="rrf")
    warned = _warnings(caplog)
    assert len(warned) == 1 and "from_defaults" in warned[0], warned


def test_vector_store_over_a_filled_kl_store_warns(encoder: GaussianEncoder, caplog: pytest.LogCaptureFixture) -> None:
    kl = KLStore(encoder=encoder)
    kl.add(TEXTS, ids=TEXT_IDS, metadatas=[{"neg_kl": 1.0}] + [{}] * (len(TEXTS) - 1))
    with caplog.at_level(logging.WARNING):
        vs = KLVectorStore(store=kl)
        vs.add([TextNode(id_="n", text="the sun", metadata={"confidence": "x"})])
    warned = _warnings(caplog)
    assert len(warned) == 1 and "'neg_kl'" in warned[0], warned


# ------------------------------------------------------------------------------ 4. is_embedding_query persisted
def test_is_embedding_query_survives_persist(encoder: GaussianEncoder, tmp_path: Path) -> None:
    vs = KLVectorStore(encoder=encoder, is_embedding_query=False)
    vs.add([TextNode(id_="n", text="the cat sat")])
    path = tmp_path / "vs.json"
    vs.persist(str(path))
    loaded = KLVectorStore.from_persist_path(path, encoder=encoder)
    assert loaded.is_embedding_query is False
    res = loaded.query(VectorStoreQuery(query_str="cat", similarity_top_k=1))
    assert res.ids == ["n"]
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["is_embedding_query"]  # a manifest written before the field: the default, as then
    path.write_text(json.dumps(manifest), encoding="utf-8")
    assert KLVectorStore.from_persist_path(path).is_embedding_query is True
    manifest["is_embedding_query"] = "no"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="is_embedding_query.*'no'"):
        KLVectorStore.from_persist_path(path)


# ---------------------------------------------------------------------------- 5. from_defaults: last copy wins
def test_hybrid_from_defaults_keeps_the_last_copy_of_a_repeated_id(
    embed: KLEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = [
        TextNode(id_="x", text="the cat sat"),
        TextNode(id_="y", text="a dog in the sun"),
        TextNode(id_="x", text="the moon and the star"),
    ]
    with caplog.at_level(logging.WARNING):
        retriever = KLHybridRetriever.from_defaults(nodes=nodes, encoder=embed, fusion="rrf")
    assert any("repeated node id" in r.getMessage() for r in caplog.records)
    assert sorted(retriever.store.ids) == ["x", "y"]
    assert [d.text for d in retriever.store.get_by_ids(["x"])] == ["the moon and the star"]
    assert retriever.retrieve("moon")[0].node.node_id == "x"


# ------------------------------------------------------------------------ 6. halves of two saves are refused
def test_load_refuses_halves_of_two_saves_without_checksums(encoder: GaussianEncoder, tmp_path: Path) -> None:
    ids = [f"d{i}" for i in range(6)]
    one = KLHybridStore(encoder, fusion="rrf")
    one.add(HYBRID_TEXTS, ids=ids)
    two = KLHybridStore(encoder, fusion="rrf")
    two.add(list(reversed(HYBRID_TEXTS)), ids=ids)
    a, b = one.save(tmp_path / "a"), two.save(tmp_path / "b")
    for half in ("kl", "bm25"):
        mix = tmp_path / f"mix_{half}"
        shutil.copytree(a, mix)
        shutil.rmtree(mix / half)
        shutil.copytree(b / half, mix / half)
        with pytest.raises(HybridFormatError, match=r"kl/ half and the bm25/ half.*another save"):
            KLHybridStore.load(mix, verify_checksums=False)
    assert KLHybridStore.load(a, verify_checksums=False).ids == ids


def test_a_folder_saved_without_tokens_still_loads(encoder: GaussianEncoder, tmp_path: Path) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(6)])
    folder = store.save(tmp_path / "h")
    config = json.loads((folder / "hybrid.json").read_text(encoding="utf-8"))
    config.pop("save_token", None)  # what the previous version wrote
    config["files"] = {rel: digest for rel, digest in config["files"].items() if "hybrid_save" not in rel}
    (folder / "hybrid.json").write_text(json.dumps(config), encoding="utf-8")
    for half in ("kl", "bm25"):
        (folder / half / "hybrid_save.json").unlink(missing_ok=True)
    for verify in (True, False):
        loaded = KLHybridStore.load(folder, encoder=encoder, verify_checksums=verify)
        assert [h.id for h in loaded.search("cat", k=1)] == ["d0"]


# ---------------------------------------------------------------- 7. KL half changed directly: a clear error
def test_search_after_a_direct_kl_change_names_the_ids(encoder: GaussianEncoder) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(6)])
    with store.kl._owner_writes():  # the KL half refuses such a write: get past its guard, as a desync would
        store.kl.delete(["d0"])
    for call in (lambda: store.search("cat mat", k=3), store.check_sync):
        with pytest.raises(RuntimeError, match=r"disagree on ids.*\['d0'\].*changed directly.*only through"):
            call()
