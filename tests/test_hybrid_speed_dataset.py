"""``benchmarks/hybrid_speed.py --dataset``: real corpus texts and queries with their cached Gaussians, and
``--clock``; the options that only mean something with ``--dataset`` are refused without it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import hybrid_speed  # noqa: E402

from conftest import PAIR_TEXTS, make_tiny_encoder, write_pairs_beir  # noqa: E402


def test_dataset_times_the_real_texts_and_queries_with_cached_gaussians(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_pairs_beir(tmp_path / "beir", n_queries=4)
    cache = tmp_path / "cache"
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(cache))
    loaded: list[tuple[Any, Any]] = []

    def load_model(name: Any, backend: Any) -> Any:
        loaded.append((name, backend))
        return make_tiny_encoder()

    monkeypatch.setattr(hybrid_speed, "load_model", load_model)
    built: list[list[str] | None] = []
    searched: list[str] = []
    real_build = hybrid_speed.build_store

    def build(n: int, dim: int, **kw: Any) -> Any:
        built.append(kw.get("texts"))
        store = real_build(n, dim, **kw)
        real_search = store.search

        def search(query: str, **skw: Any) -> Any:
            searched.append(query)
            return real_search(query, **skw)

        setattr(store, "search", search)  # noqa: B010 (an instance attribute over the method)
        return store

    monkeypatch.setattr(hybrid_speed, "build_store", build)
    hybrid_speed.main(["--dataset", str(root), "--repeats", "1", "--clock", "cpu", "--backend", "torch"])
    out = capsys.readouterr().out
    assert loaded == [(None, "torch")]  # the default model on the backend asked for
    assert built == [PAIR_TEXTS]  # the corpus's texts, not random words
    assert set(searched) == set(PAIR_TEXTS[:4])  # every one of the split's queries, and only those
    assert "n=6 dim=8 queries=4" in out and "cpu ms per search" in out
    last = out.strip().splitlines()[-1].split()
    assert [field.split("=")[0] for field in last] == [
        "rrf_ms",
        "convex_ms",
        "adaptive_ms",
        "filtered_ms",
        "filter_calls_per_row",
        "kl_half_ms",
    ]
    assert any(cache.rglob("*.npy"))  # the Gaussians went through the encoding cache


def test_dataset_options_need_dataset_and_exclude_gaussians(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("no work before the command line is checked")

    monkeypatch.setattr(hybrid_speed, "build_store", refuse)
    monkeypatch.setattr(hybrid_speed, "load_dataset", refuse)
    for flags, said in (
        (["--split", "train"], "pass --dataset too"),
        (["--quick", "--model", "minilm-gauss-soup"], "pass --dataset too"),
        (["--dataset", str(tmp_path), "--gaussians", str(tmp_path / "g.npz")], "pass one"),
        (["--quick", "--clock", "gpu"], "--clock"),
    ):
        with pytest.raises(SystemExit) as exc:
            hybrid_speed.main(flags)
        assert exc.value.code == 2 and said in capsys.readouterr().err


def test_best_ms_reads_the_clock_it_is_given() -> None:
    ticks = iter([0.0, 3.0, 10.0, 12.0, 20.0, 26.0])  # three runs of 3, 2 and 6 seconds

    def clock() -> float:
        return next(ticks)

    calls: list[int] = []
    assert hybrid_speed._best_ms(calls.append, 4, 3, clock) == 2.0 / 4 * 1000.0
    assert calls == [0, 1, 2, 3] * 3
    assert hybrid_speed.CLOCKS["cpu"] is not hybrid_speed.CLOCKS["wall"]


def test_digest_hashes_every_result_field_and_times_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--digest``: the same store gives the same hash twice; a score changed in its last bit changes every part."""
    store = hybrid_speed.build_store(300, 8)
    queries, qg = ["w1 w2 w3", "w4 w5"], store.kl.get_gaussians(["d0", "d1"])
    first = hybrid_speed.results_digest(store, queries, qg, (3, 100))
    assert first == hybrid_speed.results_digest(store, queries, qg, (3, 100))
    assert [part.split("=")[0] for part in first.split()] == ["rrf", "convex", "adaptive", "results_digest"]
    real_search = store.search

    def nudged(*args: Any, **kwargs: Any) -> Any:
        hits = real_search(*args, **kwargs)
        return [type(h)(**{**h.__dict__, "neg_kl": float(hybrid_speed.np.nextafter(h.neg_kl, 0.0))}) for h in hits]

    monkeypatch.setattr(store, "search", nudged)
    changed = hybrid_speed.results_digest(store, queries, qg, (3, 100))
    assert all(a != b for a, b in zip(first.split(), changed.split(), strict=True))
