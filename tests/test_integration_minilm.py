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


def test_placeholder_model_encodes_scifact_like_minilm_cosine(scifact_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from kl_retrievers import load_model
    from kl_retrievers.hub import resolve_model_path

    minilm_default = load_model("minilm-unit-variance", device="cpu")
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


def scifact_test_slice(
    path: Path, n_queries: int = 40, n_docs: int = 400
) -> tuple[list[str], list[str], list[set[int]]]:
    """The first ``n_queries`` SciFact test queries, their judged documents plus distractors."""
    from kl_retrievers.datasets import load_beir

    ds = load_beir(path, "test")
    qids = sorted(ds.qrels)[:n_queries]
    wanted = [d for q in qids for d in ds.qrels[q]]
    doc_ids = list(dict.fromkeys(wanted + [d for d in ds.doc_ids if d not in set(wanted)]))[:n_docs]
    pos = {d: i for i, d in enumerate(doc_ids)}
    rel = [{pos[d] for d, g in ds.qrels[q].items() if g > 0 and d in pos} for q in qids]
    return [ds.queries[q] for q in qids], ds.document_texts(doc_ids), rel


def test_default_model_is_the_distilled_soup_and_retrieves_on_scifact(
    minilm_default: GaussianEncoder, scifact_dir: Path
) -> None:
    from kl_retrievers import load_model
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path

    assert DEFAULT_MODEL == "minilm-gauss-soup" and minilm_default.name_or_path == "kl_retrievers:minilm-gauss-soup"
    training = minilm_default.config.extra["training"]
    assert training["recipe"]["similarity"] == "neg_kl" and training["recipe"]["lora_r"] == 48
    assert training["wise_ft"]["alpha"] == 0.5 and len(training["wise_ft"]["soup"]) == 3
    assert not any(name in " ".join(training["data"]) for name in ("scifact", "cranfield", "trec", "nfcorpus"))
    # the delta holds the heads and the stacked LoRA factors (3 x rank 16) of the attention query/value
    # matrices, never a full backbone matrix
    from safetensors.torch import load_file

    delta_file = bundled_model_path(DEFAULT_MODEL) / "delta.safetensors"
    delta = load_file(str(delta_file))
    backbone_keys = [k for k in delta if k.startswith("backbone.")]
    adapted = {k.rsplit(".", 1)[0] for k in backbone_keys}
    assert len(adapted) == 12 and all(k.endswith(("query.weight", "value.weight")) for k in adapted)  # 6 layers x 2
    assert set(backbone_keys) == {f"{k}.{part}" for k in adapted for part in ("lora_A", "lora_B", "lora_scaling")}
    for key in adapted:
        assert delta[f"{key}.lora_A"].shape == (48, 384) and delta[f"{key}.lora_B"].shape == (384, 48)
    assert delta_file.stat().st_size < 3_200_000

    queries, docs, rel = scifact_test_slice(scifact_dir)
    q, d = minilm_default.encode_queries(queries), minilm_default.encode_documents(docs)
    assert np.isfinite(q.var).all() and (d.var > 0).all() and not np.allclose(d.var, 1.0, atol=1e-4)

    def mrr(model_q: object, model_d: object) -> float:
        scores = neg_kl_matrix(model_q.astype(np.float64), model_d.astype(np.float64))  # type: ignore[attr-defined]
        ranks = np.argsort(-scores, axis=1)
        return float(np.mean([next((1 / (i + 1) for i, j in enumerate(r[:10]) if j in g), 0.0)
                              for r, g in zip(ranks, rel, strict=True)]))  # fmt: skip

    placeholder = load_model("minilm-unit-variance", device="cpu")
    trained = mrr(q, d)
    base = mrr(placeholder.encode_queries(queries), placeholder.encode_documents(docs))
    # a broken delta (e.g. a wrong LoRA merge) ranks at random (MRR@10 ~ 0.01 here)
    assert trained > 0.5 and abs(trained - base) < 0.1, (trained, base)


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
