"""Repository-wide pytest hooks.

Docstring examples marked ``# doctest: +SKIP`` on every line need the real model or the shared
datasets; they are documentation, not tests, so they are not collected as (skipped) doctests.
Everything they show is exercised by the integration tests in tests/.
"""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

_documentation_only: list[str] = []

# Pages and notebooks get public collections with kl_retrievers.datasets.fetch_beir, which uses a local
# copy under $KL_RETRIEVERS_DATA before any download: here, the shared datasets beside the checkout
# (inherited by the notebooks' kernels too), so the suite runs offline.
_SHARED_DATASETS = Path(__file__).resolve().parent.parent / "shared" / "datasets"
if _SHARED_DATASETS.is_dir():
    os.environ.setdefault("KL_RETRIEVERS_DATA", str(_SHARED_DATASETS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep = []
    for item in items:
        examples = item.dtest.examples if isinstance(item, DoctestItem) and item.dtest is not None else []
        if examples and all(ex.options.get(doctest.SKIP, False) for ex in examples):
            _documentation_only.append(item.nodeid)
            continue
        keep.append(item)
    items[:] = keep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _documentation_only:
        terminalreporter.write_line(
            f"{len(_documentation_only)} docstring examples need the real model or shared data and are documentation "
            "only (not collected); the integration tests cover what they show."
        )
