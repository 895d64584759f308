"""The repository's own scripts and Makefile: what they overwrite, what ``--help`` does, what they run.

The scripts run on copies laid out as in the repository (``<root>/scripts/<script>`` beside
``<root>/kl_retrievers/pretrained/<model>`` or ``<root>/docs/cli.md``), so their default output is the copy,
never the checkout; the model builds get a tiny random backbone instead of the real one (no download).
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
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
    for helper in (REPO / "scripts").glob("_*.py"):  # what the scripts import (scripts/_common.py)
        shutil.copy(helper, root / "scripts" / helper.name)
    folder = root / "kl_retrievers" / "pretrained" / model
    shutil.copytree(PRETRAINED / model, folder)
    return root / "scripts" / script, folder


def _run_script(path: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``path`` as ``python <path> <args>`` does: its folder first on ``sys.path`` (for scripts/_common.py)."""
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.delitem(sys.modules, "_common", raising=False)  # the copy's, not another test's
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.modules.pop("_common", None)


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


@pytest.mark.parametrize(("script", "model"), BUILDS)
@pytest.mark.parametrize("broken", [False, True], ids=["link", "broken-link"])
def test_a_model_build_script_refuses_a_symbolic_link_in_the_folder_before_building(
    script: str,
    model: str,
    broken: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backbone_calls: list[tuple[Any, dict[str, Any]]],
) -> None:
    """A link would come back as a copy of its target (or fail as a raw FileNotFoundError when broken)."""
    path, folder = _layout(tmp_path / "repo", script, model)
    (tmp_path / "notes.txt").write_text("kept elsewhere\n")
    (folder / "notes.txt").symlink_to(tmp_path / ("missing.txt" if broken else "notes.txt"))
    before = _files(folder)
    with pytest.raises(SystemExit, match=r"symbolic links \['notes.txt'\]"):
        _run_script(path, monkeypatch=monkeypatch)
    assert backbone_calls == []
    assert _files(folder) == before
    assert (folder / "notes.txt").is_symlink()


@pytest.mark.parametrize(("script", "model"), BUILDS)
def test_a_model_rebuild_keeps_the_permission_bits_and_reads_only_the_files_it_keeps(
    script: str,
    model: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backbone_calls: list[tuple[Any, dict[str, Any]]],
) -> None:
    path, folder = _layout(tmp_path / "repo", script, model)
    (folder / "refit.sh").write_text("#!/bin/sh\necho refit\n")
    (folder / "refit.sh").chmod(0o750)
    (folder / "README.md").chmod(0o604)
    kept = {p.name for p in folder.iterdir()} - {
        "config.json",
        "delta.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    read: list[str] = []
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.parent == folder:
            read.append(self.name)
        return real_read_bytes(self)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_bytes", read_bytes)
        _run_script(path, monkeypatch=monkeypatch)
    assert len(backbone_calls) == 1
    assert sorted(read) == sorted(kept)  # not the weights, config or tokenizer it rewrites
    assert (folder / "refit.sh").stat().st_mode & 0o777 == 0o750
    assert (folder / "README.md").stat().st_mode & 0o777 == 0o604
    assert GaussianEncoder.from_pretrained(folder).config.dim == 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("file", r"--out .*exists and is not a folder"),
        ("folder", r"--out .*is not a saved model and is not empty \(mine\.txt\)"),
        ("link", r"--out .*is a symbolic link"),
    ],
)
def test_a_model_build_script_refuses_an_out_it_cannot_replace_before_building(
    make: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backbone_calls: list[tuple[Any, dict[str, Any]]],
) -> None:
    path, folder = _layout(tmp_path / "repo", *BUILDS[1])
    shipped = _files(folder)
    out = tmp_path / "out"
    if make == "file":
        out.write_text("mine\n")
    elif make == "folder":
        out.mkdir()
        (out / "mine.txt").write_text("mine\n")
    else:
        out.symlink_to(folder)
    with pytest.raises(SystemExit, match=message) as info:
        _run_script(path, "--out", str(out), monkeypatch=monkeypatch)
    assert "overwrite=True" not in str(info.value)  # the library's option, not the script's
    assert "--out takes a saved model folder" in str(info.value)
    assert backbone_calls == []
    if make == "folder":
        assert _files(out) == {"mine.txt": b"mine\n"}
    assert _files(folder) == shipped


