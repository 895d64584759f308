"""What defines a saved Gaussian encoder apart from its weights: :class:`GaussianEncoderConfig`, its checks, and
:class:`NotAnEncoderError`. Nothing here imports torch, so the core install can name, catch and build them.

:mod:`kl_retrievers.encoder` (torch) re-exports both classes: ``kl_retrievers.encoder.NotAnEncoderError`` is
this module's class, so ``except`` clauses, ``isinstance`` and pickles work whichever module names it.

Examples:
    >>> GaussianEncoderConfig(dim=8).query_max_length
    64
    >>> issubclass(NotAnEncoderError, ValueError)
    True
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from kl_retrievers._errors import KLRetrieversError, NothingSavedError
from kl_retrievers._io import describe_kl_folder, describe_saved_meta, not_this_kind_error, read_json_object
from kl_retrievers._score import check_score

__all__ = [
    "CONFIG_NAME",
    "SIMILARITIES",
    "TOKENIZER_FILES",
    "TOKENIZER_SHA256",
    "TOKENIZER_SIDE_FILES",
    "WEIGHTS_IDENTITY",
    "WEIGHTS_SHA256",
    "GaussianEncoderConfig",
    "Pooling",
    "Similarity",
    "NotAnEncoderError",
    "check_saved_score",
    "describe_saved_folder",
    "describe_saved_meta",
    "encoder_config",
    "check_tokenizer_sha256",
    "check_weights_sha256",
    "is_saved_encoder",
    "model_similarity",
    "read_encoder_meta",
    "refused_remote_code",
    "remote_code_refusal",
    "saved_weights_sha256",
]

#: The JSON file of a saved encoder folder (``save_pretrained``).
CONFIG_NAME = "config.json"
#: Field of a saved encoder's ``config.json``: weights file name -> its SHA-256 (checked on load when present).
WEIGHTS_SHA256 = "weights_sha256"
#: Field of a saved encoder's ``config.json``: the SHA-256 identifying its weights (``encoder.weights_sha256``).
#: The weights file's own SHA-256 when first saved; a re-save of weights unchanged since they were loaded (a
#: full copy of a delta folder, a delta copy of a full one) keeps the identity of the folder they came from.
WEIGHTS_IDENTITY = "weights_identity"
#: Field of a saved encoder's ``config.json`` (and an ONNX export's): tokenizer file name -> its SHA-256, checked
#: on load when present (folders saved before it was recorded load unchecked).
TOKENIZER_SHA256 = "tokenizer_sha256"
#: Files of which a saved folder must hold at least one for its tokenizer to load (transformers' vocabulary files).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
#: Further files a tokenizer save writes (beside one of :data:`TOKENIZER_FILES`) that change its token ids.
#: A folder whose ``config.json`` records its tokenizer files refuses any of these two lists it holds but does
#: not record; a save's ``extra_files`` never takes these names.
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
#: Token pooling of an encoder (:attr:`GaussianEncoderConfig.pooling`); the runtime check reads its values.
Pooling = Literal["cls", "mean"]
_POOLINGS: tuple[Pooling, ...] = get_args(Pooling)

logger = logging.getLogger(__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class NotAnEncoderError(KLRetrieversError, ValueError):
    """A folder that is not a saved :class:`~kl_retrievers.encoder.GaussianEncoder`."""


class _NoEncoderSavedError(NothingSavedError, NotAnEncoderError):
    """A folder without a saved encoder's ``config.json`` that no other kind kl_retrievers saves names as its own."""


