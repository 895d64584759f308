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


def test_import_loads_neither_torch_nor_faiss() -> None:
    import subprocess
    import sys

    code = "import kl_retrievers, sys; print('torch' in sys.modules, 'faiss' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stdout + done.stderr


def test_public_names_load_lazily_and_are_listed() -> None:
    assert set(kl_retrievers.__all__) <= set(dir(kl_retrievers))
    from kl_retrievers.gaussian import neg_kl_matrix
    from kl_retrievers.index import KLStore

    assert kl_retrievers.KLStore is KLStore and kl_retrievers.neg_kl_matrix is neg_kl_matrix
    assert kl_retrievers.onnx.__name__ == "kl_retrievers.onnx"  # submodules resolve on attribute access too
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = kl_retrievers.no_such_name
