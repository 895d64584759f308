"""Three small fixes: Milvus refuses an HNSW degree FAISS refuses (same message), the ONNX encoder records a
relative folder as the torch encoder does (absolute), and the feature cache honours ``$XDG_CACHE_HOME``."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_tiny_encoder


# ---------------------------------------------------------------- 1. MilvusKLStore checks hnsw_m as KLStore does
@pytest.mark.parametrize("index_type", ["hnsw", "flat"])
def test_milvus_refuses_hnsw_m_below_two_with_the_faiss_message(tmp_path: Path, index_type: str) -> None:
    from kl_retrievers.store.faiss import KLStore
    from kl_retrievers.store.milvus import MilvusKLStore

    with pytest.raises(ValueError) as faiss_error:
        KLStore(index_type=index_type, hnsw_m=1)  # type: ignore[arg-type]
    # the check runs before any connection: no server, no Milvus Lite file
    with pytest.raises(ValueError, match=r"hnsw_m must be an integer >= 2 .*; got 1$") as milvus_error:
        MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type=index_type, hnsw_m=1)  # type: ignore[arg-type]
    assert str(milvus_error.value) == str(faiss_error.value)
    assert not (tmp_path / "kl.db").exists()
    # non-integers and values <= 0 keep the shared "positive integer" message
    with pytest.raises(ValueError, match="hnsw_m must be a positive integer; got 0"):
        MilvusKLStore(uri=str(tmp_path / "kl.db"), hnsw_m=0)


# ---------------------------------------------------------------- 2. the ONNX encoder records an absolute folder
def test_onnx_encoder_records_a_relative_folder_as_the_torch_encoder_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.encoder import GaussianEncoder
    from kl_retrievers.encoding_cache import model_fingerprint
    from kl_retrievers.hub import local_reference
    from kl_retrievers.onnx import OnnxGaussianEncoder

    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "model")
    enc.export_onnx(tmp_path / "model-onnx", quantize=None)
    monkeypatch.chdir(tmp_path)
    torch_enc = GaussianEncoder.from_pretrained("model")
    onnx_enc = OnnxGaussianEncoder("model-onnx")
    assert torch_enc.name_or_path == local_reference("model") == str((tmp_path / "model").resolve())
    assert onnx_enc.name_or_path == local_reference("model-onnx") == str((tmp_path / "model-onnx").resolve())
    assert Path(onnx_enc.name_or_path).is_absolute()
    # the identity no longer depends on the working directory the folder was named from
    assert model_fingerprint(onnx_enc) == model_fingerprint(OnnxGaussianEncoder(tmp_path / "model-onnx"))
    # an explicit name is kept as it is
    assert OnnxGaussianEncoder("model-onnx", name_or_path="my-name").name_or_path == "my-name"


# ---------------------------------------------------------------- 3. the feature cache honours XDG_CACHE_HOME
def test_default_feature_cache_dir_honours_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.encoding_cache import default_cache_dir
    from kl_retrievers.training.features import default_feature_cache_dir

    monkeypatch.delenv("KL_RETRIEVERS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_feature_cache_dir() == tmp_path / "xdg" / "kl_retrievers" / "features"
    assert default_feature_cache_dir().parent == default_cache_dir().parent  # one root with the encodings
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_feature_cache_dir() == Path.home() / ".cache" / "kl_retrievers" / "features"
    # $KL_RETRIEVERS_CACHE still wins, with the features in its "features" folder (as before)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "mine"))
    assert default_feature_cache_dir() == tmp_path / "mine" / "features"
