"""Training data: BEIR train splits, JSONL rows with hard negatives, and negative mining.

A :class:`TrainingSet` holds unique query texts, unique document texts, and one
:class:`TrainExample` per row / judged query (indices of its positives and negatives, optional
teacher scores); several examples may share a query text (e.g. one row per (query, positive)).
A judged positive of a query text is never one of its negatives: building a set drops such
negatives (with a warning), and mining and random negatives skip every positive of the query
text (:meth:`TrainingSet.positives_by_query`). Two readers fill it:

* :func:`from_beir`: a BEIR folder's split (``qrels/<split>.tsv``): every judged document with
  grade > 0 is a positive; the whole corpus is the document pool (for full-corpus softmax and mining).
* :func:`read_jsonl`: one JSON object per line::

      {"query": str,                       # alias "anchor" (sentence-transformers)
       "positives": [str, ...],            # aliases "pos", "positive" (one string allowed)
       "negatives": [str, ...],            # aliases "neg", "negative", or negative_1, negative_2, ...
                                           # (sentence-transformers' n-tuples); optional
       "teacher_scores": {"positives": [float], "negatives": [float]}}   # optional;
                                           # aliases "pos_scores" / "neg_scores" (FlagEmbedding)

  FlagEmbedding's ``prompt`` and ``type`` are ignored; any other field (a misspelt ``negtives``, a foreign
  ``hard_negatives``) is ignored with one warning per file naming the unknown fields, the known ones and the
  closest known name. A row giving one field under two of its names (``positives`` and ``positive``,
  ``query`` and ``anchor``, ``teacher_scores`` and ``pos_scores``) is refused, naming the line and both
  fields. A row repeated exactly counts once per copy, with one warning per file giving the count. The pool
  is every text seen.

Negatives can be mined with BM25 (:func:`mine_bm25_negatives`, bm25s) or with a model's exact
scores (:func:`mine_negatives_from_scores`).

Examples:
    >>> ts = TrainingSet.from_rows([{"query": "q", "positives": ["a"], "negatives": ["b"]}])
    >>> ts.examples[0].positives, ts.docs
    ([0], ['a', 'b'])
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kl_retrievers._bm25 import quiet_bm25s_logger
from kl_retrievers._checks import check_bool
from kl_retrievers._confidence import is_blank_query
from kl_retrievers._encoding import progress_enabled, require_modules
from kl_retrievers._io import parse_json_object, some_names, user_path
from kl_retrievers._warn import warn

logger = logging.getLogger(__name__)

__all__ = [
    "TrainExample",
    "TrainingSet",
    "from_beir",
    "load_training_data",
    "mine_bm25_negatives",
    "mine_negatives_from_scores",
    "read_jsonl",
]


def require_train_extra(what: str, *modules: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the ``[train]`` extra (torch, transformers, peft for ``--lora-r``,
    bm25s for ``--hard-negatives bm25``) when one of ``modules`` is not installed; imports nothing.

    Examples:
        >>> require_train_extra("BM25 hard negatives", "bm25s")  # doctest: +SKIP
    """
    require_modules(what, modules, "train")


@dataclass
class TrainExample:
    """One training query.

    Attributes:
        query: Index into :attr:`TrainingSet.queries`.
        positives: Indices into :attr:`TrainingSet.docs` of relevant documents.
        negatives: Indices of (hard) negatives.
        teacher_positives: Teacher scores aligned with ``positives`` (or ``None``).
        teacher_negatives: Teacher scores aligned with ``negatives`` (or ``None``).
    """

    query: int
    positives: list[int]
    negatives: list[int] = field(default_factory=list)
    teacher_positives: list[float] | None = None
    teacher_negatives: list[float] | None = None

    @property
    def has_teacher(self) -> bool:
        """Whether every positive and negative has a teacher score."""
        return (
            self.teacher_positives is not None
            and self.teacher_negatives is not None
            and len(self.teacher_positives) == len(self.positives)
            and len(self.teacher_negatives) == len(self.negatives)
        )


