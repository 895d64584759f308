"""The on-disk format of a :class:`~kl_retrievers.store.faiss.KLStore` folder: names, checks, readers, writers.

A folder holds ``config.json`` and exactly the files it lists, each with its size and SHA-256:

* ``mean.npy`` / ``var.npy``: float32 ``(count, dim)`` arrays (no pickle);
* ``documents.jsonl``: one ``{"id", "text", "metadata"}`` object per row, in row order;
* ``index.faiss``: the FAISS index (when ``index_built``), written and read by the search engine
  (:mod:`kl_retrievers.store._engines`);
* ``tombstones.npy``: only in a store saved with deleted (or replaced) rows it had not compacted yet
  (``tombstones`` in the config, their number): the int64 row numbers of those rows, ascending. Their
  Gaussians and index entries are saved as they are, their id without text or metadata
  (:func:`read_tombstones`).

Format version 1 since the first release; fields added since (``index_offset``, ``flat_centre``,
``index_centre``, some ``index_params``) are optional, so every earlier folder still loads. A store
whose ``index.faiss`` holds centred vectors (``flat_centre`` or ``index_centre`` set, not zero: every
flat store built by this release, an approximate one where centring pays) is written as
format version 2 (:func:`format_version_for`), which a release reading only version 1 refuses instead of
searching that index with uncentred queries; every other store is still written as version 1, which
earlier releases read. This release reads both (and the version-1 folders with a centre written before
version 2 existed). A store saved with tombstones is written as format version 3
(:data:`TOMBSTONES_FORMAT_VERSION`): a release that does not know them would search their rows as live
documents. Nothing here imports FAISS.

The numbers the search engine needs to rebuild a query's vector for the saved index:

* ``flat_centre`` (flat stores): the vector subtracted from every mean (queries too) before the
  rewrite ``d~`` enters the index, the mean of the first batch's means (of the live documents' means
  after a ``rebuild()``, or a compaction that centred the index again); null for an approximate
  store, absent / null in a flat store saved before centring (centre 0).
* ``index_centre`` (``"hnsw"`` / ``"ivf"`` stores): the same for the approximate index, the mean of
  every document mean at its last (re)build; null before the index is built, absent / null in a
  store saved before centring (centre 0: such a store loads and ranks exactly as before).
* ``index_offset``, ``norm_bound``: the shift ``o`` of the first coordinate of the centred ``d~``
  and the bound ``M`` of the MIPS -> L2 reduction (approximate stores).
* ``index_growth`` (approximate stores whose index is built): ``built_rows``, the live documents at the index's
  last build, ``written_rows``, those added or upserted since, and ``built_at_load`` (``built_rows`` was counted
  at a load of a folder saved before this field) with ``rows_at_load``, the live documents at that load where
  they were fewer than ``built_rows`` counts (absent otherwise, and in a store saved before it), which the
  stale-index warning compares and names
  (:meth:`~kl_retrievers.store._engines.ApproxEngine.stale_training`). ``built_rows`` may exceed the documents the
  store holds (deleted since the build), but not fall below the fewest a build trains the index on (``nlist`` for
  IVF, ``2^pq_nbits`` for PQ, the larger for both, 1 otherwise): such a value is refused at load, naming the
  field. Absent / null in a store saved before it: counted from the size at load (at least that fewest). Earlier
  releases ignore it, so the format version does not change for it.
* ``flat_norm_max`` (flat stores): the largest norm of each of the three blocks of the float32 ``d~`` rows
  in ``index.faiss`` (an upper bound after deletions), which bounds the float32 error of every search
  (:func:`~kl_retrievers.gaussian.float32_score_bound`). Absent / null in a store saved before it was
  written: the first search computes it from every row of the index, as it does when the folder is
  loaded without ``verify_checksums``. The saved value is only taken over files whose checksums were
  verified and with ``flat_norm_max_sha256``, the SHA-256 of the bound and of ``index.faiss``'s checksum
  (:func:`flat_norm_digest`: a bound edited in, or damaged in, config.json is refused; one without it is
  computed), and it must lie above the rows the load checks. Earlier releases ignore both fields, so the
  format version does not change for them.

``config.json`` is not covered by the checksums, so on load a few rows of the index are rebuilt
from the stored Gaussians with these numbers and compared with the index's own (see
:meth:`kl_retrievers.store._engines.FaissEngine.attach`), and the index's kind, compression and
refine stage are compared with ``index_type`` / ``index_params``.

Examples:
    >>> _is_real(1.5), _is_real(float("nan")), _is_int(True)
    (True, False, False)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from itertools import compress
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from kl_retrievers._io import (
    _version_key,
    describe_saved_meta,
    finite_json,
    library_version,
    read_json_object,
    read_npy_header,
    refuse_json_constant,
)
from kl_retrievers._score import check_score_fields
from kl_retrievers.hub import HashingWriter, sha256_file
from kl_retrievers.store._base import INDEX_TYPES, StoreFormatError, _check_utf8

logger = logging.getLogger(__name__)

#: The newest store format version this release reads (and writes, for a store saved with tombstones).
FORMAT_VERSION = 3
#: The version written for a store saved with tombstones (``tombstones.npy``), whatever its centre.
TOMBSTONES_FORMAT_VERSION = 3
#: The version written for a store with a centre and no tombstones.
CENTRED_FORMAT_VERSION = 2
#: The version written for a store without a centre: every release reads it.
BASE_FORMAT_VERSION = 1
FORMAT_NAME = "kl-retrievers/klstore"
CONFIG = "config.json"
MEAN = "mean.npy"
VAR = "var.npy"
DOCS = "documents.jsonl"
INDEX = "index.faiss"
TOMBSTONES = "tombstones.npy"
#: The only files a store folder holds (besides config.json); load() reads nothing else.
STORE_FILES = (MEAN, VAR, DOCS, INDEX, TOMBSTONES)
#: The ``index_params`` keys this release writes (and so reads): KLStore's constructor settings.
INDEX_PARAMS = (
    "hnsw_m",
    "ef_search",
    "ef_construction",
    "nlist",
    "nprobe",
    "compression",
    "pq_m",
    "pq_nbits",
    "refine",
    "rescore_pool",
    "rescore_factor",
    "norm_headroom",
    "exact_threshold",
    "compact_threshold",
    "seed",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Rows read at once when a store's Gaussians are checked on load.
LOAD_BLOCK = 32768


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------ config.json
def format_version_for(engine_config: dict[str, Any], tombstones: int = 0) -> int:
    """The ``format_version`` to write for a store whose engine saves ``engine_config``, with ``tombstones`` dead rows.

    :data:`TOMBSTONES_FORMAT_VERSION` (3) when the store is saved with tombstones: a release that does not
    know them would return their rows as live documents. Else :data:`CENTRED_FORMAT_VERSION` (2) when
    ``flat_centre`` or ``index_centre`` is set and not all zeros:
    ``index.faiss`` then holds vectors centred on it, which a release that ignores the centre would
    search with uncentred queries and rank wrongly without a word; version 2 makes such a release refuse
    the folder. Otherwise :data:`BASE_FORMAT_VERSION` (1), which every release reads: no centre, or the
    zero centre a store saved before centring keeps when documents are added to it (it ranks the same
    without it).

    Examples:
        >>> format_version_for({"flat_centre": [0.5, 1.0], "index_centre": None})
        2
        >>> format_version_for({"flat_centre": [0.0, 0.0], "index_centre": None})
        1
        >>> format_version_for({"flat_centre": None, "index_centre": None})
        1
        >>> format_version_for({"flat_centre": None, "index_centre": None}, tombstones=2)
        3
    """
    if tombstones:
        return TOMBSTONES_FORMAT_VERSION
    centres = (engine_config.get(field) for field in ("flat_centre", "index_centre"))
    centred = any(c is not None and any(x != 0 for x in c) for c in centres)
    return CENTRED_FORMAT_VERSION if centred else BASE_FORMAT_VERSION


def is_store_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a KLStore's ``config.json`` (``format`` :data:`FORMAT_NAME`): a save may replace it.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / CONFIG).write_text('{"dim": 4}')
        >>> is_store_folder(folder)
        False
    """
    config = read_json_object(folder / CONFIG)
    return config is not None and config.get("format") == FORMAT_NAME


def read_config(cfg_path: Path) -> dict[str, Any]:
    """Read and validate a store's ``config.json``; every problem is a :class:`StoreFormatError` naming the field.

    Stores saved by earlier releases of format version 1 (without ``index_offset`` or some
    ``index_params``), format version 2 (a centre set) and 3 (tombstones) are accepted; a newer format version or an
    ``index_params`` key this release does not know (what a newer release would write) is refused.
    ``NaN`` / ``Infinity`` (not standard JSON) are refused, except in ``encoder.config`` (only recorded,
    never read back: earlier releases wrote an encoder's non-finite settings as they were), where they
    become null with a warning.
    """
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreFormatError(f"{cfg_path} is not valid JSON: {exc}") from exc
    except RecursionError:  # the C decoder recurses once per level of nesting
        raise StoreFormatError(f"{cfg_path} nests JSON arrays or objects too deeply to read") from None
    if not isinstance(config, dict):
        raise StoreFormatError(f"{cfg_path} must hold a JSON object; got a JSON {type(config).__name__}")
    found: list[str] = []
    try:
        config = finite_json(config, found=found)
    except RecursionError:  # nesting the decoder took, but not this (recursive, Python) walk
        raise StoreFormatError(f"{cfg_path} nests JSON arrays or objects too deeply to read") from None
    refused = [where for where in found if not where.startswith("encoder.config.")]
    if refused:
        raise StoreFormatError(
            f"{cfg_path}: field(s) {refused} hold NaN or Infinity, which standard JSON cannot hold and a store "
            "never writes (edited by hand?)"
        )
    if found:
        logger.warning(
            "%s: encoder.config holds NaN or Infinity at %s (not standard JSON); read as null", cfg_path, found
        )
    _check_header(config, cfg_path)
    _check_fields(config, cfg_path)
    _check_file_table(config, cfg_path)
    return config


