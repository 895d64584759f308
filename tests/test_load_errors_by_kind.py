"""The same mistake gets the same error from every loader of a saved folder.

A missing folder is a ``FileNotFoundError`` naming the path, whichever loader is given it (``load_gaussians``
and ``load_encoded`` raised ``ValueError``, ``OnnxGaussianEncoder`` its ``OnnxModelError``; a model folder's
``ModelNotFoundError`` is a ``FileNotFoundError`` now). A folder kl_retrievers saved as another kind (a hybrid
store given to ``KLStore.load``, an encoder given to ``load_gaussians``...) is the loader's own format error,
naming what the folder is and how to load it: before, several loaders raised ``FileNotFoundError`` ("no
config.json") or named a missing file only.

``MilvusKLStore`` has no folder of its own (its documents live in the Milvus server; the adapters refuse to
save one), so it has no row here.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder
from kl_retrievers import KLStore, StoreFormatError, load_gaussians, load_model, save_gaussians
from kl_retrievers._config import NotAnEncoderError
from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError
from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_onnx_path
from kl_retrievers.sharded import encode_corpus, load_encoded

TEXTS = ["the cat sat on the mat", "green tea and black bread", "the moon and the star rise", "a dog in the sea"]

#: Each kind of folder, and words of the description a loader of another kind gives of it.
KINDS = {
    "klstore": "saved KL store|looks like a KLStore folder",
    "hybrid": "saved hybrid store",
    "encoder": "saved GaussianEncoder|backend 'torch'",
    "onnx": "ONNX export of a Gaussian encoder",
    "gaussians": "saved Gaussians",
    "shards": "folder of encoded shards",
    "langchain": "LangChain KLVectorStore folder",
    "llama_index": "LlamaIndex persist folder",
}


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> dict[str, Path]:
    """One folder of each kind kl_retrievers saves (those whose extra is installed)."""
    root = tmp_path_factory.mktemp("kinds")
    out: dict[str, Path] = {}
    store = KLStore(encoder)
    store.add(TEXTS)
    out["klstore"] = store.save(root / "klstore")
    encoder.save_pretrained(root / "encoder")
    out["encoder"] = root / "encoder"
    onnx = bundled_onnx_path(DEFAULT_MODEL)
    assert onnx is not None
    out["onnx"] = onnx
    save_gaussians(root / "gaussians", encoder.encode_documents(TEXTS))
    out["gaussians"] = root / "gaussians"
    (root / "corpus.txt").write_text("\n".join(TEXTS) + "\n")
    encode_corpus(root / "corpus.txt", root / "shards", encoder=encoder, shard_size=2, show_progress_bar=False)
    out["shards"] = root / "shards"
    try:
        from kl_retrievers.hybrid import KLHybridStore

        hybrid = KLHybridStore(encoder)
        hybrid.add(TEXTS)
        hybrid.save(root / "hybrid")
        out["hybrid"] = root / "hybrid"
    except ImportError:
        pass
    try:
        import kl_retrievers.langchain as klc

        klc.KLVectorStore.from_texts(TEXTS, klc.KLEmbeddings(encoder)).save_local(str(root / "langchain"))
        out["langchain"] = root / "langchain"
    except ImportError:
        pass
    try:
        from llama_index.core import Document, StorageContext, VectorStoreIndex

        import kl_retrievers.llama_index as kli

        storage = StorageContext.from_defaults(vector_store=kli.KLVectorStore())
        docs = [Document(text=t, id_=f"d{i}") for i, t in enumerate(TEXTS)]
        VectorStoreIndex.from_documents(docs, storage_context=storage, embed_model=kli.KLEmbedding(encoder))
        storage.persist(persist_dir=str(root / "llama_index"))
        out["llama_index"] = root / "llama_index"
    except ImportError:
        pass
    return out


def _hybrid_load(path: Path, encoder: Any) -> Any:
    hybrid = pytest.importorskip("kl_retrievers.hybrid", exc_type=ImportError)
    return hybrid.KLHybridStore.load(path, encoder)


def _hybrid_error() -> type[Exception]:
    from kl_retrievers.hybrid import HybridFormatError

    return HybridFormatError


def _langchain_load(path: Path, encoder: Any) -> Any:
    pytest.importorskip("langchain_core")
    import kl_retrievers.langchain as klc

    return klc.KLVectorStore.load_local(path, klc.KLEmbeddings(encoder))


def _langchain_error() -> type[Exception]:
    from kl_retrievers.langchain import LangChainFormatError

    return LangChainFormatError


def _llama_index_load(path: Path, encoder: Any) -> Any:
    pytest.importorskip("llama_index.core")
    import kl_retrievers.llama_index as kli

    return kli.KLVectorStore.from_persist_dir(str(path), encoder=encoder)


#: loader name -> (load(path, encoder), the kinds it loads, its format error for a folder of another kind).
LOADERS: dict[str, tuple[Callable[[Path, Any], Any], set[str], Callable[[], type[Exception]]]] = {
    "KLStore.load": (lambda p, e: KLStore.load(p, e), {"klstore"}, lambda: StoreFormatError),
    "KLHybridStore.load": (_hybrid_load, {"hybrid"}, _hybrid_error),
    "load_gaussians": (lambda p, e: load_gaussians(p), {"gaussians"}, lambda: ValueError),
    "load_encoded": (lambda p, e: load_encoded(p), {"shards"}, lambda: ValueError),
    "GaussianEncoder.from_pretrained": (
        lambda p, e: type(e).from_pretrained(p),
        {"encoder"},
        lambda: NotAnEncoderError,
    ),
    "OnnxGaussianEncoder": (lambda p, e: OnnxGaussianEncoder(p), {"onnx"}, lambda: OnnxModelError),
    "load_model": (lambda p, e: load_model(p), {"encoder", "onnx"}, lambda: NotAnEncoderError),
    "langchain KLVectorStore.load_local": (_langchain_load, {"langchain"}, _langchain_error),
    "llama_index KLVectorStore.from_persist_dir": (_llama_index_load, {"llama_index"}, lambda: StoreFormatError),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_missing_folder_is_file_not_found_naming_it(loader: str, tmp_path: Path, encoder: Any) -> None:
    load, _, _ = LOADERS[loader]
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load(missing, encoder)


@pytest.mark.parametrize(
    ("loader", "kind"), [(name, kind) for name in sorted(LOADERS) for kind in KINDS if kind not in LOADERS[name][1]]
)
def test_a_folder_of_another_kind_is_the_loaders_format_error_naming_it(
    loader: str, kind: str, folders: dict[str, Path], encoder: Any
) -> None:
    if kind not in folders:
        pytest.skip(f"the extra that saves a {kind} folder is not installed")
    load, _, error = LOADERS[loader]
    with pytest.raises(error()) as info:
        load(folders[kind], encoder)
    assert not isinstance(info.value, FileNotFoundError), info.value  # the folder is there: not "not found"
    assert re.search(KINDS[kind], str(info.value)), str(info.value)


def test_each_kind_loads_with_its_own_loader(folders: dict[str, Path], encoder: Any) -> None:
    """The table's folders are real saves: each loads with the loaders that take its kind."""
    for name, (load, kinds, _) in LOADERS.items():
        for kind in kinds & set(folders):
            assert load(folders[kind], encoder) is not None, (name, kind)


