"""An unknown ``index_params`` key in a saved ``KLStore``'s config.json names who could have written it.

Before, the hint was always "a newer release's store? upgrade kl-retrievers", even for a store written by this very
version (which writes no such key: the file was edited or is damaged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store._format as format_module
from kl_retrievers._io import library_version
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore, StoreFormatError


def _saved_with(tmp_path: Path, writer: Any) -> Path:
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


@pytest.mark.parametrize("writer", ["0.3.0", "0.3", "0.0.1", "0.3.0.dev2"])
def test_a_writer_not_newer_than_this_release_means_an_edited_or_damaged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    monkeypatch.setattr(format_module, "library_version", lambda: "0.3.0")  # a release
    message = _refusal(_saved_with(tmp_path, writer))
    assert f"written by kl-retrievers {writer}, not a later version than this one (0.3.0)" in message
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


@pytest.mark.parametrize(
    ("ours", "writer"), [("0.2.0.dev0", "0.2.0.dev0"), ("0.3.0", "0.3.0+local"), ("0.3.0+local", "0.3.0")]
)
def test_this_very_version_as_a_development_or_local_build_names_both_causes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ours: str, writer: str
) -> None:
    """A later checkout of a development or local build may write a key that this one does not know."""
    monkeypatch.setattr(format_module, "library_version", lambda: ours)
    message = _refusal(_saved_with(tmp_path, writer))
    assert f"written by kl-retrievers {writer}, this is {ours}" in message
    assert "a newer release's store, or an edited or damaged config.json" in message


@pytest.mark.parametrize(("writer", "shown"), [(5, "5"), (None, "None"), (["0.1"], "['0.1']")])
def test_a_writer_of_another_type_is_shown_as_it_is(tmp_path: Path, writer: Any, shown: str) -> None:
    folder = _saved_with(tmp_path, "x")
    config = json.loads((folder / "config.json").read_text())
    config["library_version"] = writer
    (folder / "config.json").write_text(json.dumps(config))
    message = _refusal(folder)
    assert f"written by kl-retrievers {shown}, this is {library_version()}" in message
    assert "a newer release's store, or an edited or damaged config.json" in message


def test_no_recorded_writer_is_unknown(tmp_path: Path) -> None:
    assert "written by kl-retrievers unknown, this is" in _refusal(_saved_with(tmp_path, None))
