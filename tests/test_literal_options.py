"""Option strings of the public API are ``Literal`` aliases, one definition each, read by the runtime checks.

(a) Each alias's values are exactly what the runtime check accepts: every value is accepted, a typo is refused
with a ``ValueError``, and the tuples (and CLI choices) that list the values equal the alias's ``get_args``.
(b) A type checker refuses a typo: mypy, with the repository's configuration, reports an error on every
typo'd option of a small snippet and none on its correctly spelled twins.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest

import kl_retrievers

# (module, alias, the module attribute listing the allowed values: a tuple, or a dict keyed by them)
_LISTED = [
    ("kl_retrievers.store._base", "IndexType", "INDEX_TYPES"),
    ("kl_retrievers.store.faiss", "Compression", "COMPRESSIONS"),
    ("kl_retrievers.store.faiss", "Refine", "REFINES"),
    ("kl_retrievers.store.milvus", "MilvusMetric", "METRICS"),
    ("kl_retrievers.store.milvus", "MilvusCompression", "COMPRESSIONS"),
    ("kl_retrievers.hybrid", "FusionMode", "FUSION_MODES"),
    ("kl_retrievers.hybrid", "Normalization", "NORMALIZATIONS"),
    ("kl_retrievers._config", "Similarity", "SIMILARITIES"),
    ("kl_retrievers._config", "Pooling", "_POOLINGS"),
    ("kl_retrievers.calibration", "CalibratorKind", "CALIBRATOR_KINDS"),
    ("kl_retrievers._adapters", "RelevanceName", "RELEVANCE_FUNCTIONS"),
    ("kl_retrievers.pretrained", "Backend", "BACKENDS"),
    ("kl_retrievers.onnx", "Quantization", "QUANTIZATIONS"),
    ("kl_retrievers.training.losses", "Loss", "LOSSES"),
]


def _module(name: str) -> Any:
    if name in ("kl_retrievers.store.milvus", "kl_retrievers.training.losses"):
        pytest.importorskip("torch" if "training" in name else "pymilvus")
    return importlib.import_module(name)


@pytest.mark.parametrize(("module", "alias", "listed"), _LISTED, ids=[a for _, a, _ in _LISTED])
def test_each_alias_lists_the_values_its_runtime_check_reads(module: str, alias: str, listed: str) -> None:
    mod = _module(module)
    values = getattr(mod, listed)
    keys = tuple(values) if isinstance(values, dict) else values
    assert tuple(k for k in keys if k is not None) == get_args(getattr(mod, alias))


def _accepts() -> list[tuple[str, str, Callable[[Any], object]]]:
    """(module, alias, a call that checks one value of it at run time) for the aliases of a public parameter."""
    from kl_retrievers._adapters import resolve_relevance
    from kl_retrievers._config import GaussianEncoderConfig
    from kl_retrievers.calibration import ConfidenceCalibrator, recommended_min_confidence
    from kl_retrievers.hybrid import FusionConfig, normalize_scores
    from kl_retrievers.store import KLStore

    cases: list[tuple[str, str, Callable[[Any], object]]] = [
        ("kl_retrievers.store._base", "IndexType", lambda v: KLStore(index_type=v)),
        ("kl_retrievers.store.faiss", "Compression", lambda v: KLStore(index_type="hnsw", compression=v)),
        ("kl_retrievers.store.faiss", "Refine", lambda v: KLStore(index_type="ivf", compression="pq", refine=v)),
        ("kl_retrievers.hybrid", "FusionMode", lambda v: FusionConfig(mode=v)),
        ("kl_retrievers.hybrid", "FusionMode", lambda v: FusionConfig().for_call(v)),
        ("kl_retrievers.hybrid", "Normalization", lambda v: FusionConfig(normalization=v)),
        ("kl_retrievers.hybrid", "Normalization", lambda v: normalize_scores([1.0, 2.0], v)),
        ("kl_retrievers._config", "Pooling", lambda v: GaussianEncoderConfig(dim=4, pooling=v)),
        ("kl_retrievers.calibration", "CalibratorKind", lambda v: ConfidenceCalibrator(["max_score"], kind=v)),
        ("kl_retrievers.calibration", "CalibratorKind", lambda v: recommended_min_confidence(retriever=v)),
        ("kl_retrievers._adapters", "RelevanceName", resolve_relevance),
    ]
    try:
        import torch

        from kl_retrievers.training.losses import lambdarank_loss, score_matrix
        from kl_retrievers.training.trainer import TrainConfig
    except ImportError:
        return cases
    q, d = torch.ones(2, 3), torch.ones(4, 3)
    return [
        *cases,
        ("kl_retrievers._config", "Similarity", lambda v: TrainConfig(similarity=v)),
        ("kl_retrievers._config", "Similarity", lambda v: score_matrix(q, q, d, d, v)),
        ("kl_retrievers.training.losses", "Loss", lambda v: TrainConfig(loss=v)),
        ("kl_retrievers.training.losses", "RankBy", lambda v: lambdarank_loss(q, q, rank_by=v)),
    ]


def test_the_runtime_checks_accept_each_value_and_refuse_a_typo() -> None:
    for module, alias, call in _accepts():
        values = get_args(getattr(importlib.import_module(module), alias))
        for value in values:
            call(value)  # accepted
        with pytest.raises(ValueError, match=re.escape(repr(values[0] + "x"))):
            call(values[0] + "x")


def _choices(parser: argparse.ArgumentParser, flag: str) -> tuple[Any, ...]:
    """The ``choices`` of ``flag`` in ``parser`` or any of its subcommands."""
    for action in parser._actions:
        if flag in action.option_strings:
            return tuple(action.choices or ())
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if found := _choices(sub, flag):
                    return found
    return ()


def test_the_cli_choices_are_the_aliases_values() -> None:
    from kl_retrievers.evaluate_cli import HYBRID_MODES
    from kl_retrievers.hybrid import FusionMode

    assert get_args(FusionMode) == HYBRID_MODES  # spelled out there, so that the parser need not import hybrid
    pytest.importorskip("torch")
    from kl_retrievers._config import Pooling, Similarity
    from kl_retrievers.training.cli import add_train_command
    from kl_retrievers.training.losses import Loss

    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers())
    assert _choices(parser, "--similarity") == get_args(Similarity)
    assert _choices(parser, "--pooling") == get_args(Pooling)
    assert _choices(parser, "--loss") == get_args(Loss)


# Each typo'd option (a line ending "# typo") next to its correct spelling (a line ending "# ok").
_SNIPPET = """
from typing import Any

