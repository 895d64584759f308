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
reports the true -KL.

numpy and torch: :class:`Gaussians`, :func:`neg_kl`, :func:`neg_kl_matrix`,
:func:`kl_query_vectors`, :func:`kl_document_vectors` and :func:`kl_query_constant` accept numpy
arrays or torch tensors (float32 or float64) and return the same kind. :func:`exact_top_k`,
:func:`float64_top_k`, :func:`check_float32_scorable` and :func:`means_centre` also accept torch
input but compute and return numpy. The rest (the reduction to L2, :func:`document_gaussians_from_vectors`,
the re-scoring helpers) work on stored numpy arrays: the reduction functions raise ``TypeError``
for a tensor.

Examples:
    >>> import numpy as np
    >>> from kl_retrievers import Gaussians, neg_kl_matrix
    >>> q = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
    >>> d = Gaussians(np.array([[0.0, 0.0], [1.0, 0.0]]), np.ones((2, 2)))
    >>> neg_kl_matrix(q, d)
    array([[ 0. , -0.5]])
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kl_retrievers._checks import check_bool

if TYPE_CHECKING:
    import torch
else:

    class _LazyTorch:
        """Stands for the torch module and imports it on first use: numpy-only callers never load torch.

        Only code paths that already hold a tensor (:func:`_is_torch` is true, so torch is loaded) or
        that convert to torch (:meth:`Gaussians.torch`) reach it.
        """

        def __getattr__(self, name: str) -> Any:
            try:
                module = importlib.import_module("torch")
            except ImportError as exc:
                raise ModuleNotFoundError(
                    f'torch tensors need torch, which the core install leaves out; pip install "kl-retrievers[torch]" '
                    f"({exc})",
                    name="torch",
                ) from exc
            return getattr(module, name)

    torch = _LazyTorch()

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

logger = logging.getLogger(__name__)

#: The one score this package reports, and its direction.
SCORE_NAME = "neg_kl"
SCORE_DIRECTION = "higher_is_better"

#: A numpy array or a torch tensor (typed loosely: the functions accept either).
Array = Any

# Pairwise -KL is evaluated in blocks of at most this many (query, doc, dim) elements.
_BLOCK_ELEMENTS = 1 << 23


def _loaded_class(module: str, name: str) -> type | None:
    """The class ``name`` of ``module`` if that module is loaded and defines it yet, else ``None``; never imports.

    A module another thread is still importing is in ``sys.modules`` already, partly initialised: its class may
    not exist yet, and then no object of that class exists either.
    """
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) else None


def _is_torch(x: Any) -> bool:
    if isinstance(x, np.ndarray):  # the common case, answered without a look into sys.modules
        return False
    cls = _loaded_class("torch", "Tensor")  # a tensor exists only once torch is loaded: never import it here
    return cls is not None and isinstance(x, cls)


def _position(x: Array, flat: int) -> str:
    """The flat index ``flat`` of ``x`` as the messages name it: "row 3, column 7" (2-D) or "position 7"."""
    if x.ndim == 2:
        return f"row {flat // int(x.shape[1])}, column {flat % int(x.shape[1])}"
    return f"position {flat}"


def _first_bad(x: Array, bad: Array) -> str:
    """Where the first ``True`` of the mask ``bad`` is, and the value of ``x`` there: "first at row 3, column 7: nan".

    A value wider than float64 (``np.longdouble``) is shown as the caller wrote it, never cast (1e+400, not inf).
    """
    flat = int(bad.reshape(-1).nonzero()[0][0]) if _is_torch(x) else int(np.flatnonzero(bad)[0])
    return f"first at {_position(x, flat)}: {_shown(x.reshape(-1)[flat])}"


def _shown(value: Any) -> str:
    """One number as the messages show it (``%g``); a float wider than float64 (``np.longdouble``) as the caller
    wrote it, never cast (1e+400, not inf; -1e-4000, not -0)."""
    return str(value) if isinstance(value, np.floating) and value.dtype.itemsize > 8 else f"{float(value):g}"


def _check_real(name: str, x: Array, takes: str = "Gaussians take") -> None:
    """``TypeError`` naming the dtype of ``x`` (an array or tensor) unless it holds bool, integer or floating numbers.

    Complex numbers would lose their imaginary part and strings be parsed as numbers; nothing is cast. A tensor
    on torch's ``meta`` device (a shape without data) is refused too: no value of it can be read or scored.
    """
    if _is_torch(x):
        if x.is_meta:
            raise TypeError(
                f"{name} is a tensor on the meta device (a shape without data); {takes} tensors that hold data "
                "(on cpu, cuda or mps): create it on one of those, or fill it first (e.g. .to_empty(device='cpu'))"
            )
        if x.dtype.is_complex:
            raise TypeError(f"{name} has dtype {x.dtype}; {takes} bool, integer or floating tensors only")
    elif x.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {x.dtype}; {takes} bool, integer or floating arrays only")


def _is_masked(x: Any) -> bool:
    cls = _loaded_class("numpy.ma", "MaskedArray")  # exists only once numpy.ma is loaded: never import it here
    return cls is not None and isinstance(x, cls)


def _may_hold_rows(x: list[Any] | tuple[Any, ...]) -> bool:
    """Whether a list holds torch tensors or masked arrays (rows), which ``np.asarray`` would not convert by
    :func:`_real_numpy`'s rules; scanned only when it can: torch or numpy.ma is loaded and the first item is not
    a plain number (a flat list of numbers, such as one embedding, is never scanned)."""
    if not x or isinstance(x[0], (int, float, np.number)):
        return False
    if "torch" not in sys.modules and "numpy.ma" not in sys.modules:
        return False
    return any(_is_torch(row) or _is_masked(row) for row in x)


def _unmasked(x: Any, name: str, takes: str) -> np.ndarray:
    """The data of the masked array ``x`` when no element is masked; else ``ValueError`` naming how many are.

    ``np.asarray`` would drop the mask and read the values under it as numbers.
    """
    mask = np.ma.getmaskarray(x)
    if mask.any():
        data = np.ma.getdata(x)
        raise ValueError(
            f"{name} is a masked array with {int(mask.sum())} masked value(s) of {mask.size} (first at "
            f"{_position(data, int(np.flatnonzero(mask)[0]))}); {takes} plain values: the mask would be dropped, "
            "so fill them (.filled(value)) or drop those rows first"
        )
    return np.asarray(np.ma.getdata(x))


def _check_float64_range(arr: np.ndarray, name: str, takes: str, *, nonzero: bool = False) -> None:
    """``ValueError`` naming the caller's value when a float wider than float64 (``np.longdouble``) exceeds
    float64's range: the values are cast to float64 next, and the cast would make it ``inf`` before any check.

    ``nonzero`` (variances, which must stay > 0): a positive value too small for float64, which the cast would
    make 0 (1e-4000), is refused too, named as given; elsewhere 0 stands for it. A negative one (-1e-4000) is
    left to the caller's check of non-positive values (its fault is its sign), which names it as given too.
    """
    if arr.dtype.kind != "f" or arr.dtype.itemsize <= 8:
        return
    limit = np.finfo(np.float64).max
    too_big = np.isfinite(arr) & (np.abs(arr) > limit)
    if too_big.any():
        raise ValueError(
            f"{name} holds {int(too_big.sum())} value(s) beyond float64's range (magnitudes up to {limit:.4g}; "
            f"{_first_bad(arr, too_big)}); {takes} values float64 can hold"
        )
    if not nonzero:
        return
    with np.errstate(under="ignore"):
        too_small = (arr > 0) & (arr.astype(np.float64) == 0)
    if too_small.any():
        tiny = float(np.nextafter(np.float64(0), np.float64(1)))
        raise ValueError(
            f"{name} holds {int(too_small.sum())} nonzero value(s) too small for float64, which would become 0 "
            f"(magnitudes down to {tiny:.4g}; {_first_bad(arr, too_small)}); {takes} values float64 can hold"
        )


def _real_numpy(x: Any, name: str, takes: str = "Gaussians take", *, nonzero: bool = False) -> np.ndarray:
    """``x`` (numbers, an array, a tensor, or a list of vectors) as a numpy array, by :class:`Gaussians`' rules.

    The one conversion of caller's arrays: :class:`Gaussians` and the adapters' vector and score inputs. A
    torch tensor is detached and copied to the CPU, float16 and bfloat16 ones promoted to float32 (numpy has
    no bfloat16); a list or tuple of tensors (one vector per row) has each row converted so. Bool, integer
    and floating numbers keep their dtype (the caller casts); any other dtype (complex, strings, objects), and
    a tensor on the ``meta`` device, raise ``TypeError`` naming it (:func:`_check_real`). A numpy masked array
    with a masked element, and a ``np.longdouble`` value beyond float64's range (the callers cast to float64
    or float32), raise ``ValueError`` naming it; a masked array with none masked passes as its data.

    Args:
        x: The caller's value.
        name: What it is, for the message (``"mean"``, ``"query embeddings"``).
        takes: Who refuses it, with the verb (``"Gaussians take"``).
        nonzero: Refuse a nonzero ``np.longdouble`` value that float64 would make 0 too (variances).

    Examples:
        >>> _real_numpy([1, 2], "scores").dtype.kind
        'i'
        >>> _real_numpy(["1"], "scores", "query_features takes")
        Traceback (most recent call last):
        ...
        TypeError: scores has dtype <U1; query_features takes bool, integer or floating arrays only
    """
    if isinstance(x, (list, tuple)) and _may_hold_rows(x):
        x = [_real_numpy(row, name, takes) for row in x]
    if _is_torch(x):
        _check_real(name, x, takes)
        t = x.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        return np.asarray(t.numpy())
    arr = _unmasked(x, name, takes) if _is_masked(x) else np.asarray(x)
    _check_real(name, arr, takes)
    _check_float64_range(arr, name, takes, nonzero=nonzero)
    return arr


def _one_float_dtype(mean: Any, var: Any) -> bool:
    """Whether ``mean`` and ``var`` are plain numpy arrays of one dtype, float32 or float64 (native byte order).

    Such a pair is what :class:`Gaussians`' conversion (:func:`_real_numpy`, the cast to one dtype) gives, and it
    would leave it as it is: the batches this package builds from checked arrays (slices, casts, stored rows)
    skip that conversion, so each costs a few attribute reads. Subclasses (masked arrays, memory maps) and
    other dtypes are converted as before.
    """
    if type(mean) is not np.ndarray or type(var) is not np.ndarray:
        return False
    dtype = mean.dtype
    return dtype == var.dtype and (dtype == np.float64 or dtype == np.float32)


def _check_finite(name: str, x: Array) -> None:
    finite = torch.isfinite(x).all().item() if _is_torch(x) else bool(np.isfinite(x).all())
    if not finite:
        mask = ~torch.isfinite(x) if _is_torch(x) else ~np.isfinite(x)
        bad = int(mask.sum())
        raise ValueError(f"{name} must be finite; found {bad} NaN or infinite value(s) ({_first_bad(x, mask)})")


