"""``GaussianEncoder.from_backbone`` on a sentence-transformers folder says, at INFO, what of the folder it does not
apply (its ``Normalize`` module, other modules, ``sentence_bert_config.json``'s ``max_seq_length``), computing as
before."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers import GaussianEncoder
from kl_retrievers.backbones import sentence_transformers_not_applied
from kl_retrievers.hub import resolve_model_path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _st_folder(root: Path, modules: list[tuple[str, str]], max_seq_length: int | None = None) -> Path:
    entries = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)
    ]
    (root / "modules.json").write_text(json.dumps(entries))
    if max_seq_length is not None:
        (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return root


def test_what_is_not_applied_is_listed_with_what_to_pass(tmp_path: Path) -> None:
    folder = _st_folder(
        tmp_path,
        [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"), ("Normalize", "3_Normalize")],
        max_seq_length=128,
    )
    lines = sentence_transformers_not_applied(folder, normalize_pooled=False, max_length=256)
    assert lines == [
        "its Dense module (2_Dense): the Gaussian heads read the pooled vector instead",
        "its Normalize module (3_Normalize): pass normalize_pooled=True to L2-normalise the pooled vector as it does",
        "its max_seq_length 128 (sentence_bert_config.json): the documents' token budget is max_length=256; pass "
        "max_length=128 for the folder's",
    ]
    assert sentence_transformers_not_applied(folder, normalize_pooled=True, max_length=128) == [lines[0]]
    assert sentence_transformers_not_applied(tmp_path / "nothing", normalize_pooled=False, max_length=256) == []
    (folder / "modules.json").write_text("not json")
    assert sentence_transformers_not_applied(folder, normalize_pooled=True, max_length=128) == []


def test_from_backbone_logs_the_normalize_module_it_does_not_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "minilm"
    shutil.copytree(resolve_model_path(MINILM), folder)
    with caplog.at_level(logging.INFO, logger="kl_retrievers.encoder"):
        plain = GaussianEncoder.from_backbone(folder, var_token=False, max_length=256)
    said = [r.getMessage() for r in caplog.records if "does not apply" in r.getMessage()]
    assert len(said) == 1 and all(r.levelno == logging.INFO for r in caplog.records if "does not apply" in r.message)
    assert (
        "reads its backbone, pooling and query prompt, but does not apply its Normalize module (2_Normalize): "
        in said[0]
    )
    assert "max_seq_length" not in said[0]  # 256 there and here
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kl_retrievers.encoder"):
        normalized = GaussianEncoder.from_backbone(folder, var_token=False, normalize_pooled=True, max_length=256)
    assert not [r for r in caplog.records if "does not apply" in r.getMessage()]
    # computed as before: the folder's Normalize module is applied only when asked for
    texts = ["hello world", "the cat sat on the mat"]
    norms = np.linalg.norm(plain.encode_documents(texts).mean, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(normalized.encode_documents(texts).mean, axis=1), 1.0, atol=1e-4)
