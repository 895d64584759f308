"""``kl-retrievers train`` interrupted (Ctrl-C, SIGTERM) printed only ``interrupted``: its one error line now names
the step of the last checkpoint and the ``--resume`` that continues from it (or that none was saved). A one-step
run said "after 1 steps", and its model card "final loss ... (mean of the last 20 steps)" whatever the steps run:
the card now names the steps the mean is over. docs/training.md's CLI synopsis lists every ``train`` option."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO, TrainWorld, heads_cached_train_argv, interrupt_train_at
from kl_retrievers.cli import _Terminated, main
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.training.cli import add_train_command


def test_an_interrupted_train_names_its_last_checkpoint_and_resume(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    interrupt_train_at(monkeypatch, 2)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"kl-retrievers train: error: interrupted; the last checkpoint, of step 2, is in {out}.checkpoint: run the "
        "same command with --resume to continue from it"
    )
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    assert "after 3 steps (finished)" in capsys.readouterr().out


def test_an_interrupted_train_without_a_checkpoint_says_so(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    interrupt_train_at(monkeypatch, 0)
    assert main(heads_cached_train_argv(train_world, out, "--checkpoint-every", "0")) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"kl-retrievers train: error: interrupted; no checkpoint was saved in {out}.checkpoint (--checkpoint-every N "
        "saves one every N steps)"
    )


def test_a_one_step_run_says_step_and_its_card_names_the_steps_averaged(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "one"
    assert main(heads_cached_train_argv(train_world, out, "--steps", "1")) == 0
    assert f"saved {out} after 1 step (finished)" in capsys.readouterr().out
    assert "(loss of the last step)" in (out / "README.md").read_text()
    out = tmp_path / "two"
    assert main(heads_cached_train_argv(train_world, out, "--steps", "2")) == 0
    assert f"saved {out} after 2 steps (finished)" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "(mean of the last 2 steps)" in card and "last 20 steps" not in card


def test_the_training_docs_synopsis_lists_every_train_option() -> None:
    parser = argparse.ArgumentParser()
    train = add_train_command(parser.add_subparsers())
    text = (REPO / "docs" / "training.md").read_text()
    synopsis = re.search(r"## CLI\n\n```\n(.*?)```", text, re.S)
    assert synopsis is not None
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", synopsis.group(1)))
    options = {
        s
        for action in train._actions
        if action.help is not argparse.SUPPRESS and "deprecated" not in (action.help or "")
        for s in action.option_strings
        if s.startswith("--") and s != "--help"
    }
    assert sorted(options - flags) == []


def test_a_fresh_run_interrupted_before_its_first_save_does_not_offer_an_earlier_runs_checkpoint(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")) == 0
    shutil.rmtree(out)  # m.checkpoint stays: the earlier run's, of step 3
    capsys.readouterr()
    interrupt_train_at(monkeypatch, 0)  # a fresh run (no --resume), interrupted before it saved anything
    assert main(heads_cached_train_argv(train_world, out, "--checkpoint-every", "1", "--seed", "7")) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"kl-retrievers train: error: interrupted; this run saved no checkpoint; {out}.checkpoint still holds an "
        "earlier run's checkpoint of step 3"
    )
    # once this run has saved, its own checkpoint is the one named
    shutil.rmtree(out, ignore_errors=True)
    monkeypatch.undo()
    interrupt_train_at(monkeypatch, 1)
    assert main(heads_cached_train_argv(train_world, out, "--checkpoint-every", "1", "--seed", "7")) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"the last checkpoint, of step 1, is in {out}.checkpoint: run the same command with --resume "
                        "to continue from it")  # fmt: skip


def test_an_interrupt_during_the_final_save_names_the_last_checkpoint(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(GaussianEncoder, "save_pretrained", interrupted)
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"kl-retrievers train: error: interrupted; the last checkpoint, of step 3, is in {out}.checkpoint: run the "
        "same command with --resume to continue from it"
    )


def test_a_terminated_train_exits_143_and_names_its_last_checkpoint(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    interrupt_train_at(monkeypatch, 2, _Terminated)  # what the SIGTERM handler raises
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")) == 143
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"kl-retrievers train: error: terminated (SIGTERM); the last checkpoint, of step 2, is in {out}.checkpoint: "
        "run the same command with --resume to continue from it"
    )


@pytest.mark.parametrize("state", ['{"epoch": 1}', '{"step": true}', "[3]", "{"])
def test_a_checkpoint_state_without_a_step_gives_a_hint_not_an_error(tmp_path: Path, state: str) -> None:
    """The hint is made inside the interrupt's handler: a ``state.json`` without a usable ``step`` (no key, a
    bool, not an object, not JSON) must give the no-checkpoint line, not raise (a missing key raised KeyError)."""
    from kl_retrievers.training.cli import _resume_hint

    ckpt = tmp_path / "m.checkpoint"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(state)
    assert _resume_hint(ckpt, False) == (
        f"no checkpoint was saved in {ckpt} (--checkpoint-every N saves one every N steps)"
    )