def too_new_message(where: str, writer: Any, what: str, found: int, newest: int) -> str:
    """The refusal of a folder in a format version above the newest this kl-retrievers reads, true of its writer.

    The writer is called newer only when its recorded ``library_version`` is a later version than this one:
    two builds of the same version (development builds) can write different format versions, and a folder
    may not record its writer at all.

    Args:
        where: The folder or file refused.
        writer: The ``library_version`` it records (``None``: none).
        what: The name of the version field as the message should say it (``"store format_version"``).
        found: The version it holds.
        newest: The newest version this library reads.

    Examples:
        >>> too_new_message("s", library_version(), "store format_version", 4, 3)  # doctest: +ELLIPSIS
        's was written in store format_version 4 by kl-retrievers ..., another build of this same version...'
    """
    ours = library_version()
    reads = f"this kl-retrievers ({ours}) reads {what} {newest} and earlier"
    if writer is None or (isinstance(writer, str) and not writer.strip()):
        return (
            f"{where} was written in {what} {found} by a kl-retrievers whose version it does not record; {reads}: "
            f"load it with a kl-retrievers that reads {what} {found} (a later release)"
        )
    if not isinstance(writer, str):
        return (
            f"{where} was written in {what} {found} by a kl-retrievers whose recorded library_version {writer!r} is "
            f"not a version string; {reads}: load it with a kl-retrievers that reads {what} {found} (a later release)"
        )
    writer_key, our_key = _version_key(writer), _version_key(ours)
    if writer_key is not None and our_key is not None and writer_key > our_key:
        return (
            f"{where} was written in {what} {found} by a newer kl-retrievers ({writer}); {reads}: upgrade "
            "kl-retrievers to load it"
        )
    if writer == ours or (writer_key is not None and writer_key == our_key):
        return (
            f"{where} was written in {what} {found} by kl-retrievers {writer}, another build of this same version "
            f"(a development build from another commit?); this build reads {what} {newest} and earlier: load it "
            f"with the build that wrote it, or with a later release that reads {what} {found}"
        )
    if writer_key is None or our_key is None:
        unreadable = writer if writer_key is None else ours
        return (
            f"{where} was written in {what} {found} by kl-retrievers {writer!r}, a version that cannot be compared "
            f"with this one ({unreadable!r} is not a version number); {reads}: load it with the build that wrote "
            f"it, or with a later release that reads {what} {found}"
        )
    return (
        f"{where} was written in {what} {found} by kl-retrievers {writer}, which is not a later version than this "
        f"one (a development build?); {reads}: load it with the build that wrote it, or with a later release "
        f"that reads {what} {found}"
    )


def _writer_hint(config: dict[str, Any]) -> str:
    """Who could have written a field this release does not know, from the store's recorded ``library_version``.

    A newer release may write it (upgrade); a release not newer than this one never does (the file was edited or is
    damaged); a writer version that is absent or not comparable could be either, and so could this very version
    where either is a development or local build (a later checkout of it may write the key).

    Examples:
        >>> _writer_hint({"library_version": "0.0.1"})  # doctest: +ELLIPSIS
        'the store was written by kl-retrievers 0.0.1, not a later version than this one ...: the file was edited...'
        >>> _writer_hint({"library_version": 5})  # doctest: +ELLIPSIS
        "the store was written by kl-retrievers 5, this is ... (a newer release's store, or an edited or damaged..."
    """
    writer, ours = config.get("library_version"), library_version()
    writer_key = _version_key(writer) if isinstance(writer, str) else None
    our_key = _version_key(ours)
    other = repr(writer) if "library_version" in config else "unknown"  # a value of another type, as it is
    said = f"the store was written by kl-retrievers {writer if isinstance(writer, str) else other}"
    builds = (ours, writer) if isinstance(writer, str) else (ours,)
    a_build = writer_key == our_key and any("dev" in v.lower() or "+" in v for v in builds)
    if writer_key is None or our_key is None or a_build:
        return f"{said}, this is {ours} (a newer release's store, or an edited or damaged config.json)"
    if writer_key > our_key:
        return f"{said}, this is {ours} (a newer release's store? upgrade kl-retrievers)"
    return (
        f"{said}, not a later version than this one ({ours}), which writes no such key: the file was edited or is "
        "damaged"
    )


def _bad(config: dict[str, Any], cfg_path: Path, field: str, what: str) -> StoreFormatError:
    got = config.get(field, "<missing>")
    return StoreFormatError(f"{cfg_path}: field {field!r} must be {what}; got {got!r}")


def _check_header(config: dict[str, Any], cfg_path: Path) -> None:
    """Format name and version, and the score the store serves."""
    if config.get("format") != FORMAT_NAME:
        other = describe_saved_meta(config)
        found = f"the folder is {other}" if other is not None else f"field 'format' is {config.get('format')!r}"
        raise StoreFormatError(f"{cfg_path} is not a KLStore config: {found}")
    saved_version = config.get("library_version")
    version = config.get("format_version")
    if not _is_int(version):
        raise _bad(config, cfg_path, "format_version", "an integer")
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            too_new_message(str(cfg_path.parent), saved_version, "store format_version", version, FORMAT_VERSION)
        )
    if version < BASE_FORMAT_VERSION:
        raise StoreFormatError(
            f"{cfg_path}: unsupported store format_version {version} (this library reads "
            f"{BASE_FORMAT_VERSION} to {FORMAT_VERSION})"
        )
    check_score_fields(config, cfg_path, error=StoreFormatError, required=True)  # always written: both required


def _check_fields(config: dict[str, Any], cfg_path: Path) -> None:
    """Sizes, index settings, the reduction's numbers and the encoder; fills in defaults of older releases."""
    dim = config.get("dim")
    if dim is not None and not (_is_int(dim) and dim > 0):
        raise _bad(config, cfg_path, "dim", "a positive integer (or null for an empty store)")
    if not (_is_int(config.get("count")) and config["count"] >= 0):
        raise _bad(config, cfg_path, "count", "a non-negative integer")
    tombstones = config.setdefault("tombstones", 0)  # absent: none (every store saved before version 3)
    if not (_is_int(tombstones) and 0 <= tombstones <= config["count"]):
        raise _bad(config, cfg_path, "tombstones", f"an integer from 0 to 'count' ({config['count']})")
    if tombstones and config["format_version"] < TOMBSTONES_FORMAT_VERSION:
        raise StoreFormatError(
            f"{cfg_path}: field 'tombstones' is {tombstones}, but a store of format_version "
            f"{config['format_version']} holds none (they came with format_version {TOMBSTONES_FORMAT_VERSION})"
        )
    if config.get("dtype", "float32") != "float32":
        raise _bad(config, cfg_path, "dtype", "'float32'")
    if config.get("index_type") not in INDEX_TYPES:
        raise _bad(config, cfg_path, "index_type", f"one of {INDEX_TYPES}")
    if not isinstance(config.get("index_built"), bool):
        raise _bad(config, cfg_path, "index_built", "true or false")
    params = config.get("index_params")
    if not isinstance(params, dict):
        raise _bad(config, cfg_path, "index_params", "a JSON object")
    unknown = sorted(set(params) - set(INDEX_PARAMS))
    if unknown:
        raise StoreFormatError(f"{cfg_path}: field 'index_params' has unknown key(s) {unknown}; {_writer_hint(config)}")
    norm_bound = config.get("norm_bound")
    approximate = config["index_type"] != "flat" and config["index_built"]
    if norm_bound is not None or approximate:
        if not (_is_real(norm_bound) and norm_bound > 0):
            raise _bad(config, cfg_path, "norm_bound", "a positive finite number")
        config["norm_bound"] = float(norm_bound)
    flat_norm = config.setdefault("flat_norm_max", None)  # absent in stores saved before it: computed at need
    if flat_norm is not None:
        if not (
            config["index_type"] == "flat"
            and isinstance(flat_norm, list)
            and len(flat_norm) == 3
            and all(_is_real(x) and x >= 0 for x in flat_norm)
        ):
            raise _bad(
                config, cfg_path, "flat_norm_max", "null or, in a flat store, a list of 3 non-negative finite numbers"
            )
        config["flat_norm_max"] = [float(x) for x in flat_norm]
    digest = config.setdefault(FLAT_NORM_DIGEST, None)  # absent: the bound is not taken (flat_norm_from_config)
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise _bad(config, cfg_path, FLAT_NORM_DIGEST, "null or 64 lowercase hex digits")
    _check_growth(config, cfg_path)
    config.setdefault("index_offset", 0.0)  # absent in stores saved before the shift
    if not _is_real(config["index_offset"]):
        raise _bad(config, cfg_path, "index_offset", "a finite number")
    config["index_offset"] = float(config["index_offset"])
    encoder = config.get("encoder")
    if encoder is not None:
        if not isinstance(encoder, dict):
            raise _bad(config, cfg_path, "encoder", "a JSON object or null")
        if not isinstance(encoder.get("name_or_path", ""), str):
            raise StoreFormatError(f"{cfg_path}: field 'encoder.name_or_path' must be a string")
        if not isinstance(encoder.get("config"), (dict, type(None))):
            raise StoreFormatError(f"{cfg_path}: field 'encoder.config' must be a JSON object or null")
        # absent in stores saved before they were recorded
        for field in ("weights_sha256", "backbone_sha256", TOKENIZER_FIELD):
            if not isinstance(encoder.get(field), (str, type(None))):
                raise StoreFormatError(
                    f"{cfg_path}: field 'encoder.{field}' must be a string or null, not {encoder.get(field)!r}"
                )
    config["encoder"] = encoder


