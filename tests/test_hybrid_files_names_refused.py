"""``hybrid.json``'s ``files`` may name only the files a hybrid save writes (load opens ``folder / name``).

The check refused only names starting with ``/`` or holding ``..``: on Windows a drive name (``C:\\Windows\\win.ini``)
or a UNC name (``\\\\attacker\\share\\f``, whose open contacts the host: an NTLM leak) passed it, and ``folder / name``
was that absolute path. Now any name outside the format's list is refused before a file is opened, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bm25s")

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import HybridFormatError, KLHybridStore


def _saved(tmp_path: Path) -> Path:
    store = KLHybridStore(fusion="rrf", stemmer=None)
    store.add(["running dogs", "cats sleeping"], gaussians=Gaussians(np.zeros((2, 3)), np.ones((2, 3))), ids=["a", "b"])
    return store.save(tmp_path / "h")


@pytest.mark.parametrize(
    "name",
    [
        "C:\\Windows\\win.ini",  # a drive: absolute on Windows
        "\\\\attacker\\share\\f",  # a UNC name
        "C:/Windows/win.ini",
        "//attacker/share/f",
        "kl\\config.json",  # a backslash: a separator on Windows
        "/etc/passwd",
        "kl/../../outside.json",
        "kl/other.json",  # inside the folder, but not a file the format writes
    ],
)
@pytest.mark.parametrize("verify_checksums", [True, False])
def test_a_files_name_that_is_not_a_saved_file_is_refused(tmp_path: Path, name: str, verify_checksums: bool) -> None:
    folder = _saved(tmp_path)
    path = folder / "hybrid.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["files"][name] = "0" * 64
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(HybridFormatError, match="is not a file of a hybrid store folder") as info:
        KLHybridStore.load(folder, verify_checksums=verify_checksums)
    assert f"field 'files' names {name!r}" in str(info.value)
    assert "'kl/config.json'" in str(info.value)  # what it may name


def test_every_name_a_save_writes_is_accepted(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    config = json.loads((folder / "hybrid.json").read_text(encoding="utf-8"))
    assert len(config["files"]) == 9  # the four always listed, and the index's five
    assert KLHybridStore.load(folder).ids == ["a", "b"]
