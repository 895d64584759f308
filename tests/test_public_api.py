from __future__ import annotations

import kl_retrievers

EXPECTED = {
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
}


def test_public_surface_is_pinned() -> None:
    assert set(kl_retrievers.__all__) == EXPECTED
    for name in kl_retrievers.__all__:
        assert hasattr(kl_retrievers, name), name


def test_score_is_named_once() -> None:
    assert kl_retrievers.SCORE_NAME == "neg_kl"
    assert kl_retrievers.SCORE_DIRECTION == "higher_is_better"


def test_import_configures_no_logging() -> None:
    import logging

    root = logging.getLogger()
    assert all(not isinstance(h, logging.StreamHandler) or h in root.handlers for h in root.handlers)
    assert isinstance(logging.getLogger("kl_retrievers").handlers[0], logging.NullHandler)
