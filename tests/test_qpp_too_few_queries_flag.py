"""Fewer than MIN_QUERIES judged queries: the ``qpp`` object says so (``too_few_queries``), not only stderr."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import write_pairs_beir
from kl_retrievers.cli import main
from kl_retrievers.qpp import MIN_QUERIES, qpp_report

FLAGS = ("--baseline", "bm25", "--no-progress", "--json", "--qpp-bootstrap", "20")


def _report(n_queries: int, *, no_relevant: list[str] | None = None) -> dict[str, object]:
    target = {f"q{i}": ((7 * i) % n_queries) / n_queries for i in range(n_queries)}
    values = {"max_score": {q: float(i) for i, q in enumerate(target)}}
    return qpp_report(target, values, no_relevant=no_relevant, n_boot=20)


def test_report_flags_fewer_than_min_queries() -> None:
    with pytest.warns(UserWarning, match=f"only 3 judged queries \\(fewer than {MIN_QUERIES}\\)"):
        few = _report(3)
    assert few["too_few_queries"] is True
    enough = _report(MIN_QUERIES)
    assert enough["too_few_queries"] is False
    # queries without a relevant document are left out, and so do not count
    with pytest.warns(UserWarning, match="only 9 judged queries with a relevant document"):
        excluded = _report(MIN_QUERIES, no_relevant=["q0"])
    assert excluded["too_few_queries"] is True and excluded["excluded_no_relevant"] == 1


def test_evaluate_json_carries_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    few = write_pairs_beir(tmp_path / "few")  # six queries
    with caplog.at_level(logging.WARNING):
        assert (
            main(["evaluate", str(few), "--baseline", "bm25", "--no-progress", "--json", "--qpp-bootstrap", "20"]) == 0
        )
    assert any("only 6 judged queries (fewer than 10)" in r.getMessage() for r in caplog.records)  # the warning stays
    assert json.loads(capsys.readouterr().out)["qpp"]["too_few_queries"] is True
    many = write_pairs_beir(tmp_path / "many", n_queries=12)
    assert main(["evaluate", str(many), *FLAGS]) == 0
    assert json.loads(capsys.readouterr().out)["qpp"]["too_few_queries"] is False
