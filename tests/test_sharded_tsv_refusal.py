"""Sharded encoding refuses ``.tsv`` / ``.csv`` inputs instead of reading their columns as text lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from kl_retrievers.sharded import plan_shards


@pytest.mark.parametrize("name", ["c.tsv", "c.TSV", "c.csv"])
def test_plan_shards_refuses_column_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("7\tthe cat sat\n8\ta dog\n")
    with pytest.raises(ValueError, match=r"not \.(tsv|csv): convert it to JSON Lines"):
        plan_shards(path, shard_size=1)


def test_plan_shards_still_reads_text_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("7\tthe cat sat\n8\ta dog\n")
    shards, identity = plan_shards(path, shard_size=1)
    assert len(shards) == 2 and identity["records"] == 2
