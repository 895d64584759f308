"""``KLEmbeddings(model_kwargs=..., encode_kwargs=..., show_progress=...)``: HuggingFaceEmbeddings' keywords are
refused with a TypeError naming what KLEmbeddings takes instead, before any model is loaded."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core")

from kl_retrievers.langchain import KLEmbeddings


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        (
            {"model_kwargs": {"device": "cpu"}},
            "\\['model_kwargs'\\] \\(model_kwargs: .*backend='torch'.*\\.to\\('cuda'\\)",
        ),
        (
            {"encode_kwargs": {"normalize_embeddings": True}},
            "\\[.encode_kwargs.\\] \\(encode_kwargs: pass batch_size= and show_progress_bar= here",
        ),
        ({"show_progress": True}, "\\['show_progress'\\] \\(show_progress: it is show_progress_bar= here\\)"),
        (
            {"cache_folder": "/x", "multi_process": True},
            "\\['cache_folder', 'multi_process'\\] \\(cache_folder: .*; multi_process: ",
        ),
    ],
)
def test_hugging_face_embeddings_keywords_name_ours(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(TypeError, match=f"^KLEmbeddings got unexpected keyword argument\\(s\\) {names}"):
        KLEmbeddings(model_name="no-such-model-is-loaded", **kwargs)


def test_an_unknown_keyword_names_what_klembeddings_takes() -> None:
    with pytest.raises(
        TypeError,
        match="^KLEmbeddings got unexpected keyword argument\\(s\\) \\['batchsize'\\]; it takes encoder, model_name, "
        "batch_size, show_progress_bar and backend$",
    ):
        KLEmbeddings(batchsize=8)  # type: ignore[arg-type]  # mypy refuses it too
