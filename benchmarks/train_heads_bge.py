"""Heads-only Gaussian on the frozen bge-small-en backbone (rebuilt from int8), and its dot-product twin.

One fixed recipe, chosen before any evaluation (the zero-shot heads recipe of
``benchmarks/train_heads_experiments.py``: contrastive loss over the whole pool, temperature 0.05,
1500 steps of 64 queries, lr 1e-3, seed 0): nothing is tuned here. Both twins start from
``bge-small-unit-variance`` (identity mean head over the normalised CLS state, unit variance, no
``[VAR]`` token, bge's query prefix) and differ only in the similarity they train and score with
(``neg_kl`` or ``dot``).

Training data (the project's data rules): SQuAD v1.1 dev-retrieval questions minus every 10th article
(kept as SQuAD dev), plus NFCorpus train. SciFact, Cranfield and TREC DL are never trained on.

Evaluation, from the same cached backbone features (exact retrieval; identical to encoding with the
saved model): SciFact train (the zero-shot dev set) and the test splits of scifact, nfcorpus-preprocessed
(in-domain for these models: NFCorpus train shares its corpus), cranfield and trec-dl21-passage-pooled;
the untrained start (= bge cosine) is scored from the same features as the reference. One JSON line per
model goes to ``runs/bge/train_heads.jsonl``.

Examples:
    nice -n 10 python benchmarks/train_heads_bge.py --save runs/bge/heads
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from train_heads_experiments import score, unit_variances

from kl_retrievers import GaussianEncoder
from kl_retrievers.datasets import load_beir
from kl_retrievers.training import TrainConfig, compute_features, encode_from_features, from_beir
from kl_retrievers.training.features import default_feature_cache_dir
from kl_retrievers.training.trainer import train_heads_cached

logger = logging.getLogger("benchmarks.train_heads_bge")
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
LOG = ROOT / "runs" / "bge" / "train_heads.jsonl"
EVAL = [
    ("scifact", "train"),
    ("scifact", "test"),
    ("nfcorpus-preprocessed", "test"),
    ("cranfield", "test"),
    ("trec-dl21-passage-pooled", "test"),
]


def start_model(seed: int) -> GaussianEncoder:
    """A fresh copy of the bundled ``bge-small-unit-variance`` (its heads re-seeded like from_backbone)."""
    return GaussianEncoder.from_backbone(
        "bge-small-en",
        pooling="cls",
        var_token=False,
        normalize_pooled=True,
        init_variance=1.0,
        identity_mean=True,
        max_length=512,
        query_max_length=512,
        seed=seed,
    )


def training_set() -> Any:
    """SQuAD dev-retrieval minus every 10th article, plus NFCorpus train."""
    squad = load_beir(DATASETS / "squad-v1.1-dev-retrieval", "test")
    articles = sorted({d.split("-")[0] for d in squad.doc_ids})
    held_out = set(articles[::10])
    train_q = [q for q, rel in squad.qrels.items() if not any(d.split("-")[0] in held_out for d in rel)]
    ts = from_beir(DATASETS / "squad-v1.1-dev-retrieval", "test", query_ids=train_q)
    return ts.merge(from_beir(DATASETS / "nfcorpus-preprocessed", "train"))


def load_features(seed: int) -> tuple[GaussianEncoder, Any, Any, Any, dict[str, Any]]:
    """The start model, the training set (queries prefixed as at inference) and cached backbone features.

    Returns ``(base, training set, query features, document features, evals)``; ``evals`` maps
    ``"name:split"`` of :data:`EVAL` to ``(dataset, query features, document features)``. Shared by
    this script and ``benchmarks/variance_temperature.py``.
    """
    cache = default_feature_cache_dir()
    base = start_model(seed)
    prefix = base.config.extra["query_prefix"]
    ts = training_set()
    ts.queries = [prefix + q for q in ts.queries]  # what encode_queries does at inference
    qf = compute_features(base, ts.queries, max_length=base.config.query_max_length, cache_dir=cache, desc="train q")
    df = compute_features(base, ts.docs, max_length=base.config.max_length, cache_dir=cache, desc="train docs")
    evals = {}
    for name, split in EVAL:
        ds = load_beir(DATASETS / name, split, unknown_docs="drop")
        q = [prefix + t for t in ds.query_texts()]
        evals[f"{name}:{split}"] = (
            ds,
            compute_features(base, q, max_length=base.config.query_max_length, cache_dir=cache, desc=f"{name} q"),
            compute_features(base, ds.document_texts(), max_length=base.config.max_length, cache_dir=cache, desc=name),
        )
    return base, ts, qf, df, evals


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe's options (defaults: the fixed recipe of the module doc) and ``--save``."""
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="save each trained model under this folder (<similarity>/)")


def train_twin(
    sim: str, args: argparse.Namespace, prefix: str, ts: Any, qf: Any, df: Any
) -> tuple[GaussianEncoder, dict[str, Any]]:
    """Train one twin (``neg_kl`` or ``dot``) with the recipe in ``args`` from the seeded start; saved under ``--save``.

    Returns the trained encoder and ``{"train_s", "final_loss"}``.
    """
    enc = start_model(args.seed)
    enc.config.extra["query_prefix"] = prefix
    cfg = TrainConfig(
        similarity=sim, loss="contrastive", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, full_corpus=True, seed=args.seed, show_progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = train_heads_cached(enc, ts, cfg, cache_dir=default_feature_cache_dir(), query_features=qf, doc_features=df)
    info = {"train_s": round(time.perf_counter() - t0, 1), "final_loss": round(res.final_loss, 4)}
    if args.save:
        enc.save_pretrained(Path(args.save) / sim, include_backbone=False)
    return enc, info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--similarities", nargs="+", default=["neg_kl", "dot"], choices=["neg_kl", "dot"])
    add_recipe_arguments(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    base, ts, qf, df, evals = load_features(args.seed)
    prefix = base.config.extra["query_prefix"]
    command = "python benchmarks/train_heads_bge.py " + shlex.join(sys.argv[1:])
    runs: list[tuple[str, GaussianEncoder, dict[str, Any]]] = [("untrained", base, {})]
    for sim in args.similarities:
        runs.append((sim, *train_twin(sim, args, prefix, ts, qf, df)))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    for sim, enc, info in runs:
        row: dict[str, Any] = {"model": sim, **info, "steps": args.steps, "batch_size": args.batch_size,
                               "lr": args.lr, "temperature": args.temperature, "seed": args.seed}  # fmt: skip
        for spec, (ds, qfe, dfe) in evals.items():
            gq, gd = encode_from_features(enc, qfe), encode_from_features(enc, dfe)
            row[spec] = score(ds, gq, gd, "dot" if sim == "dot" else "neg_kl")
            if sim == "neg_kl":
                row[f"{spec}:means_only"] = score(ds, unit_variances(gq), unit_variances(gd), "neg_kl")
        row["command"] = command
        print(json.dumps(row), flush=True)
        with LOG.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
