"""Texts as pandas and numpy hand them over: a missing value (NaN, ``pd.NA``) is named as one, with what to do
(dropna / fillna), and a 0-d array is refused in words, not numpy's "iteration over a 0-d array"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kl_retrievers._encoding import check_texts


@pytest.mark.parametrize(
    ("texts", "shown"),
    [
        (pd.Series(["a", np.nan, "b"]), "nan, float"),
        (pd.Series(["a", None, "b"], dtype="string"), "<NA>, NAType"),
        (["a", np.float32("nan")], "np.float32\\(nan\\), float32|nan, float32"),
        (["a", pd.NaT], "NaT, NaTType"),
    ],
)
def test_a_missing_value_among_the_texts_is_named_with_dropna_and_fillna(texts: object, shown: str) -> None:
    with pytest.raises(TypeError, match=f"texts\\[1\\] is a missing value \\(({shown})\\), not a text.*dropna.*fillna"):
        check_texts(texts)  # type: ignore[arg-type]


def test_none_and_other_types_keep_their_message() -> None:
    with pytest.raises(TypeError, match="^texts\\[1\\] is NoneType; every text must be a str$"):
        check_texts(["a", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="^texts\\[0\\] is float; every text must be a str$"):
        check_texts([1.5])  # type: ignore[list-item]


def test_a_0d_array_is_refused_in_words(tiny_encoder: object) -> None:
    with pytest.raises(
        TypeError, match="^queries is a 0-d ndarray \\(array\\('a', dtype='<U1'\\)\\).*\\[str\\(x.item\\(\\)\\)\\]"
    ):
        check_texts(np.array("a"), "queries")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="texts is a 0-d ndarray"):
        tiny_encoder.encode_queries(np.array("a"))  # type: ignore[attr-defined]
    assert check_texts(np.array(["a", "b"])) == ["a", "b"]  # type: ignore[arg-type]  # a 1-d array is still a list of texts
