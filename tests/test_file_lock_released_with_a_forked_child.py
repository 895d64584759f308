"""A file lock released by its holder is free at once, even while a child forked during the hold lives on.

flock locks belong to the open file description, which a forked child shares: closing the holder's descriptor
alone left the lock held until the child exited (a multiprocessing worker started during an ONNX export kept
every other loader waiting).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from kl_retrievers._io import _lock_fd, _unlock_fd

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and flock")


def test_a_released_lock_is_free_while_a_child_forked_during_the_hold_lives(tmp_path: Path) -> None:
    path = tmp_path / ".entry.lock"
    path.touch()
    fd = _lock_fd(path, wait=True)
    assert fd is not None
    pid = os.fork()
    if pid == 0:  # the child: holds nothing on purpose, lives a while, exits without cleanup
        time.sleep(5)
        os._exit(0)
    try:
        _unlock_fd(fd)
        again = _lock_fd(path, wait=False)  # another open file description: free only if the lock was released
        assert again is not None, "the lock stayed held by the forked child after the holder released it"
        _unlock_fd(again)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
