"""First experiments towards an informative query uncertainty (issue 19), measured by benchmarks/qpp.py's code.

None of these changes the default's document encodings; ``mc-dropout`` and ``ensemble`` change
nothing at all in the ranking (they only add predictors), ``var-head`` replaces the query
variances only (documents keep variances within 0.001 of 1, so nDCG@10 should barely move: the
logged nDCG says by how much).

Sub-commands (each appends records to ``runs/qpp/qpp.jsonl`` and writes per-query files there):

* ``mc-dropout``: epistemic disagreement of the default under dropout (``--samples`` stochastic
  forward passes of each query, dropout as in training, p = 0.1): ``mc_mean_var`` (mean over
  dimensions of the variance of the query mean across samples; direction -1), ``mc_score_std``
  (the std across samples of -KL to each of the deterministic top-10 documents, averaged over
  them; direction -1) and ``mc_top10_overlap`` (mean share of the deterministic top-10 that each
  sample retrieves in its own top-10; direction +1).
* ``ensemble``: the same three statistics over the default soup's three members. The soup stores
  each seed's rank-16 LoRA factors stacked into rank 48 (``B`` scaled by 1/3), so member ``s`` is
  the backbone plus ``3 * B_s @ A_s * scaling``; the heads are the soup's averaged heads (the
  seeds' own heads are not stored), so members differ in the backbone only.
* ``var-head``: a query-uncertainty head on frozen features (the default's pooled query state),
  fitted by ridge regression to each training query's difficulty under the default
  (``--target rr``: 1 - reciprocal rank of the first relevant document in the default's top 100,
  ``ndcg``: 1 - nDCG@10; or, needing no judgements, minus a post-retrieval predictor of the
  default's own run: ``gap12``, ``max_score``, ``wig``), on SQuAD train-article queries (every
  10th article held out, as the default's training split it) and/or NFCorpus train queries; the new query variance is
  ``var_default * exp(u(q) - mean_train u)`` so its mean log-variance is ``u`` up to a constant.
  Ridge alpha is chosen by 5-fold cross-validation on the training queries (Kendall tau), never
  on dev or test. It is logged on SciFact TRAIN (the zero-shot dev set) and, with ``--final``,
  on the four test splits.
* ``mc-distil``: the same ridge head, but its target is the default's MC-dropout instability
  (``1 - mc_top10_overlap`` over ``--samples`` dropout passes) on every k-th NFCorpus train query
  and/or SQuAD train-article query (of the 3,000-query sample of ``benchmarks/calibration.py``;
  ``--train-queries`` per set), so that one forward pass gives the stability as the query's
  uncertainty. Training targets are cached under ``runs/qpp-cache/``. The target was chosen
  after ``mc-dropout --final`` had logged the three statistics on the four test splits
  (``runs/qpp/qpp.jsonl``, where ``mc_top10_overlap`` was the best), so the choice was not blind to
  the test splits; SciFact TRAIN (the dev set, logged before those finals) ranks the three the same
  way (Kendall tau ``mc_top10_overlap`` +0.0725 > ``mc_mean_var`` +0.0592 > ``mc_score_std`` +0.0344).

Examples:
    python benchmarks/qpp_experiments.py mc-dropout --targets scifact:train --samples 20
    python benchmarks/qpp_experiments.py ensemble --targets scifact:train
    python benchmarks/qpp_experiments.py var-head --train nfcorpus squad --target rr
    python benchmarks/qpp_experiments.py mc-distil --train nfcorpus --samples 10
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qpp import COLLECTIONS, DATASETS, LOG_DIR, REFERENCE_MODEL, evaluate_gaussians

from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.evaluation import encode_dataset, evaluate_run, retrieve_exact
from kl_retrievers.gaussian import Gaussians, neg_kl
from kl_retrievers.qpp import gaussian_query_stats

logger = logging.getLogger("benchmarks.qpp_experiments")
SQUAD = "squad-v1.1-dev-retrieval"
NFC = "nfcorpus-preprocessed"
DEV_TARGETS = ("scifact:train",)
TEST_TARGETS = tuple(f"{c}:test" for c in COLLECTIONS)


def load_default() -> Any:
    from kl_retrievers.pretrained import load_model

    enc = load_model(REFERENCE_MODEL, backend="torch")  # dropout and the heads need the torch module
    torch.set_num_threads(2)
    return enc


def targets(specs: Sequence[str]) -> list[BeirDataset]:
    out = []
    for spec in specs:
        name, _, split = spec.partition(":")
        out.append(load_beir(DATASETS / name, split or "test"))
    return out


@torch.no_grad()
def forward_queries(
    encoder: Any, texts: Sequence[str], *, dropout: bool = False, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query means, variances and pooled features (before the heads) in input order.

    With ``dropout`` the backbone runs in training mode (dropout on); the caller seeds torch.
    """
    encoder.train(dropout)
    means, vars_, feats = [], [], []
    try:
        for start in range(0, len(texts), batch_size):
            batch = encoder.tokenize(list(texts[start : start + batch_size]), encoder.config.query_max_length)
            pooled, var_state = encoder.backbone_features(**batch)
            mean, var = encoder.heads(pooled, var_state)
            means.append(mean.float().numpy())
            vars_.append(var.float().numpy())
            feats.append(var_state.float().numpy())
    finally:
        encoder.eval()
    return np.concatenate(means), np.concatenate(vars_), np.concatenate(feats)


