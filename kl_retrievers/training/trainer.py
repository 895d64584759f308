"""Training loops: the full encoder (optionally frozen / partly frozen / LoRA) and the cached-features fast path.

Both loops share :func:`_optimise`: AdamW, a linear warm-up then linear decay schedule,
gradient accumulation, bf16 autocast on a GPU, a wall-clock budget (stop cleanly and save),
a checkpoint every N steps, ``resume`` from the last checkpoint, and a clear error on a
NaN/inf loss or on weights an optimiser step left NaN/inf (before any checkpoint of that step).
Queries are encoded behind the encoder's query prefix (:func:`prefixed_queries`), as
``encode_queries`` does; documents as they are.

Determinism and checkpoints (no pickle anywhere): the data sampled at step ``s`` comes from
``numpy.random.default_rng([seed, s, micro])`` and torch's RNG (dropout) is re-seeded from
``(seed, s, micro)`` before every micro-batch, so no RNG state needs saving. A checkpoint
folder holds ``trainable.safetensors`` (every trainable parameter), ``optimizer.safetensors``
(AdamW's per-parameter tensors) and ``state.json`` (step, optimizer param groups, scheduler
state, losses). Resuming restores them, so a resumed run continues at the same step and ends
with the same weights as an uninterrupted one.

Examples:
    >>> cfg = TrainConfig(steps=100, batch_size=16, similarity="neg_kl", loss="contrastive")
    >>> cfg.warmup_steps_resolved()
    10
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shlex
import stat
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from kl_retrievers._encoding import progress_enabled, query_prefix_of
from kl_retrievers._errors import KLRetrieversError
from kl_retrievers._io import (
    LEFTOVER_NAME,
    atomic_dir,
    atomic_file,
    finite_json,
    recover_dir,
    user_path,
)
from kl_retrievers.gaussian import Gaussians, is_real_number
from kl_retrievers.training import _extra_error
from kl_retrievers.training._checkpoint import refuse_other_folder
from kl_retrievers.training.data import TrainExample, TrainingSet, require_train_extra

try:  # the [train] extra: without it, importing this module names the extra (as training.trainer does)
    import torch
    from safetensors.torch import load_file
    from torch import nn

    from kl_retrievers.encoder import GaussianEncoder, save_safetensors
    from kl_retrievers.training import losses as loss_fns
    from kl_retrievers.training.features import Features, compute_features, heads_forward
except ModuleNotFoundError as _missing:
    _named = _extra_error(_missing, __name__)
    if _named is None:
        raise  # the module is there (something inside it is missing): the original error says what
    raise _named from _missing

if TYPE_CHECKING:
    from kl_retrievers._config import Similarity
    from kl_retrievers.datasets import BeirDataset
    from kl_retrievers.training.losses import Loss

logger = logging.getLogger(__name__)

__all__ = [
    "RetrievalEvaluator",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "apply_freezing",
    "check_device",
    "encode_from_features",
    "evaluator_description",
    "merge_lora",
    "prefixed_queries",
    "record_training",
    "retrieval_evaluator",
    "train_encoder",
    "train_heads_cached",
    "training_recipe",
    "uses_teacher_scores",
]


#: What a refusal of ``in_batch=False`` (``--no-in-batch``) where no loss reads it adds for a resume: earlier versions
#: accepted and recorded it there, and such a checkpoint resumes without it (:func:`_reads_in_batch`). Said only
#: where a resume is known (``TrainConfig``, which cannot know, always says it; the command drops it on a fresh run).
_RESUMES_WITHOUT_IN_BATCH = " (a checkpoint written with it resumes without it)"


class TrainingDivergedError(KLRetrieversError, RuntimeError):
    """The loss or a trained weight became NaN or infinite; the run stopped (the last checkpoint is intact)."""


def prefixed_queries(encoder: GaussianEncoder, queries: list[str]) -> list[str]:
    """The query texts as :meth:`~kl_retrievers.GaussianEncoder.encode_queries` sees them: each behind the
    encoder's query prefix (``config.extra["query_prefix"]``, e.g. bge's instruction); documents get none.

    Training encodes (or computes the cached features of) these texts, so that it trains on what
    inference encodes.

    Examples:
        >>> from types import SimpleNamespace
        >>> prefixed_queries(SimpleNamespace(config=SimpleNamespace(extra={"query_prefix": "query: "})), ["cat"])
        ['query: cat']
    """
    prefix = query_prefix_of(encoder.config)
    return [prefix + q for q in queries] if prefix else list(queries)


@dataclass
class TrainConfig:
    """Everything that defines a training run apart from the data and the starting model.

    Attributes:
        similarity: ``"neg_kl"`` (Gaussian), ``"dot"`` or ``"cosine"`` (vector twins).
        loss: ``"contrastive"``, ``"margin_mse"``, ``"listwise"`` or ``"lambdarank"``.
        steps: Optimiser steps.
        batch_size: Queries per micro-batch.
        grad_accum: Micro-batches per optimiser step.
        negatives: Hard negatives sampled per query (random pool documents when a query has none). The fast
            path's contrastive softmax over the whole pool (``full_corpus``, ``corpus_sample`` 0) does not use them.
        lr: Peak learning rate.
        var_lr: Peak learning rate of the variance head (``None``: ``lr``). A lower value (or 0,
            which keeps the initial variances) stops the variance head from memorising the
            training documents before the means have converged.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps (``None``: 10% of ``steps``); then linear decay to 0.
        temperature: Softmax temperature of the contrastive and listwise losses.
        teacher_temperature: Temperature applied to teacher scores in the listwise loss.
        in_batch: Contrastive loss also uses the other queries' documents as negatives. The fast path's
            ``full_corpus`` softmax always does, so :func:`train_heads_cached` refuses ``in_batch=False`` with it;
            the other losses score each query against its own candidates only, so ``in_batch=False`` is refused
            with them.
        full_corpus: Fast path only: contrastive softmax over the whole document pool.
        corpus_sample: Fast path with ``full_corpus``: when > 0, the softmax runs over this many
            random pool documents (re-drawn each step) plus the batch's own candidates instead of
            the whole pool (large-batch sampled softmax; cheaper on a CPU).
        max_grad_norm: Clip the gradient norm (``None``: no clipping).
        seed: Seed of the data order, dropout and head initialisation (give it to :func:`apply_freezing`'s
            ``seed`` too, for a LoRA adapter's initialisation, as ``kl-retrievers train --seed`` does).
        time_budget_s: Stop (and save) after this many seconds of this invocation's optimiser loop
            (``None``: no limit; 0: stop after one step). The clock starts when the first step
            starts: loading, feature extraction, mining and teacher scoring are not counted.
        checkpoint_every: Save a checkpoint every N steps (0: only at the end / on the budget).
        bf16: Autocast to bfloat16 on a GPU (``None``: when CUDA is available).
        device: ``"cpu"``/``"cuda"`` (``None``: CUDA when available).
        show_progress: A tqdm bar with the loss.
    """

    similarity: Similarity = "neg_kl"
    loss: Loss = "contrastive"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    negatives: int = 7
    lr: float = 2e-5
    var_lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    temperature: float = 0.05
    teacher_temperature: float = 1.0
    in_batch: bool = True
    full_corpus: bool = True
    corpus_sample: int = 0
    max_grad_norm: float | None = None
    seed: int = 0
    time_budget_s: float | None = None
    checkpoint_every: int = 0
    bf16: bool | None = None
    device: str | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.similarity not in loss_fns.SIMILARITIES:
            raise ValueError(f"similarity must be one of {loss_fns.SIMILARITIES}; got {self.similarity!r}")
        if self.loss not in loss_fns.LOSSES:
            raise ValueError(f"loss must be one of {loss_fns.LOSSES}; got {self.loss!r}")
        for name, low in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("negatives", 0)):
            _check_int(name, getattr(self, name), low)
        for name in ("corpus_sample", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), 0)
        if self.warmup_steps is not None:
            _check_int("warmup_steps", self.warmup_steps, 0, none_ok=True)
        if self.loss != "contrastive" and not self.in_batch:
            raise ValueError(
                f"in_batch=False (--no-in-batch) would be ignored: only loss 'contrastive' takes in-batch negatives, "
                f"and loss {self.loss!r} scores each query against its own candidates only (its positive and hard "
                f"negatives); drop it{_RESUMES_WITHOUT_IN_BATCH}"
            )
        if self.loss != "contrastive" and self.negatives < 1:
            raise ValueError(
                f"loss {self.loss!r} compares each positive with hard negatives, so it needs negatives >= 1 "
                f"(--negatives); got {self.negatives}"
            )
        _check_number("lr", self.lr, positive=True)
        _check_number("temperature", self.temperature, positive=True)
        _check_number("teacher_temperature", self.teacher_temperature, positive=True)
        _check_number("weight_decay", self.weight_decay, positive=False)
        if self.var_lr is not None:
            _check_number("var_lr", self.var_lr, positive=False, none_ok=True)
        if self.max_grad_norm is not None:
            _check_number("max_grad_norm", self.max_grad_norm, positive=True, none_ok=True)
        if self.time_budget_s is not None:
            _check_number("time_budget_s", self.time_budget_s, positive=False, none_ok=True)  # 0: one step
        if self.device is not None:
            check_device(self.device, "device")
        self.check_trains(fast_path=True)

    def check_trains(self, *, fast_path: bool) -> None:
        """Refuse a contrastive recipe whose softmax holds only the positive (loss 0, nothing trains).

        With ``in_batch`` off and no hard negatives, each query's softmax has one entry; only the
        fast path's ``full_corpus`` softmax (``fast_path=True``) still has negatives.

        Examples:
            >>> TrainConfig(in_batch=False, negatives=0, full_corpus=False)
            Traceback (most recent call last):
            ValueError: in_batch=False (--no-in-batch) with negatives=0 (--negatives 0) and ...
        """
        if self.loss != "contrastive" or self.in_batch or self.negatives:
            return
        if fast_path and self.full_corpus:
            return
        where = (
            "and full_corpus=False (--no-full-corpus)"
            if fast_path
            else "outside the cached-features fast path (full_corpus applies only to --heads-only-cached)"
        )
        raise ValueError(
            f"in_batch=False (--no-in-batch) with negatives=0 (--negatives 0) {where} leaves each query's "
            "contrastive softmax with only its positive: the loss is 0 and nothing trains; drop --no-in-batch or "
            "use --negatives N (N >= 1)"
        )

    def warmup_steps_resolved(self) -> int:
        """Warm-up length actually used."""
        return int(self.warmup_steps) if self.warmup_steps is not None else max(0, self.steps // 10)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def check_device(value: Any, name: str = "device") -> None:
    """Refuse a device string torch cannot parse, a kind other than cpu/cuda, or CUDA without a GPU.

    Examples:
        >>> check_device("foo", "--device")
        Traceback (most recent call last):
        ValueError: --device must be 'cpu', 'cuda' or 'cuda:N' (N a GPU index); got 'foo'
    """
    allowed = "'cpu', 'cuda' or 'cuda:N' (N a GPU index)"
    if not isinstance(value, str):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} must be {allowed}; got {value!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {value!r}: CUDA is not available on this machine (no GPU or a CPU-only torch)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name} {value!r}: no such GPU; this machine has {torch.cuda.device_count()} (cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1})"
            )


def _check_int(name: str, value: Any, low: int, *, none_ok: bool = False) -> None:
    """Refuse a non-integer (bool and float included) or one below ``low``, naming the field.

    Examples:
        >>> _check_int("steps", 0, 1)
        Traceback (most recent call last):
        ValueError: steps must be an integer >= 1; got 0
    """
    allowed = f"an integer >= {low}" + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def _check_number(name: str, value: Any, *, positive: bool, none_ok: bool = False) -> None:
    """Refuse a non-number, bool, NaN/inf, or one out of range (``> 0`` or ``>= 0``), naming the field.

    Examples:
        >>> _check_number("lr", -1.0, positive=True)
        Traceback (most recent call last):
        ValueError: lr must be a finite number > 0; got -1.0
    """
    allowed = f"a finite number {'>' if positive else '>='} 0" + (" or None" if none_ok else "")
    if not is_real_number(value) or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        steps_done: Optimiser steps completed (including those before a resume).
        stopped: ``"finished"`` or ``"time_budget"``.
        losses: Loss of each step run in this invocation.
        seconds: Wall-clock seconds of this invocation.
        resumed_from: Step the run resumed from (``None`` when it started fresh).
        history: Loss of every step from step 0 (the checkpoint's losses before a resume, then
            this invocation's); ``None`` for results built without it (then ``losses`` is used).
        evaluations: Each call of the run's ``evaluator`` as ``{"step": N, **metrics, "evaluator": {...}}``,
            in step order, the checkpoint's before a resume included (a metric that was NaN or infinite reads
            ``None`` after a resume); empty without an evaluator. ``"evaluator"`` describes what produced the
            entry (:func:`evaluator_description`), so that a resume with another evaluator keeps the earlier
            entries apart from its own; entries written before stop 45 have none.
        warmup_steps: The warm-up the run used (a resume keeps its checkpoint's); ``None`` for results built
            without it.
        commands: Every invocation of the run, this one last (``{"command", "started", "step_at_start"}``, and
            ``"api"`` for a Python call; see :func:`train_encoder`'s ``commands``), what the checkpoints record and
            :func:`record_training` writes as ``training.commands``; empty for results built without it.
    """

    steps_done: int
    stopped: str
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None
    history: list[float] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    warmup_steps: int | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_losses(self) -> list[float]:
        """Every step's loss known: :attr:`history` when set, else :attr:`losses`."""
        return list(self.history) if self.history is not None else list(self.losses)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last (up to) 20 steps of the whole run (NaN when no step is known)."""
        tail = self.all_losses[-20:]
        return float(np.mean(tail)) if tail else float("nan")


# ---------------------------------------------------------------------------------- sampling
@dataclass
class _Batch:
    queries: np.ndarray  # (B,) query indices
    cands: np.ndarray  # (B, 1 + n) doc indices; column 0 is the positive
    teacher: np.ndarray | None  # (B, 1 + n) teacher scores
    positives: list[frozenset[int]]  # every judged positive of each query text, over all its examples (for masking)


def _sample(
    ts: TrainingSet,
    cfg: TrainConfig,
    step: int,
    micro: int,
    need_teacher: bool,
    positives_by_query: Mapping[int, frozenset[int]] | None = None,
) -> _Batch:
    """One micro-batch. ``positives_by_query``: :meth:`TrainingSet.positives_by_query` (computed here when
    ``None``); random negatives avoid, and the loss masks, every judged positive of the query text."""
    if positives_by_query is None:
        positives_by_query = ts.positives_by_query()
    rng = np.random.default_rng([cfg.seed, step, micro])
    n_ex = len(ts.examples)
    picks = rng.choice(n_ex, size=min(cfg.batch_size, n_ex), replace=False)
    n_docs = len(ts.docs)
    queries, cands, teacher, positives = [], [], [], []
    for i in picks:
        ex: TrainExample = ts.examples[int(i)]
        pi = int(rng.integers(len(ex.positives)))
        row = [ex.positives[pi]]
        trow = [ex.teacher_positives[pi]] if need_teacher and ex.teacher_positives is not None else []
        if cfg.negatives:
            if ex.negatives:
                replace = len(ex.negatives) < cfg.negatives
                sel = rng.choice(len(ex.negatives), size=cfg.negatives, replace=replace)
                row += [ex.negatives[int(j)] for j in sel]
                if need_teacher and ex.teacher_negatives is not None:
                    trow += [ex.teacher_negatives[int(j)] for j in sel]
            else:
                pos = positives_by_query[ex.query]
                while len(row) < 1 + cfg.negatives:
                    d = int(rng.integers(n_docs))
                    if d not in pos or len(pos) >= n_docs:
                        row.append(d)
        queries.append(ex.query)
        cands.append(row)
        teacher.append(trow)
        positives.append(positives_by_query[ex.query])
    t = np.asarray(teacher, dtype=np.float32) if need_teacher else None
    return _Batch(np.asarray(queries), np.asarray(cands, dtype=np.int64), t, positives)


def uses_teacher_scores(loss: str) -> bool:
    """Whether ``loss`` reads teacher scores (every loss but ``contrastive``).

    Examples:
        >>> uses_teacher_scores("contrastive"), uses_teacher_scores("margin_mse")
        (False, True)
    """
    return loss != "contrastive"


def _check_negatives_exist(ts: TrainingSet, cfg: TrainConfig | None) -> None:
    """Refuse data in which no document can be a negative; warn when ``batch_size`` exceeds the examples.

    When every document of the pool is a judged positive of every query (e.g. one JSONL row and no
    negatives), each softmax holds only positives, which are masked out: the loss is 0 and nothing trains.
    ``cfg=None``: the refusal only (the command line calls it before loading the backbone).
    """
    n_docs = len(ts.docs)
    if ts.examples and all(len(pos) >= n_docs for pos in ts.positives_by_query().values()):
        raise ValueError(
            f"no document can serve as a negative: each of the {n_docs} documents of the pool is a judged positive "
            f"of every query ({len(ts.examples)} examples from {', '.join(ts.sources) or 'the data'}), so the loss "
            "is 0 and nothing trains; add negatives or other documents (e.g. a BEIR folder's corpus)"
        )
    if cfg is not None and cfg.batch_size > len(ts.examples):
        logger.warning(
            "batch_size %d (--batch-size) is larger than the %d training examples; each step uses all %d",
            cfg.batch_size,
            len(ts.examples),
            len(ts.examples),
        )


def _check_teacher(ts: TrainingSet, cfg: TrainConfig, *, mined: str | None = None) -> bool:
    """Refuse a set without examples, and (a loss reading teacher scores) one lacking negatives or teacher scores.

    ``mined``: the mining mode (``existing=``, ``--mine-mode``) that ran, if any; with ``append`` or ``replace``
    the message names it as what dropped the data's own teacher scores of negatives. Returns whether the
    loss reads teacher scores.
    """
    if not ts.examples:
        raise ValueError(
            f"the training set has no examples (queries with a positive): {len(ts.queries)} queries, "
            f"{len(ts.docs)} documents from {', '.join(ts.sources) or 'no source'}"
        )
    if not uses_teacher_scores(cfg.loss):
        return False
    no_negatives = sum(1 for ex in ts.examples if not ex.negatives)
    no_scores = sum(1 for ex in ts.examples if ex.negatives and not ex.has_teacher)
    if no_negatives or no_scores:
        lacking = []
        if no_negatives:
            lacking.append(
                f"{no_negatives} have no negatives (give them in the data, or mine them with --hard-negatives bm25 "
                "or model; a query mining finds nothing for stays without)"
            )
        if no_scores and mined in ("append", "replace"):
            lacking.append(
                f"{no_scores} have negatives but lack teacher scores for some positive or negative: mining with "
                f"existing negatives {mined!r} (--mine-mode {mined}) gave them mined negatives, which have no "
                "teacher score, and dropped the data's own teacher scores of negatives (use --mine-mode keep, the "
                "default with this loss, to keep them and mine only queries without negatives, or --teacher to "
                "score the mined ones)"
            )
        elif no_scores:
            lacking.append(
                f"{no_scores} have negatives but lack teacher scores for some positive or negative (use data with "
                "teacher_scores, or --teacher)"
            )
        raise ValueError(
            f"loss {cfg.loss!r} needs teacher scores for every positive and negative, and hard negatives; of the "
            f"{len(ts.examples)} queries, " + "; ".join(lacking)
        )
    return True


def _loss_from_scores(
    cfg: TrainConfig,
    batch: _Batch,
    cand_scores: torch.Tensor | None,
    matrix: torch.Tensor | None,
    matrix_docs: np.ndarray | None,
) -> torch.Tensor:
    """The configured loss. ``cand_scores``: (B, 1+n); ``matrix``: (B, len(matrix_docs))."""
    if cfg.loss == "contrastive":
        assert matrix is not None and matrix_docs is not None
        col = {int(d): j for j, d in enumerate(matrix_docs.tolist())}
        targets = torch.tensor([col[int(d)] for d in batch.cands[:, 0]], device=matrix.device)
        mask = torch.zeros(matrix.shape, dtype=torch.bool)
        for r, pos in enumerate(batch.positives):
            for d in pos:
                if d in col:
                    mask[r, col[d]] = True
        return loss_fns.contrastive_loss(matrix, targets, temperature=cfg.temperature, mask=mask.to(matrix.device))
    assert cand_scores is not None and batch.teacher is not None
    teacher = torch.from_numpy(batch.teacher).to(cand_scores.device)
    if cfg.loss == "margin_mse":
        return loss_fns.margin_mse_loss(cand_scores, teacher)
    if cfg.loss == "listwise":
        return loss_fns.listwise_kl_loss(
            cand_scores, teacher, temperature=cfg.temperature, teacher_temperature=cfg.teacher_temperature
        )
    return loss_fns.lambdarank_loss(cand_scores, teacher)


# ---------------------------------------------------------------------------------- optimisation
def _batch_loss(
    cfg: TrainConfig,
    batch: _Batch,
    gaussians: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    uniq: np.ndarray,
    inverse: np.ndarray,
    device: torch.device,
) -> torch.Tensor:
    """The loss of one micro-batch from query and unique-candidate Gaussians (both training loops)."""
    qm, qv, dm, dv = gaussians
    if cfg.loss == "contrastive" and cfg.in_batch:
        return _loss_from_scores(cfg, batch, None, loss_fns.score_matrix(qm, qv, dm, dv, cfg.similarity), uniq)
    inv = torch.from_numpy(inverse.reshape(batch.cands.shape)).to(device)
    cand = loss_fns.score_candidates(qm, qv, dm[inv], dv[inv], cfg.similarity)
    if cfg.loss == "contrastive":  # own candidates only: column 0 is the positive
        targets = torch.zeros(len(batch.queries), dtype=torch.long, device=device)
        return loss_fns.contrastive_loss(cand, targets, temperature=cfg.temperature)
    return _loss_from_scores(cfg, batch, cand, None, None)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device, cfg: TrainConfig) -> AbstractContextManager[Any]:
    use = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    if use and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


def _check_finite_weights(named: Mapping[str, nn.Parameter], step: int) -> None:
    """Raise :class:`TrainingDivergedError` when an optimiser step left a trainable weight NaN or infinite
    (a finite loss with an overflowing update); one device sync. Called before any checkpoint of the step."""
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(p).all() for p in named.values()])
    if bool(finite.all()):
        return
    bad = [n for n, ok in zip(named, finite.tolist(), strict=True) if not ok]
    raise TrainingDivergedError(
        f"the weights became NaN or infinite at step {step} ({', '.join(bad[:3])}"
        f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); training stopped. Lower --lr or set "
        "--max-grad-norm; the last checkpoint is unchanged."
    )


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _save_checkpoint(
    folder: Path,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    step: int,
    losses: list[float],
    recipe: Mapping[str, Any] | None = None,
    evaluations: list[dict[str, Any]] | None = None,
    commands: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    params = _trainable(module)
    weights = {n: p.detach().cpu().contiguous() for n, p in params.items()}
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    meta = {
        "step": step,
        "param_names": list(params),
        "param_groups": state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": sched_state,
        "losses": losses,
        "recipe": dict(recipe) if recipe is not None else None,
        "evaluations": finite_json(list(evaluations or [])),  # NaN/inf metrics as null: standard JSON
    }
    if commands is not None:  # beside the recipe, not in it: nothing compares it, older versions ignore it
        meta[_COMMANDS] = [dict(c) for c in commands]
    with atomic_dir(folder) as tmp:  # a crash leaves the previous checkpoint (or a copy recover_dir restores)
        save_safetensors(weights, tmp / "trainable.safetensors", saving=folder)  # a full disk: an OSError
        save_safetensors(tensors, tmp / "optimizer.safetensors", saving=folder)
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
    logger.info("checkpoint at step %d -> %s", step, folder)


def _record_evaluations(folder: Path, evaluations: list[dict[str, Any]]) -> None:
    """Record ``evaluations`` in the checkpoint at ``folder`` (its ``state.json``, replaced atomically).

    An evaluation runs after the checkpoint of its step has been written, so that a failing evaluator (or
    a job killed while it runs) loses no trained step; this adds its result to that checkpoint.
    """
    state_file = folder / "state.json"
    try:
        meta = json.loads(state_file.read_text())
    except (OSError, ValueError, RecursionError, MemoryError):  # no (readable) checkpoint there: nothing to record in
        logger.warning("could not record the evaluations in %s", state_file)
        return
    meta["evaluations"] = finite_json(list(evaluations))
    with atomic_file(state_file) as tmp:
        tmp.write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")


def check_checkpoint_folder(folder: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse a ``checkpoint_dir`` that a checkpoint would replace although it holds something else.

    Each checkpoint replaces its folder as a whole (:func:`~kl_retrievers._io.atomic_dir`): a new path, an empty
    folder or an earlier checkpoint (a ``state.json``) is fine; any other folder (the training data, a user's
    files) only with ``overwrite``. A symbolic link there is never followed: the first checkpoint would replace
    the link itself, so it is refused unless ``overwrite`` (which replaces it, leaving the folder it points to as
    it was), for a resume (``resume``, whose checkpoint :func:`_checked_checkpoint` checks first) as for a new run.

    Raises:
        ValueError: Names the folder, a few of its entries, and how to proceed (for a resume through a link, the
            folder it points to, which a resume may be given instead).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> check_checkpoint_folder(folder, overwrite=True)  # asked for: the checkpoints may replace it
        >>> check_checkpoint_folder(folder)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: checkpoint_dir ...: each checkpoint replaces the folder as a whole: cannot save into ...
    """
    refuse_other_folder(
        folder,
        # any state.json (a damaged one included, which a resume refuses with its own message)
        is_ours=lambda path: os.path.lexists(path / "state.json"),
        overwrite=overwrite,
        flag="overwrite=True",
        where=f"checkpoint_dir {folder}: each checkpoint replaces the folder as a whole",
        resume_as=f", checkpoint_dir={os.fspath(os.path.realpath(folder))!r}" if resume else None,
    )


def _check_inputs(ts: Any, cfg: Any) -> None:
    """Refuse training data that is not a :class:`TrainingSet` and a config that is not a :class:`TrainConfig`.

    Examples:
        >>> _check_inputs([], TrainConfig())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: ts must be a TrainingSet (load_training_data, from_beir, read_jsonl, ...); got list
    """
    if not isinstance(ts, TrainingSet):
        raise TypeError(
            "ts must be a TrainingSet (load_training_data, from_beir, read_jsonl, or TrainingSet.from_rows for rows "
            f"of dicts); got {type(ts).__name__}"
        )
    if not isinstance(cfg, TrainConfig):
        hint = " (TrainConfig(**d) builds one from a dict)" if isinstance(cfg, Mapping) else ""
        raise TypeError(f"cfg must be a TrainConfig{hint}; got {type(cfg).__name__}")


def _find_checkpoint(folder: Path) -> Path | None:
    """The checkpoint to resume from: ``folder``, or the copy an interrupted save left beside it.

    A ``state.json`` that is there but not a regular file (a FIFO, a folder) is ``folder``'s checkpoint, which
    :func:`_read_checkpoint_state` refuses: not "no checkpoint", which would start a resume afresh. A previous
    copy whose ``state.json`` is not a regular file is refused too (:func:`_refuse_special_previous_state`).

    Raises:
        ValueError: No checkpoint is at ``folder``, and a previous copy's ``state.json`` is not a regular file.
    """
    if (folder / "state.json").exists() and not (folder / "state.json").is_file():
        return folder
    if not (folder / "state.json").is_file():
        recover_dir(folder, required="state.json")
    if (folder / "state.json").is_file():
        return folder
    legacy = folder.with_name(folder.name + ".old")  # the swap of earlier versions, killed between renames
    if (legacy / "state.json").is_file():
        logger.warning("%s is missing or incomplete; resuming from the previous checkpoint %s", folder, legacy)
        return legacy
    _refuse_special_previous_state(folder, legacy)
    return None


def _refuse_special_previous_state(folder: Path, legacy: Path) -> None:
    """Refuse a previous copy of the checkpoint ``folder`` (``.NAME.old-*`` of an interrupted save, or the
    ``legacy`` ``NAME.old``) whose ``state.json`` is there but not a regular file (a FIFO, a folder).

    Neither :func:`~kl_retrievers._io.recover_dir` nor the legacy check takes such a copy, so without this a
    resume would start afresh over it; the file is never opened (a FIFO's read would wait for a writer).

    Raises:
        ValueError: Names the copy's ``state.json`` and what it is instead of a regular file.
    """
    where = folder
    if not folder.exists() and folder.is_symlink():  # a dangling link: the copies are beside where it points
        where = Path(os.path.realpath(folder))
    try:
        entries = sorted(where.parent.iterdir())
    except OSError:
        entries = []
    copies = [legacy]
    for entry in entries:
        match = LEFTOVER_NAME.fullmatch(entry.name)
        if match is not None and match["name"] == where.name and match["kind"] == "old":
            copies.append(entry)
    for copy in copies:
        state_file = copy / "state.json"
        kind = _special_kind(state_file)
        if kind is not None:
            raise ValueError(
                f"--resume: {folder} holds no checkpoint, and the previous copy an interrupted save left beside it "
                f"holds {state_file}, which is {kind}, not a regular file; {_DAMAGED}"
            )


# recipe entries a resume may change: they do not change what a step computes
RESUMABLE_CHANGES = frozenset({"steps", "time_budget_s", "checkpoint_every", "show_progress", "device", "bf16"})

# the command-line flag of each recipe entry (for messages); entries not listed are shown as --name-with-dashes
_FLAGS = {
    "in_batch": "--no-in-batch",
    "full_corpus": "--no-full-corpus",
    "warmup_steps": "--warmup",
    "var_token": "--no-var-token",
    "normalize_pooled": "--no-normalize-pooled",
    "backbone": "--base",
    "data": "--data",
    "mode": "--heads-only-cached/--freeze-backbone/--lora-r",
}


#: what the recipe entries that no flag sets are, for the messages (what trains, as apply_freezing chose it)
_LABELS = {
    "encoder.trainable.lora_r": "LoRA rank, 0: none",
    "encoder.trainable.frozen_parameters": "frozen parameter tensors",
}
#: recipe entries later versions record: compared only when the checkpoint records them too
_ADDED_LATER = ("encoder.trainable.",)
#: The top-level entry of a checkpoint's ``state.json`` that lists the invocations of the run, the command line's and
#: the Python functions' (:func:`_saved_commands`): a record beside the recipe, which a resume adds to and nothing
#: compares (versions before it ignore it).
_COMMANDS = "commands"
#: What each invocation records.
_INVOCATION_KEYS = ("command", "started", "step_at_start")
#: What an invocation by a Python call records too: the function called (``kl_retrievers.training.train_encoder``);
#: its ``command`` is the Python process's command line (:func:`_python_invocation`).
_API = "api"
#: Entries of a checkpoint's recipe that record the run rather than shape it, never compared: the invocations, which
#: the checkpoints of one development version kept in the recipe (now :data:`_COMMANDS`, beside it).
_RECORDS = ("cli.commands",)


def _flag(key: str) -> str:
    name = key.rsplit(".", 1)[-1]
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _entry_name(key: str) -> str:
    """How a message names recipe entry ``key``: its flag and the entry, or the entry and what it is (no flag)."""
    label = _LABELS.get(key)
    return f"{key} ({label})" if label else f"{_flag(key)} ({key})"


def _flatten(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, Mapping) and key != "extra":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: ``cli.mine_mode`` of a checkpoint that mined and records no mode: made before ``--mine-mode``, whose mining
#: replaced the given negatives
_LEGACY_MINE_MODE = "replace"
#: TrainConfig entries read only by the cached-features fast path: earlier versions recorded what was given
#: (and ignored) outside it
_FAST_PATH_ONLY = ("config.full_corpus", "config.corpus_sample")


def _reads_in_batch(recipe: Mapping[str, Any]) -> bool:
    """Whether a run of the (flattened) ``recipe`` reads ``config.in_batch``: only the contrastive loss does, and
    not on the fast path's softmax over the pool (``full_corpus``), which scores every query against the pool.

    Earlier versions accepted ``in_batch=False`` (``--no-in-batch``) where it is not read, and recorded it.

    Examples:
        >>> _reads_in_batch({"mode": "heads_only_cached", "config.loss": "contrastive", "config.full_corpus": True})
        False
        >>> _reads_in_batch({"mode": "encoder", "config.loss": "contrastive", "config.full_corpus": True})
        True
    """
    if recipe.get("config.loss", "contrastive") != "contrastive":
        return False
    return not (recipe.get("mode") == "heads_only_cached" and recipe.get("config.full_corpus", True))


def _recipe_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``flag (key): checkpoint value -> value now`` for each recipe entry a resume may not change.

    What older checkpoints recorded otherwise is read as what it meant: a checkpoint that mined
    (``cli.hard_negatives`` not ``none``) and records no ``cli.mine_mode`` replaced the given negatives
    (``replace``); the same ``data`` source listed twice is that source once; ``full_corpus`` and
    ``corpus_sample`` are compared only when a side trained on the fast path (``mode`` ``heads_only_cached``);
    ``in_batch`` only when a side reads it (:func:`_reads_in_batch`: a checkpoint an earlier version wrote with
    ``--no-in-batch`` where it was ignored resumes without it); ``cli.mine_k`` only when a side mined (an earlier
    version's ``--mine-k`` without ``--hard-negatives`` mined nothing); entries later versions added (what trains,
    ``encoder.trainable``) only when the checkpoint records them; the invocations that one development version kept in
    the recipe (``cli.commands``, now beside it) never.

    Examples:
        >>> _recipe_differences({"data": ["a", "a"], "cli": {"hard_negatives": "bm25"}},
        ...                     {"data": ["a"], "cli": {"hard_negatives": "bm25", "mine_mode": "replace"}})
        []
    """
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(now)))  # compared as stored (tuples as lists)
    legacy_mine = old.get("cli.hard_negatives", "none") != "none" and "cli.mine_mode" not in old
    if legacy_mine:
        old["cli.mine_mode"] = _LEGACY_MINE_MODE
    for recipe in (old, new):  # a source given twice (kept twice by earlier versions) is that source once
        if isinstance(recipe.get("data"), list):
            recipe["data"] = list(dict.fromkeys(map(str, recipe["data"])))
    fast_path = "heads_only_cached" in (old.get("mode"), new.get("mode"))
    diffs = []
    for key in sorted(set(old) | set(new)):
        # warmup_resolved follows --steps when --warmup is not given; a resume keeps the checkpoint's
        if key.rsplit(".", 1)[-1] in RESUMABLE_CHANGES | {"warmup_resolved"} or key.startswith("encoder.extra"):
            continue
        if key in _FAST_PATH_ONLY and not fast_path:
            continue
        if key == "config.in_batch" and not (_reads_in_batch(old) or _reads_in_batch(new)):
            continue
        if (
            key == "cli.mine_k"
            and old.get("cli.hard_negatives", "none") == new.get("cli.hard_negatives", "none") == "none"
        ):
            continue  # nothing mined: earlier versions recorded a --mine-k given (and ignored) without mining
        if key.startswith(_ADDED_LATER) and key not in old:
            continue
        if key in _RECORDS:
            continue
        if old.get(key) != new.get(key):
            diff = f"{_entry_name(key)}: checkpoint {old.get(key)!r}, now {new.get(key)!r}"
            if key == "cli.mine_mode" and legacy_mine:
                diff += (
                    f" (the checkpoint records no mining mode: it was made before --mine-mode, when mining replaced "
                    f"the given negatives; give --mine-mode {_LEGACY_MINE_MODE} to resume it)"
                )
            diffs.append(diff)
    return diffs


def _check_resume_recipe(folder: Path, meta: Mapping[str, Any], recipe: Mapping[str, Any] | None) -> None:
    """Refuse to resume ``folder`` with a recipe that differs in anything but steps, budget, checkpoints, device,
    or with training data whose content changed (``data_sha256``, :meth:`TrainingSet.data_sha256`; checked when
    the checkpoint records it). A recipe with a ``cli`` entry (the command line's) is told how to proceed in flags,
    another in the Python functions' arguments."""
    saved = meta.get("recipe")
    if recipe is None:
        return
    cli = "cli" in recipe
    resume = "--resume" if cli else "resume"
    if saved is None:
        logger.warning(
            "%s: %s records no recipe (an older checkpoint); cannot check it matches this run", resume, folder
        )
        return
    saved, now = dict(saved), dict(recipe)
    saved_sha, now_sha = saved.pop("data_sha256", None), now.pop("data_sha256", None)
    diffs = _recipe_differences(saved, now)
    if saved_sha is not None and now_sha is not None and saved_sha != now_sha:
        hashes = f"data_sha256 checkpoint {str(saved_sha)[:12]}..., now {str(now_sha)[:12]}..."
        # the same sources (in the same order): their content changed; other sources or another order: the
        # recipe differs there, and the hash with it
        if _recipe_differences({"data": saved.get("data")}, {"data": now.get("data")}):
            diffs.append(f"the training data's content ({hashes})")
        else:
            sources = ", ".join(map(str, now.get("data") or [])) or "the training data"
            also = f" The recipe differs too: {'; '.join(diffs)}." if diffs else ""
            raise ValueError(
                f"{resume}: the training data {sources} is not the data the checkpoint {folder} was trained on: its "
                f"content changed (queries, documents or judgements; {hashes}).{also} Resume with the checkpoint's "
                "data, or start afresh with another "
                + ("--checkpoint-dir (or without --resume)" if cli else "checkpoint_dir (or resume=False)")
            )
    if diffs:
        allowed = (
            "--steps, --time-budget, --checkpoint-every, --progress / --no-progress (or --quiet) and --device; "
            "rerun with the checkpoint's values, or start afresh with another --checkpoint-dir (or without --resume)"
            if cli
            else "steps, time_budget_s, checkpoint_every, show_progress, device and bf16; rerun with the checkpoint's "
            "values, or start afresh with another checkpoint_dir (or resume=False)"
        )
        raise ValueError(
            f"{resume}: the checkpoint {folder} was trained with a different recipe: " + "; ".join(diffs) + ". "
            f"A resume may change only {allowed}"
        )


def _check_resume_steps(folder: Path, meta: Mapping[str, Any], steps: int) -> None:
    """Refuse to resume a checkpoint that is already past ``steps`` (the run's total, the checkpoint's included).

    Resuming it would train nothing and save a model of ``meta["step"]`` steps under a recipe saying ``steps``.

    Examples:
        >>> _check_resume_steps(Path("ckpt"), {"step": 6}, 4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --resume: the checkpoint ckpt is at step 6, past --steps 4 ...
    """
    done = meta.get("step")
    if isinstance(done, int) and not isinstance(done, bool) and done > steps:
        raise ValueError(
            f"--resume: the checkpoint {folder} is at step {done}, past --steps {steps} (--steps counts the whole "
            f"run, the checkpoint's steps included); give --steps {done} or more"
        )


def _warn_fresh_over_checkpoint(folder: Path, *, cli: bool = True) -> None:
    """Warn that a run without ``resume`` will replace the checkpoint an earlier run left in ``folder``
    (``cli``: the command line's run, told in its flags; otherwise in the Python functions' arguments)."""
    state = folder / "state.json"
    if not state.is_file():
        return
    try:
        meta = json.loads(state.read_text())
        step = meta.get("step") if isinstance(meta, dict) else None
    except (OSError, ValueError, RecursionError, MemoryError):  # nested too deep: the step is unknown
        step = None
    logger.warning(
        "%s holds the checkpoint of an earlier run (step %s); this run starts from step 0 (no %s) and its "
        "first checkpoint replaces it. Pass %s to continue from it instead",
        folder,
        step if step is not None else "unknown",
        "--resume" if cli else "resume=True",
        "--resume" if cli else "resume=True",
    )


_DAMAGED = "the checkpoint is damaged: restore it, or start afresh with another --checkpoint-dir (or without --resume)"


def _state_error(state_file: Path, field: str, what: str, got: Any) -> ValueError:
    """The refusal of a ``state.json`` field: names the file, the field, what it must be and what it is."""
    shown = repr(got)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ValueError(f"--resume: {state_file}: field {field!r} must be {what}; got {shown}; {_DAMAGED}")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _not_regular_file(file: Path) -> str | None:
    """Why ``file`` (a symbolic link followed) is not a regular file to read, e.g. a FIFO whose read would wait
    forever (``None``: it is one, or it is missing: the reader's own error says so)."""
    kind = _special_kind(file)
    return None if kind is None else f"--resume: {file} is {kind}, not a checkpoint file; {_DAMAGED}"


def _special_kind(file: Path) -> str | None:
    """What ``file`` (a symbolic link followed) is when it is there but not a regular file (``"a FIFO"``), else
    ``None`` (a regular file, or nothing there)."""
    try:
        mode = file.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"


def _read_checkpoint_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``state.json``, its fields' types checked (what :func:`_load_checkpoint` reads).

    Raises:
        ValueError: The file cannot be read, is not JSON (or nested too deep for the parser) or not an object, or
            a field is missing or of another type; the message names the file and the field.
    """
    state_file = folder / "state.json"
    special = _not_regular_file(state_file)
    if special is not None:
        raise ValueError(special)
    try:
        meta = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, MemoryError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(
            f"--resume: {state_file} cannot be read as JSON ({type(exc).__name__}: {str(exc)[:200]}); {_DAMAGED}"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"--resume: {state_file} must hold a JSON object; got a JSON {type(meta).__name__}; {_DAMAGED}"
        )
    for key in ("step", "param_names", "param_groups", "optimizer_scalars", "scheduler", "losses"):
        if key not in meta:
            raise ValueError(f"--resume: {state_file} lacks the field {key!r}; {_DAMAGED}")
    step = meta.get("step")
    if not _is_index(step):
        raise _state_error(state_file, "step", "a non-negative integer", step)
    names = meta.get("param_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise _state_error(state_file, "param_names", "a list of parameter names", names)
    groups = meta.get("param_groups")
    if not (
        isinstance(groups, list)
        and groups
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
        and all(_is_index(i) for g in groups for i in g["params"])
    ):
        raise _state_error(
            state_file, "param_groups", "a list of optimiser groups, each with its 'params' indices", groups
        )
    for g in groups:
        for key in ("lr", "initial_lr", "weight_decay", "eps"):
            if key in g and not (is_real_number(g[key]) and math.isfinite(g[key])):
                raise _state_error(state_file, f"param_groups.{key}", "a finite number", g[key])
    scalars = meta.get("optimizer_scalars")
    if not (
        isinstance(scalars, dict)
        and all(k.isascii() and k.isdigit() and isinstance(v, dict) for k, v in scalars.items())
        and all(is_real_number(x) and math.isfinite(x) for v in scalars.values() for x in v.values())
    ):
        raise _state_error(
            state_file, "optimizer_scalars", "an object of parameter index -> {name: finite number}", scalars
        )
    if not isinstance(meta.get("scheduler"), dict):
        raise _state_error(
            state_file, "scheduler", "an object (the learning-rate scheduler's state)", meta.get("scheduler")
        )
    losses = meta.get("losses")
    if not (isinstance(losses, list) and all(is_real_number(x) and math.isfinite(x) for x in losses)):
        raise _state_error(state_file, "losses", "a list of finite numbers", losses)
    if meta.get("recipe") is not None and not isinstance(meta["recipe"], dict):
        raise _state_error(state_file, "recipe", "an object or null", meta["recipe"])
    _saved_commands(state_file, meta)  # the record of the invocations, when there is one
    return meta


def _saved_commands(state_file: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The invocations of the run that a checkpoint's ``state.json`` (``meta``, read from ``state_file``) records:
    its ``commands`` (or the ``recipe.cli.commands`` of one development version's checkpoints), each
    ``{"command", "started", "step_at_start"}``, and ``"api"`` for a Python call's; none for a checkpoint that
    records none.

    Raises:
        ValueError: The record is not a list of such objects (a str command, a str start time, a non-negative int
            step, a str ``api`` when there is one); the message names the file and the field (the entry's index).

    Examples:
        >>> one = {"command": "kl-retrievers train", "started": "2026-01-01T00:00:00+00:00", "step_at_start": 0}
        >>> _saved_commands(Path("state.json"), {"commands": [one]}) == [one]
        True
    """
    field, entries = _COMMANDS, meta.get(_COMMANDS)
    if entries is None:
        recipe = meta.get("recipe")
        cli = recipe.get("cli") if isinstance(recipe, dict) else None
        field, entries = f"recipe.cli.{_COMMANDS}", cli.get(_COMMANDS) if isinstance(cli, dict) else None
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise _state_error(state_file, field, "a list of invocations", entries)
    for index, entry in enumerate(entries):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("command"), str)
            and isinstance(entry.get("started"), str)
            and _is_index(entry.get("step_at_start"))
            and isinstance(entry.get(_API, ""), str)
        ):
            what = 'an invocation, {"command": str, "started": str, "step_at_start": int >= 0} (and "api": str)'
            raise _state_error(state_file, f"{field}[{index}]", what, entry)
    return [{key: entry[key] for key in (*_INVOCATION_KEYS, _API) if key in entry} for entry in entries]


