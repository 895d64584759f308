"""What the ``kl-retrievers`` subcommands share: argparse types, common options and output checks.

The layer under every command module: :mod:`kl_retrievers.cli` (the main parser),
:mod:`kl_retrievers.evaluate_cli` and :mod:`kl_retrievers.training.cli` import it, and it imports
from the package only :mod:`kl_retrievers._io` (which imports only the standard library) at import time,
and :mod:`kl_retrievers.onnx` only when ``--model-threads`` is parsed (its thread bound), so the command
modules never import each other.

Examples:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--batch-size", type=positive_int, default=32)
    >>> args = parser.parse_args(["--batch-size", "8"])
    >>> args_subset(args, "batch_size")
    {'batch_size': 8}
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kl_retrievers._io import check_file_target, is_gaussians_config, read_json_object

__all__ = [
    "ENCODED_SHARDS_FORMAT",
    "KLSTORE_FORMAT",
    "add_global_arguments",
    "add_model_backend_argument",
    "add_model_session_arguments",
    "add_progress_arguments",
    "add_verbose_to_commands",
    "args_subset",
    "check_output_path",
    "is_encoded_shards_folder",
    "is_gaussians_config",
    "is_store_config",
    "model_session_flags",
    "model_session_options",
    "model_session_problem",
    "non_negative_int",
    "read_folder_config",
    "positive_int",
    "progress_default",
    "progress_option",
    "thread_count",
    "token_budget",
]

logger = logging.getLogger(__name__)


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (the message names the allowed range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}; got {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


#: argparse types shared by the subcommands.
positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)  # a seed
token_budget = _int_at_least(3)  # what GaussianEncoder accepts as max_length ([CLS], [VAR], [SEP])


def thread_count(text: str) -> int:
    """An argparse ``type`` for ``--model-threads``: what ``num_threads`` accepts, an int from 1 to
    :func:`kl_retrievers.onnx.max_threads` (4 per usable CPU core, at least 16), checked as it checks it.

    Examples:
        >>> thread_count("2")
        2
        >>> thread_count("99999")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        argparse.ArgumentTypeError: num_threads must be an int from 1 to ... on this machine ...
    """
    value = positive_int(text)
    from kl_retrievers.onnx import check_num_threads  # at parse time only: the CLI's start stays light

    try:
        return check_num_threads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


thread_count.__name__ = "thread count"


def add_model_backend_argument(
    p: Any, *flags: str, default: str | None = None, default_help: str | None = None
) -> None:
    """``--model-backend`` (and any alias in ``flags``): run the --model encoder on torch or ONNX Runtime.

    Args:
        p: The subcommand's parser.
        *flags: Aliases of ``--model-backend``.
        default: ``None`` follows :func:`kl_retrievers.pretrained.default_backend` (ONNX int8 on CPU for
            the default model; torch for saved torch encoders when torch is installed); ``evaluate``
            passes ``"torch"`` so that the logged evaluation commands reproduce exactly.
        default_help: What the help says the default is, when it is not ``default`` (``search``: the store's).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_model_backend_argument(parser, "--backend")
        >>> parser.parse_args(["--backend", "onnx"]).model_backend
        'onnx'
        >>> parser.parse_args([]).model_backend is None
        True
    """
    auto = "the library's default: ONNX int8 on CPU for the default model"
    p.add_argument(
        "--model-backend",
        *flags,
        dest="model_backend",
        choices=("torch", "onnx"),
        default=default,
        help=f"run the model on torch or onnx (ONNX Runtime, int8 weights, CPU; a bundled or saved torch model is "
        f"exported on first use and cached); default: {default_help or default or auto}",
    )


#: The ONNX Runtime session flags of :func:`add_model_session_arguments`: (flag, ``dest``, ``onnx_options`` key).
_SESSION_FLAGS = (
    ("--model-threads", "model_threads", "num_threads"),
    ("--model-spinning", "model_spinning", "allow_spinning"),
)


def add_model_session_arguments(
    p: Any, *, default_note: str = "without --model-backend, they pick that backend, even on a machine with a GPU"
) -> None:
    """``--model-threads N`` and ``--model-spinning``: the ONNX Runtime session of the --model encoder.

    They become :func:`kl_retrievers.pretrained.load_model`'s ``onnx_options`` (``num_threads`` and
    ``allow_spinning=True``; see :func:`model_session_options`); on the torch backend the command refuses
    them (:func:`model_session_problem`). The help text of both names ``--device`` only when the parser
    already has that option (add it first).

    Args:
        p: The subcommand's parser.
        default_note: How they go with the command's default backend, for the help text of both flags.

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_model_session_arguments(parser)
        >>> args = parser.parse_args(["--model-threads", "2", "--model-spinning"])
        >>> args.model_threads, args.model_spinning
        (2, True)
    """
    # only a subcommand with its own --device refuses one other than cpu for these flags
    has_device = "--device" in getattr(p, "_option_string_actions", {})
    onnx_only = "ONNX backend only, on cpu" + (": a --device other than cpu is refused" if has_device else "")
    p.add_argument(
        "--model-threads",
        dest="model_threads",
        type=thread_count,
        default=None,
        metavar="N",
        help=f"ONNX Runtime intra-op threads of the model, N from 1 to 4 per usable CPU core (at least 16, at "
        f"most 1024) ({onnx_only}; {default_note}; default: ONNX Runtime's choice, the physical cores)",
    )
    p.add_argument(
        "--model-spinning",
        dest="model_spinning",
        action="store_true",
        help="let ONNX Runtime's idle threads spin (busy-wait) between runs: lower single-query latency on an idle "
        f"machine, a little less batch throughput ({onnx_only}; {default_note}; default: off; see docs/onnx.md)",
    )


def _session_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The session flags given, each with its ``onnx_options`` entry (none for a parser without them)."""
    given = {}
    for flag, dest, key in _SESSION_FLAGS:
        value = getattr(args, dest, None)
        if value is not None and value is not False:
            given[flag] = (key, value)
    return given


