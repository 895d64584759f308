"""``_io.atomic_file`` never replaces what is not a regular file (probe R6, F1).

A file is written by renaming a new copy onto its path; on a named pipe, a device or a symbolic
link that turned the pipe, device or link into a regular file (``evaluate --save-run /dev/null``
once replaced ``/dev/null``-like nodes, and a link to ``/proc/self/fd/1`` replaced ``/dev/stdout``)
and then cleaned "leftovers" in that folder. Such targets are now refused before the body runs.
Only named pipes and symbolic links are made here (device nodes need root); a named pipe is never
opened (that would wait for a writer).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from kl_retrievers import _io
from kl_retrievers.cli import main
from kl_retrievers.evaluation import save_per_query, write_trec_run

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")

RUN = {"q1": {"d1": 1.0, "d2": 0.5}}


def _is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


def _leftover(target: Path) -> Path:
    """An unlocked ``.NAME.tmp-HEX`` beside ``target``, as a killed save leaves it (clean_stale would remove it)."""
    leftover = target.parent / f".{target.name}.tmp-deadbeef"
    leftover.write_text("left by a killed save")
    return leftover


def _write_refused(target: Path, match: str) -> None:
    """``atomic_file(target)`` raises ``ValueError`` matching ``match`` before its body runs."""
    ran = []
    with pytest.raises(ValueError, match=match) as info, _io.atomic_file(target) as tmp:
        ran.append(tmp)
        tmp.write_text("new")
    assert str(target) in str(info.value)
    assert ran == [], "the body ran although the target is refused"


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_named_pipe_is_refused_kept_and_nothing_is_cleaned_beside_it(tmp_path: Path) -> None:
    fifo = tmp_path / "run.trec"
    os.mkfifo(fifo)
    leftover = _leftover(fifo)
    _write_refused(fifo, "named pipe")
    assert _is_fifo(fifo)
    assert leftover.exists(), "stale-cleaning ran in the folder of a refused write"
    assert _hidden(tmp_path) == [leftover.name]  # no temporary copy left either


def test_a_symlink_to_a_named_pipe_is_refused_and_kept(tmp_path: Path) -> None:
    fifo, link = tmp_path / "pipe", tmp_path / "out.trec"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    leftover = _leftover(link)
    _write_refused(link, r"symbolic link to .*pipe.* \(a named pipe\).*Choose a path to a regular file")
    assert link.is_symlink() and _is_fifo(fifo)
    assert leftover.exists()


def test_a_symlink_to_a_regular_file_is_refused_and_neither_is_changed(tmp_path: Path) -> None:
    real, link = tmp_path / "real_target.txt", tmp_path / "link.trec"
    real.write_text("user data\n")
    link.symlink_to(real.name)  # relative, as `ln -s real_target.txt link.trec` makes it
    _write_refused(link, r"symbolic link to 'real_target.txt' \(a regular file\).*target directly")
    assert link.is_symlink() and os.readlink(link) == real.name
    assert real.read_text() == "user data\n"


def test_a_dangling_symlink_is_refused_and_its_target_not_created(tmp_path: Path) -> None:
    link = tmp_path / "link.trec"
    link.symlink_to(tmp_path / "sub" / "missing.trec")
    _write_refused(link, "dangling symbolic link")
    assert link.is_symlink()
    assert not (tmp_path / "sub").exists()


def test_a_symlink_to_a_folder_is_refused(tmp_path: Path) -> None:
    folder, link = tmp_path / "folder", tmp_path / "link.json"
    folder.mkdir()
    link.symlink_to(folder, target_is_directory=True)
    _write_refused(link, r"\(a folder\)")
    assert link.is_symlink() and folder.is_dir()


def test_a_folder_is_still_refused_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a folder"), _io.atomic_file(tmp_path):
        pass


def test_a_new_path_and_a_regular_file_are_still_written_and_cleaned_beside(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    with _io.atomic_file(target) as tmp:
        tmp.write_text("1")
    leftover = _leftover(target)
    with _io.atomic_file(target) as tmp:
        tmp.write_text("2")
    assert target.read_text() == "2" and not target.is_symlink()
    assert not leftover.exists()  # a regular file's leftovers are still removed


def test_something_put_at_the_target_while_the_body_writes_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "run.trec"
    with pytest.raises(ValueError, match="named pipe"), _io.atomic_file(target) as tmp:
        tmp.write_text("new")
        os.mkfifo(target)
    assert _is_fifo(target)
    assert _hidden(tmp_path) == []  # the temporary copy is removed


def test_clean_stale_does_nothing_beside_a_pipe_or_a_link(tmp_path: Path) -> None:
    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    leftovers = [_leftover(fifo), _leftover(link)]
    assert _io.clean_stale(fifo) == [] and _io.clean_stale(link) == []
    assert all(p.exists() for p in leftovers)


def test_the_run_and_per_query_writers_refuse_a_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="named pipe"):
        write_trec_run(fifo, RUN)
    with pytest.raises(ValueError, match="named pipe"):
        save_per_query(fifo, {"q1": {"ndcg@10": 1.0}})
    assert _is_fifo(fifo)


def test_evaluate_save_run_onto_a_pipe_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))
    ds = tmp_path / "ds"
    (ds / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "text": "alpha beta"}, {"_id": "d2", "text": "gamma delta"}]
    (ds / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (ds / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "alpha"}) + "\n", encoding="utf-8")
    (ds / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    fifo = tmp_path / "run.trec"
    os.mkfifo(fifo)
    code = main(["evaluate", str(ds), "--baseline", "bm25", "--no-progress", "--save-run", str(fifo)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(fifo) in err and "named pipe" in err, err
    assert _is_fifo(fifo)


def test_save_gaussians_never_replaces_a_pipe_or_a_link_even_with_overwrite(tmp_path: Path) -> None:
    import numpy as np

    from kl_retrievers import Gaussians

    g = Gaussians(np.zeros((2, 3)), np.ones((2, 3)))
    fifo = tmp_path / "g.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="named pipe"):
        _io.save_gaussians(fifo, g, overwrite=True)
    assert _is_fifo(fifo)
    real, link = tmp_path / "real.safetensors", tmp_path / "link.safetensors"
    _io.save_gaussians(real, g)
    before = real.read_bytes()
    link.symlink_to(real)
    with pytest.raises(ValueError, match=r"symbolic link to .*real\.safetensors.* \(a regular file\)"):
        _io.check_replace_gaussians_file(link)  # what `encode --out` checks before loading a model
    with pytest.raises(ValueError, match="symbolic link"):
        _io.save_gaussians(link, g)
    assert link.is_symlink() and real.read_bytes() == before
