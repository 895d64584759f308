"""``kl-retrievers train``: train a Gaussian encoder (or its dot / cosine twin) from BEIR or JSONL data.

Wire it into the main parser with :func:`add_train_command`; :func:`run_train` does the work.
The saved folder is a normal :class:`~kl_retrievers.encoder.GaussianEncoder` (delta on top of
the pinned backbone) whose ``config.json`` records the exact command under
``encoder.extra.training`` and which holds a ``README.md`` model card.

Examples:
    kl-retrievers train --data ../shared/datasets/scifact --out runs/scifact-heads \\
        --heads-only-cached --steps 2000 --batch-size 64 --lr 1e-3 --temperature 0.05
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from kl_retrievers.cli_common import _int_at_least, args_subset, check_output_path, positive_int, token_budget

logger = logging.getLogger(__name__)

__all__ = ["add_train_command", "hardware_description", "run_train", "write_model_card"]

DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an ``argparse`` subparsers object.

    Examples:
        >>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
        >>> _ = add_train_command(sub)
        >>> parser.parse_args(["train", "--data", "d", "--out", "o"]).similarity
        'neg_kl'
    """
    p = subparsers.add_parser(
        "train",
        help="train a Gaussian encoder (or a dot/cosine twin)",
        description="Train a Gaussian encoder scored by -KL (or a vector twin) from BEIR folders or JSONL files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--data", action="append", required=True, help="BEIR folder (its --split) or .jsonl file; repeat")
    d.add_argument("--split", default="train", help="qrels split of BEIR folders")
    d.add_argument("--hard-negatives", choices=["bm25", "model", "none"], default="none", help="mine hard negatives")
    d.add_argument("--mine-k", type=positive_int, default=30, help="hard negatives mined per query")
    d.add_argument("--teacher", action="store_true", help="score candidates with the int8 cross-encoder teacher")
    m = p.add_argument_group("model")
    m.add_argument("--base", default=DEFAULT_BASE, help="backbone hub id or path")
    m.add_argument("--init-from", default=None, help="start from a saved GaussianEncoder instead of --base")
    m.add_argument("--dim", type=positive_int, default=None, help="output dimension (default: hidden size)")
    m.add_argument("--beta", type=float, default=1.0, help="softplus beta of the variance head")
    m.add_argument("--pooling", choices=["cls", "mean"], default="mean")
    m.add_argument("--no-var-token", action="store_true", help="variance head reads the pooled vector")
    m.add_argument("--no-normalize-pooled", action="store_true", help="do not L2-normalise the pooled vector")
    m.add_argument("--random-mean-head", action="store_true", help="random mean head even when dim == hidden")
    m.add_argument("--init-variance", type=float, default=1.0)
    m.add_argument("--max-length", type=token_budget, default=256)
    m.add_argument("--query-max-length", type=token_budget, default=64)
    t = p.add_argument_group("training")
    t.add_argument("--out", required=True, help="output folder of the trained model")
    t.add_argument("--similarity", choices=["neg_kl", "dot", "cosine"], default="neg_kl")
    t.add_argument("--loss", choices=["contrastive", "margin_mse", "listwise", "lambdarank"], default="contrastive")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--freeze-backbone", action="store_true", help="train the heads only (backbone runs every step)")
    g.add_argument(
        "--freeze-layers", type=_int_at_least(0), default=0, metavar="N", help="freeze embeddings + lower N layers"
    )
    g.add_argument("--lora-r", type=positive_int, default=0, metavar="R", help="train a LoRA adapter of rank R (peft)")
    g.add_argument("--heads-only-cached", action="store_true", help="fast path: cached frozen features, heads only")
    t.add_argument("--steps", type=positive_int, default=1000)
    t.add_argument("--batch-size", type=positive_int, default=32)
    t.add_argument("--grad-accum", type=positive_int, default=1)
    t.add_argument("--negatives", type=int, default=7, help="hard negatives sampled per query and step")
    t.add_argument("--lr", type=float, default=None, help="peak lr (default 1e-3 heads-only, else 2e-5)")
    t.add_argument(
        "--var-lr", type=float, default=None, help="peak lr of the variance head (default: --lr; 0 keeps it fixed)"
    )
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10%% of --steps)")
    t.add_argument("--temperature", type=float, default=0.05)
    t.add_argument("--no-in-batch", action="store_true", help="contrastive: own candidates only")
    t.add_argument("--no-full-corpus", action="store_true", help="fast path: in-batch softmax, not full corpus")
    t.add_argument("--corpus-sample", type=int, default=0, help="fast path: sampled softmax over N pool docs (0: all)")
    t.add_argument("--max-grad-norm", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--time-budget", type=float, default=None, metavar="MIN", help="stop and save after MIN minutes")
    t.add_argument(
        "--checkpoint-every", type=int, default=0, help="checkpoint every N steps and at the end (0: only at the end)"
    )
    t.add_argument("--checkpoint-dir", default=None, help="default: <out>.checkpoint")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--cache-dir", default=None, help="feature / teacher cache root (default ~/.cache/kl_retrievers)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)
    return p


