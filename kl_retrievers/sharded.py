"""Encode a corpus of any size into shards: streaming, resumable, optionally on Ray.

:func:`encode_corpus` reads a ``.jsonl`` corpus (BEIR ``corpus.jsonl`` or any text field; ``.ndjson``
and ``.json`` too, any case), an MS MARCO-style ``.tsv`` file (``id<TAB>text`` lines, a header line skipped)
or a text file (one text per non-empty line) without loading it:
one pass over the file plans shards of ``shard_size`` records by byte range (and checks every
record as ``kl-retrievers encode`` does, naming its line, and that JSONL and ``.tsv`` ids are unique), then each
shard is read, encoded and written on its own, so memory is bounded by one shard per worker.
The output folder holds:

* ``manifest.json``: the input file's SHA-256 and size, the model (its name, fingerprint, backend and,
  where known, the identity of its weights, ``model_weights_sha256``, its encoder config, ``model_config``,
  and its tokenizer's SHA-256, ``model_tokenizer_sha256``), ``kind``,
  ``max_length``, ``field``, ``shard_size``, the shard count and the library version (with the
  score's name and direction); for an encoder whose output depends on its batch (an int8 ONNX
  graph: ``batch_invariant`` is ``False``) the ``batch_size`` too;
* ``shard-00000/`` ...: ``mean.npy``, ``var.npy`` (float32, no pickle), ``ids.json`` and
  ``shard.json`` (its byte range, row count, the SHA-256 of each file and the run key, a SHA-256
  of the manifest's identity that ties the shard to this input, model and settings), each shard
  written atomically.

Rerunning the same command resumes: shards that exist, pass their checksums and carry this run's
key are kept, and only missing, corrupt or foreign ones are encoded again. Shards written before
the run key existed have none: they are kept and read as before, with a warning that nothing ties
them to the manifest.  A folder made from another input (by content: the file name is for
information) or with other settings is refused with the differing keys named (nothing is overwritten);
so is resuming an int8 ONNX encoding with another ``batch_size`` (its outputs depend on the batch).
A run holds a lock on the folder (``flock``, where available), so a second run into it is refused
(a :class:`BlockingIOError`). A locked folder holding only a manifest (a run that stopped before its first
shard) takes the new run's manifest, whatever its settings: nothing is overwritten. Where the folder cannot
be locked, such a folder is refused: the run that wrote the manifest may still be encoding its first shard.

:func:`iter_encoded` and :func:`load_encoded` check, when given the ``encoder`` that will search the
shards and the ``kind`` they must hold, that the manifest names that model and kind.

``backend="ray"`` runs the missing shards as a Ray Data job: ``map_batches`` over the shard
list with one encoder actor per CPU (or per GPU with ``device="cuda"``).  Every shard is
encoded by the same function in both backends, so the output equals the single-process one.
Ray runs on ``device`` ``None``, ``"cpu"`` or ``"cuda"`` only (``"mps"`` is refused before Ray starts).

Examples:
    >>> import tempfile, pathlib
    >>> from kl_retrievers.sharded import plan_shards
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.txt"
    >>> _ = p.write_text("one\\ntwo\\n\\nthree\\n")
    >>> [(s.index, s.first_row, s.rows) for s in plan_shards(p, shard_size=2)[0]]
    [(0, 0, 2), (1, 2, 1)]
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
from array import array
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kl_retrievers._encoding import (
    blank_positions,
    blank_warning_suppressed,
    device_type,
    progress_enabled,
    query_batch_size,
)
from kl_retrievers._errors import KLRetrieversError, NothingSavedError
from kl_retrievers._io import (
    atomic_dir,
    atomic_file,
    library_version,
    make_dirs,
    not_this_kind_error,
    parse_json_object,
    recover_dir,
    row_id,
    row_text,
    user_path,
)
from kl_retrievers._score import check_score
from kl_retrievers._warn import warn
from kl_retrievers.gaussian import SCORE_DIRECTION, SCORE_NAME, Gaussians, check_k
from kl_retrievers.hub import sha256_file as _sha256

if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

logger = logging.getLogger(__name__)

__all__ = [
    "ShardSpec",
    "EncodeReport",
    "plan_shards",
    "encode_corpus",
    "iter_encoded",
    "load_encoded",
    "BACKENDS",
]

BACKENDS = ("local", "ray")
_MANIFEST = "manifest.json"
_SHARD_META = "shard.json"
_FORMAT_NAME = "kl-retrievers/encoded-shards"
_FORMAT_VERSION = 1
#: The files of a shard folder that shard.json checksums (and the only ones ever read).
_SHARD_FILES = ("mean.npy", "var.npy", "ids.json")
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class ShardSpec:
    """One shard: records ``first_row .. first_row + rows - 1`` in bytes ``[start, end)`` of the input."""

    index: int
    start: int
    end: int
    first_row: int
    rows: int

    @property
    def name(self) -> str:
        """Folder name, e.g. ``shard-00003``."""
        return f"shard-{self.index:05d}"


@dataclass
class EncodeReport:
    """What :func:`encode_corpus` did."""

    out: Path
    shards: int
    rows: int
    encoded: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "local"


#: Suffixes (any case) of files read as JSON lines, one object per line; any other file is plain text, one text a line.
#: A ``.json`` file holding one JSON array fails at its first line, with a message naming it.
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def is_jsonl_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read as JSON lines (its suffix, any case, is one of :data:`JSONL_SUFFIXES`).

    ``kl-retrievers encode`` / ``index`` and :func:`encode_corpus` decide alike with it.

    Examples:
        >>> is_jsonl_path("c.JSONL"), is_jsonl_path("c.ndjson"), is_jsonl_path("c.txt")
        (True, True, False)
    """
    return Path(path).suffix.lower() in JSONL_SUFFIXES


def _is_record(line: bytes) -> bool:
    """Whether one line of the input is a record: not blank after ``bytes.strip()`` (ASCII whitespace).

    Lines end at ``b"\\n"`` only, in :func:`plan_shards` and :func:`read_shard` alike: ``str.splitlines``
    would also split inside a JSON string at U+2028, U+0085, ``\\x0c`` ... and shift every later id.

    Examples:
        >>> _is_record(b"  \\r"), _is_record("\\u00a0".encode()), _is_record(b"a\\x0cb")
        (False, True, True)
    """
    return bool(line.strip())


def _without_bom(number: int, line: bytes) -> bytes:
    """Line ``number`` of a file without the UTF-8 byte order mark that may open line 1.

    As :func:`kl_retrievers.datasets.load_beir` reads files; :func:`plan_shards` counts the 3 bytes
    in its offsets, so the first shard starts after them.

    Examples:
        >>> _without_bom(1, b"\\xef\\xbb\\xbfa\\n"), _without_bom(2, b"\\xef\\xbb\\xbfa\\n")
        (b'a\\n', b'\\xef\\xbb\\xbfa\\n')
    """
    return line[len(codecs.BOM_UTF8) :] if number == 1 and line.startswith(codecs.BOM_UTF8) else line


#: A ``.tsv`` first line whose columns are these names (any case) is a header, skipped.
TSV_ID_HEADERS = frozenset({"id", "_id", "pid", "docid", "doc_id", "qid"})
TSV_TEXT_HEADERS = frozenset({"text", "passage", "contents", "content", "body", "query", "title", "sentence"})