def model_session_flags(args: argparse.Namespace) -> list[str]:
    """The session flags given (``--model-threads``, ``--model-spinning``), for messages.

    Examples:
        >>> model_session_flags(argparse.Namespace(model_threads=None, model_spinning=True))
        ['--model-spinning']
    """
    return list(_session_flags(args))


def model_session_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``load_model``'s ``onnx_options`` from ``--model-threads`` / ``--model-spinning``, or ``None`` without them.

    Examples:
        >>> model_session_options(argparse.Namespace(model_threads=1, model_spinning=True))
        {'num_threads': 1, 'allow_spinning': True}
        >>> model_session_options(argparse.Namespace(model_threads=None, model_spinning=False)) is None
        True
    """
    return dict(_session_flags(args).values()) or None


def model_session_problem(
    args: argparse.Namespace,
    backend: str | None,
    *,
    why: str = "--model-backend torch",
    device: str | None = None,
    instead: str | None = None,
) -> str | None:
    """Why ``--model-threads`` / ``--model-spinning`` cannot be used with ``backend``, else ``None``.

    They set the ONNX Runtime session, so the torch backend refuses them; with ``backend=None`` they
    choose ONNX (as ``load_model``'s ``onnx_options`` do), which runs on cpu only.

    Args:
        args: The parsed options.
        backend: The backend the model will run on (``None``: not chosen yet, the flags choose ONNX).
        why: What chose torch, for the message (``--model-backend torch``, the store's backend...).
        device: The command's ``--device``, when it has one.
        instead: What the command runs instead of a ``--model`` encoder (e.g. ``--baseline bm25``), which
            the flags do not apply to.

    Examples:
        >>> args = argparse.Namespace(model_threads=2, model_spinning=False)
        >>> model_session_problem(args, "onnx") is None
        True
        >>> print(model_session_problem(args, "torch"))  # doctest: +ELLIPSIS
        --model-threads applies to the ONNX backend only (...), and the model runs on torch (--model-backend torch): ...
    """
    flags = model_session_flags(args)
    if not flags:
        return None
    named = " and ".join(flags)
    verb = "apply" if len(flags) > 1 else "applies"
    if instead is not None:
        return f"{named} {verb} to the --model encoder on the ONNX backend, not to {instead}"
    if backend == "torch":
        return (
            f"{named} {verb} to the ONNX backend only (an ONNX Runtime session setting), and the model runs on "
            f"torch ({why}): pass --model-backend onnx, or leave {named} out"
        )
    from kl_retrievers._encoding import device_type

    if backend is None and device is not None and device_type(device) != "cpu":  # "cpu:0" is the cpu too
        return (
            f"{named} {verb} to the ONNX backend only, which runs on cpu; got --device {device} (pass --device cpu, "
            f"or leave {named} out to run on {device})"
        )
    return None


def add_unknown_docs_argument(parser: Any, *, help: str) -> None:
    """``--unknown-docs {error,drop}`` (default ``error``): what to do with qrels naming documents outside the corpus.

    Args:
        parser: An ``argparse`` parser or argument group.
        help: The option's help text (each command words what it drops).
    """
    parser.add_argument("--unknown-docs", choices=["error", "drop"], default="error", help=help)


def args_subset(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The parsed options ``names`` as keyword arguments, for options passed on under their own name.

    Examples:
        >>> args_subset(argparse.Namespace(nlist=8, nprobe=2, out="x"), "nlist", "nprobe")
        {'nlist': 8, 'nprobe': 2}
    """
    return {name: getattr(args, name) for name in names}


#: ``format`` in the ``config.json`` of a :class:`~kl_retrievers.index.KLStore` folder (``store._format.FORMAT_NAME``;
#: spelled out because this module imports nothing from the package; tests/test_cli_audit_fixes.py checks it).
#: The only store kept in a folder's ``config.json``: a :class:`~kl_retrievers.hybrid.KLHybridStore` folder keeps
#: its own in ``hybrid.json`` (``kl-retrievers/hybrid``) and a Milvus store lives in its collection.
KLSTORE_FORMAT = "kl-retrievers/klstore"


#: ``format`` in the ``manifest.json`` of a folder of encoded shards (``kl-retrievers encode --shard-size``,
#: ``sharded._FORMAT_NAME``; spelled out for the same reason, and tests/test_sharded_encode_checks.py checks it).
ENCODED_SHARDS_FORMAT = "kl-retrievers/encoded-shards"


def is_encoded_shards_folder(folder: Path) -> bool:
    """Whether ``folder`` holds encoded shards (its ``manifest.json`` has format :data:`ENCODED_SHARDS_FORMAT`)."""
    manifest = read_json_object(folder / "manifest.json")
    return manifest is not None and manifest.get("format") == ENCODED_SHARDS_FORMAT


def read_folder_config(folder: Path) -> dict[str, Any] | None:
    """``folder/config.json`` as a JSON object, or ``None`` when it is missing, unreadable or not an object."""
    return read_json_object(folder / "config.json")


def is_store_config(config: dict[str, Any] | None) -> bool:
    """Whether a folder's ``config.json`` (see :func:`read_folder_config`) is a KL store's."""
    return config is not None and config.get("format") == KLSTORE_FORMAT


def stdin_problem(given: str | os.PathLike[str], named: str, instead: str) -> str | None:
    """Why the input ``given`` cannot be read (``None``: it is not ``-``, or a file or folder named ``-`` exists).

    ``-`` reads stdin in many tools, but not here: the message says so, as ``encode --input -`` does,
    where "not found" would send the user looking for a file. ``named`` names the argument, ``instead``
    says what to give.

    Examples:
        >>> print(stdin_problem("-", "--data", "give a BEIR folder or a .jsonl file"))
        --data -: reading stdin is not supported; give a BEIR folder or a .jsonl file
        >>> stdin_problem("data", "--data", "give a BEIR folder") is None
        True
    """
    if os.fspath(given) != "-" or os.path.lexists("-"):
        return None
    return f"{named} -: reading stdin is not supported; {instead}"


def progress_default(quiet: bool) -> bool:
    """Whether to show progress bars: never when ``quiet``, else when stderr is a terminal (``progress_default(False)``
    is what ``evaluate`` and ``train`` show when :func:`progress_option` is ``None``: no flag given).

    A log file or a pipe (``2> log``, a CI job) gets no bars, whose redraws would fill it; nor does a stderr that
    is missing, closed or has no ``isatty`` (the library's test, :func:`kl_retrievers._encoding.stderr_is_terminal`).

    Examples:
        >>> progress_default(True)
        False
    """
    from kl_retrievers._encoding import stderr_is_terminal  # the library's rule (numpy: imported when run)

    return not quiet and stderr_is_terminal()


#: What a command logs when given ``--quiet`` after it where that is the deprecated old name of ``--no-progress``
#: (:func:`add_progress_arguments`' ``deprecated_quiet``), not the log level's ``-q`` / ``--quiet``.
DEPRECATED_QUIET_WARNING = (
    "{command} --quiet is deprecated: it hides the progress bars, which --no-progress now does; in the next release "
    "it will set the log level (errors only), as -q/--quiet does for every other command, and no longer hide the "
    "bars; to log errors only now, give -q/--quiet before the subcommand (kl-retrievers -q {command} ...)"
)
#: Why ``--quiet --progress`` after such a command is a usage error (:class:`_ProgressFlag`).
_QUIET_WITH_PROGRESS = (
    "argument --quiet: after {command} it is the deprecated old name of --no-progress, which contradicts "
    "--progress: give one of them (to log errors only and show the bars: kl-retrievers -q {command} ... --progress)"
)


class _ProgressFlag(argparse.Action):
    """``--progress`` or the deprecated ``--quiet`` (the old name of ``--no-progress``) of a command that has both:
    ``True`` when given, and a usage error after the other one, in either order (``--quiet --no-progress`` is
    accepted: it says the same twice)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, command: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)
        self.command = command

    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        other = "progress" if self.dest == "deprecated_quiet" else "deprecated_quiet"
        if getattr(namespace, other, False):
            parser.error(_QUIET_WITH_PROGRESS.format(command=self.command))
        setattr(namespace, self.dest, True)


def add_progress_arguments(p: Any, *, deprecated_quiet: str | None = None, deprecated_quiet_also: str = "") -> None:
    """``--progress`` / ``--no-progress``: force the progress bars on stderr or hide them (default: on a terminal).

    Args:
        p: The subcommand's parser (or one of its argument groups).
        deprecated_quiet: The command's name (``"evaluate"``) when it also takes ``--quiet``, the deprecated old
            name of ``--no-progress``: it still hides the bars and sets ``args.deprecated_quiet``, on which the
            command logs :data:`DEPRECATED_QUIET_WARNING`; given with ``--no-progress`` it is accepted, with
            ``--progress`` refused. Such a command takes no ``-q`` (see :func:`add_verbose_to_commands`): that is the
            log level, given before the subcommand meanwhile.
        deprecated_quiet_also: What else that ``--quiet`` does, for its help, after "deprecated old name of
            --no-progress" (``train``'s also hides the training's INFO lines).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_progress_arguments(parser, deprecated_quiet="evaluate")
        >>> [progress_option(parser.parse_args(argv)) for argv in ([], ["--progress"], ["--no-progress"])]
        [None, True, False]
        >>> args = parser.parse_args(["--quiet"])
        >>> progress_option(args), args.deprecated_quiet
        (False, True)
    """
    # with the deprecated --quiet, --progress refuses it (and it --progress): it goes with --no-progress, whose old
    # name it is, so it stays out of the group that refuses --no-progress with --progress
    checked: dict[str, Any] = {"action": _ProgressFlag, "command": deprecated_quiet} if deprecated_quiet else {}
    bars = p.add_mutually_exclusive_group()
    bars.add_argument(
        "--progress",
        **(checked or {"action": "store_true"}),
        help="show progress bars on stderr even when it is not a terminal",
    )
    bars.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (default: shown when stderr is a terminal)"
    )
    if deprecated_quiet:
        p.add_argument(
            "--quiet",
            dest="deprecated_quiet",
            **checked,
            help=f"deprecated old name of --no-progress{deprecated_quiet_also} (it warns); to log errors only, give "
            f"-q/--quiet before the subcommand, as for every command: kl-retrievers -q {deprecated_quiet} ...",
        )


def progress_option(args: argparse.Namespace) -> bool | None:
    """``show_progress`` from :func:`add_progress_arguments`' flags: ``None`` (terminal only) without any of them.

    Examples:
        >>> progress_option(argparse.Namespace(progress=False, no_progress=False)) is None
        True
    """
    if getattr(args, "no_progress", False) or getattr(args, "deprecated_quiet", False):
        return False
    return True if getattr(args, "progress", False) else None


def check_output_path(path: Path, flag: str, *, folder: bool, store: bool = False, gaussians: bool = False) -> None:
    """Fail before any work when ``path`` cannot be written (a message naming ``flag`` and the problem).

    Args:
        path: The output path.
        flag: The option that named it (for the message).
        folder: Whether the output is a folder (else a file).
        store: The folder will be replaced by a KL store: an existing non-empty folder must be a KL
            store (its ``config.json`` has ``format`` :data:`KLSTORE_FORMAT`).
        gaussians: The folder will be replaced by saved Gaussians (``kl-retrievers encode``): an
            existing non-empty folder must hold saved Gaussians (its ``config.json`` says so).

    A file output (``folder=False``) is written by replacing its path (:func:`kl_retrievers._io.atomic_file`),
    so a symbolic link, a named pipe, a device or a socket there is refused here, before any work.

    Raises:
        ValueError: The path is the wrong kind, a non-empty folder that is not what is replaced, a file path
            holding something other than a regular file, or not writable.

    Examples:
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     check_output_path(Path(tmp) / "run.json", "--out", folder=False)
        ...     check_output_path(Path(tmp), "--out", folder=False)
        Traceback (most recent call last):
        ValueError: --out ...: is a folder; expected a file name
    """
    if path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{flag} {path}: exists and is not a folder")
        if not folder and path.is_dir():
            raise ValueError(f"{flag} {path}: is a folder; expected a file name")
        if folder and (store or gaussians) and any(path.iterdir()):
            config = read_folder_config(path)
            if config is None and is_encoded_shards_folder(path):
                output = "a KL store" if store else "a one-shot encode output (without --shard-size)"
                raise ValueError(
                    f"{flag} {path}: is an encoded-shards folder (written by `kl-retrievers encode --shard-size`); "
                    f"refusing to replace it with {output}: use a new or empty folder"
                    + ("" if store else ", or add --shard-size to resume it")
                )
            if store and not is_store_config(config):
                found = "no config.json" if config is None else f"a config.json with format {config.get('format')!r}"
                raise ValueError(
                    f"{flag} {path}: exists and is not a KL store folder ({found}); refusing to overwrite it"
                )
            if gaussians and not is_gaussians_config(config):
                raise ValueError(
                    f"{flag} {path}: exists and what it holds is not an encode output (saved Gaussians); "
                    "refusing to replace it: use a new or empty folder"
                )
    if not folder:  # a file is written by replacing its path: a link, a pipe or a device there is refused now
        try:
            check_file_target(path)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{flag} {path}: {exc}") from None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is not a folder")
    try:  # a real write: permission bits say nothing for root, or for /proc and read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".kl-retrievers-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write in {parent} ({exc.strerror or exc})") from None


# The command line's parser class, shared by ``kl-retrievers`` and ``python -m kl_retrievers.training.cli``
# (kept here so that neither imports the other).


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, wrapping help text at spaces only: a flag (``--no-progress``) or a name
    (``kl-retrievers``) is never split at a hyphen or across lines, whatever the terminal's width (a word longer than
    the line overflows it), so that the help can be searched and copied from."""

    _SPACES = re.compile(r"\s+")

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(self._SPACES.sub(" ", text).strip(), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            self._SPACES.sub(" ", text).strip(),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit status 2, as argparse).

    ``--help`` and ``--version`` honour stdout as the subcommands do (:func:`_print_to_stdout`): closed or
    full, exit status 2 with one line on stderr; a reader that went away, 141. The help wraps at spaces only
    (:class:`_HelpFormatter`, the default ``formatter_class``; its subcommands, parsers of this class, share it).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> Any:  # argparse's signature is NoReturn
        self.exit(
            2, f"{self.prog}: error: {_one_line(message)}{_usage_hint(self.prog, message)} (see {self.prog} --help)\n"
        )

    def parse_args(  # type: ignore[override]  # argparse's overloads: the same call, one signature
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """argparse's, whose "unrecognized arguments" error says where ``-q`` goes after ``evaluate`` or ``train``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._quiet_hint(parsed, extras)}")
        return parsed

    def _quiet_hint(self, parsed: argparse.Namespace, extras: Sequence[str]) -> str:
        """Where ``-q`` goes, when it came after a subcommand with a ``--quiet`` of its own (``evaluate -q``)."""
        command = getattr(parsed, "command", None)
        if "-q" not in extras or command not in _OWN_QUIET or "-q" not in self._option_string_actions:
            return ""
        return (
            f" (-q/--quiet for logs goes before the subcommand: {self.prog} -q {command} ...; "
            f"{command} --no-progress (formerly --quiet) hides its progress bars)"
        )

    def parse_known_args(  # type: ignore[override]  # argparse's overloads: the same call, one signature
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, adding the ``-v`` counted after the subcommand to those before it (``-v search -v``: ``-vv``).

        A subcommand parses into a namespace of its own, whose values replace the main parser's, so its ``-v``
        count is kept apart (:data:`_VERBOSE_AFTER`, :func:`add_verbose_to_commands`) and added here, where the
        main parser's count (:func:`add_global_arguments`) is in the same namespace.
        """
        parsed, extras = super().parse_known_args(args, namespace)
        after = getattr(parsed, _VERBOSE_AFTER, None)
        if after is not None and hasattr(parsed, "verbose"):  # the main parser's namespace: both counts known
            parsed.verbose = int(parsed.verbose or 0) + int(after)
            delattr(parsed, _VERBOSE_AFTER)
        return parsed, extras

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse passes sys.stdout for --help and --version and sys.stderr for usage errors, either of which
        # may be None (a closed descriptor): a None that stderr is not is stdout. argparse's own version drops
        # any OSError (exit status 0 with nothing written) and writes to stderr when stdout is closed.
        if message and (file is sys.stdout or (file is None and sys.stderr is not None)):
            _print_to_stdout(self, message)
        else:
            super()._print_message(message, file)


#: The subcommands whose ``--quiet`` is not the log level's but the deprecated old name of their ``--no-progress``
#: (:func:`add_progress_arguments`' ``deprecated_quiet``), so they take no ``-q`` after them.
_OWN_QUIET = ("evaluate", "train")
#: The destination of the ``-v`` count given after a subcommand (:meth:`_Parser.parse_known_args` adds it up).
_VERBOSE_AFTER = "verbose_after_command"
_VERBOSE_HELP = "log INFO lines on stderr; -vv: DEBUG lines too (default: warnings and errors only)"
_QUIET_HELP = "log errors only on stderr (no warnings, Python warnings included); progress bars are not affected"


def cli_log_level(verbose: int, quiet: bool = False) -> int:
    """The root log level of a command: WARNING, INFO with ``-v``, DEBUG with ``-vv`` (or more), ERROR with ``-q``.

    Shared by ``kl-retrievers`` and ``python -m kl_retrievers.training.cli``.

    Examples:
        >>> [logging.getLevelName(cli_log_level(v)) for v in (0, 1, 2, 3)]
        ['WARNING', 'INFO', 'DEBUG', 'DEBUG']
        >>> logging.getLevelName(cli_log_level(0, quiet=True))
        'ERROR'
    """
    if verbose:
        return logging.DEBUG if verbose >= 2 else logging.INFO
    return logging.ERROR if quiet else logging.WARNING


def add_global_arguments(parser: argparse.ArgumentParser, *, quiet: bool = False) -> None:
    """The flags ``kl-retrievers`` takes before its subcommand: ``--version``, ``--verbose`` / ``-v`` and, with
    ``quiet``, ``--quiet`` / ``-q``.

    ``--verbose`` counts (``args.verbose``: 0 by default, 1 for INFO, 2 or more for DEBUG); ``--quiet`` sets
    ``args.errors_only`` (ERROR only; the deprecated ``--quiet`` of ``evaluate`` and ``train``, the old name of their
    ``--no-progress``, sets ``args.deprecated_quiet``). Shared by ``kl-retrievers`` and
    ``python -m kl_retrievers.training.cli``, so both accept and list the same flags;
    :func:`add_verbose_to_commands` lets them come after the subcommand too.
    """
    from kl_retrievers._io import library_version

    parser.add_argument("--version", action="version", version=f"kl-retrievers {library_version()}")
    parser.add_argument("--verbose", "-v", action="count", default=0, help=_VERBOSE_HELP)
    if quiet:
        parser.add_argument("--quiet", "-q", dest="errors_only", action="store_true", help=_QUIET_HELP)


def add_verbose_to_commands(sub: Any, *, quiet: bool = False) -> None:
    """``--verbose`` (and ``-v`` where the command has no ``-v`` of its own) on every subcommand of ``sub``;
    with ``quiet``, ``--quiet`` / ``-q`` too, on each command with no ``--quiet`` or ``-q`` of its own
    (``evaluate`` and ``train`` have the deprecated old name of their ``--no-progress``).

    ``default=SUPPRESS``: a subcommand not given them keeps the values the main parser set
    (:func:`add_global_arguments`), so ``-v train`` and ``train -v`` both set ``args.verbose``; the count after the
    subcommand is added to the one before it (:meth:`_Parser.parse_known_args`, when the main parser is a
    :class:`_Parser`).
    """
    for command in sub.choices.values():
        options = command._option_string_actions
        if "--verbose" not in options:
            flags = ("--verbose", "-v") if "-v" not in options else ("--verbose",)
            command.add_argument(
                *flags, action="count", dest=_VERBOSE_AFTER, default=argparse.SUPPRESS, help=_VERBOSE_HELP
            )
        if quiet and "--quiet" not in options and "-q" not in options:
            command.add_argument(
                "--quiet", "-q", dest="errors_only", action="store_true", default=argparse.SUPPRESS, help=_QUIET_HELP
            )


def _print_to_stdout(parser: argparse.ArgumentParser, message: str) -> None:
    """Write ``--help`` / ``--version`` output to stdout, flushed; exit as a subcommand does when it cannot.

    Closed (``>&-``) or failing (``> /dev/full``): one line on stderr, exit status 2; a reader that went
    away (``--help | head -1``): exit status 141 in silence (``kl_retrievers.cli._run_command``'s rules).
    """
    stream = sys.stdout
    if stream is None:
        parser.exit(
            2,
            f"{parser.prog}: error: stdout is closed, so the output cannot be written; redirect it to a file (or to "
            f"{os.devnull} to discard it)\n",
        )
    try:
        stream.write(message)
        stream.flush()
    except BrokenPipeError:  # nothing but stdout is written here: its reader went away
        _silence_stdout(stream)
        sys.exit(141)
    except OSError as exc:
        _silence_stdout(stream)  # the interpreter's final flush would fail again ("Exception ignored ...")
        parser.exit(2, f"{parser.prog}: error: {_CheckedStdout(stream)._failed(exc)}\n")


def _silence_stdout(stream: Any) -> None:
    """Point stdout's file descriptor at the null device: the interpreter's final flush of what could not be
    written goes nowhere (the recipe of Python's signal docs for a closed pipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (a test's capture)
        pass


def _usage_hint(prog: str, message: str) -> str:
    """A hint for a usage error that a user of another subcommand is likely to make, else ``""``.

    ``encode --backend`` picks local or Ray shards, where the other subcommands' ``--backend`` is the model's.

    Examples:
        >>> message = "argument --backend: invalid choice: 'onnx' (choose from local, ray)"
        >>> print(_usage_hint("kl-retrievers encode", message))
        ; in encode, --backend picks local or Ray shards: for the model's backend pass --model-backend onnx
        >>> _usage_hint("kl-retrievers search", "argument -k: expected one argument")
        ''
    """
    found = re.match(r"argument --backend: invalid choice: '(torch|onnx)'", message)
    if prog.endswith(" encode") and found:
        return (
            f"; in encode, --backend picks local or Ray shards: for the model's backend pass --model-backend "
            f"{found.group(1)}"
        )
    return ""


def _one_line(text: str) -> str:
    """``text`` on one line (a multi-line message joined with ``; ``)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"


class _OutputError(OSError):
    """Writing the results to stdout failed (a full disk, a closed descriptor): the message says so."""


class _CheckedStdout:
    """``sys.stdout`` during a command: a failed write or flush (not a closed pipe) names stdout.

    A character the stream's encoding cannot write (an ``ascii`` stdout) is written escaped (``\\xe9``),
    as Python writes it to stderr, instead of ending the command.

    Without it, ``kl-retrievers search ... > /dev/full`` ends with a bare ``[Errno 28] No space left on
    device``, which reads as if an input or the store were at fault. ``BrokenPipeError`` passes as it is
    (the reader went away: :func:`main` stops quietly). Everything else is the wrapped stream's.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _failed(self, exc: OSError) -> _OutputError:
        return _OutputError(
            f"writing the output to stdout failed ({exc.strerror or exc}); check where stdout goes (a full disk, "
            "a closed or read-only descriptor)"
        )

    def write(self, text: str) -> int:
        try:
            try:
                return int(self._stream.write(text))
            except UnicodeEncodeError:  # a stdout that cannot show it (PYTHONIOENCODING=ascii): escaped, not fatal
                encoding = getattr(self._stream, "encoding", None) or "utf-8"
                return int(self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding)))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