def disagreement(
    samples: list[np.ndarray], sample_vars: list[np.ndarray], q: Gaussians, d: Gaussians, ds: BeirDataset
) -> dict[str, dict[str, float]]:
    """``*_mean_var``, ``*_score_std`` and ``*_top10_overlap`` of several encodings of each query."""
    stack = np.stack(samples)  # (S, nq, k)
    mean_var = stack.var(axis=0).mean(axis=1)
    base = retrieve_exact(q, d, ds.query_ids, ds.doc_ids, 10)
    pos = {doc: i for i, doc in enumerate(ds.doc_ids)}
    top = [[pos[doc] for doc in base[qid]] for qid in ds.query_ids]
    score_std = np.zeros(len(ds.query_ids))
    overlap = np.zeros(len(ds.query_ids))
    per_sample_scores = []
    for m, v in zip(samples, sample_vars, strict=True):
        g = Gaussians(m.astype(np.float64), v.astype(np.float64))
        rows = [np.asarray(neg_kl(g[i : i + 1], d[np.array(top[i])])) for i in range(len(ds.query_ids))]
        per_sample_scores.append(np.stack(rows))
        run_s = retrieve_exact(g, d, ds.query_ids, ds.doc_ids, 10)
        overlap += np.array([len(set(run_s[qid]) & set(base[qid])) / 10.0 for qid in ds.query_ids])
    score_std = np.stack(per_sample_scores).std(axis=0).mean(axis=1)
    overlap /= len(samples)
    ids = ds.query_ids
    return {
        "mean_var": dict(zip(ids, mean_var.tolist(), strict=True)),
        "score_std": dict(zip(ids, score_std.tolist(), strict=True)),
        "top10_overlap": dict(zip(ids, overlap.tolist(), strict=True)),
    }


DIRECTIONS = {"mean_var": -1, "score_std": -1, "top10_overlap": 1}


def cmd_mc_dropout(args: argparse.Namespace) -> None:
    enc = load_default()
    label = f"{REFERENCE_MODEL}+mc{args.samples}"
    for ds in targets(args.targets):
        q, d = encode_dataset(enc, ds, show_progress=False)
        t0 = time.perf_counter()
        texts = ds.query_texts()
        means, vars_ = [], []
        for s in range(args.samples):
            torch.manual_seed(args.seed + s)
            m, v, _ = forward_queries(enc, texts, dropout=True)
            means.append(m)
            vars_.append(v)
        stats = disagreement(means, vars_, q, d, ds)
        extra = {f"mc_{k}": v for k, v in stats.items()}
        dirs = {f"mc_{k}": DIRECTIONS[k] for k in stats}
        rec = evaluate_gaussians(
            label, ds, q, d, extra_predictors=extra, directions=dirs,
            extra={"experiment": "mc-dropout", "samples": args.samples, "seed": args.seed,
                   "mc_seconds": round(time.perf_counter() - t0, 1)},
        )  # fmt: skip
        report(rec)


