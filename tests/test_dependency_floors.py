"""The dependency floors pyproject.toml declares, and the errors and fallbacks for what older releases lack.

Each floor below is the oldest release that has what the code uses (the table gives the reason; an install
with every floor is ``make lowest-deps-check``, which needs a package index and is not run here). Also: a
stored ISO datetime with a trailing ``Z`` reads as UTC on Python 3.10 too, the training names and the int8
export name what to install, the ONNX export passes ``dynamo=False`` only to a torch that takes it, and the
sdist carries the files the tests that run from it read.
"""

from __future__ import annotations

import datetime
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from kl_retrievers import KLStore, filters, onnx
from kl_retrievers.gaussian import Gaussians

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

#: (package, sections of pyproject declaring it, lowest acceptable floor, why).
FLOORS: list[tuple[str, tuple[str, ...], str, str]] = [
    ("numpy", ("core",), "1.24.2", "the lowest numpy make lowest-deps-check installs (the floors cap numpy < 2)"),
    ("onnxruntime", ("core",), "1.18.1", "1.17.x / 1.18.0 are built for numpy 1, uncapped: fail beside numpy 2"),
    ("faiss-cpu", ("core",), "1.8.0.post1", "1.8.0 is built for numpy 1 and does not cap it: fails beside numpy 2"),
    ("tqdm", ("core",), "4.66.1", "llama-index-core 0.14's floor: the [llama-index] floors install together"),
    ("transformers", ("torch",), "4.46", "encoder.py: resize_token_embeddings(mean_resizing=False)"),
    ("onnx", ("torch", "onnx"), "1.19", "first onnx to require ml_dtypes, which onnxruntime.quantization imports"),
    ("bm25s", ("hybrid", "eval", "train"), "0.2.7.post1", "hybrid.py: BM25.index(create_empty_token=...)"),
    ("PyStemmer", ("hybrid", "eval"), "2.2.0.3", "2.2.0 does not build; 2.2.0.1 downloads libstemmer at build"),
    # onnx._exporter_options passes dynamo=False (torch 2.5+) only where it is taken: 2.3 and 2.4 export too
    ("torch", ("torch",), "2.3", "2.1 / 2.2 are built for numpy 1: from_numpy / .numpy() fail beside numpy 2"),
]


def _project() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        project: dict[str, Any] = tomllib.load(handle)["project"]
    return project


def _declared(section: str) -> dict[str, Requirement]:
    project = _project()
    lines = project["dependencies"] if section == "core" else project["optional-dependencies"][section]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


