"""An evaluation names blank corpus documents by id, not by their position in the texts it encodes.

The evaluation encodes the corpus longest first (less padding per batch), so the encoder's own blank-document
warning named positions in that sorted list, which are no document's position in the corpus. ``encode_dataset``
(and so ``evaluate_model`` and ``kl-retrievers evaluate``) warns once itself, naming the documents' ids, and the
encoder's positional warning is not shown.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from conftest import make_tiny_encoder, write_tiny_beir
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import encode_dataset

CORPUS = [
    {"_id": "d1", "title": "", "text": "the cat sat on the mat"},
    {"_id": "blank-a", "title": "", "text": " "},
    {"_id": "d2", "title": "", "text": "green tea and bread with water on black rock"},
    {"_id": "blank-b", "title": "", "text": "\u200b"},
    {"_id": "d3", "title": "", "text": "a dog"},
]


def test_blank_documents_are_named_by_id(tmp_path: Path) -> None:
    dataset = load_beir(write_tiny_beir(tmp_path / "beir", qrels="1\td1\t1\n", corpus=CORPUS))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        encode_dataset(make_tiny_encoder(), dataset, use_cache=False, show_progress=False)
    blank = [w for w in seen if "blank" in str(w.message)]
    assert len(blank) == 1, [str(w.message) for w in blank]
    message = str(blank[0].message)
    assert "2 of the 5 documents" in message and "document ids 'blank-a', 'blank-b'" in message, message
    assert "position" not in message  # no position in a list the user never saw
    assert Path(blank[0].filename).resolve() == Path(__file__).resolve()  # the user's line


def test_no_warning_without_blank_documents(tmp_path: Path) -> None:
    dataset = load_beir(write_tiny_beir(tmp_path / "beir"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        encode_dataset(make_tiny_encoder(), dataset, use_cache=False, show_progress=False)
    assert not [w for w in seen if "blank" in str(w.message)]
