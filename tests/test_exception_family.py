"""Every exception class kl_retrievers defines that can reach a user derives from ``KLRetrieversError``.

``except KLRetrieversError`` catches them all, and each keeps the built-in base it had (``except ValueError``
still catches a ``StoreFormatError``). The public ones are found from the public modules' ``__all__``; the
private ones that escape public functions are listed.
"""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import kl_retrievers
from kl_retrievers import KLRetrieversError

#: Every public exception class: where it is defined, and the built-in exception(s) it also is.
PUBLIC = {
    "kl_retrievers.store._base.StoreFormatError": (ValueError,),
    "kl_retrievers.hybrid.HybridFormatError": (ValueError,),
    "kl_retrievers.langchain.LangChainFormatError": (ValueError,),
    "kl_retrievers.datasets.DatasetError": (ValueError,),
    "kl_retrievers.onnx.OnnxModelError": (ValueError,),
    "kl_retrievers._config.NotAnEncoderError": (ValueError,),
    "kl_retrievers.backbones.bge.BackboneConversionError": (ValueError,),
    "kl_retrievers.training.trainer.TrainingDivergedError": (RuntimeError,),
    "kl_retrievers.hub.ModelNotFoundError": (FileNotFoundError, OSError),
    "kl_retrievers.pretrained.BundledModelNotFoundError": (FileNotFoundError, OSError, ValueError),
    "kl_retrievers.pretrained.OnnxExportOnTorchError": (ValueError,),
    "kl_retrievers.store.milvus.MilvusConnectionError": (ConnectionError, OSError),
    "kl_retrievers._errors.NothingSavedError": (FileNotFoundError, OSError, ValueError),
    "kl_retrievers._errors.ConcurrentSaveError": (OSError,),
}
#: Private classes that public functions let through (the cache folder of ``user_cache_dir``, the refusals of
#: ``encode_corpus``, the loaders' :class:`NothingSavedError` for an empty folder): catchable as the family too.
ESCAPING = {
    "kl_retrievers._io.CacheFolderError": (OSError,),
    "kl_retrievers.sharded._FolderBusyError": (BlockingIOError, RuntimeError),
    "kl_retrievers.sharded._ShardsLostError": (OSError, RuntimeError),
    # the loaders' NothingSavedError that is also the class they raised for such a folder before
    "kl_retrievers._config._NoEncoderSavedError": (FileNotFoundError, ValueError),
    "kl_retrievers.onnx._NoOnnxSavedError": (FileNotFoundError, ValueError),
    "kl_retrievers.langchain._NoLangChainSavedError": (FileNotFoundError, ValueError),
}


def _resolve(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "kl_retrievers":
            raise
        pytest.skip(f"an optional extra is not installed: {exc}")
    cls = getattr(mod, name)
    assert isinstance(cls, type)
    return cls


@pytest.mark.parametrize("dotted", sorted({**PUBLIC, **ESCAPING}))
def test_each_exception_is_a_klretrieverserror_and_keeps_its_builtin_bases(dotted: str) -> None:
    cls = _resolve(dotted)
    assert issubclass(cls, KLRetrieversError), cls.__mro__
    for base in {**PUBLIC, **ESCAPING}[dotted]:
        assert issubclass(cls, base), (cls.__mro__, base)
    err = cls("a message")
    assert "a message" in str(err)
    assert type(pickle.loads(pickle.dumps(err))) is cls  # crosses process boundaries (ray, multiprocessing)


def _public_modules() -> list[str]:
    names = ["kl_retrievers", *(f"kl_retrievers.{name}" for name in sorted(kl_retrievers._SUBMODULES))]
    return [*names, "kl_retrievers.store.faiss", "kl_retrievers.store.milvus", "kl_retrievers.backbones.bge"]


@pytest.mark.parametrize("module", _public_modules())
def test_every_exception_a_public_module_exports_is_in_the_family(module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "kl_retrievers":
            raise
        pytest.skip(f"an optional extra is not installed: {exc}")
    exported = [getattr(mod, name) for name in getattr(mod, "__all__", ())]
    errors = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, Exception)]
    errors = [cls for cls in errors if not issubclass(cls, Warning)]  # warnings (ShallowRunWarning) are no errors
    outside = [cls.__qualname__ for cls in errors if not issubclass(cls, KLRetrieversError)]
    assert not outside, f"{module} exports exceptions outside KLRetrieversError: {outside}"
    known = {f"{cls.__module__}.{cls.__qualname__}" for cls in errors if cls is not KLRetrieversError}
    assert known <= set(PUBLIC), f"new public exceptions: add them to PUBLIC and docs/api.md: {known - set(PUBLIC)}"


def test_the_base_is_exported_from_the_package_and_imports_nothing() -> None:
    assert "KLRetrieversError" in kl_retrievers.__all__ and kl_retrievers.KLRetrieversError is KLRetrieversError
    assert KLRetrieversError.__bases__ == (Exception,)
    code = (
        "import sys, kl_retrievers; before = set(sys.modules); import kl_retrievers._errors; "
        "print(sorted(set(sys.modules) - before))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "['kl_retrievers._errors']", done.stdout  # a leaf: any module may import it


def test_except_klretrieverserror_catches_a_load_error(tmp_path: Path) -> None:
    from kl_retrievers import KLStore

    folder = tmp_path / "gaussians"
    folder.mkdir()
    (folder / "config.json").write_text('{"library": "kl_retrievers", "kind": "gaussians"}')
    with pytest.raises(KLRetrieversError, match="saved Gaussians"):
        KLStore.load(folder)
