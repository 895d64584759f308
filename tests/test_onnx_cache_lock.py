"""One ONNX export per cache entry, however many processes load the model for the first time at once.

- Two processes loading one model into one empty ONNX cache (``load_model(..., backend="onnx")``) export it once:
  the second waits for the first (logged at INFO) and uses its export, without loading the torch encoder; both
  encode alike, and the cache holds the entry alone (no lock file, no temporary copy).
- The lock covers the cache's whole "look at the entry, load the torch encoder, export" (``load_model``), taken
  once (the export inside does not take it again): a process whose first look came before another's export was
  swapped in looks again under the lock and uses it, loading no torch encoder. ``export_onnx`` into a folder of
  one's own (never in the cache) takes the same lock itself.
- The lock (``kl_retrievers._io.lock_file``) is an ``flock``: a lock file left by a killed process is taken at once,
  a holder killed with ``kill -9`` while another waits releases it, and without ``fcntl`` (Windows) the body runs
  unlocked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers
import kl_retrievers._io as io_module
import kl_retrievers.onnx as onnx_module
from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers._io import lock_file
from kl_retrievers.onnx import export_onnx

#: What a child process runs: load the model through the ONNX cache, counting the exports it makes. An export holds
#: on (up to 60 s) until the other process has reached it too: it logged that it waits for the lock (one export)
#: or started its own export (two), so both processes meet at the export whatever their start-up times.
_CHILD = textwrap.dedent(
    """
    import json, logging, sys, time
    from pathlib import Path

    source, me, other = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    handler = logging.FileHandler(me.with_suffix(".log"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("kl_retrievers").addHandler(handler)
    logging.getLogger("kl_retrievers").setLevel(logging.INFO)

    import kl_retrievers.onnx as onnx_module
    from kl_retrievers import load_model
    from kl_retrievers.encoder import GaussianEncoder

    loads = []  # torch encoders loaded (a process that waited for another's export loads none)
    real_load = GaussianEncoder.from_pretrained.__func__

    def counting_load(cls, *args, **kwargs):
        loads.append(str(args[0]))
        return real_load(cls, *args, **kwargs)

    GaussianEncoder.from_pretrained = classmethod(counting_load)
    exports = []
    real = onnx_module._torch_export

    def counting(encoder, path):
        exports.append(str(path))
        me.with_suffix(".exporting").touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = other.with_suffix(".log")
            if other.with_suffix(".exporting").exists() or (log.exists() and "waiting for" in log.read_text()):
                break
            time.sleep(0.05)
        return real(encoder, path)

    onnx_module._torch_export = counting
    encoder = load_model(source, backend="onnx", quantize=None)
    encoded = encoder.encode_queries(["hello world", "a dog in the sun"])
    me.with_suffix(".json").write_text(
        json.dumps({"exports": exports, "loads": loads, "mean": encoded.mean.tolist(), "var": encoded.var.tolist()})
    )
    """
)


def _child_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(kl_retrievers.__file__).resolve().parents[1])  # the code under test, in the child too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(
        KL_RETRIEVERS_ONNX_CACHE=os.fspath(cache),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TQDM_DISABLE="1",
    )
    return env


def test_two_processes_export_a_cache_entry_once(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("fcntl")  # without flock (Windows) the two processes export unlocked
    source = make_tiny_encoder(dim=6, seed=5).save_pretrained(tmp_path / "encoder")
    cache = tmp_path / "cache"
    script = tmp_path / "child.py"
    script.write_text(_CHILD, encoding="utf-8")
    runs = [tmp_path / "a", tmp_path / "b"]
    env = _child_env(cache)
    children = [
        subprocess.Popen(
            [sys.executable, os.fspath(script), os.fspath(source), os.fspath(me), os.fspath(other)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for me, other in (runs, runs[::-1])
    ]
    outputs = [child.communicate(timeout=240)[0] for child in children]
    for child, output in zip(children, outputs, strict=True):
        assert child.returncode == 0, output
    results = [json.loads(run.with_suffix(".json").read_text()) for run in runs]
    logs = [run.with_suffix(".log").read_text() for run in runs]

    exports = [path for result in results for path in result["exports"]]
    assert len(exports) == 1, (exports, logs)
    waiter = next(i for i, result in enumerate(results) if not result["exports"])
    assert results[waiter]["loads"] == [], results  # it waited before loading the torch encoder, and needed none
    assert len(results[1 - waiter]["loads"]) == 1, results
    assert "waiting for the ONNX export into" in logs[waiter], logs[waiter]
    assert "while this one waited; using its export" in logs[waiter], logs[waiter]
    for key in ("mean", "var"):
        np.testing.assert_array_equal(np.asarray(results[0][key]), np.asarray(results[1][key]))
    assert len(list(cache.iterdir())) == 1, sorted(p.name for p in cache.iterdir())  # no lock file, no copy


def test_a_lock_file_left_by_a_killed_process_is_taken_at_once(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    lock = tmp_path / ".entry.lock"
    lock.touch()  # what a process killed while it held the lock leaves: the file, without its flock
    start = time.monotonic()
    with lock_file(lock, purpose="writing entry") as waited:
        assert lock.exists()
    assert not waited
    assert time.monotonic() - start < 5
    assert not lock.exists()


def test_a_holder_killed_while_another_waits_releases_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("fcntl")
    lock = tmp_path / ".entry.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
            os.fspath(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        killer = threading.Timer(0.5, holder.send_signal, (signal.SIGKILL,))
        killer.start()
        start = time.monotonic()
        with (
            caplog.at_level(logging.INFO, logger="kl_retrievers._io"),
            lock_file(lock, purpose="writing entry") as waited,
        ):
            assert waited
        assert time.monotonic() - start < 30
        assert f"waiting for writing entry: another process or thread holds {lock}" in caplog.text
        assert not lock.exists()
        killer.join()
    finally:
        holder.kill()
        holder.wait()


def test_without_fcntl_the_body_runs_unlocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_module, "fcntl", None)
    lock = tmp_path / ".entry.lock"
    with lock_file(lock, purpose="writing entry") as waited:
        assert not waited
        assert not lock.exists()


# ------------------------------------------------------------------ in one process: where the lock is held
def _cache_entry_of(source: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Load ``source`` through the ONNX cache ``cache`` (exporting it) and return the entry."""
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(cache))
    load_model(os.fspath(source), backend="onnx", quantize=None)
    (entry,) = [p for p in cache.iterdir()]
    return entry


def _count_torch_loads_and_exports(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    loads: list[str] = []
    exports: list[str] = []
    real_load = GaussianEncoder.from_pretrained.__func__  # type: ignore[attr-defined]
    real_export = onnx_module._export_onnx

    def counting_load(cls: type[GaussianEncoder], path: Any, *args: Any, **kwargs: Any) -> GaussianEncoder:
        loads.append(os.fspath(path))
        return real_load(cls, path, *args, **kwargs)  # type: ignore[no-any-return]

    def counting_export(encoder: Any, folder: Any, **kwargs: Any) -> Path:
        exports.append(os.fspath(folder))
        return real_export(encoder, folder, **kwargs)

    monkeypatch.setattr(GaussianEncoder, "from_pretrained", classmethod(counting_load))
    monkeypatch.setattr(onnx_module, "_export_onnx", counting_export)
    return loads, exports


def test_an_export_swapped_in_between_the_first_look_and_the_lock_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first look found no entry; another process's export landed before this one took the lock."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    source = make_tiny_encoder(dim=6, seed=5).save_pretrained(tmp_path / "encoder")
    made = _cache_entry_of(source, tmp_path / "other-cache", monkeypatch)  # what the other process exports
    cache = tmp_path / "cache"
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(cache))
    real_lock = io_module.lock_file

    @contextmanager
    def lock_after_the_other_export(path: Any, *, purpose: str) -> Iterator[bool]:
        shutil.copytree(made, cache / made.name)  # the other process's export is swapped in: this one did not wait
        with real_lock(path, purpose=purpose) as waited:
            yield waited

    monkeypatch.setattr(onnx_module, "lock_file", lock_after_the_other_export)
    loads, exports = _count_torch_loads_and_exports(monkeypatch)
    with caplog.at_level(logging.INFO, logger="kl_retrievers"):
        encoder = load_model(os.fspath(source), backend="onnx", quantize=None)
    assert (loads, exports) == ([], [])
    assert encoder.path == cache / made.name
    assert "meanwhile; using its export" in caplog.text
    assert sorted(p.name for p in cache.iterdir()) == [made.name]  # no lock file left


def test_the_cache_holds_its_lock_around_the_torch_load_and_the_export_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held from the second look to the export's end; the export inside does not lock the entry again (a second
    flock on the same file in one process would wait forever). export_onnx into a folder of one's own takes it."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("fcntl")
    source = make_tiny_encoder(dim=6, seed=5).save_pretrained(tmp_path / "encoder")
    cache = tmp_path / "cache"
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(cache))
    events: list[str] = []
    lock_folder = [cache]  # where the lock file of the export under way lies
    real_load = GaussianEncoder.from_pretrained.__func__  # type: ignore[attr-defined]
    real_lock = io_module.lock_file
    real_write = onnx_module._write_export

    def held() -> bool:
        (lock,) = list(lock_folder[0].glob(".*.lock"))
        fd = io_module._lock_fd(lock, wait=False)  # another open file description: refused while it is held
        io_module._unlock_fd(fd)
        return fd is None

    def checking_load(cls: type[GaussianEncoder], *args: Any, **kwargs: Any) -> GaussianEncoder:
        events.append(f"torch load, locked: {held()}")
        return real_load(cls, *args, **kwargs)  # type: ignore[no-any-return]

    @contextmanager
    def counting_lock(path: Any, *, purpose: str) -> Iterator[bool]:
        events.append(f"lock {Path(path).name}")
        with real_lock(path, purpose=purpose) as waited:
            yield waited

    def checking_write(*args: Any, **kwargs: Any) -> None:
        events.append(f"export, locked: {held()}")
        real_write(*args, **kwargs)

    monkeypatch.setattr(GaussianEncoder, "from_pretrained", classmethod(checking_load))
    monkeypatch.setattr(onnx_module, "lock_file", counting_lock)
    monkeypatch.setattr(onnx_module, "_write_export", checking_write)
    load_model(os.fspath(source), backend="onnx", quantize=None)
    (entry,) = list(cache.iterdir())
    assert events == [f"lock .{entry.name}.lock", "torch load, locked: True", "export, locked: True"]

    encoder = real_load(GaussianEncoder, source)
    events.clear()
    lock_folder[0] = tmp_path
    export_onnx(encoder, tmp_path / "mine", quantize=None, verify=False)
    assert events == ["lock .mine.lock", "export, locked: True"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "encoder", "mine"]  # no lock file left
