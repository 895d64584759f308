"""LangChain ``delete(delete_all=...)`` takes numpy's bools, as every other flag does (``_checks.check_bool``).

A flag read from an array (``np.bool_``) is a bool; a string such as ``"no"`` stays refused
(``test_warning_locations_and_langchain_inputs.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers.langchain import KLEmbeddings, KLHybridRetriever, KLVectorStore

pytestmark = pytest.mark.filterwarnings("ignore:.*langchain-community.*:DeprecationWarning")

TEXTS = ["the cat sat", "a dog ran", "tea and bread", "the moon rose"]


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


def test_delete_all_takes_numpy_bools(encoder: Any) -> None:
    store = KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder))
    with pytest.raises(ValueError, match="needs the ids to delete"):
        store.delete(delete_all=np.False_)  # type: ignore[arg-type]
    assert len(store) == 4
    deleted = store.delete(delete_all=np.True_)  # type: ignore[arg-type]
    assert deleted is True and len(store) == 0
    hybrid = KLHybridRetriever.from_texts(TEXTS[:2], encoder)
    deleted = hybrid.delete(delete_all=np.bool_(True))  # type: ignore[arg-type]
    assert deleted is True and len(hybrid.store.ids) == 0