class TrainingSet:
    """Queries, a document pool and the examples that link them.

    Args:
        queries: Unique query texts.
        docs: Unique document texts (the pool).
        examples: One :class:`TrainExample` per training query.
        sources: Where the data came from (for the model card).
        splits: The BEIR splits among them (:func:`from_beir`), as
            :meth:`~kl_retrievers.datasets.BeirDataset.split_record` records each (folder
            name, split, SHA-256 of its query texts, how many of its queries were trained on): what the model's
            training record keeps, so that ``kl-retrievers evaluate`` warns on a split the model was trained on.
    """

    def __init__(
        self,
        queries: list[str],
        docs: list[str],
        examples: list[TrainExample],
        sources: list[str] | None = None,
        splits: list[dict[str, Any]] | None = None,
    ) -> None:
        self.queries = queries
        self.docs = docs
        self.examples = examples
        self.sources = sources or []
        self.splits = splits or []

    def __repr__(self) -> str:
        return f"TrainingSet(queries={len(self.queries)}, docs={len(self.docs)}, examples={len(self.examples)})"

    def data_sha256(self) -> str:
        """SHA-256 of the training data's content: its query texts, its document pool and each example's query and
        judged positives (what :class:`~kl_retrievers.training.RetrievalEvaluator` records of its split, as
        ``data_sha256``, for the training data).

        A checkpoint records it, so that a resume refuses data whose content changed at the same path. Negatives
        and teacher scores are left out: mining and teacher scoring add them after loading, and a resume redoes both.

        Examples:
            >>> a = TrainingSet.from_rows([{"query": "q", "positives": ["a"]}])
            >>> a.data_sha256() == TrainingSet.from_rows([{"query": "q", "positives": ["a"]}], "other").data_sha256()
            True
            >>> a.data_sha256() == TrainingSet.from_rows([{"query": "q", "positives": ["b"]}]).data_sha256()
            False
        """
        from kl_retrievers.datasets import _sha256_texts  # numpy-free; imported here as from_beir imports it

        content = {
            "queries": _sha256_texts(self.queries),
            "docs": _sha256_texts(self.docs),
            "examples": [[ex.query, sorted(int(d) for d in ex.positives)] for ex in self.examples],
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def positives_by_query(self) -> dict[int, frozenset[int]]:
        """Every judged positive of each query text: the union over all examples of that query (one pass).

        Several examples can share a query text (triple-style rows, one per positive); none of these
        documents may serve as a negative of that query, in mining, random negatives or the loss.

        Examples:
            >>> ts = TrainingSet.from_rows([{"query": "q", "positives": ["a"]}, {"query": "q", "positives": ["b"]}])
            >>> ts.positives_by_query()
            {0: frozenset({0, 1})}
        """
        union: dict[int, set[int]] = {}
        for ex in self.examples:
            union.setdefault(ex.query, set()).update(ex.positives)
        return {q: frozenset(docs) for q, docs in union.items()}

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], source: str = "rows") -> TrainingSet:
        """Build from rows in the JSONL schema (see the module docstring).

        Examples:
            >>> TrainingSet.from_rows([{"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [2.0],
            ...                         "neg_scores": [1.0]}]).examples[0].teacher_negatives
            [1.0]
        """
        return _from_labelled_rows(((f"{source}, row {n}", row) for n, row in enumerate(rows, 1)), source)[0]

    def merge(self, other: TrainingSet) -> TrainingSet:
        """Both sets in one (texts deduplicated)."""
        builder = _Builder()
        for ts in (self, other):
            for ex in ts.examples:
                builder.add(
                    ts.queries[ex.query],
                    [ts.docs[i] for i in ex.positives],
                    [ts.docs[i] for i in ex.negatives],
                    ex.teacher_positives,
                    ex.teacher_negatives,
                )
            for doc in ts.docs:
                builder.doc(doc)
        return builder.build(self.sources + other.sources, self.splits + other.splits)


class _Builder:
    def __init__(self) -> None:
        self.queries: dict[str, int] = {}
        self.docs: dict[str, int] = {}
        self.examples: list[TrainExample] = []

    def doc(self, text: str) -> int:
        return self.docs.setdefault(text, len(self.docs))

    def add(
        self,
        query: str,
        pos: Sequence[str],
        neg: Sequence[str],
        tpos: Sequence[float] | None,
        tneg: Sequence[float] | None,
    ) -> None:
        qi = self.queries.setdefault(query, len(self.queries))
        self.examples.append(
            TrainExample(
                qi,
                [self.doc(t) for t in pos],
                [self.doc(t) for t in neg],
                None if tpos is None else [float(x) for x in tpos],
                None if tneg is None else [float(x) for x in tneg],
            )
        )

    def build(self, sources: list[str], splits: list[dict[str, Any]] | None = None) -> TrainingSet:
        ts = TrainingSet(list(self.queries), list(self.docs), self.examples, sources, splits)
        _drop_positive_negatives(ts)
        return ts


