"""The confidences the docs quote on the bundled demo corpus: the hybrid retriever's and the dense one's.

docs/hybrid.md, docs/langchain.md and docs/llama_index.md quote, for a few queries over
``kl_retrievers/data/demo_corpus.jsonl`` (40 short texts, each added by its ``text`` without its title), the
confidence of LangChain's ``KLHybridRetriever`` (the default model's shipped hybrid calibrator; the adaptive
fusion, and RRF and convex where a page compares them) and of ``KLRetriever`` (the dense calibrator), with the
first words of the top document. The default model runs on its default backend (int8 ONNX). One line per query;
nothing is logged: the figures change whenever a shipped calibrator or adaptive parameter file is refitted, and
this script is how the pages' figures are re-read.

Examples:
    python benchmarks/demo_confidence.py
    python benchmarks/demo_confidence.py --queries "What keeps trains from colliding?"
"""

from __future__ import annotations

import argparse
import json
from importlib import resources

from kl_retrievers import load_default_model
from kl_retrievers.langchain import KLEmbeddings, KLHybridRetriever, KLRetriever, KLVectorStore

#: The queries the pages quote.
QUERIES = (
    "What keeps trains from colliding?",
    "How do pollinators communicate where nectar is?",
    "why does dough get puffy",
    "waggle dance of honey bees",
    "why does bread rise",
    "The Moon",
    "Exoplanets",
    "Pollination",
    "Who wrote Hamlet?",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", nargs="+", default=list(QUERIES), help="queries (default: those the pages quote)")
    args = parser.parse_args(argv)
    corpus = resources.files("kl_retrievers") / "data" / "demo_corpus.jsonl"
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    embeddings = KLEmbeddings(encoder=load_default_model())
    hybrid = KLHybridRetriever.from_texts(texts, embeddings, k=1)  # adaptive fusion
    rrf, convex = (KLHybridRetriever(store=hybrid.store, k=1, fusion=fusion) for fusion in ("rrf", "convex"))
    dense = KLRetriever(vectorstore=KLVectorStore.from_texts(texts, embeddings), k=1)
    print("query | hybrid adaptive | rrf | convex | dense | hybrid top document | dense top document")
    for query in args.queries:
        row = [query]
        tops = []
        for retriever in (hybrid, rrf, convex, dense):
            doc = retriever.invoke(query)[0]
            row.append(f"{doc.metadata['confidence']:.4f}")
            tops.append(doc.page_content[:40])
        print(" | ".join([*row, tops[0], tops[3]]))


if __name__ == "__main__":
    main()
