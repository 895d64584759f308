"""Metadata filters for :class:`kl_retrievers.index.KLStore`.

A filter is either a callable ``metadata -> bool`` or a dict in the MongoDB-like syntax
used by langchain-community's FAISS store:

* equality: ``{"lang": "en"}`` (a list value means "one of": ``{"lang": ["en", "de"]}``, and so
  does a 1-D numpy array; a tuple is a value, compared with the list the store keeps for a tuple:
  ``{"pos": (1, 2)}`` matches a document added with ``pos=(1, 2)``, as in langchain-community's FAISS);
* field operators: ``{"year": {"$gte": 2020, "$lt": 2024}}`` with ``$eq``, ``$ne``, ``$in``,
  ``$nin``, ``$gt``, ``$gte``, ``$lt``, ``$lte`` and ``$not`` (``{"year": {"$not": {"$gt": 3}}}``);
  ``$neq`` (langchain-community FAISS's spelling of not-equal) is an alias of ``$ne``;
* logic: ``{"$and": [f1, f2]}``, ``{"$or": [f1, f2]}``, ``{"$not": f}``.

Several keys in one dict are combined with AND.  A missing field never satisfies ``$eq``,
``$in`` or a comparison, and always satisfies ``$ne`` and ``$nin``: a document without the key
does not match ``{"key": None}`` nor ``{"key": {"$in": [None]}}`` (FAISS, which reads a missing
key as ``None``, matches it there).  Comparing values of
incompatible types (``"a" < 1``) is simply false.  An unknown operator raises
``ValueError`` naming the allowed ones, when the filter is compiled (before any search).

Examples:
    >>> match = compile_filter({"$or": [{"lang": "en"}, {"year": {"$gte": 2020}}]})
    >>> match({"lang": "de", "year": 2021}), match({"lang": "de", "year": 2019})
    (True, False)
"""

from __future__ import annotations

import datetime
import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "FIELD_OPERATORS",
    "LOGICAL_OPERATORS",
    "ALLOWED_OPERATORS",
    "OPERATOR_ALIASES",
    "MetadataFilter",
    "compile_filter",
    "stored_form",
]

#: A filter as accepted by ``KLStore.search``.
MetadataFilter = Mapping[str, Any] | Callable[[Mapping[str, Any]], bool]
Predicate = Callable[[Mapping[str, Any]], bool]

_MISSING = object()

_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
FIELD_OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$not")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
ALLOWED_OPERATORS = tuple(sorted(set(FIELD_OPERATORS) | set(LOGICAL_OPERATORS)))
#: Other spellings accepted for a field operator (langchain-community FAISS writes not-equal ``$neq``).
OPERATOR_ALIASES = {"$neq": "$ne"}


def _unknown(op: str) -> ValueError:
    aliases = "; ".join(f"{alias} is accepted as an alias of {op_}" for alias, op_ in OPERATOR_ALIASES.items())
    return ValueError(
        f"unknown filter operator {op!r}; allowed operators are: {', '.join(ALLOWED_OPERATORS)} ({aliases})"
    )


