"""Per-query latency of the LangChain and LlamaIndex adapters against the KLStore search under them.

A flat :class:`~kl_retrievers.store.KLStore` of ``--n`` documents (default 50,000) with metadata,
filled with precomputed Gaussians: ``--texts`` scifact abstracts (first 300 characters; default
2,000) encoded once with the default model (ONNX int8) and tiled with small noise, so nothing but
the queries is encoded while timing. Each path is timed per query (best of ``--repeat`` rounds, the
paths interleaved within a round so that machine load hits them alike) for k = 4, 10 and 100, with
and without a metadata filter (``year >= 2015``, about 40% of the documents), with ``min_confidence``
set, and async (``ainvoke`` / ``aretrieve``); the query encoding alone is timed too. Prints a table
in milliseconds and, last, a digest of every path's results (ids, scores, metadata, order) so that
two versions of the code can be checked to return the same::

    python benchmarks/adapter_latency.py                       # 50,000 documents, ~2 minutes on 2 cores
    python benchmarks/adapter_latency.py --quick               # 5,000 documents, 300 texts encoded
    PYTHONPATH=/path/to/other/checkout python benchmarks/adapter_latency.py --quick   # another version

``--profile NAME`` runs one path under cProfile instead and prints its top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "scifact" / "corpus.jsonl"
_QUERIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "scifact" / "queries.jsonl"
_TOPICS = ("biology", "medicine", "chemistry", "physics", "genetics")


def _read_texts(path: Path, n: int, field: str = "text") -> list[str]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            text = f"{row.get('title', '')} {row[field]}".strip() if field == "text" else row[field]
            out.append(text[:300])
            if len(out) == n:
                break
    return out


def _build(n: int, n_texts: int, encoder: Any, seed: int = 0) -> tuple[KLStore, KLStore]:
    """Two stores of the same ``n`` Gaussians: one with plain metadata, one with LlamaIndex node metadata."""
    from llama_index.core.schema import TextNode

    from kl_retrievers.llama_index import _stored_metadata

    texts = _read_texts(_CORPUS, n_texts)
    base = encoder.encode_documents(texts, batch_size=32, show_progress_bar=False).numpy()
    rng = np.random.default_rng(seed)
    rows = np.arange(n) % len(texts)
    mean = base.mean[rows] + rng.normal(scale=0.01, size=(n, base.dim)).astype(np.float32)
    var = base.var[rows] * np.exp(rng.normal(scale=0.01, size=(n, base.dim))).astype(np.float32)
    gaussians = Gaussians(mean.astype(np.float32), var.astype(np.float32))
    ids = [f"doc{i}" for i in range(n)]
    doc_texts = [texts[r] for r in rows.tolist()]
    metas = [{"year": 2000 + i % 25, "topic": _TOPICS[i % len(_TOPICS)], "source": "scifact"} for i in range(n)]
    plain = KLStore(encoder=encoder)
    plain.add(doc_texts, gaussians=gaussians, ids=ids, metadatas=metas)
    node_metas = [
        _stored_metadata(TextNode(id_=i, text=t, metadata=m)) for i, t, m in zip(ids, doc_texts, metas, strict=True)
    ]
    nodes = KLStore(encoder=encoder)
    nodes.add(doc_texts, gaussians=gaussians, ids=ids, metadatas=node_metas)
    return plain, nodes


def _digest_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _lc_rows(docs: list[Any]) -> list[Any]:
    """(id, score?, metadata) of LangChain results (documents or (document, score) pairs)."""
    out = []
    for d in docs:
        if isinstance(d, tuple):
            out.append([d[0].id, d[0].page_content, d[0].metadata, d[1]])
        else:
            out.append([d.id, d.page_content, d.metadata])
    return out


def _li_rows(nodes: list[Any]) -> list[Any]:
    """(id, score, text, metadata, exclusions, hash) of LlamaIndex results."""
    return [
        [
            n.node.node_id,
            n.score,
            n.node.get_content(),
            n.node.metadata,
            n.node.excluded_llm_metadata_keys,
            n.node.excluded_embed_metadata_keys,
            n.node.hash,
            type(n.node).__name__,
            n.node.ref_doc_id,
        ]
        for n in nodes
    ]


def _li_result_rows(res: Any) -> list[Any]:
    return [
        [i, s, n.get_content(), n.metadata, n.excluded_llm_metadata_keys, n.hash]
        for i, s, n in zip(res.ids, res.similarities, res.nodes, strict=True)
    ]


def _paths(
    plain: KLStore, nodes: KLStore, encoder: Any, query: str, loop: asyncio.AbstractEventLoop
) -> dict[str, tuple[Callable[[], Any], Callable]]:
    """name -> (call, rows-of-its-result) for every timed path (the async ones run on ``loop``)."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import QueryBundle
    from llama_index.core.vector_stores import (
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
    )

    from kl_retrievers import langchain as lc
    from kl_retrievers import llama_index as li

    lc_store = lc.KLVectorStore(encoder, store=plain)
    lc_filter = {"year": {"$gte": 2015}}
    li_filter = MetadataFilters(filters=[MetadataFilter(key="year", value=2015, operator=FilterOperator.GTE)])
    li_store = li.KLVectorStore(nodes, encoder=encoder)
    index = VectorStoreIndex.from_vector_store(li_store, embed_model=li.KLEmbedding(encoder))
    qg = encoder.encode_queries([query], batch_size=1, show_progress_bar=False).numpy()
    out: dict[str, tuple[Callable[[], Any], Callable]] = {
        "encode query": (lambda: encoder.encode_queries([query], batch_size=1, show_progress_bar=False), lambda _: []),
    }

    def store_rows(hits: list[Any]) -> list[Any]:
        return [[h.id, h.score, h.text, h.metadata] for h in hits]

    for k in (4, 10, 100):
        for flt_name, lcf, lif in (("", None, None), (" filter", lc_filter, li_filter)):
            tag = f"k={k}{flt_name}"
            lc_ret = lc.KLRetriever(vectorstore=lc_store, k=k, filter=lcf)
            li_ret = li.KLRetriever(li_store, encoder=encoder, similarity_top_k=k, filters=lif)
            as_ret = index.as_retriever(similarity_top_k=k, filters=lif)
            out[f"KLStore.search(gaussian) {tag}"] = (
                lambda k=k, f=lcf: plain.search(qg, k=k, filter=f),
                store_rows,
            )
            out[f"KLStore.search(text) {tag}"] = (lambda k=k, f=lcf: plain.search(query, k=k, filter=f), store_rows)
            out[f"LC similarity_search_with_score {tag}"] = (
                lambda k=k, f=lcf: lc_store.similarity_search_with_score(query, k=k, filter=f),
                _lc_rows,
            )
            out[f"LC similarity_search_with_relevance_scores {tag}"] = (
                lambda k=k, f=lcf: lc_store.similarity_search_with_relevance_scores(query, k=k, filter=f),
                _lc_rows,
            )
            out[f"LC KLRetriever.invoke {tag}"] = (lambda r=lc_ret: r.invoke(query), _lc_rows)
            out[f"LI KLVectorStore.query {tag}"] = (
                lambda k=k, f=lif: li_store.query(VectorStoreQuery(query_str=query, similarity_top_k=k, filters=f)),
                _li_result_rows,
            )
            out[f"LI KLRetriever.retrieve {tag}"] = (lambda r=li_ret: r.retrieve(query), _li_rows)
            out[f"LI as_retriever().retrieve {tag}"] = (lambda r=as_ret: r.retrieve(QueryBundle(query)), _li_rows)
    lc_floor = lc.KLRetriever(vectorstore=lc_store, k=10, min_confidence=0.2)
    out["LC KLRetriever.invoke k=10 min_confidence=0.2"] = (lambda: lc_floor.invoke(query), _lc_rows)
    post = li.KLConfidencePostprocessor(min_confidence=0.2)
    li_ret10 = li.KLRetriever(li_store, encoder=encoder, similarity_top_k=10)
    out["LI retrieve + KLConfidencePostprocessor k=10"] = (
        lambda: post.postprocess_nodes(li_ret10.retrieve(query), QueryBundle(query)),
        _li_rows,
    )
    lc_ret10 = lc.KLRetriever(vectorstore=lc_store, k=10)
    out["LC KLRetriever.ainvoke k=10"] = (lambda: loop.run_until_complete(lc_ret10.ainvoke(query)), _lc_rows)
    out["LI KLRetriever.aretrieve k=10"] = (lambda: loop.run_until_complete(li_ret10.aretrieve(query)), _li_rows)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="documents (default 50,000; --quick: 5,000)")
    parser.add_argument("--texts", type=int, default=None, help="texts encoded and tiled (default 2,000; --quick: 300)")
    parser.add_argument("--queries", type=int, default=3, help="scifact queries, each path timed on each")
    parser.add_argument(
        "--repeat", type=int, default=None, help="interleaved rounds; the best counts (default 7; --quick: 3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="5,000 documents, 300 texts, 3 rounds (flags given explicitly win)"
    )
    parser.add_argument("--only", default="", help="time only the paths whose name contains this")
    parser.add_argument("--profile", default="", help="profile the first path whose name contains this")
    parser.add_argument("--dump", default="", help="write every path's result rows to this JSON file")
    args = parser.parse_args(argv)
    for name, full, quick in (("n", 50_000, 5_000), ("texts", 2_000, 300), ("repeat", 7, 3)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("n", "texts", "queries", "repeat"):  # checked here: an older checkout lacks cli_common.positive_int
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    import logging

    logging.disable(logging.INFO)  # the abstention INFO lines would otherwise be formatted on a root handler

    import kl_retrievers
    from kl_retrievers import load_default_model

    print(f"kl_retrievers from {Path(kl_retrievers.__file__).parent}")

    encoder = load_default_model()
    start = time.perf_counter()
    plain, nodes = _build(args.n, args.texts, encoder)
    print(f"built 2 stores of {args.n} documents ({args.texts} texts encoded) in {time.perf_counter() - start:.1f}s")
    queries = _read_texts(_QUERIES, args.queries)
    loop = asyncio.new_event_loop()  # one loop, as a server has: its executor threads are reused
    per_query = [_paths(plain, nodes, encoder, q, loop) for q in queries]
    names = [n for n in per_query[0] if args.only in n]
    if args.profile:
        name = next(n for n in names if args.profile in n)
        call = per_query[0][name][0]
        call()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            call()
        prof.disable()
        print(f"profile of {name!r}, 20 calls")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        return
    best = {name: [float("inf")] * len(queries) for name in names}
    rows: dict[str, Any] = {}
    for paths in per_query:  # warm-up, and the results to digest
        for name in names:
            call, to_rows = paths[name]
            rows.setdefault(name, []).append(to_rows(call()))
    for _ in range(args.repeat):
        for qi, paths in enumerate(per_query):
            for name in names:
                call = paths[name][0]
                t0 = time.perf_counter()
                call()
                best[name][qi] = min(best[name][qi], time.perf_counter() - t0)
    width = max(len(n) for n in names)
    print(f"{'path':<{width}}  ms/query (mean over {len(queries)} queries of the best of {args.repeat})  digest")
    for name in names:
        ms = 1000 * float(np.mean(best[name]))
        print(f"{name:<{width}}  {ms:9.2f}  {_digest_of(rows[name])}")
    if args.dump:
        Path(args.dump).write_text(json.dumps(rows, sort_keys=True, default=repr, indent=0))
    print(f"digest={_digest_of(rows)}")


if __name__ == "__main__":
    main()
