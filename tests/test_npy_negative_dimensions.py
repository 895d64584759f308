"""An ``.npy`` header declaring a negative dimension is refused, as ``np.load`` refuses it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers._io import npy_from_buffer, read_npy_header


def _npy_with_shape(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(6.0).reshape(2, 3))
    raw = buf.getvalue()
    old = b"'shape': (2, 3)"
    new = f"'shape': {shape!r}".encode()
    assert old in raw and len(new) <= len(old) + 1
    return raw.replace(old, new.ljust(len(old)))  # the header keeps its length (padded with spaces)


@pytest.mark.parametrize("shape", [(-2, 3), (2, -3), (-1,)])
def test_a_negative_dimension_is_refused(shape: tuple[int, ...], tmp_path: Path) -> None:
    raw = _npy_with_shape(shape)
    with pytest.raises(ValueError):
        np.load(io.BytesIO(raw), allow_pickle=False)  # numpy's own rule
    with pytest.raises(ValueError, match="negative dimensions"):
        npy_from_buffer(bytearray(raw))
    path = tmp_path / "a.npy"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="negative dimensions"):
        read_npy_header(path)
