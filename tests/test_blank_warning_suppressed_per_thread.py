"""Evaluation and sharded encoding leave the encoder's blank-document warning out in their own thread only.

They warn about blank documents themselves, by id, and used to hide the encoder's position-based warning with
``warnings.catch_warnings()`` and a message filter for the whole corpus encoding: that filter is process-wide, so
another thread's encoding of a blank document said nothing meanwhile (and ``catch_warnings`` swaps the global
filter list, which is not thread-safe). The switch is now a context variable the encoder's warning reads
(:func:`kl_retrievers._encoding.blank_warning_suppressed`): a copy of the context (``asyncio.to_thread``) carries
it, an unrelated thread does not.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder, write_tiny_beir
from kl_retrievers.datasets import load_beir
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.evaluation import encode_dataset
from kl_retrievers.sharded import encode_corpus

CORPUS = [
    {"_id": "d1", "title": "", "text": "the cat sat on the mat"},
    {"_id": "blank-a", "title": "", "text": " "},
    {"_id": "d2", "title": "", "text": "green tea and bread with water on black rock"},
    {"_id": "blank-b", "title": "", "text": "\u200b"},
    {"_id": "d3", "title": "", "text": "a dog"},
]
#: What the other thread encodes: one blank document of two, which the encoder warns about by position.
OTHER_TEXTS = ["a passage", " "]
OTHER_WARNING = "1 of the 2 documents is blank"


def blank_messages(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if "blank" in str(w.message)]


@pytest.fixture(scope="module")
def other_encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=1)


@pytest.fixture
def seen() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning of every thread while the test runs (one recording set up before any thread starts)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def gate_documents(encoder: GaussianEncoder, inside: threading.Event, release: threading.Event) -> None:
    """Make ``encoder.encode_documents`` signal ``inside`` after encoding, then wait for ``release``."""
    encode = encoder.encode_documents

    def gated(texts: Any, **kwargs: Any) -> Any:
        out = encode(texts, **kwargs)  # its own warning (left out) is behind it
        inside.set()
        assert release.wait(60), "the other thread never released the encoding"
        return out

    encoder.encode_documents = gated  # type: ignore[method-assign]


def overlap(run: Callable[[], object], encoder: GaussianEncoder, other_encoder: GaussianEncoder) -> None:
    """Run ``run`` (which encodes documents with ``encoder``) in a thread; while that thread is inside its first
    document encoding, encode ``OTHER_TEXTS`` with ``other_encoder`` in this one."""
    inside, release = threading.Event(), threading.Event()
    gate_documents(encoder, inside, release)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            inside.set()

    worker = threading.Thread(target=target)
    worker.start()
    try:
        assert inside.wait(120), "the encoding never started"
        other_encoder.encode_documents(OTHER_TEXTS)
    finally:
        release.set()
        worker.join(120)
    assert not worker.is_alive()
    if errors:
        raise errors[0]


def test_an_evaluation_leaves_other_threads_blank_warnings_alone(
    tmp_path: Path, other_encoder: GaussianEncoder, seen: list[warnings.WarningMessage]
) -> None:
    dataset = load_beir(write_tiny_beir(tmp_path / "beir", qrels="1\td1\t1\n", corpus=CORPUS))
    encoder = make_tiny_encoder()
    overlap(lambda: encode_dataset(encoder, dataset, use_cache=False, show_progress=False), encoder, other_encoder)
    messages = blank_messages(seen)
    assert [m for m in messages if m.startswith(OTHER_WARNING)], messages  # the other thread's, by position
    ours = [m for m in messages if not m.startswith(OTHER_WARNING)]
    assert len(ours) == 1, messages  # the evaluation's, by id; not the encoder's positional one
    assert "2 of the 5 documents" in ours[0] and "document ids 'blank-a', 'blank-b'" in ours[0], ours[0]
    assert "position" not in ours[0]


def test_a_sharded_encode_leaves_other_threads_blank_warnings_alone(
    tmp_path: Path, other_encoder: GaussianEncoder, seen: list[warnings.WarningMessage]
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"_id": d["_id"], "text": d["text"]}) + "\n" for d in CORPUS), encoding="utf-8")
    encoder = make_tiny_encoder()

    def run() -> None:
        report = encode_corpus(path, tmp_path / "out", encoder=encoder, shard_size=2, show_progress_bar=False)
        assert report.encoded == [0, 1, 2]

    overlap(run, encoder, other_encoder)
    messages = blank_messages(seen)
    assert [m for m in messages if m.startswith(OTHER_WARNING)], messages
    ours = [m for m in messages if not m.startswith(OTHER_WARNING)]
    assert len(ours) == 1, messages  # the run's, once, by id; no shard's positional one
    assert ours[0].startswith("2 of the 5 documents encoded are blank") and "ids 'blank-a', 'blank-b';" in ours[0]
    assert "position" not in ours[0]


def test_the_switch_reaches_a_copied_context_and_no_other_thread(
    other_encoder: GaussianEncoder, seen: list[warnings.WarningMessage]
) -> None:
    from kl_retrievers._encoding import blank_warning_suppressed

    def encode() -> None:
        other_encoder.encode_documents(OTHER_TEXTS)

    async def in_a_worker_thread() -> None:
        await asyncio.to_thread(encode)  # runs in a copy of the caller's context

    with blank_warning_suppressed():
        encode()
        asyncio.run(in_a_worker_thread())
        assert blank_messages(seen) == []
        unrelated = threading.Thread(target=encode)  # a new thread starts with an empty context (by default)
        unrelated.start()
        unrelated.join()
    inherits = bool(getattr(sys.flags, "thread_inherit_context", 0))  # free-threaded Python 3.14+: it inherits
    assert len(blank_messages(seen)) == (0 if inherits else 1), blank_messages(seen)
    encode()  # after the block: warns again
    assert len(blank_messages(seen)) == (1 if inherits else 2), blank_messages(seen)
