"""A ``KLStore`` config with another score, or none, is refused in the wording of every other saved format.

``store/_format._check_header`` asks :func:`kl_retrievers._score.check_score_fields` (with ``required=True``: a
``KLStore``'s ``config.json`` has always recorded both fields), which words every score refusal: the field, the
value found (or ``missing``) and the score this library serves, ``'neg_kl' ('higher_is_better')``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import edit_config
from kl_retrievers import KLStore
from kl_retrievers._score import check_score_fields
from kl_retrievers.store._format import StoreFormatError

SERVES = "this library serves 'neg_kl' ('higher_is_better')"


def _shared_wording(record: dict[str, Any], where: Path, *, required: bool) -> str:
    """The message :func:`check_score_fields` gives for ``record`` (what every other format's load says)."""
    with pytest.raises(ValueError) as info:
        check_score_fields(record, where, required=required)
    return str(info.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"score_direction": "lower_is_better"}, "field 'score_direction' is 'lower_is_better'"),
        ({"score_name": "cosine"}, "field 'score_name' is 'cosine'"),
        ({"score_name": None}, "field 'score_name' is missing"),
        ({"score_direction": None}, "field 'score_direction' is missing"),
        ({"score_name": None, "score_direction": None}, "field 'score_name' is missing"),
    ],
    ids=["wrong-direction", "wrong-name", "no-name", "no-direction", "neither"],
)
def test_a_klstore_config_with_another_score_or_none_is_refused_in_the_shared_wording(
    saved_klstore: Path, changes: dict[str, Any], expected: str
) -> None:
    cfg = edit_config(saved_klstore, **changes)
    with pytest.raises(StoreFormatError) as info:
        KLStore.load(saved_klstore)
    message = str(info.value)
    assert message == f"{cfg}: {expected}; {SERVES}"
    record = json.loads(cfg.read_text(encoding="utf-8"))
    assert message == _shared_wording(record, cfg, required=True)


def test_a_wrong_direction_reads_as_a_langchain_manifests_refusal_does(saved_klstore: Path) -> None:
    """The same bad field and value give the same words in a KLStore config and in a manifest (absent passes)."""
    cfg = edit_config(saved_klstore, score_direction="lower_is_better")
    with pytest.raises(StoreFormatError) as info:
        KLStore.load(saved_klstore)
    manifest = _shared_wording({"score_direction": "lower_is_better"}, cfg, required=False)
    assert str(info.value) == manifest
    check_score_fields({}, cfg)  # a manifest saved before the fields existed still passes
