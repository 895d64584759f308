"""Keeping an index in sync through the LangChain and LlamaIndex APIs.

- LangChain ``KLVectorStore.delete`` is idempotent (``True`` when the ids are gone, also those already
  absent), so ``index(cleanup="full")`` recovers after an id was deleted by hand between two runs.
- A refused metadata under ``add_texts`` names its document id, not only its row within the batch.
- LlamaIndex ``KLEmbedding.to_dict()`` (``IngestionPipeline``'s cache key) changes with the weights and the
  encoder config, and ``from_dict`` still takes it (and older dicts).
- The KL half of a ``KLHybridStore`` refuses writes that do not come through the hybrid store (also after
  save / load, and through the adapters' vector stores), while searching it stays allowed.
- The hybrid retrievers take updates: LlamaIndex ``add_nodes`` / ``delete_ref_doc``, LangChain
  ``add_documents`` / ``delete``.

Second round (review of those changes):

- A pickled ``KLEmbedding`` (``IngestionPipeline(num_workers=...)``'s workers) keeps its encoder's weights
  identity, so ``to_dict()`` (the cache key) is the parent's; ``to_dict()`` is the same in another process.
- ``KLEmbedding(embeddings_cache=...)`` warns: LlamaIndex keys that cache by the text alone.
- The KL half's guard holds against another thread while the hybrid store writes, and after a refused add
  or a raising delete filter; the hybrid store's claim ends when it is garbage-collected.
- A LangChain hybrid hit added again is stored without its search scores (as LlamaIndex ``add_nodes``); an
  ``IndexNode`` with an object added through ``add_nodes`` resolves on retrieve.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.indexing import InMemoryRecordManager, index
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core.ingestion.pipeline import get_transformation_hash
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import Document as LIDocument
from llama_index.core.schema import IndexNode, NodeRelationship, NodeWithScore, QueryBundle, TextNode
from llama_index.core.storage.kvstore import SimpleKVStore
from llama_index.core.vector_stores import VectorStoreQuery

from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers import load_model
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.index import KLStore
from kl_retrievers.langchain import KLEmbeddings
from kl_retrievers.langchain import KLHybridRetriever as LCHybridRetriever
from kl_retrievers.langchain import KLVectorStore as LCVectorStore
from kl_retrievers.llama_index import KLEmbedding
from kl_retrievers.llama_index import KLHybridRetriever as LIHybridRetriever
from kl_retrievers.llama_index import KLVectorStore as LIVectorStore

IDS = [f"d{i}" for i in range(len(HYBRID_TEXTS))]


@pytest.fixture
def encoder() -> GaussianEncoder:
    return make_tiny_encoder()


def night_one() -> list[LCDocument]:
    return [LCDocument(page_content=text, metadata={"source": f"s{i}"}) for i, text in enumerate(HYBRID_TEXTS)]


def night_two() -> list[LCDocument]:
    docs = [d for d in night_one() if d.metadata["source"] not in ("s1", "s2")]  # two sources gone
    docs[0] = LCDocument(page_content="changed " + docs[0].page_content, metadata=docs[0].metadata)
    return docs


# ---------------------------------------------------------------- LangChain delete: idempotent
def nightly_runs(vs: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Night 1, a document deleted by hand (its source also gone on night 2), then nights 2 and 3."""
    rm = InMemoryRecordManager("ns")
    rm.create_schema()

    def run(docs: list[LCDocument]) -> dict[str, Any]:
        return dict(index(docs, rm, vs, cleanup="full", source_id_key="source", key_encoder="sha256"))

    run(night_one())
    [by_hand] = [d for d in vs.get_by_ids(rm.list_keys()) if d.metadata["source"] == "s1"]
    vs.delete([by_hand.id])
    outcomes = [run(night_two()) for _ in range(2)]
    return outcomes, sorted(rm.list_keys())


def test_index_full_cleanup_recovers_after_an_id_deleted_by_hand(encoder: GaussianEncoder) -> None:
    vs = LCVectorStore(KLEmbeddings(encoder=encoder))
    outcomes, keys = nightly_runs(vs)  # raised IndexingException on night 2 and every night after
    reference, reference_keys = nightly_runs(InMemoryVectorStore(DeterministicFakeEmbedding(size=16)))
    assert outcomes == reference
    assert outcomes[1] == {"num_added": 0, "num_updated": 0, "num_skipped": len(night_two()), "num_deleted": 0}
    assert len(keys) == len(reference_keys) == len(night_two()) and sorted(vs.store.ids) == keys


