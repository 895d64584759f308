"""Metadata filters for :class:`kl_retrievers.index.KLStore`.

A filter is either a callable ``metadata -> bool`` or a dict in the MongoDB-like syntax
used by langchain-community's FAISS store:

* equality: ``{"lang": "en"}`` (a list value means "one of": ``{"lang": ["en", "de"]}``, and so
  does a 1-D numpy array; a tuple is a value, compared with the list the store keeps for a tuple:
  ``{"pos": (1, 2)}`` matches a document added with ``pos=(1, 2)``, as in langchain-community's FAISS;
  a set, a frozenset or a set-like view (``dict.keys()``, any ``collections.abc.Set``) is accepted
  only as the values of ``$in`` / ``$nin`` (its elements): anywhere else, a bare value, ``$eq``,
  ``$ne``, a comparison or inside a list, tuple, dict or object array, it has no order to compare as
  a value and raises ``ValueError`` naming the key: write a list for "one of"; another iterable that
  is not a str, list, tuple, dict or numpy array (a generator, a ``range``, ``dict.values()``,
  ``bytes``) is no value either and raises ``ValueError`` naming the key and its type (write
  ``list(...)`` of it), as do ``$in`` / ``$nin`` values that are no list, tuple, set or numpy array);
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

Dates and times.  The stores keep ``datetime`` / ``date`` / ``time`` metadata as ISO 8601 strings
(see :func:`stored_form`).  A filter value that is a ``datetime``, a ``date`` or an ``np.datetime64``
(in ``$eq``, ``$ne``, ``$in``, ``$nin``, a comparison, or a bare value or list) is compared with a
stored value as a date or a point in time, not as text: the stored string is read back with
``datetime.fromisoformat`` (a stored value that is no ISO date never matches, as for other
incompatible types; a stored date reads as its midnight), and

* a ``date`` filter value (or a day-unit ``np.datetime64``) compares with the stored value's calendar
  date: its own date for a stored date, the date part for a stored datetime, aware or not (the date
  where it was recorded, ``2024-01-02T20:00-05:00`` is on January 2).  ``date(2024, 1, 2)`` matches
  any time that day, ``{"$lte": date(2024, 1, 2)}`` includes noon that day, ``$gt`` excludes the day;
* two timezone-aware datetimes compare as instants: ``2024-01-02T20:00-05:00`` equals
  ``2024-01-03T01:00+00:00`` and is ``>= datetime(2024, 1, 3, tzinfo=timezone.utc)``;
* a naive datetime (no timezone) and an aware one are never equal and never ordered, as in Python
  (which raises ``TypeError`` there): the document does not match ``$eq`` / ``$in`` / a comparison,
  matches ``$ne`` / ``$nin``, and a warning names the two values (the first search of the process that
  meets such a pair; later ones log it at DEBUG, once per search).  Store and filter with the same
  kind (for instance all in UTC).

``NaT`` (``pd.NaT``, stored as the string ``"NaT"``; ``np.datetime64("NaT")``, stored as ``None``) is
no date: it compares as the value the store keeps for it.

Python 3.10's ``fromisoformat`` reads less than 3.11's.  A stored datetime (a date, ``T`` or a space,
and a time) or time in the extended format reads the same on 3.10 with a ``Z`` / ``z`` (UTC), an offset
without a colon or minutes (``+0530``, ``+05``) or a fraction of any length (cut or padded to 6 digits,
as 3.11 does).  What still reads only from 3.11 (on 3.10 it is no date, and never matches): the basic
format (``20240102``, ``20240102T100000Z``), week dates (``2024-W01-2``), and a comma before the
fraction (``10:00:00,5``).  A date-only ``2024-01-02Z`` and an ordinal date (``2024-002``) are no date
on any Python (a ``Z`` needs a time; 3.11 to 3.13 refuse ordinal dates).

A ``time`` filter value is compared with stored times the same way (``time.fromisoformat``).  A
filter value that is a string is compared as a string, whatever it looks like.  langchain-community's
FAISS and LlamaIndex's simple store compare the raw Python values: with ``datetime`` objects kept in
memory they order aware values as instants too, and raise ``TypeError`` for a date against a
datetime or a naive against an aware value; here every store compares the same way before and after
a save.  (``MilvusKLStore`` filters inside Milvus, which compares the ISO strings as text.)

A callable filter gets a read-only view of each document's metadata (a ``Mapping``, not a
``dict``); a nested list or dict read from it (by ``[]``, ``get``, ``items``, ``values``, ...) is a
copy made when it is read, so nothing a filter does to its argument changes the stored metadata.
Flat metadata is not copied.

Examples:
    >>> match = compile_filter({"$or": [{"lang": "en"}, {"year": {"$gte": 2020}}]})
    >>> match({"lang": "de", "year": 2021}), match({"lang": "de", "year": 2019})
    (True, False)
    >>> utc = datetime.timezone.utc
    >>> after = compile_filter({"t": {"$gte": datetime.datetime(2024, 1, 3, tzinfo=utc)}})
    >>> after({"t": "2024-01-02T20:00:00-05:00"}), after({"t": "2024-01-02T23:00:00+00:00"})
    (True, False)
    >>> compile_filter({"t": datetime.datetime(2024, 1, 2)})({"t": "2024-01-02"})
    True
    >>> on_day = compile_filter({"t": {"$lte": datetime.date(2024, 1, 2)}})
    >>> on_day({"t": "2024-01-02T12:00:00"}), on_day({"t": "2024-01-02T20:00:00-05:00"}), on_day({"t": "2024-01-03"})
    (True, True, False)
"""

