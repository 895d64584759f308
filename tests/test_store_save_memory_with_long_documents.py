"""Saving a store's documents.jsonl holds about one block of bytes, however long and non-ASCII the texts."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from kl_retrievers.store import _format


def test_long_non_ascii_documents_are_written_with_little_memory(tmp_path: Path) -> None:
    n = 300
    texts: list[str | None] = [("x" * 20_000) + "\N{GRINNING FACE}" + str(i) for i in range(n)]  # 4 bytes a char
    ids = [f"d{i}" for i in range(n)]
    metadatas = [{"i": i} for i in range(n)]
    tracemalloc.start()
    try:
        _format._write_jsonl(tmp_path / "documents.jsonl", ids, texts, metadatas)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for {n} documents of 20,000 characters"  # ~24 MiB of text
    lines = (tmp_path / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": d, "text": t, "metadata": m} for d, t, m in zip(ids, texts, metadatas, strict=True)
    ]