def _check_growth(config: dict[str, Any], cfg_path: Path) -> None:
    """Check ``index_growth`` (null where absent: a store saved before it, a flat store, an index not built).

    Its shape, and ``rows_at_load`` (absent / null: none; read as null) against the others: a store whose index
    is not built (or a flat one) does not read it, and the fields that say so are checked, with their own
    messages, where they are read (``built_rows``'s least value, which the settings set, too:
    :meth:`~kl_retrievers.store._engines.ApproxEngine.attach`).
    """
    growth = config.setdefault("index_growth", None)
    if growth is None:
        return
    if not (
        isinstance(growth, dict)
        and set(growth) - {"rows_at_load"} == {"built_rows", "written_rows", "built_at_load"}
        and all(_is_int(growth[key]) and growth[key] >= 0 for key in ("built_rows", "written_rows"))
        and isinstance(growth["built_at_load"], bool)
    ):
        raise _bad(
            config,
            cfg_path,
            "index_growth",
            "null or an object of non-negative integers 'built_rows' and 'written_rows', a boolean 'built_at_load' "
            "and an optional 'rows_at_load'",
        )
    at_load = growth.setdefault("rows_at_load", None)  # absent in stores saved before it
    if at_load is not None and not (
        growth["built_at_load"] and _is_int(at_load) and 0 <= at_load < growth["built_rows"]
    ):
        raise StoreFormatError(
            f"{cfg_path}: field 'index_growth.rows_at_load' must be null, or with 'built_at_load' true a non-negative "
            f"integer below 'built_rows' ({growth['built_rows']!r}); got {at_load!r} (with 'built_at_load' "
            f"{growth['built_at_load']!r})"
        )


def _check_file_table(config: dict[str, Any], cfg_path: Path) -> None:
    """``files``: only the names the format defines, each with a size and a checksum; every required one."""
    files = config.get("files")
    if not isinstance(files, dict):
        raise _bad(config, cfg_path, "files", "a JSON object mapping file names to their size and checksum")
    for name, info in files.items():
        if name not in STORE_FILES:
            raise StoreFormatError(
                f"{cfg_path}: field 'files' names {name!r}; a store folder holds only {list(STORE_FILES)}"
            )
        if not isinstance(info, dict):
            raise StoreFormatError(f"{cfg_path}: field 'files.{name}' must be an object with 'bytes' and 'sha256'")
        if not (_is_int(info.get("bytes")) and info["bytes"] >= 0):
            raise StoreFormatError(
                f"{cfg_path}: field 'files.{name}.bytes' must be a non-negative integer; got {info.get('bytes')!r}"
            )
        if not (isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])):
            raise StoreFormatError(
                f"{cfg_path}: field 'files.{name}.sha256' must be 64 lowercase hex digits; got {info.get('sha256')!r}"
            )
    tombstones = config["tombstones"]
    for name in [MEAN, VAR, DOCS] + ([INDEX] if config["index_built"] else []) + ([TOMBSTONES] if tombstones else []):
        if name not in files:
            raise StoreFormatError(f"{cfg_path}: field 'files' has no entry for required file {name}")
    if INDEX in files and not config["index_built"]:
        raise StoreFormatError(f"{cfg_path}: field 'files' lists {INDEX} but 'index_built' is false")
    if TOMBSTONES in files and not tombstones:
        raise StoreFormatError(f"{cfg_path}: field 'files' lists {TOMBSTONES} but field 'tombstones' is 0")


#: The config field holding the centre subtracted from every mean, per kind of index (see the module docstring).
CENTRE_FIELDS = {"flat": "flat_centre", "hnsw": "index_centre", "ivf": "index_centre"}


def encoder_weights(encoder: Any) -> str | None:
    """``encoder.weights_sha256`` (the identity of its weights) when it is a string, else ``None`` (not known)."""
    weights = getattr(encoder, "weights_sha256", None)
    return weights if isinstance(weights, str) else None


def _backbone_of(config: Any) -> tuple[str | None, str | None]:
    """``(backbone SHA-256, backbone name)`` an encoder config records (a config object or its ``to_dict()``).

    The torch encoder's :class:`~kl_retrievers.encoder.GaussianEncoderConfig` holds ``backbone_sha256`` and
    ``backbone`` itself; an ONNX encoder's config holds the torch config it was exported from (or, on a shared
    backbone graph, read from) under ``encoder``. A SHA-256 that is not 64 hex digits counts as not known.
    """
    if isinstance(config, dict):
        inner = config.get("encoder") if config.get("backend") == "onnx" else None
        fields = inner if isinstance(inner, dict) else config
        sha, name = fields.get("backbone_sha256"), fields.get("backbone")
    else:
        inner = getattr(config, "encoder", None)  # an OnnxEncoderConfig's source config
        if isinstance(inner, dict):
            sha, name = inner.get("backbone_sha256"), inner.get("backbone")
        else:
            sha, name = getattr(config, "backbone_sha256", None), getattr(config, "backbone", None)
    known = sha.lower() if isinstance(sha, str) and _SHA256.fullmatch(sha.lower()) else None
    return known, (name if isinstance(name, str) and name else None)


def encoder_backbone(encoder: Any) -> tuple[str | None, str | None]:
    """``(SHA-256, name)`` of the backbone ``encoder``'s config says it was built on (``None``: not known).

    Examples:
        >>> class Enc:
        ...     class config:
        ...         backbone, backbone_sha256 = "bge-small-en", "A" * 64
        >>> encoder_backbone(Enc())[0][:4], encoder_backbone(Enc())[1], encoder_backbone(object())
        ('aaaa', 'bge-small-en', (None, None))
    """
    return _backbone_of(getattr(encoder, "config", None))


def recorded_backbone(record: Any, weights: str | None) -> tuple[str | None, str | None]:
    """``(SHA-256, name)`` of the backbone a KLStore's ``config.json`` ``encoder`` record names (``None``: not known).

    The record's ``backbone_sha256`` (beside ``weights_sha256``: the backbone the documents were encoded over,
    kept by every save as the weights identity is; ``null`` when not known) when the record has that field.
    A store saved before it was recorded falls back to the record's encoder config (``encoder.config``:
    ``backbone_sha256`` for a torch encoder, ``encoder.backbone_sha256`` for an ONNX one), which is the saving
    encoder's: right for a store saved by the model that indexed it. Only while the store's documents identity
    is still the record's ``weights_sha256`` (``weights``), else the record describes other weights. The
    backbone's name comes from the config, only when it names the same SHA-256.

    Examples:
        >>> onnx_config = {"backend": "onnx", "encoder": {"backbone_sha256": "b" * 64}}
        >>> record = {"weights_sha256": "a" * 64, "config": onnx_config}
        >>> recorded_backbone(record, "a" * 64)[0][:4], recorded_backbone(record, "c" * 64)
        ('bbbb', (None, None))
        >>> recorded_backbone({**record, "backbone_sha256": "d" * 64}, "a" * 64)[0][:4]  # the field first
        'dddd'
        >>> recorded_backbone({**record, "backbone_sha256": None}, "a" * 64)  # recorded as not known
        (None, None)
        >>> recorded_backbone(None, None), recorded_backbone({"config": None}, None)
        ((None, None), (None, None))
    """
    if not isinstance(record, dict) or record.get("weights_sha256") != weights:
        return None, None
    config = record.get("config")
    from_config = _backbone_of(config) if isinstance(config, dict) else (None, None)
    if "backbone_sha256" not in record:  # saved before the field: the saving encoder's config
        return from_config
    sha = record["backbone_sha256"]
    known = sha.lower() if isinstance(sha, str) and _SHA256.fullmatch(sha.lower()) else None
    return known, (from_config[1] if known is not None and from_config[0] == known else None)


#: The :class:`~kl_retrievers.encoder.GaussianEncoderConfig` fields that change an encoder's outputs for the same
#: weights (``extra.query_prefix`` too): compared by :func:`warn_if_other_weights` when a store's record holds them.
#: Not ``backbone`` (a path that moves with the folder; its weights are compared by SHA-256) nor ``extra.training``.
OUTPUT_CONFIG_FIELDS = (
    "dim",
    "beta",
    "pooling",
    "var_token",
    "var_floor",
    "normalize_pooled",
    "max_length",
    "query_max_length",
)


#: The :data:`OUTPUT_CONFIG_FIELDS` that change only how documents are encoded (their token budget), not queries.
DOCUMENT_ONLY_FIELDS = ("max_length",)


#: The :data:`OUTPUT_CONFIG_FIELDS` an ONNX encoder takes from its own config (not from the source config it holds
#: under ``encoder``, written at export) when it encodes.
ONNX_OWN_FIELDS = ("dim", "max_length", "query_max_length")


