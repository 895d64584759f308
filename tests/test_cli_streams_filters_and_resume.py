"""The command line's stream and message discipline (F8).

1. Progress bars are off when ``sys.stderr`` is ``None`` (a process started with ``2>&-``): ``encode --progress``
   had ended with an internal error (tqdm writing to ``None``), its message printed on stdout.
2. ``search --filter`` warns when a value compares with a key whose stored values are all of another JSON type
   (``{"year": {"$gte": "2020"}}`` over integer years returned nothing, exit 0, no word).
3. A command-line text that an ASCII locale decoded with surrogates is read as the UTF-8 it is (``café`` under
   ``LC_ALL=C PYTHONUTF8=0`` had been refused as "not valid UTF-8"); bytes that are no UTF-8 are still refused.
4. ``--version`` and ``--help`` honour a closed or full stdout (exit status 2), as the subcommands do.
5. ``train --resume`` without a checkpoint is refused (exit status 2) in the default folder too, naming it.
6. faiss's loader logs warnings only under ``-v``; ``train``'s summary goes to stdout; suggested paths are
   shell-quoted; ``-`` as a store, dataset or ``--data`` says that stdin is not supported.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kl_retrievers.cli as cli
from conftest import bare_root_logger, cli_error_line, heads_cached_train_argv, make_tiny_encoder, make_train_world
from kl_retrievers._encoding import progress_bar, progress_enabled, show_progress
from kl_retrievers.cli import main

ROWS = [
    {"_id": "a", "title": "", "text": "the cat sat on the mat", "year": 2020, "lang": "en"},
    {"_id": "b", "title": "", "text": "green tea and bread", "year": 2021, "lang": "de"},
    {"_id": "c", "title": "", "text": "café au lait", "year": 2022, "lang": "fr"},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, store folder): a tiny random encoder and a store of ROWS (integer years) indexed with it."""
    root = tmp_path_factory.mktemp("f8")
    model_dir = Path(make_tiny_encoder().save_pretrained(root / "model"))
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    store = root / "store"
    assert main(["index", str(corpus), "--out", str(store), "--model", str(model_dir), "--no-progress"]) == 0
    return model_dir, store


# ---------------------------------------------------------------- 1. no bars without a stderr
def test_progress_is_off_when_stderr_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled(True)
    monkeypatch.setattr(sys, "stderr", None)
    assert not progress_enabled(True)  # every tqdm(..., disable=not progress_enabled(show)) of the package
    assert not show_progress(True, 100, 1) and not show_progress(None, 100, 1)  # None had read sys.stderr.isatty()
    with progress_bar(3, desc="x", show=True) as bar:
        bar.update(1)
    assert type(bar).__name__ == "_NoBar"