def soup_members(enc: Any) -> list[Any]:
    """The soup's three members (backbone + 3 * its own rank-16 update; the soup's averaged heads)."""
    from safetensors import safe_open

    from kl_retrievers.pretrained import bundled_model_path

    path = bundled_model_path(REFERENCE_MODEL) / "delta.safetensors"
    members = [copy.deepcopy(enc) for _ in range(3)]
    with safe_open(str(path), "pt") as f:
        keys = [k[: -len(".lora_A")] for k in f.keys() if k.endswith(".lora_A")]  # noqa: SIM118
        for key in keys:
            a, b = f.get_tensor(key + ".lora_A"), f.get_tensor(key + ".lora_B")
            scaling = float(f.get_tensor(key + ".lora_scaling").reshape(-1)[0])
            r = a.shape[0] // 3
            total = (b @ a) * scaling
            for s, member in enumerate(members):
                own = (b[:, s * r : (s + 1) * r] @ a[s * r : (s + 1) * r]) * scaling
                name = key.removeprefix("backbone.")
                param = member.backbone.get_parameter(name)
                param.data += (3.0 * own - total).to(param.dtype)
    return members


def cmd_ensemble(args: argparse.Namespace) -> None:
    enc = load_default()
    members = soup_members(enc)
    label = f"{REFERENCE_MODEL}+ensemble3"
    for ds in targets(args.targets):
        q, d = encode_dataset(enc, ds, show_progress=False)
        texts = ds.query_texts()
        outs = [forward_queries(m, texts) for m in members]
        stats = disagreement([o[0] for o in outs], [o[1] for o in outs], q, d, ds)
        extra = {f"ens_{k}": v for k, v in stats.items()}
        dirs = {f"ens_{k}": DIRECTIONS[k] for k in stats}
        rec = evaluate_gaussians(
            label, ds, q, d, extra_predictors=extra, directions=dirs, extra={"experiment": "ensemble"}
        )
        report(rec)


# --------------------------------------------------------------------------------------
# var-head: a query-uncertainty head fitted to training queries' difficulty
# --------------------------------------------------------------------------------------


def squad_train_queries() -> list[str]:
    """SQuAD query ids of the train articles (every 10th article held out, as the default's training)."""
    squad = load_beir(DATASETS / SQUAD, "test")
    articles = sorted({d.split("-")[0] for d in squad.doc_ids})
    held = set(articles[::10])
    return [q for q, rel in squad.qrels.items() if not any(d.split("-")[0] in held for d in rel)]


def difficulty(enc: Any, ds: BeirDataset, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Features of the split's queries and their difficulty under the default (higher: harder)."""
    q, d = encode_dataset(enc, ds, show_progress=False)
    run = retrieve_exact(q, d, ds.query_ids, ds.doc_ids, 100)
    if target == "rr":
        y = []
        for qid in ds.query_ids:
            rel = {doc for doc, g in ds.qrels.get(qid, {}).items() if g > 0}
            rank = next((i + 1 for i, doc in enumerate(run[qid]) if doc in rel), None)
            y.append(1.0 - (1.0 / rank if rank else 0.0))
    elif target == "ndcg":
        _, pq = evaluate_run(ds.qrels, run, ["ndcg@10"])
        y = [1.0 - pq[qid]["ndcg@10"] for qid in ds.query_ids]
    else:  # a post-retrieval predictor of the default, negated (needs no judgements)
        from kl_retrievers.qpp import post_retrieval_predictors

        ref = gaussian_query_stats(q, d, ds.query_ids)["corpus_score"]
        post = post_retrieval_predictors(run, reference=ref)[target]
        y = [-post[qid] for qid in ds.query_ids]
    _, _, feats = forward_queries(enc, ds.query_texts())
    return feats, np.asarray(y)


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], seed: int = 0) -> tuple[Any, float, dict]:
    """Ridge on standardised features, alpha by 5-fold CV (Kendall tau on held-out folds)."""
    from scipy import stats
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    folds = rng.permutation(len(y)) % 5
    cv = {}
    for alpha in alphas:
        taus = []
        for f in range(5):
            model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[folds != f], y[folds != f])
            taus.append(stats.kendalltau(model.predict(x[folds == f]), y[folds == f]).statistic)
        cv[alpha] = float(np.mean(taus))
    best = max(cv, key=lambda a: cv[a])
    return make_pipeline(StandardScaler(), Ridge(alpha=best)).fit(x, y), best, cv


