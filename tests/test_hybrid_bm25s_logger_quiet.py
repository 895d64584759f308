"""A hybrid store quiets bm25s' logger, as ``bm25_run`` and the training data do.

Importing bm25s (for its English stop words) sets its logger to ``DEBUG``; the hybrid path left it there. Run in a
fresh interpreter: bm25s is imported once per process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("bm25s")


def _level_after(setup: str) -> str:
    code = (
        "import logging\n"
        f"{setup}\n"
        "from kl_retrievers.hybrid import KLHybridStore\n"
        "KLHybridStore(fusion='rrf', stemmer=None)\n"
        "print(logging.getLevelName(logging.getLogger('bm25s').level))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_a_hybrid_store_sets_bm25s_logger_to_warning() -> None:
    assert _level_after("") == "WARNING"


def test_a_level_the_user_set_is_kept() -> None:
    assert _level_after("import bm25s; logging.getLogger('bm25s').setLevel(logging.INFO)") == "INFO"
