"""What the adapters' docstrings and the CLI help say of the query uncertainty matches the docs.

An audit found overclaims: "higher means a vaguer query" (LangChain ``KLRetriever``), the hybrid
retriever's adaptive fusion weighting "from the query uncertainty" (LlamaIndex ``KLHybridRetriever``: no
shipped parameter file uses it), and the demo / search help showing "each query's uncertainty" with no word
that, with the default model, it barely predicts which queries go well (the confidence does).
"""

from __future__ import annotations

import argparse
import re

import pytest

from kl_retrievers.cli import build_parser

BARELY = "with the default model it barely predicts which queries go well: the confidence does"


def _description(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return re.sub(r"\s+", " ", sub.choices[command].description or "")


@pytest.mark.parametrize("command", ["demo", "search"])
def test_cli_help_says_the_uncertainty_barely_predicts_query_quality(command: str) -> None:
    assert f"uncertainty (its mean log-variance; {BARELY})" in _description(command)


def test_langchain_retriever_does_not_call_the_uncertainty_vagueness() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLRetriever

    doc = re.sub(r"\s+", " ", KLRetriever.__doc__ or "")
    assert "vaguer" not in doc
    assert "barely predicts which queries go well, Kendall tau -0.045 against per-query nDCG@10" in doc


def test_llama_index_hybrid_retriever_names_the_signals_adaptive_fusion_uses() -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLHybridRetriever

    doc = re.sub(r"\s+", " ", KLHybridRetriever.__doc__ or "")
    assert "the query uncertainty and both lists' score statistics" not in doc
    assert "only the default model's stemmed one also reads the query uncertainty" in doc
