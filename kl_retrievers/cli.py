"""The ``kl-retrievers`` command line.

Subcommands: ``demo`` (the main job), ``encode``; the KL store adds ``index`` and
``search``, evaluation adds ``evaluate``. Every subcommand has ``--help``.

Example:
    >>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _row_text(row: dict[str, Any], field: str, where: str) -> str:
    if field == "auto":
        if "text" not in row:
            raise ValueError(f"{where}: no 'text' field (fields: {sorted(row)}); choose one with --field")
        title = str(row.get("title") or "").strip()
        text = str(row["text"]).strip()
        return f"{title} {text}".strip() if title else text
    if field not in row:
        raise ValueError(f"{where}: no {field!r} field (fields: {sorted(row)})")
    return str(row[field])


def read_texts(path: Path, field: str = "auto") -> tuple[list[str], list[str]]:
    """Read ``(ids, texts)`` from a ``.jsonl`` file (BEIR corpus or any text field) or a text file.

    A text file gives one text per non-empty line, with ids ``"0"``, ``"1"``, ...
    """
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path)
        ids = [str(r.get("_id", r.get("id", i))) for i, r in enumerate(rows)]
        texts = [_row_text(r, field, f"{path}, row {i + 1}") for i, r in enumerate(rows)]
        return ids, texts
    lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line.strip()]
    return [str(i) for i in range(len(texts))], texts


def _load_encoder(model: str | None, device: str | None = None) -> Any:
    from kl_retrievers import GaussianEncoder, load_default_model
    from kl_retrievers.pretrained import bundled_models

    if model is None:
        return load_default_model(device=device)
    if model in bundled_models():
        return load_default_model(model, device=device)
    return GaussianEncoder.from_pretrained(model, device=device)


# ---------------------------------------------------------------- encode
def _add_encode(sub: Any) -> None:
    p = sub.add_parser(
        "encode",
        help="encode texts into Gaussians (.npy folder or .safetensors)",
        description="Encode texts into diagonal Gaussians and save them without pickle.",
    )
    p.add_argument("texts", nargs="*", help="texts to encode (or use --input)")
    p.add_argument(
        "--input", "-i", type=Path, help="a .jsonl file (BEIR corpus or --field) or a text file, one per line"
    )
    p.add_argument("--field", default="auto", help="JSONL field with the text (default: title + text)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output: NAME.safetensors, or a folder of .npy files")
    p.add_argument("--kind", choices=("document", "query"), default="document", help="encode as documents or queries")
    p.add_argument("--model", "-m", help="a saved GaussianEncoder (path or hub id) or a bundled model name")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="token budget (default: the model's)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    from kl_retrievers._io import save_gaussians

    if args.input is not None and args.texts:
        raise SystemExit("give texts or --input, not both")
    if args.input is not None:
        ids, texts = read_texts(args.input, args.field)
    elif args.texts:
        texts = list(args.texts)
        ids = [str(i) for i in range(len(texts))]
    else:
        raise SystemExit("nothing to encode: give texts or --input FILE")
    encoder = _load_encoder(args.model, args.device)
    encode = encoder.encode_documents if args.kind == "document" else encoder.encode_queries
    g = encode(texts, batch_size=args.batch_size, max_length=args.max_length, show_progress_bar=not args.no_progress)
    out = save_gaussians(args.out, g, ids=ids, metadata={"model": encoder.name_or_path, "kind": args.kind})
    print(f"wrote {len(g)} Gaussians of dimension {g.dim} to {out}")
    return 0


# ---------------------------------------------------------------- demo
def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="index the bundled demo corpus and answer a few queries",
        description="Index the small bundled corpus with the default model, answer a few queries and print the "
        "top results with their -KL scores (higher is better) and each query's uncertainty.",
    )
    p.add_argument("queries", nargs="*", help="your own queries (default: the bundled ones)")
    p.add_argument("--model", "-m", help="a saved GaussianEncoder or a bundled model name (default: the default)")
    p.add_argument("-k", type=int, default=3, help="results per query (default 3)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import time

    from kl_retrievers.gaussian import neg_kl_matrix

    if args.k < 1:
        raise SystemExit(f"-k must be >= 1; got {args.k}")
    start = time.perf_counter()
    corpus = _read_jsonl(DATA_DIR / "demo_corpus.jsonl")
    queries = list(args.queries) or [r["text"] for r in _read_jsonl(DATA_DIR / "demo_queries.jsonl")]
    encoder = _load_encoder(args.model)
    print(f"model: {encoder!r}")
    texts = [f"{r['title']} {r['text']}" for r in corpus]
    docs = encoder.encode_documents(texts, show_progress_bar=False)
    q = encoder.encode_queries(queries, show_progress_bar=False)
    print(f"indexed {len(corpus)} documents (k={docs.dim}); score = -KL(query || document), higher is better\n")
    scores = neg_kl_matrix(q.astype("float64"), docs.astype("float64"))
    uncertainty = q.uncertainty()
    for i, query in enumerate(queries):
        print(f"query: {query!r}  (uncertainty: mean log-variance {uncertainty[i]:+.3f})")
        top = scores[i].argsort()[::-1][: args.k]
        for rank, j in enumerate(top, 1):
            row = corpus[j]
            print(f"  {rank}. -KL={scores[i, j]:9.4f}  [{row['_id']}] {row['title']}: {row['text'][:70]}")
        print()
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


# ---------------------------------------------------------------- main
_REGISTRARS: list[Callable[[Any], None]] = [_add_demo, _add_encode]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from kl_retrievers._io import library_version

    parser = argparse.ArgumentParser(
        prog="kl-retrievers",
        description="Dense retrieval with Gaussian representations scored by -KL divergence (higher is better).",
    )
    parser.add_argument("--version", action="version", version=f"kl-retrievers {library_version()}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at INFO level to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"kl-retrievers {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
