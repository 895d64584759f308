"""Write (and optionally execute) the notebooks in notebooks/ from the cell lists below.

    python scripts/build_notebooks.py            # write the .ipynb files, keeping the outputs of unchanged cells
    python scripts/build_notebooks.py --execute  # also run them and keep their (small) outputs
    python scripts/build_notebooks.py --execute --only 04_train_your_own.ipynb  # one notebook
    python scripts/build_notebooks.py --out /tmp/nb  # write elsewhere

Without ``--execute``, a notebook that already exists keeps the outputs (and cell ids) of every cell whose
source did not change: the docs site shows the notebooks as last run, so a rebuild after an edit to one
cell does not strip the others. The edited or added cells have no output until ``--execute`` runs the
notebook again (the kept outputs of later cells may also be stale then, if they depend on the edited one).
``--execute`` runs each notebook in notebooks/ (where nbmake runs it: notebook 05 reads ``../runs/qpp``),
whatever ``--out`` is. 04 downloads SciFact unless ``KL_RETRIEVERS_DATA`` names a folder holding a copy
(offline here: ``KL_RETRIEVERS_DATA=$PWD/../shared/datasets``, an absolute path, as the kernel runs in notebooks/).

CI runs every notebook top to bottom with nbmake (`pytest --nbmake notebooks`).
"""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

#: Each cell's time limit in seconds, written into the notebook's metadata (``execution.timeout``), where nbmake
#: reads it in place of its default (300 s, or ``--nbmake-timeout``); ``--execute`` honours it too. 04 trains two
#: models in one cell: about 4 minutes on a loaded 2-core machine, too close to nbmake's default.
TIMEOUTS: dict[str, int] = {"04_train_your_own.ipynb": 900}
#: The time limit per cell of ``--execute`` for a notebook without one in :data:`TIMEOUTS`.
DEFAULT_TIMEOUT = 600

NOTEBOOKS["01_quick_start.ipynb"] = [
    (
        "md",
        "# 01 · Quick start\n\nEncode texts into diagonal Gaussians, look at their means and variances, "
        "check -KL against brute force, and build and query a KL store. The score is always "
        "**-KL(query || document), higher is better**.",
    ),
    (
        "code",
        "import numpy as np\nfrom kl_retrievers import (KLStore, kl_document_vectors, kl_query_constant,\n"
        "                           kl_query_vectors, load_default_model, neg_kl_matrix)\n\n"
        "encoder = load_default_model()\nencoder",
    ),
    (
        "md",
        "The default model, `minilm-gauss-soup`, is all-MiniLM-L6-v2 fine-tuned as a Gaussian encoder (merged LoRA "
        "adapters plus mean and variance heads, distilled from a cross-encoder; its model card gives the data, "
        "recipe and results). Its variances depend on the text but stay close to 1, so -KL ranks much like the "
        "distance of the means.",
    ),
    (
        "code",
        "docs = [\n    'Honey bees communicate where food is with a waggle dance.',\n"
        "    'Yeast releases carbon dioxide, which makes bread rise.',\n"
        "    'Railway signals keep trains apart by dividing the line into blocks.',\n"
        "    'Astronomers find exoplanets by the dip in a star\\'s brightness.',\n]\n"
        "queries = ['how do bees share information?', 'why does dough rise?']\n"
        "D = encoder.encode_documents(docs)\nQ = encoder.encode_queries(queries)\n"
        "print('means', D.mean.shape, 'variances', D.var.shape)\n"
        "print('variance range', float(D.var.min()), float(D.var.max()))\n"
        "print('query uncertainty (mean log-variance):', Q.uncertainty())",
    ),
    (
        "md",
        "## -KL, brute force and through the inner-product rewrite\n\n"
        "`<q~, d~> + c(q)` equals -KL exactly, which is what lets an inner-product index serve it.",
    ),
    (
        "code",
        "exact = neg_kl_matrix(Q.astype(np.float64), D.astype(np.float64))\n"
        "rewrite = kl_query_vectors(Q.astype(np.float64)) @ kl_document_vectors(D.astype(np.float64)).T \\\n"
        "    + kl_query_constant(Q.astype(np.float64))[:, None]\n"
        "print(np.round(exact, 4))\nprint('max |rewrite - exact| =', float(np.abs(rewrite - exact).max()))\n"
        "assert np.allclose(rewrite, exact, rtol=1e-10)",
    ),
    ("md", "## A KL store\n\nFlat (exact) by default; `hnsw` and `ivf` use the L2 reduction plus exact re-scoring."),
    (
        "code",
        "store = KLStore(encoder)\nstore.add(docs, ids=['bees', 'bread', 'rail', 'space'],\n"
        "          metadatas=[{'topic': t} for t in ['nature', 'food', 'transport', 'science']])\n"
        "for hit in store.search('how do bees share information?', k=2):\n"
        "    print(f'{hit.score:8.4f}  {hit.id}  {hit.text[:50]}')\n"
        "hits = store.search('how do bees share information?', k=2, filter={'topic': {'$ne': 'nature'}})\n"
        "print([h.id for h in hits])",
    ),
    (
        "md",
        "The bees query scores here what it scored in the matrix above. The default model runs int8 on ONNX "
        "Runtime, and there queries are encoded one at a time, so a query gets the same Gaussian alone or in a batch "
        "(`encode_queries`, `search` and `search_batch` agree). Documents are encoded in batches, and on an int8 graph "
        "a document's Gaussian depends slightly on the other texts of its batch: the store and the matrix above "
        "encoded the same four documents in one call, so they agree, but the bees document encoded on its own "
        "scores a little differently:",
    ),
    (
        "code",
        "bees = Q[:1].astype(np.float64)  # the bees query\n"
        "alone = encoder.encode_documents(docs[:1])  # the bees document in a batch of its own\n"
        "for how, d in [('with the other three', D[:1]), ('alone', alone)]:\n"
        "    print(f'bees document encoded {how}:', round(float(neg_kl_matrix(bees, d.astype(np.float64))[0, 0]), 4))",
    ),
    (
        "md",
        "Near ties can therefore rank differently when the same documents are indexed one by one rather than in "
        "bulk. [ONNX, *int8 encodings depend on the batch*]"
        "(https://github.com/kl-retrievers/kl-retrievers/blob/main/docs/onnx.md#int8-encodings-depend-on-the-batch) "
        "explains why, and that float32 graphs (`quantize=None`) and the torch encoder do not depend on the batch.",
    ),
    (
        "code",
        "import pathlib, tempfile\n\n"
        "with tempfile.TemporaryDirectory() as tmp:  # removed, with the saved store, at the end of the block\n"
        "    folder = pathlib.Path(tmp) / 'store'\n    store.save(folder)\n"
        "    print(sorted(p.name for p in folder.iterdir()))\n"
        "    again = KLStore.load(folder, encoder=encoder)\n"
        "    assert [h.id for h in again.search('trains', k=1)] == [h.id for h in store.search('trains', k=1)]",
    ),
]

