"""Loading retrieval collections in the BEIR layout.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line),
``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (header
``query-id  corpus-id  score``; a higher score means more relevant).  A qrels file
without that header may instead hold TREC qrels, ``qid  iteration  docid  grade``
(tab-separated).  Every problem with the input - a missing file, a malformed line,
an id with leading or trailing whitespace, a judgement naming an unknown query or
document - raises :class:`DatasetError` naming the file and, where it applies, the
line number.

Examples:
    >>> from kl_retrievers.datasets import load_beir  # doctest: +SKIP
    >>> data = load_beir("../shared/datasets/scifact", split="test")  # doctest: +SKIP
    >>> len(data.corpus), len(data.queries)  # doctest: +SKIP
    (5183, 300)
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kl_retrievers._errors import KLRetrieversError

__all__ = [
    "DatasetError",
    "BeirDataset",
    "load_beir",
    "available_splits",
    "document_text",
    "file_fingerprint",
    "fetch_beir",
    "BEIR_URL",
    "LOCAL_COPY_ENV",
]

logger = logging.getLogger(__name__)

#: Where the public BEIR collections are downloaded from (``{name}`` is e.g. ``scifact``).
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
#: A folder holding local copies of collections as ``<folder>/<name>/`` (used before any download; set to an empty
#: or blank value, only spaces, it counts as unset, like the package's other folder variables).
LOCAL_COPY_ENV = "KL_RETRIEVERS_DATA"
#: The folder downloads go to when no ``root`` is given (default ``~/.cache/kl_retrievers/datasets``).
DOWNLOAD_ROOT_ENV = "KL_RETRIEVERS_DATASET_CACHE"
_OFFLINE_ENVS = ("KL_RETRIEVERS_OFFLINE", "HF_HUB_OFFLINE")

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"


class DatasetError(KLRetrieversError, ValueError):
    """A BEIR folder is missing a file or holds a malformed or inconsistent line.

    The message names the file and, where it applies, the 1-based line number. An error that one
    :func:`load_beir` keyword avoids carries it in :attr:`option` (``(keyword, value)``) and ends its
    message with ``pass keyword='value'`` and what that does; :meth:`describe` spells the option
    another way, so a command line names its own flag without rewriting the message's text.

    Attributes:
        path: The file or folder at fault, or ``None``.
        line: The 1-based line number, or ``None``.
        reason: The message without the location and the option.
        option: The ``load_beir`` keyword and value that avoid the error, or ``None``.
        option_effect: What passing :attr:`option` does (e.g. ``"to skip ..."``); empty without one.

    Examples:
        >>> str(DatasetError("bad", path="qrels/test.tsv", line=3))
        'qrels/test.tsv, line 3: bad'
        >>> err = DatasetError("unknown id", option=("unknown_docs", "drop"), option_effect="to skip it")
        >>> str(err)
        "unknown id; pass unknown_docs='drop' to skip it"
        >>> err.describe(lambda keyword, value: f"--{keyword.replace('_', '-')} {value}")
        'unknown id; pass --unknown-docs drop to skip it'
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        line: int | None = None,
        option: tuple[str, str] | None = None,
        option_effect: str = "",
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        self.option = option
        self.option_effect = option_effect
        super().__init__(self.describe())

    def describe(self, spell_option: Callable[[str, str], str] | None = None) -> str:
        """The message, with :attr:`option` spelled by ``spell_option(keyword, value)``.

        Args:
            spell_option: Spells the option (e.g. as a command-line flag); ``None`` spells it as
                the Python keyword argument, ``keyword='value'`` (what ``str(error)`` holds).

        Returns:
            The location, the reason and, with an option, ``"; pass <option> <option_effect>"``.
        """
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}, line {self.line}"
        message = f"{where}: {self.reason}" if where else self.reason
        if self.option is None:
            return message
        keyword, value = self.option
        spelled = spell_option(keyword, value) if spell_option is not None else f"{keyword}={value!r}"
        return f"{message}; pass {spelled} {self.option_effect}".rstrip()


