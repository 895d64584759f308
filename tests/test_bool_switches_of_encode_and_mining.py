"""sentence-transformers' ``convert_to_tensor`` / ``convert_to_numpy`` and the mining functions' ``replace`` are
checked by the package's one bool check (``kl_retrievers._checks.check_bool``), with its message and type.

``_encoding`` kept its own check (``encode_query(convert_to_tensor=...) must be a bool``, a long value shown in
full), and ``replace`` raised ``ValueError`` ("must be True, False or None") where every other bool option raises
``TypeError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kl_retrievers._checks import check_bool
from kl_retrievers._encoding import _our_encode_args
from kl_retrievers.training.data import TrainExample, TrainingSet, _mine_mode, mine_negatives_from_scores


def _shared_message(value: Any, name: str, *, allow_none: bool = False) -> str:
    with pytest.raises(TypeError) as caught:
        check_bool(value, name, allow_none=allow_none)
    return str(caught.value)


@pytest.mark.parametrize("name", ["convert_to_tensor", "convert_to_numpy"])
@pytest.mark.parametrize("value", ["yes", 1, None, "x" * 200])
def test_convert_to_flags_use_the_shared_check(name: str, value: Any) -> None:
    with pytest.raises(TypeError, match=f"^encode_query: {name} must be a bool; got ") as caught:
        _our_encode_args({name: value}, role="query", method="encode_query")
    assert str(caught.value) == _shared_message(value, f"encode_query: {name}")
    assert len(str(caught.value)) < 150  # a long value is cut, as check_bool cuts it


def test_convert_to_flags_take_python_and_numpy_bools() -> None:
    assert _our_encode_args({"convert_to_tensor": np.True_}, role="query", method="encode_query") == {
        "convert_to": "torch"
    }
    assert _our_encode_args({"convert_to_numpy": np.bool_(True)}, role="query", method="encode_query") == {}


@pytest.mark.parametrize("value", ["yes", 1, 0, "x" * 200])
def test_replace_is_refused_as_every_bool_option_is(value: Any) -> None:
    with pytest.raises(TypeError, match="^replace must be a bool or None; got ") as caught:
        _mine_mode(None, value)
    assert str(caught.value) == _shared_message(value, "replace", allow_none=True)
    ts = TrainingSet(["q"], ["d0", "d1"], [TrainExample(0, [0])])
    with pytest.raises(TypeError, match="^replace must be a bool or None; got "):
        mine_negatives_from_scores(ts, lambda q: np.zeros((len(q), 2)), k=1, replace=value, show_progress=False)


def test_replace_takes_bools_numpys_and_none() -> None:
    assert _mine_mode(None, np.True_) == "replace"  # type: ignore[arg-type]
    assert _mine_mode("append", np.bool_(False)) == "append"  # type: ignore[arg-type]
    assert (_mine_mode(None, True), _mine_mode(None, False), _mine_mode(None, None)) == ("replace", "append", "keep")
    with pytest.raises(ValueError, match="disagree"):
        _mine_mode("keep", True)
