"""``kl-retrievers train`` records every invocation of a run (``training.commands``, kept in the checkpoints'
``state.json``), but a model trained through the Python API (``train_encoder`` / ``train_heads_cached``) and saved
after a ``resume=True`` recorded none: a Python call added no entry of its own. Each call now records itself in the
same shape, ``{"command": the Python process's command line, "started", "step_at_start", "api": the function}``, after
the invocations its checkpoint records; the saved model lists every one, as the command line's does."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import TrainWorld, interrupt_train_at, interrupted_cli_train
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.training import TrainConfig, TrainResult, train_encoder, train_heads_cached
from kl_retrievers.training.data import TrainingSet, load_training_data
from kl_retrievers.training.trainer import _saved_commands

FUNCTIONS = {"train_encoder": train_encoder, "train_heads_cached": train_heads_cached}


def _encoder(world: TrainWorld) -> GaussianEncoder:
    """A random-weight tiny encoder, as a script builds it before each call."""
    return GaussianEncoder.from_backbone(
        str(world.base), dim=8, pooling="mean", normalize_pooled=True, max_length=32, query_max_length=16
    )


def _call(
    function: str,
    world: TrainWorld,
    ckpt: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    *,
    resume: bool,
    interrupt_at: int | None = None,
    **kwargs: Any,
) -> tuple[GaussianEncoder, TrainResult | None]:
    """``function`` called by the script ``argv`` (its ``sys.argv``): 3 steps, a checkpoint each; Ctrl-C during step
    ``interrupt_at`` (after the checkpoints of the steps before it) when given."""
    ts: TrainingSet = load_training_data([str(world.beir.resolve())], split="train")
    encoder = _encoder(world)
    cfg = TrainConfig(lr=1e-3, steps=3, batch_size=2, device="cpu", checkpoint_every=1, show_progress=False)
    if function == "train_heads_cached":
        kwargs["cache_dir"] = world.cache / "features"
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", argv)
        if interrupt_at is not None:
            interrupt_train_at(m, interrupt_at)
            with pytest.raises(KeyboardInterrupt):
                FUNCTIONS[function](encoder, ts, cfg, checkpoint_dir=ckpt, resume=resume, **kwargs)
            return encoder, None
        return encoder, FUNCTIONS[function](encoder, ts, cfg, checkpoint_dir=ckpt, resume=resume, **kwargs)


def _saved_training(encoder: GaussianEncoder, folder: Path) -> dict[str, Any]:
    encoder.save_pretrained(folder, include_backbone=False)
    return json.loads((folder / "config.json").read_text())["encoder"]["extra"]["training"]


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_a_python_run_resumed_from_python_records_both_calls(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str
) -> None:
    ckpt = tmp_path / "ckpt"
    _call(function, train_world, ckpt, monkeypatch, ["train.py", "--lr", "1e-3"], resume=False, interrupt_at=2)
    state = json.loads((ckpt / "state.json").read_text())
    api = f"kl_retrievers.training.{function}"
    first = {"command": "python train.py --lr 1e-3", "step_at_start": 0, "api": api}
    assert state["step"] == 2
    assert [{k: c[k] for k in first} for c in state["commands"]] == [first]

    encoder, result = _call(function, train_world, ckpt, monkeypatch, ["train.py", "--resume"], resume=True)
    training = _saved_training(encoder, tmp_path / "model")
    second = {"command": "python train.py --resume", "step_at_start": 2, "api": api}
    assert [{k: c[k] for k in first} for c in training["commands"]] == [first, second]
    assert training["command"] == "python train.py --resume"  # as the command line's: this invocation's
    started = [datetime.fromisoformat(c["started"]) for c in training["commands"]]
    assert all(s.utcoffset() is not None for s in started) and started == sorted(started)
    assert result is not None and result.commands == training["commands"]
    assert json.loads((ckpt / "state.json").read_text())["commands"] == training["commands"]


def test_a_python_run_from_scratch_records_its_one_call(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder, _ = _call("train_heads_cached", train_world, tmp_path / "ckpt", monkeypatch, ["t.py"], resume=False)
    commands = _saved_training(encoder, tmp_path / "model")["commands"]
    assert [(c["command"], c["step_at_start"], c["api"]) for c in commands] == [
        ("python t.py", 0, "kl_retrievers.training.train_heads_cached")
    ]


def test_a_python_resume_of_a_checkpoint_without_the_list_records_itself(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint of a version that recorded no invocations resumes; the earlier ones are not known."""
    ckpt = tmp_path / "ckpt"
    _call("train_heads_cached", train_world, ckpt, monkeypatch, ["t.py"], resume=False, interrupt_at=2)
    state_file = ckpt / "state.json"
    state = json.loads(state_file.read_text())
    del state["commands"]
    state_file.write_text(json.dumps(state))
    encoder, result = _call("train_heads_cached", train_world, ckpt, monkeypatch, ["t.py"], resume=True)
    assert result is not None and result.steps_done == 3
    commands = _saved_training(encoder, tmp_path / "model")["commands"]
    assert [(c["command"], c["step_at_start"]) for c in commands] == [("python t.py", 2)]