def _output_fields(config: Any) -> dict[str, Any] | None:
    """The output-relevant fields (:data:`OUTPUT_CONFIG_FIELDS`, ``query_prefix``) of an encoder config (an object
    or its ``to_dict()``; an ONNX encoder's ``encoder`` section, with its own :data:`ONNX_OWN_FIELDS`); ``None`` when
    it is not such a config."""
    if not isinstance(config, dict):
        to_dict = getattr(config, "to_dict", None)
        try:
            config = to_dict() if callable(to_dict) else None
        except Exception:  # a foreign encoder's config: nothing to compare
            return None
        if not isinstance(config, dict):
            return None
    if config.get("backend") == "onnx":
        # the source encoder's settings, except the ones an ONNX encoder reads from its own config when it encodes
        # (the dimension and token budgets: onnx_encoder.config.max_length = 5 changes its documents' encodings)
        source = config.get("encoder")
        if not isinstance(source, dict):
            return None
        own = {name: config[name] for name in ONNX_OWN_FIELDS if _is_int(config.get(name))}
        config = {**source, **own}
    if "dim" not in config:
        return None
    fields = {name: config.get(name) for name in OUTPUT_CONFIG_FIELDS if name in config}
    extra = config.get("extra")
    fields["query_prefix"] = extra.get("query_prefix", "") if isinstance(extra, dict) else ""
    return fields


def config_differences(recorded: Any, encoder: Any) -> list[str]:
    """The output-relevant config fields in which ``encoder`` differs from a store's recorded encoder config.

    Each entry names the field with both values (``"pooling 'cls' vs 'mean'"``). What either side does not
    record is not compared (a config without the field, a foreign encoder), nor a recorded ``None`` where the
    encoder's value is NaN or Infinity: a store records those as ``null`` (standard JSON).

    Examples:
        >>> class Enc:
        ...     config = {"dim": 8, "pooling": "mean", "beta": 1.0, "extra": {"query_prefix": "q: "}}
        >>> config_differences({"dim": 8, "pooling": "cls", "beta": 1.0, "extra": {}}, Enc())
        ["pooling 'cls' vs 'mean'", "query_prefix '' vs 'q: '"]
        >>> config_differences(None, Enc())
        []
        >>> class Inf:
        ...     config = {"dim": 8, "beta": float("inf")}
        >>> config_differences({"dim": 8, "beta": None}, Inf())  # inf was recorded as null
        []
    """
    was, now = _output_fields(recorded), _output_fields(getattr(encoder, "config", None))
    if was is None or now is None:
        return []
    return [
        f"{k} {was[k]!r:.40} vs {now[k]!r:.40}"
        for k in was
        if k in now and was[k] != now[k] and not (was[k] is None and _is_non_finite(now[k]))
    ]


def _is_non_finite(value: Any) -> bool:
    """Whether ``value`` is a float NaN or Infinity (what a store's standard-JSON record holds as ``null``)."""
    return isinstance(value, float) and not math.isfinite(value)


#: The field of a KLStore's ``config.json`` ``encoder`` record holding the SHA-256 of the documents' tokenizer
#: (:func:`encoder_tokenizer`), kept by every save as the weights identity is; absent in stores saved before it was
#: recorded (then not compared). A Milvus collection's config holds it as ``encoder_tokenizer_identity_sha256``.
#: Not a saved encoder's ``tokenizer_sha256`` (tokenizer file name -> that file's SHA-256, checked on load).
TOKENIZER_FIELD = "tokenizer_identity_sha256"


def encoder_tokenizer(encoder: Any) -> str | None:
    """SHA-256 of what ``encoder``'s tokenizer turns text into (vocabulary, normalisation, added tokens:
    :func:`kl_retrievers.encoding_cache.tokenizer_identity`, the same for a torch encoder and its ONNX export);
    ``None`` when it has none.

    Examples:
        >>> encoder_tokenizer(object()) is None
        True
    """
    from kl_retrievers.encoding_cache import _tokenizer_digest

    try:
        return _tokenizer_digest(encoder)
    except Exception:  # a foreign encoder's tokenizer: not known
        return None


def encoding_differences(config: Any, tokenizer: Any, encoder: Any) -> list[str]:
    """What, besides its weights, makes ``encoder`` encode otherwise than the model a store records: the
    :func:`config_differences` from the recorded encoder ``config``, and another tokenizer than the recorded
    SHA-256 ``tokenizer`` (:func:`encoder_tokenizer`). What either side does not record is not compared.

    Examples:
        >>> class Enc:
        ...     config = {"dim": 8, "pooling": "mean"}
        >>> encoding_differences({"dim": 8, "pooling": "cls"}, "a" * 64, Enc())  # Enc has no tokenizer
        ["pooling 'cls' vs 'mean'"]
    """
    differ = config_differences(config, encoder)
    now = encoder_tokenizer(encoder) if isinstance(tokenizer, str) else None
    if now is not None and now != tokenizer:
        differ.append(f"tokenizer (vocabulary, normalisation, added tokens) SHA-256 {tokenizer:.16}... vs {now:.16}...")
    return differ


def warn_if_other_weights(
    recorded: Any,
    encoder: Any,
    where: str,
    log: logging.Logger = logger,
    *,
    backbone: Any = None,
    config: Any = None,
    tokenizer: Any = None,
) -> bool:
    """Warn when ``encoder``'s weights are not those a store's documents were encoded with; ``True`` if it warned.

    Compares the weights identity a store records (``encoder.weights_sha256`` in a :class:`KLStore
    <kl_retrievers.store.faiss.KLStore>` folder's config.json, ``encoder_weights_sha256`` in a Milvus
    collection's config) with the encoder's own (:attr:`kl_retrievers.encoder.GaussianEncoder.weights_sha256`:
    the same for the torch backend and an ONNX export of that model). Nothing is said when either is unknown (a
    store saved before it was recorded, an encoder built or changed in memory, an ONNX export made before
    exports recorded it). Not a refusal: searching with another model is allowed, but its scores are
    meaningless. Both stores call it.

    The weights identity of a model saved as a delta (``delta.safetensors``, every bundled model) covers only
    what differs from its backbone: two models with byte-identical deltas over different backbones
    (``minilm-unit-variance`` and ``bge-small-unit-variance``) share it. So when the identities are equal, the
    SHA-256 of the backbone the store records (``backbone``: ``encoder.backbone_sha256`` in a KLStore's
    config.json, see :func:`recorded_backbone`; ``encoder_backbone_sha256`` in a Milvus collection's config;
    both the first documents' backbone, kept as the weights identity is) is compared with
    the encoder's (``config.backbone_sha256``; an ONNX encoder's ``config.encoder.backbone_sha256``), and a
    difference warns too; again nothing is said when either is unknown, so a store or collection saved before
    the backbone was recorded is compared by weights alone.

    When weights and backbone match, the encoder config the store records (``config``: its ``encoder.config``;
    ``encoder_config`` in a Milvus collection's config) is compared with the encoder's in the fields that change
    outputs for the same weights (:func:`config_differences`: pooling, beta, ``var_token``, ``normalize_pooled``,
    the token budgets, the query prefix, ...), and a difference warns naming each field with both values: a model
    folder re-saved with another config keeps its weights identity, which names the weights only. So is the
    SHA-256 of the tokenizer the store records (``tokenizer``: its ``encoder.tokenizer_identity_sha256``;
    ``encoder_tokenizer_identity_sha256`` in a Milvus collection's config) with the encoder's
    (:func:`encoder_tokenizer`), when both are known: the same weights behind another vocabulary give other
    encodings.

    A store records one identity, its first documents' (taken again only once it is empty): documents added
    later with another model make a mixed store that still records the first model's, so re-adding every
    document under its id does not clear the warning; re-index into a new (or emptied) store.

    Args:
        recorded: The identity the store records (anything but a string: not known).
        encoder: The encoder the store now encodes queries with.
        where: The store, as the warning names it (``"the store at /x"``, ``"Milvus collection 'c'"``).
        log: The logger to warn on (the store module's).
        backbone: The backbone the store records: its SHA-256, or ``(SHA-256, name)`` as
            :func:`recorded_backbone` gives it (anything else, or a SHA-256 of ``None``: not known).
        config: The encoder config the store records (``None``: not known, not compared).
        tokenizer: The tokenizer SHA-256 the store records (anything but a string: not known, not compared).

    Examples:
        >>> class Enc:
        ...     weights_sha256 = "b" * 64
        ...     name_or_path = "/models/enc"
        >>> warn_if_other_weights("a" * 64, Enc(), "the store at /s"), warn_if_other_weights(None, Enc(), "x")
        (True, False)
        >>> class OtherBackbone(Enc):
        ...     class config:
        ...         backbone, backbone_sha256 = "bge-small-en", "d" * 64
        >>> warn_if_other_weights("b" * 64, OtherBackbone(), "the store at /s", backbone="c" * 64)
        True
    """
    now = encoder_weights(encoder)
    if not isinstance(recorded, str) or now is None:
        return False
    name = str(getattr(encoder, "name_or_path", "")) or type(encoder).__name__
    if recorded != now:
        log.warning(
            "%s was indexed with encoder weights SHA-256 %s, but the encoder %r now has weights SHA-256 %s (the "
            "store's documents were encoded with another model, or this model was retrained or replaced since): "
            "search results will be wrong until its documents are re-indexed with this encoder into a new (or "
            "emptied) store; adding them again to this one keeps the old record",
            where,
            recorded,
            name,
            now,
        )
        return True
    stored_sha, stored_name = backbone if isinstance(backbone, tuple) else (backbone, None)
    stored_sha = stored_sha.lower() if isinstance(stored_sha, str) and _SHA256.fullmatch(stored_sha.lower()) else None
    own_sha, own_name = encoder_backbone(encoder)
    if stored_sha is None or own_sha is None or stored_sha == own_sha:
        differ = encoding_differences(config, tokenizer, encoder)
        if not differ:
            return False
        # the documents' token budget alone leaves queries encoded as before
        budget_only = all(any(item.startswith(f"{field} ") for field in DOCUMENT_ONLY_FIELDS) for item in differ)
        log.warning(
            "%s was indexed with the same encoder weights (SHA-256 %s) as the encoder %r, but with another %s: %s "
            "(recorded vs now); %s",
            where,
            now,
            name,
            "document token budget" if budget_only else "configuration",
            "; ".join(differ),
            "searches are unaffected, but documents added from now on are truncated otherwise than the stored ones"
            if budget_only
            else "these change the encodings, so search results will be wrong until its documents are re-indexed "
            "with this encoder into a new (or emptied) store, or the encoder is given the recorded configuration",
        )
        return True
    log.warning(
        "%s was indexed with encoder weights SHA-256 %s over backbone %sSHA-256 %s, but the encoder %r has weights "
        "SHA-256 %s over backbone %sSHA-256 %s (another model saved as the same delta over another backbone, e.g. "
        "a model folder replaced since): search results will be wrong until its documents are re-indexed with "
        "this encoder into a new (or emptied) store; adding them again to this one keeps the old record",
        where,
        recorded,
        f"{stored_name!r} " if isinstance(stored_name, str) and stored_name else "",
        stored_sha,
        name,
        now,
        f"{own_name!r} " if own_name else "",
        own_sha,
    )
    return True


