"""Training Gaussian encoders (and their dot / cosine twins).

Submodules: :mod:`~kl_retrievers.training.data` (BEIR / JSONL data, negative mining),
:mod:`~kl_retrievers.training.losses` (scores and losses), :mod:`~kl_retrievers.training.teacher`
(int8 cross-encoder teacher), :mod:`~kl_retrievers.training.features` (cached-features fast
path), :mod:`~kl_retrievers.training.trainer` (loops) and :mod:`~kl_retrievers.training.cli`.

The public names below are imported on first access (PEP 562), so that importing
:mod:`kl_retrievers.training.cli` (which ``kl-retrievers --help`` does, to list ``train``) needs no torch;
the names that need it, and the submodules read as attributes (``training.trainer``, ``from
kl_retrievers.training import losses``), raise ``ModuleNotFoundError`` naming the ``[train]`` extra when it
is not installed, as does ``import kl_retrievers.training.trainer``.

Examples:
    >>> from kl_retrievers.training import TrainConfig
    >>> TrainConfig(steps=10).similarity
    'neg_kl'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from kl_retrievers.training.data import (
        TrainExample,
        TrainingSet,
        from_beir,
        load_training_data,
        mine_bm25_negatives,
        mine_negatives_from_scores,
        read_jsonl,
    )
    from kl_retrievers.training.features import Features, compute_features, heads_forward
    from kl_retrievers.training.losses import (
        contrastive_loss,
        lambdarank_loss,
        listwise_kl_loss,
        margin_mse_loss,
        score_candidates,
        score_matrix,
    )
    from kl_retrievers.training.trainer import (
        RetrievalEvaluator,
        TrainConfig,
        TrainingDivergedError,
        TrainResult,
        apply_freezing,
        encode_from_features,
        evaluator_description,
        merge_lora,
        record_training,
        retrieval_evaluator,
        train_encoder,
        train_heads_cached,
    )

#: Each public name and the submodule that defines it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "TrainExample",
            "TrainingSet",
            "from_beir",
            "load_training_data",
            "mine_bm25_negatives",
            "mine_negatives_from_scores",
            "read_jsonl",
        ),
        "kl_retrievers.training.data",
    ),
    **dict.fromkeys(("Features", "compute_features", "heads_forward"), "kl_retrievers.training.features"),
    **dict.fromkeys(
        (
            "contrastive_loss",
            "lambdarank_loss",
            "listwise_kl_loss",
            "margin_mse_loss",
            "score_candidates",
            "score_matrix",
        ),
        "kl_retrievers.training.losses",
    ),
    **dict.fromkeys(
        (
            "RetrievalEvaluator",
            "TrainConfig",
            "TrainingDivergedError",
            "TrainResult",
            "apply_freezing",
            "encode_from_features",
            "evaluator_description",
            "merge_lora",
            "record_training",
            "retrieval_evaluator",
            "train_encoder",
            "train_heads_cached",
        ),
        "kl_retrievers.training.trainer",
    ),
}
_SUBMODULES = ("cli", "data", "features", "losses", "teacher", "trainer")

__all__ = [
    "Features",
    "RetrievalEvaluator",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingSet",
    "apply_freezing",
    "compute_features",
    "contrastive_loss",
    "encode_from_features",
    "evaluator_description",
    "from_beir",
    "heads_forward",
    "lambdarank_loss",
    "listwise_kl_loss",
    "load_training_data",
    "margin_mse_loss",
    "merge_lora",
    "mine_bm25_negatives",
    "mine_negatives_from_scores",
    "read_jsonl",
    "record_training",
    "retrieval_evaluator",
    "score_candidates",
    "score_matrix",
    "train_encoder",
    "train_heads_cached",
]


def _extra_error(exc: ModuleNotFoundError, what: str) -> ModuleNotFoundError | None:
    """The error naming the ``[train]`` extra for ``exc``, a dependency of ``what`` that is not installed.

    ``None`` when the module ``exc`` names is installed (something inside it is missing: ``exc`` says what)
    or ``exc`` names none. Raise the result ``from exc``, as :func:`_import_submodule` and the import of
    :mod:`kl_retrievers.training.trainer` itself do.

    Examples:
        >>> missing = ModuleNotFoundError("No module named 'no_such_module_here'", name="no_such_module_here")
        >>> print(_extra_error(missing, "kl_retrievers.training.trainer"))  # doctest: +ELLIPSIS
        kl_retrievers.training.trainer needs no_such_module_here, ...: pip install "kl-retrievers[train]"
        >>> _extra_error(ModuleNotFoundError("No module named 'numpy.x'", name="numpy.x"), "x") is None
        True
    """
    from kl_retrievers.training.data import require_train_extra

    if not exc.name:
        return None
    try:
        require_train_extra(what, exc.name.partition(".")[0])
    except ModuleNotFoundError as named:
        return named
    return None


def _import_submodule(module: str, what: str) -> Any:
    """``importlib.import_module(module)``; a missing torch, transformers, ... raises naming the extra.

    The ``ModuleNotFoundError`` names the ``[train]`` extra, as the other torch features do, and is chained
    (``from``) to the original error. A module missing inside the submodule itself (not a dependency that
    is not installed) raises the original error, which says what.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        named = _extra_error(exc, what)
        if named is None:
            raise  # the module is there (something inside it is missing): the original error says what
        raise named from exc


if not TYPE_CHECKING:  # type checkers see the names imported above, and flag any other (a typo) as an error

    def __getattr__(name: str) -> Any:
        """Import a public name's submodule on first access (PEP 562) and cache the name here."""
        module = _LAZY.get(name)
        if module is None:
            if name in _SUBMODULES:  # e.g. kl_retrievers.training.losses, which the eager version bound here
                return _import_submodule(f"{__name__}.{name}", f"{__name__}.{name}")
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(_import_submodule(module, f"{__name__}.{name}"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
