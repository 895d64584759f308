"""Sharded encoding refuses ``.csv`` inputs instead of reading their columns as text lines; ``.tsv`` is read as
``id<TAB>text`` lines (tests/test_sharded_tsv.py), never as text lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from kl_retrievers.sharded import plan_shards, read_shard


@pytest.mark.parametrize("name", ["c.csv", "c.CSV"])
def test_plan_shards_refuses_csv_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("7\tthe cat sat\n8\ta dog\n")
    with pytest.raises(ValueError, match=r"not \.csv: convert it to JSON Lines"):
        plan_shards(path, shard_size=1)


@pytest.mark.parametrize("name", ["c.tsv", "c.TSV"])
def test_plan_shards_reads_tsv_columns_not_text_lines(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("7\tthe cat sat\n8\ta dog\n")
    shards, identity = plan_shards(path, shard_size=1)
    assert identity["records"] == 2
    assert [read_shard(path, s) for s in shards] == [(["7"], ["the cat sat"]), (["8"], ["a dog"])]


def test_plan_shards_still_reads_text_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("7\tthe cat sat\n8\ta dog\n")
    shards, identity = plan_shards(path, shard_size=1)
    assert len(shards) == 2 and identity["records"] == 2
    assert read_shard(path, shards[0]) == (["0"], ["7\tthe cat sat"])
