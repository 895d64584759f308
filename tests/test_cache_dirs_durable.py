"""The caches and downloads create their folders with :func:`kl_retrievers._io.make_dirs`: each new folder is synced
(``fsync``) into its parent once it holds the new entry, so a crash after a cache write cannot lose the path to it.

Covered: the encoding cache (:class:`~kl_retrievers.encoding_cache.EncodingCache`), the training feature cache
(:class:`~kl_retrievers.training.features.FeatureCache`), the teacher's score cache
(:class:`~kl_retrievers.training.teacher.CrossEncoderTeacher`) and :func:`~kl_retrievers.datasets.fetch_beir`'s
download root and the folders it unpacks.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import folders_not_synced, record_folder_syncs

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name fds")


def test_encoding_cache_syncs_the_folders_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.encoding_cache import EncodingCache

    root = tmp_path.resolve()
    cache = EncodingCache(root / "new" / "cache")
    synced = record_folder_syncs(monkeypatch)
    cache.save("docs", {"model": "m"}, ["a"], {"mean": np.ones((1, 2), np.float32)})
    loaded = cache.load("docs", {"model": "m"}, ["a"])
    assert loaded is not None and np.array_equal(loaded["mean"], np.ones((1, 2), np.float32))
    assert folders_not_synced(synced, root, "new", "cache", cache.entry_dir("docs", {"model": "m"}).name) == []


def test_feature_cache_syncs_the_folders_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.training.features import FeatureCache, Features

    root = tmp_path.resolve()
    cache = FeatureCache(root / "new" / "features", "fp")
    synced = record_folder_syncs(monkeypatch)
    cache.add([b"k" * 32], Features(np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32)))
    assert any(p.name.startswith("keys-") for p in (root / "new" / "features" / "fp").iterdir())
    assert folders_not_synced(synced, root, "new", "features", "fp") == []


def test_teacher_score_cache_syncs_the_folders_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.training.teacher import CrossEncoderTeacher

    root = tmp_path.resolve()
    teacher = CrossEncoderTeacher.__new__(CrossEncoderTeacher)  # the cache alone: no cross-encoder needed
    teacher.cache_dir = root / "new" / "teacher" / "identity"
    synced = record_folder_syncs(monkeypatch)
    teacher._save([b"k" * 32], [0.5])
    assert any(p.name.startswith("scores-") for p in teacher.cache_dir.iterdir())
    assert folders_not_synced(synced, root, "new", "teacher", "identity") == []


def test_fetch_beir_syncs_the_folders_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.datasets import fetch_beir

    for env in ("KL_RETRIEVERS_DATA", "KL_RETRIEVERS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(env, raising=False)
    archive = tmp_path / "scifact.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("scifact/corpus.jsonl", json.dumps({"_id": "d1", "title": "", "text": "bees"}) + "\n")
        zf.writestr("scifact/queries.jsonl", json.dumps({"_id": "q1", "text": "bees?"}) + "\n")
        zf.writestr("scifact/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
        zf.writestr("scifact/extra/deeper/notes.txt", "a nested folder of the archive")
    root = tmp_path.resolve()
    synced = record_folder_syncs(monkeypatch)
    folder = fetch_beir("scifact", root / "new" / "data", url=archive.as_uri(), timeout=10)
    assert folder == root / "new" / "data" / "scifact" and (folder / "extra" / "deeper" / "notes.txt").is_file()
    assert folders_not_synced(synced, root, "new", "data", "scifact") == []
    # the nested folders were made in the temporary copy swapped into place: "extra" synced holding "deeper"
    assert any(path.name == "extra" and "deeper" in names for path, names in synced)
