"""A default ONNX cache that cannot be written does not stop ``load_model(..., backend="onnx")``.

- A default cache folder that exists but cannot be written (a read-only home or file system, one owned by another
  user), or that cannot be created (a file along its path), or that cannot be named (no home folder): the export goes
  into a private temporary folder of the process (``tempfile.mkdtemp``), with one WARNING naming the cache, the
  fallback and ``KL_RETRIEVERS_ONNX_CACHE``; a second load in the process uses that export, without a second warning.
- A folder that ``KL_RETRIEVERS_ONNX_CACHE`` names and that cannot be written is an error naming it and the variable
  (a typo there would otherwise make every process export again); an export it holds still loads.
- A read-only cache holding the model's export loads it, writing nothing (no lock file, no fallback).
- A read-only cache entry that is not used (it does not load) is logged naming the temporary folder exported into,
  not "exporting it again" (nothing is written into the cache).
- Neither the cache nor a temporary folder writable: an error naming both and the variable.
- The temporary folder is removed when the process ends (by the process that made it, not a forked child); one a
  cleaner removed meanwhile is made anew, with a WARNING naming the new one.

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


def _default_cache_under(xdg: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default ONNX cache (``KL_RETRIEVERS_ONNX_CACHE`` unset) under ``XDG_CACHE_HOME=xdg``."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(xdg))
    return xdg / "kl_retrievers" / "onnx"


@pytest.fixture
def default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default ONNX cache under ``XDG_CACHE_HOME=tmp_path/xdg``, not made."""
    return _default_cache_under(tmp_path / "xdg", monkeypatch)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A file where a folder is wanted: no user, root included, can create a folder below it."""
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    return tmp_path / "a-file"


@pytest.fixture
def uncreatable_cache(a_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default ONNX cache under ``XDG_CACHE_HOME=a_file``: a folder that cannot be created."""
    return _default_cache_under(a_file, monkeypatch)


@pytest.fixture
def chosen_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ONNX cache ``KL_RETRIEVERS_ONNX_CACHE`` names: ``tmp_path/cache``, not made."""
    monkeypatch.setenv(ENV, os.fspath(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tiny_encoder(dim=6, seed=5).save_pretrained(tmp_path / "encoder")


def _load(source: Path) -> Any:
    """``source`` loaded with the ONNX backend, float32 (exported into the cache, or found there)."""
    return load_model(os.fspath(source), backend="onnx", quantize=None)


def _load_twice(source: Path, caplog: pytest.LogCaptureFixture) -> tuple[Any, Any]:
    """``source`` loaded twice in a row (:func:`_load`), the WARNINGs of both loads captured."""
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        return _load(source), _load(source)


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


@pytest.fixture(autouse=True)
def restore_modes(tmp_path: Path) -> Iterator[None]:
    """Make everything under ``tmp_path`` writable again afterwards, so that pytest can remove it (``_read_only``)."""
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


def test_an_unwritable_default_cache_exports_into_a_temporary_folder_with_one_warning(
    default_cache: Path,
    source: Path,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = default_cache
    cache.mkdir(parents=True)
    _read_only(cache, monkeypatch)
    exports = _count_exports(monkeypatch)
    encoder, again = _load_twice(source, caplog)
    (private,) = private_tmp.iterdir()
    assert encoder.path.parent == private and private.name.startswith("kl_retrievers-onnx-")
    assert again.path == encoder.path and len(exports) == 1  # the second load used the first one's export
    assert list(cache.iterdir()) == []
    (warning,) = _fallback_warnings(caplog)  # one, for both loads
    assert str(cache) in warning and str(private) in warning and ENV in warning, warning
    means = encoder.encode_documents(["a short text", "another one"]).mean
    assert means.shape == (2, 6) and np.isfinite(means).all()


def test_a_default_cache_folder_that_cannot_be_created_falls_back_too(
    uncreatable_cache: Path, source: Path, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file along the cache's path: no user, root included, can create the folder."""
    cache = uncreatable_cache
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = _load(source)
    assert encoder.path.parent.parent == private_tmp
    (warning,) = _fallback_warnings(caplog)
    assert str(cache) in warning and ENV in warning, warning