def _config_backend(config: Any) -> str | None:
    """``"onnx"`` or ``"torch"``: the backend an encoder config (an object or its ``to_dict()``) is of; else ``None``.

    An ONNX encoder's config records ``backend: "onnx"``; a torch encoder's records no backend (but its ``dim``).

    Examples:
        >>> _config_backend({"backend": "onnx", "dim": 8}), _config_backend({"dim": 8}), _config_backend(None)
        ('onnx', 'torch', None)
    """
    if not isinstance(config, dict):
        to_dict = getattr(config, "to_dict", None)
        try:
            config = to_dict() if callable(to_dict) else None
        except Exception:  # a foreign encoder's config: nothing to learn from it
            return None
        if not isinstance(config, dict):
            return None
    if config.get("backend") == "onnx":
        return "onnx"
    return "torch" if "backend" not in config and "dim" in config else None


def note_if_onnx_over_torch(record: Any, encoder: Any, where: str, log: logging.Logger = logger) -> bool:
    """Log (INFO) when ``encoder`` is the ONNX export of the torch model a store's documents were encoded with.

    ``record`` is the store's ``encoder`` record (its ``config`` is the torch encoder's, which records no
    backend, or an ONNX encoder's, which does; and ``weights_sha256``); said only when the weights identities
    are both known and equal (:func:`warn_if_other_weights` warns otherwise). The query side then runs the
    (usually int8) ONNX graph against float32 torch documents: scores, and now and then the rank of close
    documents, differ slightly from torch queries'. ``True`` if it logged.

    Examples:
        >>> class Onnx:
        ...     weights_sha256 = "a" * 64
        ...     config = {"backend": "onnx", "quantize": "int8", "dim": 8}
        >>> note_if_onnx_over_torch({"config": {"dim": 8}, "weights_sha256": "a" * 64}, Onnx(), "the store at /s")
        True
        >>> note_if_onnx_over_torch({"config": {"dim": 8}, "weights_sha256": "b" * 64}, Onnx(), "the store at /s")
        False
    """
    if not isinstance(record, dict) or _config_backend(record.get("config")) != "torch":
        return False
    config = getattr(encoder, "config", None)
    if _config_backend(config) != "onnx":
        return False
    recorded, now = record.get("weights_sha256"), encoder_weights(encoder)
    if not isinstance(recorded, str) or recorded != now:
        return False
    quantize = config.get("quantize") if isinstance(config, dict) else getattr(config, "quantize", None)
    graph = f"{quantize} ONNX" if isinstance(quantize, str) and quantize else "ONNX"
    log.info(
        "%s: its documents were encoded by %r on the torch backend (float32), and queries are encoded by %r, the "
        "%s export of the same weights: scores, and now and then the rank of close documents, differ slightly "
        "from torch queries'; load the encoder with backend='torch' (load_model(name, backend='torch')) to match",
        where,
        record.get("name_or_path"),
        str(getattr(encoder, "name_or_path", "")) or type(encoder).__name__,
        graph,
    )
    return True


def centre_from_config(config: dict[str, Any], cfg_path: Path, field: str, dim: int) -> np.ndarray | None:
    """The centre saved in ``field`` (``dim`` finite numbers, or absent / null: saved before centring).

    Only the field of the store's own index type (:data:`CENTRE_FIELDS`) may hold a list; the other is null.

    Examples:
        >>> centre_from_config({"index_type": "hnsw", "index_centre": [1, 2]}, Path("c.json"), "index_centre", 2)
        array([1., 2.])
    """
    value = config.get(field)
    if value is None:
        return None
    index_type = config.get("index_type")
    mine = CENTRE_FIELDS.get(str(index_type)) == field
    if not (mine and isinstance(value, list) and len(value) == dim and all(_is_real(x) for x in value)):
        kinds = sorted(k for k, f in CENTRE_FIELDS.items() if f == field)
        raise StoreFormatError(
            f"{cfg_path}: field {field!r} must be null or, for a store of index_type {' / '.join(kinds)}, a list "
            f"of {dim} finite numbers; got {str(value)[:80]} (index_type {index_type!r})"
        )
    return np.asarray(value, dtype=np.float64)


#: The config field that binds ``flat_norm_max`` to the checksum of ``index.faiss`` (:func:`flat_norm_digest`).
FLAT_NORM_DIGEST = "flat_norm_max_sha256"


def flat_norm_digest(bound: list[float], index_sha256: str) -> str:
    """The SHA-256 a save records beside ``flat_norm_max``: of the bound's float64 values and the SHA-256 of the
    ``index.faiss`` it bounds, so that the bound is as covered by ``verify_checksums`` as the files are (a bound
    edited or damaged in config.json, or one left beside another index, no longer matches).

    Examples:
        >>> flat_norm_digest([1.0, 2.0, 3.0], "a" * 64) == flat_norm_digest([1.0, 2.0, 3.0], "a" * 64)
        True
        >>> flat_norm_digest([1.0, 2.0, 3.0], "a" * 64) == flat_norm_digest([1.0, 2.0, 2.9], "a" * 64)
        False
    """
    h = hashlib.sha256(b"kl-retrievers flat_norm_max\0")
    h.update(index_sha256.encode("ascii"))
    h.update(np.asarray(bound, dtype="<f8").tobytes())
    return h.hexdigest()


def flat_norm_from_config(config: dict[str, Any], cfg_path: Path, verified: bool) -> list[float] | None:
    """The saved ``flat_norm_max`` a load may take, else ``None`` (the first search computes it from the index).

    Taken only over files whose checksums were verified (``verified``) and when its digest
    (:data:`FLAT_NORM_DIGEST`) matches the bound and the checksum of ``index.faiss``; a folder without the digest
    (written before it) computes the bound.

    Raises:
        StoreFormatError: The digest does not match (config.json damaged or edited).
    """
    bound, digest, index = config.get("flat_norm_max"), config.get(FLAT_NORM_DIGEST), config["files"].get(INDEX)
    if not verified or bound is None or digest is None or index is None:
        return None
    if flat_norm_digest(bound, index["sha256"]) != digest:
        raise StoreFormatError(
            f"{cfg_path}: field 'flat_norm_max' ({bound}) does not match its checksum in field {FLAT_NORM_DIGEST!r} "
            f"and that of {INDEX} (a damaged or edited config.json?)"
        )
    return [float(x) for x in bound]


# ------------------------------------------------------------------ reading
def check_files(
    folder: Path, files: dict[str, Any], verify_checksums: bool, hashed_on_read: frozenset[str] = frozenset()
) -> None:
    """Every listed file is a regular file inside ``folder`` with the recorded size (and SHA-256).

    ``hashed_on_read``: files whose SHA-256 the load takes as it reads them (:func:`read_gaussians`,
    :func:`read_documents`), in the same pass, so they are not read once more here.
    """
    root = folder.resolve()
    for name, info in files.items():
        p = folder / name
        if p.resolve().parent != root:
            raise StoreFormatError(f"{p} resolves to {p.resolve()}, outside the store folder")
        if not p.is_file():
            raise StoreFormatError(f"missing file {p} listed in the config")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise StoreFormatError(f"{p} has {size} bytes; the config says {info['bytes']} (truncated or replaced?)")
        if verify_checksums and name not in hashed_on_read and sha256_file(p) != info["sha256"]:
            raise _checksum_error(p)


def _checksum_error(path: Path) -> StoreFormatError:
    return StoreFormatError(f"{path} does not match its SHA-256 checksum in the config (corrupted?)")


@contextlib.contextmanager
def checksums_first(expected: dict[Path, str | None]) -> Iterator[None]:
    """Where a file hashed as it is read fails a check on the way, report its checksum mismatch instead.

    A file read in one pass with its hash is checked before the hash is complete: a corrupted file whose
    bytes fail a check then raises the error :func:`check_files` gives when it hashes it first (it is hashed
    again here, on this error path only). ``expected``: each file's recorded SHA-256 (``None``: not verified).
    """
    try:
        yield
    except StoreFormatError as exc:
        for path, digest in expected.items():
            if digest is not None and sha256_file(path) != digest:
                raise _checksum_error(path) from exc
        raise


