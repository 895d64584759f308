"""Model saves through symbolic links, the overwrite check of a link a save replaces, safetensors write errors.

``save_pretrained`` and the ONNX export (``export_onnx``, ``python -m kl_retrievers.onnx_cli export``) follow a
link at their target as store saves do (``current -> v3``: ``v3`` is replaced, the link kept); the ONNX cache of
``load_model`` never follows one planted at an entry, and an export through a link into that cache is refused.
A save that replaces a link (does not follow it) judges the link, not what it points to. A failed safetensors
write is an ``OSError`` of its error number's class (``PermissionError`` for ``EACCES``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors import SafetensorError

import kl_retrievers.encoder as encoder_module
from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers import _io
from kl_retrievers._config import is_saved_encoder
from kl_retrievers.encoder import GaussianEncoder

DENIED = "Error while serializing: I/O error: Permission denied (os error 13)"


def _dim(folder: Path) -> int:
    return GaussianEncoder.from_pretrained(folder).config.dim


# ------------------------------------------------------------------ 1. save_pretrained follows a link
def test_save_pretrained_through_a_link_updates_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    make_tiny_encoder(dim=8).save_pretrained(tmp_path / "v3")
    (tmp_path / "current").symlink_to("v3")
    assert make_tiny_encoder(dim=6).save_pretrained(tmp_path / "current") == tmp_path / "current"
    assert (tmp_path / "current").is_symlink() and os.readlink(tmp_path / "current") == "v3"
    assert _dim(tmp_path / "v3") == 6
    assert sorted(os.listdir(tmp_path)) == ["current", "v3"]  # no leftover copy beside either


def test_save_pretrained_through_a_link_judges_the_folder_it_points_to(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "link").symlink_to("mine")
    with pytest.raises(ValueError, match=r"link: the folder is not empty \(notes.txt\) and is not a saved Gaussian"):
        make_tiny_encoder().save_pretrained(tmp_path / "link")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"] and (tmp_path / "link").is_symlink()


def test_save_pretrained_saves_through_a_dangling_link_as_a_new_folder(tmp_path: Path) -> None:
    (tmp_path / "current").symlink_to("v4")
    make_tiny_encoder(dim=6).save_pretrained(tmp_path / "current")  # no overwrite needed: a new path
    assert (tmp_path / "current").is_symlink() and is_saved_encoder(tmp_path / "v4")
    (tmp_path / "lost").symlink_to("missing/deeper")
    with pytest.raises(ValueError, match=r"lost: it is a dangling symbolic link to .*missing/deeper, whose folder"):
        make_tiny_encoder().save_pretrained(tmp_path / "lost", overwrite=True)
    assert not (tmp_path / "missing").exists()


def test_save_pretrained_onto_a_link_to_a_file_names_the_link(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "link").symlink_to("a.txt")
    with pytest.raises(ValueError, match=r"link \(a symbolic link to .*a\.txt\): it exists and is not a folder"):
        make_tiny_encoder().save_pretrained(tmp_path / "link")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "mine" and (tmp_path / "link").is_symlink()


# ------------------------------------------------------------------ 1. the ONNX export follows a link
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return make_tiny_encoder().save_pretrained(tmp_path / "model")


def test_export_onnx_through_a_link_updates_its_target_and_keeps_the_link(tmp_path: Path, saved: Path) -> None:
    from kl_retrievers.onnx import export_onnx, is_onnx_folder
    from kl_retrievers.onnx_cli import main

    (tmp_path / "v3").mkdir()
    (tmp_path / "current").symlink_to("v3")
    export_onnx(GaussianEncoder.from_pretrained(saved), tmp_path / "current", quantize=None, verify=False)
    assert (tmp_path / "current").is_symlink() and is_onnx_folder(tmp_path / "v3")
    first = (tmp_path / "v3" / "model.onnx").stat().st_ino
    assert main(["export", str(saved), str(tmp_path / "current"), "--quantize", "float32"]) == 0  # the CLI too
    assert (tmp_path / "current").is_symlink() and is_onnx_folder(tmp_path / "v3")
    assert (tmp_path / "v3" / "model.onnx").stat().st_ino != first  # v3 itself was replaced
    assert sorted(os.listdir(tmp_path)) == ["current", "model", "v3"]


def test_an_export_through_a_link_into_the_onnx_cache_is_refused(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers import onnx, pretrained
    from kl_retrievers.onnx_cli import main

    monkeypatch.setenv(pretrained.ONNX_CACHE_ENV, str(tmp_path / "cache"))
    assert onnx._onnx_cache_dir() == pretrained.onnx_cache_dir()  # one cache, named in both modules
    entry = tmp_path / "cache" / "model-0-float32-0123456789ab"
    entry.mkdir(parents=True)
    (tmp_path / "out").symlink_to(entry)
    with pytest.raises(ValueError, match=r"out: it is a symbolic link into the ONNX cache of load_model"):
        onnx.export_onnx(GaussianEncoder.from_pretrained(saved), tmp_path / "out", quantize=None, verify=False)
    assert main(["export", str(saved), str(tmp_path / "out"), "--quantize", "float32", "--overwrite"]) == 2
    assert "into the ONNX cache" in capsys.readouterr().err
    assert os.listdir(entry) == [] and (tmp_path / "out").is_symlink()
    monkeypatch.delenv(pretrained.ONNX_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx._onnx_cache_dir() == pretrained.onnx_cache_dir()


def test_a_link_planted_at_an_onnx_cache_entry_is_replaced_and_its_folder_kept(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import load_model
    from kl_retrievers.onnx import OnnxGaussianEncoder, is_onnx_folder

    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "cache"))
    load_model(str(saved), backend="onnx", quantize=None)
    (entry,) = list((tmp_path / "cache").iterdir())
    _io._remove_tree(entry)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work", encoding="utf-8")
    entry.symlink_to(victim)  # planted by another user of a shared cache
    again = load_model(str(saved), backend="onnx", quantize=None)
    assert isinstance(again, OnnxGaussianEncoder) and again.path == entry
    assert sorted(os.listdir(victim)) == ["thesis.tex"]
    assert not entry.is_symlink() and is_onnx_folder(entry)


# ------------------------------------------------------------------ 2. a save that replaces a link judges the link
def test_a_link_a_save_replaces_is_judged_not_what_it_points_to(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "ours").mkdir()
    (tmp_path / "to_mine").symlink_to("mine")
    (tmp_path / "to_ours").symlink_to("ours")
    # the link is what is replaced: neither the folder's entries nor is_ours decide
    with pytest.raises(ValueError, match=r"to_mine: it is a symbolic link \(to mine, a folder\)") as info:
        _io.check_replace_target(tmp_path / "to_mine", is_ours=lambda p: False, what="a model")
    assert "notes.txt" not in str(info.value) and "pass overwrite=True to replace the link" in str(info.value)
    with pytest.raises(ValueError, match=r"to_ours: it is a symbolic link \(to ours, a folder\)"):
        _io.check_replace_target(tmp_path / "to_ours", is_ours=lambda p: True, what="a model")
    _io.check_replace_target(tmp_path / "to_mine", is_ours=lambda p: False, what="a model", overwrite=True)
    # followed, the folder it points to is what is judged
    _io.check_replace_target(tmp_path / "to_ours", is_ours=lambda p: True, what="a model", follow_link=True)
    with pytest.raises(ValueError, match=r"the folder is not empty \(notes.txt\)"):
        _io.check_replace_target(tmp_path / "to_mine", is_ours=lambda p: False, what="a model", follow_link=True)


def test_a_link_to_a_file_a_save_replaces_is_named_and_replaced(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "link").symlink_to("a.txt")
    with pytest.raises(ValueError, match=r"link: it is a symbolic link \(to a.txt, a regular file\)"):
        _io.check_replace_target(tmp_path / "link", is_ours=lambda p: False, what="a model")
    _io.check_replace_target(tmp_path / "link", is_ours=lambda p: False, what="a model", overwrite=True)
    with _io.atomic_dir(tmp_path / "link") as tmp:  # the link is replaced, the file it points to kept
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link" / "new.txt").is_file()
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "link"]


def test_a_checkpoint_folder_that_is_a_link_is_judged_as_a_link(tmp_path: Path) -> None:
    from kl_retrievers.training.cli import check_checkpoint_dir

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text("{}", encoding="utf-8")  # an earlier checkpoint
    (tmp_path / "ck-link").symlink_to("ck")
    with pytest.raises(ValueError, match=r"--checkpoint-dir .*ck-link: .*it is a symbolic link \(to ck, a folder\)"):
        check_checkpoint_dir(str(tmp_path / "ck-link"), tmp_path / "out", [])
    assert check_checkpoint_dir(str(tmp_path / "ck-link"), tmp_path / "out", [], overwrite=True) == tmp_path / "ck-link"


def test_the_onnx_cache_export_check_judges_a_link_it_replaces(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from kl_retrievers.onnx import _check_export_target

    (tmp_path / "a.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "entry").symlink_to("a.txt")
    _check_export_target(tmp_path / "entry", overwrite=True, follow_link=False)  # the link is replaced
    with pytest.raises(ValueError, match=r"entry: it is a symbolic link \(to a.txt\), which this export replaces"):
        _check_export_target(tmp_path / "entry", follow_link=False)
    with pytest.raises(ValueError, match=r"entry \(a symbolic link to .*a\.txt\): it exists and is not a folder"):
        _check_export_target(tmp_path / "entry", overwrite=True)  # followed: what it points to


# ------------------------------------------------------------------ 3. the class of a failed safetensors write
def test_a_safetensors_write_error_has_its_error_numbers_class() -> None:
    def error(text: str) -> OSError:
        return _io.safetensors_write_error(ValueError(text), Path("tmp/w.safetensors"), Path("model"))

    denied = error(DENIED)
    assert type(denied) is PermissionError and denied.errno == errno.EACCES
    assert str(denied) == "cannot save model: writing w.safetensors failed (Permission denied); nothing was replaced"
    missing = error("Error while serializing: I/O error: Os { code: 2, kind: NotFound }")
    assert type(missing) is FileNotFoundError and missing.errno == errno.ENOENT
    full = error("Error while serializing: I/O error: No space left on device (os error 28)")
    assert type(full) is OSError and full.errno == errno.ENOSPC
    other = error("Error while serializing: something else")
    assert type(other) is OSError and other.errno is None and "something else" in str(other)


def test_a_denied_safetensors_write_raises_permission_error_from_the_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.numpy

    def denied(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError(DENIED)

    monkeypatch.setattr(encoder_module, "save_file", denied)
    monkeypatch.setattr(safetensors.numpy, "save_file", denied)
    with pytest.raises(PermissionError) as info:
        make_tiny_encoder().save_pretrained(tmp_path / "model")
    assert info.value.errno == errno.EACCES
    assert str(info.value).startswith(f"cannot save {tmp_path / 'model'}: writing model.safetensors failed")
    with pytest.raises(PermissionError, match=r"g\.safetensors: writing g\.safetensors failed \(Permission denied\)"):
        _io.save_gaussians(tmp_path / "g.safetensors", random_gaussians(2, 3))
    assert list(tmp_path.iterdir()) == []  # no temporary copy left behind
