"""A BEIR split's identity (what a model's training record keeps of it) belongs to :mod:`kl_retrievers.datasets`.

Training records each BEIR split it trained on (``trained_splits``: the folder's name, the split, the SHA-256 of
the split's query texts, and how many of its queries were trained on) and ``kl-retrievers evaluate`` warns when the
split it scores is one of them. Both now ask :meth:`BeirDataset.split_record` and
:meth:`BeirDataset.find_split_record`; before, evaluate imported training's private ``_trained_split`` (and with it
the whole training package, numpy and tqdm) to describe the split it scores. The record saved stays byte-identical:
bundled and already trained models carry it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kl_retrievers.datasets import BeirDataset

EVALUATE_CLI = Path(__file__).resolve().parents[1] / "kl_retrievers" / "evaluate_cli.py"
#: The SHA-256 of the query texts of :func:`_split` (as models trained before this change recorded it).
QUERIES_SHA256 = "90f5579c5d6126e4a4ccce0fcdb9964a4d092c75ab29d0feb80b582f34ed5d22"


def _split(folder: Path, split: str = "dev") -> BeirDataset:
    return BeirDataset(folder, split, {}, {"q1": "what is x?", "q2": "why y?"}, {"q1": {}, "q2": {}})


def test_the_split_record_keeps_the_saved_keys_values_and_order(tmp_path: Path) -> None:
    (tmp_path / "scifact").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "scifact")  # the folder's own name, not the link's or the path
    record = _split(tmp_path / "link").split_record(1)
    assert json.dumps(record) == (
        f'{{"dataset": "scifact", "split": "dev", "queries_sha256": "{QUERIES_SHA256}", "queries_used": 1, '
        '"queries_total": 2}'
    )
    assert _split(tmp_path / "scifact").split_record() == {
        "dataset": "scifact",
        "split": "dev",
        "queries_sha256": QUERIES_SHA256,
    }


@pytest.mark.parametrize(
    ("record", "same_name", "same_queries"),
    [
        ({"dataset": "scifact", "split": "dev", "queries_sha256": QUERIES_SHA256}, True, True),
        ({"dataset": "scifact", "split": "train", "queries_sha256": QUERIES_SHA256}, False, True),  # a copied split
        ({"dataset": "scifact", "split": "dev", "queries_sha256": "0" * 64}, True, False),  # edited queries
    ],
)
def test_a_record_names_the_split_by_folder_name_and_split_or_by_query_texts(
    tmp_path: Path, record: dict[str, str], same_name: bool, same_queries: bool
) -> None:
    other = {"dataset": "nq", "split": "dev", "queries_sha256": "0" * 64}
    found = _split(tmp_path / "scifact").find_split_record([other, record, {**record, "queries_used": 1}])
    assert found == (record, same_name, same_queries)


def test_a_split_no_record_names_is_not_found(tmp_path: Path) -> None:
    ds = _split(tmp_path / "scifact")
    assert ds.find_split_record([]) is None
    assert ds.find_split_record([{"dataset": "scifact", "split": "test", "queries_sha256": "0" * 64}]) is None
    assert ds.find_split_record([{"dataset": "nq", "split": "dev", "queries_sha256": "0" * 64}]) is None


def test_evaluate_does_not_import_training_to_describe_the_split_it_scores(tmp_path: Path) -> None:
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(EVALUATE_CLI.read_text(encoding="utf-8")))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("kl_retrievers.training")], imported
    # and when it warns: the training package (numpy, tqdm) is not imported to compare the split with the record
    code = f"""
import logging, sys
from pathlib import Path
from kl_retrievers.datasets import BeirDataset
from kl_retrievers.evaluate_cli import _warn_trained_on
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
ds = BeirDataset(Path({str(tmp_path / "scifact")!r}), "dev", {{}}, {{"q1": "what is x?", "q2": "why y?"}}, {{}})
_warn_trained_on("m", [{{"dataset": "scifact", "split": "train", "queries_sha256": {QUERIES_SHA256!r}}}], ds)
print("training imported:", "kl_retrievers.training" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert "m was trained on scifact split train" in out and "split dev has its query texts" in out, out
    assert "training imported: False" in out, out