def _floor(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    assert len(floors) == 1, f"{requirement}: one '>=' or '==' bound expected"
    return floors[0]


@pytest.mark.parametrize(("package", "sections", "lowest", "why"), FLOORS, ids=[f[0] for f in FLOORS])
def test_every_declared_floor_has_what_the_code_uses(
    package: str, sections: tuple[str, ...], lowest: str, why: str
) -> None:
    for section in sections:
        requirement = _declared(section).get(package.lower())
        assert requirement is not None, f"{package} is not declared in [{section}]"
        assert _floor(requirement) >= Version(lowest), f"[{section}] {requirement}: needs >= {lowest} ({why})"


def _lowest_deps_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("lowest_deps_check", REPO / "scripts" / "lowest_deps_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lowest_deps_check_pins_what_pyproject_declares(tmp_path: Path) -> None:
    script = _lowest_deps_script()
    expected = [
        f"{r.name}=={_floor(r)}"
        for section in ("core", "langchain", "llama-index", "hybrid")
        for r in _declared(section).values()
    ]
    pins = script.floor_pins()
    assert [Requirement(p).name.lower() for p in pins] == [Requirement(e).name.lower() for e in expected]
    assert all(_floor(Requirement(p)) == _floor(Requirement(e)) for p, e in zip(pins, expected, strict=True))
    # it reads the file it is given: a changed floor changes the pin
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    changed = tmp_path / "pyproject.toml"
    changed.write_text(re.sub(r'"numpy>=[^"]+"', '"numpy>=9.9.1"', text), encoding="utf-8")
    assert "numpy==9.9.1" in script.floor_pins(changed)
    assert script.floor_pin("langchain-core>=1.4,<2") == "langchain-core==1.4"
    with pytest.raises(ValueError, match="no-floor"):
        script.floor_pin("no-floor<2")


def test_make_lowest_deps_check_runs_the_script_outside_make_test() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    rule = re.search(r"^lowest-deps-check:.*\n\t(.*)$", makefile, re.M)
    assert rule, "no lowest-deps-check target"
    assert "scripts/lowest_deps_check.py" in rule.group(1)
    test_line = re.search(r"^test:([^#\n]*)", makefile, re.M)
    assert test_line and "lowest-deps-check" not in test_line.group(1)


# Finding: datetime.fromisoformat reads a trailing "Z" only from Python 3.11, and 3.10 is supported.


class _Stands(type):
    """A stand-in for a ``datetime`` class: calls, attributes and ``isinstance`` go to the real one."""

    real: type

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.real(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        return getattr(cls.real, name)

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, cls.real)


#: What Python 3.10's ``fromisoformat`` reads: the extended format, a fraction of 3 or 6 digits after the
#: seconds, an offset ``+HH:MM[:SS[.ffffff]]``; no ``Z``, no basic format, no week dates (3.11 added those).
_PY310_TIME = r"\d\d(?::\d\d(?::\d\d(?:\.(?:\d{3}|\d{6}))?)?)?(?:[+-]\d\d:\d\d(?::\d\d(?:\.\d{6})?)?)?"
_PY310_GRAMMAR = {
    "datetime": re.compile(rf"\d{{4}}-\d\d-\d\d(?:.{_PY310_TIME})?", re.S),
    "time": re.compile(_PY310_TIME),
}


def _py310_fromisoformat(real: type) -> Any:
    """``real.fromisoformat`` as Python 3.10 has it: what its grammar does not cover raises ``ValueError``."""

    def parse(text: str) -> Any:
        if not _PY310_GRAMMAR[real.__name__].fullmatch(text):
            raise ValueError(f"Invalid isoformat string: {text!r}")
        return real.fromisoformat(text)  # type: ignore[attr-defined]

    return staticmethod(parse)


class _Py310Datetime(metaclass=_Stands):
    real = datetime.datetime
    fromisoformat = _py310_fromisoformat(datetime.datetime)


class _Py310Time(metaclass=_Stands):
    real = datetime.time
    fromisoformat = _py310_fromisoformat(datetime.time)


@pytest.fixture
def py310_fromisoformat(monkeypatch: pytest.MonkeyPatch) -> None:
    """filters.py's ``datetime`` module with Python 3.10's ``fromisoformat`` (whatever Python runs the test)."""
    fake = types.SimpleNamespace(**{**vars(datetime), "datetime": _Py310Datetime, "time": _Py310Time})
    monkeypatch.setattr(filters, "datetime", fake)
    for text in ("2024-01-02T10:00:00Z", "2024-01-02T10:00:00.1", "2024-01-02T10:00:00+0000", "20240102"):
        with pytest.raises(ValueError):
            filters.datetime.datetime.fromisoformat(text)
    assert filters.datetime.datetime.fromisoformat("2024-01-02T10:00:00.123+05:30").microsecond == 123000


@pytest.mark.usefixtures("py310_fromisoformat")
def test_a_trailing_z_reads_as_utc_without_python_311s_parser() -> None:
    utc = datetime.timezone.utc
    assert filters._stored_datetime("2024-01-02T10:00:00Z") == datetime.datetime(2024, 1, 2, 10, tzinfo=utc)
    assert filters._stored_datetime("2024-01-02T10:00:00.123z") == datetime.datetime(
        2024, 1, 2, 10, 0, 0, 123000, tzinfo=utc
    )
    assert filters._stored_time("10:00:00Z") == datetime.time(10, tzinfo=utc)
    assert filters._stored_datetime("2024-01-02") == datetime.datetime(2024, 1, 2)  # unchanged
    assert filters._stored_datetime("Z") is None  # still no date


#: Stored strings that Python 3.11 reads and that read the same without its parser (3.10's).
_READ_ON_310_TOO = [
    "2024-01-02T10:00:00.1Z",  # a fraction of 1, 2, 4, 5, 7 or 9 digits (Go, .NET), cut or padded to 6
    "2024-01-02T10:00:00.12Z",
    "2024-01-02T10:00:00.12345+05:30",
    "2024-01-02T10:00:00.1234567Z",
    "2024-01-02T10:00:00.123456789Z",
    "2024-01-02T10:00:00.1",
    "2024-01-02T10:00:00+0000",  # an offset without a colon (strftime's %z) or without minutes
    "2024-01-02T10:00:00.000+0530",
    "2024-01-02T10:00:00-05",
    "2024-01-02 10:00Z",
    "2024-01-02T10Z",
]


@pytest.mark.parametrize("text", _READ_ON_310_TOO)
def test_stored_datetimes_read_as_python_311_reads_them_without_its_parser(
    text: str, py310_fromisoformat: None
) -> None:
    expected = datetime.datetime.fromisoformat(text.replace("z", "Z"))  # the real parser: 3.11 or later here
    assert filters._stored_datetime(text) == expected
    assert filters._stored_datetime(text).utcoffset() == expected.utcoffset()  # type: ignore[union-attr]


@pytest.mark.usefixtures("py310_fromisoformat")
def test_stored_times_read_as_python_311_reads_them_without_its_parser() -> None:
    utc = datetime.timezone.utc
    assert filters._stored_time("10:00:00.5Z") == datetime.time(10, 0, 0, 500000, tzinfo=utc)
    assert filters._stored_time("10:00+0530") == datetime.time(
        10, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    )
    assert filters._stored_time("10:00:00.1234567") == datetime.time(10, 0, 0, 123456)


@pytest.mark.usefixtures("py310_fromisoformat")
def test_a_z_without_a_time_is_no_date_not_a_naive_midnight() -> None:
    # "2024-01-02Z" is no date on Python 3.11 either: read as naive midnight it would drop the UTC it states
    assert filters._stored_datetime("2024-01-02Z") is None
    assert filters._stored_datetime("2024-01-02z") is None
    naive = filters.compile_filter({"t": datetime.datetime(2024, 1, 2)})
    assert naive is not None and naive({"t": "2024-01-02Z"}) is False
    for not_a_date in ("PIZZ", "JAZZ", "TZ", "z", "", "2024-01-02T10:00:00 Z", "2024-01-02T10:00:00+00:00Z"):
        assert filters._stored_datetime(not_a_date) is None, not_a_date


@pytest.mark.usefixtures("py310_fromisoformat")
def test_what_only_python_311_reads_stays_no_date_on_310() -> None:
    """The module docstring's list: no cheap rewrite, so on 3.10 these never match (on 3.11+ they do)."""
    for text in ("20240102T100000Z", "20240102", "2024-W01-2", "2024-002", "2024-01-02T10:00:00,5Z"):
        assert filters._stored_datetime(text) is None, text
    doc = " ".join((filters.__doc__ or "").split())
    assert "the basic format" in doc and "week dates" in doc and "comma" in doc
    assert "an ordinal date (``2024-002``) are no date on any Python" in doc  # 3.11 to 3.13 refuse them too


@pytest.mark.usefixtures("py310_fromisoformat")
def test_a_date_filter_matches_stored_z_datetimes_without_python_311s_parser() -> None:
    rng = np.random.default_rng(0)
    gaussians = Gaussians(rng.normal(size=(3, 4)).astype("float32"), np.ones((3, 4), "float32"))
    store = KLStore()
    stamps = {"z": "2024-01-02T10:00:00Z", "offset": "2024-01-02T10:00:00+00:00", "ms": "2024-01-02T10:00:00.123Z"}
    store.add(gaussians=gaussians, ids=list(stamps), metadatas=[{"t": t} for t in stamps.values()])
    after = {"t": {"$gte": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)}}
    query = Gaussians(gaussians.mean[:1], gaussians.var[:1])
    assert sorted(r.id for r in store.search(query, k=3, filter=after)) == ["ms", "offset", "z"]
    assert [r.id for r in store.search(query, k=3, filter={"t": datetime.date(2024, 1, 2)})]  # same day


# Finding: without torch, the training names raised a bare "No module named 'torch'".


def _run_training_without_torch(tmp_path: Path, body: str) -> str:
    """Stdout of ``body`` run in a fresh interpreter where torch and transformers cannot be imported, with this
    checkout's ``kl_retrievers.training`` imported as ``training``."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        sys.modules["torch"] = None  # as if torch were not installed
        sys.modules["transformers"] = None
        import kl_retrievers.training as training
        assert training.__file__.startswith({str(REPO)!r}), training.__file__
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True
    ).stdout


def test_training_names_without_torch_name_the_extra(tmp_path: Path) -> None:
    out = _run_training_without_torch(
        tmp_path,
        """
        print(training.TrainExample.__name__)  # torch-free names still import
        try:
            from kl_retrievers.training import TrainConfig
        except ModuleNotFoundError as exc:
            print("name:", exc.name)
            print("message:", exc)
        """,
    )
    assert "TrainExample" in out
    assert "name: torch" in out
    assert 'pip install "kl-retrievers[train]"' in out, out
    assert "kl_retrievers.training.TrainConfig needs torch" in out, out


# Findings: the int8 export and the ONNX backend named the wrong cure for an import that failed.


class _FailingImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``name`` (so it looks installed) and raises ``error`` when it is imported."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name, self.error = name, error

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname == self.name else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        raise self.error


@pytest.fixture
def failing_import(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def install(name: str, error: BaseException) -> None:
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setattr(sys, "meta_path", [_FailingImport(name, error), *sys.meta_path])

    yield install


def test_int8_export_names_a_missing_module_that_onnxruntime_quantization_imports(
    failing_import: Any, tmp_path: Path
) -> None:
    failing_import("onnxruntime.quantization", ModuleNotFoundError("No module named 'ml_dtypes'", name="ml_dtypes"))
    with pytest.raises(ModuleNotFoundError) as caught:
        onnx._quantize_int8(tmp_path / "a.onnx", tmp_path / "b.onnx", per_channel=True)
    assert caught.value.name == "ml_dtypes"
    assert "pip install ml_dtypes" in str(caught.value)
    assert "ModuleNotFoundError: No module named 'ml_dtypes'" in str(caught.value)


def test_int8_export_without_onnx_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    with pytest.raises(ImportError, match=r"kl-retrievers\[torch\]"):
        onnx._quantize_int8(tmp_path / "a.onnx", tmp_path / "b.onnx", per_channel=True)


def test_an_onnxruntime_that_fails_to_import_is_not_reported_as_missing(failing_import: Any) -> None:
    failing_import("onnxruntime", ImportError())  # what onnxruntime 1.17 raises beside numpy 2: no message
    with pytest.raises(ImportError) as caught:
        onnx.onnx_runtime()
    message = str(caught.value)
    assert "ImportError (no message)" in message
    assert "()" not in message
    assert "reinstall" not in message
    assert f"numpy {np.__version__}" in message
    assert f"onnxruntime {_floor(_declared('core')['onnxruntime'])} or later" in message  # the declared floor


def test_a_missing_onnxruntime_says_to_reinstall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="not installed .*ModuleNotFoundError.*reinstall it"):
        onnx.onnx_runtime()


# Finding: torch.onnx.export(dynamo=...) is torch 2.5+, and the [torch] extra admits torch 2.1.


def test_the_export_passes_dynamo_only_to_a_torch_that_takes_it() -> None:
    def old_export(model: Any, args: Any, f: Any, input_names: Any = None, opset_version: Any = None) -> None: ...

    def new_export(model: Any, args: Any, f: Any, *, dynamo: bool = True) -> None: ...

    assert onnx._exporter_options(old_export) == {}
    assert onnx._exporter_options(new_export) == {"dynamo": False}
    torch = pytest.importorskip("torch")
    if Version(torch.__version__.split("+")[0]) >= Version("2.5"):
        assert onnx._exporter_options(torch.onnx.export) == {"dynamo": False}
    source = Path(onnx.__file__).read_text(encoding="utf-8")
    assert "dynamo=False," not in source  # the call itself takes it from _exporter_options


# Finding: the sdist lacked mkdocs.yml and the runs/ logs that tests run from it read.


def test_the_sdist_carries_the_files_the_tests_read() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("an unpacked sdist: MANIFEST.in is checked against a git checkout")
    from setuptools._distutils.filelist import FileList

    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    files = FileList()
    files.set_allfiles([name for name in listed if name])
    for line in (REPO / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            files.process_template_line(line)
    included = {name.replace(os.sep, "/") for name in files.files}
    needed = [
        "mkdocs.yml",
        "runs/eval/eval.jsonl",
        "runs/eval/hybrid.jsonl",
        "runs/qpp/README.md",
        "runs/qpp/qpp.jsonl",
        "runs/qpp/calibration.jsonl",
        "runs/qpp/minilm-gauss-soup.scifact.test.json",
    ]
    assert not [name for name in needed if name not in included]
    pq = [name for name in listed if name.startswith("runs/eval/pq/")]
    assert pq and set(pq) <= included
    assert not [name for name in included if name.startswith("runs/qpp/calib/")]  # 19 MB left out


# Review W4: the lowest-deps script's requirement reading, its interpreter, and its failures.


def _pyproject(tmp_path: Path, core: list[str], **extras: list[str]) -> Path:
    sections = {"langchain": [], "llama-index": [], "hybrid": [], **extras}
    lines = ["[project]", f"dependencies = {core!r}", "[project.optional-dependencies]"]
    lines += [f'"{name}" = {value!r}' for name, value in sections.items()]
    path = tmp_path / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_lowest_deps_pins_keep_the_highest_floor_of_each_package(tmp_path: Path) -> None:
    script = _lowest_deps_script()
    pyproject = _pyproject(
        tmp_path,
        ["numpy>=1.24.2", "llama_index_core>=0.14", "ray>=2.9", "foo~=1.2"],
        hybrid=["NumPy>=1.26", "llama-index-core>=0.14.2,<0.15", "ray[data]>=2.10"],
    )
    pins = script.floor_pins(pyproject)
    assert pins == ["numpy==1.26", "llama_index_core==0.14.2", "ray[data]==2.10", "foo==1.2"]
    conflicting = _pyproject(tmp_path, ["foo>=1,<2"], hybrid=["foo>=2.5"])
    with pytest.raises(ValueError, match="2.5"):
        script.floor_pins(conflicting)


def test_the_lowest_deps_pins_follow_the_markers_of_the_venvs_python(tmp_path: Path) -> None:
    script = _lowest_deps_script()
    pyproject = _pyproject(
        tmp_path,
        ['tomli>=2.0; python_version < "3.11"', "numpy>=1.24.2"],
        langchain=['numpy>=1.26; python_version >= "3.12"'],
    )
    on = {
        version: script.floor_pins(pyproject, environment={**script.default_environment(), "python_version": version})
        for version in ("3.10", "3.11", "3.12")
    }
    assert on["3.10"] == ["tomli==2.0", "numpy==1.24.2"]  # no marker left in a pin
    assert on["3.11"] == ["numpy==1.24.2"]
    assert on["3.12"] == ["numpy==1.26"]
    environment = script.target_environment(sys.executable)
    assert environment["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_make_lowest_deps_check_passes_python_only_for_the_venv() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    rule = re.search(r"^lowest-deps-check:.*\n\t(.*)$", makefile, re.M)
    assert rule
    runner, _, arguments = rule.group(1).partition(" scripts/lowest_deps_check.py")
    assert "$(PYTHON)" not in runner, rule.group(1)  # a bare python3.10 has no tomli to read pyproject.toml
    assert arguments.strip() == "--python $(PYTHON)"


def test_the_lowest_deps_script_reads_pyproject_without_tomli_or_packaging(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import runpy, sys
        for name in ("tomllib", "tomli", "packaging"):  # a bare Python 3.10: pip's vendored copies only
            sys.modules[name] = None
        sys.argv = ["lowest_deps_check.py", "--print-pins", "--python", sys.executable]
        runpy.run_path({str(REPO / "scripts" / "lowest_deps_check.py")!r}, run_name="__main__")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"onnxruntime=={_floor(_declared('core')['onnxruntime'])}" in done.stdout.split()


def _run_lowest_deps(tmp_path: Path, fake_python: str) -> subprocess.Popen[str]:
    """The script's main() with ``--python`` a fake interpreter, its temporary folders under ``tmp_path/tmp``."""
    python = tmp_path / "fake-python"
    python.write_text(
        f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n{fake_python}\n', encoding="utf-8"
    )
    python.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("ldc", {str(REPO / "scripts" / "lowest_deps_check.py")!r})
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script._copy_checkout = lambda target: target.mkdir(parents=True)  # not the whole checkout
        sys.exit(script.main(["--python", {str(python)!r}]))
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_failed_lowest_deps_step_is_one_line_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    process = _run_lowest_deps(tmp_path, "exit 3")  # "python -m venv" fails
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, (out, err)
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0 and "FAILED" in err and "-m venv" in err and "status 3" in err, err
    assert not list((tmp_path / "tmp").iterdir())


def test_sigterm_stops_the_lowest_deps_check_and_removes_its_temporary_folder(tmp_path: Path) -> None:
    marker = tmp_path / "venv-started"
    process = _run_lowest_deps(tmp_path, f"touch {marker}\nexec sleep 60")
    try:
        for _ in range(600):
            if marker.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), process.communicate(timeout=5)
        assert [p.name.startswith("kl-lowest-deps.") for p in (tmp_path / "tmp").iterdir()] == [True]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert not list((tmp_path / "tmp").iterdir())


