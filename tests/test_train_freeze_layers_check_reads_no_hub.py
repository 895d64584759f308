"""``kl-retrievers train --freeze-layers N`` checks ``N`` against the backbone's ``config.json`` before the data
loads. That early check resolved the model with the hub allowed: an uncached hub id was downloaded whole before
``--data`` was checked, a failed lookup was made again by the loader, and ``--init-from kl_retrievers:nope`` asked
the hub. It now reads only what is known locally (a folder, a bundled model, the Hugging Face cache's
``config.json``) and skips the check otherwise. Its refusal and the loaded backbone's are one message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import hub
from kl_retrievers.training import cli as train_cli
from kl_retrievers.training.trainer import check_freeze_layers


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """An empty Hugging Face cache under ``tmp_path``; every hub lookup or download is recorded (and fails)."""
    calls: list[str] = []

    def record(name: str) -> object:
        def called(*args: object, **kwargs: object) -> None:
            calls.append(f"{name}{args}")
            raise OSError("no network in this test")

        return called

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", record("snapshot_download"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", record("hf_hub_download"))
    monkeypatch.setattr(hub, "_from_hub", record("_from_hub"))
    monkeypatch.setattr(hub, "resolve_model_path", record("resolve_model_path"))
    return calls


def _args(base: str = "", init_from: str | None = None, freeze_layers: int = 5) -> argparse.Namespace:
    return argparse.Namespace(base=base, init_from=init_from, freeze_layers=freeze_layers)


def _cache(root: Path, repo_id: str, config: dict) -> None:
    """A Hugging Face cache entry of ``repo_id`` holding ``config.json`` at revision ``main``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_an_uncached_hub_id_is_not_looked_up(no_hub: list[str]) -> None:
    assert train_cli._configured_layer_count(_args("some-owner/not-cached-model")) is None
    train_cli._check_freeze_layers_early(_args("some-owner/not-cached-model"))  # unknown: left to the loader
    assert no_hub == []


def test_a_missing_bundled_name_is_not_looked_up(no_hub: list[str]) -> None:
    assert train_cli._configured_layer_count(_args(init_from="kl_retrievers:nope")) is None
    assert no_hub == []


def test_the_hub_caches_config_is_read_without_a_download(no_hub: list[str], tmp_path: Path) -> None:
    _cache(tmp_path / "hf-cache", "some-owner/cached-model", {"num_hidden_layers": 6})
    assert train_cli._configured_layer_count(_args("some-owner/cached-model")) == (6, "--base some-owner/cached-model")
    with pytest.raises(ValueError, match=r"5 is more than the backbone's 4 layers \(--init-from some-owner/enc, as"):
        _cache(tmp_path / "hf-cache", "some-owner/enc", {"backbone_config": {"num_hidden_layers": 4}})
        train_cli._check_freeze_layers_early(_args(init_from="some-owner/enc"))
    assert no_hub == []


def test_the_early_and_the_late_refusal_are_one_message(tmp_path: Path) -> None:
    encoder = make_tiny_encoder()  # 2 layers
    folder = tmp_path / "base"
    encoder.backbone.config.save_pretrained(folder)
    with pytest.raises(ValueError) as early:
        train_cli._check_freeze_layers_early(_args(str(folder)))
    with pytest.raises(ValueError) as late:
        check_freeze_layers(encoder, 5)
    assert str(early.value) == (
        f"freeze_layers (--freeze-layers) 5 is more than the backbone's 2 layers (--base {folder}, as its config.json "
        "says); give 0 to 2 (0: none frozen), or freeze_backbone (--freeze-backbone) to train the heads only"
    )
    assert str(late.value) == str(early.value).replace(f"--base {folder}, as its config.json says", "counted in the "
                                                       "loaded backbone")  # fmt: skip