def cmd_var_head(args: argparse.Namespace) -> None:
    enc = load_default()
    xs, ys = [], []
    if "squad" in args.train:
        squad = load_beir(DATASETS / SQUAD, "test")
        keep = squad_train_queries()
        rng = np.random.default_rng(args.seed)
        keep = sorted(rng.choice(keep, size=min(args.squad_queries, len(keep)), replace=False).tolist())
        sub = squad.subset(keep, squad.doc_ids)
        x, y = difficulty(enc, sub, args.target)
        xs.append(x)
        ys.append(y)
        logger.info("SQuAD train articles: %d queries, mean difficulty %.3f", len(y), y.mean())
    if "nfcorpus" in args.train:
        x, y = difficulty(enc, load_beir(DATASETS / NFC, "train"), args.target)
        xs.append(x)
        ys.append(y)
        logger.info("NFCorpus train: %d queries, mean difficulty %.3f", len(y), y.mean())
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    model, alpha, cv = fit_ridge(x_train, y_train, args.alphas, args.seed)
    shift = float(model.predict(x_train).mean())
    logger.info("ridge alpha %g (CV tau %s)", alpha, {a: round(t, 4) for a, t in cv.items()})
    label = f"{REFERENCE_MODEL}+varhead-{'-'.join(sorted(args.train))}-{args.target}"
    for ds in targets(args.targets):
        q, d = encode_dataset(enc, ds, show_progress=False)
        _, _, feats = forward_queries(enc, ds.query_texts())
        u = model.predict(feats) - shift
        new_q = Gaussians(q.mean, (q.var.astype(np.float64) * np.exp(u)[:, None]).astype(np.float32))
        rec = evaluate_gaussians(
            label, ds, new_q, d,
            extra={"experiment": "var-head", "train": sorted(args.train), "target": args.target,
                   "ridge_alpha": alpha, "cv_tau": cv, "n_train": len(y_train)},
        )  # fmt: skip
        report(rec)


# --------------------------------------------------------------------------------------
# mc-distil: the MC-dropout top-10 stability distilled into the query variance head
# --------------------------------------------------------------------------------------

CACHE = Path(__file__).resolve().parents[1] / "runs" / "qpp-cache"  # ignored by git (/runs/*)