def test_delete_is_true_once_the_ids_are_gone(encoder: GaussianEncoder, caplog: pytest.LogCaptureFixture) -> None:
    vs = LCVectorStore.from_texts(HYBRID_TEXTS[:3], KLEmbeddings(encoder=encoder), ids=["a", "b", "c"])
    with caplog.at_level(logging.DEBUG):
        assert vs.delete(["a", "gone"]) is True
    assert "already absent" in caplog.text and "gone" in caplog.text
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # not the store's warning
    assert vs.delete(["a"]) is True and sorted(vs.store.ids) == ["b", "c"]
    assert asyncio.run(vs.adelete(["b", "b-gone"])) is True and vs.store.ids == ["c"]
    # bad input still raises, as before
    with pytest.raises(ValueError, match=r"delete\(delete_all=True\)"):
        vs.delete()
    with pytest.raises(ValueError, match="not both"):
        vs.delete(["c"], delete_all=True)
    with pytest.raises(TypeError, match="single str"):
        vs.delete("c")  # type: ignore[arg-type]
    assert vs.store.ids == ["c"]


# ---------------------------------------------------------------- LangChain: a refused metadata names its id
def test_a_refused_metadata_names_its_document_id(encoder: GaussianEncoder) -> None:
    vs = LCVectorStore(KLEmbeddings(encoder=encoder))
    with pytest.raises(ValueError, match=r"metadatas\[1\] \(document id 'b'\) holds nan at \['n'\]:"):
        vs.add_texts(["x", "y"], [{"n": 1}, {"n": float("nan")}], ids=["a", "b"])
    assert len(vs) == 0
    docs = night_one()
    docs[4].metadata["bad"] = float("nan")
    rm = InMemoryRecordManager("ns")
    rm.create_schema()
    with pytest.raises(ValueError, match=r"metadatas\[1\] \(document id '[0-9a-f-]{32,}'\)") as err:
        index(docs, rm, vs, cleanup="full", source_id_key="source", batch_size=3, key_encoder="sha256")
    named = str(err.value).split("'")[1]
    assert named not in vs.store.ids and len(vs) == 3  # the first batch went in, the named one did not