def _drop_positive_negatives(ts: TrainingSet) -> None:
    """Remove from each example's negatives (and their teacher scores) every judged positive of its query
    text, in any example; log how many were dropped."""
    positives = ts.positives_by_query()
    dropped = rows = 0
    for ex in ts.examples:
        pos = positives[ex.query]
        keep = [j for j, d in enumerate(ex.negatives) if d not in pos]
        if len(keep) == len(ex.negatives):
            continue
        dropped += len(ex.negatives) - len(keep)
        rows += 1
        if ex.teacher_negatives is not None and len(ex.teacher_negatives) == len(ex.negatives):
            ex.teacher_negatives = [ex.teacher_negatives[j] for j in keep]
        ex.negatives = [ex.negatives[j] for j in keep]
    if dropped:
        logger.warning(
            "%s: dropped %d negatives of %d examples that are judged positives of the same query "
            "(a judged positive is never a negative)",
            ", ".join(ts.sources) or "training data",
            dropped,
            rows,
        )


def _one_alias(row: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    """Refuse a row that gives one field under two of its names (``positives`` and ``positive``): one would be
    dropped in silence. A name whose value is ``null`` does not count."""
    given = [name for name in names if row.get(name) is not None]
    if len(given) > 1:
        raise ValueError(
            f"{where}: {' and '.join(repr(n) for n in given)} name the same field ({' / '.join(names)}); give one "
            "of them (merge the lists)"
        )


def _text_list(row: Mapping[str, Any], names: tuple[str, ...], where: str, *, required: bool) -> list[str]:
    _one_alias(row, names, where)
    for name in names:
        if name in row:
            value = row[name]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: {name!r} must be a list of strings")
            return list(value)
    if required:
        raise ValueError(f"{where}: missing {' or '.join(repr(n) for n in names)} (fields: {sorted(row)})")
    return []


def _numbered_negatives(row: Mapping[str, Any], where: str) -> list[str]:
    """sentence-transformers' n-tuple columns ``negative_1``, ``negative_2``, ... (from ``mine_hard_negatives``)."""
    names = [k for k in row if isinstance(k, str) and _NUMBERED_NEGATIVE.fullmatch(k)]
    names.sort(key=lambda k: int(k.rsplit("_", 1)[1]))
    if [int(k.rsplit("_", 1)[1]) for k in names] != list(range(1, len(names) + 1)):
        raise ValueError(f"{where}: numbered negatives must run negative_1, negative_2, ... without gaps; got {names}")
    out = []
    for name in names:
        if not isinstance(row[name], str):
            raise ValueError(f"{where}: {name!r} must be a string")
        out.append(row[name])
    return out


#: The fields a JSONL row may have (besides sentence-transformers' ``negative_1``, ``negative_2``, ...): ours,
#: FlagEmbedding's (``prompt`` and ``type`` are ignored) and sentence-transformers' column names.
ROW_FIELDS = (
    "query",
    "anchor",
    "positives",
    "pos",
    "positive",
    "negatives",
    "neg",
    "negative",
    "teacher_scores",
    "pos_scores",
    "neg_scores",
    "prompt",
    "type",
)
_NUMBERED_NEGATIVE = re.compile(r"negative_[1-9][0-9]*")


def _warn_unknown_fields(source: str, unknown: Mapping[str, str]) -> None:
    """One warning for the fields of ``source``'s rows that are not :data:`ROW_FIELDS` (``unknown``: each name ->
    where it first appears), naming the closest known name: a misspelt ``negtives`` would otherwise train on
    random negatives in silence."""
    if not unknown:
        return
    described = [
        f"{name!r} ({where.removeprefix(source + ', ')}{_field_hint(name)})" for name, where in unknown.items()
    ]
    warn(
        f"{source}: unknown field{'s' if len(unknown) != 1 else ''} ignored: {some_names(described)}. Known fields: "
        f"{', '.join(ROW_FIELDS)}, negative_1, negative_2, ... (prompt and type are ignored)"
    )


def _field_hint(name: str) -> str:
    """The hint of :func:`_warn_unknown_fields` for the unknown field ``name`` (``""``: none): the known name it is
    close to (a misspelling), but none for an id column (``query_id``, ``neg_ids``: metadata, not a known field
    misspelt).

    Examples:
        >>> _field_hint("negtives"), _field_hint("query_id"), _field_hint("negative_0")
        ("; did you mean 'negatives'?", '', '; the numbered negatives start at negative_1')
    """
    import difflib

    lowered = name.lower()
    if lowered == "scores":  # sentence-transformers' mine_hard_negatives(output_scores=True)
        return (
            "; a list [positive, negative_1, ...] as sentence-transformers' mine_hard_negatives writes? give it as "
            "pos_scores [positive] and neg_scores [negative_1, ...]"
        )
    if re.fullmatch(r"negative_0+", lowered):
        return "; the numbered negatives start at negative_1"
    if lowered in ("id", "_id") or lowered.endswith(("_id", "_ids")):
        return ""
    close = difflib.get_close_matches(lowered, ROW_FIELDS, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _row_key(row: Mapping[str, Any]) -> bytes:
    """A digest of a row's content, the same for rows equal as JSON (whatever their fields' order)."""
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=repr).encode()).digest()


