"""Encoding throughput: GaussianEncoder against sentence-transformers, and the ONNX Runtime backends.

Same 1,000 SciFact documents (title + text), same max length (256), same batch size, one process,
runs interleaved so machine noise hits every side alike; the best round of each counts.

    python benchmarks/encode.py --quick      # 1,000 docs, batch 32; last line: throughput_ratio=... (see below)
    python benchmarks/encode.py              # also batch sizes 8/16/32/64 -> docs/encode.md

The full run rewrites only the generated part of ``--out`` (from its start to the line with the
import time); what follows that line (notes written by hand, the ``--models`` table) is kept.
``--quick`` writes a page only when ``--out`` is given.

The Gaussian side is the package default model (all-MiniLM-L6-v2 + heads) on torch float32. A
second row measures a fresh encoder with the paper's [VAR] token (one extra token per text). Two
more rows run the default model on ONNX Runtime: int8 (the graph shipped in the package,
``load_model(None, backend="onnx")``) and float32 (exported on first use into the ONNX cache).

Quality of ONNX int8 against torch float32, on SciFact test (300 queries, documents at the
model's max length, 256): nDCG@10 of each, and the Spearman rank correlation of the query
uncertainty (mean log-variance). With --quick the corpus is a documented subset, the first
``--docs`` documents plus every document judged for a test query (about 1,300); without it, the
whole corpus (5,183 documents), and NFCorpus test (323 queries, 3,395 documents) as well.
Encodings go through the evaluation cache, so a rerun reuses them.

    python benchmarks/encode.py --quality-only   # quality on the whole SciFact and NFCorpus, no timing
    python benchmarks/encode.py --ratio-only --docs 500 --rounds 3   # ONNX int8 / torch docs/s only
    python benchmarks/encode.py --models all --backends onnx torch --docs 200 --rounds 2   # per bundled model

``--models`` (bundled names, or ``all``) times each model on each of ``--backends`` side by side:
the same documents, interleaved rounds, best round counts, a markdown table (``model | backend |
runs without torch | docs/s``). ONNX for a MiniLM model without a shipped graph means its int8
export, made on first use (torch needed) and cached; that first export is not timed.

The last line is ``throughput_ratio=X onnx_int8_ratio=Y onnx_ndcg_delta=Z import_s=W``: the torch
default model's documents per second over sentence-transformers', ONNX int8's over torch float32's
(same model, texts and batch size), SciFact test nDCG@10 of ONNX int8 minus torch float32's, and
the best of 3 wall times of ``python -c "import kl_retrievers"``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
NFCORPUS = REPO.parent / "shared" / "datasets" / "nfcorpus-preprocessed" / "corpus.jsonl"
INT8_SIDE = "ONNX int8 (default model)"
FLOAT32_SIDE = "ONNX float32 (default model)"
TORCH_SIDE = "GaussianEncoder (default model)"
#: docs/encode.md from this line on (the per-model table of ``--models``) is kept when the full run rewrites the page.
KEEP_MARKER = "<!-- kept by benchmarks/encode.py: per-model table (--models) -->"
#: How the last line of the generated part starts; what follows it on the page is kept.
GENERATED_LAST = '`python -c "import kl_retrievers"`:'


def merge_page(previous: str, generated: str) -> str:
    """``generated`` followed by what ``previous`` holds after its generated part.

    The generated part ends with the line starting with :data:`GENERATED_LAST`; a page without that line
    keeps what follows :data:`KEEP_MARKER` (marker included), and one with neither keeps nothing.
    """
    lines = previous.splitlines(keepends=True)
    end = next((i for i, line in enumerate(lines) if line.startswith(GENERATED_LAST)), None)
    if end is not None:
        kept = "".join(lines[end + 1 :]).lstrip("\n")
    elif KEEP_MARKER in previous:
        kept = previous[previous.index(KEEP_MARKER) :]
    else:
        kept = ""
    return generated + ("\n" + kept if kept else "")


def load_docs(n: int) -> list[str]:
    """The first ``n`` SciFact documents as the encoders read them (title + text)."""
    from kl_retrievers.datasets import load_beir

    return load_beir(SCIFACT.parent, "test").document_texts()[:n]


def timed(fn, docs: list[str]) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(docs)
    return len(docs) / (time.perf_counter() - start)


def import_seconds(repeats: int = 3) -> float:
    """Best wall time of ``python -c "import kl_retrievers"`` in a fresh interpreter."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import kl_retrievers"], check=True, cwd=REPO)
        best = min(best, time.perf_counter() - start)
    return best


