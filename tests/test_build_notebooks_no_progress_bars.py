"""``scripts/build_notebooks.py --execute`` runs each kernel with ``TQDM_DISABLE=1``.

A notebook kernel counts as interactive, so the package's progress bars (``show_progress_bar=None``) show there
by default; the executed notebooks that the docs site shows should not carry them in their outputs.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest


def test_execute_gives_the_kernel_tqdm_disable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build_notebooks: types.ModuleType
) -> None:
    calls: list[dict[str, Any]] = []

    class FakeClient:  # no kernel: only what execute is given
        def __init__(self, nb: Any, **kwargs: Any) -> None:
            self.nb = nb

        def execute(self, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return self.nb

    monkeypatch.setitem(sys.modules, "nbclient", types.SimpleNamespace(NotebookClient=FakeClient))
    monkeypatch.setenv("KL_EXAMPLE_KEPT", "yes")
    name = sorted(build_notebooks.NOTEBOOKS)[0]
    build_notebooks.build(True, [name], tmp_path)
    assert len(calls) == 1
    env = calls[0]["env"]
    assert env["TQDM_DISABLE"] == "1"
    assert env["KL_EXAMPLE_KEPT"] == "yes"  # the rest of the environment is kept (KL_RETRIEVERS_DATA...)
