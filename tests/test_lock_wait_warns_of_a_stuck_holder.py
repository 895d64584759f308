"""A process waiting for a file lock (``kl_retrievers._io.lock_file``) says who holds it once the wait grows long.

A holder that is paused (Ctrl-Z, a debugger in a notebook) made every other loader wait silently: the "waiting for"
line is INFO, hidden by default. The holder now writes its PID into the lock file, and a waiter logs one WARNING
after ``LOCK_WAIT_WARNING_S`` naming the lock file, the holder's PID and what it waits for; it still takes the lock
once the holder releases it, and Ctrl-C during the wait leaves no descriptor open.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kl_retrievers
import kl_retrievers._io as io_module
from kl_retrievers._io import lock_file

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs flock")

#: A holder process: takes the lock through lock_file, says so, and releases it when its stdin closes.
_HOLDER = (
    "import sys\n"
    "from kl_retrievers._io import lock_file\n"
    "with lock_file(sys.argv[1], purpose='holding'):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"
)


def _holder_env() -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(kl_retrievers.__file__).resolve().parents[1])  # the code under test, in the child too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def test_the_holder_writes_its_pid_into_the_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / ".entry.lock"
    with lock_file(lock, purpose="writing entry"):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


def test_a_long_wait_warns_once_naming_the_holder_then_takes_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(io_module, "LOCK_WAIT_WARNING_S", 0.5, raising=False)  # (absent before the warning)
    lock = tmp_path / ".entry.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, os.fspath(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_holder_env(),
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        stdin = holder.stdin

        def release_once_warned() -> None:  # the holder resumes only after the waiter has warned (or 30 s)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(r.levelno == logging.WARNING for r in caplog.records):
                time.sleep(0.05)
            time.sleep(0.3)  # a little longer: a second warning would come now, if any
            stdin.close()

        releaser = threading.Thread(target=release_once_warned)
        releaser.start()
        with (
            caplog.at_level(logging.INFO, logger="kl_retrievers._io"),
            lock_file(lock, purpose="writing entry") as waited,
        ):
            assert waited
            assert lock.read_text().strip() == str(os.getpid())  # now this process holds it
        releaser.join()
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()
    assert f"waiting for writing entry: another process or thread holds {lock}" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"process {holder.pid} holds the lock {lock}" in warnings[0], warnings[0]
    assert "still waiting for writing entry" in warnings[0], warnings[0]
    assert "paused" in warnings[0] and "released when that process ends" in warnings[0], warnings[0]
    assert not lock.exists()


def test_ctrl_c_while_waiting_leaves_no_descriptor_open(tmp_path: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts descriptors in /proc/self/fd")
    lock = tmp_path / ".entry.lock"
    lock.touch()
    held = io_module._lock_fd(lock, wait=True)  # another open file description holds it
    assert held is not None
    try:
        before = len(os.listdir("/proc/self/fd"))
        ctrl_c = threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt), lock_file(lock, purpose="writing entry"):
            pytest.fail("the lock was taken while held")
        ctrl_c.join()
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        io_module._unlock_fd(held)
