"""A KLEmbeddings held behind a wide wrapper, or in a list attribute, is found; a search cut short warns.

``_inner_klembeddings`` looked into at most 64 objects, breadth first: a KLEmbeddings two levels behind 63 or more
sibling ``Embeddings`` attributes (a router over a registry of models) was missed without a word, and the store
ranked q~ / d~ by L2. It now looks into up to 1,024 objects, also the items of list, tuple and dict attributes
(``self.models = [...]``), and warns when the bound stops the search with none found.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings

import kl_retrievers.langchain as lc
from conftest import CountingEncoder


class _Plain(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[0.0]] * len(texts)

    def embed_query(self, text: str) -> list[float]:
        return [0.0]


class _Wrap(_Plain):
    def __init__(self, inner: Any) -> None:
        self.inner = inner


class _Router(_Plain):
    """``n`` plain models as attributes, then the one used (a KLEmbeddings in a wrapper)."""

    def __init__(self, n: int, kl: Any) -> None:
        for i in range(n):
            setattr(self, f"m{i}", _Plain())
        self.default = _Wrap(kl)


class _ListRouter(_Plain):
    def __init__(self, models: list[Any]) -> None:
        self.models = models


@pytest.fixture
def kl() -> lc.KLEmbeddings:
    return lc.KLEmbeddings(encoder=CountingEncoder())


@pytest.mark.parametrize("siblings", [63, 70, 500])
def test_a_klembeddings_behind_many_sibling_models_is_found(kl: lc.KLEmbeddings, siblings: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lc._inner_klembeddings(_Router(siblings, kl)) is kl


def test_a_klembeddings_in_a_list_or_dict_attribute_is_found(kl: lc.KLEmbeddings) -> None:
    assert lc._inner_klembeddings(_ListRouter([_Plain(), _Wrap(kl)])) is kl
    router = _Plain()
    router.__dict__["by_name"] = {"plain": _Plain(), "kl": _Wrap(kl)}
    assert lc._inner_klembeddings(_Wrap(router)) is kl
    assert lc._inner_klembeddings(_ListRouter((_Plain(), kl))) is kl  # type: ignore[arg-type]  # a tuple


def test_a_search_stopped_by_the_bound_warns(kl: lc.KLEmbeddings) -> None:
    with pytest.warns(UserWarning, match=r"through 1024 Embeddings objects.*pass that KLEmbeddings \(or its encoder\)"):
        assert lc._inner_klembeddings(_Router(2_000, kl)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # walked whole, none found: no warning
        assert lc._inner_klembeddings(_ListRouter([_Plain() for _ in range(100)])) is None
        assert lc._inner_klembeddings(_ListRouter([0.5] * 5_000)) is None  # a long list of numbers is no registry
