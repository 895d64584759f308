"""Claims a newcomer reads on the pages and acts on: each one is what the package does, and says what it needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: Module a page's example imports -> the package that installs it, which no user extra of kl-retrievers brings.
NOT_IN_AN_EXTRA = {
    "langchain_community": "langchain-community",
    "llama_index.retrievers.bm25": "llama-index-retrievers-bm25",
}


def _section(page: str, heading: str) -> str:
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize("page", ["langchain.md", "llama_index.md"])
def test_an_example_importing_a_package_no_extra_installs_says_to_pip_install_it(page: str) -> None:
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    for module, package in NOT_IN_AN_EXTRA.items():
        imports = [m.start() for m in FENCE.finditer(text) if re.search(rf"^(from|import) {module}\b", m[1], re.M)]
        if imports:
            pip = text.find(f"`pip install {package}`")
            assert 0 <= pip < imports[0], f"docs/{page}: imports {module} without `pip install {package}` before it"


def test_llama_index_scores_say_that_embedded_metadata_lowers_a_duplicates_score() -> None:
    """The page's "near-duplicates above 0.8" holds for the embedded text; its metadata is embedded by default."""
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    from kl_retrievers.llama_index import KLEmbedding, KLVectorStore

    section = " ".join(_section("llama_index.md", "## Scores").split())
    stated = [float(x) for x in re.findall(r"scores (?:only )?about (0\.\d\d)", section)]
    assert "excluded_embed_metadata_keys" in section and len(stated) == 2, stated
    embed = KLEmbedding()
    scores: list[float] = []
    for excluded in ([], ["year"]):
        docs = [  # the page's example documents
            Document(text=t, metadata={"year": y}, excluded_embed_metadata_keys=excluded)
            for t, y in [
                ("Aspirin lowers fever.", 2019),
                ("Coffee contains caffeine.", 2021),
                ("Tea contains caffeine too.", 2023),
            ]
        ]
        store = StorageContext.from_defaults(vector_store=KLVectorStore())
        index = VectorStoreIndex.from_documents(docs, embed_model=embed, storage_context=store)
        score = index.as_retriever(similarity_top_k=1).retrieve("Coffee contains caffeine.")[0].score
        assert score is not None
        scores.append(score)
    assert scores[0] < 0.8 < scores[1]
    assert scores == pytest.approx(stated, abs=0.01)


def test_getting_started_says_which_dtype_an_onnx_encoder_accepts() -> None:
    torch = pytest.importorskip("torch")
    from kl_retrievers import load_default_model

    text = " ".join((REPO / "docs" / "getting-started.md").read_text(encoding="utf-8").split())
    assert "and so is a dtype" not in text
    assert "`encoder.to(torch.float32)` is accepted as a no-op" in text
    encoder = load_default_model()
    assert encoder.to(torch.float32) is encoder
    with pytest.raises(TypeError):
        encoder.to(torch.float16)
    assert "other dtype (`torch.float16`, `torch.bfloat16`, ...) is refused with a `TypeError`" in text
