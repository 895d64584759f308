"""Persistence audit (stop 39): what a save may replace, what a load trusts, and the encoding cache's identity.

1. ``KLStore.save`` replaces only an empty folder or an earlier KLStore save (not any folder holding a
   ``config.json``); a parent that is a file is named.
2. ``save_gaussians`` replaces only an earlier save of Gaussians.
3. ``load_gaussians`` checks ids (a list of strings, one per row), ``kind`` and ``format_version``.
4. A store's ``documents.jsonl`` with a lone surrogate (what ``add`` refuses) is refused on load.
5. Store files and saved Gaussians are standard JSON: no ``NaN`` / ``Infinity`` written, and refused on read.
6. Integer settings FAISS takes as a C ``int`` are bounded (constructor and saved config).
7. The encoding cache's model fingerprint sees the tokenizer.
8. The encoding cache sweeps stale ``.NAME.tmp-*`` / ``.NAME.old-*`` leftovers of killed saves.
9. The encoding cache refuses array names that are not plain names and non-float arrays.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import WORDS, make_tiny_encoder, random_gaussians
from kl_retrievers import _io
from kl_retrievers._io import load_gaussians, save_gaussians
from kl_retrievers.encoding_cache import _STALE_TMP_SECONDS, EncodingCache, model_fingerprint
from kl_retrievers.store._base import StoreFormatError
from kl_retrievers.store.faiss import KLStore


def _store(n: int = 6, **kw: Any) -> KLStore:
    store = KLStore(**kw)
    store.add(gaussians=random_gaussians(n, 4), ids=[f"d{i}" for i in range(n)], metadatas=[{"i": i} for i in range(n)])
    return store


def _strict(text: str) -> Any:
    """``json.loads`` that fails on NaN / Infinity (what other JSON readers do)."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


