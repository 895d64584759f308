"""Integration tests with the real all-MiniLM-L6-v2 backbone on a slice of real SciFact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kl_retrievers import GaussianEncoder, neg_kl_matrix

pytestmark = pytest.mark.integration


def scifact_slice(path: Path, n: int = 24) -> list[str]:
    texts = []
    with (path / "corpus.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(f"{row['title']} {row['text']}".strip())
            if len(texts) == n:
                break
    return texts


def test_default_model_encodes_scifact_like_minilm_cosine(minilm_default: GaussianEncoder, scifact_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from kl_retrievers.hub import resolve_model_path

    docs = scifact_slice(scifact_dir)
    queries = ["0-dimensional biomaterials show inductive properties.", "ALDH1 expression is associated with outcome"]
    d = minilm_default.encode_documents(docs)
    q = minilm_default.encode_queries(queries)
    assert d.mean.shape == (24, 384) and np.allclose(d.var, 1.0) and np.allclose(q.var, 1.0)
    st = SentenceTransformer(str(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")), device="cpu")
    st.max_seq_length = minilm_default.config.max_length
    ref = st.encode(docs, convert_to_numpy=True)
    np.testing.assert_allclose(d.mean, ref, atol=2e-5)
    # unit variances: -KL = cos - 1 for these unit-norm means, so the ranking is MiniLM's cosine ranking
    scores = neg_kl_matrix(q.astype(np.float64), d.astype(np.float64))
    st.max_seq_length = minilm_default.config.query_max_length
    cos = st.encode(queries) @ ref.T
    np.testing.assert_allclose(scores, cos - 1.0, atol=1e-4)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1)[:, :10], np.argsort(-cos, axis=1)[:, :10])
    assert np.allclose(q.uncertainty(), 0.0, atol=1e-6)


def test_new_encoder_from_minilm_with_var_token_round_trips_as_small_delta(tmp_path: Path, scifact_dir: Path) -> None:
    enc = GaussianEncoder.from_backbone("sentence-transformers/all-MiniLM-L6-v2", dim=128, pooling="mean", beta=5.0)
    assert enc.var_token_id is not None and enc.config.backbone_sha256
    with torch.no_grad():
        enc.var_head.weight.normal_(std=0.02)  # make the variance depend on the text
    docs = scifact_slice(scifact_dir, 6)
    before = enc.encode_documents(docs)
    assert before.var.std() > 0
    out = enc.save_pretrained(tmp_path / "delta", include_backbone=False)
    size = (out / "delta.safetensors").stat().st_size
    assert size < 2_000_000, size  # heads + [VAR] row, not the 90 MB backbone
    loaded = GaussianEncoder.from_pretrained(out)
    after = loaded.encode_documents(docs)
    np.testing.assert_array_equal(before.mean, after.mean)
    np.testing.assert_array_equal(before.var, after.var)
