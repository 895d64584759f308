"""Edge cases of the core: shard line splitting, metadata copies, unsaveable strings, dtypes, k=0, padding side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder
from kl_retrievers.gaussian import Gaussians, neg_kl, neg_kl_matrix
from kl_retrievers.sharded import plan_shards, read_shard
from kl_retrievers.store import KLStore


def _one(k: int = 2) -> Gaussians:
    return Gaussians(np.zeros((1, k)), np.ones((1, k)))


# ---------------------------------------------------------------- A: shard lines
def _all_records(path: Path, shard_size: int = 2) -> tuple[list[str], list[str], int]:
    shards, identity = plan_shards(path, shard_size=shard_size)
    ids: list[str] = []
    texts: list[str] = []
    for spec in shards:
        got_ids, got_texts = read_shard(path, spec)
        ids += got_ids
        texts += got_texts
    return ids, texts, int(identity["records"])


def test_read_shard_keeps_unicode_line_separators_inside_jsonl_strings(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 are legal unescaped in JSON strings: they must not split a record."""
    rows = [
        {"_id": "a", "text": "the cat\u2028sat"},
        {"_id": "b", "text": "a\u2029dog\x85ran"},
        {"_id": "c", "text": "plain"},
    ]
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    ids, texts, records = _all_records(p)
    assert records == 3
    assert ids == ["a", "b", "c"]
    assert texts == [r["text"] for r in rows]


def test_read_shard_splits_text_files_like_plan_shards(tmp_path: Path) -> None:
    """Only b"\\n" ends a record; a line is blank when only ASCII whitespace (bytes.strip) is on it."""
    p = tmp_path / "c.txt"
    p.write_bytes("x\n\u00a0\nthe\x0cdog\n\x0c\nfs\x1csep\r\n\nlast".encode())
    ids, texts, records = _all_records(p)
    assert records == 5
    assert ids == ["0", "1", "2", "3", "4"]
    # the no-break space line is a record (bytes.strip keeps it), the form-feed-only line is blank;
    # \x0c and \x1c inside a line do not split it, and a CRLF line ending loses its \r
    assert texts == ["x", "\u00a0", "the\x0cdog", "fs\x1csep", "last"]
    assert _all_records(p, shard_size=1)[:2] == (ids, texts)


# ---------------------------------------------------------------- B: metadata copies
def test_nested_metadata_is_copied_in_and_out() -> None:
    store = KLStore()
    meta: dict[str, Any] = {"tags": ["a"], "info": {"lang": "en"}}
    store.add(gaussians=_one(), ids=["d"], metadatas=[meta])
    meta["tags"].append("CALLER")  # the caller reuses its dict
    meta["info"]["lang"] = "caller"
    store.get_by_ids(["d"])[0].metadata["info"]["lang"] = "xx"  # documented as a copy
    store.search(_one(), k=1)[0].metadata["tags"].append("RESULT")
    store.search(_one(), k=1)[0].metadata["info"]["new"] = 1
    assert store.get_by_ids(["d"])[0].metadata == {"tags": ["a"], "info": {"lang": "en"}}
    assert store.search(_one(), k=1)[0].metadata == {"tags": ["a"], "info": {"lang": "en"}}


def test_flat_metadata_is_still_copied_out() -> None:
    store = KLStore()
    store.add(gaussians=_one(), ids=["d"], metadatas=[{"lang": "en", "n": 1}])
    store.get_by_ids(["d"])[0].metadata["lang"] = "xx"
    store.search(_one(), k=1)[0].metadata["n"] = 2
    assert store.get_by_ids(["d"])[0].metadata == {"lang": "en", "n": 1}


# ---------------------------------------------------------------- C: lone surrogates
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"texts": ["ok", "caf\udce9"]}, r"texts\[1\].*'\\udce9'.*character 3.*UTF-8"),
        ({"texts": ["ok", "fine"], "ids": ["a", "\ud800b"]}, r"ids\[1\].*'\\ud800'.*character 0.*UTF-8"),
        ({"texts": ["ok", "fine"], "metadatas": [{}, {"k": ["caf\udce9"]}]}, r"metadatas\[1\].*UTF-8"),
    ],
)
def test_lone_surrogates_are_refused_at_add(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    store = KLStore()
    g = Gaussians(np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match=match):
        store.add(gaussians=g, **kwargs)  # type: ignore[arg-type]
    assert len(store) == 0
    store.add(["caf\u00e9", "x"], gaussians=g, ids=["a", "b"])  # proper non-ASCII text still saves
    loaded = KLStore.load(store.save(tmp_path / "s"))
    assert loaded.get_by_ids(["a"])[0].text == "caf\u00e9"


# ---------------------------------------------------------------- D: torch dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_torch_is_computed_in_float32(dtype: torch.dtype) -> None:
    q = Gaussians(torch.zeros(1, 8, dtype=dtype), torch.full((1, 8), 0.001, dtype=dtype))
    d = Gaussians(torch.full((1, 8), 3.0, dtype=dtype), torch.full((1, 8), 0.001, dtype=dtype))
    assert q.mean.dtype == q.var.dtype == torch.float32
    truth = neg_kl_matrix(q.astype(torch.float64), d.astype(torch.float64))
    got = neg_kl_matrix(q, d)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), truth, rtol=1e-4, atol=0)
    torch.testing.assert_close(neg_kl(q, d).double(), truth[:, 0], rtol=1e-4, atol=0)


