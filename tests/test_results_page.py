"""``docs/results.md`` is written by ``benchmarks/results.py`` from the logs committed under ``runs/``, and only so."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402

#: A float literal with three or more decimals: a figure typed into the renderer instead of read from a log.
FIGURE = re.compile(r"(?<![\w.])\d+\.\d{3,}(?![\w.])")


def test_page_is_what_the_logs_render() -> None:
    assert results.main(["--check"]) == 0, "docs/results.md is stale: run `python benchmarks/results.py`"


@pytest.mark.parametrize("renderer", ["results.py", "results_more.py", "results_qpp.py", "results_choosing.py"])
def test_renderer_types_no_figure_and_stays_small(renderer: str) -> None:
    """No renderer of the pages (``results.py`` and the modules whose sections it writes) types a figure."""
    source = (REPO / "benchmarks" / renderer).read_text(encoding="utf-8")
    assert FIGURE.findall(source) == []
    assert len(source.splitlines()) < 300


def test_every_figure_on_the_page_comes_from_the_logs() -> None:
    """Each nDCG@10 / Recall@100 cell of the main table is a logged value (means are computed from them)."""
    page = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    records = results.load_records()
    assert {s for s, _ in records} >= {"bm25", "default"}, "the page needs at least BM25 and the default"
    logged = {results.num(r[m]) for r in records.values() for m in ("ndcg@10", "recall@100")}
    cells = re.findall(r"(\d\.\d{4}) \((\d\.\d{4})\)", page)
    assert len(cells) == len(records)
    assert {x for cell in cells for x in cell} <= logged


def test_check_fails_when_the_page_or_a_log_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "results.md"
    page.write_text(results.render(), encoding="utf-8")
    assert results.main(["--check", "--page", str(page)]) == 0
    edited = page.read_text(encoding="utf-8").replace("| SciFact | test |", "| SciFact | test (edited) |", 1)
    page.write_text(edited, encoding="utf-8")
    assert results.main(["--check", "--page", str(page)]) == 1

    # A copy of the logs with one figure changed renders a different page.
    for log in (results.EVAL_LOG, results.QPP_LOG):
        (tmp_path / log).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / log, tmp_path / log)
    lines = (tmp_path / results.EVAL_LOG).read_text(encoding="utf-8").splitlines()
    # the newest line of a (system, collection) the page shows (later lines may log other systems)
    i = max(
        j
        for j, line in enumerate(lines)
        if (r := json.loads(line))["system"] in results.SYSTEMS
        and r["collection"] in results.COLLECTIONS
        and r["split"] == results.SPLIT
    )
    newest = json.loads(lines[i])
    newest["ndcg@10"] = 0.125
    lines[i] = json.dumps(newest)
    (tmp_path / results.EVAL_LOG).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for rec in results.load_records(tmp_path).values():
        (tmp_path / rec["per_query_file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rec["per_query_file"], tmp_path / rec["per_query_file"])
    changed = results.render(tmp_path)
    assert changed != results.render() and "0.1250" in changed


def test_qpp_section_figures_come_from_the_logs() -> None:
    """The QPP/calibration section: its renderer types no figure; taus and ECEs on the page are the logged ones."""
    import results_qpp

    source = (REPO / "benchmarks" / "results_qpp.py").read_text(encoding="utf-8")
    assert FIGURE.findall(source) == []
    page = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    section = page[page.index("## Query performance prediction") :]
    records = results_qpp._read(REPO / results_qpp.QPP_LOG)
    default = results_qpp._newest(records, results_qpp.DEFAULT)
    assert set(default) == set(results_qpp.COLLECTIONS), "the default's QPP lines of the four test splits"
    for coll, label in results_qpp.COLLECTIONS.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
        for name in results_qpp.PREDICTORS:
            assert f"{default[coll]['qpp']['predictors'][name]['tau']:+.3f}" in row, (coll, name)
    calib = results_qpp._read(REPO / results_qpp.CALIB_LOG)
    calib = [r for r in calib if r.get("model", results_qpp.DEFAULT) == results_qpp.DEFAULT]  # as the renderer
    # the newest line of each (retriever, split), as the renderer shows it: a refitted calibrator's report
    # supersedes the older lines of the same split, which stay in the log
    newest = {(r.get("retriever", "dense"), r["collection"], r["split"]): r for r in calib}
    tests = [r for r in newest.values() if r["role"] == "test"]
    assert {r["collection"] for r in tests} == set(results_qpp.COLLECTIONS)
    for r in tests:
        assert f"| {r['collection']}:test | test | {r['queries']} |" in section
        assert f"**{r['ece']:.3f}**" in section


def test_check_fails_when_the_choosing_page_is_stale(tmp_path: Path) -> None:
    """docs/choosing-a-model.md's marked part (quality table, comparison) is rendered from the logs and checked."""
    import results_choosing

    page = tmp_path / "results.md"
    page.write_text(results.render(), encoding="utf-8")
    choosing = tmp_path / "choosing-a-model.md"
    shutil.copy(REPO / results_choosing.PAGE, choosing)
    args = ["--check", "--page", str(page), "--choosing", str(choosing)]
    assert results.main(args) == 0, "docs/choosing-a-model.md is stale: run `python benchmarks/results.py`"

    # A figure of the table typed by hand (here: the logged bge-small-unit-variance SciFact cell) fails --check.
    found, baseline = results_choosing.bundled_records(REPO, results.EVAL_LOG, results.COLLECTIONS)
    logged = f"{found['bge-small-unit-variance']['scifact']['ndcg@10']:.4f}"
    text = choosing.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `bge-small-unit-variance` |"))
    assert f"| {logged} |" in row
    choosing.write_text(text.replace(row, row.replace(f"| {logged} |", "| 0.9999 |")), encoding="utf-8")
    assert results.main(args) == 1
    # ... and so does a stale comparison figure or int8 gap; the normal render writes the logged values back.
    gap = f"{results_choosing.int8_gap(found['minilm-unit-variance'], baseline):.3f}"
    stale = choosing.read_text(encoding="utf-8").replace(f"up to {gap}:", "up to 0.001:", 1)
    choosing.write_text(stale, encoding="utf-8")
    assert results.main(args) == 1
    assert results.main(["--page", str(page), "--choosing", str(choosing)]) == 0
    assert choosing.read_text(encoding="utf-8") == (REPO / results_choosing.PAGE).read_text(encoding="utf-8")

    # Prose outside the marked part is the page's own: editing it does not make the page stale.
    choosing.write_text(text.replace("## Which one?", "## Which model?", 1), encoding="utf-8")
    assert results.main(args) == 0
    # Without its markers the page cannot be rendered, and the message says what is missing.
    choosing.write_text(text.replace(results_choosing.END, ""), encoding="utf-8")
    with pytest.raises(SystemExit, match="End of the part written"):
        results.main(args)


