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
import contextlib
import json
import logging
import math
import os
import platform
import re
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from kl_retrievers._config import SIMILARITIES, Pooling, is_saved_encoder
from kl_retrievers._io import _siblings, finite_json, is_within, some_names, user_path
from kl_retrievers.cli_common import (
    DEPRECATED_QUIET_WARNING,
    _HelpFormatter,
    _int_at_least,
    add_progress_arguments,
    add_unknown_docs_argument,
    args_subset,
    check_output_path,
    positive_int,
    progress_default,
    progress_option,
    stdin_problem,
    token_budget,
)
from kl_retrievers.training._checkpoint import refuse_other_folder

logger = logging.getLogger(__name__)

__all__ = [
    "add_train_command",
    "check_checkpoint_dir",
    "check_train_out",
    "current_evaluations",
    "evaluation_summary",
    "hardware_description",
    "model_card_text",
    "run_train",
    "write_model_card",
]

DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"

#: Retrieval depth of ``--eval-data`` evaluations (documents per query, as ``kl-retrievers evaluate``'s default).
EVAL_DEPTH = 100

#: ``--negatives`` and ``--mine-k`` when not given (``TrainConfig.negatives``'s default, and mining's); their
#: parsed default is ``None``, so that a flag given where it would be ignored can be refused (``_check_args``)
_NEGATIVES = 7
_MINE_K = 30

#: ``train --quiet``'s help after "deprecated old name of --no-progress": what else it hides
#: (:func:`~kl_retrievers.cli_common.add_progress_arguments`).
_DEPRECATED_QUIET_ALSO = " that also hides the training's INFO lines, unless -v before train is given"
#: What ``train --quiet`` logs (:data:`~kl_retrievers.cli_common.DEPRECATED_QUIET_WARNING`), and where its INFO
#: lines went.
_DEPRECATED_QUIET_TRAIN = (
    DEPRECATED_QUIET_WARNING.format(command="train")
    + ". It hid the training's INFO lines too (evaluations, mining counts, checkpoints): -q hides them, with the "
    "warnings, so kl-retrievers -q train --no-progress is the nearest new spelling"
)

# the flags that shape a new encoder (from --base), their attribute and default: --init-from loads the saved
# encoder's shape, so giving any of them with it is refused instead of silently ignored
_SHAPE_FLAGS: tuple[tuple[str, str, Any], ...] = (
    ("--base", "base", DEFAULT_BASE),
    ("--dim", "dim", None),
    ("--beta", "beta", 1.0),
    ("--pooling", "pooling", "mean"),
    ("--no-var-token", "no_var_token", False),
    ("--no-normalize-pooled", "no_normalize_pooled", False),
    ("--random-mean-head", "random_mean_head", False),
    ("--init-variance", "init_variance", 1.0),
    ("--max-length", "max_length", 256),
    ("--query-max-length", "query_max_length", 64),
)
_DEFAULTS = {attr: default for _, attr, default in _SHAPE_FLAGS}

# argparse reads "-1e-3" as an option (its negative-number pattern has no exponent), so "--lr -1e-3" failed
# with "expected one argument" instead of the recipe's message; this pattern also accepts exponents
_NEGATIVE_NUMBER = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


