"""Count the documents of each dev collection whose text (``title + " " + text``) repeats another's.

Exact score ties in a run come from such duplicates (identical texts encoded in one batch get identical
vectors, and always identical BM25 scores); docs/baselines.md quotes these counts.

Examples:
    python benchmarks/corpus_duplicates.py
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from kl_retrievers.datasets import load_beir

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
COLLECTIONS = ["scifact", "nfcorpus-preprocessed", "cranfield", "trec-dl21-passage-pooled"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collections", nargs="+", default=COLLECTIONS, metavar="NAME", help="under shared/datasets")
    for name in p.parse_args().collections:
        texts = collections.Counter(load_beir(DATASETS / name, "test").document_texts())
        groups = [n for n in texts.values() if n > 1]
        n_docs, n_dup = sum(texts.values()), sum(groups)
        print(f"{name}: {n_docs} documents, {len(groups)} groups of identical texts ({n_dup} documents)")


if __name__ == "__main__":
    main()
