from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import kl_retrievers

EXPECTED = {
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
}


def test_public_surface_is_pinned() -> None:
    assert set(kl_retrievers.__all__) == EXPECTED
    for name in kl_retrievers.__all__:
        assert hasattr(kl_retrievers, name), name


def test_score_is_named_once() -> None:
    assert kl_retrievers.SCORE_NAME == "neg_kl"
    assert kl_retrievers.SCORE_DIRECTION == "higher_is_better"


#: Imported in a fresh interpreter by the logging test: the package and its main submodules.
_LOGGING_IMPORTS = ("langchain", "llama_index", "hybrid", "store", "onnx", "cli")

_LOGGING_CHECK = """
import logging, sys
root = logging.getLogger()
before = (list(root.handlers), root.level)
import kl_retrievers
for name in sys.argv[1:]:
    __import__("kl_retrievers." + name)
problems = []
if root.handlers or (list(root.handlers), root.level) != before:
    problems.append(f"root logger changed: {before} -> {(root.handlers, root.level)}")
package = logging.getLogger("kl_retrievers")
if package.handlers or package.level != logging.NOTSET:  # no NullHandler: warnings reach stderr via lastResort
    problems.append(f"kl_retrievers logger: handlers {package.handlers}, level {package.level}")
if not package.propagate:
    problems.append("kl_retrievers logger does not propagate")
if logging.lastResort is None:
    problems.append("logging.lastResort was turned off")
for name, logger in logging.root.manager.loggerDict.items():
    if name.startswith("kl_retrievers.") and isinstance(logger, logging.Logger):
        if logger.handlers or logger.level != logging.NOTSET or not logger.propagate:
            problems.append(f"{name}: handlers {logger.handlers}, level {logger.level}, propagate {logger.propagate}")
print(problems)
"""