class _DefaultsHelpFormatter(_HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after an option's help, except where the help already says its default,
    the default is ``None`` (the help says what happens then) or the option is an on/off flag; wraps as every
    command's help does (at spaces only: :class:`~kl_retrievers.cli_common._HelpFormatter`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


#: The metrics ``--eval-metric`` names in its help (``kl_retrievers.evaluation.METRICS``, spelled out so that
#: building the parser imports no numpy; a test keeps the two equal).
_EVAL_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map@100")


def _eval_metric(text: str) -> str:
    """An argparse ``type``: a reported metric name (any case, or ir_measures' spelling), as reported.

    Examples:
        >>> _eval_metric("nDCG@10")
        'ndcg@10'
    """
    from kl_retrievers.evaluation import _metric_names

    try:
        return _metric_names(text)[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        formatter_class=_DefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--data", action="append", required=True, help="BEIR folder (its --split) or .jsonl file; repeat")
    d.add_argument("--split", default="train", help="qrels split of BEIR folders")
    add_unknown_docs_argument(
        d, help="BEIR qrels naming documents outside the corpus: fail (default) or drop them with a warning"
    )
    d.add_argument("--hard-negatives", choices=["bm25", "model", "none"], default="none", help="mine hard negatives")
    d.add_argument(
        "--mine-k", type=positive_int, default=None, help=f"hard negatives mined per query (default: {_MINE_K})"
    )
    d.add_argument(
        "--mine-mode",
        choices=["keep", "append", "replace"],
        default=None,
        help="what mining does with the negatives a row already has: keep them (and their teacher scores; mine "
        "only rows without), append mined ones, or replace them (default: append with --loss contrastive, "
        "keep with the teacher-score losses)",
    )
    d.add_argument("--teacher", action="store_true", help="score candidates with the int8 cross-encoder teacher")
    m = p.add_argument_group("model")
    m.add_argument("--base", default=DEFAULT_BASE, help="backbone hub id or path")
    m.add_argument(
        "--init-from",
        default=None,
        help="start from a saved GaussianEncoder instead of --base (its shape: no --dim, --pooling, ... with it)",
    )
    m.add_argument("--dim", type=positive_int, default=None, help="output dimension (default: hidden size)")
    m.add_argument("--beta", type=float, default=_DEFAULTS["beta"], help="softplus beta of the variance head (> 0)")
    m.add_argument("--pooling", choices=get_args(Pooling), default=_DEFAULTS["pooling"], help="token pooling")
    m.add_argument("--no-var-token", action="store_true", help="variance head reads the pooled vector")
    m.add_argument("--no-normalize-pooled", action="store_true", help="do not L2-normalise the pooled vector")
    m.add_argument("--random-mean-head", action="store_true", help="random mean head even when dim == hidden")
    m.add_argument(
        "--init-variance", type=float, default=_DEFAULTS["init_variance"], help="initial variance of every dim (> 0)"
    )
    m.add_argument("--max-length", type=token_budget, default=_DEFAULTS["max_length"], help="document token budget")
    m.add_argument(
        "--query-max-length", type=token_budget, default=_DEFAULTS["query_max_length"], help="query token budget"
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--out",
        required=True,
        help="output folder of the trained model (replaced as a whole: new, empty or an earlier model folder)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out that is not a kl_retrievers model folder (and such a --checkpoint-dir)",
    )
    t.add_argument("--similarity", choices=SIMILARITIES, default="neg_kl", help="score (dot/cosine: a vector twin)")
    t.add_argument(
        "--loss",
        choices=["contrastive", "margin_mse", "listwise", "lambdarank"],
        default="contrastive",
        help="training loss (margin_mse, listwise and lambdarank read --teacher scores)",
    )
    g = t.add_mutually_exclusive_group()
    g.add_argument("--freeze-backbone", action="store_true", help="train the heads only (backbone runs every step)")
    g.add_argument(
        "--freeze-layers", type=_int_at_least(0), default=0, metavar="N", help="freeze embeddings + lower N layers"
    )
    g.add_argument("--lora-r", type=positive_int, default=0, metavar="R", help="train a LoRA adapter of rank R (peft)")
    g.add_argument("--heads-only-cached", action="store_true", help="fast path: cached frozen features, heads only")
    t.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps")
    t.add_argument("--batch-size", type=positive_int, default=32, help="queries per step")
    t.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches accumulated per step")
    t.add_argument(
        "--negatives", type=int, default=None, help=f"hard negatives sampled per query and step (default: {_NEGATIVES})"
    )
    t.add_argument("--lr", type=float, default=None, help="peak lr (default 1e-3 heads-only, else 2e-5)")
    t.add_argument(
        "--var-lr", type=float, default=None, help="peak lr of the variance head (default: --lr; 0 keeps it fixed)"
    )
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10%% of --steps)")
    t.add_argument("--temperature", type=float, default=0.05, help="softmax temperature of the loss")
    t.add_argument("--no-in-batch", action="store_true", help="contrastive: own candidates only")
    t.add_argument("--no-full-corpus", action="store_true", help="fast path: in-batch softmax, not full corpus")
    t.add_argument("--corpus-sample", type=int, default=0, help="fast path: sampled softmax over N pool docs (0: all)")
    t.add_argument("--max-grad-norm", type=float, default=None, help="clip gradients to this norm (default: off)")
    t.add_argument("--seed", type=_int_at_least(0), default=0, help="data order, dropout and head init (>= 0)")
    t.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MIN",
        help="stop and save after MIN minutes of the training loop (0: after one step)",
    )
    t.add_argument(
        "--checkpoint-every", type=int, default=0, help="checkpoint every N steps and at the end (0: only at the end)"
    )
    t.add_argument(
        "--checkpoint-dir",
        default=None,
        help="default: <out>.checkpoint (replaced as a whole by each checkpoint: new, empty or an earlier checkpoint)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint (same recipe; only --steps, --time-budget, --checkpoint-every, "
        "--device, --progress / --no-progress may change); refused when the checkpoint folder holds none (drop "
        "--resume to start from step 0)",
    )
    t.add_argument("--cache-dir", default=None, help="feature / teacher cache root (default ~/.cache/kl_retrievers)")
    t.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    # --quiet: the deprecated old name of --no-progress (it warns), which hides the training's INFO lines too
    add_progress_arguments(t, deprecated_quiet="train", deprecated_quiet_also=_DEPRECATED_QUIET_ALSO)
    e = p.add_argument_group("evaluation during training")
    e.add_argument(
        "--eval-data",
        default=None,
        metavar="DIR",
        help="BEIR folder whose --eval-split is retrieved from (exactly, its whole corpus) every --eval-every steps "
        "and at the end; the results go into the model's training record and card",
    )
    # defaults None, filled in by _load_eval_data: one given without --eval-data is refused, even at its default
    e.add_argument("--eval-split", default=None, help="qrels split of --eval-data (default: dev)")
    e.add_argument(
        "--eval-every",
        type=_int_at_least(0),
        default=None,
        metavar="N",
        help="evaluate every N optimiser steps and at the end (default: 0, only at the end)",
    )
    e.add_argument(
        "--eval-metric",
        type=_eval_metric,
        default=None,
        metavar="METRIC",
        help=f"metric reported: {', '.join(_EVAL_METRICS)} (any case; ir_measures' nDCG@10, RR@10, R@100 and AP@100 "
        "name them too; default: ndcg@10)",
    )
    p.set_defaults(func=run_train)
    p._negative_number_matcher = _NEGATIVE_NUMBER
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

    ``kl-retrievers train`` does not call it: it passes :func:`model_card_text` to
    :meth:`~kl_retrievers.GaussianEncoder.save_pretrained` so the card is part of the atomic save.

    Examples:
        >>> write_model_card("out", {"command": "kl-retrievers train ...", "data": []})  # doctest: +SKIP
    """
    path = Path(folder) / "README.md"
    path.write_text(model_card_text(Path(folder).name, info), encoding="utf-8")
    return path


def model_card_text(name: str, info: dict[str, Any]) -> str:
    """The ``README.md`` model card of a trained model named ``name`` (see :func:`write_model_card`).

    Examples:
        >>> model_card_text("m", {"command": "kl-retrievers train ...", "final_loss": None}).startswith("# m")
        True
    """
    recipe = info.get("recipe", {})
    seconds = info.get("seconds") or 0
    prefix = ((recipe.get("encoder") or {}).get("extra") or {}).get("query_prefix")
    lines = [
        f"# {name}",
        "",
        "A Gaussian retrieval encoder trained with `kl-retrievers train`; scores are -KL(Q||D) (higher is better)"
        if recipe.get("similarity", "neg_kl") == "neg_kl"
        else f"A vector twin trained with similarity `{recipe.get('similarity')}` (the variance head is untrained).",
        "",
        "## Data",
        *[f"- {s}" for s in info.get("data", [])],
        f"- training queries: {info.get('n_queries')} ({info.get('n_query_texts')} unique query texts), "
        f"document pool: {info.get('n_docs')}",
        f"- hard negatives: {info.get('hard_negatives')}"
        + (f" (given negatives: {info['mine_mode']})" if info.get("mine_mode") else "")
        + f"; teacher: {info.get('teacher') or 'none'}",
        *[f"- WARNING: {note}" for note in info.get("held_out_warnings") or []],
        *([f"- query prefix (put before every query, in training and at inference): {prefix!r}"] if prefix else []),
        "",
        "## Recipe",
        "```json",
        json.dumps(recipe, indent=2, sort_keys=True),
        "```",
        "",
        "## Command",
        "```",
        *_command_lines(info),
        "```",
        "",
        f"- seed: {recipe.get('seed')}",
        f"- hardware: {info.get('hardware')}",
        f"- steps done: {info.get('steps_done')} ({info.get('stopped')}), {seconds:.0f} s in this invocation, "
        f"final loss {info.get('final_loss')} ({_final_loss_steps(info.get('steps_done'))})",
        "",
    ]
    evaluation = info.get("evaluation")
    if evaluation:
        metric = evaluation.get("metric")
        # this run's evaluator's entries only: a resume with other evaluation settings keeps the earlier ones
        entries, left_out = current_evaluations(info.get("evaluations") or [], evaluation.get(_EVALUATOR_KEY))
        lines += [
            "## Evaluation during training",
            "",
            f"{metric} on {evaluation.get('data')} (split {evaluation.get('split')}), exact retrieval of the top "
            f"{evaluation.get('depth')}, "
            + (f"every {evaluation['every']} steps and at the end:" if evaluation.get("every") else "at the end only:"),
            "",
            f"| step | {metric} |",
            "| ---: | ---: |",
            *[f"| {e.get('step')} | {_metric_text(e.get(metric))} |" for e in entries],
            "",
        ]
        if left_out:
            lines += [
                f"{left_out} earlier evaluation{'s' if left_out != 1 else ''} not recorded as this evaluator's (made "
                "before a `--resume` with other evaluation settings, or by a version that recorded no evaluator) "
                f"{'are' if left_out != 1 else 'is'} left out of this table; `config.json` keeps every one under "
                f"`encoder.extra.training.evaluations`, each naming its evaluator under `{_EVALUATOR_KEY!r}`.",
                "",
            ]
    if info.get("results"):
        lines += ["## Results", "", str(info["results"]), ""]
    return "\n".join(lines)


def _command_lines(info: Mapping[str, Any]) -> list[str]:
    """The card's command block: the command, or, for a run resumed from a checkpoint (``info["commands"]``, several
    invocations), each invocation after a comment line saying when it started, from which step and, for a Python
    call (its ``api``), which function its command (the Python process's) called.

    Examples:
        >>> first = {"command": "kl-retrievers train", "started": "2026-01-01T00:00:00+00:00", "step_at_start": 0}
        >>> again = first | {"command": "kl-retrievers train --resume", "started": "2026-01-02T09:00:00+00:00"}
        >>> again["step_at_start"] = 4
        >>> for line in _command_lines({"command": again["command"], "commands": [first, again]}):
        ...     print(line)
        # 1. started 2026-01-01T00:00:00+00:00, at step 0
        kl-retrievers train
        # 2. started 2026-01-02T09:00:00+00:00, at step 4
        kl-retrievers train --resume
        >>> call = {"command": "python train.py", "started": "2026-01-03T09:00:00+00:00", "step_at_start": 6}
        >>> call["api"] = "kl_retrievers.training.train_encoder"
        >>> for line in _command_lines({"commands": [first, call]})[2:]:
        ...     print(line)
        # 2. started 2026-01-03T09:00:00+00:00, at step 6, kl_retrievers.training.train_encoder() called by
        python train.py
    """
    commands = info.get("commands")
    entries = [c for c in commands if isinstance(c, Mapping)] if isinstance(commands, list) else []
    if len(entries) < 2:
        return [str(info.get("command"))]
    lines = []
    for number, entry in enumerate(entries, 1):
        api = f", {entry['api']}() called by" if entry.get("api") else ""
        lines += [
            f"# {number}. started {entry.get('started')}, at step {entry.get('step_at_start')}{api}",
            str(entry.get("command")),
        ]
    return lines


def _final_loss_steps(steps_done: Any) -> str:
    """What the final loss averages: the last (up to) 20 steps of the run's ``steps_done``.

    Examples:
        >>> _final_loss_steps(2), _final_loss_steps(1), _final_loss_steps(500), _final_loss_steps(0)
        ('mean of the last 2 steps', 'loss of the last step', 'mean of the last 20 steps', 'no step recorded')
    """
    n = min(20, steps_done) if isinstance(steps_done, int) and not isinstance(steps_done, bool) else 20
    if n < 1:
        return "no step recorded"
    return "loss of the last step" if n == 1 else f"mean of the last {n} steps"


def _metric_text(value: Any) -> str:
    """A metric value for the card and the summary line (``n/a`` when missing or not finite)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return "n/a"


#: The key of an evaluation entry that describes the evaluator that made it (the trainer's ``_EVALUATOR_KEY``;
#: repeated here so that the card and the summary need no torch).
_EVALUATOR_KEY = "evaluator"


def current_evaluations(
    evaluations: Sequence[Mapping[str, Any]], evaluator: Mapping[str, Any] | None = None
) -> tuple[list[Mapping[str, Any]], int]:
    """The entries of a run's current evaluator, and how many other entries were left out.

    Each entry records the evaluator that made it under ``"evaluator"``
    (:func:`~kl_retrievers.training.trainer.evaluator_description`); a ``--resume`` with other evaluation
    settings keeps the checkpoint's entries beside its own, which are not comparable with them.

    Args:
        evaluations: ``TrainResult.evaluations`` (or the training record's ``evaluations``).
        evaluator: The current evaluator's description; ``None``: the last entry's that records one.

    Returns:
        ``(entries, left_out)``: the entries whose ``"evaluator"`` is ``evaluator``, in their order, and the
        number of the others. When no entry records an evaluator (all written before stop 45), every entry
        is kept (nothing to tell them apart by).

    Examples:
        >>> a, b = {"metric": "ndcg@10"}, {"metric": "mrr@10"}
        >>> current_evaluations([{"step": 2, "evaluator": a}, {"step": 4, "evaluator": b}], a)
        ([{'step': 2, 'evaluator': {'metric': 'ndcg@10'}}], 1)
        >>> current_evaluations([{"step": 2}, {"step": 4}])
        ([{'step': 2}, {'step': 4}], 0)
    """
    described = [e.get(_EVALUATOR_KEY) for e in evaluations if isinstance(e.get(_EVALUATOR_KEY), Mapping)]
    if not described:
        return list(evaluations), 0
    wanted = evaluator if evaluator is not None else described[-1]
    entries = [e for e in evaluations if e.get(_EVALUATOR_KEY) == wanted]
    return entries, len(evaluations) - len(entries)


def evaluation_summary(
    evaluations: Sequence[Mapping[str, Any]], metric: str, evaluator: Mapping[str, Any] | None = None
) -> str:
    """One line on the evaluations of a run's current evaluator: the last one and the best one.

    Only the entries of ``evaluator`` count (:func:`current_evaluations`; ``None``: the last entry's evaluator):
    after a ``--resume`` with other evaluation settings the earlier entries measure something else.

    Examples:
        >>> evaluation_summary([{"step": 2, "ndcg@10": 0.5}, {"step": 4, "ndcg@10": 0.25}], "ndcg@10")
        'ndcg@10 0.2500 at the end (step 4); best 0.5000 at step 2 (2 evaluations)'
    """
    entries, left_out = current_evaluations(evaluations, evaluator)
    others = f"; {left_out} not recorded as this evaluator's left out" if left_out else ""
    if not entries:
        return f"{metric}: no evaluation ran" + (f" ({others[2:]})" if others else "")
    last = entries[-1]
    text = f"{metric} {_metric_text(last.get(metric))} at the end (step {last.get('step')})"
    known = [e for e in entries if _metric_text(e.get(metric)) != "n/a"]
    if known:
        best = max(known, key=lambda e: float(e[metric]))
        text += f"; best {_metric_text(best[metric])} at step {best.get('step')}"
    n = len(entries)
    return text + f" ({n} evaluation{'s' if n != 1 else ''}{others})"


def _setup_logging(quiet: bool, verbose: int = 0, errors_only: bool = False) -> None:
    """Log lines on stderr for ``python -m kl_retrievers.training.cli`` run as a program (:func:`main` as
    ``__main__``): :func:`run_train` itself leaves logging to its caller (``kl-retrievers train`` sets it up per
    command), and so does a :func:`main` imported and called in-process. INFO unless ``quiet`` (the deprecated
    ``train --quiet``: WARNING); ``verbose`` (``-v``) keeps INFO under ``quiet`` too, as with
    ``kl-retrievers -v train --quiet``, and ``-vv`` is DEBUG; ``errors_only`` (``-q`` before ``train``) is ERROR, on
    the handler too (:func:`~kl_retrievers.cli_common.cli_log_level`, as ``kl-retrievers`` has them)."""
    from kl_retrievers.cli_common import cli_log_level

    root = logging.getLogger()
    if not root.handlers:
        if errors_only:
            level = cli_log_level(0, quiet=True)
        else:
            level = min(cli_log_level(int(verbose)), logging.WARNING if quiet else logging.INFO)
        logging.basicConfig(level=level, format="%(levelname)s %(message)s")
        if errors_only:  # as kl-retrievers -q: a logger with a level of its own does not get past it either
            for handler in root.handlers:
                handler.setLevel(level)


@contextlib.contextmanager
def _training_log_level(hidden: bool) -> Iterator[None]:
    """Unless ``hidden``, show the INFO lines of ``kl_retrievers.training`` (per-step evaluations, mining counts,
    checkpoints) while the run lasts, even when the command line logs at WARNING (no ``-v``); a level set on
    that logger already is kept."""
    training = logging.getLogger("kl_retrievers.training")
    raise_level = not hidden and training.level == logging.NOTSET and training.getEffectiveLevel() > logging.INFO
    if raise_level:
        training.setLevel(logging.INFO)
    try:
        yield
    finally:
        if raise_level:
            training.setLevel(logging.NOTSET)


def _needed_modules(args: argparse.Namespace) -> list[str]:
    """The packages of the ``[train]`` extra that this ``kl-retrievers train`` command imports."""
    needed = ["torch", "transformers"]
    if getattr(args, "lora_r", 0):  # apply_freezing imports peft
        needed.append("peft")
    if getattr(args, "hard_negatives", None) == "bm25":  # mine_bm25_negatives imports bm25s
        needed.append("bm25s")
    return needed


def _refuse_over_data(target: Path, data: list[str], named: str, replaces: str) -> None:
    """Refuse a resolved folder that is or holds a ``--data`` path (a folder inside one is fine: only the
    folder itself is replaced); ``named`` starts the message (``"--out X"``), ``replaces`` says why."""
    for item in data:
        source = user_path(item).resolve()
        if is_within(source, target):
            what = "is" if source == target else "holds"
            raise ValueError(
                f"{named}: it {what} the --data path {item}; {replaces} and would delete training data. "
                "Choose another folder (--overwrite does not allow this)"
            )


def check_train_out(out: str | os.PathLike[str], data: list[str], *, overwrite: bool = False) -> Path:
    """Resolve ``--out`` and refuse it when saving there would delete something that is not an earlier model.

    The save replaces ``--out`` as a whole. A folder that is or holds a ``--data`` path is always refused; a
    non-empty folder that is not a kl_retrievers model folder needs ``overwrite`` (``--overwrite``). A new
    folder inside a ``--data`` folder (``--data d --out d/model``) is fine.

    Returns:
        The resolved (absolute) output folder.

    Examples:
        >>> check_train_out(".", ["."])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --out .: it is the --data path . ...
    """
    given = os.fspath(out)
    if not given.strip():
        raise ValueError("--out is empty; give the output folder of the trained model")
    if given == "-":  # as encode and index: "-" is not stdout here, and a folder named "-" is a surprise
        raise ValueError("--out -: a trained model is a folder, not a stream; give a folder (./- for one named -)")
    target = user_path(given).resolve()
    if target == target.parent:
        raise ValueError(f"--out {given}: is the file-system root; give a folder to save the model in")
    _refuse_over_data(target, data, f"--out {given}", "the save replaces --out as a whole")
    check_output_path(target, "--out", folder=True)
    if target.is_dir() and not overwrite:
        names = sorted(entry.name for entry in target.iterdir())
        if names and not is_saved_encoder(target):
            raise ValueError(
                f"--out {given}: the folder is not empty ({some_names(names)}) and is not a model folder made by "
                "kl_retrievers; the save replaces --out as a whole and would delete them. Choose a new or empty "
                "folder, or pass --overwrite to replace it"
            )
    return target


def _is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a training checkpoint (``state.json`` beside ``trainable.safetensors``)."""
    return (folder / "state.json").is_file()


def check_checkpoint_dir(
    checkpoint_dir: str | os.PathLike[str] | None,
    out: Path,
    data: list[str],
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Resolve the checkpoint folder and refuse it when a checkpoint would delete something else.

    Each checkpoint replaces the folder as a whole (``<out>.checkpoint`` when ``checkpoint_dir`` is
    ``None``). A folder that is or holds a ``--data`` path, that is, holds or lies inside ``out`` (the
    resolved ``--out``) is always refused; a non-empty folder that is not a training checkpoint (no
    ``state.json``) needs ``overwrite`` (``--overwrite``). A new folder, an empty one or an earlier
    checkpoint (what ``--resume`` reads) is fine. A symbolic link is replaced by the first checkpoint, not
    followed, so it needs ``overwrite``, with ``resume`` too (as ``train_encoder(..., resume=True)`` refuses
    it): the refusal of a resume names the folder the link points to, which ``--checkpoint-dir`` may name instead.

    Returns:
        The folder to pass to the trainer (``~`` expanded; not resolved, so a link is replaced, not followed).

    Examples:
        >>> check_checkpoint_dir(".", Path("/tmp/m"), ["."])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --checkpoint-dir .: it is the --data path . ...
    """
    if checkpoint_dir is None:
        folder = out.with_name(out.name + ".checkpoint")
        given = f"{folder} (the default, <--out>.checkpoint)"
        flag = "the checkpoint folder"
    else:
        given = os.fspath(checkpoint_dir)
        if not given.strip():
            raise ValueError("--checkpoint-dir is empty; give a folder for the checkpoints (or leave it out)")
        folder = user_path(given)
        flag = "--checkpoint-dir"
    target = folder.resolve()
    if target == target.parent:
        raise ValueError(f"{flag} {given}: is the file-system root; give a folder for the checkpoints")
    why = "each checkpoint replaces the folder as a whole and would delete"
    _refuse_over_data(target, data, f"{flag} {given}", "each checkpoint replaces the folder as a whole")
    if is_within(out, target) or is_within(target, out):
        what = "is" if out == target else ("holds" if is_within(out, target) else "lies inside")
        raise ValueError(
            f"{flag} {given}: it {what} the --out folder {out}; {why} the model, and saving the model would delete "
            "the checkpoint. Choose a folder beside --out (the default is <--out>.checkpoint)"
        )
    check_output_path(target, flag, folder=True)
    refuse_other_folder(  # a link is judged alike with --resume: its checkpoints would replace the link
        folder,
        is_ours=_is_checkpoint,
        overwrite=overwrite,
        flag="--overwrite",
        where=f"{flag} {given}",
        resume_as=f": --checkpoint-dir {shlex.quote(str(target))}" if resume else None,
    )
    return folder


# TrainConfig's fields whose flag is not "--" + the field with dashes
_CONFIG_FLAGS = {"warmup_steps": "--warmup", "time_budget_s": "--time-budget"}
_FIELD_MESSAGE = re.compile(r"^([a-z_]+) (must be )")
# TrainConfig's fields whose None ("... or None" in its messages) is what leaving the flag out gives: None cannot be
# typed on the command line, so the message says that instead
_CONFIG_UNSET = {
    "warmup_steps": "the default, 10% of --steps",
    "var_lr": "the default, --lr",
    "max_grad_norm": "no clipping, the default",
    "time_budget_s": "no time limit, the default",
}


def _with_flag_name(message: str) -> str:
    """A :class:`~kl_retrievers.training.TrainConfig` message that starts with a field name, with the flag instead.

    Where the field's ``None`` means something (no clipping, the default warm-up, ...), the message says to leave
    the flag out instead of offering ``None``, which cannot be typed.

    Examples:
        >>> _with_flag_name("warmup_steps must be an integer >= 0 or None; got -1")
        '--warmup must be an integer >= 0; got -1 (leave --warmup out for the default, 10% of --steps)'
        >>> _with_flag_name("lr must be a finite number > 0; got 0.0")
        '--lr must be a finite number > 0; got 0.0'
        >>> _with_flag_name("max_grad_norm must be a finite number > 0 or None; got 0.0")
        '--max-grad-norm must be a finite number > 0; got 0.0 (leave --max-grad-norm out for no clipping, the default)'
    """
    found = _FIELD_MESSAGE.match(message)
    if found is None:
        return message
    field = found.group(1)
    flag = _CONFIG_FLAGS.get(field, "--" + field.replace("_", "-"))
    text = f"{flag} {message[len(field) + 1 :]}"
    unset = _CONFIG_UNSET.get(field)
    if unset is not None and " or None; got " in text:
        text = text.replace(" or None; got ", "; got ", 1) + f" (leave {flag} out for {unset})"
    return text


def _check_args(args: argparse.Namespace, *, checkpoint: Path | None = None) -> None:
    """Refuse bad flag values and combinations before anything is loaded (messages name the flag and value).

    ``checkpoint``: the folder of the checkpoint a ``--resume`` continues (the flags it was written with are
    accepted where a new run would refuse them: :func:`_refuse_flags_the_pool_softmax_ignores`).
    """
    from kl_retrievers.training.trainer import check_device

    if args.device is not None:
        check_device(args.device, "--device")
    for flag, attr in (("--beta", "beta"), ("--init-variance", "init_variance")):
        value = getattr(args, attr)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{flag} must be a finite number > 0; got {value}")
    if args.time_budget is not None and (not math.isfinite(args.time_budget) or args.time_budget < 0):
        raise ValueError(
            f"--time-budget must be a finite number of minutes >= 0 (0: stop after one step); got {args.time_budget}"
        )
    for flag, value in (("--mine-mode", getattr(args, "mine_mode", None)), ("--mine-k", args.mine_k)):
        if value is not None and args.hard_negatives == "none":
            raise ValueError(
                f"{flag} {value} applies to mined negatives, and --hard-negatives is none: add "
                f"--hard-negatives bm25 or model, or drop {flag}"
            )
    _refuse_flags_the_pool_softmax_ignores(args, checkpoint)
    if not args.heads_only_cached:
        fast = [
            flag
            for flag, given in (("--no-full-corpus", args.no_full_corpus), ("--corpus-sample", args.corpus_sample))
            if given
        ]
        if fast:
            raise ValueError(
                f"{' and '.join(fast)} appl{'ies' if len(fast) == 1 else 'y'} only to the fast path "
                "(--heads-only-cached), and this run trains the encoder: drop "
                f"{'it' if len(fast) == 1 else 'them'}, or add --heads-only-cached"
            )
    if args.init_from:
        given = [flag for flag, attr, default in _SHAPE_FLAGS if getattr(args, attr) != default]
        if given:
            raise ValueError(
                f"--init-from {args.init_from} loads the saved encoder with its own shape, so {', '.join(given)} "
                "would be ignored; drop them, or start from --base instead of --init-from"
            )
    if args.loss != "contrastive":
        beir = [d for d in args.data if user_path(d).is_dir()]
        if beir and not args.teacher:
            raise ValueError(
                f"--loss {args.loss} needs teacher scores for every positive and negative, and the BEIR folder "
                f"{beir[0]} has none: add --teacher (with --hard-negatives bm25 or model), use JSONL data with "
                "teacher_scores, or use --loss contrastive"
            )
        if beir and args.hard_negatives == "none":
            raise ValueError(
                f"--loss {args.loss} needs hard negatives, and the BEIR folder {beir[0]} has none: add "
                "--hard-negatives bm25 or model, or use --loss contrastive"
            )


def _refuse_flags_the_pool_softmax_ignores(args: argparse.Namespace, checkpoint: Path | None = None) -> None:
    """Refuse the negatives' flags where the fast path's contrastive softmax over the pool never reads them.

    With ``--heads-only-cached``, ``--loss contrastive`` and the full-corpus softmax (no ``--no-full-corpus``),
    every query is scored against the pool: the whole of it (``--corpus-sample 0``, the default), so the batch's
    hard negatives (``--negatives``, mined ones: ``--hard-negatives``, ``--mine-k``, ``--mine-mode``) never
    enter the loss; or ``--corpus-sample N`` random documents plus every candidate of the batch, so
    ``--no-in-batch`` (own candidates only) does not apply. Given there, they would play no part in the loss
    (mining's time spent for nothing), as ``--corpus-sample`` and ``--no-full-corpus`` would be ignored outside
    the fast path. The weights are not always the same, though: the negatives' random draws share each
    micro-batch's stream with the draw of each query's positive, so for queries judged several positives they
    change which one trains (a change of stream would change every run's weights, so it stays).

    Versions before 8a50347 accepted them, and recorded them in the checkpoint: a ``--resume`` of ``checkpoint``
    written with them (:func:`_pool_softmax_flags_of`) accepts the same values, with one WARNING, so that the run
    ends as it started (the recipe check then holds it to all of them).
    """
    if not args.heads_only_cached or args.loss != "contrastive" or args.no_full_corpus:
        return
    if not args.corpus_sample:
        given = [
            (flag, value)
            for flag, value in (
                ("--hard-negatives", None if args.hard_negatives == "none" else args.hard_negatives),
                ("--mine-k", args.mine_k),
                ("--mine-mode", getattr(args, "mine_mode", None)),
                ("--negatives", args.negatives),
            )
            if value is not None
        ]
        started = _pool_softmax_flags_of(checkpoint) if given and checkpoint is not None else {}
        named = " and ".join(f"{flag} {value}" for flag, value in given)
        if given and started and all(started.get(flag) == value for flag, value in given):
            logger.warning(
                "--resume: the checkpoint %s was started with %s, which an earlier version accepted here: the run "
                "continues with the flags it started with. With --heads-only-cached the contrastive softmax runs "
                "over every document of the pool, so they play no part in the loss (mining's time is spent for "
                "nothing), but their random draws decide which positive trains for a query judged several, as in "
                "the run's first part; a new run refuses them (add --corpus-sample N or --no-full-corpus)",
                checkpoint,
                named,
            )
        elif given:
            written = " ".join(f"{flag} {value}" for flag, value in started.items())
            raise ValueError(
                f"{named} would play no part in the loss: with --heads-only-cached the contrastive "
                "softmax runs over every document of the pool (--corpus-sample 0, the default), so the batch's hard "
                "negatives never enter it (their random draws would only change which positive trains, for a query "
                "judged several); add --corpus-sample N (N random pool documents plus the batch's candidates) or "
                f"--no-full-corpus (in-batch and hard negatives), or drop {'it' if len(given) == 1 else 'them'}"
                + (f" (the checkpoint {checkpoint} was written with {written}: resume with those)" if started else "")
            )
    if args.no_in_batch:
        from kl_retrievers.training.trainer import _RESUMES_WITHOUT_IN_BATCH

        raise ValueError(
            "--no-in-batch would be ignored: with --heads-only-cached the contrastive softmax runs over the pool "
            "(every document, or --corpus-sample N of them plus every candidate of the batch), whichever query a "
            "candidate came with; add --no-full-corpus (each query's own candidates only), or drop --no-in-batch"
            f"{_RESUMES_WITHOUT_IN_BATCH if args.resume else ''}"
        )


def _pool_softmax_flags_of(checkpoint: Path) -> dict[str, Any]:
    """The negatives' flags (``{flag: value}``) the checkpoint at ``checkpoint`` was written with on the fast path's
    softmax over the whole pool, where versions before 8a50347 accepted them: ``--hard-negatives`` (with its
    ``--mine-k`` and ``--mine-mode``: a checkpoint that records no mode replaced the given negatives) when it
    mined, ``--negatives`` when it mined or sampled other than the default. Empty when it has none of them, was
    written elsewhere (another loss, path or softmax) or records no recipe.

    Raises:
        ValueError: Its ``state.json`` is damaged (as a resume refuses it: naming the file and the field).
    """
    from kl_retrievers.training.trainer import _LEGACY_MINE_MODE, _read_checkpoint_state, _state_error

    recipe = _read_checkpoint_state(checkpoint).get("recipe")
    if not isinstance(recipe, dict) or recipe.get("mode") != "heads_only_cached":
        return {}
    config, cli = recipe.get("config"), recipe.get("cli")
    state_file = checkpoint / "state.json"
    if "config" in recipe and not isinstance(config, dict):  # damaged: refused as the resume check refuses it
        raise _state_error(state_file, "recipe.config", "an object (the run's TrainConfig)", config)
    if "cli" in recipe and not isinstance(cli, dict):
        raise _state_error(state_file, "recipe.cli", "an object (the run's command-line flags)", cli)
    if not isinstance(config, dict) or not isinstance(cli, dict):
        return {}
    if config.get("loss") != "contrastive" or not config.get("full_corpus", True) or config.get("corpus_sample"):
        return {}
    flags: dict[str, Any] = {}
    mined = cli.get("hard_negatives", "none")
    if mined != "none":
        flags |= {"--hard-negatives": mined, "--mine-k": cli.get("mine_k", _MINE_K)}
        flags["--mine-mode"] = cli.get("mine_mode", _LEGACY_MINE_MODE)
    if flags or config.get("negatives", _NEGATIVES) != _NEGATIVES:
        flags["--negatives"] = config.get("negatives", _NEGATIVES)
    return flags


def _held_out_notes(args: argparse.Namespace) -> list[str]:
    """WARNING lines for training on a test split and for evaluating on the training queries; returns them
    (for the model card). Neither is refused: a user's own data may name its splits otherwise."""
    notes = []
    beir = [d for d in args.data if user_path(d).is_dir()]  # "~/data" included
    if beir and str(args.split).strip().lower() == "test":
        notes.append(
            f"trained on the test split of {', '.join(beir)} (--split {args.split}): test splits are for reporting "
            "only; a model trained on one has seen the queries it would be tested on"
        )
    eval_data = getattr(args, "eval_data", None)
    if eval_data is not None:
        source = user_path(eval_data).resolve()
        if args.eval_split == args.split and any(user_path(d).resolve() == source for d in beir):
            notes.append(
                f"--eval-data {eval_data} --eval-split {args.eval_split} is training data (--data, --split "
                f"{args.split}): the evaluation during training is on the training queries, not held out"
            )
    for note in notes:
        logger.warning("%s", note)
    return notes


_EVAL_FLAGS: tuple[tuple[str, str, Any], ...] = (
    ("--eval-split", "eval_split", "dev"),
    ("--eval-every", "eval_every", 0),
    ("--eval-metric", "eval_metric", "ndcg@10"),
)


def _load_eval_data(args: argparse.Namespace, out: Path, ckpt: Path) -> Any:
    """``--eval-data``: refuse bad evaluation flags and load the split, before the training data and the backbone.

    Returns:
        The loaded :class:`~kl_retrievers.datasets.BeirDataset`, or ``None`` without ``--eval-data``.

    Raises:
        ValueError: ``--eval-split``/``--eval-every``/``--eval-metric`` without ``--eval-data``; a folder that is
            not a BEIR folder, a split it lacks (naming the available ones), a metric that is not one of the
            reported ones, or ``--out`` / the checkpoint folder being or holding ``--eval-data``.
    """
    from kl_retrievers.datasets import DatasetError, load_beir
    from kl_retrievers.evaluation import METRICS, _metric_names

    folder = getattr(args, "eval_data", None)
    if folder is None:
        given = [flag for flag, attr, _ in _EVAL_FLAGS if getattr(args, attr, None) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} the evaluation of --eval-data, which "
                "is not given; add --eval-data DIR (a BEIR folder) or drop them"
            )
        return None
    for _, attr, default in _EVAL_FLAGS:  # the defaults of the flags not given
        if getattr(args, attr, None) is None:
            setattr(args, attr, default)
    metric = args.eval_metric
    reported = None
    if isinstance(metric, str):  # argparse's choices refuse others already; a Namespace built in code may not
        with contextlib.suppress(ValueError):
            reported = _metric_names(metric)[0]  # nDCG@10 -> ndcg@10, as RetrievalEvaluator and evaluate_model
    if reported is None:
        raise ValueError(
            f"--eval-metric must be one of {sorted(METRICS)} (any case, or ir_measures' "
            f"{', '.join(METRICS.values())}); got {metric!r}"
        )
    args.eval_metric = reported  # recorded in the card and the evaluations under the reported name
    if not str(folder).strip():
        raise ValueError("--eval-data is empty; give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    source = user_path(folder).resolve()
    for target, named in ((out, f"--out {args.out}"), (user_path(ckpt).resolve(), f"the checkpoint folder {ckpt}")):
        if is_within(source, target):
            what = "is" if source == target else "holds"
            raise ValueError(
                f"{named}: it {what} the --eval-data folder {folder}; saving replaces it as a whole and would delete "
                "the evaluation data. Choose another folder"
            )
    try:
        return load_beir(folder, args.eval_split, unknown_docs=getattr(args, "unknown_docs", "error"))
    except DatasetError as exc:
        spelled = exc.describe(lambda keyword, value: f"--{keyword.replace('_', '-')} {value}")
        raise ValueError(f"--eval-data {folder} (--eval-split {args.eval_split}): {spelled}") from None


def _check_resume_early(
    ckpt: Path, cfg: Any, ts: Any, heads_only: bool, cli_recipe: dict[str, Any]
) -> dict[str, Any] | None:
    """``--resume``: refuse a changed recipe right after the data is loaded, before the backbone and features.

    Compares everything but the encoder's shape (known only once the encoder is loaded; the trainer checks
    the whole recipe again) with the trainer's own helpers. Returns the checkpoint's ``state.json``, its fields'
    types checked (:func:`~kl_retrievers.training.trainer._read_checkpoint_state`), or ``None`` when there is no
    checkpoint.
    """
    from kl_retrievers.training.trainer import (
        _check_resume_recipe,
        _check_resume_steps,
        _find_checkpoint,
        _read_checkpoint_state,
        _state_error,
        training_recipe,
    )

    found = _find_checkpoint(ckpt)
    if found is None:
        return None
    # a damaged state.json (unreadable, nested too deep, a field of another type) is refused here as the trainer
    # refuses it: a ValueError naming the file and the field
    meta = _read_checkpoint_state(found)
    _check_resume_steps(found, meta, cfg.steps)  # a checkpoint past --steps: refused before the backbone
    saved = meta.get("recipe")
    if saved is None:
        return meta  # an older checkpoint: the trainer warns that it cannot be checked
    config = saved.get("config")
    if "config" in saved and not isinstance(config, dict):  # not a recipe difference: the file is damaged
        raise _state_error(found / "state.json", "recipe.config", "an object (the run's TrainConfig)", config)
    # the encoder's shape is left out on both sides: the trainer compares it once the encoder is loaded
    now = training_recipe(cfg, ts, None, mode="heads_only_cached" if heads_only else "encoder", cli=cli_recipe)
    _check_resume_recipe(found, {"recipe": {k: v for k, v in saved.items() if k != "encoder"}}, now)
    return meta


#: The fields of a transformers ``config.json`` that count the encoder's layers (BERT-likes, DistilBERT, GPT-2-likes,
#: T5-likes); the first one present is read.
_LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layers", "n_layer", "num_layers")


def _local_config_file(name: str, *, bundled: bool) -> Path | None:
    """The ``config.json`` of the model ``name`` where it is known without a download: a local folder's, a bundled
    model's (``bundled``: ``--init-from`` takes one) or the Hugging Face cache's copy of a hub id's; ``None``
    elsewhere (what the loader finds then, it checks itself). Nothing is downloaded, the hub is never asked.
    """
    from kl_retrievers.hub import BUNDLED_DIR, BUNDLED_PREFIX, OFFLINE_COPIES, _hub_id, bundled_name, is_path_name

    if bundled:
        found = bundled_name(name)
        if found is not None:
            return BUNDLED_DIR / found / "config.json"
        if name.startswith(BUNDLED_PREFIX):  # no such bundled model: its loader says so
            return None
    local = user_path(name)
    if local.is_dir():
        return local / "config.json"
    if local.exists() or is_path_name(name):  # a file, or a folder that is not there: never a hub id
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    cached = try_to_load_from_cache(_hub_id(name, OFFLINE_COPIES.get(name, ())), "config.json")
    return Path(cached) if isinstance(cached, str) else None  # not cached (None), or cached as missing


def _configured_layer_count(args: argparse.Namespace) -> tuple[int, str] | None:
    """The layer count of the backbone a run with ``args`` trains, as its configuration says, no weight loaded.

    ``--init-from``: the ``backbone_config`` its ``config.json`` records (a bundled name's too); else ``--base``'s
    ``config.json``. Only what is known without a download is read (:func:`_local_config_file`: a local folder, a
    bundled model, the Hugging Face cache): a hub id not cached yet is downloaded by its loader, once.

    Returns:
        ``(layers, what)``, ``what`` naming the flag and value for messages; ``None`` when the configuration cannot
        tell (not known locally, no such field, a file that cannot be read): the loaded backbone is checked then
        (:func:`~kl_retrievers.training.trainer.check_freeze_layers`), and its loader reports what is wrong.
    """
    init_from = args.init_from
    named = f"--init-from {init_from}" if init_from else f"--base {args.base}"
    try:
        file = _local_config_file(str(init_from or args.base), bundled=bool(init_from))
        # a regular file only: never a FIFO's read
        config = json.loads(file.read_text(encoding="utf-8")) if file is not None and file.is_file() else None
    except Exception as exc:  # best effort: the loader gives its own error, with its context, later
        logger.debug("--freeze-layers: the layer count of %s is not known before loading it (%s)", named, exc)
        return None
    if init_from and isinstance(config, dict):
        config = config.get("backbone_config")
    if not isinstance(config, dict):
        return None
    for field in _LAYER_COUNT_FIELDS:
        value = config.get(field)
        if type(value) is int and value > 0:  # a bool is not a count
            return value, named
    return None


def _check_freeze_layers_early(args: argparse.Namespace) -> None:
    """Refuse ``--freeze-layers N`` above the backbone's layer count, read from its configuration
    (:func:`_configured_layer_count`), before the data and the backbone are loaded; the loaded backbone is checked
    again (:func:`~kl_retrievers.training.trainer.check_freeze_layers`), also where the configuration cannot tell.

    Raises:
        ValueError: Names ``N``, the layer count, where it was read and the values allowed (the message of
            :func:`~kl_retrievers.training.trainer.check_freeze_layers`).
    """
    from kl_retrievers.training.trainer import _freeze_layers_refusal

    if not args.freeze_layers:
        return
    found = _configured_layer_count(args)
    if found is None:
        return
    layers, named = found
    if args.freeze_layers > layers:
        raise _freeze_layers_refusal(args.freeze_layers, layers, f"{named}, as its config.json says")


def run_train(args: argparse.Namespace) -> int:
    """Run ``kl-retrievers train`` with parsed arguments; returns the exit status.

    The INFO lines of ``kl_retrievers.training`` (evaluations during training, mining counts, checkpoints) are
    shown even without ``-v``; ``-q`` before ``train`` (``args.errors_only``: errors only) hides them. The progress
    bars follow ``--progress`` / ``--no-progress`` (by default: on a terminal only). ``train --quiet``, the
    deprecated old name of ``--no-progress``, logs a warning and hides the INFO lines too, unless ``-v`` (the
    whole command's log level) is given, which wins.

    Examples:
        >>> run_train(parser.parse_args(["train", "--data", "ds", "--out", "model"]))  # doctest: +SKIP
        0
    """
    deprecated_quiet = bool(getattr(args, "deprecated_quiet", False))
    if deprecated_quiet:
        logger.warning(_DEPRECATED_QUIET_TRAIN)
    with _training_log_level(deprecated_quiet or bool(getattr(args, "errors_only", False))):
        return _run_train(args)


def _run_train(args: argparse.Namespace) -> int:
    from kl_retrievers.training.data import require_train_extra

    # before any import of them, and before hours of feature extraction: one line naming the [train] extra (torch's
    # extra lacks peft and bm25s), not a traceback
    require_train_extra("kl-retrievers train", *_needed_modules(args))
    import torch

    from kl_retrievers.datasets import DatasetError
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.training.data import (
        load_training_data,
        mine_bm25_negatives,
        mine_negatives_from_scores,
        unique_data_paths,
    )
    from kl_retrievers.training.features import compute_features, default_feature_cache_dir
    from kl_retrievers.training.losses import score_matrix
    from kl_retrievers.training.trainer import (
        _RESUMES_WITHOUT_IN_BATCH,
        TrainConfig,
        TrainingDivergedError,
        _check_negatives_exist,
        _check_teacher,
        _find_checkpoint,
        _invocations,
        _started_now,
        apply_freezing,
        check_freeze_layers,
        encode_from_features,
        evaluator_description,
        prefixed_queries,
        record_training,
        retrieval_evaluator,
        train_encoder,
        train_heads_cached,
        uses_teacher_scores,
    )

    command = getattr(args, "command_line", None) or shlex.join(["kl-retrievers", *sys.argv[1:]])
    started = _started_now()
    cache_root = Path(args.cache_dir) if args.cache_dir else None  # the default only where a cache is used (below)
    show = progress_option(args)  # --progress / --no-progress (or the deprecated --quiet)
    show = progress_default(False) if show is None else show  # by default, bars on a terminal only
    ckpt: Path | None = None  # the checkpoint folder, once checked
    earlier: tuple[int, int, int] | None = None  # its state.json before this run (_state_identity)
    try:
        for given in args.data:
            if problem := stdin_problem(given, "--data", "give a BEIR folder or a .jsonl file"):
                raise ValueError(problem)
        # a source given twice would count each example twice: dropped with a warning (the card lists it once)
        args.data = [str(d) for d in unique_data_paths(args.data, args.split)]
        # before loading anything (backbone, data, features), not after hours of training
        overwrite = bool(getattr(args, "overwrite", False))
        out = check_train_out(args.out, [str(d) for d in args.data], overwrite=overwrite)
        ckpt = check_checkpoint_dir(
            args.checkpoint_dir, out, [str(d) for d in args.data], overwrite=overwrite, resume=bool(args.resume)
        )
        resume = bool(args.resume)
        # an earlier run's checkpoint that a fresh run keeps until its first save: an interrupt before that save
        # must not offer it as this run's (_resume_hint)
        earlier = None if resume else _state_identity(ckpt)
        found = _find_checkpoint(ckpt) if resume else None
        if resume and found is None:
            # as train_encoder(resume=True): a typo in a folder would otherwise restart from step 0 in silence
            what = "holds no checkpoint (no state.json)" if ckpt.exists() else "does not exist"
            named = (
                f"--checkpoint-dir {shlex.quote(str(args.checkpoint_dir))}"
                if args.checkpoint_dir is not None
                else f"the checkpoint folder {shlex.quote(str(ckpt))} (the default, <--out>.checkpoint)"
            )
            raise ValueError(
                f"--resume: {named} {what}; give the folder of the checkpoint to continue from with "
                "--checkpoint-dir, or drop --resume to start from step 0"
            )
        _check_args(args, checkpoint=found)
        # not given (None, so that _check_args could refuse them where they would be ignored): their defaults
        args.negatives = _NEGATIVES if args.negatives is None else args.negatives
        args.mine_k = _MINE_K if args.mine_k is None else args.mine_k
        heads_only = bool(args.heads_only_cached)
        try:
            cfg = TrainConfig(  # checks the recipe before any data loading, feature extraction or mining
                lr=args.lr if args.lr is not None else (1e-3 if heads_only else 2e-5),
                warmup_steps=args.warmup,
                in_batch=not args.no_in_batch,
                full_corpus=not args.no_full_corpus,
                time_budget_s=args.time_budget * 60 if args.time_budget is not None else None,
                show_progress=show,
                **args_subset(args, "similarity", "loss", "steps", "batch_size", "grad_accum", "negatives", "var_lr"),
                **args_subset(
                    args, "temperature", "corpus_sample", "max_grad_norm", "seed", "checkpoint_every", "device"
                ),
            )
        except ValueError as exc:  # TrainConfig names its fields (warmup_steps); the user typed flags (--warmup)
            message = str(exc) if resume else str(exc).replace(_RESUMES_WITHOUT_IN_BATCH, "")  # only for a resume
            raise ValueError(_with_flag_name(message)) from None
        cfg.check_trains(fast_path=heads_only)
        # from the backbone's config.json, before any data (the loaded backbone is checked again: check_freeze_layers)
        _check_freeze_layers_early(args)
        # before the training data and the backbone: a bad --eval-data / --eval-split fails now, not after training
        eval_dataset = _load_eval_data(args, out, ckpt)
        evaluator = (
            retrieval_evaluator(eval_dataset, metric=args.eval_metric, k=EVAL_DEPTH, similarity=cfg.similarity)
            if eval_dataset is not None
            else None
        )
        eval_every = int(getattr(args, "eval_every", 0) or 0)
        held_out_notes = _held_out_notes(args)  # test splits, evaluation on the training queries: warned, recorded
        # a loss that never reads teacher scores (contrastive): scoring every pair would be wasted
        use_teacher = bool(args.teacher) and uses_teacher_scores(args.loss)
        # only heads-only training (features) and teacher scores use a cache: full training needs no home folder
        if cache_root is None and (heads_only or use_teacher):
            cache_root = default_feature_cache_dir().parent
        feature_cache = None if cache_root is None else cache_root / "features"
        if args.teacher and not use_teacher:
            logger.warning("--teacher is ignored with --loss contrastive, which does not use teacher scores")
        mode = (
            "heads_only_cached"
            if heads_only
            else ("lora" if args.lora_r else "freeze_backbone" if args.freeze_backbone else "full")
        )
        init_from = None
        if args.init_from:
            local = user_path(args.init_from)
            init_from = str(local.resolve()) if local.exists() else str(args.init_from)
        cli_recipe = {
            "mode": mode,
            "freeze_layers": args.freeze_layers,
            "lora_r": args.lora_r,
            "hard_negatives": args.hard_negatives,
            "mine_k": args.mine_k,
            "teacher": use_teacher,
            "init_from": init_from,
            "split": args.split,
        }
        # what mining does with given negatives: keep them (and their teacher scores) where a loss reads teacher
        # scores, append mined ones where it does not; recorded (and checked on --resume) only when mining
        mine_mode = getattr(args, "mine_mode", None) or ("keep" if uses_teacher_scores(args.loss) else "append")
        if args.hard_negatives != "none":
            cli_recipe["mine_mode"] = mine_mode
        # absolute paths: the checkpoint records the sources, and a resume from another folder is the same data
        data = [str(user_path(d).resolve()) if user_path(d).exists() else str(d) for d in args.data]
        unknown_docs = getattr(args, "unknown_docs", "error")
        if unknown_docs != "error":  # recorded (and checked on --resume) only when given: older checkpoints lack it
            cli_recipe["unknown_docs"] = unknown_docs
        try:
            ts = load_training_data(data, split=args.split, unknown_docs=unknown_docs)
        except DatasetError as exc:  # the load_beir option it names (unknown_docs='drop') is a flag here
            raise ValueError(exc.describe(lambda keyword, value: f"--{keyword.replace('_', '-')} {value}")) from None
        # --resume: refuses a changed recipe (or changed data) before the backbone and features; the checkpoint's
        # state.json, checked, gives the invocations it records
        meta = _check_resume_early(ckpt, cfg, ts, heads_only, cli_recipe) if resume else None
        _check_negatives_exist(ts, None)  # mining draws from the same pool: data without a possible negative fails now
        if not use_teacher and args.hard_negatives == "none":
            _check_teacher(ts, cfg)  # the data is final: a distillation loss without teacher scores fails now
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
        if args.freeze_layers:  # refused before features, mining and teacher scores, not after them
            check_freeze_layers(encoder, args.freeze_layers)
        qf = df = None
        if heads_only:
            qf = compute_features(
                encoder, prefixed_queries(encoder, ts.queries), max_length=encoder.config.query_max_length,
                cache_dir=feature_cache, show_progress=show, desc="Query features",
            )  # fmt: skip
            df = compute_features(
                encoder, ts.docs, max_length=encoder.config.max_length, cache_dir=feature_cache,
                show_progress=show, desc="Document features",
            )  # fmt: skip
        if args.hard_negatives == "bm25":
            mine_bm25_negatives(ts, k=args.mine_k, existing=mine_mode)
        elif args.hard_negatives == "model":
            encoded: list[Any] = []  # encoded at the first call: not at all when no query is mined (keep)

            def scores(rows: list[int]) -> Any:
                if not encoded:
                    if qf is not None and df is not None:
                        qg, dg = encode_from_features(encoder, qf), encode_from_features(encoder, df)
                    else:
                        qg = encoder.encode_queries(ts.queries, show_progress_bar=show)
                        dg = encoder.encode_documents(ts.docs, show_progress_bar=show)
                    encoded.extend(torch.from_numpy(a) for a in (qg.mean, qg.var, dg.mean, dg.var))
                qm, qv, dm, dv = encoded
                return score_matrix(qm[rows], qv[rows], dm, dv, "neg_kl").numpy()

            mine_negatives_from_scores(ts, scores, k=args.mine_k, existing=mine_mode, show_progress=show)
        if not use_teacher and args.hard_negatives != "none":
            _check_teacher(ts, cfg, mined=mine_mode)  # names the mining mode that dropped the data's teacher scores
        teacher_label = None
        if use_teacher:
            from kl_retrievers.training.teacher import CrossEncoderTeacher, add_teacher_scores

            teacher = CrossEncoderTeacher(cache_dir=None if cache_root is None else cache_root / "teacher")
            add_teacher_scores(ts, teacher, show_progress=show)
            teacher_label = teacher.label
        # every invocation of the run, recorded by the checkpoints beside the recipe (state.json's "commands", not
        # compared): a resume adds itself to those its checkpoint records
        commands = _invocations(found, meta, command, started)
        checkpoint_recipe = {"cli": cli_recipe}
        if heads_only:
            result = train_heads_cached(
                encoder, ts, cfg, checkpoint_dir=ckpt, resume=resume, query_features=qf, doc_features=df,
                recipe=checkpoint_recipe, evaluator=evaluator, eval_every=eval_every,
                cache_dir=feature_cache,  # the --eval-data split's features (the training data's are given)
                overwrite=overwrite,  # check_checkpoint_dir has refused what --overwrite does not allow
                commands=commands,
            )  # fmt: skip
        else:
            apply_freezing(  # the LoRA adapter's initialisation from --seed too: the same command, the same weights
                encoder,
                freeze_backbone=args.freeze_backbone,
                freeze_layers=args.freeze_layers,
                lora_r=args.lora_r,
                seed=cfg.seed,
            )
            result = train_encoder(
                encoder, ts, cfg, checkpoint_dir=ckpt, resume=resume, recipe=checkpoint_recipe,
                evaluator=evaluator, eval_every=eval_every, overwrite=overwrite, commands=commands,
            )  # fmt: skip
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the one error line names what a --resume continues from
        _name_resume_point(exc, ckpt, bool(args.resume), earlier)
        raise
    except TrainingDivergedError as exc:
        print(f"kl-retrievers train: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"kl-retrievers train: error: {exc}", file=sys.stderr)
        return 2
    final = result.final_loss  # over the whole run, the checkpoint's steps included; NaN when no step is known
    info: dict[str, Any] = {  # with the record's "command" (this invocation's) and "commands" (every invocation)
        "data": [f"{x} (split {args.split})" if user_path(x).is_dir() else str(x) for x in args.data],
        "hard_negatives": args.hard_negatives,
        "teacher": teacher_label,
        "hardware": hardware_description(),
    }
    if args.hard_negatives != "none":
        info["mine_mode"] = mine_mode
    if held_out_notes:
        info["held_out_warnings"] = held_out_notes
    # what each of this run's evaluations records: the card and the summary read only those entries
    description = evaluator_description(evaluator, encoder) if evaluator is not None else None
    if eval_dataset is not None:
        info["evaluation"] = {
            "data": str(user_path(args.eval_data).resolve()),
            "split": args.eval_split,
            "metric": args.eval_metric,
            "every": eval_every,
            "depth": EVAL_DEPTH,
            # what this run's entries record (a resume with other settings keeps the earlier, other ones)
            _EVALUATOR_KEY: description,
        }
        info["evaluations"] = finite_json(result.evaluations)  # every evaluation, the checkpoint's included
    # the record the Python functions write, with this command's entries (the one shared function)
    info = record_training(encoder, cfg, ts, result, recipe=cli_recipe, **info)
    extra_files: dict[str, str | bytes] = {
        "training_losses.json": json.dumps(result.all_losses) + "\n",  # every step, the checkpoint's included
        "README.md": model_card_text(out.name, info),
    }
    # Save only what differs from the base backbone, when there is a base to load it on top of; an encoder
    # with no recorded backbone (one built from a config, or --init-from such a model) saves every weight.
    include_backbone = not encoder.config.backbone
    if include_backbone:
        logger.info("the encoder records no base backbone, so every weight is saved")
    try:  # check_train_out has already refused what --overwrite does not allow; one atomic swap
        encoder.save_pretrained(out, include_backbone=include_backbone, extra_files=extra_files, overwrite=True)
    except KeyboardInterrupt as exc:  # the run's end: its last checkpoint is named as during training
        _name_resume_point(exc, ckpt, bool(args.resume), earlier)
        raise
    loss_text = f"{final:.4f}" if math.isfinite(final) else "n/a (no step recorded)"
    # the command's result on stdout, as encode's and index's one-line summaries
    steps = f"{result.steps_done} step{'' if result.steps_done == 1 else 's'}"
    print(f"saved {out} after {steps} ({result.stopped}); final loss {loss_text}")
    if eval_dataset is not None:
        where = f"{args.eval_data} (split {args.eval_split})"
        summary = evaluation_summary(result.evaluations, args.eval_metric, description)
        print(f"evaluation on {where}: {summary}")
    return 0


def _resume_source(ckpt: Path) -> tuple[Path, bool]:
    """The folder whose ``state.json`` a ``--resume`` of the checkpoint folder ``ckpt`` would read, found without
    changing anything on disk (:func:`~kl_retrievers.training.trainer._find_checkpoint` puts a previous copy back).

    Returns:
        ``(folder, swapped)``: ``ckpt`` itself (``swapped`` false), or, when it holds no ``state.json``, the previous
        copy a checkpoint save interrupted mid-swap left beside it (``swapped`` true): where ``ckpt`` is missing, the
        newest ``.NAME.old-*`` copy holding a ``state.json`` (what :func:`~kl_retrievers._io.recover_dir` restores),
        else the ``NAME.old`` of earlier versions' swap.
    """
    if os.path.lexists(ckpt / "state.json"):
        return ckpt, False
    if not ckpt.exists():
        final = Path(os.path.realpath(ckpt)) if ckpt.is_symlink() else ckpt  # copies lie beside a link's target
        copies = []
        for path in _siblings(final, ("old",)):
            with contextlib.suppress(OSError):
                if path.is_dir() and (path / "state.json").is_file():
                    copies.append((path.stat().st_mtime_ns, path))
        if copies:
            return max(copies)[1], True
    legacy = ckpt.with_name(ckpt.name + ".old")
    if (legacy / "state.json").is_file():
        return legacy, True
    return ckpt, False


def _state_identity(ckpt: Path) -> tuple[int, int, int] | None:
    """Which ``state.json`` a ``--resume`` of the checkpoint folder ``ckpt`` reads (:func:`_resume_source`: device,
    inode, modification time; ``None``: none): a checkpoint save writes a new one, so an unchanged identity means no
    save since it was taken."""
    try:
        info = (_resume_source(ckpt)[0] / "state.json").stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_mtime_ns)


def _name_resume_point(
    exc: KeyboardInterrupt, ckpt: Path | None, resumed: bool, earlier: tuple[int, int, int] | None
) -> None:
    """Give an interrupt of ``train`` the :func:`_resume_hint` of its checkpoint folder ``ckpt`` as its message
    (which ``kl_retrievers.cli`` prints on its one error line); nothing before that folder is known (``None``)."""
    if ckpt is not None:
        exc.args = (_resume_hint(ckpt, resumed, earlier),)


def _resume_hint(ckpt: Path, resumed: bool, earlier: tuple[int, int, int] | None = None) -> str:
    """What an interrupted ``train`` can continue from: the step of the checkpoint in ``ckpt`` and the ``--resume``
    that continues from it (or that none was saved).

    ``earlier``: the :func:`_state_identity` of ``ckpt`` before a run without ``--resume``; a checkpoint still the
    same is an earlier run's (this run saved none), which the line names without advising ``--resume``.

    A checkpoint save interrupted mid-swap (where the folder swap is not atomic) leaves ``ckpt`` missing and its
    previous copy beside it (:func:`_resume_source`), which a ``--resume`` puts back: the line says so. Nothing on disk
    is changed here (an error path): the copy is found, not restored.

    Examples:
        >>> _resume_hint(Path("/nonexistent/m.checkpoint"), False)
        'no checkpoint was saved in /nonexistent/m.checkpoint (--checkpoint-every N saves one every N steps)'
    """
    source, swapped = _resume_source(ckpt)
    state_file = source / "state.json"
    try:  # a regular file only: a FIFO's read would wait for ever
        meta = json.loads(state_file.read_text()) if state_file.is_file() else None
        step = meta.get("step") if isinstance(meta, dict) else None
    except (OSError, ValueError, RecursionError, MemoryError):
        step = None
    if isinstance(step, bool) or not isinstance(step, int):
        step = None
    shown = "unknown" if step is None else step
    # a swap interrupted mid-way: the checkpoint is there, in the previous copy; --resume restores it
    swap = f"a checkpoint save was interrupted mid-swap: {ckpt} holds no checkpoint, and its previous copy {source}"
    if not resumed and earlier is not None and _state_identity(ckpt) == earlier:
        if swapped:
            return (
                f"this run saved no checkpoint; {swap} holds an earlier run's checkpoint of step {shown} (the next "
                "--resume puts it back in place)"
            )
        return f"this run saved no checkpoint; {ckpt} still holds an earlier run's checkpoint of step {shown}"
    again = "the same command again" if resumed else "the same command with --resume"
    if swapped:
        return f"{swap} holds the checkpoint of step {shown}: run {again} to recover it and continue from it"
    if step is None:
        return f"no checkpoint was saved in {ckpt} (--checkpoint-every N saves one every N steps)"
    return f"the last checkpoint, of step {step}, is in {ckpt}: run {again} to continue from it"


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m kl_retrievers.training.cli train ...``).

    Its parser is ``kl-retrievers``' own kind (``kl_retrievers.cli_common._Parser``): ``--help`` honours stdout as
    ``kl-retrievers train --help`` does (closed or full: one line on stderr, exit status 2; a reader that went
    away, 141) and a usage error is one line on stderr (exit status 2).
    """
    from kl_retrievers.cli_common import _Parser, add_global_arguments, add_verbose_to_commands

    parser = _Parser(prog="kl-retrievers")
    # --version, --verbose / -v, --quiet / -q: as kl-retrievers takes them (-v before or after train, -q before it)
    add_global_arguments(parser, quiet=True)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    add_verbose_to_commands(sub, quiet=True)
    args = parser.parse_args(argv)
    if args.errors_only and args.verbose:
        parser.error("--quiet (-q) and --verbose (-v) contradict each other: give one of them")
    args.command_line = shlex.join(["kl-retrievers", *(argv if argv is not None else sys.argv[1:])])
    if __name__ == "__main__":  # run as a program (python -m): its process, so its logging; not when imported
        _setup_logging(args.deprecated_quiet, args.verbose, args.errors_only)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