def test_choosing_page_figures_come_from_the_logs() -> None:
    """Each model's four nDCG@10 cells and the taus of its uncertainty are its logged values."""
    import results_choosing
    import results_qpp

    text = (REPO / results_choosing.PAGE).read_text(encoding="utf-8")
    region = text[text.index(results_choosing.BEGIN) : text.index(results_choosing.END)]
    found, _ = results_choosing.bundled_records(REPO, results.EVAL_LOG, results.COLLECTIONS)
    records = results.load_records()
    found[results.DEFAULT_MODEL] = {c: records[("default", c)] for c in results.COLLECTIONS}
    for name, recs in found.items():
        row = next(line for line in region.splitlines() if line.startswith(f"| `{name}`"))
        for coll in results.COLLECTIONS:
            assert f"| {recs[coll]['ndcg@10']:.4f}" in row, (name, coll)
            tau = results_qpp._tau(recs[coll], "uncertainty")
            if tau is not None and name != results.DEFAULT_MODEL:
                assert f"{results_choosing.LABELS[coll][1]} {tau:+.3f}" in row, (name, coll)
    for system in ("bm25", "minilm", "bge-small"):
        assert " / ".join(f"{records[(system, c)]['ndcg@10']:.4f}" for c in results.COLLECTIONS) in region
