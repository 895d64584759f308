"""Gaussian encoders on ONNX Runtime: export, optional dynamic int8 quantisation, and a torch-free encoder.

:func:`export_onnx` (also :meth:`GaussianEncoder.export_onnx <kl_retrievers.encoder.GaussianEncoder.export_onnx>`)
writes a folder that :class:`OnnxGaussianEncoder` loads with numpy, ``onnxruntime`` and ``tokenizers`` only:

- ``model.onnx``: one graph from token ids to the two outputs ``mean`` and ``var`` (``(batch, dim)``
  float32 each). Pooling, the normalisation of the pooled state, both heads, the softplus-beta and
  the variance floor are inside the graph. With ``quantize="int8"`` the weights of its matrix
  products are int8 (ONNX Runtime's dynamic quantisation: activations are quantised on the fly).
- ``tokenizer.json``: the encoder's tokenizer (``[VAR]`` included) for the ``tokenizers`` library;
  the encoder inserts ``[VAR]`` after the first token exactly as the torch encoder does.
- ``config.json``: ``backend: "onnx"``, the quantisation, the dimension, the token budgets, the
  library version, the score, the source encoder's config and the graph's SHA-256.

This module imports neither torch nor transformers: only the export needs them (and ``onnx``
for quantisation), and they are imported when it runs.

Examples:
    >>> from kl_retrievers import load_model
    >>> enc = load_model("minilm-gauss-soup", backend="onnx")  # doctest: +SKIP
    >>> enc.encode_documents(["a passage"]).mean.shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import atexit
import errno
import functools
import importlib.util
import inspect
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any, Literal, NoReturn, get_args

import numpy as np

from kl_retrievers._config import _SHA256_HEX, TOKENIZER_SHA256, check_tokenizer_sha256, model_similarity
from kl_retrievers._encoding import (
    TORCH_EXTRA,
    EncoderMixin,
    _is_int,
    cut_long_texts,
    eval_mode,
    longest_added_token,
    progress_bar,
    require_torch,
    shared_switch,
)
from kl_retrievers._errors import KLRetrieversError, NothingSavedError
from kl_retrievers._io import (
    atomic_dir,
    check_dangling_link,
    check_version,
    describe_saved_meta,
    env_value,
    in_model_folder,
    is_within,
    library_version,
    load_unchanged,
    lock_file,
    make_dirs,
    not_this_kind_error,
    parse_json_object,
    read_json_object,
    recover_dir,
    some_names,
    user_cache_dir,
    user_path,
)
from kl_retrievers.gaussian import SCORE_DIRECTION, Gaussians
from kl_retrievers.hub import local_reference
from kl_retrievers.hub import sha256_file as _sha256

if TYPE_CHECKING:
    import mmap

    import onnxruntime
    import tokenizers

    from kl_retrievers.encoder import GaussianEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "QUANTIZATIONS",
    "Quantization",
    "OnnxEncoderConfig",
    "OnnxGaussianEncoder",
    "OnnxModelError",
    "export_onnx",
    "is_onnx_folder",
    "make_session_options",
]

FORMAT_VERSION = 1
BACKEND = "onnx"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_NAME = "config.json"
VAR_TOKEN = "[VAR]"
#: Weight quantisations of an ONNX export: dynamic int8 weights (``quantize=None``, or ``"float32"`` where a
#: ``quantize`` option takes it, keeps float32 weights).
Quantization = Literal["int8"]
#: Accepted values of ``quantize``: the :data:`Quantization` values, or none (float32); the runtime checks read it.
QUANTIZATIONS: tuple[Quantization | None, ...] = (*get_args(Quantization), None)
#: What a ``quantize`` parameter takes: a :data:`Quantization`, or ``"float32"`` or ``None`` (float32 weights).
QuantizeOption = Quantization | Literal["float32"] | None
OUTPUTS = ("mean", "var")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17
#: The most intra-op threads :func:`make_session_options` accepts on any machine: ONNX Runtime starts them all at
#: once, each with its own stack and buffers (tens of thousands took 16 GiB), so a mistyped count could exhaust
#: the machine. Below it, the bound is relative to the machine: :func:`max_threads`.
MAX_THREADS = 1024
#: :func:`max_threads` allows this many intra-op threads per usable CPU core ...
_THREADS_PER_CORE = 4
#: ... and at least this many, on any machine.
_MIN_MAX_THREADS = 16
#: Batches whose texts are tokenized together when encoding (bounds the memory held by token ids) ...
_CHUNK_BATCHES = 16
#: ... fewer when they would hold more texts than this (a large batch_size), but always one batch at least.
_CHUNK_TEXTS = 2048
#: Texts per tokenizer call when counting tokens.
_TOKENIZE_CHUNK = 1024
#: Token budgets whose tokenizer an encoder keeps.
_TOKENIZERS_KEPT = 8
_FIXED_VOCABULARY = (
    "the ONNX graph's vocabulary is fixed when it is exported: change the torch encoder's tokenizer (and resize its "
    "embeddings), then export it again"
)
_OWN_BUDGETS = "the encoder truncates to its token budgets: pass max_length= to encode_queries / encode_documents"
#: The ``tokenizers.Tokenizer`` methods that change it, each with what to do instead: they raise on
#: :attr:`OnnxGaussianEncoder.tokenizer`, which the encoder does not tokenize with (:func:`_read_only_tokenizer`).
_TOKENIZER_CHANGES = {
    "add_tokens": _FIXED_VOCABULARY,
    "add_special_tokens": _FIXED_VOCABULARY,
    "train": _FIXED_VOCABULARY,
    "train_from_iterator": _FIXED_VOCABULARY,
    "enable_truncation": _OWN_BUDGETS,
    "no_truncation": _OWN_BUDGETS,
    "enable_padding": "the encoder pads each batch itself",
    "no_padding": "the encoder pads each batch itself",
}
#: Names how exports are made; part of the key of :func:`kl_retrievers.load_model`'s ONNX cache, so that a
#: change of recipe makes new exports instead of reusing old ones.
EXPORT_RECIPE = f"format{FORMAT_VERSION}-opset{_OPSET}-eager-bertfusion-int8matmul-perchannel-int8emb"
#: int8 exports store embedding tables at least this large as int8 rows (dequantised when the graph loads):
#: the word embeddings are most of a small model's bytes once its matrix products are int8.
_INT8_EMBEDDINGS_BYTES = 1 << 20
#: Texts used to check an export against the torch encoder (varied lengths, so padding is exercised).
_PROBE_TEXTS = (
    "a",
    "what is the gaussian of a document?",
    "The quick brown fox jumps over the lazy dog; " * 40,
    "",
    "Retrieval with Gaussian representations scored by negative KL divergence.",
)


class OnnxModelError(KLRetrieversError, ValueError):
    """A folder that is not a valid ONNX Gaussian encoder (the message names the folder and what is wrong)."""


class _NoOnnxSavedError(NothingSavedError, OnnxModelError):
    """A folder holding no encoder that no other kind kl_retrievers saves names as its own (the ONNX loaders)."""


@dataclass
class OnnxEncoderConfig:
    """What an :class:`OnnxGaussianEncoder` reads from its ``config.json``.

    Attributes:
        dim: Output dimension ``k`` of the mean and the variance.
        max_length: Default token budget for documents.
        query_max_length: Default token budget for queries.
        quantize: ``"int8"`` or ``None`` (float32 weights).
        var_token_id: Id of ``[VAR]`` (inserted after the first token), or ``None`` without it.
        max_tokens: The most tokens the backbone reads (its position embeddings), or ``None``.
        pad_token_id: Id used for padding.
        padding_side: Always ``"right"`` in new exports, as the torch encoder pads; an older export's
            ``"left"`` is read but ignored (left padding moved ``[VAR]`` and the CLS token).
        model_sha256: SHA-256 of ``model.onnx`` (identifies the weights, e.g. for encoding caches).
        encoder: The source :class:`~kl_retrievers.encoder.GaussianEncoderConfig` as a dictionary.
        external_data_sha256: SHA-256 of each file that holds weights of the graph outside ``model.onnx`` (ONNX
            external data), by its location as the graph names it. An export records them (``onnx.external_data_sha256``
            in ``config.json``) when its graph has any, and a graph whose ``model_sha256`` is pinned is refused on load
            unless its external-data files match them, as ``model.onnx`` must match ``model_sha256``: the latter covers
            the graph file only. Empty for a graph without external data (the usual export), and then left out of
            :meth:`to_dict`; after a load, the files' own, so that what identifies the encoder's weights
            (:func:`kl_retrievers.encoding_cache.model_fingerprint` hashes this config) covers them too.
    """

    dim: int
    max_length: int
    query_max_length: int
    quantize: str | None
    var_token_id: int | None
    max_tokens: int | None
    pad_token_id: int
    padding_side: str
    model_sha256: str
    encoder: dict[str, Any] = field(default_factory=dict)
    external_data_sha256: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (with ``backend: "onnx"``; ``external_data_sha256`` only when the graph has some)."""
        data = {"backend": BACKEND, **asdict(self)}
        if not data["external_data_sha256"]:  # the same dictionary as before it existed, for graphs without any
            del data["external_data_sha256"]
        return data

    @property
    def beta(self) -> float | None:
        """The source encoder's softplus sharpness."""
        return self.encoder.get("beta")


