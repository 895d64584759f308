"""``benchmarks/hard_gaussians.py``: a ``--tiny`` run of every part (Milvus Lite included) prints its tables and
summary line and logs one JSON line per measurement with the command, commit and time; ``--quick`` leaves part d out;
explicit sizes win over the presets and counts of 0 are refused."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import hard_gaussians  # noqa: E402


def test_a_tiny_run_measures_every_part_and_logs_each_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "runs" / "hard.jsonl"
    assert hard_gaussians.main(["--tiny", "--log", str(log)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    fields = dict(item.split("=") for item in out[-1].split())
    assert list(fields) == [
        "offset_recall_milvus",
        "offset_recall_klstore",
        "offset_recall_uncentred",
        "score_rel_diff",
        "recentre_time_ratio",
        "prove_flat_time_ratio",
    ], out[-1]
    assert not any(math.isnan(float(v)) for v in fields.values()), out[-1]  # every part ran
    assert fields["offset_recall_milvus"] == fields["offset_recall_klstore"] == "1.000"
    assert sum(line.startswith(("a. ", "b. ", "c. ", "d. ")) for line in out) == 4

    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [r["part"] for r in records] == ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 3
    for r in records:
        assert r["benchmark"] == "hard_gaussians" and r["command"].startswith("python benchmarks/hard_gaussians.py")
        assert "--tiny" in r["command"] and r["time"] and "commit" in r and r["cpus"] >= 1
    by = {(r["part"], r["store"], r.get("state")): r for r in records}
    # exact stores: every query's float64 top 10; the flat KLStore's fallbacks stop with the rebuild
    assert by[("a", "KLStore flat", None)]["recall"] == 1.0
    assert by[("a", "MilvusKLStore flat IP, prove_flat=True", None)]["recall"] == 1.0
    assert by[("d", "MilvusKLStore flat IP, prove_flat=True", None)]["recall"] == 1.0
    deleted = by[("c", "KLStore flat", "outlier deleted")]
    rebuilt = by[("c", "KLStore flat", "after rebuild()")]
    assert deleted["float64_fallbacks"] == deleted["queries"] and deleted["centre_mean"] == 0.0
    assert rebuilt["float64_fallbacks"] == 0 and rebuilt["recall"] == 1.0
    assert rebuilt["centre_mean"] == pytest.approx(100, abs=0.1)
    wide = by[("b", "MilvusKLStore flat IP", None)]
    assert len(wide["scores"]) == 2 and wide["rel_diff_as_given_max"] < 1e-6


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, argparse.Namespace]]:
    """The parts called, with the arguments they got (no store is built)."""
    calls: list[tuple[str, argparse.Namespace]] = []

    def stub(part: str) -> Any:
        def run(args: argparse.Namespace, *_: Any) -> list[dict[str, Any]]:
            calls.append((part, args))
            return []

        return run

    for part, name in zip("abcd", ("part_offset", "part_wide", "part_recentre", "part_prove"), strict=True):
        monkeypatch.setattr(hard_gaussians, name, stub(part))
    return calls


def test_quick_leaves_part_d_out_and_explicit_sizes_win(
    seen: list[tuple[str, argparse.Namespace]], capsys: pytest.CaptureFixture[str]
) -> None:
    hard_gaussians.main(["--quick", "--no-log"])
    assert [p for p, _ in seen] == ["a", "b", "c"]
    assert seen[0][1].offset_docs == 2000 and seen[2][1].recentre_docs == 20_000 and seen[0][1].repeats == 3
    seen.clear()
    hard_gaussians.main(["--no-log"])
    assert [p for p, _ in seen] == ["a", "b", "c", "d"] and seen[3][1].prove_dim == 384
    seen.clear()
    hard_gaussians.main(["--tiny", "--offset-docs", "7", "--parts", "a", "--no-log"])
    assert [p for p, _ in seen] == ["a"]
    assert seen[0][1].offset_docs == 7 and seen[0][1].offset_dim == hard_gaussians.TINY["offset_dim"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("offset_recall_milvus=nan ")


@pytest.mark.parametrize("flag", ["--offset-docs", "--wide-trials", "--recentre-queries", "--prove-dim", "--repeats"])
def test_counts_below_one_are_refused(
    seen: list[tuple[str, argparse.Namespace]], capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        hard_gaussians.main([flag, "0", "--no-log"])
    assert exc.value.code == 2 and flag in capsys.readouterr().err and not seen
