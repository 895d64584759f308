"""A checkpoint written by ``kl-retrievers train`` records the command line's invocations (``state.json``'s
``commands``, or ``recipe.cli.commands`` in one development version's checkpoints). ``train_heads_cached`` /
``train_encoder(..., resume=True)`` called from Python without ``commands=`` wrote its later checkpoints without the
list, so a later ``--resume`` lost the first command. A Python resume now carries the list forward, then adds its own
entry (the Python process's command line and the function called:
tests/test_train_python_api_resume_commands.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import TrainWorld, interrupted_cli_train
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.training import TrainConfig, train_heads_cached
from kl_retrievers.training.data import load_training_data


def _python_resume(world: TrainWorld, ckpt: Path, cli_recipe: dict, steps: int) -> None:
    """The same run resumed through the Python API, without ``commands=``."""
    ts = load_training_data([str(world.beir.resolve())], split="train")
    encoder = GaussianEncoder.from_backbone(
        str(world.base), dim=8, pooling="mean", normalize_pooled=True, max_length=32, query_max_length=16
    )
    cfg = TrainConfig(lr=1e-3, steps=steps, batch_size=2, device="cpu", checkpoint_every=1, show_progress=False)
    train_heads_cached(
        encoder, ts, cfg, cache_dir=world.cache / "features", checkpoint_dir=ckpt, resume=True,
        recipe={"cli": cli_recipe},
    )  # fmt: skip


@pytest.mark.parametrize("where", ["top", "recipe"])
def test_a_python_resume_keeps_the_command_lines_invocations(
    train_world: TrainWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    out = tmp_path / "m"
    ckpt = tmp_path / "m.checkpoint"
    argv = interrupted_cli_train(train_world, out, monkeypatch, capsys)
    first = "kl-retrievers " + " ".join(argv)
    state_file = ckpt / "state.json"
    state = json.loads(state_file.read_text())
    assert [(c["command"], c["step_at_start"]) for c in state["commands"]] == [(first, 0)]
    if where == "recipe":  # as the checkpoints of commit 3a7417a kept them
        state["recipe"]["cli"]["commands"] = state.pop("commands")
        state_file.write_text(json.dumps(state))
    cli_recipe = {k: v for k, v in state["recipe"]["cli"].items() if k != "commands"}
    recorded = state["recipe"]["cli"].get("commands", state.get("commands"))

    _python_resume(train_world, ckpt, cli_recipe, steps=3)  # steps 2 -> 3
    state = json.loads(state_file.read_text())
    assert state["step"] == 3
    assert state["commands"][:-1] == recorded  # carried forward, then the Python call's own entry
    python = state["commands"][-1]
    assert (python["step_at_start"], python["api"]) == (2, "kl_retrievers.training.train_heads_cached")

    resume = [*argv, "--resume", "--steps", "4"]  # 3 -> 4, from the command line again
    monkeypatch.setattr(sys, "argv", ["kl-retrievers", *resume])
    assert main(resume) == 0, capsys.readouterr().err
    training = json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]
    last = "kl-retrievers " + " ".join(resume)
    steps = [(c["command"], c["step_at_start"]) for c in training["commands"]]
    assert steps == [(first, 0), (python["command"], 2), (last, 3)]
    assert json.loads(state_file.read_text())["commands"] == training["commands"]


def test_a_python_resume_of_a_checkpoint_without_invocations_records_its_own(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "m.checkpoint"
    interrupted_cli_train(train_world, tmp_path / "m", monkeypatch, capsys)
    state_file = ckpt / "state.json"
    state = json.loads(state_file.read_text())
    del state["commands"]  # as versions before the record wrote it
    state_file.write_text(json.dumps(state))
    _python_resume(train_world, ckpt, state["recipe"]["cli"], steps=3)
    commands = json.loads(state_file.read_text())["commands"]  # the earlier ones are not known
    assert [(c["step_at_start"], c["api"]) for c in commands] == [(2, "kl_retrievers.training.train_heads_cached")]