def mc_training_set(enc: Any, name: str, samples: int, seed: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled query features and MC-dropout instability (1 - top-10 overlap) of one training set, cached.

    The queries are every k-th of the set (at most ``n_queries``): NFCorpus train, or the 3,000-query
    SQuAD train-article sample of ``benchmarks/calibration.py`` (their encodings are cached by its dump).
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"mc-{name}-n{n_queries}-s{samples}-seed{seed}.npz"
    if path.exists():
        data = np.load(path)
        return data["x"], data["y"]
    from calibration import squad_train_split

    ds = squad_train_split(seed) if name == "squad" else load_beir(DATASETS / NFC, "train")
    rows = np.arange(len(ds.query_ids))[:: max(1, -(-len(ds.query_ids) // n_queries))][:n_queries]
    q, d = encode_dataset(enc, ds, show_progress=False)
    ids = [ds.query_ids[i] for i in rows]
    sub = ds.subset(ids, ds.doc_ids)
    keep = np.array([ds.query_ids.index(qid) for qid in sub.query_ids])
    q = Gaussians(np.asarray(q.mean)[keep], np.asarray(q.var)[keep])
    texts = sub.query_texts()
    t0 = time.perf_counter()
    means, vars_ = [], []
    for s in range(samples):
        torch.manual_seed(seed + s)
        m, v, _ = forward_queries(enc, texts, dropout=True)
        means.append(m)
        vars_.append(v)
    stats = disagreement(means, vars_, q, d, sub)
    _, _, feats = forward_queries(enc, texts)
    y = 1.0 - np.array([stats["top10_overlap"][qid] for qid in sub.query_ids])
    logger.info("%s: %d queries, MC (%d samples) in %.0f s, mean instability %.3f",
                name, len(y), samples, time.perf_counter() - t0, y.mean())  # fmt: skip
    np.savez(path, x=feats, y=y)
    return feats, y


def cmd_mc_distil(args: argparse.Namespace) -> None:
    enc = load_default()
    parts = [mc_training_set(enc, n, args.samples, args.seed, args.train_queries) for n in sorted(args.train)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    model, alpha, cv = fit_ridge(x_train, y_train, args.alphas, args.seed)
    shift = float(model.predict(x_train).mean())
    logger.info("ridge alpha %g (CV tau %s)", alpha, {a: round(t, 4) for a, t in cv.items()})
    label = f"{REFERENCE_MODEL}+mcdistil-{'-'.join(sorted(args.train))}"
    for ds in targets(args.targets):
        q, d = encode_dataset(enc, ds, show_progress=False)
        _, _, feats = forward_queries(enc, ds.query_texts())
        u = model.predict(feats) - shift
        new_q = Gaussians(q.mean, (q.var.astype(np.float64) * np.exp(u)[:, None]).astype(np.float32))
        rec = evaluate_gaussians(
            label, ds, new_q, d,
            extra={"experiment": "mc-distil", "train": sorted(args.train), "samples": args.samples,
                   "train_queries": args.train_queries, "ridge_alpha": alpha, "cv_tau": cv, "n_train": len(y_train)},
        )  # fmt: skip
        report(rec)


def report(rec: dict[str, Any]) -> None:
    taus = {n: (None if p["tau"] is None else round(p["tau"], 3)) for n, p in rec["qpp"]["predictors"].items()}
    print(f"{rec['model']} {rec['collection']}/{rec['split']} nDCG@10 {rec['ndcg@10']:.4f} taus {taus}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("mc-dropout", "ensemble", "var-head", "mc-distil"):
        s = sub.add_parser(name)
        s.add_argument("--targets", nargs="+", default=list(DEV_TARGETS), help="collection:split to measure on")
        s.add_argument("--final", action="store_true", help="measure on the four test splits instead")
        s.add_argument("--seed", type=int, default=0)
        if name == "mc-dropout":
            s.add_argument("--samples", type=int, default=20)
        if name == "mc-distil":
            s.add_argument("--samples", type=int, default=10)
            s.add_argument("--train", nargs="+", choices=["squad", "nfcorpus"], default=["squad", "nfcorpus"])
            s.add_argument("--train-queries", type=int, default=600, help="every k-th query of each training set")
            s.add_argument("--alphas", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0])
        if name == "var-head":
            s.add_argument("--train", nargs="+", choices=["squad", "nfcorpus"], default=["squad", "nfcorpus"])
            s.add_argument("--target", choices=["rr", "ndcg", "gap12", "max_score", "wig"], default="rr")
            s.add_argument("--squad-queries", type=int, default=3000, help="seeded subsample of SQuAD train queries")
            s.add_argument("--alphas", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0, 10000.0])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "sub-commands:\n" + "\n".join(f"  {c.format_usage().strip()}" for c in sub.choices.values())
    args = p.parse_args(argv)
    if args.final:
        args.targets = list(TEST_TARGETS)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("logs go to %s", LOG_DIR)
    commands = {"mc-dropout": cmd_mc_dropout, "ensemble": cmd_ensemble, "var-head": cmd_var_head}
    commands["mc-distil"] = cmd_mc_distil
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