def _from_labelled_rows(rows: Iterable[tuple[str, Mapping[str, Any]]], source: str) -> tuple[TrainingSet, int, int]:
    """Build a set from ``(where, row)`` pairs; also returns the rows read and those skipped (no positives).

    Warns once for the fields no reader knows (:func:`_warn_unknown_fields`) and once for the rows that repeat an
    earlier row exactly (each copy is one more example).
    """
    builder = _Builder()
    n_rows = skipped = 0
    unknown: dict[str, str] = {}  # field -> where it first appears
    seen: dict[bytes, str] = {}  # digest of the row's content -> where it first appears
    repeats = 0
    first_repeat = ("", "")  # where the first repeat is, and where the row it repeats is
    for where, row in rows:
        n_rows += 1
        for name in row:
            text = str(name)
            if text not in ROW_FIELDS and not _NUMBERED_NEGATIVE.fullmatch(text):
                unknown.setdefault(text, where)
        try:
            key = _row_key(row)
        except (TypeError, ValueError):  # a row of objects JSON cannot hold (from_rows): not compared
            key = None
        if key is not None:
            if key in seen:
                repeats += 1
                first_repeat = first_repeat if repeats > 1 else (where, seen[key])
            else:
                seen[key] = where
        _one_alias(row, ("query", "anchor"), where)
        query = row.get("query", row.get("anchor"))  # "anchor": sentence-transformers' column name
        if not isinstance(query, str):
            raise ValueError(f"{where}: 'query' (or 'anchor') must be a string (fields: {sorted(row)})")
        if is_blank_query(query):  # invisible characters too (a zero-width space): the tokenizer drops them all
            raise ValueError(
                f"{where}: the query is empty (or only whitespace and invisible characters); give a query text or "
                "drop the row"
            )
        pos = _text_list(row, ("positives", "pos", "positive"), where, required=True)
        neg = _text_list(row, ("negatives", "neg", "negative"), where, required=False)
        numbered = _numbered_negatives(row, where)
        if numbered and neg:
            raise ValueError(f"{where}: give negatives as one list or as negative_1, negative_2, ...; not both")
        neg = neg or numbered
        for kind, texts in (("positive", pos), ("negative", neg)):
            empty = [i for i, text in enumerate(texts) if is_blank_query(text)]
            if empty:
                raise ValueError(
                    f"{where}: {kind} {empty[0] + 1} of {len(texts)} is empty (or only whitespace and invisible "
                    "characters); give a document text or drop it"
                )
        tpos, tneg = _teacher_fields(row, where)
        if tpos is not None or tneg is not None:
            tpos = _score_list(tpos, len(pos), f"{where}: teacher scores of positives")
            tneg = _score_list(tneg if tneg is not None else [], len(neg), f"{where}: teacher scores of negatives")
        if not pos:
            logger.warning("%s: no positives; skipped", where)
            skipped += 1
            continue
        builder.add(query, pos, neg, tpos, tneg)
    _warn_unknown_fields(source, unknown)
    if repeats:  # a warning at the user's line, as the unknown fields' (_warn_unknown_fields)
        warn(
            f"{source}: {repeats} {'row repeats' if repeats == 1 else 'rows repeat'} an earlier row exactly (e.g. "
            f"{first_repeat[0].removeprefix(source + ', ')} repeats {first_repeat[1].removeprefix(source + ', ')}); "
            "each copy counts as one more example (drop the repeats to weigh each row once)"
        )
    return builder.build([source]), n_rows, skipped


_TEACHER_KEYS = ("positives", "negatives")


