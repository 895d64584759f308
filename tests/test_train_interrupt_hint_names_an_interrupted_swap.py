"""The error line of an interrupted ``kl-retrievers train`` (:func:`_resume_hint`) runs no ``recover_dir`` (no disk
changes from an error path), so where a checkpoint save was interrupted mid-swap (the folder swap is not atomic
everywhere: the checkpoint folder missing, its previous copy ``.NAME.old-HEX`` beside it) the line said "no checkpoint
was saved". It now finds the copy (read-only) and says that ``--resume`` recovers it and continues from its step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TrainWorld, heads_cached_train_argv
from kl_retrievers.cli import main
from kl_retrievers.training import trainer as trainer_module
from kl_retrievers.training.cli import _resume_hint


def _listing(folder: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))


def _leftover(ckpt: Path, step: int, name: str | None = None) -> Path:
    """What a checkpoint save killed between its two renames leaves: ``ckpt`` missing, its copy beside it."""
    copy = ckpt.with_name(name or f".{ckpt.name}.old-0123abcd")
    copy.mkdir(parents=True)
    (copy / "state.json").write_text(json.dumps({"step": step}))
    return copy


@pytest.mark.parametrize("resumed", [False, True])
def test_the_hint_names_the_previous_copy_of_an_interrupted_swap(tmp_path: Path, resumed: bool) -> None:
    ckpt = tmp_path / "m.checkpoint"
    copy = _leftover(ckpt, 4)
    before = _listing(tmp_path)
    again = "the same command again" if resumed else "the same command with --resume"
    assert _resume_hint(ckpt, resumed) == (
        f"a checkpoint save was interrupted mid-swap: {ckpt} holds no checkpoint, and its previous copy {copy} holds "
        f"the checkpoint of step 4: run {again} to recover it and continue from it"
    )
    assert _listing(tmp_path) == before  # found, not restored


def test_the_newest_copy_is_named_as_recover_dir_would_restore_it(tmp_path: Path) -> None:
    import os

    ckpt = tmp_path / "m.checkpoint"
    older = _leftover(ckpt, 2, ".m.checkpoint.old-aaaa")
    newer = _leftover(ckpt, 6, ".m.checkpoint.old-bbbb")
    os.utime(older, ns=(10**18, 10**18))
    os.utime(newer, ns=(2 * 10**18, 2 * 10**18))
    (tmp_path / ".m.checkpoint.old-cccc").mkdir()  # no state.json: not a checkpoint's copy
    assert f"its previous copy {newer} holds the checkpoint of step 6" in _resume_hint(ckpt, False)


def test_the_legacy_previous_copy_of_earlier_versions_is_named_too(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.checkpoint"
    copy = _leftover(ckpt, 5, "m.checkpoint.old")
    assert f"its previous copy {copy} holds the checkpoint of step 5" in _resume_hint(ckpt, False)


def test_no_copy_still_says_no_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.checkpoint"
    (tmp_path / ".m.checkpoint.tmp-0123abcd").mkdir()  # an unfinished new copy is not a checkpoint
    assert _resume_hint(ckpt, False) == (
        f"no checkpoint was saved in {ckpt} (--checkpoint-every N saves one every N steps)"
    )


def test_a_fresh_run_interrupted_beside_an_interrupted_swap_names_the_copy_and_resume_recovers_it(
    train_world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    ckpt = tmp_path / "m.checkpoint"
    argv = heads_cached_train_argv(train_world, out, "--checkpoint-every", "1")
    assert main(argv) == 0
    shutil.rmtree(out)
    copy = tmp_path / ".m.checkpoint.old-0123abcd"
    ckpt.rename(copy)  # a later save of the step-3 checkpoint killed between its two renames
    capsys.readouterr()
    check = trainer_module._check_finite_weights

    def interrupted(named: object, step: int) -> None:
        if step == 0:
            raise KeyboardInterrupt
        check(named, step)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "_check_finite_weights", interrupted)
    assert main(argv) == 130  # a run without --resume, interrupted before its first save
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"kl-retrievers train: error: interrupted; this run saved no checkpoint; a checkpoint save was interrupted "
        f"mid-swap: {ckpt} holds no checkpoint, and its previous copy {copy} holds an earlier run's checkpoint of "
        "step 3 (the next --resume puts it back in place)"
    )  # named, not advised: an earlier run's checkpoint may be finished, or of another recipe
    assert copy.is_dir() and not ckpt.exists()  # the error path changed nothing
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    assert f"saved {out} after 3 steps (finished)" in capsys.readouterr().out
    assert not copy.exists() and (ckpt / "state.json").is_file()