# Review W4: import errors that name the wrong cure.


def test_int8_export_tells_a_too_old_module_from_a_missing_one(failing_import: Any, tmp_path: Path) -> None:
    too_old = ImportError("cannot import name 'uint4' from 'ml_dtypes' (/x/ml_dtypes/__init__.py)", name="ml_dtypes")
    failing_import("onnxruntime.quantization", too_old)
    with pytest.raises(ImportError) as caught:
        onnx._quantize_int8(tmp_path / "a.onnx", tmp_path / "b.onnx", per_channel=True)
    assert not isinstance(caught.value, ModuleNotFoundError)
    assert caught.value.__cause__ is too_old
    message = str(caught.value)
    assert "is installed" in message and "pip install -U ml_dtypes" in message
    assert "is missing" not in message


@pytest.mark.parametrize(("module", "distribution"), [("google.protobuf", "protobuf"), ("yaml", "PyYAML")])
def test_int8_export_names_the_distribution_to_install(
    failing_import: Any, tmp_path: Path, module: str, distribution: str
) -> None:
    missing = ModuleNotFoundError(f"No module named {module!r}", name=module)
    failing_import("onnxruntime.quantization", missing)
    with pytest.raises(ModuleNotFoundError) as caught:
        onnx._quantize_int8(tmp_path / "a.onnx", tmp_path / "b.onnx", per_channel=True)
    assert f"(pip install {distribution})" in str(caught.value)
    assert caught.value.name == module and caught.value.__cause__ is missing


