"""`kl-retrievers search` given a hybrid store's own ``hybrid.json`` names the store as a hybrid (as for its folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import random_gaussians
from kl_retrievers.cli import _kl_store_folder
from kl_retrievers.hybrid import KLHybridStore


def test_the_hybrid_config_file_is_refused_as_its_folder_is(tmp_path: Path) -> None:
    store = KLHybridStore(fusion="rrf", stemmer=None)
    store.add(["apple pie", "kiwi tart"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    folder = tmp_path / "hybrid"
    store.save(folder)
    with pytest.raises(ValueError, match="is a KLHybridStore") as by_folder:
        _kl_store_folder(folder)
    with pytest.raises(ValueError, match="is a KLHybridStore") as by_file:
        _kl_store_folder(folder / "hybrid.json")
    assert str(by_file.value) == str(by_folder.value)
    assert str(folder / "kl") in str(by_file.value)