# ---------------------------------------------------------------- LlamaIndex: to_dict is a sound cache key
def test_to_dict_changes_with_the_weights_of_a_model_retrained_in_place(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    make_tiny_encoder(seed=0).save_pretrained(folder)
    before = KLEmbedding(load_model(str(folder)))
    assert before.to_dict() == KLEmbedding(load_model(str(folder))).to_dict()  # the same model: the cache hits
    retrained = load_model(str(folder))
    assert isinstance(retrained, GaussianEncoder)
    with torch.no_grad():
        retrained.mean_head.weight.copy_(torch.randn_like(retrained.mean_head.weight))
    retrained.save_pretrained(folder)
    after = KLEmbedding(load_model(str(folder)))
    assert after.model_name == before.model_name
    assert after.to_dict() != before.to_dict()
    node = [TextNode(text="the cat sat on the mat", id_="n")]
    assert get_transformation_hash(node, after) != get_transformation_hash(node, before)


def test_to_dict_changes_with_the_token_budget_and_with_weights_in_memory() -> None:
    base = KLEmbedding(make_tiny_encoder(seed=3))
    assert base.to_dict() == base.to_dict() == KLEmbedding(make_tiny_encoder(seed=3)).to_dict()
    short = make_tiny_encoder(seed=3)
    short.config.max_length = 8
    assert KLEmbedding(short).to_dict() != base.to_dict()
    assert KLEmbedding(make_tiny_encoder(seed=4)).to_dict() != base.to_dict()  # weights only (no file identity)
    changed = make_tiny_encoder(seed=3)
    embed = KLEmbedding(changed)
    first = embed.to_dict()
    with torch.no_grad():
        changed.mean_head.weight.add_(1.0)  # trained further in memory
    assert embed.to_dict() != first


def test_from_dict_takes_the_new_and_the_old_dicts(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    make_tiny_encoder(seed=0).save_pretrained(folder)
    embed = KLEmbedding(load_model(str(folder)))
    data = embed.to_dict()
    assert "encoder_identity" in data
    again = KLEmbedding.from_dict(data)
    assert again.to_dict() == data
    assert KLEmbedding.from_json(embed.to_json()).to_dict() == data
    old = {k: v for k, v in data.items() if k != "encoder_identity"}  # a dict from before the field
    assert KLEmbedding.from_dict(old).to_dict() == data
    other = make_tiny_encoder(seed=5)
    assert KLEmbedding.from_dict(data, encoder=other).encoder is other


# ---------------------------------------------------------------- the KL half of a hybrid store is read-only
def filled_hybrid(encoder: GaussianEncoder) -> KLHybridStore:
    store = KLHybridStore(encoder, fusion="rrf", stemmer=None)
    store.add(HYBRID_TEXTS, ids=IDS)
    return store


def assert_read_only(kl: KLStore) -> None:
    for call in (lambda: kl.add(["new text"], ids=["d0"]), lambda: kl.delete(["d1"]), lambda: kl.delete(filter={})):
        with pytest.raises(RuntimeError, match=r"KL half of a KLHybridStore.*KLHybridStore\.add / upsert / delete"):
            call()


def test_the_kl_half_refuses_writes_of_its_own(encoder: GaussianEncoder, tmp_path: Path) -> None:
    store = filled_hybrid(encoder)
    assert_read_only(store.kl)
    store.check_sync()
    assert store.kl.get_by_ids(["d0"])[0].text == HYBRID_TEXTS[0] and store.kl.search("cat", k=2)
    # the hybrid store itself still writes both halves
    store.upsert(["zebra crossing"], ids=["d0"])
    assert store.delete(["d1"]).deleted == ["d1"]
    store.check_sync()
    assert [h.id for h in store.search("zebra", k=1)] == ["d0"]
    # a saved and loaded store keeps the guard
    loaded = KLHybridStore.load(store.save(tmp_path / "h"), encoder=encoder)
    assert_read_only(loaded.kl)
    loaded.add(["quokka"], ids=["q"])
    assert "q" in loaded.kl and [h.id for h in loaded.search("quokka", k=1, fusion="rrf")] == ["q"]


def test_the_adapters_wrapping_the_kl_half_search_but_do_not_write(encoder: GaussianEncoder) -> None:
    store = filled_hybrid(encoder)
    lc = LCVectorStore(KLEmbeddings(encoder=encoder), store=store.kl)
    assert lc.similarity_search("cat", k=2)
    with pytest.raises(RuntimeError, match="KLHybridRetriever.add_documents / delete"):
        lc.add_texts(["newmark sun"], ids=["d0"])
    with pytest.raises(RuntimeError, match="KL half"):
        lc.delete(["d0"])
    li = LIVectorStore(store.kl, encoder=encoder)
    assert li.query(VectorStoreQuery(query_str="cat", similarity_top_k=2)).ids
    with pytest.raises(RuntimeError, match="KLHybridRetriever.add_nodes / delete_ref_doc"):
        li.add([TextNode(text="newmark sun", id_="d0")])
    with pytest.raises(RuntimeError, match="KL half"):
        li.delete_nodes(["d0"])
    store.check_sync()
    assert store.kl.get_by_ids(["d0"])[0].text == HYBRID_TEXTS[0]


def test_a_wrapped_kl_store_becomes_the_hybrid_stores(encoder: GaussianEncoder) -> None:
    kl = KLStore(encoder=encoder)
    kl.add(HYBRID_TEXTS[:2], ids=["a", "b"])
    store = KLHybridStore(fusion="rrf", stemmer=None, kl_store=kl)
    assert_read_only(kl)
    with pytest.raises(ValueError, match="already the KL half of a KLHybridStore"):
        KLHybridStore(fusion="rrf", kl_store=kl)
    assert store.add(["c text"], ids=["c"]) == ["c"] and sorted(kl.ids) == ["a", "b", "c"]
    # a construction refused stays without an owner
    bare = KLStore(encoder=encoder)
    bare.add(gaussians=encoder.encode_documents(["x"]), ids=["x"])  # no text: BM25 refuses it
    with pytest.raises(ValueError, match="without text"):
        KLHybridStore(fusion="rrf", kl_store=bare)
    assert bare.delete(["x"]).deleted == ["x"]


# ---------------------------------------------------------------- LlamaIndex hybrid retriever: add and delete
def test_llama_index_hybrid_retriever_adds_and_deletes_nodes(encoder: GaussianEncoder) -> None:
    from llama_index.core.node_parser import SentenceSplitter

    split = SentenceSplitter(chunk_size=256, tokenizer=str.split)
    docs = [LIDocument(text="zebra the cat", id_="A"), LIDocument(text="lion the dog", id_="B")]
    r = LIHybridRetriever.from_defaults(documents=docs, encoder=encoder, transformations=[split], stemmer=None)
    old_a = {d.id for d in r.store.get_by_ids(r.store.ids) if d.metadata.get("ref_doc_id") == "A"}
    # a changed document A: its old nodes out, its new nodes in
    assert set(r.delete_ref_doc("A")) == old_a and r.delete_ref_doc("A") == []
    new_nodes = split.get_nodes_from_documents([LIDocument(text="quokka the sun", id_="A")])
    assert r.add_nodes(new_nodes) == [n.node_id for n in new_nodes]
    r.store.check_sync()
    assert old_a and not old_a & set(r.store.ids)
    hits = r.retrieve("quokka")
    [hit] = [h for h in hits if h.node.node_id == new_nodes[0].node_id]
    assert hit.node.ref_doc_id == "A" and hit.node.metadata["bm25_rank"] == 1
    source = hit.node.source_node
    assert source is not None and source.node_id == "A" and NodeRelationship.SOURCE in hit.node.relationships
    assert "zebra" not in " ".join(h.node.get_content() for h in r.retrieve("zebra"))
    assert sorted({str(d.metadata.get("ref_doc_id")) for d in r.store.get_by_ids(r.store.ids)}) == ["A", "B"]


# ---------------------------------------------------------------- LangChain hybrid retriever: add and delete
def test_langchain_hybrid_retriever_adds_and_deletes_documents(encoder: GaussianEncoder) -> None:
    r = LCHybridRetriever.from_texts(HYBRID_TEXTS[:2], encoder, ids=["a", "b"], k=2, fusion="rrf", stemmer=None)
    docs = [LCDocument(page_content="quokka sun", metadata={"v": 2}, id="a"), LCDocument(page_content="tea pot")]
    ids = r.add_documents(docs)
    assert ids[0] == "a" and len(ids[1]) == 32 and sorted(r.store.ids) == sorted(["a", "b", ids[1]])
    [top] = r.invoke("quokka", k=1)
    assert (top.id, top.page_content, top.metadata["v"], top.metadata["bm25_rank"]) == ("a", "quokka sun", 2, 1)
    assert r.add_documents([LCDocument(page_content="x")], ids=["given"]) == ["given"]
    assert r.delete(["b", "never-there"]) is True and asyncio.run(r.adelete(["b"])) is True
    assert asyncio.run(r.aadd_documents([LCDocument(page_content="moon", id="m")])) == ["m"]
    r.store.check_sync()
    assert sorted(r.store.ids) == sorted(["a", ids[1], "given", "m"])
    with pytest.raises(ValueError, match=r"metadatas\[0\] \(document id 'bad'\) holds inf at \['n'\]:"):
        r.add_documents([LCDocument(page_content="y", metadata={"n": float("inf")}, id="bad")])
    with pytest.raises(ValueError, match=r"delete\(delete_all=True\)"):
        r.delete()
    assert r.delete(delete_all=True) is True and len(r.store) == 0


# ---------------------------------------------------------------- second round: the cache key across processes
def test_a_pickled_embedding_keeps_its_cache_key(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    make_tiny_encoder(seed=0).save_pretrained(folder)
    embed = KLEmbedding(load_model(str(folder)))
    known = embed.encoder.weights_sha256
    assert isinstance(known, str)
    worker = pickle.loads(pickle.dumps(embed))  # what IngestionPipeline.run(num_workers=2) sends each worker
    assert worker.encoder is not embed.encoder and worker.encoder.weights_sha256 == known
    assert worker.to_dict() == embed.to_dict()  # was a "parameters:..." digest in the worker
    node = [TextNode(text="the cat sat on the mat", id_="n")]
    assert get_transformation_hash(node, worker) == get_transformation_hash(node, embed)
    # weights changed in memory have no identity: the copy says so too (the same parameters' digest)
    changed = load_model(str(folder))
    assert isinstance(changed, GaussianEncoder)
    with torch.no_grad():
        changed.mean_head.weight.add_(1.0)
    moved = KLEmbedding(changed)
    copy = pickle.loads(pickle.dumps(moved))
    assert copy.encoder.weights_sha256 is None and copy.to_dict() == moved.to_dict() != embed.to_dict()


_TO_DICT_SCRIPT = """
import json, logging, sys
logging.disable(logging.WARNING)
from kl_retrievers import load_model
from kl_retrievers.llama_index import KLEmbedding
print(json.dumps(KLEmbedding(load_model(sys.argv[1])).to_dict(), sort_keys=True))
"""


def test_to_dict_is_the_same_in_another_process(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    make_tiny_encoder(seed=0).save_pretrained(folder)
    root = Path(__file__).resolve().parents[1]  # this checkout's package, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _TO_DICT_SCRIPT, str(folder)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    ).stdout
    here = json.loads(json.dumps(KLEmbedding(load_model(str(folder))).to_dict(), sort_keys=True))
    assert json.loads(out.strip().splitlines()[-1]) == here
    assert isinstance(here["encoder_identity"]["weights_sha256"], str)


def test_the_embeddings_cache_keyed_by_text_alone_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.llama_index"):
        KLEmbedding(make_tiny_encoder(seed=0), embeddings_cache=SimpleKVStore())
    assert "embeddings_cache=SimpleKVStore" in caplog.text and "by the text alone" in caplog.text
    caplog.clear()
    embed = KLEmbedding(make_tiny_encoder(seed=0))
    assert not caplog.text  # no cache: nothing to say
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.llama_index"):
        embed.embeddings_cache = SimpleKVStore()
    assert "IngestionPipeline(cache=...)" in caplog.text and embed.embeddings_cache is not None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.llama_index"):
        embed.embeddings_cache = None
        embed.embed_batch_size = 5  # other fields are set as before
    assert not caplog.text and embed.embed_batch_size == 5


# ---------------------------------------------------------------- second round: the KL half's guard
def test_another_thread_cannot_write_the_kl_half_while_the_hybrid_store_writes(
    encoder: GaussianEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled_hybrid(encoder)
    kl = store.kl
    inside, release = threading.Event(), threading.Event()
    real_add = kl.add

    def slow_add(*args: Any, **kwargs: Any) -> Any:  # the hybrid store's write, paused inside the guard
        inside.set()
        release.wait(30)
        return real_add(*args, **kwargs)

    monkeypatch.setattr(kl, "add", slow_add)
    writer = threading.Thread(target=lambda: store.add(["sun moon"], ids=["t1"]))
    writer.start()
    try:
        assert inside.wait(30)
        with pytest.raises(RuntimeError, match="KL half of a KLHybridStore"):
            real_add(["rock"], ids=["evil"])  # this thread, while the owner's write lets its own thread through
        with pytest.raises(RuntimeError, match="KL half of a KLHybridStore"):
            kl.delete(["d0"])
    finally:
        release.set()
        writer.join(30)
    monkeypatch.undo()
    assert "t1" in kl and "evil" not in kl and "d0" in kl
    store.check_sync()
    assert_read_only(kl)


def test_the_guard_stays_after_a_refused_add_or_a_raising_filter(encoder: GaussianEncoder) -> None:
    store = filled_hybrid(encoder)
    with pytest.raises(ValueError, match=r"holds nan at \['n'\]"):
        store.add(["x"], ids=["d0"], metadatas=[{"n": float("nan")}])
    assert_read_only(store.kl)

    def broken(metadata: Mapping[str, Any]) -> bool:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        store.delete(filter=broken)
    assert_read_only(store.kl)
    store.check_sync()
    assert sorted(store.ids) == sorted(IDS) and store.kl.get_by_ids(["d0"])[0].text == HYBRID_TEXTS[0]


def test_a_dead_owner_is_no_owner(encoder: GaussianEncoder) -> None:
    class Owner:  # a composite store, as KLHybridStore claims its KL half
        pass

    kl = KLStore(encoder=encoder)
    owner = Owner()
    kl._set_owner(owner)
    with pytest.raises(RuntimeError, match="KL half of a Owner"):
        kl.add(["x"], ids=["x"])
    with pytest.raises(ValueError, match="already the KL half of a Owner"):
        kl._set_owner(Owner())
    del owner
    gc.collect()
    assert kl.add(["x"], ids=["x"]) == ["x"]  # nothing is left to go stale
    kl._set_owner(Owner.__name__)  # a name: a claim for good
    with pytest.raises(RuntimeError, match="KL half of a Owner"):
        kl.delete(["x"])


def test_the_kl_half_of_a_collected_hybrid_store_is_free_again(encoder: GaussianEncoder, tmp_path: Path) -> None:
    kl = KLStore(encoder=encoder)
    kl.add(HYBRID_TEXTS[:2], ids=["a", "b"])
    hybrid = KLHybridStore(fusion="rrf", stemmer=None, kl_store=kl)
    assert_read_only(kl)
    folder = hybrid.save(tmp_path / "h")
    del hybrid
    gc.collect()
    assert kl.add(["c text"], ids=["c"]) == ["c"]  # was still refused, with no hybrid store left
    again = KLHybridStore(fusion="rrf", stemmer=None, kl_store=kl)  # was refused as a second owner
    assert_read_only(kl)
    again.check_sync()
    loaded_kl = KLHybridStore.load(folder, encoder=encoder).kl  # the loaded store itself is gone at once
    gc.collect()
    assert loaded_kl.delete(["a"]).deleted == ["a"]


# ---------------------------------------------------------------- second round: hybrid retrievers' updates
def test_a_langchain_hybrid_hit_added_again_leaves_its_scores_out(encoder: GaussianEncoder) -> None:
    r = LCHybridRetriever.from_texts(
        HYBRID_TEXTS, encoder, [{"src": i} for i in range(len(HYBRID_TEXTS))], ids=IDS, k=3, fusion="rrf", stemmer=None
    )
    top = r.invoke("sun")[0]
    assert {"bm25", "fused_score", "neg_kl", "confidence", "query_uncertainty"} <= top.metadata.keys()
    top.page_content += " edited"
    assert top.id is not None and r.add_documents([top]) == [top.id]
    [stored] = r.store.get_by_ids([top.id])
    assert stored.metadata == {"src": IDS.index(top.id)} and stored.text == top.page_content
    # a document with only some of those keys: its own metadata, kept
    own = LCDocument(page_content="tea", metadata={"bm25": "mine", "src": 9}, id="own")
    r.add_documents([own])
    assert r.store.get_by_ids(["own"])[0].metadata == {"bm25": "mine", "src": 9}
    # a retriever writing under other key names leaves those out
    named = LCHybridRetriever(store=r.store, k=1, score_key="s", confidence_key="c", uncertainty_key="u")
    hit = named.invoke("moon")[0]
    assert {"s", "c", "u", "bm25"} <= hit.metadata.keys() and "fused_score" not in hit.metadata
    before = r.store.get_by_ids([str(hit.id)])[0].metadata
    named.add_documents([hit])
    assert r.store.get_by_ids([str(hit.id)])[0].metadata == {"src": before["src"]}


def test_an_index_node_added_through_add_nodes_resolves_on_retrieve(encoder: GaussianEncoder) -> None:
    class Inner(BaseRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return [NodeWithScore(node=TextNode(text="INNER", id_="inner"), score=1.0)]

    r = LIHybridRetriever.from_defaults(store=KLHybridStore(encoder, fusion="rrf", stemmer=None), encoder=encoder)
    inner = Inner()
    node = IndexNode(text="tea pot", id_="i1", index_id="sub", obj=inner)
    assert r.add_nodes([TextNode(text="sun moon", id_="n1"), node]) == ["n1", "i1"]
    assert node.obj is inner  # the input is not changed
    ids = [h.node.node_id for h in r.retrieve("tea pot")]
    assert "inner" in ids and "i1" not in ids  # the object was asked, as VectorStoreIndex's retriever does


def test_delete_by_ids_reads_no_documents_from_an_in_memory_store(
    encoder: GaussianEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    vs = LCVectorStore.from_texts(HYBRID_TEXTS[:3], KLEmbeddings(encoder=encoder), ids=["a", "b", "c"])
    r = LCHybridRetriever.from_texts(HYBRID_TEXTS[:3], encoder, ids=["a", "b", "c"], fusion="rrf", stemmer=None)
    for store in (vs.store, r.store):

        def no_reads(ids: Any) -> Any:
            raise AssertionError("read whole documents to learn which ids exist")

        monkeypatch.setattr(store, "get_by_ids", no_reads)
    assert vs.delete(["a", "gone"]) is True and r.delete(["b", "gone"]) is True
    monkeypatch.undo()
    assert sorted(vs.store.ids) == ["b", "c"] and sorted(r.store.ids) == ["a", "c"]
    r.store.check_sync()
