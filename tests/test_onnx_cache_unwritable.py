"""An ONNX cache that cannot be written does not stop ``load_model(..., backend="onnx")``.

- A cache folder that exists but cannot be written (a read-only home or file system, one owned by another user),
  or that cannot be created (a file along its path), or that cannot be named (no home folder): the export goes into
  a private temporary folder of the process (``tempfile.mkdtemp``), with one WARNING naming the cache, the fallback
  and ``KL_RETRIEVERS_ONNX_CACHE``; a second load in the process uses that export, without a second warning.
- A read-only cache holding the model's export loads it, writing nothing (no lock file, no fallback).
- Neither the cache nor a temporary folder writable: an error naming both and the variable.
- The temporary folder is removed when the process ends (by the process that made it, not a forked child).

Run as root, ``chmod`` does not stop writes: the write check (``kl_retrievers.onnx._check_writable``) is then
made to refuse the folder, so the tests still run and assert.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.onnx as onnx_module
from conftest import make_tiny_encoder
from kl_retrievers import load_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ENV = "KL_RETRIEVERS_ONNX_CACHE"


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's own state of the process's private ONNX cache, made under ``tmp_path`` (``tempfile.tempdir``)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(folder))
    monkeypatch.setattr(onnx_module, "_private_cache", None, raising=False)
    monkeypatch.setattr(onnx_module, "_private_cache_warned", set(), raising=False)
    yield folder


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tiny_encoder(dim=6, seed=5).save_pretrained(tmp_path / "encoder")


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` (and what it holds) unwritable; as root, make the write check refuse it too."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if os.geteuid() == 0:  # root writes whatever the modes say
        real = getattr(onnx_module, "_check_writable", None)

        def refuse(target: Path) -> None:
            if Path(target) == folder:
                raise PermissionError(13, "Permission denied (read-only in this test)", os.fspath(target))
            assert real is not None
            real(target)

        monkeypatch.setattr(onnx_module, "_check_writable", refuse, raising=False)


@pytest.fixture
def restore_modes(tmp_path: Path) -> Iterator[None]:
    """Make everything under ``tmp_path`` writable again afterwards, so that pytest can remove it."""
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _count_exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    exports: list[str] = []
    real_export = onnx_module._export_onnx

    def counting_export(encoder: Any, folder: Any, **kwargs: Any) -> Path:
        exports.append(os.fspath(folder))
        return real_export(encoder, folder, **kwargs)

    monkeypatch.setattr(onnx_module, "_export_onnx", counting_export)
    return exports


def _fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "temporary folder" in r.message]


def test_an_unwritable_cache_exports_into_a_temporary_folder_with_one_warning(
    tmp_path: Path,
    source: Path,
    private_tmp: Path,
    restore_modes: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    _read_only(cache, monkeypatch)
    monkeypatch.setenv(ENV, os.fspath(cache))
    exports = _count_exports(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = load_model(os.fspath(source), backend="onnx", quantize=None)
        again = load_model(os.fspath(source), backend="onnx", quantize=None)
    (private,) = private_tmp.iterdir()
    assert encoder.path.parent == private and private.name.startswith("kl_retrievers-onnx-")
    assert again.path == encoder.path and len(exports) == 1  # the second load used the first one's export
    assert list(cache.iterdir()) == []
    (warning,) = _fallback_warnings(caplog)  # one, for both loads
    assert str(cache) in warning and str(private) in warning and ENV in warning, warning
    means = encoder.encode_documents(["a short text", "another one"]).mean
    assert means.shape == (2, 6) and np.isfinite(means).all()


def test_a_cache_folder_that_cannot_be_created_falls_back_too(
    tmp_path: Path, source: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file along the cache's path: no user, root included, can create the folder."""
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    cache = tmp_path / "a-file" / "onnx"
    monkeypatch.setenv(ENV, os.fspath(cache))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = load_model(os.fspath(source), backend="onnx", quantize=None)
    assert encoder.path.parent.parent == private_tmp
    (warning,) = _fallback_warnings(caplog)
    assert str(cache) in warning and ENV in warning, warning


def test_no_cache_folder_named_exports_into_a_temporary_folder(
    no_home: None, source: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = load_model(os.fspath(source), backend="onnx", quantize=None)
    assert encoder.path.parent.parent == private_tmp
    (warning,) = _fallback_warnings(caplog)
    assert "home folder is unknown" in warning and ENV in warning, warning


def test_a_read_only_cache_holding_the_export_loads_it_writing_nothing(
    tmp_path: Path,
    source: Path,
    private_tmp: Path,
    restore_modes: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV, os.fspath(cache))
    (entry,) = [load_model(os.fspath(source), backend="onnx", quantize=None).path]
    before = sorted((os.fspath(p.relative_to(cache)), p.stat().st_mtime_ns) for p in cache.rglob("*"))
    _read_only(cache, monkeypatch)
    exports = _count_exports(monkeypatch)

    def no_lock(path: Any, *, purpose: str) -> Any:
        raise AssertionError(f"a lock was taken for {purpose}")

    monkeypatch.setattr(onnx_module, "lock_file", no_lock)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = load_model(os.fspath(source), backend="onnx", quantize=None)
    assert encoder.path == entry and exports == []
    assert sorted((os.fspath(p.relative_to(cache)), p.stat().st_mtime_ns) for p in cache.rglob("*")) == before
    assert list(private_tmp.iterdir()) == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kl_retrievers")] == []


def test_neither_the_cache_nor_a_temporary_folder_writable_is_an_error_naming_both(
    tmp_path: Path, source: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    cache = tmp_path / "a-file" / "onnx"
    monkeypatch.setenv(ENV, os.fspath(cache))
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_path / "a-file" / "tmp"))
    with pytest.raises(OSError, match="no temporary folder can be made") as caught:
        load_model(os.fspath(source), backend="onnx", quantize=None)
    assert str(cache) in str(caught.value) and f"set {ENV} to a writable folder" in str(caught.value)


#: A process loading a model through an unwritable cache (a file along its path): it prints the export's folder.
_CHILD = textwrap.dedent(
    """
    import sys
    from kl_retrievers import load_model

    print(load_model(sys.argv[1], backend="onnx", quantize=None).path)
    """
)


def test_the_temporary_folder_is_removed_when_the_process_ends(tmp_path: Path, source: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, ENV: os.fspath(tmp_path / "a-file" / "onnx"), "TMPDIR": os.fspath(temp)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, os.fspath(source)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.parent.parent == temp and "temporary folder" in done.stderr
    assert not path.parent.exists() and list(temp.glob("kl_retrievers-onnx-*")) == []


def test_a_forked_child_does_not_remove_its_parents_temporary_folder(tmp_path: Path) -> None:
    folder = tmp_path / "private"
    folder.mkdir()
    onnx_module._remove_private_cache(folder, os.getpid() + 1)  # made by another process (the parent of a fork)
    assert folder.is_dir()
    onnx_module._remove_private_cache(folder, os.getpid())
    assert not folder.exists()


def test_a_temporary_folder_removed_meanwhile_is_made_anew(
    tmp_path: Path, source: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cleaner of the temporary folder (systemd-tmpfiles, tmpreaper) removed it while the process ran."""
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(ENV, os.fspath(tmp_path / "a-file" / "onnx"))
    first = load_model(os.fspath(source), backend="onnx", quantize=None).path.parent
    shutil.rmtree(first)
    again = load_model(os.fspath(source), backend="onnx", quantize=None).path.parent
    assert again != first and again.parent == private_tmp and again.is_dir()
