"""Scores and training losses for Gaussian (and vector twin) retrievers.

Every loss takes student scores computed by :func:`score_matrix` or :func:`score_candidates`,
whose ``similarity`` argument is the only thing that differs between a Gaussian model and its
twins:

* ``"neg_kl"``: ``-KL(Q || D)`` of the diagonal Gaussians (uses means and variances);
* ``"dot"``: ``<mu_q, mu_d>`` (variances unused);
* ``"cosine"``: ``cos(mu_q, mu_d)`` (variances unused).

Losses (all averaged over queries):

* :func:`contrastive_loss`: cross-entropy over in-batch / hard / full-corpus candidates with a temperature;
* :func:`margin_mse_loss`: MarginMSE, ``(s_pos - s_neg) - (t_pos - t_neg)`` squared;
* :func:`listwise_kl_loss`: ``KL(softmax(t / T_t) || softmax(s / T))`` over each query's candidates;
* :func:`lambdarank_loss`: the paper's pairwise loss weighted like LambdaRank,
  ``sum_{t_i > t_j} |1/rank_i - 1/rank_j| * log(1 + exp(s_j - s_i))``.

Examples:
    >>> import torch
    >>> s = torch.tensor([[2.0, 0.0]])
    >>> round(float(contrastive_loss(s, torch.tensor([0]), temperature=1.0)), 4)
    0.1269
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from kl_retrievers._config import SIMILARITIES, Similarity

logger = logging.getLogger(__name__)

__all__ = [
    "LOSSES",
    "SIMILARITIES",
    "Loss",
    "RankBy",
    "Similarity",
    "contrastive_loss",
    "lambdarank_loss",
    "listwise_kl_loss",
    "margin_mse_loss",
    "score_candidates",
    "score_matrix",
]

#: Training losses (:attr:`~kl_retrievers.training.trainer.TrainConfig.loss`); :data:`LOSSES` reads its values.
Loss = Literal["contrastive", "margin_mse", "listwise", "lambdarank"]
LOSSES: tuple[Loss, ...] = get_args(Loss)
#: Which scores rank the documents in :func:`lambdarank_loss`.
RankBy = Literal["student", "teacher"]


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}; got {similarity!r}")


def score_matrix(
    q_mean: torch.Tensor,
    q_var: torch.Tensor,
    d_mean: torch.Tensor,
    d_var: torch.Tensor,
    similarity: Similarity = "neg_kl",
) -> torch.Tensor:
    """Scores of every query against every document, shape ``(n_q, n_d)``; higher is better.

    ``neg_kl`` is computed through the inner-product expansion (no ``n_q x n_d x k`` tensor):
    ``-KL = -1/2 sum_i [log vd - log vq - 1 + vq/vd + (mq - md)^2 / vd]``, after every mean is shifted by the
    queries' mean (``-KL`` does not change when both means move together; the shift is not differentiated), so
    that the expansion's terms ``mu^2 / var`` stay small where means are large and variances small. Scores are
    computed with ``torch.autocast`` turned off and the inputs in one dtype, float32 at least (half-precision
    inputs upcast, gradients still reaching them; a float64 input makes all four float64), so that they rank
    the same inside a bf16 autocast region as outside it.

    Args:
        q_mean: ``(n_q, k)`` query means.
        q_var: ``(n_q, k)`` query variances (ignored unless ``neg_kl``).
        d_mean: ``(n_d, k)`` document means.
        d_var: ``(n_d, k)`` document variances (ignored unless ``neg_kl``).
        similarity: ``"neg_kl"``, ``"dot"`` or ``"cosine"``.

    Examples:
        >>> m = torch.zeros(1, 2); v = torch.ones(1, 2)
        >>> score_matrix(m, v, m + 1.0, v, "neg_kl")
        tensor([[-1.]])
    """
    with _full_precision(q_mean):
        q_mean, q_var, d_mean, d_var = _upcast(q_mean, q_var, d_mean, d_var)
        if similarity == "neg_kl":  # one shift of every mean (not differentiated) keeps the expansion's terms small
            centre = q_mean.detach().mean(0)
            q_mean, d_mean = q_mean - centre, d_mean - centre
        return _scores(q_mean, q_var, d_mean, d_var, similarity, lambda q, d: q @ d.T)


def score_candidates(
    q_mean: torch.Tensor,
    q_var: torch.Tensor,
    d_mean: torch.Tensor,
    d_var: torch.Tensor,
    similarity: Similarity = "neg_kl",
) -> torch.Tensor:
    """Scores of each query against its own candidates: ``(n, k)`` queries, ``(n, m, k)`` documents -> ``(n, m)``.

    The same formula as :func:`score_matrix` (``neg_kl`` through its inner-product expansion), each query
    against its own ``m`` documents. For ``neg_kl`` each query's candidates are first centred on its mean
    (``-KL`` does not change when both means move together; the shift is not differentiated): the expansion's
    terms ``mu^2 / var`` then stay as small as ``(mu_q - mu_d)^2 / var``, so that float32 keeps the
    precision of the direct form where means are large and variances small. Like :func:`score_matrix`, it runs
    with autocast off and the inputs in one dtype, float32 at least.

    Examples:
        >>> q = torch.zeros(1, 2); d = torch.zeros(1, 3, 2)
        >>> score_candidates(q, q + 1, d, d + 1, "dot").shape
        torch.Size([1, 3])
    """
    with _full_precision(q_mean):
        q_mean, q_var, d_mean, d_var = _upcast(q_mean, q_var, d_mean, d_var)
        if similarity == "neg_kl":
            centre = q_mean.detach()
            q_mean, d_mean = q_mean - centre, d_mean - centre[:, None, :]
        return _scores(q_mean, q_var, d_mean, d_var, similarity, lambda q, d: (d @ q[:, :, None]).squeeze(-1))


def _autocast_on(device: str) -> bool:
    """Whether ``torch.autocast`` is active on ``device`` (any device type torch supports autocast on)."""
    try:
        return bool(torch.is_autocast_enabled(device))  # torch >= 2.4: every device type
    except (TypeError, RuntimeError):  # older torch: CPU and CUDA have their own switches
        if device == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return device == "cuda" and bool(torch.is_autocast_enabled())


@contextlib.contextmanager
def _full_precision(like: torch.Tensor) -> Iterator[None]:
    """Autocast off on ``like``'s device where it is on: the scores run in their inputs' precision.

    ``-KL``'s inner-product expansion cancels large terms, so under bfloat16 or float16 autocast its matmuls
    lose the within-row differences a ranking (or a softmax) needs. Outside autocast nothing is entered (the
    ops of an ``autocast(enabled=False)`` region cost a few microseconds more).
    """
    device = like.device.type
    if not _autocast_on(device):
        yield
        return
    with torch.autocast(device_type=device, enabled=False):
        yield


def _upcast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in one floating dtype, differentiably: the widest of theirs, float32 at least.

    Half-precision inputs (float16, bfloat16) become float32; a float64 input makes every one float64 (mixed
    dtypes would otherwise fail in the matmuls).
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _scores(
    q_mean: torch.Tensor,
    q_var: torch.Tensor,
    d_mean: torch.Tensor,
    d_var: torch.Tensor,
    similarity: str,
    inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The one score formula of :func:`score_matrix` and :func:`score_candidates`, given their inner product.

    ``inner(q, d)`` is the inner product of each query row of ``q`` with its documents in ``d`` (every row of
    ``d``, or the query's own candidates); ``-KL`` is its inner-product expansion, the one the stores serve.
    """
    _check_similarity(similarity)
    if similarity == "dot":
        return inner(q_mean, d_mean)
    if similarity == "cosine":
        return inner(F.normalize(q_mean, dim=-1), F.normalize(d_mean, dim=-1))
    inv = 1.0 / d_var
    doc_term = (torch.log(d_var) + d_mean.pow(2) * inv).sum(-1)  # (n_d,) or (n, m)
    query_term = (torch.log(q_var) + 1.0).sum(-1)  # (n_q,)
    cross = inner(q_var + q_mean.pow(2), inv) - 2.0 * inner(q_mean, d_mean * inv)
    return -0.5 * (doc_term - query_term[:, None] + cross)