NOTEBOOKS["04_train_your_own.ipynb"] = [
    (
        "md",
        "# 04 · Train your own\n\nA few-minute fine-tune on a slice of SciFact train, with before/after metrics "
        "on a slice of SciFact test, for the Gaussian model **and** its dot-product twin (same recipe, data, steps "
        "and seed; only the score differs). This is the cached-features fast path: the MiniLM backbone is frozen and "
        "only the mean and variance heads train, so it runs on two CPU cores. Slices this small give noisy numbers: "
        "the point is the workflow, not the verdict (see the results page for that). SciFact is the public BEIR "
        "collection: `fetch_beir('scifact')` downloads its zip once into `~/.cache/kl_retrievers/datasets`; offline, "
        "set `KL_RETRIEVERS_DATA` to a folder holding a copy as `scifact/`.\n\n"
        "It needs the `[train]` extra (torch, transformers, peft; a CPU-only torch is enough) and the `[eval]` extra "
        '(ir-measures, which `evaluate_model` scores with): `pip install "kl-retrievers[train,eval]"`. Everything '
        "it writes goes into one temporary folder, removed by the last cell.",
    ),
    (
        "code",
        "import json, random, subprocess, sys, tempfile\nfrom pathlib import Path\n\n"
        "from kl_retrievers import GaussianEncoder, load_model\n"
        "from kl_retrievers.datasets import fetch_beir, load_beir\nfrom kl_retrievers.evaluation import evaluate_model\n\n"
        "SCIFACT = fetch_beir('scifact')  # downloaded once into ~/.cache/kl_retrievers/datasets (or a local copy)\n"
        "tmp = tempfile.TemporaryDirectory()  # the data slice, the feature cache and both models; see the last cell\n"
        "work = Path(tmp.name)\nprint(work)",
    ),
    ("md", "## A small BEIR folder: 120 train queries, 60 test queries, their relevant documents and 150 others"),
    (
        "code",
        "train, test = load_beir(SCIFACT, 'train'), load_beir(SCIFACT, 'test')\n"
        "rng = random.Random(0)\ntrain_q = sorted(train.qrels)[:120]\ntest_q = sorted(test.qrels)[:60]\n"
        "docs = {d for q in train_q for d in train.qrels[q]} | {d for q in test_q for d in test.qrels[q]}\n"
        "docs |= set(rng.sample(train.doc_ids, 150))\n"
        "(work / 'qrels').mkdir()\n"
        "with open(work / 'corpus.jsonl', 'w') as f:\n"
        "    for d in sorted(docs):\n        f.write(json.dumps({'_id': d, **train.corpus[d]}) + '\\n')\n"
        "with open(work / 'queries.jsonl', 'w') as f:\n"
        "    for q in train_q:\n        f.write(json.dumps({'_id': q, 'text': train.queries[q]}) + '\\n')\n"
        "    for q in test_q:\n        f.write(json.dumps({'_id': q, 'text': test.queries[q]}) + '\\n')\n"
        "for split, ds, qs in [('train', train, train_q), ('test', test, test_q)]:\n"
        "    with open(work / 'qrels' / f'{split}.tsv', 'w') as f:\n"
        "        f.write('query-id\\tcorpus-id\\tscore\\n')\n"
        "        for q in qs:\n            for d, g in ds.qrels[q].items():\n"
        "                f.write(f'{q}\\t{d}\\t{g}\\n')\n"
        "small_test = load_beir(work, 'test')\nprint(len(docs), 'documents,', len(small_test.qrels), 'test queries')",
    ),
    ("md", "## Before: untrained MiniLM as a Gaussian (identity mean head, unit variances)"),
    (
        "code",
        "def ndcg(model):\n"
        "    r = evaluate_model(model, small_test, max_length=128, cache_dir=work / 'cache', show_progress=False)\n"
        "    return round(r.aggregate['ndcg@10'], 4), round(r.aggregate['recall@100'], 4)\n\n"
        "# all-MiniLM-L6-v2's own embedding as the mean, every variance 1: it ranks like MiniLM cosine\n"
        "untrained = GaussianEncoder.from_backbone('sentence-transformers/all-MiniLM-L6-v2', pooling='mean',\n"
        "                                          normalize_pooled=True, var_token=False, identity_mean=True)\n"
        "before = ndcg(untrained)\nprint('before: nDCG@10, Recall@100 =', before)",
    ),
    (
        "md",
        "## Train: the Gaussian model and its dot-product twin\n\nThe same command twice; only "
        "`--similarity` changes. The command is recorded in each model's `config.json` and model card.",
    ),
    (
        "code",
        "def train(similarity):\n"
        "    out = work / f'model-{similarity}'\n"
        "    cmd = [sys.executable, '-m', 'kl_retrievers.cli', '-q', 'train', '--data', str(work), '--out', str(out),\n"
        "           '--heads-only-cached', '--no-var-token', '--similarity', similarity, '--steps', '100',\n"
        "           '--batch-size', '32', '--lr', '1e-3', '--temperature', '0.05', '--max-length', '128',\n"
        "           '--seed', '0', '--cache-dir', str(work / 'cache'), '--no-progress']\n"
        "    subprocess.run(cmd, check=True)\n    return out\n\n"
        "gauss_dir, dot_dir = train('neg_kl'), train('dot')\nprint(sorted(p.name for p in gauss_dir.iterdir()))",
    ),
    ("md", "## After"),
    (
        "code",
        "gauss = load_model(str(gauss_dir))\n"
        "print('Gaussian (-KL):  ', ndcg(gauss))\n"
        "print('dot twin:        ', ndcg(load_model(str(dot_dir))))\nprint('before (untrained):', before)\n"
        "g = gauss.encode_queries([small_test.queries[q] for q in sorted(small_test.qrels)[:5]])\n"
        "print('trained query uncertainty (mean log-variance):', g.uncertainty().round(3))",
    ),
    (
        "md",
        "The twin is ranked by the dot product of its means, the similarity it was trained with: "
        "`evaluate_model` and `kl-retrievers evaluate` read it from the twin's config. In Python, "
        "`evaluate_model(twin, dataset, similarity='neg_kl')` ranks the twin by -KL instead, as an ablation "
        "(an argument of `evaluate_model` only: the CLI has no `--similarity` flag); `means_only=True` "
        "(`--means-only`), the -KL model's mean-distance ablation, is refused for a twin ranked by its own "
        "similarity. The full comparison, with seeds and significance tests, is on the results page.",
    ),
    ("code", "tmp.cleanup()  # remove the work folder (copy the models out first to keep them)"),
]

