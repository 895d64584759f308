"""An unknown ``index_params`` key in a saved ``KLStore``'s config.json names who could have written it.

Before, the hint was always "a newer release's store? upgrade kl-retrievers", even for a store written by this very
version (which writes no such key: the file was edited or is damaged).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers._io import library_version
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore, StoreFormatError


def _saved_with(tmp_path: Path, writer: str | None) -> Path:
    """A saved flat store whose config.json holds an unknown ``index_params`` key and records ``writer``."""
    rng = np.random.default_rng(0)
    store = KLStore()
    store.add(gaussians=Gaussians(rng.normal(size=(5, 3)), np.ones((5, 3))), ids=[f"d{i}" for i in range(5)])
    folder = tmp_path / "store"
    store.save(folder)
    config = json.loads((folder / "config.json").read_text())
    config["index_params"]["warp_factor"] = 9
    if writer is None:
        config.pop("library_version", None)
    else:
        config["library_version"] = writer
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _refusal(folder: Path) -> str:
    with pytest.raises(StoreFormatError, match=r"field 'index_params' has unknown key\(s\) \['warp_factor'\]") as info:
        KLStore.load(folder)
    return str(info.value).split("config.json: ", 1)[1]  # the folder's name holds the test's name


@pytest.mark.parametrize("writer", [library_version(), "0.0.1"])
def test_a_writer_not_newer_than_this_release_means_an_edited_or_damaged_file(tmp_path: Path, writer: str) -> None:
    message = _refusal(_saved_with(tmp_path, writer))
    assert f"written by kl-retrievers {writer}, not a later version than this one ({library_version()})" in message
    assert "the file was edited or is damaged" in message
    assert "upgrade" not in message and "newer" not in message


def test_a_newer_writer_asks_for_an_upgrade(tmp_path: Path) -> None:
    message = _refusal(_saved_with(tmp_path, "999.0"))
    assert f"written by kl-retrievers 999.0, this is {library_version()}" in message
    assert "a newer release's store? upgrade kl-retrievers" in message


@pytest.mark.parametrize("writer", [None, "not a version"])
def test_an_unknown_writer_names_both_causes(tmp_path: Path, writer: str | None) -> None:
    message = _refusal(_saved_with(tmp_path, writer))
    assert "a newer release's store, or an edited or damaged config.json" in message