def test_import_configures_no_logging() -> None:
    """Importing the package and its submodules adds no handler anywhere, not even a NullHandler.

    Without one, the package's warnings reach stderr through Python's last-resort handler in an
    application that configured no logging (a NullHandler on the package logger would hide them).

    Run in a fresh interpreter: pytest's own logging plugin puts handlers on the root logger here.
    """
    done = subprocess.run(
        [sys.executable, "-c", _LOGGING_CHECK, *_LOGGING_IMPORTS], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


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
    assert kl_retrievers.onnx.__name__ == "kl_retrievers.onnx"  # public submodules resolve on attribute access too
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = kl_retrievers.no_such_name  # type: ignore[attr-defined]  # mypy flags it too: no __getattr__ for it


# ------------------------------------------------------------------ the submodules' public names
EXPECTED_SUBMODULE_ALL = {
    "langchain": {
        "ABSTENTION_EVENT",
        "CONFIDENCE_KEY",
        "EMPTY_QUERY_REASON",
        "EmbeddingsGaussianEncoder",
        "KLEmbeddings",
        "KLHybridRetriever",
        "KLRetriever",
        "KLVectorStore",
        "LangChainFormatError",
        "RELEVANCE_FUNCTIONS",
        "check_inner_product_store",
        "relevance_exp",
        "relevance_exp_per_dim",
        "relevance_inverse",
    },
    "llama_index": {
        "CONFIDENCE_KEY",
        "EMPTY_QUERY_REASON",
        "QUERY_UNCERTAINTY_KEY",
        "RELEVANCE_FUNCTIONS",
        "SUPPORTED_FILTER_CONDITIONS",
        "SUPPORTED_FILTER_OPERATORS",
        "SUPPORTED_QUERY_MODES",
        "KLConfidencePostprocessor",
        "KLEmbedding",
        "KLHybridRetriever",
        "KLRetriever",
        "KLVectorStore",
        "document_gaussians_from_embeddings",
        "metadata_filters_to_predicate",
        "query_gaussians_from_embeddings",
        "relevance_exp",
        "relevance_exp_per_dim",
        "relevance_inverse",
    },
    "hybrid": {
        "ADAPTIVE_PARAMS_FILE",
        "ADAPTIVE_PARAMS_PATH",
        "BM25_TOKEN_PATTERN",
        "DEFAULT_CANDIDATES",
        "DEFAULT_STEMMER",
        "FUSION_MODES",
        "NORMALIZATIONS",
        "RRF_K",
        "SIGNALS",
        "AdaptiveParams",
        "Candidates",
        "FusionConfig",
        "FusionMode",
        "HybridFormatError",
        "HybridResult",
        "KLHybridStore",
        "Normalization",
        "convex_scores",
        "fit_adaptive",
        "fuse",
        "ndcg_at_k",
        "ndcg_curves",
        "normalize_scores",
        "query_signals",
        "rrf_scores",
    },
    "store": {
        "FORMAT_VERSION",
        "INDEX_TYPES",
        "IndexType",
        "DeleteReport",
        "GaussianStore",
        "KLStore",
        "MilvusConnectionError",
        "MilvusKLStore",
        "SearchResult",
        "StoreFormatError",
        "StoredDocument",
        "to_milvus_expr",
    },
}


@pytest.mark.parametrize("module", sorted(EXPECTED_SUBMODULE_ALL))
def test_submodule_public_surface_is_pinned(module: str) -> None:
    mod = importlib.import_module(f"kl_retrievers.{module}")
    assert len(mod.__all__) == len(set(mod.__all__)), sorted(mod.__all__)  # no name listed twice
    assert set(mod.__all__) == EXPECTED_SUBMODULE_ALL[module]
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name  # every listed name resolves (lazy ones included)


# ------------------------------------------------------------------ dir(), attribute access and type checkers
def test_dir_lists_the_public_names_not_the_internals() -> None:
    listed = dir(kl_retrievers)
    assert listed == sorted(listed)
    assert set(kl_retrievers.__all__) <= set(listed)
    for internal in ("Any", "TYPE_CHECKING", "_LAZY", "_SUBMODULES", "importlib", "logging", "sys", "library_version"):
        assert internal not in listed, internal
    extra = set(listed) - set(kl_retrievers.__all__)
    assert extra <= kl_retrievers._SUBMODULES, sorted(extra)  # public submodules already imported, nothing else


def test_the_known_submodules_are_the_public_modules_on_disk() -> None:
    on_disk = {m.name for m in pkgutil.iter_modules(kl_retrievers.__path__) if not m.name.startswith("_")}
    assert set(kl_retrievers._SUBMODULES) == on_disk


def test_attribute_access_imports_only_public_names_and_submodules() -> None:
    """Any other name is an AttributeError (run in a fresh interpreter, where no test has imported the module)."""
    code = """
import sys, kl_retrievers
for name in ("_adapters", "_confidence", "data", "load_defualt_model"):
    try:
        getattr(kl_retrievers, name)
    except AttributeError:
        print(name, "refused", f"kl_retrievers.{name}" in sys.modules)
    else:
        print(name, "resolved")
print(kl_retrievers.hub.__name__)  # a public submodule still resolves without an import
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "_adapters refused False",
        "_confidence refused False",
        "data refused False",
        "load_defualt_model refused False",
        "kl_retrievers.hub",
    ]


def test_type_checkers_see_every_public_name_and_no_module_getattr() -> None:
    """mypy flags a typo such as ``kl_retrievers.load_defualt_model`` only when it cannot see ``__getattr__``.

    The module-level ``__getattr__`` is defined under ``if not TYPE_CHECKING:``; every name of ``__all__`` is
    imported (or defined) where type checkers see it. (Checked on the source: a cold mypy run takes a minute.)
    """
    tree = ast.parse(Path(kl_retrievers.__file__).read_text())
    seen: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            pytest.fail("kl_retrievers.__getattr__ is visible to type checkers: put it under `if not TYPE_CHECKING:`")
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            seen |= {
                alias.asname or alias.name
                for imp in node.body
                if isinstance(imp, ast.ImportFrom)
                for alias in imp.names
            }
            seen |= {  # plain declarations (``__version__: str``)
                ann.target.id
                for ann in node.body
                if isinstance(ann, ast.AnnAssign) and isinstance(ann.target, ast.Name)
            }
        if isinstance(node, ast.Assign):
            seen |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    hidden = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.UnaryOp)
        and isinstance(node.test.op, ast.Not)
        and isinstance(node.test.operand, ast.Name)
        and node.test.operand.id == "TYPE_CHECKING"
    ]
    assert any(isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for node in hidden for f in node.body)
    assert set(kl_retrievers.__all__) <= seen, sorted(set(kl_retrievers.__all__) - seen)