def test_a_safetensors_file_that_is_missing_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_gaussians(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("folder", [FileNotFoundError, NotADirectoryError])
def test_onnx_heads_encoder_missing_folder_is_file_not_found(tmp_path: Path, folder: type[Exception]) -> None:
    """``OnnxHeadsGaussianEncoder`` checks the folder first, as ``OnnxGaussianEncoder`` does (not OnnxModelError)."""
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    missing = tmp_path / "no-such-folder"
    if folder is NotADirectoryError:  # a path under a file: missing too
        (tmp_path / "file").write_text("x")
        missing = tmp_path / "file" / "model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        OnnxHeadsGaussianEncoder(missing)


#: loader, the kind of folder it loads, a file removed from that folder (a damaged save of its own kind).
DAMAGED = [
    ("KLStore.load", "klstore", "mean.npy"),
    ("KLStore.load", "klstore", "var.npy"),
    ("KLHybridStore.load", "hybrid", "kl/mean.npy"),
    ("load_gaussians", "gaussians", "mean.npy"),
    ("load_gaussians", "gaussians", "var.npy"),
    ("load_encoded", "shards", "shard-00000/mean.npy"),
]


@pytest.mark.parametrize(("loader", "kind", "removed"), DAMAGED)
def test_a_damaged_folder_of_its_own_kind_names_the_missing_file(
    loader: str, kind: str, removed: str, folders: dict[str, Path], encoder: Any, tmp_path: Path
) -> None:
    """A folder of the loader's own kind with one file removed names that file, never "it is <its own kind>"."""
    if kind not in folders:
        pytest.skip(f"the extra that saves a {kind} folder is not installed")
    copy = tmp_path / kind
    shutil.copytree(folders[kind], copy)
    (copy / removed).unlink()
    load, _, _ = LOADERS[loader]
    with pytest.raises(Exception) as info:
        load(copy, encoder)
    message = str(info.value)
    assert Path(removed).name in message, message
    assert not re.search(rf"it is (a |an )?({KINDS[kind]})", message), message
