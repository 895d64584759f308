"""Install kl-retrievers with every dependency at its declared floor, in a throwaway venv, and smoke-test it.

The floors are read from ``pyproject.toml`` (the core dependencies and the ``[langchain]``, ``[llama-index]`` and
``[hybrid]`` extras), so they cannot drift from what the package declares: each ``>=X`` becomes ``==X`` (and an
``==X`` stays). The venv lives under a temporary folder that is removed at the end; the package is installed
from a copy of the checkout (nothing is written into it). The smoke test runs without torch, offline, from
outside the checkout: ``import kl_retrievers``, ``load_model()`` (the shipped ONNX graph), ``KLStore``
add / search / save / load, ``KLHybridStore`` search, and the LangChain and LlamaIndex adapters.

It needs a package index that holds the floor releases (pip's configured one) and a Python for which they all
have wheels (numpy 1.24.2 has none for Python 3.12 or newer). Not part of ``make test``:
``make lowest-deps-check`` (``PYTHON=python3.11 make lowest-deps-check`` to choose the interpreter).

Usage:
    python scripts/lowest_deps_check.py [--python PYTHON] [--print-pins]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The extras installed beside the core dependencies (the torch-free ones the smoke test uses).
EXTRAS = ("langchain", "llama-index", "hybrid")

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")

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


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with path.open("rb") as handle:
        return tomllib.load(handle)


def floor_pin(requirement: str) -> str:
    """``requirement`` pinned to its floor: ``"numpy>=1.24.2"`` -> ``"numpy==1.24.2"`` (markers kept).

    Raises:
        ValueError: The requirement has no ``>=`` or ``==`` bound, so there is no floor to install.
    """
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise ValueError(f"cannot read the requirement {requirement!r}")
    name, extras, specifiers, marker = match.groups()
    floors = [s.strip()[2:].strip() for s in specifiers.split(",") if s.strip()[:2] in (">=", "==")]
    if len(floors) != 1:
        raise ValueError(f"{requirement!r}: expected one '>=' or '==' bound to pin, got {specifiers!r}")
    return f"{name}{extras or ''}=={floors[0]}{' ' + marker if marker else ''}"


def floor_pins(pyproject: Path = REPO / "pyproject.toml", extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """Every core dependency and every dependency of ``extras`` in ``pyproject``, pinned to its floor."""
    project = _load_toml(pyproject)["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins: dict[str, str] = {}
    for requirement in requirements:
        pin = floor_pin(requirement)
        pins.setdefault(pin.split("==", 1)[0].lower(), pin)
    return list(pins.values())


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


def main(argv: list[str] | None = None) -> int:
    """Build the venv, install the floors, run the smoke test; 0 when it passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--python", default=os.environ.get("PYTHON", "python3"), help="interpreter for the venv")
    parser.add_argument("--print-pins", action="store_true", help="print the pins read from pyproject.toml and stop")
    args = parser.parse_args(argv)
    pins = floor_pins()
    if args.print_pins:
        print("\n".join(pins))
        return 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kl-lowest-deps.") as tmp_name:
        tmp = Path(tmp_name)
        _copy_checkout(tmp / "src")
        subprocess.run([args.python, "-m", "venv", str(tmp / "venv")], check=True)
        python = str(tmp / "venv" / "bin" / "python")
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        print(f"lowest-deps-check: installing .[{','.join(EXTRAS)}] with {' '.join(pins)}", flush=True)
        subprocess.run([*pip, f"{tmp / 'src'}[{','.join(EXTRAS)}]", *pins], check=True)
        names = [re.sub(r"\[.*?\]", "", pin.split(";", 1)[0]).strip() for pin in pins]  # name==version, compared
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "KL_REPO": str(REPO)}
        env["KL_RETRIEVERS_ONNX_CACHE"] = str(tmp / "onnx-cache")
        result = subprocess.run([python, "-c", SMOKE, *names], cwd=tmp, env=env)
    print(f"lowest-deps-check: {'passed' if result.returncode == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
