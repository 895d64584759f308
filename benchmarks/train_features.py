"""Precompute (and cache) frozen all-MiniLM-L6-v2 features for the training experiments.

Runs the backbone once per text, exactly as ``GaussianEncoder.forward`` would (mean pooling,
``[VAR]`` inserted when ``--var-token``), and stores pooled + ``[VAR]`` states in the feature
cache used by ``kl-retrievers train --heads-only-cached``.

Example:
    python benchmarks/train_features.py --datasets scifact squad-v1.1-dev-retrieval --var-token on off
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from kl_retrievers import GaussianEncoder
from kl_retrievers.datasets import available_splits, load_beir
from kl_retrievers.training.features import compute_features, default_feature_cache_dir

logger = logging.getLogger(__name__)
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    """Compute features for every query and document of the named collections."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument("--var-token", nargs="+", default=["on"], choices=["on", "off"])
    parser.add_argument("--base", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cache = args.cache_dir or default_feature_cache_dir()
    for vt in args.var_token:
        enc = GaussianEncoder.from_backbone(
            args.base,
            pooling="mean",
            var_token=vt == "on",
            normalize_pooled=True,
            max_length=args.max_length,
            query_max_length=args.query_max_length,
        )
        for name in args.datasets:
            path = DATASETS / name
            queries: dict[str, str] = {}
            ds = None
            for split in available_splits(path):
                ds = load_beir(path, split, unknown_docs="drop")
                queries.update(ds.queries)
            assert ds is not None
            t0 = time.perf_counter()
            compute_features(
                enc,
                list(queries.values()),
                max_length=args.query_max_length,
                cache_dir=cache,
                desc=f"{name} queries var={vt}",
            )
            compute_features(
                enc, ds.document_texts(), max_length=args.max_length, cache_dir=cache, desc=f"{name} docs var={vt}"
            )
            logger.info(
                "%s var_token=%s: %d queries, %d docs in %.0f s",
                name,
                vt,
                len(queries),
                len(ds.corpus),
                time.perf_counter() - t0,
            )


if __name__ == "__main__":
    main()
