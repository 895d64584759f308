"""A store loaded without an encoder raises ``ConcurrentSaveError`` as it is when loading its saved model meets one.

The lazy load of the model a store was saved with turned every ``OSError`` into a ``ValueError`` ("a file or network
error", kept for the retry delay), ``from None``: a ``ConcurrentSaveError`` (saves of the model's folder replaced it
during each of the loader's reads) lost its class, which says to load again once the saves pause. It is now raised
unchanged and not kept: the next call loads again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder
from kl_retrievers import ConcurrentSaveError, GaussianEncoder, KLStore

pytest.importorskip("faiss")


def test_a_concurrent_save_of_the_saved_model_is_raised_unchanged_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import pretrained

    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    store = KLStore(GaussianEncoder.from_pretrained(tmp_path / "enc"))
    store.add(["a cat", "tea", "a dog"], ids=["a", "b", "c"])
    store.save(tmp_path / "st")
    real, calls = pretrained.load_model, []

    def busy_once(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise ConcurrentSaveError(f"{name}: saves replaced the folder during each of 4 attempts")
        return real(name, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", busy_once)
    lazy = KLStore.load(tmp_path / "st")
    with pytest.raises(ConcurrentSaveError, match="during each of 4 attempts") as info:
        lazy.search("tea", k=1)
    assert type(info.value) is ConcurrentSaveError and not isinstance(info.value, ValueError)
    assert lazy.search("tea", k=1)[0].id == "b"  # not kept for the retry delay: the next call loads it
    assert len(calls) == 2