@dataclass
class GaussianEncoderConfig:
    """Everything that defines a :class:`~kl_retrievers.encoder.GaussianEncoder` apart from its weights.

    Attributes:
        dim: Output dimension ``k`` of the mean and the variance.
        beta: Sharpness of the softplus that makes variances positive.
        pooling: ``"cls"`` (the paper) or ``"mean"`` (masked mean of token states).
        var_token: Insert the ``[VAR]`` token and read the variance from its state; when
            ``False`` the variance head reads the pooled representation.
        var_floor: Smallest variance the head can output (keeps logs finite).
        normalize_pooled: L2-normalise the pooled representation before the mean head.
        max_length: Token budget for documents (texts beyond it are truncated).
        query_max_length: Token budget for queries.
        backbone: Hub id or path of the backbone the encoder was started from.
        backbone_sha256: SHA-256 of that backbone's weights, when known.
        extra: Other settings, kept as they are; ``extra["query_prefix"]`` (a str) is put before
            every query by ``encode_queries`` (bge's instruction, for example).
    """

    dim: int
    beta: float = 1.0
    pooling: Pooling = "cls"
    var_token: bool = True
    var_floor: float = 1e-6
    normalize_pooled: bool = False
    max_length: int = 256
    query_max_length: int = 64
    backbone: str = ""
    backbone_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _is_int(self.dim) or self.dim < 1:
            raise ValueError(f"dim must be a positive int; got {self.dim!r}")
        if not (_is_number(self.beta) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0; got {self.beta!r}")
        for name in ("beta", "var_floor"):  # e.g. a numpy float: made JSON-ready (a Python int or float is kept)
            value = getattr(self, name)
            if _is_number(value) and not isinstance(value, (int, float)):
                setattr(self, name, float(value))
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}; got {self.pooling!r}")
        if not (_is_number(self.var_floor) and math.isfinite(self.var_floor) and self.var_floor > 0):
            raise ValueError(f"var_floor must be a finite number > 0; got {self.var_floor!r}")
        for name in ("max_length", "query_max_length"):
            value = getattr(self, name)
            if not _is_int(value) or value < 3:
                raise ValueError(f"{name} must be an int >= 3; got {value!r}")
        for name in ("var_token", "normalize_pooled"):
            # A JSON string such as "false" is truthy: taking it as a flag would build another model.
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        if not isinstance(self.backbone, str):
            raise ValueError(f"backbone must be a str; got {self.backbone!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a dict; got {self.extra!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GaussianEncoderConfig:
        """Build from :meth:`to_dict` output; unknown keys are kept in ``extra``."""
        known = {f.name for f in fields(cls)}
        extra = {k: v for k, v in data.items() if k not in known}
        kwargs = {k: v for k, v in data.items() if k in known}
        if extra:
            kwargs["extra"] = {**kwargs.get("extra", {}), **extra}
        return cls(**kwargs)


def is_saved_encoder(folder: Path) -> bool:
    """Whether ``folder`` holds the ``config.json`` of a GaussianEncoder saved by kl_retrievers (a save may replace it).

    Examples:
        >>> import tempfile
        >>> is_saved_encoder(Path(tempfile.mkdtemp()))
        False
    """
    try:
        read_encoder_meta(folder)
    except (NotAnEncoderError, OSError):
        return False
    return True


def read_encoder_meta(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a saved encoder folder; :class:`NotAnEncoderError` naming the folder when it is not one.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text("{}")
        >>> read_encoder_meta(folder)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        NotAnEncoderError: ... is not a saved GaussianEncoder (its config.json was not written by kl_retrievers); ...
    """
    cfg_file = path / CONFIG_NAME
    if cfg_file.exists() and not cfg_file.is_file():  # a named pipe would block the read: never opened
        raise NotAnEncoderError(f"{cfg_file} is not a regular file (a folder, named pipe, device or socket)")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise not_this_kind_error(
            path, "a saved GaussianEncoder", CONFIG_NAME, other_kind=NotAnEncoderError, nothing=_NoEncoderSavedError
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotAnEncoderError(f"{cfg_file} is not valid JSON: {exc}") from None
    except (RecursionError, MemoryError) as exc:  # nested too deep (or too large) for the JSON parser
        raise NotAnEncoderError(f"{cfg_file} is not a JSON file kl_retrievers wrote: {type(exc).__name__}") from None
    if not isinstance(meta, dict) or meta.get("library") != "kl_retrievers" or "encoder" not in meta:
        missing = _missing_onnx_graph(path, meta)
        if missing is not None:
            raise NotAnEncoderError(missing)
        other = describe_saved_meta(meta) if isinstance(meta, dict) else None
        if other is not None:
            raise NotAnEncoderError(f"{path} is not a saved GaussianEncoder: it is {other}")
        raise NotAnEncoderError(
            f"{path} is not a saved GaussianEncoder (its {CONFIG_NAME} was not written by kl_retrievers); "
            "to start from a plain encoder use GaussianEncoder.from_backbone"
        )
    return meta


def _missing_onnx_graph(folder: Path, meta: Any) -> str | None:
    """The error for an ONNX export folder (by its ``config.json``) without its ``model.onnx``, else ``None``.

    Examples:
        >>> _missing_onnx_graph(Path("/nonexistent/enc"), {"library": "kl_retrievers", "backend": "onnx"})[:70]
        '/nonexistent/enc/model.onnx is missing (config.json says the folder is'
    """
    if not isinstance(meta, dict) or meta.get("library") != "kl_retrievers" or meta.get("backend") != "onnx":
        return None
    graph = Path(folder) / "model.onnx"
    if graph.is_file():
        return None
    return (
        f"{graph} is missing ({CONFIG_NAME} says the folder is an ONNX export): copy the whole export folder, or "
        "export the model again (python -m kl_retrievers.onnx_cli)"
    )


def describe_saved_folder(folder: Path) -> str | None:
    """What ``folder`` is by the file kl_retrievers wrote in it (:func:`~kl_retrievers._io.describe_kl_folder`).

    ``None`` without one: a missing, unreadable, non-JSON or non-object ``config.json`` (or other marker file) is
    ``None`` too (:func:`read_json_object`), and so is one that is not a regular file (a named pipe is never opened:
    its read would block). An ONNX export whose ``model.onnx`` is missing is named as such.
    """
    meta = read_json_object(Path(folder) / CONFIG_NAME)
    if meta is not None and _missing_onnx_graph(Path(folder), meta) is not None:
        return f"an ONNX export of a Gaussian encoder whose {Path(folder) / 'model.onnx'} is missing"
    return describe_kl_folder(folder)


#: The JSON files of a model folder in which transformers looks for ``auto_map`` (classes defined by the folder's code).
_AUTO_MAP_FILES = ("tokenizer_config.json", CONFIG_NAME)


def _code_places(refs: list[str]) -> str:
    """Where ``auto_map`` references (``module.Class`` or ``org/repo--module.Class``) put their code, for a message.

    A plain reference is a ``.py`` file of the folder itself; one with ``--`` is a file of another hub repository
    (the part before ``--``). Up to four references are shown, grouped by place in their order.

    Examples:
        >>> _code_places(["tok.Tok", "org/impl--modeling.Model"])
        'in the folder (tok.py: tok.Tok) and in the hub repository org/impl (modeling.py: modeling.Model)'
    """
    places: dict[str, list[str]] = {}
    for ref in refs[:4]:
        repo, sep, code = ref.rpartition("--")
        place = f"in the hub repository {repo}" if sep else "in the folder"
        places.setdefault(place, []).append(f"{code.rsplit('.', 1)[0]}.py: {code}")
    return " and ".join(f"{place} ({', '.join(shown)})" for place, shown in places.items())


def refused_remote_code(folder: str | Path, exc: BaseException) -> str | None:
    """The message naming ``folder``'s ``auto_map`` (:func:`remote_code_refusal`) when ``exc`` is transformers
    refusing to run remote code, else ``None``: the original error stands (a harmless ``auto_map`` beside a missing
    weights file is not the cause).

    Examples:
        >>> refused_remote_code(Path("/nonexistent"), OSError("no file named model.safetensors")) is None
        True
    """
    text = str(exc)
    if "trust_remote_code" not in text and "custom code" not in text:
        return None
    return remote_code_refusal(folder)


def remote_code_refusal(folder: str | Path) -> str | None:
    """Why transformers refuses ``folder``: its ``auto_map`` names Python code (``None``: no ``auto_map``).

    A ``tokenizer_config.json`` or ``config.json`` (a saved encoder's ``backbone_config`` too) with an
    ``auto_map`` asks transformers to import the folder's own ``.py`` files; kl_retrievers loads every model with
    ``trust_remote_code=False``, so such a folder is refused (never run, never asked about), and this message says
    which file and code (a reference ``org/repo--module.Class`` names code in another hub repository).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "tokenizer_config.json").write_text('{"auto_map": {"AutoTokenizer": [null, "tok.Tok"]}}')
        >>> remote_code_refusal(folder)  # doctest: +ELLIPSIS
        "...tokenizer_config.json: field 'auto_map' names Python code in the folder (tok.py: tok.Tok); ..."
    """
    for name in _AUTO_MAP_FILES:
        file = Path(folder) / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError, MemoryError):
            continue  # the loader's own error names a file that cannot be read
        if not isinstance(data, dict):
            continue
        for field_name, holder in (("auto_map", data), ("backbone_config.auto_map", data.get("backbone_config"))):
            auto_map = holder.get("auto_map") if isinstance(holder, dict) else None
            if not auto_map:
                continue
            values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
            refs = [
                ref
                for value in values
                for ref in (value if isinstance(value, list) else [value])
                if isinstance(ref, str) and ref
            ]
            where = _code_places(refs) or f"in the folder ({repr(auto_map)[:120]})"
            return (
                f"{file}: field {field_name!r} names Python code {where}; "
                "kl_retrievers never runs a model folder's code (it loads models with trust_remote_code=False): "
                "use a model whose classes transformers ships, or remove 'auto_map' if the folder does not need it"
            )
    return None


def encoder_config(meta: dict[str, Any], cfg_file: Path) -> GaussianEncoderConfig:
    """The :class:`GaussianEncoderConfig` in a saved encoder's ``config.json`` (``meta``, read from ``cfg_file``).

    Raises:
        NotAnEncoderError: Its ``encoder`` field is not an object or not a valid config, or its ``score`` is not the
            model's (:func:`check_saved_score`); the message names the file.
    """
    if not isinstance(meta["encoder"], dict):
        raise NotAnEncoderError(f"{cfg_file}: field 'encoder' must be an object; got {type(meta['encoder']).__name__}")
    try:
        config = GaussianEncoderConfig.from_dict(meta["encoder"])
    except (TypeError, ValueError) as exc:
        raise NotAnEncoderError(f"{cfg_file}: field 'encoder' is invalid: {exc}") from None
    check_saved_score(meta, cfg_file, NotAnEncoderError)
    return config


def check_saved_score(meta: Mapping[str, Any], cfg_file: Path, error: Callable[[str], Exception]) -> None:
    """Refuse a saved encoder's or ONNX export's ``config.json`` whose ``score`` is not the model's (when recorded).

    The model's score is ``neg_kl``, or a vector twin's similarity (``dot`` / ``cosine``: its training recipe's,
    :func:`model_similarity`); the direction is ``higher_is_better``. The recipe is the one in ``encoder.extra``
    (a saved encoder) or ``onnx.encoder.extra`` (an ONNX export). A twin recorded as ``neg_kl`` loads: releases
    before 0.2.0 recorded that name for every model (the recipe decides what it serves). :func:`encoder_config`
    calls it.

    Raises:
        Exception: (``error``) ``score.name`` or ``score.direction`` is another score; the message names the file.

    Examples:
        >>> check_saved_score({"score": {"name": "dot"}}, Path("config.json"), ValueError)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: config.json: field 'score.name' is 'dot'; this library serves 'neg_kl' ('higher_is_better') ...
    """
    source = meta.get("encoder")
    onnx = meta.get("onnx")
    if not isinstance(source, Mapping) and isinstance(onnx, Mapping):
        source = onnx.get("encoder")
    extra = source.get("extra") if isinstance(source, Mapping) else None
    similarity = _recipe_similarity(extra)
    score = meta.get("score")
    if isinstance(score, Mapping) and score.get("name") == "neg_kl":
        similarity = "neg_kl"  # releases before 0.2.0 recorded neg_kl for every model, a vector twin's too
    note = " for this model (the similarity of its training recipe)"
    check_score(meta, cfg_file, name=similarity, error=error, note=note)


def check_weights_sha256(meta: dict[str, Any], cfg_file: Path, weights_file: Path) -> None:
    """Refuse a weights file whose SHA-256 differs from the one ``config.json`` records (when it records one).

    Used by both backends (:class:`~kl_retrievers.encoder.GaussianEncoder` and
    :class:`~kl_retrievers.onnx_heads.OnnxHeadsGaussianEncoder`).

    Raises:
        NotAnEncoderError: The field is malformed, or the file's SHA-256 differs; the message names both files.
    """
    from kl_retrievers.hub import cached_sha256

    recorded = meta.get(WEIGHTS_SHA256)
    if recorded is None:
        return  # saved before checksums were recorded
    expected = recorded.get(weights_file.name) if isinstance(recorded, dict) else None
    if not isinstance(expected, str):
        raise NotAnEncoderError(
            f"{cfg_file}: field {WEIGHTS_SHA256!r} must map {weights_file.name} to its SHA-256; got {recorded!r:.120}"
        )
    actual = cached_sha256(weights_file)
    if actual != expected:
        raise NotAnEncoderError(
            f"{weights_file} is damaged or was changed after it was saved: its SHA-256 is {actual}, but "
            f"{cfg_file.name} records {expected}; restore the folder or save the encoder again"
        )


def check_tokenizer_sha256(
    meta: dict[str, Any], cfg_file: Path, folder: Path, error: type[Exception] | None = None
) -> None:
    """Refuse tokenizer files whose SHA-256 differs from the one ``config.json`` records (when it records them).

    A tokenizer edited after the save (two vocabulary entries swapped, a lower-casing flag flipped) loads
    without error and gives other outputs; the record (``tokenizer_sha256``: file name -> SHA-256, written by
    both backends' saves) makes it a refusal. A tokenizer file added after the save (one of
    :data:`TOKENIZER_FILES` or :data:`TOKENIZER_SIDE_FILES` present but not recorded, e.g. an
    ``added_tokens.json`` or ``special_tokens_map.json`` copied in) changes the token ids just as silently and
    is refused too. Folders saved before it was recorded are not checked.

    Args:
        meta: The folder's ``config.json``, as read.
        cfg_file: That file (for messages).
        folder: The folder holding the tokenizer files.
        error: The exception type to raise (default :class:`NotAnEncoderError`; the ONNX backend passes its own).

    Raises:
        NotAnEncoderError: The field is malformed, a recorded file is missing or has another SHA-256 (the
            message names the file, the recorded and the actual SHA-256), or a known tokenizer file that is not
            recorded is present (the message names it).

    Examples:
        >>> check_tokenizer_sha256({}, Path("/nonexistent/config.json"), Path("/nonexistent"))  # not recorded
    """
    from kl_retrievers.hub import sha256_file

    kind = error or NotAnEncoderError
    recorded = meta.get(TOKENIZER_SHA256)
    if recorded is None:
        return  # saved before tokenizer checksums were recorded
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and Path(k).name == k and k not in ("", ".", "..") and isinstance(v, str)
        for k, v in recorded.items()
    ):
        raise kind(f"{cfg_file}: field {TOKENIZER_SHA256!r} must map file names to SHA-256s; got {recorded!r:.120}")
    for name, expected in sorted(recorded.items()):
        file = Path(folder) / name
        if file.exists() and not file.is_file():  # a named pipe would block the read: never opened
            raise kind(f"{file} is not a regular file (a folder, named pipe, device or socket)")
        try:
            actual = sha256_file(file)
        except FileNotFoundError:
            raise kind(
                f"{file} is missing: {cfg_file.name} records its SHA-256 {expected} ({TOKENIZER_SHA256}); copy the "
                "whole folder that was saved"
            ) from None
        except OSError as exc:
            raise kind(f"{file} cannot be read: {exc}") from None
        if actual != expected.lower():
            raise kind(
                f"{file} is damaged or was changed after it was saved: its SHA-256 is {actual}, but {cfg_file.name} "
                f"records {expected} ({TOKENIZER_SHA256}); restore the folder or save the encoder again"
            )
    for name in (*TOKENIZER_FILES, *TOKENIZER_SIDE_FILES):
        file = Path(folder) / name
        if name not in recorded and file.is_file():  # what transformers reads (os.path.isfile)
            raise kind(
                f"{file} was added after the save: {cfg_file.name} records the tokenizer files "
                f"{', '.join(sorted(recorded)) or '(none)'} ({TOKENIZER_SHA256}), and a tokenizer file it does not "
                "record can change the token ids; remove it, or save the encoder again with the tokenizer you want"
            )


def saved_weights_sha256(meta: dict[str, Any], folder: Path) -> str | None:
    """The SHA-256 identifying a saved encoder's weights (``config.json`` ``weights_identity``, else its file's).

    ``weights_identity`` when ``config.json`` records it (every save since it was added: the SHA-256 of the
    weights file the weights were first saved to, kept by re-saves of unchanged weights in another form), else
    the SHA-256 of the weights file (``weights``): the one ``config.json`` records (``weights_sha256``), else the
    file's own (hashed once, then cached per path, size and modification time; folders saved before either was
    recorded, the bundled models). Both backends report it (``encoder.weights_sha256``), and an ONNX export
    records its source's, so a store can tell whether the model it was indexed with changed since.

    Args:
        meta: The folder's ``config.json``, as read.
        folder: The saved encoder's folder.

    A ``weights_identity`` in upper case is taken in lower case. Any other value that is not a SHA-256 (64 hex
    digits) logs a warning naming the file, the field and the value, and is ignored (the weights file's SHA-256
    is used): it only feeds the store's warning, so it does not make the model unloadable.

    Returns:
        The hex digest (lower case), or ``None`` when the weights file is missing or its name is not a plain
        file name.

    Examples:
        >>> saved_weights_sha256({"weights": "model.safetensors"}, Path("/nonexistent")) is None
        True
        >>> saved_weights_sha256({"weights_identity": "AB" * 32}, Path("/nonexistent"))[:8]
        'abababab'
    """
    from kl_retrievers.hub import cached_sha256

    identity = meta.get(WEIGHTS_IDENTITY)
    if identity is not None:
        if isinstance(identity, str) and _SHA256_HEX.fullmatch(identity) is not None:
            return identity.lower()
        shown = repr(identity)
        logger.warning(
            "%s: field %r must be a SHA-256 (64 hex digits) or absent; got %s: ignored (the weights file's "
            "SHA-256 identifies the weights instead)",
            Path(folder) / CONFIG_NAME,
            WEIGHTS_IDENTITY,
            shown if len(shown) <= 80 else shown[:77] + "...",
        )
    name = meta.get("weights", "model.safetensors")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        return None
    recorded = meta.get(WEIGHTS_SHA256)
    if isinstance(recorded, dict) and isinstance(recorded.get(name), str):
        return str(recorded[name])
    file = Path(folder) / name
    try:
        return cached_sha256(file) if file.is_file() else None
    except OSError:
        return None


#: Scores a model can be trained for (``kl-retrievers train --similarity``): ``neg_kl``, or a vector twin's
#: (the one definition: :data:`SIMILARITIES` and the runtime checks read it).
Similarity = Literal["neg_kl", "dot", "cosine"]
SIMILARITIES: tuple[Similarity, ...] = get_args(Similarity)


def model_similarity(encoder: Any) -> Similarity:
    """The score a model was trained for: ``"neg_kl"``, or ``"dot"`` / ``"cosine"`` for a vector twin.

    A twin (``kl-retrievers train --similarity dot|cosine``) records its similarity in its training
    recipe (``config.extra["training"]["recipe"]["similarity"]``, which an ONNX export keeps in
    ``config.encoder["extra"]``, so both backends rank a twin alike); its variance head is untrained, and
    ranking it by -KL (unit variances: squared L2 between the means) is not what it was trained for.

    Examples:
        >>> model_similarity(object())
        'neg_kl'
    """
    config = getattr(encoder, "config", None)
    extra = getattr(config, "extra", None)
    source = getattr(config, "encoder", None)  # an ONNX export keeps its source's config (extra included)
    if extra is None and isinstance(source, Mapping):
        extra = source.get("extra")
    return _recipe_similarity(extra)


def _recipe_similarity(extra: Any) -> Similarity:
    """:func:`model_similarity` of a config's ``extra``: its training recipe's similarity, else ``"neg_kl"``."""
    training = extra.get("training") if isinstance(extra, Mapping) else None
    recipe = training.get("recipe") if isinstance(training, Mapping) else None
    similarity = recipe.get("similarity", "neg_kl") if isinstance(recipe, Mapping) else "neg_kl"
    return similarity if similarity in SIMILARITIES else "neg_kl"
