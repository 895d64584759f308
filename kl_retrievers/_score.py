"""The score a saved file records, checked when it is loaded: one shared check for every saved format.

This library serves one score, ``-KL(Q || D)`` (:data:`~kl_retrievers.gaussian.SCORE_NAME`, ``"neg_kl"``), and
higher is better (:data:`~kl_retrievers.gaussian.SCORE_DIRECTION`); a vector twin's encoder serves its own
similarity (``"dot"`` or ``"cosine"``) and a hybrid store its fused score. Every saved format records the score
it serves: a ``KLStore``'s ``config.json`` (``score_name``, ``score_direction``), the LangChain and LlamaIndex
manifests (the same two fields), and a hybrid store's ``hybrid.json``, a saved encoder's or ONNX export's
``config.json``, saved Gaussians and an encoded-shards ``manifest.json`` (a ``score`` object with ``name``
and ``direction``). A load that finds another name or direction refuses the file (an edited file, or one
another program wrote): the error names the field, the value found and the score this library serves, in one
wording for every format (:func:`check_score_fields` words them all). A field that is absent passes: older
releases did not write every one of them (kl-retrievers 0.1.0's LangChain manifest has no
``score_direction``); a ``KLStore``'s ``config.json`` has always recorded both, and is refused without either
(``required=True``).

Examples:
    >>> check_score({"score": {"name": "neg_kl", "direction": "higher_is_better"}}, "x.json")
    >>> check_score({}, "x.json")  # saved before the field was written
    >>> check_score({"score": {"name": "neg_kl", "direction": "lower_is_better"}}, "x.json")
    Traceback (most recent call last):
    ValueError: x.json: field 'score.direction' is 'lower_is_better'; this library serves 'neg_kl' ('higher_is_better')
    >>> check_score_fields({"score_name": "cosine"}, "m.json")
    Traceback (most recent call last):
    ValueError: m.json: field 'score_name' is 'cosine'; this library serves 'neg_kl' ('higher_is_better')
    >>> check_score_fields({"score_name": "neg_kl"}, "config.json", required=True)
    Traceback (most recent call last):
    ValueError: config.json: field 'score_direction' is missing; this library serves 'neg_kl' ('higher_is_better')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["check_score", "check_score_fields"]


def check_score_fields(
    record: Mapping[str, Any],
    where: object,
    *,
    keys: tuple[str, str] = ("score_name", "score_direction"),
    prefix: str = "",
    name: str | None = None,
    direction: str | None = None,
    error: Callable[[str], Exception] = ValueError,
    note: str = "",
    required: bool = False,
) -> None:
    """Refuse a score name or direction in ``record`` other than ``name`` and ``direction``.

    Absent keys pass unless ``required``: every score refusal of every saved format is worded here.

    Args:
        record: The saved JSON object holding the two fields.
        where: The file, as messages name it.
        keys: The keys of the name and the direction in ``record``.
        prefix: Put before a key to name the field (``"score."`` for a nested ``score`` object).
        name: The score name the loading code serves (default ``SCORE_NAME``).
        direction: Its direction (default ``SCORE_DIRECTION``).
        error: The exception class (or factory) to raise, given the message.
        note: Appended to the message (e.g. what the served name depends on).
        required: Refuse a record that lacks either key (a format that has always written both).

    Raises:
        Exception: (``error``) a recorded name or direction differs from the served one, or (``required``)
            one is absent.
    """
    if name is None or direction is None:  # imported here: gaussian imports numpy, and the CLI's --help must not
        from kl_retrievers.gaussian import SCORE_DIRECTION, SCORE_NAME

        name = SCORE_NAME if name is None else name
        direction = SCORE_DIRECTION if direction is None else direction
    for key, served in zip(keys, (name, direction), strict=True):
        if key in record:
            if record[key] == served:
                continue
            found = repr(record[key])
        elif required:
            found = "missing"
        else:  # saved before the field was written
            continue
        raise error(f"{where}: field {prefix + key!r} is {found}; this library serves {name!r} ({direction!r}){note}")


def check_score(
    config: Mapping[str, Any],
    where: object,
    *,
    field: str = "score",
    name: str | None = None,
    direction: str | None = None,
    error: Callable[[str], Exception] = ValueError,
    note: str = "",
) -> None:
    """Refuse the ``score`` object of a saved config (``{"name": ..., "direction": ...}``) when it is another score.

    ``field`` may be a dotted path (``"score.components.dense"``): a part that is absent passes (a file saved
    before it was written); a part that is not a JSON object is refused.

    Args:
        config: The saved JSON object.
        where: The file, as messages name it.
        field: Where the score object is in ``config``.
        name: The score name the loading code serves (default ``SCORE_NAME``).
        direction: Its direction (default ``SCORE_DIRECTION``).
        error: The exception class (or factory) to raise, given the message.
        note: Appended to a mismatch's message.

    Raises:
        Exception: (``error``) a part of ``field`` is not an object, or the name or direction differs.
    """
    block: Any = config
    done: list[str] = []
    for part in field.split("."):
        if part not in block:
            return
        block = block[part]
        done.append(part)
        if not isinstance(block, Mapping):
            raise error(f"{where}: field {'.'.join(done)!r} must be a JSON object; got {block!r:.80}")
    check_score_fields(
        block,
        where,
        keys=("name", "direction"),
        prefix=field + ".",
        name=name,
        direction=direction,
        error=error,
        note=note,
    )
