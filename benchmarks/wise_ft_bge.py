"""WiSE-FT on the bge heads: interpolate the trained heads with the untrained ones (issue 21).

``benchmarks/train_heads_bge.py`` trains Gaussian heads (and their dot-product twin) on the frozen
bge-small-en backbone; both lose to the untrained start (bge cosine) on every dev collection. WiSE-FT
(Wortsman et al., 2022, "Robust fine-tuning of zero-shot models") asks whether a point between the
two keeps the start's robustness and adds some of the fine-tuning's gain: every head parameter
becomes ``p0 + alpha * (p - p0)``, ``p0`` the seeded start (identity mean head, unit variance), ``p``
the trained value; ``alpha = 0`` is bge cosine, ``alpha = 1`` the trained model. The backbone is
frozen, so only the heads move.

The rule, fixed before any score was read: the recipe and data are ``train_heads_bge.py``'s (trained
here again with the same arguments, or read from its ``--save`` folder with ``--from``); ``alpha`` is
chosen on SciFact TRAIN (the zero-shot dev set; SciFact is never trained on) from :data:`ALPHAS` by the
Gaussian's nDCG@10, ties to the smaller ``alpha``; the dot twin gets the same ``alpha`` (identical
recipe). Then the chosen pair and the start are scored on the four test splits. One JSON line per model
goes to ``runs/bge/wise_ft.jsonl``; ``--save-chosen DIR`` writes the chosen Gaussian (heads only) there.

Examples:
    nice -n 10 python benchmarks/wise_ft_bge.py --save runs/bge/heads
    python benchmarks/wise_ft_bge.py --from runs/bge/heads
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from train_heads_bge import EVAL, add_recipe_arguments, load_features, train_twin
from train_heads_experiments import score

from kl_retrievers import GaussianEncoder
from kl_retrievers.training import encode_from_features

logger = logging.getLogger("benchmarks.wise_ft_bge")
ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "runs" / "bge" / "wise_ft.jsonl"
#: The interpolation grid (fixed before any score was read).
ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
DEV = "scifact:train"


def interpolate(start: GaussianEncoder, trained: GaussianEncoder, alpha: float) -> GaussianEncoder:
    """A copy of ``trained`` whose floating-point parameters are ``p0 + alpha * (p - p0)``.

    Examples:
        >>> import torch
        >>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
        >>> _ = a.weight.data.fill_(0.0), b.weight.data.fill_(2.0)
        >>> float(interpolate(a, b, 0.25).weight)
        0.5
    """
    out = copy.deepcopy(trained)
    p0 = start.state_dict()
    state = {
        k: (p0[k] + alpha * (v - p0[k])) if torch.is_floating_point(v) else v for k, v in trained.state_dict().items()
    }
    out.load_state_dict(state)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", default=None, help="read the trained twins from this folder (<sim>/)")
    p.add_argument("--save-chosen", default=None, help="save the chosen Gaussian (heads-only delta) here")
    add_recipe_arguments(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    base, ts, qf, df, evals = load_features(args.seed)
    prefix = base.config.extra["query_prefix"]
    command = "python benchmarks/wise_ft_bge.py " + shlex.join(sys.argv[1:])
    trained: dict[str, GaussianEncoder] = {}
    for sim in ("neg_kl", "dot"):
        if args.source:
            trained[sim] = GaussianEncoder.from_pretrained(Path(args.source) / sim, device="cpu")
        else:
            trained[sim], info = train_twin(sim, args, prefix, ts, qf, df)
            logger.info("trained %s in %.0f s", sim, info["train_s"])

    def evaluate(enc: GaussianEncoder, sim: str, specs: list[str]) -> dict[str, Any]:
        out = {}
        for spec in specs:
            ds, qfe, dfe = evals[spec]
            out[spec] = score(ds, encode_from_features(enc, qfe), encode_from_features(enc, dfe), sim)
        return out

    curve = {
        sim: {a: evaluate(interpolate(base, trained[sim], a), sim, [DEV])[DEV]["ndcg@10"] for a in ALPHAS}
        for sim in ("neg_kl", "dot")
    }
    chosen = max(ALPHAS, key=lambda a: (curve["neg_kl"][a], -a))
    logger.info("SciFact TRAIN nDCG@10 by alpha: %s; chosen alpha %s", curve, chosen)
    specs = [f"{name}:{split}" for name, split in EVAL]
    LOG.parent.mkdir(parents=True, exist_ok=True)
    rows = [("untrained", base, "neg_kl", 0.0)]
    rows += [(sim, interpolate(base, trained[sim], chosen), sim, chosen) for sim in ("neg_kl", "dot")]
    for label, enc, sim, alpha in rows:
        row: dict[str, Any] = {
            "model": label if label == "untrained" else f"{label}-wise-a{alpha}", "similarity": sim, "alpha": alpha,
            "alphas": list(ALPHAS), "dev": DEV, "dev_curve": {str(a): v for a, v in curve.get(label, {}).items()},
            "recipe": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                       "temperature": args.temperature, "seed": args.seed},
            **evaluate(enc, sim, specs), "command": command,
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        with LOG.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if args.save_chosen and label == "neg_kl":
            enc.save_pretrained(Path(args.save_chosen), include_backbone=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
