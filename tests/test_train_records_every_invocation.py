"""After ``kl-retrievers train --resume`` the saved model recorded only the last invocation's command
(``training.command``). Every invocation is now recorded too: ``training.commands``, a list of
``{"command", "started", "step_at_start"}`` kept in the checkpoints (``state.json``'s ``commands``, beside the
recipe: a resume adds to it and its recipe check does not see it), so a resumed run's folder shows the first
command and each resume; the model card lists them. ``training.command`` stays this invocation's."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import TrainWorld, heads_cached_train_argv, interrupt_train_at
from kl_retrievers.cli import main
from kl_retrievers.training.trainer import _recipe_differences


def _run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    """``kl-retrievers ARGV`` as run from a shell: its ``sys.argv`` is what the command records."""
    monkeypatch.setattr(sys, "argv", ["kl-retrievers", *argv])
    return main(argv)


def _training(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]


def test_a_resumed_run_records_the_first_command_and_each_resume(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    interrupt_train_at(monkeypatch, 2)
    assert _run(monkeypatch, argv) == 130  # the checkpoint of step 2 is left
    monkeypatch.undo()
    assert _run(monkeypatch, [*argv, "--resume"]) == 0  # steps 2 -> 3
    assert _run(monkeypatch, [*argv, "--resume", "--steps", "4"]) == 0  # 3 -> 4
    capsys.readouterr()
    first, second, third = (
        "kl-retrievers " + " ".join(a) for a in (argv, [*argv, "--resume"], [*argv, "--resume", "--steps", "4"])
    )
    training = _training(out)
    assert training["command"] == third  # as before: this invocation's
    commands = training["commands"]
    assert [c["command"] for c in commands] == [first, second, third]
    assert [c["step_at_start"] for c in commands] == [0, 2, 3]
    started = [datetime.fromisoformat(c["started"]) for c in commands]
    assert all(s.utcoffset() is not None for s in started) and started == sorted(started)
    state = json.loads((tmp_path / "m.checkpoint" / "state.json").read_text())
    assert state["commands"] == commands  # what the next resume adds to
    card = (out / "README.md").read_text()
    block = card.split("## Command\n```\n", 1)[1].split("```", 1)[0].splitlines()
    assert block == [
        f"# 1. started {commands[0]['started']}, at step 0", first,
        f"# 2. started {commands[1]['started']}, at step 2", second,
        f"# 3. started {commands[2]['started']}, at step 3", third,
    ]  # fmt: skip


def test_a_run_from_scratch_records_its_one_command(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--steps", "1")
    assert _run(monkeypatch, argv) == 0
    command = "kl-retrievers " + " ".join(argv)
    training = _training(out)
    assert training["command"] == command
    assert [(c["command"], c["step_at_start"]) for c in training["commands"]] == [(command, 0)]
    assert f"## Command\n```\n{command}\n```" in (out / "README.md").read_text()


def test_a_checkpoint_without_recorded_commands_resumes(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint of a version that recorded no invocations resumes (the entry is not part of the recipe)."""
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    assert main(argv) == 0
    state_file = tmp_path / "m.checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    del state["commands"]
    state_file.write_text(json.dumps(state))
    assert main([*argv, "--resume", "--steps", "4"]) == 0
    commands = _training(out)["commands"]
    assert [c["step_at_start"] for c in commands] == [3]  # the earlier ones are not known


def test_the_recipe_check_does_not_compare_the_invocations() -> None:
    one = {"command": "kl-retrievers train", "started": "2026-01-01T00:00:00+00:00", "step_at_start": 0}
    two = one | {"command": "kl-retrievers train --resume", "step_at_start": 2}
    cli = {"hard_negatives": "none"}
    saved = {"mode": "encoder", "cli": cli | {"commands": [one]}}
    assert _recipe_differences(saved, {"mode": "encoder", "cli": cli | {"commands": [one, two]}}) == []
    assert _recipe_differences(saved, {"mode": "encoder", "cli": cli}) == []  # a checkpoint written before them
    assert _recipe_differences(saved, {"mode": "encoder", "cli": {"hard_negatives": "bm25"}}) != []


def test_main_called_from_python_records_its_argv_not_the_processs(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--steps", "1")
    monkeypatch.setattr(sys, "argv", ["some-notebook-kernel", "-f", "kernel.json"])  # the process's own command
    assert main(argv) == 0
    command = "kl-retrievers " + " ".join(argv)
    assert _training(out)["command"] == command
    assert [c["command"] for c in _training(out)["commands"]] == [command]
