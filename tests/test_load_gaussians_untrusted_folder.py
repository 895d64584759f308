"""``load_gaussians`` refuses what ``save_gaussians`` never writes, with a ValueError naming the file.

A folder whose ``mean.npy`` (or ``ids.json``) is a symbolic link to a file elsewhere was read (``KLStore.load``
refuses such a link); integer, boolean and float16 arrays were converted to floats without a word; an ``.npy``
header declaring a huge shape over a few bytes was allocated before its data was read; and an ``ids.json`` or
``config.json`` nested deeper than the JSON parser goes raised ``RecursionError`` though the docstring promises
``ValueError``. Float32 and float64 arrays (what ``save_gaussians`` writes) load as before, and a link to a file in
the folder itself is still followed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from conftest import random_gaussians
from kl_retrievers import load_gaussians, save_gaussians

IDS = ["a", "b", "c"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return save_gaussians(tmp_path / "g", random_gaussians(3, 4, seed=0, dtype=np.float32), ids=IDS)


needs_links = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")


@needs_links
@pytest.mark.parametrize("name", ["mean.npy", "var.npy", "ids.json", "config.json"])
def test_a_link_out_of_the_folder_is_refused(folder: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    (folder / name).rename(outside)
    os.symlink(outside, folder / name)
    with pytest.raises(ValueError, match=f"{name} resolves to .*elsewhere/{name}, outside the saved Gaussians folder"):
        load_gaussians(folder)


@needs_links
def test_a_link_to_a_file_in_the_folder_itself_is_followed(folder: Path) -> None:
    (folder / "var.npy").rename(folder / "var-kept.npy")
    os.symlink("var-kept.npy", folder / "var.npy")
    g, ids = load_gaussians(folder)
    assert g.var.shape == (3, 4) and ids == IDS


@pytest.mark.parametrize("dtype", ["<i8", "|b1", "<f2", "<c8", "<u1"])
@pytest.mark.parametrize("name", ["mean.npy", "var.npy"])
def test_arrays_other_than_float32_or_float64_are_refused(folder: Path, name: str, dtype: str) -> None:
    np.save(folder / name, np.ones((3, 4), dtype=dtype))
    with pytest.raises(ValueError, match=rf"{name} holds {np.dtype(dtype)} values; saved Gaussians are float32 or"):
        load_gaussians(folder)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_and_float64_load_as_they_are(tmp_path: Path, dtype: type) -> None:
    g = random_gaussians(3, 4, seed=1, dtype=dtype)
    for path in (tmp_path / "g", tmp_path / "g.safetensors"):
        loaded, _ = load_gaussians(save_gaussians(path, g))
        assert loaded.mean.dtype == np.dtype(dtype) and np.array_equal(loaded.mean, g.mean)


def test_a_safetensors_file_of_integers_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "g.safetensors"
    save_file({"mean": np.zeros((2, 3), np.int64), "var": np.ones((2, 3), np.float32)}, str(path))
    with pytest.raises(ValueError, match="its 'mean' tensor\\) holds int64 values"):
        load_gaussians(path)


def test_a_header_declaring_more_than_the_file_holds_is_refused_before_loading(folder: Path) -> None:
    with open(folder / "mean.npy", "wb") as fh:  # 2^50 bytes declared: np.load would try to allocate them
        npy_format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (1 << 24, 1 << 24)})
        fh.write(b"\0" * 48)
    with pytest.raises(ValueError, match=r"mean.npy has \d+ bytes, not the \d+ of its header"):
        load_gaussians(folder)


def test_a_file_that_is_no_npy_is_named(folder: Path) -> None:
    (folder / "var.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="cannot read .*var.npy"):
        load_gaussians(folder)


DEEP = "[" * 100_000 + "]" * 100_000


def test_ids_nested_too_deeply_are_a_value_error(folder: Path, tmp_path: Path) -> None:
    (folder / "ids.json").write_text(DEEP)
    with pytest.raises(ValueError, match="ids.json nests JSON arrays or objects too deeply to read"):
        load_gaussians(folder)
    from safetensors.numpy import save_file

    path = tmp_path / "g.safetensors"
    save_file({"mean": np.zeros((2, 3), np.float32), "var": np.ones((2, 3), np.float32)}, str(path), {"ids": DEEP})
    with pytest.raises(ValueError, match="its 'ids' header\\) nests JSON arrays or objects too deeply"):
        load_gaussians(path)


def test_a_config_nested_too_deeply_is_a_value_error(folder: Path) -> None:
    (folder / "config.json").write_text(DEEP)
    with pytest.raises(ValueError, match="config.json nests JSON arrays or objects too deeply to read"):
        load_gaussians(folder)


def test_a_config_the_parser_reads_but_nested_deeper_than_its_checks_go_is_no_recursion_error(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.pop("metadata")
    (folder / "config.json").write_text(json.dumps(config)[:-1] + ', "metadata": ' + "[" * 700 + "]" * 700 + "}")
    try:  # the parser reads 700 levels; the check of its numbers walked them recursively (RecursionError on 3.11)
        load_gaussians(folder)
    except ValueError as exc:
        assert "config.json nests JSON arrays or objects too deeply to read" in str(exc)