# ---------------------------------------------------------------------- export
def export_onnx(
    encoder: GaussianEncoder,
    folder: str | os.PathLike[str],
    *,
    quantize: QuantizeOption = "int8",
    per_channel: bool = True,
    verify: bool = True,
    source_sha256: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a :class:`~kl_retrievers.encoder.GaussianEncoder` to an ONNX folder.

    The target folder is replaced as a whole. It may be absent, empty, or a previous ONNX export made by
    kl_retrievers (its ``config.json`` says ``"library": "kl_retrievers"`` and ``"backend": "onnx"``, and it
    holds nothing else than the export's files); any other existing content is refused unless
    ``overwrite=True``, so that nothing is deleted silently. The encoder's own folder (and any folder that
    holds it) is always refused.

    The export records the identity of the encoder's weights (``encoder.weights_sha256``), which it reports as
    its own so that a store can tell when its model changed. An encoder whose identity is not known (built or
    changed in memory since its last load or save) logs a warning and the export records none: call
    ``save_pretrained`` first, or export the saved folder.

    Args:
        encoder: The torch encoder to export (left unchanged, in its train/eval mode). A float16 or bfloat16
            encoder is exported from a float32 copy of its weights (logged at INFO): the graph computes in
            float32, as ``encoder.float()`` does.
        folder: Target folder; written atomically (an interrupted export keeps the previous copy). A symbolic
            link there is followed, as :meth:`GaussianEncoder.save_pretrained
            <kl_retrievers.encoder.GaussianEncoder.save_pretrained>` follows one: for ``current -> v3``, ``v3``
            is replaced (judged as above) and the link is kept; a dangling link is exported through as a new
            folder. A link into the ONNX cache of :func:`kl_retrievers.load_model` is refused (its entries are
            that cache's own, which never follows a link at an entry). Exports into one folder run one at a time
            (a lock file ``.NAME.lock`` beside it, removed after); one that waited for another process's export of
            the same files (``source_sha256``), weights and settings uses that export instead of exporting again.
        quantize: ``"int8"`` (dynamic quantisation of the weights with ONNX Runtime's
            ``quantize_dynamic``) or ``None`` (also ``"float32"``, as the CLI names it) for float32.
        per_channel: int8 only: one scale per output channel of each weight (closer to float32).
        verify: Check the float32 graph against the torch encoder on a few texts of varied lengths
            (padding and truncation included) before writing; raises when they differ.
        source_sha256: SHA-256 of the saved encoder's files the export was made from
            (:func:`kl_retrievers.pretrained.source_sha256`), recorded as ``source.sha256``: a shipped
            graph whose model has changed since is then refused.
        overwrite: Replace ``folder`` even when it holds other files than a previous ONNX export (they are
            deleted). Never allowed for the encoder's own folder.

    Returns:
        The folder written.

    Raises:
        ValueError: ``quantize`` is not one of :data:`QUANTIZATIONS`; or ``folder`` is the encoder's own
            folder (or holds it), or it is not empty and not a previous ONNX export (without ``overwrite``), or
            it is a link into the ONNX cache, a dangling link into a missing folder, or a link loop.
        RuntimeError: The exported graph does not reproduce the torch encoder.
        ModuleNotFoundError: torch, transformers or onnx is missing (the message names the extra,
            ``pip install "kl-retrievers[torch]"``).

    Examples:
        >>> encoder.export_onnx("my-encoder-onnx")  # doctest: +SKIP
        >>> OnnxGaussianEncoder("my-encoder-onnx").encode_queries("what is -KL?")  # doctest: +SKIP
    """
    return _export_onnx(
        encoder,
        folder,
        quantize=quantize,
        per_channel=per_channel,
        verify=verify,
        source_sha256=source_sha256,
        overwrite=overwrite,
        follow_link=True,
        lock=True,
    )


def _export_onnx(
    encoder: GaussianEncoder,
    folder: str | os.PathLike[str],
    *,
    quantize: str | None,
    per_channel: bool,
    verify: bool,
    source_sha256: str | None,
    overwrite: bool,
    follow_link: bool,
    lock: bool,
) -> Path:
    """:func:`export_onnx`; ``follow_link=False`` replaces a symbolic link at ``folder`` instead of following it.

    :func:`kl_retrievers.load_model`'s ONNX cache exports with ``follow_link=False``: a link planted at a cache
    entry (a shared cache) is replaced by the export, and the folder it points to is left as it is. It also
    exports with ``lock=False``: it holds the entry's :func:`_export_lock` itself, around its own check of the
    entry and the loading of the torch encoder too (a second ``flock`` on the same file in one process would wait
    for the first forever). With ``lock=True`` (:func:`export_onnx`) the export takes that lock here.
    """
    if quantize == "float32":  # the name the CLI and the docs use for float32 weights
        quantize = None
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} (or 'float32', as None); got {quantize!r}")
    target = user_path(folder)
    final = _check_export_target(  # a link you name (current -> v3) is resolved once, here: v3 is written
        target, source=getattr(encoder, "name_or_path", None), overwrite=overwrite, follow_link=follow_link
    )
    require_torch("the ONNX export")
    if importlib.util.find_spec("onnx") is None:
        raise ModuleNotFoundError(f"the ONNX export needs the onnx package; {TORCH_EXTRA}", name="onnx")
    identity = getattr(encoder, "weights_sha256", None)  # before the export (nothing in it changes the weights)
    if not isinstance(identity, str):
        logger.warning(
            "exporting %s to %s: its weights have no known identity (built or changed in memory since their last "
            "load or save), so the export records none; save_pretrained first, or export the saved folder, so "
            "stores can tell the model changed",
            encoder.name_or_path,
            target,
        )
        identity = None
    write = functools.partial(
        _write_export,
        encoder,
        final,
        quantize=quantize,
        per_channel=per_channel,
        verify=verify,
        source_sha256=source_sha256,
        identity=identity,
    )
    if not lock:  # the caller holds the lock (load_model's cache)
        write()
    else:  # one export at a time into a folder: one that waited for another's export of the same model uses it
        make_dirs(final.parent, saving=final)  # the lock file lies beside the export
        with _export_lock(final) as waited:
            if waited and _same_export(
                final, quantize=quantize, per_channel=per_channel, source_sha256=source_sha256, identity=identity
            ):
                logger.info(
                    "another process exported %s to %s (%s) while this one waited; using its export",
                    encoder.name_or_path,
                    target,
                    quantize or "float32",
                )
                return target
            write()
    logger.info("exported %s to %s (%s)", encoder.name_or_path, target, quantize or "float32")
    return target


def _export_lock(final: Path) -> AbstractContextManager[bool]:
    """The lock of exports into the folder ``final`` (:func:`~kl_retrievers._io.lock_file`; yields whether it
    waited for another process): a lock file ``.NAME.lock`` beside it, removed after. Its folder must exist.

    :func:`export_onnx` holds it around the export; :func:`kl_retrievers.load_model` around its ONNX cache entry's
    check, the loading of the torch encoder and the export (so a process that waited loads no torch encoder).
    """
    return lock_file(final.parent / f".{final.name}.lock", purpose=f"the ONNX export into {final}")


def _same_export(
    folder: Path, *, quantize: str | None, per_channel: bool, source_sha256: str | None, identity: str | None
) -> bool:
    """Whether ``folder`` holds the export :func:`_write_export` would write: same files, weights and settings.

    Asked of the export another process made while this one waited for it: its ``config.json`` records the same
    source files (``source_sha256``, which must be known), weights identity, quantisation and versions (this
    library, the export format, the opset, torch, onnx and onnxruntime). A symbolic link at ``folder`` is never
    read through (the export replaces it).
    """
    import torch

    meta = None if source_sha256 is None or folder.is_symlink() else _export_meta(folder)
    if meta is None or not (folder / MODEL_FILE).is_file():
        return False
    source = meta.get("source")
    expected = {
        "library_version": library_version(),
        "format_version": FORMAT_VERSION,
        "quantize": quantize,
        "per_channel": bool(per_channel) if quantize else None,
        "onnx_opset": _OPSET,
        "torch_version": torch.__version__,
        "onnx_versions": _onnx_versions(),
    }
    return (
        isinstance(source, dict)
        and source.get("sha256") == source_sha256
        and source.get("weights_sha256") == identity
        and all(meta.get(key) == value for key, value in expected.items())
    )


def _write_export(
    encoder: GaussianEncoder,
    final: Path,
    *,
    quantize: str | None,
    per_channel: bool,
    verify: bool,
    source_sha256: str | None,
    identity: str | None,
) -> None:
    """Export ``encoder`` into the folder ``final`` (replaced atomically), as :func:`export_onnx` describes."""
    import torch

    encoder = _float32_encoder(encoder)
    tokenizer_json = _tokenizer_json(encoder)
    with atomic_dir(final) as tmp:
        traced = tmp / "traced.onnx"
        with eval_mode(encoder):  # shared with concurrent encodings, which restore the mode only when all end
            _torch_export(encoder, traced)
            if verify:
                _verify_export(encoder, traced, tokenizer_json)
            float_path, fused = _fused_graph(encoder, traced, tmp / "fused.onnx", tokenizer_json)
        if quantize == "int8":
            _quantize_int8(float_path, tmp / MODEL_FILE, per_channel=per_channel, fused=fused)
            int8_tables = _int8_embeddings(tmp / MODEL_FILE)
        else:
            int8_tables = []
            float_path.replace(tmp / MODEL_FILE)
        for leftover in (traced, tmp / "fused.onnx"):
            leftover.unlink(missing_ok=True)
        (tmp / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        config = _onnx_config(encoder, quantize=quantize, model_sha256=_sha256(tmp / MODEL_FILE))
        # weights kept outside model.onnx (a graph over 2 GB): pinned too, as model_sha256 pins the graph file
        config.external_data_sha256 = _external_data_sha256(tmp / MODEL_FILE, f"the export of {encoder.name_or_path!r}")
        meta = {
            "library": "kl_retrievers",
            "library_version": library_version(),
            "format_version": FORMAT_VERSION,
            "backend": BACKEND,
            "quantize": quantize,
            "per_channel": bool(per_channel) if quantize else None,
            "onnx_opset": _OPSET,
            "fused_attention": fused,
            "int8_tables": int8_tables,
            "torch_version": torch.__version__,
            "onnx_versions": _onnx_versions(),
            "score": {"name": model_similarity(encoder), "direction": SCORE_DIRECTION},  # a vector twin's own
            "source": {
                "name_or_path": str(encoder.name_or_path),
                "sha256": source_sha256,
                # the identity of its weights (encoder.weights_sha256; None, with a warning, when not known),
                # reported by the export as its own weights_sha256: a store indexed on either backend compares it
                "weights_sha256": identity,
                "backbone_config": encoder.backbone.config.to_dict(),
            },
            "outputs": list(OUTPUTS),
            "onnx": {k: v for k, v in config.to_dict().items() if k != "backend"},
            # checked on load: an edited tokenizer.json (two vocabulary entries swapped) loads silently otherwise
            TOKENIZER_SHA256: {TOKENIZER_FILE: _sha256(tmp / TOKENIZER_FILE)},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _float32_encoder(encoder: GaussianEncoder) -> GaussianEncoder:
    """``encoder`` itself when its weights are float32, else a float32 copy (``encoder`` is left as it is).

    ONNX Runtime's CPU kernels lack float16 and bfloat16 for many operators, and the export is checked
    against torch at float32 tolerances: a half-precision encoder is exported from a float32 copy of its
    weights (every half value is exact in float32), so the graph computes what ``encoder.float()`` would.
    """
    import torch

    dtypes = {p.dtype for p in encoder.parameters() if p.is_floating_point()}
    half = sorted(str(d) for d in dtypes if d in (torch.float16, torch.bfloat16))
    if not half:
        return encoder
    import copy

    logger.info(
        "exporting %s from a float32 copy of its %s weights (ONNX graphs run in float32; the encoder itself is "
        "left unchanged)",
        encoder.name_or_path,
        " and ".join(half),
    )
    return copy.deepcopy(encoder).float()


#: What an export writes into its folder: a folder holding only these (and a ``config.json`` that says it is an
#: export) is replaced by a new export without ``overwrite``.
EXPORT_FILES = (MODEL_FILE, TOKENIZER_FILE, CONFIG_NAME)


def _export_meta(folder: Path) -> dict[str, Any] | None:
    """``folder``'s ``config.json`` when it says the folder is an ONNX export made by kl_retrievers, else None."""
    meta = read_json_object(folder / CONFIG_NAME)  # None when missing, unreadable, not JSON or not an object
    if meta is not None and meta.get("library") == "kl_retrievers" and meta.get("backend") == BACKEND:
        return meta
    return None


def _check_export_target(
    folder: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    follow_link: bool = True,
) -> Path:
    """Raise ``ValueError`` when exporting into ``folder`` would delete something that is not an old export.

    ``folder`` may be absent, an empty folder, or a previous ONNX export made by kl_retrievers holding only
    :data:`EXPORT_FILES`; other content needs ``overwrite=True``. A ``folder`` that is, or holds, the
    ``source`` folder (the encoder's own files) is always refused.

    A symbolic link at ``folder`` is judged as the export treats it: followed (``follow_link``, as
    :func:`export_onnx` does), what it points to is judged, a dangling one is a new folder (its folder must
    exist), and one into the ONNX cache is refused; not followed (the ONNX cache's own export), the link is what
    is replaced, which needs ``overwrite=True`` (as a dangling link does for
    :func:`~kl_retrievers._io.check_replace_target`). A followed link is resolved once, here, and the folder it
    points to returned for :func:`~kl_retrievers._io.atomic_dir` (without ``follow_link``): a link re-pointed
    after this check is replaced, never followed to a folder that was not judged. A followed link whose own folder
    lies in what it points to (``cur -> .``) is refused, and so is any export (``follow_link``) whose folder,
    its links resolved, lies in the ONNX cache.

    Returns:
        The folder the export replaces.

    Examples:
        >>> _check_export_target("no-such-folder", source="my-encoder")  # doctest: +ELLIPSIS
        PosixPath('.../no-such-folder')
        >>> _check_export_target(".", source=".")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: cannot export into .: it is the folder of the encoder being exported ...
    """
    target = Path(os.path.abspath(folder))
    shown = Path(folder)  # the path messages name (the link, where one is followed)
    replaced_link = target.is_symlink() and not follow_link
    if follow_link:
        if target.is_symlink():
            check_dangling_link(target)  # a missing folder along it, or a loop
        real, cache = Path(os.path.realpath(target)), _onnx_cache_dir()
        if cache is not None and is_within(real, Path(os.path.realpath(cache))):
            how = "a symbolic link into" if target.is_symlink() else "a folder in"
            raise ValueError(
                f"cannot export into {shown}: it is {how} the ONNX cache of load_model ({real}), whose entries are "
                "the exports load_model made of the models their names hash, and which it reuses as such; export "
                "into a folder of your own"
            )
        if target.is_symlink():
            if real.exists() and not real.is_dir():
                raise ValueError(
                    f"cannot export into {shown} (a symbolic link to {real}): it exists and is not a folder"
                )
            if is_within(Path(os.path.realpath(target.parent)), real):
                raise ValueError(
                    f"cannot export into {shown}: it is a symbolic link to {real}, which holds the link itself, and an "
                    "export replaces the folder it points to as a whole (the link with it); point the link elsewhere"
                )
            target = real  # resolved once: the folder judged is the folder written
    if source is not None and os.fspath(source) and Path(source).is_dir():
        own = Path(source).resolve()
        # a link the export replaces is judged where it lies (its folder resolved), not where it points
        resolved = Path(os.path.realpath(target.parent)) / target.name if replaced_link else target.resolve()
        if is_within(own, resolved):
            what = "the folder of" if own == resolved else "a folder that holds"
            raise ValueError(
                f"cannot export into {shown}: it is {what} the encoder being exported ({source}), and an export "
                "replaces its target folder as a whole; choose a new folder, e.g. a sibling such as "
                f"{own.name}-onnx"
            )
    if replaced_link:
        if overwrite:
            return target  # the link itself is replaced; what it points to is left as it is
        raise ValueError(
            f"cannot export into {shown}: it is a symbolic link (to {os.readlink(target)}), which this export "
            "replaces by a folder (it does not write into what the link points to); pass overwrite=True "
            "(--overwrite) to replace the link"
        )
    if not target.exists():
        return target
    if not target.is_dir():
        link = f" (a symbolic link to {os.path.realpath(target)})" if target.is_symlink() else ""
        raise ValueError(f"cannot export into {shown}{link}: it exists and is not a folder")
    names = sorted(p.name for p in target.iterdir())
    if not names or overwrite:
        return target
    if _export_meta(target) is None:
        raise ValueError(
            f"cannot export into {shown}: it is not empty ({some_names(names)}) and is not an ONNX export made by "
            "kl_retrievers; an export replaces its target folder as a whole and would delete them. Choose a new or "
            "empty folder, or pass overwrite=True (--overwrite) to replace it"
        )
    extra = [name for name in names if name not in EXPORT_FILES]
    if extra:
        raise ValueError(
            f"cannot export into {shown}: it is an earlier ONNX export but also holds {some_names(extra)}, which a "
            "new export would delete; move them away, or pass overwrite=True (--overwrite) to replace the folder"
        )
    return target


#: The variable naming the ONNX cache of :func:`kl_retrievers.load_model` (``kl_retrievers.pretrained.ONNX_CACHE_ENV``,
#: which imports this module: this one may not import it back).
_ONNX_CACHE_ENV = "KL_RETRIEVERS_ONNX_CACHE"


def _onnx_cache_dir() -> Path | None:
    """:func:`kl_retrievers.pretrained.onnx_cache_dir`, or ``None`` where no cache folder can be named."""
    try:
        return user_cache_dir(_ONNX_CACHE_ENV, "onnx")
    except OSError:  # CacheFolderError: no home folder and no variable set, so there is no cache to protect
        return None


#: This process's private ONNX cache (:func:`_export_cache_dir`), made the first time the default ONNX cache cannot
#: be written (made anew if removed meanwhile), and the (cache folder, private folder) pairs already warned about
#: (``""``: no cache folder could be named).
_private_cache: Path | None = None
_private_cache_warned: set[tuple[str, str]] = set()
_private_cache_lock = threading.Lock()


def _export_cache_dir() -> Path:
    """The folder :func:`kl_retrievers.load_model` exports into: the ONNX cache (:func:`_onnx_cache_dir`), created
    if missing, where it can be written; else, for the default cache, this process's private temporary folder.

    A default cache that cannot be written (a read-only home or file system, a container under an arbitrary user
    id, a cache owned by another user) or named (no home folder) does not stop a load: it exports into a folder of
    ``tempfile.mkdtemp``, made once per process (anew, if a cleaner of the temporary folder removed it meanwhile)
    and removed when the process ends, and logs a WARNING naming the cache, the temporary folder and the variable
    to set, once per cache folder and temporary folder. A cache that ``KL_RETRIEVERS_ONNX_CACHE`` names was chosen:
    one that cannot be written is an error, rather than an export into a temporary folder by every process. Entries
    the cache already holds are read from it before this is asked (reading one writes nothing).

    Raises:
        OSError: ``KL_RETRIEVERS_ONNX_CACHE`` names a folder that cannot be written (the message names the folder and
            the variable), or neither the default cache nor a temporary folder can be written (it names both).
    """
    global _private_cache
    cache: Path | None = None
    try:
        cache = user_cache_dir(_ONNX_CACHE_ENV, "onnx")
        make_dirs(cache)
        _check_writable(cache)
    except OSError as exc:  # CacheFolderError (no folder can be named) included
        if cache is not None and env_value(_ONNX_CACHE_ENV) is not None:  # set (blank is unset): chosen
            raise OSError(
                f"{_ONNX_CACHE_ENV} names the ONNX cache {cache}, which cannot be written ({exc}): set it to a "
                "writable folder, or unset it to use the default cache"
            ) from exc
        problem = str(exc) if cache is None else f"the ONNX cache {cache} cannot be written ({exc})"
    else:
        return cache
    with _private_cache_lock:
        removed = _private_cache if _private_cache is not None and not _private_cache.is_dir() else None
        if _private_cache is None or removed is not None:  # removed meanwhile: by a cleaner of the temporary folder
            try:
                _private_cache = Path(tempfile.mkdtemp(prefix="kl_retrievers-onnx-"))
            except OSError as exc:
                raise OSError(
                    f"{problem}, and no temporary folder can be made instead ({exc}); set {_ONNX_CACHE_ENV} to a "
                    "writable folder"
                ) from exc
            atexit.register(_remove_private_cache, _private_cache, os.getpid())
        key = ("" if cache is None else str(cache), str(_private_cache))
        if key not in _private_cache_warned:
            _private_cache_warned.add(key)
            logger.warning(
                "%s; exporting into the temporary folder %s instead%s, removed when this process ends (each process "
                "exports again): set %s to a writable folder to keep the exports",
                problem,
                _private_cache,
                "" if removed is None else f" (made anew: {removed}, used before, was removed meanwhile)",
                _ONNX_CACHE_ENV,
            )
        return _private_cache


def _check_writable(folder: Path) -> None:
    """Raise ``OSError`` unless a folder can be made in ``folder`` (as an export's temporary copy is), then remove it.

    A real try rather than ``os.access``, which misses access lists and a server's mapping of user ids.
    """
    os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=folder))


