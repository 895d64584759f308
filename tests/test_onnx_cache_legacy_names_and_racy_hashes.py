"""ONNX cache entries under this version's earlier name, and the "racy clean" rule of ``source_sha256``'s memo.

- ``load_model(..., backend="onnx")`` named its cache entries ``source_sha256(source, recipe)[:12]`` before they
  were named by ``_cache_digest``, with the same library version: such an entry, when it is an export of these
  very files, is used (no export, so no torch needed) rather than orphaned; one of other files is not.
- ``source_sha256`` keeps no digest while a file's modification or status-change time is within 2 s of now: on a
  file system with coarse timestamps an in-place edit of the same size in that tick leaves every stamp as it was.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import kl_retrievers.hub as hub
import kl_retrievers.onnx as onnx_module
import kl_retrievers.pretrained as pretrained
from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers._io import library_version
from kl_retrievers.onnx import EXPORT_RECIPE, export_onnx, onnx_runtime

QUERY = ["hello world"]


def _legacy_name(source: Path, quantize: str) -> str:
    """The name the entry had before ``_cache_digest``: the source hashed after the export recipe."""
    recipe = f"{EXPORT_RECIPE}-onnxruntime{onnx_runtime().__version__}"
    return f"{source.name}-{library_version()}-{quantize}-{hub.source_sha256(source, recipe)[:12]}"


class _NoExport(AssertionError):
    pass


def _refuse_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(encoder: Any, folder: Any, **kwargs: Any) -> Path:
        raise _NoExport(f"exported into {folder}")

    monkeypatch.setattr(onnx_module, "_export_onnx", refuse)


def test_an_entry_under_the_earlier_name_is_used_without_exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(cache))
    source = make_tiny_encoder(dim=6, seed=3).save_pretrained(tmp_path / "enc")
    torch_encoder = GaussianEncoder.from_pretrained(source)
    legacy = cache / _legacy_name(source, "float32")
    # as the earlier name's export recorded it: the files' own hash (no recipe)
    made = export_onnx(
        torch_encoder, tmp_path / "made", quantize=None, verify=False, source_sha256=hub.source_sha256(source)
    )
    cache.mkdir()
    made.rename(legacy)  # export_onnx refuses the cache itself: what load_model wrote there is moved in
    _refuse_exports(monkeypatch)
    monkeypatch.setattr(pretrained, "_has_torch", lambda: False)  # as without torch: only an export would need it
    loaded = load_model(os.fspath(source), backend="onnx", quantize=None)
    assert loaded.path == legacy
    assert sorted(p.name for p in cache.iterdir()) == [legacy.name]  # nothing exported beside it
    np.testing.assert_allclose(
        loaded.encode_queries(QUERY).mean, torch_encoder.encode_queries(QUERY).mean, rtol=1e-4, atol=1e-5
    )


def test_an_entry_under_the_earlier_name_of_other_files_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(cache))
    source = make_tiny_encoder(dim=6, seed=3).save_pretrained(tmp_path / "enc")
    other = make_tiny_encoder(dim=6, seed=4).save_pretrained(tmp_path / "other")
    legacy = cache / _legacy_name(source, "float32")
    made = export_onnx(  # another model's export, moved to this model's earlier entry name
        GaussianEncoder.from_pretrained(other),
        tmp_path / "made",
        quantize=None,
        verify=False,
        source_sha256=hub.source_sha256(other),
    )
    cache.mkdir()
    made.rename(legacy)
    _refuse_exports(monkeypatch)
    with pytest.raises(_NoExport):
        load_model(os.fspath(source), backend="onnx", quantize=None)


# ------------------------------------------------------------------ source_sha256's memo: git's "racy clean"


def _fresh(folder: Path) -> str:
    h = hashlib.sha256(b"")
    for name in hub._SOURCE_FILES:
        if (folder / name).is_file():
            h.update(name.encode())
            h.update((folder / name).read_bytes())
    return h.hexdigest()


def test_a_file_stamped_now_is_not_memoised_and_an_old_one_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "enc"
    folder.mkdir()
    config = folder / "config.json"
    config.write_bytes(b'{"dim": 6}')
    tick = 1_700_000_000 * 10**9  # a coarse file system: every change in this second is stamped with it
    real_stat = Path.stat

    def coarse_stat(self: Path, *args: Any, **kwargs: Any) -> Any:
        info = real_stat(self, *args, **kwargs)
        if self.parent != folder:
            return info
        return SimpleNamespace(
            st_mode=info.st_mode, st_size=info.st_size, st_ino=info.st_ino, st_mtime_ns=tick, st_ctime_ns=tick
        )

    monkeypatch.setattr(Path, "stat", coarse_stat)
    clock = [tick + 500_000_000]  # half a second after the file was stamped
    monkeypatch.setattr(hub, "time", SimpleNamespace(time_ns=lambda: clock[0]), raising=False)
    reads: Counter[str] = Counter()
    real_read = hub._hash_file_into

    def counting(h: Any, file: Path) -> None:
        reads[file.name] += 1
        real_read(h, file)

    monkeypatch.setattr(hub, "_hash_file_into", counting)

    assert hub.source_sha256(folder) == _fresh(folder)
    with config.open("r+b") as fh:  # edited in place, same size, in the same tick: every stamp as it was
        fh.write(b'{"dim": 7}')
    assert hub.source_sha256(folder) == _fresh(folder)  # read again, not the digest of the old bytes
    assert reads["config.json"] == 2

    clock[0] = tick - 5 * 10**9  # stamped ahead of this clock (another machine's): not trusted either
    hub.source_sha256(folder)
    assert reads["config.json"] == 3

    clock[0] = tick + 10 * 10**9  # long after the last change: kept
    assert hub.source_sha256(folder) == _fresh(folder)
    assert hub.source_sha256(folder) == _fresh(folder)
    assert reads["config.json"] == 4