def test_an_onnxruntime_gpu_that_fails_to_import_gets_its_own_advice(
    failing_import: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    failing_import("onnxruntime", ImportError("libcudnn.so.9: cannot open shared object file"))
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {"onnxruntime": ["onnxruntime-gpu"]})
    with pytest.raises(ImportError) as caught:
        onnx.onnx_runtime()
    message = str(caught.value)
    assert "libcudnn.so.9" in message
    assert "onnxruntime-gpu" in message and "pip install -U onnxruntime-gpu" in message
    assert not re.search(r"pip install -U onnxruntime(?!-)", message), message
    assert "numpy" not in message  # the failure is not numpy's


def test_an_onnxruntime_failing_on_numpy_says_so(failing_import: Any) -> None:
    failing_import("onnxruntime", ImportError("numpy.core.multiarray failed to import"))
    with pytest.raises(ImportError, match=r"built for numpy 1 .*pip install -U onnxruntime"):
        onnx.onnx_runtime()


# Review W4: the training submodules read as attributes raised the bare torch error.


def test_training_submodules_without_torch_name_the_extra(tmp_path: Path) -> None:
    out = _run_training_without_torch(
        tmp_path,
        """
        for read in (lambda: training.trainer, lambda: training.losses, lambda: training.train_encoder):
            try:
                read()
            except ModuleNotFoundError as exc:
                print("name:", exc.name, "cause:", type(exc.__cause__).__name__, "message:", exc)
        try:
            from kl_retrievers.training import features
        except ModuleNotFoundError as exc:
            print("name:", exc.name, "cause:", type(exc.__cause__).__name__, "message:", exc)
        """,
    ).splitlines()
    assert len(out) == 4, out
    for line, what in zip(out, ("trainer", "losses", "train_encoder", "features"), strict=True):
        assert line.startswith("name: torch cause: ModuleNotFoundError message:"), line
        assert f"kl_retrievers.training.{what} needs torch" in line and "kl-retrievers[train]" in line, line