NOTEBOOKS["02_langchain_rag.ipynb"] = [
    (
        "md",
        "# 02 · LangChain RAG\n\nA retrieval-augmented chain (retriever, prompt, chat model) where swapping a "
        "dot-product FAISS retriever for the -KL retriever is a one-line change. The chat model is LangChain's "
        "`FakeListChatModel`, so the notebook needs no API key; what matters is which documents reach the prompt. "
        "LangChain's own `FAISS` store comes from langchain-community, which the `[langchain]` extra does not "
        "install: `pip install langchain-community` (faiss-cpu already comes with kl-retrievers).",
    ),
    (
        "code",
        "import warnings\n\n"
        "# langchain-community warns on import that it is being sunset; this notebook needs only its FAISS store\n"
        "warnings.filterwarnings('ignore', message='`langchain-community` is being sunset', category=DeprecationWarning)\n"
        "from langchain_community.vectorstores import FAISS\n"
        "from langchain_community.vectorstores.utils import DistanceStrategy\n"
        "from langchain_core.language_models import FakeListChatModel\n"
        "from langchain_core.output_parsers import StrOutputParser\n"
        "from langchain_core.prompts import ChatPromptTemplate\n"
        "from langchain_core.runnables import RunnablePassthrough\n"
        "\n"
        "from kl_retrievers import load_default_model\n"
        "from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore\n\n"
        "texts = [\n"
        "    'Honey bees communicate the direction of food with a waggle dance.',\n"
        "    'Yeast releases carbon dioxide, which makes bread rise.',\n"
        "    'Railway signals keep trains apart by dividing the line into blocks.',\n"
        "    'Astronomers find exoplanets by the dip in a star\\'s brightness.',\n"
        "    'Coral reefs bleach when warm water makes corals expel their algae.',\n]\n"
        "embeddings = KLEmbeddings(load_default_model())",
    ),
    ("md", "## The chain, written once"),
    (
        "code",
        "def format_docs(docs):\n    return '\\n'.join(f'- {d.page_content}' for d in docs)\n\n"
        "prompt = ChatPromptTemplate.from_template('Answer from the context.\\n{context}\\n\\nQuestion: {question}')\n\n"
        "def make_chain(retriever):\n"
        "    llm = FakeListChatModel(responses=['(a fake answer)'])\n"
        "    return {'context': retriever | format_docs, 'question': RunnablePassthrough()} | prompt | llm | StrOutputParser()",
    ),
    (
        "md",
        "## Before: a dot-product FAISS retriever\n\nHere FAISS ranks by inner product over the *means* only "
        "(a vector retriever).",
    ),
    (
        "code",
        "from langchain_core.embeddings import Embeddings\n\n"
        "class MeanEmbeddings(Embeddings):  # the Gaussian means as plain vectors\n"
        "    def embed_documents(self, t):\n        return embeddings.encode_documents(t).mean.tolist()\n"
        "    def embed_query(self, t):\n        return embeddings.encode_queries([t]).mean[0].tolist()\n\n"
        "retriever = FAISS.from_texts(texts, MeanEmbeddings(), distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)"
        ".as_retriever(search_kwargs={'k': 2})\n"
        "question = 'how do insects share where flowers are?'\n"
        "print([d.page_content[:40] for d in retriever.invoke(question)])\nprint(make_chain(retriever).invoke(question))",
    ),
    ("md", "## After: the one changed line"),
    (
        "code",
        "retriever = KLVectorStore.from_texts(texts, embeddings).as_retriever(search_kwargs={'k': 2})\n"
        "print([d.page_content[:40] for d in retriever.invoke(question)])\nprint(make_chain(retriever).invoke(question))",
    ),
    (
        "md",
        "## What the KL retriever adds\n\n`KLRetriever` puts into each document's metadata its -KL (`neg_kl`, "
        "higher is better), the query's uncertainty (`query_uncertainty`: the mean log-variance of the query "
        "Gaussian; with the default model it stays near 0, because its variances stay close to 1) and the query's "
        "calibrated `confidence` (the probability that the top-ranked document is relevant; given "
        "`min_confidence`, the retriever abstains, returning nothing, below it).",
    ),
    (
        "code",
        "kl = KLRetriever.from_texts(texts, embeddings, k=3)\n"
        "for d in kl.invoke(question):\n"
        "    m = d.metadata\n"
        "    print(round(m['neg_kl'], 4), round(m['query_uncertainty'], 4), round(m['confidence'], 2), d.page_content[:50])",
    ),
    (
        "md",
        "## The embeddings in LangChain's own FAISS store\n\n`KLEmbeddings` returns the vectors of the exact "
        "inner-product rewrite, so FAISS with `MAX_INNER_PRODUCT` gives the same ranking as `KLVectorStore` (a cosine "
        "or L2 store would not).",
    ),
    (
        "code",
        "faiss_kl = FAISS.from_texts(texts, embeddings, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)\n"
        "a = [d.page_content for d, _ in faiss_kl.similarity_search_with_score(question, k=5)]\n"
        "b = [d.page_content for d, _ in KLVectorStore.from_texts(texts, embeddings).similarity_search_with_score(question, k=5)]\n"
        "print(a == b)\nassert a == b",
    ),
]

