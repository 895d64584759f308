"""The environment the package runs in: locale, umask and setgid folders, no home folder, read-only parents,
``~`` paths, symbolic links to saved folders, caches shared between users, ``-W error``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians, write_tiny_beir
from kl_retrievers import _io
from kl_retrievers.encoding_cache import EncodingCache
from kl_retrievers.store import KLStore

_REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def no_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``HOME`` unset and no password-database entry for the user (an arbitrary-uid container, ``env -i``).

    It takes ``tmp_path`` first, so that pytest names its temporary folder while it can still name the user.
    """
    import pwd

    for name in ("HOME", "XDG_CACHE_HOME", "KL_RETRIEVERS_CACHE"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)


# --- 1. a backbone's query prompt is read as UTF-8, whatever the locale ------------------------------------
def test_query_prefix_is_read_as_utf8_under_the_c_locale(tmp_path: Path) -> None:
    prompt = "为这个句子生成表示以用于检索相关文章："
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": prompt}}, ensure_ascii=False), encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIOENCODING"))}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0")
    code = (
        "import kl_retrievers, sys; from kl_retrievers.backbones import default_query_prefix; "
        f"print(kl_retrievers.__file__); print(ascii(default_query_prefix({str(tmp_path)!r}, 'some/zh-model')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=_REPO, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    where, printed = done.stdout.strip().splitlines()[-2:]
    assert Path(where).resolve().is_relative_to(_REPO)  # this checkout's package
    assert printed == ascii(prompt)


# --- 2. a re-saved folder keeps its modes; a new one in a setgid folder keeps the setgid bit -----------------
def test_a_resaved_folder_keeps_the_modes_its_owner_set(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "store"
    _kl_store().save(out)
    assert _mode(out) == 0o755 and _mode(out / "config.json") == 0o644  # a new folder: the umask's
    os.chmod(out, 0o700)
    for entry in out.iterdir():
        if entry.is_file():
            os.chmod(entry, 0o600)
    _kl_store().save(out)
    assert _mode(out) == 0o700
    assert {_mode(entry) for entry in out.iterdir() if entry.is_file()} == {0o600}


def test_a_folder_saved_in_a_setgid_folder_keeps_the_setgid_bit(tmp_path: Path, umask_022: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    with _io.atomic_dir(shared / "saved") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("x", encoding="utf-8")
    for folder in (shared / "saved", shared / "saved" / "sub"):
        assert os.stat(folder).st_mode & stat.S_ISGID, oct(os.stat(folder).st_mode)
        assert _mode(folder) & 0o777 == 0o755
    assert _mode(shared / "saved" / "sub" / "a.txt") == 0o644


# --- 3. no home folder: an optional cache is off with a warning; a required one names its variable -----------
def test_no_home_folder_names_the_cache_variable(no_home: None) -> None:
    with pytest.raises(OSError, match="set KL_RETRIEVERS_ONNX_CACHE to a writable folder"):
        _io.user_cache_dir("KL_RETRIEVERS_ONNX_CACHE", "onnx")


def test_no_home_folder_turns_the_encoding_cache_off(no_home: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.encoding_cache"):
        cache = EncodingCache()
    assert cache.root is None and "encodings are not cached" in caplog.text
    cache.save("documents", {"model": "m"}, ["a"], {"emb": np.zeros((1, 2), dtype=np.float32)})
    assert cache.load("documents", {"model": "m"}, ["a"]) is None


def test_evaluate_without_a_home_folder_runs_uncached(
    no_home: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    make_tiny_encoder().save_pretrained(tmp_path / "model")
    data = write_tiny_beir(tmp_path / "beir")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(data), "--model", str(tmp_path / "model"), "--no-progress", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["queries"] == 3 and "ndcg@10" in record, sorted(record)


# --- 4. a parent that cannot be written (a volume mounted at the store's path) -------------------------------
def test_a_parent_that_cannot_be_written_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "mnt" / "store"
    mount.mkdir(parents=True)

    def denied(final: Path, *, folder: bool) -> tuple[Path, int | None]:
        hidden = _io._sibling(final, "tmp", "0123abcd")
        raise PermissionError(errno.EACCES, "Permission denied", str(hidden))

    monkeypatch.setattr(_io, "_locked_tmp", denied)
    with pytest.raises(PermissionError) as caught, _io.atomic_dir(mount):
        pass
    message = str(caught.value)
    assert not message.startswith("[Errno") and ".store.tmp-" not in message
    assert f"temporary copy beside it in {mount.parent}" in message and "save into a sub-folder" in message
    with pytest.raises(PermissionError, match="save into a sub-folder"):
        _kl_store().save(mount)


# --- 5. a leading ~ is the home folder for the persistence helpers -----------------------------------------
def test_gaussians_paths_expand_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    g = random_gaussians(2, 3)
    assert _io.save_gaussians("~/g", g, ids=["a", "b"]) == home / "g"
    assert _io.save_gaussians("~/g.safetensors", g) == home / "g.safetensors"
    assert _io.load_gaussians("~/g")[1] == ["a", "b"] and len(_io.load_gaussians("~/g.safetensors")[0]) == 2
    (home / "mine").mkdir()
    (home / "mine" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="is not saved Gaussians"):
        _io.save_gaussians("~/mine", g)
    with _io.atomic_dir("~/folder") as tmp:
        (tmp / "a.txt").write_text("x", encoding="utf-8")
    assert (home / "folder" / "a.txt").is_file() and os.listdir(cwd) == []


# --- 6. a save onto a symbolic link replaces the folder it points to and keeps the link ---------------------
def test_a_save_onto_a_link_replaces_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    _kl_store().save(tmp_path / "store-v3")
    (tmp_path / "current").symlink_to("store-v3")
    store = KLStore.load(tmp_path / "current")
    store.add(["c"], gaussians=random_gaussians(1, 4, seed=1), ids=["c"])
    store.save(tmp_path / "current")
    assert (tmp_path / "current").is_symlink() and os.readlink(tmp_path / "current") == "store-v3"
    assert len(KLStore.load(tmp_path / "store-v3")) == 3
    assert sorted(os.listdir(tmp_path)) == ["current", "store-v3"]  # no leftover copy beside either


# --- 7. a shared cache: what cannot be removed is skipped, silently --------------------------------------------
def test_leftovers_that_cannot_be_removed_are_skipped_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EncodingCache(tmp_path / "cache")
    cache.save("gauss-documents", {"m": 1}, ["a"], {"mean": np.zeros((1, 2), dtype=np.float32)})
    entry = cache.entry_dir("gauss-documents", {"m": 1})
    leftover = entry.parent / f".{entry.name}.tmp-0123abcd"  # another user's copy, replaced by this one
    leftover.mkdir()
    (leftover / "mean.npy").write_bytes(b"x")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    monkeypatch.setattr(_io.shutil, "rmtree", lambda *args, **kwargs: None)  # as if permission were denied
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers"):
        assert _io.clean_stale(entry) == []
        assert _io.remove_unless_locked(leftover) is False
        cache.save("gauss-documents", {"m": 2}, ["a"], {"mean": np.zeros((1, 2), dtype=np.float32)})
    assert leftover.is_dir()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "removed" in r.getMessage()]


def test_the_faq_says_how_to_share_a_cache_and_about_fork() -> None:
    faq = " ".join((_REPO / "docs" / "faq.md").read_text(encoding="utf-8").split())
    assert "needs a group they all belong to and `umask 002`" in faq
    assert "use the `spawn` start method" in faq


# --- 8. a warning raised as an error (-W error) is reported as what it is ----------------------------------
def test_a_warning_raised_as_an_error_is_not_an_internal_error(capsys: pytest.CaptureFixture[str]) -> None:
    from kl_retrievers.cli import _run_command

    def command(args: argparse.Namespace) -> int:
        warnings.warn("only 3 judged queries (fewer than 10): the QPP correlations are meaningless", stacklevel=2)
        return 0

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status = _run_command(argparse.Namespace(command="evaluate", func=command))
    err = capsys.readouterr().err
    assert status == 2 and "internal error" not in err and "please report" not in err
    assert "UserWarning raised as an error by the warnings filter" in err and "only 3 judged queries" in err


def _kl_store() -> KLStore:
    store = KLStore()
    store.add(["a", "b"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    return store