def document_text(doc: dict[str, str]) -> str:
    """The text an encoder sees for one document: ``title + " " + text`` (stripped).

    Args:
        doc: A corpus entry with ``"text"`` and optionally ``"title"``.

    Returns:
        The title and text joined by one space, or the text alone when there is no title.

    Examples:
        >>> document_text({"title": " A title ", "text": "Body. "})
        'A title Body.'
        >>> document_text({"title": "", "text": "Body."})
        'Body.'
    """
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of a file for caches: resolved path, size in bytes and mtime in ns.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "f.txt").write_text("abc")
        ...     size = file_fingerprint(Path(tmp) / "f.txt")["size"]
        >>> size
        3
    """
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


@dataclass
class BeirDataset:
    """One split of a BEIR collection held in memory.

    Attributes:
        path: The collection folder.
        split: The qrels split that was loaded (e.g. ``"test"``).
        corpus: Document id -> ``{"title": ..., "text": ...}``, in file order.
        queries: Query id -> text, restricted to the queries judged in ``split``.
        qrels: Query id -> {document id: relevance grade}.
        dropped_judgements: The judgements :func:`load_beir` left out of :attr:`qrels` with
            ``unknown_docs="drop"`` because they name documents outside the corpus: ``(query id, document id,
            grade)`` in file order, each once (a line repeating one is not listed again; two different grades of
            one pair, which the loader does not compare for a pair it drops, are both listed). Empty when
            nothing was dropped; :meth:`subset` keeps those of its queries.

    A model trained on a split keeps :meth:`split_record` of it (its folder name, split and query texts' SHA-256)
    in its training record; :meth:`find_split_record` says whether such a record names this split.

    Examples:
        >>> ds = BeirDataset(Path("."), "test", {"d1": {"title": "T", "text": "x"}}, {"q1": "x?"}, {"q1": {"d1": 1}})
        >>> ds.doc_ids, ds.document_texts()
        (['d1'], ['T x'])
    """

    path: Path
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    #: Extra identity for caches when the dataset is a subset of the files on disk.
    subset_tag: str | None = field(default=None)
    dropped_judgements: tuple[tuple[str, str, int], ...] = field(default=())

    @property
    def doc_ids(self) -> list[str]:
        """Document ids in corpus order."""
        return list(self.corpus)

    @property
    def query_ids(self) -> list[str]:
        """Query ids in file order."""
        return list(self.queries)

    def document_texts(self, ids: Iterable[str] | None = None) -> list[str]:
        """Encoder input for documents (``title + " " + text``), in corpus order or for ``ids``."""
        chosen = self.corpus if ids is None else ids
        return [document_text(self.corpus[i]) for i in chosen]

    def query_texts(self, ids: Iterable[str] | None = None) -> list[str]:
        """Query texts in file order or for ``ids``."""
        chosen = self.queries if ids is None else ids
        return [self.queries[i] for i in chosen]

    def corpus_identity(self) -> dict[str, Any]:
        """What identifies this corpus for an encoding cache: the SHA-256 of its encoder inputs and its doc ids.

        The key is the content, not the file: a copied, re-mounted or touched corpus keeps its cached
        encodings, and an edited one (even with the same size and time stamp) does not.

        Examples:
            >>> ds = BeirDataset(Path("."), "test", {"d1": {"text": "x"}}, {"q1": "x?"}, {"q1": {"d1": 1}})
            >>> sorted(ds.corpus_identity())
            ['doc_ids_sha1', 'texts_sha256']
        """
        return {"texts_sha256": _sha256_texts(self.document_texts()), "doc_ids_sha1": _sha1_lines(self.corpus)}

    def queries_identity(self) -> dict[str, Any]:
        """What identifies the loaded queries for an encoding cache: their texts' SHA-256, ids and split."""
        return {
            "texts_sha256": _sha256_texts(self.query_texts()),
            "split": self.split,
            "query_ids_sha1": _sha1_lines(self.queries),
        }

    def split_record(self, queries_used: int | None = None) -> dict[str, Any]:
        """What identifies this split in a model's training record (``trained_splits``): the folder's name (not
        its path, which would name the user's folders and differ on another machine), the split, and the SHA-256
        of the split's query texts (:meth:`queries_identity`, of the whole split even when only some of its
        queries were trained on: the same queries under another name).

        With ``queries_used`` (training), also how many of the split's queries were trained on and how many it
        has (``queries_used``, ``queries_total``: its judged queries), so that ``kl-retrievers evaluate`` says how
        many of the queries it scores were trained on. The keys and their order are those of saved models' records.

        Examples:
            >>> ds = BeirDataset(Path("data/scifact"), "train", {}, {"q": "x", "r": "y"}, {"q": {}, "r": {}})
            >>> record = ds.split_record(1)
            >>> record["dataset"], record["split"], len(record["queries_sha256"])
            ('scifact', 'train', 64)
            >>> record["queries_used"], record["queries_total"]
            (1, 2)
        """
        from kl_retrievers._io import user_path

        record: dict[str, Any] = {
            "dataset": user_path(self.path).resolve().name,
            "split": self.split,
            "queries_sha256": self.queries_identity()["texts_sha256"],
        }
        if queries_used is not None:
            record["queries_used"] = queries_used
            record["queries_total"] = len(self.queries)
        return record

    def find_split_record(self, records: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any], bool, bool] | None:
        """The first of ``records`` (:meth:`split_record`'s, as a model's training record lists them) that names
        this split, with how: ``(record, same_name, same_queries)``, where ``same_name`` says it has this split's
        folder name and split and ``same_queries`` its query texts (a ``dev`` split copied from ``train``, or the
        same queries under another folder name); ``None`` where none does.

        Examples:
            >>> ds = BeirDataset(Path("data/scifact"), "dev", {}, {"q": "x"}, {"q": {}})
            >>> train = {**ds.split_record(), "split": "train"}  # dev: a copy of train's queries
            >>> ds.find_split_record([{"dataset": "nq", "split": "dev", "queries_sha256": "0"}, train])[1:]
            (False, True)
            >>> ds.find_split_record([{"dataset": "scifact", "split": "test", "queries_sha256": "0"}]) is None
            True
        """
        records = list(records)
        if not records:
            return None  # the queries are not hashed
        here = self.split_record()
        for record in records:
            same_name = (record.get("dataset"), record.get("split")) == (here["dataset"], here["split"])
            same_queries = record.get("queries_sha256") == here["queries_sha256"]
            if same_name or same_queries:
                return record, same_name, same_queries
        return None

    def subset(self, query_ids: Iterable[str], doc_ids: Iterable[str]) -> BeirDataset:
        """A smaller dataset with the given queries and documents (qrels restricted to both).

        Queries left with no judged document are dropped. Every id must be one of this dataset's: an
        unknown query or document id (a typo, or an id of another split) is refused, not skipped, as
        :func:`load_beir` refuses a judgement naming one.

        Raises:
            DatasetError: A query id that is not in :attr:`queries` or a document id that is not in
                :attr:`corpus`; the message names the first few and how many there are.

        Examples:
            >>> ds = BeirDataset(Path("."), "test", {"a": {"text": "x"}, "b": {"text": "y"}},
            ...                  {"q": "x"}, {"q": {"a": 1}})
            >>> small = ds.subset(["q"], ["a"])
            >>> small.doc_ids, small.qrels
            (['a'], {'q': {'a': 1}})
        """
        doc_ids = list(doc_ids)
        query_ids = list(query_ids)
        _refuse_unknown("document", doc_ids, self.corpus, self.path, self.split)
        _refuse_unknown("query", query_ids, self.queries, self.path, self.split)
        docs = {d: self.corpus[d] for d in doc_ids}
        qrels: dict[str, dict[str, int]] = {}
        for q in query_ids:
            judged = {d: r for d, r in self.qrels.get(q, {}).items() if d in docs}
            if judged:
                qrels[q] = judged
        queries = {q: self.queries[q] for q in qrels}
        tag = hashlib.sha1(("\n".join(queries) + "\0" + "\n".join(docs)).encode()).hexdigest()[:16]
        dropped = tuple(j for j in self.dropped_judgements if j[0] in queries)
        return BeirDataset(self.path, self.split, docs, queries, qrels, subset_tag=tag, dropped_judgements=dropped)

    def __repr__(self) -> str:
        return (
            f"BeirDataset(path={str(self.path)!r}, split={self.split!r}, docs={len(self.corpus)}, "
            f"queries={len(self.queries)}, judgements={sum(len(v) for v in self.qrels.values())})"
        )