NOTEBOOKS["03_llama_index.ipynb"] = [
    (
        "md",
        "# 03 · LlamaIndex\n\nA `VectorStoreIndex` over `KLVectorStore` with a query engine (`MockLLM`, so no "
        "API key), metadata filters, and a persist / reload round trip. Node scores are the relevance exp(-KL), "
        "in (0, 1] (higher is better, 1 only for identical Gaussians); the exact -KL is in each node's metadata "
        "under `neg_kl`, beside `query_uncertainty` and `confidence`. It needs the `[llama-index]` extra: "
        '`pip install "kl-retrievers[llama-index]"`.',
    ),
    (
        "code",
        "import tempfile\nfrom pathlib import Path\n\n"
        "from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage\n"
        "from llama_index.core.llms import MockLLM\n"
        "from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters\n\n"
        "from kl_retrievers.llama_index import KLEmbedding, KLRetriever, KLVectorStore\n\n"
        "embed = KLEmbedding()  # the package's default model\n"
        "docs = [Document(text=t, metadata={'topic': topic}) for t, topic in [\n"
        "    ('Honey bees communicate the direction of food with a waggle dance.', 'nature'),\n"
        "    ('Yeast releases carbon dioxide, which makes bread rise.', 'food'),\n"
        "    ('Sourdough starters keep wild yeast alive with flour and water.', 'food'),\n"
        "    ('Railway signals keep trains apart by dividing the line into blocks.', 'transport'),\n]]\n"
        "storage = StorageContext.from_defaults(vector_store=KLVectorStore())\n"
        "index = VectorStoreIndex.from_documents(docs, storage_context=storage, embed_model=embed)",
    ),
    ("md", "## Retrieve and query"),
    (
        "code",
        "for hit in index.as_retriever(similarity_top_k=2).retrieve('why does dough rise?'):\n"
        "    print(f'{hit.score:8.4f}  {hit.node.get_content()[:60]}')\n\n"
        "response = index.as_query_engine(llm=MockLLM(), similarity_top_k=2).query('why does dough rise?')\n"
        "print([round(n.score, 4) for n in response.source_nodes])",
    ),
    ("md", "## Filters are applied before ranking"),
    (
        "code",
        "filters = MetadataFilters(filters=[MetadataFilter(key='topic', value='food', operator=FilterOperator.NE)])\n"
        "for hit in index.as_retriever(similarity_top_k=2, filters=filters).retrieve('why does dough rise?'):\n"
        "    print(f'{hit.score:8.4f}  {hit.node.metadata}  {hit.node.get_content()[:40]}')",
    ),
    ("md", "## Persist and reload (no pickle)"),
    (
        "code",
        "with tempfile.TemporaryDirectory() as tmp:  # removed, with the saved index, at the end of the block\n"
        "    folder = Path(tmp) / 'index'\n    index.storage_context.persist(persist_dir=str(folder))\n"
        "    print(sorted(p.name for p in folder.iterdir()))\n"
        "    vector_store = KLVectorStore.from_persist_dir(str(folder))\n"
        "    again = load_index_from_storage(\n"
        "        StorageContext.from_defaults(persist_dir=str(folder), vector_store=vector_store), embed_model=embed)\n"
        "a = [n.node_id for n in index.as_retriever(similarity_top_k=3).retrieve('trains')]\n"
        "b = [n.node_id for n in again.as_retriever(similarity_top_k=3).retrieve('trains')]\nassert a == b\nprint(a == b)",
    ),
    (
        "md",
        "## KLRetriever directly\n\n`KLRetriever.from_defaults` also takes nodes, documents or a vector store, "
        "and, like the store, scores nodes by the relevance exp(-KL) and adds `neg_kl` (the exact -KL), the query's "
        "uncertainty (mean log-variance) and its calibrated confidence to each node's metadata.",
    ),
    (
        "code",
        "retriever = KLRetriever.from_defaults(documents=docs, encoder=embed.encoder, similarity_top_k=2)\n"
        "for hit in retriever.retrieve('insects and flowers'):\n"
        "    print(round(hit.score, 4), hit.node.metadata.get('query_uncertainty'), hit.node.get_content()[:40])",
    ),
]