from __future__ import annotations

import contextvars
import copy
import datetime
import functools
import json
import logging
import operator
import re
import reprlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

__all__ = [
    "FIELD_OPERATORS",
    "LOGICAL_OPERATORS",
    "ALLOWED_OPERATORS",
    "OPERATOR_ALIASES",
    "MAX_FILTER_DEPTH",
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
#: The most levels of dicts and lists (tuples, sets, numpy arrays) a dict filter may nest, operators and values
#: alike: ``{"$and": [{"a": 1}]}`` nests 3. Deeper raises ``ValueError`` (:func:`_check_depth`) before anything
#: is compiled: compiling and running a filter recurses once or more per level, so a filter nested some
#: hundreds of levels deep (valid JSON a service may pass on) would end in ``RecursionError``. 64 ``$and`` /
#: ``$or`` levels fit, and a value 100 levels deep.
MAX_FILTER_DEPTH = 128


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
        value = _microseconds_at_most(value)
        return stored_form(value.item() if isinstance(value, np.generic) else value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [stored_form(v) for v in value]
    if isinstance(value, dict):
        return {key: stored_form(v) for key, v in value.items()}
    return value


def _microseconds_at_most(value: np.generic | np.ndarray) -> Any:
    """A ``datetime64`` value or array of a unit finer than microseconds (``ns``, pandas' unit) in microseconds.

    ``.item()`` / ``.tolist()`` give a ``datetime`` only down to microseconds, an ``int`` of nanoseconds
    below: ``np.datetime64("2024-01-01T10:00", "ns")`` would be kept as ``1704103200000000000``.
    Anything else is returned unchanged.
    """
    if value.dtype.kind == "M" and value.dtype.name.endswith(("ns]", "ps]", "fs]", "as]")):
        return value.astype("datetime64[us]")
    return value


# ------------------------------------------------------------------ dates and times (see the module docstring)
def _temporal_ref(ref: Any) -> datetime.datetime | datetime.date | datetime.time | None:
    """A filter value as the date, datetime or time it compares as; ``None``: not one (a string, ``NaT``, ...)."""
    if isinstance(ref, np.datetime64):
        ref = _microseconds_at_most(ref).item()  # a datetime, a date, or None for NaT
    if isinstance(ref, (datetime.date, datetime.time)) and ref == ref:  # pd.NaT (a datetime) equals nothing
        return ref
    return None


def _stored_form_of_filter_values(spec: Any) -> Any:
    """A dict filter with its date, datetime, time and ``np.datetime64`` values as the strings the store keeps.

    For a backend that compares dates as their ISO text (Milvus): the filter is otherwise unchanged, a tuple
    stays a tuple (a value, where a list means "one of") and a callable is returned as it is.

    Examples:
        >>> _stored_form_of_filter_values({"t": {"$gte": datetime.date(2024, 1, 2)}, "pos": (1, 2)})
        {'t': {'$gte': '2024-01-02'}, 'pos': (1, 2)}
    """
    if isinstance(spec, Mapping):
        return {key: _stored_form_of_filter_values(value) for key, value in spec.items()}
    if isinstance(spec, np.ndarray) and spec.dtype.kind == "M":
        return stored_form(spec)
    if isinstance(spec, (list, tuple, set, frozenset)):
        values = [_stored_form_of_filter_values(value) for value in spec]
        return tuple(values) if isinstance(spec, tuple) else values
    if isinstance(spec, (datetime.date, datetime.time, np.datetime64)):
        return stored_form(spec)
    return spec


#: An ISO 8601 time in the extended format: ``HH[:MM[:SS[.fraction]]]``, then ``Z`` / ``z``, ``+HH[[:]MM]`` or nothing.
_ISO_TIME = (
    r"(?P<clock>\d\d(?::\d\d(?::\d\d)?)?)(?:\.(?P<fraction>\d+))?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<hours>\d\d)(?::?(?P<minutes>\d\d))?)?"
)
_ISO_DATETIME_RE = re.compile(r"(?P<date>\d{4}-\d\d-\d\d[Tt ])" + _ISO_TIME)  # a date WITH a time part
_ISO_TIME_RE = re.compile(_ISO_TIME)


def _iso_for_python310(text: str, *, date: bool = True) -> str:
    """``text`` in the subset of ISO 8601 that Python 3.10's ``fromisoformat`` reads, where that is cheap and safe.

    Python 3.11 reads more: a ``Z`` (UTC, as JSON APIs and JavaScript's ``toISOString`` write it), a fraction
    of any number of digits (Go and .NET write 7 or 9), an offset without a colon (``+0000``, as ``%z`` writes
    it) or without minutes (``+00``). A datetime (``date=True``: ``YYYY-MM-DD``, then ``T``, ``t`` or a space,
    then a time) or a time (``date=False``) with one of those is rewritten the way 3.11 reads it: the ``Z``
    as ``+00:00``, the fraction cut or padded to 6 digits, the offset as ``+HH:MM``. Anything else is returned
    unchanged: a date-only ``"2024-01-02Z"`` (no time, so no UTC to keep: no date on 3.11 either).

    Examples:
        >>> _iso_for_python310("2024-01-02T10:00:00.1234567Z"), _iso_for_python310("2024-01-02 10:00+0530")
        ('2024-01-02T10:00:00.123456+00:00', '2024-01-02 10:00+05:30')
        >>> _iso_for_python310("10:00:00.5z", date=False), _iso_for_python310("2024-01-02Z")
        ('10:00:00.500000+00:00', '2024-01-02Z')
    """
    match = (_ISO_DATETIME_RE if date else _ISO_TIME_RE).fullmatch(text)
    if match is None:
        return text
    parts = match.groupdict()
    fraction = parts["fraction"]
    rewritten = (parts.get("date") or "") + parts["clock"]
    if fraction is not None:
        rewritten += "." + fraction[:6].ljust(6, "0")  # 3.11 drops the digits past microseconds too
    if parts["utc"]:
        rewritten += "+00:00"
    elif parts["sign"]:
        rewritten += f"{parts['sign']}{parts['hours']}:{parts['minutes'] or '00'}"
    return rewritten


def _stored_datetime(value: Any) -> datetime.datetime | None:
    """A stored value (an ISO 8601 string, or a date / datetime) as a datetime; ``None`` when it is none."""
    if isinstance(value, str):
        return _read_iso(value, datetime.datetime.fromisoformat, date=True)  # a date-only string: its midnight
    if isinstance(value, datetime.datetime):
        return value if value == value else None  # not pd.NaT
    if isinstance(value, datetime.date):
        return datetime.datetime.combine(value, datetime.time())
    return None


def _read_iso(value: str, parse: Callable[[str], _T], *, date: bool) -> _T | None:
    """``parse(value)``, else (Python 3.10, or a lowercase "z") ``parse`` of it as 3.11 reads it; else ``None``."""
    try:
        return parse(value)
    except ValueError:
        rewritten = _iso_for_python310(value, date=date)
        if rewritten == value:
            return None
        try:
            return parse(rewritten)
        except ValueError:
            return None


def _stored_time(value: Any) -> datetime.time | None:
    """A stored value (an ISO 8601 time string, or a time) as a time; ``None`` when it is none."""
    if isinstance(value, str):
        return _read_iso(value, datetime.time.fromisoformat, date=False)
    return value if isinstance(value, datetime.time) else None


def _aware(value: datetime.datetime | datetime.time) -> bool:
    return value.utcoffset() is not None


class _Dates:
    """What the date / time conditions of one compiled filter share: the last value parsed, and one warning.

    Every condition on a field parses the stored value it is given; a range (``$gte`` and ``$lt``) on one
    field gets the same string object twice per row, parsed once (the cache holds one value: a row's).
    """

    def __init__(self) -> None:
        self.warned = False
        self._datetime: tuple[Any, datetime.datetime | None] = (_MISSING, None)
        self._time: tuple[Any, datetime.time | None] = (_MISSING, None)

    def datetime_of(self, value: Any) -> datetime.datetime | None:
        last, parsed = self._datetime  # one tuple: read and written at once (a predicate may run in threads)
        if value is not last:
            parsed = _stored_datetime(value)
            self._datetime = (value, parsed)
        return parsed

    def time_of(self, value: Any) -> datetime.time | None:
        last, parsed = self._time
        if value is not last:
            parsed = _stored_time(value)
            self._time = (value, parsed)
        return parsed

    def mismatch(self, value: Any, ref: datetime.datetime | datetime.time) -> None:
        """Log that the stored ``value`` and the filter value ``ref`` cannot compare (once per compiled filter).

        A WARNING the first time this process meets that kind of mismatch (:data:`_MISMATCH_WARNED`), DEBUG
        after: a service that runs the same filter on every search would otherwise repeat it on each.
        """
        if self.warned:
            return
        self.warned = True
        aware = _aware(ref)
        kind = (type(ref).__name__, aware)
        with _MISMATCH_LOCK:
            first = kind not in _MISMATCH_WARNED
            _MISMATCH_WARNED.add(kind)
        (logger.warning if first else logger.debug)(
            "metadata filter: the stored value %r is %s and the filter value %s is %s; Python neither "
            "orders nor equates such values, so the document does not match (it does match $ne / $nin): "
            "store and filter dates with the same kind, both with a timezone (e.g. UTC) or both without "
            "(warned once per process; later searches log this at DEBUG)",
            value,
            "naive (no timezone)" if aware else "timezone-aware",
            ref.isoformat(),
            "timezone-aware" if aware else "naive",
        )


#: The naive / aware mismatches :meth:`_Dates.mismatch` warned about in this process, as ``(filter value type
#: name, filter value aware)``: at most four (datetime or time, either way round); later ones log at DEBUG.
_MISMATCH_WARNED: set[tuple[str, bool]] = set()
_MISMATCH_LOCK = threading.Lock()


#: The :class:`_Dates` of the filter :func:`compile_filter` is compiling in this thread / task (``None``: none).
_COMPILING: contextvars.ContextVar[_Dates | None] = contextvars.ContextVar("kl_retrievers_filter_dates", default=None)


class _OneOf:
    """Whether a present stored value equals one of a list of filter values, some of them dates or times.

    The stored value is parsed once (not once per filter value) and looked up among the filter values
    grouped by kind: aware datetimes (a set: Python hashes them by instant), naive datetimes, dates (the
    stored value's calendar date), aware and naive times; the other filter values compare as the store
    keeps them (:func:`stored_form`).
    """

    def __init__(self, refs: list[Any], dates: _Dates) -> None:
        self.dates = dates
        self.others: list[Any] = []
        self.aware: set[datetime.datetime] = set()
        self.naive: set[datetime.datetime] = set()
        self.days: set[datetime.date] = set()
        self.aware_times: set[datetime.time] = set()
        self.naive_times: set[datetime.time] = set()
        for ref in refs:
            point = _temporal_ref(ref)
            if isinstance(point, datetime.datetime):
                (self.aware if _aware(point) else self.naive).add(point)
            elif isinstance(point, datetime.date):
                self.days.add(point)
            elif isinstance(point, datetime.time):
                (self.aware_times if _aware(point) else self.naive_times).add(point)
            else:
                self.others.append(stored_form(ref))
        self.any_datetime = bool(self.aware or self.naive or self.days)
        self.any_time = bool(self.aware_times or self.naive_times)

    def __call__(self, value: Any) -> bool:
        if value is _MISSING:
            return False
        if self.others and any(value == x for x in self.others):
            return True
        if self.any_datetime:
            parsed = self.dates.datetime_of(value)
            if parsed is not None:
                if self.days and parsed.date() in self.days:
                    return True
                same, other = (self.aware, self.naive) if _aware(parsed) else (self.naive, self.aware)
                if parsed in same:
                    return True
                if other:
                    self.dates.mismatch(value, next(iter(other)))
        if self.any_time:
            parsed_time = self.dates.time_of(value)
            if parsed_time is not None:
                aware = _aware(parsed_time)
                same_t, other_t = (
                    (self.aware_times, self.naive_times) if aware else (self.naive_times, self.aware_times)
                )
                if parsed_time in same_t:
                    return True
                if other_t:
                    self.dates.mismatch(value, next(iter(other_t)))
        return False


def _temporal_order(
    fn: Callable[[Any, Any], Any], ref: datetime.datetime | datetime.date | datetime.time, dates: _Dates
) -> Callable[[Any], bool]:
    """``value -> bool``: a comparison of a stored value with a date, datetime or time filter value."""
    if isinstance(ref, datetime.datetime):
        return _same_awareness_order(fn, ref, dates.datetime_of, dates)
    if isinstance(ref, datetime.date):

        def day(value: Any) -> bool:  # a date compares with the stored value's own calendar date
            parsed = dates.datetime_of(value)
            return parsed is not None and bool(fn(parsed.date(), ref))

        return day
    return _same_awareness_order(fn, ref, dates.time_of, dates)


def _same_awareness_order(
    fn: Callable[[Any, Any], Any],
    ref: datetime.datetime | datetime.time,
    parse: Callable[[Any], datetime.datetime | datetime.time | None],
    dates: _Dates,
) -> Callable[[Any], bool]:
    """``value -> bool``: ``fn(parse(value), ref)``; false for a value ``parse`` cannot read, and false with
    the filter's one warning (:meth:`_Dates.mismatch`) where one of the two is naive and the other aware."""
    aware = _aware(ref)

    def compare(value: Any) -> bool:
        parsed = parse(value)
        if parsed is None:
            return False
        if _aware(parsed) != aware:
            dates.mismatch(value, ref)
            return False
        return bool(fn(parsed, ref))

    return compare


def _field_op(op: str, ref: Any) -> Callable[[Any], bool]:
    """A predicate on one field value (``_MISSING`` when the field is absent)."""
    op = OPERATOR_ALIASES.get(op, op)
    dates = _COMPILING.get() or _Dates()  # shared by the whole filter :func:`compile_filter` is compiling
    if op in ("$in", "$nin") and isinstance(ref, AbstractSet):
        ref = list(ref)  # a set or a set-like view (dict.keys()): its elements, in whatever order
    if op in ("$in", "$nin") and isinstance(ref, (list, tuple, set, frozenset, np.ndarray)):
        items = ref.tolist() if isinstance(ref, np.ndarray) and ref.dtype.kind != "M" else list(ref)
        if any(_temporal_ref(x) is not None for x in items):  # a date among them: compared as dates / instants
            one_of = _OneOf(items, dates)
            if op == "$in":
                return one_of
            return lambda v: v is _MISSING or not one_of(v)
    if op in ("$eq", "$ne", *_COMPARISONS):
        temporal = _temporal_ref(ref)
        if temporal is not None:
            if op in _COMPARISONS:
                order = _temporal_order(_COMPARISONS[op], temporal, dates)
                return lambda v: v is not _MISSING and order(v)
            equal = _OneOf([temporal], dates)
            if op == "$eq":
                return equal
            return lambda v: v is _MISSING or not equal(v)
    if op != "$not":
        ref = stored_form(ref)  # a value compares with the form the store keeps (a tuple as a list, ...)
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
    if isinstance(cond, np.ndarray):  # a 1-D (or deeper) array reads as the list it holds, a 0-d one as its value
        cond = list(cond) if cond.dtype.kind == "M" and cond.ndim == 1 else cond.tolist()
    if isinstance(cond, list):  # only a list means "one of": a tuple is a value (stored as a list), as in FAISS
        return _field_op("$in", cond)
    return _field_op("$eq", cond)


def _is_other_iterable(value: Any) -> bool:
    """Whether ``value`` is an iterable that is no filter value: not a str, list, tuple, numpy array, mapping or set.

    A generator, a ``range``, ``dict.values()``, ``bytes``, a pandas ``Series``, ...: compared as a value it
    matched nothing (the stores keep JSON), so :func:`_check_values` refuses it.
    """
    return isinstance(value, Iterable) and not isinstance(value, (str, list, tuple, np.ndarray, Mapping, AbstractSet))


#: Shortens the values quoted in an error: a bad element of a 100k-element ``$in`` list does not repeat the list.
_SHORT = reprlib.Repr()
_SHORT.maxlevel = 4
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxfrozenset = _SHORT.maxdict = 10
_SHORT.maxstring = _SHORT.maxother = 120


def _short(value: Any) -> str:
    """``repr(value)``, shortened for an error message (long containers and strings end in ``...``).

    Examples:
        >>> _short(list(range(100)))
        '[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]'
    """
    return _SHORT.repr(value)


def _set_error(key: str, found: Any, whole: Any, hint: str) -> ValueError:
    kind = "a set" if isinstance(found, (set, frozenset)) else f"set-like ({type(found).__name__})"
    where = "" if whole is found else f" in {_short(whole)}"
    return ValueError(
        f"filter on {key!r}: {_short(found)}{where} is {kind}, which has no order to compare as a value; {hint} (a set "
        "is accepted as the values of $in / $nin only)"
    )


def _set_hint(key: str, found: Any, op: str | None, whole_condition: bool) -> str:
    """What to write instead of the set ``found`` given to ``op`` (``None``: as the condition, a bare value)."""
    values = sorted(found, key=repr)  # a stable order for the message (shortened: a set may be huge)
    if op is None and whole_condition:
        return f'for "one of" write a list ({_short({key: values})}) or {_short({key: {"$in": values}})}'
    if op is None:  # under $not: the suggestion replaces the set where it stands
        return f'for "one of" write a list ({_short(values)}) or {_short({"$in": values})}'
    if op == "$eq":
        return f'for "one of" write {_short({"$in": values})} in place of {op}'
    if op in ("$ne", "$neq"):
        return f'for "none of" write {_short({"$nin": values})} in place of {op}'
    return f"{op} compares with a single value"


def _check_value(key: str, value: Any, whole: Any, hint: str | None) -> None:
    """Raise ``ValueError`` for a set or another iterable that is no value in ``value`` (itself or an element).

    ``whole`` is the value given (``value`` or what holds it), ``hint`` the advice for a set that is ``value``
    itself (``None``: an element, advised generically: no literal would be right for the whole value).
    """
    if isinstance(value, AbstractSet):
        if hint is None:
            hint = "write its elements in a list or a tuple instead"
        raise _set_error(key, value, whole, hint)
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
        for item in value.ravel() if isinstance(value, np.ndarray) else value:
            _check_value(key, item, whole, None)
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_value(key, item, whole, None)
    elif _is_other_iterable(value):
        where = "" if whole is value else f" in {_short(whole)}"
        raise ValueError(
            f"filter on {key!r}: {_short(value)}{where} is a {type(value).__name__}, which is no value to compare: an "
            'iterable filter value is a list ("one of"), a tuple, a dict or a numpy array (write list(...) of it)'
        )


def _check_values(key: str, cond: Any, negated: bool = False) -> None:
    """Raise ``ValueError`` naming ``key`` for a value in the condition on ``key`` that cannot be compared.

    A set, a frozenset or a set-like view (``dict.keys()``, any ``collections.abc.Set``) has no order: compared
    as a value (the list :func:`stored_form` makes of it, in an order that depends on ``PYTHONHASHSEED`` for
    strings) it would match nothing or match by chance, so it is refused on every store rather than guessed at;
    ``$in`` / ``$nin`` take its elements, where order does not matter.  Another iterable that is not a list,
    tuple, numpy array or mapping (a generator, a ``range``, ``dict.values()``, ...) is refused too (it matched
    nothing), and so are ``$in`` / ``$nin`` values that are no list, tuple, set or numpy array of values.  An
    object array is checked element by element, like a list.  ``negated``: ``cond`` is under a field's ``$not``.

    Examples:
        >>> _check_values("n", {"$in": {1, 2}, "$nin": [{3}]})
        Traceback (most recent call last):
        ...
        ValueError: filter on 'n': {3} in [{3}] is a set, which has no order to compare as a value; write its ...
    """
    if isinstance(cond, Mapping) and any(isinstance(op, str) and op.startswith("$") for op in cond):
        for op, ref in cond.items():
            name = OPERATOR_ALIASES.get(op, op)
            if name == "$not":
                _check_values(key, ref, negated=True)
            elif name in ("$in", "$nin"):
                if isinstance(ref, np.ndarray) and ref.ndim:
                    if ref.dtype == object:  # only an object array can hold a set: a numeric one needs no walk
                        for item in ref.ravel():
                            _check_value(key, item, ref, None)
                elif isinstance(ref, (list, tuple, AbstractSet)):
                    for item in ref:
                        _check_value(key, item, ref, None)  # its elements are values (a set among them is refused)
                else:
                    raise ValueError(
                        f"filter on {key!r}: {op} needs a list, tuple, set (or set-like view, such as dict.keys()) or "
                        f"1-D numpy array of values; got {_short(ref)} ({type(ref).__name__})"
                    )
            elif name in FIELD_OPERATORS:  # an unknown operator is named when the filter is compiled
                _check_value(key, ref, ref, _set_hint(key, ref, op, False) if isinstance(ref, AbstractSet) else None)
        return
    hint = _set_hint(key, cond, None, not negated) if isinstance(cond, AbstractSet) else None
    _check_value(key, cond, cond, hint)


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
            _check_values(key, value)
            cond = _field_condition(value)
            parts.append(lambda m, key=key, cond=cond: cond(m.get(key, _MISSING)))  # type: ignore[misc]
    return _all_of(parts)


def _check_depth(spec: Any) -> None:
    """Raise ``ValueError`` for a dict filter nested more than :data:`MAX_FILTER_DEPTH` levels deep.

    Walks the filter without recursion: the values of mappings, the items of lists, tuples and sets (a
    set-like view too), and a numpy array's dimensions (an object array's elements too). Anything else (a
    generator, say) is not iterated: :func:`_check_values` names it. A filter that holds itself is refused
    too (as nested too deeply), where compiling it would recurse until ``RecursionError``.

    Examples:
        >>> f = {"n": 1}
        >>> for _ in range(70):
        ...     f = {"$and": [f]}
        >>> _check_depth(f)
        Traceback (most recent call last):
        ...
        ValueError: the filter nests dicts and lists more than 128 levels deep (MAX_FILTER_DEPTH; operators such ...
    """
    pending: list[tuple[Any, int]] = [(spec, 1)]
    while pending:
        value, depth = pending.pop()
        items: Iterable[Any]
        if isinstance(value, Mapping):
            items = value.values()
        elif isinstance(value, (list, tuple, AbstractSet)):
            items = value
        elif isinstance(value, np.ndarray) and value.ndim:
            depth += value.ndim - 1
            items = value.ravel() if value.dtype == object else ()
        else:
            continue
        if depth > MAX_FILTER_DEPTH:
            raise ValueError(
                f"the filter nests dicts and lists more than {MAX_FILTER_DEPTH} levels deep (MAX_FILTER_DEPTH; "
                "operators such as $and, $or and $not count as their dicts and lists do, and so do nested values); "
                "write it with fewer levels"
            )
        if not _all_immutable(map(type, items)):  # a C-level pass: a long $in list of scalars pushes nothing
            pending.extend((item, depth + 1) for item in items if type(item) not in _IMMUTABLE)


def compile_filter(spec: MetadataFilter | None) -> Predicate | None:
    """Turn a filter into a predicate ``metadata -> bool`` (``None`` stays ``None``).

    Args:
        spec: A dict in the syntax above, a callable, or ``None``.

    Returns:
        A predicate, or ``None`` when there is no filter.

    Raises:
        ValueError: For an unknown operator or a malformed filter (a set where a value is compared, not
            as the values of ``$in`` / ``$nin``; another iterable that is no value, such as a generator; dicts
            and lists nested more than :data:`MAX_FILTER_DEPTH` levels deep).

    Examples:
        >>> compile_filter({"n": {"$in": [1, 2]}})({"n": 2})
        True
        >>> compile_filter({"n": {"$neq": 2}})({"n": 2}), compile_filter({"n": {"$neq": 2}})({})
        (False, True)

        A callable cannot change the metadata it is given, nested values included:

        >>> stored = {"tags": ["x"]}
        >>> compile_filter(lambda m: m["tags"].append("EVIL") or True)(stored), stored
        (True, {'tags': ['x']})
    """
    if spec is None:
        return None
    if isinstance(spec, _ReadOnlyCall):  # compiled already (a wrapper hands a compiled filter on)
        return spec
    if callable(spec) and not isinstance(spec, Mapping):
        return _ReadOnlyCall(spec)
    _check_depth(spec)
    token = _COMPILING.set(_Dates())  # one parse cache and one warning for the whole filter
    try:
        return _compile(spec)
    finally:
        _COMPILING.reset(token)


#: The types of a flat metadata value: nothing in it to change in place, so no copy is needed.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_all_immutable = _IMMUTABLE.issuperset  # given map(type, values): one C-level pass, stopping at the first other type


def _filter_key(spec: Any) -> str | None:
    """A canonical text of a dict filter made only of plain JSON values, for caching what it matches.

    Two filters with the same key match the same documents: the key is the filter as compact JSON with
    sorted keys (the conditions of one dict are combined with AND, in any order) and each value's type
    kept apart (``1``, ``1.0``, ``True`` and ``"1"`` give different keys). ``None`` for any other filter:
    a callable (it may read anything), and a dict holding a value other than a ``str``, ``int``, ``float``,
    ``bool``, ``None``, ``list`` or ``dict`` with string keys (a date or datetime, a tuple, a set, a numpy
    value, a subclass of one of those types): such a filter is compiled and run each time.

    Examples:
        >>> _filter_key({"year": {"$lt": 2024, "$gte": 2020}, "lang": ["en", "de"]})
        '{"lang":["en","de"],"year":{"$gte":2020,"$lt":2024}}'
        >>> _filter_key({"t": datetime.date(2024, 1, 2)}) is None, _filter_key(lambda m: True) is None
        (True, True)
    """
    if type(spec) is not dict:
        return None
    try:
        if not _plain_json(spec):
            return None
    except RecursionError:  # nested deeper than a filter sensibly is: not cached
        return None
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is a ``str``, ``int``, ``float``, ``bool`` or ``None``, or a list or str-keyed dict of such."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return True
    if kind is list:
        return all(map(_plain_json, value))
    if kind is dict:
        return all(type(key) is str and _plain_json(item) for key, item in value.items())
    return False


def _is_nested(meta: Mapping[str, Any]) -> bool:
    """Whether a metadata dict holds a value other than a string, number, bool or ``None`` (a list, a dict)."""
    return not _all_immutable(map(type, meta.values()))


def _with_view(fn: Callable[[Mapping[str, Any]], Any], m: Mapping[str, Any]) -> bool:
    """``fn(m)`` given a read-only view of ``m`` (see :class:`_ReadOnlyCall`)."""
    if isinstance(m, dict):  # what a store holds (another mapping is the caller's own, passed as it is)
        m = MappingProxyType(m) if _all_immutable(map(type, m.values())) else _CopyingView(m)  # _is_nested
    return bool(fn(m))


class _ReadOnlyCall(functools.partial[bool]):
    """What :func:`compile_filter` makes of a callable: it is given a read-only view of each metadata dict.

    Flat metadata (the usual case) is shown through a ``MappingProxyType``; metadata holding lists or dicts
    through a :class:`_CopyingView`, which copies a nested value each time the callable reads one, so the
    callable can change nothing stored and pays for a copy only of what it reads.  A store that knows which
    of its rows are nested calls :meth:`rows` and skips the check per row.  (A ``partial`` of
    :func:`_with_view`: called once per document, it is called from C, with no Python ``__call__``.)
    """

    __slots__ = ()

    def __new__(cls, fn: Callable[[Mapping[str, Any]], Any]) -> _ReadOnlyCall:
        return super().__new__(cls, _with_view, fn)

    @property
    def fn(self) -> Callable[[Mapping[str, Any]], Any]:
        """The callable filter."""
        fn: Callable[[Mapping[str, Any]], Any] = self.args[0]
        return fn

    def rows(self, metas: Sequence[dict[str, Any]], nested: Sequence[bool], rows: list[int]) -> list[bool]:
        """The callable's answers for ``metas[r]``, ``r`` in ``rows`` (``nested[r]``: :func:`_is_nested` of it)."""
        fn, flat, copying = self.fn, MappingProxyType, _CopyingView
        return [bool(fn(copying(metas[r]) if nested[r] else flat(metas[r]))) for r in rows]


class _CopyingView(Mapping[str, Any]):
    """A read-only view of a metadata mapping whose values are handed out as copies (lists and dicts).

    Every way of reading a value (``[]``, ``get``, ``items``, ``values``, ``==``) goes through
    ``__getitem__`` (the ``Mapping`` mixins), so none gives out a stored list or dict. What a
    ``MappingProxyType`` (the view of flat metadata) offers beyond a ``Mapping`` works alike here, so a
    callable reads nested rows as it reads flat ones: ``copy()``, ``m | other`` and ``other | m`` give new
    dicts of copied values, ``reversed(m)`` the keys last to first, and ``m |= other`` raises ``TypeError``.
    """

    __slots__ = ("_m",)

    def __init__(self, m: dict[str, Any]) -> None:
        self._m = m

    def __getitem__(self, key: str) -> Any:
        return _copied(self._m[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __len__(self) -> int:
        return len(self._m)

    def __contains__(self, key: object) -> bool:
        return key in self._m

    def __reversed__(self) -> Iterator[str]:
        return reversed(self._m)

    def copy(self) -> dict[str, Any]:
        """A new dict of the mapping's items, its lists and dicts copied (``MappingProxyType.copy``)."""
        return {key: _copied(value) for key, value in self._m.items()}

    def __or__(self, other: Any) -> Any:
        return self.copy() | other  # a dict, or dict's own TypeError naming the other operand's type

    def __ror__(self, other: Any) -> Any:
        return other | self.copy()

    def __ior__(self, other: Any) -> Any:
        raise TypeError(f"'|=' is not supported by {type(self).__name__} (a read-only view); use '|' instead")

    def __str__(self) -> str:
        return str(self.copy())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"


def _copied(value: Any) -> Any:
    """A copy of a metadata value sharing nothing mutable with it (stored metadata is JSON: dicts, lists, scalars).

    Lists and dicts are copied level by level without recursion, so a value nested as deeply as JSON metadata
    may be (``add`` and a saved store take about as many levels as Python's recursion limit) is copied, not
    a ``RecursionError``. A list or dict met twice (only in a caller's own mapping) is copied once, as
    ``copy.deepcopy`` does, so a cycle is copied as a cycle. Other values (not stored by a store) are
    ``copy.deepcopy``'d.

    Examples:
        >>> deep = []
        >>> for _ in range(5000):
        ...     deep = [deep]
        >>> node, levels = _copied({"a": deep})["a"], 0
        >>> while node:
        ...     node, levels = node[0], levels + 1
        >>> levels
        5000
    """
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is not dict and kind is not list:
        return copy.deepcopy(value)  # not stored by a store; a caller's own mapping passed to the predicate
    top = kind(value)  # keys are strings (stored metadata) or immutable (a dict key is hashable)
    copies = {id(value): top}  # by the original's id: what was copied already
    pending = [top]  # copies whose items are still the originals'
    while pending:
        node = pending.pop()
        for key, item in node.items() if type(node) is dict else enumerate(node):
            kind = type(item)
            if kind in _IMMUTABLE:
                continue
            if kind is dict or kind is list:
                new = copies.get(id(item))
                if new is None:
                    new = copies[id(item)] = kind(item)
                    pending.append(new)
            else:
                new = copy.deepcopy(item)
            node[key] = new  # an existing key: the dict iterated over does not change size
    return top
