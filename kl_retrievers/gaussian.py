"""Diagonal Gaussians, the -KL score and its exact rewrite as an inner product.

The score used everywhere in this package is ``-KL(Q || D)``: the query
distribution comes first and **higher is better**.  For diagonal Gaussians
``Q = N(mu_q, diag(var_q))`` and ``D = N(mu_d, diag(var_d))`` in ``k`` dimensions::

    KL(Q || D) = 1/2 * sum_i [ log var_d_i - log var_q_i - 1
                               + var_q_i / var_d_i + (mu_q_i - mu_d_i)^2 / var_d_i ]

Expanding the square gives an exact inner-product form (``2k + 1`` dimensions)::

    -KL(Q || D) = <q~, d~> + c(q)
    q~ = [1, var_q + mu_q^2, mu_q]
    d~ = [-1/2 * sum_i (log var_d_i + mu_d_i^2 / var_d_i), -1 / (2 var_d), mu_d / var_d]
    c(q) = 1/2 * sum_i (log var_q_i + 1)

``c(q)`` depends on the query only, so it never changes a ranking, but adding it back
reports the true -KL.  Every function here accepts numpy arrays or torch tensors
(float32 or float64) and returns the same kind.

Examples:
    >>> import numpy as np
    >>> from kl_retrievers import Gaussians, neg_kl_matrix
    >>> q = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
    >>> d = Gaussians(np.array([[0.0, 0.0], [1.0, 0.0]]), np.ones((2, 2)))
    >>> neg_kl_matrix(q, d)
    array([[ 0. , -0.5]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "SCORE_NAME",
    "SCORE_DIRECTION",
    "Gaussians",
    "neg_kl",
    "neg_kl_matrix",
    "kl_query_vectors",
    "kl_document_vectors",
    "kl_query_constant",
]

#: The one score this package reports, and its direction.
SCORE_NAME = "neg_kl"
SCORE_DIRECTION = "higher_is_better"

#: A numpy array or a torch tensor (typed loosely: the functions accept either).
Array = Any

# Pairwise -KL is evaluated in blocks of at most this many (query, doc, dim) elements.
_BLOCK_ELEMENTS = 1 << 23


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _check_finite(name: str, x: Array) -> None:
    finite = torch.isfinite(x).all().item() if _is_torch(x) else bool(np.isfinite(x).all())
    if not finite:
        bad = int((~torch.isfinite(x)).sum().item()) if _is_torch(x) else int((~np.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite; found {bad} NaN or infinite value(s)")


@dataclass(frozen=True)
class Gaussians:
    """A batch of ``n`` diagonal Gaussians in ``k`` dimensions.

    Args:
        mean: Means, shape ``(n, k)`` (a 1-D array is read as one Gaussian).
        var: Variances, same shape as ``mean``; every value finite and > 0.
        validate: Check shapes, finiteness and positivity (default ``True``).

    Both arrays are numpy arrays or both torch tensors, of one float dtype.

    Examples:
        >>> import numpy as np
        >>> g = Gaussians(np.zeros((3, 4)), np.full((3, 4), 0.5))
        >>> len(g), g.dim
        (3, 4)
    """

    mean: Array
    var: Array
    validate: bool = True

    def __post_init__(self) -> None:
        mean, var = self.mean, self.var
        if _is_torch(mean) != _is_torch(var):
            raise TypeError("mean and var must both be numpy arrays or both torch tensors")
        if not _is_torch(mean):
            mean = np.asarray(mean)
            var = np.asarray(var)
            if mean.dtype not in (np.float32, np.float64):
                mean = mean.astype(np.float64)
            if var.dtype != mean.dtype:
                var = var.astype(mean.dtype)
        elif var.dtype != mean.dtype:
            var = var.to(mean.dtype)
        if mean.ndim == 1:
            mean = mean[None, :]
        if var.ndim == 1:
            var = var[None, :]
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)
        if mean.ndim != 2 or tuple(mean.shape) != tuple(var.shape):
            raise ValueError(
                f"mean and var must have the same 2-D shape (n, k); got mean {tuple(mean.shape)} "
                f"and var {tuple(var.shape)}"
            )
        if not self.validate:
            return
        _check_finite("mean", mean)
        _check_finite("var", var)
        positive = bool((var > 0).all())
        if not positive:
            bad = int((var <= 0).sum())
            low = float(var.min())
            raise ValueError(f"var must be > 0; found {bad} non-positive value(s) (min {low:g})")

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def __getitem__(self, index: Any) -> Gaussians:
        mean, var = self.mean[index], self.var[index]
        return Gaussians(mean, var, validate=False)

    @property
    def dim(self) -> int:
        """The dimension ``k``."""
        return int(self.mean.shape[1])

    @property
    def is_torch(self) -> bool:
        """Whether the arrays are torch tensors."""
        return _is_torch(self.mean)

    def numpy(self) -> Gaussians:
        """The same Gaussians as numpy arrays (detached, on the CPU)."""
        if not self.is_torch:
            return self
        mean = self.mean.detach().cpu().numpy()
        var = self.var.detach().cpu().numpy()
        return Gaussians(mean, var, validate=False)

    def torch(self, device: str | torch.device | None = None) -> Gaussians:
        """The same Gaussians as torch tensors (sharing memory where possible)."""
        mean = self.mean if self.is_torch else torch.from_numpy(np.ascontiguousarray(self.mean))
        var = self.var if self.is_torch else torch.from_numpy(np.ascontiguousarray(self.var))
        if device is not None:
            mean, var = mean.to(device), var.to(device)
        return Gaussians(mean, var, validate=False)

    def astype(self, dtype: Any) -> Gaussians:
        """Cast both arrays, e.g. ``np.float64`` or ``torch.float64``."""
        if self.is_torch:
            return Gaussians(self.mean.to(dtype), self.var.to(dtype), validate=False)
        return Gaussians(self.mean.astype(dtype), self.var.astype(dtype), validate=False)

    def uncertainty(self) -> Array:
        """Mean log-variance of each Gaussian, shape ``(n,)``: higher is more uncertain."""
        if self.is_torch:
            return torch.log(self.var).mean(dim=1)
        return np.log(self.var).mean(axis=1)

    @classmethod
    def concat(cls, parts: list[Gaussians]) -> Gaussians:
        """Concatenate batches along the first axis."""
        if not parts:
            raise ValueError("concat needs at least one Gaussians batch; got an empty list")
        if parts[0].is_torch:
            return cls(torch.cat([p.mean for p in parts]), torch.cat([p.var for p in parts]), validate=False)
        return cls(np.concatenate([p.mean for p in parts]), np.concatenate([p.var for p in parts]), validate=False)


def _same_kind(q: Gaussians, d: Gaussians) -> None:
    if q.is_torch != d.is_torch:
        raise TypeError("queries and documents must both be numpy or both torch; convert with .numpy() or .torch()")
    if q.dim != d.dim:
        raise ValueError(
            f"queries and documents must have the same dimension; got queries {tuple(q.mean.shape)} "
            f"and documents {tuple(d.mean.shape)}"
        )


def _log(x: Array) -> Array:
    return torch.log(x) if _is_torch(x) else np.log(x)


def neg_kl(queries: Gaussians, documents: Gaussians) -> Array:
    """Row-wise ``-KL(Q_i || D_i)``, with broadcasting of a batch of one.

    Args:
        queries: ``n`` query Gaussians (or one, scored against every document).
        documents: ``n`` document Gaussians (or one).

    Returns:
        Shape ``(max(n_q, n_d),)``; higher is better, 0 for identical Gaussians.

    Examples:
        >>> import numpy as np
        >>> q = Gaussians(np.zeros(2), np.ones(2))
        >>> d = Gaussians(np.array([[0.0, 0.0], [2.0, 0.0]]), np.ones((2, 2)))
        >>> neg_kl(q, d)
        array([ 0., -2.])
    """
    _same_kind(queries, documents)
    nq, nd = len(queries), len(documents)
    if nq != nd and 1 not in (nq, nd):
        raise ValueError(
            f"neg_kl pairs rows one to one (or broadcasts a batch of one); got {nq} queries and {nd} documents; "
            "use neg_kl_matrix for all pairs"
        )
    mq, vq, md, vd = queries.mean, queries.var, documents.mean, documents.var
    terms = _log(vd) - _log(vq) - 1.0 + vq / vd + (mq - md) ** 2 / vd
    return 0.0 - 0.5 * (terms.sum(-1) if _is_torch(terms) else terms.sum(axis=-1))


def neg_kl_matrix(queries: Gaussians, documents: Gaussians) -> Array:
    """All-pairs ``-KL(Q_i || D_j)`` computed term by term (the exact reference).

    Memory is bounded by evaluating blocks of documents at a time.

    Args:
        queries: ``n_q`` query Gaussians.
        documents: ``n_d`` document Gaussians.

    Returns:
        Score matrix of shape ``(n_q, n_d)``; higher is better.

    Examples:
        >>> import numpy as np
        >>> q = Gaussians(np.zeros((2, 3)), np.ones((2, 3)))
        >>> neg_kl_matrix(q, q).shape
        (2, 2)
    """
    _same_kind(queries, documents)
    nq, nd, k = len(queries), len(documents), queries.dim
    torch_mode = queries.is_torch
    mq, vq = queries.mean[:, None, :], queries.var[:, None, :]
    log_vq = _log(vq)
    block = max(1, _BLOCK_ELEMENTS // max(1, nq * k))
    out: list[Array] = []
    for start in range(0, nd, block):
        md = documents.mean[None, start : start + block, :]
        vd = documents.var[None, start : start + block, :]
        terms = _log(vd) - log_vq - 1.0 + vq / vd + (mq - md) ** 2 / vd
        out.append(0.0 - 0.5 * (terms.sum(-1) if torch_mode else terms.sum(axis=-1)))
    if not out:
        if torch_mode:
            return torch.zeros((nq, 0), dtype=queries.mean.dtype, device=queries.mean.device)
        return np.zeros((nq, 0), dtype=queries.mean.dtype)
    return torch.cat(out, dim=1) if torch_mode else np.concatenate(out, axis=1)


def _cat(parts: list[Array]) -> Array:
    return torch.cat(parts, dim=1) if _is_torch(parts[0]) else np.concatenate(parts, axis=1)


def kl_query_vectors(queries: Gaussians) -> Array:
    """Query side ``q~ = [1, var_q + mu_q^2, mu_q]`` of the rewrite, shape ``(n, 2k + 1)``.

    Examples:
        >>> import numpy as np
        >>> kl_query_vectors(Gaussians(np.array([[2.0]]), np.array([[0.5]])))
        array([[1. , 4.5, 2. ]])
    """
    m, v = queries.mean, queries.var
    ones = torch.ones_like(m[:, :1]) if _is_torch(m) else np.ones_like(m[:, :1])
    return _cat([ones, v + m**2, m])


def kl_document_vectors(documents: Gaussians) -> Array:
    """Document side ``d~`` of the rewrite, shape ``(n, 2k + 1)``.

    ``d~ = [-1/2 * sum(log var_d + mu_d^2 / var_d), -1 / (2 var_d), mu_d / var_d]``, so that
    ``<q~, d~> + c(q) = -KL(Q || D)`` exactly.

    Examples:
        >>> import numpy as np
        >>> kl_document_vectors(Gaussians(np.array([[2.0]]), np.array([[1.0]])))
        array([[-2. , -0.5,  2. ]])
    """
    m, v = documents.mean, documents.var
    inv = 1.0 / v
    first = -0.5 * (_log(v) + m**2 * inv)
    first = first.sum(-1, keepdim=True) if _is_torch(first) else first.sum(axis=1, keepdims=True)
    return _cat([first, -0.5 * inv, m * inv])


def kl_query_constant(queries: Gaussians) -> Array:
    """The query-only term ``c(q) = 1/2 * sum(log var_q + 1)``, shape ``(n,)``.

    Examples:
        >>> import numpy as np
        >>> kl_query_constant(Gaussians(np.zeros((1, 4)), np.ones((1, 4))))
        array([2.])
    """
    t = _log(queries.var) + 1.0
    return 0.5 * t.sum(-1) if _is_torch(t) else 0.5 * t.sum(axis=1)