def _remove_private_cache(folder: Path, pid: int) -> None:
    """Remove the private ONNX cache ``folder`` at exit, in the process that made it (not in a forked child)."""
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


def _read_only_tokenizer(text: str, owner: str) -> tokenizers.Tokenizer:
    """A ``tokenizers.Tokenizer`` made from ``text`` (no padding or truncation) whose methods that change it
    (:data:`_TOKENIZER_CHANGES`) raise ``TypeError``, naming what to do instead: ``owner`` (the encoder's class)
    tokenizes with its own copies, which such a change would silently miss.

    The class cannot be subclassed, so the methods are shadowed on the instance (a ``Tokenizer`` keeps a
    ``__dict__``): it stays a ``tokenizers.Tokenizer``. ``copy.deepcopy``, ``copy.copy`` and pickling give a
    plain one, which may be changed.
    """
    from tokenizers import Tokenizer

    made = Tokenizer.from_str(text)
    made.no_padding()
    made.no_truncation()
    for method, instead in _TOKENIZER_CHANGES.items():
        setattr(made, method, _refused_change(owner, method, instead))
    return made


def _refused_change(owner: str, method: str, instead: str) -> Callable[..., NoReturn]:
    """The stand-in for ``method`` on :func:`_read_only_tokenizer`'s tokenizer: raises naming the call."""

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        shown = ", ".join([*map(repr, args), *(f"{key}={value!r}" for key, value in kwargs.items())])
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise TypeError(
            f"{owner}.tokenizer is read-only: {method}({shown}) would change only this copy, not what the "
            f"encoder encodes; {instead}. A copy that can be changed: copy.deepcopy(model.tokenizer)"
        )

    refuse.__name__ = refuse.__qualname__ = method
    refuse.__doc__ = f"Refused: {owner}.tokenizer is read-only ({instead})."
    return refuse


def _tokenizer_json(encoder: GaussianEncoder) -> str:
    """The encoder's fast tokenizer as ``tokenizer.json`` text, with no padding or truncation preset."""
    from tokenizers import Tokenizer

    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{encoder.name_or_path or 'this encoder'}: its tokenizer ({type(encoder.tokenizer).__name__}) has no "
            "tokenizers-library backend (tokenizer.json); the ONNX export needs a fast tokenizer"
        )
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.no_truncation()
    return str(tok.to_str(pretty=False))


def _torch_export(encoder: GaussianEncoder, path: Path) -> None:
    """Trace ``encoder`` (already in eval mode) into an ONNX graph with dynamic batch and length."""
    import torch

    class _Graph(torch.nn.Module):
        def __init__(self, enc: GaussianEncoder, names: tuple[str, ...]) -> None:
            super().__init__()
            self.enc = enc
            self.names = names

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            kwargs = dict(zip(self.names, inputs, strict=True))
            mean, var = self.enc(**kwargs)
            return mean.float(), var.float()

    batch = encoder.tokenize(list(_PROBE_TEXTS[:2]), 16)  # two lengths: the trace sees padding
    names = tuple(n for n in _INPUTS if n in batch)
    args = tuple(batch[n].to(encoder.device) for n in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "tokens"} for n in names}
    axes.update({n: {0: "batch"} for n in OUTPUTS})
    graph = _Graph(encoder, names).eval()
    # Plain (eager) attention traces into a smaller graph than SDPA's (no NaN guards per layer).
    backbone = encoder.backbone
    previous = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
    switch = getattr(backbone, "set_attn_implementation", None)
    switched = False
    if callable(switch) and previous not in (None, "eager"):
        try:
            switch("eager")
            switched = True
        except (ValueError, TypeError, AttributeError, ImportError):  # a backbone without eager attention
            logger.debug("keeping %s attention for the ONNX export", previous)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow in transformers
            torch.onnx.export(
                graph,
                args,
                os.fspath(path),
                input_names=list(names),
                output_names=list(OUTPUTS),
                dynamic_axes=axes,
                opset_version=_OPSET,
                do_constant_folding=True,
                **_exporter_options(torch.onnx.export),
            )
    finally:
        if switched and callable(switch):
            switch(previous)


def _exporter_options(export: Callable[..., Any]) -> dict[str, Any]:
    """``dynamo=False`` (the TorchScript exporter this module traces with) when ``export`` takes ``dynamo``.

    torch 2.5 added the keyword (and 2.9 made the dynamo exporter the default); older releases, which the
    ``[torch]`` extra admits (torch 2.3 and 2.4), have only the TorchScript exporter and reject it.

    Examples:
        >>> _exporter_options(lambda model, args, f, *, dynamo=True: None)
        {'dynamo': False}
        >>> _exporter_options(lambda model, args, f, opset_version=None: None)
        {}
    """
    try:
        parameters = inspect.signature(export).parameters
    except (TypeError, ValueError):  # no signature to read: torch's own functions have one
        return {}
    return {"dynamo": False} if "dynamo" in parameters else {}