def hardware_description() -> str:
    """CPU model, core count and GPU (if any), for model cards.

    Examples:
        >>> "cores" in hardware_description()
        True
    """
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def write_model_card(folder: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Write ``README.md`` describing how a model was trained (data, recipe, command, seed, hardware).

    Examples:
        >>> write_model_card("out", {"command": "kl-retrievers train ...", "data": []})  # doctest: +SKIP
    """
    path = Path(folder) / "README.md"
    recipe = info.get("recipe", {})
    lines = [
        f"# {Path(folder).name}",
        "",
        "A Gaussian retrieval encoder trained with `kl-retrievers train`; scores are -KL(Q||D) (higher is better)"
        if recipe.get("similarity", "neg_kl") == "neg_kl"
        else f"A vector twin trained with similarity `{recipe.get('similarity')}` (the variance head is untrained).",
        "",
        "## Data",
        *[f"- {s}" for s in info.get("data", [])],
        f"- training queries: {info.get('n_queries')}, document pool: {info.get('n_docs')}",
        f"- hard negatives: {info.get('hard_negatives')}; teacher: {info.get('teacher') or 'none'}",
        "",
        "## Recipe",
        "```json",
        json.dumps(recipe, indent=2, sort_keys=True),
        "```",
        "",
        "## Command",
        "```",
        str(info.get("command")),
        "```",
        "",
        f"- seed: {recipe.get('seed')}",
        f"- hardware: {info.get('hardware')}",
        f"- steps done: {info.get('steps_done')} ({info.get('stopped')}), {info.get('seconds', 0):.0f} s, "
        f"final loss {info.get('final_loss')}",
        "",
    ]
    if info.get("results"):
        lines += ["## Results", "", str(info["results"]), ""]
    path.write_text("\n".join(lines))
    return path


def _setup_logging(quiet: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s")


def _needed_modules(args: argparse.Namespace) -> list[str]:
    """The packages of the ``[train]`` extra that this ``kl-retrievers train`` command imports."""
    needed = ["torch", "transformers"]
    if getattr(args, "lora_r", 0):  # apply_freezing imports peft
        needed.append("peft")
    if getattr(args, "hard_negatives", None) == "bm25":  # mine_bm25_negatives imports bm25s
        needed.append("bm25s")
    return needed


def run_train(args: argparse.Namespace) -> int:
    """Run ``kl-retrievers train`` with parsed arguments; returns the exit status.

    Examples:
        >>> run_train(parser.parse_args(["train", "--data", "ds", "--out", "model"]))  # doctest: +SKIP
        0
    """
    from kl_retrievers.training.data import require_train_extra

    # before any import of them, and before hours of feature extraction: one line naming the [train] extra (torch's
    # extra lacks peft and bm25s), not a traceback
    require_train_extra("kl-retrievers train", *_needed_modules(args))
    import torch

    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.training.data import load_training_data, mine_bm25_negatives, mine_negatives_from_scores
    from kl_retrievers.training.features import compute_features, default_feature_cache_dir
    from kl_retrievers.training.losses import score_matrix
    from kl_retrievers.training.trainer import (
        TrainConfig,
        TrainingDivergedError,
        apply_freezing,
        encode_from_features,
        train_encoder,
        train_heads_cached,
    )

    _setup_logging(args.quiet)
    command = getattr(args, "command_line", None) or shlex.join(["kl-retrievers", *sys.argv[1:]])
    out = Path(args.out)
    cache_root = Path(args.cache_dir) if args.cache_dir else default_feature_cache_dir().parent
    feature_cache = cache_root / "features"
    try:
        check_output_path(out, "--out", folder=True)  # before hours of training, not after
        heads_only = bool(args.heads_only_cached)
        cfg = TrainConfig(  # checks the recipe before any data loading, feature extraction or mining
            lr=args.lr if args.lr is not None else (1e-3 if heads_only else 2e-5),
            warmup_steps=args.warmup,
            in_batch=not args.no_in_batch,
            full_corpus=not args.no_full_corpus,
            time_budget_s=args.time_budget * 60 if args.time_budget else None,
            show_progress=not args.quiet,
            **args_subset(args, "similarity", "loss", "steps", "batch_size", "grad_accum", "negatives", "var_lr"),
            **args_subset(args, "temperature", "corpus_sample", "max_grad_norm", "seed", "checkpoint_every", "device"),
        )
        ts = load_training_data(args.data, split=args.split)
        if args.init_from:
            encoder = GaussianEncoder.from_pretrained(args.init_from)
        else:
            shape = args_subset(args, "dim", "beta", "pooling", "init_variance", "max_length", "query_max_length")
            encoder = GaussianEncoder.from_backbone(
                args.base,
                var_token=not args.no_var_token,
                normalize_pooled=not args.no_normalize_pooled,
                identity_mean=False if args.random_mean_head else None,
                seed=args.seed,
                **shape,
            )
        qf = df = None
        if heads_only:
            qf = compute_features(
                encoder, ts.queries, max_length=encoder.config.query_max_length, cache_dir=feature_cache,
                show_progress=not args.quiet, desc="Query features",
            )  # fmt: skip
            df = compute_features(
                encoder, ts.docs, max_length=encoder.config.max_length, cache_dir=feature_cache,
                show_progress=not args.quiet, desc="Document features",
            )  # fmt: skip
        if args.hard_negatives == "bm25":
            mine_bm25_negatives(ts, k=args.mine_k)
        elif args.hard_negatives == "model":
            if qf is not None and df is not None:
                qg, dg = encode_from_features(encoder, qf), encode_from_features(encoder, df)
            else:
                qg = encoder.encode_queries(ts.queries, show_progress_bar=not args.quiet)
                dg = encoder.encode_documents(ts.docs, show_progress_bar=not args.quiet)
            dm, dv = torch.from_numpy(dg.mean), torch.from_numpy(dg.var)
            qm, qv = torch.from_numpy(qg.mean), torch.from_numpy(qg.var)

            def scores(rows: list[int]) -> Any:
                return score_matrix(qm[rows], qv[rows], dm, dv, "neg_kl").numpy()

            mine_negatives_from_scores(ts, scores, k=args.mine_k)
        teacher_label = None
        if args.teacher:
            from kl_retrievers.training.teacher import CrossEncoderTeacher, add_teacher_scores

            teacher = CrossEncoderTeacher(cache_dir=cache_root / "teacher")
            add_teacher_scores(ts, teacher)
            teacher_label = teacher.label
        ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".checkpoint")
        if heads_only:
            result = train_heads_cached(
                encoder, ts, cfg, checkpoint_dir=ckpt, resume=args.resume, query_features=qf, doc_features=df
            )
        else:
            apply_freezing(
                encoder, freeze_backbone=args.freeze_backbone, freeze_layers=args.freeze_layers, lora_r=args.lora_r
            )
            result = train_encoder(encoder, ts, cfg, checkpoint_dir=ckpt, resume=args.resume)
    except TrainingDivergedError as exc:
        print(f"kl-retrievers train: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"kl-retrievers train: error: {exc}", file=sys.stderr)
        return 2
    recipe = {
        **cfg.to_dict(),
        "mode": "heads_only_cached"
        if heads_only
        else ("lora" if args.lora_r else "freeze_backbone" if args.freeze_backbone else "full"),
        "freeze_layers": args.freeze_layers,
        "lora_r": args.lora_r,
        "hard_negatives": args.hard_negatives,
        "mine_k": args.mine_k,
        "encoder": encoder.config.to_dict() | {"extra": {}},
    }
    info = {
        "command": command,
        "data": [str(x) for x in args.data],
        "n_queries": len(ts.examples),
        "n_docs": len(ts.docs),
        "hard_negatives": args.hard_negatives,
        "teacher": teacher_label,
        "recipe": recipe,
        "hardware": hardware_description(),
        "steps_done": result.steps_done,
        "stopped": result.stopped,
        "seconds": result.seconds,
        "final_loss": round(result.final_loss, 6),
    }
    encoder.config.extra["training"] = {k: v for k, v in info.items() if k != "recipe"} | {"recipe": recipe}
    encoder.save_pretrained(out, include_backbone=False)
    (out / "training_losses.json").write_text(json.dumps(result.losses) + "\n")
    write_model_card(out, info)
    print(
        f"saved {out} after {result.steps_done} steps ({result.stopped}); final loss {result.final_loss:.4f}",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m kl_retrievers.training.cli train ...``)."""
    parser = argparse.ArgumentParser(prog="kl-retrievers")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["kl-retrievers", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
