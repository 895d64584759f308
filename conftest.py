"""Repository-wide pytest hooks.

Docstring examples marked ``# doctest: +SKIP`` on every line need the real model or the shared
datasets; they are documentation, not tests, so they are not collected as (skipped) doctests.
Everything they show is exercised by the integration tests in tests/.
"""

from __future__ import annotations

import doctest

import pytest
from _pytest.doctest import DoctestItem

_documentation_only: list[str] = []


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
