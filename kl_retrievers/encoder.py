"""The Gaussian encoder: one transformer that maps a text to a diagonal Gaussian.

The mean is a linear map of the pooled representation and the variance is
``max(softplus_beta(W_S h), floor)``; queries and documents share the encoder. In the default
model (``minilm-gauss-soup``: ``"pooling": "mean"``, ``"var_token": false``) the input is
``[CLS] text [SEP]``, the pooled representation is the masked mean of the token states and the
variance head reads the same mean-pooled states. As an option, the paper's design (Zamani and
Bendersky, SIGIR 2023, section 4.1; ``var_token: true``, as in ``minilm-gauss-zs``, and the
defaults of :class:`GaussianEncoderConfig`) inserts a new special token, input
``[CLS] [VAR] text [SEP]``, and reads the variance from the ``[VAR]`` state; ``pooling: "cls"``
pools the ``[CLS]`` state. See docs/concepts.md ("The representation").

Examples:
    >>> from kl_retrievers import GaussianEncoder
    >>> enc = GaussianEncoder.from_backbone("sentence-transformers/all-MiniLM-L6-v2", dim=128)  # doctest: +SKIP
    >>> g = enc.encode_documents(["a first passage", "a second one"])  # doctest: +SKIP
    >>> g.mean.shape, g.var.shape  # doctest: +SKIP
    ((2, 128), (2, 128))
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import numbers
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kl_retrievers._config import (
    CONFIG_NAME,
    TOKENIZER_SHA256,
    WEIGHTS_IDENTITY,
    WEIGHTS_SHA256,
    GaussianEncoderConfig,
    NotAnEncoderError,
    Pooling,
    encoder_config,
    is_saved_encoder,
    model_similarity,
    read_encoder_meta,
    refused_remote_code,
    saved_weights_sha256,
)
from kl_retrievers._config import TOKENIZER_FILES as _TOKENIZER_FILES
from kl_retrievers._config import TOKENIZER_SIDE_FILES as _TOKENIZER_SIDE_FILES
from kl_retrievers._config import check_tokenizer_sha256 as _check_tokenizer_sha256
from kl_retrievers._config import check_weights_sha256 as _check_weights_sha256
from kl_retrievers._encoding import (
    DEVICE_TYPES,
    TORCH_EXTRA,
    EncoderMixin,
    TransformersTextCut,
    bad_device,
    eval_mode,
    progress_bar,
    require_torch,
)
from kl_retrievers._io import (
    atomic_dir,
    check_replace_target,
    check_version,
    in_model_folder,
    library_version,
    load_unchanged,
    recover_dir,
    safetensors_write_error,
    user_path,
)
from kl_retrievers.gaussian import SCORE_DIRECTION, Gaussians
from kl_retrievers.hub import (
    BUNDLED_DIR,
    BUNDLED_PREFIX,
    bundled_name,
    bundled_names,
    cached_sha256,
    local_reference,
    resolve_model_path,
    retyped,
    sha256_file,
    warn_if_shadowed,
)

if TYPE_CHECKING:
    from kl_retrievers.onnx import Quantization

require_torch("the torch backend (GaussianEncoder)")  # the core install has neither torch nor transformers
try:
    import torch
    import torch.nn.functional as F
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file
    from torch import nn
except ImportError as exc:  # a torch that is present but broken
    raise ImportError(f"{exc}; {TORCH_EXTRA}") from exc

logger = logging.getLogger(__name__)

#: Hugging Face fast tokenizers keep truncation and padding settings in shared state, so two threads
#: tokenizing with different budgets can each get the other's; tokenizing (not the forward pass) is
#: serialised across encoders. A module-level lock keeps the encoders picklable and deep-copyable.
_TOKENIZER_LOCK = threading.Lock()

__all__ = ["GaussianEncoder", "GaussianEncoderConfig", "NotAnEncoderError"]

FORMAT_VERSION = 1
VAR_TOKEN = "[VAR]"
FULL_WEIGHTS = "model.safetensors"
DELTA_WEIGHTS = "delta.safetensors"
_VAR_ROW = "var_token_embedding"
#: Suffixes of a LoRA-adapted weight's factors in ``delta.safetensors``: the weight is
#: ``W + (B @ A) * scaling`` on top of the backbone's ``W``.
_LORA_A, _LORA_B, _LORA_SCALING = ".lora_A", ".lora_B", ".lora_scaling"


#: Weight file names of a backbone folder other than one ``model.safetensors``, as transformers reads them
#: (a safetensors checkpoint before a PyTorch one; shards named by their ``.index.json``).
_SHARDED_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_WEIGHTS = "pytorch_model.bin"
_SHARDED_BIN_INDEX = "pytorch_model.bin.index.json"
#: First line of the digest that pins a backbone stored in several weight files, or as a ``.bin`` file (never
#: equal to one file's SHA-256, so a pin of a single ``model.safetensors`` keeps its meaning).
_BACKBONE_FILES_DIGEST = b"kl_retrievers/backbone-weight-files/v1\n"


def _backbone_weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from a Hugging Face backbone folder, in a defined order; ``[]`` when
    it has none, or when its index names none.

    transformers' own order: one ``model.safetensors``; else the shards its ``model.safetensors.index.json``
    names; else ``pytorch_model.bin``; else the shards ``pytorch_model.bin.index.json`` names. Shard files no
    index names (a stray ``model-00001-of-00002.safetensors`` beside ``pytorch_model.bin``) are not loaded by
    transformers, so they are not pinned either.

    Examples:
        >>> _backbone_weight_files(Path("/nonexistent"))
        []
    """
    if (folder / FULL_WEIGHTS).is_file():
        return [folder / FULL_WEIGHTS]
    if (folder / _SHARDED_SAFETENSORS_INDEX).is_file():
        return _indexed_shards(folder / _SHARDED_SAFETENSORS_INDEX)
    if (folder / _BIN_WEIGHTS).is_file():
        return [folder / _BIN_WEIGHTS]
    if (folder / _SHARDED_BIN_INDEX).is_file():
        return _indexed_shards(folder / _SHARDED_BIN_INDEX)
    return []


def _indexed_shards(index_file: Path) -> list[Path]:
    """The shard files an index (its ``weight_map`` values) names, sorted as transformers sorts them; ``[]``
    when the index cannot be read or names no plain file name (transformers cannot load such a folder)."""
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, MemoryError):
        return []
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        return []
    names = {v for v in weight_map.values() if isinstance(v, str) and v and Path(v).name == v}
    return [index_file.parent / n for n in sorted(names)]


def _backbone_sha256(folder: Path) -> str | None:
    """The SHA-256 pinning a backbone folder's weights (``config.backbone_sha256``); ``None`` without weights.

    One ``model.safetensors``: that file's SHA-256 (what every pin recorded before others were). Weights in
    several files or a ``.bin`` file: the SHA-256 of a text naming each file with its SHA-256, in
    :func:`_backbone_weight_files`' order, after a first line of its own (so it never equals a file's SHA-256:
    a folder whose weights moved between these forms does not match its earlier pin).
    """
    files = _backbone_weight_files(folder)
    if not files:
        return None
    if len(files) == 1 and files[0].name == FULL_WEIGHTS:
        return cached_sha256(files[0])
    digest = hashlib.sha256(_BACKBONE_FILES_DIGEST)
    for file in files:
        if not file.is_file():
            return None  # an index naming a missing shard: not a loadable backbone either
        digest.update(f"{file.name}\0{cached_sha256(file)}\n".encode())
    return digest.hexdigest()


