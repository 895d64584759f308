"""Saving into folders that do not exist yet makes each new folder's entry durable in its parent.

:func:`kl_retrievers._io.atomic_dir` and :func:`~kl_retrievers._io.atomic_file` create the missing parents of
their target; each folder created gains an entry in its own parent, which must be synced (``fsync``) once
that entry exists, or a crash after the save could lose the path to the saved copy. Parents that already
existed are not synced again (the check stays cheap).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import record_folder_syncs
from kl_retrievers._io import atomic_dir, atomic_file

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name fds")


def _synced_holding(synced: list[tuple[Path, frozenset[str]]], folder: Path, entry: str) -> bool:
    return any(path == folder and entry in names for path, names in synced)


def _write_folder(target: Path) -> None:
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("hello", encoding="utf-8")


def _write_file(target: Path) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text("hello", encoding="utf-8")


@pytest.mark.parametrize("write", [_write_folder, _write_file], ids=["atomic_dir", "atomic_file"])
def test_each_new_parent_folder_is_synced_into_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Callable[[Path], None]
) -> None:
    root = tmp_path.resolve()
    synced = record_folder_syncs(monkeypatch)
    write(root / "new" / "sub" / "h")
    assert (root / "new" / "sub" / "h").exists()
    missing = [
        f"{folder} (gained {entry})"
        for folder, entry in ((root, "new"), (root / "new", "sub"), (root / "new" / "sub", "h"))
        if not _synced_holding(synced, folder, entry)
    ]
    assert missing == [], f"folders not synced after gaining an entry: {missing}"


@pytest.mark.parametrize("write", [_write_folder, _write_file], ids=["atomic_dir", "atomic_file"])
def test_existing_parents_are_not_synced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Callable[[Path], None]
) -> None:
    root = tmp_path.resolve()
    (root / "old").mkdir()
    synced = record_folder_syncs(monkeypatch)
    write(root / "old" / "h")
    outside = {path for path, _ in synced if not path.is_relative_to(root / "old")}
    assert outside == set(), f"folders synced although nothing was created in them: {sorted(outside)}"
    assert _synced_holding(synced, root / "old", "h")


def test_a_file_in_the_way_is_still_named(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match=r"blocker is a file, but it must be a folder"):
        _write_folder(tmp_path / "blocker" / "new" / "h")
    assert (tmp_path / "blocker").read_text(encoding="utf-8") == "x"
