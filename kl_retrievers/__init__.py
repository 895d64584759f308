"""kl-retrievers: dense retrieval with Gaussian representations scored by -KL divergence.

Every query and document is a diagonal Gaussian; the score is ``-KL(Q || D)`` (higher is
better), served exactly by any inner-product engine through a ``2k + 1``-dimensional rewrite.

The public names below (``__version__`` too) are loaded lazily, on first use: ``import kl_retrievers`` imports
neither torch nor faiss (the torch encoder and the FAISS store load them when they are used).
Without torch (the core install), ``GaussianEncoder`` is a placeholder whose use raises
``ModuleNotFoundError`` naming ``pip install "kl-retrievers[torch]"``; everything else works.

Logging: the modules log to ``logging.getLogger("kl_retrievers.<module>")`` and no handler is added
anywhere, so an application's own setup decides what is shown. Where it set up nothing (a plain script, a
notebook), warnings (a store loaded with another model than it was built with, ...) reach stderr
through Python's last-resort handler (the logging HOWTO's default for a library; a ``NullHandler`` would
hide them). ``logging.getLogger("kl_retrievers").setLevel(logging.ERROR)`` silences them.

Examples:
    >>> import kl_retrievers
    >>> kl_retrievers.SCORE_NAME, kl_retrievers.SCORE_DIRECTION
    ('neg_kl', 'higher_is_better')
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from kl_retrievers._config import GaussianEncoderConfig, NotAnEncoderError
    from kl_retrievers._errors import ConcurrentSaveError, KLRetrieversError, NothingSavedError
    from kl_retrievers._io import load_gaussians, save_gaussians
    from kl_retrievers.encoder import GaussianEncoder
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
    from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError
    from kl_retrievers.pretrained import bundled_models, load_default_model, load_model

    #: The installed version; at run time read on first access (``__getattr__``, hidden from type checkers),
    #: with :func:`kl_retrievers._io.library_version`.
    __version__: str

#: Each lazily loaded public name and the module that defines it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("load_gaussians", "save_gaussians"), "kl_retrievers._io"),
    "GaussianEncoder": "kl_retrievers.encoder",  # without torch: kl_retrievers._torch_free.TorchFreeGaussianEncoder
    **dict.fromkeys(("GaussianEncoderConfig", "NotAnEncoderError"), "kl_retrievers._config"),  # torch-free
    **dict.fromkeys(("ConcurrentSaveError", "KLRetrieversError", "NothingSavedError"), "kl_retrievers._errors"),
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
    **dict.fromkeys(("OnnxGaussianEncoder", "OnnxModelError"), "kl_retrievers.onnx"),
    **dict.fromkeys(("bundled_models", "load_default_model", "load_model"), "kl_retrievers.pretrained"),
}

#: The public submodules (every module of the package whose name has no leading underscore), which
#: ``kl_retrievers.<name>`` imports on first access; tests/test_public_api.py keeps this list in step.
_SUBMODULES = frozenset(
    (
        "backbones",
        "baselines",
        "calibration",
        "cli",
        "cli_common",
        "datasets",
        "encoder",
        "encoding_cache",
        "evaluate_cli",
        "evaluation",
        "filters",
        "gaussian",
        "hub",
        "hybrid",
        "index",
        "langchain",
        "llama_index",
        "milvus",
        "onnx",
        "onnx_cli",
        "onnx_heads",
        "pretrained",
        "qpp",
        "runs",
        "sharded",
        "store",
        "training",
    )
)

__all__ = [
    "SCORE_DIRECTION",
    "SCORE_NAME",
    "ConcurrentSaveError",
    "DeleteReport",
    "GaussianEncoder",
    "GaussianEncoderConfig",
    "Gaussians",
    "KLRetrieversError",
    "KLStore",
    "ModelNotFoundError",
    "NotAnEncoderError",
    "NothingSavedError",
    "OnnxGaussianEncoder",
    "OnnxModelError",
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


if not TYPE_CHECKING:  # type checkers see the names imported above, and flag any other (a typo) as an error

    def __getattr__(name: str) -> Any:
        """Import a public name's module on first access (PEP 562) and cache the name here.

        A public submodule (``kl_retrievers.onnx``) is imported too; any other name is an ``AttributeError``.
        Without torch, ``GaussianEncoder`` is :class:`kl_retrievers._torch_free.TorchFreeGaussianEncoder`.
        """
        if name == "__version__":  # read on first access: importlib.metadata would double the import's time
            from kl_retrievers._io import library_version

            globals()[name] = version = library_version()
            return version
        module = _LAZY.get(name)
        if module is None:
            if name in _SUBMODULES:
                return importlib.import_module(f"{__name__}.{name}")
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        if name == "GaussianEncoder":
            from kl_retrievers._encoding import missing_torch
            from kl_retrievers._torch_free import TorchFreeGaussianEncoder

            if missing_torch():
                globals()[name] = TorchFreeGaussianEncoder
                return TorchFreeGaussianEncoder
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The public names, and the public submodules imported so far (listing them all would make ``dir()``-driven
    tools such as ``inspect.getmembers`` and ``help()`` import every optional extra: langchain, torch...)."""
    imported = {name for name in _SUBMODULES if f"{__name__}.{name}" in sys.modules}
    return sorted({*__all__, *imported})
