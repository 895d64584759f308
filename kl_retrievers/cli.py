"""The ``kl-retrievers`` command line.

Subcommands: ``demo`` (the main job), ``encode``, ``index``, ``search``, ``evaluate`` and ``train``.
Every subcommand has ``--help``.

Examples:
    >>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import math
import os
import shlex
import sys
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kl_retrievers._io import check_replace_gaussians_file, parse_json_object, read_json_object, read_jsonl_objects
from kl_retrievers._io import row_id as _row_id  # the one id rule, shared with kl_retrievers.sharded
from kl_retrievers._io import row_text as _row_text
from kl_retrievers._io import user_path as _expand_user
from kl_retrievers.cli_common import (  # re-exported: defined here before (the parser class: shared with training.cli)
    KLSTORE_FORMAT,
    _CheckedStdout,
    _one_line,
    _Parser,
    _silence_stdout,
    add_global_arguments,
    add_model_backend_argument,
    add_model_session_arguments,
    add_progress_arguments,
    add_verbose_to_commands,
    args_subset,
    check_output_path,
    cli_log_level,
    is_encoded_shards_folder,
    is_gaussians_config,
    model_session_flags,
    model_session_options,
    model_session_problem,
    positive_int,
    progress_option,
    stdin_problem,
    token_budget,
)

if TYPE_CHECKING:
    from kl_retrievers.pretrained import Backend

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Queries per encoder call for ``demo`` and ``search`` on a batch-invariant encoder (1 on int8 ONNX:
#: :func:`kl_retrievers._encoding.query_batch_size`, so a query's results equal ``KLStore.search(query)``'s).
_QUERY_BATCH_SIZE = 32


def read_texts(path: Path, field: str = "auto") -> tuple[list[str], list[str]]:
    """Read ``(ids, texts)`` from a ``.jsonl`` file (BEIR corpus or any text field), a ``.tsv`` or a text file.

    ``.jsonl``, ``.ndjson`` and ``.json`` files (any case) are JSON lines, one object per line; a
    ``.tsv`` file holds MS MARCO-style ``id<TAB>text`` lines (a first line such as ``id<TAB>text`` or
    ``pid<TAB>passage`` is taken for a header and skipped); a ``.csv``
    file is refused (convert it to JSON Lines or ``.tsv``); any other file gives one text per
    non-empty line, with ids ``"0"``, ``"1"``, ... ``field`` other than ``"auto"`` applies to JSON
    lines only (elsewhere it is refused).
    """
    ids, texts, _ = _read_records(path, field)
    return ids, texts


def _read_records(
    path: Path, field: str, *, lines: list[int] | None = None
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """ids, texts and the JSONL rows (empty dicts for a text file), reading the file once.

    ``lines``, when given, receives each JSONL row's line number (for messages about the rows).

    A JSONL row's id is its ``_id`` (or ``id``): a non-empty string without surrounding whitespace, or an
    integer; rows without one are numbered from 0. A null, non-string text or a repeated id is refused, naming the line.
    A UTF-8 byte order mark opening the file is skipped (as :func:`kl_retrievers.datasets.load_beir`
    does). Lines end at ``b"\\n"`` only and blank ones (ASCII whitespace) are skipped, as in
    :func:`kl_retrievers.sharded.plan_shards`, so both readers accept, number and refuse alike.
    """
    # the sharded reader's rules, imported here: kl_retrievers.sharded imports numpy, which --help needs not
    from kl_retrievers.sharded import _check_utf8, _without_bom, is_jsonl_path, split_records

    if path.is_dir():
        raise ValueError(f"{path} is a folder; {_INPUT_FILES}")
    if str(path) == "-" and not path.exists():
        raise ValueError(
            "reading the input from stdin (-) is not supported; save it to a file first and pass that file (or, "
            "for `encode`, pass the texts as arguments)"
        )
    _check_input_suffix(path, field)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a pipe, device or socket); save the input to a file first")
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        if is_jsonl_path(path):
            ids: list[str] = []
            texts: list[str] = []
            rows: list[dict[str, Any]] = []
            first: dict[str, int] = {}
            # lines as the sharded path reads them (kl_retrievers.sharded.plan_shards): they end at b"\n" only
            # (not at a lone \r), and a line is blank when only ASCII whitespace (not a NBSP or \x1c), so both
            # paths accept and refuse the same files, naming the same lines
            with open(path, "rb") as fh:
                for number, whole in enumerate(fh, 1):
                    raw = _without_bom(number, whole)  # as load_beir and the sharded path read line 1
                    if not raw.strip():
                        continue
                    where = f"{path}, line {number}"
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise ValueError(
                            f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
                        ) from None
                    row = parse_json_object(line, where)
                    doc_id = _check_utf8(_row_id(row, len(rows), where), "id", where)  # as the sharded path
                    if doc_id in first:
                        raise ValueError(f"{where}: duplicate id {doc_id!r} (first on line {first[doc_id]})")
                    first[doc_id] = number
                    texts.append(_check_utf8(_row_text(row, field, where), "text", where))
                    ids.append(doc_id)
                    rows.append(row)
                    if lines is not None:
                        lines.append(number)
            return ids, texts, rows
        if path.suffix.lower() == ".tsv":
            ids, texts = _read_tsv(path)
            return ids, texts, [{} for _ in texts]
        # lines as the sharded path counts them (kl_retrievers.sharded.split_records): a U+2028 or a form
        # feed inside a line does not split it, so both paths give every text the same id
        raw = _without_bom(1, path.read_bytes())
        try:
            texts = [line.decode("utf-8").rstrip("\r") for line in split_records(raw)]
        except UnicodeDecodeError:  # name the line, as the JSONL branch and the sharded path do
            _refuse_non_utf8_line(path, raw)
            raise
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [str(i) for i in range(len(texts))], texts, [{} for _ in texts]


def _check_input_suffix(path: Path, field: str) -> None:
    """Refuse a ``.csv`` input, and ``--field`` with an input that is not JSON lines (suffixes in any case).

    Examples:
        >>> _check_input_suffix(Path("c.jsonl"), "contents"); _check_input_suffix(Path("c.TSV"), "auto")
        >>> _check_input_suffix(Path("lines.txt"), "contents")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --field contents: applies to JSON lines input only; lines.txt is ...
    """
    from kl_retrievers.sharded import is_jsonl_path  # not at module level: it imports numpy

    suffix = path.suffix.lower()
    if suffix == ".csv":
        raise ValueError(
            f"{path}: .csv files are not read (their quoting and columns vary); convert it to JSON Lines (one "
            'object per line, e.g. {"_id": "d1", "text": "..."}), which every input path reads (`index` and '
            "`encode`, with or without --shard-size, also read a .tsv file of id<TAB>text lines)"
        )
    if field != "auto" and not is_jsonl_path(path):
        what = "a .tsv file of id<TAB>text lines" if suffix == ".tsv" else "a text file, one text per line"
        raise ValueError(
            f"--field {field}: applies to JSON lines input only; {path} is {what}, so there is no field to choose "
            "(drop --field, or give a .jsonl file)"
        )


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    """ids and texts of an MS MARCO-style ``.tsv`` file: ``id<TAB>text`` lines, exactly two columns each.

    A first line whose columns look like a header (``id`` / ``pid`` / ``qid`` / ... and ``text`` / ``passage`` /
    ``query`` / ...) is skipped, with a warning naming the line and its columns. Lines end at ``b"\\n"``, a
    final ``\\r`` is dropped and blank lines are skipped, as in text files. A line with another number of
    columns, an empty or padded id or a repeated id is refused, naming the line.
    """
    from kl_retrievers.sharded import _without_bom, parse_tsv_line  # not at module level: it imports numpy

    ids: list[str] = []
    texts: list[str] = []
    first: dict[str, int] = {}
    seen_line = False
    for number, whole in enumerate(_without_bom(1, path.read_bytes()).split(b"\n"), 1):
        if not whole.strip():
            continue
        where = f"{path}, line {number}"
        # the one per-line rule of both paths (kl_retrievers.sharded.plan_shards reads a .tsv with it too)
        doc_id, text, header = parse_tsv_line(whole, where, len(ids), first=not seen_line)
        seen_line = True
        if header:
            logger.warning(
                "%s: line %d (columns %r and %r) is taken for a header and skipped, not read as a document",
                path,
                number,
                doc_id,
                text,
            )
            continue
        if doc_id in first:
            raise ValueError(f"{where}: duplicate id {doc_id!r} (first on line {first[doc_id]})")
        first[doc_id] = number
        ids.append(doc_id)
        texts.append(text)
    return ids, texts


#: What a file input may be (the end of the message for a folder given as one).
_INPUT_FILES = (
    "folders are not accepted here: give one file, a .jsonl / .ndjson / .json file of JSON lines (a BEIR "
    "corpus.jsonl, or any text field with --field), a .tsv file of id<TAB>text lines or a text file with one "
    "text per line"
)


def model_reference(model: str | None) -> str | None:
    """``--model`` as the encoder should record it: an existing local path made absolute.

    A store or ``.npy`` folder records its encoder's ``name_or_path``; ``search`` reloads it from
    there, from any working folder, so a relative folder is resolved first. Bundled names
    (``minilm-gauss-soup``, ``kl_retrievers:NAME``), hub ids and ``None`` are returned as given.

    Examples:
        >>> model_reference("kl_retrievers:minilm-gauss-soup")
        'kl_retrievers:minilm-gauss-soup'
        >>> model_reference(".") == str(Path.cwd().resolve())
        True
    """
    if model is None:
        return None
    from kl_retrievers.pretrained import bundled_models

    name = model.split(":", 1)[1] if model.startswith("kl_retrievers:") else model
    if name in bundled_models():  # a bundled name wins over a folder of that name, as load_model decides
        return model
    path = _expand_user(model)
    return str(path.resolve()) if path.exists() else model


def _load_encoder(
    model: str | None,
    device: str | None = None,
    backend: Backend | None = None,
    onnx_options: dict[str, Any] | None = None,
) -> Any:
    from kl_retrievers.pretrained import load_model

    if onnx_options:  # --model-threads / --model-spinning (checked by _check_session_flags)
        return load_model(model_reference(model), device=device, backend=backend, onnx_options=onnx_options)
    return load_model(model_reference(model), device=device, backend=backend)


def _session_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``onnx_options=`` for :func:`_load_encoder` when --model-threads / --model-spinning are given, else nothing."""
    options = model_session_options(args)
    return {"onnx_options": options} if options else {}


def _check_session_flags(args: argparse.Namespace, backend: str | None, **kwargs: Any) -> None:
    """Refuse ``--model-threads`` / ``--model-spinning`` where they cannot apply (a usage error, exit 2).

    First a ``--device`` (``device=``) that is no device (``tpu``, ``CPU``: the torch backend's message, whatever
    the backend) or, with ``--model-backend onnx``, not the cpu: the message names the flag that runs on it.
    """
    from kl_retrievers._encoding import device_type

    device = kwargs.get("device")
    if device is not None and device_type(device) != "cpu" and backend == "onnx":
        raise SystemExit(
            f"the ONNX backend (--model-backend onnx) runs on cpu only; got --device {device} (pass --model-backend "
            f"torch to run on {device}, or --device cpu)"
        )
    problem = model_session_problem(args, backend, **kwargs)
    if problem:
        raise SystemExit(problem)


