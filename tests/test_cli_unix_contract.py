"""The command line as a Unix tool: one line per hit, stdout for results only, exit statuses, signals, flags."""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.cli as cli
from conftest import make_tiny_encoder
from kl_retrievers.cli import build_parser, main

ROWS = [
    {"_id": "a", "title": "", "text": "the cat sat\n  2. -KL=    0.0000  [fake] a forged result line", "year": 2020},
    {"_id": "b\tc", "title": "", "text": "hello\r\x1b[31mworld\u2028 red é", "year": 2021},
    {"_id": "d", "title": "", "text": "green tea and black tea", "year": 2022},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, store folder): a tiny random encoder and a store of ROWS indexed with it."""
    root = tmp_path_factory.mktemp("unix")
    model_dir = make_tiny_encoder().save_pretrained(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    store = root / "store"
    assert main(["index", str(corpus), "--out", str(store), "--model", str(model_dir), "--no-progress"]) == 0
    return Path(model_dir), store


def _fake_command(monkeypatch: pytest.MonkeyPatch, func: Any) -> None:
    """Make ``search`` run ``func(args)`` instead (the parser binds ``cli._run_search`` when it is built)."""
    monkeypatch.setattr(cli, "_run_search", func)


# ---------------------------------------------------------------- text output (F3, F4, F5)
def test_search_text_output_escapes_control_characters_one_line_per_hit(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    capsys.readouterr()
    assert main(["search", str(store), "cat", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # the query line and one line per hit, whatever the documents hold
    assert lines[0].startswith("query: 'cat'")
    assert all(line.startswith(f"  {rank:>3}. -KL=") for rank, line in enumerate(lines[1:], 1))
    text = "\n".join(lines)
    assert "\x1b" not in text and "\r" not in text and "\t" not in text and "\u2028" not in text
    assert "[b\\tc]" in text and "\\x1b[31m" in text and "\\u2028 red é" in text
    assert "sat\\n  2. -KL=" in text  # the forged line stays inside its hit's line


def test_search_json_output_keeps_texts_and_ids_unchanged(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    capsys.readouterr()
    assert main(["search", str(store), "cat", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert {h["id"]: h["text"] for h in hits} == {r["_id"]: r["text"] for r in ROWS}


def test_text_output_shows_a_small_uncertainty_and_computes_it_once(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.gaussian import Gaussians

    calls = []

    def uncertainty(self: Gaussians) -> np.ndarray:
        calls.append(1)
        return np.full(len(self), -0.00017253)

    monkeypatch.setattr(Gaussians, "uncertainty", uncertainty)
    _, store = built
    capsys.readouterr()
    assert main(["search", str(store), "cat", "tea", "hello", "-k", "1"]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if line.startswith("query:")]
    assert len(heads) == 3 and all("(uncertainty -0.0001725)" in head for head in heads), heads
    assert len(calls) == 1  # once per batch, not once per printed query
    calls.clear()
    assert main(["search", str(store), "cat", "tea", "hello", "-k", "1", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["uncertainty"] for r in records] == [-0.00017253] * 3  # JSON unchanged: the full value
    assert len(calls) == 1


# ---------------------------------------------------------------- progress bars (F6)
def test_progress_bar_follows_the_library_rule_unless_asked(
    built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.encoder import GaussianEncoder

    seen: list[Any] = []
    original = GaussianEncoder.encode_documents

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("show_progress_bar", "missing"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GaussianEncoder, "encode_documents", spy)
    model_dir, _ = built
    base = ["encode", "cat", "tea", "--model", str(model_dir), "--model-backend", "torch"]
    assert main([*base, "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main([*base, "--out", str(tmp_path / "b.safetensors"), "--no-progress"]) == 0
    assert main([*base, "--out", str(tmp_path / "c.safetensors"), "--progress"]) == 0
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "x", "text": "cat"}\n', encoding="utf-8")
    assert main(["index", str(corpus), "--out", str(tmp_path / "s"), "--model", str(model_dir)]) == 0
    assert seen == [None, False, True, None]  # None: the library's rule (a bar only when stderr is a terminal)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--out", "x.safetensors", "--progress", "--no-progress"])


# ---------------------------------------------------------------- stdout closed or failing (F9)
def test_closed_stdout_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_command(monkeypatch, lambda args: print("results") or 0)
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["search", "store", "q"]) == 2
    err = capsys.readouterr().err
    assert "stdout is closed" in err and "internal error" not in err


class _FullStdout:
    """A stdout on a full disk: ``write`` (or only ``flush``) raises ENOSPC."""

    def __init__(self, fail_write: bool) -> None:
        self.fail_write = fail_write

    def write(self, text: str) -> int:
        if self.fail_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(text)

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail_write", [True, False])
def test_a_failed_write_to_stdout_says_it_was_stdout(
    fail_write: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_command(monkeypatch, lambda args: print("results") or 0)
    full = _FullStdout(fail_write)
    monkeypatch.setattr(sys, "stdout", full)
    assert main(["search", "store", "q"]) == 2
    assert sys.stdout is full  # restored after the command
    err = capsys.readouterr().err
    assert "writing the output to stdout failed (No space left on device)" in err, err


# ---------------------------------------------------------------- Ctrl-C and SIGTERM (F10, F11)
def test_ctrl_c_while_the_parser_is_built_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted() -> argparse.ArgumentParser:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        status = main(["search", "store", "q"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main() (a traceback for the user)")
    assert status == 130
    assert capsys.readouterr().err.strip() == "kl-retrievers: error: interrupted"


def test_ctrl_c_while_the_command_line_modules_load_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.__main__ import run

    class Interrupting:
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "kl_retrievers.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "kl_retrievers.cli")  # put back afterwards: the module is not re-imported
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert run() == 130
    assert capsys.readouterr().err.strip() == "kl-retrievers: error: interrupted"


class _NotHandled(Exception):
    pass


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_exits_143_with_one_line_and_restores_the_handler(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert threading.current_thread() is threading.main_thread()
    cleaned = []

    def command(args: Any) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
            return 0
        finally:
            cleaned.append(True)  # the clean-up path (finally blocks) runs, as for Ctrl-C

    def ours(signum: int, frame: Any) -> None:  # stands in for the default (which would kill pytest)
        raise _NotHandled("main() did not handle SIGTERM")

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        _fake_command(monkeypatch, command)
        status = main(["search", "store", "q"])
        assert signal.getsignal(signal.SIGTERM) is ours  # put back after the command
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 143
    assert cleaned == [True]
    assert capsys.readouterr().err.strip() == "kl-retrievers search: error: terminated (SIGTERM)"


# ---------------------------------------------------------------- no subcommand, python -m, flags (F12, F13)
def test_no_subcommand_prints_usage_to_stderr_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: kl-retrievers") and "choose a COMMAND" in err


def test_python_dash_m_runs_the_command_line() -> None:
    import importlib.util

    import kl_retrievers

    spec = importlib.util.find_spec("kl_retrievers.__main__")  # the package's own, not another install's
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(kl_retrievers.__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "kl_retrievers", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("kl-retrievers ")


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["search", "s", "q"], False),
        (["-v", "search", "s", "q"], True),
        (["search", "s", "q", "-v"], True),
        (["evaluate", "data", "--verbose"], True),
        (["encode", "hi", "--out", "x.safetensors", "-v"], True),
    ],
)
def test_verbose_is_accepted_after_the_subcommand(argv: list[str], verbose: bool) -> None:
    assert build_parser().parse_args(argv).verbose == verbose  # a count: 1 for -v


def test_encode_backend_onnx_hints_at_model_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["encode", "hi", "--out", str(tmp_path / "g.safetensors"), "--backend", "onnx"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'onnx'" in err and "pass --model-backend onnx" in err


# ---------------------------------------------------------------- messages (F14, F15, F8)
def test_a_moved_recorded_model_names_the_store_record_and_model_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = Path(make_tiny_encoder().save_pretrained(tmp_path / "model"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "x", "text": "cat"}\n', encoding="utf-8")
    store = tmp_path / "store"
    assert main(["index", str(corpus), "--out", str(store), "--model", str(model_dir), "--no-progress"]) == 0
    moved = tmp_path / "moved"
    shutil.move(model_dir, moved)
    capsys.readouterr()
    assert main(["search", str(store), "cat"]) == 2
    err = capsys.readouterr().err
    assert "records its encoder as" in err and str(model_dir) in err and "pass --model" in err, err
    assert main(["search", str(store), "cat", "--model", str(moved)]) == 0  # --model overrides the record


def test_demo_without_a_calibrator_warns_in_command_line_words(
    built: tuple[Path, Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir, _ = built
    with caplog.at_level(logging.WARNING):
        assert main(["demo", "cat", "--model", str(model_dir), "-k", "1"]) == 0
    said = caplog.text + capsys.readouterr().err
    assert "ships no confidence calibration" in said
    assert "calibrator=" not in said  # a Python keyword, which demo has no flag for


def test_a_filter_key_no_document_has_is_warned_about(
    built: tuple[Path, Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", '{"yeer": 2020}']) == 0
    assert json.loads(capsys.readouterr().out)["results"] == []
    assert "'yeer'" in caplog.text and "no document in the store has" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", '{"$or": [{"year": 1999}, {"x": 1}]}']) == 0
    assert "'x'" in caplog.text and "'year'" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", '{"year": 1999}']) == 0
    assert "no document in the store has" not in caplog.text  # a present key matching nothing is no typo


@pytest.mark.parametrize("command", ["encode", "index"])
def test_out_dash_is_refused_not_made_a_folder(
    command: str,
    built: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir, _ = built
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "x", "text": "cat"}\n', encoding="utf-8")
    given = ["cat"] if command == "encode" else [str(corpus)]
    assert main([command, *given, "--out", "-", "--model", str(model_dir), "--no-progress"]) == 2
    assert "--out -: writing to stdout is not supported" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


# ---------------------------------------------------------------- review V6 (text, filters, streams, signals, outputs)
@pytest.mark.parametrize(
    "text",
    [
        "10\u00a0km",  # no-break space
        "\u6771\u4eac\u3000\u5927\u962a",  # ideographic space
        "prix\u202f: 3",  # narrow no-break space
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # zero-width non-joiner (Persian)
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # zero-width joiner (an emoji family)
        "co\u00adoperate",  # soft hyphen
        "e\u0301 \u05e9\u05dc\u05d5\u05dd",  # a combining accent, Hebrew
    ],
)
def test_text_output_keeps_spaces_and_format_characters_of_ordinary_text(text: str) -> None:
    assert cli._printable(text) == text


def test_text_output_escapes_controls_bidi_overrides_surrogates_and_doubles_backslashes() -> None:
    assert cli._printable("a\nb\u2029c\x7f") == "a\\nb\\u2029c\\x7f"
    assert cli._printable("abc\u202edef\u2066x\u200fy\u061c") == "abc\\u202edef\\u2066x\\u200fy\\u061c"
    assert cli._printable("x\ud800y") == "x\\ud800y"
    assert cli._printable("a\\nb") == "a\\\\nb"  # the text backslash-n, not an escaped newline
    assert cli._printable("a\\nb") != cli._printable("a\nb")


@pytest.mark.parametrize(
    "filt",
    [
        '{"year": 1999, "draft": {"$ne": true}}',
        '{"year": 1999, "$not": {"draft": true}}',
        '{"year": 1999, "draft": {"$nin": [true]}}',
        '{"year": 1999, "draft": {"$not": {"$eq": true}}}',
    ],
)
def test_no_filter_key_warning_for_a_condition_a_missing_key_satisfies(
    filt: str, built: tuple[Path, Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", filt]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == []
    assert "no document in the store has" not in caplog.text  # 'draft' is absent, which those conditions accept


def test_a_negated_negative_condition_on_an_absent_key_is_still_warned_about(
    built: tuple[Path, Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(store), "cat", "--json", "--filter", '{"$not": {"draft": {"$ne": true}}}']) == 0
    assert "'draft'" in caplog.text and "no document in the store has" in caplog.text


class _CountingStore:
    """A store of ``n`` documents, each with metadata ``{"year": i}``, that records what ``get_by_ids`` is asked."""

    def __init__(self, n: int) -> None:
        self.ids = [f"d{i}" for i in range(n)]
        self.asked: list[int] = []

    def get_by_ids(self, ids: list[str]) -> list[Any]:
        self.asked.append(len(ids))
        return [argparse.Namespace(id=i, text="a long text " * 100, metadata={"year": 1}) for i in ids]


def test_the_filter_key_check_reads_the_store_in_chunks_and_stops_at_the_first_holder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _CountingStore(10 * cli._FILTER_KEY_CHUNK)
    with caplog.at_level(logging.WARNING):
        cli._warn_absent_filter_keys(store, {"year": 1999})
    assert store.asked == [cli._FILTER_KEY_CHUNK]  # not the whole store at once
    assert "no document in the store has" not in caplog.text
    store = _CountingStore(3 * cli._FILTER_KEY_CHUNK)
    with caplog.at_level(logging.WARNING):
        cli._warn_absent_filter_keys(store, {"yeer": 1999})
    assert store.asked == [cli._FILTER_KEY_CHUNK] * 3
    assert "'yeer'" in caplog.text


def test_text_output_on_an_ascii_stdout_is_escaped_not_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = io.BytesIO()
    ascii_stdout = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", ascii_stdout)

    def command(args: Any) -> int:
        print(cli._printable("caf\u00e9 \u6771\u4eac"))
        return 0

    _fake_command(monkeypatch, command)
    assert main(["search", "store", "q"]) == 0, capsys.readouterr().err
    assert raw.getvalue() == b"caf\\xe9 \\u6771\\u4eac\n"


def test_the_console_script_runs_the_interrupt_safe_entry_point() -> None:
    from kl_retrievers.__main__ import run

    assert callable(run)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10 (the floor) has no tomllib, and tomli is a dependency of neither the package nor its tests
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["project"]["scripts"]["kl-retrievers"] == "kl_retrievers.__main__:run"


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_an_ignored_sigterm_stays_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    assert threading.current_thread() is threading.main_thread()

    def command(args: Any) -> int:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the command goes on
        time.sleep(0.05)
        return 0

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _fake_command(monkeypatch, command)
        status = main(["search", "store", "q"])
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 0


def _tiny_beir(root: Path) -> Path:
    ds = root / "ds"
    (ds / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "text": "alpha beta"}, {"_id": "d2", "text": "gamma delta"}]
    (ds / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (ds / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "alpha"}) + "\n", encoding="utf-8")
    (ds / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    return ds


@pytest.mark.parametrize("quiet", [False, True])
def test_evaluate_shows_no_progress_bars_when_stderr_is_not_a_terminal(
    quiet: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.evaluate_cli as evaluate_cli

    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))
    seen: list[Any] = []

    def baseline(*args: Any, show_progress: Any = None, **kwargs: Any) -> Any:
        seen.append(show_progress)
        return {"q1": {"d1": 2.0, "d2": 1.0}}, "bm25"

    monkeypatch.setattr(evaluate_cli, "run_baseline", baseline)
    flags = ["--no-progress"] if quiet else []
    assert main(["evaluate", str(_tiny_beir(tmp_path)), "--baseline", "bm25", "--json", *flags]) == 0
    assert seen == [False]  # capsys's stderr is no terminal


def test_the_progress_default_is_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.cli_common import progress_default

    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_default(False) is True and progress_default(True) is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_default(False) is False
    monkeypatch.setattr(sys, "stderr", None)
    assert progress_default(False) is False


class _Stop(Exception):
    pass


def test_train_shows_no_progress_bars_when_stderr_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kl_retrievers.training.trainer as trainer

    seen: list[Any] = []

    def config(**kwargs: Any) -> Any:
        seen.append(kwargs.get("show_progress"))
        raise _Stop()

    monkeypatch.setattr(trainer, "TrainConfig", config)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query": "q", "positives": ["a"], "negatives": ["b"]}) + "\n", encoding="utf-8")
    assert main(["train", "--data", str(rows), "--out", str(tmp_path / "m"), "--steps", "2"]) == 1
    assert seen == [False]


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
@pytest.mark.parametrize("flag", ["--save-run", "--per-query"])
def test_evaluate_refuses_a_link_or_pipe_output_before_any_work(
    kind: str, flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.evaluate_cli as evaluate_cli

    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("named pipes")
    target = tmp_path / ("out.trec" if flag == "--save-run" else "out.json")
    if kind == "symlink":
        (tmp_path / "real.txt").write_text("keep", encoding="utf-8")
        target.symlink_to(tmp_path / "real.txt")
    else:
        os.mkfifo(target)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the evaluation ran before the output was refused")

    monkeypatch.setattr(evaluate_cli, "run_baseline", never)
    monkeypatch.setattr(evaluate_cli, "load_beir", never)
    assert main(["evaluate", str(_tiny_beir(tmp_path)), "--baseline", "bm25", "--no-progress", flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert flag in err and str(target) in err
    assert ("symbolic link" if kind == "symlink" else "named pipe") in err, err
    if kind == "symlink":
        assert target.is_symlink() and (tmp_path / "real.txt").read_text(encoding="utf-8") == "keep"


def test_train_out_dash_is_refused_before_anything_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.training.cli import check_train_out

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--out -: a trained model is a folder"):
        check_train_out("-", [str(tmp_path / "data")])
    assert not (tmp_path / "-").exists()
    assert check_train_out("./-", [str(tmp_path / "data")]) == tmp_path / "-"
