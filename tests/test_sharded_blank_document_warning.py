"""``encode_corpus`` warns once per run about blank documents, naming their number and first ids.

The encoder warns once per ``encode_documents`` call (:func:`kl_retrievers._encoding.warn_blank_documents`), and a
sharded encode calls it once per shard: a large corpus warned once per shard holding a blank document, with
positions inside the shard and no shard named (a 1M corpus could warn 100 times). Ray workers' warnings never
reached the caller at all. The shard encode now leaves the encoder's warning out and notes the blank documents'
ids; ``encode_corpus`` warns once, with their total and the first ids (a Ray worker sends them back with its row).
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.sharded import encode_corpus, load_encoded

#: Six documents in three shards of two: blank ones in the first and the last shard.
RECORDS = [
    ("b1", ""),
    ("a", "a passage"),
    ("c", "another passage"),
    ("d", "a third one"),
    ("e", "more text"),
    ("b2", " \u200b "),
]


def corpus(path: Path, records: list[tuple[str, str]] = RECORDS) -> Path:
    path.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in records), encoding="utf-8")
    return path


def blank_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if "blank" in str(w.message)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    make_tiny_encoder().save_pretrained(out)
    return out


def test_a_local_encode_warns_once_with_the_total_and_the_first_ids(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = encode_corpus(
            corpus(tmp_path / "c.jsonl"), tmp_path / "out", encoder=make_tiny_encoder(), shard_size=2,
            show_progress_bar=False,
        )  # fmt: skip
    assert report.encoded == [0, 1, 2]
    messages = blank_warnings(seen)
    assert len(messages) == 1, messages
    assert messages[0].startswith("2 of the 6 documents encoded are blank")
    assert "in 2 shards" in messages[0] and "ids 'b1', 'b2';" in messages[0]
    assert "position" not in messages[0]  # no position within a shard
    assert next(w for w in seen if "blank" in str(w.message)).filename == __file__  # at the caller's line
    assert load_encoded(tmp_path / "out")[1] == [i for i, _ in RECORDS]  # encoded all the same


def test_a_resumed_encode_warns_only_about_the_shards_it_encodes(tmp_path: Path) -> None:
    path, out = corpus(tmp_path / "c.jsonl"), tmp_path / "out"
    kw: dict[str, Any] = {"encoder": make_tiny_encoder(), "shard_size": 2, "show_progress_bar": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encode_corpus(path, out, **kw)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert encode_corpus(path, out, **kw).encoded == []
    assert blank_warnings(seen) == []


def test_a_corpus_without_blank_documents_gives_no_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        encode_corpus(
            corpus(tmp_path / "c.jsonl", [("a", "text"), ("b", "more")]), tmp_path / "out",
            encoder=make_tiny_encoder(), shard_size=1, show_progress_bar=False,
        )  # fmt: skip
    assert blank_warnings(seen) == []


def test_queries_are_not_warned_about_as_documents(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        encode_corpus(
            corpus(tmp_path / "q.jsonl"), tmp_path / "out", encoder=make_tiny_encoder(), kind="query",
            shard_size=2, show_progress_bar=False,
        )  # fmt: skip
    assert not [m for m in blank_warnings(seen) if "documents encoded" in m]


class _FakeRay(types.ModuleType):
    """Stands in for a started ``ray``: its Data pipeline runs each shard through the worker class, here."""

    def __init__(self) -> None:
        super().__init__("ray")
        self.data = types.SimpleNamespace(from_items=self._from_items, ActorPoolStrategy=lambda size: size)

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 1.0}

    def _from_items(self, items: list[dict[str, Any]], override_num_blocks: int) -> Any:
        def map_batches(worker_cls: Any, *, fn_constructor_kwargs: dict[str, Any], **_: Any) -> Any:
            worker = worker_cls(**fn_constructor_kwargs)

            def take_all() -> list[dict[str, Any]]:
                rows = []
                for item in items:
                    with warnings.catch_warnings(record=True) as seen:  # a worker's warnings stay in its process
                        warnings.simplefilter("always")
                        out = worker({k: np.asarray([v]) for k, v in item.items()})
                    assert blank_warnings(seen) == [], "the worker warned per shard"
                    rows.append({k: v[0] for k, v in out.items()})
                return rows

            return types.SimpleNamespace(take_all=take_all)

        return types.SimpleNamespace(map_batches=map_batches)


def test_a_ray_encode_warns_once_in_the_caller_from_the_workers_rows(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", _FakeRay())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = encode_corpus(
            corpus(tmp_path / "c.jsonl"), tmp_path / "out", model=str(model_dir), model_backend="torch",
            backend="ray", device="cpu", shard_size=2, show_progress_bar=False,
        )  # fmt: skip
    assert report.encoded == [0, 1, 2]
    messages = blank_warnings(seen)
    assert len(messages) == 1, messages
    assert messages[0].startswith("2 of the 6 documents encoded are blank") and "ids 'b1', 'b2';" in messages[0]


def test_a_direct_encode_shard_call_keeps_the_encoders_warning(tmp_path: Path) -> None:
    """``encode_shard`` without ``blank=`` (a caller of its own) warns as the encoder does."""
    path = corpus(tmp_path / "c.jsonl")
    spec = sharded.plan_shards(path, 2)[0][0]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sharded.encode_shard(make_tiny_encoder(), path, spec, tmp_path / "out", run="r")
    assert [m for m in blank_warnings(seen) if "at position 0" in m]
