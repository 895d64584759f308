"""Zero-shot default candidate: heads-only training on SQuAD (train articles) + NFCorpus train.

Frozen all-MiniLM-L6-v2, mean pooling, normalised pooled vector, identity mean head, unit
initial variance, no ``[VAR]`` token (the variance head reads the pooled state), so the
untrained model ranks exactly like MiniLM cosine on the same features.

Sub-commands (all append JSON lines under ``runs/``):

* ``features``: compute (and cache) the backbone features of every text the other steps use.
* ``dev``: sweep loss / beta / temperature / lr / variance-head lr for the Gaussian (``neg_kl``)
  and its twins with the identical recipe; evaluate on SciFact TRAIN queries (zero-shot dev) and
  held-out SQuAD articles. Rows go to ``runs/zs_dev.jsonl``.
* ``final``: train the chosen configuration (Gaussian + twins, same seed/steps), evaluate on the
  test splits (plus the untrained MiniLM cosine and the Gaussian's means-only ablation), write
  per-query results to ``runs/zs_final/`` and rows to ``runs/zs_final.jsonl``; ``--save`` stores
  the Gaussian as a bundled-model folder (delta only).

Examples:
    python benchmarks/train_zero_shot.py features --max-length 256
    python benchmarks/train_zero_shot.py dev --betas 1 5 10 --temperatures 0.05 0.02 --lrs 1e-4 3e-4
    python benchmarks/train_zero_shot.py final --beta 5 --temperature 0.05 --lr 3e-4 --save DIR

Distillation (``--losses listwise margin_mse``) mines ``--negatives`` hard negatives per query
(``--hard-negatives model``: the untrained encoder, i.e. MiniLM cosine; or ``bm25``) and scores
every positive and negative once with the int8 ms-marco-MiniLM-L-12-v2 cross-encoder teacher
(cached under the feature cache's ``../teacher``, as ``kl-retrievers train --teacher`` does).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kl_retrievers import GaussianEncoder
from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.evaluation import evaluate_run, retrieve_exact, save_per_query
from kl_retrievers.training import TrainConfig, TrainingSet, compute_features, encode_from_features, from_beir
from kl_retrievers.training.data import mine_bm25_negatives, mine_negatives_from_scores
from kl_retrievers.training.features import FeatureCache, backbone_fingerprint, default_feature_cache_dir, text_key
from kl_retrievers.training.losses import LOSSES
from kl_retrievers.training.trainer import train_heads_cached

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BASE = "sentence-transformers/all-MiniLM-L6-v2"
SQUAD = "squad-v1.1-dev-retrieval"
NFC = "nfcorpus-preprocessed"
#: Test splits of the final evaluation (name, split, protocol).
TESTS = [
    ("scifact", "test", "zero-shot"),
    ("trec-dl21-passage-pooled", "test", "zero-shot"),
    ("cranfield", "test", "zero-shot"),
    (NFC, "test", "in-domain (NFCorpus train used)"),
]
DEV = [("scifact", "train"), ("squad-dev", "test")]


#: Set from ``--var-token`` in :func:`main`.
VAR_TOKEN = True


def make_encoder(beta: float, max_length: int, seed: int = 0) -> GaussianEncoder:
    """A fresh encoder: identity mean head, unit variance, ``[VAR]`` token per ``--var-token``."""
    return GaussianEncoder.from_backbone(
        BASE, pooling="mean", normalize_pooled=True, var_token=VAR_TOKEN, beta=beta,
        max_length=max_length, query_max_length=64, seed=seed,
    )  # fmt: skip


def squad_split(n_train: int, n_dev: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """SQuAD query ids split by article (every 10th article held out), subsampled (seeded)."""
    squad = load_beir(DATASETS / SQUAD, "test")
    articles = sorted({d.split("-")[0] for d in squad.doc_ids})
    dev_articles = set(articles[::10])
    train_q, dev_q = [], []
    for q, rel in squad.qrels.items():
        (dev_q if any(d.split("-")[0] in dev_articles for d in rel) else train_q).append(q)
    rng = np.random.default_rng(seed)
    train_q = sorted(rng.choice(sorted(train_q), size=min(n_train, len(train_q)), replace=False).tolist())
    dev_q = sorted(rng.choice(sorted(dev_q), size=min(n_dev, len(dev_q)), replace=False).tolist())
    return train_q, dev_q


def load_eval(name: str, split: str, args: argparse.Namespace) -> BeirDataset:
    """An evaluation split; ``squad-dev`` is the held-out SQuAD articles over the full SQuAD corpus."""
    if name == "squad-dev":
        ds = load_beir(DATASETS / SQUAD, "test")
        _, dev_q = squad_split(args.squad_train, args.squad_dev)
        keep = set(dev_q)
        ds.qrels = {q: r for q, r in ds.qrels.items() if q in keep}
        ds.queries = {q: t for q, t in ds.queries.items() if q in keep}
        return ds
    return load_beir(DATASETS / name, split, unknown_docs="drop")


def training_set(args: argparse.Namespace, cache: Path) -> TrainingSet:
    """SQuAD train-article queries (subsample), plus NFCorpus train with ``--train-data squad+nfcorpus``.

    With ``--hard-negatives`` each query gets ``--negatives`` mined negatives; a distillation loss
    in ``--losses`` / ``--loss`` adds the cross-encoder teacher's score of every candidate.
    """
    train_q, _ = squad_split(args.squad_train, args.squad_dev)
    ts = from_beir(DATASETS / SQUAD, "test", query_ids=train_q)
    if args.train_data == "squad+nfcorpus":
        ts = ts.merge(from_beir(DATASETS / NFC, "train"))
    if args.hard_negatives == "bm25":
        mine_bm25_negatives(ts, k=args.negatives)
    elif args.hard_negatives == "model":
        enc = make_encoder(1.0, args.max_length)
        qf = compute_features(enc, ts.queries, max_length=64, cache_dir=cache, show_progress=False)
        df = compute_features(enc, ts.docs, max_length=args.max_length, cache_dir=cache, show_progress=False)
        q, d = encode_from_features(enc, qf), encode_from_features(enc, df)
        qm, dm = q.mean.astype(np.float32), d.mean.astype(np.float32)
        mine_negatives_from_scores(ts, lambda rows: qm[rows] @ dm.T, k=args.negatives)
    if any(loss != "contrastive" for loss in losses(args)):
        from kl_retrievers.training.teacher import CrossEncoderTeacher, add_teacher_scores

        t0 = time.perf_counter()
        n = add_teacher_scores(ts, CrossEncoderTeacher(cache_dir=cache.parent / "teacher"))
        first = np.mean([min(ex.teacher_positives or [0.0]) > max(ex.teacher_negatives or [0.0]) for ex in ts.examples])
        logger.warning("teacher scores: %d pairs in %.0f s; every positive above every negative for %.1f%% of "
                       "the queries", n, time.perf_counter() - t0, 100 * first)  # fmt: skip
    return ts


def losses(args: argparse.Namespace) -> list[str]:
    """The losses this invocation trains with (``dev``: ``--losses``; ``final``: ``--loss``)."""
    return list(args.losses) if args.command == "dev" else [args.loss]


def ids_in_order(ds: BeirDataset) -> list[str]:
    """Query ids of a split in the order of ``ds.query_texts()``."""
    return list(ds.query_ids)


def run_for(
    enc: GaussianEncoder, ds: BeirDataset, similarity: str, cache: Path, *, means_only: bool = False
) -> dict[str, dict[str, float]]:
    """Top-100 run of ``enc`` on ``ds`` from cached features."""
    qf = compute_features(enc, ds.query_texts(), max_length=enc.config.query_max_length, cache_dir=cache,
                          show_progress=False)  # fmt: skip
    df = compute_features(enc, ds.document_texts(), max_length=enc.config.max_length, cache_dir=cache,
                          desc=f"{ds.path} docs")  # fmt: skip
    q, d = encode_from_features(enc, qf), encode_from_features(enc, df)
    if similarity == "neg_kl":
        return retrieve_exact(q, d, ds.query_ids, ds.doc_ids, k=100, means_only=means_only)
    qm, dm = q.mean.astype(np.float32), d.mean.astype(np.float32)
    if similarity == "cosine":
        qm = qm / np.linalg.norm(qm, axis=1, keepdims=True)
        dm = dm / np.linalg.norm(dm, axis=1, keepdims=True)
    scores = qm @ dm.T
    top = np.argsort(-scores, axis=1)[:, :100]
    return {qid: {ds.doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(ds.query_ids)}


def score(ds: BeirDataset, run: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """nDCG@10 and Recall@100 (aggregate rounded to 4 places, per query)."""
    agg, per = evaluate_run(ds.qrels, run, ["ndcg@10", "recall@100"])
    return {k: round(float(v), 4) for k, v in agg.items()}, per


def is_cached(enc: GaussianEncoder, ds: BeirDataset, cache: Path) -> bool:
    """Whether every query and document feature of ``ds`` is already in the feature cache."""
    fc = FeatureCache(cache, backbone_fingerprint(enc))
    return all(text_key(t, enc.config.query_max_length) in fc for t in ds.query_texts()) and all(
        text_key(t, enc.config.max_length) in fc for t in ds.document_texts()
    )


def variance_stats(enc: GaussianEncoder, ds: BeirDataset, cache: Path) -> dict[str, float]:
    """Spread of the document variances (is the variance head doing anything?)."""
    df = compute_features(enc, ds.document_texts(), max_length=enc.config.max_length, cache_dir=cache,
                          show_progress=False)  # fmt: skip
    v = encode_from_features(enc, df).var
    logdet = np.log(v).sum(1)
    return {
        "var_mean": round(float(v.mean()), 4),
        "var_min": round(float(v.min()), 5),
        "var_max": round(float(v.max()), 4),
        "logdet_std_over_docs": round(float(logdet.std()), 4),
    }


def train(ts: TrainingSet, sim: str, beta: float, temp: float, lr: float, args: argparse.Namespace,
          cache: Path, *, loss: str = "contrastive", var_lr: float | None = None,
          ) -> tuple[GaussianEncoder, float, float]:  # fmt: skip
    """Train the heads of a fresh encoder; returns (encoder, final loss, seconds)."""
    enc = make_encoder(beta, args.max_length, args.seed)
    cfg = TrainConfig(
        similarity=sim, loss=loss, steps=args.steps, batch_size=args.batch_size, lr=lr,
        var_lr=var_lr if sim == "neg_kl" else None, negatives=args.negatives,
        temperature=temp, teacher_temperature=args.teacher_temperature, full_corpus=True,
        corpus_sample=args.corpus_sample, seed=args.seed, show_progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = train_heads_cached(enc, ts, cfg, cache_dir=cache)
    return enc, float(res.final_loss), time.perf_counter() - t0


def append(path: Path, row: dict[str, Any]) -> None:
    """Print a row and append it to a JSON-lines file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    print(json.dumps(row), flush=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Settings shared by every row of one invocation (with the exact command)."""
    keys = ["train_data", "var_token", "steps", "batch_size", "seed", "max_length", "corpus_sample", "squad_train",
            "hard_negatives", "negatives", "teacher_temperature"]  # fmt: skip
    return {k: getattr(args, k) for k in keys} | {"command": "python " + " ".join(sys.argv)}


def cmd_features(args: argparse.Namespace, cache: Path) -> None:
    """Compute features in the order the later steps need them."""
    enc = make_encoder(1.0, args.max_length)
    train_q, dev_q = squad_split(args.squad_train, args.squad_dev)
    squad = load_beir(DATASETS / SQUAD, "test")
    jobs: list[tuple[str, list[str], int]] = [
        ("squad queries", [squad.queries[q] for q in train_q + dev_q], 64),
        ("squad docs", squad.document_texts(), args.max_length),
    ]
    for name in [NFC, "scifact", "cranfield", "trec-dl21-passage-pooled"]:
        nfc_splits = ["train", "test"] if args.train_data == "squad+nfcorpus" else ["test"]
        splits = {NFC: nfc_splits, "scifact": ["train", "test"]}.get(name, ["test"])
        texts: list[str] = []
        ds = None
        for split in splits:
            ds = load_beir(DATASETS / name, split, unknown_docs="drop")
            texts += ds.query_texts()
        assert ds is not None
        jobs += [(f"{name} queries", texts, 64), (f"{name} docs", ds.document_texts(), args.max_length)]
    only = set(args.only or [])
    for desc, texts, ml in jobs:
        if only and not any(desc.startswith(o) for o in only):
            continue
        t0 = time.perf_counter()
        compute_features(enc, texts, max_length=ml, cache_dir=cache, desc=desc)
        logger.warning("%s: %d texts in %.0f s", desc, len(texts), time.perf_counter() - t0)


def cmd_dev(args: argparse.Namespace, cache: Path) -> None:
    """The sweep on zero-shot dev data."""
    ts = training_set(args, cache)
    evals = [(n, s, load_eval(n, s, args)) for n, s in DEV]
    log = Path(args.log or ROOT / "runs" / "zs_dev.jsonl")
    base = recipe(args)
    if args.untrained:
        enc = make_encoder(1.0, args.max_length)
        row = base | {"similarity": "untrained", "beta": None, "temperature": None, "lr": None,
                      "steps": 0}  # fmt: skip
        for n, s, ds in evals:
            row[f"{n}:{s}"] = score(ds, run_for(enc, ds, "cosine", cache))[0]
        append(log, row)
    grid = [(lf, lr, temp, sim, beta, vlr) for lf in args.losses for lr in args.lrs for temp in args.temperatures
            for sim in args.similarities for beta in (args.betas if sim == "neg_kl" else [None])
            for vlr in (args.var_lrs if sim == "neg_kl" else [None])]  # fmt: skip
    for lf, lr, temp, sim, beta, vlr in grid:
        enc, loss, secs = train(ts, sim, beta or 1.0, temp, lr, args, cache, loss=lf, var_lr=vlr)
        row = base | {"similarity": sim, "beta": beta, "temperature": temp, "lr": lr, "loss": lf,
                      "var_lr": vlr, "final_loss": round(loss, 4), "train_s": round(secs, 1)}  # fmt: skip
        for n, s, ds in evals:
            row[f"{n}:{s}"] = score(ds, run_for(enc, ds, sim, cache))[0]
            if sim == "neg_kl":
                row[f"{n}:{s}:means_only"] = score(ds, run_for(enc, ds, sim, cache, means_only=True))[0]
        if sim == "neg_kl":
            row["variances_scifact"] = variance_stats(enc, evals[0][2], cache)
        append(log, row)


def cmd_final(args: argparse.Namespace, cache: Path) -> None:
    """Train the chosen configuration and evaluate it on the test splits."""
    ts = training_set(args, cache)
    out = Path(args.per_query_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = Path(args.log or ROOT / "runs" / "zs_final.jsonl")
    common = recipe(args) | {"beta": args.beta, "temperature": args.temperature, "lr": args.lr, "loss": args.loss,
                             "var_lr": args.var_lr}  # fmt: skip
    systems: list[tuple[str, GaussianEncoder, str, bool, float | None]] = [
        ("minilm-cosine", make_encoder(1.0, args.max_length), "cosine", False, None)
    ]
    for sim in args.similarities:
        enc, loss, secs = train(ts, sim, args.beta if sim == "neg_kl" else 1.0, args.temperature, args.lr, args, cache,
                                loss=args.loss, var_lr=args.var_lr)  # fmt: skip
        systems.append((sim, enc, sim, False, loss))
        if sim == "neg_kl":
            systems.append(("neg_kl-means-only", enc, sim, True, loss))
            if args.save:
                enc.config.extra["training"] = {
                    "data": [f"{SQUAD}:test (train articles, {args.squad_train} queries)"]
                    + ([f"{NFC}:train"] if args.train_data == "squad+nfcorpus" else []),
                    "recipe": common | {"similarity": "neg_kl", "full_corpus": args.loss == "contrastive"},
                    "final_loss": round(loss, 4), "seconds": round(secs, 1),
                }  # fmt: skip
                enc.save_pretrained(args.save, include_backbone=False)
    for name, split, protocol in TESTS + [(n, s, "dev") for n, s in DEV]:
        if args.tests and name not in args.tests:
            continue
        if name == NFC and args.train_data == "squad":
            protocol = "zero-shot"
        ds = load_eval(name, split, args)
        if not args.compute_missing and not is_cached(systems[0][1], ds, cache):
            logger.warning("%s:%s: features not cached; skipped (not measured)", name, split)
            continue
        for label, enc, sim, means_only, loss in systems:
            agg, per = score(ds, run_for(enc, ds, sim, cache, means_only=means_only))
            save_per_query(
                out / f"{label}.{name}.{split}.json", per, meta={"system": label, "data": name, "split": split}
            )
            append(log, common | {"system": label, "data": name, "split": split, "protocol": protocol,
                                  "queries": len(ds.qrels), "final_loss": loss, **agg})  # fmt: skip


def opt_float(text: str) -> float | None:
    """``argparse`` type: a float, or ``none`` for None."""
    return None if text.lower() == "none" else float(text)


def main() -> None:
    """Parse arguments and run one sub-command."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["features", "dev", "final"])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--var-token", choices=["on", "off"], default="on")
    p.add_argument("--train-data", choices=["squad", "squad+nfcorpus"], default="squad+nfcorpus")
    p.add_argument("--squad-train", type=int, default=2000, help="SQuAD train-article queries used (seeded subsample)")
    p.add_argument("--squad-dev", type=int, default=300, help="held-out SQuAD queries evaluated")
    p.add_argument("--only", nargs="*", help="features: only jobs whose label starts with one of these")
    p.add_argument("--similarities", nargs="+", default=["neg_kl", "dot"])
    p.add_argument("--betas", type=float, nargs="+", default=[1.0, 5.0, 10.0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05])
    p.add_argument("--lrs", type=float, nargs="*", default=[1e-4])
    p.add_argument("--var-lrs", type=opt_float, nargs="+", default=[None],
                   help="dev: variance-head lrs of the Gaussian ('none': --lrs)")  # fmt: skip
    p.add_argument("--losses", nargs="+", default=["contrastive"], choices=LOSSES, help="dev: losses swept")
    p.add_argument("--loss", default="contrastive", choices=LOSSES, help="final: the loss")
    p.add_argument("--var-lr", type=float, default=None, help="final: the variance head's lr (None: --lr)")
    p.add_argument("--hard-negatives", choices=["none", "bm25", "model"], default="none")
    p.add_argument("--negatives", type=int, default=7, help="hard negatives mined and sampled per query")
    p.add_argument("--teacher-temperature", type=float, default=1.0, help="listwise loss: teacher temperature")
    p.add_argument("--untrained", action="store_true", help="dev: also log the untrained model (MiniLM cosine)")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--corpus-sample", type=int, default=0, help="sampled softmax size (0: full pool)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None)
    p.add_argument("--tests", nargs="*", help="final: evaluate only these data names (default: all)")
    p.add_argument("--compute-missing", action="store_true", help="final: compute features not yet cached")
    p.add_argument("--per-query-dir", default=str(ROOT / "runs" / "zs_final"), help="default: runs/zs_final")
    p.add_argument("--log", default=None, help="default: runs/zs_dev.jsonl (dev), runs/zs_final.jsonl (final)")
    args = p.parse_args()
    global VAR_TOKEN
    VAR_TOKEN = args.var_token == "on"
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    cache = default_feature_cache_dir()
    {"features": cmd_features, "dev": cmd_dev, "final": cmd_final}[args.command](args, cache)


if __name__ == "__main__":
    main()
