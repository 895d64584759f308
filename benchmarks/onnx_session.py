"""ONNX Runtime session options: single-query latency and batch throughput, spinning on and off.

The bundled default model's int8 graph (``kl_retrievers/pretrained/minilm-gauss-soup/onnx-int8``, what
``load_model(None, backend="onnx")`` loads) is opened once per setting: ``allow_spinning`` on or off,
``num_threads`` 1 and 2 (``--threads``). Two measurements, rounds interleaved across the settings so that
machine noise hits every one alike:

- latency: one short query (``encode_queries``), ``--reps`` calls per round; the median of all calls, in ms;
- throughput: ``--docs`` synthetic SciFact-like texts (random words from a biomedical vocabulary, 120 to 260
  words each, so most fill the model's 256-token budget) encoded with ``batch_size=32``; the best round,
  in texts per second.

``--busy N`` runs N CPU-bound processes (pure Python loops) alongside, to measure a shared machine.

``--quick`` takes about a minute on an idle 2-core machine and several minutes under load (two runs beside
other work took 4 min 49 s and 6 min 27 s, the second at a load average of 11.6); the full run does about
three times its work.

    python benchmarks/onnx_session.py --quick          # 3 rounds, 300 queries, 128 texts (see above)
    python benchmarks/onnx_session.py                  # 5 rounds, 500 queries, 256 texts
    python benchmarks/onnx_session.py --busy 1         # the same with one busy process beside it

Prints a markdown table (``threads | spinning | query ms (median) | p90 | texts/s``) and, last,
``spin_latency_gain_t<N>=X spin_throughput_gain_t<N>=Y`` per thread count: spinning on against off, as a
fraction (0.25 = 25% faster; latency gain = 1 - on/off, throughput gain = on/off - 1).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kl_retrievers.cli_common import non_negative_int, positive_int
from kl_retrievers.onnx import OnnxGaussianEncoder

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

MODEL = Path(__file__).resolve().parent.parent / "kl_retrievers" / "pretrained" / "minilm-gauss-soup" / "onnx-int8"
QUERY = "does vitamin d reduce the risk of fractures"
WORDS = (
    "cell protein gene expression tumor patients clinical trial mice receptor pathway inflammation "
    "dose risk cohort association mutation signaling regulation activation therapy treatment outcome "
    "mortality infection virus antibody immune response cancer growth factor kinase binding mechanism "
    "increased decreased significantly observed compared control group study analysis results suggest "
    "vitamin insulin glucose metabolism obesity diabetes cardiovascular blood pressure neurons brain "
    "memory stem differentiation chromatin transcription rna dna replication repair apoptosis tissue"
).split()


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` SciFact-like texts: a title-like start and 120 to 260 random words from :data:`WORDS`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(120, 260))]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + ".")
    return out


def _burn(stop: Event) -> None:
    """Keep one core busy until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x ^= i


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds, 300 queries, 128 texts (about a minute on an idle 2-core machine, several minutes under load)",
    )
    parser.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds (default 5; --quick: 3)")
    parser.add_argument("--reps", type=positive_int, default=None, help="queries per round (default 500; --quick: 300)")
    parser.add_argument(
        "--docs", type=positive_int, default=None, help="texts per throughput round (default 256; --quick: 128)"
    )
    parser.add_argument(
        "--threads", type=positive_int, nargs="+", default=[1, 2], help="num_threads values (default 1 2)"
    )
    parser.add_argument(
        "--busy", type=non_negative_int, default=0, help="CPU-bound processes to run alongside (default 0)"
    )
    parser.add_argument("--model", type=Path, default=MODEL, help=f"ONNX export folder (default: {MODEL})")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    reps = args.reps if args.reps is not None else (300 if args.quick else 500)
    n_docs = args.docs if args.docs is not None else (128 if args.quick else 256)

    settings = [(t, spin) for t in args.threads for spin in (False, True)]
    encoders = {s: OnnxGaussianEncoder(args.model, num_threads=s[0], allow_spinning=s[1]) for s in settings}
    docs = texts(n_docs)
    reference = None
    for s, enc in encoders.items():  # warm-up, and the same results whatever the setting
        enc.encode_queries([QUERY] * 3)
        got = enc.encode_documents(docs[:32], batch_size=32).mean
        if reference is None:
            reference = got
        elif not np.array_equal(got, reference):
            raise SystemExit(f"setting {s} gave other encodings than {settings[0]}")

    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in burners:
        p.start()
    latencies: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    throughput: dict[tuple[int, bool], float] = dict.fromkeys(settings, 0.0)
    try:
        for r in range(rounds):
            order = settings if r % 2 == 0 else settings[::-1]
            for s in order:
                enc = encoders[s]
                for _ in range(reps):
                    start = time.perf_counter()
                    enc.encode_queries([QUERY])
                    latencies[s].append(time.perf_counter() - start)
                start = time.perf_counter()
                enc.encode_documents(docs, batch_size=32)
                throughput[s] = max(throughput[s], n_docs / (time.perf_counter() - start))
    finally:
        stop.set()
        for p in burners:
            p.join()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"model {args.model.name} ({args.model.parent.name}), {os.cpu_count()} CPUs, busy processes {args.busy}, "
        f"load average (1 min) {load:.2f}; {rounds} rounds x {reps} queries, {n_docs} texts, batch 32"
    )
    print()
    print("| threads | spinning | query ms (median) | query ms (p90) | texts/s |")
    print("|---:|---|---:|---:|---:|")
    for t, spin in settings:
        lat = sorted(latencies[(t, spin)])
        p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
        print(
            f"| {t} | {'on' if spin else 'off'} | {1000 * statistics.median(lat):.2f} | {1000 * p90:.2f} "
            f"| {throughput[(t, spin)]:.1f} |"
        )
    print()
    summary = []
    for t in args.threads:
        off, on = statistics.median(latencies[(t, False)]), statistics.median(latencies[(t, True)])
        summary.append(f"spin_latency_gain_t{t}={1 - on / off:.3f}")
        summary.append(f"spin_throughput_gain_t{t}={throughput[(t, True)] / throughput[(t, False)] - 1:.3f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
