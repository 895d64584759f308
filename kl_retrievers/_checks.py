"""Argument checks shared by every layer of the package, the lowest ones included (``gaussian``, ``_io``).

Imports only the standard library (numpy is not imported: its bool is recognised by its type's name), so any
module of the package may use it without an import cycle.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_bool"]


def check_bool(value: Any, name: str, *, allow_none: bool = False) -> None:
    """Refuse a flag that is not a ``bool`` (or numpy's), e.g. the string ``"no"``, which is true in an ``if``.

    Args:
        value: The flag given.
        name: The argument's name, as the message shows it.
        allow_none: Also accept ``None`` (an option whose default is decided later).

    Raises:
        TypeError: ``value`` is not a bool (nor ``None`` with ``allow_none``); the message names it.

    Examples:
        >>> check_bool(False, "overwrite")
        >>> check_bool("no", "overwrite")
        Traceback (most recent call last):
        TypeError: overwrite must be a bool; got 'no'
    """
    if (value is None and allow_none) or isinstance(value, bool):
        return
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # numpy's, not imported
        return
    raise TypeError(f"{name} must be {'a bool or None' if allow_none else 'a bool'}; got {value!r:.80}")
