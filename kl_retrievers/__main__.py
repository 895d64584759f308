"""``python -m kl_retrievers``: the ``kl-retrievers`` command line (:func:`kl_retrievers.cli.main`)."""

from __future__ import annotations

import sys


def run() -> int:
    """Import the command line and run it: Ctrl-C while its modules load exits with 130, without a traceback.

    :func:`kl_retrievers.cli.main` handles Ctrl-C from there on (and SIGTERM, with 143).
    """
    try:
        from kl_retrievers.cli import main
    except KeyboardInterrupt:
        print("kl-retrievers: error: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":  # not when imported (pytest's doctest collection, the import-graph test)
    sys.exit(run())