def is_tsv_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read as MS MARCO-style ``id<TAB>text`` lines (its suffix, any case, is ``.tsv``).

    Examples:
        >>> is_tsv_path("collection.TSV"), is_tsv_path("c.txt")
        (True, False)
    """
    return Path(path).suffix.lower() == ".tsv"


def parse_tsv_line(line: bytes, where: str, record: int, *, first: bool = False) -> tuple[str, str, bool]:
    """One non-blank line of a ``.tsv`` input (without its ``b"\\n"``): ``(id, text, is_header)``.

    The one rule of ``kl-retrievers encode`` / ``index`` and of the sharded path: a final ``\\r`` is dropped, the
    line holds exactly two tab-separated columns, and its id follows the JSONL id rule (non-empty, not padded;
    :func:`kl_retrievers._io.row_id`). ``first``: the file's first non-blank line, which is a header (``is_header``
    ``True``, its id not checked; the caller skips it with a warning) when its columns are header names
    (:data:`TSV_ID_HEADERS` and :data:`TSV_TEXT_HEADERS`, any case). Uniqueness of ids is the caller's.

    Args:
        line: The line's bytes, without its ending ``b"\\n"`` (a final ``b"\\r"`` is dropped here).
        where: The file and line (or record), for messages (``"c.tsv, line 7"``).
        record: The line's record number from 0 (headers and blank lines not counted), which a padded id's
            message names (``"c.tsv, line 7 (record 5)"``).
        first: The line is the file's first non-blank one, which may be a header.

    Raises:
        ValueError: Not UTF-8, another number of columns, an empty or padded id; the message names ``where``.

    Examples:
        >>> parse_tsv_line(b"7\\tthe cat\\r", "c.tsv, line 2", 0)
        ('7', 'the cat', False)
        >>> parse_tsv_line(b"pid\\tpassage", "c.tsv, line 1", 0, first=True)
        ('pid', 'passage', True)
    """
    try:
        text = line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
    columns = text.split("\t")
    if len(columns) != 2:
        raise ValueError(
            f"{where}: has {len(columns)} tab-separated column{'s' if len(columns) != 1 else ''}; a .tsv input "
            "holds id<TAB>text lines (exactly two columns, as MS MARCO's collection.tsv)"
        )
    if first and columns[0].strip().lower() in TSV_ID_HEADERS and columns[1].strip().lower() in TSV_TEXT_HEADERS:
        return columns[0], columns[1], True
    if not columns[0].strip():
        raise ValueError(f"{where}: the id column is empty; every id<TAB>text line needs an id")
    return row_id({"_id": columns[0]}, record, where), columns[1], False  # the JSONL id rule: non-empty, not padded


def split_records(raw: bytes) -> list[bytes]:
    """A text or JSONL file's records: its lines (ending at ``b"\\n"`` only), blank ones dropped.

    ``kl-retrievers encode`` reads whole files with it and the shards of :func:`encode_corpus` with
    it, so both number a file's records alike.

    Examples:
        >>> split_records("a\\n\\n b\\r\\nc\\u2028d".encode())
        [b'a', b' b\\r', b'c\\xe2\\x80\\xa8d']
    """
    return [line for line in raw.split(b"\n") if _is_record(line)]


def plan_shards(
    path: str | os.PathLike[str], shard_size: int = 10000, field: str = "auto"
) -> tuple[list[ShardSpec], dict[str, Any]]:
    """Scan ``path`` once, check every record, and cut it into shards of ``shard_size`` records.

    A record is a non-blank line (a JSON object in a ``.jsonl`` file, an ``id<TAB>text`` line in a ``.tsv`` file,
    whose first line is skipped with a warning when it is a header, as ``kl-retrievers encode`` reads it:
    :func:`parse_tsv_line`; a text otherwise). Every
    record is checked as ``kl-retrievers encode`` checks it (a UTF-8 byte order mark opening the file
    is skipped, as :func:`kl_retrievers.datasets.load_beir` skips it), with the same messages naming the file
    line, so that a bad record fails the run before any shard is encoded: UTF-8, and for JSONL a
    JSON object with a valid id (``_id`` or ``id``: a non-empty string without leading or trailing
    whitespace, as :func:`kl_retrievers.datasets.load_beir` requires, or an integer, else the
    record number; :func:`kl_retrievers._io.row_id`) and a text in ``field`` (``"auto"``: title +
    text). JSONL and ``.tsv`` ids must be unique across the whole file: a repeated one is refused, naming both
    lines. Memory stays small (8 bytes of hash per record).

    Returns:
        The shard list and the input's identity (``{"sha256", "size", "records"}``).

    Raises:
        ValueError: ``shard_size`` is not a positive integer, ``path`` is a ``.csv`` file (its columns would be
            read as text lines), ``path`` is not a regular file (a pipe:
            streaming reads the file twice and seeks in it), a bad record (``FILE, line 7: no 'text'
            field ...``) or a JSONL id occurs twice (``FILE, line 4: duplicate id 'x' (first on line 1)``).
        FileNotFoundError: ``path`` does not exist.
    """
    shards, identity, _ = _plan(path, shard_size, field)
    return shards, identity


def _plan(
    path: str | os.PathLike[str], shard_size: int, field: str
) -> tuple[list[ShardSpec], dict[str, Any], list[str]]:
    """:func:`plan_shards`, plus the SHA-256 of each shard's byte range (which :func:`read_shard` checks).

    The run's shards are read after this pass, maybe hours later: an input rewritten meanwhile would be
    encoded as it is then, under the manifest's identity of the input as it was; each shard's digest
    makes that an error instead.
    """
    size = check_k(shard_size, "shard_size")
    source = Path(path)
    _check_input_file(source)
    if source.suffix.lower() == ".csv":  # read as text lines, the id column would end up in each text
        raise ValueError(
            f"{source}: sharded encoding reads JSON Lines, .tsv (id<TAB>text lines) or text files (one text per "
            "line), not .csv: convert it to JSON Lines (one object per line with _id and text)"
        )
    digest = hashlib.sha256()
    shard_digest = hashlib.sha256()
    digests: list[str] = []
    shards: list[ShardSpec] = []
    offset = 0
    start = 0
    rows = 0
    first = 0
    jsonl = is_jsonl_path(source)
    tsv = is_tsv_path(source)
    seen_line = False  # a .tsv's first non-blank line may be a header
    id_hashes = array("q")  # one 64-bit hash of each JSONL or .tsv record's id, in record order
    with open(source, "rb") as fh:
        for number, whole in enumerate(fh, 1):
            digest.update(whole)
            line = _without_bom(number, whole)
            offset += len(whole) - len(line)  # a byte order mark belongs to no record
            # the line's record without its b"\n", as the one-file readers see it (messages quote its columns)
            record = line[:-1] if line.endswith(b"\n") else line
            if _is_record(line) and not (tsv and _tsv_header(source, number, record, seen_line, warn=True)):
                seen_line = True
                doc_id = _check_record(record, first + rows, f"{source}, line {number}", jsonl, field, tsv=tsv)
                if jsonl or tsv:
                    id_hashes.append(_id_hash(doc_id))
                if rows == 0:
                    start = offset
                    shard_digest = hashlib.sha256()
                rows += 1
                shard_digest.update(line)
                if rows == size:
                    shards.append(ShardSpec(len(shards), start, offset + len(line), first, rows))
                    digests.append(shard_digest.hexdigest())
                    first += rows
                    rows = 0
            else:  # a blank line (inside a shard's byte range when rows), or a .tsv header (before any record)
                seen_line = seen_line or _is_record(line)
                if rows:
                    shard_digest.update(line)
            offset += len(line)
    if rows:
        shards.append(ShardSpec(len(shards), start, offset, first, rows))
        digests.append(shard_digest.hexdigest())
    if jsonl or tsv:
        _check_unique_ids(source, id_hashes)
    return shards, {"sha256": digest.hexdigest(), "size": offset, "records": first + rows}, digests


def _check_input_file(source: Path) -> None:
    """Refuse an input that is not a regular file: missing, a folder, or a pipe / device / socket."""
    if source.is_file():
        return
    if source.is_dir():
        raise ValueError(f"{source} is a folder; give one input file")
    if source.exists():
        raise ValueError(
            f"{source} is not a regular file (a pipe, device or socket): streaming reads the input twice and "
            "seeks in it, so it needs a regular, seekable file; save the input to a file first"
        )
    raise FileNotFoundError(f"input file not found: {source}")


def _check_utf8(value: str, what: str, where: str) -> str:
    """``value``, refused when it cannot be written as UTF-8: a lone surrogate, from a JSON escape such as ``\\ud800``.

    Such a string is not Unicode text: the tokenizer, ``ids.json`` and a store's files all refuse it, so the
    records are checked for it before anything is encoded.

    Args:
        value: A record's text or id.
        what: ``"text"`` or ``"id"``, as the message names it.
        where: The file and line, as the message names them.

    Raises:
        ValueError: ``value`` holds a lone surrogate; the message names ``where``, the character and its position.

    Examples:
        >>> _check_utf8("caf\u00e9", "text", "corpus.jsonl, line 1")
        'café'
        >>> try:
        ...     _check_utf8("bad " + chr(0xD800), "id", "corpus.jsonl, line 2")
        ... except ValueError as exc:
        ...     print(str(exc)[:58])
        corpus.jsonl, line 2: the id holds a lone surrogate U+D800
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where}: the {what} holds a lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start}, "
            'which is not valid Unicode (it cannot be written as UTF-8); replace it (a JSON escape such as "\\ud800" '
            "without its pair)"
        ) from None
    return value


def _tsv_header(source: Path, number: int, line: bytes, seen_line: bool, *, warn: bool) -> bool:
    """Whether non-blank line ``number`` of the ``.tsv`` ``source`` is its header (only the first non-blank line
    may be: ``seen_line`` is ``False``), skipped as ``kl-retrievers encode`` skips it; ``warn``: say so."""
    if seen_line:
        return False
    # asked only of the first non-blank line: when it is not a header, it is record 0
    name, text, header = parse_tsv_line(line, f"{source}, line {number}", 0, first=True)
    if header and warn:
        logger.warning(
            "%s: line %d (columns %r and %r) is taken for a header and skipped, not read as a document",
            source,
            number,
            name,
            text,
        )
    return header


def _check_record(line: bytes, row_no: int, where: str, jsonl: bool, field: str, *, tsv: bool = False) -> str:
    """Check one record as ``kl-retrievers encode`` would (errors name ``where``); returns its id."""
    if tsv:
        return parse_tsv_line(line, where, row_no)[0]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
    if not jsonl:
        return str(row_no)
    row = parse_json_object(text, where)
    # row_id refuses an id with surrounding whitespace, as load_beir does, with the one message of both paths
    doc_id = _check_utf8(row_id(row, row_no, where), "id", where)
    _check_utf8(row_text(row, field, where), "text", where)
    return doc_id


def _record_id(line: bytes, row_no: int, where: str) -> str:
    """A JSONL record's id as :func:`read_shard` gives it (the line was checked by :func:`plan_shards`)."""
    return row_id(parse_json_object(line.decode("utf-8"), where), row_no, where)


def _id_hash(doc_id: str) -> int:
    """A signed 64-bit hash of an id (never ``0``)."""
    return (
        int.from_bytes(
            hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True
        )
        or 1
    )


def _check_unique_ids(source: Path, id_hashes: array[int]) -> None:
    """Refuse a repeated JSONL id, naming the lines (a second pass reads only records whose hash repeats)."""
    hashes = np.frombuffer(id_hashes, dtype=np.int64) if len(id_hashes) else np.zeros(0, np.int64)
    if hashes.size < 2:
        return
    ordered = np.sort(hashes)
    repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not repeated:
        return
    first_line: dict[str, int] = {}
    record = 0
    tsv = is_tsv_path(source)
    seen_line = False
    with open(source, "rb") as fh:
        for number, whole in enumerate(fh, 1):
            line = _without_bom(number, whole).rstrip(b"\n")  # as _plan reads it
            if not _is_record(line):
                continue
            header = tsv and _tsv_header(source, number, line, seen_line, warn=False)
            seen_line = True
            if header:
                continue
            where = f"{source}, line {number}"
            doc_id = parse_tsv_line(line, where, record)[0] if tsv else _record_id(line, record, where)
            record += 1
            if _id_hash(doc_id) not in repeated:
                continue
            if doc_id in first_line:
                raise ValueError(
                    f"{source}, line {number}: duplicate id {doc_id!r} (first on line {first_line[doc_id]})"
                )
            first_line[doc_id] = number


def read_shard(
    path: str | os.PathLike[str], spec: ShardSpec, field: str = "auto", *, sha256: str | None = None
) -> tuple[list[str], list[str]]:
    """The ``(ids, texts)`` of one shard, reading only its byte range.

    Ids follow ``kl-retrievers encode``: a JSONL row's ``_id`` (or ``id``, else its record
    number); a ``.tsv`` line's first column; for a text file, the record number. :func:`plan_shards` has checked
    every record (naming its file line); errors here, naming the record, mean the file changed since.
    ``sha256``: the byte range's SHA-256 when it was planned; other bytes now are refused (the file changed).
    """
    source = Path(path)
    with open(source, "rb") as fh:
        fh.seek(spec.start)
        raw = fh.read(spec.end - spec.start)
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(
            f"{source} changed while it was being encoded: shard {spec.index} (bytes {spec.start} to {spec.end}) "
            "no longer holds what the run planned from it; the shards encoded so far are of the input as it was. "
            "Rerun the encode command once the file stays as it is (a changed input is a new input: into "
            "another --out folder)"
        )
    ids: list[str] = []
    texts: list[str] = []
    records = split_records(raw)  # as plan_shards counts them
    jsonl = is_jsonl_path(source)
    tsv = is_tsv_path(source)
    if len(records) != spec.rows:
        raise ValueError(f"{source}: shard {spec.index} should hold {spec.rows} records, found {len(records)}")
    for offset, record in enumerate(records):
        row_no = spec.first_row + offset
        try:
            line = record.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{source}, record {row_no + 1}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if jsonl:
            row = parse_json_object(line, f"{source}, record {row_no + 1}")
            ids.append(row_id(row, row_no, f"{source}, record {row_no + 1}"))
            texts.append(row_text(row, field, f"{source}, record {row_no + 1}"))
        elif tsv:
            doc_id, text, _ = parse_tsv_line(record, f"{source}, record {row_no + 1}", row_no)
            ids.append(doc_id)
            texts.append(text)
        else:
            ids.append(str(row_no))
            texts.append(line.rstrip("\r\n"))
    return ids, texts


def _read_json(path: Path) -> Any:
    """Parse a JSON file; errors name the file (one that is not a regular file, e.g. a named pipe, is not opened)."""
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a folder, named pipe, device or socket)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    except (RecursionError, MemoryError) as exc:  # nested too deep (or too large) for the JSON parser
        raise ValueError(f"{path} is not valid JSON: {type(exc).__name__} (nested too deep or too large)") from None


def _outside_problem(out: Path, name: str) -> str | None:
    """Why shard folder ``name`` of ``out`` leads out of ``out`` (``None``: it does not).

    As :meth:`~kl_retrievers.store.KLStore.load` with a store's files: the shard folder must resolve to a folder
    directly in ``out``, and its ``shard.json`` and :data:`_SHARD_FILES` (symbolic links followed) to files directly
    in the shard folder; a link elsewhere is refused, never followed.
    """
    root = out.resolve()
    shard = out / name
    if not (shard.exists() or shard.is_symlink()):
        return None
    if shard.resolve().parent != root:
        return f"{shard} resolves to {shard.resolve()}, outside the encoding folder {out}"
    for file in (_SHARD_META, *_SHARD_FILES):
        path = shard / file
        if (path.exists() or path.is_symlink()) and path.resolve().parent != shard.resolve():
            return f"{path} resolves to {path.resolve()}, outside its shard folder"
    return None