def test_a_model_build_script_refuses_an_empty_out(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    backbone_calls: list[tuple[Any, dict[str, Any]]],
) -> None:
    path, folder = _layout(tmp_path / "repo", *BUILDS[0])
    shipped = _files(folder)
    monkeypatch.chdir(tmp_path)  # '' would be the working folder
    with pytest.raises(SystemExit) as info:
        _run_script(path, "--out", "", monkeypatch=monkeypatch)
    assert info.value.code == 2
    assert "argument --out: '' is an empty path" in capsys.readouterr().err
    assert backbone_calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "tiny-backbone"]
    assert _files(folder) == shipped


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


def test_the_notebook_generator_writes_the_committed_cells(tmp_path: Path, build_notebooks: ModuleType) -> None:
    """Regenerating (without executing) gives every committed notebook's cells, outputs aside."""
    build_notebooks.build(False)  # into tmp_path

    def cells(path: Path) -> list[tuple[str, str]]:
        nb = json.loads(path.read_text(encoding="utf-8"))
        return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]

    committed = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == committed
    for name in committed:
        assert cells(tmp_path / name) == cells(REPO / "notebooks" / name), name


def _notebook_layout(root: Path) -> tuple[Path, Path]:
    """A copy of build_notebooks.py and of the committed notebooks, laid out as in the repository."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "build_notebooks.py", root / "scripts")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    return root / "scripts" / "build_notebooks.py", root / "notebooks"


def _outputs(path: Path) -> list[list[Any]]:
    return [c.get("outputs", []) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]


def test_the_notebook_generator_keeps_the_committed_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented plain command rewrites the committed notebooks as they are, outputs included."""
    path, folder = _notebook_layout(tmp_path / "repo")
    committed = {p.name: p.read_bytes() for p in folder.glob("*.ipynb")}
    assert sum(1 for name in committed for out in _outputs(folder / name) if out) >= 20
    with pytest.raises(SystemExit) as info:
        _run_script(path, "--help", monkeypatch=monkeypatch)
    assert info.value.code == 0
    assert "--out" in capsys.readouterr().out
    _run_script(path, monkeypatch=monkeypatch)  # python scripts/build_notebooks.py
    assert {p.name: p.read_bytes() for p in folder.glob("*.ipynb")} == committed
    _run_script(path, "--out", str(tmp_path / "elsewhere"), monkeypatch=monkeypatch)
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == sorted(committed)
    assert all(not out for p in (tmp_path / "elsewhere").iterdir() for out in _outputs(p))  # nothing to keep there
    assert {p.name: p.read_bytes() for p in folder.glob("*.ipynb")} == committed


def test_the_notebook_generator_drops_only_the_outputs_of_changed_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build_notebooks: ModuleType
) -> None:
    _, folder = _notebook_layout(tmp_path / "repo")
    monkeypatch.setattr(build_notebooks, "OUT", folder)
    name = "01_quick_start.ipynb"
    cells = list(build_notebooks.NOTEBOOKS[name])
    changed = next(i for i, (kind, src) in enumerate(cells) if kind == "code" and "np.round(exact, 4)" in src)
    cells[changed] = ("code", cells[changed][1] + "\nprint('edited')")
    cells.insert(1, ("md", "An added note."))
    monkeypatch.setitem(build_notebooks.NOTEBOOKS, name, cells)
    before = _outputs(folder / name)
    assert before[changed]
    build_notebooks.build(False, [name])
    after = _outputs(folder / name)
    assert after[changed + 1] == []  # edited: no output until --execute
    assert after[1] == []
    assert after[:1] + after[2 : changed + 1] + after[changed + 2 :] == before[:changed] + before[changed + 1 :]