def _check_backbone_pin(path: Path, config: GaussianEncoderConfig, base_path: Path) -> None:
    """Refuse a delta folder's backbone whose weights do not match the SHA-256 its config records (if any)."""
    recorded = config.backbone_sha256
    if not recorded:
        return
    files = _backbone_weight_files(base_path)
    actual = _backbone_sha256(base_path)
    if actual == recorded.lower():
        return
    shown = ", ".join(f.name for f in files[:4]) + (", ..." if len(files) > 4 else "") if files else "no weight files"
    raise NotAnEncoderError(
        f"{path} was saved on top of backbone {config.backbone!r} whose weights had SHA-256 {recorded} "
        f"({CONFIG_NAME} encoder.backbone_sha256), but the backbone folder {base_path} ({shown}) has "
        f"{actual if actual is not None else 'no weights that can be checked'}; load the exact backbone it was "
        "trained from (a backbone re-saved in another form, e.g. sharded or as .bin, no longer matches: save the "
        "encoder with include_backbone=True from a matching copy)"
    )


def _inverse_softplus(value: float, beta: float) -> float:
    """The ``x`` with ``softplus_beta(x) == value``, stable for large and small ``beta * value``.

    ``log(expm1(beta * v)) / beta`` overflows above ``beta * v`` of about 710; the form used here,
    ``v + log(-expm1(-beta * v)) / beta``, does not.

    Examples:
        >>> round(_inverse_softplus(800.0, 1.0), 6)
        800.0
        >>> round(_inverse_softplus(1.0, 1.0), 6)
        0.541325
    """
    return value + math.log(-math.expm1(-beta * value)) / beta


def _check_init_variance(init_variance: object, var_floor: float) -> float:
    """``init_variance`` as a float; ``ValueError`` naming it and the allowed range unless it is a finite
    number above ``var_floor`` and at most the float32 maximum.

    Examples:
        >>> _check_init_variance(2, 1e-6)
        2.0
        >>> _check_init_variance(float("inf"), 1e-6)
        Traceback (most recent call last):
        ValueError: init_variance must be a finite number > var_floor (1e-06) and <= 3.4028234663852886e+38; got inf
    """
    limit = float(torch.finfo(torch.float32).max)
    ok = isinstance(init_variance, numbers.Real) and not isinstance(init_variance, (bool, np.bool_))
    value = float(init_variance) if ok else math.nan  # type: ignore[arg-type]
    if not (math.isfinite(value) and var_floor < value <= limit):
        raise ValueError(
            f"init_variance must be a finite number > var_floor ({var_floor}) and <= {limit}; got {init_variance!r}"
        )
    return value


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and weight-loading bar (an unused pooler is expected)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _refuse_link_out(file: Path, folder: Path) -> None:
    """Refuse ``file`` (a weights or tokenizer file of the model folder ``folder``) when it is a symbolic link
    leading out of the folder (:func:`~kl_retrievers._io.in_model_folder`): nothing outside the folder is read.
    A bundled model's folder (``kl_retrievers/pretrained/NAME``, the package's own files) is exempt: an installer
    may lay its files as links into a cache (``pinned``).

    Raises:
        NotAnEncoderError: The link leads elsewhere; the message names both paths.
    """
    try:
        bundled = folder.resolve().parent == BUNDLED_DIR
    except (OSError, RuntimeError):  # a loop of links: not the package's folder
        bundled = False
    if not in_model_folder(file, folder, pinned=bundled):
        raise NotAnEncoderError(
            f"{file} resolves to {file.resolve()}, not to a file directly in the model folder {folder} (a link "
            "must not lead elsewhere; a Hugging Face cache snapshot's links to its blobs are fine); copy the file "
            "into the folder instead of linking to it"
        )


def _load_tokenizer(path: Path) -> Any:
    """The tokenizer saved in ``path``; damaged tokenizer files are a :class:`NotAnEncoderError` naming them.

    transformers reports a truncated or edited ``tokenizer.json`` / ``tokenizer_config.json`` as a bare
    ``JSONDecodeError``, ``KeyError`` or ``AttributeError`` that names no file. The message names the first of
    the folder's tokenizer JSON files that is not a JSON object, else every tokenizer file present. A folder whose
    ``tokenizer_config.json`` has an ``auto_map`` (Python code of its own) is refused, naming it: the folder's code
    is never run, and transformers never asks whether to run it (``trust_remote_code=False``).
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except ImportError:  # a missing optional package (sentencepiece, ...): its own message says which
        raise
    except Exception as exc:  # transformers and tokenizers raise many types for damaged files
        remote = refused_remote_code(path, exc)
        if remote is not None:
            raise NotAnEncoderError(remote) from None
        names = [n for n in (*_TOKENIZER_FILES, *_TOKENIZER_SIDE_FILES) if (path / n).is_file()]
        culprit = ""
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                parsed = json.loads((path / name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as why:
                culprit = f"{path / name} is not valid JSON ({why})"
                break
            if not isinstance(parsed, dict):
                culprit = f"{path / name} is not a JSON object (it is a {type(parsed).__name__})"
                break
        where = culprit or f"its tokenizer files in {path} ({', '.join(names)}) cannot be loaded"
        raise NotAnEncoderError(
            f"{where}: {type(exc).__name__}: {exc}; the tokenizer files are damaged or were changed after the save: "
            "restore the folder or save the encoder again"
        ) from None


def _load_backbone(path: str | os.PathLike[str]) -> Any:
    """The Hugging Face model in ``path``, never running the folder's own code (``trust_remote_code=False``): a
    folder whose ``config.json`` has an ``auto_map`` transformers refuses is a :class:`NotAnEncoderError` naming it."""
    from transformers import AutoModel

    with _quiet_transformers():
        try:
            try:
                return AutoModel.from_pretrained(
                    path, local_files_only=True, add_pooling_layer=False, trust_remote_code=False
                )
            except TypeError:  # models without a pooling layer reject the argument
                return AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except (ValueError, OSError) as exc:
            remote = refused_remote_code(Path(path), exc)
            if remote is not None:
                raise NotAnEncoderError(remote) from None
            raise


def _backbone_from_config(config_dict: dict[str, Any]) -> Any:
    from transformers import AutoConfig, AutoModel

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False, trust_remote_code=False)
    except TypeError:
        return AutoModel.from_config(config, trust_remote_code=False)


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):  # TypeError: not a str or device at all (e.g. a list of devices)
            raise bad_device(device) from None
        if dev.type not in DEVICE_TYPES:
            raise bad_device(device)
        _check_available(dev, device)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _available_devices() -> str:
    """The devices this torch can use, for messages (e.g. ``"cpu, cuda:0"``)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def _check_available(dev: torch.device, asked: object) -> None:
    """Raise ``ValueError`` naming ``asked`` and the available devices when ``dev`` cannot be used here.

    Without it, torch fails later, deep inside ``.to()``, with e.g. an ``AssertionError`` ("Torch not compiled
    with CUDA enabled").
    """
    why = ""
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            why = f"this torch ({torch.__version__}) was built without CUDA"
        elif not torch.cuda.is_available():
            why = "no CUDA GPU is visible"
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            why = f"there are {torch.cuda.device_count()} CUDA device(s)"
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_built():
            why = f"this torch ({torch.__version__}) was built without MPS (Apple GPU) support"
        elif not mps.is_available():
            why = "MPS is not available on this machine"
    if why:
        raise ValueError(f"device {str(asked)!r} is not available: {why}; available here: {_available_devices()}")


