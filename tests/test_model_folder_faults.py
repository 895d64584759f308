"""Model folders under faults: a re-save while a load reads the folder, a save killed mid-swap, a full disk.

- ``GaussianEncoder.from_pretrained`` (so ``load_model``) reads the folder again when another save swapped it
  in meanwhile, instead of reporting a healthy model as damaged (config of one save, weights of the next).
- Where the folder swap is not atomic (macOS), a save killed between its two renames leaves the folder
  missing and the previous copy beside it (``.NAME.old-*``): loading the model restores it, as
  ``KLStore.load`` does.
- A full disk while safetensors writes (its own ``SafetensorError``, no ``OSError``) is an ``OSError`` naming
  the folder being saved, with ``errno.ENOSPC``: the CLI reports it as a user's error, not an internal one.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from safetensors import SafetensorError

import kl_retrievers.encoder as encoder_module
from conftest import cli_error_line, heads_cached_train_argv, make_tiny_encoder, make_train_world
from kl_retrievers import _io, load_model
from kl_retrievers.encoder import GaussianEncoder, NotAnEncoderError

FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


def _same_weights(a: GaussianEncoder, b: GaussianEncoder) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ------------------------------------------------------------------ a save of the folder during the load
@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-swap", "rename-aside"])
def test_load_reads_the_folder_again_when_a_save_replaced_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:  # macOS, some file systems: the previous copy is renamed aside, then the new one into place
        monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    first, second = make_tiny_encoder(seed=0), make_tiny_encoder(seed=1)
    folder = tmp_path / "model"
    first.save_pretrained(folder)
    real = encoder_module._load_tokenizer
    reads: list[Path] = []

    def tokenizer_then_resave(path: Path) -> Any:
        reads.append(path)
        if len(reads) == 1:  # another process saves the folder after the config was read, before the weights
            second.save_pretrained(folder)
        return real(path)

    monkeypatch.setattr(encoder_module, "_load_tokenizer", tokenizer_then_resave)
    loaded = GaussianEncoder.from_pretrained(folder)
    assert len(reads) == 2  # read again, whole
    assert _same_weights(loaded, second)
    assert loaded.weights_sha256 == second.weights_sha256


def test_a_damaged_folder_is_refused_at_the_first_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_tiny_encoder().save_pretrained(tmp_path / "model")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor: readable, but not the recorded SHA-256
    weights.write_bytes(bytes(data))
    real = encoder_module._load_tokenizer
    reads: list[Path] = []

    def counted(path: Path) -> Any:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(encoder_module, "_load_tokenizer", counted)
    with pytest.raises(NotAnEncoderError, match="SHA-256"):
        GaussianEncoder.from_pretrained(folder)
    assert len(reads) == 1  # nothing replaced the folder: its error at once, not after more reads


# ------------------------------------------------------------------ a save killed between its two renames
def _killed_between_renames(tmp_path: Path) -> tuple[GaussianEncoder, Path, Path]:
    """A saved model whose folder a save (without an atomic swap) moved aside before it was killed."""
    enc = make_tiny_encoder(seed=3)
    folder = enc.save_pretrained(tmp_path / "model")
    aside = tmp_path / ".model.old-0123abcd"  # what _replace_aside renames the previous copy to
    folder.rename(aside)
    return enc, folder, aside


LOADERS: dict[str, Callable[[Path], Any]] = {
    "from_pretrained": GaussianEncoder.from_pretrained,
    "from_pretrained-str": lambda folder: GaussianEncoder.from_pretrained(str(folder)),
    "load_model": lambda folder: load_model(folder, backend="torch"),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_load_restores_a_folder_that_a_killed_save_left_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loader: str
) -> None:
    enc, folder, aside = _killed_between_renames(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        loaded = LOADERS[loader](folder)
    assert _same_weights(loaded, enc)
    assert loaded.name_or_path == str(folder.resolve())  # recorded as the folder, as for any local folder
    assert folder.is_dir() and not aside.exists()
    assert any("restored the previous copy" in r.getMessage() for r in caplog.records)


def test_a_copy_held_by_a_running_save_is_not_restored(tmp_path: Path) -> None:
    _, folder, aside = _killed_between_renames(tmp_path)
    fd = _io._lock_fd(aside, wait=False)  # a save between its two renames holds its copy
    if fd is None:
        pytest.skip("no flock here")
    try:
        with pytest.raises(OSError, match="model"):  # ModelNotFoundError: the save is about to put its copy there
            GaussianEncoder.from_pretrained(folder)
        assert aside.is_dir() and not folder.exists()
    finally:
        _io._unlock_fd(fd)


# ------------------------------------------------------------------ a full disk while the weights are written
def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def save_file(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError(FULL_DISK)

    monkeypatch.setattr(encoder_module, "save_file", save_file)
    import kl_retrievers.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "save_file", save_file, raising=False)  # its own import before the fix


def test_save_pretrained_on_a_full_disk_is_an_oserror_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = make_tiny_encoder(seed=0), make_tiny_encoder(seed=1)
    folder = old.save_pretrained(tmp_path / "model")
    _full_disk(monkeypatch)
    with pytest.raises(OSError) as info:
        new.save_pretrained(folder)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert str(folder) in message and "model.safetensors" in message and "No space left on device" in message
    assert isinstance(info.value.__cause__, SafetensorError)
    monkeypatch.undo()
    assert _same_weights(GaussianEncoder.from_pretrained(folder), old)  # the previous copy is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary copy left behind


def test_another_safetensors_error_is_an_oserror_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def save_file(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: something else")

    monkeypatch.setattr(encoder_module, "save_file", save_file)
    with pytest.raises(OSError, match="something else") as info:
        make_tiny_encoder().save_pretrained(tmp_path / "model")
    assert info.value.errno is None
    assert not (tmp_path / "model").exists()


def test_checkpoint_on_a_full_disk_is_an_oserror_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.training import trainer

    enc = make_tiny_encoder()
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    folder = tmp_path / "ckpt"
    _full_disk(monkeypatch)
    with pytest.raises(OSError) as info:
        trainer._save_checkpoint(folder, enc, opt, sched, 1, [0.5])
    assert info.value.errno == errno.ENOSPC
    assert str(folder) in str(info.value) and "trainable.safetensors" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no half-written checkpoint, no temporary copy


def test_train_cli_on_a_full_disk_names_it_instead_of_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    world = make_train_world(tmp_path)
    out = tmp_path / "out"
    _full_disk(monkeypatch)
    assert main(heads_cached_train_argv(world, out)) == 2
    line = cli_error_line(capsys, "train")
    assert "internal error" not in line
    assert str(out) in line and "No space left on device" in line
    assert not out.exists()
