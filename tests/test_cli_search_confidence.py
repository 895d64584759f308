"""``kl-retrievers search`` shows each query's calibrated confidence and abstains below ``--min-confidence``.

The confidence is the one ``demo`` prints and the adapters report (``kl_retrievers._confidence.ConfidenceScorer``);
``--min-confidence`` is checked as the adapters' ``min_confidence`` is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kl_retrievers.cli import DATA_DIR, main

ANSWERED, UNANSWERABLE = "how do bees communicate?", "who won the 1998 world cup?"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "store"
    assert main(["index", str(DATA_DIR / "demo_corpus.jsonl"), "--out", str(out)]) == 0
    return out


def _json(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_carries_the_confidence_the_adapters_report(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kl_retrievers.index import KLStore
    from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore

    capsys.readouterr()
    assert main(["search", str(store), ANSWERED, UNANSWERABLE, "-k", "1", "--json"]) == 0
    got = _json(capsys)
    assert [r["abstained"] for r in got] == [False, False] and [r["abstention_reason"] for r in got] == [None, None]
    assert got[0]["confidence"] > 0.5 > got[1]["confidence"]
    # the confidence LangChain's KLRetriever gives over the same store
    embeddings = KLEmbeddings()
    retriever = KLRetriever.from_store(
        KLVectorStore(embeddings, store=KLStore.load(store, encoder=embeddings.encoder)), k=1
    )
    for r in got:
        assert r["confidence"] == pytest.approx(retriever.invoke(r["query"])[0].metadata["confidence"], abs=1e-6)


def test_min_confidence_abstains_in_text_and_json(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["search", str(store), ANSWERED, UNANSWERABLE, "-k", "2", "--min-confidence", "0.3"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("query: ")[1:]
    assert ", confidence 0." in first and "1. -KL=" in first and "abstained" not in first
    assert "abstained (no results): confidence 0." in second and "< min_confidence 0.300" in second
    assert "-KL=" not in second
    assert main(["search", str(store), ANSWERED, UNANSWERABLE, "--min-confidence", "0.3", "--json"]) == 0
    answered, refused = _json(capsys)
    assert not answered["abstained"] and len(answered["results"]) == 10
    assert refused["abstained"] and refused["results"] == [] and "< min_confidence" in refused["abstention_reason"]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "high"])
def test_min_confidence_outside_zero_one_is_refused(
    store: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["search", str(store), ANSWERED, "--min-confidence", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "min_confidence must be a number in [0, 1] (a probability); got" in err


def test_min_confidence_without_a_calibrator_is_refused(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import _confidence

    monkeypatch.setattr(_confidence.ConfidenceScorer, "calibrator", lambda self, encoder, stemmer="english": None)
    capsys.readouterr()
    assert main(["search", str(store), ANSWERED, "--json"]) == 0  # no floor: results, confidence null
    (row,) = _json(capsys)
    assert row["confidence"] is None and row["results"]
    assert main(["search", str(store), ANSWERED, "--min-confidence", "0.3"]) != 0
    assert "--min-confidence 0.3 needs a confidence calibrator" in capsys.readouterr().err
