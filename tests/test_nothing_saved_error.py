"""Every loader of a saved folder raises ``NothingSavedError`` where it finds nothing of its kind.

A missing folder, an empty one, or one that nothing kl_retrievers saves wrote raised a type that depended on the
loader: ``FileNotFoundError`` from the stores, ``ValueError`` from ``load_gaussians`` and ``load_encoded``,
``OnnxModelError`` from the ONNX encoders, ``NotAnEncoderError`` from the encoder loaders and
``LangChainFormatError`` from LangChain's ``load_local``. Now each raises :class:`NothingSavedError`, a
``FileNotFoundError`` and a ``ValueError`` that is also what the loader raised before, so no ``except`` written
for that breaks. A folder kl_retrievers saved as another kind stays the loader's format error, never a
``NothingSavedError`` (``test_load_errors_by_kind.py`` checks that it is no ``FileNotFoundError``); a model path
that does not exist stays ``ModelNotFoundError``, since the encoder loaders take names too.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from test_load_errors_by_kind import LOADERS, encoder  # noqa: F401 (encoder: a fixture)

from kl_retrievers import ModelNotFoundError, NotAnEncoderError, NothingSavedError, OnnxModelError

#: The encoder loaders: a path that does not exist is a model name nothing provides (ModelNotFoundError).
NAMED = {"GaussianEncoder.from_pretrained", "load_model"}


def _what_it_raised_before(loader: str) -> tuple[type[Exception], ...]:
    """The class each loader raised for an empty or foreign folder before ``NothingSavedError``."""
    if loader.startswith("Onnx"):
        return (OnnxModelError,)
    if loader in NAMED:
        return (NotAnEncoderError,)
    if loader.startswith("langchain"):
        from kl_retrievers.langchain import LangChainFormatError

        return (LangChainFormatError,)
    if loader in ("load_gaussians", "load_encoded"):
        return (ValueError,)
    return (FileNotFoundError,)


def _folder(tmp_path: Path, case: str) -> Path:
    folder = tmp_path / case
    if case == "empty":
        folder.mkdir()
    elif case == "foreign":  # another program's folder: none of the files kl_retrievers marks its saves with
        folder.mkdir()
        (folder / "notes.txt").write_text("not a save\n")
        (folder / "settings.json").write_text('{"model_type": "bert"}\n')
    return folder


@pytest.mark.parametrize("case", ["empty", "foreign"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_an_empty_or_foreign_folder_is_nothing_saved_and_what_the_loader_raised_before(
    loader: str,
    case: str,
    tmp_path: Path,
    encoder: Any,  # noqa: F811
) -> None:
    folder = _folder(tmp_path, case)
    load, _, _ = LOADERS[loader]
    with pytest.raises(NothingSavedError, match=re.escape(str(folder))) as info:
        load(folder, encoder)
    assert isinstance(info.value, (FileNotFoundError, ValueError)), type(info.value).__mro__
    assert isinstance(info.value, _what_it_raised_before(loader)), type(info.value).__mro__
    assert type(pickle.loads(pickle.dumps(info.value))) is type(info.value)  # crosses process boundaries


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_missing_folder_is_nothing_saved_except_a_model_name(
    loader: str,
    tmp_path: Path,
    encoder: Any,  # noqa: F811
) -> None:
    missing = tmp_path / "no-such-folder"
    load, _, _ = LOADERS[loader]
    expected = ModelNotFoundError if loader in NAMED else NothingSavedError
    with pytest.raises(expected, match=re.escape(str(missing))) as info:
        load(missing, encoder)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("case", ["missing", "empty", "foreign"])
def test_the_onnx_heads_encoder_finds_nothing_saved(case: str, tmp_path: Path) -> None:
    """``OnnxHeadsGaussianEncoder`` (the shared-backbone ONNX encoder, which ``load_model`` picks for bundled
    models) raises it too, an ``OnnxModelError`` for an existing folder as before."""
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    folder = tmp_path / case if case == "missing" else _folder(tmp_path, case)
    with pytest.raises(NothingSavedError, match=re.escape(str(folder))) as info:
        OnnxHeadsGaussianEncoder(folder)
    assert case == "missing" or isinstance(info.value, OnnxModelError)


@pytest.mark.parametrize("case", ["missing", "empty", "foreign"])
def test_llama_index_from_persist_path_finds_nothing_saved(case: str, tmp_path: Path, encoder: Any) -> None:  # noqa: F811
    pytest.importorskip("llama_index.core")
    import kl_retrievers.llama_index as kli

    folder = tmp_path / case if case == "missing" else _folder(tmp_path, case)
    with pytest.raises(NothingSavedError, match=re.escape(str(folder))):
        kli.KLVectorStore.from_persist_path(str(folder), encoder=encoder)


def test_one_except_catches_every_loaders_refusal_of_an_empty_folder(tmp_path: Path, encoder: Any) -> None:  # noqa: F811
    """What a caller writes to start afresh where nothing was saved, whichever loader it uses."""
    empty = _folder(tmp_path, "empty")
    refused = []
    for name, (load, _, _) in sorted(LOADERS.items()):
        try:
            load(empty, encoder)
        except NothingSavedError:
            refused.append(name)
    assert refused == sorted(LOADERS)


def _foreign_config_refusals() -> dict[str, type[Exception]]:
    """What each loader raises for a folder holding only another program's ``config.json``: the format error of
    a loader whose own file is ``config.json`` (the folder has it, written by something else), else
    ``NothingSavedError`` (its own file is missing)."""
    from kl_retrievers import StoreFormatError

    own_config = {
        "KLStore.load": StoreFormatError,
        "GaussianEncoder.from_pretrained": NotAnEncoderError,
        "load_model": NotAnEncoderError,
        "OnnxGaussianEncoder": OnnxModelError,
        "OnnxHeadsGaussianEncoder": OnnxModelError,
        "llama_index KLVectorStore.from_persist_path": StoreFormatError,
    }
    loaders = [*LOADERS, "OnnxHeadsGaussianEncoder", "llama_index KLVectorStore.from_persist_path"]
    return {name: own_config.get(name, NothingSavedError) for name in sorted(loaders)}


@pytest.mark.parametrize(("loader", "expected"), sorted(_foreign_config_refusals().items()))
def test_a_folder_with_only_a_foreign_config_json(
    loader: str,
    expected: type[Exception],
    tmp_path: Path,
    encoder: Any,  # noqa: F811
) -> None:
    """A Hugging Face model folder's ``config.json``: both ONNX encoders refuse it alike (``OnnxModelError``)."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}\n')
    if loader == "OnnxHeadsGaussianEncoder":
        from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

        load: Any = lambda p, e: OnnxHeadsGaussianEncoder(p)  # noqa: E731
    elif loader == "llama_index KLVectorStore.from_persist_path":
        kli = pytest.importorskip("kl_retrievers.llama_index")
        load = lambda p, e: kli.KLVectorStore.from_persist_path(str(p), encoder=e)  # noqa: E731
    else:
        load = LOADERS[loader][0]
    with pytest.raises(expected, match=re.escape(str(folder))) as info:
        load(folder, encoder)
    assert isinstance(info.value, NothingSavedError) == (expected is NothingSavedError), type(info.value).__mro__
