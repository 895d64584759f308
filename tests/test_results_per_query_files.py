"""The per-query files of ``runs/eval/`` stay with the log line that names them, and --check proves it.

``benchmarks/results.py --run`` / ``--run-models`` write each run's per-query file under a name of its own
(never over another line's file); ``--check`` fails when a line the pages render has a per-query file whose
means are not the line's figures; the README's int8 figures are read from lines recorded as ``onnx-int8`` only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
import results_more  # noqa: E402
import results_readme  # noqa: E402

MODEL = results.DEFAULT_MODEL


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _append(path: Path, rec: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


class _FakeCli:
    """Stands in for ``subprocess.run``: ``git rev-parse`` and ``kl-retrievers evaluate --per-query FILE --json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.evaluated: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if argv[0] == "git":
            return subprocess.CompletedProcess(argv, 0, "0123456789abcdef\n", "")
        self.evaluated.append(argv)
        pq = self.root / argv[argv.index("--per-query") + 1]
        score = 0.25 * len(self.evaluated)  # each run its own figures
        pq.parent.mkdir(parents=True, exist_ok=True)
        pq.write_text(json.dumps({"per_query": {"q1": {"ndcg@10": score}}, "meta": {}}), encoding="utf-8")
        record = {"split": "test", "ndcg@10": score, "queries": 1, "model": argv[argv.index("evaluate") + 1]}
        return subprocess.CompletedProcess(argv, 0, json.dumps(record), "")


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, _FakeCli]:
    """``results.ROOT`` is an empty folder but for an older line's per-query file, as committed before this fix."""
    (tmp_path / results.EVAL_LOG).parent.mkdir(parents=True)
    old = tmp_path / "runs/eval/pq/bm25.scifact.test.json"
    old.parent.mkdir(parents=True)
    old.write_text('{"per_query": {"q1": {"ndcg@10": 0.5}}}', encoding="utf-8")
    _append(tmp_path / results.EVAL_LOG, {"system": "bm25", "collection": "scifact", "per_query_file": str(old)})
    fake = _FakeCli(tmp_path)
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results.subprocess, "run", fake)
    return tmp_path, fake