def _as_list(op: str, value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise ValueError(f"filter operator {op!r} needs a list of values; got {type(value).__name__}")


def _compare(fn: Callable[[Any, Any], Any], value: Any, ref: Any) -> bool:
    if value is _MISSING or value is None:
        return False
    try:
        return bool(fn(value, ref))
    except TypeError:
        return False


def stored_form(value: Any) -> Any:
    """``value`` as the stores keep metadata (their JSON form), so a filter compares like with like.

    Dates and times become ISO 8601 strings, numpy scalars Python values (``np.datetime64`` the ISO
    string of its date or time), numpy arrays (``.tolist()``), tuples, sets and frozensets lists, and
    a dict's values are converted, all element by element; anything else is returned unchanged. A set
    becomes a list in its iteration order (what ``$in`` / ``$nin`` need; sets cannot be stored).

    Examples:
        >>> stored_form(datetime.date(2024, 5, 1)), stored_form(np.int64(3)), stored_form((1, np.float32(0.5)))
        ('2024-05-01', 3, [1, 0.5])
        >>> stored_form(np.datetime64("2024-05-01")), stored_form({"d": [datetime.date(2024, 5, 1)]})
        ('2024-05-01', {'d': ['2024-05-01']})
        >>> stored_form(frozenset({datetime.date(2024, 5, 1)})), stored_form(np.array([[1, 2], [3, 4]]))
        (['2024-05-01'], [[1, 2], [3, 4]])
    """
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (np.generic, np.ndarray)):
        # .item() / .tolist() give Python values, but a datetime64 a date or datetime: convert that too
        return stored_form(value.item() if isinstance(value, np.generic) else value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [stored_form(v) for v in value]
    if isinstance(value, dict):
        return {key: stored_form(v) for key, v in value.items()}
    return value


def _field_op(op: str, ref: Any) -> Callable[[Any], bool]:
    """A predicate on one field value (``_MISSING`` when the field is absent)."""
    op = OPERATOR_ALIASES.get(op, op)
    if op != "$not":
        ref = stored_form(ref)  # a date compares with the ISO string the store keeps
    if op == "$eq":
        return lambda v: v is not _MISSING and bool(v == ref)
    if op == "$ne":
        return lambda v: v is _MISSING or bool(v != ref)
    if op == "$in":
        values = _as_list(op, ref)
        return lambda v: v is not _MISSING and any(v == x for x in values)
    if op == "$nin":
        values = _as_list(op, ref)
        return lambda v: v is _MISSING or all(v != x for x in values)
    if op in _COMPARISONS:
        fn = _COMPARISONS[op]
        return lambda v: _compare(fn, v, ref)
    if op == "$not":
        inner = _field_condition(ref)
        return lambda v: not inner(v)
    raise _unknown(op)


def _all_of(parts: Sequence[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    """A predicate true when every one of ``parts`` is (run for every row a filter checks: kept lean)."""
    if len(parts) == 1:  # the common case: no wrapper at all
        return parts[0]
    checks = tuple(parts)

    def every(value: Any) -> bool:
        for check in checks:  # noqa: SIM110 - a plain loop: all(generator) costs more per row
            if not check(value):
                return False
        return True

    return every


def _field_condition(cond: Any) -> Callable[[Any], bool]:
    """Compile the right-hand side of ``{"field": cond}``."""
    if isinstance(cond, Mapping) and cond and all(isinstance(key, str) and key.startswith("$") for key in cond):
        parts = [_field_op(op, ref) for op, ref in cond.items()]
        return _all_of(parts)
    if isinstance(cond, Mapping) and any(isinstance(key, str) and key.startswith("$") for key in cond):
        bad = [key for key in cond if not (isinstance(key, str) and key.startswith("$"))]
        raise ValueError(f"a field condition cannot mix operators and plain keys; got plain keys {bad}")
    if isinstance(cond, np.ndarray):
        cond = cond.tolist()  # a 1-D (or deeper) array reads as the list it holds, a 0-d one as its value
    if isinstance(cond, list):  # only a list means "one of": a tuple is a value (stored as a list), as in FAISS
        return _field_op("$in", cond)
    return _field_op("$eq", cond)


def _compile(spec: Any) -> Predicate:
    if not isinstance(spec, Mapping):
        raise ValueError(f"a filter must be a dict or a callable; got {type(spec).__name__}")
    parts: list[Predicate] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise ValueError(f"filter keys must be strings; got {key!r}")
        if key.startswith("$"):
            if key in ("$and", "$or"):
                subs = [_compile(s) for s in _as_list(key, value)]
                if key == "$and":
                    parts.append(lambda m, subs=subs: all(s(m) for s in subs))  # type: ignore[misc]
                else:
                    parts.append(lambda m, subs=subs: any(s(m) for s in subs))  # type: ignore[misc]
            elif key == "$not":
                sub = _compile(value)
                parts.append(lambda m, sub=sub: not sub(m))  # type: ignore[misc]
            else:
                raise _unknown(key)
        else:
            cond = _field_condition(value)
            parts.append(lambda m, key=key, cond=cond: cond(m.get(key, _MISSING)))  # type: ignore[misc]
    return _all_of(parts)


def compile_filter(spec: MetadataFilter | None) -> Predicate | None:
    """Turn a filter into a predicate ``metadata -> bool`` (``None`` stays ``None``).

    Args:
        spec: A dict in the syntax above, a callable, or ``None``.

    Returns:
        A predicate, or ``None`` when there is no filter.

    Raises:
        ValueError: For an unknown operator or a malformed filter.

    Examples:
        >>> compile_filter({"n": {"$in": [1, 2]}})({"n": 2})
        True
        >>> compile_filter({"n": {"$neq": 2}})({"n": 2}), compile_filter({"n": {"$neq": 2}})({})
        (False, True)
    """
    if spec is None:
        return None
    if callable(spec) and not isinstance(spec, Mapping):
        fn = spec

        def _call(m: Mapping[str, Any]) -> bool:
            # a read-only view: a predicate that assigns to its argument must not rewrite the stored metadata
            return bool(fn(MappingProxyType(m) if isinstance(m, dict) else m))

        return _call
    return _compile(spec)