def _import_failure(exc: BaseException) -> str:
    """What failed in an import: each exception of the chain as ``Type: message`` (``Type`` alone when empty).

    Examples:
        >>> _import_failure(ModuleNotFoundError("No module named 'ml_dtypes'", name="ml_dtypes"))
        "ModuleNotFoundError: No module named 'ml_dtypes'"
        >>> _import_failure(ImportError())
        'ImportError (no message)'
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        text = str(current).strip()
        parts.append(f"{type(current).__name__}: {text}" if text else f"{type(current).__name__} (no message)")
        current = current.__cause__ or current.__context__
    return "; caused by ".join(parts)


#: Import names whose distribution (what pip installs) is named otherwise, for a module that is missing (whose
#: metadata cannot say): what onnxruntime and onnx import.
_DISTRIBUTIONS = {"google.protobuf": "protobuf", "yaml": "PyYAML"}


def _distributions_of(module: str) -> list[str]:
    """The distributions that provide the import ``module`` (``google.protobuf`` -> ``["protobuf"]``).

    The installed ones first (``importlib.metadata.packages_distributions``: an ``onnxruntime`` import may
    come from ``onnxruntime-gpu``), then a short table for modules that are not installed, then the import
    name itself.

    Examples:
        >>> _distributions_of("google.protobuf.message"), _distributions_of("yaml"), _distributions_of("no_such_x")
        (['protobuf'], ['PyYAML'], ['no_such_x'])
    """
    from importlib import metadata

    top = module.partition(".")[0]
    for name, distribution in _DISTRIBUTIONS.items():
        if module == name or module.startswith(name + "."):
            return [distribution]
    try:
        installed = metadata.packages_distributions().get(top, [])
    except Exception:  # pragma: no cover - unreadable metadata: the import name is the best guess
        installed = []
    return sorted(set(installed)) or [top]


def _verify_export(encoder: GaussianEncoder, path: Path, tokenizer_json: str) -> None:
    """Raise when the float32 graph, fed by the tokenizers-library pipeline, differs from torch.

    Budgets above the encoder's :attr:`~kl_retrievers.encoder.GaussianEncoder.max_tokens` are clamped to it
    on both sides, as encoding clamps them (``config.max_length`` may be above it: a warning, not an error).
    """
    import torch

    onnx_enc = OnnxGaussianEncoder._from_parts(
        path, tokenizer_json, _onnx_config(encoder), where=f"the traced export of {encoder.name_or_path!r} ({path})"
    )
    texts = list(_PROBE_TEXTS)
    for asked in (encoder.config.max_length, 8):
        max_length = encoder._clamp_length(int(asked))
        with torch.inference_mode():
            batch = {k: v.to(encoder.device) for k, v in encoder.tokenize(texts, max_length).items()}
            mean, var = (t.float().cpu().numpy() for t in encoder(**batch))
        arrays = onnx_enc._batch_arrays(onnx_enc._token_ids(texts, max_length))
        for key, value in arrays.items():
            if key in batch and not np.array_equal(value, batch[key].cpu().numpy()):
                raise RuntimeError(
                    f"the tokenizers-library tokenizer gives other {key} than the encoder's tokenizer "
                    f"(max_length {max_length}); cannot export {encoder.name_or_path!r} to ONNX faithfully"
                )
        got = onnx_enc._encode(texts, max_length, len(texts))
        for name, a, b in (("mean", got.mean, mean), ("var", got.var, var)):
            scale = max(1.0, float(np.abs(b).max()))
            err = float(np.abs(a - b).max())
            if not err <= 1e-4 * scale:
                raise RuntimeError(
                    f"the exported ONNX graph differs from the torch encoder on {name} by {err:.3g} "
                    f"(max_length {max_length}); the export of {encoder.name_or_path!r} is not faithful"
                )


def _onnx_config(encoder: GaussianEncoder, *, quantize: str | None = None, model_sha256: str = "") -> OnnxEncoderConfig:
    tok = encoder.tokenizer
    return OnnxEncoderConfig(
        dim=int(encoder.config.dim),
        max_length=int(encoder.config.max_length),
        query_max_length=int(encoder.config.query_max_length),
        quantize=quantize,
        var_token_id=encoder.var_token_id,
        max_tokens=encoder.max_tokens,
        pad_token_id=int(tok.pad_token_id) if tok.pad_token_id is not None else 0,
        padding_side="right",  # GaussianEncoder.tokenize always pads on the right
        model_sha256=model_sha256,
        encoder=encoder.config.to_dict(),
    )


#: Backbones whose traced graph ONNX Runtime's BERT fusions (attention, embedding and skip layer norms) fit.
_FUSABLE = ("bert",)


def _fused_graph(encoder: GaussianEncoder, traced: Path, target: Path, tokenizer_json: str) -> tuple[Path, bool]:
    """The traced graph with ONNX Runtime's transformer fusions, when they apply and reproduce torch.

    Fused attention reads the padding as sequence lengths (right padding), so it is used only for
    BERT-type backbones padded on the right, and only when the fused graph still matches the torch
    encoder on the probe texts; otherwise the traced graph is kept, unchanged.
    """
    cfg: Any = getattr(encoder.backbone, "config", None)
    right_padded = getattr(encoder.tokenizer, "padding_side", "right") == "right"
    if getattr(cfg, "model_type", None) not in _FUSABLE or not right_padded:
        return traced, False
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        model = optimize_model(
            os.fspath(traced),
            model_type="bert",
            num_heads=int(cfg.num_attention_heads),
            hidden_size=int(cfg.hidden_size),
            opt_level=0,
        )
        model.save_model_to_file(os.fspath(target))
        _verify_export(encoder, target, tokenizer_json)
    except Exception as exc:  # optional speed-up: any failure keeps the plain traced graph
        logger.info("keeping the unfused ONNX graph of %s (%s)", encoder.name_or_path, exc)
        return traced, False
    return target, True


def _quantize_int8(source: Path, target: Path, *, per_channel: bool, fused: bool = False) -> None:
    """Dynamic int8 quantisation of the weights (ONNX Runtime's ``quantize_dynamic``).

    Weights are symmetric int8 (per output channel by default); activations are quantised on the fly
    per tensor. Only matrix products with a constant weight are quantised (and fused attention's
    projections); embeddings, layer norms and the attention scores stay float32.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # onnxruntime.quantization needs the onnx package (and onnx's ml_dtypes)
        module = exc.name or ""
        top = module.partition(".")[0]
        failure = _import_failure(exc)
        if not isinstance(exc, ModuleNotFoundError):  # installed, but too old ("cannot import name ...") or broken
            names = " ".join(_distributions_of(module)) if module else "onnx onnxruntime"
            raise ImportError(
                f"int8 export needs onnxruntime.quantization, which failed to import: {failure}. "
                f"{module or 'What it imports'} is installed but lacks what is imported from it (too old, or "
                f"broken); upgrade it: pip install -U {names}",
                name=exc.name,
            ) from exc
        if top in ("", "onnx", "onnxruntime"):
            raise ImportError(
                f"int8 export needs onnxruntime and onnx, and onnxruntime.quantization failed to import "
                f"({failure}); {TORCH_EXTRA}"
            ) from exc
        names = " ".join(_distributions_of(module))
        raise ModuleNotFoundError(  # installed onnx / onnxruntime, but a package they import is missing
            f"int8 export needs onnxruntime.quantization, which failed to import: {failure}. "
            f"{module} is missing; install it (pip install {names}), or an onnx that requires it "
            f'(pip install -U "kl-retrievers[onnx]")',
            name=exc.name,
        ) from exc
    with _quantiser_logging():  # its records: to the logger onnxruntime.quantization, not the root logger
        quantize_dynamic(
            source,
            target,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"],  # not Gather: the embeddings stay float32
            extra_options={"DefaultTensorType": 1} if fused else None,  # 1: float; contrib ops defeat shape inference
        )


def _int8_embeddings(path: Path, min_bytes: int = _INT8_EMBEDDINGS_BYTES) -> list[str]:
    """Store the large float32 embedding tables of the graph at ``path`` as int8 rows; returns their names.

    Each table read by a ``Gather`` or an ``EmbedLayerNormalization`` becomes an int8 initializer with one
    scale per row (symmetric: a row's largest magnitude maps to 127) and a ``DequantizeLinear`` back to
    float32 under the old name. ONNX Runtime folds it into a float32 table when the session starts
    (``session.disable_quant_qdq``, see :class:`OnnxGaussianEncoder`), so the speed is unchanged.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(path))
    graph = model.graph
    tables = {
        node.input[i]
        for node in graph.node
        for i in ((0,) if node.op_type == "Gather" else (2, 3) if node.op_type == "EmbedLayerNormalization" else ())
        if i < len(node.input)
    }
    nodes, done = [], []
    for init in graph.initializer:
        if init.name not in tables or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
            continue
        table = numpy_helper.to_array(init)
        if table.nbytes < min_bytes:
            continue
        name = init.name
        scale = (np.abs(table).max(axis=1) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        rows = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
        init.CopyFrom(numpy_helper.from_array(rows, f"{name}_int8"))
        graph.initializer.append(numpy_helper.from_array(scale, f"{name}_scale"))
        graph.initializer.append(numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zero_point"))
        inputs = [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"]
        nodes.append(onnx.helper.make_node("DequantizeLinear", inputs, [name], name=f"{name}_dequantize", axis=0))
        done.append(name)
    if nodes:
        for node in reversed(nodes):
            graph.node.insert(0, node)
        onnx.save(model, os.fspath(path))
    return done


def _onnx_versions() -> dict[str, str]:
    """Versions of the packages that shape an export's bytes (recorded in ``config.json``)."""
    from importlib import metadata

    out = {}
    for name in ("onnx", "onnxruntime", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


#: ONNX Runtime's quantiser: its package (whose modules :func:`_quantiser_logging` binds), and the logger its
#: records go to meanwhile (:class:`_QuantiserLogging`).
_QUANTISER = "onnxruntime.quantization"
#: The quantiser's advice to pre-process the graph first, which does not apply to these exports: dropped.
_QUANTISER_ADVICE = "pre-processing before quantization"


class _QuantiserLogging:
    """Stands for the ``logging`` module in ONNX Runtime's quantiser modules while :func:`_quantiser_logging` runs.

    The quantiser logs with the ``logging`` module's own functions (``logging.warning(...)``, ``logging.info(...)``
    in ``onnxruntime.quantization.quantize`` and ``onnx_quantizer``): records of the root logger, and a call that
    configures logging (``logging.basicConfig``: a stderr handler on the root logger) in a process that has not.
    Here they go to the logger :data:`_QUANTISER` instead, which configures nothing, less its advice to
    pre-process the graph. Anything else (``logging.getLogger``, the levels) is the ``logging`` module's own.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(logging, name)

    def _log(self, level: int, msg: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if _QUANTISER_ADVICE not in str(msg):
            kwargs.setdefault("stacklevel", 3)  # the record names the quantiser's line, not this class's
            logging.getLogger(_QUANTISER).log(level, msg, *args, **kwargs)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(level, msg, args, kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, msg, args, kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, args, kwargs)

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, args, {"exc_info": exc_info, **kwargs})

    def critical(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.CRITICAL, msg, args, kwargs)

    warn = warning
    fatal = critical


#: Guards :data:`_QUANTISING`, the threads in :func:`_quantiser_logging` now (:func:`shared_switch`'s holds).
_QUANTISER_LOCK = threading.Lock()
_QUANTISING: dict[str, list[Any]] = {}


@contextmanager
def _quantiser_logging() -> Iterator[None]:
    """Send ONNX Runtime's quantiser's log records to :data:`_QUANTISER` while the body runs.

    The quantiser logs through the root logger (:class:`_QuantiserLogging` says how), so intercepting its records
    there would take a filter and a handler on the root logger for the whole process: other threads' warnings
    would be dropped meanwhile (a handler found stops ``logging.lastResort``), and their ``logging.basicConfig()``
    ignored. Instead the quantiser modules' own name ``logging`` (``onnxruntime.quantization`` and its submodules,
    all imported with it) is bound to a :class:`_QuantiserLogging` while any thread quantises, then back to the
    ``logging`` module: no other code logs differently meanwhile.
    """
    with shared_switch(
        _QUANTISER_LOCK,
        _QUANTISING,
        _QUANTISER,
        lambda: _bind_quantiser_logging(_QuantiserLogging()),
        lambda _: _bind_quantiser_logging(logging),
    ):
        yield


def _bind_quantiser_logging(value: Any) -> None:
    """Bind the name ``logging`` of the loaded quantiser modules that use it to ``value`` (or back)."""
    prefix = _QUANTISER + "."
    for name, module in list(sys.modules.items()):
        if module is None or not (name == _QUANTISER or name.startswith(prefix)):
            continue
        bound = getattr(module, "logging", None)
        if bound is logging or isinstance(bound, _QuantiserLogging):
            module.logging = value  # type: ignore[attr-defined]  # the module's global, as its import bound it


def onnx_runtime() -> Any:
    """The ``onnxruntime`` module; an ``ImportError`` saying why it cannot be imported.

    Not installed: it is a core requirement, so the message says to reinstall. Installed but failing to
    import (for instance an onnxruntime built for numpy 1 beside numpy 2): the message gives the failure,
    its type and message, and the versions of onnxruntime and numpy.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        if importlib.util.find_spec("onnxruntime") is None:
            raise ImportError(
                f"the ONNX backend needs onnxruntime, a core requirement of kl-retrievers, which is not installed "
                f'({_import_failure(exc)}); reinstall it: pip install "kl-retrievers"'
            ) from exc
        failure = _import_failure(exc)
        names = _distributions_of("onnxruntime")  # onnxruntime, onnxruntime-gpu, ...
        numpy_related = "numpy" in failure.lower() or "(no message)" in failure  # 1.17 beside numpy 2: no message
        advice = (
            f"An onnxruntime built for numpy 1 fails this way beside numpy 2 (kl-retrievers needs onnxruntime "
            f"1.18.1 or later); upgrade it: pip install -U {' '.join(names)}"
            if numpy_related
            else f"Reinstall or upgrade it (pip install -U {' '.join(names)}), or install what the failure names"
        )
        raise ImportError(
            f"the ONNX backend needs onnxruntime, which is installed ({_installed_versions(names, numpy_related)}) "
            f"but failed to import: {failure}. {advice}"
        ) from exc
    return onnxruntime


def _installed_versions(distributions: list[str], numpy: bool = True) -> str:
    """``onnxruntime-gpu X, numpy Y``: the installed versions of ``distributions`` (and of numpy)."""
    from importlib import metadata

    found = []
    for name in [*distributions, *(["numpy"] if numpy else [])]:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not found")
    return ", ".join(found)


def is_onnx_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding an ONNX export (``model.onnx`` and ``config.json``).

    Examples:
        >>> is_onnx_folder("no-such-folder")
        False
    """
    p = Path(path)
    return (p / MODEL_FILE).is_file() and (p / CONFIG_NAME).is_file()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``).

    Examples:
        >>> usable_cores() >= 1
        True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The most intra-op threads :func:`make_session_options` (and ``--model-threads``) accepts on this machine.

    4 per usable core (:func:`usable_cores`), at least 16 and at most :data:`MAX_THREADS`. ONNX Runtime starts
    every thread when the session is created, and a thread it cannot create (or one starved of memory) can
    leave it hanging instead of raising (onnxruntime 1.32 waits in ``pthread_join``), so a count far beyond the
    cores is refused before any thread starts.

    Examples:
        >>> 16 <= max_threads() <= MAX_THREADS
        True
    """
    return min(MAX_THREADS, max(_MIN_MAX_THREADS, _THREADS_PER_CORE * usable_cores()))


def check_num_threads(num_threads: Any) -> int:
    """``num_threads`` as an int, when it is one from 1 to :func:`max_threads`; else a ``ValueError`` saying why.

    Examples:
        >>> check_num_threads(1)
        1
        >>> check_num_threads(0)
        Traceback (most recent call last):
        ValueError: num_threads must be an int >= 1; got 0 ...
    """
    cap = max_threads()
    if not _is_int(num_threads) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1; got {num_threads!r} (the range is 1 to {cap})")
    if num_threads > cap:
        raise ValueError(
            f"num_threads must be an int from 1 to {cap} on this machine ({_THREADS_PER_CORE} per usable CPU core, "
            f"{usable_cores()} here; at least {_MIN_MAX_THREADS}, at most {MAX_THREADS}); got {num_threads!r}: ONNX "
            "Runtime starts every thread at once, and one it cannot create can hang the process instead of "
            "raising; use at most the CPU cores"
        )
    return int(num_threads)  # numpy ints too


def make_session_options(
    *, num_threads: int | None = None, allow_spinning: bool | None = None, session_options: Any = None
) -> Any:
    """The ``onnxruntime.SessionOptions`` an ONNX encoder's session is built with.

    Without ``session_options``, the defaults of kl_retrievers: errors only in ONNX Runtime's log
    (``log_severity_level = 3``), ``session.intra_op.allow_spinning = "0"`` (idle worker threads sleep) unless
    ``allow_spinning=True``, ``session.disable_quant_qdq = "1"`` (int8 embedding tables dequantised once, at
    load) and ``intra_op_num_threads = num_threads`` when given. With ``session_options``, that object as it
    is: none of these defaults is added to it (none is needed for correct results, only for speed and a quiet
    log) and it is not changed, so ``num_threads`` and ``allow_spinning`` must be left unset then (set
    ``intra_op_num_threads`` and the ``session.intra_op.allow_spinning`` entry on it instead).

    Spinning: with ``allow_spinning=True`` idle threads busy-wait for the next piece of work. On the default
    model with 2 threads on 2 shared cores that cut the median single-query latency (by 40% idle, 17% beside a
    busy process) but cost 2 to 4% batch throughput and made slow queries slower beside a busy process, so it
    stays off by default (docs/onnx.md, "Session options: threads and spinning"; ``benchmarks/onnx_session.py``).

    Args:
        num_threads: ONNX Runtime intra-op threads, an int from 1 to :func:`max_threads` (4 per usable core, at
            least 16; default: its own choice, the physical cores); more than the usable cores
            (:func:`usable_cores`) logs a warning (the threads compete).
        allow_spinning: Whether idle intra-op threads spin (default ``None``: off, as ``False``).
        session_options: An ``onnxruntime.SessionOptions`` used as given, instead of the defaults above.

    Returns:
        An ``onnxruntime.SessionOptions``: ``session_options`` itself when given, else a new one.

    Raises:
        TypeError: ``session_options`` is not an ``onnxruntime.SessionOptions``, or ``allow_spinning`` is not a
            bool.
        ValueError: ``num_threads`` is not an int from 1 to :func:`max_threads`, or ``num_threads`` or
            ``allow_spinning`` is given together with ``session_options``.

    Examples:
        >>> opts = make_session_options(num_threads=1, allow_spinning=True)
        >>> opts.intra_op_num_threads, opts.get_session_config_entry("session.intra_op.allow_spinning")
        (1, '1')
        >>> make_session_options(allow_spinning="no")
        Traceback (most recent call last):
        TypeError: allow_spinning must be True, False or None; got 'no' (str)
    """
    ort = onnx_runtime()
    if num_threads is not None:
        num_threads = check_num_threads(num_threads)
        cores = usable_cores()
        if num_threads > cores:
            logger.warning(
                "num_threads=%d is more than the %d CPU cores this process may use: ONNX Runtime's threads will "
                "compete for them (slower, not faster); use at most %d",
                num_threads,
                cores,
                cores,
            )
    if allow_spinning is not None and not isinstance(allow_spinning, bool):
        raise TypeError(
            f"allow_spinning must be True, False or None; got {allow_spinning!r} ({type(allow_spinning).__name__})"
        )
    if session_options is not None:
        if not isinstance(session_options, ort.SessionOptions):
            raise TypeError(
                "session_options must be an onnxruntime.SessionOptions or None; got "
                f"{session_options!r} ({type(session_options).__name__})"
            )
        given = [
            f"{name}={value!r}"
            for name, value in (("num_threads", num_threads), ("allow_spinning", allow_spinning))
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{' and '.join(given)} cannot be combined with session_options, which is used as given: set "
                "intra_op_num_threads or add_session_config_entry('session.intra_op.allow_spinning', '0' or '1') "
                "on the SessionOptions instead"
            )
        return session_options
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning by default: on a shared or busy CPU spinning steals the cores
    # the other worker needs (docs/onnx.md, "Session options: threads and spinning"; allow_spinning=True turns it on).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    # Fold the DequantizeLinear of int8 embedding tables into float32 tables once, at load (ONNX Runtime
    # keeps them per run otherwise, for QDQ fusions these dynamically quantised graphs do not use).
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    return options


# ---------------------------------------------------------------------- inference
def _bundled_model_of(folder: Path) -> Path | None:
    """The bundled model folder whose shipped graph folder ``folder`` is (``kl_retrievers/pretrained/NAME/onnx-int8``,
    resolved), else ``None``: the package's own files, which may be links into an installer's cache
    (:func:`~kl_retrievers._io.in_model_folder`'s ``pinned``).

    Examples:
        >>> _bundled_model_of(Path("no-such-folder")) is None
        True
    """
    from kl_retrievers.hub import BUNDLED_DIR, BUNDLED_ONNX

    try:
        resolved = folder.resolve()
    except (OSError, RuntimeError):  # a loop of links: not the package's folder
        return None
    return resolved.parent if resolved.parent.parent == BUNDLED_DIR and resolved.name == BUNDLED_ONNX else None


def _shipped_source_weights(folder: Path, source: Any) -> str | None:
    """The weights identity of the bundled model whose shipped graph ``folder`` is, else ``None``.

    A shipped graph (``kl_retrievers/pretrained/NAME/onnx-int8``) was exported before exports recorded their
    source's identity; it is its bundled folder's (the torch backend reports the same), provided the graph
    was exported from that folder's current files (``source.sha256``, as :func:`kl_retrievers.load_model`
    checks). A few MB hashed, once per load.
    """
    parent = _bundled_model_of(folder)
    if parent is None or not isinstance(source, dict):
        return None
    from kl_retrievers._config import read_encoder_meta, saved_weights_sha256
    from kl_retrievers.hub import source_sha256

    try:
        if source.get("sha256") != source_sha256(parent):
            return None  # a graph not regenerated after its model changed: not that model's weights
        return saved_weights_sha256(read_encoder_meta(parent), parent)
    except (OSError, ValueError):  # an unreadable source folder: not known
        return None


#: Phrases in an ONNX Runtime error that say it ran out of a resource (threads, memory), not that the graph is bad.
_RESOURCE_PHRASES = (
    "pthread_create",
    "bad_alloc",
    "failed to allocate",
    "out of memory",
    "resource temporarily unavailable",
)
#: ONNX Runtime's exception types for a graph it cannot use: never a resource error, whatever the message says.
_GRAPH_ERRORS = ("InvalidProtobuf", "InvalidGraph", "InvalidArgument", "NoSuchFile", "NoModel", "NotImplemented")


def _is_resource_error(exc: BaseException, *paths: str | os.PathLike[str]) -> bool:
    """Whether creating a session failed for want of threads or memory (not because of the graph).

    The message is matched without ``paths`` (the graph's file and folder, which ONNX Runtime quotes), so a
    folder named e.g. ``memory-test`` does not make a faulty graph read as a resource error.

    Examples:
        >>> _is_resource_error(MemoryError()), _is_resource_error(RuntimeError("pthread_create failed"))
        (True, True)
        >>> _is_resource_error(RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed"))
        False
        >>> _is_resource_error(RuntimeError("Load model from /out of memory/model.onnx failed"), "/out of memory")
        False
    """
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):  # threads (EAGAIN) or memory (ENOMEM), not e.g. a missing file
        return exc.errno in (errno.EAGAIN, errno.ENOMEM)
    if type(exc).__name__ in _GRAPH_ERRORS:
        return False
    text = str(exc)
    for path in sorted({os.fspath(p) for p in paths} | {os.path.abspath(p) for p in paths}, key=len, reverse=True):
        text = text.replace(path, "")
    text = text.lower()
    return any(phrase in text for phrase in _RESOURCE_PHRASES)