@dataclass(frozen=True, eq=False)
class Gaussians:
    """A batch of ``n`` diagonal Gaussians in ``k`` dimensions.

    Args:
        mean: Means, shape ``(n, k)`` (a 1-D array is read as one Gaussian).
        var: Variances, same shape as ``mean``; every value finite and > 0.
        validate: Check shapes, finiteness and positivity (default ``True``).

    Both arrays are numpy arrays or both torch tensors. They are cast to one float dtype: the
    promoted dtype of the two (so a float32 mean with a float64 var is computed in float64, never
    truncated) when that is float32 or float64; other real dtypes (float16, bfloat16, integers,
    bool) become float64 for numpy and float32 for torch (torch's default float, which keeps GPU
    tensors fast). Half precision is never kept: ``-KL`` overflows it. ``k`` must be at least 1.
    Any other dtype (complex, strings, objects) raises ``TypeError`` naming it: nothing is cast; so does a
    tensor on torch's ``meta`` device (no data). A numpy masked array with a masked element raises
    ``ValueError`` (its mask would be dropped), as does a ``np.longdouble`` value beyond float64's range (or
    a variance too small for it: 1e-4000, which float64 would make 0), named as given.

    Equality is identity (``a == b`` only for the same object) and a batch hashes by identity, as
    arrays have no single truth value; compare contents with ``np.array_equal`` on ``mean`` and ``var``.

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
        given_var = None
        if _one_float_dtype(mean, var):
            pass  # nothing to convert: the checks below still run
        elif _is_torch(mean) != _is_torch(var):
            raise TypeError("mean and var must both be numpy arrays or both torch tensors")
        elif not _is_torch(mean):
            mean = _real_numpy(mean, "mean")
            var = given_var = _real_numpy(var, "var", nonzero=True)
            dtype = np.result_type(mean.dtype, var.dtype)
            if dtype not in (np.float32, np.float64):
                dtype = np.dtype(np.float64)
            mean = mean if mean.dtype == dtype else mean.astype(dtype)
            var = var if var.dtype == dtype else var.astype(dtype)
        else:
            _check_real("mean", mean)
            _check_real("var", var)
            tdtype = torch.promote_types(mean.dtype, var.dtype)
            if tdtype not in (torch.float32, torch.float64):
                tdtype = torch.float32
            mean = mean if mean.dtype == tdtype else mean.to(tdtype)
            var = var if var.dtype == tdtype else var.to(tdtype)
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
        if mean.shape[1] < 1:
            raise ValueError(
                f"Gaussians need at least one dimension (k >= 1); got mean and var of shape {tuple(mean.shape)}"
            )
        if not self.validate:
            return
        _check_finite("mean", mean)
        _check_finite("var", var)
        positive = bool((var > 0).all())
        if not positive:
            # named as the caller wrote them: float64 makes a longdouble -1e-4000 "-0"
            shown = var if given_var is None or given_var.dtype.itemsize <= 8 else given_var.reshape(var.shape)
            mask = shown <= 0
            raise ValueError(
                f"var must be > 0; found {int(mask.sum())} non-positive value(s) (min {_shown(shown.min())}; "
                f"{_first_bad(shown, mask)})"
            )

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def __getitem__(self, index: Any) -> Gaussians:
        mean, var = self.mean[index], self.var[index]
        return Gaussians(mean, var, validate=False)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """Refuse to become one array: ``TypeError`` naming ``.mean`` / ``.var`` and :func:`save_gaussians`.

        Without it ``np.asarray(g)``, ``np.array(g)`` and ``np.save(path, g)`` would walk the batch row by row
        through ``__len__`` / ``__getitem__`` (each row a batch again) for seconds to minutes, then fail with
        numpy's 32- or 64-dimension limit. numpy 2 calls it with ``dtype`` and ``copy``; both are ignored.
        An object array holding several batches is built element by element: ``a = np.empty(n, dtype=object)``
        then ``a[i] = batch`` (``np.array([g1, g2], dtype=object)`` asks each batch for an array).
        """
        raise TypeError(
            f"Gaussians (a batch of {len(self)} Gaussians in {self.dim} dimensions) is two arrays, not one: take "
            "g.mean and g.var (each of shape (n, k); g.numpy() gives numpy ones from torch tensors), and save "
            "the batch with kl_retrievers.save_gaussians(path, g)"
        )

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
        """The same Gaussians as torch tensors (sharing memory where possible: a read-only array is copied)."""
        mean = self.mean if self.is_torch else _writable_tensor(self.mean)
        var = self.var if self.is_torch else _writable_tensor(self.var)
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
        """Concatenate batches along the first axis.

        Raises:
            ValueError: ``parts`` is empty.
            TypeError: A part is not a :class:`Gaussians` batch (naming its position).
        """
        if not parts:
            raise ValueError("concat needs at least one Gaussians batch; got an empty list")
        for i, part in enumerate(parts):
            _require_gaussians(part, f"parts[{i}]")
        if parts[0].is_torch:
            return cls(torch.cat([p.mean for p in parts]), torch.cat([p.var for p in parts]), validate=False)
        return cls(np.concatenate([p.mean for p in parts]), np.concatenate([p.var for p in parts]), validate=False)


def _writable_tensor(arr: np.ndarray) -> torch.Tensor:
    """``arr`` as a tensor sharing its memory, or over a copy when it is read-only (a tensor is always writable)."""
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _require_gaussians(g: Any, what: str) -> Gaussians:
    """``g`` when it is a :class:`Gaussians` batch; else a ``TypeError`` naming its type and how to wrap arrays.

    The one check of the public functions that take Gaussians: an array passed instead would fail deep
    inside with an unrelated message (an ndarray's ``var`` is its variance *method*).

    Examples:
        >>> _require_gaussians(np.zeros((2, 3)), "queries")
        Traceback (most recent call last):
        ...
        TypeError: queries must be a Gaussians batch; got ndarray: wrap the means and variances as Gaussians(mean, var)
    """
    if not isinstance(g, Gaussians):
        raise TypeError(
            f"{what} must be a Gaussians batch; got {type(g).__name__}: wrap the means and variances as "
            "Gaussians(mean, var)"
        )
    return g


def _same_kind(q: Gaussians, d: Gaussians) -> None:
    _require_gaussians(q, "queries")
    _require_gaussians(d, "documents")
    if q.is_torch != d.is_torch:
        raise TypeError("queries and documents must both be numpy or both torch; convert with .numpy() or .torch()")
    if q.dim != d.dim:
        raise ValueError(
            f"queries and documents must have the same dimension; got queries {tuple(q.mean.shape)} "
            f"and documents {tuple(d.mean.shape)}"
        )


def _log(x: Array) -> Array:
    return torch.log(x) if _is_torch(x) else np.log(x)


def neg_kl(queries: Gaussians, documents: Gaussians, *, check_finite: bool = True) -> Array:
    """Row-wise ``-KL(Q_i || D_i)``, with broadcasting of a batch of one.

    Args:
        queries: ``n`` query Gaussians (or one, scored against every document).
        documents: ``n`` document Gaussians (or one).
        check_finite: Refuse a -KL that is not finite (default ``True``; see Raises). For tensors on a GPU the
            check reads one bool back to the host, which waits for the scores (one synchronisation per call);
            ``False`` skips it, keeping the call asynchronous, and a non-finite -KL is returned as it is
            (``-inf`` or ``nan``). ``Gaussians(..., validate=False)`` skips the inputs' checks likewise.

    Returns:
        Shape ``(max(n_q, n_d),)``; higher is better, 0 for identical Gaussians.

    Computed in the Gaussians' dtype (see :class:`Gaussians`): float32 inputs give float32 scores,
    with float32 rounding, while the stores and :func:`exact_top_k` score in float64. Pass float64
    arrays (``g.astype(np.float64)``) for float64 scores.

    Raises:
        TypeError: An argument is not a :class:`Gaussians` batch, one is numpy and the other torch, or
            ``check_finite`` is not a bool.
        ValueError: Other dimensions or batch sizes, or (``check_finite``) a -KL that is not finite in that dtype
            (one that overflows float32, e.g. a variance of 1e-45), naming the pair and its float64 value, as
            :func:`kl_document_vectors` refuses such Gaussians.

    Examples:
        >>> import numpy as np
        >>> q = Gaussians(np.zeros(2), np.ones(2))
        >>> d = Gaussians(np.array([[0.0, 0.0], [2.0, 0.0]]), np.ones((2, 2)))
        >>> neg_kl(q, d)
        array([ 0., -2.])
    """
    _same_kind(queries, documents)
    check_bool(check_finite, "check_finite")
    nq, nd = len(queries), len(documents)
    if nq != nd and 1 not in (nq, nd):
        raise ValueError(
            f"neg_kl pairs rows one to one (or broadcasts a batch of one); got {nq} queries and {nd} documents; "
            "use neg_kl_matrix for all pairs"
        )
    mq, vq, md, vd = queries.mean, queries.var, documents.mean, documents.var
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # refused below, naming the pair
        terms = _log(vd) - _log(vq) - 1.0 + vq / vd + (mq - md) ** 2 / vd
        scores = 0.0 - 0.5 * (terms.sum(-1) if _is_torch(terms) else terms.sum(axis=-1))
    return _check_scores_finite(scores, queries, documents) if check_finite else scores


def neg_kl_matrix(queries: Gaussians, documents: Gaussians, *, check_finite: bool = True) -> Array:
    """All-pairs ``-KL(Q_i || D_j)`` computed term by term (the reference formula).

    Memory is bounded by evaluating blocks of documents at a time. Computed in the Gaussians'
    dtype (see :class:`Gaussians`; float32 and float64 are kept): float32 inputs give float32
    scores with float32 rounding (relative to the size of the terms; enough to swap near ties),
    while the stores and :func:`exact_top_k` re-score in float64. For the float64 reference pass
    float64 arrays (``g.astype(np.float64)``).

    Args:
        queries: ``n_q`` query Gaussians.
        documents: ``n_d`` document Gaussians.
        check_finite: Refuse a -KL that is not finite (default ``True``); ``False`` skips the check and its
            synchronisation on a GPU, as for :func:`neg_kl`.

    Returns:
        Score matrix of shape ``(n_q, n_d)``; higher is better.

    Raises:
        TypeError: An argument is not a :class:`Gaussians` batch, one is numpy and the other torch, or
            ``check_finite`` is not a bool.
        ValueError: Other dimensions, or (``check_finite``) a -KL that is not finite in that dtype (one that
            overflows float32, e.g. a variance of 1e-45 or means of 1e20 and -1e20), naming the pair and its
            float64 value.

    Examples:
        >>> import numpy as np
        >>> q = Gaussians(np.zeros((2, 3)), np.ones((2, 3)))
        >>> neg_kl_matrix(q, q).shape
        (2, 2)
    """
    _same_kind(queries, documents)
    check_bool(check_finite, "check_finite")
    nq, nd, k = len(queries), len(documents), queries.dim
    torch_mode = queries.is_torch
    mq, vq = queries.mean[:, None, :], queries.var[:, None, :]
    log_vq = _log(vq)
    block = max(1, _BLOCK_ELEMENTS // max(1, nq * k))
    out: list[Array] = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # refused below, naming the pair
        for start in range(0, nd, block):
            md = documents.mean[None, start : start + block, :]
            vd = documents.var[None, start : start + block, :]
            terms = _log(vd) - log_vq - 1.0 + vq / vd + (mq - md) ** 2 / vd
            out.append(0.0 - 0.5 * (terms.sum(-1) if torch_mode else terms.sum(axis=-1)))
    if not out:
        if torch_mode:
            return torch.zeros((nq, 0), dtype=queries.mean.dtype, device=queries.mean.device)
        return np.zeros((nq, 0), dtype=queries.mean.dtype)
    scores = torch.cat(out, dim=1) if torch_mode else np.concatenate(out, axis=1)
    return _check_scores_finite(scores, queries, documents) if check_finite else scores


def _check_scores_finite(scores: Array, queries: Gaussians, documents: Gaussians) -> Array:
    """``scores`` (:func:`neg_kl`'s or :func:`neg_kl_matrix`'s) when all finite; else ``ValueError`` naming a pair.

    A -KL that overflows the Gaussians' dtype (float32: a variance of 1e-45, means of 1e20 and -1e20) would
    otherwise come back as ``-inf`` and rank last unnoticed, where :func:`kl_document_vectors` refuses the same
    Gaussians. Only the result is checked (one pass over the scores); the message recomputes the first
    non-finite pair's -KL in float64.
    """
    if _is_torch(scores):
        if bool(torch.isfinite(scores).all()):
            return scores
        values = scores.detach().cpu().numpy()
    else:
        if bool(np.isfinite(scores).all()):
            return scores
        values = np.asarray(scores)
    at = int(np.flatnonzero(~np.isfinite(values))[0])
    if values.ndim == 2:  # neg_kl_matrix: row i, column j
        qi, di = divmod(at, values.shape[1])
    else:  # neg_kl: pairs row by row, a batch of one broadcast
        qi, di = (at if len(queries) > 1 else 0), (at if len(documents) > 1 else 0)
    q, d = queries[qi : qi + 1].numpy(), documents[di : di + 1].numpy()
    mq, vq = np.asarray(q.mean, dtype=np.float64), np.asarray(q.var, dtype=np.float64)
    md, vd = np.asarray(d.mean, dtype=np.float64), np.asarray(d.var, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        exact = float(-0.5 * (np.log(vd) - np.log(vq) - 1.0 + vq / vd + (mq - md) ** 2 / vd).sum())
    kind = np.dtype(values.dtype)
    facts = (
        f"largest |mean| {max(float(np.abs(mq).max()), float(np.abs(md).max())):.3g}, variances "
        f"{min(float(vq.min()), float(vd.min())):.3g} to {max(float(vq.max()), float(vd.max())):.3g}"
    )
    if math.isfinite(exact):
        value = f"is {exact:.4g} ({kind.name} holds magnitudes up to {float(np.finfo(kind).max):.3g}; {facts})"
    else:
        value = f"is {float(values.reshape(-1)[at])} ({facts})"
    cast = "g.astype(torch.float64)" if queries.is_torch else "g.astype(np.float64)"
    advice = (
        f"; pass float64 Gaussians ({cast}) for float64 scores" if kind != np.float64 and math.isfinite(exact) else ""
    )
    raise ValueError(f"query {qi} and document {di} cannot be scored in {kind.name}: their -KL {value}{advice}")


def _cat(parts: list[Array]) -> Array:
    return torch.cat(parts, dim=1) if _is_torch(parts[0]) else np.concatenate(parts, axis=1)


def _query_rewrite(queries: Gaussians) -> Array:
    m, v = queries.mean, queries.var
    ones = torch.ones_like(m[:, :1]) if _is_torch(m) else np.ones_like(m[:, :1])
    return _cat([ones, v + m**2, m])


def _document_rewrite(documents: Gaussians) -> Array:
    m, v = documents.mean, documents.var
    inv = 1.0 / v
    first = -0.5 * (_log(v) + m**2 * inv)
    first = first.sum(-1, keepdim=True) if _is_torch(first) else first.sum(axis=1, keepdims=True)
    return _cat([first, -0.5 * inv, m * inv])


def _overflow_message(side: str, row: int, coordinate: int, value: float, dtype: Any, facts: str) -> str:
    """The refusal of a row whose rewrite does not fit ``dtype``: the stores' and the public functions' words."""
    name = "q~" if side == "query" else "d~"
    kind = np.dtype(dtype)
    return (
        f"{side} {row} cannot be scored in {kind.name}: coordinate {coordinate} of its rewrite {name} is "
        f"{value:.4g} ({kind.name} holds magnitudes up to {float(np.finfo(kind).max):.3g}; {facts})"
    )


def _check_rewrite_finite(vectors: Array, g: Gaussians, side: str) -> Array:
    """``vectors`` (the rewrite of ``g``) when every value is finite; else ``ValueError`` naming the first bad row.

    The value named is the coordinate computed in float64, the first that the output's dtype cannot
    hold (as :func:`check_float32_scorable` words it for a store).
    """
    if _is_torch(vectors):
        if bool(torch.isfinite(vectors).all()):
            return vectors
        vec = vectors.detach().cpu().numpy()
        mean, var = g.mean.detach().cpu().numpy(), g.var.detach().cpu().numpy()
    else:
        if bool(np.isfinite(vectors).all()):
            return vectors
        vec, mean, var = vectors, np.asarray(g.mean), np.asarray(g.var)
    row = int(np.flatnonzero(~np.isfinite(vec).all(axis=1))[0])
    m64 = mean[row : row + 1].astype(np.float64)
    v64 = var[row : row + 1].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        exact = _rewrite(m64, v64, side, False)[0]
        too_big = ~np.isfinite(exact.astype(vec.dtype))
    bad = too_big if too_big.any() else ~np.isfinite(vec[row])
    bad = np.flatnonzero(np.roll(bad, -1))  # coordinate 0 (a sum over the others) last: name a cause first
    j = (int(bad[0]) + 1) % vec.shape[1]
    value = float(exact[j]) if too_big.any() else float(vec[row, j])
    cast = "g.astype(torch.float64)" if g.is_torch else "g.astype(np.float64)"
    advice = f"; pass float64 Gaussians ({cast}) for a float64 rewrite" if vec.dtype == np.float32 else ""
    raise ValueError(_overflow_message(side, row, j, value, vec.dtype, _row_facts(m64, v64, False)) + advice)


def kl_query_vectors(queries: Gaussians, *, check_finite: bool = True) -> Array:
    """Query side ``q~ = [1, var_q + mu_q^2, mu_q]`` of the rewrite, shape ``(n, 2k + 1)``.

    Computed in the Gaussians' dtype (see :class:`Gaussians`), like :func:`kl_document_vectors`.

    Args:
        queries: ``n`` query Gaussians.
        check_finite: Refuse a ``q~`` that is not finite (default ``True``); ``False`` skips the check and its
            synchronisation on a GPU, as for :func:`neg_kl`.

    Raises:
        TypeError: ``queries`` is not a :class:`Gaussians` batch (wrap arrays as ``Gaussians(mean, var)``), or
            ``check_finite`` is not a bool.
        ValueError: (``check_finite``) A query whose ``q~`` is not finite in that dtype (``var + mu^2`` overflows),
            naming the row and the value. :class:`~kl_retrievers.KLStore` refuses a query whose ``q~`` does not
            fit float32 (:func:`check_float32_scorable`): not always the same queries (float64 Gaussians are
            checked here in float64, there in float32).

    Examples:
        >>> import numpy as np
        >>> kl_query_vectors(Gaussians(np.array([[2.0]]), np.array([[0.5]])))
        array([[1. , 4.5, 2. ]])
    """
    _require_gaussians(queries, "queries")
    check_bool(check_finite, "check_finite")
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, naming the row
        vectors = _query_rewrite(queries)
    return _check_rewrite_finite(vectors, queries, "query") if check_finite else vectors


def kl_document_vectors(documents: Gaussians, *, check_finite: bool = True) -> Array:
    """Document side ``d~`` of the rewrite, shape ``(n, 2k + 1)``.

    ``d~ = [-1/2 * sum(log var_d + mu_d^2 / var_d), -1 / (2 var_d), mu_d / var_d]``, so that
    ``<q~, d~> + c(q) = -KL(Q || D)`` exactly in exact arithmetic. Computed in the Gaussians' dtype:
    float32 Gaussians give float32 vectors, whose inner product in a float32 engine is not exact
    (its terms cancel; see the re-scoring advice in ``docs/method.md``).

    Args:
        documents: ``n`` document Gaussians.
        check_finite: Refuse a ``d~`` that is not finite (default ``True``); ``False`` skips the check and its
            synchronisation on a GPU, as for :func:`neg_kl`.

    Raises:
        TypeError: ``documents`` is not a :class:`Gaussians` batch (wrap arrays as ``Gaussians(mean, var)``), or
            ``check_finite`` is not a bool.
        ValueError: (``check_finite``) A document whose ``d~`` is not finite in that dtype (a variance so small, or a
            mean so large, that ``1 / var`` or ``mu^2 / var`` overflows), naming the row and the value.
            :class:`~kl_retrievers.KLStore`, which stores documents in float32, refuses a document whose ``d~``
            does not fit float32 (:func:`check_float32_scorable`): not always the same documents (float64
            Gaussians are checked here in float64, there in float32: a mean of 1e10 with a variance of 1e-20
            passes here and is refused there).

    Examples:
        >>> import numpy as np
        >>> kl_document_vectors(Gaussians(np.array([[2.0]]), np.array([[1.0]])))
        array([[-2. , -0.5,  2. ]])
    """
    _require_gaussians(documents, "documents")
    check_bool(check_finite, "check_finite")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # refused below, naming the row
        vectors = _document_rewrite(documents)
    return _check_rewrite_finite(vectors, documents, "document") if check_finite else vectors


def kl_query_constant(queries: Gaussians) -> Array:
    """The query-only term ``c(q) = 1/2 * sum(log var_q + 1)``, shape ``(n,)``.

    Raises:
        TypeError: ``queries`` is not a :class:`Gaussians` batch (wrap arrays as ``Gaussians(mean, var)``).

    Examples:
        >>> import numpy as np
        >>> kl_query_constant(Gaussians(np.zeros((1, 4)), np.ones((1, 4))))
        array([2.])
    """
    t = _log(_require_gaussians(queries, "queries").var) + 1.0
    return 0.5 * t.sum(-1) if _is_torch(t) else 0.5 * t.sum(axis=1)


# ============================================================================ reduction to L2
# The MIPS -> L2 reduction of METHOD.md (Bachrach et al., RecSys 2014), shared by every backend that
# searches an L2 index (KLStore's HNSW / IVF, MilvusKLStore with metric="L2") and the inversion of a
# stored document vector back to its Gaussian. numpy only: these run on stored float64 ``d~`` rows.
#
#   d^ = d~ - o e_1                        (first coordinate shifted by the offset o; <q~, d^> = <q~, d~> - o)
#   x_d = [d^, sqrt(M^2 - ||d^||^2)]       (every reduced document has norm M >= max ||d^||)
#   x_q = [q~ * M / ||q~||, 0]             (norm M)
#   ||x_q - x_d||^2 = 2 M^2 - 2 (M / ||q~||) (<q~, d~> - o)
#
# so the L2 ranking of the reduced vectors is the inner-product ranking of the rewrite, i.e. the -KL
# ranking, for any offset o and any M, as long as every document row was reduced with the same o and M.

__all__ += [
    "reduction_offset",
    "shift_document_vectors",
    "means_centre",
    "centre_document_vectors",
    "worth_centring",
    "reduction_norm_bound",
    "reduce_document_vectors",
    "reduce_query_vectors",
    "document_gaussians_from_vectors",
]

#: Relative slack allowed when a shifted document norm is compared with the bound ``M`` (float rounding).
NORM_BOUND_RTOL = 1e-6


def _rows_2d(vectors: Any, what: str) -> np.ndarray:
    if _is_torch(vectors):
        raise TypeError(f"{what} must be a numpy array (the reduction works on stored vectors); got a torch tensor")
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, width); got shape {arr.shape}")
    return arr


def _check_bound(norm_bound: float) -> float:
    bound = float(norm_bound)
    if not (np.isfinite(bound) and bound > 0):
        raise ValueError(f"the norm bound M must be a finite number > 0; got {norm_bound!r}")
    return bound


def _check_centre(centre: Any, k: int | None) -> np.ndarray:
    """``centre`` as a finite float64 vector of length ``k`` (``None``: no ``k`` fits); ``ValueError`` otherwise."""
    c = np.asarray(centre)
    if c.dtype.kind not in "biuf" or k is None or c.shape != (k,):
        what = "the documents' dimension k" if k is None else f"({k},), the documents' dimension"
        raise ValueError(
            f"centre must be a 1-D array of real numbers of shape {what}; got shape {c.shape}, dtype {c.dtype}"
            + ("" if k is not None else " (and document vectors of width 2k + 1)")
        )
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise ValueError(f"centre must be finite; found a NaN or infinite value ({_first_bad(c, ~np.isfinite(c))})")
    return c


def _check_width(width: int | None, needed: int) -> int:
    if width is None:
        return needed
    if int(width) < needed:
        raise ValueError(f"width must be at least {needed} (the reduced vector's length); got {width}")
    return int(width)


def reduction_offset(dvec: Any) -> float:
    """The first-coordinate offset ``o`` for the reduction: the mean first coordinate of ``d~`` rows.

    The first coordinate of ``d~``, ``-1/2 sum_i (log var_i + mu_i^2 / var_i)``, is a sum over all
    ``k`` dimensions; its shared part would dominate every norm (and so the extra coordinate and an
    index's geometry).  Shifting it by a constant changes no ranking, since ``q~`` has ``1`` there.

    Args:
        dvec: ``d~`` rows, shape ``(n, 2k + 1)`` with ``n >= 1`` (a sample is enough).

    Returns:
        ``o`` as a Python float.

    Examples:
        >>> import numpy as np
        >>> reduction_offset(np.array([[-3.0, -0.5, 0.0], [-5.0, -0.5, 1.0]]))
        -4.0
    """
    d = _rows_2d(dvec, "document vectors d~")
    if d.shape[0] == 0:
        raise ValueError("the reduction offset needs at least one document vector; got none")
    offset = float(np.asarray(d[:, 0], dtype=np.float64).mean())
    if not np.isfinite(offset):
        raise ValueError(f"the reduction offset must be finite; got {offset!r} (non-finite document vectors)")
    return offset


def shift_document_vectors(dvec: Any, offset: float) -> np.ndarray:
    """``d^``: ``d~`` with ``offset`` subtracted from its first coordinate.

    ``<q~, d^> = <q~, d~> - offset`` for every query (the first coordinate of ``q~`` is 1), so no
    ranking changes.  The input is never modified; with ``offset == 0`` it is returned as it is.

    Examples:
        >>> import numpy as np
        >>> shift_document_vectors(np.array([[-4.0, -0.5, 1.0]]), -4.0)
        array([[ 0. , -0.5,  1. ]])
    """
    d = _rows_2d(dvec, "document vectors d~")
    if not is_real_number(offset) or not math.isfinite(offset):
        raise ValueError(f"offset must be a finite real number; got {offset!r}")
    if not offset:
        return d
    out = d.copy()
    out[:, 0] -= offset
    return out


_CENTRE_BLOCK = 32768  # rows of the means read at a time by means_centre


def means_centre(mean: Array) -> np.ndarray:
    """The float64 mean of the rows of ``mean``, the centre an engine subtracts from every mean.

    -KL does not change when one vector is subtracted from every query and document mean, but
    the rewrite's geometry does: ``d~`` holds ``mu_d / var_d`` and ``sum mu_d^2 / var_d``, so a
    common offset of the means inflates every norm and makes the float32 index vectors (and an
    approximate index's neighbourhoods) depend on where the origin happens to be. Centring on the
    documents' own mean removes that dependence. Read in blocks (no float64 copy of a large table).

    Examples:
        >>> means_centre(np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32))
        array([2., 4.])
    """
    if _is_torch(mean):
        mean = mean.detach().cpu().numpy()
    mean = np.asarray(mean)  # a memory-mapped array stays mapped (read below in blocks)
    if mean.ndim != 2 or mean.dtype.kind not in "biuf":
        raise ValueError(f"mean must be a 2-D array (n, k) of real numbers; got shape {mean.shape}, dtype {mean.dtype}")
    n = mean.shape[0]
    if n == 0:
        return np.zeros(mean.shape[1])
    total = np.zeros(mean.shape[1])
    for s in range(0, n, _CENTRE_BLOCK):
        total += np.asarray(mean[s : s + _CENTRE_BLOCK], dtype=np.float64).sum(axis=0)
    return total / n


def centre_document_vectors(dvec: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """``d~`` of the means ``mu - centre``, from ``d~`` of ``mu`` (a linear map; ``None``: unchanged).

    With ``a = -1 / (2 var)`` and ``b = mu / var`` (the second and third blocks of ``d~``), centring
    keeps ``a``, maps ``b`` to ``b + 2 a c`` and the first coordinate to ``d0 + <c, b> + <c^2, a>``.

    Examples:
        >>> d = np.array([[-2.0, -0.5, 2.0]])  # mu = 2, var = 1
        >>> centre_document_vectors(d, np.array([2.0]))  # mu = 0, var = 1: [0, -0.5, 0]
        array([[ 0. , -0.5,  0. ]])
    """
    if centre is None:
        return dvec
    dvec = _rows_2d(dvec, "document vectors d~")
    c = _check_centre(centre, (dvec.shape[1] - 1) // 2 if dvec.shape[1] % 2 else None)
    k = c.shape[0]
    a, b = dvec[:, 1 : k + 1], dvec[:, k + 1 :]
    out = np.empty_like(dvec, dtype=np.float64)
    out[:, 0] = dvec[:, 0] + b @ c + a @ (c * c)
    out[:, 1 : k + 1] = a
    out[:, k + 1 :] = b + 2.0 * a * c
    return out


#: Centre the means of an L2-reduced index only when that shrinks the largest norm of the shifted
#: ``d~`` (hence M) to this fraction or less: see :func:`worth_centring`.
CENTRE_GAIN = 0.5


def worth_centring(sample: np.ndarray, centre: np.ndarray) -> bool:
    """Whether centring the means on ``centre`` shrinks the norm bound of the ``d~`` rows ``sample`` by half or more.

    A common offset of every mean (a shift of 20 in every coordinate, say) inflates every norm, and
    with it M, and costs HNSW and IVF most of their recall; centring removes it. Where the means are
    already about centred it only perturbs the geometry: on the 100k synthetic Gaussians of
    ``benchmarks/ann.py --quick`` (documents' mean of norm 0.6 against means of norm 22) it cost
    HNSW recall@10 0.007 at efSearch 256, so those means are used as given (as before
    ``index_centre`` existed). Each side is measured after its own first-coordinate shift.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> g = Gaussians(rng.normal(size=(200, 4)), np.ones((200, 4)))
        >>> dvec = np.asarray(kl_document_vectors(g))
        >>> worth_centring(dvec, means_centre(g.mean))
        False
        >>> shifted = Gaussians(g.mean + 20.0, g.var)
        >>> worth_centring(np.asarray(kl_document_vectors(shifted)), means_centre(shifted.mean))
        True
    """

    def bound(dvec: np.ndarray) -> float:
        shifted = shift_document_vectors(dvec, float(dvec[:, 0].mean()))
        return float(np.sqrt(np.einsum("ij,ij->i", shifted, shifted).max()))

    if not len(sample):
        return False
    return bound(centre_document_vectors(sample, centre)) <= CENTRE_GAIN * bound(sample)


def reduction_norm_bound(dvec: Any, offset: float = 0.0, headroom: float = 1.0) -> float:
    """``M = headroom * max ||d^||`` over ``d~`` rows shifted by ``offset`` (at least ``1e-12``).

    With ``headroom == 1`` this is the largest shifted norm, the number to compare with a stored
    ``M`` before adding documents: above it, ``M`` must be raised and every row re-reduced.

    Args:
        dvec: ``d~`` rows, shape ``(n, 2k + 1)``, ``n >= 1``.
        offset: The first-coordinate shift ``o``.
        headroom: Factor ``>= 1`` leaving room for later documents.

    Examples:
        >>> import numpy as np
        >>> reduction_norm_bound(np.array([[-4.0, 0.0, 3.0], [-5.0, 0.0, 1.0]]), offset=-4.0, headroom=2.0)
        6.0
    """
    if not headroom >= 1.0:
        raise ValueError(f"headroom must be >= 1; got {headroom!r}")
    d = shift_document_vectors(dvec, offset)
    if d.shape[0] == 0:
        raise ValueError("the norm bound needs at least one document vector; got none")
    d = np.asarray(d, dtype=np.float64)
    top = float(np.sqrt(np.einsum("ij,ij->i", d, d).max()))
    if not np.isfinite(top):
        raise ValueError("the norm bound must be finite; the document vectors hold NaN or infinite values")
    return float(headroom) * max(top, 1e-12)


def reduce_document_vectors(
    dvec: Any, offset: float, norm_bound: float, *, width: int | None = None, dtype: Any = np.float32
) -> np.ndarray:
    """Reduced document vectors ``x_d = [d^, sqrt(M^2 - ||d^||^2), 0...]`` for an L2 index.

    The extra coordinate is computed in float64; the result is cast to ``dtype`` at the end.

    Args:
        dvec: ``d~`` rows (float64 for best precision), shape ``(n, 2k + 1)``.
        offset: The first-coordinate shift ``o`` (``0`` for none).
        norm_bound: ``M``; every shifted norm must be ``<= M`` (up to a relative ``1e-6``).
        width: Length of each output row, ``>= 2k + 2`` (zero-padded, e.g. for PQ); default ``2k + 2``.
        dtype: Output dtype.

    Returns:
        Shape ``(n, width)``; every row has norm ``M``.

    Raises:
        ValueError: A shifted norm above ``M`` (raise ``M`` and re-reduce every row instead), a bad
            ``M`` or ``width``.

    Examples:
        >>> import numpy as np
        >>> reduce_document_vectors(np.array([[-4.0, 0.0, 3.0]]), -4.0, 5.0)
        array([[0., 0., 3., 4.]], dtype=float32)
    """
    bound = _check_bound(norm_bound)
    d = np.asarray(shift_document_vectors(dvec, offset), dtype=np.float64)
    n, w = d.shape
    extra = _reduction_extra(np.einsum("ij,ij->i", d, d), bound)
    out = np.zeros((n, _check_width(width, w + 1)), dtype=dtype)
    out[:, :w] = d
    out[:, w] = extra
    return out


def _reduction_extra(sq_norms: np.ndarray, norm_bound: float) -> np.ndarray:
    """The coordinate :func:`reduce_document_vectors` appends to each shifted row: ``sqrt(M^2 - ||d^||^2)``.

    Args:
        sq_norms: ``||d^||^2`` per row (float64, ``np.einsum("ij,ij->i", d, d)`` of the shifted rows).
        norm_bound: ``M``; every norm must be ``<= M`` (up to a relative ``1e-6``).

    Returns:
        float64, one value per row.

    Raises:
        ValueError: A norm above ``M``, or a bad ``M``.

    Examples:
        >>> _reduction_extra(np.array([9.0, 25.0]), 5.0)
        array([4., 0.])
    """
    bound = _check_bound(norm_bound)
    if sq_norms.size and float(sq_norms.max()) > (bound * (1.0 + NORM_BOUND_RTOL)) ** 2:
        raise ValueError(
            f"a shifted document norm {float(np.sqrt(sq_norms.max())):.6g} exceeds the norm bound M={bound:.6g}; "
            "raise M and re-reduce every row (all rows of one index must share one M)"
        )
    return np.sqrt(np.maximum(bound**2 - sq_norms, 0.0))


def reduce_query_vectors(
    qvec: Any, norm_bound: float, *, width: int | None = None, dtype: Any = np.float32
) -> np.ndarray:
    """Reduced query vectors ``x_q = [q~ * M / ||q~||, 0, 0...]`` (norm ``M``).

    Scaling the query changes no L2 ranking when every reduced document has norm ``M``; norm ``M``
    suits IVF's coarse assignment.  No offset: ``q~`` keeps its first coordinate ``1``.

    Args:
        qvec: ``q~`` rows (:func:`kl_query_vectors`), shape ``(n, 2k + 1)``.
        norm_bound: ``M``.
        width: Length of each output row, ``>= 2k + 2``; default ``2k + 2``.
        dtype: Output dtype.

    Examples:
        >>> import numpy as np
        >>> reduce_query_vectors(np.array([[1.0, 0.0, 0.0]]), 5.0)
        array([[5., 0., 0., 0.]], dtype=float32)
    """
    bound = _check_bound(norm_bound)
    q = np.asarray(_rows_2d(qvec, "query vectors q~"), dtype=np.float64)
    n, w = q.shape
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    bad = ~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"query vectors q~ must have a finite norm > 0 (q~ starts with 1); row {i} has norm {float(norms[i, 0]):g}"
        )
    out = np.zeros((n, _check_width(width, w + 1)), dtype=dtype)
    out[:, :w] = q * (bound / norms)
    return out


def document_gaussians_from_vectors(vectors: Any, dim: int | None = None, *, validate: bool = True) -> Gaussians:
    """Invert the document rewrite: the Gaussians behind ``d~``, ``d^`` or reduced rows.

    ``var = -1 / (2 v[1:k+1])`` and ``mu = v[k+1:2k+1] * var``.  The first coordinate (the only one
    the offset shifts) and anything after ``2k + 1`` (the reduction's extra coordinate, padding)
    are not read, so the same function inverts ``d~``, shifted and reduced vectors.  Exact up to
    the rounding of the stored vectors (float32 rows give float32-accurate Gaussians).

    Args:
        vectors: Rows, shape ``(n, width)``.
        dim: ``k``; default ``(width - 1) / 2`` (then ``width`` must be odd, a plain ``d~``).
        validate: Check that coordinates ``1..k`` are ``< 0`` (``-1 / (2 var)``) and the result finite.

    Returns:
        float64 :class:`Gaussians`, shape ``(n, k)``.

    Raises:
        ValueError: A width that does not fit ``dim``, or (``validate``) rows that are no document vectors.

    Examples:
        >>> import numpy as np
        >>> g = Gaussians(np.array([[0.5, -1.0]]), np.array([[2.0, 0.25]]))
        >>> back = document_gaussians_from_vectors(kl_document_vectors(g))
        >>> back.mean.tolist(), back.var.tolist()
        ([[0.5, -1.0]], [[2.0, 0.25]])
    """
    v = np.asarray(_rows_2d(vectors, "document vectors"), dtype=np.float64)
    width = v.shape[1]
    if dim is None:
        if width < 3 or width % 2 == 0:
            raise ValueError(
                f"document vectors d~ have odd length 2k + 1 >= 3; got width {width} (pass dim for reduced rows)"
            )
        dim = (width - 1) // 2
    k = int(dim)
    if k < 1 or width < 2 * k + 1:
        raise ValueError(f"document vectors of dimension k={dim} need width >= 2k + 1 = {2 * k + 1}; got width {width}")
    precision = v[:, 1 : k + 1]
    if validate:
        _check_inverted(f"coordinates 1..{k} hold -1 / (2 var) and must be < 0", ~(precision < 0), precision, 1)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # checked below (validate)
        var = -0.5 / precision
        mean = v[:, k + 1 : 2 * k + 1] * var
    if validate:
        _check_inverted(
            f"coordinates 1..{k} hold -1 / (2 var) and must be < 0 and far enough from 0 for var = -1 / (2 x) "
            "to be finite",
            ~np.isfinite(var),
            precision,
            1,
        )
        _check_inverted(
            f"coordinates {k + 1}..{2 * k} hold mu / var and must be finite, with mu = x * var finite",
            ~np.isfinite(mean),
            v[:, k + 1 : 2 * k + 1],
            k + 1,
        )
    return Gaussians(mean, var, validate=validate)


def _check_inverted(rule: str, bad: np.ndarray, values: np.ndarray, first_coordinate: int) -> None:
    """Refuse rows that are no document vectors: name the count, the first bad row, coordinate and value."""
    if not bad.any():
        return
    i, j = (int(x) for x in np.argwhere(bad)[0])
    raise ValueError(
        f"these are not KL document vectors: {rule}; found {int(bad.sum())} bad value(s), the first at row {i}, "
        f"coordinate {first_coordinate + j}: {float(values[i, j]):g}"
    )


#: The tolerance of :func:`first_coordinate_mismatches`, relative to the size of the first coordinate's terms
#: (float32 round trips stay far below it).
FIRST_COORDINATE_RTOL = 1e-4


def first_coordinate_mismatches(
    vectors: np.ndarray, gaussians: Gaussians, rtol: float = FIRST_COORDINATE_RTOL
) -> tuple[np.ndarray, np.ndarray]:
    """The ``d~`` rows whose first coordinate is not the ``-1/2 sum(log var + mu^2 / var)`` of their Gaussian.

    :func:`document_gaussians_from_vectors` does not read the first coordinate; this checks it against the
    Gaussians it returned. A row mismatches where the two differ by more than ``rtol`` times
    ``1/2 sum(|log var| + mu^2 / var) + 1`` (the size of the sum's terms, which cancel), where either is NaN, or
    where the Gaussian's is not finite (``mu^2 / var`` overflows float64: no first value can match it).

    Args:
        vectors: ``d~`` rows, shape ``(n, 2k + 1)``.
        gaussians: The Gaussians behind the rows' coordinates ``1..2k``, shape ``(n, k)``.
        rtol: The tolerance, relative to the terms' size.

    Returns:
        The positions of the rows that mismatch (ascending) and, for every row, the first coordinate its
        Gaussian gives.

    Examples:
        >>> import numpy as np
        >>> d = kl_document_vectors(Gaussians(np.array([[2.0]]), np.array([[1.0]])))
        >>> bad, first = first_coordinate_mismatches(d, document_gaussians_from_vectors(d))
        >>> bad.tolist(), first.tolist()
        ([], [-2.0])
        >>> d[0, 0] = 5.0
        >>> first_coordinate_mismatches(d, document_gaussians_from_vectors(d))[0].tolist()
        [0]
        >>> v = np.array([[123.0, -0.005, 1e154]])  # mu = 1e156: mu^2 / var overflows, the first value is -inf
        >>> bad, first = first_coordinate_mismatches(v, document_gaussians_from_vectors(v))
        >>> bad.tolist(), first.tolist()
        ([0], [-inf])
    """
    log_var = np.log(gaussians.var)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow gives -inf (inf - inf: NaN), a mismatch below
        ratio = gaussians.mean**2 / gaussians.var
        first = -0.5 * (log_var + ratio).sum(axis=1)
        scale = 0.5 * (np.abs(log_var) + ratio).sum(axis=1) + 1.0
        # NaN compares false; an infinite first value has an infinite scale (inf <= inf), hence the isfinite
        ok = np.isfinite(first) & (np.abs(first - vectors[:, 0]) <= rtol * scale)
    return np.flatnonzero(~ok), first


# ================================================================================ exact top-k
# Exact top-k by -KL (or, for the means-only ablation, by -||mu_q - mu_d||^2), shared by KLStore's
# flat index and exact fallback, by evaluation.retrieve_exact and by MilvusKLStore's prove_flat search
# (refine_top_k over Milvus' candidates, with a bound of its own: store/milvus.py).
#
# Candidates come from the inner-product rewrite evaluated in float32 (a BLAS matmul or a FAISS flat
# index); the candidates are then re-scored term by term in float64. float32 alone is not exact:
# the error of <q~, d~> grows with the magnitudes of q~ and d~ (about sum(mu^2 / var)), not with the
# score, because the first coordinate of d~ cancels against the other blocks. Two things make the
# result the exact float64 top k:
#
# 1. Centring. -KL(Q || D) does not change when one vector c is subtracted from every mean, query and
#    document alike, so the rewrite is evaluated on mu - c with c near the corpus mean.
# 2. A bound. For float32 rounding of q~ and d~ and a float32 dot product of n = 2k + 1 terms in any
#    summation order (BLAS, FMA, SIMD lanes), |fl32(<q~, d~>) - <q~, d~>| <= g * sum_i |q~_i d~_i|
#    with g = gamma_{n+2} = (n + 2) u / (1 - (n + 2) u), u = 2^-24 (Higham, "Accuracy and Stability
#    of Numerical Algorithms", section 3.1), and sum_i |q~_i d~_i| <= sum_b ||q~_b|| ||d~_b|| over the
#    three blocks b of the rewrite (Cauchy-Schwarz per block: on whole vectors it multiplies q~'s
#    largest block by d~'s largest although they never meet, a millionfold overshoot with uncentred
#    large means). With D_b the largest ||d~_b|| among the documents, every document's float32
#    score is within B = g sum_b ||q~_b|| D_b of its exact value. After the pool of the c best float32
#    candidates is re-scored, let T be its k-th best exact score and s the float32 score of the best
#    document left out: every document left out scores at most s + B, so if s + B < T the pool holds
#    the exact top k (up to float64 rounding of the scores themselves: ties aside). On ordinary data B
#    is far below the gaps (k = 384, 100k synthetic documents: B ~ 0.1, the gap from rank 10 to rank
#    19 >= 1.9), so the first pool of k + margin candidates is enough and the fast path costs what it did.
# 3. Wider pools. Otherwise the same bound rules rows out one by one: a row of float32 score a with
#    a + B + shift < T cannot enter the top k. The pool grows (8x, then 8x again, a few times within a
#    quarter of the allowed rows) until its witness is below that line, and of each wider pool only the
#    rows above it that were not re-scored before are re-scored in float64 (a wider pool costs one more
#    float32 search; its float64 work is the rows that can still matter). Past the last pool, or where
#    the float32 scores' fall so far says that more rows are above the line than it could hold, every
#    allowed row is scored in float64 (as the fixed 8x pool's queries were: no more often). A wider pool
#    is searched for a bounded number of queries at a time, so which pools a query gets does not depend
#    on the size of its batch.
#
# Rows whose float32 rewrite is not finite cannot be ranked this way and are refused with a
# ValueError naming the row (check_float32_scorable at input, score_vectors_float32 here).

__all__ += [
    "FLOAT32_UNIT_ROUNDOFF",
    "check_k",
    "is_real_number",
    "check_float32_scorable",
    "score_vectors_float32",
    "rewrite_block_norms",
    "float32_score_bound",
    "pool_terms",
    "neg_kl_rows",
    "top_k_rows",
    "float64_top_k",
    "refine_top_k",
    "exact_top_k",
]

#: Unit roundoff of float32 (2^-24): every rounding to float32 is within this relative error.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Rows of documents whose rewrite is computed at once, and cap (elements) for caching all of them.
_EXACT_ROWS = 65536
_EXACT_CACHE_ELEMENTS = 1 << 26
# Elements (queries x candidates x dims) gathered at once by the float64 re-scoring.
_ROWS_BLOCK_ELEMENTS = 1 << 22
# Wider pools of refine_top_k: the first max(_GROW * c, k + _GROW_MIN) (c: the first pool, as the one wider pool
# before them), each later one _GROW times the last, at most _GROW_ROUNDS in all; a later one only while it stays
# within n_allowed / _GROW_SHARE rows, for the queries whose rows above the line (_rows_above) it may hold. Each is
# searched and re-scored _GROW_ELEMENTS // (its rows) queries at a time (a bound on its queries x rows, not on who
# gets it). Past them, every allowed row is scored in float64.
_GROW = 8
_GROW_MIN = 256
_GROW_ROUNDS = 3
_GROW_SHARE = 4
_GROW_ELEMENTS = 1 << 24


def is_real_number(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy int / float), not a bool or a string.

    Examples:
        >>> is_real_number(0.5), is_real_number(np.int64(3)), is_real_number(True), is_real_number("0.5")
        (True, True, False, False)
    """
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as an ``int`` when it is a positive integer (``bool`` is not); ``ValueError`` naming it otherwise.

    The one check of a result count (``k``, ``fetch_k``, ``similarity_top_k``, ...) used by every
    store and adapter.

    Examples:
        >>> check_k(3)
        3
        >>> check_k(0, "fetch_k")
        Traceback (most recent call last):
        ...
        ValueError: fetch_k must be a positive integer; got 0
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"{name} must be a positive integer; got {k!r}")
    return int(k)


def _allowed_rows(rows: Any, n: int) -> np.ndarray:
    """``rows`` checked as a set of document rows out of ``n``: int64, 1-D, unique, in ``[0, n)``.

    A boolean mask of length ``n`` is read as the rows where it is ``True`` (``np.flatnonzero``).
    An empty selection of any numeric dtype is no rows. The check is a few passes over ``rows``
    (a sort only when they are not already increasing, as ``np.flatnonzero`` gives them).

    Raises:
        ValueError: Naming the bad value: not 1-D, not integers, a mask of another length, a
            duplicate, or a row outside ``[0, n)``.

    Examples:
        >>> _allowed_rows(np.array([True, False, True]), 3).tolist()
        [0, 2]
        >>> _allowed_rows([4, 1], 3)
        Traceback (most recent call last):
        ...
        ValueError: rows must be document row numbers in [0, 3); got 4 (position 0)
    """
    arr = np.asarray(rows)
    if arr.ndim != 1:
        raise ValueError(f"rows must be a 1-D array of document row numbers (or a boolean mask); got shape {arr.shape}")
    if arr.dtype == np.bool_:
        if arr.size != n:
            raise ValueError(f"a boolean rows mask must have one entry per document ({n}); got {arr.size}")
        return np.flatnonzero(arr)
    if arr.size == 0 and arr.dtype.kind in "iuf":
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        first = f" (first value {arr.flat[0].item()!r})" if arr.size else ""
        raise ValueError(f"rows must be integer document row numbers or a boolean mask; got dtype {arr.dtype}{first}")
    bad = np.flatnonzero((arr < 0) | (arr >= n))
    if bad.size:
        raise ValueError(f"rows must be document row numbers in [0, {n}); got {arr[bad[0]]} (position {int(bad[0])})")
    out = arr.astype(np.int64, copy=False)
    if out.size > 1 and not bool((out[1:] > out[:-1]).all()):
        ordered = np.sort(out, kind="stable")
        dup = np.flatnonzero(ordered[1:] == ordered[:-1])
        if dup.size:
            raise ValueError(f"rows must be unique; row {int(ordered[dup[0]])} is given more than once")
    return out


def _row_tie_rank(n: int, tie_rank: Any) -> np.ndarray:
    """``tie_rank`` as int64 ranks for ``n`` document rows; by default row order (lower row first)."""
    if tie_rank is None:
        return np.arange(n, dtype=np.int64)
    ranks = np.asarray(tie_rank, dtype=np.int64)
    if ranks.shape != (n,):
        raise ValueError(f"tie_rank has shape {ranks.shape}; expected ({n},), one rank per document row")
    return ranks


def _check_sumlogvar(doc_sumlogvar: Any, n: int) -> np.ndarray | None:
    """``doc_sumlogvar`` as float64 of shape ``(n,)`` (or ``None``); ``ValueError`` naming its shape otherwise."""
    if doc_sumlogvar is None:
        return None
    arr = np.asarray(doc_sumlogvar)
    if arr.shape != (n,) or arr.dtype.kind not in "iuf":
        raise ValueError(
            f"doc_sumlogvar must hold one real number per document row, shape ({n},); "
            f"got shape {arr.shape}, dtype {arr.dtype}"
        )
    return arr.astype(np.float64, copy=False)


def _numpy_gaussians(g: Gaussians, what: str) -> Gaussians:
    return _require_gaussians(g, what).numpy()


def _row_facts(mean: np.ndarray, var: np.ndarray, centred: bool) -> str:
    name = "|mean - centre|" if centred else "|mean|"
    return f"largest {name} {float(np.abs(mean).max()):.3g}, variances {float(var.min()):.3g} to {float(var.max()):.3g}"


def _rewrite(mean: np.ndarray, var: np.ndarray, side: str, means_only: bool) -> np.ndarray:
    """float64 rewrite rows of (already centred) float64 means and variances."""
    n = mean.shape[0]
    if means_only:  # -||mq - md||^2 = <[1, 2 mq], [-||md||^2, md]> - ||mq||^2
        if side == "query":
            return np.concatenate([np.ones((n, 1)), 2.0 * mean], axis=1)
        return np.concatenate([-np.einsum("ij,ij->i", mean, mean)[:, None], mean], axis=1)
    g = Gaussians(mean, var, validate=False)
    return np.asarray(_query_rewrite(g) if side == "query" else _document_rewrite(g))


def _first_bad_row(vectors: np.ndarray) -> int | None:
    ok = np.isfinite(vectors).all(axis=1)
    if ok.all():
        return None
    return int(np.flatnonzero(~ok)[0])


def score_vectors_float32(
    g: Gaussians,
    side: str,
    *,
    centre: np.ndarray | None = None,
    means_only: bool = False,
    row_numbers: np.ndarray | None = None,
) -> np.ndarray:
    """The rewrite of ``g`` around ``centre``, as float32, every value checked finite.

    ``side="query"`` gives ``q~`` of the centred Gaussians (``[1, 2 mu]`` with ``means_only``),
    ``side="document"`` gives ``d~`` (``[-||mu||^2, mu]`` with ``means_only``); the means are
    centred (``mu - centre``) in float64 before the rewrite, which changes no score.

    Args:
        g: Numpy Gaussians (any float dtype).
        side: ``"query"`` or ``"document"``.
        centre: Subtracted from every mean (shape ``(k,)``); ``None``: no centring.
        means_only: The rewrite of ``-||mu_q - mu_d||^2`` instead of ``-KL``.
        row_numbers: Row number of each row, used in error messages (default ``0..n-1``).

    Returns:
        Shape ``(n, 2k + 1)`` (``(n, k + 1)`` with ``means_only``), float32.

    Raises:
        TypeError: ``g`` is not a :class:`Gaussians` batch (wrap arrays as ``Gaussians(mean, var)``).
        ValueError: A row whose rewrite overflows float32, naming the row and the value.

    Examples:
        >>> import numpy as np
        >>> g = Gaussians(np.array([[10.0, 11.0]]), np.ones((1, 2)))
        >>> score_vectors_float32(g, "query", centre=np.array([10.0, 10.0]))
        array([[1., 1., 2., 0., 1.]], dtype=float32)
    """
    if side not in ("query", "document"):
        raise ValueError(f"side must be 'query' or 'document'; got {side!r}")
    _require_gaussians(g, "queries" if side == "query" else "documents")
    mean = np.asarray(g.mean, dtype=np.float64)
    var = np.asarray(g.var, dtype=np.float64)
    if centre is not None:
        mean = mean - _check_centre(centre, mean.shape[1])[None, :]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        vec64 = _rewrite(mean, var, side, means_only)
        vec = vec64.astype(np.float32)
    bad = _first_bad_row(vec)
    if bad is not None:
        j = int(np.flatnonzero(~np.isfinite(vec[bad]))[0])
        row = bad if row_numbers is None else int(row_numbers[bad])
        facts = _row_facts(mean[bad], var[bad], centre is not None)
        raise ValueError(_overflow_message(side, row, j, float(vec64[bad, j]), np.float32, facts))
    return vec


#: Below this bound on every coordinate of ``d~`` (far inside float32's 3.4e38), the full check is skipped.
_FAST_CHECK_BOUND = 1e30


def _rewrite_bound(mean: np.ndarray, var: np.ndarray) -> float:
    """An upper bound on ``|d~|`` of any row: ``1/(2 var)``, ``|mu| / var`` and the first coordinate's
    ``1/2 * sum(|log var| + mu^2 / var)`` over ``k`` dimensions, from the extremes of ``mean`` and ``var``
    (``var > 0``). ``inf`` when the bound itself overflows.

    Examples:
        >>> _rewrite_bound(np.zeros((1, 2)), np.ones((1, 2)))
        0.5
    """
    m = max(float(mean.max()), -float(mean.min()))
    v_min, v_max = float(var.min()), float(var.max())
    log_v = max(abs(math.log(v_min)), abs(math.log(v_max)))
    return max(0.5 / v_min, m / v_min, 0.5 * mean.shape[-1] * (log_v + m * m / v_min))  # Python floats: inf, no error


def check_float32_scorable(g: Gaussians, side: str, *, first_row: int = 0) -> None:
    """Refuse Gaussians that cannot be stored or scored in float32, naming the first bad row.

    Documents (stored as float32): means and variances must stay finite, and variances ``> 0``,
    when rounded to float32, and ``d~`` of the rounded values must be finite in float32. Queries
    (kept in float64): ``q~`` must be finite in float32. The rewrite is checked without centring;
    what passes can be stored and ranked exactly.

    Args:
        g: Gaussians (numpy or torch), finite with positive variances.
        side: ``"query"`` or ``"document"``.
        first_row: Number of the first row, for the message.

    Raises:
        ValueError: Naming the row, the value and what float32 can hold.

    Examples:
        >>> import numpy as np
        >>> check_float32_scorable(Gaussians(np.zeros((2, 3)), np.ones((2, 3))), "document")
        >>> check_float32_scorable(Gaussians(np.array([[0.0], [1e20]]), np.ones((2, 1))), "document")
        Traceback (most recent call last):
        ...
        ValueError: document 1 cannot be scored in float32: coordinate 0 of its rewrite d~ is -5e+39 (float32 ...
    """
    g = _numpy_gaussians(g, f"{side} gaussians")
    if side == "query":  # q~ = [1, var + mu^2, mu] is finite in float32 when var + mu^2 is (the fast path)
        mean, var = np.asarray(g.mean, dtype=np.float64), np.asarray(g.var, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite((var + mean * mean).astype(np.float32)).all():
                return
    if side == "document":
        with np.errstate(over="ignore", under="ignore"):
            mean32 = np.asarray(g.mean).astype(np.float32, copy=False)
            var32 = np.asarray(g.var).astype(np.float32, copy=False)
        for name, ok in (("mean", np.isfinite(mean32)), ("variance", np.isfinite(var32) & (var32 > 0))):
            if not ok.all():
                i, j = (int(x[0]) for x in np.nonzero(~ok))
                value = float(np.asarray(g.mean if name == "mean" else g.var)[i, j])
                raise ValueError(
                    f"{side} {first_row + i}: {name} {value:.4g} at dimension {j} is not representable in float32 "
                    f"(finite magnitudes {float(np.finfo(np.float32).tiny):.3g} to {_FLOAT32_MAX:.3g})"
                )
        if mean32.size and _rewrite_bound(mean32, var32) < _FAST_CHECK_BOUND:
            return  # every coordinate of d~ is far inside float32's range: the full rewrite below would pass
        g = Gaussians(mean32, var32, validate=False)
    rows = np.arange(first_row, first_row + len(g))
    for s in range(0, len(g), _EXACT_ROWS):
        score_vectors_float32(g[s : s + _EXACT_ROWS], side, row_numbers=rows[s : s + _EXACT_ROWS])


def _block_starts(width: int, means_only: bool) -> list[int]:
    """Where the blocks of a rewrite row start: ``[first | var (+ mu^2) or precision | mean]`` or ``[first | mean]``."""
    return [0, 1] if means_only else [0, 1, (width - 1) // 2 + 1]


def rewrite_block_norms(vectors: np.ndarray, *, means_only: bool = False) -> np.ndarray:
    """Euclidean norm of each block of each rewrite row (float64), shape ``(n, 3)`` (``(n, 2)`` means-only).

    Examples:
        >>> import numpy as np
        >>> rewrite_block_norms(np.array([[1.0, 3.0, 4.0]], dtype=np.float32))
        array([[1., 3., 4.]])
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[0] == 0:
        return np.zeros((0, 2 if means_only else 3))
    return np.sqrt(np.add.reduceat(v * v, _block_starts(v.shape[1], means_only), axis=1))


def float32_score_bound(
    query_vectors: np.ndarray, doc_block_norm_max: np.ndarray, *, means_only: bool = False
) -> np.ndarray:
    """Bound on the error of a float32 inner product ``<q~, d~>`` for every document of a collection.

    ``gamma_{n+2} * sum_b ||q~_b|| * D_b`` over the blocks ``b`` of the rewrite (Cauchy-Schwarz per
    block, which stays tight when ``q~``'s large block meets ``d~``'s small one; see the section
    comment), with ``D_b`` the largest norm of block ``b`` among the documents' float32 rows
    (:func:`rewrite_block_norms`); ``inf`` where a partial sum could overflow float32.

    Args:
        query_vectors: float32 rewrite rows, shape ``(n_q, n)``.
        doc_block_norm_max: ``D_b`` per block, shape ``(3,)`` (``(2,)`` means-only).
        means_only: The rows are the means-only rewrite.

    Returns:
        float64, shape ``(n_q,)``.

    Examples:
        >>> import numpy as np
        >>> b = float32_score_bound(np.array([[1.0, 3.0, 4.0]], dtype=np.float32), np.array([1.0, 2.0, 0.5]))
        >>> bool(0 < b[0] < 1e-5)
        True
    """
    n = query_vectors.shape[1] + 2
    u = FLOAT32_UNIT_ROUNDOFF
    gamma = n * u / (1.0 - n * u) * (1.0 + 1e-6)  # the slack covers the float64 norms
    with np.errstate(over="ignore", invalid="ignore"):
        top = rewrite_block_norms(query_vectors, means_only=means_only) @ np.asarray(doc_block_norm_max, np.float64)
        bound = gamma * top
    return np.where(np.isfinite(top) & (top < 0.5 * _FLOAT32_MAX), bound, np.inf)


def pool_terms(
    query_mean: np.ndarray,
    query_var: np.ndarray,
    doc_mean: np.ndarray,
    doc_var: np.ndarray,
    rows: np.ndarray,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """``sum_i (var_q + (mu_q - mu_d)^2) / var_d`` of ``m`` queries against their own candidate rows.

    Args:
        query_mean: Shape ``(m, k)``.
        query_var: Shape ``(m, k)``.
        doc_mean: All documents' means, shape ``(n, k)`` (read only at ``rows``; may be memory-mapped).
        doc_var: All documents' variances, shape ``(n, k)``.
        rows: Candidate rows per query, shape ``(m, c)``; ``-1`` is padding (read as row 0).
        dtype: Arithmetic dtype (float64 for the exact score, float32 for a cheap pre-selection).

    Returns:
        ``(safe, terms)``: the rows read (padding as 0) and the sums, both shape ``(m, c)``.

    Examples:
        >>> import numpy as np
        >>> _, t = pool_terms(np.zeros((1, 2)), np.ones((1, 2)), np.ones((3, 2)), np.ones((3, 2)), np.array([[2, -1]]))
        >>> t.tolist()
        [[4.0, 4.0]]
    """
    safe = np.where(rows < 0, 0, rows)
    buf = doc_mean[safe].astype(dtype, copy=False)  # fancy indexing already copied: work in place
    np.subtract(np.asarray(query_mean, dtype=dtype)[:, None, :], buf, out=buf)
    np.square(buf, out=buf)
    buf += np.asarray(query_var, dtype=dtype)[:, None, :]
    buf /= doc_var[safe]
    return safe, buf.sum(axis=2)


def neg_kl_rows(
    queries: Gaussians,
    documents: Gaussians,
    rows: np.ndarray,
    *,
    doc_sumlogvar: np.ndarray | None = None,
    means_only: bool = False,
) -> np.ndarray:
    """Exact float64 scores of each query against its own candidate rows (the re-scoring step).

    Args:
        queries: ``m`` numpy query Gaussians.
        documents: All documents (numpy; float32 stored rows are read in float64).
        rows: Shape ``(m, c)``: document rows per query, ``-1`` for padding.
        doc_sumlogvar: ``sum_i log var_d_i`` per document (float64), if already known.
        means_only: Score by ``-||mu_q - mu_d||^2`` instead of ``-KL``.

    Returns:
        Shape ``(m, c)``, float64; ``-inf`` at padding.

    Raises:
        TypeError: ``queries`` or ``documents`` is not a :class:`Gaussians` batch (wrap arrays as
            ``Gaussians(mean, var)``).

    Examples:
        >>> import numpy as np
        >>> q = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
        >>> d = Gaussians(np.array([[0.0, 0.0], [2.0, 0.0]]), np.ones((2, 2)))
        >>> neg_kl_rows(q, d, np.array([[1, 0, -1]]))
        array([[ -2.,   0., -inf]])
    """
    _require_gaussians(queries, "queries")
    _require_gaussians(documents, "documents")
    m, c = rows.shape
    k = int(queries.dim)
    out = np.full((m, c), -np.inf)
    if m == 0 or c == 0:
        return out
    qm = np.asarray(queries.mean, dtype=np.float64)
    qv = np.asarray(queries.var, dtype=np.float64)
    sumlog_q = np.log(qv).sum(axis=1)
    step = max(1, _ROWS_BLOCK_ELEMENTS // max(1, c * k))
    for s in range(0, m, step):
        e = min(m, s + step)
        lab = rows[s:e]
        if means_only:
            safe = np.where(lab < 0, 0, lab)
            diff = np.asarray(documents.mean[safe], dtype=np.float64) - qm[s:e, None, :]
            score = -np.einsum("qcj,qcj->qc", diff, diff)
        else:
            safe, t = pool_terms(qm[s:e], qv[s:e], documents.mean, documents.var, lab, np.float64)
            if doc_sumlogvar is None:
                sumlog_d = np.log(np.asarray(documents.var[safe], dtype=np.float64)).sum(axis=2)
            else:
                sumlog_d = doc_sumlogvar[safe]
            score = 0.0 - 0.5 * (sumlog_d - sumlog_q[s:e, None] - k + t)
        score[lab < 0] = -np.inf
        out[s:e] = score
    return out


def _merge_top(
    best_s: np.ndarray, best_r: np.ndarray, s: np.ndarray, r: np.ndarray, keep: int, tie_rank: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` largest of two (scores, rows) sets per query (unordered; ties by ``tie_rank`` when given)."""
    all_s = np.concatenate([best_s, s], axis=1)
    all_r = np.concatenate([best_r, r], axis=1)
    if all_s.shape[1] > keep:
        top = np.argpartition(-all_s, keep - 1, axis=1)[:, :keep]
        if tie_rank is not None:
            # the partition is the answer unless rows tie at its cut (or it holds NaN): sort those queries
            cut = np.take_along_axis(all_s, top, 1).min(axis=1)
            tied = np.flatnonzero((all_s >= cut[:, None]).sum(axis=1) != keep)
            if tied.size:
                top[tied] = np.lexsort((tie_rank[all_r[tied]], -all_s[tied]), axis=1)[:, :keep]
        all_s = np.take_along_axis(all_s, top, 1)
        all_r = np.take_along_axis(all_r, top, 1)
    return all_s, all_r


def _streamed_top(
    allowed: np.ndarray,
    step: int,
    keep: int,
    score: Callable[[int, np.ndarray], np.ndarray],
    nq: int,
    dtype: Any,
    tie_rank: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best (scores, rows) per query (unordered), scoring ``step`` allowed rows at a time.

    ``score(start, block)`` gives the ``(nq, block.size)`` scores of ``block = allowed[start : start + step]``;
    one block of scores is held at a time.
    """
    best_s = np.full((nq, 0), -np.inf, dtype=dtype)
    best_r = np.zeros((nq, 0), dtype=np.int64)
    for start in range(0, allowed.size, step):
        block = allowed[start : start + step]
        sc = score(start, block)
        best_s, best_r = _merge_top(best_s, best_r, sc, np.broadcast_to(block, sc.shape), keep, tie_rank)
    return best_s, best_r


def top_k_rows(
    scores: np.ndarray, rows: np.ndarray, k: int, tie_rank: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``k`` best of candidate ``rows`` by ``scores``, best first.

    Tied scores keep the candidates' order, or, with ``tie_rank`` (one entry per document row, lower
    first; :func:`kl_retrievers.runs.tie_ranks`), that rank's order.

    Candidates scored ``-inf`` or NaN (padding, disallowed rows) come out as row ``-1`` with score
    ``-inf``; fewer than ``k`` candidates are padded the same way.

    Args:
        scores: Shape ``(m, c)``; higher is better.
        rows: Shape ``(m, c)``: the candidate rows the scores belong to.
        k: Width of the result.
        tie_rank: Optional order of tied rows (indexed by row number).

    Returns:
        ``(rows, scores)``, shape ``(m, k)``.

    Examples:
        >>> import numpy as np
        >>> top_k_rows(np.array([[0.5, -np.inf, 2.0]]), np.array([[7, 8, 9]]), 4)
        (array([[ 9,  7, -1, -1]]), array([[ 2. ,  0.5, -inf, -inf]]))
    """
    if tie_rank is None:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:  # padding rows (-1) score -inf and sort after every real row whatever their rank
        order = np.lexsort((tie_rank[rows], -scores), axis=1)[:, :k]
    s = np.take_along_axis(scores, order, 1).astype(np.float64)
    r = np.take_along_axis(rows, order, 1).astype(np.int64)
    bad = ~(s > -np.inf)
    r, s = np.where(bad, -1, r), np.where(bad, -np.inf, s)
    pad = k - r.shape[1]
    if pad > 0:
        r = np.concatenate([r, np.full((r.shape[0], pad), -1, dtype=np.int64)], axis=1)
        s = np.concatenate([s, np.full((s.shape[0], pad), -np.inf)], axis=1)
    return r, s


def float64_top_k(
    queries: Gaussians,
    documents: Gaussians,
    k: int,
    *,
    rows: np.ndarray | None = None,
    means_only: bool = False,
    tie_rank: np.ndarray | None = None,
    doc_sumlogvar: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` rows by float64 scores of every (allowed) document: the slow, always exact path.

    Scores come from :func:`neg_kl_rows`, the arithmetic of the pooled re-score, so a document
    scores the same bits on either path; tied scores are ordered by ``tie_rank`` (default: lower row
    first), so a shallower run is a prefix of a deeper one.

    Args:
        queries: Query Gaussians (torch ones are read as numpy).
        documents: Document Gaussians (torch ones are read as numpy; float32 rows are read in float64).
        k: Results per query.
        rows: The allowed document rows (default: all): a 1-D array of unique integers in
            ``[0, n_documents)``, or a boolean mask of length ``n_documents`` (its ``True`` rows).
        means_only: Score by ``-||mu_q - mu_d||^2`` instead of ``-KL``.
        tie_rank: Order of tied rows, one entry per document row, lower first (default: row
            order, the lower row first).
        doc_sumlogvar: ``sum_i log var_d_i`` per document row (float64), if already known.

    Returns:
        ``(rows, scores)``, shape ``(n_q, k)``, best first, padded with ``-1`` / ``-inf``.

    Raises:
        TypeError: ``queries`` or ``documents`` not :class:`Gaussians`.
        ValueError: Dimensions differ, or ``rows``, ``tie_rank`` or ``doc_sumlogvar`` not as described
            above (naming the bad value).

    Examples:
        >>> import numpy as np
        >>> q = Gaussians(np.zeros((1, 1)), np.ones((1, 1)))
        >>> d = Gaussians(np.array([[3.0], [1.0], [2.0]]), np.ones((3, 1)))
        >>> float64_top_k(q, d, 2)
        (array([[1, 2]]), array([[-0.5, -2. ]]))
    """
    queries = _numpy_gaussians(queries, "queries")
    documents = _numpy_gaussians(documents, "documents")
    if queries.dim != documents.dim:
        raise ValueError(f"queries have dimension {queries.dim} but documents {documents.dim}")
    nq = len(queries)
    allowed = np.arange(len(documents)) if rows is None else _allowed_rows(rows, len(documents))
    ranks = _row_tie_rank(len(documents), tie_rank)
    doc_sumlogvar = _check_sumlogvar(doc_sumlogvar, len(documents))
    q64 = queries.astype(np.float64)

    def score(_start: int, block: np.ndarray) -> np.ndarray:
        dm = np.asarray(documents.mean[block], dtype=np.float64)
        if means_only:  # neg_kl_rows' terms without its per-query gather of the rows (the same bits)
            sc = np.empty((nq, block.size))
            qstep = max(1, _ROWS_BLOCK_ELEMENTS // max(1, block.size * queries.dim))
            for a in range(0, nq, qstep):
                diff = dm[None, :, :] - q64.mean[a : a + qstep, None, :]
                sc[a : a + qstep] = -np.einsum("qcj,qcj->qc", diff, diff)
            return sc
        dv = np.asarray(documents.var[block], dtype=np.float64)
        # the same per-row sum as the re-score's (a contiguous float64 row each)
        sumlog = np.log(dv).sum(axis=1) if doc_sumlogvar is None else doc_sumlogvar[block]
        local = np.broadcast_to(np.arange(block.size), (nq, block.size))
        return neg_kl_rows(q64, Gaussians(dm, dv, validate=False), local, doc_sumlogvar=sumlog)

    return top_k_rows(*_streamed_top(allowed, _EXACT_ROWS // 16, k, score, nq, np.float64, ranks), k, ranks)


def _pool_proof(
    lab: np.ndarray, approx: np.ndarray, bound: np.ndarray, shift: np.ndarray, c: int, want: int, kth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(proven, usable)`` per query of one float32 search of ``want`` rows whose first ``c`` are the pool.

    Proven: every row left out of the pool scores below ``kth`` (the ``k``-th best exact score re-scored so
    far): the witness (row ``c``, the best left out) is, by the bound. Usable: no dropped row (``-1``), and a
    finite bound and float32 scores (else no wider search can prove it either). A pool of ``want == c`` rows is
    every allowed row: proven when none was dropped.
    """
    # want <= n_allowed rows exist, so a -1 label among the first want is a row the float32 search
    # dropped (FAISS returns -1 for a score that overflowed to -inf), never "no more rows"
    complete = (lab.shape[1] >= want) & (lab[:, :want] >= 0).all(axis=1)
    if want == c:
        return complete, complete
    witness = approx[:, c].astype(np.float64) if lab.shape[1] > c else np.full(lab.shape[0], -np.inf)
    usable = complete & np.isfinite(approx[:, :want]).all(axis=1) & np.isfinite(bound)
    with np.errstate(invalid="ignore"):
        return usable & (witness + bound + shift < kth), usable


def _live_rows(
    lab: np.ndarray, approx: np.ndarray, bound: np.ndarray, shift: np.ndarray, kth: np.ndarray, seen: np.ndarray
) -> np.ndarray:
    """Which of the pool rows ``lab`` (float32 scores ``approx``) may still enter the top ``k``, and were not
    re-scored before (``seen``, per query): a row whose ``approx + bound + shift`` is below ``kth`` (the
    ``k``-th best exact score so far) scores below it, by the bound (the witness's test, row by row); one
    whose float32 score is not finite is kept."""
    a = approx.astype(np.float64)
    with np.errstate(invalid="ignore"):
        live = ~(np.isfinite(a) & (a + bound[:, None] + shift[:, None] < kth[:, None])) & (lab >= 0)
    if seen.size:  # per query, row r as the key q * width + r + 1: one sorted search for every query at once
        width = int(max(lab.max(initial=-1), seen.max(initial=-1))) + 2
        offset = np.arange(lab.shape[0], dtype=np.int64)[:, None] * width
        keys = np.sort((seen + 1 + offset).ravel())
        q, j = np.nonzero(live)
        probe = lab[q, j] + 1 + offset[q, 0]
        live[q, j] = keys[np.minimum(np.searchsorted(keys, probe), keys.size - 1)] != probe
    return live


def _rows_above(approx: np.ndarray, c: int, lift: np.ndarray) -> np.ndarray:
    """Per query, about how many rows have a float32 score above the line the witness ``approx[:, c]`` must pass
    (``approx + lift < 0``, ``lift = bound + shift - kth``): the float32 scores fell from the best to the witness
    over ``c`` rows, and fall more slowly below (they crowd together away from the top), so about
    ``c * (1 + (witness + lift) / (best - witness))`` or more (a heuristic: a straight-line fall; ``inf`` where the
    pool's scores are all equal)."""
    best, witness = approx[:, 0].astype(np.float64), approx[:, c].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return c * (1.0 + (witness + lift) / (best - witness))


def _rescore_live(
    qi: np.ndarray, lab: np.ndarray, live: np.ndarray, rescore: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)``: the ``live`` rows of ``lab`` per query (in pool order, packed left, ``-1`` / ``-inf``
    after them) and their exact scores, from ``rescore`` calls that each take the queries whose counts of live
    rows share a power of two, as wide as the largest of them (little padding is re-scored)."""
    count = live.sum(axis=1)
    q, j = np.nonzero(live)  # query by query, in pool order
    rows = np.full((lab.shape[0], int(count.max(initial=0))), -1, dtype=np.int64)
    rows[q, np.arange(q.size) - np.repeat(np.cumsum(count) - count, count)] = lab[q, j]
    scores = np.full(rows.shape, -np.inf)
    group = np.where(count > 0, np.ceil(np.log2(np.maximum(count, 1))), -1)
    for g in np.unique(group[group >= 0]):
        sel = np.flatnonzero(group == g)
        width = int(count[sel].max())
        scores[sel, :width] = rescore(qi[sel], rows[sel, :width])
    return rows, scores


def refine_top_k(
    nq: int,
    k: int,
    n_allowed: int | Callable[[], int],
    margin: int,
    candidates: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    rescore: Callable[[np.ndarray, np.ndarray], np.ndarray],
    fallback: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    query_shift: np.ndarray,
    tie_rank: np.ndarray | None = None,
    max_pool: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` from float32 candidates: re-score a pool, prove it holds the top ``k``, or widen it.

    The first pool (``k + margin`` rows) is re-scored whole. A query it does not prove is searched again with
    wider pools (see the section comment: 8x, then 8x again while the pool stays within a quarter of the allowed
    rows, three times at most), of which only the rows the bound cannot rule out (``approx + bound + shift``
    at least the ``k``-th best exact score so far) and not re-scored before are re-scored. The first wider
    pool re-scores them for every query it searches (their scores can raise that ``k``-th score: the proof
    uses the new one), as the former single wider pool re-scored all of its rows; a later one only for the
    queries its witness already proves. A query still unproven, or whose float32 scores say that a later pool
    would most likely not be enough either (:func:`_rows_above`), is scored by ``fallback``. Each wider pool is
    searched and re-scored for ``_GROW_ELEMENTS // width`` queries at a time (each such chunk then goes on to its
    own later pools), so a query gets the same pools whatever the size of its batch. Where the first pool is
    enough, this costs what it did: one search, one re-scoring of the pool.

    Args:
        nq: Number of queries.
        k: Results per query (``<= n_allowed``).
        n_allowed: Number of documents a query may return, or a zero-argument callable that gives it, called
            at most once and only where a wider pool is needed (a count that costs a request): the caller then
            promises more than the first pool and its witness (``k + margin + 1`` rows, within ``max_pool``).
        margin: The first pool holds ``k + margin`` candidates.
        candidates: ``(query numbers, c) -> (rows, approx, bound)``: the ``c`` best rows per query by
            the float32 score, best first, their float32 scores, and per query a bound on the float32
            error of any allowed document's score. ``c <= n_allowed``, so a ``-1`` label (FAISS's for a
            score that overflowed to ``-inf``) or a bound that is not finite sends the query to ``fallback``
            at once (a wider search would hold them too).
        rescore: ``(query numbers, rows) -> exact float64 scores`` (``-inf`` at padding, ``-1``).
        fallback: ``query numbers -> (rows, scores)``: the exact top ``k`` in float64 over every
            allowed row, shape ``(m, k)``.
        query_shift: Per query, exact score = float32-scale score + shift (the query constant).
        tie_rank: Order of tied rows, indexed by row number. The proof is strict (every row left out
            scores below the ``k``-th), so rows tied at the cut are all re-scored and this order decides
            between them. Default: the order they were re-scored in: the first pool's order, then at each
            wider pool the top ``k`` so far before its new rows (in pool order); ``fallback``'s own order
            for the queries it scores.
        max_pool: The most rows a pool may hold, read as ``max(k, max_pool)`` (a pool holds at least ``k``): every
            pool is then at most ``max(k, max_pool)`` rows, and ``candidates`` is asked for at most
            ``max(k, max_pool) + 1`` (the pool and its witness; also at most ``n_allowed`` once that is known), so
            a search that returns at most ``max_pool + 1`` rows (Milvus' ``MAX_TOPK``) serves every call where
            ``k <= max_pool``; a query that a pool so capped does not prove goes to ``fallback``. Default: no cap.

    Returns:
        ``(rows, scores)``, shape ``(nq, k)``, best first, float64 scores; ``-1`` / ``-inf`` padding.
    """
    out_r = np.full((nq, k), -1, dtype=np.int64)
    out_s = np.full((nq, k), -np.inf)
    todo = np.arange(nq)
    if not nq:
        return out_r, out_s
    counted: list[int] = [] if callable(n_allowed) else [n_allowed]

    def allowed() -> int:
        """``n_allowed``, its callable called once."""
        if not counted:
            assert callable(n_allowed)
            counted.append(n_allowed())
        return counted[0]

    c = k + max(0, margin) if max_pool is None else min(k + max(0, margin), max(k, max_pool))
    want = c + 1  # one more than the pool: the best row left out
    if counted:
        c, want = min(counted[0], c), min(counted[0], want)
    lab, approx, bound = candidates(todo, want)
    seen = lab[:, :c]  # per query, the rows re-scored so far (-1: none)
    r, s = top_k_rows(rescore(todo, seen), seen, k, tie_rank)
    ok, usable = _pool_proof(lab, approx, bound, query_shift[todo], c, want, s[:, k - 1])
    out_r[todo[ok]], out_s[todo[ok]] = r[ok], s[ok]
    # a dropped row (-1), an overflowing float32 score or bound stays in every wider search: give up now
    left = [todo[~usable]]  # the queries scored by fallback

    def widen(todo: np.ndarray, seen: np.ndarray, r: np.ndarray, s: np.ndarray, c: int, wider: int) -> None:
        """The wider pools after the first ``wider`` for the queries ``todo`` not proven by a pool of ``c`` rows
        (``seen``: their rows re-scored so far; ``r``, ``s``: their top ``k`` so far): into the output where a pool
        proves them, else into ``left``. ``_GROW_ELEMENTS // pool`` queries at a time, each chunk with its own
        later pools, so whether a query gets one does not depend on how many others came with it."""
        while todo.size:
            n = allowed()
            cap = n if max_pool is None else min(n, max(k, max_pool))
            grown = min(cap, _GROW * c if wider else max(_GROW * c, k + _GROW_MIN))
            if wider == _GROW_ROUNDS or grown <= c or (wider and grown > n // _GROW_SHARE):
                break
            step = max(1, _GROW_ELEMENTS // grown)
            if todo.size > step:
                for a in range(0, todo.size, step):
                    part = slice(a, a + step)
                    widen(todo[part], seen[part], r[part], s[part], c, wider)
                return
            c, want = grown, min(n, grown + 1)
            lab, approx, bound = candidates(todo, want)
            shift, kth = query_shift[todo], s[:, k - 1]
            ok, usable = _pool_proof(lab, approx, bound, shift, c, want, kth)
            redo = np.flatnonzero(ok if wider else usable)
            live = _live_rows(lab[redo, :c], approx[redo, :c], bound[redo], shift[redo], kth[redo], seen[redo])
            new_r, new_s = _rescore_live(todo[redo], lab[redo, :c], live, rescore)
            r[redo], s[redo] = top_k_rows(
                np.concatenate([s[redo], new_s], axis=1), np.concatenate([r[redo], new_r], axis=1), k, tie_rank
            )
            more = np.full((todo.size, new_r.shape[1]), -1, dtype=np.int64)
            more[redo] = new_r
            seen = np.concatenate([seen, more], axis=1)
            if not wider:  # the first wider pool's new rows may have raised the k-th score: the proof uses it
                ok, usable = _pool_proof(lab, approx, bound, shift, c, want, s[:, k - 1])
            if approx.shape[1] > c:  # give up now where a later pool would most likely not be enough either
                usable &= ok | (_rows_above(approx, c, bound + shift - s[:, k - 1]) <= n // _GROW_SHARE)
            out_r[todo[ok]], out_s[todo[ok]] = r[ok], s[ok]
            left.append(todo[~usable])
            keep = usable & ~ok
            todo, seen, r, s, wider = todo[keep], seen[keep], r[keep], s[keep], wider + 1
        left.append(todo)

    keep = usable & ~ok
    widen(todo[keep], seen[keep], r[keep], s[keep], c, 0)
    todo = np.sort(np.concatenate(left))
    if todo.size:
        logger.debug("%d query(ies): float32 candidates not provably enough; scoring in float64", todo.size)
        out_r[todo], out_s[todo] = fallback(todo)
    return out_r, out_s


def exact_top_k(
    queries: Gaussians,
    documents: Gaussians,
    k: int,
    *,
    rows: np.ndarray | None = None,
    centre: np.ndarray | None = None,
    means_only: bool = False,
    margin: int = 16,
    doc_sumlogvar: np.ndarray | None = None,
    max_block_elements: int = 1 << 25,
    on_block: Callable[[int], None] | None = None,
    tie_rank: np.ndarray | None = None,
    doc_vectors: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` documents per query by ``-KL(Q || D)`` (or ``-||mu_q - mu_d||^2``), float64 scores.

    float32 matmul candidates over the centred rewrite, re-scored in float64 and proven complete
    by the float32 error bound (see the section comment), else widened, else scored in float64.

    Args:
        queries: Query Gaussians (numpy or torch).
        documents: Document Gaussians (numpy or torch; float32 or float64; may be memory-mapped).
        k: Results per query (clipped to the number of allowed documents).
        rows: Allowed document rows (default: all): a 1-D array of unique integers in
            ``[0, len(documents))``, or a boolean mask of length ``len(documents)`` (read as its
            ``True`` rows, ``np.flatnonzero``). Anything else raises ``ValueError``.
        centre: Subtracted from every mean before the float32 rewrite (default: the mean of the
            allowed documents' means).
        means_only: Score by ``-||mu_q - mu_d||^2`` (variances ignored).
        margin: Extra float32 candidates in the first pool.
        doc_sumlogvar: ``sum_i log var_d_i`` per document, if already known.
        max_block_elements: Bound on one float32 score block (queries x documents).
        on_block: Called with the number of queries finished after each block of queries.
        tie_rank: One entry per document row: the order of rows whose scores tie, lower first
            (:func:`kl_retrievers.runs.tie_ranks` gives ``trec_eval``'s order). Default: row
            order (the lower row first). With distinct ranks the top ``k`` is a prefix of the top ``k + 1``.
        doc_vectors: ``(vectors, norms)``: the float32 rewrite of every document around ``centre`` (as
            :func:`score_vectors_float32` builds it, ``means_only`` alike) and :func:`rewrite_block_norms`
            of each of its rows, kept by a caller that searches the same documents again: the allowed
            rows are read from it instead of rewritten on every call. Needs ``centre``. Only shapes and dtype
            are checked: vectors built around another centre (or the other ``means_only``) are not detected
            and give wrong scores, so keep them beside the centre they were built with.

    Returns:
        ``(rows, scores)``, shape ``(n_q, min(k, n_allowed))``: document row numbers best first and
        their float64 scores.

    Raises:
        ValueError: ``k`` not a positive integer, dimensions differ, ``rows``, ``tie_rank``,
            ``centre`` (shape ``(k,)``, finite) or ``doc_sumlogvar`` (shape ``(n_documents,)``) not as
            described above, or a query or document whose rewrite overflows float32 (naming its row).

    Examples:
        >>> import numpy as np
        >>> q = Gaussians(np.full((1, 2), 20.0), np.full((1, 2), 1e-4))
        >>> d = Gaussians(np.array([[20.0, 21.0], [20.0, 20.01]]), np.full((2, 2), 1e-4))
        >>> r, s = exact_top_k(q, d, 2)
        >>> r.tolist(), s.round(6).tolist()
        ([[1, 0]], [[-0.5, -5000.0]])
    """
    k = check_k(k)
    q = _numpy_gaussians(queries, "queries").astype(np.float64)
    docs = _numpy_gaussians(documents, "documents")
    if q.dim != docs.dim:
        raise ValueError(f"queries have dimension {q.dim} but documents {docs.dim}")
    ranks = _row_tie_rank(len(docs), tie_rank)
    allowed = np.arange(len(docs)) if rows is None else _allowed_rows(rows, len(docs))
    doc_sumlogvar = _check_sumlogvar(doc_sumlogvar, len(docs))
    if centre is not None:
        centre = _check_centre(centre, docs.dim)
    if doc_vectors is not None:
        if not isinstance(doc_vectors, tuple) or len(doc_vectors) != 2:
            raise ValueError(
                f"doc_vectors must be a pair (vectors, norms), got {type(doc_vectors).__name__}"
                + (f" of {len(doc_vectors)}" if isinstance(doc_vectors, tuple) else "")
            )
        if getattr(doc_vectors[0], "dtype", None) != np.float32:
            raise ValueError(
                f"doc_vectors' vectors must be float32 (as score_vectors_float32 builds them), got "
                f"{getattr(doc_vectors[0], 'dtype', type(doc_vectors[0]).__name__)}"
            )
        width, blocks = (docs.dim + 1, 2) if means_only else (2 * docs.dim + 1, 3)
        shapes = tuple(np.shape(x) for x in doc_vectors)
        if centre is None or shapes != ((len(docs), width), (len(docs), blocks)):
            raise ValueError(
                f"doc_vectors must be the documents' float32 rewrite and its block norms, shapes "
                f"{(len(docs), width)} and {(len(docs), blocks)}, with a centre; got shapes {shapes}, "
                f"centre {'given' if centre is not None else 'None'}"
            )
    nq, n = len(q), int(allowed.size)
    kk = min(k, n)
    if nq == 0 or kk == 0:
        return np.zeros((nq, 0), dtype=np.int64), np.zeros((nq, 0))
    if centre is None:
        total = np.zeros(docs.dim)
        for s in range(0, n, _EXACT_ROWS):
            total += np.asarray(docs.mean[allowed[s : s + _EXACT_ROWS]], dtype=np.float64).sum(axis=0)
        centre = total / n
    qv = score_vectors_float32(q, "query", centre=centre, means_only=means_only)
    if means_only:
        shift = -np.einsum("ij,ij->i", q.mean - centre[None, :], q.mean - centre[None, :])
    else:
        shift = np.asarray(kl_query_constant(q))
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    keep_cache = n * qv.shape[1] <= _EXACT_CACHE_ELEMENTS

    def doc_block(s: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 rewrite rows ``allowed[s : s + _EXACT_ROWS]`` and the largest norm of each of their blocks."""
        if s in cache:
            return cache[s]
        block = allowed[s : s + _EXACT_ROWS]
        if doc_vectors is not None:
            dv, dmax = doc_vectors[0][block], doc_vectors[1][block].max(axis=0)
        else:
            g = Gaussians(docs.mean[block], docs.var[block], validate=False)
            dv = score_vectors_float32(g, "document", centre=centre, means_only=means_only, row_numbers=block)
            dmax = rewrite_block_norms(dv, means_only=means_only).max(axis=0)
        if keep_cache:
            cache[s] = (dv, dmax)
        return dv, dmax

    def candidates(qi: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block_maxima: list[np.ndarray] = []

        def score(start: int, block: np.ndarray) -> np.ndarray:
            if doc_vectors is not None and block.size:
                lo, hi = int(block.min()), int(block.max()) + 1
                if hi - lo <= 4 * block.size:  # the kept rows lo:hi scored in place: no copy of the block's rows
                    block_maxima.append(doc_vectors[1][block].max(axis=0))
                    with np.errstate(over="ignore", invalid="ignore"):
                        return (qv[qi] @ doc_vectors[0][lo:hi].T)[:, block - lo]
            dv, block_max = doc_block(start)
            block_maxima.append(block_max)
            with np.errstate(over="ignore", invalid="ignore"):  # a non-finite score fails the proof: float64
                return qv[qi] @ dv.T

        best_s, best_r = _streamed_top(allowed, _EXACT_ROWS, c, score, qi.size, np.float32)
        dmax = np.maximum.reduce([np.zeros(2 if means_only else 3), *block_maxima])
        order = np.argsort(-best_s, axis=1, kind="stable")
        return (
            np.take_along_axis(best_r, order, 1),
            np.take_along_axis(best_s, order, 1),
            float32_score_bound(qv[qi], dmax, means_only=means_only),
        )

    out_r = np.empty((nq, kk), dtype=np.int64)
    out_s = np.empty((nq, kk))
    qblock = max(1, max_block_elements // max(1, min(n, _EXACT_ROWS)))
    for start in range(0, nq, qblock):
        qi_block = np.arange(start, min(nq, start + qblock))

        def cand(qi: np.ndarray, c: int, base: np.ndarray = qi_block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return candidates(base[qi], c)

        def rescore(qi: np.ndarray, lab: np.ndarray, base: np.ndarray = qi_block) -> np.ndarray:
            return neg_kl_rows(q[base[qi]], docs, lab, doc_sumlogvar=doc_sumlogvar, means_only=means_only)

        def fallback(qi: np.ndarray, base: np.ndarray = qi_block) -> tuple[np.ndarray, np.ndarray]:
            return float64_top_k(
                q[base[qi]], docs, kk, rows=allowed, means_only=means_only, tie_rank=ranks, doc_sumlogvar=doc_sumlogvar
            )

        out_r[qi_block], out_s[qi_block] = refine_top_k(
            qi_block.size, kk, n, margin, cand, rescore, fallback, shift[qi_block], ranks
        )
        if on_block is not None:
            on_block(qi_block.size)
    return out_r, out_s
