"""What the LangChain and LlamaIndex adapters share: relevance in ``(0, 1]``, KL-based MMR, store warnings, manifests,
async writes that a cancelled caller leaves undone.

Nothing here imports a framework; :mod:`kl_retrievers.langchain` and
:mod:`kl_retrievers.llama_index` re-export the relevance functions.

Relevance maps a score ``-KL(Q || D)`` in ``(-inf, 0]`` to ``(0, 1]``.  The default,
:func:`relevance_exp`, is ``exp(-KL)``: the geometric mean, over points ``x`` typical of the
query (``x ~ Q``), of ``D(x) / Q(x)``, i.e. how likely the document's Gaussian makes the query's
own points relative to the query itself.  ``1`` only for identical Gaussians, ``1/2`` at
``KL = ln 2``.

Examples:
    >>> round(relevance_exp(-0.6931471805599453), 6)
    0.5
    >>> mmr_select([0.0, -0.1, -2.0], Gaussians([[0.0], [0.0], [3.0]], [[1.0], [1.0], [1.0]]), 2, 0.3)
    [0, 2]
"""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import inspect
import json
import logging
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast

import numpy as np

from kl_retrievers._io import atomic_dir, atomic_file, library_version
from kl_retrievers._score import check_score_fields
from kl_retrievers._warn import at_callers_line, warn
from kl_retrievers.gaussian import Gaussians, check_k, first_coordinate_mismatches, neg_kl_matrix

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RELEVANCE",
    "RELEVANCE_FUNCTIONS",
    "RelevanceFn",
    "RelevanceName",
    "backend_refusal",
    "cancellable_write",
    "check_store_options",
    "check_write_ids",
    "encode_for_write",
    "encoder_backend",
    "init_option_names",
    "loads_anywhere",
    "manifests_in_folder",
    "mmr_select",
    "read_manifest",
    "refuse_unknown_keywords",
    "relevance_exp",
    "relevance_exp_per_dim",
    "relevance_inverse",
    "resolve_relevance",
    "store_option_names",
    "store_write_unless_cancelled",
    "WriteGate",
    "warn_incompatible_store",
    "write_cancelled",
    "write_manifest",
]

#: A relevance function: ``f(neg_kl, dim) -> float`` in ``[0, 1]``, higher is more relevant.
RelevanceFn = Callable[[float, int | None], float]

_T = TypeVar("_T")

#: The cancellation flag of the async write whose worker thread runs in this context (:func:`cancellable_write`
#: sets it; ``None`` outside one, e.g. in a sync call).
_WRITE_CANCELLED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "kl_retrievers_write_cancelled", default=None
)

# A manifest is a few hundred bytes; anything much larger is not one (see looks_like_manifest).
_MANIFEST_MAX_BYTES = 1 << 16


def _kl(score: float) -> float:
    """``KL = -score`` (at least 0: a self-match can round to a tiny positive ``-KL``); NaN and +inf refused."""
    value = float(score)
    if math.isnan(value) or value == math.inf:
        raise ValueError(f"a relevance needs a score (-KL) in [-inf, 0]; got {score!r}")
    return max(0.0, -value)


def relevance_exp(score: float, dim: int | None = None) -> float:
    """Relevance ``exp(-KL)`` in ``(0, 1]`` (the default of both adapters).

    ``exp(-KL(Q || D)) = exp(E_{x~Q}[log D(x) - log Q(x)])``: the geometric mean, over the
    query's own likely points, of how much less likely the document's Gaussian makes them.
    ``1`` for identical Gaussians, ``0.5`` at ``KL = ln 2``.  For the bundled models (unit-norm
    means, variances close to 1) ``KL`` is close to ``1 - cos(mu_q, mu_d)``, so ``0.5`` sits near
    a cosine of ``0.31``.

    Examples:
        >>> relevance_exp(0.0), round(relevance_exp(-1.0), 4)
        (1.0, 0.3679)
    """
    return math.exp(-_kl(score))


def relevance_inverse(score: float, dim: int | None = None) -> float:
    """Relevance ``1 / (1 + KL)`` in ``(0, 1]``; ``1/2`` at ``KL = 1``.

    It squeezes the usual range of ``KL`` (about 0.8 to 1.2 between unrelated texts with the
    bundled models) into 0.45 to 0.55, so a threshold of 0.5 separates little; kept for
    stores saved with it.

    Examples:
        >>> relevance_inverse(0.0), relevance_inverse(-1.0)
        (1.0, 0.5)
    """
    return 1.0 / (1.0 + _kl(score))


def relevance_exp_per_dim(score: float, dim: int | None = None) -> float:
    """Relevance ``exp(-KL / k)`` in ``(0, 1]``: the KL per dimension.

    Only meaningful when ``KL`` grows with ``k`` (Gaussians whose variances differ per text);
    with the bundled unit-norm models (``KL <= 2`` whatever ``k``) it is close to 1 for every text.

    Examples:
        >>> round(relevance_exp_per_dim(-8.0, dim=8), 4)
        0.3679
    """
    return math.exp(-_kl(score) / max(1, dim or 1))


#: Names of the relevance functions (``relevance=`` of both adapters' vector stores).
RelevanceName = Literal["exp", "inverse", "exp_per_dim"]
#: Named relevance functions: one per :data:`RelevanceName` (tests/test_literal_options.py keeps them in step).
RELEVANCE_FUNCTIONS: dict[RelevanceName, RelevanceFn] = {
    "exp": relevance_exp,
    "inverse": relevance_inverse,
    "exp_per_dim": relevance_exp_per_dim,
}
#: The relevance function used when none is named.
DEFAULT_RELEVANCE: RelevanceName = "exp"


