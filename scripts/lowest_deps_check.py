"""Install kl-retrievers with every dependency at its declared floor, in a throwaway venv, and smoke-test it.

The floors are read from ``pyproject.toml`` (the core dependencies and the ``[langchain]``, ``[llama-index]`` and
``[hybrid]`` extras), so they cannot drift from what the package declares: each ``>=X`` (or ``~=X``) becomes
``==X`` (and an ``==X`` stays). A requirement whose marker does not hold for the venv's Python is left out; a
package declared more than once (under names that differ only as PEP 503 allows) is pinned to its highest floor.
The venv lives under a temporary folder that is removed at the end; the package is installed from a copy of
the checkout (nothing is written into it). The smoke test runs without torch, offline, from
outside the checkout: ``import kl_retrievers``, ``load_model()`` (the shipped ONNX graph), ``KLStore``
add / search / save / load, ``KLHybridStore`` search, and the LangChain and LlamaIndex adapters.

It needs a package index that holds the floor releases (pip's configured one) and a Python for which they all
have wheels (numpy 1.24.2 has none for Python 3.12 or newer). Not part of ``make test``:
``make lowest-deps-check`` (``make lowest-deps-check PYTHON=python3.10`` to choose the venv's interpreter; the
script itself runs on any Python 3.10+ with ``packaging`` and ``tomli`` / ``tomllib``, or pip's vendored copies).
A failed step prints one ``FAILED`` line and exits 1; the temporary folder is removed on failure, Ctrl-C and
SIGTERM too.

Usage:
    python scripts/lowest_deps_check.py [--python PYTHON] [--print-pins]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a bare interpreter: pip's vendored copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore[assignment,no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment,no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[assignment,no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[assignment,no-redef]

REPO = Path(__file__).resolve().parent.parent
#: The extras installed beside the core dependencies (the torch-free ones the smoke test uses).
EXTRAS = ("langchain", "llama-index", "hybrid")
#: The operators whose version is a floor to install: ``>=X``, ``~=X`` (``>=X`` and a cap), ``==X``.
_FLOOR_OPERATORS = (">=", "~=", "==")

#: Printed by the venv's Python: the values PEP 508 markers read (as ``packaging.markers.default_environment``).
ENVIRONMENT = r"""
import json, os, platform, sys
info = sys.implementation.version
version = f"{info.major}.{info.minor}.{info.micro}"
if info.releaselevel != "final":
    version += info.releaselevel[0] + str(info.serial)
print(json.dumps({
    "implementation_name": sys.implementation.name, "implementation_version": version, "os_name": os.name,
    "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
}))
"""

#: Run with the venv's Python from outside the checkout: the installed package is what runs.
SMOKE = r"""
import importlib.metadata as md, os, sys, tempfile
from packaging.version import Version
pins = dict(p.split("==", 1) for p in sys.argv[1:])
wrong = {n: (v, md.version(n)) for n, v in pins.items() if Version(md.version(n)) != Version(v)}
assert not wrong, f"installed versions differ from the floors: {wrong}"
try:
    import torch  # noqa: F401
    raise SystemExit("torch is installed; the smoke test is for the torch-free install")
except ImportError:
    pass
import kl_retrievers
assert not kl_retrievers.__file__.startswith(os.environ["KL_REPO"]), kl_retrievers.__file__
from kl_retrievers import KLStore, load_model
from kl_retrievers.hybrid import KLHybridStore
docs = ["Bees dance to share where food is.", "Yeast makes bread rise.", "Coffee contains caffeine."]
ids = ["bees", "bread", "coffee"]
model = load_model()
store = KLStore(model)
store.add(docs, ids=ids, metadatas=[{"y": 1}, {"y": 2}, {"y": 3}])
assert store.search("how do bees communicate?", k=1)[0].id == "bees"
assert [r.id for r in store.search("caffeine", k=3, filter={"y": {"$gte": 2}})][0] == "coffee"
with tempfile.TemporaryDirectory() as tmp:
    store.save(os.path.join(tmp, "store"))
    loaded = KLStore.load(os.path.join(tmp, "store"))
    assert loaded.search("why does bread rise", k=1)[0].id == "bread"