from kl_retrievers._config import GaussianEncoderConfig
from kl_retrievers.calibration import ConfidenceCalibrator, recommended_min_confidence
from kl_retrievers.hybrid import FusionConfig, KLHybridStore, normalize_scores
from kl_retrievers.langchain import KLEmbeddings
from kl_retrievers.langchain import KLHybridRetriever as LangChainHybridRetriever
from kl_retrievers.langchain import KLVectorStore as LangChainVectorStore
from kl_retrievers.llama_index import KLEmbedding
from kl_retrievers.llama_index import KLHybridRetriever as LlamaHybridRetriever
from kl_retrievers.llama_index import KLVectorStore as LlamaVectorStore
from kl_retrievers.onnx import export_onnx
from kl_retrievers.store import KLStore, MilvusKLStore
from kl_retrievers.training.losses import lambdarank_loss, score_matrix
from kl_retrievers.training.trainer import TrainConfig

x: Any = None
KLStore(index_type="hnws")  # typo
KLStore(index_type="hnsw")  # ok
KLStore(index_type="ivf", compression="pg")  # typo
KLStore(index_type="ivf", compression="pq")  # ok
KLStore(index_type="ivf", compression="pq", refine="fp61")  # typo
KLStore(index_type="ivf", compression="pq", refine="fp16")  # ok
MilvusKLStore(metric="l2")  # typo
MilvusKLStore(metric="L2")  # ok
MilvusKLStore(compression="pq")  # typo
MilvusKLStore(compression="sq8")  # ok
MilvusKLStore(index_type="falt")  # typo
MilvusKLStore(index_type="flat")  # ok
FusionConfig(mode="rff")  # typo
FusionConfig(mode="rrf")  # ok
FusionConfig(normalization="z-score")  # typo
FusionConfig(normalization="zscore")  # ok
normalize_scores([1.0], "min-max")  # typo
normalize_scores([1.0], "minmax")  # ok
KLHybridStore(x, fusion="convx")  # typo
KLHybridStore(x, fusion="convex")  # ok
GaussianEncoderConfig(dim=4, pooling="max")  # typo
GaussianEncoderConfig(dim=4, pooling="mean")  # ok
ConfidenceCalibrator(kind="hybird")  # typo
ConfidenceCalibrator(kind="hybrid")  # ok
recommended_min_confidence(retriever="sparse")  # typo
recommended_min_confidence(retriever="dense")  # ok
TrainConfig(similarity="cos")  # typo
TrainConfig(similarity="cosine")  # ok
TrainConfig(loss="margin-mse")  # typo
TrainConfig(loss="margin_mse")  # ok
score_matrix(x, x, x, x, "negkl")  # typo
score_matrix(x, x, x, x, "neg_kl")  # ok
lambdarank_loss(x, x, rank_by="both")  # typo
lambdarank_loss(x, x, rank_by="teacher")  # ok
export_onnx(x, "out", quantize="int4")  # typo
export_onnx(x, "out", quantize="float32")  # ok
LangChainVectorStore(relevance="expo")  # typo
LangChainVectorStore(relevance="exp_per_dim")  # ok
KLEmbeddings(backend="onxx")  # typo
KLEmbeddings(backend="onnx")  # ok
LangChainHybridRetriever(store=x, fusion="RRF")  # typo
LangChainHybridRetriever(store=x, fusion="rrf")  # ok
LangChainHybridRetriever(store=x, fusion="convex", normalization="l2")  # typo
LangChainHybridRetriever(store=x, fusion="convex", normalization="minmax")  # ok
LangChainHybridRetriever.from_texts([], fusion="mean")  # typo
LangChainHybridRetriever.from_texts([], fusion="adaptive")  # ok
LlamaVectorStore(relevance="inverted")  # typo
LlamaVectorStore(relevance="inverse")  # ok
KLEmbedding(backend="pytorch")  # typo
KLEmbedding(backend="torch")  # ok
LlamaHybridRetriever(x, fusion="adaptve")  # typo
LlamaHybridRetriever(x, fusion="adaptive")  # ok
LlamaHybridRetriever(x, fusion="convex", normalization="max")  # typo
LlamaHybridRetriever(x, fusion="convex", normalization="minmax")  # ok
LlamaHybridRetriever.from_defaults(fusion="rrf ")  # typo
LlamaHybridRetriever.from_defaults(fusion="rrf")  # ok
"""


def test_mypy_reports_each_typod_option(tmp_path: Path) -> None:
    """One mypy run, with the repository's configuration, over every case (the cache copied from the
    repository's, when there is one, keeps it to seconds)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    root = Path(kl_retrievers.__file__).resolve().parents[1]
    config = root / "pyproject.toml"
    if not config.is_file():
        pytest.skip("not a source checkout (no pyproject.toml beside the package)")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(_SNIPPET), encoding="utf-8")
    cache = tmp_path / "mypy_cache"
    if (root / ".mypy_cache").is_dir():
        shutil.copytree(root / ".mypy_cache", cache)
    # run from the checkout, so that mypy reads this kl_retrievers (an editable install's import hook is invisible
    # to it), and with its configuration (the Python version floor, ignore_missing_imports)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(cache), str(snippet)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = snippet.read_text(encoding="utf-8").splitlines()
    errors: dict[int, list[str]] = {}
    for match in re.finditer(rf"^{re.escape(str(snippet))}:(\d+): error: (.*)$", done.stdout, re.MULTILINE):
        errors.setdefault(int(match[1]), []).append(match[2])
    typos = {n for n, line in enumerate(lines, 1) if line.endswith("# typo")}
    oks = {n for n, line in enumerate(lines, 1) if line.endswith("# ok")}
    assert typos and len(typos) == len(oks)
    missed = [lines[n - 1] for n in sorted(typos - errors.keys())]
    assert not missed, "mypy accepted these typos:\n" + "\n".join(missed) + f"\n\nmypy said:\n{done.stdout}"
    wrong = {lines[n - 1]: errors[n] for n in sorted(oks & errors.keys())}
    assert not wrong, f"mypy refused correctly spelled options: {wrong}"
    others = {n: e for n, e in errors.items() if n not in typos | oks}
    assert not others, f"mypy errors elsewhere in the snippet: {others}\n{done.stdout}{done.stderr}"
