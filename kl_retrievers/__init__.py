"""kl-retrievers: dense retrieval with Gaussian representations scored by -KL divergence.

Every query and document is a diagonal Gaussian; the score is ``-KL(Q || D)`` (higher is
better), served exactly by any inner-product engine through a ``2k + 1``-dimensional rewrite.

The public names below are loaded lazily, on first use: ``import kl_retrievers`` imports
neither torch nor faiss (the torch encoder and the FAISS store load them when they are used).

Examples:
    >>> import kl_retrievers
    >>> kl_retrievers.SCORE_NAME, kl_retrievers.SCORE_DIRECTION
    ('neg_kl', 'higher_is_better')
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from kl_retrievers._io import library_version

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from kl_retrievers._io import load_gaussians, save_gaussians
    from kl_retrievers.encoder import GaussianEncoder, GaussianEncoderConfig, NotAnEncoderError
    from kl_retrievers.gaussian import (
        SCORE_DIRECTION,
        SCORE_NAME,
        Gaussians,
        kl_document_vectors,
        kl_query_constant,
        kl_query_vectors,
        neg_kl,
        neg_kl_matrix,
    )
    from kl_retrievers.hub import ModelNotFoundError, resolve_model_path
    from kl_retrievers.index import DeleteReport, KLStore, SearchResult, StoredDocument, StoreFormatError
    from kl_retrievers.pretrained import bundled_models, load_default_model, load_model

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = library_version()

#: Each lazily loaded public name and the module that defines it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("load_gaussians", "save_gaussians"), "kl_retrievers._io"),
    **dict.fromkeys(("GaussianEncoder", "GaussianEncoderConfig", "NotAnEncoderError"), "kl_retrievers.encoder"),
    **dict.fromkeys(
        (
            "SCORE_DIRECTION",
            "SCORE_NAME",
            "Gaussians",
            "kl_document_vectors",
            "kl_query_constant",
            "kl_query_vectors",
            "neg_kl",
            "neg_kl_matrix",
        ),
        "kl_retrievers.gaussian",
    ),
    **dict.fromkeys(("ModelNotFoundError", "resolve_model_path"), "kl_retrievers.hub"),
    **dict.fromkeys(
        ("DeleteReport", "KLStore", "SearchResult", "StoredDocument", "StoreFormatError"), "kl_retrievers.index"
    ),
    **dict.fromkeys(("bundled_models", "load_default_model", "load_model"), "kl_retrievers.pretrained"),
}

__all__ = [
    "SCORE_DIRECTION",
    "SCORE_NAME",
    "DeleteReport",
    "GaussianEncoder",
    "GaussianEncoderConfig",
    "Gaussians",
    "KLStore",
    "ModelNotFoundError",
    "NotAnEncoderError",
    "SearchResult",
    "StoreFormatError",
    "StoredDocument",
    "__version__",
    "bundled_models",
    "kl_document_vectors",
    "kl_query_constant",
    "kl_query_vectors",
    "load_default_model",
    "load_gaussians",
    "load_model",
    "neg_kl",
    "neg_kl_matrix",
    "resolve_model_path",
    "save_gaussians",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562) and cache the name here."""
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")  # a submodule, e.g. kl_retrievers.onnx
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