def _refuse_unknown(what: str, ids: list[str], known: dict[str, Any], path: Path, split: str) -> None:
    """Raise :class:`DatasetError` naming the first few of ``ids`` that are not keys of ``known``."""
    unknown = [i for i in dict.fromkeys(ids) if i not in known]
    if not unknown:
        return
    shown = ", ".join(repr(i) for i in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    where = "corpus" if what == "document" else f"queries of split {split!r}"
    raise DatasetError(
        f"subset: {len(unknown)} {what} id(s) not in the dataset's {where} ({len(known)} ids): {shown}; "
        f"pass only ids of this dataset ({'doc_ids' if what == 'document' else 'query_ids'})",
        path=path,
    )


def _sha256_texts(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))  # length-prefixed: no two lists hash alike by concatenation
        h.update(b)
    return h.hexdigest()


def _sha1_lines(ids: Iterable[str]) -> str:
    h = hashlib.sha1()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        _refuse_compressed(path, what)
        raise DatasetError(
            f"{what} not found (expected a BEIR folder with {CORPUS_FILE}, {QUERIES_FILE}, qrels/)", path=path
        )


def _refuse_compressed(path: Path, what: str) -> None:
    """Say so when a missing ``path`` is there compressed (``corpus.jsonl.gz``): it is read only decompressed."""
    for suffix, tool in ((".gz", "gunzip"), (".bz2", "bunzip2"), (".xz", "unxz"), (".zst", "unzstd")):
        packed = path.with_name(path.name + suffix)
        if packed.is_file():
            raise DatasetError(
                f"{what} not found, but {packed.name} is there: compressed files are not supported; "
                f"decompress it first ({tool} -k {packed})",
                path=path,
            )


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file, a leading byte order mark skipped.

    Each line is decoded on its own, so a byte that is not UTF-8 raises :class:`DatasetError`
    naming its line (and column), not a bare ``UnicodeDecodeError``.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     f = Path(tmp) / "q.tsv"
        ...     _ = f.write_bytes(b"\\xef\\xbb\\xbfa\\r\\nb\\xe9\\n")
        ...     list(_iter_lines(f))
        Traceback (most recent call last):
        kl_retrievers.datasets.DatasetError: .../q.tsv, line 2: not UTF-8 text (byte 0xe9 at column 2); ...
    """
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); save the file as UTF-8",
                    path=path,
                    line=lineno,
                ) from None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSON Lines file.

    A malformed line raises :class:`DatasetError` naming its line and the column within that line
    (the line ending is not part of the JSON text, so an object cut short is reported at the end
    of its own line, not at column 1 of the next).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     f = Path(tmp) / "c.jsonl"
        ...     _ = f.write_text('{"_id": "d1", "text": "x"}\\n{"_id": "d2", "text": "y"\\n')
        ...     list(_iter_jsonl(f))
        Traceback (most recent call last):
        kl_retrievers.datasets.DatasetError: .../c.jsonl, line 2: malformed JSON (Expecting ',' delimiter at column 26)
    """
    for lineno, raw in _iter_lines(path):
        if not raw.strip():
            continue
        text = raw.rstrip("\r\n")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"malformed JSON ({exc.msg} at column {exc.colno})", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise DatasetError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        yield lineno, obj