def test_each_run_writes_a_per_query_file_of_its_own(
    fake_root: tuple[Path, _FakeCli], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, fake = fake_root
    seconds, gmtime = iter(range(1_800_000_000, 1_800_000_100)), time.gmtime  # a run takes seconds: a clock ticks
    monkeypatch.setattr(results.time, "gmtime", lambda *_: gmtime(next(seconds)))
    old = root / "runs/eval/pq/bm25.scifact.test.json"
    before = old.read_text(encoding="utf-8")
    results.run(["bm25"], ["scifact"])
    results.run([MODEL], ["scifact"], "onnx")
    results.run([MODEL], ["scifact"], "torch")
    results.run([MODEL], ["scifact"])  # evaluate's default backend: torch
    assert old.read_text(encoding="utf-8") == before, "an older line's per-query file was overwritten"
    logged = _lines(root / results.EVAL_LOG)[1:]
    files = [r["per_query_file"] for r in logged]
    assert len(set(files)) == len(files) == 4, files
    assert files[0].startswith("runs/eval/pq/bm25.scifact.test.")
    assert files[1].startswith(f"runs/eval/pq/{MODEL}.onnx.scifact.test.")  # onnx and torch runs apart
    assert files[2].startswith(f"runs/eval/pq/{MODEL}.torch.scifact.test.")
    assert files[3].startswith(f"runs/eval/pq/{MODEL}.torch.scifact.test.")
    for rec, argv in zip(logged, fake.evaluated, strict=True):
        assert argv[argv.index("--per-query") + 1] == rec["per_query_file"]  # the file this run wrote
        assert rec["per_query_file"].endswith(rec["started"].replace("-", "").replace(":", "") + "Z.json")
        got = json.loads((root / rec["per_query_file"]).read_text(encoding="utf-8"))["per_query"]["q1"]["ndcg@10"]
        assert got == rec["ndcg@10"], rec


def test_a_run_never_overwrites_an_existing_per_query_file(
    fake_root: tuple[Path, _FakeCli], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one system and collection started in the same second: the second stops before evaluating."""
    root, fake = fake_root
    same = time.gmtime(1_800_000_000)
    monkeypatch.setattr(results.time, "gmtime", lambda *_: same)
    results.run(["bm25"], ["scifact"])
    written = root / _lines(root / results.EVAL_LOG)[-1]["per_query_file"]
    text = written.read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match="not overwriting"):
        results.run(["bm25"], ["scifact"])
    assert len(fake.evaluated) == 1 and written.read_text(encoding="utf-8") == text
    assert len(_lines(root / results.EVAL_LOG)) == 2


def _copy_rendered(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """A copy under ``root`` of the eval and QPP logs and of the per-query files of the lines the pages render."""
    for log in (results.EVAL_LOG, results.QPP_LOG):
        (root / log).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / log, root / log)
    records = results.load_records(root)
    found, twin = results_readme.bundled_records(root, results.EVAL_LOG, results.COLLECTIONS)
    groups = [*found.values(), twin, results_readme.int8_records(root, MODEL), records]
    for rec in (r for g in groups for r in g.values()):
        (root / rec["per_query_file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rec["per_query_file"], root / rec["per_query_file"])
    return records


def test_check_names_a_rendered_line_whose_per_query_file_does_not_match(tmp_path: Path) -> None:
    records = _copy_rendered(tmp_path)
    assert results_readme.stale_per_query(tmp_path, records, MODEL) == []
    # a later run rewrote the file the bm25 SciFact line names (as --run did before): its means moved
    rec = records[("bm25", "scifact")]
    path = tmp_path / rec["per_query_file"]
    doc = json.loads(path.read_text(encoding="utf-8"))
    first = next(iter(doc["per_query"].values()))
    first["ndcg@10"] = 1.0 - first["ndcg@10"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    mean = float(np.mean([q["ndcg@10"] for q in doc["per_query"].values()]))
    stale = results_readme.stale_per_query(tmp_path, records, MODEL)
    assert len(stale) == 1, stale
    assert "the line of bm25 on scifact" in stale[0] and rec["started"] in stale[0]
    assert rec["per_query_file"] in stale[0] and f"ndcg@10 {rec['ndcg@10']} logged, {mean:.6f} in the file" in stale[0]
    # a missing file of a rendered QPP line (the default's) is named too
    qpp = records[("default", "cranfield")]
    (tmp_path / qpp["per_query_file"]).unlink()
    stale = results_readme.stale_per_query(tmp_path, records, MODEL)
    missing = [s for s in stale if s.startswith(f"runs/qpp/qpp.jsonl: the line of {MODEL} on cranfield")]
    assert len(stale) == 2 and len(missing) == 1, stale
    assert qpp["per_query_file"] in missing[0] and "cannot read per-query file" in missing[0]


def test_check_exits_1_on_a_stale_per_query_file(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """Self-contained: no page is rendered (the live README's prose may be mid-edit), only the stale check counts."""
    monkeypatch.setattr(results, "sync", lambda path, text, check: 0)  # the pages themselves match
    for name in (
        "render",
        "render_choosing",
        "render_readme",
        "render_hybrid_page",
        "render_abstention",
        "render_backbones",
    ):
        monkeypatch.setattr(results, name, lambda *args, **kwargs: "")
    monkeypatch.setattr(results, "stale_per_query", lambda root, records, model: ["L: ndcg@10 0.5 logged, 0.4"])
    assert results.main(["--check"]) == 1
    assert "per-query file does not match: L: ndcg@10 0.5 logged, 0.4" in capsys.readouterr().err
    monkeypatch.setattr(results, "stale_per_query", lambda root, records, model: [])
    assert results.main(["--check"]) == 0


def _readme_logs(root: Path) -> Path:
    for rel in (results.EVAL_LOG, results_readme.HYBRID_LOG, results_readme.ABSTENTION_LOG):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    return root


def test_the_readme_int8_figures_are_read_from_onnx_int8_lines_only(tmp_path: Path) -> None:
    root = _readme_logs(tmp_path)
    records = results.load_records(REPO)
    shipped = results_readme.readme_phrases(root, MODEL, records)
    int8 = [r for r in _lines(root / results.EVAL_LOG) if r["system"] == MODEL and r.get("backend") == "onnx-int8"]
    assert {r["collection"] for r in int8} == set(results_readme.README_COLLECTIONS)
    # newer runs of the model on torch or on a float32 ONNX graph are not its int8 figures
    for backend in ("torch", "onnx-float32"):
        for rec in int8:
            _append(root / results.EVAL_LOG, {**rec, "backend": backend, "ndcg@10": 0.125})
    assert results_readme.readme_phrases(root, MODEL, records) == shipped
    # a newer int8 line is quoted, its gap to the torch row computed from the logs as the largest of a collection
    _append(root / results.EVAL_LOG, {**int8[0], "ndcg@10": int8[0]["ndcg@10"] + 0.01})
    new = {r["collection"]: r["ndcg@10"] for r in int8} | {int8[0]["collection"]: int8[0]["ndcg@10"] + 0.01}
    torch = {c: records[("default", c)]["ndcg@10"] for c in results_readme.README_COLLECTIONS}
    gap = max(abs(new[c] - torch[c]) for c in torch)
    phrase = results_readme.readme_phrases(root, MODEL, records)[0]
    assert phrase.startswith(f"within {gap:.4f} of the torch row") and phrase != shipped[0]
    assert f"(mean {np.mean(list(new.values())):.4f} against {np.mean(list(torch.values())):.4f})" in phrase


def test_the_readme_int8_figures_need_an_onnx_int8_line_of_each_collection(tmp_path: Path) -> None:
    root = _readme_logs(tmp_path)
    log = root / results.EVAL_LOG
    lines = _lines(log)
    for rec in lines:
        if rec["system"] == MODEL and rec.get("collection") == "cranfield":
            rec["backend"] = "torch"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    with pytest.raises(SystemExit, match=f"no onnx-int8 test line of {MODEL} on cranfield"):
        results_readme.readme_phrases(root, MODEL, results.load_records(REPO))


def test_two_runs_started_in_the_same_second_do_not_share_a_per_query_file(
    fake_root: tuple[Path, _FakeCli], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is claimed atomically: of two runs passing the old exists() check together, one stops."""
    root, fake = fake_root
    same = time.gmtime(1_800_000_000)
    monkeypatch.setattr(results.time, "gmtime", lambda *_: same)
    real, barrier = fake.__call__, threading.Barrier(2)

    def slow(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if argv[0] != "git":
            time.sleep(0.3)  # evaluating: the other run checks the name meanwhile
        return real(argv, **kwargs)

    monkeypatch.setattr(results.subprocess, "run", slow)
    stopped: list[str] = []

    def go() -> None:
        barrier.wait()
        try:
            results.run(["bm25"], ["scifact"])
        except SystemExit as exc:
            stopped.append(str(exc))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logged = _lines(root / results.EVAL_LOG)[1:]
    assert len(logged) == 1 and len(fake.evaluated) == 1, logged
    assert len(stopped) == 1 and "not overwriting" in stopped[0]
    got = json.loads((root / logged[0]["per_query_file"]).read_text(encoding="utf-8"))["per_query"]["q1"]["ndcg@10"]
    assert got == logged[0]["ndcg@10"]


def test_a_failed_run_gives_its_claimed_name_back(
    fake_root: tuple[Path, _FakeCli], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = fake_root
    same = time.gmtime(1_800_000_000)
    monkeypatch.setattr(results.time, "gmtime", lambda *_: same)
    monkeypatch.setattr(results.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 1, "", "boom"))
    with pytest.raises(SystemExit, match="boom"):
        results.run(["bm25"], ["scifact"])
    assert sorted(p.name for p in (root / "runs/eval/pq").iterdir()) == ["bm25.scifact.test.json"]


def test_run_models_refuses_a_system_name(fake_root: tuple[Path, _FakeCli], capsys: Any) -> None:
    """``--run-models default --backend onnx`` ran the default without --backend and logged it as ``default``."""
    _, fake = fake_root
    with pytest.raises(SystemExit) as exc:
        results.main(["--run-models", "default", "bge-small", "--backend", "onnx"])
    assert exc.value.code == 2 and fake.evaluated == []
    assert "--run-models default bge-small: a system of --run" in capsys.readouterr().err


def _rewrite_file(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["per_query"] = change(doc["per_query"])
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_check_names_a_per_query_file_with_no_or_other_queries(tmp_path: Path) -> None:
    """An emptied file (mean of no queries: NaN, which compared as equal) or one with more queries (same means)."""
    records = _copy_rendered(tmp_path)
    rec = records[("bm25", "scifact")]
    path = tmp_path / rec["per_query_file"]
    _rewrite_file(path, lambda pq: {})
    stale = results_readme.stale_per_query(tmp_path, records, MODEL)
    assert len(stale) == 1 and "the line of bm25 on scifact" in stale[0], stale
    assert f"0 queries in the file, {rec['queries']} logged" in stale[0]
    shutil.copy(REPO / rec["per_query_file"], path)
    _rewrite_file(path, lambda pq: {**pq, **{f"{q}_again": v for q, v in pq.items()}})  # every query twice
    stale = results_readme.stale_per_query(tmp_path, records, MODEL)
    assert len(stale) == 1 and f"{2 * rec['queries']} queries in the file, {rec['queries']} logged" in stale[0]


def test_the_bundled_table_row_of_the_default_is_its_int8_lines(tmp_path: Path) -> None:
    """A newer torch ``--run-models`` line of the default does not turn the row the docs call int8 into torch."""
    log = tmp_path / results.EVAL_LOG
    log.parent.mkdir(parents=True)
    base = {"system": MODEL, "split": "test", "queries": 1, "per_query_file": "x"}
    for coll in results.COLLECTIONS:
        onnx = f"kl-retrievers evaluate {coll} --model {MODEL} --model-backend onnx"
        _append(log, {**base, "collection": coll, "ndcg@10": 0.375, "backend": "onnx-int8", "command": onnx})
    for coll in results.COLLECTIONS:
        torch = f"kl-retrievers evaluate {coll} --model {MODEL}"
        _append(log, {**base, "collection": coll, "ndcg@10": 0.875, "backend": "torch", "command": torch})
    lines = results_more.bundled_models_section(tmp_path, results.EVAL_LOG, results.COLLECTIONS, {}, MODEL)
    row = [line for line in lines if "logged by `--run-models`" in line]
    assert len(row) == 1 and row[0].count("0.3750") == 5 and row[0].endswith("| onnx |"), row
    assert not any("0.8750" in line for line in lines)
