"""``python -m kl_retrievers.onnx_cli``: export encoders to ONNX and regenerate bundled graphs.

Kept apart from :mod:`kl_retrievers.onnx` so that the runtime module imports neither the torch
encoder nor the bundled-model registry (one-way imports: pretrained -> onnx, never back).

Examples:
    >>> from kl_retrievers.onnx_cli import main
    >>> main(["bundle", "--check"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from kl_retrievers.onnx import (
    MODEL_FILE,
    Quantization,
    _check_export_target,
    _export_meta,
    _read_meta,
    _sha256,
    export_onnx,
    is_onnx_folder,
)

if TYPE_CHECKING:
    from kl_retrievers.encoder import GaussianEncoder

__all__ = ["main"]


# ---------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kl_retrievers.onnx_cli``: export an encoder, or (re)generate a bundled model's shipped graph.

    - ``export SOURCE OUT [--quantize int8|float32] [--overwrite]``: a bundled model name, saved encoder folder
      or hub id to an ONNX folder. ``OUT`` may be new, empty or an earlier ONNX export; other content is
      refused unless ``--overwrite`` (the folder is replaced as a whole), and ``SOURCE``'s own folder always.
    - ``bundle [NAME ...] [--check]``: export each bundled model (default: the default model) into its
      ``onnx-int8/`` folder inside the package, from its bundled delta; ``--check`` exports into a
      temporary folder instead and exits 1 when the graph's SHA-256 differs from the shipped one.

    Logs at WARNING level; ``-v`` / ``--verbose`` shows the INFO messages (ONNX Runtime's optimiser and
    quantiser among them).

    Returns:
        The exit status.

    Examples:
        >>> main(["bundle", "--check"])  # doctest: +SKIP
        0
    """
    from kl_retrievers.pretrained import DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="python -m kl_retrievers.onnx_cli", description="Export Gaussian encoders to ONNX."
    )
    verbose_help = "log at INFO level (ONNX Runtime's optimiser and quantiser)"
    parser.add_argument("--verbose", "-v", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)
    p_export = sub.add_parser("export", help="export an encoder to an ONNX folder")
    p_export.add_argument("source", help="bundled model name, saved encoder folder or hub id")
    p_export.add_argument("out", type=Path, help="target folder (written atomically)")
    p_export.add_argument("--quantize", choices=[*get_args(Quantization), "float32"], default="int8")
    p_export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT even when it holds other files than an earlier ONNX export (they are deleted)",
    )
    p_bundle = sub.add_parser("bundle", help="export bundled models into their shipped onnx-int8/ folder")
    p_bundle.add_argument("names", nargs="*", default=[DEFAULT_MODEL])
    p_bundle.add_argument("--check", action="store_true", help="compare with the shipped graph; write nothing")
    for command in (p_export, p_bundle):  # -v after the subcommand too, as kl-retrievers takes it
        command.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    args = parser.parse_args(argv)
    # kl-retrievers' log lines for this command only: removed again when it ends (the caller's process keeps its
    # own logging; a program that configured logging keeps its configuration)
    from kl_retrievers.cli import _cli_logging

    with _cli_logging(args.verbose):
        try:
            return _run(args)
        except (ValueError, OSError, ImportError) as exc:  # a bad name or folder: one line, not a traceback
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2


def _run(args: argparse.Namespace) -> int:
    """Do what the parsed ``export`` or ``bundle`` command asks; returns the exit status."""
    from kl_retrievers.pretrained import BUNDLED_ONNX

    if args.command == "export":
        folder = _source_folder(args.source)
        _check_export_target(args.out, source=folder, overwrite=args.overwrite)  # before the model loads
        encoder, digest = _torch_source(args.source)
        quantize: Quantization | None = None if args.quantize == "float32" else args.quantize
        out = export_onnx(encoder, args.out, quantize=quantize, source_sha256=digest, overwrite=args.overwrite)
        print(f"{out}: {MODEL_FILE} SHA-256 {_sha256(out / MODEL_FILE)}")
        return 0
    import tempfile

    status = 0
    for name in args.names:
        encoder, digest = _torch_source(name)
        shipped = Path(encoder.name_or_path) / BUNDLED_ONNX
        encoder.name_or_path = f"kl_retrievers:{name}"  # recorded in config.json: no machine path
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / BUNDLED_ONNX if args.check else shipped
            export_onnx(encoder, target, quantize="int8", source_sha256=digest)
            made = _sha256(target / MODEL_FILE)
            size = (target / MODEL_FILE).stat().st_size / 1e6
            if not args.check:
                print(f"{shipped}: {MODEL_FILE} {size:.1f} MB, SHA-256 {made}")
                continue
            meta = _read_meta(shipped) if is_onnx_folder(shipped) else {}
            recorded = meta.get("onnx", {}).get("model_sha256")
            same = recorded == made
            verdict = "same" if same else "DIFFERS"
            print(f"{name}: regenerated {MODEL_FILE} SHA-256 {made}; shipped {recorded}: {verdict}")
            status |= 0 if same else 1
    return status


def _source_folder(name_or_path: str) -> Path:
    """The folder of the saved torch encoder a bundled name, saved folder or hub id names.

    Raises:
        ValueError: The folder is an ONNX export (there is no torch model in it to export).
    """
    from kl_retrievers._io import user_path
    from kl_retrievers.hub import ModelNotFoundError, resolve_model_path
    from kl_retrievers.pretrained import (
        _bundled_name,
        _did_you_mean,
        _strip_bundled_name,
        bundled_model_path,
        bundled_models,
    )

    name_or_path = _strip_bundled_name(name_or_path) or name_or_path  # " minilm-gauss-soup": as load_model reads it
    bundled = _bundled_name(name_or_path)  # also kl_retrievers:NAME; an unknown such name lists the bundled ones
    try:
        folder = bundled_model_path(bundled) if bundled is not None else resolve_model_path(name_or_path)
    except ModelNotFoundError as exc:  # as load_model (so kl-retrievers) says it: the closest, every bundled name
        if bundled is not None or user_path(name_or_path).exists():
            raise
        hint = _did_you_mean(name_or_path).strip()
        raise ModelNotFoundError(
            f"{exc}{' ' + hint[0].upper() + hint[1:] if hint else ''} Bundled models (load them by name): "
            f"{', '.join(bundled_models())}."
        ) from None
    meta = _export_meta(folder)
    if meta is not None:
        source = meta.get("source")
        came_from = source.get("name_or_path") if isinstance(source, dict) else None
        hint = f" ({came_from!r}, says its config.json)" if isinstance(came_from, str) and came_from else ""
        raise ValueError(
            f"{folder} is already an ONNX export (its config.json says backend 'onnx'); export from the torch "
            f"model it came from{hint} instead"
        )
    return folder


def _torch_source(name_or_path: str) -> tuple[GaussianEncoder, str | None]:
    """The torch encoder a bundled name, saved folder or hub id names, and the SHA-256 of its files."""
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.pretrained import source_sha256

    folder = _source_folder(name_or_path)
    return GaussianEncoder.from_pretrained(folder, device="cpu"), source_sha256(folder)


if __name__ == "__main__":
    raise SystemExit(main())
