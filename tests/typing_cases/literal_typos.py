"""Typo'd options that mypy must refuse: each ``Literal`` alias of a public parameter, checked by ``make typecheck``.

Every typo line carries a ``# type: ignore[<code>]`` and sits next to its correctly spelled twin (no ignore). This
module has ``warn_unused_ignores = true`` (pyproject's ``[[tool.mypy.overrides]]``), so when an option loses its
``Literal`` annotation mypy accepts the typo and reports the ignore as unused: the typecheck fails. A misspelt
keyword of a signature that takes ``**kwargs`` to refuse them (``KLEmbeddings``' ``**unexpected: NoReturn``) is
checked the same way. Nothing here
runs: the calls sit under ``TYPE_CHECKING`` (and pytest does not collect this folder, see its ``conftest.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kl_retrievers._config import GaussianEncoderConfig
    from kl_retrievers.calibration import ConfidenceCalibrator, recommended_min_confidence
    from kl_retrievers.evaluation import evaluate_model, retrieve_vectors
    from kl_retrievers.hybrid import FusionConfig, KLHybridStore, normalize_scores
    from kl_retrievers.langchain import KLEmbeddings
    from kl_retrievers.langchain import KLHybridRetriever as LangChainHybridRetriever
    from kl_retrievers.langchain import KLVectorStore as LangChainVectorStore
    from kl_retrievers.llama_index import KLEmbedding
    from kl_retrievers.llama_index import KLHybridRetriever as LlamaHybridRetriever
    from kl_retrievers.llama_index import KLVectorStore as LlamaVectorStore
    from kl_retrievers.onnx import export_onnx
    from kl_retrievers.pretrained import load_default_model, load_model
    from kl_retrievers.sharded import encode_corpus
    from kl_retrievers.store import KLStore, MilvusKLStore
    from kl_retrievers.training.losses import lambdarank_loss, score_matrix
    from kl_retrievers.training.trainer import TrainConfig

    x: Any = None
    KLStore(index_type="hnws")  # type: ignore[arg-type]
    KLStore(index_type="hnsw")
    KLStore(index_type="ivf", compression="pg")  # type: ignore[arg-type]
    KLStore(index_type="ivf", compression="pq")
    KLStore(index_type="ivf", compression="pq", refine="fp61")  # type: ignore[arg-type]
    KLStore(index_type="ivf", compression="pq", refine="fp16")
    MilvusKLStore(metric="l2")  # type: ignore[arg-type]
    MilvusKLStore(metric="L2")
    MilvusKLStore(compression="pq")  # type: ignore[arg-type]
    MilvusKLStore(compression="sq8")
    MilvusKLStore(index_type="falt")  # type: ignore[arg-type]
    MilvusKLStore(index_type="flat")
    FusionConfig(mode="rff")  # type: ignore[arg-type]
    FusionConfig(mode="rrf")
    FusionConfig(normalization="z-score")  # type: ignore[arg-type]
    FusionConfig(normalization="zscore")
    normalize_scores([1.0], "min-max")  # type: ignore[arg-type]
    normalize_scores([1.0], "minmax")
    KLHybridStore(x, fusion="convx")  # type: ignore[arg-type]
    KLHybridStore(x, fusion="convex")
    GaussianEncoderConfig(dim=4, pooling="max")  # type: ignore[arg-type]
    GaussianEncoderConfig(dim=4, pooling="mean")
    ConfidenceCalibrator(kind="hybird")  # type: ignore[arg-type]
    ConfidenceCalibrator(kind="hybrid")
    recommended_min_confidence(retriever="sparse")  # type: ignore[arg-type]
    recommended_min_confidence(retriever="dense")
    TrainConfig(similarity="cos")  # type: ignore[arg-type]
    TrainConfig(similarity="cosine")
    TrainConfig(loss="margin-mse")  # type: ignore[arg-type]
    TrainConfig(loss="margin_mse")
    score_matrix(x, x, x, x, "negkl")  # type: ignore[arg-type]
    score_matrix(x, x, x, x, "neg_kl")
    lambdarank_loss(x, x, rank_by="both")  # type: ignore[arg-type]
    lambdarank_loss(x, x, rank_by="teacher")
    export_onnx(x, "out", quantize="int4")  # type: ignore[arg-type]
    export_onnx(x, "out", quantize="float32")
    LangChainVectorStore(relevance="expo")  # type: ignore[arg-type]
    LangChainVectorStore(relevance="exp_per_dim")
    KLEmbeddings(backend="onxx")  # type: ignore[arg-type]
    KLEmbeddings(backend="onnx")
    # a misspelt keyword (**unexpected: NoReturn)
    KLEmbeddings(batchsize=8)  # type: ignore[arg-type]
    KLEmbeddings(batch_size=8)
    LangChainHybridRetriever(store=x, fusion="RRF")  # type: ignore[arg-type]
    LangChainHybridRetriever(store=x, fusion="rrf")
    LangChainHybridRetriever(store=x, fusion="convex", normalization="l2")  # type: ignore[arg-type]
    LangChainHybridRetriever(store=x, fusion="convex", normalization="minmax")
    LangChainHybridRetriever.from_texts([], fusion="mean")  # type: ignore[arg-type]
    LangChainHybridRetriever.from_texts([], fusion="adaptive")
    LlamaVectorStore(relevance="inverted")  # type: ignore[arg-type]
    LlamaVectorStore(relevance="inverse")
    KLEmbedding(backend="pytorch")  # type: ignore[arg-type]
    KLEmbedding(backend="torch")
    LlamaHybridRetriever(x, fusion="adaptve")  # type: ignore[arg-type]
    LlamaHybridRetriever(x, fusion="adaptive")
    LlamaHybridRetriever(x, fusion="convex", normalization="max")  # type: ignore[arg-type]
    LlamaHybridRetriever(x, fusion="convex", normalization="minmax")
    LlamaHybridRetriever.from_defaults(fusion="rrf ")  # type: ignore[arg-type]
    LlamaHybridRetriever.from_defaults(fusion="rrf")
    load_model(quantize="int4")  # type: ignore[call-overload]
    load_model(quantize="float32")
    load_model(backend="onxx")  # type: ignore[call-overload]
    load_model(backend="onnx")
    # a plain str is refused too: an unchecked value (``if value in BACKENDS`` narrows it)
    load_model(backend=str(x))  # type: ignore[call-overload]
    load_model(backend=None)
    load_default_model(backend="pytorch")  # type: ignore[call-overload]
    load_default_model(backend="torch")
    encode_corpus(x, x, model_backend="ONNX")  # type: ignore[arg-type]
    encode_corpus(x, x, model_backend="onnx")
    evaluate_model(x, x, similarity="kl")  # type: ignore[arg-type]
    evaluate_model(x, x, similarity="neg_kl")
    retrieve_vectors(x, x, [], [], similarity="neg_kl")  # type: ignore[arg-type]
    retrieve_vectors(x, x, [], [], similarity="cosine")
