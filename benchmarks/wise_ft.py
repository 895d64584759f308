"""Weight-space interpolation (WiSE-FT) between an untrained backbone and a LoRA-trained model.

Wortsman et al. (2022), "Robust fine-tuning of zero-shot models": interpolating the weights of a
fine-tuned model with those of the model it started from often keeps the fine-tuning gain and the
starting model's robustness on other distributions. Here the starting model is the untrained
design on the job's backbone (all-MiniLM-L6-v2 or bge-small-en, identity mean head, unit variance:
exactly the backbone's cosine) and the fine-tuned one is a LoRA job of ``benchmarks/gpu_lora.py``
(``export`` runs here, on the CPU; ``gpu_lora.py wise`` runs the same interpolation on the GPU).
With ``alpha`` in [0, 1]:

* the LoRA update ``B @ A`` becomes ``alpha * B @ A`` (``B`` scaled, since ``B`` starts at zero,
  the start is ``alpha = 0`` whatever ``A`` was initialised to);
* every head parameter becomes ``p0 + alpha * (p - p0)``, ``p0`` the seeded initial value.

``alpha = 1`` is the trained model, ``alpha = 0`` the untrained one. The same ``alpha`` is applied
to a Gaussian job and to its dot twin, so the twin keeps the identical recipe.

``--soup`` averages the listed jobs (Wortsman et al., 2022, "Model soups"): the uniform mean of
their WiSE-FT models at ``alpha``. Every parameter of the merged model is linear in the LoRA
product and the heads, so the soup is exact and stays a LoRA delta: the factors are concatenated
(rank ``16 n``, the same scaling) with each ``B`` divided by ``n``, and the heads are averaged.

Each ``JOB-aALPHA`` folder is a delta model (heads + the LoRA factors) that ``kl-retrievers
evaluate --model`` loads on the exact float32 backbone. ``docs/results-archive.md`` lists every command
behind its WiSE-FT section.

Examples:
    python benchmarks/wise_ft.py export --from runs/gpu5 --job zsd-s0-negkl --alphas 0.25 0.5 --out-dir runs/wise
    python benchmarks/wise_ft.py export --from runs/gpu5 --job zsd-s0-negkl zsd-s1-negkl zsd-s2-negkl --soup \
        --alphas 0.25 --name zsd-soup-negkl-a0.25 --out-dir runs/wise
    kl-retrievers evaluate ../shared/datasets/scifact --split train --model runs/wise/zsd-s0-negkl-a0.25 --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_lora import ROOT

logger = logging.getLogger("wise_ft")


def _shown(path: Path) -> Path:
    """``path`` as a command records it: relative to the repository root when inside it."""
    return path.relative_to(ROOT) if path.is_absolute() and path.is_relative_to(ROOT) else path


def interpolate(job: dict[str, Any], adapters: dict[str, Any], alpha: float, backbone: str | None = None) -> Any:
    """The job's encoder with its trained update scaled by ``alpha`` (see the module docstring).

    ``backbone`` is a folder holding the job's backbone (the GPU machine's unpacked copy); by default the
    backbone is resolved by the name its job records (MiniLM or bge-small).
    """
    import torch
    from gpu_lora import BACKBONES, LORA_R, _job_encoder

    from kl_retrievers import GaussianEncoder
    from kl_retrievers.training.trainer import apply_freezing

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    trained = _job_encoder(job, adapters, backbone)
    spec = BACKBONES[job.get("backbone", "minilm")]
    init = GaussianEncoder.from_backbone(
        backbone or spec["name"], pooling=spec["pooling"], normalize_pooled=True, var_token=False,
        beta=job["beta"], max_length=256, query_max_length=64, seed=job["seed"],
    )  # fmt: skip
    apply_freezing(init, lora_r=LORA_R, seed=job["seed"])  # the adapter the job started from
    p0 = {n: p.detach().clone() for n, p in init.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_B" in n:
                p.mul_(alpha)
            elif "lora_A" not in n:
                p.copy_(p0[n] + alpha * (p - p0[n]))
    return trained


def soup(encoders: list[Any], job: dict[str, Any] | None = None, backbone: str | None = None) -> Any:
    """The uniform average of LoRA encoders of one design, as one LoRA encoder of rank ``16 n``.

    ``B_s @ A_s = (1/n) sum_i B_i @ A_i`` with ``A_s`` the rows of every ``A_i`` stacked and ``B_s``
    the columns of every ``B_i / n``; peft's scaling (``lora_alpha / r = 2``) is unchanged by the rank.
    The soup is built on the backbone of ``job`` (one member's job; without one, MiniLM), or on the folder
    ``backbone``, as :func:`interpolate` builds its start; encoders of another backbone are refused.
    """
    import torch
    from gpu_lora import BACKBONES, LORA_R

    from kl_retrievers import GaussianEncoder
    from kl_retrievers.training.trainer import apply_freezing

    if not encoders:
        raise ValueError("soup needs at least one encoder")
    n = len(encoders)
    first = encoders[0]
    parts = [{k: v for k, v in e.named_parameters() if v.requires_grad} for e in encoders]
    if any(set(q) != set(parts[0]) or any(q[k].shape != parts[0][k].shape for k in q) for q in parts):
        raise ValueError("soup: every encoder needs the same trainable tensors (one design, one LoRA rank)")
    if any(e.config.pooling != first.config.pooling for e in encoders):
        raise ValueError(f"soup: the encoders pool differently ({sorted({e.config.pooling for e in encoders})})")
    spec = BACKBONES[(job or {}).get("backbone", "minilm")]
    out = GaussianEncoder.from_backbone(
        backbone or spec["name"], pooling=first.config.pooling, normalize_pooled=True, var_token=False,
        beta=first.config.beta, max_length=256, query_max_length=64, seed=0,
    )  # fmt: skip
    apply_freezing(out, lora_r=LORA_R * n)
    names = {k for k, v in out.named_parameters() if v.requires_grad}
    if names != set(parts[0]):  # e.g. bge's 12 layers of adapters copied into MiniLM's 6
        raise ValueError(
            f"soup: the encoders' trainable tensors do not match those of {backbone or spec['name']} "
            f"({len(parts[0])} vs {len(names)}); pass the members' job (its backbone) or backbone folder"
        )
    with torch.no_grad():
        for name, p in out.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_A" in name:
                p.copy_(torch.cat([q[name] for q in parts], dim=0))
            elif "lora_B" in name:
                p.copy_(torch.cat([q[name] for q in parts], dim=1) / n)
            else:
                p.copy_(torch.stack([q[name] for q in parts]).mean(0))
    return out


def cmd_export(args: argparse.Namespace) -> None:
    """Save one delta model folder per alpha: ``OUT_DIR/JOB-aALPHA``."""
    from gpu_lora import LORA_R, PACK, training_info
    from safetensors.torch import load_file

    src = Path(args.source)
    with gzip.open(PACK / "data.json.gz", "rt", encoding="utf-8") as fh:
        pack = json.load(fh)
    jobs = {j["name"]: j for j in (json.loads(x) for x in (src / "jobs.jsonl").read_text().splitlines() if x.strip())}
    adapters = load_file(str(src / "adapters.safetensors"))
    # one model per (members, alpha): the listed jobs together with --soup, else each job alone
    groups = [args.job] if args.soup else [[name] for name in args.job]
    for members in groups:
        first = jobs[members[0]]
        kinds = {jobs[name].get("backbone", "minilm") for name in members}
        if len(kinds) > 1:
            raise SystemExit(f"--soup needs jobs on one backbone; got {', '.join(sorted(kinds))}")
        for alpha in args.alphas:
            if args.soup:
                enc = soup([interpolate(jobs[name], adapters, alpha) for name in members], first)
            else:
                enc = interpolate(first, adapters, alpha)
            command = (
                f"python benchmarks/wise_ft.py export --from {src} --job {' '.join(members)}"
                + (" --soup" if args.soup else "")
                + f" --alphas {alpha:g} --out-dir {_shown(Path(args.out_dir))}"
                + (f" --name {args.name}" if args.name else "")
            )
            info = training_info(first, pack)
            if args.soup:
                info["recipe"] |= {
                    "seed": [jobs[name]["seed"] for name in members],
                    "lora_r": LORA_R * len(members),
                    "lora_alpha": 2 * LORA_R * len(members),
                    "lora_targets": f"query, value ({len(members)} rank-{LORA_R} adapters stacked, stored as factors)",
                }
                info["final_loss"] = [jobs[name].get("final_loss") for name in members]
                info["wise_ft"] = {"soup": list(members), "alpha": alpha, "from": str(src), "command": command}
                info["command"] = (
                    f"python benchmarks/gpu_lora.py prepare && (GPU) python benchmarks/gpu_lora.py run --out {src} "
                    f"--only {' '.join(members)} && {command}"
                )
                default_name = f"soup{len(members)}-{members[0]}-a{alpha:g}"
            else:
                info["wise_ft"] = {"job": members[0], "alpha": alpha, "from": str(src), "command": command}
                info["command"] = f"{info['command']} && {command}"
                default_name = f"{members[0]}-a{alpha:g}"
            enc.config.extra["training"] = info
            out = Path(args.out_dir) / (args.name or default_name)
            enc.save_pretrained(out, include_backbone=False)
            print(f"wrote {out}", flush=True)


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["export"])
    p.add_argument("--from", dest="source", required=True, help="a gpu_lora.py run's output folder")
    p.add_argument("--job", nargs="+", required=True, help="job names in that run")
    p.add_argument("--alphas", nargs="+", type=float, required=True, help="interpolation weights in [0, 1]")
    p.add_argument("--soup", action="store_true", help="average the jobs' WiSE-FT models into one model per alpha")
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "wise"), help="default: runs/wise (of the repository)")
    p.add_argument("--name", help="folder name under --out-dir (one alpha; one job unless --soup; default JOB-aALPHA)")
    args = p.parse_args()
    if args.name and (1 if args.soup else len(args.job)) * len(args.alphas) != 1:
        p.error(f"--name needs exactly one job and one alpha; got {len(args.job)} jobs and {len(args.alphas)} alphas")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    cmd_export(args)


if __name__ == "__main__":
    main()
