"""``hybrid.json``'s ``files`` must list every file its save wrote, or the folder is refused.

Load checked only the names the table lists, so a table emptied (or with an entry removed) let a changed file load
unchecked: a BM25 index multiplied by 100 served BM25 scores 100 times too large. Now a table lacking one of the
files a save of that config writes (``kl/config.json``, ``bm25/ids.json``, both ``hybrid_save.json`` when it holds a
save token, the five index files when ``bm25_indexed``) is refused naming the missing entries, with or without
``verify_checksums`` (as a KLStore's ``config.json`` lacking a required file). A save from before the save tokens
(no token anywhere, no token file listed) still loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bm25s")

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import HybridFormatError, KLHybridStore

_ALWAYS = ["kl/config.json", "bm25/ids.json"]
_TOKENS = ["kl/hybrid_save.json", "bm25/hybrid_save.json"]
_INDEX = [
    "bm25/data.csc.index.npy",
    "bm25/indices.csc.index.npy",
    "bm25/indptr.csc.index.npy",
    "bm25/vocab.index.json",
    "bm25/params.index.json",
]


def _saved(tmp_path: Path, texts: tuple[str, ...] = ("running dogs bark", "cats sleeping")) -> Path:
    store = KLHybridStore(fusion="rrf", stemmer=None)
    store.add(list(texts), gaussians=Gaussians(np.zeros((2, 3)), np.ones((2, 3))), ids=["a", "b"])
    return store.save(tmp_path / "h")


def _edit_config(folder: Path, change: Any) -> None:
    path = folder / "hybrid.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize("verify_checksums", [True, False])
def test_an_emptied_files_table_is_refused_naming_every_entry(tmp_path: Path, verify_checksums: bool) -> None:
    folder = _saved(tmp_path)
    data = folder / "bm25" / "data.csc.index.npy"
    np.save(data, np.load(data) * 100)  # the audit's reproducer: refused by its checksum while the table is intact
    with pytest.raises(HybridFormatError, match=r"data\.csc\.index\.npy is not the file this save wrote"):
        KLHybridStore.load(folder)
    _edit_config(folder, lambda c: c.__setitem__("files", {}))
    with pytest.raises(HybridFormatError, match="field 'files' has no checksum for") as info:
        KLHybridStore.load(folder, verify_checksums=verify_checksums)
    message = str(info.value)
    assert str(_ALWAYS + _TOKENS + _INDEX) in message
    assert "'bm25_indexed' true, a 'save_token'" in message and "nothing was changed" in message


@pytest.mark.parametrize("name", _ALWAYS + _TOKENS + _INDEX)
def test_a_files_table_without_one_entry_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    folder = _saved(tmp_path)
    _edit_config(folder, lambda c: c["files"].pop(name))
    with pytest.raises(HybridFormatError) as info:
        KLHybridStore.load(folder)
    assert f"field 'files' has no checksum for {[name]!r}" in str(info.value)


def test_a_store_saved_without_an_index_needs_no_index_entries(tmp_path: Path) -> None:
    folder = _saved(tmp_path, ("!!", "??"))  # no token in any text: BM25 has nothing to index
    config = json.loads((folder / "hybrid.json").read_text(encoding="utf-8"))
    assert config["bm25_indexed"] is False and sorted(config["files"]) == sorted(_ALWAYS + _TOKENS)
    assert KLHybridStore.load(folder).ids == ["a", "b"]
    _edit_config(folder, lambda c: c["files"].pop("bm25/ids.json"))
    with pytest.raises(HybridFormatError, match=r"no checksum for \['bm25/ids\.json'\].*'bm25_indexed' false"):
        KLHybridStore.load(folder)


def _without_tokens(folder: Path) -> None:
    """The folder as a save from before the save tokens wrote it: no token anywhere, no token file listed."""
    for half in ("kl", "bm25"):
        (folder / half / "hybrid_save.json").unlink()
    _edit_config(folder, lambda c: (c.pop("save_token"), [c["files"].pop(name) for name in _TOKENS]))


def test_a_save_from_before_the_tokens_loads_and_still_needs_its_other_entries(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    _without_tokens(folder)
    assert KLHybridStore.load(folder).ids == ["a", "b"]
    _edit_config(folder, lambda c: c["files"].pop("bm25/params.index.json"))
    with pytest.raises(HybridFormatError, match=r"no checksum for \['bm25/params\.index\.json'\].*no 'save_token'"):
        KLHybridStore.load(folder, verify_checksums=False)


def test_an_intact_table_loads_with_or_without_checksums(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    for verify in (True, False):
        store = KLHybridStore.load(folder, verify_checksums=verify)
        hits = store.search("dogs", k=1, query_gaussians=Gaussians(np.zeros((1, 3)), np.ones((1, 3))))
        assert hits[0].id == "a" and 0 < hits[0].bm25 < 10