def resolve_relevance(relevance: str | RelevanceFn) -> RelevanceFn:
    """The relevance function for a name in :data:`RELEVANCE_FUNCTIONS` or a callable.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
        TypeError: Neither a str nor a callable.

    Examples:
        >>> resolve_relevance("inverse")(-1.0, None)
        0.5
    """
    if isinstance(relevance, str):
        if relevance not in RELEVANCE_FUNCTIONS:
            names = sorted(RELEVANCE_FUNCTIONS)
            raise ValueError(f"relevance must be one of {names} or a callable f(neg_kl, dim); got {relevance!r}")
        return RELEVANCE_FUNCTIONS[cast(RelevanceName, relevance)]
    if not callable(relevance):
        raise TypeError(f"relevance must be a name or a callable f(neg_kl, dim); got {type(relevance).__name__}")
    return relevance


def mmr_select(
    query_neg_kl: Sequence[float],
    docs: Gaussians,
    k: int,
    lambda_mult: float,
    relevance: RelevanceFn = relevance_exp,
    dim: int | None = None,
) -> list[int]:
    """Maximal marginal relevance with ``-KL`` on both sides; returns positions into the candidates.

    Candidates are picked greedily by ``lambda_mult * rel(Q, D) - (1 - lambda_mult) * max_S rel(D, S)``
    over the already chosen ``S``, where ``rel`` is ``relevance`` applied to ``-KL(Q || D)`` for the
    query and to the symmetrised ``-(KL(D || S) + KL(S || D)) / 2`` between documents (their
    Gaussians, so variances count, not only the means).  The first pick is the most relevant.

    Args:
        query_neg_kl: ``-KL(Q || D)`` of each candidate.
        docs: The candidates' Gaussians, in the same order.
        k: How many to pick (at most the number of candidates).
        lambda_mult: ``1`` = pure relevance, ``0`` = maximal diversity.
        relevance: Relevance function.
        dim: Passed to ``relevance``.

    Raises:
        ValueError: ``lambda_mult`` outside ``[0, 1]``, ``k < 1``, or lengths that differ.

    Examples:
        >>> g = Gaussians([[0.0], [0.1], [3.0]], [[1.0], [1.0], [1.0]])
        >>> mmr_select([0.0, -0.005, -4.5], g, 2, 1.0), mmr_select([0.0, -0.005, -4.5], g, 2, 0.3)
        ([0, 1], [0, 2])
    """
    k = check_k(k)
    lam = float(lambda_mult)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda_mult (mmr_threshold) must be in [0, 1]; got {lambda_mult!r}")
    scores = [float(s) for s in query_neg_kl]
    if len(scores) != len(docs):
        raise ValueError(f"got {len(scores)} scores for {len(docs)} candidate Gaussians")
    if not scores:
        return []
    rel_q = np.array([relevance(s, dim) for s in scores])
    g = docs.numpy().astype(np.float64)
    rel_column = _column_relevance(relevance, dim)

    def redundancy_to(c: int) -> np.ndarray:
        """``rel`` between every candidate and candidate ``c``: one column of the symmetrised matrix."""
        one = g[c : c + 1]
        to_c = np.asarray(neg_kl_matrix(g, one))[:, 0]  # -KL(D_i || D_c)
        from_c = np.asarray(neg_kl_matrix(one, g))[0, :]  # -KL(D_c || D_i)
        return rel_column(0.5 * (to_c + from_c))

    # Redundancy is needed only against the chosen documents: one column per pick (O(k n dim)), not
    # the whole n x n matrix; the running max equals the max over the chosen columns exactly.
    chosen = [int(np.argmax(rel_q))]
    redundancy = redundancy_to(chosen[0])
    while len(chosen) < min(k, len(scores)):
        value = lam * rel_q - (1.0 - lam) * redundancy
        value[chosen] = -np.inf
        chosen.append(int(np.argmax(value)))
        if len(chosen) < min(k, len(scores)):
            redundancy = np.maximum(redundancy, redundancy_to(chosen[-1]))
    return chosen


def present_gaussians(store: Any, ids: Sequence[str]) -> tuple[list[int], Gaussians | None]:
    """The positions of ``ids`` still in ``store`` and their Gaussians (``None`` when none is left).

    MMR reads the candidates' Gaussians after the search that found them; an id that another
    thread deleted in between is dropped instead of raising ``KeyError``.

    Examples:
        >>> from kl_retrievers import KLStore
        >>> s = KLStore(dim=2)
        >>> _ = s.add(gaussians=Gaussians(np.zeros((2, 2)), np.ones((2, 2))), ids=["a", "b"])
        >>> present_gaussians(s, ["a", "gone", "b"])[0]
        [0, 2]
    """
    keep = list(range(len(ids)))
    while keep:
        chosen = [ids[i] for i in keep]
        try:
            return keep, store.get_gaussians(chosen)
        except KeyError:  # deleted between the search and now
            present = {d.id for d in store.get_by_ids(chosen)}
            if len(present) == len(chosen):
                raise
            keep = [i for i in keep if ids[i] in present]
    return [], None


