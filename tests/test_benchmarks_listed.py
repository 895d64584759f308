"""Every script in benchmarks/ is listed on docs/benchmarks.md, as that page says."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_script_is_named_on_the_benchmarks_page() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    assert scripts, "no benchmark scripts found"
    # a module of another script may be named without the folder, as the page names the
    # results_*.py parts of benchmarks/results.py
    missing = [name for name in scripts if f"benchmarks/{name}" not in page and f"`{name}`" not in page]
    assert not missing, f"docs/benchmarks.md does not name: {missing}"
