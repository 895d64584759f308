"""Fixes from the model-loading audit: safe saves, absolute model references, input checks, checksums, caches."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, KLStore, load_model
from kl_retrievers._config import NotAnEncoderError
from kl_retrievers._encoding import check_texts
from kl_retrievers._io import atomic_dir, save_gaussians


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A tiny random encoder saved in full."""
    return make_tiny_encoder().save_pretrained(tmp_path / "model")


def _backbone_folder(tmp_path: Path, pooling: dict[str, object] | None = None) -> Path:
    """The tiny random BERT as a plain Hugging Face folder, with a sentence-transformers pooling config if given."""
    enc = make_tiny_encoder()
    base = tmp_path / "base"
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    if pooling is not None:
        (base / "1_Pooling").mkdir()
        (base / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return base


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------- 1. save_pretrained never deletes a foreign folder
def test_save_pretrained_refuses_a_user_folder_and_keeps_it(tmp_path: Path) -> None:
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"thesis\.tex.*overwrite=True"):
        make_tiny_encoder().save_pretrained(user)
    assert sorted(os.listdir(user)) == ["thesis.tex"]
    make_tiny_encoder().save_pretrained(user, overwrite=True)
    assert (user / "config.json").is_file() and not (user / "thesis.tex").exists()


def test_save_pretrained_refuses_a_store_folder(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    store = KLStore(enc)
    store.add(["the cat"], ids=["a"])
    store.save(tmp_path / "store")
    with pytest.raises(ValueError, match="is not a saved GaussianEncoder"):
        enc.save_pretrained(tmp_path / "store")
    assert (tmp_path / "store" / "documents.jsonl").is_file()


def test_save_pretrained_accepts_new_empty_and_earlier_encoder_folders(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    enc.save_pretrained(tmp_path / "empty")
    make_tiny_encoder(seed=1).save_pretrained(tmp_path / "new")  # over an earlier encoder
    assert GaussianEncoder.from_pretrained(tmp_path / "empty").config == enc.config


def test_bge_conversion_refuses_a_user_folder(tmp_path: Path) -> None:
    from kl_retrievers.backbones.bge import convert_int8_bert_onnx

    source = tmp_path / "model.onnx"
    source.write_bytes(b"not checked before the target")
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"notes\.txt.*conversion\.json"):
        convert_int8_bert_onnx(source, out, expected_sha256=None, tokenizer_dir=tmp_path / "no-tokenizer")
    assert (out / "notes.txt").read_text() == "precious"
    (out / "notes.txt").unlink()
    (out / "conversion.json").write_text("{}")  # an earlier conversion: the target check passes
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        convert_int8_bert_onnx(source, out, expected_sha256=None, tokenizer_dir=tmp_path / "no-tokenizer")


# ---------------------------------------------------------------- 2. a relative folder is recorded as an absolute path
def test_relative_model_folder_is_recorded_as_an_absolute_path(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = str(saved.resolve())
    assert load_model("model", backend="torch").name_or_path == expected
    assert GaussianEncoder.from_pretrained("model").name_or_path == expected
    assert GaussianEncoder.from_pretrained("./model").name_or_path == expected
    _backbone_folder(tmp_path)
    assert GaussianEncoder.from_backbone("base", dim=8).name_or_path == str((tmp_path / "base").resolve())


def test_relative_model_folder_is_absolute_on_the_onnx_backend(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "onnx-cache"))
    monkeypatch.chdir(tmp_path)
    assert load_model("model", backend="onnx", quantize=None).name_or_path == str(saved.resolve())


# ---------------------------------------------------------------- 3. a bundled name shadowing a local folder warns
def test_bundled_name_over_a_local_folder_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm-gauss-soup").mkdir()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        encoder = load_model("minilm-gauss-soup", backend="onnx")
    assert encoder.name_or_path == "kl_retrievers:minilm-gauss-soup"
    assert "./minilm-gauss-soup" in caplog.text and "kl_retrievers:minilm-gauss-soup" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        load_model("kl_retrievers:minilm-gauss-soup", backend="onnx")
    assert "./minilm-gauss-soup" not in caplog.text


# ---------------------------------------------------------------- 4. containers that iterate over the wrong strings
@pytest.mark.parametrize(
    ("texts", "hint"),
    [
        ({"d1": "the cat", "d2": "a dog"}, r"list\(d\.values\(\)\)"),
        ({"the cat", "a dog"}, "pass a list"),
        (frozenset({"the cat"}), "pass a list"),
        (b"abc", "decode"),
        (bytearray(b"abc"), "decode"),
    ],
)
def test_check_texts_refuses_containers_that_encode_the_wrong_strings(texts: object, hint: str) -> None:
    with pytest.raises(TypeError, match=hint):
        check_texts(texts)  # type: ignore[arg-type]


def test_encoders_refuse_a_table_of_texts() -> None:
    class Table:  # iterates over its column names, as a pandas DataFrame does
        columns = ("text",)

        def __iter__(self) -> Iterator[str]:
            return iter(self.columns)

    with pytest.raises(TypeError, match=r'df\["text"\]\.tolist\(\)'):
        make_tiny_encoder().encode_documents(Table())  # type: ignore[arg-type]
    pd = pytest.importorskip("pandas")
    with pytest.raises(TypeError, match="tolist"):
        make_tiny_encoder().encode_documents(pd.DataFrame({"text": ["a", "b", "c"]}))
    assert make_tiny_encoder().encode_documents(pd.Series(["a", "b"])).mean.shape == (2, 8)  # a column is fine


# ---------------------------------------------------------------- 5. from_backbone takes the backbone's pooling
@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
        ({"pooling_mode_cls_token": True}, "cls"),
        ({"pooling_mode": "mean"}, "mean"),
        (None, "cls"),
    ],
)
def test_from_backbone_takes_the_sentence_transformers_pooling(
    tmp_path: Path, pooling: dict[str, object] | None, expected: str
) -> None:
    base = _backbone_folder(tmp_path, pooling)
    assert GaussianEncoder.from_backbone(base, dim=8).config.pooling == expected