def _kl_array(scores: np.ndarray) -> np.ndarray:
    """:func:`_kl` on an array (the same values, the same error for NaN or ``+inf``)."""
    bad = np.isnan(scores) | (scores == math.inf)
    if bad.any():
        raise ValueError(f"a relevance needs a score (-KL) in [-inf, 0]; got {float(scores[bad][0])!r}")
    return np.maximum(0.0, -scores)


def _column_relevance(relevance: RelevanceFn, dim: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """``relevance`` applied to an array of scores: vectorised for the named functions, element-wise for a callable.

    The named functions give exactly the values of their scalar forms (``math.exp`` is mapped over
    the array rather than ``np.exp``, whose last bit can differ), so MMR picks what it always picked.
    """
    if relevance is relevance_inverse:
        return lambda s: 1.0 / (1.0 + _kl_array(s))
    if relevance is relevance_exp:
        return lambda s: np.fromiter(map(math.exp, (-_kl_array(s)).tolist()), np.float64, s.size)
    if relevance is relevance_exp_per_dim:
        per = max(1, dim or 1)
        return lambda s: np.fromiter(map(math.exp, (-_kl_array(s) / per).tolist()), np.float64, s.size)
    scalar = np.vectorize(lambda v: relevance(float(v), dim), otypes=[np.float64])
    return lambda s: np.asarray(scalar(s), dtype=np.float64)


def store_option_names(store_init: Callable[..., Any], skip: Sequence[str] = ()) -> list[str]:
    """The keyword options of a store constructor (``KLStore.__init__``), less ``self``, ``encoder`` and ``skip``.

    Examples:
        >>> def init(self, encoder=None, dim=None, *, index_type="flat", **rest): ...
        >>> store_option_names(init)
        ['dim', 'index_type']
    """
    params = inspect.signature(store_init).parameters.values()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.kind not in variadic and p.name not in ("self", "encoder", *skip)]


def init_option_names(cls: type[Any]) -> list[str]:
    """The named keyword options of ``cls.__init__`` (less ``self`` and ``*args`` / ``**kwargs``).

    Read from the signature, so a subclass that adds options to its ``__init__`` lists them too.

    Examples:
        >>> class Store:
        ...     def __init__(self, store=None, *, relevance="exp", **store_kwargs): ...
        >>> init_option_names(Store)
        ['store', 'relevance']
    """
    params = inspect.signature(cls.__init__).parameters.values()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.kind not in variadic and p.name != "self"]


def check_store_options(owner: str, options: Mapping[str, Any], own: Sequence[str], passed: Sequence[str]) -> None:
    """Refuse the keywords that are neither options of ``owner`` nor store options it passes on.

    Args:
        owner: The class named in the error (``type(self).__name__``, so a subclass is named right).
        options: The keywords that would go to the store constructor.
        own: ``owner``'s own keyword options (:func:`init_option_names`).
        passed: The store constructor's options ``owner`` passes on (:func:`store_option_names`).

    Raises:
        TypeError: Unknown keywords: the message names every one, the closest known option of each (where one
            is close) and every option.

    Examples:
        >>> check_store_options("KLVectorStore", {"index_typ": "hnsw", "bogus": 1}, ["relevance"], ["index_type"])
        Traceback (most recent call last):
        ...
        TypeError: KLVectorStore() got unexpected keyword argument(s) ['bogus', 'index_typ'] (index_typ: did you \
mean 'index_type'?); it takes ['relevance'] and the KLStore options it passes on: ['index_type']
    """
    refuse_unknown_keywords(
        owner,
        [name for name in options if name not in passed],
        [*own, *passed],
        takes=f"{list(own)} and the KLStore options it passes on: {list(passed)}",
    )


def refuse_unknown_keywords(
    owner: str,
    unknown: Iterable[str],
    known: Sequence[str],
    hints: Mapping[str, str] | None = None,
    *,
    takes: str | None = None,
) -> None:
    """Raise a ``TypeError`` for the keywords ``owner``'s constructor does not take (nothing when there are none).

    Args:
        owner: The class named in the error (``type(self).__name__``, so a subclass is named right).
        unknown: The keywords it does not take.
        known: Every keyword it takes (:func:`init_option_names`), searched for the closest to each unknown one.
        hints: What to do instead of some keywords (said instead of the closest known keyword).
        takes: How the message lists what it takes (default: ``known``).

    Raises:
        TypeError: The message names every unknown keyword, what to do instead or its closest known one (where
            one is close), and every keyword taken.

    Examples:
        >>> refuse_unknown_keywords("KLRetriever", ["fliters", "bogus"], ["encoder", "filters"])
        Traceback (most recent call last):
        ...
        TypeError: KLRetriever() got unexpected keyword argument(s) ['bogus', 'fliters'] (fliters: did you mean \
'filters'?); it takes ['encoder', 'filters']
    """
    names = sorted(unknown)
    if not names:
        return
    hints = hints or {}
    why = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        if name in hints:
            why.append(f"{name}: {hints[name]}")
        elif close:
            why.append(f"{name}: did you mean {close[0]!r}?")
    said = f" ({'; '.join(why)})" if why else ""
    raise TypeError(f"{owner}() got unexpected keyword argument(s) {names}{said}; it takes {takes or list(known)}")


def warn_incompatible_store(embedding: str, store: str, reason: str, fix: str, *, stacklevel: int = 3) -> None:
    """Warn that ``q~`` / ``d~`` vectors went into a store that does not rank by the raw inner product.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     warn_incompatible_store("KLEmbedding", "SimpleVectorStore", "cosine", "use KLVectorStore")
        >>> "exact only for a raw inner product" in str(seen[0].message)
        True
    """
    warnings.warn(
        f"{embedding} used with {store} ({reason}): the -KL rewrite is exact only for a raw inner product; "
        f"cosine, L2 or normalised stores return wrong rankings. {fix}",
        UserWarning,
        stacklevel=stacklevel,
    )


