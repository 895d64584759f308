"""``Gaussians(...)`` in one thread while another thread is still importing ``numpy.ma`` or ``torch``.

A module being imported is in ``sys.modules`` before its body has run, so its classes may not exist yet. The
checks for a masked array or a tensor read ``sys.modules`` (they never import those modules) and used to take the
class from it unguarded: every ``Gaussians(...)`` meanwhile raised ``AttributeError: partially initialized module
'numpy.ma' has no attribute 'MaskedArray'``. numpy 2 imports ``numpy.ma`` lazily (``np.unique`` does, which a
store's load and compaction call), so a hot reload under search traffic failed thousands of requests. A module
without the class yet means no object of that class exists: the checks now say "not one".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians, _is_masked, _is_torch


def _half_imported(name: str) -> types.ModuleType:
    """A module object as ``sys.modules`` holds it while another thread runs its body: no attributes yet."""
    module = types.ModuleType(name)
    module.__spec__ = None
    return module


@pytest.mark.parametrize("name", ["numpy.ma", "torch"])
def test_gaussians_are_built_while_a_module_is_half_imported(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, name, _half_imported(name))
    mean, var = np.zeros((2, 3)), np.ones((2, 3))
    g = Gaussians(mean, var)  # AttributeError before the fix
    assert g.mean.shape == (2, 3) and not g.is_torch
    rows = Gaussians([[0.0, 1.0], [2.0, 3.0]], [np.ones(2), np.ones(2)])  # a list of rows: each row is checked
    assert rows.mean.shape == (2, 2)
    assert not _is_masked(mean) and not _is_torch(mean)


def test_a_loaded_module_is_still_recognised() -> None:
    masked = np.ma.masked_array(np.ones((1, 2)), mask=[[False, True]])
    assert _is_masked(masked)
    with pytest.raises(ValueError, match="masked array with 1 masked value"):
        Gaussians(np.zeros((1, 2)), masked)


def test_gaussians_in_threads_while_numpy_ma_is_first_imported() -> None:
    """The race itself, in a fresh interpreter (numpy.ma not yet imported there): no Gaussians call fails."""
    code = textwrap.dedent(
        """
        import sys, threading
        import numpy as np
        from kl_retrievers import Gaussians
        if "numpy.ma" in sys.modules:
            print("SKIP numpy.ma loaded at startup"); raise SystemExit
        errors, stop = [], threading.Event()

        def build():
            m, v = np.zeros((1, 4)), np.ones((1, 4))
            while not stop.is_set():
                try:
                    Gaussians(m, v)
                except Exception as exc:
                    errors.append(repr(exc))
                    return

        threads = [threading.Thread(target=build) for _ in range(4)]
        for t in threads:
            t.start()
        import numpy.ma
        stop.set()
        for t in threads:
            t.join()
        print("errors", len(errors), errors[:1])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    assert done.stdout.strip() == "errors 0 []", done.stdout + done.stderr