def _teacher_fields(row: Mapping[str, Any], where: str) -> tuple[Any, Any]:
    """A row's teacher scores of positives and negatives (``None`` when absent); a malformed field is an error."""
    if row.get("teacher_scores") is not None:
        scores = row["teacher_scores"]
        if not isinstance(scores, Mapping):
            raise ValueError(
                f"{where}: 'teacher_scores' must be an object with 'positives' and/or 'negatives' lists; "
                f"got {type(scores).__name__}"
            )
        unknown = sorted(str(k) for k in scores if k not in _TEACHER_KEYS)
        if unknown or not scores:
            raise ValueError(
                f"{where}: 'teacher_scores' may hold only the keys 'positives' and 'negatives'; got {sorted(scores)}"
            )
        flat = [name for name in ("pos_scores", "neg_scores") if row.get(name) is not None]
        if flat:
            raise ValueError(
                f"{where}: 'teacher_scores' and {' and '.join(repr(n) for n in flat)} both give teacher scores; give "
                "them one way ('teacher_scores' with 'positives' / 'negatives', or 'pos_scores' / 'neg_scores')"
            )
        return scores.get("positives"), scores.get("negatives")
    return row.get("pos_scores"), row.get("neg_scores")


def _score_list(value: Any, n: int, where: str) -> list[float]:
    ok = isinstance(value, list) and len(value) == n
    if ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return [float(v) for v in value]
    raise ValueError(f"{where}: expected a list of {n} finite numbers (not booleans), got {value!r}"[:300])


def read_jsonl(path: str | os.PathLike[str]) -> TrainingSet:
    """Read a JSONL training file (schema in the module docstring).

    Examples:
        >>> ts = read_jsonl("../shared/datasets/train-toy-msmarco-nq-hardneg/flagembedding_nq.jsonl")  # doctest: +SKIP
    """
    p = Path(path)
    data = p.read_bytes()
    if data.startswith(b"\x1f\x8b"):
        raise ValueError(f"{p}, line 1: not UTF-8 text (a gzip file: decompress it first); give a UTF-8 JSONL file")
    try:
        text = data.decode("utf-8-sig")  # a byte order mark is skipped
    except UnicodeDecodeError as exc:
        n = len(re.split(rb"\r\n|\r|\n", data[: exc.start]))
        raise ValueError(f"{p}, line {n}: not UTF-8 text; give a UTF-8 JSONL file") from None
    rows = []
    # universal newlines (LF, CRLF or CR) as a text-mode open; errors name the file's line, blank lines included
    for n, line in enumerate(io.StringIO(text, newline=None), 1):
        if line.strip():
            rows.append((f"{p}, line {n}", parse_json_object(line, f"{p}, line {n}")))
    ts, n_rows, skipped = _from_labelled_rows(rows, str(p))
    if not ts.examples:
        raise ValueError(
            f"{p}: no training examples: {n_rows} rows (blank lines not counted), {skipped} of them without positives"
        )
    return ts


