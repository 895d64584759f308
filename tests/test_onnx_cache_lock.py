"""One ONNX export per cache entry, however many processes load the model for the first time at once.

- Two processes loading one model into one empty ONNX cache (``load_model(..., backend="onnx")``) export it once:
  the second waits for the first (logged at INFO) and uses its export; both encode alike, and the cache holds the
  entry alone (no lock file, no temporary copy).
- The lock (``kl_retrievers._io.lock_file``) is an ``flock``: a lock file left by a killed process is taken at once,
  a holder killed with ``kill -9`` while another waits releases it, and without ``fcntl`` (Windows) the body runs
  unlocked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kl_retrievers
import kl_retrievers._io as io_module
from conftest import make_tiny_encoder
from kl_retrievers._io import lock_file

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
        json.dumps({"exports": exports, "mean": encoded.mean.tolist(), "var": encoded.var.tolist()})
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
        assert f"waiting for writing entry: another process holds {lock}" in caplog.text
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
