"""Heads-only (cached frozen all-MiniLM-L6-v2 features) experiments: Gaussian vs dot vs cosine twins.

Each run builds a fresh encoder (mean pooling, normalised pooled vector, identity mean head,
[VAR] token), trains only its heads on cached features with full-corpus softmax, then
evaluates exact retrieval from the same cached features (identical to encoding with the saved
encoder, see tests/test_training.py) with ir-measures through kl_retrievers.evaluation.

Example:
    python benchmarks/train_heads_experiments.py in-domain --seeds 0 1 2 --steps 1500
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kl_retrievers import GaussianEncoder, Gaussians
from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.evaluation import evaluate_run, retrieve_exact, save_per_query
from kl_retrievers.training import TrainConfig, TrainingSet, compute_features, encode_from_features, from_beir
from kl_retrievers.training.features import default_feature_cache_dir
from kl_retrievers.training.trainer import train_heads_cached

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BASE = "sentence-transformers/all-MiniLM-L6-v2"


def make_encoder(beta: float, var_token: bool, max_length: int, seed: int) -> GaussianEncoder:
    """A fresh encoder with identity mean head and unit variance."""
    return GaussianEncoder.from_backbone(
        BASE, pooling="mean", normalize_pooled=True, var_token=var_token, beta=beta,
        max_length=max_length, query_max_length=64, seed=seed,
    )  # fmt: skip


def holdout_split(fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """SciFact TRAIN query ids split into (fit, held-out dev) by a seeded permutation."""
    ids = sorted(load_beir(DATASETS / "scifact", "train").qrels)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_dev = round(fraction * len(ids))
    dev = sorted(ids[i] for i in perm[:n_dev])
    return sorted(set(ids) - set(dev)), dev


def load_eval(
    enc: GaussianEncoder, name: str, split: str, cache: Path, only: list[str] | None = None
) -> tuple[BeirDataset, Gaussians, Gaussians]:
    """A BEIR split (``only``: these query ids) and its query / document Gaussians from cached features."""
    ds = load_beir(DATASETS / name, split, unknown_docs="drop")
    if only is not None:
        keep = set(only)
        ds.qrels = {q: r for q, r in ds.qrels.items() if q in keep}
        ds.queries = {q: t for q, t in ds.queries.items() if q in keep}
    qf = compute_features(enc, ds.query_texts(), max_length=enc.config.query_max_length, cache_dir=cache,
                          show_progress=False)  # fmt: skip
    df = compute_features(enc, ds.document_texts(), max_length=enc.config.max_length, cache_dir=cache,
                          desc=f"{name} docs")  # fmt: skip
    return ds, encode_from_features(enc, qf), encode_from_features(enc, df)


def score(
    ds: BeirDataset, q: Gaussians, d: Gaussians, similarity: str, per_query_path: Path | None = None
) -> dict[str, float]:
    """nDCG@10 and Recall@100 of exact retrieval; with ``per_query_path`` the per-query metrics are written too."""
    if similarity == "neg_kl":
        run = retrieve_exact(q, d, ds.query_ids, ds.doc_ids, k=100)
    else:
        qm, dm = q.mean.astype(np.float32), d.mean.astype(np.float32)
        if similarity == "cosine":
            qm = qm / np.linalg.norm(qm, axis=1, keepdims=True)
            dm = dm / np.linalg.norm(dm, axis=1, keepdims=True)
        scores = qm @ dm.T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = {qid: {ds.doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(ds.query_ids)}
    agg, per_q = evaluate_run(ds.qrels, run, ["ndcg@10", "recall@100"])
    if per_query_path is not None:
        meta = {"dataset": ds.path.name, "split": ds.split, "similarity": similarity}
        save_per_query(per_query_path, per_q, meta=meta)
    return {k: round(float(v), 4) for k, v in agg.items()}


def unit_variances(g: Gaussians) -> Gaussians:
    """The means-only ablation: the same means with every variance set to 1."""
    return Gaussians(g.mean, np.ones_like(g.var))


def per_query_stem(similarity: str, temperature: float, var_lr: float | None, seed: int) -> str:
    """File stem of one run's per-query metrics, e.g. ``neg_kl-T0.02-v0.0001-s0``."""
    v = "" if var_lr is None else f"-v{var_lr:g}"
    return f"{similarity}-T{temperature:g}{v}-s{seed}"