class OnnxGaussianEncoder(EncoderMixin):
    """A Gaussian encoder served by ONNX Runtime on CPU, with the interface of the torch encoder.

    Loads a folder written by :func:`export_onnx`. Only numpy, ``onnxruntime`` and ``tokenizers``
    are used. Texts are tokenized, sorted by token count (so batches hold texts of similar length),
    padded per batch, and the results are returned in input order. Token ids are held for 16 batches
    (at most 2,048 texts, one batch at least) at a time, and tokenizing takes no lock: encoding from
    several threads at once is safe. An encoder can be pickled or copied (``copy.deepcopy``, e.g. for worker
    processes): the copy builds its own session from the graph file, with the same ``num_threads`` and
    ``allow_spinning`` (not with a caller's ``session_options``, which cannot be copied: a ``TypeError``);
    ``copy.copy`` shares the session and lock instead.

    **int8 encodings depend on the batch.** ONNX Runtime's dynamic quantisation picks one activation
    scale per padded batch tensor, so with ``quantize="int8"`` (the shipped graphs) a text's
    Gaussian changes slightly with the texts encoded alongside it and with ``batch_size``: on the
    default model and 200 SciFact documents, ``batch_size=64`` against ``1`` gave a cosine of 0.992
    at worst between a document's two means, and 29 of 50 queries got another set of top-10
    documents. Consequences: documents added one by one (incremental indexing) do not get exactly
    the encodings a bulk encode gives; a cache of encodings is exact only for the same texts encoded
    in the same batches; reproducing a published figure needs the same ``batch_size`` and the same
    list of texts. Float32 exports (``quantize=None``) and the torch encoder are batch-invariant up
    to float rounding. :attr:`batch_invariant` says which case applies.

    Args:
        path: A folder holding ``model.onnx``, ``tokenizer.json`` and ``config.json``.
        num_threads: ONNX Runtime intra-op threads (default: its own choice, the physical cores).
        name_or_path: How the encoder names itself (default: ``path`` made absolute, as
            :func:`kl_retrievers.hub.local_reference` records it).
        allow_spinning: Whether ONNX Runtime's idle intra-op threads spin (busy-wait) rather than sleep
            (default ``None``: off). On: lower single-query latency on an idle machine; off: more throughput
            when the cores are shared. :func:`make_session_options` and docs/onnx.md have the measurements.
        session_options: An ``onnxruntime.SessionOptions`` to build the session with, used as given: the
            defaults of :func:`make_session_options` are not added to it (nor ``num_threads`` or
            ``allow_spinning``, which must be left unset then). The execution provider stays
            ``CPUExecutionProvider``.

    Raises:
        FileNotFoundError: No folder at ``path``.
        NothingSavedError: No folder, or one without ``config.json`` (then also an ``OnnxModelError``).
        OnnxModelError: The folder is not an ONNX export (the message names the kind of one kl_retrievers saved),
            or its graph does not match its config.
        TypeError: ``session_options`` or ``allow_spinning`` has the wrong type.
        ValueError: ``num_threads`` is not an int from 1 to :func:`max_threads`, or is given, like
            ``allow_spinning``, with ``session_options``.
        RuntimeError: ONNX Runtime could not create the session for want of threads or memory.
        ConcurrentSaveError: An ``OSError``: exports replaced the folder during each of the reads (an export
            of the same folder meanwhile makes it read again; a folder an export killed mid-swap left missing is
            restored first, with a warning).

    Examples:
        >>> enc = OnnxGaussianEncoder("my-encoder-onnx")  # doctest: +SKIP
        >>> enc.encode_documents(["a passage", "another"]).mean.dtype  # doctest: +SKIP
        dtype('float32')
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        num_threads: int | None = None,
        name_or_path: str | None = None,
        allow_spinning: bool | None = None,
        session_options: onnxruntime.SessionOptions | None = None,
    ) -> None:
        options = make_session_options(
            num_threads=num_threads, allow_spinning=allow_spinning, session_options=session_options
        )
        folder = Path(path)
        # Where a folder swap is not atomic (macOS), an export killed between its two renames leaves only the
        # previous copy beside the folder (.NAME.old-*): put it back, as GaussianEncoder.from_pretrained does.
        recover_dir(folder, required=CONFIG_NAME)

        def load() -> dict[str, Any]:
            meta = _read_meta(folder)
            config = _config_from_meta(meta, folder)
            tokenizer_file = folder / TOKENIZER_FILE
            if not tokenizer_file.is_file():
                raise OnnxModelError(f"{folder} is missing {TOKENIZER_FILE}")
            refuse_link_out(tokenizer_file, str(folder), pinned=_bundled_model_of(folder) is not None)
            check_tokenizer_sha256(meta, folder / CONFIG_NAME, folder, error=OnnxModelError)  # when recorded
            try:
                tokenizer_text = tokenizer_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise OnnxModelError(f"{tokenizer_file} cannot be read as UTF-8 text: {exc}") from None
            self._setup(
                folder / MODEL_FILE,
                tokenizer_text,
                config,
                where=str(folder),
                options=options,
                session_args=None
                if session_options is not None
                else {"num_threads": num_threads, "allow_spinning": allow_spinning},
            )
            return meta

        # The files are read one by one: an export of the same folder meanwhile swaps in its copy between two
        # reads (the config of one export, the graph of the next: a checksum mismatch): read it again then.
        meta = load_unchanged(folder, load)
        self.path = folder
        self.meta = meta
        self.name_or_path = name_or_path or local_reference(path)  # an absolute folder, as the torch encoder records
        source = meta.get("source")
        recorded = source.get("weights_sha256") if isinstance(source, dict) else None
        #: The identity of the weights of the torch encoder this graph was exported from (its
        #: :attr:`kl_retrievers.encoder.GaussianEncoder.weights_sha256`, recorded at export as
        #: ``source.weights_sha256``), so a store can tell when its model changed. A bundled model's shipped graph
        #: (exported before it was recorded) reports its bundled folder's; ``None``: not recorded (other exports
        #: made before it was, or of an encoder whose identity was not known).
        self.weights_sha256: str | None = (
            recorded if isinstance(recorded, str) else _shipped_source_weights(folder, source)
        )

    @classmethod
    def _from_parts(
        cls, model: Path, tokenizer_json: str, config: OnnxEncoderConfig, *, where: str
    ) -> OnnxGaussianEncoder:
        self = cls.__new__(cls)
        self._setup(model, tokenizer_json, config, where=where, options=make_session_options(), session_args={})
        self.path = model.parent
        self.meta = {}
        self.name_or_path = where
        self.weights_sha256 = None
        return self

    def _setup(
        self,
        model: Path,
        tokenizer_json: str,
        config: OnnxEncoderConfig,
        *,
        where: str,
        options: Any,
        session_args: dict[str, Any] | None,
    ) -> None:
        """Build the session (with ``options``, from :func:`make_session_options`) and the tokenizer; check both.

        ``session_args``: the :func:`make_session_options` keywords ``options`` was made with, so that a copy
        (pickle, ``copy.deepcopy``) can build its own session; ``None`` for a caller's ``session_options``.
        """
        from tokenizers import Tokenizer

        self.config = config
        self._model_file = model
        self._where = where
        self._session_args = session_args
        self._session = self._start_session(options)
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise OnnxModelError(f"{where}: {TOKENIZER_FILE} is not a tokenizers-library tokenizer ({exc})") from None
        self._tokenizer_json = tokenizer_json
        # One tokenizer per token budget, each with its truncation set once: tokenizing needs no lock, so a query
        # encoded in one thread does not wait for a bulk encode's tokenization in another.
        self._tokenizers: dict[int | None, Any] = {}
        self._lock = threading.Lock()
        if config.var_token_id is not None:
            found = tokenizer.token_to_id(VAR_TOKEN)
            if found != config.var_token_id:
                raise OnnxModelError(
                    f"{where}: {TOKENIZER_FILE} maps {VAR_TOKEN} to {found}; config.json says {config.var_token_id}"
                )

    def _start_session(self, options: Any, *, copied: bool = False) -> Any:
        """A new ONNX Runtime session on the graph, checked against the config (its inputs, outputs and SHA-256).

        ``copied``: the session of an unpickled (or deep-copied) encoder, whose graph file may have gone or
        changed since (the messages say so).

        Raises:
            OnnxModelError: The graph is missing, cannot be read, or does not match the config.
            RuntimeError: ONNX Runtime could not create the session for want of threads or memory (the
                original error chained): the graph itself was not found faulty.
        """
        ort = onnx_runtime()
        model, where, config = self._model_file, self._where, self.config
        since = " (it was there when this encoder was pickled or copied; load the encoder again)" if copied else ""
        if not model.is_file():
            raise OnnxModelError(f"{where} is missing {model.name}{since}")
        # before ONNX Runtime reads the graph and what it names; a shipped graph's files are the package's own
        external_files = check_graph_file(model, where, pinned=_bundled_model_of(model.parent) is not None)
        try:
            session = ort.InferenceSession(os.fspath(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            if _is_resource_error(exc, model, model.parent):
                raise RuntimeError(
                    f"{where}: ONNX Runtime could not create a session for {model.name}, for want of threads or "
                    f"memory ({type(exc).__name__}: {exc}); the graph was not found faulty. Free memory, or lower "
                    "num_threads (onnx_options={'num_threads': N}, --model-threads N), and try again"
                ) from exc
            raise OnnxModelError(f"{where}: {model.name} is not a readable ONNX graph ({exc})") from None
        self._input_names = self._check_session(session, config, where)
        if config.model_sha256:
            from kl_retrievers.hub import cached_sha256

            actual = cached_sha256(model)
            if actual != config.model_sha256 and copied:
                raise OnnxModelError(
                    f"{where}: {model.name} changed since this encoder was pickled or copied (SHA-256 {actual}, was "
                    f"{config.model_sha256}): the folder was exported again or edited; load the encoder again"
                )
            if actual != config.model_sha256:
                raise OnnxModelError(self._sha_mismatch(where, actual, config.model_sha256))
        # model_sha256 covers model.onnx only: weights kept as external data in other files are identified here
        external = _hash_external_data(model, external_files, where)
        if copied and external != config.external_data_sha256:
            raise OnnxModelError(
                f"{where}: the external-data files of {model.name} changed since this encoder was pickled or copied "
                f"(SHA-256 {external}, was {config.external_data_sha256}); load the encoder again"
            )
        if not copied and config.model_sha256 and external != config.external_data_sha256:
            raise OnnxModelError(self._external_mismatch(where, model, external, config.external_data_sha256))
        config.external_data_sha256 = external
        return session

    def __copy__(self) -> OnnxGaussianEncoder:
        """A shallow copy (``copy.copy``): it shares this encoder's session, lock and tokenizers.

        Unlike a pickle or ``copy.deepcopy``, no session is built, so any encoder can be copied this way,
        one made with a caller's ``session_options`` too.
        """
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        return other

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle or ``copy.deepcopy`` keeps: everything but the session, its lock and the tokenizers.

        A copy builds its own ONNX Runtime session from the graph file (checked again) when it is unpickled,
        with the session settings this encoder was made with.

        Raises:
            TypeError: The encoder was built with a caller's ``session_options`` (ONNX Runtime's
                ``SessionOptions`` cannot be copied): load the copy again with the same options instead.
        """
        if self._session_args is None:
            raise TypeError(
                f"cannot copy or pickle {self!r}: it was built with a caller's onnxruntime.SessionOptions, which "
                "cannot be copied; load another encoder with the same session_options instead"
            )
        state = dict(self.__dict__)
        for key in ("_session", "_lock", "_tokenizers", "_user_tokenizer"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokenizers = {}
        self._lock = threading.Lock()
        assert self._session_args is not None  # __getstate__ refuses a caller's session_options
        self._session = self._start_session(make_session_options(**self._session_args), copied=True)

    def _external_mismatch(self, where: str, model: Path, actual: dict[str, str], expected: dict[str, str]) -> str:
        """The message for external-data files that are not the pinned ones (or not pinned, where the graph is)."""
        if not expected:
            pin = json.dumps({"external_data_sha256": actual}, sort_keys=True)
            return (
                f"{where}: {model.name} keeps weights in external-data files ({', '.join(sorted(actual))}) that "
                f"{CONFIG_NAME} does not pin (onnx.model_sha256 covers {model.name} only, so edited weights would "
                f"load unnoticed); add them to its 'onnx' section ({pin}), or export it again"
            )
        return (
            f"{where}: the external-data files of {model.name} have SHA-256 {actual}, but {CONFIG_NAME} "
            f"(onnx.external_data_sha256) says {expected}: the weights are not the ones its config describes; "
            "export it again"
        )

    def _sha_mismatch(self, where: str, actual: str, expected: str) -> str:
        """The message for a graph whose SHA-256 is not the pinned one."""
        return (
            f"{where}: {MODEL_FILE} has SHA-256 {actual}, but {CONFIG_NAME} (onnx.model_sha256) says "
            f"{expected}: the graph is not the one its config describes; export it again"
        )

    def _check_session(self, session: Any, config: OnnxEncoderConfig, where: str) -> tuple[str, ...]:
        """The graph's input names; raises :class:`OnnxModelError` when it does not fit ``config``."""
        return _check_graph(session, config, where)

    def _run_batch(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of one padded batch (the graph computes both)."""
        out_mean, out_var = self._session.run(list(OUTPUTS), feeds)
        return out_mean, out_var

    # ------------------------------------------------------------------ properties
    @property
    def quantize(self) -> str | None:
        """``"int8"`` or ``None`` (float32)."""
        return self.config.quantize

    @property
    def max_tokens(self) -> int | None:
        """The most tokens (``[VAR]`` included) the graph reads; longer budgets are clamped with a warning."""
        return self.config.max_tokens

    @property
    def batch_invariant(self) -> bool:
        """Whether a text's encoding is independent of the other texts encoded with it (and of ``batch_size``).

        ``False`` for int8 graphs: ONNX Runtime's dynamic quantisation picks one activation scale per padded
        batch tensor, so a text encodes slightly differently in another batch (cosine about 0.99 or more
        to itself). ``True`` for float32 graphs (differences of float rounding only). An encoding cache
        keyed on the encoder should also key on ``batch_size`` (and the texts encoded together) when this
        is ``False``.
        """
        return self.config.quantize is None

    @property
    def device(self) -> str:
        """Always ``"cpu"`` (ONNX Runtime's CPU execution provider)."""
        return "cpu"

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The encoder's tokenizer (read-only), as the torch encoder's and sentence-transformers' ``model.tokenizer``.

        A ``tokenizers.Tokenizer`` (the ``tokenizers`` library's, built from the folder's ``tokenizer.json``, with
        ``[VAR]`` where the model uses it), not a transformers tokenizer: no torch or transformers is imported.
        It has no padding or truncation set and takes ``encode(text)`` (an ``Encoding``: ``.ids``, ``.tokens``,
        ``.offsets``), ``encode_batch(texts)``, ``decode(ids)``, ``token_to_id(token)`` and
        ``get_vocab_size()``; it is not callable as a transformers tokenizer is (``tokenizer(texts)``).

        Unlike sentence-transformers' ``model.tokenizer``, it is not the tokenizer the encoder uses: the encoder
        tokenizes with copies of its own (one per token budget, so threads tokenize without a lock), and its
        ONNX graph's vocabulary is fixed. So the methods that would change it (``add_tokens``,
        ``add_special_tokens``, ``enable_truncation``, ``no_truncation``, ``enable_padding``, ``no_padding``,
        ``train``, ``train_from_iterator``) raise ``TypeError`` naming what to do instead (``max_length=`` of
        the ``encode_*`` methods for truncation). Its parts (``normalizer``, ``pre_tokenizer``,
        ``post_processor``, ``decoder``, ``model``) and its ``encode_special_tokens`` setting can still be replaced
        or edited in place, which the ``tokenizers`` library gives no way to refuse: that changes this object only,
        never what the encoder encodes. ``copy.deepcopy(model.tokenizer)`` gives a plain copy, which may be changed
        (as ``copy.copy`` and pickling do).

        Examples:
            >>> encoder.tokenizer.encode("a passage").tokens  # doctest: +SKIP
            ['[CLS]', 'a', 'passage', '[SEP]']
        """
        found = self.__dict__.get("_user_tokenizer")
        if found is None:
            made = _read_only_tokenizer(self._tokenizer_json, type(self).__name__)
            found = self.__dict__.setdefault("_user_tokenizer", made)  # the same object at every read
        return found

    def to(self, *args: Any, **kwargs: Any) -> OnnxGaussianEncoder:
        """``self`` for the cpu (``"cpu"``, ``"cpu:0"``, ``torch.device("cpu")``), as ``torch.nn.Module.to`` (and
        sentence-transformers' ``model.to``) would move it.

        It takes ``torch.nn.Module.to``'s call forms, read as torch's parser reads them: ``to(device)``,
        ``to(dtype)``, ``to(device, dtype)``, ``to(tensor)`` (the tensor's device and dtype), each positional
        or by keyword (``device=``, ``dtype=``, ``tensor=``); ``None`` for a device or a dtype leaves
        it as it is. ``non_blocking`` (a bool; ignored: nothing is copied) comes by keyword, or positionally
        where torch takes it: third in ``to(device, dtype, non_blocking)`` or second after a dtype or a
        tensor (``to(dtype, non_blocking)``, ``to(tensor, non_blocking)``); after a device alone
        (``to("cpu", False)``) a bool is refused, as torch refuses it. ``memory_format=`` takes any
        ``torch.memory_format`` (``torch.contiguous_format``, ``torch.preserve_format``,
        ``torch.channels_last``, ``torch.channels_last_3d``) as a no-op: an ONNX graph has no memory format
        (its weights have one fixed layout, its inputs are token ids), as ``torch.nn.Module.to`` leaves the
        parameters that are not 4-D or 5-D. The graph fixes the precision: ``torch.float32`` is accepted by
        every graph, as a no-op: the outputs are float32 whatever the graph (what
        ``encode(precision="float32")`` gives), a float32 graph's weights (``quantize=None``) are float32 and
        an int8 graph's weights stay int8, as ``torch.nn.Module.to(torch.float32)`` leaves the int8 weights of
        a dynamically quantised module. Any other dtype (``torch.float16``, ``torch.bfloat16``...) is refused:
        no ONNX graph of that precision is offered (load with ``backend="torch"`` for it).

        Raises:
            ValueError: A device other than the cpu: the ONNX backend runs on cpu only (load with
                ``backend="torch"``).
            TypeError: A dtype other than ``torch.float32`` (e.g. ``torch.float16``); a numpy dtype or a
                dtype's name (``np.float32``, ``"float32"``), given positionally or as ``dtype=``: pass the
                ``torch.dtype``; a ``memory_format`` that is not a ``torch.memory_format`` (such as the string
                ``"channels_last"``); a ``non_blocking`` that is not a bool, or given twice; a ``tensor=`` that
                is not a tensor, or comes with a device or a dtype; an unknown keyword; or arguments in none
                of ``torch.nn.Module.to``'s forms (such as ``to(True)`` or ``to("cpu", False)``), as torch
                raises ``TypeError`` for each.

        Examples:
            >>> encoder.to("cpu") is encoder  # doctest: +SKIP
            True
            >>> encoder.to(device="cpu", non_blocking=True) is encoder  # doctest: +SKIP
            True
            >>> encoder.to("cpu", torch.float32) is encoder  # float32 outputs, on any graph  # doctest: +SKIP
            True
            >>> encoder.to(memory_format=torch.channels_last) is encoder  # no memory format: a no-op  # doctest: +SKIP
            True
        """
        forms = (
            "to(device), to(dtype), to(device, dtype) or to(tensor), with an optional non_blocking (third after "
            "a device and a dtype, second after a dtype or a tensor, or by keyword)"
        )
        if "tensor" in kwargs:  # to(tensor=t), as torch takes it: the positional to(t)
            kwargs = dict(kwargs)
            tensor = kwargs.pop("tensor")
            if not self._is_tensor(tensor):
                raise TypeError(
                    f"OnnxGaussianEncoder.to(): tensor= takes a torch tensor (its device and dtype), as "
                    f"torch.nn.Module.to; got {type(tensor).__name__}"
                )
            if args or "device" in kwargs or "dtype" in kwargs:
                raise TypeError(
                    f"OnnxGaussianEncoder.to(tensor=...) takes the tensor alone (with non_blocking and memory_format "
                    f"by keyword), as torch.nn.Module.to; got {args!r} and keywords {sorted(kwargs)}"
                )
            args = (tensor,)
        unknown = sorted(set(kwargs) - {"device", "dtype", "non_blocking", "memory_format"})
        if unknown:
            raise TypeError(
                f"OnnxGaussianEncoder.to() got the unknown keyword argument(s) {unknown}; it takes device, dtype, "
                f"tensor, non_blocking and memory_format ({forms}, as torch.nn.Module.to)"
            )
        memory_format = kwargs.get("memory_format")
        if memory_format is not None and not self._is_memory_format(memory_format):
            raise TypeError(
                f"OnnxGaussianEncoder.to(): memory_format must be a torch.memory_format (torch.contiguous_format, "
                f"torch.preserve_format, torch.channels_last or torch.channels_last_3d, each a no-op: an ONNX "
                f"graph has no memory format), as torch.nn.Module.to takes; got {memory_format!r}"
            )
        if "non_blocking" in kwargs and not isinstance(kwargs["non_blocking"], bool):
            raise TypeError(
                f"OnnxGaussianEncoder.to(): non_blocking must be a bool (True or False), as torch.nn.Module.to "
                f"takes; got {kwargs['non_blocking']!r}"
            )
        device, dtype = kwargs.get("device"), kwargs.get("dtype")
        for name in ("device", "dtype"):
            if self._is_tensor(kwargs.get(name)):
                raise TypeError(
                    f"OnnxGaussianEncoder.to(): {name}= takes a {name}, not a tensor; pass the tensor alone, "
                    "positionally (to(tensor)) or as tensor=, for its device and dtype"
                )
        positional = list(args)
        # a bool is non_blocking only where torch's forms put it: third in to(device, dtype, non_blocking), or
        # second in to(dtype, non_blocking) and to(tensor, non_blocking); not after a device alone
        if positional and isinstance(positional[-1], bool):
            first = positional[0]
            if len(positional) == 3 or (
                len(positional) == 2 and (self._is_dtype_like(first) or self._is_tensor(first))
            ):
                if "non_blocking" in kwargs:
                    raise TypeError(
                        f"OnnxGaussianEncoder.to(): non_blocking given twice, by position ({positional[-1]!r}) and "
                        f"by keyword (non_blocking={kwargs['non_blocking']!r}); pass it once"
                    )
                positional.pop()
        if len(positional) > 2:
            raise TypeError(f"OnnxGaussianEncoder.to() takes {forms}; got {len(args)} positional arguments {args!r}")
        for value in positional:
            if value is None:  # to(None, dtype), to(device, None): that one stays as it is
                continue
            if isinstance(value, bool):
                raise TypeError(
                    f"OnnxGaussianEncoder.to() got {value!r}, which is neither a device nor a dtype, nor a "
                    f"non_blocking where torch reads one (positional arguments {args!r}); it takes {forms}"
                )
            if self._is_tensor(value):  # to(tensor): its device and dtype
                if len(positional) > 1 or device is not None or dtype is not None:
                    raise TypeError(f"OnnxGaussianEncoder.to(tensor) takes the tensor alone; got {args!r} {kwargs!r}")
                device, dtype = value.device, value.dtype
                continue
            is_dtype = self._is_dtype_like(value)  # torch.float16, np.float32, "float32"...: not a device
            if (dtype if is_dtype else device) is not None:
                raise TypeError(
                    f"OnnxGaussianEncoder.to() got two {'dtypes' if is_dtype else 'devices'}: {args!r} {kwargs!r}; "
                    f"it takes {forms}"
                )
            if is_dtype:
                dtype = value
            else:
                device = value
        if dtype is not None and not self._is_torch_dtype(dtype):
            hint = " (a numpy dtype or a dtype's name: pass the torch.dtype)" if self._is_dtype_like(dtype) else ""
            raise TypeError(
                f"OnnxGaussianEncoder.to(): dtype must be a torch.dtype (e.g. torch.float32); got {dtype!r}{hint}"
            )
        self._use_device(device)
        if dtype is not None and str(dtype) != "torch.float32":
            self._refuse_precision(dtype)
        return self

    @staticmethod
    def _is_memory_format(value: Any) -> bool:
        """Whether ``value`` is a ``torch.memory_format`` (``torch.channels_last``...), without importing torch."""
        return type(value).__name__ == "memory_format" and type(value).__module__ == "torch"

    @staticmethod
    def _is_tensor(value: Any) -> bool:
        """Whether ``value`` is a torch tensor (or a subclass: ``Parameter``...), without importing torch."""
        return any(c.__name__ == "Tensor" and c.__module__.startswith("torch") for c in type(value).__mro__)

    @staticmethod
    def _is_torch_dtype(value: Any) -> bool:
        """Whether ``value`` is a ``torch.dtype`` (``torch.float16``...), without importing torch."""
        return type(value).__name__ == "dtype" and type(value).__module__ == "torch"

    @classmethod
    def _is_dtype_like(cls, value: Any) -> bool:
        """A torch or numpy dtype, a numpy scalar type (``np.float32``) or a dtype's name (``"float32"``)."""
        if cls._is_torch_dtype(value) or isinstance(value, np.dtype):
            return True
        if isinstance(value, type):
            return issubclass(value, (np.generic, float, int, complex))
        if not isinstance(value, str):
            return False
        name = value.strip().lower()
        for prefix in ("torch.", "numpy.", "np."):
            name = name.removeprefix(prefix)
        return name in {
            *("float", "float16", "float32", "float64", "bfloat16", "half", "single", "double", "bool"),
            *("int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "short", "long"),
            *("complex64", "complex128", "cfloat", "cdouble", "chalf", "qint8", "quint8", "qint32"),
            *("float8_e4m3fn", "float8_e5m2"),
        }

    def __repr__(self) -> str:
        return (
            f"OnnxGaussianEncoder(name_or_path={self.name_or_path!r}, dim={self.config.dim}, "
            f"quantize={self.config.quantize!r})"
        )

    # ------------------------------------------------------------------ encoding
    def _budget(self, max_length: int) -> int:
        """The tokens the tokenizer keeps so that ``[VAR]`` still fits in ``max_length``."""
        return max_length - 1 if self.config.var_token_id is not None else max_length

    def _tokenizer_for(self, max_length: int | None) -> Any:
        """A tokenizer that truncates so that ``[VAR]`` still fits in ``max_length`` (one per budget, kept).

        ``None``: one that does not truncate.
        """
        budget = None if max_length is None else self._budget(max_length)
        tokenizer = self._tokenizers.get(budget)
        if tokenizer is None:
            from tokenizers import Tokenizer

            with self._lock:
                tokenizer = self._tokenizers.get(budget)
                if tokenizer is None:
                    tokenizer = Tokenizer.from_str(self._tokenizer_json)
                    tokenizer.no_padding()
                    if budget is None:
                        tokenizer.no_truncation()
                    else:
                        tokenizer.enable_truncation(max_length=budget)
                    if len(self._tokenizers) >= _TOKENIZERS_KEPT:  # a few budgets are used; bound the rest
                        self._tokenizers.pop(next(iter(self._tokenizers)))
                    self._tokenizers[budget] = tokenizer
        return tokenizer

    def _unknown_token(self) -> tuple[int, np.ndarray] | None:
        if "_unknown_token_ids" not in self.__dict__:  # read from tokenizer.json once
            found: tuple[int, np.ndarray] | None = None
            try:
                spec = json.loads(self._tokenizer_json)
                model, added = spec.get("model") or {}, spec.get("added_tokens") or []
                unk = model.get("unk_id") if model.get("type") == "Unigram" else None  # WordPiece, BPE: by name
                if unk is None and isinstance(model.get("unk_token"), str):
                    ids = {t["content"]: t["id"] for t in added}
                    unk = ids.get(model["unk_token"], (model.get("vocab") or {}).get(model["unk_token"]))
                if isinstance(unk, int):
                    special = [t["id"] for t in added if t.get("special") and t["id"] != unk]
                    found = unk, np.asarray(special, np.int64)
            except (ValueError, TypeError, KeyError, AttributeError):  # an unusual tokenizer.json: no check
                found = None
            self.__dict__["_unknown_token_ids"] = found
        result: tuple[int, np.ndarray] | None = self.__dict__["_unknown_token_ids"]
        return result

    def _plain_token_ids(self, text: str) -> list[int] | None:
        return list(self._tokenizer_for(None).encode(text, add_special_tokens=False).ids)

    def _token_ids(self, texts: list[str], max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and type ids of each text, truncated so that ``[VAR]`` still fits in ``max_length``."""
        texts = cut_long_texts(texts, self._budget(max_length), self._word_ids, self._longest_added)
        encodings = self._tokenizer_for(max_length).encode_batch(texts)
        return [(np.asarray(e.ids, np.int64), np.asarray(e.type_ids, np.int64)) for e in encodings]

    def _token_counts(self, texts: list[str], max_length: int) -> np.ndarray:
        """How many tokens each text has after truncation (as :meth:`_token_ids` would give), in chunks."""
        tokenizer = self._tokenizer_for(max_length)
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # same ids, no offsets
        counts = np.empty(len(texts), np.int64)
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            some = texts[start : start + _TOKENIZE_CHUNK]
            some = cut_long_texts(some, self._budget(max_length), self._word_ids, self._longest_added)
            counts[start : start + _TOKENIZE_CHUNK] = [len(e) for e in encode(some)]
        return counts

    def _word_ids(self, texts: list[str]) -> list[tuple[list[int | None], list[tuple[int, int]]]]:
        """Each text's tokens' word indices and offsets, without special tokens or truncation (to cut long texts)."""
        encodings = self._tokenizer_for(None).encode_batch(texts, add_special_tokens=False)
        return [(e.word_ids, e.offsets) for e in encodings]

    def _longest_added(self) -> int:
        """The length of the tokenizer's longest added token (special tokens included)."""
        added = self._tokenizer_for(None).get_added_tokens_decoder().values()
        return longest_added_token(token.content for token in added)

    def _batch_arrays(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """Pad one batch and insert ``[VAR]`` after the first token (as the torch encoder does)."""
        n, width = len(rows), max(len(ids) for ids, _ in rows)
        ids = np.full((n, width), self.config.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        # Always on the right, whatever config.padding_side says (older exports may say "left"):
        # [VAR] goes in at column 1 and CLS pooling reads column 0; left padding puts padding in both.
        for i, (row_ids, row_types) in enumerate(rows):
            sl = slice(0, len(row_ids))
            ids[i, sl] = row_ids
            mask[i, sl] = 1
            types[i, sl] = row_types
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        var_id = self.config.var_token_id
        if var_id is not None:
            for key, fill in (("input_ids", var_id), ("attention_mask", 1), ("token_type_ids", 0)):
                value = arrays[key]
                arrays[key] = np.concatenate([value[:, :1], np.full((n, 1), fill, np.int64), value[:, 1:]], axis=1)
        return {k: arrays[k] for k in self._input_names}

    def _use_device(self, device: Any) -> None:
        self._check_device(device)

    @staticmethod
    def _check_device(device: Any) -> None:
        """Refuse a ``device`` other than ``None`` or the cpu (``"cpu"``, ``"cpu:N"``, ``torch.device("cpu")``).

        A name that is no device at all (``"tpu"``, ``"CPU"``) is refused first, in the torch backend's words
        (:func:`kl_retrievers._encoding.device_type`); a GPU (``"cuda"``, ``"mps"``) saying to load with
        ``backend='torch'`` for it. :func:`kl_retrievers.load_model` checks the device with it too, before the
        model loads.

        Raises:
            ValueError: ``device`` is no device, or not the cpu.
        """
        from kl_retrievers._encoding import device_type

        if device is not None and device_type(device) != "cpu":
            raise ValueError(f"the ONNX backend runs on cpu only; got device={device!r} (use backend='torch')")

    def _refuse_precision(self, dtype: Any) -> None:
        """Refuse a dtype other than float32 (e.g. ``model.to(torch.float16)``), saying what would give it."""
        quantize = self.config.quantize
        graph = "float32 weights, quantize=None" if quantize is None else f"{quantize} weights, quantize={quantize!r}"
        if str(dtype) in ("torch.int8", "torch.qint8", "torch.quint8", "torch.uint8"):
            advice = (
                "this graph's weights are already int8 (its outputs are float32)"
                if quantize == "int8"
                else "for int8 weights export another graph (python -m kl_retrievers.onnx_cli export SOURCE OUT "
                "--quantize int8, the default)"
            )
        else:
            advice = (
                "no ONNX graph of that precision is offered (exports have float32 or int8 weights, and float32 "
                "outputs): load with backend='torch' for it (e.g. load_model(name, backend='torch').to(torch.float16))"
            )
        raise TypeError(
            f"the ONNX encoder's precision is fixed by its graph ({graph}); to() accepts torch.float32 only, a "
            f"no-op (every graph's outputs are float32); got {dtype!r}: {advice}"
        )

    def _encode_batches(
        self, texts: list[str], *, max_length: int, batch_size: int, show_bar: bool, desc: str
    ) -> Gaussians:
        dim = self.config.dim
        max_length = self._clamp_length(max_length)
        n = len(texts)
        # Batches hold texts of similar token counts: the texts sorted by token count over the whole input
        # (longest first, ties in input order), cut every batch_size. The batches' composition matters for
        # int8 graphs (see batch_invariant), so it is the same whatever the input's size. Token ids are held
        # for one chunk of batches at a time: a large input is tokenized twice (its token counts first,
        # then chunk by chunk, in sorted order), instead of holding every text's tokens at once.
        chunk = batch_size * max(1, min(_CHUNK_BATCHES, _CHUNK_TEXTS // batch_size))
        rows: list[tuple[np.ndarray, np.ndarray]] | None = None
        if n <= chunk:
            rows = self._token_ids(texts, max_length)
            counts = np.array([len(ids) for ids, _ in rows], np.int64)
        else:
            counts = self._token_counts(texts, max_length)
        order = np.argsort(-counts, kind="stable")
        mean = np.empty((n, dim), np.float32)
        var = np.empty((n, dim), np.float32)
        with progress_bar(-(-n // batch_size), desc=desc, show=show_bar) as bar:
            for chunk_start in range(0, n, chunk):
                chunk_idx = order[chunk_start : chunk_start + chunk]
                if rows is None:
                    chunk_rows = self._token_ids([texts[i] for i in chunk_idx], max_length)
                else:
                    chunk_rows = [rows[i] for i in chunk_idx]
                if not self.__dict__.get("_warned_unknown_only"):
                    self._warn_unknown_only([texts[i] for i in chunk_idx], [ids for ids, _ in chunk_rows])
                for start in range(0, len(chunk_idx), batch_size):
                    idx = chunk_idx[start : start + batch_size]
                    out_mean, out_var = self._run_batch(self._batch_arrays(chunk_rows[start : start + batch_size]))
                    if out_mean.shape != (len(idx), dim) or out_var.shape != (len(idx), dim):
                        raise OnnxModelError(
                            f"{self.name_or_path}: the graph returned mean {out_mean.shape} and var {out_var.shape}; "
                            f"config.json says dim {dim} (expected ({len(idx)}, {dim}))"
                        )
                    mean[idx] = out_mean
                    var[idx] = out_var
                    bar.update(1)
        return Gaussians(mean, var, validate=False)


# ---------------------------------------------------------------------- loading and checks
def _read_meta(folder: Path) -> dict[str, Any]:
    cfg_file = folder / CONFIG_NAME
    if not folder.is_dir():
        if not folder.exists():
            raise NothingSavedError(f"no ONNX Gaussian encoder folder at {folder}")
        raise OnnxModelError(f"{folder} is not a folder")
    if not cfg_file.is_file():
        raise not_this_kind_error(
            folder, "an ONNX Gaussian encoder", CONFIG_NAME, other_kind=OnnxModelError, nothing=_NoOnnxSavedError
        )
    try:
        meta = parse_json_object(cfg_file.read_bytes().decode("utf-8"), str(cfg_file))
    except (ValueError, UnicodeDecodeError) as exc:  # the message names the file
        raise OnnxModelError(str(exc)) from None
    if meta.get("library") != "kl_retrievers" or meta.get("kind") == "gaussians":
        other = describe_saved_meta(meta)
        found = f"it is {other}" if other is not None else f"its {CONFIG_NAME} was not written by kl_retrievers"
        raise OnnxModelError(f"{folder} is not an ONNX Gaussian encoder: {found}")
    if meta.get("backend") != BACKEND:
        raise OnnxModelError(
            f"{folder}: {CONFIG_NAME} says backend {meta.get('backend', 'torch')!r}, not 'onnx'; "
            "load it with backend='torch' (GaussianEncoder.from_pretrained)"
        )
    if not (folder / MODEL_FILE).is_file():
        raise OnnxModelError(f"{folder} is missing {MODEL_FILE}")
    try:
        check_version(meta, what=f"ONNX encoder at {folder}", format_version=FORMAT_VERSION)
    except ValueError as exc:
        raise OnnxModelError(str(exc)) from None
    from kl_retrievers._config import check_saved_score  # the score it serves, as a saved encoder's is checked

    check_saved_score(meta, cfg_file, OnnxModelError)
    return meta


def _config_from_meta(meta: dict[str, Any], folder: Path) -> OnnxEncoderConfig:
    where = folder / CONFIG_NAME
    section = meta.get("onnx")
    if not isinstance(section, dict):
        raise OnnxModelError(f"{where}: field 'onnx' is missing or not an object")

    def need_int(name: str, low: int, optional: bool = False) -> Any:
        value = section.get(name)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise OnnxModelError(f"{where}: field 'onnx.{name}' must be an int >= {low}; got {value!r}")
        return value

    quantize = section.get("quantize")
    if quantize not in QUANTIZATIONS:
        raise OnnxModelError(f"{where}: field 'onnx.quantize' must be one of {QUANTIZATIONS}; got {quantize!r}")
    padding_side = section.get("padding_side", "right")
    if padding_side not in ("right", "left"):
        raise OnnxModelError(f"{where}: field 'onnx.padding_side' must be 'right' or 'left'; got {padding_side!r}")
    encoder = section.get("encoder", {})
    if not isinstance(encoder, dict):
        raise OnnxModelError(f"{where}: field 'onnx.encoder' must be an object")
    return OnnxEncoderConfig(
        dim=need_int("dim", 1),
        max_length=need_int("max_length", 3),
        query_max_length=need_int("query_max_length", 3),
        quantize=quantize,
        var_token_id=need_int("var_token_id", 0, optional=True),
        max_tokens=need_int("max_tokens", 3, optional=True),
        pad_token_id=need_int("pad_token_id", 0),
        padding_side=padding_side,
        model_sha256=str(section.get("model_sha256", "")),
        encoder=encoder,
        external_data_sha256=_recorded_external_data(section, where),
    )


def _recorded_external_data(section: dict[str, Any], where: Path) -> dict[str, str]:
    """``onnx.external_data_sha256`` of a ``config.json`` (``{}`` when absent), checked: locations to SHA-256s.

    Examples:
        >>> _recorded_external_data({"external_data_sha256": {"w.bin": "AB" * 32}}, Path("config.json"))
        {'w.bin': 'abababababababababababababababababababababababababababababababab'}
        >>> _recorded_external_data({}, Path("config.json"))
        {}
    """
    value = section.get("external_data_sha256", {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and _SHA256_HEX.fullmatch(v) for k, v in value.items()
    ):
        raise OnnxModelError(
            f"{where}: field 'onnx.external_data_sha256' must be an object mapping each external-data file's "
            f"location to its SHA-256 (64 hex digits); got {value!r}"
        )
    return {k: v.lower() for k, v in value.items()}


def _external_data_sha256(model: Path, where: str) -> dict[str, str]:
    """SHA-256 of each external-data file the ONNX graph ``model`` names (by its location), ``{}`` without any.

    Raises:
        OnnxModelError: The graph cannot be read, or a file it names is refused (:func:`_external_data_files`) or
            cannot be hashed.
    """
    return _hash_external_data(model, _external_data_files(model, where), where)


def _hash_external_data(model: Path, files: dict[str, Path], where: str) -> dict[str, str]:
    """SHA-256 of the external-data ``files`` of the graph ``model`` (:func:`_external_data_files`), by location."""
    from kl_retrievers.hub import cached_sha256

    found: dict[str, str] = {}
    for location, file in files.items():
        try:
            found[location] = cached_sha256(file)
        except OSError as exc:
            raise OnnxModelError(
                f"{where}: {model.name} keeps weights in the external-data file {location!r}, which cannot be "
                f"read ({exc})"
            ) from None
    return found


def _external_data_files(model: Path, where: str, *, pinned: bool = False) -> dict[str, Path]:
    """The external-data files the ONNX graph ``model`` names, by location (``{}`` without any), each checked.

    Only the graph's protobuf fields that lead to tensors are read, never the weights. Asked before ONNX Runtime
    reads the graph (which would read what each location names: onnxruntime 1.18 follows ``../`` out of the folder,
    and waits forever on a FIFO), so a graph from an untrusted folder reads nothing outside it.

    Raises:
        OnnxModelError: ``model`` cannot be read or is not a protobuf message; or a location is not a relative
            path in the graph's folder (an absolute path, a drive, a backslash, an empty, ``.`` or ``..`` part),
            resolves out of the folder (through a symbolic link), or is not a regular file (missing, a FIFO, a
            device, a folder). The message names the location.
    """
    import mmap

    try:
        with open(model, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:  # mmap refuses an empty file; it holds no external data
                return {}
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                # every external-data entry holds the key "location": a graph without the word has none (the common
                # case)
                locations = _external_data_locations(data) if data.find(b"location") >= 0 else []
    except OSError as exc:
        raise OnnxModelError(f"{where}: {model.name} cannot be read for its external data ({exc})") from None
    except ValueError as exc:  # not a protobuf message
        raise OnnxModelError(f"{where}: {model.name} is not a readable ONNX graph ({exc})") from None
    files: dict[str, Path] = {}
    for location in locations:
        file, why = _external_data_file(model.parent, location, pinned=pinned)
        if why:
            raise OnnxModelError(
                f"{where}: {model.name} keeps weights in the external-data file {location!r}, which {why}; an ONNX "
                "graph's external data must be regular files in its folder, named by relative paths"
            )
        files[location] = file
    return files


def _external_data_file(folder: Path, location: str, *, pinned: bool = False) -> tuple[Path, str]:
    """The file an external-data ``location`` names in ``folder``, and why it is refused (``""``: it is not).

    ``pinned``: a bundled model's shipped graph, whose files may be links anywhere (the location itself is
    still checked).

    Examples:
        >>> _external_data_file(Path("/nonexistent"), "../outside/w.bin")[1]
        "has an empty, '.' or '..' part"
        >>> _external_data_file(Path("/nonexistent"), "C:w.bin")[1]
        'is not a relative path (it is absolute, names a drive, or holds a backslash or a NUL)'
    """
    parts = location.split("/")
    file = folder.joinpath(*parts)
    if "\\" in location or "\0" in location or PureWindowsPath(location).anchor:
        return file, "is not a relative path (it is absolute, names a drive, or holds a backslash or a NUL)"
    if any(part in ("", ".", "..") for part in parts):
        return file, "has an empty, '.' or '..' part"
    if not in_model_folder(file, folder, subfolders=True, pinned=pinned):
        return file, f"resolves to {file.resolve()}, outside the folder (through a symbolic link)"
    try:
        mode = os.stat(file).st_mode
    except OSError as exc:
        return file, f"cannot be read ({exc})"
    if not stat.S_ISREG(mode):
        return file, "is not a regular file (a FIFO, a device or a folder)"
    return file, ""


# The protobuf fields of onnx.proto that lead to tensors: ModelProto.graph / functions, FunctionProto.node,
# GraphProto.node / initializer / sparse_initializer, NodeProto.attribute, AttributeProto.t / g / tensors / graphs /
# sparse_tensor / sparse_tensors, SparseTensorProto.values / indices.
_MODEL_FIELDS = {7: "graph", 25: "function"}
_FUNCTION_FIELDS = {7: "node"}
_GRAPH_FIELDS = {1: "node", 5: "tensor", 15: "sparse"}
_NODE_FIELDS = {5: "attribute"}
_ATTRIBUTE_FIELDS = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE_FIELDS = {1: "tensor", 2: "tensor"}
_MESSAGE_FIELDS = {
    "graph": _GRAPH_FIELDS,
    "function": _FUNCTION_FIELDS,
    "node": _NODE_FIELDS,
    "attribute": _ATTRIBUTE_FIELDS,
    "sparse": _SPARSE_FIELDS,
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1


def _external_data_locations(data: bytes | mmap.mmap) -> list[str]:
    """The external-data file locations of the tensors in a serialised ONNX ``ModelProto`` (read without ``onnx``).

    Examples:
        >>> entry = b"\\x0a\\x08location\\x12\\x05w.bin"  # StringStringEntryProto(key="location", value="w.bin")
        >>> tensor = b"\\x6a" + bytes([len(entry)]) + entry + b"\\x70\\x01"  # external_data, data_location=EXTERNAL
        >>> graph = b"\\x2a" + bytes([len(tensor)]) + tensor  # GraphProto.initializer
        >>> _external_data_locations(b"\\x3a" + bytes([len(graph)]) + graph)  # ModelProto.graph
        ['w.bin']
    """
    with memoryview(data) as view:
        return _locations_in(view)


def _locations_in(view: memoryview) -> list[str]:
    """:func:`_external_data_locations` of the bytes ``view``."""
    found: list[str] = []
    # (start, end, kind): messages still to read, without recursion (graphs nest in attributes)
    pending: list[tuple[int, int, str]] = [(0, len(view), "model")]
    while pending:
        start, end, kind = pending.pop()
        if kind == "tensor":
            location, external = None, False
            for number, value in _proto_fields(view, start, end):
                if number == _TENSOR_DATA_LOCATION and isinstance(value, int):
                    external = value == _EXTERNAL
                elif number == _TENSOR_EXTERNAL_DATA and isinstance(value, tuple):
                    entry = dict(_proto_strings(view, *value))
                    if entry.get(1) == "location" and 2 in entry:
                        location = entry[2]
            if external and location is not None and location not in found:
                found.append(location)
            continue
        fields = _MODEL_FIELDS if kind == "model" else _MESSAGE_FIELDS[kind]
        for number, value in _proto_fields(view, start, end):
            if number in fields and isinstance(value, tuple):
                pending.append((*value, fields[number]))
    return found


def _proto_strings(view: memoryview, start: int, end: int) -> Iterator[tuple[int, str]]:
    """The length-delimited fields of the message ``view[start:end]`` as text, by field number."""
    for number, value in _proto_fields(view, start, end):
        if isinstance(value, tuple):
            yield number, bytes(view[value[0] : value[1]]).decode("utf-8", errors="replace")


def _proto_fields(view: memoryview, start: int, end: int) -> Iterator[tuple[int, int | tuple[int, int] | None]]:
    """The fields of the protobuf message ``view[start:end]``: ``(number, value)``, a varint's value, a
    length-delimited field's ``(start, end)``, ``None`` for fixed-size ones.

    Raises:
        ValueError: The bytes are not a protobuf message.
    """
    position = start
    while position < end:
        key, position = _varint(view, position, end)
        number, wire = key >> 3, key & 7
        value: int | tuple[int, int] | None
        if wire == 0:
            value, position = _varint(view, position, end)
        elif wire == 2:
            size, position = _varint(view, position, end)
            value, position = (position, position + size), position + size
        elif wire in (1, 5):
            value, position = None, position + (8 if wire == 1 else 4)
        else:  # groups (3, 4) are not in onnx.proto
            raise ValueError(f"protobuf wire type {wire} at byte {position}")
        if position > end:
            raise ValueError(f"a protobuf field runs past its message (byte {position} > {end})")
        yield number, value


def _varint(view: memoryview, position: int, end: int) -> tuple[int, int]:
    """The protobuf varint at ``position`` and the position after it."""
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise ValueError(f"a protobuf varint runs past its message at byte {position}")
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def check_graph_file(model: Path, where: str, *, pinned: bool = False) -> dict[str, Path]:
    """Check the ONNX graph file ``model`` before ONNX Runtime reads it, so that a graph from an untrusted folder
    reads nothing outside its folder: it must be a regular file, not a symbolic link out of the folder
    (:func:`refuse_link_out`), and each external-data file it names a regular file in the folder, named by a
    relative path (:func:`_external_data_files`). Every session on a graph from a folder a caller names starts
    with it (the ONNX encoder's, the bge-small baseline's, the cross-encoder teacher's).

    A missing ``model`` is left to the caller (or to ONNX Runtime, whose error names the file). ``pinned``: a
    bundled model's shipped graph (the package's own files), whose files may be links anywhere
    (:func:`~kl_retrievers._io.in_model_folder`); it must still be a regular file.

    Returns:
        The graph's external-data files, by location (``{}`` without any).

    Raises:
        OnnxModelError: ``model`` is not a regular file (a FIFO would block ONNX Runtime's read), links out of its
            folder, or names an external-data file that is refused; the message starts with ``where``.
    """
    if not model.exists():
        return {}
    if not model.is_file():
        raise OnnxModelError(f"{where}: {model.name} is not a regular file (a FIFO, a device or a folder)")
    refuse_link_out(model, where, pinned=pinned)
    return _external_data_files(model, where, pinned=pinned)


def refuse_link_out(file: Path, where: str, *, pinned: bool = False) -> None:
    """Refuse ``file`` (``model.onnx`` or ``tokenizer.json``) when it is a symbolic link out of its folder
    (:func:`~kl_retrievers._io.in_model_folder`), as the torch encoder refuses such links at its weights and
    tokenizer files: nothing outside the folder is read. ``pinned`` (a bundled model's shipped files): never
    refused.

    Raises:
        OnnxModelError: The link leads elsewhere; the message names both paths.
    """
    if not in_model_folder(file, file.parent, pinned=pinned):
        raise OnnxModelError(
            f"{where}: {file.name} resolves to {file.resolve()}, not to a file directly in its folder (a link must not "
            "lead elsewhere; a Hugging Face cache snapshot's links to its blobs are fine); copy the file into the "
            "folder instead of linking to it"
        )


def _check_graph(session: Any, config: OnnxEncoderConfig, where: str) -> tuple[str, ...]:
    """The graph's input names; raises when its inputs or outputs do not match ``config``."""
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [name for name in OUTPUTS if name not in outputs]
    if missing:
        raise OnnxModelError(
            f"{where}: the ONNX graph lacks output(s) {missing} (it has {sorted(outputs)}); "
            f"an encoder graph has outputs {list(OUTPUTS)}"
        )
    for name in OUTPUTS:
        shape = outputs[name].shape
        last = shape[-1] if shape else None
        if len(shape) != 2 or (isinstance(last, int) and last != config.dim):
            raise OnnxModelError(
                f"{where}: the ONNX graph's output {name!r} has shape {shape}; config.json says (batch, {config.dim})"
            )
    inputs = [i.name for i in session.get_inputs()]
    unknown = [name for name in inputs if name not in _INPUTS]
    if unknown or not {"input_ids", "attention_mask"} <= set(inputs):
        raise OnnxModelError(
            f"{where}: the ONNX graph's inputs are {inputs}; an encoder graph takes input_ids, attention_mask "
            "and optionally token_type_ids"
        )
    return tuple(inputs)
