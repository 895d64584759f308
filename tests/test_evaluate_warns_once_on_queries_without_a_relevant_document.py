"""``kl-retrievers evaluate`` says once, not twice, that QPP leaves out the queries without a relevant document.

With ``--qpp``, ``--json`` or ``--per-query``, a query dropped to zero judgements (``--unknown-docs drop``) or
judged grade 0 only was warned about by the dataset's drop warning, by evaluate's warning on queries without a
relevant document, and by QPP's own ``left out of the QPP correlations`` warning, which repeated the second. Now
evaluate's warning says that the QPP correlations leave them out, and QPP logs its count at INFO in that run
(``no_relevant_warned``). Library callers of :func:`~kl_retrievers.qpp.qpp_report` keep its warning.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest

from conftest import write_pairs_beir
from kl_retrievers.cli import main
from kl_retrievers.qpp import qpp_report

#: Six queries, ``q<i>`` asking for ``d<i>``'s words (:func:`conftest.write_pairs_beir`): q2 is judged grade 0
#: only; q5 judged only GHOST, outside the corpus (no judgement left with drop)
QRELS = "q0\td0\t1\nq1\td1\t1\nq2\td2\t0\nq3\td3\t1\nq4\td4\t1\nq5\tGHOST\t1\n"
QPP_NOTE = "no relevant document (no grade > 0)"  # "1 of ... has", "2 of ... have"


@pytest.mark.parametrize("flags", [("--json",), ("--qpp",), ("--per-query", "PQ")], ids=["json", "qpp", "per-query"])
def test_queries_left_out_of_qpp_are_warned_about_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, flags: tuple[str, ...]
) -> None:
    root = write_pairs_beir(tmp_path / "beir", QRELS)
    flags = tuple(str(tmp_path / "pq.json") if f == "PQ" else f for f in flags)
    with caplog.at_level(logging.INFO, logger="kl_retrievers"):
        argv = ["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--unknown-docs", "drop", *flags]
        assert main(argv) == 0
    capsys.readouterr()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    (no_relevant,) = [m for m in warned if "no judged document of grade" in m]
    assert no_relevant.startswith("2 of the 6 queries evaluated have no judged document of grade >= 1"), no_relevant
    assert no_relevant.endswith("(as trec_eval -c and BEIR do); the QPP correlations leave them out"), no_relevant
    assert not [m for m in warned if QPP_NOTE in m], warned  # not a second time, by QPP
    (note,) = [r for r in caplog.records if QPP_NOTE in r.getMessage()]  # kept, at INFO
    assert note.levelno == logging.INFO and note.name == "kl_retrievers.qpp"
    assert "2 of the 6 judged queries have no relevant document" in note.getMessage()


def test_without_qpp_the_warning_does_not_mention_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert (
            main(
                [
                    "evaluate",
                    str(write_pairs_beir(tmp_path / "beir", QRELS)),
                    "--baseline",
                    "bm25",
                    "--no-progress",
                    "--unknown-docs",
                    "drop",
                ]
            )
            == 0
        )
    capsys.readouterr()
    (no_relevant,) = [r.getMessage() for r in caplog.records if "no judged document of grade" in r.getMessage()]
    assert "QPP" not in no_relevant, no_relevant


def test_library_callers_of_qpp_keep_the_warning(caplog: pytest.LogCaptureFixture) -> None:
    ndcg = {f"q{i}": i / 20 for i in range(20)}
    scores = {"max_score": {q: 2 * v for q, v in ndcg.items()}}
    with pytest.warns(UserWarning, match=re.escape(f"1 of the 20 judged queries has {QPP_NOTE}: its ndcg@10")):
        qpp_report(ndcg, scores, no_relevant=["q0"], n_boot=0)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="kl_retrievers.qpp"):
        warnings.simplefilter("error")  # no warning at all
        report = qpp_report(ndcg, scores, no_relevant=["q0"], no_relevant_warned=True, n_boot=0)
    assert report["excluded_no_relevant"] == 1
    assert [r.levelno for r in caplog.records if QPP_NOTE in r.getMessage()] == [logging.INFO]
