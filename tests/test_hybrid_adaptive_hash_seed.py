"""The adaptive hybrid's dense weight must not depend on the process's hash seed (bm25s's vocabulary order)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import random_gaussians
from kl_retrievers.hybrid import AdaptiveParams, KLHybridStore, SIGNALS

import numpy as np
rng = np.random.default_rng(0)
words = [f"w{{i}}x" for i in range(300)]
p = 1.0 / np.arange(1, 301)
p /= p.sum()
texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 12)), p=p)) for _ in range(400)]
queries = [" ".join(rng.choice(words, size=int(rng.integers(4, 9)), p=p)) for _ in range(40)]
n = len(SIGNALS)
params = AdaptiveParams(SIGNALS, (0.0,) * n, (1.0,) * n, (0.3,) * n, 0.1, "minmax", model="test")
store = KLHybridStore(fusion="adaptive", adaptive_params=params)
store.add(texts, gaussians=random_gaussians(len(texts), 4, seed=0), ids=[f"d{{i}}" for i in range(len(texts))])
for hits in store.search_batch(queries, k=5, query_gaussians=random_gaussians(len(queries), 4, seed=1)):
    print(repr(hits[0].dense_weight), [(h.id, repr(h.score)) for h in hits])
"""


def _run(seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    code = SCRIPT.format(tests=str(ROOT / "tests"))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_adaptive_results_are_bit_identical_across_hash_seeds() -> None:
    outputs = {seed: _run(seed) for seed in ("0", "1", "2", "3", "4", "5")}
    first = outputs["0"]
    assert first.count("\n") == 40 and "None" not in first  # 40 queries, each with an adaptive dense weight
    assert all(out == first for out in outputs.values()), outputs
