"""Loading hardening: malformed, hostile or newer saved stores, sharded encodings and encoder folders.

Every damaged ``KLStore`` folder must give :class:`StoreFormatError` (a ``ValueError``) whose
message names the offending field, never a ``TypeError`` / ``KeyError`` / ``AttributeError``,
and nothing outside the folder may be read.  Stores in the previous release's format must load.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

import kl_retrievers.store._format as format_module
from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.encoder import GaussianEncoder, NotAnEncoderError
from kl_retrievers.gaussian import Gaussians, kl_document_vectors, neg_kl_matrix
from kl_retrievers.index import FORMAT_VERSION, KLStore, StoreFormatError
from kl_retrievers.sharded import encode_corpus, iter_encoded, load_encoded

N, K = 120, 6


def _gaussians(n: int = N, k: int = K, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, k)).astype(np.float32)
    var = np.exp(rng.normal(0.0, 0.5, size=(n, k))).astype(np.float32)
    return Gaussians(mean, var)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "config.json").read_text()))


def _write_config(folder: Path, config: Any) -> None:
    (folder / "config.json").write_text(json.dumps(config))


def _rehash(folder: Path, *names: str) -> None:
    """Make the config's size and checksum match the (tampered) files, as a careful attacker would."""
    config = _config(folder)
    for name in names:
        config["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": _sha(folder / name)}
    _write_config(folder, config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HNSW store with a built index (so norm_bound matters), saved once per module."""
    store = KLStore(index_type="hnsw", hnsw_m=8, ef_construction=20, exact_threshold=10)
    store.add(gaussians=_gaussians(), ids=[f"d{i}" for i in range(N)], metadatas=[{"i": i} for i in range(N)])
    assert store.is_built
    return store.save(tmp_path_factory.mktemp("saved") / "store")


@pytest.fixture
def folder(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "store"))


# --------------------------------------------------------------- config.json
def _set(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(cfg: dict[str, Any]) -> Any:
        cfg[key] = value
        return cfg

    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], Any]:
    def edit(cfg: dict[str, Any]) -> Any:
        del cfg[key]
        return cfg

    return edit


def _nested(path: tuple[str, ...], value: Any, *, delete: bool = False) -> Callable[[dict[str, Any]], Any]:
    def edit(cfg: dict[str, Any]) -> Any:
        node = cfg
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return cfg

    return edit


BAD_CONFIGS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("config-is-a-list", lambda cfg: [cfg], "JSON object"),
    ("config-is-a-string", lambda cfg: "store", "JSON object"),
    ("format", _set("format", "something-else"), "'format'"),
    ("format_version-string", _set("format_version", "1"), "'format_version'"),
    ("format_version-bool", _set("format_version", True), "'format_version'"),
    ("format_version-zero", _set("format_version", 0), "format_version"),
    ("score_name", _set("score_name", "cosine"), "'score_name'"),
    ("dim-string", _set("dim", "6"), "'dim'"),
    ("dim-zero", _set("dim", 0), "'dim'"),
    ("dim-bool", _set("dim", True), "'dim'"),
    ("count-missing", _drop("count"), "'count'"),
    ("count-string", _set("count", "120"), "'count'"),
    ("count-negative", _set("count", -1), "'count'"),
    ("dtype", _set("dtype", "float16"), "'dtype'"),
    ("index_type", _set("index_type", "lsh"), "'index_type'"),
    ("index_type-list", _set("index_type", ["hnsw"]), "'index_type'"),
    ("index_built", _set("index_built", "yes"), "'index_built'"),
    ("index_params-list", _set("index_params", [1, 2]), "'index_params'"),
    ("index_params-missing", _drop("index_params"), "'index_params'"),
    ("index_params-unknown-key", _nested(("index_params", "warp_factor"), 9), "warp_factor"),
    ("index_params-bad-value", _nested(("index_params", "hnsw_m"), -3), "'index_params'"),
    ("index_params-wrong-type", _nested(("index_params", "norm_headroom"), "big"), "'index_params'"),
    ("norm_bound-zero", _set("norm_bound", 0), "'norm_bound'"),
    ("norm_bound-negative", _set("norm_bound", -2.5), "'norm_bound'"),
    ("norm_bound-null", _set("norm_bound", None), "'norm_bound'"),
    ("norm_bound-string", _set("norm_bound", "11"), "'norm_bound'"),
    ("norm_bound-infinite", _set("norm_bound", float("inf")), "'norm_bound'"),
    ("index_offset", _set("index_offset", "NaN"), "'index_offset'"),
    ("encoder-string", _set("encoder", "minilm"), "'encoder'"),
    ("encoder-name-not-string", _set("encoder", {"name_or_path": 5, "config": None}), "encoder.name_or_path"),
    ("encoder-config-list", _set("encoder", {"name_or_path": "m", "config": [1]}), "encoder.config"),
    ("files-missing", _drop("files"), "'files'"),
    ("files-string", _set("files", "mean.npy"), "'files'"),
    ("files-entry-string", _nested(("files", "mean.npy"), "abc"), "files.mean.npy"),
    ("files-sha256-missing", _nested(("files", "var.npy", "sha256"), None, delete=True), "files.var.npy.sha256"),
    ("files-sha256-empty", _nested(("files", "var.npy", "sha256"), ""), "files.var.npy.sha256"),
    ("files-bytes-string", _nested(("files", "var.npy", "bytes"), "1"), "files.var.npy.bytes"),
    ("files-empty-table", _set("files", {}), "'files'"),
    ("files-no-index-entry", _nested(("files", "index.faiss"), None, delete=True), "index.faiss"),
    ("files-no-docs-entry", _nested(("files", "documents.jsonl"), None, delete=True), "documents.jsonl"),
]


@pytest.mark.parametrize(("case", "edit", "field"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_a_store_format_error_naming_the_field(
    folder: Path, case: str, edit: Callable[[dict[str, Any]], Any], field: str
) -> None:
    _write_config(folder, edit(_config(folder)))
    with pytest.raises(StoreFormatError) as info:
        KLStore.load(folder)
    assert field in str(info.value), (case, str(info.value))


def test_config_that_is_not_json_names_the_file(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match=r"config\.json is not valid JSON"):
        KLStore.load(folder)


def test_zero_norm_bound_is_refused_not_loaded_with_wrong_results(folder: Path) -> None:
    """Issue 25: with norm_bound 0 the HNSW store loaded and no query returned the right results."""
    config = _config(folder)
    assert config["index_type"] == "hnsw" and config["norm_bound"] > 0
    config["norm_bound"] = 0
    _write_config(folder, config)
    with pytest.raises(StoreFormatError, match="norm_bound.*positive finite"):
        KLStore.load(folder)


@pytest.mark.parametrize("factor", [1e7, 1e300, 0.5])
@pytest.mark.parametrize(
    "params",
    [
        {"index_type": "hnsw", "hnsw_m": 8, "ef_construction": 20},
        {"index_type": "hnsw", "hnsw_m": 8, "ef_construction": 20, "compression": "sq8"},
        {"index_type": "ivf", "nlist": 4},
        {"index_type": "ivf", "nlist": 4, "compression": "pq", "pq_m": 13, "refine": "sq8"},
        {"index_type": "ivf", "nlist": 4, "compression": "pq", "pq_m": 13, "pq_nbits": 4},
    ],
    ids=["hnsw", "hnsw-sq8", "ivf", "ivf-pq-refine", "ivf-pq4-fastscan"],
)
def test_a_wrong_positive_norm_bound_is_refused(tmp_path: Path, params: dict[str, Any], factor: float) -> None:
    """Issue 25: a norm_bound of 1e9 or 1e308 loaded and ranked differently (reliability.py found it)."""
    store = KLStore(exact_threshold=10, **params)
    store.add(gaussians=_gaussians(n=300), ids=[f"d{i}" for i in range(300)])
    store.rebuild()
    folder = store.save(tmp_path / "store")
    KLStore.load(folder)  # the untouched store loads
    config = _config(folder)
    config["norm_bound"] = config["norm_bound"] * factor
    _write_config(folder, config)
    with pytest.raises(StoreFormatError, match="norm_bound"):
        KLStore.load(folder)


def test_newer_format_version_is_refused_naming_both_versions(folder: Path) -> None:
    config = _config(folder)
    config["format_version"] = FORMAT_VERSION + 1
    config["library_version"] = "9.0.0"
    _write_config(folder, config)
    with pytest.raises(StoreFormatError) as info:
        KLStore.load(folder)
    message = str(info.value)
    assert "newer" in message and "9.0.0" in message
    assert f"format_version {FORMAT_VERSION + 1}" in message and f"format_version {FORMAT_VERSION}" in message


def test_unknown_index_param_names_the_key_and_the_writer(folder: Path) -> None:
    config = _config(folder)
    config["index_params"]["future_knob"] = True
    config["library_version"] = "3.1.0"
    _write_config(folder, config)
    with pytest.raises(StoreFormatError, match=r"index_params.*future_knob.*3\.1\.0.*newer"):
        KLStore.load(folder)


def test_unknown_top_level_keys_are_ignored(folder: Path) -> None:
    config = _config(folder)
    config["comment"] = "added by hand"
    _write_config(folder, config)
    assert len(KLStore.load(folder)) == N


# ------------------------------------------------------------- path escapes
@pytest.mark.parametrize("how", ["relative", "absolute", "nested", "replace-mean"])
def test_config_cannot_make_load_read_outside_the_folder(
    folder: Path, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    name = {
        "relative": "../outside.txt",
        "absolute": str(outside),
        "nested": "sub/../../outside.txt",
        "replace-mean": "../outside.txt",
    }[how]
    config = _config(folder)
    if how == "replace-mean":
        del config["files"]["mean.npy"]
    config["files"][name] = {"bytes": outside.stat().st_size, "sha256": _sha(outside)}
    _write_config(folder, config)
    touched: list[str] = []
    real_sha = format_module.sha256_file

    def counting_sha(p: Path) -> str:
        touched.append(str(p))
        return real_sha(p)

    monkeypatch.setattr(format_module, "sha256_file", counting_sha)
    with pytest.raises(StoreFormatError, match=r"'files' names") as info:
        KLStore.load(folder)
    assert "outside.txt" in str(info.value)
    assert touched == []  # refused before anything was hashed


def test_symlinked_file_pointing_outside_is_refused(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere.npy"
    shutil.copy(folder / "mean.npy", copy)
    (folder / "mean.npy").unlink()
    (folder / "mean.npy").symlink_to(copy)  # same bytes, so size and checksum still match
    with pytest.raises(StoreFormatError, match="outside the store folder"):
        KLStore.load(folder)


def test_extra_file_in_the_folder_is_ignored_but_extra_entry_in_config_is_refused(folder: Path) -> None:
    (folder / "README.md").write_text("my notes")
    assert len(KLStore.load(folder)) == N
    config = _config(folder)
    config["files"]["README.md"] = {"bytes": 8, "sha256": _sha(folder / "README.md")}
    _write_config(folder, config)
    with pytest.raises(StoreFormatError, match=r"'files' names 'README\.md'"):
        KLStore.load(folder)


def test_index_listed_for_a_store_without_index_is_refused(folder: Path) -> None:
    config = _config(folder)
    config["index_built"] = False
    _write_config(folder, config)
    with pytest.raises(StoreFormatError, match="index_built"):
        KLStore.load(folder)


def test_missing_file_is_refused(folder: Path) -> None:
    (folder / "documents.jsonl").unlink()
    with pytest.raises(StoreFormatError, match="missing file"):
        KLStore.load(folder)


# ------------------------------------------------ bad arrays, checksums updated
def _replace_array(folder: Path, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    arr = np.load(folder / name)
    np.save(folder / name, fn(arr.copy()), allow_pickle=False)
    _rehash(folder, name)


def _poke(row: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a: np.ndarray) -> np.ndarray:
        a[row, 2] = value
        return a

    return fn


BAD_ARRAYS = [
    ("var-zero", "var.npy", _poke(7, 0.0), r"var\.npy.*positive finite.*row 7"),
    ("var-negative", "var.npy", _poke(8, -1.0), r"var\.npy.*positive finite.*row 8"),
    ("var-inf", "var.npy", _poke(9, np.inf), r"var\.npy.*positive finite.*row 9"),
    ("var-nan", "var.npy", _poke(10, np.nan), r"var\.npy.*positive finite.*row 10"),
    ("mean-inf", "mean.npy", _poke(11, -np.inf), r"mean\.npy.*non-finite.*row 11"),
    ("mean-nan", "mean.npy", _poke(12, np.nan), r"mean\.npy.*non-finite.*row 12"),
    ("var-float64", "var.npy", lambda a: a.astype(np.float64), r"var\.npy.*float64"),
    ("mean-extra-row", "mean.npy", lambda a: np.vstack([a, a[:1]]), r"mean\.npy has shape \(121, 6\)"),
    ("mean-other-dim", "mean.npy", lambda a: a[:, :5].copy(), r"mean\.npy has shape \(120, 5\)"),
    ("mean-1d", "mean.npy", lambda a: a.ravel(), r"mean\.npy has shape \(720,\)"),
]


@pytest.mark.parametrize(("case", "name", "fn", "pattern"), BAD_ARRAYS, ids=[c[0] for c in BAD_ARRAYS])
def test_bad_arrays_are_refused_even_with_matching_checksums(
    folder: Path, case: str, name: str, fn: Callable[[np.ndarray], np.ndarray], pattern: str
) -> None:
    _replace_array(folder, name, fn)
    for mmap in (False, True):
        with pytest.raises(StoreFormatError, match=pattern):
            KLStore.load(folder, mmap=mmap)


def test_array_file_that_is_not_npy_is_a_store_format_error(folder: Path) -> None:
    (folder / "var.npy").write_bytes(b"\x93NUMPY garbage" * 10)
    _rehash(folder, "var.npy")
    with pytest.raises(StoreFormatError, match="var.npy"):
        KLStore.load(folder)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"id": 5, "text": null, "metadata": {}}', "'id' must be a string"),
        ('{"text": null, "metadata": {}}', "'id' must be a string"),
        ('["d0", null, {}]', "not a JSON object"),
        ('{"id": "d0", "text": 3, "metadata": {}}', "'text'"),
        ('{"id": "d0", "text": null, "metadata": [1]}', "'metadata'"),
        ('{"id": "d1", "text": null, "metadata": {}}', "duplicate id 'd1'"),
    ],
)
def test_bad_documents_with_matching_checksums(folder: Path, line: str, pattern: str) -> None:
    lines = (folder / "documents.jsonl").read_text().splitlines()
    lines[0] = line
    (folder / "documents.jsonl").write_text("\n".join(lines) + "\n")
    _rehash(folder, "documents.jsonl")
    with pytest.raises(StoreFormatError, match=pattern):
        KLStore.load(folder)


# --------------------------------------------------- the previous release's format
def _write_old_store(folder: Path, index_type: str, docs: Gaussians, ids: list[str]) -> None:
    """A store folder exactly as the previous release wrote it (before ``index_offset`` and ``refine``)."""
    folder.mkdir()
    np.save(folder / "mean.npy", docs.mean, allow_pickle=False)
    np.save(folder / "var.npy", docs.var, allow_pickle=False)
    with open(folder / "documents.jsonl", "w", encoding="utf-8") as f:
        for i, doc_id in enumerate(ids):
            f.write(json.dumps({"id": doc_id, "text": f"text {i}", "metadata": {"i": i}}, ensure_ascii=False) + "\n")
    built = index_type == "flat"
    names = ["mean.npy", "var.npy", "documents.jsonl"]
    if built:
        d64 = Gaussians(docs.mean.astype(np.float64), docs.var.astype(np.float64))
        index = faiss.IndexFlatIP(2 * docs.dim + 1)
        index.add(np.ascontiguousarray(np.asarray(kl_document_vectors(d64)), dtype=np.float32))
        faiss.write_index(index, str(folder / "index.faiss"))
        names.append("index.faiss")
    params = {
        "hnsw_m": 32,
        "ef_search": 256,
        "ef_construction": 80,
        "nlist": 1024,
        "nprobe": 32,
        "compression": None,
        "pq_m": 64,
        "pq_nbits": 8,
        "rescore_pool": 100,
        "rescore_factor": 10,
        "norm_headroom": 1.1,
        "exact_threshold": 20000,
        "compact_threshold": 0.3,
        "seed": 0,
    }
    config = {
        "format": "kl-retrievers/klstore",
        "format_version": 1,
        "library_version": "0.1.0",
        "faiss_version": "1.8.0",
        "score_name": "neg_kl",
        "score_direction": "higher_is_better",
        "dim": docs.dim,
        "count": len(ids),
        "dtype": "float32",
        "index_type": index_type,
        "index_params": params,
        "index_built": built,
        "norm_bound": None,
        "encoder": {"name_or_path": "tiny-random", "config": {"dim": docs.dim, "pooling": "cls"}},
        "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": _sha(folder / name)} for name in names},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_store_in_the_previous_release_format_loads_and_ranks_exactly(tmp_path: Path, index_type: str) -> None:
    docs, queries = _gaussians(seed=1), _gaussians(4, seed=2)
    ids = [f"old{i}" for i in range(N)]
    _write_old_store(tmp_path / "old", index_type, docs, ids)
    for mmap in (False, True):
        store = KLStore.load(tmp_path / "old", mmap=mmap)
        assert len(store) == N and store.index_type == index_type
        truth = np.asarray(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)))
        for qi in range(len(queries)):
            hits = store.search(queries[qi], k=5)
            assert [h.id for h in hits] == [ids[j] for j in np.argsort(-truth[qi])[:5]]
            np.testing.assert_allclose([h.score for h in hits], np.sort(truth[qi])[::-1][:5], rtol=1e-5, atol=1e-5)
        assert store.get_by_ids(["old3"])[0].metadata == {"i": 3}
    store.add(gaussians=_gaussians(2, seed=3), ids=["new0", "new1"])
    again = KLStore.load(store.save(tmp_path / "resaved"))
    assert len(again) == N + 2 and "index_offset" in _config(tmp_path / "resaved")


def test_every_index_type_round_trips_through_the_validation(tmp_path: Path) -> None:
    docs = _gaussians(300, 8, seed=4)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("flat", {}),
        ("hnsw", {"hnsw_m": 8}),
        ("ivf", {"nlist": 4, "nprobe": 2}),
        ("ivf", {"nlist": 4, "compression": "sq8", "refine": "fp16"}),
    ]
    for n, (index_type, kw) in enumerate(cases):
        store = KLStore(index_type=index_type, exact_threshold=10, **kw)  # type: ignore[arg-type]
        store.add(gaussians=docs, ids=[f"d{i}" for i in range(300)])
        loaded = KLStore.load(store.save(tmp_path / f"s{n}"))
        assert len(loaded) == 300 and loaded.is_built == store.is_built
        assert [h.id for h in loaded.search(docs[5], k=3)] == [h.id for h in store.search(docs[5], k=3)]
    empty = KLStore.load(KLStore(index_type="ivf").save(tmp_path / "empty"))
    assert len(empty) == 0


# -------------------------------------------------------- sharded encodings
class _FakeEncoder:
    """Deterministic stand-in for an encoder: Gaussians from the text length (no model)."""

    name_or_path = "fake"

    def encode_documents(self, texts: list[str], **kw: Any) -> Gaussians:
        lengths = np.array([[len(t), len(t) % 7, 1.0] for t in texts], dtype=np.float32)
        return Gaussians(lengths, np.ones_like(lengths) + lengths % 3)

    encode_queries = encode_documents


def _encoded(tmp_path: Path) -> Path:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"text number {i} " + "x" * i for i in range(10)) + "\n")
    out = tmp_path / "enc"
    encode_corpus(corpus, out, encoder=_FakeEncoder(), shard_size=4, show_progress_bar=False)
    return out


def test_empty_checksum_table_is_not_a_skip(tmp_path: Path) -> None:
    """Issue 25: an empty table let a deleted mean.npy pass as a valid shard on resume."""
    out = _encoded(tmp_path)
    meta_path = out / "shard-00001" / "shard.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = {}
    meta_path.write_text(json.dumps(meta))
    (out / "shard-00001" / "mean.npy").unlink()
    with pytest.raises(ValueError, match=r"shard-00001.*'sha256' must give a checksum for each of"):
        load_encoded(out)
    report = encode_corpus(tmp_path / "c.txt", out, encoder=_FakeEncoder(), shard_size=4, show_progress_bar=False)
    assert report.encoded == [1] and report.reused == [0, 2]  # re-encoded, not "reused"
    g, ids = load_encoded(out)
    assert len(ids) == 10 and g.mean.shape == (10, 3)


@pytest.mark.parametrize(
    "table",
    [
        {"mean.npy": "0" * 64, "var.npy": "0" * 64},  # partial
        {"mean.npy": "0" * 64, "var.npy": "0" * 64, "ids.json": "0" * 64, "../../etc/hostname": "0" * 64},
        {"mean.npy": "0" * 64, "var.npy": "0" * 64, "/etc/hostname": "0" * 64},
        {"mean.npy": "0" * 64, "var.npy": "0" * 64, "ids.json": 5},
        ["mean.npy"],
    ],
)
def test_shard_checksum_table_must_name_exactly_the_shard_files(
    tmp_path: Path, table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _encoded(tmp_path)
    meta_path = out / "shard-00000" / "shard.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = table
    meta_path.write_text(json.dumps(meta))
    hashed: list[Path] = []
    real = sharded._sha256

    def counting_sha(p: Path) -> str:
        hashed.append(p)
        return real(p)

    monkeypatch.setattr(sharded, "_sha256", counting_sha)
    with pytest.raises(ValueError, match=r"shard-00000.*sha256"):
        list(iter_encoded(out))
    assert all(p.parent.parent == out for p in hashed)  # nothing outside the shard folders was read


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("[1, 2]", r"manifest\.json must hold a JSON object; got a JSON list"),
        ("{not json", r"manifest\.json is not valid JSON"),
        ('{"format": "kl-retrievers/encoded-shards"}', r"manifest\.json: field 'shards'"),
        ('{"format": "kl-retrievers/encoded-shards", "shards": "3"}', r"manifest\.json: field 'shards'"),
        ('{"format": "kl-retrievers/encoded-shards", "shards": -1}', r"manifest\.json: field 'shards'"),
        ('{"format": "other", "shards": 1}', r"manifest\.json: field 'format'"),
        (
            '{"format": "kl-retrievers/encoded-shards", "format_version": 7, "shards": 1}',
            r"format_version 7 by a kl-retrievers whose version it does not record.*reads format_version 1 and",
        ),
    ],
)
def test_bad_manifest_names_the_file_and_field(tmp_path: Path, text: str, pattern: str) -> None:
    out = _encoded(tmp_path)
    (out / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=pattern) as info:
        load_encoded(out)
    assert type(info.value) is ValueError
    with pytest.raises(ValueError, match=pattern):  # a resumed encode reads it too
        encode_corpus(tmp_path / "c.txt", out, encoder=_FakeEncoder(), shard_size=4, show_progress_bar=False)


@pytest.mark.parametrize(
    ("what", "value", "pattern"),
    [
        ("shard.json", "[]", r"shard-00002 is missing or incomplete"),
        ("ids.json", '["a", "b"]', r"shard-00002 is corrupt"),
    ],
)
def test_damaged_shard_files_give_value_errors(tmp_path: Path, what: str, value: str, pattern: str) -> None:
    out = _encoded(tmp_path)
    (out / "shard-00002" / what).write_text(value)
    with pytest.raises(ValueError, match=pattern):
        load_encoded(out)


def test_shard_with_matching_checksums_but_wrong_shapes_is_refused(tmp_path: Path) -> None:
    out = _encoded(tmp_path)
    shard = out / "shard-00000"
    np.save(shard / "var.npy", np.ones((3, 3), np.float32), allow_pickle=False)
    meta = json.loads((shard / "shard.json").read_text())
    meta["sha256"]["var.npy"] = _sha(shard / "var.npy")
    (shard / "shard.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"shard-00000: mean\.npy \(4, 3\) and var\.npy \(3, 3\)"):
        load_encoded(out)
    np.save(shard / "var.npy", np.zeros((4, 3), np.float32), allow_pickle=False)
    meta["sha256"]["var.npy"] = _sha(shard / "var.npy")
    (shard / "shard.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"shard-00000: var must be > 0"):
        load_encoded(out)


# ---------------------------------------------------------- encoder folders
@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_encoder_weights_must_be_a_file_in_the_model_folder(tmp_path: Path, how: str) -> None:
    out = make_tiny_encoder().save_pretrained(tmp_path / "models" / "enc")
    outside = tmp_path / "outside.safetensors"
    shutil.move(out / "model.safetensors", outside)  # a loadable weights file, but outside the folder
    meta = json.loads((out / "config.json").read_text())
    meta["weights"] = str(outside) if how == "absolute" else "../../outside.safetensors"
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(NotAnEncoderError, match=r"field 'weights' must be 'model\.safetensors' or"):
        GaussianEncoder.from_pretrained(out)
    shutil.move(outside, out / "model.safetensors")
    meta["weights"] = "model.safetensors"
    (out / "config.json").write_text(json.dumps(meta))
    assert GaussianEncoder.from_pretrained(out).config.dim == 8