def _get_id(obj: dict[str, Any], path: Path, lineno: int) -> str:
    if "_id" not in obj:
        raise DatasetError('missing "_id" field', path=path, line=lineno)
    ident = obj["_id"]
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        got = "null" if ident is None else type(ident).__name__
        raise DatasetError(f'"_id" must be a string or an integer, got {got}', path=path, line=lineno)
    ident = str(ident)
    if not ident.strip():
        raise DatasetError('"_id" is empty', path=path, line=lineno)
    if ident != ident.strip():
        # Refused rather than stripped: qrels columns are stripped, so "d1 " could never be judged, and
        # stripping it here could merge it with a "d1" on another line and would change the id the
        # evaluation breaks score ties on.
        raise DatasetError(
            f'"_id" {ident!r} has leading or trailing whitespace; qrels columns are read stripped, '
            "so this id could never be judged: remove the spaces",
            path=path,
            line=lineno,
        )
    return ident


def _get_str(obj: dict[str, Any], key: str, path: Path, lineno: int, required: bool) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DatasetError(f'missing "{key}" field', path=path, line=lineno)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DatasetError(f'"{key}" must be a string, got {type(value).__name__}', path=path, line=lineno)
    return value


def _load_corpus(path: Path) -> dict[str, dict[str, str]]:
    corpus: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in _iter_jsonl(path):
        doc_id = _get_id(obj, path, lineno)
        if doc_id in corpus:
            raise DatasetError(
                f"duplicate document id {doc_id!r} (first on line {first_line[doc_id]})", path=path, line=lineno
            )
        first_line[doc_id] = lineno
        corpus[doc_id] = {
            "title": _get_str(obj, "title", path, lineno, required=False),
            "text": _get_str(obj, "text", path, lineno, required=True),
        }
    if not corpus:
        raise DatasetError("the corpus is empty", path=path)
    return corpus


def _load_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in _iter_jsonl(path):
        qid = _get_id(obj, path, lineno)
        if qid in queries:
            raise DatasetError(f"duplicate query id {qid!r} (first on line {first_line[qid]})", path=path, line=lineno)
        first_line[qid] = lineno
        queries[qid] = _get_str(obj, "text", path, lineno, required=True)
    return queries


