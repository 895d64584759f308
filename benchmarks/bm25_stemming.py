"""What English stemming does to BM25 (the ``stemmer`` option of :class:`kl_retrievers.hybrid.KLHybridStore`).

BM25 (bm25s, Lucene variant, k1 = 0.9, b = 0.4, English stop words, the library's token pattern:
exactly :func:`kl_retrievers.baselines.bm25_run`, the ``--baseline bm25`` of ``kl-retrievers
evaluate``) with and without PyStemmer's ``english`` stemmer, on training splits only (SciFact
TRAIN, NFCorpus train and the SQuAD training sample of ``benchmarks/hybrid.py``): nDCG@10 of each
and a paired t-test (scipy) of stemmed against unstemmed. Informative only: the option's default
stays ``None`` (no stemming), which every published hybrid figure uses, and nothing is chosen here.

Every run appends a JSON line to ``runs/eval/bm25_stemming.jsonl`` (the command included).

Examples:
    python benchmarks/bm25_stemming.py
    python benchmarks/bm25_stemming.py --sets scifact:train
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from kl_retrievers.baselines import bm25_run
from kl_retrievers.evaluation import evaluate_run, paired_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hybrid import ROOT, git_commit, load_split  # benchmarks/hybrid.py: the same splits

logger = logging.getLogger(__name__)

SETS = ("scifact:train", "nfcorpus-preprocessed:train", "squad:train")
LOG = ROOT / "runs" / "eval" / "bm25_stemming.jsonl"


def measure(spec: str, show_progress: bool = False) -> dict[str, object]:
    """nDCG@10 of BM25 on ``spec`` without and with the English stemmer, and the paired t-test."""
    import Stemmer

    data = load_split(spec)
    plain = evaluate_run(data.qrels, bm25_run(data, show_progress=show_progress))
    stem = Stemmer.Stemmer("english").stemWords
    stemmed = evaluate_run(data.qrels, bm25_run(data, stemmer=stem, show_progress=show_progress))
    test = paired_test(stemmed[1], plain[1], "ndcg@10")
    return {
        "set": spec,
        "queries": len(data.qrels),
        "ndcg@10": {"none": plain[0]["ndcg@10"], "english": stemmed[0]["ndcg@10"]},
        "diff": test.mean_diff,
        "p": test.p_value,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="collection:split (training splits only)")
    parser.add_argument("--log", default=str(LOG), help="JSON-lines log to append to")
    parser.add_argument("--no-log", action="store_true", help="print only")
    args = parser.parse_args(argv)
    for spec in args.sets:
        if not spec.endswith(":train"):
            parser.error(f"only training splits are measured here; got {spec!r}")
    rows = [measure(s) for s in args.sets]
    print("| set | queries | BM25 | BM25, English stemmer | difference (paired t) |")
    print("|---|---|---|---|---|")
    for r in rows:
        n = r["ndcg@10"]
        assert isinstance(n, dict)
        diff = f"{r['diff']:+.4f} (p = {r['p']:.2g})"
        print(f"| {r['set']} | {r['queries']} | {n['none']:.4f} | {n['english']:.4f} | {diff} |")
    if not args.no_log:
        record = {
            "benchmark": "bm25-stemming",
            "command": "python benchmarks/bm25_stemming.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "commit": git_commit(),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": rows,
        }
        path = Path(args.log)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