class HashingReader(io.RawIOBase):
    """A binary file's ``readinto``, taking the SHA-256 of what it reads (the reading side of
    :class:`~kl_retrievers.hub.HashingWriter`): a file parsed and hashed in one pass.

    Examples:
        >>> r = HashingReader(io.BytesIO(b"abc"))
        >>> r.read(), r.hexdigest() == hashlib.sha256(b"abc").hexdigest()
        (b'abc', True)
    """

    def __init__(self, fh: Any) -> None:
        super().__init__()
        self._fh = fh
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got = self._fh.readinto(buffer)
        if got:
            self._digest.update(memoryview(buffer).cast("B")[:got])
        return got or 0

    def hexdigest(self) -> str:
        """SHA-256 hex digest of everything read so far."""
        return self._digest.hexdigest()


def check_npy_header(path: Path, shape: tuple[int, ...] | None, dtype: Any, field: str) -> None:
    """Refuse an ``.npy`` file whose header is not ``shape`` and ``dtype``, or whose size is not what they make.

    Read before the array, so that a header claiming a huge shape (the checksums updated to match) is a
    :class:`StoreFormatError`, not a ``MemoryError`` from allocating it. ``field`` names the config field the
    expected shape comes from; ``shape`` and ``dtype`` ``None``: only the size is checked against the header.
    """
    expected = f"config says {shape} {np.dtype(dtype).name} ({field})" if shape is not None else ""
    try:
        got_shape, got_dtype, offset = read_npy_header(path)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise StoreFormatError(f"cannot read {path}: {exc}") from exc
    if shape is not None and (tuple(got_shape) != shape or got_dtype != np.dtype(dtype)):
        raise StoreFormatError(f"{path} has shape {tuple(got_shape)} and dtype {got_dtype}; {expected}")
    size, needed = path.stat().st_size, offset + math.prod(got_shape) * got_dtype.itemsize
    if size != needed:
        raise StoreFormatError(
            f"{path} has {size} bytes, not the {needed} of its header ({tuple(got_shape)} {got_dtype.name}); "
            "truncated or edited?"
        )


