"""Small fixes to model names and add refusals, each pinned by a test that failed before."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, make_tiny_encoder, retrain_in_place, weights_warnings
from kl_retrievers import load_model
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.hub import ModelNotFoundError


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a" * 300, "refuses it as a path"),
        ("x/" * 3000, "refuses it as a path"),
        ("~no-such-user-kl-46", "'~' cannot be expanded"),
        ("~no-such-user-kl-46/enc", "'~' cannot be expanded"),
    ],
)
def test_load_model_unusable_path_is_not_found(name: str, why: str) -> None:
    """A name the file system cannot look up is a ModelNotFoundError naming it, not a bare OSError/RuntimeError."""
    with pytest.raises(ModelNotFoundError) as info:
        load_model(name)
    message = str(info.value)
    assert why in message
    assert name[:40] in message
    assert "minilm-gauss-soup" in message  # the bundled names are offered
    assert len(message) < 600  # a 6,000-character name is shortened, not echoed


def test_langchain_load_local_weights_warning_names_the_users_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The retrained-model warning names the folder passed to load_local, not the store part inside it."""
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    vs = KLVectorStore.from_texts(
        IDENTITY_TEXTS, KLEmbeddings(encoder=GaussianEncoder.from_pretrained(tmp_path / "model")), ids=IDENTITY_IDS
    )
    vs.save_local(tmp_path / "lc")
    new = retrain_in_place(tmp_path / "model")
    caplog.set_level(logging.WARNING)
    KLVectorStore.load_local(tmp_path / "lc", KLEmbeddings(encoder=new))
    (message,) = weights_warnings(caplog)
    assert message.startswith(f"the LangChain store at {tmp_path / 'lc'} was indexed with ")


def test_llama_index_klembedding_refuses_two_different_model_names() -> None:
    """KLEmbedding("a", model_name="b") loaded a and recorded b, so a reload (from_dict, pickle) got another model."""
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLEmbedding

    with pytest.raises(ValueError, match="minilm-gauss-soup.*minilm-unit-variance"):
        KLEmbedding("minilm-gauss-soup", model_name="minilm-unit-variance")
    same = KLEmbedding("minilm-gauss-soup", model_name="minilm-gauss-soup")  # the same name twice is one model
    assert "minilm-gauss-soup" in str(same.model_name)


@pytest.mark.parametrize("what", ["ids", "texts"])
def test_klstore_add_refuses_a_set_of_ids_or_texts(what: str) -> None:
    """A set pairs with the other arguments in an arbitrary order (LangChain's add_texts already refuses it)."""
    import numpy as np

    from kl_retrievers import KLStore
    from kl_retrievers.gaussian import Gaussians

    store = KLStore()
    g = Gaussians(np.zeros((3, 4)), np.ones((3, 4)))
    lists = {"ids": ["a", "b", "c"], "texts": ["x", "y", "z"]}
    kwargs: dict[str, object] = {"gaussians": g, **lists, what: frozenset(lists[what])}
    with pytest.raises(TypeError, match=f"{what} is a frozenset, whose iteration order is arbitrary"):
        store.add(**kwargs)  # type: ignore[arg-type]
    assert len(store) == 0
    store.add(gaussians=g, ids={"a": 0, "b": 1, "c": 2}.keys())  # type: ignore[arg-type]  # keys keep their order
    assert store.get_by_ids(["a", "b", "c"]) and len(store) == 3


@pytest.mark.parametrize(
    ("settings", "n", "what"),
    [
        ({"index_type": "ivf", "nlist": 16}, 200, "624 for 16 lists"),
        ({"index_type": "ivf", "nlist": 4, "compression": "pq", "pq_m": 4}, 1100, "9,984 for 256 codes"),
        ({"index_type": "hnsw", "compression": "pq", "pq_m": 4}, 1100, "9,984 for 256 codes"),
    ],
)
def test_few_training_points_are_one_log_warning_not_faiss_stderr_lines(
    settings: dict[str, object], n: int, what: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """FAISS printed one raw stderr line per k-means (4 for pq_m=4); the store logs the advice once instead."""
    import numpy as np

    from kl_retrievers import KLStore
    from kl_retrievers.gaussian import Gaussians

    rng = np.random.default_rng(0)
    store = KLStore(**settings)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="kl_retrievers.store._engines")
    for _ in range(2):  # a second build of the same store says nothing more
        g = Gaussians(rng.normal(size=(n, 8)), np.exp(rng.normal(size=(n, 8)) * 0.3))
        store.add(gaussians=g, ids=[f"{len(store)}-{i}" for i in range(n)])
        store.rebuild()
    assert "please provide at least" not in capfd.readouterr().err
    (message,) = [r.getMessage() for r in caplog.records if "fewer than FAISS recommends" in r.getMessage()]
    assert what in message and "rebuild()" in message