def from_beir(
    path: str | os.PathLike[str],
    split: str = "train",
    *,
    query_ids: Iterable[str] | None = None,
    unknown_docs: str = "error",
) -> TrainingSet:
    """A BEIR split as training data: query -> its judged documents with grade > 0.

    Judged queries without such a document are skipped, with one warning giving the count. As
    :func:`read_jsonl` refuses empty texts, an empty query text or positive document text (or one of only
    whitespace and invisible characters such as a zero-width space: :func:`~kl_retrievers._confidence.is_blank_query`)
    is not trained on: such a query, or such a positive of a query, is skipped with one warning per file
    (``queries.jsonl``, ``corpus.jsonl``) giving the count and the ids. A public BEIR folder is not
    the user's to edit, so it is skipped rather than refused; a query left without a positive is skipped
    as above.

    Args:
        path: BEIR folder.
        split: The qrels split to train on.
        query_ids: Optional subset of query ids (e.g. a split by article).
        unknown_docs: A judgement of a document outside ``corpus.jsonl``: ``"error"`` (default) or
            ``"drop"`` it with a warning (see :func:`~kl_retrievers.datasets.load_beir`).

    Examples:
        >>> ts = from_beir("../shared/datasets/scifact", "train")  # doctest: +SKIP
    """
    from kl_retrievers.datasets import load_beir

    ds = load_beir(path, split, unknown_docs=unknown_docs)
    builder = _Builder()
    for doc in ds.document_texts():
        builder.doc(doc)
    doc_text = dict(zip(ds.doc_ids, ds.document_texts(), strict=True))
    wanted = set(query_ids) if query_ids is not None else None
    judged_queries = without_positive = trained = 0
    empty_queries: list[str] = []
    empty_docs: dict[str, None] = {}  # ids of empty judged positives, in order, once each
    emptied: list[str] = []  # queries whose every positive is empty
    for qid, judged in ds.qrels.items():
        if wanted is not None and qid not in wanted:
            continue
        judged_queries += 1
        if is_blank_query(ds.queries[qid]):
            empty_queries.append(qid)
            continue
        pos = []
        for d, grade in judged.items():
            if grade > 0:
                if not is_blank_query(doc_text[d]):
                    pos.append(doc_text[d])
                else:
                    empty_docs[d] = None
        if pos:
            builder.add(ds.queries[qid], pos, [], None, None)
            trained += 1
        elif not any(grade > 0 for grade in judged.values()):
            without_positive += 1
        else:
            emptied.append(qid)  # every positive empty: named in the corpus.jsonl warning
    # as read_jsonl refuses empty texts (nothing to learn from); a BEIR folder is skipped from, not refused
    if empty_queries:
        logger.warning(
            "%s: %d judged queries have an empty text (or only whitespace and invisible characters); skipped: %s",
            Path(path) / "queries.jsonl",
            len(empty_queries),
            some_names(empty_queries),
        )
    if empty_docs:
        logger.warning(
            "%s: %d judged positives have an empty text (or only whitespace and invisible characters); not trained "
            "on: %s%s",
            Path(path) / "corpus.jsonl",
            len(empty_docs),
            some_names(list(empty_docs)),
            f" ({len(emptied)} queries left without a positive skipped: {some_names(emptied)})" if emptied else "",
        )
    if without_positive:  # grades 0 and below mark non-relevant documents
        logger.warning(
            "%s, qrels/%s.tsv: %d of %d judged queries have no document with grade > 0 (a positive); skipped",
            path,
            split,
            without_positive,
            judged_queries,
        )
    return builder.build([f"{path}:{split}"], [ds.split_record(trained)])


def unique_data_paths(paths: Sequence[str | os.PathLike[str]], split: str = "train") -> list[str | os.PathLike[str]]:
    """``paths`` without the ones given before (the same resolved path): each drop is logged as a WARNING.

    The same source given twice would count each of its examples twice (every source is read with the one
    ``split``).

    Examples:
        >>> unique_data_paths(["a.jsonl", "./a.jsonl", "b.jsonl"])
        ['a.jsonl', 'b.jsonl']
    """
    seen: dict[Path, str | os.PathLike[str]] = {}
    for path in paths:
        key = user_path(path).resolve()
        if key in seen:
            logger.warning(
                "training data %s is given more than once (as %s%s); its repeat is dropped (each of its examples "
                "would count twice)",
                path,
                seen[key],
                f", split {split}" if key.is_dir() else "",
            )
            continue
        seen[key] = path
    return list(seen.values())


def load_training_data(
    paths: Sequence[str | os.PathLike[str]], split: str = "train", *, unknown_docs: str = "error"
) -> TrainingSet:
    """Load and merge several sources: BEIR folders (``split``) and ``.jsonl`` files.

    ``unknown_docs`` applies to the BEIR folders' qrels (see :func:`from_beir`). A source given twice (the
    same resolved path) is read once, with a warning (:func:`unique_data_paths`).

    Examples:
        >>> ts = load_training_data(["../shared/datasets/scifact"])  # doctest: +SKIP
    """
    if not paths:
        raise ValueError("no training data given")
    result: TrainingSet | None = None
    for path in unique_data_paths(paths, split):
        p = Path(path)
        if p.is_dir():
            ts = from_beir(p, split, unknown_docs=unknown_docs)
        elif p.is_file():
            ts = read_jsonl(p)
        else:
            raise FileNotFoundError(f"training data not found: {p} (give a BEIR folder or a .jsonl file)")
        logger.info("loaded %s from %s", ts, p)
        result = ts if result is None else result.merge(ts)
    assert result is not None
    if not result.examples:
        raise ValueError(
            f"no training examples (queries with a positive) in {', '.join(str(p) for p in paths)}: "
            f"{len(result.queries)} queries with a positive, {len(result.docs)} documents (a BEIR query needs a "
            "judged document with grade > 0; grades 0 and below are not positives)"
        )
    return result


#: What mining does with the negatives a row already has (``existing=`` of the mining functions, ``--mine-mode``).
MINE_MODES = ("keep", "append", "replace")


