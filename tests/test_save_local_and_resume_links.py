"""LangChain ``save_local`` through a re-pointed link, checkpoint folders that are links, the training bar's line.

1. ``KLVectorStore.save_local`` resolves a symbolic link at its folder (or above it) once, before anything is
   written, as ``KLStore.save`` does: ``klstore/`` and ``langchain.json`` both land in the folder the link named
   then, and the link is kept. It used to go through the link at each write, so a link re-pointed during the
   save split one save over two folders (or wrote into a folder that was never checked).
2. A ``--checkpoint-dir`` / ``checkpoint_dir=`` that is a symbolic link is refused with ``--resume`` /
   ``resume=True`` as without it (docs/cli.md: "a link there is refused, and ``--overwrite`` replaces the link
   itself"); a resume through the link used to run and replace the link by a real folder at its first checkpoint.
3. The trainer's progress bar keeps its line only when no other bar is open (``leave=None``, the rule of the
   package's other bars); nested in a caller's bar it used to leave a stale line (``leave=True``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import tqdm as tqdm_module

from conftest import (
    heads_cached_train_argv,
    make_tiny_encoder,
    make_train_world,
    random_gaussians,
    rows_train_config,
    write_train_jsonl,
)
from kl_retrievers.cli import main
from kl_retrievers.store import KLStore
from kl_retrievers.training import read_jsonl, train_encoder, train_heads_cached


def _kl_store() -> KLStore:
    store = KLStore()
    store.add(["a", "b"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    return store


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1: save_local through a re-pointed link
@pytest.mark.parametrize("when", ["before_writes", "between_writes"])
@pytest.mark.parametrize("index_name", ["index", "news"])
def test_save_local_writes_both_parts_where_the_link_pointed_at_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, index_name: str
) -> None:
    from kl_retrievers import langchain as lc

    (tmp_path / "v3").mkdir()
    (tmp_path / "v4").mkdir()
    (tmp_path / "v4" / "notes.txt").write_text("mine")  # a folder save_local never judged (and would refuse)
    link = tmp_path / "current"
    link.symlink_to("v3")

    def repoint() -> None:
        link.unlink()
        link.symlink_to("v4")

    real_save = lc.save_store_with_manifest

    def save_store(*args: Any, **kwargs: Any) -> None:
        if when == "before_writes":  # after the checks, before klstore/ is written
            repoint()
        real_save(*args, **kwargs)
        if when == "between_writes":  # after klstore/, before langchain.json
            repoint()

    monkeypatch.setattr(lc, "save_store_with_manifest", save_store)
    folder = lc.KLVectorStore(store=_kl_store()).save_local(link, index_name=index_name)
    assert folder == (link if index_name == "index" else link / index_name)  # the path given, not resolved
    saved = tmp_path / "v3" if index_name == "index" else tmp_path / "v3" / index_name
    assert {p.name for p in saved.iterdir()} == {"klstore", "langchain.json"}
    assert [p.name for p in (tmp_path / "v4").iterdir()] == ["notes.txt"]  # nothing written there
    assert link.is_symlink() and os.readlink(link) == "v4"  # the link is kept (as re-pointed)
    loaded = lc.KLVectorStore.load_local(saved)
    assert len(loaded.store) == 2
    # both parts come from one save: the manifest beside klstore/ is the one its copy inside names
    outer = json.loads((saved / "langchain.json").read_text())
    inner = json.loads((saved / "klstore" / "langchain_manifest.json").read_text())
    assert outer["save_id"] == inner["save_id"]


def test_save_local_judges_the_folder_the_link_points_to(tmp_path: Path) -> None:
    from kl_retrievers.langchain import KLVectorStore

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "current").symlink_to("mine")
    with pytest.raises(ValueError, match=r"current is not empty and was not written by KLVectorStore\.save_local"):
        KLVectorStore(store=_kl_store()).save_local(tmp_path / "current")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------ 2: a checkpoint folder that is a link
def test_train_resume_refuses_a_linked_checkpoint_dir_as_a_new_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = make_train_world(tmp_path / "world")
    ck = tmp_path / "ck"
    assert main(heads_cached_train_argv(world, tmp_path / "m1", "--checkpoint-dir", os.fspath(ck))) == 0
    before = _listing(ck)
    link = tmp_path / "ck-link"
    link.symlink_to("ck")
    argv = heads_cached_train_argv(world, tmp_path / "m2", "--checkpoint-dir", os.fspath(link), "--steps", "4")
    for extra in ([], ["--resume"]):
        capsys.readouterr()
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert f"--checkpoint-dir {link}: cannot save into {link}: it is a symbolic link" in err, err
        assert "pass --overwrite to replace the link" in err
        assert link.is_symlink() and os.readlink(link) == "ck" and not (tmp_path / "m2").exists()
        assert _listing(ck) == before
    assert f"to resume from the checkpoint the link points to, pass that folder: --checkpoint-dir {ck}" in err
    # --resume --overwrite: reads the checkpoint through the link, then replaces the link itself (not ck)
    assert main([*argv, "--resume", "--overwrite"]) == 0, capsys.readouterr().err
    assert link.is_dir() and not link.is_symlink() and json.loads((link / "state.json").read_text())["step"] == 4
    assert _listing(ck) == before


@pytest.mark.parametrize("trainer", ["heads", "encoder"])
def test_python_resume_refuses_a_linked_checkpoint_dir_as_a_new_run_does(tmp_path: Path, trainer: str) -> None:
    train = train_heads_cached if trainer == "heads" else train_encoder
    ts = read_jsonl(write_train_jsonl(tmp_path / "train.jsonl"))
    ck = tmp_path / "ck"
    train(
        make_tiny_encoder(pooling="mean"), ts, rows_train_config(time_budget_s=0.0), checkpoint_dir=ck
    )  # stops at step 1
    before = _listing(ck)
    link = tmp_path / "ck-link"
    link.symlink_to("ck")
    enc = make_tiny_encoder(pooling="mean")
    heads_before = enc.mean_head.weight.detach().clone()
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"checkpoint_dir .*ck-link: .*it is a symbolic link") as info:
            train(enc, ts, rows_train_config(), checkpoint_dir=link, resume=resume)
        assert "pass overwrite=True to replace the link" in str(info.value)
        assert link.is_symlink() and _listing(ck) == before
        assert torch.equal(enc.mean_head.weight, heads_before)  # refused before any step
    assert f"to resume from the checkpoint the link points to, pass that folder, checkpoint_dir={str(ck)!r}" in str(
        info.value
    )
    # the folder the link points to resumes
    assert train(enc, ts, rows_train_config(), checkpoint_dir=ck, resume=True).resumed_from == 1


# ------------------------------------------------------------------ 3: the training bar's line
def test_training_bar_keeps_its_line_only_when_no_other_bar_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.training import trainer as trainer_module

    kept: list[bool] = []

    class RecordingBar(tqdm_module.tqdm):  # type: ignore[type-arg]
        def close(self) -> None:
            if not self.disable and not getattr(self, "_recorded", False):
                self._recorded = True
                kept.append(self.pos == 0 if self.leave is None else bool(self.leave))  # as tqdm's close decides
            super().close()

    monkeypatch.setattr(trainer_module, "tqdm", RecordingBar)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    ts = read_jsonl(write_train_jsonl(tmp_path / "train.jsonl"))
    cfg = rows_train_config(show_progress=True)
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg, cache_dir=tmp_path / "cache")
    with tqdm_module.tqdm(total=1, desc="a user's loop") as outer:  # the caller's own bar, still open
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg, cache_dir=tmp_path / "cache")
        outer.update(1)
    assert kept == [True, False]  # alone: its line stays; nested: its line is cleared