NOTEBOOKS["05_uncertainty.ipynb"] = [
    (
        "md",
        "# 05 · Uncertainty, query performance prediction and calibrated confidence\n\n"
        "Does the query Gaussian's variance tell how well a query will be answered? The paper reports a "
        "Pearson correlation of about 0.27 with per-query effectiveness on TREC DL19/20. This notebook reads the "
        "per-query logs committed under `runs/qpp/` (written by `benchmarks/qpp.py` and "
        "`benchmarks/calibration.py` with the default model `minilm-gauss-soup` on the four dev collections' test splits) and shows, plainly: what the default's "
        "uncertainty predicts, what the best score statistic predicts, and how well the shipped calibrated "
        "confidence (the probability that the top-ranked document is relevant) matches what happens.\n\n"
        "It reads those logs from a checkout of the repository (`git clone` it and run the notebook from "
        "`notebooks/` or the repository root): an installed package does not ship them. Its two charts need "
        "matplotlib (`pip install matplotlib`); the rest runs on the core install.",
    ),
    (
        "code",
        "import json\nfrom pathlib import Path\n\nimport matplotlib\nmatplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\nimport numpy as np\n\n"
        "from kl_retrievers.calibration import (default_calibrator, expected_calibration_error, feature_matrix,\n"
        "                                       reliability_table)\n"
        "from kl_retrievers.evaluation import load_per_query\n\n"
        "# the logs committed in the repository: from notebooks/ (where nbmake runs it) or the repository root\n"
        "RUNS = next((p for p in [Path('../runs/qpp'), Path('runs/qpp')] if (p / 'qpp.jsonl').is_file()), None)\n"
        "if RUNS is None:\n"
        "    raise FileNotFoundError('this notebook reads the logs committed under runs/qpp/ in a checkout of the '\n"
        "                            'kl-retrievers repository (an installed package does not ship them); none at '\n"
        "                            f'../runs/qpp or runs/qpp from {Path.cwd()}: run it from a checkout\\'s notebooks/ '\n"
        "                            'folder or its root')\n"
        "COLLECTIONS = ['scifact', 'nfcorpus-preprocessed', 'cranfield', 'trec-dl21-passage-pooled']\n"
        "records = [json.loads(line) for line in (RUNS / 'qpp.jsonl').read_text().splitlines() if line.strip()]\n"
        "newest = {(r['model'], r['collection']): r for r in records if r['split'] == 'test'}",
    ),
    (
        "md",
        "## Which predictor is best?\n\nKendall tau of each predictor against per-query nDCG@10, averaged over the "
        "four test splits (oriented: positive means it ranks queries like their nDCG@10; the uncertainty enters "
        "negated). `combined` is a logistic model on the uncertainty and the score statistics, fitted to nDCG@10 on "
        "training sets only. The best post-retrieval baseline differs from one collection to the next.",
    ),
    (
        "code",
        "def mean_tau(model, name):\n"
        "    return float(np.mean([newest[(model, c)]['qpp']['predictors'][name]['tau'] for c in COLLECTIONS]))\n\n"
        "POST = ['max_score', 'nqc', 'gap12', 'wig']\n"
        "taus = {n: mean_tau('minilm-gauss-soup', n) for n in ['uncertainty', *POST]}\n"
        "taus['combined'] = mean_tau('minilm-gauss-soup+combined', 'combined')\n"
        "best = max(POST, key=taus.get)\n"
        "for name, tau in taus.items():\n    print(f'{name:12s} mean tau {tau:+.3f}')\n"
        "print('best post-retrieval predictor by mean tau over the four:', best)\n"
        "for c in COLLECTIONS:\n"
        "    own = newest[('minilm-gauss-soup', c)]['qpp']['predictors']\n"
        "    print(f'  best on {c}: {max(POST, key=lambda n: own[n][\"tau\"])}')",
    ),
    (
        "md",
        "## Compared with the paper: Pearson r\n\nThe paper's figure is a Pearson correlation; here is ours for the "
        "default's uncertainty (negated, as above), computed from the per-query logs.",
    ),
    (
        "code",
        "# the per-query file that the newest qpp.jsonl line names: a run writes its own now, while older lines of a\n"
        "# model, collection and split named one shared file, which each such run rewrote\n"
        "def per_query_of(model, collection):\n"
        "    return load_per_query(RUNS.parent.parent / newest[(model, collection)]['per_query_file'])[0]\n\n\n"
        "pearson = {}\n"
        "for c in COLLECTIONS:\n"
        "    pq = per_query_of('minilm-gauss-soup', c)\n"
        "    u, y = (np.array([pq[q][key] for q in sorted(pq)]) for key in ('uncertainty', 'ndcg@10'))\n"
        "    pearson[c] = float(np.corrcoef(-u, y)[0, 1])\n"
        "    print(f'{c:26s} Pearson r {pearson[c]:+.3f}  ({len(pq)} queries)')\n"
        "print(f'{\"mean\":26s} Pearson r {np.mean(list(pearson.values())):+.3f}  (the paper: about 0.27, TREC DL19/20)')",
    ),
    ("md", "## nDCG@10 by predictor quintile, SciFact test (300 queries)"),
    (
        "code",
        "# SciFact's own best post-retrieval baseline (not the best by the four-collection mean)\n"
        "scifact_taus = newest[('minilm-gauss-soup', 'scifact')]['qpp']['predictors']\n"
        "best_here = max(POST, key=lambda n: scifact_taus[n]['tau'])\n"
        "pq = per_query_of('minilm-gauss-soup', 'scifact')\n"
        "comb = per_query_of('minilm-gauss-soup+combined', 'scifact')\n"
        "qids = sorted(pq)\nndcg = np.array([pq[q]['ndcg@10'] for q in qids])\n"
        "signals = {\n"
        "    'uncertainty (negated)': -np.array([pq[q]['uncertainty'] for q in qids]),\n"
        "    f'{best_here} (best on SciFact)': np.array([pq[q][f'qpp.{best_here}'] for q in qids]),\n"
        "    'combined': np.array([comb[q]['qpp.combined'] for q in qids]),\n"
        "}\n\n\n"
        "def quintile_means(signal):\n"
        "    order = np.argsort(signal, kind='stable')  # lowest predicted quality first\n"
        "    return [float(ndcg[part].mean()) for part in np.array_split(order, 5)]\n\n\n"
        "table = {name: quintile_means(s) for name, s in signals.items()}\n"
        "print('quintile (1 = predicted worst) ' + ''.join(f'{n:>26s}' for n in table))\n"
        "for i in range(5):\n"
        "    print(f'{i + 1:>30d} ' + ''.join(f'{v[i]:>26.3f}' for v in table.values()))",
    ),
    (
        "code",
        "import io\nfrom IPython.display import Image\n\n"
        "fig, ax = plt.subplots(figsize=(6, 3.2))\nx = np.arange(1, 6)\n"
        "for j, (name, means) in enumerate(table.items()):\n"
        "    ax.bar(x + (j - 1) * 0.27, means, width=0.27, label=name)\n"
        "ax.set_xlabel('quintile of the predictor (1 = predicted worst)')\nax.set_ylabel('mean nDCG@10')\n"
        "ax.set_title('SciFact test: nDCG@10 by predictor quintile')\nax.legend(fontsize=8)\nfig.tight_layout()\n"
        "buf = io.BytesIO()\nfig.savefig(buf, format='png', dpi=80)\nplt.close(fig)\nImage(buf.getvalue())",
    ),
    (
        "md",
        "The default's uncertainty is flat across its quintiles: its variances stay within about 0.001 of 1 on "
        "SciFact (short texts spread a little wider, about 0.997 to 1.003), so it carries almost no information (the experiments towards a more informative variance are in "
        "`docs/results.md`). The score statistics do separate easy from hard queries.\n\n"
        "## Calibrated confidence\n\n`default_calibrator()` maps the uncertainty and the query's own top-2 "
        "`neg_kl` scores to the probability that the top-ranked document is relevant. It was fitted on training "
        "data only (SciFact train, NFCorpus train, SQuAD train articles); here it meets the four test splits.",
    ),
    (
        "code",
        "cal = default_calibrator()\nprint(cal)\nprint('fitted on:', [t['set'] for t in cal.info['training_data']])\n"
        "fig, ax = plt.subplots(figsize=(4.8, 4))\nax.plot([0, 1], [0, 1], 'k--', lw=1, label='perfect')\n"
        "for coll in COLLECTIONS:\n"
        "    rows = list(json.loads((RUNS / 'calib' / f'{coll}.test.json').read_text())['per_query'].values())\n"
        "    p = cal.predict(feature_matrix(rows, cal.features))\n"
        "    y = np.array([r['top1_relevant'] for r in rows])\n"
        "    ece = expected_calibration_error(p, y)\n"
        "    print(f'{coll:26s} P@1 {y.mean():.3f}  mean confidence {p.mean():.3f}  ECE {ece:.3f}')\n"
        "    bins = [b for b in reliability_table(p, y) if b['n'] >= 5]\n"
        "    ax.plot([b['confidence'] for b in bins], [b['observed'] for b in bins], 'o-', label=coll)\n"
        "ax.set_xlabel('predicted confidence')\nax.set_ylabel('observed share of relevant top-1')\n"
        "ax.set_title('Reliability (bins with 5+ queries)')\nax.legend(fontsize=7)\nfig.tight_layout()\n"
        "buf = io.BytesIO()\nfig.savefig(buf, format='png', dpi=80)\nplt.close(fig)\nImage(buf.getvalue())",
    ),
    (
        "md",
        "## The confidence of one query\n\nA retriever needs only the query's top scores (two suffice) and its uncertainty:",
    ),
    (
        "code",
        "from kl_retrievers import load_default_model, neg_kl_matrix\n"
        "from kl_retrievers.calibration import DEFAULT_MIN_CONFIDENCE\n\n"
        "encoder = load_default_model()\n"
        "docs = ['Bees collect nectar and turn it into honey in the hive.', 'Honey bees communicate by dancing.',\n"
        "        'The stock market fell sharply on Monday.', 'Rain forests hold much of the planet\\'s species.',\n"
        "        'A recipe for sourdough bread with a long rise.', 'The moon orbits the earth every 27 days.',\n"
        "        'Green tea contains antioxidants.', 'Volcanoes form where tectonic plates meet.',\n"
        "        'The train to Paris leaves at nine.', 'Black holes bend light around them.',\n"
        "        'Wool sweaters keep sheep farmers busy in spring.', 'Chess openings have names like the Sicilian.']\n"
        "D = encoder.encode_documents(docs)\n"
        "for query in ['how do bees make honey', 'something about the sea']:\n"
        "    Q = encoder.encode_queries([query])\n"
        "    scores = np.asarray(neg_kl_matrix(Q, D))[0]\n"
        "    confidence = cal.confidence(scores, float(Q.uncertainty()[0]))\n"
        "    print(f'{query!r}: top document {docs[int(scores.argmax())][:40]!r}, confidence {confidence:.2f}')\n"
        "print('DEFAULT_MIN_CONFIDENCE:', DEFAULT_MIN_CONFIDENCE)",
    ),
    (
        "md",
        "The off-topic query still gets a confidence above `DEFAULT_MIN_CONFIDENCE`, the recommended threshold "
        "below which a retriever given `min_confidence` abstains (returns nothing). On a store this small that is "
        "expected: the calibrator was fitted on full collections and reads the gap between the top two scores, "
        "which in a store of a dozen unrelated documents is wide for almost any query, so the confidence is "
        "unreliable on tiny stores and weak for nonsense queries ([FAQ, *Does the default model carry uncertainty?*]"
        "(https://github.com/kl-retrievers/kl-retrievers/blob/main/docs/faq.md#does-the-default-model-carry-uncertainty)). "
        "How `min_confidence` abstention does on real collections: [Hybrid retrieval, *Abstention*]"
        "(https://github.com/kl-retrievers/kl-retrievers/blob/main/docs/hybrid.md#abstention).",
    ),
]