def test_notebook_01_note_quotes_the_scores_its_cells_printed() -> None:
    """The note on ONNX batch dependence says what the cells printed: the bees query scores the same in both."""
    nb = json.loads((REPO / "notebooks" / "01_quick_start.ipynb").read_text(encoding="utf-8"))
    cells = [
        ("".join(c["source"]), "".join("".join(o.get("text", "")) for o in c.get("outputs", []))) for c in nb["cells"]
    ]
    matrix = next(out for src, out in cells if "print(np.round(exact, 4))" in src)
    searched = next(out for src, out in cells if "store.search('how do bees share information?', k=2)" in src)
    # the first query (bees) against the first document (bees): the matrix's first entry
    in_matrix = re.match(r"\[\[\s*(-?\d+\.\d*)\s", matrix)
    in_store = re.match(r"\s*(-?\d+\.\d{4})\s+bees\s", searched)
    assert in_matrix and in_store, (matrix, searched)
    # queries are encoded one at a time on int8 graphs (8ecd167): the note says the store's score is the
    # matrix's, and the cells printed the same score
    note = next(src for src, _ in cells if "The bees query scores" in src)
    assert "The bees query scores here what it scored in the matrix above" in note, note
    assert float(in_store.group(1)) == round(float(in_matrix.group(1)), 4)


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
    assert "kl_retrievers" in paths  # the doctests


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


def test_notebook_05_reads_the_per_query_files_its_newest_qpp_lines_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build_notebooks: ModuleType
) -> None:
    """It loaded the fixed ``runs/qpp/<model>.scifact.test.json``, which benchmarks/qpp.py runs no longer write."""
    runs = tmp_path / "repo" / "runs" / "qpp"
    runs.mkdir(parents=True)
    names = ["uncertainty", "max_score", "nqc", "gap12", "wig", "combined"]
    predictors = {"predictors": {n: {"tau": 0.125} for n in names}}
    lines = []
    for model, label in (
        ("minilm-gauss-soup", "minilm-gauss-soup"),
        ("minilm-gauss-soup+combined", "minilm-gauss-soup_combined"),
    ):
        for coll in ("scifact", "nfcorpus-preprocessed", "cranfield", "trec-dl21-passage-pooled"):
            for when, value in (("old", 0.0), ("new", 1.0)):  # the older line names the fixed file
                rel = (
                    f"runs/qpp/{label}.{coll}.test.json" if when == "old" else f"runs/qpp/{label}.{coll}.test.new.json"
                )
                row = {"ndcg@10": value, "uncertainty": value, "qpp.max_score": value, "qpp.combined": value}
                per_query = {f"q{i}": dict(row) for i in range(5)}
                (tmp_path / "repo" / rel).write_text(json.dumps({"meta": {}, "per_query": per_query}), encoding="utf-8")
                lines.append(
                    {"model": model, "collection": coll, "split": "test", "qpp": predictors, "per_query_file": rel}
                )
    (runs / "qpp.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    code = [source for kind, source in build_notebooks.NOTEBOOKS["05_uncertainty.ipynb"] if kind == "code"]
    monkeypatch.chdir(tmp_path / "repo")  # as from the repository root (no ../runs/qpp)
    namespace: dict[str, Any] = {}
    for source in code[:4]:  # the logs, the mean taus, the Pearson r, the quintiles of SciFact
        exec(source, namespace)
    assert {q: m["ndcg@10"] for q, m in namespace["pq"].items()} == {f"q{i}": 1.0 for i in range(5)}
    assert {q: m["qpp.combined"] for q, m in namespace["comb"].items()} == {f"q{i}": 1.0 for i in range(5)}