def _read_array(path: Path, mmap: bool, count: int, dim: int) -> np.ndarray:
    """A ``(count, dim)`` float32 array from ``path`` (no pickle; its header checked first)."""
    check_npy_header(path, (count, dim), np.float32, "fields 'count' and 'dim'")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreFormatError(f"cannot read {path}: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.shape != (count, dim) or arr.dtype != np.dtype(np.float32):
        raise StoreFormatError(
            f"{path.name} has shape {getattr(arr, 'shape', None)} and dtype {getattr(arr, 'dtype', None)}; "
            f"config says ({count}, {dim}) float32"
        )
    return arr


#: Called on every block of rows read by :func:`read_gaussians`: ``(means as stored, float64 variances,
#: sum of log variances per row)``; what a search engine checks on load, in the same pass.
BlockCheck = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def read_gaussians(
    folder: Path,
    mmap: bool,
    count: int,
    dim: int,
    on_block: BlockCheck | None = None,
    checksums: tuple[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored means and variances, checked row by row in one pass, and ``sum_i log var_i`` per row.

    Args:
        folder: The store folder.
        mmap: Memory-map the arrays (read-only) instead of reading them.
        count: Rows the config says.
        dim: Dimension the config says.
        on_block: Also called on each block (in the same pass over the arrays).
        checksums: The SHA-256 the config records for ``mean.npy`` and ``var.npy``, checked over the bytes
            of the same pass (each file's header, then its rows block by block: the file as written), so
            that a verified load reads each file once (``None``: not verified here).

    Returns:
        ``(mean, var, sumlogvar)``: float32 arrays as stored and float64 sums.

    Raises:
        StoreFormatError: A shape or dtype not the config's, a non-finite mean, or a variance that is
            not a positive finite number (naming the row); a checksum that does not match (reported before
            any other error of a file that does not match it).
    """
    paths = folder / MEAN, folder / VAR
    expected: dict[Path, str | None] = dict(zip(paths, checksums or (None, None), strict=True))
    with checksums_first(expected):
        mean, var, sumlogvar, digests = _read_gaussians(paths, mmap, count, dim, on_block, checksums is not None)
        for path, digest in zip(paths, digests, strict=False):  # none where not verified
            if digest != expected[path]:
                raise _checksum_error(path)
    return mean, var, sumlogvar


def _read_gaussians(
    paths: tuple[Path, Path], mmap: bool, count: int, dim: int, on_block: BlockCheck | None, hashed: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """:func:`read_gaussians`' pass over the rows, each file's bytes hashed in it (``hashed``): its SHA-256s."""
    mean = _read_array(paths[0], mmap, count, dim)
    var = _read_array(paths[1], mmap, count, dim)
    # Each file's digest is taken in the pass below (its header here, then its rows: the file as written); a
    # Fortran-order file (another program wrote it: the rows are not the file's byte order) is hashed apart.
    in_pass: list[Any] = []
    for path, rows in zip(paths, (mean, var), strict=True) if hashed else ():
        digest = None
        if rows.flags.c_contiguous:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                digest.update(fh.read(read_npy_header(path)[2]))
        in_pass.append(digest)
    sumlogvar = np.zeros(count)
    for s in range(0, count, LOAD_BLOCK):
        m_block = np.asarray(mean[s : s + LOAD_BLOCK])
        v_raw = np.asarray(var[s : s + LOAD_BLOCK])
        for part, raw in zip(in_pass, (m_block, v_raw), strict=False):  # the float32 rows as stored
            if part is not None:
                part.update(np.ascontiguousarray(raw).data)
        v_block = np.asarray(v_raw, np.float64)
        if not np.isfinite(m_block).all():
            row = s + int(np.argwhere(~np.isfinite(m_block))[0, 0])
            raise StoreFormatError(f"{paths[0]} holds a non-finite value in row {row}")
        if not (np.isfinite(v_block).all() and (v_block > 0).all()):
            row = s + int(np.argwhere(~(np.isfinite(v_block) & (v_block > 0)))[0, 0])
            raise StoreFormatError(f"{paths[1]} holds a variance that is not a positive finite number in row {row}")
        sums = np.log(v_block).sum(1)
        sumlogvar[s : s + LOAD_BLOCK] = sums
        if on_block is not None:
            on_block(m_block, v_block, sums)
    digests = [sha256_file(path) if d is None else d.hexdigest() for path, d in zip(paths, in_pass, strict=False)]
    return mean, var, sumlogvar, digests


def read_tombstones(folder: Path, count: int, dead: int) -> np.ndarray | None:
    """The rows saved as tombstones (``tombstones.npy``): ``dead`` int64 row numbers, ascending, below ``count``.

    ``None`` when ``dead`` is 0 (no file: every store saved without tombstones). A tombstone's row keeps
    its Gaussian and index entry (the index numbers its entries by row) and its id; it has no text or
    metadata, is never returned, and is dropped at the store's next compaction.

    Raises:
        StoreFormatError: Not a 1-D int64 array of ``dead`` distinct ascending rows in ``[0, count)``.
    """
    if not dead:
        return None
    path = folder / TOMBSTONES
    check_npy_header(path, (dead,), np.int64, "field 'tombstones'")
    try:
        rows = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreFormatError(f"cannot read {path}: {exc}") from exc
    if not isinstance(rows, np.ndarray) or rows.shape != (dead,) or rows.dtype != np.dtype(np.int64):
        raise StoreFormatError(
            f"{path} has shape {getattr(rows, 'shape', None)} and dtype {getattr(rows, 'dtype', None)}; "
            f"config says ({dead},) int64 (field 'tombstones')"
        )
    allowed = f"distinct row numbers from 0 to {count - 1}, ascending"
    outside = np.flatnonzero((rows < 0) | (rows >= count))
    if outside.size:
        i = int(outside[0])
        raise StoreFormatError(f"{path} must hold {allowed}; entry {i} is {int(rows[i])}")
    unordered = np.flatnonzero(np.diff(rows) <= 0)
    if unordered.size:
        i = int(unordered[0])
        raise StoreFormatError(
            f"{path} must hold {allowed}; entries {i} and {i + 1} are {int(rows[i])} and {int(rows[i + 1])}"
        )
    return rows


def read_documents(
    path: Path, count: int, tombstones: np.ndarray | None = None, sha256: str | None = None
) -> tuple[list[str], list[str | None], list[dict[str, Any]]]:
    """Ids, texts and metadata from ``documents.jsonl``, checked against ``count``.

    The ids of the live rows (all but ``tombstones``) must be distinct; a tombstone's id may be a live one's
    (the old row of an upserted document). ``sha256``: the checksum the config records, taken over the bytes
    as they are parsed (one read of the file; ``None``: not verified here).

    Raises:
        StoreFormatError: A line is not a JSON object of the documented fields, holds a number that is not
            finite (``NaN``, ``Infinity`` or one beyond float's range such as ``1e400``: what ``add`` refuses)
            or is nested too deeply to decode; the message names the line. A checksum that does not match
            (reported before any other error of a file that does not match it).
    """
    with checksums_first({path: sha256}), open(path, "rb", buffering=0) as raw:
        reader = HashingReader(raw) if sha256 is not None else raw
        with io.TextIOWrapper(io.BufferedReader(reader, 1 << 20), encoding="utf-8") as f:
            documents = _read_documents(f, path, count, tombstones)
        if isinstance(reader, HashingReader) and reader.hexdigest() != sha256:
            raise _checksum_error(path)
    return documents


def _read_documents(
    f: io.TextIOWrapper, path: Path, count: int, tombstones: np.ndarray | None
) -> tuple[list[str], list[str | None], list[dict[str, Any]]]:
    """:func:`read_documents` from the open file ``f`` (read to its end)."""
    ids: list[str] = []
    texts: list[str | None] = []
    metas: list[dict[str, Any]] = []
    # One decoder for every line: json.loads(line, parse_constant=...) would build one per line (half the time).
    decode = json.JSONDecoder(parse_constant=refuse_json_constant(), parse_float=_finite_float).decode
    try:
        for line_no, line in enumerate(f, 1):
            try:
                if line.startswith("\ufeff"):  # as json.loads refuses it (the decoder itself does not check)
                    raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", line, 0)
                rec = decode(line)
            except ValueError as exc:
                raise StoreFormatError(f"{path} line {line_no} is malformed: {exc}") from exc
            except RecursionError:  # the C decoder recurses once per level of nesting
                raise StoreFormatError(
                    f"{path} line {line_no} is malformed: nested too deeply to decode (more levels of arrays "
                    f"and objects than Python's recursion limit, {sys.getrecursionlimit()})"
                ) from None
            if not isinstance(rec, dict):
                raise StoreFormatError(f"{path} line {line_no} is malformed: not a JSON object")
            doc_id, text, meta = rec.get("id"), rec.get("text"), rec.get("metadata")
            if not isinstance(doc_id, str):
                raise StoreFormatError(f"{path} line {line_no}: field 'id' must be a string; got {doc_id!r}")
            if not isinstance(text, (str, type(None))):
                raise StoreFormatError(f"{path} line {line_no}: field 'text' must be a string or null")
            if not isinstance(meta, (dict, type(None))):
                raise StoreFormatError(f"{path} line {line_no}: field 'metadata' must be an object or null")
            if "\\u" in line:  # a lone surrogate only comes as an escape: what add refuses (never saved again)
                _check_line_utf8(path, line_no, doc_id, text, meta)
            ids.append(doc_id)
            texts.append(text)
            metas.append(meta or {})
    except UnicodeDecodeError as exc:
        raise StoreFormatError(f"{path} is not UTF-8 text: {exc}") from exc
    if len(ids) != count:
        raise StoreFormatError(f"{DOCS} has {len(ids)} documents; the config says {count}")
    live = ids
    if tombstones is not None:
        alive = np.ones(count, dtype=bool)
        alive[tombstones] = False
        live = list(compress(ids, alive.tolist()))
    if len(set(live)) != len(live):
        seen: set[str] = set()
        dup = next(i for i in live if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise StoreFormatError(f"{DOCS} contains duplicate id {dup!r}")
    return ids, texts, metas


def _finite_float(text: str) -> float:
    """A JSON number's float (``parse_float``), refusing one beyond float's range, which would read as ``inf``.

    Examples:
        >>> _finite_float("1.5")
        1.5
        >>> _finite_float("-1e400")
        Traceback (most recent call last):
        ValueError: holds the number -1e400, beyond float's range (it would read as -inf; only finite numbers are)
    """
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]}"
        raise ValueError(
            f"holds the number {shown}, beyond float's range (it would read as {value}; only finite numbers are)"
        )
    return value


def _check_line_utf8(path: Path, line_no: int, doc_id: str, text: str | None, meta: dict[str, Any] | None) -> None:
    """Refuse a record holding a lone surrogate (as ``add`` does: it could never be saved again)."""
    parts: list[tuple[str, str]] = [(doc_id, "field 'id'")]
    if text is not None:
        parts.append((text, "field 'text'"))
    if meta:
        parts.append((json.dumps(meta, ensure_ascii=False), "field 'metadata' (as JSON)"))
    for value, what in parts:
        try:
            _check_utf8(value, what)
        except ValueError as exc:
            raise StoreFormatError(f"{path} line {line_no}: {exc}") from None


# ------------------------------------------------------------------ index.faiss, before FAISS reads it
#: The FAISS index kinds (the four-character codes FAISS writes first) a KLStore writes: flat vectors (the flat
#: store's inner-product index, an IVF quantizer, HNSW storage, float32 refine copies), scalar-quantized and
#: product-quantized codes, HNSW graphs over each, IVF lists (flat, SQ8, PQ, 4-bit fast-scan PQ) and a refine
#: stage over any of them.
_FLAT_KINDS = frozenset({b"IxFI", b"IxF2", b"IxFl"})
_HNSW_STORAGE = {b"IHNf": _FLAT_KINDS, b"IHNs": frozenset({b"IxSQ"}), b"IHNp": frozenset({b"IxPq"})}
_IVF_KINDS = frozenset({b"IwFl", b"IwSq", b"IwPQ", b"IwPf"})
INDEX_KINDS = frozenset(_FLAT_KINDS | {b"IxSQ", b"IxPq", b"IxRF"} | _HNSW_STORAGE.keys() | _IVF_KINDS)
#: FAISS's largest index dimension and product-quantizer bits per code (what its reader accepts).
_FAISS_MAX_D = 1 << 20
_FAISS_MAX_PQ_NBITS = 24
#: How deep a store's indexes nest: a refine stage (0) over an HNSW graph or IVF lists (1) over flat vectors (2).
_INDEX_NESTING = 2


class _IndexFileCheck:
    """Walks ``index.faiss`` as FAISS reads it, reading only its fixed fields and the lengths of its arrays.

    FAISS reads an array by its length field, allocates that length, then reads it: a length edited to
    2^28 (the checksums updated) allocates a GiB, or fails with ``std::bad_alloc``, before the short read
    is found. Here every length is checked against the bytes left in the file (and against the index's
    own header where that fixes it) and the array skipped, so such a file is refused before FAISS reads
    it, at the cost of a few hundred bytes read (and the list sizes of an IVF index). A kind of index no
    store writes is refused too: its fields cannot be checked.
    """

    def __init__(self, fh: Any, path: Path, size: int) -> None:
        self.fh, self.path, self.size = fh, path, size

    def bad(self, what: str) -> StoreFormatError:
        """The error for ``what`` is wrong in the file."""
        return StoreFormatError(f"{self.path}: {what} (a damaged or edited {INDEX}; refused before FAISS reads it)")

    def left(self) -> int:
        """Bytes of the file after the current position."""
        return self.size - self.fh.tell()

    def take(self, nbytes: int, what: str) -> bytes:
        """The next ``nbytes`` bytes (``what``), refused where the file has fewer left."""
        data = self.fh.read(nbytes) if nbytes <= self.left() else b""  # never a buffer of a length the file claims
        if len(data) != nbytes:
            raise self.bad(f"{what}: {nbytes} bytes at byte {self.fh.tell()}, but the file has {self.left()} left")
        return bytes(data)

    def fields(self, fmt: str, what: str) -> tuple[Any, ...]:
        """The next fixed fields (``struct`` format ``fmt``, little-endian, unpadded as FAISS writes them)."""
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def skip(self, nbytes: int, what: str) -> None:
        """Skip ``nbytes`` bytes (``what``), refused where the file has fewer left."""
        if nbytes > self.left():
            raise self.bad(f"{what}: {nbytes} bytes at byte {self.fh.tell()}, but the file has {self.left()} left")
        self.fh.seek(nbytes, os.SEEK_CUR)

    def array(self, item: int, what: str, expected: int | None = None) -> int:
        """Skip a FAISS array (its uint64 length, then that many ``item``-byte values); its length."""
        (n,) = self.fields("Q", f"the length of {what}")
        if expected is not None and n != expected:
            raise self.bad(f"{what}: a length of {n} values, where the index's own header makes {expected}")
        self.skip(n * item, f"{what} ({n} values of {item} bytes)")
        return int(n)

    def header(self, kind: bytes) -> tuple[int, int]:
        """An index's header: ``(d, ntotal)``."""
        d, ntotal, _, _, _, metric = self.fields("iqqq?i", f"the header of a {kind.decode()} index")
        if metric > 1:
            self.fields("f", "the metric's argument")
        if not 0 < d <= _FAISS_MAX_D or ntotal < 0:
            raise self.bad(f"a {kind.decode()} index claims d={d} and ntotal={ntotal}")
        return d, ntotal

    def index(self, depth: int = 0) -> tuple[bytes, int, int]:
        """One index (and those it holds): ``(its kind, d, ntotal)``."""
        kind = self.take(4, "an index's kind")
        if kind not in INDEX_KINDS or depth > _INDEX_NESTING:
            where = f" at byte {self.fh.tell() - 4}" if depth else ""
            raise self.bad(
                f"it holds a FAISS index of kind {kind!r}{where}, which no KLStore writes (it writes "
                f"{', '.join(sorted(k.decode() for k in INDEX_KINDS))}, one inside another at most "
                f"{_INDEX_NESTING + 1} levels deep)"
            )
        if kind in _IVF_KINDS:
            return kind, *self.ivf(kind, depth)
        d, n = self.header(kind)
        if kind in _FLAT_KINDS:
            self.array(4, "the flat index's vectors", expected=n * d)
        elif kind == b"IxSQ":
            self.array(1, "the scalar quantizer's codes", expected=n * self.scalar_quantizer(d))
        elif kind == b"IxPq":
            self.array(1, "the product quantizer's codes", expected=n * self.product_quantizer(d))
            self.fields("i?i", "the product quantizer's search settings")
        elif kind == b"IxRF":
            for part in ("base", "refine"):
                self.part(f"the refine stage's {part} index", depth, None, d, n)
            self.fields("f", "the refine stage's k factor")
        else:
            self.array(8, "the HNSW level probabilities")
            self.array(4, "the HNSW neighbour counts")
            self.array(4, "the HNSW levels", expected=n)
            self.array(8, "the HNSW offsets", expected=n + 1)
            self.array(4, "the HNSW neighbours")
            self.fields("iiiii", "the HNSW entry point and settings")
            self.part("the HNSW storage", depth, _HNSW_STORAGE[kind], d, n)
        return kind, d, n

    def part(self, what: str, depth: int, kinds: frozenset[bytes] | None, d: int, n: int) -> None:
        """An index inside another one, which must be of ``kinds`` (any: ``None``) with ``d`` and ``ntotal`` ``n``."""
        kind, part_d, part_n = self.index(depth + 1)
        if (kinds is not None and kind not in kinds) or (part_d, part_n) != (d, n):
            raise self.bad(f"{what} is a {kind.decode()} index of d={part_d}, ntotal={part_n}, not d={d}, ntotal={n}")

    def scalar_quantizer(self, d: int) -> int:
        """A scalar quantizer: its bytes per code."""
        _, _, _, sq_d, code_size = self.fields("iifQQ", "the scalar quantizer")
        if sq_d != d:
            raise self.bad(f"the scalar quantizer claims d={sq_d} in an index of d={d}")
        self.array(4, "the scalar quantizer's trained values")
        return int(code_size)

    def product_quantizer(self, d: int) -> int:
        """A product quantizer: its bytes per code (its centroids must be ``d x 2^nbits`` floats in the file)."""
        pq_d, m, nbits = self.fields("QQQ", "the product quantizer")
        if pq_d != d or not 0 < m <= d or d % m or not 0 < nbits <= _FAISS_MAX_PQ_NBITS:
            raise self.bad(
                f"the product quantizer claims d={pq_d}, M={m}, nbits={nbits} in an index of d={d} (M must divide d, "
                f"nbits must be 1 to {_FAISS_MAX_PQ_NBITS})"
            )
        self.array(4, "the product quantizer's centroids", expected=d << nbits)
        return int((nbits * m + 7) // 8)

    def ivf(self, kind: bytes, depth: int) -> tuple[int, int]:
        """IVF lists: their header, quantizer (one flat vector per list), direct map, codes and lists."""
        d, n = self.header(kind)
        nlist, _ = self.fields("QQ", "the IVF list count")
        self.part("the IVF quantizer", depth, _FLAT_KINDS, d, nlist)  # its vectors hold nlist x d floats
        (map_type,) = self.fields("b", "the IVF direct map")
        self.array(8, "the IVF direct map")
        if map_type == 2:
            self.array(16, "the IVF direct map's hash table")
        code_size: int | None = 4 * d
        if kind == b"IwSq":
            self.scalar_quantizer(d)
            code_size = self.fields("Q?", "the IVF code size")[0]
        elif kind == b"IwPQ":
            code_size = self.fields("?Q", "the IVF code size")[1]
            self.product_quantizer(d)
        elif kind == b"IwPf":
            self.fields("?QiQiQ", "the IVF fast-scan settings")
            self.product_quantizer(d)
            code_size = None
        self.lists(nlist, code_size, n)
        return d, n

    def lists(self, nlist: int, code_size: int | None, n: int) -> None:
        """Inverted lists (``ilar``, or fast-scan blocks ``ilbl`` where ``code_size`` is ``None``) of ``n`` entries."""
        kind = self.take(4, "the inverted lists' kind")
        want = b"ilbl" if code_size is None else b"ilar"
        if kind != want:
            raise self.bad(f"the inverted lists are of kind {kind!r}, not {want!r}")
        lists, list_code_size = self.fields("QQ", "the inverted lists' sizes")
        if lists != nlist or (code_size is not None and list_code_size != code_size):
            raise self.bad(
                f"the inverted lists claim {lists} lists of {list_code_size} bytes per code; the index has {nlist} "
                f"lists" + (f" of {code_size} bytes per code" if code_size is not None else "")
            )
        total: int | float = 0
        if code_size is None:  # fast-scan blocks: per list, its ids and its codes in blocks
            per_block, block_size = self.fields("QQ", "the inverted lists' block sizes")
            if not per_block or not block_size:
                raise self.bad(f"the inverted lists claim {per_block} codes in blocks of {block_size} bytes")
            for i in range(nlist):
                ids = self.array(8, f"the ids of inverted list {i}")
                self.array(1, f"the codes of inverted list {i}", expected=-(-ids // per_block) * block_size)
                total += ids
        else:
            spread = self.take(4, "the inverted lists' size kind")
            (count,) = self.fields("Q", "the number of inverted list sizes")
            if not (count == nlist if spread == b"full" else spread == b"sprs" and count % 2 == 0):
                raise self.bad(f"the inverted lists give {count} sizes of kind {spread!r} for {nlist} lists")
            values = np.frombuffer(self.take(count * 8, "the inverted list sizes"), dtype="<u8")
            counts = values if spread == b"full" else values[1::2]
            if spread == b"sprs" and (values[::2] >= nlist).any():
                raise self.bad(f"the inverted lists' sparse sizes name a list beyond their {nlist}")
            total = float(counts.sum(dtype=np.float64))  # exact below 2^53, and a larger one is refused
            if total < 2**53:
                total = int(counts.sum(dtype=np.uint64))
        if total != n:
            raise self.bad(f"the inverted lists claim {total:.0f} entries; the index's header {n}")
        if code_size is not None:
            self.skip(n * (code_size + 8), f"the codes and ids of the {n} entries in inverted lists")


def check_index_file(path: Path) -> None:
    """Refuse ``index.faiss`` before FAISS reads it where an array's length does not fit the file.

    Every array FAISS would allocate must lie within the file and have the length the index's header gives
    it (:class:`_IndexFileCheck`); only kinds of index a store writes (:data:`INDEX_KINDS`) are read. Sizes
    against ``config.json`` (dimension, rows, kind) are checked once FAISS has read the file.

    Raises:
        StoreFormatError: Naming the array, what it claims and what the file holds.
    """
    try:
        with open(path, "rb") as fh:
            _IndexFileCheck(fh, path, os.fstat(fh.fileno()).st_size).index()
    except OSError as exc:
        raise StoreFormatError(f"cannot read {path}: {exc}") from exc


# ------------------------------------------------------------------ writing
def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _written(path: Path, write: Callable[[HashingWriter], None]) -> dict[str, Any]:
    """Write ``path`` through a :class:`~kl_retrievers.hub.HashingWriter`, synced: its ``files`` entry (size and
    SHA-256 of the bytes as written, both counted by the writer: the file is neither read back nor stat'ed)."""
    with open(path, "wb") as f:
        out = HashingWriter(f)
        write(out)
    _fsync(path)  # the format's one sync step, as for the index FAISS writes
    return {"bytes": out.nbytes, "sha256": out.hexdigest()}


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    return _written(path, lambda out: np.save(out, np.ascontiguousarray(array), allow_pickle=False))


#: Bytes of documents.jsonl gathered before one write (and hash): few writes, and little memory however long the lines.
_JSONL_BLOCK_BYTES = 1 << 20


def _write_jsonl(
    path: Path, ids: list[str], texts: list[str | None], metadatas: list[dict[str, Any]]
) -> dict[str, Any]:
    def write(out: HashingWriter) -> None:
        block: list[bytes] = []  # each line encoded at once: a block holds about 1 MiB, whatever the lines' length
        size = 0
        for doc_id, text, meta in zip(ids, texts, metadatas, strict=True):
            line = json.dumps({"id": doc_id, "text": text, "metadata": meta}, ensure_ascii=False, allow_nan=False)
            block.append((line + "\n").encode("utf-8"))
            size += len(block[-1])
            if size >= _JSONL_BLOCK_BYTES:  # written (and hashed) in blocks, not a line at a time
                out.write(b"".join(block))
                block.clear()
                size = 0
        if block:
            out.write(b"".join(block))

    return _written(path, write)


def write_folder(
    tmp: Path,
    config: dict[str, Any],
    arrays: tuple[np.ndarray, np.ndarray],
    documents: tuple[list[str], list[str | None], list[dict[str, Any]]],
    write_index: Callable[[Path], None] | None,
    tombstones: np.ndarray | None = None,
) -> None:
    """Write every file of a store into the (temporary) folder ``tmp``, then ``config.json`` listing them.

    Each file is synced to disk and recorded with its size and SHA-256; the config comes last, so
    a folder whose config exists is complete.

    Args:
        tmp: An empty folder.
        config: The config without ``files`` (added here).
        arrays: ``(mean, var)``.
        documents: ``(ids, texts, metadatas)``.
        write_index: Writes the index file to the path it is given (``None``: no index).
        tombstones: The int64 row numbers of the tombstones, ascending (``None``: none, no file).
    """
    files: dict[str, Any] = {
        MEAN: _write_npy(tmp / MEAN, arrays[0]),
        VAR: _write_npy(tmp / VAR, arrays[1]),
        DOCS: _write_jsonl(tmp / DOCS, *documents),
    }
    if write_index is not None:
        write_index(tmp / INDEX)  # FAISS writes the file: hashed once written (read back from the page cache)
        _fsync(tmp / INDEX)
        files[INDEX] = {"bytes": (tmp / INDEX).stat().st_size, "sha256": sha256_file(tmp / INDEX)}
    if tombstones is not None:
        files[TOMBSTONES] = _write_npy(tmp / TOMBSTONES, np.asarray(tombstones, dtype=np.int64))
    bound = config.get("flat_norm_max")
    if bound is not None:  # bound to the index it bounds, so verify_checksums covers it (flat_norm_from_config)
        config = {
            **config,
            FLAT_NORM_DIGEST: flat_norm_digest(bound, files[INDEX]["sha256"]) if INDEX in files else None,
        }
    with open(tmp / CONFIG, "w", encoding="utf-8") as f:
        json.dump({**config, "files": files}, f, indent=2, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
