"""Review fixes outside the stores: an evaluator's data hash with numpy judgements, and a per-query CSV
saved with a byte-order mark (as Excel saves one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kl_retrievers.datasets import BeirDataset
from kl_retrievers.evaluation import load_per_query, save_per_query
from kl_retrievers.training import RetrievalEvaluator, evaluator_description


def _dataset(grade: object) -> BeirDataset:
    corpus = {"d1": {"title": "", "text": "bread"}, "d2": {"title": "", "text": "tea"}}
    return BeirDataset(Path("."), "test", corpus, {"q1": "bread?"}, {"q1": {"d1": grade}})  # type: ignore[dict-item]


def test_numpy_and_float_judgements_describe_the_same_evaluator() -> None:
    described = [
        evaluator_description(RetrievalEvaluator(_dataset(g), similarity="neg_kl")) for g in (np.int64(1), 1, 1.0)
    ]
    assert described[0] == described[1] == described[2]
    assert described[0] != evaluator_description(RetrievalEvaluator(_dataset(2), similarity="neg_kl"))


def test_the_data_hash_follows_a_reassigned_dataset() -> None:
    ev = RetrievalEvaluator(_dataset(1), similarity="neg_kl")
    before = ev.description()["data_sha256"]
    ev.dataset = _dataset(2)
    assert ev.description()["data_sha256"] != before


def test_a_per_query_csv_with_a_byte_order_mark_reads_back(tmp_path: Path) -> None:
    pq = {"q1": {"ndcg@10": 0.25}, "q2": {"ndcg@10": 1.0}}
    save_per_query(tmp_path / "pq.csv", pq)
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "pq.csv").read_bytes())
    assert load_per_query(bom) == (pq, {})


def test_klstore_passes_its_progress_bar_setting_to_the_encoder() -> None:
    from conftest import make_tiny_encoder
    from kl_retrievers import KLStore

    encoder = make_tiny_encoder(seed=0)
    seen: list[object] = []
    original = encoder.encode_documents

    def spy(texts, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("show_progress_bar", "absent"))
        return original(texts, **kwargs)

    encoder.encode_documents = spy  # type: ignore[method-assign]
    KLStore(encoder).add(["a passage", "another passage"])
    KLStore(encoder, show_progress_bar=None).add(["a passage"])
    KLStore(encoder, show_progress_bar=True).add(["a passage"])
    assert seen == [False, None, True]  # None: the encoder's rule (a terminal and several batches)
