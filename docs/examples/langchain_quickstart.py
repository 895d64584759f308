"""LangChain quickstart: a KLVectorStore over a few texts with the default model, then retrieval by -KL.

Needs only the core install and the LangChain extra (no torch): ``pip install "kl-retrievers[langchain]"``.
The default model runs on ONNX Runtime (int8) from the graph shipped in the package, offline.
Run: ``python docs/examples/langchain_quickstart.py``.
"""

from langchain_core.documents import Document

from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore

docs = [
    Document(page_content=text, metadata={"year": year})
    for text, year in [
        ("Aspirin lowers fever.", 2019),
        ("Coffee contains caffeine.", 2021),
        ("Tea contains caffeine too.", 2023),
    ]
]
store = KLVectorStore.from_documents(docs, KLEmbeddings())  # the default model, loaded on first use
for doc, neg_kl in store.similarity_search_with_score("what has caffeine?", k=2, filter={"year": {"$gte": 2020}}):
    print(f"{neg_kl:8.3f}  {doc.page_content}")  # -KL, higher is better
retriever = KLRetriever.from_store(store, k=1)  # drop-in for any LangChain retriever
best = retriever.invoke("fever medicine")[0]
print(best.page_content, best.metadata)  # carries neg_kl and query_uncertainty