def _run_key(manifest: dict[str, Any]) -> str:
    """The SHA-256 that ties a shard to its run: the manifest's input (SHA-256, size, records; not
    its file name), model fingerprint and backend, kind, field, max_length, shard_size and shard count,
    and the batch size where the manifest records one (an encoder that is not batch-invariant).

    Every ``shard.json`` records it (``run``); a shard whose key differs from its folder's
    manifest was made from another input, model or settings and is never read or reused.

    Examples:
        >>> a = {"input": {"name": "a.jsonl", "sha256": "0" * 64, "size": 9, "records": 2}, "kind": "document"}
        >>> b = {**a, "input": {**a["input"], "name": "b.jsonl"}}
        >>> _run_key(a) == _run_key(b), _run_key(a) == _run_key({**a, "kind": "query"})
        (True, False)
    """
    source = manifest.get("input")
    if isinstance(source, dict):
        source = {**{key: source.get(key) for key in ("sha256", "size", "records")}, "reads_as": _reads_as(source)}
    identity = {"format": _FORMAT_NAME, "input": source, **{key: manifest.get(key) for key in _RUN_KEYS}}
    if manifest.get("batch_size") is not None:  # only for encoders whose output depends on it: other keys unchanged
        identity["batch_size"] = manifest["batch_size"]
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: The manifest keys (besides the input's identity) that a shard's run key covers.
_RUN_KEYS = ("model_fingerprint", "model_backend", "kind", "field", "max_length", "shard_size", "shards")


def _run_problem(meta_path: Path, meta: dict[str, Any], run: str) -> str | None:
    """Why the shard whose ``shard.json`` (``meta``) is at ``meta_path`` is not of run ``run`` (``None`` when it is)."""
    recorded = meta.get("run")
    if recorded is None:  # written by a kl-retrievers from before run keys: kept, as it was (see _checked_specs)
        return None
    if recorded != run:
        return (
            f"{meta_path}: the shard belongs to another encode run (its run key {str(recorded)[:12]}... is not "
            f"the manifest's {run[:12]}...: another input, model or settings)"
        )
    return None


def _table_problem(meta_path: Path, meta: dict[str, Any]) -> str | None:
    """Why the checksum table of ``shard.json`` (``meta``) is not one SHA-256 for each of :data:`_SHARD_FILES`."""
    table = meta.get("sha256")
    if not isinstance(table, dict) or sorted(table) != sorted(_SHARD_FILES):
        names = sorted(table) if isinstance(table, dict) else table
        return f"{meta_path}: field 'sha256' must give a checksum for each of {list(_SHARD_FILES)}; got {names!r}"
    for name in _SHARD_FILES:
        digest = table[name]
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _SHA256_HEX):
            return f"{meta_path}: field 'sha256.{name}' must be 64 lowercase hex digits; got {digest!r}"
    return None


def _shard_problem(out: Path, spec: ShardSpec, run: str, unkeyed: list[int] | None = None) -> str | None:
    """Why shard ``spec`` in ``out`` is not complete, intact and of run ``run`` (``None`` when it is).

    ``shard.json`` must hold this shard's spec, the run key ``run`` (:func:`_run_key` of the
    manifest) and a SHA-256 for each of exactly :data:`_SHARD_FILES` (an empty or partial table
    is a problem, not a skip); only those names inside the shard folder are ever read. A shard
    without a run key (written before run keys) passes; its index is appended to ``unkeyed``, where
    given, for the caller's one summary (:func:`_warn_unkeyed`).
    """
    folder = out / spec.name
    if not folder.exists():
        recover_dir(folder, required=_SHARD_META)
    outside = _outside_problem(out, spec.name)
    if outside is not None:
        return outside
    meta_path = folder / _SHARD_META
    if not meta_path.is_file():
        return f"{meta_path} is missing"
    try:
        meta = _read_json(meta_path)
    except (OSError, ValueError) as exc:
        return str(exc)
    if not isinstance(meta, dict):
        return f"{meta_path} must hold a JSON object; got a JSON {type(meta).__name__}"
    if meta.get("spec") != asdict(spec):
        return f"{meta_path}: field 'spec' is {meta.get('spec')!r}; the manifest's input plans {asdict(spec)}"
    problem = _run_problem(meta_path, meta, run) or _table_problem(meta_path, meta)
    if problem is not None:
        return problem
    table = meta["sha256"]
    for name in _SHARD_FILES:
        if not (folder / name).is_file():
            return f"{folder / name} is missing"
        if _sha256(folder / name) != table[name]:
            return f"{folder / name} does not match its checksum (corrupt)"
    problem = _rows_problem(folder, spec)
    if problem is None and meta.get("run") is None and unkeyed is not None:
        unkeyed.append(spec.index)
    return problem


def _warn_unkeyed(folder: Path, unkeyed: int, shards: int) -> None:
    """One warning for the ``unkeyed`` of the ``shards`` shards of ``folder`` that carry no run key (not one a shard:
    a folder of 1,000 such shards logged 1,000 lines at every resume)."""
    if unkeyed:
        logger.warning(
            "%s: %d of its %d shards carry no run key (written by a kl-retrievers from before run keys, or copied "
            "from such a folder), so nothing checks that "
            "they come from this manifest's input, model and settings (their checksums are still checked); "
            "encode into a new folder to get shards that are",
            folder,
            unkeyed,
            shards,
        )


def _rows_problem(folder: Path, spec: ShardSpec) -> str | None:
    """Why the files of shard folder ``folder`` do not hold ``spec.rows`` rows (``None`` when they do).

    Their checksums may well match: a writer that took an encoder's wrong row count as it came (an
    older kl-retrievers did) wrote a shard that every resume kept and every read refused. Only the
    ``.npy`` headers are read, and ``ids.json``.
    """
    try:
        ids = _read_json(folder / "ids.json")
        shapes = [_npy_shape(folder / name) for name in ("mean.npy", "var.npy")]
    except (OSError, ValueError, EOFError) as exc:
        return f"{folder}: cannot read its files: {exc}"
    if not (isinstance(ids, list) and len(ids) == spec.rows and all(isinstance(i, str) for i in ids)):
        return f"{folder / 'ids.json'} must be a list of {spec.rows} string ids"
    if len(shapes[0]) != 2 or shapes[0] != shapes[1] or shapes[0][0] != spec.rows:
        return f"{folder}: mean.npy {shapes[0]} and var.npy {shapes[1]} must both be ({spec.rows}, dim) arrays"
    return None


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in an ``.npy`` file's header (the array is not read)."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as fh:
        version = npy_format.read_magic(fh)
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, _ = read(fh)
    return tuple(int(n) for n in shape)


def _shard_ok(out: Path, spec: ShardSpec, run: str, *, log: bool = False, unkeyed: list[int] | None = None) -> bool:
    """Whether shard ``spec`` in ``out`` is complete, intact and of run ``run`` (``log``: say why one is not;
    ``unkeyed``: as for :func:`_shard_problem`)."""
    problem = _shard_problem(out, spec, run, unkeyed)
    if log and problem is not None and (out / spec.name).exists():
        logger.info("encoding %s again: %s", spec.name, problem)
    return problem is None


class _FolderBusyError(KLRetrieversError, BlockingIOError, RuntimeError):
    """Another encode run is writing into the ``--out`` folder: a refusal the user resolves by waiting.

    A :class:`BlockingIOError` (an :class:`OSError`, which the command line reports as a user error, one
    line and exit status 2), and a :class:`RuntimeError` as it was raised before, for callers that catch that.
    """


class _ShardsLostError(KLRetrieversError, OSError, RuntimeError):
    """Shards this run reported written failed their check afterwards (missing, replaced or corrupt).

    An :class:`OSError` (the command line reports it as a user error, one line and exit status 2) and a
    :class:`RuntimeError` as it was raised before; not a :class:`BlockingIOError`: waiting does not resolve it.
    """


@contextmanager
def _folder_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``folder`` while a run writes into it; refuse when another run holds it.

    Two runs writing into one folder replace each other's shards (and manifest): with other settings,
    one of them ends with shards of the other. The kernel drops the lock when its process ends (even by
    ``kill -9``), so a crashed run never blocks the next. Where locking is not available (no ``fcntl``,
    as on Windows, or a file system without ``flock``) the run goes on unlocked.

    Yields:
        Whether the lock is held: ``False`` when the run goes on unlocked, so another run may be writing
        into the folder unseen.

    Raises:
        BlockingIOError: Another run holds the lock (also a :class:`RuntimeError`, as it was before).
    """
    # The body's own errors must not read as raised while handling a locking failure: every yield
    # below is outside an except block.
    unlocked = "two encode runs into this folder are not guarded against each other"
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        fcntl = None  # type: ignore[assignment]
        logger.info("no flock on this platform; encoding into %s unlocked (%s)", folder, unlocked)
    fd: int | None = None
    if fcntl is not None:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError as exc:
            logger.warning("cannot open %s to lock it (%s); encoding unlocked (%s)", folder, exc, unlocked)
    if fd is None:
        yield False
        return
    try:
        busy = taken = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            busy = True
        except OSError as exc:  # a file system without flock (some network or FUSE mounts)
            logger.warning("cannot lock %s (%s); encoding unlocked (%s)", folder, exc, unlocked)
        if busy:
            raise _FolderBusyError(
                f"another encode run is writing into {folder} (it holds the folder's lock): wait for it to "
                "finish (rerunning then resumes), or encode into another --out folder"
            )
        yield taken
    finally:
        os.close(fd)


#: How many ids of blank documents :func:`encode_corpus`'s warning names.
_BLANK_IDS_SHOWN = 5


@dataclass
class _BlankDocuments:
    """The blank documents of an encode run's shards: per shard index, how many and the first few ids."""

    shards: dict[int, tuple[int, list[str]]] = field(default_factory=dict)

    def add(self, index: int, count: int, ids: list[str]) -> None:
        """Note shard ``index``'s ``count`` blank documents, whose ids begin with ``ids``."""
        if count:
            self.shards[index] = (count, list(ids[:_BLANK_IDS_SHOWN]))

    def warn(self, encoded: int) -> None:
        """One ``UserWarning`` for the run (none without a blank document): how many of the ``encoded`` documents
        are blank, in how many shards, and the first ids (in corpus order)."""
        if not self.shards:
            return
        total = sum(count for count, _ in self.shards.values())
        first = [i for index in sorted(self.shards) for i in self.shards[index][1]][:_BLANK_IDS_SHOWN]
        shown = ", ".join(repr(i) for i in first) + (", ..." if total > len(first) else "")
        one = total == 1
        shards = len(self.shards)
        warn(
            f"{total} of the {encoded} documents encoded {'is' if one else 'are'} blank (empty, or only whitespace "
            f"and invisible characters), in {shards} shard{'' if shards == 1 else 's'}: id{'' if one else 's'} "
            f"{shown}; every blank document gets the same Gaussian, the empty text's, which can rank high for "
            f"queries it does not answer; drop {'it' if one else 'them'} from the corpus before encoding"
        )