hybrid = KLHybridStore(model)
hybrid.add(docs, ids=ids)
assert hybrid.search("bees dance", k=1)[0].id == "bees"
from langchain_core.documents import Document
from kl_retrievers.langchain import KLEmbeddings, KLVectorStore
lc = KLVectorStore.from_documents([Document(page_content=t) for t in docs], KLEmbeddings())
assert lc.similarity_search("caffeine", k=1)[0].page_content == docs[2]
from llama_index.core import Document as LIDocument, StorageContext, VectorStoreIndex
from kl_retrievers.llama_index import KLEmbedding, KLVectorStore as LIVectorStore
context = StorageContext.from_defaults(vector_store=LIVectorStore())
nodes = [LIDocument(text=t) for t in docs]
index = VectorStoreIndex.from_documents(nodes, storage_context=context, embed_model=KLEmbedding())
assert index.as_retriever(similarity_top_k=1).retrieve("yeast")[0].node.get_content() == docs[1]
print("lowest-deps-check: smoke test passed with", ", ".join(f"{n}=={v}" for n, v in sorted(pins.items())))
"""


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:  # a bare Python 3.10: pip's vendored copy
            from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _floor(requirement: Requirement) -> Version:
    """The version ``requirement`` admits at its lowest: its highest ``>=`` / ``~=`` / ``==`` bound.

    Raises:
        ValueError: No such bound (``foo``, ``foo<2``, ``foo>1``, ``foo==1.*``, ``foo @ URL``): nothing to pin.
    """
    floors = [
        Version(s.version)
        for s in requirement.specifier
        if s.operator in _FLOOR_OPERATORS and not s.version.endswith(".*")
    ]
    if requirement.url or not floors:
        raise ValueError(
            f"{str(requirement)!r}: expected a '>=', '~=' or '==' bound to pin, got {str(requirement.specifier)!r}"
        )
    return max(floors)


def floor_pin(requirement: str) -> str:
    """``requirement`` pinned to its floor: ``"numpy>=1.24.2"`` -> ``"numpy==1.24.2"`` (extras and marker kept).

    Raises:
        ValueError: The requirement cannot be read, or has no ``>=``, ``~=`` or ``==`` bound (no floor to install).
    """
    try:
        parsed = Requirement(requirement)
    except Exception as exc:  # packaging's InvalidRequirement
        raise ValueError(f"cannot read the requirement {requirement!r}: {exc}") from exc
    extras = f"[{','.join(sorted(parsed.extras))}]" if parsed.extras else ""
    marker = f"; {parsed.marker}" if parsed.marker else ""
    return f"{parsed.name}{extras}=={_floor(parsed)}{marker}"


def target_environment(python: str) -> dict[str, str]:
    """The PEP 508 marker values of the interpreter ``python`` (``sys.executable``: this one's, without a run).

    Raises:
        subprocess.CalledProcessError, OSError: ``python`` does not run.
    """
    if python == sys.executable:
        return {key: str(value) for key, value in default_environment().items()}
    out = subprocess.run([python, "-c", ENVIRONMENT], check=True, capture_output=True, text=True).stdout
    environment: dict[str, str] = json.loads(out)
    return environment


def floor_pins(
    pyproject: Path = REPO / "pyproject.toml",
    extras: tuple[str, ...] = EXTRAS,
    environment: dict[str, str] | None = None,
) -> list[str]:
    """Every core dependency and every dependency of ``extras`` in ``pyproject``, pinned to its floor.

    A requirement whose marker is false in ``environment`` (the venv's Python; this one's when ``None``) is left
    out; the markers that hold are dropped from the pins. A package declared more than once (names compared as
    PEP 503 does: ``llama_index_core`` is ``llama-index-core``) is pinned once, to its highest floor, with the
    union of the extras it is declared with, in the order it first appears.

    Raises:
        ValueError: A requirement cannot be read, has no floor, or refuses the highest floor of its package
            (``foo>=1,<2`` beside ``foo>=2.5``; ``foo>=1,!=1``).
    """
    project = _load_toml(pyproject)["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    marker_environment: dict[str, str] = {**(environment or target_environment(sys.executable)), "extra": ""}
    chosen: dict[str, tuple[str, set[str], Version]] = {}  # canonical name -> (declared name, extras, floor)
    declared: dict[str, list[Requirement]] = {}
    for line in requirements:
        try:
            requirement = Requirement(line)
        except Exception as exc:  # packaging's InvalidRequirement
            raise ValueError(f"cannot read the requirement {line!r}: {exc}") from exc
        if requirement.marker is not None and not requirement.marker.evaluate(marker_environment):
            continue
        floor = _floor(requirement)
        key: str = canonicalize_name(requirement.name)
        name, known_extras, known_floor = chosen.get(key, (requirement.name, set(), floor))
        chosen[key] = (name, known_extras | set(requirement.extras), max(floor, known_floor))
        declared.setdefault(key, []).append(requirement)
    for key, (_, _, floor) in chosen.items():
        refused = [str(r) for r in declared[key] if not r.specifier.contains(floor, prereleases=True)]
        if refused:
            raise ValueError(f"{key}: the highest floor {floor} is outside {' and '.join(map(repr, refused))}")
    return [
        f"{name}{'[' + ','.join(sorted(extras_of)) + ']' if extras_of else ''}=={floor}"
        for name, extras_of, floor in chosen.values()
    ]


def _copy_checkout(target: Path) -> None:
    """The files a checkout holds (tracked, and untracked but not ignored), so the build writes nothing here."""
    if not (REPO / ".git").exists():  # an unpacked sdist: all of it
        shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(".venv", "build", "dist", "__pycache__"))
        return
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as ``SystemExit``: the ``with`` blocks unwind, so the temporary folder is removed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Build the venv, install the floors, run the smoke test; 0 when it passes, 1 when a step fails."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--python", default=os.environ.get("PYTHON", "python3"), help="interpreter for the venv")
    parser.add_argument("--print-pins", action="store_true", help="print the pins read from pyproject.toml and stop")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    start = time.monotonic()
    try:
        pins = floor_pins(environment=target_environment(args.python))
        if args.print_pins:
            print("\n".join(pins))
            return 0
        returncode = _install_and_smoke_test(args.python, pins)
    except subprocess.CalledProcessError as exc:
        command = " ".join(map(str, exc.cmd))
        print(f"lowest-deps-check: FAILED: {command[:300]} exited with status {exc.returncode}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # an interpreter that is not there, a requirement without a floor
        print(f"lowest-deps-check: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"lowest-deps-check: {'passed' if returncode == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    return 0 if returncode == 0 else 1


def _install_and_smoke_test(python_for_venv: str, pins: list[str]) -> int:
    """The venv under a temporary folder (removed at the end, whatever happens), the install, the smoke test."""
    with tempfile.TemporaryDirectory(prefix="kl-lowest-deps.") as tmp_name:
        tmp = Path(tmp_name)
        _copy_checkout(tmp / "src")
        subprocess.run([python_for_venv, "-m", "venv", str(tmp / "venv")], check=True)
        python = str(tmp / "venv" / "bin" / "python")
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        print(f"lowest-deps-check: installing .[{','.join(EXTRAS)}] with {' '.join(pins)}", flush=True)
        subprocess.run([*pip, f"{tmp / 'src'}[{','.join(EXTRAS)}]", *pins], check=True)
        names = [re.sub(r"\[.*?\]", "", pin) for pin in pins]  # name==version, compared after the install
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "KL_REPO": str(REPO)}
        env["KL_RETRIEVERS_ONNX_CACHE"] = str(tmp / "onnx-cache")
        return subprocess.run([python, "-c", SMOKE, *names], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