_QRELS_HEADER_IDS = ("query-id", "query_id", "qid")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _qrels_columns(cols: list[str], trec: bool | None, has_header: bool, path: Path, lineno: int) -> list[str]:
    """``[qid, doc id, grade]`` of one qrels line split on tabs (not yet stripped).

    ``trec`` is the file's layout, fixed by its first well-formed judgement (``None`` before it): BEIR
    ``query-id corpus-id score`` or TREC ``qid iteration docid grade``. A file with the BEIR
    header is BEIR; a headerless file is TREC when its first judgement has 4 columns and a
    numeric 4th. Every other line must have the same layout, so a BEIR line with a trailing tab
    or an extra column is an error, never a TREC line that names the grade as a document.
    """
    n = len(cols)
    if trec:
        if n == 4:
            return [cols[0], cols[2], cols[3]]
        got = f"{n} columns (trailing tab?)" if n == 5 and not cols[4].strip() else f"{n} column(s)"
        raise DatasetError(
            f"expected 4 tab-separated columns (TREC qrels: qid, iteration, docid, grade, as on the first "
            f"judgement), got {got}",
            path=path,
            line=lineno,
        )
    if n == 3:
        return cols
    if n == 4 and not cols[3].strip():
        hint = "4 columns (trailing tab?)"
    elif n == 4 and has_header:
        hint = (
            "4 columns (TREC qrels, qid iteration docid grade, go in a file without the BEIR header "
            "query-id corpus-id score)"
        )
    elif n == 4 and trec is False:
        hint = "4 columns (the first judgement had 3, so the file is read as BEIR query-id, corpus-id, score)"
    elif n == 4:
        hint = "4 columns (read as TREC qrels only when the 4th, the grade, is a number)"
    else:
        hint = f"{n} column(s)"
    fields = "\t".join(cols).split()
    if n < 3 and len(fields) in (3, 4):  # NIST's qrels are space-separated: "q1 0 d1 1"
        hint += (
            f"; spaces were found between its {len(fields)} fields, but columns must be tab-separated (NIST's "
            "TREC qrels are space-separated: convert the spaces to tabs, e.g. tr ' ' '\\t')"
        )
    raise DatasetError(
        f"expected 3 tab-separated columns (query-id, corpus-id, score), got {hint}", path=path, line=lineno
    )


def _near_miss(ident: str, known: Iterable[str], source: str = "the file of ids") -> str:
    """A hint naming the id of ``known`` that ``ident`` misses only by its form, and the fix; ``""`` when none.

    Ids are compared exactly as written; the hint names an id that is the same after Unicode NFC
    normalisation, else one that is the same after case folding (``"Straße"`` against ``"strasse"``),
    else (a number) one without its leading zeros. An id with a character outside ASCII is also shown
    as ``ascii()`` writes it (``known``'s as in ``source``), so that two ids that look alike can be told apart.

    Examples:
        >>> _near_miss("07", ["7", "8"])
        "; did you mean '7'? (the same number with other leading zeros; ids are compared as written: write them alike)"
        >>> _near_miss("cafe\u0301", ["CAFÉ", "caf\u00e9"])[:95]
        "; did you mean 'café'? ('caf\\\\xe9' in the file of ids, 'cafe\\\\u0301' here: the same id in another"
        >>> _near_miss("x", ["y"])
        ''
    """
    known = list(known)
    nfc = unicodedata.normalize("NFC", ident)
    folded = nfc.casefold()
    number = (ident.lstrip("0") or "0") if ident.isascii() and ident.isdigit() else None
    tests = (
        (
            lambda other: unicodedata.normalize("NFC", other) == nfc,
            "the same id in another Unicode normal form (NFC against NFD), and ids are compared as written: "
            "normalise the ids of both files to one form, e.g. unicodedata.normalize('NFC', id)",
        ),
        (
            lambda other: unicodedata.normalize("NFC", other).casefold() == folded,
            "the same id when case-folded (another case, or a letter such as 'ß' written 'ss'); ids are compared "
            "as written: write them alike",
        ),
        (
            lambda other: (
                number is not None and other.isascii() and other.isdigit() and (other.lstrip("0") or "0") == number
            ),
            "the same number with other leading zeros; ids are compared as written: write them alike",
        ),
    )
    for matches, why in tests:
        for other in known:
            if other != ident and matches(other):
                shown = "" if ident.isascii() and other.isascii() else f"{other!a} in {source}, {ident!a} here: "
                return f"; did you mean {other!r}? ({shown}{why})"
    return ""