def quality(
    torch_enc: Any, int8_enc: Any, *, quick: bool, first_docs: int, batch_size: int, corpus: Path = SCIFACT
) -> dict[str, Any]:
    """Test nDCG@10 of both encoders and the Spearman correlation of their query uncertainty.

    ``corpus``: a BEIR ``corpus.jsonl`` (its folder holds the queries and ``qrels/test.tsv``).
    ``quick``: the corpus is the first ``first_docs`` documents plus every document judged for a test query.
    """
    from scipy.stats import spearmanr

    from kl_retrievers.datasets import load_beir
    from kl_retrievers.evaluation import encode_dataset, evaluate_run, retrieve_exact

    ds = load_beir(corpus.parent, "test")
    if quick:
        keep = set(ds.doc_ids[:first_docs]) | {d for rel in ds.qrels.values() for d in rel}
        ds = ds.subset(ds.query_ids, [d for d in ds.doc_ids if d in keep])
    out: dict[str, Any] = {"dataset": corpus.parent.name, "docs": len(ds.doc_ids), "queries": len(ds.query_ids)}
    uncertainty = {}
    for side, enc in (("torch", torch_enc), ("int8", int8_enc)):
        start = time.perf_counter()
        q, d = encode_dataset(enc, ds, batch_size=batch_size, show_progress=False)
        run = retrieve_exact(q, d, ds.query_ids, ds.doc_ids, 100, show_progress=False)
        out[f"ndcg_{side}"] = evaluate_run(ds.qrels, run)[0]["ndcg@10"]
        uncertainty[side] = q.uncertainty()
        print(
            f"{out['dataset']} test ({out['docs']} docs): {side}: nDCG@10 {out[f'ndcg_{side}']:.4f} "
            f"({time.perf_counter() - start:.0f} s; encodings are cached for reruns)",
            flush=True,
        )
    out["ndcg_delta"] = out["ndcg_int8"] - out["ndcg_torch"]
    out["uncertainty_spearman"] = float(spearmanr(uncertainty["torch"], uncertainty["int8"])[0])
    return out


def quality_line(q: dict[str, Any], corpus: str) -> str:
    return (
        f"Quality on {q['dataset']} test ({q['queries']} queries, {q['docs']} documents: {corpus}): nDCG@10 torch "
        f"float32 {q['ndcg_torch']:.4f}, ONNX int8 {q['ndcg_int8']:.4f} (change {q['ndcg_delta']:+.4f}); Spearman "
        f"correlation of query uncertainty {q['uncertainty_spearman']:.4f}."
    )


def quality_only(batch_size: int) -> None:
    """Whole SciFact and NFCorpus test: ONNX int8 (shipped graph) against torch float32; no timing."""
    from kl_retrievers import load_model

    torch_enc = load_model(None, backend="torch", device="cpu")
    int8 = load_model(None, backend="onnx")
    results = [
        quality(torch_enc, int8, quick=False, first_docs=0, batch_size=batch_size, corpus=c)
        for c in (SCIFACT, NFCORPUS)
    ]
    for q in results:
        print(quality_line(q, "the whole corpus"))
    print(
        " ".join(
            f"{q['dataset']}_ndcg_delta={q['ndcg_delta']:+.4f} {q['dataset']}_spearman={q['uncertainty_spearman']:.4f}"
            for q in results
        )
    )