def train_one(ts: TrainingSet, similarity: str, seed: int, args: argparse.Namespace, beta: float, var_token: bool,
              temperature: float, cache: Path) -> tuple[GaussianEncoder, Any]:  # fmt: skip
    """Train the heads of a fresh encoder."""
    enc = make_encoder(beta, var_token, args.max_length, seed)
    cfg = TrainConfig(
        similarity=similarity, loss="contrastive", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        temperature=temperature, full_corpus=True, corpus_sample=args.corpus_sample, seed=seed,
        var_lr=args.var_lr, show_progress=False,
    )  # fmt: skip
    result = train_heads_cached(enc, ts, cfg, cache_dir=cache)
    return enc, result


def main() -> None:
    """Run one experiment group and append JSON lines to --log."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("group", choices=["in-domain", "zero-shot-dev", "zero-shot-final"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--similarities", nargs="+", default=["neg_kl", "dot", "cosine"])
    p.add_argument("--betas", type=float, nargs="+", default=[1.0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05])
    p.add_argument("--var-token", nargs="+", default=["on"], choices=["on", "off"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--var-lr", type=float, default=None, help="variance-head lr (default: --lr; 0: fixed)")
    p.add_argument("--corpus-sample", type=int, default=0, help="sampled softmax size (0: full corpus)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval", nargs="+", default=["scifact:test"])
    p.add_argument("--save", default=None, help="save the (last) trained model here")
    p.add_argument("--log", default=str(ROOT / "runs" / "train_heads.jsonl"), help="default: runs/train_heads.jsonl")
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="in-domain dev mode: train on SciFact TRAIN minus this fraction of its queries (seeded) and "
        "evaluate only on the held-out ones (never on test)",
    )
    p.add_argument("--per-query-dir", default=None, help="also write per-query metrics of the test evals here")
    p.add_argument("--holdout-seed", type=int, default=0, help="seed of the --holdout split of the train queries")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    cache = default_feature_cache_dir()
    dev_ids: list[str] | None = None
    if args.group == "in-domain" and args.holdout:
        fit_ids, dev_ids = holdout_split(args.holdout, args.holdout_seed)
        ts = from_beir(DATASETS / "scifact", "train", query_ids=fit_ids)
        args.eval = ["scifact:train-holdout"]
    elif args.group == "in-domain":
        ts = from_beir(DATASETS / "scifact", "train")
    else:
        squad = load_beir(DATASETS / "squad-v1.1-dev-retrieval", "test")
        articles = sorted({d.split("-")[0] for d in squad.doc_ids})
        dev_articles = set(articles[::10])  # every 10th article held out as SQuAD dev
        train_q = [q for q, rel in squad.qrels.items() if not any(d.split("-")[0] in dev_articles for d in rel)]
        ts = from_beir(DATASETS / "squad-v1.1-dev-retrieval", "test", query_ids=train_q)
        ts = ts.merge(from_beir(DATASETS / "nfcorpus-preprocessed", "train"))
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    for vt in args.var_token:
        for beta in args.betas:
            for temp in args.temperatures:
                for sim in args.similarities:
                    for seed in args.seeds:
                        t0 = time.perf_counter()
                        enc, res = train_one(ts, sim, seed, args, beta, vt == "on", temp, cache)
                        row: dict[str, Any] = {
                            "group": args.group, "similarity": sim, "seed": seed, "beta": beta, "var_token": vt,
                            "temperature": temp, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                            "max_length": args.max_length, "train_s": round(time.perf_counter() - t0, 1),
                            "final_loss": round(res.final_loss, 4),
                        }  # fmt: skip
                        if args.holdout:
                            row["holdout"] = args.holdout
                            row["holdout_seed"] = args.holdout_seed
                        if args.var_lr is not None:
                            row["var_lr"] = args.var_lr
                        for spec in args.eval:
                            name, split = ("scifact", "train") if spec == "scifact:train-holdout" else spec.split(":")
                            only = dev_ids if spec == "scifact:train-holdout" else None
                            ds, q, d = load_eval(enc, name, split, cache, only=only)
                            stem = per_query_stem(sim, temp, args.var_lr, seed)
                            folder = Path(args.per_query_dir) if args.per_query_dir and only is None else None
                            pq = folder / f"{stem}.{name}.{split}.json" if folder else None
                            row[spec] = score(ds, q, d, sim, per_query_path=pq)
                            if sim == "neg_kl":
                                pq = folder / f"{stem}-means-only.{name}.{split}.json" if folder else None
                                row[f"{spec}:means_only"] = score(
                                    ds, unit_variances(q), unit_variances(d), "neg_kl", per_query_path=pq
                                )
                        print(json.dumps(row), flush=True)
                        with log.open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        if args.save:
                            enc.save_pretrained(args.save, include_backbone=False)


if __name__ == "__main__":
    main()
