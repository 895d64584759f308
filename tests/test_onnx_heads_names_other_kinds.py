"""``OnnxHeadsGaussianEncoder`` given a folder kl_retrievers saved as another kind names it, as the other loaders do.

It said "no shared ONNX backbone graph serves this model: <folder>: config.json has no 'encoder' object" for a KL
store or saved Gaussians, "cannot read config.json ([Errno 2] ...)" for a hybrid store or a LangChain folder, and
gave a backbone reason for an ONNX export; now a folder that is not a saved encoder is refused as one
("it is a saved KL store (load it with KLStore.load)", ``_io.why_not_this_kind``), and a saved encoder that no shared
graph serves gets the reason and what it is, with how to load it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_load_errors_by_kind import KINDS, encoder, folders  # noqa: F401  (fixtures used by name)

from kl_retrievers.onnx import OnnxModelError

pytest.importorskip("tokenizers")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_folder_of_another_kind_is_named(kind: str, folders: dict[str, Path]) -> None:  # noqa: F811
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    if kind not in folders:
        pytest.skip(f"the extra that saves a {kind} folder is not installed")
    with pytest.raises(OnnxModelError) as info:
        OnnxHeadsGaussianEncoder(folders[kind])
    assert re.search(KINDS[kind], str(info.value)), str(info.value)
    # a torch encoder saved with all its weights (model.safetensors) too: it names what it is and its loader
    assert "is not an encoder that a shared ONNX backbone graph serves: it is " in str(info.value)


def test_a_folder_without_an_encoders_files_names_the_missing_one(tmp_path: Path) -> None:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    with pytest.raises(
        OnnxModelError,
        match=re.escape(
            f"{tmp_path} is not an encoder that a shared ONNX backbone graph serves: config.json is missing"
        ),
    ):
        OnnxHeadsGaussianEncoder(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(OnnxModelError, match="delta.safetensors is missing"):
        OnnxHeadsGaussianEncoder(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OnnxModelError, match=re.escape(f"{tmp_path / 'file'} is not a folder")):
        OnnxHeadsGaussianEncoder(tmp_path / "file")


def test_a_saved_encoder_no_graph_serves_keeps_its_reason() -> None:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder
    from kl_retrievers.pretrained import bundled_model_path

    folder = bundled_model_path("minilm-gauss-zs")  # config.json and delta.safetensors, and a [VAR] token
    with pytest.raises(
        OnnxModelError,
        match=r"no shared ONNX backbone graph serves this model: it adds a \[VAR\] token .*; it is a saved "
        r"GaussianEncoder \(load it with GaussianEncoder.from_pretrained",
    ):
        OnnxHeadsGaussianEncoder(folder)
