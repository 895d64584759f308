"""A checkpoint an earlier version wrote with ``--mine-k`` but no ``--hard-negatives`` resumes without the flag.

Before 8a50347, ``--mine-k N`` without ``--hard-negatives`` was accepted (nothing was mined, so it changed nothing)
and recorded in the checkpoint's recipe (``cli.mine_k``). It is refused now, so such a checkpoint could not be
resumed: with the flag the run was refused, without it the recipe differed (``--mine-k (cli.mine_k): checkpoint 5,
now 30``). ``cli.mine_k`` is now compared only when a side mines. The earlier version's checkpoint is made by
writing ``mine_k`` into a checkpoint's recipe: that entry is all such a checkpoint differs in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TrainWorld, cli_error_line, heads_cached_train_argv
from kl_retrievers.cli import main

#: Each query against its own candidates: the negatives' flags enter the loss (nothing of them is refused).
OWN = ("--no-full-corpus", "--negatives", "1")


def _record_mine_k(ckpt: Path, mine_k: int) -> None:
    """Record ``mine_k`` in the checkpoint's recipe, as a run with ``--mine-k`` and no mining before 8a50347 did."""
    state = json.loads((ckpt / "state.json").read_text())
    assert state["recipe"]["cli"]["hard_negatives"] == "none"
    state["recipe"]["cli"]["mine_k"] = mine_k
    (ckpt / "state.json").write_text(json.dumps(state))


def test_a_checkpoint_with_mine_k_and_no_mining_resumes_without_it(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(heads_cached_train_argv(train_world, tmp_path / "whole", *OWN)) == 0
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, *OWN, "--time-budget", "0")) == 0
    _record_mine_k(Path(f"{out}.checkpoint"), 5)
    assert (
        main(heads_cached_train_argv(train_world, out, *OWN, "--resume", "--mine-k", "5")) == 2
    )  # the flag is refused...
    assert "--mine-k 5 applies to mined negatives" in cli_error_line(capsys, "train")
    assert (
        main(heads_cached_train_argv(train_world, out, *OWN, "--resume")) == 0
    )  # ...and the checkpoint resumes without it
    assert "after 3 steps (finished)" in capsys.readouterr().out
    whole, resumed = load_file(tmp_path / "whole" / "delta.safetensors"), load_file(out / "delta.safetensors")
    assert whole.keys() == resumed.keys()
    for key, tensor in whole.items():
        assert torch.equal(tensor, resumed[key]), key


def test_mine_k_is_still_compared_when_the_run_mines(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    mined = ("--hard-negatives", "bm25", "--mine-k", "2")
    assert main(heads_cached_train_argv(train_world, out, *OWN, *mined, "--time-budget", "0")) == 0
    assert main(heads_cached_train_argv(train_world, out, *OWN, *mined[:2], "--mine-k", "3", "--resume")) == 2
    assert "--mine-k (cli.mine_k): checkpoint 2, now 3" in cli_error_line(capsys, "train")