def contrastive_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 0.05,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of each query's positive among its candidates.

    Args:
        scores: ``(n_q, n_candidates)`` student scores (in-batch + hard negatives, or the full corpus).
        targets: ``(n_q,)`` column of each query's positive.
        temperature: Scores are divided by it before the softmax.
        mask: Optional bool ``(n_q, n_candidates)``; ``True`` removes a candidate (e.g. another
            positive of the same query that is not the target).

    Examples:
        >>> round(float(contrastive_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([0]), temperature=1.0)), 4)
        0.6931
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    logits = scores / temperature
    if mask is not None:
        keep_target = F.one_hot(targets, logits.shape[1]).bool()
        logits = logits.masked_fill(mask & ~keep_target, float("-inf"))
    return F.cross_entropy(logits, targets)


def margin_mse_loss(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MarginMSE: column 0 is the positive, the other columns negatives.

    ``mean_{q, j>0} ((s_q0 - s_qj) - (t_q0 - t_qj))^2``

    Examples:
        >>> s = torch.tensor([[1.0, 0.0]]); t = torch.tensor([[3.0, 0.0]])
        >>> float(margin_mse_loss(s, t))
        4.0
    """
    if scores.shape != teacher.shape or scores.shape[1] < 2:
        raise ValueError(f"scores and teacher must share a shape (n, m >= 2); got {scores.shape}, {teacher.shape}")
    student_margin = scores[:, :1] - scores[:, 1:]
    teacher_margin = teacher[:, :1] - teacher[:, 1:]
    return F.mse_loss(student_margin, teacher_margin.to(student_margin.dtype))


def listwise_kl_loss(
    scores: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 1.0, teacher_temperature: float = 1.0
) -> torch.Tensor:
    """``KL(p_teacher || p_student)`` of the softmax distributions over each query's candidates.

    Examples:
        >>> round(float(listwise_kl_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))), 4)
        0.1109
    """
    if scores.shape != teacher.shape:
        raise ValueError(f"scores and teacher must share a shape; got {scores.shape}, {teacher.shape}")
    for name, value in (("temperature", temperature), ("teacher_temperature", teacher_temperature)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value!r}")
    log_p_student = F.log_softmax(scores / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.to(scores.dtype) / teacher_temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def lambdarank_loss(scores: torch.Tensor, teacher: torch.Tensor, *, rank_by: RankBy = "student") -> torch.Tensor:
    """The paper's LambdaRank-weighted pairwise loss (METHOD.md, training).

    For each query and each pair ``(i, j)`` with ``t_i > t_j``:
    ``|1/rank_i - 1/rank_j| * log(1 + exp(s_j - s_i))``, summed over pairs and averaged over
    queries. ``rank`` is the 1-based position in the current *student* ranking of the candidates
    (as in LambdaRank, where the weight is the metric change of swapping the pair; here
    reciprocal rank), detached from the graph; ``rank_by="teacher"`` uses the teacher's ranking.

    Examples:
        >>> s = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[1.0, 0.0]])
        >>> round(float(lambdarank_loss(s, t)), 4)  # ranks 1, 2 -> weight 0.5; 0.5 * log 2
        0.3466
    """
    if scores.shape != teacher.shape:
        raise ValueError(f"scores and teacher must share a shape; got {scores.shape}, {teacher.shape}")
    if rank_by not in get_args(RankBy):
        raise ValueError(f"rank_by must be 'student' or 'teacher'; got {rank_by!r}")
    basis = (scores if rank_by == "student" else teacher).detach()
    order = torch.argsort(basis, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, basis.shape[1] + 1, device=basis.device).expand_as(order))
    inv_rank = 1.0 / ranks.to(scores.dtype)
    weight = (inv_rank[:, :, None] - inv_rank[:, None, :]).abs()
    t = teacher.to(scores.dtype)
    better = (t[:, :, None] > t[:, None, :]).to(scores.dtype)  # pair (i, j): teacher prefers i
    pair_loss = F.softplus(scores[:, None, :] - scores[:, :, None])  # log(1 + exp(s_j - s_i))
    return (weight * better * pair_loss).sum(dim=(1, 2)).mean()