# ---------------------------------------------------------------- encode
def _add_encode(sub: Any) -> None:
    p = sub.add_parser(
        "encode",
        help="encode texts into Gaussians (.npy folder or .safetensors)",
        description="Encode texts into diagonal Gaussians and save them without pickle.",
    )
    p.add_argument("texts", nargs="*", help="texts to encode (or use --input)")
    p.add_argument(
        "--input",
        "-i",
        type=Path,
        help="a .jsonl (.ndjson, .json) file of JSON lines (BEIR corpus or --field), a .tsv file of id<TAB>text "
        "lines (exactly two columns; a first line such as id<TAB>text is taken for a header and skipped) or a text "
        "file, one text per line",
    )
    p.add_argument(
        "--field", default="auto", help="JSONL field with the text (default: title + text); JSON lines input only"
    )
    p.add_argument(
        "--out",
        "-o",
        type=_user_path,
        required=True,
        help="output: NAME.safetensors, or a folder of .npy files (an existing folder is replaced only when it "
        "holds an earlier encode output)",
    )
    p.add_argument("--kind", choices=("document", "query"), default="document", help="encode as documents or queries")
    p.add_argument("--model", "-m", help="a saved GaussianEncoder (path or hub id) or a bundled model name")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts encoded at once (default 32)")
    p.add_argument("--max-length", type=token_budget, default=None, help="token budget (default: the model's)")
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or mps (default: best available); with --backend ray: cpu or cuda (each actor's own GPU)",
    )
    add_model_backend_argument(p)  # not --backend here: that one picks local or Ray shards
    add_model_session_arguments(p)
    add_progress_arguments(p)
    g = p.add_argument_group(
        "streaming and scale-out",
        "With --shard-size (or --backend ray) the --input file (JSON lines, a .tsv file of id<TAB>text lines or "
        "a text file; .csv is refused) is streamed in shards of N records into the --out "
        "folder (manifest.json + shard-NNNNN/ with .npy files and checksums); rerunning resumes, redoing only "
        "missing or corrupt shards.",
    )
    g.add_argument(
        "--shard-size", type=positive_int, default=None, help="records per shard (streaming mode; default 10000)"
    )
    g.add_argument("--backend", choices=("local", "ray"), default="local", help="run shards here or as a Ray Data job")
    g.add_argument(
        "--num-workers",
        type=positive_int,
        default=None,
        help="with --backend ray: Ray actors (default: one per CPU, or GPU)",
    )
    g.add_argument(
        "--ray-address", default=None, help="with --backend ray: an existing Ray cluster (default: start a local one)"
    )
    p.set_defaults(func=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    from kl_retrievers._io import save_gaussians

    if args.input is not None and args.texts:
        raise SystemExit("give texts or --input, not both")
    if args.input is not None and args.input.is_dir():
        raise ValueError(f"--input {args.input}: is a folder; {_INPUT_FILES}")
    _check_session_flags(args, args.model_backend, device=args.device)
    for flag, value in (("--num-workers", args.num_workers), ("--ray-address", args.ray_address)):
        if value is not None and args.backend != "ray":
            raise SystemExit(
                f"{flag} applies to --backend ray only (a Ray Data job); add --backend ray, or drop {flag} "
                f"(--backend {args.backend} ignores it)"
            )
    if args.field != "auto" and args.input is None and args.texts:
        raise SystemExit(
            f"--field {args.field}: applies to a JSON lines --input file only; positional texts are encoded as "
            "given (drop --field)"
        )
    _refuse_stdout_output(args.out)
    if args.shard_size is not None or args.backend == "ray":
        return _run_encode_sharded(args)
    if args.input is not None:
        ids, texts = read_texts(args.input, args.field)
        if not texts:
            raise ValueError(f"--input {args.input}: holds no texts; nothing to encode")
    elif args.texts:
        texts = _check_argument_texts(args.texts, "text")
        ids = [str(i) for i in range(len(texts))]
    else:
        raise SystemExit("nothing to encode: give texts or --input FILE")
    # a NAME.safetensors file is replaced as named; a folder only when it already holds saved Gaussians
    _check_safetensors_case(args.out)
    folder = args.out.suffix != ".safetensors"
    if folder:
        _warn_out_suffix_names_a_file(args.out)
    check_output_path(args.out, "--out", folder=folder, gaussians=folder)
    if not folder:  # an existing file is replaced only when it holds saved Gaussians (not a model's weights)
        check_replace_gaussians_file(args.out, flag=None)
    if args.input is None:  # after the --out checks: a refused run shows only its error
        _warn_texts_naming_files(texts)
    encoder = _load_encoder(args.model, args.device, args.model_backend, **_session_kwargs(args))
    from kl_retrievers._encoding import query_batch_size

    if args.kind == "document":
        encode, batch_size = encoder.encode_documents, args.batch_size
    else:  # on an int8 graph one at a time, so each query's Gaussian is what search(query) encodes
        encode, batch_size = encoder.encode_queries, query_batch_size(encoder, args.batch_size)
    g = encode(texts, batch_size=batch_size, max_length=args.max_length, show_progress_bar=progress_option(args))
    out = save_gaussians(args.out, g, ids=ids, metadata={"model": encoder.name_or_path, "kind": args.kind})
    print(f"wrote {len(g)} Gaussians of dimension {g.dim} to {out}")
    return 0


def _user_path(text: str) -> Path:
    """An output path argument with a leading ``~`` (quoted, so the shell kept it) read as the home folder.

    A ``~user`` of no user, or ``~`` where the home folder is unknown, is kept as given (a folder of that name).

    Examples:
        >>> _user_path("~/st") == Path.home() / "st", _user_path("~no-such-user-xyz")
        (True, PosixPath('~no-such-user-xyz'))
    """
    return _expand_user(text)


def _refuse_stdout_output(out: Path) -> None:
    """Refuse ``--out -``: the outputs are folders or binary files, never written to stdout.

    Examples:
        >>> _refuse_stdout_output(Path("g.safetensors"))
        >>> _refuse_stdout_output(Path("-"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --out -: writing to stdout is not supported ...
    """
    if str(out) == "-":
        raise ValueError(
            "--out -: writing to stdout is not supported (the output is a folder or a .safetensors file); give "
            "a file or folder name (a folder named - can be written as $PWD/-)"
        )


def _warn_texts_naming_files(texts: Sequence[str]) -> None:
    """Warn (stderr) when a positional text of ``encode`` names an existing file: it is encoded as that string.

    ``kl-retrievers encode texts.txt --out g.safetensors`` encodes the words "texts.txt"; the file's lines
    need ``--input texts.txt`` (``--input=./-x.txt`` for a name starting with ``-``). A text that merely looks
    like a path (no such file) is not warned about. Called after the ``--out`` checks, so a refused run shows
    only its error.
    """
    named = []
    for text in texts:
        try:
            if Path(text).is_file():
                named.append(text)
        except (OSError, ValueError):  # a text too long to be a path name, or with a NUL byte
            continue
    if not named:
        return
    import shlex

    if len(named) == 1:
        # a name starting with "-" would read as an option after --input: --input=./NAME reads as the file
        flag = (
            f"--input={shlex.quote('./' + named[0])}"
            if named[0].startswith("-")
            else f"--input {shlex.quote(named[0])}"
        )
        logger.warning(
            "the text %r is encoded as that string, though a file of that name exists; to encode the file's "
            "lines, pass %s",
            named[0],
            flag,
        )
    else:
        logger.warning(
            "%d texts (%s) are encoded as those strings, though files of those names exist; to encode a file's "
            "lines, pass --input FILE (one file per run)",
            len(named),
            ", ".join(repr(text) for text in named[:3]) + (", ..." if len(named) > 3 else ""),
        )


#: ``--out`` suffixes that read as one file, though ``encode`` writes a folder there (``.safetensors`` aside,
#: which one-shot ``encode`` writes as a file and streaming refuses).
_FILE_SUFFIXES = (".npy", ".npz", ".json", ".jsonl", ".txt", ".csv", ".tsv", ".pt", ".pkl", ".safetensors")


def _warn_out_suffix_names_a_file(out: Path) -> None:
    """Warn (stderr) when a new ``encode --out`` folder has a file's suffix (``-o g.npy``): the output is a folder.

    Only a warning, so a script that writes such a folder keeps working; an existing ``--out`` (a rerun that
    replaces or resumes it) is not warned about again.

    Examples:
        >>> _warn_out_suffix_names_a_file(Path("no-such-dir-xyz/g"))  # no suffix: nothing to say
    """
    if out.suffix.lower() not in _FILE_SUFFIXES or out.exists():
        return
    logger.warning(
        "--out %s: the output is a FOLDER of that name (of .npy and .json files), not one %s file; for one file "
        "give NAME.safetensors (without --shard-size / --backend ray), or give the folder a name without a suffix",
        out,
        out.suffix,
    )


def _check_safetensors_case(out: Path) -> None:
    """Refuse ``--out NAME.SAFETENSORS`` (the suffix in any case but lower) in one-shot ``encode``.

    Saved Gaussians are one ``.safetensors`` file only for that exact suffix (and are read back by
    it), so ``X.SAFETENSORS`` would silently become a folder; streaming mode already refuses the
    suffix in any case (it writes a folder of shards), so both modes now refuse it.

    Examples:
        >>> _check_safetensors_case(Path("g.safetensors")); _check_safetensors_case(Path("g"))
        >>> _check_safetensors_case(Path("g.SafeTensors"))
        Traceback (most recent call last):
        ValueError: --out g.SafeTensors: write the suffix in lower case ...
    """
    if out.suffix.lower() == ".safetensors" and out.suffix != ".safetensors":
        raise ValueError(
            f"--out {out}: write the suffix in lower case (.safetensors) for one safetensors file; saved "
            f"Gaussians are read and written as a file by that exact suffix, so {out.suffix} would be a folder "
            "(for a folder, give a name without a .safetensors suffix)"
        )


def _run_encode_sharded(args: argparse.Namespace) -> int:
    from kl_retrievers.sharded import encode_corpus

    if args.input is None:
        raise SystemExit("streaming mode (--shard-size / --backend ray) needs --input FILE")
    if args.shard_size is not None and args.shard_size <= 0:
        raise SystemExit(f"--shard-size must be >= 1; got {args.shard_size}")
    if str(args.input) == "-" and not args.input.exists():
        raise ValueError("--input -: reading stdin is not supported; save the input to a file first and pass that")
    _check_input_suffix(args.input, args.field)
    if args.out.suffix.lower() == ".safetensors" and not is_encoded_shards_folder(args.out):  # (resume an old one)
        raise ValueError(
            f"--out {args.out}: streaming mode (--shard-size / --backend ray) writes a folder of shards, not a "
            ".safetensors file; give a folder name (or drop --shard-size to write one .safetensors file)"
        )
    _warn_out_suffix_names_a_file(args.out)
    check_output_path(args.out, "--out", folder=True)
    args.model = model_reference(args.model)  # the manifest records it: absolute for a local folder
    report = encode_corpus(
        args.input,
        args.out,
        **_session_kwargs(args),  # onnx_options: for this process and every Ray worker
        shard_size=args.shard_size or 10000,
        num_workers=args.num_workers,
        ray_address=args.ray_address,
        show_progress_bar=progress_option(args),
        **args_subset(args, "model", "kind", "field", "batch_size", "max_length", "device", "backend", "model_backend"),
    )
    print(
        f"wrote {report.rows} Gaussians in {report.shards} shards to {report.out} "
        f"({len(report.encoded)} encoded, {len(report.reused)} reused, backend {report.backend}, "
        f"{report.seconds:.1f} s)"
    )
    return 0


# ---------------------------------------------------------------- demo
#: What ``demo`` and ``search`` show beside each query (their descriptions say it alike).
_UNCERTAINTY_AND_CONFIDENCE = (
    "uncertainty (its mean log-variance; with the default model it barely predicts which queries go well: the "
    "confidence does) and, for a model that ships a calibrator, its confidence"
)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="index the bundled demo corpus and answer a few queries",
        description="Index the small bundled corpus with the default model, answer a few queries and print the "
        f"top results with their -KL scores (higher is better), each query's {_UNCERTAINTY_AND_CONFIDENCE} (the "
        "probability that the top result is relevant).",
    )
    p.add_argument(
        "queries",
        nargs="*",
        help="your own queries (default: the bundled ones); a blank one (empty or whitespace only) is refused, "
        "exit 2, as in search",
    )
    p.add_argument("--model", "-m", help="a saved GaussianEncoder or a bundled model name (default: the default)")
    p.add_argument("-k", type=positive_int, default=3, help="results per query (default 3)")
    add_model_backend_argument(p, "--backend")
    add_model_session_arguments(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import time

    from kl_retrievers._encoding import query_batch_size
    from kl_retrievers.index import KLStore

    if args.k < 1:
        raise SystemExit(f"-k must be >= 1; got {args.k}")
    _check_session_flags(args, args.model_backend)
    start = time.perf_counter()
    corpus = read_jsonl_objects(DATA_DIR / "demo_corpus.jsonl")
    queries = _check_argument_texts(args.queries, "query")
    _refuse_blank_queries(queries)  # as search does, before the model loads
    queries = queries or [r["text"] for r in read_jsonl_objects(DATA_DIR / "demo_queries.jsonl")]
    encoder = _load_encoder(args.model, backend=args.model_backend, **_session_kwargs(args))
    print(f"model: {encoder!r}")
    store = KLStore(encoder)
    store.add(
        [f"{r['title']} {r['text']}" for r in corpus],
        ids=[r["_id"] for r in corpus],
        metadatas=[{"title": r["title"]} for r in corpus],
    )
    print(
        f"indexed {len(store)} documents in a flat KL store (k={store.dim}); score = -KL(query || document), "
        "higher is better\n"
    )
    from kl_retrievers._confidence import ConfidenceScorer

    scorer = ConfidenceScorer()  # the model's calibrator, as KLRetriever uses it (None, warned once, without one)
    calibrator = _command_calibrator(scorer, encoder, "demo")
    depth = max(args.k, ConfidenceScorer.depth_for(calibrator))
    if calibrator is not None:
        print("confidence: the calibrated probability that the top result is relevant (fitted on training data)\n")
    q = encoder.encode_queries(
        queries, batch_size=query_batch_size(encoder, _QUERY_BATCH_SIZE), show_progress_bar=False
    )
    uncertainty = q.uncertainty()
    for i, (query, hits) in enumerate(zip(queries, store.search_batch(q, k=depth), strict=True)):
        conf = scorer.confidence(encoder, [h.score for h in hits], float(uncertainty[i]))  # no blank query here
        shown = _shown_confidence(conf)
        print(f"query: '{_printable(query)}'  (uncertainty: mean log-variance {_signed(float(uncertainty[i]))}{shown})")
        for rank, hit in enumerate(hits[: args.k], 1):
            print(f"  {rank}. -KL={hit.score:9.4f}  [{_printable(hit.id)}] {_printable((hit.text or '')[:80])}")
        print()
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _command_calibrator(scorer: Any, encoder: Any, command: str, level: int = logging.WARNING) -> Any:
    """The model's confidence calibrator for ``demo`` or ``search``, or ``None`` with a log line worded for the
    command line (once per command and model in a process; ``search`` logs it at INFO: its results need none).

    The library's own warning tells a Python caller to pass ``calibrator=``, which the commands have no flag for.
    """
    from kl_retrievers._confidence import CALIBRATION_FILE, _first_warning

    model = str(getattr(encoder, "name_or_path", None) or type(encoder).__name__)
    _first_warning(model)  # taken here, so the library's Python-worded warning is not logged
    calibrator = scorer.calibrator(encoder)
    if calibrator is None and _first_warning(f"{command} {model}"):
        logger.log(
            level,
            "the model %r ships no confidence calibration (%s in its folder): %s shows no confidence for it "
            "(only the -KL scores and the uncertainty)",
            model,
            CALIBRATION_FILE,
            command,
        )
    return calibrator


def _shown_confidence(conf: float | None, candidates: int | None = None) -> str:
    """The query line's confidence for ``demo`` and ``search``: 3 decimals, as an abstention's reason prints it.

    Without a confidence, why when the reason is that only one document was a candidate (``candidates``: a
    one-document store, or a filter that leaves one), so that the line does not read as a model without a
    calibrator; empty otherwise.

    Examples:
        >>> _shown_confidence(0.2949), _shown_confidence(None)
        (', confidence 0.295', '')
        >>> _shown_confidence(None, candidates=1)
        ', no confidence: confidence needs 2 candidates, 1 found (a filter or a small store)'
    """
    from kl_retrievers._confidence import too_few_candidates_reason

    if conf is not None:
        return f", confidence {conf:.3f}"
    why = too_few_candidates_reason(candidates)
    return "" if why is None else f", no confidence: {why}"


def _min_confidence(text: str) -> float:
    """``--min-confidence``: a probability in [0, 1], checked as the adapters' ``min_confidence`` is."""
    from kl_retrievers._confidence import check_min_confidence

    value: Any = text  # named as given in the message when it is no number
    with contextlib.suppress(ValueError):
        value = float(text)
    try:
        checked = check_min_confidence(value, allow_none=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return cast(float, checked)


# ---------------------------------------------------------------- index / search
def _read_corpus(path: Path, field: str) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """ids, texts and metadata from a BEIR corpus.jsonl (or its folder), any JSONL with a text field, or a
    folder of .txt/.md files."""
    if path.is_dir():
        beir = path / "corpus.jsonl"
        if beir.is_file():  # a BEIR folder: its corpus, not its SOURCE.md / README.md
            logger.info("%s holds a corpus.jsonl: indexing %s (title + text, as a BEIR corpus)", path, beir)
            path = beir
        elif is_encoded_shards_folder(path):
            raise ValueError(
                f"{path} is an encoded-shards folder (written by `kl-retrievers encode --shard-size`), not a corpus; "
                "`index` encodes texts. To index these encodings, read them in Python with "
                "kl_retrievers.sharded.iter_encoded and add them with KLStore.add(gaussians=..., ids=...), then "
                "KLStore.save(FOLDER)"
            )
        else:
            if field != "auto":
                raise ValueError(
                    f"--field {field}: applies to JSON lines input only; {path} is a folder of .txt/.md files, one "
                    "document each (drop --field, or give a .jsonl file)"
                )
            return _read_text_folder(path)
    lines: list[int] = []
    ids, texts, rows = _read_records(path, field, lines=lines)
    return ids, texts, _rows_metadata(path, rows, field, lines)


def _rows_metadata(
    path: Path, rows: list[dict[str, Any]], field: str, lines: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Each JSONL row's metadata: its scalar fields but the id and the text (``text``, or the ``--field`` one).

    The scalar values of a top-level ``metadata`` object (BEIR corpora have one) are flattened in, but
    for the id and text names (``_id``, ``id``, ``text``, the ``--field`` one), which are never taken from
    it. A name that is also a top-level scalar field keeps the top-level value; a top-level value that is
    not a scalar is dropped, and the ``metadata`` object's scalar of that name is kept instead. A store's
    metadata holds strings, numbers, booleans and nulls only, so any other value (a list, an object) is
    dropped; all of these are warned about once per file, naming the fields.

    Raises:
        ValueError: A kept value is NaN or infinite (not standard JSON; a store cannot save it): the
            message names the file, the line (``lines``: each row's line number) and the field.

    Examples:
        >>> _rows_metadata(Path("c.jsonl"), [{"_id": "d", "text": "t", "title": "T", "metadata": {"url": "u"}}], "auto")
        [{'title': 'T', 'url': 'u'}]
    """
    excluded = {"_id", "id", "text"} | ({field} if field != "auto" else set())
    dropped: dict[str, int] = {}
    clashes: dict[str, int] = {}
    reserved: dict[str, int] = {}
    replaced: set[str] = set()
    metadatas = []
    for position, row in enumerate(rows):
        where = f"{path}, line {lines[position]}" if lines else f"{path}, record {position + 1}"
        meta = {k: v for k, v in row.items() if k not in excluded and _json_scalar(v)}
        nested: set[str] = set()
        for key, value in row.items():
            if key in excluded or _json_scalar(value):
                continue
            if key != "metadata" or not isinstance(value, dict):
                dropped[key] = dropped.get(key, 0) + 1
                continue
            for inner, inner_value in value.items():
                if inner in excluded:  # the id and the text come from the top level only
                    reserved[inner] = reserved.get(inner, 0) + 1
                elif not _json_scalar(inner_value):
                    dropped[f"metadata.{inner}"] = dropped.get(f"metadata.{inner}", 0) + 1
                elif inner in row and _json_scalar(row[inner]):  # a top-level scalar of that name wins
                    clashes[inner] = clashes.get(inner, 0) + 1
                else:
                    if inner in row and inner != "metadata":  # the top-level value is dropped (not a scalar)
                        replaced.add(inner)
                    meta[inner] = inner_value
                    nested.add(inner)
        bad = next((k for k, v in meta.items() if isinstance(v, float) and not math.isfinite(v)), None)
        if bad is not None:
            name = f"metadata.{bad}" if bad in nested else bad
            value = "NaN" if math.isnan(meta[bad]) else "Infinity" if meta[bad] > 0 else "-Infinity"
            raise ValueError(
                f"{where}: field {name!r} is {value}, which is not standard JSON and cannot be kept in a "
                "store's metadata; replace it with a number or null"
            )
        metadatas.append(meta)

    def warn_counted(counts: dict[str, int], message: str, *more: object) -> None:
        if counts:  # the file, how many values, their names, then the message's own arguments
            logger.warning(message, path, sum(counts.values()), ", ".join(sorted(counts)), *more)

    warn_counted(
        reserved,
        "%s: %d 'metadata' value(s) are named like the id or the text (%s); they are not kept (the id and "
        "text are read from the top-level fields only)",
    )
    warn_counted(
        clashes,
        "%s: %d 'metadata' value(s) have the name of a top-level field of their row (%s); the top-level value is kept",
    )
    instead = (
        f"; for {', '.join(sorted(replaced))}, the 'metadata' object's scalar value of the same name is kept instead"
        if replaced
        else ""
    )
    warn_counted(
        dropped,
        "%s: %d value(s) that are not strings, numbers, booleans or null are not kept in the documents' "
        "metadata (fields: %s); a store's metadata holds scalar values only%s",
        instead,
    )
    return metadatas


def _check_argument_texts(values: Sequence[str], what: str, *, numbered: bool = True) -> list[str]:
    r"""The command-line texts ``values`` as UTF-8 text; refuse one that is not valid UTF-8, naming it and the byte.

    Python reads an argument with its bytes kept as lone surrogates (``\udcff`` for the byte ``\xff``) where
    they do not decode in the locale's encoding. Under an ASCII locale (``LC_ALL=C`` with ``PYTHONUTF8=0``)
    that is every non-ASCII character, though the bytes are valid UTF-8 (``café`` reads ``caf\udcc3\udca9``):
    such a text is decoded again as UTF-8 (:func:`os.fsencode` gives its bytes back). What is still not
    valid UTF-8 no model can encode, and the library would report it as ``texts[0]``: refused. ``numbered=False``
    names the argument by ``what`` alone (an option's value, such as ``--filter``).

    Returns:
        ``values``, each valid UTF-8 text (as it was, or its bytes decoded as UTF-8).

    Examples:
        >>> _check_argument_texts(["bread", "Ünïcode"], "query")  # valid UTF-8: as they are
        ['bread', 'Ünïcode']
        >>> _check_argument_texts(["bread \udcff"], "query")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: query 1 on the command line is not valid UTF-8 text (byte 0xff at character 6 of ...
    """
    texts: list[str] = []
    for number, value in enumerate(values, 1):
        text = _as_utf8_text(value)
        if text is not None:
            texts.append(text)
            continue
        bad = next(i for i, char in enumerate(value) if not _is_utf8(char))
        char = value[bad]
        byte = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"{char!r}"
        raise ValueError(
            f"{what}{f' {number}' if numbered else ''} on the command line is not valid UTF-8 text ({byte} at "
            f"character {bad} of '{_printable(value)}'); give it in UTF-8 (check the terminal's or the "
            "locale's encoding)"
        )
    return texts


def _as_utf8_text(value: str) -> str | None:
    r"""``value`` when it is valid UTF-8, else its bytes (:func:`os.fsencode`) decoded as UTF-8, else ``None``.

    Examples:
        >>> _as_utf8_text("café"), _as_utf8_text("bread \udcff")
        ('café', None)
    """
    if _is_utf8(value):
        return value
    try:  # the locale's decoding kept UTF-8 bytes as surrogates (an ASCII locale): they decode as UTF-8
        return os.fsencode(value).decode("utf-8")
    except UnicodeError:  # not UTF-8 bytes, or a text that is not the locale's decoding of any bytes
        return None


def _is_utf8(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 (no lone surrogates: bytes that a file name in another encoding kept)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_non_utf8_line(path: Path, raw: bytes) -> None:
    """Raise ``ValueError`` naming ``path``'s first line (of its contents ``raw``) that is not UTF-8, if any."""
    for number, record in enumerate(raw.split(b"\n"), 1):
        try:
            record.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}, line {number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
            ) from None


def _read_text_folder(path: Path) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Every .txt / .md file below ``path`` (suffix in any case), one document each, with its relative path as id."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file())
    if not files:
        raise ValueError(
            f"{path} holds no corpus.jsonl and no .txt or .md files; give a folder of .txt/.md files, a BEIR "
            "folder (with corpus.jsonl) or a .jsonl file"
        )
    ids = [str(p.relative_to(path)) for p in files]
    for doc_id in ids:  # an id is written as UTF-8: a file name in another encoding cannot be one
        try:
            doc_id.encode("utf-8")
        except UnicodeEncodeError:
            parts = Path(doc_id).parts
            bad = next(i for i, part in enumerate(parts) if not _is_utf8(part))
            kind = "file" if bad == len(parts) - 1 else "folder"
            within = f" (in {os.fsencode(doc_id)!r})" if len(parts) > 1 else ""
            raise ValueError(
                f"{path}: the {kind} name {os.fsencode(parts[bad])!r}{within} is not valid "
                f"UTF-8, and a file's path below the folder is its document id; rename the {kind} to a UTF-8 name "
                f"(convmv renames a whole folder's), or move it out of the folder"
            ) from None
    texts = []
    for p in files:
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            _refuse_non_utf8_line(p, p.read_bytes())  # the file and line, as ``encode -i`` names them
            raise ValueError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return ids, texts, [{"source": i} for i in ids]


def _json_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _add_index(sub: Any) -> None:
    p = sub.add_parser(
        "index",
        help="encode a corpus and save a KL store",
        description="Encode a corpus into Gaussians and save a KL store (FAISS over the exact -KL rewrite).",
    )
    p.add_argument(
        "corpus",
        type=Path,
        help="BEIR corpus.jsonl (or a BEIR folder holding one), a JSONL file with a text field, a .tsv file of "
        "id<TAB>text lines (exactly two columns; a first line such as id<TAB>text is taken for a header and "
        "skipped), or a folder of .txt/.md",
    )
    p.add_argument("--out", "-o", type=_user_path, required=True, help="store folder to write (replaced atomically)")
    p.add_argument("--index-type", choices=("flat", "hnsw", "ivf"), default="flat", help="default: flat (exact)")
    p.add_argument("--compression", choices=("sq8", "pq"), default=None, help="hnsw/ivf vector compression")
    p.add_argument(
        "--nlist",
        type=positive_int,
        default=None,
        help="ivf: number of lists (default 1024); the index is trained once the store holds 8 x nlist documents "
        "(searches are exact until then), so choose at most documents / 8 (FAISS suggests about 4 x sqrt(documents) "
        "for large corpora)",
    )
    p.add_argument("--nprobe", type=positive_int, default=None, help="ivf: lists probed per query (default 32)")
    p.add_argument("--pq-m", type=positive_int, default=None, help="pq: sub-quantizers (default 64)")
    p.add_argument(
        "--pq-nbits", type=int, choices=(4, 8), default=None, help="pq: bits per code (default 8); 4 = SIMD fast scan"
    )
    p.add_argument(
        "--refine", choices=("sq8", "fp16"), default=None, help="compressed indexes: re-rank the pool on these codes"
    )
    p.add_argument(
        "--pool",
        type=positive_int,
        default=None,
        help="approximate indexes (hnsw/ivf): candidates re-scored (default 100)",
    )
    p.add_argument("--model", "-m", help="bundled model name, saved GaussianEncoder folder or hub id")
    p.add_argument("--field", default="auto", help="JSONL text field (default: title + text); JSON lines input only")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts encoded at once (default 32)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps")
    add_model_backend_argument(p, "--backend")
    add_model_session_arguments(p)
    add_progress_arguments(p)
    p.set_defaults(func=_run_index)


#: ``index`` options that apply to some index kinds only: option, the ``--index-type`` values it applies to,
#: and the ``--compression`` values it needs (``None``: any, or none).
_INDEX_OPTIONS: tuple[tuple[str, tuple[str, ...], tuple[str, ...] | None], ...] = (
    ("compression", ("hnsw", "ivf"), None),
    ("nlist", ("ivf",), None),
    ("nprobe", ("ivf",), None),
    ("pool", ("hnsw", "ivf"), None),
    ("refine", ("hnsw", "ivf"), ("sq8", "pq")),
    ("pq_m", ("hnsw", "ivf"), ("pq",)),
    ("pq_nbits", ("hnsw", "ivf"), ("pq",)),
)


def _check_index_options(args: argparse.Namespace) -> None:
    """Refuse an ``index`` option given for an index kind it does not apply to (a usage error, exit 2).

    Examples:
        >>> ns = argparse.Namespace(index_type="flat", compression=None, nlist=None, nprobe=3, pool=None,
        ...                         refine=None, pq_m=None, pq_nbits=None)
        >>> _check_index_options(ns)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        SystemExit: --nprobe applies to --index-type ivf only; ...
    """
    for name, kinds, compressions in _INDEX_OPTIONS:
        if getattr(args, name) is None:
            continue
        flag = "--" + name.replace("_", "-")
        if args.index_type not in kinds:
            exact = " (the flat index is exact)" if args.index_type == "flat" else ""
            raise SystemExit(
                f"{flag} applies to --index-type {' or '.join(kinds)} only; --index-type {args.index_type}{exact} "
                f"does not use it: drop {flag}"
            )
        if compressions is not None and args.compression not in compressions:
            raise SystemExit(
                f"{flag} applies to --compression {' or '.join(compressions)} only; got "
                f"{'no --compression' if args.compression is None else '--compression ' + args.compression}: drop "
                f"{flag} or add --compression {compressions[-1]}"
            )


def _run_index(args: argparse.Namespace) -> int:
    from kl_retrievers.index import KLStore

    _check_index_options(args)
    _refuse_stdout_output(args.out)
    _check_session_flags(args, args.model_backend, device=args.device)
    ids, texts, metadatas = _read_corpus(args.corpus, args.field)
    if not texts:
        raise ValueError(f"{args.corpus}: holds no documents; nothing to index")
    check_output_path(args.out, "--out", folder=True, store=True)
    encoder = _load_encoder(args.model, args.device, args.model_backend, **_session_kwargs(args))
    given = args_subset(args, "compression", "nlist", "nprobe", "pq_m", "pq_nbits", "refine")
    if args.pool is not None:
        given["rescore_pool"] = args.pool
    store = KLStore(
        encoder,
        show_progress_bar=progress_option(args),
        **args_subset(args, "index_type", "batch_size"),
        **{name: value for name, value in given.items() if value is not None},  # the rest: the store's defaults
    )
    store.add(texts, ids=ids, metadatas=metadatas)
    store.save(args.out)
    kind = args.index_type
    if not store.is_built:  # an approximate index is built once it has enough documents to train on
        needed = getattr(getattr(store, "_engine", None), "min_build_size", None)
        fewer = f"fewer than {needed()} documents" if callable(needed) else "too few documents"
        kind = f"{args.index_type} not built yet: {fewer}; searches are exact"
    documents = "document" if len(store) == 1 else "documents"
    print(f"indexed {len(store)} {documents} ({kind}, k={store.dim}) into {args.out}")
    return 0


def _add_search(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="search a saved KL store",
        description="Search a KL store saved by `kl-retrievers index` (or KLStore.save); scores are -KL "
        "(higher is better). The store argument may also be a LangChain KLVectorStore.save_local folder or a "
        "LlamaIndex persist folder, or the manifest file of either (whatever its name, e.g. the path given to "
        "KLVectorStore.persist): the KL store inside is searched. A "
        "KLHybridStore folder is refused (its results fuse BM25 with -KL); the message names its KL half, which "
        f"this command can search. Each query is shown with its {_UNCERTAINTY_AND_CONFIDENCE} (the calibrated "
        "probability that the top result is relevant, as the adapters report it); --min-confidence abstains below "
        "a threshold.",
    )
    p.add_argument(
        "store",
        type=Path,
        help="KL store folder, or a LangChain save_local folder, a LlamaIndex persist folder or its manifest",
    )
    p.add_argument(
        "query",
        nargs="+",
        help="one or more queries; a blank one (empty or whitespace only) asks for nothing and is refused, exit "
        "status 2, before the store is read; invisible characters such as a zero-width space count as whitespace "
        "(evaluate ranks a blank query of its collection, with a warning)",
    )
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--filter", default=None, help='metadata filter as JSON, e.g. \'{"year": {"$gte": 2020}}\'')
    p.add_argument("--model", "-m", help="encoder for the queries (default: the one the store was built with)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per query on stdout (with its confidence, null without a calibrator, and "
        "whether it abstained)",
    )
    p.add_argument(
        "--min-confidence",
        type=_min_confidence,
        default=None,
        metavar="P",
        help="abstain on a query whose confidence is below P, a probability in [0, 1], as the adapters' "
        "min_confidence does: print no results for it, and why; also when fewer than 2 documents match (the "
        "confidence reads the top two). Needs a model that ships a calibrator (default: never abstain)",
    )
    add_model_backend_argument(
        p,
        "--backend",
        default_help="the backend the store was built with (its config.json records it), else the library's default",
    )
    add_model_session_arguments(
        p,
        default_note="refused when the store's model ran on torch (and torch is installed) unless --model-backend onnx",
    )
    p.set_defaults(func=_run_search)


#: The saves of the framework adapters that hold a KL store, as ``kl-retrievers search`` recognises them: the
#: manifest file, its ``format`` and the KL store's folder beside it. Spelled out because
#: :mod:`kl_retrievers.langchain` and :mod:`kl_retrievers.llama_index` import their frameworks, which a search
#: needs not (tests/test_torch_free_messages.py and tests/test_cli_search_adapter_saves_and_install_messages.py
#: check them against those modules' and LlamaIndex's own constants).
_LANGCHAIN_MANIFEST = "langchain.json"
_LANGCHAIN_FORMAT = "kl-retrievers/langchain-klvectorstore"
_LANGCHAIN_STORE_DIR = "klstore"
#: LlamaIndex's persist files: ``StorageContext.persist`` writes ``<namespace>__vector_store.json`` and
#: ``KLVectorStore.persist()``'s default path is ``storage/vector_store.json``; LlamaIndex's own loader
#: (``SimpleVectorStore.from_namespaced_persist_dir``) takes every name ending in ``vector_store.json``. Each
#: names its ``.klstore`` folder. A search finds a manifest by its content whatever its name, in a folder too
#: (``KLVectorStore.persist("storage/my_index.json")`` writes ``my_index.json``), as
#: ``KLVectorStore.from_persist_path(folder)`` does; another name than this pattern is loaded by that, not by
#: ``load_index_from_storage``, which the log line says.
_LLAMA_INDEX_MANIFESTS = "*vector_store.json"
_LLAMA_INDEX_FORMAT = "kl-retrievers/llama-index-vector-store"


def _kl_store_folder(path: Path) -> Path:
    """The KL store ``kl-retrievers search`` reads for ``path``: itself, or the one inside an adapter's save.

    A LangChain ``KLVectorStore.save_local`` folder (``langchain.json``) or a LlamaIndex persist folder (one
    ``KLVectorStore`` manifest, :func:`_llama_index_manifests`), or a manifest file of either, whatever its
    name (recognised by its ``format``, e.g. the ``my_index.json`` that
    ``KLVectorStore.persist("storage/my_index.json")`` writes), wraps a KL store that ranks as the
    framework's store does (by -KL), so the search reads it, and says so at INFO level. A ``KLHybridStore.save``
    folder (``hybrid.json``, or that file itself) is refused: its results fuse BM25 with -KL, and searching its
    KL half alone would give another ranking under the hybrid's name; the message names that half for a -KL search.

    Raises:
        ValueError: ``path`` is a hybrid store; a LlamaIndex folder with several stores (each is named); an
            adapter's save whose KL store is missing or damaged (it is named); a folder holding LangChain
            named indexes (``save_local(folder, index_name=...)``: each sub-folder is named); another file.

    Examples:
        >>> _kl_store_folder(Path("no/such/folder")) == Path("no/such/folder")  # not a save: itself
        True
    """
    from kl_retrievers.hybrid import _CONFIG as _HYBRID_CONFIG
    from kl_retrievers.hybrid import _KL_DIR, _is_hybrid_folder

    if path.is_file() and path.name == _HYBRID_CONFIG and _is_hybrid_folder(path.parent):
        path = path.parent  # a hybrid store's own config file: refused below as its folder is
    if path.is_file():
        inner = _kl_store_of_manifest(path)
        logger.info("%s is a LangChain or LlamaIndex KLVectorStore manifest: searching its KL store %s", path, inner)
        return inner
    folder = path
    if (folder / "config.json").is_file() or not folder.is_dir():
        return folder
    if _is_hybrid_folder(folder):
        raise ValueError(
            f"{folder} is a KLHybridStore (hybrid.json), whose results fuse BM25 with -KL; `kl-retrievers search` "
            f"ranks by -KL alone: pass {shlex.quote(str(folder / _KL_DIR))} to search its KL half by -KL, or search "
            f"the hybrid in Python (KLHybridStore.load({str(folder)!r}).search(...))"
        )
    if _is_langchain_manifest(folder / _LANGCHAIN_MANIFEST):
        inner = _kl_store_of_manifest(folder / _LANGCHAIN_MANIFEST)
        logger.info(
            "%s is a LangChain KLVectorStore (%s): searching its KL store %s", folder, _LANGCHAIN_MANIFEST, inner
        )
        return inner
    stores: list[tuple[Path, Path]] = []  # (manifest, the KL store it names)
    damaged: list[str] = []  # why each KL manifest's store cannot be read
    for manifest in _llama_index_manifests(folder):
        try:
            stores.append((manifest, _kl_store_of_manifest(manifest)))
        except _DamagedSave as exc:
            damaged.append(str(exc))
    by_store: dict[Path, list[str]] = {}  # manifests naming one store are one store (search reads only the store)
    for manifest, store in stores:
        by_store.setdefault(store.resolve(), []).append(manifest.name)
    if len(by_store) > 1:
        shown = ", ".join(
            f"{shlex.quote(str(store))} (named by {' and '.join(names)})" for store, names in by_store.items()
        )
        raise ValueError(f"{folder} is a LlamaIndex persist folder with {len(by_store)} KL stores; pass one of {shown}")
    if stores:
        manifest, inner = next(
            (pair for pair in stores if fnmatch.fnmatchcase(pair[0].name, _LLAMA_INDEX_MANIFESTS)), stores[0]
        )
        note = (
            ""
            if fnmatch.fnmatchcase(manifest.name, _LLAMA_INDEX_MANIFESTS)
            else f"; not a {_LLAMA_INDEX_MANIFESTS} name: KLVectorStore.from_persist_path loads it, "
            "load_index_from_storage does not"
        )
        logger.info(
            "%s is a LlamaIndex persist folder (%s%s): searching its KL store %s", folder, manifest.name, note, inner
        )
        return inner
    if damaged:
        raise ValueError("; ".join(damaged))
    named = [sub for sub in sorted(folder.iterdir()) if _is_langchain_manifest(sub / _LANGCHAIN_MANIFEST)]
    if named:
        shown = ", ".join(shlex.quote(str(sub)) for sub in named[:8]) + (", ..." if len(named) > 8 else "")
        raise ValueError(
            f"{folder} is not a KL store, but holds {len(named)} LangChain KLVectorStore index"
            f"{'es' if len(named) > 1 else ''} saved with save_local({str(folder)!r}, index_name=...): pass "
            f"{'one of ' if len(named) > 1 else ''}{shown}"
        )
    return folder


def _llama_index_manifests(folder: Path) -> list[Path]:
    """The LlamaIndex ``KLVectorStore`` manifests in ``folder``, whatever their names (by their ``format``), sorted.

    The rule of ``KLVectorStore.from_persist_path(folder)`` (both call ``_adapters.manifests_in_folder``;
    ``kl_retrievers.llama_index`` is not imported: it needs LlamaIndex); another store's file
    (``image__vector_store.json``) is not one.
    """
    from kl_retrievers._adapters import manifests_in_folder

    return manifests_in_folder(folder, _LLAMA_INDEX_FORMAT)


class _DamagedSave(ValueError):
    """An adapter's manifest (its format is ours) whose KL store is missing or is not a KL store."""


def _is_langchain_manifest(path: Path) -> bool:
    """Whether the file ``path`` holds a LangChain ``KLVectorStore`` manifest (by its ``format``, not its name)."""
    from kl_retrievers._adapters import looks_like_manifest

    return looks_like_manifest(path, _LANGCHAIN_FORMAT)


def _kl_store_of_manifest(path: Path) -> Path:
    """The KL store folder that the adapter manifest file ``path`` names.

    Raises:
        _DamagedSave: The manifest is a LangChain or LlamaIndex ``KLVectorStore``'s, but the KL store it names
            is missing or holds no ``config.json`` (the message names that folder).
        ValueError: ``path`` is another file (the message says what to pass).
    """
    from kl_retrievers._adapters import looks_like_manifest

    if _is_langchain_manifest(path):
        inner, what = path.parent / _LANGCHAIN_STORE_DIR, "a LangChain KLVectorStore manifest (save_local)"
        again = "save it again with KLVectorStore.save_local"
    elif looks_like_manifest(path, _LLAMA_INDEX_FORMAT):  # any name: persist() takes any path
        name = (read_json_object(path) or {}).get("store")
        if not (isinstance(name, str) and name and Path(name).name == name and name not in (".", "..")):
            raise _DamagedSave(
                f"{path} is a LlamaIndex KLVectorStore manifest that names no KL store folder (store={name!r}); "
                "persist the store again (StorageContext.persist or KLVectorStore.persist)"
            )
        inner, what = path.parent / name, "a LlamaIndex KLVectorStore manifest (persist)"
        again = "persist the store again (StorageContext.persist or KLVectorStore.persist)"
    else:
        raise ValueError(
            f"{path} is a file, not a KL store, and not a LangChain or LlamaIndex KLVectorStore manifest (a JSON "
            f'object whose "format" is {_LANGCHAIN_FORMAT!r} or {_LLAMA_INDEX_FORMAT!r}): pass a store folder '
            "(written by `kl-retrievers index` or KLStore.save), a LangChain save_local folder, a LlamaIndex "
            "persist folder, or the manifest file that save_local or persist wrote (any name)"
        )
    if not (inner / "config.json").is_file():
        state = "is missing" if not inner.exists() else "is not a KL store (config.json is missing)"
        raise _DamagedSave(f"{path} is {what}, but the KL store it names, {inner}, {state}; {again}, or restore it")
    return inner


def _refuse_blank_queries(queries: Sequence[str]) -> None:
    """Refuse a blank query (empty or whitespace only) of ``search`` or ``demo``, naming the first one.

    A ranking for nothing would look like an answer, so the command stops (exit 2, one line) before any
    file is read or model loaded.

    Examples:
        >>> _refuse_blank_queries(["cat"])
        >>> _refuse_blank_queries(["cat", " "])
        Traceback (most recent call last):
        ValueError: query 2 (' ') is blank (empty or whitespace only): it asks for nothing, ...
    """
    from kl_retrievers._confidence import is_blank_query

    blank = [i for i, query in enumerate(queries, 1) if is_blank_query(query)]
    if not blank:
        return
    query = queries[blank[0] - 1]
    which = f"query {blank[0]} ({query!r})" if len(queries) > 1 else f"query {query!r}"
    invisible = ", invisible characters counted as whitespace" if query.strip() else ""
    raise ValueError(
        f"{which} is blank (empty or whitespace only{invisible}): it asks for nothing, so no document can "
        "answer it; give a query with words"
    )


def _run_search(args: argparse.Namespace) -> int:
    from kl_retrievers._encoding import query_batch_size
    from kl_retrievers.index import KLStore

    args.query = _check_argument_texts(args.query, "query")
    if args.filter is not None:  # a JSON text: a non-UTF-8 byte in it would be a filter value no document holds
        args.filter = _check_argument_texts([args.filter], "--filter", numbered=False)[0]
    _refuse_blank_queries(args.query)  # before any file is read or model loaded
    problem = stdin_problem(args.store, "store", "give a KL store folder (written by `kl-retrievers index`)")
    if problem:
        raise ValueError(problem)
    args.store = _kl_store_folder(args.store)
    config_file = args.store / "config.json"
    if not args.store.exists():
        raise FileNotFoundError(
            f"{args.store}: no such folder; give a KL store folder (written by `kl-retrievers index` or KLStore.save)"
        )
    if not config_file.is_file():
        if (args.store / "manifest.json").is_file():
            raise ValueError(
                f"{args.store} is an encode output (encoded shards), not a KL store; build one with "
                "`kl-retrievers index`"
            )
        raise ValueError(f"{args.store} is not a KL store: config.json is missing")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
    if is_gaussians_config(config if isinstance(config, dict) else None):
        raise ValueError(
            f"{args.store} is an encode output (saved Gaussians), not a KL store; build one with `kl-retrievers index`"
        )
    if isinstance(config, dict) and config.get("format") != KLSTORE_FORMAT:
        raise ValueError(
            f"{args.store} is not a KL store: {config_file} has format {config.get('format')!r}, expected "
            f"{KLSTORE_FORMAT!r} (a folder written by `kl-retrievers index`)"
        )
    encoder_info = config.get("encoder") if isinstance(config, dict) else None
    saved = encoder_info.get("name_or_path") if isinstance(encoder_info, dict) else None
    model = args.model or (saved if isinstance(saved, str) else None)
    if not model:
        raise ValueError(f"{args.store} does not record its encoder; pass --model")
    if args.model is None and Path(model).is_absolute() and not Path(model).exists():
        raise FileNotFoundError(
            f"{args.store}: the store records its encoder as {model} ({config_file}), which no longer exists (moved "
            "or deleted); pass --model with the model's new location (it overrides the recorded one)"
        )
    try:
        filt = json.loads(args.filter) if args.filter else None
    except ValueError as exc:
        raise ValueError(f"--filter is not valid JSON ({exc})") from None
    if filt is not None and not isinstance(filt, dict):
        raise ValueError(f"--filter must be a JSON object; got {type(filt).__name__}")
    if filt is not None:  # a malformed filter is refused now, before the model loads and any warning about it
        from kl_retrievers.filters import compile_filter

        compile_filter(filt)  # the error the search would raise (it compiles the same filter)
    # the store's backend applies to the store's own model; another --model picks its own (its folder says)
    same_model = args.model is None or args.model == saved
    backend = args.model_backend or (_recorded_backend(encoder_info) if same_model else None)
    if args.model_backend:
        logger.info("encoding queries on the %s backend (--model-backend)", backend)
    elif backend:
        logger.info("encoding queries on the %s backend, the one the store was built with", backend)
    elif model_session_flags(args):
        logger.info("encoding queries on the onnx backend (%s)", " and ".join(model_session_flags(args)))
    elif same_model:
        logger.info("the store records no backend; encoding queries on the library's default one")
    else:
        logger.info("--model %s is not the store's model; encoding queries on its default backend", args.model)
    _check_session_flags(
        args,
        backend,
        why="--model-backend torch"
        if args.model_backend
        else "the store was built with it: its config.json records it",
    )
    encoder = _load_encoder(model, backend=backend, **_session_kwargs(args))
    from kl_retrievers._confidence import ConfidenceScorer, abstention_enabled, abstention_reason, log_abstention

    scorer = ConfidenceScorer()  # the model's calibrator, as KLRetriever uses it (None, warned once, without one)
    calibrator = _command_calibrator(scorer, encoder, "search", logging.INFO)
    if calibrator is None and abstention_enabled(args.min_confidence):  # it could never abstain
        raise ValueError(
            f"--min-confidence {args.min_confidence} needs a confidence calibrator, and the model {model!r} ships "
            "none: leave --min-confidence out (the results then carry no confidence)"
        )
    store = KLStore.load(args.store, encoder=encoder)
    if filt is not None:  # before searching: a mistyped $ne / $nin matches everything, so no short result shows it
        _warn_mistyped_filter_values(store, filt, well_formed=True)  # compiled above
    q = encoder.encode_queries(
        args.query, batch_size=query_batch_size(encoder, _QUERY_BATCH_SIZE), show_progress_bar=False
    )
    uncertainty = q.uncertainty()  # once for the batch, not once per printed query
    depth = args.k if calibrator is None else max(args.k, scorer.depth_for(calibrator))  # the scores it reads
    results = store.search_batch(q, k=depth, filter=filt)
    if filt is not None and any(len(hits) < min(args.k, len(store)) for hits in results):
        _warn_absent_filter_keys(store, filt)
    for i, (query, found) in enumerate(zip(args.query, results, strict=True)):
        conf = scorer.confidence(encoder, [h.score for h in found], float(uncertainty[i]))  # no blank query here
        reason = abstention_reason(conf, args.min_confidence, len(found))
        if reason is not None:
            log_abstention(query, conf, args.min_confidence, reason)
        hits = [] if reason is not None else found[: args.k]
        if args.json:
            print(
                json.dumps(
                    {
                        "query": query,
                        "uncertainty": float(uncertainty[i]),
                        "confidence": conf,
                        "abstained": reason is not None,
                        "abstention_reason": reason,
                        "score": "neg_kl",
                        "results": [
                            {"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in hits
                        ],
                    }
                )
            )
            continue
        # why a calibrated query has no confidence, unless the abstention line below says it
        shown = _shown_confidence(conf, None if calibrator is None or reason is not None else len(found))
        print(f"query: '{_printable(query)}'  (uncertainty {_signed(float(uncertainty[i]))}{shown})")
        if reason is not None:
            print(f"  abstained (no results): {reason}")
        for rank, h in enumerate(hits, 1):
            print(f"  {rank:>3}. -KL={h.score:10.4f}  [{_printable(h.id)}] {_printable((h.text or '')[:80])}")
    return 0


def _signed(value: float) -> str:
    """A query's uncertainty for the text output: 4 significant digits, so a small value is not shown as 0.

    Examples:
        >>> _signed(-0.00017253), _signed(1.5), _signed(-12.34567)
        ('-0.0001725', '+1.5', '-12.35')
    """
    return f"{value:+.4g}"


# bidirectional controls: they reorder the characters shown after them (a hit's text could reverse the next one)
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _printable(text: str) -> str:
    r"""``text`` on one line for the text output: control characters escaped as ``repr`` writes them.

    A newline in a document would start a line that reads as another result, an ANSI escape would
    rewrite the terminal and a bidirectional control would reorder what follows it: control characters
    (Unicode categories Cc, Zl, Zp), lone surrogates (Cs) and the bidirectional controls are escaped
    (``\n``, ``\x1b``, ``\u2028``, ``\u202e``), and a backslash is doubled, so the text ``a\nb`` reads
    ``a\\nb``, not as an escaped newline. Letters of any script, punctuation, every space (a no-break
    space, U+3000) and the other format characters (a zero-width joiner in an emoji or a Persian word,
    a soft hyphen) are kept as they are (``--json`` keeps the text unchanged).

    Examples:
        >>> print(_printable("a\tb\nc\x1b[31m \u2028 é \\n"))
        a\tb\nc\x1b[31m \u2028 é \\n
        >>> _printable("10\u00a0km \u6771\u3000x co\u00adop") == "10\u00a0km \u6771\u3000x co\u00adop"
        True
    """
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    """One character of :func:`_printable`'s output."""
    if char == "\\":
        return "\\\\"
    if char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs"):
        return char.encode("unicode_escape").decode("ascii")
    return char


def _filter_keys(spec: Any, negated: bool = False) -> set[str]:
    """The metadata keys of a JSON ``--filter`` whose condition a document without the key never satisfies.

    Keys inside ``$and`` / ``$or`` / ``$not`` count too. A key whose condition a missing key satisfies is
    left out (``$ne``, ``$nin``, a condition under ``$not``): the filter can match without it.

    Examples:
        >>> sorted(_filter_keys({"$or": [{"lang": "en"}, {"year": {"$gte": 2020}}], "$not": {"draft": True}}))
        ['lang', 'year']
        >>> sorted(_filter_keys({"a": {"$ne": 1}, "b": {"$nin": [1]}, "c": {"$not": {"$eq": 1}}}))
        []
    """
    from kl_retrievers.filters import _MISSING, _field_condition

    keys: set[str] = set()
    if isinstance(spec, list):
        for part in spec:
            keys |= _filter_keys(part, negated)
    elif isinstance(spec, dict):
        for key, value in spec.items():
            if key in ("$and", "$or", "$not"):
                keys |= _filter_keys(value, negated != (key == "$not"))
            elif isinstance(key, str) and not key.startswith("$"):
                try:
                    missing_matches = bool(_field_condition(value)(_MISSING))
                except (ValueError, TypeError):  # the search itself reports a malformed condition
                    continue
                if missing_matches == negated:  # the (negated) condition rejects a document without the key
                    keys.add(key)
    return keys


_FILTER_KEY_CHUNK = 512  # documents fetched at a time while looking for --filter's keys and their value types
#: At most this many documents, spread evenly over the store, are read for the JSON types of --filter's keys.
_FILTER_TYPE_SAMPLE = 8192


def _warn_absent_filter_keys(store: Any, filt: dict[str, Any]) -> None:
    """Warn (stderr) naming the ``--filter`` keys that no document of ``store`` has in its metadata.

    Called when a query got fewer results than asked: a misspelt key matches nothing, and an empty result
    would otherwise look like an answer. The documents are read :data:`_FILTER_KEY_CHUNK` at a time,
    stopping as soon as every key has been seen. (Values of another JSON type than the stored ones are
    warned about before the search: :func:`_warn_mistyped_filter_values`.)
    """
    wanted = _filter_keys(filt)
    if not wanted:
        return
    present: set[str] = set()
    ids = store.ids  # a fresh list already: no copy
    for start in range(0, len(ids), _FILTER_KEY_CHUNK):
        for doc in store.get_by_ids(ids[start : start + _FILTER_KEY_CHUNK]):
            present |= wanted & set(doc.metadata)
        if present == wanted:
            return
    absent = sorted(wanted - present)
    logger.warning(
        "--filter names metadata key%s %s, which no document in the store has: a condition on %s matches "
        "no document (check the spelling)",
        "s" if len(absent) > 1 else "",
        ", ".join(repr(key) for key in absent),
        "them" if len(absent) > 1 else "it",
    )


def _warn_mistyped_filter_values(store: Any, filt: dict[str, Any], *, well_formed: bool = False) -> None:
    """Warn (stderr) naming the values a ``--filter`` compares a key with that no stored value of the key can
    equal or order with (:func:`_mistyped_filter_values`): checked once, before the search.

    Such a condition has the same result for every document: ``{"year": {"$gte": "2020"}}`` over numeric years
    matches nothing, and ``{"year": {"$ne": "2020"}}`` (or a ``$nin`` of it, or a ``$not`` of ``$eq``) excludes
    nothing, which no short result would reveal. The stored types are read from at most
    :data:`_FILTER_TYPE_SAMPLE` documents spread evenly over the store (all of them in a smaller store; the
    warning says when it read a sample), :data:`_FILTER_KEY_CHUNK` at a time, stopping as soon as every key
    has been seen with a value of each type the filter compares it with, so a well-typed filter costs one
    chunk or so.

    A malformed filter (one :func:`kl_retrievers.filters.compile_filter` refuses) gets no warning and costs
    no read: the search reports what is wrong with it. ``well_formed=True`` says the caller compiled ``filt``
    already (``search`` refuses a malformed one before loading the model), so it is not compiled again here;
    a direct caller leaves it ``False``.
    """
    if not well_formed:
        from kl_retrievers.filters import compile_filter

        try:
            compile_filter(filt)
        except (ValueError, TypeError):
            return
    compared = _filter_values(filt)
    typed: dict[str, set[str]] = {}  # key -> the JSON types of the values the filter compares it with
    for key, _, value in compared:
        if (kind := _json_type(value)) is not None:
            typed.setdefault(key, set()).add(kind)
    if not typed:
        return
    ids = store.ids  # a fresh list already (only read here): no copy
    total = len(ids)
    if total > _FILTER_TYPE_SAMPLE:
        ids = [ids[i * total // _FILTER_TYPE_SAMPLE] for i in range(_FILTER_TYPE_SAMPLE)]
    stored: dict[str, set[str]] = {key: set() for key in typed}  # key -> the JSON types of its stored values
    for start in range(0, len(ids), _FILTER_KEY_CHUNK):
        for doc in store.get_by_ids(ids[start : start + _FILTER_KEY_CHUNK]):
            for key, kinds in stored.items():
                if key in doc.metadata and (kind := _json_type(doc.metadata[key])) is not None:
                    kinds.add(kind)
        if all(_comparable_types(kind) & stored[key] for key, kinds in typed.items() for kind in kinds):
            return
    sampled = (len(ids), total) if len(ids) < total else None
    for message in _mistyped_filter_values(compared, stored, sampled=sampled):
        logger.warning("%s", message)


#: The field operators whose value (each value of ``$in`` / ``$nin``) is compared with a stored value.
_VALUE_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")


def _filter_values(spec: Any) -> list[tuple[str, str, Any]]:
    """``(key, operator, value)`` for each value a JSON ``--filter`` compares a metadata key with.

    The operators of :data:`_VALUE_OPERATORS` (``$neq`` as ``$ne``), one entry per value of ``$in`` / ``$nin``;
    a bare value is ``$eq``, a bare list ``$in``; inside ``$and`` / ``$or`` / ``$not`` too. The operator of a
    condition under an odd number of ``$not`` (field or logical) reads ``"$not $eq"`` (two cancel out). A
    malformed filter gives what it can (the search itself reports what is wrong).

    Examples:
        >>> _filter_values({"$or": [{"lang": ["en", "de"]}, {"year": {"$not": {"$gte": "2020"}}}]})
        [('lang', '$in', 'en'), ('lang', '$in', 'de'), ('year', '$not $gte', '2020')]
        >>> _filter_values({"$not": {"year": {"$not": {"$ne": 1}}}})
        [('year', '$ne', 1)]
    """
    from kl_retrievers.filters import OPERATOR_ALIASES

    found: list[tuple[str, str, Any]] = []

    def condition(key: str, cond: Any, negated: bool) -> None:
        def add(op: str, value: Any) -> None:
            found.append((key, f"$not {op}" if negated else op, value))

        if isinstance(cond, dict) and cond and all(isinstance(op, str) and op.startswith("$") for op in cond):
            for op, value in cond.items():
                op = OPERATOR_ALIASES.get(op, op)
                if op == "$not":
                    condition(key, value, not negated)
                elif op in ("$in", "$nin") and isinstance(value, list):
                    for item in value:
                        add(op, item)
                elif op in _VALUE_OPERATORS:
                    add(op, value)
        elif isinstance(cond, list):
            for item in cond:
                add("$in", item)
        else:
            add("$eq", cond)

    def walk(part: Any, negated: bool) -> None:
        if isinstance(part, list):
            for item in part:
                walk(item, negated)
        elif isinstance(part, dict):
            for key, value in part.items():
                if key in ("$and", "$or", "$not"):
                    walk(value, negated != (key == "$not"))
                elif isinstance(key, str) and not key.startswith("$"):
                    condition(key, value, negated)

    walk(spec, False)
    return found


_JSON_TYPES = {
    "string": "a string",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
}


def _json_type(value: Any) -> str | None:
    """The JSON type of a metadata or filter value (``None``: null, or no JSON value).

    Examples:
        >>> _json_type("2020"), _json_type(2020), _json_type(True), _json_type(None)
        ('string', 'number', 'boolean', None)
    """
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def _comparable_types(kind: str) -> set[str]:
    """The JSON types of the stored values a filter value of type ``kind`` can equal or order with (Python
    compares a boolean as the number 0 or 1)."""
    return {"number", "boolean"} if kind in ("number", "boolean") else {kind}


def _mistyped_filter_values(
    compared: list[tuple[str, str, Any]], stored: dict[str, set[str]], *, sampled: tuple[int, int] | None = None
) -> list[str]:
    """One message per key and JSON type of the filter values that no stored value of the key can equal or order
    with (``stored``: each key's stored types; a key never stored, or stored as null only, is left out).

    ``sampled``: ``(read, documents)`` when ``stored`` was read from a sample of the store, which the message
    then says. The message says what follows for a condition whose result such a value fixes: in ``$ne`` /
    ``$nin`` (or ``$not $eq``, ``$not $in``, ...) it excludes no document, in ``$not $ne`` / ``$not $nin`` it
    matches no document (:func:`_filter_values` writes the operator of a negated condition ``"$not $ne"``).
    Read from a sample, that holds for the sampled documents: a document outside it may store another type.

    Examples:
        >>> message = _mistyped_filter_values([("year", "$gte", "2020")], {"year": {"number"}})[0]
        >>> "every stored 'year' is a number" in message, message.endswith("(did you mean 2020?)")
        (True, True)
        >>> _mistyped_filter_values([("year", "$not $ne", "2020")], {"year": {"number"}})[0].split(", so ")[1]
        'in $not $ne it matches no document (did you mean 2020?)'
        >>> sampled = _mistyped_filter_values([("year", "$ne", "2020")], {"year": {"number"}}, sampled=(8, 20))[0]
        >>> "every 'year' in 8 documents sampled evenly from the store's 20" in sampled
        True
        >>> sampled.endswith("never match, so in $ne it excludes none of the sampled documents (did you mean 2020?)")
        True
    """
    groups: dict[tuple[str, str], tuple[list[str], list[Any]]] = {}
    for key, op, value in compared:
        kind = _json_type(value)
        if kind is None or not stored.get(key) or _comparable_types(kind) & stored[key]:
            continue
        ops, values = groups.setdefault((key, kind), ([], []))
        if op not in ops:
            ops.append(op)
        if value not in values:
            values.append(value)
    messages = []
    for (key, kind), (ops, values) in groups.items():
        shown = ", ".join(json.dumps(v, ensure_ascii=False) for v in values[:3]) + (", ..." if len(values) > 3 else "")
        have = " or ".join(_JSON_TYPES[t] for t in sorted(stored[key]))
        where = (
            f"every stored {key!r}"
            if sampled is None
            else f"every {key!r} in {sampled[0]:,} documents sampled evenly from the store's {sampled[1]:,}"
        )
        messages.append(
            f"--filter compares {key!r} with the {kind}{'s' if len(values) > 1 else ''} {shown} ({', '.join(ops)}), "
            f"but {where} is {have}: values of different JSON types never match"
            f"{_fixed_result(ops, plural=len(values) > 1, sampled=sampled is not None)}"
            f"{_filter_value_hint(values[0], stored[key])}"
        )
    return messages


def _fixed_result(ops: list[str], *, plural: bool, sampled: bool) -> str:
    """``, so in $ne it excludes no document``: what a value that never equals a stored one makes of the conditions
    ``ops`` (as :func:`_filter_values` writes them) whose result it fixes, else ``""``.

    Never equal: ``$ne`` / ``$nin`` of it are true for every document, so they (and ``$not`` of ``$eq``, ``$in``,
    ``$gt``, ...) exclude none, and ``$not`` of ``$ne`` / ``$nin`` is false for every document, so it matches none.
    A plain ``$eq`` / ``$gte`` matches none too, which "never match" says already. ``sampled``: only the
    sampled documents are known to be so.

    Examples:
        >>> _fixed_result(["$ne", "$not $eq", "$not $nin"], plural=False, sampled=False)
        ', so in $ne or $not $eq it excludes no document and in $not $nin it matches no document'
        >>> _fixed_result(["$eq", "$gte"], plural=False, sampled=False)
        ''
        >>> _fixed_result(["$nin"], plural=True, sampled=True)
        ', so in $nin they exclude none of the sampled documents'
    """
    keep_all, keep_none = [], []
    for op in ops:
        negated = op.startswith("$not ")
        if (op.removeprefix("$not ") in ("$ne", "$nin")) != negated:
            keep_all.append(op)
        elif negated:
            keep_none.append(op)
    documents = "none of the sampled documents" if sampled else "no document"
    clauses = []
    if keep_all:
        verb = "they exclude" if plural else "it excludes"
        clauses.append(f"in {' or '.join(keep_all)} {verb} {documents}")
    if keep_none:
        verb = "they match" if plural else "it matches"
        clauses.append(f"in {' or '.join(keep_none)} {verb} {documents}")
    return f", so {' and '.join(clauses)}" if clauses else ""


def _filter_value_hint(value: Any, stored: set[str]) -> str:
    """`` (did you mean ...?)``: ``value`` as a stored type would write it (the string ``"2020"`` as the number
    ``2020``, a number as a string), else ``""``."""
    if isinstance(value, str):
        try:
            meant = json.loads(value)
        except ValueError:
            return ""
        kind = _json_type(meant)
        finite = not isinstance(meant, float) or math.isfinite(meant)
        if kind is not None and finite and _comparable_types(kind) & stored:
            return f" (did you mean {json.dumps(meant, ensure_ascii=False)}?)"
        return ""
    if "string" in stored and isinstance(value, (bool, int, float)):
        return f" (did you mean {json.dumps(json.dumps(value))}?)"
    return ""


def _recorded_backend(encoder_info: Any) -> Backend | None:
    """The backend (``"torch"`` / ``"onnx"``) a store's encoder ran on, from its config.json, else ``None``.

    :func:`kl_retrievers.store.faiss._recorded_backend` (which the store's own lazy loader uses too), with
    a warning that names ``--model-backend``.
    """
    from kl_retrievers.store.faiss import _recorded_backend as recorded

    return recorded(encoder_info, hint="pass --model-backend to choose")


# ---------------------------------------------------------------- evaluate / train / main
def _add_evaluate(sub: Any) -> None:
    from kl_retrievers.evaluate_cli import add_evaluate_command

    add_evaluate_command(sub)


def _add_train(sub: Any) -> None:
    from kl_retrievers.training.cli import add_train_command

    add_train_command(sub)


_REGISTRARS: list[Callable[[Any], None]] = [_add_demo, _add_encode, _add_index, _add_search, _add_evaluate, _add_train]


def _log_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """``warnings.showwarning`` for the command line: a ``WARNING py.warnings: ...`` log line."""
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, _one_line(str(message)))


def _error_message(exc: BaseException) -> str:
    """What a user needs from an expected error: its message, plus the type when the message is bare."""
    if isinstance(exc, KeyError):
        arg = exc.args[0] if len(exc.args) == 1 else exc
        return str(arg) if isinstance(arg, str) and " " in arg else f"missing key {arg!r}"
    text = str(exc)
    if isinstance(exc, OSError) and not text:
        text = type(exc).__name__
    return _one_line(text)


#: Errors a user can cause and fix (bad input files, flags, paths, data): one line, exit status 2.
#: ``StoreFormatError``, ``DatasetError``, ``NotAnEncoderError`` and JSON decoding errors are ``ValueError``s.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, OSError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(
        prog="kl-retrievers",
        description="Dense retrieval with Gaussian representations scored by -KL divergence (higher is better).",
    )
    add_global_arguments(parser, quiet=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _REGISTRARS:
        register(sub)
    add_verbose_to_commands(sub, quiet=True)  # -v and -q after the subcommand too
    return parser


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (``poll`` says ``POLLERR`` or ``POLLHUP``).

    ``False`` when it cannot tell (no ``poll()`` on Windows, or a stdout without a file descriptor):
    the error is then reported, not hidden.
    """
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (as Ctrl-C raises ``KeyboardInterrupt``): the same clean-up runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Every failure is ONE line on stderr, ``kl-retrievers COMMAND: error: ...`` naming the file or
    flag and what is wrong, never a traceback: bad flags (argparse) and bad input (missing or
    malformed files, damaged stores, unwritable outputs: :data:`EXPECTED_ERRORS`) exit with 2;
    anything else is a bug and exits with 1 (``--verbose`` adds its traceback). Log lines
    (``LEVEL logger: message``: warnings and errors; ``-v`` INFO too, ``-vv`` DEBUG too, ``-q`` errors only, Python
    warnings being log lines here) may precede it. Ctrl-C exits with 130 and SIGTERM with 143 (128 +
    the signal's number, as a shell reports a process killed by it), each after the same clean-up
    (temporary folders of an interrupted save are removed); a reader of stdout that went away
    (``| head``) gives 141. Results go to stdout, logs, warnings and progress bars to stderr. A SIGTERM
    that the parent process set to be ignored stays ignored.
    """
    import signal
    import threading

    if sys.stderr is None:  # started with stderr closed (2>&-): messages go nowhere, not print()'s stdout
        with open(os.devnull, "w", encoding="utf-8") as devnull:
            sys.stderr = devnull
            try:
                return main(argv)
            finally:
                sys.stderr = None
    previous: Any = None
    handled = threading.current_thread() is threading.main_thread()  # signal.signal works there only
    # an ignored SIGTERM (SIG_IGN inherited from the parent, as `nohup` and some supervisors set it) stays ignored
    handled = handled and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    if handled:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _interrupted(prefix: str, exc: KeyboardInterrupt) -> int:
    """The line and exit status of Ctrl-C (130) or SIGTERM (143); a message the command gave the interrupt
    (``train``: the checkpoint a ``--resume`` continues from) ends the line."""
    terminated = isinstance(exc, _Terminated)
    told = f"; {_one_line(str(exc))}" if str(exc) else ""
    print(f"{prefix} {'terminated (SIGTERM)' if terminated else 'interrupted'}{told}", file=sys.stderr)
    return 143 if terminated else 130


def _main(argv: Sequence[str] | None) -> int:
    """:func:`main` under its SIGTERM handler."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C while the subcommands' modules load
        return _interrupted("kl-retrievers: error:", exc)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: choose a COMMAND (see {parser.prog} --help)", file=sys.stderr)
        return 2
    errors_only = bool(getattr(args, "errors_only", False))
    if errors_only and args.verbose:
        parser.error("--quiet (-q) and --verbose (-v) contradict each other: give one of them")
    # the command as given (``train`` records it in the model): main(argv) from Python is not the process's own argv
    args.command_line = shlex.join(["kl-retrievers", *(argv if argv is not None else sys.argv[1:])])
    with _cli_logging(args.verbose, quiet=errors_only):
        return _run_command(args)


@contextlib.contextmanager
def _cli_logging(verbose: int, *, quiet: bool = False) -> Iterator[None]:
    """Log lines (``LEVEL logger: message``) on stderr for one command, at :func:`cli_log_level`.

    WARNING by default, INFO with ``--verbose``, DEBUG with ``-vv``, ERROR with ``--quiet``: then the handler drops
    lower records too, so that a logger given a level of its own (``train``'s INFO lines) does not get past it, and
    the Python warnings that the command line logs (``WARNING py.warnings: ...``) are not shown either.

    Only when the root logger has no handler (a program that configured logging keeps its own configuration,
    as with :func:`logging.basicConfig`); the handler and level installed are removed again when the command
    ends, so that a later in-process :func:`main` call configures its own (``-v`` then raises the level) and
    the caller's process is left as it was. Commands running at once (threads, or one inside another) share
    one handler: the first to start installs it, the last to end removes it and restores the root level the
    first found; meanwhile the level is the lowest of theirs (INFO while any of them was given ``--verbose``,
    ERROR only while all were given ``--quiet``), and faiss's loader logs warnings only (:data:`_FAISS_LOADER`;
    its level is left alone when the program set one).
    """
    root = logging.getLogger()
    level = cli_log_level(verbose, quiet)
    with _cli_log.lock:
        if not _cli_log.levels and root.handlers:  # the program's own configuration: left alone
            shared = False
        else:
            shared = True
            if not _cli_log.levels:
                _cli_log.handler = logging.StreamHandler()  # sys.stderr as it is now
                _cli_log.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
                _cli_log.level = root.level
                root.addHandler(_cli_log.handler)
                # faiss's loader logs at INFO each build it could not load ("Could not load library with AVX512
                # support ..."), which reads as a failure under -v: its warnings only, unless the program set a level
                loader = logging.getLogger(_FAISS_LOADER)
                _cli_log.loader_level = loader.level
                if loader.level == logging.NOTSET:
                    loader.setLevel(logging.WARNING)
            _cli_log.levels.append(level)
            _cli_log.apply(root)
    if not shared:
        yield
        return
    try:
        yield
    finally:
        with _cli_log.lock:
            _cli_log.levels.remove(level)
            if _cli_log.levels:
                _cli_log.apply(root)
            else:
                handler, _cli_log.handler = _cli_log.handler, None
                if handler is not None:
                    root.removeHandler(handler)
                    handler.close()
                root.setLevel(_cli_log.level)
                logging.getLogger(_FAISS_LOADER).setLevel(_cli_log.loader_level)


#: The logger of faiss's library loader, kept at WARNING while a command logs (:func:`_cli_logging`).
_FAISS_LOADER = "faiss.loader"


class _CliLog:
    """The log handler of the commands running in this process (:func:`_cli_logging`), under :attr:`lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.levels: list[int] = []  # the log level of each command running with the handler installed
        self.handler: logging.Handler | None = None
        self.level = logging.NOTSET  # the root logger's level when the first of them started
        self.loader_level = logging.NOTSET  # faiss's loader logger's level then (_FAISS_LOADER)

    def apply(self, root: logging.Logger) -> None:
        """The lowest level of the running commands on ``root``; on the handler too when that is ERROR (``-q``)."""
        level = min(self.levels)
        root.setLevel(level)
        if self.handler is not None:
            self.handler.setLevel(level if level >= logging.ERROR else logging.NOTSET)


_cli_log = _CliLog()


def _run_command(args: argparse.Namespace) -> int:
    """:func:`_main` once the arguments are parsed and logging is set up."""
    prefix = f"kl-retrievers {args.command}: error:"
    if sys.stdout is None:  # started with stdout closed (`>&-`): the results would be lost without a word
        print(
            f"{prefix} stdout is closed, so the output cannot be written; redirect it to a file (or to "
            f"{os.devnull} to discard it)",
            file=sys.stderr,
        )
        return 2
    stdout = sys.stdout
    sys.stdout = _CheckedStdout(stdout)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning  # one log line each, not the source line too
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit ("Exception ignored ...")
            return status
    except BrokenPipeError as exc:
        if not _stdout_gone():  # another pipe broke (a connection to a server): an error like any other
            print(f"{prefix} {_error_message(exc)}", file=sys.stderr)
            return 2
        # The reader went away (`kl-retrievers search ... | head -3`): stop quietly, the recipe of Python's
        # signal docs. Further writes (the interpreter's final flush) go to /dev/null. The status is
        # non-zero, as `python -m json.tool` exits (with errno 32) and as a C tool killed by SIGPIPE
        # (128 + 13 = 141, what a shell reports for `yes | head -1`); `set -o pipefail` scripts see it too.
        _silence_stdout(stdout)
        return 141
    except SystemExit as exc:  # a subcommand's usage error, raise SystemExit("message")
        if exc.code is None or isinstance(exc.code, int):
            raise
        print(f"{prefix} {_one_line(str(exc.code))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _interrupted(prefix, exc)
    except EXPECTED_ERRORS as exc:
        print(f"{prefix} {_error_message(exc)}", file=sys.stderr)
        return 2
    except Warning as exc:  # a warning that a filter turned into an error (-W error, PYTHONWARNINGS=error): no bug
        logger.info("traceback of the warning raised as an error:", exc_info=True)
        print(
            f"{prefix} {type(exc).__name__} raised as an error by the warnings filter (-W error or "
            f"PYTHONWARNINGS): {_one_line(str(exc))} (run without that filter to see it as a warning and go on)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        logger.info("traceback of the internal error:", exc_info=True)
        print(
            f"{prefix} internal error {type(exc).__name__}: {_one_line(str(exc))} "
            "(please report it; --verbose shows the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        if sys.stdout is not stdout and isinstance(sys.stdout, _CheckedStdout):
            sys.stdout = stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