def ratio_only(n_docs: int, rounds: int, max_length: int, batch_size: int = 32) -> None:
    """Documents per second of ONNX int8 (shipped graph) over torch float32 only, interleaved rounds."""
    from kl_retrievers import load_model

    docs = load_docs(n_docs)
    sides = {
        TORCH_SIDE: load_model(None, backend="torch", device="cpu"),
        INT8_SIDE: load_model(None, backend="onnx"),
    }
    for enc in sides.values():  # warm-up
        enc.encode_documents(docs[:64], batch_size=batch_size, max_length=max_length)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, enc in sides.items():
            rate = timed(lambda d, enc=enc: enc.encode_documents(d, batch_size=batch_size, max_length=max_length), docs)
            rates[name].append(rate)
            print(f"round {r + 1}: {name}: {rate:.2f} docs/s (load {os.getloadavg()[0]:.1f})", flush=True)
    per_round = [i / t for i, t in zip(rates[INT8_SIDE], rates[TORCH_SIDE], strict=True)]
    best = max(rates[INT8_SIDE]) / max(rates[TORCH_SIDE])
    print(
        f"{len(docs)} SciFact documents, max length {max_length}, batch {batch_size}, {rounds} interleaved rounds; "
        f"int8/torch per round: {' '.join(f'{x:.2f}' for x in per_round)}"
    )
    print(
        f"onnx_int8_ratio={best:.3f} (best over best) median_round_ratio={sorted(per_round)[len(per_round) // 2]:.3f}"
    )


