"""The training command line's record of its invocations (``commands``) was kept inside the checkpoint's recipe
(``recipe.cli.commands``): a version before it, which compares every recipe entry, refused to resume a new
checkpoint ("trained with a different recipe: --commands (cli.commands)"), and the list was copied into
``config.json`` and the model card unchecked. It is now a top-level ``state.json`` entry beside the recipe, which
older versions ignore; a resume reads it from the checkpoint as the resume check read and checked it, and refuses a
damaged one naming the field. Checkpoints that kept it in the recipe still resume, with their invocations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TrainWorld, heads_cached_train_argv
from kl_retrievers.cli import main
from kl_retrievers.training import trainer as trainer_module


def _state(out: Path) -> tuple[Path, dict]:
    state_file = out.with_name(out.name + ".checkpoint") / "state.json"
    return state_file, json.loads(state_file.read_text())


def _commands(out: Path) -> list[dict]:
    return json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]["commands"]


def test_the_checkpoint_keeps_the_invocations_beside_its_recipe_so_an_older_check_resumes_it(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    assert main(argv) == 0
    _, state = _state(out)
    assert "commands" not in state["recipe"]["cli"]
    assert state["commands"] == _commands(out)
    assert [c["step_at_start"] for c in state["commands"]] == [0]
    # a version before the record compares every recipe entry (no skip of the invocations): it resumes
    monkeypatch.setattr(trainer_module, "_RECORDS", ())
    assert main([*argv, "--resume", "--steps", "4"]) == 0, capsys.readouterr().err
    assert [c["step_at_start"] for c in _commands(out)] == [0, 3]


def test_a_checkpoint_with_the_invocations_in_its_recipe_resumes_with_them(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As one development version wrote them: ``recipe.cli.commands``, no top-level entry."""
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    assert main(argv) == 0
    state_file, state = _state(out)
    state["recipe"]["cli"]["commands"] = state.pop("commands")
    state_file.write_text(json.dumps(state))
    assert main([*argv, "--resume", "--steps", "4"]) == 0, capsys.readouterr().err
    assert [c["step_at_start"] for c in _commands(out)] == [0, 3]
    _, state = _state(out)
    assert "commands" not in state["recipe"]["cli"] and len(state["commands"]) == 2


@pytest.mark.parametrize(
    ("where", "damaged", "field"),
    [
        ("top", [{"command": "kl-retrievers train", "started": 3, "step_at_start": 0}], "commands[0]"),
        ("top", [{"command": "kl-retrievers train", "started": "2026", "step_at_start": True}], "commands[0]"),
        ("top", {"command": "kl-retrievers train"}, "commands"),
        ("recipe", "kl-retrievers train", "recipe.cli.commands"),
    ],
)
def test_a_damaged_record_of_the_invocations_is_refused_naming_the_field(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, damaged: object, field: str
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    assert main(argv) == 0
    state_file, state = _state(out)
    if where == "top":
        state["commands"] = damaged
    else:
        del state["commands"]
        state["recipe"]["cli"]["commands"] = damaged
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    assert main([*argv, "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{state_file}: field {field!r} must be " in err and "the checkpoint is damaged" in err


def test_only_the_three_fields_of_each_invocation_are_copied(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    assert main(argv) == 0
    state_file, state = _state(out)
    state["commands"][0]["note"] = "x" * 10_000  # not part of an invocation's record: left out
    state_file.write_text(json.dumps(state))
    assert main([*argv, "--resume", "--steps", "4"]) == 0
    assert all(set(c) == {"command", "started", "step_at_start"} for c in _commands(out))