def test_integer_torch_tensors_become_float32_and_numpy_keeps_its_rule() -> None:
    g = Gaussians(torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int32))
    assert g.mean.dtype == g.var.dtype == torch.float32
    f64 = Gaussians(torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64))
    assert f64.mean.dtype == torch.float64
    # numpy: float32 and float64 kept, anything else becomes float64 (unchanged)
    assert Gaussians(np.zeros((2, 3), np.float16), np.ones((2, 3), np.float16)).var.dtype == np.float64
    assert Gaussians(np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)).var.dtype == np.float32


# ---------------------------------------------------------------- E: k = 0
@pytest.mark.parametrize("torch_arrays", [False, True])
def test_zero_dimensions_are_refused(torch_arrays: bool) -> None:
    mean, var = np.zeros((2, 0)), np.ones((2, 0))
    args: tuple[Any, Any] = (torch.from_numpy(mean), torch.from_numpy(var)) if torch_arrays else (mean, var)
    with pytest.raises(ValueError, match=r"at least one dimension.*\(2, 0\)"):
        Gaussians(*args)
    with pytest.raises(ValueError, match="at least one dimension"):
        Gaussians(*args, validate=False)
    assert len(Gaussians(np.zeros((0, 3)), np.ones((0, 3)))) == 0  # an empty batch is still fine


# ---------------------------------------------------------------- F: mixed dtypes
def test_mixed_dtypes_are_promoted_not_truncated() -> None:
    g = Gaussians(np.zeros(3, np.float32), np.full(3, 1e-50))
    assert g.mean.dtype == g.var.dtype == np.float64
    assert float(g.var.min()) == 1e-50
    g = Gaussians(np.zeros(3), np.full(3, 0.5, np.float32))
    assert g.mean.dtype == g.var.dtype == np.float64
    g = Gaussians(np.zeros(3, np.float16), np.full(3, 0.5, np.float32))
    assert g.mean.dtype == g.var.dtype == np.float32
    t = Gaussians(torch.zeros(3, dtype=torch.float32), torch.full((3,), 1e-50, dtype=torch.float64))
    assert t.mean.dtype == t.var.dtype == torch.float64 and float(t.var.min()) == 1e-50


# ---------------------------------------------------------------- G: padding side
def _batch_independent(encode: object, texts: list[str]) -> float:
    batched = encode(texts).mean  # type: ignore[operator]
    alone = np.stack([encode([t]).mean[0] for t in texts])  # type: ignore[operator]
    return float(np.abs(batched - alone).max())


TEXTS = ["the", "the cat sat on the mat", "a dog"]


def test_left_padding_tokenizer_is_forced_to_the_right() -> None:
    enc = make_tiny_encoder()
    assert enc.tokenizer.padding_side == "right"
    enc.tokenizer.padding_side = "left"  # set after construction: tokenize still pads on the right
    ids = enc.tokenize(TEXTS, 32)["input_ids"]
    assert int(ids[0, 0]) == enc.tokenizer.cls_token_id and int(ids[0, 1]) == enc.var_token_id
    assert _batch_independent(enc.encode_documents, TEXTS) < 1e-5


def test_a_tokenizer_padding_on_the_left_is_switched_at_construction() -> None:
    from kl_retrievers.encoder import GaussianEncoder

    base = make_tiny_encoder()
    base.tokenizer.padding_side = "left"
    enc = GaussianEncoder(base.backbone, base.tokenizer, base.config, name_or_path="tiny")
    assert enc.tokenizer.padding_side == "right"


def test_onnx_pads_on_the_right_even_when_config_says_left(tmp_path: Path) -> None:
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    enc = make_tiny_encoder()
    enc.tokenizer.padding_side = "left"
    folder = export_onnx(enc, tmp_path / "m", quantize=None, verify=False)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["onnx"]["padding_side"] == "right"
    onnx_enc = OnnxGaussianEncoder(folder)
    assert _batch_independent(onnx_enc.encode_documents, TEXTS) < 1e-5
    np.testing.assert_allclose(onnx_enc.encode_documents(TEXTS).mean, enc.encode_documents(TEXTS).mean, atol=1e-5)
    # an older export that recorded "left" is still padded on the right
    cfg["onnx"]["padding_side"] = "left"
    cfg_path.write_text(json.dumps(cfg))
    assert _batch_independent(OnnxGaussianEncoder(folder).encode_documents, TEXTS) < 1e-5
