"""``search --filter`` warns about a value of another JSON type than a key's stored values before it searches.

The warning had come only when a query got fewer than ``k`` results, so a mistyped ``$ne`` / ``$nin``
(``{"year": {"$ne": "2020"}}`` over integer years), which excludes nothing and so returns a full list, went
unwarned. The check now runs once before the search, reading the stored types from at most
``_FILTER_TYPE_SAMPLE`` documents spread over the store and stopping at the first chunk that settles them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import kl_retrievers.cli as cli
from conftest import make_tiny_encoder
from kl_retrievers.cli import main

ROWS = [
    {"_id": "a", "title": "", "text": "the cat sat on the mat", "year": 2020, "lang": "en"},
    {"_id": "b", "title": "", "text": "green tea and bread", "year": 2021, "lang": "de"},
    {"_id": "c", "title": "", "text": "the moon and the star", "year": 2022, "lang": "fr"},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of ROWS (integer years, string languages), indexed with a tiny random encoder."""
    root = tmp_path_factory.mktemp("filter-types")
    model_dir = Path(make_tiny_encoder().save_pretrained(root / "model"))
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    out = root / "store"
    assert main(["index", str(corpus), "--out", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize(
    ("filt", "said"),
    [
        ('{"year": {"$ne": "2020"}}', ['the string "2020" ($ne)', "so in $ne it excludes no document", "2020?"]),
        ('{"year": {"$nin": ["2020", "2021"]}}', ['"2020", "2021" ($nin)', "so in $nin they exclude no document"]),
        ('{"lang": {"$neq": 1}}', ["every stored 'lang' is a string", "in $ne it excludes", 'did you mean "1"?']),
        (
            '{"year": {"$not": {"$eq": "2020"}}}',
            ['the string "2020" ($not $eq)', "in $not $eq it excludes no document"],
        ),
        ('{"$not": {"year": "2020"}}', ['the string "2020" ($not $eq)', "in $not $eq it excludes no document"]),
    ],
)
def test_a_mistyped_value_that_excludes_nothing_is_warned_about(
    filt: str, said: list[str], store: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "-k", "3", "--filter", filt]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3  # a full list: no short result to notice
    assert "values of different JSON types never match" in caplog.text, caplog.text
    for words in said:
        assert words in caplog.text, caplog.text
    assert caplog.text.count("--filter compares") == 1  # once, not again after the search


@pytest.mark.parametrize(
    "filt", ['{"year": {"$ne": 2020}}', '{"year": {"$nin": [2020, true]}}', '{"lang": {"$ne": "en"}}']
)
def test_a_well_typed_negative_condition_is_not_warned_about(
    filt: str, store: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", filt]) == 0
    capsys.readouterr()
    assert "--filter" not in caplog.text, caplog.text


class _CountingStore:
    """A store of ``n`` documents with ``{"year": <int>}`` metadata that records which ids it is asked for."""

    def __init__(self, n: int) -> None:
        self.ids = [f"d{i}" for i in range(n)]
        self.asked: list[list[str]] = []

    def get_by_ids(self, ids: list[str]) -> list[Any]:
        self.asked.append(list(ids))
        return [argparse.Namespace(id=i, text="", metadata={"year": int(i[1:])}) for i in ids]


def test_the_type_check_reads_a_bounded_sample_spread_over_the_store(caplog: pytest.LogCaptureFixture) -> None:
    n = 5 * cli._FILTER_TYPE_SAMPLE + 3
    big = _CountingStore(n)
    with caplog.at_level(logging.WARNING):
        cli._warn_mistyped_filter_values(big, {"year": {"$ne": "7"}})
    read = [doc_id for chunk in big.asked for doc_id in chunk]
    assert len(read) == cli._FILTER_TYPE_SAMPLE and len(set(read)) == len(read)
    assert max(len(chunk) for chunk in big.asked) == cli._FILTER_KEY_CHUNK
    assert read[0] == "d0" and int(read[-1][1:]) > n - 10  # from the first documents to the last
    expected = f"in {cli._FILTER_TYPE_SAMPLE:,} documents sampled evenly from the store's {n:,} is a number"
    assert expected in caplog.text, caplog.text
    # a value of the stored type is settled by the first chunk
    caplog.clear()
    big.asked.clear()
    with caplog.at_level(logging.WARNING):
        cli._warn_mistyped_filter_values(big, {"year": {"$ne": 7}})
    assert [len(chunk) for chunk in big.asked] == [cli._FILTER_KEY_CHUNK] and caplog.text == ""
    # a small store is read whole, and the message then speaks of every stored value
    small = _CountingStore(cli._FILTER_KEY_CHUNK + 1)
    with caplog.at_level(logging.WARNING):
        cli._warn_mistyped_filter_values(small, {"year": {"$ne": "7"}})
    assert sum(len(chunk) for chunk in small.asked) == cli._FILTER_KEY_CHUNK + 1
    assert "every stored 'year' is a number" in caplog.text, caplog.text


# ---------------------------------------------------------------- review R2 follow-ups
@pytest.mark.parametrize(
    ("filt", "error"),
    [
        ('{"year": {"$in": "2020"}}', "$in needs a list"),
        ('{"year": {"$gte": "2020", "$foo": 1}}', "unknown filter operator '$foo'"),
    ],
)
def test_a_malformed_filter_is_refused_before_any_type_warning(
    filt: str,
    error: str,
    store: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded for a malformed --filter")

    monkeypatch.setattr(cli, "_load_encoder", no_model)
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--filter", filt]) == 2
    err = capsys.readouterr().err
    assert error in err, err
    assert "--filter compares" not in caplog.text + err, caplog.text
    # called on its own, the check reads no document of a malformed filter and warns about nothing
    caplog.clear()
    counting = _CountingStore(10)
    with caplog.at_level(logging.WARNING):
        cli._warn_mistyped_filter_values(counting, json.loads(filt))
    assert counting.asked == [] and caplog.text == ""


def test_a_sampled_check_does_not_state_the_consequence_for_the_whole_store(caplog: pytest.LogCaptureFixture) -> None:
    n = 2 * cli._FILTER_TYPE_SAMPLE
    with caplog.at_level(logging.WARNING):
        cli._warn_mistyped_filter_values(_CountingStore(n), {"year": {"$ne": "7"}})
    assert "sampled evenly" in caplog.text, caplog.text
    assert "so in $ne it excludes none of the sampled documents" in caplog.text, caplog.text
    assert "excludes no document" not in caplog.text, caplog.text


def test_the_consequence_under_not_follows_its_polarity(
    store: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # $not of a $ne that excludes nothing matches nothing: the message must not say it "excludes no document"
    with caplog.at_level(logging.WARNING):
        assert (
            main(["search", str(store), "cat", "--json", "-k", "3", "--filter", '{"year": {"$not": {"$ne": "2020"}}}'])
            == 0
        )
    assert json.loads(capsys.readouterr().out)["results"] == []
    assert "($not $ne)" in caplog.text and "in $not $ne it matches no document" in caplog.text, caplog.text
    assert "excludes no document" not in caplog.text, caplog.text
    # $not of an $eq that never matches keeps every document, and the message says so
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "-k", "3", "--filter", '{"year": {"$not": "2020"}}']) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3
    assert "($not $eq)" in caplog.text and "in $not $eq it excludes no document" in caplog.text, caplog.text
    # two $not cancel out: a plain $ne again
    assert cli._filter_values({"$not": {"year": {"$not": {"$ne": "2020"}}}}) == [("year", "$ne", "2020")]
