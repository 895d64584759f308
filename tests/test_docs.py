"""Every code block in README.md and docs/ runs (python) or parses (kl-retrievers command lines)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from kl_retrievers.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == lang:
                line = text.count("\n", 0, match.start()) + 1
                found.append((page.relative_to(REPO).as_posix(), line, match.group(2)))
    return found


PYTHON = blocks("python")
SHELL = blocks("bash")


def test_there_are_blocks_to_check() -> None:
    assert len(PYTHON) >= 3 and len(SHELL) >= 3


PAGES_WITH_PYTHON = sorted({page for page, _, _ in PYTHON})


@pytest.mark.integration
@pytest.mark.parametrize("page", PAGES_WITH_PYTHON)
def test_python_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's python blocks run in order in one namespace, like a reader following the page."""
    monkeypatch.chdir(tmp_path)  # anything a block saves lands under tmp_path
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block_page, line, code in PYTHON:
        if block_page == page:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)


@pytest.mark.parametrize(("page", "line", "code"), SHELL, ids=[f"{p}:{n}" for p, n, _ in SHELL])
def test_command_lines_parse(page: str, line: int, code: str) -> None:
    parser = build_parser()
    for raw in code.splitlines():
        command = raw.split("  #")[0].strip()
        if not command.startswith("kl-retrievers "):
            continue
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as exc:  # argparse exits 2 on an unknown option or a missing argument
            if exc.code == 0:  # --help / --version
                continue
            pytest.fail(f"{page}:{line}: `{command}` does not parse (exit {exc.code})")


def test_cli_reference_is_current() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gen_cli_docs import render
    finally:
        sys.path.pop(0)
    assert (REPO / "docs" / "cli.md").read_text() == render(), "run: python scripts/gen_cli_docs.py"