def test_no_cache_folder_named_exports_into_a_temporary_folder(
    no_home: None, source: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = _load(source)
    assert encoder.path.parent.parent == private_tmp
    (warning,) = _fallback_warnings(caplog)
    assert "home folder is unknown" in warning and ENV in warning, warning


def test_a_read_only_cache_holding_the_export_loads_it_writing_nothing(
    chosen_cache: Path,
    source: Path,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = chosen_cache
    (entry,) = [_load(source).path]
    before = sorted((os.fspath(p.relative_to(cache)), p.stat().st_mtime_ns) for p in cache.rglob("*"))
    _read_only(cache, monkeypatch)
    exports = _count_exports(monkeypatch)

    def no_lock(path: Any, *, purpose: str) -> Any:
        raise AssertionError(f"a lock was taken for {purpose}")

    monkeypatch.setattr(onnx_module, "lock_file", no_lock)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = _load(source)
    assert encoder.path == entry and exports == []
    assert sorted((os.fspath(p.relative_to(cache)), p.stat().st_mtime_ns) for p in cache.rglob("*")) == before
    assert list(private_tmp.iterdir()) == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kl_retrievers")] == []


def test_neither_the_cache_nor_a_temporary_folder_writable_is_an_error_naming_both(
    a_file: Path, uncreatable_cache: Path, source: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = uncreatable_cache
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(a_file / "tmp"))
    with pytest.raises(OSError, match="no temporary folder can be made") as caught:
        _load(source)
    assert str(cache) in str(caught.value) and f"set {ENV} to a writable folder" in str(caught.value)


#: A process loading a model through an unwritable cache (a file along its path): it prints the export's folder.
_CHILD = textwrap.dedent(
    """
    import sys
    from kl_retrievers import load_model

    print(load_model(sys.argv[1], backend="onnx", quantize=None).path)
    """
)


def test_the_temporary_folder_is_removed_when_the_process_ends(tmp_path: Path, a_file: Path, source: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(XDG_CACHE_HOME=os.fspath(a_file), TMPDIR=os.fspath(temp))
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


def test_a_temporary_folder_removed_meanwhile_is_made_anew_with_a_warning_naming_it(
    uncreatable_cache: Path, source: Path, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleaner of the temporary folder (systemd-tmpfiles, tmpreaper) removed it while the process ran: the warning
    that named it would otherwise be the last word on where the exports go."""
    first = _load(source).path.parent
    shutil.rmtree(first)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        again = _load(source).path.parent
    assert again != first and again.parent == private_tmp and again.is_dir()
    (warning,) = _fallback_warnings(caplog)
    assert f"the temporary folder {again} instead" in warning and str(first) in warning and ENV in warning, warning


def test_an_unwritable_folder_the_variable_names_is_an_error_naming_both(
    tmp_path: Path,
    a_file: Path,
    source: Path,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Set explicitly, the variable is the user's choice: a typo or a read-only folder there fails early, rather than
    making every process export into a temporary folder of its own."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    _read_only(read_only, monkeypatch)
    exports = _count_exports(monkeypatch)
    for cache in (a_file / "onnx", read_only):
        monkeypatch.setenv(ENV, os.fspath(cache))
        with pytest.raises(OSError, match=f"{ENV} names the ONNX cache") as caught:
            _load(source)
        message = str(caught.value)
        assert str(cache) in message and "set it to a writable folder, or unset it" in message, message
    assert exports == [] and list(private_tmp.iterdir()) == []


def _stale_read_only_entry(cache: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model's entry in ``cache``, exported there, then edited (its graph no longer the recorded one: it does
    not load) and made read-only with the cache."""
    entry = _load(source).path
    with (entry / "model.onnx").open("ab") as graph:
        graph.write(b"edited")
    _read_only(cache, monkeypatch)
    return entry


def test_an_unused_entry_of_a_read_only_cache_is_logged_naming_the_folder_exported_into(
    default_cache: Path,
    source: Path,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not "exporting it again": the cache cannot be written, so the entry stays as it is and the export goes to the
    temporary folder; a second load uses that export, and says so."""
    entry = _stale_read_only_entry(default_cache, source, monkeypatch)
    exports = _count_exports(monkeypatch)
    encoder, again = _load_twice(source, caplog)
    assert encoder.path.parent.parent == private_tmp and encoder.path.name == entry.name
    assert again.path == encoder.path and exports == [os.fspath(encoder.path)]
    stale = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and str(entry) in r.getMessage()]
    assert len(stale) == 2, stale
    assert "does not load" in stale[0] and stale[0].endswith(f"exporting {source} into {encoder.path}"), stale[0]
    assert stale[1].endswith(f"using this process's export {encoder.path}"), stale[1]
    assert not [m for m in stale if "again" in m], stale


def test_an_unused_entry_of_an_unwritable_cache_the_variable_names_is_logged_before_the_error(
    chosen_cache: Path,
    source: Path,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The error alone would leave open why the export it holds was not used."""
    entry = _stale_read_only_entry(chosen_cache, source, monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"), pytest.raises(OSError, match=ENV):
        _load(source)
    (stale,) = [r.getMessage() for r in caplog.records if r.name.startswith("kl_retrievers")]
    assert stale.startswith(f"the cached ONNX export {entry} does not load") and stale.endswith("not using it"), stale