def _mine_mode(existing: str | None, replace: bool | None) -> str:
    """The mining mode: ``existing`` (default ``"keep"``), or the one ``replace`` (the older switch) names.

    Examples:
        >>> _mine_mode(None, True), _mine_mode("append", False), _mine_mode(None, None)
        ('replace', 'append', 'keep')
        >>> _mine_mode("keep", True)
        Traceback (most recent call last):
        ValueError: existing='keep' and replace=True (existing='replace') disagree; give one of them

    Raises:
        ValueError: ``existing`` is not one of :data:`MINE_MODES`, or ``replace`` names another mode.
        TypeError: ``replace`` is not a bool or ``None`` (:func:`~kl_retrievers._checks.check_bool`).
    """
    if existing is not None and existing not in MINE_MODES:
        raise ValueError(f"existing must be one of {MINE_MODES}; got {existing!r}")
    if replace is None:
        return existing or "keep"
    check_bool(replace, "replace", allow_none=True)
    named = "replace" if replace else "append"
    if existing is not None and existing != named:
        raise ValueError(f"existing={existing!r} and replace={replace} (existing={named!r}) disagree; give one of them")
    return named


def _check_mine_k(k: Any) -> None:
    """Refuse a mining depth ``k`` that is not an integer >= 1 (bool and float included).

    Examples:
        >>> _check_mine_k(2.5)
        Traceback (most recent call last):
        ValueError: k (negatives mined per query) must be an integer >= 1; got 2.5
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (negatives mined per query) must be an integer >= 1; got {k!r}")


def _rows_to_mine(ts: TrainingSet, mode: str) -> list[TrainExample]:
    """The examples mining changes: every one, or (``keep``) those without a negative of their own."""
    return [ex for ex in ts.examples if mode != "keep" or not ex.negatives]


def _set_mined(ex: TrainExample, new: list[int], mode: str) -> str:
    """Give ``ex`` its mined negatives ``new``; returns what happened: ``mined``, ``replaced`` or ``none``.

    ``replace`` drops the given negatives and their teacher scores; ``append`` and ``keep`` (a row without
    negatives) add the mined ones after them. A row where mining found nothing keeps what it had.
    """
    if not new:
        return "none"
    had = bool(ex.negatives)
    ex.negatives = new if mode == "replace" else ex.negatives + new
    ex.teacher_negatives = None  # the mined negatives have no teacher score yet
    return "replaced" if had and mode == "replace" else "mined"


def _log_mining(what: str, ts: TrainingSet, k: int, mode: str, outcomes: list[str]) -> None:
    """One INFO line with the counts of a mining pass, and a WARNING for the queries mining found nothing (new) for;
    a WARNING instead when ``keep`` left no query to mine (every one has given negatives)."""
    total = len(ts.examples)
    if not outcomes and total and mode == "keep":
        logger.warning(
            "%s mining changed nothing: all %d queries have given negatives, and existing negatives 'keep' mines "
            "only queries without any; to add mined negatives use 'append' or 'replace' (--mine-mode "
            "append|replace, existing= of the mining functions)",
            what,
            total,
        )
        return
    mined, replaced, none = (outcomes.count(x) for x in ("mined", "replaced", "none"))
    # append skips the negatives a query holds: finding none of its own is finding nothing new
    nothing = "nothing new" if mode == "append" else "none"
    logger.info(
        "mined %s negatives (k=%d, existing negatives: %s) for %d of %d queries (%d of them replacing given ones); "
        "%d kept their given negatives unmined; mining found %s for %d",
        what,
        k,
        mode,
        mined + replaced,
        total,
        replaced,
        total - len(outcomes),
        nothing,
        none,
    )
    if none:
        logger.warning(
            "%s mining found %s for %d of %d queries (e.g. a query that shares no word with the other "
            "documents); they keep the negatives they had, and a query without any trains with random pool "
            "documents as negatives",
            what,
            "no new negative" if mode == "append" else "no negative",
            none,
            len(outcomes),
        )


def mine_negatives_from_scores(
    ts: TrainingSet,
    score_fn: Callable[[list[int]], np.ndarray],
    k: int = 30,
    *,
    batch_size: int = 256,
    existing: str | None = None,
    replace: bool | None = None,
    desc: str = "Mining negatives",
    show_progress: bool = True,
) -> None:
    """Mine the top-``k`` non-positive documents by ``score_fn`` as negatives.

    Negatives given with the data are not silently discarded: by default (``existing="keep"``) an example
    that has negatives keeps them and their teacher scores and is not mined; only examples without any get
    mined ones. An example where mining finds nothing keeps what it had. The counts are logged.

    Args:
        ts: Training set, changed in place (a mined example's teacher scores of negatives are dropped).
        score_fn: Query indices -> ``(len, n_docs)`` scores (higher is better), e.g. exact -KL.
        k: Negatives mined per query.
        batch_size: Queries per ``score_fn`` call.
        existing: What happens to the negatives an example already has: ``"keep"`` them (the default, ``None``:
            mine only examples without negatives), ``"append"`` ``k`` mined ones after them, or ``"replace"``
            them (and their teacher scores) with the mined ones. When every example has negatives, ``"keep"``
            mines nothing (``score_fn`` is not called) and says so in a WARNING.
        replace: The older switch: ``True`` is ``"replace"``, ``False`` is ``"append"``; given with an
            ``existing`` that names another mode, it is refused.
        desc: Progress bar label.
        show_progress: Show the progress bar.

    Raises:
        ValueError: ``k`` is not an integer >= 1, ``existing`` is not one of :data:`MINE_MODES`, or ``replace``
            names another mode than ``existing``.
        TypeError: ``replace`` is not a bool or ``None``.
    """
    _check_mine_k(k)
    mode = _mine_mode(existing, replace)
    examples = _rows_to_mine(ts, mode)
    if not examples:  # score_fn is not called (a lazy one encodes nothing)
        _log_mining("model", ts, k, mode, [])
        return
    positives = ts.positives_by_query()  # every judged positive of the query text, over all its examples
    outcomes: list[str] = []
    batches = range(0, len(examples), batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress_enabled(show_progress)):
        chunk = examples[start : start + batch_size]
        scores = np.asarray(score_fn([ex.query for ex in chunk]), dtype=np.float64)
        # deep enough for k new ones past the positives and (append) the negatives already held
        skip = max(len(positives[ex.query]) + (len(ex.negatives) if mode == "append" else 0) for ex in chunk)
        depth = min(scores.shape[1], k + skip)
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        for row, ex in enumerate(chunk):
            cand = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
            pos = positives[ex.query]
            held = set(ex.negatives) if mode == "append" else set()
            new = [int(d) for d in cand if int(d) not in pos and int(d) not in held][:k]
            outcomes.append(_set_mined(ex, new, mode))
    _log_mining("model", ts, k, mode, outcomes)


def mine_bm25_negatives(
    ts: TrainingSet, k: int = 30, *, existing: str | None = None, replace: bool | None = None
) -> None:
    """Mine hard negatives with BM25 (bm25s, k1 0.9, b 0.4, English stop-words) over the pool.

    Only documents sharing a word with the query are mined. ``existing`` and ``replace`` decide what happens
    to the negatives an example already has, as in :func:`mine_negatives_from_scores` (default: an example
    with negatives keeps them and their teacher scores; only examples without any are mined).

    Raises:
        ValueError: ``k``, ``existing`` or ``replace`` is refused, as by :func:`mine_negatives_from_scores`.
        TypeError: ``replace`` is not a bool or ``None``.

    Examples:
        >>> mine_bm25_negatives(ts, k=20)  # doctest: +SKIP
    """
    _check_mine_k(k)
    mode = _mine_mode(existing, replace)
    require_train_extra("mine_bm25_negatives (BM25 hard negatives)", "bm25s")
    import bm25s

    examples = _rows_to_mine(ts, mode)
    if not examples:
        _log_mining("BM25", ts, k, mode, [])
        return
    quiet_bm25s_logger()  # it logs index building at DEBUG (a level the user set is kept)
    tokens = bm25s.tokenize(ts.docs, stopwords="en", show_progress=False)
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index(tokens, show_progress=False)
    positives = ts.positives_by_query()  # every judged positive of the query text, over all its examples
    # deep enough for k new ones past the positives and (append) the negatives already held
    skip = max(len(positives[ex.query]) + (len(ex.negatives) if mode == "append" else 0) for ex in examples)
    depth = min(len(ts.docs), k + skip)
    q_tokens = bm25s.tokenize([ts.queries[ex.query] for ex in examples], stopwords="en", show_progress=False)
    idx, scores = retriever.retrieve(q_tokens, k=depth, show_progress=False, n_threads=0)
    outcomes = []
    for row, ex in enumerate(examples):
        pos = positives[ex.query]
        held = set(ex.negatives) if mode == "append" else set()
        new = [int(d) for d, s in zip(idx[row], scores[row], strict=True) if s > 0 and int(d) not in pos]
        outcomes.append(_set_mined(ex, [d for d in new if d not in held][:k], mode))
    _log_mining("BM25", ts, k, mode, outcomes)
