"""``encode_corpus``, ``iter_encoded`` and ``load_encoded`` read ``~`` as the home folder, as ``load_model`` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_tiny_encoder
from kl_retrievers.sharded import encode_corpus, iter_encoded, load_encoded


def test_home_folder_paths_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    make_tiny_encoder().save_pretrained(tmp_path / "model")
    (home / "c.txt").write_text("the cat\nsat on\nthe mat\n")
    encode_corpus("~/c.txt", "~/enc", model=str(tmp_path / "model"), shard_size=2, show_progress_bar=False)
    assert (home / "enc").is_dir() and not (tmp_path / "~").exists()
    gaussians, ids = load_encoded("~/enc")
    assert ids == ["0", "1", "2"] and gaussians.mean.shape[0] == 3
    assert [part_ids for part_ids, _ in iter_encoded("~/enc")] == [["0", "1"], ["2"]]