def test_from_backbone_explicit_pooling_wins_and_unsupported_pooling_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = _backbone_folder(tmp_path, {"pooling_mode_mean_tokens": True})
    assert GaussianEncoder.from_backbone(base, dim=8, pooling="cls").config.pooling == "cls"
    (base / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.backbones"):
        assert GaussianEncoder.from_backbone(base, dim=8).config.pooling == "cls"
    assert "max" in caplog.text


# ---------------------------------------------------------------- 6. paths, bad types and quantize on every backend
def test_load_model_takes_a_path_object_and_refuses_other_types(saved: Path) -> None:
    assert load_model(saved, backend="torch").name_or_path == str(saved.resolve())
    with pytest.raises(TypeError, match="int"):
        load_model(123)  # type: ignore[call-overload]


def test_load_model_refuses_an_unknown_quantize_on_the_torch_backend(saved: Path) -> None:
    with pytest.raises(ValueError, match="quantize"):
        load_model(saved, backend="torch", quantize="fp16")  # type: ignore[call-overload]


# ---------------------------------------------------------------- 7. weights checksum
def test_a_flipped_bit_in_the_weights_is_refused(saved: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    assert set(meta["weights_sha256"]) == {"model.safetensors"}
    raw = bytearray((saved / "model.safetensors").read_bytes())
    raw[-3] ^= 0x40
    (saved / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(NotAnEncoderError, match=r"model\.safetensors is damaged.*SHA-256"):
        GaussianEncoder.from_pretrained(saved)


def test_a_delta_save_records_its_checksum_and_old_folders_still_load(tmp_path: Path, saved: Path) -> None:
    fresh = GaussianEncoder.from_backbone(_backbone_folder(tmp_path), dim=8)
    delta = fresh.save_pretrained(tmp_path / "delta", include_backbone=False)
    assert set(json.loads((delta / "config.json").read_text())["weights_sha256"]) == {"delta.safetensors"}
    GaussianEncoder.from_pretrained(delta)
    meta = json.loads((saved / "config.json").read_text())
    del meta["weights_sha256"]  # as saved before the field existed
    (saved / "config.json").write_text(json.dumps(meta))
    GaussianEncoder.from_pretrained(saved)


# ---------------------------------------------------------------- 8. saving into the working folder
def test_save_into_the_working_folder_saves_it_by_name(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(saved)
    other = make_tiny_encoder(seed=1)
    other.save_pretrained(".")
    assert Path.cwd() == saved.resolve() and (Path.cwd() / "config.json").is_file()  # still a usable folder
    assert _leftovers(saved) == [] and _leftovers(saved.parent) == []
    loaded = GaussianEncoder.from_pretrained(saved)
    np.testing.assert_array_equal(loaded.encode_documents(["the cat"]).mean, other.encode_documents(["the cat"]).mean)


def test_save_into_a_folder_holding_the_working_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "out" / "inside").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "out" / "inside")
    with pytest.raises(ValueError, match="holds the current working folder"), atomic_dir(tmp_path / "out"):
        pass
    assert (tmp_path / "out" / "inside").is_dir() and _leftovers(tmp_path) == []


def test_save_through_a_link_into_a_folder_holding_the_working_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real" / "out" / "inside").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "real" / "out" / "inside")
    with pytest.raises(ValueError, match="holds the current working folder"), atomic_dir(tmp_path / "link" / "out"):
        pass
    assert (tmp_path / "real" / "out" / "inside").is_dir()


def test_save_through_a_link_into_the_working_folder_moves_into_the_new_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real" / "out").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "real" / "out")
    with atomic_dir(tmp_path / "link" / "out") as tmp:
        (tmp / "a.txt").write_text("x")
    assert Path(os.getcwd()) == (tmp_path / "real" / "out").resolve() and Path("a.txt").read_text() == "x"


def test_atomic_dir_removes_its_temporary_folder_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import _io

    def fail(tmp: Path, final: Path, old: Path) -> None:
        raise OSError("simulated swap failure")

    monkeypatch.setattr(_io, "_swap_into_place", fail)
    with pytest.raises(OSError, match="simulated"), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("x")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_atomic_dir_names_a_relative_target_absolutely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with atomic_dir("sub") as tmp:
        assert tmp.is_absolute() and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "sub" / "a.txt").read_text() == "x"


# ---------------------------------------------------------------- 9. encoding cache: atomic replace, careful deletes
def test_encoding_cache_keeps_an_entry_replaced_while_it_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import encoding_cache
    from kl_retrievers.encoding_cache import EncodingCache

    cache = EncodingCache(tmp_path)
    key, ids = {"m": 1}, ["a", "b"]
    cache.save("documents", key, ids, {"emb": np.ones((2, 3), np.float32)})
    real = encoding_cache.read_sha256
    calls = {"n": 0}

    def replaced_meanwhile(path: Path) -> tuple[Any, str]:
        calls["n"] += 1
        if calls["n"] == 1:  # another process saves the entry again while this one reads it
            data, _ = real(path)
            cache.save("documents", key, ids, {"emb": np.full((2, 3), 2.0, np.float32)})
            return data, "0" * 64
        return real(path)

    monkeypatch.setattr(encoding_cache, "read_sha256", replaced_meanwhile)
    assert cache.load("documents", key, ids) is None  # a miss, but the new entry is not deleted
    monkeypatch.setattr(encoding_cache, "read_sha256", real)
    hit = cache.load("documents", key, ids)
    assert hit is not None and float(hit["emb"][0, 0]) == 2.0
    assert _leftovers(tmp_path) == []


def test_encoding_cache_keeps_an_entry_on_a_transient_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import encoding_cache
    from kl_retrievers.encoding_cache import EncodingCache

    cache = EncodingCache(tmp_path)
    cache.save("documents", {"m": 1}, ["a"], {"emb": np.ones((1, 3), np.float32)})

    def gone(path: Path) -> tuple[Any, str]:
        raise FileNotFoundError(path)

    monkeypatch.setattr(encoding_cache, "read_sha256", gone)
    assert cache.load("documents", {"m": 1}, ["a"]) is None
    assert cache.entry_dir("documents", {"m": 1}).is_dir()


def test_encoding_cache_still_deletes_a_damaged_entry(tmp_path: Path) -> None:
    from kl_retrievers.encoding_cache import EncodingCache

    cache = EncodingCache(tmp_path)
    cache.save("documents", {"m": 1}, ["a"], {"emb": np.ones((1, 3), np.float32)})
    folder = cache.entry_dir("documents", {"m": 1})
    np.save(folder / "emb.npy", np.zeros((1, 3), np.float32))
    assert cache.load("documents", {"m": 1}, ["a"]) is None
    assert not folder.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 10. messages that say what a folder is
def test_loading_a_store_or_saved_gaussians_says_what_it_is(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    store = KLStore(enc)
    store.add(["the cat"], ids=["a"])
    store.save(tmp_path / "store")
    save_gaussians(tmp_path / "g", enc.encode_documents(["cat"]), ids=["x"])
    for backend in ("torch", "onnx"):
        with pytest.raises(NotAnEncoderError, match=r"KL store.*KLStore\.load"):
            load_model(tmp_path / "store", backend=backend)
        with pytest.raises(NotAnEncoderError, match="load_gaussians"):
            load_model(tmp_path / "g", backend=backend)


def test_from_backbone_on_a_saved_encoder_points_to_from_pretrained(saved: Path) -> None:
    with pytest.raises(ValueError, match=r"saved GaussianEncoder.*from_pretrained"):
        GaussianEncoder.from_backbone(saved)


def test_from_pretrained_loads_a_bundled_model_by_name() -> None:
    enc = GaussianEncoder.from_pretrained("kl_retrievers:minilm-gauss-soup")
    assert enc.name_or_path == "kl_retrievers:minilm-gauss-soup" and enc.config.dim == 384
    with pytest.raises(ValueError, match="bundled models"):
        GaussianEncoder.from_pretrained("kl_retrievers:no-such-model")


# ---------------------------------------------------------------- 11. numpy integers as batch_size / max_length
def test_numpy_integers_are_accepted_as_batch_size_and_max_length() -> None:
    enc = make_tiny_encoder()
    texts = ["the cat", "a dog", "tea"]
    g = enc.encode_documents(texts, batch_size=np.int64(2), max_length=np.int32(16))  # type: ignore[arg-type]
    ref = enc.encode_documents(["the cat", "a dog", "tea"], batch_size=2, max_length=16)
    np.testing.assert_array_equal(g.mean, ref.mean)
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode_documents(["a"], batch_size=True)


# ---------------------------------------------------------------- 12. the encoding cache honours XDG_CACHE_HOME
def test_default_encoding_cache_honours_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.encoding_cache import default_cache_dir

    monkeypatch.delenv("KL_RETRIEVERS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "kl_retrievers" / "encodings"
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
