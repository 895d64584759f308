"""The shared first-in / last-out switch (``_encoding.shared_switch``) behind ``eval_mode`` and the ONNX quantiser's
logging: a switch that fails leaves no hold behind, so the next block switches again and restores after it."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from kl_retrievers import onnx
from kl_retrievers._encoding import eval_mode


class _FlakyModule:
    """A module whose first ``eval()`` fails."""

    def __init__(self) -> None:
        self.training = True
        self.failures = 1

    def eval(self) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("eval failed")
        self.training = False

    def train(self, mode: bool = True) -> None:
        self.training = mode


def test_eval_mode_switches_again_after_a_failed_switch() -> None:
    module = _FlakyModule()
    with pytest.raises(RuntimeError, match="eval failed"), eval_mode(module):
        pass
    assert module.training
    with eval_mode(module):
        assert not module.training  # not left in training mode by the failed block's hold
    assert module.training


def test_quantiser_logging_binds_again_after_a_failed_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def bind(value: Any) -> None:
        if not calls:
            calls.append("failed")
            raise OSError("bind failed")
        calls.append(value)

    monkeypatch.setattr(onnx, "_bind_quantiser_logging", bind)
    with pytest.raises(OSError, match="bind failed"), onnx._quantiser_logging():
        pass
    with onnx._quantiser_logging():
        assert isinstance(calls[-1], onnx._QuantiserLogging)
    assert calls[-1] is logging  # bound back when the block ended
    assert len(calls) == 3


def test_concurrent_blocks_switch_once_and_restore_once() -> None:
    from kl_retrievers._encoding import shared_switch  # the helper itself (new with this test)

    lock: threading.Lock = threading.Lock()
    holds: dict[str, list[Any]] = {}
    events: list[str] = []
    inside = threading.Barrier(4)

    def work() -> None:
        with shared_switch(lock, holds, "k", lambda: events.append("on"), lambda _: events.append("off")):
            inside.wait(timeout=10)  # all four blocks run at once

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events == ["on", "off"]
    assert holds == {}


def test_eval_mode_undoes_a_half_done_switch() -> None:
    """torch's ``Module.train(False)`` switches the parent before its children: a child that fails leaves a mix."""
    torch = pytest.importorskip("torch")

    class Flaky(torch.nn.Module):  # type: ignore[misc,name-defined]
        fail = True

        def train(self, mode: bool = True) -> Any:
            if not mode and Flaky.fail:
                Flaky.fail = False
                raise RuntimeError("switch failed")
            return super().train(mode)

    module = torch.nn.Sequential(torch.nn.Dropout(0.5), Flaky(), torch.nn.Dropout(0.5)).train()
    with pytest.raises(RuntimeError, match="switch failed"), eval_mode(module):
        pass
    assert module.training and all(m.training for m in module)  # back as it was, not half switched
    with eval_mode(module):
        assert not module.training and not any(m.training for m in module)
    assert module.training and all(m.training for m in module)  # its training mode survived the failure