def encode_shard(
    encoder: Any,
    path: str | os.PathLike[str],
    spec: ShardSpec,
    out: str | os.PathLike[str],
    *,
    kind: str = "document",
    field: str = "auto",
    batch_size: int = 32,
    max_length: int | None = None,
    run: str,
    shard_sha256: list[str] | None = None,
    show_progress_bar: bool | None = False,
    blank: list[str] | None = None,
) -> int:
    """Read, encode and atomically write one shard of run ``run`` (:func:`_run_key`); returns its row count.

    ``shard_sha256``: every shard's planned SHA-256 (by index, from the planning pass); the shard's bytes
    must still match it. An encoder that returns another number of rows than the shard's texts is refused.
    ``show_progress_bar``: the encoder's own bar over the shard's batches (``None``: when stderr is a
    terminal and the shard has several batches). Queries (``kind="query"``) of an encoder that is not
    batch-invariant (int8 ONNX) are encoded one at a time (:func:`~kl_retrievers._encoding.query_batch_size`),
    so that each gets the Gaussian a search of it gives. ``blank`` (documents only): the ids of the shard's blank
    texts (:func:`~kl_retrievers._encoding.is_blank_text`) are appended to it, and the encoder's own warning about
    them, which counts positions within the shard, is left out (:func:`encode_corpus` warns once for the run;
    :func:`~kl_retrievers._encoding.blank_warning_suppressed`: other threads' encodings still warn).
    """
    digest = shard_sha256[spec.index] if shard_sha256 is not None else None
    ids, texts = read_shard(path, spec, field, sha256=digest)
    encode = encoder.encode_documents if kind == "document" else encoder.encode_queries
    if kind != "document":  # queries alone where a text's Gaussian depends on its batch, as a search encodes one
        batch_size = query_batch_size(encoder, batch_size)
    quiet = blank is not None and kind == "document"
    if blank is not None and quiet:
        blank.extend(ids[i] for i in blank_positions(texts))
    with blank_warning_suppressed() if quiet else nullcontext():  # in this thread only
        g = encode(texts, batch_size=batch_size, max_length=max_length, show_progress_bar=show_progress_bar).numpy()
    shape = (np.shape(g.mean), np.shape(g.var))
    if shape[0] != shape[1] or len(shape[0]) != 2 or shape[0][0] != len(ids):
        raise ValueError(
            f"{spec.name}: the encoder returned mean {shape[0]} and var {shape[1]} for the shard's {len(ids)} texts; "
            f"expected two ({len(ids)}, dim) arrays (nothing was written)"
        )
    target = Path(out) / spec.name
    with atomic_dir(target) as tmp:
        np.save(tmp / "mean.npy", np.ascontiguousarray(g.mean, dtype=np.float32), allow_pickle=False)
        np.save(tmp / "var.npy", np.ascontiguousarray(g.var, dtype=np.float32), allow_pickle=False)
        (tmp / "ids.json").write_text(json.dumps(ids))
        digests = {name: _sha256(tmp / name) for name in ("mean.npy", "var.npy", "ids.json")}
        meta = {"spec": asdict(spec), "run": run, "sha256": digests}
        (tmp / _SHARD_META).write_text(json.dumps(meta, indent=2) + "\n")
    return len(ids)


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    with atomic_file(out / _MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


_IDENTITY_KEYS = (
    "input",
    "model",
    "model_fingerprint",
    "model_backend",
    "kind",
    "field",
    "max_length",
    "shard_size",
    "shards",
    "batch_size",  # recorded only for an encoder that is not batch-invariant (int8 ONNX)
)


def _reads_as(source: dict[str, Any]) -> str:
    """How an input named as in the manifest's ``input`` is read: ``"jsonl"``, ``"tsv"`` or ``"text"`` (its suffix
    decides)."""
    name = str(source.get("name", ""))
    return "jsonl" if is_jsonl_path(name) else "tsv" if is_tsv_path(name) else "text"


def _identity_value(manifest: dict[str, Any], key: str) -> Any:
    """What manifest key ``key`` contributes to a run's identity: the input's name is for information only
    (a byte-identical input under another name is the same input), except for how its suffix says to read
    it (JSON lines, id<TAB>text lines or text lines): a ``.jsonl`` or ``.tsv`` copy renamed ``.txt`` is another
    input."""
    value = manifest.get(key)
    if key == "input" and isinstance(value, dict):
        return {**{k: v for k, v in value.items() if k != "name"}, "reads_as": _reads_as(value)}
    return value


#: Leftovers of an interrupted manifest write (``_io.atomic_file``): not "other files" in the folder.
_MANIFEST_LEFTOVER = re.compile(rf"\.{re.escape(_MANIFEST)}\.(tmp|old)-[0-9a-f]+")


def _holds_shards(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides its manifest (and leftovers of writing it): shards, or their
    leftovers, or a stranger's files. A folder that does not has lost nothing if another manifest replaces its own.
    """
    return any(p.name != _MANIFEST and not _MANIFEST_LEFTOVER.fullmatch(p.name) for p in folder.iterdir())


class _RayShardWorker:
    """A Ray Data actor: loads the encoder once, then encodes the shards it is given."""

    def __init__(
        self,
        model: str | None,
        device: str | None,
        job: dict[str, Any],
        model_backend: Backend | None = None,
        onnx_options: dict[str, Any] | None = None,
    ) -> None:
        from kl_retrievers.pretrained import load_model

        self.encoder = load_model(model, device=device, backend=model_backend, onnx_options=onnx_options)
        self.job = job

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        done, errors, blank_counts, blank_ids = [], [], [], []
        for i in range(len(batch["index"])):
            spec = ShardSpec(**{k: int(batch[k][i]) for k in ("index", "start", "end", "first_row", "rows")})
            blank: list[str] = []  # a worker's warnings never reach the caller: its blank documents are sent back
            try:
                encode_shard(self.encoder, spec=spec, blank=blank, **self.job)
                errors.append("")
            except (ValueError, OSError) as exc:  # bad input: sent back as data, Ray would bury it in a traceback
                errors.append(f"{type(exc).__name__}: {exc}")
            done.append(spec.index)
            blank_counts.append(len(blank))
            blank_ids.append(json.dumps(blank[:_BLANK_IDS_SHOWN]))
        return {
            "index": np.asarray(done, dtype=np.int64),
            "error": np.asarray(errors, dtype=object),
            "blank": np.asarray(blank_counts, dtype=np.int64),
            "blank_ids": np.asarray(blank_ids, dtype=object),
        }


#: Attempts at starting a local Ray node: on a loaded machine its raylet can miss Ray's fixed 30 s start-up window.
RAY_LOCAL_START_ATTEMPTS = 3
# What ray.init raises when a new local node was too slow to start (the raylet, or the GCS server's port file).
_RAY_START_TIMEOUTS = ("timed out during startup", "Timed out waiting for file")


#: Seconds ``backend="ray"`` waits for a TCP connection to a cluster given as ``host:port`` before ``ray.init``, which
#: otherwise retries an address nothing answers at for many minutes, without an error.
RAY_CONNECT_TIMEOUT = 10.0


def _check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """Refuse a Ray cluster address given as ``host:port`` that accepts no TCP connection within ``timeout`` seconds.

    ``ray.init(address="host:port")`` retries an unreachable GCS for many minutes (about 40 s per attempt, 20
    attempts), blocked in native code and printing only Ray's own C++ log lines; one connection to the port tells
    sooner. Other forms (``"auto"``, ``"local"``, ``"ray://..."`` for Ray Client, anything Ray's parser refuses
    itself) are left to Ray.

    Examples:
        >>> import socket
        >>> with socket.socket() as unused:
        ...     unused.bind(("127.0.0.1", 0))
        ...     port = unused.getsockname()[1]  # bound, not listening: nothing accepts a connection there
        ...     _check_ray_address(f"127.0.0.1:{port}")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ConnectionError: cannot reach the Ray cluster at '127.0.0.1:...' ...
        >>> _check_ray_address("ray://head:10001"), _check_ray_address("auto")
        (None, None)
    """
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")  # an IPv6 address: [::1]:6379
    if "://" in address or not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} (ray_address / --ray-address, or RAY_ADDRESS) within "
            f"{timeout:g} s: {exc}; check the address and port of its head node (`ray status` there prints it), or "
            "leave the address out to start a local Ray node"
        ) from None


def _ray_init(ray: Any, init: dict[str, Any]) -> None:
    """``ray.init(**init)``; a *local* node that timed out during start-up is shut down and started again.

    Ray waits a fixed time for a new local node's raylet to register and for its GCS server to
    write its port file (not configurable); on a busy machine that can fail once and succeed the
    next time. Connecting to a cluster (``address``) is not retried.
    """
    attempts = 1 if init.get("address") else RAY_LOCAL_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init)
            return
        except Exception as exc:
            if attempt == attempts or not any(sign in str(exc) for sign in _RAY_START_TIMEOUTS):
                raise
            logger.warning("local Ray node timed out during start-up (attempt %d of %d); retrying", attempt, attempts)
            ray.shutdown()


def _ray_workers(
    resources: dict[str, Any], *, device: str | None, num_workers: int | None, shards: int, local: bool = True
) -> int:
    """How many encoder actors to start on a cluster with ``resources`` (``ray.cluster_resources()``).

    One per CPU, or with a ``cuda`` device one per GPU (each actor asks for a whole GPU). On a local
    node (no cluster address given), fewer than one whole GPU would leave the actors pending forever,
    so it is refused here, before any starts; a cluster named by an address (``local=False``) may add
    GPU nodes on demand (an autoscaler), so there it starts ``num_workers`` (or one) actors, with a warning.

    Examples:
        >>> _ray_workers({"CPU": 8.0}, device=None, num_workers=None, shards=3)
        3
        >>> _ray_workers({"CPU": 8.0}, device="cuda", num_workers=None, shards=3)
        Traceback (most recent call last):
        ValueError: device 'cuda' runs one Ray actor per whole GPU, but this local Ray node has fewer than one ...
        >>> _ray_workers({"CPU": 8.0}, device="cuda", num_workers=None, shards=3, local=False)
        1
    """
    if device and device.startswith("cuda"):
        gpus = float(resources.get("GPU") or 0)
        if gpus < 1 and local:
            raise ValueError(
                f"device {device!r} runs one Ray actor per whole GPU, but this local Ray node has fewer than one "
                f"(GPU: {gpus:g} in ray.cluster_resources()); use device 'cpu', or a cluster with GPUs "
                "(ray_address / --ray-address)"
            )
        if gpus < 1:
            logger.warning(
                "the Ray cluster shows %g GPUs now; starting %d GPU actor(s), which wait until it adds a GPU node "
                "(an autoscaler does; otherwise they wait forever: stop with Ctrl-C and use device 'cpu')",
                gpus,
                int(num_workers or 1),
            )
            return max(1, min(int(num_workers or 1), shards))
        available = int(gpus)
    else:
        available = int(resources.get("CPU") or 1) or 1
    return max(1, min(int(num_workers or available), available, shards))


#: The devices ``backend="ray"`` runs on (``None``: each actor picks its best, as ``load_model`` does); the cpu
#: under any name :func:`~kl_retrievers._encoding.device_type` reads as the cpu (``"cpu:0"``, as ``load_model``).
RAY_DEVICES = ("cpu", "cpu:N", "cuda", "cuda:0")


def _check_ray_device(device: str | None) -> None:
    """Refuse, before Ray starts, a ``device`` the Ray actors cannot run on.

    Ray schedules CPUs and CUDA GPUs only: with ``"mps"`` (an Apple GPU) it would start one actor per
    CPU, each loading the model onto the one MPS device, where no Ray resource guards its memory, and
    an actor that cannot use it (a Linux node, a worker without Metal access) fails inside Ray, after
    Ray started. A GPU actor sees only the GPU Ray gave it, as ``cuda:0``, so ``"cuda:1"`` would name
    a device no actor has.

    Examples:
        >>> _check_ray_device("cuda"), _check_ray_device("cpu:0")
        (None, None)
        >>> _check_ray_device("mps")
        Traceback (most recent call last):
        ValueError: device 'mps' cannot run backend='ray' ...
        >>> _check_ray_device("CPU")
        Traceback (most recent call last):
        ValueError: device must be cpu, cuda or mps; got 'CPU'
    """
    if device is None:
        return
    kind = device_type(device)  # the one device check of load_model: "tpu" and "CPU" are refused as there
    text = str(device)
    if kind == "cpu" or text in RAY_DEVICES:
        return
    if kind == "mps":
        raise ValueError(
            f"device {text!r} cannot run backend='ray' (allowed: None, {', '.join(map(repr, RAY_DEVICES))}): Ray "
            "schedules no Apple GPU, so every actor (one per CPU) would load the model onto the one MPS device, "
            "and an actor that cannot reach it fails inside Ray; use backend='local' with device 'mps' "
            "(--backend local), or device 'cpu' with Ray"
        )
    if kind == "cuda":
        raise ValueError(
            f"device {text!r} cannot run backend='ray' (allowed: None, {', '.join(map(repr, RAY_DEVICES))}): each "
            "GPU actor sees only the GPU Ray gives it, as 'cuda:0'; use device 'cuda' (one actor per GPU)"
        )
    raise ValueError(f"backend='ray' runs on device None or one of {RAY_DEVICES}; got {device!r}")


#: Ray's loggers whose console lines :func:`_ray_logs` holds to this library's log level during a run.
_RAY_LOGGERS = ("ray", "ray.data")
#: Ray Data's logger of its progress; it warns once that the bars are off when :func:`_ray_logs` turns them off.
_RAY_PROGRESS_LOGGER = "ray.data._internal.progress"


def _no_progress_notice(record: logging.LogRecord) -> bool:
    """Drop Ray Data's notice that its progress bars are off (``--no-progress`` asked for that)."""
    return not record.getMessage().startswith("Progress bars disabled")


@contextmanager
def _ray_logs(ray: Any, show_progress_bar: bool | None) -> Iterator[None]:
    """For one Ray run: Ray's Python log lines on the console at this library's level, Ray Data's progress as asked.

    Ray's console handlers (of the ``ray`` and ``ray.data`` loggers: not its log files in the session folder)
    take this module's effective log level while the run lasts (WARNING by default, as the command line's, INFO with
    ``-v``, ERROR with ``-q``): without that, Ray Data logs its execution plan and, where stdout is no terminal, its
    progress every few seconds at INFO. Ray Data's progress (its bars, or those log lines) is turned off where
    :func:`~kl_retrievers._encoding.progress_enabled` says no bar is drawn (``show_progress_bar=False``,
    ``TQDM_DISABLE``). Everything is restored afterwards. Lines that Ray's C++ core writes to stderr itself
    (``[... E ...] core_worker.cc: ...``, connection retries) are out of Python's reach.
    """
    level = logger.getEffectiveLevel()
    data = getattr(ray, "data", None)  # imports Ray Data, whose loggers get their handlers then
    handlers = [
        handler
        for name in _RAY_LOGGERS
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]
    levels = [handler.level for handler in handlers]
    contexts = getattr(data, "DataContext", None)
    # Ray Data's settings of this process, or None where its progress stays as it is
    context: Any = None if contexts is None or progress_enabled(show_progress_bar) else contexts.get_current()
    progress = (
        (True, True) if context is None else (context.enable_progress_bars, context.enable_operator_progress_bars)
    )
    notices = logging.getLogger(_RAY_PROGRESS_LOGGER)
    try:
        for handler in handlers:
            handler.setLevel(max(handler.level, level))
        if context is not None:
            context.enable_progress_bars = context.enable_operator_progress_bars = False
            notices.addFilter(_no_progress_notice)
        yield
    finally:
        for handler, before in zip(handlers, levels, strict=True):
            handler.setLevel(before)
        if context is not None:
            context.enable_progress_bars, context.enable_operator_progress_bars = progress
            notices.removeFilter(_no_progress_notice)


def _run_ray(
    todo: list[ShardSpec],
    *,
    model: str | None,
    device: str | None,
    job: dict[str, Any],
    num_workers: int | None,
    ray_address: str | None,
    model_backend: Backend | None = None,
    onnx_options: dict[str, Any] | None = None,
    blanks: _BlankDocuments | None = None,
    show_progress_bar: bool | None = None,
) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("backend='ray' needs Ray Data: pip install 'kl-retrievers[ray]'") from exc
    # no cluster address (nor RAY_ADDRESS): a local node, whose GPUs are all it will ever have
    address = ray_address or os.environ.get("RAY_ADDRESS")
    local = not address
    with _ray_logs(ray, show_progress_bar):
        if not ray.is_initialized():
            if address:
                _check_ray_address(address)
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if ray_address:
                init["address"] = ray_address
            elif num_workers:
                init["num_cpus"] = int(num_workers)
            _ray_init(ray, init)
        gpu = bool(device and device.startswith("cuda"))
        workers = _ray_workers(
            ray.cluster_resources(), device=device, num_workers=num_workers, shards=len(todo), local=local
        )
        items = ray.data.from_items([asdict(s) for s in todo], override_num_blocks=len(todo))
        ds = items.map_batches(
            _RayShardWorker,
            fn_constructor_kwargs={
                "model": model,
                "device": device,
                "job": job,
                "model_backend": model_backend,
                "onnx_options": onnx_options,
            },
            batch_size=1,
            batch_format="numpy",
            # a fixed pool (``concurrency=`` is deprecated in Ray 2.51)
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=0 if gpu else 1,
            num_gpus=1 if gpu else 0,
        )
        rows = ds.take_all()
    failed = sorted((int(row["index"]), str(row["error"])) for row in rows if row["error"])
    if failed:  # e.g. a bad record: the worker's own message, as the local backend gives it
        kind, _, message = failed[0][1].partition(": ")
        if len(failed) > 1:
            message += f" (and {len(failed) - 1} more failed shard(s): {[i for i, _ in failed[1:]]})"
        raise (OSError if kind != "ValueError" else ValueError)(message)
    if blanks is not None:
        for row in rows:
            blanks.add(int(row["index"]), int(row.get("blank", 0)), json.loads(str(row.get("blank_ids", "[]"))))
    finished = sorted(int(row["index"]) for row in rows)
    expected = [s.index for s in todo]
    if finished != expected:
        raise RuntimeError(f"the Ray job encoded shards {finished}, expected {expected}")


def _check_encoder(encoder: Any, kind: str) -> None:
    """Refuse, as :func:`encode_corpus`'s ``encoder``, a model name (pointed at ``model=``) or an object without
    the method ``kind`` needs (``encode_documents`` / ``encode_queries``), before anything is read.

    Examples:
        >>> _check_encoder("minilm-gauss-soup", "document")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: encoder takes a loaded encoder; got the model name or folder 'minilm-gauss-soup': pass ...
    """
    if encoder is None:
        return
    if isinstance(encoder, (str, bytes, os.PathLike)):
        name = os.fsdecode(encoder)
        raise TypeError(
            f"encoder takes a loaded encoder; got the model name or folder {name!r}: pass model={name!r} "
            f"(encode_corpus loads it), or encoder=kl_retrievers.load_model({name!r})"
        )
    method = "encode_documents" if kind == "document" else "encode_queries"
    if not callable(getattr(encoder, method, None)):
        raise TypeError(
            f"encoder must be a Gaussian encoder with {method} (such as kl_retrievers.load_model(...) returns); "
            f"got {type(encoder).__name__} {' '.join(repr(encoder).split()):.80}"
        )


def encode_corpus(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    encoder: Any | None = None,
    kind: str = "document",
    field: str = "auto",
    shard_size: int = 10000,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | None = None,
    backend: str = "local",
    num_workers: int | None = None,
    ray_address: str | None = None,
    show_progress_bar: bool | None = None,
    model_backend: Backend | None = None,
    onnx_options: Mapping[str, Any] | None = None,
) -> EncodeReport:
    """Encode ``input`` into a folder of shards, resuming whatever is already there.

    Args:
        input: A ``.jsonl`` corpus, a ``.tsv`` file of ``id<TAB>text`` lines (as ``kl-retrievers encode`` reads it)
            or a text file (one text per non-empty line); ``.csv`` is refused.
        out: The output folder.
        model: A bundled model name, saved encoder folder or hub id (``None``: the default).
            Ray workers load it themselves (and the driver once, to fingerprint it).
        encoder: An already loaded encoder for ``backend="local"`` (overrides ``model``). Shards are
            reused only from the same model: its name and its fingerprint (class, config and
            weights, :func:`~kl_retrievers.encoding_cache.model_fingerprint`) must match the manifest's.
        kind: ``"document"`` or ``"query"``.
        field: JSONL text field (``"auto"``: title + text).
        shard_size: Records per shard (an ``int``; a string or float is refused).
        batch_size: Encoder batch size (an ``int``). For an encoder that is not batch-invariant (an int8
            ONNX graph, whose output depends on its batch) the manifest records it, and resuming with
            another one is refused, naming both; such an encoder's queries (``kind="query"``) are encoded one
            at a time, whatever ``batch_size`` (the manifest records 1).
        max_length: Token budget (``None``: the model's).
        device: ``cpu``, ``cuda`` or ``mps`` (``None``: the best available); with ``backend="ray"`` only
            ``None``, ``cpu`` or ``cuda`` (refused before Ray starts, see :data:`RAY_DEVICES`).
        backend: ``"local"`` (this process) or ``"ray"`` (a Ray Data job).
        num_workers: Ray actors (default: one per CPU, or per GPU with ``device="cuda"``).
        ray_address: An existing Ray cluster (``None``: a local one is started). One given as ``host:port``
            must accept a connection within :data:`RAY_CONNECT_TIMEOUT` seconds (else ``ConnectionError``).
        show_progress_bar: A bar counting the records to encode, advanced as each shard is written
            (local backend; ``None``, the default: only when stderr is a terminal; ``TQDM_DISABLE`` hides it), and,
            on a terminal, the encoder's own bar over the batches of the shard being encoded. With
            ``backend="ray"``, where no bar would be drawn (``False``, ...), Ray Data's own progress is off too.
        model_backend: Run ``model`` on ``"torch"`` or ``"onnx"`` (ONNX Runtime); ``None``: the
            library's default (:func:`~kl_retrievers.pretrained.load_model`). The backend used is
            recorded in the manifest (``model_backend``); resuming with another one is refused, naming the
            recorded one to pass (``--model-backend torch`` for a folder encoded on torch). A folder
            written before fingerprints and backends were recorded counts as torch encodings (0.1.0 had no
            ONNX backend; development builds of early December 2026 could also have written ONNX ones without
            recording it): resuming it on ONNX is refused, naming ``--model-backend torch``.
        onnx_options: ONNX Runtime session settings of ``model`` (``num_threads``, ``allow_spinning``,
            ``session_options``; see :func:`~kl_retrievers.pretrained.load_model`, which checks them), for
            this process and every Ray worker; with ``model_backend=None`` they choose ONNX. Not with
            ``encoder``, which is loaded already.

    Returns:
        An :class:`EncodeReport` with the shards encoded now and those reused.

    Raises:
        TypeError: ``input`` or ``out`` not a path (a list of texts), or ``encoder`` a model name (pass it as
            ``model``) or an object without ``encode_documents`` (``encode_queries`` for ``kind="query"``).
        ValueError: Bad options, a bad record or an input without records (found by the planning pass,
            before the model is loaded or any shard is encoded), or ``out`` holds shards of another
            input or other settings.
        BlockingIOError: Another encode run is writing into ``out`` (it holds the folder's lock); also a
            :class:`RuntimeError`, as it was before. Rerun once the other run is done.
        OSError: A shard written by this run failed its check afterwards (with ``backend="ray"``, ``out`` is
            not on storage every node shares; or something else deleted or replaced it); also a
            :class:`RuntimeError`, as it was before. Rerun once the cause is fixed.
        ConnectionError: ``backend="ray"`` with a ``host:port`` cluster address (``ray_address`` or
            ``RAY_ADDRESS``) that accepts no connection within :data:`RAY_CONNECT_TIMEOUT` seconds.

    Examples:
        >>> report = encode_corpus("corpus.jsonl", "encoded/")  # doctest: +SKIP
        >>> g, ids = load_encoded("encoded/")  # doctest: +SKIP
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if kind not in ("document", "query"):
        raise ValueError(f"kind must be 'document' or 'query'; got {kind!r}")
    in_memory = ": encode_corpus reads a corpus file; encode texts in memory with encoder.encode_documents(texts)"
    for name, given, hint in (("input", input, in_memory), ("out", out, "")):
        if not isinstance(given, (str, os.PathLike)):
            raise TypeError(
                f"{name} must be a path (str or os.PathLike); got {type(given).__name__} {given!r:.80}{hint}"
            )
    _check_encoder(encoder, kind)
    batch_size = check_k(batch_size, "batch_size")
    if backend == "ray" and encoder is not None:
        raise ValueError("backend='ray' loads the model in each worker: pass model=NAME_OR_PATH, not encoder")
    if backend == "ray":
        _check_ray_device(device)
    if encoder is not None and onnx_options:
        raise ValueError(
            "onnx_options set the session of the model encode_corpus loads; the given encoder is loaded already "
            "(pass its options when loading it, or pass model=NAME_OR_PATH instead of encoder)"
        )
    started = time.perf_counter()
    source = user_path(input)
    target = user_path(out)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    specs, identity, shard_digests = _plan(source, shard_size, field)
    if not specs:  # as the one-shot `kl-retrievers encode` refuses it, before loading any model
        raise ValueError(f"{source}: holds no texts; nothing to encode")
    if encoder is None and backend == "local":
        from kl_retrievers.pretrained import load_model

        encoder = load_model(model, device=device, backend=model_backend, onnx_options=onnx_options)
    from kl_retrievers.encoding_cache import _legacy_fingerprint, _tokenizer_digest, model_fingerprint

    if encoder is None:  # backend="ray": the workers load the model; load it once here to know its weights
        from kl_retrievers.pretrained import default_backend, load_model

        # The backend the workers run, chosen as load_model(model, device=device) there would choose it: this
        # process may lack their device (a cluster's GPUs), and without one load_model could pick another
        # backend (torch for ONNX, or the reverse), so the manifest would name a model the shards are not from.
        worker_backend = model_backend  # given, or None with onnx_options: ONNX wherever the model loads
        if worker_backend is None and not onnx_options:
            worker_backend = default_backend(model, device=device)
        loaded = load_model(model, backend=worker_backend, onnx_options=onnx_options)
        model_name, fingerprint = getattr(loaded, "name_or_path", None), model_fingerprint(loaded)
        legacy = _legacy_fingerprint(loaded)
        used_backend = _backend_of(loaded) or worker_backend
        batch_invariant = bool(getattr(loaded, "batch_invariant", True))
        weights, config, tokenizer = _weights_of(loaded), _config_of(loaded), _tokenizer_digest(loaded)
        del loaded
    else:
        model_name, fingerprint = getattr(encoder, "name_or_path", None), model_fingerprint(encoder)
        legacy = _legacy_fingerprint(encoder)
        used_backend = _backend_of(encoder) or model_backend
        worker_backend = model_backend
        batch_invariant = bool(getattr(encoder, "batch_invariant", True))
        weights, config, tokenizer = _weights_of(encoder), _config_of(encoder), _tokenizer_digest(encoder)
    manifest = {
        "format": _FORMAT_NAME,
        "format_version": _FORMAT_VERSION,
        "library_version": library_version(),
        "input": {"name": source.name, **identity},
        "model": model_name,
        "model_fingerprint": fingerprint,
        "model_backend": used_backend,
        # for information (not part of the run's identity): what iter_encoded(encoder=...) compares to accept the
        # same model on the other backend (torch or ONNX), whose fingerprint differs
        "model_weights_sha256": weights,
        "model_config": config,
        "model_tokenizer_sha256": tokenizer,
        "kind": kind,
        "field": field,
        "max_length": max_length,
        "shard_size": check_k(shard_size, "shard_size"),
        "shards": len(specs),
    }
    if not batch_invariant:  # int8 ONNX: a text's Gaussian depends on its batch, so on batch_size
        # queries are encoded one at a time then (encode_shard): the batch size they are encoded at
        manifest["batch_size"] = 1 if kind == "query" else int(batch_size)

    manifest["score"] = {"name": SCORE_NAME, "direction": SCORE_DIRECTION}
    make_dirs(target)  # each new folder synced into its parent
    with _folder_lock(target) as locked:  # one encode run at a time per folder (where flock is available)
        existing = target / _MANIFEST
        if existing.is_file():
            old = _manifest(target)
            fingerprinted = "model_fingerprint" in old
            if legacy is not None and old.get("model_fingerprint") == legacy:
                # written before an ONNX graph's fingerprint left out the name it was loaded by: the same
                # model; its fingerprint is kept, as the shards' run keys have it
                fingerprint = manifest["model_fingerprint"] = legacy
            if "model_fingerprint" not in old:  # written before fingerprints: the model's name is all it knows
                if "model_backend" not in old and used_backend in _TWIN_BACKENDS:
                    # and before backends: its shards are a torch encoder's float32 encodings (as a store
                    # record without a backend counts as torch), never an int8 ONNX graph's
                    old["model_backend"] = "torch"
                    if used_backend != "torch":
                        raise ValueError(_unfingerprinted_backend_message(target, old, used_backend))
                logger.warning(
                    "%s was written without a model fingerprint; reusing its shards on the model name", target
                )
                old["model_fingerprint"] = fingerprint
            if "model_backend" not in old:  # written before the backend was recorded: the fingerprint tells them apart
                old["model_backend"] = used_backend
            elif old["model_backend"] is None and old.get("model_fingerprint") == fingerprint:
                # written when a torch encoder's backend went unrecorded (null): the fingerprint, which covers the
                # encoder's class, says these shards are this model's; the null is kept, as the shards' run keys have it
                manifest["model_backend"] = None
            unrecorded = "batch_size" in manifest and "batch_size" not in old
            if unrecorded and old.get("model_fingerprint") == fingerprint and kind == "query" and _holds_shards(target):
                # written before the batch size was recorded: its queries were encoded in batches then (of an unknown
                # size), while this encoder's are now encoded one at a time; resuming would mix the two
                raise ValueError(
                    f"{target} holds queries encoded without a recorded batch_size (an older release, which encoded "
                    "them in batches); this encoder's output depends on its batch (batch_invariant is False: an int8 "
                    "ONNX graph), so its queries are now encoded one at a time (batch_size 1), as a search encodes a "
                    "query, and its shards would not match: encode them into another --out folder or delete it "
                    "(nothing was overwritten)"
                )
            if unrecorded and old.get("model_fingerprint") == fingerprint and kind != "query":
                # written before the batch size was recorded: kept as it was, unchecked (as shards without a run key)
                logger.warning(
                    "%s was written without its batch_size, which this encoder's output depends on "
                    "(batch_invariant is False: an int8 ONNX graph); resuming with batch_size %d, while the batch "
                    "size of its existing shards is unknown (not recorded): if they were encoded with another, "
                    "encode into a new folder for one consistent encoding",
                    target,
                    batch_size,
                )
                del manifest["batch_size"]
            differ = [key for key in _IDENTITY_KEYS if _identity_value(old, key) != _identity_value(manifest, key)]
            if "model" in differ and fingerprinted and old.get("model_fingerprint") == fingerprint:
                # the same weights under another spelling of the name (a Ray run before 0.1.0 wrote the
                # name as given, e.g. None or "minilm-gauss-soup"): the fingerprint is the model's identity
                differ.remove("model")
                manifest["model"] = old.get("model")
            if differ and not _holds_shards(target):
                if not locked:
                    # without flock a run that is still encoding its first shard looks the same: replacing its
                    # manifest would leave it writing shards under this run's manifest
                    raise ValueError(
                        f"{target} holds only the manifest of a run with other settings ({', '.join(differ)} "
                        "differ) and no shard yet, and the folder cannot be locked here (no flock on this "
                        "platform or file system), so that run may still be encoding its first shard: if no "
                        f"other encode run is writing into it, delete {existing} and rerun, or use another --out "
                        "folder (nothing was overwritten)"
                    )
                # a run that wrote its manifest and stopped before any shard (e.g. Ray refused --device cuda on
                # a node without a GPU): the lock says it is over, nothing would be overwritten, so the rerun
                # its error recommends goes on
                logger.info(
                    "%s holds a manifest of other settings (%s differ) but no shard: replacing it", target, differ
                )
                differ = []
            if differ == ["batch_size"] and kind == "query":
                raise ValueError(
                    f"{target} holds queries encoded with batch_size {old.get('batch_size')!r}; this encoder's "
                    "output depends on its batch (batch_invariant is False: an int8 ONNX graph), so its queries are "
                    "now encoded one at a time (batch_size 1), as a search encodes a query: encode them into another "
                    "--out folder or delete it (nothing was overwritten)"
                )
            if differ == ["batch_size"]:
                was = old.get("batch_size")
                raise ValueError(
                    f"{target} was encoded with batch_size {was!r}, this run asks for batch_size {batch_size}: this "
                    "encoder's output depends on its batch (batch_invariant is False: an int8 ONNX graph quantises "
                    "activations per batch), so its shards would not be the encoding one run with either batch size "
                    f"gives; rerun with batch_size {was!r} (--batch-size {was}) to resume it, or use another --out "
                    "folder or delete it (nothing was overwritten)"
                )
            twin = _other_backend_message(target, old, manifest, differ, batch_size)
            if twin is not None:
                raise ValueError(twin)
            if differ:
                raise ValueError(
                    f"{target} holds shards made with other settings ({', '.join(differ)} differ); "
                    "use another --out folder or delete it (nothing was overwritten)"
                )
        elif target.is_dir() and any(not _MANIFEST_LEFTOVER.fullmatch(p.name) for p in target.iterdir()):
            raise ValueError(f"{target} is not empty and has no {_MANIFEST}; use an empty or new folder")
        for spec in specs:  # a shard linked out of --out: encoding it again would write through the link
            outside = _outside_problem(target, spec.name)
            if outside is not None:
                raise ValueError(
                    f"{outside}; a link out of the folder is not followed: copy the shard into it, or delete the "
                    "link to encode that shard again (nothing was encoded)"
                )
        _write_manifest(target, manifest)
        run = _run_key(manifest)
        unkeyed: list[int] = []  # reused shards written before run keys: one warning for them all
        todo = [s for s in specs if not _shard_ok(target, s, run, log=True, unkeyed=unkeyed)]
        _warn_unkeyed(target, len(unkeyed), len(specs))
        todo_indices = {s.index for s in todo}  # a set: a list's `in` made this quadratic (10,000 shards: seconds)
        reused = [s.index for s in specs if s.index not in todo_indices]
        if reused:
            logger.info("reusing %d valid shards; encoding %d", len(reused), len(todo))
        job = {
            "path": str(source),
            "out": str(target),
            "kind": kind,
            "field": field,
            "batch_size": int(batch_size),
            "max_length": max_length,
            "run": run,
            "shard_sha256": shard_digests,
        }
        blanks = _BlankDocuments() if kind == "document" else None
        if todo and backend == "ray":
            _run_ray(
                todo,
                model=model,
                device=device,
                job=job,
                num_workers=num_workers,
                ray_address=ray_address,
                model_backend=worker_backend,
                onnx_options=dict(onnx_options) if onnx_options else None,
                blanks=blanks,
                show_progress_bar=show_progress_bar,
            )
        elif todo:
            _encode_local(encoder, todo, job, show_progress_bar, blanks)
        if blanks is not None:
            blanks.warn(sum(s.rows for s in todo))
        problems = {s.index: _shard_problem(target, s, run) for s in todo}
        bad = {index: problem for index, problem in problems.items() if problem is not None}
        if bad:  # the workers wrote where this process cannot see, or something replaced what they wrote
            causes = []
            if backend == "ray":
                causes.append(
                    "with backend='ray' on a cluster, --out must be on storage every node shares (a node-local "
                    "folder keeps each worker's shards on its own node)"
                )
            causes.append(f"something else deleted or replaced files in {target} while this run wrote it")
            if not locked:
                causes.append("another encode run wrote into it (the folder could not be locked here)")
            raise _ShardsLostError(
                f"shards {sorted(bad)} failed their check after encoding ({next(iter(bad.values()))}); likely "
                f"causes: {'; or '.join(causes)}. Fix that (and run encodes into a folder one at a time), then "
                "rerun to redo them (valid shards are kept)"
            )
        return EncodeReport(
            out=target,
            shards=len(specs),
            rows=int(identity["records"]),
            encoded=[s.index for s in todo],
            reused=reused,
            seconds=time.perf_counter() - started,
            backend=backend,
        )


def _encode_local(
    encoder: Any,
    todo: list[ShardSpec],
    job: dict[str, Any],
    show_progress_bar: bool | None,
    blanks: _BlankDocuments | None = None,
) -> None:
    """Encode the shards ``todo`` in this process, with a bar counting records.

    The bar (``show_progress_bar``: ``True`` shows it, ``None`` when stderr is a terminal, ``False`` never)
    counts the records of ``todo`` and advances by each shard's rows as it is written; while a shard is
    encoded, the encoder's own bar shows its batches (only on a terminal, and when it has several), so that
    one large shard does not sit at 0 for minutes; it is nested under the shard bar, so it clears its line
    when the shard is done (no line left per shard). ``TQDM_DISABLE`` hides both. ``blanks``: each shard's
    blank documents noted there (the encoder's warning per shard left out).
    """
    from kl_retrievers._encoding import progress_bar, show_progress

    def encode(spec: ShardSpec, **kw: Any) -> int:
        blank: list[str] | None = None if blanks is None else []
        rows = encode_shard(encoder, spec=spec, blank=blank, **kw, **job)
        if blanks is not None and blank:
            blanks.add(spec.index, len(blank), blank)
        return rows

    total = sum(spec.rows for spec in todo)
    show = show_progress(show_progress_bar, total, 0)
    inner = None if show else False  # the encoder's rule: a terminal and several batches
    if not show:
        for spec in todo:
            encode(spec)
        return
    desc = f"Encoding {len(todo)} shard{'s' if len(todo) != 1 else ''}"
    with progress_bar(total, desc=desc, show=True, unit="record") as bar:  # the encoder's bar under it: not kept
        for spec in todo:
            bar.update(encode(spec, show_progress_bar=inner))


def _backend_of(encoder: Any) -> str | None:
    """The backend an encoder runs on: ``"onnx"`` as its config records it, ``"torch"`` for a
    :class:`~kl_retrievers.encoder.GaussianEncoder` (whose config records no backend), else ``None``.

    The torch class is looked up only if :mod:`kl_retrievers.encoder` is imported already: an encoder of that
    class exists only then, and this module must not import torch.
    """
    to_dict = getattr(getattr(encoder, "config", None), "to_dict", None)
    try:
        recorded = to_dict().get("backend") if callable(to_dict) else None
    except Exception:  # a foreign encoder's config: nothing to learn from it
        recorded = None
    if isinstance(recorded, str):
        return recorded
    torch_module = sys.modules.get("kl_retrievers.encoder")
    torch_class = getattr(torch_module, "GaussianEncoder", None) if torch_module is not None else None
    if isinstance(torch_class, type) and isinstance(encoder, torch_class):
        return "torch"
    return None


def _weights_of(encoder: Any) -> str | None:
    """The identity of an encoder's trained weights (``weights_sha256``: the same for a torch model and its ONNX
    export), or ``None`` when it has none or does not know it."""
    try:
        weights = getattr(encoder, "weights_sha256", None)
    except Exception:  # a foreign encoder's property: nothing to learn from it
        return None
    return weights if isinstance(weights, str) and weights else None


#: The ``kind`` values of :func:`encode_corpus`, which :func:`iter_encoded` can check.
_KINDS = ("document", "query")


#: The backends whose encoders of one model (the same weights) :func:`iter_encoded` accepts for each other.
_TWIN_BACKENDS = {"torch", "onnx"}


def _config_of(encoder: Any) -> dict[str, Any] | None:
    """A torch or ONNX encoder's config as a dictionary (``config.to_dict()``); ``None`` for another encoder, or
    a config that cannot be written as JSON. The manifest records it (``model_config``) for :func:`iter_encoded`."""
    to_dict = getattr(getattr(encoder, "config", None), "to_dict", None)
    if _backend_of(encoder) not in _TWIN_BACKENDS or not callable(to_dict):
        return None
    try:
        config = to_dict()
        json.dumps(config, allow_nan=False)
    except Exception:  # a config that is not JSON-ready: nothing to compare
        return None
    return dict(config) if isinstance(config, dict) and config else None


def _source_fields(config: Any, backend: Any) -> dict[str, Any]:
    """The :class:`~kl_retrievers.encoder.GaussianEncoderConfig` fields in an encoder config (:func:`_config_of`):
    a torch encoder's whole config, an ONNX encoder's ``encoder`` section (the torch config it was exported from).

    Both backends of one model give the same fields (an ONNX encoder of adapter heads adds ``onnx_heads``), so
    :func:`iter_encoded` compares them where the fingerprints, which hash each backend's own config, differ.
    """
    if not isinstance(config, dict):
        return {}
    if backend == "onnx":
        inner = config.get("encoder")
        return inner if isinstance(inner, dict) else {}
    return config


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:36]}...{text[-1]}"


def _differing(recorded: dict[str, Any], own: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys both dictionaries hold with other values, each with both (one nested level named ``a.b``)."""
    differ = []
    for key in sorted(recorded.keys() & own.keys()):
        was, now = recorded[key], own[key]
        if was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict) and not prefix:
            differ.extend(_differing(was, now, f"{key}."))
        else:
            differ.append(f"{prefix}{key} {_short(was)} vs {_short(now)}")
    return differ


def _model_record(encoder: Any) -> dict[str, Any]:
    """What a manifest records of ``encoder``'s model beside its name and fingerprint (as :func:`encode_corpus` writes
    it): its backend, weights identity, config and tokenizer SHA-256, each ``None`` where unknown."""
    from kl_retrievers.encoding_cache import _tokenizer_digest

    return {
        "model_backend": _backend_of(encoder),
        "model_weights_sha256": _weights_of(encoder),
        "model_config": _config_of(encoder),
        "model_tokenizer_sha256": _tokenizer_digest(encoder),
    }


class _ModelMatch(NamedTuple):
    """How two models' records compare beyond their fingerprints (:func:`_compare_models`)."""

    weights: bool | None  # the same weights identity (True), another one (False), or either records none (None)
    differ: list[str]  # the config fields and the tokenizer both record with other values, each with both values


def _compare_models(recorded: Mapping[str, Any], other: Mapping[str, Any]) -> _ModelMatch:
    """Compare the model a manifest ``recorded`` records with ``other``'s (another manifest, or the
    :func:`_model_record` of an encoder): the weights identity, the config fields both record (across backends,
    only the :func:`_source_fields` both share) and the tokenizer. What either side does not record is not
    compared. The same model on the other backend (torch or ONNX) has the same weights and no difference, while
    its fingerprint, which hashes each backend's own class and config, differs: both :func:`iter_encoded`'s check
    and the resume of a folder on the other backend ask this."""
    was, now = recorded.get("model_weights_sha256"), other.get("model_weights_sha256")
    weights = None if was is None or now is None else was == now
    config, own = recorded.get("model_config"), other.get("model_config")
    backend, own_backend = recorded.get("model_backend"), other.get("model_backend")
    differ: list[str] = []
    if isinstance(config, dict) and isinstance(own, dict):
        if backend == own_backend:
            differ = _differing(config, own)
        else:
            differ = _differing(_source_fields(config, backend), _source_fields(own, own_backend))
    tokenizer, own_tokenizer = recorded.get("model_tokenizer_sha256"), other.get("model_tokenizer_sha256")
    if isinstance(tokenizer, str) and isinstance(own_tokenizer, str) and tokenizer != own_tokenizer:
        differ.append(f"tokenizer SHA-256 {tokenizer[:12]}... vs {own_tokenizer[:12]}...")
    return _ModelMatch(weights, differ)


def _check_reader(folder: Path, manifest: dict[str, Any], encoder: Any | None, kind: str | None) -> None:
    """Refuse shards that were not encoded by ``encoder`` or as ``kind`` (see :func:`iter_encoded`)."""
    recorded_kind = manifest.get("kind")
    if kind is not None and recorded_kind != kind:
        raise ValueError(
            f"{folder} holds {recorded_kind!r} encodings (encoded with kind={recorded_kind!r}), not the {kind!r} "
            f"encodings asked for (kind={kind!r}): documents and queries are encoded differently; encode the "
            f"input with kind={kind!r} (--kind {kind}) into another folder"
        )
    if encoder is None:
        return
    from kl_retrievers.encoding_cache import _legacy_fingerprint, model_fingerprint

    recorded = manifest.get("model_fingerprint")
    name, backend = getattr(encoder, "name_or_path", None), _backend_of(encoder)
    if recorded is None:  # written before fingerprints: nothing says which model it was beyond its name
        recorded_backend = manifest.get("model_backend", "torch")  # before backends too: torch (float32)
        on = f" on the {recorded_backend} backend" if recorded_backend else ""
        if recorded_backend and backend in _TWIN_BACKENDS and backend != recorded_backend:
            on += (
                f" (--model-backend {recorded_backend}, or load_model(..., backend={recorded_backend!r}); the given "
                f"encoder runs on {backend}, whose encodings differ)"
            )
        raise ValueError(
            f"{folder} was encoded by model {manifest.get('model')!r} with a kl-retrievers that recorded no model "
            f"fingerprint, so whether the given encoder {name!r} is that model cannot be verified. If it is, run "
            "the encode command again "
            f"with that model{on} and the same input and settings into this folder: it reuses the shards "
            "(re-encoding none) and records the model's fingerprint; or pass encoder=None to read the shards "
            "unchecked"
        )
    fingerprint = model_fingerprint(encoder)
    if recorded in (fingerprint, _legacy_fingerprint(encoder)):
        return
    recorded_backend = manifest.get("model_backend")
    weights = _weights_of(encoder)
    same_weights = weights is not None and weights == manifest.get("model_weights_sha256")
    differ = _compare_models(manifest, _model_record(encoder)).differ if same_weights else []
    if weights is not None and same_weights and not differ and {recorded_backend, backend} == _TWIN_BACKENDS:
        # the same model on the other backend (a torch model and its ONNX export): its fingerprint hashes that
        # backend's own class and config, so only the weights and the settings both record can tell
        logger.info(
            "%s was encoded by %r (%s backend), the given encoder is %r (%s backend): the same weights (SHA-256 "
            "%s...) and settings, read as that model's encodings",
            folder,
            manifest.get("model"),
            recorded_backend,
            name,
            backend,
            weights[:12],
        )
        return
    if differ:
        why = f" The weights are the same, but the settings differ (shards vs encoder): {'; '.join(differ)}."
    elif same_weights:
        why = (
            f" The weights are the same, but on the same backend ({backend}) another fingerprint means another "
            "class, config or tokenizer."
        )
    else:
        why = ""
    raise ValueError(
        f"{folder} was encoded by model {manifest.get('model')!r} (fingerprint {recorded}, {recorded_backend} "
        f"backend), but the given encoder is {name!r} (fingerprint {fingerprint}, {backend} backend): its queries "
        f"would be scored against another model's documents.{why} Search with the model that encoded the shards, "
        "or encode the input again with this encoder (into another folder)"
    )


def _unfingerprinted_backend_message(target: Path, old: dict[str, Any], used_backend: str) -> str:
    """The refusal to resume, on ``used_backend``, a folder written before fingerprints and backends (torch)."""
    return (
        f"{target} was encoded by model {old.get('model')!r} with a kl-retrievers that recorded neither the model's "
        "fingerprint nor its backend: its shards are torch (float32) encodings, and this run would record the "
        f"folder as, and encode any missing shard on, the {used_backend} backend, whose encodings differ. Pass "
        "--model-backend torch (model_backend='torch' or a torch encoder) to resume it and record the model's "
        "fingerprint, or use another --out folder (nothing was overwritten)"
    )


#: The manifest keys that differ between two runs of one model on the two :data:`_TWIN_BACKENDS`: the backend, the
#: fingerprint (it hashes the encoder's class and config, each backend's own) and the batch size (recorded only
#: for an int8 ONNX graph, whose output depends on its batch).
_BACKEND_KEYS = frozenset({"model_backend", "model_fingerprint", "batch_size"})


def _other_backend_message(
    target: Path, old: dict[str, Any], manifest: dict[str, Any], differ: list[str], batch_size: int
) -> str | None:
    """The refusal to resume ``target``, whose manifest ``old`` records the same model on the other backend (torch
    or ONNX) than this run's ``manifest``: it names the recorded backend and the flag that resumes it. ``None``
    when more than the backend and what follows from it (``differ``: the differing keys) sets the runs apart, or
    the models both manifests record differ (:func:`_compare_models`: weights, config, tokenizer). Where either
    records no weights (an older manifest: the model's name stands for them), it says to pass the flag if the
    model is the same.
    """
    recorded, used = old.get("model_backend"), manifest.get("model_backend")
    if "model_backend" not in differ or not set(differ) <= _BACKEND_KEYS or {recorded, used} != _TWIN_BACKENDS:
        return None
    match = _compare_models(old, manifest)
    if match.weights is False or match.differ:
        return None
    was = old.get("batch_size")
    batch = ""
    if was is not None and was != batch_size and manifest.get("kind") != "query":  # queries: one at a time anyway
        batch = f" with batch_size {was!r} (--batch-size {was}), as its shards were encoded,"
    flag = f"--model-backend {recorded} (model_backend={recorded!r}, or an encoder loaded with backend={recorded!r})"
    if match.weights is None:
        unrecorded = "the folder's manifest" if old.get("model_weights_sha256") is None else "this run's model"
        advice = (
            f"{unrecorded.capitalize()} records no weights identity, so whether it is the same model cannot be "
            f"checked: if it is, pass {flag}{batch} to resume it; if not, use another --out folder"
        )
    else:
        advice = f"Pass {flag}{batch} to resume it, or use another --out folder"
    return (
        f"{target} holds shards of model {old.get('model')!r} encoded on the {recorded} backend, and this run's model "
        f"runs on {used}, whose encodings differ ({', '.join(differ)} differ). {advice} (nothing was overwritten)"
    )


def _manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``: errors name the file and the field."""
    path = folder / _MANIFEST
    if not path.is_file():
        if not folder.exists():
            raise NothingSavedError(f"no encoded-shards folder at {folder}")
        raise not_this_kind_error(folder, "an encoded-shards folder", _MANIFEST)
    manifest = _read_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object; got a JSON {type(manifest).__name__}")
    if manifest.get("format") != _FORMAT_NAME:
        raise ValueError(f"{path}: field 'format' must be {_FORMAT_NAME!r}; got {manifest.get('format')!r}")
    version = manifest.get("format_version", _FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: field 'format_version' must be a positive integer; got {version!r}")
    if version > _FORMAT_VERSION:
        from kl_retrievers.store._format import too_new_message

        writer = manifest.get("library_version")
        raise ValueError(too_new_message(str(path), writer, "format_version", version, _FORMAT_VERSION))
    shards = manifest.get("shards")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 0:
        raise ValueError(f"{path}: field 'shards' must be a non-negative integer; got {shards!r}")
    check_score(manifest, path)  # neg_kl / higher_is_better, when recorded
    return manifest


def iter_encoded(
    out: str | os.PathLike[str], *, encoder: Any | None = None, kind: str | None = None
) -> Iterator[tuple[list[str], Any]]:
    """Yield ``(ids, Gaussians)`` shard by shard (bounded memory), checking every checksum.

    Nothing in the Gaussians says which model made them, so shards added to a store whose encoder is
    another model would be searched with meaningless scores. Pass the store's ``encoder`` to check it:
    the manifest's model fingerprint (class, config, tokenizer and weights,
    :func:`~kl_retrievers.encoding_cache.model_fingerprint`) must be that encoder's. The same model on
    the other backend (shards encoded with torch read with its ONNX export, or the reverse) has another
    fingerprint: it is accepted when its weights (``weights_sha256``) are the manifest's and so are the
    encoder config fields and tokenizer both record (a model with the same weights and another pooling,
    ``beta``, ``max_length``... is refused, naming the fields; on the same backend, another fingerprint is
    always refused). A folder written before fingerprints cannot be checked: it is refused, and the message
    says how to record the fingerprint (rerunning the encode command with that model on the torch backend,
    which such a folder's shards come from, re-encoding nothing) or to read it unchecked (``encoder=None``).
    Pass ``kind="document"`` to check the shards hold documents, not queries.

    Before the first shard is yielded, every shard's ``shard.json`` is checked: it exists, with its
    files, its run key is the manifest's (the shard was made from this input, model and settings),
    and the shards follow each other (each one's ``first_row`` is the rows before it) and hold the
    manifest's records in all; so an unfinished or mixed folder yields nothing. Each shard's
    checksums are then checked as it is read.

    Shards written by a kl-retrievers from before run keys carry none: they are read as before,
    and one warning says that nothing ties them to the manifest.

    Args:
        out: The folder :func:`encode_corpus` wrote.
        encoder: The encoder that will search the shards (``None``: not checked).
        kind: ``"document"`` or ``"query"``: the kind the shards must hold (``None``: not checked).

    Raises:
        FileNotFoundError: No folder at ``out``.
        NothingSavedError: (a ``FileNotFoundError`` and a ``ValueError``) no folder, or one without a manifest.
        ValueError: ``out`` is not an encoded-shards folder (the message names the kind of one kl_retrievers
            wrote); a shard is missing, of another run, or corrupt (rerun the encode command to redo it);
            the shards were encoded by another model than ``encoder`` (or by a model the manifest gives no
            fingerprint of) or as another ``kind`` (the message names both); ``kind`` is not one of
            ``"document"``, ``"query"`` or ``None``.

    Examples:
        >>> for ids, g in iter_encoded("encoded/", encoder=store.encoder, kind="document"):  # doctest: +SKIP
        ...     store.add(gaussians=g, ids=ids)
    """
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS} or None; got {kind!r}")
    return _iter_encoded(user_path(out), encoder, kind)


def _iter_encoded(folder: Path, encoder: Any | None, kind: str | None) -> Iterator[tuple[list[str], Any]]:
    """:func:`iter_encoded` after its arguments are checked: the manifest and every ``shard.json`` are checked
    at the first ``next()``."""
    manifest = _manifest(folder)
    _check_reader(folder, manifest, encoder, kind)
    specs = _checked_specs(folder, manifest)
    yield from _read_shards(folder, specs, _run_key(manifest))


def _checked_specs(folder: Path, manifest: dict[str, Any]) -> list[ShardSpec]:
    """Every shard's spec from its ``shard.json``, checked against the manifest (see :func:`iter_encoded`)."""
    manifest_path = folder / _MANIFEST
    source = manifest.get("input")
    records = source.get("records") if isinstance(source, dict) else None
    if isinstance(records, bool) or not isinstance(records, int) or records < 0:
        raise ValueError(f"{manifest_path}: field 'input.records' must be a non-negative integer; got {records!r}")
    run = _run_key(manifest)
    specs: list[ShardSpec] = []
    rows = 0
    unkeyed = 0
    for index in range(manifest["shards"]):
        shard = folder / f"shard-{index:05d}"
        if not shard.exists():
            recover_dir(shard, required=_SHARD_META)
        outside = _outside_problem(folder, shard.name)
        if outside is not None:
            raise ValueError(f"{outside}; a link out of the folder is not followed: copy the shard into it")
        try:
            meta = _read_json(shard / _SHARD_META)
            spec = ShardSpec(**meta["spec"])
            values = asdict(spec).values()
            if spec.index != index or spec.rows < 1 or not all(type(v) is int for v in values):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{shard} is missing or incomplete; rerun the encode command to finish it") from None
        unkeyed += meta.get("run") is None
        problem = _run_problem(shard / _SHARD_META, meta, run)
        if problem is not None:
            raise ValueError(f"{problem}; rerun the encode command to redo it")
        if spec.first_row != rows:
            raise ValueError(
                f"{shard}: {_SHARD_META} gives first_row {spec.first_row}, but the shards before it hold {rows} rows; "
                "rerun the encode command to redo it"
            )
        problem = _table_problem(shard / _SHARD_META, meta)
        if problem is not None:
            raise ValueError(f"{shard} is corrupt ({problem}); rerun the encode command to redo it")
        for name in _SHARD_FILES:
            if not (shard / name).is_file():
                raise ValueError(f"{shard / name} is missing; rerun the encode command to finish the shard")
        rows += spec.rows
        specs.append(spec)
    if rows != records:
        raise ValueError(
            f"{folder}: its shards hold {rows} rows, but {manifest_path} gives {records} input records; "
            "rerun the encode command to redo it"
        )
    _warn_unkeyed(folder, unkeyed, len(specs))
    return specs


def _read_shards(folder: Path, specs: list[ShardSpec], run: str) -> Iterator[tuple[list[str], Any]]:
    """Read and yield checked shards, verifying each one's checksums first."""

    for spec in specs:
        shard = folder / spec.name
        problem = _shard_problem(folder, spec, run)
        if problem is not None:
            raise ValueError(f"{shard} is corrupt ({problem}); rerun the encode command to redo it")
        ids = _read_json(shard / "ids.json")
        try:
            mean = np.load(shard / "mean.npy", allow_pickle=False)
            var = np.load(shard / "var.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError, MemoryError) as exc:
            raise ValueError(f"{shard}: cannot read its Gaussians: {exc}") from None
        if not (isinstance(ids, list) and len(ids) == spec.rows and all(isinstance(i, str) for i in ids)):
            raise ValueError(f"{shard / 'ids.json'} must be a list of {spec.rows} string ids")
        if mean.ndim != 2 or mean.shape != var.shape or mean.shape[0] != spec.rows:
            raise ValueError(
                f"{shard}: mean.npy {mean.shape} and var.npy {var.shape} must both be ({spec.rows}, dim) arrays"
            )
        try:
            g = Gaussians(mean, var)
        except ValueError as exc:
            raise ValueError(f"{shard}: {exc}") from None
        yield ids, g


def _check_unique_shard_ids(folder: Path, shard_ids: list[list[str]]) -> None:
    """Refuse an id held twice by the shards of ``folder`` (``shard_ids``: each shard's ids, in shard order).

    Examples:
        >>> _check_unique_shard_ids(Path("enc"), [["a", "b"], ["b"]])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: enc: id 'b' is in both shard-00000 and shard-00001; ids must be unique ...
    """
    first: dict[str, int] = {}
    for index, ids in enumerate(shard_ids):
        for doc_id in ids:
            seen = first.get(doc_id)
            if seen is not None:
                where = f"both shard-{seen:05d} and shard-{index:05d}" if seen != index else f"shard-{index:05d} twice"
                raise ValueError(
                    f"{folder}: id {doc_id!r} is in {where}; ids must be unique (the encode command refuses a "
                    "repeated id): encode the input again into a new folder"
                )
            first[doc_id] = index


def load_encoded(
    out: str | os.PathLike[str], *, encoder: Any | None = None, kind: str | None = None
) -> tuple[Any, list[str]]:
    """All shards concatenated: ``(Gaussians, ids)``.

    ``encoder`` and ``kind`` check that the shards are that encoder's and of that kind, as in :func:`iter_encoded`.

    Raises:
        FileNotFoundError: No folder at ``out``.
        NothingSavedError: (a ``FileNotFoundError`` and a ``ValueError``) no folder, or one without a manifest.
        ValueError: As :func:`iter_encoded`; also an id that two shards (or one shard twice) hold: the message
            names the id and both shards (the encode command refuses a repeated id, so its folders hold none).

    Examples:
        >>> g, ids = load_encoded("encoded/", encoder=store.encoder, kind="document")  # doctest: +SKIP
    """

    parts = list(iter_encoded(out, encoder=encoder, kind=kind))
    ids = [i for part_ids, _ in parts for i in part_ids]
    _check_unique_shard_ids(user_path(out), [part_ids for part_ids, _ in parts])
    if not parts:
        return Gaussians(np.zeros((0, 1), np.float32), np.ones((0, 1), np.float32)), ids
    return Gaussians.concat([g for _, g in parts]), ids
