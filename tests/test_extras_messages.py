"""A missing optional package raises one ``ModuleNotFoundError`` naming the extra that installs it.

``sys.modules[name] = None`` makes a package look uninstalled: its import fails and ``importlib.util.find_spec``
returns ``None``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.hybrid import fit_adaptive

REPO = Path(__file__).resolve().parents[1]


def _block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _extra(name: str) -> set[str]:
    """The requirement names of one extra in pyproject.toml (no tomllib: Python 3.10 is supported)."""
    section = re.search(
        r"^\[project\.optional-dependencies\]\n(.*?)^\[", (REPO / "pyproject.toml").read_text(), re.M | re.S
    )
    assert section
    line = re.search(rf"^{re.escape(name)} = \[(.*?)\]$", section.group(1), re.M | re.S)
    assert line, name
    return set(re.findall(r'"([A-Za-z0-9][\w.-]*)', line.group(1)))


# ------------------------------------------------------------------ scipy: fit_adaptive, ConfidenceCalibrator.fit
def test_the_hybrid_extra_installs_what_fit_adaptive_needs() -> None:
    assert {"bm25s", "scipy"} <= _extra("hybrid")


def test_fit_adaptive_without_scipy_names_the_hybrid_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "scipy", "scipy.optimize")
    with pytest.raises(ModuleNotFoundError, match=r'fit_adaptive needs scipy.*pip install "kl-retrievers\[hybrid\]"'):
        fit_adaptive({})


def test_calibrator_fit_without_scipy_names_an_extra_with_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.array([[0.1, 0.0], [0.9, 0.5], [0.4, 0.2]])
    _block(monkeypatch, "scipy", "scipy.optimize")
    with pytest.raises(ModuleNotFoundError, match=r'needs scipy.*pip install "kl-retrievers\[(\w+)\]"') as info:
        ConfidenceCalibrator(["max_score", "gap12"]).fit(x, [0, 1, 1])
    named = re.search(r"kl-retrievers\[(\w+)\]", str(info.value))
    assert named and "scipy" in _extra(named.group(1))
    assert info.value.name == "scipy"


# ------------------------------------------------------------------ the [train] extra: peft, bm25s, torch
def test_train_extra_installs_peft_and_bm25s() -> None:
    assert {"peft", "bm25s"} <= _extra("train")


def test_mine_bm25_negatives_without_bm25s_names_the_train_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.training.data import TrainingSet, mine_bm25_negatives

    ts = TrainingSet.from_rows([{"query": "cat", "positives": ["a cat"]}, {"query": "dog", "positives": ["a dog"]}])
    _block(monkeypatch, "bm25s")
    with pytest.raises(ModuleNotFoundError, match=r'needs bm25s.*pip install "kl-retrievers\[train\]"'):
        mine_bm25_negatives(ts, k=1)


def test_lora_without_peft_names_the_train_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import torch

    from kl_retrievers.training.trainer import apply_freezing

    class Stub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Linear(2, 2)

    stub = Stub()
    _block(monkeypatch, "peft")
    with pytest.raises(ModuleNotFoundError, match=r'needs peft.*pip install "kl-retrievers\[train\]"'):
        apply_freezing(stub, lora_r=2)  # type: ignore[arg-type]
    assert isinstance(stub.backbone, torch.nn.Linear)


@pytest.mark.parametrize(
    ("blocked", "flags"),
    [
        ("torch", []),
        ("transformers", []),
        ("peft", ["--lora-r", "2"]),
        ("bm25s", ["--hard-negatives", "bm25"]),
        ("bm25s", ["--hard-negatives", "bm25", "--heads-only-cached"]),
    ],
)
def test_train_cli_without_a_training_package_names_the_train_extra(
    blocked: str, flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    out = tmp_path / "model"
    _block(monkeypatch, blocked)
    # the data does not exist: the missing package is reported first, before any data loading or training
    assert main(["train", "--data", str(tmp_path / "no-such-data"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kl-retrievers train: error:"), err
    assert f"needs {blocked}" in err[0] and 'pip install "kl-retrievers[train]"' in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------ kl-retrievers evaluate: said before any work
def test_evaluate_without_ir_measures_names_the_eval_extra_before_reading_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    assert "ir-measures" in _extra("eval")
    _block(monkeypatch, "ir_measures")
    assert main(["evaluate", str(tmp_path / "not-read"), "--model-backend", "onnx", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert 'needs ir-measures: pip install "kl-retrievers[eval]"' in err and "not-read" not in err


def test_evaluate_on_torch_without_torch_names_the_onnx_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    _block(monkeypatch, "torch")
    assert main(["evaluate", str(tmp_path / "not-read"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "kl-retrievers[torch]", or pass --model-backend onnx' in err
    assert main(["evaluate", str(tmp_path / "not-read"), "--baseline", "bm25", "--no-progress"]) == 2
    assert "--model-backend" not in capsys.readouterr().err  # a baseline needs no model backend