def keep_unchanged_outputs(new: nbformat.NotebookNode, old: nbformat.NotebookNode) -> tuple[int, int]:
    """Give ``new`` the cells of ``old`` whose type and source are unchanged (outputs, ids), and its metadata.

    Cells are matched in order (:class:`difflib.SequenceMatcher` over (type, source) pairs), so inserting,
    deleting or editing a cell keeps the outputs of all the others.

    Returns:
        The number of code cells that kept their outputs, and the number of code cells of ``old`` with
        outputs that were dropped (their source changed or they were removed).
    """

    def key(cell: nbformat.NotebookNode) -> tuple[str, str]:
        return cell.cell_type, cell.source

    matcher = difflib.SequenceMatcher(None, [key(c) for c in old.cells], [key(c) for c in new.cells], autojunk=False)
    matched = set()
    for i, j, size in matcher.get_matching_blocks():
        for k in range(size):
            new.cells[j + k] = old.cells[i + k]
            matched.add(i + k)
    new.metadata = nbformat.NotebookNode({**old.metadata, **new.metadata})  # language_info of the last run
    kept = sum(1 for i in matched if old.cells[i].cell_type == "code" and old.cells[i].get("outputs"))
    dropped = sum(1 for i, c in enumerate(old.cells) if i not in matched and c.cell_type == "code" and c.get("outputs"))
    return kept, dropped