def _started_now() -> str:
    """When an invocation starts, as its record gives it: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _python_invocation(function: str) -> dict[str, str]:
    """A call of the public training function ``function`` (``"train_encoder"``), started now, as its
    invocation's record gives it: ``command``, the Python process's command line (``python`` and ``sys.argv``:
    the script and its arguments, or a notebook kernel's), and ``api``, the function.

    Examples:
        >>> call = _python_invocation("train_encoder")
        >>> call["api"], call["command"].startswith("python")
        ('kl_retrievers.training.train_encoder', True)
    """
    argv = sys.argv[1:] if sys.argv[:1] == [""] else sys.argv  # "": the interactive interpreter
    return {"command": shlex.join(["python", *argv]), "started": _started_now(), _API: f"{__package__}.{function}"}


def _invocations(
    found: Path | None, meta: Mapping[str, Any] | None, command: str, started: str, api: str | None = None
) -> list[dict[str, Any]]:
    """Every invocation of a run: those the checkpoint a resume continues records (``found``, its folder; ``meta``,
    its ``state.json`` as the resume check read and checked it), then this one.

    Each is ``{"command", "started", "step_at_start"}`` (``started``: UTC, ISO 8601, :func:`_started_now`;
    ``step_at_start``: the checkpoint's step, 0 for a run from scratch), and ``"api"`` (the function) for a Python
    call (:func:`_python_invocation`). A checkpoint of a version that recorded none gives this invocation only; a
    damaged record is refused with the checkpoint (:func:`_saved_commands`).

    Examples:
        >>> _invocations(None, None, "kl-retrievers train --data d", "2026-01-01T00:00:00+00:00")
        [{'command': 'kl-retrievers train --data d', 'started': '2026-01-01T00:00:00+00:00', 'step_at_start': 0}]
    """
    this: dict[str, Any] = {"command": command, "started": started, "step_at_start": 0}
    if api is not None:
        this[_API] = api
    if found is None or meta is None:
        return [this]
    return [*_saved_commands(found / "state.json", meta), this | {"step_at_start": meta["step"]}]


def _read_checkpoint_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; ``ValueError`` naming it when it cannot be read (or is a FIFO, ...)."""
    special = _not_regular_file(file)
    if special is not None:
        raise ValueError(special)
    try:
        return load_file(os.fspath(file))
    except FileNotFoundError:
        raise ValueError(f"--resume: {file} is missing; {_DAMAGED}") from None
    except Exception as exc:  # safetensors' SafetensorError, OSError, MemoryError of a lying header, ...
        raise ValueError(
            f"--resume: {file} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); {_DAMAGED}"
        ) from None


def _optimizer_state(
    file: Path, state_file: Path, meta: Mapping[str, Any], params: list[nn.Parameter]
) -> dict[int, dict[str, Any]]:
    """The optimiser's per-parameter state from ``optimizer.safetensors`` (tensors ``INDEX.NAME``) and ``state.json``
    (``optimizer_scalars``), checked against the parameters: ``ValueError`` naming the file and the entry."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in _read_checkpoint_tensors(file).items():
        idx, _, name = key.partition(".")
        if not (idx.isascii() and idx.isdigit() and int(idx) < len(params) and name):
            raise ValueError(
                f"--resume: {file}: tensor {key!r} is not named PARAMETER_INDEX.NAME with an index below "
                f"{len(params)}; {_DAMAGED}"
            )
        param = params[int(idx)]
        moment = name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        if (moment and value.shape != param.shape) or (name == "step" and value.numel() != 1):
            want = tuple(param.shape) if moment else "one value"
            raise ValueError(
                f"--resume: {file}: tensor {key!r} has shape {tuple(value.shape)}; the parameter needs {want}; "
                f"{_DAMAGED}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"--resume: {file}: tensor {key!r} holds NaN or infinite values; {_DAMAGED}")
        state.setdefault(int(idx), {})[name] = value
    for idx, sc in meta["optimizer_scalars"].items():
        if int(idx) >= len(params):
            raise _state_error(state_file, "optimizer_scalars", f"keyed by parameter indices below {len(params)}", idx)
        state.setdefault(int(idx), {}).update(sc)
    return state


# the scheduler entries every torch's LambdaLR state has; the others differ across torch versions
_SCHEDULER_REQUIRED = ("base_lrs", "last_epoch")


def _check_scheduler_state(state_file: Path, saved: Mapping[str, Any], sched: Any, n_groups: int) -> dict[str, Any]:
    """The ``scheduler`` entries this scheduler has, each checked to be of its own entry's type.

    Entries this torch's scheduler does not have are dropped (logged at debug level): torch versions differ in
    them (``verbose`` in 2.3 to 2.x, ``_is_initial`` in later ones), so a checkpoint written under another torch
    resumes; of the others, only ``base_lrs`` and ``last_epoch`` must be there.
    """
    own = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    for key in _SCHEDULER_REQUIRED:
        if key in own and key not in saved:
            raise ValueError(f"--resume: {state_file} lacks the field 'scheduler.{key}'; {_DAMAGED}")
    kept: dict[str, Any] = {}
    for key, value in saved.items():
        if key not in own:
            logger.debug("--resume: %s: dropping scheduler entry %r (not one of this torch's)", state_file, key)
            continue
        kept[key] = value
        mine = own[key]
        if isinstance(mine, list):
            ok = (
                isinstance(value, list)
                and len(value) == n_groups
                and all(is_real_number(x) and math.isfinite(x) for x in value)
            )
            what = f"a list of {n_groups} finite numbers"
        elif isinstance(mine, bool):
            ok, what = isinstance(value, bool), "true or false"
        elif isinstance(mine, int):
            ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(mine, float):
            ok, what = is_real_number(value) and math.isfinite(value), "a finite number"
        else:
            ok, what = value is None or isinstance(value, type(mine)), f"null or a {type(mine).__name__}"
        if not ok:
            raise _state_error(state_file, f"scheduler.{key}", what, value)
    return kept


def _load_checkpoint(
    folder: Path, meta: Mapping[str, Any], module: nn.Module, opt: torch.optim.Optimizer, sched: Any
) -> tuple[int, list[float]]:
    """Restore the trainable weights, optimiser and scheduler from ``folder`` (``meta``: its ``state.json``, as
    :func:`_read_checkpoint_state` checked it); a damaged file or entry is a ``ValueError`` naming it."""
    state_file = folder / "state.json"
    params = _trainable(module)
    if list(params) != meta["param_names"]:
        raise ValueError(f"checkpoint {folder} was written for other trainable parameters; cannot resume")
    weights_file = folder / "trainable.safetensors"
    weights = _read_checkpoint_tensors(weights_file)
    for n, p in params.items():
        if n not in weights:
            raise ValueError(f"--resume: {weights_file} lacks the tensor {n!r}; {_DAMAGED}")
        if weights[n].shape != p.shape:
            raise ValueError(
                f"--resume: {weights_file}: tensor {n!r} has shape {tuple(weights[n].shape)}; the model's is "
                f"{tuple(p.shape)}; {_DAMAGED}"
            )
        if weights[n].is_floating_point() and not bool(torch.isfinite(weights[n]).all()):
            raise ValueError(f"--resume: {weights_file}: tensor {n!r} holds NaN or infinite values; {_DAMAGED}")
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"--resume: {weights_file} has tensors the model does not train: {unknown[:5]}; {_DAMAGED}")
    own_groups = opt.state_dict()["param_groups"]
    groups = meta["param_groups"]
    if [g["params"] for g in groups] != [g["params"] for g in own_groups]:
        raise _state_error(
            state_file,
            "param_groups",
            f"{len(own_groups)} group(s) over the parameters {[g['params'] for g in own_groups]}"[:200],
            groups,
        )
    state = _optimizer_state(folder / "optimizer.safetensors", state_file, meta, list(params.values()))
    scheduler = _check_scheduler_state(state_file, meta["scheduler"], sched, len(own_groups))
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(
            f"--resume: {state_file} (param_groups, optimizer_scalars) and {folder / 'optimizer.safetensors'} do not "
            f"make an optimiser state ({type(exc).__name__}: {exc}); {_DAMAGED}"
        ) from None
    sched.load_state_dict({**scheduler, "lr_lambdas": [None] * len(opt.param_groups)})
    with torch.no_grad():  # the weights last: a checkpoint refused above leaves the module as it was
        for n, p in params.items():
            p.copy_(weights[n].to(p.device))
    return int(meta["step"]), list(meta["losses"])


def _score_invariant(named: dict[str, nn.Parameter], cfg: TrainConfig) -> list[nn.Parameter]:
    """The trainable parameters the score does not depend on, which the optimiser leaves as they are.

    Under ``neg_kl`` the mean head's bias cancels (-KL depends on ``mu_q - mu_d`` only): its true gradient is 0,
    but its computed one is float noise, which AdamW would normalise into steps of about ``lr`` (and weight
    decay would shrink it), making the saved bias depend on the thread count. ``dot`` and ``cosine`` use it.
    It stays in the optimiser and in checkpoints (their shape is unchanged; an older checkpoint resumes).
    """
    if cfg.similarity != "neg_kl":
        return []
    return [p for n, p in named.items() if n == "mean_head.bias" or n.endswith(".mean_head.bias")]


def _param_groups(named: dict[str, nn.Parameter], cfg: TrainConfig) -> list[dict[str, Any]]:
    """One AdamW group, or two when ``cfg.var_lr`` gives the variance head its own learning rate."""
    if cfg.var_lr is None:
        return [{"params": list(named.values())}]
    var: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in named.items():
        (var if name.startswith("var_head.") or ".var_head." in name else rest).append(p)
    return [g for g in ({"params": rest}, {"params": var, "lr": cfg.var_lr}) if g["params"]]


def training_recipe(cfg: TrainConfig, ts: TrainingSet, encoder: GaussianEncoder | None, **extra: Any) -> dict[str, Any]:
    """What a checkpoint records so that ``resume`` can refuse a changed recipe (JSON-ready).

    The training config (with the warm-up actually used), the data sources and the SHA-256 of their content
    (:meth:`TrainingSet.data_sha256`), the encoder's shape (left out when ``encoder`` is ``None``: the CLI checks
    the rest before loading the encoder) and any ``extra`` entries (e.g. the CLI's mining and freezing options).
    """
    config = cfg.to_dict() | {"warmup_resolved": cfg.warmup_steps_resolved()}
    recipe: dict[str, Any] = {
        "config": config,
        "data": [str(s) for s in ts.sources],
        "data_sha256": ts.data_sha256(),  # a resume refuses data whose content changed at the same path
    }
    if encoder is not None:
        recipe["encoder"] = {k: v for k, v in encoder.config.to_dict().items() if k not in ("extra", "backbone_sha256")}
    return recipe | extra


def record_training(
    encoder: GaussianEncoder,
    cfg: TrainConfig,
    ts: TrainingSet,
    result: TrainResult | None = None,
    *,
    recipe: Mapping[str, Any] | None = None,
    **info: Any,
) -> dict[str, Any]:
    """Record how ``encoder`` was trained in ``encoder.config.extra["training"]`` (what ``save_pretrained`` writes).

    The record's ``recipe`` holds the training config (``similarity`` included: a vector twin is saved, evaluated
    and ranked by its own score, :func:`~kl_retrievers.evaluation.model_similarity`), the warm-up, bf16 and device
    the run used, the ``recipe`` entries given and the encoder's shape; ``trained_splits`` lists the BEIR splits
    trained on (:attr:`~kl_retrievers.training.TrainingSet.splits`: each folder's name, not its path, the split
    and the SHA-256 of its query texts), which ``kl-retrievers evaluate`` warns about when it scores one of them.
    :func:`train_encoder` and :func:`train_heads_cached` call it before their first step (without ``result``) and
    at the end; the command line calls it with its own entries.

    Args:
        encoder: The trained encoder; its ``config.extra["training"]`` is replaced.
        cfg: The run's recipe.
        ts: The training data (its sources and sizes are recorded).
        result: What the run did (steps, stop, time, final loss, evaluations, and its invocations: ``commands``,
            with ``command`` the last one's); ``None``: before the run.
        recipe: Further recipe entries (e.g. the command line's mining and freezing options).
        **info: Further (or replacing) entries of the record, e.g. a formatted ``data``.

    Returns:
        The record, with its ``recipe`` (JSON-ready).
    """
    from kl_retrievers._encoding import query_prefix_of

    device = _device(cfg)
    warmup = result.warmup_steps if result is not None and result.warmup_steps is not None else None
    prefix = query_prefix_of(encoder.config)
    full_recipe = {
        **cfg.to_dict(),
        # what the run used where the config left it to a default (None in TrainConfig)
        "warmup_steps": warmup if warmup is not None else cfg.warmup_steps_resolved(),
        "bf16": bool((cfg.bf16 if cfg.bf16 is not None else device.type == "cuda") and device.type == "cuda"),
        "device": str(device),
        **dict(recipe or {}),
        # the training record is not repeated; the query prefix (put before every query) is shown
        "encoder": encoder.config.to_dict() | {"extra": {"query_prefix": prefix} if prefix else {}},
    }
    record: dict[str, Any] = {
        "data": [str(s) for s in ts.sources],
        "n_queries": len(ts.examples),
        "n_query_texts": len({ts.queries[ex.query] for ex in ts.examples}),
        "n_docs": len(ts.docs),
        "trained_splits": [dict(s) for s in ts.splits],
    }
    if result is not None:
        final = result.final_loss  # over the whole run, the checkpoint's steps included; NaN when none is known
        record |= {
            "steps_done": result.steps_done,
            "stopped": result.stopped,
            "seconds": result.seconds,
            "final_loss": round(final, 6) if math.isfinite(final) else None,
        }
        if result.evaluations:
            record["evaluations"] = finite_json(result.evaluations)
        if result.commands:  # this invocation's command (as before "commands"), then every invocation of the run
            record |= {"command": result.commands[-1]["command"], "commands": [dict(c) for c in result.commands]}
    record |= info
    encoder.config.extra["training"] = {k: v for k, v in record.items() if k != "recipe"} | {"recipe": full_recipe}
    return record | {"recipe": full_recipe}


class _RecordKeeper:
    """The training record ``encoder`` had before a run (``config.extra["training"]``, or none), given back by
    :meth:`restore_unless_changed` when the run fails before its weights change: a run interrupted or refused
    before its first step (or before a resume loads its checkpoint) leaves the model as it was, its record
    included (a vector twin's record replaced by a -KL run's would make it saved and scored as -KL)."""

    def __init__(self, encoder: GaussianEncoder) -> None:
        self._extra = encoder.config.extra
        self._had = "training" in self._extra
        self._record = deepcopy(self._extra.get("training"))
        self._changed = False

    def weights_changed(self) -> None:
        """Called once the run has changed the weights: the new record stays."""
        self._changed = True

    def restore_unless_changed(self) -> None:
        """Give the previous record back unless the weights changed."""
        if self._changed:
            return
        if self._had:
            self._extra["training"] = self._record
        else:
            self._extra.pop("training", None)


def _trainable_description(encoder: GaussianEncoder) -> dict[str, Any]:
    """What :func:`apply_freezing` chose, for the recipe: the LoRA rank (0: none) and the frozen tensors' count."""
    peft_config = getattr(encoder.backbone, "peft_config", None)
    lora_r = 0
    if isinstance(peft_config, Mapping) and peft_config:
        lora_r = int(getattr(next(iter(peft_config.values())), "r", 0) or 0)
    frozen = sum(1 for p in encoder.parameters() if not p.requires_grad)
    return {"lora_r": lora_r, "frozen_parameters": frozen}


# ---------------------------------------------------------------------------------- evaluation during training
#: What :func:`train_encoder` and :func:`train_heads_cached` accept as ``evaluator``: the encoder (its current
#: weights, in evaluation mode, under ``torch.no_grad``) -> ``{metric name: value}``.
Evaluator = Callable[[GaussianEncoder], Mapping[str, float]]


def _check_evaluator(evaluator: Any, eval_every: Any) -> None:
    """Refuse an ``evaluator`` that is not callable and an ``eval_every`` that is not an integer >= 0.

    Examples:
        >>> _check_evaluator(None, -1)
        Traceback (most recent call last):
        ValueError: eval_every must be an integer >= 0; got -1
    """
    if evaluator is not None and not callable(evaluator):
        raise TypeError(
            f"evaluator must be a callable (encoder -> {{metric: value}}) or None; got {type(evaluator).__name__}"
        )
    _check_int("eval_every", eval_every, 0)


def _evaluation_record(step: int, metrics: Any) -> dict[str, Any]:
    """``{"step": step, **metrics}`` with every value a float; refuses what is not a mapping of names to numbers.

    Examples:
        >>> _evaluation_record(4, {"ndcg@10": 0.5})
        {'step': 4, 'ndcg@10': 0.5}
        >>> _evaluation_record(4, {"step": 1.0})
        Traceback (most recent call last):
        ValueError: the evaluator returned the key 'step' (at step 4); it is reserved for the step number
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"the evaluator must return a mapping of metric names to numbers; got {type(metrics).__name__} "
            f"(at step {step})"
        )
    record: dict[str, Any] = {"step": step}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"the evaluator's metric names must be strings; got {name!r} (at step {step})")
        if name == "step":
            raise ValueError(
                f"the evaluator returned the key 'step' (at step {step}); it is reserved for the step number"
            )
        if name == _EVALUATOR_KEY:
            raise ValueError(
                f"the evaluator returned the key {_EVALUATOR_KEY!r} (at step {step}); it is reserved for the "
                "description of the evaluator"
            )
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not is_real_number(value):
            raise TypeError(f"the evaluator's metric {name!r} must be a number; got {value!r} (at step {step})")
        record[name] = float(value)
    return record


def _run_evaluation(encoder: GaussianEncoder, evaluator: Evaluator, step: int) -> dict[str, Any]:
    """Call ``evaluator(encoder)`` in evaluation mode under ``torch.no_grad`` (each module's mode is restored
    afterwards), log its metrics and return :func:`_evaluation_record`.

    ``torch.no_grad`` here, so that an evaluator that computes tensors itself builds no graph (the library's
    encoders already encode under ``torch.inference_mode``).
    """
    modes = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    t0 = time.monotonic()
    try:
        with torch.no_grad():
            metrics = evaluator(encoder)
    finally:
        for m, was in modes:
            m.training = was
    record = _evaluation_record(step, metrics)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step")
    logger.info("evaluation at step %d: %s (%.1f s)", step, shown or "no metrics", time.monotonic() - t0)
    return record


def _saved_evaluations(folder: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The evaluations a checkpoint's ``state.json`` records (an older checkpoint without them: none)."""
    saved = meta.get("evaluations")
    if saved is None:
        return []
    if not isinstance(saved, list) or not all(isinstance(e, dict) and isinstance(e.get("step"), int) for e in saved):
        logger.warning("%s: the evaluations recorded in state.json are malformed; they are left out", folder)
        return []
    return [dict(e) for e in saved]


#: The key of an evaluation record that describes what produced it (:func:`evaluator_description`).
_EVALUATOR_KEY = "evaluator"


def _callable_name(obj: Any) -> str:
    """The qualified name of a callable (of its class for an instance; ``functools.partial(...)`` of its function).

    Examples:
        >>> _callable_name(len), _callable_name(_callable_name)
        ('builtins.len', 'kl_retrievers.training.trainer._callable_name')
    """
    if isinstance(obj, functools.partial):
        return f"functools.partial({_callable_name(obj.func)})"
    target = obj if hasattr(obj, "__qualname__") else type(obj)  # an instance has none: its class's
    name = str(getattr(target, "__qualname__", "") or type(obj).__name__)
    module = getattr(target, "__module__", None)
    return f"{module}.{name}" if isinstance(module, str) and module else name


def evaluator_description(evaluator: Any, encoder: Any | None = None) -> dict[str, Any]:
    """What an evaluator measures, as each evaluation it produces records it (the ``"evaluator"`` entry).

    A :class:`RetrievalEvaluator`: :meth:`RetrievalEvaluator.description` (dataset folder, split, metric, depth,
    similarity). Any other callable: ``{"callable": its qualified name}`` (of its class for an instance with a
    ``__call__``), which tells two evaluators apart only by their code, not by their arguments.

    Examples:
        >>> evaluator_description(len)
        {'callable': 'builtins.len'}
    """
    if isinstance(evaluator, RetrievalEvaluator):
        return dict(evaluator.description(encoder))
    return {"callable": _callable_name(evaluator)}


def _described(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The evaluator description an evaluation record holds (``None``: none, e.g. written before stop 45)."""
    found = entry.get(_EVALUATOR_KEY)
    return found if isinstance(found, Mapping) else None


def _evaluated_at(evaluations: Sequence[Mapping[str, Any]], step: int, description: Mapping[str, Any] | None) -> bool:
    """Whether ``evaluations`` hold an evaluation at ``step`` by the evaluator ``description`` describes (an entry
    without a description is not counted: it may come from another evaluator)."""
    return any(e["step"] == step and _described(e) == description for e in evaluations)


def _check_saved_evaluators(
    folder: Path, evaluations: Sequence[Mapping[str, Any]], description: Mapping[str, Any] | None
) -> None:
    """On resume: one WARNING when the checkpoint's evaluations come from other evaluators than this run's, and
    one when some record none (written before stop 45); the entries are kept either way."""
    if description is None:
        return
    others: list[Mapping[str, Any]] = []
    n_other = n_unknown = 0
    for entry in evaluations:
        found = _described(entry)
        if found is None:
            n_unknown += 1
        elif found != description:
            n_other += 1
            if found not in others:
                others.append(found)
    this = json.dumps(description, sort_keys=True)
    if others:
        logger.warning(
            "%s: %d earlier evaluation(s) were made by another evaluator (%s) than this run's (%s); they are kept "
            "in the evaluations, each with its %r entry naming its evaluator, and are not comparable with this "
            "run's; only this run's evaluator's count as done",
            folder,
            n_other,
            "; ".join(json.dumps(d, sort_keys=True) for d in others),
            this,
            _EVALUATOR_KEY,
        )
    if n_unknown:
        logger.warning(
            "%s: %d earlier evaluation(s) record no evaluator (written by an earlier kl-retrievers), so they "
            "cannot be told apart from this run's evaluator's (%s); they are kept, and none counts as done by it "
            "(a finished checkpoint is evaluated once more)",
            folder,
            n_unknown,
            this,
        )


class _FeatureEncoder:
    """``encoder`` as :func:`~kl_retrievers.evaluation.evaluate_model` sees it, with its backbone replaced by
    features computed before: ``encode_queries`` / ``encode_documents`` apply the encoder's current heads
    (:func:`encode_from_features`, where the heads are) to the features of the texts asked for.

    Only the texts the features were computed for can be encoded: ``queries`` as ``encode_queries`` receives
    them (the features are of the prefixed texts, :func:`prefixed_queries`) and ``documents``.
    """

    def __init__(
        self,
        encoder: GaussianEncoder,
        queries: list[str],
        query_features: Features,
        documents: list[str],
        doc_features: Features,
    ) -> None:
        for what, texts, feats in (("queries", queries, query_features), ("documents", documents, doc_features)):
            if len(texts) != len(feats):
                raise ValueError(f"features of {len(feats)} {what} given for the evaluation set's {len(texts)} {what}")
        self.config = encoder.config  # what evaluate_model reads: the similarity the model records
        self.name_or_path = encoder.name_or_path
        self._encoder = encoder
        self._features = {"queries": (queries, query_features), "documents": (documents, doc_features)}

    def _encode(self, what: str, texts: Sequence[str]) -> Gaussians:
        known, feats = self._features[what]
        row = {t: i for i, t in enumerate(known)}  # a repeated text has one set of features
        try:
            rows = np.asarray([row[t] for t in texts], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"no features computed for the {what[:-1]} text {exc.args[0]!r}") from None
        g = encode_from_features(self._encoder, feats)
        return Gaussians(g.mean[rows], g.var[rows], validate=False)

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> Gaussians:
        """The queries' Gaussians (``texts`` without the query prefix, as ``encode_queries`` takes them)."""
        return self._encode("queries", texts)

    def encode_documents(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> Gaussians:
        """The documents' Gaussians."""
        return self._encode("documents", texts)


class RetrievalEvaluator:
    """An ``evaluator`` for :func:`train_encoder` / :func:`train_heads_cached`: one retrieval metric on a BEIR split
    (:func:`retrieval_evaluator` builds one).

    Each call encodes the split's queries and whole corpus with the encoder's current weights (no
    encoding cache: the weights change between calls), retrieves exactly and scores the run, as
    :func:`kl_retrievers.evaluation.evaluate_model` does (it is what runs), and returns ``{metric: value}``.
    :func:`train_heads_cached` instead computes the split's backbone features once (:meth:`features`, with its
    ``cache_dir``) and evaluates each time by applying the current heads to them (:meth:`from_features`): the
    same retrieval and metric, without running the frozen backbone again (a subclass that defines its own
    ``__call__`` is called instead, like any evaluator). The arguments are checked when it is built, before any
    training step.

    Args:
        dataset: A loaded :class:`~kl_retrievers.datasets.BeirDataset`, or a BEIR folder (loaded here).
        split: The qrels split read when ``dataset`` is a folder.
        metric: A name of :data:`kl_retrievers.evaluation.METRICS` (``ndcg@10``, ``mrr@10``, ...), in any case, or
            ir_measures' spelling of one (``nDCG@10``, ``R@100``), as :func:`~kl_retrievers.evaluation.evaluate_run`
            takes them; recorded and reported under the name of ``METRICS``.
        k: Retrieval depth. Below the metric's cutoff (``k=10`` with ``recall@100``) a
            :class:`~kl_retrievers.evaluation.ShallowRunWarning` says so once, here, not at every evaluation.
        batch_size: Encoding (and feature) batch size.
        similarity: ``"neg_kl"``, ``"dot"`` or ``"cosine"``; ``None``: what the encoder records
            (:func:`~kl_retrievers.evaluation.model_similarity`). Give the training run's similarity
            when training a vector twin: its config says so only once the command line has saved it.
        show_progress: Progress bars while encoding and retrieving.

    Raises:
        ValueError: An unknown ``metric`` or ``similarity``, ``k`` or ``batch_size`` below 1, or a split where no
            given query has a judgement with a grade above 0 (empty qrels, judgements only of queries not given,
            or only grades of 0 or below): every evaluation would fail or score 0 whatever the weights; the
            message gives the counts of queries, queries with a grade above 0 and both.
        ModuleNotFoundError: ir_measures (the ``eval`` extra) is not installed; the message names
            ``pip install "kl-retrievers[eval]"``.

    Examples:
        >>> evaluator = RetrievalEvaluator("../shared/datasets/scifact", split="test")  # doctest: +SKIP
        >>> train_encoder(encoder, ts, cfg, evaluator=evaluator, eval_every=100).evaluations  # doctest: +SKIP
        [{'step': 100, 'ndcg@10': 0.61}, ...]

    Attributes:
        dataset: The loaded split.
        metric: The metric reported.
        k: Retrieval depth.
        batch_size: Encoding (and feature) batch size.
        similarity: ``"neg_kl"``, ``"dot"``, ``"cosine"`` or ``None`` (what the encoder records).
        show_progress: Progress bars while encoding and retrieving.
    """

    def __init__(
        self,
        dataset: BeirDataset | str | os.PathLike[str],
        *,
        split: str = "dev",
        metric: str = "ndcg@10",
        k: int = 100,
        batch_size: int = 32,
        similarity: Similarity | None = None,
        show_progress: bool = False,
    ) -> None:
        from kl_retrievers.datasets import BeirDataset, load_beir
        from kl_retrievers.evaluation import (
            METRICS,
            SIMILARITIES,
            ShallowRunWarning,
            _depth_warning,
            _metric_names,
            _require_ir_measures,
        )
        from kl_retrievers.gaussian import check_k

        _require_ir_measures("RetrievalEvaluator (scoring each evaluation)")  # now, not at the first evaluation
        reported = None
        if isinstance(metric, str):
            with suppress(ValueError):
                reported = _metric_names(metric)[0]  # nDCG@10 -> ndcg@10, as evaluate_model reads it
        if reported is None:
            raise ValueError(
                f"metric must be one of {sorted(METRICS)} (any case, or ir_measures' {', '.join(METRICS.values())}); "
                f"got {metric!r}"
            )
        metric = reported
        if similarity is not None and similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES} or None; got {similarity!r}")
        k = check_k(k)
        _check_int("batch_size", batch_size, 1)
        self.dataset = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
        # a query counts as judged when some document has a grade above 0: with grades of 0 or below only, its
        # nDCG, MRR and recall are 0 whatever the ranking
        judged = {str(qid) for qid, rel in self.dataset.qrels.items() if any(grade > 0 for grade in rel.values())}
        overlap = len(judged & {str(qid) for qid in self.dataset.queries})
        if not overlap:  # every evaluation would fail (no qrels) or score 0 whatever the weights
            raise ValueError(
                f"{self.dataset.path} ({self.dataset.split}): no query has a judgement with a grade above 0 to "
                f"evaluate against (without one every score is 0 whatever the weights): "
                f"{len(self.dataset.queries)} queries given, {len(judged)} with a grade above 0, "
                f"{overlap} of them among the queries"
            )
        self.metric = metric
        self.k = k
        self.batch_size = batch_size
        self.similarity = similarity
        self.show_progress = show_progress
        shallow = _depth_warning(k, [metric], n_docs=len(self.dataset.corpus))
        if shallow:  # once, where the evaluator is made; each evaluation is silent (_score)
            warnings.warn(shallow, ShallowRunWarning, stacklevel=2)

    def __call__(self, encoder: GaussianEncoder) -> dict[str, float]:
        """``{metric: value}`` of ``encoder``'s current weights (no encoding cache: the weights change)."""
        return self._score(encoder)

    def description(self, encoder: Any | None = None) -> dict[str, Any]:
        """What this evaluator measures, JSON-ready: recorded with each of its evaluations (``"evaluator"``) and
        compared on resume, so that evaluations of another collection, split, subset, metric, depth or similarity
        are told apart (:func:`evaluator_description`). The data count by their content as well as their folder:
        a subset of a split (:meth:`~kl_retrievers.datasets.BeirDataset.subset`) or an in-memory dataset is another
        evaluator. The batch size and progress bars change nothing measured and are left out; a subclass is named
        by its qualified class name (its ``__call__`` may measure otherwise).

        Args:
            encoder: The encoder evaluated: an evaluator built with ``similarity=None`` records the similarity
                that encoder records (what :meth:`__call__` scores with), so that it describes the same
                measurement as one given that similarity explicitly (as the command line does).

        Returns:
            ``{"type", "dataset" (the collection folder, resolved), "split", "data_sha256" (of the documents,
            queries and judgements evaluated), "metric", "k", "similarity"}``.
        """
        from kl_retrievers.evaluation import model_similarity

        kind = type(self)
        similarity = self.similarity
        if similarity is None and encoder is not None:
            similarity = model_similarity(encoder)
        return {
            "type": "RetrievalEvaluator" if kind is RetrievalEvaluator else _callable_name(kind),
            "dataset": os.fspath(user_path(self.dataset.path).resolve()),
            "split": self.dataset.split,
            "data_sha256": self._data_sha256(),
            "metric": self.metric,
            "k": int(self.k),
            "similarity": similarity,
        }

    def _data_sha256(self) -> str:
        """SHA-256 of what this evaluator evaluates on: its documents, queries and judgements (grades as floats, so
        ``1``, ``1.0`` and ``numpy.int64(1)`` hash alike)."""
        ds = self.dataset
        qrels = {str(q): {str(d): float(r) for d, r in sorted(rel.items())} for q, rel in sorted(ds.qrels.items())}
        content = {"corpus": ds.corpus_identity(), "queries": ds.queries_identity(), "qrels": qrels}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def features(
        self,
        encoder: GaussianEncoder,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        show_progress: bool | None = None,
    ) -> tuple[Features, Features]:
        """Backbone features (:func:`compute_features`) of the split's queries and corpus, as the encoder reads them.

        The queries behind the encoder's query prefix (:func:`prefixed_queries`) at ``config.query_max_length``
        tokens; the documents as ``title + " " + text`` (``dataset.document_texts()``) at ``config.max_length``:
        what ``encode_queries`` / ``encode_documents`` run the backbone on when this evaluator is called.

        Args:
            encoder: The encoder whose (frozen) backbone is run.
            cache_dir: Feature cache root (``None``: no cache).
            show_progress: Progress bars (``None``: :attr:`show_progress`).

        Returns:
            ``(query features, document features)`` in ``dataset.query_ids`` / ``dataset.doc_ids`` order.
        """
        show = self.show_progress if show_progress is None else show_progress
        queries = compute_features(
            encoder,
            prefixed_queries(encoder, self.dataset.query_texts()),
            max_length=encoder.config.query_max_length,
            cache_dir=cache_dir,
            batch_size=self.batch_size,
            show_progress=show,
            desc="Evaluation query features",
        )
        documents = compute_features(
            encoder,
            self.dataset.document_texts(),
            max_length=encoder.config.max_length,
            cache_dir=cache_dir,
            batch_size=self.batch_size,
            show_progress=show,
            desc="Evaluation document features",
        )
        return queries, documents

    def from_features(
        self, encoder: GaussianEncoder, query_features: Features, doc_features: Features
    ) -> dict[str, float]:
        """``{metric: value}`` of ``encoder``'s current heads applied to :meth:`features` (no backbone pass).

        The same retrieval and scoring as a call (:func:`kl_retrievers.evaluation.evaluate_model`); the Gaussians
        equal those of a call up to float rounding (the backbone's batches differ), so the metric does too.
        """
        view = _FeatureEncoder(
            encoder, self.dataset.query_texts(), query_features, self.dataset.document_texts(), doc_features
        )
        return self._score(view)

    def _score(self, encoder: Any) -> dict[str, float]:
        from kl_retrievers.evaluation import ShallowRunWarning, evaluate_model

        with warnings.catch_warnings():  # said once when the evaluator was made, not at every evaluation
            warnings.simplefilter("ignore", ShallowRunWarning)
            result = evaluate_model(
                encoder,
                self.dataset,
                k=self.k,
                similarity=self.similarity,
                show_progress=self.show_progress,
                metrics=(self.metric,),
                batch_size=self.batch_size,
                use_cache=False,
            )
        return {self.metric: float(result.aggregate[self.metric])}

    def __repr__(self) -> str:
        return (
            f"RetrievalEvaluator({str(self.dataset.path)!r}, split={self.dataset.split!r}, metric={self.metric!r}, "
            f"k={self.k})"
        )


def retrieval_evaluator(dataset: Any, **options: Any) -> RetrievalEvaluator:
    """A :class:`RetrievalEvaluator` (the name the command line and stop 43's code use; the same arguments).

    Args:
        dataset: A loaded :class:`~kl_retrievers.datasets.BeirDataset`, or a BEIR folder.
        **options: :class:`RetrievalEvaluator`'s keyword arguments (``split``, ``metric``, ``k``, ``batch_size``,
            ``similarity``, ``show_progress``).

    Examples:
        >>> evaluator = retrieval_evaluator("../shared/datasets/scifact", split="test")  # doctest: +SKIP
        >>> train_heads_cached(encoder, ts, cfg, evaluator=evaluator, eval_every=100).evaluations  # doctest: +SKIP
        [{'step': 100, 'ndcg@10': 0.61}, ...]
    """
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        evaluator = RetrievalEvaluator(dataset, **options)
    for caught in seen:  # a shallow k (ShallowRunWarning): said at the caller's line, not at this one
        warnings.warn(caught.message, caught.category, stacklevel=2)
    return evaluator


def _checked_checkpoint(
    checkpoint_dir: Path | None, recipe: Mapping[str, Any] | None, steps: int
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a resume continues and its ``state.json``, refused when it was written with another recipe or
    is past ``steps`` (:func:`_check_resume_recipe`, :func:`_check_resume_steps`).

    Raises:
        ValueError: No ``checkpoint_dir`` was given, or it holds no checkpoint (a mistyped folder would otherwise
            train from step 0 in silence); the message names the folder.
    """
    if checkpoint_dir is None:
        raise ValueError(
            "resume=True needs checkpoint_dir, the folder of the checkpoint to continue from (it is None); give it, "
            "or leave out resume to start from step 0"
        )
    found = _find_checkpoint(checkpoint_dir)
    if found is None:
        what = "holds no checkpoint (no state.json)" if checkpoint_dir.exists() else "does not exist"
        raise ValueError(
            f"resume=True: checkpoint_dir {checkpoint_dir} {what}; give the folder of the checkpoint to continue "
            "from, or leave out resume to start from step 0"
        )
    meta = _read_checkpoint_state(found)  # ValueError naming the file and the field of a damaged one
    _check_resume_recipe(found, meta, recipe)
    _check_resume_steps(found, meta, steps)
    return found, meta


def _optimise(
    module: nn.Module,
    cfg: TrainConfig,
    micro_loss: Callable[[int, int], torch.Tensor],
    *,
    checkpoint_dir: Path | None,
    resume: bool,
    desc: str,
    recipe: Mapping[str, Any] | None = None,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    eval_every: int = 0,
    prepare: Callable[[], None] | None = None,
    description: Mapping[str, Any] | None = None,
    changed: Callable[[], None] | None = None,
    commands: Sequence[Mapping[str, Any]] | None = None,
    invocation: Mapping[str, str] | None = None,
) -> TrainResult:
    """The optimiser loop both trainers share. ``evaluate(step)``: one evaluation record (see
    :func:`_run_evaluation`), called after every ``eval_every`` steps and once at the end (or at a time-budget
    stop), each after the checkpoint of its step when that step checkpoints, which then records it
    (:func:`_record_evaluations`; an evaluation between checkpoints is recorded by the next one).
    ``description``: what ``evaluate`` runs (:func:`evaluator_description`), added to each record
    as ``"evaluator"``; a resume warns about the checkpoint's evaluations by other evaluators and counts only this
    one's as done (:func:`_check_saved_evaluators`, :func:`_evaluated_at`).
    ``prepare()``: called once after a resume's checks and load, before the time budget's clock starts, when an
    evaluation will run (work a refused resume or a finished, evaluated checkpoint should not pay for, e.g. the
    evaluation split's features). ``changed()``: called once the module's weights change (a resume's checkpoint
    loaded, or the first optimiser step), so that a caller can tell a run that failed before changing them.
    ``commands``: the run's invocations, this one last, recorded in each checkpoint beside the recipe
    (:data:`_COMMANDS`) and returned in :attr:`TrainResult.commands`; ``None``: those the checkpoint records on a
    resume, then ``invocation`` (this call's ``command``, ``started`` and ``api``, :func:`_python_invocation`) at
    the step it starts from (:func:`_invocations`)."""
    named = _trainable(module)
    params = list(named.values())
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    described = dict(description) if description is not None else None

    def run_evaluation(step: int) -> dict[str, Any]:
        assert evaluate is not None
        record = evaluate(step)
        if described is not None:
            record[_EVALUATOR_KEY] = dict(described)
        return record

    opt = torch.optim.AdamW(_param_groups(named, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fixed = _score_invariant(named, cfg)  # no gradient: AdamW skips them (no step, no weight decay)
    warmup = cfg.warmup_steps_resolved()
    cli = recipe is not None and "cli" in recipe  # the command line's run: messages name its flags
    found: Path | None = None
    meta: dict[str, Any] = {}
    if resume:
        found, meta = _checked_checkpoint(checkpoint_dir, recipe, cfg.steps)
        saved = (meta.get("recipe") or {}).get("config") or {}
        if isinstance(saved.get("warmup_resolved"), int):  # keep the warm-up the run started with
            warmup = saved["warmup_resolved"]
    elif checkpoint_dir is not None:
        _warn_fresh_over_checkpoint(checkpoint_dir, cli=cli)
    if warmup >= cfg.steps:
        logger.warning(
            "warmup_steps%s %d is not below steps%s %d: the learning rate never reaches lr%s; give fewer warm-up "
            "steps or more steps",
            " (--warmup)" if cli else "",
            warmup,
            " (--steps)" if cli else "",
            cfg.steps,
            " (--lr)" if cli else "",
        )
    schedule = _linear_schedule(warmup, cfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = 0
    history: list[float] = []
    evaluations: list[dict[str, Any]] = []
    resumed_from = None
    if found is not None:
        start, history = _load_checkpoint(found, meta, module, opt, sched)
        if changed is not None:
            changed()
        evaluations = _saved_evaluations(found, meta)
        if evaluate is not None:
            _check_saved_evaluators(found, evaluations, described)
        resumed_from = start
        # the schedule is rebuilt: the checkpoint's peak lr(s), its warm-up, linear decay to 0 at this run's
        # --steps (the same schedule as an uninterrupted run when --steps is unchanged)
        for group, base in zip(opt.param_groups, sched.base_lrs, strict=True):
            group["lr"] = base * schedule(start)
        logger.info(
            "resumed from %s at step %d (peak lr %g, warm-up %d steps, linear decay to 0 at step %d)",
            found,
            start,
            sched.base_lrs[0],
            warmup,
            cfg.steps,
        )
    if commands is None and invocation is not None:  # a Python call: after the checkpoint's invocations, its own
        commands = _invocations(found, meta if found is not None else None, **invocation)
    # done: an evaluation of the last step by this run's evaluator (another's, or one undescribed, is not this one)
    nothing_left = start >= cfg.steps and _evaluated_at(evaluations, start, described)
    if prepare is not None and evaluate is not None and not nothing_left:  # a finished, evaluated run needs none
        prepare()
    t0 = time.monotonic()
    losses: list[float] = []
    stopped = "finished"
    step = start
    # leave=None, the rule of the package's other bars (progress_bar): the finished bar's line is kept only when no
    # other bar is open (a bar nested in a caller's loop clears its line instead of leaving a stale one)
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=desc,
        disable=not progress_enabled(cfg.show_progress),
        unit="step",
        leave=None,
    )
    try:
        for step in range(start, cfg.steps):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(cfg.grad_accum):
                torch.manual_seed((cfg.seed * 1_000_003 + step * 1_009 + micro) % (2**63))
                loss = micro_loss(step, micro)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"the loss is {value} at step {step} (micro-batch {micro}); training stopped. "
                        "Lower --lr, raise --temperature, or check the data; the last checkpoint is unchanged."
                    )
                (loss / cfg.grad_accum).backward()
                total += value / cfg.grad_accum
            for p in fixed:
                p.grad = None
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            if changed is not None and step == start and found is None:
                changed()
            _check_finite_weights(named, step)
            sched.step()
            losses.append(total)
            history.append(total)
            bar.update(1)
            # the statistic the run reports as its final loss: the mean of the last (up to) 20 steps
            bar.set_postfix(loss_last20=f"{float(np.mean(history[-20:])):.4f}")
            done = step + 1
            saved = checkpoint_dir is not None and bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0
            if saved:
                assert checkpoint_dir is not None
                _save_checkpoint(checkpoint_dir, module, opt, sched, done, history, recipe, evaluations, commands)
            # evaluations come after the checkpoint of their step (an evaluator that fails, or a job killed
            # while it runs, loses no trained step), which then records them; the last step's runs after the
            # loop, once the final checkpoint is written
            evaluated = evaluate is not None and bool(eval_every) and done % eval_every == 0 and done < cfg.steps
            if evaluated:
                assert evaluate is not None
                evaluations.append(run_evaluation(done))
                if saved:
                    assert checkpoint_dir is not None
                    _record_evaluations(checkpoint_dir, evaluations)
            # the clock is read after this step's checkpoint and evaluation, so both count toward the budget
            if cfg.time_budget_s is not None and time.monotonic() - t0 > cfg.time_budget_s and done < cfg.steps:
                stopped = "time_budget"
                logger.info("time budget %.0f s reached after step %d; stopping and saving", cfg.time_budget_s, done)
                if checkpoint_dir is not None:
                    _save_checkpoint(checkpoint_dir, module, opt, sched, done, history, recipe, evaluations, commands)
                if evaluate is not None and not evaluated:  # the model the run returns, once
                    evaluations.append(run_evaluation(done))
                    if checkpoint_dir is not None:
                        _record_evaluations(checkpoint_dir, evaluations)
                break
        if stopped == "finished" and checkpoint_dir is not None and losses:
            last = step + 1
            if not (cfg.checkpoint_every and last % cfg.checkpoint_every == 0):  # not saved just above
                _save_checkpoint(checkpoint_dir, module, opt, sched, last, history, recipe, evaluations, commands)
    finally:
        bar.close()
    done = (step + 1) if losses else start
    if evaluate is not None and stopped == "finished" and not _evaluated_at(evaluations, done, described):
        # the end of the run (or a resume with no step left): the model it returns is evaluated, once, by this
        # run's evaluator
        evaluations.append(run_evaluation(done))
        if checkpoint_dir is not None and (losses or found is not None):
            _record_evaluations(checkpoint_dir, evaluations)
    seconds = time.monotonic() - t0
    invocations = [dict(c) for c in commands or []]
    return TrainResult(done, stopped, losses, seconds, resumed_from, history, evaluations, warmup, invocations)


# ---------------------------------------------------------------------------------- full encoder
_LAYER_PATTERN = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def backbone_layer_count(encoder: GaussianEncoder) -> int:
    """The number of numbered transformer layers of ``encoder``'s backbone (what ``freeze_layers`` counts).

    Raises:
        ValueError: the backbone has no parameters named ``...layer.N...`` / ``...layers.N...``.

    Examples:
        >>> backbone_layer_count(encoder)  # doctest: +SKIP
        6
    """
    numbers = {int(m.group(1)) for name, _ in encoder.backbone.named_parameters() if (m := _LAYER_PATTERN.search(name))}
    if not numbers:
        raise ValueError("freeze_layers: could not find numbered layers in the backbone")
    return max(numbers) + 1


def check_freeze_layers(encoder: GaussianEncoder, freeze_layers: int) -> None:
    """Refuse ``freeze_layers`` above the backbone's layer count (it would freeze every layer silently).

    Examples:
        >>> check_freeze_layers(encoder, 99)  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: freeze_layers (--freeze-layers) 99 is more than the backbone's 6 layers (...); ...
    """
    n_layers = backbone_layer_count(encoder)
    if freeze_layers > n_layers:
        raise _freeze_layers_refusal(freeze_layers, n_layers, "counted in the loaded backbone")


def _freeze_layers_refusal(freeze_layers: int, layers: int, where: str) -> ValueError:
    """The refusal of ``freeze_layers`` above the backbone's ``layers`` (``where``: how the count is known), for
    :func:`check_freeze_layers` and the command line's check of the backbone's configuration before it loads.

    Examples:
        >>> print(_freeze_layers_refusal(5, 2, "counted in the loaded backbone"))  # doctest: +ELLIPSIS
        freeze_layers (--freeze-layers) 5 is more than the backbone's 2 layers (counted in the loaded backbone); ...
    """
    return ValueError(
        f"freeze_layers (--freeze-layers) {freeze_layers} is more than the backbone's {layers} layers ({where}); "
        f"give 0 to {layers} (0: none frozen), or freeze_backbone (--freeze-backbone) to train the heads only"
    )


def apply_freezing(
    encoder: GaussianEncoder,
    *,
    freeze_backbone: bool = False,
    freeze_layers: int = 0,
    lora_r: int = 0,
    seed: int | None = 0,
) -> None:
    """Choose what trains: everything, the heads only, all but the lower N layers, or a LoRA adapter.

    ``freeze_layers=N`` freezes the embeddings (including the ``[VAR]`` row) and transformer
    layers ``0..N-1`` (``N`` above the backbone's layer count is refused). ``lora_r=R`` wraps the
    backbone with a peft LoRA adapter of rank ``R``
    (alpha ``2R``, peft's default target modules for the architecture); the heads train fully.
    :meth:`~kl_retrievers.GaussianEncoder.save_pretrained` stores the adapter as its low-rank
    factors in a delta save (merged in a full save); :func:`merge_lora` folds it in for use.

    Args:
        encoder: Its parameters' ``requires_grad`` are set (and, with ``lora_r``, its backbone wrapped) in place.
        freeze_backbone: Train the heads only.
        freeze_layers: Freeze the embeddings and the lower ``N`` transformer layers (0: off).
        lora_r: Rank of a LoRA adapter on the backbone (0: off).
        seed: Seed of the adapter's random initialisation (peft draws ``lora_A`` at random; ``lora_B`` starts at
            zero), as ``seed`` of :meth:`~kl_retrievers.GaussianEncoder.from_backbone` seeds the heads: the same
            seed gives the same adapter, and torch's global RNG is left as it was. Pass the training's seed
            (``TrainConfig.seed``, ``kl-retrievers train --seed``). ``None``: draw from torch's global RNG.

    Raises:
        ValueError: ``freeze_layers`` or ``lora_r`` is not an integer >= 0, ``seed`` is not ``None`` or an
            integer >= 0, more than one way of freezing is chosen, or ``freeze_layers`` exceeds the layer count.

    Examples:
        >>> apply_freezing(encoder, freeze_layers=4)  # doctest: +SKIP
        >>> apply_freezing(encoder, lora_r=8, seed=cfg.seed)  # doctest: +SKIP
    """
    for name, value in (("freeze_layers", freeze_layers), ("lora_r", lora_r)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0 (0: off); got {value!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0, or None (torch's global RNG); got {seed!r}")
    if sum(bool(x) for x in (freeze_backbone, freeze_layers, lora_r)) > 1:
        raise ValueError("choose one of freeze_backbone, freeze_layers and lora_r")
    for p in encoder.parameters():
        p.requires_grad_(True)
    if freeze_backbone:
        for p in encoder.backbone.parameters():
            p.requires_grad_(False)
    elif freeze_layers:
        check_freeze_layers(encoder, int(freeze_layers))
        for name, p in encoder.backbone.named_parameters():
            m = _LAYER_PATTERN.search(name)
            if m is not None:
                if int(m.group(1)) < freeze_layers:
                    p.requires_grad_(False)
            elif "embed" in name:
                p.requires_grad_(False)
    elif lora_r:
        require_train_extra("lora_r (LoRA)", "peft")
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, bias="none")
        # the adapter's random lora_A from its own stream, as from_backbone's heads: torch's global RNG is left as
        # it was (the CPU generator, and the CUDA ones of the devices the backbone is on: no other device's)
        cuda = sorted({p.device.index or 0 for p in encoder.backbone.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.random.default_generator.manual_seed(int(seed))
                for index in cuda:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(int(seed))
            try:
                encoder.backbone = get_peft_model(encoder.backbone, config)
            except ValueError:  # architecture without a peft default: adapt every linear layer
                config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear")
                encoder.backbone = get_peft_model(encoder.backbone, config)


def merge_lora(encoder: GaussianEncoder) -> None:
    """Fold a LoRA adapter into the backbone weights (plain weights, no peft wrapper at inference)."""
    if hasattr(encoder.backbone, "merge_and_unload"):
        encoder.backbone = encoder.backbone.merge_and_unload()
        for p in encoder.parameters():
            p.requires_grad_(True)


def train_encoder(
    encoder: GaussianEncoder,
    ts: TrainingSet,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    recipe: Mapping[str, Any] | None = None,
    evaluator: Evaluator | None = None,
    eval_every: int = 0,
    overwrite: bool = False,
    commands: Sequence[Mapping[str, Any]] | None = None,
) -> TrainResult:
    """Train the whole encoder (respecting what :func:`apply_freezing` froze) on texts.

    Each micro-batch encodes ``batch_size`` queries and their candidates (one positive and
    ``negatives`` hard negatives) through the backbone. The contrastive loss scores every
    query against every candidate in the batch (in-batch negatives) unless ``in_batch`` is off.

    Args:
        encoder: The model, changed in place (left in evaluation mode). How it was trained (the recipe,
            ``similarity`` included, and the data's sizes) is recorded in ``config.extra["training"]``
            (:func:`record_training`) before the first step, so that an ``evaluator`` and a later
            ``save_pretrained`` score a vector twin by its similarity, not -KL; a call that fails before it
            changes the weights (before its first step, or before a resume loads its checkpoint) gives the
            previous record back.
        ts: Training data (a :class:`~kl_retrievers.training.TrainingSet`).
        cfg: Recipe (a :class:`TrainConfig`).
        checkpoint_dir: Where checkpoints go (``None``: none). Each checkpoint replaces the folder as a whole:
            a non-empty folder that is not a checkpoint, or a symbolic link (never followed: the first checkpoint
            would replace the link itself), is refused (``ValueError``) before anything runs, unless ``overwrite``;
            with ``resume`` too (give the folder the link points to instead).
        resume: Continue from the checkpoint in ``checkpoint_dir``; refused (``ValueError``) when there is no
            ``checkpoint_dir`` or it holds no checkpoint, and when the checkpoint was written with another recipe
            (anything but ``steps``, ``time_budget_s``, ``checkpoint_every``, ``show_progress``, ``device``),
            other data (its sources, or their content: :meth:`~kl_retrievers.training.TrainingSet.data_sha256`),
            another encoder shape or another choice of what trains (:func:`apply_freezing`: the LoRA rank, the
            frozen tensors).
        recipe: Further JSON-ready entries recorded in checkpoints and checked on resume.
        evaluator: Called with the encoder (its current weights, in evaluation mode, under
            ``torch.no_grad``; its modes are restored afterwards) every ``eval_every`` optimiser steps and
            once at the end (or at a time-budget stop); returns ``{metric: value}`` (e.g.
            :class:`RetrievalEvaluator`). Each result is logged and recorded in
            :attr:`TrainResult.evaluations` and in the checkpoints (restored by ``resume``), with a description
            of the evaluator (``"evaluator"``, :func:`evaluator_description`; the key is reserved, as ``"step"``).
            Its time counts toward ``cfg.time_budget_s``; it is not part of the recipe a resume checks: a resume
            with another evaluator keeps the checkpoint's evaluations, warns naming both evaluators, and counts
            only its own evaluator's as done (a finished checkpoint is evaluated once by it).
        eval_every: Steps between evaluations (0: only at the end).
        overwrite: Let checkpoints replace a non-empty ``checkpoint_dir`` that is not a checkpoint, or a link
            there (the link itself: the folder it points to is left as it was).
        commands: The invocations of the run, this one last (``{"command", "started", "step_at_start"}`` each),
            recorded in each checkpoint's ``state.json`` beside the recipe (its ``commands``: not checked on
            resume), in :attr:`TrainResult.commands` and in the training record (``training.commands``, and
            ``training.command``, the last one's), as ``kl-retrievers train`` gives its own. ``None`` (a script's
            call): the invocations the checkpoint records on a ``resume`` (the command line's and earlier calls'),
            then this call's own, ``{"command": the Python process's command line ("python train.py --lr 1e-3":
            sys.argv), "started", "step_at_start", "api": "kl_retrievers.training.train_encoder"}``.

    Returns:
        A :class:`TrainResult`.

    Examples:
        >>> result = train_encoder(encoder, ts, TrainConfig(steps=10, batch_size=4))  # doctest: +SKIP
    """
    invocation = _python_invocation("train_encoder") if commands is None else None  # started now
    _check_inputs(ts, cfg)
    cfg.check_trains(fast_path=False)
    _check_evaluator(evaluator, eval_every)
    need_teacher = _check_teacher(ts, cfg)
    _check_negatives_exist(ts, cfg)
    device = _device(cfg)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    full_recipe = training_recipe(cfg, ts, encoder, mode="encoder", **dict(recipe or {}))
    trainable = _trainable_description(encoder)  # a resume with another LoRA rank or freezing is refused
    full_recipe["encoder"]["trainable"] = trainable
    if resume:  # refused (no checkpoint, another recipe) before the encoder moves or the record changes
        _checked_checkpoint(ckpt, full_recipe, cfg.steps)
    if ckpt is not None:  # a resume's too: its checkpoints replace the folder (a link there is refused, not replaced)
        check_checkpoint_folder(ckpt, overwrite=overwrite, resume=resume)
    record_recipe = {"mode": "encoder", **trainable}
    encoder.to(device)
    encoder.train()
    qlen, dlen = encoder.config.query_max_length, encoder.config.max_length
    queries = prefixed_queries(encoder, ts.queries)  # as encode_queries sees them
    positives = ts.positives_by_query()

    def encode(texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(device) for k, v in encoder.tokenize(texts, max_length).items()}
        mean, var = encoder(**batch)
        return mean.float(), var.float()

    def micro_loss(step: int, micro: int) -> torch.Tensor:
        batch = _sample(ts, cfg, step, micro, need_teacher, positives)
        with _autocast(device, cfg):
            qm, qv = encode([queries[i] for i in batch.queries], qlen)
            uniq, inverse = np.unique(batch.cands, return_inverse=True)
            dm, dv = encode([ts.docs[i] for i in uniq], dlen)
        return _batch_loss(cfg, batch, (qm, qv, dm, dv), uniq, inverse, device)

    def evaluate(step: int) -> dict[str, Any]:
        assert evaluator is not None
        return _run_evaluation(encoder, evaluator, step)

    def optimise(changed: Callable[[], None]) -> TrainResult:
        return _optimise(
            encoder,
            cfg,
            micro_loss,
            checkpoint_dir=ckpt,
            resume=resume,
            desc="Training",
            recipe=full_recipe,
            evaluate=evaluate if evaluator is not None else None,
            eval_every=eval_every,
            description=evaluator_description(evaluator, encoder) if evaluator is not None else None,
            changed=changed,
            commands=commands,
            invocation=invocation,
        )

    return _recorded_run(encoder, cfg, ts, record_recipe, optimise)


def _recorded_run(
    encoder: GaussianEncoder,
    cfg: TrainConfig,
    ts: TrainingSet,
    record_recipe: Mapping[str, Any],
    optimise: Callable[[Callable[[], None]], TrainResult],
    *,
    finally_: Callable[[], None] | None = None,
) -> TrainResult:
    """Run ``optimise(changed)`` between the two training records both loops write (:func:`record_training`).

    The record is written before the first step (evaluations score a vector twin by its similarity) and again
    with the result; a run that fails before its weights change (``changed``, :class:`_RecordKeeper`) gives
    the previous record back. ``finally_`` then runs however it ended, and the encoder is left in evaluation
    mode.
    """
    previous = _RecordKeeper(encoder)
    record_training(encoder, cfg, ts, recipe=record_recipe)
    try:
        result = optimise(previous.weights_changed)
    except BaseException:
        previous.restore_unless_changed()
        raise
    finally:
        if finally_ is not None:
            finally_()
        encoder.eval()
    record_training(encoder, cfg, ts, result, recipe=record_recipe)
    return result


# ---------------------------------------------------------------------------------- fast path
def encode_from_features(encoder: GaussianEncoder, feats: Features, batch_size: int = 4096) -> Gaussians:
    """Gaussians (numpy float32) from cached backbone features through the encoder's heads.

    Examples:
        >>> g = encode_from_features(encoder, compute_features(encoder, texts, max_length=256))  # doctest: +SKIP
    """
    means, vars_ = [], []
    dev = encoder.mean_head.weight.device
    with torch.inference_mode():
        for start in range(0, len(feats), batch_size):
            p = torch.from_numpy(feats.pooled[start : start + batch_size]).to(dev)
            v = torch.from_numpy(feats.var_state[start : start + batch_size]).to(dev)
            m, s = heads_forward(encoder, p, v)
            means.append(m.float().cpu().numpy())
            vars_.append(s.float().cpu().numpy())
    k = encoder.config.dim
    mean = np.concatenate(means) if means else np.zeros((0, k), np.float32)
    var = np.concatenate(vars_) if vars_ else np.zeros((0, k), np.float32)
    return Gaussians(mean, var, validate=False)


class _Heads(nn.Module):
    """The two heads of an encoder as one module (so checkpoints name only head tensors)."""

    def __init__(self, encoder: GaussianEncoder) -> None:
        super().__init__()
        self.mean_head = encoder.mean_head
        self.var_head = encoder.var_head


def train_heads_cached(
    encoder: GaussianEncoder,
    ts: TrainingSet,
    cfg: TrainConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    query_features: Features | None = None,
    doc_features: Features | None = None,
    recipe: Mapping[str, Any] | None = None,
    evaluator: Evaluator | None = None,
    eval_every: int = 0,
    overwrite: bool = False,
    commands: Sequence[Mapping[str, Any]] | None = None,
) -> TrainResult:
    """The fast path: frozen backbone, features computed once (cached), only the heads train.

    With ``cfg.full_corpus`` the contrastive softmax runs over every document of the pool
    (other positives of the query masked out); otherwise over in-batch + hard negatives.

    Args:
        encoder: Its heads are trained in place; the backbone is never run after the features exist.
        ts: Training data.
        cfg: Recipe (``lr`` around 1e-3 suits the heads).
        cache_dir: Feature cache (see :func:`compute_features`), of the training data and of a
            :class:`RetrievalEvaluator`'s split.
        checkpoint_dir: Checkpoint folder (a non-empty folder that is not a checkpoint, or a symbolic link, is
            refused unless ``overwrite``, with ``resume`` too, as in :func:`train_encoder`).
        resume: Continue from its checkpoint (refused when there is none, or when it was written with another
            recipe or other data, as in :func:`train_encoder`).
        query_features: Precomputed features of ``prefixed_queries(encoder, ts.queries)`` (the queries behind
            the encoder's query prefix, as ``encode_queries`` sees them; skips :func:`compute_features`).
        doc_features: Precomputed features of ``ts.docs``.
        recipe: Further JSON-ready entries recorded in checkpoints and checked on resume.
        evaluator: As in :func:`train_encoder`. A :class:`RetrievalEvaluator` (:func:`retrieval_evaluator`)
            runs without the backbone: the evaluation split's features are computed once before training
            (:meth:`RetrievalEvaluator.features`, through ``cache_dir``), and each evaluation applies the current
            heads to them (:meth:`RetrievalEvaluator.from_features`; the same retrieval and metric as a call).
            Any other evaluator, a subclass with its own ``__call__`` included, is called with the whole encoder,
            whose heads hold the current weights (moved back beside the backbone for the call), so it encodes
            texts through the backbone.
        eval_every: Steps between evaluations (0: only at the end).
        overwrite: As in :func:`train_encoder`.
        commands: As in :func:`train_encoder` (a call's own entry names ``kl_retrievers.training.train_heads_cached``).

    The training record (``config.extra["training"]``, :func:`record_training`) is written as in
    :func:`train_encoder`.

    Returns:
        A :class:`TrainResult`.

    Examples:
        >>> result = train_heads_cached(encoder, ts, TrainConfig(steps=500, lr=1e-3))  # doctest: +SKIP
    """
    invocation = _python_invocation("train_heads_cached") if commands is None else None  # started now
    _check_inputs(ts, cfg)
    if cfg.loss == "contrastive" and cfg.full_corpus and not cfg.in_batch:
        raise ValueError(
            "in_batch=False (--no-in-batch) would be ignored: with full_corpus (the default) train_heads_cached's "
            "contrastive softmax runs over the pool (every document, or corpus_sample of them plus every candidate "
            "of the batch), whichever query a candidate came with; set full_corpus=False (--no-full-corpus) for each "
            f"query's own candidates only, or leave in_batch on{_RESUMES_WITHOUT_IN_BATCH if resume else ''}"
        )
    _check_evaluator(evaluator, eval_every)
    need_teacher = _check_teacher(ts, cfg)
    _check_negatives_exist(ts, cfg)
    device = _device(cfg)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    full_recipe = training_recipe(cfg, ts, encoder, mode="heads_only_cached", **dict(recipe or {}))
    if resume:  # a resume refused for another recipe is refused before any backbone pass (_optimise checks again)
        _checked_checkpoint(ckpt, full_recipe, cfg.steps)
    if ckpt is not None:  # before any backbone pass; a resume's too (a link there is refused, not replaced)
        check_checkpoint_folder(ckpt, overwrite=overwrite, resume=resume)
    record_recipe = {"mode": "heads_only_cached"}
    if query_features is None:  # the prefixed texts, as encode_queries sees them
        query_features = compute_features(
            encoder,
            prefixed_queries(encoder, ts.queries),
            max_length=encoder.config.query_max_length,
            cache_dir=cache_dir,
            show_progress=cfg.show_progress,
            desc="Query features",
        )
    if doc_features is None:
        doc_features = compute_features(
            encoder,
            ts.docs,
            max_length=encoder.config.max_length,
            cache_dir=cache_dir,
            show_progress=cfg.show_progress,
            desc="Document features",
        )
    # a retrieval evaluator's split: its backbone features once, after a resume's checks (prepare_evaluation);
    # each evaluation applies the heads to them (a subclass with its own __call__ is called as any evaluator)
    retrieval = (
        evaluator
        if isinstance(evaluator, RetrievalEvaluator) and type(evaluator).__call__ is RetrievalEvaluator.__call__
        else None
    )
    eval_features: list[tuple[Features, Features]] = []

    def prepare_evaluation() -> None:
        if retrieval is not None:
            eval_features.append(retrieval.features(encoder, cache_dir=cache_dir, show_progress=cfg.show_progress))

    qp, qs = query_features.torch(device)
    dp, ds = doc_features.torch(device)
    positives = ts.positives_by_query()
    # the heads train on `device`; they go back to where they were (beside the backbone) afterwards
    home = (encoder.mean_head.weight.device, encoder.var_head.weight.device)
    heads = _Heads(encoder).to(device)
    all_docs = np.arange(len(ts.docs))
    full_corpus = cfg.loss == "contrastive" and cfg.full_corpus

    def micro_loss(step: int, micro: int) -> torch.Tensor:
        batch = _sample(ts, cfg, step, micro, need_teacher, positives)
        qidx = torch.from_numpy(batch.queries).to(device)
        uniq = inverse = None
        with _autocast(device, cfg):  # the heads only: the scores and the loss run in float32 below
            qm, qv = heads_forward(encoder, qp[qidx], qs[qidx])
            if full_corpus:
                if 0 < cfg.corpus_sample < len(all_docs):
                    rng = np.random.default_rng([cfg.seed, step, micro, 1])
                    drawn = rng.choice(len(all_docs), size=cfg.corpus_sample, replace=False)
                    pool = np.unique(np.concatenate([drawn, batch.cands.reshape(-1)]))
                    u = torch.from_numpy(pool).to(device)
                    dm, dv = heads_forward(encoder, dp[u], ds[u])
                else:
                    pool = all_docs
                    dm, dv = heads_forward(encoder, dp, ds)
            else:
                uniq, inverse = np.unique(batch.cands, return_inverse=True)
                u = torch.from_numpy(uniq).to(device)
                dm, dv = heads_forward(encoder, dp[u], ds[u])
        # -KL's inner-product expansion cancels large terms: under bf16 autocast its matmuls lose the
        # within-row differences the softmax needs, so it runs outside autocast, in float32
        qm, qv, dm, dv = qm.float(), qv.float(), dm.float(), dv.float()
        if uniq is None:
            matrix = loss_fns.score_matrix(qm, qv, dm, dv, cfg.similarity)
            return _loss_from_scores(cfg, batch, None, matrix, pool)
        assert inverse is not None
        return _batch_loss(cfg, batch, (qm, qv, dm, dv), uniq, inverse, device)

    def evaluate(step: int) -> dict[str, Any]:
        assert evaluator is not None
        if retrieval is not None:  # the heads where they train; no backbone pass
            if not eval_features:  # _optimise calls prepare before any evaluation
                raise RuntimeError("the evaluation split's features were not computed before an evaluation")
            q_feats, d_feats = eval_features[0]
            return _run_evaluation(encoder, lambda enc: retrieval.from_features(enc, q_feats, d_feats), step)
        # encode_* runs the backbone and heads on one device: the heads go home for the call, then back
        encoder.mean_head.to(home[0])
        encoder.var_head.to(home[1])
        try:
            return _run_evaluation(encoder, evaluator, step)
        finally:
            heads.to(device)

    trainable = [(p, p.requires_grad) for p in encoder.parameters()]  # the caller's freezing, given back at the end

    def optimise(changed: Callable[[], None]) -> TrainResult:
        for p in encoder.parameters():
            p.requires_grad_(False)
        for p in heads.parameters():
            p.requires_grad_(True)
        return _optimise(
            heads,
            cfg,
            micro_loss,
            checkpoint_dir=ckpt,
            resume=resume,
            desc="Training heads",
            recipe=full_recipe,
            evaluate=evaluate if evaluator is not None else None,
            eval_every=eval_every,
            prepare=prepare_evaluation,
            description=evaluator_description(evaluator, encoder) if evaluator is not None else None,
            changed=changed,
            commands=commands,
            invocation=invocation,
        )

    def give_back() -> None:
        encoder.mean_head.to(home[0])
        encoder.var_head.to(home[1])
        for p, was in trainable:
            p.requires_grad_(was)

    return _recorded_run(encoder, cfg, ts, record_recipe, optimise, finally_=give_back)
