"""Dev experiment: Gaussians whose variances are the spread of the encoder's token states (issues 19, 21).

No training. Each text's Gaussian keeps bge-small's pooled, normalised CLS state as its mean
(times a scale ``s``) and takes as its variance the per-dimension spread of its token states
(the last hidden states of its tokens, each normalised to unit length, ``v``), relative to a
constant ``v0`` and tempered by an exponent: ``var = (v / v0) ** gamma``. ``gamma = 0`` gives
unit variances, i.e. exactly ``bge-small-unit-variance`` (bge cosine ranking), so the family
contains today's best model; the question is whether any ``gamma > 0`` ranks better, and
whether the query's total log-variance predicts its nDCG@10 (issue 19).

Two steps (the rule that reads them is in docs/research-notes.md, written before the run):

- ``encode``: the bundled ``bge-small-unit-variance`` int8 graph (ONNX, as shipped) encodes a
  split's corpus and queries; next to each pooled mean it keeps the token spread. Cached as
  ``.npz`` under ``--cache`` (not committed).
- ``grid``: nDCG@10 of every ``(s, gamma, gamma_q)`` on the dev splits (SciFact TRAIN, NFCorpus
  train), exact -KL over the whole corpus, a paired t-test against ``gamma = 0``, and Kendall tau of
  the query uncertainty (mean log-variance) against per-query nDCG@10. Appends to
  ``runs/token_spread/grid.jsonl``.

The rule picked no setting, so no test split was encoded or scored.

Examples:
    python benchmarks/token_spread.py encode --data scifact --split train
    python benchmarks/token_spread.py grid --sets scifact:train nfcorpus-preprocessed:train
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
LOG_DIR = ROOT / "runs" / "token_spread"
DEFAULT_CACHE = Path.home() / ".cache" / "kl_retrievers" / "token_spread"
#: The smallest spread kept (a text with one token left has none).
FLOOR = 1e-6


def _spread_run_batch(encoder: Any, skip: dict[str, int]) -> Any:
    """A replacement for the encoder's ``_run_batch`` returning (pooled mean, token spread)."""
    from kl_retrievers.onnx_heads import numpy_heads

    checked = encoder._checked
    backbone = encoder._backbone

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (hidden,) = encoder._session.run([backbone.output], feeds)
        mask = feeds["attention_mask"].astype(bool)
        mean, _ = numpy_heads(
            hidden,
            feeds["attention_mask"],
            encoder._heads,
            pooling=checked.pooling,
            normalize_pooled=checked.normalize_pooled,
            beta=float(checked.beta),
            var_floor=float(checked.var_floor),
        )
        h = hidden.astype(np.float64)
        h /= np.linalg.norm(h, axis=-1, keepdims=True) + 1e-12
        keep = mask.copy()
        keep[:, : 1 + skip["n"]] = False  # CLS and, for queries, the instruction prefix
        lengths = mask.sum(axis=1)
        keep[np.arange(len(lengths)), lengths - 1] = False  # SEP
        # A text whose every token was skipped keeps its SEP (the spread is then the floor).
        empty = keep.sum(axis=1) == 0
        keep[empty, lengths[empty] - 1] = True
        w = keep[..., None].astype(np.float64)
        n = w.sum(axis=1)
        mu = (h * w).sum(axis=1) / n
        v = ((h - mu[:, None, :]) ** 2 * w).sum(axis=1) / n
        return mean, np.maximum(v, FLOOR).astype(np.float32)

    return run


def encode(args: argparse.Namespace) -> None:
    from kl_retrievers.datasets import load_beir
    from kl_retrievers.pretrained import load_model

    enc = load_model("bge-small-unit-variance", backend="onnx")
    skip = {"n": 0}
    enc._run_batch = _spread_run_batch(enc, skip)  # type: ignore[method-assign]
    prefix_tokens = len(enc._token_ids(["Represent this sentence for searching relevant passages: "], 512)[0][0]) - 2
    ds = load_beir(DATA / args.data, args.split)
    out = args.cache / f"{args.data}.{args.split}.npz"
    args.cache.mkdir(parents=True, exist_ok=True)
    corpus_file = args.cache / f"{args.data}.corpus.npz"
    t0 = time.time()
    if not corpus_file.exists():
        docs = enc.encode_documents(ds.document_texts(), batch_size=16, show_progress_bar=True)
        np.savez(corpus_file, ids=np.array(ds.doc_ids), mean=docs.mean, spread=docs.var)
    skip["n"] = prefix_tokens
    qids = list(ds.queries)
    qs = enc.encode_queries([ds.queries[q] for q in qids], batch_size=64, show_progress_bar=True)
    np.savez(out, ids=np.array(qids), mean=qs.mean, spread=qs.var)
    print(f"encoded {args.data}:{args.split} in {time.time() - t0:.0f} s -> {out}")