def loads_anywhere(name: str) -> bool:
    """Whether ``load_model(name)`` loads ``name`` in any process: a bundled model's name (also
    ``kl_retrievers:NAME``) or an existing absolute folder; not a relative folder, a hub id or a label.

    Examples:
        >>> loads_anywhere("minilm-gauss-soup"), loads_anywhere("kl_retrievers:minilm-gauss-soup")
        (True, True)
        >>> loads_anywhere("relative/folder"), loads_anywhere("GaussianEncoder")
        (False, False)
    """
    from kl_retrievers.hub import bundled_name

    return bundled_name(name) is not None or (os.path.isabs(name) and Path(name).is_dir())


def encoder_backend(encoder: Any) -> str | None:
    """``"onnx"`` or ``"torch"`` for the package's two encoder classes, else ``None`` (imports nothing).

    Examples:
        >>> encoder_backend(object()) is None
        True
    """
    for module, name, backend in (
        ("kl_retrievers.onnx", "OnnxGaussianEncoder", "onnx"),
        ("kl_retrievers.encoder", "GaussianEncoder", "torch"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(encoder, cls):
            return backend
    return None


def is_onnx_export(name: str) -> bool:
    """Whether ``name`` is a folder holding an ONNX export (``model.onnx``), which the torch backend cannot load."""
    return bool(name) and (Path(name) / "model.onnx").is_file()


def backend_refusal(encoder: Any, backend: str, call: str) -> str | None:
    """Why ``backend`` cannot apply to the loaded ``encoder``, or ``None`` when it is the encoder's own backend.

    The one backend rule of both adapters' embeddings given a model object (LangChain's ``KLEmbeddings``,
    LlamaIndex's ``KLEmbedding``): a matching backend is harmless; another one (or any backend for an
    encoder class that has none) is refused. The message names both backends and the call that loads
    the model on ``backend``, only when that call loads it: a bundled model's name or an existing
    absolute folder (:func:`loads_anywhere`), never an ONNX export's folder on the torch backend
    (:class:`~kl_retrievers.pretrained.OnnxExportOnTorchError`; the model it was exported from is
    named instead).

    Args:
        encoder: The loaded encoder.
        backend: The backend asked for (``"onnx"`` or ``"torch"``).
        call: The loading call to suggest, with ``{name}`` and ``{backend}`` placeholders (both filled
            with ``repr``), e.g. ``"KLEmbeddings(model_name={name}, backend={backend})"``.

    Examples:
        >>> backend_refusal(object(), "onnx", "KLEmbedding({name}, backend={backend})")[:60]
        "backend='onnx' applies to a model loaded here by name or fol"
    """
    own = encoder_backend(encoder)
    if own == backend:
        return None
    head = (
        f"backend={backend!r} applies to a model loaded here by name or folder, but encoder is an already loaded "
        f"{type(encoder).__name__}"
    )
    if own is None:
        return (
            f"{head}, which has no backend (only the package's GaussianEncoder, 'torch', and OnnxGaussianEncoder, "
            "'onnx', have one): leave backend out"
        )
    name, note = str(getattr(encoder, "name_or_path", "") or ""), ""
    if backend == "torch" and is_onnx_export(name):  # the folder runs on ONNX Runtime only: its source model
        meta = getattr(encoder, "meta", None)
        source = meta.get("source") if isinstance(meta, dict) else None
        exported_from = source.get("name_or_path") if isinstance(source, dict) else None
        note = f" ({name} is an ONNX export, which runs on ONNX Runtime only"
        note += f"; it was exported from {exported_from!r})" if isinstance(exported_from, str) else ")"
        name = exported_from if isinstance(exported_from, str) else ""
    if name and loads_anywhere(name) and not (backend == "torch" and is_onnx_export(name)):
        load = call.format(name=repr(name), backend=repr(backend))
    else:
        load = call.format(name="...", backend=repr(backend)) + " with the name or folder of a model saved on disk"
    return (
        f"{head}, which runs on the {own!r} backend: leave backend out (or pass backend={own!r}), or load the "
        f"model on the {backend!r} backend: {load}{note}"
    )


def write_manifest(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write a JSON manifest atomically (sorted keys, the library version added).

    Examples:
        >>> import tempfile
        >>> p = write_manifest(Path(tempfile.mkdtemp()) / "m.json", {"format": "x", "format_version": 1})
        >>> read_manifest(p, format_name="x", format_version=1, what="x")["format"]
        'x'
    """
    target = Path(path)
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps({"library_version": library_version(), **manifest}, indent=2, sort_keys=True))
    return target


#: The subfolder a store is saved into inside the temporary copy before its files move up (``save`` makes its folder).
_STAGED_STORE = "klstore-staged"


def save_store_with_manifest(
    store: Any,
    folder: Path,
    manifest_name: str,
    manifest: Mapping[str, Any],
    *,
    extra: Callable[[Path], object] | None = None,
) -> None:
    """Swap in ``folder`` at once, holding ``store``'s saved files and a copy of ``manifest`` (``manifest_name``).

    The adapters' saves (LangChain ``save_local``, LlamaIndex ``persist``) write their store folder this way,
    so that a load reads the store and the settings of one save together. ``extra(tmp)`` writes more files
    into the copy before the manifest (LlamaIndex's calibrator).
    """
    with atomic_dir(folder) as tmp:
        store.save(tmp / _STAGED_STORE)
        for entry in (tmp / _STAGED_STORE).iterdir():
            entry.rename(tmp / entry.name)
        (tmp / _STAGED_STORE).rmdir()
        if extra is not None:
            extra(tmp)
        write_manifest(tmp / manifest_name, manifest)


def looks_like_manifest(path: str | os.PathLike[str], format_name: str) -> bool:
    """Whether ``path`` is a small JSON file whose ``format`` is ``format_name`` (never raises)."""
    try:
        if os.path.getsize(path) > _MANIFEST_MAX_BYTES:
            return False
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == format_name


def manifests_in_folder(folder: str | os.PathLike[str], format_name: str) -> list[Path]:
    """The files directly in ``folder`` that are manifests of ``format_name``, whatever their names, sorted.

    The one rule of ``KLVectorStore.from_persist_path(folder)`` and ``kl-retrievers search FOLDER``
    (:func:`looks_like_manifest`): a manifest is found by its content, so any name ``persist`` was given.
    """
    return [p for p in sorted(Path(folder).iterdir()) if p.is_file() and looks_like_manifest(p, format_name)]


def read_manifest(
    path: str | os.PathLike[str],
    *,
    format_name: str,
    format_version: int,
    what: str,
    error: type[ValueError] = ValueError,
) -> dict[str, Any]:
    """Read a manifest written by :func:`write_manifest`, checking its format and version.

    Args:
        path: The JSON file.
        format_name: The expected ``format``.
        format_version: The ``format_version`` this code reads.
        what: How to name the object in messages (e.g. ``"KLVectorStore"``).
        error: The ``ValueError`` subclass to raise.

    Raises:
        FileNotFoundError: No such file.
        ValueError: (``error``) not JSON, another format, another format version, or another score
            (``score_name`` / ``score_direction``, when recorded, other than ``neg_kl`` / ``higher_is_better``).
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{p} is not a {what} manifest: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise error(f"{p} is not a {what} manifest (format {format_name!r})")
    if data.get("format_version") != format_version:
        raise error(
            f"{p} has {what} format_version {data.get('format_version')!r} (written by kl-retrievers "
            f"{data.get('library_version')!r}); this version ({library_version()}) reads "
            f"format_version {format_version}"
        )
    check_score_fields(data, p, error=error)  # score_name / score_direction, when recorded (0.1.0 wrote no direction)
    return data


# --------------------------------------------------------------------------- q~ query vectors given by the caller
#: Unit roundoff of the floating-point types a q~ vector may come in below float64 (numpy or torch dtype names).
_LOW_PRECISION = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
#: Unit roundoff of float64, in which a q~ keeps var + mu^2 at best.
_FLOAT64_UNIT = 2.0**-53
#: A q~ warns when a decoded query variance may be off by more than this (relative).
QUERY_VAR_RTOL = 1e-3


class _Precision(NamedTuple):
    """How a vector came in below float64: ``how`` (for a message), its unit roundoff, whether a dtype said so."""

    how: str
    unit: float
    from_dtype: bool


def _dtype_names(raw: Any) -> list[str]:
    """The dtype names of the caller's array or tensor, or of the rows of a list of them; ``[]`` for plain numbers."""
    rows = [raw] if hasattr(raw, "dtype") else list(raw) if isinstance(raw, (list, tuple)) else []
    return [str(row.dtype).removeprefix("torch.") for row in rows if hasattr(row, "dtype")]


def _low_precision(raw: Any, q: np.ndarray) -> _Precision | None:
    """How vectors came in when they are below float64, else ``None``.

    A numpy array or torch tensor (or a list of them, one per row) names its dtype: float32, float16 and
    bfloat16 are below float64; float64, longdouble and integers are not, whatever their values. Plain numbers
    (a list) carry none: they count as float32 when every one of them is a float32 number, as a float32 vector
    turned into a list is (a float64 ``q~`` from ``var + mu^2`` is almost never one, coordinate by coordinate).
    """
    names = _dtype_names(raw)
    low = [name for name in names if name in _LOW_PRECISION]
    if low:
        worst = max(low, key=_LOW_PRECISION.__getitem__)
        return _Precision(f"as a {worst} array", _LOW_PRECISION[worst], True)
    if names:
        return None
    with np.errstate(over="ignore"):
        if np.array_equal(q.astype(np.float32).astype(np.float64), q):
            how = "as float32 numbers (every value is a float32 number, as a float32 vector's are)"
            return _Precision(how, 2.0**-24, False)
    return None


def _decoded_variances(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(var + mu^2, mu, var)`` of q~ rows ``q``: ``var = q~[1:k+1] - mu^2``, as the decoders compute it."""
    k = (q.shape[1] - 1) // 2
    second, mean = q[:, 1 : k + 1], q[:, k + 1 :]
    return second, mean, second - mean**2


def _float64_floor(second: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The smallest variance float64 keeps to :data:`QUERY_VAR_RTOL` beside ``mu^2``, per coordinate."""
    return _FLOAT64_UNIT * (np.abs(second) + 2 * mean**2) / QUERY_VAR_RTOL


def _lost_in_float64(second: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Where float64 itself loses a decoded variance: below :func:`_float64_floor`, or at most its round-off below 0.

    ``var + mu^2`` rounded to float64 is off by up to ``u (|var + mu^2| + 2 mu^2)`` (``u = 2^-53``): a variance
    of that size or below is lost to cancellation against ``mu^2`` whatever the caller's precision.
    """
    floor = _float64_floor(second, mean)
    return (var >= -4 * QUERY_VAR_RTOL * floor) & (var < floor)


def _cancellation(second: np.ndarray, mean: np.ndarray, row: int, col: int) -> str:
    """Why a variance at ``(row, col)`` is lost in float64 too, and what to do (a sentence)."""
    floor = float(_float64_floor(second[row, col], mean[row, col]))
    return (
        f"var + mu^2 keeps no variance below about {floor:.2g} beside mu^2 at |mu| {abs(float(mean[row, col])):.3g} "
        "(float64's 16 significant digits): the variance is lost to cancellation against mu^2 at this magnitude, "
        "in float64 too. Centre the means (subtract one vector, e.g. the documents' mean, from every query and "
        "document mean: -KL does not change; the stores centre their index so, see "
        "kl_retrievers.gaussian.means_centre) or pass the query Gaussians"
    )


def query_precision_hint(raw: Any, q: np.ndarray) -> str:
    """For a refusal of a q~ whose variance decodes to ``<= 0``: why, when precision explains it (``""`` if not).

    The caller's float32 (float16, bfloat16) array, or numbers that are all float32 numbers, name that
    precision; a variance that float64 itself cannot keep beside ``mu^2`` names the cancellation, and what to do.

    Args:
        raw: The vector(s) as the caller passed them (a list, a numpy array, a tensor).
        q: The same as a float64 array of shape ``(n, 2k + 1)``.
    """
    found = _low_precision(raw, q)
    second, mean, var = _decoded_variances(q)
    bad = np.argwhere((var <= 0) & _lost_in_float64(second, mean, var))
    cancel = "" if not bad.size or (found is not None and found.from_dtype) else _cancellation(second, mean, *bad[0])
    if found is None:
        return f"; {cancel}" if cancel else ""
    hint = (
        f"; it came {found.how}, which keeps var + mu^2 to about {-math.log10(found.unit):.0f} significant digits: "
        "pass the q~ in float64 (KLEmbeddings.embed_query and KLEmbedding.get_query_embedding return float64 "
        "numbers) or the query Gaussians"
    )
    return f"{hint}. If it was float64 already: {cancel}" if cancel else hint


def warn_unreliable_query_variance(raw: Any, q: np.ndarray, call: str, used: np.ndarray | None = None) -> None:
    """Warn when a query variance decoded from a q~ is unreliable: the q~ came below float64, or cancels in float64.

    ``var = q~[1:k+1] - mu^2`` subtracts two numbers of the size of ``mu^2``: the result is exact up to the
    round-off of ``var + mu^2``, a relative error of about ``u * (|var + mu^2| + 2 mu^2) / var`` with ``u`` the
    unit roundoff of the q~'s type. float32 loses ``var`` where it is small beside ``mu^2`` (``|mu|`` 98, ``var``
    2.6e-4: half of it); float64 keeps it unless it is far smaller (``|mu|`` 1e4, ``var`` 1e-10: all of it, lost
    to cancellation in float64 itself). Such a vector warns (a ``UserWarning`` at the caller's line, so once per
    line under Python's default filter) when that bound exceeds :data:`QUERY_VAR_RTOL`, or a variance decodes
    to ``<= 0``, naming the cause: the caller's precision (float32 only when the array was float32, or when
    plain numbers all are float32 numbers) and what to pass instead, or the cancellation and how to avoid it
    (centre the means). It is not refused: a float32 ``q~`` is what ``kl_query_vectors`` gives for float32
    Gaussians, and where ``var`` is not small beside ``mu^2`` it decodes within float32's precision.

    Args:
        raw: The vector(s) as the caller passed them (a list, a numpy array, a tensor).
        q: The same as a float64 array of shape ``(n, 2k + 1)``.
        call: The call named in the warning (``"similarity_search_by_vector"``).
        used: The variances the caller scores with, shaped as the decoded ones (a decoder that raises them to a
            floor passes the raised values, which the warning then names); ``None``: the decoded ones.
    """
    found = _low_precision(raw, q)
    second, mean, var = _decoded_variances(q)
    positive = var > 0
    bound = np.full(var.shape, np.inf)
    unit = _FLOAT64_UNIT if found is None else found.unit
    bound[positive] = unit * (np.abs(second[positive]) + 2 * mean[positive] ** 2) / var[positive]
    lost64 = _lost_in_float64(second, mean, var)
    if found is None:  # float64: only the variances float64 loses (a vector slightly off elsewhere decodes floored)
        bound[~lost64] = 0.0
    row, col = (int(i) for i in np.unravel_index(int(np.argmax(bound)), bound.shape))
    rel = float(bound[row, col])
    if rel <= QUERY_VAR_RTOL:
        return
    if not positive[row, col]:
        off = "more than its own value (it decodes to a variance <= 0, raised to a tiny floor)"
    elif rel >= 1:
        off = f"more than its own value, up to {rel:.3g} times it"
    else:
        off = f"up to {rel:.1%} of its value"
    at = f"coordinate {col}" + (f" of row {row}" if len(q) > 1 else "")
    value = var[row, col] if used is None else used[row, col]
    decoded = f"var {var[row, col]:.3g}" + (f", raised to the floor {value:.3g}" if value != var[row, col] else "")
    facts = f"({at}: mu {mean[row, col]:.4g}, {decoded}); the -KL scores use {value:.3g}"
    if found is None:
        warn(
            f"{call}: a query variance decoded from the q~ query vector (var = q~[1:k+1] - mu^2) may be off by "
            f"{off} {facts}. {_cancellation(second, mean, row, col)}"
        )
        return
    also = f" If it was float64 already: {_cancellation(second, mean, row, col)}" if not found.from_dtype else ""
    warn(
        f"{call}: the q~ query vector came {found.how}, which keeps var + mu^2 to about "
        f"{-math.log10(found.unit):.0f} significant digits, so a query variance decoded from it (var = q~[1:k+1] - "
        f"mu^2) may be off by {off} {facts}. Pass the q~ in float64 (KLEmbeddings.embed_query and "
        "KLEmbedding.get_query_embedding return float64 numbers; numpy: compute it from float64 Gaussians, a "
        "float32 vector cast up keeps its rounding), or the query Gaussians." + (also if lost64[row, col] else "")
    )


def document_precision_hint(raw: Any, d: np.ndarray) -> str:
    """For a refusal of ``d~`` vectors: a sentence naming the precision they came in below float32 (``""`` if not).

    float16 and bfloat16 keep 3 and 2 significant digits, too few for a ``d~``'s first coordinate to match the
    Gaussian its other coordinates give (float32 ones match within the checks' tolerance). An array or tensor
    names its dtype; plain numbers (a LlamaIndex node's embedding is a list of floats) count as float16 or
    bfloat16 when every one of them is such a number, as the values of such a vector are.

    Args:
        raw: The vector(s) as the caller passed them (a list of arrays or of numbers, an array, a tensor).
        d: The same as a float64 array of shape ``(n, 2k + 1)``.
    """
    names = _dtype_names(raw)
    low = [name for name in names if _LOW_PRECISION.get(name, 0.0) > _LOW_PRECISION["float32"]]
    if low:
        worst = max(low, key=_LOW_PRECISION.__getitem__)
        how = f"as {worst} arrays"
    elif names:
        return ""
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            single = d.astype(np.float32)
            if np.array_equal(d.astype(np.float16).astype(np.float64), d):
                worst = "float16"
            elif np.array_equal(single, d) and not (single.view(np.uint32) & 0xFFFF).any():
                worst = "bfloat16"
            else:
                return ""
        how = f"as {worst} numbers (every value is a {worst} number, as a {worst} vector's are)"
    return (
        f"; they came {how}, which keep about {-math.log10(_LOW_PRECISION[worst]):.0f} significant digits: "
        f"{worst} lost the precision a document vector needs; pass them in float32 or float64 "
        "(KLEmbeddings.embed_documents and KLEmbedding.get_text_embedding return float64 numbers)"
    )


class FirstValueMismatch(NamedTuple):
    """The first ``d~`` row whose first value is not its Gaussian's (:func:`first_value_mismatch`)."""

    row: int  #: Its position.
    mismatched: int  #: How many rows mismatch.
    expected: float  #: The first value its Gaussian gives.


def first_value_mismatch(vectors: np.ndarray, gaussians: Gaussians) -> FirstValueMismatch | None:
    """The first row of ``vectors`` whose first value is not the one the Gaussian behind it gives, else ``None``.

    The check of both adapters' document vectors:
    :func:`~kl_retrievers.gaussian.first_coordinate_mismatches` (its tolerance; a NaN mismatches); each adapter
    words its own refusal.

    Args:
        vectors: The float64 ``d~`` rows, shape ``(n, 2k + 1)``.
        gaussians: The Gaussians recovered from their coordinates ``1..2k``.

    Examples:
        >>> from kl_retrievers.gaussian import document_gaussians_from_vectors, kl_document_vectors
        >>> d = kl_document_vectors(Gaussians(np.array([[2.0], [1.0]]), np.array([[1.0], [1.0]])))
        >>> first_value_mismatch(d, document_gaussians_from_vectors(d)) is None
        True
        >>> d[1, 0] = 5.0
        >>> first_value_mismatch(d, document_gaussians_from_vectors(d))
        FirstValueMismatch(row=1, mismatched=1, expected=-0.5)
    """
    bad, first = first_coordinate_mismatches(vectors, gaussians)
    if not bad.size:
        return None
    row = int(bad[0])
    return FirstValueMismatch(row, int(bad.size), float(first[row]))


# --------------------------------------------------------------------------- cancellable async writes
async def cancellable_write(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` (a sync write) in a worker thread; a cancelled caller leaves it undone if it can.

    A worker thread cannot be stopped: without this a cancelled or timed-out ``aadd_*`` would still write its
    documents later, possibly over a newer write of the same ids. Here a cancellation (``asyncio.wait_for``'s
    timeout too) sets a flag that the write reads (:func:`write_cancelled`) after encoding, before it takes the
    store's write lock, and again once it holds it (:func:`store_write_unless_cancelled`): from then on it
    writes nothing, as LangChain's ``InMemoryVectorStore`` does, also when it waited for the lock behind another
    write or a save. A write already holding the lock completes, possibly after the cancelled caller has returned.
    """
    cancelled = threading.Event()
    token = _WRITE_CANCELLED.set(cancelled)  # asyncio.to_thread copies this context into the worker thread
    try:
        with at_callers_line():  # a blank-document warning of the write points at the caller's line
            return await asyncio.to_thread(fn, *args, **kwargs)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    finally:
        _WRITE_CANCELLED.reset(token)


def write_cancelled(what: str) -> bool:
    """Whether the async call running this write (``what``, for the log) was cancelled: then write nothing.

    Always ``False`` outside :func:`cancellable_write` (a sync call).
    """
    flag = _WRITE_CANCELLED.get()
    if flag is None or not flag.is_set():
        return False
    logger.debug("%s: the async call was cancelled before the write; nothing written", what)
    return True


class WriteGate:
    """Whether an async write goes ahead: what :func:`store_write_unless_cancelled` yields.

    :attr:`go` is ``False`` once the write is known to write nothing: its caller was cancelled before the store's
    write lock, or the store's write, asked once it held the lock (:meth:`__call__`), found it cancelled. The first
    answer the store gets holds for the rest of the block (a write nested in it, e.g. a ``KLHybridStore``'s in its
    ``KLStore`` half, goes ahead with the outer one).
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._answer: bool | None = None  # the store's, under its write lock
        self.go = not write_cancelled(what)

    def __call__(self) -> bool:
        """The store's question, under its write lock: whether to write (``False``: cancelled; asked once)."""
        if self._answer is None:
            self._answer = self.go and not write_cancelled(self._what)
            self.go = self._answer
        return self._answer


@contextmanager
def store_write_unless_cancelled(what: str) -> Iterator[WriteGate]:
    """Around a store's write in an async write: a :class:`WriteGate`, asked again once the store holds its write lock.

    Inside a :func:`cancellable_write`, every write of a ``KLStore``, ``KLHybridStore`` or ``MilvusKLStore`` in the
    ``with`` block asks the gate (through :data:`kl_retrievers.store.faiss._WRITE_PROCEEDS`) right after it takes
    its write lock, before it changes anything: a call cancelled before the lock or while it waited for it (behind
    a search, another write or a save) writes nothing, and ``gate.go`` is then ``False`` after the block. The lock
    is not held here: what a write does before it (a filtered delete judging its filter under the read lock, an
    add's metadata and float32 conversions) runs while searches go on. The block writes only when ``gate.go``;
    outside an async write (a sync call) ``gate.go`` is ``True`` and no store asks.

    Examples:
        >>> with store_write_unless_cancelled("add") as gate:  # a sync call
        ...     gate.go
        True
    """
    from kl_retrievers.store.faiss import _WRITE_PROCEEDS

    gate = WriteGate(what)
    if not gate.go or _WRITE_CANCELLED.get() is None:
        yield gate
        return
    token = _WRITE_PROCEEDS.set(gate)
    try:
        yield gate
    finally:
        _WRITE_PROCEEDS.reset(token)


def check_write_ids(ids: Sequence[str] | None) -> list[str] | None:
    """``ids`` of a write as a list, checked as the stores' ``add`` checks them before it encodes; ``None`` stays.

    An id that is not a ``str``, a lone surrogate in an id (it could not be saved as UTF-8), a repeated id, a set
    or a dict's ``items()`` view: the store's error, with its message. The async writes call it on the caller's
    thread, before the worker thread encodes anything: a bad id fails at once, not after the encoding.

    Examples:
        >>> check_write_ids(["a", "a"])
        Traceback (most recent call last):
        ValueError: ids must be unique within one add call; 'a' is at positions 0 and 1
    """
    from kl_retrievers.store._base import _check_texts_and_ids

    if type(ids) is list and set(map(type, ids)) <= {str} and len(set(ids)) == len(ids):
        try:  # the common case, on an event loop's thread: a few C loops (the checks one by one take 10 times as long)
            "".join(ids).encode("utf-8")  # a lone surrogate fails to encode, paired with another or not
            return list(ids)
        except UnicodeEncodeError:
            pass  # the checks below name it
    return None if ids is None else _check_texts_and_ids(None, None, ids)[1]


def encode_for_write(
    store: Any, texts: Sequence[str], metadatas: Any, ids: Sequence[str] | None = None
) -> Gaussians | None:
    """In a cancellable async write, ``texts`` encoded as ``store.add(texts)`` would encode them; else ``None``.

    Encoding first lets the write check :func:`write_cancelled` after the encoding, the long part, before the
    store takes its write lock (``store.add(texts, gaussians=...)`` then encodes nothing). ``None`` (the store
    encodes, as always): outside a cancellable write, with no text, with a store that has no encoder or batch
    size, or when the call was cancelled already. What ``store.add`` checks before it encodes is checked first,
    with the same errors: the texts, ``ids`` (types, lone surrogates, repeats, their number) and ``metadatas``;
    a bad id never waits for the encoding.
    """
    if _WRITE_CANCELLED.get() is None or not texts:
        return None
    half = getattr(store, "kl", store)  # a KLHybridStore encodes at its KL half's settings
    batch_size = getattr(half, "batch_size", None)
    encoder = getattr(store, "encoder", None)  # a KLHybridStore's loads the model it was saved with
    if encoder is None or not isinstance(batch_size, int) or write_cancelled("encoding"):
        return None
    from kl_retrievers.store._base import _check_texts_and_ids, _metadata_list

    _check_texts_and_ids(texts, None, ids)
    _metadata_list(metadatas, len(texts))
    show = bool(getattr(half, "show_progress_bar", False))
    encoded: Gaussians = encoder.encode_documents(list(texts), batch_size=batch_size, show_progress_bar=show)
    return encoded
