"""Encoding throughput: GaussianEncoder against sentence-transformers on the same backbone.

Same 1,000 SciFact documents (title + text), same max length, same batch size, one process,
runs interleaved so machine noise hits both sides alike; the best round of each counts.

    python benchmarks/encode.py --quick      # 1,000 docs, batch 32; last line: throughput_ratio=...
    python benchmarks/encode.py              # also batch sizes 8/16/32/64 -> docs/encode.md

The Gaussian side is the package default model (all-MiniLM-L6-v2 + heads). A second row
measures a fresh encoder with the paper's [VAR] token (one extra token per text).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"


def load_docs(n: int) -> list[str]:
    docs = []
    with SCIFACT.open() as fh:
        for line in fh:
            row = json.loads(line)
            docs.append(f"{row['title']} {row['text']}".strip())
            if len(docs) == n:
                break
    return docs


def timed(fn, docs: list[str]) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(docs)
    return len(docs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch size 32 only, 2 rounds")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "encode.md")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from kl_retrievers import GaussianEncoder, load_default_model
    from kl_retrievers.hub import resolve_model_path

    torch.set_num_threads(torch.get_num_threads())
    docs = load_docs(args.docs)
    gauss = load_default_model(device="cpu")
    var_enc = GaussianEncoder.from_backbone("sentence-transformers/all-MiniLM-L6-v2", pooling="mean", dim=384)
    st = SentenceTransformer(str(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")), device="cpu")
    st.max_seq_length = args.max_length
    rounds = args.rounds or (2 if args.quick else 3)
    batch_sizes = [32] if args.quick else [8, 16, 32, 64]
    rows = []
    for bs in batch_sizes:
        sides = {
            "sentence-transformers encode": lambda d, bs=bs: st.encode(d, batch_size=bs, convert_to_numpy=True),
            "GaussianEncoder (default model)": lambda d, bs=bs: gauss.encode_documents(
                d, batch_size=bs, max_length=args.max_length, show_progress_bar=False
            ),
            "GaussianEncoder ([VAR] token)": lambda d, bs=bs: var_enc.encode_documents(
                d, batch_size=bs, max_length=args.max_length, show_progress_bar=False
            ),
        }
        for fn in sides.values():  # warm-up
            fn(docs[:64])
        best = {name: 0.0 for name in sides}
        for r in range(rounds):
            for name, fn in sides.items():
                rate = timed(fn, docs)
                best[name] = max(best[name], rate)
                print(f"batch {bs} round {r + 1}: {name}: {rate:.1f} docs/s", flush=True)
        base = best["sentence-transformers encode"]
        for name, rate in best.items():
            rows.append((bs, name, rate, rate / base))
    lines = [
        "# Encoding throughput",
        "",
        f"Data: the first {len(docs)} SciFact documents (title + text), max length {args.max_length}. "
        f"Backbone: all-MiniLM-L6-v2. Best of {rounds} interleaved rounds. "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        f"Command: `python benchmarks/encode.py{' --quick' if args.quick else ''}`.",
        "",
        "| batch size | encoder | docs/s | ratio to sentence-transformers |",
        "|---|---|---|---|",
    ]
    lines += [f"| {bs} | {name} | {rate:.1f} | {ratio:.3f} |" for bs, name, rate, ratio in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    ratio = next(r for bs, n, _, r in rows if bs == 32 and n == "GaussianEncoder (default model)")
    print(f"throughput_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
