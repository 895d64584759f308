"""ONNX Runtime's quantiser logs to the logger ``onnxruntime.quantization`` while an int8 export quantises, and the
rest of the process logs as before meanwhile.

The quantiser logs with ``logging.warning(...)`` / ``logging.info(...)`` (the root logger, configuring logging in a
process that has not). Its advice to pre-process the graph is dropped, its other records go to
``onnxruntime.quantization`` (naming the quantiser's own lines), and nothing is added to the root logger: another
thread's warnings still reach ``logging.lastResort`` and its ``logging.basicConfig()`` still configures logging.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import kl_retrievers.onnx as onnx_module
from conftest import bare_root_logger, make_tiny_encoder
from kl_retrievers.onnx import export_onnx

ADVICE = "Please consider to run pre-processing before quantization. Refer to example: ..."


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


def test_other_threads_log_as_before_while_the_quantiser_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime.quantization as quantization

    quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the package's name is a function's
    onnx_quantizer = importlib.import_module("onnxruntime.quantization.onnx_quantizer")

    last_resort, configured, quantiser = _Records(), _Records(), _Records()
    monkeypatch.setattr(logging, "lastResort", last_resort)
    seen: dict[str, Any] = {}

    def other_thread() -> None:
        logging.getLogger("service").warning("a warning of another thread")  # no handler anywhere: lastResort
        seen["handlers while quantising"] = list(logging.getLogger().handlers)
        logging.basicConfig(handlers=[configured])  # the service configures logging meanwhile
        logging.getLogger("service").warning("after the service configured logging")

    def fake_quantize_dynamic(*args: Any, **kwargs: Any) -> None:
        quantize.logging.warning(ADVICE)  # as quantize_dynamic logs them
        onnx_quantizer.logging.info("Quantization parameters for tensor:'x' not specified")
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()

    monkeypatch.setattr(quantization, "quantize_dynamic", fake_quantize_dynamic)
    package = logging.getLogger("onnxruntime.quantization")
    level = package.level
    package.addHandler(quantiser)
    package.setLevel(logging.INFO)
    try:
        with bare_root_logger() as root:
            onnx_module._quantize_int8(tmp_path / "in.onnx", tmp_path / "out.onnx", per_channel=True)
            assert seen["handlers while quantising"] == []
            assert root.handlers == [configured]  # the service's own configuration took
    finally:
        package.removeHandler(quantiser)
        package.setLevel(level)
    assert last_resort.messages() == ["a warning of another thread"]
    assert configured.messages() == ["after the service configured logging"]  # the quantiser's records: not here
    assert quantiser.messages() == ["Quantization parameters for tensor:'x' not specified"]  # the advice dropped
    assert quantize.logging is logging and onnx_quantizer.logging is logging  # put back


def test_an_int8_export_leaves_logging_as_found_and_names_the_quantisers_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quantiser = _Records()
    package = logging.getLogger("onnxruntime.quantization")
    level = package.level
    package.addHandler(quantiser)
    package.setLevel(logging.INFO)
    try:
        with bare_root_logger() as root:
            export_onnx(make_tiny_encoder(dim=6, seed=1), tmp_path / "int8", quantize="int8", verify=False)
            assert root.handlers == []  # logging was not configured by the quantiser
    finally:
        package.removeHandler(quantiser)
        package.setLevel(level)
    assert "pre-processing" not in capsys.readouterr().err
    assert quantiser.records, "the quantiser's INFO records go to onnxruntime.quantization"
    assert not any("pre-processing" in message for message in quantiser.messages())
    for record in quantiser.records:  # the quantiser's own lines, not the stand-in's
        assert Path(record.pathname).parent.name == "quantization", record.pathname
