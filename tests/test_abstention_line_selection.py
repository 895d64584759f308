"""Which ``runs/abstention/abstention.jsonl`` line the README, docs/results.md and docs/hybrid.md quote.

``results_readme._abstention`` picks the newest line of a model in the shipped setting: stemmed hybrid, not
``--quick``, seed 0, ``--seeds 10``, the default ``--min-answered`` (0.9), the model's backend (the library's
default, int8 ONNX, for the default model; torch for bge) and the model's shipped hybrid threshold. A newer line
run otherwise is not quoted, and a line without a system the pages quote stops the render with a clear message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
import results_readme  # noqa: E402

from kl_retrievers.calibration import recommended_min_confidence  # noqa: E402

MODEL = results.DEFAULT_MODEL
BGE = "bge-small-unit-variance"


def _line(model: str = MODEL, f1: float = 0.5, **changes: Any) -> dict[str, Any]:
    """A synthetic log line in ``model``'s shipped setting (only the fields the selection reads), then ``changes``."""
    threshold = recommended_min_confidence(model, retriever="hybrid", stemmer="english")
    torch = model == BGE
    system: dict[str, Any] = {"threshold": threshold, "held_out_at_threshold": {"f1": f1}}
    system["held_out_other_seeds"] = {"seeds": 10}
    rec: dict[str, Any] = {
        "benchmark": "abstention",
        "command": "python benchmarks/abstention.py --hybrid --seeds 10"
        + (f" --model {model} --backend torch" if torch else ""),
        "model": model,
        "backend": "torch" if torch else None,
        "encoder": "GaussianEncoder" if torch else "OnnxGaussianEncoder",
        "bm25_stemmer": "english",
        "min_answered": 0.9,
        "quick": False,
        "summary": {"hybrid": system, "dense": {"threshold": 0.3, "held_out_at_threshold": {"f1": 0.4}}},
        "held_out": {"seed": 0, "hybrid": {"curve": [{"answered": 1.0}, {"answered": 0.0}]}, "dense": {"curve": []}},
        "started": "2026-12-06T00:00:00+00:00",
    }
    for key, value in changes.items():
        if key == "seeds":
            system["held_out_other_seeds"]["seeds"] = value
        elif key == "threshold":
            system["threshold"] = value
        else:
            rec[key] = value
    return rec


def _root(tmp_path: Path, *lines: dict[str, Any]) -> Path:
    log = tmp_path / results_readme.ABSTENTION_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "change",
    [
        {
            "backend": "torch",
            "encoder": "GaussianEncoder",
            "command": "python benchmarks/abstention.py --hybrid --seeds 10 --backend torch",
        },
        {"backend": None, "encoder": "GaussianEncoder"},  # the library's default on a CUDA machine: torch
        {"backend": "onnx", "encoder": "OnnxGaussianEncoder"},
        {"seeds": 3, "command": "python benchmarks/abstention.py --hybrid --seeds 3"},
        {"min_answered": 0.8, "command": "python benchmarks/abstention.py --hybrid --seeds 10 --min-answered 0.8"},
    ],
)
def test_a_newer_run_in_another_setting_is_not_quoted(tmp_path: Path, change: dict[str, Any]) -> None:
    shipped = _line(f1=0.5)
    newer = _line(f1=0.123, started="2026-12-07T00:00:00+00:00", **change)
    assert results_readme._abstention(_root(tmp_path, shipped, newer), MODEL) == shipped
    # the same newer run in the shipped setting is quoted
    rerun = _line(f1=0.123, started="2026-12-07T00:00:00+00:00")
    assert results_readme._abstention(_root(tmp_path, shipped, newer, rerun), MODEL) == rerun


def test_bge_is_quoted_from_its_torch_runs(tmp_path: Path) -> None:
    shipped = _line(BGE, f1=0.5)
    onnx = _line(BGE, f1=0.123, backend=None, encoder="OnnxGaussianEncoder", command="x --model " + BGE)
    assert results_readme._abstention(_root(tmp_path, shipped, onnx), BGE) == shipped


def test_a_newer_run_at_another_threshold_is_not_quoted_and_the_page_says_so(tmp_path: Path) -> None:
    shipped = _line(f1=0.5)
    other = _line(f1=0.123, threshold=0.23, started="2026-12-08T00:00:00+00:00")
    assert results_readme._abstention(_root(tmp_path, shipped, other), MODEL) == shipped
    # docs/hybrid.md names the rule: not "its newest run" but the newest at the shipped threshold
    page = (REPO / "docs" / "hybrid.md").read_text(encoding="utf-8")
    part = page[page.index(results_readme.begin("abstention")) : page.index(results_readme.end("abstention"))]
    shipped_threshold = recommended_min_confidence(retriever="hybrid")
    assert f"the newest run of the default model at the shipped threshold, {shipped_threshold:g}," in part
    assert "its newest run" not in part
    assert "These are the newest logged run at the shipped threshold (" in " ".join(page.split())


@pytest.mark.parametrize("system", ["dense", "hybrid"])
def test_a_line_without_a_quoted_system_stops_with_a_clear_message(tmp_path: Path, system: str) -> None:
    rec = _line()
    if system == "dense":  # the threshold filter reads the hybrid summary: drop only the held-out curve there
        del rec["summary"]["dense"]
    else:
        del rec["held_out"]["hybrid"]
    with pytest.raises(SystemExit, match=f"started 2026-12-06.*has no {system} results.*rerun `python benchmarks"):
        results_readme._abstention(_root(tmp_path, rec), MODEL)


def test_no_line_in_the_shipped_setting_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"'min_answered': 0.9\}, seed 0, --seeds 10, backend and encoder \(None, "):
        results_readme._abstention(_root(tmp_path, _line(seeds=3)), MODEL)
