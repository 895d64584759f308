"""The repository's own scripts and Makefile: what they overwrite, what ``--help`` does, what they run.

The scripts run on copies laid out as in the repository (``<root>/scripts/<script>`` beside
``<root>/kl_retrievers/pretrained/<model>`` or ``<root>/docs/cli.md``), so their default output is the copy,
never the checkout; the model builds get a tiny random backbone instead of the real one (no download).
"""

from __future__ import annotations

import importlib.util
import json
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "kl_retrievers" / "pretrained"

#: The model-building scripts and the bundled folder each rebuilds.
BUILDS = [("build_bge_unit_variance.py", "bge-small-unit-variance"), ("build_placeholder.py", "minilm-unit-variance")]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _layout(root: Path, script: str, model: str) -> tuple[Path, Path]:
    """A copy of ``script`` and of the shipped model folder, laid out as in the repository."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / script, root / "scripts" / script)
    folder = root / "kl_retrievers" / "pretrained" / model
    shutil.copytree(PRETRAINED / model, folder)
    return root / "scripts" / script, folder


def _run_script(path: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    runpy.run_path(str(path), run_name="__main__")


@pytest.fixture
def backbone_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """``GaussianEncoder.from_backbone`` builds on a tiny random backbone folder; returns the calls made."""
    base = tmp_path / "tiny-backbone"
    enc = make_tiny_encoder()
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    real = GaussianEncoder.from_backbone
    calls: list[tuple[Any, dict[str, Any]]] = []

    def from_backbone(name: Any, **kw: Any) -> GaussianEncoder:
        calls.append((name, kw))
        return real(base, dim=8, max_length=64, query_max_length=32)

    monkeypatch.setattr(GaussianEncoder, "from_backbone", from_backbone)
    return calls


@pytest.mark.parametrize(("script", "model"), BUILDS)
def test_a_model_build_script_answers_help_and_writes_nothing(
    script: str,
    model: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    backbone_calls: list[tuple[Any, dict[str, Any]]],
) -> None:
    path, folder = _layout(tmp_path / "repo", script, model)
    before = _files(folder)
    with pytest.raises(SystemExit) as info:
        _run_script(path, "--help", monkeypatch=monkeypatch)
    assert info.value.code == 0
    assert "--out" in capsys.readouterr().out
    assert backbone_calls == []  # no model was built
    assert _files(folder) == before


@pytest.mark.parametrize(("script", "model"), BUILDS)
def test_a_model_rebuild_keeps_every_file_it_does_not_write(
    script: str,
    model: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backbone_calls: list[tuple[Any, dict[str, Any]]],
) -> None:
    path, folder = _layout(tmp_path / "repo", script, model)
    (folder / "notes.txt").write_bytes(b"written by hand \xe2\x9c\x93\n")
    before = _files(folder)
    _run_script(path, monkeypatch=monkeypatch)  # the model card's command: no arguments, the shipped folder
    assert len(backbone_calls) == 1
    after = _files(folder)
    own = {"config.json", "delta.safetensors", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    siblings = {name: data for name, data in before.items() if name not in own}
    assert {"README.md", "notes.txt"} <= set(siblings)
    if model == "bge-small-unit-variance":  # its calibrations, fitted on this model
        assert {"confidence_calibration.json", "hybrid_adaptive.json", "hybrid_confidence_calibration.json"} <= set(
            siblings
        )
    assert {name: after.get(name) for name in siblings} == siblings
    assert after["config.json"] != before["config.json"]  # the model itself was rewritten ...
    assert GaussianEncoder.from_pretrained(folder).config.dim == 8  # ... and loads


def test_a_model_build_script_writes_to_out_and_leaves_the_shipped_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backbone_calls: list[tuple[Any, dict[str, Any]]]
) -> None:
    path, folder = _layout(tmp_path / "repo", *BUILDS[0])
    before = _files(folder)
    _run_script(path, "--out", str(tmp_path / "elsewhere"), monkeypatch=monkeypatch)
    assert GaussianEncoder.from_pretrained(tmp_path / "elsewhere").config.dim == 8
    assert backbone_calls[0][0] == "bge-small-en"
    assert _files(folder) == before


def test_a_model_build_script_refuses_a_folder_it_would_delete_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backbone_calls: list[tuple[Any, dict[str, Any]]]
) -> None:
    path, folder = _layout(tmp_path / "repo", *BUILDS[1])
    (folder / "runs").mkdir()
    before = _files(folder)
    with pytest.raises(SystemExit, match=r"\['runs'\].*move them first"):
        _run_script(path, monkeypatch=monkeypatch)
    assert backbone_calls == []
    assert _files(folder) == before
    assert (folder / "runs").is_dir()


def test_gen_cli_docs_answers_help_without_writing_and_writes_without_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # render() sets it; restored after the test
    (tmp_path / "scripts").mkdir()
    (tmp_path / "docs").mkdir()
    path = tmp_path / "scripts" / "gen_cli_docs.py"
    shutil.copy(REPO / "scripts" / "gen_cli_docs.py", path)
    page = tmp_path / "docs" / "cli.md"
    page.write_text("a page written by hand\n")
    with pytest.raises(SystemExit) as info:
        _run_script(path, "--help", monkeypatch=monkeypatch)
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert page.read_text() == "a page written by hand\n"
    _run_script(path, monkeypatch=monkeypatch)  # the documented command: no arguments, docs/cli.md
    rendered = (REPO / "docs" / "cli.md").read_text()
    assert page.read_text() == rendered
    _run_script(path, "--out", str(tmp_path / "other.md"), monkeypatch=monkeypatch)
    assert (tmp_path / "other.md").read_text() == rendered


def test_the_notebook_generator_writes_the_committed_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regenerating (without executing) gives every committed notebook's cells, outputs aside."""
    spec = importlib.util.spec_from_file_location("build_notebooks", REPO / "scripts" / "build_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    module.build(False)

    def cells(path: Path) -> list[tuple[str, str]]:
        nb = json.loads(path.read_text(encoding="utf-8"))
        return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]

    committed = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == committed
    for name in committed:
        assert cells(tmp_path / name) == cells(REPO / "notebooks" / name), name


def _make(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_make_test_fast_leaves_out_the_notebooks() -> None:
    """pyproject's testpaths include notebooks/ (run by nbmake): test-fast names its paths instead."""
    lines = [line for line in _make("-n", "test-fast").splitlines() if " -m pytest " in line]
    assert len(lines) == 1, lines
    args = shlex.split(lines[0].split(" -m pytest ", 1)[1])
    paths = [a for a in args if not a.startswith("-") and a != "not integration"]
    assert paths, f"no paths: pytest would run pyproject's testpaths, notebooks included: {args}"
    assert all((REPO / p).is_dir() and "notebooks" not in Path(p).parts for p in paths), paths
    assert "tests" in paths


def test_make_help_lists_every_target_with_one_line() -> None:
    phony = {
        t
        for line in (REPO / "Makefile").read_text().splitlines()
        if line.startswith(".PHONY:")
        for t in line.split(":", 1)[1].split()
    }
    listed = {}
    for line in _make("-s", "help").splitlines():
        target, _, note = line.strip().partition(" ")
        listed[target] = note.strip()
    assert phony <= set(listed), phony - set(listed)
    assert all(listed[t] for t in phony), listed
    for target in ("lint", "typecheck", "check", "docs", "test-fast", "bench-encode", "install", "clean"):
        assert f"`make {target}`" in (REPO / "docs" / "getting-started.md").read_text(), target