def test_commands_given_are_recorded_as_given(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``commands=`` (what the command line passes) is the whole list: the call adds no entry of its own."""
    given = [{"command": "my-launcher run 7", "started": "2026-01-01T00:00:00+00:00", "step_at_start": 0}]
    encoder, _ = _call(
        "train_heads_cached", train_world, tmp_path / "ckpt", monkeypatch, ["t.py"], resume=False, commands=given
    )
    training = _saved_training(encoder, tmp_path / "model")
    assert training["commands"] == given and training["command"] == "my-launcher run 7"


def test_the_command_lines_card_names_a_python_resumes_function(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line, its run resumed by a script, then by the command line again: the card lists all three."""
    out, ckpt = tmp_path / "m", tmp_path / "m.checkpoint"
    argv = interrupted_cli_train(train_world, out, monkeypatch, capsys)
    cli_recipe = json.loads((ckpt / "state.json").read_text())["recipe"]["cli"]
    ts = load_training_data([str(train_world.beir.resolve())], split="train")
    cfg = TrainConfig(lr=1e-3, steps=3, batch_size=2, device="cpu", checkpoint_every=1, show_progress=False)
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", ["finish.py"])
        train_heads_cached(
            _encoder(train_world), ts, cfg, cache_dir=train_world.cache / "features", checkpoint_dir=ckpt,
            resume=True, recipe={"cli": cli_recipe},
        )  # fmt: skip
    resume = [*argv, "--resume", "--steps", "4"]
    monkeypatch.setattr(sys, "argv", ["kl-retrievers", *resume])
    assert main(resume) == 0, capsys.readouterr().err
    commands = json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]["commands"]
    first, last = ("kl-retrievers " + " ".join(a) for a in (argv, resume))
    assert [(c["command"], c["step_at_start"], c.get("api")) for c in commands] == [
        (first, 0, None), ("python finish.py", 2, "kl_retrievers.training.train_heads_cached"), (last, 3, None),
    ]  # fmt: skip
    block = (out / "README.md").read_text().split("## Command\n```\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[2:4] == [
        f"# 2. started {commands[1]['started']}, at step 2, kl_retrievers.training.train_heads_cached() called by",
        "python finish.py",
    ]


@pytest.mark.parametrize("api", [3, None])
def test_an_invocation_whose_api_is_not_a_string_is_refused_naming_the_field(api: object) -> None:
    entry = {"command": "python t.py", "started": "2026-01-01T00:00:00+00:00", "step_at_start": 0, "api": api}
    with pytest.raises(ValueError, match=r"field 'commands\[0\]' must be an invocation"):
        _saved_commands(Path("state.json"), {"commands": [entry]})