def build(execute: bool, only: list[str] | None = None, out: Path | None = None) -> None:
    """Write the notebooks (those named in ``only``, else all) into ``out`` (default: notebooks/).

    Args:
        execute: Run each notebook (in notebooks/) and write it with its new outputs; otherwise a notebook
            already at the target keeps the outputs of its unchanged cells (:func:`keep_unchanged_outputs`).
        only: Names of the notebooks to write.
        out: The folder to write into; made when missing.
    """
    folder = OUT if out is None else out
    folder.mkdir(parents=True, exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if only and name not in only:
            continue
        metadata: dict[str, Any] = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
        if name in TIMEOUTS:
            metadata["execution"] = {"timeout": TIMEOUTS[name]}
        nb = new_notebook(
            cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells],
            metadata=metadata,
        )
        target = folder / name
        note = "without outputs"
        if execute:
            from nbclient import NotebookClient

            timeout = TIMEOUTS.get(name, DEFAULT_TIMEOUT)
            # a notebook kernel counts as interactive (progress bars by default): none in the saved outputs
            NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}
            ).execute(env={**os.environ, "TQDM_DISABLE": "1"})
            note = "executed"
        elif target.exists():
            kept, dropped = keep_unchanged_outputs(nb, nbformat.read(target, as_version=4))
            note = f"kept the outputs of {kept} unchanged code cells"
            if dropped:
                note += f"; {dropped} changed or removed code cells lost theirs: run with --execute"
        nbformat.write(nb, target)
        print(f"wrote {target} ({note})")


def _folder(text: str) -> Path:
    """The ``--out`` argument; an empty path (the working folder, by accident) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; give the folder to write the notebooks into")
    return Path(text).expanduser()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run each notebook and write its new outputs")
    parser.add_argument("--only", nargs="+", choices=list(NOTEBOOKS), metavar="NAME", help="these notebooks only")
    parser.add_argument(
        "--out", type=_folder, default=OUT, help="the folder to write the notebooks into (default: %(default)s)"
    )
    args = parser.parse_args()
    build(args.execute, args.only, args.out)
