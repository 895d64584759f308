"""Dev only: do cheap scalar features of the query text predict the default's per-query nDCG@10? (issue 19).

A ceiling check before training another variance head: if no free scalar of the query (its pooled
backbone norm, its length in tokens or words, its share of word-piece continuations) reaches a
Kendall tau near the issue's 0.30 on the training sets, a head that maps such signals to a
log-variance cannot either. Training sets only (SciFact TRAIN, NFCorpus train, the SQuAD training
sample of ``benchmarks/calibration.py``); the per-query nDCG@10 comes from its committed dumps in
``runs/qpp/calib/``. Appends one line to ``runs/qpp/scalar_dev.jsonl``.

Example:
    python benchmarks/qpp_scalar_dev.py
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import CALIB_DIR, load_split

from kl_retrievers.pretrained import load_model

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "runs" / "qpp" / "scalar_dev.jsonl"
SETS = ("scifact:train", "nfcorpus-preprocessed:train", "squad:train")
NAMES = ("pooled_norm", "n_tokens", "subword_share", "n_words")


def features(encoder: object, texts: list[str]) -> np.ndarray:
    """One row per text: the pooled backbone state's norm, token count, word-piece share and word count."""
    import torch

    tok = encoder.tokenizer  # type: ignore[attr-defined]
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tok(texts[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            pooled, _ = encoder.backbone_features(  # type: ignore[attr-defined]
                batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
            )
            for j, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"].bool(), strict=True)):
                toks = tok.convert_ids_to_tokens(ids[mask].tolist())[1:-1]
                n = max(len(toks), 1)
                share = sum(t.startswith("##") for t in toks) / n
                rows.append([float(pooled[j].norm()), n, share, len(texts[i + j].split())])
    return np.array(rows, dtype=np.float64)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    import torch
    from scipy.stats import kendalltau

    torch.set_num_threads(2)
    encoder: Any = load_model("minilm-gauss-soup", backend="torch")
    encoder.eval()
    taus: dict[str, dict[str, float]] = {}
    for spec in SETS:
        name, _, split = spec.partition(":")
        per_query = json.loads((CALIB_DIR / f"{name}.{split}.json").read_text(encoding="utf-8"))["per_query"]
        ds = load_split(spec)
        qids = [q for q in ds.query_ids if q in per_query]
        x = features(encoder, ds.query_texts(qids))
        y = np.array([per_query[q]["ndcg@10"] for q in qids])
        taus[spec] = {n: round(float(kendalltau(x[:, k], y)[0]), 4) for k, n in enumerate(NAMES)}
        print(f"{spec} ({len(qids)} queries): Kendall tau {taus[spec]}", flush=True)
    best = {n: round(float(np.mean([abs(taus[s][n]) for s in SETS])), 4) for n in NAMES}
    print(f"mean |tau| over the training sets: {best}")
    LOG.parent.mkdir(parents=True, exist_ok=True)
    record = {"experiment": "scalar-query-features-dev", "model": "minilm-gauss-soup", "taus": taus,
              "mean_abs_tau": best, "command": shlex.join(["python", "benchmarks/qpp_scalar_dev.py", *sys.argv[1:]]),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    with LOG.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
