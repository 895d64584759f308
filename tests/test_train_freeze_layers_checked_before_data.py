"""``kl-retrievers train --freeze-layers N`` with ``N`` above the backbone's layer count was refused only once the
data and the backbone had loaded (minutes on real data): the count is now read from the backbone's ``config.json``
(``--base``'s folder, or the ``backbone_config`` of ``--init-from``'s) before anything is loaded, and the refusal
(exit status 2) names ``N`` and the values allowed. The loaded backbone is still checked (the safety net)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TrainWorld, heads_cached_train_argv, make_tiny_encoder
from kl_retrievers.cli import main
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.training import data as data_module


def _never_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading the training data or a backbone fail the test."""

    def not_now(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded before --freeze-layers was checked")

    monkeypatch.setattr(data_module, "load_training_data", not_now)
    monkeypatch.setattr(GaussianEncoder, "from_backbone", not_now)
    monkeypatch.setattr(GaussianEncoder, "from_pretrained", not_now)


def _full_train_argv(world: TrainWorld, out: Path, *extra: str) -> list[str]:
    argv = heads_cached_train_argv(world, out, "--steps", "1", *extra)
    argv.remove("--heads-only-cached")
    return argv


def test_freeze_layers_above_the_base_layer_count_is_refused_before_the_data_loads(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _never_loaded(monkeypatch)
    assert main(_full_train_argv(train_world, tmp_path / "m", "--freeze-layers", "5")) == 2
    err = capsys.readouterr().err
    assert f"(--freeze-layers) 5 is more than the backbone's 2 layers (--base {train_world.base}" in err
    assert "give 0 to 2 (0: none frozen)" in err
    assert not (tmp_path / "m").exists()


def test_freeze_layers_above_the_init_from_layer_count_is_refused_before_the_data_loads(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "saved"
    make_tiny_encoder(pooling="mean").save_pretrained(saved)  # a full save: its config.json's backbone_config
    _never_loaded(monkeypatch)
    argv = ["train", "--data", str(train_world.beir), "--out", str(tmp_path / "m"), "--init-from", str(saved)]
    argv += ["--steps", "1", "--no-progress", "--device", "cpu", "--freeze-layers", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"(--freeze-layers) 3 is more than the backbone's 2 layers (--init-from {saved}" in err


def test_freeze_layers_up_to_the_layer_count_still_trains(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_full_train_argv(train_world, tmp_path / "m", "--freeze-layers", "2")) == 0
    assert "after 1 step (finished)" in capsys.readouterr().out


def test_the_loaded_backbone_is_still_checked_where_its_config_cannot_tell(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration that cannot tell the layer count: the loaded backbone's check refuses ``N`` (exit status 2)."""
    from kl_retrievers.training import cli as train_cli

    monkeypatch.setattr(train_cli, "_configured_layer_count", lambda args: None)
    assert main(_full_train_argv(train_world, tmp_path / "m", "--freeze-layers", "5")) == 2
    assert "--freeze-layers) 5 is more than the backbone's 2 layers" in capsys.readouterr().err