def _scores(qm: np.ndarray, qv: np.ndarray, dm: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """-KL(Q||D) up to terms of the query alone (rank-equivalent per query), float64."""
    inv = 1.0 / dv
    a = (qv + qm**2) @ inv.T
    b = qm @ (dm * inv).T
    c = (dm**2 * inv).sum(axis=1) + np.log(dv).sum(axis=1)
    return -0.5 * (a - 2.0 * b + c[None, :])


def _ndcg(scores: np.ndarray, qids: list[str], dids: np.ndarray, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    from kl_retrievers.evaluation import evaluate_run

    top = np.argpartition(-scores, 100, axis=1)[:, :100]
    run = {q: {str(dids[j]): float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}
    _, per_query = evaluate_run(qrels, run, ["ndcg@10"])
    return {q: per_query[q]["ndcg@10"] for q in qids if q in per_query}


def _load(cache: Path, name: str, split: str) -> tuple[Any, ...]:
    from kl_retrievers.datasets import load_beir

    c = np.load(cache / f"{name}.corpus.npz")
    q = np.load(cache / f"{name}.{split}.npz")
    ds = load_beir(DATA / name, split)
    return (
        c["ids"],
        c["mean"].astype(np.float64),
        c["spread"].astype(np.float64),
        list(q["ids"]),
        q["mean"].astype(np.float64),
        q["spread"].astype(np.float64),
        ds.qrels,
    )


def _reference(cache: Path) -> float:
    """v0: the median geometric-mean spread of SciFact's documents (a constant for every collection)."""
    c = np.load(cache / "scifact.corpus.npz")
    return float(np.median(np.exp(np.log(c["spread"].astype(np.float64)).mean(axis=1))))


def evaluate_setting(
    data: tuple[Any, ...], v0: float, s: float, gamma: float, gamma_q: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-query nDCG@10 and per-query uncertainty (mean log-variance of the query) of one setting."""
    dids, dm, dsp, qids, qm, qsp, qrels = data
    dv = (dsp / v0) ** gamma
    qv = (qsp / v0) ** gamma_q
    per = _ndcg(_scores(s * qm, qv, s * dm, dv), qids, dids, qrels)
    unc = dict(zip(qids, np.log(qv).mean(axis=1).tolist(), strict=True))
    return per, unc


def grid(args: argparse.Namespace) -> None:
    from scipy.stats import kendalltau

    from kl_retrievers.evaluation import paired_test

    v0 = _reference(args.cache)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for spec in args.sets:
        name, split = spec.split(":")
        data = _load(args.cache, name, split)
        base, _ = evaluate_setting(data, v0, 1.0, 0.0, 0.0)
        base_mean = float(np.mean(list(base.values())))
        # Query-side spread alone, as a predictor (no effect on ranking when gamma = 0).
        qids = data[3]
        unc_raw = np.log(data[5]).mean(axis=1)
        nd = np.array([base.get(q, 0.0) for q in qids])
        tau_raw = float(kendalltau(-unc_raw, nd).statistic)
        rows = []
        for s in args.scales:
            for gamma in args.gammas:
                for gq in sorted({0.0, gamma}):
                    if gamma == 0.0 and (s != 1.0 or gq != 0.0):
                        continue
                    per, unc = evaluate_setting(data, v0, s, gamma, gq)
                    t = paired_test(
                        {q: {"ndcg@10": v} for q, v in per.items()}, {q: {"ndcg@10": v} for q, v in base.items()}
                    )
                    u = np.array([unc[q] for q in qids])
                    nd_s = np.array([per.get(q, 0.0) for q in qids])
                    tau = float(kendalltau(-u, nd_s).statistic) if np.ptp(u) > 0 else None
                    row = {
                        "set": spec,
                        "s": s,
                        "gamma": gamma,
                        "gamma_q": gq,
                        "ndcg@10": float(np.mean(list(per.values()))),
                        "minus_unit": t.mean_diff,
                        "p": t.p_value,
                        "tau_neg_uncertainty": tau,
                    }
                    rows.append(row)
                    print(json.dumps(row))
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python benchmarks/token_spread.py " + shlex.join(sys.argv[1:]),
            "model": "bge-small-unit-variance (int8 ONNX) token spread",
            "v0": v0,
            "set": spec,
            "unit_variance_ndcg@10": base_mean,
            "tau_neg_query_spread_vs_unit_ndcg": tau_raw,
            "rows": rows,
        }
        with (LOG_DIR / "grid.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"{spec}: unit variance {base_mean:.4f}; tau(-query spread, nDCG) {tau_raw:+.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=("encode", "grid"))
    p.add_argument("--data", help="encode: a collection under ../shared/datasets (e.g. scifact)")
    p.add_argument("--split", help="encode: its qrels split (e.g. train)")
    p.add_argument(
        "--sets", nargs="+", default=["scifact:train", "nfcorpus-preprocessed:train"], help="grid: NAME:SPLIT"
    )
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0, 16.0], help="grid: mean scales s")
    p.add_argument(
        "--gammas", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.25, 0.5, 1.0], help="grid: exponents gamma"
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where encode writes and grid reads")
    args = p.parse_args()
    if args.step == "encode" and not (args.data and args.split):
        p.error("encode needs --data and --split")
    {"encode": encode, "grid": grid}[args.step](args)


if __name__ == "__main__":
    main()