def _load_qrels(
    path: Path,
    queries: dict[str, str],
    corpus: dict[str, dict[str, str]],
    unknown_docs: str,
) -> tuple[dict[str, dict[str, int]], tuple[tuple[str, str, int], ...]]:
    """The qrels of ``path``, and the judgements ``unknown_docs="drop"`` left out (``dropped_judgements``)."""
    qrels: dict[str, dict[str, int]] = {}
    dropped: dict[tuple[str, str, int], None] = {}  # distinct, in file order
    emptied: set[str] = set()  # queries every judgement of which named an unknown document
    seen: dict[tuple[str, str], int] = {}
    first = True  # before the first non-blank line (the only place a header may be)
    has_header = False
    trec: bool | None = None  # the file's layout, fixed by its first judgement
    for lineno, raw in _iter_lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        cols = line.split("\t")
        if first:
            first = False
            # a header names its columns (query-id corpus-id score); a first line whose grade is a number
            # is a judgement, even of a query whose id is literally "qid" or "query-id"
            if cols[0].strip().lower() in _QRELS_HEADER_IDS and not (len(cols) >= 3 and _is_number(cols[-1].strip())):
                has_header = True
                continue
        if trec is None:  # the first judgement fixes the layout (a malformed one raises below)
            if not has_header and len(cols) == 4 and _is_number(cols[3].strip()):
                trec = True
            elif len(cols) == 3:
                trec = False
        qid, doc_id, score_s = (c.strip() for c in _qrels_columns(cols, trec, has_header, path, lineno))
        try:
            score = int(score_s)
        except ValueError:
            try:
                score_f = float(score_s)
            except ValueError:
                raise DatasetError(f"score {score_s!r} is not a number", path=path, line=lineno) from None
            if not score_f.is_integer():
                raise DatasetError(f"score {score_s!r} is not an integer grade", path=path, line=lineno) from None
            score = int(score_f)
        if qid not in queries:
            raise DatasetError(
                f"unknown query id {qid!r} (not in {QUERIES_FILE}){_near_miss(qid, queries, QUERIES_FILE)}",
                path=path,
                line=lineno,
            )
        if doc_id not in corpus:
            if unknown_docs == "drop":
                dropped[(qid, doc_id, score)] = None
                if qid not in qrels:
                    emptied.add(qid)
                continue
            hint = _near_miss(doc_id, corpus, CORPUS_FILE)
            raise DatasetError(
                f"unknown document id {doc_id!r} (not in {CORPUS_FILE}){hint}",
                path=path,
                line=lineno,
                option=("unknown_docs", "drop"),
                option_effect="to skip judgements of documents outside the corpus"
                + (" instead (this one would be lost)" if hint else ""),
            )
        key = (qid, doc_id)
        if key in seen and qrels[qid][doc_id] != score:
            raise DatasetError(
                f"conflicting grades for ({qid!r}, {doc_id!r}): {qrels[qid][doc_id]} on line {seen[key]}, {score} here",
                path=path,
                line=lineno,
            )
        seen[key] = lineno
        qrels.setdefault(qid, {})[doc_id] = score
    emptied -= set(qrels)
    if dropped:
        kept = (
            f"; {len(emptied)} query(ies) judged only such documents are kept with no judgements and score 0 "
            "(as with the full qrels)"
            if emptied
            else ""
        )
        logger.warning("%s: dropped %d judgement(s) of documents not in the corpus%s", path, len(dropped), kept)
    if not qrels:
        outside = f" (all {len(dropped)} name documents outside the corpus)" if dropped else ""
        raise DatasetError(f"no judgements found{outside}", path=path)
    for qid in queries:  # in queries.jsonl order, after the judged ones
        if qid in emptied:
            qrels[qid] = {}
    return qrels, tuple(dropped)


def available_splits(path: str | os.PathLike[str]) -> list[str]:
    """The qrels splits of a BEIR folder (names of ``qrels/*.tsv``), sorted.

    Args:
        path: The collection folder.

    Returns:
        Split names such as ``["test", "train"]``.

    Raises:
        DatasetError: If the folder or its ``qrels`` directory does not exist.

    Examples:
        >>> available_splits("../shared/datasets/scifact")  # doctest: +SKIP
        ['test', 'train']
    """
    qdir = Path(path) / QRELS_DIR
    if not qdir.is_dir():
        raise DatasetError("qrels directory not found", path=qdir)
    return sorted(p.stem for p in qdir.glob("*.tsv") if p.is_file())