def _refresh(folder: Path) -> None:
    """Record the current size and SHA-256 of every file a store's config lists (after an edit)."""
    cfg = json.loads((folder / "config.json").read_text())
    for name in cfg["files"]:
        data = (folder / name).read_bytes()
        cfg["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_first_doc(folder: Path, old: str, new: str) -> None:
    lines = (folder / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    assert old in lines[0]
    lines[0] = lines[0].replace(old, new)
    (folder / "documents.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _refresh(folder)


# ---------------------------------------------------------------- 1. KLStore.save replaces only a store folder
def test_store_save_refuses_a_folder_whose_config_json_is_not_a_stores(tmp_path: Path) -> None:
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text('{"dim": 4}')
    (enc / "model.safetensors").write_bytes(b"weights")
    gauss = save_gaussians(tmp_path / "gauss", random_gaussians(2, 4), ids=["a", "b"])
    store = _store()
    for folder in (enc, gauss):
        before = sorted(os.listdir(folder))
        with pytest.raises(ValueError, match=rf"cannot save into {folder}: .*not a KLStore folder.*overwrite=True"):
            store.save(folder)
        assert sorted(os.listdir(folder)) == before  # nothing deleted
    assert (enc / "model.safetensors").read_bytes() == b"weights"
    # an earlier store save and an empty folder are replaced as before; overwrite=True replaces anything
    target = store.save(tmp_path / "s")
    assert len(KLStore.load(_store(9).save(target))) == 9
    (tmp_path / "empty").mkdir()
    assert len(KLStore.load(store.save(tmp_path / "empty"))) == 6
    assert len(KLStore.load(store.save(enc, overwrite=True))) == 6
    assert not (enc / "model.safetensors").exists()


def test_store_save_under_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file is a file, but it must be a folder"):
        _store().save(tmp_path / "file" / "sub")
    assert (tmp_path / "file").read_text() == "x"


# ---------------------------------------------------------------- 2. save_gaussians replaces only saved Gaussians
def test_save_gaussians_refuses_a_folder_that_holds_something_else(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    store = _store().save(tmp_path / "store")
    for folder in (mine, store):
        before = sorted(os.listdir(folder))
        with pytest.raises(ValueError, match=rf"cannot save into {folder}: .*not saved Gaussians"):
            save_gaussians(folder, random_gaussians(2, 4))
        assert sorted(os.listdir(folder)) == before
    assert (mine / "thesis.tex").read_text() == "years of work"
    earlier = save_gaussians(tmp_path / "g", random_gaussians(2, 4), ids=["a", "b"])
    assert load_gaussians(save_gaussians(earlier, random_gaussians(3, 4)))[0].mean.shape == (3, 4)
    assert load_gaussians(save_gaussians(mine, random_gaussians(1, 4), overwrite=True))[0].mean.shape == (1, 4)


# ---------------------------------------------------------------- 3. load_gaussians checks what it reads
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: (p / "ids.json").write_text('["a", 5.0, "c"]'), r"ids.json: id 1 is 5.0 \(float\)"),
        (lambda p: (p / "ids.json").write_text('["a", true, "c"]'), r"ids.json: id 1 is True \(bool\)"),
        (lambda p: (p / "ids.json").write_text('{"a": 1}'), r"ids.json: the ids must be a JSON list"),
        (lambda p: (p / "ids.json").write_text('["a"]'), r"ids.json: holds 1 ids for 3 Gaussians"),
        (lambda p: (p / "ids.json").write_text('["a", "b", NaN]'), r"ids.json is not valid JSON: .*NaN"),
        (lambda p: _edit_json(p / "config.json", kind="something-else"), r"config.json: field 'kind'"),
        (lambda p: _edit_json(p / "config.json", format_version=99), r"format_version 99"),
    ],
)
def test_load_gaussians_checks_ids_kind_and_version(tmp_path: Path, edit: Any, message: str) -> None:
    folder = save_gaussians(tmp_path / "g", random_gaussians(3, 4), ids=["a", "b", "c"])
    edit(folder)
    with pytest.raises(ValueError, match=message):
        load_gaussians(folder)


def _edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_load_gaussians_reads_the_int_ids_an_older_save_wrote_as_strings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The previous save_gaussians took int ids: its folders keep loading, their ids as strings."""
    folder = save_gaussians(tmp_path / "g", random_gaussians(3, 4), ids=["a", "b", "c"])
    (folder / "ids.json").write_text("[0, 1, 2]")
    with caplog.at_level(logging.WARNING):
        assert load_gaussians(folder)[1] == ["0", "1", "2"]
    assert "integer ids" in caplog.text and "ids.json" in caplog.text


def test_load_gaussians_checks_the_safetensors_ids_header(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = save_gaussians(tmp_path / "g.safetensors", random_gaussians(3, 4), ids=["a", "b", "c"])
    assert load_gaussians(path)[1] == ["a", "b", "c"]
    g = random_gaussians(3, 4)
    save_file({"mean": g.mean, "var": g.var}, str(path), metadata={"ids": json.dumps(["only-one"])})
    with pytest.raises(ValueError, match=r"g.safetensors \(its 'ids' header\): holds 1 ids for 3"):
        load_gaussians(path)


def test_save_gaussians_refuses_ids_that_are_not_strings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ids\[0\] is 1 \(int\); every id must be a string"):
        save_gaussians(tmp_path / "g", random_gaussians(2, 4), ids=[1, None])  # type: ignore[list-item]
    assert not (tmp_path / "g").exists()


# ---------------------------------------------------------------- 4. lone surrogates refused on load
@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('"text": null', '"text": "a\\udce9"', "text"),
        ('"id": "d0"', '"id": "\\udce9"', "id"),
        ('"metadata": {"i": 0}', '"metadata": {"i": "\\ud800"}', "metadata"),
    ],
)
def test_load_refuses_a_lone_surrogate_that_add_refuses(tmp_path: Path, old: str, new: str, field: str) -> None:
    folder = _store().save(tmp_path / "s")
    _edit_first_doc(folder, old, new)
    with pytest.raises(StoreFormatError, match=rf"documents.jsonl line 1: field '{field}'.* lone surrogate"):
        KLStore.load(folder)


# ---------------------------------------------------------------- 5. standard JSON only
def test_load_refuses_nan_in_documents_and_config(tmp_path: Path) -> None:
    folder = _store().save(tmp_path / "s")
    _edit_first_doc(folder, '"i": 0', '"i": NaN')
    with pytest.raises(StoreFormatError, match=r"documents.jsonl line 1 is malformed: holds NaN"):
        KLStore.load(folder)
    folder = _store().save(tmp_path / "s2")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["faiss_version"] = float("inf")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError, match=r"config.json: field\(s\) \['faiss_version'\] hold NaN or Infinity"):
        KLStore.load(folder)


def test_store_config_is_standard_json_with_a_non_finite_encoder_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Cfg:
        dim = 4

        def to_dict(self) -> dict[str, Any]:
            return {"dim": 4, "beta": float("nan"), "temp": float("inf")}

    class Enc:
        name_or_path = "fake"
        config = Cfg()

    store = KLStore(encoder=Enc())
    store.add(gaussians=random_gaussians(3, 4), ids=["a", "b", "c"])
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.faiss"):
        folder = store.save(tmp_path / "s")
    saved = _strict((folder / "config.json").read_text())
    assert saved["encoder"]["config"] == {"dim": 4, "beta": None, "temp": None}
    assert "NaN or Infinity" in caplog.text
    # a store an earlier release wrote with NaN in encoder.config (record only) still loads, with a warning
    saved["encoder"]["config"]["beta"] = float("nan")
    (folder / "config.json").write_text(json.dumps(saved))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store._format"):
        assert len(KLStore.load(folder)) == 3
    assert "encoder.config.beta" in caplog.text


def test_save_gaussians_writes_non_finite_metadata_as_null(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"metadata holds NaN or infinite values at \['x'\]"):
        folder = save_gaussians(tmp_path / "g", random_gaussians(2, 4), metadata={"x": float("nan"), "y": 1.5})
    assert _strict((folder / "config.json").read_text())["metadata"] == {"x": None, "y": 1.5}
    assert load_gaussians(folder)[0].mean.shape == (2, 4)


# ---------------------------------------------------------------- 6. integers FAISS takes as a C int
def test_int_settings_above_a_c_int_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"ef_construction must be an integer from 1 to 2147483647 .*got 1099511627776"
    ):
        KLStore(index_type="hnsw", ef_construction=2**40)
    with pytest.raises(ValueError, match=r"nprobe must be an integer from 1 to 2147483647"):
        KLStore(index_type="ivf", nprobe=2**31)
    # a filtered HNSW search asks FAISS for up to 8 x ef_search
    with pytest.raises(ValueError, match=r"ef_search must be an integer from 1 to 268435455"):
        KLStore(index_type="hnsw", ef_search=2**28)
    assert KLStore(index_type="hnsw", ef_search=2**28 - 1).ef_search == 2**28 - 1
    folder = _store().save(tmp_path / "s")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["index_params"]["ef_search"] = 2**40
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError, match=r"'index_params' holds an invalid value: ef_search must be an integer"):
        KLStore.load(folder)


# ---------------------------------------------------------------- 7. the cache fingerprint sees the tokenizer
def test_model_fingerprint_sees_the_tokenizer() -> None:
    from transformers import BertTokenizer

    enc = make_tiny_encoder()
    same = copy.deepcopy(enc)
    assert model_fingerprint(same) == model_fingerprint(enc)
    reordered = copy.deepcopy(enc)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *reversed(WORDS)]
    reordered.tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    text = [" ".join(WORDS[:5])]
    assert not np.allclose(enc.encode_documents(text).mean, reordered.encode_documents(text).mean)
    assert model_fingerprint(reordered) != model_fingerprint(enc)


def test_model_fingerprint_sees_an_onnx_encoders_tokenizer_json() -> None:
    class Onnx:  # the ONNX encoders keep no state_dict; their tokenizer is tokenizer.json's text
        name_or_path = "/models/m-onnx"

        def __init__(self, vocab: dict[str, int], padding: Any = None) -> None:
            self._tokenizer_json = json.dumps({"model": {"vocab": vocab}, "padding": padding})

    a, b = Onnx({"a": 0, "b": 1}), Onnx({"a": 1, "b": 0})
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(Onnx({"a": 0, "b": 1}, padding={"pad_id": 0}))


# ---------------------------------------------------------------- 8. leftovers of killed cache saves are swept
def test_cache_save_sweeps_stale_atomic_dir_leftovers(tmp_path: Path) -> None:
    cache = EncodingCache(tmp_path)
    old = time.time() - 2 * _STALE_TMP_SECONDS
    names = [".gauss-documents-aa.tmp-2d27b247", ".gauss-documents-bb.old-0123abcd", ".gauss-queries-cc.tmp-99"]
    for name in [*names, ".gauss-documents-dd.tmp-ffff0000", ".gauss-documents-ee.tmp-1234abcd"]:
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "mean.npy", np.ones((2, 2), np.float32))
    for name in [*names, ".gauss-documents-ee.tmp-1234abcd"]:
        os.utime(tmp_path / name, (old, old))
    held = _io._lock_fd(tmp_path / ".gauss-documents-ee.tmp-1234abcd", wait=False)  # a save still running
    try:
        cache.save("gauss-documents", {"model": "new"}, ["a"], {"mean": np.ones((1, 3), np.float32)})
    finally:
        _io._unlock_fd(held)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        ".gauss-documents-dd.tmp-ffff0000",
        ".gauss-documents-ee.tmp-1234abcd",
        cache.entry_dir("gauss-documents", {"model": "new"}).name,
    ]  # the recent one and the locked one are kept


# ---------------------------------------------------------------- 9. meta.json names and dtypes
def test_cache_refuses_an_array_name_outside_the_entry(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache, key, ids = EncodingCache(root), {"model": "m"}, ["a", "b"]
    cache.save("gauss-documents", key, ids, {"mean": np.ones((2, 3), np.float32)})
    entry = cache.entry_dir("gauss-documents", key)
    outside = tmp_path / "evil.npy"
    np.save(outside, np.full((2, 3), 42, np.float32))
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"] = {"../../evil": [2, 3]}
    meta["sha256"] = {"../../evil": hashlib.sha256(outside.read_bytes()).hexdigest()}
    (entry / "meta.json").write_text(json.dumps(meta))
    assert cache.load("gauss-documents", key, ids) is None
    assert not entry.exists()  # a corrupt entry: removed
    assert outside.exists()


def test_cache_refuses_arrays_that_are_not_floating_point(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache, key, ids = EncodingCache(tmp_path), {"model": "m"}, ["a", "b"]
    cache.save("gauss-documents", key, ids, {"mean": np.ones((2, 3), np.float32)})
    entry = cache.entry_dir("gauss-documents", key)
    np.save(entry / "mean.npy", np.ones((2, 3), np.int64))
    meta = json.loads((entry / "meta.json").read_text())
    meta["sha256"]["mean"] = hashlib.sha256((entry / "mean.npy").read_bytes()).hexdigest()
    (entry / "meta.json").write_text(json.dumps(meta))
    assert cache.load("gauss-documents", key, ids) is None
    assert not entry.exists()
    caplog.set_level(logging.WARNING, logger="kl_retrievers.encoding_cache")
    cache.save("gauss-documents", key, ids, {"mean": np.ones((2, 3), np.int64)})
    assert "array 'mean' has dtype int64" in caplog.text
    cache.save("gauss-documents", key, ids, {"../x": np.ones((2, 3), np.float32)})
    assert "array names must be plain names" in caplog.text
    assert not entry.exists() and not (tmp_path / "x.npy").exists()
