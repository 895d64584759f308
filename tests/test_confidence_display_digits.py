"""The confidence ``search`` and ``demo`` print and the abstention reason read alike.

The query line shows the confidence with 3 decimals, as the reason does (it showed 2: ``confidence 0.29`` above
``confidence 0.295 < min_confidence 0.295``), and the reason prints as many more decimals as the confidence and
the floor need to differ where 3 would print them alike. The LangChain adapter reports the same reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kl_retrievers._confidence import abstention_reason
from kl_retrievers.cli import DATA_DIR, main

UNANSWERABLE = "who won the 1998 world cup?"
REASON = re.compile(r"confidence (\S+) < min_confidence (\S+)$")


@pytest.mark.parametrize(
    ("confidence", "floor", "expected"),
    [
        (0.2, 0.5, "confidence 0.200 < min_confidence 0.500"),
        (0.2949, 0.295, "confidence 0.2949 < min_confidence 0.2950"),
        (0.29499, 0.2950, "confidence 0.29499 < min_confidence 0.29500"),
        (0.1, 0.1000000000000001, "confidence 0.1000000000000000 < min_confidence 0.1000000000000001"),
        (1e-20, 2e-20, "confidence 1e-20 < min_confidence 2e-20"),
    ],
)
def test_the_reason_prints_the_two_values_apart(confidence: float, floor: float, expected: str) -> None:
    assert abstention_reason(confidence, floor) == expected


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "store"
    assert main(["index", str(DATA_DIR / "demo_corpus.jsonl"), "--out", str(out)]) == 0
    return out


def test_search_prints_the_confidence_as_the_reason_does(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["search", str(store), UNANSWERABLE, "-k", "1", "--json"]) == 0
    confidence = json.loads(capsys.readouterr().out)["confidence"]
    floor = confidence + 1e-6  # above it, and equal to it at 3 decimals but at a boundary
    if f"{floor:.3f}" != f"{confidence:.3f}":
        floor = confidence + 1e-9
    assert main(["search", str(store), UNANSWERABLE, "-k", "1", "--min-confidence", repr(floor)]) == 0
    head, reason_line = capsys.readouterr().out.splitlines()[:2]
    assert head.endswith(f", confidence {confidence:.3f})"), head
    assert reason_line.startswith("  abstained (no results): confidence ")
    match = REASON.search(reason_line)
    assert match is not None, reason_line
    shown, shown_floor = match.groups()
    assert shown != shown_floor and float(shown) < float(shown_floor)
    half = 0.5 * 10.0 ** -len(shown.split(".")[1]) + 1e-15  # each value rounded to the decimals shown
    assert float(shown) == pytest.approx(confidence, abs=half) and float(shown_floor) == pytest.approx(floor, abs=half)
    # --json gives the same reason, as the adapters do
    assert main(["search", str(store), UNANSWERABLE, "--min-confidence", repr(floor), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["abstention_reason"] == reason_line.split(": ", 1)[1]


def test_langchain_reports_the_same_reason(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain_core")
    from typing import Any
    from uuid import UUID

    from langchain_core.callbacks import BaseCallbackHandler

    from kl_retrievers.index import KLStore
    from kl_retrievers.langchain import ABSTENTION_EVENT, KLEmbeddings, KLRetriever, KLVectorStore

    class Events(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[tuple[str, Any]] = []

        def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
            self.events.append((name, data))

    embeddings = KLEmbeddings()
    retriever = KLRetriever.from_store(KLVectorStore(embeddings, store=KLStore.load(store, encoder=embeddings.encoder)))
    confidence = retriever.invoke(UNANSWERABLE)[0].metadata["confidence"]
    floor = confidence + 1e-6 if f"{confidence + 1e-6:.3f}" == f"{confidence:.3f}" else confidence + 1e-9
    handler = Events()
    assert retriever.invoke(UNANSWERABLE, config={"callbacks": [handler]}, min_confidence=floor) == []
    ((name, data),) = handler.events
    assert name == ABSTENTION_EVENT and data["reason"] == abstention_reason(confidence, floor)
    capsys.readouterr()
    assert main(["search", str(store), UNANSWERABLE, "--min-confidence", repr(floor), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["abstention_reason"] == data["reason"]
    shown, shown_floor = REASON.search(data["reason"]).groups()  # type: ignore[union-attr]
    assert shown != shown_floor


@pytest.mark.integration
def test_demo_prints_the_confidence_with_three_decimals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "-k", "1", "why does bread rise"]) == 0
    head = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("query: 'why does bread"))
    assert re.search(r", confidence \d\.\d{3}\)$", head), head