class GaussianEncoder(EncoderMixin, TransformersTextCut, nn.Module):
    """A transformer backbone with a mean head and a softplus-beta variance head.

    Build one with :meth:`from_backbone` (a new encoder from a plain Hugging Face
    encoder) or :meth:`from_pretrained` (a saved one); :func:`kl_retrievers.load_default_model`
    gives the package default.

    Args:
        backbone: A Hugging Face encoder (``AutoModel``) whose output has ``last_hidden_state``.
        tokenizer: Its tokenizer; ``[VAR]`` is added when ``config.var_token`` is set.
        config: The encoder's :class:`GaussianEncoderConfig`.
        name_or_path: Where the encoder came from (for configs and logs).

    Examples:
        >>> enc = GaussianEncoder.from_backbone("sentence-transformers/all-MiniLM-L6-v2", dim=64)  # doctest: +SKIP
        >>> q = enc.encode_queries("what is a gaussian?")  # doctest: +SKIP
        >>> q.mean.shape  # doctest: +SKIP
        (1, 64)
    """

    backbone: Any  # a transformers PreTrainedModel

    def __init__(self, backbone: Any, tokenizer: Any, config: GaussianEncoderConfig, name_or_path: str = ""):
        super().__init__()
        self.backbone = backbone
        # Right padding only: [VAR] is inserted at column 1 and CLS pooling reads column 0, which
        # with left padding would be padding for every text shorter than the batch's longest.
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
        self.config = config
        self.name_or_path = name_or_path or config.backbone
        hidden = int(backbone.config.hidden_size)
        self.mean_head = nn.Linear(hidden, config.dim)
        self.var_head = nn.Linear(hidden, config.dim)
        self.var_token_id: int | None = None
        # (SHA-256 of the weights file loaded or saved, the parameters' identities and versions then)
        self._weights_record: tuple[str, tuple[tuple[int, int], ...]] | None = None
        if config.var_token:
            self._ensure_var_token()

    # ------------------------------------------------------------------ weights identity
    def _parameter_versions(self) -> tuple[tuple[int, int], ...]:
        """Each parameter's identity and in-place version counter (an optimizer step or a load bumps it)."""
        return tuple((id(p), int(p._version)) for p in self.parameters())

    def _remember_weights(self, sha256: str | None) -> None:
        """Record that the weights in memory are those of a weights file with SHA-256 ``sha256``."""
        self._weights_record = None if sha256 is None else (sha256, self._parameter_versions())

    def __getstate__(self) -> dict[str, Any]:
        """``nn.Module``'s state, with the weights' identity as it is now (:attr:`weights_sha256`): its record
        holds the parameters' ``id``, which an unpickled copy does not share, so it is kept by value."""
        state = dict(super().__getstate__())
        state["_weights_record"] = None
        state["_pickled_weights_sha256"] = self.weights_sha256
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore :meth:`__getstate__`'s state: an unpickled encoder reports the identity the pickled one had."""
        state = dict(state)
        sha256 = state.pop("_pickled_weights_sha256", None)
        super().__setstate__(state)
        self._remember_weights(sha256)

    def __deepcopy__(self, memo: dict[int, Any]) -> GaussianEncoder:
        """A deep copy, whose weights' identity is not known (``weights_sha256`` ``None``, as documented there):
        a copy in memory is a new model until saved. Pickling keeps the identity (:meth:`__getstate__`)."""
        state = self.__getstate__()
        state["_pickled_weights_sha256"] = None
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy(state, memo))
        return copied

    @property
    def weights_sha256(self) -> str | None:
        """The SHA-256 identifying these weights: of the weights file they were first saved to (``None``: not known).

        Loading a folder takes the identity its ``config.json`` records (``weights_identity``), else the SHA-256 of
        its weights file (folders saved before the field existed, the bundled models). :meth:`save_pretrained`
        of weights unchanged since they were loaded or saved keeps their identity (and writes it into the new
        folder), so a full copy of a delta folder, a delta copy of a full one, or a re-save report the same
        value; only weights whose identity is not known (built or changed in memory) take the SHA-256 of the new
        weights file. A store records it, and warns when loaded with an encoder whose weights differ (a model
        folder retrained in place); a store that got its first documents while it was ``None`` records the one a
        later :meth:`save_pretrained` of those same weights gives (``store.add``, ``save_pretrained``,
        ``store.save``). The ONNX backend reports the same value for an export of the same model (an export of
        weights whose identity is not known records none, with a warning).

        For a delta folder (``delta.safetensors``, every bundled model) the identity covers only what was saved
        over the backbone, not the backbone: two models with byte-identical deltas over different backbones
        report the same value (``minilm-unit-variance`` and ``bge-small-unit-variance`` do). So a store also
        compares the SHA-256 of the backbone (``config.backbone_sha256``, kept in the encoder config it records;
        an ONNX encoder carries the same in ``config.encoder``) and warns when it differs, unless either side
        does not know it (:func:`kl_retrievers.store._format.warn_if_other_weights`).

        What counts as a change in memory (the identity becomes ``None`` until the next save): anything that
        bumps a parameter's in-place version counter or replaces a parameter, i.e. an optimizer step,
        ``load_state_dict`` (also with ``assign=True``), an in-place op on a parameter itself
        (``with torch.no_grad(): p.add_(x)``, ``p.copy_(x)``), and :func:`copy.deepcopy` (the copy is unknown).
        Not detected (the old identity stays, and a later save writes it into the new folder, so a store
        indexed with the old weights would not warn): writes through ``p.data`` (``p.data.add_(x)``,
        ``p.data.copy_(x)``, ``p.data = x``), and dtype or device round trips that round the values
        (``.half().float()``); ``.to(device)`` and ``.half()`` keep the identity too. Change weights through the
        parameters themselves, or use ``load_state_dict``, so that the change is seen.

        Examples:
            >>> GaussianEncoder.from_pretrained("my-encoder").weights_sha256  # doctest: +SKIP
            '3f5a...'
        """
        record = self._weights_record
        if record is None or record[1] != self._parameter_versions():
            return None
        return record[0]

    # ------------------------------------------------------------------ construction
    def _ensure_var_token(self) -> None:
        tok = self.tokenizer
        if VAR_TOKEN not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": [VAR_TOKEN]})
        self.var_token_id = int(tok.convert_tokens_to_ids(VAR_TOKEN))
        emb = self.backbone.get_input_embeddings()
        if emb.num_embeddings <= self.var_token_id:
            cls_id = tok.cls_token_id if tok.cls_token_id is not None else 0
            self.backbone.resize_token_embeddings(len(tok), mean_resizing=False)
            with torch.no_grad():
                weights = self.backbone.get_input_embeddings().weight
                weights[self.var_token_id] = weights[cls_id]

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        dim: int | None = None,
        beta: float = 1.0,
        pooling: Pooling | None = None,
        var_token: bool = True,
        var_floor: float = 1e-6,
        normalize_pooled: bool = False,
        init_variance: float = 1.0,
        identity_mean: bool | None = None,
        max_length: int = 256,
        query_max_length: int = 64,
        seed: int | None = 0,
        query_prefix: str | None = None,
    ) -> GaussianEncoder:
        """Start a new Gaussian encoder from a plain encoder backbone.

        Args:
            name_or_path: Hub id or local folder of a Hugging Face encoder
                (``sentence-transformers/all-MiniLM-L6-v2`` also resolves offline).
            dim: Output dimension ``k`` (default: the backbone's hidden size).
            beta: Softplus sharpness of the variance head.
            pooling: ``"cls"`` or ``"mean"``; ``None``: the pooling the backbone was trained with, as its
                sentence-transformers folder says (``1_Pooling/config.json``: mean for all-MiniLM-L6-v2,
                CLS for bge-small-en), else ``"cls"`` (a pooling this encoder lacks, such as max, gives
                ``"cls"`` with a warning; see :func:`kl_retrievers.backbones.default_pooling`).
            var_token: Add ``[VAR]`` and read the variance from it.
            var_floor: Smallest variance.
            normalize_pooled: L2-normalise the pooled vector before the mean head. A sentence-transformers
                folder's ``Normalize`` module is not applied otherwise, nor its other modules (``Dense``) or its
                ``max_seq_length``: what is not is logged at INFO
                (:func:`kl_retrievers.backbones.sentence_transformers_not_applied`).
            init_variance: The variance head starts as this constant (zero weights): a finite number
                above ``var_floor`` (checked as :meth:`reset_heads` does).
            identity_mean: Start the mean head as the identity (default: when ``dim``
                equals the hidden size); otherwise it is initialised at random.
            max_length: Document token budget.
            query_max_length: Query token budget.
            seed: Seed for the random head initialisation (``None``: do not seed, draw from torch's global
                RNG). A seed leaves torch's global RNG as it was.
            query_prefix: Text put before every query (kept in ``config.extra["query_prefix"]``);
                ``None``: what the backbone expects (bge's instruction for ``bge-small-en``, else none;
                see :func:`kl_retrievers.backbones.default_query_prefix`).

        Returns:
            A new encoder in evaluation mode.

        Raises:
            ValueError: ``name_or_path`` is a folder written by kl_retrievers (a saved Gaussian encoder, an
                ONNX export, a store), not a plain backbone; the message says how to load it.
        """
        from transformers import AutoTokenizer

        from kl_retrievers._config import describe_saved_folder
        from kl_retrievers.backbones import default_pooling, default_query_prefix, sentence_transformers_not_applied

        name_or_path = _model_reference(name_or_path)
        path = resolve_model_path(name_or_path)
        saved = describe_saved_folder(path)
        if saved is not None:
            raise ValueError(
                f"{path} is {saved}, not a plain backbone for GaussianEncoder.from_backbone "
                "(a Hugging Face encoder folder or hub id)"
            )
        if pooling is None:
            pooling = default_pooling(path)
        not_applied = sentence_transformers_not_applied(path, normalize_pooled=normalize_pooled, max_length=max_length)
        if not_applied:  # computed as before (bundled models depend on it): said, not changed
            logger.info(
                "%s is a sentence-transformers folder: GaussianEncoder.from_backbone reads its backbone, pooling "
                "and query prompt, but does not apply %s",
                path,
                "; ".join(not_applied),
            )
        prefix = default_query_prefix(path, name_or_path) if query_prefix is None else query_prefix
        if not isinstance(prefix, str):
            raise TypeError(f"query_prefix must be a str or None; got {type(prefix).__name__}")
        backbone = _load_backbone(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except (ValueError, OSError) as exc:
            remote = refused_remote_code(path, exc)
            if remote is not None:
                raise NotAnEncoderError(remote) from None
            raise
        hidden = int(backbone.config.hidden_size)
        config = GaussianEncoderConfig(
            dim=dim or hidden,
            beta=beta,
            pooling=pooling,
            var_token=var_token,
            var_floor=var_floor,
            normalize_pooled=normalize_pooled,
            max_length=max_length,
            query_max_length=query_max_length,
            backbone=local_reference(name_or_path),
            backbone_sha256=_backbone_sha256(Path(path)),
            extra={"query_prefix": prefix} if prefix else {},
        )
        # a seed draws the random initialisation from its own stream: torch's global RNG is left as it was
        # (the CPU generator only: the heads are built on the CPU, and torch.manual_seed would reseed CUDA too)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.random.default_generator.manual_seed(seed)
            enc = cls(backbone, tokenizer, config, name_or_path=local_reference(name_or_path))
            enc.reset_heads(init_variance=init_variance, identity_mean=identity_mean)
        return enc.eval()

    def reset_heads(self, *, init_variance: float = 1.0, identity_mean: bool | None = None) -> None:
        """Initialise the heads: constant variance ``init_variance``; identity or random mean.

        Args:
            init_variance: The variance every input starts with (zero weights, constant bias).
            identity_mean: Start the mean head as the identity (default: when ``dim`` equals the hidden
                size); otherwise at random.

        Raises:
            ValueError: ``init_variance`` is not a finite number above ``config.var_floor`` (at most the
                float32 maximum), or ``identity_mean`` is set while ``dim`` differs from the hidden size.
        """
        init_variance = _check_init_variance(init_variance, self.config.var_floor)
        hidden = self.mean_head.in_features
        if identity_mean is None:
            identity_mean = self.config.dim == hidden
        with torch.no_grad():
            if identity_mean:
                if self.config.dim != hidden:
                    raise ValueError(f"identity_mean needs dim == hidden size ({hidden}); got dim={self.config.dim}")
                self.mean_head.weight.copy_(torch.eye(hidden))
                self.mean_head.bias.zero_()
            else:
                nn.init.xavier_uniform_(self.mean_head.weight)
                self.mean_head.bias.zero_()
            self.var_head.weight.zero_()
            self.var_head.bias.fill_(_inverse_softplus(init_variance, self.config.beta))

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return next(self.parameters()).device

    @property
    def max_tokens(self) -> int | None:
        """The most tokens (``[VAR]`` included) the backbone reads: its absolute position embeddings.

        Backbones whose positions start after the padding index (the position embeddings'
        ``padding_idx``: RoBERTa, MPNet, data2vec-text...) read ``padding_idx + 1`` fewer: 512 for
        all-mpnet-base-v2 and roberta-base, as for BERT, MiniLM or bge.

        ``None`` when the backbone has no such limit (or does not say). A longer ``max_length``
        is clamped to this with a warning (torch would otherwise fail on the position embeddings).
        """
        cfg = getattr(self.backbone, "config", None)
        limit = getattr(cfg, "max_position_embeddings", None)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            return None
        if getattr(cfg, "position_biased_input", True) is False:  # relative positions only (DeBERTa-v2)
            return None
        # Backbones that number positions after the padding index (RoBERTa, CamemBERT, XLM-R, MPNet,
        # data2vec-text...) say so in their position embeddings' padding_idx: they read padding_idx + 1 fewer.
        positions = getattr(getattr(self.backbone, "embeddings", None), "position_embeddings", None)
        if isinstance(positions, nn.Embedding):
            if positions.padding_idx is not None:
                limit -= int(positions.padding_idx) + 1
        elif "roberta" in str(getattr(cfg, "model_type", "")) or getattr(cfg, "model_type", "") == "camembert":
            limit -= int(getattr(cfg, "pad_token_id", 1) or 0) + 1  # no such module found: as its config says
        return limit if limit >= 3 else None

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokenize (padding on the right) and insert ``[VAR]`` right after the first token (``[CLS]``).

        ``max_length`` counts every token, ``[VAR]`` included; above :attr:`max_tokens` it is
        clamped to it (with a warning). A long text is cut before tokenizing, to a prefix with the same
        token ids (see :func:`~kl_retrievers._encoding.cut_long_texts`; fast tokenizers truncating on the right).
        """
        max_length = self._clamp_length(max_length)
        budget = max_length - 1 if self.var_token_id is not None else max_length
        with _TOKENIZER_LOCK:  # a fast tokenizer keeps its truncation setting in shared state: one call at a time
            # Forced again in case the caller switched it since construction: see __init__.
            self.tokenizer.padding_side = "right"
            texts = self._cut_long_texts(list(texts), budget)
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=budget, return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.var_token_id is not None:
            n = batch["input_ids"].shape[0]
            for key, value in batch.items():
                fill = self.var_token_id if key == "input_ids" else (1 if key == "attention_mask" else 0)
                col = torch.full((n, 1), fill, dtype=value.dtype)
                batch[key] = torch.cat([value[:, :1], col, value[:, 1:]], dim=1)
        return batch

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance, each of shape ``(batch, dim)``."""
        pooled, var_state = self.backbone_features(input_ids, attention_mask, token_type_ids)
        return self.heads(pooled, var_state)

    def backbone_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the heads read: the pooled state (before normalisation) and the variance-head input.

        The variance-head input is the ``[VAR]`` state, or the pooled state without ``[VAR]``.
        """
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.to(hidden.dtype)
            if self.var_token_id is not None:
                mask = mask * (input_ids != self.var_token_id).to(hidden.dtype)
            mask = mask.unsqueeze(-1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        var_state = hidden[:, 1] if self.var_token_id is not None else pooled
        return pooled, var_state

    def heads(self, pooled: torch.Tensor, var_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance from :meth:`backbone_features` output.

        The variance is computed in float32 (float64 for a float64 model), whatever the model's dtype,
        so that a small ``var_floor`` stays positive in a float16 or bfloat16 model; the mean has the
        model's dtype.
        """
        if self.config.normalize_pooled:
            pooled = F.normalize(pooled, p=2, dim=-1)
        mean = self.mean_head(pooled)
        # In float32 at least: in float16 a floor below about 6e-8 (and softplus of a very negative input)
        # rounds to 0, an invalid variance. The variance stays float32; the mean keeps the model's dtype.
        pre = self.var_head(var_state)
        pre = pre.float() if pre.dtype in (torch.float16, torch.bfloat16) else pre
        var = F.softplus(pre, beta=self.config.beta).clamp_min(self.config.var_floor)
        return mean, var

    # ------------------------------------------------------------------ encoding
    def _use_device(self, device: str | torch.device | None) -> None:
        if device is not None:
            target = _pick_device(device)
            if target != self.device:
                self.to(target)

    def _unknown_token(self) -> tuple[int, np.ndarray] | None:
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if not isinstance(unk, int):
            return None
        special = [i for i in [*getattr(self.tokenizer, "all_special_ids", ()), self.var_token_id] if i != unk]
        return unk, np.asarray([i for i in special if i is not None], np.int64)

    def _plain_token_ids(self, text: str) -> list[int] | None:
        with _TOKENIZER_LOCK:  # a fast tokenizer keeps its truncation setting in shared state
            ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [int(i) for i in ids]

    def _encode_batches(
        self, texts: list[str], *, max_length: int, batch_size: int, show_bar: bool, desc: str
    ) -> Gaussians:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        means, vars_ = [], []
        n_batches = -(-len(texts) // batch_size)
        # Eval mode (no dropout), shared with concurrent encodings: see kl_retrievers._encoding.eval_mode.
        with eval_mode(self), torch.inference_mode(), progress_bar(n_batches, desc=desc, show=show_bar) as bar:
            for start in range(0, len(texts), batch_size):
                chunk = [texts[i] for i in order[start : start + batch_size]]
                tokens = self.tokenize(chunk, max_length)
                self._warn_unknown_only(chunk, tokens["input_ids"].numpy())
                batch = {k: v.to(self.device) for k, v in tokens.items()}
                mean, var = self(**batch)
                means.append(mean.float().cpu())
                vars_.append(var.float().cpu())
                bar.update(1)
        inverse = torch.from_numpy(np.argsort(order))
        return Gaussians(torch.cat(means)[inverse], torch.cat(vars_)[inverse], validate=False)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self,
        path: str | os.PathLike[str],
        *,
        include_backbone: bool = True,
        extra_files: dict[str, str | bytes] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Save to a folder: ``config.json``, safetensors weights and the tokenizer.

        ``config.json`` records the SHA-256 of the weights file (``weights_sha256``) and of each tokenizer file
        (``tokenizer_sha256``), which :meth:`from_pretrained` checks, so a damaged or edited weights or
        tokenizer file, or a tokenizer file added later (``added_tokens.json``, ...), is refused, and the
        identity of the weights (``weights_identity``, :attr:`weights_sha256`): the one they were loaded with
        when they are unchanged since, else the new weights file's SHA-256.

        Args:
            path: Target folder; replaced atomically (an interrupted save keeps the old copy). It may
                be a new path, an empty folder or an earlier saved encoder; any other folder (your
                files, a saved ``KLStore``) is refused unless ``overwrite`` is set. ``"."`` saves into the
                working folder by its name (a folder that holds the working folder is refused). ``~`` is
                expanded to the home folder, as :func:`kl_retrievers.load_model` does. A symbolic link at
                ``path`` is followed, as :meth:`KLStore.save <kl_retrievers.store.KLStore.save>` follows one: for
                a ``current -> v3`` link, ``v3`` is replaced atomically (judged as above) and the link is kept;
                a dangling link is saved through as a new folder (its target's parent folder must exist). To
                switch versions instead, save to a new folder (``v4``) and repoint the link.
            include_backbone: Save every weight (``model.safetensors``). When ``False``, save
                only what differs from the backbone named in the config (``delta.safetensors``:
                the heads, the ``[VAR]`` embedding row and any changed backbone tensor), a few MB
                that load on top of that backbone. A backbone wrapped in a peft LoRA adapter
                (:func:`~kl_retrievers.training.apply_freezing` with ``lora_r``) is saved merged
                in a full save, and as its low-rank factors in a delta save (``<weight>.lora_A``,
                ``.lora_B``, ``.lora_scaling``; loading adds ``(B @ A) * scaling`` as peft's merge
                does, so the loaded weights equal the merged ones).
            extra_files: Further files written inside the same atomic swap (file name -> text or
                bytes), e.g. a ``README.md`` model card: either everything is saved or nothing
                changes. Names must be plain file names that the save does not write itself (``config.json``,
                the weights, the tokenizer's files such as ``tokenizer.json``, ``tokenizer_config.json``,
                ``special_tokens_map.json``, ``vocab.txt``).
            overwrite: Replace ``path`` even when it is a non-empty folder that is not a saved encoder
                (everything in it is deleted).

        Returns:
            The folder written.

        Raises:
            ValueError: ``config.json`` would hold NaN or infinity (not valid JSON), e.g. in
                ``config.extra``; an ``extra_files`` name is not a plain new file name; or ``path``
                is a non-empty folder that is not a saved encoder (without ``overwrite``), it holds
                the working folder, or it is a dangling link into a missing folder (or a link loop).

        Examples:
            >>> encoder.save_pretrained("my-encoder")  # doctest: +SKIP
        """
        target = user_path(path)  # "~/x" is the home folder's x, as load_model reads it
        final = check_replace_target(  # a link you name (current -> v3) is resolved once, here: v3 is saved
            target, is_ours=is_saved_encoder, what="a saved GaussianEncoder", overwrite=overwrite, follow_link=True
        )
        identity = self.weights_sha256  # weights unchanged since their load or save keep their identity
        state, lora = self._plain_state()
        meta: dict[str, Any] = {
            "library": "kl_retrievers",
            "library_version": library_version(),
            "format_version": FORMAT_VERSION,
            "score": {"name": model_similarity(self), "direction": SCORE_DIRECTION},  # a vector twin's own
            "encoder": self.config.to_dict(),
            "backbone_config": self.backbone.config.to_dict(),
            "var_token_id": self.var_token_id,
            "weights": FULL_WEIGHTS if include_backbone else DELTA_WEIGHTS,
        }
        if include_backbone:
            for key, (a, b, scaling) in lora.items():
                state[key] = _lora_merged(state[key], a, b, scaling)
        else:
            state = self._delta_state(state, lora)
        try:  # before anything is written: NaN / inf would make config.json invalid JSON
            json.dumps(meta, allow_nan=False)
        except ValueError as exc:
            raise ValueError(
                f"cannot save to {target}: config.json would hold NaN or infinity ({exc}); replace such values "
                "(e.g. in encoder.config.extra) with None"
            ) from None
        extras = dict(extra_files or {})
        for name, content in extras.items():
            if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name:
                raise ValueError(f"extra_files: {name!r} is not a plain file name")
            if name in self._saved_file_names():
                raise ValueError(
                    f"extra_files: {name!r} is written by save_pretrained itself (the config, the weights or the "
                    "tokenizer); give the file another name"
                )
            if not isinstance(content, (str, bytes)):
                raise ValueError(f"extra_files[{name!r}] must be str or bytes; got {type(content).__name__}")
        with atomic_dir(final) as tmp:
            save_safetensors(state, tmp / meta["weights"], saving=target, metadata={"format": "pt"})
            meta[WEIGHTS_SHA256] = {meta["weights"]: sha256_file(tmp / meta["weights"])}
            meta[WEIGHTS_IDENTITY] = identity or meta[WEIGHTS_SHA256][meta["weights"]]  # unknown: the new file's
            self.tokenizer.save_pretrained(os.fspath(tmp))
            written = sorted(f.name for f in tmp.iterdir() if f.is_file() and f.name != meta["weights"])
            # checked on load: an edited tokenizer (two vocabulary entries swapped) loads silently otherwise
            meta[TOKENIZER_SHA256] = {name: sha256_file(tmp / name) for name in written}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            for name, content in extras.items():
                if (tmp / name).exists():  # a file this tokenizer's save writes that the fixed list lacks
                    raise ValueError(f"extra_files: {name!r} is written by save_pretrained itself (the tokenizer)")
                if isinstance(content, bytes):
                    (tmp / name).write_bytes(content)
                else:
                    (tmp / name).write_text(content, encoding="utf-8")
        self._remember_weights(meta[WEIGHTS_IDENTITY])  # what a store built now records
        return target

    def _saved_file_names(self) -> set[str]:
        """Names of the files :meth:`save_pretrained` may write itself (never ``extra_files`` names)."""
        names = {CONFIG_NAME, FULL_WEIGHTS, DELTA_WEIGHTS, *_TOKENIZER_FILES, *_TOKENIZER_SIDE_FILES}
        vocab_names = getattr(self.tokenizer, "vocab_files_names", None)
        if isinstance(vocab_names, dict):
            names.update(v for v in vocab_names.values() if isinstance(v, str))
        return names

    def export_onnx(
        self,
        folder: str | os.PathLike[str],
        *,
        quantize: Quantization | Literal["float32"] | None = "int8",
        per_channel: bool = True,
        overwrite: bool = False,
    ) -> Path:
        """Export to an ONNX folder that :class:`~kl_retrievers.onnx.OnnxGaussianEncoder` loads without torch.

        A thin wrapper of :func:`kl_retrievers.onnx.export_onnx`: ``model.onnx`` (outputs ``mean`` and
        ``var``, everything after the tokenizer inside the graph), ``tokenizer.json`` and ``config.json``.

        Args:
            folder: Target folder (written atomically; a symbolic link there is followed and kept).
            quantize: ``"int8"`` (dynamic int8 weights, ONNX Runtime) or ``None`` (float32).
            per_channel: int8 only: one weight scale per output channel.
            overwrite: Replace a non-empty folder that is not an earlier ONNX export (refused
                otherwise; the model's own folder is always refused).

        Examples:
            >>> encoder.export_onnx("my-encoder-onnx", quantize="int8")  # doctest: +SKIP
        """
        from kl_retrievers.onnx import export_onnx

        return export_onnx(self, folder, quantize=quantize, per_channel=per_channel, overwrite=overwrite)

    def _plain_state(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
        """The state dict under plain backbone names, and any LoRA adapter's factors.

        For a backbone wrapped by peft (:func:`~kl_retrievers.training.apply_freezing` with
        ``lora_r``), the state holds the *base* weights under the names the unwrapped backbone
        uses, and the second value maps each adapted weight's key to ``(A, B, scaling)``: the
        trained weight is ``W + (B @ A) * scaling``, exactly what peft's merge computes.
        """
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if not hasattr(self.backbone, "get_base_model"):
            return state, {}
        lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for name, module in self.backbone.named_modules():
            if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
                continue
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            use_dora = getattr(module, "use_dora", {})
            if (
                len(adapters) != 1
                or getattr(module, "merged", False)
                or getattr(module, "fan_in_fan_out", False)
                or use_dora.get(adapters[0], False)
                or not isinstance(module.base_layer, nn.Linear)
            ):
                raise ValueError(
                    f"cannot save the LoRA adapter on {name!r} as factors (supported: one active, unmerged "
                    "adapter on a Linear layer, without DoRA); merge it first with "
                    "kl_retrievers.training.merge_lora(encoder)"
                )
            ad = adapters[0]
            a = module.lora_A[ad].weight.detach().cpu().contiguous()
            b = module.lora_B[ad].weight.detach().cpu().contiguous()
            lora[_plain_backbone_key(f"backbone.{name}.base_layer.weight")] = (a, b, float(module.scaling[ad]))
        plain: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if not key.startswith("backbone."):
                plain[key] = value
            elif ".lora_" not in key:
                plain[_plain_backbone_key(key)] = value
            elif not re.search(r"\.lora_[AB]\.[^.]+\.weight$", key):
                raise ValueError(f"cannot save {key!r}: only LoRA A/B weights are supported; merge the adapter first")
        return plain, lora

    def _delta_state(
        self, state: dict[str, torch.Tensor], lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    ) -> dict[str, torch.Tensor]:
        if not self.config.backbone:
            raise ValueError("include_backbone=False needs config.backbone (the base backbone to load on top of)")
        base_path = resolve_model_path(self.config.backbone)
        base = _load_backbone(base_path).state_dict()
        delta = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        emb_param = self.backbone.get_input_embeddings().weight
        emb_key = _plain_backbone_key(
            next("backbone." + n for n, p in self.backbone.named_parameters() if p is emb_param)
        )
        for key, value in state.items():
            if not key.startswith("backbone."):
                continue
            base_key = key[len("backbone.") :]
            if key == emb_key:
                delta.update(self._embedding_delta(key, value, base[base_key]))
                continue
            if base_key not in base or not torch.equal(value, base[base_key]):
                delta[key] = value
        for key, (a, b, scaling) in lora.items():
            delta[key + _LORA_A] = a
            delta[key + _LORA_B] = b
            delta[key + _LORA_SCALING] = torch.tensor([scaling], dtype=torch.float64)
        return delta

    def _embedding_delta(self, key: str, value: torch.Tensor, base: torch.Tensor) -> dict[str, torch.Tensor]:
        """Only the ``[VAR]`` row when every other row equals the backbone's; else the whole matrix."""
        var_id = self.var_token_id
        rows = base.shape[0]
        expected_rows = max(rows, var_id + 1) if var_id is not None else rows
        if value.shape[0] != expected_rows:
            return {key: value}
        expected = value.clone()
        expected[:rows] = base
        if var_id is not None:
            expected[var_id] = value[var_id]
        if not torch.equal(value, expected):
            return {key: value}
        return {_VAR_ROW: value[var_id : var_id + 1].clone()} if var_id is not None else {}

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], *, device: str | torch.device | None = None
    ) -> GaussianEncoder:
        """Load an encoder saved with :meth:`save_pretrained` (a local folder or a hub id), or a bundled model.

        A bundled model's name (``"minilm-gauss-soup"``, also ``"kl_retrievers:minilm-gauss-soup"``, a str)
        loads the bundled model, as :func:`kl_retrievers.load_model` does with ``backend="torch"``, even when
        a local folder has that name (a warning then says to write ``./NAME`` for the folder). A local
        folder is recorded in :attr:`name_or_path` as its absolute path, so a store saved with this
        encoder names the same folder from any working folder.

        When ``config.json`` records the weights' SHA-256 (``weights_sha256``; every save since it was
        added), the weights file is checked against it once the weights are read (a file too damaged to read
        gives the read error instead).

        A save of the same folder in another thread or process (:meth:`save_pretrained` swaps in a new copy) may
        replace it while it is read: the folder is then read again (at most four times, then
        :class:`~kl_retrievers.ConcurrentSaveError`), so the files of two saves are never mixed. A folder that a
        save killed mid-swap left missing, where the swap is not atomic (macOS, some file systems), is restored
        from the previous copy the save left beside it (``.NAME.old-*``), with a warning.

        Raises:
            NotAnEncoderError: The folder is not a saved Gaussian encoder (the message says what it is
                when kl_retrievers wrote it: a store, saved Gaussians, an ONNX export), or its weights
                file does not match the SHA-256 its ``config.json`` records.
            TypeError: ``name_or_path`` is not a str or path.
            kl_retrievers.hub.ModelNotFoundError: No folder, hub repo or installed copy has the model. A path
                object, or a str that can only be a folder (:func:`kl_retrievers.hub.is_path_name`:
                ``./enc``, ``models/v1/enc``), that does not exist fails before any hub lookup; the message names
                its absolute path and the current directory (as it does after the hub for ``models/enc``).
            OSError: Saves replaced the folder during each of the reads.

        Examples:
            >>> enc = GaussianEncoder.from_pretrained("my-encoder")  # doctest: +SKIP
        """
        if isinstance(name_or_path, str):
            bundled = bundled_name(name_or_path)
            if bundled is not None:
                warn_if_shadowed(name_or_path, bundled)
                enc = cls.from_pretrained(BUNDLED_DIR / bundled, device=device)
                enc.name_or_path = f"{BUNDLED_PREFIX}{bundled}"
                return enc
            if name_or_path.startswith(BUNDLED_PREFIX):
                raise ValueError(
                    f"no bundled model named {name_or_path.removeprefix(BUNDLED_PREFIX)!r}; bundled models: "
                    f"{bundled_names()} (kl_retrievers.load_model loads them on either backend)"
                )
        given = name_or_path  # a path object stays one: resolve_model_path never takes it for a hub id
        name_or_path = _model_reference(name_or_path)
        local = user_path(name_or_path)

        def load() -> GaussianEncoder:
            # Where a folder swap is not atomic (macOS), a save killed between its two renames leaves only the
            # previous copy, beside the folder (.NAME.old-*): put it back, as KLStore.load does.
            recover_dir(local, required=CONFIG_NAME)
            path = resolve_model_path(given)
            return cls._load_folder(path, local_reference(name_or_path), device)

        # A save of the same folder meanwhile swaps it between two reads (the config of one save, the weights of
        # the next: a checksum mismatch): read it again then.
        return load_unchanged(local, load)

    @classmethod
    def _load_folder(cls, path: Path, reference: str, device: str | torch.device | None) -> GaussianEncoder:
        """One read of the model folder ``path`` for :meth:`from_pretrained` (repeated when a save replaced it)."""
        cfg_file = path / CONFIG_NAME
        meta = read_encoder_meta(path)  # NotAnEncoderError naming the folder (kl_retrievers._config, torch-free)
        check_version(meta, what=f"encoder at {path}", format_version=FORMAT_VERSION)
        config = encoder_config(meta, cfg_file)
        weights_name = meta.get("weights", FULL_WEIGHTS)
        if weights_name not in (FULL_WEIGHTS, DELTA_WEIGHTS):  # never a path: nothing outside the folder is read
            raise NotAnEncoderError(
                f"{cfg_file}: field 'weights' must be {FULL_WEIGHTS!r} or {DELTA_WEIGHTS!r} (a file in the model "
                f"folder); got {weights_name!r}"
            )
        weights_file = path / weights_name
        if not weights_file.is_file():
            raise NotAnEncoderError(f"{path} is missing its weights file {weights_name}")
        _refuse_link_out(weights_file, path)  # as KLStore.load: a link may not lead out of the folder
        if not any((path / name).is_file() for name in _TOKENIZER_FILES):
            raise NotAnEncoderError(
                f"{path} has no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)}); "
                "copy the whole folder that save_pretrained wrote"
            )
        for name in (*_TOKENIZER_FILES, *_TOKENIZER_SIDE_FILES):  # the tokenizer's files, as the weights
            if (path / name).is_file():
                _refuse_link_out(path / name, path)
        _check_tokenizer_sha256(meta, cfg_file, path)  # before loading: an edited file is named, not misread
        tokenizer = _load_tokenizer(path)
        state = _read_weights(weights_file)
        if weights_name == FULL_WEIGHTS:
            backbone_config = meta.get("backbone_config")
            if not isinstance(backbone_config, dict):
                raise NotAnEncoderError(f"{cfg_file}: field 'backbone_config' is missing or not an object")
            _check_layer_counts(cfg_file, backbone_config, weights_file, len(state))
            # The model's tensor names and shapes first, built on the meta device (nothing is allocated): a
            # config.json claiming a far larger model than its weights file holds is refused before it is built.
            with torch.device("meta"):
                try:
                    skeleton = cls(_backbone_from_config(backbone_config), tokenizer, config)
                except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as exc:
                    raise NotAnEncoderError(f"{cfg_file}: field 'backbone_config' is invalid: {exc}") from None
            _check_full_state(weights_file, state, skeleton.state_dict())
            enc = cls(_backbone_from_config(backbone_config), tokenizer, config, name_or_path=reference)
            enc.load_state_dict(
                state, strict=False
            )  # the names were checked: only position_ids may be missing or extra
        else:
            enc = cls._from_delta(path, tokenizer, config, state, reference)
        if meta.get("var_token_id") != enc.var_token_id:
            raise NotAnEncoderError(
                f"{path}: the tokenizer maps {VAR_TOKEN} to {enc.var_token_id}, config says {meta.get('var_token_id')}"
            )
        # Last, so that a file edited into another shape keeps the message naming the tensor.
        _check_weights_sha256(meta, cfg_file, weights_file)
        if device is not None:
            enc.to(_pick_device(device))
        enc.eval()
        enc._remember_weights(saved_weights_sha256(meta, path))
        return enc

    @classmethod
    def _from_delta(
        cls,
        path: Path,
        tokenizer: Any,
        config: GaussianEncoderConfig,
        state: dict[str, torch.Tensor],
        name_or_path: str | os.PathLike[str],
    ) -> GaussianEncoder:
        try:
            base_path = resolve_model_path(config.backbone)
        except (OSError, ValueError, ImportError) as exc:  # not found, or a rebuilt copy (bge) that cannot be made
            message = (
                f"{path} stores only the weights that differ from its backbone {config.backbone!r} "
                f"({CONFIG_NAME} encoder.backbone), and that backbone cannot be found: {exc}"
            )
            raise retyped(exc, message) from exc.__cause__
        _check_backbone_pin(path, config, base_path)
        backbone = _load_backbone(base_path)
        enc = cls(backbone, tokenizer, config, name_or_path=os.fspath(name_or_path))
        var_row = state.pop(_VAR_ROW, None)
        lora = _pop_lora_factors(state, f"{path}/{DELTA_WEIGHTS}")
        own = enc.state_dict()
        unknown = [k for k in [*state, *lora] if k not in own]
        if unknown:
            raise NotAnEncoderError(f"{path}/{DELTA_WEIGHTS} has tensors this encoder lacks: {unknown[:5]}")
        required = [f"{head}.{part}" for head in ("mean_head", "var_head") for part in ("weight", "bias")]
        missing = [k for k in required if k not in state]
        emb_param = enc.backbone.get_input_embeddings().weight
        emb_key = next("backbone." + n for n, p in enc.backbone.named_parameters() if p is emb_param)
        if enc.var_token_id is not None and var_row is None and emb_key not in state:
            missing.append(_VAR_ROW)
        if missing:
            raise NotAnEncoderError(
                f"{path}/{DELTA_WEIGHTS} is missing tensors every saved encoder has: {', '.join(missing)}"
            )
        _check_shapes(path / DELTA_WEIGHTS, state, own)
        if var_row is not None and enc.var_token_id is not None and tuple(var_row.shape) != (1, emb_param.shape[1]):
            raise NotAnEncoderError(
                f"{path}/{DELTA_WEIGHTS}: tensor {_VAR_ROW} has shape {tuple(var_row.shape)}, "
                f"the backbone expects {(1, emb_param.shape[1])}"
            )
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)
            for key, (a, b, scaling) in lora.items():
                if (b.shape[0], a.shape[1]) != tuple(own[key].shape) or a.shape[0] != b.shape[1]:
                    raise NotAnEncoderError(
                        f"{path}/{DELTA_WEIGHTS}: LoRA factors {tuple(b.shape)} @ {tuple(a.shape)} "
                        f"do not fit {key} {tuple(own[key].shape)}"
                    )
                own[key].copy_(_lora_merged(own[key], a, b, scaling))
            if var_row is not None and enc.var_token_id is not None:
                enc.backbone.get_input_embeddings().weight[enc.var_token_id] = var_row[0]
        return enc

    def __repr__(self) -> str:
        c = self.config
        return (
            f"GaussianEncoder(name_or_path={self.name_or_path!r}, dim={c.dim}, beta={c.beta}, pooling={c.pooling!r}, "
            f"var_token={c.var_token}, backbone={c.backbone!r})"
        )


def _model_reference(name_or_path: object) -> str:
    """``name_or_path`` as a str (``os.fspath`` of a path); ``TypeError`` for anything else.

    Examples:
        >>> _model_reference(Path("models") / "enc")
        'models/enc'
    """
    if isinstance(name_or_path, (str, os.PathLike)):
        text = os.fspath(name_or_path)
        if isinstance(text, str):
            return text
    raise TypeError(f"name_or_path must be a str or a path; got {type(name_or_path).__name__}")


def save_safetensors(
    tensors: dict[str, torch.Tensor], file: Path, *, saving: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' ``save_file``, a failed write raised as an ``OSError`` that names ``saving`` and ``file``.

    safetensors raises its own ``SafetensorError`` (no ``OSError``) when the write fails, e.g. ``Error while
    serializing: I/O error: No space left on device (os error 28)`` on a full disk, which callers (the CLI) would
    take for a bug. The ``OSError`` carries the error number the message gives (``errno.ENOSPC`` there).

    Args:
        tensors: What to save.
        file: The file to write (inside the temporary copy of a save).
        saving: What is being saved (the folder the user named), for the message.
        metadata: safetensors' text metadata.

    Raises:
        OSError: The write failed.
    """
    try:
        save_file(tensors, os.fspath(file), metadata=metadata)
    except SafetensorError as exc:
        raise safetensors_write_error(exc, file, saving) from exc


def _read_weights(weights_file: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a damaged file is a :class:`NotAnEncoderError` naming it."""
    try:
        return load_file(os.fspath(weights_file))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise NotAnEncoderError(f"{weights_file} is damaged or not a safetensors file: {exc}") from None


def _check_shapes(weights_file: Path, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Refuse a saved tensor whose shape differs from the encoder's, naming the key and both shapes."""
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            if key.startswith(("mean_head.", "var_head.")):
                field_hint = f"{CONFIG_NAME} encoder.dim and backbone_config.hidden_size"
            else:
                field_hint = f"{CONFIG_NAME} backbone_config (hidden_size, vocab_size, ...) or the backbone"
            raise NotAnEncoderError(
                f"{weights_file}: tensor {key} has shape {tuple(value.shape)}, but the model built from "
                f"{field_hint} expects {tuple(own[key].shape)}; the folder was changed after it was saved"
            )


def _check_full_state(weights_file: Path, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Refuse a full weights file whose tensors are not the encoder's: a shape (:func:`_check_shapes`), or a
    tensor missing or unexpected. A ``position_ids`` buffer may be missing, or present where the encoder has none
    (earlier transformers saved it): then it must hold the positions ``0, 1, 2, ...`` (:func:`_default_position_ids`),
    and loading leaves it out."""
    _check_shapes(weights_file, state, own)
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    unexpected = [k for k in state if k not in own and not _default_position_ids(k, state[k])]
    if missing or unexpected:
        raise NotAnEncoderError(
            f"{weights_file} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _default_position_ids(key: str, tensor: torch.Tensor) -> bool:
    """Whether ``key`` is an embeddings' ``position_ids`` buffer holding the positions ``0, 1, 2, ...`` (in rows).

    Examples:
        >>> _default_position_ids("backbone.embeddings.position_ids", torch.arange(4).unsqueeze(0))
        True
        >>> _default_position_ids("backbone.embeddings.position_ids", torch.tensor([[0, 2, 1]]))
        False
    """
    if not key.endswith("embeddings.position_ids") or tensor.is_floating_point() or tensor.dim() not in (1, 2):
        return False
    if tensor.dtype == torch.bool or tensor.numel() == 0:
        return False
    return bool(torch.equal(tensor, torch.arange(tensor.shape[-1], dtype=tensor.dtype).expand_as(tensor)))


#: The fields of a transformers config that count layers (``num_hidden_layers``, ``n_layer``, ``num_layers``,
#: ``encoder_layers``, ...).
_LAYER_COUNT_FIELD = re.compile(r"(?:^|_)layers?$")


def _check_layer_counts(cfg_file: Path, backbone_config: dict[str, Any], weights_file: Path, tensors: int) -> None:
    """Refuse a ``backbone_config`` that counts more layers than the weights file holds tensors.

    Every layer has weights of its own, so a full save holds at least one tensor per layer; a larger count (a
    config.json edited to claim a million layers) would build that many modules, even on the meta device.

    Examples:
        >>> _check_layer_counts(Path("config.json"), {"num_hidden_layers": 2}, Path("model.safetensors"), 40)
        >>> _check_layer_counts(Path("config.json"), {"n_layer": 10**6}, Path("model.safetensors"), 40)
        Traceback (most recent call last):
        kl_retrievers._config.NotAnEncoderError: config.json: field 'backbone_config' counts 1000000 layers ...
    """
    for key, value in backbone_config.items():
        if _LAYER_COUNT_FIELD.search(key) and type(value) is int and value > tensors:  # a bool is not a count
            raise NotAnEncoderError(
                f"{cfg_file}: field 'backbone_config' counts {value} layers ({key}), but {weights_file} holds only "
                f"{tensors} tensors (every layer has weights of its own): the folder was changed after it was saved"
            )


def _plain_backbone_key(key: str) -> str:
    """``backbone.base_model.model.X.base_layer.weight`` (peft-wrapped) -> ``backbone.X.weight``."""
    if key.startswith("backbone.base_model.model."):
        key = "backbone." + key[len("backbone.base_model.model.") :]
    return key.replace(".base_layer.", ".")


def _lora_merged(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``W + (B @ A) * scaling``, computed as peft's merge does (the same float operations)."""
    return weight + (b.to(weight.dtype) @ a.to(weight.dtype)) * scaling


def _pop_lora_factors(
    state: dict[str, torch.Tensor], where: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Remove ``<key>.lora_A/.lora_B/.lora_scaling`` triples from ``state`` and group them by weight key."""
    keys = {k[: -len(sfx)] for k in state for sfx in (_LORA_A, _LORA_B, _LORA_SCALING) if k.endswith(sfx)}
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key in sorted(keys):
        a, b, scaling = (state.pop(key + sfx, None) for sfx in (_LORA_A, _LORA_B, _LORA_SCALING))
        if a is None or b is None or scaling is None or a.ndim != 2 or b.ndim != 2 or scaling.numel() != 1:
            raise NotAnEncoderError(
                f"{where}: {key} needs 2-D {_LORA_A} and {_LORA_B} factors and a one-element {_LORA_SCALING}"
            )
        out[key] = (a, b, float(scaling.item()))
    return out