def models_speed(
    models: list[str], backends: list[Backend], n_docs: int, rounds: int, max_length: int, batch_size: int = 32
) -> None:
    """Documents per second of bundled models on each backend, side by side (interleaved rounds, best counts)."""
    from kl_retrievers import load_model
    from kl_retrievers.onnx_heads import shared_backbone_for
    from kl_retrievers.pretrained import bundled_model_path, bundled_models, bundled_onnx_path

    names = bundled_models() if models == ["all"] else models
    docs = load_docs(n_docs)
    sides: dict[tuple[str, str], Any] = {}
    for name in names:
        for backend in backends:
            sides[(name, backend)] = load_model(name, backend=backend, device="cpu" if backend == "torch" else None)
    for enc in sides.values():  # warm-up
        enc.encode_documents(docs[:32], batch_size=batch_size, max_length=max_length)
    best = dict.fromkeys(sides, 0.0)
    for r in range(rounds):
        for key, enc in sides.items():
            rate = timed(lambda d, enc=enc: enc.encode_documents(d, batch_size=batch_size, max_length=max_length), docs)
            best[key] = max(best[key], rate)
            print(f"round {r + 1}: {key[0]} ({key[1]}): {rate:.2f} docs/s (load {os.getloadavg()[0]:.1f})", flush=True)

    def torch_free(name: str, backend: str) -> str:
        if backend == "torch":
            return "no"
        if bundled_onnx_path(name) is not None:
            return "yes (shipped graph)"
        backbone = shared_backbone_for(bundled_model_path(name))
        return f"yes ({backbone.requirement})" if backbone is not None else "no (exported on first use)"

    load = os.getloadavg()
    print(
        f"\n{len(docs)} SciFact documents, max length {max_length} (for every model), batch "
        f"{batch_size}, best of {rounds} interleaved rounds; {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n"
    )
    print("| model | backend | runs without torch | docs/s |\n|---|---|---|---|")
    for (name, backend), rate in best.items():
        print(f"| `{name}` | {backend} | {torch_free(name, backend)} | {rate:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch size 32 only, 2 rounds, a SciFact subset")
    parser.add_argument("--quality-only", action="store_true", help="whole SciFact and NFCorpus quality, no timing")
    parser.add_argument("--ratio-only", action="store_true", help="ONNX int8 over torch float32 docs/s only")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the page to write (default: docs/encode.md for the full run; --quick writes one only when given); "
        "its text after the generated part is kept",
    )
    parser.add_argument("--models", nargs="+", default=None, help="bundled models to time side by side, or 'all'")
    parser.add_argument("--backends", nargs="+", default=["onnx"], choices=["onnx", "torch"])
    parser.add_argument("--batch-size", type=int, default=32, help="with --models")
    args = parser.parse_args(argv)
    if args.out is not None and (args.models or args.quality_only or args.ratio_only):
        parser.error("--out writes the page of the timing run; --models, --quality-only and --ratio-only only print")
    if args.out is None and not args.quick:
        args.out = REPO / "docs" / "encode.md"
    if args.models:
        models_speed(args.models, args.backends, args.docs, args.rounds or 2, args.max_length, args.batch_size)
        return
    if args.quality_only:
        quality_only(batch_size=32)
        return
    if args.ratio_only:
        ratio_only(args.docs, args.rounds or 3, args.max_length)
        return

    from sentence_transformers import SentenceTransformer

    from kl_retrievers import GaussianEncoder, load_model
    from kl_retrievers.hub import resolve_model_path

    torch.set_num_threads(torch.get_num_threads())
    docs = load_docs(args.docs)
    gauss = load_model(None, backend="torch", device="cpu")
    var_enc = GaussianEncoder.from_backbone("sentence-transformers/all-MiniLM-L6-v2", pooling="mean", dim=384)
    st = SentenceTransformer(str(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")), device="cpu")
    st.max_seq_length = args.max_length
    onnx_int8 = load_model(None, backend="onnx", quantize="int8")  # the graph shipped in the package
    onnx_float32 = load_model(None, backend="onnx", quantize=None)
    rounds = args.rounds or (2 if args.quick else 3)
    batch_sizes = [32] if args.quick else [8, 16, 32, 64]
    rows = []
    for bs in batch_sizes:
        sides = {
            "sentence-transformers encode": lambda d, bs=bs: st.encode(d, batch_size=bs, convert_to_numpy=True),
            TORCH_SIDE: lambda d, bs=bs: gauss.encode_documents(
                d, batch_size=bs, max_length=args.max_length, show_progress_bar=False
            ),
            "GaussianEncoder ([VAR] token)": lambda d, bs=bs: var_enc.encode_documents(
                d, batch_size=bs, max_length=args.max_length, show_progress_bar=False
            ),
            INT8_SIDE: lambda d, bs=bs: onnx_int8.encode_documents(
                d, batch_size=bs, max_length=args.max_length, show_progress_bar=False
            ),
            FLOAT32_SIDE: lambda d, bs=bs: onnx_float32.encode_documents(
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
    load = os.getloadavg()
    lines = [
        "# Encoding throughput",
        "",
        f"Data: the first {len(docs)} SciFact documents (title + text), max length {args.max_length}. "
        f"Backbone: all-MiniLM-L6-v2. Best of {rounds} interleaved rounds. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        f"Command: `python benchmarks/encode.py{' --quick' if args.quick else ''}"
        f"{f' --rounds {args.rounds}' if args.rounds else ''}{f' --docs {args.docs}' if args.docs != 1000 else ''}"
        f"{f' --max-length {args.max_length}' if args.max_length != 256 else ''}`.",
        "",
        "| batch size | encoder | docs/s | ratio to sentence-transformers |",
        "|---|---|---|---|",
    ]
    lines += [f"| {bs} | {name} | {rate:.1f} | {ratio:.3f} |" for bs, name, rate, ratio in rows]
    rate_of = {(bs, n): r for bs, n, r, _ in rows}
    onnx_ratio = rate_of[(32, INT8_SIDE)] / rate_of[(32, TORCH_SIDE)]
    corpus = f"a subset: the first {len(docs)} documents + every judged one" if args.quick else "the whole corpus"
    results = [quality(gauss, onnx_int8, quick=args.quick, first_docs=len(docs), batch_size=32)]
    if not args.quick:
        results.append(quality(gauss, onnx_int8, quick=False, first_docs=0, batch_size=32, corpus=NFCORPUS))
    q = results[0]
    import_s = import_seconds()
    lines += ["", f"ONNX int8 over torch float32 (batch 32): {onnx_ratio:.2f}x documents per second.", ""]
    for res in results:
        lines += [quality_line(res, corpus), ""]
    lines += [f'`python -c "import kl_retrievers"`: {import_s:.2f} s (best of 3).']
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        previous = args.out.read_text() if args.out.is_file() else ""
        args.out.write_text(merge_page(previous, text))
        print(f"wrote {args.out} (the text after its generated part is kept: review it against this run)")
    ratio = next(r for bs, n, _, r in rows if bs == 32 and n == TORCH_SIDE)
    print(
        f"uncertainty_spearman={q['uncertainty_spearman']:.4f} ndcg_torch={q['ndcg_torch']:.4f} "
        f"ndcg_onnx_int8={q['ndcg_int8']:.4f} quality_docs={q['docs']}"
    )
    print(
        f"throughput_ratio={ratio:.3f} onnx_int8_ratio={onnx_ratio:.3f} onnx_ndcg_delta={q['ndcg_delta']:+.4f} "
        f"import_s={import_s:.2f}"
    )


if __name__ == "__main__":
    main()
