"""Dev-only: does summing the -KL of two bundled models (bge-small-unit-variance and the MiniLM default) beat bge alone?

A weighted sum ``a * -KL_bge + (1 - a) * -KL_minilm`` is itself the -KL of one diagonal Gaussian
(the two models' dimensions side by side, each block's variances divided by its weight), so a
two-backbone Gaussian model could serve it. Before building one, this measures the gain on the
zero-shot dev set only (SciFact TRAIN; no test split is read). Rule, written before the fine grid
was run: a two-backbone model is worth building only if some ``a`` beats ``a = 1`` (bge alone) by
at least 0.01 nDCG@10 on SciFact TRAIN. Appends one line to ``runs/bge/two_backbones.jsonl``.

Example:
    python benchmarks/two_backbones_dev.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import encode_dataset, evaluate_run
from kl_retrievers.gaussian import neg_kl_matrix
from kl_retrievers.pretrained import load_model

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "runs" / "bge" / "two_backbones.jsonl"
MODELS = ("bge-small-unit-variance", "minilm-gauss-soup")
GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.0)
MIN_GAIN = 0.01


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    ds = load_beir(ROOT.parent / "shared" / "datasets" / "scifact", "train", unknown_docs="drop")
    scores = {}
    for name in MODELS:
        q, d = encode_dataset(load_model(name, backend="torch"), ds, show_progress=False)
        scores[name] = np.asarray(neg_kl_matrix(q, d), dtype=np.float64)
    qrels = {q: ds.qrels[q] for q in ds.query_ids if q in ds.qrels}

    def ndcg(s: np.ndarray) -> float:
        run = {}
        for i, qid in enumerate(ds.query_ids):
            top = np.argpartition(-s[i], 100)[:100]
            run[qid] = {ds.doc_ids[j]: float(s[i, j]) for j in top}
        return float(evaluate_run(qrels, run, ["ndcg@10"])[0]["ndcg@10"])

    by_a = {a: ndcg(a * scores[MODELS[0]] + (1 - a) * scores[MODELS[1]]) for a in GRID}
    for a, v in by_a.items():
        print(f"a={a:.2f} SciFact TRAIN nDCG@10 {v:.4f}")
    best = max(by_a, key=lambda a: by_a[a])
    gain = by_a[best] - by_a[1.0]
    verdict = "build" if gain >= MIN_GAIN else "not worth a two-backbone model"
    print(f"best a={best:.2f}: {gain:+.4f} over bge alone (rule: >= {MIN_GAIN}) -> {verdict}")
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a", encoding="utf-8") as fh:
        record = {"experiment": "two-backbones-dev", "models": MODELS, "split": "scifact:train",
                  "ndcg@10_by_a": {str(a): round(v, 6) for a, v in by_a.items()}, "best_a": best,
                  "gain_over_bge": round(gain, 6), "rule_min_gain": MIN_GAIN, "verdict": verdict,
                  "command": shlex.join(["python", "benchmarks/two_backbones_dev.py", *sys.argv[1:]]),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