def _split_path(root: Path, split: str) -> Path:
    """``root/qrels/<split>.tsv``, for a split that names one of the folder's own qrels files.

    A split is a file name, not a path: one holding ``/``, ``\\`` or ``..`` (which would read
    qrels from outside ``qrels/``, even another collection's) or naming no ``qrels/*.tsv`` is
    refused, the message listing the available splits.

    Examples:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> (Path(tmp.name) / "qrels").mkdir()
        >>> _ = (Path(tmp.name) / "qrels" / "test.tsv").write_text("q\\td\\t1\\n")
        >>> _split_path(Path(tmp.name), "test").name
        'test.tsv'
        >>> _split_path(Path(tmp.name), "../../other/qrels/test")
        Traceback (most recent call last):
        kl_retrievers.datasets.DatasetError: .../qrels: split '../../other/qrels/test' is not a split name ...
        >>> tmp.cleanup()
    """
    qdir = root / QRELS_DIR
    splits = available_splits(root) if qdir.is_dir() else []
    if not isinstance(split, str) or not split or any(bad in split for bad in ("/", "\\", "..", "\0")):
        raise DatasetError(
            f"split {split!r} is not a split name (a file qrels/<split>.tsv of this folder; no '/', '\\' or "
            f"'..'); available splits: {splits}",
            path=qdir,
        )
    qrels_path = qdir / f"{split}.tsv"
    if not qrels_path.is_file():
        _refuse_compressed(qrels_path, f"qrels for split {split!r}")
    if not qrels_path.is_file() or split not in splits:
        raise DatasetError(f"qrels for split {split!r} not found; available splits: {splits}", path=qrels_path)
    return qrels_path


def load_beir(path: str | os.PathLike[str], split: str = "test", *, unknown_docs: str = "error") -> BeirDataset:
    """Load one split of a BEIR folder.

    Args:
        path: Folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: Which qrels file to read: the name of one of ``qrels/*.tsv`` (:func:`available_splits`;
            a path such as ``../other/qrels/test`` is refused).
        unknown_docs: ``"error"`` (default) raises on a judgement naming a document that is
            not in the corpus; ``"drop"`` skips such judgements with a warning (useful for
            pooled collections whose official qrels judge documents outside the pool) and lists them
            in :attr:`BeirDataset.dropped_judgements`. A query whose every judgement is dropped stays,
            with empty qrels: it scores 0, as it would with the full qrels, rather than leaving the mean.

    Returns:
        The corpus, the judged queries of ``split`` and their qrels (a file's UTF-8 byte order
        mark is skipped).

    Raises:
        DatasetError: On a split that is not one of the folder's, a missing file, a line that is
            not UTF-8 or is malformed, duplicate ids, an id with leading or trailing whitespace, a
            qrels line whose columns do not fit the file's layout (BEIR 3 columns, or headerless
            TREC 4), or qrels naming an unknown query (or document, unless ``unknown_docs="drop"``).

    Examples:
        >>> data = load_beir("../shared/datasets/scifact", "test")  # doctest: +SKIP
        >>> data  # doctest: +SKIP
        BeirDataset(path='../shared/datasets/scifact', split='test', docs=5183, queries=300, judgements=339)
    """
    if unknown_docs not in ("error", "drop"):
        raise ValueError(f"unknown_docs must be 'error' or 'drop', got {unknown_docs!r}")
    root = Path(path)
    if root.is_file():
        raise DatasetError(
            f"is a file, not a folder: give the BEIR folder that holds {CORPUS_FILE}, {QUERIES_FILE} and "
            "qrels/<split>.tsv",
            path=root,
        )
    if not root.is_dir():
        raise DatasetError("dataset folder not found", path=root)
    corpus_path, queries_path = root / CORPUS_FILE, root / QUERIES_FILE
    _require_file(corpus_path, "corpus file")
    _require_file(queries_path, "queries file")
    qrels_path = _split_path(root, split)
    corpus = _load_corpus(corpus_path)
    all_queries = _load_queries(queries_path)
    qrels, dropped = _load_qrels(qrels_path, all_queries, corpus, unknown_docs)
    queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
    ds = BeirDataset(root, split, corpus, queries, qrels, dropped_judgements=dropped)
    logger.info("loaded %r", ds)
    return ds


def _is_beir_folder(path: Path) -> bool:
    return (path / CORPUS_FILE).is_file() and (path / QUERIES_FILE).is_file() and (path / QRELS_DIR).is_dir()


def _offline() -> str | None:
    for env in _OFFLINE_ENVS:
        if os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on"):
            return env
    return None


