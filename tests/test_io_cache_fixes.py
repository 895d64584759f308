"""Regression tests for the audit's fixes in ``_io`` (atomic saves, versions) and ``EncodingCache``.

Races are forced deterministically by wrapping ``os.replace`` so another writer's copy
appears at exactly the moment in question; nothing here depends on timing.
"""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers import _io
from kl_retrievers.encoding_cache import EncodingCache

# --- 1. two writers saving the same new target ---------------------------------------------


def _competitor_before(final: Path, *, src_prefix: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make another writer's complete folder appear at ``final`` just before our rename of a ``src_prefix`` path."""
    real_replace = os.replace
    calls = [0]

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(dst) == final and Path(src).name.startswith(src_prefix) and calls[0] == 0:
            calls[0] += 1
            other = final.parent / "other-writer"
            other.mkdir()
            (other / "v").write_text("other")
            real_replace(other, final)  # the other writer's save lands first
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_atomic_dir_new_target_race_last_writer_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "store"
    calls = _competitor_before(final, src_prefix=".store.tmp-", monkeypatch=monkeypatch)
    with _io.atomic_dir(final) as tmp:
        (tmp / "v").write_text("ours")
    assert calls == [1]  # the race really happened
    assert (final / "v").read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_atomic_dir_new_target_race_without_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    final = tmp_path / "store"
    calls = _competitor_before(final, src_prefix=".store.tmp-", monkeypatch=monkeypatch)
    with _io.atomic_dir(final) as tmp:
        (tmp / "v").write_text("ours")
    assert calls == [1]
    assert (final / "v").read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_atomic_dir_race_between_fallback_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target exists; another writer fills the gap between our two fallback renames."""
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    final = tmp_path / "store"
    with _io.atomic_dir(final) as tmp:
        (tmp / "v").write_text("first")
    real_replace = os.replace
    moved_aside = [False]
    calls = [0]

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(src) == final and Path(dst).name.startswith(".store.old-"):
            moved_aside[0] = True
        elif moved_aside[0] and Path(dst) == final and calls[0] == 0:
            calls[0] += 1
            other = tmp_path / "other-writer"
            other.mkdir()
            (other / "v").write_text("other")
            real_replace(other, final)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with _io.atomic_dir(final) as tmp:
        (tmp / "v").write_text("ours")
    assert calls == [1]
    assert (final / "v").read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_atomic_dir_other_replace_errors_still_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "store"
    real_replace = os.replace

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(dst) == final:
            raise OSError(errno.EACCES, "denied", os.fspath(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError), _io.atomic_dir(final) as tmp:
        (tmp / "v").write_text("ours")
    assert not final.exists()


# --- 4. atomic_file onto a folder ----------------------------------------------------------------


def test_atomic_file_onto_folder_names_target_and_leaks_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.mkdir()
    with (
        pytest.raises(IsADirectoryError, match=r"out\.json.*atomic_file writes a file"),
        _io.atomic_file(target) as tmp,
    ):
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert target.is_dir()


def test_atomic_file_failed_replace_removes_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    real_replace = os.replace

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(dst) == target:
            raise OSError(errno.EIO, "disk on fire", os.fspath(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk on fire"), _io.atomic_file(target) as tmp:
        tmp.write_text("{}")
    assert list(tmp_path.iterdir()) == []


# --- 5. permissions fix-up must not follow symlinks --------------------------------------------


def test_permission_fixup_skips_symlinks(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("secret")
    victim.chmod(0o600)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inner.txt").write_text("x")
    (outside / "inner.txt").chmod(0o600)
    with _io.atomic_dir(tmp_path / "saved") as tmp:
        (tmp / "data.txt").write_text("d")
        os.symlink(victim, tmp / "link")
        os.symlink(outside, tmp / "dirlink")
    assert victim.stat().st_mode & 0o777 == 0o600
    assert (outside / "inner.txt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "saved" / "link").is_symlink()


# --- 6. versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("0.1.0rc1", "0.1.0"),
        ("0.1.0.dev3", "0.1.0"),
        ("0.1.0.dev3", "0.1.0a1"),
        ("0.1.0a1", "0.1.0b2"),
        ("0.1.0b2", "0.1.0rc1"),
        ("0.1.0", "0.1.0.post1"),
        ("0.1.0", "0.1.1.dev0"),
        ("0.9", "0.10"),
        ("1.0", "1.0.1"),
    ],
)
def test_version_order(lower: str, higher: str) -> None:
    low, high = _io._version_key(lower), _io._version_key(higher)
    assert low is not None and high is not None
    assert low < high


def test_version_equal_and_invalid() -> None:
    assert _io._version_key("1.0") == _io._version_key("1.0.0") == _io._version_key("1.0.0+local")
    assert _io._version_key("not a version") is None
    assert _io._version_key("") is None


def _warnings_for(saved: str, ours: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(_io, "library_version", lambda: ours)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _io.check_version({"library_version": saved, "format_version": 1}, what="X", format_version=1)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("saved", ["0.1.0rc1", "0.1.0.dev3", "0.1.0", "0.0.9", "garbage"])
def test_check_version_no_false_newer_warning(saved: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _warnings_for(saved, "0.1.0", monkeypatch) == []


@pytest.mark.parametrize(("saved", "ours"), [("0.1.1", "0.1.0"), ("0.1.0", "0.1.0rc1"), ("0.1.0", "0.1.0.dev3")])
def test_check_version_warns_when_newer(saved: str, ours: str, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = _warnings_for(saved, ours, monkeypatch)
    assert len(messages) == 1 and "newer" in messages[0]


# --- 7. a parent that is a file -----------------------------------------------------------------


def test_atomic_dir_parent_is_a_file(tmp_path: Path) -> None:
    parent = tmp_path / "afile"
    parent.write_text("f")
    with pytest.raises(NotADirectoryError, match=r"afile.*must be a folder"), _io.atomic_dir(parent / "sub"):
        pass
    with pytest.raises(NotADirectoryError, match=r"afile.*must be a folder"), _io.atomic_dir(parent / "a" / "b"):
        pass
    assert parent.read_text() == "f"


# --- 2. EncodingCache checksums -----------------------------------------------------------------

KEY = {"model": "m", "max_length": 8}
IDS = ["a", "b"]


def _saved_cache(tmp_path: Path) -> tuple[EncodingCache, Path]:
    cache = EncodingCache(tmp_path)
    cache.save("documents", KEY, IDS, {"emb": np.arange(6, dtype=np.float32).reshape(2, 3)})
    return cache, cache.entry_dir("documents", KEY)


def test_cache_roundtrip_still_hits(tmp_path: Path) -> None:
    cache, _ = _saved_cache(tmp_path)
    got = cache.load("documents", KEY, IDS)
    assert got is not None
    np.testing.assert_array_equal(got["emb"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert cache.hits == 1


def test_cache_flipped_byte_is_a_miss_and_removed(tmp_path: Path) -> None:
    cache, folder = _saved_cache(tmp_path)
    npy = folder / "emb.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0x01
    npy.write_bytes(bytes(data))
    assert cache.load("documents", KEY, IDS) is None
    assert not folder.exists()
    assert cache.misses == 1


def test_cache_empty_arrays_table_is_a_miss(tmp_path: Path) -> None:
    cache, folder = _saved_cache(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta["arrays"] = {}
    (folder / "meta.json").write_text(json.dumps(meta))
    assert cache.load("documents", KEY, IDS) is None
    assert not folder.exists()


def test_cache_entry_from_before_checksums_is_adopted_once_then_checked(tmp_path: Path) -> None:
    """Entries written before checksums (hours of encodings) pass the old checks and get their checksums then."""
    cache, folder = _saved_cache(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    recorded = meta.pop("sha256")  # what entries written before checksums look like
    (folder / "meta.json").write_text(json.dumps(meta))
    got = cache.load("documents", KEY, IDS)
    assert got is not None and cache.hits == 1
    assert json.loads((folder / "meta.json").read_text())["sha256"] == recorded
    npy = folder / "emb.npy"  # from now on a flipped byte is caught
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0x01
    npy.write_bytes(bytes(data))
    assert cache.load("documents", KEY, IDS) is None
    assert not folder.exists()


def test_an_old_entry_that_fails_the_old_checks_is_still_a_miss(tmp_path: Path) -> None:
    cache, folder = _saved_cache(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta.pop("sha256")
    meta["arrays"]["emb"] = [2, 4]  # a shape the file does not have
    (folder / "meta.json").write_text(json.dumps(meta))
    assert cache.load("documents", KEY, IDS) is None
    assert not folder.exists()


# --- 3. EncodingCache.save only warns and leaves no temp folders --------------------------------


def test_cache_save_bad_array_warns_and_cleans(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = EncodingCache(tmp_path)
    cache.save("x", KEY, IDS, {"emb": np.array([object(), object()])})  # np.save refuses to pickle
    assert "could not write encoding cache" in caplog.text
    assert list(tmp_path.iterdir()) == []
    assert cache.load("x", KEY, IDS) is None


def test_cache_save_removes_old_temp_folders_only(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-killedsave"
    stale.mkdir()
    (stale / "emb.npy").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".tmp-running"
    fresh.mkdir()
    _, folder = _saved_cache(tmp_path)
    assert not stale.exists()
    assert fresh.is_dir()  # may belong to a save still running
    assert folder.is_dir()


@pytest.mark.parametrize("kind", ["../escape", "a/b", "", "x.y", 3])
def test_cache_kind_must_be_a_plain_folder_name(tmp_path: Path, kind: object) -> None:
    """A kind like "../x" put the entry folder outside the cache root."""
    cache = EncodingCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="kind must be a plain name"):
        cache.save(kind, KEY, IDS, {"emb": np.zeros((2, 3), dtype=np.float32)})  # type: ignore[arg-type]
    assert not (tmp_path / "escape").exists()
