"""``--backend ray`` against an unreachable ``--ray-address`` fails fast, and Ray's console lines follow the log level.

``ray.init(address="host:port")`` retried a port nothing listened on for minutes (P3: 420 s, only Ray's C++ "Failed
to connect to GCS" lines, SIGTERM took ~20 s); a ``host:port`` address is now tried with one TCP connection first
(``sharded.RAY_CONNECT_TIMEOUT``). ``-q`` and ``--no-progress`` did not silence Ray Data (INFO lines of its execution
plan and, stdout being no terminal, of its progress every few seconds). Ray itself is stood in for here: its
``init`` and Ray Data's dataset are replaced, its loggers and ``DataContext`` are the real ones.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import bare_root_logger, cli_error_line, make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.cli import main

ray = pytest.importorskip("ray")
ray_data = pytest.importorskip("ray.data")

#: The loggers whose console handlers print Ray's Python log lines (Ray Data's are under "ray.data").
RAY_LOGGERS = ("ray", "ray.data")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder().save_pretrained(tmp_path_factory.mktemp("ray_logs") / "model")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"text number {i}"}) + "\n" for i in range(5)))
    return path


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A local port bound but not listening: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _init_never(**kwargs: Any) -> None:
    raise AssertionError(f"ray.init was called ({kwargs}): it retries an unreachable address for minutes")


# ---------------------------------------------------------------- 1. an unreachable --ray-address
def test_an_unreachable_ray_address_fails_fast_naming_it(
    tmp_path: Path,
    model: Path,
    corpus: Path,
    unused_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", _init_never)
    address = f"127.0.0.1:{unused_port}"
    argv = ["encode", "--input", str(corpus), "--out", str(tmp_path / "out"), "--model", str(model)]
    started = time.perf_counter()
    status = main([*argv, "--shard-size", "2", "--backend", "ray", "--ray-address", address, "--no-progress"])
    line = cli_error_line(capsys, "encode")
    assert status == 2, line
    assert time.perf_counter() - started < 30
    assert f"cannot reach the Ray cluster at {address!r}" in line and "within 10 s" in line, line
    # the same through RAY_ADDRESS, from the API
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ConnectionError, match=rf"cannot reach the Ray cluster at '{address}'"):
        sharded.encode_corpus(corpus, tmp_path / "out2", model=str(model), backend="ray", show_progress_bar=False)


@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "auto", "local", "not an address"])
def test_addresses_ray_reads_itself_are_not_tried(address: str) -> None:
    sharded._check_ray_address(address, timeout=0.01)  # Ray Client, auto-detection, a local node, Ray's own error


# ---------------------------------------------------------------- 2. Ray's log lines and progress
class _Dataset:
    """Stands in for Ray Data's dataset: ``take_all`` runs the shard worker here and logs as Ray Data does."""

    def __init__(self, items: list[dict[str, Any]], seen: list[tuple[bool, bool]]) -> None:
        self.items, self.seen = items, seen
        self.worker: tuple[Any, dict[str, Any]] | None = None

    def map_batches(self, fn: Any, *, fn_constructor_kwargs: dict[str, Any], **kwargs: Any) -> _Dataset:
        self.worker = (fn, fn_constructor_kwargs)
        return self

    def take_all(self) -> list[dict[str, Any]]:
        context = ray_data.DataContext.get_current()
        self.seen.append((context.enable_progress_bars, context.enable_operator_progress_bars))
        executor = logging.getLogger("ray.data._internal.execution.streaming_executor")
        executor.info("Starting execution of Dataset dataset_0. Full logs are in /tmp/ray/session/logs/ray-data")
        if not context.enable_progress_bars:  # Ray Data's own notice, once, when the bars are off
            logging.getLogger("ray.data._internal.progress").warning("Progress bars disabled. To enable, set ...")
        else:  # stdout is no terminal here: Ray Data logs its progress instead of drawing bars
            logging.getLogger("ray.data._internal.progress.logging_progress").info("Total Progress: 0/?")
        assert self.worker is not None
        fn, kwargs = self.worker
        worker = fn(**kwargs)
        rows = []
        for item in self.items:
            out = worker({key: np.asarray([value]) for key, value in item.items()})
            rows.append({key: value[0] for key, value in out.items()})
        return rows


def _stand_in_for_ray(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, bool]]:
    seen: list[tuple[bool, bool]] = []

    def init(**kwargs: Any) -> None:
        logging.getLogger("ray._private.worker").warning(
            "SIGTERM handler is not set because current thread is not the main thread."
        )
        logging.getLogger("ray._private.worker").info("Started a local Ray instance.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(ray_data, "from_items", lambda items, **kwargs: _Dataset(items, seen))
    return seen


def _console_levels() -> list[int]:
    return [h.level for name in RAY_LOGGERS for h in logging.getLogger(name).handlers]


def _ray_console(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What Ray's console handlers write: to the stderr of when Ray was imported, which capsys does not see."""
    written = io.StringIO()
    for name in RAY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                monkeypatch.setattr(handler, "stream", written)
    return written


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        (["-q"], [], ["INFO", "SIGTERM handler is not set", "Progress bars disabled"]),
        ([], ["SIGTERM handler is not set"], ["INFO", "Progress bars disabled"]),
        (["-v"], ["Starting execution of Dataset", "SIGTERM handler is not set"], ["Progress bars disabled"]),
    ],
)
def test_ray_console_lines_follow_the_log_level_and_no_progress(
    tmp_path: Path,
    model: Path,
    corpus: Path,
    flags: list[str],
    shown: list[str],
    hidden: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = _stand_in_for_ray(monkeypatch)
    console = _ray_console(monkeypatch)
    context = ray_data.DataContext.get_current()
    before = (context.enable_progress_bars, context.enable_operator_progress_bars, _console_levels())
    argv = ["encode", "--input", str(corpus), "--out", str(tmp_path / "out"), "--model", str(model)]
    with bare_root_logger():
        status = main([*flags, *argv, "--shard-size", "2", "--backend", "ray", "--num-workers", "1", "--no-progress"])
    err = capsys.readouterr().err + console.getvalue()
    assert status == 0, err
    for text in shown:
        assert text in err, err
    for text in hidden:
        assert text not in err, err
    assert seen == [(False, False)]  # --no-progress: Ray Data's progress is off during the run
    assert (context.enable_progress_bars, context.enable_operator_progress_bars, _console_levels()) == before


def test_ray_data_progress_stays_when_a_bar_is_asked_for(
    tmp_path: Path, model: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _stand_in_for_ray(monkeypatch)
    context = ray_data.DataContext.get_current()
    before = (context.enable_progress_bars, context.enable_operator_progress_bars)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    sharded.encode_corpus(
        corpus, tmp_path / "out", model=str(model), backend="ray", shard_size=2, show_progress_bar=True
    )
    assert seen == [before]