def test_encode_with_progress_and_stderr_closed_writes_and_keeps_stdout_clean(
    built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = built
    monkeypatch.setattr(sys, "stderr", None)
    out = tmp_path / "enc"
    argv = ["encode", "a", "b", "-o", str(out), "--batch-size", "1", "--progress", "--model", str(model)]
    assert main(argv) == 0
    assert (out / "mean.npy").is_file()
    assert capsys.readouterr().out.startswith("wrote 2 Gaussians")
    # an error with stderr closed goes nowhere: not into the results on stdout (print(file=None) writes there)
    assert main(["search", str(tmp_path / "no such store"), "q"]) == 2
    assert capsys.readouterr().out == ""
    assert sys.stderr is None  # put back as it was


# ---------------------------------------------------------------- 2. a filter value of another JSON type
def test_a_string_compared_with_numbers_is_warned_about_with_the_number_meant(
    built: tuple[Path, Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", '{"year": {"$gte": "2020"}}']) == 0
    assert json.loads(capsys.readouterr().out)["results"] == []
    assert "every stored 'year' is a number" in caplog.text and "did you mean 2020?" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # $in, inside $or, and a number compared with strings
        filt = '{"$or": [{"year": {"$in": ["2021", "2022"]}}, {"lang": 1}]}'
        assert main(["search", str(store), "cat", "--json", "--filter", filt]) == 0
    assert 'the strings "2021", "2022" ($in)' in caplog.text, caplog.text
    assert "every stored 'lang' is a string" in caplog.text and 'did you mean "1"?' in caplog.text, caplog.text


def test_a_value_of_the_stored_type_that_matches_nothing_is_not_warned_about(
    built: tuple[Path, Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", '{"year": {"$gte": 2030}}']) == 0
    assert json.loads(capsys.readouterr().out)["results"] == []
    assert "JSON types" not in caplog.text and "no document in the store has" not in caplog.text


def test_filter_values_are_found_under_every_operator() -> None:
    found = cli._filter_values(
        {"$and": [{"a": {"$neq": "x", "$nin": [1, "y"]}}, {"$not": {"b": {"$not": {"$lt": 3}}}}], "c": [True]}
    )
    assert found == [("a", "$ne", "x"), ("a", "$nin", 1), ("a", "$nin", "y"), ("b", "$lt", 3), ("c", "$in", True)]
    # a boolean compares as a number in Python (True == 1): no warning between the two
    assert cli._mistyped_filter_values([("c", "$eq", True)], {"c": {"number"}}) == []


# ---------------------------------------------------------------- 3. UTF-8 arguments read under an ASCII locale
def test_an_argument_decoded_with_surrogates_is_read_as_utf8(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    escaped = os.fsdecode("café".encode())  # how an ASCII locale hands Python the UTF-8 bytes of café
    if escaped == "café":  # this process decodes arguments as UTF-8: build the ASCII locale's form by hand
        escaped = "café".encode().decode("ascii", "surrogateescape")
    assert escaped != "café"
    assert main(["search", str(store), escaped, "--json", "--filter", '{"lang": "fr"}']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["query"] == "café" and [hit["id"] for hit in result["results"]] == ["c"]
    assert main(["search", str(store), "cat", "--json", "--filter", '{"lang": "' + escaped + '"}']) == 0
    assert json.loads(capsys.readouterr().out)["results"] == []  # the filter read as café: no document has it
    # bytes that are no UTF-8 are still refused, naming the byte
    assert main(["search", str(store), "caf\udce9"]) == 2
    assert "not valid UTF-8 text (byte 0xe9" in cli_error_line(capsys, "search")


# ---------------------------------------------------------------- 4. --help and --version honour stdout
class _FullStdout:
    """A stdout whose writes fail as on a full disk (no file descriptor: nothing to point at /dev/null)."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("argv", [["--version"], ["search", "--help"], ["--help"]])
def test_help_and_version_to_a_full_or_closed_stdout_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdout", _FullStdout())
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "writing the output to stdout failed (No space left on device)" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: stdout is closed, so the output cannot be written" in err and "usage:" not in err, err


def test_version_still_prints_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("kl-retrievers ") and printed.err == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_version_to_dev_full_exits_2_in_a_real_process() -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "kl_retrievers", "--version"], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kl-retrievers: error: writing the output to stdout failed"), done.stderr
    assert "Exception ignored" not in done.stderr  # the interpreter's final flush does not fail again


# ---------------------------------------------------------------- 5 and 6b. train --resume, train's summary
def test_train_resume_without_a_checkpoint_is_refused_and_the_summary_is_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = make_train_world(tmp_path / "world")
    out = tmp_path / "model dir"
    assert main(heads_cached_train_argv(world, out, "--resume")) == 2
    line = cli_error_line(capsys, "train")
    assert f"'{out}.checkpoint'" in line and "(the default, <--out>.checkpoint) does not exist" in line, line
    assert "drop --resume to start from step 0" in line
    assert not out.exists()  # nothing trained
    assert main(heads_cached_train_argv(world, out)) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(f"saved {out} after 3 steps") and "final loss" in printed.out
    assert "final loss" not in printed.err


# ---------------------------------------------------------------- 6a. faiss's loader under -v
def test_faiss_loader_logs_warnings_only_while_a_command_logs() -> None:
    loader = logging.getLogger("faiss.loader")
    assert loader.level == logging.NOTSET
    with bare_root_logger():
        with cli._cli_logging(True):
            assert logging.getLogger().level == logging.INFO
            assert loader.getEffectiveLevel() == logging.WARNING
        assert loader.level == logging.NOTSET  # put back
        loader.setLevel(logging.DEBUG)  # a program's own choice is kept
        try:
            with cli._cli_logging(True):
                assert loader.level == logging.DEBUG
        finally:
            loader.setLevel(logging.NOTSET)


# ---------------------------------------------------------------- 6c. suggested paths are shell-quoted
def test_a_suggested_store_path_is_shell_quoted(tmp_path: Path) -> None:
    folder = tmp_path / "hyb store"
    folder.mkdir()
    (folder / "hybrid.json").write_text(json.dumps({"format": "kl-retrievers/hybrid"}))
    with pytest.raises(ValueError, match="KLHybridStore") as exc:
        cli._kl_store_folder(folder)
    assert f"pass '{folder / 'kl'}' to search its KL half" in str(exc.value)


def test_the_checkpoint_link_hint_is_shell_quoted(tmp_path: Path) -> None:
    from kl_retrievers.training.cli import check_checkpoint_dir

    target = tmp_path / "real ckpt"
    target.mkdir()
    (target / "state.json").write_text("{}")
    link = tmp_path / "ckpt"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link") as exc:
        check_checkpoint_dir(str(link), tmp_path / "out", [], resume=True)
    assert f"--checkpoint-dir '{target}'" in str(exc.value)


# ---------------------------------------------------------------- 6d. "-" is not stdin
@pytest.mark.parametrize(
    ("argv", "command", "named"),
    [
        (["search", "-", "q"], "search", "store -"),
        (["evaluate", "-", "--baseline", "bm25"], "evaluate", "DATASET_DIR -"),
        (["train", "--data", "-", "--out", "m"], "train", "--data -"),
    ],
)
def test_a_dash_input_says_stdin_is_not_supported(
    argv: list[str],
    command: str,
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no file named "-" here
    assert main(argv) == 2
    line = cli_error_line(capsys, command)
    assert f"{named}: reading stdin is not supported" in line and "not found" not in line, line