def _extract_beir_zip(archive: Path, name: str, dest: Path) -> None:
    """Unpack the BEIR folder inside ``archive`` (``<name>/...`` or the files at the top) into ``dest``."""
    import zipfile

    from kl_retrievers._io import make_dirs

    if not zipfile.is_zipfile(archive):
        raise DatasetError("not a zip file (the server sent something else)", path=archive)
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        names = [m.filename for m in members]
        prefix = f"{name}/" if f"{name}/{CORPUS_FILE}" in names else ""
        if f"{prefix}{CORPUS_FILE}" not in names:
            raise DatasetError(f"the archive holds no {CORPUS_FILE} (at the top or under {name}/)", path=archive)
        root = dest.resolve()
        for member in members:
            if not member.filename.startswith(prefix):
                continue
            target = (dest / member.filename[len(prefix) :]).resolve()
            if root not in target.parents:
                raise DatasetError(f"unsafe path {member.filename!r} in the archive", path=archive)
            make_dirs(target.parent)  # qrels/ made durable in the folder that is swapped into place
            with zf.open(member) as src, target.open("wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    if not _is_beir_folder(dest):
        raise DatasetError(f"the archive is not a BEIR folder ({CORPUS_FILE}, {QUERIES_FILE}, qrels/)", path=archive)


def fetch_beir(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    local_copy: str | os.PathLike[str] | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """A public BEIR collection on disk: ``root/name`` if there, else a local copy, else downloaded.

    The folder it returns is ready for :func:`load_beir` and ``kl-retrievers evaluate``. In order:

    1. ``root/name`` already holds the collection (an earlier download): it is returned.
    2. A local copy ``local_copy`` (a BEIR folder), or ``$KL_RETRIEVERS_DATA/<name>``, exists: it is
       returned as it is, nothing is copied or downloaded (for CI and offline machines).
       ``KL_RETRIEVERS_DATA`` set to an empty or blank value (only spaces) counts as unset.
    3. Otherwise the public BEIR zip (:data:`BEIR_URL`) is downloaded and
       unpacked into ``root/name`` atomically. Setting ``KL_RETRIEVERS_OFFLINE=1`` (or
       ``HF_HUB_OFFLINE=1``) forbids the download.

    Args:
        name: The BEIR collection's name, e.g. ``"scifact"``, ``"nfcorpus"``, ``"fiqa"``.
        root: The folder downloads go to (default ``$KL_RETRIEVERS_DATASET_CACHE``, else
            ``~/.cache/kl_retrievers/datasets``).
        local_copy: A BEIR folder to use instead of downloading, when it exists.
        url: The zip to download instead of the public BEIR one.
        timeout: Seconds to wait for the server before giving up.

    Returns:
        The collection's folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``).

    Raises:
        DatasetError: If there is no local copy and the download is forbidden or fails; the
            message names the URL and the ways to give a local copy.

    Examples:
        >>> from kl_retrievers.datasets import fetch_beir, load_beir  # doctest: +SKIP
        >>> folder = fetch_beir("scifact", "datasets")  # doctest: +SKIP
        >>> load_beir(folder, "test")  # doctest: +SKIP
        BeirDataset(path='datasets/scifact', split='test', docs=5183, queries=300, judgements=339)
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a BEIR collection name such as 'scifact', got {name!r}")
    from kl_retrievers._io import CacheFolderError, env_value, user_path

    no_root: CacheFolderError | None = None
    try:
        base = Path(root) if root is not None else _download_root()
    except CacheFolderError as exc:  # no home folder: a local copy still does, and the error is raised after them
        base, no_root = Path(), exc
    target = base / name
    if no_root is None and _is_beir_folder(target):
        logger.info("%s: using %s", name, target)
        return target
    candidates = [Path(local_copy)] if local_copy is not None else []
    if (local_root := env_value(LOCAL_COPY_ENV)) is not None:  # blank: unset (not a folder "  " here)
        candidates.append(user_path(local_root) / name)
    for candidate in candidates:
        if _is_beir_folder(candidate):
            logger.info("%s: using the local copy %s", name, candidate)
            return candidate
    if no_root is not None:
        raise no_root
    source = url or BEIR_URL.format(name=name)
    where = f"give a local copy with local_copy=... or ${LOCAL_COPY_ENV}=<folder holding {name}/>"
    if (env := _offline()) is not None:
        raise DatasetError(f"{env} is set, so {source} is not downloaded; {where}", path=target)
    import shutil
    import tempfile
    import urllib.error
    import urllib.request

    from kl_retrievers._io import atomic_dir, make_dirs

    make_dirs(base)  # each new folder synced into its parent: a crash cannot lose the path to the download
    logger.info("%s: downloading %s into %s", name, source, target)
    with tempfile.TemporaryDirectory(dir=base, prefix=f".{name}.download-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DatasetError(f"could not download {source} ({reason}); {where}", path=target) from None
        with atomic_dir(target) as folder:
            _extract_beir_zip(archive, name, folder)
    return target


def _download_root() -> Path:
    from kl_retrievers._io import user_cache_dir

    return user_cache_dir(DOWNLOAD_ROOT_ENV, "datasets")
