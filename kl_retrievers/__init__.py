"""kl-retrievers: dense retrieval with Gaussian representations scored by -KL divergence.

Every query and document is a diagonal Gaussian; the score is ``-KL(Q || D)`` (higher is
better), served exactly by any inner-product engine through a ``2k + 1``-dimensional rewrite.

Examples:
    >>> import kl_retrievers
    >>> kl_retrievers.SCORE_NAME, kl_retrievers.SCORE_DIRECTION
    ('neg_kl', 'higher_is_better')
"""

from __future__ import annotations

import logging

from kl_retrievers._io import library_version, load_gaussians, save_gaussians
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
